//! Dual control, the audit chain and terminal master-key injection (seed 001), against real
//! 3-node clusters:
//!
//! * officers approve quorum-guarded requests; the requester never approves their own, each
//!   officer counts once, approvals bind the exact parameters;
//! * the TMK flow end to end: the terminal's key is made by OpenSSL, the TMK is decrypted and its
//!   KCV checked with OpenSSL (RSA-OAEP/AES-256 and SM2/SM4);
//! * every refusal the flow has (self-approval, wrong and reused SMS codes, stale payloads,
//!   expired requests, approvals replayed for another terminal, a terminal without an
//!   application, the terminal's check before approval, lockout);
//! * a leader killed between the approval and the injection still gives exactly one TMK;
//! * the audit chain has every step, with chip-signed checkpoints.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use cloudkey_node::pki::Identity;
use cloudkey_protocol::client::Client;
use cloudkey_protocol::gov::{
    ApprovalInfo, ApprovalStatus, GuardedOp, OfficerAuth, PolicyScope, Rule, TerminalKey,
    TmkDelivery, TmkQr,
};
use cloudkey_protocol::msg::{Request, Response, Secret};
use cloudkey_protocol::ErrorCode;
use cloudkey_tests::{wait_for, Cluster};

use crate::p11;
use crate::util::expect_code;

const ALICE_PIN: &str = "alice-pin-1";
const BOB_PIN: &str = "bob-pin-22";
const CAROL_PIN: &str = "carol-pin-333";

fn officer(name: &str) -> OfficerAuth {
    let pin = match name {
        "alice" => ALICE_PIN,
        "bob" => BOB_PIN,
        _ => CAROL_PIN,
    };
    OfficerAuth {
        name: name.into(),
        pin: Secret::from(pin),
    }
}

/// A cluster with officers alice, bob and carol (operator certificates of their own) and
/// clients for each.
struct Gov {
    cluster: Cluster,
    officers: Vec<(String, Client)>,
}

impl Gov {
    async fn start() -> Result<Self> {
        let cluster = Cluster::start_init(3).await?;
        let mut officers = Vec::new();
        for (name, pin) in [("alice", ALICE_PIN), ("bob", BOB_PIN), ("carol", CAROL_PIN)] {
            call(
                cluster.admin(),
                Request::AddOfficer {
                    name: name.into(),
                    identity: format!("operator/{name}"),
                    pin: Secret::from(pin),
                },
            )
            .await?;
            let client = cluster.client_as(&Identity::Operator(name.into()))?;
            officers.push((name.to_string(), client));
        }
        Ok(Self { cluster, officers })
    }

    fn officer(&self, name: &str) -> &Client {
        &self
            .officers
            .iter()
            .find(|(n, _)| n == name)
            .expect("a known officer")
            .1
    }

    async fn approve(&self, who: &str, a: &ApprovalInfo) -> Result<ApprovalInfo, anyhow::Error> {
        match call(
            self.officer(who),
            Request::Approve {
                officer: officer(who),
                id: a.id,
                params_hash: a.params_hash,
            },
        )
        .await?
        {
            Response::Approval(a) => Ok(*a),
            r => bail!("approve: {r:?}"),
        }
    }

    async fn approvals(&self, all: bool) -> Result<Vec<ApprovalInfo>> {
        match call(self.cluster.admin(), Request::ListApprovals { all }).await? {
            Response::Approvals(v) => Ok(v),
            r => bail!("list approvals: {r:?}"),
        }
    }

    /// Waits until the open requests satisfy `f` (a request opened through another node may
    /// take a moment to reach the node the operator's client reads from).
    async fn wait_open<F>(&self, what: &str, f: F) -> Result<Vec<ApprovalInfo>>
    where
        F: Fn(&[ApprovalInfo]) -> bool,
    {
        let f = &f;
        Ok(wait_for(what, Duration::from_secs(10), || async move {
            let open = self.approvals(false).await.ok()?;
            f(&open).then_some(open)
        })
        .await?)
    }

    /// The last SMS code the development notifier wrote for `officer` and `terminal`.
    fn sms_code(&self, officer: &str, terminal: &str) -> Result<String> {
        let text = std::fs::read_to_string(self.cluster.root().join("sms.log"))
            .context("reading the SMS notifier's file")?;
        let want = format!("officer={officer} terminal={terminal} code=");
        text.lines()
            .rev()
            .find_map(|l| l.split_once(&want).map(|(_, c)| c.trim().to_string()))
            .ok_or_else(|| anyhow!("no SMS code for {officer} / {terminal} in:\n{text}"))
    }
}

async fn call(client: &Client, req: Request) -> Result<Response> {
    let name = req.name();
    client.call(req).await.map_err(|e| anyhow!("{name}: {e}"))
}

// ---- terminal keys, made and used by OpenSSL ------------------------------------------------

/// A terminal's key pair in `dir`: `<name>.key` (private, PEM) and its public key for the
/// registry.
fn terminal_key(dir: &Path, name: &str, sm2: bool) -> Result<TerminalKey> {
    let key = format!("{name}.key");
    if sm2 {
        p11::openssl(dir, &[], &["genpkey", "-algorithm", "SM2", "-out", &key])?;
        let der = format!("{name}.pub.der");
        p11::openssl(
            dir,
            &[],
            &[
                "pkey", "-in", &key, "-pubout", "-outform", "DER", "-out", &der,
            ],
        )?;
        let spki = std::fs::read(dir.join(&der))?;
        ensure!(spki.len() > 65, "short SM2 SPKI");
        Ok(TerminalKey::Sm2 {
            point: spki[spki.len() - 65..].to_vec(),
        })
    } else {
        p11::openssl(
            dir,
            &[],
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                &key,
            ],
        )?;
        let out = p11::openssl(dir, &[], &["rsa", "-in", &key, "-noout", "-modulus"])?;
        let hex_n = out
            .trim()
            .strip_prefix("Modulus=")
            .ok_or_else(|| anyhow!("openssl rsa -modulus: {out}"))?;
        Ok(TerminalKey::Rsa {
            n: hex::decode(hex_n)?,
            e: vec![1, 0, 1],
        })
    }
}

/// DER `SEQUENCE { INTEGER x, INTEGER y, OCTET STRING c3, OCTET STRING c2 }` of a raw SM2
/// ciphertext `04 || x || y || c3 || c2`, the form OpenSSL decrypts.
fn sm2_ct_der(raw: &[u8]) -> Result<Vec<u8>> {
    fn len(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else if n < 0x100 {
            out.extend_from_slice(&[0x81, n as u8]);
        } else {
            out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
        }
    }
    fn tlv(out: &mut Vec<u8>, tag: u8, v: &[u8]) {
        out.push(tag);
        len(out, v.len());
        out.extend_from_slice(v);
    }
    fn int(out: &mut Vec<u8>, v: &[u8]) {
        let mut i = 0;
        while i + 1 < v.len() && v[i] == 0 {
            i += 1;
        }
        let mut b = v[i..].to_vec();
        if b[0] & 0x80 != 0 {
            b.insert(0, 0);
        }
        tlv(out, 0x02, &b);
    }
    ensure!(raw.len() > 97 && raw[0] == 4, "not a raw SM2 ciphertext");
    let mut body = Vec::new();
    int(&mut body, &raw[1..33]);
    int(&mut body, &raw[33..65]);
    tlv(&mut body, 0x04, &raw[65..97]);
    tlv(&mut body, 0x04, &raw[97..]);
    let mut out = Vec::new();
    tlv(&mut out, 0x30, &body);
    Ok(out)
}

/// Decrypts the delivered TMK with the terminal's private key and checks its KCV, all with
/// OpenSSL. Returns the key's SHA-256 (to compare deliveries without keeping the key around).
fn open_tmk(dir: &Path, name: &str, d: &TmkDelivery) -> Result<[u8; 32]> {
    let key = format!("{name}.key");
    let ct = format!("{name}.tmk.ct");
    let pt = format!("{name}.tmk");
    let sm2 = d.algorithm == "sm4";
    if sm2 {
        std::fs::write(dir.join(&ct), sm2_ct_der(&d.encrypted)?)?;
        p11::openssl(
            dir,
            &[],
            &[
                "pkeyutl", "-decrypt", "-inkey", &key, "-in", &ct, "-out", &pt,
            ],
        )?;
    } else {
        ensure!(d.algorithm == "aes-256", "algorithm {}", d.algorithm);
        std::fs::write(dir.join(&ct), &d.encrypted)?;
        p11::openssl(
            dir,
            &[],
            &[
                "pkeyutl",
                "-decrypt",
                "-inkey",
                &key,
                "-pkeyopt",
                "rsa_padding_mode:oaep",
                "-pkeyopt",
                "rsa_oaep_md:sha256",
                "-pkeyopt",
                "rsa_mgf1_md:sha256",
                "-in",
                &ct,
                "-out",
                &pt,
            ],
        )?;
    }
    let tmk = std::fs::read(dir.join(&pt))?;
    std::fs::remove_file(dir.join(&pt))?;
    ensure!(
        tmk.len() == if sm2 { 16 } else { 32 },
        "TMK of {} bytes",
        tmk.len()
    );
    let zeros = format!("{name}.zeros");
    let enc = format!("{name}.kcv");
    std::fs::write(dir.join(&zeros), [0u8; 16])?;
    let cipher = if sm2 { "-sm4-ecb" } else { "-aes-256-ecb" };
    p11::openssl(
        dir,
        &[],
        &[
            "enc",
            cipher,
            "-nopad",
            "-K",
            &hex::encode(&tmk),
            "-in",
            &zeros,
            "-out",
            &enc,
        ],
    )?;
    let block = std::fs::read(dir.join(&enc))?;
    ensure!(
        block.get(..3) == Some(&d.kcv[..]),
        "KCV {} does not match the decrypted key's {}",
        hex::encode(d.kcv),
        hex::encode(&block)
    );
    Ok(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &tmk)
        .as_ref()
        .try_into()?)
}

// ---- the TMK flow -------------------------------------------------------------------------

struct Terminal {
    id: String,
    client: Client,
}

impl Terminal {
    async fn register(gov: &Gov, dir: &Path, id: &str, sm2: bool) -> Result<Self> {
        let key = terminal_key(dir, id, sm2)?;
        let cert = format!("term-{}", id.to_lowercase());
        call(
            gov.cluster.admin(),
            Request::AddTerminal {
                id: id.into(),
                key,
                admins: vec!["alice".into(), "bob".into()],
                identity: Some(format!("client/{cert}")),
            },
        )
        .await?;
        let client = gov.cluster.client_as(&Identity::Client(cert))?;
        Ok(Self {
            id: id.into(),
            client,
        })
    }

    async fn request(&self) -> Result<TmkQr> {
        match call(
            &self.client,
            Request::TmkRequest {
                terminal: self.id.clone(),
            },
        )
        .await?
        {
            Response::TmkQr(q) => Ok(q),
            r => bail!("tmk request: {r:?}"),
        }
    }

    fn fetch_req(&self, payload: &str, admin: &str) -> Request {
        Request::TmkFetch {
            terminal: self.id.clone(),
            payload: payload.into(),
            admin: admin.into(),
        }
    }

    async fn fetch(&self, payload: &str, admin: &str) -> Result<TmkDelivery> {
        match call(&self.client, self.fetch_req(payload, admin)).await? {
            Response::Tmk(d) => Ok(d),
            r => bail!("tmk fetch: {r:?}"),
        }
    }
}

async fn sms(gov: &Gov, who: &str, terminal: &str) -> Result<String> {
    call(
        gov.officer(who),
        Request::TmkSmsCode {
            officer: officer(who),
            terminal: terminal.into(),
        },
    )
    .await?;
    gov.sms_code(who, terminal)
}

fn apply_req(who: &str, terminal: &str, payload: &str, code: &str) -> Request {
    Request::TmkApply {
        officer: officer(who),
        terminal: terminal.into(),
        payload: payload.into(),
        sms_code: Secret::from(code),
    }
}

async fn apply(
    gov: &Gov,
    who: &str,
    t: &Terminal,
    payload: &str,
    code: &str,
) -> Result<ApprovalInfo> {
    match call(gov.officer(who), apply_req(who, &t.id, payload, code)).await? {
        Response::Approval(a) => Ok(*a),
        r => bail!("tmk apply: {r:?}"),
    }
}

async fn audit_summaries(gov: &Gov) -> Result<Vec<String>> {
    // Every running node first applies everything any of them has: the steps were made through
    // other clients, possibly on other nodes.
    let ids = gov.cluster.running();
    let newest = gov
        .cluster
        .statuses(&ids)
        .await
        .into_iter()
        .flatten()
        .map(|s| s.applied)
        .max()
        .unwrap_or(0);
    gov.cluster.wait_applied(newest).await?;
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let Response::Audit(page) = call(
            gov.cluster.admin(),
            Request::AuditExport { from, max: 1000 },
        )
        .await?
        else {
            bail!("audit export: unexpected response")
        };
        from = page.records.last().map_or(from, |r| r.index + 1);
        out.extend(page.records.into_iter().map(|r| r.summary));
        if !page.more {
            return Ok(out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmk_injection_end_to_end_with_rsa_and_sm2_terminals() -> Result<()> {
    let gov = Gov::start().await?;
    let dir = tempfile::tempdir()?;
    for (id, sm2) in [("ATM-RSA", false), ("ATM-SM2", true)] {
        let t = Terminal::register(&gov, dir.path(), id, sm2).await?;
        let qr = t.request().await?;
        // The payload renders as a QR code.
        qrcode_renders(&qr.payload)?;
        let code = sms(&gov, "alice", id).await?;
        let pending = apply(&gov, "alice", &t, &qr.payload, &code).await?;
        ensure!(pending.status == ApprovalStatus::Pending, "{pending:?}");
        ensure!(pending.eligible == vec!["bob".to_string()], "{pending:?}");
        ensure!(pending.requester == "officer/alice", "{pending:?}");
        // The terminal's own check before the approval.
        expect_code(
            "fetch before approval",
            t.client.call(t.fetch_req(&qr.payload, "alice")).await,
            &[ErrorCode::ApprovalRequired],
        )?;
        let approved = gov.approve("bob", &pending).await?;
        ensure!(approved.status == ApprovalStatus::Approved, "{approved:?}");
        // The terminal names the wrong administrator.
        expect_code(
            "fetch naming another administrator",
            t.client.call(t.fetch_req(&qr.payload, "bob")).await,
            &[ErrorCode::FunctionRejected],
        )?;
        let d = t.fetch(&qr.payload, "alice").await?;
        let k1 = open_tmk(dir.path(), id, &d)?;
        // Asking again returns the same key, never a second one.
        let again = t.fetch(&qr.payload, "alice").await?;
        ensure!(again == d, "a second fetch gave another delivery");
        ensure!(open_tmk(dir.path(), id, &again)? == k1);
    }
    let audit = audit_summaries(&gov).await?;
    for step in [
        "add_officer name=alice",
        "add_terminal id=ATM-RSA",
        "tmk_request application=",
        "sms_code_issued officer=alice terminal=ATM-SM2",
        "tmk_apply application=",
        "approve id=",
        "tmk_injected application=",
    ] {
        ensure!(
            audit.iter().any(|a| a.starts_with(step)),
            "no {step:?} in the audit chain: {audit:#?}"
        );
    }
    ensure!(
        audit
            .iter()
            .filter(|a| a.starts_with("tmk_injected"))
            .count()
            == 2,
        "{audit:#?}"
    );
    Ok(())
}

/// The payload fits a QR code (the CLI renders the same text with the same crate).
fn qrcode_renders(payload: &str) -> Result<()> {
    ensure!(
        payload.starts_with("CKTMK1.") && payload.len() < 200,
        "payload {payload:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmk_refusals() -> Result<()> {
    let gov = Gov::start().await?;
    let dir = tempfile::tempdir()?;
    let a = Terminal::register(&gov, dir.path(), "ATM-A", false).await?;
    let b = Terminal::register(&gov, dir.path(), "ATM-B", false).await?;

    // A terminal without an application: its check fails.
    let forged = cloudkey_protocol::gov::QrPayload {
        terminal: "ATM-A".into(),
        application: 999,
        nonce: [1; 16],
    }
    .encode();
    expect_code(
        "fetch without an application",
        a.client.call(a.fetch_req(&forged, "alice")).await,
        &[ErrorCode::FunctionRejected],
    )?;
    // Only the terminal's own certificate may ask for it.
    expect_code(
        "another terminal's certificate",
        b.client
            .call(Request::TmkRequest {
                terminal: "ATM-A".into(),
            })
            .await,
        &[ErrorCode::FunctionRejected],
    )?;

    let qa = a.request().await?;
    let qb = b.request().await?;
    let code = sms(&gov, "alice", "ATM-A").await?;
    // A wrong SMS code, a payload of another terminal, a tampered payload: refused and counted.
    let wrong = if code == "000000" { "000001" } else { "000000" };
    expect_code(
        "wrong SMS code",
        gov.officer("alice")
            .call(apply_req("alice", "ATM-A", &qa.payload, wrong))
            .await,
        &[ErrorCode::PinIncorrect],
    )?;
    expect_code(
        "payload of another terminal",
        gov.officer("alice")
            .call(apply_req("alice", "ATM-A", &qb.payload, &code))
            .await,
        &[ErrorCode::ArgumentsBad],
    )?;
    let mut tampered = qa.payload.clone();
    let last = tampered.pop().expect("non-empty");
    tampered.push(if last == '0' { '1' } else { '0' });
    expect_code(
        "tampered payload",
        gov.officer("alice")
            .call(apply_req("alice", "ATM-A", &tampered, &code))
            .await,
        &[ErrorCode::PinIncorrect],
    )?;
    // Carol is an officer but not an administrator of ATM-A: no code for her.
    expect_code(
        "SMS code for a non-administrator",
        gov.officer("carol")
            .call(Request::TmkSmsCode {
                officer: officer("carol"),
                terminal: "ATM-A".into(),
            })
            .await,
        &[ErrorCode::FunctionRejected],
    )?;
    // A wrong officer PIN.
    expect_code(
        "wrong officer PIN",
        gov.officer("alice")
            .call(Request::TmkSmsCode {
                officer: OfficerAuth {
                    name: "alice".into(),
                    pin: Secret::from("not-her-pin"),
                },
                terminal: "ATM-A".into(),
            })
            .await,
        &[ErrorCode::PinIncorrect],
    )?;
    // An officer's name with another officer's certificate.
    expect_code(
        "bob's name on alice's certificate",
        gov.officer("alice")
            .call(Request::TmkSmsCode {
                officer: officer("bob"),
                terminal: "ATM-A".into(),
            })
            .await,
        &[ErrorCode::FunctionRejected],
    )?;

    // The right code works once.
    let pa = apply(&gov, "alice", &a, &qa.payload, &code).await?;
    // Self-approval.
    expect_code(
        "self-approval",
        gov.officer("alice")
            .call(Request::Approve {
                officer: officer("alice"),
                id: pa.id,
                params_hash: pa.params_hash,
            })
            .await,
        &[ErrorCode::FunctionRejected],
    )?;
    // Carol is not eligible (the terminal's other administrator is).
    expect_code(
        "approval by an officer who is not eligible",
        gov.officer("carol")
            .call(Request::Approve {
                officer: officer("carol"),
                id: pa.id,
                params_hash: pa.params_hash,
            })
            .await,
        &[ErrorCode::FunctionRejected],
    )?;
    // The reused code, on ATM-B's application.
    let code_b = sms(&gov, "alice", "ATM-B").await?;
    let pb = apply(&gov, "alice", &b, &qb.payload, &code_b).await?;
    let qb2 = b.request().await?;
    expect_code(
        "reused SMS code",
        gov.officer("alice")
            .call(apply_req("alice", "ATM-B", &qb2.payload, &code_b))
            .await,
        &[ErrorCode::PinIncorrect],
    )?;
    // A stale payload: the application it opened was already applied for.
    expect_code(
        "stale payload",
        gov.officer("alice")
            .call(apply_req("alice", "ATM-B", &qb.payload, &code_b))
            .await,
        &[ErrorCode::ActionProhibited],
    )?;
    // An approval replayed for another terminal: bob's approval of ATM-B's request, sent
    // for ATM-A's request, does not approve it.
    expect_code(
        "approval replayed for another terminal",
        gov.officer("bob")
            .call(Request::Approve {
                officer: officer("bob"),
                id: pa.id,
                params_hash: pb.params_hash,
            })
            .await,
        &[ErrorCode::ArgumentsBad],
    )?;
    gov.approve("bob", &pb).await?;
    expect_code(
        "ATM-A's check after only ATM-B was approved",
        a.client.call(a.fetch_req(&qa.payload, "alice")).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    // ATM-B's payload on ATM-A's connection.
    expect_code(
        "ATM-B's payload checked by ATM-A",
        a.client
            .call(Request::TmkFetch {
                terminal: "ATM-A".into(),
                payload: qb.payload.clone(),
                admin: "alice".into(),
            })
            .await,
        &[ErrorCode::ArgumentsBad],
    )?;
    b.fetch(&qb.payload, "alice").await?;

    // An expired request: the cluster policy gives TMK approvals 1.5 s.
    call(
        gov.cluster.admin(),
        Request::SetPolicy {
            scope: PolicyScope::Cluster,
            rules: vec![Rule {
                op: GuardedOp::TmkInject,
                key_type: None,
                quorum: 1,
                officers: vec!["bob".into()],
                ttl_ms: 1_500,
            }],
        },
    )
    .await?;
    // Every node enforces the policy before anyone relies on it.
    gov.cluster.settle(gov.cluster.admin()).await?;
    let q3 = a.request().await?;
    let code3 = sms(&gov, "alice", "ATM-A").await?;
    // ATM-A already has an application applied for (pa): a new one is separate.
    let p3 = apply(&gov, "alice", &a, &q3.payload, &code3).await?;
    wait_for("the request to expire", Duration::from_secs(10), || async {
        let all = gov.approvals(true).await.ok()?;
        all.iter()
            .any(|x| x.id == p3.id && x.status == ApprovalStatus::Expired)
            .then_some(())
    })
    .await?;
    expect_code(
        "approving an expired request",
        gov.officer("bob")
            .call(Request::Approve {
                officer: officer("bob"),
                id: p3.id,
                params_hash: p3.params_hash,
            })
            .await,
        &[ErrorCode::ActionProhibited],
    )?;

    // Lockout: five wrong attempts lock the application.
    let q4 = b.request().await?;
    let code4 = sms(&gov, "alice", "ATM-B").await?;
    let wrong4 = if code4 == "000000" {
        "000001"
    } else {
        "000000"
    };
    let mut locked = false;
    for _ in 0..5 {
        let c = expect_code(
            "wrong code",
            gov.officer("alice")
                .call(apply_req("alice", "ATM-B", &q4.payload, wrong4))
                .await,
            &[ErrorCode::PinIncorrect, ErrorCode::PinLocked],
        )?;
        locked = c == ErrorCode::PinLocked;
    }
    ensure!(locked, "five wrong attempts did not lock the application");
    expect_code(
        "the right code after the lock",
        gov.officer("alice")
            .call(apply_req("alice", "ATM-B", &q4.payload, &code4))
            .await,
        &[ErrorCode::PinLocked],
    )?;
    let audit = audit_summaries(&gov).await?;
    ensure!(
        audit
            .iter()
            .any(|a| a.starts_with("tmk_apply_failed") && a.contains("locked=true")),
        "{audit:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_between_approval_and_injection_still_gives_one_tmk() -> Result<()> {
    let mut gov = Gov::start().await?;
    let dir = tempfile::tempdir()?;
    let t = Terminal::register(&gov, dir.path(), "ATM-K", false).await?;
    let qr = t.request().await?;
    let code = sms(&gov, "alice", "ATM-K").await?;
    let pending = apply(&gov, "alice", &t, &qr.payload, &code).await?;
    gov.approve("bob", &pending).await?;
    // Every node has applied the approval before the leader dies.
    let applied = gov.cluster.status(gov.cluster.ids()[0]).await?.applied;
    gov.cluster.wait_applied(applied).await?;
    let leader = gov.cluster.wait_leader(Duration::from_secs(10)).await?;
    gov.cluster.kill(leader);
    // The terminal asks while the cluster elects a new leader; its client fails over.
    let fetches = (0..3).map(|_| t.fetch(&qr.payload, "alice"));
    let results = futures::future::join_all(fetches).await;
    let mut deliveries = Vec::new();
    for r in results {
        deliveries.push(r?);
    }
    let first = deliveries[0].clone();
    ensure!(
        deliveries.iter().all(|d| *d == first),
        "concurrent fetches gave different keys"
    );
    let k = open_tmk(dir.path(), "ATM-K", &first)?;
    gov.cluster.restart(leader).await?;
    gov.cluster.wait_ready().await?;
    // The leader delivers the same key; every other node, the restarted one included, sends
    // the terminal to it (a terminal's request is served by the leader only).
    let mut delivered = 0;
    for id in gov.cluster.ids() {
        let client = gov
            .cluster
            .client_as(&Identity::Client("term-atm-k".into()))?;
        let index = gov.cluster.ids().iter().position(|&x| x == id).unwrap_or(0);
        let r = client
            .call_node(index, t.fetch_req(&qr.payload, "alice"))
            .await;
        let d = match r {
            Ok(Response::Tmk(d)) => d,
            Err(e) if crate::util::remote_code(&e) == Some(ErrorCode::NotLeader) => continue,
            other => bail!("node {id}: {other:?}"),
        };
        ensure!(d == first, "node {id} delivers another key");
        ensure!(open_tmk(dir.path(), "ATM-K", &d)? == k);
        delivered += 1;
    }
    ensure!(
        delivered == 1,
        "{delivered} nodes delivered (the leader only should)"
    );
    let audit = audit_summaries(&gov).await?;
    let injected = audit
        .iter()
        .filter(|a| a.starts_with(&format!("tmk_injected application={}", qr.application)))
        .count();
    ensure!(
        injected == 1,
        "{injected} injections in the audit chain: {audit:#?}"
    );
    Ok(())
}

/// `n` ECDSA signatures with `kp` over distinct digests.
async fn sign_ecdsa(
    user: &Client,
    auth: &cloudkey_protocol::msg::Auth,
    kp: &crate::util::KeyPair,
    n: u8,
) -> Result<()> {
    for i in 0..n {
        call(
            user,
            Request::Sign {
                auth: auth.clone(),
                key: kp.private,
                mechanism: cloudkey_protocol::msg::Mechanism {
                    ckm: cloudkey_protocol::ck::CKM_ECDSA,
                    param: cloudkey_protocol::msg::MechParam::None,
                },
                input: cloudkey_protocol::msg::SignInput::Data(vec![i; 32]),
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_chain_gets_chip_signed_checkpoints_and_signature_counts() -> Result<()> {
    let gov = Gov::start().await?;
    // The leader makes the audit key in a chip, then checkpoints the chain.
    let audit = wait_for("a checkpoint", Duration::from_secs(20), || async {
        let a = audit_summaries(&gov).await.ok()?;
        a.iter().any(|s| s.starts_with("checkpoint ")).then_some(a)
    })
    .await?;
    ensure!(
        audit
            .iter()
            .any(|s| s.starts_with("set_audit_key public=04")),
        "{audit:#?}"
    );
    // Signatures are counted per key and summarised into the chain.
    let admin = gov.cluster.admin();
    let token = crate::util::create_token(admin, "counted").await?;
    gov.cluster.settle(admin).await?;
    let user = gov.cluster.client(cloudkey_tests::Role::Client)?;
    let auth = crate::util::login(&user, token).await?;
    let kp = crate::util::generate_ec(&user, &auth, "counted").await?;
    sign_ecdsa(&user, &auth, &kp, 5).await?;
    let want = format!("{}:5", kp.private);
    wait_for(
        "the signature count in the chain",
        Duration::from_secs(20),
        || async {
            let a = audit_summaries(&gov).await.ok()?;
            a.iter()
                .any(|s| s.starts_with("usage node=") && s.contains(&want))
                .then_some(())
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_between_audit_rounds_keeps_its_signature_counts() -> Result<()> {
    // No audit round during the test: the counts reach the chain only at the node's shutdown.
    let cluster = Cluster::start_with(cloudkey_tests::ClusterOptions {
        audit_interval_ms: 3_600_000,
        ..cloudkey_tests::ClusterOptions::new(3)
    })
    .await?;
    cluster.init().await?;
    let mut gov = Gov {
        cluster,
        officers: Vec::new(),
    };
    let admin = gov.cluster.admin();
    let token = crate::util::create_token(admin, "stopped").await?;
    gov.cluster.settle(admin).await?;
    // Signatures served by node 2 only.
    let user = gov.cluster.client_on(cloudkey_tests::Role::Client, &[2])?;
    let auth = crate::util::login(&user, token).await?;
    let kp = crate::util::generate_ec(&user, &auth, "stopped").await?;
    sign_ecdsa(&user, &auth, &kp, 7).await?;
    drop(user);
    let before = audit_summaries(&gov).await?;
    ensure!(
        !before.iter().any(|s| s.starts_with("usage ")),
        "no summary before the shutdown: {before:#?}"
    );
    let status = gov.cluster.stop(2).await?;
    ensure!(status.success(), "node 2 exited with {status}");
    let want = format!("{}:7", kp.private);
    let audit = audit_summaries(&gov).await?;
    ensure!(
        audit
            .iter()
            .any(|s| s.starts_with("usage node=2 ") && s.contains(&want)),
        "node 2's last counts are in the chain: {audit:#?}"
    );
    Ok(())
}

// ---- quorum guards through PKCS#11 (the cryptoki crate on the built module) ----------------

/// The vendor `CK_RV` of a quorum-guarded operation without an approval (`VENDOR.md`).
const CKR_APPROVAL_REQUIRED: u64 = 0x8000_0008;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_key_generation_under_a_two_of_three_policy() -> Result<()> {
    let gov = Gov::start().await?;
    let token = gov.cluster.pkcs11_token("guarded").await?;
    call(
        gov.cluster.admin(),
        Request::SetPolicy {
            scope: PolicyScope::Token(token.id),
            rules: vec![Rule {
                op: GuardedOp::Generate,
                key_type: Some(cloudkey_protocol::ck::CKK_AES),
                quorum: 2,
                officers: vec!["alice".into(), "bob".into(), "carol".into()],
                ttl_ms: 600_000,
            }],
        },
    )
    .await?;
    // Every node enforces the policy before anyone relies on it.
    gov.cluster.settle(gov.cluster.admin()).await?;
    let out = tempfile::tempdir()?;
    let run = |phase: &'static str| {
        let token = token.clone();
        let dir = out.path().to_path_buf();
        tokio::task::spawn_blocking(move || {
            std::fs::write(dir.join("phase"), phase)?;
            p11::run_child("governance::child_guarded", &token, &dir)
        })
    };
    // Phase 1: both keys need an approval; an EC key pair does not (the rule is for AES).
    let stdout = run("1").await??;
    ensure!(stdout.contains("phase 1: done"), "{stdout}");
    let pending = gov
        .wait_open("the two requests", |open| open.len() == 2)
        .await?;
    ensure!(
        pending.iter().all(|a| a.requester == "client/app"
            && a.quorum == 2
            && a.op == GuardedOp::Generate
            && a.status == ApprovalStatus::Pending),
        "{pending:#?}"
    );
    // Approve the request whose description is for k1: the descriptions are the same, the
    // parameters differ; phase 1 made k1's request first.
    let k1 = pending
        .iter()
        .min_by_key(|a| a.id)
        .expect("two requests")
        .clone();
    let after_alice = gov.approve("alice", &k1).await?;
    ensure!(
        after_alice.status == ApprovalStatus::Pending,
        "{after_alice:?}"
    );
    expect_code(
        "alice approving twice",
        gov.officer("alice")
            .call(Request::Approve {
                officer: officer("alice"),
                id: k1.id,
                params_hash: k1.params_hash,
            })
            .await,
        &[ErrorCode::ActionProhibited],
    )?;
    let approved = gov.approve("carol", &k1).await?;
    ensure!(approved.status == ApprovalStatus::Approved, "{approved:?}");
    // Phase 2: k2 is still refused, k1 succeeds once, and a second k1 needs a new approval.
    let stdout = run("2").await??;
    ensure!(stdout.contains("phase 2: done"), "{stdout}");
    // k1's request consumed, k2's and the second k1's open (once the operator's node has them).
    let k1_id = k1.id;
    let gov_ref = &gov;
    wait_for(
        "k1's request consumed",
        Duration::from_secs(10),
        || async move {
            let all = gov_ref.approvals(true).await.ok()?;
            let used = all.iter().find(|a| a.id == k1_id)?;
            let pending = all
                .iter()
                .filter(|a| a.status == ApprovalStatus::Pending)
                .count();
            (matches!(used.status, ApprovalStatus::Consumed { .. }) && pending == 2).then_some(())
        },
    )
    .await?;
    let audit = audit_summaries(&gov).await?;
    ensure!(
        audit.iter().any(|a| a.starts_with(&format!(
            "guarded approval={} requester=client/app: put_objects",
            k1.id
        ))),
        "{audit:#?}"
    );
    Ok(())
}

#[test]
#[ignore = "a child process of pkcs11_key_generation_under_a_two_of_three_policy"]
fn child_guarded() -> Result<()> {
    use cryptoki::error::{Error, RvError};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;

    let Some(ctx) = p11::child() else {
        return Ok(());
    };
    let phase = std::fs::read_to_string(ctx.out.join("phase"))?;
    ctx.initialize()?;
    let s = p11::login_rw(&ctx)?;
    let aes = |label: &str| {
        vec![
            Attribute::Token(true),
            Attribute::ValueLen(32.into()),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Label(label.as_bytes().to_vec()),
        ]
    };
    let refused = |label: &str| -> Result<()> {
        match s.generate_key(&Mechanism::AesKeyGen, &aes(label)) {
            Err(Error::Pkcs11(RvError::VendorDefined(rv), _)) if rv == CKR_APPROVAL_REQUIRED => {
                Ok(())
            }
            other => bail!("{label}: expected CKR 0x80000008, got {other:?}"),
        }
    };
    match phase.trim() {
        "1" => {
            refused("k1")?;
            refused("k2")?;
            // The same call again does not open a second request.
            refused("k1")?;
            // Not guarded: an EC key pair.
            let public = [
                Attribute::EcParams(p11::P256_PARAMS.to_vec()),
                Attribute::Verify(true),
            ];
            let private = [Attribute::Sign(true), Attribute::Token(false)];
            s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)?;
            println!("phase 1: done");
        }
        "2" => {
            refused("k2")?;
            let k1 = s
                .generate_key(&Mechanism::AesKeyGen, &aes("k1"))
                .context("generating k1 with its approval")?;
            let found = s.find_objects(&[Attribute::Label(b"k1".to_vec())])?;
            ensure!(found == vec![k1], "{found:?}");
            refused("k1")?;
            println!("phase 2: done");
        }
        other => bail!("unknown phase {other:?}"),
    }
    Ok(())
}

// ---- a designated key: every signature, and its destruction, under approval ---------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_designated_key_signs_once_per_approval_and_is_destroyed_only_with_one() -> Result<()> {
    let gov = Gov::start().await?;
    let admin = gov.cluster.admin();
    let token = crate::util::create_token(admin, "designated").await?;
    gov.cluster.settle(admin).await?;
    let user = gov.cluster.client(cloudkey_tests::Role::Client)?;
    let auth = crate::util::login(&user, token).await?;
    let kp = crate::util::generate_ec(&user, &auth, "root-ca").await?;
    call(
        admin,
        Request::SetPolicy {
            scope: PolicyScope::Key(kp.private),
            rules: vec![
                Rule {
                    op: GuardedOp::Sign,
                    key_type: None,
                    quorum: 1,
                    officers: vec!["alice".into(), "bob".into()],
                    ttl_ms: 600_000,
                },
                Rule {
                    op: GuardedOp::Destroy,
                    key_type: None,
                    quorum: 2,
                    officers: vec![],
                    ttl_ms: 600_000,
                },
            ],
        },
    )
    .await?;
    // Every node enforces the policy before anyone relies on it.
    gov.cluster.settle(gov.cluster.admin()).await?;
    let sign = |digest: u8| Request::Sign {
        auth: auth.clone(),
        key: kp.private,
        mechanism: cloudkey_protocol::msg::Mechanism {
            ckm: cloudkey_protocol::ck::CKM_ECDSA,
            param: cloudkey_protocol::msg::MechParam::None,
        },
        input: cloudkey_protocol::msg::SignInput::Data(vec![digest; 32]),
    };
    expect_code(
        "sign without an approval",
        user.call(sign(1)).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    let pending = gov
        .wait_open("the sign request", |open| {
            open.iter().any(|a| a.op == GuardedOp::Sign)
        })
        .await?;
    let req = pending
        .iter()
        .find(|a| a.op == GuardedOp::Sign)
        .ok_or_else(|| anyhow!("no sign request: {pending:#?}"))?
        .clone();
    ensure!(req.scope == PolicyScope::Key(kp.private), "{req:?}");
    gov.approve("bob", &req).await?;
    // Another digest is another request.
    expect_code(
        "sign another digest",
        user.call(sign(2)).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    match call(&user, sign(1)).await? {
        Response::Bytes(sig) => ensure!(sig.len() == 64, "signature of {} bytes", sig.len()),
        r => bail!("sign: {r:?}"),
    }
    expect_code(
        "the same signature again",
        user.call(sign(1)).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    // The public half is not guarded; the private half needs two approvals to go.
    let destroy = |object| Request::DestroyObject {
        auth: auth.clone(),
        object,
    };
    expect_code(
        "destroy without approvals",
        user.call(destroy(kp.private)).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    let d = gov
        .wait_open("the destroy request", |open| {
            open.iter().any(|a| a.op == GuardedOp::Destroy)
        })
        .await?
        .into_iter()
        .find(|a| a.op == GuardedOp::Destroy)
        .ok_or_else(|| anyhow!("no destroy request"))?;
    gov.approve("alice", &d).await?;
    expect_code(
        "destroy with one of two approvals",
        user.call(destroy(kp.private)).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    gov.approve("carol", &d).await?;
    call(&user, destroy(kp.private)).await?;
    expect_code(
        "the key is gone",
        user.call(sign(1)).await,
        &[ErrorCode::KeyHandleInvalid, ErrorCode::ObjectHandleInvalid],
    )?;
    Ok(())
}

// ---- governance changes under quorum -------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_a_govern_rule_exists_no_single_operator_changes_who_approves() -> Result<()> {
    let gov = Gov::start().await?;
    let admin = gov.cluster.admin();
    let govern = |quorum| Request::SetPolicy {
        scope: PolicyScope::Cluster,
        rules: vec![Rule {
            op: GuardedOp::Govern,
            key_type: None,
            quorum,
            officers: vec!["alice".into(), "bob".into(), "carol".into()],
            ttl_ms: 600_000,
        }],
    };
    // The first govern rule is the operator's alone (nothing guards governance yet).
    call(admin, govern(2)).await?;
    gov.cluster.settle(admin).await?;
    let add = |name: &str| Request::AddOfficer {
        name: name.into(),
        identity: format!("operator/{name}"),
        pin: Secret::from("a-new-pin"),
    };
    expect_code(
        "adding an officer alone",
        admin.call(add("dave")).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    expect_code(
        "weakening the rule alone",
        admin.call(govern(1)).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    let open = gov
        .wait_open("the two governance requests", |open| {
            open.iter().filter(|a| a.op == GuardedOp::Govern).count() == 2
        })
        .await?;
    let dave = open
        .iter()
        .find(|a| a.description.contains("dave"))
        .ok_or_else(|| anyhow!("no request for dave: {open:#?}"))?
        .clone();
    ensure!(dave.requester == "operator/admin", "{dave:?}");
    gov.approve("alice", &dave).await?;
    expect_code(
        "with one approval of two",
        admin.call(add("dave")).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    gov.approve("carol", &dave).await?;
    call(admin, add("dave")).await?;
    // That approval was for dave only, and only once.
    expect_code(
        "another officer on dave's approval",
        admin.call(add("erin")).await,
        &[ErrorCode::ApprovalRequired],
    )?;
    let Response::Officers(officers) = call(admin, Request::ListOfficers).await? else {
        bail!("list officers: unexpected response")
    };
    ensure!(
        officers.iter().any(|o| o.name == "dave") && !officers.iter().any(|o| o.name == "erin"),
        "{officers:#?}"
    );
    let audit = audit_summaries(&gov).await?;
    ensure!(
        audit.iter().any(|a| a.starts_with(&format!(
            "guarded approval={} requester=operator/admin: add_officer name=dave",
            dave.id
        ))),
        "{audit:#?}"
    );
    Ok(())
}
