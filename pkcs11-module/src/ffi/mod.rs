//! The C ABI: the exported `C_*` functions, the `CK_FUNCTION_LIST` (v2.40) and
//! `CK_FUNCTION_LIST_3_0` tables and the `CK_INTERFACE`s.
//!
//! Every entry point is one line made by [`ck_fn!`]: a shim that catches panics
//! (`CKR_GENERAL_ERROR`), turns the body's `Result<(), Ckr>` into a `CK_RV`, and traces the call.
//! The bodies, one file per chapter of the specification, convert pointers through [`ptr`]
//! (the only place that dereferences them) and call the safe module.
//!
//! A body that reads or writes through a pointer argument is an `unsafe fn` whose `# Safety`
//! is the PKCS#11 caller contract for its arguments, and its entry point is written
//! `ck_fn!(C_Name = unsafe body(..))`: the exported function's own contract is the same, so the
//! shim's `unsafe` call is justified by its caller, and each `ptr` call in the body says in its
//! `// SAFETY:` line which part of the contract it relies on. A body that only looks at
//! handles and flags (or only compares a pointer with NULL) is a safe `fn`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cryptoki_sys::{CKR_GENERAL_ERROR, CKR_OK, CK_RV};

use crate::error::Ckr;

/// One exported PKCS#11 function: `ck_fn!(C_Name = body(arg: TYPE, ...));` makes
/// `pub unsafe extern "C" fn C_Name(arg: TYPE, ...) -> CK_RV` calling the safe `body(arg, ...)`;
/// `ck_fn!(C_Name = unsafe body(..))` the same calling an `unsafe fn` body; with `=> CKR` a
/// function that answers that error once the module is initialised.
macro_rules! ck_fn {
    ($(#[$doc:meta])* $name:ident = unsafe $body:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The PKCS#11 caller contract: every pointer argument is NULL or valid for its
        /// stated length for the duration of the call.
        #[allow(unsafe_code, non_snake_case, clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> cryptoki_sys::CK_RV {
            $crate::ffi::guard(stringify!($name), || {
                // SAFETY: the body's `# Safety` is the PKCS#11 caller contract for these
                // arguments, which the application promises by calling this function.
                unsafe { $body($($arg),*) }
            })
        }
    };
    ($(#[$doc:meta])* $name:ident = $body:ident ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// The PKCS#11 caller contract: every pointer argument is NULL or valid for its
        /// stated length for the duration of the call.
        #[allow(unsafe_code, non_snake_case, clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> cryptoki_sys::CK_RV {
            $crate::ffi::guard(stringify!($name), || $body($($arg),*))
        }
    };
    ($(#[$doc:meta])* $name:ident => $rv:expr; ( $($arg:ident : $ty:ty),* $(,)? )) => {
        $(#[$doc])*
        ///
        /// # Safety
        /// None needed: the arguments are not used.
        #[allow(unsafe_code, non_snake_case, clippy::too_many_arguments)]
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> cryptoki_sys::CK_RV {
            let _ = ($($arg,)*);
            $crate::ffi::guard(stringify!($name), || {
                $crate::module::get()?;
                Err($rv)
            })
        }
    };
}

#[allow(unsafe_code)]
pub(crate) mod ptr;

// The bodies: `unsafe fn`s over the application's pointers and the `unsafe` blocks that call
// `ptr` in them, each with its `// SAFETY:` line; no other unsafe code.
#[allow(unsafe_code)]
mod crypt;
#[allow(unsafe_code)]
mod digest;
#[allow(unsafe_code)]
mod general;
#[allow(unsafe_code)]
mod keys;
#[allow(unsafe_code)]
mod object;
#[allow(unsafe_code)]
mod session;
#[allow(unsafe_code)]
mod sign;
#[allow(unsafe_code)]
mod slot;
// The bodies called as an application would, with pointers to the tests' locals.
#[cfg(test)]
#[allow(unsafe_code)]
mod tests;

use crypt::*;
use digest::*;
use general::*;
use keys::*;
use object::*;
use session::*;
use sign::*;
use slot::*;

/// Runs a function body: a panic becomes `CKR_GENERAL_ERROR`, an error its `CK_RV`.
pub(crate) fn guard(name: &'static str, body: impl FnOnce() -> Result<(), Ckr>) -> CK_RV {
    let span = tracing::trace_span!("pkcs11", f = name);
    let _entered = span.enter();
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(e)) => {
            tracing::trace!(rv = %e, "returns");
            e.rv()
        }
        Err(_) => {
            tracing::error!(function = name, "panic caught at the PKCS#11 boundary");
            CKR_GENERAL_ERROR
        }
    }
}

macro_rules! function_list {
    ($ty:ident, $major:expr, $minor:expr, [$($f:ident),* $(,)?]) => {
        cryptoki_sys::$ty {
            version: cryptoki_sys::CK_VERSION { major: $major, minor: $minor },
            $($f: Some($f),)*
        }
    };
}

/// [`function_list!`] with every v2.40 function, then `$extra`.
macro_rules! v2_function_list {
    ($ty:ident, $major:expr, $minor:expr $(, $extra:ident)* $(,)?) => {
        function_list!(
            $ty,
            $major,
            $minor,
            [
                C_Initialize,
                C_Finalize,
                C_GetInfo,
                C_GetFunctionList,
                C_GetSlotList,
                C_GetSlotInfo,
                C_GetTokenInfo,
                C_GetMechanismList,
                C_GetMechanismInfo,
                C_InitToken,
                C_InitPIN,
                C_SetPIN,
                C_OpenSession,
                C_CloseSession,
                C_CloseAllSessions,
                C_GetSessionInfo,
                C_GetOperationState,
                C_SetOperationState,
                C_Login,
                C_Logout,
                C_CreateObject,
                C_CopyObject,
                C_DestroyObject,
                C_GetObjectSize,
                C_GetAttributeValue,
                C_SetAttributeValue,
                C_FindObjectsInit,
                C_FindObjects,
                C_FindObjectsFinal,
                C_EncryptInit,
                C_Encrypt,
                C_EncryptUpdate,
                C_EncryptFinal,
                C_DecryptInit,
                C_Decrypt,
                C_DecryptUpdate,
                C_DecryptFinal,
                C_DigestInit,
                C_Digest,
                C_DigestUpdate,
                C_DigestKey,
                C_DigestFinal,
                C_SignInit,
                C_Sign,
                C_SignUpdate,
                C_SignFinal,
                C_SignRecoverInit,
                C_SignRecover,
                C_VerifyInit,
                C_Verify,
                C_VerifyUpdate,
                C_VerifyFinal,
                C_VerifyRecoverInit,
                C_VerifyRecover,
                C_DigestEncryptUpdate,
                C_DecryptDigestUpdate,
                C_SignEncryptUpdate,
                C_DecryptVerifyUpdate,
                C_GenerateKey,
                C_GenerateKeyPair,
                C_WrapKey,
                C_UnwrapKey,
                C_DeriveKey,
                C_SeedRandom,
                C_GenerateRandom,
                C_GetFunctionStatus,
                C_CancelFunction,
                C_WaitForSlotEvent,
                $($extra,)*
            ]
        )
    };
}

/// The v2.40 function list (`C_GetFunctionList`).
pub(crate) static FUNCTION_LIST: cryptoki_sys::CK_FUNCTION_LIST =
    v2_function_list!(CK_FUNCTION_LIST, 2, 40);

/// The v3.0 function list (the "PKCS 11" interface, version 3.0): the v2.40 functions and
/// those 3.0 added.
pub(crate) static FUNCTION_LIST_3_0: cryptoki_sys::CK_FUNCTION_LIST_3_0 = v2_function_list!(
    CK_FUNCTION_LIST_3_0,
    3,
    0,
    C_GetInterfaceList,
    C_GetInterface,
    C_LoginUser,
    C_SessionCancel,
    C_MessageEncryptInit,
    C_EncryptMessage,
    C_EncryptMessageBegin,
    C_EncryptMessageNext,
    C_MessageEncryptFinal,
    C_MessageDecryptInit,
    C_DecryptMessage,
    C_DecryptMessageBegin,
    C_DecryptMessageNext,
    C_MessageDecryptFinal,
    C_MessageSignInit,
    C_SignMessage,
    C_SignMessageBegin,
    C_SignMessageNext,
    C_MessageSignFinal,
    C_MessageVerifyInit,
    C_VerifyMessage,
    C_VerifyMessageBegin,
    C_VerifyMessageNext,
    C_MessageVerifyFinal,
);

/// The interface name of both interfaces.
pub(crate) const INTERFACE_NAME: &std::ffi::CStr = c"PKCS 11";

/// The interfaces: "PKCS 11" 3.0 (the default) and "PKCS 11" 2.40.
pub(crate) static INTERFACES: [ptr::StaticInterface; 2] = [
    ptr::StaticInterface(cryptoki_sys::CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut().cast(),
        pFunctionList: (&raw const FUNCTION_LIST_3_0).cast_mut().cast(),
        flags: 0,
    }),
    ptr::StaticInterface(cryptoki_sys::CK_INTERFACE {
        pInterfaceName: INTERFACE_NAME.as_ptr().cast_mut().cast(),
        pFunctionList: (&raw const FUNCTION_LIST).cast_mut().cast(),
        flags: 0,
    }),
];

#[cfg(test)]
mod table_tests {
    use super::*;

    #[test]
    fn function_tables_are_complete() {
        // Every slot of both tables holds a function: no `None` in their Debug output.
        let v2 = format!("{FUNCTION_LIST:?}");
        let v3 = format!("{FUNCTION_LIST_3_0:?}");
        assert!(!v2.contains("None"), "{v2}");
        assert!(!v3.contains("None"), "{v3}");
        assert_eq!(v2.matches("Some(").count(), 68);
        assert_eq!(v3.matches("Some(").count(), 92);
        assert_eq!(
            (FUNCTION_LIST.version.major, FUNCTION_LIST.version.minor),
            (2, 40)
        );
        assert_eq!(
            (
                FUNCTION_LIST_3_0.version.major,
                FUNCTION_LIST_3_0.version.minor
            ),
            (3, 0)
        );
    }
}
