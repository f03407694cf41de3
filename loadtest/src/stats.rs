//! Measurements: per-worker [`Recorder`]s (latency histograms, error tallies, verification
//! counts) merged into one [`StepResult`] per run step, and the comparison of targets run in
//! alternation ([`Comparison`]).
//!
//! Latencies are recorded in microseconds in HdrHistogram (3 significant digits, 1 µs to one
//! hour; longer values are clamped to the top), and reported in milliseconds.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::workload::Op;

/// Highest latency a histogram tracks, in microseconds (one hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Most distinct error codes a recorder keeps; further codes are counted under `OTHER`.
const MAX_ERROR_CODES: usize = 64;
/// Longest error detail kept as an example.
const MAX_DETAIL: usize = 300;
/// The code of a signature that the independent verifier refused.
pub const VERIFY_FAILED: &str = "VERIFY_FAILED";

fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// How often one error code occurred, with the first detail seen.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ErrorTally {
    /// Occurrences.
    pub count: u64,
    /// The first error's message.
    pub example: String,
}

/// An operation's failure: a `CKR_*` name (or [`VERIFY_FAILED`]) and a detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpError {
    /// `CKR_*` name, e.g. `CKR_DEVICE_ERROR`.
    pub code: String,
    /// What happened.
    pub detail: String,
}

impl OpError {
    /// An error with a code and a detail.
    pub fn new(code: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.detail)
    }
}

/// `CamelCase` → `CKR_CAMEL_CASE`: PKCS#11 return value names from the variant names of
/// cryptoki's `RvError` and of cloudkey's `ErrorCode`, which follow the specification's names.
#[must_use]
pub fn ckr_name(camel: &str) -> String {
    let mut out = String::from("CKR_");
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// What one worker measured in one step.
#[derive(Debug)]
pub struct Recorder {
    all: Histogram<u64>,
    sign: Histogram<u64>,
    keygen: Histogram<u64>,
    errors: BTreeMap<String, ErrorTally>,
    error_count: u64,
    verified: u64,
    verify_failures: u64,
    late: u64,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    /// An empty recorder.
    #[must_use]
    pub fn new() -> Self {
        Self {
            all: histogram(),
            sign: histogram(),
            keygen: histogram(),
            errors: BTreeMap::new(),
            error_count: 0,
            verified: 0,
            verify_failures: 0,
            late: 0,
        }
    }

    /// A successful operation and its latency.
    pub fn success(&mut self, op: Op, latency: Duration) {
        let us = u64::try_from(latency.as_micros())
            .unwrap_or(u64::MAX)
            .max(1);
        self.all.saturating_record(us);
        match op {
            Op::Sign => self.sign.saturating_record(us),
            Op::Keygen => self.keygen.saturating_record(us),
        }
    }

    /// A failed operation.
    pub fn failure(&mut self, e: &OpError) {
        self.error_count += 1;
        let key = if self.errors.len() >= MAX_ERROR_CODES && !self.errors.contains_key(&e.code) {
            "OTHER".to_string()
        } else {
            e.code.clone()
        };
        let t = self.errors.entry(key).or_default();
        if t.count == 0 {
            t.example = e.detail.chars().take(MAX_DETAIL).collect();
        }
        t.count += 1;
    }

    /// A signature checked by the independent verifier.
    pub fn verification(&mut self, ok: bool) {
        if ok {
            self.verified += 1;
        } else {
            self.verify_failures += 1;
            self.failure(&OpError::new(
                VERIFY_FAILED,
                "the independent verifier refused a signature the target returned",
            ));
        }
    }

    /// An open-loop request whose intended start time had passed by more than a millisecond
    /// when a worker took it (the target, or the load generator, was behind).
    pub fn late_start(&mut self) {
        self.late += 1;
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &Recorder) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.all.add(&other.all);
        let _ = self.sign.add(&other.sign);
        let _ = self.keygen.add(&other.keygen);
        for (code, t) in &other.errors {
            let e = self.errors.entry(code.clone()).or_default();
            if e.count == 0 {
                e.example.clone_from(&t.example);
            }
            e.count += t.count;
        }
        self.error_count += other.error_count;
        self.verified += other.verified;
        self.verify_failures += other.verify_failures;
        self.late += other.late;
    }

    /// Successful operations.
    #[must_use]
    pub fn ok(&self) -> u64 {
        self.all.len()
    }
}

/// Latency percentiles of one kind of operation, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Operations measured.
    pub count: u64,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One point of a latency CDF: the fraction of operations at or below a latency.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CdfPoint {
    /// Latency, milliseconds.
    pub latency_ms: f64,
    /// Fraction of operations at or below it, 0..=1.
    pub fraction: f64,
}

/// Quantiles at which the CDF is sampled: dense towards the tail.
const CDF_QUANTILES: &[f64] = &[
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99,
    0.995, 0.999, 0.9995, 0.9999, 1.0,
];

fn cdf(h: &Histogram<u64>) -> Vec<CdfPoint> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES
        .iter()
        .map(|&q| CdfPoint {
            latency_ms: ms(h.value_at_quantile(q)),
            fraction: q,
        })
        .collect()
}

/// How a step loaded its target.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Mode {
    /// Closed loop: each worker issues its next request when the previous one returns.
    Closed,
    /// Open loop: requests are scheduled at a fixed rate; latency counts from the intended start.
    Open {
        /// Requests per second scheduled.
        rate: f64,
    },
}

/// The result of one step: one target, one worker count, one round.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StepResult {
    /// Target name.
    pub target: String,
    /// Round (from 1) in a comparison; 1 otherwise.
    pub round: u32,
    /// Workers (sessions).
    pub workers: usize,
    /// Closed or open loop.
    pub mode: Mode,
    /// Measured time (after warm-up), seconds.
    pub elapsed_s: f64,
    /// Successful operations.
    pub ops: u64,
    /// Successful operations per second.
    pub ops_per_s: f64,
    /// Failed operations (verification failures included).
    pub errors: u64,
    /// Failures by `CKR_*` code.
    pub errors_by_code: BTreeMap<String, ErrorTally>,
    /// Signatures checked by the independent verifier.
    pub verified: u64,
    /// Signatures the verifier refused (also counted in `errors`).
    pub verify_failures: u64,
    /// Open loop: requests of the schedule that were never started because the run had to end
    /// (the target was too slow for the rate).
    pub missed: u64,
    /// Open loop: requests started more than 1 ms after their intended time.
    pub late_starts: u64,
    /// Latency of all successful operations.
    pub latency: Latency,
    /// Latency of signatures alone.
    pub sign_latency: Latency,
    /// Latency of key generations alone.
    pub keygen_latency: Latency,
    /// Latency CDF of all successful operations.
    pub cdf: Vec<CdfPoint>,
}

impl StepResult {
    /// Builds a step's result from its merged recorder.
    #[must_use]
    pub fn new(
        target: &str,
        round: u32,
        workers: usize,
        mode: Mode,
        elapsed: Duration,
        rec: &Recorder,
        missed: u64,
    ) -> Self {
        let secs = elapsed.as_secs_f64();
        let ops = rec.ok();
        Self {
            target: target.to_string(),
            round,
            workers,
            mode,
            elapsed_s: secs,
            ops,
            ops_per_s: if secs > 0.0 { ops as f64 / secs } else { 0.0 },
            errors: rec.error_count,
            errors_by_code: rec.errors.clone(),
            verified: rec.verified,
            verify_failures: rec.verify_failures,
            missed,
            late_starts: rec.late,
            latency: Latency::of(&rec.all),
            sign_latency: Latency::of(&rec.sign),
            keygen_latency: Latency::of(&rec.keygen),
            cdf: cdf(&rec.all),
        }
    }

    /// One human line: throughput, latency percentiles, errors.
    #[must_use]
    pub fn summary_line(&self) -> String {
        let l = &self.latency;
        let mut s = format!(
            "{:<28} w={:<3} {:>10.1} ops/s  p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} ms  \
             ops {} errors {}",
            self.target,
            self.workers,
            self.ops_per_s,
            l.p50_ms,
            l.p90_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms,
            self.ops,
            self.errors
        );
        if self.verified > 0 || self.verify_failures > 0 {
            s.push_str(&format!(
                " verified {}/{}",
                self.verified,
                self.verified + self.verify_failures
            ));
        }
        if let Mode::Open { rate } = self.mode {
            s.push_str(&format!(
                "  [open loop {rate:.0}/s, late starts {}, missed {}]",
                self.late_starts, self.missed
            ));
        }
        for (code, t) in &self.errors_by_code {
            s.push_str(&format!("\n    {code} x{}: {}", t.count, t.example));
        }
        s
    }
}

/// Spread of a ratio over the rounds of a comparison.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Spread {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub median: f64,
    /// Largest.
    pub max: f64,
    /// Every round's value, in round order.
    pub values: Vec<f64>,
}

impl Spread {
    /// The spread of `values` (`None` when empty or when any value is not finite).
    #[must_use]
    pub fn of(values: Vec<f64>) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Self {
            min: sorted[0],
            median,
            max: sorted[n - 1],
            values,
        })
    }
}

/// The first target against another, round by round, at one worker count.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Comparison {
    /// The first target (numerator).
    pub a: String,
    /// The other target (denominator).
    pub b: String,
    /// Workers.
    pub workers: usize,
    /// `ops_per_s(a) / ops_per_s(b)` per round.
    pub throughput_ratio: Option<Spread>,
    /// `p99(a) / p99(b)` per round (below 1: `a` has the lower tail).
    pub p99_ratio: Option<Spread>,
    /// `a`'s throughput per round.
    pub a_ops_per_s: Option<Spread>,
    /// `b`'s throughput per round.
    pub b_ops_per_s: Option<Spread>,
}

impl Comparison {
    /// Compares target `a` with `b` at `workers` over `steps` (pairs by round).
    #[must_use]
    pub fn of(a: &str, b: &str, workers: usize, steps: &[StepResult]) -> Self {
        let pick = |t: &str| -> BTreeMap<u32, &StepResult> {
            steps
                .iter()
                .filter(|s| s.target == t && s.workers == workers)
                .map(|s| (s.round, s))
                .collect()
        };
        let (sa, sb) = (pick(a), pick(b));
        let pairs: Vec<(&StepResult, &StepResult)> = sa
            .iter()
            .filter_map(|(r, x)| sb.get(r).map(|y| (*x, *y)))
            .collect();
        let ratio = |f: &dyn Fn(&StepResult) -> f64| {
            Spread::of(
                pairs
                    .iter()
                    .filter(|(x, y)| f(y) > 0.0 && f(x) > 0.0)
                    .map(|(x, y)| f(x) / f(y))
                    .collect(),
            )
        };
        Self {
            a: a.to_string(),
            b: b.to_string(),
            workers,
            throughput_ratio: ratio(&|s| s.ops_per_s),
            p99_ratio: ratio(&|s| s.latency.p99_ms),
            a_ops_per_s: Spread::of(pairs.iter().map(|(x, _)| x.ops_per_s).collect()),
            b_ops_per_s: Spread::of(pairs.iter().map(|(_, y)| y.ops_per_s).collect()),
        }
    }

    /// One human line.
    #[must_use]
    pub fn summary_line(&self) -> String {
        let f = |s: &Option<Spread>, unit: &str| match s {
            Some(s) => format!(
                "median {:.3}{unit} (min {:.3}, max {:.3}, n={})",
                s.median,
                s.min,
                s.max,
                s.values.len()
            ),
            None => "n/a".to_string(),
        };
        format!(
            "{} / {} at {} workers: throughput ratio {}; p99 ratio {}",
            self.a,
            self.b,
            self.workers,
            f(&self.throughput_ratio, "x"),
            f(&self.p99_ratio, "x"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ckr_names() {
        assert_eq!(ckr_name("DeviceError"), "CKR_DEVICE_ERROR");
        assert_eq!(ckr_name("UserNotLoggedIn"), "CKR_USER_NOT_LOGGED_IN");
    }

    #[test]
    fn recorders_merge() {
        let mut a = Recorder::new();
        a.success(Op::Sign, Duration::from_micros(100));
        a.failure(&OpError::new("CKR_DEVICE_ERROR", "x"));
        let mut b = Recorder::new();
        b.success(Op::Keygen, Duration::from_millis(3));
        b.verification(false);
        b.verification(true);
        a.merge(&b);
        let r = StepResult::new("t", 1, 2, Mode::Closed, Duration::from_secs(2), &a, 0);
        assert_eq!(r.ops, 2);
        assert_eq!(r.errors, 2);
        assert_eq!(r.verified, 1);
        assert_eq!(r.verify_failures, 1);
        assert_eq!(r.errors_by_code["CKR_DEVICE_ERROR"].count, 1);
        assert_eq!(r.errors_by_code[VERIFY_FAILED].count, 1);
        assert!((r.ops_per_s - 1.0).abs() < 1e-9);
        assert_eq!(r.sign_latency.count, 1);
        assert_eq!(r.keygen_latency.count, 1);
        assert!(r.latency.max_ms >= 2.9);
    }

    #[test]
    fn spreads_and_comparisons() {
        let s = Spread::of(vec![3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 10.0));
        assert!(Spread::of(vec![]).is_none());
        let mk = |t: &str, round, ops: f64| {
            let mut r = StepResult::new(
                t,
                round,
                4,
                Mode::Closed,
                Duration::from_secs(1),
                &Recorder::new(),
                0,
            );
            r.ops_per_s = ops;
            r
        };
        let steps = vec![
            mk("a", 1, 200.0),
            mk("b", 1, 100.0),
            mk("a", 2, 300.0),
            mk("b", 2, 100.0),
        ];
        let c = Comparison::of("a", "b", 4, &steps);
        let t = c.throughput_ratio.unwrap();
        assert_eq!((t.min, t.median, t.max), (2.0, 2.5, 3.0));
    }
}
