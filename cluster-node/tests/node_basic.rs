//! The `cloudkey-node` binary on its own: one node, real processes, real QUIC with mutual TLS.
//!
//! * A bad configuration exits 64 with one line on stderr, before anything binds.
//! * A single-node cluster end to end through the protocol client: init, roles, tokens, the
//!   cluster-wide PIN lockout, an EC key pair generated in a chip, a signature checked with the
//!   RustCrypto `p256` crate, forged grants refused.
//! * Malformed frames (an oversized length prefix, garbage, an unknown enum variant) are
//!   answered `BadRequest` and the node keeps serving.
//! * SIGTERM stops the node with status 0, and the restarted node keeps its address, its state
//!   and (with nvram) its chips' domain.
//!
//! Multi-node scenarios live in the workspace's `tests/` crate.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cloudkey_protocol::ck;
use cloudkey_protocol::client::{Client, ClientError};
use cloudkey_protocol::frame::{self, MAX_FRAME};
use cloudkey_protocol::msg::{
    AttrValue, Attribute, Auth, ClientRequest, ClientResponse, Mechanism, Member, Request,
    Response, SessionGrant, SignInput, TokenId, UserType,
};
use cloudkey_protocol::tls::{self, TlsFiles, TlsMaterial, SERVER_NAME};
use cloudkey_protocol::{ErrorCode, ALPN_CLIENT, PROTOCOL_VERSION};
use cloudkey_test_support::{wait_for, NodeProcess, TestPki};
use p256::ecdsa::signature::hazmat::PrehashVerifier;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const MAX_FAILURES: u32 = 3;
/// DER of the prime256v1 OID, the `CKA_EC_PARAMS` of P-256.
const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

// ---- PKI ------------------------------------------------------------------------------------

/// The test PKI with the leaves these tests need, as PEM files named by stem (`node-1`,
/// `node-2`, `operator-admin`, `client-app`) in its directory.
struct Pki {
    pki: TestPki,
}

impl Pki {
    fn mint() -> Self {
        let pki = TestPki::new("test CA");
        for (stem, issued) in [
            ("node-1", pki.node(1)),
            ("node-2", pki.node(2)),
            ("operator-admin", pki.operator("admin")),
            ("client-app", pki.client("app")),
        ] {
            let _ = pki.write(stem, &issued);
        }
        Self { pki }
    }

    fn files(&self, stem: &str) -> TlsFiles {
        let dir = self.pki.dir();
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    fn material(&self, stem: &str) -> TlsMaterial {
        TlsMaterial::load(&self.files(stem)).unwrap()
    }
}

// ---- node processes -------------------------------------------------------------------------

/// A node's configuration: cheap PINs, fast Raft, two soft chips sealed with an nvram key.
fn node_config(root: &Path, pki: &Pki, id: u64, cert_stem: &str) -> String {
    let files = pki.files(cert_stem);
    let nvram_key = root.join("nvram.key");
    if !nvram_key.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&nvram_key, hex::encode([7u8; 32])).unwrap();
        std::fs::set_permissions(&nvram_key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    format!(
        r#"
id = {id}
listen = "127.0.0.1:0"
data_dir = "{data}"

[tls]
ca = "{ca}"
cert = "{cert}"
key = "{key}"

[[chips]]
kind = "soft"
count = 2
slots = 16
nvram_key_file = "{nvram}"

[raft]
heartbeat_ms = 50
election_min_ms = 150
election_max_ms = 300

[security]
max_login_failures = {MAX_FAILURES}
argon2_memory_kib = 256
argon2_iterations = 1
"#,
        data = root.join("data").display(),
        ca = files.ca.display(),
        cert = files.cert.display(),
        key = files.key.display(),
        nvram = nvram_key.display(),
    )
}

/// A running `cloudkey-node` (the support crate's [`NodeProcess`]: stdout and stderr in files
/// next to its configuration); killed when dropped, its log shown if the test failed.
struct Node {
    process: NodeProcess,
    addr: SocketAddr,
}

impl Node {
    fn start(config: &Path) -> Node {
        let dir = config.parent().expect("the configuration's directory");
        let launch = NodeProcess::launch(env!("CARGO_BIN_EXE_cloudkey-node"), config)
            .env("RUST_LOG", "info")
            .logs_to(dir.join("node.stdout"), dir.join("node.log"));
        let mut process = NodeProcess::spawn(launch).unwrap_or_else(|e| panic!("{e}"));
        let addr = process
            .listening_blocking(START_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
        Node { process, addr }
    }

    fn log(&self) -> String {
        self.process.log()
    }

    /// Sends SIGTERM and waits for the exit.
    fn terminate(mut self) -> ExitStatus {
        let status = self
            .process
            .stop_blocking(STOP_TIMEOUT)
            .unwrap_or_else(|e| panic!("node did not stop after SIGTERM: {e}"));
        // Anything more on stdout than the LISTENING line breaks the contract.
        let extra = self.process.stdout_after_announcement();
        assert!(extra.is_empty(), "more than one stdout line: {extra:?}");
        status
    }
}

fn client(pki: &Pki, stem: &str, node: &Node) -> Client {
    Client::with_material(
        vec![node.addr],
        pki.material(stem),
        Duration::from_secs(15),
        Duration::from_secs(5),
    )
    .unwrap()
}

fn code(r: Result<Response, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Remote(w)) => w.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// How long the tests wait for a condition.
const WAIT: Duration = Duration::from_secs(20);

// ---- tests ----------------------------------------------------------------------------------

fn run_expect_exit(config_text: Option<&str>, dir: &Path) -> (Option<i32>, String) {
    let config = dir.join("node.toml");
    if let Some(text) = config_text {
        std::fs::write(&config, text).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_cloudkey-node"))
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "nothing on stdout");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::mint();
    let good = node_config(root.path(), &pki, 1, "node-1");
    let cases: Vec<(String, &str)> = vec![
        (good.replace("id = 1", "id = 0"), "id"),
        (
            good.replace("listen = \"127.0.0.1:0\"", "listen = \"nowhere\""),
            "listen",
        ),
        (
            good.replace("kind = \"soft\"", "kind = \"quantum\""),
            "kind",
        ),
        (good.replace("[raft]", "[raft]\nbogus = 1"), "bogus"),
        (good.replace("count = 2", "count = \"two\""), "line"),
        // The certificate of node 2 in the configuration of node 1.
        (good.replace("node-1.", "node-2."), "node 2"),
        (
            good.replace("nvram_key_file = \"", "nvram_key_file = \"/nonexistent"),
            "nvram",
        ),
    ];
    for (text, needle) in cases {
        let (status, stderr) = run_expect_exit(Some(&text), root.path());
        assert_eq!(status, Some(64), "{needle}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr:?}");
        assert!(stderr.contains(needle), "{stderr:?} mentions {needle:?}");
        assert!(
            !root.path().join("data").exists(),
            "nothing created for a bad configuration"
        );
    }
    // No configuration file.
    std::fs::remove_file(root.path().join("node.toml")).unwrap();
    let (status, stderr) = run_expect_exit(None, root.path());
    assert_eq!(status, Some(64), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    // No --config at all.
    let out = Command::new(env!("CARGO_BIN_EXE_cloudkey-node"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr:?}");
    assert!(stderr.contains("--config"), "{stderr:?}");
}

/// Writes one raw frame on a new stream and reads the answer: `Ok(response)` or `Err(())` when
/// the node reset the stream without a response.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<ClientResponse, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    // The node may stop our send side once it has seen enough; that is not an error here.
    let _ = send.write_all(bytes).await;
    let _ = send.finish();
    tokio::time::timeout(
        Duration::from_secs(10),
        frame::read_frame::<ClientResponse>(&mut recv, MAX_FRAME),
    )
    .await
    .map_err(|_| "no answer".to_string())?
    .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_cluster_end_to_end() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::mint();
    let config = root.path().join("node.toml");
    std::fs::write(&config, node_config(root.path(), &pki, 1, "node-1")).unwrap();
    let node = Node::start(&config);
    let admin = client(&pki, "operator-admin", &node);
    let app = client(&pki, "client-app", &node);

    // Before init.
    let Response::Status(s) = admin.call(Request::Status).await.unwrap() else {
        panic!("status")
    };
    assert_eq!(s.id, 1);
    assert!(!s.initialized);
    assert_eq!(s.addr, node.addr.to_string());
    assert_eq!(s.chips.len(), 2);
    let members = vec![Member {
        id: 1,
        addr: node.addr.to_string(),
    }];
    // Roles: a client certificate may not administer.
    assert_eq!(
        code(
            app.call(Request::Init {
                members: members.clone()
            })
            .await
        ),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            app.call(Request::Login {
                token: TokenId(1),
                user: UserType::User,
                pin: "u-pin-2468".into()
            })
            .await
        ),
        ErrorCode::ClusterNotInitialized
    );

    // Init, once.
    assert_eq!(
        admin
            .call(Request::Init {
                members: members.clone()
            })
            .await
            .unwrap(),
        Response::Done
    );
    assert_eq!(
        code(admin.call(Request::Init { members }).await),
        ErrorCode::ActionProhibited
    );
    let status = wait_for(
        "both chips in the domain, a confirmed leader",
        WAIT,
        || async {
            match admin.call(Request::Status).await {
                Ok(Response::Status(s))
                    if s.initialized
                        && s.leader.is_some()
                        && s.chips.iter().all(|c| c.has_domain) =>
                {
                    Some(s)
                }
                _ => None,
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(status.leader, Some(1));
    assert_eq!(status.domain_kcv.len(), 16);

    // A token.
    let create = |label: &str| Request::CreateToken {
        label: label.into(),
        so_pin: "so-secret-1357".into(),
        user_pin: Some("u-pin-2468".into()),
    };
    assert_eq!(
        code(app.call(create("payments")).await),
        ErrorCode::Forbidden
    );
    let Response::Token(token) = admin.call(create("payments")).await.unwrap() else {
        panic!("token")
    };
    assert_eq!(token.label, "payments");
    assert!(token.user_pin_initialized);
    assert_eq!(
        code(admin.call(create("payments")).await),
        ErrorCode::ArgumentsBad
    );
    let Response::Tokens(tokens) = app.call(Request::ListTokens).await.unwrap() else {
        panic!("tokens")
    };
    assert_eq!(tokens.len(), 1);

    // Lockout: wrong PINs are counted; the last allowed one locks; then even the right PIN
    // is refused until an operator unlocks.
    let login = |pin: &str| Request::Login {
        token: token.id,
        user: UserType::User,
        pin: pin.into(),
    };
    for _ in 1..MAX_FAILURES {
        assert_eq!(code(app.call(login("0000")).await), ErrorCode::PinIncorrect);
    }
    assert_eq!(code(app.call(login("0000")).await), ErrorCode::PinLocked);
    assert_eq!(
        code(app.call(login("u-pin-2468")).await),
        ErrorCode::PinLocked
    );
    let Response::Tokens(tokens) = app.call(Request::ListTokens).await.unwrap() else {
        panic!("tokens")
    };
    assert!(tokens[0].user_locked);
    assert_eq!(
        code(app.call(Request::UnlockToken(token.id)).await),
        ErrorCode::Forbidden
    );
    admin.call(Request::UnlockToken(token.id)).await.unwrap();
    let Response::Session {
        grant,
        expires_unix_ms,
    } = app.call(login("u-pin-2468")).await.unwrap()
    else {
        panic!("session")
    };
    assert!(expires_unix_ms > 0);
    let auth = Auth {
        token: token.id,
        grant: Some(grant.clone()),
    };

    // An EC key pair generated in a chip; sign a digest; verify with RustCrypto p256.
    let Response::KeyPair { public, private } = app
        .call(Request::GenerateKeyPair {
            auth: auth.clone(),
            mechanism: Mechanism::new(ck::CKM_EC_KEY_PAIR_GEN),
            public_template: vec![
                Attribute::bytes(ck::CKA_EC_PARAMS, P256_PARAMS),
                Attribute::bool(ck::CKA_TOKEN, true),
                Attribute::bool(ck::CKA_VERIFY, true),
                Attribute::bytes(ck::CKA_LABEL, "sig"),
            ],
            private_template: vec![
                Attribute::bool(ck::CKA_TOKEN, true),
                Attribute::bool(ck::CKA_PRIVATE, true),
                Attribute::bool(ck::CKA_SENSITIVE, true),
                Attribute::bool(ck::CKA_SIGN, true),
                Attribute::bytes(ck::CKA_LABEL, "sig"),
            ],
        })
        .await
        .unwrap()
    else {
        panic!("key pair")
    };
    let point = ec_point(&app, &auth, public).await;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"pay 100 to alice");
    let sign = |auth: Auth| Request::Sign {
        auth,
        key: private,
        mechanism: Mechanism::new(ck::CKM_ECDSA),
        input: SignInput::Data(digest.as_ref().to_vec()),
    };
    let Response::Bytes(sig) = app.call(sign(auth.clone())).await.unwrap() else {
        panic!("signature")
    };
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    vk.verify_prehash(
        digest.as_ref(),
        &p256::ecdsa::Signature::from_slice(&sig).unwrap(),
    )
    .expect("the chip's signature verifies with p256");

    // Grants: none, forged, or of another token are refused.
    let public_only = Auth {
        token: token.id,
        grant: None,
    };
    assert_eq!(
        code(app.call(sign(public_only)).await),
        ErrorCode::UserNotLoggedIn
    );
    let mut forged = grant.0.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged = Auth {
        token: token.id,
        grant: Some(SessionGrant(forged)),
    };
    assert_eq!(
        code(app.call(sign(forged)).await),
        ErrorCode::UserNotLoggedIn
    );
    let elsewhere = Auth {
        token: TokenId(token.id.0 + 40),
        grant: Some(grant.clone()),
    };
    assert_eq!(
        code(app.call(sign(elsewhere)).await),
        ErrorCode::TokenNotPresent
    );

    // Malformed frames on a raw connection; the node answers BadRequest and keeps serving.
    let raw = raw_connection(&pki, node.addr).await;
    let oversized = raw_exchange(&raw, &[0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(
        oversized.unwrap().result.unwrap_err().code,
        ErrorCode::BadRequest
    );
    let garbage = raw_exchange(&raw, &[0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]).await;
    assert_eq!(
        garbage.unwrap().result.unwrap_err().code,
        ErrorCode::BadRequest
    );
    // version 1, min_applied 0, Request variant 0x7f (none such).
    let unknown = raw_exchange(&raw, &[0, 0, 0, 3, 0x01, 0x00, 0x7f]).await;
    assert_eq!(
        unknown.unwrap().result.unwrap_err().code,
        ErrorCode::BadRequest
    );
    let wrong_version = ClientRequest {
        version: PROTOCOL_VERSION + 1,
        min_applied: 0,
        request: Request::Status,
    };
    let r = raw_exchange(&raw, &frame::encode(&wrong_version).unwrap()).await;
    assert_eq!(r.unwrap().result.unwrap_err().code, ErrorCode::BadRequest);
    let ok = ClientRequest {
        version: PROTOCOL_VERSION,
        min_applied: 0,
        request: Request::Status,
    };
    let r = raw_exchange(&raw, &frame::encode(&ok).unwrap())
        .await
        .unwrap();
    assert!(matches!(r.result, Ok(Response::Status(_))));
    // Read-your-writes bound: an index far ahead is refused as stale after the wait.
    let ahead = ClientRequest {
        version: PROTOCOL_VERSION,
        min_applied: r.applied + 1_000_000,
        request: Request::Status,
    };
    let r = raw_exchange(&raw, &frame::encode(&ahead).unwrap())
        .await
        .unwrap();
    assert_eq!(r.result.unwrap_err().code, ErrorCode::Stale);
    raw.close(0u32.into(), b"done");
    assert!(app.call(Request::Status).await.is_ok(), "still serving");

    // No secret in the log.
    let log = node.log();
    for secret in ["so-secret-1357", "u-pin-2468"] {
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }

    // SIGTERM: a prompt, clean exit.
    admin.close();
    app.close();
    let addr = node.addr;
    let stopped = Instant::now();
    let status = node.terminate();
    assert_eq!(status.code(), Some(0), "clean exit");
    assert!(stopped.elapsed() < Duration::from_secs(10));

    // Restarted from its data directory: same address, same state, same domain (nvram).
    let node = Node::start(&config);
    assert_eq!(node.addr, addr, "the address is kept across restarts");
    let app = client(&pki, "client-app", &node);
    let auth = wait_for("login after restart", WAIT, || async {
        match app.call(login("u-pin-2468")).await {
            Ok(Response::Session { grant, .. }) => Some(Auth {
                token: token.id,
                grant: Some(grant),
            }),
            _ => None,
        }
    })
    .await
    .unwrap();
    // The grant from before the restart is still valid: the session MAC key is the cluster's.
    let Response::Bytes(sig2) = app
        .call(sign(Auth {
            token: token.id,
            grant: Some(grant),
        }))
        .await
        .unwrap()
    else {
        panic!("signature after restart")
    };
    vk.verify_prehash(
        digest.as_ref(),
        &p256::ecdsa::Signature::from_slice(&sig2).unwrap(),
    )
    .unwrap();
    assert!(app.call(sign(auth)).await.is_ok());
    app.close();
    assert_eq!(node.terminate().code(), Some(0));
}

async fn ec_point(app: &Client, auth: &Auth, public: cloudkey_protocol::msg::ObjectId) -> Vec<u8> {
    let Response::Attributes(values) = app
        .call(Request::GetAttributes {
            auth: auth.clone(),
            object: public,
            types: vec![ck::CKA_EC_POINT],
        })
        .await
        .unwrap()
    else {
        panic!("attributes")
    };
    let AttrValue::Value(der) = &values[0] else {
        panic!("no CKA_EC_POINT: {values:?}")
    };
    // DER OCTET STRING of the 65-byte uncompressed point.
    assert_eq!(&der[..2], &[0x04, 65], "{der:02x?}");
    der[2..].to_vec()
}

async fn raw_connection(pki: &Pki, addr: SocketAddr) -> quinn::Connection {
    let config = tls::client_config(&pki.material("client-app"), ALPN_CLIENT).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    endpoint.connect(addr, SERVER_NAME).unwrap().await.unwrap()
}

/// Streams that announce the largest frame and then send nothing hold the node's whole request
/// memory budget (`REQUEST_MEMORY`, 64 × `MAX_FRAME`). The next request must be refused at once
/// with the `OVERLOADED` reset code, which the client retries elsewhere, instead of waiting out
/// the read deadline and being reset `MALFORMED` (which the client does not retry); and once
/// the budget is free again the node serves as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_request_memory_budget_is_answered_overloaded_at_once() {
    let root = tempfile::tempdir().unwrap();
    let pki = Pki::mint();
    let config = root.path().join("node.toml");
    std::fs::write(&config, node_config(root.path(), &pki, 1, "node-1")).unwrap();
    let node = Node::start(&config);
    let raw = raw_connection(&pki, node.addr).await;
    let status = frame::encode(&ClientRequest {
        version: PROTOCOL_VERSION,
        min_applied: 0,
        request: Request::Status,
    })
    .unwrap();
    let r = raw_exchange(&raw, &status).await.unwrap();
    assert!(matches!(r.result, Ok(Response::Status(_))), "{r:?}");

    let budget_frames = cloudkey_node::server::REQUEST_MEMORY / MAX_FRAME;
    let announce = u32::try_from(MAX_FRAME).unwrap().to_be_bytes();
    let mut holders = Vec::new();
    for _ in 0..budget_frames {
        let (mut send, recv) = raw.open_bi().await.unwrap();
        send.write_all(&announce).await.unwrap();
        holders.push((send, recv));
    }
    // The holders' prefixes reach the node in their own time: ask until it refuses, and
    // check how it refuses.
    let refused = wait_for("a refusal", Duration::from_secs(20), || {
        let raw = raw.clone();
        let status = status.clone();
        async move {
            let started = Instant::now();
            match raw_exchange(&raw, &status).await {
                Err(e) => Some((e, started.elapsed())),
                Ok(_) => None,
            }
        }
    })
    .await
    .expect("the node kept answering with its memory budget exhausted");
    let (error, took) = refused;
    let overloaded = format!("error {}", frame::reset::OVERLOADED);
    assert!(error.contains(&overloaded), "refused as {error:?}");
    assert!(took < Duration::from_secs(5), "refused only after {took:?}");

    for (mut send, _) in holders {
        let _ = send.reset(quinn::VarInt::from_u32(0));
    }
    let served = wait_for("an answer", Duration::from_secs(20), || {
        let raw = raw.clone();
        let status = status.clone();
        async move { raw_exchange(&raw, &status).await.ok() }
    })
    .await
    .expect("the node did not serve again once the budget was free");
    assert!(
        matches!(served.result, Ok(Response::Status(_))),
        "{served:?}"
    );
    drop(node);
}
