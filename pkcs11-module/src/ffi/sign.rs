//! Signing and MACing (PKCS#11 3.0 §5.13), verification (§5.15), and the message-based
//! sign/verify functions of 3.0 (§5.14, §5.16) and the recover variants, which are not
//! supported.

use std::ffi::c_void;

use cryptoki_sys::{CK_BYTE, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG};

use super::ptr::{self, OutBuf};
use crate::error::Ckr;
use crate::module;
use crate::ops::Kind;

ck_fn!(
    /// §5.13 C_SignInit.
    C_SignInit = unsafe sign_init(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn sign_init(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    module::get()?.op_init(h, Kind::Sign, unsafe { ptr::mechanism(mech) }, key)
}

ck_fn!(
    /// §5.13 C_Sign: a NULL buffer gets the signature length and keeps the operation.
    C_Sign = unsafe sign(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, sig: *mut CK_BYTE, sig_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn sign(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `sig_len` is NULL or a valid length and `sig` NULL or a buffer of `*sig_len` bytes,
    // and the OutBuf does not outlive this call (this body's contract).
    let out = unsafe { OutBuf::new(sig, sig_len) }?;
    // SAFETY: `data` is NULL or valid for reads of `len` bytes (this body's contract).
    let data = unsafe { ptr::in_bytes(data, len) }?;
    out.deliver(m.sign(h, data, out.capacity())?)
}

ck_fn!(
    /// §5.13 C_SignUpdate.
    C_SignUpdate = unsafe sign_update(h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn sign_update(
    h: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `part` is NULL or valid for reads of `len` bytes (this body's contract).
    m.op_update(h, Kind::Sign, unsafe { ptr::in_bytes(part, len) }?)
}

ck_fn!(
    /// §5.13 C_SignFinal.
    C_SignFinal = unsafe sign_final(h: CK_SESSION_HANDLE, sig: *mut CK_BYTE, sig_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn sign_final(
    h: CK_SESSION_HANDLE,
    sig: *mut CK_BYTE,
    sig_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `sig_len` is NULL or a valid length and `sig` NULL or a buffer of `*sig_len` bytes,
    // and the OutBuf does not outlive this call (this body's contract).
    let out = unsafe { OutBuf::new(sig, sig_len) }?;
    out.deliver(m.sign_final(h, out.capacity())?)
}

ck_fn!(
    /// §5.15 C_VerifyInit.
    C_VerifyInit = unsafe verify_init(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn verify_init(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    module::get()?.op_init(h, Kind::Verify, unsafe { ptr::mechanism(mech) }, key)
}

ck_fn!(
    /// §5.15 C_Verify.
    C_Verify = unsafe verify(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, sig: *mut CK_BYTE, sig_len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn verify(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    sig: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `data` is NULL or valid for reads of `len` bytes (this body's contract).
    let data = unsafe { ptr::in_bytes(data, len) }?;
    // SAFETY: `sig` is NULL or valid for reads of `sig_len` bytes (this body's contract).
    m.verify(h, Some(data), unsafe { ptr::in_bytes(sig, sig_len) }?)
}

ck_fn!(
    /// §5.15 C_VerifyUpdate.
    C_VerifyUpdate = unsafe verify_update(h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn verify_update(
    h: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `part` is NULL or valid for reads of `len` bytes (this body's contract).
    m.op_update(h, Kind::Verify, unsafe { ptr::in_bytes(part, len) }?)
}

ck_fn!(
    /// §5.15 C_VerifyFinal.
    C_VerifyFinal = unsafe verify_final(h: CK_SESSION_HANDLE, sig: *mut CK_BYTE, sig_len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn verify_final(
    h: CK_SESSION_HANDLE,
    sig: *mut CK_BYTE,
    sig_len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `sig` is NULL or valid for reads of `sig_len` bytes (this body's contract).
    m.verify(h, None, unsafe { ptr::in_bytes(sig, sig_len) }?)
}

ck_fn!(
    /// §5.13 C_SignRecoverInit: no mechanism with message recovery is offered.
    C_SignRecoverInit => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
ck_fn!(
    /// §5.13 C_SignRecover: not supported.
    C_SignRecover => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, sig: *mut CK_BYTE, sig_len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.15 C_VerifyRecoverInit: not supported.
    C_VerifyRecoverInit => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
ck_fn!(
    /// §5.15 C_VerifyRecover: not supported.
    C_VerifyRecover => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, sig: *mut CK_BYTE, sig_len: CK_ULONG, data: *mut CK_BYTE, len: *mut CK_ULONG)
);

ck_fn!(
    /// §5.14 C_MessageSignInit: message-based signing is not supported.
    C_MessageSignInit => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
ck_fn!(
    /// §5.14 C_SignMessage: not supported.
    C_SignMessage => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, data: *mut CK_BYTE, len: CK_ULONG,
     sig: *mut CK_BYTE, sig_len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.14 C_SignMessageBegin: not supported.
    C_SignMessageBegin => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG)
);
ck_fn!(
    /// §5.14 C_SignMessageNext: not supported.
    C_SignMessageNext => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, data: *mut CK_BYTE, len: CK_ULONG,
     sig: *mut CK_BYTE, sig_len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.14 C_MessageSignFinal: not supported.
    C_MessageSignFinal => Ckr::FUNCTION_NOT_SUPPORTED; (h: CK_SESSION_HANDLE)
);
ck_fn!(
    /// §5.16 C_MessageVerifyInit: message-based verification is not supported.
    C_MessageVerifyInit => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
ck_fn!(
    /// §5.16 C_VerifyMessage: not supported.
    C_VerifyMessage => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, data: *mut CK_BYTE, len: CK_ULONG,
     sig: *mut CK_BYTE, sig_len: CK_ULONG)
);
ck_fn!(
    /// §5.16 C_VerifyMessageBegin: not supported.
    C_VerifyMessageBegin => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG)
);
ck_fn!(
    /// §5.16 C_VerifyMessageNext: not supported.
    C_VerifyMessageNext => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, data: *mut CK_BYTE, len: CK_ULONG,
     sig: *mut CK_BYTE, sig_len: CK_ULONG)
);
ck_fn!(
    /// §5.16 C_MessageVerifyFinal: not supported.
    C_MessageVerifyFinal => Ckr::FUNCTION_NOT_SUPPORTED; (h: CK_SESSION_HANDLE)
);
