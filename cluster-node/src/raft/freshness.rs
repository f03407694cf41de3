//! Bounded staleness: how recently this node confirmed, with a quorum, that its applied state
//! is current.
//!
//! A node serves key use (signing, decryption, unwrapping, derivation, logins) from its
//! applied state without a Raft round trip. That is only sound while the node knows it is
//! not cut off: a node on the minority side of a partition, or an old leader that lost its
//! quorum, would otherwise keep using keys that the majority destroyed, and accept PINs that
//! were changed or locked.
//!
//! [`keep_fresh`] confirms every quarter of the bound, in the background:
//! * on the leader, with openraft's `ensure_linearizable` (a heartbeat round that a quorum
//!   acknowledges: no other leader can have committed anything before it), then waiting until
//!   the confirmed index is applied;
//! * on a follower, by asking the leader for that same confirmed index (`ReadIndex`) and
//!   waiting until it has applied it.
//!
//! Either way, a round that started at `t` and succeeded proves the state applied here was
//! current at `t`. So until `t + bound` the node is current within the bound
//! ([`Freshness::check`]); past it, key use is refused with a retryable `Stale`, and the
//! client asks another node. A key destroyed, a PIN changed or a token locked through the
//! majority thus takes effect on every node within the bound, and signing costs no Raft
//! round trip (it reads an atomic).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::network::{PeerRequest, PeerResponse};
use super::RaftNode;

/// Default bound (`[raft] staleness_bound_ms`).
pub const DEFAULT_BOUND: Duration = Duration::from_secs(1);

/// When this node last proved its state current (see the [module docs](self)).
#[derive(Debug)]
pub struct Freshness {
    base: Instant,
    bound: Duration,
    /// Microseconds after `base` at which the last successful confirmation started, plus one
    /// (0: never confirmed).
    confirmed_us: AtomicU64,
}

impl Freshness {
    /// A node that has confirmed nothing yet, with `bound`.
    #[must_use]
    pub fn new(bound: Duration) -> Self {
        // Some way back, so that any round started since the node did is after it.
        let now = Instant::now();
        Self {
            base: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            bound,
            confirmed_us: AtomicU64::new(0),
        }
    }

    /// The configured bound.
    #[must_use]
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// Records that a confirmation round which started at `started` succeeded.
    pub fn confirm(&self, started: Instant) {
        let us = u64::try_from(started.saturating_duration_since(self.base).as_micros())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1);
        self.confirmed_us.fetch_max(us, Ordering::AcqRel);
    }

    /// How long ago the last successful confirmation started; `None` before the first.
    #[must_use]
    pub fn age(&self) -> Option<Duration> {
        match self.confirmed_us.load(Ordering::Acquire) {
            0 => None,
            us => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_micros(us - 1)),
            ),
        }
    }

    /// `Ok` while the last confirmation is younger than the bound; else how old it is (`None`:
    /// never confirmed).
    ///
    /// # Errors
    /// The age of the last confirmation, when it is past the bound.
    pub fn check(&self) -> Result<(), Option<Duration>> {
        match self.age() {
            Some(age) if age < self.bound => Ok(()),
            other => Err(other),
        }
    }
}

/// Confirms this node's state every quarter of the bound, and at once when the leader
/// changes, until Raft shuts down. Spawned once per node.
pub async fn keep_fresh(node: RaftNode) {
    let freshness = node.freshness().clone();
    let period = (freshness.bound() / 4).max(Duration::from_millis(20));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut metrics = node.raft().metrics();
    let mut leader = None;
    loop {
        let now = metrics.borrow_and_update().current_leader;
        if now == leader {
            tokio::select! {
                _ = tick.tick() => {}
                changed = metrics.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
            }
        }
        leader = now;
        if metrics.borrow().running_state.is_err() {
            return;
        }
        let started = Instant::now();
        // A round may take at most the bound: an older confirmation proves nothing anyway.
        match tokio::time::timeout(freshness.bound(), confirm_once(&node)).await {
            Ok(Ok(())) => freshness.confirm(started),
            Ok(Err(why)) => tracing::debug!(node = node.id(), %why, "state not confirmed"),
            Err(_) => tracing::debug!(node = node.id(), "state not confirmed within the bound"),
        }
    }
}

/// One confirmation round: the index a quorum confirms, applied here.
async fn confirm_once(node: &RaftNode) -> Result<(), String> {
    let index = if node.is_leader() {
        node.raft()
            .ensure_linearizable()
            .await
            .map_err(|e| format!("not confirmed as leader: {e}"))?
            .map_or(0, |id| id.index)
    } else {
        let (leader, addr) = node.leader_target().ok_or("no leader known")?;
        let addr = addr.ok_or("the leader has no address yet")?;
        let resp = node
            .network()
            .call_inner(&addr, PeerRequest::ReadIndex, node.freshness().bound())
            .await
            .map_err(|e| format!("leader {leader} unreachable: {e}"))?;
        match resp {
            PeerResponse::ReadIndex(index) => index,
            PeerResponse::Error(e) => return Err(format!("leader {leader}: {e}")),
            other => return Err(format!("leader {leader} answered {}", other.kind())),
        }
    };
    node.state()
        .wait_applied(index, node.freshness().bound())
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_only_within_the_bound_of_the_last_confirmation() {
        let f = Freshness::new(Duration::from_millis(200));
        assert_eq!(f.check(), Err(None), "never confirmed");
        f.confirm(Instant::now());
        assert!(f.check().is_ok());
        // An older round does not move it back.
        f.confirm(Instant::now() - Duration::from_secs(5));
        assert!(f.check().is_ok());
        let g = Freshness::new(Duration::from_millis(200));
        g.confirm(Instant::now() - Duration::from_millis(300));
        assert!(matches!(g.check(), Err(Some(age)) if age >= Duration::from_millis(300)));
    }
}
