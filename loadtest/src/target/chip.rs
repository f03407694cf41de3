//! Software chips in this process behind a [`ChipPool`]: the ceiling of the raw crypto, with
//! the pool's queueing and thread hand-offs but without network, TLS, Raft or PKCS#11.
//!
//! Setup powers on `--chips` software chips, generates the domain key in the first and passes
//! it chip to chip (as a node does), then generates the signing key (imports the HMAC test key)
//! in the first chip. Its blob loads on any chip of the pool. Generated keys exist only as
//! blobs in memory and are dropped.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use cloudkey_chip::pool::{ChipPool, PoolConfig, PoolExt as _, PoolKey};
use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
use cloudkey_chip::{
    Chip, ChipError, ChipExt as _, HashAlg, KeyId, KeySpec, KeyTemplate, KeyUsage, PublicKey,
    SignMech, SM2_DEFAULT_ID,
};
use tokio::runtime::Handle;

use super::client::code_name;
use super::{About, Session, Target};
use crate::stats::OpError;
use crate::workload::{
    hmac_key_value, sha256_digest_info, Alg, PublicKeyBytes, Verifier, Workload,
};

/// How to build the chips.
#[derive(Clone, Debug)]
pub struct ChipOptions {
    /// Number of software chips.
    pub chips: usize,
    /// Key slots per chip.
    pub slots: u32,
    /// Simulated latency of every chip command.
    pub latency: Option<Duration>,
    /// The target's name in reports.
    pub name: String,
}

/// The in-process chip pool; see the [module docs](self).
pub struct ChipTarget {
    about: About,
    rt: Handle,
    pool: Arc<ChipPool>,
    alg: Alg,
    key: Option<PoolKey>,
}

fn chip_error(e: &ChipError) -> OpError {
    OpError::new(
        code_name(cloudkey_node::service::chip_error_code(e)),
        e.to_string(),
    )
}

fn spec(alg: Alg) -> KeySpec {
    match alg {
        Alg::P256 => KeySpec::EC_P256,
        Alg::Rsa2048 => KeySpec::RSA_2048,
        Alg::Sm2 => KeySpec::SM2,
        Alg::Hmac => KeySpec::generic_secret(32),
    }
}

fn template(alg: Alg) -> KeyTemplate {
    KeyTemplate {
        id: KeyId::random(),
        spec: spec(alg),
        usage: KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::SENSITIVE,
    }
}

impl ChipTarget {
    /// Powers on the chips, shares the domain key, starts the pool and prepares the signing key
    /// when the workload signs.
    ///
    /// # Errors
    /// A chip's failure.
    pub fn new(o: &ChipOptions, alg: Alg, workload: Workload, rt: &Handle) -> Result<Self> {
        let count = o.chips.max(1);
        let mut chips: Vec<Arc<SoftChip>> = Vec::with_capacity(count);
        for _ in 0..count {
            chips.push(Arc::new(SoftChip::new(SoftChipConfig {
                slots: o.slots,
                latency: o.latency,
                ..SoftChipConfig::default()
            })?));
        }
        let first = chips[0].clone();
        first.domain_generate()?;
        for c in &chips[1..] {
            let package = first.domain_export(&c.info()?.identity_key)?;
            c.domain_import(&package)?;
        }
        let (key, verifier) = if workload.signs() {
            let new = if alg == Alg::Hmac {
                first.import_key(template(alg), &hmac_key_value())?
            } else {
                first.generate_key_pair(template(alg))?
            };
            let public = match (alg, new.public) {
                (Alg::Hmac, _) => PublicKeyBytes::Hmac(hmac_key_value()),
                (_, Some(PublicKey::EcP256(p))) => PublicKeyBytes::P256(p),
                (_, Some(PublicKey::Sm2(p))) => PublicKeyBytes::Sm2(p),
                (_, Some(PublicKey::Rsa { n, e })) => PublicKeyBytes::Rsa { n, e },
                (_, None) => return Err(anyhow!("the chip returned no public key")),
            };
            (Some(PoolKey::new(new.blob)?), Some(Verifier::new(&public)?))
        } else {
            (None, None)
        };
        let pool = {
            let _guard = rt.enter();
            ChipPool::new(
                chips.into_iter().map(|c| c as Arc<dyn Chip>).collect(),
                PoolConfig::default(),
            )?
        };
        let description = format!(
            "{count} in-process software chip(s), {} slots each, latency {}, behind a ChipPool",
            o.slots,
            o.latency
                .map_or_else(|| "none".to_string(), |l| format!("{l:?}"))
        );
        Ok(Self {
            about: About {
                name: o.name.clone(),
                description,
                verifier,
            },
            rt: rt.clone(),
            pool: Arc::new(pool),
            alg,
            key,
        })
    }
}

impl Target for ChipTarget {
    fn about(&self) -> &About {
        &self.about
    }

    fn open_session(&self, _worker: usize) -> Result<Box<dyn Session>> {
        Ok(Box::new(ChipSession {
            rt: self.rt.clone(),
            pool: self.pool.clone(),
            alg: self.alg,
            key: self.key.clone(),
        }))
    }
}

struct ChipSession {
    rt: Handle,
    pool: Arc<ChipPool>,
    alg: Alg,
    key: Option<PoolKey>,
}

impl Session for ChipSession {
    fn sign(&mut self, data: &[u8]) -> Result<Vec<u8>, OpError> {
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| OpError::new("LOADTEST_NO_KEY", "no signing key was prepared"))?;
        let (mech, input) = match self.alg {
            Alg::P256 => (SignMech::Ecdsa, data.to_vec()),
            // What a node hands the chip for CKM_SHA256_RSA_PKCS.
            Alg::Rsa2048 => (SignMech::RsaPkcs1, sha256_digest_info(data)),
            Alg::Sm2 => (
                SignMech::Sm2 {
                    user_id: SM2_DEFAULT_ID.to_vec(),
                },
                data.to_vec(),
            ),
            Alg::Hmac => (SignMech::Hmac(HashAlg::Sha256), data.to_vec()),
        };
        self.rt
            .block_on(self.pool.sign(key, mech, input))
            .map_err(|e| chip_error(&e))
    }

    fn generate(&mut self) -> Result<(), OpError> {
        let t = template(self.alg);
        let r = if self.alg == Alg::Hmac {
            self.rt.block_on(self.pool.generate_secret_key(t))
        } else {
            self.rt.block_on(self.pool.generate_key_pair(t))
        };
        r.map(|_| ()).map_err(|e| chip_error(&e))
    }

    fn close(self: Box<Self>) -> Result<()> {
        Ok(())
    }
}
