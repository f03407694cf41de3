//! Test support shared by the tests of every cloudkey crate (dev-only, `publish = false`):
//!
//! * [`pki`]: a throwaway cluster CA (rcgen) in a temporary directory, and the node, operator
//!   and client certificates `cloudkey pki` would issue, as PEM strings and files;
//! * [`wait`]: [`wait_for`] (async) and [`wait_for_blocking`]: poll a condition until it holds
//!   or a deadline passes; tests wait on conditions, never for a fixed time; and
//!   [`bind_retrying`] for a server taking back its port;
//! * [`process`]: a child process that announces itself with one stdout line (`LISTENING
//!   <addr>` for `cloudkey-node`, `PTY <path>` for `cloudkey-chip-emulator`), with signals,
//!   kill, restart, and a `Drop` that kills it and shows its log when the test failed;
//!   [`NodeProcess`] is that for the node binary, with its address.
//!
//! It depends on no workspace crate (see its `Cargo.toml`), so what needs the crates' own types
//! (`TlsMaterial`, `Client`, node configurations) stays with the tests that have them, on top of
//! this crate: `protocol/tests/common`, and the multi-process harness `cloudkey-tests`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod pki;
pub mod process;
pub mod wait;

pub use pki::{Issued, LeafSpec, PemFiles, TestPki};
pub use process::{Launch, NodeProcess, Process, StartError};
pub use wait::{bind_retrying, wait_for, wait_for_blocking, TimedOut};
