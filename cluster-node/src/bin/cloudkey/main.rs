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
//!
//! The files: [`args`] (the command line), one file per group of commands ([`cluster`],
//! [`token`], [`gov`], [`audit`], [`tmk`]), [`output`] (what is printed), and [`terminal`] (what
//! an ATM terminal does with its keys, for the commands that play the terminal).
#![forbid(unsafe_code)]

mod args;
mod audit;
mod cluster;
mod gov;
mod output;
mod pins;
mod terminal;
mod tmk;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use cloudkey_protocol::client::{Client, ClientSettings};
use cloudkey_protocol::msg::{Request, Response};

use crate::args::{AuditCommand, Cli, Command, TerminalCommand, TmkCommand};

/// Environment variable naming the client settings file.
pub const CONFIG_ENV: &str = "CLOUDKEY_CONFIG";
/// Client settings used when neither `--config` nor `$CLOUDKEY_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = ".cloudkey-dev/operator.toml";

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
    pins::from_stdin(cli.pin_stdin);
    // Commands without the network need no runtime (nor client settings).
    let done = |()| ExitCode::SUCCESS;
    let command = match cli.command {
        Command::Pki(p) => return cluster::pki_command(p).map(done),
        Command::Audit(AuditCommand::Verify { file, ca }) => {
            return audit::verify(&file, &ca).map(done)
        }
        Command::Tmk(TmkCommand::Terminal(TerminalCommand::Keygen { out, sm2 })) => {
            return tmk::terminal_keygen(&out, sm2).map(done)
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

async fn run_async(config: Option<PathBuf>, cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Dev(c) => cluster::dev_command(c).await.map(|()| ExitCode::SUCCESS),
        Command::Pki(_)
        | Command::Audit(AuditCommand::Verify { .. })
        | Command::Tmk(TmkCommand::Terminal(TerminalCommand::Keygen { .. })) => {
            unreachable!("handled without a runtime")
        }
        other => {
            let (client, settings) = connect(config)?;
            cluster_command(&client, &settings, other).await
        }
    }
}

/// The client of the settings file (`--config`, else `$CLOUDKEY_CONFIG`, else the default).
fn connect(config: Option<PathBuf>) -> anyhow::Result<(Client, ClientSettings)> {
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
    Ok((client, settings))
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
        Command::Init { members } => cluster::init(settings, members).await?,
        Command::Node(c) => cluster::node_command(client, c).await?,
        Command::Chip(c) => cluster::chip_command(client, c).await?,
        Command::Status => return Ok(cluster::status_command(client, settings).await),
        Command::Token(c) => token::token_command(client, c).await?,
        Command::Key(c) => token::key_command(client, c).await?,
        Command::Officer(c) => gov::officer_command(client, c).await?,
        Command::Policy(c) => gov::policy_command(client, c).await?,
        Command::Approval(c) => gov::approval_command(client, c).await?,
        Command::Audit(AuditCommand::Export { out }) => audit::audit_export(client, &out).await?,
        Command::Tmk(c) => tmk::command(client, c).await?,
        Command::Pki(_) | Command::Dev(_) | Command::Audit(AuditCommand::Verify { .. }) => {
            unreachable!("handled before")
        }
    }
    Ok(ExitCode::SUCCESS)
}
