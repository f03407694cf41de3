//! Node configuration: a TOML file parsed, then validated into typed structs, before anything
//! binds a socket or opens a device (style habit 9).
//!
//! [`Config::parse`] does no I/O: it turns the text into a [`Config`] whose every field has been
//! range-checked, and reports the first problem as one line naming the field. [`Config::load`]
//! reads the file and parses it; relative paths in the file are taken relative to the directory
//! of the file, so a configuration means the same whatever the working directory of the node.
//! What needs the file system (reading the TLS material and checking that the certificate names
//! this node, finding and reading the chips' NVRAM key, see [below](#the-soft-chips-nvram-key))
//! is done by [`Config::prepare`], still before binding.
//!
//! ```toml
//! id = 1
//! listen = "127.0.0.1:7301"          # "127.0.0.1:0": pick a port once, keep it across restarts
//! data_dir = "/var/lib/cloudkey/node-1"
//! runtime_threads = 1                # optional; see Config::runtime_threads
//!
//! [tls]
//! ca = "/etc/cloudkey/pki/ca.pem"
//! cert = "/etc/cloudkey/pki/node-1.pem"
//! key = "/etc/cloudkey/pki/node-1.key"
//!
//! [[chips]]
//! kind = "soft"
//! count = 2
//! slots = 64
//! latency_us = 0
//! nvram_key_credential = "nvram-key"   # optional, one of: a systemd credential (below)
//! # nvram_key_file = "/etc/cloudkey/node-1.nvram-key"   # or a file outside data_dir
//!
//! [[chips]]
//! kind = "serial"
//! path = "/dev/ttyUSB0"
//! baud = 115200
//! timeout_ms = 500                    # optional: per-attempt timeout
//! retries = 3                         # optional: transmissions of an idempotent command
//!
//! [raft]                              # all optional
//! heartbeat_ms = 100
//! election_min_ms = 400
//! election_max_ms = 800
//! snapshot_logs = 5000
//!
//! [limits]                            # all optional
//! max_connections = 4096
//! max_streams = 1024
//! max_inflight = 4096
//! request_deadline_ms = 5000
//! admin_deadline_ms = 90000
//! read_wait_ms = 2000
//! queue_depth = 256
//! queue_timeout_ms = 2000
//!
//! [audit]                             # optional
//! interval_ms = 10000                 # checkpoints and signature-count summaries
//!
//! [notifier]                          # optional: where one-time SMS codes go (one of:)
//! command = ["/usr/local/bin/send-sms", "--route", "officers"]  # a site program (below)
//! timeout_ms = 10000                  # how long it may take (default 10 s)
//! sms_file = "/var/lib/cloudkey/sms.log"   # or the development notifier: a file
//!
//! [security]                          # all optional
//! max_login_failures = 5
//! session_ttl_s = 300                # a grant's lifetime; clients renew grants in use
//! argon2_memory_kib = 19456
//! argon2_iterations = 2
//! argon2_parallelism = 1
//! pin_hash_concurrency = 4
//! ```
//!
//! # The soft chips' NVRAM key
//!
//! A software chip keeps its identity and the domain key in a file of `data_dir`
//! (`chip-soft-<n>.nvram`), sealed under a 32-byte NVRAM key (32 raw bytes, or 64 hex digits).
//! For a software chip that key is the trust boundary: whoever holds it and a copy of the data
//! directory holds the domain key, and with it every key blob of the cluster. It comes from one
//! of (at most one; one key for all of the node's soft chips):
//!
//! * `nvram_key_credential = NAME`: the systemd credential `NAME`, read from
//!   `$CREDENTIALS_DIRECTORY/NAME` (`LoadCredential=NAME:/path` or `LoadCredentialEncrypted=`
//!   in the unit). The node refuses to start when `CREDENTIALS_DIRECTORY` is not set.
//! * `nvram_key_file = PATH`: a file (relative paths are taken from the configuration's
//!   directory), readable only by the node's user.
//!
//! Without either, soft chips keep nothing across restarts: they come back blank and get the
//! domain again from a peer (or a sibling chip).
//!
//! **The rule** ([`Config::prepare`]): the key's file, its path made absolute with every
//! symbolic link followed, must not be `data_dir` nor lie anywhere under it (`data_dir`
//! resolved the same way; a part that does not exist yet is taken as written). A key in the
//! data directory travels with every copy of it (backups, snapshots, a disk image), and then
//! the directory alone unseals the chips. A node whose key breaks the rule exits at once with
//! one line naming the setting and both paths, unless it is started with
//! `cloudkey-node --insecure-dev-keys`, which accepts it and logs one warning. A key *next to*
//! `data_dir` (in the same parent, as `cloudkey dev up` writes it) passes the rule; production
//! nodes keep it in a separate custody (a credential, or a file under `/etc` that is not
//! backed up with the data). The rule is on paths: a hard link to the key inside `data_dir` is
//! a file of its own name there and is not detected (a key file with more than one link gets a
//! warning), nor is a bind mount.

use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cloudkey_chip::SecretBytes;
use serde::Deserialize;

use crate::error::{NodeError, Result};

/// The most chips one node drives.
pub const MAX_CHIPS: usize = 64;

/// The most runtime threads a configuration may ask for.
pub const MAX_RUNTIME_THREADS: usize = 256;

/// The default of [`Config::runtime_threads`]: 1 with up to 4 cores, else half of them.
#[must_use]
pub fn default_runtime_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    if cores <= 4 {
        1
    } else {
        (cores / 2).min(MAX_RUNTIME_THREADS)
    }
}

/// A validated node configuration. See the [module docs](self) for the file format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Raft node id, at least 1; the node certificate's URI SAN must name it.
    pub id: u64,
    /// Address to bind (UDP). Port 0 picks a port on first start and keeps it afterwards (the
    /// chosen address is stored in `data_dir/listen.addr`, since Raft membership records it).
    pub listen: SocketAddr,
    /// Where Raft's log and state, the bound address and the soft chips' nvram live.
    pub data_dir: PathBuf,
    /// Threads of the node's async runtime (QUIC, TLS, request handling, Raft). `1` is a
    /// current-thread runtime: every task runs on one thread and no request is handed between
    /// runtime threads, which is the fastest set-up when the node has few cores (chips have
    /// threads of their own, and blocking storage work its own pool). The default is 1 on
    /// machines with up to 4 cores, else half of the cores.
    pub runtime_threads: usize,
    /// How often the audit task summarises signature counts and (on the leader) signs a
    /// checkpoint of the audit chain.
    pub audit_interval: Duration,
    /// Where one-time SMS codes go (`[notifier]`); none when unset.
    pub notifier: Option<NotifierSpec>,
    /// TLS material.
    pub tls: TlsPaths,
    /// Chips, in pool order (chip 0 is where `cloudkey init` generates the domain key).
    pub chips: Vec<ChipSpec>,
    /// Raft timings.
    pub raft: RaftSettings,
    /// Limits and deadlines.
    pub limits: Limits,
    /// Login and PIN settings.
    pub security: Security,
}

/// Paths of the node's TLS material (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate (URI SAN `cloudkey://node/<id>`).
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
}

/// One chip of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChipSpec {
    /// An in-process software chip.
    Soft {
        /// Position among the node's soft chips (names its nvram file).
        soft_index: usize,
        /// Key slots.
        slots: u32,
        /// Simulated per-operation latency.
        latency: Option<Duration>,
        /// Where the key sealing the chip's nvram file (`data_dir/chip-soft-<soft_index>.nvram`)
        /// comes from; without one the chip forgets its identity and domain when the node
        /// stops.
        nvram_key: Option<NvramKeySource>,
    },
    /// A chip on a serial line.
    Serial {
        /// Device path.
        path: String,
        /// Line speed.
        baud: u32,
        /// Per-attempt command timeout, replacing the driver's per-command estimate.
        timeout: Option<Duration>,
        /// Transmissions of an idempotent command, the first included.
        retries: u32,
    },
}

/// Where the soft chips' NVRAM key is read from (see the [module docs](self#the-soft-chips-nvram-key)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvramKeySource {
    /// `nvram_key_file = PATH`: a file (resolved against the configuration's directory).
    File(PathBuf),
    /// `nvram_key_credential = NAME`: the systemd credential `NAME`, the file
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    Credential(String),
}

/// The environment variable systemd sets to the directory of a unit's credentials.
pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";

impl NvramKeySource {
    /// The configuration setting this source was given by.
    #[must_use]
    pub fn setting(&self) -> &'static str {
        match self {
            Self::File(_) => "nvram_key_file",
            Self::Credential(_) => "nvram_key_credential",
        }
    }

    /// The setting as written, for messages: `nvram_key_file /p` or `nvram_key_credential "n"`.
    fn describe(&self) -> String {
        match self {
            Self::File(p) => format!("nvram_key_file {}", p.display()),
            Self::Credential(n) => format!("nvram_key_credential {n:?}"),
        }
    }

    /// The file holding the key: the configured path, or `credentials_dir/NAME` (the value of
    /// [`CREDENTIALS_DIRECTORY`]; unset or empty is an error for a credential).
    ///
    /// # Errors
    /// [`NodeError::Config`] for a credential without a credentials directory.
    pub fn file(&self, credentials_dir: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
        match self {
            Self::File(p) => Ok(p.clone()),
            Self::Credential(name) => match credentials_dir.filter(|d| !d.is_empty()) {
                Some(dir) => Ok(Path::new(dir).join(name)),
                None => Err(bad(format!(
                    "nvram_key_credential = {name:?} needs ${CREDENTIALS_DIRECTORY}, which is not \
                     set (systemd sets it for a unit with LoadCredential={name}:/path/to/key or \
                     LoadCredentialEncrypted={name}:/path/to/key.cred)"
                ))),
            },
        }
    }
}

/// Whether [`Config::prepare`] accepts an NVRAM key inside `data_dir` (the
/// [rule](self#the-soft-chips-nvram-key)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DevKeys {
    /// Refused: the production rule.
    #[default]
    Refuse,
    /// Accepted, with a warning in the log: `cloudkey-node --insecure-dev-keys`.
    AllowInsecure,
}

/// Raft timings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaftSettings {
    /// Leader heartbeat interval.
    pub heartbeat: Duration,
    /// Lower bound of the randomised election timeout.
    pub election_min: Duration,
    /// Upper bound of the randomised election timeout.
    pub election_max: Duration,
    /// Log entries between snapshots.
    pub snapshot_logs: u64,
    /// How long after its last confirmation with a quorum this node still serves key use
    /// (`crate::raft::freshness`).
    pub staleness_bound: Duration,
}

impl Default for RaftSettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(400),
            election_max: Duration::from_millis(800),
            staleness_bound: crate::raft::freshness::DEFAULT_BOUND,
            snapshot_logs: 5000,
        }
    }
}

/// Limits: everything a client can make the node hold is bounded by one of these.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections (clients and peers) open at once; more are refused at the handshake.
    pub max_connections: usize,
    /// Concurrent request streams per client connection (the QUIC stream limit).
    pub max_streams: u32,
    /// Requests in progress on the whole node; beyond it requests are answered `Busy` at once.
    pub max_inflight: usize,
    /// Bound on one request, waiting included.
    pub request_deadline: Duration,
    /// Bound on administrative requests that wait for Raft membership changes (`Init`,
    /// `AddNode`, `RemoveNode`).
    pub admin_deadline: Duration,
    /// Bound on waiting until the node has applied the client's `min_applied` index.
    pub read_wait: Duration,
    /// Jobs each chip's queue holds.
    pub queue_depth: usize,
    /// How long a job may wait for and in a chip queue before it fails `Busy`.
    pub queue_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_streams: 1024,
            max_inflight: 4096,
            request_deadline: Duration::from_millis(5000),
            admin_deadline: Duration::from_millis(90_000),
            read_wait: Duration::from_millis(2000),
            queue_depth: 256,
            queue_timeout: Duration::from_millis(2000),
        }
    }
}

/// Login and PIN settings. `max_login_failures` and `session_ttl` are fixed cluster-wide by
/// `cloudkey init` (from the configuration of the node that runs it); the argon2 parameters
/// apply to PINs this node hashes (a stored hash carries its own parameters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Security {
    /// Failed logins that lock a PIN.
    pub max_login_failures: u32,
    /// Lifetime of a session grant (clients renew one in use before it ends). At most an
    /// hour.
    pub session_ttl: Duration,
    /// argon2id memory cost, KiB.
    pub argon2_memory_kib: u32,
    /// argon2id iterations.
    pub argon2_iterations: u32,
    /// argon2id lanes.
    pub argon2_parallelism: u32,
    /// PIN hashes computed at once (each takes `argon2_memory_kib` of memory).
    pub pin_hash_concurrency: usize,
}

impl Default for Security {
    fn default() -> Self {
        Self {
            max_login_failures: 5,
            session_ttl: Duration::from_secs(300),
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            pin_hash_concurrency: 4,
        }
    }
}

/// What [`Config::prepare`] loads from disk.
pub struct Prepared {
    /// The node's TLS material, its certificate checked to name this node.
    pub tls: cloudkey_protocol::tls::TlsMaterial,
    /// The soft chips' nvram sealing key, when configured.
    pub nvram_key: Option<SecretBytes>,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("nvram_key", &self.nvram_key.as_ref().map(|_| "[redacted]"))
            .finish_non_exhaustive()
    }
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    id: Option<u64>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    runtime_threads: Option<usize>,
    tls: Option<RawTls>,
    #[serde(default)]
    chips: Vec<RawChip>,
    #[serde(default)]
    raft: RawRaft,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    security: RawSecurity,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    notifier: RawNotifier,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    interval_ms: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotifier {
    sms_file: Option<PathBuf>,
    command: Option<Vec<String>>,
    timeout_ms: Option<u64>,
}

/// Where one-time SMS codes go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifierSpec {
    /// The development notifier: a line per code appended to this file.
    File(PathBuf),
    /// A site program (an SMS gateway's client): the program and its arguments, run once per
    /// code, bounded by the timeout (see `service::gov::CommandNotifier`).
    Command {
        /// The program (a path, resolved against the configuration's directory when relative).
        program: PathBuf,
        /// Its arguments.
        args: Vec<String>,
        /// How long one delivery may take before the program is killed.
        timeout: Duration,
    },
}

fn parse_notifier(raw: RawNotifier, base: &Path) -> Result<Option<NotifierSpec>> {
    match (raw.sms_file, raw.command) {
        (Some(_), Some(_)) => Err(bad(
            "notifier.sms_file and notifier.command exclude each other: choose one",
        )),
        (Some(p), None) if p.as_os_str().is_empty() => {
            Err(bad("notifier.sms_file must not be empty"))
        }
        (Some(p), None) => {
            if raw.timeout_ms.is_some() {
                return Err(bad("notifier.timeout_ms applies to notifier.command only"));
            }
            Ok(Some(NotifierSpec::File(resolve(base, p))))
        }
        (None, Some(command)) => {
            let mut words = command.into_iter();
            let program = match words.next() {
                Some(p) if !p.is_empty() => resolve(base, PathBuf::from(p)),
                _ => return Err(bad("notifier.command must name a program")),
            };
            let timeout = millis(
                "notifier.timeout_ms",
                raw.timeout_ms.unwrap_or(10_000),
                100..=120_000,
            )?;
            Ok(Some(NotifierSpec::Command {
                program,
                args: words.collect(),
                timeout,
            }))
        }
        (None, None) if raw.timeout_ms.is_some() => {
            Err(bad("notifier.timeout_ms applies to notifier.command only"))
        }
        (None, None) => Ok(None),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// One `[[chips]]` table. Flat, so that a field given for the wrong kind is reported by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChip {
    kind: Option<String>,
    count: Option<u32>,
    slots: Option<u32>,
    latency_us: Option<u64>,
    nvram_key_file: Option<PathBuf>,
    nvram_key_credential: Option<String>,
    path: Option<String>,
    baud: Option<u32>,
    timeout_ms: Option<u64>,
    retries: Option<u32>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRaft {
    heartbeat_ms: Option<u64>,
    election_min_ms: Option<u64>,
    election_max_ms: Option<u64>,
    snapshot_logs: Option<u64>,
    staleness_bound_ms: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_connections: Option<usize>,
    max_streams: Option<u32>,
    max_inflight: Option<usize>,
    request_deadline_ms: Option<u64>,
    admin_deadline_ms: Option<u64>,
    read_wait_ms: Option<u64>,
    queue_depth: Option<usize>,
    queue_timeout_ms: Option<u64>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    max_login_failures: Option<u32>,
    session_ttl_s: Option<u64>,
    argon2_memory_kib: Option<u32>,
    argon2_iterations: Option<u32>,
    argon2_parallelism: Option<u32>,
    pin_hash_concurrency: Option<usize>,
}

fn bad(msg: impl Into<String>) -> NodeError {
    NodeError::Config(msg.into())
}

/// A setting `what` that a library refused with `source`.
fn refused<E>(what: impl Into<String>) -> impl FnOnce(E) -> NodeError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    move |source| NodeError::Setting {
        what,
        source: Box::new(source),
    }
}

/// `value` if it lies in `range`, else an error naming `field`.
fn in_range<T>(field: &str, value: T, range: std::ops::RangeInclusive<T>) -> Result<T>
where
    T: PartialOrd + fmt::Display + Copy,
{
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(bad(format!(
            "{field} = {value} is out of range ({}..={})",
            range.start(),
            range.end()
        )))
    }
}

fn millis(field: &str, value: u64, range: std::ops::RangeInclusive<u64>) -> Result<Duration> {
    in_range(field, value, range).map(Duration::from_millis)
}

/// A setting of a `[section]`: the configured value, or the default when absent, in `range`.
fn setting<T>(field: &str, raw: Option<T>, default: T, range: RangeInclusive<T>) -> Result<T>
where
    T: PartialOrd + fmt::Display + Copy,
{
    in_range(field, raw.unwrap_or(default), range)
}

/// [`setting`] for a duration configured in milliseconds (`*_ms`).
fn setting_ms(
    field: &str,
    raw: Option<u64>,
    default: Duration,
    range: RangeInclusive<u64>,
) -> Result<Duration> {
    let default = u64::try_from(default.as_millis()).unwrap_or(u64::MAX);
    millis(field, raw.unwrap_or(default), range)
}

/// Two durations that must stand in `relation` (`holds` says whether they do): the error
/// names both settings and their values in milliseconds.
fn ordered(a: (&str, Duration), relation: &str, b: (&str, Duration), holds: bool) -> Result<()> {
    if holds {
        return Ok(());
    }
    Err(bad(format!(
        "{} ({}) must be {relation} {} ({})",
        a.0,
        a.1.as_millis(),
        b.0,
        b.1.as_millis()
    )))
}

fn resolve(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        base.join(p)
    }
}

fn path_field(field: &str, p: Option<PathBuf>, base: &Path) -> Result<PathBuf> {
    match p {
        Some(p) if !p.as_os_str().is_empty() => Ok(resolve(base, p)),
        Some(_) => Err(bad(format!("{field} must not be empty"))),
        None => Err(bad(format!("{field} is missing"))),
    }
}

/// One line for a TOML error: the message and where it is.
fn toml_error(text: &str, e: &toml::de::Error) -> NodeError {
    let message = e.message().trim().replace('\n', "; ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            bad(format!("line {line}, column {col}: {message}"))
        }
        None => bad(message),
    }
}

impl Config {
    /// Reads and parses the configuration file at `path`.
    ///
    /// # Errors
    /// [`NodeError::Config`] or [`NodeError::Setting`] with one line naming the file and the
    /// problem.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(refused(format!("cannot read {}", path.display())))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base).map_err(|e| match e {
            NodeError::Config(m) => bad(format!("{}: {m}", path.display())),
            NodeError::Setting { what, source } => NodeError::Setting {
                what: format!("{}: {what}", path.display()),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates a configuration; relative paths are resolved against `base`. No
    /// I/O.
    ///
    /// # Errors
    /// [`NodeError::Config`] naming the first field in error ([`NodeError::Setting`] when
    /// argon2 refuses the parameters).
    pub fn parse(text: &str, base: &Path) -> Result<Self> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;

        let id = raw.id.ok_or_else(|| bad("id is missing"))?;
        if id == 0 {
            return Err(bad("id must be at least 1"));
        }
        let listen_text = raw.listen.ok_or_else(|| bad("listen is missing"))?;
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            bad(format!(
                "listen = {listen_text:?} is not an IP address and port (e.g. \"127.0.0.1:7301\")"
            ))
        })?;
        let data_dir = path_field("data_dir", raw.data_dir, base)?;
        let tls = raw.tls.ok_or_else(|| bad("[tls] is missing"))?;
        let tls = TlsPaths {
            ca: path_field("tls.ca", tls.ca, base)?,
            cert: path_field("tls.cert", tls.cert, base)?,
            key: path_field("tls.key", tls.key, base)?,
        };
        let runtime_threads = match raw.runtime_threads {
            Some(n) => in_range("runtime_threads", n, 1..=MAX_RUNTIME_THREADS)?,
            None => default_runtime_threads(),
        };
        let audit_interval = millis(
            "audit.interval_ms",
            raw.audit.interval_ms.unwrap_or(10_000),
            100..=3_600_000,
        )?;
        let notifier = parse_notifier(raw.notifier, base)?;
        let chips = parse_chips(raw.chips, base)?;
        let raft = parse_raft(raw.raft)?;
        let limits = parse_limits(raw.limits)?;
        let security = parse_security(raw.security)?;
        Ok(Self {
            id,
            listen,
            data_dir,
            runtime_threads,
            audit_interval,
            notifier,
            tls,
            chips,
            raft,
            limits,
            security,
        })
    }

    /// Loads what the configuration names on disk and checks it: the TLS material (the
    /// certificate must be a node certificate of this node's id) and the NVRAM key, found with
    /// [`Config::nvram_key_file`] (`$CREDENTIALS_DIRECTORY` for a credential) and held to the
    /// [rule](self#the-soft-chips-nvram-key) unless `dev_keys` allows it.
    ///
    /// # Errors
    /// [`NodeError::Config`] or [`NodeError::Setting`] (the TLS files, the NVRAM key file),
    /// with one line.
    pub fn prepare(&self, dev_keys: DevKeys) -> Result<Prepared> {
        use cloudkey_protocol::tls::{Role, TlsFiles, TlsMaterial};

        let files = TlsFiles {
            ca: self.tls.ca.clone(),
            cert: self.tls.cert.clone(),
            key: self.tls.key.clone(),
        };
        let tls = TlsMaterial::load(&files).map_err(refused("tls"))?;
        match tls.identity() {
            Ok(identity) => match identity.role {
                Role::Node(n) if n == self.id => {}
                Role::Node(n) => {
                    return Err(bad(format!(
                        "tls.cert {} is the certificate of node {n}, but id = {}",
                        self.tls.cert.display(),
                        self.id
                    )))
                }
                _ => {
                    return Err(bad(format!(
                        "tls.cert {} is not a node certificate (its identity is {})",
                        self.tls.cert.display(),
                        identity.name
                    )))
                }
            },
            Err(e) => return Err(refused(format!("tls.cert {}", self.tls.cert.display()))(e)),
        }
        let credentials = std::env::var_os(CREDENTIALS_DIRECTORY);
        let nvram_key = self
            .nvram_key_file(credentials.as_deref(), dev_keys)?
            .map(|(source, file)| read_nvram_key(source.setting(), &file))
            .transpose()?;
        Ok(Prepared { tls, nvram_key })
    }

    /// The NVRAM key's source, the first one of a soft chip (they are all the same).
    #[must_use]
    pub fn nvram_key_source(&self) -> Option<&NvramKeySource> {
        self.chips.iter().find_map(|c| match c {
            ChipSpec::Soft {
                nvram_key: Some(k), ..
            } => Some(k),
            _ => None,
        })
    }

    /// The file the soft chips' NVRAM key is read from, held to the
    /// [rule](self#the-soft-chips-nvram-key): its real path (absolute, every symbolic link
    /// followed) with its source, or `None` when no soft chip has a key. `credentials_dir` is
    /// the value of `$CREDENTIALS_DIRECTORY`. A key inside `data_dir` is refused, or with
    /// [`DevKeys::AllowInsecure`] accepted with one warning in the log.
    ///
    /// # Errors
    /// [`NodeError::Config`] for a key inside `data_dir` (one line naming the setting, the
    /// key's path and `data_dir`) or a credential without a credentials directory;
    /// [`NodeError::Setting`] when the key's file cannot be resolved (it does not exist).
    pub fn nvram_key_file(
        &self,
        credentials_dir: Option<&std::ffi::OsStr>,
        dev_keys: DevKeys,
    ) -> Result<Option<(&NvramKeySource, PathBuf)>> {
        let Some(source) = self.nvram_key_source() else {
            return Ok(None);
        };
        let file = source.file(credentials_dir)?;
        let real = std::fs::canonicalize(&file).map_err(|e| NodeError::Setting {
            what: source.setting().into(),
            source: Box::new(std::io::Error::new(
                e.kind(),
                format!("cannot read NVRAM key file {}: {e}", file.display()),
            )),
        })?;
        let data_dir = real_path(&self.data_dir).map_err(refused(format!(
            "data_dir {}: cannot resolve it",
            self.data_dir.display()
        )))?;
        if !real.starts_with(&data_dir) {
            return Ok(Some((source, real)));
        }
        let shown = |given: &Path, real: &Path| {
            if given == real {
                given.display().to_string()
            } else {
                format!("{} (resolved: {})", given.display(), real.display())
            }
        };
        let key = match source {
            NvramKeySource::File(_) => format!("nvram_key_file {}", shown(&file, &real)),
            NvramKeySource::Credential(_) => {
                format!("{} at {}", source.describe(), shown(&file, &real))
            }
        };
        let dir = shown(&self.data_dir, &data_dir);
        match dev_keys {
            DevKeys::Refuse => Err(bad(format!(
                "{key} is inside data_dir {dir}: a copy of the data directory would carry the key \
                 that unseals the soft chips; keep the key outside data_dir (a file elsewhere, or \
                 nvram_key_credential), or start with --insecure-dev-keys (development only)"
            ))),
            DevKeys::AllowInsecure => {
                tracing::warn!(
                    "--insecure-dev-keys: {key} is inside data_dir {dir}; whoever has a copy \
                     of the data directory can unseal the soft chips' NVRAM (development only)"
                );
                Ok(Some((source, real)))
            }
        }
    }
}

/// `p` made absolute with every symbolic link followed, like [`std::fs::canonicalize`], but
/// also for a path that does not exist (yet): components are resolved from the root one by
/// one, and one that does not exist is kept as written (a `..` after it returns to its real
/// parent).
///
/// # Errors
/// When the working directory is unknown, or a component cannot be resolved for another
/// reason than its absence (a permission, a loop of links).
pub fn real_path(p: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let mut real = PathBuf::new();
    for c in std::path::absolute(p)?.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => real.push(c.as_os_str()),
            Component::CurDir => {}
            Component::ParentDir => {
                real.pop();
            }
            Component::Normal(name) => {
                real.push(name);
                match std::fs::canonicalize(&real) {
                    Ok(r) => real = r,
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                        ) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(real)
}

fn parse_chips(raw: Vec<RawChip>, base: &Path) -> Result<Vec<ChipSpec>> {
    if raw.is_empty() {
        return Err(bad("no [[chips]]: a node needs at least one chip"));
    }
    let mut chips = Vec::new();
    let mut soft_index = 0usize;
    let mut nvram_key: Option<NvramKeySource> = None;
    for (i, c) in raw.into_iter().enumerate() {
        let at = format!("chips[{i}]");
        let kind = c
            .kind
            .as_deref()
            .ok_or_else(|| bad(format!("{at}.kind is missing (\"soft\" or \"serial\")")))?;
        let reject = |field: &str, given: bool| -> Result<()> {
            if given {
                Err(bad(format!(
                    "{at}.{field} does not apply to kind = \"{kind}\""
                )))
            } else {
                Ok(())
            }
        };
        match kind {
            "soft" => {
                reject("path", c.path.is_some())?;
                reject("baud", c.baud.is_some())?;
                reject("timeout_ms", c.timeout_ms.is_some())?;
                reject("retries", c.retries.is_some())?;
                let count = in_range(
                    &format!("{at}.count"),
                    c.count.unwrap_or(1),
                    1..=MAX_CHIPS as u32,
                )?;
                let slots = in_range(&format!("{at}.slots"), c.slots.unwrap_or(64), 1..=65_535)?;
                let latency_us = in_range(
                    &format!("{at}.latency_us"),
                    c.latency_us.unwrap_or(0),
                    0..=1_000_000,
                )?;
                let source = nvram_key_source(&at, c.nvram_key_file, c.nvram_key_credential, base)?;
                // One key seals every soft chip of the node: the node reads one key.
                if let Some(f) = &source {
                    match &nvram_key {
                        Some(first) if first != f => {
                            return Err(bad(format!(
                                "{at}.{} differs from an earlier entry's NVRAM key; use one \
                                 key for all soft chips",
                                f.setting()
                            )))
                        }
                        _ => nvram_key = Some(f.clone()),
                    }
                }
                for _ in 0..count {
                    chips.push(ChipSpec::Soft {
                        soft_index,
                        slots,
                        latency: (latency_us > 0).then(|| Duration::from_micros(latency_us)),
                        nvram_key: source.clone(),
                    });
                    soft_index += 1;
                }
            }
            "serial" => {
                reject("count", c.count.is_some())?;
                reject("slots", c.slots.is_some())?;
                reject("latency_us", c.latency_us.is_some())?;
                reject("nvram_key_file", c.nvram_key_file.is_some())?;
                reject("nvram_key_credential", c.nvram_key_credential.is_some())?;
                let path = c
                    .path
                    .filter(|p| !p.is_empty())
                    .ok_or_else(|| bad(format!("{at}.path is missing")))?;
                let baud = in_range(
                    &format!("{at}.baud"),
                    c.baud.unwrap_or(cloudkey_chip::serial::DEFAULT_BAUD),
                    50..=4_000_000,
                )?;
                let timeout = c
                    .timeout_ms
                    .map(|t| millis(&format!("{at}.timeout_ms"), t, 1..=60_000))
                    .transpose()?;
                let retries = in_range(
                    &format!("{at}.retries"),
                    c.retries.unwrap_or(cloudkey_chip::serial::DEFAULT_RETRIES),
                    1..=10,
                )?;
                chips.push(ChipSpec::Serial {
                    path,
                    baud,
                    timeout,
                    retries,
                });
            }
            other => {
                return Err(bad(format!(
                    "{at}.kind = {other:?} is unknown (\"soft\" or \"serial\")"
                )))
            }
        }
        if chips.len() > MAX_CHIPS {
            return Err(bad(format!("more than {MAX_CHIPS} chips")));
        }
    }
    Ok(chips)
}

/// A soft chip entry's NVRAM key source: at most one of `nvram_key_file` and
/// `nvram_key_credential`.
fn nvram_key_source(
    at: &str,
    file: Option<PathBuf>,
    credential: Option<String>,
    base: &Path,
) -> Result<Option<NvramKeySource>> {
    match (file, credential) {
        (Some(_), Some(_)) => Err(bad(format!(
            "{at}.nvram_key_file and {at}.nvram_key_credential exclude each other: choose one"
        ))),
        (Some(p), None) if p.as_os_str().is_empty() => {
            Err(bad(format!("{at}.nvram_key_file must not be empty")))
        }
        (Some(p), None) => Ok(Some(NvramKeySource::File(resolve(base, p)))),
        (None, Some(name)) => {
            // systemd's rule for credential names: a file name of printable ASCII without ':'.
            let valid = (1..=255).contains(&name.len())
                && name != "."
                && name != ".."
                && name
                    .bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'/' && b != b':');
            if valid {
                Ok(Some(NvramKeySource::Credential(name)))
            } else {
                Err(bad(format!(
                    "{at}.nvram_key_credential = {name:?} is not a credential name (1 to 255 \
                     printable ASCII characters, no '/' or ':', not \".\" or \"..\")"
                )))
            }
        }
        (None, None) => Ok(None),
    }
}

fn parse_raft(r: RawRaft) -> Result<RaftSettings> {
    let d = RaftSettings::default();
    let heartbeat = setting_ms(
        "raft.heartbeat_ms",
        r.heartbeat_ms,
        d.heartbeat,
        10..=10_000,
    )?;
    let election_min = setting_ms(
        "raft.election_min_ms",
        r.election_min_ms,
        d.election_min,
        20..=60_000,
    )?;
    let election_max = setting_ms(
        "raft.election_max_ms",
        r.election_max_ms,
        d.election_max,
        20..=60_000,
    )?;
    // A follower must hear at least two heartbeats before it may start an election.
    ordered(
        ("raft.election_min_ms", election_min),
        "at least twice",
        ("raft.heartbeat_ms", heartbeat),
        election_min >= heartbeat * 2,
    )?;
    ordered(
        ("raft.election_max_ms", election_max),
        "greater than",
        ("raft.election_min_ms", election_min),
        election_max > election_min,
    )?;
    let staleness_bound = setting_ms(
        "raft.staleness_bound_ms",
        r.staleness_bound_ms,
        d.staleness_bound,
        50..=60_000,
    )?;
    // A confirmation takes a heartbeat round; the bound must leave room for several.
    ordered(
        ("raft.staleness_bound_ms", staleness_bound),
        "at least twice",
        ("raft.heartbeat_ms", heartbeat),
        staleness_bound >= heartbeat * 2,
    )?;
    Ok(RaftSettings {
        heartbeat,
        election_min,
        election_max,
        staleness_bound,
        snapshot_logs: setting(
            "raft.snapshot_logs",
            r.snapshot_logs,
            d.snapshot_logs,
            10..=10_000_000,
        )?,
    })
}

fn parse_limits(r: RawLimits) -> Result<Limits> {
    let d = Limits::default();
    let max_connections = setting(
        "limits.max_connections",
        r.max_connections,
        d.max_connections,
        1..=1_000_000,
    )?;
    let max_streams = setting(
        "limits.max_streams",
        r.max_streams,
        d.max_streams,
        1..=65_535,
    )?;
    // A tokio semaphore holds at most `usize::MAX >> 3` permits; far beyond any sane bound.
    let max_inflight = setting(
        "limits.max_inflight",
        r.max_inflight,
        d.max_inflight,
        1..=1_000_000,
    )?;
    let request_deadline = setting_ms(
        "limits.request_deadline_ms",
        r.request_deadline_ms,
        d.request_deadline,
        100..=600_000,
    )?;
    let admin_deadline = setting_ms(
        "limits.admin_deadline_ms",
        r.admin_deadline_ms,
        d.admin_deadline,
        1_000..=3_600_000,
    )?;
    let read_wait = setting_ms(
        "limits.read_wait_ms",
        r.read_wait_ms,
        d.read_wait,
        0..=600_000,
    )?;
    ordered(
        ("limits.read_wait_ms", read_wait),
        "less than",
        ("limits.request_deadline_ms", request_deadline),
        read_wait < request_deadline,
    )?;
    let queue_depth = setting(
        "limits.queue_depth",
        r.queue_depth,
        d.queue_depth,
        1..=100_000,
    )?;
    let queue_timeout = setting_ms(
        "limits.queue_timeout_ms",
        r.queue_timeout_ms,
        d.queue_timeout,
        1..=600_000,
    )?;
    Ok(Limits {
        max_connections,
        max_streams,
        max_inflight,
        request_deadline,
        admin_deadline,
        read_wait,
        queue_depth,
        queue_timeout,
    })
}

fn parse_security(r: RawSecurity) -> Result<Security> {
    let d = Security::default();
    let max_login_failures = setting(
        "security.max_login_failures",
        r.max_login_failures,
        d.max_login_failures,
        1..=100,
    )?;
    let session_ttl = Duration::from_secs(setting(
        "security.session_ttl_s",
        r.session_ttl_s,
        d.session_ttl.as_secs(),
        1..=3600,
    )?);
    let argon2_parallelism = setting(
        "security.argon2_parallelism",
        r.argon2_parallelism,
        d.argon2_parallelism,
        1..=16,
    )?;
    let argon2_memory_kib = setting(
        "security.argon2_memory_kib",
        r.argon2_memory_kib,
        d.argon2_memory_kib,
        // argon2 needs 8 KiB per lane; 1 GiB per hash is more than any PIN deserves.
        8 * argon2_parallelism..=1 << 20,
    )?;
    let argon2_iterations = setting(
        "security.argon2_iterations",
        r.argon2_iterations,
        d.argon2_iterations,
        1..=100,
    )?;
    let pin_hash_concurrency = setting(
        "security.pin_hash_concurrency",
        r.pin_hash_concurrency,
        d.pin_hash_concurrency,
        1..=64,
    )?;
    argon2::Params::new(
        argon2_memory_kib,
        argon2_iterations,
        argon2_parallelism,
        None,
    )
    .map_err(refused("security.argon2_*"))?;
    Ok(Security {
        max_login_failures,
        session_ttl,
        argon2_memory_kib,
        argon2_iterations,
        argon2_parallelism,
        pin_hash_concurrency,
    })
}

/// Reads the nvram key given by `setting`: exactly 32 raw bytes, or 64 hex digits
/// (surrounding whitespace ignored).
fn read_nvram_key(setting: &str, path: &Path) -> Result<SecretBytes> {
    warn_if_exposed(path);
    cloudkey_chip::nvram::read_key_file(path).map_err(refused(setting))
}

/// A key file others can read is a configuration mistake worth a warning (not a refusal: the
/// operator may protect the directory instead); so is one with other names (hard links), which
/// the data_dir rule does not see.
fn warn_if_exposed(path: &Path) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "nvram key file is readable by group or others; chmod 600 it"
            );
        }
        if meta.nlink() > 1 {
            tracing::warn!(
                path = %path.display(),
                links = meta.nlink(),
                "nvram key file has other names (hard links); make sure none is in a data directory"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        id = 3
        listen = "127.0.0.1:0"
        data_dir = "data"
        [tls]
        ca = "/pki/ca.pem"
        cert = "node-3.pem"
        key = "node-3.key"
        [[chips]]
        kind = "soft"
    "#;

    fn parse(text: &str) -> Result<Config> {
        Config::parse(text, Path::new("/etc/ck"))
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(c) => panic!("accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    /// TLS files that cannot be loaded are refused in one line, `tls: <why>`, as before, and
    /// the TLS error is kept as the cause.
    #[test]
    fn unloadable_tls_files_are_refused_with_their_cause() {
        let c = parse(MINIMAL).expect("minimal");
        let e = match c.prepare(DevKeys::Refuse) {
            Ok(_) => panic!("missing TLS files accepted"),
            Err(e) => e,
        };
        let text = e.to_string();
        assert!(text.starts_with("tls: "), "{text}");
        assert!(!text.contains('\n'), "{text:?} is one line");
        let source = std::error::Error::source(&e).expect("a cause");
        assert!(
            source.is::<cloudkey_protocol::tls::TlsError>(),
            "{source:?}"
        );
    }

    #[test]
    fn minimal_config_gets_defaults_and_resolved_paths() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.id, 3);
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/etc/ck/data"));
        assert_eq!(c.runtime_threads, default_runtime_threads());
        assert_eq!(c.tls.ca, PathBuf::from("/pki/ca.pem"));
        assert_eq!(c.tls.cert, PathBuf::from("/etc/ck/node-3.pem"));
        assert_eq!(
            c.chips,
            vec![ChipSpec::Soft {
                soft_index: 0,
                slots: 64,
                latency: None,
                nvram_key: None
            }]
        );
        assert_eq!(c.raft, RaftSettings::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.security, Security::default());
        assert_eq!(c.notifier, None);
    }

    #[test]
    fn notifiers() {
        let c = parse(&format!("{MINIMAL}\n[notifier]\nsms_file = \"sms.log\"")).unwrap();
        assert_eq!(
            c.notifier,
            Some(NotifierSpec::File("/etc/ck/sms.log".into()))
        );
        let c = parse(&format!(
            "{MINIMAL}\n[notifier]\ncommand = [\"bin/send-sms\", \"--route\", \"a b\"]"
        ))
        .unwrap();
        assert_eq!(
            c.notifier,
            Some(NotifierSpec::Command {
                program: "/etc/ck/bin/send-sms".into(),
                args: vec!["--route".into(), "a b".into()],
                timeout: Duration::from_secs(10),
            })
        );
        let c = parse(&format!(
            "{MINIMAL}\n[notifier]\ncommand = [\"/usr/bin/sms\"]\ntimeout_ms = 2500"
        ))
        .unwrap();
        assert!(matches!(
            c.notifier,
            Some(NotifierSpec::Command { timeout, .. }) if timeout == Duration::from_millis(2500)
        ));
        for (text, want) in [
            ("sms_file = \"x\"\ncommand = [\"y\"]", "exclude each other"),
            ("command = []", "must name a program"),
            ("command = [\"\"]", "must name a program"),
            ("sms_file = \"\"", "must not be empty"),
            ("timeout_ms = 100", "command only"),
            ("sms_file = \"x\"\ntimeout_ms = 100", "command only"),
            ("command = [\"y\"]\ntimeout_ms = 0", "notifier.timeout_ms"),
        ] {
            let e = err(&format!("{MINIMAL}\n[notifier]\n{text}"));
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn full_config() {
        let text = r#"
            id = 1
            listen = "[::1]:7301"
            data_dir = "/var/lib/ck"
            runtime_threads = 3
            [tls]
            ca = "/p/ca.pem"
            cert = "/p/n.pem"
            key = "/p/n.key"
            [[chips]]
            kind = "soft"
            count = 2
            slots = 8
            latency_us = 250
            nvram_key_file = "/p/nv.key"
            [[chips]]
            kind = "serial"
            path = "/dev/pts/7"
            baud = 9600
            timeout_ms = 300
            [raft]
            heartbeat_ms = 50
            election_min_ms = 150
            election_max_ms = 300
            snapshot_logs = 100
            [limits]
            max_streams = 16
            max_inflight = 32
            request_deadline_ms = 1000
            read_wait_ms = 500
            queue_depth = 4
            queue_timeout_ms = 100
            [security]
            max_login_failures = 3
            session_ttl_s = 60
            argon2_memory_kib = 64
            argon2_iterations = 1
            argon2_parallelism = 1
        "#;
        let c = parse(text).unwrap();
        assert_eq!(c.chips.len(), 3);
        assert_eq!(
            c.chips[1],
            ChipSpec::Soft {
                soft_index: 1,
                slots: 8,
                latency: Some(Duration::from_micros(250)),
                nvram_key: Some(NvramKeySource::File("/p/nv.key".into()))
            }
        );
        assert_eq!(
            c.chips[2],
            ChipSpec::Serial {
                path: "/dev/pts/7".into(),
                baud: 9600,
                timeout: Some(Duration::from_millis(300)),
                retries: cloudkey_chip::serial::DEFAULT_RETRIES
            }
        );
        assert_eq!(c.runtime_threads, 3);
        assert_eq!(c.raft.heartbeat, Duration::from_millis(50));
        assert_eq!(c.limits.max_inflight, 32);
        assert_eq!(c.security.session_ttl, Duration::from_secs(60));
    }

    #[test]
    fn nvram_key_sources() {
        let soft = |extra: &str| format!("{MINIMAL}count = 2\n{extra}");
        let c = parse(&soft("nvram_key_credential = \"cloudkey-nvram\"")).unwrap();
        let want = Some(NvramKeySource::Credential("cloudkey-nvram".into()));
        assert!(c
            .chips
            .iter()
            .all(|chip| matches!(chip, ChipSpec::Soft { nvram_key, .. } if *nvram_key == want)));
        assert_eq!(c.nvram_key_source(), want.as_ref());
        let c = parse(&soft("nvram_key_file = \"keys/nv.key\"")).unwrap();
        assert_eq!(
            c.nvram_key_source(),
            Some(&NvramKeySource::File("/etc/ck/keys/nv.key".into()))
        );
        assert_eq!(parse(MINIMAL).unwrap().nvram_key_source(), None);
        for (extra, want) in [
            (
                "nvram_key_file = \"k\"\nnvram_key_credential = \"k\"",
                "chips[0].nvram_key_file and chips[0].nvram_key_credential exclude each other",
            ),
            ("nvram_key_credential = \"\"", "is not a credential name"),
            ("nvram_key_credential = \"a/b\"", "is not a credential name"),
            ("nvram_key_credential = \"..\"", "is not a credential name"),
            ("nvram_key_credential = \"a:b\"", "is not a credential name"),
            (
                "nvram_key_credential = \"tab\\t\"",
                "is not a credential name",
            ),
            ("nvram_key_file = \"\"", "nvram_key_file must not be empty"),
        ] {
            let e = err(&soft(extra));
            assert!(e.contains(want), "{e:?} should mention {want:?}");
            assert!(!e.contains('\n'), "{e:?} is one line");
        }
        let two = format!(
            "{MINIMAL}nvram_key_file = \"k\"\n[[chips]]\nkind = \"soft\"\n\
             nvram_key_credential = \"k\""
        );
        assert!(err(&two).contains("chips[1].nvram_key_credential differs"));
        let serial = MINIMAL.replace(
            "kind = \"soft\"",
            "kind = \"serial\"\npath = \"/dev/x\"\nnvram_key_credential = \"k\"",
        );
        assert!(err(&serial).contains("chips[0].nvram_key_credential does not apply"));
    }

    /// The rule: the key's real path must not be in data_dir's real path. Inside, through a
    /// symlink (of the key or of data_dir), with `..` in a relative path: refused naming the
    /// setting and both paths, accepted with `DevKeys::AllowInsecure`. Next to data_dir, in a
    /// sibling whose name extends data_dir's, or before data_dir exists: accepted.
    #[test]
    fn nvram_key_inside_data_dir_is_refused_unless_insecure_dev_keys() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir_all(root.join("data")).unwrap();
        std::fs::create_dir_all(root.join("data2")).unwrap();
        std::fs::create_dir_all(root.join("other")).unwrap();
        for f in ["nvram.key", "data/nvram.key", "data2/nvram.key"] {
            std::fs::write(root.join(f), [7u8; 32]).unwrap();
        }
        symlink(root.join("data/nvram.key"), root.join("link.key")).unwrap();
        symlink(root.join("data"), root.join("data-link")).unwrap();
        let config = |data_dir: &str, key: &str| {
            let text = MINIMAL
                .replace("data_dir = \"data\"", &format!("data_dir = {data_dir:?}"))
                .replace(
                    "kind = \"soft\"",
                    &format!("kind = \"soft\"\nnvram_key_file = {key:?}"),
                );
            Config::parse(&text, &root).unwrap()
        };
        let check = |data_dir: &str, key: &str, dev: DevKeys| {
            config(data_dir, key)
                .nvram_key_file(None, dev)
                .map(|k| k.map(|(_, path)| path))
        };
        // Outside: next to data_dir, a sibling named like it, data_dir not there yet.
        for (data_dir, key) in [
            ("data", "nvram.key"),
            ("data", "data/../nvram.key"),
            ("data", "data2/nvram.key"),
            ("new/data", "data/nvram.key"),
        ] {
            let got = check(data_dir, key, DevKeys::Refuse);
            let want = std::fs::canonicalize(root.join(key)).unwrap();
            assert_eq!(got.unwrap(), Some(want), "{data_dir} {key}");
        }
        // Inside: directly, by a relative path with `..`, through a link to the key, through
        // a link to data_dir, and data_dir given with `..` and a part not yet created.
        let real_key = root.join("data/nvram.key");
        for (data_dir, key, shown) in [
            ("data", "data/nvram.key", "nvram_key_file /R/data/nvram.key is inside data_dir /R/data:"),
            (
                "data",
                "other/../data/nvram.key",
                "nvram_key_file /R/other/../data/nvram.key (resolved: /R/data/nvram.key) is inside",
            ),
            (
                "data",
                "link.key",
                "nvram_key_file /R/link.key (resolved: /R/data/nvram.key) is inside data_dir /R/data:",
            ),
            (
                "data-link",
                "data/nvram.key",
                "is inside data_dir /R/data-link (resolved: /R/data):",
            ),
            ("other/../data", "data/nvram.key", "(resolved: /R/data):"),
            (".", "data/nvram.key", "is inside data_dir /R/.:"),
        ] {
            let e = match check(data_dir, key, DevKeys::Refuse) {
                Ok(k) => panic!("{data_dir} {key}: accepted as {k:?}"),
                Err(e) => e.to_string(),
            };
            let shown = shown.replace("/R", &root.display().to_string());
            assert!(e.contains(&shown), "{e:?} should say {shown:?}");
            assert!(e.contains("--insecure-dev-keys"), "{e:?}");
            assert!(!e.contains('\n'), "{e:?} is one line");
            let allowed = check(data_dir, key, DevKeys::AllowInsecure).unwrap();
            assert_eq!(allowed, Some(real_key.clone()), "{data_dir} {key}");
        }
        // A key file that does not exist: the read error, naming the setting.
        let e = check("data", "missing.key", DevKeys::Refuse)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("nvram_key_file: cannot read NVRAM key file"),
            "{e}"
        );
    }

    /// `nvram_key_credential` reads `$CREDENTIALS_DIRECTORY/NAME`, is refused without the
    /// variable, and is held to the same rule.
    #[test]
    fn nvram_key_credential_needs_credentials_directory_outside_data_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        for dir in ["creds", "data/creds"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join("nv"), hex::encode([3u8; 32])).unwrap();
        }
        let text = MINIMAL.replace(
            "kind = \"soft\"",
            "kind = \"soft\"\nnvram_key_credential = \"nv\"",
        );
        let c = Config::parse(&text, &root).unwrap();
        let creds = root.join("creds");
        let (source, path) = c
            .nvram_key_file(Some(creds.as_os_str()), DevKeys::Refuse)
            .unwrap()
            .unwrap();
        assert_eq!(source.setting(), "nvram_key_credential");
        assert_eq!(path, creds.join("nv"));
        for unset in [None, Some(std::ffi::OsStr::new(""))] {
            let e = c
                .nvram_key_file(unset, DevKeys::Refuse)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(
                    "nvram_key_credential = \"nv\" needs $CREDENTIALS_DIRECTORY, which is not \
                     set (systemd sets it for a unit with LoadCredential=nv:"
                ),
                "{e}"
            );
        }
        let inside = root.join("data/creds");
        let e = c
            .nvram_key_file(Some(inside.as_os_str()), DevKeys::Refuse)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!(
                "nvram_key_credential \"nv\" at {} is inside data_dir",
                inside.join("nv").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn real_path_resolves_the_existing_prefix() {
        let tmp = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(tmp.path()).unwrap();
        std::fs::create_dir(root.join("a")).unwrap();
        std::os::unix::fs::symlink(root.join("a"), root.join("l")).unwrap();
        assert_eq!(real_path(&root.join("l")).unwrap(), root.join("a"));
        assert_eq!(real_path(&root.join("l/x/y")).unwrap(), root.join("a/x/y"));
        assert_eq!(real_path(&root.join("l/x/../y")).unwrap(), root.join("a/y"));
        assert_eq!(real_path(&root.join("x/../l/z")).unwrap(), root.join("a/z"));
        assert_eq!(real_path(&root.join("a/./b/..")).unwrap(), root.join("a"));
    }

    #[test]
    fn errors_name_the_field_on_one_line() {
        let cases: &[(&str, &str)] = &[
            ("id = 3", "id = 0"),
            ("listen = \"127.0.0.1:0\"", "listen = \"localhost:1\""),
            ("kind = \"soft\"", "kind = \"magic\""),
            ("kind = \"soft\"", "kind = \"soft\"\npath = \"/dev/x\""),
            ("kind = \"soft\"", "kind = \"soft\"\ncount = 0"),
            ("kind = \"soft\"", "kind = \"serial\""),
            ("id = 3", "id = 3\nbogus = 1"),
            ("id = 3", "id = \"three\""),
            ("id = 3", "id = 3\nruntime_threads = 0"),
        ];
        let expect = [
            "id must be at least 1",
            "listen",
            "chips[0].kind",
            "chips[0].path does not apply",
            "chips[0].count = 0",
            "chips[0].path is missing",
            "bogus",
            "line 2",
            "runtime_threads = 0 is out of range",
        ];
        for ((from, to), want) in cases.iter().zip(expect) {
            let e = err(&MINIMAL.replace(from, to));
            assert!(e.contains(want), "{e:?} should mention {want:?}");
            assert!(!e.contains('\n'), "{e:?} is one line");
        }
        assert!(err(&MINIMAL.replace("[[chips]]\n        kind = \"soft\"", "")).contains("chips"));
        assert!(err(&format!("{MINIMAL}\n[raft]\nheartbeat_ms = 300")).contains("twice"));
        assert!(err(&format!("{MINIMAL}\n[limits]\nread_wait_ms = 9000")).contains("read_wait"));
        assert!(
            err(&format!("{MINIMAL}\n[security]\nargon2_memory_kib = 4"))
                .contains("argon2_memory_kib")
        );
    }

    /// The settings of `[raft]`, `[limits]` and `[security]` share one way of being read: the
    /// default when absent, a range, and orderings between durations; the messages are exact.
    #[test]
    fn section_settings_name_the_setting_its_value_and_its_bound() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.raft, RaftSettings::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.security, Security::default());
        let with = |section: &str, line: &str| err(&format!("{MINIMAL}\n[{section}]\n{line}"));
        assert_eq!(
            with("raft", "heartbeat_ms = 300"),
            "config: raft.election_min_ms (400) must be at least twice raft.heartbeat_ms (300)"
        );
        assert_eq!(
            with("raft", "election_min_ms = 800"),
            "config: raft.election_max_ms (800) must be greater than raft.election_min_ms (800)"
        );
        assert_eq!(
            with("limits", "read_wait_ms = 5000"),
            "config: limits.read_wait_ms (5000) must be less than limits.request_deadline_ms (5000)"
        );
        assert_eq!(
            with("limits", "queue_timeout_ms = 0"),
            "config: limits.queue_timeout_ms = 0 is out of range (1..=600000)"
        );
        assert_eq!(
            with("security", "session_ttl_s = 0"),
            "config: security.session_ttl_s = 0 is out of range (1..=3600)"
        );
        assert_eq!(
            with("raft", "snapshot_logs = 9"),
            "config: raft.snapshot_logs = 9 is out of range (10..=10000000)"
        );
    }
}
