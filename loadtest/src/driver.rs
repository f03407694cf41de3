//! Running one step: N workers on N sessions of one target, closed or open loop, bounded by
//! time and optionally by count, with a warm-up whose operations are not recorded.
//!
//! * **Closed loop**: each worker (an OS thread with its own session) issues its next request
//!   when the previous one returns. Latency is from the call to its return.
//! * **Open loop** (`rate`): request `i` of a shared schedule is due at its *intended* start
//!   time `t0 + i / rate`. An idle worker claims the next request of the schedule, sleeps until
//!   it is due (if it is not overdue already) and runs it. Latency is measured from the
//!   intended start, so time a request spends waiting for a worker (because every worker is
//!   busy with a slow target) is counted: no coordinated omission. There is no dispatcher
//!   thread: a request costs the generator one wake-up (the worker's timer), not two (a
//!   dispatcher's timer, then a hand-off to a worker), and a busy generator does not make the
//!   target look slower than it is. If the target is so slow that the schedule cannot be
//!   finished within a grace period after the end, the rest of the schedule is counted as
//!   `missed`.
//!
//! Every loop is bounded: workers stop at the end time or when the count is reached, and in the
//! open loop at the end of the schedule or of the grace period; a live progress line reads
//! shared counters only.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::stats::{Mode, Recorder, StepResult};
use crate::target::Session;
use crate::workload::{data_for, Op, OpPicker, Verifier, Workload};

/// A request started more than this after its intended time counts as a late start.
const LATE: Duration = Duration::from_millis(1);
/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// What one step does.
#[derive(Clone, Debug)]
pub struct StepConfig {
    /// Workers (each with its own session).
    pub workers: usize,
    /// Warm-up before measuring.
    pub warmup: Duration,
    /// Time bound of the measured part.
    pub duration: Duration,
    /// Operation bound of the measured part.
    pub count: Option<u64>,
    /// Open loop at this many requests per second; closed loop when `None`.
    pub rate: Option<f64>,
    /// Which operations.
    pub workload: Workload,
    /// Share of key generations in a mix, percent.
    pub keygen_percent: u8,
    /// Verify every n-th signature of each worker (and its first); 1 = all, 0 = none.
    pub verify_every: u64,
}

impl StepConfig {
    /// Open loop: how long after the end overdue requests of the schedule may still start.
    #[must_use]
    pub fn grace(&self) -> Duration {
        (self.duration / 10).clamp(Duration::from_secs(1), Duration::from_secs(10))
    }
}

/// The live progress line on stderr (hidden when stderr is not a terminal).
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
}

impl Progress {
    /// A progress display; `enabled` false hides it.
    #[must_use]
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled: enabled && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        }
    }

    fn bar(&self, total: Duration) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(
            Some(u64::try_from(total.as_millis()).unwrap_or(u64::MAX)),
            ProgressDrawTarget::stderr(),
        );
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {elapsed:>4} {msg}") {
            bar.set_style(style);
        }
        bar
    }
}

/// Counters the workers share with each other and the progress line.
struct Shared {
    stop: AtomicBool,
    tickets: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
}

/// The open loop's schedule, shared by the workers: request `i` is due at `t0 + i / rate`;
/// the first `warmup` requests are not measured.
struct Schedule {
    t0: Instant,
    rate: f64,
    warmup: u64,
    /// One past the last request of the schedule.
    last: u64,
    /// No request starts after this (the end plus the grace period).
    abandon: Instant,
    /// The next request to claim.
    next: AtomicU64,
    /// Measured requests started.
    started: AtomicU64,
}

impl Schedule {
    fn new(cfg: &StepConfig, rate: f64, t0: Instant, measure_start: Instant, end: Instant) -> Self {
        let scheduled = ((end - t0).as_secs_f64() * rate).ceil() as u64;
        let warmup = ((measure_start - t0).as_secs_f64() * rate).ceil() as u64;
        let measured = cfg
            .count
            .map_or(scheduled - warmup, |c| c.min(scheduled - warmup));
        Self {
            t0,
            rate,
            warmup,
            last: warmup + measured,
            abandon: end + cfg.grace(),
            next: AtomicU64::new(0),
            started: AtomicU64::new(0),
        }
    }

    /// Claims the next request: its intended start and whether it is measured; `None` at the
    /// end of the schedule or of the grace period.
    fn claim(&self) -> Option<(Instant, bool)> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        if i >= self.last || Instant::now() > self.abandon {
            return None;
        }
        let measured = i >= self.warmup;
        if measured {
            self.started.fetch_add(1, Ordering::Relaxed);
        }
        Some((
            self.t0 + Duration::from_secs_f64(i as f64 / self.rate),
            measured,
        ))
    }

    /// Measured requests that were never started.
    fn missed(&self) -> u64 {
        (self.last - self.warmup).saturating_sub(self.started.load(Ordering::Relaxed))
    }
}

/// One worker: runs operations on its session, each at the start `next_start` gives (with
/// whether it is measured), until `next_start` says stop; records the measured ones.
fn worker_loop(
    worker: usize,
    session: &mut dyn Session,
    verifier: Option<&Verifier>,
    cfg: &StepConfig,
    shared: &Shared,
    mut next_start: impl FnMut(&mut Recorder) -> Option<(Instant, bool)>,
) -> Recorder {
    let mut rec = Recorder::new();
    let mut picker = OpPicker::new(cfg.workload, cfg.keygen_percent, worker);
    let mut signed = 0u64;
    for seq in 0u64.. {
        let Some((started, measured)) = next_start(&mut rec) else {
            break;
        };
        let op = picker.next_op();
        let data = data_for(worker, seq);
        let result = match op {
            Op::Sign => session.sign(&data).map(Some),
            Op::Keygen => session.generate().map(|()| None),
        };
        let latency = started.elapsed();
        if !measured {
            continue;
        }
        match result {
            Ok(sig) => {
                rec.success(op, latency);
                shared.ok.fetch_add(1, Ordering::Relaxed);
                if let (Some(sig), Some(v)) = (sig, verifier) {
                    if cfg.verify_every > 0 && signed % cfg.verify_every == 0 {
                        let ok = v.verify(&data, &sig);
                        rec.verification(ok);
                        if !ok {
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    signed += 1;
                }
            }
            Err(e) => {
                rec.failure(&e);
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    rec
}

/// The closed loop's next start: now, until the end time, the count or another worker's stop.
fn closed_start(
    cfg: &StepConfig,
    shared: &Shared,
    measure_start: Instant,
    end: Instant,
) -> Option<(Instant, bool)> {
    if shared.stop.load(Ordering::Relaxed) {
        return None;
    }
    let started = Instant::now();
    if started >= end {
        return None;
    }
    let measured = started >= measure_start;
    if measured {
        if let Some(c) = cfg.count {
            if shared.tickets.fetch_add(1, Ordering::Relaxed) >= c {
                shared.stop.store(true, Ordering::Relaxed);
                return None;
            }
        }
    }
    Some((started, measured))
}

/// The open loop's next start: the intended time of the next request of the schedule, after
/// sleeping until it is due (or counting a late start when it is overdue).
fn open_start(schedule: &Schedule, rec: &mut Recorder) -> Option<(Instant, bool)> {
    let (intended, measured) = schedule.claim()?;
    let now = Instant::now();
    if intended > now {
        std::thread::sleep(intended - now);
    } else if measured && now - intended > LATE {
        rec.late_start();
    }
    Some((intended, measured))
}

/// Runs one step of `target_name` on `sessions[..cfg.workers]`.
///
/// # Panics
/// If there are fewer sessions than workers.
#[must_use]
pub fn run_step(
    target_name: &str,
    round: u32,
    sessions: &mut [Box<dyn Session>],
    verifier: Option<&Verifier>,
    cfg: &StepConfig,
    progress: &Progress,
) -> StepResult {
    assert!(sessions.len() >= cfg.workers, "fewer sessions than workers");
    let shared = Shared {
        stop: AtomicBool::new(false),
        tickets: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    };
    let done = AtomicBool::new(false);
    let t0 = Instant::now();
    let measure_start = t0 + cfg.warmup;
    let end = measure_start + cfg.duration;
    let bar = progress.bar(cfg.warmup + cfg.duration);
    let mode = match cfg.rate {
        Some(rate) => Mode::Open { rate },
        None => Mode::Closed,
    };
    let schedule = cfg
        .rate
        .map(|rate| Schedule::new(cfg, rate, t0, measure_start, end));
    let recorders = std::thread::scope(|s| {
        let handles: Vec<_> = sessions[..cfg.workers]
            .iter_mut()
            .enumerate()
            .map(|(worker, session)| {
                let (shared, schedule) = (&shared, schedule.as_ref());
                std::thread::Builder::new()
                    .name(format!("worker-{worker}"))
                    .spawn_scoped(s, move || {
                        let session = session.as_mut();
                        match schedule {
                            None => worker_loop(worker, session, verifier, cfg, shared, |_| {
                                closed_start(cfg, shared, measure_start, end)
                            }),
                            Some(schedule) => {
                                worker_loop(worker, session, verifier, cfg, shared, |rec| {
                                    open_start(schedule, rec)
                                })
                            }
                        }
                    })
                    .expect("cannot start a worker thread")
            })
            .collect();
        // The progress line: reads the counters until the step is done.
        let ticker = s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let now = Instant::now();
                let ok = shared.ok.load(Ordering::Relaxed);
                let errors = shared.errors.load(Ordering::Relaxed);
                let phase = if now < measure_start {
                    "warm-up".to_string()
                } else {
                    let secs = (now - measure_start).as_secs_f64().max(1e-3);
                    format!("{:.0} ops/s", ok as f64 / secs)
                };
                bar.set_position(u64::try_from((now - t0).as_millis()).unwrap_or(u64::MAX));
                bar.set_message(format!(
                    "{target_name} w={} {phase}, {ok} ok, {errors} errors",
                    cfg.workers
                ));
                std::thread::sleep(PROGRESS_EVERY);
            }
        });
        let recorders: Vec<Recorder> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        done.store(true, Ordering::Relaxed);
        let _ = ticker.join();
        recorders
    });
    let missed = schedule.as_ref().map_or(0, Schedule::missed);
    let finished = Instant::now();
    bar.finish_and_clear();
    let mut total = Recorder::new();
    for r in &recorders {
        total.merge(r);
    }
    // Measured time: from the end of the warm-up to the last return (a count-bounded run may
    // end early; a time-bounded one ends when the last started operation returns).
    let elapsed = finished.saturating_duration_since(measure_start);
    StepResult::new(
        target_name,
        round,
        cfg.workers,
        mode,
        elapsed,
        &total,
        missed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::OpError;

    /// A session that sleeps a fixed time per operation.
    struct Sleepy(Duration);

    impl Session for Sleepy {
        fn sign(&mut self, _data: &[u8]) -> Result<Vec<u8>, OpError> {
            std::thread::sleep(self.0);
            Ok(vec![0; 64])
        }
        fn generate(&mut self) -> Result<(), OpError> {
            std::thread::sleep(self.0);
            Err(OpError::new("CKR_DEVICE_ERROR", "no"))
        }
        fn close(self: Box<Self>) -> anyhow::Result<()> {
            Ok(())
        }
    }

    fn cfg(workers: usize) -> StepConfig {
        StepConfig {
            workers,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
            count: None,
            rate: None,
            workload: Workload::Sign,
            keygen_percent: 0,
            verify_every: 0,
        }
    }

    fn sessions(n: usize, d: Duration) -> Vec<Box<dyn Session>> {
        (0..n)
            .map(|_| Box::new(Sleepy(d)) as Box<dyn Session>)
            .collect()
    }

    #[test]
    fn closed_loop_is_bounded_by_time_and_count() {
        let mut s = sessions(4, Duration::from_millis(2));
        let r = run_step("t", 1, &mut s, None, &cfg(4), &Progress::new(false));
        // 4 workers at ~2 ms each for 0.3 s: about 600 operations.
        assert!(r.ops > 200 && r.ops < 700, "{}", r.ops);
        assert!(r.latency.p50_ms >= 2.0);
        let mut c = cfg(4);
        c.count = Some(40);
        c.duration = Duration::from_secs(10);
        let started = Instant::now();
        let r = run_step("t", 1, &mut s, None, &c, &Progress::new(false));
        assert_eq!(r.ops, 40);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn errors_are_counted_by_code() {
        let mut s = sessions(2, Duration::from_millis(1));
        let mut c = cfg(2);
        c.workload = Workload::Keygen;
        let r = run_step("t", 1, &mut s, None, &c, &Progress::new(false));
        assert_eq!(r.ops, 0);
        assert!(r.errors > 0);
        assert_eq!(r.errors_by_code["CKR_DEVICE_ERROR"].count, r.errors);
    }

    #[test]
    fn open_loop_counts_queueing_from_the_intended_start() {
        // One worker at 5 ms per operation, asked for 400/s: the schedule falls behind, and
        // latencies grow far beyond the service time instead of hiding the backlog.
        let mut s = sessions(1, Duration::from_millis(5));
        let mut c = cfg(1);
        c.rate = Some(400.0);
        let r = run_step("t", 1, &mut s, None, &c, &Progress::new(false));
        assert!(r.latency.p99_ms > 50.0, "{:?}", r.latency);
        assert!(r.late_starts > 0);
        // Within capacity the latency is the service time.
        let mut s = sessions(4, Duration::from_millis(1));
        let mut c = cfg(4);
        c.rate = Some(200.0);
        let r = run_step("t", 1, &mut s, None, &c, &Progress::new(false));
        assert!(r.ops >= 50, "{}", r.ops);
        assert!(r.latency.p50_ms < 5.0, "{:?}", r.latency);
        assert_eq!(r.missed, 0);
    }

    #[test]
    fn open_loop_counts_what_it_could_not_start_as_missed() {
        // 400/s for 0.3 s is 120 measured requests; one worker at 50 ms each starts only a few
        // of them before the grace period (1 s) runs out. Every measured request either ran or
        // is missed.
        let mut s = sessions(1, Duration::from_millis(50));
        let mut c = cfg(1);
        c.rate = Some(400.0);
        let r = run_step("t", 1, &mut s, None, &c, &Progress::new(false));
        assert!(r.missed > 90, "{}", r.missed);
        assert_eq!(r.ops + r.missed, 120);
    }
}
