//! The client against in-process QUIC test servers (mTLS, certificates minted here): pooling,
//! failover, leader hints, retries, read-your-writes, deadlines and recovery.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudkey_protocol::client::{Client, ClientError, ClientSettings};
use cloudkey_protocol::frame::reset;
use cloudkey_protocol::msg::{ClientRequest, Request, Response, TokenId};
use cloudkey_protocol::{ErrorCode, WireError};
use common::{echo_node, ok, refuse, Handler, LeafSpec, Pki, Relay, Reply, TestServer};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// Scheduling slack on a loaded 2-core machine: the bounds prove "no hang", not latency.
const SLACK: Duration = Duration::from_millis(1500);

fn read() -> Request {
    Request::GenerateRandom { len: 16 }
}

fn write() -> Request {
    Request::DeleteToken(TokenId(1))
}

fn node_of(r: Result<Response, ClientError>) -> u8 {
    match r {
        Ok(Response::Bytes(b)) if b.len() == 1 => b[0],
        other => panic!("unexpected answer {other:?}"),
    }
}

fn client(pki: &Pki, addrs: &[SocketAddr], deadline_ms: u64, connect_ms: u64) -> Client {
    Client::with_material(
        addrs.to_vec(),
        pki.client("app"),
        Duration::from_millis(deadline_ms),
        Duration::from_millis(connect_ms),
    )
    .expect("client")
}

async fn servers(pki: &Pki, n: u64) -> Vec<TestServer> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(TestServer::start(&pki.node(i), echo_node(i)).await);
    }
    v
}

fn addrs(servers: &[TestServer]) -> Vec<SocketAddr> {
    servers.iter().map(|s| s.addr).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_calls_share_one_connection() {
    let pki = Pki::new("ca");
    let srv = servers(&pki, 3).await;
    let c = client(&pki, &addrs(&srv), 20_000, 2000);
    let preferred = c.current_node();

    // More than the server's 1024 concurrent streams: the rest wait for stream credit.
    const CALLS: usize = 1500;
    let mut set = JoinSet::new();
    for _ in 0..CALLS {
        let c = c.clone();
        set.spawn(async move { c.call(read()).await });
    }
    while let Some(r) = set.join_next().await {
        assert_eq!(usize::from(node_of(r.unwrap())), preferred);
    }
    let connections: usize = srv.iter().map(|s| s.stats.connections()).sum();
    assert_eq!(connections, 1, "one pooled connection, one handshake");
    assert_eq!(srv[preferred].stats.requests(), CALLS);
    let ids = srv[preferred].stats.identities.lock().unwrap().clone();
    assert_eq!(ids.len(), 1);
    assert_eq!(ids[0].name, "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_fail_over_when_the_preferred_node_closes() {
    let pki = Pki::new("ca");
    let srv = servers(&pki, 3).await;
    let c = client(&pki, &addrs(&srv), 5000, 1000);
    let first = c.current_node();
    assert_eq!(usize::from(node_of(c.call(read()).await)), first);

    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<u8>>> = Arc::default();
    let errors: Arc<Mutex<Vec<ClientError>>> = Arc::default();
    let mut workers = JoinSet::new();
    for _ in 0..16 {
        let (c, stop, answers, errors) = (c.clone(), stop.clone(), answers.clone(), errors.clone());
        workers.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match c.call(read()).await {
                    Ok(Response::Bytes(b)) => answers.lock().unwrap().push(b[0]),
                    Ok(other) => panic!("{other:?}"),
                    Err(e) => errors.lock().unwrap().push(e),
                }
            }
        });
    }
    let count = || answers.lock().unwrap().len();
    common::wait_for("200 answers", Duration::from_secs(10), || async {
        (count() >= 200).then_some(())
    })
    .await
    .unwrap();
    srv[first].stop();
    let at_stop = count();
    common::wait_for(
        "500 more answers after the stop",
        Duration::from_secs(10),
        || async { (count() >= at_stop + 500).then_some(()) },
    )
    .await
    .unwrap();
    stop.store(true, Ordering::SeqCst);
    while workers.join_next().await.is_some() {}

    assert!(
        errors.lock().unwrap().is_empty(),
        "{:?}",
        errors.lock().unwrap()
    );
    assert_ne!(c.current_node(), first);
    let tail: Vec<u8> = answers.lock().unwrap()[at_stop + 100..].to_vec();
    assert!(tail.iter().all(|n| usize::from(*n) != first), "{tail:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_detected_and_reads_fail_over() {
    let pki = Pki::new("ca");
    let srv = servers(&pki, 2).await;
    // Node 0 sits behind a relay that can black-hole it (power loss, network partition).
    let relay = Relay::start(srv[0].addr).await;
    let c = client(&pki, &[relay.addr, srv[1].addr], 8000, 1000);
    c.set_preferred(0).unwrap();
    assert_eq!(node_of(c.call(read()).await), 0);

    relay.blackhole(true);
    let t = Instant::now();
    // The request goes out on the pooled connection and is lost; keep-alives go unanswered and
    // the connection times out (3 s idle timeout), then the read is retried on node 1.
    assert_eq!(node_of(c.call(read()).await), 1);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(c.current_node(), 1);

    // A write whose dial to the black-holed node cannot complete is retried (nothing was sent).
    c.set_preferred(0).unwrap();
    let t = Instant::now();
    assert_eq!(node_of(c.call(write()).await), 1);
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(srv[0].stats.writes(), 0);
}

#[tokio::test]
async fn a_write_is_not_retried_once_it_was_sent() {
    let pki = Pki::new("ca");
    let s0 = TestServer::start(
        &pki.node(0),
        Arc::new(|_: &ClientRequest| Reply::CloseConnection),
    )
    .await;
    let s1 = TestServer::start(&pki.node(1), echo_node(1)).await;
    let c = client(&pki, &[s0.addr, s1.addr], 5000, 1000);

    c.set_preferred(0).unwrap();
    let e = c.call(write()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(m) if m.contains("outcome of this write is unknown")),
        "{e}"
    );
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert_eq!(s0.stats.writes(), 1);
    assert_eq!(s1.stats.requests(), 0, "not retried elsewhere");

    // A read in the same situation is retried on the other node.
    c.set_preferred(0).unwrap();
    assert_eq!(node_of(c.call(read()).await), 1);
    assert_eq!(s0.stats.requests(), 2);
}

#[tokio::test]
async fn a_stalled_node_fails_the_call_by_its_deadline() {
    let pki = Pki::new("ca");
    let s0 = TestServer::start(&pki.node(0), Arc::new(|_: &ClientRequest| Reply::Stall)).await;
    let c = client(&pki, &[s0.addr], 700, 500);

    let t = Instant::now();
    let e = c.call(read()).await.unwrap_err();
    let took = t.elapsed();
    assert!(matches!(e, ClientError::Unavailable(_)), "{e}");
    assert!(
        took >= Duration::from_millis(700) && took <= Duration::from_millis(700) + SLACK,
        "{took:?}"
    );

    let t = Instant::now();
    let e = c
        .call_with_deadline(write(), Duration::from_millis(300))
        .await
        .unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(&e, ClientError::Unavailable(m) if m.contains("outcome of this write is unknown")),
        "{e}"
    );
    assert!(took <= Duration::from_millis(300) + SLACK, "{took:?}");
}

#[tokio::test]
async fn leader_hints_are_followed_and_remembered() {
    let pki = Pki::new("ca");
    // The leader is not among the configured endpoints: the client learns it from the hint.
    let leader = TestServer::start(&pki.node(2), echo_node(2)).await;
    let hint = leader.addr.to_string();
    let follower = |node: u64| -> Handler {
        let hint = hint.clone();
        Arc::new(move |req: &ClientRequest| {
            if req.request.is_write() {
                refuse(
                    node,
                    0,
                    WireError {
                        code: ErrorCode::NotLeader,
                        detail: "not the leader".into(),
                        leader_hint: Some(hint.clone()),
                    },
                )
            } else {
                ok(node, 0, Response::Bytes(vec![node as u8]))
            }
        })
    };
    let s0 = TestServer::start(&pki.node(0), follower(0)).await;
    let s1 = TestServer::start(&pki.node(1), follower(1)).await;
    let c = client(&pki, &[s0.addr, s1.addr], 5000, 1000);

    assert_eq!(node_of(c.call(write()).await), 2);
    assert_eq!(c.known_endpoints(), vec![s0.addr, s1.addr, leader.addr]);
    assert_eq!(c.endpoints(), &[s0.addr, s1.addr]);
    assert_eq!(s0.stats.writes() + s1.stats.writes(), 1);

    // The next writes go straight to the leader.
    for _ in 0..5 {
        assert_eq!(node_of(c.call(write()).await), 2);
    }
    assert_eq!(s0.stats.writes() + s1.stats.writes(), 1);
    assert_eq!(leader.stats.writes(), 6);

    // Reads stay on the preferred node, so read load is not drawn to the leader.
    let preferred = c.current_node();
    assert!(preferred < 2);
    assert_eq!(usize::from(node_of(c.call(read()).await)), preferred);
}

#[tokio::test]
async fn leader_hints_that_loop_end_at_the_deadline() {
    let pki = Pki::new("ca");
    let other: Arc<Mutex<Vec<String>>> = Arc::default();
    let pointing = |node: u64, to: usize| -> Handler {
        let other = other.clone();
        Arc::new(move |_: &ClientRequest| {
            let hint = other.lock().unwrap().get(to).cloned();
            refuse(
                node,
                0,
                WireError {
                    code: ErrorCode::NotLeader,
                    detail: "ask the other one".into(),
                    leader_hint: hint,
                },
            )
        })
    };
    let s0 = TestServer::start(&pki.node(0), pointing(0, 1)).await;
    let s1 = TestServer::start(&pki.node(1), pointing(1, 0)).await;
    other
        .lock()
        .unwrap()
        .extend([s0.addr.to_string(), s1.addr.to_string()]);
    let c = client(&pki, &[s0.addr, s1.addr], 600, 500);

    let t = Instant::now();
    let e = c.call(write()).await.unwrap_err();
    assert!(
        t.elapsed() <= Duration::from_millis(600) + SLACK,
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.code(), ErrorCode::NotLeader, "{e}");
    let requests = s0.stats.requests() + s1.stats.requests();
    assert!(requests < 60, "bounded hint following: {requests} requests");
}

#[tokio::test]
async fn busy_and_stale_are_retried_on_another_node() {
    let pki = Pki::new("ca");
    let refusing = |node: u64, code: ErrorCode| -> Handler {
        Arc::new(move |_: &ClientRequest| refuse(node, 0, WireError::new(code, "later")))
    };
    let s0 = TestServer::start(&pki.node(0), refusing(0, ErrorCode::Busy)).await;
    let s1 = TestServer::start(&pki.node(1), refusing(1, ErrorCode::Stale)).await;
    let s2 = TestServer::start(&pki.node(2), echo_node(2)).await;
    let c = client(&pki, &[s0.addr, s1.addr, s2.addr], 5000, 1000);

    c.set_preferred(0).unwrap();
    assert_eq!(node_of(c.call(read()).await), 2);
    assert_eq!(s0.stats.requests(), 1);
    assert_eq!(s1.stats.requests(), 1);
    assert_eq!(c.current_node(), 2);
}

#[tokio::test]
async fn busy_everywhere_returns_busy_by_the_deadline() {
    let pki = Pki::new("ca");
    let busy = |node: u64| -> Handler {
        Arc::new(move |_: &ClientRequest| {
            refuse(node, 0, WireError::new(ErrorCode::Busy, "queues full"))
        })
    };
    let s0 = TestServer::start(&pki.node(0), busy(0)).await;
    let s1 = TestServer::start(&pki.node(1), busy(1)).await;
    let c = client(&pki, &[s0.addr, s1.addr], 400, 300);

    let t = Instant::now();
    let e = c.call(read()).await.unwrap_err();
    assert!(
        t.elapsed() <= Duration::from_millis(400) + SLACK,
        "{:?}",
        t.elapsed()
    );
    assert!(
        matches!(&e, ClientError::Remote(w) if w.code == ErrorCode::Busy),
        "{e}"
    );
    assert!(
        s0.stats.requests() + s1.stats.requests() >= 3,
        "retried with backoff"
    );
}

#[tokio::test]
async fn an_overloaded_stream_reset_is_retried_even_for_writes() {
    let pki = Pki::new("ca");
    let s0 = TestServer::start(
        &pki.node(0),
        Arc::new(|_: &ClientRequest| Reply::Reset(reset::OVERLOADED)),
    )
    .await;
    let s1 = TestServer::start(&pki.node(1), echo_node(1)).await;
    let c = client(&pki, &[s0.addr, s1.addr], 5000, 1000);
    c.set_preferred(0).unwrap();
    assert_eq!(node_of(c.call(write()).await), 1);
    assert_eq!(s0.stats.writes(), 1);
}

#[tokio::test]
async fn other_refusals_are_returned_at_once() {
    let pki = Pki::new("ca");
    let s0 = TestServer::start(
        &pki.node(0),
        Arc::new(|_: &ClientRequest| {
            refuse(0, 3, WireError::new(ErrorCode::PinIncorrect, "wrong PIN"))
        }),
    )
    .await;
    let s1 = TestServer::start(&pki.node(1), echo_node(1)).await;
    let c = client(&pki, &[s0.addr, s1.addr], 5000, 1000);
    c.set_preferred(0).unwrap();
    let e = c.call(read()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::PinIncorrect);
    assert!(
        matches!(&e, ClientError::Remote(w) if w.detail == "wrong PIN"),
        "{e}"
    );
    assert_eq!(s1.stats.requests(), 0);
    assert_eq!(c.max_applied(), 3);
}

#[tokio::test]
async fn a_malformed_answer_is_a_protocol_error() {
    let pki = Pki::new("ca");
    // A frame whose body is Response variant 0x7f: no such variant.
    let s0 = TestServer::start(
        &pki.node(0),
        Arc::new(|_: &ClientRequest| Reply::Raw(vec![0, 0, 0, 4, 0, 0, 0, 0x7f])),
    )
    .await;
    let s1 = TestServer::start(&pki.node(1), echo_node(1)).await;
    let c = client(&pki, &[s0.addr, s1.addr], 5000, 1000);
    c.set_preferred(0).unwrap();
    let e = c.call(read()).await.unwrap_err();
    assert!(matches!(e, ClientError::Protocol(_)), "{e}");
    assert_eq!(e.code(), ErrorCode::DeviceError);
    assert_eq!(s1.stats.requests(), 0);
}

#[tokio::test]
async fn the_highest_applied_index_is_sent_with_the_next_request() {
    let pki = Pki::new("ca");
    let n = Arc::new(AtomicUsize::new(0));
    let script = {
        let n = n.clone();
        Arc::new(
            move |_: &ClientRequest| match n.fetch_add(1, Ordering::SeqCst) {
                0 => ok(0, 10, Response::Bytes(vec![0])),
                1 => refuse(
                    0,
                    20,
                    WireError::new(ErrorCode::ObjectHandleInvalid, "gone"),
                ),
                2 => ok(0, 5, Response::Bytes(vec![0])),
                _ => ok(0, 21, Response::Bytes(vec![0])),
            },
        )
    };
    let s0 = TestServer::start(&pki.node(0), script).await;
    let c = client(&pki, &[s0.addr], 5000, 1000);
    assert_eq!(c.max_applied(), 0);
    c.call(read()).await.unwrap();
    assert_eq!(c.max_applied(), 10);
    c.call(read()).await.unwrap_err();
    assert_eq!(c.max_applied(), 20, "error answers count too");
    c.call(read()).await.unwrap();
    assert_eq!(c.max_applied(), 20, "never goes back");
    c.clone().call(read()).await.unwrap();
    assert_eq!(c.max_applied(), 21, "clones share it");
    assert_eq!(*s0.stats.min_applied.lock().unwrap(), vec![0, 10, 20, 20]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reachable_node_is_unavailable_within_the_deadline() {
    let pki = Pki::new("ca");
    let (_a, a) = common::silent_addr();
    let (_b, b) = common::silent_addr();
    let c = client(&pki, &[a, b], 1000, 300);

    let mut set = JoinSet::new();
    for i in 0..50 {
        let c = c.clone();
        set.spawn(async move {
            let t = Instant::now();
            let r = if i % 2 == 0 {
                c.call(read()).await
            } else {
                c.call(write()).await
            };
            (r, t.elapsed())
        });
    }
    while let Some(r) = set.join_next().await {
        let (r, took) = r.unwrap();
        let e = r.unwrap_err();
        assert!(
            matches!(&e, ClientError::Unavailable(m) if m.contains("no node answered within 1000 ms")),
            "{e}"
        );
        assert!(took <= Duration::from_millis(1000) + SLACK, "{took:?}");
    }
    // A shorter per-call deadline is honoured too.
    let t = Instant::now();
    let e = c
        .call_with_deadline(read(), Duration::from_millis(150))
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert!(
        t.elapsed() <= Duration::from_millis(150) + SLACK,
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn calls_recover_when_a_node_comes_back_on_the_same_port() {
    let pki = Pki::new("ca");
    let node = pki.node(0);
    let s0 = TestServer::start(&node, echo_node(0)).await;
    let addr = s0.addr;
    let c = client(&pki, &[addr], 800, 300);
    assert_eq!(node_of(c.call(read()).await), 0);

    s0.stop();
    drop(s0);
    let t = Instant::now();
    let e = c.call(read()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert!(
        t.elapsed() <= Duration::from_millis(800) + SLACK,
        "{:?}",
        t.elapsed()
    );

    let s0 = TestServer::start_at(&node, addr, echo_node(0)).await;
    let back = common::wait_for("a call to succeed", Duration::from_secs(10), || {
        let c = c.clone();
        async move { c.call(read()).await.ok() }
    })
    .await;
    assert!(back.is_ok(), "calls succeed again once the node is back");
    assert_eq!(s0.stats.connections(), 1);
}

#[tokio::test]
async fn call_node_talks_to_one_node_without_failover() {
    let pki = Pki::new("ca");
    let srv = servers(&pki, 2).await;
    let c = client(&pki, &addrs(&srv), 600, 300);
    assert_eq!(node_of(c.call_node(0, Request::Status).await), 0);
    assert_eq!(node_of(c.call_node(1, Request::Status).await), 1);

    srv[1].stop();
    let before = srv[0].stats.requests();
    let e = c.call_node(1, Request::Status).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable, "{e}");
    assert_eq!(srv[0].stats.requests(), before, "no failover");

    assert!(matches!(
        c.call_node(9, Request::Status).await,
        Err(ClientError::Config(_))
    ));
    assert!(c.set_preferred(9).is_err());
}

#[tokio::test]
async fn a_server_with_a_non_node_certificate_is_refused() {
    let pki = Pki::new("ca");
    // Right CA and right DNS name, but a client identity: not a node.
    let issued = pki.issue(
        &LeafSpec::uris(&["cloudkey://client/impostor"])
            .dns(&[cloudkey_protocol::tls::SERVER_NAME])
            .server(),
    );
    let s0 = TestServer::start(&pki.material(&issued), echo_node(0)).await;
    let c = client(&pki, &[s0.addr], 600, 300);
    let e = c.call(read()).await.unwrap_err();
    assert!(
        matches!(&e, ClientError::Unavailable(m) if m.contains("not a node")),
        "{e}"
    );
    assert_eq!(s0.stats.requests(), 0);
}

#[tokio::test]
async fn a_closed_client_fails_at_once() {
    let pki = Pki::new("ca");
    let srv = servers(&pki, 1).await;
    let c = client(&pki, &addrs(&srv), 5000, 1000);
    c.call(read()).await.unwrap();
    let other = c.clone();
    c.close();
    let t = Instant::now();
    let e = other.call(read()).await.unwrap_err();
    assert_eq!(e.code(), ErrorCode::Unavailable);
    assert!(t.elapsed() < Duration::from_millis(100));
}

#[tokio::test]
async fn settings_from_toml_build_a_working_client() {
    let pki = Pki::new("ca");
    let srv = servers(&pki, 1).await;
    let dir = tempfile::tempdir().unwrap();
    let issued = pki.issue(&LeafSpec::uris(&["cloudkey://client/app"]));
    std::fs::create_dir(dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("pki/ca.pem"), pki.ca_pem()).unwrap();
    std::fs::write(dir.path().join("pki/app.pem"), &issued.cert_pem).unwrap();
    std::fs::write(dir.path().join("pki/app.key"), &issued.key_pem).unwrap();
    let toml = format!(
        "endpoints = [\"{}\"]\nca = \"pki/ca.pem\"\ncert = \"pki/app.pem\"\nkey = \"pki/app.key\"\n",
        srv[0].addr
    );
    let path = dir.path().join("client.toml");
    std::fs::write(&path, &toml).unwrap();

    // Relative paths are relative to the file; defaults apply.
    let s = ClientSettings::from_file(&path).unwrap();
    assert_eq!(s.ca, dir.path().join("pki/ca.pem"));
    assert_eq!((s.deadline_ms, s.connect_timeout_ms), (5000, 1000));
    let c = Client::new(&s).unwrap();
    assert_eq!(c.endpoints(), &[srv[0].addr]);
    assert_eq!(node_of(c.call(read()).await), 0);

    // The same text read from the current directory cannot find the files.
    let e = ClientSettings::from_toml_str(&toml).unwrap_err();
    assert!(
        matches!(&e, ClientError::Config(m) if m.contains("ca file")),
        "{e}"
    );

    let abs = |rest: &str| {
        format!(
            "ca = {:?}\ncert = {:?}\nkey = {:?}\n{rest}",
            dir.path().join("pki/ca.pem"),
            dir.path().join("pki/app.pem"),
            dir.path().join("pki/app.key"),
        )
    };
    let good = ClientSettings::from_toml_str(&abs(
        "endpoints = [\"127.0.0.1:7400\", \"[::1]:7400\", \"node3.example:7400\"]\ndeadline_ms = 250",
    ))
    .unwrap();
    assert_eq!(good.deadline(), Duration::from_millis(250));
    assert_eq!(good.endpoints.len(), 3);

    for (bad, needle) in [
        ("endpoints = []", "at least one"),
        ("endpoints = [\"127.0.0.1\"]", "not host:port"),
        ("endpoints = [\"10.0.0.1:0\"]", "no valid port"),
        ("endpoints = [\"a b:1\"]", "neither an IP"),
        ("endpoints = [\"h:1\", \"h:1\"]", "listed twice"),
        ("endpoints = [\"h:1\"]\ndeadline_ms = 0", "deadline_ms"),
        (
            "endpoints = [\"h:1\"]\nconnect_timeout_ms = 600001",
            "connect_timeout_ms",
        ),
        ("endpoints = [\"h:1\"]\ndeadline_msec = 10", "unknown field"),
        ("endpoints = \"h:1\"", "invalid client settings"),
    ] {
        let e = ClientSettings::from_toml_str(&abs(bad)).unwrap_err();
        assert!(
            matches!(&e, ClientError::Config(m) if m.contains(needle)),
            "{bad}: {e}"
        );
    }
    let e = ClientSettings::from_toml_str(
        "endpoints = [\"h:1\"]\nca = \"/nonexistent/ca.pem\"\ncert = \"x\"\nkey = \"y\"",
    )
    .unwrap_err();
    assert!(
        matches!(&e, ClientError::Config(m) if m.contains("/nonexistent/ca.pem")),
        "{e}"
    );
    let e = ClientSettings::from_file(&dir.path().join("missing.toml")).unwrap_err();
    assert!(
        matches!(&e, ClientError::Config(m) if m.contains("missing.toml")),
        "{e}"
    );
}

#[test]
fn a_client_needs_a_runtime_and_sane_parts() {
    let pki = Pki::new("ca");
    let addr: SocketAddr = "127.0.0.1:7400".parse().unwrap();
    let d = Duration::from_secs(1);
    // Outside a tokio runtime: a configuration error, not a panic.
    let e = Client::with_material(vec![addr], pki.client("a"), d, d).unwrap_err();
    assert!(
        matches!(&e, ClientError::Config(m) if m.contains("runtime")),
        "{e}"
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let m = pki.client("a");
        assert!(Client::with_material(vec![], m.clone(), d, d).is_err());
        assert!(Client::with_material(vec![addr, addr], m.clone(), d, d).is_err());
        assert!(Client::with_material(vec![addr], m.clone(), Duration::ZERO, d).is_err());
        let c = Client::with_material(vec![addr], m, d, d).unwrap();
        assert!(format!("{c:?}").contains("127.0.0.1:7400"));
    });
}
