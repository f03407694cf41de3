//! `cloudkey-node --config FILE [--insecure-dev-keys]`: a cloudkey cluster node.
//!
//! `--insecure-dev-keys` lets a development node start with its soft chips' NVRAM key inside
//! its `data_dir` (one warning is logged); without it such a node exits 64 at once (the rule
//! is in the docs of `cloudkey_node::config`).
//!
//! Contract with whoever starts it:
//! * stdout: exactly one line, `LISTENING <ip:port>`, once the node accepts connections.
//! * stderr: logs (`RUST_LOG`, default `info`); on a fatal error, one last line
//!   `cloudkey-node: <why>`.
//! * exit status: 0 after SIGTERM or SIGINT and a shutdown; 64 for bad arguments or a bad
//!   configuration (nothing was bound or opened yet); 1 for any other failure.
//!
//! Start-up order: configuration (parsed, validated, TLS material and nvram key loaded and
//! checked, the key found outside `data_dir`) → data directory (mode 0700) → chips → endpoint bound → Raft (restored from the
//! data directory: a restarted node rejoins and catches up) → accept loop → `LISTENING` →
//! domain sync in the background → wait for a signal. Shutdown: stop accepting, drain the
//! requests in progress (bounded), write the signature counts not yet in the audit chain
//! (bounded), stop Raft, close the endpoint.
#![forbid(unsafe_code)]

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use cloudkey_node::chips::{self, ChipDomain, PeerDonor};
use cloudkey_node::config::{Config, DevKeys, Prepared};
use cloudkey_node::handler::NodeCtx;
use cloudkey_node::raft::{PeerContext, PeerNetwork, RaftNode, RaftTimings};
use cloudkey_node::server::{self, Server};
use cloudkey_node::state::State;
use cloudkey_node::NodeError;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Exit status for bad arguments or configuration (`EX_USAGE`).
const EXIT_CONFIG: u8 = 64;
/// Exit status for every other failure.
const EXIT_FAILURE: u8 = 1;
/// How long shutdown waits for Raft to stop.
const RAFT_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A cloudkey cluster node.
#[derive(Parser, Debug)]
#[command(name = "cloudkey-node", version, about)]
struct Args {
    /// The node's TOML configuration file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Accept a soft-chip NVRAM key inside data_dir, with a warning. Development only: a copy
    /// of such a data directory unseals the soft chips.
    #[arg(long)]
    insecure_dev_keys: bool,
}

fn fail(code: u8, msg: impl std::fmt::Display) -> ExitCode {
    // One line, whatever the message holds.
    let line = msg.to_string().replace('\n', "; ");
    eprintln!("cloudkey-node: {line}");
    ExitCode::from(code)
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's message spans several lines (the error, its details, a usage hint):
            // keep the error and its details, on one line.
            let text = e.to_string();
            let line = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
                .collect::<Vec<_>>()
                .join(" ");
            return fail(EXIT_CONFIG, line.trim_start_matches("error: "));
        }
    };
    init_tracing();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_CONFIG, config_error(e)),
    };
    let dev_keys = if args.insecure_dev_keys {
        DevKeys::AllowInsecure
    } else {
        DevKeys::Refuse
    };
    let prepared = match config.prepare(dev_keys) {
        Ok(p) => p,
        Err(e) => {
            return fail(
                EXIT_CONFIG,
                format!("{}: {}", args.config.display(), config_error(e)),
            )
        }
    };
    let mut builder = if config.runtime_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.runtime_threads);
        b
    };
    let runtime = match builder.enable_all().thread_name("cloudkey-node").build() {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(config, prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(EXIT_FAILURE, e),
    }
}

fn config_error(e: NodeError) -> String {
    match e {
        NodeError::Config(m) => m,
        other => other.to_string(),
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person watching; logs collected from a pipe stay plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// Creates the data directory readable by this user only.
fn open_data_dir(dir: &Path) -> Result<(), NodeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |e: std::io::Error| NodeError::io(format!("data_dir {}", dir.display()))(e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let meta = std::fs::metadata(dir).map_err(io)?;
    if !meta.is_dir() {
        return Err(NodeError::Storage(format!(
            "data_dir {} is not a directory",
            dir.display()
        )));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
        tracing::warn!(dir = %dir.display(), "data directory was accessible to others; now 0700");
    }
    Ok(())
}

async fn run(config: Config, prepared: Prepared) -> Result<(), NodeError> {
    let Prepared { tls, nvram_key } = prepared;
    open_data_dir(&config.data_dir)?;
    tracing::info!(node = config.id, chips = config.chips.len(), "starting");

    let pool = chips::build_pool(&config, nvram_key.as_ref()).await?;
    drop(nvram_key);
    let endpoint = server::bind(&config, &tls)?;
    let bound = endpoint
        .local_addr()
        .map_err(NodeError::io("the bound socket's address"))?;

    let state = Arc::new(State::default());
    let network = PeerNetwork::new(endpoint.clone(), &tls)?;
    let timings = RaftTimings {
        heartbeat_ms: millis(config.raft.heartbeat),
        election_min_ms: millis(config.raft.election_min),
        election_max_ms: millis(config.raft.election_max),
        snapshot_logs: config.raft.snapshot_logs,
        staleness_bound_ms: millis(config.raft.staleness_bound),
    };
    let raft =
        RaftNode::start(config.id, &config.data_dir, state.clone(), network, timings).await?;

    let domain = ChipDomain::new(pool.clone());
    let ctx = Arc::new(
        NodeCtx::new(
            &config,
            bound.to_string(),
            state.clone(),
            pool.clone(),
            raft.clone(),
            domain.clone(),
        )?
        .with_tls(Arc::new(tls.clone())),
    );
    let audit_ctx = ctx.clone();
    let peers = PeerContext {
        raft: raft.clone(),
        pool: pool.clone(),
        authorizer: ctx.clone(),
    };
    let server = Server::start(endpoint, ctx, peers);
    // Watch the signals before announcing the address: a SIGTERM sent right after `LISTENING`
    // must find the handler installed.
    let signals = Signals::new()?;

    // The one line on stdout that launchers wait for.
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "LISTENING {bound}")
            .and_then(|()| out.flush())
            .map_err(NodeError::io("writing to stdout"))?;
    }
    tracing::info!(node = config.id, addr = %bound, "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let sync = chips::spawn_sync(domain, state, PeerDonor::new(raft.clone()), stop_rx.clone());
    let audit = cloudkey_node::service::gov::spawn_audit(audit_ctx, stop_rx);

    signals.wait().await;
    tracing::info!("shutting down");
    let drained = server.shutdown().await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(server::DRAIN_TIMEOUT, sync).await;
    // The audit task writes the last signature counts through Raft: before Raft stops.
    let _ = tokio::time::timeout(server::DRAIN_TIMEOUT, audit).await;
    match tokio::time::timeout(RAFT_STOP_TIMEOUT, raft.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "raft did not stop cleanly"),
        Err(_) => tracing::warn!("raft did not stop in time"),
    }
    server.close().await;
    tracing::info!(drained, "stopped");
    Ok(())
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// SIGTERM and SIGINT, watched from creation on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self, NodeError> {
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(NodeError::io(format!("watching {name}")))
        };
        Ok(Self {
            term: watch(SignalKind::terminate(), "SIGTERM")?,
            int: watch(SignalKind::interrupt(), "SIGINT")?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM"),
            _ = self.int.recv() => tracing::info!("SIGINT"),
        }
    }
}
