//! Error codes on the wire: one [`ErrorCode`] per PKCS#11 `CKR_*` value, plus a few vendor codes
//! for conditions of the cluster itself. [`ErrorCode::ckr`] is the one place a code becomes a
//! `CK_RV`, so the PKCS#11 module never guesses.

use serde::{Deserialize, Serialize};

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $value:expr => $ckr:expr ),+ $(,)?) => {
        /// A typed error code. Standard codes carry their `CKR_*` value; vendor codes have the
        /// `CKR_VENDOR_DEFINED` bit and map onto a standard value with [`ErrorCode::ckr`].
        ///
        /// Exhaustive: the wire carries a `u32`, and its decoder ([`From<u32>`]) folds a code
        /// it does not know (a newer peer's) into [`ErrorCode::GeneralError`], so no unknown
        /// value ever becomes an `ErrorCode`, and every match on one is checked by the compiler.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(into = "u32", from = "u32")]
        #[repr(u32)]
        pub enum ErrorCode {
            $( $(#[$doc])* $name = $value, )+
        }

        impl ErrorCode {
            /// Every code, for tests and documentation.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),+];

            /// The `CK_RV` a PKCS#11 application sees for this code.
            #[must_use]
            pub fn ckr(self) -> u64 {
                match self { $( ErrorCode::$name => $ckr, )+ }
            }

            /// The code's name as in the PKCS#11 specification (`CKR_` left off), or the vendor
            /// code's name.
            #[must_use]
            pub fn name(self) -> &'static str {
                match self { $( ErrorCode::$name => stringify!($name), )+ }
            }
        }

        impl From<u32> for ErrorCode {
            /// An unknown value (a newer peer) becomes [`ErrorCode::GeneralError`].
            fn from(v: u32) -> Self {
                match v { $( x if x == $value => ErrorCode::$name, )+ _ => ErrorCode::GeneralError }
            }
        }
    };
}

const VENDOR: u32 = 0x8000_0000;

codes! {
    /// CKR_GENERAL_ERROR: an internal failure with no better code.
    GeneralError = 0x05 => 0x05,
    /// CKR_FUNCTION_FAILED.
    FunctionFailed = 0x06 => 0x06,
    /// CKR_ARGUMENTS_BAD.
    ArgumentsBad = 0x07 => 0x07,
    /// CKR_ATTRIBUTE_READ_ONLY.
    AttributeReadOnly = 0x10 => 0x10,
    /// CKR_ATTRIBUTE_SENSITIVE.
    AttributeSensitive = 0x11 => 0x11,
    /// CKR_ATTRIBUTE_TYPE_INVALID.
    AttributeTypeInvalid = 0x12 => 0x12,
    /// CKR_ATTRIBUTE_VALUE_INVALID.
    AttributeValueInvalid = 0x13 => 0x13,
    /// CKR_ACTION_PROHIBITED.
    ActionProhibited = 0x1B => 0x1B,
    /// CKR_DATA_INVALID.
    DataInvalid = 0x20 => 0x20,
    /// CKR_DATA_LEN_RANGE.
    DataLenRange = 0x21 => 0x21,
    /// CKR_DEVICE_ERROR.
    DeviceError = 0x30 => 0x30,
    /// CKR_DEVICE_MEMORY.
    DeviceMemory = 0x31 => 0x31,
    /// CKR_ENCRYPTED_DATA_INVALID.
    EncryptedDataInvalid = 0x40 => 0x40,
    /// CKR_ENCRYPTED_DATA_LEN_RANGE.
    EncryptedDataLenRange = 0x41 => 0x41,
    /// CKR_FUNCTION_NOT_SUPPORTED.
    FunctionNotSupported = 0x54 => 0x54,
    /// CKR_KEY_HANDLE_INVALID.
    KeyHandleInvalid = 0x60 => 0x60,
    /// CKR_KEY_SIZE_RANGE.
    KeySizeRange = 0x62 => 0x62,
    /// CKR_KEY_TYPE_INCONSISTENT.
    KeyTypeInconsistent = 0x63 => 0x63,
    /// CKR_KEY_FUNCTION_NOT_PERMITTED.
    KeyFunctionNotPermitted = 0x68 => 0x68,
    /// CKR_KEY_NOT_WRAPPABLE.
    KeyNotWrappable = 0x69 => 0x69,
    /// CKR_KEY_UNEXTRACTABLE.
    KeyUnextractable = 0x6A => 0x6A,
    /// CKR_MECHANISM_INVALID.
    MechanismInvalid = 0x70 => 0x70,
    /// CKR_MECHANISM_PARAM_INVALID.
    MechanismParamInvalid = 0x71 => 0x71,
    /// CKR_OBJECT_HANDLE_INVALID.
    ObjectHandleInvalid = 0x82 => 0x82,
    /// CKR_PIN_INCORRECT.
    PinIncorrect = 0xA0 => 0xA0,
    /// CKR_PIN_INVALID.
    PinInvalid = 0xA1 => 0xA1,
    /// CKR_PIN_LEN_RANGE.
    PinLenRange = 0xA2 => 0xA2,
    /// CKR_PIN_LOCKED.
    PinLocked = 0xA4 => 0xA4,
    /// CKR_SESSION_COUNT: the token has as many live logins as it may have.
    SessionCount = 0xB1 => 0xB1,
    /// CKR_SESSION_READ_ONLY.
    SessionReadOnly = 0xB5 => 0xB5,
    /// CKR_SIGNATURE_INVALID.
    SignatureInvalid = 0xC0 => 0xC0,
    /// CKR_SIGNATURE_LEN_RANGE.
    SignatureLenRange = 0xC1 => 0xC1,
    /// CKR_TEMPLATE_INCOMPLETE.
    TemplateIncomplete = 0xD0 => 0xD0,
    /// CKR_TEMPLATE_INCONSISTENT.
    TemplateInconsistent = 0xD1 => 0xD1,
    /// CKR_TOKEN_NOT_PRESENT: no token with that id or label.
    TokenNotPresent = 0xE0 => 0xE0,
    /// CKR_TOKEN_NOT_RECOGNIZED.
    TokenNotRecognized = 0xE1 => 0xE1,
    /// CKR_UNWRAPPING_KEY_HANDLE_INVALID.
    UnwrappingKeyHandleInvalid = 0xF0 => 0xF0,
    /// CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT.
    UnwrappingKeyTypeInconsistent = 0xF2 => 0xF2,
    /// CKR_USER_ALREADY_LOGGED_IN.
    UserAlreadyLoggedIn = 0x100 => 0x100,
    /// CKR_USER_NOT_LOGGED_IN: no session grant, or an expired or forged one.
    UserNotLoggedIn = 0x101 => 0x101,
    /// CKR_USER_PIN_NOT_INITIALIZED.
    UserPinNotInitialized = 0x102 => 0x102,
    /// CKR_USER_TYPE_INVALID.
    UserTypeInvalid = 0x103 => 0x103,
    /// CKR_WRAPPED_KEY_INVALID.
    WrappedKeyInvalid = 0x110 => 0x110,
    /// CKR_WRAPPED_KEY_LEN_RANGE.
    WrappedKeyLenRange = 0x112 => 0x112,
    /// CKR_WRAPPING_KEY_HANDLE_INVALID.
    WrappingKeyHandleInvalid = 0x113 => 0x113,
    /// CKR_WRAPPING_KEY_TYPE_INCONSISTENT.
    WrappingKeyTypeInconsistent = 0x115 => 0x115,
    /// CKR_CURVE_NOT_SUPPORTED.
    CurveNotSupported = 0x140 => 0x140,
    /// CKR_FUNCTION_REJECTED.
    FunctionRejected = 0x200 => 0x200,
    /// Vendor: this node is not the Raft leader and could not forward the write; the
    /// [`WireError::leader_hint`] names the leader when known. Seen by PKCS#11 as
    /// CKR_DEVICE_ERROR only if the client cannot follow the hint.
    NotLeader = VENDOR | 0x01 => 0x30,
    /// Vendor: every chip queue is saturated; retry later. CKR_FUNCTION_FAILED.
    Busy = VENDOR | 0x02 => 0x06,
    /// Vendor: the cluster has not been initialised (`cloudkey init`). CKR_DEVICE_ERROR.
    ClusterNotInitialized = VENDOR | 0x03 => 0x30,
    /// Vendor: the client certificate's role does not allow this request. CKR_FUNCTION_REJECTED.
    Forbidden = VENDOR | 0x04 => 0x200,
    /// Vendor: the request could not be decoded (bad frame, unknown variant, wrong version).
    /// CKR_DEVICE_ERROR.
    BadRequest = VENDOR | 0x05 => 0x30,
    /// Vendor: no node answered within the deadline, or the node could not reach a quorum in
    /// time. CKR_DEVICE_ERROR.
    Unavailable = VENDOR | 0x06 => 0x30,
    /// Vendor: the node has not applied the client's last seen log index within the bound.
    /// CKR_DEVICE_ERROR after the client's retries.
    Stale = VENDOR | 0x07 => 0x30,
    /// Vendor: a policy puts the operation under quorum control and no approved request with
    /// exactly these parameters exists. An approval request was opened (its id is in the
    /// detail; officers see it with `cloudkey approval list`); once approved, the same call
    /// succeeds once. PKCS#11 applications see the vendor code itself,
    /// `CKR_VENDOR_DEFINED | 0x08` (0x80000008), documented in `pkcs11-module/VENDOR.md`.
    ApprovalRequired = VENDOR | 0x08 => 0x8000_0008,
}

impl From<ErrorCode> for u32 {
    fn from(c: ErrorCode) -> u32 {
        c as u32
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (0x{:x})", self.name(), *self as u32)
    }
}

/// An error as it crosses the wire: a code, a short human-readable detail (never secret), and
/// for [`ErrorCode::NotLeader`] the leader's address when the node knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct WireError {
    /// What went wrong.
    pub code: ErrorCode,
    /// A short explanation for logs and operators.
    pub detail: String,
    /// The Raft leader's client address, for [`ErrorCode::NotLeader`].
    pub leader_hint: Option<String>,
}

impl WireError {
    /// An error with a detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
            leader_hint: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_map_to_ckr() {
        for &c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from(c as u32), c);
            let ckr = c.ckr();
            // One vendor code is meant to reach applications as itself.
            let own_vendor_ckr = c == ErrorCode::ApprovalRequired;
            assert!(
                ckr != 0 && (ckr < 0x8000_0000 || own_vendor_ckr),
                "{c} maps to a standard CKR"
            );
            if (c as u32) & VENDOR == 0 {
                assert_eq!(
                    u64::from(c as u32),
                    ckr,
                    "standard codes are their CKR value"
                );
            }
        }
        assert_eq!(ErrorCode::from(0xdead_beef), ErrorCode::GeneralError);
        assert_eq!(ErrorCode::PinLocked.ckr(), cryptoki_sys::CKR_PIN_LOCKED);
        assert_eq!(
            ErrorCode::UserNotLoggedIn.ckr(),
            cryptoki_sys::CKR_USER_NOT_LOGGED_IN
        );
    }
}
