//! Mechanisms: the table `C_GetMechanismList`/`C_GetMechanismInfo` report, the translation of
//! `CK_MECHANISM` (number and C parameter struct) into the protocol's [`Mechanism`], what each
//! mechanism means for the module's own work (local digests, hash-and-sign, signature lengths),
//! and the vendor numbering of SM2/SM3/SM4.
//!
//! # Vendor numbers
//! The wire always carries the numbers of [`cloudkey_protocol::vendor`]. Applications may be
//! written against another vendor's SM2/SM3/SM4 numbers: the `[vendor_mechanisms]` table of the
//! configuration renames them ([`Numbering`]), and the module translates in both directions:
//! mechanism numbers, `CKA_KEY_TYPE`, `CKA_KEY_GEN_MECHANISM`, `CKA_MECHANISM_TYPE` and
//! `CKA_ALLOWED_MECHANISMS` values. See `VENDOR.md`.

use std::collections::HashMap;

use cloudkey_protocol::msg::{MechParam, Mechanism};
use cloudkey_protocol::vendor;
use cryptoki_sys as ck;
use cryptoki_sys::{CK_FLAGS, CK_MECHANISM_INFO};
use serde::Deserialize;

use crate::error::Ckr;
use crate::ffi::ptr::MechPtr;

/// Largest data an operation accepts (single-part input, or the parts of a multi-part
/// operation the module buffers): 16 MiB.
pub(crate) const MAX_DATA: usize = 16 << 20;

const EC: CK_FLAGS = ck::CKF_EC_F_P | ck::CKF_EC_NAMEDCURVE | ck::CKF_EC_UNCOMPRESS;
const SIGN: CK_FLAGS = ck::CKF_SIGN | ck::CKF_VERIFY;
const CRYPT: CK_FLAGS = ck::CKF_ENCRYPT | ck::CKF_DECRYPT;
const WRAP: CK_FLAGS = ck::CKF_WRAP | ck::CKF_UNWRAP;

/// The shape of a mechanism's parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Param {
    /// None allowed.
    None,
    /// A 16-byte IV.
    Iv16,
    /// `CK_GCM_PARAMS`.
    Gcm,
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss,
    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    Oaep,
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh1,
    /// Optional SM2 distinguishing identifier (raw bytes).
    Sm2Id,
}

/// A hash the module computes itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Hash {
    /// SHA-1 (digests and legacy verification only).
    Sha1,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SM3.
    Sm3,
}

impl Hash {
    /// Output length in bytes.
    pub(crate) fn len(self) -> usize {
        match self {
            Self::Sha1 => 20,
            Self::Sha256 | Self::Sm3 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// How the module feeds a signature mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SignKind {
    /// The data is the input itself (`CKM_ECDSA`: a digest; `CKM_RSA_PKCS`: the bytes to pad,
    /// usually a `DigestInfo`): single-part only.
    Raw,
    /// Hash-and-sign: the module hashes (in one part or many) and sends the digest.
    Hashed(Hash),
    /// The node needs the whole message (HMAC, AES-CMAC, SM3-with-SM2): multi-part input is
    /// buffered.
    Buffered,
}

/// The key family a mechanism works with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// EC P-256 (`CKK_EC`).
    Ec,
    /// RSA.
    Rsa,
    /// AES.
    Aes,
    /// Generic secret / HMAC keys.
    Generic,
    /// SM2 (`CKK_SM2`, or `CKK_EC` on the SM2 curve).
    Sm2,
    /// SM4.
    Sm4,
    /// No key (digests, key generation).
    None,
}

impl Family {
    /// The key type a key of this family has by default (wire numbering).
    pub(crate) fn key_type(self) -> Option<u64> {
        match self {
            Self::Ec => Some(ck::CKK_EC),
            Self::Rsa => Some(ck::CKK_RSA),
            Self::Aes => Some(ck::CKK_AES),
            Self::Generic => Some(ck::CKK_GENERIC_SECRET),
            Self::Sm2 => Some(vendor::CKK_SM2),
            Self::Sm4 => Some(vendor::CKK_SM4),
            Self::None => None,
        }
    }

    /// Whether a key of wire type `ckk` can serve this family; `true` when in doubt, since the
    /// node checks again.
    pub(crate) fn accepts(self, ckk: u64) -> bool {
        match self {
            Self::Ec => ckk == ck::CKK_EC,
            Self::Rsa => ckk == ck::CKK_RSA,
            Self::Aes => ckk == ck::CKK_AES,
            Self::Generic => matches!(
                ckk,
                ck::CKK_GENERIC_SECRET
                    | ck::CKK_SHA256_HMAC
                    | ck::CKK_SHA384_HMAC
                    | ck::CKK_SHA512_HMAC
            ),
            Self::Sm2 => ckk == vendor::CKK_SM2 || ckk == ck::CKK_EC,
            Self::Sm4 => ckk == vendor::CKK_SM4,
            Self::None => true,
        }
    }
}

/// One supported mechanism, by its wire number.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spec {
    /// `CKM_*` on the wire.
    pub(crate) ckm: u64,
    /// `CK_MECHANISM_INFO.ulMinKeySize`.
    min: u64,
    /// `CK_MECHANISM_INFO.ulMaxKeySize`.
    max: u64,
    /// `CK_MECHANISM_INFO.flags`.
    pub(crate) flags: CK_FLAGS,
    param: Param,
    /// Signature handling (sign/verify mechanisms).
    pub(crate) sign: Option<SignKind>,
    /// The hash of a digest mechanism.
    pub(crate) digest: Option<Hash>,
    /// The key family.
    pub(crate) family: Family,
}

const fn spec(ckm: u64, min: u64, max: u64, flags: CK_FLAGS, param: Param, family: Family) -> Spec {
    Spec {
        ckm,
        min,
        max,
        flags,
        param,
        sign: None,
        digest: None,
        family,
    }
}

const fn signer(
    ckm: u64,
    min: u64,
    max: u64,
    flags: CK_FLAGS,
    param: Param,
    family: Family,
    kind: SignKind,
) -> Spec {
    Spec {
        sign: Some(kind),
        ..spec(ckm, min, max, flags, param, family)
    }
}

const fn digester(ckm: u64, hash: Hash) -> Spec {
    Spec {
        digest: Some(hash),
        ..spec(ckm, 0, 0, ck::CKF_DIGEST, Param::None, Family::None)
    }
}

use Family as F;
use Hash as H;
use Param as P;
use SignKind as S;

/// Every mechanism the module offers, with the key sizes and flags the cluster really supports
/// (key sizes in bits for RSA and EC and generic-secret generation, in bytes for AES, SM4 and
/// HMAC, as PKCS#11 defines per mechanism). Limits beyond a range (an AES-192 key-encryption
/// key, GCM IV and tag sizes) are documented in `README.md` and answered by the node.
pub(crate) const TABLE: &[Spec] = &[
    // EC P-256
    spec(
        ck::CKM_EC_KEY_PAIR_GEN,
        256,
        256,
        ck::CKF_GENERATE_KEY_PAIR | EC,
        P::None,
        F::None,
    ),
    signer(ck::CKM_ECDSA, 256, 256, SIGN | EC, P::None, F::Ec, S::Raw),
    signer(
        ck::CKM_ECDSA_SHA256,
        256,
        256,
        SIGN | EC,
        P::None,
        F::Ec,
        S::Hashed(H::Sha256),
    ),
    signer(
        ck::CKM_ECDSA_SHA384,
        256,
        256,
        SIGN | EC,
        P::None,
        F::Ec,
        S::Hashed(H::Sha384),
    ),
    signer(
        ck::CKM_ECDSA_SHA512,
        256,
        256,
        SIGN | EC,
        P::None,
        F::Ec,
        S::Hashed(H::Sha512),
    ),
    spec(
        ck::CKM_ECDH1_DERIVE,
        256,
        256,
        ck::CKF_DERIVE | EC,
        P::Ecdh1,
        F::None,
    ),
    spec(
        ck::CKM_ECDH1_COFACTOR_DERIVE,
        256,
        256,
        ck::CKF_DERIVE | EC,
        P::Ecdh1,
        F::None,
    ),
    // RSA (PKCS#1 v1.5 encryption is not offered by the chips: OAEP only)
    spec(
        ck::CKM_RSA_PKCS_KEY_PAIR_GEN,
        2048,
        3072,
        ck::CKF_GENERATE_KEY_PAIR,
        P::None,
        F::None,
    ),
    signer(ck::CKM_RSA_PKCS, 2048, 3072, SIGN, P::None, F::Rsa, S::Raw),
    signer(
        ck::CKM_SHA1_RSA_PKCS,
        2048,
        3072,
        ck::CKF_VERIFY,
        P::None,
        F::Rsa,
        S::Hashed(H::Sha1),
    ),
    signer(
        ck::CKM_SHA256_RSA_PKCS,
        2048,
        3072,
        SIGN,
        P::None,
        F::Rsa,
        S::Hashed(H::Sha256),
    ),
    signer(
        ck::CKM_SHA384_RSA_PKCS,
        2048,
        3072,
        SIGN,
        P::None,
        F::Rsa,
        S::Hashed(H::Sha384),
    ),
    signer(
        ck::CKM_SHA512_RSA_PKCS,
        2048,
        3072,
        SIGN,
        P::None,
        F::Rsa,
        S::Hashed(H::Sha512),
    ),
    signer(
        ck::CKM_RSA_PKCS_PSS,
        2048,
        3072,
        SIGN,
        P::Pss,
        F::Rsa,
        S::Raw,
    ),
    signer(
        ck::CKM_SHA256_RSA_PKCS_PSS,
        2048,
        3072,
        SIGN,
        P::Pss,
        F::Rsa,
        S::Hashed(H::Sha256),
    ),
    signer(
        ck::CKM_SHA384_RSA_PKCS_PSS,
        2048,
        3072,
        SIGN,
        P::Pss,
        F::Rsa,
        S::Hashed(H::Sha384),
    ),
    signer(
        ck::CKM_SHA512_RSA_PKCS_PSS,
        2048,
        3072,
        SIGN,
        P::Pss,
        F::Rsa,
        S::Hashed(H::Sha512),
    ),
    spec(
        ck::CKM_RSA_PKCS_OAEP,
        2048,
        3072,
        CRYPT | WRAP,
        P::Oaep,
        F::Rsa,
    ),
    // AES (sizes in bytes)
    spec(
        ck::CKM_AES_KEY_GEN,
        16,
        32,
        ck::CKF_GENERATE,
        P::None,
        F::None,
    ),
    spec(ck::CKM_AES_GCM, 16, 32, CRYPT, P::Gcm, F::Aes),
    spec(ck::CKM_AES_CBC, 16, 32, CRYPT, P::Iv16, F::Aes),
    spec(ck::CKM_AES_CBC_PAD, 16, 32, CRYPT, P::Iv16, F::Aes),
    spec(ck::CKM_AES_KEY_WRAP, 16, 32, WRAP, P::None, F::Aes),
    spec(ck::CKM_AES_KEY_WRAP_PAD, 16, 32, WRAP, P::None, F::Aes),
    spec(ck::CKM_AES_KEY_WRAP_KWP, 16, 32, WRAP, P::None, F::Aes),
    signer(ck::CKM_AES_CMAC, 16, 32, SIGN, P::None, F::Aes, S::Buffered),
    // Generic secrets and HMAC (generation in bits, HMAC keys in bytes)
    spec(
        ck::CKM_GENERIC_SECRET_KEY_GEN,
        64,
        4096,
        ck::CKF_GENERATE,
        P::None,
        F::None,
    ),
    signer(
        ck::CKM_SHA256_HMAC,
        8,
        512,
        SIGN,
        P::None,
        F::Generic,
        S::Buffered,
    ),
    signer(
        ck::CKM_SHA384_HMAC,
        8,
        512,
        SIGN,
        P::None,
        F::Generic,
        S::Buffered,
    ),
    signer(
        ck::CKM_SHA512_HMAC,
        8,
        512,
        SIGN,
        P::None,
        F::Generic,
        S::Buffered,
    ),
    // Digests, computed by the module
    digester(ck::CKM_SHA_1, H::Sha1),
    digester(ck::CKM_SHA256, H::Sha256),
    digester(ck::CKM_SHA384, H::Sha384),
    digester(ck::CKM_SHA512, H::Sha512),
    // SM2 / SM3 / SM4 (vendor numbers)
    spec(
        vendor::CKM_SM2_KEY_PAIR_GEN,
        256,
        256,
        ck::CKF_GENERATE_KEY_PAIR | EC,
        P::None,
        F::None,
    ),
    signer(
        vendor::CKM_SM2,
        256,
        256,
        SIGN | EC,
        P::None,
        F::Sm2,
        S::Raw,
    ),
    signer(
        vendor::CKM_SM3_SM2,
        256,
        256,
        SIGN | EC,
        P::Sm2Id,
        F::Sm2,
        S::Buffered,
    ),
    spec(
        vendor::CKM_SM2_ENCRYPT,
        256,
        256,
        CRYPT | WRAP | EC,
        P::None,
        F::Sm2,
    ),
    digester(vendor::CKM_SM3, H::Sm3),
    spec(
        vendor::CKM_SM4_KEY_GEN,
        16,
        16,
        ck::CKF_GENERATE,
        P::None,
        F::None,
    ),
    spec(vendor::CKM_SM4_CBC, 16, 16, CRYPT, P::Iv16, F::Sm4),
    spec(vendor::CKM_SM4_CBC_PAD, 16, 16, CRYPT, P::Iv16, F::Sm4),
];

/// One mechanism the module advertises (`C_GetMechanismList`, `C_GetMechanismInfo`), in the
/// wire numbering (SM2/SM3/SM4 as [`cloudkey_protocol::vendor`] numbers them, whatever
/// `[vendor_mechanisms]` an application sees): what the cluster must accept for the
/// mechanism's operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Advertised {
    /// `CKM_*` on the wire.
    pub ckm: u64,
    /// `CK_MECHANISM_INFO.flags` (`CKF_SIGN`, `CKF_ENCRYPT`, `CKF_WRAP`, `CKF_DERIVE`, ...).
    pub flags: CK_FLAGS,
    /// `CK_MECHANISM_INFO.ulMinKeySize`.
    pub min_key_size: u64,
    /// `CK_MECHANISM_INFO.ulMaxKeySize`.
    pub max_key_size: u64,
    /// The `CKK_*` (wire numbering) of the key the mechanism is used with; `None` for digests,
    /// key generation and derivation, which the module does not check against a key type.
    pub key_type: Option<u64>,
    /// True for the digests the module computes itself (the cluster is never asked).
    pub local: bool,
    /// The length of a signature or MAC, for the mechanisms advertised for signing (`None`
    /// for the others): what the module answers to a size query (`C_Sign` with a null
    /// buffer) without asking the cluster, so it must be the length the cluster produces.
    pub signature_len: Option<SignatureLen>,
}

/// How long a mechanism's signatures or MACs are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignatureLen {
    /// Always this many bytes, whatever the key.
    Fixed(usize),
    /// As long as the RSA key's modulus.
    Modulus,
}

/// Every mechanism the module advertises, in the order of `C_GetMechanismList`.
#[must_use]
pub fn advertised() -> Vec<Advertised> {
    TABLE
        .iter()
        .map(|s| {
            let info = s.info();
            Advertised {
                ckm: s.ckm,
                flags: info.flags,
                min_key_size: info.ulMinKeySize,
                max_key_size: info.ulMaxKeySize,
                key_type: s.family.key_type(),
                local: s.digest.is_some(),
                signature_len: s.sign.and(s.signature_length()),
            }
        })
        .collect()
}

/// The spec of a wire mechanism number.
pub(crate) fn spec_of(wire: u64) -> Option<&'static Spec> {
    TABLE.iter().find(|s| s.ckm == wire)
}

impl Spec {
    /// `CK_MECHANISM_INFO`. `CKF_HW` ("performed by the device") is set for every mechanism
    /// the cluster's chips perform, and not for the digests the module computes itself.
    /// Applications rely on it: `pkcs11-tool` picks signing mechanisms (`--sign` without
    /// `-m`, `--test`) only among those with `CKF_HW` unless given `--allow-sw`.
    pub(crate) fn info(&self) -> CK_MECHANISM_INFO {
        let hw = if self.digest.is_some() { 0 } else { ck::CKF_HW };
        CK_MECHANISM_INFO {
            ulMinKeySize: self.min,
            ulMaxKeySize: self.max,
            flags: self.flags | hw,
        }
    }

    /// The signature length for a key whose modulus (RSA) is `modulus_len` bytes; `None` when
    /// unknown.
    pub(crate) fn signature_len(&self, modulus_len: Option<usize>) -> Option<usize> {
        match self.signature_length()? {
            SignatureLen::Fixed(len) => Some(len),
            SignatureLen::Modulus => modulus_len,
        }
    }

    /// The signature length by family (and HMAC hash), as [`Advertised::signature_len`]
    /// states it; `None` for the families that do not sign.
    fn signature_length(&self) -> Option<SignatureLen> {
        Some(match self.family {
            Family::Ec | Family::Sm2 => SignatureLen::Fixed(64),
            Family::Rsa => SignatureLen::Modulus,
            Family::Generic => SignatureLen::Fixed(match self.ckm {
                ck::CKM_SHA384_HMAC => 48,
                ck::CKM_SHA512_HMAC => 64,
                _ => 32,
            }),
            // The AES signers are MACs of one block (CKM_AES_CMAC).
            Family::Aes => SignatureLen::Fixed(16),
            Family::Sm4 | Family::None => return None,
        })
    }
}

/// The vendor SM2/SM3/SM4 numbers an application uses, when they differ from cloudkey's
/// (`[vendor_mechanisms]` in the configuration). Every key is optional; hex is written
/// `0x8000_8000` or `0x80008000`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VendorNumbers {
    /// SM2 signature over `e` (cloudkey: `0x8000_8000`).
    pub sm2: Option<u64>,
    /// SM2 key pair generation (`0x8000_8001`).
    pub sm2_key_pair_gen: Option<u64>,
    /// SM3-with-SM2 (`0x8000_8100`).
    pub sm3_sm2: Option<u64>,
    /// SM2 encryption (`0x8000_8200`).
    pub sm2_encrypt: Option<u64>,
    /// SM3 digest (`0x8000_8300`).
    pub sm3: Option<u64>,
    /// SM4 key generation (`0x8000_8400`).
    pub sm4_key_gen: Option<u64>,
    /// SM4-CBC (`0x8000_8401`).
    pub sm4_cbc: Option<u64>,
    /// SM4-CBC with padding (`0x8000_8402`).
    pub sm4_cbc_pad: Option<u64>,
    /// `CKK_SM2` key type (`0x8000_0001`).
    pub key_type_sm2: Option<u64>,
    /// `CKK_SM4` key type (`0x8000_0002`).
    pub key_type_sm4: Option<u64>,
}

/// A bijection between the numbers an application uses and the wire numbers.
#[derive(Clone, Debug, Default)]
struct Renames {
    to_wire: HashMap<u64, u64>,
    to_app: HashMap<u64, u64>,
}

impl Renames {
    fn build(pairs: &[(&str, Option<u64>, u64)], reserved: &[u64]) -> Result<Self, String> {
        let mut r = Self::default();
        for &(name, app, wire) in pairs {
            let Some(app) = app else { continue };
            if app != wire && reserved.contains(&app) {
                return Err(format!(
                    "vendor_mechanisms.{name} = 0x{app:x} is already a number the module uses"
                ));
            }
            if r.to_wire.insert(app, wire).is_some() {
                return Err(format!(
                    "vendor_mechanisms.{name} = 0x{app:x} is given to two algorithms"
                ));
            }
            r.to_app.insert(wire, app);
        }
        // An algorithm that keeps its number must not lose it to another one's new name.
        for &(name, app, wire) in pairs {
            if app.is_none() && r.to_wire.contains_key(&wire) {
                return Err(format!(
                    "vendor_mechanisms: 0x{wire:x} is cloudkey's number for {name}; \
                     rename {name} too"
                ));
            }
        }
        // A wire number that was renamed is no longer a valid application number (unless it is
        // itself some other algorithm's new name): see `to_wire`.
        Ok(r)
    }

    fn to_wire(&self, app: u64) -> Option<u64> {
        if let Some(&w) = self.to_wire.get(&app) {
            return Some(w);
        }
        if self.to_app.contains_key(&app) {
            return None;
        }
        Some(app)
    }

    fn to_app(&self, wire: u64) -> u64 {
        self.to_app.get(&wire).copied().unwrap_or(wire)
    }
}

/// How the application numbers vendor mechanisms and key types.
#[derive(Clone, Debug, Default)]
pub(crate) struct Numbering {
    mechs: Renames,
    key_types: Renames,
}

impl Numbering {
    /// cloudkey's own numbers ([`cloudkey_protocol::vendor`]), with `overrides` applied.
    ///
    /// # Errors
    /// A message naming the key when two algorithms would share a number, or when a number
    /// collides with a standard one the module supports.
    pub(crate) fn new(o: &VendorNumbers) -> Result<Self, String> {
        // The standard numbers of the table may not be taken by a vendor algorithm.
        let mech_numbers: Vec<u64> = TABLE
            .iter()
            .map(|s| s.ckm)
            .filter(|&c| c & ck::CKM_VENDOR_DEFINED == 0)
            .collect();
        let mechs = Renames::build(
            &[
                ("sm2", o.sm2, vendor::CKM_SM2),
                (
                    "sm2_key_pair_gen",
                    o.sm2_key_pair_gen,
                    vendor::CKM_SM2_KEY_PAIR_GEN,
                ),
                ("sm3_sm2", o.sm3_sm2, vendor::CKM_SM3_SM2),
                ("sm2_encrypt", o.sm2_encrypt, vendor::CKM_SM2_ENCRYPT),
                ("sm3", o.sm3, vendor::CKM_SM3),
                ("sm4_key_gen", o.sm4_key_gen, vendor::CKM_SM4_KEY_GEN),
                ("sm4_cbc", o.sm4_cbc, vendor::CKM_SM4_CBC),
                ("sm4_cbc_pad", o.sm4_cbc_pad, vendor::CKM_SM4_CBC_PAD),
            ],
            &mech_numbers,
        )?;
        let key_types = Renames::build(
            &[
                ("key_type_sm2", o.key_type_sm2, vendor::CKK_SM2),
                ("key_type_sm4", o.key_type_sm4, vendor::CKK_SM4),
            ],
            &[
                ck::CKK_RSA,
                ck::CKK_EC,
                ck::CKK_AES,
                ck::CKK_GENERIC_SECRET,
                ck::CKK_SHA256_HMAC,
                ck::CKK_SHA384_HMAC,
                ck::CKK_SHA512_HMAC,
            ],
        )?;
        Ok(Self { mechs, key_types })
    }

    /// The wire number of an application's mechanism number; `None` for a number that only
    /// existed before a rename.
    pub(crate) fn mech_to_wire(&self, app: u64) -> Option<u64> {
        self.mechs.to_wire(app)
    }

    /// The application's number for a wire mechanism.
    pub(crate) fn mech_to_app(&self, wire: u64) -> u64 {
        self.mechs.to_app(wire)
    }

    /// The wire key type of an application's `CKK_*`.
    pub(crate) fn key_type_to_wire(&self, app: u64) -> Option<u64> {
        self.key_types.to_wire(app)
    }

    /// The application's `CKK_*` for a wire key type.
    pub(crate) fn key_type_to_app(&self, wire: u64) -> u64 {
        self.key_types.to_app(wire)
    }

    /// The mechanism list in application numbers.
    pub(crate) fn list(&self) -> Vec<u64> {
        TABLE.iter().map(|s| self.mech_to_app(s.ckm)).collect()
    }

    /// The spec of an application mechanism number.
    ///
    /// # Errors
    /// `CKR_MECHANISM_INVALID`.
    pub(crate) fn spec(&self, app: u64) -> Result<&'static Spec, Ckr> {
        self.mech_to_wire(app)
            .and_then(spec_of)
            .ok_or(Ckr::MECHANISM_INVALID)
    }
}

/// A mechanism an operation was initialised with, resolved.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    /// The mechanism for the wire.
    pub(crate) mech: Mechanism,
    /// Its spec.
    pub(crate) spec: &'static Spec,
}

/// Resolves an application's `CK_MECHANISM` for an operation that needs `flag`
/// (`CKF_SIGN`, `CKF_ENCRYPT`, ...).
///
/// # Errors
/// `CKR_MECHANISM_INVALID` for an unknown mechanism or one that does not do `flag`;
/// `CKR_MECHANISM_PARAM_INVALID` for a parameter of the wrong shape.
pub(crate) fn resolve(m: &MechPtr, numbering: &Numbering, flag: CK_FLAGS) -> Result<Resolved, Ckr> {
    let spec = numbering.spec(m.ckm)?;
    if spec.flags & flag == 0 {
        return Err(Ckr::MECHANISM_INVALID);
    }
    let param = param(spec.param, m)?;
    Ok(Resolved {
        mech: Mechanism {
            ckm: spec.ckm,
            param,
        },
        spec,
    })
}

fn u32_param(v: u64) -> Result<u32, Ckr> {
    u32::try_from(v).map_err(|_| Ckr::MECHANISM_PARAM_INVALID)
}

/// Reads the parameter a mechanism takes (shapes only: the node checks what its chips
/// support, e.g. 12-byte GCM IVs or PSS salt lengths).
fn param(shape: Param, m: &MechPtr) -> Result<MechParam, Ckr> {
    let bad = Err(Ckr::MECHANISM_PARAM_INVALID);
    Ok(match shape {
        Param::None => {
            if !m.has_no_param() {
                return bad;
            }
            MechParam::None
        }
        Param::Iv16 => {
            let iv = m.bytes()?;
            if iv.len() != 16 {
                return bad;
            }
            MechParam::Iv(iv)
        }
        Param::Gcm => {
            let g = m.gcm()?;
            if g.iv.is_empty() || g.iv.len() > 256 || g.aad.len() > MAX_DATA || g.tag_bits > 128 {
                return bad;
            }
            MechParam::Gcm {
                iv: g.iv,
                aad: g.aad,
                tag_bits: u32_param(g.tag_bits)?,
            }
        }
        Param::Pss => {
            let p = m.pss()?;
            MechParam::Pss {
                hash: p.hashAlg,
                mgf: p.mgf,
                salt_len: p.sLen,
            }
        }
        Param::Oaep => {
            let o = m.oaep()?;
            // CKZ_DATA_SPECIFIED is the only source PKCS#11 defines; 0 with no data is what
            // some applications pass for "no label".
            let source_ok =
                o.source == ck::CKZ_DATA_SPECIFIED || (o.source == 0 && o.source_data.is_empty());
            if !source_ok {
                return bad;
            }
            MechParam::Oaep {
                hash: o.hash,
                mgf: o.mgf,
                source: o.source_data,
            }
        }
        Param::Ecdh1 => {
            let e = m.ecdh1()?;
            MechParam::Ecdh1 {
                kdf: e.kdf,
                shared_data: e.shared_data,
                public_data: e.public_data,
            }
        }
        Param::Sm2Id => {
            let id = m.bytes()?;
            if id.is_empty() {
                MechParam::None
            } else {
                MechParam::Sm2Id(id)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::mem::size_of;
    use std::ptr::null_mut;

    use cryptoki_sys::{CK_MECHANISM, CK_RSA_PKCS_PSS_PARAMS};

    use super::*;
    use crate::ffi::ptr;

    fn resolve_c(m: &CK_MECHANISM, flag: CK_FLAGS) -> Result<Resolved, Ckr> {
        resolve(
            &ptr::test_mechanism(m).unwrap(),
            &Numbering::default(),
            flag,
        )
    }

    #[test]
    fn the_advertised_list_is_the_mechanism_list() {
        let all = advertised();
        let ckms: Vec<u64> = all.iter().map(|a| a.ckm).collect();
        assert_eq!(ckms, Numbering::default().list());
        for a in &all {
            let s = spec_of(a.ckm).unwrap();
            assert_eq!(
                (a.flags, a.min_key_size, a.max_key_size),
                (s.info().flags, s.info().ulMinKeySize, s.info().ulMaxKeySize)
            );
            assert!(a.key_type.is_none_or(|k| s.family.accepts(k)), "{a:?}");
            assert_eq!(a.local, a.flags & ck::CKF_DIGEST != 0, "{a:?}");
        }
    }

    #[test]
    fn table_is_consistent() {
        for (i, s) in TABLE.iter().enumerate() {
            assert!(
                TABLE[..i].iter().all(|t| t.ckm != s.ckm),
                "0x{:x} twice",
                s.ckm
            );
            assert!(s.min <= s.max);
            assert_eq!(
                s.sign.is_some(),
                s.flags & ck::CKF_SIGN != 0 || s.ckm == ck::CKM_SHA1_RSA_PKCS
            );
            assert_eq!(s.digest.is_some(), s.flags & ck::CKF_DIGEST != 0);
        }
        assert_eq!(
            spec_of(ck::CKM_RSA_PKCS).unwrap().flags & ck::CKF_ENCRYPT,
            0
        );
        let ec = spec_of(ck::CKM_EC_KEY_PAIR_GEN).unwrap().info();
        assert_eq!((ec.ulMinKeySize, ec.ulMaxKeySize), (256, 256));
        assert_ne!(ec.flags & ck::CKF_EC_NAMEDCURVE, 0);
        assert_ne!(ec.flags & ck::CKF_HW, 0);
        assert_eq!(
            spec_of(ck::CKM_SHA256).unwrap().info().flags,
            ck::CKF_DIGEST
        );
        assert_eq!(
            spec_of(ck::CKM_ECDSA).unwrap().signature_len(None),
            Some(64)
        );
        assert_eq!(
            spec_of(ck::CKM_RSA_PKCS).unwrap().signature_len(Some(256)),
            Some(256)
        );
        assert_eq!(
            spec_of(ck::CKM_SHA384_HMAC).unwrap().signature_len(None),
            Some(48)
        );
        let cmac = spec_of(ck::CKM_AES_CMAC).unwrap();
        assert_eq!(cmac.signature_len(None), Some(16));
        assert_eq!(cmac.sign, Some(SignKind::Buffered));
        assert_eq!(cmac.info().flags, SIGN | ck::CKF_HW);
        assert_eq!(
            (cmac.info().ulMinKeySize, cmac.info().ulMaxKeySize),
            (16, 32)
        );
        assert!(cmac.family.accepts(ck::CKK_AES) && !cmac.family.accepts(ck::CKK_GENERIC_SECRET));
    }

    #[test]
    fn parameters_are_checked_by_shape() {
        let ecdsa = CK_MECHANISM {
            mechanism: ck::CKM_ECDSA,
            pParameter: null_mut(),
            ulParameterLen: 0,
        };
        let r = resolve_c(&ecdsa, ck::CKF_SIGN).unwrap();
        assert_eq!(r.mech, Mechanism::new(ck::CKM_ECDSA));
        assert_eq!(
            resolve_c(&ecdsa, ck::CKF_ENCRYPT).unwrap_err(),
            Ckr::MECHANISM_INVALID
        );
        let unknown = CK_MECHANISM {
            mechanism: ck::CKM_DES3_CBC,
            ..ecdsa
        };
        assert_eq!(
            resolve_c(&unknown, ck::CKF_ENCRYPT).unwrap_err(),
            Ckr::MECHANISM_INVALID
        );

        let mut iv = [0u8; 16];
        let cbc = CK_MECHANISM {
            mechanism: ck::CKM_AES_CBC_PAD,
            pParameter: iv.as_mut_ptr().cast(),
            ulParameterLen: 16,
        };
        let r = resolve_c(&cbc, ck::CKF_ENCRYPT).unwrap();
        assert_eq!(r.mech.param, MechParam::Iv(vec![0; 16]));
        let short = CK_MECHANISM {
            ulParameterLen: 8,
            ..cbc
        };
        assert_eq!(
            resolve_c(&short, ck::CKF_ENCRYPT).unwrap_err(),
            Ckr::MECHANISM_PARAM_INVALID
        );
        // A parameter where none is taken.
        let junk = CK_MECHANISM {
            mechanism: ck::CKM_ECDSA,
            ..cbc
        };
        assert_eq!(
            resolve_c(&junk, ck::CKF_SIGN).unwrap_err(),
            Ckr::MECHANISM_PARAM_INVALID
        );

        let mut pss = CK_RSA_PKCS_PSS_PARAMS {
            hashAlg: ck::CKM_SHA256,
            mgf: ck::CKG_MGF1_SHA256,
            sLen: 32,
        };
        let m = CK_MECHANISM {
            mechanism: ck::CKM_SHA256_RSA_PKCS_PSS,
            pParameter: (&raw mut pss).cast(),
            ulParameterLen: size_of::<CK_RSA_PKCS_PSS_PARAMS>() as u64,
        };
        let r = resolve_c(&m, ck::CKF_SIGN).unwrap();
        assert_eq!(
            r.mech.param,
            MechParam::Pss {
                hash: ck::CKM_SHA256,
                mgf: ck::CKG_MGF1_SHA256,
                salt_len: 32
            }
        );
        assert_eq!(r.spec.sign, Some(SignKind::Hashed(Hash::Sha256)));
        let m = CK_MECHANISM {
            ulParameterLen: 4,
            ..m
        };
        assert_eq!(
            resolve_c(&m, ck::CKF_SIGN).unwrap_err(),
            Ckr::MECHANISM_PARAM_INVALID
        );

        // SM3-with-SM2: the id is optional.
        let mut id = *b"alice";
        let sm = CK_MECHANISM {
            mechanism: vendor::CKM_SM3_SM2,
            pParameter: id.as_mut_ptr().cast(),
            ulParameterLen: 5,
        };
        assert_eq!(
            resolve_c(&sm, ck::CKF_SIGN).unwrap().mech.param,
            MechParam::Sm2Id(b"alice".to_vec())
        );
        let sm = CK_MECHANISM {
            pParameter: null_mut(),
            ulParameterLen: 0,
            ..sm
        };
        assert_eq!(
            resolve_c(&sm, ck::CKF_SIGN).unwrap().mech.param,
            MechParam::None
        );
    }

    #[test]
    fn vendor_renames() {
        let n = Numbering::new(&VendorNumbers {
            sm2: Some(0x8000_0100),
            key_type_sm2: Some(0x8000_0004),
            ..VendorNumbers::default()
        })
        .unwrap();
        assert_eq!(n.mech_to_wire(0x8000_0100), Some(vendor::CKM_SM2));
        assert_eq!(n.mech_to_wire(vendor::CKM_SM2), None);
        assert_eq!(n.mech_to_app(vendor::CKM_SM2), 0x8000_0100);
        assert_eq!(n.mech_to_wire(ck::CKM_ECDSA), Some(ck::CKM_ECDSA));
        assert_eq!(n.key_type_to_wire(0x8000_0004), Some(vendor::CKK_SM2));
        assert_eq!(n.key_type_to_app(vendor::CKK_SM2), 0x8000_0004);
        assert!(n.list().contains(&0x8000_0100));
        assert!(!n.list().contains(&vendor::CKM_SM2));
        assert_eq!(n.spec(vendor::CKM_SM2).unwrap_err(), Ckr::MECHANISM_INVALID);
        // Two names for one number, a standard number, or a kept number: refused.
        assert!(Numbering::new(&VendorNumbers {
            sm3: Some(vendor::CKM_SM2),
            ..VendorNumbers::default()
        })
        .is_err());
        assert!(Numbering::new(&VendorNumbers {
            sm2: Some(1),
            sm3: Some(1),
            ..VendorNumbers::default()
        })
        .is_err());
        assert!(Numbering::new(&VendorNumbers {
            sm3: Some(ck::CKM_SHA256),
            ..VendorNumbers::default()
        })
        .is_err());
        // Swapping two vendor numbers is allowed.
        let n = Numbering::new(&VendorNumbers {
            sm4_cbc: Some(vendor::CKM_SM4_CBC_PAD),
            sm4_cbc_pad: Some(vendor::CKM_SM4_CBC),
            ..VendorNumbers::default()
        })
        .unwrap();
        assert_eq!(
            n.mech_to_wire(vendor::CKM_SM4_CBC),
            Some(vendor::CKM_SM4_CBC_PAD)
        );
    }
}
