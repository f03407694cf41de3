//! Revocation under partition (issue 11, item 5): a real network partition on loopback
//! (iptables drops the UDP between one node's port and the others'), both halves checked.
//!
//! The leader is cut off from the other two nodes. Within the staleness bound (1 s) it stops
//! signing and stops reporting itself leader; the majority elects a new leader, destroys a
//! key, and signs with another; the cut-off node never signs with the destroyed key. Once the
//! partition heals, the old leader catches up and serves again, and the destroyed key is gone
//! there too.
//!
//! Needs root and a working `iptables` (CI installs it); without them the test says so and
//! does nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use cloudkey_protocol::client::Client;
use cloudkey_protocol::msg::{Request, Response};
use cloudkey_protocol::ErrorCode;
use cloudkey_test_support::wait_for;
use cloudkey_tests::{Cluster, ClusterOptions, Role};

use crate::util;

/// The node's default `raft.staleness_bound_ms`.
const BOUND: Duration = Duration::from_secs(1);
/// How long the cut-off node is hammered after the destroy.
const HAMMER: Duration = Duration::from_secs(2);

/// DROP rules between one port and others, removed on drop (also when the test fails).
struct Partition {
    rules: Vec<Vec<String>>,
}

fn iptables(args: &[String]) -> Result<()> {
    let out = Command::new("iptables")
        .args(args)
        .output()
        .context("running iptables")?;
    ensure!(
        out.status.success(),
        "iptables {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Partition {
    /// Whether this machine lets the test partition loopback (root, iptables present).
    fn available() -> bool {
        Command::new("iptables")
            .args(["-w", "-L", "INPUT", "-n"])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Cuts `port` off from every port of `others`, both ways.
    fn cut(port: u16, others: &[u16]) -> Result<Self> {
        let mut p = Self { rules: Vec::new() };
        for &other in others {
            for (from, to) in [(port, other), (other, port)] {
                let rule: Vec<String> = [
                    "INPUT",
                    "-p",
                    "udp",
                    "-s",
                    "127.0.0.1",
                    "-d",
                    "127.0.0.1",
                    "--sport",
                ]
                .iter()
                .map(|s| (*s).to_owned())
                .chain([
                    from.to_string(),
                    "--dport".into(),
                    to.to_string(),
                    "-j".into(),
                    "DROP".into(),
                ])
                .collect();
                let mut add = vec!["-w".to_owned(), "-I".to_owned()];
                add.extend(rule.iter().cloned());
                iptables(&add)?;
                p.rules.push(rule);
            }
        }
        Ok(p)
    }

    /// Removes the rules.
    fn heal(&mut self) -> Result<()> {
        for rule in self.rules.drain(..) {
            let mut del = vec!["-w".to_owned(), "-D".to_owned()];
            del.extend(rule);
            iptables(&del)?;
        }
        Ok(())
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("partition: could not remove a rule: {e}");
        }
    }
}

/// Node `id`'s answer to a signature request with `key`, asked of that node only.
async fn sign_on(
    client: &Client,
    auth: &cloudkey_protocol::msg::Auth,
    key: cloudkey_protocol::msg::ObjectId,
) -> std::result::Result<Response, ErrorCode> {
    client
        .call_node(0, util::sign_req(auth, key, b"partition"))
        .await
        .map_err(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_stops_using_keys_within_the_bound() -> Result<()> {
    if !Partition::available() {
        eprintln!("SKIPPED partition test: iptables is not usable here (needs root and iptables)");
        return Ok(());
    }
    let cluster = Cluster::start_with(ClusterOptions::new(3)).await?;
    cluster.init().await?;
    let token = util::create_token(cluster.admin(), "partitioned").await?;
    cluster.settle(cluster.admin()).await?;
    let app = cluster.client(Role::Client)?;
    let auth = util::login(&app, token).await?;
    let doomed = util::generate_ec(&app, &auth, "doomed").await?.private;
    let kept = util::generate_ec(&app, &auth, "kept").await?.private;
    cluster.settle(&app).await?;

    let old = cluster.wait_leader(Duration::from_secs(10)).await?;
    let others: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != old).collect();
    let on_old = cluster.client_on(Role::Client, &[old])?;
    let on_majority = cluster.client_on(Role::Client, &others)?;
    let status_of = |client: &Client| {
        let client = client.clone();
        async move {
            match client.call_node(0, Request::Status).await {
                Ok(Response::Status(s)) => Some(s),
                _ => None,
            }
        }
    };
    ensure!(
        sign_on(&on_old, &auth, doomed).await.is_ok(),
        "the leader signs before the partition"
    );

    let port = |id: u64| cluster.addr(id).port();
    let other_ports: Vec<u16> = others.iter().map(|&i| port(i)).collect();
    let mut partition = Partition::cut(port(old), &other_ports)?;
    let cut_at = Instant::now();

    // The cut-off leader stops signing within the bound (and a little for the last round
    // that was under way), and stops reporting itself leader.
    let stale = wait_for("the cut-off leader to refuse", 3 * BOUND, || async {
        match sign_on(&on_old, &auth, kept).await {
            Err(ErrorCode::Stale) => Some(cut_at.elapsed()),
            _ => None,
        }
    })
    .await?;
    ensure!(
        stale <= BOUND + BOUND / 2,
        "the cut-off leader signed for {stale:?} (bound {BOUND:?})"
    );
    let s = status_of(&on_old).await;
    ensure!(
        s.as_ref().is_some_and(|s| s.leader.is_none()),
        "the cut-off leader still reports a leader: {s:?}"
    );

    // The majority elects a leader of its own and destroys a key.
    let new = wait_for(
        "a leader on the majority side",
        Duration::from_secs(10),
        || {
            let on_majority = on_majority.clone();
            async move {
                match on_majority.call_node(0, Request::Status).await {
                    Ok(Response::Status(s)) => s.leader.filter(|l| *l != old),
                    _ => None,
                }
            }
        },
    )
    .await?;
    util::call(
        &on_majority,
        Request::DestroyObject {
            auth: auth.clone(),
            object: doomed,
        },
    )
    .await?;

    // Both halves: the majority refuses the destroyed key and signs with the other one ...
    let r = on_majority
        .call(util::sign_req(&auth, doomed, b"gone"))
        .await;
    util::expect_code(
        "the destroyed key on the majority",
        r,
        &[ErrorCode::KeyHandleInvalid, ErrorCode::ObjectHandleInvalid],
    )?;
    util::call(&on_majority, util::sign_req(&auth, kept, b"majority")).await?;
    // ... and the cut-off node never signs with the destroyed key.
    let until = Instant::now() + HAMMER;
    let (mut signed, mut refused) = (0u64, 0u64);
    while Instant::now() < until {
        match sign_on(&on_old, &auth, doomed).await {
            Ok(_) => signed += 1,
            Err(ErrorCode::Stale) => refused += 1,
            Err(other) => bail!("the cut-off node answered {other:?}"),
        }
    }
    ensure!(
        signed == 0 && refused > 0,
        "the cut-off node signed {signed} times with the destroyed key in {HAMMER:?} \
         (refused {refused}); new leader {new}"
    );

    // Healed: the old leader catches up, serves again, and knows the key is gone.
    partition.heal()?;
    wait_for(
        "the old leader to serve again",
        Duration::from_secs(15),
        || async { sign_on(&on_old, &auth, kept).await.ok().map(|_| ()) },
    )
    .await?;
    let r = sign_on(&on_old, &auth, doomed).await;
    ensure!(
        matches!(
            r,
            Err(ErrorCode::KeyHandleInvalid | ErrorCode::ObjectHandleInvalid)
        ),
        "the destroyed key on the healed node: {r:?}"
    );
    Ok(())
}
