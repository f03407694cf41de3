//! `cloudkey`: the operator CLI (`cloudkey --help`): the cluster PKI, bootstrap, membership,
//! tokens, keys, governance (officers, quorum policies, approvals, the audit chain, terminal
//! master-key injection), and `dev`, a local cluster (the library's [`cloudkey_node::dev`]).
//!
//! Officer commands (`approval approve|reject`, `tmk sms|apply`, `officer add`) read the
//! officer's PIN from `$CLOUDKEY_OFFICER_PIN`, and must run with the officer's own certificate
//! (its client settings). `audit verify` and `tmk terminal keygen` work offline.
//!
//! Every cluster command reads client settings (endpoints, CA, operator certificate and key) from
//! `--config FILE`, else `$CLOUDKEY_CONFIG`, else `.cloudkey-dev/operator.toml` (what
//! `cloudkey dev up` writes). Output is for people; errors go to stderr with exit status 1
//! (2 for usage errors).
#![forbid(unsafe_code)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256,
};
use clap::{Args, Parser, Subcommand, ValueEnum};
use cloudkey_protocol::audit::{self, AuditExport};
use cloudkey_protocol::client::{Client, ClientSettings};
use cloudkey_protocol::gov::{
    valid_terminal_id, ApprovalInfo, ApprovalStatus, AuditEntry, GuardedOp, OfficerAuth,
    OfficerInfo, PolicyScope, QrPayload, Rule, TerminalInfo, TerminalKey, TmkDelivery,
};
use cloudkey_protocol::msg::{
    Member, NodeStatus, ObjectId, ObjectSummary, Request, Response, Secret, TokenId, TokenInfo,
};
use cloudkey_protocol::tls::{PeerIdentity, Role as PeerRole, URI_PREFIX};
use cloudkey_protocol::{ck, vendor};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::elliptic_curve::Generate;
use sm2::pkcs8::der::pem::{self as pem_encoding, LineEnding};
use sm2::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sm4::cipher::{BlockCipherEncrypt, KeyInit};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

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
/// Environment variable with an officer's own PIN (`officer add`, `approval approve|reject`,
/// `tmk sms|apply`).
pub const OFFICER_PIN_ENV: &str = "CLOUDKEY_OFFICER_PIN";
/// Records asked for per `AuditExport` page (the most a node sends).
pub const AUDIT_PAGE: u32 = 1000;
/// The terminal's private key as `tmk terminal keygen` writes it (PKCS#8 PEM).
pub const TERMINAL_KEY_FILE: &str = "terminal.key.pem";
/// The terminal's public key as `tmk terminal keygen` writes it (SubjectPublicKeyInfo PEM).
pub const TERMINAL_PUB_FILE: &str = "terminal.pub.pem";

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
    /// Officers: the people who approve operations that a policy puts under quorum control.
    #[command(subcommand)]
    Officer(OfficerCommand),
    /// Quorum (M-of-N) policies: which operations need approvals, where, from whom.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Approval requests: list, approve, reject.
    #[command(subcommand)]
    Approval(ApprovalCommand),
    /// The tamper-evident audit chain: export it, verify an export offline.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Terminal master-key (TMK) injection.
    #[command(subcommand)]
    Tmk(TmkCommand),
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

/// `cloudkey officer ...`
#[derive(Debug, Subcommand)]
pub enum OfficerCommand {
    /// Registers an officer; the PIN comes from $CLOUDKEY_OFFICER_PIN.
    Add {
        /// Unique name.
        name: String,
        /// The certificate identity the officer must connect with: `operator/NAME` or
        /// `client/NAME`.
        #[arg(long, value_name = "ROLE/NAME", value_parser = parse_officer_identity)]
        identity: String,
    },
    /// Lists officers.
    List,
}

/// Where a policy applies: exactly one of `--token`, `--key`, `--cluster`.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// Every object of a token (label or id).
    #[arg(long, value_name = "LABEL")]
    pub token: Option<String>,
    /// One key (its object id, 32 hex digits, as `cloudkey key list` shows).
    #[arg(long, value_name = "HEXID", value_parser = parse_object_id)]
    pub key: Option<ObjectId>,
    /// The whole cluster (terminal master-key injection).
    #[arg(long)]
    pub cluster: bool,
}

/// Key types a `generate` rule can be limited to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KeyTypeArg {
    /// `CKK_AES`.
    Aes,
    /// `CKK_EC`.
    Ec,
    /// `CKK_RSA`.
    Rsa,
    /// `CKK_SM2` (vendor).
    Sm2,
    /// `CKK_SM4` (vendor).
    Sm4,
    /// `CKK_GENERIC_SECRET`.
    Generic,
}

impl KeyTypeArg {
    /// The `CKK_*` value.
    #[must_use]
    pub fn ckk(self) -> u64 {
        match self {
            Self::Aes => ck::CKK_AES,
            Self::Ec => ck::CKK_EC,
            Self::Rsa => ck::CKK_RSA,
            Self::Sm2 => vendor::CKK_SM2,
            Self::Sm4 => vendor::CKK_SM4,
            Self::Generic => ck::CKK_GENERIC_SECRET,
        }
    }
}

/// `cloudkey policy ...`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Puts an operation under quorum control in a scope: replaces the scope's rule for that
    /// operation (and key type), or adds one.
    Set {
        /// Where.
        #[command(flatten)]
        scope: ScopeArgs,
        /// The operation: generate, wrap, destroy, set-attributes, sign or tmk-inject.
        #[arg(long, value_parser = parse_op)]
        op: GuardedOp,
        /// Approvals needed (M).
        #[arg(long)]
        quorum: u32,
        /// An officer who may approve (repeat for each of the N); default: any officer.
        #[arg(long = "officer", value_name = "NAME")]
        officers: Vec<String>,
        /// Only for `--op generate`: guard only keys of this type.
        #[arg(long, value_enum)]
        key_type: Option<KeyTypeArg>,
        /// How long a request stays open, seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
    },
    /// Removes a scope's rules for one operation (all key types), or all its rules.
    Clear {
        /// Where.
        #[command(flatten)]
        scope: ScopeArgs,
        /// Only this operation's rules.
        #[arg(long, value_parser = parse_op)]
        op: Option<GuardedOp>,
    },
    /// Lists every policy.
    List,
}

/// `cloudkey approval ...`
#[derive(Debug, Subcommand)]
pub enum ApprovalCommand {
    /// Lists open approval requests.
    List {
        /// Also approved, rejected, expired and consumed ones.
        #[arg(long)]
        all: bool,
    },
    /// Shows a pending request, then approves exactly its parameters (PIN from
    /// $CLOUDKEY_OFFICER_PIN).
    Approve {
        /// Request id.
        id: u64,
        /// The approving officer.
        #[arg(long, value_name = "NAME")]
        officer: String,
    },
    /// Rejects a pending request (PIN from $CLOUDKEY_OFFICER_PIN).
    Reject {
        /// Request id.
        id: u64,
        /// The rejecting officer.
        #[arg(long, value_name = "NAME")]
        officer: String,
    },
}

/// `cloudkey audit ...`
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Exports the whole audit chain with the audit key to a JSON file.
    Export {
        /// The file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verifies an export offline against the cluster CA: hashes, links, checkpoints and the
    /// audit key's endorsement. Exit status 1 names the first bad record.
    Verify {
        /// The export (`cloudkey audit export`).
        file: PathBuf,
        /// The cluster CA certificate(s), PEM.
        #[arg(long, value_name = "CA_PEM")]
        ca: PathBuf,
    },
}

/// `cloudkey tmk ...`
#[derive(Debug, Subcommand)]
pub enum TmkCommand {
    /// Terminals.
    #[command(subcommand)]
    Terminal(TerminalCommand),
    /// As the terminal: opens an injection application and shows its QR code.
    Request {
        /// Terminal number.
        id: String,
        /// Also write the QR code as a PNG image.
        #[arg(long, value_name = "FILE")]
        png: Option<PathBuf>,
    },
    /// As the first administrator: has a one-time code sent to the officer's phone (PIN from
    /// $CLOUDKEY_OFFICER_PIN).
    Sms {
        /// Terminal number.
        id: String,
        /// The officer.
        #[arg(long, value_name = "NAME")]
        officer: String,
    },
    /// As the first administrator: applies for the injection with the scanned QR payload and
    /// the one-time code (PIN from $CLOUDKEY_OFFICER_PIN); opens the approval request the
    /// second administrator approves.
    Apply {
        /// Terminal number.
        id: String,
        /// The scanned QR payload (`CKTMK1.<terminal>.<application>.<nonce>`).
        #[arg(long, value_name = "P")]
        payload: String,
        /// The one-time code.
        #[arg(long, value_name = "CODE")]
        sms_code: String,
        /// The applying officer.
        #[arg(long, value_name = "NAME")]
        officer: String,
    },
    /// As the terminal: fetches the approved TMK, encrypted under the terminal's key; with
    /// --private-key decrypts it locally and checks its KCV (the key is never shown).
    Fetch {
        /// Terminal number.
        id: String,
        /// The terminal's QR payload.
        #[arg(long, value_name = "P")]
        payload: String,
        /// The applicant officer's name, as entered on the terminal.
        #[arg(long, value_name = "NAME")]
        admin: String,
        /// The terminal's private key (PKCS#8 PEM, as `tmk terminal keygen` writes).
        #[arg(long, value_name = "PEM")]
        private_key: Option<PathBuf>,
        /// Write the encrypted key (binary) to this file.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// `cloudkey tmk terminal ...`
#[derive(Debug, Subcommand)]
pub enum TerminalCommand {
    /// Registers (or replaces) a terminal with its public key and administrators.
    #[command(group(clap::ArgGroup::new("terminal_key").required(true)))]
    Add {
        /// Terminal number (1 to 64 of A-Z a-z 0-9 - _).
        id: String,
        /// RSA public key (2048 bits or more), SubjectPublicKeyInfo PEM: the TMK is AES-256.
        #[arg(long, value_name = "PEM", group = "terminal_key")]
        rsa_public_key: Option<PathBuf>,
        /// SM2 public key, SubjectPublicKeyInfo PEM: the TMK is SM4.
        #[arg(long, value_name = "PEM", group = "terminal_key")]
        sm2_public_key: Option<PathBuf>,
        /// An officer responsible for the terminal (repeat; the two administrators).
        #[arg(long = "admin", value_name = "NAME", required = true)]
        admins: Vec<String>,
        /// Bind the terminal to this certificate identity (`client/NAME`).
        #[arg(long, value_name = "client/NAME", value_parser = parse_terminal_identity)]
        identity: Option<String>,
    },
    /// Lists terminals.
    List,
    /// Development helper playing the terminal: writes a new key pair, `terminal.key.pem`
    /// (PKCS#8) and `terminal.pub.pem`, RSA-2048 or SM2.
    Keygen {
        /// Directory for the two files (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// An SM2 key pair instead of RSA-2048.
        #[arg(long)]
        sm2: bool,
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
    // Commands without the network need no runtime (nor client settings).
    let command = match cli.command {
        Command::Pki(p) => {
            pki_command(p)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Audit(AuditCommand::Verify { file, ca }) => {
            print!("{}", audit_verify(&file, &ca)?);
            return Ok(ExitCode::SUCCESS);
        }
        Command::Tmk(TmkCommand::Terminal(TerminalCommand::Keygen { out, sm2 })) => {
            terminal_keygen(&out, sm2)?;
            return Ok(ExitCode::SUCCESS);
        }
        other => other,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cli.config, command))
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
        Command::Pki(_)
        | Command::Audit(AuditCommand::Verify { .. })
        | Command::Tmk(TmkCommand::Terminal(TerminalCommand::Keygen { .. })) => {
            unreachable!("handled without a runtime")
        }
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
        Command::Officer(c) => officer_command(client, c).await?,
        Command::Policy(c) => policy_command(client, c).await?,
        Command::Approval(c) => approval_command(client, c).await?,
        Command::Audit(AuditCommand::Export { out }) => audit_export(client, &out).await?,
        Command::Tmk(c) => tmk_command(client, c).await?,
        Command::Pki(_) | Command::Dev(_) | Command::Audit(AuditCommand::Verify { .. }) => {
            unreachable!("handled before")
        }
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
        Some(vendor::CKK_SM2) => "SM2".into(),
        Some(vendor::CKK_SM4) => "SM4".into(),
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

// ---- governance ----

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When `at_ms` is, relative to `now_ms`: `in 4m 59s` or `12s ago`.
fn relative_time(now_ms: u64, at_ms: u64) -> String {
    fn span(ms: u64) -> String {
        let s = ms / 1000;
        match s {
            0..=59 => format!("{s}s"),
            60..=3599 => format!("{}m {}s", s / 60, s % 60),
            3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
            _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        }
    }
    if at_ms >= now_ms {
        format!("in {}", span(at_ms - now_ms))
    } else {
        format!("{} ago", span(now_ms - at_ms))
    }
}

fn parse_identity(s: &str, roles: &[&str]) -> Result<String, String> {
    let id = PeerIdentity::from_uri(&format!("{URI_PREFIX}{s}")).map_err(|e| e.to_string())?;
    let role = match id.role {
        PeerRole::Node(_) => "node",
        PeerRole::Operator => "operator",
        PeerRole::Client => "client",
    };
    if roles.contains(&role) {
        Ok(s.to_owned())
    } else {
        let forms: Vec<String> = roles.iter().map(|r| format!("{r}/NAME")).collect();
        Err(format!("{s:?}: expected {}", forms.join(" or ")))
    }
}

fn parse_officer_identity(s: &str) -> Result<String, String> {
    parse_identity(s, &["operator", "client"])
}

fn parse_terminal_identity(s: &str) -> Result<String, String> {
    parse_identity(s, &["client"])
}

fn parse_op(s: &str) -> Result<GuardedOp, String> {
    GuardedOp::from_name(s).ok_or_else(|| {
        let names: Vec<&str> = GuardedOp::ALL.iter().map(|o| o.name()).collect();
        format!("{s:?}: expected one of {}", names.join(", "))
    })
}

fn parse_object_id(s: &str) -> Result<ObjectId, String> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(s.trim(), &mut id)
        .map_err(|_| format!("{s:?}: an object id is 32 hex digits"))?;
    Ok(ObjectId(id))
}

fn officer_pin() -> anyhow::Result<Secret> {
    match std::env::var(OFFICER_PIN_ENV) {
        Ok(pin) if !pin.is_empty() => {
            let pin = Zeroizing::new(pin);
            Ok(Secret::from(pin.as_str()))
        }
        _ => bail!("no officer PIN: set ${OFFICER_PIN_ENV}"),
    }
}

fn officer_auth(name: &str) -> anyhow::Result<OfficerAuth> {
    Ok(OfficerAuth {
        name: name.to_owned(),
        pin: officer_pin()?,
    })
}

async fn officer_command(client: &Client, cmd: OfficerCommand) -> anyhow::Result<()> {
    match cmd {
        OfficerCommand::Add { name, identity } => {
            let pin = officer_pin()?;
            let req = Request::AddOfficer {
                name: name.clone(),
                identity: identity.clone(),
                pin,
            };
            call(client, req).await?;
            println!("officer {name} added; they connect as {identity}");
        }
        OfficerCommand::List => match call(client, Request::ListOfficers).await? {
            Response::Officers(officers) => print!("{}", format_officers(&officers)),
            r => return Err(unexpected("list officers", &r)),
        },
    }
    Ok(())
}

fn format_officers(officers: &[OfficerInfo]) -> String {
    let mut out = format!(
        "{:<24} {:<32} {:<9} {}\n",
        "NAME", "IDENTITY", "FAILURES", "STATE"
    );
    for o in officers {
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<9} {}",
            o.name,
            o.identity,
            o.failures,
            if o.locked { "LOCKED" } else { "active" }
        );
    }
    let _ = writeln!(out, "{} officer(s)", officers.len());
    out
}

/// The rule `policy set` asks for, checked as far as the CLI can.
fn make_rule(
    op: GuardedOp,
    quorum: u32,
    officers: Vec<String>,
    key_type: Option<KeyTypeArg>,
    ttl_secs: u64,
) -> anyhow::Result<Rule> {
    if quorum == 0 {
        bail!("--quorum must be at least 1");
    }
    if key_type.is_some() && op != GuardedOp::Generate {
        bail!("--key-type applies only to --op generate");
    }
    let mut distinct = officers.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != officers.len() {
        bail!("an officer is named twice");
    }
    if !officers.is_empty() && officers.len() < quorum as usize {
        bail!(
            "{} officer(s) cannot give {quorum} approvals",
            officers.len()
        );
    }
    if ttl_secs == 0 {
        bail!("--ttl-secs must be positive");
    }
    let ttl_ms = ttl_secs
        .checked_mul(1000)
        .ok_or_else(|| anyhow!("--ttl-secs is too large"))?;
    Ok(Rule {
        op,
        key_type: key_type.map(KeyTypeArg::ckk),
        quorum,
        officers,
        ttl_ms,
    })
}

/// Replaces the rule for the same operation and key type, or adds `rule`; true if replaced.
fn upsert_rule(rules: &mut Vec<Rule>, rule: Rule) -> bool {
    match rules
        .iter_mut()
        .find(|r| r.op == rule.op && r.key_type == rule.key_type)
    {
        Some(r) => {
            *r = rule;
            true
        }
        None => {
            rules.push(rule);
            false
        }
    }
}

/// Removes every rule for `op`; returns how many.
fn remove_rules(rules: &mut Vec<Rule>, op: GuardedOp) -> usize {
    let before = rules.len();
    rules.retain(|r| r.op != op);
    before - rules.len()
}

async fn resolve_scope(client: &Client, args: &ScopeArgs) -> anyhow::Result<PolicyScope> {
    match (&args.token, args.key, args.cluster) {
        (Some(t), None, false) => Ok(PolicyScope::Token(resolve_token(client, t).await?.id)),
        (None, Some(k), false) => Ok(PolicyScope::Key(k)),
        (None, None, true) => Ok(PolicyScope::Cluster),
        _ => bail!("give exactly one of --token, --key and --cluster"),
    }
}

async fn list_policies(client: &Client) -> anyhow::Result<Vec<(PolicyScope, Vec<Rule>)>> {
    match call(client, Request::ListPolicies).await? {
        Response::Policies(p) => Ok(p),
        r => Err(unexpected("list policies", &r)),
    }
}

/// Token labels for display; none if the tokens cannot be listed.
async fn token_labels(client: &Client) -> Vec<TokenInfo> {
    match call(client, Request::ListTokens).await {
        Ok(Response::Tokens(t)) => t,
        _ => Vec::new(),
    }
}

fn scope_name(scope: PolicyScope, tokens: &[TokenInfo]) -> String {
    match scope {
        PolicyScope::Token(id) => match tokens.iter().find(|t| t.id == id) {
            Some(t) => format!("token {id} ({})", t.label),
            None => format!("token {id}"),
        },
        other => other.to_string(),
    }
}

fn officers_text(officers: &[String]) -> String {
    if officers.is_empty() {
        "any officer".into()
    } else {
        officers.join(",")
    }
}

fn describe_rule(r: &Rule) -> String {
    let of = officers_text(&r.officers);
    let kt = match r.key_type {
        Some(_) => format!(" ({} keys)", key_type_name(r.key_type)),
        None => String::new(),
    };
    format!(
        "{}{kt}: {} approval(s) from {of}, requests open {}s",
        r.op,
        r.quorum,
        r.ttl_ms / 1000
    )
}

fn format_policies(policies: &[(PolicyScope, Vec<Rule>)], tokens: &[TokenInfo]) -> String {
    let mut out = format!(
        "{:<40} {:<15} {:<8} {:<7} {:<9} {}\n",
        "SCOPE", "OP", "KEY TYPE", "QUORUM", "TTL", "OFFICERS"
    );
    let mut n = 0;
    for (scope, rules) in policies {
        for r in rules {
            n += 1;
            let _ = writeln!(
                out,
                "{:<40} {:<15} {:<8} {:<7} {:<9} {}",
                scope_name(*scope, tokens),
                r.op.name(),
                key_type_name(r.key_type),
                r.quorum,
                format!("{}s", r.ttl_ms / 1000),
                officers_text(&r.officers)
            );
        }
    }
    let _ = writeln!(out, "{n} rule(s) in {} scope(s)", policies.len());
    out
}

async fn policy_command(client: &Client, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Set {
            scope,
            op,
            quorum,
            officers,
            key_type,
            ttl_secs,
        } => {
            let rule = make_rule(op, quorum, officers, key_type, ttl_secs)?;
            let scope = resolve_scope(client, &scope).await?;
            let mut rules = rules_of(&list_policies(client).await?, scope);
            let replaced = upsert_rule(&mut rules, rule.clone());
            let n = rules.len();
            call(client, Request::SetPolicy { scope, rules }).await?;
            let tokens = token_labels(client).await;
            println!(
                "{}: {} rule {}; the scope has {n} rule(s)",
                scope_name(scope, &tokens),
                if replaced { "replaced" } else { "added" },
                describe_rule(&rule)
            );
        }
        PolicyCommand::Clear { scope, op } => {
            let scope = resolve_scope(client, &scope).await?;
            let mut rules = rules_of(&list_policies(client).await?, scope);
            let removed = match op {
                Some(op) => remove_rules(&mut rules, op),
                None => std::mem::take(&mut rules).len(),
            };
            let tokens = token_labels(client).await;
            let name = scope_name(scope, &tokens);
            if removed == 0 {
                println!("{name}: no rule to remove");
                return Ok(());
            }
            let left = rules.len();
            call(client, Request::SetPolicy { scope, rules }).await?;
            println!("{name}: {removed} rule(s) removed, {left} left");
        }
        PolicyCommand::List => {
            let policies = list_policies(client).await?;
            let tokens = token_labels(client).await;
            print!("{}", format_policies(&policies, &tokens));
        }
    }
    Ok(())
}

fn rules_of(policies: &[(PolicyScope, Vec<Rule>)], scope: PolicyScope) -> Vec<Rule> {
    policies
        .iter()
        .find(|(s, _)| *s == scope)
        .map(|(_, r)| r.clone())
        .unwrap_or_default()
}

fn format_approvals(list: &[ApprovalInfo], now: u64) -> String {
    let mut out = format!(
        "{:<6} {:<20} {:<15} {:<20} {:<24} {:<9} {:<14} {:<40} {}\n",
        "ID",
        "STATUS",
        "OP",
        "SCOPE",
        "REQUESTER",
        "APPROVALS",
        "EXPIRES",
        "DESCRIPTION",
        "PARAMS HASH"
    );
    for a in list {
        let _ = writeln!(
            out,
            "{:<6} {:<20} {:<15} {:<20} {:<24} {:<9} {:<14} {:<40} {}",
            a.id,
            a.status.to_string(),
            a.op.name(),
            a.scope.to_string(),
            a.requester,
            format!("{}/{}", a.approvals.len(), a.quorum),
            relative_time(now, a.expires_unix_ms),
            a.description,
            hex::encode(a.params_hash)
        );
    }
    let _ = writeln!(out, "{} request(s)", list.len());
    out
}

/// A request in full, for the officer about to decide on it.
fn describe_approval(a: &ApprovalInfo, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request      {} ({})", a.id, a.status);
    let _ = writeln!(out, "operation    {} in {}", a.op, a.scope);
    let _ = writeln!(out, "description  {}", a.description);
    let _ = writeln!(out, "params hash  {}", hex::encode(a.params_hash));
    let _ = writeln!(out, "requester    {}", a.requester);
    let _ = writeln!(
        out,
        "approvals    {}/{} ({}) by {}",
        a.approvals.len(),
        a.quorum,
        if a.eligible.is_empty() {
            "any officer".to_owned()
        } else {
            format!("from {}", a.eligible.join(","))
        },
        if a.approvals.is_empty() {
            "nobody yet".to_owned()
        } else {
            a.approvals.join(",")
        }
    );
    if let Some(r) = &a.rejected_by {
        let _ = writeln!(out, "rejected by  {r}");
    }
    let _ = writeln!(
        out,
        "expires      {}",
        relative_time(now, a.expires_unix_ms)
    );
    out
}

async fn find_pending(client: &Client, id: u64, verb: &str) -> anyhow::Result<ApprovalInfo> {
    let list = match call(client, Request::ListApprovals { all: true }).await? {
        Response::Approvals(l) => l,
        r => return Err(unexpected("list approvals", &r)),
    };
    let a = list
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(|| anyhow!("no approval request {id}"))?;
    if a.status != ApprovalStatus::Pending {
        bail!(
            "approval request {id} is {}; only a pending request can be {verb}",
            a.status
        );
    }
    Ok(a)
}

async fn approval_command(client: &Client, cmd: ApprovalCommand) -> anyhow::Result<()> {
    match cmd {
        ApprovalCommand::List { all } => {
            match call(client, Request::ListApprovals { all }).await? {
                Response::Approvals(l) => print!("{}", format_approvals(&l, now_ms())),
                r => return Err(unexpected("list approvals", &r)),
            }
        }
        ApprovalCommand::Approve { id, officer } => {
            let auth = officer_auth(&officer)?;
            let a = find_pending(client, id, "approved").await?;
            println!("{officer} approves:");
            print!("{}", describe_approval(&a, now_ms()));
            let req = Request::Approve {
                officer: auth,
                id,
                params_hash: a.params_hash,
            };
            match call(client, req).await? {
                Response::Approval(a) => println!(
                    "approved by {officer}: {}/{} approval(s), request {} is {}",
                    a.approvals.len(),
                    a.quorum,
                    a.id,
                    a.status
                ),
                r => return Err(unexpected("approve", &r)),
            }
        }
        ApprovalCommand::Reject { id, officer } => {
            let auth = officer_auth(&officer)?;
            let a = find_pending(client, id, "rejected").await?;
            println!("{officer} rejects:");
            print!("{}", describe_approval(&a, now_ms()));
            match call(client, Request::Reject { officer: auth, id }).await? {
                Response::Approval(a) => println!("request {} is {}", a.id, a.status),
                r => return Err(unexpected("reject", &r)),
            }
        }
    }
    Ok(())
}

async fn audit_export(client: &Client, out: &Path) -> anyhow::Result<()> {
    let mut records: Vec<AuditEntry> = Vec::new();
    let mut key = None;
    let mut from = 0u64;
    loop {
        let req = Request::AuditExport {
            from,
            max: AUDIT_PAGE,
        };
        let page = match call(client, req).await? {
            Response::Audit(p) => p,
            r => return Err(unexpected("audit export", &r)),
        };
        if page.key.is_some() {
            key = page.key;
        }
        let last = page.records.last().map(|r| r.index);
        records.extend(page.records);
        if !page.more {
            break;
        }
        from = match last.and_then(|l| l.checked_add(1)) {
            Some(next) if next > from => next,
            _ => bail!("the cluster said more audit records follow log index {from} but sent none"),
        };
    }
    let export = AuditExport::new(key.as_ref(), &records, now_ms());
    let json = export.to_json()?;
    pki::write_file(out, json.as_bytes(), 0o644)?;
    match (records.first(), records.last()) {
        (Some(f), Some(l)) => println!(
            "{} audit record(s), log index {}..={}, written to {}",
            records.len(),
            f.index,
            l.index,
            out.display()
        ),
        _ => println!("the audit chain is empty; written to {}", out.display()),
    }
    println!(
        "audit key: {}; verify offline with `cloudkey audit verify {} --ca CA_PEM`",
        if key.is_some() {
            "included"
        } else {
            "none yet"
        },
        out.display()
    );
    Ok(())
}

/// Verifies an export file against a CA file; the report for people.
fn audit_verify(file: &Path, ca: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let ca_pem =
        std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let export = AuditExport::from_json(&text).with_context(|| format!("{}", file.display()))?;
    let r = audit::verify(&export, &ca_pem)
        .map_err(|e| anyhow!("{}: audit chain does NOT verify: {e}", file.display()))?;
    Ok(format_report(&r))
}

fn format_report(r: &audit::VerifyReport) -> String {
    let mut out = String::new();
    match (r.first_index, r.last_index) {
        (Some(f), Some(l)) => {
            let _ = writeln!(
                out,
                "audit chain OK: {} record(s), log index {f}..={l}, {}",
                r.records,
                if r.starts_at_genesis {
                    "from the chain's first record".to_owned()
                } else {
                    format!("a page: records before log index {f} were not checked")
                }
            );
        }
        _ => {
            let _ = writeln!(out, "audit chain OK: empty");
        }
    }
    if r.audit_key_public_hex.is_empty() {
        let _ = writeln!(out, "audit key: none (no checkpoints)");
    } else {
        let set = r.audit_key_set_at_index.map_or_else(
            || "set before this page".to_owned(),
            |i| format!("set at log index {i}"),
        );
        let _ = writeln!(
            out,
            "audit key: {} endorsed by {} ({set})",
            r.audit_key_public_hex, r.endorser
        );
    }
    match r.last_checkpoint_index {
        Some(c) => {
            let _ = writeln!(
                out,
                "checkpoints: {} verified, the last covers log index {c}; {} record(s) after it rest on the hash links alone",
                r.checkpoints, r.uncovered_after_last_checkpoint
            );
        }
        None => {
            let _ = writeln!(
                out,
                "checkpoints: none; all {} record(s) rest on the hash links alone",
                r.uncovered_after_last_checkpoint
            );
        }
    }
    out
}

// ---- terminal master keys ----

/// The DER contents of the first PEM block in `text` with one of `labels`.
fn pem_block(text: &str, labels: &[&str]) -> anyhow::Result<(String, Zeroizing<Vec<u8>>)> {
    for pem in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        let pem = pem.map_err(|e| anyhow!("invalid PEM: {e}"))?;
        if labels.contains(&pem.label.as_str()) {
            return Ok((pem.label, Zeroizing::new(pem.contents)));
        }
    }
    bail!("no PEM block labelled {}", labels.join(" or "))
}

/// Which kind of key a terminal has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TerminalKeyKind {
    Rsa,
    Sm2,
}

/// Parses a terminal's public key: RSA (SubjectPublicKeyInfo or PKCS#1 PEM, at least 2048
/// bits) or SM2 (SubjectPublicKeyInfo PEM with the SM2 curve).
fn terminal_key_from_pem(text: &str, kind: TerminalKeyKind) -> anyhow::Result<TerminalKey> {
    match kind {
        TerminalKeyKind::Rsa => {
            let (label, der) = pem_block(text, &["PUBLIC KEY", "RSA PUBLIC KEY"])?;
            let rsa_der: Vec<u8> = if label == "RSA PUBLIC KEY" {
                der.to_vec()
            } else {
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der)
                    .map_err(|e| anyhow!("not a SubjectPublicKeyInfo: {e}"))?;
                if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
                    bail!("not an RSA public key");
                }
                spki.subject_public_key.data.to_vec()
            };
            let (_, key) = x509_parser::public_key::RSAPublicKey::from_der(&rsa_der)
                .map_err(|e| anyhow!("not an RSA public key: {e}"))?;
            let n = strip_zeros(key.modulus);
            let e = strip_zeros(key.exponent);
            let bits = n
                .first()
                .map_or(0, |b| (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize));
            if bits < 2048 {
                bail!("the RSA key has {bits} bits; a terminal key needs at least 2048");
            }
            if e.is_empty() || e.last().is_some_and(|b| b & 1 == 0) {
                bail!("the RSA public exponent is not odd");
            }
            Ok(TerminalKey::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            })
        }
        TerminalKeyKind::Sm2 => {
            let (_, der) = pem_block(text, &["PUBLIC KEY"])?;
            let key = sm2::PublicKey::from_public_key_der(&der)
                .map_err(|e| anyhow!("not an SM2 public key: {e}"))?;
            Ok(TerminalKey::Sm2 {
                point: key.to_sec1_point(false).as_bytes().to_vec(),
            })
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

fn terminal_key_name(k: &TerminalKey) -> String {
    match k {
        TerminalKey::Rsa { n, .. } => format!("rsa-{}", n.len() * 8),
        TerminalKey::Sm2 { .. } => "sm2".into(),
    }
}

fn format_terminals(terminals: &[TerminalInfo]) -> String {
    let mut out = format!(
        "{:<20} {:<9} {:<30} {:<24} {}\n",
        "TERMINAL", "KEY", "ADMINS", "IDENTITY", "LAST INJECTION"
    );
    for t in terminals {
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:<30} {:<24} {}",
            t.id,
            terminal_key_name(&t.key),
            t.admins.join(","),
            t.identity.as_deref().unwrap_or("-"),
            t.last_injection
                .map_or_else(|| "-".to_owned(), |a| format!("application {a}"))
        );
    }
    let _ = writeln!(out, "{} terminal(s)", terminals.len());
    out
}

/// Writes a new terminal key pair into `dir`: RSA-2048 (aws-lc-rs) or SM2.
fn terminal_keygen(dir: &Path, sm2: bool) -> anyhow::Result<()> {
    let (private_pem, public_pem) = if sm2 {
        sm2_key_pair_pem()?
    } else {
        rsa_key_pair_pem()?
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = dir.join(TERMINAL_KEY_FILE);
    let public = dir.join(TERMINAL_PUB_FILE);
    pki::write_file(&key, private_pem.as_bytes(), 0o600)?;
    pki::write_file(&public, public_pem.as_bytes(), 0o644)?;
    println!(
        "{} terminal key pair: {} (private, keep it on the terminal) and {}",
        if sm2 { "SM2" } else { "RSA-2048" },
        key.display(),
        public.display()
    );
    println!(
        "register it with `cloudkey tmk terminal add ID --{}-public-key {} --admin NAME --admin NAME`",
        if sm2 { "sm2" } else { "rsa" },
        public.display()
    );
    Ok(())
}

fn pem(label: &str, der: &[u8]) -> anyhow::Result<String> {
    pem_encoding::encode_string(label, LineEnding::LF, der)
        .map_err(|e| anyhow!("PEM encoding failed: {e}"))
}

fn rsa_key_pair_pem() -> anyhow::Result<(Zeroizing<String>, String)> {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow!("RSA key generation failed"))?;
    let private = key
        .as_der()
        .map_err(|_| anyhow!("RSA private key encoding failed"))?;
    let public = key
        .public_key()
        .as_der()
        .map_err(|_| anyhow!("RSA public key encoding failed"))?;
    Ok((
        Zeroizing::new(pem("PRIVATE KEY", private.as_ref())?),
        pem("PUBLIC KEY", public.as_ref())?,
    ))
}

fn sm2_key_pair_pem() -> anyhow::Result<(Zeroizing<String>, String)> {
    let key =
        sm2::SecretKey::try_generate().map_err(|e| anyhow!("SM2 key generation failed: {e}"))?;
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow!("SM2 private key encoding failed: {e}"))?;
    let public = key
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow!("SM2 public key encoding failed: {e}"))?;
    Ok((Zeroizing::new(private.to_string()), public))
}

/// Decrypts a delivered TMK with the terminal's private key (PKCS#8 DER): RSA-OAEP (SHA-256)
/// for `aes-256`, SM2 (`C1 || C3 || C2`) for `sm4`.
fn decrypt_tmk(
    algorithm: &str,
    pkcs8: &[u8],
    encrypted: &[u8],
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let key = match algorithm {
        "aes-256" => {
            let key = PrivateDecryptingKey::from_pkcs8(pkcs8)
                .map_err(|e| anyhow!("the private key is not an RSA PKCS#8 key: {e}"))?;
            let key = OaepPrivateDecryptingKey::new(key)
                .map_err(|_| anyhow!("the RSA key cannot do OAEP"))?;
            let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
            let n = key
                .decrypt(&OAEP_SHA256_MGF1SHA256, encrypted, &mut out, None)
                .map_err(|_| {
                    anyhow!("RSA-OAEP decryption failed: not this terminal's key, or a damaged key")
                })?
                .len();
            out.truncate(n);
            out
        }
        "sm4" => {
            let key = sm2::SecretKey::from_pkcs8_der(pkcs8)
                .map_err(|e| anyhow!("the private key is not an SM2 PKCS#8 key: {e}"))?;
            let key = sm2::pke::DecryptingKey::new_with_mode(
                key.to_nonzero_scalar(),
                sm2::pke::Mode::C1C3C2,
            );
            Zeroizing::new(key.decrypt(encrypted).map_err(|_| {
                anyhow!("SM2 decryption failed: not this terminal's key, or a damaged key")
            })?)
        }
        other => bail!("unknown TMK algorithm {other:?}"),
    };
    let want = if algorithm == "sm4" { 16 } else { 32 };
    if key.len() != want {
        bail!(
            "the decrypted {algorithm} key has {} bytes, not {want}",
            key.len()
        );
    }
    Ok(key)
}

/// Key check value: the first 3 bytes of the key's encryption of a zero block (AES-256-ECB or
/// SM4-ECB).
fn kcv(algorithm: &str, key: &[u8]) -> anyhow::Result<[u8; 3]> {
    let mut block = [0u8; 16];
    match algorithm {
        "aes-256" => {
            let key = UnboundCipherKey::new(&AES_256, key)
                .map_err(|_| anyhow!("an AES-256 key has 32 bytes"))?;
            EncryptingKey::ecb(key)
                .and_then(|k| k.encrypt(&mut block))
                .map_err(|_| anyhow!("AES encryption failed"))?;
        }
        "sm4" => sm4_encrypt_block(key, &mut block)?,
        other => bail!("unknown TMK algorithm {other:?}"),
    }
    Ok([block[0], block[1], block[2]])
}

fn sm4_encrypt_block(key: &[u8], block: &mut [u8; 16]) -> anyhow::Result<()> {
    let cipher = sm4::Sm4::new_from_slice(key).map_err(|_| anyhow!("an SM4 key has 16 bytes"))?;
    let mut b = sm4::cipher::Block::<sm4::Sm4>::default();
    b.copy_from_slice(block);
    cipher.encrypt_block(&mut b);
    block.copy_from_slice(&b);
    Ok(())
}

/// The payload, checked to be a TMK QR payload of terminal `id`.
fn check_payload(id: &str, payload: &str) -> anyhow::Result<()> {
    let p = QrPayload::parse(payload).ok_or_else(|| {
        anyhow!("{payload:?} is not a TMK QR payload (CKTMK1.<terminal>.<application>.<nonce>)")
    })?;
    if p.terminal != id {
        bail!("the payload is terminal {}'s, not {id}'s", p.terminal);
    }
    Ok(())
}

fn check_terminal_id(id: &str) -> anyhow::Result<()> {
    if !valid_terminal_id(id) {
        bail!("{id:?} is not a terminal number (1 to 64 of A-Z a-z 0-9 - _)");
    }
    Ok(())
}

/// The QR code as text: two modules per character cell (Unicode half blocks), light modules
/// drawn, for a dark terminal background.
fn qr_text(code: &QrCode) -> String {
    let mut text = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .build();
    text.push('\n');
    text
}

fn write_qr_png(code: &QrCode, path: &Path) -> anyhow::Result<()> {
    let image = code
        .render::<image::Luma<u8>>()
        .min_dimensions(256, 256)
        .build();
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| anyhow!("PNG encoding failed: {e}"))?;
    pki::write_file(path, png.get_ref(), 0o644)?;
    Ok(())
}

fn read_text(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .with_context(|| format!("reading {}", path.display()))
}

async fn tmk_command(client: &Client, cmd: TmkCommand) -> anyhow::Result<()> {
    match cmd {
        TmkCommand::Terminal(TerminalCommand::Add {
            id,
            rsa_public_key,
            sm2_public_key,
            admins,
            identity,
        }) => {
            check_terminal_id(&id)?;
            let (path, kind) = match (rsa_public_key, sm2_public_key) {
                (Some(p), None) => (p, TerminalKeyKind::Rsa),
                (None, Some(p)) => (p, TerminalKeyKind::Sm2),
                _ => bail!("give exactly one of --rsa-public-key and --sm2-public-key"),
            };
            let key = terminal_key_from_pem(&read_text(&path)?, kind)
                .with_context(|| format!("{}", path.display()))?;
            let name = terminal_key_name(&key);
            let req = Request::AddTerminal {
                id: id.clone(),
                key,
                admins: admins.clone(),
                identity: identity.clone(),
            };
            call(client, req).await?;
            println!(
                "terminal {id} registered: {name} key, administrators {}, {}",
                admins.join(","),
                identity.map_or_else(
                    || "any client identity".to_owned(),
                    |i| format!("connects as {i}")
                )
            );
        }
        TmkCommand::Terminal(TerminalCommand::List) => {
            match call(client, Request::ListTerminals).await? {
                Response::Terminals(t) => print!("{}", format_terminals(&t)),
                r => return Err(unexpected("list terminals", &r)),
            }
        }
        TmkCommand::Terminal(TerminalCommand::Keygen { out, sm2 }) => terminal_keygen(&out, sm2)?,
        TmkCommand::Request { id, png } => {
            check_terminal_id(&id)?;
            let qr = match call(
                client,
                Request::TmkRequest {
                    terminal: id.clone(),
                },
            )
            .await?
            {
                Response::TmkQr(q) => q,
                r => return Err(unexpected("tmk request", &r)),
            };
            let code = QrCode::new(qr.payload.as_bytes())
                .map_err(|e| anyhow!("the payload does not fit a QR code: {e}"))?;
            println!("application {} for terminal {id}", qr.application);
            println!("payload  {}", qr.payload);
            println!("expires  {}", relative_time(now_ms(), qr.expires_unix_ms));
            print!("{}", qr_text(&code));
            if let Some(path) = png {
                write_qr_png(&code, &path)?;
                println!("QR code written to {}", path.display());
            }
        }
        TmkCommand::Sms { id, officer } => {
            check_terminal_id(&id)?;
            let req = Request::TmkSmsCode {
                officer: officer_auth(&officer)?,
                terminal: id.clone(),
            };
            call(client, req).await?;
            println!("code sent to {officer} for terminal {id}; see the notifier");
        }
        TmkCommand::Apply {
            id,
            payload,
            sms_code,
            officer,
        } => {
            check_terminal_id(&id)?;
            check_payload(&id, &payload)?;
            let sms_code = Zeroizing::new(sms_code);
            let req = Request::TmkApply {
                officer: officer_auth(&officer)?,
                terminal: id.clone(),
                payload,
                sms_code: Secret::from(sms_code.as_str()),
            };
            match call(client, req).await? {
                Response::Approval(a) => {
                    println!(
                        "{officer} applied for a TMK for terminal {id}; approval request opened:"
                    );
                    print!("{}", describe_approval(&a, now_ms()));
                    println!(
                        "the second administrator approves it with `cloudkey approval approve {} --officer NAME`",
                        a.id
                    );
                }
                r => return Err(unexpected("tmk apply", &r)),
            }
        }
        TmkCommand::Fetch {
            id,
            payload,
            admin,
            private_key,
            out,
        } => {
            check_terminal_id(&id)?;
            check_payload(&id, &payload)?;
            let req = Request::TmkFetch {
                terminal: id.clone(),
                payload,
                admin,
            };
            let d = match call(client, req).await? {
                Response::Tmk(d) => d,
                r => return Err(unexpected("tmk fetch", &r)),
            };
            print!("{}", describe_delivery(&id, &d));
            if let Some(path) = out {
                pki::write_file(&path, &d.encrypted, 0o600)?;
                println!("encrypted key written to {}", path.display());
            }
            if let Some(path) = private_key {
                let (_, der) = pem_block(&read_text(&path)?, &["PRIVATE KEY"])
                    .with_context(|| format!("{}", path.display()))?;
                let key = decrypt_tmk(&d.algorithm, &der, &d.encrypted)?;
                let local = kcv(&d.algorithm, &key)?;
                if local != d.kcv {
                    bail!(
                        "KCV MISMATCH: the key decrypted with {} has KCV {}, the cluster says {}",
                        path.display(),
                        hex::encode(local),
                        hex::encode(d.kcv)
                    );
                }
                println!(
                    "KCV check: the key decrypted locally with {} has KCV {}: matches",
                    path.display(),
                    hex::encode(local)
                );
            }
        }
    }
    Ok(())
}

fn describe_delivery(id: &str, d: &TmkDelivery) -> String {
    format!(
        "terminal     {id}\napplication  {}\nalgorithm    {}\nencrypted    {}\nkcv          {}\n",
        d.application,
        d.algorithm,
        hex::encode(&d.encrypted),
        hex::encode(d.kcv)
    )
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

    #[test]
    fn governance_command_lines_parse() {
        let parse = |args: &[&str]| Cli::try_parse_from(args.iter().copied());
        let cli = parse(&[
            "cloudkey",
            "policy",
            "set",
            "--token",
            "dev",
            "--op",
            "generate",
            "--quorum",
            "2",
            "--officer",
            "alice",
            "--officer",
            "bob",
            "--key-type",
            "sm4",
        ])
        .unwrap();
        match cli.command {
            Command::Policy(PolicyCommand::Set {
                scope,
                op,
                quorum,
                officers,
                key_type,
                ttl_secs,
            }) => {
                assert_eq!(scope.token.as_deref(), Some("dev"));
                assert!(scope.key.is_none() && !scope.cluster);
                assert_eq!((op, quorum, ttl_secs), (GuardedOp::Generate, 2, 3600));
                assert_eq!(officers, ["alice", "bob"]);
                assert_eq!(key_type.map(KeyTypeArg::ckk), Some(vendor::CKK_SM4));
            }
            other => panic!("{other:?}"),
        }
        let id = "00112233445566778899aabbccddeeff";
        let cli = parse(&["cloudkey", "policy", "clear", "--key", id, "--op", "sign"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Policy(PolicyCommand::Clear { ref scope, op: Some(GuardedOp::Sign) })
                if scope.key.map(|k| k.to_string()).as_deref() == Some(id)
        ));
        // Exactly one scope.
        assert!(parse(&["cloudkey", "policy", "clear"]).is_err());
        assert!(parse(&["cloudkey", "policy", "clear", "--cluster", "--token", "dev"]).is_err());
        assert!(parse(&["cloudkey", "policy", "clear", "--key", "abc"]).is_err());
        assert!(parse(&[
            "cloudkey",
            "policy",
            "set",
            "--cluster",
            "--op",
            "fly",
            "--quorum",
            "1"
        ])
        .is_err());
        let cli = parse(&[
            "cloudkey",
            "officer",
            "add",
            "alice",
            "--identity",
            "operator/alice",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Officer(OfficerCommand::Add { ref identity, .. }) if identity == "operator/alice"
        ));
        assert!(parse(&["cloudkey", "officer", "add", "a", "--identity", "node/1"]).is_err());
        assert!(parse(&["cloudkey", "officer", "add", "a", "--identity", "alice"]).is_err());
        assert!(parse(&["cloudkey", "approval", "approve", "7", "--officer", "bob"]).is_ok());
        assert!(parse(&["cloudkey", "approval", "approve", "7"]).is_err());
        assert!(parse(&["cloudkey", "audit", "verify", "a.json", "--ca", "ca.pem"]).is_ok());
        assert!(parse(&["cloudkey", "audit", "export", "--out", "a.json"]).is_ok());
        let cli = parse(&[
            "cloudkey",
            "tmk",
            "terminal",
            "add",
            "ATM-1",
            "--sm2-public-key",
            "p.pem",
            "--admin",
            "alice",
            "--admin",
            "bob",
            "--identity",
            "client/atm1",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Tmk(TmkCommand::Terminal(TerminalCommand::Add {
                rsa_public_key: None,
                sm2_public_key: Some(_),
                ref admins,
                ..
            })) if admins.len() == 2
        ));
        let both = [
            "cloudkey",
            "tmk",
            "terminal",
            "add",
            "A",
            "--sm2-public-key",
            "p",
            "--rsa-public-key",
            "q",
            "--admin",
            "a",
        ];
        assert!(parse(&both).is_err(), "one key only");
        assert!(parse(&["cloudkey", "tmk", "terminal", "add", "A", "--admin", "a"]).is_err());
        assert!(parse(&[
            "cloudkey",
            "tmk",
            "terminal",
            "add",
            "A",
            "--rsa-public-key",
            "p",
            "--admin",
            "a",
            "--identity",
            "operator/x",
        ])
        .is_err());
        assert!(parse(&[
            "cloudkey",
            "tmk",
            "apply",
            "A",
            "--payload",
            "P",
            "--sms-code",
            "123456",
            "--officer",
            "alice",
        ])
        .is_ok());
        assert!(parse(&[
            "cloudkey",
            "tmk",
            "fetch",
            "A",
            "--payload",
            "P",
            "--admin",
            "alice",
            "--private-key",
            "k.pem",
            "--out",
            "tmk.bin",
        ])
        .is_ok());
        assert!(parse(&["cloudkey", "tmk", "terminal", "keygen", "--out", "d", "--sm2"]).is_ok());
        assert!(parse(&["cloudkey", "tmk", "request", "A", "--png", "qr.png"]).is_ok());
    }

    #[test]
    fn rules_are_checked_replaced_and_removed() {
        let rule = |op, quorum, officers: &[&str], kt| {
            make_rule(
                op,
                quorum,
                officers.iter().map(|s| (*s).to_owned()).collect(),
                kt,
                60,
            )
        };
        assert!(rule(GuardedOp::Sign, 0, &[], None).is_err(), "quorum 0");
        assert!(
            rule(GuardedOp::Sign, 3, &["a", "b"], None).is_err(),
            "3 of 2"
        );
        assert!(
            rule(GuardedOp::Sign, 1, &["a", "a"], None).is_err(),
            "twice"
        );
        assert!(rule(GuardedOp::Sign, 1, &[], Some(KeyTypeArg::Aes)).is_err());
        let r = rule(GuardedOp::Generate, 2, &["a", "b"], Some(KeyTypeArg::Aes)).unwrap();
        assert_eq!((r.key_type, r.ttl_ms), (Some(ck::CKK_AES), 60_000));
        assert!(make_rule(GuardedOp::Sign, 1, vec![], None, 0).is_err());

        let mut rules = vec![r.clone()];
        let mut any_generate = r.clone();
        any_generate.key_type = None;
        assert!(
            !upsert_rule(&mut rules, any_generate),
            "another key type: added"
        );
        let mut stricter = r;
        stricter.quorum = 1;
        assert!(
            upsert_rule(&mut rules, stricter),
            "same op and key type: replaced"
        );
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].quorum, 1);
        let sign = rule(GuardedOp::Sign, 1, &[], None).unwrap();
        upsert_rule(&mut rules, sign);
        assert_eq!(remove_rules(&mut rules, GuardedOp::Generate), 2);
        assert_eq!(rules.len(), 1);
        assert_eq!(remove_rules(&mut rules, GuardedOp::Wrap), 0);
        let text = format_policies(&[(PolicyScope::Token(TokenId(1)), rules)], &[]);
        assert!(text.contains("token 1") && text.contains("sign"), "{text}");
    }

    #[test]
    fn times_are_relative() {
        assert_eq!(relative_time(1_000, 1_000), "in 0s");
        assert_eq!(relative_time(0, 299_000), "in 4m 59s");
        assert_eq!(relative_time(7_200_000, 0), "2h 0m ago");
        assert_eq!(relative_time(0, 90_000_000), "in 1d 1h");
    }

    #[test]
    fn kcvs_match_known_answers() {
        // AES-256, zero key, zero block: dc95c078...
        assert_eq!(kcv("aes-256", &[0u8; 32]).unwrap(), [0xdc, 0x95, 0xc0]);
        assert!(kcv("aes-256", &[0u8; 16]).is_err());
        // SM4, GM/T 0002-2012 example 1.
        let key = hex::decode("0123456789abcdeffedcba9876543210").unwrap();
        let mut block = [0u8; 16];
        block.copy_from_slice(&key);
        sm4_encrypt_block(&key, &mut block).unwrap();
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
        let mut zero = [0u8; 16];
        sm4_encrypt_block(&key, &mut zero).unwrap();
        assert_eq!(kcv("sm4", &key).unwrap(), [zero[0], zero[1], zero[2]]);
        assert!(kcv("des", &key).is_err());
    }

    #[test]
    fn rsa_terminal_keys_round_trip() {
        use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};
        let (private, public) = rsa_key_pair_pem().unwrap();
        let TerminalKey::Rsa { n, e } =
            terminal_key_from_pem(&public, TerminalKeyKind::Rsa).unwrap()
        else {
            panic!("not RSA");
        };
        assert_eq!((n.len(), e.as_slice()), (256, &[1u8, 0, 1][..]));
        assert!(terminal_key_from_pem(&public, TerminalKeyKind::Sm2).is_err());
        // The node's side: RSA-OAEP (SHA-256) under the registered public key.
        let (_, spki) = pem_block(&public, &["PUBLIC KEY"]).unwrap();
        let enc =
            OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&spki).unwrap()).unwrap();
        let tmk = [7u8; 32];
        let mut ct = vec![0u8; enc.ciphertext_size()];
        let ct = enc
            .encrypt(&OAEP_SHA256_MGF1SHA256, &tmk, &mut ct, None)
            .unwrap()
            .to_vec();
        let (_, der) = pem_block(&private, &["PRIVATE KEY"]).unwrap();
        let key = decrypt_tmk("aes-256", &der, &ct).unwrap();
        assert_eq!(key.as_slice(), &tmk);
        assert_eq!(kcv("aes-256", &key).unwrap(), kcv("aes-256", &tmk).unwrap());
        assert!(
            decrypt_tmk("sm4", &der, &ct).is_err(),
            "an RSA key is no SM2 key"
        );
        let mut bad = ct;
        bad[0] ^= 1;
        assert!(decrypt_tmk("aes-256", &der, &bad).is_err());
    }

    #[test]
    fn sm2_terminal_keys_round_trip() {
        let (private, public) = sm2_key_pair_pem().unwrap();
        let TerminalKey::Sm2 { point } =
            terminal_key_from_pem(&public, TerminalKeyKind::Sm2).unwrap()
        else {
            panic!("not SM2");
        };
        assert_eq!((point.len(), point[0]), (65, 0x04));
        assert!(terminal_key_from_pem(&public, TerminalKeyKind::Rsa).is_err());
        // The node's side: SM2 encryption, C1 || C3 || C2.
        let tmk = [9u8; 16];
        let ct = sm2::pke::EncryptingKey::new_with_mode(
            sm2::PublicKey::from_sec1_bytes(&point).unwrap(),
            sm2::pke::Mode::C1C3C2,
        )
        .encrypt(&mut sm2::elliptic_curve::common::getrandom::SysRng, &tmk)
        .unwrap();
        let (_, der) = pem_block(&private, &["PRIVATE KEY"]).unwrap();
        let key = decrypt_tmk("sm4", &der, &ct).unwrap();
        assert_eq!(key.as_slice(), &tmk);
        assert!(decrypt_tmk("aes-256", &der, &ct).is_err());
        assert!(terminal_key_from_pem("no pem here", TerminalKeyKind::Sm2).is_err());
    }

    #[test]
    fn keygen_writes_both_files_and_qr_codes_render() {
        let dir = tempfile::tempdir().unwrap();
        terminal_keygen(dir.path(), true).unwrap();
        let public = std::fs::read_to_string(dir.path().join(TERMINAL_PUB_FILE)).unwrap();
        assert!(terminal_key_from_pem(&public, TerminalKeyKind::Sm2).is_ok());
        let private = std::fs::read_to_string(dir.path().join(TERMINAL_KEY_FILE)).unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));

        let payload = QrPayload {
            terminal: "ATM-1".into(),
            application: 3,
            nonce: [0xab; 16],
        }
        .encode();
        assert!(check_payload("ATM-1", &payload).is_ok());
        assert!(check_payload("ATM-2", &payload).is_err());
        assert!(check_payload("ATM-1", "CKTMK1.ATM-1").is_err());
        let code = QrCode::new(payload.as_bytes()).unwrap();
        let text = qr_text(&code);
        assert!(
            text.contains('\u{2580}') || text.contains('\u{2584}'),
            "{text}"
        );
        let png = dir.path().join("qr.png");
        write_qr_png(&code, &png).unwrap();
        assert!(std::fs::read(&png)
            .unwrap()
            .starts_with(b"\x89PNG\r\n\x1a\n"));
    }

    #[test]
    fn verify_reports_read_well() {
        let r = audit::VerifyReport {
            records: 10,
            first_index: Some(1),
            last_index: Some(19),
            starts_at_genesis: true,
            checkpoints: 2,
            last_checkpoint_index: Some(13),
            uncovered_after_last_checkpoint: 3,
            audit_key_public_hex: "04ab".into(),
            endorser: "node 2".into(),
            audit_key_set_at_index: Some(3),
        };
        let text = format_report(&r);
        assert!(text.contains("10 record(s), log index 1..=19"), "{text}");
        assert!(
            text.contains("endorsed by node 2 (set at log index 3)"),
            "{text}"
        );
        assert!(
            text.contains("the last covers log index 13; 3 record(s)"),
            "{text}"
        );
    }
}
