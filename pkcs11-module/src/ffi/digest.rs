//! Message digesting (PKCS#11 3.0 §5.12), computed by the module.
#![deny(unsafe_code)]

use cryptoki_sys::{CK_BYTE, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG};

use super::ptr::{self, OutBuf};
use crate::error::Ckr;
use crate::module;

ck_fn!(
    /// §5.12 C_DigestInit.
    C_DigestInit = digest_init(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM)
);
pub(super) fn digest_init(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM) -> Result<(), Ckr> {
    module::get()?.digest_init(h, ptr::mechanism(mech))
}

ck_fn!(
    /// §5.12 C_Digest.
    C_Digest = digest(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
pub(super) fn digest(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let out = OutBuf::new(out, out_len)?;
    let data = ptr::in_bytes(data, len)?;
    out.deliver(m.digest(h, Some(data), out.capacity())?)
}

ck_fn!(
    /// §5.12 C_DigestUpdate.
    C_DigestUpdate = digest_update(h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG)
);
pub(super) fn digest_update(
    h: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    m.digest_update(h, ptr::in_bytes(part, len)?)
}

ck_fn!(
    /// §5.12 C_DigestKey: secret key values never leave the chips; not supported.
    C_DigestKey => Ckr::FUNCTION_NOT_SUPPORTED; (h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE)
);

ck_fn!(
    /// §5.12 C_DigestFinal.
    C_DigestFinal = digest_final(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
pub(super) fn digest_final(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let out = OutBuf::new(out, out_len)?;
    out.deliver(m.digest(h, None, out.capacity())?)
}
