//! The multi-process test harness: real `cloudkey-node` processes on loopback.
//!
//! * [`Pki`]: a cluster CA and certificates in a temporary directory.
//! * [`Cluster`]: N nodes started from the real binary, each in its own directory under one
//!   temporary directory, each binding `127.0.0.1:0` and reporting its address with a
//!   `LISTENING` line; [`Cluster::init`], clients by role and by node, [`Cluster::kill`]
//!   (SIGKILL), [`Cluster::stop`] (SIGTERM), [`Cluster::restart`], [`Cluster::leader`] from the
//!   nodes' own status, [`Cluster::settle`] to hand writes from one client to another (a new
//!   client carries no applied index, so it could read a node that has not applied them yet).
//!   Dropping a cluster kills its processes and removes its directory (kept when
//!   `CLOUDKEY_KEEP_TEST_DIRS` is set; on a panic the logs' tails are printed).
//! * [`Cluster::pkcs11_token`]: a token and a configuration file for the PKCS#11 module
//!   (`libcloudkey_pkcs11.so`, [`pkcs11_module`]) showing it, for tests with real PKCS#11
//!   clients (the `cryptoki` crate, `pkcs11-tool`, OpenSSL, GnuTLS).
//! * [`wait_for`]: poll a condition until it holds or a deadline passes; tests never sleep for
//!   a fixed time (the one of `cloudkey-test-support`, which also starts the node processes:
//!   `NodeProcess`).
//!
//! Nodes are numbered from 1 (their Raft ids); every method taking a node takes that id.
//!
//! The node binary is `$CLOUDKEY_NODE_BIN`, else the one of the same cargo profile as the test
//! executable, and the PKCS#11 module and the load tester are the ones of that profile. Cargo
//! builds only the binaries of the package under test for integration tests, so the harness
//! runs `cargo build -p cloudkey-node -p cloudkey-pkcs11 -p cloudkey-loadtest` once per test
//! process (a no-op when up to date; `CLOUDKEY_TEST_NO_BUILD=1` skips it), so that a stale
//! binary or module is never tested.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cloudkey_node::dev::{self, NodeFiles, NodeOptions, RaftTimings};
use cloudkey_node::pki::{self, Identity, PkiPaths};
use cloudkey_protocol::client::{Client, ClientSettings};
use cloudkey_protocol::msg::{Member, NodeStatus, Request, Response, Secret, TokenId};
use cloudkey_test_support::NodeProcess;
use tempfile::TempDir;

pub use cloudkey_node::dev::{cluster_ready, send_signal};
pub use cloudkey_test_support::{wait_for, wait_for_blocking};

/// Name of the operator certificate every test PKI has.
pub const OPERATOR: &str = "admin";
/// Name of the client certificate every test PKI has.
pub const CLIENT: &str = "app";
/// Bound on a node's start.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on a cluster becoming ready (leader elected, every chip holding the domain).
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on a node's exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Env var: keep test directories (and say where they are) instead of removing them.
pub const KEEP_ENV: &str = "CLOUDKEY_KEEP_TEST_DIRS";
/// User PIN of the tokens [`Cluster::pkcs11_token`] makes (that of `cloudkey dev up`'s token).
pub const P11_USER_PIN: &str = dev::DEV_USER_PIN;
/// SO PIN of the tokens [`Cluster::pkcs11_token`] makes (that of `cloudkey dev up`'s token).
pub const P11_SO_PIN: &str = dev::DEV_SO_PIN;
/// The environment variable naming the PKCS#11 module's configuration file. Tests pass it to
/// the processes they start (`Command::env`), never to themselves.
pub const P11_CONFIG_ENV: &str = "CLOUDKEY_PKCS11_CONFIG";

/// A token made for PKCS#11 clients, and a module configuration that shows it as slot 0.
#[derive(Clone, Debug)]
pub struct Pkcs11Token {
    /// The token's label.
    pub label: String,
    /// The token's id.
    pub id: TokenId,
    /// The module's configuration file (pass it as [`P11_CONFIG_ENV`]).
    pub config: PathBuf,
    /// The module, `libcloudkey_pkcs11.so` ([`pkcs11_module`]).
    pub module: PathBuf,
}

/// Time bounds written into a module configuration (`deadline_ms`, `connect_timeout_ms`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pkcs11Timing {
    /// Bound of every call, failover included, ms.
    pub deadline_ms: u64,
    /// Bound of one handshake, ms.
    pub connect_timeout_ms: u64,
}

impl Default for Pkcs11Timing {
    /// What `cloudkey dev up` writes.
    fn default() -> Self {
        Self {
            deadline_ms: 10_000,
            connect_timeout_ms: 1_000,
        }
    }
}

/// Who a client is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The operator certificate ([`OPERATOR`]).
    Operator,
    /// The client certificate ([`CLIENT`]).
    Client,
}

impl Role {
    /// The certificate identity.
    #[must_use]
    pub fn identity(self) -> Identity {
        match self {
            Self::Operator => Identity::Operator(OPERATOR.into()),
            Self::Client => Identity::Client(CLIENT.into()),
        }
    }
}

/// A cluster CA with certificates for nodes `1..=nodes`, the operator [`OPERATOR`] and the
/// client [`CLIENT`], in a temporary directory removed on drop.
pub struct Pki {
    dir: TempDir,
    /// What was issued.
    pub paths: PkiPaths,
}

impl Pki {
    /// Makes the CA and certificates.
    ///
    /// # Errors
    /// If the directory or the certificates cannot be made.
    pub fn new(nodes: u64) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("cloudkey-pki-").tempdir()?;
        let paths = pki::init_pki(dir.path(), nodes, &[OPERATOR], &[CLIENT])?;
        Ok(Self { dir, paths })
    }

    /// The PKI directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues one more certificate from this CA.
    ///
    /// # Errors
    /// As [`pki::issue`].
    pub fn issue(&self, who: &Identity) -> Result<pki::CertPaths> {
        Ok(pki::issue(self.dir.path(), who, false)?)
    }
}

/// How a test cluster is configured.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Nodes.
    pub nodes: u64,
    /// Soft chips per node.
    pub chips: u32,
    /// Key slots per chip.
    pub slots: u32,
    /// `security.max_login_failures`.
    pub max_login_failures: Option<u32>,
    /// `security.session_ttl_s`.
    pub session_ttl_s: Option<u64>,
    /// Raft timings.
    pub raft: RaftTimings,
    /// `[audit] interval_ms`: how often nodes summarise signature counts and the leader
    /// checkpoints the audit chain.
    pub audit_interval_ms: u64,
}

impl ClusterOptions {
    /// `nodes` nodes, two chips each, fast Raft timings.
    #[must_use]
    pub fn new(nodes: u64) -> Self {
        Self {
            nodes,
            chips: 2,
            slots: 64,
            max_login_failures: None,
            session_ttl_s: None,
            // Fast failover, yet generous enough for a 2-core machine shared with the build:
            // a follower waits at least six heartbeats before it campaigns.
            raft: RaftTimings {
                heartbeat_ms: 50,
                election_min_ms: 300,
                election_max_ms: 600,
            },
            audit_interval_ms: 300,
        }
    }
}

struct NodeProc {
    files: NodeFiles,
    addr: SocketAddr,
    process: NodeProcess,
}

/// A cluster of real node processes. See the [crate docs](crate).
pub struct Cluster {
    root: Option<TempDir>,
    pki_dir: PathBuf,
    nodes: Vec<NodeProc>,
    /// Operator client over every node, for status and administration.
    admin: Client,
}

impl Cluster {
    /// Starts `n` nodes (not initialised; see [`Cluster::init`] and [`Cluster::start_init`]).
    ///
    /// # Errors
    /// If a node does not start (its log is in the error).
    pub async fn start(n: u64) -> Result<Self> {
        Self::start_with(ClusterOptions::new(n)).await
    }

    /// Starts `n` nodes and initialises the cluster.
    ///
    /// # Errors
    /// As [`Cluster::start`] and [`Cluster::init`].
    pub async fn start_init(n: u64) -> Result<Self> {
        let c = Self::start(n).await?;
        c.init().await?;
        Ok(c)
    }

    /// Starts a cluster configured by `opts` (not initialised).
    ///
    /// # Errors
    /// If a node does not start.
    pub async fn start_with(opts: ClusterOptions) -> Result<Self> {
        let bin = node_binary()?;
        let root = tempfile::Builder::new()
            .prefix("cloudkey-cluster-")
            .tempdir()?;
        let pki_dir = root.path().join("pki");
        pki::init_pki(&pki_dir, opts.nodes, &[OPERATOR], &[CLIENT])?;
        let node_opts = NodeOptions {
            chips: opts.chips,
            slots: opts.slots,
            raft: Some(opts.raft),
            max_login_failures: opts.max_login_failures,
            session_ttl_s: opts.session_ttl_s,
            cheap_pin_hash: true,
            sms_file: Some(root.path().join("sms.log")),
            audit_interval_ms: Some(opts.audit_interval_ms),
            ..NodeOptions::default()
        };
        let mut starting = Vec::new();
        for id in 1..=opts.nodes {
            let files = NodeFiles::new(root.path(), id);
            dev::write_node_files(&files, &pki_dir, &node_opts)?;
            let launch = NodeProcess::launch(&bin, &files.config)
                .log_to(&files.log)
                .name(format!("node {id}"));
            starting.push((files, NodeProcess::spawn(launch)?));
        }
        // Started together, awaited in turn; on a failure the processes are dropped (killed).
        let mut nodes = Vec::new();
        for (files, mut process) in starting {
            let addr = process.listening(START_TIMEOUT).await?;
            nodes.push(NodeProc {
                files,
                addr,
                process,
            });
        }
        let endpoints: Vec<String> = nodes.iter().map(|n| n.addr.to_string()).collect();
        let admin = make_client(root.path(), &pki_dir, Role::Operator, &endpoints, "admin")?;
        Ok(Self {
            root: Some(root),
            pki_dir,
            nodes,
            admin,
        })
    }

    /// Node ids, `1..=n`.
    #[must_use]
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.files.id).collect()
    }

    fn node(&self, id: u64) -> &NodeProc {
        self.nodes
            .iter()
            .find(|n| n.files.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn node_mut(&mut self, id: u64) -> &mut NodeProc {
        self.nodes
            .iter_mut()
            .find(|n| n.files.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    fn index(&self, id: u64) -> usize {
        self.nodes
            .iter()
            .position(|n| n.files.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster"))
    }

    /// The address node `id` serves on.
    #[must_use]
    pub fn addr(&self, id: u64) -> SocketAddr {
        self.node(id).addr
    }

    /// Every node's address, in id order.
    #[must_use]
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.to_string()).collect()
    }

    /// Node `id`'s data directory.
    #[must_use]
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).files.data_dir
    }

    /// Node `id`'s files (config, data dir, nvram key, log).
    #[must_use]
    pub fn files(&self, id: u64) -> &NodeFiles {
        &self.node(id).files
    }

    /// The cluster's PKI directory.
    #[must_use]
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// The cluster's root directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        self.root
            .as_ref()
            .map_or_else(|| Path::new("/nonexistent"), TempDir::path)
    }

    /// Node `id`'s log so far.
    #[must_use]
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(&self.node(id).files.log).unwrap_or_default()
    }

    /// Whether node `id`'s process is running (as far as this harness knows).
    #[must_use]
    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).process.is_started()
    }

    /// Ids of the running nodes.
    #[must_use]
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.process.is_started())
            .map(|n| n.files.id)
            .collect()
    }

    /// The operator client over every node.
    #[must_use]
    pub fn admin(&self) -> &Client {
        &self.admin
    }

    /// Client settings for `role` with the endpoints of `nodes`, in that order.
    ///
    /// # Errors
    /// If the settings file cannot be written or read back.
    pub fn settings(&self, role: Role, nodes: &[u64]) -> Result<ClientSettings> {
        let endpoints: Vec<String> = nodes.iter().map(|&id| self.addr(id).to_string()).collect();
        let tag = nodes
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("-");
        let name = format!("{}-{tag}", role_name(role));
        settings_file(self.root(), &self.pki_dir, role, &endpoints, &name)
    }

    /// A client as `role` over every node.
    ///
    /// # Errors
    /// If the client cannot be built.
    pub fn client(&self, role: Role) -> Result<Client> {
        self.client_on(role, &self.ids())
    }

    /// A client as `role` whose only endpoints are `nodes` (in that order, so that
    /// `call_node(i, ..)` asks `nodes[i]`).
    ///
    /// # Errors
    /// If the client cannot be built.
    pub fn client_on(&self, role: Role, nodes: &[u64]) -> Result<Client> {
        let s = self.settings(role, nodes)?;
        Client::new(&s).map_err(|e| anyhow!("client: {e}"))
    }

    /// Client settings file for any identity (an officer's or a terminal's certificate, issued
    /// by the cluster CA on first use), with every node's endpoint. Returns its path.
    ///
    /// # Errors
    /// If the certificate cannot be issued or the file written.
    pub fn settings_as(&self, who: &Identity) -> Result<PathBuf> {
        let name = match who {
            Identity::Operator(n) => format!("as-operator-{n}"),
            Identity::Client(n) => format!("as-client-{n}"),
            Identity::Node(id) => format!("as-node-{id}"),
        };
        if !pki::CertPaths::of(&self.pki_dir, who).cert.exists() {
            pki::issue(&self.pki_dir, who, false)?;
        }
        let path = self.root().join(format!("{name}.toml"));
        let text = dev::client_settings_toml(&self.addrs(), &self.pki_dir, who);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// A client with any identity's certificate (see [`Cluster::settings_as`]).
    ///
    /// # Errors
    /// If the certificate cannot be issued or the client built.
    pub fn client_as(&self, who: &Identity) -> Result<Client> {
        let path = self.settings_as(who)?;
        let s = ClientSettings::from_file(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
        Client::new(&s).map_err(|e| anyhow!("client: {e}"))
    }

    /// Creates the token `label` (SO PIN [`P11_SO_PIN`], user PIN [`P11_USER_PIN`]) as the
    /// operator, lets every running node apply it (the module's client starts with no applied
    /// index), and writes a module configuration showing it as slot 0 ([`Cluster::pkcs11_config`]
    /// with the default timing).
    ///
    /// # Errors
    /// If the token cannot be made, the nodes do not apply it in time, or the module is not
    /// built.
    pub async fn pkcs11_token(&self, label: &str) -> Result<Pkcs11Token> {
        let req = Request::CreateToken {
            label: label.into(),
            so_pin: Secret::from(P11_SO_PIN),
            user_pin: Some(Secret::from(P11_USER_PIN)),
        };
        let id = match self.admin.call(req).await {
            Ok(Response::Token(t)) => t.id,
            Ok(r) => bail!("create token {label}: unexpected {r:?}"),
            Err(e) => bail!("create token {label}: {e}"),
        };
        self.settle(&self.admin).await?;
        let config = self.pkcs11_config(&[label], Pkcs11Timing::default())?;
        Ok(Pkcs11Token {
            label: label.into(),
            id,
            config,
            module: pkcs11_module()?,
        })
    }

    /// Writes a configuration for the PKCS#11 module in the format `cloudkey dev up` writes
    /// (`pkcs11.toml`): the client settings with every node's endpoint and the [`CLIENT`]
    /// certificate, `timing`, and one `[[slots]]` per label, in order. Returns its path (in the
    /// cluster's directory; one file per list of labels and timing).
    ///
    /// # Errors
    /// For a label that is not 1 to 32 of `[A-Za-z0-9_.-]`, or if the file cannot be written.
    pub fn pkcs11_config(&self, labels: &[&str], timing: Pkcs11Timing) -> Result<PathBuf> {
        let mut text = String::new();
        let settings =
            dev::client_settings_toml(&self.addrs(), &self.pki_dir, &Role::Client.identity());
        for line in settings.lines() {
            if !line.starts_with("deadline_ms") && !line.starts_with("connect_timeout_ms") {
                text.push_str(line);
                text.push('\n');
            }
        }
        text.push_str(&format!(
            "deadline_ms = {}\nconnect_timeout_ms = {}\n",
            timing.deadline_ms, timing.connect_timeout_ms
        ));
        for label in labels {
            // Labels are written as TOML basic strings without escapes.
            let plain = (1..=32).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
            if !plain {
                bail!("token label {label:?}: use 1 to 32 of [A-Za-z0-9_.-]");
            }
            text.push_str(&format!("\n[[slots]]\ntoken = \"{label}\"\n"));
        }
        let path = self.root().join(format!(
            "pkcs11-{}-{}.toml",
            labels.join("+"),
            timing.deadline_ms
        ));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Sends `Init` with every node as member to node 1, then waits until the cluster is ready
    /// (one leader, every node initialised, every chip holding the domain key).
    ///
    /// # Errors
    /// If `Init` fails or the cluster is not ready in time.
    pub async fn init(&self) -> Result<()> {
        let members = self
            .nodes
            .iter()
            .map(|n| Member {
                id: n.files.id,
                addr: n.addr.to_string(),
            })
            .collect();
        self.admin
            .call_node(0, Request::Init { members })
            .await
            .map_err(|e| anyhow!("init: {e}"))?;
        self.wait_ready().await
    }

    /// Waits until every running node is initialised, agrees on one running leader, and has
    /// all chips holding the domain key.
    ///
    /// # Errors
    /// On timeout, with the last statuses.
    pub async fn wait_ready(&self) -> Result<()> {
        let running = self.running();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let st = self.statuses(&running).await;
            let leader = st.first().and_then(Option::as_ref).and_then(|s| s.leader);
            if cluster_ready(&st) && leader.is_some_and(|l| running.contains(&l)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the cluster was not ready within {READY_TIMEOUT:?}; statuses: {st:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node has applied log index `index`.
    ///
    /// # Errors
    /// On timeout.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let running = self.running();
        wait_for(
            &format!("nodes {running:?} to apply index {index}"),
            READY_TIMEOUT,
            || async {
                let st = self.statuses(&running).await;
                st.iter()
                    .all(|s| s.as_ref().is_some_and(|s| s.applied >= index))
                    .then_some(())
            },
        )
        .await?;
        Ok(())
    }

    /// Waits until every running node has applied everything `client` has seen, so that any
    /// other client (which carries no applied index of its own yet) reads it: the hand-over
    /// between clients, e.g. a token made by the operator and used by an application.
    ///
    /// # Errors
    /// On timeout.
    pub async fn settle(&self, client: &Client) -> Result<()> {
        self.wait_applied(client.max_applied()).await
    }

    /// Node `id`'s status (asked of that node only).
    ///
    /// # Errors
    /// If the node does not answer.
    pub async fn status(&self, id: u64) -> Result<NodeStatus> {
        match self.admin.call_node(self.index(id), Request::Status).await {
            Ok(Response::Status(s)) => Ok(s),
            Ok(r) => bail!("status of node {id}: unexpected {r:?}"),
            Err(e) => bail!("status of node {id}: {e}"),
        }
    }

    /// Statuses of `ids`, asked concurrently (`None` where a node does not answer within 2 s).
    pub async fn statuses(&self, ids: &[u64]) -> Vec<Option<NodeStatus>> {
        let asks = ids.iter().map(|&id| async move {
            tokio::time::timeout(Duration::from_secs(2), self.status(id))
                .await
                .ok()
                .and_then(Result::ok)
        });
        futures::future::join_all(asks).await
    }

    /// The leader as the running nodes see it: a running node that says it leads, and that a
    /// majority of the running nodes name.
    pub async fn leader(&self) -> Option<u64> {
        let running = self.running();
        let st = self.statuses(&running).await;
        let claimed: Vec<u64> = st
            .iter()
            .flatten()
            .filter(|s| s.leader == Some(s.id))
            .map(|s| s.id)
            .collect();
        claimed.into_iter().find(|&l| {
            st.iter().flatten().filter(|s| s.leader == Some(l)).count() * 2 > running.len()
        })
    }

    /// Waits for [`Cluster::leader`].
    ///
    /// # Errors
    /// On timeout.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64> {
        Ok(wait_for("a leader", timeout, || self.leader()).await?)
    }

    /// Kills node `id` with SIGKILL and reaps it.
    ///
    /// # Panics
    /// If the node is not running.
    pub fn kill(&mut self, id: u64) {
        let n = self.node_mut(id);
        assert!(n.process.is_started(), "node {id} is not running");
        n.process.kill();
    }

    /// Stops node `id` with SIGTERM and waits for it to exit; returns its exit status.
    ///
    /// # Errors
    /// If it does not exit within [`STOP_TIMEOUT`] (it is then killed).
    ///
    /// # Panics
    /// If the node is not running.
    pub async fn stop(&mut self, id: u64) -> Result<ExitStatus> {
        let n = self.node_mut(id);
        assert!(n.process.is_started(), "node {id} is not running");
        n.process
            .stop(STOP_TIMEOUT)
            .await
            .with_context(|| format!("stopping node {id}"))
    }

    /// Starts node `id` again with its configuration and data; it must bind the address it
    /// had.
    ///
    /// # Errors
    /// If it does not start, or binds another address.
    ///
    /// # Panics
    /// If the node is running.
    pub async fn restart(&mut self, id: u64) -> Result<()> {
        let n = self.node_mut(id);
        assert!(!n.process.is_started(), "node {id} is running");
        n.process.restart()?;
        match n.process.listening(START_TIMEOUT).await {
            Ok(addr) if addr == n.addr => Ok(()),
            Ok(addr) => bail!("node {id} came back on {addr}, not on {}", n.addr),
            Err(e) => {
                n.process.kill();
                Err(e.into())
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Each node's process is killed when dropped, and shows its log's tail first if the
        // test is failing.
        self.nodes.clear();
        if std::env::var_os(KEEP_ENV).is_some() {
            if let Some(root) = self.root.take() {
                eprintln!("keeping {}", root.keep().display());
            }
        }
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Operator => "operator",
        Role::Client => "client",
    }
}

fn settings_file(
    root: &Path,
    pki_dir: &Path,
    role: Role,
    endpoints: &[String],
    name: &str,
) -> Result<ClientSettings> {
    let path = root.join(format!("{name}.toml"));
    let text = dev::client_settings_toml(endpoints, pki_dir, &role.identity());
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    ClientSettings::from_file(&path).map_err(|e| anyhow!("{}: {e}", path.display()))
}

fn make_client(
    root: &Path,
    pki_dir: &Path,
    role: Role,
    endpoints: &[String],
    name: &str,
) -> Result<Client> {
    let s = settings_file(root, pki_dir, role, endpoints, name)?;
    Client::new(&s).map_err(|e| anyhow!("client: {e}"))
}

// ---- binaries ------------------------------------------------------------------------------

/// The `cloudkey-node` binary (built once per test process; see the [crate docs](crate)).
///
/// # Errors
/// If it cannot be built or found.
pub fn node_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(dev::NODE_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    built_binary(dev::NODE_BIN)
}

/// The PKCS#11 module `libcloudkey_pkcs11.so` of the test executable's profile,
/// `target/<profile>/libcloudkey_pkcs11.so` (built like [`node_binary`]).
///
/// # Errors
/// If it cannot be built or found.
pub fn pkcs11_module() -> Result<PathBuf> {
    let found = built_binary(dev::PKCS11_LIB)?;
    // Prefer target/<profile>/ (cargo's uplifted copy, what applications are pointed at) over
    // target/<profile>/deps/; they are the same file after a build.
    let uplifted = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|dir| dir.join(dev::PKCS11_LIB))
        .filter(|p| p.is_file());
    Ok(uplifted.unwrap_or(found))
}

/// The `cloudkey-loadtest` binary (built like [`node_binary`]).
///
/// # Errors
/// If it cannot be built or found.
pub fn loadtest_binary() -> Result<PathBuf> {
    built_binary("cloudkey-loadtest")
}

/// The `cloudkey` CLI binary (built like [`node_binary`]).
///
/// # Errors
/// If it cannot be built or found.
pub fn cli_binary() -> Result<PathBuf> {
    built_binary("cloudkey")
}

fn built_binary(name: &str) -> Result<PathBuf> {
    static BUILD: OnceLock<Result<(), String>> = OnceLock::new();
    BUILD
        .get_or_init(build_bins)
        .clone()
        .map_err(|e| anyhow!(e))?;
    dev::sibling_of_current_exe(name).ok_or_else(|| {
        anyhow!(
            "{name} not found next to {} or its parent directory",
            std::env::current_exe().map_or_else(|_| "?".into(), |p| p.display().to_string())
        )
    })
}

/// `cargo build -p cloudkey-node -p cloudkey-pkcs11 -p cloudkey-loadtest` (the node and CLI
/// binaries, the PKCS#11 module, the load tester) with the test executable's profile and target directory, unless
/// `CLOUDKEY_TEST_NO_BUILD` is set.
fn build_bins() -> Result<(), String> {
    if std::env::var_os("CLOUDKEY_TEST_NO_BUILD").is_some() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/<test exe>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("unexpected test executable location")?;
    let target_dir = profile_dir.parent().ok_or("unexpected target layout")?;
    let profile = profile_dir
        .file_name()
        .and_then(|p| p.to_str())
        .ok_or("unexpected profile directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        // One build for every binary the tests run: separate builds of different package
        // sets would unify features differently and rebuild each other's dependencies.
        .args([
            "-p",
            "cloudkey-node",
            "-p",
            "cloudkey-pkcs11",
            "-p",
            "cloudkey-loadtest",
        ])
        .arg("--quiet")
        .arg("--target-dir")
        .arg(target_dir);
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.args(["--profile", other]);
        }
    }
    let out = cmd
        .output()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cargo build -p cloudkey-node -p cloudkey-pkcs11 -p cloudkey-loadtest failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}
