//! Slot and token management (PKCS#11 3.0 §5.5).

use std::ffi::c_void;

use cloudkey_protocol::msg::TokenInfo;
use cryptoki_sys as ck;
use cryptoki_sys::{
    CK_BBOOL, CK_FLAGS, CK_MECHANISM_INFO, CK_MECHANISM_TYPE, CK_SESSION_HANDLE, CK_SLOT_ID,
    CK_SLOT_INFO, CK_TOKEN_INFO, CK_ULONG, CK_UTF8CHAR, CK_VERSION,
};

use super::general::{library_version, padded};
use super::ptr;
use crate::error::Ckr;
use crate::module;
use crate::session::{MAX_PIN, MIN_PIN};

const HARDWARE: CK_VERSION = CK_VERSION { major: 1, minor: 0 };

ck_fn!(
    /// §5.5 C_GetSlotList: every configured slot, or (`tokenPresent`) those whose token the
    /// cluster has.
    C_GetSlotList = unsafe get_slot_list(present: CK_BBOOL, list: *mut CK_SLOT_ID, count: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_slot_list(
    present: CK_BBOOL,
    list: *mut CK_SLOT_ID,
    count: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if count.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let mut ids = Vec::with_capacity(m.slots.len());
    for slot in &m.slots {
        if present == 0 {
            ids.push(slot.id);
            continue;
        }
        match m.token_info(slot, false) {
            Ok(_) => ids.push(slot.id),
            Err(e) if e == Ckr::TOKEN_NOT_PRESENT => {}
            Err(e) => return Err(e),
        }
    }
    // SAFETY: `count` is NULL or a valid count and `list` NULL or an array of `*count` entries
    // (this body's contract).
    unsafe { ptr::out_list(list, count, &ids) }
}

ck_fn!(
    /// §5.5 C_GetSlotInfo.
    C_GetSlotInfo = unsafe get_slot_info(id: CK_SLOT_ID, info: *mut CK_SLOT_INFO)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_slot_info(id: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> Result<(), Ckr> {
    let m = module::get()?;
    let slot = m.slot(id)?;
    if info.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let present = match m.token_info(slot, false) {
        Ok(_) => true,
        Err(e) if e == Ckr::TOKEN_NOT_PRESENT => false,
        Err(e) => return Err(e),
    };
    let flags = ck::CKF_HW_SLOT
        | ck::CKF_REMOVABLE_DEVICE
        | if present { ck::CKF_TOKEN_PRESENT } else { 0 };
    // SAFETY: `info` is NULL or valid for writes (this body's contract).
    unsafe {
        ptr::out_value(
            info,
            CK_SLOT_INFO {
                slotDescription: padded(&format!("cloudkey cluster token {}", slot.label())),
                manufacturerID: padded("cloudkey"),
                flags,
                hardwareVersion: HARDWARE,
                firmwareVersion: library_version(),
            },
        )
    }
}

/// `CKF_*_PIN_COUNT_LOW`, `_FINAL_TRY`, `_LOCKED` for one PIN.
pub(super) fn pin_flags(
    failures: u32,
    locked: bool,
    max: u32,
    low: CK_FLAGS,
    last: CK_FLAGS,
    lock: CK_FLAGS,
) -> CK_FLAGS {
    if locked {
        return lock;
    }
    let mut f = 0;
    if failures > 0 {
        f |= low;
    }
    if max > 0 && failures.saturating_add(1) >= max {
        f |= last;
    }
    f
}

/// `CK_TOKEN_INFO.flags` of a token.
pub(crate) fn token_flags(t: &TokenInfo) -> CK_FLAGS {
    let mut f = ck::CKF_RNG | ck::CKF_LOGIN_REQUIRED | ck::CKF_TOKEN_INITIALIZED;
    if t.user_pin_initialized {
        f |= ck::CKF_USER_PIN_INITIALIZED;
    }
    f | pin_flags(
        t.user_failures,
        t.user_locked,
        t.max_failures,
        ck::CKF_USER_PIN_COUNT_LOW,
        ck::CKF_USER_PIN_FINAL_TRY,
        ck::CKF_USER_PIN_LOCKED,
    ) | pin_flags(
        t.so_failures,
        t.so_locked,
        t.max_failures,
        ck::CKF_SO_PIN_COUNT_LOW,
        ck::CKF_SO_PIN_FINAL_TRY,
        ck::CKF_SO_PIN_LOCKED,
    )
}

ck_fn!(
    /// §5.5 C_GetTokenInfo: label, serial (the token id) and PIN state from the cluster.
    C_GetTokenInfo = unsafe get_token_info(id: CK_SLOT_ID, info: *mut CK_TOKEN_INFO)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_token_info(id: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> Result<(), Ckr> {
    let m = module::get()?;
    let slot = m.slot(id)?;
    if info.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let t = m.token_info(slot, false)?;
    let (sessions, rw) = m.sessions.counts(usize::try_from(id).unwrap_or(usize::MAX));
    // SAFETY: `info` is NULL or valid for writes (this body's contract).
    unsafe {
        ptr::out_value(
            info,
            CK_TOKEN_INFO {
                label: padded(&t.label),
                manufacturerID: padded("cloudkey"),
                model: padded("cloudkey"),
                serialNumber: padded(&t.id.to_string()),
                flags: token_flags(&t),
                ulMaxSessionCount: ck::CK_EFFECTIVELY_INFINITE,
                ulSessionCount: sessions as CK_ULONG,
                ulMaxRwSessionCount: ck::CK_EFFECTIVELY_INFINITE,
                ulRwSessionCount: rw as CK_ULONG,
                ulMaxPinLen: MAX_PIN as CK_ULONG,
                ulMinPinLen: MIN_PIN as CK_ULONG,
                ulTotalPublicMemory: ck::CK_UNAVAILABLE_INFORMATION,
                ulFreePublicMemory: ck::CK_UNAVAILABLE_INFORMATION,
                ulTotalPrivateMemory: ck::CK_UNAVAILABLE_INFORMATION,
                ulFreePrivateMemory: ck::CK_UNAVAILABLE_INFORMATION,
                hardwareVersion: HARDWARE,
                firmwareVersion: library_version(),
                utcTime: padded(""),
            },
        )
    }
}

ck_fn!(
    /// §5.5 C_GetMechanismList.
    C_GetMechanismList = unsafe get_mechanism_list(id: CK_SLOT_ID, list: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_mechanism_list(
    id: CK_SLOT_ID,
    list: *mut CK_MECHANISM_TYPE,
    count: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    m.slot(id)?;
    // SAFETY: `count` is NULL or a valid count and `list` NULL or an array of `*count` entries
    // (this body's contract).
    unsafe { ptr::out_list(list, count, &m.numbering.list()) }
}

ck_fn!(
    /// §5.5 C_GetMechanismInfo.
    C_GetMechanismInfo = unsafe get_mechanism_info(id: CK_SLOT_ID, ty: CK_MECHANISM_TYPE, info: *mut CK_MECHANISM_INFO)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_mechanism_info(
    id: CK_SLOT_ID,
    ty: CK_MECHANISM_TYPE,
    info: *mut CK_MECHANISM_INFO,
) -> Result<(), Ckr> {
    let m = module::get()?;
    m.slot(id)?;
    let spec = m.numbering.spec(ty)?;
    // SAFETY: `info` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(info, spec.info()) }
}

/// A 32-byte, space-padded `CK_UTF8CHAR` label as a string.
pub(super) fn label_of(raw: &[u8]) -> Result<String, Ckr> {
    let end = raw
        .iter()
        .rposition(|b| *b != b' ' && *b != 0)
        .map_or(0, |i| i + 1);
    String::from_utf8(raw[..end].to_vec()).map_err(|_| Ckr::ARGUMENTS_BAD)
}

ck_fn!(
    /// §5.5 C_InitToken.
    C_InitToken = unsafe init_token(id: CK_SLOT_ID, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG, label: *mut CK_UTF8CHAR)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn init_token(
    id: CK_SLOT_ID,
    pin: *mut CK_UTF8CHAR,
    pin_len: CK_ULONG,
    label: *mut CK_UTF8CHAR,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if label.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `label` is NULL or valid for reads of `32` bytes (this body's contract).
    let label = label_of(unsafe { ptr::in_bytes(label, 32) }?)?;
    // SAFETY: `pin` is NULL or valid for reads of `pin_len` bytes (this body's contract).
    let pin = unsafe { ptr::in_secret(pin, pin_len) }?;
    m.init_token(id, pin, label)
}

ck_fn!(
    /// §5.5 C_InitPIN.
    C_InitPIN = unsafe init_pin(h: CK_SESSION_HANDLE, pin: *mut CK_UTF8CHAR, len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn init_pin(
    h: CK_SESSION_HANDLE,
    pin: *mut CK_UTF8CHAR,
    len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `pin` is NULL or valid for reads of `len` bytes (this body's contract).
    m.init_pin(h, unsafe { ptr::in_secret(pin, len) }?)
}

ck_fn!(
    /// §5.5 C_SetPIN.
    C_SetPIN = unsafe set_pin(h: CK_SESSION_HANDLE, old: *mut CK_UTF8CHAR, old_len: CK_ULONG, new: *mut CK_UTF8CHAR, new_len: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn set_pin(
    h: CK_SESSION_HANDLE,
    old: *mut CK_UTF8CHAR,
    old_len: CK_ULONG,
    new: *mut CK_UTF8CHAR,
    new_len: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    m.set_pin(
        h,
        // SAFETY: `old` is NULL or valid for reads of `old_len` bytes (this body's contract).
        unsafe { ptr::in_secret(old, old_len) }?,
        // SAFETY: `new` is NULL or valid for reads of `new_len` bytes (this body's contract).
        unsafe { ptr::in_secret(new, new_len) }?,
    )
}

ck_fn!(
    /// §5.5 C_WaitForSlotEvent: slots do not change while the module runs.
    C_WaitForSlotEvent = wait_for_slot_event(flags: CK_FLAGS, slot: *mut CK_SLOT_ID, reserved: *mut c_void)
);
pub(super) fn wait_for_slot_event(
    flags: CK_FLAGS,
    _slot: *mut CK_SLOT_ID,
    _reserved: *mut c_void,
) -> Result<(), Ckr> {
    module::get()?;
    if flags & ck::CKF_DONT_BLOCK != 0 {
        Err(Ckr::NO_EVENT)
    } else {
        Err(Ckr::FUNCTION_NOT_SUPPORTED)
    }
}

#[cfg(test)]
mod tests {
    use cloudkey_protocol::msg::TokenId;

    use super::*;

    #[test]
    fn labels_and_flags() {
        assert_eq!(
            label_of(b"main                            ").unwrap(),
            "main"
        );
        assert_eq!(label_of(b"  ").unwrap(), "");
        assert_eq!(label_of(b"\xff").unwrap_err(), Ckr::ARGUMENTS_BAD);
        let mut t = TokenInfo {
            id: TokenId(3),
            label: "t".into(),
            user_pin_initialized: true,
            user_failures: 0,
            user_locked: false,
            so_failures: 0,
            so_locked: false,
            max_failures: 3,
            objects: 0,
        };
        let f = token_flags(&t);
        assert_ne!(f & ck::CKF_USER_PIN_INITIALIZED, 0);
        assert_eq!(
            f & (ck::CKF_USER_PIN_COUNT_LOW | ck::CKF_USER_PIN_FINAL_TRY),
            0
        );
        t.user_failures = 2;
        t.so_failures = 1;
        let f = token_flags(&t);
        assert_ne!(f & ck::CKF_USER_PIN_COUNT_LOW, 0);
        assert_ne!(f & ck::CKF_USER_PIN_FINAL_TRY, 0);
        assert_ne!(f & ck::CKF_SO_PIN_COUNT_LOW, 0);
        assert_eq!(f & ck::CKF_SO_PIN_FINAL_TRY, 0);
        t.user_locked = true;
        assert_ne!(token_flags(&t) & ck::CKF_USER_PIN_LOCKED, 0);
    }
}
