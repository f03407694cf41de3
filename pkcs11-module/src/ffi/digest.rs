//! Message digesting (PKCS#11 3.0 §5.12), computed by the module.

use cryptoki_sys::{CK_BYTE, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG};

use super::ptr::{self, OutBuf};
use crate::error::Ckr;
use crate::module;

ck_fn!(
    /// §5.12 C_DigestInit.
    C_DigestInit = unsafe digest_init(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn digest_init(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM) -> Result<(), Ckr> {
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    module::get()?.digest_init(h, unsafe { ptr::mechanism(mech) })
}

ck_fn!(
    /// §5.12 C_Digest.
    C_Digest = unsafe digest(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn digest(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `out_len` is NULL or a valid length and `out` NULL or a buffer of `*out_len` bytes,
    // and the OutBuf does not outlive this call (this body's contract).
    let out = unsafe { OutBuf::new(out, out_len) }?;
    // SAFETY: `data` is NULL or valid for reads of `len` bytes (this body's contract).
    let data = unsafe { ptr::in_bytes(data, len) }?;
    out.deliver(m.digest(h, Some(data), out.capacity())?)
}

ck_fn!(
    /// §5.12 C_DigestUpdate.
    C_DigestUpdate = unsafe digest_update(h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn digest_update(
    h: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `part` is NULL or valid for reads of `len` bytes (this body's contract).
    m.digest_update(h, unsafe { ptr::in_bytes(part, len) }?)
}

ck_fn!(
    /// §5.12 C_DigestKey: secret key values never leave the chips; not supported.
    C_DigestKey => Ckr::FUNCTION_NOT_SUPPORTED; (h: CK_SESSION_HANDLE, key: CK_OBJECT_HANDLE)
);

ck_fn!(
    /// §5.12 C_DigestFinal.
    C_DigestFinal = unsafe digest_final(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn digest_final(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `out_len` is NULL or a valid length and `out` NULL or a buffer of `*out_len` bytes,
    // and the OutBuf does not outlive this call (this body's contract).
    let out = unsafe { OutBuf::new(out, out_len) }?;
    out.deliver(m.digest(h, None, out.capacity())?)
}
