//! [`NodeError`], the one error type of the node. `handler.rs` turns it into a wire
//! [`ErrorCode`](cloudkey_protocol::ErrorCode) in exactly one function (`handler::to_wire`).
//!
//! A failure with a cause carries the cause as its `#[source]` (a chip, file or socket, TLS,
//! encoding, PIN hashing or task error), so logs show the chain and a caller can match on what
//! failed; the string variants are for conditions that have no cause of their own (a timeout,
//! a bad setting, a broken invariant) and for the callers not yet moved to a typed variant.

use cloudkey_chip::ChipError;
use cloudkey_protocol::tls::TlsError;
use cloudkey_protocol::ErrorCode;

use crate::state::Refusal;

/// Result with [`NodeError`].
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Everything a node operation can fail with. It never leaves the workspace, so it is
/// exhaustive: a new variant must be mapped in `handler::to_wire`.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A refusal with a specific PKCS#11 code (bad template, wrong PIN, unknown object, ...):
    /// the one refusal type, the state's and governance's, turned into this with `?`.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// A chip failed.
    #[error("chip: {0}")]
    Chip(#[from] ChipError),
    /// This node is not the leader and could not forward the write.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader's client address, if known.
        leader: Option<String>,
    },
    /// The cluster has not been initialised.
    #[error("the cluster is not initialised")]
    NotInitialized,
    /// Raft could not complete the operation (no quorum, shutting down, ...).
    #[error("raft: {0}")]
    Raft(String),
    /// Waiting for the client's applied index, a quorum or a peer took too long.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Storage failure (redb, snapshot contents).
    #[error("storage: {0}")]
    Storage(String),
    /// A file or socket operation failed.
    #[error("storage: {what}: {source}")]
    Io {
        /// What was being done, with the path or address.
        what: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// TLS material was refused.
    #[error("tls: {0}")]
    Tls(#[from] TlsError),
    /// Something could not be encoded (a command, a session grant).
    #[error("internal: encoding {what}: {source}")]
    Encode {
        /// What.
        what: &'static str,
        /// The encoder's error.
        #[source]
        source: postcard::Error,
    },
    /// PIN hashing failed.
    #[error("internal: argon2: {0}")]
    PinHash(#[source] argon2::password_hash::Error),
    /// A task the operation ran on failed (panicked or was cancelled).
    #[error("internal: {what} task failed: {source}")]
    Task {
        /// Which task.
        what: &'static str,
        /// How it ended.
        #[source]
        source: tokio::task::JoinError,
    },
    /// A peer node failed or could not be reached.
    #[error("peer: {0}")]
    Peer(String),
    /// Configuration error.
    #[error("config: {0}")]
    Config(String),
    /// A broken invariant, with context.
    #[error("internal: {0}")]
    Internal(String),
}

impl NodeError {
    /// A refusal with `code` and a detail.
    pub fn refuse(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::Refused(Refusal::new(code, detail))
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| Self::Io { what, source }
    }
}
