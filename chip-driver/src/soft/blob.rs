//! Keys in blobs and slots: the rules for specs and usage flags, generation and import into
//! blobs, loading blobs into slots and evicting them.

use std::fmt;
use std::sync::Arc;

use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::rsa as aws_rsa;
use aws_lc_rs::signature::{self, EcdsaKeyPair};
// `aws_rsa` is aws-lc-rs's RSA module; `::rsa` is the RustCrypto crate.
use ::sm2::elliptic_curve::PrimeField;
use zeroize::Zeroizing;

use super::ec::EcP256Key;
use super::rsa::RsaKey;
use super::sm2::{random_sm2_scalar, Sm2Key};
use super::sym::SecretKey;
use super::{fill_random, internal, SoftChip, CHIP_MANAGED};
use crate::{
    BlobHeader, ChipError, KeyBlob, KeyId, KeySpec, KeyTemplate, KeyType, KeyUsage, NewKey,
    PublicKey, Result, BLOB_HEADER_LEN,
};

/// A key in a slot.
pub(super) struct LoadedKey {
    pub(super) spec: KeySpec,
    pub(super) usage: KeyUsage,
    /// The blob header it was loaded from, to recognise a reload of the same key.
    pub(super) header: [u8; BLOB_HEADER_LEN],
    pub(super) material: KeyMaterial,
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
    pub(super) fn permit(&self, needed: KeyUsage, what: &'static str) -> Result<()> {
        if self.usage.contains(needed) {
            Ok(())
        } else {
            Err(ChipError::KeyFunctionNotPermitted(what))
        }
    }

    /// The value of a secret key of type `want`, or `KeyTypeInconsistent`.
    pub(super) fn secret(&self, want: KeyType, mech: &dyn fmt::Debug) -> Result<&SecretKey> {
        match &self.material {
            KeyMaterial::Secret(k) if self.spec.key_type == want => Ok(k),
            _ => Err(mismatch(mech, self.spec.key_type)),
        }
    }
}

pub(super) fn mismatch(mech: &dyn fmt::Debug, key_type: KeyType) -> ChipError {
    ChipError::KeyTypeInconsistent(format!("{mech:?} cannot be used with a {key_type:?} key"))
}

/// A key's material in the parsed form its operations need.
pub(super) enum KeyMaterial {
    EcP256(EcP256Key),
    Sm2(Box<Sm2Key>),
    Rsa(RsaKey),
    Secret(SecretKey),
}

impl KeyMaterial {
    /// Parses material in the [`crate::ChipExt::import_key`] encoding. `usage` decides which optional
    /// parsed forms are built (ECDH key, RSA decryption key, AES-GCM key).
    pub(super) fn parse(
        spec: KeySpec,
        usage: KeyUsage,
        material: &[u8],
    ) -> std::result::Result<Self, String> {
        Ok(match spec.key_type {
            KeyType::EcP256 => Self::EcP256(EcP256Key::parse(material, usage)?),
            KeyType::Sm2 => Self::Sm2(Box::new(Sm2Key::parse(material)?)),
            KeyType::Rsa => Self::Rsa(RsaKey::parse(material, spec.bits, usage)?),
            KeyType::Aes | KeyType::Sm4 | KeyType::GenericSecret => {
                Self::Secret(SecretKey::parse(spec, usage, material)?)
            }
        })
    }

    pub(super) fn public(&self) -> Option<PublicKey> {
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
    pub(super) fn export(&self) -> Result<Zeroizing<Vec<u8>>> {
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

/// Where a key comes from, which decides the sizes allowed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Generated,
    /// Imported or unwrapped (also: loaded from a blob).
    Imported,
    /// ECDH-derived: a secret of at most 256 bits.
    Derived,
}

pub(super) fn check_spec(spec: KeySpec, origin: Origin) -> Result<()> {
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
pub(super) fn usage_generated(requested: KeyUsage) -> KeyUsage {
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
pub(super) fn usage_imported(requested: KeyUsage) -> KeyUsage {
    requested.difference(CHIP_MANAGED)
}

/// Usage of an ECDH-derived key (PKCS#11, 4.14 "Key derivation": `CKA_LOCAL` false;
/// `CKA_ALWAYS_SENSITIVE` and `CKA_NEVER_EXTRACTABLE` carried over from the base key when the
/// new key is sensitive / not extractable).
pub(super) fn usage_derived(requested: KeyUsage, base: KeyUsage) -> KeyUsage {
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
pub(super) fn generate_material(spec: KeySpec) -> Result<Zeroizing<Vec<u8>>> {
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
            if !bool::from((*d + ::sm2::Scalar::ONE).is_zero()) {
                break Zeroizing::new(d.to_repr().to_vec());
            }
        },
        KeyType::Rsa => {
            let size = match spec.bits {
                2048 => aws_rsa::KeySize::Rsa2048,
                _ => aws_rsa::KeySize::Rsa3072,
            };
            let pair = aws_rsa::KeyPair::generate(size)
                .map_err(|_| internal("RSA key generation failed"))?;
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

impl SoftChip {
    /// Generates a key pair (when `pair`) or a secret key inside the chip and seals it into a
    /// blob; the key is not loaded.
    pub(super) fn generate(&self, template: KeyTemplate, pair: bool) -> Result<NewKey> {
        self.pause();
        let spec = template.spec;
        if spec.key_type.is_key_pair() != pair {
            let (kind, instead) = if pair {
                ("a secret key type", "generate_secret_key")
            } else {
                ("a key pair type", "generate_key_pair")
            };
            return Err(ChipError::KeyTypeInconsistent(format!(
                "{:?} is {kind}: use {instead}",
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

    pub(super) fn import_key(&self, template: KeyTemplate, material: &[u8]) -> Result<NewKey> {
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
    pub(super) fn load_key(&self, blob: &KeyBlob) -> Result<KeyId> {
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

    pub(super) fn evict_key(&self, id: KeyId) {
        self.pause();
        // The key is zeroized when the last `Arc` goes: here, or when an operation that
        // cloned it before the eviction finishes.
        let removed = self.write_keys().remove(&id);
        drop(removed);
    }

    pub(super) fn public_key(&self, id: KeyId) -> Result<PublicKey> {
        self.pause();
        let key = self.loaded(id)?;
        key.material.public().ok_or_else(|| {
            ChipError::KeyTypeInconsistent(format!(
                "{:?} is a secret key and has no public key",
                key.spec.key_type
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
