//! The one error type of this crate, [`ChipError`], and its stable numeric status codes.
//!
//! The status codes are what a chip puts in the STATUS byte of a serial response frame (see
//! `PROTOCOL.md`), so they are part of the protocol and never renumbered.

use std::time::Duration;

use crate::types::KeyId;

/// Result with [`ChipError`].
pub type Result<T, E = ChipError> = std::result::Result<T, E>;

/// Everything that can go wrong with a chip. Exhaustive (it never leaves the workspace): the
/// node maps every variant to a wire code, and a new one does not compile until it is mapped.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ChipError {
    /// The key is not in any slot of this chip; load its blob first.
    #[error("key {0} is not loaded in this chip")]
    KeyNotLoaded(KeyId),
    /// Every key slot is in use; evict a key first.
    #[error("all {0} key slots of the chip are in use")]
    SlotsFull(u32),
    /// The chip has no domain key yet (it must generate or import one).
    #[error("the chip has no domain key")]
    NoDomain,
    /// The chip already holds a (different) domain key.
    #[error("the chip already holds a domain key")]
    DomainAlreadySet,
    /// A blob made under another domain key.
    #[error("blob belongs to domain {blob} but this chip holds domain {chip}")]
    WrongDomain {
        /// Key check value of the blob's domain, hex.
        blob: String,
        /// Key check value of the chip's domain, hex.
        chip: String,
    },
    /// A blob that does not parse (bad version, length or field).
    #[error("malformed key blob: {0}")]
    BlobInvalid(String),
    /// A blob whose AES-GCM authentication failed: altered ciphertext or associated data.
    #[error("key blob failed authentication (altered, or bound to other attributes)")]
    BlobAuthFailed,
    /// A domain key package that is malformed, altered or made for another chip.
    #[error("domain key package rejected: {0}")]
    DomainPackageInvalid(String),
    /// The mechanism or its parameters are not supported for this key.
    #[error("mechanism not supported: {0}")]
    MechanismInvalid(String),
    /// The key type does not fit the operation or mechanism.
    #[error("key type inconsistent: {0}")]
    KeyTypeInconsistent(String),
    /// The key size is not one this chip supports.
    #[error("key size not supported: {0}")]
    KeySizeRange(String),
    /// The key's usage flags do not permit the operation.
    #[error("key usage does not permit {0}")]
    KeyFunctionNotPermitted(&'static str),
    /// Wrapping a key that is not extractable.
    #[error("key {0} is not extractable")]
    KeyNotExtractable(KeyId),
    /// Imported key material that does not parse or fit the spec.
    #[error("invalid key material: {0}")]
    KeyInvalid(String),
    /// Input data of the wrong length.
    #[error("data length out of range: {0}")]
    DataLenRange(String),
    /// Input data that is malformed (e.g. a point not on the curve).
    #[error("invalid data: {0}")]
    DataInvalid(String),
    /// Ciphertext that fails authentication or padding.
    #[error("encrypted data invalid")]
    EncryptedDataInvalid,
    /// Wrapped key data that fails authentication or does not parse.
    #[error("wrapped key invalid")]
    WrappedKeyInvalid,
    /// A signature or MAC that does not verify.
    #[error("signature invalid")]
    SignatureInvalid,
    /// A self test failed; the chip must not be used.
    #[error("self test failed: {0}")]
    SelfTestFailed(String),
    /// The chip did not answer in time.
    #[error("chip did not answer {command} within {after:?}")]
    Timeout {
        /// The command that timed out.
        command: &'static str,
        /// How long the host waited (over all attempts).
        after: Duration,
    },
    /// The device is gone (serial line closed, emulator killed, unplugged).
    #[error("chip device lost: {0}")]
    DeviceLost(String),
    /// The line or the chip broke the serial protocol beyond what retry and resync can mend.
    #[error("serial protocol error: {0}")]
    Protocol(String),
    /// The pool could not queue the request before its deadline: every chip is saturated.
    #[error("chip pool busy: no chip accepted the request within {0:?}")]
    Busy(Duration),
    /// A chip failure that fits no other variant.
    #[error("chip internal error: {0}")]
    Internal(String),
}

impl ChipError {
    /// The status byte a chip sends for this error (see `PROTOCOL.md`, "Status codes").
    #[must_use]
    pub fn status(&self) -> u8 {
        match self {
            Self::KeyNotLoaded(_) => 0x10,
            Self::SlotsFull(_) => 0x11,
            Self::NoDomain => 0x12,
            Self::DomainAlreadySet => 0x13,
            Self::WrongDomain { .. } => 0x14,
            Self::BlobInvalid(_) => 0x15,
            Self::BlobAuthFailed => 0x16,
            Self::DomainPackageInvalid(_) => 0x17,
            Self::MechanismInvalid(_) => 0x20,
            Self::KeyTypeInconsistent(_) => 0x21,
            Self::KeySizeRange(_) => 0x22,
            Self::KeyFunctionNotPermitted(_) => 0x23,
            Self::KeyNotExtractable(_) => 0x24,
            Self::KeyInvalid(_) => 0x25,
            Self::DataLenRange(_) => 0x30,
            Self::DataInvalid(_) => 0x31,
            Self::EncryptedDataInvalid => 0x32,
            Self::WrappedKeyInvalid => 0x33,
            Self::SignatureInvalid => 0x34,
            Self::SelfTestFailed(_) => 0x40,
            Self::Internal(_) => 0x41,
            // Host-side conditions: a chip never sends these, but they have codes so that every
            // error has one and the table in PROTOCOL.md is complete.
            Self::Timeout { .. } => 0xE0,
            Self::DeviceLost(_) => 0xE1,
            Self::Protocol(_) => 0xE2,
            Self::Busy(_) => 0xE3,
        }
    }

    /// True when the same request may succeed on another chip or later (transport trouble,
    /// saturation), false when the request itself is refused.
    #[must_use]
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::DeviceLost(_) | Self::Protocol(_) | Self::Busy(_)
        )
    }
}
