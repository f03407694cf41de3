//! Shared test fixtures: the test PKI of `cloudkey-test-support` with TLS material for its
//! leaves, in-process QUIC test servers that answer `ClientRequest`s as a test tells them to, a
//! loopback UDP relay that can black-hole a node, and the support crate's `wait_for`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudkey_protocol::frame::{self, MAX_FRAME};
use cloudkey_protocol::msg::{ClientRequest, ClientResponse, Response};
use cloudkey_protocol::tls::{self, TlsMaterial};
use cloudkey_protocol::{WireError, ALPN_CLIENT};
pub use cloudkey_test_support::wait_for;
use cloudkey_test_support::{bind_retrying, TestPki};
pub use cloudkey_test_support::{Issued, LeafSpec};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The support crate's test PKI, with the protocol's TLS material for its leaves.
pub struct Pki(TestPki);

impl Pki {
    pub fn new(name: &str) -> Self {
        Self(TestPki::new(name))
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        self.0.ca_pem()
    }

    /// Issues a leaf as `spec` says.
    pub fn issue(&self, spec: &LeafSpec) -> Issued {
        self.0.issue(spec)
    }

    pub fn material(&self, issued: &Issued) -> TlsMaterial {
        TlsMaterial::from_pem(self.0.ca_pem(), &issued.cert_pem, &issued.key_pem).expect("material")
    }

    /// A node certificate as `cloudkey pki` makes them.
    pub fn node(&self, id: u64) -> TlsMaterial {
        self.material(&self.0.node(id))
    }

    pub fn client(&self, name: &str) -> TlsMaterial {
        self.material(&self.0.client(name))
    }

    pub fn operator(&self, name: &str) -> TlsMaterial {
        self.material(&self.0.operator(name))
    }
}

/// What a test server does with a request.
pub enum Reply {
    /// Answer.
    Respond(ClientResponse),
    /// Read the request, then never answer (keeping the stream open).
    Stall,
    /// Reset the response stream with this code.
    Reset(u32),
    /// Close the whole connection without answering.
    CloseConnection,
    /// Write these raw bytes as the answer and finish.
    Raw(Vec<u8>),
}

pub type Handler = Arc<dyn Fn(&ClientRequest) -> Reply + Send + Sync>;

/// What a test server saw.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicUsize,
    pub failed_handshakes: AtomicUsize,
    pub requests: AtomicUsize,
    pub writes: AtomicUsize,
    pub min_applied: Mutex<Vec<u64>>,
    pub identities: Mutex<Vec<tls::PeerIdentity>>,
}

impl Stats {
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
    pub fn writes(&self) -> usize {
        self.writes.load(Ordering::SeqCst)
    }
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// An in-process node stand-in serving the client protocol on 127.0.0.1.
pub struct TestServer {
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

/// A successful answer from node `node` at applied index `applied`.
pub fn ok(node: u64, applied: u64, response: Response) -> Reply {
    Reply::Respond(ClientResponse {
        applied,
        node,
        result: Ok(response),
    })
}

/// A refusal from node `node`.
pub fn refuse(node: u64, applied: u64, error: WireError) -> Reply {
    Reply::Respond(ClientResponse {
        applied,
        node,
        result: Err(error),
    })
}

/// A handler that answers everything with `Bytes([node])` at applied index 0.
pub fn echo_node(node: u64) -> Handler {
    Arc::new(move |_req: &ClientRequest| ok(node, 0, Response::Bytes(vec![node as u8])))
}

impl TestServer {
    pub async fn start(material: &TlsMaterial, handler: Handler) -> Self {
        Self::start_at(
            material,
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            handler,
        )
        .await
    }

    /// Starts on `addr`, waiting (bounded) for the port to be free again after a stop.
    pub async fn start_at(material: &TlsMaterial, addr: SocketAddr, handler: Handler) -> Self {
        let config = tls::server_config(material, &[ALPN_CLIENT]).expect("server config");
        let endpoint = bind_retrying(Duration::from_secs(10), || {
            quinn::Endpoint::server(config.clone(), addr)
        })
        .await
        .unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
        let addr = endpoint.local_addr().expect("local addr");
        let stats = Arc::new(Stats::default());
        let task = tokio::spawn(serve(endpoint.clone(), handler, stats.clone()));
        Self {
            addr,
            stats,
            endpoint,
            task,
        }
    }

    /// Closes every connection (clients see it at once) and stops serving.
    pub fn stop(&self) {
        self.endpoint
            .close(quinn::VarInt::from_u32(0), b"test server stopped");
        self.task.abort();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(endpoint: quinn::Endpoint, handler: Handler, stats: Arc<Stats>) {
    let mut conns = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        while conns.try_join_next().is_some() {}
        let handler = handler.clone();
        let stats = stats.clone();
        conns.spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(_) => {
                    stats.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                    return;
                }
            };
            stats.connections.fetch_add(1, Ordering::SeqCst);
            if let Ok(id) = tls::peer_identity(&conn) {
                stats.identities.lock().unwrap().push(id);
            }
            let mut streams = JoinSet::new();
            while let Ok((send, recv)) = conn.accept_bi().await {
                while streams.try_join_next().is_some() {}
                streams.spawn(stream(
                    conn.clone(),
                    send,
                    recv,
                    handler.clone(),
                    stats.clone(),
                ));
            }
        });
    }
}

async fn stream(
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    handler: Handler,
    stats: Arc<Stats>,
) {
    let Ok(req) = frame::read_frame::<ClientRequest>(&mut recv, MAX_FRAME).await else {
        return;
    };
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if req.request.is_write() {
        stats.writes.fetch_add(1, Ordering::SeqCst);
    }
    stats.min_applied.lock().unwrap().push(req.min_applied);
    match handler(&req) {
        Reply::Respond(resp) => {
            if frame::write_frame(&mut send, &resp).await.is_ok() {
                let _ = send.finish();
                // Keep the stream until the client has it all (or gives up).
                let _ = send.stopped().await;
            }
        }
        Reply::Stall => {
            std::future::pending::<()>().await;
        }
        Reply::Reset(code) => {
            let _ = send.reset(quinn::VarInt::from_u32(code));
        }
        Reply::CloseConnection => conn.close(quinn::VarInt::from_u32(7), b"gone"),
        Reply::Raw(bytes) => {
            if send.write_all(&bytes).await.is_ok() {
                let _ = send.finish();
                let _ = send.stopped().await;
            }
        }
    }
}

/// A loopback UDP relay in front of one server, for one client: forwards both ways until
/// black-holed, then drops everything (a node that lost power or its network).
pub struct Relay {
    pub addr: SocketAddr,
    blackhole: Arc<AtomicBool>,
    pub forwarded: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: SocketAddr) -> Self {
        let front = UdpSocket::bind("127.0.0.1:0").await.expect("relay front");
        let back = UdpSocket::bind("127.0.0.1:0").await.expect("relay back");
        let addr = front.local_addr().expect("relay addr");
        let blackhole = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(AtomicU64::new(0));
        let (bh, fw) = (blackhole.clone(), forwarded.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let mut a = vec![0u8; 65536];
            let mut b = vec![0u8; 65536];
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        if !bh.load(Ordering::SeqCst) {
                            let _ = back.send_to(&a[..n], upstream).await;
                            fw.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    r = back.recv_from(&mut b) => {
                        let Ok((n, _)) = r else { continue };
                        if let (Some(c), false) = (client, bh.load(Ordering::SeqCst)) {
                            let _ = front.send_to(&b[..n], c).await;
                            fw.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        });
        Self {
            addr,
            blackhole,
            forwarded,
            task,
        }
    }

    pub fn blackhole(&self, on: bool) {
        self.blackhole.store(on, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A bound UDP socket that never answers: an address where a dial can only time out.
pub fn silent_addr() -> (std::net::UdpSocket, SocketAddr) {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind silent socket");
    let a = s.local_addr().expect("addr");
    (s, a)
}
