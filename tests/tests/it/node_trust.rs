//! Issue 11, item 4: a node certificate is not trusted with everything. With one member's
//! certificate and key (stolen from its disk), an attacker speaking the peer protocol to the
//! real nodes cannot have the domain key exported to a key of its own, and cannot have an
//! operator's, officer's or user's act committed: the domain goes only to chips an operator
//! enrolled, and a forwarded write needs its caller's own proof, which the leader checks.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use aws_lc_rs::agreement;
use cloudkey_node::governance::GovCommand;
use cloudkey_node::pki::{CertPaths, Identity, CA_CERT};
use cloudkey_node::raft::{Authority, PeerError, PeerNetwork, PeerRequest, PeerResponse};
use cloudkey_node::state::{Command, PinHash};
use cloudkey_protocol::msg::{Auth, ObjectId, Request, Response, Secret, SessionGrant, UserType};
use cloudkey_protocol::tls::{TlsFiles, TlsMaterial};
use cloudkey_protocol::ErrorCode;
use cloudkey_tests::Cluster;

use crate::util::{self, expect_code};

const WAIT: Duration = Duration::from_secs(10);

/// The answer must be a refusal naming why; anything else (a package, a commit) is the attack
/// succeeding.
fn refused(what: &str, resp: &PeerResponse, why: &str) -> Result<()> {
    match resp {
        PeerResponse::Error(PeerError::Forbidden(m)) if m.contains(why) => Ok(()),
        PeerResponse::Error(PeerError::Refused(w))
            if w.code == ErrorCode::Forbidden && w.detail.contains(why) =>
        {
            Ok(())
        }
        other => bail!("{what}: expected a refusal ({why}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_node_key_gets_no_domain_key_and_commits_no_act_of_a_caller() -> Result<()> {
    let cluster = Cluster::start_init(3).await?;
    let admin = cluster.admin();
    let token = util::create_token(admin, "victim").await?;
    let leader = cluster.wait_leader(WAIT).await?;

    // Every chip of the cluster was enrolled at init, each after proving its identity key.
    let chips = match util::call(admin, Request::ListChips).await? {
        Response::Chips(c) => c,
        other => bail!("chip list: {other:?}"),
    };
    let mut nodes: Vec<u64> = chips.iter().map(|c| c.node).collect();
    nodes.dedup();
    ensure!(nodes == cluster.ids(), "enrolled chips: {chips:?}");

    // The attacker: node 2's certificate and key, and a P-256 key of its own.
    let dir = cluster.pki_dir();
    let paths = CertPaths::of(dir, &Identity::Node(2));
    let material = TlsMaterial::load(&TlsFiles {
        ca: dir.join(CA_CERT),
        cert: paths.cert,
        key: paths.key,
    })?;
    let endpoint = quinn::Endpoint::client((Ipv4Addr::LOCALHOST, 0).into())?;
    let net = PeerNetwork::new(endpoint, &material)?;
    let own = agreement::PrivateKey::generate(&agreement::ECDH_P256)
        .map_err(|_| anyhow::anyhow!("keygen"))?;
    let own_point = own
        .compute_public_key()
        .map_err(|_| anyhow::anyhow!("public key"))?
        .as_ref()
        .to_vec();

    // 1. The domain key, exported to the attacker's key, from every node.
    for id in cluster.ids() {
        let resp = net
            .call(
                &cluster.addr(id).to_string(),
                PeerRequest::DomainExport {
                    recipient_identity: own_point.clone(),
                },
                WAIT,
            )
            .await
            .context("domain export")?;
        refused(
            &format!("domain export from node {id}"),
            &resp,
            "not enrolled",
        )?;
    }
    // ... nor to another node's chip (whose package node 2 could not open anyway).
    let other = chips
        .iter()
        .find(|c| c.node == 3)
        .context("a chip of node 3")?;
    let resp = net
        .call(
            &cluster.addr(1).to_string(),
            PeerRequest::DomainExport {
                recipient_identity: other.identity.clone(),
            },
            WAIT,
        )
        .await?;
    refused("export to node 3's chip", &resp, "enrolled for node 3")?;

    // 2. Operator and officer acts, forwarded to the leader as if a client were behind them.
    let leader_addr = cluster.addr(leader).to_string();
    let rogue_pin =
        PinHash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA".into());
    let acts = vec![
        Command::CreateToken {
            label: "rogue".into(),
            so_pin: rogue_pin.clone(),
            user_pin: None,
        },
        Command::Unlock(token),
        Command::DeleteToken(token),
        Command::Gov(GovCommand::SetPolicy {
            scope: cloudkey_protocol::gov::PolicyScope::Cluster,
            rules: Vec::new(),
        }),
        Command::LoginSucceeded {
            token,
            user: UserType::User,
        },
    ];
    for cmd in acts {
        let kind = cmd.kind();
        let resp = net
            .call(&leader_addr, PeerRequest::Forward(cmd), WAIT)
            .await?;
        refused(kind, &resp, "leader serving its caller")?;
    }
    for req in [
        PeerRequest::AddNode {
            id: 9,
            addr: "127.0.0.1:9".into(),
        },
        PeerRequest::RemoveNode { id: 3 },
    ] {
        let kind = req.kind();
        let resp = net.call(&leader_addr, req, WAIT).await?;
        refused(kind, &resp, "membership changes")?;
    }

    // 3. A user's act (replace the user PIN, destroy a key) without the user's grant, and
    //    with a forged one.
    let set_pin = || Command::SetPin {
        token,
        user: UserType::User,
        pin: rogue_pin.clone(),
    };
    let resp = net
        .call(
            &leader_addr,
            PeerRequest::ForwardAs {
                cmd: set_pin(),
                authority: Authority::Node,
            },
            WAIT,
        )
        .await?;
    refused("set_pin without a grant", &resp, "session grant")?;
    let resp = net
        .call(&leader_addr, PeerRequest::Forward(set_pin()), WAIT)
        .await?;
    refused("set_pin forwarded bare", &resp, "session grant")?;
    let forged = Authority::Grant {
        auth: Auth {
            token,
            grant: Some(SessionGrant(vec![7; 80])),
        },
        identity: "cloudkey://client/app".into(),
    };
    for cmd in [set_pin(), Command::DestroyObject(ObjectId([1; 16]))] {
        let kind = cmd.kind();
        let resp = net
            .call(
                &leader_addr,
                PeerRequest::ForwardAs {
                    cmd,
                    authority: forged.clone(),
                },
                WAIT,
            )
            .await?;
        ensure!(
            matches!(resp, PeerResponse::Error(_)),
            "{kind} with a forged grant: {resp:?}"
        );
    }

    // Nothing changed: one token, its user PIN is still the user's, and the cluster serves.
    let labels: Vec<String> = match util::call(admin, Request::ListTokens).await? {
        Response::Tokens(t) => t.into_iter().map(|t| t.label).collect(),
        other => bail!("list tokens: {other:?}"),
    };
    ensure!(labels == ["victim"], "tokens: {labels:?}");
    let client = cluster.client(cloudkey_tests::Role::Client)?;
    util::call(
        &client,
        Request::Login {
            token,
            user: UserType::User,
            pin: Secret::from(util::USER_PIN),
        },
    )
    .await
    .context("the user's own PIN")?;
    expect_code(
        "a PIN the attacker chose",
        client
            .call(Request::Login {
                token,
                user: UserType::User,
                pin: Secret::from("hashhash"),
            })
            .await,
        &[ErrorCode::PinIncorrect],
    )?;
    Ok(())
}
