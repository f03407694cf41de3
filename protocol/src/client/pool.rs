//! The connection pool: one long-lived QUIC connection per node endpoint, dialled lazily and
//! re-dialled after a failure.
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

/// One node endpoint and its pooled connection.
pub(crate) struct Slot {
    /// The node's address.
    pub(crate) addr: SocketAddr,
    state: Mutex<SlotState>,
    dialing: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct SlotState {
    conn: Option<quinn::Connection>,
    /// When the last dial failed, and why.
    last_failure: Option<(Instant, String)>,
}

impl Slot {
    fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
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
    fn cached(&self) -> Option<quinn::Connection> {
        let mut st = self.state();
        match &st.conn {
            Some(c) if c.close_reason().is_none() => Some(c.clone()),
            Some(_) => {
                st.conn = None;
                None
            }
            None => None,
        }
    }

    /// Drops `conn` from the pool (if it is still the pooled one) so the next call re-dials.
    pub(crate) fn forget(&self, conn: &quinn::Connection) {
        let mut st = self.state();
        if st
            .conn
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            st.conn = None;
        }
    }

    /// Closes and drops the pooled connection.
    pub(crate) fn close(&self) {
        if let Some(c) = self.state().conn.take() {
            c.close(quinn::VarInt::from_u32(0), b"client closed");
        }
    }

    /// The pooled connection, dialling it if needed. Bounded by `deadline` and, for the
    /// handshake itself, by `connect_timeout`.
    pub(crate) async fn connection(
        &self,
        endpoint: &quinn::Endpoint,
        connect_timeout: Duration,
        deadline: Instant,
    ) -> Result<quinn::Connection, String> {
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
                self.addr
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
        let timeout = connect_timeout.min(deadline.saturating_duration_since(Instant::now()));
        match dial(endpoint, self.addr, timeout).await {
            Ok(conn) => {
                let mut st = self.state();
                st.conn = Some(conn.clone());
                st.last_failure = None;
                tracing::debug!(node = %self.addr, "connected");
                Ok(conn)
            }
            Err(why) => {
                self.state().last_failure = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }
}

/// Dials `addr`, verifies that the peer is a node (its certificate was verified against the CA
/// and [`SERVER_NAME`] by rustls; its identity must also have the node role).
async fn dial(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<quinn::Connection, String> {
    let connecting = endpoint
        .connect(addr, SERVER_NAME)
        .map_err(|e| format!("cannot dial {addr}: {e}"))?;
    let conn = match tokio::time::timeout(timeout, connecting).await {
        Err(_) => {
            return Err(format!(
                "no handshake with {addr} within {} ms",
                timeout.as_millis()
            ))
        }
        Ok(Err(e)) => return Err(format!("handshake with {addr} failed: {e}")),
        Ok(Ok(conn)) => conn,
    };
    match tls::peer_identity(&conn) {
        Ok(id) if matches!(id.role, Role::Node(_)) => Ok(conn),
        Ok(id) => {
            conn.close(quinn::VarInt::from_u32(0), b"not a node");
            Err(format!("{addr} is not a node: its certificate is {id}'s"))
        }
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(0), b"no identity");
            Err(format!("{addr} has no usable identity: {e}"))
        }
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
