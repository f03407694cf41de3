//! [`Ckr`], the module's one error type: a PKCS#11 `CK_RV` that is not `CKR_OK`.
//!
//! Every safe function of the module returns `Result<_, Ckr>`; the `ck_fn!` shims turn the
//! result into the `CK_RV` the application sees. Errors from the cluster arrive as typed
//! [`ErrorCode`]s and become a `CK_RV` only through [`ErrorCode::ckr`], in the `From` impls
//! below: this file is the one place a remote or transport failure becomes a `CK_RV`.

use std::fmt;

use cloudkey_protocol::client::ClientError;
use cloudkey_protocol::{ErrorCode, WireError};
use cryptoki_sys as ck;
use cryptoki_sys::CK_RV;

/// A PKCS#11 return value other than `CKR_OK`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ckr(pub CK_RV);

macro_rules! ckr_consts {
    ($($name:ident),+ $(,)?) => {
        impl Ckr {
            $(
                #[doc = concat!("`CKR_", stringify!($name), "`.")]
                pub const $name: Ckr = Ckr(paste_ckr!($name));
            )+

            /// The name of a `CKR_*` value this module uses, for logs.
            #[must_use]
            pub fn name(self) -> &'static str {
                $( if self.0 == paste_ckr!($name) { return stringify!($name); } )+
                "VENDOR_OR_OTHER"
            }
        }
    };
}

// `CKR_` + name → the cryptoki-sys constant.
macro_rules! paste_ckr {
    (ARGUMENTS_BAD) => {
        ck::CKR_ARGUMENTS_BAD
    };
    (ATTRIBUTE_SENSITIVE) => {
        ck::CKR_ATTRIBUTE_SENSITIVE
    };
    (ATTRIBUTE_TYPE_INVALID) => {
        ck::CKR_ATTRIBUTE_TYPE_INVALID
    };
    (ATTRIBUTE_VALUE_INVALID) => {
        ck::CKR_ATTRIBUTE_VALUE_INVALID
    };
    (BUFFER_TOO_SMALL) => {
        ck::CKR_BUFFER_TOO_SMALL
    };
    (CANT_LOCK) => {
        ck::CKR_CANT_LOCK
    };
    (CRYPTOKI_ALREADY_INITIALIZED) => {
        ck::CKR_CRYPTOKI_ALREADY_INITIALIZED
    };
    (CRYPTOKI_NOT_INITIALIZED) => {
        ck::CKR_CRYPTOKI_NOT_INITIALIZED
    };
    (DATA_LEN_RANGE) => {
        ck::CKR_DATA_LEN_RANGE
    };
    (DEVICE_ERROR) => {
        ck::CKR_DEVICE_ERROR
    };
    (DEVICE_MEMORY) => {
        ck::CKR_DEVICE_MEMORY
    };
    (ENCRYPTED_DATA_LEN_RANGE) => {
        ck::CKR_ENCRYPTED_DATA_LEN_RANGE
    };
    (FUNCTION_FAILED) => {
        ck::CKR_FUNCTION_FAILED
    };
    (FUNCTION_NOT_PARALLEL) => {
        ck::CKR_FUNCTION_NOT_PARALLEL
    };
    (FUNCTION_NOT_SUPPORTED) => {
        ck::CKR_FUNCTION_NOT_SUPPORTED
    };
    (GENERAL_ERROR) => {
        ck::CKR_GENERAL_ERROR
    };
    (HOST_MEMORY) => {
        ck::CKR_HOST_MEMORY
    };
    (KEY_HANDLE_INVALID) => {
        ck::CKR_KEY_HANDLE_INVALID
    };
    (KEY_TYPE_INCONSISTENT) => {
        ck::CKR_KEY_TYPE_INCONSISTENT
    };
    (MECHANISM_INVALID) => {
        ck::CKR_MECHANISM_INVALID
    };
    (MECHANISM_PARAM_INVALID) => {
        ck::CKR_MECHANISM_PARAM_INVALID
    };
    (NEED_TO_CREATE_THREADS) => {
        ck::CKR_NEED_TO_CREATE_THREADS
    };
    (NO_EVENT) => {
        ck::CKR_NO_EVENT
    };
    (OBJECT_HANDLE_INVALID) => {
        ck::CKR_OBJECT_HANDLE_INVALID
    };
    (OPERATION_ACTIVE) => {
        ck::CKR_OPERATION_ACTIVE
    };
    (OPERATION_NOT_INITIALIZED) => {
        ck::CKR_OPERATION_NOT_INITIALIZED
    };
    (PIN_INCORRECT) => {
        ck::CKR_PIN_INCORRECT
    };
    (PIN_LEN_RANGE) => {
        ck::CKR_PIN_LEN_RANGE
    };
    (RANDOM_SEED_NOT_SUPPORTED) => {
        ck::CKR_RANDOM_SEED_NOT_SUPPORTED
    };
    (SESSION_EXISTS) => {
        ck::CKR_SESSION_EXISTS
    };
    (SESSION_HANDLE_INVALID) => {
        ck::CKR_SESSION_HANDLE_INVALID
    };
    (SESSION_PARALLEL_NOT_SUPPORTED) => {
        ck::CKR_SESSION_PARALLEL_NOT_SUPPORTED
    };
    (SESSION_READ_ONLY) => {
        ck::CKR_SESSION_READ_ONLY
    };
    (SESSION_READ_ONLY_EXISTS) => {
        ck::CKR_SESSION_READ_ONLY_EXISTS
    };
    (SESSION_READ_WRITE_SO_EXISTS) => {
        ck::CKR_SESSION_READ_WRITE_SO_EXISTS
    };
    (SIGNATURE_INVALID) => {
        ck::CKR_SIGNATURE_INVALID
    };
    (SIGNATURE_LEN_RANGE) => {
        ck::CKR_SIGNATURE_LEN_RANGE
    };
    (SLOT_ID_INVALID) => {
        ck::CKR_SLOT_ID_INVALID
    };
    (TEMPLATE_INCONSISTENT) => {
        ck::CKR_TEMPLATE_INCONSISTENT
    };
    (TOKEN_NOT_PRESENT) => {
        ck::CKR_TOKEN_NOT_PRESENT
    };
    (USER_ALREADY_LOGGED_IN) => {
        ck::CKR_USER_ALREADY_LOGGED_IN
    };
    (USER_ANOTHER_ALREADY_LOGGED_IN) => {
        ck::CKR_USER_ANOTHER_ALREADY_LOGGED_IN
    };
    (USER_NOT_LOGGED_IN) => {
        ck::CKR_USER_NOT_LOGGED_IN
    };
    (USER_TYPE_INVALID) => {
        ck::CKR_USER_TYPE_INVALID
    };
    (WRAPPING_KEY_HANDLE_INVALID) => {
        ck::CKR_WRAPPING_KEY_HANDLE_INVALID
    };
    (UNWRAPPING_KEY_HANDLE_INVALID) => {
        ck::CKR_UNWRAPPING_KEY_HANDLE_INVALID
    };
}

ckr_consts! {
    ARGUMENTS_BAD,
    ATTRIBUTE_SENSITIVE,
    ATTRIBUTE_TYPE_INVALID,
    ATTRIBUTE_VALUE_INVALID,
    BUFFER_TOO_SMALL,
    CANT_LOCK,
    CRYPTOKI_ALREADY_INITIALIZED,
    CRYPTOKI_NOT_INITIALIZED,
    DATA_LEN_RANGE,
    DEVICE_ERROR,
    DEVICE_MEMORY,
    ENCRYPTED_DATA_LEN_RANGE,
    FUNCTION_FAILED,
    FUNCTION_NOT_PARALLEL,
    FUNCTION_NOT_SUPPORTED,
    GENERAL_ERROR,
    HOST_MEMORY,
    KEY_HANDLE_INVALID,
    KEY_TYPE_INCONSISTENT,
    MECHANISM_INVALID,
    MECHANISM_PARAM_INVALID,
    NEED_TO_CREATE_THREADS,
    NO_EVENT,
    OBJECT_HANDLE_INVALID,
    OPERATION_ACTIVE,
    OPERATION_NOT_INITIALIZED,
    PIN_INCORRECT,
    PIN_LEN_RANGE,
    RANDOM_SEED_NOT_SUPPORTED,
    SESSION_EXISTS,
    SESSION_HANDLE_INVALID,
    SESSION_PARALLEL_NOT_SUPPORTED,
    SESSION_READ_ONLY,
    SESSION_READ_ONLY_EXISTS,
    SESSION_READ_WRITE_SO_EXISTS,
    SIGNATURE_INVALID,
    SIGNATURE_LEN_RANGE,
    SLOT_ID_INVALID,
    TEMPLATE_INCONSISTENT,
    TOKEN_NOT_PRESENT,
    USER_ALREADY_LOGGED_IN,
    USER_ANOTHER_ALREADY_LOGGED_IN,
    USER_NOT_LOGGED_IN,
    USER_TYPE_INVALID,
    WRAPPING_KEY_HANDLE_INVALID,
    UNWRAPPING_KEY_HANDLE_INVALID,
}

impl Ckr {
    /// The `CK_RV` value.
    #[must_use]
    pub fn rv(self) -> CK_RV {
        self.0
    }

    /// Replaces an "object handle invalid" with the code a function that takes a *key* handle
    /// returns (`CKR_KEY_HANDLE_INVALID`, `CKR_WRAPPING_KEY_HANDLE_INVALID`, ...).
    #[must_use]
    pub fn for_key(self, key_invalid: Ckr) -> Ckr {
        if self == Ckr::OBJECT_HANDLE_INVALID {
            key_invalid
        } else {
            self
        }
    }
}

impl fmt::Debug for Ckr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CKR_{} (0x{:x})", self.name(), self.0)
    }
}

impl fmt::Display for Ckr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for Ckr {}

impl From<ErrorCode> for Ckr {
    fn from(code: ErrorCode) -> Self {
        Ckr(code.ckr())
    }
}

impl From<WireError> for Ckr {
    fn from(e: WireError) -> Self {
        e.code.into()
    }
}

impl From<ClientError> for Ckr {
    /// A node's refusal maps through [`ErrorCode::ckr`]; a cluster that cannot be reached
    /// within the deadline (or any transport failure) is `CKR_DEVICE_ERROR`.
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Remote(w) => w.code.into(),
            other => {
                let code = other.code();
                if code == ErrorCode::Unavailable {
                    Ckr::DEVICE_ERROR
                } else {
                    code.into()
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_codes_map_through_the_protocol() {
        assert_eq!(Ckr::from(ErrorCode::PinIncorrect), Ckr::PIN_INCORRECT);
        assert_eq!(Ckr::from(ErrorCode::Unavailable), Ckr::DEVICE_ERROR);
        assert_eq!(Ckr::from(ErrorCode::Busy), Ckr::FUNCTION_FAILED);
        let w = WireError::new(ErrorCode::UserNotLoggedIn, "expired");
        assert_eq!(Ckr::from(w), Ckr::USER_NOT_LOGGED_IN);
    }

    #[test]
    fn names_and_key_handles() {
        assert_eq!(Ckr::ARGUMENTS_BAD.name(), "ARGUMENTS_BAD");
        assert_eq!(
            format!("{:?}", Ckr::ARGUMENTS_BAD),
            "CKR_ARGUMENTS_BAD (0x7)"
        );
        assert_eq!(
            Ckr::OBJECT_HANDLE_INVALID.for_key(Ckr::KEY_HANDLE_INVALID),
            Ckr::KEY_HANDLE_INVALID
        );
        assert_eq!(
            Ckr::PIN_INCORRECT.for_key(Ckr::KEY_HANDLE_INVALID),
            Ckr::PIN_INCORRECT
        );
    }
}
