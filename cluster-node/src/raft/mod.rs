//! Raft (openraft 0.9) wiring: the type configuration, timings, and [`RaftNode`], the handle the
//! services use to write commands and manage membership.
//!
//! * [`log_store`]: the redb-backed log and vote store.
//! * [`state_machine`]: applies committed commands to the shared [`State`]; durable snapshots.
//! * [`network`]: Raft RPCs, write forwarding and domain transfer over QUIC with mutual TLS
//!   (ALPN `cloudkey-raft/1`), client side ([`PeerNetwork`]) and server side ([`serve_peer`]).
//!
//! Writes go to the leader: a follower forwards them ([`PeerRequest::Forward`]) and then waits
//! until it has applied the entry itself, so a response from any node covers its own write.

pub mod authority;
pub mod freshness;
pub mod log_store;
pub mod network;
pub mod state_machine;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, RaftMetrics, ServerState, SnapshotPolicy};
use tokio::sync::watch;

pub use self::log_store::LogStore;
pub use self::network::{
    serve_peer, PeerContext, PeerError, PeerNetwork, PeerRequest, PeerResponse,
};
pub use self::state_machine::StateMachine;
use crate::error::{NodeError, Result};
use crate::state::{Command, CommandClass, CommandResult, State};
pub use authority::{with_authority, Authority, Authorizer};
pub use freshness::Freshness;

openraft::declare_raft_types!(
    /// The openraft type configuration of cloudkey: commands in, command results out, u64 node
    /// ids, nodes known by their QUIC address.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = std::io::Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry of cloudkey.
pub type Entry = openraft::Entry<TypeConfig>;
/// The openraft instance of cloudkey.
pub type Raft = openraft::Raft<TypeConfig>;

/// How long [`RaftNode::write`] tries (finding a leader, forwarding, committing, applying).
pub const WRITE_DEADLINE: Duration = Duration::from_secs(5);
/// How long [`RaftNode::add_node`] and [`RaftNode::remove_node`] try; adding includes the new
/// node catching up as a learner.
pub const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(60);
/// The largest encoded command [`RaftNode::write`] accepts. Well under the frame bound, so that
/// an append-entries request always carries at least one entry.
pub const MAX_COMMAND: usize = 1024 * 1024;
/// Longest pause between two attempts to reach a leader while none answers.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Log entries kept after a snapshot, so a briefly lagging follower catches up from the log
/// instead of a snapshot.
const KEEP_AFTER_SNAPSHOT: u64 = 500;
/// Entries per append-entries request.
const MAX_PAYLOAD_ENTRIES: u64 = 300;
/// Snapshot chunk size: well under the frame bound.
const SNAPSHOT_CHUNK: u64 = 1024 * 1024;

/// Raft timings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftTimings {
    /// Leader heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, milliseconds.
    pub election_min_ms: u64,
    /// Election timeout upper bound, milliseconds.
    pub election_max_ms: u64,
    /// Log entries since the last snapshot that trigger a new one.
    pub snapshot_logs: u64,
    /// How long after its last confirmation with a quorum the node serves key use
    /// ([`freshness`]), milliseconds.
    pub staleness_bound_ms: u64,
}

impl Default for RaftTimings {
    fn default() -> Self {
        Self {
            heartbeat_ms: 100,
            election_min_ms: 400,
            election_max_ms: 800,
            snapshot_logs: 2000,
            staleness_bound_ms: 1000,
        }
    }
}

impl RaftTimings {
    /// The openraft configuration for these timings.
    ///
    /// # Errors
    /// [`NodeError::RaftConfig`] when openraft rejects them (e.g. the election timeout is not above
    /// the heartbeat interval).
    pub fn config(&self) -> Result<Config> {
        let config = Config {
            cluster_name: "cloudkey".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_min_ms,
            election_timeout_max: self.election_max_ms,
            install_snapshot_timeout: 2000,
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            snapshot_max_chunk_size: SNAPSHOT_CHUNK,
            max_in_snapshot_log_to_keep: KEEP_AFTER_SNAPSHOT,
            ..Config::default()
        };
        config
            .validate()
            .map_err(|e| NodeError::RaftConfig(Box::new(e)))
    }
}

/// What must run on the leader.
#[derive(Clone, Debug)]
enum LeaderOp {
    Write(Command),
    AddNode { id: u64, addr: String },
    RemoveNode { id: u64 },
}

impl LeaderOp {
    /// The request that forwards this operation to the leader, with the caller's authority
    /// ([`authority`]); `None` for what only a leader serving the caller itself may do
    /// (membership changes and [`CommandClass::Direct`] commands).
    fn request(&self) -> Option<PeerRequest> {
        match self {
            Self::Write(cmd) => match cmd.class() {
                CommandClass::Node => Some(PeerRequest::Forward(cmd.clone())),
                CommandClass::Session => Some(PeerRequest::ForwardAs {
                    cmd: cmd.clone(),
                    authority: authority::current(),
                }),
                CommandClass::Direct => None,
            },
            Self::AddNode { .. } | Self::RemoveNode { .. } => None,
        }
    }
}

/// What a leader operation gave.
#[derive(Debug)]
enum Outcome {
    Written { result: CommandResult, index: u64 },
    Done,
}

/// A running Raft node; cheap to clone. See the module docs.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    raft: Raft,
    state: Arc<State>,
    network: PeerNetwork,
    metrics: watch::Receiver<RaftMetrics<u64, BasicNode>>,
    freshness: Arc<Freshness>,
}

impl std::fmt::Debug for RaftNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftNode")
            .field("id", &self.inner.id)
            .field("leader", &self.leader())
            .field("term", &self.term())
            .field("applied", &self.inner.state.applied())
            .finish()
    }
}

/// openraft's error `source` while doing `what`.
fn raft_err<E>(what: &'static str) -> impl FnOnce(E) -> NodeError
where
    E: std::error::Error + Send + Sync + 'static,
{
    move |source| NodeError::Openraft {
        what,
        source: Box::new(source),
    }
}

impl RaftNode {
    /// Starts the node: opens `data_dir/raft.redb`, restores `state` from
    /// `data_dir/snapshot.bin` if there is one, and starts openraft, which re-applies the
    /// committed log after the snapshot. `state` should be fresh; the node owns its changes
    /// from now on.
    ///
    /// # Errors
    /// [`NodeError::Io`] or [`NodeError::Db`] for an unreadable data directory,
    /// [`NodeError::RaftConfig`] for bad timings, [`NodeError::Openraft`] when openraft does not
    /// start.
    pub async fn start(
        id: u64,
        data_dir: &Path,
        state: Arc<State>,
        network: PeerNetwork,
        timings: RaftTimings,
    ) -> Result<RaftNode> {
        let bound = Duration::from_millis(timings.staleness_bound_ms);
        Self::start_with_config(id, data_dir, state, network, timings.config()?, bound).await
    }

    /// [`RaftNode::start`] with a full openraft configuration (snapshot and log retention
    /// tuning, tests). [`RaftTimings::config`] gives the default one.
    ///
    /// # Errors
    /// As [`RaftNode::start`]; [`NodeError::RaftConfig`] when openraft rejects `config`.
    pub async fn start_with_config(
        id: u64,
        data_dir: &Path,
        state: Arc<State>,
        network: PeerNetwork,
        config: Config,
        staleness_bound: Duration,
    ) -> Result<RaftNode> {
        let config = Arc::new(
            config
                .validate()
                .map_err(|e| NodeError::RaftConfig(Box::new(e)))?,
        );
        let dir = data_dir.to_path_buf();
        let sm_state = state.clone();
        let (log_store, sm) = tokio::task::spawn_blocking(move || -> Result<_> {
            std::fs::create_dir_all(&dir).map_err(NodeError::io(dir.display().to_string()))?;
            Ok((LogStore::open(&dir)?, StateMachine::open(&dir, sm_state)?))
        })
        .await
        .map_err(|source| NodeError::Task {
            what: "storage open",
            source,
        })??;
        let network = network.for_node(id);
        let raft = Raft::new(id, config, network.clone(), log_store, sm)
            .await
            .map_err(raft_err("start"))?;
        let metrics = raft.metrics();
        tracing::info!(node = id, applied = state.applied(), "raft started");
        let node = RaftNode {
            inner: Arc::new(Inner {
                id,
                raft,
                state,
                network,
                metrics,
                freshness: Arc::new(Freshness::new(staleness_bound)),
            }),
        };
        tokio::spawn(freshness::keep_fresh(node.clone()));
        Ok(node)
    }

    /// When this node last confirmed its state with a quorum ([`freshness`]).
    #[must_use]
    pub fn freshness(&self) -> &Arc<Freshness> {
        &self.inner.freshness
    }

    /// Serves a follower's `ReadIndex`: as the leader, the index a quorum confirms as current.
    pub(crate) async fn serve_read_index(&self) -> PeerResponse {
        if !self.is_leader() {
            return PeerResponse::Error(PeerError::NotLeader {
                leader: self.leader_addr(),
            });
        }
        match self.inner.raft.ensure_linearizable().await {
            Ok(read) => PeerResponse::ReadIndex(read.map_or(0, |id| id.index)),
            Err(e) => PeerResponse::Error(PeerError::NotLeader {
                leader: match e {
                    RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)) => {
                        f.leader_node.map(|n| n.addr)
                    }
                    _ => None,
                },
            }),
        }
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The applied state.
    #[must_use]
    pub fn state(&self) -> &Arc<State> {
        &self.inner.state
    }

    /// The openraft instance (metrics, waits, RPC entry points).
    #[must_use]
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// The peer network (for [`PeerNetwork::call`]).
    #[must_use]
    pub fn network(&self) -> &PeerNetwork {
        &self.inner.network
    }

    /// The current leader, if known.
    #[must_use]
    pub fn leader(&self) -> Option<u64> {
        self.inner.metrics.borrow().current_leader
    }

    /// The current leader's address, if known.
    #[must_use]
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.inner.metrics.borrow();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
    }

    /// The current term.
    #[must_use]
    pub fn term(&self) -> u64 {
        self.inner.metrics.borrow().current_term
    }

    /// True when this node is the leader.
    #[must_use]
    pub fn is_leader(&self) -> bool {
        let m = self.inner.metrics.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.inner.id)
    }

    /// Every node of the membership (voters and learners) with its address, by id.
    #[must_use]
    pub fn members(&self) -> Vec<(u64, String)> {
        self.inner
            .metrics
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// True when `id` is in the membership (a voter or a learner).
    #[must_use]
    pub fn is_member(&self, id: u64) -> bool {
        self.inner
            .metrics
            .borrow()
            .membership_config
            .membership()
            .get_node(&id)
            .is_some()
    }

    /// The voters, by id.
    #[must_use]
    pub fn voters(&self) -> Vec<u64> {
        self.inner
            .metrics
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// True once the node knows a membership (it was initialised, or joined a cluster).
    #[must_use]
    pub fn is_initialized(&self) -> bool {
        self.inner
            .metrics
            .borrow()
            .membership_config
            .membership()
            .nodes()
            .next()
            .is_some()
    }

    /// Forms a new cluster of `members` (id, address), this node among them. Safe to repeat on
    /// an initialised node: it does nothing then.
    ///
    /// # Errors
    /// [`NodeError::Openraft`] when openraft refuses the membership (e.g. this node is not in it).
    pub async fn initialize(&self, members: &[(u64, String)]) -> Result<()> {
        let nodes: BTreeMap<u64, BasicNode> = members
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match self.inner.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                tracing::info!(node = self.inner.id, "already initialised: {e}");
                Ok(())
            }
            Err(e) => Err(raft_err("initialize")(e)),
        }
    }

    /// Commits `cmd` through the leader (this node, or forwarded to it) and returns its result
    /// and log index. When this returns, this node has applied that index.
    ///
    /// Waits (bounded by [`WRITE_DEADLINE`]) while no leader is known (also while this node has
    /// not yet learnt the membership of a cluster being formed) or the leader changes.
    /// It retries only when the command certainly was not appended; otherwise an uncertain
    /// outcome is reported as an error, never repeated.
    ///
    /// # Errors
    /// [`NodeError::Refused`] for a command over [`MAX_COMMAND`], [`NodeError::NotInitialized`]
    /// when the node still has no membership at the deadline, [`NodeError::NotLeader`] when no leader could be reached in
    /// time, [`NodeError::Timeout`] when the write was not committed or not applied here in
    /// time (its outcome is then unknown), [`NodeError::Call`], [`NodeError::Peer`],
    /// [`NodeError::Raft`] or [`NodeError::Openraft`] for failures.
    pub async fn write(&self, cmd: Command) -> Result<(CommandResult, u64)> {
        let size = postcard::to_stdvec(&cmd)
            .map_err(|source| NodeError::Encode {
                what: "a command",
                source,
            })?
            .len();
        if size > MAX_COMMAND {
            return Err(NodeError::refuse(
                cloudkey_protocol::ErrorCode::ArgumentsBad,
                format!("command of {size} bytes exceeds {MAX_COMMAND}"),
            ));
        }
        let deadline = Instant::now() + WRITE_DEADLINE;
        match self.route(LeaderOp::Write(cmd), deadline).await? {
            Outcome::Written { result, index } => Ok((result, index)),
            Outcome::Done => Err(NodeError::Internal("a write gave no result".into())),
        }
    }

    /// Adds node `id` at `addr` as a voter: first as a learner, waits until it has caught up
    /// with the log, then makes it a voter. Runs on the leader (forwarded if need be); does
    /// nothing if `id` already is a voter.
    ///
    /// # Errors
    /// As [`RaftNode::write`]; [`NodeError::Timeout`] when the new node did not catch up within
    /// [`MEMBERSHIP_DEADLINE`] (it stays a learner).
    pub async fn add_node(&self, id: u64, addr: String) -> Result<()> {
        let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
        self.route(LeaderOp::AddNode { id, addr }, deadline)
            .await
            .map(|_| ())
    }

    /// Removes node `id` (voter or learner) from the cluster. Runs on the leader; does nothing if
    /// `id` is not a member.
    ///
    /// # Errors
    /// As [`RaftNode::add_node`]; [`NodeError::Openraft`] when openraft refuses (e.g. the last
    /// voter).
    pub async fn remove_node(&self, id: u64) -> Result<()> {
        let deadline = Instant::now() + MEMBERSHIP_DEADLINE;
        self.route(LeaderOp::RemoveNode { id }, deadline)
            .await
            .map(|_| ())
    }

    /// Stops Raft on this node and closes its peer connections. The state stays readable.
    ///
    /// # Errors
    /// [`NodeError::Openraft`] when the Raft task failed.
    pub async fn shutdown(&self) -> Result<()> {
        let res = self
            .inner
            .raft
            .shutdown()
            .await
            .map_err(raft_err("shutdown"));
        self.inner.network.close_all();
        tracing::info!(node = self.inner.id, "raft stopped");
        res
    }

    /// The leader's node id and address from the metrics, if this node knows them.
    pub(crate) fn leader_target(&self) -> Option<(u64, Option<String>)> {
        let m = self.inner.metrics.borrow();
        let leader = m.current_leader?;
        let addr = m
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone());
        Some((leader, addr))
    }

    fn not_leader(&self) -> NodeError {
        NodeError::NotLeader {
            leader: self.leader_addr(),
        }
    }

    /// Runs `op` on the leader: here if this node leads, else forwarded. Retries while no
    /// leader is known or the one tried is not (or no longer) the leader and certainly did not
    /// take the operation.
    async fn route(&self, op: LeaderOp, deadline: Instant) -> Result<Outcome> {
        let mut metrics = self.inner.raft.metrics();
        let mut last_err = self.not_leader();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                // A node of a cluster being formed learns the membership from the leader; one
                // that never did was not made part of a cluster.
                if !self.is_initialized() {
                    return Err(NodeError::NotInitialized);
                }
                return Err(last_err);
            }
            match self.leader_target() {
                Some((leader, _)) if leader == self.inner.id => {
                    match self.run_local(&op, remaining).await {
                        Err(NodeError::NotLeader { leader }) => {
                            last_err = NodeError::NotLeader { leader };
                        }
                        other => return other,
                    }
                }
                Some((leader, Some(addr))) => {
                    let Some(request) = op.request() else {
                        // The caller asks the leader itself (`authority`).
                        return Err(NodeError::NotLeader { leader: Some(addr) });
                    };
                    let res = self
                        .inner
                        .network
                        .call_inner(&addr, request, remaining)
                        .await;
                    match res {
                        Ok(resp) => match self.remote_outcome(resp, deadline).await {
                            Err(NodeError::NotLeader { leader }) => {
                                last_err = NodeError::NotLeader { leader };
                            }
                            other => return other,
                        },
                        // Nothing reached the leader: trying again cannot apply it twice.
                        Err(e) if e.nothing_sent() => {
                            tracing::debug!(leader, %addr, "leader unreachable: {e}");
                            last_err = e.into_node_error(&format!("leader {leader} at {addr}"));
                        }
                        Err(e) => return Err(e.into_node_error(&addr)),
                    }
                }
                // A leader without an address is not in our membership yet; no leader: an
                // election is under way.
                Some((_, None)) | None => {}
            }
            // Wait for news (a new leader, a new membership), bounded.
            let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
            if let Ok(Err(_)) = tokio::time::timeout(pause, metrics.changed()).await {
                return Err(NodeError::Raft("raft is shut down".into()));
            }
        }
    }

    /// The outcome of a forwarded operation; a write is waited for until applied here.
    async fn remote_outcome(&self, resp: PeerResponse, deadline: Instant) -> Result<Outcome> {
        match resp {
            PeerResponse::Written { result, index } => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                // A committed write is reported only once this node has applied it, so the
                // caller's read-your-writes index is served here; allow at least a moment.
                self.inner
                    .state
                    .wait_applied(index, remaining.max(RETRY_PAUSE))
                    .await
                    .map_err(|_| {
                        NodeError::Timeout(format!(
                            "write committed at index {index} but not applied on this node in time"
                        ))
                    })?;
                Ok(Outcome::Written { result, index })
            }
            PeerResponse::Done => Ok(Outcome::Done),
            PeerResponse::Error(e) => Err(e.into()),
            other => Err(NodeError::Peer(format!(
                "unexpected answer to a leader request: {}",
                other.kind()
            ))),
        }
    }

    /// Runs `op` on this node as the leader. [`NodeError::NotLeader`] means it was not taken.
    async fn run_local(&self, op: &LeaderOp, remaining: Duration) -> Result<Outcome> {
        let fut = async {
            match op {
                LeaderOp::Write(cmd) => self.write_local(cmd.clone()).await,
                LeaderOp::AddNode { id, addr } => self.add_node_local(*id, addr, remaining).await,
                LeaderOp::RemoveNode { id } => self.remove_node_local(*id).await,
            }
        };
        match tokio::time::timeout(remaining, fut).await {
            Ok(res) => res,
            Err(_) => Err(NodeError::Timeout(
                "the leader did not complete the operation in time; its outcome is unknown".into(),
            )),
        }
    }

    /// Serves a forwarded write (whose caller's authority was checked): only as the leader.
    pub(crate) async fn serve_forwarded(&self, cmd: Command) -> PeerResponse {
        if !self.is_leader() {
            return PeerResponse::Error(PeerError::NotLeader {
                leader: self.leader_addr(),
            });
        }
        match self.run_local(&LeaderOp::Write(cmd), WRITE_DEADLINE).await {
            Ok(Outcome::Written { result, index }) => PeerResponse::Written { result, index },
            Ok(Outcome::Done) => PeerResponse::Done,
            Err(e) => PeerResponse::Error(PeerError::from(&e)),
        }
    }

    fn map_write_err(&self, e: RaftError<u64, ClientWriteError<u64, BasicNode>>) -> NodeError {
        match e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => NodeError::NotLeader {
                leader: f.leader_node.map(|n| n.addr),
            },
            RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
                raft_err("change membership")(e)
            }
            RaftError::Fatal(f) => raft_err("write")(f),
        }
    }

    async fn write_local(&self, cmd: Command) -> Result<Outcome> {
        let resp = self
            .inner
            .raft
            .client_write(cmd)
            .await
            .map_err(|e| self.map_write_err(e))?;
        // openraft answers once the entry is applied here.
        Ok(Outcome::Written {
            result: resp.data,
            index: resp.log_id.index,
        })
    }

    async fn add_node_local(&self, id: u64, addr: &str, remaining: Duration) -> Result<Outcome> {
        let (known, voter) = {
            let m = self.inner.metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership.get_node(&id).cloned(),
                membership.voter_ids().any(|v| v == id),
            )
        };
        if voter {
            return Ok(Outcome::Done);
        }
        let raft = &self.inner.raft;
        let target = match known {
            Some(_) => self
                .inner
                .raft
                .metrics()
                .borrow()
                .last_log_index
                .unwrap_or(0),
            None => {
                let node = BasicNode {
                    addr: addr.to_string(),
                };
                let resp = raft
                    .add_learner(id, node, false)
                    .await
                    .map_err(|e| self.map_write_err(e))?;
                resp.log_id.index
            }
        };
        // Wait until the learner holds the log up to its own admission (or we lose the lead).
        let me = self.inner.id;
        let caught_up = raft
            .wait(Some(remaining))
            .metrics(
                |m| {
                    m.current_leader != Some(me)
                        || m.replication
                            .as_ref()
                            .and_then(|r| r.get(&id).cloned().flatten())
                            .is_some_and(|matched| matched.index >= target)
                },
                "new learner caught up",
            )
            .await;
        if caught_up.is_err() {
            return Err(NodeError::Timeout(format!(
                "node {id} at {addr} did not catch up with the log; it stays a learner"
            )));
        }
        if !self.is_leader() {
            return Err(self.not_leader());
        }
        raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(|e| self.map_write_err(e))?;
        tracing::info!(node = id, %addr, "node added as a voter");
        Ok(Outcome::Done)
    }

    async fn remove_node_local(&self, id: u64) -> Result<Outcome> {
        let (known, voter) = {
            let m = self.inner.metrics.borrow();
            let membership = m.membership_config.membership();
            (
                membership.get_node(&id).is_some(),
                membership.voter_ids().any(|v| v == id),
            )
        };
        if !known {
            return Ok(Outcome::Done);
        }
        let change = if voter {
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        // `retain = false`: a removed voter leaves the cluster instead of staying a learner.
        self.inner
            .raft
            .change_membership(change, false)
            .await
            .map_err(|e| self.map_write_err(e))?;
        tracing::info!(node = id, "node removed");
        Ok(Outcome::Done)
    }
}
