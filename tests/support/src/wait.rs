//! Waiting on a condition, bounded: [`wait_for`] in async tests, [`wait_for_blocking`] in
//! threads. Both poll quickly at first (5 ms) and back off to 50 ms, so that a condition that
//! holds at once costs nothing and a long wait does not spin.

use std::fmt;
use std::time::{Duration, Instant};

/// A condition that did not hold in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedOut {
    /// What was awaited.
    pub what: String,
    /// The bound.
    pub timeout: Duration,
}

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "timed out after {:?} waiting for {}",
            self.timeout, self.what
        )
    }
}

impl std::error::Error for TimedOut {}

/// The polling schedule both forms share.
struct Poll {
    deadline: Instant,
    pause: Duration,
}

impl Poll {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_millis(50);

    fn new(timeout: Duration) -> Self {
        Self {
            deadline: Instant::now() + timeout,
            pause: Self::FIRST,
        }
    }

    /// The pause before the next try, or `None` once the deadline has passed.
    fn next(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        let pause = self.pause.min(self.deadline - now);
        self.pause = (self.pause * 2).min(Self::MAX);
        Some(pause)
    }
}

/// Polls `f` until it returns `Some`, or fails after `timeout` naming `what`. `f` runs at
/// least once, also after the deadline has passed.
///
/// # Errors
/// [`TimedOut`] when `f` returned `None` until the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T, TimedOut>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut poll = Poll::new(timeout);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        match poll.next() {
            Some(pause) => tokio::time::sleep(pause).await,
            None => {
                return Err(TimedOut {
                    what: what.into(),
                    timeout,
                })
            }
        }
    }
}

/// [`wait_for`] for a thread: sleeps between the tries.
///
/// # Errors
/// [`TimedOut`] when `f` returned `None` until the deadline.
pub fn wait_for_blocking<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, TimedOut> {
    let mut poll = Poll::new(timeout);
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        match poll.next() {
            Some(pause) => std::thread::sleep(pause),
            None => {
                return Err(TimedOut {
                    what: what.into(),
                    timeout,
                })
            }
        }
    }
}

/// Runs `bind` again while its address is still in use (a server restarted on the port it had,
/// while the old incarnation's connections drain), for at most `timeout`.
///
/// # Errors
/// `bind`'s error: at once for any other error, after `timeout` for `AddrInUse`.
pub async fn bind_retrying<T>(
    timeout: Duration,
    mut bind: impl FnMut() -> std::io::Result<T>,
) -> std::io::Result<T> {
    let mut poll = Poll::new(timeout);
    loop {
        match bind() {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match poll.next() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[test]
    fn a_condition_that_holds_returns_its_value_and_one_that_does_not_times_out() {
        let tries = Cell::new(0);
        let v = wait_for_blocking("the third try", Duration::from_secs(5), || {
            tries.set(tries.get() + 1);
            (tries.get() == 3).then_some(7)
        });
        assert_eq!(v, Ok(7));
        let started = Instant::now();
        let e = wait_for_blocking("nothing", Duration::from_millis(60), || None::<()>);
        assert!(started.elapsed() >= Duration::from_millis(60));
        let e = e.unwrap_err();
        assert_eq!(e.to_string(), "timed out after 60ms waiting for nothing");
        // Tried once even with no time at all.
        assert_eq!(wait_for_blocking("now", Duration::ZERO, || Some(1)), Ok(1));
    }

    #[tokio::test]
    async fn the_async_form_polls_the_same_way() {
        let mut tries = 0;
        let v = wait_for("the second try", Duration::from_secs(5), || {
            tries += 1;
            let hit = tries == 2;
            async move { hit.then_some("yes") }
        })
        .await;
        assert_eq!(v, Ok("yes"));
        let e = wait_for("nothing", Duration::from_millis(30), || async {
            None::<()>
        })
        .await;
        assert_eq!(e.unwrap_err().what, "nothing");
    }

    #[tokio::test]
    async fn a_bind_is_retried_only_while_the_address_is_in_use() {
        use std::io::{Error, ErrorKind};
        let attempt = |tries: &mut u32, ok_at: u32, fail: ErrorKind| {
            *tries += 1;
            if *tries == ok_at {
                Ok(*tries)
            } else {
                Err(Error::from(fail))
            }
        };
        let mut tries = 0;
        let bound = bind_retrying(Duration::from_secs(5), || {
            attempt(&mut tries, 3, ErrorKind::AddrInUse)
        });
        assert_eq!(bound.await.unwrap(), 3);
        let mut tries = 0;
        let e = bind_retrying(Duration::from_millis(30), || {
            attempt(&mut tries, 0, ErrorKind::AddrInUse)
        });
        assert_eq!(e.await.unwrap_err().kind(), ErrorKind::AddrInUse);
        assert!(tries > 1, "retried");
        let mut tries = 0;
        let e = bind_retrying(Duration::from_secs(5), || {
            attempt(&mut tries, 0, ErrorKind::PermissionDenied)
        });
        assert_eq!(e.await.unwrap_err().kind(), ErrorKind::PermissionDenied);
        assert_eq!(tries, 1, "another error is not retried");
    }
}
