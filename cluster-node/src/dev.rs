//! `cloudkey dev`: a local development cluster of real `cloudkey-node` processes on loopback,
//! and the building blocks the integration-test harness shares with it (node directory layout,
//! node configuration text, finding and spawning the node binary, reading its `LISTENING`
//! line, signalling and liveness of processes).
//!
//! Layout of a dev directory (default `./.cloudkey-dev`):
//!
//! ```text
//! pki/                 ca.pem ca.key node-<i>.pem/.key operator-admin.* client-app.*
//! node-<i>/node.toml   the node's configuration
//! node-<i>/nvram.key   32 random bytes (0600) sealing the node's soft chips' nvram: a
//!                      development key, a plain file next to data/ (outside it, so the node
//!                      accepts it without --insecure-dev-keys), yet in the node's directory,
//!                      which therefore unseals the chips on its own; `dev up` says so
//! node-<i>/data/       the node's data_dir (Raft log and state, listen.addr, sealed nvram)
//! node-<i>.log         the node's stdout and stderr
//! pids                 `<id> <pid> <addr>` per running node
//! operator.toml        client settings with the operator certificate (for `cloudkey`)
//! alice.toml bob.toml  client settings of two officers' certificates (`operator/alice`, ...)
//! atm-0001.toml        client settings of a terminal's certificate (`client/atm-0001`)
//! sms.log              the development SMS notifier's file (one-time codes)
//! pkcs11.toml          client settings with the client certificate and the slots (for the
//!                      PKCS#11 module, via CLOUDKEY_PKCS11_CONFIG)
//! ```

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::io::Seek as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloudkey_protocol::client::{Client, ClientSettings};
use cloudkey_protocol::msg::{Member, NodeStatus, Request, Response, Secret};

use crate::error::{NodeError, Result};
use crate::pki::{self, Identity};

/// Default dev directory.
pub const DEFAULT_DIR: &str = ".cloudkey-dev";
/// Environment variable that names the `cloudkey-node` binary, overriding the search.
pub const NODE_BIN_ENV: &str = "CLOUDKEY_NODE_BIN";
/// Name of the node binary.
pub const NODE_BIN: &str = "cloudkey-node";
/// File name of the PKCS#11 module.
pub const PKCS11_LIB: &str = "libcloudkey_pkcs11.so";
/// The operator certificate `dev up` makes.
pub const DEV_OPERATOR: &str = "admin";
/// The client certificate `dev up` makes for the PKCS#11 module.
pub const DEV_CLIENT: &str = "app";
/// Officers whose certificates `dev up` makes (`operator/<name>`, settings in `<name>.toml`).
pub const DEV_OFFICERS: [&str; 2] = ["alice", "bob"];
/// The terminal certificate `dev up` makes (`client/atm-0001`, settings in `atm-0001.toml`).
pub const DEV_TERMINAL: &str = "atm-0001";
/// The development SMS notifier's file in a dev directory.
pub const DEV_SMS_FILE: &str = "sms.log";
/// The token `dev up` creates.
pub const DEV_TOKEN: &str = "dev";
/// Its user PIN.
pub const DEV_USER_PIN: &str = "1234";
/// Its SO PIN.
pub const DEV_SO_PIN: &str = "12345678";
/// How the line of `dev up`'s output that names the development keys begins.
pub const DEV_KEYS_NOTICE: &str = "development keys:";
/// Bound on a node's start (until it prints `LISTENING`).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the cluster becoming ready after `Init`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a node's exit after SIGTERM, before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Files of one node under a cluster directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFiles {
    /// Raft node id.
    pub id: u64,
    /// `root/node-<id>`.
    pub dir: PathBuf,
    /// `node-<id>/node.toml`.
    pub config: PathBuf,
    /// `node-<id>/data`, the node's `data_dir`.
    pub data_dir: PathBuf,
    /// `node-<id>/nvram.key`.
    pub nvram_key: PathBuf,
    /// `root/node-<id>.log`.
    pub log: PathBuf,
}

impl NodeFiles {
    /// The files of node `id` under `root`.
    #[must_use]
    pub fn new(root: &Path, id: u64) -> Self {
        let dir = root.join(format!("node-{id}"));
        Self {
            id,
            config: dir.join("node.toml"),
            data_dir: dir.join("data"),
            nvram_key: dir.join("nvram.key"),
            log: root.join(format!("node-{id}.log")),
            dir,
        }
    }
}

/// Raft timings written into a node configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftTimings {
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Election timeout lower bound, ms.
    pub election_min_ms: u64,
    /// Election timeout upper bound, ms.
    pub election_max_ms: u64,
}

/// What a node configuration written by [`write_node_files`] contains beyond the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOptions {
    /// `listen` (port 0: picked on first start, kept afterwards).
    pub listen: String,
    /// Soft chips.
    pub chips: u32,
    /// Key slots per chip.
    pub slots: u32,
    /// Raft timings (node defaults when `None`).
    pub raft: Option<RaftTimings>,
    /// `security.max_login_failures` (node default when `None`).
    pub max_login_failures: Option<u32>,
    /// `security.session_ttl_s` (node default when `None`).
    pub session_ttl_s: Option<u64>,
    /// Cheap argon2 parameters (256 KiB, 1 pass): for throw-away clusters whose PINs are
    /// public anyway; keeps PIN checks fast on small machines.
    pub cheap_pin_hash: bool,
    /// `[notifier] sms_file`: the development SMS notifier's file (none when `None`).
    pub sms_file: Option<PathBuf>,
    /// `[audit] interval_ms` (node default when `None`).
    pub audit_interval_ms: Option<u64>,
}

impl Default for NodeOptions {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            chips: 2,
            slots: 64,
            raft: None,
            max_login_failures: None,
            session_ttl_s: None,
            cheap_pin_hash: false,
            sms_file: None,
            audit_interval_ms: None,
        }
    }
}

/// TOML strings: paths and addresses quoted with escapes.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn toml_path(p: &Path) -> String {
    toml_str(&p.to_string_lossy())
}

/// The configuration text of node `files.id` with the PKI in `pki_dir`.
#[must_use]
pub fn node_config_toml(files: &NodeFiles, pki_dir: &Path, opts: &NodeOptions) -> String {
    let cert = pki::CertPaths::of(pki_dir, &Identity::Node(files.id));
    let mut t = String::new();
    let _ = writeln!(t, "# written by cloudkey dev / the test harness");
    let _ = writeln!(t, "id = {}", files.id);
    let _ = writeln!(t, "listen = {}", toml_str(&opts.listen));
    let _ = writeln!(t, "data_dir = {}", toml_path(&files.data_dir));
    let _ = writeln!(t, "\n[tls]");
    let _ = writeln!(t, "ca = {}", toml_path(&pki_dir.join(pki::CA_CERT)));
    let _ = writeln!(t, "cert = {}", toml_path(&cert.cert));
    let _ = writeln!(t, "key = {}", toml_path(&cert.key));
    let _ = writeln!(t, "\n[[chips]]\nkind = \"soft\"");
    let _ = writeln!(t, "count = {}\nslots = {}", opts.chips, opts.slots);
    let _ = writeln!(t, "nvram_key_file = {}", toml_path(&files.nvram_key));
    if let Some(r) = opts.raft {
        let _ = writeln!(
            t,
            "\n[raft]\nheartbeat_ms = {}\nelection_min_ms = {}\nelection_max_ms = {}",
            r.heartbeat_ms, r.election_min_ms, r.election_max_ms
        );
    }
    let mut security = String::new();
    if let Some(n) = opts.max_login_failures {
        let _ = writeln!(security, "max_login_failures = {n}");
    }
    if let Some(s) = opts.session_ttl_s {
        let _ = writeln!(security, "session_ttl_s = {s}");
    }
    if opts.cheap_pin_hash {
        let _ = writeln!(security, "argon2_memory_kib = 256\nargon2_iterations = 1");
    }
    if !security.is_empty() {
        let _ = write!(t, "\n[security]\n{security}");
    }
    if let Some(ms) = opts.audit_interval_ms {
        let _ = writeln!(t, "\n[audit]\ninterval_ms = {ms}");
    }
    if let Some(f) = &opts.sms_file {
        let _ = writeln!(t, "\n[notifier]\nsms_file = {}", toml_path(f));
    }
    t
}

/// Creates the node's directories, its nvram key (32 random bytes, mode 0600, kept if present)
/// and its configuration (replaced).
///
/// # Errors
/// File system failures, with the path.
pub fn write_node_files(files: &NodeFiles, pki_dir: &Path, opts: &NodeOptions) -> Result<()> {
    create_private_dir(&files.dir)?;
    create_private_dir(&files.data_dir)?;
    if !files.nvram_key.exists() {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        aws_lc_rs::rand::fill(key.as_mut()).map_err(NodeError::Random)?;
        pki::write_file(&files.nvram_key, key.as_ref(), 0o600)?;
    }
    pki::write_file(
        &files.config,
        node_config_toml(files, pki_dir, opts).as_bytes(),
        0o644,
    )?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fs_err("creating", dir, e))
}

/// Client settings TOML (the protocol's `ClientSettings` fields).
#[must_use]
pub fn client_settings_toml(endpoints: &[String], pki_dir: &Path, who: &Identity) -> String {
    let paths = pki::CertPaths::of(pki_dir, who);
    let eps: Vec<String> = endpoints.iter().map(|e| toml_str(e)).collect();
    format!(
        "endpoints = [{}]\nca = {}\ncert = {}\nkey = {}\ndeadline_ms = 10000\nconnect_timeout_ms = 1000\n",
        eps.join(", "),
        toml_path(&pki_dir.join(pki::CA_CERT)),
        toml_path(&paths.cert),
        toml_path(&paths.key),
    )
}

/// The `cloudkey-node` binary: `$CLOUDKEY_NODE_BIN`, else next to the running executable (or
/// one directory up, for test executables in `target/<profile>/deps`), else `cloudkey-node` on
/// `PATH`.
///
/// # Errors
/// When none exists.
pub fn find_node_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(NODE_BIN_ENV) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(NodeError::Config(format!(
            "{NODE_BIN_ENV}={} is not a file",
            p.display()
        )));
    }
    if let Some(p) = sibling_of_current_exe(NODE_BIN) {
        return Ok(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(NODE_BIN);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(NodeError::Config(format!(
        "cannot find {NODE_BIN}: not next to {} and not on PATH (build it with `cargo build -p \
         cloudkey-node --bins`, or set {NODE_BIN_ENV})",
        std::env::current_exe().map_or_else(|_| "this program".into(), |p| p.display().to_string())
    )))
}

/// `name` in the directory of the running executable or its parent (`target/debug/deps/..`).
#[must_use]
pub fn sibling_of_current_exe(name: &str) -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [dir.join(name), dir.parent()?.join(name)]
        .into_iter()
        .find(|p| p.is_file())
}

/// Starts a node detached from the terminal (its own process group, so a Ctrl-C aimed at the
/// caller does not reach it), stdin closed, stdout and stderr appended to `files.log`. Returns
/// the child and the log's length before the start, where [`wait_listening`] looks from.
///
/// # Errors
/// When the log cannot be opened or the process cannot be started.
pub fn spawn_node(bin: &Path, files: &NodeFiles) -> Result<(Child, u64)> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(&files.log)
        .map_err(|e| fs_err("opening", &files.log, e))?;
    let offset = log.metadata().map(|m| m.len()).unwrap_or(0);
    let err = log
        .try_clone()
        .map_err(|e| fs_err("duplicating", &files.log, e))?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(&files.config)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(NodeError::io(format!(
            "starting {} for node {}",
            bin.display(),
            files.id
        )))?;
    Ok((child, offset))
}

/// Waits until the node's log shows `LISTENING <addr>` after `offset`, and returns the address.
/// Fails early, with the log's tail, if the process exits first.
///
/// # Errors
/// On exit of the process, on timeout, or on an unreadable log.
pub async fn wait_listening(
    child: &mut Child,
    log: &Path,
    offset: u64,
    timeout: Duration,
) -> Result<SocketAddr> {
    let deadline = Instant::now() + timeout;
    let pid = child.id();
    loop {
        let text = read_from(log, offset)?;
        if let Some(addr) = text.lines().find_map(|l| l.strip_prefix("LISTENING ")) {
            return addr.trim().parse().map_err(|_| {
                NodeError::Peer(format!("{}: bad LISTENING line {addr:?}", log.display()))
            });
        }
        let exited = child
            .try_wait()
            .map_err(NodeError::io(format!("waiting for node process {pid}")))?;
        if let Some(status) = exited {
            return Err(NodeError::Peer(format!(
                "node process {pid} exited ({status}) before listening; {} says:\n{}",
                log.display(),
                tail(&text, 20)
            )));
        }
        if Instant::now() >= deadline {
            return Err(NodeError::Timeout(format!(
                "node process {pid} did not print LISTENING within {timeout:?}; {} says:\n{}",
                log.display(),
                tail(&text, 20)
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn read_from(path: &Path, offset: u64) -> Result<String> {
    let mut buf = Vec::new();
    fs::File::open(path)
        .and_then(|mut f| {
            f.seek(std::io::SeekFrom::Start(offset))?;
            f.read_to_end(&mut buf)
        })
        .map_err(|e| fs_err("reading", path, e))?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// A file-system failure: what was done, to which path, and why it failed.
fn fs_err(what: &str, path: &Path, e: std::io::Error) -> NodeError {
    NodeError::io(format!("{what} {}", path.display()))(e)
}

/// The last `n` lines of `text`.
#[must_use]
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Sends `signal` (`TERM`, `KILL`, ...) to `pid` with the shell's `kill` builtin (std has no
/// kill(2), and the crate has no unsafe code). Returns whether the signal was delivered.
#[must_use]
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("sh")
        .args([
            "-c",
            "kill -s \"$1\" \"$2\" 2>/dev/null",
            "sh",
            signal,
            &pid.to_string(),
        ])
        .stdin(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether `pid` is a live process (not a zombie) whose command line mentions `marker` (so a
/// reused pid is not mistaken for our node). Without `/proc`, falls back to `kill -0`.
#[must_use]
pub fn pid_alive(pid: u32, marker: &Path) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !Path::new("/proc/self").exists() {
        return send_signal(pid, "0");
    }
    let Ok(stat) = fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    // `pid (comm) S ...`: the state follows the last parenthesis (comm may contain any).
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let marker = marker.to_string_lossy();
    String::from_utf8_lossy(&cmdline)
        .split('\0')
        .any(|arg| arg == marker)
}

// ---- dev up / dev down ---------------------------------------------------------------------

/// Options of [`up`].
#[derive(Clone, Debug)]
pub struct DevUpOptions {
    /// Dev directory.
    pub dir: PathBuf,
    /// Nodes (for a new cluster).
    pub nodes: u64,
    /// Soft chips per node (for a new cluster).
    pub chips_per_node: u32,
}

/// Options of [`down`].
#[derive(Clone, Debug)]
pub struct DevDownOptions {
    /// Dev directory.
    pub dir: PathBuf,
    /// Delete everything `up` made.
    pub purge: bool,
}

/// One running node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunningNode {
    /// Raft node id.
    pub id: u64,
    /// Process id.
    pub pid: u32,
    /// Address.
    pub addr: String,
}

/// What [`up`] found or did.
#[derive(Clone, Debug)]
pub struct DevCluster {
    /// Absolute dev directory.
    pub dir: PathBuf,
    /// The nodes.
    pub nodes: Vec<RunningNode>,
    /// It was already running; nothing was started.
    pub already_up: bool,
    /// Notes for the operator (restarted nodes, ignored options).
    pub notes: Vec<String>,
}

impl DevCluster {
    /// Path of the operator client settings.
    #[must_use]
    pub fn operator_config(&self) -> PathBuf {
        self.dir.join("operator.toml")
    }

    /// Path of the PKCS#11 module settings.
    #[must_use]
    pub fn pkcs11_config(&self) -> PathBuf {
        self.dir.join("pkcs11.toml")
    }

    /// The line of [`DevCluster::summary`] that says the nodes use development keys.
    #[must_use]
    pub fn dev_keys_line(&self) -> String {
        format!(
            "{DEV_KEYS_NOTICE} each node's NVRAM key is a plain file next to its data ({}), so \
             a node's directory alone unseals its soft chips; production nodes take it from \
             outside the node's directory (see docs/security.md)",
            self.dir.join("node-<i>").join("nvram.key").display()
        )
    }

    /// What `cloudkey dev up` prints.
    #[must_use]
    pub fn summary(&self) -> String {
        let mut s = String::new();
        if self.already_up {
            let _ = writeln!(s, "the dev cluster in {} is already up", self.dir.display());
        } else {
            let _ = writeln!(s, "dev cluster up in {}", self.dir.display());
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        for n in &self.nodes {
            let _ = writeln!(
                s,
                "  node {}  {}  pid {}  log {}",
                n.id,
                n.addr,
                n.pid,
                NodeFiles::new(&self.dir, n.id).log.display()
            );
        }
        let _ = writeln!(s, "{}", self.dev_keys_line());
        let _ = writeln!(
            s,
            "token {DEV_TOKEN:?}: user PIN {DEV_USER_PIN}, SO PIN {DEV_SO_PIN}\n"
        );
        let _ = writeln!(
            s,
            "export CLOUDKEY_PKCS11_CONFIG={}",
            self.pkcs11_config().display()
        );
        let module = sibling_of_current_exe(PKCS11_LIB);
        let module_path = module.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent().map(|d| d.join(PKCS11_LIB)))
                .unwrap_or_else(|| PathBuf::from(PKCS11_LIB))
        });
        let _ = writeln!(
            s,
            "pkcs11-tool --module {} --list-slots",
            module_path.display()
        );
        if module.is_none() {
            let _ = writeln!(
                s,
                "  (the module {PKCS11_LIB} is not built yet: it arrives with the PKCS#11 issue)"
            );
        }
        let _ = writeln!(
            s,
            "cloudkey --config {} status",
            self.operator_config().display()
        );
        s
    }
}

fn pids_path(dir: &Path) -> PathBuf {
    dir.join("pids")
}

fn read_pids(dir: &Path) -> Result<Vec<RunningNode>> {
    let path = pids_path(dir);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fs_err("reading", &path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let bad = || NodeError::Config(format!("{}: bad line {l:?}", path.display()));
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.as_slice() {
                [id, pid, addr] => Ok(RunningNode {
                    id: id.parse().map_err(|_| bad())?,
                    pid: pid.parse().map_err(|_| bad())?,
                    addr: (*addr).to_owned(),
                }),
                _ => Err(bad()),
            }
        })
        .collect()
}

fn write_pids(dir: &Path, nodes: &[RunningNode]) -> Result<()> {
    let text: String = nodes
        .iter()
        .map(|n| format!("{} {} {}\n", n.id, n.pid, n.addr))
        .collect();
    pki::write_file(&pids_path(dir), text.as_bytes(), 0o644)?;
    Ok(())
}

/// Node ids configured under `dir` (`node-<i>/node.toml`), sorted.
fn configured_nodes(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let id = name.to_str()?.strip_prefix("node-")?.parse::<u64>().ok()?;
            NodeFiles::new(dir, id).config.is_file().then_some(id)
        })
        .collect();
    ids.sort_unstable();
    ids
}

/// `cloudkey dev up`: makes what is missing (PKI, node configs), starts the nodes that are not
/// running, initialises the cluster if needed, creates the `dev` token if missing, and writes
/// the client settings. Safe to run again: a running cluster is reported, a stopped one is
/// restarted with its data.
///
/// # Errors
/// Any step's failure, with context (a node that fails to start names its log).
pub async fn up(opts: &DevUpOptions) -> Result<DevCluster> {
    if opts.nodes == 0 || opts.chips_per_node == 0 {
        return Err(NodeError::Config(
            "--nodes and --chips-per-node must be at least 1".into(),
        ));
    }
    create_private_dir(&opts.dir)?;
    let dir = fs::canonicalize(&opts.dir).map_err(|e| fs_err("resolving", &opts.dir, e))?;
    let pki_dir = dir.join("pki");
    let mut notes = Vec::new();

    let recorded = read_pids(&dir)?;
    let configured = configured_nodes(&dir);
    let alive = |n: &RunningNode| pid_alive(n.pid, &NodeFiles::new(&dir, n.id).config);
    // pkcs11.toml is written last: without it a previous `up` stopped half-way, so go on.
    if !recorded.is_empty()
        && recorded.len() == configured.len()
        && recorded.iter().all(alive)
        && dir.join("pkcs11.toml").exists()
    {
        return Ok(DevCluster {
            dir,
            nodes: recorded,
            already_up: true,
            notes,
        });
    }

    let ids: Vec<u64> = if pki_dir.join(pki::CA_CERT).exists() && !configured.is_empty() {
        if configured.len() as u64 != opts.nodes {
            notes.push(format!(
                "the cluster in this directory has {} node(s); --nodes {} is ignored \
                 (`cloudkey dev down --purge` starts over)",
                configured.len(),
                opts.nodes
            ));
        }
        configured
    } else {
        pki::init_pki_with(
            &pki_dir,
            &pki::InitOptions {
                nodes: opts.nodes,
                operators: std::iter::once(DEV_OPERATOR)
                    .chain(DEV_OFFICERS)
                    .map(String::from)
                    .collect(),
                clients: vec![DEV_CLIENT.into(), DEV_TERMINAL.into()],
                force: true,
            },
        )?;
        let node_opts = NodeOptions {
            chips: opts.chips_per_node,
            cheap_pin_hash: true,
            sms_file: Some(dir.join(DEV_SMS_FILE)),
            ..NodeOptions::default()
        };
        for id in 1..=opts.nodes {
            write_node_files(&NodeFiles::new(&dir, id), &pki_dir, &node_opts)?;
        }
        (1..=opts.nodes).collect()
    };

    // Start the nodes that are not running, all at once, then collect their addresses.
    let bin = find_node_binary()?;
    let mut nodes = Vec::new();
    let mut starting = Vec::new();
    for &id in &ids {
        let files = NodeFiles::new(&dir, id);
        match recorded.iter().find(|n| n.id == id).filter(|n| alive(n)) {
            Some(n) => nodes.push(n.clone()),
            None => {
                let (child, offset) = spawn_node(&bin, &files)?;
                starting.push((files, child, offset));
            }
        }
    }
    if !nodes.is_empty() && !starting.is_empty() {
        let ids: Vec<String> = starting.iter().map(|(f, ..)| f.id.to_string()).collect();
        notes.push(format!("restarted node(s) {}", ids.join(", ")));
    }
    let mut failure = None;
    for (files, mut child, offset) in starting {
        match wait_listening(&mut child, &files.log, offset, START_TIMEOUT).await {
            Ok(addr) => nodes.push(RunningNode {
                id: files.id,
                pid: child.id(),
                addr: addr.to_string(),
            }),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                failure.get_or_insert(e);
            }
        }
    }
    nodes.sort_by_key(|n| n.id);
    write_pids(&dir, &nodes)?;
    if let Some(e) = failure {
        let why = match e {
            NodeError::Peer(m) | NodeError::Timeout(m) => m,
            other => other.to_string(),
        };
        return Err(NodeError::Peer(format!(
            "a node did not start: {why}\n(the other nodes keep running; `cloudkey dev down` \
             stops them)"
        )));
    }

    let endpoints: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let operator = dir.join("operator.toml");
    pki::write_file(
        &operator,
        client_settings_toml(
            &endpoints,
            &pki_dir,
            &Identity::Operator(DEV_OPERATOR.into()),
        )
        .as_bytes(),
        0o644,
    )?;
    let settings = ClientSettings::from_file(&operator).map_err(|source| NodeError::Client {
        what: operator.display().to_string(),
        source: Box::new(source),
    })?;
    let client = Client::new(&settings).map_err(|source| NodeError::Client {
        what: "the operator client".into(),
        source: Box::new(source),
    })?;

    let statuses = all_status(&client, nodes.len()).await;
    if !statuses.iter().flatten().any(|s| s.initialized) {
        let members = nodes
            .iter()
            .map(|n| Member {
                id: n.id,
                addr: n.addr.clone(),
            })
            .collect();
        client
            .call_node(0, Request::Init { members })
            .await
            .map_err(|source| NodeError::Client {
                what: format!("init via node {}", nodes[0].id),
                source: Box::new(source),
            })?;
    }
    wait_ready(&client, nodes.len(), READY_TIMEOUT).await?;

    let tokens = match client.call(Request::ListTokens).await {
        Ok(Response::Tokens(t)) => t,
        Ok(r) => {
            return Err(NodeError::Peer(format!(
                "list tokens: unexpected response {r:?}"
            )))
        }
        Err(source) => {
            return Err(NodeError::Client {
                what: "list tokens".into(),
                source: Box::new(source),
            })
        }
    };
    if !tokens.iter().any(|t| t.label == DEV_TOKEN) {
        client
            .call(Request::CreateToken {
                label: DEV_TOKEN.into(),
                so_pin: Secret::from(DEV_SO_PIN),
                user_pin: Some(Secret::from(DEV_USER_PIN)),
            })
            .await
            .map_err(|source| NodeError::Client {
                what: format!("creating token {DEV_TOKEN:?}"),
                source: Box::new(source),
            })?;
    }

    // Settings for the officers' and the terminal's certificates (older dev directories made
    // before these existed have no such certificates: skip them there).
    let others = DEV_OFFICERS
        .iter()
        .map(|o| Identity::Operator((*o).into()))
        .chain(std::iter::once(Identity::Client(DEV_TERMINAL.into())));
    for who in others {
        let name = match &who {
            Identity::Operator(n) | Identity::Client(n) => n.clone(),
            Identity::Node(_) => continue,
        };
        if pki::CertPaths::of(&pki_dir, &who).cert.exists() {
            pki::write_file(
                &dir.join(format!("{name}.toml")),
                client_settings_toml(&endpoints, &pki_dir, &who).as_bytes(),
                0o644,
            )?;
        }
    }

    let mut pkcs11 =
        client_settings_toml(&endpoints, &pki_dir, &Identity::Client(DEV_CLIENT.into()));
    let _ = write!(pkcs11, "\n[[slots]]\ntoken = {}\n", toml_str(DEV_TOKEN));
    pki::write_file(&dir.join("pkcs11.toml"), pkcs11.as_bytes(), 0o644)?;

    Ok(DevCluster {
        dir,
        nodes,
        already_up: false,
        notes,
    })
}

/// Status of each of the first `n` endpoints (`None` where unreachable).
pub async fn all_status(client: &Client, n: usize) -> Vec<Option<NodeStatus>> {
    let asks = (0..n).map(|i| async move {
        match client.call_node(i, Request::Status).await {
            Ok(Response::Status(s)) => Some(s),
            _ => None,
        }
    });
    futures::future::join_all(asks).await
}

/// Whether a set of status answers shows a ready cluster: every node answered, is initialised,
/// agrees on one leader, and every chip is healthy and holds the domain key.
#[must_use]
pub fn cluster_ready(statuses: &[Option<NodeStatus>]) -> bool {
    let Some(first) = statuses.first().and_then(Option::as_ref) else {
        return false;
    };
    first.leader.is_some()
        && statuses.iter().all(|s| {
            s.as_ref().is_some_and(|s| {
                s.initialized
                    && s.leader == first.leader
                    && !s.chips.is_empty()
                    && s.chips.iter().all(|c| c.has_domain && c.healthy)
            })
        })
}

/// Polls the first `n` endpoints' status until [`cluster_ready`], or fails after `timeout`
/// with what the nodes last said.
///
/// # Errors
/// On timeout.
pub async fn wait_ready(client: &Client, n: usize, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let statuses = all_status(client, n).await;
        if cluster_ready(&statuses) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(NodeError::Timeout(format!(
                "the cluster was not ready within {timeout:?}: {}",
                describe(&statuses)
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe(statuses: &[Option<NodeStatus>]) -> String {
    statuses
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            None => format!("endpoint {i}: unreachable"),
            Some(s) => format!(
                "node {}: initialised {}, leader {:?}, chips with domain {}/{}",
                s.id,
                s.initialized,
                s.leader,
                s.chips.iter().filter(|c| c.has_domain).count(),
                s.chips.len()
            ),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// `cloudkey dev down`: SIGTERM to every recorded node, SIGKILL to those still running after
/// [`STOP_TIMEOUT`], then removes the pid file; with `purge`, also everything `up` made.
/// Returns what it did, for printing.
///
/// # Errors
/// File system failures.
pub async fn down(opts: &DevDownOptions) -> Result<String> {
    let mut report = String::new();
    if !opts.dir.exists() {
        let _ = writeln!(
            report,
            "nothing to do: {} does not exist",
            opts.dir.display()
        );
        return Ok(report);
    }
    let dir = fs::canonicalize(&opts.dir).map_err(|e| fs_err("resolving", &opts.dir, e))?;
    let nodes = read_pids(&dir)?;
    let marker = |n: &RunningNode| NodeFiles::new(&dir, n.id).config;
    let running: Vec<&RunningNode> = nodes
        .iter()
        .filter(|n| pid_alive(n.pid, &marker(n)))
        .collect();
    if running.is_empty() {
        let _ = writeln!(report, "no dev cluster is running in {}", dir.display());
    }
    for n in &running {
        let _ = send_signal(n.pid, "TERM");
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mut left: Vec<&RunningNode> = running.clone();
    while !left.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        left.retain(|n| pid_alive(n.pid, &marker(n)));
    }
    for n in &running {
        if left.iter().any(|l| l.id == n.id) {
            let _ = send_signal(n.pid, "KILL");
            let _ = writeln!(
                report,
                "node {} (pid {}) ignored SIGTERM for {STOP_TIMEOUT:?}: killed",
                n.id, n.pid
            );
        } else {
            let _ = writeln!(report, "node {} (pid {}) stopped", n.id, n.pid);
        }
    }
    match fs::remove_file(pids_path(&dir)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fs_err("removing", &pids_path(&dir), e)),
    }
    if opts.purge {
        purge(&dir)?;
        let _ = writeln!(
            report,
            "removed the dev cluster's files in {}",
            dir.display()
        );
    } else {
        let _ = writeln!(
            report,
            "data kept in {} (`cloudkey dev up` restarts it, `--purge` deletes it)",
            dir.display()
        );
    }
    Ok(report)
}

/// Removes what `up` makes, and the directory if nothing else is left in it.
fn purge(dir: &Path) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| fs_err("reading", dir, e))? {
        let entry = entry.map_err(|e| fs_err("reading", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        let node_dir = name
            .strip_prefix("node-")
            .is_some_and(|id| id.parse::<u64>().is_ok());
        let node_log = name
            .strip_prefix("node-")
            .and_then(|r| r.strip_suffix(".log"))
            .is_some_and(|id| id.parse::<u64>().is_ok());
        if name == "pki" || node_dir {
            fs::remove_dir_all(&path).map_err(|e| fs_err("removing", &path, e))?;
        } else if node_log
            || matches!(
                name,
                "operator.toml"
                    | "pkcs11.toml"
                    | "pids"
                    | "alice.toml"
                    | "bob.toml"
                    | "atm-0001.toml"
                    | DEV_SMS_FILE
            )
        {
            fs::remove_file(&path).map_err(|e| fs_err("removing", &path, e))?;
        }
    }
    // Only if empty: never delete what someone else put there.
    let _ = fs::remove_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ChipSpec, Config, NvramKeySource};

    #[test]
    fn written_config_parses() {
        let root = Path::new("/tmp/ck dev \"quoted\"");
        let files = NodeFiles::new(root, 2);
        let opts = NodeOptions {
            raft: Some(RaftTimings {
                heartbeat_ms: 50,
                election_min_ms: 150,
                election_max_ms: 300,
            }),
            max_login_failures: Some(3),
            session_ttl_s: Some(60),
            cheap_pin_hash: true,
            chips: 3,
            ..NodeOptions::default()
        };
        let text = node_config_toml(&files, &root.join("pki"), &opts);
        let c = Config::parse(&text, root).unwrap();
        assert_eq!(c.id, 2);
        assert_eq!(c.data_dir, files.data_dir);
        assert_eq!(c.tls.cert, root.join("pki/node-2.pem"));
        assert_eq!(c.chips.len(), 3);
        assert!(matches!(
            &c.chips[2],
            ChipSpec::Soft { nvram_key: Some(NvramKeySource::File(f)), .. } if *f == files.nvram_key
        ));
        assert_eq!(c.security.max_login_failures, 3);
        assert_eq!(c.raft.heartbeat, Duration::from_millis(50));
    }

    #[test]
    fn readiness_needs_every_node_one_leader_and_domains() {
        use cloudkey_protocol::msg::ChipLoad;
        let chip = |d| ChipLoad {
            name: "soft-0".into(),
            queued: 0,
            loaded: 0,
            slots: 64,
            served: 0,
            healthy: true,
            has_domain: d,
        };
        let st = |id, leader, d| NodeStatus {
            id,
            addr: String::new(),
            initialized: true,
            term: 1,
            leader,
            applied: 1,
            members: vec![],
            chips: vec![chip(d)],
            domain_kcv: String::new(),
            confirmed_ms_ago: None,
        };
        assert!(cluster_ready(&[
            Some(st(1, Some(1), true)),
            Some(st(2, Some(1), true))
        ]));
        assert!(!cluster_ready(&[Some(st(1, Some(1), true)), None]));
        assert!(!cluster_ready(&[
            Some(st(1, Some(1), true)),
            Some(st(2, Some(2), true))
        ]));
        assert!(!cluster_ready(&[
            Some(st(1, Some(1), true)),
            Some(st(2, Some(1), false))
        ]));
        assert!(!cluster_ready(&[Some(st(1, None, true))]));
    }

    #[test]
    fn pid_liveness_checks_the_command_line() {
        let me = std::process::id();
        let exe = std::env::current_exe().unwrap();
        assert!(pid_alive(me, &exe));
        assert!(!pid_alive(me, Path::new("/definitely/not/our/config.toml")));
    }
}
