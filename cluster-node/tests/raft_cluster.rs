//! Raft clusters in one process: three nodes on loopback QUIC endpoints with mutual TLS (node
//! certificates of the support crate's test PKI), each with its own data directory and software
//! chip.
//!
//! Every wait is on a condition (openraft's metrics waits, the applied index), bounded.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloudkey_chip::pool::{ChipPool, PoolConfig};
use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
use cloudkey_chip::{
    BlobHeader, Chip, ChipExt as _, KeyId, KeySpec, KeyType, KeyUsage, BLOB_VERSION,
};
use cloudkey_node::raft::{
    serve_peer, Authority, Authorizer, PeerContext, PeerError, PeerNetwork, PeerRequest,
    PeerResponse, RaftNode, RaftTimings,
};
use cloudkey_node::state::{
    verify_chain, ClusterInfo, Command, CommandClass, CommandResult, EnrolledChip, ObjectRecord,
    PinHash, State,
};
use cloudkey_node::NodeError;
use cloudkey_protocol::frame::{self, reset};
use cloudkey_protocol::msg::{ObjectId, TokenId, UserType};
use cloudkey_protocol::tls::{self, PeerIdentity, TlsMaterial};
use cloudkey_protocol::{ErrorCode, ALPN_RAFT};
use cloudkey_test_support::{bind_retrying, LeafSpec, TestPki};
use openraft::{Config, ServerState, SnapshotPolicy};
use tempfile::TempDir;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// The support crate's test PKI, with TLS material for the peers of these tests.
struct Pki(TestPki);

impl Pki {
    fn new() -> Self {
        Self(TestPki::new("raft test CA"))
    }

    /// Certificate and key for `who`; nodes also get the server names.
    fn material(&self, who: &PeerIdentity) -> TlsMaterial {
        let spec = match who.role {
            tls::Role::Node(id) => LeafSpec::node(id),
            _ => LeafSpec::uris(&[&who.uri()]),
        };
        let issued = self.0.issue(&spec);
        TlsMaterial::from_pem(self.0.ca_pem(), &issued.cert_pem, &issued.key_pem).expect("material")
    }
}

/// Binds a server endpoint, waiting (bounded) for a previous incarnation to release the port.
async fn bind(config: quinn::ServerConfig, addr: SocketAddr) -> quinn::Endpoint {
    bind_retrying(WAIT, || quinn::Endpoint::server(config.clone(), addr))
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"))
}

struct TestNode {
    id: u64,
    addr: SocketAddr,
    raft: RaftNode,
    chip: Arc<SoftChip>,
    endpoint: quinn::Endpoint,
    accept: JoinHandle<()>,
    /// The cluster's running nodes, to write a leader-only command through the leader.
    running: Running,
}

type Running = Arc<Mutex<HashMap<u64, RaftNode>>>;

/// These tests are of the Raft layer: every forwarded session write is let through (the
/// service layer's check of the caller's grant is tested with real nodes, in `tests/`).
#[derive(Debug)]
struct AllowSessions;

impl Authorizer for AllowSessions {
    fn authorize<'a>(
        &'a self,
        _cmd: &'a Command,
        _authority: &'a Authority,
    ) -> futures::future::BoxFuture<'a, cloudkey_node::Result<()>> {
        Box::pin(async { Ok(()) })
    }
}

impl TestNode {
    fn state(&self) -> &Arc<State> {
        self.raft.state()
    }

    /// Stops Raft and closes the endpoint.
    async fn stop(self) {
        self.running.lock().unwrap().remove(&self.id);
        self.raft.shutdown().await.expect("shutdown");
        self.accept.abort();
        // The port is free once the closed connections have drained; a restart's `bind`
        // waits for that.
        self.endpoint.close(0u32.into(), b"stop");
    }
}

struct Cluster {
    pki: Pki,
    root: TempDir,
    config: Config,
    running: Running,
}

impl Cluster {
    fn new(config: Config) -> Self {
        init_tracing();
        Self {
            pki: Pki::new(),
            root: tempfile::tempdir().expect("tempdir"),
            config,
            running: Running::default(),
        }
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.path().join(format!("node{id}"))
    }

    /// Starts node `id` on `addr` (port 0 for a fresh one) from its data directory.
    async fn start(&self, id: u64, addr: SocketAddr) -> TestNode {
        let material = self.pki.material(&PeerIdentity::node(id));
        let server = tls::server_config(&material, &[ALPN_RAFT]).expect("server config");
        let endpoint = bind(server, addr).await;
        let addr = endpoint.local_addr().expect("addr");
        let network = PeerNetwork::new(endpoint.clone(), &material).expect("network");
        let raft = RaftNode::start_with_config(
            id,
            &self.dir(id),
            Arc::new(State::new()),
            network,
            self.config.clone(),
            cloudkey_node::raft::freshness::DEFAULT_BOUND,
        )
        .await
        .expect("raft start");
        let chip = Arc::new(SoftChip::new(SoftChipConfig::default()).expect("chip"));
        let pool = ChipPool::new(vec![chip.clone() as Arc<dyn Chip>], PoolConfig::default())
            .expect("pool");
        let ctx = PeerContext {
            raft: raft.clone(),
            pool: Arc::new(pool),
            authorizer: Arc::new(AllowSessions),
        };
        let accept = tokio::spawn(accept_loop(endpoint.clone(), ctx));
        self.running.lock().unwrap().insert(id, raft.clone());
        TestNode {
            id,
            addr,
            raft,
            chip,
            endpoint,
            accept,
            running: self.running.clone(),
        }
    }

    async fn start_fresh(&self, n: u64) -> Vec<TestNode> {
        let mut nodes = Vec::new();
        for id in 1..=n {
            nodes.push(self.start(id, (Ipv4Addr::LOCALHOST, 0).into()).await);
        }
        nodes
    }
}

/// What the node's server does for `cloudkey-raft/1` connections.
async fn accept_loop(endpoint: quinn::Endpoint, ctx: PeerContext) {
    while let Some(incoming) = endpoint.accept().await {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                serve_peer(conn, ctx).await;
            }
        });
    }
}

fn members(nodes: &[TestNode]) -> Vec<(u64, String)> {
    nodes.iter().map(|n| (n.id, n.addr.to_string())).collect()
}

/// Waits until `node` knows a leader (other than `not`), and returns it.
async fn wait_leader(node: &TestNode, not: Option<u64>) -> u64 {
    let m = node
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader",
        )
        .await
        .expect("no leader elected");
    m.current_leader.expect("leader")
}

async fn wait_applied(node: &TestNode, index: u64) {
    node.raft
        .raft()
        .wait(Some(WAIT))
        .applied_index_at_least(Some(index), "applied")
        .await
        .unwrap_or_else(|e| panic!("node {} did not apply {index}: {e}", node.id));
}

/// Everything but the applied index must be equal (a new leader's blank entry moves it).
fn same_content(a: &State, b: &State) {
    assert_eq!(a.cluster(), b.cluster());
    assert_eq!(a.tokens(), b.tokens());
    let objs = |s: &State| -> Vec<(ObjectRecord, u64)> {
        s.all_objects()
            .iter()
            .map(|o| (o.record.clone(), o.created))
            .collect()
    };
    assert_eq!(objs(a), objs(b));
    assert_eq!(a.audit(), b.audit());
}

async fn assert_converged(nodes: &[&TestNode], index: u64) {
    for n in nodes {
        wait_applied(n, index).await;
    }
    for n in &nodes[1..] {
        same_content(nodes[0].state(), n.state());
        assert_eq!(verify_chain(&n.state().audit()), Ok(()));
    }
}

fn cluster_info(kcv: [u8; 8]) -> ClusterInfo {
    ClusterInfo {
        domain_kcv: kcv,
        session_secret_blob: vec![0x5e; 48],
        max_failures: 3,
        session_ttl_ms: 60_000,
    }
}

fn token(label: &str) -> Command {
    Command::CreateToken {
        label: label.into(),
        so_pin: PinHash(format!("$argon2id$v=19$so-{label}")),
        user_pin: Some(PinHash(format!("$argon2id$v=19$user-{label}"))),
    }
}

fn key_object(n: u8, token: TokenId, kcv: [u8; 8]) -> ObjectRecord {
    let id = [n; 16];
    let header = BlobHeader {
        version: BLOB_VERSION,
        domain_kcv: kcv,
        id: KeyId(id),
        spec: KeySpec {
            key_type: KeyType::EcP256,
            bits: 256,
        },
        usage: KeyUsage::SIGN,
    };
    let mut blob = header.to_bytes().to_vec();
    blob.extend_from_slice(&[n; 64]);
    ObjectRecord {
        id: ObjectId(id),
        token,
        attrs: BTreeMap::from([(3, format!("key-{n}").into_bytes())]),
        blob: Some(blob),
    }
}

fn default_config() -> Config {
    RaftTimings::default().config().expect("config")
}

/// The Raft node of the leader `node` knows, if that node is running.
async fn running_leader(node: &TestNode) -> Option<RaftNode> {
    let leader = wait_leader(node, None).await;
    node.running.lock().unwrap().get(&leader).cloned()
}

/// The Raft node of the leader `node` knows.
async fn leader_of(node: &TestNode) -> RaftNode {
    running_leader(node)
        .await
        .expect("the leader this node knows is running")
}

/// Commits `cmd` through `node`; a command only a leader serving its caller commits
/// (`CommandClass::Direct`) through the leader, as a client would after `NotLeader`. Returns
/// once `node` applied it.
async fn write(node: &TestNode, cmd: Command) -> (CommandResult, u64) {
    if cmd.class() == CommandClass::Direct {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(raft) = running_leader(node).await {
                match raft.write(cmd.clone()).await {
                    Ok((result, index)) => {
                        wait_applied(node, index).await;
                        return (result, index);
                    }
                    Err(NodeError::NotLeader { .. }) if Instant::now() < deadline => {}
                    Err(e) => panic!("write through the leader: {e}"),
                }
            }
            assert!(Instant::now() < deadline, "no leader took the write");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let (result, index) = node.raft.write(cmd).await.expect("write");
    assert!(
        node.state().applied() >= index,
        "a write returns once applied on the node that took it"
    );
    (result, index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_replicate_and_forward_writes() {
    let cluster = Cluster::new(default_config());
    let nodes = cluster.start_fresh(3).await;
    assert!(!nodes[0].raft.is_initialized());
    assert!(matches!(
        nodes[0].raft.write(token("early")).await,
        Err(NodeError::NotInitialized)
    ));
    nodes[0]
        .raft
        .initialize(&members(&nodes))
        .await
        .expect("initialize");
    // Repeating it is harmless.
    nodes[0]
        .raft
        .initialize(&members(&nodes))
        .await
        .expect("initialize again");
    let leader = wait_leader(&nodes[0], None).await;
    for n in &nodes {
        assert_eq!(wait_leader(n, None).await, leader);
        assert!(n.raft.is_initialized());
    }
    let leader_node = &nodes[(leader - 1) as usize];
    let follower = nodes.iter().find(|n| n.id != leader).expect("follower");
    assert_eq!(
        follower.raft.leader_addr(),
        Some(leader_node.addr.to_string())
    );
    assert_eq!(follower.raft.members(), members(&nodes));
    assert!(leader_node.raft.is_leader() && !follower.raft.is_leader());

    let kcv = nodes[0].chip.domain_generate().expect("domain").kcv;
    // Writes through a follower are forwarded to the leader; a command only the leader
    // serving its caller commits is not (the client asks the leader).
    assert!(matches!(
        follower.raft.write(token("forwarded")).await,
        Err(NodeError::NotLeader { leader: Some(_) })
    ));
    let (r, _) = write(follower, Command::Init(cluster_info(kcv))).await;
    assert_eq!(r, CommandResult::Done);
    let (r, _) = write(follower, token("payments")).await;
    assert_eq!(r, CommandResult::Token(TokenId(1)));
    let (r, _) = write(follower, token("payments")).await;
    assert!(
        matches!(r, CommandResult::Refused(refusal) if refusal.code == ErrorCode::TemplateInconsistent)
    );
    let (r, _) = write(
        leader_node,
        Command::PutObjects(vec![
            key_object(1, TokenId(1), kcv),
            key_object(2, TokenId(1), kcv),
        ]),
    )
    .await;
    assert_eq!(r, CommandResult::Done);
    let mut last = 0;
    for _ in 0..3 {
        let (r, i) = write(
            follower,
            Command::LoginFailed {
                token: TokenId(1),
                user: UserType::User,
            },
        )
        .await;
        assert!(matches!(r, CommandResult::Failures { .. }));
        last = i;
    }
    assert!(matches!(
        follower.state().token(TokenId(1)).map(|t| t.user_failures),
        Some(3)
    ));
    let (_, i) = write(follower, Command::DestroyObject(ObjectId([2; 16]))).await;
    last = last.max(i);

    let refs: Vec<&TestNode> = nodes.iter().collect();
    assert_converged(&refs, last).await;
    for n in &nodes {
        assert!(n
            .state()
            .object(&ObjectId([1; 16]))
            .and_then(|o| o.key.clone())
            .is_some());
        assert!(n.state().object(&ObjectId([2; 16])).is_none());
    }

    // A member may not forward what needs a caller: an operator's act, a login's counter.
    for cmd in [
        token("by a node"),
        Command::LoginSucceeded {
            token: TokenId(1),
            user: UserType::User,
        },
    ] {
        let resp = follower
            .raft
            .network()
            .call(
                &leader_node.addr.to_string(),
                PeerRequest::Forward(cmd),
                WAIT,
            )
            .await
            .expect("answer");
        assert!(
            matches!(&resp, PeerResponse::Error(PeerError::Forbidden(m)) if m.contains("leader serving its caller")),
            "{resp:?}"
        );
    }

    // Domain transfer over the peer network: node 2's chip gets node 1's domain key, once
    // enrolled for node 2; never to a chip of another node or to an identity not enrolled.
    let identity = nodes[1].chip.info().expect("info").identity_key;
    let stranger = SoftChip::new(SoftChipConfig::default())
        .expect("chip")
        .info()
        .expect("info")
        .identity_key;
    let export = |to: &TestNode, identity: Vec<u8>| {
        let network = to.raft.network().clone();
        let addr = nodes[0].addr.to_string();
        async move {
            network
                .call(
                    &addr,
                    PeerRequest::DomainExport {
                        recipient_identity: identity,
                    },
                    WAIT,
                )
                .await
                .expect("domain export")
        }
    };
    let enrolled = |identity: &[u8], node: u64| EnrolledChip {
        identity: identity.to_vec(),
        node,
        model: "test".into(),
        serial: format!("chip of node {node}"),
        by: "operator/test".into(),
        enrolled_ms: 0,
    };
    let resp = export(&nodes[1], identity.clone()).await;
    assert!(
        matches!(&resp, PeerResponse::Error(PeerError::Forbidden(m)) if m.contains("not enrolled")),
        "{resp:?}"
    );
    let (r, i) = write(
        &nodes[0],
        Command::EnrollChips(vec![enrolled(&identity, 2), enrolled(&stranger, 3)]),
    )
    .await;
    assert_eq!(r, CommandResult::Enrolled(2));
    wait_applied(&nodes[0], i).await;
    // Node 2 asking for node 3's chip is refused.
    let resp = export(&nodes[1], stranger).await;
    assert!(
        matches!(&resp, PeerResponse::Error(PeerError::Forbidden(m)) if m.contains("enrolled for node 3")),
        "{resp:?}"
    );
    let resp = nodes[1]
        .raft
        .network()
        .call(
            &nodes[0].addr.to_string(),
            PeerRequest::DomainExport {
                recipient_identity: identity,
            },
            WAIT,
        )
        .await
        .expect("domain export");
    let PeerResponse::DomainPackage(package) = resp else {
        panic!("unexpected {resp:?}")
    };
    assert_eq!(
        nodes[1].chip.domain_import(&package).expect("import").kcv,
        kcv
    );
    // A node certificate of the same CA for a node that is not a member gets nothing.
    let outsider = cluster.pki.material(&PeerIdentity::node(9));
    let server = tls::server_config(&outsider, &[ALPN_RAFT]).expect("server config");
    let endpoint = bind(server, (Ipv4Addr::LOCALHOST, 0).into()).await;
    let outsider = PeerNetwork::new(endpoint.clone(), &outsider).expect("network");
    for req in [
        PeerRequest::DomainExport {
            recipient_identity: nodes[1].chip.info().expect("info").identity_key,
        },
        PeerRequest::Forward(token("outsider")),
    ] {
        let resp = outsider
            .call(&leader_node.addr.to_string(), req, WAIT)
            .await
            .expect("answer");
        assert!(
            matches!(&resp, PeerResponse::Error(PeerError::Forbidden(m)) if m.contains("not a member")),
            "{resp:?}"
        );
    }
    endpoint.close(0u32.into(), b"");

    // A forwarded request to a non-leader is answered NotLeader with a hint.
    let resp = leader_node
        .raft
        .network()
        .call(
            &follower.addr.to_string(),
            PeerRequest::Forward(Command::LoginAttempt {
                token: TokenId(1),
                user: UserType::User,
            }),
            WAIT,
        )
        .await
        .expect("call");
    match resp {
        PeerResponse::Error(PeerError::NotLeader { leader }) => {
            assert_eq!(leader, Some(leader_node.addr.to_string()));
        }
        other => panic!("unexpected {other:?}"),
    }

    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peer_admission_and_bad_requests() {
    let cluster = Cluster::new(default_config());
    let nodes = cluster.start_fresh(1).await;
    let operator = cluster
        .pki
        .material(&PeerIdentity::operator("alice").expect("identity"));
    let client = tls::client_config(&operator, ALPN_RAFT).expect("client config");
    let endpoint =
        quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into()).expect("client endpoint");
    let conn = endpoint
        .connect_with(client, nodes[0].addr, tls::SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    // The node closes the connection: streams fail.
    let closed = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed in time");
    match closed {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(
                c.error_code,
                cloudkey_node::raft::network::CLOSE_FORBIDDEN.into()
            );
        }
        other => panic!("unexpected close {other:?}"),
    }
    // A node certificate of this cluster gets in; bad frames reset the stream, not the node.
    let peer = cluster.pki.material(&PeerIdentity::node(9));
    let client = tls::client_config(&peer, ALPN_RAFT).expect("client config");
    let conn = endpoint
        .connect_with(client, nodes[0].addr, tls::SERVER_NAME)
        .expect("connect")
        .await
        .expect("handshake");
    let reset_code = |e: quinn::ReadToEndError| match e {
        quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) => code,
        other => panic!("expected a reset, got {other:?}"),
    };
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .expect("send");
    send.finish().expect("finish");
    let code = reset_code(recv.read_to_end(1024).await.expect_err("reset"));
    assert_eq!(code, reset::MALFORMED.into());
    let (mut send, mut recv) = conn.open_bi().await.expect("stream");
    send.write_all(&(8u32 << 20).to_be_bytes())
        .await
        .expect("send");
    let code = reset_code(recv.read_to_end(1024).await.expect_err("reset"));
    assert_eq!(code, reset::FRAME_TOO_LARGE.into());
    // A node may not speak for another one.
    let ask = |req: PeerRequest| {
        let conn = conn.clone();
        async move {
            let (mut send, mut recv) = conn.open_bi().await.expect("stream");
            send.write_all(&frame::encode(&req).expect("encode"))
                .await
                .expect("send");
            send.finish().expect("finish");
            frame::read_frame::<PeerResponse>(&mut recv, frame::MAX_FRAME)
                .await
                .expect("answer")
        }
    };
    let vote = |node| {
        PeerRequest::Vote(openraft::raft::VoteRequest {
            vote: openraft::Vote::new(7, node),
            last_log_id: None,
        })
    };
    assert!(matches!(
        ask(vote(1)).await,
        PeerResponse::Error(PeerError::Forbidden(_))
    ));
    assert!(matches!(ask(vote(9)).await, PeerResponse::Vote(Ok(_))));
    // Node 9 is not a member: it may not write, change the membership or take the domain key
    // (to a chip identity of its choosing).
    for req in [
        PeerRequest::Forward(token("x")),
        PeerRequest::AddNode {
            id: 9,
            addr: "127.0.0.1:9".into(),
        },
        PeerRequest::RemoveNode { id: 1 },
        PeerRequest::DomainExport {
            recipient_identity: nodes[0].chip.info().expect("info").identity_key,
        },
    ] {
        let kind = req.kind();
        match ask(req).await {
            PeerResponse::Error(PeerError::Forbidden(m)) => {
                assert!(m.contains("not a member"), "{kind}: {m}");
            }
            other => panic!("{kind}: {other:?}"),
        }
    }
    // (Members' forwarded writes and domain exports are served: see
    // `three_nodes_replicate_and_forward_writes`.)

    // A node certificate for another cluster's CA does not even get through the handshake.
    let other = Pki::new().material(&PeerIdentity::node(9));
    let client = tls::client_config(&other, ALPN_RAFT).expect("client config");
    let res = endpoint
        .connect_with(client, nodes[0].addr, tls::SERVER_NAME)
        .expect("connect")
        .await;
    assert!(res.is_err(), "foreign CA accepted");
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_failover_and_restarted_node_catches_up() {
    let cluster = Cluster::new(default_config());
    let mut nodes = cluster.start_fresh(3).await;
    nodes[0]
        .raft
        .initialize(&members(&nodes))
        .await
        .expect("initialize");
    let leader = wait_leader(&nodes[0], None).await;
    let (_, _) = write(&nodes[0], Command::Init(cluster_info([3; 8]))).await;
    let (_, _) = write(&nodes[1], token("before")).await;

    // Stop the leader; the others elect a new one.
    let pos = nodes.iter().position(|n| n.id == leader).expect("leader");
    let old = nodes.remove(pos);
    let (old_id, old_addr) = (old.id, old.addr);
    let old_term = nodes[0].raft.term();
    let stopped = Instant::now();
    old.stop().await;
    let new_leader = wait_leader(&nodes[0], Some(old_id)).await;
    let elapsed = stopped.elapsed();
    println!(
        "ELECTION: leader {old_id} stopped, node {new_leader} elected after {} ms \
         (heartbeat 100 ms, election timeout 400-800 ms)",
        elapsed.as_millis()
    );
    assert_ne!(new_leader, old_id);
    assert_eq!(wait_leader(&nodes[1], Some(old_id)).await, new_leader);
    assert!(nodes[0].raft.term() > old_term);

    // Writes resume, through either survivor.
    let mut last = 0;
    for (i, n) in ["after-1", "after-2", "after-3"].iter().enumerate() {
        let (r, idx) = write(&nodes[i % 2], token(n)).await;
        assert!(matches!(r, CommandResult::Token(_)));
        last = idx;
    }

    // The old leader restarts from its data directory and catches up.
    let back = cluster.start(old_id, old_addr).await;
    assert!(back.raft.is_initialized(), "membership restored from disk");
    assert!(
        back.state().token_by_label("before").is_some(),
        "own log re-applied"
    );
    wait_leader(&back, None).await;
    nodes.push(back);
    let refs: Vec<&TestNode> = nodes.iter().collect();
    assert_converged(&refs, last).await;
    assert!(nodes[2].state().token_by_label("after-3").is_some());
    // And it takes writes again (forwarded if it is a follower).
    let (r, idx) = write(&nodes[2], token("rejoined")).await;
    assert!(matches!(r, CommandResult::Token(_)));
    let refs: Vec<&TestNode> = nodes.iter().collect();
    assert_converged(&refs, idx).await;
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whole_cluster_restart_keeps_state() {
    let cluster = Cluster::new(default_config());
    let nodes = cluster.start_fresh(3).await;
    nodes[0]
        .raft
        .initialize(&members(&nodes))
        .await
        .expect("initialize");
    wait_leader(&nodes[0], None).await;
    let kcv = [4; 8];
    write(&nodes[2], Command::Init(cluster_info(kcv))).await;
    write(&nodes[1], token("a")).await;
    write(&nodes[0], token("b")).await;
    write(
        &nodes[2],
        Command::PutObjects(vec![
            key_object(7, TokenId(2), kcv),
            key_object(8, TokenId(1), kcv),
        ]),
    )
    .await;
    write(
        &nodes[1],
        Command::SetAttributes {
            id: ObjectId([7; 16]),
            attrs: vec![(3, b"renamed".to_vec())],
        },
    )
    .await;
    let (_, last) = write(
        &nodes[0],
        Command::LoginFailed {
            token: TokenId(2),
            user: UserType::So,
        },
    )
    .await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    assert_converged(&refs, last).await;
    let before = State::new();
    before
        .restore(&nodes[0].state().snapshot_bytes())
        .expect("copy");
    let addrs: Vec<(u64, SocketAddr)> = nodes.iter().map(|n| (n.id, n.addr)).collect();
    for n in nodes {
        n.stop().await;
    }

    let mut nodes = Vec::new();
    for (id, addr) in addrs {
        nodes.push(cluster.start(id, addr).await);
    }
    // Committed entries are re-applied from each node's own disk, before any leader exists.
    for n in &nodes {
        wait_applied(n, last).await;
        same_content(&before, n.state());
    }
    let leader = wait_leader(&nodes[0], None).await;
    assert!(nodes.iter().any(|n| n.id == leader));
    let (r, idx) = write(&nodes[1], token("c")).await;
    assert_eq!(r, CommandResult::Token(TokenId(3)));
    let refs: Vec<&TestNode> = nodes.iter().collect();
    assert_converged(&refs, idx).await;
    let o = nodes[2].state().object(&ObjectId([7; 16])).expect("object");
    assert_eq!(
        o.record.attrs.get(&3).map(Vec::as_slice),
        Some(&b"renamed"[..])
    );
    assert_eq!(verify_chain(&nodes[2].state().audit()), Ok(()));
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lagging_node_catches_up_from_a_snapshot() {
    // Snapshot often and keep few logs, so a node that was away needs the snapshot.
    let config = Config {
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 5,
        purge_batch_size: 1,
        ..default_config()
    };
    let cluster = Cluster::new(config);
    let mut nodes = cluster.start_fresh(3).await;
    nodes[0]
        .raft
        .initialize(&members(&nodes))
        .await
        .expect("initialize");
    let leader = wait_leader(&nodes[0], None).await;
    write(&nodes[0], Command::Init(cluster_info([5; 8]))).await;
    // Stop a follower, then write enough for snapshots and purging.
    let pos = nodes.iter().position(|n| n.id != leader).expect("follower");
    let away = nodes.remove(pos);
    let (away_id, away_addr) = (away.id, away.addr);
    away.stop().await;
    let mut last = 0;
    for i in 0..60 {
        let (_, idx) = write(&nodes[i % 2], token(&format!("t{i}"))).await;
        last = idx;
    }
    let leader_node = nodes.iter().find(|n| n.id == leader).expect("leader");
    leader_node
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > 10),
            "leader purged its early log",
        )
        .await
        .expect("purge");

    let back = cluster.start(away_id, away_addr).await;
    back.raft
        .raft()
        .wait(Some(WAIT))
        .metrics(|m| m.snapshot.is_some(), "snapshot installed")
        .await
        .expect("the lagging node got a snapshot");
    nodes.push(back);
    let refs: Vec<&TestNode> = nodes.iter().collect();
    assert_converged(&refs, last).await;
    assert_eq!(nodes[2].state().tokens().len(), 60);
    assert_eq!(
        nodes[2].raft.raft().metrics().borrow().state,
        ServerState::Follower
    );
    for n in nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_and_leave() {
    let cluster = Cluster::new(default_config());
    let nodes = cluster.start_fresh(3).await;
    // A one-node cluster that grows.
    nodes[0]
        .raft
        .initialize(&members(&nodes[..1]))
        .await
        .expect("initialize");
    assert_eq!(wait_leader(&nodes[0], None).await, 1);
    write(&nodes[0], Command::Init(cluster_info([6; 8]))).await;
    write(&nodes[0], token("x")).await;
    nodes[0]
        .raft
        .add_node(2, nodes[1].addr.to_string())
        .await
        .expect("add node 2");
    assert_eq!(wait_leader(&nodes[1], None).await, 1);
    // Not through a follower: a membership change is an operator's, made by the leader the
    // operator asks (`raft::authority`).
    assert!(matches!(
        nodes[1].raft.add_node(3, nodes[2].addr.to_string()).await,
        Err(NodeError::NotLeader { leader: Some(_) })
    ));
    leader_of(&nodes[1])
        .await
        .add_node(3, nodes[2].addr.to_string())
        .await
        .expect("add node 3");
    // Adding again changes nothing.
    leader_of(&nodes[1])
        .await
        .add_node(3, nodes[2].addr.to_string())
        .await
        .expect("add node 3 again");
    let m = nodes[0]
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.membership_config.membership().voter_ids().count() == 3,
            "three voters",
        )
        .await
        .expect("membership");
    assert_eq!(
        m.membership_config
            .membership()
            .voter_ids()
            .collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    let (_, idx) = write(&nodes[2], token("y")).await;
    let refs: Vec<&TestNode> = nodes.iter().collect();
    assert_converged(&refs, idx).await;
    // The membership changes are in the audit chain.
    let audit = nodes[2].state().audit();
    assert!(
        audit
            .iter()
            .filter(|r| r.summary.starts_with("membership"))
            .count()
            >= 3
    );

    leader_of(&nodes[2])
        .await
        .remove_node(3)
        .await
        .expect("remove node 3");
    nodes[0]
        .raft
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.membership_config.membership().nodes().count() == 2,
            "node 3 gone",
        )
        .await
        .expect("membership");
    assert_eq!(nodes[1].raft.voters(), vec![1, 2]);
    leader_of(&nodes[0])
        .await
        .remove_node(3)
        .await
        .expect("removing again is a no-op");
    let (_, idx) = write(&nodes[1], token("z")).await;
    let refs: Vec<&TestNode> = nodes[..2].iter().collect();
    assert_converged(&refs, idx).await;
    for n in nodes {
        n.stop().await;
    }
}
