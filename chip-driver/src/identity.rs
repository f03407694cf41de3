//! Proof that a chip holds the private half of its identity key.
//!
//! A chip's identity key (P-256, [`ChipInfo::identity_key`](crate::types::ChipInfo)) is the
//! recipient key of domain transfers: whoever holds its private half can open a domain package
//! made for it. Before an operator enrols a chip identity in the cluster's registry, the
//! verifier checks that a real chip answers for it, with a challenge only that key can answer:
//!
//! ```text
//! verifier:  ephemeral e, E = eG; nonce N (32 random bytes)      → chip: E, N
//! chip:      Z = x(ECDH(d, E))                                     (d: identity private key)
//! both:      K = HKDF-SHA-256(salt = E || R, ikm = Z, info = "cloudkey chip identity proof v1")
//!            tag = HMAC-SHA-256(K, N || R)                         (R = dG, the identity key)
//! verifier:  Z = x(ECDH(e, R)); accepts when the chip's tag equals its own (constant time).
//! ```
//!
//! The key `K` is derived with its own label, so an answer is worthless for opening a domain
//! package (whose transfer key has another label and is derived from the package's own
//! ephemeral key), and a fresh `E` and `N` per challenge make answers worthless to replay.

use aws_lc_rs::{agreement, constant_time, digest, hkdf, hmac, rand};

use crate::error::{ChipError, Result};

/// Length of an uncompressed P-256 point.
pub const POINT_LEN: usize = 65;
/// Length of a challenge nonce.
pub const NONCE_LEN: usize = 32;
/// HKDF info of the proof key.
const PROOF_INFO: &[u8] = b"cloudkey chip identity proof v1";

/// An identity key's fingerprint: SHA-256 of its uncompressed point. What operators compare
/// and what the cluster's chip registry is keyed by.
#[must_use]
pub fn fingerprint(identity: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, identity);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

fn is_point(p: &[u8]) -> bool {
    p.len() == POINT_LEN && p[0] == 0x04
}

/// The proof tag of `private` (the chip's identity key, or the verifier's ephemeral key)
/// against `peer` (the challenge point, or the identity key) for identity `identity`,
/// challenge point `challenge` and `nonce`.
///
/// # Errors
/// [`ChipError::DataInvalid`] for a point or nonce of the wrong shape, or a peer point not on
/// the curve.
pub fn proof_tag(
    private: &agreement::PrivateKey,
    peer: &[u8],
    identity: &[u8],
    challenge: &[u8],
    nonce: &[u8],
) -> Result<[u8; 32]> {
    if !is_point(identity) || !is_point(challenge) {
        return Err(ChipError::DataInvalid(
            "identity and challenge must be uncompressed P-256 points (65 bytes)".into(),
        ));
    }
    if nonce.len() != NONCE_LEN {
        return Err(ChipError::DataInvalid(format!(
            "the identity challenge nonce is {NONCE_LEN} bytes, not {}",
            nonce.len()
        )));
    }
    let key = ecdh_hkdf(private, peer, &[challenge, identity], PROOF_INFO)?;
    let mac = hmac::Key::new(hmac::HMAC_SHA256, &key[..]);
    let mut ctx = hmac::Context::with_key(&mac);
    ctx.update(nonce);
    ctx.update(identity);
    let mut tag = [0u8; 32];
    tag.copy_from_slice(ctx.sign().as_ref());
    Ok(tag)
}

/// `HKDF-SHA-256(salt = salt[0] || salt[1] || …, ikm = x(ECDH(private, peer)), info)`, 32
/// bytes: the key derivation of identity proofs and of domain transfers (each with its own
/// `info`).
///
/// # Errors
/// [`ChipError::DataInvalid`] when `peer` is not a P-256 point.
pub(crate) fn ecdh_hkdf(
    private: &agreement::PrivateKey,
    peer: &[u8],
    salt: &[&[u8]],
    info: &[u8],
) -> Result<zeroize::Zeroizing<[u8; 32]>> {
    let salt = salt.concat();
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    agreement::agree(
        private,
        agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, peer),
        ChipError::DataInvalid("not a P-256 public key".into()),
        |z| {
            hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
                .extract(z)
                .expand(&[info], hkdf::HKDF_SHA256)
                .and_then(|okm| okm.fill(&mut key[..]))
                .map_err(|_| ChipError::Internal("HKDF failed".into()))
        },
    )?;
    Ok(key)
}

/// One identity challenge, kept by the verifier until the chip's answer is checked.
pub struct Challenge {
    ephemeral: agreement::PrivateKey,
    point: Vec<u8>,
    nonce: [u8; NONCE_LEN],
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenge")
            .field("point", &hex::encode(&self.point))
            .finish_non_exhaustive()
    }
}

impl Challenge {
    /// A fresh challenge: a new ephemeral key and nonce.
    ///
    /// # Errors
    /// [`ChipError::Internal`] when the system's random source fails.
    pub fn new() -> Result<Self> {
        let ephemeral = agreement::PrivateKey::generate(&agreement::ECDH_P256)
            .map_err(|_| ChipError::Internal("cannot generate an ephemeral key".into()))?;
        let point = ephemeral
            .compute_public_key()
            .map_err(|_| ChipError::Internal("cannot compute the ephemeral public key".into()))?
            .as_ref()
            .to_vec();
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).map_err(|_| ChipError::Internal("no random bytes".into()))?;
        Ok(Self {
            ephemeral,
            point,
            nonce,
        })
    }

    /// The chip request that answers this challenge.
    #[must_use]
    pub fn request(&self) -> crate::wire::Request {
        crate::wire::Request::IdentityProof {
            challenge: self.point.clone(),
            nonce: self.nonce.to_vec(),
        }
    }

    /// The challenge point (what the chip gets).
    #[must_use]
    pub fn point(&self) -> &[u8] {
        &self.point
    }

    /// The nonce (what the chip gets).
    #[must_use]
    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    /// True when `tag` is the answer of the holder of `identity`'s private key.
    #[must_use]
    pub fn verify(&self, identity: &[u8], tag: &[u8]) -> bool {
        match proof_tag(
            &self.ephemeral,
            identity,
            identity,
            &self.point,
            &self.nonce,
        ) {
            Ok(expected) => constant_time::verify_slices_are_equal(&expected, tag).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (agreement::PrivateKey, Vec<u8>) {
        let k = agreement::PrivateKey::generate(&agreement::ECDH_P256).unwrap();
        let p = k.compute_public_key().unwrap().as_ref().to_vec();
        (k, p)
    }

    #[test]
    fn only_the_identity_key_answers_its_challenge() {
        let (d, r) = key();
        let (other, _) = key();
        let c = Challenge::new().unwrap();
        let tag = proof_tag(&d, c.point(), &r, c.point(), c.nonce()).unwrap();
        assert!(c.verify(&r, &tag));
        // Another key's answer for the same identity is refused.
        let forged = proof_tag(&other, c.point(), &r, c.point(), c.nonce()).unwrap();
        assert!(!c.verify(&r, &forged));
        // An answer to another challenge is refused.
        let c2 = Challenge::new().unwrap();
        assert!(!c2.verify(&r, &tag));
        // Garbage is refused, never a panic.
        assert!(!c.verify(&r, &[0u8; 3]));
        assert!(!c.verify(&[4u8; 10], &tag));
        assert!(proof_tag(&d, &[0u8; 65], &r, c.point(), c.nonce()).is_err());
        assert!(proof_tag(&d, c.point(), &r, c.point(), &[0u8; 5]).is_err());
    }
}
