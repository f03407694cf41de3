//! The node's QUIC endpoint: one UDP socket for clients (ALPN `cloudkey/1`) and peers (ALPN
//! `cloudkey-raft/1`), mutual TLS on both, and the same endpoint dials the peers.
//!
//! * **Address.** With `listen` on port 0 the node picks a port on its first start and records
//!   it in `data_dir/listen.addr`; a restarted node binds that address again, because Raft
//!   membership records it. After binding, the node prints `LISTENING <ip:port>` on stdout.
//! * **Admission.** At most `limits.max_connections` connections; past it new ones are refused
//!   at the handshake. One task per connection (with a span) and one per request stream.
//!   Streams per connection are bounded by the QUIC stream limit (`limits.max_streams`);
//!   requests in progress on the whole node by a semaphore (`limits.max_inflight`): past it a
//!   stream is refused at once with the `OVERLOADED` reset code, before anything of the request
//!   is acted on, so the client may retry it elsewhere. Request bodies are read into a node-wide
//!   memory budget ([`REQUEST_MEMORY`]), so many streams announcing large frames cannot exhaust
//!   memory.
//! * **Malformed input.** An announced length above the bound is stopped with
//!   `FRAME_TOO_LARGE`, undecodable bytes with `MALFORMED`; both are answered with a
//!   `BadRequest` response when the send side is still usable, and the connection keeps
//!   serving.
//! * **Shutdown.** [`Server::shutdown`]: stop accepting connections and streams, wait (bounded)
//!   for the requests in progress, then close the endpoint.

use std::fs;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cloudkey_protocol::frame::{self, reset, FrameError, LEN_PREFIX, MAX_FRAME};
use cloudkey_protocol::msg::{ClientRequest, ClientResponse};
use cloudkey_protocol::tls::{self, PeerIdentity, TlsMaterial};
use cloudkey_protocol::{ErrorCode, WireError, ALPN_CLIENT, ALPN_RAFT};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::config::Config;
use crate::error::{NodeError, Result};
use crate::handler;
use crate::raft::{self, PeerContext};
use crate::service::NodeCtx;

/// File in the data directory that records the bound address.
pub const LISTEN_ADDR_FILE: &str = "listen.addr";
/// How long shutdown waits for requests in progress.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Node-wide budget for request bodies being read or handled, bytes.
pub const REQUEST_MEMORY: usize = 256 * 1024 * 1024;
/// The memory budget is counted in units of this many bytes.
const MEMORY_UNIT: usize = 1024;
/// QUIC application close code for a connection refused by role (a non-node on the peer ALPN).
const CLOSE_FORBIDDEN: u32 = 0x10;
/// QUIC application close code at shutdown.
const CLOSE_SHUTDOWN: u32 = 0;

/// Binds the endpoint. See the [module docs](self) for the address rules.
///
/// # Errors
/// [`NodeError::Config`] when the TLS material is refused; [`NodeError::Storage`] when the
/// address cannot be bound or recorded.
pub fn bind(config: &Config, tls: &TlsMaterial) -> Result<quinn::Endpoint> {
    let mut server = tls::server_config(tls, &[ALPN_CLIENT, ALPN_RAFT])?;
    server.transport_config(transport(config.limits.max_streams)?);

    let record = config.data_dir.join(LISTEN_ADDR_FILE);
    let addr = bind_addr(config.listen, &record)?;
    let endpoint = quinn::Endpoint::server(server, addr)
        .map_err(NodeError::io(format!("cannot bind {addr}")))?;
    let bound = endpoint
        .local_addr()
        .map_err(NodeError::io("bound socket has no address"))?;
    if config.listen.port() == 0 {
        write_atomic(&record, format!("{bound}\n").as_bytes())?;
    }
    Ok(endpoint)
}

/// The address to bind: `listen`, or with port 0 the address recorded by an earlier start
/// (when it is on the same IP).
fn bind_addr(listen: SocketAddr, record: &Path) -> Result<SocketAddr> {
    if listen.port() != 0 {
        return Ok(listen);
    }
    match fs::read_to_string(record) {
        Ok(text) => match text.trim().parse::<SocketAddr>() {
            Ok(saved) if saved.ip() == listen.ip() && saved.port() != 0 => Ok(saved),
            Ok(saved) => {
                tracing::warn!(%saved, %listen, "recorded address is on another IP; not reusing it");
                Ok(listen)
            }
            Err(_) => Err(NodeError::Storage(format!(
                "{} does not hold an address; remove it to pick a new port",
                record.display()
            ))),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(listen),
        Err(e) => Err(NodeError::io(format!("cannot read {}", record.display()))(
            e,
        )),
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash never leaves a
/// half-written file.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = || NodeError::io(format!("cannot write {}", path.display()));
    let mut f = fs::File::create(&tmp).map_err(io())?;
    f.write_all(bytes).map_err(io())?;
    f.sync_all().map_err(io())?;
    fs::rename(&tmp, path).map_err(io())?;
    Ok(())
}

fn transport(max_streams: u32) -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(tls::SERVER_IDLE_TIMEOUT)
        .map_err(|e| NodeError::Config(format!("idle timeout: {e}")))?;
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(max_streams))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .keep_alive_interval(Some(tls::KEEP_ALIVE))
        .max_idle_timeout(Some(idle));
    Ok(Arc::new(t))
}

/// Admission state shared by every connection.
struct Admission {
    connections: Arc<Semaphore>,
    inflight: Arc<Semaphore>,
    max_inflight: usize,
    memory: Arc<Semaphore>,
}

/// The running accept loop.
pub struct Server {
    endpoint: quinn::Endpoint,
    admission: Arc<Admission>,
    stop: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Starts accepting connections on `endpoint`.
    #[must_use]
    pub fn start(endpoint: quinn::Endpoint, ctx: Arc<NodeCtx>, peers: PeerContext) -> Self {
        let admission = Arc::new(Admission {
            connections: Arc::new(Semaphore::new(ctx.limits.max_connections)),
            inflight: Arc::new(Semaphore::new(ctx.limits.max_inflight)),
            max_inflight: ctx.limits.max_inflight,
            memory: Arc::new(Semaphore::new(REQUEST_MEMORY / MEMORY_UNIT)),
        });
        let (stop, stopped) = watch::channel(false);
        let accept = tokio::spawn(accept_loop(
            endpoint.clone(),
            ctx,
            peers,
            admission.clone(),
            stopped,
        ));
        Self {
            endpoint,
            admission,
            stop,
            accept,
        }
    }

    /// Stops accepting, waits up to [`DRAIN_TIMEOUT`] for requests in progress, and returns
    /// whether they all finished. The endpoint stays open (Raft still needs it) until
    /// [`Server::close`].
    pub async fn shutdown(&self) -> bool {
        let _ = self.stop.send(true);
        // No new connections from now on; existing ones stop taking streams (see below).
        self.endpoint.set_server_config(None);
        let all = u32::try_from(self.admission.max_inflight).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(
            DRAIN_TIMEOUT,
            self.admission.inflight.clone().acquire_many_owned(all),
        )
        .await;
        match drained {
            Ok(Ok(_permits)) => true,
            _ => {
                tracing::warn!(
                    still =
                        self.admission.max_inflight - self.admission.inflight.available_permits(),
                    "requests still in progress after the drain timeout"
                );
                false
            }
        }
    }

    /// Closes every connection and the endpoint, waiting briefly for the close to reach peers.
    pub async fn close(self) {
        self.accept.abort();
        self.endpoint.close(
            quinn::VarInt::from_u32(CLOSE_SHUTDOWN),
            b"node shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }
}

async fn accept_loop(
    endpoint: quinn::Endpoint,
    ctx: Arc<NodeCtx>,
    peers: PeerContext,
    admission: Arc<Admission>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = stopped.changed() => None,
        };
        let Some(incoming) = incoming else { break };
        // Reap finished connection tasks so the set does not grow.
        while connections.try_join_next().is_some() {}
        let remote = incoming.remote_address();
        let Ok(slot) = admission.connections.clone().try_acquire_owned() else {
            tracing::warn!(%remote, "connection limit reached; refusing");
            incoming.refuse();
            continue;
        };
        let span = tracing::info_span!("connection", node = ctx.id, %remote);
        let ctx = ctx.clone();
        let peers = peers.clone();
        let admission = admission.clone();
        let stopped = stopped.clone();
        connections.spawn(
            async move {
                // Held while the connection is served.
                let _slot = slot;
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "handshake failed");
                        return;
                    }
                };
                let identity = match tls::peer_identity(&conn) {
                    Ok(i) => i,
                    Err(e) => {
                        tracing::info!(error = %e, "peer without a usable identity");
                        conn.close(quinn::VarInt::from_u32(CLOSE_FORBIDDEN), b"no identity");
                        return;
                    }
                };
                match tls::negotiated_alpn(&conn).as_deref() {
                    Some(a) if a == ALPN_CLIENT => {
                        tracing::debug!(peer = %identity, "client connected");
                        serve_client(conn, identity, ctx, admission, stopped).await;
                    }
                    Some(a) if a == ALPN_RAFT => {
                        // serve_peer admits node certificates only.
                        tracing::debug!(peer = %identity, "peer connected");
                        raft::serve_peer(conn, peers).await;
                    }
                    _ => {
                        conn.close(quinn::VarInt::from_u32(CLOSE_FORBIDDEN), b"unknown ALPN");
                    }
                }
            }
            .instrument(span),
        );
    }
    // Connection tasks end when their connections close (at endpoint close).
    connections.detach_all();
}

async fn serve_client(
    conn: quinn::Connection,
    identity: PeerIdentity,
    ctx: Arc<NodeCtx>,
    admission: Arc<Admission>,
    mut stopped: watch::Receiver<bool>,
) {
    let identity = Arc::new(identity);
    let mut stream_no: u64 = 0;
    loop {
        let accepted = tokio::select! {
            s = conn.accept_bi() => s,
            _ = stopped.changed() => break,
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "client connection ended");
                break;
            }
        };
        stream_no += 1;
        // Admission first: an overloaded node refuses before reading anything.
        let permit = admission.inflight.clone().try_acquire_owned().ok();
        let ctx = ctx.clone();
        let identity = identity.clone();
        let memory = admission.memory.clone();
        // The request's future is several kilobytes: build it on the heap once the task runs,
        // rather than moving it through the spawn path.
        tokio::spawn(
            async move { Box::pin(serve_stream(ctx, identity, send, recv, permit, memory)).await }
                .instrument(tracing::debug_span!("stream", n = stream_no)),
        );
    }
}

async fn serve_stream(
    ctx: Arc<NodeCtx>,
    identity: Arc<PeerIdentity>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    permit: Option<OwnedSemaphorePermit>,
    memory: Arc<Semaphore>,
) {
    let Some(_permit) = permit else {
        tracing::debug!("overloaded: stream refused");
        let _ = recv.stop(quinn::VarInt::from_u32(reset::OVERLOADED));
        let _ = send.reset(quinn::VarInt::from_u32(reset::OVERLOADED));
        return;
    };
    let read = tokio::time::timeout(
        ctx.limits.request_deadline,
        read_request(&mut recv, &memory),
    )
    .await;
    let response = match read {
        Ok(Ok((request, _budget))) => handler::handle(&ctx, &identity, request).await,
        Ok(Err(ReadError::Frame(FrameError::TooLarge(n)))) => bad_request(
            &ctx,
            format!("frame of {n} bytes exceeds the bound of {MAX_FRAME}"),
        ),
        Ok(Err(ReadError::Frame(FrameError::Decode(d)))) => {
            bad_request(&ctx, format!("malformed request: {d}"))
        }
        Ok(Err(ReadError::Frame(e))) => {
            tracing::debug!(error = %e, "stream ended without a request");
            let _ = send.reset(quinn::VarInt::from_u32(reset::MALFORMED));
            return;
        }
        Ok(Err(ReadError::Memory)) => {
            tracing::debug!("request memory exhausted: stream refused");
            let _ = recv.stop(quinn::VarInt::from_u32(reset::OVERLOADED));
            let _ = send.reset(quinn::VarInt::from_u32(reset::OVERLOADED));
            return;
        }
        Err(_) => {
            tracing::debug!("request not received within the deadline");
            let _ = recv.stop(quinn::VarInt::from_u32(reset::MALFORMED));
            let _ = send.reset(quinn::VarInt::from_u32(reset::MALFORMED));
            return;
        }
    };
    let written = match frame::write_frame(&mut send, &response).await {
        Err(FrameError::TooLarge(_)) => {
            let e = ClientResponse {
                applied: ctx.svc.state.applied(),
                node: ctx.id,
                result: Err(WireError::new(
                    ErrorCode::DataLenRange,
                    "the response exceeds the frame bound",
                )),
            };
            frame::write_frame(&mut send, &e).await
        }
        other => other,
    };
    match written {
        Ok(()) => {
            let _ = send.finish();
        }
        Err(e) => tracing::debug!(error = %e, "response not delivered"),
    }
}

fn bad_request(ctx: &NodeCtx, detail: String) -> ClientResponse {
    tracing::info!(%detail, "bad request");
    ClientResponse {
        applied: ctx.svc.state.applied(),
        node: ctx.id,
        result: Err(WireError::new(ErrorCode::BadRequest, detail)),
    }
}

enum ReadError {
    Frame(FrameError),
    /// The memory budget is exhausted.
    Memory,
}

/// Reads one request frame like [`frame::read_frame`], but takes the body's size from the
/// node-wide memory budget before allocating it. The returned permit holds the budget until the
/// request is answered.
async fn read_request(
    recv: &mut quinn::RecvStream,
    memory: &Arc<Semaphore>,
) -> std::result::Result<(ClientRequest, OwnedSemaphorePermit), ReadError> {
    let mut prefix = [0u8; LEN_PREFIX];
    read_exact(recv, &mut prefix, true).await?;
    let len = match frame::body_len(prefix, MAX_FRAME) {
        Ok(len) => len,
        Err(e) => {
            let _ = recv.stop(quinn::VarInt::from_u32(reset::FRAME_TOO_LARGE));
            return Err(ReadError::Frame(e));
        }
    };
    let budget = reserve(memory, len)?;
    let mut body = vec![0u8; len];
    read_exact(recv, &mut body, false).await?;
    match frame::decode::<ClientRequest>(&body) {
        Ok(request) => Ok((request, budget)),
        Err(e) => {
            let _ = recv.stop(quinn::VarInt::from_u32(reset::MALFORMED));
            Err(ReadError::Frame(e))
        }
    }
}

/// Takes `len` bytes of the node-wide memory budget, or fails at once with
/// [`ReadError::Memory`] when the budget is exhausted: waiting for it would hold the stream
/// until the read deadline and then answer `MALFORMED`, which the client does not retry;
/// `OVERLOADED` now tells it to try again (elsewhere).
fn reserve(
    memory: &Arc<Semaphore>,
    len: usize,
) -> std::result::Result<OwnedSemaphorePermit, ReadError> {
    let units = u32::try_from(len.div_ceil(MEMORY_UNIT).max(1)).unwrap_or(u32::MAX);
    memory
        .clone()
        .try_acquire_many_owned(units)
        .map_err(|_| ReadError::Memory)
}

async fn read_exact(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
    first: bool,
) -> std::result::Result<(), ReadError> {
    match recv.read_exact(buf).await {
        Ok(()) => Ok(()),
        Err(quinn::ReadExactError::FinishedEarly(0)) if first => {
            Err(ReadError::Frame(FrameError::Closed))
        }
        Err(e) => Err(ReadError::Frame(FrameError::Io(e.to_string()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_address_is_reused_only_for_port_zero_on_the_same_ip() {
        let dir = tempfile::tempdir().unwrap();
        let record = dir.path().join(LISTEN_ADDR_FILE);
        let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let fixed: SocketAddr = "127.0.0.1:7301".parse().unwrap();
        assert_eq!(bind_addr(any, &record).unwrap(), any);
        write_atomic(&record, b"127.0.0.1:4567\n").unwrap();
        assert_eq!(
            bind_addr(any, &record).unwrap(),
            "127.0.0.1:4567".parse().unwrap()
        );
        assert_eq!(bind_addr(fixed, &record).unwrap(), fixed);
        let other: SocketAddr = "127.0.0.2:0".parse().unwrap();
        assert_eq!(bind_addr(other, &record).unwrap(), other);
        fs::write(&record, b"nonsense").unwrap();
        assert!(bind_addr(any, &record).is_err());
    }

    #[test]
    fn an_exhausted_memory_budget_is_refused_at_once_as_overloaded() {
        let memory = Arc::new(Semaphore::new(4));
        let held = reserve(&memory, 4 * MEMORY_UNIT)
            .ok()
            .expect("within the budget");
        // Before, this waited for the budget until the read deadline, and the stream was then
        // reset MALFORMED; now it fails at once, and the stream is reset OVERLOADED.
        assert!(matches!(reserve(&memory, 1), Err(ReadError::Memory)));
        drop(held);
        assert!(reserve(&memory, 1).is_ok());
    }
}
