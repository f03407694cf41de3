//! `cloudkey-node`: a cloudkey cluster node and the operator CLI.
//!
//! * [`state`]: the replicated state (tokens, objects, audit chain) and its applied view.
//! * [`raft`]: openraft wiring: the redb log store, the state machine, the QUIC network, write
//!   forwarding to the leader, and node-to-node requests (domain key transfer).
//! * [`service`]: what requests do: login and session grants, PKCS#11 objects, key operations on
//!   the chip pool, administration.
//! * [`handler`]: a client request in, a response out; the one place errors become wire codes.
//! * [`server`]: the QUIC endpoint for clients (`cloudkey/1`) and peers (`cloudkey-raft/1`).
//! * [`config`], [`pki`], [`dev`]: node configuration, the cluster PKI, the local dev cluster.
//!
//! Where each concern lives across the workspace, and how a request flows through the files:
//! `docs/architecture.md` at the root of the workspace.
#![forbid(unsafe_code)]

pub mod chips;
pub mod config;
pub mod dev;
pub mod error;
pub mod governance;
pub mod handler;
pub mod pki;
pub mod raft;
pub mod server;
pub mod service;
pub mod state;

pub use error::{NodeError, Result};
