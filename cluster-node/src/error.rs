//! [`NodeError`], the one error type of the node. `handler.rs` turns it into a wire
//! [`ErrorCode`](cloudkey_protocol::ErrorCode) in exactly one function.

use cloudkey_chip::ChipError;
use cloudkey_protocol::{ErrorCode, WireError};

/// Result with [`NodeError`].
pub type Result<T, E = NodeError> = std::result::Result<T, E>;

/// Everything a node operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// A refusal with a specific PKCS#11 code (bad template, wrong PIN, unknown object, ...).
    #[error("{0}")]
    Refused(WireError),
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
    /// Storage failure (redb, filesystem).
    #[error("storage: {0}")]
    Storage(String),
    /// A peer node failed or could not be reached.
    #[error("peer: {0}")]
    Peer(String),
    /// Configuration error.
    #[error("config: {0}")]
    Config(String),
    /// Anything else, with context.
    #[error("internal: {0}")]
    Internal(String),
}

impl NodeError {
    /// A refusal with `code` and a detail.
    pub fn refuse(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::Refused(WireError::new(code, detail))
    }
}
