//! The replicated state and its applied view.
//!
//! Every change is a [`Command`] committed through Raft and applied, in log order and
//! deterministically, by [`State::apply`] on every node. Reads are served from the applied view
//! without locks on the hot path (`DashMap`s of `Arc`s).
//!
//! Nothing secret is ever in a command or in this state: PINs are argon2id hashes, private and
//! secret keys are chip blobs (encrypted under the domain key), and the session-grant secret is a
//! chip blob too.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cloudkey_chip::pool::PoolKey;
use cloudkey_chip::KeyBlob;
use cloudkey_protocol::audit::record_hash;
use cloudkey_protocol::msg::{ObjectId, TokenId, UserType};
use cloudkey_protocol::ErrorCode;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{NodeError, Result};
use crate::governance::{GovCommand, GovRefusal, GovResult, Governance};

/// Cluster-wide settings fixed at `cloudkey init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Key check value of the domain key every chip of the cluster holds.
    pub domain_kcv: [u8; 8],
    /// Blob of the generic secret from which each node's chip derives the session-grant MAC key
    /// (`HMAC(secret, "cloudkey session mac v1")`).
    #[serde(with = "serde_bytes")]
    pub session_secret_blob: Vec<u8>,
    /// Failed logins that lock a PIN.
    pub max_failures: u32,
    /// Lifetime of session grants, milliseconds.
    pub session_ttl_ms: u64,
}

/// A stored PIN: an argon2id PHC string (salt and parameters included).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinHash(pub String);

impl std::fmt::Debug for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinHash(..)")
    }
}

/// A token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Id, assigned at creation (one more than the highest so far).
    pub id: TokenId,
    /// Label, unique in the cluster.
    pub label: String,
    /// SO PIN.
    pub so_pin: PinHash,
    /// User PIN, once set.
    pub user_pin: Option<PinHash>,
    /// Failed SO logins since the last success or unlock.
    pub so_failures: u32,
    /// Failed user logins since the last success or unlock.
    pub user_failures: u32,
    /// The log index of the command that created this token or last re-initialised it
    /// (`Command::CreateToken`, `Command::InitToken`); apply sets it. Session grants carry it and
    /// `service::login::verify_grant` voids a grant whose generation differs, so a login made
    /// before `C_InitToken`, or before the token was deleted and its id reused, never survives.
    #[serde(default)]
    pub generation: u64,
}

/// An object as replicated: its PKCS#11 attributes and, for private and secret keys, its chip
/// blob. Attribute values never include secret key material (`CKA_VALUE` of sensitive keys,
/// private exponents): those exist only inside the blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Id (also the id bound into the blob).
    pub id: ObjectId,
    /// Owning token.
    pub token: TokenId,
    /// `CKA_*` → value (encodings as in `cloudkey_protocol::msg`).
    pub attrs: BTreeMap<u64, Vec<u8>>,
    /// The chip blob, for keys whose secret part lives in chips.
    #[serde(with = "serde_bytes")]
    pub blob: Option<Vec<u8>>,
}

/// An object in the applied view.
#[derive(Debug)]
pub struct Object {
    /// The replicated record.
    pub record: ObjectRecord,
    /// The blob ready for the chip pool, parsed once when applied.
    pub key: Option<PoolKey>,
    /// Log index that created it (creation order for `FindObjects`).
    pub created: u64,
}

/// A replicated change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Cluster bootstrap: fixes [`ClusterInfo`]. Refused once set.
    Init(ClusterInfo),
    /// Create a token. → [`CommandResult::Token`]; `TemplateInconsistent`-like refusal
    /// ([`CommandResult::Refused`]) when the label is taken.
    CreateToken {
        /// Label.
        label: String,
        /// SO PIN hash.
        so_pin: PinHash,
        /// User PIN hash.
        user_pin: Option<PinHash>,
    },
    /// Delete a token and its objects.
    DeleteToken(TokenId),
    /// `C_InitToken`: relabel, drop the user PIN, delete every object, clear counters.
    InitToken {
        /// The token.
        token: TokenId,
        /// New label.
        label: String,
    },
    /// Set a PIN (InitPIN, SetPIN) and clear its failure counter.
    SetPin {
        /// The token.
        token: TokenId,
        /// Whose PIN.
        user: UserType,
        /// New hash.
        pin: PinHash,
    },
    /// A failed login. → [`CommandResult::Failures`].
    LoginFailed {
        /// The token.
        token: TokenId,
        /// Who.
        user: UserType,
    },
    /// A successful login after failures: clear the counter. (Not written when it is zero.)
    LoginSucceeded {
        /// The token.
        token: TokenId,
        /// Who.
        user: UserType,
    },
    /// Operator unlock: clear both counters.
    Unlock(TokenId),
    /// Create objects (a key pair is two, committed together). Refused when an id exists.
    PutObjects(Vec<ObjectRecord>),
    /// Replace some attributes of an object.
    SetAttributes {
        /// The object.
        id: ObjectId,
        /// New values.
        attrs: Vec<(u64, Vec<u8>)>,
    },
    /// Destroy an object.
    DestroyObject(ObjectId),
    /// A governance change (`crate::governance`).
    Gov(GovCommand),
    /// A quorum-guarded change: consumes approval request `approval` and applies `inner` in
    /// the same log entry, or neither (exactly once).
    Guarded {
        /// The approved request.
        approval: u64,
        /// Who runs it (must be the requester).
        requester: String,
        /// The exact parameters (must be the approved ones).
        params_hash: [u8; 32],
        /// The proposing node's clock.
        now_ms: u64,
        /// The change.
        inner: Box<Command>,
    },
}

impl Command {
    /// The command's name, for logs (never its contents).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Init(_) => "init",
            Self::CreateToken { .. } => "create_token",
            Self::DeleteToken(_) => "delete_token",
            Self::InitToken { .. } => "init_token",
            Self::SetPin { .. } => "set_pin",
            Self::LoginFailed { .. } => "login_failed",
            Self::LoginSucceeded { .. } => "login_succeeded",
            Self::Unlock(_) => "unlock",
            Self::PutObjects(_) => "put_objects",
            Self::SetAttributes { .. } => "set_attributes",
            Self::DestroyObject(_) => "destroy_object",
            Self::Gov(g) => g.kind(),
            Self::Guarded { .. } => "guarded",
        }
    }
}

/// What applying a command gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied.
    Done,
    /// The new token's id.
    Token(TokenId),
    /// After a failed login: the count and whether the PIN is now locked.
    Failures {
        /// Failed attempts so far.
        count: u32,
        /// Locked (count reached `max_failures`).
        locked: bool,
    },
    /// An approval request's id.
    Approval(u64),
    /// A TMK application's id.
    Application(u64),
    /// Applied (a counter changed and was audited), but the operation failed: code and
    /// detail.
    Failed {
        /// `ErrorCode` as u32.
        code: u32,
        /// Why.
        detail: String,
    },
    /// Not applied (the state did not allow it); the state is unchanged. Code and detail.
    Refused {
        /// `ErrorCode` as u32.
        code: u32,
        /// Why.
        detail: String,
    },
}

/// One record of the hash-chained audit log of state changes: the Raft log index of the
/// change, the previous record's hash (zeros for the first), what happened without secrets
/// (e.g. `create_token label=x id=3`), and `SHA-256(prev || index BE || summary)`
/// ([`record_hash`]). The record and its hash are the exported ones, defined once in
/// `cloudkey-protocol` for the node and the offline verifier alike.
pub type AuditRecord = cloudkey_protocol::gov::AuditEntry;

/// The applied view. Shared by the Raft state machine (which applies) and the services (which
/// read).
#[derive(Debug)]
pub struct State {
    pub(crate) cluster: RwLock<Option<ClusterInfo>>,
    pub(crate) tokens: DashMap<TokenId, Arc<Token>>,
    pub(crate) objects: DashMap<ObjectId, Arc<Object>>,
    pub(crate) audit: RwLock<Vec<AuditRecord>>,
    /// Officers, policies, approvals, terminals, the audit key.
    pub(crate) gov: RwLock<Governance>,
    pub(crate) applied: AtomicU64,
    pub(crate) applied_tx: watch::Sender<u64>,
    /// The id the next token gets. Monotonic and replicated, so a deleted token's id is never
    /// handed out again (a stale session grant can never name a newer token).
    pub(crate) next_token: AtomicU64,
}

impl Default for State {
    fn default() -> Self {
        Self {
            cluster: RwLock::new(None),
            tokens: DashMap::new(),
            objects: DashMap::new(),
            audit: RwLock::new(Vec::new()),
            gov: RwLock::new(Governance::default()),
            applied: AtomicU64::new(0),
            applied_tx: watch::Sender::new(0),
            next_token: AtomicU64::new(FIRST_TOKEN_ID),
        }
    }
}

impl State {
    /// Cluster settings, once initialised.
    #[must_use]
    pub fn cluster(&self) -> Option<ClusterInfo> {
        self.cluster.read().ok().and_then(|c| c.clone())
    }

    /// A token by id.
    #[must_use]
    pub fn token(&self, id: TokenId) -> Option<Arc<Token>> {
        self.tokens.get(&id).map(|t| t.clone())
    }

    /// A token by label.
    #[must_use]
    pub fn token_by_label(&self, label: &str) -> Option<Arc<Token>> {
        self.tokens
            .iter()
            .find(|t| t.label == label)
            .map(|t| t.clone())
    }

    /// All tokens, by id.
    #[must_use]
    pub fn tokens(&self) -> Vec<Arc<Token>> {
        let mut v: Vec<_> = self.tokens.iter().map(|t| t.clone()).collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// An object by id.
    #[must_use]
    pub fn object(&self, id: &ObjectId) -> Option<Arc<Object>> {
        self.objects.get(id).map(|o| o.clone())
    }

    /// The objects of a token, in creation order.
    #[must_use]
    pub fn objects_of(&self, token: TokenId) -> Vec<Arc<Object>> {
        let mut v: Vec<_> = self
            .objects
            .iter()
            .filter(|o| o.record.token == token)
            .map(|o| o.clone())
            .collect();
        v.sort_by_key(|o| (o.created, o.record.id));
        v
    }

    /// Every object, in creation order.
    #[must_use]
    pub fn all_objects(&self) -> Vec<Arc<Object>> {
        let mut v: Vec<_> = self.objects.iter().map(|o| o.clone()).collect();
        v.sort_by_key(|o| (o.created, o.record.id));
        v
    }

    /// The audit chain so far.
    #[must_use]
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.audit.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// Runs `f` on the governance state (a read lock; keep `f` short and never await in it).
    pub fn with_gov<T>(&self, f: impl FnOnce(&Governance) -> T) -> T {
        match self.gov.read() {
            Ok(g) => f(&g),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// True when some policy puts operations under quorum control (cheap: checked on every
    /// signature).
    #[must_use]
    pub fn has_policies(&self) -> bool {
        self.with_gov(|g| !g.policies.is_empty())
    }

    /// The last applied log index.
    #[must_use]
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// A receiver that sees every change of the applied index (for bounded read-your-writes
    /// waits).
    #[must_use]
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Builds the pool key of an object record's blob.
    pub(crate) fn pool_key(record: &ObjectRecord) -> Option<PoolKey> {
        record
            .blob
            .as_ref()
            .and_then(|b| PoolKey::new(KeyBlob(b.clone())).ok())
    }
}

/// The id of the first token of a cluster.
const FIRST_TOKEN_ID: u64 = 1;
/// The longest token label (`CK_TOKEN_INFO.label` is 32 bytes).
pub const MAX_LABEL_LEN: usize = 32;
/// Version of the [`State::snapshot_bytes`] encoding.
const SNAPSHOT_VERSION: u32 = 2;

/// Checks a whole audit chain, from its first record: the first `prev` is zeros, each record's
/// `prev` is the previous record's `hash`, each `hash` is recomputed from the record, and the
/// indexes strictly increase.
///
/// # Errors
/// The position (in `records`) of the first record that breaks the chain.
pub fn verify_chain(records: &[AuditRecord]) -> Result<(), usize> {
    let mut prev = [0u8; 32];
    let mut last_index: Option<u64> = None;
    for (pos, r) in records.iter().enumerate() {
        if r.prev != prev
            || last_index.is_some_and(|i| r.index <= i)
            || record_hash(&r.prev, r.index, &r.summary) != r.hash
        {
            return Err(pos);
        }
        prev = r.hash;
        last_index = Some(r.index);
    }
    Ok(())
}

/// The [`State::snapshot_bytes`] encoding: the version-1 fields, then (since version 2) the
/// governance state. postcard writes a nested struct's fields in place, so a version-1 snapshot
/// is exactly the bytes of its [`SnapshotBase`].
#[derive(Serialize, Deserialize)]
struct StateSnapshot {
    base: SnapshotBase,
    gov: Governance,
}

/// The fields of every snapshot version.
#[derive(Serialize, Deserialize)]
struct SnapshotBase {
    version: u32,
    cluster: Option<ClusterInfo>,
    next_token: u64,
    tokens: Vec<Token>,
    /// Records with the index that created them, in creation order.
    objects: Vec<(ObjectRecord, u64)>,
    audit: Vec<AuditRecord>,
    applied: u64,
}

/// A refusal: the command does not fit the state.
struct Refusal(ErrorCode, String);

fn refuse<T>(code: ErrorCode, detail: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(code, detail.into()))
}

/// A change that passed validation: what to report and what to audit.
struct Applied {
    result: CommandResult,
    summary: String,
}

fn user_name(user: UserType) -> &'static str {
    match user {
        UserType::So => "so",
        UserType::User => "user",
    }
}

impl State {
    /// An empty state (nothing applied).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a committed command at log `index`. Deterministic: every node applying the same
    /// log reaches the same state, results and audit chain.
    ///
    /// A command the state does not allow (unknown token or object, taken label, existing id,
    /// second `Init`, ...) gives [`CommandResult::Refused`] and leaves the state unchanged, but
    /// still advances the applied index. Every change that is made appends one
    /// [`AuditRecord`].
    ///
    /// Single writer: only the Raft state machine calls this, in log order.
    pub fn apply(&self, index: u64, cmd: &Command) -> CommandResult {
        let result = match self.try_apply(index, cmd) {
            Ok(Applied { result, summary }) => {
                // Only a barrier has nothing to say; every change has a summary.
                if !summary.is_empty() {
                    self.append_audit(index, summary);
                }
                result
            }
            Err(Refusal(code, detail)) => {
                tracing::debug!(index, kind = cmd.kind(), %code, %detail, "command refused");
                CommandResult::Refused {
                    code: code.into(),
                    detail,
                }
            }
        };
        self.set_applied(index);
        result
    }

    /// Advances the applied index for a log entry without a command (a leader's blank entry).
    pub fn mark_applied(&self, index: u64) {
        self.set_applied(index);
    }

    /// Applies a membership change at log `index`: audits it and advances the applied index.
    /// `configs` are the voter sets (two during a joint change), `nodes` every member and
    /// learner with its address.
    pub fn apply_membership(
        &self,
        index: u64,
        configs: &[BTreeSet<u64>],
        nodes: &BTreeMap<u64, String>,
    ) {
        let mut summary = String::from("membership voters=");
        for (i, c) in configs.iter().enumerate() {
            if i > 0 {
                summary.push('+');
            }
            let _ = write!(summary, "{c:?}");
        }
        summary.push_str(" nodes=");
        for (i, (id, addr)) in nodes.iter().enumerate() {
            if i > 0 {
                summary.push(',');
            }
            let _ = write!(summary, "{id}@{addr:?}");
        }
        self.append_audit(index, summary);
        self.set_applied(index);
    }

    /// Waits until this node has applied at least `index`.
    ///
    /// # Errors
    /// [`NodeError::Timeout`] when `timeout` passes first.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        if self.applied() >= index {
            return Ok(());
        }
        let mut rx = self.applied_tx.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|&a| a >= index).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            // The sender lives in `self`, so it cannot be gone while we borrow `self`.
            Ok(Err(_)) => Err(NodeError::Internal("applied index channel closed".into())),
            Err(_) => Err(NodeError::Timeout(format!(
                "log index {index} not applied within {timeout:?} (applied {})",
                self.applied()
            ))),
        }
    }

    /// The audit records with `index >= from`, at most `max` of them, in chain order.
    #[must_use]
    pub fn audit_range(&self, from: u64, max: usize) -> Vec<AuditRecord> {
        let Ok(audit) = self.audit.read() else {
            return Vec::new();
        };
        let start = audit.partition_point(|r| r.index < from);
        audit[start..].iter().take(max).cloned().collect()
    }

    /// The last audit record's index and hash (the chain head), if any.
    #[must_use]
    pub fn audit_head(&self) -> Option<(u64, [u8; 32])> {
        self.audit
            .read()
            .ok()
            .and_then(|a| a.last().map(|r| (r.index, r.hash)))
    }

    /// The whole replicated state, encoded (postcard): cluster settings, tokens, object records
    /// with their creation index, the audit chain and the applied index. Deterministic: two
    /// nodes that applied the same log give the same bytes.
    #[must_use]
    pub fn snapshot_bytes(&self) -> Vec<u8> {
        let mut tokens: Vec<Token> = self.tokens.iter().map(|t| (**t).clone()).collect();
        tokens.sort_by_key(|t| t.id);
        let objects = self
            .all_objects()
            .iter()
            .map(|o| (o.record.clone(), o.created))
            .collect();
        let snap = StateSnapshot {
            base: SnapshotBase {
                version: SNAPSHOT_VERSION,
                cluster: self.cluster(),
                next_token: self.next_token.load(Ordering::Acquire),
                tokens,
                objects,
                audit: self.audit(),
                applied: self.applied(),
            },
            gov: self.with_gov(Clone::clone),
        };
        // Serialising plain data into a Vec cannot fail.
        postcard::to_stdvec(&snap).unwrap_or_default()
    }

    /// Replaces the whole state with a [`State::snapshot_bytes`] encoding. The bytes are
    /// decoded and checked (version, audit chain, unique ids) before anything is replaced.
    ///
    /// Single writer: only the Raft state machine calls this.
    ///
    /// # Errors
    /// [`NodeError::Storage`] when the bytes do not decode or do not hold a consistent state.
    pub fn restore(&self, bytes: &[u8]) -> Result<()> {
        let (snap, gov) = match postcard::from_bytes::<StateSnapshot>(bytes) {
            Ok(s) if s.base.version == SNAPSHOT_VERSION => (s.base, s.gov),
            _ => match postcard::from_bytes::<SnapshotBase>(bytes) {
                Ok(v1) if v1.version == 1 => (v1, Governance::default()),
                Ok(other) => {
                    return Err(NodeError::Storage(format!(
                        "state snapshot version {} (expected {SNAPSHOT_VERSION})",
                        other.version
                    )))
                }
                Err(e) => {
                    return Err(NodeError::Storage(format!(
                        "state snapshot does not decode: {e}"
                    )))
                }
            },
        };
        if let Err(pos) = verify_chain(&snap.audit) {
            return Err(NodeError::Storage(format!(
                "state snapshot audit chain broken at record {pos}"
            )));
        }
        let tokens: BTreeMap<TokenId, Arc<Token>> = snap
            .tokens
            .into_iter()
            .map(|t| (t.id, Arc::new(t)))
            .collect();
        let mut objects = BTreeMap::new();
        for (record, created) in snap.objects {
            if !tokens.contains_key(&record.token) {
                return Err(NodeError::Storage(format!(
                    "state snapshot: object {} of unknown token {}",
                    record.id, record.token
                )));
            }
            let object = Object {
                key: Self::pool_key(&record),
                created,
                record,
            };
            if objects.insert(object.record.id, Arc::new(object)).is_some() {
                return Err(NodeError::Storage(
                    "state snapshot: duplicate object id".into(),
                ));
            }
        }

        if let Ok(mut c) = self.cluster.write() {
            *c = snap.cluster;
        }
        self.tokens.clear();
        for (id, t) in tokens {
            self.tokens.insert(id, t);
        }
        self.objects.clear();
        for (id, o) in objects {
            self.objects.insert(id, o);
        }
        if let Ok(mut a) = self.audit.write() {
            *a = snap.audit;
        }
        if let Ok(mut g) = self.gov.write() {
            *g = gov;
        }
        self.next_token
            .store(snap.next_token.max(FIRST_TOKEN_ID), Ordering::Release);
        self.set_applied(snap.applied);
        Ok(())
    }

    fn set_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Release);
        self.applied_tx.send_replace(index);
    }

    fn append_audit(&self, index: u64, summary: String) {
        let Ok(mut audit) = self.audit.write() else {
            // A writer panicked while holding the lock: the state is already suspect.
            tracing::error!(index, "audit chain lock poisoned");
            return;
        };
        let prev = audit.last().map_or([0u8; 32], |r| r.hash);
        let hash = record_hash(&prev, index, &summary);
        audit.push(AuditRecord {
            index,
            prev,
            summary,
            hash,
        });
    }

    fn token_or_refuse(&self, id: TokenId) -> Result<Arc<Token>, Refusal> {
        match self.token(id) {
            Some(t) => Ok(t),
            None => refuse(ErrorCode::TokenNotPresent, format!("no token {id}")),
        }
    }

    fn check_label(&self, label: &str, except: Option<TokenId>) -> Result<(), Refusal> {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return refuse(
                ErrorCode::ArgumentsBad,
                format!("a token label has 1 to {MAX_LABEL_LEN} bytes"),
            );
        }
        if self
            .tokens
            .iter()
            .any(|t| t.label == label && Some(t.id) != except)
        {
            return refuse(
                ErrorCode::TemplateInconsistent,
                format!("token label {label:?} is taken"),
            );
        }
        Ok(())
    }

    fn remove_objects_of(&self, token: TokenId) -> usize {
        let before = self.objects.len();
        self.objects.retain(|_, o| o.record.token != token);
        let removed = before - self.objects.len();
        self.prune_policies();
        removed
    }

    /// Drops the policies of keys and tokens that no longer exist (deterministic: it depends
    /// only on the state).
    fn prune_policies(&self) {
        if let Ok(mut g) = self.gov.write() {
            g.policies.retain(|scope, _| match scope {
                cloudkey_protocol::gov::PolicyScope::Key(k) => self.objects.contains_key(k),
                cloudkey_protocol::gov::PolicyScope::Token(t) => self.tokens.contains_key(t),
                cloudkey_protocol::gov::PolicyScope::Cluster => true,
            });
        }
    }

    fn update_token(&self, token: &Token) {
        self.tokens.insert(token.id, Arc::new(token.clone()));
    }

    fn try_apply(&self, index: u64, cmd: &Command) -> Result<Applied, Refusal> {
        let cluster = self.cluster();
        let Some(cluster) = cluster else {
            return match cmd {
                Command::Init(info) => {
                    if info.max_failures == 0 {
                        return refuse(ErrorCode::ArgumentsBad, "max_failures must be at least 1");
                    }
                    if let Ok(mut c) = self.cluster.write() {
                        *c = Some(info.clone());
                    }
                    Ok(Applied {
                        result: CommandResult::Done,
                        summary: format!(
                            "init domain_kcv={} max_failures={} session_ttl_ms={}",
                            hex::encode(info.domain_kcv),
                            info.max_failures,
                            info.session_ttl_ms
                        ),
                    })
                }
                _ => refuse(
                    ErrorCode::ClusterNotInitialized,
                    "the cluster is not initialised",
                ),
            };
        };
        match cmd {
            Command::Init(_) => refuse(
                ErrorCode::ActionProhibited,
                "the cluster is already initialised",
            ),
            Command::CreateToken {
                label,
                so_pin,
                user_pin,
            } => {
                self.check_label(label, None)?;
                let id = TokenId(self.next_token.fetch_add(1, Ordering::AcqRel));
                self.update_token(&Token {
                    id,
                    label: label.clone(),
                    so_pin: so_pin.clone(),
                    user_pin: user_pin.clone(),
                    so_failures: 0,
                    user_failures: 0,
                    generation: index,
                });
                Ok(Applied {
                    result: CommandResult::Token(id),
                    summary: format!(
                        "create_token id={id} label={label:?} user_pin={}",
                        if user_pin.is_some() { "set" } else { "none" }
                    ),
                })
            }
            Command::DeleteToken(id) => {
                self.token_or_refuse(*id)?;
                self.tokens.remove(id);
                let removed = self.remove_objects_of(*id);
                Ok(Applied {
                    result: CommandResult::Done,
                    summary: format!("delete_token id={id} objects={removed}"),
                })
            }
            Command::InitToken { token, label } => {
                let mut t = (*self.token_or_refuse(*token)?).clone();
                self.check_label(label, Some(*token))?;
                let removed = self.remove_objects_of(*token);
                t.label.clone_from(label);
                t.user_pin = None;
                t.so_failures = 0;
                t.user_failures = 0;
                t.generation = index;
                self.update_token(&t);
                Ok(Applied {
                    result: CommandResult::Done,
                    summary: format!("init_token id={token} label={label:?} objects={removed}"),
                })
            }
            Command::SetPin { token, user, pin } => {
                let mut t = (*self.token_or_refuse(*token)?).clone();
                match user {
                    UserType::So => {
                        t.so_pin = pin.clone();
                        t.so_failures = 0;
                    }
                    UserType::User => {
                        t.user_pin = Some(pin.clone());
                        t.user_failures = 0;
                    }
                }
                self.update_token(&t);
                Ok(Applied {
                    result: CommandResult::Done,
                    summary: format!("set_pin token={token} user={}", user_name(*user)),
                })
            }
            Command::LoginFailed { token, user } => {
                let mut t = (*self.token_or_refuse(*token)?).clone();
                let counter = match user {
                    UserType::So => &mut t.so_failures,
                    UserType::User => {
                        if t.user_pin.is_none() {
                            return refuse(
                                ErrorCode::UserPinNotInitialized,
                                format!("token {token} has no user PIN"),
                            );
                        }
                        &mut t.user_failures
                    }
                };
                *counter = counter.saturating_add(1);
                let count = *counter;
                let locked = count >= cluster.max_failures;
                self.update_token(&t);
                Ok(Applied {
                    result: CommandResult::Failures { count, locked },
                    summary: format!(
                        "login_failed token={token} user={} count={count} locked={locked}",
                        user_name(*user)
                    ),
                })
            }
            Command::LoginSucceeded { token, user } => {
                let mut t = (*self.token_or_refuse(*token)?).clone();
                match user {
                    UserType::So => t.so_failures = 0,
                    UserType::User => t.user_failures = 0,
                }
                self.update_token(&t);
                Ok(Applied {
                    result: CommandResult::Done,
                    summary: format!("login_succeeded token={token} user={}", user_name(*user)),
                })
            }
            Command::Unlock(token) => {
                let mut t = (*self.token_or_refuse(*token)?).clone();
                t.so_failures = 0;
                t.user_failures = 0;
                self.update_token(&t);
                Ok(Applied {
                    result: CommandResult::Done,
                    summary: format!("unlock token={token}"),
                })
            }
            Command::PutObjects(records) => {
                let objects = self.check_new_objects(index, &cluster, records)?;
                let mut summary = String::from("put_objects");
                for o in &objects {
                    let _ = write!(
                        summary,
                        " {}@{}{}",
                        o.record.id,
                        o.record.token,
                        if o.key.is_some() { "+blob" } else { "" }
                    );
                }
                for o in objects {
                    self.objects.insert(o.record.id, Arc::new(o));
                }
                Ok(Applied {
                    result: CommandResult::Done,
                    summary,
                })
            }
            Command::SetAttributes { id, attrs } => {
                let Some(old) = self.object(id) else {
                    return refuse(ErrorCode::ObjectHandleInvalid, format!("no object {id}"));
                };
                let mut record = old.record.clone();
                let mut types = BTreeSet::new();
                for (ty, value) in attrs {
                    record.attrs.insert(*ty, value.clone());
                    types.insert(*ty);
                }
                self.objects.insert(
                    *id,
                    Arc::new(Object {
                        record,
                        key: old.key.clone(),
                        created: old.created,
                    }),
                );
                // Attribute types only: values are the caller's business.
                let mut summary = format!("set_attributes id={id} types=");
                for (i, ty) in types.iter().enumerate() {
                    let _ = write!(summary, "{}0x{ty:x}", if i > 0 { "," } else { "" });
                }
                Ok(Applied {
                    result: CommandResult::Done,
                    summary,
                })
            }
            Command::DestroyObject(id) => match self.objects.remove(id) {
                Some((_, o)) => {
                    self.prune_policies();
                    Ok(Applied {
                        result: CommandResult::Done,
                        summary: format!("destroy_object id={id} token={}", o.record.token),
                    })
                }
                None => refuse(ErrorCode::ObjectHandleInvalid, format!("no object {id}")),
            },
            Command::Gov(g) => {
                let Ok(mut gov) = self.gov.write() else {
                    return refuse(ErrorCode::GeneralError, "governance state lock poisoned");
                };
                match gov.apply(index, g, cluster.max_failures) {
                    Ok((result, summary)) => Ok(Applied {
                        result: match result {
                            GovResult::Done => CommandResult::Done,
                            GovResult::Failures { count, locked } => {
                                CommandResult::Failures { count, locked }
                            }
                            GovResult::Approval(id) => CommandResult::Approval(id),
                            GovResult::Application(id) => CommandResult::Application(id),
                            GovResult::Failed(code, detail) => CommandResult::Failed {
                                code: code.into(),
                                detail,
                            },
                        },
                        summary,
                    }),
                    Err(GovRefusal(code, detail)) => refuse(code, detail),
                }
            }
            Command::Guarded {
                approval,
                requester,
                params_hash,
                now_ms,
                inner,
            } => {
                // Object changes, and the governance changes a `govern` rule guards.
                let guardable = match &**inner {
                    Command::Gov(g) => matches!(
                        g,
                        GovCommand::AddOfficer { .. }
                            | GovCommand::SetPolicy { .. }
                            | GovCommand::AddTerminal(_)
                    ),
                    Command::Guarded { .. } => false,
                    _ => true,
                };
                if !guardable {
                    return refuse(
                        ErrorCode::ArgumentsBad,
                        "a guarded command guards an object or governance change",
                    );
                }
                if let Err(GovRefusal(code, detail)) = self
                    .with_gov(|g| g.check_consumable(*approval, requester, params_hash, *now_ms))
                {
                    return refuse(code, detail);
                }
                let applied = self.try_apply(index, inner)?;
                if let Ok(mut gov) = self.gov.write() {
                    gov.consume(*approval, index);
                }
                Ok(Applied {
                    result: applied.result,
                    summary: format!(
                        "guarded approval={approval} requester={requester}: {}",
                        applied.summary
                    ),
                })
            }
        }
    }

    /// Validates a `PutObjects` batch and builds the objects, without changing anything.
    fn check_new_objects(
        &self,
        index: u64,
        cluster: &ClusterInfo,
        records: &[ObjectRecord],
    ) -> Result<Vec<Object>, Refusal> {
        if records.is_empty() {
            return refuse(ErrorCode::ArgumentsBad, "no objects to create");
        }
        let mut ids = BTreeSet::new();
        let mut objects = Vec::with_capacity(records.len());
        for record in records {
            self.token_or_refuse(record.token)?;
            if self.objects.contains_key(&record.id) || !ids.insert(record.id) {
                return refuse(
                    ErrorCode::TemplateInconsistent,
                    format!("object id {} exists", record.id),
                );
            }
            let key = match &record.blob {
                None => None,
                Some(blob) => {
                    let blob = KeyBlob(blob.clone());
                    let header = match blob.header() {
                        Ok(h) => h,
                        Err(e) => {
                            return refuse(
                                ErrorCode::WrappedKeyInvalid,
                                format!("object {}: blob does not parse: {e}", record.id),
                            )
                        }
                    };
                    if header.domain_kcv != cluster.domain_kcv {
                        return refuse(
                            ErrorCode::WrappedKeyInvalid,
                            format!(
                                "object {}: blob sealed under another domain (kcv {})",
                                record.id,
                                hex::encode(header.domain_kcv)
                            ),
                        );
                    }
                    Self::pool_key(record)
                }
            };
            objects.push(Object {
                record: record.clone(),
                key,
                created: index,
            });
        }
        Ok(objects)
    }
}

#[cfg(test)]
mod tests {
    use cloudkey_chip::{BlobHeader, KeyId, KeySpec, KeyType, KeyUsage, BLOB_VERSION};

    use super::*;

    const KCV: [u8; 8] = [7; 8];

    fn info() -> ClusterInfo {
        ClusterInfo {
            domain_kcv: KCV,
            session_secret_blob: vec![1, 2, 3],
            max_failures: 3,
            session_ttl_ms: 60_000,
        }
    }

    fn pin(s: &str) -> PinHash {
        PinHash(format!("$argon2id$v=19$m=8,t=1,p=1$c2FsdA${s}"))
    }

    fn blob(id: [u8; 16], kcv: [u8; 8]) -> Vec<u8> {
        let header = BlobHeader {
            version: BLOB_VERSION,
            domain_kcv: kcv,
            id: KeyId(id),
            spec: KeySpec {
                key_type: KeyType::EcP256,
                bits: 256,
            },
            usage: KeyUsage::SIGN,
        };
        let mut b = header.to_bytes().to_vec();
        b.extend_from_slice(&[0xAB; 60]);
        b
    }

    fn record(id: u8, token: TokenId, with_blob: bool) -> ObjectRecord {
        let oid = [id; 16];
        ObjectRecord {
            id: ObjectId(oid),
            token,
            attrs: BTreeMap::from([(0, 3u64.to_le_bytes().to_vec()), (3, b"label".to_vec())]),
            blob: with_blob.then(|| blob(oid, KCV)),
        }
    }

    /// A state with `Init` applied at index 1 and one token (id 1, "t1") at index 2.
    fn with_token() -> (State, TokenId) {
        let s = State::new();
        assert_eq!(s.apply(1, &Command::Init(info())), CommandResult::Done);
        let r = s.apply(
            2,
            &Command::CreateToken {
                label: "t1".into(),
                so_pin: pin("so"),
                user_pin: Some(pin("user")),
            },
        );
        let CommandResult::Token(id) = r else {
            panic!("unexpected {r:?}")
        };
        (s, id)
    }

    fn refused_code(r: &CommandResult) -> ErrorCode {
        match r {
            CommandResult::Refused { code, .. } => ErrorCode::from(*code),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_guarded_change_consumes_its_approval_in_the_same_entry_exactly_once() {
        use cloudkey_protocol::gov::{ApprovalStatus, GuardedOp, PolicyScope};
        let (s, token) = with_token();
        let gov = |i: u64, c: GovCommand| s.apply(i, &Command::Gov(c));
        for (i, n) in ["alice", "bob"].iter().enumerate() {
            let r = gov(
                3 + i as u64,
                GovCommand::AddOfficer {
                    name: (*n).into(),
                    identity: format!("operator/{n}"),
                    pin: pin(n),
                },
            );
            assert_eq!(r, CommandResult::Done);
        }
        let h = [3u8; 32];
        let r = gov(
            5,
            GovCommand::Propose {
                requester: "client/app".into(),
                op: GuardedOp::Generate,
                scope: PolicyScope::Token(token),
                description: "generate".into(),
                params_hash: h,
                quorum: 1,
                eligible: vec![],
                now_ms: 1_000,
                ttl_ms: 60_000,
            },
        );
        let CommandResult::Approval(id) = r else {
            panic!("{r:?}")
        };
        let guarded = |index: u64, obj: u8| {
            s.apply(
                index,
                &Command::Guarded {
                    approval: id,
                    requester: "client/app".into(),
                    params_hash: h,
                    now_ms: 2_000,
                    inner: Box::new(Command::PutObjects(vec![record(obj, token, true)])),
                },
            )
        };
        // Not approved yet: neither the approval nor the objects change.
        assert_eq!(refused_code(&guarded(6, 1)), ErrorCode::ApprovalRequired);
        assert!(s.object(&ObjectId([1; 16])).is_none());
        let r = gov(
            7,
            GovCommand::Approve {
                id,
                officer: "bob".into(),
                identity: "operator/bob".into(),
                params_hash: h,
                now_ms: 1_500,
            },
        );
        assert_eq!(r, CommandResult::Approval(id));
        // An inner refusal consumes nothing.
        assert_eq!(
            refused_code(&s.apply(
                8,
                &Command::Guarded {
                    approval: id,
                    requester: "client/app".into(),
                    params_hash: h,
                    now_ms: 2_000,
                    inner: Box::new(Command::DestroyObject(ObjectId([9; 16]))),
                }
            )),
            ErrorCode::ObjectHandleInvalid
        );
        assert_eq!(guarded(9, 1), CommandResult::Done);
        assert!(s.object(&ObjectId([1; 16])).is_some());
        // The same approval again (a retry, another node): refused, nothing created.
        assert_eq!(refused_code(&guarded(10, 2)), ErrorCode::ApprovalRequired);
        assert!(s.object(&ObjectId([2; 16])).is_none());
        assert_eq!(
            s.with_gov(|g| g.approvals[&id].status_at(3_000)),
            ApprovalStatus::Consumed { index: 9 }
        );
        // Governance survives a snapshot, and the chain records every step.
        let other = State::new();
        other.restore(&s.snapshot_bytes()).unwrap();
        assert_eq!(other.with_gov(Clone::clone), s.with_gov(Clone::clone));
        let audit: Vec<String> = s.audit().into_iter().map(|r| r.summary).collect();
        assert!(
            audit.iter().any(|a| a.starts_with("propose id=")),
            "{audit:?}"
        );
        assert!(
            audit.iter().any(|a| a.starts_with("approve id=")),
            "{audit:?}"
        );
        assert!(
            audit
                .iter()
                .any(|a| a.starts_with("guarded approval=") && a.contains("put_objects")),
            "{audit:?}"
        );
    }

    #[test]
    fn a_version_1_snapshot_restores_without_governance() {
        let (s, _) = with_token();
        let v1 = SnapshotBase {
            version: 1,
            cluster: s.cluster(),
            next_token: 2,
            tokens: s.tokens().iter().map(|t| (**t).clone()).collect(),
            objects: Vec::new(),
            audit: s.audit(),
            applied: s.applied(),
        };
        let other = State::new();
        other.restore(&postcard::to_stdvec(&v1).unwrap()).unwrap();
        assert_eq!(other.tokens().len(), 1);
        assert_eq!(other.with_gov(Clone::clone), Governance::default());
        // A version this code does not know is refused.
        let v9 = SnapshotBase { version: 9, ..v1 };
        assert!(State::new()
            .restore(&postcard::to_stdvec(&v9).unwrap())
            .is_err());
    }

    #[test]
    fn default_state_has_a_working_applied_channel() {
        let s = State::default();
        let rx = s.watch_applied();
        s.mark_applied(5);
        assert_eq!(*rx.borrow(), 5);
        assert_eq!(s.applied(), 5);
    }

    #[test]
    fn init_once_and_nothing_before_init() {
        let s = State::new();
        let r = s.apply(
            1,
            &Command::CreateToken {
                label: "x".into(),
                so_pin: pin("so"),
                user_pin: None,
            },
        );
        assert_eq!(refused_code(&r), ErrorCode::ClusterNotInitialized);
        assert_eq!(s.applied(), 1, "a refused command still advances applied");
        assert!(
            s.audit().is_empty(),
            "refusals change nothing, audit nothing"
        );
        assert_eq!(s.apply(2, &Command::Init(info())), CommandResult::Done);
        assert_eq!(s.cluster(), Some(info()));
        let r = s.apply(3, &Command::Init(info()));
        assert_eq!(refused_code(&r), ErrorCode::ActionProhibited);
        assert_eq!(s.audit().len(), 1);
        assert_eq!(s.applied(), 3);
    }

    #[test]
    fn token_lifecycle() {
        let (s, t1) = with_token();
        assert_eq!(t1, TokenId(1));
        // Duplicate label.
        let r = s.apply(
            3,
            &Command::CreateToken {
                label: "t1".into(),
                so_pin: pin("so"),
                user_pin: None,
            },
        );
        assert_eq!(refused_code(&r), ErrorCode::TemplateInconsistent);
        // Label bounds.
        let r = s.apply(
            4,
            &Command::CreateToken {
                label: "x".repeat(MAX_LABEL_LEN + 1),
                so_pin: pin("so"),
                user_pin: None,
            },
        );
        assert_eq!(refused_code(&r), ErrorCode::ArgumentsBad);
        let r = s.apply(
            5,
            &Command::CreateToken {
                label: "t2".into(),
                so_pin: pin("so2"),
                user_pin: None,
            },
        );
        assert_eq!(r, CommandResult::Token(TokenId(2)));
        assert_eq!(s.token_by_label("t2").map(|t| t.id), Some(TokenId(2)));
        assert_eq!(s.tokens().len(), 2);

        // Objects, then InitToken drops the user PIN and every object of that token only.
        let put = Command::PutObjects(vec![record(1, t1, true), record(2, t1, false)]);
        assert_eq!(s.apply(6, &put), CommandResult::Done);
        let put2 = Command::PutObjects(vec![record(3, TokenId(2), false)]);
        assert_eq!(s.apply(7, &put2), CommandResult::Done);
        // InitToken may not take another token's label, may keep its own.
        let r = s.apply(
            8,
            &Command::InitToken {
                token: t1,
                label: "t2".into(),
            },
        );
        assert_eq!(refused_code(&r), ErrorCode::TemplateInconsistent);
        let r = s.apply(
            9,
            &Command::InitToken {
                token: t1,
                label: "t1-new".into(),
            },
        );
        assert_eq!(r, CommandResult::Done);
        let t = s.token(t1).expect("token");
        assert_eq!(t.label, "t1-new");
        assert!(t.user_pin.is_none());
        assert!(s.objects_of(t1).is_empty());
        assert_eq!(s.objects_of(TokenId(2)).len(), 1);

        // SetPin, then DeleteToken removes its objects; the id is never reused.
        let r = s.apply(
            10,
            &Command::SetPin {
                token: t1,
                user: UserType::User,
                pin: pin("u2"),
            },
        );
        assert_eq!(r, CommandResult::Done);
        assert_eq!(
            s.token(t1).and_then(|t| t.user_pin.clone()),
            Some(pin("u2"))
        );
        assert_eq!(
            s.apply(11, &Command::DeleteToken(TokenId(2))),
            CommandResult::Done
        );
        assert!(s.token(TokenId(2)).is_none());
        assert!(s.all_objects().is_empty());
        let r = s.apply(12, &Command::DeleteToken(TokenId(2)));
        assert_eq!(refused_code(&r), ErrorCode::TokenNotPresent);
        let r = s.apply(
            13,
            &Command::CreateToken {
                label: "t3".into(),
                so_pin: pin("so"),
                user_pin: None,
            },
        );
        assert_eq!(r, CommandResult::Token(TokenId(3)));
        // Unknown tokens everywhere.
        for cmd in [
            Command::Unlock(TokenId(99)),
            Command::InitToken {
                token: TokenId(99),
                label: "z".into(),
            },
            Command::SetPin {
                token: TokenId(99),
                user: UserType::So,
                pin: pin("x"),
            },
            Command::LoginFailed {
                token: TokenId(99),
                user: UserType::So,
            },
            Command::LoginSucceeded {
                token: TokenId(99),
                user: UserType::User,
            },
            Command::PutObjects(vec![record(9, TokenId(99), false)]),
        ] {
            assert_eq!(refused_code(&s.apply(14, &cmd)), ErrorCode::TokenNotPresent);
        }
        assert_eq!(s.applied(), 14);
    }

    #[test]
    fn lockout_at_max_failures_and_counters_clear() {
        let (s, t) = with_token();
        let fail = |i, user| s.apply(i, &Command::LoginFailed { token: t, user });
        assert_eq!(
            fail(3, UserType::User),
            CommandResult::Failures {
                count: 1,
                locked: false
            }
        );
        assert_eq!(
            fail(4, UserType::User),
            CommandResult::Failures {
                count: 2,
                locked: false
            }
        );
        assert_eq!(
            fail(5, UserType::User),
            CommandResult::Failures {
                count: 3,
                locked: true
            }
        );
        assert_eq!(
            fail(6, UserType::User),
            CommandResult::Failures {
                count: 4,
                locked: true
            }
        );
        // The SO counter is separate.
        assert_eq!(
            fail(7, UserType::So),
            CommandResult::Failures {
                count: 1,
                locked: false
            }
        );
        let r = s.apply(
            8,
            &Command::LoginSucceeded {
                token: t,
                user: UserType::So,
            },
        );
        assert_eq!(r, CommandResult::Done);
        let tok = s.token(t).expect("token");
        assert_eq!((tok.so_failures, tok.user_failures), (0, 4));
        // SetPin clears its own counter.
        s.apply(
            9,
            &Command::SetPin {
                token: t,
                user: UserType::User,
                pin: pin("new"),
            },
        );
        assert_eq!(s.token(t).map(|t| t.user_failures), Some(0));
        fail(10, UserType::User);
        fail(11, UserType::So);
        assert_eq!(s.apply(12, &Command::Unlock(t)), CommandResult::Done);
        let tok = s.token(t).expect("token");
        assert_eq!((tok.so_failures, tok.user_failures), (0, 0));
        // No user PIN: a failed user login is refused.
        s.apply(
            13,
            &Command::InitToken {
                token: t,
                label: "t1".into(),
            },
        );
        assert_eq!(
            refused_code(&fail(14, UserType::User)),
            ErrorCode::UserPinNotInitialized
        );
    }

    #[test]
    fn objects() {
        let (s, t) = with_token();
        let put = Command::PutObjects(vec![record(1, t, true), record(2, t, false)]);
        assert_eq!(s.apply(3, &put), CommandResult::Done);
        let o = s.object(&ObjectId([1; 16])).expect("object");
        assert_eq!(o.created, 3);
        assert_eq!(o.key.as_ref().map(|k| k.id().0), Some([1; 16]));
        assert!(s.object(&ObjectId([2; 16])).expect("object").key.is_none());
        // Existing id, duplicates in one batch, empty batch: refused, nothing half-applied.
        let r = s.apply(
            4,
            &Command::PutObjects(vec![record(3, t, false), record(1, t, false)]),
        );
        assert_eq!(refused_code(&r), ErrorCode::TemplateInconsistent);
        assert!(s.object(&ObjectId([3; 16])).is_none());
        let r = s.apply(
            5,
            &Command::PutObjects(vec![record(4, t, false), record(4, t, false)]),
        );
        assert_eq!(refused_code(&r), ErrorCode::TemplateInconsistent);
        assert_eq!(
            refused_code(&s.apply(6, &Command::PutObjects(vec![]))),
            ErrorCode::ArgumentsBad
        );
        // Bad blobs.
        let mut bad = record(5, t, false);
        bad.blob = Some(vec![1, 2, 3]);
        let r = s.apply(7, &Command::PutObjects(vec![bad.clone()]));
        assert_eq!(refused_code(&r), ErrorCode::WrappedKeyInvalid);
        bad.blob = Some(blob([5; 16], [9; 8]));
        let r = s.apply(8, &Command::PutObjects(vec![bad]));
        assert_eq!(refused_code(&r), ErrorCode::WrappedKeyInvalid);
        // Creation order.
        assert_eq!(
            s.apply(9, &Command::PutObjects(vec![record(0, t, false)])),
            CommandResult::Done
        );
        let order: Vec<u8> = s.objects_of(t).iter().map(|o| o.record.id.0[0]).collect();
        assert_eq!(order, vec![1, 2, 0]);
        // SetAttributes.
        let r = s.apply(
            10,
            &Command::SetAttributes {
                id: ObjectId([1; 16]),
                attrs: vec![(3, b"renamed".to_vec()), (0x102, vec![1])],
            },
        );
        assert_eq!(r, CommandResult::Done);
        let o = s.object(&ObjectId([1; 16])).expect("object");
        assert_eq!(
            o.record.attrs.get(&3).map(Vec::as_slice),
            Some(&b"renamed"[..])
        );
        assert_eq!(
            o.record.attrs.get(&0x102).map(Vec::as_slice),
            Some(&[1u8][..])
        );
        assert_eq!(o.created, 3);
        assert!(o.key.is_some());
        let last = s.audit().last().cloned().expect("audit");
        assert_eq!(
            last.summary,
            format!("set_attributes id={} types=0x3,0x102", ObjectId([1; 16]))
        );
        let r = s.apply(
            11,
            &Command::SetAttributes {
                id: ObjectId([42; 16]),
                attrs: vec![],
            },
        );
        assert_eq!(refused_code(&r), ErrorCode::ObjectHandleInvalid);
        // Destroy.
        assert_eq!(
            s.apply(12, &Command::DestroyObject(ObjectId([1; 16]))),
            CommandResult::Done
        );
        assert!(s.object(&ObjectId([1; 16])).is_none());
        let r = s.apply(13, &Command::DestroyObject(ObjectId([1; 16])));
        assert_eq!(refused_code(&r), ErrorCode::ObjectHandleInvalid);
    }

    #[test]
    fn audit_chain_links_and_detects_tampering() {
        let (s, t) = with_token();
        s.mark_applied(3);
        s.apply_membership(
            4,
            &[BTreeSet::from([1, 2, 3])],
            &BTreeMap::from([(1, "a:1".to_string()), (2, "b:2".into()), (3, "c:3".into())]),
        );
        s.apply(
            5,
            &Command::LoginFailed {
                token: t,
                user: UserType::So,
            },
        );
        s.apply(6, &Command::DeleteToken(TokenId(77))); // refused: not audited
        let chain = s.audit();
        let indexes: Vec<u64> = chain.iter().map(|r| r.index).collect();
        assert_eq!(indexes, vec![1, 2, 4, 5]);
        assert_eq!(chain[0].prev, [0; 32]);
        for w in chain.windows(2) {
            assert_eq!(w[1].prev, w[0].hash);
        }
        assert!(chain[2]
            .summary
            .starts_with("membership voters={1, 2, 3} nodes=1@\"a:1\""));
        // No secrets in summaries.
        assert!(chain.iter().all(|r| !r.summary.contains("argon2")));
        assert_eq!(verify_chain(&chain), Ok(()));
        assert_eq!(s.audit_head(), Some((5, chain[3].hash)));
        assert_eq!(s.audit_range(2, 2).len(), 2);
        assert_eq!(s.audit_range(3, 10)[0].index, 4);

        let mut bad = chain.clone();
        bad[1].summary.push('!');
        assert_eq!(verify_chain(&bad), Err(1));
        let mut bad = chain.clone();
        bad.remove(2);
        assert_eq!(verify_chain(&bad), Err(2));
        let mut bad = chain.clone();
        bad[3].index = 1;
        assert_eq!(verify_chain(&bad), Err(3));
        let mut bad = chain.clone();
        bad[0].prev = [1; 32];
        assert_eq!(verify_chain(&bad), Err(0));
        // Recomputing one record's hash still breaks the link to the next.
        let mut bad = chain;
        bad[1].summary = "create_token id=1 label=\"evil\" user_pin=set".into();
        bad[1].hash = record_hash(&bad[1].prev, bad[1].index, &bad[1].summary);
        assert_eq!(verify_chain(&bad), Err(2));
    }

    #[test]
    fn snapshot_round_trip() {
        let (s, t) = with_token();
        s.apply(
            3,
            &Command::PutObjects(vec![record(1, t, true), record(2, t, false)]),
        );
        s.apply(
            4,
            &Command::LoginFailed {
                token: t,
                user: UserType::User,
            },
        );
        s.apply(5, &Command::DeleteToken(TokenId(50))); // refused
        let bytes = s.snapshot_bytes();

        let r = State::new();
        r.restore(&bytes).expect("restore");
        assert_eq!(r.applied(), 5);
        assert_eq!(r.cluster(), s.cluster());
        assert_eq!(r.tokens(), s.tokens());
        assert_eq!(r.audit(), s.audit());
        let a: Vec<_> = s
            .all_objects()
            .iter()
            .map(|o| (o.record.clone(), o.created))
            .collect();
        let b: Vec<_> = r
            .all_objects()
            .iter()
            .map(|o| (o.record.clone(), o.created))
            .collect();
        assert_eq!(a, b);
        assert!(r
            .object(&ObjectId([1; 16]))
            .and_then(|o| o.key.clone())
            .is_some());
        assert_eq!(r.snapshot_bytes(), bytes, "deterministic encoding");
        // Both continue identically (the next token id included).
        let cmd = Command::CreateToken {
            label: "t2".into(),
            so_pin: pin("s"),
            user_pin: None,
        };
        assert_eq!(s.apply(6, &cmd), r.apply(6, &cmd));
        assert_eq!(s.snapshot_bytes(), r.snapshot_bytes());

        // Restoring replaces everything, including what the target had.
        let other = State::new();
        other.apply(1, &Command::Init(info()));
        other.apply(
            2,
            &Command::CreateToken {
                label: "zz".into(),
                so_pin: pin("s"),
                user_pin: None,
            },
        );
        other.restore(&bytes).expect("restore");
        assert!(other.token_by_label("zz").is_none());
        assert_eq!(other.snapshot_bytes(), bytes);

        // Garbage and tampered snapshots are refused and change nothing.
        assert!(other.restore(&bytes[..bytes.len() / 2]).is_err());
        let mut snap: StateSnapshot = postcard::from_bytes(&bytes).expect("decode");
        snap.base.audit[0].summary.push('x');
        let tampered = postcard::to_stdvec(&snap).expect("encode");
        assert!(matches!(
            other.restore(&tampered),
            Err(NodeError::Storage(_))
        ));
        assert_eq!(other.snapshot_bytes(), bytes);
    }

    #[tokio::test]
    async fn wait_applied_wakes_and_times_out() {
        let s = Arc::new(State::new());
        s.mark_applied(3);
        s.wait_applied(2, Duration::from_millis(1))
            .await
            .expect("already applied");
        let err = s.wait_applied(10, Duration::from_millis(20)).await;
        assert!(matches!(err, Err(NodeError::Timeout(_))));
        let s2 = s.clone();
        let waiter =
            tokio::spawn(async move { s2.wait_applied(10, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        s.mark_applied(9);
        s.mark_applied(10);
        waiter.await.expect("join").expect("woken");
    }
}
