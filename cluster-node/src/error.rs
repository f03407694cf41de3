//! [`NodeError`], the one error type of the node. `handler.rs` turns it into a wire
//! [`ErrorCode`](cloudkey_protocol::ErrorCode) in exactly one function (`handler::to_wire`).
//!
//! A failure with a cause carries the cause as its `#[source]` (a chip, file or socket, TLS,
//! redb, openraft, peer-call, cluster-client, decoding, encoding, certificate, random
//! generator, PIN hashing or task error, or a library's refusal of a setting), so logs show the
//! chain and a caller can match on what failed. The string variants are only for conditions that have no cause of their own: a
//! timeout (`Timeout`), a setting or argument refused by our own check (`Config`), a broken
//! invariant or an unexpected answer (`Internal`, `Peer`), a snapshot whose contents are
//! inconsistent (`Storage`), Raft stopped, and what a peer reported across the wire (`Raft`,
//! `Peer`: the peer's cause stayed on the peer, its detail is all that arrives).

use cloudkey_chip::ChipError;
use cloudkey_protocol::tls::TlsError;
use cloudkey_protocol::ErrorCode;

use crate::raft::network::CallError;
use crate::state::Refusal;

/// A cause of any type, for the variants whose source is one of a library's many error types
/// (openraft's errors are generic over the call that failed).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

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
    /// openraft could not complete the operation (no quorum, shutting down, refused ...).
    #[error("raft: {what}: {source}")]
    Openraft {
        /// The operation.
        what: &'static str,
        /// openraft's error.
        #[source]
        source: BoxError,
    },
    /// Raft is shut down, or a peer's Raft failed (its detail, as it crossed the wire).
    #[error("raft: {0}")]
    Raft(String),
    /// openraft refused the Raft timings.
    #[error("config: raft timings: {0}")]
    RaftConfig(#[source] Box<openraft::ConfigError>),
    /// Waiting for the client's applied index, a quorum or a peer took too long.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The Raft log database failed.
    #[error("storage: {what}: {source}")]
    Db {
        /// What was being done, with the path.
        what: String,
        /// redb's error (boxed: it is large, and the node's results are on the hot path).
        #[source]
        source: Box<redb::Error>,
    },
    /// Stored bytes (a snapshot) do not decode.
    #[error("storage: {what} does not decode: {source}")]
    Decode {
        /// What, with the path.
        what: String,
        /// The decoder's error.
        #[source]
        source: BoxError,
    },
    /// A snapshot's contents are inconsistent (no cause but the contents themselves).
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
    /// A call to a peer node failed.
    #[error("peer: {addr}: {source}")]
    Call {
        /// The peer's address.
        addr: String,
        /// How the call failed (boxed, as the others that would make every result large).
        #[source]
        source: Box<CallError>,
    },
    /// A call through the cluster client failed (`cloudkey dev`).
    #[error("peer: {what}: {source}")]
    Client {
        /// What was asked.
        what: String,
        /// The client's error.
        #[source]
        source: Box<cloudkey_protocol::client::ClientError>,
    },
    /// A peer failed with no local cause: what it reported, or an answer of the wrong kind.
    #[error("peer: {0}")]
    Peer(String),
    /// A setting or argument refused by our own checks.
    #[error("config: {0}")]
    Config(String),
    /// A setting or argument that a library refused (the TLS material, argon2's parameters,
    /// the NVRAM key file, the configuration file or the PKI directory that cannot be read).
    /// Shown as one line, `what: cause`.
    #[error("{what}: {source}")]
    Setting {
        /// The setting, with the file or path.
        what: String,
        /// The library's error.
        #[source]
        source: BoxError,
    },
    /// A certificate could not be made or read (rcgen, x509).
    #[error("internal: certificate generation: {0}")]
    Cert(#[source] rcgen::Error),
    /// The system random generator failed.
    #[error("internal: the system random generator failed: {0}")]
    Random(#[source] aws_lc_rs::error::Unspecified),
    /// A chip could not be opened or failed its self test at start-up.
    #[error("internal: chip {index} ({what}): {source}")]
    ChipStart {
        /// The chip's index in the configuration.
        index: usize,
        /// The chip (its kind or device path).
        what: String,
        /// The chip's error.
        #[source]
        source: Box<ChipError>,
    },
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every node call returns a `Result<_, NodeError>`, the signing path included: the large
    /// causes (redb's, a peer call's, the client's) are boxed so that carrying them does not
    /// make every result larger than a chip error needs.
    #[test]
    fn a_node_error_is_no_larger_than_a_chip_error_and_its_tag() {
        assert!(
            std::mem::size_of::<NodeError>() <= std::mem::size_of::<ChipError>() + 8,
            "NodeError is {} bytes",
            std::mem::size_of::<NodeError>()
        );
    }
}
