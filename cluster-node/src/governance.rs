//! Governance in the replicated state: officers, policies, quorum (M-of-N) approval requests,
//! the terminal registry and terminal master-key (TMK) applications, one-time SMS codes, and
//! the chip-held audit key. `docs/governance.md` describes the flows.
//!
//! Everything here changes only through a [`GovCommand`] applied by [`Governance::apply`], in
//! log order, on every node, deterministically: time comes from the command (`now_ms`, the
//! proposing node's clock), never from the applying node. Nothing secret is stored: officer
//! PINs are argon2id hashes, SMS codes and QR nonces are stored as MACs or hashes, and the TMK is
//! a chip blob plus its encryption under the terminal's public key.
//!
//! Exactly once: an approved request is consumed by the same log entry that performs the
//! operation ([`crate::state::Command::Guarded`], [`GovCommand::TmkInjected`]); a second entry
//! for the same request finds it consumed and is refused, whichever node proposed it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cloudkey_protocol::gov::{
    ApprovalInfo, ApprovalStatus, AuditKeyInfo, GuardedOp, OfficerInfo, PolicyScope, Rule,
    TerminalInfo, TerminalKey, TmkDelivery,
};
use cloudkey_protocol::msg::ObjectId;
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use crate::state::PinHash;

/// Wrong SMS codes or QR payloads that lock a TMK application.
pub const MAX_APPLICATION_FAILURES: u32 = 5;
/// The most approval requests kept open at once (older closed ones are pruned first).
pub const MAX_OPEN_APPROVALS: usize = 10_000;
/// Closed (approved-and-used, rejected, expired) requests kept for listing.
pub const KEEP_CLOSED_APPROVALS: usize = 1_000;

/// A registered officer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Officer {
    /// Name.
    pub name: String,
    /// Certificate identity (`operator/NAME`, `client/NAME`).
    pub identity: String,
    /// The officer's PIN.
    pub pin: PinHash,
    /// Wrong PINs since the last success.
    pub failures: u32,
}

/// The stored status of a request (expiry is computed against a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stored {
    /// Waiting.
    Pending,
    /// Quorum met.
    Approved,
    /// Rejected.
    Rejected,
    /// Used at a log index.
    Consumed(u64),
}

/// An approval request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Id.
    pub id: u64,
    /// Who asked.
    pub requester: String,
    /// What.
    pub op: GuardedOp,
    /// Under which policy.
    pub scope: PolicyScope,
    /// For people.
    pub description: String,
    /// The exact parameters.
    pub params_hash: [u8; 32],
    /// Created (ms since the epoch).
    pub created_ms: u64,
    /// Expires.
    pub expires_ms: u64,
    /// M.
    pub quorum: u32,
    /// Who may approve (empty: any officer).
    pub eligible: Vec<String>,
    /// Who approved.
    pub approvals: Vec<String>,
    /// Who rejected.
    pub rejected_by: Option<String>,
    /// Status.
    pub status: Stored,
}

impl Approval {
    /// The status as seen at `now_ms`.
    #[must_use]
    pub fn status_at(&self, now_ms: u64) -> ApprovalStatus {
        match self.status {
            Stored::Consumed(index) => ApprovalStatus::Consumed { index },
            Stored::Rejected => ApprovalStatus::Rejected,
            _ if now_ms > self.expires_ms => ApprovalStatus::Expired,
            Stored::Pending => ApprovalStatus::Pending,
            Stored::Approved => ApprovalStatus::Approved,
        }
    }

    /// As listed.
    #[must_use]
    pub fn info(&self, now_ms: u64) -> ApprovalInfo {
        ApprovalInfo {
            id: self.id,
            requester: self.requester.clone(),
            op: self.op,
            scope: self.scope,
            description: self.description.clone(),
            params_hash: self.params_hash,
            created_unix_ms: self.created_ms,
            expires_unix_ms: self.expires_ms,
            quorum: self.quorum,
            eligible: self.eligible.clone(),
            approvals: self.approvals.clone(),
            rejected_by: self.rejected_by.clone(),
            status: self.status_at(now_ms),
        }
    }

    fn is_open(&self) -> bool {
        matches!(self.status, Stored::Pending | Stored::Approved)
    }
}

/// A registered terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminal {
    /// Terminal number.
    pub id: String,
    /// Public key.
    pub key: TerminalKey,
    /// Responsible officers.
    pub admins: Vec<String>,
    /// Bound certificate identity.
    pub identity: Option<String>,
    /// Last injected application.
    pub last_injection: Option<u64>,
}

impl Terminal {
    /// As listed.
    #[must_use]
    pub fn info(&self) -> TerminalInfo {
        TerminalInfo {
            id: self.id.clone(),
            key: self.key.clone(),
            admins: self.admins.clone(),
            identity: self.identity.clone(),
            last_injection: self.last_injection,
        }
    }
}

/// Where a TMK application stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppState {
    /// The terminal asked; waiting for the first administrator.
    Requested,
    /// Too many wrong codes or payloads.
    Locked,
    /// The first administrator applied; waiting for approval (request `approval`).
    Applied {
        /// The approval request.
        approval: u64,
        /// The applicant officer.
        applicant: String,
    },
    /// The key was generated and delivered.
    Injected {
        /// The approval request it consumed.
        approval: u64,
        /// The applicant.
        applicant: String,
        /// The delivery (encrypted key and KCV).
        delivery: TmkDelivery,
        /// The TMK's chip blob.
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    },
}

/// A TMK injection application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// Id.
    pub id: u64,
    /// Terminal.
    pub terminal: String,
    /// SHA-256 of the QR nonce.
    pub nonce_hash: [u8; 32],
    /// Created.
    pub created_ms: u64,
    /// The QR payload expires.
    pub expires_ms: u64,
    /// Wrong attempts.
    pub failures: u32,
    /// State.
    pub state: AppState,
}

/// A one-time SMS code, stored as a MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsCode {
    /// `HMAC(session MAC key, "cloudkey sms v1" || officer || 0 || terminal || 0 || code)`.
    pub mac: [u8; 32],
    /// Expires.
    pub expires_ms: u64,
    /// Used (a successful application consumed it).
    pub used: bool,
}

/// The chip-held audit key: its blob and its endorsement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditKey {
    /// Blob (P-256, sign only).
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
    /// Public key and endorsement.
    pub info: AuditKeyInfo,
}

/// The governance part of the replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Governance {
    /// Officers by name.
    pub officers: BTreeMap<String, Officer>,
    /// Policies by scope.
    pub policies: BTreeMap<PolicyScope, Vec<Rule>>,
    /// Approval requests by id.
    pub approvals: BTreeMap<u64, Approval>,
    /// Next request id.
    pub next_approval: u64,
    /// Terminals by number.
    pub terminals: BTreeMap<String, Terminal>,
    /// TMK applications by id.
    pub applications: BTreeMap<u64, Application>,
    /// Next application id.
    pub next_application: u64,
    /// SMS codes by (officer, terminal).
    pub sms: BTreeMap<(String, String), SmsCode>,
    /// The audit key.
    pub audit_key: Option<AuditKey>,
    /// Log index covered by the last checkpoint.
    pub last_checkpoint: Option<u64>,
}

/// A governance change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GovCommand {
    /// Register an officer (refused if the name exists).
    AddOfficer {
        /// Name.
        name: String,
        /// Certificate identity.
        identity: String,
        /// PIN hash.
        pin: PinHash,
    },
    /// A wrong officer PIN. → `Failures`.
    OfficerFailed {
        /// Officer.
        name: String,
    },
    /// A right PIN after wrong ones.
    OfficerSucceeded {
        /// Officer.
        name: String,
    },
    /// Replace a scope's rules (none: remove).
    SetPolicy {
        /// Scope.
        scope: PolicyScope,
        /// Rules.
        rules: Vec<Rule>,
    },
    /// Open an approval request (or find the open one of the same requester and parameters).
    /// → `Approval(id)`.
    Propose {
        /// Who.
        requester: String,
        /// What.
        op: GuardedOp,
        /// Policy scope.
        scope: PolicyScope,
        /// For people.
        description: String,
        /// Exact parameters.
        params_hash: [u8; 32],
        /// M.
        quorum: u32,
        /// N.
        eligible: Vec<String>,
        /// Now.
        now_ms: u64,
        /// Lifetime.
        ttl_ms: u64,
    },
    /// An officer approves (their PIN and certificate were checked by the proposing node).
    Approve {
        /// Request.
        id: u64,
        /// Officer.
        officer: String,
        /// The officer's certificate identity.
        identity: String,
        /// The parameters the officer saw.
        params_hash: [u8; 32],
        /// Now.
        now_ms: u64,
    },
    /// An officer rejects.
    Reject {
        /// Request.
        id: u64,
        /// Officer.
        officer: String,
        /// The officer's certificate identity.
        identity: String,
        /// Now.
        now_ms: u64,
    },
    /// Consume an approved request for an operation that writes nothing else (a signature, a
    /// wrap).
    Consume {
        /// Request.
        id: u64,
        /// Who runs it (must be the requester).
        requester: String,
        /// Exact parameters.
        params_hash: [u8; 32],
        /// Now.
        now_ms: u64,
    },
    /// Register or replace a terminal.
    AddTerminal(TerminalInfo),
    /// A terminal opens an application. → `Application(id)`.
    TmkRequest {
        /// Terminal.
        terminal: String,
        /// SHA-256 of the QR nonce.
        nonce_hash: [u8; 32],
        /// Now.
        now_ms: u64,
        /// Lifetime of the payload.
        ttl_ms: u64,
    },
    /// An SMS code was issued to an officer for a terminal (replaces an earlier one).
    SmsIssued {
        /// Officer.
        officer: String,
        /// Terminal.
        terminal: String,
        /// MAC of the code.
        mac: [u8; 32],
        /// Now.
        now_ms: u64,
        /// Lifetime.
        ttl_ms: u64,
    },
    /// The first administrator applies. Wrong payloads, wrong codes and the wrong officer are
    /// counted (→ `Failed`); success opens the approval request (→ `Approval(id)`).
    TmkApply {
        /// Application.
        application: u64,
        /// Terminal.
        terminal: String,
        /// Officer.
        officer: String,
        /// SHA-256 of the scanned nonce.
        nonce_hash: [u8; 32],
        /// MAC of the entered code.
        sms_mac: [u8; 32],
        /// Now.
        now_ms: u64,
        /// Lifetime of the approval request.
        ttl_ms: u64,
        /// Approvals needed (from the cluster policy, else 1).
        quorum: u32,
        /// Who may approve (the policy's officers, else the terminal's other admins).
        eligible: Vec<String>,
    },
    /// The TMK was generated and encrypted: consume the approval, keep the delivery.
    TmkInjected {
        /// Application.
        application: u64,
        /// Delivery.
        delivery: TmkDelivery,
        /// The TMK's blob.
        blob: Vec<u8>,
        /// Now.
        now_ms: u64,
    },
    /// The terminal's own check of an application (recorded; also makes the checking node
    /// catch up with every earlier change before it checks).
    TmkCheck {
        /// Application.
        application: u64,
        /// Terminal.
        terminal: String,
        /// The administrator the terminal named.
        admin: String,
    },
    /// Changes nothing and is not audited: a node that commits it has applied every earlier
    /// change (a read barrier, for a lookup of something another client just made).
    Barrier,
    /// Set the audit key (once).
    SetAuditKey(AuditKey),
    /// A signed checkpoint of the chain up to `index` (whose record hash is `hash`).
    Checkpoint {
        /// Covered log index.
        index: u64,
        /// Its record's hash.
        hash: [u8; 32],
        /// ECDSA `r || s` by the audit key over SHA-256 of the checkpoint message.
        signature: Vec<u8>,
    },
    /// Signatures made per key on one node since its last summary.
    Usage {
        /// Node.
        node: u64,
        /// Key and count.
        counts: Vec<(ObjectId, u64)>,
        /// Period end.
        now_ms: u64,
    },
}

impl GovCommand {
    /// Name for logs.
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AddOfficer { .. } => "add_officer",
            Self::OfficerFailed { .. } => "officer_failed",
            Self::OfficerSucceeded { .. } => "officer_succeeded",
            Self::SetPolicy { .. } => "set_policy",
            Self::Propose { .. } => "propose",
            Self::Approve { .. } => "approve",
            Self::Reject { .. } => "reject",
            Self::Consume { .. } => "consume",
            Self::AddTerminal(_) => "add_terminal",
            Self::TmkRequest { .. } => "tmk_request",
            Self::SmsIssued { .. } => "sms_issued",
            Self::TmkApply { .. } => "tmk_apply",
            Self::TmkInjected { .. } => "tmk_injected",
            Self::TmkCheck { .. } => "tmk_check",
            Self::Barrier => "barrier",
            Self::SetAuditKey(_) => "set_audit_key",
            Self::Checkpoint { .. } => "checkpoint",
            Self::Usage { .. } => "usage",
        }
    }
}

/// What applying gives, besides the audit summary.
#[derive(Debug)]
pub enum GovResult {
    /// Done.
    Done,
    /// Failures so far and whether that locked.
    Failures {
        /// Count.
        count: u32,
        /// Locked.
        locked: bool,
    },
    /// An approval request id.
    Approval(u64),
    /// An application id.
    Application(u64),
    /// Applied (a counter changed) but the operation failed.
    Failed(ErrorCode, String),
}

/// A refusal: nothing changed.
#[derive(Debug)]
pub struct GovRefusal(pub ErrorCode, pub String);

type Outcome = Result<(GovResult, String), GovRefusal>;

fn no<T>(code: ErrorCode, detail: impl Into<String>) -> Result<T, GovRefusal> {
    Err(GovRefusal(code, detail.into()))
}

/// `officer/NAME`: how an officer appears as a requester.
#[must_use]
pub fn officer_requester(name: &str) -> String {
    format!("officer/{name}")
}

impl Governance {
    /// The rule guarding `op` on one of `keys` (checked first, in order) or on `token`, and its
    /// scope. An operation that involves two keys (a wrap: the key and the wrapping key) is
    /// guarded when either is.
    #[must_use]
    pub fn rule_for(
        &self,
        op: GuardedOp,
        token: Option<cloudkey_protocol::msg::TokenId>,
        keys: &[ObjectId],
        key_type: Option<u64>,
    ) -> Option<(PolicyScope, Rule)> {
        let scopes = keys
            .iter()
            .copied()
            .map(PolicyScope::Key)
            .chain(token.map(PolicyScope::Token))
            .chain(
                matches!(op, GuardedOp::TmkInject | GuardedOp::Govern)
                    .then_some(PolicyScope::Cluster),
            );
        for scope in scopes {
            if let Some(rules) = self.policies.get(&scope) {
                if let Some(r) = rules.iter().find(|r| {
                    r.op == op
                        && (r.key_type.is_none() || key_type.is_none() || r.key_type == key_type)
                }) {
                    return Some((scope, r.clone()));
                }
            }
        }
        None
    }

    /// The approved, unexpired request of `requester` with these parameters, if any.
    #[must_use]
    pub fn approved_for(
        &self,
        requester: &str,
        params_hash: &[u8; 32],
        now_ms: u64,
    ) -> Option<u64> {
        self.approvals
            .values()
            .find(|a| {
                a.requester == requester
                    && a.params_hash == *params_hash
                    && a.status_at(now_ms) == ApprovalStatus::Approved
            })
            .map(|a| a.id)
    }

    /// Officers as listed.
    #[must_use]
    pub fn officer_infos(&self, max_failures: u32) -> Vec<OfficerInfo> {
        self.officers
            .values()
            .map(|o| OfficerInfo {
                name: o.name.clone(),
                identity: o.identity.clone(),
                failures: o.failures,
                locked: o.failures >= max_failures,
            })
            .collect()
    }

    /// Checks that request `id` may be consumed by `requester` for `params_hash` at `now_ms`.
    ///
    /// # Errors
    /// The refusal: unknown, not approved, expired, consumed, another requester or other
    /// parameters.
    pub fn check_consumable(
        &self,
        id: u64,
        requester: &str,
        params_hash: &[u8; 32],
        now_ms: u64,
    ) -> Result<(), GovRefusal> {
        let Some(a) = self.approvals.get(&id) else {
            return no(
                ErrorCode::ApprovalRequired,
                format!("no approval request {id}"),
            );
        };
        if a.requester != requester || a.params_hash != *params_hash {
            return no(
                ErrorCode::ApprovalRequired,
                format!("approval request {id} authorises another requester or other parameters"),
            );
        }
        match a.status_at(now_ms) {
            ApprovalStatus::Approved => Ok(()),
            s => no(
                ErrorCode::ApprovalRequired,
                format!("approval request {id} is {s}"),
            ),
        }
    }

    /// Marks request `id` consumed at `index` (after [`Governance::check_consumable`]).
    pub fn consume(&mut self, id: u64, index: u64) {
        if let Some(a) = self.approvals.get_mut(&id) {
            a.status = Stored::Consumed(index);
        }
    }

    /// Applies a command at log `index`. `max_failures` locks officer PINs.
    ///
    /// # Errors
    /// A refusal; the state is unchanged.
    pub fn apply(&mut self, index: u64, cmd: &GovCommand, max_failures: u32) -> Outcome {
        match cmd {
            GovCommand::AddOfficer {
                name,
                identity,
                pin,
            } => {
                if name.is_empty() || name.len() > 64 || name.contains('/') {
                    return no(
                        ErrorCode::ArgumentsBad,
                        "an officer name has 1 to 64 characters, no '/'",
                    );
                }
                if self.officers.contains_key(name) {
                    return no(
                        ErrorCode::ActionProhibited,
                        format!("officer {name} exists"),
                    );
                }
                if self.officers.values().any(|o| o.identity == *identity) {
                    return no(
                        ErrorCode::ActionProhibited,
                        format!("certificate identity {identity} already belongs to an officer"),
                    );
                }
                self.officers.insert(
                    name.clone(),
                    Officer {
                        name: name.clone(),
                        identity: identity.clone(),
                        pin: pin.clone(),
                        failures: 0,
                    },
                );
                Ok((
                    GovResult::Done,
                    format!("add_officer name={name} identity={identity}"),
                ))
            }
            GovCommand::OfficerFailed { name } => {
                let Some(o) = self.officers.get_mut(name) else {
                    return no(ErrorCode::ArgumentsBad, format!("no officer {name}"));
                };
                o.failures = o.failures.saturating_add(1);
                let (count, locked) = (o.failures, o.failures >= max_failures);
                Ok((
                    GovResult::Failures { count, locked },
                    format!("officer_pin_failed name={name} count={count} locked={locked}"),
                ))
            }
            GovCommand::OfficerSucceeded { name } => {
                let Some(o) = self.officers.get_mut(name) else {
                    return no(ErrorCode::ArgumentsBad, format!("no officer {name}"));
                };
                o.failures = 0;
                Ok((GovResult::Done, format!("officer_pin_ok name={name}")))
            }
            GovCommand::SetPolicy { scope, rules } => {
                for r in rules {
                    if r.quorum == 0 || r.quorum > 16 {
                        return no(ErrorCode::ArgumentsBad, "a quorum is 1 to 16 approvals");
                    }
                    if r.ttl_ms == 0 {
                        return no(
                            ErrorCode::ArgumentsBad,
                            "a request lifetime must be positive",
                        );
                    }
                    if let Some(unknown) =
                        r.officers.iter().find(|o| !self.officers.contains_key(*o))
                    {
                        return no(ErrorCode::ArgumentsBad, format!("no officer {unknown}"));
                    }
                    if !r.officers.is_empty() && (r.officers.len() as u64) < u64::from(r.quorum) {
                        return no(
                            ErrorCode::ArgumentsBad,
                            format!(
                                "{} officers cannot give {} approvals",
                                r.officers.len(),
                                r.quorum
                            ),
                        );
                    }
                }
                let mut summary = format!("set_policy scope={scope:?} rules=[");
                for (i, r) in rules.iter().enumerate() {
                    if i > 0 {
                        summary.push_str("; ");
                    }
                    let _ = write!(
                        summary,
                        "{} key_type={:?} {}-of-{:?} ttl_ms={}",
                        r.op, r.key_type, r.quorum, r.officers, r.ttl_ms
                    );
                }
                summary.push(']');
                if rules.is_empty() {
                    self.policies.remove(scope);
                } else {
                    self.policies.insert(*scope, rules.clone());
                }
                Ok((GovResult::Done, summary))
            }
            GovCommand::Propose {
                requester,
                op,
                scope,
                description,
                params_hash,
                quorum,
                eligible,
                now_ms,
                ttl_ms,
            } => {
                if let Some(a) = self.approvals.values().find(|a| {
                    a.requester == *requester
                        && a.params_hash == *params_hash
                        && matches!(a.status, Stored::Pending | Stored::Approved)
                        && *now_ms <= a.expires_ms
                }) {
                    // The same call again while it waits (or once approved, from a node that
                    // had not seen the approval yet): the same request.
                    return Ok((
                        GovResult::Approval(a.id),
                        format!("propose_again id={} requester={requester}", a.id),
                    ));
                }
                self.prune(*now_ms);
                if self.approvals.values().filter(|a| a.is_open()).count() >= MAX_OPEN_APPROVALS {
                    return no(ErrorCode::Busy, "too many open approval requests");
                }
                self.next_approval = self.next_approval.max(1);
                let id = self.next_approval;
                self.next_approval += 1;
                self.approvals.insert(
                    id,
                    Approval {
                        id,
                        requester: requester.clone(),
                        op: *op,
                        scope: *scope,
                        description: description.clone(),
                        params_hash: *params_hash,
                        created_ms: *now_ms,
                        expires_ms: now_ms.saturating_add(*ttl_ms),
                        quorum: (*quorum).max(1),
                        eligible: eligible.clone(),
                        approvals: Vec::new(),
                        rejected_by: None,
                        status: Stored::Pending,
                    },
                );
                Ok((
                    GovResult::Approval(id),
                    format!(
                        "propose id={id} requester={requester} op={op} scope={scope:?} \
                         params={} quorum={quorum} eligible={eligible:?} expires_ms={} what={description:?}",
                        hex::encode(params_hash),
                        now_ms.saturating_add(*ttl_ms)
                    ),
                ))
            }
            GovCommand::Approve {
                id,
                officer,
                identity,
                params_hash,
                now_ms,
            } => {
                let a = self.open_request(*id, *now_ms)?;
                if a.params_hash != *params_hash {
                    return no(
                        ErrorCode::ArgumentsBad,
                        format!("request {id} has other parameters than the ones approved"),
                    );
                }
                Self::check_approver(a, officer, identity)?;
                if a.status == Stored::Approved {
                    return no(
                        ErrorCode::ActionProhibited,
                        format!("request {id} is already approved"),
                    );
                }
                let Some(a) = self.approvals.get_mut(id) else {
                    return no(
                        ErrorCode::GeneralError,
                        format!("approval request {id} vanished"),
                    );
                };
                a.approvals.push(officer.clone());
                let met = a.approvals.len() as u64 >= u64::from(a.quorum);
                if met {
                    a.status = Stored::Approved;
                }
                let n = a.approvals.len();
                let q = a.quorum;
                Ok((
                    GovResult::Approval(*id),
                    format!(
                        "approve id={id} officer={officer} approvals={n}/{q}{}",
                        if met { " approved" } else { "" }
                    ),
                ))
            }
            GovCommand::Reject {
                id,
                officer,
                identity,
                now_ms,
            } => {
                let a = self.open_request(*id, *now_ms)?;
                Self::check_approver(a, officer, identity)?;
                let Some(a) = self.approvals.get_mut(id) else {
                    return no(
                        ErrorCode::GeneralError,
                        format!("approval request {id} vanished"),
                    );
                };
                a.status = Stored::Rejected;
                a.rejected_by = Some(officer.clone());
                Ok((
                    GovResult::Approval(*id),
                    format!("reject id={id} officer={officer}"),
                ))
            }
            GovCommand::Consume {
                id,
                requester,
                params_hash,
                now_ms,
            } => {
                self.check_consumable(*id, requester, params_hash, *now_ms)?;
                self.consume(*id, index);
                Ok((
                    GovResult::Done,
                    format!("consume id={id} requester={requester}"),
                ))
            }
            GovCommand::AddTerminal(t) => {
                if !cloudkey_protocol::gov::valid_terminal_id(&t.id) {
                    return no(
                        ErrorCode::ArgumentsBad,
                        format!("bad terminal number {:?}", t.id),
                    );
                }
                if t.admins.is_empty() {
                    return no(
                        ErrorCode::ArgumentsBad,
                        "a terminal needs at least one administrator",
                    );
                }
                if let Some(unknown) = t.admins.iter().find(|a| !self.officers.contains_key(*a)) {
                    return no(ErrorCode::ArgumentsBad, format!("no officer {unknown}"));
                }
                let key = match &t.key {
                    TerminalKey::Rsa { n, .. } => format!("rsa-{}", n.len() * 8),
                    TerminalKey::Sm2 { .. } => "sm2".to_string(),
                };
                let last_injection = self.terminals.get(&t.id).and_then(|old| old.last_injection);
                self.terminals.insert(
                    t.id.clone(),
                    Terminal {
                        id: t.id.clone(),
                        key: t.key.clone(),
                        admins: t.admins.clone(),
                        identity: t.identity.clone(),
                        last_injection,
                    },
                );
                Ok((
                    GovResult::Done,
                    format!(
                        "add_terminal id={} key={key} admins={:?} identity={:?}",
                        t.id, t.admins, t.identity
                    ),
                ))
            }
            GovCommand::TmkRequest {
                terminal,
                nonce_hash,
                now_ms,
                ttl_ms,
            } => {
                if !self.terminals.contains_key(terminal) {
                    return no(ErrorCode::ArgumentsBad, format!("no terminal {terminal}"));
                }
                self.next_application = self.next_application.max(1);
                let id = self.next_application;
                self.next_application += 1;
                self.applications.insert(
                    id,
                    Application {
                        id,
                        terminal: terminal.clone(),
                        nonce_hash: *nonce_hash,
                        created_ms: *now_ms,
                        expires_ms: now_ms.saturating_add(*ttl_ms),
                        failures: 0,
                        state: AppState::Requested,
                    },
                );
                Ok((
                    GovResult::Application(id),
                    format!(
                        "tmk_request application={id} terminal={terminal} expires_ms={}",
                        now_ms.saturating_add(*ttl_ms)
                    ),
                ))
            }
            GovCommand::SmsIssued {
                officer,
                terminal,
                mac,
                now_ms,
                ttl_ms,
            } => {
                let Some(t) = self.terminals.get(terminal) else {
                    return no(ErrorCode::ArgumentsBad, format!("no terminal {terminal}"));
                };
                if !t.admins.contains(officer) {
                    return no(
                        ErrorCode::FunctionRejected,
                        format!("officer {officer} is not an administrator of terminal {terminal}"),
                    );
                }
                self.sms.insert(
                    (officer.clone(), terminal.clone()),
                    SmsCode {
                        mac: *mac,
                        expires_ms: now_ms.saturating_add(*ttl_ms),
                        used: false,
                    },
                );
                Ok((
                    GovResult::Done,
                    format!("sms_code_issued officer={officer} terminal={terminal}"),
                ))
            }
            GovCommand::TmkApply {
                application,
                terminal,
                officer,
                nonce_hash,
                sms_mac,
                now_ms,
                ttl_ms,
                quorum,
                eligible,
            } => self.tmk_apply(
                *application,
                terminal,
                officer,
                nonce_hash,
                sms_mac,
                *now_ms,
                *ttl_ms,
                *quorum,
                eligible,
            ),
            GovCommand::TmkInjected {
                application,
                delivery,
                blob,
                now_ms,
            } => {
                let Some(app) = self.applications.get(application) else {
                    return no(
                        ErrorCode::ArgumentsBad,
                        format!("no application {application}"),
                    );
                };
                let (approval, applicant) = match &app.state {
                    AppState::Applied {
                        approval,
                        applicant,
                    } => (*approval, applicant.clone()),
                    AppState::Injected { .. } => {
                        return no(
                            ErrorCode::ActionProhibited,
                            format!("application {application} was already injected"),
                        )
                    }
                    _ => {
                        return no(
                            ErrorCode::ApprovalRequired,
                            format!("application {application} has not been applied for"),
                        )
                    }
                };
                let terminal = app.terminal.clone();
                let requester = officer_requester(&applicant);
                let params = tmk_params_hash(&terminal, *application);
                self.check_consumable(approval, &requester, &params, *now_ms)?;
                self.consume(approval, index);
                if let Some(app) = self.applications.get_mut(application) {
                    app.state = AppState::Injected {
                        approval,
                        applicant,
                        delivery: delivery.clone(),
                        blob: blob.clone(),
                    };
                }
                if let Some(t) = self.terminals.get_mut(&terminal) {
                    t.last_injection = Some(*application);
                }
                Ok((
                    GovResult::Done,
                    format!(
                        "tmk_injected application={application} terminal={terminal} approval={approval} \
                         algorithm={} kcv={}",
                        delivery.algorithm,
                        hex::encode(delivery.kcv)
                    ),
                ))
            }
            GovCommand::TmkCheck {
                application,
                terminal,
                admin,
            } => {
                if !self.terminals.contains_key(terminal) {
                    return no(ErrorCode::ArgumentsBad, format!("no terminal {terminal}"));
                }
                Ok((
                    GovResult::Done,
                    format!(
                        "tmk_check application={application} terminal={terminal} admin={admin}"
                    ),
                ))
            }
            // An empty summary: nothing to audit.
            GovCommand::Barrier => Ok((GovResult::Done, String::new())),
            GovCommand::SetAuditKey(key) => {
                if self.audit_key.is_some() {
                    return no(
                        ErrorCode::ActionProhibited,
                        "the cluster already has an audit key",
                    );
                }
                let summary = format!(
                    "set_audit_key public={} endorsed_by_cert_sha256={}",
                    hex::encode(&key.info.public),
                    hex::encode(sha256(&key.info.endorser_cert))
                );
                self.audit_key = Some(key.clone());
                Ok((GovResult::Done, summary))
            }
            GovCommand::Checkpoint {
                index: covered,
                hash,
                signature,
            } => {
                if self.audit_key.is_none() {
                    return no(ErrorCode::ActionProhibited, "no audit key yet");
                }
                if self.last_checkpoint.is_some_and(|l| *covered <= l) {
                    return no(
                        ErrorCode::ActionProhibited,
                        "an older checkpoint than the last one",
                    );
                }
                self.last_checkpoint = Some(*covered);
                Ok((
                    GovResult::Done,
                    format!(
                        "checkpoint index={covered} hash={} signature={}",
                        hex::encode(hash),
                        hex::encode(signature)
                    ),
                ))
            }
            GovCommand::Usage {
                node,
                counts,
                now_ms,
            } => {
                let mut summary = format!("usage node={node} until_ms={now_ms} signatures=");
                for (i, (key, n)) in counts.iter().enumerate() {
                    if i > 0 {
                        summary.push(',');
                    }
                    let _ = write!(summary, "{key}:{n}");
                }
                Ok((GovResult::Done, summary))
            }
        }
    }

    /// An unexpired request that can still be approved or rejected.
    fn open_request(&self, id: u64, now_ms: u64) -> Result<&Approval, GovRefusal> {
        let Some(a) = self.approvals.get(&id) else {
            return no(ErrorCode::ArgumentsBad, format!("no approval request {id}"));
        };
        match a.status_at(now_ms) {
            ApprovalStatus::Pending | ApprovalStatus::Approved => Ok(a),
            s => no(ErrorCode::ActionProhibited, format!("request {id} is {s}")),
        }
    }

    fn check_approver(a: &Approval, officer: &str, identity: &str) -> Result<(), GovRefusal> {
        if a.requester == officer_requester(officer) || a.requester == identity {
            return no(
                ErrorCode::FunctionRejected,
                format!(
                    "officer {officer} made request {} and cannot approve it",
                    a.id
                ),
            );
        }
        if !a.eligible.is_empty() && !a.eligible.iter().any(|e| e == officer) {
            return no(
                ErrorCode::FunctionRejected,
                format!("officer {officer} may not approve request {}", a.id),
            );
        }
        if a.approvals.iter().any(|o| o == officer) {
            return no(
                ErrorCode::ActionProhibited,
                format!("officer {officer} already approved request {}", a.id),
            );
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn tmk_apply(
        &mut self,
        application: u64,
        terminal: &str,
        officer: &str,
        nonce_hash: &[u8; 32],
        sms_mac: &[u8; 32],
        now_ms: u64,
        ttl_ms: u64,
        quorum: u32,
        eligible: &[String],
    ) -> Outcome {
        let Some(app) = self.applications.get(&application) else {
            return no(
                ErrorCode::ArgumentsBad,
                format!("no application {application}"),
            );
        };
        if app.terminal != terminal {
            return no(
                ErrorCode::ArgumentsBad,
                format!("application {application} is not for terminal {terminal}"),
            );
        }
        match app.state {
            AppState::Requested => {}
            AppState::Locked => {
                return no(
                    ErrorCode::PinLocked,
                    format!("application {application} is locked after too many wrong attempts"),
                )
            }
            _ => {
                return no(
                    ErrorCode::ActionProhibited,
                    format!("application {application} was already applied for"),
                )
            }
        }
        if now_ms > app.expires_ms {
            return no(
                ErrorCode::FunctionRejected,
                format!("the QR payload of application {application} has expired; ask the terminal for a new one"),
            );
        }
        let admin = self
            .terminals
            .get(terminal)
            .is_some_and(|t| t.admins.iter().any(|a| a == officer));
        let code = self.sms.get(&(officer.to_string(), terminal.to_string()));
        let failure = if app.nonce_hash != *nonce_hash {
            Some("the QR payload does not match the terminal's application")
        } else if !admin {
            Some("the officer is not an administrator of this terminal")
        } else {
            match code {
                None => Some("no SMS code was issued to this officer for this terminal"),
                Some(c) if c.used => Some("the SMS code was already used"),
                Some(c) if now_ms > c.expires_ms => Some("the SMS code has expired"),
                Some(c) if c.mac != *sms_mac => Some("wrong SMS code"),
                Some(_) => None,
            }
        };
        if let Some(why) = failure {
            let Some(app) = self.applications.get_mut(&application) else {
                return no(
                    ErrorCode::GeneralError,
                    format!("application {application} vanished"),
                );
            };
            app.failures += 1;
            let locked = app.failures >= MAX_APPLICATION_FAILURES;
            if locked {
                app.state = AppState::Locked;
            }
            let count = app.failures;
            return Ok((
                GovResult::Failed(
                    if locked { ErrorCode::PinLocked } else { ErrorCode::PinIncorrect },
                    format!("{why} (attempt {count} of {MAX_APPLICATION_FAILURES}{})", if locked { ", application locked" } else { "" }),
                ),
                format!(
                    "tmk_apply_failed application={application} officer={officer} reason={why:?} count={count} locked={locked}"
                ),
            ));
        }
        if let Some(c) = self
            .sms
            .get_mut(&(officer.to_string(), terminal.to_string()))
        {
            c.used = true;
        }
        self.next_approval = self.next_approval.max(1);
        let id = self.next_approval;
        self.next_approval += 1;
        let requester = officer_requester(officer);
        let description = format!(
            "inject a terminal master key into terminal {terminal} (application {application})"
        );
        let params_hash = tmk_params_hash(terminal, application);
        self.approvals.insert(
            id,
            Approval {
                id,
                requester: requester.clone(),
                op: GuardedOp::TmkInject,
                scope: PolicyScope::Cluster,
                description,
                params_hash,
                created_ms: now_ms,
                expires_ms: now_ms.saturating_add(ttl_ms),
                quorum: quorum.max(1),
                eligible: eligible.to_vec(),
                approvals: Vec::new(),
                rejected_by: None,
                status: Stored::Pending,
            },
        );
        if let Some(app) = self.applications.get_mut(&application) {
            app.state = AppState::Applied {
                approval: id,
                applicant: officer.to_string(),
            };
        }
        Ok((
            GovResult::Approval(id),
            format!(
                "tmk_apply application={application} terminal={terminal} officer={officer} approval={id} \
                 quorum={quorum} eligible={eligible:?}"
            ),
        ))
    }

    /// Drops the oldest closed requests beyond [`KEEP_CLOSED_APPROVALS`], so the table stays
    /// bounded (the audit chain keeps their history).
    fn prune(&mut self, now_ms: u64) {
        let closed: Vec<u64> = self
            .approvals
            .values()
            .filter(|a| !a.is_open() || now_ms > a.expires_ms)
            .map(|a| a.id)
            .collect();
        if closed.len() > KEEP_CLOSED_APPROVALS {
            for id in &closed[..closed.len() - KEEP_CLOSED_APPROVALS] {
                self.approvals.remove(id);
            }
        }
    }
}

/// The parameters hash of a TMK injection: terminal and application.
#[must_use]
pub fn tmk_params_hash(terminal: &str, application: u64) -> [u8; 32] {
    let mut m = b"cloudkey tmk v1\0".to_vec();
    m.extend_from_slice(terminal.as_bytes());
    m.push(0);
    m.extend_from_slice(&application.to_be_bytes());
    sha256(&m)
}

/// SHA-256.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cloudkey_protocol::msg::TokenId;

    fn pin() -> PinHash {
        PinHash("$argon2id$test".into())
    }

    fn with_officers(names: &[&str]) -> Governance {
        let mut g = Governance::default();
        for (i, n) in names.iter().enumerate() {
            let cmd = GovCommand::AddOfficer {
                name: (*n).into(),
                identity: format!("operator/{n}"),
                pin: pin(),
            };
            g.apply(i as u64 + 1, &cmd, 3).unwrap();
        }
        g
    }

    fn propose(g: &mut Governance, requester: &str, hash: [u8; 32], quorum: u32, now: u64) -> u64 {
        let cmd = GovCommand::Propose {
            requester: requester.into(),
            op: GuardedOp::Generate,
            scope: PolicyScope::Token(TokenId(1)),
            description: "generate".into(),
            params_hash: hash,
            quorum,
            eligible: vec![],
            now_ms: now,
            ttl_ms: 1000,
        };
        match g.apply(10, &cmd, 3).unwrap().0 {
            GovResult::Approval(id) => id,
            other => panic!("{other:?}"),
        }
    }

    fn approve(
        g: &mut Governance,
        id: u64,
        who: &str,
        hash: [u8; 32],
        now: u64,
    ) -> Result<(), GovRefusal> {
        let cmd = GovCommand::Approve {
            id,
            officer: who.into(),
            identity: format!("operator/{who}"),
            params_hash: hash,
            now_ms: now,
        };
        g.apply(11, &cmd, 3).map(|_| ())
    }

    #[test]
    fn quorum_self_approval_binding_and_exactly_once() {
        let mut g = with_officers(&["alice", "bob", "carol"]);
        let h = [7u8; 32];
        let id = propose(&mut g, "officer/alice", h, 2, 100);
        // The same call again finds the same open request.
        assert_eq!(propose(&mut g, "officer/alice", h, 2, 150), id);
        // The requester never approves; approvals bind the parameters; each officer once.
        let e = approve(&mut g, id, "alice", h, 200).unwrap_err();
        assert_eq!(e.0, ErrorCode::FunctionRejected, "{}", e.1);
        let e = approve(&mut g, id, "bob", [8u8; 32], 200).unwrap_err();
        assert_eq!(e.0, ErrorCode::ArgumentsBad, "{}", e.1);
        approve(&mut g, id, "bob", h, 200).unwrap();
        assert!(approve(&mut g, id, "bob", h, 210).is_err());
        assert_eq!(g.approved_for("officer/alice", &h, 220), None);
        approve(&mut g, id, "carol", h, 220).unwrap();
        assert_eq!(g.approved_for("officer/alice", &h, 230), Some(id));
        // Other parameters or another requester: not authorised.
        assert!(g
            .check_consumable(id, "officer/alice", &[8u8; 32], 230)
            .is_err());
        assert!(g.check_consumable(id, "officer/bob", &h, 230).is_err());
        // Consumed once.
        let consume = GovCommand::Consume {
            id,
            requester: "officer/alice".into(),
            params_hash: h,
            now_ms: 240,
        };
        g.apply(42, &consume, 3).unwrap();
        let e = g.apply(43, &consume, 3).unwrap_err();
        assert_eq!(e.0, ErrorCode::ApprovalRequired);
        assert_eq!(
            g.approvals[&id].status_at(250),
            ApprovalStatus::Consumed { index: 42 }
        );
    }

    #[test]
    fn expired_and_rejected_requests_cannot_be_approved_or_used() {
        let mut g = with_officers(&["alice", "bob"]);
        let h = [1u8; 32];
        let id = propose(&mut g, "client/app", h, 1, 100);
        // Expired (ttl 1000 ms).
        let e = approve(&mut g, id, "bob", h, 1_101).unwrap_err();
        assert_eq!(e.0, ErrorCode::ActionProhibited, "{}", e.1);
        assert_eq!(g.approvals[&id].status_at(1_101), ApprovalStatus::Expired);
        // A new one, rejected.
        let id2 = propose(&mut g, "client/app", h, 1, 2_000);
        assert_ne!(id, id2);
        let reject = GovCommand::Reject {
            id: id2,
            officer: "alice".into(),
            identity: "operator/alice".into(),
            now_ms: 2_100,
        };
        g.apply(20, &reject, 3).unwrap();
        assert!(approve(&mut g, id2, "bob", h, 2_200).is_err());
        assert!(g.check_consumable(id2, "client/app", &h, 2_300).is_err());
        // A request made with an officer's own certificate is theirs too.
        let id3 = propose(&mut g, "operator/bob", h, 1, 3_000);
        assert_eq!(
            approve(&mut g, id3, "bob", h, 3_001).unwrap_err().0,
            ErrorCode::FunctionRejected
        );
    }

    fn terminal(g: &mut Governance) {
        let cmd = GovCommand::AddTerminal(TerminalInfo {
            id: "ATM-1".into(),
            key: TerminalKey::Sm2 { point: vec![4; 65] },
            admins: vec!["alice".into(), "bob".into()],
            identity: None,
            last_injection: None,
        });
        g.apply(30, &cmd, 3).unwrap();
    }

    fn apply_cmd(app: u64, officer: &str, nonce: [u8; 32], mac: [u8; 32], now: u64) -> GovCommand {
        GovCommand::TmkApply {
            application: app,
            terminal: "ATM-1".into(),
            officer: officer.into(),
            nonce_hash: nonce,
            sms_mac: mac,
            now_ms: now,
            ttl_ms: 10_000,
            quorum: 1,
            eligible: vec!["bob".into()],
        }
    }

    #[test]
    fn tmk_application_checks_count_and_lock_and_codes_are_single_use() {
        let mut g = with_officers(&["alice", "bob", "mallory"]);
        terminal(&mut g);
        let req = GovCommand::TmkRequest {
            terminal: "ATM-1".into(),
            nonce_hash: [5; 32],
            now_ms: 1_000,
            ttl_ms: 60_000,
        };
        let GovResult::Application(app) = g.apply(31, &req, 3).unwrap().0 else {
            panic!()
        };
        let sms = GovCommand::SmsIssued {
            officer: "alice".into(),
            terminal: "ATM-1".into(),
            mac: [9; 32],
            now_ms: 1_000,
            ttl_ms: 300_000,
        };
        g.apply(32, &sms, 3).unwrap();
        // Not an admin of the terminal: no code for them.
        let mut other = sms.clone();
        if let GovCommand::SmsIssued { officer, .. } = &mut other {
            *officer = "mallory".into();
        }
        assert!(g.apply(33, &other, 3).is_err());
        // Wrong payload, wrong code, wrong officer: counted.
        for cmd in [
            apply_cmd(app, "alice", [6; 32], [9; 32], 2_000),
            apply_cmd(app, "alice", [5; 32], [1; 32], 2_000),
            apply_cmd(app, "mallory", [5; 32], [9; 32], 2_000),
        ] {
            match g.apply(34, &cmd, 3).unwrap().0 {
                GovResult::Failed(ErrorCode::PinIncorrect, _) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(g.applications[&app].failures, 3);
        // Stale: after the payload's lifetime.
        let e = g
            .apply(35, &apply_cmd(app, "alice", [5; 32], [9; 32], 70_000), 3)
            .unwrap_err();
        assert_eq!(e.0, ErrorCode::FunctionRejected);
        // Right: opens the approval request; the code is used up.
        let GovResult::Approval(id) = g
            .apply(36, &apply_cmd(app, "alice", [5; 32], [9; 32], 3_000), 3)
            .unwrap()
            .0
        else {
            panic!()
        };
        assert_eq!(g.approvals[&id].eligible, vec!["bob".to_string()]);
        // The second check before approval: not consumable.
        let delivery = TmkDelivery {
            application: app,
            algorithm: "sm4".into(),
            encrypted: vec![1, 2, 3],
            kcv: [1, 2, 3],
        };
        let inject = GovCommand::TmkInjected {
            application: app,
            delivery,
            blob: vec![0; 8],
            now_ms: 3_500,
        };
        assert_eq!(
            g.apply(37, &inject, 3).unwrap_err().0,
            ErrorCode::ApprovalRequired
        );
        approve(&mut g, id, "bob", tmk_params_hash("ATM-1", app), 4_000).unwrap();
        g.apply(38, &inject, 3).unwrap();
        // Exactly once.
        assert_eq!(
            g.apply(39, &inject, 3).unwrap_err().0,
            ErrorCode::ActionProhibited
        );
        assert_eq!(g.terminals["ATM-1"].last_injection, Some(app));

        // A second application: the used code does not work again, and five failures lock.
        let GovResult::Application(app2) = g.apply(40, &req, 3).unwrap().0 else {
            panic!()
        };
        for i in 0..MAX_APPLICATION_FAILURES {
            let r = g
                .apply(41, &apply_cmd(app2, "alice", [5; 32], [9; 32], 5_000), 3)
                .unwrap()
                .0;
            let GovResult::Failed(code, detail) = r else {
                panic!("{r:?}")
            };
            if i == 0 {
                assert!(detail.contains("already used"), "{detail}");
            }
            let last = i + 1 == MAX_APPLICATION_FAILURES;
            assert_eq!(
                code,
                if last {
                    ErrorCode::PinLocked
                } else {
                    ErrorCode::PinIncorrect
                }
            );
        }
        assert_eq!(g.applications[&app2].state, AppState::Locked);
        assert_eq!(
            g.apply(42, &apply_cmd(app2, "alice", [5; 32], [9; 32], 5_000), 3)
                .unwrap_err()
                .0,
            ErrorCode::PinLocked
        );
    }
}
