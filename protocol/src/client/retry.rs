//! Retry timing: jittered exponential backoff, and the random source for it and for the
//! starting endpoint. The rules themselves are in the `client` module's documentation.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Backoff before retrying a node that answered `Busy`, `Stale` or `NotLeader` (no hint).
pub(crate) const REMOTE_BASE: Duration = Duration::from_millis(10);
/// Upper bound of that backoff.
pub(crate) const REMOTE_CAP: Duration = Duration::from_millis(200);
/// Backoff after a whole round of endpoints failed at the transport level.
pub(crate) const ROUND_BASE: Duration = Duration::from_millis(25);
/// Upper bound of that backoff.
pub(crate) const ROUND_CAP: Duration = Duration::from_millis(500);
/// Leader hints followed per call, so that nodes pointing at each other cannot loop a call.
pub(crate) const MAX_HINTS: u32 = 8;

/// A random `u64` from the standard library's randomly keyed hasher; good enough for jitter
/// and for the starting endpoint, and needs no extra dependency.
pub(crate) fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Exponential backoff with jitter: between half and all of `base * 2^attempt`, capped.
pub(crate) fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let full = base.saturating_mul(1u32 << attempt.min(16)).min(cap);
    let half = full / 2;
    let span = u64::try_from(half.as_micros()).unwrap_or(u64::MAX);
    let extra = if span == 0 {
        0
    } else {
        random_u64() % (span + 1)
    };
    half + Duration::from_micros(extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_jitters_and_is_capped() {
        for attempt in 0..40 {
            let d = backoff(attempt, REMOTE_BASE, REMOTE_CAP);
            let full = REMOTE_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(REMOTE_CAP);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        assert_eq!(backoff(0, Duration::ZERO, REMOTE_CAP), Duration::ZERO);
    }

    #[test]
    fn random_values_differ() {
        let a: Vec<u64> = (0..8).map(|_| random_u64()).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]));
    }
}
