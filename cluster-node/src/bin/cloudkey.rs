//! `cloudkey`: the operator CLI (`cloudkey --help`): the cluster PKI, bootstrap, membership,
//! tokens, keys, and `dev`, a local cluster (the library's [`cloudkey_node::dev`]).
//!
//! Every cluster command reads client settings (endpoints, CA, operator certificate and key) from
//! `--config FILE`, else `$CLOUDKEY_CONFIG`, else `.cloudkey-dev/operator.toml` (what
//! `cloudkey dev up` writes). Output is for people; errors go to stderr with exit status 1
//! (2 for usage errors).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use cloudkey_protocol::ck;
use cloudkey_protocol::client::{Client, ClientSettings};
use cloudkey_protocol::msg::{
    Member, NodeStatus, ObjectSummary, Request, Response, Secret, TokenId, TokenInfo,
};

use cloudkey_node::dev::{self, DevDownOptions, DevUpOptions};
use cloudkey_node::pki::{self, Identity, InitOptions};

/// Environment variable naming the client settings file.
pub const CONFIG_ENV: &str = "CLOUDKEY_CONFIG";
/// Client settings used when neither `--config` nor `$CLOUDKEY_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = ".cloudkey-dev/operator.toml";
/// Environment variable with the SO PIN for `token create` (keeps it out of `ps`).
pub const SO_PIN_ENV: &str = "CLOUDKEY_SO_PIN";
/// Environment variable with the user PIN for `token create`.
pub const USER_PIN_ENV: &str = "CLOUDKEY_USER_PIN";

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "cloudkey",
    version,
    about = "cloudkey operator CLI: cluster PKI, bootstrap, membership, tokens, keys and a local \
             development cluster"
)]
pub struct Cli {
    /// Client settings (TOML with endpoints, ca, cert, key). Default: $CLOUDKEY_CONFIG, else
    /// .cloudkey-dev/operator.toml.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The cluster CA and certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Bootstrap a new cluster: sends Init with every member to the first member's address.
    Init {
        /// A member, `ID=ADDR` (e.g. `1=127.0.0.1:7001`); repeat for each.
        #[arg(long = "member", value_name = "ID=ADDR", required = true, value_parser = parse_member)]
        members: Vec<Member>,
    },
    /// Cluster membership.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Asks every configured node for its status: members, leader, term, applied index, chips.
    Status,
    /// Tokens (PKCS#11 slots).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Keys and other objects.
    #[command(subcommand)]
    Key(KeyCommand),
    /// A local development cluster of `cloudkey-node` processes on loopback.
    #[command(subcommand)]
    Dev(DevCommand),
}

/// `cloudkey pki ...`
#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Makes a new cluster CA and certificates for nodes, operators and clients.
    Init {
        /// Directory for the CA and the certificates (created if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Node certificates for ids 1..=N.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// An operator certificate (repeatable).
        #[arg(long = "operator", value_name = "NAME")]
        operators: Vec<String>,
        /// A client certificate (repeatable).
        #[arg(long = "client", value_name = "NAME")]
        clients: Vec<String>,
        /// Replace an existing CA (every certificate of the old one is removed).
        #[arg(long)]
        force: bool,
    },
    /// Issues one more certificate from the existing CA in DIR.
    Issue {
        /// The PKI directory.
        #[arg(long)]
        dir: PathBuf,
        /// Replace an existing certificate of the same identity.
        #[arg(long)]
        force: bool,
        /// Role of the certificate.
        role: Role,
        /// Node id, or operator or client name.
        name: String,
    },
}

/// Certificate roles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// A cluster node (server and client authentication).
    Node,
    /// An operator (administration).
    Operator,
    /// A client (applications, the PKCS#11 module).
    Client,
}

/// `cloudkey node ...`
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Adds a node (learner, then voter). Start it first with a certificate from the CA.
    Add {
        /// Raft node id.
        id: u64,
        /// Its address, `host:port`.
        addr: String,
    },
    /// Removes a node from the membership.
    Remove {
        /// Raft node id.
        id: u64,
    },
}

/// `cloudkey token ...`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Creates a token.
    Create {
        /// Label (at most 32 bytes).
        label: String,
        /// SO PIN (default: $CLOUDKEY_SO_PIN).
        #[arg(long)]
        so_pin: Option<String>,
        /// User PIN (default: $CLOUDKEY_USER_PIN; if neither, C_InitPIN sets it later).
        #[arg(long)]
        user_pin: Option<String>,
    },
    /// Lists tokens.
    List,
    /// Deletes a token and all its objects.
    Delete {
        /// Token id or label.
        token: String,
    },
    /// Clears a token's failed-login counters and PIN locks.
    Unlock {
        /// Token id or label.
        token: String,
    },
}

/// `cloudkey key ...`
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Lists objects (all tokens, or one).
    List {
        /// Token id or label.
        #[arg(long)]
        token: Option<String>,
    },
}

/// `cloudkey dev ...`
#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Starts (or reports) a local cluster: PKI, node configs, N detached nodes, init, token `dev`.
    Up {
        /// State directory.
        #[arg(long, default_value = dev::DEFAULT_DIR)]
        dir: PathBuf,
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Software chips per node.
        #[arg(long, default_value_t = 2)]
        chips_per_node: u32,
    },
    /// Stops the local cluster (SIGTERM, then SIGKILL after a bound); keeps the data unless
    /// --purge.
    Down {
        /// State directory.
        #[arg(long, default_value = dev::DEFAULT_DIR)]
        dir: PathBuf,
        /// Also delete the PKI, configs, logs and node data.
        #[arg(long)]
        purge: bool,
    },
}

fn parse_member(s: &str) -> Result<Member, String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected ID=ADDR"))?;
    let id = id
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?}: the id is not a number"))?;
    let addr = addr.trim();
    if addr.is_empty() || !addr.contains(':') {
        return Err(format!("{s:?}: the address must be host:port"));
    }
    Ok(Member {
        id,
        addr: addr.to_owned(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cloudkey: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one parsed command line.
///
/// # Errors
/// Whatever the command fails with, with context.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Commands without the network need no runtime.
    if let Command::Pki(p) = cli.command {
        pki_command(p)?;
        return Ok(ExitCode::SUCCESS);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cli.config, cli.command))
}

fn pki_command(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init {
            dir,
            nodes,
            operators,
            clients,
            force,
        } => {
            let paths = pki::init_pki_with(
                &dir,
                &InitOptions {
                    nodes,
                    operators,
                    clients,
                    force,
                },
            )?;
            println!("CA       {}", paths.ca.display());
            for (who, p) in &paths.issued {
                println!("{:<8} {} ({who})", "issued", p.cert.display());
            }
        }
        PkiCommand::Issue {
            dir,
            force,
            role,
            name,
        } => {
            let role = match role {
                Role::Node => "node",
                Role::Operator => "operator",
                Role::Client => "client",
            };
            let who = Identity::parse(role, &name)?;
            let p = pki::issue(&dir, &who, force)?;
            println!(
                "issued {} and {} ({who})",
                p.cert.display(),
                p.key.display()
            );
        }
    }
    Ok(())
}

async fn run_async(config: Option<PathBuf>, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Dev(DevCommand::Up {
            dir,
            nodes,
            chips_per_node,
        }) => {
            let up = dev::up(&DevUpOptions {
                dir,
                nodes,
                chips_per_node,
            })
            .await?;
            print!("{}", up.summary());
            Ok(ExitCode::SUCCESS)
        }
        Command::Dev(DevCommand::Down { dir, purge }) => {
            let report = dev::down(&DevDownOptions { dir, purge }).await?;
            print!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Pki(_) => unreachable!("handled without a runtime"),
        other => {
            let path = config_path(config);
            if !path.exists() {
                bail!(
                    "no client settings at {}: pass --config FILE, set ${CONFIG_ENV}, or start a \
                     local cluster with `cloudkey dev up`",
                    path.display()
                );
            }
            let settings = ClientSettings::from_file(&path)
                .with_context(|| format!("reading client settings {}", path.display()))?;
            let client = Client::new(&settings)
                .with_context(|| format!("building the client from {}", path.display()))?;
            cluster_command(&client, &settings, other).await
        }
    }
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(CONFIG_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

async fn call(client: &Client, req: Request) -> anyhow::Result<Response> {
    let name = req.name();
    client.call(req).await.map_err(|e| anyhow!("{name}: {e}"))
}

fn unexpected(what: &str, r: &Response) -> anyhow::Error {
    anyhow!("{what}: unexpected response {r:?}")
}

async fn cluster_command(
    client: &Client,
    settings: &ClientSettings,
    cmd: Command,
) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init { members } => {
            // The first member bootstraps the cluster, whether or not the settings list it.
            let first = members[0].addr.clone();
            let mut only_first = settings.clone();
            only_first.endpoints = vec![first.clone()];
            let bootstrap =
                Client::new(&only_first).map_err(|e| anyhow!("a client for {first}: {e}"))?;
            let n = members.len();
            bootstrap
                .call_node(0, Request::Init { members })
                .await
                .map_err(|e| anyhow!("init via {first}: {e}"))?;
            println!("cluster initialised with {n} member(s) via {first}");
        }
        Command::Node(NodeCommand::Add { id, addr }) => {
            call(
                client,
                Request::AddNode(Member {
                    id,
                    addr: addr.clone(),
                }),
            )
            .await?;
            println!("node {id} ({addr}) added");
        }
        Command::Node(NodeCommand::Remove { id }) => {
            call(client, Request::RemoveNode { id }).await?;
            println!("node {id} removed");
        }
        Command::Status => {
            let report = status(client, settings).await;
            print!("{}", report.text);
            return Ok(if report.reachable == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        Command::Token(t) => token_command(client, t).await?,
        Command::Key(KeyCommand::List { token }) => {
            let token = match token {
                Some(t) => Some(resolve_token(client, &t).await?.id),
                None => None,
            };
            match call(client, Request::ListObjects { token }).await? {
                Response::Objects(objects) => print!("{}", format_objects(&objects)),
                r => return Err(unexpected("list objects", &r)),
            }
        }
        Command::Pki(_) | Command::Dev(_) => unreachable!("handled before"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn token_command(client: &Client, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            label,
            so_pin,
            user_pin,
        } => {
            let so_pin = so_pin
                .or_else(|| std::env::var(SO_PIN_ENV).ok())
                .ok_or_else(|| anyhow!("no SO PIN: pass --so-pin or set ${SO_PIN_ENV}"))?;
            let user_pin = user_pin.or_else(|| std::env::var(USER_PIN_ENV).ok());
            let req = Request::CreateToken {
                label: label.clone(),
                so_pin: Secret::from(so_pin.as_str()),
                user_pin: user_pin.as_deref().map(Secret::from),
            };
            match call(client, req).await? {
                Response::Token(t) => println!("token {} created: {:?}", t.id, t.label),
                r => return Err(unexpected("create token", &r)),
            }
        }
        TokenCommand::List => match call(client, Request::ListTokens).await? {
            Response::Tokens(tokens) => print!("{}", format_tokens(&tokens)),
            r => return Err(unexpected("list tokens", &r)),
        },
        TokenCommand::Delete { token } => {
            let t = resolve_token(client, &token).await?;
            call(client, Request::DeleteToken(t.id)).await?;
            println!("token {} ({:?}) deleted", t.id, t.label);
        }
        TokenCommand::Unlock { token } => {
            let t = resolve_token(client, &token).await?;
            call(client, Request::UnlockToken(t.id)).await?;
            println!("token {} ({:?}) unlocked", t.id, t.label);
        }
    }
    Ok(())
}

/// Finds a token by id or label (an id wins only when no token carries the text as label;
/// a text that is one token's id and another's label is refused as ambiguous).
async fn resolve_token(client: &Client, text: &str) -> anyhow::Result<TokenInfo> {
    let tokens = match call(client, Request::ListTokens).await? {
        Response::Tokens(t) => t,
        r => return Err(unexpected("list tokens", &r)),
    };
    pick_token(&tokens, text)
}

fn pick_token(tokens: &[TokenInfo], text: &str) -> anyhow::Result<TokenInfo> {
    let by_label = tokens.iter().find(|t| t.label == text);
    let by_id = text
        .parse::<u64>()
        .ok()
        .and_then(|id| tokens.iter().find(|t| t.id == TokenId(id)));
    match (by_id, by_label) {
        (Some(a), Some(b)) if a.id != b.id => bail!(
            "{text:?} is token {}'s id and token {}'s label; ambiguous",
            a.id,
            b.id
        ),
        (Some(t), _) | (None, Some(t)) => Ok(t.clone()),
        (None, None) => bail!("no token with id or label {text:?}"),
    }
}

/// What `cloudkey status` printed, and how many nodes answered.
#[derive(Debug)]
pub struct StatusReport {
    /// The text.
    pub text: String,
    /// Nodes that answered.
    pub reachable: usize,
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

fn render_status(endpoints: &[String], answers: &[Result<NodeStatus, String>]) -> StatusReport {
    let mut out = String::new();
    let ok: Vec<&NodeStatus> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let reachable = ok.len();
    // The view of the node with the highest term and applied index is the freshest.
    let best = ok.iter().max_by_key(|s| (s.term, s.applied)).copied();
    match best {
        Some(s) if s.initialized => {
            let leader = s
                .leader
                .map_or_else(|| "none".to_owned(), |l| format!("node {l}"));
            let _ = writeln!(
                out,
                "cluster: initialised, leader {leader}, term {}, domain KCV {}",
                s.term,
                if s.domain_kcv.is_empty() {
                    "-"
                } else {
                    &s.domain_kcv
                }
            );
            let members: Vec<String> = s
                .members
                .iter()
                .map(|m| format!("{}={}", m.id, m.addr))
                .collect();
            let _ = writeln!(out, "members: {}", members.join(" "));
            for m in &s.members {
                if !endpoints.contains(&m.addr) {
                    let _ = writeln!(
                        out,
                        "note: member {} ({}) is not among the configured endpoints; not asked",
                        m.id, m.addr
                    );
                }
            }
        }
        Some(_) => {
            let _ = writeln!(out, "cluster: not initialised (run `cloudkey init`)");
        }
        None => {
            let _ = writeln!(out, "cluster: no node answered");
        }
    }
    let _ = writeln!(out, "{reachable}/{} node(s) reachable", endpoints.len());
    for (ep, a) in endpoints.iter().zip(answers) {
        match a {
            Ok(s) => {
                let role = match s.leader {
                    Some(l) if l == s.id => "leader",
                    Some(_) => "follower",
                    None if s.initialized => "candidate",
                    None => "uninitialised",
                };
                let _ = writeln!(
                    out,
                    "node {} {ep} {role} term {} applied {} leader {}",
                    s.id,
                    s.term,
                    s.applied,
                    s.leader.map_or_else(|| "-".to_owned(), |l| l.to_string())
                );
                for c in &s.chips {
                    let _ = writeln!(
                        out,
                        "  chip {}: queued {} loaded {}/{} served {} domain {} {}",
                        c.name,
                        c.queued,
                        c.loaded,
                        c.slots,
                        c.served,
                        if c.has_domain { "yes" } else { "no" },
                        if c.healthy { "healthy" } else { "UNHEALTHY" }
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "node ? {ep} UNREACHABLE: {e}");
            }
        }
    }
    StatusReport {
        text: out,
        reachable,
    }
}

fn format_tokens(tokens: &[TokenInfo]) -> String {
    let mut out = format!(
        "{:<4} {:<32} {:<9} {:<14} {:<14} {}\n",
        "ID", "LABEL", "USER PIN", "USER FAILURES", "SO FAILURES", "OBJECTS"
    );
    for t in tokens {
        let pin = match (t.user_pin_initialized, t.user_locked) {
            (_, true) => "LOCKED",
            (true, false) => "set",
            (false, false) => "unset",
        };
        let so = if t.so_locked {
            format!("{}/{} LOCKED", t.so_failures, t.max_failures)
        } else {
            format!("{}/{}", t.so_failures, t.max_failures)
        };
        let _ = writeln!(
            out,
            "{:<4} {:<32} {:<9} {:<14} {:<14} {}",
            t.id.to_string(),
            t.label,
            pin,
            format!("{}/{}", t.user_failures, t.max_failures),
            so,
            t.objects
        );
    }
    out
}

fn class_name(class: u64) -> String {
    match class {
        ck::CKO_DATA => "data".into(),
        ck::CKO_CERTIFICATE => "certificate".into(),
        ck::CKO_PUBLIC_KEY => "public".into(),
        ck::CKO_PRIVATE_KEY => "private".into(),
        ck::CKO_SECRET_KEY => "secret".into(),
        other => format!("0x{other:x}"),
    }
}

fn key_type_name(kt: Option<u64>) -> String {
    match kt {
        None => "-".into(),
        Some(ck::CKK_RSA) => "RSA".into(),
        Some(ck::CKK_EC) => "EC".into(),
        Some(ck::CKK_AES) => "AES".into(),
        Some(ck::CKK_GENERIC_SECRET) => "GENERIC".into(),
        Some(other) => format!("0x{other:x}"),
    }
}

fn format_objects(objects: &[ObjectSummary]) -> String {
    let mut out = format!(
        "{:<32} {:<5} {:<11} {:<8} {:<24} {}\n",
        "OBJECT", "TOKEN", "CLASS", "TYPE", "LABEL", "CKA_ID"
    );
    for o in objects {
        let _ = writeln!(
            out,
            "{:<32} {:<5} {:<11} {:<8} {:<24} {}",
            o.id.to_string(),
            o.token.to_string(),
            class_name(o.class),
            key_type_name(o.key_type),
            o.label,
            o.cka_id_hex
        );
    }
    let _ = writeln!(out, "{} object(s)", objects.len());
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn command_lines_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let cli = parse(&["cloudkey", "status", "--config", "x.toml"]).unwrap();
        assert_eq!(cli.config, Some(PathBuf::from("x.toml")));
        assert!(matches!(cli.command, Command::Status));
        let cli = parse(&[
            "cloudkey",
            "init",
            "--member",
            "1=127.0.0.1:1",
            "--member",
            "2=127.0.0.1:2",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Init { ref members } if members.len() == 2));
        assert!(parse(&["cloudkey", "init"]).is_err(), "init needs members");
        let cli = parse(&["cloudkey", "token", "create", "t", "--so-pin", "12345678"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Token(TokenCommand::Create { ref so_pin, user_pin: None, .. })
                if so_pin.as_deref() == Some("12345678")
        ));
        let cli = parse(&["cloudkey", "pki", "issue", "--dir", "p", "client", "app"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Pki(PkiCommand::Issue { role: Role::Client, ref name, .. }) if name == "app"
        ));
        let cli = parse(&["cloudkey", "dev", "up"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Dev(DevCommand::Up { nodes: 3, chips_per_node: 2, ref dir })
                if dir == Path::new(dev::DEFAULT_DIR)
        ));
        assert!(parse(&["cloudkey", "node", "add", "4", "127.0.0.1:4"]).is_ok());
        assert!(parse(&["cloudkey", "key", "list", "--token", "dev"]).is_ok());
    }

    #[test]
    fn members_parse() {
        let m = parse_member("2=127.0.0.1:7002").unwrap();
        assert_eq!((m.id, m.addr.as_str()), (2, "127.0.0.1:7002"));
        assert!(parse_member("x=1:2").is_err());
        assert!(parse_member("1").is_err());
        assert!(parse_member("1=nohost").is_err());
    }

    #[test]
    fn tokens_resolve_by_id_or_label() {
        let t = |id, label: &str| TokenInfo {
            id: TokenId(id),
            label: label.into(),
            user_pin_initialized: true,
            user_failures: 0,
            user_locked: false,
            so_failures: 0,
            so_locked: false,
            max_failures: 5,
            objects: 0,
        };
        let tokens = [t(1, "dev"), t(2, "1"), t(3, "x")];
        assert_eq!(pick_token(&tokens, "dev").unwrap().id, TokenId(1));
        assert_eq!(pick_token(&tokens, "3").unwrap().id, TokenId(3));
        assert!(pick_token(&tokens, "1").is_err(), "ambiguous");
        assert!(pick_token(&tokens, "nope").is_err());
    }

    #[test]
    fn status_marks_unreachable_nodes() {
        let s = NodeStatus {
            id: 1,
            addr: "127.0.0.1:1".into(),
            initialized: true,
            term: 2,
            leader: Some(1),
            applied: 7,
            members: vec![Member {
                id: 1,
                addr: "127.0.0.1:1".into(),
            }],
            chips: vec![],
            domain_kcv: "00".into(),
        };
        let r = render_status(
            &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            &[Ok(s), Err("timed out".into())],
        );
        assert_eq!(r.reachable, 1);
        assert!(r.text.contains("leader node 1"), "{}", r.text);
        assert!(r.text.contains("127.0.0.1:2 UNREACHABLE"), "{}", r.text);
    }
}
