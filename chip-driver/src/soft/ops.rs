//! Using loaded keys and caller-supplied public keys: sign, verify, encrypt, decrypt, wrap,
//! unwrap and ECDH derivation, each dispatching to the key's algorithm family.

use std::sync::Arc;

use aws_lc_rs::agreement;
use aws_lc_rs::constant_time;
use aws_lc_rs::signature::{self, ParsedPublicKey};
// `aws_rsa` is aws-lc-rs's RSA module; `::rsa` is the RustCrypto crate.
use sm3::{Digest as _, Sm3};
use zeroize::Zeroizing;

use super::blob::{
    check_spec, mismatch, usage_derived, usage_imported, KeyMaterial, LoadedKey, Origin,
};
use super::ec::ecdsa_digest;
use super::rsa::{rsa_encrypt_oaep, rsa_verify};
use super::sm2::{sm2_e, sm2_encrypt, sm2_point_bytes, sm2_public, sm2_verify_prehash};
use super::sym::{
    aes_cbc_decrypt, aes_cbc_encrypt, aes_cmac_sign, aes_cmac_verify, aes_gcm_decrypt,
    aes_gcm_encrypt, aes_unwrap, aes_wrap, hmac_sign, sm4_cbc_decrypt, sm4_cbc_encrypt,
};
use super::{internal, SoftChip};
use crate::{
    ChipError, CipherMech, KeyId, KeyRef, KeyTemplate, KeyType, KeyUsage, NewKey, PublicKey,
    Result, SignMech, WrapMech,
};

/// Verification with a public key (given by the caller or taken from a loaded key pair).
pub(super) fn verify_public(
    public: &PublicKey,
    mech: &SignMech,
    data: &[u8],
    sig: &[u8],
) -> Result<()> {
    let refuse = || Err(mismatch(mech, public_type(public)));
    match mech {
        SignMech::Ecdsa => match public {
            PublicKey::EcP256(point) => {
                let digest = ecdsa_digest(data)?;
                let key = ParsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .map_err(|_| ChipError::DataInvalid("not a P-256 public key".into()))?;
                key.verify_digest_sig(&digest, sig)
                    .map_err(|_| ChipError::SignatureInvalid)
            }
            _ => refuse(),
        },
        SignMech::RsaPkcs1 | SignMech::RsaPss { .. } => match public {
            PublicKey::Rsa { n, e } => rsa_verify(n, e, mech, data, sig),
            _ => refuse(),
        },
        SignMech::Sm2 { user_id } => match public {
            PublicKey::Sm2(point) => {
                let public = sm2_public(point)?;
                let e = sm2_e(user_id, &sm2_point_bytes(public.as_affine()), data)?;
                sm2_verify_prehash(point, &e, sig)
            }
            _ => refuse(),
        },
        SignMech::Sm2Digest => match public {
            PublicKey::Sm2(point) => sm2_verify_prehash(point, data, sig),
            _ => refuse(),
        },
        // Secret-key MACs: a public key cannot verify them.
        SignMech::Hmac(_) | SignMech::AesCmac => refuse(),
    }
}

pub(super) fn encrypt_public(
    public: &PublicKey,
    mech: &CipherMech,
    data: &[u8],
) -> Result<Vec<u8>> {
    let refuse = || Err(mismatch(mech, public_type(public)));
    match mech {
        CipherMech::RsaOaep { hash, label } => match public {
            PublicKey::Rsa { n, e } => rsa_encrypt_oaep(n, e, *hash, label, data),
            _ => refuse(),
        },
        CipherMech::Sm2 => match public {
            PublicKey::Sm2(point) => sm2_encrypt(point, data),
            _ => refuse(),
        },
        // Secret-key ciphers: a public key cannot encrypt with them.
        CipherMech::AesGcm { .. } | CipherMech::AesCbc { .. } | CipherMech::Sm4Cbc { .. } => {
            refuse()
        }
    }
}

pub(super) fn public_type(public: &PublicKey) -> KeyType {
    match public {
        PublicKey::EcP256(_) => KeyType::EcP256,
        PublicKey::Sm2(_) => KeyType::Sm2,
        PublicKey::Rsa { .. } => KeyType::Rsa,
    }
}

/// The [`CipherMech`] that does the encryption of a public-key [`WrapMech`].
pub(super) fn wrap_cipher(mech: &WrapMech) -> Option<CipherMech> {
    match mech {
        WrapMech::RsaOaep { hash, label } => Some(CipherMech::RsaOaep {
            hash: *hash,
            label: label.clone(),
        }),
        WrapMech::Sm2 => Some(CipherMech::Sm2),
        WrapMech::AesKeyWrap | WrapMech::AesKeyWrapPad => None,
    }
}

/// The key [`SoftChip::wrap_key`] wraps with: a loaded key (its usage checked) or a public key
/// given by the caller.
enum Wrapping<'a> {
    Loaded(Arc<LoadedKey>),
    Public(&'a PublicKey),
}

impl SoftChip {
    pub(super) fn sign(&self, key: KeyId, mech: &SignMech, data: &[u8]) -> Result<Vec<u8>> {
        self.pause();
        let key = self.loaded(key)?;
        key.permit(KeyUsage::SIGN, "sign")?;
        let refuse = || Err(mismatch(mech, key.spec.key_type));
        match mech {
            SignMech::Ecdsa => match &key.material {
                KeyMaterial::EcP256(k) => k.sign(data),
                _ => refuse(),
            },
            SignMech::RsaPkcs1 => match &key.material {
                KeyMaterial::Rsa(k) => k.sign_pkcs1(data),
                _ => refuse(),
            },
            SignMech::RsaPss { hash } => match &key.material {
                KeyMaterial::Rsa(k) => k.sign_pss(*hash, data),
                _ => refuse(),
            },
            SignMech::Sm2 { user_id } => match &key.material {
                KeyMaterial::Sm2(k) => {
                    let z = k.z(user_id)?;
                    let e: [u8; 32] = Sm3::new()
                        .chain_update(z)
                        .chain_update(data)
                        .finalize()
                        .into();
                    k.sign_prehash(&e)
                }
                _ => refuse(),
            },
            SignMech::Sm2Digest => match &key.material {
                KeyMaterial::Sm2(k) => k.sign_prehash(data),
                _ => refuse(),
            },
            SignMech::Hmac(hash) => {
                let secret = key.secret(KeyType::GenericSecret, mech)?;
                Ok(hmac_sign(*hash, &secret.value, data))
            }
            SignMech::AesCmac => aes_cmac_sign(&key.secret(KeyType::Aes, mech)?.value, data),
        }
    }

    pub(super) fn verify(
        &self,
        key: &KeyRef,
        mech: &SignMech,
        data: &[u8],
        signature: &[u8],
    ) -> Result<()> {
        self.pause();
        match key {
            KeyRef::Public(public) => verify_public(public, mech, data, signature),
            KeyRef::Loaded(id) => {
                let key = self.loaded(*id)?;
                key.permit(KeyUsage::VERIFY, "verify")?;
                match mech {
                    SignMech::Hmac(hash) => {
                        let secret = key.secret(KeyType::GenericSecret, mech)?;
                        let expected = hmac_sign(*hash, &secret.value, data);
                        constant_time::verify_slices_are_equal(&expected, signature)
                            .map_err(|_| ChipError::SignatureInvalid)
                    }
                    SignMech::AesCmac => {
                        let secret = key.secret(KeyType::Aes, mech)?;
                        aes_cmac_verify(&secret.value, data, signature)
                    }
                    // Public-key signatures: verified with the key pair's public half.
                    SignMech::Ecdsa
                    | SignMech::RsaPkcs1
                    | SignMech::RsaPss { .. }
                    | SignMech::Sm2 { .. }
                    | SignMech::Sm2Digest => match key.material.public() {
                        Some(public) => verify_public(&public, mech, data, signature),
                        None => Err(mismatch(mech, key.spec.key_type)),
                    },
                }
            }
        }
    }

    pub(super) fn encrypt(&self, key: &KeyRef, mech: &CipherMech, data: &[u8]) -> Result<Vec<u8>> {
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

    pub(super) fn decrypt(&self, key: KeyId, mech: &CipherMech, data: &[u8]) -> Result<Vec<u8>> {
        self.pause();
        let key = self.loaded(key)?;
        key.permit(KeyUsage::DECRYPT, "decrypt")?;
        let refuse = || Err(mismatch(mech, key.spec.key_type));
        match mech {
            CipherMech::AesGcm { iv, aad, tag_bits } => {
                aes_gcm_decrypt(key.secret(KeyType::Aes, mech)?, iv, aad, *tag_bits, data)
            }
            CipherMech::AesCbc { iv, pad } => {
                aes_cbc_decrypt(&key.secret(KeyType::Aes, mech)?.value, iv, *pad, data)
            }
            CipherMech::Sm4Cbc { iv, pad } => {
                sm4_cbc_decrypt(&key.secret(KeyType::Sm4, mech)?.value, iv, *pad, data)
            }
            CipherMech::RsaOaep { hash, label } => match &key.material {
                KeyMaterial::Rsa(k) => Ok(k.decrypt_oaep(*hash, label, data)?.to_vec()),
                _ => refuse(),
            },
            CipherMech::Sm2 => match &key.material {
                KeyMaterial::Sm2(k) => Ok(k.decrypt(data)?.to_vec()),
                _ => refuse(),
            },
        }
    }

    pub(super) fn wrap_key(
        &self,
        wrapping: &KeyRef,
        mech: &WrapMech,
        target: KeyId,
    ) -> Result<Vec<u8>> {
        self.pause();
        let target_key = self.loaded(target)?;
        let wrapping = match wrapping {
            KeyRef::Loaded(id) => {
                let key = self.loaded(*id)?;
                key.permit(KeyUsage::WRAP, "wrap")?;
                Wrapping::Loaded(key)
            }
            KeyRef::Public(public) => Wrapping::Public(public),
        };
        if !target_key.usage.contains(KeyUsage::EXTRACTABLE) {
            return Err(ChipError::KeyNotExtractable(target));
        }
        let material = target_key.material.export()?;
        let too_long = |e: ChipError| match e {
            ChipError::DataLenRange(m) => ChipError::KeySizeRange(format!("cannot wrap: {m}")),
            other => other,
        };
        match mech {
            WrapMech::AesKeyWrap | WrapMech::AesKeyWrapPad => match &wrapping {
                Wrapping::Loaded(kek) => {
                    let kek = kek.secret(KeyType::Aes, mech)?;
                    aes_wrap(&kek.value, *mech == WrapMech::AesKeyWrapPad, &material)
                }
                Wrapping::Public(_) => Err(ChipError::KeyTypeInconsistent(
                    "AES key wrap needs a loaded AES key".into(),
                )),
            },
            WrapMech::RsaOaep { .. } | WrapMech::Sm2 => {
                let cipher = wrap_cipher(mech).ok_or_else(|| internal("wrap mechanism"))?;
                match &wrapping {
                    Wrapping::Public(public) => encrypt_public(public, &cipher, &material),
                    Wrapping::Loaded(key) => {
                        let public = key
                            .material
                            .public()
                            .ok_or_else(|| mismatch(mech, key.spec.key_type))?;
                        encrypt_public(&public, &cipher, &material)
                    }
                }
                .map_err(too_long)
            }
        }
    }

    pub(super) fn unwrap_key(
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
        let refuse = || mismatch(mech, key.spec.key_type);
        let material = match mech {
            WrapMech::AesKeyWrap | WrapMech::AesKeyWrapPad => {
                let kek = key.secret(KeyType::Aes, mech)?;
                aes_unwrap(&kek.value, *mech == WrapMech::AesKeyWrapPad, wrapped)?
            }
            WrapMech::RsaOaep { hash, label } => match &key.material {
                KeyMaterial::Rsa(k) => {
                    k.decrypt_oaep(*hash, label, wrapped).map_err(|e| match e {
                        ChipError::EncryptedDataInvalid => ChipError::WrappedKeyInvalid,
                        other => other,
                    })?
                }
                _ => return Err(refuse()),
            },
            WrapMech::Sm2 => match &key.material {
                KeyMaterial::Sm2(k) => k
                    .decrypt(wrapped)
                    .map_err(|_| ChipError::WrappedKeyInvalid)?,
                _ => return Err(refuse()),
            },
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

    pub(super) fn derive_ecdh(
        &self,
        key: KeyId,
        peer_point: &[u8],
        target: KeyTemplate,
    ) -> Result<NewKey> {
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
}
