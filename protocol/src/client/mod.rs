//! The async client every front end uses (the PKCS#11 module, the CLI, the load tester, the
//! gateway).
//!
//! * One QUIC endpoint per [`Client`], one pooled connection per node (`pool.rs`), one
//!   bidirectional stream per request: `ClientRequest` frame, `finish()`, `ClientResponse`
//!   frame. Thousands of calls share a connection concurrently.
//! * A sticky preferred node, chosen at random at start so that clients spread over the
//!   cluster; on a transport failure the call moves to the next node, within its deadline.
//! * Leader hints (`NotLeader`) are followed, and the leader is remembered for later writes;
//!   reads stay on the preferred node, so signing load stays spread.
//! * Read-your-writes: every request carries the highest applied index seen in any response
//!   ([`Client::max_applied`]).
//! * Every call is bounded by its deadline: dial, stream credit, send, answer, retries and
//!   backoffs. When no node answers in time the call returns [`ClientError::Unavailable`].
//!
//! # Retry rules (`retry.rs`)
//! * A transport failure before the request was fully handed to QUIC (dial, handshake, stream
//!   open, write) means no node acted on it: any request is retried on the next node.
//! * After the request was sent, a read is retried on the next node; a write
//!   ([`Request::is_write`]) is not, since it may have been committed: the call fails with
//!   [`ClientError::Unavailable`] saying that the outcome is unknown. Idempotent writes
//!   ([`Request::is_idempotent`]) are retried like reads.
//! * A stream reset or stop with [`reset::OVERLOADED`] means the node did not process the
//!   request: retried like `Busy`, writes included. [`reset::MALFORMED`] and
//!   [`reset::FRAME_TOO_LARGE`] are [`ClientError::Protocol`].
//! * Remote `Unavailable` (the node could not reach a quorum): retried like `Busy` for reads
//!   and idempotent writes; returned at once for other writes, whose outcome is unknown.
//! * Remote `NotLeader` with a hint: retried on the hinted node at once (at most 8 hints per
//!   call; a new address is added to the endpoints). `Busy`, `Stale`, and `NotLeader` without a
//!   usable hint: retried on the next node after a jittered backoff (10 ms doubling to 200 ms).
//!   When the deadline comes, the last refusal is returned as [`ClientError::Remote`].
//! * Any other refusal is returned at once as [`ClientError::Remote`].
//! * After a whole round of nodes failed at the transport level, the call pauses (25 ms
//!   doubling to 500 ms, jittered). No wait outlasts the deadline: if it would, the call
//!   returns its last error at once.

mod pool;
mod retry;
mod settings;

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tracing::Instrument;
use zeroize::Zeroizing;

pub use self::pool::{Dialer, NodeConnection, NodeSlot};
pub use self::settings::{
    ClientSettings, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_DEADLINE_MS, MAX_CONFIGURED_ENDPOINTS,
    MAX_TIMEOUT_MS,
};
use crate::error::{ErrorCode, WireError};
use crate::frame::{self, reset, StreamError, MAX_FRAME};
use crate::msg::{ClientResponse, Request, Response};
use crate::tls::{self, TlsMaterial};
use crate::{ALPN_CLIENT, PROTOCOL_VERSION};

/// Longest deadline a call accepts; longer ones are shortened to it.
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Why a call failed.
#[derive(Debug, thiserror::Error, Clone)]
pub enum ClientError {
    /// The node refused the request: the code (and detail) come from the node.
    #[error("refused by the cluster: {0}")]
    Remote(WireError),
    /// No node answered within the deadline (transport failures, nodes down or unreachable),
    /// or a write was sent but its outcome is unknown (the message says so).
    #[error("cluster unavailable: {0}")]
    Unavailable(String),
    /// A node's answer was malformed, or it refused our frame as malformed or too large.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The client configuration or TLS material is unusable.
    #[error("client configuration: {0}")]
    Config(String),
}

impl ClientError {
    /// The error code a front end reports: the node's code for [`ClientError::Remote`],
    /// [`ErrorCode::Unavailable`] for [`ClientError::Unavailable`], [`ErrorCode::DeviceError`]
    /// for [`ClientError::Protocol`], [`ErrorCode::GeneralError`] for [`ClientError::Config`].
    #[must_use]
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Remote(e) => e.code,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Protocol(_) => ErrorCode::DeviceError,
            Self::Config(_) => ErrorCode::GeneralError,
        }
    }
}

impl From<tls::TlsError> for ClientError {
    fn from(e: tls::TlsError) -> Self {
        Self::Config(e.to_string())
    }
}

/// The wire form of [`crate::msg::ClientRequest`], borrowing the request: postcard encodes a
/// struct as its fields in order, so the bytes are the same, and the request (which may hold
/// PINs) is not cloned for each attempt.
#[derive(Serialize)]
struct ClientRequestRef<'a> {
    version: u16,
    min_applied: u64,
    request: &'a Request,
}

/// How one attempt on one node failed.
#[derive(Debug)]
enum Failure {
    /// A transport failure. `delivered`: the request was fully handed to QUIC, so the node may
    /// have processed it.
    Transport { detail: String, delivered: bool },
    /// The node reset or stopped the stream with [`reset::OVERLOADED`]: not processed.
    Overloaded(String),
    /// The deadline expired during the attempt.
    Deadline { detail: String, delivered: bool },
    /// Not retried: a malformed answer, or the node refused our frame.
    Protocol(String),
}

/// What a call keeps of its failures, to report the most useful one at its deadline.
enum LastError {
    None,
    Transport(String),
    Remote(WireError),
}

impl LastError {
    fn into_error(self, deadline: Duration) -> ClientError {
        match self {
            LastError::Remote(e) => ClientError::Remote(e),
            LastError::Transport(d) => ClientError::Unavailable(format!(
                "no node answered within {} ms; last failure: {d}",
                deadline.as_millis()
            )),
            LastError::None => ClientError::Unavailable(format!(
                "no node answered within {} ms",
                deadline.as_millis()
            )),
        }
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    configured: Vec<SocketAddr>,
    pool: pool::Pool,
    deadline: Duration,
    connect_timeout: Duration,
    max_applied: AtomicU64,
    ipv6: bool,
    closed: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Tell the nodes at once instead of letting them time the connections out.
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"client dropped");
    }
}

/// A handle on the cluster; cheap to clone (all clones share the endpoint, the connections
/// and the applied index), `Send + Sync`.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.pool.addrs())
            .field("preferred", &self.inner.pool.preferred())
            .field("max_applied", &self.max_applied())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client from settings: loads the TLS files, resolves the endpoints, and binds
    /// one UDP socket. Must be called within a tokio runtime (the endpoint's I/O runs on it);
    /// DNS names among the endpoints are resolved here, blocking.
    ///
    /// # Errors
    /// [`ClientError::Config`] for unusable settings or TLS material, or outside a runtime.
    pub fn new(settings: &ClientSettings) -> Result<Client, ClientError> {
        settings.validate()?;
        let tls = TlsMaterial::load(&settings.tls_files())?;
        let endpoints = settings.resolve_endpoints()?;
        Self::with_material(
            endpoints,
            tls,
            settings.deadline(),
            settings.connect_timeout(),
        )
    }

    /// Builds a client from parts. Binds `0.0.0.0:0`, or `[::]:0` (dual-stack) if an endpoint
    /// is IPv6. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// [`ClientError::Config`] for no, duplicate or too many endpoints, a zero deadline or
    /// connect timeout, unusable TLS material, or when no UDP socket can be bound (or outside a
    /// runtime).
    pub fn with_material(
        endpoints: Vec<SocketAddr>,
        tls: TlsMaterial,
        deadline: Duration,
        connect_timeout: Duration,
    ) -> Result<Client, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Config("no node endpoint".into()));
        }
        if endpoints.len() > MAX_CONFIGURED_ENDPOINTS {
            return Err(ClientError::Config(format!(
                "{} endpoints; at most {MAX_CONFIGURED_ENDPOINTS}",
                endpoints.len()
            )));
        }
        for (i, e) in endpoints.iter().enumerate() {
            if endpoints[..i].contains(e) {
                return Err(ClientError::Config(format!("endpoint {e} listed twice")));
            }
        }
        if deadline.is_zero() || connect_timeout.is_zero() {
            return Err(ClientError::Config(
                "the deadline and the connect timeout must be positive".into(),
            ));
        }
        let config = tls::client_config(&tls, ALPN_CLIENT)?;
        let ipv6 = endpoints.iter().any(SocketAddr::is_ipv6);
        let bind = if ipv6 {
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0))
        } else {
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))
        };
        let mut endpoint = quinn::Endpoint::client(bind)
            .map_err(|e| ClientError::Config(format!("cannot create a QUIC endpoint: {e}")))?;
        endpoint.set_default_client_config(config);
        let start = usize::try_from(retry::random_u64() % endpoints.len() as u64).unwrap_or(0);
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                pool: pool::Pool::new(&endpoints, start),
                configured: endpoints,
                deadline: deadline.min(MAX_DEADLINE),
                connect_timeout,
                max_applied: AtomicU64::new(0),
                ipv6,
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// Sends `request` and returns the node's answer, with failover, retries and leader
    /// hints, all within the configured deadline.
    ///
    /// # Errors
    /// [`ClientError::Remote`] when a node refused the request (or kept answering `Busy`,
    /// `Stale` or `NotLeader` until the deadline); [`ClientError::Unavailable`] when no node
    /// answered in time or a sent write's outcome is unknown; [`ClientError::Protocol`].
    pub async fn call(&self, request: Request) -> Result<Response, ClientError> {
        self.call_with_deadline(request, self.inner.deadline).await
    }

    /// As [`Client::call`] with another deadline (at most [`MAX_DEADLINE`]).
    ///
    /// # Errors
    /// As [`Client::call`].
    pub async fn call_with_deadline(
        &self,
        request: Request,
        deadline: Duration,
    ) -> Result<Response, ClientError> {
        let deadline = deadline.min(MAX_DEADLINE);
        let span = tracing::debug_span!(
            "call",
            request = request.name(),
            deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        );
        self.run_call(&request, deadline).instrument(span).await
    }

    /// Sends `request` to endpoint `index` only (of [`Client::known_endpoints`]; the
    /// configured endpoints come first, in order): no failover, no retry, no hint following.
    /// For per-node commands such as `cloudkey status`.
    ///
    /// # Errors
    /// [`ClientError::Config`] for an index out of range, else as [`Client::call`].
    pub async fn call_node(&self, index: usize, request: Request) -> Result<Response, ClientError> {
        let Some(slot) = self.inner.pool.get(index) else {
            return Err(ClientError::Config(format!(
                "no endpoint {index}: {} known",
                self.inner.pool.len()
            )));
        };
        let deadline = self.inner.deadline;
        let span = tracing::debug_span!(
            "call_node",
            request = request.name(),
            node = %slot.addr,
            node_id = tracing::field::Empty
        );
        async {
            self.check_open()?;
            let until = Instant::now() + deadline;
            match self.attempt(&slot, &request, until).await {
                Ok(resp) => resp.result.map_err(ClientError::Remote),
                Err(Failure::Protocol(d)) => Err(ClientError::Protocol(d)),
                Err(
                    Failure::Transport { detail, delivered }
                    | Failure::Deadline { detail, delivered },
                ) => Err(ClientError::Unavailable(unavailable_detail(
                    &request, slot.addr, &detail, delivered,
                ))),
                Err(Failure::Overloaded(d)) => {
                    Err(ClientError::Remote(WireError::new(ErrorCode::Busy, d)))
                }
            }
        }
        .instrument(span)
        .await
    }

    /// The highest applied log index seen in any response (success or error).
    #[must_use]
    pub fn max_applied(&self) -> u64 {
        self.inner.max_applied.load(Ordering::Relaxed)
    }

    /// The configured endpoints, in order. Leader hints may add more: see
    /// [`Client::known_endpoints`].
    #[must_use]
    pub fn endpoints(&self) -> &[SocketAddr] {
        &self.inner.configured
    }

    /// Every endpoint the client knows: the configured ones, then those learnt from leader
    /// hints (at most 64 in all). Indices of [`Client::current_node`] and
    /// [`Client::call_node`] refer to this list.
    #[must_use]
    pub fn known_endpoints(&self) -> Vec<SocketAddr> {
        self.inner.pool.addrs()
    }

    /// Index of the endpoint reads currently go to first.
    #[must_use]
    pub fn current_node(&self) -> usize {
        self.inner.pool.preferred()
    }

    /// Makes endpoint `index` (of [`Client::known_endpoints`]) the preferred one.
    ///
    /// # Errors
    /// [`ClientError::Config`] for an index out of range.
    pub fn set_preferred(&self, index: usize) -> Result<(), ClientError> {
        if index >= self.inner.pool.len() {
            return Err(ClientError::Config(format!(
                "no endpoint {index}: {} known",
                self.inner.pool.len()
            )));
        }
        self.inner.pool.set_preferred(index);
        Ok(())
    }

    /// Closes every connection; later calls on any clone fail with
    /// [`ClientError::Unavailable`] at once. Dropping the last clone does the same.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Relaxed);
        self.inner.pool.close_all();
        self.inner
            .endpoint
            .close(quinn::VarInt::from_u32(0), b"client closed");
    }

    fn check_open(&self) -> Result<(), ClientError> {
        if self.inner.closed.load(Ordering::Relaxed) {
            Err(ClientError::Unavailable("the client was closed".into()))
        } else {
            Ok(())
        }
    }

    async fn run_call(
        &self,
        request: &Request,
        deadline: Duration,
    ) -> Result<Response, ClientError> {
        self.check_open()?;
        let pool = &self.inner.pool;
        let until = Instant::now() + deadline;
        let is_write = request.is_write();
        // A write that may have been applied must not be sent again, unless it is idempotent.
        let unsafe_retry = !request.is_idempotent();
        let mut next = match (is_write, pool.leader()) {
            (true, Some(leader)) => leader,
            _ => pool.preferred(),
        };
        let mut last = LastError::None;
        let mut transport_failures: u32 = 0;
        let mut remote_retries: u32 = 0;
        let mut hints: u32 = 0;
        let mut via_hint = false;

        loop {
            if Instant::now() >= until {
                return Err(last.into_error(deadline));
            }
            // Slots are never removed, so `next` is always valid; fall back to 0 regardless.
            let (index, slot) = match pool.get(next) {
                Some(slot) => (next, slot),
                None => match pool.get(0) {
                    Some(slot) => (0, slot),
                    None => return Err(ClientError::Config("no node endpoint".into())),
                },
            };
            let span = tracing::debug_span!(
                "attempt",
                node = %slot.addr,
                index,
                node_id = tracing::field::Empty
            );
            let outcome = self.attempt(&slot, request, until).instrument(span).await;
            let wait = match outcome {
                Ok(resp) => {
                    let refusal = match resp.result {
                        Ok(response) => {
                            if via_hint && is_write {
                                pool.set_leader(index);
                            }
                            return Ok(response);
                        }
                        Err(refusal) => refusal,
                    };
                    tracing::debug!(node = resp.node, code = %refusal.code, "refused");
                    match refusal.code {
                        ErrorCode::NotLeader => {
                            pool.forget_leader(index);
                            let hinted = match refusal.leader_hint.as_deref() {
                                Some(h) if hints < retry::MAX_HINTS => {
                                    self.resolve_hint(h, until).await
                                }
                                _ => None,
                            };
                            match hinted {
                                Some(target) if target != index => {
                                    hints = hints.saturating_add(1);
                                    via_hint = true;
                                    next = target;
                                    last = LastError::Remote(refusal);
                                    continue;
                                }
                                _ => {
                                    next = (index + 1) % pool.len().max(1);
                                    last = LastError::Remote(refusal);
                                }
                            }
                        }
                        ErrorCode::Busy | ErrorCode::Stale => {
                            next = pool.move_on_from(index);
                            last = LastError::Remote(refusal);
                        }
                        // The node could not reach a quorum (e.g. the leader just died): an
                        // idempotent request may simply be asked again, elsewhere.
                        ErrorCode::Unavailable if !unsafe_retry => {
                            next = pool.move_on_from(index);
                            last = LastError::Remote(refusal);
                        }
                        _ => return Err(ClientError::Remote(refusal)),
                    }
                    via_hint = false;
                    remote_retries = remote_retries.saturating_add(1);
                    retry::backoff(remote_retries - 1, retry::REMOTE_BASE, retry::REMOTE_CAP)
                }
                Err(Failure::Protocol(detail)) => return Err(ClientError::Protocol(detail)),
                Err(Failure::Overloaded(detail)) => {
                    tracing::debug!(%detail, "node overloaded");
                    next = pool.move_on_from(index);
                    last = LastError::Remote(WireError::new(ErrorCode::Busy, detail));
                    via_hint = false;
                    remote_retries = remote_retries.saturating_add(1);
                    retry::backoff(remote_retries - 1, retry::REMOTE_BASE, retry::REMOTE_CAP)
                }
                Err(Failure::Deadline { detail, delivered }) => {
                    pool.move_on_from(index);
                    let detail = unavailable_detail(request, slot.addr, &detail, delivered);
                    return Err(match last {
                        // A refusal (e.g. Busy) says more than our own impatience, unless the
                        // last attempt may have done a write.
                        LastError::Remote(e) if !(delivered && unsafe_retry) => {
                            ClientError::Remote(e)
                        }
                        _ => ClientError::Unavailable(detail),
                    });
                }
                Err(Failure::Transport { detail, delivered }) => {
                    tracing::debug!(%detail, delivered, "transport failure");
                    next = pool.move_on_from(index);
                    if delivered && unsafe_retry {
                        return Err(ClientError::Unavailable(unavailable_detail(
                            request, slot.addr, &detail, true,
                        )));
                    }
                    last = LastError::Transport(detail);
                    via_hint = false;
                    transport_failures = transport_failures.saturating_add(1);
                    let n = u32::try_from(pool.len()).unwrap_or(u32::MAX).max(1);
                    if transport_failures % n != 0 {
                        // Try the next node at once; pause only after a whole round failed.
                        continue;
                    }
                    retry::backoff(
                        transport_failures / n - 1,
                        retry::ROUND_BASE,
                        retry::ROUND_CAP,
                    )
                }
            };
            let now = Instant::now();
            if now + wait >= until {
                // The backoff would outlast the deadline: report now rather than sleep.
                return Err(last.into_error(deadline));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Resolves a leader hint to an endpoint index, adding the endpoint if it is new.
    async fn resolve_hint(&self, hint: &str, until: Instant) -> Option<usize> {
        let addr = match hint.parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                settings::check_endpoint(hint).ok()?;
                let found = tokio::time::timeout_at(until, tokio::net::lookup_host(hint))
                    .await
                    .ok()?
                    .ok()?;
                let mut candidates = found.filter(|a| self.inner.ipv6 || a.is_ipv4());
                candidates.next()?
            }
        };
        if addr.is_ipv6() && !self.inner.ipv6 {
            tracing::debug!(%addr, "ignoring an IPv6 leader hint on an IPv4-only client");
            return None;
        }
        let index = self.inner.pool.find_or_add(addr);
        if index.is_none() {
            tracing::warn!(%addr, "too many endpoints; ignoring a leader hint");
        }
        index
    }

    /// One request on one node: connection, stream, request, answer. Updates the applied
    /// index from any answer, and drops a connection that failed.
    async fn attempt(
        &self,
        slot: &pool::Slot,
        request: &Request,
        until: Instant,
    ) -> Result<ClientResponse, Failure> {
        let conn = slot
            .connection(&self.inner.endpoint, self.inner.connect_timeout, until)
            .await
            .map_err(|detail| Failure::Transport {
                detail,
                delivered: false,
            })?;
        let envelope = ClientRequestRef {
            version: PROTOCOL_VERSION,
            min_applied: self.max_applied(),
            request,
        };
        // The encoding may hold PINs: wipe it after use.
        let bytes = Zeroizing::new(frame::encode(&envelope).map_err(|e| {
            Failure::Protocol(format!("cannot send the {} request: {e}", request.name()))
        })?);

        let (mut send, mut recv) = match tokio::time::timeout_at(until, conn.open_bi()).await {
            Err(_) => {
                return Err(Failure::Deadline {
                    detail: "no stream credit before the deadline".into(),
                    delivered: false,
                })
            }
            Ok(Err(e)) => {
                return Err(self.connection_lost(slot, &conn, &e, false));
            }
            Ok(Ok(streams)) => streams,
        };

        match tokio::time::timeout_at(until, frame::write_raw(&mut send, &bytes)).await {
            Err(_) => {
                return Err(Failure::Deadline {
                    detail: "the request could not be sent before the deadline".into(),
                    delivered: false,
                })
            }
            Ok(Err(e)) => return Err(self.stream_failure(slot, &conn, e, false)),
            Ok(Ok(())) => {}
        }
        // Fails only if the stream was already finished or reset; the read below reports that.
        let _ = send.finish();

        let response: ClientResponse =
            match tokio::time::timeout_at(until, frame::read_raw(&mut recv, MAX_FRAME)).await {
                Err(_) => {
                    return Err(Failure::Deadline {
                        detail: "no answer before the deadline".into(),
                        delivered: true,
                    })
                }
                Ok(Err(e)) => return Err(self.stream_failure(slot, &conn, e, true)),
                Ok(Ok(r)) => r,
            };
        self.inner
            .max_applied
            .fetch_max(response.applied, Ordering::Relaxed);
        tracing::Span::current().record("node_id", response.node);
        Ok(response)
    }

    fn stream_failure(
        &self,
        slot: &pool::Slot,
        conn: &quinn::Connection,
        e: StreamError,
        delivered: bool,
    ) -> Failure {
        let overloaded = quinn::VarInt::from_u32(reset::OVERLOADED);
        let refused = |code: quinn::VarInt| {
            code == quinn::VarInt::from_u32(reset::MALFORMED)
                || code == quinn::VarInt::from_u32(reset::FRAME_TOO_LARGE)
        };
        match e {
            StreamError::Write(quinn::WriteError::ConnectionLost(ce))
            | StreamError::Read(quinn::ReadError::ConnectionLost(ce)) => {
                self.connection_lost(slot, conn, &ce, delivered)
            }
            StreamError::Write(quinn::WriteError::Stopped(code))
            | StreamError::Read(quinn::ReadError::Reset(code))
                if code == overloaded =>
            {
                Failure::Overloaded(format!("{} refused the stream: overloaded", slot.addr))
            }
            StreamError::Write(quinn::WriteError::Stopped(code))
            | StreamError::Read(quinn::ReadError::Reset(code))
                if refused(code) =>
            {
                Failure::Protocol(format!(
                    "{} refused our request frame (code {code})",
                    slot.addr
                ))
            }
            StreamError::Frame(e) => {
                Failure::Protocol(format!("malformed answer from {}: {e}", slot.addr))
            }
            other => Failure::Transport {
                detail: format!("{}: {other}", slot.addr),
                delivered,
            },
        }
    }

    fn connection_lost(
        &self,
        slot: &pool::Slot,
        conn: &quinn::Connection,
        e: &quinn::ConnectionError,
        delivered: bool,
    ) -> Failure {
        slot.forget(conn);
        tracing::warn!(node = %slot.addr, error = %e, "connection lost");
        // A TLS alert closes the connection during the handshake: the node never accepted the
        // connection, so nothing on it was processed.
        let handshake_refused = matches!(
            e,
            quinn::ConnectionError::ConnectionClosed(close)
                if (0x100..0x200).contains(&u64::from(close.error_code))
        );
        Failure::Transport {
            detail: format!("connection to {} lost: {e}", slot.addr),
            delivered: delivered && !handshake_refused,
        }
    }
}

fn unavailable_detail(
    request: &Request,
    addr: SocketAddr,
    detail: &str,
    delivered: bool,
) -> String {
    if delivered && !request.is_idempotent() {
        format!(
            "the {} request was sent to {addr} but no answer came ({detail}): \
             the outcome of this write is unknown",
            request.name()
        )
    } else {
        format!("{addr}: {detail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{ClientRequest, Secret, TokenId, UserType};

    #[test]
    fn borrowed_envelope_encodes_like_the_owned_one() {
        let request = Request::Login {
            token: TokenId(3),
            user: UserType::User,
            pin: Secret::from("1234"),
        };
        let owned = ClientRequest {
            version: PROTOCOL_VERSION,
            min_applied: 99,
            request: request.clone(),
        };
        let borrowed = ClientRequestRef {
            version: PROTOCOL_VERSION,
            min_applied: 99,
            request: &request,
        };
        assert_eq!(
            frame::encode(&owned).unwrap(),
            frame::encode(&borrowed).unwrap()
        );
    }

    #[test]
    fn error_codes() {
        let remote = ClientError::Remote(WireError::new(ErrorCode::PinLocked, "locked"));
        assert_eq!(remote.code(), ErrorCode::PinLocked);
        assert_eq!(
            ClientError::Unavailable(String::new()).code(),
            ErrorCode::Unavailable
        );
        assert_eq!(
            ClientError::Protocol(String::new()).code(),
            ErrorCode::DeviceError
        );
        assert_eq!(
            ClientError::Config(String::new()).code(),
            ErrorCode::GeneralError
        );
    }

    #[test]
    fn client_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Client>();
        check::<ClientError>();
    }
}
