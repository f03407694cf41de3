//! The node's chips: the [`ChipPool`] built from the configuration, and the cluster's domain
//! key in every one of them.
//!
//! # The domain key
//!
//! Every chip of a cluster holds the same domain key; it reaches a chip only chip to chip
//! (`domain_export` to the recipient chip's identity key, then `domain_import`), so the node
//! process never sees it in clear. [`ChipDomain`] keeps it that way:
//!
//! * At `cloudkey init`, [`ChipDomain::prepare_init`] generates the domain in chip 0 (or keeps
//!   the domain the chips already hold from an earlier, interrupted init) and copies it to the
//!   node's other chips.
//! * A node of an initialised cluster whose chips lack the domain (a new node, a serial chip that
//!   was replaced, soft chips without nvram after a restart) gets it from a local chip that has
//!   it, else from a peer node (`PeerRequest::DomainExport` to the leader, then to the other
//!   members; a node answers it only for a member of the cluster's membership), and checks that the chip's key check value is the cluster's
//!   ([`ChipDomain::sync`]). [`spawn_sync`] runs this in the background at startup, when the
//!   cluster becomes initialised, periodically, and with backoff after failures.
//!
//! # The session MAC key
//!
//! Session grants are MAC'd with `HMAC-SHA-256(session secret, "cloudkey session mac v1")`,
//! computed inside a chip from the replicated session-secret blob; the node keeps the result in
//! memory only ([`ChipDomain::session_mac`]).

use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use cloudkey_chip::nvram::SoftNvram;
use cloudkey_chip::pool::{ChipPool, PoolConfig, PoolKey};
use cloudkey_chip::serial::{SerialChip, SerialConfig};
use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
use cloudkey_chip::wire::{Request as ChipRequest, Response as ChipResponse};
use cloudkey_chip::{
    Chip, ChipError, ChipExt as _, ChipInfo, HashAlg, KeyBlob, KeyId, KeySpec, KeyTemplate,
    KeyUsage, SecretBytes, SignMech,
};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use zeroize::Zeroizing;

use crate::config::{ChipSpec, Config};
use crate::error::{NodeError, Result};
use crate::raft::{PeerRequest, PeerResponse, RaftNode};
use crate::service::login::SessionMacKey;
use crate::state::State;

/// The label whose HMAC under the session secret is the session MAC key.
pub const SESSION_MAC_LABEL: &[u8] = b"cloudkey session mac v1";
/// The prefix of what a PIN's pepper is the HMAC of, under the session secret:
/// `PIN_PEPPER_LABEL || pin` ([`ChipDomain::pin_pepper`]). Not a prefix of
/// [`SESSION_MAC_LABEL`] nor it of this, so neither HMAC can stand for the other.
pub const PIN_PEPPER_LABEL: &[u8] = b"cloudkey pin pepper v1\0";
/// Size of the session secret generated at `cloudkey init`.
pub const SESSION_SECRET_BYTES: u32 = 32;
/// How long one peer may take to export the domain.
const PEER_EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// First retry delay of the background sync after a failure; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(200);
/// Longest retry delay of the background sync.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Re-check interval once every chip holds the domain (a chip may be reset or replaced).
const RECHECK: Duration = Duration::from_secs(30);
/// Offset of the key check value in a domain key package (`chip-driver/PROTOCOL.md`): the
/// version byte comes first.
const PACKAGE_KCV: std::ops::Range<usize> = 1..9;

/// The nvram file of soft chip `n` in `data_dir`.
#[must_use]
pub fn nvram_path(data_dir: &Path, n: usize) -> std::path::PathBuf {
    data_dir.join(format!("chip-soft-{n}.nvram"))
}

/// Powers on the configured chips (self tests, nvram, opening serial lines) and starts the
/// pool. Runs on the blocking pool: chips do blocking I/O.
///
/// # Errors
/// [`NodeError::Chip`] naming the chip that failed.
pub async fn build_pool(config: &Config, nvram_key: Option<&SecretBytes>) -> Result<Arc<ChipPool>> {
    let specs = config.chips.clone();
    let data_dir = config.data_dir.clone();
    let nvram_key = nvram_key.cloned();
    let pool_config = PoolConfig {
        queue_depth: config.limits.queue_depth,
        queue_timeout: config.limits.queue_timeout,
        ..PoolConfig::default()
    };
    tokio::task::spawn_blocking(move || {
        let mut chips: Vec<Arc<dyn Chip>> = Vec::with_capacity(specs.len());
        for (i, spec) in specs.into_iter().enumerate() {
            let chip: Arc<dyn Chip> = match spec {
                ChipSpec::Soft {
                    soft_index,
                    slots,
                    latency,
                    nvram_key: source,
                } => {
                    let nvram = match (&source, &nvram_key) {
                        (Some(_), Some(key)) => Some(SoftNvram {
                            path: nvram_path(&data_dir, soft_index),
                            key: key.clone(),
                        }),
                        _ => None,
                    };
                    let cfg = SoftChipConfig {
                        slots,
                        latency,
                        nvram,
                        ..SoftChipConfig::default()
                    };
                    Arc::new(SoftChip::new(cfg).map_err(|e| chip_failed(i, "soft chip", e))?)
                }
                ChipSpec::Serial {
                    path,
                    baud,
                    timeout,
                    retries,
                } => {
                    let cfg = SerialConfig {
                        baud,
                        timeout,
                        retries,
                        ..SerialConfig::new(path.clone())
                    };
                    let chip = SerialChip::open(cfg).map_err(|e| chip_failed(i, &path, e))?;
                    chip.self_test().map_err(|e| chip_failed(i, &path, e))?;
                    Arc::new(chip)
                }
            };
            chips.push(chip);
        }
        ChipPool::new(chips, pool_config)
            .map(Arc::new)
            .map_err(NodeError::Chip)
    })
    .await
    .map_err(|source| NodeError::Task {
        what: "chip start-up",
        source,
    })?
}

fn chip_failed(index: usize, what: &str, source: ChipError) -> NodeError {
    NodeError::ChipStart {
        index,
        what: what.to_owned(),
        source: Box::new(source),
    }
}

/// The domain state of the node's chips and the session MAC key; see the [module docs](self).
pub struct ChipDomain {
    pool: Arc<ChipPool>,
    /// Key check value of the domain each chip holds, as last seen.
    kcvs: RwLock<Vec<Option<[u8; 8]>>>,
    mac: RwLock<Option<Arc<SessionMacKey>>>,
    kick: Notify,
}

impl fmt::Debug for ChipDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChipDomain")
            .field("kcvs", &self.kcvs())
            .field("session_mac", &self.mac_cached().is_some())
            .finish_non_exhaustive()
    }
}

impl ChipDomain {
    /// Tracks the chips of `pool`; nothing is known about their domain yet.
    #[must_use]
    pub fn new(pool: Arc<ChipPool>) -> Arc<Self> {
        let n = pool.len();
        Arc::new(Self {
            pool,
            kcvs: RwLock::new(vec![None; n]),
            mac: RwLock::new(None),
            kick: Notify::new(),
        })
    }

    fn kcvs(&self) -> Vec<Option<[u8; 8]>> {
        self.kcvs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_kcv(&self, chip: usize, kcv: Option<[u8; 8]>) {
        if let Some(slot) = self
            .kcvs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(chip)
        {
            *slot = kcv;
        }
    }

    fn mac_cached(&self) -> Option<Arc<SessionMacKey>> {
        self.mac
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether chip `i` holds the domain `expected` (any domain when `expected` is `None`), as
    /// last seen.
    #[must_use]
    pub fn has_domain(&self, i: usize, expected: Option<[u8; 8]>) -> bool {
        let held = self
            .kcvs
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(i)
            .copied()
            .flatten();
        match (held, expected) {
            (Some(k), Some(e)) => k == e,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// Wakes the background sync (after the cluster was initialised through this node).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Asks chip `i` for its info and records its domain.
    async fn info(&self, i: usize) -> Result<ChipInfo> {
        let info = self
            .pool
            .call_on(i, ChipRequest::Info, &[])
            .await?
            .into_info()?;
        self.set_kcv(i, info.domain.map(|d| d.kcv));
        Ok(info)
    }

    /// Copies the domain from chip `from` to chip `to` (whose identity key is `identity`).
    async fn transfer_local(&self, from: usize, to: usize, identity: Vec<u8>) -> Result<[u8; 8]> {
        let package = self
            .pool
            .call_on(from, ChipRequest::DomainExport(identity), &[])
            .await?
            .into_bytes()?;
        self.import(to, package).await
    }

    /// Imports a package into chip `to` and records the result.
    async fn import(&self, to: usize, package: Vec<u8>) -> Result<[u8; 8]> {
        let info = self
            .pool
            .call_on(to, ChipRequest::DomainImport(package), &[])
            .await?
            .into_domain()?;
        self.set_kcv(to, Some(info.kcv));
        Ok(info.kcv)
    }

    /// For `cloudkey init`: makes sure the node's chips hold one domain and returns the index of
    /// a chip holding it and its key check value. Chip 0 (the first chip that answers)
    /// generates the domain unless some chip already holds one (an earlier init that did not
    /// complete); then that domain is kept.
    /// Chips that cannot be reached now are left to the background sync.
    ///
    /// With `may_generate` false, a domain is only reused, never generated.
    ///
    /// # Errors
    /// [`NodeError::Internal`] when the chips hold different domains; `ActionProhibited` when
    /// no chip holds a domain and `may_generate` is false; the chip's error when no chip can
    /// generate the domain.
    pub async fn prepare_init(&self, may_generate: bool) -> Result<(usize, [u8; 8])> {
        let mut infos = Vec::with_capacity(self.pool.len());
        for i in 0..self.pool.len() {
            match self.info(i).await {
                Ok(info) => infos.push(Some(info)),
                Err(e) => {
                    tracing::warn!(chip = i, error = %e, "chip unavailable at init");
                    infos.push(None);
                }
            }
        }
        let mut held = infos
            .iter()
            .enumerate()
            .filter_map(|(i, info)| Some((i, info.as_ref()?.domain?.kcv)));
        let (source, kcv) = match held.next() {
            Some((i, kcv)) => {
                if let Some((j, other)) = held.find(|(_, k)| *k != kcv) {
                    return Err(NodeError::Internal(format!(
                        "chips {i} and {j} hold different domains ({} and {}); \
                         refusing to initialise",
                        hex::encode(kcv),
                        hex::encode(other)
                    )));
                }
                tracing::info!(chip = i, kcv = %hex::encode(kcv), "reusing the domain the chips hold");
                (i, kcv)
            }
            None if !may_generate => {
                return Err(NodeError::refuse(
                    cloudkey_protocol::ErrorCode::ActionProhibited,
                    "this node already belongs to a cluster whose state it has not applied yet; \
                     wait for it to catch up",
                ));
            }
            None => {
                let source = infos.iter().position(Option::is_some).ok_or_else(|| {
                    NodeError::Chip(ChipError::DeviceLost("no chip answers".into()))
                })?;
                let info = self
                    .pool
                    .call_on(source, ChipRequest::DomainGenerate, &[])
                    .await?
                    .into_domain()?;
                self.set_kcv(source, Some(info.kcv));
                tracing::info!(chip = source, kcv = %hex::encode(info.kcv), "domain generated");
                (source, info.kcv)
            }
        };
        for (i, info) in infos.into_iter().enumerate() {
            let Some(info) = info else { continue };
            if i == source || info.domain.is_some() {
                continue;
            }
            match self.transfer_local(source, i, info.identity_key).await {
                Ok(k) if k == kcv => tracing::info!(chip = i, "domain transferred"),
                Ok(k) => {
                    return Err(NodeError::Internal(format!(
                        "chip {i} imported domain {} instead of {}",
                        hex::encode(k),
                        hex::encode(kcv)
                    )))
                }
                Err(e) => {
                    tracing::warn!(chip = i, error = %e, "domain transfer failed; will retry")
                }
            }
        }
        Ok((source, kcv))
    }

    /// Generates the cluster's session secret in chip `chip` (which holds the domain): a 32-byte
    /// generic secret that may only sign (MAC) and never leaves a chip in clear. Returns its
    /// blob.
    ///
    /// # Errors
    /// The chip's error.
    pub async fn generate_session_secret(&self, chip: usize) -> Result<Vec<u8>> {
        let template = KeyTemplate {
            id: KeyId::random(),
            spec: KeySpec::generic_secret(SESSION_SECRET_BYTES),
            usage: KeyUsage::SIGN | KeyUsage::SENSITIVE,
        };
        let new = self
            .pool
            .call_on(chip, ChipRequest::GenerateSecretKey(template), &[])
            .await?
            .into_new_key()?;
        Ok(new.blob.0)
    }

    /// Brings every chip into the cluster's domain and derives the session MAC key. Returns
    /// `true` when all of that is done, `false` when the cluster is not initialised yet.
    ///
    /// # Errors
    /// The first failure (the caller retries); chips that could be served meanwhile are.
    pub async fn sync(&self, state: &State, donor: &PeerDonor) -> Result<bool> {
        let Some(cluster) = state.cluster() else {
            // Not initialised: only record what the chips hold, for status.
            for i in 0..self.pool.len() {
                let _ = self.info(i).await;
            }
            return Ok(false);
        };
        let want = cluster.domain_kcv;
        let mut first_error = None;
        for i in 0..self.pool.len() {
            if let Err(e) = self.sync_chip(i, want, state, donor).await {
                tracing::warn!(chip = i, error = %e, "chip not in the cluster's domain yet");
                first_error.get_or_insert(e);
            }
        }
        if let Err(e) = self.session_mac(state).await {
            first_error.get_or_insert(e);
        }
        match first_error {
            None => Ok(true),
            Some(e) => Err(e),
        }
    }

    async fn sync_chip(
        &self,
        i: usize,
        want: [u8; 8],
        state: &State,
        donor: &PeerDonor,
    ) -> Result<()> {
        let info = self.info(i).await?;
        match info.domain {
            Some(d) if d.kcv == want => return Ok(()),
            Some(d) => {
                // Never overwrite a domain: a chip of another cluster needs an operator.
                return Err(NodeError::Internal(format!(
                    "chip {i} holds domain {}, not the cluster's {}; it must be cleared by an \
                     operator",
                    hex::encode(d.kcv),
                    hex::encode(want)
                )));
            }
            None => {}
        }
        // The domain goes only to chips an operator enrolled for this node (`state::chips`),
        // from a local chip as from a peer (which checks the same).
        if let Err(refusal) = state.check_enrolled(&info.identity_key, donor.id) {
            return Err(NodeError::refuse(
                cloudkey_protocol::ErrorCode::ActionProhibited,
                format!("chip {i} (serial {}): {}", info.serial, refusal.detail),
            ));
        }
        // A local chip that has the domain is the cheapest donor.
        let local = (0..self.pool.len()).find(|&j| j != i && self.has_domain(j, Some(want)));
        let kcv = match local {
            Some(j) => self.transfer_local(j, i, info.identity_key).await?,
            None => {
                let package = donor.export_to(&info.identity_key).await?;
                if package.get(PACKAGE_KCV) != Some(&want[..]) {
                    return Err(NodeError::Peer(
                        "a peer sent a domain package of another domain".into(),
                    ));
                }
                self.import(i, package).await?
            }
        };
        if kcv != want {
            return Err(NodeError::Internal(format!(
                "chip {i} imported domain {} instead of the cluster's {}",
                hex::encode(kcv),
                hex::encode(want)
            )));
        }
        tracing::info!(chip = i, kcv = %hex::encode(kcv), "chip joined the cluster's domain");
        Ok(())
    }

    /// The pepper of `pin`: `HMAC-SHA-256(session secret, PIN_PEPPER_LABEL || pin)`, computed
    /// in a chip of the domain each time and never kept. The node hashes this, not the PIN,
    /// with argon2id, so a stolen data directory alone cannot test a PIN guess: the session
    /// secret is a chip blob under the domain key, which only the chips hold.
    ///
    /// # Errors
    /// As [`ChipDomain::session_mac`].
    pub async fn pin_pepper(&self, state: &State, pin: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let mut data = Vec::with_capacity(PIN_PEPPER_LABEL.len() + pin.len());
        data.extend_from_slice(PIN_PEPPER_LABEL);
        data.extend_from_slice(pin);
        self.secret_hmac(state, data).await
    }

    /// `HMAC-SHA-256(session secret, data)` in a chip that holds the domain.
    async fn secret_hmac(&self, state: &State, data: Vec<u8>) -> Result<Zeroizing<Vec<u8>>> {
        let cluster = state.cluster().ok_or(NodeError::NotInitialized)?;
        let key = PoolKey::new(KeyBlob(cluster.session_secret_blob.clone()))?;
        let request = ChipRequest::Sign {
            key: key.id(),
            mech: SignMech::Hmac(HashAlg::Sha256),
            data,
        };
        let keys = std::slice::from_ref(&key);
        let chip = (0..self.pool.len()).find(|&i| self.has_domain(i, Some(cluster.domain_kcv)));
        let response = match chip {
            Some(i) => self.pool.call_on(i, request, keys).await,
            None => self.pool.call(request, keys).await,
        }
        .map_err(|e| match e {
            ChipError::NoDomain | ChipError::WrongDomain { .. } => {
                NodeError::Timeout("this node's chips do not hold the cluster's domain yet".into())
            }
            other => NodeError::Chip(other),
        })?;
        Ok(Zeroizing::new(response.into_bytes()?))
    }

    /// The session MAC key, derived in a chip on first use and then kept in memory.
    ///
    /// # Errors
    /// [`NodeError::NotInitialized`] before `cloudkey init`; the chip's error when no chip of
    /// this node holds the domain yet.
    pub async fn session_mac(&self, state: &State) -> Result<Arc<SessionMacKey>> {
        if let Some(k) = self.mac_cached() {
            return Ok(k);
        }
        let bytes = self.secret_hmac(state, SESSION_MAC_LABEL.to_vec()).await?;
        let mac = Arc::new(SessionMacKey::new(&bytes));
        *self.mac.write().unwrap_or_else(PoisonError::into_inner) = Some(mac.clone());
        tracing::info!("session MAC key derived");
        Ok(mac)
    }
}

/// A chip's identity key and its answer to an identity challenge (`cloudkey_chip::identity`):
/// what a node answers a [`PeerRequest::ProveChips`] with.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChipProof {
    /// The identity key (uncompressed P-256 point).
    #[serde(with = "serde_bytes")]
    pub identity: Vec<u8>,
    /// The chip's model.
    pub model: String,
    /// The chip's serial number.
    pub serial: String,
    /// The proof tag.
    #[serde(with = "serde_bytes")]
    pub tag: Vec<u8>,
}

/// Each chip of `pool` that answers, with its answer to the challenge `challenge`, `nonce`.
/// A chip that does not answer is left out (and logged).
pub async fn prove_identities(pool: &ChipPool, challenge: &[u8], nonce: &[u8]) -> Vec<ChipProof> {
    let mut proofs = Vec::with_capacity(pool.len());
    for i in 0..pool.len() {
        let info = pool
            .call_on(i, ChipRequest::Info, &[])
            .await
            .and_then(ChipResponse::into_info);
        let request = ChipRequest::IdentityProof {
            challenge: challenge.to_vec(),
            nonce: nonce.to_vec(),
        };
        let tag = pool
            .call_on(i, request, &[])
            .await
            .and_then(ChipResponse::into_bytes);
        match (info, tag) {
            (Ok(info), Ok(tag)) => proofs.push(ChipProof {
                identity: info.identity_key,
                model: info.model,
                serial: info.serial,
                tag,
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(chip = i, error = %e, "chip cannot prove its identity");
            }
        }
    }
    proofs
}

/// Where a chip without the domain gets a package: the leader, then the other members.
pub struct PeerDonor {
    id: u64,
    raft: RaftNode,
}

impl fmt::Debug for PeerDonor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerDonor").field("id", &self.id).finish()
    }
}

impl PeerDonor {
    /// A donor asking the peers of `raft` (this node) through its peer network.
    #[must_use]
    pub fn new(raft: RaftNode) -> Self {
        Self {
            id: raft.id(),
            raft,
        }
    }

    /// A domain package for the chip whose identity key is `identity`, from the first peer
    /// that makes one.
    ///
    /// # Errors
    /// [`NodeError::Peer`] when no peer did.
    pub async fn export_to(&self, identity: &[u8]) -> Result<Vec<u8>> {
        let mut addrs: Vec<String> = Vec::new();
        if self.raft.leader().is_some_and(|l| l != self.id) {
            addrs.extend(self.raft.leader_addr());
        }
        for (id, addr) in self.raft.members() {
            if id != self.id && !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        let mut last = NodeError::Peer("no peer to obtain the domain from".into());
        for addr in addrs {
            let request = PeerRequest::DomainExport {
                recipient_identity: identity.to_vec(),
            };
            match self
                .raft
                .network()
                .call(&addr, request, PEER_EXPORT_TIMEOUT)
                .await
            {
                Ok(PeerResponse::DomainPackage(package)) => return Ok(package),
                Ok(other) => {
                    last = NodeError::Peer(format!(
                        "{addr} answered a domain export with {}",
                        other.kind()
                    ));
                }
                Err(e) => last = e,
            }
            tracing::debug!(%addr, error = %last, "domain export failed");
        }
        Err(last)
    }
}

/// Runs [`ChipDomain::sync`] in the background until `shutdown` turns true: at once, whenever
/// the applied state changes while the cluster is not initialised or a sync is pending, when
/// kicked, every [`RECHECK`] once complete, and with exponential backoff after failures.
pub fn spawn_sync(
    domain: Arc<ChipDomain>,
    state: Arc<State>,
    donor: PeerDonor,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut applied = state.watch_applied();
        let mut backoff = MIN_BACKOFF;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let (delay, listen_applied) = match domain.sync(&state, &donor).await {
                Ok(true) => {
                    backoff = MIN_BACKOFF;
                    (RECHECK, false)
                }
                // Not initialised: wait for the Init command to be applied.
                Ok(false) => (RECHECK, true),
                Err(e) => {
                    tracing::debug!(error = %e, retry_in = ?backoff, "domain sync incomplete");
                    let d = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    (d, false)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = domain.kick.notified() => {}
                r = applied.changed(), if listen_applied => {
                    if r.is_err() {
                        // The state is gone: the node is stopping.
                        break;
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
        tracing::debug!("domain sync stopped");
    })
}
