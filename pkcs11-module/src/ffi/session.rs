//! Session management (PKCS#11 3.0 §5.6).

use std::ffi::c_void;

use cryptoki_sys as ck;
use cryptoki_sys::{
    CK_BYTE, CK_FLAGS, CK_NOTIFY, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_SESSION_INFO, CK_SLOT_ID,
    CK_ULONG, CK_USER_TYPE, CK_UTF8CHAR,
};

use super::ptr;
use crate::error::Ckr;
use crate::module;

ck_fn!(
    /// §5.6 C_OpenSession (notification callbacks are never called).
    C_OpenSession = unsafe open_session(
        slot: CK_SLOT_ID,
        flags: CK_FLAGS,
        app: *mut c_void,
        notify: CK_NOTIFY,
        out: *mut CK_SESSION_HANDLE,
    )
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn open_session(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: *mut c_void,
    _notify: CK_NOTIFY,
    out: *mut CK_SESSION_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let h = m.open_session(slot, flags)?;
    // SAFETY: `out` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(out, h) }
}

ck_fn!(
    /// §5.6 C_CloseSession.
    C_CloseSession = close_session(h: CK_SESSION_HANDLE)
);
pub(super) fn close_session(h: CK_SESSION_HANDLE) -> Result<(), Ckr> {
    module::get()?.close_session(h)
}

ck_fn!(
    /// §5.6 C_CloseAllSessions.
    C_CloseAllSessions = close_all_sessions(slot: CK_SLOT_ID)
);
pub(super) fn close_all_sessions(slot: CK_SLOT_ID) -> Result<(), Ckr> {
    module::get()?.close_all_sessions(slot)
}

ck_fn!(
    /// §5.6 C_GetSessionInfo.
    C_GetSessionInfo = unsafe get_session_info(h: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_session_info(
    h: CK_SESSION_HANDLE,
    info: *mut CK_SESSION_INFO,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let (slot, state, flags) = m.session_info(h)?;
    // SAFETY: `info` is NULL or valid for writes (this body's contract).
    unsafe {
        ptr::out_value(
            info,
            CK_SESSION_INFO {
                slotID: slot,
                state,
                flags,
                ulDeviceError: 0,
            },
        )
    }
}

ck_fn!(
    /// §5.6 C_GetOperationState: operations live partly on the cluster; not supported.
    C_GetOperationState => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, state: *mut CK_BYTE, len: *mut CK_ULONG)
);
ck_fn!(
    /// §5.6 C_SetOperationState: not supported.
    C_SetOperationState => Ckr::FUNCTION_NOT_SUPPORTED;
    (h: CK_SESSION_HANDLE, state: *mut CK_BYTE, len: CK_ULONG, enc: CK_OBJECT_HANDLE, auth: CK_OBJECT_HANDLE)
);

ck_fn!(
    /// §5.6 C_Login.
    C_Login = unsafe login(h: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn login(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `pin` is NULL or valid for reads of `len` bytes (this body's contract).
    m.login(h, user, unsafe { ptr::in_secret(pin, len) }?)
}

ck_fn!(
    /// §5.6 C_LoginUser (3.0): tokens have no named users; an empty user name is `C_Login`.
    C_LoginUser = unsafe login_user(
        h: CK_SESSION_HANDLE,
        user: CK_USER_TYPE,
        pin: *mut CK_UTF8CHAR,
        len: CK_ULONG,
        name: *mut CK_UTF8CHAR,
        name_len: CK_ULONG,
    )
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn login_user(
    h: CK_SESSION_HANDLE,
    user: CK_USER_TYPE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
    name: *mut CK_UTF8CHAR,
    name_len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `name` is NULL or valid for reads of `name_len` bytes (this body's contract).
    if !unsafe { ptr::in_bytes(name, name_len) }?.is_empty() {
        return Err(Ckr::FUNCTION_NOT_SUPPORTED);
    }
    // SAFETY: `pin` is NULL or valid for reads of `len` bytes (this body's contract).
    m.login(h, user, unsafe { ptr::in_secret(pin, len) }?)
}

ck_fn!(
    /// §5.6 C_Logout.
    C_Logout = logout(h: CK_SESSION_HANDLE)
);
pub(super) fn logout(h: CK_SESSION_HANDLE) -> Result<(), Ckr> {
    module::get()?.logout(h)
}

ck_fn!(
    /// §5.6 C_SessionCancel (3.0): ends the operations named by `flags`.
    C_SessionCancel = session_cancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS)
);
pub(super) fn session_cancel(h: CK_SESSION_HANDLE, flags: CK_FLAGS) -> Result<(), Ckr> {
    let m = module::get()?;
    let s = m.session(h)?;
    let mut st = s.lock();
    if flags & ck::CKF_FIND_OBJECTS != 0 {
        st.find = None;
    }
    if flags & ck::CKF_DIGEST != 0 {
        st.digest = None;
    }
    if flags & ck::CKF_SIGN != 0 {
        st.sign = None;
    }
    if flags & ck::CKF_VERIFY != 0 {
        st.verify = None;
    }
    if flags & ck::CKF_ENCRYPT != 0 {
        st.encrypt = None;
    }
    if flags & ck::CKF_DECRYPT != 0 {
        st.decrypt = None;
    }
    Ok(())
}
