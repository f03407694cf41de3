//! Key management (PKCS#11 3.0 §5.18) and random number generation (§5.19).
#![deny(unsafe_code)]

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_BYTE, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG,
};

use super::ptr::{self, OutBuf};
use crate::error::Ckr;
use crate::module;

ck_fn!(
    /// §5.18 C_GenerateKey.
    C_GenerateKey = generate_key(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, t: *mut CK_ATTRIBUTE, n: CK_ULONG, out: *mut CK_OBJECT_HANDLE)
);
pub(super) fn generate_key(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let mech = ptr::mechanism(mech).ok_or(Ckr::ARGUMENTS_BAD)?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let k = m.generate_key(h, &mech, &ptr::template_in(t, n)?)?;
    ptr::out_value(out, k)
}

ck_fn!(
    /// §5.18 C_GenerateKeyPair.
    C_GenerateKeyPair = generate_key_pair(
        h: CK_SESSION_HANDLE,
        mech: *mut CK_MECHANISM,
        pub_t: *mut CK_ATTRIBUTE,
        pub_n: CK_ULONG,
        priv_t: *mut CK_ATTRIBUTE,
        priv_n: CK_ULONG,
        pub_out: *mut CK_OBJECT_HANDLE,
        priv_out: *mut CK_OBJECT_HANDLE,
    )
);
#[allow(clippy::too_many_arguments)]
pub(super) fn generate_key_pair(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    pub_t: *mut CK_ATTRIBUTE,
    pub_n: CK_ULONG,
    priv_t: *mut CK_ATTRIBUTE,
    priv_n: CK_ULONG,
    pub_out: *mut CK_OBJECT_HANDLE,
    priv_out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let mech = ptr::mechanism(mech).ok_or(Ckr::ARGUMENTS_BAD)?;
    if pub_out.is_null() || priv_out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let public = ptr::template_in(pub_t, pub_n)?;
    let private = ptr::template_in(priv_t, priv_n)?;
    let (p, q) = m.generate_key_pair(h, &mech, &public, &private)?;
    ptr::out_value(pub_out, p)?;
    ptr::out_value(priv_out, q)
}

ck_fn!(
    /// §5.18 C_WrapKey.
    C_WrapKey = wrap_key(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, wrapping: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
pub(super) fn wrap_key(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let mech = ptr::mechanism(mech).ok_or(Ckr::ARGUMENTS_BAD)?;
    let out = OutBuf::new(out, out_len)?;
    out.deliver(m.wrap_key(h, &mech, wrapping, key, out.capacity())?)
}

ck_fn!(
    /// §5.18 C_UnwrapKey.
    C_UnwrapKey = unwrap_key(
        h: CK_SESSION_HANDLE,
        mech: *mut CK_MECHANISM,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: *mut CK_BYTE,
        wrapped_len: CK_ULONG,
        t: *mut CK_ATTRIBUTE,
        n: CK_ULONG,
        out: *mut CK_OBJECT_HANDLE,
    )
);
#[allow(clippy::too_many_arguments)]
pub(super) fn unwrap_key(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    unwrapping: CK_OBJECT_HANDLE,
    wrapped: *mut CK_BYTE,
    wrapped_len: CK_ULONG,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let mech = ptr::mechanism(mech).ok_or(Ckr::ARGUMENTS_BAD)?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let wrapped = ptr::in_bytes(wrapped, wrapped_len)?;
    let k = m.unwrap_key(h, &mech, unwrapping, wrapped, &ptr::template_in(t, n)?)?;
    ptr::out_value(out, k)
}

ck_fn!(
    /// §5.18 C_DeriveKey.
    C_DeriveKey = derive_key(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, base: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG, out: *mut CK_OBJECT_HANDLE)
);
pub(super) fn derive_key(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let mech = ptr::mechanism(mech).ok_or(Ckr::ARGUMENTS_BAD)?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let k = m.derive_key(h, &mech, base, &ptr::template_in(t, n)?)?;
    ptr::out_value(out, k)
}

ck_fn!(
    /// §5.19 C_SeedRandom: the chips' generators take no seed.
    C_SeedRandom = seed_random(h: CK_SESSION_HANDLE, seed: *mut CK_BYTE, len: CK_ULONG)
);
pub(super) fn seed_random(
    h: CK_SESSION_HANDLE,
    _seed: *mut CK_BYTE,
    _len: CK_ULONG,
) -> Result<(), Ckr> {
    module::get()?.session(h)?;
    Err(Ckr::RANDOM_SEED_NOT_SUPPORTED)
}

ck_fn!(
    /// §5.19 C_GenerateRandom (from the chips, 4096 bytes per request).
    C_GenerateRandom = generate_random(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, len: CK_ULONG)
);
pub(super) fn generate_random(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if out.is_null() && len > 0 {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let n = usize::try_from(len).map_err(|_| Ckr::ARGUMENTS_BAD)?;
    if n > crate::mechanism::MAX_DATA {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let bytes = m.generate_random(h, n)?;
    ptr::out_items(out, &bytes)
}
