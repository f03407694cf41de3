//! Encryption and decryption (PKCS#11 3.0 §5.8, §5.9), the dual-function updates (§5.13)
//! and the message-based functions of 3.0 (§5.10, §5.11), which are not supported.

use std::ffi::c_void;

use cryptoki_sys::{
    CK_BYTE, CK_FLAGS, CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG,
};

use super::ptr::{self, OutBuf};
use crate::error::Ckr;
use crate::module;
use crate::ops::Kind;

/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn init(
    h: CK_SESSION_HANDLE,
    kind: Kind,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `mech` is NULL or a `CK_MECHANISM` with a valid parameter, and the MechPtr does not
    // outlive this call (this body's contract).
    m.op_init(h, kind, unsafe { ptr::mechanism(mech) }, key)
}

/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn single(
    h: CK_SESSION_HANDLE,
    kind: Kind,
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
    out.deliver(m.crypt(h, kind, data, out.capacity())?)
}

/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn update(
    h: CK_SESSION_HANDLE,
    kind: Kind,
    part: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if out_len.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `part` is NULL or valid for reads of `len` bytes (this body's contract).
    let part = unsafe { ptr::in_bytes(part, len) }?;
    if out.is_null() {
        // A size query (§5.2, the two-call protocol): it only says how much output the part
        // would give, and the application calls again with the same part and a buffer, so the
        // part is not taken (`cryptoki` and others always ask first).
        m.op_active(h, kind)?;
    } else {
        m.op_update(h, kind, part)?;
    }
    // Parts are buffered and processed at the final call: no output yet.
    // SAFETY: `out_len` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(out_len, 0) }
}

/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn last(
    h: CK_SESSION_HANDLE,
    kind: Kind,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `out_len` is NULL or a valid length and `out` NULL or a buffer of `*out_len` bytes,
    // and the OutBuf does not outlive this call (this body's contract).
    let out = unsafe { OutBuf::new(out, out_len) }?;
    out.deliver(m.crypt_final(h, kind, out.capacity())?)
}

ck_fn!(
    /// §5.8 C_EncryptInit.
    C_EncryptInit = unsafe encrypt_init(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn encrypt_init(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    // SAFETY: this body's contract is `init`'s.
    unsafe { init(h, Kind::Encrypt, mech, key) }
}

ck_fn!(
    /// §5.8 C_Encrypt.
    C_Encrypt = unsafe encrypt(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn encrypt(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    // SAFETY: this body's contract is `single`'s.
    unsafe { single(h, Kind::Encrypt, data, len, out, out_len) }
}

ck_fn!(
    /// §5.8 C_EncryptUpdate (buffers; output comes at `C_EncryptFinal`).
    C_EncryptUpdate = unsafe encrypt_update(h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn encrypt_update(
    h: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    // SAFETY: this body's contract is `update`'s.
    unsafe { update(h, Kind::Encrypt, part, len, out, out_len) }
}

ck_fn!(
    /// §5.8 C_EncryptFinal.
    C_EncryptFinal = unsafe encrypt_final(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn encrypt_final(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    // SAFETY: this body's contract is `last`'s.
    unsafe { last(h, Kind::Encrypt, out, out_len) }
}

ck_fn!(
    /// §5.9 C_DecryptInit.
    C_DecryptInit = unsafe decrypt_init(h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn decrypt_init(
    h: CK_SESSION_HANDLE,
    mech: *mut CK_MECHANISM,
    key: CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    // SAFETY: this body's contract is `init`'s.
    unsafe { init(h, Kind::Decrypt, mech, key) }
}

ck_fn!(
    /// §5.9 C_Decrypt.
    C_Decrypt = unsafe decrypt(h: CK_SESSION_HANDLE, data: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn decrypt(
    h: CK_SESSION_HANDLE,
    data: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    // SAFETY: this body's contract is `single`'s.
    unsafe { single(h, Kind::Decrypt, data, len, out, out_len) }
}

ck_fn!(
    /// §5.9 C_DecryptUpdate (buffers; output comes at `C_DecryptFinal`).
    C_DecryptUpdate = unsafe decrypt_update(h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn decrypt_update(
    h: CK_SESSION_HANDLE,
    part: *mut CK_BYTE,
    len: CK_ULONG,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    // SAFETY: this body's contract is `update`'s.
    unsafe { update(h, Kind::Decrypt, part, len, out, out_len) }
}

ck_fn!(
    /// §5.9 C_DecryptFinal.
    C_DecryptFinal = unsafe decrypt_final(h: CK_SESSION_HANDLE, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn decrypt_final(
    h: CK_SESSION_HANDLE,
    out: *mut CK_BYTE,
    out_len: *mut CK_ULONG,
) -> Result<(), Ckr> {
    // SAFETY: this body's contract is `last`'s.
    unsafe { last(h, Kind::Decrypt, out, out_len) }
}

ck_fn!(
    /// §5.13 C_DigestEncryptUpdate: not supported.
    C_DigestEncryptUpdate => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.13 C_DecryptDigestUpdate: not supported.
    C_DecryptDigestUpdate => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.13 C_SignEncryptUpdate: not supported.
    C_SignEncryptUpdate => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.13 C_DecryptVerifyUpdate: not supported.
    C_DecryptVerifyUpdate => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, part: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);

ck_fn!(
    /// §5.10 C_MessageEncryptInit: message-based encryption is not supported.
    C_MessageEncryptInit => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
ck_fn!(
    /// §5.10 C_EncryptMessage: not supported.
    C_EncryptMessage => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, aad: *mut CK_BYTE, aad_len: CK_ULONG,
     data: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.10 C_EncryptMessageBegin: not supported.
    C_EncryptMessageBegin => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, aad: *mut CK_BYTE, aad_len: CK_ULONG)
);
ck_fn!(
    /// §5.10 C_EncryptMessageNext: not supported.
    C_EncryptMessageNext => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, data: *mut CK_BYTE, len: CK_ULONG,
     out: *mut CK_BYTE, out_len: *mut CK_ULONG, flags: CK_FLAGS)
);
ck_fn!(
    /// §5.10 C_MessageEncryptFinal: not supported.
    C_MessageEncryptFinal => Ckr::FUNCTION_NOT_SUPPORTED; (h: CK_SESSION_HANDLE)
);
ck_fn!(
    /// §5.11 C_MessageDecryptInit: message-based decryption is not supported.
    C_MessageDecryptInit => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, mech: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE)
);
ck_fn!(
    /// §5.11 C_DecryptMessage: not supported.
    C_DecryptMessage => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, aad: *mut CK_BYTE, aad_len: CK_ULONG,
     data: *mut CK_BYTE, len: CK_ULONG, out: *mut CK_BYTE, out_len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.11 C_DecryptMessageBegin: not supported.
    C_DecryptMessageBegin => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, aad: *mut CK_BYTE, aad_len: CK_ULONG)
);
ck_fn!(
    /// §5.11 C_DecryptMessageNext: not supported.
    C_DecryptMessageNext => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, param: *mut c_void, param_len: CK_ULONG, data: *mut CK_BYTE, len: CK_ULONG,
     out: *mut CK_BYTE, out_len: *mut CK_ULONG, flags: CK_FLAGS)
);
ck_fn!(
    /// §5.11 C_MessageDecryptFinal: not supported.
    C_MessageDecryptFinal => Ckr::FUNCTION_NOT_SUPPORTED; (h: CK_SESSION_HANDLE)
);
