//! The software chip: a [`Chip`] that computes in process and keeps its secrets in memory only.
//!
//! [`SoftChip`] is a complete chip, not a mock: it generates and seals keys, enforces usage
//! flags, has a limited number of key slots, transfers the domain key chip to chip and runs
//! known-answer self tests at power-on. It backs the `cloudkey-chip-emulator` binary (the same
//! chip behind the serial protocol) and every test that needs a chip.
//!
//! # Crypto backends
//!
//! * **aws-lc-rs** for NIST P-256 (ECDSA over a caller-supplied digest, ECDH), RSA (PKCS#1 v1.5
//!   and PSS signatures, OAEP), AES (GCM, CBC, key wrap RFC 3394/5649, CMAC RFC 4493),
//!   HMAC-SHA-*, HKDF and the random generator. aws-lc-rs key objects own their secrets inside
//!   AWS-LC, which cleanses them when they are freed (`OPENSSL_cleanse` in the `*_free`
//!   functions), and aws-lc-rs zeroizes the key bytes it keeps on the Rust side.
//! * **RustCrypto** `sm2` (curve arithmetic with precomputed tables, signature verification,
//!   encryption), `sm3` and `sm4` + `cbc` for the GM/T algorithms. The SM2 *private-key*
//!   operations (signing, decryption, ECDH) are written here on top of the `sm2` curve
//!   arithmetic, because `::sm2::dsa::SigningKey` and `::sm2::pke::DecryptingKey` neither zeroize
//!   their scalar on drop nor accept a non-UTF-8 user id; the chip's SM2 key keeps `d` and
//!   `(1 + d)^-1` (precomputed once per load, which makes signing faster) and zeroizes both.
//! * **RustCrypto** `rsa` for the RSA PKCS#1 v1.5 input aws-lc-rs cannot sign or verify:
//!   [`SignMech::RsaPkcs1`] (PKCS#11 `CKM_RSA_PKCS`) signs any input of at most `k - 11` bytes
//!   (`k` the modulus length), but aws-lc-rs signs only a digest of a hash it knows. A DER
//!   `DigestInfo` of SHA-256/384/512 is signed by aws-lc-rs (about four times faster at 2048 bits);
//!   everything else — a SHA-1 or other `DigestInfo`, the TLS 1.0/1.1 `MD5 || SHA-1` value,
//!   arbitrary data — by `rsa`'s unprefixed PKCS#1 v1.5, blinded with the aws-lc-rs random
//!   generator. PKCS#1 v1.5 signatures are deterministic, so both give the same bytes for the
//!   same input. The `rsa` form of a key is parsed from its PKCS#8 on first use only and
//!   zeroizes on drop. Verification likewise: aws-lc-rs for `DigestInfo`s of SHA-1/256/384/512,
//!   `rsa` for any other input.
//!
//! # Limits of this chip (documented, enforced with clear errors)
//!
//! * AES-GCM: the aws-lc-rs AEAD API takes 96-bit nonces and full 128-bit tags only, so
//!   [`CipherMech::AesGcm`] needs a 12-byte `iv` and `tag_bits == 128`; anything else is
//!   [`ChipError::MechanismInvalid`].
//! * RSA-PSS with SHA-1: aws-lc-rs offers no SHA-1 PSS encoding, so signing and verifying are
//!   [`ChipError::MechanismInvalid`]. (PKCS#1 v1.5 has no such limit: see above.)
//! * RSA PKCS#1 v1.5 input longer than `k - 11` bytes is [`ChipError::DataLenRange`].
//! * AES key wrap (KW and KWP) with an AES-192 wrapping key: aws-lc-rs supports 128- and
//!   256-bit key-encryption keys only ([`ChipError::MechanismInvalid`]).
//!
//! # Key blobs
//!
//! A blob is the key's clear header followed by the AES-256-GCM encryption of its material under
//! the domain key; the header is the associated data, so no attribute can be changed without the
//! blob failing authentication:
//!
//! ```text
//! offset  length  field
//!      0       1  version            BLOB_VERSION = 0x01
//!      1       8  domain kcv         first 8 bytes of HMAC-SHA-256(domain key, "cloudkey domain kcv")
//!      9      16  key id             KeyId
//!     25       1  key type           KeyType discriminant
//!     26       2  bits               big-endian u16
//!     28       4  usage              big-endian u32, KeyUsage bits
//!     32      12  nonce              random
//!     44       n  ciphertext         AES-256-GCM(domain key, nonce, material, AAD = bytes 0..32)
//!   44+n      16  tag                GCM tag
//! ```
//!
//! The material is encoded as for [`crate::ChipExt::import_key`]: the 32-byte big-endian scalar
//! for P-256 and SM2, the PKCS#8 `PrivateKeyInfo` DER for RSA, the raw value for secret keys.
//! Nonces are random (96 bits), so one domain key may seal up to 2^32 blobs (NIST SP 800-38D,
//! 8.3) — far more keys than a cluster holds.
//!
//! The domain key package is described at
//! [`SoftChip::domain_export`](crate::ChipExt::domain_export) and in [`DOMAIN_PACKAGE_LEN`].
//!
//! # Where things are
//!
//! * this file: [`SoftChip`] (configuration, power-on, NVRAM, the slot table) and its
//!   [`Chip::execute`], a match with one arm per command that calls one function;
//! * `blob`: spec and usage rules, key generation and import into blobs, loading blobs into
//!   slots and evicting them; `domain`: the domain key, blob sealing under it, and its chip-to-chip
//!   transfer; `ops`: the commands that use a loaded key (sign, verify, encrypt, decrypt, wrap,
//!   unwrap, derive);
//! * one file per algorithm family: `ec` (P-256), `sm2`, `rsa`, `sym` (AES, SM4, HMAC);
//! * `selftest`: the known-answer self tests.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use ::sm2::elliptic_curve::rand_core::{TryCryptoRng, TryRng};
use aws_lc_rs::agreement;
use aws_lc_rs::encoding::AsBigEndian;
use zeroize::Zeroizing;

mod blob;
mod domain;
mod ec;
mod ops;
mod rsa;
mod selftest;
mod sm2;
mod sym;

use self::blob::{KeyMaterial, LoadedKey};
use self::domain::DomainKey;
use self::selftest::run_self_tests;
use crate::nvram::{self, SoftNvram};
use crate::wire::{Request, Response};
use crate::{
    Chip, ChipError, ChipInfo, DomainInfo, KeyId, KeySpec, KeyUsage, NewKey, Result,
    BLOB_HEADER_LEN, MAX_RANDOM_LEN,
};

/// The model name a [`SoftChip`] reports.
pub const MODEL: &str = "cloudkey-soft";

/// The label whose HMAC under the domain key is the domain's key check value.
pub const DOMAIN_KCV_LABEL: &[u8] = b"cloudkey domain kcv";

/// Version byte of the domain key packages this chip writes.
pub const DOMAIN_PACKAGE_VERSION: u8 = 1;

/// HKDF `info` of the domain key transfer.
pub const DOMAIN_TRANSFER_INFO: &[u8] = b"cloudkey domain transfer v1";

/// Length of a domain key package: version (1) || kcv (8) || ephemeral public key (65) ||
/// nonce (12) || encrypted domain key (32) || tag (16).
///
/// ```text
/// offset  length  field
///      0       1  version      DOMAIN_PACKAGE_VERSION = 0x01
///      1       8  kcv          key check value of the domain key inside (clear, authenticated)
///      9      65  E            sender's ephemeral P-256 public key, uncompressed SEC1
///     74      12  nonce        random
///     86      32  ciphertext   AES-256-GCM(K, nonce, domain key, AAD)
///    118      16  tag
///
/// Z   = x-coordinate of ECDH(e, R)      R = recipient chip's identity key (65 bytes, uncompressed)
/// K   = HKDF-SHA-256(salt = E || R, IKM = Z, info = "cloudkey domain transfer v1", L = 32)
/// AAD = version || kcv || E || R
/// ```
///
/// Only the chip holding the identity private key for `R` derives `K`; `R` is also bound in the
/// salt and the AAD, so a package made for one chip fails authentication on every other chip,
/// and any changed bit fails too. After decrypting, the recipient recomputes the kcv of the key
/// and compares it with the authenticated kcv field.
pub const DOMAIN_PACKAGE_LEN: usize = 1 + 8 + P256_POINT_LEN + NONCE_LEN + 32 + TAG_LEN;

const P256_POINT_LEN: usize = 65;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const BLOB_MIN_LEN: usize = BLOB_HEADER_LEN + NONCE_LEN + TAG_LEN;

/// Usage bits that the chip maintains itself; callers' values for them are ignored.
const CHIP_MANAGED: KeyUsage = KeyUsage::LOCAL
    .union(KeyUsage::ALWAYS_SENSITIVE)
    .union(KeyUsage::NEVER_EXTRACTABLE);

/// How to build a [`SoftChip`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftChipConfig {
    /// Number of key slots (default 64).
    pub slots: u32,
    /// Simulated latency: when set, every command (all but [`crate::ChipExt::info`]) sleeps this long
    /// before it runs, like a real chip behind a slow bus. Default none.
    pub latency: Option<Duration>,
    /// Serial number (default: 16 random hex digits). A chip with NVRAM keeps the serial it
    /// was first powered on with.
    pub serial: String,
    /// Non-volatile memory: when set, the chip keeps its serial number, identity key and domain
    /// key sealed in this file across restarts (see [`crate::nvram`]). Without it the chip
    /// forgets everything when dropped. Default none.
    pub nvram: Option<SoftNvram>,
}

impl Default for SoftChipConfig {
    /// 64 slots, no latency, a random serial number.
    ///
    /// # Panics
    /// If the system random generator fails, which leaves nothing safe to do.
    fn default() -> Self {
        let mut serial = [0u8; 8];
        aws_lc_rs::rand::fill(&mut serial).expect("system random generator failed");
        Self {
            slots: 64,
            latency: None,
            serial: hex::encode(serial),
            nvram: None,
        }
    }
}

/// The software chip. See the [module docs](self).
///
/// All methods take `&self` and the chip may be shared between threads: the slot table is
/// behind a [`RwLock`] and the operations on a key (sign, verify, decrypt, ...) take only its
/// read lock, long enough to clone the key's [`Arc`]; the crypto runs without any lock held.
pub struct SoftChip {
    serial: String,
    slots: u32,
    latency: Option<Duration>,
    /// The identity key pair: the recipient key of domain key transfers.
    identity: agreement::PrivateKey,
    identity_public: Vec<u8>,
    domain: RwLock<Option<Arc<DomainKey>>>,
    keys: RwLock<HashMap<KeyId, Arc<LoadedKey>>>,
    nvram: Option<SoftNvram>,
}

impl fmt::Debug for SoftChip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let domain = self.current_domain().map(|d| DomainInfo { kcv: d.kcv });
        f.debug_struct("SoftChip")
            .field("model", &MODEL)
            .field("serial", &self.serial)
            .field("slots", &self.slots)
            .field("loaded", &self.read_keys().len())
            .field("latency", &self.latency)
            .field("identity_key", &hex::encode(&self.identity_public))
            .field("domain", &domain)
            .finish_non_exhaustive()
    }
}

impl SoftChip {
    /// Powers on a software chip: creates its identity key and runs the self tests.
    ///
    /// # Errors
    /// [`ChipError::DataInvalid`] for zero slots or an empty serial number;
    /// [`ChipError::SelfTestFailed`]; [`ChipError::Internal`] if the random generator fails.
    pub fn new(config: SoftChipConfig) -> Result<Self> {
        if config.slots == 0 {
            return Err(ChipError::DataInvalid(
                "a chip needs at least one key slot".into(),
            ));
        }
        if config.serial.is_empty() {
            return Err(ChipError::DataInvalid(
                "the serial number must not be empty".into(),
            ));
        }
        let mut serial = config.serial;
        let mut domain = None;
        let identity = match config
            .nvram
            .as_ref()
            .map(nvram::load)
            .transpose()?
            .flatten()
        {
            Some(saved) => {
                serial = saved.serial;
                if let Some(key) = saved.domain {
                    domain = Some(Arc::new(DomainKey::new(key)?));
                }
                agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, &saved.identity[..])
                    .map_err(|_| internal("the NVRAM holds an invalid identity key"))?
            }
            None => agreement::PrivateKey::generate(&agreement::ECDH_P256)
                .map_err(|_| internal("cannot generate the identity key"))?,
        };
        let identity_public = identity
            .compute_public_key()
            .map_err(|_| internal("cannot compute the identity public key"))?
            .as_ref()
            .to_vec();
        let chip = Self {
            serial,
            slots: config.slots,
            latency: config.latency,
            identity,
            identity_public,
            domain: RwLock::new(domain),
            keys: RwLock::new(HashMap::new()),
            nvram: config.nvram,
        };
        // A first power-on records the identity, so the chip stays the same chip.
        let current = chip.current_domain();
        chip.persist(current.as_deref())?;
        run_self_tests()?;
        Ok(chip)
    }

    /// Writes serial, identity and `domain` to the NVRAM, if the chip has one.
    fn persist(&self, domain: Option<&DomainKey>) -> Result<()> {
        let Some(nv) = &self.nvram else { return Ok(()) };
        let scalar: aws_lc_rs::encoding::EcPrivateKeyBin<'static> = self
            .identity
            .as_be_bytes()
            .map_err(|_| internal("cannot export the identity key to the NVRAM"))?;
        let mut identity = Zeroizing::new([0u8; 32]);
        if scalar.as_ref().len() != 32 {
            return Err(internal("the identity key is not a 32-byte scalar"));
        }
        identity.copy_from_slice(scalar.as_ref());
        let contents = nvram::NvramContents {
            serial: self.serial.clone(),
            identity,
            domain: domain.map(|d| d.key.clone()),
        };
        nvram::store(nv, &contents)
    }

    /// Sleeps for the configured latency, if any.
    fn pause(&self) {
        if let Some(latency) = self.latency.filter(|d| !d.is_zero()) {
            std::thread::sleep(latency);
        }
    }

    fn read_keys(&self) -> std::sync::RwLockReadGuard<'_, HashMap<KeyId, Arc<LoadedKey>>> {
        // A panic while the lock was held cannot leave the map half-updated (every update is
        // a single insert or remove), so a poisoned lock is safe to keep using.
        self.keys.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_keys(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<KeyId, Arc<LoadedKey>>> {
        self.keys.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn current_domain(&self) -> Option<Arc<DomainKey>> {
        self.domain
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn domain_key(&self) -> Result<Arc<DomainKey>> {
        self.current_domain().ok_or(ChipError::NoDomain)
    }

    /// The loaded key `id`, holding the slot table's read lock only to clone the `Arc`.
    fn loaded(&self, id: KeyId) -> Result<Arc<LoadedKey>> {
        self.read_keys()
            .get(&id)
            .cloned()
            .ok_or(ChipError::KeyNotLoaded(id))
    }

    /// Checks `material` against `spec`, then seals it into a blob.
    fn new_key(
        &self,
        domain: &DomainKey,
        id: KeyId,
        spec: KeySpec,
        usage: KeyUsage,
        material: &[u8],
        invalid: impl FnOnce(String) -> ChipError,
    ) -> Result<NewKey> {
        let parsed = KeyMaterial::parse(spec, KeyUsage::empty(), material).map_err(invalid)?;
        // Seal the canonical encoding (for RSA, the DER as AWS-LC writes it).
        let canonical = parsed.export()?;
        let blob = domain.seal(id, spec, usage, &canonical)?;
        Ok(NewKey {
            blob,
            public: parsed.public(),
        })
    }
}

/// The aws-lc-rs random generator as a `rand_core` generator for the RustCrypto crates.
struct AwsLcRng;

#[derive(Debug)]
struct RngFailure;

impl fmt::Display for RngFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the aws-lc-rs random generator failed")
    }
}

impl std::error::Error for RngFailure {}

impl TryRng for AwsLcRng {
    type Error = RngFailure;

    fn try_next_u32(&mut self) -> std::result::Result<u32, RngFailure> {
        let mut b = [0u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> std::result::Result<u64, RngFailure> {
        let mut b = [0u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> std::result::Result<(), RngFailure> {
        aws_lc_rs::rand::fill(dst).map_err(|_| RngFailure)
    }
}

impl TryCryptoRng for AwsLcRng {}

fn fill_random(buf: &mut [u8]) -> Result<()> {
    aws_lc_rs::rand::fill(buf).map_err(|_| internal("the random generator failed"))
}

fn internal(what: &str) -> ChipError {
    ChipError::Internal(what.to_string())
}

impl Chip for SoftChip {
    /// Executes one command: each arm calls the function that does it.
    fn execute(&self, request: &Request) -> Result<Response> {
        Ok(match request {
            Request::Info => Response::Info(self.info()),
            Request::SelfTest => {
                self.self_test()?;
                Response::Done
            }
            Request::GenerateKeyPair(t) => Response::NewKey(self.generate(*t, true)?),
            Request::GenerateSecretKey(t) => Response::NewKey(self.generate(*t, false)?),
            Request::ImportKey { template, material } => {
                Response::NewKey(self.import_key(*template, material.expose())?)
            }
            Request::LoadKey(blob) => Response::KeyId(self.load_key(blob)?),
            Request::EvictKey(id) => {
                self.evict_key(*id);
                Response::Done
            }
            Request::PublicKey(id) => Response::PublicKey(self.public_key(*id)?),
            Request::Sign { key, mech, data } => Response::Bytes(self.sign(*key, mech, data)?),
            Request::Verify {
                key,
                mech,
                data,
                signature,
            } => {
                self.verify(key, mech, data, signature)?;
                Response::Done
            }
            Request::Encrypt { key, mech, data } => Response::Bytes(self.encrypt(key, mech, data)?),
            Request::Decrypt { key, mech, data } => {
                Response::Bytes(self.decrypt(*key, mech, data)?)
            }
            Request::WrapKey {
                wrapping,
                mech,
                target,
            } => Response::Bytes(self.wrap_key(wrapping, mech, *target)?),
            Request::UnwrapKey {
                unwrapping,
                mech,
                wrapped,
                target,
            } => Response::NewKey(self.unwrap_key(*unwrapping, mech, wrapped, *target)?),
            Request::DeriveEcdh {
                key,
                peer_point,
                target,
            } => Response::NewKey(self.derive_ecdh(*key, peer_point, *target)?),
            Request::Random(n) => {
                Response::Bytes(self.random(usize::try_from(*n).unwrap_or(usize::MAX))?)
            }
            Request::DomainGenerate => Response::Domain(self.domain_generate()?),
            Request::DomainExport(recipient) => Response::Bytes(self.domain_export(recipient)?),
            Request::DomainImport(package) => Response::Domain(self.domain_import(package)?),
            Request::IdentityProof { challenge, nonce } => {
                Response::Bytes(self.identity_proof(challenge, nonce)?)
            }
        })
    }
}

/// The commands of [`Chip::execute`] that need no key; the others are in the submodules.
impl SoftChip {
    pub(super) fn info(&self) -> ChipInfo {
        ChipInfo {
            model: MODEL.to_string(),
            serial: self.serial.clone(),
            firmware: env!("CARGO_PKG_VERSION").to_string(),
            slots: self.slots,
            loaded: u32::try_from(self.read_keys().len()).unwrap_or(u32::MAX),
            identity_key: self.identity_public.clone(),
            domain: self.current_domain().map(|d| d.info()),
        }
    }

    pub(super) fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.pause();
        if len > MAX_RANDOM_LEN {
            return Err(ChipError::DataLenRange(format!(
                "at most {MAX_RANDOM_LEN} random bytes per call, not {len}"
            )));
        }
        let mut out = vec![0u8; len];
        fill_random(&mut out)?;
        Ok(out)
    }
}
