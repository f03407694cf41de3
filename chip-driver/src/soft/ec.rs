//! NIST P-256 keys (aws-lc-rs): ECDSA over a caller-supplied digest, and ECDH.

use aws_lc_rs::agreement;
use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, EcdsaKeyPair};

use super::internal;
use crate::{ChipError, KeyUsage, Result};

/// A P-256 key pair. The `EcdsaKeyPair` is built once, at load time.
pub(super) struct EcP256Key {
    pub(super) signing: EcdsaKeyPair,
    /// The same private key for ECDH, kept only when the key may `DERIVE`.
    pub(super) ecdh: Option<agreement::PrivateKey>,
    /// Uncompressed SEC1 point.
    pub(super) public: Vec<u8>,
}

impl EcP256Key {
    pub(super) fn parse(scalar: &[u8], usage: KeyUsage) -> std::result::Result<Self, String> {
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

    pub(super) fn sign(&self, data: &[u8]) -> Result<Vec<u8>> {
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
pub(super) fn ecdsa_digest(data: &[u8]) -> Result<digest::Digest> {
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
