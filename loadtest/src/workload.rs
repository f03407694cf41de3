//! What a run does: the algorithm, the operations, the data each operation signs, and the
//! independent verification of the signatures.
//!
//! Every target signs the same bytes for the same `(worker, sequence)` pair, with the mechanism
//! each algorithm maps to on every target:
//!
//! | [`Alg`] | data | PKCS#11 mechanism | chip mechanism | checked by |
//! |---|---|---|---|---|
//! | `p256` | a 32-byte digest | `CKM_ECDSA` | `Ecdsa` | RustCrypto `p256` |
//! | `rsa2048` | a 32-byte message | `CKM_SHA256_RSA_PKCS` | `RsaPkcs1` over the `DigestInfo` | aws-lc-rs |
//! | `sm2` | a 32-byte message | vendor `CKM_SM3_SM2` (default id) | `Sm2` | RustCrypto `sm2` |
//! | `hmac` | a 32-byte message | `CKM_SHA256_HMAC` | `Hmac(Sha256)` | aws-lc-rs, with the known key |
//!
//! HMAC keys are imported with a fixed test value ([`hmac_key_value`]), so that the MACs can be
//! checked outside the target: a benchmark key, never a secret.

use std::fmt;

use anyhow::{anyhow, bail, Context, Result};
use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, RsaPublicKeyComponents};
use clap::ValueEnum;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use serde::Serialize;
use sm2::dsa::signature::Verifier as _;

/// DER of the P-256 curve's object identifier (`CKA_EC_PARAMS`).
pub const P256_OID_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
/// The DER prefix of a SHA-256 `DigestInfo` (RFC 8017 §9.2, note 1).
pub const SHA256_DIGEST_INFO_PREFIX: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];
/// Label of the keys the key-generation workload makes (session objects where the target has
/// sessions).
pub const GENERATED_LABEL: &str = "cloudkey-loadtest-generated";

/// The algorithm of the signing key and of generated keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Alg {
    /// ECDSA on P-256 over a SHA-256 digest (`CKM_ECDSA`).
    P256,
    /// RSA-2048 PKCS#1 v1.5 with SHA-256 (`CKM_SHA256_RSA_PKCS`).
    Rsa2048,
    /// SM2 with SM3 and the default distinguishing id (vendor `CKM_SM3_SM2`).
    Sm2,
    /// HMAC-SHA256 with a 32-byte generic secret (`CKM_SHA256_HMAC`).
    Hmac,
}

impl Alg {
    /// The name used on the command line and in reports.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::P256 => "p256",
            Self::Rsa2048 => "rsa2048",
            Self::Sm2 => "sm2",
            Self::Hmac => "hmac",
        }
    }

    /// Label of the signing key a target creates or finds: `<prefix>-<alg>`.
    #[must_use]
    pub fn key_label(self, prefix: &str) -> String {
        format!("{prefix}-{}", self.name())
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which operations a run issues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Signatures (or MACs) with the target's key.
    Sign,
    /// Key generation: key pairs (a generic secret for `hmac`).
    Keygen,
    /// Signatures, with a share of key generations (`--keygen-percent`).
    Mix,
}

/// One operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Sign the data of this sequence number.
    Sign,
    /// Generate a key.
    Keygen,
}

impl Workload {
    /// Whether the workload signs, so targets must prepare a signing key.
    #[must_use]
    pub fn signs(self) -> bool {
        !matches!(self, Self::Keygen)
    }

    /// Whether the workload generates keys.
    #[must_use]
    pub fn generates(self) -> bool {
        !matches!(self, Self::Sign)
    }
}

/// Picks the operations of one worker: deterministic (xorshift seeded by the worker number), so
/// that every target sees the same sequence.
#[derive(Debug)]
pub struct OpPicker {
    workload: Workload,
    keygen_percent: u64,
    state: u64,
}

impl OpPicker {
    /// A picker for worker `worker`.
    #[must_use]
    pub fn new(workload: Workload, keygen_percent: u8, worker: usize) -> Self {
        Self {
            workload,
            keygen_percent: u64::from(keygen_percent.min(100)),
            state: 0x9e37_79b9_7f4a_7c15
                ^ ((worker as u64 + 1).wrapping_mul(0xbf58_476d_1ce4_e5b9)),
        }
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        match self.workload {
            Workload::Sign => Op::Sign,
            Workload::Keygen => Op::Keygen,
            Workload::Mix => {
                // xorshift64
                self.state ^= self.state << 13;
                self.state ^= self.state >> 7;
                self.state ^= self.state << 17;
                if self.state % 100 < self.keygen_percent {
                    Op::Keygen
                } else {
                    Op::Sign
                }
            }
        }
    }
}

/// The 32 bytes signed by worker `worker` for its `seq`-th operation: `SHA-256("cloudkey-
/// loadtest" || worker || seq)`. A digest for `p256`, a message for the other algorithms; never
/// the same twice, so no target can answer from a cache.
#[must_use]
pub fn data_for(worker: usize, seq: u64) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"cloudkey-loadtest");
    ctx.update(&(worker as u64).to_be_bytes());
    ctx.update(&seq.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The value of the HMAC test key every target imports.
#[must_use]
pub fn hmac_key_value() -> Vec<u8> {
    digest::digest(
        &digest::SHA256,
        b"cloudkey-loadtest HMAC-SHA256 test key v1",
    )
    .as_ref()
    .to_vec()
}

/// The DER `DigestInfo` of SHA-256 over `msg` (what `CKM_SHA256_RSA_PKCS` signs).
#[must_use]
pub fn sha256_digest_info(msg: &[u8]) -> Vec<u8> {
    let mut out = SHA256_DIGEST_INFO_PREFIX.to_vec();
    out.extend_from_slice(digest::digest(&digest::SHA256, msg).as_ref());
    out
}

/// SHA-256 of `msg`.
#[must_use]
pub fn sha256(msg: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, msg).as_ref().to_vec()
}

/// A public key (or the HMAC key) as a target reports it, before parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKeyBytes {
    /// An uncompressed P-256 point, raw or wrapped in a DER OCTET STRING (`CKA_EC_POINT`).
    P256(Vec<u8>),
    /// An uncompressed SM2 point, raw or DER-wrapped.
    Sm2(Vec<u8>),
    /// RSA modulus and public exponent, big-endian.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// The HMAC key value.
    Hmac(Vec<u8>),
}

impl PublicKeyBytes {
    /// The `CKA_EC_POINT` of a key of `alg`: an SM2 point for [`Alg::Sm2`], P-256 otherwise.
    #[must_use]
    pub fn ec_point(alg: Alg, point: Vec<u8>) -> Self {
        if alg == Alg::Sm2 {
            Self::Sm2(point)
        } else {
            Self::P256(point)
        }
    }
}

/// Checks signatures outside the target, with implementations independent of the cluster's
/// chips where one exists (RustCrypto for P-256 and SM2; aws-lc-rs's RSA verification, which the
/// chips do not use to sign).
pub enum Verifier {
    /// ECDSA P-256 over the digest.
    P256(Box<p256::ecdsa::VerifyingKey>),
    /// RSA PKCS#1 v1.5 with SHA-256 over the message.
    Rsa(RsaPublicKeyComponents<Vec<u8>>),
    /// SM2 with SM3 and the default id over the message.
    Sm2(Box<sm2::dsa::VerifyingKey>),
    /// HMAC-SHA256 over the message.
    Hmac(Box<aws_lc_rs::hmac::Key>),
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::P256(_) => "Verifier(p256)",
            Self::Rsa(_) => "Verifier(rsa)",
            Self::Sm2(_) => "Verifier(sm2)",
            Self::Hmac(_) => "Verifier(hmac)",
        })
    }
}

/// Strips a DER OCTET STRING around an uncompressed point, if there is one.
fn unwrap_point(b: &[u8]) -> &[u8] {
    match b {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        [0x04, 0x81, 0x41, rest @ ..] if rest.len() == 65 => rest,
        other => other,
    }
}

impl Verifier {
    /// Parses a target's public key.
    ///
    /// # Errors
    /// If the bytes are not a valid key of that kind.
    pub fn new(key: &PublicKeyBytes) -> Result<Self> {
        Ok(match key {
            PublicKeyBytes::P256(point) => Self::P256(Box::new(
                p256::ecdsa::VerifyingKey::from_sec1_bytes(unwrap_point(point))
                    .map_err(|e| anyhow!("the target's P-256 public key does not parse: {e}"))?,
            )),
            PublicKeyBytes::Sm2(point) => {
                let id = std::str::from_utf8(cloudkey_protocol::vendor::SM2_DEFAULT_ID)
                    .context("the default SM2 id is ASCII")?;
                Self::Sm2(Box::new(
                    sm2::dsa::VerifyingKey::from_sec1_bytes(id, unwrap_point(point))
                        .map_err(|e| anyhow!("the target's SM2 public key does not parse: {e}"))?,
                ))
            }
            PublicKeyBytes::Rsa { n, e } => {
                if n.is_empty() || e.is_empty() {
                    bail!("the target's RSA public key has an empty modulus or exponent");
                }
                Self::Rsa(RsaPublicKeyComponents {
                    n: n.clone(),
                    e: e.clone(),
                })
            }
            PublicKeyBytes::Hmac(value) => Self::Hmac(Box::new(aws_lc_rs::hmac::Key::new(
                aws_lc_rs::hmac::HMAC_SHA256,
                value,
            ))),
        })
    }

    /// Whether `sig` is a valid signature (MAC) of `data` as [`data_for`] made it.
    #[must_use]
    pub fn verify(&self, data: &[u8], sig: &[u8]) -> bool {
        match self {
            Self::P256(k) => p256::ecdsa::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_prehash(data, &s).is_ok()),
            Self::Rsa(k) => k
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, data, sig)
                .is_ok(),
            Self::Sm2(k) => {
                sm2::dsa::Signature::from_slice(sig).is_ok_and(|s| k.verify(data, &s).is_ok())
            }
            Self::Hmac(k) => aws_lc_rs::hmac::verify(k, data, sig).is_ok(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_distinct_per_worker_and_sequence() {
        assert_ne!(data_for(0, 0), data_for(0, 1));
        assert_ne!(data_for(0, 1), data_for(1, 0));
        assert_eq!(data_for(3, 7), data_for(3, 7));
    }

    #[test]
    fn the_mix_honours_its_share() {
        let mut p = OpPicker::new(Workload::Mix, 10, 0);
        let keygens = (0..10_000).filter(|_| p.next_op() == Op::Keygen).count();
        assert!((800..1200).contains(&keygens), "{keygens}");
        let mut p = OpPicker::new(Workload::Sign, 50, 0);
        assert!((0..100).all(|_| p.next_op() == Op::Sign));
    }

    #[test]
    fn points_are_unwrapped() {
        let mut raw = vec![0x04];
        raw.extend_from_slice(&[7; 64]);
        let mut der = vec![0x04, 0x41];
        der.extend_from_slice(&raw);
        assert_eq!(unwrap_point(&der), &raw[..]);
        assert_eq!(unwrap_point(&raw), &raw[..]);
    }

    #[test]
    fn hmac_verification_uses_the_known_key() {
        let v = Verifier::new(&PublicKeyBytes::Hmac(hmac_key_value())).unwrap();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &hmac_key_value());
        let tag = aws_lc_rs::hmac::sign(&key, b"data");
        assert!(v.verify(b"data", tag.as_ref()));
        assert!(!v.verify(b"datb", tag.as_ref()));
    }

    #[test]
    fn p256_signatures_from_aws_lc_verify() {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let v = Verifier::new(&PublicKeyBytes::P256(kp.public_key().as_ref().to_vec())).unwrap();
        let data = data_for(1, 2);
        let d = digest::Digest::import_less_safe(&data, &digest::SHA256).unwrap();
        let sig = kp.sign_digest(&d).unwrap();
        assert!(v.verify(&data, sig.as_ref()));
        assert!(!v.verify(&data_for(1, 3), sig.as_ref()));
    }
}
