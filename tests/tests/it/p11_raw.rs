//! Raw calls into the module (`cryptoki-sys`) for what the `cryptoki` crate does not let a
//! test do: the two-call size protocol with a NULL or too-short output buffer, and handles that
//! were never issued. The module is opened again by path, which gives the same instance (and
//! state) the `cryptoki` context of the process uses, so sessions and objects made through
//! `cryptoki` are used here by their handles.
//!
//! The only `unsafe` code of the integration tests; every pointer handed to the module points
//! into a live Rust buffer of the stated length.
#![allow(unsafe_code)]

use std::path::Path;
use std::ptr;

use anyhow::{Context, Result};
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_ATTRIBUTE_TYPE, CK_MECHANISM, CK_MECHANISM_TYPE, CK_OBJECT_HANDLE, CK_RV,
    CK_SESSION_HANDLE, CK_ULONG,
};

/// The module's C functions.
pub struct Raw(cryptoki_sys::Pkcs11);

fn len(n: usize) -> CK_ULONG {
    CK_ULONG::try_from(n).unwrap_or(CK_ULONG::MAX)
}

/// An output buffer: NULL with length 0 for `None`.
fn out_ptr(out: Option<&mut [u8]>) -> (*mut u8, CK_ULONG) {
    match out {
        Some(b) => (b.as_mut_ptr(), len(b.len())),
        None => (ptr::null_mut(), 0),
    }
}

impl Raw {
    /// Opens the module at `path` (already loaded and initialised by `cryptoki`).
    pub fn open(path: &Path) -> Result<Self> {
        // SAFETY: the library is the module under test, already loaded in this process; opening
        // it again runs no initialiser and only resolves its symbols.
        let lib = unsafe { cryptoki_sys::Pkcs11::new(path) }
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self(lib))
    }

    /// `C_SignInit` with a mechanism that takes no parameter.
    pub fn sign_init(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
    ) -> CK_RV {
        let mut m = CK_MECHANISM {
            mechanism,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        // SAFETY: `m` lives across the call and has no parameter.
        unsafe { self.0.C_SignInit(session, &mut m, key) }
    }

    /// `C_Sign` into `out` (NULL for `None`): the return value and the length the module
    /// wrote back.
    pub fn sign(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> (CK_RV, CK_ULONG) {
        let (p, mut n) = out_ptr(out);
        // SAFETY: `data` is read-only input of its length (the module does not write it); `p`
        // is NULL or a buffer of `n` bytes; `n` lives across the call.
        let rv = unsafe {
            self.0.C_Sign(
                session,
                data.as_ptr().cast_mut(),
                len(data.len()),
                p,
                &mut n,
            )
        };
        (rv, n)
    }

    /// `C_EncryptInit` with a mechanism whose parameter is a 16-byte IV (`CKM_AES_CBC_PAD`).
    pub fn encrypt_init_iv(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        key: CK_OBJECT_HANDLE,
        iv: &[u8; 16],
    ) -> CK_RV {
        let mut iv = *iv;
        let mut m = CK_MECHANISM {
            mechanism,
            pParameter: iv.as_mut_ptr().cast(),
            ulParameterLen: len(iv.len()),
        };
        // SAFETY: `m` and the IV it points to live across the call.
        unsafe { self.0.C_EncryptInit(session, &mut m, key) }
    }

    /// `C_Encrypt` into `out` (NULL for `None`).
    pub fn encrypt(
        &self,
        session: CK_SESSION_HANDLE,
        data: &[u8],
        out: Option<&mut [u8]>,
    ) -> (CK_RV, CK_ULONG) {
        let (p, mut n) = out_ptr(out);
        // SAFETY: as in `sign`.
        let rv = unsafe {
            self.0.C_Encrypt(
                session,
                data.as_ptr().cast_mut(),
                len(data.len()),
                p,
                &mut n,
            )
        };
        (rv, n)
    }

    /// `C_WrapKey` with a mechanism that takes no parameter, into `out` (NULL for `None`).
    pub fn wrap_key(
        &self,
        session: CK_SESSION_HANDLE,
        mechanism: CK_MECHANISM_TYPE,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        out: Option<&mut [u8]>,
    ) -> (CK_RV, CK_ULONG) {
        let mut m = CK_MECHANISM {
            mechanism,
            pParameter: ptr::null_mut(),
            ulParameterLen: 0,
        };
        let (p, mut n) = out_ptr(out);
        // SAFETY: `m` has no parameter; `p` is NULL or a buffer of `n` bytes; both live across
        // the call.
        let rv = unsafe { self.0.C_WrapKey(session, &mut m, wrapping, key, p, &mut n) };
        (rv, n)
    }

    /// `C_GetAttributeValue` of one attribute into `out` (NULL for `None`): the return value
    /// and the `ulValueLen` the module wrote back.
    pub fn attribute(
        &self,
        session: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        kind: CK_ATTRIBUTE_TYPE,
        out: Option<&mut [u8]>,
    ) -> (CK_RV, CK_ULONG) {
        let (p, n) = out_ptr(out);
        let mut a = CK_ATTRIBUTE {
            type_: kind,
            pValue: p.cast(),
            ulValueLen: n,
        };
        // SAFETY: one attribute whose value is NULL or a buffer of `n` bytes, all alive across
        // the call.
        let rv = unsafe { self.0.C_GetAttributeValue(session, object, &mut a, 1) };
        (rv, a.ulValueLen)
    }
}
