//! `cloudkey pki|init|node|status|dev ...`: making and running a cluster: its PKI, the
//! bootstrap, the membership, the status of every node, and the local development cluster.

use std::process::ExitCode;

use anyhow::anyhow;
use cloudkey_protocol::client::{Client, ClientSettings};
use cloudkey_protocol::msg::{ChipEntry, Member, Request, Response};

use cloudkey_node::dev::{self, DevDownOptions, DevUpOptions};
use cloudkey_node::pki::{self, Identity, InitOptions};

use crate::args::{ChipCommand, DevCommand, NodeCommand, PkiCommand, Role};
use crate::output::{render_status, StatusReport};
use crate::{call, unexpected};

/// Runs one `pki` command (no network).
///
/// # Errors
/// An existing CA or certificate (without `--force`), a bad name, file system failures.
pub(crate) fn pki_command(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init {
            dir,
            nodes,
            operators,
            clients,
            force,
        } => pki_init(
            &dir,
            &InitOptions {
                nodes,
                operators,
                clients,
                force,
            },
        ),
        PkiCommand::Issue {
            dir,
            force,
            role,
            name,
        } => pki_issue(&dir, force, role, &name),
        PkiCommand::Rotate { dir } => {
            for (who, p) in pki::rotate(&dir)? {
                println!("{:<8} {} ({who})", "reissued", p.cert.display());
            }
            println!(
                "valid {} days; restart each node and hand out the new operator and client files",
                pki::LEAF_DAYS
            );
            Ok(())
        }
    }
}

fn pki_init(dir: &std::path::Path, opts: &InitOptions) -> anyhow::Result<()> {
    let paths = pki::init_pki_with(dir, opts)?;
    println!("CA       {}", paths.ca.display());
    for (who, p) in &paths.issued {
        println!("{:<8} {} ({who})", "issued", p.cert.display());
    }
    Ok(())
}

fn pki_issue(dir: &std::path::Path, force: bool, role: Role, name: &str) -> anyhow::Result<()> {
    let role = match role {
        Role::Node => "node",
        Role::Operator => "operator",
        Role::Client => "client",
    };
    let who = Identity::parse(role, name)?;
    let p = pki::issue(dir, &who, force)?;
    println!(
        "issued {} and {} ({who})",
        p.cert.display(),
        p.key.display()
    );
    Ok(())
}

/// Runs one `dev` command.
///
/// # Errors
/// Whatever starting or stopping the local cluster fails with.
pub(crate) async fn dev_command(cmd: DevCommand) -> anyhow::Result<()> {
    match cmd {
        DevCommand::Up {
            dir,
            nodes,
            chips_per_node,
        } => {
            dev_up(DevUpOptions {
                dir,
                nodes,
                chips_per_node,
            })
            .await
        }
        DevCommand::Down { dir, purge } => dev_down(DevDownOptions { dir, purge }).await,
    }
}

async fn dev_up(opts: DevUpOptions) -> anyhow::Result<()> {
    let up = dev::up(&opts).await?;
    print!("{}", up.summary());
    Ok(())
}

async fn dev_down(opts: DevDownOptions) -> anyhow::Result<()> {
    let report = dev::down(&opts).await?;
    print!("{report}");
    Ok(())
}

/// `cloudkey init`: the first member bootstraps the cluster, whether or not the settings list
/// it.
///
/// # Errors
/// No client for the first member; its refusal.
pub(crate) async fn init(settings: &ClientSettings, members: Vec<Member>) -> anyhow::Result<()> {
    let first = members[0].addr.clone();
    let mut only_first = settings.clone();
    only_first.endpoints = vec![first.clone()];
    let bootstrap = Client::new(&only_first).map_err(|e| anyhow!("a client for {first}: {e}"))?;
    let n = members.len();
    bootstrap
        .call_node(0, Request::Init { members })
        .await
        .map_err(|e| anyhow!("init via {first}: {e}"))?;
    println!("cluster initialised with {n} member(s) via {first}");
    Ok(())
}

/// Runs one `node` command.
///
/// # Errors
/// Refusals of the cluster.
pub(crate) async fn node_command(client: &Client, cmd: NodeCommand) -> anyhow::Result<()> {
    match cmd {
        NodeCommand::Add { id, addr } => add_node(client, id, addr).await,
        NodeCommand::Remove { id } => remove_node(client, id).await,
    }
}

async fn add_node(client: &Client, id: u64, addr: String) -> anyhow::Result<()> {
    call(
        client,
        Request::AddNode(Member {
            id,
            addr: addr.clone(),
        }),
    )
    .await?;
    println!("node {id} ({addr}) added");
    // Its chips get the domain only once enrolled: the operator's act, here as part of adding.
    enroll(client, id).await
}

/// Runs one `chip` command.
///
/// # Errors
/// Refusals of the cluster; a malformed fingerprint.
pub(crate) async fn chip_command(client: &Client, cmd: ChipCommand) -> anyhow::Result<()> {
    match cmd {
        ChipCommand::List => match call(client, Request::ListChips).await? {
            Response::Chips(chips) => {
                print!("{}", format_chips(&chips));
                Ok(())
            }
            other => Err(unexpected("chip list", &other)),
        },
        ChipCommand::Enroll { node } => enroll(client, node).await,
        ChipCommand::Retire { fingerprint } => {
            let bytes = hex::decode(fingerprint.trim())
                .ok()
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| {
                    anyhow!("a fingerprint is 64 hex digits (see `cloudkey chip list`)")
                })?;
            call(client, Request::RetireChip { fingerprint: bytes }).await?;
            println!("chip {} retired", hex::encode(bytes));
            Ok(())
        }
    }
}

async fn enroll(client: &Client, node: u64) -> anyhow::Result<()> {
    match call(client, Request::EnrollChips { node }).await? {
        Response::Chips(chips) => {
            println!("node {node}: {} chip(s) enrolled", chips.len());
            print!("{}", format_chips(&chips));
            Ok(())
        }
        other => Err(unexpected("chip enroll", &other)),
    }
}

/// The registry as a table.
#[must_use]
pub fn format_chips(chips: &[ChipEntry]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for c in chips {
        let _ = writeln!(
            out,
            "node {}  {}  {} {}  enrolled by {} at {}",
            c.node,
            hex::encode(c.fingerprint),
            c.model,
            c.serial,
            c.by,
            c.enrolled_ms
        );
    }
    out
}

async fn remove_node(client: &Client, id: u64) -> anyhow::Result<()> {
    call(client, Request::RemoveNode { id }).await?;
    println!("node {id} removed");
    Ok(())
}

/// `cloudkey status`: prints every node's answer; fails when no node answered.
pub(crate) async fn status_command(client: &Client, settings: &ClientSettings) -> ExitCode {
    let report = status(client, settings).await;
    print!("{}", report.text);
    if report.reachable == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Asks every endpoint of `settings` for its status, concurrently, and renders the answers.
pub async fn status(client: &Client, settings: &ClientSettings) -> StatusReport {
    let asks = (0..settings.endpoints.len()).map(|i| async move {
        match client.call_node(i, Request::Status).await {
            Ok(Response::Status(s)) => Ok(s),
            Ok(other) => Err(format!("unexpected response {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    });
    let answers = futures::future::join_all(asks).await;
    render_status(&settings.endpoints, &answers)
}
