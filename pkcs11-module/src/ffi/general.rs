//! General-purpose functions (PKCS#11 3.0 §5.4) and the parallel-function stubs (§5.20).

use std::ffi::c_void;

use cryptoki_sys::{
    CK_FLAGS, CK_FUNCTION_LIST, CK_INFO, CK_INTERFACE, CK_SESSION_HANDLE, CK_ULONG, CK_UTF8CHAR,
    CK_VERSION,
};

use super::ptr;
use super::{FUNCTION_LIST, INTERFACES, INTERFACE_NAME};
use crate::error::Ckr;
use crate::module;

/// Pads `s` with spaces into a fixed-size, not NUL-terminated PKCS#11 string (truncated at a
/// character boundary when too long).
pub(crate) fn padded<const N: usize>(s: &str) -> [CK_UTF8CHAR; N] {
    let mut out = [b' '; N];
    let mut end = s.len().min(N);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    out[..end].copy_from_slice(&s.as_bytes()[..end]);
    out
}

/// The library's version from the crate version.
pub(crate) fn library_version() -> CK_VERSION {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse().unwrap_or(0));
    CK_VERSION {
        major: parts.next().unwrap_or(0),
        minor: parts.next().unwrap_or(0),
    }
}

ck_fn!(
    /// §5.4 C_Initialize.
    C_Initialize = unsafe initialize(args: *mut c_void)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn initialize(args: *mut c_void) -> Result<(), Ckr> {
    // SAFETY: `args` is NULL or a `CK_C_INITIALIZE_ARGS` (this body's contract).
    if let Some(a) = unsafe { ptr::init_args(args) } {
        module::check_init_args(&a)?;
    }
    module::initialize()
}

ck_fn!(
    /// §5.4 C_Finalize.
    C_Finalize = finalize(reserved: *mut c_void)
);
pub(super) fn finalize(reserved: *mut c_void) -> Result<(), Ckr> {
    if !reserved.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    module::finalize()
}

ck_fn!(
    /// §5.4 C_GetInfo.
    C_GetInfo = unsafe get_info(info: *mut CK_INFO)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_info(info: *mut CK_INFO) -> Result<(), Ckr> {
    module::get()?;
    // SAFETY: `info` is NULL or valid for writes (this body's contract).
    unsafe {
        ptr::out_value(
            info,
            CK_INFO {
                cryptokiVersion: FUNCTION_LIST.version,
                manufacturerID: padded("cloudkey"),
                flags: 0,
                libraryDescription: padded("cloudkey PKCS#11 module"),
                libraryVersion: library_version(),
            },
        )
    }
}

ck_fn!(
    /// §5.4 C_GetFunctionList: the v2.40 table. Works before `C_Initialize`.
    C_GetFunctionList = unsafe get_function_list(list: *mut *mut CK_FUNCTION_LIST)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_function_list(list: *mut *mut CK_FUNCTION_LIST) -> Result<(), Ckr> {
    // SAFETY: `list` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(list, (&raw const FUNCTION_LIST).cast_mut()) }
}

ck_fn!(
    /// §5.4 C_GetInterfaceList: "PKCS 11" 3.0 and 2.40. Works before `C_Initialize`.
    C_GetInterfaceList = unsafe get_interface_list(list: *mut CK_INTERFACE, count: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_interface_list(
    list: *mut CK_INTERFACE,
    count: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let all: Vec<CK_INTERFACE> = INTERFACES.iter().map(|i| i.0).collect();
    // SAFETY: `count` is NULL or a valid count and `list` NULL or an array of `*count` entries
    // (this body's contract).
    unsafe { ptr::out_list(list, count, &all) }
}

ck_fn!(
    /// §5.4 C_GetInterface: by name (NULL or "PKCS 11"), version (NULL for the default 3.0,
    /// or 3.0 or 2.40) and flags (none offered). Works before `C_Initialize`.
    C_GetInterface = unsafe get_interface(
        name: *mut CK_UTF8CHAR,
        version: *mut CK_VERSION,
        iface: *mut *mut CK_INTERFACE,
        flags: CK_FLAGS,
    )
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_interface(
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    iface: *mut *mut CK_INTERFACE,
    flags: CK_FLAGS,
) -> Result<(), Ckr> {
    if iface.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `name` is NULL or a NUL-terminated string (this body's contract).
    if unsafe { ptr::in_cstr(name) }.is_some_and(|n| n != INTERFACE_NAME.to_bytes()) {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let index = if version.is_null() {
        0
    } else {
        // SAFETY: `version` is NULL or valid for reads (this body's contract).
        match unsafe { ptr::in_value(version.cast_const()) }? {
            CK_VERSION { major: 3, minor: 0 } => 0,
            CK_VERSION {
                major: 2,
                minor: 40,
            } => 1,
            _ => return Err(Ckr::ARGUMENTS_BAD),
        }
    };
    let chosen = &INTERFACES[index];
    if flags & !chosen.0.flags != 0 {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `iface` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(iface, (&raw const chosen.0).cast_mut()) }
}

ck_fn!(
    /// §5.20 C_GetFunctionStatus: legacy, not parallel.
    C_GetFunctionStatus => Ckr::FUNCTION_NOT_PARALLEL; (h: CK_SESSION_HANDLE)
);
ck_fn!(
    /// §5.20 C_CancelFunction: legacy, not parallel.
    C_CancelFunction => Ckr::FUNCTION_NOT_PARALLEL; (h: CK_SESSION_HANDLE)
);

#[cfg(test)]
mod tests {
    use std::ptr::null_mut;

    use cryptoki_sys as ck;
    use cryptoki_sys::CK_C_INITIALIZE_ARGS;

    use super::*;
    use crate::testing::GLOBAL;

    fn args(flags: CK_FLAGS, mutexes: bool) -> CK_C_INITIALIZE_ARGS {
        extern "C" fn create(_: *mut *mut c_void) -> ck::CK_RV {
            ck::CKR_OK
        }
        extern "C" fn other(_: *mut c_void) -> ck::CK_RV {
            ck::CKR_OK
        }
        CK_C_INITIALIZE_ARGS {
            CreateMutex: mutexes.then_some(create as _),
            DestroyMutex: mutexes.then_some(other as _),
            LockMutex: mutexes.then_some(other as _),
            UnlockMutex: mutexes.then_some(other as _),
            flags,
            pReserved: null_mut(),
        }
    }

    #[test]
    fn initialize_arguments_are_checked_to_the_letter() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, as the PKCS#11 caller contract asks.
        unsafe {
            let _g = GLOBAL.lock();
            let call =
                |a: &mut CK_C_INITIALIZE_ARGS| initialize((a as *mut CK_C_INITIALIZE_ARGS).cast());
            let mut a = args(0, false);
            a.pReserved = std::ptr::NonNull::<c_void>::dangling().as_ptr();
            assert_eq!(call(&mut a), Err(Ckr::ARGUMENTS_BAD));
            let mut a = args(ck::CKF_OS_LOCKING_OK, true);
            a.LockMutex = None;
            assert_eq!(call(&mut a), Err(Ckr::ARGUMENTS_BAD));
            assert_eq!(call(&mut args(0, true)), Err(Ckr::CANT_LOCK));
            assert_eq!(
                call(&mut args(ck::CKF_LIBRARY_CANT_CREATE_OS_THREADS, false)),
                Err(Ckr::NEED_TO_CREATE_THREADS)
            );
            assert_eq!(
                call(&mut args(ck::CKF_LIBRARY_CANT_CREATE_OS_THREADS, true)),
                Err(Ckr::CANT_LOCK)
            );
            // Valid arguments reach the configuration, which the test process does not name.
            if std::env::var_os(crate::config::ENV_CONFIG).is_none() {
                assert_eq!(
                    call(&mut args(ck::CKF_OS_LOCKING_OK, true)),
                    Err(Ckr::GENERAL_ERROR)
                );
                // What GnuTLS 3.7.9 (Debian 12) passes: accepted (see `check_init_args`).
                let gnutls = ck::CKF_LIBRARY_CANT_CREATE_OS_THREADS | ck::CKF_OS_LOCKING_OK;
                assert_eq!(call(&mut args(gnutls, false)), Err(Ckr::GENERAL_ERROR));
                assert_eq!(initialize(null_mut()), Err(Ckr::GENERAL_ERROR));
            }
            assert_eq!(
                finalize(std::ptr::NonNull::<c_void>::dangling().as_ptr()),
                Err(Ckr::ARGUMENTS_BAD)
            );
            assert_eq!(finalize(null_mut()), Err(Ckr::CRYPTOKI_NOT_INITIALIZED));
        }
    }

    #[test]
    fn interfaces() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, as the PKCS#11 caller contract asks.
        unsafe {
            let mut p: *mut CK_FUNCTION_LIST = null_mut();
            get_function_list(&mut p).unwrap();
            assert_eq!(p.cast_const(), &raw const FUNCTION_LIST);
            assert_eq!(get_function_list(null_mut()), Err(Ckr::ARGUMENTS_BAD));

            let mut count: CK_ULONG = 0;
            get_interface_list(null_mut(), &mut count).unwrap();
            assert_eq!(count, 2);

            let mut i: *mut CK_INTERFACE = null_mut();
            get_interface(null_mut(), null_mut(), &mut i, 0).unwrap();
            assert_eq!(i.cast_const(), &raw const INTERFACES[0].0);
            let mut v = CK_VERSION {
                major: 2,
                minor: 40,
            };
            let mut name = *b"PKCS 11\0";
            get_interface(name.as_mut_ptr(), &mut v, &mut i, 0).unwrap();
            assert_eq!(i.cast_const(), &raw const INTERFACES[1].0);
            let mut v = CK_VERSION { major: 3, minor: 1 };
            assert_eq!(
                get_interface(null_mut(), &mut v, &mut i, 0),
                Err(Ckr::ARGUMENTS_BAD)
            );
            let mut other = *b"Vendor\0";
            assert_eq!(
                get_interface(other.as_mut_ptr(), null_mut(), &mut i, 0),
                Err(Ckr::ARGUMENTS_BAD)
            );
            assert_eq!(
                get_interface(null_mut(), null_mut(), &mut i, ck::CKF_INTERFACE_FORK_SAFE),
                Err(Ckr::ARGUMENTS_BAD)
            );
            assert_eq!(
                get_interface(null_mut(), null_mut(), null_mut(), 0),
                Err(Ckr::ARGUMENTS_BAD)
            );
        }
    }

    #[test]
    fn padding() {
        assert_eq!(&padded::<8>("ab"), b"ab      ");
        assert_eq!(&padded::<3>("abcdef"), b"abc");
        // "é" is two bytes: never cut in the middle.
        assert_eq!(&padded::<2>("aé"), b"a ");
    }
}
