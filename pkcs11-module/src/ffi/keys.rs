//! Key management (PKCS#11 3.0 §5.18) and random number generation (§5.19).

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_BYTE, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG,
};

use super::ptr::{self, OutBuf};
use crate::error::Ckr;
use crate::module;

ck_fn!(
    /// §5.18 C_GenerateKey.
    C_GenerateKey = unsafe generate_key(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, t: *mut CK_ATTRIBUTE, n: CK_ULONG, out: *mut CK_OBJECT_HANDLE)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn generate_key(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    let mech = unsafe { ptr::mechanism(mech) }.ok_or(Ckr::ARGUMENTS_BAD)?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `t` is NULL or a template of `n` attributes with valid values (this body's contract).
    let k = m.generate_key(h, &mech, &unsafe { ptr::template_in(t, n) }?)?;
    // SAFETY: `out` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(out, k) }
}

ck_fn!(
    /// §5.18 C_GenerateKeyPair.
    C_GenerateKeyPair = unsafe generate_key_pair(
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
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn generate_key_pair(
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
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    let mech = unsafe { ptr::mechanism(mech) }.ok_or(Ckr::ARGUMENTS_BAD)?;
    if pub_out.is_null() || priv_out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `pub_t` is NULL or a template of `pub_n` attributes with valid values (this body's
    // contract).
    let public = unsafe { ptr::template_in(pub_t, pub_n) }?;
    // SAFETY: `priv_t` is NULL or a template of `priv_n` attributes with valid values (this body's
    // contract).
    let private = unsafe { ptr::template_in(priv_t, priv_n) }?;
    let (p, q) = m.generate_key_pair(h, &mech, &public, &private)?;
    // SAFETY: `pub_out` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(pub_out, p) }?;
    // SAFETY: `priv_out` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(priv_out, q) }
}

ck_fn!(
    /// §5.18 C_WrapKey.
    C_WrapKey = unsafe wrap_key(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, wrapping: CK_OBJECT_HANDLE, key: CK_OBJECT_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn wrap_key(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    let mech = unsafe { ptr::mechanism(mech) }.ok_or(Ckr::ARGUMENTS_BAD)?;
    // SAFETY: `out_len` is NULL or a valid length and `out` NULL or a buffer of `*out_len` bytes,
    // and the OutBuf does not outlive this call (this body's contract).
    let out = unsafe { OutBuf::new(out, out_len) }?;
    out.deliver(m.wrap_key(h, &mech, wrapping, key, out.capacity())?)
}

ck_fn!(
    /// §5.18 C_UnwrapKey.
    C_UnwrapKey = unsafe unwrap_key(
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
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn unwrap_key(
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
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    let mech = unsafe { ptr::mechanism(mech) }.ok_or(Ckr::ARGUMENTS_BAD)?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `wrapped` is NULL or valid for reads of `wrapped_len` bytes (this body's contract).
    let wrapped = unsafe { ptr::in_bytes(wrapped, wrapped_len) }?;
    // SAFETY: `t` is NULL or a template of `n` attributes with valid values (this body's contract).
    let k = m.unwrap_key(h, &mech, unwrapping, wrapped, &unsafe {
        ptr::template_in(t, n)
    }?)?;
    // SAFETY: `out` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(out, k) }
}

ck_fn!(
    /// §5.18 C_DeriveKey.
    C_DeriveKey = unsafe derive_key(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, base: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG, out: *mut CK_OBJECT_HANDLE)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn derive_key(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    base: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    let mech = unsafe { ptr::mechanism(mech) }.ok_or(Ckr::ARGUMENTS_BAD)?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `t` is NULL or a template of `n` attributes with valid values (this body's contract).
    let k = m.derive_key(h, &mech, base, &unsafe { ptr::template_in(t, n) }?)?;
    // SAFETY: `out` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(out, k) }
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
    C_GenerateRandom = unsafe generate_random(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn generate_random(
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
    // SAFETY: `out` is valid for writes of `len` bytes (this body's contract), and the node's
    // answer was checked to be exactly `len` bytes by `generate_random`.
    unsafe { ptr::out_items(out, &bytes) }
}
