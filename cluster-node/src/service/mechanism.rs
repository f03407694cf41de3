//! The mechanisms the cluster supports, and how each `CKM_*` (with its parameters) becomes a
//! chip mechanism. Mechanism numbers and parameter shapes follow PKCS#11 3.0 "Current
//! Mechanisms" (cited as *Mech* below); SM2/SM3/SM4 use the vendor numbers of [`vendor`].
//!
//! | operation | mechanisms | key |
//! |---|---|---|
//! | sign / verify | `CKM_ECDSA`, `CKM_ECDSA_SHA256/384/512` | EC P-256 |
//! | | `CKM_RSA_PKCS` (any data of at most k − 11 bytes, usually a DER `DigestInfo`), `CKM_SHA256/384/512_RSA_PKCS` (`CKM_SHA1_RSA_PKCS`: verify only) | RSA |
//! | | `CKM_RSA_PKCS_PSS`, `CKM_SHA256/384/512_RSA_PKCS_PSS` (salt = hash length, MGF1 of the same hash) | RSA |
//! | | `CKM_SHA256/384/512_HMAC` (full-length MAC) | generic secret |
//! | | `CKM_AES_CMAC` (*Mech* §2.10, RFC 4493; the full 16-byte MAC; the key needs `CKA_SIGN` / `CKA_VERIFY` asked for, as AES keys do not sign by default) | AES-128/192/256 |
//! | | vendor `CKM_SM2` (over `e`), `CKM_SM3_SM2` (over the message, or `e` as [`SignInput::Digest`]) | SM2 |
//! | encrypt / decrypt | `CKM_AES_GCM` (12-byte IV, 128-bit tag), `CKM_AES_CBC`, `CKM_AES_CBC_PAD` | AES |
//! | | `CKM_RSA_PKCS_OAEP` (SHA-1/256/384/512, MGF1 of the same hash, optional label) | RSA |
//! | | vendor `CKM_SM2_ENCRYPT`, `CKM_SM4_CBC`, `CKM_SM4_CBC_PAD` | SM2, SM4 |
//! | wrap / unwrap | `CKM_AES_KEY_WRAP` (RFC 3394), `CKM_AES_KEY_WRAP_PAD` and `CKM_AES_KEY_WRAP_KWP` (RFC 5649) | AES-128/256 |
//! | | `CKM_RSA_PKCS_OAEP`, vendor `CKM_SM2_ENCRYPT` | RSA, SM2 |
//! | derive | `CKM_ECDH1_DERIVE`, `CKM_ECDH1_COFACTOR_DERIVE` (`CKD_NULL` only; P-256 has cofactor 1) | EC P-256, SM2 |
//! | generate | `CKM_EC_KEY_PAIR_GEN` (P-256 or the SM2 curve), `CKM_RSA_PKCS_KEY_PAIR_GEN` (2048/3072, e = 65537), vendor `CKM_SM2_KEY_PAIR_GEN` | |
//! | | `CKM_AES_KEY_GEN`, `CKM_GENERIC_SECRET_KEY_GEN`, vendor `CKM_SM4_KEY_GEN` | |
//!
//! Deliberately refused with `CKR_MECHANISM_INVALID`: `CKM_RSA_PKCS` for encryption, decryption
//! and key wrapping (PKCS#1 v1.5 encryption is open to padding-oracle attacks and the chips do not
//! implement it; use OAEP), hash-and-sign RSA or ECDSA signatures with SHA-1 (verification of
//! `CKM_SHA1_RSA_PKCS` stays for old certificates; raw `CKM_RSA_PKCS` signs whatever the caller
//! gives, a SHA-1 `DigestInfo` too), SHA-224, and every mechanism not listed.

use cloudkey_chip::{CipherMech, HashAlg, KeySpec, KeyType, SignMech, WrapMech};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{MechParam, SignInput};
use cloudkey_protocol::ErrorCode;

use crate::{NodeError, Result};

/// The vendor-defined SM2/SM3/SM4 numbers (defined in `cloudkey_protocol::vendor`, shared with
/// the PKCS#11 module).
pub use cloudkey_protocol::vendor;

/// The kind of key a mechanism works with, as the cluster knows keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// EC on NIST P-256 (`CKK_EC` with the P-256 curve).
    P256,
    /// SM2 (`CKK_SM2`, or `CKK_EC` with the SM2 curve).
    Sm2,
    /// RSA (`CKK_RSA`).
    Rsa,
    /// AES (`CKK_AES`).
    Aes,
    /// SM4 (vendor `CKK_SM4`).
    Sm4,
    /// Generic secret (`CKK_GENERIC_SECRET`), the HMAC and derived-secret key type.
    Generic,
}

impl KeyAlg {
    /// True for key pairs.
    #[must_use]
    pub fn is_pair(self) -> bool {
        matches!(self, Self::P256 | Self::Sm2 | Self::Rsa)
    }

    /// True for elliptic-curve key pairs (`CKA_EC_PARAMS`, `CKA_EC_POINT`).
    #[must_use]
    pub fn is_ec(self) -> bool {
        matches!(self, Self::P256 | Self::Sm2)
    }

    /// The chip's key type.
    #[must_use]
    pub fn chip_type(self) -> KeyType {
        match self {
            Self::P256 => KeyType::EcP256,
            Self::Sm2 => KeyType::Sm2,
            Self::Rsa => KeyType::Rsa,
            Self::Aes => KeyType::Aes,
            Self::Sm4 => KeyType::Sm4,
            Self::Generic => KeyType::GenericSecret,
        }
    }

    /// The chip's key spec for a key of `bits` bits (fixed for the curves and SM4).
    #[must_use]
    pub fn spec(self, bits: u32) -> KeySpec {
        match self {
            Self::P256 => KeySpec::EC_P256,
            Self::Sm2 => KeySpec::SM2,
            Self::Sm4 => KeySpec::SM4,
            Self::Rsa | Self::Aes | Self::Generic => KeySpec {
                key_type: self.chip_type(),
                bits,
            },
        }
    }

    /// The `CKK_*` a key of this kind gets when the caller does not name one.
    #[must_use]
    pub fn default_ckk(self) -> u64 {
        match self {
            Self::P256 => ck::CKK_EC,
            Self::Sm2 => vendor::CKK_SM2,
            Self::Rsa => ck::CKK_RSA,
            Self::Aes => ck::CKK_AES,
            Self::Sm4 => vendor::CKK_SM4,
            Self::Generic => ck::CKK_GENERIC_SECRET,
        }
    }

    /// A short name for error details.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "EC P-256",
            Self::Sm2 => "SM2",
            Self::Rsa => "RSA",
            Self::Aes => "AES",
            Self::Sm4 => "SM4",
            Self::Generic => "generic secret",
        }
    }
}

/// DER of the P-256 (secp256r1, prime256v1) curve OID 1.2.840.10045.3.1.7.
pub const P256_OID_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The curve named by a `CKA_EC_PARAMS` value: the DER of the curve's OID (`namedCurve`), or a
/// DER PrintableString with its name (PKCS#11 3.0 *Mech* §2.3.3 allows both).
#[must_use]
pub fn curve_of(ec_params: &[u8]) -> Option<KeyAlg> {
    if ec_params == P256_OID_DER {
        return Some(KeyAlg::P256);
    }
    if ec_params == vendor::SM2_CURVE_OID_DER {
        return Some(KeyAlg::Sm2);
    }
    // PrintableString (tag 0x13) with a short-form length.
    match ec_params {
        [0x13, len, name @ ..] if usize::from(*len) == name.len() => match name {
            b"prime256v1" | b"secp256r1" | b"P-256" => Some(KeyAlg::P256),
            b"sm2p256v1" | b"SM2" => Some(KeyAlg::Sm2),
            _ => None,
        },
        _ => None,
    }
}

/// The hash of a `CKM_SHA*` digest mechanism number (in PSS and OAEP parameters).
#[must_use]
pub fn hash_of_ckm(ckm: u64) -> Option<HashAlg> {
    Some(match ckm {
        ck::CKM_SHA_1 => HashAlg::Sha1,
        ck::CKM_SHA256 => HashAlg::Sha256,
        ck::CKM_SHA384 => HashAlg::Sha384,
        ck::CKM_SHA512 => HashAlg::Sha512,
        _ => return None,
    })
}

/// The hash of a `CKG_MGF1_*` mask generation function.
#[must_use]
pub fn hash_of_mgf(mgf: u64) -> Option<HashAlg> {
    Some(match mgf {
        ck::CKG_MGF1_SHA1 => HashAlg::Sha1,
        ck::CKG_MGF1_SHA256 => HashAlg::Sha256,
        ck::CKG_MGF1_SHA384 => HashAlg::Sha384,
        ck::CKG_MGF1_SHA512 => HashAlg::Sha512,
        _ => return None,
    })
}

/// Hashes `data` (SHA-1 only for verifying legacy signatures).
///
/// # Errors
/// `CKR_MECHANISM_INVALID` for SM3, which the node does not compute (SM3-with-SM2 hashes in
/// the chip).
pub fn digest(hash: HashAlg, data: &[u8]) -> Result<Vec<u8>> {
    use aws_lc_rs::digest as d;
    let alg = match hash {
        HashAlg::Sha1 => &d::SHA1_FOR_LEGACY_USE_ONLY,
        HashAlg::Sha256 => &d::SHA256,
        HashAlg::Sha384 => &d::SHA384,
        HashAlg::Sha512 => &d::SHA512,
        HashAlg::Sm3 => return Err(refuse(ErrorCode::MechanismInvalid, "SM3 on the node")),
    };
    Ok(d::digest(alg, data).as_ref().to_vec())
}

/// The DER `DigestInfo` of a digest (RFC 8017 §9.2, note 1), the input of PKCS#1 v1.5
/// signatures.
///
/// # Errors
/// `CKR_MECHANISM_INVALID` for SM3.
pub fn digest_info(hash: HashAlg, digest: &[u8]) -> Result<Vec<u8>> {
    let prefix: &[u8] = match hash {
        HashAlg::Sha1 => &[
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ],
        HashAlg::Sha256 => &[
            0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x01, 0x05, 0x00, 0x04, 0x20,
        ],
        HashAlg::Sha384 => &[
            0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x02, 0x05, 0x00, 0x04, 0x30,
        ],
        HashAlg::Sha512 => &[
            0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02,
            0x03, 0x05, 0x00, 0x04, 0x40,
        ],
        HashAlg::Sm3 => {
            return Err(refuse(
                ErrorCode::MechanismInvalid,
                "no PKCS#1 DigestInfo for SM3",
            ))
        }
    };
    let mut out = Vec::with_capacity(prefix.len() + digest.len());
    out.extend_from_slice(prefix);
    out.extend_from_slice(digest);
    Ok(out)
}

fn refuse(code: ErrorCode, detail: impl Into<String>) -> NodeError {
    NodeError::refuse(code, detail)
}

fn unsupported(ckm: u64, what: &str) -> NodeError {
    refuse(
        ErrorCode::MechanismInvalid,
        format!("mechanism 0x{ckm:x} is not supported for {what}"),
    )
}

fn no_param(ckm: u64, param: &MechParam) -> Result<()> {
    match param {
        MechParam::None => Ok(()),
        other => Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!(
                "mechanism 0x{ckm:x} takes no parameter, got {}",
                shape(other)
            ),
        )),
    }
}

fn shape(param: &MechParam) -> &'static str {
    match param {
        MechParam::None => "none",
        MechParam::Iv(_) => "an IV",
        MechParam::Gcm { .. } => "GCM parameters",
        MechParam::Pss { .. } => "PSS parameters",
        MechParam::Oaep { .. } => "OAEP parameters",
        MechParam::Ecdh1 { .. } => "ECDH parameters",
        MechParam::Sm2Id(_) => "an SM2 id",
    }
}

fn check_len(what: &str, hash: HashAlg, d: &[u8]) -> Result<()> {
    if d.len() == hash.output_len() {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::DataLenRange,
            format!(
                "{what}: a {hash:?} digest is {} bytes, not {}",
                hash.output_len(),
                d.len()
            ),
        ))
    }
}

fn digest_input_refused(ckm: u64) -> NodeError {
    refuse(
        ErrorCode::ArgumentsBad,
        format!(
            "mechanism 0x{ckm:x} is not hash-and-sign: send its input as data, not as a digest"
        ),
    )
}

/// A signature or MAC mechanism, resolved from its `CKM_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SignOp {
    /// ECDSA (*Mech* §2.3.6): `prehash` for `CKM_ECDSA_SHA*`, none for `CKM_ECDSA` (data is the
    /// digest).
    Ecdsa {
        /// The hash the node applies to the data.
        prehash: Option<HashAlg>,
    },
    /// RSA PKCS#1 v1.5 (*Mech* §2.1.6, §2.1.11): `CKM_RSA_PKCS` signs its data as it is (at most
    /// k − 11 bytes, the chip checks; usually a `DigestInfo`, which the node does not inspect);
    /// `CKM_SHA*_RSA_PKCS` hash and encode the `DigestInfo` on the node.
    RsaPkcs1 {
        /// The hash of the `CKM_SHA*_RSA_PKCS` mechanism.
        prehash: Option<HashAlg>,
    },
    /// RSA-PSS (*Mech* §2.1.10, §2.1.12): `CKM_RSA_PKCS_PSS` signs a digest;
    /// `CKM_SHA*_RSA_PKCS_PSS` hash on the node.
    RsaPss {
        /// The hash of the `CKM_SHA*_RSA_PKCS_PSS` mechanism.
        prehash: Option<HashAlg>,
    },
    /// Vendor `CKM_SM2`: SM2 over a caller-computed `e`.
    Sm2,
    /// Vendor `CKM_SM3_SM2`: SM3-with-SM2 over the message (the chip computes `Z` and `e`).
    Sm3Sm2,
    /// `CKM_SHA*_HMAC` (*Mech* §2.20-2.22): a full-length MAC with a generic secret.
    Hmac(HashAlg),
    /// `CKM_AES_CMAC` (*Mech* §2.10.3, RFC 4493): the full 16-byte MAC with an AES key.
    AesCmac,
}

impl SignOp {
    /// Resolves a mechanism number.
    ///
    /// # Errors
    /// `CKR_MECHANISM_INVALID` for a mechanism the cluster does not sign with.
    pub fn of(ckm: u64) -> Result<Self> {
        Ok(match ckm {
            ck::CKM_ECDSA => Self::Ecdsa { prehash: None },
            ck::CKM_ECDSA_SHA256 => Self::Ecdsa {
                prehash: Some(HashAlg::Sha256),
            },
            ck::CKM_ECDSA_SHA384 => Self::Ecdsa {
                prehash: Some(HashAlg::Sha384),
            },
            ck::CKM_ECDSA_SHA512 => Self::Ecdsa {
                prehash: Some(HashAlg::Sha512),
            },
            ck::CKM_RSA_PKCS => Self::RsaPkcs1 { prehash: None },
            ck::CKM_SHA1_RSA_PKCS => Self::RsaPkcs1 {
                prehash: Some(HashAlg::Sha1),
            },
            ck::CKM_SHA256_RSA_PKCS => Self::RsaPkcs1 {
                prehash: Some(HashAlg::Sha256),
            },
            ck::CKM_SHA384_RSA_PKCS => Self::RsaPkcs1 {
                prehash: Some(HashAlg::Sha384),
            },
            ck::CKM_SHA512_RSA_PKCS => Self::RsaPkcs1 {
                prehash: Some(HashAlg::Sha512),
            },
            ck::CKM_RSA_PKCS_PSS => Self::RsaPss { prehash: None },
            ck::CKM_SHA256_RSA_PKCS_PSS => Self::RsaPss {
                prehash: Some(HashAlg::Sha256),
            },
            ck::CKM_SHA384_RSA_PKCS_PSS => Self::RsaPss {
                prehash: Some(HashAlg::Sha384),
            },
            ck::CKM_SHA512_RSA_PKCS_PSS => Self::RsaPss {
                prehash: Some(HashAlg::Sha512),
            },
            ck::CKM_SHA256_HMAC => Self::Hmac(HashAlg::Sha256),
            ck::CKM_SHA384_HMAC => Self::Hmac(HashAlg::Sha384),
            ck::CKM_SHA512_HMAC => Self::Hmac(HashAlg::Sha512),
            ck::CKM_AES_CMAC => Self::AesCmac,
            vendor::CKM_SM2 => Self::Sm2,
            vendor::CKM_SM3_SM2 => Self::Sm3Sm2,
            other => return Err(unsupported(other, "signing or verification")),
        })
    }

    /// The kind of key the mechanism needs.
    #[must_use]
    pub fn key_alg(self) -> KeyAlg {
        match self {
            Self::Ecdsa { .. } => KeyAlg::P256,
            Self::RsaPkcs1 { .. } | Self::RsaPss { .. } => KeyAlg::Rsa,
            Self::Sm2 | Self::Sm3Sm2 => KeyAlg::Sm2,
            Self::Hmac(_) => KeyAlg::Generic,
            Self::AesCmac => KeyAlg::Aes,
        }
    }

    /// The length of a signature or MAC; `modulus_len` is the RSA key's modulus in bytes.
    #[must_use]
    pub fn signature_len(self, modulus_len: usize) -> usize {
        match self {
            Self::Ecdsa { .. } | Self::Sm2 | Self::Sm3Sm2 => 64,
            Self::RsaPkcs1 { .. } | Self::RsaPss { .. } => modulus_len,
            Self::Hmac(h) => h.output_len(),
            Self::AesCmac => 16,
        }
    }

    /// The chip mechanism and the bytes the chip signs, for mechanism `ckm` with `param` over
    /// `input`. `for_sign` is false for verification (which accepts SHA-1 PKCS#1 v1.5).
    ///
    /// # Errors
    /// `CKR_MECHANISM_PARAM_INVALID` for missing or inconsistent parameters (PSS: hash, MGF and
    /// salt length must fit, *Mech* §2.1.10), `CKR_DATA_LEN_RANGE` for a digest of the wrong
    /// length, `CKR_ARGUMENTS_BAD` for a [`SignInput::Digest`] to a mechanism that is not
    /// hash-and-sign, `CKR_MECHANISM_INVALID` for SHA-1 signing.
    pub fn prepare(
        self,
        ckm: u64,
        param: &MechParam,
        input: SignInput,
        for_sign: bool,
    ) -> Result<(SignMech, Vec<u8>)> {
        match self {
            Self::Ecdsa { prehash } => {
                no_param(ckm, param)?;
                let data = hashed(ckm, prehash, input)?;
                Ok((SignMech::Ecdsa, data))
            }
            Self::RsaPkcs1 { prehash } => {
                no_param(ckm, param)?;
                if for_sign && prehash == Some(HashAlg::Sha1) {
                    return Err(refuse(
                        ErrorCode::MechanismInvalid,
                        "SHA-1 RSA signatures are not produced (CKM_SHA1_RSA_PKCS verifies only)",
                    ));
                }
                let data = match prehash {
                    None => hashed(ckm, None, input)?,
                    Some(h) => digest_info(h, &hashed(ckm, Some(h), input)?)?,
                };
                Ok((SignMech::RsaPkcs1, data))
            }
            Self::RsaPss { prehash } => {
                let hash = pss_hash(ckm, param, prehash)?;
                let data = match prehash {
                    Some(h) => hashed(ckm, Some(h), input)?,
                    None => {
                        let d = match input {
                            SignInput::Data(d) => d,
                            SignInput::Digest(_) => return Err(digest_input_refused(ckm)),
                        };
                        check_len("CKM_RSA_PKCS_PSS", hash, &d)?;
                        d
                    }
                };
                Ok((SignMech::RsaPss { hash }, data))
            }
            Self::Sm2 => {
                no_param(ckm, param)?;
                let e = match input {
                    SignInput::Data(e) => e,
                    SignInput::Digest(_) => return Err(digest_input_refused(ckm)),
                };
                check_len("CKM_SM2 (e = SM3(Z || M))", HashAlg::Sm3, &e)?;
                Ok((SignMech::Sm2Digest, e))
            }
            Self::Sm3Sm2 => {
                let user_id = match param {
                    MechParam::None => vendor::SM2_DEFAULT_ID.to_vec(),
                    // ENTL, the id's length in bits, is a 16-bit field (GM/T 0003.2 §5.5).
                    MechParam::Sm2Id(id) if id.len() <= 8191 => id.clone(),
                    MechParam::Sm2Id(_) => {
                        return Err(refuse(
                            ErrorCode::MechanismParamInvalid,
                            "the SM2 distinguishing identifier is at most 8191 bytes",
                        ))
                    }
                    other => {
                        return Err(refuse(
                            ErrorCode::MechanismParamInvalid,
                            format!("SM3-with-SM2 takes an SM2 id, got {}", shape(other)),
                        ))
                    }
                };
                match input {
                    SignInput::Data(m) => Ok((SignMech::Sm2 { user_id }, m)),
                    SignInput::Digest(e) => {
                        check_len("SM3-with-SM2 (e = SM3(Z || M))", HashAlg::Sm3, &e)?;
                        Ok((SignMech::Sm2Digest, e))
                    }
                }
            }
            Self::Hmac(hash) => {
                no_param(ckm, param)?;
                match input {
                    SignInput::Data(d) => Ok((SignMech::Hmac(hash), d)),
                    SignInput::Digest(_) => Err(digest_input_refused(ckm)),
                }
            }
            Self::AesCmac => {
                no_param(ckm, param)?;
                match input {
                    SignInput::Data(d) => Ok((SignMech::AesCmac, d)),
                    SignInput::Digest(_) => Err(digest_input_refused(ckm)),
                }
            }
        }
    }
}

/// The bytes to sign for a mechanism that hashes with `prehash` (or signs the data as it is).
fn hashed(ckm: u64, prehash: Option<HashAlg>, input: SignInput) -> Result<Vec<u8>> {
    match (prehash, input) {
        (None, SignInput::Data(d)) => {
            if d.is_empty() {
                return Err(refuse(ErrorCode::DataLenRange, "nothing to sign"));
            }
            Ok(d)
        }
        (None, SignInput::Digest(_)) => Err(digest_input_refused(ckm)),
        (Some(h), SignInput::Data(d)) => digest(h, &d),
        (Some(h), SignInput::Digest(d)) => {
            check_len("digest", h, &d)?;
            Ok(d)
        }
    }
}

/// Checks `CK_RSA_PKCS_PSS_PARAMS` (*Mech* §2.1.10/§2.1.12): the hash is SHA-256/384/512 (and
/// that of a `CKM_SHA*_RSA_PKCS_PSS` mechanism), MGF1 uses the same hash, and the salt is as long
/// as the hash, the only PSS profile the chips implement.
fn pss_hash(ckm: u64, param: &MechParam, prehash: Option<HashAlg>) -> Result<HashAlg> {
    let MechParam::Pss {
        hash,
        mgf,
        salt_len,
    } = param
    else {
        return Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!(
                "mechanism 0x{ckm:x} needs CK_RSA_PKCS_PSS_PARAMS, got {}",
                shape(param)
            ),
        ));
    };
    let bad = |d: String| Err(refuse(ErrorCode::MechanismParamInvalid, d));
    let hash = match hash_of_ckm(*hash) {
        Some(h @ (HashAlg::Sha256 | HashAlg::Sha384 | HashAlg::Sha512)) => h,
        _ => {
            return bad(format!(
                "PSS hash 0x{hash:x}: SHA-256, SHA-384 or SHA-512 only"
            ))
        }
    };
    if prehash.is_some_and(|p| p != hash) {
        return bad(format!(
            "PSS parameter hash {hash:?} differs from the mechanism's hash"
        ));
    }
    if hash_of_mgf(*mgf) != Some(hash) {
        return bad(format!("PSS MGF 0x{mgf:x} must be MGF1 with {hash:?}"));
    }
    if usize::try_from(*salt_len).ok() != Some(hash.output_len()) {
        return bad(format!(
            "PSS salt length {salt_len} must equal the {hash:?} length ({})",
            hash.output_len()
        ));
    }
    Ok(hash)
}

/// An encryption mechanism, resolved from its `CKM_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherOp {
    /// `CKM_AES_GCM` (*Mech* §2.14.4).
    AesGcm,
    /// `CKM_AES_CBC` / `CKM_AES_CBC_PAD` (*Mech* §2.14).
    AesCbc {
        /// PKCS#7 padding.
        pad: bool,
    },
    /// `CKM_RSA_PKCS_OAEP` (*Mech* §2.1.8).
    RsaOaep,
    /// Vendor `CKM_SM2_ENCRYPT`.
    Sm2,
    /// Vendor `CKM_SM4_CBC` / `CKM_SM4_CBC_PAD`.
    Sm4Cbc {
        /// PKCS#7 padding.
        pad: bool,
    },
}

impl CipherOp {
    /// Resolves a mechanism number.
    ///
    /// # Errors
    /// `CKR_MECHANISM_INVALID`, with a reason for `CKM_RSA_PKCS`.
    pub fn of(ckm: u64) -> Result<Self> {
        Ok(match ckm {
            ck::CKM_AES_GCM => Self::AesGcm,
            ck::CKM_AES_CBC => Self::AesCbc { pad: false },
            ck::CKM_AES_CBC_PAD => Self::AesCbc { pad: true },
            ck::CKM_RSA_PKCS_OAEP => Self::RsaOaep,
            vendor::CKM_SM2_ENCRYPT => Self::Sm2,
            vendor::CKM_SM4_CBC => Self::Sm4Cbc { pad: false },
            vendor::CKM_SM4_CBC_PAD => Self::Sm4Cbc { pad: true },
            ck::CKM_RSA_PKCS => return Err(pkcs1_encryption_refused()),
            other => return Err(unsupported(other, "encryption or decryption")),
        })
    }

    /// The kind of key the mechanism needs.
    #[must_use]
    pub fn key_alg(self) -> KeyAlg {
        match self {
            Self::AesGcm | Self::AesCbc { .. } => KeyAlg::Aes,
            Self::RsaOaep => KeyAlg::Rsa,
            Self::Sm2 => KeyAlg::Sm2,
            Self::Sm4Cbc { .. } => KeyAlg::Sm4,
        }
    }

    /// The chip mechanism for `param`.
    ///
    /// # Errors
    /// `CKR_MECHANISM_PARAM_INVALID`: GCM needs a 12-byte IV and a 128-bit tag (the chips'
    /// AES-GCM), CBC a 16-byte IV, OAEP a SHA-1/256/384/512 hash with MGF1 of the same hash.
    pub fn mech(self, ckm: u64, param: &MechParam) -> Result<CipherMech> {
        let bad = |d: String| Err(refuse(ErrorCode::MechanismParamInvalid, d));
        match self {
            Self::AesGcm => match param {
                MechParam::Gcm { iv, aad, tag_bits } => {
                    if iv.len() != 12 || *tag_bits != 128 {
                        return bad(format!(
                            "AES-GCM here takes a 12-byte IV and a 128-bit tag, not a {}-byte IV \
                             and a {tag_bits}-bit tag",
                            iv.len()
                        ));
                    }
                    Ok(CipherMech::AesGcm {
                        iv: iv.clone(),
                        aad: aad.clone(),
                        tag_bits: 128,
                    })
                }
                other => bad(format!(
                    "CKM_AES_GCM needs CK_GCM_PARAMS, got {}",
                    shape(other)
                )),
            },
            Self::AesCbc { pad } => Ok(CipherMech::AesCbc {
                iv: iv16(ckm, param)?,
                pad,
            }),
            Self::Sm4Cbc { pad } => Ok(CipherMech::Sm4Cbc {
                iv: iv16(ckm, param)?,
                pad,
            }),
            Self::RsaOaep => {
                let (hash, label) = oaep(param)?;
                Ok(CipherMech::RsaOaep { hash, label })
            }
            Self::Sm2 => {
                no_param(ckm, param)?;
                Ok(CipherMech::Sm2)
            }
        }
    }
}

fn pkcs1_encryption_refused() -> NodeError {
    refuse(
        ErrorCode::MechanismInvalid,
        "RSA PKCS#1 v1.5 encryption (CKM_RSA_PKCS) is not offered: it is open to padding-oracle \
         attacks; use CKM_RSA_PKCS_OAEP",
    )
}

fn iv16(ckm: u64, param: &MechParam) -> Result<[u8; 16]> {
    match param {
        MechParam::Iv(iv) => <[u8; 16]>::try_from(iv.as_slice()).map_err(|_| {
            refuse(
                ErrorCode::MechanismParamInvalid,
                format!(
                    "mechanism 0x{ckm:x} needs a 16-byte IV, not {} bytes",
                    iv.len()
                ),
            )
        }),
        other => Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!("mechanism 0x{ckm:x} needs an IV, got {}", shape(other)),
        )),
    }
}

/// Checks `CK_RSA_PKCS_OAEP_PARAMS` (*Mech* §2.1.8): a SHA hash and MGF1 with the same hash.
fn oaep(param: &MechParam) -> Result<(HashAlg, Vec<u8>)> {
    let MechParam::Oaep { hash, mgf, source } = param else {
        return Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!(
                "CKM_RSA_PKCS_OAEP needs CK_RSA_PKCS_OAEP_PARAMS, got {}",
                shape(param)
            ),
        ));
    };
    let Some(h) = hash_of_ckm(*hash) else {
        return Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!("OAEP hash 0x{hash:x}: SHA-1, SHA-256, SHA-384 or SHA-512 only"),
        ));
    };
    if hash_of_mgf(*mgf) != Some(h) {
        return Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!("OAEP MGF 0x{mgf:x} must be MGF1 with {h:?}"),
        ));
    }
    Ok((h, source.clone()))
}

/// A key wrapping mechanism, resolved from its `CKM_*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapOp {
    /// `CKM_AES_KEY_WRAP` (RFC 3394, *Mech* §2.15).
    AesKw,
    /// `CKM_AES_KEY_WRAP_PAD` and `CKM_AES_KEY_WRAP_KWP`: RFC 5649 / NIST SP 800-38F KWP (as
    /// SoftHSM implements `CKM_AES_KEY_WRAP_PAD`).
    AesKwp,
    /// `CKM_RSA_PKCS_OAEP`.
    RsaOaep,
    /// Vendor `CKM_SM2_ENCRYPT`.
    Sm2,
}

impl WrapOp {
    /// Resolves a mechanism number.
    ///
    /// # Errors
    /// `CKR_MECHANISM_INVALID`.
    pub fn of(ckm: u64) -> Result<Self> {
        Ok(match ckm {
            ck::CKM_AES_KEY_WRAP => Self::AesKw,
            ck::CKM_AES_KEY_WRAP_PAD | ck::CKM_AES_KEY_WRAP_KWP => Self::AesKwp,
            ck::CKM_RSA_PKCS_OAEP => Self::RsaOaep,
            vendor::CKM_SM2_ENCRYPT => Self::Sm2,
            ck::CKM_RSA_PKCS => return Err(pkcs1_encryption_refused()),
            other => return Err(unsupported(other, "key wrapping")),
        })
    }

    /// The kind of the wrapping key.
    #[must_use]
    pub fn key_alg(self) -> KeyAlg {
        match self {
            Self::AesKw | Self::AesKwp => KeyAlg::Aes,
            Self::RsaOaep => KeyAlg::Rsa,
            Self::Sm2 => KeyAlg::Sm2,
        }
    }

    /// The chip mechanism for `param`.
    ///
    /// # Errors
    /// `CKR_MECHANISM_PARAM_INVALID` as for [`CipherOp::mech`].
    pub fn mech(self, ckm: u64, param: &MechParam) -> Result<WrapMech> {
        match self {
            Self::AesKw => no_param(ckm, param).map(|()| WrapMech::AesKeyWrap),
            // RFC 5649 has an optional alternative IV; only the default is supported.
            Self::AesKwp => no_param(ckm, param).map(|()| WrapMech::AesKeyWrapPad),
            Self::RsaOaep => {
                let (hash, label) = oaep(param)?;
                Ok(WrapMech::RsaOaep { hash, label })
            }
            Self::Sm2 => no_param(ckm, param).map(|()| WrapMech::Sm2),
        }
    }

    /// The range of lengths the wrapped key material can have, given the wrapped length; `None`
    /// when the wrapped length tells nothing (OAEP).
    #[must_use]
    pub fn material_len(self, wrapped_len: usize) -> Option<(usize, usize)> {
        match self {
            // RFC 3394: exactly 8 bytes of integrity check value.
            Self::AesKw => wrapped_len.checked_sub(8).map(|n| (n, n)),
            // RFC 5649: padded to 8 bytes, plus 8 bytes of AIV.
            Self::AesKwp => wrapped_len
                .checked_sub(8)
                .map(|n| (n.saturating_sub(7).max(1), n)),
            // GM/T 0003.4: C1 (65) || C3 (32) || C2 (as long as the plaintext).
            Self::Sm2 => wrapped_len.checked_sub(97).map(|n| (n, n)),
            Self::RsaOaep => None,
        }
    }
}

/// A key pair generation mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PairGen {
    /// `CKM_EC_KEY_PAIR_GEN` (*Mech* §2.3.5): the curve comes from `CKA_EC_PARAMS`.
    Ec,
    /// `CKM_RSA_PKCS_KEY_PAIR_GEN` (*Mech* §2.1.4).
    Rsa,
    /// Vendor `CKM_SM2_KEY_PAIR_GEN`.
    Sm2,
}

impl PairGen {
    /// The `CKK_*` a key pair of this mechanism gets when the caller does not name one (an EC
    /// pair on the SM2 curve is still `CKK_EC`).
    #[must_use]
    pub fn default_ckk(self) -> u64 {
        match self {
            Self::Ec => ck::CKK_EC,
            Self::Rsa => ck::CKK_RSA,
            Self::Sm2 => vendor::CKK_SM2,
        }
    }

    /// Resolves a mechanism number; key pair generation takes no parameter.
    ///
    /// # Errors
    /// `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`.
    pub fn of(ckm: u64, param: &MechParam) -> Result<Self> {
        let gen = match ckm {
            ck::CKM_EC_KEY_PAIR_GEN => Self::Ec,
            ck::CKM_RSA_PKCS_KEY_PAIR_GEN => Self::Rsa,
            vendor::CKM_SM2_KEY_PAIR_GEN => Self::Sm2,
            other => return Err(unsupported(other, "key pair generation")),
        };
        no_param(ckm, param)?;
        Ok(gen)
    }
}

/// The kind of secret key a `CKM_*_KEY_GEN` mechanism generates (*Mech* §2.14.2 AES, §2.35.2
/// generic secret); key generation takes no parameter.
///
/// # Errors
/// `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`.
pub fn key_gen(ckm: u64, param: &MechParam) -> Result<KeyAlg> {
    let alg = match ckm {
        ck::CKM_AES_KEY_GEN => KeyAlg::Aes,
        ck::CKM_GENERIC_SECRET_KEY_GEN => KeyAlg::Generic,
        vendor::CKM_SM4_KEY_GEN => KeyAlg::Sm4,
        other => return Err(unsupported(other, "secret key generation")),
    };
    no_param(ckm, param)?;
    Ok(alg)
}

/// The peer's public point of an ECDH derivation (`CKM_ECDH1_DERIVE`,
/// `CKM_ECDH1_COFACTOR_DERIVE`, *Mech* §2.3.13): `CKD_NULL` only, without shared data (the
/// spec requires none for `CKD_NULL`), the point uncompressed, raw or as a DER OCTET STRING.
///
/// # Errors
/// `CKR_MECHANISM_INVALID` for another mechanism; `CKR_MECHANISM_PARAM_INVALID` for other
/// parameters.
pub fn ecdh_peer_point(ckm: u64, param: &MechParam) -> Result<[u8; 65]> {
    if !matches!(ckm, ck::CKM_ECDH1_DERIVE | ck::CKM_ECDH1_COFACTOR_DERIVE) {
        return Err(unsupported(ckm, "key derivation"));
    }
    let MechParam::Ecdh1 {
        kdf,
        shared_data,
        public_data,
    } = param
    else {
        return Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!("ECDH needs CK_ECDH1_DERIVE_PARAMS, got {}", shape(param)),
        ));
    };
    if *kdf != ck::CKD_NULL {
        return Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!("ECDH KDF 0x{kdf:x}: only CKD_NULL is supported"),
        ));
    }
    if !shared_data.is_empty() {
        return Err(refuse(
            ErrorCode::MechanismParamInvalid,
            "ECDH with CKD_NULL takes no shared data",
        ));
    }
    super::objects::der::ec_point(public_data).ok_or_else(|| {
        refuse(
            ErrorCode::MechanismParamInvalid,
            "the ECDH public data is not an uncompressed point (65 bytes, raw or DER OCTET STRING)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves() {
        assert_eq!(curve_of(P256_OID_DER), Some(KeyAlg::P256));
        assert_eq!(curve_of(vendor::SM2_CURVE_OID_DER), Some(KeyAlg::Sm2));
        assert_eq!(curve_of(b"\x13\x0aprime256v1"), Some(KeyAlg::P256));
        // secp384r1
        assert_eq!(curve_of(&[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22]), None);
        assert_eq!(curve_of(b"\x13\x05P-256"), Some(KeyAlg::P256));
        assert_eq!(curve_of(b"\x13\x06P-256"), None);
    }

    #[test]
    fn digest_infos_match_rfc8017() {
        let d = digest(HashAlg::Sha256, b"abc").expect("sha256");
        let info = digest_info(HashAlg::Sha256, &d).expect("info");
        assert_eq!(info.len(), 19 + 32);
        assert_eq!(&info[..2], &[0x30, 0x31]);
        assert_eq!(info[1] as usize, info.len() - 2);
        for h in [HashAlg::Sha1, HashAlg::Sha384, HashAlg::Sha512] {
            let info = digest_info(h, &vec![0; h.output_len()]).expect("info");
            assert_eq!(info[1] as usize, info.len() - 2, "{h:?}");
            assert_eq!(
                info[info.len() - h.output_len() - 1] as usize,
                h.output_len()
            );
        }
    }

    fn code(e: NodeError) -> ErrorCode {
        match e {
            NodeError::Refused(w) => w.code,
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn sign_parameters() {
        let pss = |hash, mgf, salt_len| MechParam::Pss {
            hash,
            mgf,
            salt_len,
        };
        let op = SignOp::of(ck::CKM_RSA_PKCS_PSS).expect("pss");
        let ok = pss(ck::CKM_SHA256, ck::CKG_MGF1_SHA256, 32);
        let (mech, data) = op
            .prepare(
                ck::CKM_RSA_PKCS_PSS,
                &ok,
                SignInput::Data(vec![1; 32]),
                true,
            )
            .expect("prepare");
        assert_eq!(
            mech,
            SignMech::RsaPss {
                hash: HashAlg::Sha256
            }
        );
        assert_eq!(data, vec![1; 32]);
        for (param, want) in [
            (
                pss(ck::CKM_SHA256, ck::CKG_MGF1_SHA384, 32),
                ErrorCode::MechanismParamInvalid,
            ),
            (
                pss(ck::CKM_SHA256, ck::CKG_MGF1_SHA256, 20),
                ErrorCode::MechanismParamInvalid,
            ),
            (
                pss(ck::CKM_SHA_1, ck::CKG_MGF1_SHA1, 20),
                ErrorCode::MechanismParamInvalid,
            ),
            (MechParam::None, ErrorCode::MechanismParamInvalid),
        ] {
            let e = op
                .prepare(
                    ck::CKM_RSA_PKCS_PSS,
                    &param,
                    SignInput::Data(vec![1; 32]),
                    true,
                )
                .expect_err("refused");
            assert_eq!(code(e), want);
        }
        let e = op
            .prepare(
                ck::CKM_RSA_PKCS_PSS,
                &ok,
                SignInput::Data(vec![1; 31]),
                true,
            )
            .expect_err("short digest");
        assert_eq!(code(e), ErrorCode::DataLenRange);
        // The mechanism's hash must be the parameter's.
        let op = SignOp::of(ck::CKM_SHA384_RSA_PKCS_PSS).expect("pss384");
        let e = op
            .prepare(
                ck::CKM_SHA384_RSA_PKCS_PSS,
                &ok,
                SignInput::Data(vec![]),
                true,
            )
            .expect_err("hash mismatch");
        assert_eq!(code(e), ErrorCode::MechanismParamInvalid);

        // Hash-and-sign takes data or a digest of the right length.
        let op = SignOp::of(ck::CKM_ECDSA_SHA256).expect("ecdsa");
        let (_, d) = op
            .prepare(0, &MechParam::None, SignInput::Data(b"abc".to_vec()), true)
            .expect("data");
        assert_eq!(d, digest(HashAlg::Sha256, b"abc").expect("digest"));
        let e = op
            .prepare(0, &MechParam::None, SignInput::Digest(vec![0; 20]), true)
            .expect_err("short digest");
        assert_eq!(code(e), ErrorCode::DataLenRange);
        let e = SignOp::of(ck::CKM_ECDSA)
            .expect("ecdsa")
            .prepare(0, &MechParam::None, SignInput::Digest(vec![0; 32]), true)
            .expect_err("not hash-and-sign");
        assert_eq!(code(e), ErrorCode::ArgumentsBad);
        let e = SignOp::of(ck::CKM_ECDSA)
            .expect("ecdsa")
            .prepare(
                0,
                &MechParam::Iv(vec![0; 16]),
                SignInput::Data(vec![1]),
                true,
            )
            .expect_err("param");
        assert_eq!(code(e), ErrorCode::MechanismParamInvalid);

        // SHA-1 RSA: verification only.
        let op = SignOp::of(ck::CKM_SHA1_RSA_PKCS).expect("sha1");
        let e = op
            .prepare(0, &MechParam::None, SignInput::Data(vec![1]), true)
            .expect_err("sha1 sign");
        assert_eq!(code(e), ErrorCode::MechanismInvalid);
        assert!(op
            .prepare(0, &MechParam::None, SignInput::Data(vec![1]), false)
            .is_ok());

        // SM3-with-SM2: message with the default or a given id, or e.
        let op = SignOp::of(vendor::CKM_SM3_SM2).expect("sm2");
        let (mech, _) = op
            .prepare(0, &MechParam::None, SignInput::Data(b"m".to_vec()), true)
            .expect("default id");
        assert_eq!(
            mech,
            SignMech::Sm2 {
                user_id: vendor::SM2_DEFAULT_ID.to_vec()
            }
        );
        let (mech, _) = op
            .prepare(0, &MechParam::None, SignInput::Digest(vec![0; 32]), true)
            .expect("e");
        assert_eq!(mech, SignMech::Sm2Digest);

        assert_eq!(
            code(SignOp::of(ck::CKM_SHA224_RSA_PKCS).expect_err("sha224")),
            ErrorCode::MechanismInvalid
        );

        // AES-CMAC: an AES key, the message as it is (empty too), 16 bytes, no parameter.
        let op = SignOp::of(ck::CKM_AES_CMAC).expect("cmac");
        assert_eq!((op.key_alg(), op.signature_len(0)), (KeyAlg::Aes, 16));
        let (mech, data) = op
            .prepare(
                ck::CKM_AES_CMAC,
                &MechParam::None,
                SignInput::Data(vec![]),
                true,
            )
            .expect("cmac of nothing");
        assert_eq!((mech, data), (SignMech::AesCmac, vec![]));
        for (param, input, want) in [
            (
                MechParam::Iv(vec![0; 16]),
                SignInput::Data(vec![1]),
                ErrorCode::MechanismParamInvalid,
            ),
            (
                MechParam::None,
                SignInput::Digest(vec![0; 32]),
                ErrorCode::ArgumentsBad,
            ),
        ] {
            let e = op
                .prepare(ck::CKM_AES_CMAC, &param, input, true)
                .expect_err("refused");
            assert_eq!(code(e), want);
        }
    }

    #[test]
    fn cipher_and_wrap_parameters() {
        let gcm = |iv: usize, tag_bits| MechParam::Gcm {
            iv: vec![0; iv],
            aad: vec![],
            tag_bits,
        };
        assert!(CipherOp::AesGcm.mech(0, &gcm(12, 128)).is_ok());
        for p in [gcm(16, 128), gcm(12, 96), MechParam::Iv(vec![0; 12])] {
            assert_eq!(
                code(CipherOp::AesGcm.mech(0, &p).expect_err("gcm")),
                ErrorCode::MechanismParamInvalid
            );
        }
        assert!(CipherOp::AesCbc { pad: true }
            .mech(0, &MechParam::Iv(vec![0; 16]))
            .is_ok());
        assert_eq!(
            code(
                CipherOp::AesCbc { pad: true }
                    .mech(0, &MechParam::Iv(vec![0; 8]))
                    .expect_err("iv")
            ),
            ErrorCode::MechanismParamInvalid
        );
        let oaep = |hash, mgf| MechParam::Oaep {
            hash,
            mgf,
            source: vec![],
        };
        assert!(CipherOp::RsaOaep
            .mech(0, &oaep(ck::CKM_SHA256, ck::CKG_MGF1_SHA256))
            .is_ok());
        assert_eq!(
            code(
                CipherOp::RsaOaep
                    .mech(0, &oaep(ck::CKM_SHA256, ck::CKG_MGF1_SHA1))
                    .expect_err("mgf")
            ),
            ErrorCode::MechanismParamInvalid
        );
        assert_eq!(
            code(CipherOp::of(ck::CKM_RSA_PKCS).expect_err("pkcs1")),
            ErrorCode::MechanismInvalid
        );
        assert!(matches!(
            WrapOp::of(ck::CKM_AES_KEY_WRAP_KWP),
            Ok(WrapOp::AesKwp)
        ));
        assert!(matches!(
            WrapOp::of(ck::CKM_AES_KEY_WRAP_PAD),
            Ok(WrapOp::AesKwp)
        ));
        assert_eq!(WrapOp::AesKw.material_len(40), Some((32, 32)));
        assert_eq!(WrapOp::AesKwp.material_len(32), Some((17, 24)));
        assert_eq!(WrapOp::Sm2.material_len(97 + 16), Some((16, 16)));
        assert_eq!(WrapOp::RsaOaep.material_len(256), None);
    }

    #[test]
    fn ecdh_parameters() {
        let point = {
            let mut p = [7u8; 65];
            p[0] = 4;
            p
        };
        let mut der = vec![0x04, 65];
        der.extend_from_slice(&point);
        for public_data in [point.to_vec(), der] {
            let p = MechParam::Ecdh1 {
                kdf: ck::CKD_NULL,
                shared_data: vec![],
                public_data,
            };
            assert_eq!(
                ecdh_peer_point(ck::CKM_ECDH1_DERIVE, &p).expect("point"),
                point
            );
        }
        let p = MechParam::Ecdh1 {
            kdf: ck::CKD_SHA256_KDF,
            shared_data: vec![],
            public_data: point.to_vec(),
        };
        assert_eq!(
            code(ecdh_peer_point(ck::CKM_ECDH1_DERIVE, &p).expect_err("kdf")),
            ErrorCode::MechanismParamInvalid
        );
    }
}
