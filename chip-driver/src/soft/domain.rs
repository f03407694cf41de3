//! The domain key: its check value, the sealing and opening of blobs under it, and its transfer
//! from chip to chip (export to another chip's identity key, import of a package made for this
//! chip).

use std::sync::{Arc, PoisonError};

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement;
use aws_lc_rs::constant_time;
use aws_lc_rs::hmac;
use zeroize::{Zeroize, Zeroizing};

use super::{
    fill_random, internal, SoftChip, BLOB_MIN_LEN, DOMAIN_KCV_LABEL, DOMAIN_PACKAGE_LEN,
    DOMAIN_PACKAGE_VERSION, DOMAIN_TRANSFER_INFO, NONCE_LEN, P256_POINT_LEN,
};
use crate::{
    BlobHeader, ChipError, DomainInfo, KeyBlob, KeyId, KeySpec, KeyUsage, Result, BLOB_HEADER_LEN,
    BLOB_VERSION,
};

/// The domain key and what is derived from it once.
pub(super) struct DomainKey {
    pub(super) key: Zeroizing<[u8; 32]>,
    pub(super) kcv: [u8; 8],
    /// AES-256-GCM under the domain key, for blobs. aws-lc-rs zeroizes the key schedule on drop.
    pub(super) aead: LessSafeKey,
}

impl DomainKey {
    pub(super) fn new(key: Zeroizing<[u8; 32]>) -> Result<Self> {
        let kcv = domain_kcv(&key);
        let aead = LessSafeKey::new(
            UnboundKey::new(&aead::AES_256_GCM, key.as_ref())
                .map_err(|_| internal("cannot key AES-256-GCM with the domain key"))?,
        );
        Ok(Self { key, kcv, aead })
    }

    pub(super) fn info(&self) -> DomainInfo {
        DomainInfo { kcv: self.kcv }
    }

    /// Seals key material into a blob (layout in the module docs).
    pub(super) fn seal(
        &self,
        id: KeyId,
        spec: KeySpec,
        usage: KeyUsage,
        material: &[u8],
    ) -> Result<KeyBlob> {
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
    pub(super) fn open(&self, blob: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
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
pub(super) fn domain_kcv(key: &[u8; 32]) -> [u8; 8] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), DOMAIN_KCV_LABEL);
    let mut kcv = [0u8; 8];
    kcv.copy_from_slice(&tag.as_ref()[..8]);
    kcv
}

impl SoftChip {
    pub(super) fn domain_generate(&self) -> Result<DomainInfo> {
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
    pub(super) fn domain_export(&self, recipient_identity: &[u8]) -> Result<Vec<u8>> {
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

    /// The answer to an identity challenge ([`crate::identity`]).
    pub(super) fn identity_proof(&self, challenge: &[u8], nonce: &[u8]) -> Result<Vec<u8>> {
        self.pause();
        crate::identity::proof_tag(
            &self.identity,
            challenge,
            &self.identity_public,
            challenge,
            nonce,
        )
        .map(|t| t.to_vec())
    }

    pub(super) fn domain_import(&self, package: &[u8]) -> Result<DomainInfo> {
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
pub(super) fn transfer_key(
    private: &agreement::PrivateKey,
    peer: &[u8],
    ephemeral_public: &[u8],
    recipient: &[u8],
) -> Result<LessSafeKey> {
    let key = crate::identity::ecdh_hkdf(
        private,
        peer,
        &[ephemeral_public, recipient],
        DOMAIN_TRANSFER_INFO,
    )?;
    let unbound = UnboundKey::new(&aead::AES_256_GCM, &key[..])
        .map_err(|_| internal("cannot key AES-256-GCM"))?;
    Ok(LessSafeKey::new(unbound))
}

pub(super) fn transfer_aad(kcv: &[u8; 8], ephemeral_public: &[u8], recipient: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(1 + 8 + 2 * P256_POINT_LEN);
    aad.push(DOMAIN_PACKAGE_VERSION);
    aad.extend_from_slice(kcv);
    aad.extend_from_slice(ephemeral_public);
    aad.extend_from_slice(recipient);
    aad
}
