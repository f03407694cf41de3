//! The connection pool: one long-lived QUIC connection per node, dialled lazily and re-dialled
//! after a failure. The client keeps one [`NodeSlot`] per endpoint ([`Pool`]); a node keeps one
//! per peer for its Raft traffic (`cloudkey-node`'s `raft::network`), over the same rules.
//!
//! Locking rules (see the crate's style guide):
//! * a slot's `std::sync::Mutex` is held only to clone, store or drop a `Connection`, never
//!   across an `.await`: callers clone the connection out and open their stream on the clone;
//! * a slot's `tokio::sync::Mutex` serialises *dialling* only, so that a thousand calls that
//!   find the slot empty produce one handshake, not a thousand. Waiting for it is bounded by the
//!   caller's deadline, and a dial that fails is reported to every caller that was already
//!   waiting, so they move on at once instead of dialling the dead node one after another.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use crate::tls::{self, Role, SERVER_NAME};

/// At most this many endpoints: the configured ones plus those learnt from leader hints.
pub(crate) const MAX_ENDPOINTS: usize = 64;

/// No index (an `AtomicUsize` sentinel).
pub(crate) const NONE: usize = usize::MAX;

/// How a slot dials: the endpoint, the client configuration (and so the ALPN) to offer, and
/// the QUIC close code for a server whose certificate is not a node's.
#[derive(Clone, Debug)]
pub struct Dialer {
    /// The local endpoint the connections leave from.
    pub endpoint: quinn::Endpoint,
    /// The configuration to offer; `None` for the endpoint's default.
    pub config: Option<quinn::ClientConfig>,
    /// The handshake's own bound (the caller's deadline bounds it too).
    pub connect_timeout: Duration,
    /// The application close code sent to a server that is not a node.
    pub refuse_code: u32,
}

/// A pooled connection and the node id its certificate names.
#[derive(Clone, Debug)]
pub struct NodeConnection {
    /// The connection; clone it out, then open streams on the clone.
    pub conn: quinn::Connection,
    /// The node id of the peer's certificate (`cloudkey://node/<id>`).
    pub node: u64,
}

/// One node and its pooled connection, with single-flight dialling (the module's rules).
#[derive(Debug)]
pub struct NodeSlot {
    /// The node's address: an IP socket address, or `host:port`, resolved at each dial.
    target: String,
    state: Mutex<SlotState>,
    dialing: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct SlotState {
    conn: Option<NodeConnection>,
    /// When the last dial failed, and why.
    last_failure: Option<(Instant, String)>,
}

impl NodeSlot {
    /// A slot for the node at `target` (`ip:port` or `host:port`), not dialled yet.
    #[must_use]
    pub fn new(target: impl Into<String>) -> Self {
        Self {
            target: target.into(),
            state: Mutex::new(SlotState::default()),
            dialing: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // Nothing panics while holding the lock; if something ever did, the state (an
        // Option<Connection>) is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pooled connection if it is still open.
    fn cached(&self) -> Option<NodeConnection> {
        let mut st = self.state();
        match &st.conn {
            Some(c) if c.conn.close_reason().is_none() => Some(c.clone()),
            Some(_) => {
                st.conn = None;
                None
            }
            None => None,
        }
    }

    /// True while the slot holds an open connection.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.cached().is_some()
    }

    /// Drops `conn` from the pool (if it is still the pooled one) so the next call re-dials.
    pub fn forget(&self, conn: &quinn::Connection) {
        let mut st = self.state();
        if st
            .conn
            .as_ref()
            .is_some_and(|c| c.conn.stable_id() == conn.stable_id())
        {
            st.conn = None;
        }
    }

    /// Closes and drops the pooled connection, telling the peer `reason`.
    pub fn close(&self, reason: &[u8]) {
        if let Some(c) = self.state().conn.take() {
            c.conn.close(quinn::VarInt::from_u32(0), reason);
        }
    }

    /// The pooled connection, dialling it if needed. Bounded by `deadline` and, for the
    /// handshake itself, by the dialer's connect timeout.
    ///
    /// # Errors
    /// Why there is no connection: the deadline passed while another call was dialling, or
    /// this dial (or one that failed while this call waited) failed.
    pub async fn connection(
        &self,
        dialer: &Dialer,
        deadline: Instant,
    ) -> Result<NodeConnection, String> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let waiting_since = Instant::now();
        let Ok(_dialing) = tokio::time::timeout_at(deadline, self.dialing.lock()).await else {
            let last = match &self.state().last_failure {
                Some((_, why)) => format!(" (last dial: {why})"),
                None => String::new(),
            };
            return Err(format!(
                "deadline expired while waiting for a connection to {}{last}",
                self.target
            ));
        };
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        if let Some((at, why)) = &self.state().last_failure {
            if *at >= waiting_since {
                // Someone dialled while we waited, and failed: do not try again right away.
                return Err(why.clone());
            }
        }
        let timeout = dialer
            .connect_timeout
            .min(deadline.saturating_duration_since(Instant::now()));
        match dial(dialer, &self.target, timeout).await {
            Ok(conn) => {
                let mut st = self.state();
                st.conn = Some(conn.clone());
                st.last_failure = None;
                tracing::debug!(node = %self.target, "connected");
                Ok(conn)
            }
            Err(why) => {
                self.state().last_failure = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }
}

/// Dials `target` (resolving a host name first), verifies that the peer is a node (its
/// certificate was verified against the CA and [`SERVER_NAME`] by rustls; its identity must
/// also have the node role). Resolution and handshake are bounded by `timeout`.
async fn dial(dialer: &Dialer, target: &str, timeout: Duration) -> Result<NodeConnection, String> {
    let handshake = async {
        let addr = resolve(target).await?;
        let connecting = match &dialer.config {
            Some(config) => dialer
                .endpoint
                .connect_with(config.clone(), addr, SERVER_NAME),
            None => dialer.endpoint.connect(addr, SERVER_NAME),
        }
        .map_err(|e| format!("cannot dial {target}: {e}"))?;
        connecting
            .await
            .map_err(|e| format!("handshake with {target} failed: {e}"))
    };
    let conn = match tokio::time::timeout(timeout, handshake).await {
        Err(_) => {
            return Err(format!(
                "no handshake with {target} within {} ms",
                timeout.as_millis()
            ))
        }
        Ok(result) => result?,
    };
    let refuse = quinn::VarInt::from_u32(dialer.refuse_code);
    match tls::peer_identity(&conn) {
        Ok(id) => match id.role {
            Role::Node(node) => Ok(NodeConnection { conn, node }),
            _ => {
                conn.close(refuse, b"not a node");
                Err(format!("{target} is not a node: its certificate is {id}'s"))
            }
        },
        Err(e) => {
            conn.close(refuse, b"no identity");
            Err(format!("{target} has no usable identity: {e}"))
        }
    }
}

/// The socket address of `target`: parsed, or else looked up.
async fn resolve(target: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = target.parse() {
        return Ok(addr);
    }
    tokio::net::lookup_host(target)
        .await
        .map_err(|e| format!("resolve {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} resolves to nothing"))
}

/// One client endpoint: its address and its pooled connection.
pub(crate) struct Slot {
    /// The node's address.
    pub(crate) addr: SocketAddr,
    node: NodeSlot,
}

impl Slot {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            node: NodeSlot::new(addr.to_string()),
        }
    }

    /// Drops `conn` from the pool (if it is still the pooled one) so the next call re-dials.
    pub(crate) fn forget(&self, conn: &quinn::Connection) {
        self.node.forget(conn);
    }

    /// Closes and drops the pooled connection.
    pub(crate) fn close(&self) {
        self.node.close(b"client closed");
    }

    /// The pooled connection, dialling it if needed. Bounded by `deadline` and, for the
    /// handshake itself, by `connect_timeout`.
    pub(crate) async fn connection(
        &self,
        endpoint: &quinn::Endpoint,
        connect_timeout: Duration,
        deadline: Instant,
    ) -> Result<quinn::Connection, String> {
        if let Some(c) = self.node.cached() {
            return Ok(c.conn);
        }
        let dialer = Dialer {
            endpoint: endpoint.clone(),
            config: None,
            connect_timeout,
            refuse_code: 0,
        };
        self.node
            .connection(&dialer, deadline)
            .await
            .map(|c| c.conn)
    }
}

/// The endpoints, their connections and the sticky preferences.
pub(crate) struct Pool {
    slots: RwLock<Vec<Arc<Slot>>>,
    /// Index of the endpoint reads go to first.
    preferred: AtomicUsize,
    /// Index of the endpoint that last accepted a write after a leader hint, or [`NONE`].
    leader: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(addrs: &[SocketAddr], start: usize) -> Self {
        let slots = addrs.iter().map(|a| Arc::new(Slot::new(*a))).collect();
        Self {
            slots: RwLock::new(slots),
            preferred: AtomicUsize::new(start),
            leader: AtomicUsize::new(NONE),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Slot>>> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn len(&self) -> usize {
        self.read().len()
    }

    pub(crate) fn get(&self, index: usize) -> Option<Arc<Slot>> {
        self.read().get(index).cloned()
    }

    pub(crate) fn addrs(&self) -> Vec<SocketAddr> {
        self.read().iter().map(|s| s.addr).collect()
    }

    /// The index of `addr`, adding it if it is new and there is room.
    pub(crate) fn find_or_add(&self, addr: SocketAddr) -> Option<usize> {
        if let Some(i) = self.read().iter().position(|s| s.addr == addr) {
            return Some(i);
        }
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = slots.iter().position(|s| s.addr == addr) {
            return Some(i);
        }
        if slots.len() >= MAX_ENDPOINTS {
            return None;
        }
        slots.push(Arc::new(Slot::new(addr)));
        tracing::info!(node = %addr, "learnt a new node endpoint from a leader hint");
        Some(slots.len() - 1)
    }

    pub(crate) fn preferred(&self) -> usize {
        self.preferred.load(Ordering::Relaxed)
    }

    pub(crate) fn set_preferred(&self, index: usize) {
        if self.preferred.load(Ordering::Relaxed) != index {
            self.preferred.store(index, Ordering::Relaxed);
        }
    }

    /// After a failure on `failed`: moves the preference to the next endpoint unless another
    /// call already moved it (so a burst of failures on one node moves it once, not once per
    /// call). Returns the index this call should try next.
    pub(crate) fn move_on_from(&self, failed: usize) -> usize {
        let n = self.len().max(1);
        let next = (failed + 1) % n;
        let _ = self
            .preferred
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed);
        let _ = self
            .leader
            .compare_exchange(failed, NONE, Ordering::Relaxed, Ordering::Relaxed);
        next
    }

    pub(crate) fn leader(&self) -> Option<usize> {
        match self.leader.load(Ordering::Relaxed) {
            NONE => None,
            i => Some(i),
        }
    }

    pub(crate) fn set_leader(&self, index: usize) {
        if self.leader.load(Ordering::Relaxed) != index {
            self.leader.store(index, Ordering::Relaxed);
        }
    }

    pub(crate) fn forget_leader(&self, index: usize) {
        let _ = self
            .leader
            .compare_exchange(index, NONE, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub(crate) fn close_all(&self) {
        for slot in self.read().iter() {
            slot.close();
        }
    }
}
