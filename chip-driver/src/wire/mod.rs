//! Command codes and the binary payload encodings of the serial protocol.
//!
//! Every [`Request`] and [`Response`] has exactly one encoding, built from a handful of
//! primitives (all integers big-endian):
//!
//! | primitive | encoding |
//! |---|---|
//! | `u8`, `u16`, `u32` | 1, 2, 4 bytes, big-endian |
//! | `bool` | one byte, `00` or `01` (anything else is malformed) |
//! | `bytes` | `u16` length, then that many bytes |
//! | `str` | `bytes` holding UTF-8 |
//! | `KeyId` | 16 bytes |
//! | `opt<T>` | `00`, or `01` followed by `T` |
//!
//! A payload must be consumed exactly: trailing bytes are malformed. The layouts of every
//! command are in `PROTOCOL.md` beside this crate; the unit tests below pin them byte by byte.
//!
//! This file holds the types (command codes, [`Request`], [`Response`]) and what the host
//! derives from a request (idempotence, timeouts, the keys it uses); `codec.rs` their byte
//! encodings, `error.rs` the encoding of a refusal ([`encode_error`], [`decode_error`]).
//!
//! Decoding is strict, so re-encoding a decoded value gives back the same bytes. A request that
//! does not decode is answered by the chip with [`ChipError::DataInvalid`] (or
//! [`ChipError::MechanismInvalid`] for an unknown mechanism or hash, [`ChipError::Protocol`]
//! for an unknown command); a response that does not decode is a [`ChipError::Protocol`] error
//! on the host.

use std::time::Duration;

use crate::types::{
    ChipInfo, CipherMech, DomainInfo, KeyBlob, KeyId, KeyRef, KeyTemplate, KeyType, NewKey,
    PublicKey, SecretBytes, SignMech, WrapMech,
};
use crate::{ChipError, Result};

mod codec;
mod error;

pub use error::{decode_error, encode_error};

/// Command codes: the CMD byte of a frame.
pub mod cmd {
    /// Model, serial, firmware, slots, identity key, domain.
    pub const INFO: u8 = 0x01;
    /// Run the known-answer self tests.
    pub const SELF_TEST: u8 = 0x02;
    /// Generate a key pair, return its blob and public key.
    pub const GENERATE_KEY_PAIR: u8 = 0x10;
    /// Generate a secret key, return its blob.
    pub const GENERATE_SECRET_KEY: u8 = 0x11;
    /// Import clear key material, return its blob.
    pub const IMPORT_KEY: u8 = 0x12;
    /// Load a blob into a key slot.
    pub const LOAD_KEY: u8 = 0x13;
    /// Free a key slot.
    pub const EVICT_KEY: u8 = 0x14;
    /// Public key of a loaded key pair.
    pub const PUBLIC_KEY: u8 = 0x15;
    /// Sign or MAC.
    pub const SIGN: u8 = 0x20;
    /// Verify a signature or MAC.
    pub const VERIFY: u8 = 0x21;
    /// Encrypt.
    pub const ENCRYPT: u8 = 0x22;
    /// Decrypt.
    pub const DECRYPT: u8 = 0x23;
    /// Wrap a loaded key.
    pub const WRAP_KEY: u8 = 0x24;
    /// Unwrap into a new blob.
    pub const UNWRAP_KEY: u8 = 0x25;
    /// ECDH into a new secret-key blob.
    pub const DERIVE_ECDH: u8 = 0x26;
    /// Random bytes.
    pub const RANDOM: u8 = 0x30;
    /// Generate the domain key (cluster bootstrap).
    pub const DOMAIN_GENERATE: u8 = 0x40;
    /// Export the domain key to another chip's identity key.
    pub const DOMAIN_EXPORT: u8 = 0x41;
    /// Import a domain key package.
    pub const DOMAIN_IMPORT: u8 = 0x42;
    /// Prove possession of the chip's identity key ([`crate::identity`]).
    pub const IDENTITY_PROOF: u8 = 0x43;

    /// Every command code, in numeric order.
    pub const ALL: [u8; 20] = [
        INFO,
        SELF_TEST,
        GENERATE_KEY_PAIR,
        GENERATE_SECRET_KEY,
        IMPORT_KEY,
        LOAD_KEY,
        EVICT_KEY,
        PUBLIC_KEY,
        SIGN,
        VERIFY,
        ENCRYPT,
        DECRYPT,
        WRAP_KEY,
        UNWRAP_KEY,
        DERIVE_ECDH,
        RANDOM,
        DOMAIN_GENERATE,
        DOMAIN_EXPORT,
        DOMAIN_IMPORT,
        IDENTITY_PROOF,
    ];

    /// The name of a command code (as [`Request::name`](super::Request::name)), `None` for an
    /// unknown code.
    #[must_use]
    pub fn name(code: u8) -> Option<&'static str> {
        Some(match code {
            INFO => "info",
            SELF_TEST => "self_test",
            GENERATE_KEY_PAIR => "generate_key_pair",
            GENERATE_SECRET_KEY => "generate_secret_key",
            IMPORT_KEY => "import_key",
            LOAD_KEY => "load_key",
            EVICT_KEY => "evict_key",
            PUBLIC_KEY => "public_key",
            SIGN => "sign",
            VERIFY => "verify",
            ENCRYPT => "encrypt",
            DECRYPT => "decrypt",
            WRAP_KEY => "wrap_key",
            UNWRAP_KEY => "unwrap_key",
            DERIVE_ECDH => "derive_ecdh",
            RANDOM => "random",
            DOMAIN_GENERATE => "domain_generate",
            DOMAIN_EXPORT => "domain_export",
            DOMAIN_IMPORT => "domain_import",
            IDENTITY_PROOF => "identity_proof",
            _ => return None,
        })
    }
}

/// STATUS of a successful response.
pub const STATUS_OK: u8 = 0x00;
/// STATUS of the chip's NAK: it received a frame whose header was good but whose payload CRC was
/// not ([`crate::frame::Event::Corrupt`]). The NAK echoes the corrupt frame's SEQ and CMD and has
/// an empty payload; the request was not executed, and the host retransmits it at once.
pub const STATUS_BAD_FRAME: u8 = 0x01;
/// STATUS a chip may send when a request arrives while it is still executing an earlier one (after
/// a host timeout). Empty payload; the request was not executed, and the host may resend it after
/// a pause. Optional for a chip: one that queues or drops such requests never sends it.
pub const STATUS_BUSY: u8 = 0x02;

/// The line speed [`Request::default_timeout`] allows for: the default of the serial driver.
const TIMEOUT_BAUD: u32 = 115_200;

/// The largest detail text [`encode_error`] puts in an error payload, in bytes.
pub const MAX_ERROR_DETAIL: usize = 255;

/// A command with its arguments: the payload of a request frame, and what every [`crate::Chip`]
/// executes ([`crate::Chip::execute`]).
///
/// # Adding a command
///
/// A command is written in three places, and nowhere else:
///
/// 1. the wire type, in this file (`wire/mod.rs`): a variant here, its code in [`cmd`] (with its
///    name and in [`cmd::ALL`]), its arms in [`Request::is_idempotent`], [`Request::key_ids`]
///    and the timing bounds, and the [`Response`] shape it is answered with (`shape`);
/// 2. its codec, in `wire/codec.rs`: the arms of [`Request::encode`] and [`Request::decode`],
///    with its layout in `PROTOCOL.md`;
/// 3. the software chip: one arm of the `execute` match in `soft/mod.rs` and the function it
///    calls.
///
/// The serial driver sends any request it is given and the pool passes requests through
/// without looking at their kind (it asks [`Request::key_ids`] where the keys are), so neither
/// changes. A typed helper on [`crate::ChipExt`] (and [`crate::pool::PoolExt`]) is optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// [`crate::ChipExt::info`].
    Info,
    /// [`crate::ChipExt::self_test`].
    SelfTest,
    /// [`crate::ChipExt::generate_key_pair`].
    GenerateKeyPair(KeyTemplate),
    /// [`crate::ChipExt::generate_secret_key`].
    GenerateSecretKey(KeyTemplate),
    /// [`crate::ChipExt::import_key`].
    ImportKey {
        /// The new key's id, spec and usage.
        template: KeyTemplate,
        /// The clear key material (encodings on [`crate::ChipExt::import_key`]).
        material: SecretBytes,
    },
    /// [`crate::ChipExt::load_key`].
    LoadKey(KeyBlob),
    /// [`crate::ChipExt::evict_key`].
    EvictKey(KeyId),
    /// [`crate::ChipExt::public_key`].
    PublicKey(KeyId),
    /// [`crate::ChipExt::sign`].
    Sign {
        /// The loaded key.
        key: KeyId,
        /// The mechanism.
        mech: SignMech,
        /// What to sign.
        data: Vec<u8>,
    },
    /// [`crate::ChipExt::verify`].
    Verify {
        /// A loaded key or a public key.
        key: KeyRef,
        /// The mechanism.
        mech: SignMech,
        /// What was signed.
        data: Vec<u8>,
        /// The signature or MAC.
        signature: Vec<u8>,
    },
    /// [`crate::ChipExt::encrypt`].
    Encrypt {
        /// A loaded key or a public key.
        key: KeyRef,
        /// The mechanism.
        mech: CipherMech,
        /// Plaintext.
        data: Vec<u8>,
    },
    /// [`crate::ChipExt::decrypt`].
    Decrypt {
        /// The loaded key.
        key: KeyId,
        /// The mechanism.
        mech: CipherMech,
        /// Ciphertext.
        data: Vec<u8>,
    },
    /// [`crate::ChipExt::wrap_key`].
    WrapKey {
        /// The wrapping key.
        wrapping: KeyRef,
        /// The mechanism.
        mech: WrapMech,
        /// The loaded key to wrap.
        target: KeyId,
    },
    /// [`crate::ChipExt::unwrap_key`].
    UnwrapKey {
        /// The loaded unwrapping key.
        unwrapping: KeyId,
        /// The mechanism.
        mech: WrapMech,
        /// The wrapped key.
        wrapped: Vec<u8>,
        /// What the unwrapped key is to be.
        target: KeyTemplate,
    },
    /// [`crate::ChipExt::derive_ecdh`].
    DeriveEcdh {
        /// The loaded EC/SM2 key.
        key: KeyId,
        /// The peer's uncompressed point.
        peer_point: Vec<u8>,
        /// What the derived key is to be.
        target: KeyTemplate,
    },
    /// [`crate::ChipExt::random`] with this many bytes.
    Random(u32),
    /// [`crate::ChipExt::domain_generate`].
    DomainGenerate,
    /// [`crate::ChipExt::domain_export`] to this recipient identity key.
    DomainExport(Vec<u8>),
    /// [`crate::ChipExt::domain_import`] of this package.
    DomainImport(Vec<u8>),
    /// [`crate::ChipExt::identity_proof`]: the chip's answer to an identity challenge
    /// ([`crate::identity`]).
    IdentityProof {
        /// The verifier's ephemeral P-256 public key (uncompressed, 65 bytes).
        challenge: Vec<u8>,
        /// The verifier's nonce.
        nonce: Vec<u8>,
    },
}

impl Request {
    /// The command code (CMD byte).
    #[must_use]
    pub fn cmd(&self) -> u8 {
        match self {
            Self::Info => cmd::INFO,
            Self::SelfTest => cmd::SELF_TEST,
            Self::GenerateKeyPair(_) => cmd::GENERATE_KEY_PAIR,
            Self::GenerateSecretKey(_) => cmd::GENERATE_SECRET_KEY,
            Self::ImportKey { .. } => cmd::IMPORT_KEY,
            Self::LoadKey(_) => cmd::LOAD_KEY,
            Self::EvictKey(_) => cmd::EVICT_KEY,
            Self::PublicKey(_) => cmd::PUBLIC_KEY,
            Self::Sign { .. } => cmd::SIGN,
            Self::Verify { .. } => cmd::VERIFY,
            Self::Encrypt { .. } => cmd::ENCRYPT,
            Self::Decrypt { .. } => cmd::DECRYPT,
            Self::WrapKey { .. } => cmd::WRAP_KEY,
            Self::UnwrapKey { .. } => cmd::UNWRAP_KEY,
            Self::DeriveEcdh { .. } => cmd::DERIVE_ECDH,
            Self::Random(_) => cmd::RANDOM,
            Self::DomainGenerate => cmd::DOMAIN_GENERATE,
            Self::DomainExport(_) => cmd::DOMAIN_EXPORT,
            Self::DomainImport(_) => cmd::DOMAIN_IMPORT,
            Self::IdentityProof { .. } => cmd::IDENTITY_PROOF,
        }
    }

    /// The loaded keys the request uses, the key it operates with first: what the
    /// [pool](crate::pool) schedules by (a chip that holds the first key is preferred). Public
    /// keys given with the request and keys it creates are not listed.
    pub fn key_ids(&self) -> impl Iterator<Item = KeyId> {
        let loaded = |k: &KeyRef| match k {
            KeyRef::Loaded(id) => Some(*id),
            KeyRef::Public(_) => None,
        };
        let (first, second) = match self {
            Self::EvictKey(id)
            | Self::PublicKey(id)
            | Self::Sign { key: id, .. }
            | Self::Decrypt { key: id, .. }
            | Self::UnwrapKey { unwrapping: id, .. }
            | Self::DeriveEcdh { key: id, .. } => (Some(*id), None),
            Self::Verify { key, .. } | Self::Encrypt { key, .. } => (loaded(key), None),
            Self::WrapKey {
                wrapping, target, ..
            } => (loaded(wrapping), Some(*target)),
            Self::Info
            | Self::SelfTest
            | Self::GenerateKeyPair(_)
            | Self::GenerateSecretKey(_)
            | Self::ImportKey { .. }
            | Self::LoadKey(_)
            | Self::Random(_)
            | Self::DomainGenerate
            | Self::DomainExport(_)
            | Self::DomainImport(_)
            | Self::IdentityProof { .. } => (None, None),
        };
        first.into_iter().chain(second)
    }

    /// The command's name for logs and errors: `"sign"`, `"load_key"`, ... (the
    /// [`crate::Chip`] method's name).
    #[must_use]
    pub fn name(&self) -> &'static str {
        cmd::name(self.cmd()).unwrap_or("unknown")
    }

    /// True when resending the request after a lost or corrupt reply is safe: executing it twice
    /// leaves the chip in the same state and gives an equally valid answer.
    ///
    /// Not idempotent: `GenerateKeyPair`, `GenerateSecretKey`, `ImportKey`, `UnwrapKey` and
    /// `DeriveEcdh` (each execution makes a new blob; a resend after a timeout would also queue
    /// a second, possibly long, generation behind the first) and `DomainGenerate` (the second
    /// execution fails with `DomainAlreadySet` although the first succeeded).
    ///
    /// `DomainExport` is idempotent: it changes nothing in the chip; a resend gives a package
    /// with another ephemeral key that the recipient accepts just the same. `DomainImport` is
    /// idempotent because importing the domain a chip already holds succeeds. `LoadKey` and
    /// `EvictKey` are idempotent by the [`crate::Chip`] contract.
    #[must_use]
    pub fn is_idempotent(&self) -> bool {
        !matches!(
            self,
            Self::GenerateKeyPair(_)
                | Self::GenerateSecretKey(_)
                | Self::ImportKey { .. }
                | Self::UnwrapKey { .. }
                | Self::DeriveEcdh { .. }
                | Self::DomainGenerate
        )
    }

    /// How long the host waits for the response to one transmission of the request on a line
    /// at the default 115 200 baud: [`timeout_at`](Self::timeout_at)`(115_200)`.
    #[must_use]
    pub fn default_timeout(&self) -> Duration {
        self.timeout_at(TIMEOUT_BAUD)
    }

    /// How long the host waits for the response to one transmission of the request, counted
    /// from the start of its transmission on a line at `baud`: the chip's execution budget plus
    /// the line time of the request and of the largest expected response.
    ///
    /// Execution budgets: 30 s for RSA key-pair generation; 10 s for the self test; 5 s for other
    /// key generation, domain generation, export and import, and the import or unwrap of an RSA
    /// key; 2 s for everything else. Line time: 10 bits per byte (8N1) of both frames, so a
    /// 16 KiB `ENCRYPT` at 115 200 baud gets about 2.9 s on top of its 2 s.
    #[must_use]
    pub fn timeout_at(&self, baud: u32) -> Duration {
        let frames = 2 * (crate::frame::HEADER_LEN + crate::frame::TRAILER_LEN);
        let bytes = self.request_len_bound() + self.response_len_bound() + frames;
        let bits = u64::try_from(bytes).unwrap_or(u64::MAX).saturating_mul(10);
        let micros = bits.saturating_mul(1_000_000) / u64::from(baud.max(1));
        self.execution_budget()
            .saturating_add(Duration::from_micros(micros))
    }

    /// The chip's time budget for executing the request; see [`timeout_at`](Self::timeout_at).
    fn execution_budget(&self) -> Duration {
        const SECS_2: Duration = Duration::from_secs(2);
        const SECS_5: Duration = Duration::from_secs(5);
        match self {
            Self::GenerateKeyPair(t) if t.spec.key_type == KeyType::Rsa => Duration::from_secs(30),
            Self::SelfTest => Duration::from_secs(10),
            Self::GenerateKeyPair(_)
            | Self::GenerateSecretKey(_)
            | Self::DomainGenerate
            | Self::DomainExport(_)
            | Self::DomainImport(_) => SECS_5,
            Self::ImportKey { template: t, .. } | Self::UnwrapKey { target: t, .. }
                if t.spec.key_type == KeyType::Rsa =>
            {
                SECS_5
            }
            _ => SECS_2,
        }
    }

    /// An upper bound of the length of [`encode`](Self::encode)'s output (without encoding:
    /// the payload may hold key material), capped at the frame maximum.
    fn request_len_bound(&self) -> usize {
        // Fixed fields: key ids, templates, tags, lengths, IVs: well under 128 bytes.
        const FIXED: usize = 128;
        let mech_len = |m: &SignMech| match m {
            SignMech::Sm2 { user_id } => user_id.len(),
            _ => 0,
        };
        let cipher_len = |m: &CipherMech| match m {
            CipherMech::AesGcm { iv, aad, .. } => iv.len() + aad.len(),
            CipherMech::RsaOaep { label, .. } => label.len(),
            _ => 0,
        };
        let wrap_len = |m: &WrapMech| match m {
            WrapMech::RsaOaep { label, .. } => label.len(),
            _ => 0,
        };
        let key_len = |k: &KeyRef| match k {
            KeyRef::Loaded(_) => 0,
            KeyRef::Public(PublicKey::EcP256(p) | PublicKey::Sm2(p)) => p.len(),
            KeyRef::Public(PublicKey::Rsa { n, e }) => n.len() + e.len(),
        };
        let variable = match self {
            Self::Info
            | Self::SelfTest
            | Self::DomainGenerate
            | Self::GenerateKeyPair(_)
            | Self::GenerateSecretKey(_)
            | Self::EvictKey(_)
            | Self::PublicKey(_)
            | Self::Random(_) => 0,
            Self::ImportKey { material, .. } => material.expose().len(),
            Self::LoadKey(blob) => blob.as_bytes().len(),
            Self::Sign { mech, data, .. } => mech_len(mech) + data.len(),
            Self::Verify {
                key,
                mech,
                data,
                signature,
            } => key_len(key) + mech_len(mech) + data.len() + signature.len(),
            Self::Encrypt { key, mech, data } => key_len(key) + cipher_len(mech) + data.len(),
            Self::Decrypt { mech, data, .. } => cipher_len(mech) + data.len(),
            Self::WrapKey { wrapping, mech, .. } => key_len(wrapping) + wrap_len(mech),
            Self::UnwrapKey { mech, wrapped, .. } => wrap_len(mech) + wrapped.len(),
            Self::DeriveEcdh { peer_point, .. } => peer_point.len(),
            Self::DomainExport(b) | Self::DomainImport(b) => b.len(),
            Self::IdentityProof { challenge, nonce } => challenge.len() + nonce.len(),
        };
        variable
            .saturating_add(FIXED)
            .min(crate::frame::MAX_PAYLOAD)
    }

    /// An upper bound of the length of the response payload, capped at the frame maximum.
    fn response_len_bound(&self) -> usize {
        // Signatures, key ids, public keys, one RSA block, error details.
        const SMALL: usize = 512;
        // New keys (an RSA-3072 blob and its public key), wrapped keys, chip info, packages.
        const KEY: usize = 4096;
        let n = match self {
            Self::Encrypt { data, .. } | Self::Decrypt { data, .. } => {
                data.len().saturating_add(SMALL)
            }
            Self::Random(n) => usize::try_from(*n)
                .unwrap_or(usize::MAX)
                .saturating_add(SMALL),
            Self::SelfTest
            | Self::LoadKey(_)
            | Self::EvictKey(_)
            | Self::PublicKey(_)
            | Self::Sign { .. }
            | Self::Verify { .. }
            | Self::IdentityProof { .. } => SMALL,
            Self::Info
            | Self::GenerateKeyPair(_)
            | Self::GenerateSecretKey(_)
            | Self::ImportKey { .. }
            | Self::WrapKey { .. }
            | Self::UnwrapKey { .. }
            | Self::DeriveEcdh { .. }
            | Self::DomainGenerate
            | Self::DomainExport(_)
            | Self::DomainImport(_) => KEY,
        };
        n.min(crate::frame::MAX_PAYLOAD)
    }
}

/// The payload of a successful response; its shape is determined by the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// To `INFO`.
    Info(ChipInfo),
    /// To `SELF_TEST`, `EVICT_KEY` and `VERIFY`: empty payload.
    Done,
    /// To `GENERATE_KEY_PAIR`, `GENERATE_SECRET_KEY`, `IMPORT_KEY`, `UNWRAP_KEY`, `DERIVE_ECDH`.
    NewKey(NewKey),
    /// To `LOAD_KEY`.
    KeyId(KeyId),
    /// To `PUBLIC_KEY`.
    PublicKey(PublicKey),
    /// To `SIGN`, `ENCRYPT`, `DECRYPT`, `WRAP_KEY`, `RANDOM`, `DOMAIN_EXPORT`.
    Bytes(Vec<u8>),
    /// To `DOMAIN_GENERATE` and `DOMAIN_IMPORT`.
    Domain(DomainInfo),
}

/// The shapes of [`Response`], for [`Response::decode`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Info,
    Done,
    NewKey,
    KeyId,
    PublicKey,
    Bytes,
    Domain,
}

fn shape(code: u8) -> Option<Shape> {
    Some(match code {
        cmd::INFO => Shape::Info,
        cmd::SELF_TEST | cmd::EVICT_KEY | cmd::VERIFY => Shape::Done,
        cmd::GENERATE_KEY_PAIR
        | cmd::GENERATE_SECRET_KEY
        | cmd::IMPORT_KEY
        | cmd::UNWRAP_KEY
        | cmd::DERIVE_ECDH => Shape::NewKey,
        cmd::LOAD_KEY => Shape::KeyId,
        cmd::PUBLIC_KEY => Shape::PublicKey,
        cmd::SIGN
        | cmd::ENCRYPT
        | cmd::DECRYPT
        | cmd::WRAP_KEY
        | cmd::RANDOM
        | cmd::DOMAIN_EXPORT
        | cmd::IDENTITY_PROOF => Shape::Bytes,
        cmd::DOMAIN_GENERATE | cmd::DOMAIN_IMPORT => Shape::Domain,
        _ => return None,
    })
}

impl Response {
    fn mismatch(self, wanted: &str) -> ChipError {
        ChipError::Protocol(format!(
            "expected a {wanted} response, got {}",
            self.shape_name()
        ))
    }

    fn shape_name(&self) -> &'static str {
        match self {
            Self::Info(_) => "chip info",
            Self::Done => "empty",
            Self::NewKey(_) => "new key",
            Self::KeyId(_) => "key id",
            Self::PublicKey(_) => "public key",
            Self::Bytes(_) => "bytes",
            Self::Domain(_) => "domain",
        }
    }

    /// The chip info of an [`Info`](Self::Info) response.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for another shape.
    pub fn into_info(self) -> Result<ChipInfo> {
        match self {
            Self::Info(i) => Ok(i),
            other => Err(other.mismatch("chip info")),
        }
    }

    /// Checks for a [`Done`](Self::Done) response.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for another shape.
    pub fn into_done(self) -> Result<()> {
        match self {
            Self::Done => Ok(()),
            other => Err(other.mismatch("empty")),
        }
    }

    /// The key of a [`NewKey`](Self::NewKey) response.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for another shape.
    pub fn into_new_key(self) -> Result<NewKey> {
        match self {
            Self::NewKey(k) => Ok(k),
            other => Err(other.mismatch("new key")),
        }
    }

    /// The id of a [`KeyId`](Self::KeyId) response.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for another shape.
    pub fn into_key_id(self) -> Result<KeyId> {
        match self {
            Self::KeyId(id) => Ok(id),
            other => Err(other.mismatch("key id")),
        }
    }

    /// The key of a [`PublicKey`](Self::PublicKey) response.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for another shape.
    pub fn into_public_key(self) -> Result<PublicKey> {
        match self {
            Self::PublicKey(pk) => Ok(pk),
            other => Err(other.mismatch("public key")),
        }
    }

    /// The bytes of a [`Bytes`](Self::Bytes) response.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for another shape.
    pub fn into_bytes(self) -> Result<Vec<u8>> {
        match self {
            Self::Bytes(b) => Ok(b),
            other => Err(other.mismatch("bytes")),
        }
    }

    /// The domain of a [`Domain`](Self::Domain) response.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for another shape.
    pub fn into_domain(self) -> Result<DomainInfo> {
        match self {
            Self::Domain(d) => Ok(d),
            other => Err(other.mismatch("domain")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::codec::tag;
    use super::*;
    use crate::types::{HashAlg, KeySpec, KeyUsage};

    fn id(b: u8) -> KeyId {
        KeyId([b; 16])
    }

    fn template() -> KeyTemplate {
        KeyTemplate {
            id: id(0x11),
            spec: KeySpec::EC_P256,
            usage: KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::SENSITIVE,
        }
    }

    #[test]
    fn random_request_layout() {
        assert_eq!(Request::Random(16).encode(), [0x00, 0x00, 0x00, 0x10]);
        assert_eq!(
            Request::decode(cmd::RANDOM, &[0, 0, 0, 16]).unwrap(),
            Request::Random(16)
        );
        assert_eq!(Request::Info.encode(), []);
    }

    #[test]
    fn template_layout() {
        #[rustfmt::skip]
        let want = [
            0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11,
            0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, // key id
            0x01,                   // key type EC P-256
            0x00, 0x00, 0x01, 0x00, // bits 256
            0x00, 0x00, 0x01, 0x03, // usage SIGN | VERIFY | SENSITIVE
        ];
        assert_eq!(Request::GenerateKeyPair(template()).encode(), want);
    }

    #[test]
    fn sign_request_layout() {
        let req = Request::Sign {
            key: id(0x22),
            mech: SignMech::Sm2 {
                user_id: b"AB".to_vec(),
            },
            data: vec![0xDE, 0xAD],
        };
        let mut want = vec![0x22; 16];
        want.extend_from_slice(&[0x04, 0x00, 0x02, b'A', b'B', 0x00, 0x02, 0xDE, 0xAD]);
        assert_eq!(req.encode(), want);
        assert_eq!(Request::decode(cmd::SIGN, &want).unwrap(), req);
    }

    #[test]
    fn encrypt_request_layout() {
        let req = Request::Encrypt {
            key: KeyRef::Public(PublicKey::Rsa {
                n: vec![0xC1, 0x02],
                e: vec![1, 0, 1],
            }),
            mech: CipherMech::RsaOaep {
                hash: HashAlg::Sha256,
                label: vec![],
            },
            data: vec![0x55],
        };
        #[rustfmt::skip]
        let want = [
            0x01,                   // key ref: public key
            0x03,                   // RSA
            0x00, 0x02, 0xC1, 0x02, // n
            0x00, 0x03, 0x01, 0x00, 0x01, // e
            0x03, 0x02,             // RSA-OAEP, SHA-256
            0x00, 0x00,             // empty label
            0x00, 0x01, 0x55,       // data
        ];
        assert_eq!(req.encode(), want);
        assert_eq!(Request::decode(cmd::ENCRYPT, &want).unwrap(), req);
    }

    #[test]
    fn new_key_response_layout() {
        let resp = Response::NewKey(NewKey {
            blob: KeyBlob(vec![1, 2, 3]),
            public: Some(PublicKey::EcP256(vec![4, 5])),
        });
        let want = [0x00, 0x03, 1, 2, 3, 0x01, 0x01, 0x00, 0x02, 4, 5];
        assert_eq!(resp.encode(), want);
        assert_eq!(
            Response::decode(cmd::GENERATE_KEY_PAIR, &want).unwrap(),
            resp
        );
        let secret = Response::NewKey(NewKey {
            blob: KeyBlob(vec![9]),
            public: None,
        });
        assert_eq!(secret.encode(), [0x00, 0x01, 9, 0x00]);
    }

    #[test]
    fn info_response_layout() {
        let info = ChipInfo {
            model: "M".into(),
            serial: "S1".into(),
            firmware: "1".into(),
            slots: 64,
            loaded: 2,
            identity_key: vec![0x04],
            domain: Some(DomainInfo { kcv: [0xAA; 8] }),
        };
        #[rustfmt::skip]
        let want = [
            0x00, 0x01, b'M',
            0x00, 0x02, b'S', b'1',
            0x00, 0x01, b'1',
            0x00, 0x00, 0x00, 0x40,
            0x00, 0x00, 0x00, 0x02,
            0x00, 0x01, 0x04,
            0x01, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA, 0xAA,
        ];
        assert_eq!(Response::Info(info.clone()).encode(), want);
        assert_eq!(
            Response::decode(cmd::INFO, &want).unwrap(),
            Response::Info(info)
        );
    }

    #[test]
    fn random_response_layout() {
        let resp = Response::Bytes(vec![7; 3]);
        assert_eq!(resp.encode(), [0x00, 0x03, 7, 7, 7]);
        assert_eq!(
            Response::decode(cmd::RANDOM, &[0, 3, 7, 7, 7]).unwrap(),
            resp
        );
    }

    #[test]
    fn malformed_requests() {
        // unknown command
        assert!(matches!(
            Request::decode(0x99, &[]),
            Err(ChipError::Protocol(_))
        ));
        // trailing byte
        assert!(matches!(
            Request::decode(cmd::INFO, &[0]),
            Err(ChipError::DataInvalid(_))
        ));
        // short
        assert!(matches!(
            Request::decode(cmd::RANDOM, &[0, 0, 1]),
            Err(ChipError::DataInvalid(_))
        ));
        // length beyond the payload
        assert!(matches!(
            Request::decode(cmd::LOAD_KEY, &[0xFF, 0xFF, 1]),
            Err(ChipError::DataInvalid(_))
        ));
        // unknown mechanism and hash
        let mut sign = vec![0u8; 16];
        sign.extend_from_slice(&[0x7F, 0x00, 0x00]);
        assert!(matches!(
            Request::decode(cmd::SIGN, &sign),
            Err(ChipError::MechanismInvalid(_))
        ));
        sign[16..].copy_from_slice(&[tag::SIGN_HMAC, 0x09, 0x00]);
        assert!(matches!(
            Request::decode(cmd::SIGN, &sign),
            Err(ChipError::MechanismInvalid(_))
        ));
        // unknown usage bit
        let mut t = Request::GenerateSecretKey(template()).encode();
        t[21] = 0x80;
        assert!(matches!(
            Request::decode(cmd::GENERATE_SECRET_KEY, &t),
            Err(ChipError::DataInvalid(_))
        ));
        // bool other than 0/1
        let mut cbc = vec![0u8; 16];
        cbc.push(tag::CIPHER_AES_CBC);
        cbc.extend_from_slice(&[0u8; 16]);
        cbc.extend_from_slice(&[0x02, 0x00, 0x00]);
        assert!(matches!(
            Request::decode(cmd::DECRYPT, &cbc),
            Err(ChipError::DataInvalid(_))
        ));
        cbc[33] = 0x01;
        assert!(Request::decode(cmd::DECRYPT, &cbc).is_ok());
    }

    #[test]
    fn malformed_responses_are_protocol_errors() {
        assert!(matches!(
            Response::decode(cmd::LOAD_KEY, &[1; 15]),
            Err(ChipError::Protocol(_))
        ));
        assert!(matches!(
            Response::decode(cmd::VERIFY, &[0]),
            Err(ChipError::Protocol(_))
        ));
        assert!(matches!(
            Response::decode(0x00, &[]),
            Err(ChipError::Protocol(_))
        ));
        let info_bad_utf8 = [0x00, 0x01, 0xFF];
        assert!(matches!(
            Response::decode(cmd::INFO, &info_bad_utf8),
            Err(ChipError::Protocol(_))
        ));
    }

    #[test]
    fn shape_accessors() {
        assert_eq!(Response::Done.into_done(), Ok(()));
        assert!(matches!(
            Response::Done.into_bytes(),
            Err(ChipError::Protocol(_))
        ));
        assert_eq!(Response::Bytes(vec![1]).into_bytes(), Ok(vec![1]));
        assert_eq!(Response::KeyId(id(3)).into_key_id(), Ok(id(3)));
        assert!(Response::KeyId(id(3)).into_new_key().is_err());
        assert!(Response::Domain(DomainInfo { kcv: [0; 8] })
            .into_domain()
            .is_ok());
        assert!(Response::Done.into_info().is_err());
        assert!(Response::Done.into_public_key().is_err());
    }

    #[test]
    fn every_command_has_a_name_and_a_response_shape() {
        for c in cmd::ALL {
            assert!(cmd::name(c).is_some(), "0x{c:02x}");
            assert!(shape(c).is_some(), "0x{c:02x}");
        }
        assert_eq!(cmd::name(0x03), None);
        assert_eq!(Request::LoadKey(KeyBlob(vec![])).name(), "load_key");
        assert_eq!(
            Request::Sign {
                key: id(0),
                mech: SignMech::Ecdsa,
                data: vec![]
            }
            .name(),
            "sign"
        );
    }

    #[test]
    fn key_ids_name_the_loaded_keys_a_request_uses() {
        let ids = |r: &Request| r.key_ids().collect::<Vec<_>>();
        let public = KeyRef::Public(PublicKey::EcP256(vec![4]));
        assert_eq!(ids(&Request::Info), []);
        assert_eq!(ids(&Request::GenerateKeyPair(template())), []);
        assert_eq!(ids(&Request::LoadKey(KeyBlob(vec![]))), []);
        let sign = Request::Sign {
            key: id(1),
            mech: SignMech::Ecdsa,
            data: vec![],
        };
        assert_eq!(ids(&sign), [id(1)]);
        let verify = |key| Request::Verify {
            key,
            mech: SignMech::Ecdsa,
            data: vec![],
            signature: vec![],
        };
        assert_eq!(ids(&verify(KeyRef::Loaded(id(2)))), [id(2)]);
        assert_eq!(ids(&verify(public.clone())), []);
        let wrap = |wrapping| Request::WrapKey {
            wrapping,
            mech: WrapMech::AesKeyWrap,
            target: id(4),
        };
        assert_eq!(ids(&wrap(KeyRef::Loaded(id(3)))), [id(3), id(4)]);
        assert_eq!(ids(&wrap(public)), [id(4)]);
        let unwrap = Request::UnwrapKey {
            unwrapping: id(5),
            mech: WrapMech::AesKeyWrap,
            wrapped: vec![],
            target: template(),
        };
        assert_eq!(ids(&unwrap), [id(5)]);
    }

    #[test]
    fn idempotence_and_timeouts() {
        let rsa = KeyTemplate {
            spec: KeySpec::RSA_3072,
            ..template()
        };
        assert!(!Request::GenerateKeyPair(template()).is_idempotent());
        assert!(!Request::DomainGenerate.is_idempotent());
        assert!(Request::DomainExport(vec![]).is_idempotent());
        assert!(Request::DomainImport(vec![]).is_idempotent());
        assert!(Request::LoadKey(KeyBlob(vec![])).is_idempotent());
        let secs = |r: &Request| r.default_timeout().as_secs_f64();
        // execution budget plus under 0.4 s of line time for small frames
        let near = |r: Request, budget: f64| {
            let t = secs(&r);
            assert!(t > budget && t < budget + 0.4, "{r:?}: {t}");
        };
        near(Request::GenerateKeyPair(rsa), 30.0);
        near(Request::GenerateKeyPair(template()), 5.0);
        near(Request::SelfTest, 10.0);
        near(Request::Random(1), 2.0);
        near(
            Request::Sign {
                key: id(1),
                mech: SignMech::Ecdsa,
                data: vec![0; 32],
            },
            2.0,
        );
        // 16 KiB each way at 115 200 baud is about 2.85 s of line time
        let big = Request::Encrypt {
            key: KeyRef::Loaded(id(1)),
            mech: CipherMech::Sm2,
            data: vec![0; crate::frame::MAX_PAYLOAD - 64],
        };
        assert!((4.8..5.0).contains(&secs(&big)), "{}", secs(&big));
        // a slower line gets more time, a faster one less
        assert!(big.timeout_at(9600) > Duration::from_secs(30));
        assert!(big.timeout_at(921_600) < Duration::from_millis(2400));
        assert!(big.timeout_at(0) > Duration::from_secs(2));
        assert_eq!(TIMEOUT_BAUD, crate::serial::DEFAULT_BAUD);
    }

    #[test]
    fn oversized_field_cannot_be_framed() {
        let req = Request::DomainImport(vec![0; 70_000]);
        let payload = req.encode();
        assert_eq!(&payload[..2], &[0xFF, 0xFF]);
        let frame = crate::frame::Frame {
            response: false,
            seq: 0,
            cmd: req.cmd(),
            status: 0,
            payload,
        };
        assert!(matches!(
            crate::frame::encode(&frame),
            Err(ChipError::DataLenRange(_))
        ));
    }

    /// The worked examples of `PROTOCOL.md`, section 3, are what this implementation sends.
    #[test]
    fn protocol_md_examples() {
        use crate::frame::{encode, Frame};
        const DOC: &str = include_str!("../../PROTOCOL.md");
        let hex = |f: Frame| {
            let bytes = encode(&f).unwrap();
            bytes
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let request = |seq, req: &Request| Frame {
            response: false,
            seq,
            cmd: req.cmd(),
            status: STATUS_OK,
            payload: req.encode(),
        };
        let response = |seq, cmd, status, payload| Frame {
            response: true,
            seq,
            cmd,
            status,
            payload,
        };
        let random: [u8; 16] = [
            0x3C, 0x91, 0x0E, 0x7A, 0x55, 0xD2, 0x18, 0xB4, 0x6F, 0x02, 0xE9, 0x47, 0xA8, 0x13,
            0xCB, 0x60,
        ];
        let key = KeyId(std::array::from_fn(|i| 0x10 + i as u8));
        let sign = Request::Sign {
            key,
            mech: SignMech::Ecdsa,
            data: (0xA0..=0xBF).collect(),
        };
        let (status, payload) = encode_error(&ChipError::KeyNotLoaded(key));
        let examples = [
            hex(request(1, &Request::Random(16))),
            hex(response(
                1,
                cmd::RANDOM,
                STATUS_OK,
                Response::Bytes(random.to_vec()).encode(),
            )),
            hex(response(1, cmd::RANDOM, STATUS_BAD_FRAME, vec![])),
            hex(request(2, &sign)),
            hex(response(2, cmd::SIGN, status, payload)),
        ];
        for e in examples {
            assert!(DOC.contains(&format!("\n{e}\n")), "PROTOCOL.md lacks {e}");
        }
    }

    fn all_errors() -> Vec<ChipError> {
        vec![
            ChipError::KeyNotLoaded(id(1)),
            ChipError::SlotsFull(64),
            ChipError::NoDomain,
            ChipError::DomainAlreadySet,
            ChipError::WrongDomain {
                blob: "0011223344556677".into(),
                chip: "8899aabbccddeeff".into(),
            },
            ChipError::BlobInvalid("short".into()),
            ChipError::BlobAuthFailed,
            ChipError::DomainPackageInvalid("not for this chip".into()),
            ChipError::MechanismInvalid("x".into()),
            ChipError::KeyTypeInconsistent("x".into()),
            ChipError::KeySizeRange("x".into()),
            ChipError::KeyFunctionNotPermitted("sign"),
            ChipError::KeyFunctionNotPermitted("derive"),
            ChipError::KeyNotExtractable(id(2)),
            ChipError::KeyInvalid("x".into()),
            ChipError::DataLenRange("x".into()),
            ChipError::DataInvalid("x".into()),
            ChipError::EncryptedDataInvalid,
            ChipError::WrappedKeyInvalid,
            ChipError::SignatureInvalid,
            ChipError::SelfTestFailed("sm2 kat".into()),
            ChipError::Timeout {
                command: "sign",
                after: Duration::from_millis(2500),
            },
            ChipError::DeviceLost("eof".into()),
            ChipError::Protocol("unknown command 0x99".into()),
            ChipError::Busy(Duration::from_millis(100)),
            ChipError::Internal("".into()),
        ]
    }

    #[test]
    fn errors_round_trip() {
        for e in all_errors() {
            let (status, payload) = encode_error(&e);
            assert_eq!(status, e.status());
            assert_eq!(decode_error(status, &payload), e, "{e:?}");
        }
    }

    #[test]
    fn error_layouts() {
        assert_eq!(
            encode_error(&ChipError::SlotsFull(64)),
            (0x11, vec![0, 0, 0, 64])
        );
        assert_eq!(encode_error(&ChipError::SignatureInvalid), (0x34, vec![]));
        assert_eq!(
            encode_error(&ChipError::KeyNotLoaded(id(5))),
            (0x10, vec![5; 16])
        );
        let e = ChipError::WrongDomain {
            blob: "0011223344556677".into(),
            chip: "zz".into(),
        };
        let mut want = vec![0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77];
        want.extend_from_slice(&[0; 8]);
        assert_eq!(encode_error(&e), (0x14, want));
    }

    #[test]
    fn error_edge_cases() {
        assert!(matches!(decode_error(0xFF, &[]), ChipError::Protocol(_)));
        assert!(matches!(
            decode_error(STATUS_OK, &[]),
            ChipError::Protocol(_)
        ));
        assert!(matches!(
            decode_error(STATUS_BAD_FRAME, &[]),
            ChipError::Protocol(_)
        ));
        assert!(matches!(
            decode_error(0x10, &[1, 2]),
            ChipError::Protocol(_)
        ));
        assert!(matches!(decode_error(0x34, &[1]), ChipError::Protocol(_)));
        assert!(matches!(
            decode_error(0x14, &[0; 15]),
            ChipError::Protocol(_)
        ));
        assert_eq!(
            decode_error(0x23, b"fly"),
            ChipError::KeyFunctionNotPermitted("operation")
        );
        assert_eq!(
            decode_error(0x31, &[0x61, 0xFF]),
            ChipError::DataInvalid("a\u{FFFD}".into())
        );
        // long details are cut at a character boundary
        let long = "é".repeat(200);
        let (_, p) = encode_error(&ChipError::Internal(long));
        assert_eq!(p.len(), 254);
        assert!(std::str::from_utf8(&p).is_ok());
        // unknown command names in timeouts
        let e = decode_error(0xE0, &[0, 0, 0, 1, b'x']);
        assert_eq!(
            e,
            ChipError::Timeout {
                command: "command",
                after: Duration::from_millis(1)
            }
        );
    }
}
