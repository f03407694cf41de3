//! What a forwarded write carries of its caller, and the leader's check of it.
//!
//! A node forwards a write to the leader when it is not the leader itself. A node certificate
//! alone must not be enough to have a change committed (a stolen node key would otherwise be
//! an operator, every token's user and every officer at once), so each command has a class
//! ([`CommandClass`]):
//!
//! - [`CommandClass::Node`] commands are forwarded as they are ([`PeerRequest::Forward`]).
//! - [`CommandClass::Session`] commands travel with the caller's own proof
//!   ([`PeerRequest::ForwardAs`] with an [`Authority`]): the session grant the client sent
//!   (MACed with a key only the chips derive) and the certificate identity it came with. The
//!   leader checks that grant again as if the caller had asked it, and that the command fits
//!   it (the grant's token, user and login) ([`Authorizer`], implemented by the service
//!   layer).
//! - [`CommandClass::Direct`] commands (operator, officer and terminal acts, and what a PIN
//!   alone authorises: a login, `C_InitToken`) are never forwarded: a node that is not the
//!   leader answers such a request with `NotLeader` and the leader's address before it does
//!   anything (`RequestSpec::leader`), the client asks the leader, and the leader
//!   authenticates the caller by its own TLS connection and checks the PIN itself. (Checking
//!   a forwarded PIN again on the leader would make the leader an uncounted PIN oracle for a
//!   node key.)
//!
//! The caller's authority reaches [`super::RaftNode::write`] through a task-local set by the
//! request handler for the request's duration ([`with_authority`]), so the services' write
//! paths need not carry it.

use cloudkey_protocol::msg::Auth;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use super::PeerRequest;
use crate::error::Result;
use crate::state::Command;
#[cfg(doc)]
use crate::state::CommandClass;

/// A caller's proof, carried with a forwarded [`CommandClass::Session`] command.
#[derive(Clone, Serialize, Deserialize)]
pub enum Authority {
    /// No client request is behind the write (or it carries no proof).
    Node,
    /// A token request's session: its token and grant as the client sent them, and the
    /// certificate identity (`cloudkey://…` URI) the request came with.
    Grant {
        /// The token and grant.
        auth: Auth,
        /// The caller's certificate identity.
        identity: String,
    },
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node => f.write_str("Node"),
            Self::Grant { auth, identity } => f
                .debug_struct("Grant")
                .field("token", &auth.token)
                .field("identity", identity)
                .finish_non_exhaustive(),
        }
    }
}

tokio::task_local! {
    static CALLER: Authority;
}

/// Runs `f` with `authority` as the caller of every write it makes.
pub async fn with_authority<F: std::future::Future>(authority: Authority, f: F) -> F::Output {
    CALLER.scope(authority, f).await
}

/// The caller of the write being made ([`Authority::Node`] outside [`with_authority`]).
pub(crate) fn current() -> Authority {
    CALLER.try_with(Clone::clone).unwrap_or(Authority::Node)
}

/// The leader's check of a forwarded [`CommandClass::Session`] command: the caller's proof
/// holds now and the command is one it permits.
pub trait Authorizer: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok` when `authority` permits `cmd`; the refusal to send back otherwise.
    fn authorize<'a>(
        &'a self,
        cmd: &'a Command,
        authority: &'a Authority,
    ) -> BoxFuture<'a, Result<()>>;
}
