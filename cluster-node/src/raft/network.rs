//! Node-to-node traffic over QUIC with mutual TLS, ALPN `cloudkey-raft/1`: Raft RPCs, write
//! forwarding, membership requests and domain key transfer.
//!
//! One request per bidirectional stream: a [`PeerRequest`] frame out, a [`PeerResponse`] frame
//! back (both bounded by [`MAX_FRAME`]). Both ends insist on node certificates
//! (`cloudkey://node/<id>`): the client checks the server's, and [`serve_peer`] closes any
//! connection whose client certificate is not a node's.
//!
//! [`PeerNetwork`] keeps one connection per peer address in the client's pool
//! ([`NodeSlot`], the same locking rules): a connection is cloned out of the pool (no lock is
//! held across an `await`), re-dialled only when it has failed, and dialled by one call at a
//! time, so that the RPCs openraft sends to a dead peer at once make one dial, and all of them
//! hear when it fails.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudkey_chip::pool::ChipPool;
use cloudkey_chip::wire::Request as ChipRequest;
use cloudkey_protocol::client::{Dialer, NodeConnection, NodeSlot};
use cloudkey_protocol::frame::{self, reset, FrameError, MAX_FRAME};
use cloudkey_protocol::tls::{self, Role, TlsMaterial};
use cloudkey_protocol::{WireError, ALPN_RAFT};
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{AnyError, BasicNode, RPCTypes};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::Instrument;

use super::authority::Authorizer;
use super::{RaftNode, TypeConfig};
use crate::error::{NodeError, Result};
use crate::state::CommandClass;
use crate::state::CommandResult;

/// Connections kept in the pool at most (peers are few; this bounds misuse).
const MAX_POOLED: usize = 64;
/// The handshake's own bound; each RPC's deadline bounds it further.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one peer connection may have in service at once; more are refused as overloaded.
const MAX_STREAMS_PER_PEER: usize = 256;
/// QUIC application close code for a connection from a certificate that is not a node's.
pub const CLOSE_FORBIDDEN: u32 = 0x403;
/// How long a peer may take to send its request once it opened a stream (a snapshot chunk is
/// 1 MiB at most), so idle streams cannot hold the per-connection permits.
const REQUEST_READ_DEADLINE: Duration = Duration::from_secs(10);
/// How long serving a domain export may take.
const DOMAIN_EXPORT_DEADLINE: Duration = Duration::from_secs(10);

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Raft log replication and heartbeat.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// Raft vote request.
    Vote(openraft::raft::VoteRequest<u64>),
    /// A chunk of a Raft snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A write for the leader to commit: only a [`CommandClass::Node`] command
    /// (`super::authority`). → [`PeerResponse::Written`].
    Forward(crate::state::Command),
    /// A [`CommandClass::Session`] write for the leader to commit, with its caller's proof,
    /// which the leader checks again (`super::authority`). → [`PeerResponse::Written`].
    ForwardAs {
        /// The write.
        cmd: crate::state::Command,
        /// The caller's proof.
        authority: super::authority::Authority,
    },
    /// Add a node as a voter (leader only). → [`PeerResponse::Done`].
    AddNode {
        /// Node id.
        id: u64,
        /// Its QUIC address.
        addr: String,
    },
    /// Remove a node (leader only). → [`PeerResponse::Done`].
    RemoveNode {
        /// Node id.
        id: u64,
    },
    /// Export the domain key, encrypted to a joining chip's identity key.
    /// → [`PeerResponse::DomainPackage`].
    DomainExport {
        /// The recipient chip's identity (public key encoding as the chip gives it).
        #[serde(with = "serde_bytes")]
        recipient_identity: Vec<u8>,
    },
    /// The index a quorum confirms as current (leader only; `crate::raft::freshness`).
    /// → [`PeerResponse::ReadIndex`].
    ReadIndex,
    /// Each local chip's identity key with its answer to this identity challenge
    /// (`cloudkey_chip::identity`), for enrolment in the chip registry. Any node certificate
    /// may ask: a node being added is asked before it is a member, and the answers are public.
    /// → [`PeerResponse::ChipProofs`].
    ProveChips {
        /// The verifier's ephemeral P-256 point.
        #[serde(with = "serde_bytes")]
        challenge: Vec<u8>,
        /// The verifier's nonce.
        #[serde(with = "serde_bytes")]
        nonce: Vec<u8>,
    },
}

impl PeerRequest {
    /// The request's name, for logs.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AppendEntries(_) => "append_entries",
            Self::Vote(_) => "vote",
            Self::InstallSnapshot(_) => "install_snapshot",
            Self::Forward(_) => "forward",
            Self::ForwardAs { .. } => "forward_as",
            Self::AddNode { .. } => "add_node",
            Self::RemoveNode { .. } => "remove_node",
            Self::DomainExport { .. } => "domain_export",
            Self::ReadIndex => "read_index",
            Self::ProveChips { .. } => "prove_chips",
        }
    }
}

/// The answer to a [`PeerRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// To [`PeerRequest::AppendEntries`].
    AppendEntries(std::result::Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// To [`PeerRequest::Vote`].
    Vote(std::result::Result<VoteResponse<u64>, RaftError<u64>>),
    /// To [`PeerRequest::InstallSnapshot`].
    InstallSnapshot(
        std::result::Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>,
    ),
    /// To [`PeerRequest::Forward`]: the command's result and log index (applied on the leader).
    Written {
        /// What applying gave.
        result: CommandResult,
        /// The entry's log index.
        index: u64,
    },
    /// To [`PeerRequest::AddNode`] and [`PeerRequest::RemoveNode`].
    Done,
    /// To [`PeerRequest::DomainExport`]: the package for the recipient chip.
    DomainPackage(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The request failed.
    Error(PeerError),
    /// To [`PeerRequest::ReadIndex`]: the confirmed index.
    ReadIndex(u64),
    /// To [`PeerRequest::ProveChips`].
    ChipProofs(Vec<crate::chips::ChipProof>),
}

impl PeerResponse {
    /// The response's name, for logs and errors.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AppendEntries(_) => "append_entries",
            Self::Vote(_) => "vote",
            Self::InstallSnapshot(_) => "install_snapshot",
            Self::Written { .. } => "written",
            Self::Done => "done",
            Self::DomainPackage(_) => "domain_package",
            Self::Error(_) => "error",
            Self::ReadIndex(_) => "read_index",
            Self::ChipProofs(_) => "chip_proofs",
        }
    }
}

/// A failure as it crosses between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum PeerError {
    /// The node is not the leader (and did not take the request).
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's address, if known.
        leader: Option<String>,
    },
    /// A refusal with a wire error code.
    #[error("{0}")]
    Refused(WireError),
    /// The node's Raft failed or is shutting down.
    #[error("raft: {0}")]
    Raft(String),
    /// The operation did not complete in time; its outcome is unknown.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The node's chips failed.
    #[error("chip: {0}")]
    Chip(String),
    /// The caller may not make this request.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl From<&NodeError> for PeerError {
    fn from(e: &NodeError) -> Self {
        match e {
            NodeError::NotLeader { leader } => Self::NotLeader {
                leader: leader.clone(),
            },
            NodeError::Refused(r) => Self::Refused(WireError::new(r.code, r.detail.clone())),
            NodeError::Raft(s) => Self::Raft(s.clone()),
            e @ NodeError::Openraft { .. } => Self::Raft(e.to_string()),
            NodeError::Timeout(s) => Self::Timeout(s.clone()),
            NodeError::Chip(c) => Self::Chip(c.to_string()),
            NodeError::NotInitialized => Self::Raft("the cluster is not initialised".into()),
            other => Self::Failed(other.to_string()),
        }
    }
}

impl From<PeerError> for NodeError {
    fn from(e: PeerError) -> Self {
        match e {
            PeerError::NotLeader { leader } => NodeError::NotLeader { leader },
            PeerError::Refused(w) => NodeError::refuse(w.code, w.detail),
            PeerError::Raft(s) => NodeError::Raft(s),
            PeerError::Timeout(s) => NodeError::Timeout(s),
            PeerError::Chip(s) => NodeError::Peer(format!("remote chip: {s}")),
            PeerError::Forbidden(s) => NodeError::Peer(format!("forbidden: {s}")),
            PeerError::Failed(s) => NodeError::Peer(s),
        }
    }
}

/// How a call to a peer failed, as far as the retry decision goes, with its cause.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing was sent: the connection pool could not dial. The pool tells one dial's failure
    /// to every call waiting on it, so what arrives here is that failure's detail.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// Nothing was sent: the peer at the address is another node.
    #[error("unreachable: the address is node {node}, not node {expected}")]
    WrongNode {
        /// The node the certificate names.
        node: u64,
        /// The node we meant to call.
        expected: u64,
    },
    /// Nothing was sent: no stream could be opened on a fresh connection.
    #[error("unreachable: open stream: {0}")]
    OpenStream(#[source] quinn::ConnectionError),
    /// The request could not be framed.
    #[error("failed: encode: {0}")]
    Encode(#[source] FrameError),
    /// The request was (partly) sent but the stream failed: the outcome is unknown.
    #[error("failed: send: {0}")]
    Send(#[source] quinn::WriteError),
    /// The request was sent but no well-formed answer came: the outcome is unknown.
    #[error("failed: answer: {0}")]
    Answer(#[source] FrameError),
    /// The deadline passed (possibly after sending).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request does not fit in a frame.
    #[error("request exceeds the frame bound")]
    TooLarge,
}

impl CallError {
    /// Whether nothing reached the peer, so that trying again cannot apply a request twice.
    #[must_use]
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self,
            Self::Unreachable(_) | Self::WrongNode { .. } | Self::OpenStream(_)
        )
    }

    pub(crate) fn into_node_error(self, addr: &str) -> NodeError {
        match self {
            Self::Timeout(t) => NodeError::Timeout(format!("{addr} did not answer within {t:?}")),
            source => NodeError::Call {
                addr: addr.to_owned(),
                source: Box::new(source),
            },
        }
    }
}

struct NetInner {
    dialer: Dialer,
    /// One slot per peer address; the lock is held only to find or add a slot.
    pool: Mutex<HashMap<String, Arc<NodeSlot>>>,
}

/// The client side of node-to-node traffic; openraft's [`RaftNetworkFactory`]. Cheap to clone.
#[derive(Clone)]
pub struct PeerNetwork {
    inner: Arc<NetInner>,
    /// This node's id, once [`RaftNode::start`] has set it (for openraft's timeout errors).
    local: u64,
}

impl std::fmt::Debug for PeerNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pooled = self.inner.pool.lock().map_or(0, |p| p.len());
        f.debug_struct("PeerNetwork")
            .field("local", &self.local)
            .field("pooled", &pooled)
            .finish()
    }
}

impl PeerNetwork {
    /// A network over `endpoint` (the node's one QUIC endpoint, shared with its server), with
    /// this node's certificate for client authentication.
    ///
    /// # Errors
    /// [`NodeError::Tls`] when the TLS material does not make a client configuration.
    pub fn new(endpoint: quinn::Endpoint, tls: &TlsMaterial) -> Result<PeerNetwork> {
        let client = tls::client_config(tls, ALPN_RAFT)?;
        Ok(PeerNetwork {
            inner: Arc::new(NetInner {
                dialer: Dialer {
                    endpoint,
                    config: Some(client),
                    connect_timeout: CONNECT_TIMEOUT,
                    refuse_code: CLOSE_FORBIDDEN,
                },
                pool: Mutex::new(HashMap::new()),
            }),
            local: 0,
        })
    }

    pub(crate) fn for_node(&self, id: u64) -> PeerNetwork {
        PeerNetwork {
            inner: self.inner.clone(),
            local: id,
        }
    }

    /// Sends `req` to the node at `addr` and waits (at most `timeout`) for its answer.
    ///
    /// # Errors
    /// [`NodeError::Peer`] when the node cannot be reached or fails, [`NodeError::Timeout`]
    /// when it does not answer in time. A [`PeerResponse::Error`] is a successful call.
    pub async fn call(
        &self,
        addr: &str,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse> {
        self.call_inner(addr, req, timeout)
            .await
            .map_err(|e| e.into_node_error(addr))
    }

    /// Closes every pooled connection.
    pub(crate) fn close_all(&self) {
        let drained: Vec<Arc<NodeSlot>> = match self.inner.pool.lock() {
            Ok(mut p) => p.drain().map(|(_, s)| s).collect(),
            Err(_) => Vec::new(),
        };
        for slot in drained {
            slot.close(b"shutdown");
        }
    }

    /// [`PeerNetwork::call`] to node `expect` only: refused, with nothing sent, when the
    /// certificate of the node at `addr` names another node.
    ///
    /// # Errors
    /// As [`PeerNetwork::call`].
    pub async fn call_expecting(
        &self,
        addr: &str,
        expect: u64,
        req: PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse> {
        self.call_node(addr, Some(expect), &req, timeout)
            .await
            .map_err(|e| e.into_node_error(addr))
    }

    pub(crate) async fn call_inner(
        &self,
        addr: &str,
        req: PeerRequest,
        timeout: Duration,
    ) -> std::result::Result<PeerResponse, CallError> {
        self.call_node(addr, None, &req, timeout).await
    }

    /// A call, optionally insisting that the peer's certificate names node `expect`.
    async fn call_node(
        &self,
        addr: &str,
        expect: Option<u64>,
        req: &PeerRequest,
        timeout: Duration,
    ) -> std::result::Result<PeerResponse, CallError> {
        let bytes = match frame::encode(req) {
            Ok(b) => b,
            Err(FrameError::TooLarge(_)) => return Err(CallError::TooLarge),
            Err(e) => return Err(CallError::Encode(e)),
        };
        let until = Instant::now() + timeout;
        // The stream is opened under the deadline by the pool itself, so that a dial that
        // runs out of time is recorded as failed for the calls waiting on it.
        let (mut send, mut recv) = self.open_stream(addr, expect, until, timeout).await?;
        let exchange = async {
            send.write_all(&bytes).await.map_err(CallError::Send)?;
            // The peer may already have answered and stopped reading: finishing then fails,
            // harmlessly.
            let _ = send.finish();
            frame::read_frame::<PeerResponse>(&mut recv, MAX_FRAME)
                .await
                .map_err(CallError::Answer)
        };
        match tokio::time::timeout_at(until, exchange).await {
            Ok(res) => res,
            Err(_) => Err(CallError::Timeout(timeout)),
        }
    }

    /// A new stream to `addr` by `until`, re-dialling once if the pooled connection has failed.
    async fn open_stream(
        &self,
        addr: &str,
        expect: Option<u64>,
        until: Instant,
        timeout: Duration,
    ) -> std::result::Result<(quinn::SendStream, quinn::RecvStream), CallError> {
        let slot = self.slot(addr);
        for attempt in 0..2 {
            let NodeConnection { conn, node } =
                match slot.connection(&self.inner.dialer, until).await {
                    Ok(c) => c,
                    Err(_) if Instant::now() >= until => return Err(CallError::Timeout(timeout)),
                    Err(e) => return Err(CallError::Unreachable(e)),
                };
            if let Some(id) = expect {
                if node != id {
                    return Err(CallError::WrongNode { node, expected: id });
                }
            }
            match tokio::time::timeout_at(until, conn.open_bi()).await {
                Err(_) => return Err(CallError::Timeout(timeout)),
                Ok(Ok(streams)) => return Ok(streams),
                Ok(Err(e)) => {
                    slot.forget(&conn);
                    if attempt == 1 {
                        return Err(CallError::OpenStream(e));
                    }
                }
            }
        }
        Err(CallError::Unreachable("no stream".into()))
    }

    /// The pool's slot for `addr`, added if there is none. When the pool is full of slots in
    /// use, the slot is a fresh one that is not pooled.
    fn slot(&self, addr: &str) -> Arc<NodeSlot> {
        let Ok(mut pool) = self.inner.pool.lock() else {
            return Arc::new(NodeSlot::new(addr));
        };
        if let Some(s) = pool.get(addr) {
            return s.clone();
        }
        if pool.len() >= MAX_POOLED {
            // Keep the slots that are connected or that a call holds (it may be dialling).
            pool.retain(|_, s| s.is_connected() || Arc::strong_count(s) > 1);
        }
        let slot = Arc::new(NodeSlot::new(addr));
        if pool.len() < MAX_POOLED {
            pool.insert(addr.to_owned(), slot.clone());
        }
        slot
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            net: self.clone(),
            target,
            addr: node.addr.clone(),
        }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    net: PeerNetwork,
    target: u64,
    addr: String,
}

type RpcResult<T, E = openraft::error::Infallible> =
    std::result::Result<T, RPCError<u64, BasicNode, RaftError<u64, E>>>;

impl PeerClient {
    async fn rpc(
        &self,
        req: PeerRequest,
        action: RPCTypes,
        option: &RPCOption,
        entries: usize,
    ) -> std::result::Result<PeerResponse, RPCError<u64, BasicNode, openraft::error::Infallible>>
    {
        let timeout = option.hard_ttl();
        match self
            .net
            .call_node(&self.addr, Some(self.target), &req, timeout)
            .await
        {
            Ok(resp) => Ok(resp),
            Err(CallError::Timeout(t)) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.net.local,
                target: self.target,
                timeout: t,
            })),
            Err(CallError::TooLarge) => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint((entries / 2).max(1) as u64),
            )),
            Err(e) if e.nothing_sent() => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }

    fn unexpected<E: std::error::Error>(
        &self,
        resp: &PeerResponse,
    ) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
        let e = match resp {
            PeerResponse::Error(e) => AnyError::error(format!("node {}: {e}", self.target)),
            other => AnyError::error(format!(
                "node {} answered {} to a raft request",
                self.target,
                other.kind()
            )),
        };
        RPCError::Network(NetworkError::new(&e))
    }
}

fn widen<E: std::error::Error>(
    e: RPCError<u64, BasicNode, openraft::error::Infallible>,
) -> RPCError<u64, BasicNode, RaftError<u64, E>> {
    match e {
        RPCError::Timeout(t) => RPCError::Timeout(t),
        RPCError::Unreachable(u) => RPCError::Unreachable(u),
        RPCError::PayloadTooLarge(p) => RPCError::PayloadTooLarge(p),
        RPCError::Network(n) => RPCError::Network(n),
        RPCError::RemoteError(r) => match r.source {},
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let n = rpc.entries.len();
        let resp = self
            .rpc(
                PeerRequest::AppendEntries(rpc),
                RPCTypes::AppendEntries,
                &option,
                n,
            )
            .await
            .map_err(widen)?;
        match resp {
            PeerResponse::AppendEntries(Ok(r)) => Ok(r),
            PeerResponse::AppendEntries(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, InstallSnapshotError> {
        let resp = self
            .rpc(
                PeerRequest::InstallSnapshot(rpc),
                RPCTypes::InstallSnapshot,
                &option,
                1,
            )
            .await
            .map_err(widen)?;
        match resp {
            PeerResponse::InstallSnapshot(Ok(r)) => Ok(r),
            PeerResponse::InstallSnapshot(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<u64>> {
        let resp = self
            .rpc(PeerRequest::Vote(rpc), RPCTypes::Vote, &option, 0)
            .await
            .map_err(widen)?;
        match resp {
            PeerResponse::Vote(Ok(r)) => Ok(r),
            PeerResponse::Vote(Err(e)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    fn backoff(&self) -> openraft::network::Backoff {
        // A dead peer is retried every 200 ms: quick to rejoin, cheap while it is gone.
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(200)))
    }
}

/// What [`serve_peer`] needs.
#[derive(Clone)]
pub struct PeerContext {
    /// The local Raft node.
    pub raft: RaftNode,
    /// The local chips (for domain export).
    pub pool: Arc<ChipPool>,
    /// The check of a forwarded write's caller (`super::authority`).
    pub authorizer: Arc<dyn Authorizer>,
}

impl std::fmt::Debug for PeerContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerContext")
            .field("raft", &self.raft)
            .finish_non_exhaustive()
    }
}

/// Serves one incoming `cloudkey-raft/1` connection until it closes: checks that the client
/// certificate is a node's (else closes the connection with [`CLOSE_FORBIDDEN`]), then serves
/// each bidirectional stream in its own task, at most [`MAX_STREAMS_PER_PEER`] at once.
pub async fn serve_peer(conn: quinn::Connection, ctx: PeerContext) {
    let peer = match tls::peer_identity(&conn) {
        Ok(id) => match id.role {
            Role::Node(n) => n,
            _ => {
                tracing::warn!(remote = %conn.remote_address(), peer = %id, "peer connection from a non-node certificate");
                conn.close(CLOSE_FORBIDDEN.into(), b"node certificate required");
                return;
            }
        },
        Err(e) => {
            tracing::warn!(remote = %conn.remote_address(), "peer connection without a node identity: {e}");
            conn.close(CLOSE_FORBIDDEN.into(), b"node certificate required");
            return;
        }
    };
    let span = tracing::info_span!("peer", node = ctx.raft.id(), peer);
    accept_streams(peer, conn, ctx).instrument(span).await;
}

async fn accept_streams(peer: u64, conn: quinn::Connection, ctx: PeerContext) {
    let limit = Arc::new(Semaphore::new(MAX_STREAMS_PER_PEER));
    loop {
        let (mut send, mut recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, "peer connection ended: {e}");
                return;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            let _ = send.reset(reset::OVERLOADED.into());
            let _ = recv.stop(reset::OVERLOADED.into());
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(
            async move {
                let _permit = permit;
                serve_stream(peer, &ctx, send, recv).await;
            }
            .in_current_span(),
        );
    }
}

async fn serve_stream(
    peer: u64,
    ctx: &PeerContext,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let read = frame::read_frame::<PeerRequest>(&mut recv, MAX_FRAME);
    let req = match tokio::time::timeout(REQUEST_READ_DEADLINE, read).await {
        Ok(Ok(r)) => r,
        Err(_) => {
            tracing::debug!(peer, "peer request not received in time");
            let _ = recv.stop(reset::MALFORMED.into());
            let _ = send.reset(reset::MALFORMED.into());
            return;
        }
        Ok(Err(e)) => {
            let code = match e {
                FrameError::TooLarge(_) => reset::FRAME_TOO_LARGE,
                _ => reset::MALFORMED,
            };
            tracing::debug!(peer, "bad peer request: {e}");
            let _ = send.reset(code.into());
            return;
        }
    };
    let kind = req.kind();
    let resp = dispatch(peer, ctx, req).await;
    if let Err(e) = frame::write_frame(&mut send, &resp).await {
        tracing::debug!(peer, kind, "cannot answer a peer request: {e}");
        return;
    }
    let _ = send.finish();
}

/// The node id a Raft vote names, if any.
fn voter(vote: &openraft::Vote<u64>) -> Option<u64> {
    vote.leader_id().voted_for()
}

async fn dispatch(peer: u64, ctx: &PeerContext, req: PeerRequest) -> PeerResponse {
    let raft = ctx.raft.raft();
    let impersonation = |claimed: Option<u64>| {
        PeerResponse::Error(PeerError::Forbidden(format!(
            "node {peer} may not speak for node {claimed:?}"
        )))
    };
    match req {
        // A node may only campaign and lead as itself.
        PeerRequest::AppendEntries(rpc) => {
            if voter(&rpc.vote) != Some(peer) {
                return impersonation(voter(&rpc.vote));
            }
            PeerResponse::AppendEntries(raft.append_entries(rpc).await)
        }
        PeerRequest::Vote(rpc) => {
            if voter(&rpc.vote) != Some(peer) {
                return impersonation(voter(&rpc.vote));
            }
            PeerResponse::Vote(raft.vote(rpc).await)
        }
        PeerRequest::InstallSnapshot(rpc) => {
            if voter(&rpc.vote) != Some(peer) {
                return impersonation(voter(&rpc.vote));
            }
            PeerResponse::InstallSnapshot(raft.install_snapshot(rpc).await)
        }
        // Writes, membership changes and the domain key go to members only: a node
        // certificate of this cluster's CA alone is not enough (a removed node keeps its
        // certificate, and one may be issued before its node is added).
        req @ (PeerRequest::Forward(_)
        | PeerRequest::ForwardAs { .. }
        | PeerRequest::AddNode { .. }
        | PeerRequest::RemoveNode { .. }
        | PeerRequest::DomainExport { .. }
        | PeerRequest::ReadIndex)
            if !ctx.raft.is_member(peer) =>
        {
            tracing::warn!(
                peer,
                request = req.kind(),
                "peer request refused: not a member of the cluster"
            );
            PeerResponse::Error(PeerError::Forbidden(format!(
                "node {peer} is not a member of this cluster"
            )))
        }
        // A node certificate alone is not a caller's authority (`super::authority`).
        PeerRequest::Forward(cmd) => match cmd.class() {
            CommandClass::Node => ctx.raft.serve_forwarded(cmd).await,
            class => forbidden_forward(peer, &cmd, class),
        },
        PeerRequest::ForwardAs { cmd, authority } => match cmd.class() {
            CommandClass::Node => ctx.raft.serve_forwarded(cmd).await,
            CommandClass::Session => match ctx.authorizer.authorize(&cmd, &authority).await {
                Ok(()) => ctx.raft.serve_forwarded(cmd).await,
                Err(e) => {
                    tracing::warn!(peer, command = cmd.kind(), ?authority, error = %e, "forwarded write refused: its caller's proof does not hold");
                    PeerResponse::Error(PeerError::from(&e))
                }
            },
            CommandClass::Direct => forbidden_forward(peer, &cmd, CommandClass::Direct),
        },
        // Membership changes are an operator's, made by the leader the operator asked.
        req @ (PeerRequest::AddNode { .. } | PeerRequest::RemoveNode { .. }) => {
            tracing::warn!(
                peer,
                request = req.kind(),
                "forwarded membership change refused"
            );
            PeerResponse::Error(PeerError::Forbidden(format!(
                "{}: membership changes are made only by the leader an operator asks",
                req.kind()
            )))
        }
        PeerRequest::ReadIndex => ctx.raft.serve_read_index().await,
        PeerRequest::ProveChips { challenge, nonce } => PeerResponse::ChipProofs(
            crate::chips::prove_identities(&ctx.pool, &challenge, &nonce).await,
        ),
        PeerRequest::DomainExport { recipient_identity } => {
            // Only to a chip an operator enrolled for the asking node (`state::chips`): a
            // node certificate alone cannot have the domain sent to a key of its choosing.
            if let Err(refusal) = ctx.raft.state().check_enrolled(&recipient_identity, peer) {
                tracing::warn!(peer, detail = %refusal.detail, "domain export refused");
                return PeerResponse::Error(PeerError::Forbidden(refusal.detail));
            }
            tracing::info!(peer, "domain export requested");
            let call = ctx
                .pool
                .call(ChipRequest::DomainExport(recipient_identity), &[]);
            match tokio::time::timeout(DOMAIN_EXPORT_DEADLINE, call).await {
                Ok(Ok(resp)) => match resp.into_bytes() {
                    Ok(package) => PeerResponse::DomainPackage(package),
                    Err(e) => PeerResponse::Error(PeerError::Chip(e.to_string())),
                },
                Ok(Err(e)) => PeerResponse::Error(PeerError::Chip(e.to_string())),
                Err(_) => PeerResponse::Error(PeerError::Timeout("domain export".into())),
            }
        }
    }
}

/// The refusal of a forwarded write that needs more than a node certificate.
fn forbidden_forward(peer: u64, cmd: &crate::state::Command, class: CommandClass) -> PeerResponse {
    tracing::warn!(
        peer,
        command = cmd.kind(),
        ?class,
        "forwarded write refused: no caller's authority"
    );
    PeerResponse::Error(PeerError::Forbidden(match class {
        CommandClass::Direct => format!(
            "{} is committed only by the leader serving its caller (an operator, officer or \
             terminal connects to the leader)",
            cmd.kind()
        ),
        _ => format!("{} needs its caller's session grant", cmd.kind()),
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::sync::Mutex as StdMutex;

    use cloudkey_protocol::tls::{TlsFiles, TlsMaterial};

    use super::*;
    use crate::pki;

    /// A peer that never answers: a UDP socket that records the destination connection id of
    /// every QUIC Initial packet it receives. Retransmissions of one handshake keep their
    /// connection id, so the number of distinct ids is the number of dials.
    struct BlackHole {
        addr: SocketAddr,
        dials: Arc<StdMutex<HashSet<Vec<u8>>>>,
    }

    impl BlackHole {
        fn start() -> Self {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = sock.local_addr().unwrap();
            let dials = Arc::new(StdMutex::new(HashSet::new()));
            let seen = dials.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 2048];
                while let Ok(n) = sock.recv(&mut buf) {
                    // Long header, fixed bit, type Initial (QUIC v1): byte 0 is 0b1100_xxxx;
                    // then the version (4 bytes), the DCID length and the DCID.
                    if n > 6 && buf[0] & 0xf0 == 0xc0 {
                        let len = usize::from(buf[5]);
                        if let Some(dcid) = buf.get(6..6 + len) {
                            seen.lock().unwrap().insert(dcid.to_vec());
                        }
                    }
                }
            });
            Self { addr, dials }
        }

        fn dials(&self) -> usize {
            self.dials.lock().unwrap().len()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_rpcs_to_a_dead_peer_dial_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let paths = pki::init_pki(dir.path(), 1, &[], &[]).unwrap();
        let node = paths.node(1).unwrap();
        let tls = TlsMaterial::load(&TlsFiles {
            ca: paths.ca.clone(),
            cert: node.cert.clone(),
            key: node.key.clone(),
        })
        .unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let net = PeerNetwork::new(endpoint, &tls).unwrap().for_node(1);
        let dead = BlackHole::start();
        let addr = dead.addr.to_string();

        // Every call starts well within the others' deadline (1.5 s, generous for a loaded
        // machine), so none may find the failed dial behind it and dial again.
        let calls = (0..16).map(|_| {
            let net = net.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                net.call_inner(
                    &addr,
                    PeerRequest::RemoveNode { id: 2 },
                    Duration::from_millis(1500),
                )
                .await
            })
        });
        for call in futures::future::join_all(calls).await {
            assert!(call.unwrap().is_err(), "nobody answers");
        }
        // Give a late Initial packet time to arrive before counting.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(dead.dials(), 1, "16 concurrent calls, one dial");
        net.close_all();
    }
}
