//! The values that cross the [`Chip`](crate::Chip) interface: key ids, specs, usage flags, blobs,
//! public keys and mechanisms.

use std::fmt;

use zeroize::Zeroize;

/// The largest number of bytes one [`Chip::random`](crate::Chip::random) call returns.
pub const MAX_RANDOM_LEN: usize = 4096;

/// The distinguishing identifier GM/T 0009 and OpenSSL use when none is given.
pub const SM2_DEFAULT_ID: &[u8] = b"1234567812345678";

/// A key's identity: 16 bytes chosen by the caller (the cluster's object id). It is bound into
/// the key's blob, so a blob cannot be loaded as another key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// A fresh random id.
    ///
    /// # Panics
    /// If the system random generator fails, which leaves nothing safe to do.
    #[must_use]
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).expect("system random generator failed");
        Self(id)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The kind of a key. The discriminants are the KEYTYPE byte of blobs and of the serial protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KeyType {
    /// NIST P-256 (secp256r1) key pair.
    EcP256 = 0x01,
    /// SM2 key pair (GM/T 0003, curve sm2p256v1).
    Sm2 = 0x02,
    /// RSA key pair, 2048 or 3072 bits, public exponent 65537.
    Rsa = 0x03,
    /// AES secret key, 128, 192 or 256 bits.
    Aes = 0x10,
    /// SM4 secret key, 128 bits.
    Sm4 = 0x11,
    /// Generic secret (HMAC key, derived secret), 8 to 512 bytes.
    GenericSecret = 0x12,
}

impl KeyType {
    /// The key type for a KEYTYPE byte.
    #[must_use]
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::EcP256,
            0x02 => Self::Sm2,
            0x03 => Self::Rsa,
            0x10 => Self::Aes,
            0x11 => Self::Sm4,
            0x12 => Self::GenericSecret,
            _ => return None,
        })
    }

    /// True for key pairs, false for secret keys.
    #[must_use]
    pub fn is_key_pair(self) -> bool {
        matches!(self, Self::EcP256 | Self::Sm2 | Self::Rsa)
    }
}

/// A key type and size in bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeySpec {
    /// The kind of key.
    pub key_type: KeyType,
    /// Size in bits: 256 for EC P-256 and SM2, 2048/3072 for RSA, 128/192/256 for AES, 128 for
    /// SM4, a multiple of 8 from 64 to 4096 for generic secrets.
    pub bits: u32,
}

impl KeySpec {
    /// EC P-256.
    pub const EC_P256: Self = Self {
        key_type: KeyType::EcP256,
        bits: 256,
    };
    /// SM2.
    pub const SM2: Self = Self {
        key_type: KeyType::Sm2,
        bits: 256,
    };
    /// RSA-2048.
    pub const RSA_2048: Self = Self {
        key_type: KeyType::Rsa,
        bits: 2048,
    };
    /// RSA-3072.
    pub const RSA_3072: Self = Self {
        key_type: KeyType::Rsa,
        bits: 3072,
    };
    /// AES-256.
    pub const AES_256: Self = Self {
        key_type: KeyType::Aes,
        bits: 256,
    };
    /// SM4.
    pub const SM4: Self = Self {
        key_type: KeyType::Sm4,
        bits: 128,
    };

    /// A generic secret (HMAC key) of `bytes` bytes.
    #[must_use]
    pub fn generic_secret(bytes: u32) -> Self {
        Self {
            key_type: KeyType::GenericSecret,
            bits: bytes * 8,
        }
    }

    /// Size in whole bytes.
    #[must_use]
    pub fn bytes(self) -> usize {
        self.bits.div_ceil(8) as usize
    }
}

bitflags::bitflags! {
    /// What a key may be used for, plus the security attributes that PKCS#11 derives from where
    /// the key came from. Bound into the blob as associated data; the chip enforces them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct KeyUsage: u32 {
        /// Sign or MAC.
        const SIGN = 1 << 0;
        /// Verify signatures or MACs.
        const VERIFY = 1 << 1;
        /// Encrypt.
        const ENCRYPT = 1 << 2;
        /// Decrypt.
        const DECRYPT = 1 << 3;
        /// Wrap other keys.
        const WRAP = 1 << 4;
        /// Unwrap keys.
        const UNWRAP = 1 << 5;
        /// ECDH derivation.
        const DERIVE = 1 << 6;
        /// May be wrapped (exported encrypted) by `wrap_key`.
        const EXTRACTABLE = 1 << 7;
        /// Sensitive (PKCS#11 `CKA_SENSITIVE`): the value is never revealed.
        const SENSITIVE = 1 << 8;
        /// Generated inside a chip (PKCS#11 `CKA_LOCAL`). Set by the chip, never by a caller.
        const LOCAL = 1 << 9;
        /// Has always been sensitive (`CKA_ALWAYS_SENSITIVE`). Maintained by the chip.
        const ALWAYS_SENSITIVE = 1 << 10;
        /// Has never been extractable (`CKA_NEVER_EXTRACTABLE`). Maintained by the chip.
        const NEVER_EXTRACTABLE = 1 << 11;
    }
}

/// What a new key is to be: its id, spec and usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyTemplate {
    /// The id bound into the blob.
    pub id: KeyId,
    /// Type and size.
    pub spec: KeySpec,
    /// Usage flags. `LOCAL`, `ALWAYS_SENSITIVE` and `NEVER_EXTRACTABLE` are ignored here and
    /// set by the chip from how the key came to be.
    pub usage: KeyUsage,
}

/// A key sealed under the cluster's domain key: versioned AES-256-GCM with the header (version,
/// domain check value, key id, type, size, usage) as associated data. The layout is in
/// `PROTOCOL.md`, "Key blobs". It can be stored and replicated freely; only a chip of the same
/// domain can open it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyBlob(pub Vec<u8>);

/// The version byte of the blobs this crate writes.
pub const BLOB_VERSION: u8 = 1;
/// Length of a blob's header (the associated data).
pub const BLOB_HEADER_LEN: usize = 1 + 8 + 16 + 1 + 2 + 4;

impl KeyBlob {
    /// The blob's bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Reads the blob's header without opening it (no domain key needed). The header is
    /// authenticated only when a chip loads the blob.
    ///
    /// # Errors
    /// [`ChipError::BlobInvalid`](crate::ChipError::BlobInvalid) for a short blob, an unknown
    /// version or key type.
    pub fn header(&self) -> crate::Result<BlobHeader> {
        BlobHeader::parse(&self.0)
    }

    /// The key id in the header, or `None` for a malformed blob.
    #[must_use]
    pub fn key_id(&self) -> Option<KeyId> {
        self.header().ok().map(|h| h.id)
    }
}

impl fmt::Debug for KeyBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.header() {
            Ok(h) => write!(
                f,
                "KeyBlob({:?}, {:?}, {} bytes)",
                h.id,
                h.spec,
                self.0.len()
            ),
            Err(_) => write!(f, "KeyBlob(malformed, {} bytes)", self.0.len()),
        }
    }
}

/// The clear header of a [`KeyBlob`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobHeader {
    /// Blob format version.
    pub version: u8,
    /// Check value of the domain key the blob is sealed under.
    pub domain_kcv: [u8; 8],
    /// The key's id.
    pub id: KeyId,
    /// The key's type and size.
    pub spec: KeySpec,
    /// The key's usage and security attributes.
    pub usage: KeyUsage,
}

impl BlobHeader {
    /// Parses the first [`BLOB_HEADER_LEN`] bytes of a blob.
    ///
    /// # Errors
    /// [`ChipError::BlobInvalid`](crate::ChipError::BlobInvalid).
    pub fn parse(b: &[u8]) -> crate::Result<Self> {
        use crate::ChipError::BlobInvalid;
        if b.len() < BLOB_HEADER_LEN {
            return Err(BlobInvalid(format!(
                "{} bytes is shorter than a blob header",
                b.len()
            )));
        }
        if b[0] != BLOB_VERSION {
            return Err(BlobInvalid(format!("unknown blob version {}", b[0])));
        }
        let mut kcv = [0u8; 8];
        kcv.copy_from_slice(&b[1..9]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[9..25]);
        let key_type = KeyType::from_u8(b[25])
            .ok_or_else(|| BlobInvalid(format!("unknown key type 0x{:02x}", b[25])))?;
        let bits = u32::from(u16::from_be_bytes([b[26], b[27]]));
        let usage = KeyUsage::from_bits(u32::from_be_bytes([b[28], b[29], b[30], b[31]]))
            .ok_or_else(|| BlobInvalid("unknown usage bits".into()))?;
        Ok(Self {
            version: b[0],
            domain_kcv: kcv,
            id: KeyId(id),
            spec: KeySpec { key_type, bits },
            usage,
        })
    }

    /// The header's bytes: exactly what is authenticated as AES-GCM associated data.
    #[must_use]
    pub fn to_bytes(&self) -> [u8; BLOB_HEADER_LEN] {
        let mut out = [0u8; BLOB_HEADER_LEN];
        out[0] = self.version;
        out[1..9].copy_from_slice(&self.domain_kcv);
        out[9..25].copy_from_slice(&self.id.0);
        out[25] = self.spec.key_type as u8;
        // bits fit in u16: the largest supported key is RSA-3072 / a 4096-bit secret.
        out[26..28].copy_from_slice(
            &u16::try_from(self.spec.bits)
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out[28..32].copy_from_slice(&self.usage.bits().to_be_bytes());
        out
    }
}

/// A public key as it leaves the chip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// P-256 point, uncompressed SEC1 (`04 || X || Y`, 65 bytes).
    EcP256(Vec<u8>),
    /// SM2 point, uncompressed SEC1 (65 bytes).
    Sm2(Vec<u8>),
    /// RSA modulus and public exponent, big-endian without leading zeros.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
}

/// A key a chip just created (generated, imported, unwrapped or derived).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKey {
    /// The sealed key.
    pub blob: KeyBlob,
    /// The public part, for key pairs.
    pub public: Option<PublicKey>,
}

/// A key named in an operation: one loaded in the chip, or a public key the caller supplies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyRef {
    /// A key loaded in the chip.
    Loaded(KeyId),
    /// A public key given with the request (e.g. a terminal's key to wrap a master key under).
    Public(PublicKey),
}

/// Hash functions used by mechanisms. The discriminants are the HASH byte of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum HashAlg {
    /// SHA-1 (OAEP and legacy only).
    Sha1 = 0x01,
    /// SHA-256.
    Sha256 = 0x02,
    /// SHA-384.
    Sha384 = 0x03,
    /// SHA-512.
    Sha512 = 0x04,
    /// SM3.
    Sm3 = 0x05,
}

impl HashAlg {
    /// The hash for a HASH byte.
    #[must_use]
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Sha1,
            0x02 => Self::Sha256,
            0x03 => Self::Sha384,
            0x04 => Self::Sha512,
            0x05 => Self::Sm3,
            _ => return None,
        })
    }

    /// Output length in bytes.
    #[must_use]
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 | Self::Sm3 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// Signature and MAC mechanisms, and what `data` means for each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignMech {
    /// ECDSA on P-256 over a caller-computed digest (PKCS#11 `CKM_ECDSA`). Digests longer than
    /// 32 bytes are truncated to their leftmost 256 bits, as ECDSA specifies. Signature `r || s`,
    /// 64 bytes.
    Ecdsa,
    /// RSA PKCS#1 v1.5 (PKCS#11 `CKM_RSA_PKCS`): EMSA-PKCS1-v1_5 type-1 padding of `data` as
    /// it is, no hashing, no `DigestInfo` added. `data` is usually a DER `DigestInfo` (of any
    /// hash, SHA-1 included) or the TLS 1.0/1.1 `MD5 || SHA-1` value, but may be any bytes, at
    /// most `k - 11` of them for a `k`-byte modulus (else
    /// [`ChipError::DataLenRange`](crate::ChipError::DataLenRange)). Signature modulus-sized.
    RsaPkcs1,
    /// RSA-PSS over a caller-computed digest of `hash`, MGF1 with the same hash, salt length equal
    /// to the digest length (PKCS#11 `CKM_RSA_PKCS_PSS`).
    RsaPss {
        /// The hash that produced the digest.
        hash: HashAlg,
    },
    /// SM2 signature of a message: the chip computes `Z = SM3(ENTL || ID || a || b || G || P)` and
    /// `e = SM3(Z || M)` (GM/T 0003.2, PKCS#11 vendor `SM3-with-SM2`). Signature `r || s`.
    Sm2 {
        /// The distinguishing identifier; [`SM2_DEFAULT_ID`] when in doubt.
        user_id: Vec<u8>,
    },
    /// SM2 signature over a caller-computed 32-byte `e = SM3(Z || M)` (vendor `CKM_SM2`).
    Sm2Digest,
    /// HMAC with a generic secret key; full-length tag.
    Hmac(HashAlg),
    /// AES-CMAC (NIST SP 800-38B, RFC 4493; PKCS#11 `CKM_AES_CMAC`) with an AES-128, -192 or
    /// -256 key over the message; the full 16-byte tag.
    AesCmac,
}

/// Encryption mechanisms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CipherMech {
    /// AES-GCM. Encryption output is `ciphertext || tag`.
    AesGcm {
        /// Nonce, 12 bytes recommended (1 to 128 bytes accepted).
        iv: Vec<u8>,
        /// Additional authenticated data.
        aad: Vec<u8>,
        /// Tag length in bits: 96 to 128, a multiple of 8.
        tag_bits: u8,
    },
    /// AES-CBC; with `pad`, PKCS#7 padding (PKCS#11 `CKM_AES_CBC_PAD`), without it the data must
    /// be a whole number of blocks.
    AesCbc {
        /// The 16-byte IV.
        iv: [u8; 16],
        /// PKCS#7 padding.
        pad: bool,
    },
    /// RSA-OAEP with MGF1 over the same hash.
    RsaOaep {
        /// The hash for OAEP and MGF1 (SHA-1/256/384/512).
        hash: HashAlg,
        /// The OAEP label (PKCS#11 `pSourceData`); empty for none.
        label: Vec<u8>,
    },
    /// SM2 public-key encryption (GM/T 0003.4), ciphertext `C1 || C3 || C2` with C1 uncompressed.
    Sm2,
    /// SM4-CBC; with `pad`, PKCS#7 padding.
    Sm4Cbc {
        /// The 16-byte IV.
        iv: [u8; 16],
        /// PKCS#7 padding.
        pad: bool,
    },
}

/// Key wrapping mechanisms. The wrapped material has the encoding of
/// [`Chip::import_key`](crate::Chip::import_key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WrapMech {
    /// AES Key Wrap (RFC 3394); the target's material must be a multiple of 8 bytes.
    AesKeyWrap,
    /// AES Key Wrap with Padding (RFC 5649).
    AesKeyWrapPad,
    /// RSA-OAEP under the wrapping key.
    RsaOaep {
        /// The hash for OAEP and MGF1.
        hash: HashAlg,
        /// The OAEP label; empty for none.
        label: Vec<u8>,
    },
    /// SM2 encryption under the wrapping key (`C1 || C3 || C2`).
    Sm2,
}

/// Information about a chip.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipInfo {
    /// Model name.
    pub model: String,
    /// Serial number, unique per chip.
    pub serial: String,
    /// Firmware version.
    pub firmware: String,
    /// Number of key slots.
    pub slots: u32,
    /// Slots in use.
    pub loaded: u32,
    /// The chip's identity public key (P-256, uncompressed SEC1), the recipient key for domain
    /// key transfer.
    pub identity_key: Vec<u8>,
    /// The domain the chip holds, if any.
    pub domain: Option<DomainInfo>,
}

/// Identifies a domain key without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct DomainInfo {
    /// Key check value: the first 8 bytes of HMAC-SHA-256(domain key, "cloudkey domain kcv").
    pub kcv: [u8; 8],
}

impl fmt::Debug for DomainInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainInfo(kcv {})", hex::encode(self.kcv))
    }
}

/// Secret bytes that are zeroized when dropped and never printed.
#[derive(Clone, Default, PartialEq, Eq, zeroize::ZeroizeOnDrop)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    /// Takes ownership of `v`.
    #[must_use]
    pub fn new(v: Vec<u8>) -> Self {
        Self(v)
    }

    /// The secret.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes([redacted; {}])", self.0.len())
    }
}

impl Zeroize for SecretBytes {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}
