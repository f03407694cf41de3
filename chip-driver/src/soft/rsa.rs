//! RSA keys: PKCS#1 v1.5 and PSS signatures, OAEP (aws-lc-rs, and RustCrypto `rsa` for the
//! PKCS#1 v1.5 input aws-lc-rs cannot take).

use std::sync::OnceLock;

use aws_lc_rs::digest;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa as aws_rsa;
use aws_lc_rs::signature::{self, KeyPair as _, RsaPublicKeyComponents};
// `aws_rsa` is aws-lc-rs's RSA module; `::rsa` is the RustCrypto crate.
use ::rsa::pkcs8::DecodePrivateKey as _;
use ::rsa::traits::SignatureScheme as _;
use ::rsa::{BoxedUint, Pkcs1v15Sign};
use zeroize::Zeroizing;

use super::blob::mismatch;
use super::{internal, AwsLcRng};
use crate::{ChipError, HashAlg, KeyType, KeyUsage, Result, SignMech};

/// An RSA key pair, parsed once at load time.
pub(super) struct RsaKey {
    pub(super) signing: aws_rsa::KeyPair,
    /// The same key for the RustCrypto `rsa` crate, which signs the PKCS#1 v1.5 inputs that
    /// aws-lc-rs cannot (anything but a SHA-256/384/512 `DigestInfo`). Parsed from the key's
    /// PKCS#8 on first use only; `::rsa::RsaPrivateKey` zeroizes its integers on drop.
    pub(super) raw: OnceLock<::rsa::RsaPrivateKey>,
    /// Built when the key may `DECRYPT` or `UNWRAP`.
    pub(super) oaep: Option<aws_rsa::OaepPrivateDecryptingKey>,
    pub(super) n: Vec<u8>,
    pub(super) e: Vec<u8>,
}

impl RsaKey {
    pub(super) fn parse(
        pkcs8: &[u8],
        bits: u32,
        usage: KeyUsage,
    ) -> std::result::Result<Self, String> {
        let signing = aws_rsa::KeyPair::from_pkcs8(pkcs8)
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
            let key = aws_rsa::PrivateDecryptingKey::from_pkcs8(pkcs8)
                .map_err(|e| format!("RSA decryption key rejected: {e}"))?;
            Some(
                aws_rsa::OaepPrivateDecryptingKey::new(key)
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
    pub(super) fn sign_pkcs1(&self, data: &[u8]) -> Result<Vec<u8>> {
        check_pkcs1_len(self.signing.public_modulus_len(), data)?;
        let known = parse_digest_info(data)
            .and_then(|(hash, digest)| Some((pkcs1_sign_encoding(hash)?, hash, digest)));
        match known {
            Some((encoding, hash, digest)) => self.sign_digest(encoding, hash, digest),
            None => self.sign_pkcs1_raw(data),
        }
    }

    /// The `rsa` crate's unprefixed PKCS#1 v1.5 signature: `data` is the `T` of EMSA-PKCS1-v1_5.
    pub(super) fn sign_pkcs1_raw(&self, data: &[u8]) -> Result<Vec<u8>> {
        Pkcs1v15Sign::new_unprefixed()
            .sign(Some(&mut AwsLcRng), self.raw_key()?, data)
            .map_err(|e| ChipError::Internal(format!("RSA PKCS#1 v1.5 signing failed: {e}")))
    }

    /// The key for the `rsa` crate, parsed on first use from the PKCS#8 the blob holds.
    pub(super) fn raw_key(&self) -> Result<&::rsa::RsaPrivateKey> {
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

    pub(super) fn sign_pss(&self, hash: HashAlg, data: &[u8]) -> Result<Vec<u8>> {
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

    pub(super) fn sign_digest(
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

    pub(super) fn decrypt_oaep(
        &self,
        hash: HashAlg,
        label: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
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
pub(super) fn modulus_bits(n: &[u8]) -> u32 {
    match n.first() {
        None => 0,
        Some(&top) => {
            let bytes = u32::try_from(n.len()).unwrap_or(u32::MAX / 8);
            bytes * 8 - top.leading_zeros()
        }
    }
}

pub(super) fn digest_alg(hash: HashAlg) -> Result<&'static digest::Algorithm> {
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

pub(super) fn import_digest(hash: HashAlg, data: &[u8]) -> Result<digest::Digest> {
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
pub(super) const DIGEST_INFOS: [(HashAlg, &[u8]); 4] = [
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
pub(super) fn parse_digest_info(data: &[u8]) -> Option<(HashAlg, &[u8])> {
    DIGEST_INFOS
        .iter()
        .find(|(hash, prefix)| {
            data.len() == prefix.len() + hash.output_len() && data.starts_with(prefix)
        })
        .map(|(hash, prefix)| (*hash, &data[prefix.len()..]))
}

/// The aws-lc-rs PKCS#1 v1.5 signing encoding for `hash`, if there is one.
pub(super) fn pkcs1_sign_encoding(
    hash: HashAlg,
) -> Option<&'static signature::RsaSignatureEncoding> {
    match hash {
        HashAlg::Sha256 => Some(&signature::RSA_PKCS1_SHA256),
        HashAlg::Sha384 => Some(&signature::RSA_PKCS1_SHA384),
        HashAlg::Sha512 => Some(&signature::RSA_PKCS1_SHA512),
        HashAlg::Sha1 | HashAlg::Sm3 => None,
    }
}

/// EMSA-PKCS1-v1_5 needs at least 11 bytes of padding: `k - 11` bytes of input at most, with a
/// `k`-byte modulus (RFC 8017, 9.2, step 3).
pub(super) fn check_pkcs1_len(k: usize, data: &[u8]) -> Result<()> {
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
pub(super) fn strip_leading_zeros(n: &[u8]) -> &[u8] {
    let zeros = n.iter().take_while(|&&b| b == 0).count();
    &n[zeros..]
}

/// Verifies an unprefixed PKCS#1 v1.5 signature (`data` is the `T` of EMSA-PKCS1-v1_5) with the
/// RustCrypto `rsa` crate, under the same key-size policy as the aws-lc-rs verification
/// (`RSA_PKCS1_2048_8192_*`).
pub(super) fn rsa_verify_pkcs1_raw(n: &[u8], e: &[u8], data: &[u8], sig: &[u8]) -> Result<()> {
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

pub(super) fn oaep_alg(hash: HashAlg) -> Result<&'static aws_rsa::OaepAlgorithm> {
    Ok(match hash {
        HashAlg::Sha1 => &aws_rsa::OAEP_SHA1_MGF1SHA1,
        HashAlg::Sha256 => &aws_rsa::OAEP_SHA256_MGF1SHA256,
        HashAlg::Sha384 => &aws_rsa::OAEP_SHA384_MGF1SHA384,
        HashAlg::Sha512 => &aws_rsa::OAEP_SHA512_MGF1SHA512,
        HashAlg::Sm3 => {
            return Err(ChipError::MechanismInvalid(
                "RSA-OAEP with SM3 is not supported".into(),
            ))
        }
    })
}

pub(super) fn rsa_components<'a>(n: &'a [u8], e: &'a [u8]) -> RsaPublicKeyComponents<&'a [u8]> {
    RsaPublicKeyComponents { n, e }
}

pub(super) fn rsa_encrypt_oaep(
    n: &[u8],
    e: &[u8],
    hash: HashAlg,
    label: &[u8],
    data: &[u8],
) -> Result<Vec<u8>> {
    let alg = oaep_alg(hash)?;
    let public: aws_rsa::PublicEncryptingKey = rsa_components(n, e)
        .try_into()
        .map_err(|_| ChipError::DataInvalid("not a usable RSA public key".into()))?;
    let key = aws_rsa::OaepPublicEncryptingKey::new(public)
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

pub(super) fn rsa_verify(
    n: &[u8],
    e: &[u8],
    mech: &SignMech,
    data: &[u8],
    sig: &[u8],
) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        let pair = aws_rsa::KeyPair::generate(aws_rsa::KeySize::Rsa2048).unwrap();
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
}
