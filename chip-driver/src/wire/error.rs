//! The STATUS byte and payload of a refusal, both ways.

use std::time::Duration;

use super::{cmd, MAX_ERROR_DETAIL, STATUS_BAD_FRAME, STATUS_BUSY, STATUS_OK};
use crate::types::KeyId;
use crate::ChipError;

/// The permission names [`ChipError::KeyFunctionNotPermitted`] carries; anything else decodes
/// as `"operation"`.
const PERMISSIONS: [&str; 7] = [
    "sign", "verify", "encrypt", "decrypt", "wrap", "unwrap", "derive",
];

/// The STATUS byte and payload of an error response.
///
/// | variants | payload |
/// |---|---|
/// | `KeyNotLoaded`, `KeyNotExtractable` | the key id, 16 bytes |
/// | `SlotsFull` | `u32` slot count |
/// | `WrongDomain` | blob's domain kcv (8 bytes), chip's domain kcv (8 bytes) |
/// | `Timeout` | `u32` milliseconds, then the command name as UTF-8 |
/// | `Busy` | `u32` milliseconds |
/// | unit variants | empty |
/// | all others | detail text, UTF-8, at most [`MAX_ERROR_DETAIL`] bytes |
///
/// `WrongDomain` carries its kcvs as hex strings; one that is not 16 hex digits is sent as 8
/// zero bytes. Longer details are cut at a character boundary.
#[must_use]
pub fn encode_error(e: &ChipError) -> (u8, Vec<u8>) {
    let payload = match e {
        ChipError::KeyNotLoaded(id) | ChipError::KeyNotExtractable(id) => id.0.to_vec(),
        ChipError::SlotsFull(n) => n.to_be_bytes().to_vec(),
        ChipError::WrongDomain { blob, chip } => {
            let mut p = kcv_from_hex(blob).to_vec();
            p.extend_from_slice(&kcv_from_hex(chip));
            p
        }
        ChipError::Timeout { command, after } => {
            let mut p = millis(*after).to_be_bytes().to_vec();
            p.extend_from_slice(truncate_utf8(command, MAX_ERROR_DETAIL - 4).as_bytes());
            p
        }
        ChipError::Busy(after) => millis(*after).to_be_bytes().to_vec(),
        ChipError::NoDomain
        | ChipError::DomainAlreadySet
        | ChipError::BlobAuthFailed
        | ChipError::EncryptedDataInvalid
        | ChipError::WrappedKeyInvalid
        | ChipError::SignatureInvalid => Vec::new(),
        ChipError::KeyFunctionNotPermitted(what) => {
            truncate_utf8(what, MAX_ERROR_DETAIL).as_bytes().to_vec()
        }
        ChipError::BlobInvalid(s)
        | ChipError::DomainPackageInvalid(s)
        | ChipError::MechanismInvalid(s)
        | ChipError::KeyTypeInconsistent(s)
        | ChipError::KeySizeRange(s)
        | ChipError::KeyInvalid(s)
        | ChipError::DataLenRange(s)
        | ChipError::DataInvalid(s)
        | ChipError::SelfTestFailed(s)
        | ChipError::DeviceLost(s)
        | ChipError::Protocol(s)
        | ChipError::Internal(s) => truncate_utf8(s, MAX_ERROR_DETAIL).as_bytes().to_vec(),
    };
    (e.status(), payload)
}

/// Rebuilds the error a chip reported with `status` and `payload` (the inverse of
/// [`encode_error`]). Never fails: an unknown status, [`STATUS_OK`], [`STATUS_BAD_FRAME`],
/// [`STATUS_BUSY`] or a payload that does not fit the status give a [`ChipError::Protocol`].
/// Detail text that is not UTF-8 is decoded lossily.
#[must_use]
pub fn decode_error(status: u8, payload: &[u8]) -> ChipError {
    let text = || String::from_utf8_lossy(payload).into_owned();
    let bad = |what: &str| {
        ChipError::Protocol(format!(
            "malformed payload for status 0x{status:02x}: {what} ({} bytes)",
            payload.len()
        ))
    };
    let empty = |e: ChipError| {
        if payload.is_empty() {
            e
        } else {
            bad("expected no payload")
        }
    };
    let key_id = || <[u8; 16]>::try_from(payload).map(KeyId);
    match status {
        STATUS_OK => ChipError::Protocol("status OK decoded as an error".into()),
        STATUS_BAD_FRAME => ChipError::Protocol("the chip received a corrupt frame (NAK)".into()),
        STATUS_BUSY => ChipError::Protocol("the chip is busy with an earlier request".into()),
        0x10 => key_id().map_or_else(
            |_| bad("expected a 16-byte key id"),
            ChipError::KeyNotLoaded,
        ),
        0x11 => <[u8; 4]>::try_from(payload).map_or_else(
            |_| bad("expected a u32"),
            |b| ChipError::SlotsFull(u32::from_be_bytes(b)),
        ),
        0x12 => empty(ChipError::NoDomain),
        0x13 => empty(ChipError::DomainAlreadySet),
        0x14 => match payload.split_at_checked(8) {
            Some((blob, chip)) if chip.len() == 8 => ChipError::WrongDomain {
                blob: hex::encode(blob),
                chip: hex::encode(chip),
            },
            _ => bad("expected two 8-byte kcvs"),
        },
        0x15 => ChipError::BlobInvalid(text()),
        0x16 => empty(ChipError::BlobAuthFailed),
        0x17 => ChipError::DomainPackageInvalid(text()),
        0x20 => ChipError::MechanismInvalid(text()),
        0x21 => ChipError::KeyTypeInconsistent(text()),
        0x22 => ChipError::KeySizeRange(text()),
        0x23 => {
            let name = PERMISSIONS
                .iter()
                .find(|p| p.as_bytes() == payload)
                .copied();
            ChipError::KeyFunctionNotPermitted(name.unwrap_or("operation"))
        }
        0x24 => key_id().map_or_else(
            |_| bad("expected a 16-byte key id"),
            ChipError::KeyNotExtractable,
        ),
        0x25 => ChipError::KeyInvalid(text()),
        0x30 => ChipError::DataLenRange(text()),
        0x31 => ChipError::DataInvalid(text()),
        0x32 => empty(ChipError::EncryptedDataInvalid),
        0x33 => empty(ChipError::WrappedKeyInvalid),
        0x34 => empty(ChipError::SignatureInvalid),
        0x40 => ChipError::SelfTestFailed(text()),
        0x41 => ChipError::Internal(text()),
        0xE0 => match payload {
            [a, b, c, d, name @ ..] => {
                let name = cmd::ALL
                    .iter()
                    .filter_map(|&c| cmd::name(c))
                    .find(|n| n.as_bytes() == name)
                    .unwrap_or("command");
                ChipError::Timeout {
                    command: name,
                    after: Duration::from_millis(u64::from(u32::from_be_bytes([*a, *b, *c, *d]))),
                }
            }
            _ => bad("expected u32 milliseconds"),
        },
        0xE1 => ChipError::DeviceLost(text()),
        0xE2 => ChipError::Protocol(text()),
        0xE3 => <[u8; 4]>::try_from(payload).map_or_else(
            |_| bad("expected u32 milliseconds"),
            |b| ChipError::Busy(Duration::from_millis(u64::from(u32::from_be_bytes(b)))),
        ),
        other => ChipError::Protocol(format!("unknown status 0x{other:02x}")),
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn kcv_from_hex(s: &str) -> [u8; 8] {
    let mut kcv = [0u8; 8];
    if hex::decode_to_slice(s, &mut kcv).is_err() {
        kcv = [0u8; 8];
    }
    kcv
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
