//! `cloudkey-loadtest`: capacity tests of cloudkey and of any PKCS#11 token.
//!
//! * [`target`]: what is loaded: a PKCS#11 module through `cryptoki`, the cluster through the
//!   protocol client, or in-process software chips; each prepares its key at setup and opens a
//!   session per worker.
//! * [`driver`]: one step: closed or open loop (no coordinated omission), bounded by time and
//!   count, with warm-up and a live progress line.
//! * [`stats`]: latency histograms (HdrHistogram), errors by `CKR_*` code, verification counts,
//!   and the ratios of targets compared in alternation.
//! * [`workload`]: algorithms, operations, the data signed, and the independent verifiers.
//! * [`plot`]: the SVG plot (throughput vs workers, latency CDF).
//!
//! The binary's `--help` and `BENCHMARKS.md` at the root of the workspace show how it is used.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod driver;
pub mod plot;
pub mod stats;
pub mod target;
pub mod workload;
