//! Governance requests: officers, policies, approvals, quorum guards on key operations, the
//! audit chain (export, chip-signed checkpoints, signature counters) and terminal master-key
//! injection. The replicated part is `crate::governance`; `docs/governance.md` has the flows.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cloudkey_chip::pool::{PoolExt as _, PoolKey, PoolKeyRef};
use cloudkey_chip::{
    CipherMech, HashAlg, KeyBlob, KeyId, KeySpec, KeyTemplate, KeyType, KeyUsage, PublicKey,
    SignMech, WrapMech,
};
use cloudkey_protocol::gov::{
    checkpoint_message, endorsement_message, ApprovalInfo, AuditKeyInfo, AuditPage, GuardedOp,
    OfficerAuth, OfficerInfo, PolicyScope, QrPayload, Rule, TerminalInfo, TerminalKey, TmkDelivery,
    TmkQr,
};
use cloudkey_protocol::msg::{ObjectId, Secret, TokenId};
use cloudkey_protocol::tls::{PeerIdentity, Role, TlsMaterial};
use cloudkey_protocol::ErrorCode;
use dashmap::DashMap;
use serde::Serialize;

use crate::governance::{officer_requester, sha256, tmk_params_hash, AppState, GovCommand};
pub use crate::service::notify::Notifier;
use crate::service::NodeCtx;
use crate::service::{login, Plan};
use crate::state::{Command, CommandResult};
use crate::{NodeError, Result};

/// Lifetime of a QR payload.
pub const QR_TTL: Duration = Duration::from_secs(600);
/// Lifetime of an SMS code.
pub const SMS_TTL: Duration = Duration::from_secs(300);
/// Lifetime of a TMK approval request.
pub const TMK_APPROVAL_TTL: Duration = Duration::from_secs(3600);
/// Largest audit page.
pub const MAX_AUDIT_PAGE: u32 = 1000;

fn refuse(code: ErrorCode, detail: impl Into<String>) -> NodeError {
    NodeError::refuse(code, detail)
}

/// Milliseconds since the Unix epoch.
#[must_use]
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A certificate identity as officers and requesters are recorded: `operator/NAME`,
/// `client/NAME`, `node/ID`.
#[must_use]
pub fn identity_string(p: &PeerIdentity) -> String {
    match p.role {
        Role::Node(id) => format!("node/{id}"),
        Role::Operator => format!("operator/{}", p.name),
        Role::Client => format!("client/{}", p.name),
    }
}

/// Signatures made on this node per key since the last summary.
#[derive(Debug, Default)]
pub struct UsageCounters {
    counts: DashMap<ObjectId, AtomicU64>,
}

impl UsageCounters {
    /// Counts one signature with `key`.
    pub fn record(&self, key: ObjectId) {
        if let Some(c) = self.counts.get(&key) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.counts
            .entry(key)
            .or_default()
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the counts (resetting them), sorted by key.
    #[must_use]
    pub fn take(&self) -> Vec<(ObjectId, u64)> {
        let mut v: Vec<(ObjectId, u64)> = self
            .counts
            .iter()
            .map(|e| (*e.key(), e.value().swap(0, Ordering::Relaxed)))
            .filter(|(_, n)| *n > 0)
            .collect();
        v.sort();
        v
    }

    /// Puts counts back (their summary could not be committed).
    pub fn restore(&self, counts: &[(ObjectId, u64)]) {
        for (k, n) in counts {
            self.counts
                .entry(*k)
                .or_default()
                .fetch_add(*n, Ordering::Relaxed);
        }
    }

    /// Drops the counters of keys that no longer exist (`exists` is false) and have nothing
    /// left to summarise. Call it after a summary was committed: a counter with counts not yet
    /// written stays, so no count is lost; a signature racing with the removal starts a new
    /// counter, which the next summary writes.
    pub fn prune(&self, exists: impl Fn(&ObjectId) -> bool) {
        self.counts
            .retain(|key, n| exists(key) || n.load(Ordering::Relaxed) != 0);
    }

    /// How many keys have a counter.
    #[must_use]
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True when no key has a counter.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }
}

/// What governance needs on a node besides the replicated state.
#[derive(Debug)]
pub struct GovNode {
    /// The node's TLS material (its key endorses the audit key).
    pub tls: Option<Arc<TlsMaterial>>,
    /// Where SMS codes go.
    pub notifier: Option<Arc<dyn Notifier>>,
    /// Signature counters.
    pub usage: UsageCounters,
    /// How often checkpoints and usage summaries are written.
    pub interval: Duration,
    /// Set while this node creates the audit key.
    pub(crate) making_audit_key: AtomicBool,
}

impl Default for GovNode {
    fn default() -> Self {
        Self {
            tls: None,
            notifier: None,
            usage: UsageCounters::default(),
            interval: Duration::from_secs(10),
            making_audit_key: AtomicBool::new(false),
        }
    }
}

// ---- officers ---------------------------------------------------------------------------------

/// Looks `f` up in the applied state; when it finds nothing, commits a barrier (so that this node
/// has applied everything committed before) and looks again. For things another client has
/// just made (an officer, a terminal) that a lagging node may not have applied yet.
async fn lookup<T>(
    ctx: &NodeCtx,
    f: impl Fn(&crate::governance::Governance) -> Option<T>,
) -> Result<Option<T>> {
    if let Some(v) = ctx.svc.state.with_gov(&f) {
        return Ok(Some(v));
    }
    catch_up(ctx).await?;
    Ok(ctx.svc.state.with_gov(&f))
}

/// Commits a barrier: once it returns, this node has applied everything committed before.
async fn catch_up(ctx: &NodeCtx) -> Result<()> {
    ctx.write(Command::Gov(GovCommand::Barrier)).await?;
    Ok(())
}

/// Checks an officer's certificate and PIN. A wrong PIN counts towards the lockout
/// (cluster-wide), as for tokens.
///
/// # Errors
/// `FunctionRejected` for an unknown officer or another certificate, `PinLocked`,
/// `PinIncorrect`.
pub async fn officer(ctx: &NodeCtx, peer: &PeerIdentity, auth: &OfficerAuth) -> Result<String> {
    let cluster = ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    let Some(o) = lookup(ctx, |g| g.officers.get(&auth.name).cloned()).await? else {
        return Err(refuse(
            ErrorCode::FunctionRejected,
            format!("no officer {}", auth.name),
        ));
    };
    let me = identity_string(peer);
    if o.identity != me {
        return Err(refuse(
            ErrorCode::FunctionRejected,
            format!(
                "officer {} must connect with certificate {}, not {me}",
                o.name, o.identity
            ),
        ));
    }
    if o.failures >= cluster.max_failures {
        return Err(refuse(
            ErrorCode::PinLocked,
            format!("officer {}'s PIN is locked", o.name),
        ));
    }
    // Counted before the check: parallel guesses get at most `max_failures` checks.
    let attempt = Command::Gov(GovCommand::OfficerAttempt {
        name: o.name.clone(),
    });
    let last = match ctx.write(attempt).await? {
        (CommandResult::Failures { locked, .. }, _) => locked,
        (other, _) => {
            return Err(NodeError::Internal(format!(
                "unexpected result of an officer PIN attempt: {other:?}"
            )))
        }
    };
    if login::verify_pin(ctx, &auth.pin, &o.pin).await? != login::PinMatch::No {
        ctx.write(Command::Gov(GovCommand::OfficerSucceeded {
            name: o.name.clone(),
        }))
        .await?;
        return Ok(o.name);
    }
    if last {
        Err(refuse(
            ErrorCode::PinLocked,
            "wrong officer PIN; the PIN is now locked",
        ))
    } else {
        Err(refuse(ErrorCode::PinIncorrect, "wrong officer PIN"))
    }
}

/// Registers an officer.
///
/// # Errors
/// `PinLenRange`, refusals of the state, Raft errors.
pub async fn add_officer(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    name: &str,
    identity: &str,
    pin: &Secret,
) -> Result<Governed> {
    login::check_pin_len(pin)?;
    PeerIdentity::from_uri(&format!("cloudkey://{identity}"))
        .ok()
        .filter(|p| matches!(p.role, Role::Operator | Role::Client))
        .ok_or_else(|| {
            refuse(
                ErrorCode::ArgumentsBad,
                format!("{identity:?} is not an operator or client identity (operator/NAME, client/NAME)"),
            )
        })?;
    let g = govern_guard(ctx, peer, &(name, identity), || {
        format!("add officer {name} with certificate {identity}")
    })
    .await?;
    let pin = login::hash_pin(ctx, pin).await?;
    Ok(governed(
        g,
        GovCommand::AddOfficer {
            name: name.to_string(),
            identity: identity.to_string(),
            pin,
        },
    ))
}

/// [`guard`] for a change to governance itself (a cluster `govern` rule).
pub(crate) async fn govern_guard(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    params: &impl Serialize,
    description: impl FnOnce() -> String,
) -> Result<Option<Guard>> {
    guard(
        ctx,
        peer,
        Ask::new(GuardedOp::Govern, None, params),
        description,
    )
    .await
}

/// A governance change to commit, and the approval it runs under when a `govern` rule covers
/// it: the handler commits the plan under the guard (`plan.commit(svc, guard.as_ref())`), so
/// the approval is consumed by the same log entry as the change.
pub type Governed = (Plan<()>, Option<Guard>);

/// `cmd`'s plan, under `guard`.
fn governed(guard: Option<Guard>, cmd: GovCommand) -> Governed {
    (Plan::write(Command::Gov(cmd), ()), guard)
}

/// Officers.
#[must_use]
pub fn list_officers(ctx: &NodeCtx) -> Vec<OfficerInfo> {
    let max = ctx.svc.state.cluster().map_or(u32::MAX, |c| c.max_failures);
    ctx.svc.state.with_gov(|g| g.officer_infos(max))
}

/// Sets a scope's policy.
///
/// # Errors
/// Unknown token or key, refusals of the state, Raft errors.
pub async fn set_policy(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    scope: PolicyScope,
    rules: Vec<Rule>,
) -> Result<Governed> {
    let exists = |ctx: &NodeCtx| match scope {
        PolicyScope::Token(t) => ctx.svc.state.token(t).is_some(),
        PolicyScope::Key(k) => ctx.svc.state.object(&k).is_some(),
        PolicyScope::Cluster => true,
    };
    if !exists(ctx) {
        // Made by another client, perhaps through another node: catch up, then look again.
        catch_up(ctx).await?;
    }
    if !exists(ctx) {
        return Err(match scope {
            PolicyScope::Token(t) => refuse(ErrorCode::TokenNotPresent, format!("no token {t}")),
            _ => refuse(ErrorCode::ObjectHandleInvalid, format!("no object {scope}")),
        });
    }
    let g = govern_guard(ctx, peer, &(scope, &rules), || {
        format!("set the policy of {scope} to {} rule(s)", rules.len())
    })
    .await?;
    Ok(governed(g, GovCommand::SetPolicy { scope, rules }))
}

/// Policies.
#[must_use]
pub fn list_policies(ctx: &NodeCtx) -> Vec<(PolicyScope, Vec<Rule>)> {
    ctx.svc
        .state
        .with_gov(|g| g.policies.iter().map(|(s, r)| (*s, r.clone())).collect())
}

/// Approval requests, open ones only unless `all`.
#[must_use]
pub fn list_approvals(ctx: &NodeCtx, all: bool) -> Vec<ApprovalInfo> {
    let now = now_ms();
    ctx.svc.state.with_gov(|g| {
        g.approvals
            .values()
            .map(|a| a.info(now))
            .filter(|a| {
                all || matches!(
                    a.status,
                    cloudkey_protocol::gov::ApprovalStatus::Pending
                        | cloudkey_protocol::gov::ApprovalStatus::Approved
                )
            })
            .collect()
    })
}

fn approval_info(ctx: &NodeCtx, id: u64) -> Result<ApprovalInfo> {
    let now = now_ms();
    ctx.svc
        .state
        .with_gov(|g| g.approvals.get(&id).map(|a| a.info(now)))
        .ok_or_else(|| {
            refuse(
                ErrorCode::GeneralError,
                format!("approval request {id} vanished"),
            )
        })
}

/// An officer approves request `id` for parameters `params_hash`.
///
/// # Errors
/// The officer check, the state's refusals (self-approval, not eligible, other parameters,
/// expired, closed), Raft errors.
pub async fn approve(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &OfficerAuth,
    id: u64,
    params_hash: [u8; 32],
) -> Result<ApprovalInfo> {
    let name = officer(ctx, peer, auth).await?;
    ctx.write(Command::Gov(GovCommand::Approve {
        id,
        officer: name,
        identity: identity_string(peer),
        params_hash,
        now_ms: now_ms(),
    }))
    .await?;
    approval_info(ctx, id)
}

/// An officer rejects request `id`.
///
/// # Errors
/// As [`approve`].
pub async fn reject(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &OfficerAuth,
    id: u64,
) -> Result<ApprovalInfo> {
    let name = officer(ctx, peer, auth).await?;
    ctx.write(Command::Gov(GovCommand::Reject {
        id,
        officer: name,
        identity: identity_string(peer),
        now_ms: now_ms(),
    }))
    .await?;
    approval_info(ctx, id)
}

// ---- quorum guards on key operations ------------------------------------------------------------

/// An approved request a guarded operation runs under.
#[derive(Clone, Debug)]
pub struct Guard {
    approval: u64,
    requester: String,
    params_hash: [u8; 32],
    now_ms: u64,
}

/// The parameters of a guarded operation, hashed: an approval authorises exactly these.
#[must_use]
pub fn params_hash(op: GuardedOp, token: Option<TokenId>, params: &impl Serialize) -> [u8; 32] {
    let body = postcard::to_stdvec(params).unwrap_or_default();
    let mut m = b"cloudkey approval v1\0".to_vec();
    m.extend_from_slice(op.name().as_bytes());
    m.push(0);
    m.extend_from_slice(&token.map_or(0, |t| t.0).to_be_bytes());
    m.extend_from_slice(&body);
    sha256(&m)
}

/// What a request that a quorum policy can guard asks of governance: the operation, the token
/// and keys it touches (or the key type it makes), and its parameters, which an approval
/// authorises exactly (hashed by [`params_hash`] only when a rule covers the request).
#[derive(Debug)]
pub struct Ask<'a, P> {
    /// The guarded operation.
    pub op: GuardedOp,
    /// The token the operation runs on; `None` for the cluster (a `govern` rule).
    pub token: Option<TokenId>,
    /// The objects it uses or changes.
    pub keys: &'a [ObjectId],
    /// The `CKK_*` it generates.
    pub key_type: Option<u64>,
    /// Its parameters.
    pub params: &'a P,
}

impl<'a, P: Serialize> Ask<'a, P> {
    /// `op` with `params` on `token`, touching no particular key.
    pub fn new(op: GuardedOp, token: Option<TokenId>, params: &'a P) -> Self {
        Self {
            op,
            token,
            keys: &[],
            key_type: None,
            params,
        }
    }

    /// The same, on the objects `keys`.
    #[must_use]
    pub fn on_keys(self, keys: &'a [ObjectId]) -> Self {
        Self { keys, ..self }
    }

    /// The same, making a key of type `key_type`.
    #[must_use]
    pub fn making(self, key_type: Option<u64>) -> Self {
        Self { key_type, ..self }
    }
}

/// Checks whether `ask` is under quorum control. Not guarded: `None`. Guarded with an approved
/// request of this requester for exactly these parameters: that request, under which the
/// caller then commits its change ([`Guard::guarded`]) or, when it writes nothing, consumes it
/// first ([`Guard::consume`]). Else a request is opened (or the open one found) and the call
/// fails with `ApprovalRequired`, naming it (`description` says what it is for).
///
/// # Errors
/// `ApprovalRequired`; Raft errors.
pub async fn guard<P: Serialize>(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    ask: Ask<'_, P>,
    description: impl FnOnce() -> String,
) -> Result<Option<Guard>> {
    let Ask {
        op,
        token,
        keys,
        key_type,
        params,
    } = ask;
    if !ctx.svc.state.has_policies() {
        return Ok(None);
    }
    let Some((scope, rule)) = ctx
        .svc
        .state
        .with_gov(|g| g.rule_for(op, token, keys, key_type))
    else {
        return Ok(None);
    };
    let requester = identity_string(peer);
    let hash = params_hash(op, token, params);
    let now = now_ms();
    if let Some(id) = ctx
        .svc
        .state
        .with_gov(|g| g.approved_for(&requester, &hash, now))
    {
        return Ok(Some(Guard {
            approval: id,
            requester,
            params_hash: hash,
            now_ms: now,
        }));
    }
    let description = description();
    let (result, _) = ctx
        .write(Command::Gov(GovCommand::Propose {
            requester: requester.clone(),
            op,
            scope,
            description: description.clone(),
            params_hash: hash,
            quorum: rule.quorum,
            eligible: rule.officers.clone(),
            now_ms: now,
            ttl_ms: rule.ttl_ms,
        }))
        .await?;
    let id = match result {
        CommandResult::Approval(id) => id,
        other => {
            return Err(NodeError::Internal(format!(
                "opening an approval request gave {other:?}"
            )))
        }
    };
    // This node has now applied everything up to the proposal: the request may have been
    // approved already (the approval had not reached this node when it first looked).
    let approved = ctx.svc.state.with_gov(|g| {
        g.approvals
            .get(&id)
            .is_some_and(|a| a.status_at(now) == cloudkey_protocol::gov::ApprovalStatus::Approved)
    });
    if approved {
        return Ok(Some(Guard {
            approval: id,
            requester,
            params_hash: hash,
            now_ms: now,
        }));
    }
    Err(refuse(
        ErrorCode::ApprovalRequired,
        format!(
            "{op} on {scope} needs {} approval(s): approval request {id} is open \
             ({description}; params {})",
            rule.quorum,
            hex::encode(hash)
        ),
    ))
}

impl Guard {
    /// `cmd` under this approval: the state applies it only while the approval is approved
    /// and unconsumed for this requester and these parameters, and consumes it in the same
    /// log entry. The one place a command is wrapped in a quorum guard.
    #[must_use]
    pub fn guarded(&self, cmd: Command) -> Command {
        Command::Guarded {
            approval: self.approval,
            requester: self.requester.clone(),
            params_hash: self.params_hash,
            now_ms: self.now_ms,
            inner: Box::new(cmd),
        }
    }

    /// Consumes the approval on its own, before an operation that writes nothing (a signature,
    /// a wrap): at most once.
    ///
    /// # Errors
    /// The state's refusal (already consumed, expired), Raft errors.
    pub async fn consume(&self, ctx: &NodeCtx) -> Result<()> {
        ctx.write(Command::Gov(GovCommand::Consume {
            id: self.approval,
            requester: self.requester.clone(),
            params_hash: self.params_hash,
            now_ms: self.now_ms,
        }))
        .await?;
        Ok(())
    }
}

// ---- the audit chain ------------------------------------------------------------------------------

/// A page of the audit chain.
#[must_use]
pub fn audit_export(ctx: &NodeCtx, from: u64, max: u32) -> AuditPage {
    let max = max.clamp(1, MAX_AUDIT_PAGE) as usize;
    let mut records = ctx.svc.state.audit_range(from, max + 1);
    let more = records.len() > max;
    records.truncate(max);
    AuditPage {
        key: ctx
            .svc
            .state
            .with_gov(|g| g.audit_key.as_ref().map(|k| k.info.clone())),
        records,
        more,
    }
}

/// One round of the audit task: every node summarises its signature counters; the leader
/// makes the audit key if the cluster has none, and signs a checkpoint of the chain head when
/// records were added since the last one.
///
/// # Errors
/// Chip, Raft and TLS errors (the round is tried again later).
pub async fn audit_round(ctx: &NodeCtx) -> Result<()> {
    summarise_usage(ctx).await?;
    if !ctx.raft.is_leader() {
        return Ok(());
    }
    let key = ctx.svc.state.with_gov(|g| g.audit_key.clone());
    let key = match key {
        Some(k) => k,
        None => {
            make_audit_key(ctx).await?;
            return Ok(());
        }
    };
    let Some((index, hash)) = ctx.svc.state.audit_head() else {
        return Ok(());
    };
    if ctx
        .svc
        .state
        .with_gov(|g| g.last_checkpoint.is_some_and(|l| l >= index))
    {
        return Ok(());
    }
    // The head is the previous checkpoint itself when nothing else happened since.
    let head_is_checkpoint = ctx
        .svc
        .state
        .audit_range(index, 1)
        .first()
        .is_some_and(|r| r.summary.starts_with("checkpoint "));
    if head_is_checkpoint {
        return Ok(());
    }
    let pool_key = PoolKey::new(KeyBlob(key.blob.clone()))?;
    let digest = sha256(&checkpoint_message(index, &hash));
    let signature = ctx
        .svc
        .pool
        .sign(&pool_key, SignMech::Ecdsa, digest.to_vec())
        .await?;
    ctx.write(Command::Gov(GovCommand::Checkpoint {
        index,
        hash,
        signature,
    }))
    .await?;
    Ok(())
}

async fn make_audit_key(ctx: &NodeCtx) -> Result<()> {
    let Some(tls) = ctx.gov.tls.clone() else {
        return Ok(());
    };
    if ctx.gov.making_audit_key.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let result = async {
        let new = ctx
            .svc
            .pool
            .generate_key_pair(KeyTemplate {
                id: KeyId::random(),
                spec: KeySpec::EC_P256,
                usage: KeyUsage::SIGN | KeyUsage::SENSITIVE,
            })
            .await?;
        let Some(PublicKey::EcP256(public)) = new.public else {
            return Err(NodeError::Internal(
                "audit key without a P-256 public key".into(),
            ));
        };
        let endorsement = tls.sign_ecdsa_p256(&endorsement_message(&public))?;
        let endorser_cert = tls
            .chain()
            .first()
            .map(|c| c.as_ref().to_vec())
            .unwrap_or_default();
        ctx.write(Command::Gov(GovCommand::SetAuditKey(
            crate::governance::AuditKey {
                blob: new.blob.0,
                info: AuditKeyInfo {
                    public,
                    endorser_cert,
                    endorsement,
                },
            },
        )))
        .await?;
        tracing::info!("audit key created in a chip and endorsed by this node");
        Ok(())
    }
    .await;
    ctx.gov.making_audit_key.store(false, Ordering::Release);
    result
}

/// How long the last summary of signature counts may take at shutdown.
const LAST_SUMMARY_DEADLINE: Duration = Duration::from_secs(3);

/// Writes the signature counts not yet summarised (at shutdown: the counters live in memory).
///
/// # Errors
/// Raft errors; the counts are kept for a later try.
async fn summarise_usage(ctx: &NodeCtx) -> Result<()> {
    let counts = ctx.gov.usage.take();
    if !counts.is_empty() {
        let cmd = Command::Gov(GovCommand::Usage {
            node: ctx.id,
            counts: counts.clone(),
            now_ms: now_ms(),
        });
        if let Err(e) = ctx.write(cmd).await {
            ctx.gov.usage.restore(&counts);
            return Err(e);
        }
    }
    // Every count taken is in the chain now: the counters of destroyed keys can go.
    ctx.gov
        .usage
        .prune(|key| ctx.svc.state.object(key).is_some());
    Ok(())
}

/// Runs [`audit_round`] every interval until `stop` fires, then writes the last summary of
/// signature counts (bounded by [`LAST_SUMMARY_DEADLINE`]), so that a node stopped between
/// two rounds loses none of its counts. Await the handle before stopping Raft.
pub fn spawn_audit(
    ctx: Arc<NodeCtx>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(ctx.gov.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            if ctx.svc.state.cluster().is_none() {
                continue;
            }
            if let Err(e) = audit_round(&ctx).await {
                tracing::debug!(error = %e, "audit round not completed; trying again later");
            }
        }
        match tokio::time::timeout(LAST_SUMMARY_DEADLINE, summarise_usage(&ctx)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(
                error = %e,
                "the last signature counts could not be written to the audit chain"
            ),
            Err(_) => tracing::warn!(
                "the last signature counts could not be written to the audit chain in time"
            ),
        }
    })
}

// ---- terminal master-key injection ------------------------------------------------------------

async fn terminal(ctx: &NodeCtx, id: &str) -> Result<crate::governance::Terminal> {
    lookup(ctx, |g| g.terminals.get(id).cloned())
        .await?
        .ok_or_else(|| refuse(ErrorCode::ArgumentsBad, format!("no terminal {id}")))
}

fn check_terminal_peer(t: &crate::governance::Terminal, peer: &PeerIdentity) -> Result<()> {
    match &t.identity {
        Some(id) if *id != identity_string(peer) => Err(refuse(
            ErrorCode::FunctionRejected,
            format!("terminal {} must connect with certificate {id}", t.id),
        )),
        _ => Ok(()),
    }
}

/// Registers or replaces a terminal.
///
/// # Errors
/// A malformed key, the state's refusals, Raft errors.
pub async fn add_terminal(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    info: TerminalInfo,
) -> Result<Governed> {
    match &info.key {
        TerminalKey::Rsa { n, e } => {
            if n.len() < 256 || n.len() > 512 || e.is_empty() || e.len() > 8 {
                return Err(refuse(
                    ErrorCode::ArgumentsBad,
                    "an RSA terminal key has a 2048- to 4096-bit modulus",
                ));
            }
        }
        TerminalKey::Sm2 { point } => {
            if point.len() != 65 || point[0] != 4 {
                return Err(refuse(
                    ErrorCode::ArgumentsBad,
                    "an SM2 terminal key is a 65-byte uncompressed point",
                ));
            }
        }
    }
    if let Some(id) = &info.identity {
        PeerIdentity::from_uri(&format!("cloudkey://{id}")).map_err(|_| {
            refuse(
                ErrorCode::ArgumentsBad,
                format!("{id:?} is not a certificate identity (client/NAME)"),
            )
        })?;
    }
    let g = govern_guard(ctx, peer, &info, || {
        format!(
            "register terminal {} with administrators {:?}",
            info.id, info.admins
        )
    })
    .await?;
    Ok(governed(g, GovCommand::AddTerminal(info)))
}

/// Terminals.
#[must_use]
pub fn list_terminals(ctx: &NodeCtx) -> Vec<TerminalInfo> {
    ctx.svc.state.with_gov(|g| {
        g.terminals
            .values()
            .map(crate::governance::Terminal::info)
            .collect()
    })
}

/// The terminal asks for an injection: a new application and its QR payload.
///
/// # Errors
/// Unknown terminal, wrong certificate, Raft errors.
pub async fn tmk_request(ctx: &NodeCtx, peer: &PeerIdentity, terminal_id: &str) -> Result<TmkQr> {
    let t = terminal(ctx, terminal_id).await?;
    check_terminal_peer(&t, peer)?;
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| NodeError::Internal("random generator failed".into()))?;
    let now = now_ms();
    let ttl = u64::try_from(QR_TTL.as_millis()).unwrap_or(u64::MAX);
    let (result, _) = ctx
        .write(Command::Gov(GovCommand::TmkRequest {
            terminal: t.id.clone(),
            nonce_hash: sha256(&nonce),
            now_ms: now,
            ttl_ms: ttl,
        }))
        .await?;
    let CommandResult::Application(application) = result else {
        return Err(NodeError::Internal(format!("tmk request gave {result:?}")));
    };
    Ok(TmkQr {
        application,
        payload: QrPayload {
            terminal: t.id,
            application,
            nonce,
        }
        .encode(),
        expires_unix_ms: now.saturating_add(ttl),
    })
}

async fn sms_mac(ctx: &NodeCtx, officer: &str, terminal: &str, code: &[u8]) -> Result<[u8; 32]> {
    let key = ctx.domain.session_mac(&ctx.svc.state).await?;
    let mut m = b"cloudkey sms v1\0".to_vec();
    m.extend_from_slice(officer.as_bytes());
    m.push(0);
    m.extend_from_slice(terminal.as_bytes());
    m.push(0);
    m.extend_from_slice(code);
    Ok(key.mac(&m))
}

/// Sends the officer a one-time code for this terminal through the notifier.
///
/// # Errors
/// The officer check, no notifier, the state's refusals, Raft errors.
pub async fn tmk_sms_code(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &OfficerAuth,
    terminal_id: &str,
) -> Result<()> {
    let name = officer(ctx, peer, auth).await?;
    let t = terminal(ctx, terminal_id).await?;
    let Some(notifier) = ctx.gov.notifier.clone() else {
        return Err(refuse(
            ErrorCode::FunctionFailed,
            "this node has no SMS notifier configured ([notifier] in its configuration)",
        ));
    };
    let mut r = [0u8; 4];
    aws_lc_rs::rand::fill(&mut r)
        .map_err(|_| NodeError::Internal("random generator failed".into()))?;
    let code = zeroize::Zeroizing::new(format!("{:06}", u32::from_be_bytes(r) % 1_000_000));
    let mac = sms_mac(ctx, &name, &t.id, code.as_bytes()).await?;
    ctx.write(Command::Gov(GovCommand::SmsIssued {
        officer: name.clone(),
        terminal: t.id.clone(),
        mac,
        now_ms: now_ms(),
        ttl_ms: u64::try_from(SMS_TTL.as_millis()).unwrap_or(u64::MAX),
    }))
    .await?;
    notifier.send_code(&name, &t.id, &code).await.map_err(|e| {
        refuse(
            ErrorCode::FunctionFailed,
            format!("sending the SMS code: {e}"),
        )
    })
}

/// The first administrator applies: terminal number, scanned payload and SMS code.
///
/// # Errors
/// The officer check; `PinIncorrect` (counted) or `PinLocked` for a wrong payload, officer or
/// code; stale payloads; the state's refusals; Raft errors.
pub async fn tmk_apply(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &OfficerAuth,
    terminal_id: &str,
    payload: &str,
    code: &Secret,
) -> Result<ApprovalInfo> {
    let name = officer(ctx, peer, auth).await?;
    let t = terminal(ctx, terminal_id).await?;
    let qr = QrPayload::parse(payload).ok_or_else(|| {
        refuse(
            ErrorCode::ArgumentsBad,
            "the scanned payload is not a cloudkey TMK QR payload",
        )
    })?;
    if qr.terminal != t.id {
        return Err(refuse(
            ErrorCode::ArgumentsBad,
            format!("the payload is for terminal {}, not {}", qr.terminal, t.id),
        ));
    }
    let default_ttl = u64::try_from(TMK_APPROVAL_TTL.as_millis()).unwrap_or(u64::MAX);
    let (quorum, eligible, ttl_ms) = match ctx
        .svc
        .state
        .with_gov(|g| g.rule_for(GuardedOp::TmkInject, None, &[], None))
    {
        Some((_, rule)) => (rule.quorum, rule.officers, rule.ttl_ms),
        None => (
            1,
            t.admins.iter().filter(|a| **a != name).cloned().collect(),
            default_ttl,
        ),
    };
    let mac = sms_mac(ctx, &name, &t.id, &code.0).await?;
    let (result, _) = ctx
        .write(Command::Gov(GovCommand::TmkApply {
            application: qr.application,
            terminal: t.id.clone(),
            officer: name,
            nonce_hash: sha256(&qr.nonce),
            sms_mac: mac,
            now_ms: now_ms(),
            ttl_ms,
            quorum,
            eligible,
        }))
        .await?;
    match result {
        CommandResult::Approval(id) => approval_info(ctx, id),
        CommandResult::Failed { code, detail } => Err(refuse(code, detail)),
        other => Err(NodeError::Internal(format!("tmk apply gave {other:?}"))),
    }
}

/// The terminal's own check, then its key: generated in a chip (AES-256, or SM4 for SM2
/// terminals), encrypted under the terminal's public key, with its KCV. Exactly one key per
/// application: asking again (after a failure anywhere) returns the one already delivered.
///
/// # Errors
/// Wrong payload or applicant, no application, `ApprovalRequired` before approval, chip and
/// Raft errors.
pub async fn tmk_fetch(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    terminal_id: &str,
    payload: &str,
    admin: &str,
) -> Result<TmkDelivery> {
    let t = terminal(ctx, terminal_id).await?;
    check_terminal_peer(&t, peer)?;
    let qr = QrPayload::parse(payload)
        .filter(|q| q.terminal == t.id)
        .ok_or_else(|| {
            refuse(
                ErrorCode::ArgumentsBad,
                "the payload is not this terminal's QR payload",
            )
        })?;
    // Record the check; once it is applied here, this node has every earlier step (the
    // application, the approval), whichever node they were made on.
    ctx.write(Command::Gov(GovCommand::TmkCheck {
        application: qr.application,
        terminal: t.id.clone(),
        admin: admin.to_string(),
    }))
    .await?;
    let app = ctx
        .svc
        .state
        .with_gov(|g| g.applications.get(&qr.application).cloned())
        .filter(|a| a.terminal == t.id)
        .ok_or_else(|| {
            refuse(
                ErrorCode::FunctionRejected,
                format!(
                    "terminal {} has no injection application {}",
                    t.id, qr.application
                ),
            )
        })?;
    if app.nonce_hash != sha256(&qr.nonce) {
        return Err(refuse(
            ErrorCode::FunctionRejected,
            "the payload does not match the application",
        ));
    }
    let (approval, applicant) = match &app.state {
        AppState::Injected {
            applicant,
            delivery,
            ..
        } => {
            if applicant != admin {
                return Err(refuse(
                    ErrorCode::FunctionRejected,
                    "another administrator applied",
                ));
            }
            return Ok(delivery.clone());
        }
        AppState::Applied {
            approval,
            applicant,
        } => (*approval, applicant.clone()),
        AppState::Requested => {
            return Err(refuse(
                ErrorCode::FunctionRejected,
                format!(
                    "no administrator has applied for application {} yet",
                    app.id
                ),
            ))
        }
        AppState::Locked => {
            return Err(refuse(
                ErrorCode::PinLocked,
                format!("application {} is locked", app.id),
            ))
        }
    };
    if applicant != admin || !t.admins.iter().any(|a| a == admin) {
        return Err(refuse(
            ErrorCode::FunctionRejected,
            format!(
                "{admin} is not the administrator who applied for application {}",
                app.id
            ),
        ));
    }
    let now = now_ms();
    let params = tmk_params_hash(&t.id, app.id);
    ctx.svc
        .state
        .with_gov(|g| g.check_consumable(approval, &officer_requester(&applicant), &params, now))?;
    let (spec, algorithm, wrap, zero_mech) = match &t.key {
        TerminalKey::Rsa { n, e } => (
            KeySpec {
                key_type: KeyType::Aes,
                bits: 256,
            },
            "aes-256",
            (
                PublicKey::Rsa {
                    n: n.clone(),
                    e: e.clone(),
                },
                WrapMech::RsaOaep {
                    hash: HashAlg::Sha256,
                    label: Vec::new(),
                },
            ),
            CipherMech::AesCbc {
                iv: [0; 16],
                pad: false,
            },
        ),
        TerminalKey::Sm2 { point } => (
            KeySpec {
                key_type: KeyType::Sm4,
                bits: 128,
            },
            "sm4",
            (PublicKey::Sm2(point.clone()), WrapMech::Sm2),
            CipherMech::Sm4Cbc {
                iv: [0; 16],
                pad: false,
            },
        ),
    };
    let new = ctx
        .svc
        .pool
        .generate_secret_key(KeyTemplate {
            id: KeyId::random(),
            spec,
            usage: KeyUsage::ENCRYPT | KeyUsage::EXTRACTABLE | KeyUsage::SENSITIVE,
        })
        .await?;
    let tmk = PoolKey::new(new.blob.clone())?;
    let encrypted = ctx
        .svc
        .pool
        .wrap_key(&PoolKeyRef::Public(wrap.0), wrap.1, &tmk)
        .await?;
    let zeros = ctx
        .svc
        .pool
        .encrypt(&PoolKeyRef::Key(tmk), zero_mech, vec![0u8; 16])
        .await?;
    let mut kcv = [0u8; 3];
    kcv.copy_from_slice(&zeros[..3]);
    let delivery = TmkDelivery {
        application: app.id,
        algorithm: algorithm.into(),
        encrypted,
        kcv,
    };
    let written = ctx
        .write(Command::Gov(GovCommand::TmkInjected {
            application: app.id,
            delivery: delivery.clone(),
            blob: new.blob.0,
            now_ms: now,
        }))
        .await;
    match written {
        Ok(_) => Ok(delivery),
        // Another node (or an earlier attempt whose answer was lost) committed first: deliver
        // that key, the only one this application will ever have.
        Err(e) => match ctx
            .svc
            .state
            .with_gov(|g| g.applications.get(&app.id).map(|a| a.state.clone()))
        {
            Some(AppState::Injected { delivery, .. }) => Ok(delivery),
            _ => Err(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_destroyed_keys_counter_goes_once_its_counts_are_summarised() {
        let usage = UsageCounters::default();
        let (live, gone) = (ObjectId([1; 16]), ObjectId([2; 16]));
        usage.record(live);
        usage.record(gone);
        usage.record(gone);
        // Counts not yet written keep their counter, destroyed key or not.
        usage.prune(|k| *k == live);
        assert_eq!(usage.len(), 2);
        assert_eq!(usage.take(), vec![(live, 1), (gone, 2)]);
        // Summarised: the destroyed key's counter goes, the live key's stays.
        usage.prune(|k| *k == live);
        assert_eq!(usage.len(), 1);
        usage.record(live);
        assert_eq!(usage.take(), vec![(live, 1)]);
    }
}
