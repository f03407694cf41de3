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
//!   and PSS signatures, OAEP), AES (GCM, CBC, key wrap RFC 3394/5649), HMAC-SHA-*, HKDF and the
//!   random generator. aws-lc-rs key objects own their secrets inside AWS-LC, which cleanses
//!   them when they are freed (`OPENSSL_cleanse` in the `*_free` functions), and aws-lc-rs
//!   zeroizes the key bytes it keeps on the Rust side.
//! * **RustCrypto** `sm2` (curve arithmetic with precomputed tables, signature verification,
//!   encryption), `sm3` and `sm4` + `cbc` for the GM/T algorithms. The SM2 *private-key*
//!   operations (signing, decryption, ECDH) are written here on top of the `sm2` curve
//!   arithmetic, because `sm2::dsa::SigningKey` and `sm2::pke::DecryptingKey` neither zeroize
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
//! The material is encoded as for [`crate::ChipExt::import_key`]: the 32-byte big-endian scalar for P-256
//! and SM2, the PKCS#8 `PrivateKeyInfo` DER for RSA, the raw value for secret keys. Nonces are
//! random (96 bits), so one domain key may seal up to 2^32 blobs (NIST SP 800-38D, 8.3) — far
//! more keys than a cluster holds.
//!
//! The domain key package is described at [`SoftChip::domain_export`](crate::ChipExt::domain_export) and
//! in [`DOMAIN_PACKAGE_LEN`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement;
use aws_lc_rs::cipher::{
    self, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
    PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::constant_time;
use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::hkdf;
use aws_lc_rs::hmac;
use aws_lc_rs::key_wrap::{self, KeyEncryptionKey, KeyWrap, KeyWrapPadded};
use aws_lc_rs::rsa;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, KeyPair as _, ParsedPublicKey, RsaPublicKeyComponents,
};
// `rsa` alone is aws-lc-rs's module here; `::rsa` is the RustCrypto crate.
use ::rsa::pkcs8::DecodePrivateKey as _;
use ::rsa::traits::SignatureScheme as _;
use ::rsa::{BoxedUint, Pkcs1v15Sign};
use cbc::cipher::block_padding::{NoPadding, Pkcs7};
use cbc::cipher::{BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, KeyInit, KeyIvInit};
use sm2::dsa::signature::hazmat::PrehashVerifier;
use sm2::elliptic_curve::ops::Reduce;
use sm2::elliptic_curve::point::AffineCoordinates;
use sm2::elliptic_curve::rand_core::{TryCryptoRng, TryRng};
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::elliptic_curve::{Group, PrimeField};
use sm3::{Digest as _, Sm3};
use zeroize::{Zeroize, Zeroizing};

use crate::nvram::{self, SoftNvram};
use crate::wire::{Request, Response};
use crate::{
    BlobHeader, Chip, ChipError, ChipInfo, CipherMech, DomainInfo, HashAlg, KeyBlob, KeyId, KeyRef,
    KeySpec, KeyTemplate, KeyType, KeyUsage, NewKey, PublicKey, Result, SignMech, WrapMech,
    BLOB_HEADER_LEN, BLOB_VERSION, MAX_RANDOM_LEN, SM2_DEFAULT_ID,
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

/// The domain key and what is derived from it once.
struct DomainKey {
    key: Zeroizing<[u8; 32]>,
    kcv: [u8; 8],
    /// AES-256-GCM under the domain key, for blobs. aws-lc-rs zeroizes the key schedule on drop.
    aead: LessSafeKey,
}

impl DomainKey {
    fn new(key: Zeroizing<[u8; 32]>) -> Result<Self> {
        let kcv = domain_kcv(&key);
        let aead = LessSafeKey::new(
            UnboundKey::new(&aead::AES_256_GCM, key.as_ref())
                .map_err(|_| internal("cannot key AES-256-GCM with the domain key"))?,
        );
        Ok(Self { key, kcv, aead })
    }

    fn info(&self) -> DomainInfo {
        DomainInfo { kcv: self.kcv }
    }

    /// Seals key material into a blob (layout in the module docs).
    fn seal(&self, id: KeyId, spec: KeySpec, usage: KeyUsage, material: &[u8]) -> Result<KeyBlob> {
        let header = BlobHeader {
            version: BLOB_VERSION,
            domain_kcv: self.kcv,
            id,
            spec,
            usage,
        }
        .to_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let mut out = Vec::with_capacity(BLOB_MIN_LEN + material.len());
        out.extend_from_slice(&header);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(material);
        let sealed = self.aead.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&header[..]),
            &mut out[BLOB_HEADER_LEN + NONCE_LEN..],
        );
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(KeyBlob(out))
            }
            Err(_) => {
                out.zeroize();
                Err(internal("AES-GCM sealing of a blob failed"))
            }
        }
    }

    /// Authenticates and decrypts a blob whose header was parsed and whose kcv matched.
    fn open(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if blob.len() < BLOB_MIN_LEN {
            return Err(ChipError::BlobInvalid(format!(
                "{} bytes is shorter than the smallest blob ({BLOB_MIN_LEN} bytes)",
                blob.len()
            )));
        }
        let (aad, rest) = blob.split_at(BLOB_HEADER_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| internal("blob nonce of the wrong length"))?;
        let mut buf = Zeroizing::new(sealed.to_vec());
        let len = self
            .aead
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| ChipError::BlobAuthFailed)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// `HMAC-SHA-256(domain key, "cloudkey domain kcv")[..8]`.
fn domain_kcv(key: &[u8; 32]) -> [u8; 8] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), DOMAIN_KCV_LABEL);
    let mut kcv = [0u8; 8];
    kcv.copy_from_slice(&tag.as_ref()[..8]);
    kcv
}

/// A key in a slot.
struct LoadedKey {
    spec: KeySpec,
    usage: KeyUsage,
    /// The blob header it was loaded from, to recognise a reload of the same key.
    header: [u8; BLOB_HEADER_LEN],
    material: KeyMaterial,
}

impl fmt::Debug for LoadedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedKey")
            .field("spec", &self.spec)
            .field("usage", &self.usage)
            .finish_non_exhaustive()
    }
}

impl LoadedKey {
    fn permit(&self, needed: KeyUsage, what: &'static str) -> Result<()> {
        if self.usage.contains(needed) {
            Ok(())
        } else {
            Err(ChipError::KeyFunctionNotPermitted(what))
        }
    }

    /// The value of a secret key of type `want`, or `KeyTypeInconsistent`.
    fn secret(&self, want: KeyType, mech: &dyn fmt::Debug) -> Result<&SecretKey> {
        match &self.material {
            KeyMaterial::Secret(k) if self.spec.key_type == want => Ok(k),
            _ => Err(mismatch(mech, self.spec.key_type)),
        }
    }
}

fn mismatch(mech: &dyn fmt::Debug, key_type: KeyType) -> ChipError {
    ChipError::KeyTypeInconsistent(format!("{mech:?} cannot be used with a {key_type:?} key"))
}

/// A key's material in the parsed form its operations need.
enum KeyMaterial {
    EcP256(EcP256Key),
    Sm2(Box<Sm2Key>),
    Rsa(RsaKey),
    Secret(SecretKey),
}

impl KeyMaterial {
    /// Parses material in the [`crate::ChipExt::import_key`] encoding. `usage` decides which optional
    /// parsed forms are built (ECDH key, RSA decryption key, AES-GCM key).
    fn parse(spec: KeySpec, usage: KeyUsage, material: &[u8]) -> std::result::Result<Self, String> {
        Ok(match spec.key_type {
            KeyType::EcP256 => Self::EcP256(EcP256Key::parse(material, usage)?),
            KeyType::Sm2 => Self::Sm2(Box::new(Sm2Key::parse(material)?)),
            KeyType::Rsa => Self::Rsa(RsaKey::parse(material, spec.bits, usage)?),
            KeyType::Aes | KeyType::Sm4 | KeyType::GenericSecret => {
                Self::Secret(SecretKey::parse(spec, usage, material)?)
            }
        })
    }

    fn public(&self) -> Option<PublicKey> {
        match self {
            Self::EcP256(k) => Some(PublicKey::EcP256(k.public.clone())),
            Self::Sm2(k) => Some(PublicKey::Sm2(k.public_bytes.to_vec())),
            Self::Rsa(k) => Some(PublicKey::Rsa {
                n: k.n.clone(),
                e: k.e.clone(),
            }),
            Self::Secret(_) => None,
        }
    }

    /// The material in the import encoding, for sealing and wrapping.
    fn export(&self) -> Result<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(match self {
            Self::EcP256(k) => k
                .signing
                .private_key()
                .as_be_bytes()
                .map_err(|_| internal("cannot serialise a P-256 private key"))?
                .as_ref()
                .to_vec(),
            Self::Sm2(k) => k.d.to_repr().to_vec(),
            Self::Rsa(k) => k
                .signing
                .as_der()
                .map_err(|_| internal("cannot serialise an RSA private key"))?
                .as_ref()
                .to_vec(),
            Self::Secret(k) => k.value.to_vec(),
        }))
    }
}

/// A P-256 key pair. The `EcdsaKeyPair` is built once, at load time.
struct EcP256Key {
    signing: EcdsaKeyPair,
    /// The same private key for ECDH, kept only when the key may `DERIVE`.
    ecdh: Option<agreement::PrivateKey>,
    /// Uncompressed SEC1 point.
    public: Vec<u8>,
}

impl EcP256Key {
    fn parse(scalar: &[u8], usage: KeyUsage) -> std::result::Result<Self, String> {
        if scalar.len() != 32 {
            return Err(format!(
                "a P-256 private key is a 32-byte scalar, not {} bytes",
                scalar.len()
            ));
        }
        let ecdh = agreement::PrivateKey::from_private_key(&agreement::ECDH_P256, scalar)
            .map_err(|_| "not a P-256 private scalar (zero or not below the group order)")?;
        let public = ecdh
            .compute_public_key()
            .map_err(|_| "cannot compute the P-256 public key")?
            .as_ref()
            .to_vec();
        let signing = EcdsaKeyPair::from_private_key_and_public_key(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            scalar,
            &public,
        )
        .map_err(|e| format!("P-256 key rejected: {e}"))?;
        Ok(Self {
            signing,
            ecdh: usage.contains(KeyUsage::DERIVE).then_some(ecdh),
            public,
        })
    }

    fn sign(&self, data: &[u8]) -> Result<Vec<u8>> {
        let digest = ecdsa_digest(data)?;
        let sig = self
            .signing
            .sign_digest(&digest)
            .map_err(|_| internal("ECDSA signing failed"))?;
        Ok(sig.as_ref().to_vec())
    }
}

/// ECDSA's bits2int for a 256-bit order: a longer digest keeps its leftmost 32 bytes, a shorter
/// one is the same integer left-padded with zeros.
fn ecdsa_digest(data: &[u8]) -> Result<digest::Digest> {
    if data.is_empty() {
        return Err(ChipError::DataLenRange(
            "ECDSA needs a non-empty digest".into(),
        ));
    }
    let mut d = [0u8; 32];
    if data.len() >= 32 {
        d.copy_from_slice(&data[..32]);
    } else {
        d[32 - data.len()..].copy_from_slice(data);
    }
    digest::Digest::import_less_safe(&d, &digest::SHA256)
        .map_err(|_| internal("cannot import an ECDSA digest"))
}

/// An SM2 key pair with `(1 + d)^-1` precomputed; both scalars are zeroized on drop.
struct Sm2Key {
    d: sm2::NonZeroScalar,
    d1_inv: sm2::Scalar,
    public_bytes: [u8; 65],
    /// `Z` for [`SM2_DEFAULT_ID`], the common case.
    z_default: [u8; 32],
}

impl Drop for Sm2Key {
    fn drop(&mut self) {
        self.d.zeroize();
        self.d1_inv.zeroize();
    }
}

impl Sm2Key {
    fn parse(scalar: &[u8]) -> std::result::Result<Self, String> {
        if scalar.len() != 32 {
            return Err(format!(
                "an SM2 private key is a 32-byte scalar, not {} bytes",
                scalar.len()
            ));
        }
        let d = sm2::NonZeroScalar::try_from(scalar)
            .map_err(|_| "not an SM2 private scalar (zero or not below the group order)")?;
        let mut d1 = *d + sm2::Scalar::ONE;
        let d1_inv = Option::<sm2::Scalar>::from(d1.invert());
        d1.zeroize();
        // GM/T 0003.1 requires d in [1, n-2]: for d = n-1, 1 + d has no inverse.
        let d1_inv = d1_inv.ok_or("SM2 private scalar n-1 is not allowed (GM/T 0003: d <= n-2)")?;
        let public = sm2::PublicKey::from_secret_scalar(&d);
        let public_bytes = sm2_point_bytes(public.as_affine());
        let z_default = sm2_z(SM2_DEFAULT_ID, &public_bytes)
            .map_err(|_| "cannot compute Z for the default id")?;
        Ok(Self {
            d,
            d1_inv,
            public_bytes,
            z_default,
        })
    }

    fn z(&self, user_id: &[u8]) -> Result<[u8; 32]> {
        if user_id == SM2_DEFAULT_ID {
            Ok(self.z_default)
        } else {
            sm2_z(user_id, &self.public_bytes)
        }
    }

    /// Signs a 32-byte `e` (GM/T 0003.2, 6.1, steps A3 to A7) with a fresh random `k`.
    fn sign_prehash(&self, e: &[u8]) -> Result<Vec<u8>> {
        let e = sm2_e_scalar(e)?;
        // A retry happens with probability about 2^-224 per attempt.
        for _ in 0..16 {
            let k = Zeroizing::new(random_sm2_scalar()?);
            if let Some(sig) = sm2_sign_with_k(&self.d, &self.d1_inv, &e, &k) {
                return Ok(sig.to_vec());
            }
        }
        Err(internal("SM2 signing found no valid nonce"))
    }

    /// SM2 decryption (GM/T 0003.4, 7.1) of `C1 || C3 || C2`.
    fn decrypt(&self, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        const C1: usize = 65;
        const C3: usize = 32;
        if ct.len() <= C1 + C3 || ct[0] != 0x04 {
            return Err(ChipError::EncryptedDataInvalid);
        }
        // B1: C1 must be a point on the curve (cofactor 1, so [h]C1 != O holds for any valid
        // point, which `from_sec1_bytes` guarantees by rejecting the identity).
        let c1 = sm2::PublicKey::from_sec1_bytes(&ct[..C1])
            .map_err(|_| ChipError::EncryptedDataInvalid)?;
        let (c3, c2) = ct[C1..].split_at(C3);
        // B3: (x2, y2) = [d]C1
        let shared = Zeroizing::new(sm2_point_bytes(&(c1.to_projective() * *self.d).to_affine()));
        let (x2, y2) = (&shared[1..33], &shared[33..65]);
        // B4, B5: t = KDF(x2 || y2, klen), M' = C2 xor t
        let mut m = sm2_kdf(x2, y2, c2.len());
        if m.iter().all(|b| *b == 0) {
            return Err(ChipError::EncryptedDataInvalid);
        }
        m.iter_mut().zip(c2).for_each(|(t, c)| *t ^= c);
        // B6: u = SM3(x2 || M' || y2) must equal C3
        let u = Sm3::new()
            .chain_update(x2)
            .chain_update(&m[..])
            .chain_update(y2)
            .finalize();
        constant_time::verify_slices_are_equal(&u, c3)
            .map_err(|_| ChipError::EncryptedDataInvalid)?;
        Ok(m)
    }

    /// ECDH on the SM2 curve: the x-coordinate of `[d]P`.
    fn ecdh(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if peer.len() != 65 || peer[0] != 0x04 {
            return Err(ChipError::DataInvalid(
                "the peer point must be uncompressed SEC1".into(),
            ));
        }
        let peer = sm2::PublicKey::from_sec1_bytes(peer)
            .map_err(|_| ChipError::DataInvalid("the peer point is not on the SM2 curve".into()))?;
        let shared = (peer.to_projective() * *self.d).to_affine();
        Ok(Zeroizing::new(shared.x().to_vec()))
    }
}

/// The uncompressed SEC1 encoding of an SM2 point.
fn sm2_point_bytes(point: &sm2::AffinePoint) -> [u8; 65] {
    let encoded = point.to_sec1_point(false);
    let mut out = [0u8; 65];
    out.copy_from_slice(encoded.as_bytes());
    out
}

/// SM2 curve coefficient `a` (GM/T 0003.5).
const SM2_A: [u8; 32] = hex32("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC");
/// SM2 curve coefficient `b`.
const SM2_B: [u8; 32] = hex32("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93");
/// SM2 base point `G`, x.
const SM2_GX: [u8; 32] = hex32("32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7");
/// SM2 base point `G`, y.
const SM2_GY: [u8; 32] = hex32("BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0");

/// 64 hex digits to 32 bytes, at compile time.
const fn hex32(s: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let s = s.as_bytes();
    assert!(s.len() == 64, "need 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(s[2 * i]) << 4) | nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

/// `Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA)` (GM/T 0003.2, 5.5) for an
/// uncompressed public point.
fn sm2_z(user_id: &[u8], public: &[u8; 65]) -> Result<[u8; 32]> {
    let entl = user_id
        .len()
        .checked_mul(8)
        .and_then(|bits| u16::try_from(bits).ok())
        .ok_or_else(|| ChipError::DataLenRange("an SM2 user id is at most 8191 bytes".into()))?;
    let z = Sm3::new()
        .chain_update(entl.to_be_bytes())
        .chain_update(user_id)
        .chain_update(SM2_A)
        .chain_update(SM2_B)
        .chain_update(SM2_GX)
        .chain_update(SM2_GY)
        .chain_update(&public[1..])
        .finalize();
    Ok(z.into())
}

/// `e = SM3(Z || M)`.
fn sm2_e(user_id: &[u8], public: &[u8; 65], msg: &[u8]) -> Result<[u8; 32]> {
    Ok(Sm3::new()
        .chain_update(sm2_z(user_id, public)?)
        .chain_update(msg)
        .finalize()
        .into())
}

fn sm2_e_scalar(e: &[u8]) -> Result<sm2::Scalar> {
    let e: [u8; 32] = e.try_into().map_err(|_| {
        ChipError::DataLenRange(format!("SM2 needs a 32-byte e, not {} bytes", e.len()))
    })?;
    Ok(<sm2::Scalar as Reduce<sm2::FieldBytes>>::reduce(
        &sm2::FieldBytes::from(e),
    ))
}

/// A uniformly random scalar in `[1, n-1]` from the aws-lc-rs generator (rejection sampling).
fn random_sm2_scalar() -> Result<sm2::Scalar> {
    loop {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(&mut bytes[..])?;
        let candidate =
            Option::<sm2::Scalar>::from(sm2::Scalar::from_repr(sm2::FieldBytes::from(*bytes)));
        if let Some(k) = candidate {
            if !bool::from(k.is_zero()) {
                return Ok(k);
            }
        }
    }
}

/// GM/T 0003.2 steps A4 to A7 for a given `k`: `None` when this `k` must be rejected.
fn sm2_sign_with_k(
    d: &sm2::Scalar,
    d1_inv: &sm2::Scalar,
    e: &sm2::Scalar,
    k: &sm2::Scalar,
) -> Option<[u8; 64]> {
    // A4: (x1, y1) = [k]G
    let x1 = sm2::ProjectivePoint::mul_by_generator(k).to_affine().x();
    // A5: r = (e + x1) mod n; reject r = 0 and r + k = n
    let r = *e + <sm2::Scalar as Reduce<sm2::FieldBytes>>::reduce(&x1);
    if bool::from(r.is_zero() | (r + k).is_zero()) {
        return None;
    }
    // A6: s = (1 + d)^-1 (k - r d) mod n; reject s = 0
    let s = *d1_inv * (*k - r * d);
    if bool::from(s.is_zero()) {
        return None;
    }
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r.to_repr());
    sig[32..].copy_from_slice(&s.to_repr());
    Some(sig)
}

/// SM2's key derivation function (GM/T 0003.4, 5.4.3) on `x2 || y2`.
fn sm2_kdf(x2: &[u8], y2: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter: u32 = 1;
    while out.len() < len {
        let block = Sm3::new()
            .chain_update(x2)
            .chain_update(y2)
            .chain_update(counter.to_be_bytes())
            .finalize();
        out.extend_from_slice(&block);
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

fn sm2_public(point: &[u8]) -> Result<sm2::PublicKey> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(ChipError::DataInvalid(
            "an SM2 public key must be an uncompressed point".into(),
        ));
    }
    sm2::PublicKey::from_sec1_bytes(point)
        .map_err(|_| ChipError::DataInvalid("the SM2 public key is not on the curve".into()))
}

fn sm2_verify_prehash(point: &[u8], e: &[u8], sig: &[u8]) -> Result<()> {
    let public = sm2_public(point)?;
    if e.len() != 32 {
        return Err(ChipError::DataLenRange(format!(
            "SM2 needs a 32-byte e, not {} bytes",
            e.len()
        )));
    }
    // The distinguishing id of a `VerifyingKey` only matters for message verification; the
    // prehash path gets `e`, computed by `sm2_e` for any (also non-UTF-8) id.
    let verifying = sm2::dsa::VerifyingKey::new("", public)
        .map_err(|_| ChipError::DataInvalid("unusable SM2 public key".into()))?;
    let sig = sm2::dsa::Signature::from_slice(sig).map_err(|_| ChipError::SignatureInvalid)?;
    verifying
        .verify_prehash(e, &sig)
        .map_err(|_| ChipError::SignatureInvalid)
}

fn sm2_encrypt(point: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    if data.is_empty() {
        return Err(ChipError::DataLenRange(
            "SM2 cannot encrypt an empty message".into(),
        ));
    }
    let public = sm2_public(point)?;
    sm2::pke::EncryptingKey::new_with_mode(public, sm2::pke::Mode::C1C3C2)
        .encrypt(&mut AwsLcRng, data)
        .map_err(|_| internal("SM2 encryption failed"))
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

/// An RSA key pair, parsed once at load time.
struct RsaKey {
    signing: rsa::KeyPair,
    /// The same key for the RustCrypto `rsa` crate, which signs the PKCS#1 v1.5 inputs that
    /// aws-lc-rs cannot (anything but a SHA-256/384/512 `DigestInfo`). Parsed from the key's
    /// PKCS#8 on first use only; `::rsa::RsaPrivateKey` zeroizes its integers on drop.
    raw: OnceLock<::rsa::RsaPrivateKey>,
    /// Built when the key may `DECRYPT` or `UNWRAP`.
    oaep: Option<rsa::OaepPrivateDecryptingKey>,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaKey {
    fn parse(pkcs8: &[u8], bits: u32, usage: KeyUsage) -> std::result::Result<Self, String> {
        let signing = rsa::KeyPair::from_pkcs8(pkcs8)
            .map_err(|e| format!("not an RSA PKCS#8 private key: {e}"))?;
        let public = signing.public_key();
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let e = public.exponent().big_endian_without_leading_zero().to_vec();
        let actual = modulus_bits(&n);
        if actual != bits {
            return Err(format!(
                "the key has a {actual}-bit modulus, the spec says {bits}"
            ));
        }
        let oaep = if usage.intersects(KeyUsage::DECRYPT | KeyUsage::UNWRAP) {
            let key = rsa::PrivateDecryptingKey::from_pkcs8(pkcs8)
                .map_err(|e| format!("RSA decryption key rejected: {e}"))?;
            Some(
                rsa::OaepPrivateDecryptingKey::new(key)
                    .map_err(|_| "RSA key unusable for OAEP".to_string())?,
            )
        } else {
            None
        };
        Ok(Self {
            signing,
            raw: OnceLock::new(),
            oaep,
            n,
            e,
        })
    }

    /// RSASSA-PKCS1-v1_5 signature (EMSA-PKCS1-v1_5 type-1 padding) of `data` as it is, which
    /// may be at most `k - 11` bytes (PKCS#11 `CKM_RSA_PKCS`). A DER `DigestInfo` of SHA-256,
    /// SHA-384 or SHA-512 is signed by aws-lc-rs, every other input (other `DigestInfo`s such
    /// as SHA-1's, the TLS 1.0/1.1 `MD5 || SHA-1` value, any data) by the RustCrypto `rsa`
    /// crate, blinded with the aws-lc-rs random generator. Both give the same (deterministic)
    /// signature for the same input.
    fn sign_pkcs1(&self, data: &[u8]) -> Result<Vec<u8>> {
        check_pkcs1_len(self.signing.public_modulus_len(), data)?;
        let known = parse_digest_info(data)
            .and_then(|(hash, digest)| Some((pkcs1_sign_encoding(hash)?, hash, digest)));
        match known {
            Some((encoding, hash, digest)) => self.sign_digest(encoding, hash, digest),
            None => self.sign_pkcs1_raw(data),
        }
    }

    /// The `rsa` crate's unprefixed PKCS#1 v1.5 signature: `data` is the `T` of EMSA-PKCS1-v1_5.
    fn sign_pkcs1_raw(&self, data: &[u8]) -> Result<Vec<u8>> {
        Pkcs1v15Sign::new_unprefixed()
            .sign(Some(&mut AwsLcRng), self.raw_key()?, data)
            .map_err(|e| ChipError::Internal(format!("RSA PKCS#1 v1.5 signing failed: {e}")))
    }

    /// The key for the `rsa` crate, parsed on first use from the PKCS#8 the blob holds.
    fn raw_key(&self) -> Result<&::rsa::RsaPrivateKey> {
        if let Some(key) = self.raw.get() {
            return Ok(key);
        }
        // `Pkcs8V1Der` zeroizes its buffer on drop.
        let pkcs8 = self
            .signing
            .as_der()
            .map_err(|_| internal("cannot serialise an RSA private key"))?;
        let key = ::rsa::RsaPrivateKey::from_pkcs8_der(pkcs8.as_ref()).map_err(|e| {
            ChipError::Internal(format!("the RSA key is unusable for raw PKCS#1 v1.5: {e}"))
        })?;
        // Another thread may have won the race: then `key` is dropped (and zeroized) here.
        Ok(self.raw.get_or_init(|| key))
    }

    fn sign_pss(&self, hash: HashAlg, data: &[u8]) -> Result<Vec<u8>> {
        let encoding: &'static signature::RsaSignatureEncoding = match hash {
            HashAlg::Sha256 => &signature::RSA_PSS_SHA256,
            HashAlg::Sha384 => &signature::RSA_PSS_SHA384,
            HashAlg::Sha512 => &signature::RSA_PSS_SHA512,
            HashAlg::Sha1 | HashAlg::Sm3 => {
                return Err(ChipError::MechanismInvalid(format!(
                    "RSA-PSS with {hash:?} is not supported by this chip"
                )))
            }
        };
        self.sign_digest(encoding, hash, data)
    }

    fn sign_digest(
        &self,
        encoding: &'static signature::RsaSignatureEncoding,
        hash: HashAlg,
        digest: &[u8],
    ) -> Result<Vec<u8>> {
        let digest = import_digest(hash, digest)?;
        let mut sig = vec![0u8; self.signing.public_modulus_len()];
        self.signing
            .sign_digest(encoding, &digest, &mut sig)
            .map_err(|_| internal("RSA signing failed"))?;
        Ok(sig)
    }

    fn decrypt_oaep(&self, hash: HashAlg, label: &[u8], ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let alg = oaep_alg(hash)?;
        let key = self
            .oaep
            .as_ref()
            .ok_or(ChipError::KeyFunctionNotPermitted("decrypt"))?;
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let label = (!label.is_empty()).then_some(label);
        let len = key
            .decrypt(alg, ct, &mut out, label)
            .map_err(|_| ChipError::EncryptedDataInvalid)?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

/// Bit length of a big-endian integer without leading zero bytes.
fn modulus_bits(n: &[u8]) -> u32 {
    match n.first() {
        None => 0,
        Some(&top) => {
            let bytes = u32::try_from(n.len()).unwrap_or(u32::MAX / 8);
            bytes * 8 - top.leading_zeros()
        }
    }
}

fn digest_alg(hash: HashAlg) -> Result<&'static digest::Algorithm> {
    Ok(match hash {
        HashAlg::Sha1 => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlg::Sha256 => &digest::SHA256,
        HashAlg::Sha384 => &digest::SHA384,
        HashAlg::Sha512 => &digest::SHA512,
        HashAlg::Sm3 => {
            return Err(ChipError::MechanismInvalid(
                "SM3 is not available with RSA".into(),
            ))
        }
    })
}

fn import_digest(hash: HashAlg, data: &[u8]) -> Result<digest::Digest> {
    if data.len() != hash.output_len() {
        return Err(ChipError::DataLenRange(format!(
            "a {hash:?} digest is {} bytes, not {}",
            hash.output_len(),
            data.len()
        )));
    }
    digest::Digest::import_less_safe(data, digest_alg(hash)?)
        .map_err(|_| internal("cannot import a digest"))
}

/// The DER `DigestInfo` prefixes (RFC 8017, 9.2, note 1) that the aws-lc-rs PKCS#1 v1.5 paths
/// know (signing: SHA-256/384/512; verification: also SHA-1). Other `CKM_RSA_PKCS` input goes
/// to the RustCrypto `rsa` crate.
const DIGEST_INFOS: [(HashAlg, &[u8]); 4] = [
    (
        HashAlg::Sha1,
        &[
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ],
    ),
    (
        HashAlg::Sha256,
        &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
    ),
    (
        HashAlg::Sha384,
        &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
    ),
    (
        HashAlg::Sha512,
        &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
    ),
];

/// Splits a DER `DigestInfo` of SHA-1/256/384/512 into its hash and digest; `None` for any
/// other input.
fn parse_digest_info(data: &[u8]) -> Option<(HashAlg, &[u8])> {
    DIGEST_INFOS
        .iter()
        .find(|(hash, prefix)| {
            data.len() == prefix.len() + hash.output_len() && data.starts_with(prefix)
        })
        .map(|(hash, prefix)| (*hash, &data[prefix.len()..]))
}

/// The aws-lc-rs PKCS#1 v1.5 signing encoding for `hash`, if there is one.
fn pkcs1_sign_encoding(hash: HashAlg) -> Option<&'static signature::RsaSignatureEncoding> {
    match hash {
        HashAlg::Sha256 => Some(&signature::RSA_PKCS1_SHA256),
        HashAlg::Sha384 => Some(&signature::RSA_PKCS1_SHA384),
        HashAlg::Sha512 => Some(&signature::RSA_PKCS1_SHA512),
        HashAlg::Sha1 | HashAlg::Sm3 => None,
    }
}

/// EMSA-PKCS1-v1_5 needs at least 11 bytes of padding: `k - 11` bytes of input at most, with a
/// `k`-byte modulus (RFC 8017, 9.2, step 3).
fn check_pkcs1_len(k: usize, data: &[u8]) -> Result<()> {
    let max = k.saturating_sub(11);
    if data.len() > max {
        return Err(ChipError::DataLenRange(format!(
            "RSA PKCS#1 v1.5 with this key signs at most {max} bytes, not {}",
            data.len()
        )));
    }
    Ok(())
}

/// A big-endian integer without its leading zero bytes.
fn strip_leading_zeros(n: &[u8]) -> &[u8] {
    let zeros = n.iter().take_while(|&&b| b == 0).count();
    &n[zeros..]
}

/// Verifies an unprefixed PKCS#1 v1.5 signature (`data` is the `T` of EMSA-PKCS1-v1_5) with the
/// RustCrypto `rsa` crate, under the same key-size policy as the aws-lc-rs verification
/// (`RSA_PKCS1_2048_8192_*`).
fn rsa_verify_pkcs1_raw(n: &[u8], e: &[u8], data: &[u8], sig: &[u8]) -> Result<()> {
    let n = strip_leading_zeros(n);
    if !(2048..=8192).contains(&modulus_bits(n)) {
        return Err(ChipError::DataInvalid("not a usable RSA public key".into()));
    }
    if sig.len() != n.len() {
        return Err(ChipError::SignatureInvalid);
    }
    let key = ::rsa::RsaPublicKey::new(
        BoxedUint::from_be_slice_vartime(n),
        BoxedUint::from_be_slice_vartime(e),
    )
    .map_err(|_| ChipError::DataInvalid("not a usable RSA public key".into()))?;
    key.verify(Pkcs1v15Sign::new_unprefixed(), data, sig)
        .map_err(|_| ChipError::SignatureInvalid)
}

fn oaep_alg(hash: HashAlg) -> Result<&'static rsa::OaepAlgorithm> {
    Ok(match hash {
        HashAlg::Sha1 => &rsa::OAEP_SHA1_MGF1SHA1,
        HashAlg::Sha256 => &rsa::OAEP_SHA256_MGF1SHA256,
        HashAlg::Sha384 => &rsa::OAEP_SHA384_MGF1SHA384,
        HashAlg::Sha512 => &rsa::OAEP_SHA512_MGF1SHA512,
        HashAlg::Sm3 => {
            return Err(ChipError::MechanismInvalid(
                "RSA-OAEP with SM3 is not supported".into(),
            ))
        }
    })
}

fn rsa_components<'a>(n: &'a [u8], e: &'a [u8]) -> RsaPublicKeyComponents<&'a [u8]> {
    RsaPublicKeyComponents { n, e }
}

fn rsa_encrypt_oaep(
    n: &[u8],
    e: &[u8],
    hash: HashAlg,
    label: &[u8],
    data: &[u8],
) -> Result<Vec<u8>> {
    let alg = oaep_alg(hash)?;
    let public: rsa::PublicEncryptingKey = rsa_components(n, e)
        .try_into()
        .map_err(|_| ChipError::DataInvalid("not a usable RSA public key".into()))?;
    let key = rsa::OaepPublicEncryptingKey::new(public)
        .map_err(|_| ChipError::DataInvalid("RSA public key unusable for OAEP".into()))?;
    if data.len() > key.max_plaintext_size(alg) {
        return Err(ChipError::DataLenRange(format!(
            "RSA-OAEP with this key and {hash:?} encrypts at most {} bytes, not {}",
            key.max_plaintext_size(alg),
            data.len()
        )));
    }
    let mut out = vec![0u8; key.ciphertext_size()];
    let label = (!label.is_empty()).then_some(label);
    let len = key
        .encrypt(alg, data, &mut out, label)
        .map_err(|_| internal("RSA-OAEP encryption failed"))?
        .len();
    out.truncate(len);
    Ok(out)
}

fn rsa_verify(n: &[u8], e: &[u8], mech: &SignMech, data: &[u8], sig: &[u8]) -> Result<()> {
    let (params, hash, digest): (&'static signature::RsaParameters, HashAlg, &[u8]) = match mech {
        SignMech::RsaPkcs1 => {
            check_pkcs1_len(strip_leading_zeros(n).len(), data)?;
            let Some((hash, digest)) = parse_digest_info(data) else {
                return rsa_verify_pkcs1_raw(n, e, data, sig);
            };
            let params: &'static signature::RsaParameters = match hash {
                HashAlg::Sha1 => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
                HashAlg::Sha256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                HashAlg::Sha512 | HashAlg::Sm3 => &signature::RSA_PKCS1_2048_8192_SHA512,
            };
            (params, hash, digest)
        }
        SignMech::RsaPss { hash } => {
            let params: &'static signature::RsaParameters = match hash {
                HashAlg::Sha256 => &signature::RSA_PSS_2048_8192_SHA256,
                HashAlg::Sha384 => &signature::RSA_PSS_2048_8192_SHA384,
                HashAlg::Sha512 => &signature::RSA_PSS_2048_8192_SHA512,
                HashAlg::Sha1 | HashAlg::Sm3 => {
                    return Err(ChipError::MechanismInvalid(format!(
                        "RSA-PSS with {hash:?} is not supported by this chip"
                    )))
                }
            };
            (params, *hash, data)
        }
        other => return Err(mismatch(other, KeyType::Rsa)),
    };
    let digest = import_digest(hash, digest)?;
    let key = rsa_components(n, e)
        .to_parsed_public_key(params)
        .map_err(|_| ChipError::DataInvalid("not a usable RSA public key".into()))?;
    key.verify_digest_sig(&digest, sig)
        .map_err(|_| ChipError::SignatureInvalid)
}

/// A secret key: its value, plus the AES-GCM key schedule for AES keys that may encrypt.
struct SecretKey {
    value: Zeroizing<Vec<u8>>,
    gcm: Option<LessSafeKey>,
}

impl SecretKey {
    fn parse(spec: KeySpec, usage: KeyUsage, value: &[u8]) -> std::result::Result<Self, String> {
        if value.len() != spec.bytes() || spec.bits % 8 != 0 {
            return Err(format!(
                "a {}-bit {:?} key is {} bytes, not {}",
                spec.bits,
                spec.key_type,
                spec.bytes(),
                value.len()
            ));
        }
        let gcm = if spec.key_type == KeyType::Aes
            && usage.intersects(KeyUsage::ENCRYPT | KeyUsage::DECRYPT)
        {
            let unbound = UnboundKey::new(aes_gcm_alg(value.len())?, value)
                .map_err(|_| "AES key rejected for GCM".to_string())?;
            Some(LessSafeKey::new(unbound))
        } else {
            None
        };
        Ok(Self {
            value: Zeroizing::new(value.to_vec()),
            gcm,
        })
    }

    fn gcm(&self) -> Result<&LessSafeKey> {
        self.gcm
            .as_ref()
            .ok_or_else(|| internal("AES-GCM key schedule missing"))
    }
}

fn aes_gcm_alg(len: usize) -> std::result::Result<&'static aead::Algorithm, String> {
    match len {
        16 => Ok(&aead::AES_128_GCM),
        24 => Ok(&aead::AES_192_GCM),
        32 => Ok(&aead::AES_256_GCM),
        n => Err(format!("{n} bytes is not an AES key length")),
    }
}

fn aes_cipher_alg(len: usize) -> Result<&'static cipher::Algorithm> {
    match len {
        16 => Ok(&cipher::AES_128),
        24 => Ok(&cipher::AES_192),
        32 => Ok(&cipher::AES_256),
        n => Err(ChipError::KeySizeRange(format!(
            "{n} bytes is not an AES key length"
        ))),
    }
}

fn gcm_nonce(iv: &[u8], tag_bits: u8) -> Result<Nonce> {
    if iv.len() != NONCE_LEN {
        return Err(ChipError::MechanismInvalid(format!(
            "AES-GCM on this chip needs a 12-byte IV, not {} bytes",
            iv.len()
        )));
    }
    if tag_bits != 128 {
        return Err(ChipError::MechanismInvalid(format!(
            "AES-GCM on this chip produces 128-bit tags only, not {tag_bits}"
        )));
    }
    Nonce::try_assume_unique_for_key(iv).map_err(|_| internal("AES-GCM nonce"))
}

fn aes_gcm_encrypt(
    key: &SecretKey,
    iv: &[u8],
    aad: &[u8],
    tag_bits: u8,
    data: &[u8],
) -> Result<Vec<u8>> {
    let nonce = gcm_nonce(iv, tag_bits)?;
    let mut buf = data.to_vec();
    if key
        .gcm()?
        .seal_in_place_append_tag(nonce, Aad::from(aad), &mut buf)
        .is_err()
    {
        buf.zeroize();
        return Err(ChipError::DataLenRange("AES-GCM input too long".into()));
    }
    Ok(buf)
}

fn aes_gcm_decrypt(
    key: &SecretKey,
    iv: &[u8],
    aad: &[u8],
    tag_bits: u8,
    data: &[u8],
) -> Result<Vec<u8>> {
    let nonce = gcm_nonce(iv, tag_bits)?;
    if data.len() < TAG_LEN {
        return Err(ChipError::EncryptedDataInvalid);
    }
    let mut buf = data.to_vec();
    match key.gcm()?.open_in_place(nonce, Aad::from(aad), &mut buf) {
        Ok(plain) => {
            let len = plain.len();
            buf.truncate(len);
            Ok(buf)
        }
        Err(_) => {
            buf.zeroize();
            Err(ChipError::EncryptedDataInvalid)
        }
    }
}

fn aes_cbc_encrypt(key: &[u8], iv: &[u8; 16], pad: bool, data: &[u8]) -> Result<Vec<u8>> {
    let unbound = UnboundCipherKey::new(aes_cipher_alg(key.len())?, key)
        .map_err(|_| internal("AES key rejected"))?;
    let context = EncryptionContext::Iv128((*iv).into());
    let mut buf = data.to_vec();
    let done = if pad {
        PaddedBlockEncryptingKey::cbc_pkcs7(unbound)
            .and_then(|k| k.less_safe_encrypt(&mut buf, context))
    } else {
        if data.len() % 16 != 0 {
            return Err(ChipError::DataLenRange(format!(
                "AES-CBC without padding needs whole 16-byte blocks, not {} bytes",
                data.len()
            )));
        }
        if data.is_empty() {
            return Ok(buf);
        }
        EncryptingKey::cbc(unbound).and_then(|k| k.less_safe_encrypt(&mut buf, context))
    };
    match done {
        Ok(_) => Ok(buf),
        Err(_) => {
            buf.zeroize();
            Err(internal("AES-CBC encryption failed"))
        }
    }
}

fn aes_cbc_decrypt(key: &[u8], iv: &[u8; 16], pad: bool, data: &[u8]) -> Result<Vec<u8>> {
    if data.len() % 16 != 0 || (pad && data.is_empty()) {
        return Err(ChipError::EncryptedDataInvalid);
    }
    let unbound = UnboundCipherKey::new(aes_cipher_alg(key.len())?, key)
        .map_err(|_| internal("AES key rejected"))?;
    let context = DecryptionContext::Iv128((*iv).into());
    let mut buf = data.to_vec();
    let len = if pad {
        PaddedBlockDecryptingKey::cbc_pkcs7(unbound)
            .and_then(|k| k.decrypt(&mut buf, context).map(|p| p.len()))
    } else if data.is_empty() {
        Ok(0)
    } else {
        DecryptingKey::cbc(unbound).and_then(|k| k.decrypt(&mut buf, context).map(|p| p.len()))
    };
    match len {
        Ok(len) => {
            buf.truncate(len);
            Ok(buf)
        }
        Err(_) => {
            buf.zeroize();
            Err(ChipError::EncryptedDataInvalid)
        }
    }
}

fn sm4_cbc_encrypt(key: &[u8], iv: &[u8; 16], pad: bool, data: &[u8]) -> Result<Vec<u8>> {
    let enc = cbc::Encryptor::<sm4::Sm4>::new_from_slices(key, iv)
        .map_err(|_| internal("SM4 key of the wrong length"))?;
    let len = data.len();
    let mut buf = Vec::with_capacity(len + 16);
    buf.extend_from_slice(data);
    let out_len = if pad {
        buf.resize(len - len % 16 + 16, 0);
        enc.encrypt_padded::<Pkcs7>(&mut buf, len).map(<[u8]>::len)
    } else {
        if len % 16 != 0 {
            return Err(ChipError::DataLenRange(format!(
                "SM4-CBC without padding needs whole 16-byte blocks, not {len} bytes"
            )));
        }
        enc.encrypt_padded::<NoPadding>(&mut buf, len)
            .map(<[u8]>::len)
    };
    match out_len {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(_) => {
            buf.zeroize();
            Err(internal("SM4-CBC encryption failed"))
        }
    }
}

fn sm4_cbc_decrypt(key: &[u8], iv: &[u8; 16], pad: bool, data: &[u8]) -> Result<Vec<u8>> {
    if data.len() % 16 != 0 || (pad && data.is_empty()) {
        return Err(ChipError::EncryptedDataInvalid);
    }
    let dec = cbc::Decryptor::<sm4::Sm4>::new_from_slices(key, iv)
        .map_err(|_| internal("SM4 key of the wrong length"))?;
    let mut buf = data.to_vec();
    let len = if pad {
        dec.decrypt_padded::<Pkcs7>(&mut buf).map(<[u8]>::len)
    } else {
        dec.decrypt_padded::<NoPadding>(&mut buf).map(<[u8]>::len)
    };
    match len {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(_) => {
            buf.zeroize();
            Err(ChipError::EncryptedDataInvalid)
        }
    }
}

fn hmac_alg(hash: HashAlg) -> Option<hmac::Algorithm> {
    match hash {
        HashAlg::Sha1 => Some(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
        HashAlg::Sha256 => Some(hmac::HMAC_SHA256),
        HashAlg::Sha384 => Some(hmac::HMAC_SHA384),
        HashAlg::Sha512 => Some(hmac::HMAC_SHA512),
        HashAlg::Sm3 => None,
    }
}

fn hmac_sign(hash: HashAlg, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hmac_alg(hash) {
        Some(alg) => hmac::sign(&hmac::Key::new(alg, key), data)
            .as_ref()
            .to_vec(),
        None => hmac_sm3(key, data).to_vec(),
    }
}

/// HMAC (RFC 2104) with SM3 (block size 64 bytes), which aws-lc-rs does not offer.
fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k0 = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        k0[..32].copy_from_slice(&Sm3::digest(key));
    } else {
        k0[..key.len()].copy_from_slice(key);
    }
    let mut pad = Zeroizing::new([0u8; BLOCK]);
    pad.iter_mut()
        .zip(k0.iter())
        .for_each(|(p, k)| *p = k ^ 0x36);
    let inner = Sm3::new()
        .chain_update(&pad[..])
        .chain_update(data)
        .finalize();
    pad.iter_mut()
        .zip(k0.iter())
        .for_each(|(p, k)| *p = k ^ 0x5c);
    Sm3::new()
        .chain_update(&pad[..])
        .chain_update(inner)
        .finalize()
        .into()
}

/// Where a key comes from, which decides the sizes allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Generated,
    /// Imported or unwrapped (also: loaded from a blob).
    Imported,
    /// ECDH-derived: a secret of at most 256 bits.
    Derived,
}

fn check_spec(spec: KeySpec, origin: Origin) -> Result<()> {
    let bits = spec.bits;
    let ok = match spec.key_type {
        KeyType::EcP256 | KeyType::Sm2 => bits == 256,
        KeyType::Rsa => matches!(bits, 2048 | 3072),
        KeyType::Aes => matches!(bits, 128 | 192 | 256),
        KeyType::Sm4 => bits == 128,
        KeyType::GenericSecret => {
            bits % 8 == 0
                && match origin {
                    Origin::Generated => (64..=4096).contains(&bits),
                    Origin::Imported => (8..=4096).contains(&bits),
                    Origin::Derived => (8..=256).contains(&bits),
                }
        }
    };
    if !ok {
        return Err(ChipError::KeySizeRange(format!(
            "{bits} bits is not a supported size for a {:?} key{}",
            spec.key_type,
            if origin == Origin::Derived {
                " derived by ECDH (at most 256 bits)"
            } else {
                ""
            }
        )));
    }
    if origin == Origin::Derived && (spec.key_type.is_key_pair() || bits > 256) {
        return Err(ChipError::KeySizeRange(format!(
            "ECDH derives at most 256 bits of secret key, not a {bits}-bit {:?} key",
            spec.key_type
        )));
    }
    Ok(())
}

/// Usage of a key generated in the chip (PKCS#11: `CKA_LOCAL` true, `CKA_ALWAYS_SENSITIVE` =
/// `CKA_SENSITIVE`, `CKA_NEVER_EXTRACTABLE` = `!CKA_EXTRACTABLE`).
fn usage_generated(requested: KeyUsage) -> KeyUsage {
    let mut usage = requested.difference(CHIP_MANAGED) | KeyUsage::LOCAL;
    if usage.contains(KeyUsage::SENSITIVE) {
        usage |= KeyUsage::ALWAYS_SENSITIVE;
    }
    if !usage.contains(KeyUsage::EXTRACTABLE) {
        usage |= KeyUsage::NEVER_EXTRACTABLE;
    }
    usage
}

/// Usage of an imported or unwrapped key: none of the chip-managed attributes.
fn usage_imported(requested: KeyUsage) -> KeyUsage {
    requested.difference(CHIP_MANAGED)
}

/// Usage of an ECDH-derived key (PKCS#11, 4.14 "Key derivation": `CKA_LOCAL` false;
/// `CKA_ALWAYS_SENSITIVE` and `CKA_NEVER_EXTRACTABLE` carried over from the base key when the
/// new key is sensitive / not extractable).
fn usage_derived(requested: KeyUsage, base: KeyUsage) -> KeyUsage {
    let mut usage = requested.difference(CHIP_MANAGED);
    if base.contains(KeyUsage::ALWAYS_SENSITIVE) && usage.contains(KeyUsage::SENSITIVE) {
        usage |= KeyUsage::ALWAYS_SENSITIVE;
    }
    if base.contains(KeyUsage::NEVER_EXTRACTABLE) && !usage.contains(KeyUsage::EXTRACTABLE) {
        usage |= KeyUsage::NEVER_EXTRACTABLE;
    }
    usage
}

/// Fresh key material for `spec` (already checked), in the import encoding.
fn generate_material(spec: KeySpec) -> Result<Zeroizing<Vec<u8>>> {
    Ok(match spec.key_type {
        KeyType::EcP256 => {
            let pair = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(|_| internal("P-256 key generation failed"))?;
            let scalar = pair
                .private_key()
                .as_be_bytes()
                .map_err(|_| internal("cannot serialise a P-256 private key"))?;
            Zeroizing::new(scalar.as_ref().to_vec())
        }
        KeyType::Sm2 => loop {
            // d uniform in [1, n-2] (GM/T 0003.1, 6.1): rejection-sample a scalar and skip n-1.
            let d = Zeroizing::new(random_sm2_scalar()?);
            if !bool::from((*d + sm2::Scalar::ONE).is_zero()) {
                break Zeroizing::new(d.to_repr().to_vec());
            }
        },
        KeyType::Rsa => {
            let size = match spec.bits {
                2048 => rsa::KeySize::Rsa2048,
                _ => rsa::KeySize::Rsa3072,
            };
            let pair =
                rsa::KeyPair::generate(size).map_err(|_| internal("RSA key generation failed"))?;
            let der = pair
                .as_der()
                .map_err(|_| internal("cannot serialise an RSA private key"))?;
            Zeroizing::new(der.as_ref().to_vec())
        }
        KeyType::Aes | KeyType::Sm4 | KeyType::GenericSecret => {
            let mut value = Zeroizing::new(vec![0u8; spec.bytes()]);
            fill_random(&mut value)?;
            value
        }
    })
}

fn fill_random(buf: &mut [u8]) -> Result<()> {
    aws_lc_rs::rand::fill(buf).map_err(|_| internal("the random generator failed"))
}

fn internal(what: &str) -> ChipError {
    ChipError::Internal(what.to_string())
}

/// Verification with a public key (given by the caller or taken from a loaded key pair).
fn verify_public(public: &PublicKey, mech: &SignMech, data: &[u8], sig: &[u8]) -> Result<()> {
    match (public, mech) {
        (PublicKey::EcP256(point), SignMech::Ecdsa) => {
            let digest = ecdsa_digest(data)?;
            let key = ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                .map_err(|_| ChipError::DataInvalid("not a P-256 public key".into()))?;
            key.verify_digest_sig(&digest, sig)
                .map_err(|_| ChipError::SignatureInvalid)
        }
        (PublicKey::Rsa { n, e }, SignMech::RsaPkcs1 | SignMech::RsaPss { .. }) => {
            rsa_verify(n, e, mech, data, sig)
        }
        (PublicKey::Sm2(point), SignMech::Sm2 { user_id }) => {
            let public = sm2_public(point)?;
            let e = sm2_e(user_id, &sm2_point_bytes(public.as_affine()), data)?;
            sm2_verify_prehash(point, &e, sig)
        }
        (PublicKey::Sm2(point), SignMech::Sm2Digest) => sm2_verify_prehash(point, data, sig),
        (public, mech) => Err(mismatch(mech, public_type(public))),
    }
}

fn encrypt_public(public: &PublicKey, mech: &CipherMech, data: &[u8]) -> Result<Vec<u8>> {
    match (public, mech) {
        (PublicKey::Rsa { n, e }, CipherMech::RsaOaep { hash, label }) => {
            rsa_encrypt_oaep(n, e, *hash, label, data)
        }
        (PublicKey::Sm2(point), CipherMech::Sm2) => sm2_encrypt(point, data),
        (public, mech) => Err(mismatch(mech, public_type(public))),
    }
}

fn public_type(public: &PublicKey) -> KeyType {
    match public {
        PublicKey::EcP256(_) => KeyType::EcP256,
        PublicKey::Sm2(_) => KeyType::Sm2,
        PublicKey::Rsa { .. } => KeyType::Rsa,
    }
}

/// The [`CipherMech`] that does the encryption of a public-key [`WrapMech`].
fn wrap_cipher(mech: &WrapMech) -> Option<CipherMech> {
    match mech {
        WrapMech::RsaOaep { hash, label } => Some(CipherMech::RsaOaep {
            hash: *hash,
            label: label.clone(),
        }),
        WrapMech::Sm2 => Some(CipherMech::Sm2),
        WrapMech::AesKeyWrap | WrapMech::AesKeyWrapPad => None,
    }
}

fn aes_kek(key: &[u8]) -> Result<KeyEncryptionKey<key_wrap::AesBlockCipher>> {
    let cipher = match key.len() {
        16 => &key_wrap::AES_128,
        32 => &key_wrap::AES_256,
        n => {
            return Err(ChipError::MechanismInvalid(format!(
                "AES key wrap on this chip needs a 128- or 256-bit wrapping key, not {} bits",
                n * 8
            )))
        }
    };
    KeyEncryptionKey::new(cipher, key).map_err(|_| internal("AES key wrap key rejected"))
}

fn aes_wrap(kek: &[u8], pad: bool, material: &[u8]) -> Result<Vec<u8>> {
    let kek = aes_kek(kek)?;
    if pad {
        let mut out = vec![0u8; material.len().div_ceil(8) * 8 + 8];
        let len = kek
            .wrap_with_padding(material, &mut out)
            .map_err(|_| internal("AES key wrap with padding failed"))?
            .len();
        out.truncate(len);
        Ok(out)
    } else {
        if material.len() % 8 != 0 || material.len() < 16 {
            return Err(ChipError::KeySizeRange(format!(
                "AES key wrap (RFC 3394) needs a key of 16 or more bytes in 8-byte steps, not {} \
                 bytes; use AES key wrap with padding",
                material.len()
            )));
        }
        let mut out = vec![0u8; material.len() + 8];
        let len = kek
            .wrap(material, &mut out)
            .map_err(|_| internal("AES key wrap failed"))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

fn aes_unwrap(kek: &[u8], pad: bool, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let kek = aes_kek(kek)?;
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let len = if pad {
        kek.unwrap_with_padding(wrapped, &mut out).map(|p| p.len())
    } else {
        kek.unwrap(wrapped, &mut out).map(|p| p.len())
    }
    .map_err(|_| ChipError::WrappedKeyInvalid)?;
    out.truncate(len);
    Ok(out)
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
            Request::GenerateKeyPair(t) => Response::NewKey(self.generate_key_pair(*t)?),
            Request::GenerateSecretKey(t) => Response::NewKey(self.generate_secret_key(*t)?),
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
        })
    }
}

/// The commands, one function each ([`Chip::execute`] calls them).
impl SoftChip {
    fn info(&self) -> ChipInfo {
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

    fn self_test(&self) -> Result<()> {
        self.pause();
        run_self_tests()
    }

    fn generate_key_pair(&self, template: KeyTemplate) -> Result<NewKey> {
        self.pause();
        let spec = template.spec;
        if !spec.key_type.is_key_pair() {
            return Err(ChipError::KeyTypeInconsistent(format!(
                "{:?} is a secret key type: use generate_secret_key",
                spec.key_type
            )));
        }
        check_spec(spec, Origin::Generated)?;
        let domain = self.domain_key()?;
        let material = generate_material(spec)?;
        self.new_key(
            &domain,
            template.id,
            spec,
            usage_generated(template.usage),
            &material,
            |e| ChipError::Internal(format!("generated key rejected: {e}")),
        )
    }

    fn generate_secret_key(&self, template: KeyTemplate) -> Result<NewKey> {
        self.pause();
        let spec = template.spec;
        if spec.key_type.is_key_pair() {
            return Err(ChipError::KeyTypeInconsistent(format!(
                "{:?} is a key pair type: use generate_key_pair",
                spec.key_type
            )));
        }
        check_spec(spec, Origin::Generated)?;
        let domain = self.domain_key()?;
        let material = generate_material(spec)?;
        self.new_key(
            &domain,
            template.id,
            spec,
            usage_generated(template.usage),
            &material,
            |e| ChipError::Internal(format!("generated key rejected: {e}")),
        )
    }

    fn import_key(&self, template: KeyTemplate, material: &[u8]) -> Result<NewKey> {
        self.pause();
        check_spec(template.spec, Origin::Imported)?;
        let domain = self.domain_key()?;
        self.new_key(
            &domain,
            template.id,
            template.spec,
            usage_imported(template.usage),
            material,
            ChipError::KeyInvalid,
        )
    }

    /// Verifies and loads a blob. Reloading a key that is loaded from a blob with the same
    /// header succeeds without changing anything; a blob with the same id but another header
    /// (e.g. new usage flags sealed later) replaces the loaded key in its slot.
    fn load_key(&self, blob: &KeyBlob) -> Result<KeyId> {
        self.pause();
        let bytes = blob.as_bytes();
        let header = BlobHeader::parse(bytes)?;
        let domain = self.domain_key()?;
        if header.domain_kcv != domain.kcv {
            return Err(ChipError::WrongDomain {
                blob: hex::encode(header.domain_kcv),
                chip: hex::encode(domain.kcv),
            });
        }
        check_spec(header.spec, Origin::Imported)
            .map_err(|e| ChipError::BlobInvalid(format!("header: {e}")))?;
        let material = domain.open(bytes)?;
        let mut header_bytes = [0u8; BLOB_HEADER_LEN];
        header_bytes.copy_from_slice(&bytes[..BLOB_HEADER_LEN]);
        let id = header.id;
        if let Some(loaded) = self.read_keys().get(&id) {
            if loaded.header == header_bytes {
                return Ok(id);
            }
        }
        let parsed = KeyMaterial::parse(header.spec, header.usage, &material)
            .map_err(|e| ChipError::BlobInvalid(format!("key material: {e}")))?;
        let key = Arc::new(LoadedKey {
            spec: header.spec,
            usage: header.usage,
            header: header_bytes,
            material: parsed,
        });
        let mut keys = self.write_keys();
        if !keys.contains_key(&id) && keys.len() >= self.slots as usize {
            return Err(ChipError::SlotsFull(self.slots));
        }
        keys.insert(id, key);
        Ok(id)
    }

    fn evict_key(&self, id: KeyId) {
        self.pause();
        // The key is zeroized when the last `Arc` goes: here, or when an operation that
        // cloned it before the eviction finishes.
        let removed = self.write_keys().remove(&id);
        drop(removed);
    }

    fn public_key(&self, id: KeyId) -> Result<PublicKey> {
        self.pause();
        let key = self.loaded(id)?;
        key.material.public().ok_or_else(|| {
            ChipError::KeyTypeInconsistent(format!(
                "{:?} is a secret key and has no public key",
                key.spec.key_type
            ))
        })
    }

    fn sign(&self, key: KeyId, mech: &SignMech, data: &[u8]) -> Result<Vec<u8>> {
        self.pause();
        let key = self.loaded(key)?;
        key.permit(KeyUsage::SIGN, "sign")?;
        match (mech, &key.material) {
            (SignMech::Ecdsa, KeyMaterial::EcP256(k)) => k.sign(data),
            (SignMech::RsaPkcs1, KeyMaterial::Rsa(k)) => k.sign_pkcs1(data),
            (SignMech::RsaPss { hash }, KeyMaterial::Rsa(k)) => k.sign_pss(*hash, data),
            (SignMech::Sm2 { user_id }, KeyMaterial::Sm2(k)) => {
                let z = k.z(user_id)?;
                let e: [u8; 32] = Sm3::new()
                    .chain_update(z)
                    .chain_update(data)
                    .finalize()
                    .into();
                k.sign_prehash(&e)
            }
            (SignMech::Sm2Digest, KeyMaterial::Sm2(k)) => k.sign_prehash(data),
            (SignMech::Hmac(hash), _) => {
                let secret = key.secret(KeyType::GenericSecret, mech)?;
                Ok(hmac_sign(*hash, &secret.value, data))
            }
            (mech, _) => Err(mismatch(mech, key.spec.key_type)),
        }
    }

    fn verify(&self, key: &KeyRef, mech: &SignMech, data: &[u8], signature: &[u8]) -> Result<()> {
        self.pause();
        match key {
            KeyRef::Public(public) => verify_public(public, mech, data, signature),
            KeyRef::Loaded(id) => {
                let key = self.loaded(*id)?;
                key.permit(KeyUsage::VERIFY, "verify")?;
                if let SignMech::Hmac(hash) = mech {
                    let secret = key.secret(KeyType::GenericSecret, mech)?;
                    let expected = hmac_sign(*hash, &secret.value, data);
                    return constant_time::verify_slices_are_equal(&expected, signature)
                        .map_err(|_| ChipError::SignatureInvalid);
                }
                match key.material.public() {
                    Some(public) => verify_public(&public, mech, data, signature),
                    None => Err(mismatch(mech, key.spec.key_type)),
                }
            }
        }
    }

    fn encrypt(&self, key: &KeyRef, mech: &CipherMech, data: &[u8]) -> Result<Vec<u8>> {
        self.pause();
        let key = match key {
            KeyRef::Public(public) => return encrypt_public(public, mech, data),
            KeyRef::Loaded(id) => self.loaded(*id)?,
        };
        key.permit(KeyUsage::ENCRYPT, "encrypt")?;
        match mech {
            CipherMech::AesGcm { iv, aad, tag_bits } => {
                aes_gcm_encrypt(key.secret(KeyType::Aes, mech)?, iv, aad, *tag_bits, data)
            }
            CipherMech::AesCbc { iv, pad } => {
                aes_cbc_encrypt(&key.secret(KeyType::Aes, mech)?.value, iv, *pad, data)
            }
            CipherMech::Sm4Cbc { iv, pad } => {
                sm4_cbc_encrypt(&key.secret(KeyType::Sm4, mech)?.value, iv, *pad, data)
            }
            CipherMech::RsaOaep { .. } | CipherMech::Sm2 => match key.material.public() {
                Some(public) => encrypt_public(&public, mech, data),
                None => Err(mismatch(mech, key.spec.key_type)),
            },
        }
    }

    fn decrypt(&self, key: KeyId, mech: &CipherMech, data: &[u8]) -> Result<Vec<u8>> {
        self.pause();
        let key = self.loaded(key)?;
        key.permit(KeyUsage::DECRYPT, "decrypt")?;
        match (mech, &key.material) {
            (CipherMech::AesGcm { iv, aad, tag_bits }, _) => {
                aes_gcm_decrypt(key.secret(KeyType::Aes, mech)?, iv, aad, *tag_bits, data)
            }
            (CipherMech::AesCbc { iv, pad }, _) => {
                aes_cbc_decrypt(&key.secret(KeyType::Aes, mech)?.value, iv, *pad, data)
            }
            (CipherMech::Sm4Cbc { iv, pad }, _) => {
                sm4_cbc_decrypt(&key.secret(KeyType::Sm4, mech)?.value, iv, *pad, data)
            }
            (CipherMech::RsaOaep { hash, label }, KeyMaterial::Rsa(k)) => {
                Ok(k.decrypt_oaep(*hash, label, data)?.to_vec())
            }
            (CipherMech::Sm2, KeyMaterial::Sm2(k)) => Ok(k.decrypt(data)?.to_vec()),
            (mech, _) => Err(mismatch(mech, key.spec.key_type)),
        }
    }

    fn wrap_key(&self, wrapping: &KeyRef, mech: &WrapMech, target: KeyId) -> Result<Vec<u8>> {
        self.pause();
        let target_key = self.loaded(target)?;
        let wrapping_key = match wrapping {
            KeyRef::Loaded(id) => {
                let key = self.loaded(*id)?;
                key.permit(KeyUsage::WRAP, "wrap")?;
                Some(key)
            }
            KeyRef::Public(_) => None,
        };
        if !target_key.usage.contains(KeyUsage::EXTRACTABLE) {
            return Err(ChipError::KeyNotExtractable(target));
        }
        let material = target_key.material.export()?;
        let too_long = |e: ChipError| match e {
            ChipError::DataLenRange(m) => ChipError::KeySizeRange(format!("cannot wrap: {m}")),
            other => other,
        };
        match (mech, wrapping, &wrapping_key) {
            (WrapMech::AesKeyWrap | WrapMech::AesKeyWrapPad, _, Some(kek)) => {
                let kek = kek.secret(KeyType::Aes, mech)?;
                aes_wrap(&kek.value, *mech == WrapMech::AesKeyWrapPad, &material)
            }
            (WrapMech::AesKeyWrap | WrapMech::AesKeyWrapPad, _, None) => Err(
                ChipError::KeyTypeInconsistent("AES key wrap needs a loaded AES key".into()),
            ),
            (WrapMech::RsaOaep { .. } | WrapMech::Sm2, KeyRef::Public(public), _) => {
                let cipher = wrap_cipher(mech).ok_or_else(|| internal("wrap mechanism"))?;
                encrypt_public(public, &cipher, &material).map_err(too_long)
            }
            (WrapMech::RsaOaep { .. } | WrapMech::Sm2, KeyRef::Loaded(_), Some(key)) => {
                let cipher = wrap_cipher(mech).ok_or_else(|| internal("wrap mechanism"))?;
                let public = key
                    .material
                    .public()
                    .ok_or_else(|| mismatch(mech, key.spec.key_type))?;
                encrypt_public(&public, &cipher, &material).map_err(too_long)
            }
            (mech, _, _) => Err(ChipError::MechanismInvalid(format!("{mech:?}"))),
        }
    }

    fn unwrap_key(
        &self,
        unwrapping: KeyId,
        mech: &WrapMech,
        wrapped: &[u8],
        target: KeyTemplate,
    ) -> Result<NewKey> {
        self.pause();
        check_spec(target.spec, Origin::Imported)?;
        let domain = self.domain_key()?;
        let key = self.loaded(unwrapping)?;
        key.permit(KeyUsage::UNWRAP, "unwrap")?;
        let material = match (mech, &key.material) {
            (WrapMech::AesKeyWrap | WrapMech::AesKeyWrapPad, _) => {
                let kek = key.secret(KeyType::Aes, mech)?;
                aes_unwrap(&kek.value, *mech == WrapMech::AesKeyWrapPad, wrapped)?
            }
            (WrapMech::RsaOaep { hash, label }, KeyMaterial::Rsa(k)) => {
                k.decrypt_oaep(*hash, label, wrapped).map_err(|e| match e {
                    ChipError::EncryptedDataInvalid => ChipError::WrappedKeyInvalid,
                    other => other,
                })?
            }
            (WrapMech::Sm2, KeyMaterial::Sm2(k)) => k
                .decrypt(wrapped)
                .map_err(|_| ChipError::WrappedKeyInvalid)?,
            (mech, _) => return Err(mismatch(mech, key.spec.key_type)),
        };
        self.new_key(
            &domain,
            target.id,
            target.spec,
            usage_imported(target.usage),
            &material,
            |_| ChipError::WrappedKeyInvalid,
        )
    }

    fn derive_ecdh(&self, key: KeyId, peer_point: &[u8], target: KeyTemplate) -> Result<NewKey> {
        self.pause();
        if target.spec.key_type.is_key_pair() {
            return Err(ChipError::KeyTypeInconsistent(format!(
                "ECDH derives secret keys, not {:?} key pairs",
                target.spec.key_type
            )));
        }
        check_spec(target.spec, Origin::Derived)?;
        let domain = self.domain_key()?;
        let base = self.loaded(key)?;
        base.permit(KeyUsage::DERIVE, "derive")?;
        let shared = match &base.material {
            KeyMaterial::EcP256(k) => {
                let private = k
                    .ecdh
                    .as_ref()
                    .ok_or_else(|| internal("ECDH key missing"))?;
                agreement::agree(
                    private,
                    agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer_point),
                    ChipError::DataInvalid("the peer point is not a P-256 public key".into()),
                    |z| Ok(Zeroizing::new(z.to_vec())),
                )?
            }
            KeyMaterial::Sm2(k) => k.ecdh(peer_point)?,
            _ => {
                return Err(ChipError::KeyTypeInconsistent(format!(
                    "ECDH needs a P-256 or SM2 key, not {:?}",
                    base.spec.key_type
                )))
            }
        };
        let len = target.spec.bytes();
        self.new_key(
            &domain,
            target.id,
            target.spec,
            usage_derived(target.usage, base.usage),
            &shared[..len],
            |e| ChipError::KeyInvalid(format!("derived key: {e}")),
        )
    }

    fn random(&self, len: usize) -> Result<Vec<u8>> {
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

    fn domain_generate(&self) -> Result<DomainInfo> {
        self.pause();
        let mut domain = self.domain.write().unwrap_or_else(PoisonError::into_inner);
        if domain.is_some() {
            return Err(ChipError::DomainAlreadySet);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(&mut key[..])?;
        let key = Arc::new(DomainKey::new(key)?);
        let info = key.info();
        // Durable first: a chip that answered "generated" must still hold the key after a
        // restart.
        self.persist(Some(&key))?;
        *domain = Some(key);
        Ok(info)
    }

    /// Exports the domain key to the chip whose identity key is `recipient_identity`. Package
    /// layout and key derivation: [`DOMAIN_PACKAGE_LEN`].
    fn domain_export(&self, recipient_identity: &[u8]) -> Result<Vec<u8>> {
        self.pause();
        let domain = self.domain_key()?;
        if recipient_identity.len() != P256_POINT_LEN || recipient_identity[0] != 0x04 {
            return Err(ChipError::DataInvalid(
                "the recipient identity must be an uncompressed P-256 point (65 bytes)".into(),
            ));
        }
        let ephemeral = agreement::PrivateKey::generate(&agreement::ECDH_P256)
            .map_err(|_| internal("cannot generate an ephemeral key"))?;
        let ephemeral_public = ephemeral
            .compute_public_key()
            .map_err(|_| internal("cannot compute the ephemeral public key"))?;
        let ephemeral_public = ephemeral_public.as_ref();
        let key = transfer_key(
            &ephemeral,
            recipient_identity,
            ephemeral_public,
            recipient_identity,
        )?;
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce)?;
        let aad = transfer_aad(&domain.kcv, ephemeral_public, recipient_identity);

        let mut package = Vec::with_capacity(DOMAIN_PACKAGE_LEN);
        package.push(DOMAIN_PACKAGE_VERSION);
        package.extend_from_slice(&domain.kcv);
        package.extend_from_slice(ephemeral_public);
        package.extend_from_slice(&nonce);
        let body = package.len();
        package.extend_from_slice(domain.key.as_ref());
        match key.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&aad[..]),
            &mut package[body..],
        ) {
            Ok(tag) => package.extend_from_slice(tag.as_ref()),
            Err(_) => {
                package.zeroize();
                return Err(internal("AES-GCM sealing of the domain key failed"));
            }
        }
        Ok(package)
    }

    fn domain_import(&self, package: &[u8]) -> Result<DomainInfo> {
        self.pause();
        let invalid = |why: &str| ChipError::DomainPackageInvalid(why.to_string());
        if package.len() != DOMAIN_PACKAGE_LEN {
            return Err(invalid(&format!(
                "{} bytes, a package is {DOMAIN_PACKAGE_LEN}",
                package.len()
            )));
        }
        if package[0] != DOMAIN_PACKAGE_VERSION {
            return Err(invalid(&format!("unknown version {}", package[0])));
        }
        let mut kcv = [0u8; 8];
        kcv.copy_from_slice(&package[1..9]);
        let ephemeral_public = &package[9..9 + P256_POINT_LEN];
        let nonce_at = 9 + P256_POINT_LEN;
        let nonce = Nonce::try_assume_unique_for_key(&package[nonce_at..nonce_at + NONCE_LEN])
            .map_err(|_| internal("package nonce"))?;
        let key = transfer_key(
            &self.identity,
            ephemeral_public,
            ephemeral_public,
            &self.identity_public,
        )
        .map_err(|e| match e {
            ChipError::DataInvalid(_) => invalid("the ephemeral key is not a P-256 point"),
            other => other,
        })?;
        let aad = transfer_aad(&kcv, ephemeral_public, &self.identity_public);
        let mut sealed = Zeroizing::new(package[nonce_at + NONCE_LEN..].to_vec());
        let opened = key
            .open_in_place(nonce, Aad::from(&aad[..]), &mut sealed)
            .map_err(|_| invalid("authentication failed (altered, or made for another chip)"))?;
        let mut domain_key = Zeroizing::new([0u8; 32]);
        if opened.len() != 32 {
            return Err(invalid("the encrypted domain key is not 32 bytes"));
        }
        domain_key.copy_from_slice(opened);
        if domain_kcv(&domain_key) != kcv {
            return Err(invalid("the key check value does not match the key"));
        }

        let mut domain = self.domain.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = domain.as_ref() {
            return if constant_time::verify_slices_are_equal(&current.key[..], &domain_key[..])
                .is_ok()
            {
                Ok(current.info())
            } else {
                Err(ChipError::DomainAlreadySet)
            };
        }
        let new = Arc::new(DomainKey::new(domain_key)?);
        let info = new.info();
        self.persist(Some(&new))?;
        *domain = Some(new);
        Ok(info)
    }
}

/// The AES-256-GCM key of a domain transfer: HKDF-SHA-256 over the x-coordinate of
/// ECDH(`private`, `peer`), salted with `ephemeral_public || recipient`.
fn transfer_key(
    private: &agreement::PrivateKey,
    peer: &[u8],
    ephemeral_public: &[u8],
    recipient: &[u8],
) -> Result<LessSafeKey> {
    let mut salt = Vec::with_capacity(2 * P256_POINT_LEN);
    salt.extend_from_slice(ephemeral_public);
    salt.extend_from_slice(recipient);
    let mut key = Zeroizing::new([0u8; 32]);
    agreement::agree(
        private,
        agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer),
        ChipError::DataInvalid("not a P-256 public key".into()),
        |z| {
            hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
                .extract(z)
                .expand(&[DOMAIN_TRANSFER_INFO], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut key[..]))
                .map_err(|_| internal("HKDF failed"))
        },
    )?;
    let unbound = UnboundKey::new(&aead::AES_256_GCM, &key[..])
        .map_err(|_| internal("cannot key AES-256-GCM"))?;
    Ok(LessSafeKey::new(unbound))
}

fn transfer_aad(kcv: &[u8; 8], ephemeral_public: &[u8], recipient: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + 8 + 2 * P256_POINT_LEN);
    aad.push(DOMAIN_PACKAGE_VERSION);
    aad.extend_from_slice(kcv);
    aad.extend_from_slice(ephemeral_public);
    aad.extend_from_slice(recipient);
    aad
}

/// The power-on and on-demand known-answer tests.
fn run_self_tests() -> Result<()> {
    fn check(name: &str, ok: bool) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(ChipError::SelfTestFailed(name.to_string()))
        }
    }
    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap_or_default()
    }

    // SM3, GM/T 0004-2012 example 1.
    check(
        "SM3 known answer",
        Sm3::digest(b"abc")[..]
            == h("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
    )?;

    // SM4, GM/T 0002-2012 example 1 (one block, as ECB).
    {
        let key = h("0123456789abcdeffedcba9876543210");
        let cipher = sm4::Sm4::new_from_slice(&key).map_err(|_| internal("SM4 key"))?;
        let mut block = sm4::cipher::Block::<sm4::Sm4>::default();
        block.copy_from_slice(&key);
        cipher.encrypt_block(&mut block);
        check(
            "SM4 known answer",
            block[..] == h("681edf34d206965e86b3e94f536e4246"),
        )?;
        let out = sm4_cbc_encrypt(&key, &[0u8; 16], false, &key)?;
        check(
            "SM4-CBC known answer",
            out == h("681edf34d206965e86b3e94f536e4246"),
        )?;
        let back = sm4_cbc_decrypt(&key, &[0u8; 16], false, &out)?;
        check("SM4-CBC decryption", back == key)?;
    }

    // AES-256-GCM, McGrew & Viega test case 14 (zero key, zero IV, one zero block).
    {
        let key = SecretKey::parse(KeySpec::AES_256, KeyUsage::ENCRYPT, &[0u8; 32])
            .map_err(|e| ChipError::SelfTestFailed(format!("AES-GCM key: {e}")))?;
        let out = aes_gcm_encrypt(&key, &[0u8; 12], &[], 128, &[0u8; 16])?;
        check(
            "AES-GCM known answer",
            out == h("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
        )?;
        let back = aes_gcm_decrypt(&key, &[0u8; 12], &[], 128, &out)?;
        check("AES-GCM decryption", back == [0u8; 16])?;
        let mut bad = out.clone();
        bad[0] ^= 1;
        check(
            "AES-GCM tag check",
            aes_gcm_decrypt(&key, &[0u8; 12], &[], 128, &bad).is_err(),
        )?;
    }

    // AES-256-CBC, NIST SP 800-38A F.2.5 (first block).
    {
        let key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let mut iv = [0u8; 16];
        iv.iter_mut().zip(0u8..).for_each(|(b, i)| *b = i);
        let pt = h("6bc1bee22e409f96e93d7e117393172a");
        let ct = aes_cbc_encrypt(&key, &iv, false, &pt)?;
        check(
            "AES-CBC known answer",
            ct == h("f58c4c04d6e5f1ba779eabfb5f7bfbd6"),
        )?;
        check(
            "AES-CBC decryption",
            aes_cbc_decrypt(&key, &iv, false, &ct)? == pt,
        )?;
    }

    // HMAC-SHA-256, RFC 4231 test case 2.
    check(
        "HMAC-SHA-256 known answer",
        hmac_sign(HashAlg::Sha256, b"Jefe", b"what do ya want for nothing?")
            == h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    )?;

    // AES key wrap, RFC 3394 4.1.
    {
        let kek = h("000102030405060708090A0B0C0D0E0F");
        let key = h("00112233445566778899AABBCCDDEEFF");
        let wrapped = aes_wrap(&kek, false, &key)?;
        check(
            "AES key wrap known answer",
            wrapped == h("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"),
        )?;
        check(
            "AES key unwrap",
            aes_unwrap(&kek, false, &wrapped)?[..] == key[..],
        )?;
    }

    // HKDF-SHA-256, RFC 5869 test case 1.
    {
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let mut okm = [0u8; 42];
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
            .extract(&[0x0b; 22])
            .expand(&[&info], Len(42))
            .and_then(|o| o.fill(&mut okm))
            .map_err(|_| ChipError::SelfTestFailed("HKDF".into()))?;
        check(
            "HKDF-SHA-256 known answer",
            okm[..]
                == h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        )?;
    }

    // ECDSA P-256: verify the RFC 6979 A.2.5 signature of "sample" (SHA-256), then a pairwise
    // sign/verify with that key.
    {
        let scalar = h("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721");
        let key = EcP256Key::parse(&scalar, KeyUsage::empty())
            .map_err(|e| ChipError::SelfTestFailed(format!("ECDSA key: {e}")))?;
        let digest = digest::digest(&digest::SHA256, b"sample");
        let sig = h(
            "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716\
                     f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8",
        );
        let public = PublicKey::EcP256(key.public.clone());
        check(
            "ECDSA P-256 known answer",
            verify_public(&public, &SignMech::Ecdsa, digest.as_ref(), &sig).is_ok(),
        )?;
        let mine = key.sign(digest.as_ref())?;
        check(
            "ECDSA P-256 pairwise",
            verify_public(&public, &SignMech::Ecdsa, digest.as_ref(), &mine).is_ok()
                && verify_public(&public, &SignMech::Ecdsa, &[0u8; 32], &mine).is_err(),
        )?;
    }

    // SM2: GM/T 0003.5 signature example (fixed k) as a known answer, then a pairwise test.
    {
        let d = h("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8");
        let key =
            Sm2Key::parse(&d).map_err(|e| ChipError::SelfTestFailed(format!("SM2 key: {e}")))?;
        let e = sm2_e(SM2_DEFAULT_ID, &key.public_bytes, b"message digest")?;
        let k = sm2::Scalar::from_repr(sm2::FieldBytes::from(hex32(
            "59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21",
        )));
        let k = Option::<sm2::Scalar>::from(k).ok_or_else(|| internal("SM2 test k"))?;
        let sig = sm2_sign_with_k(&key.d, &key.d1_inv, &sm2_e_scalar(&e)?, &k);
        check(
            "SM2 signature known answer",
            sig.map(|s| s.to_vec())
                == Some(h(
                    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3\
                           B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA",
                )),
        )?;
        let mine = key.sign_prehash(&e)?;
        check(
            "SM2 pairwise",
            sm2_verify_prehash(&key.public_bytes, &e, &mine).is_ok()
                && sm2_verify_prehash(&key.public_bytes, &[0u8; 32], &mine).is_err(),
        )?;
        let ct = sm2_encrypt(&key.public_bytes, b"cloudkey self test")?;
        check(
            "SM2 encryption pairwise",
            key.decrypt(&ct).map(|m| m.to_vec()).ok() == Some(b"cloudkey self test".to_vec()),
        )?;
    }

    // The random generator gives distinct outputs.
    {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        fill_random(&mut a)?;
        fill_random(&mut b)?;
        check("random generator", a != b && a != [0u8; 32])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sm2_z_matches_the_rustcrypto_verifier() {
        // A signature over e = SM3(Z || M) with our Z verifies as a message signature with
        // sm2's own Z computation for the same id.
        use sm2::dsa::signature::Verifier;
        let key = Sm2Key::parse(&[7u8; 32]).unwrap();
        let msg = b"z check";
        let e = sm2_e(SM2_DEFAULT_ID, &key.public_bytes, msg).unwrap();
        let sig = key.sign_prehash(&e).unwrap();
        let vk =
            sm2::dsa::VerifyingKey::from_sec1_bytes("1234567812345678", &key.public_bytes).unwrap();
        vk.verify(msg, &sm2::dsa::Signature::from_slice(&sig).unwrap())
            .unwrap();
    }

    #[test]
    fn digest_info_parsing() {
        let mut di = DIGEST_INFOS[1].1.to_vec();
        di.extend_from_slice(&[0xAA; 32]);
        assert_eq!(
            parse_digest_info(&di),
            Some((HashAlg::Sha256, &[0xAA; 32][..]))
        );
        di.push(0);
        assert_eq!(parse_digest_info(&di), None);
    }

    #[test]
    fn rsa_pkcs1_paths_agree() {
        // The same input through both PKCS#1 v1.5 implementations: aws-lc-rs (what a SHA-2
        // DigestInfo normally takes) and the `rsa` crate (everything else) sign alike, and each
        // verifier accepts the other's signature.
        let pair = rsa::KeyPair::generate(rsa::KeySize::Rsa2048).unwrap();
        let key = RsaKey::parse(pair.as_der().unwrap().as_ref(), 2048, KeyUsage::SIGN).unwrap();
        assert!(
            key.raw.get().is_none(),
            "the rsa form is parsed on first use only"
        );
        for (hash, prefix) in &DIGEST_INFOS[1..] {
            let mut di = prefix.to_vec();
            di.extend((0..hash.output_len()).map(|i| i as u8));
            let aws = key.sign_pkcs1(&di).unwrap();
            let raw = key.sign_pkcs1_raw(&di).unwrap();
            assert_eq!(aws, raw, "{hash:?}");
            rsa_verify_pkcs1_raw(&key.n, &key.e, &di, &aws).unwrap();
            rsa_verify(&key.n, &key.e, &SignMech::RsaPkcs1, &di, &raw).unwrap();
        }
        assert!(key.raw.get().is_some());
        // Leading zeros of a caller's modulus do not matter.
        let mut n0 = vec![0];
        n0.extend_from_slice(&key.n);
        let sig = key.sign_pkcs1(b"raw").unwrap();
        rsa_verify(&n0, &key.e, &SignMech::RsaPkcs1, b"raw", &sig).unwrap();
        assert!(matches!(
            key.sign_pkcs1(&[0; 256 - 10]),
            Err(ChipError::DataLenRange(_))
        ));
    }

    #[test]
    fn modulus_bit_length() {
        assert_eq!(modulus_bits(&[0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0x01, 0]), 9);
        assert_eq!(modulus_bits(&[]), 0);
    }

    #[test]
    fn usage_rules() {
        let asked = KeyUsage::SIGN | KeyUsage::SENSITIVE | KeyUsage::LOCAL;
        assert_eq!(
            usage_generated(asked),
            KeyUsage::SIGN
                | KeyUsage::SENSITIVE
                | KeyUsage::LOCAL
                | KeyUsage::ALWAYS_SENSITIVE
                | KeyUsage::NEVER_EXTRACTABLE
        );
        assert_eq!(
            usage_imported(asked | KeyUsage::NEVER_EXTRACTABLE),
            KeyUsage::SIGN | KeyUsage::SENSITIVE
        );
        let base = usage_generated(KeyUsage::DERIVE | KeyUsage::SENSITIVE);
        assert_eq!(
            usage_derived(
                KeyUsage::ENCRYPT | KeyUsage::SENSITIVE | KeyUsage::LOCAL,
                base
            ),
            KeyUsage::ENCRYPT
                | KeyUsage::SENSITIVE
                | KeyUsage::ALWAYS_SENSITIVE
                | KeyUsage::NEVER_EXTRACTABLE
        );
    }
}
