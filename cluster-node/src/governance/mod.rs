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
//!
//! One file per concern, each with the `impl Governance` of its commands: [`officers`],
//! [`policies`], [`approvals`], [`terminals`] (registry and TMK applications), [`audit`] (audit
//! key, checkpoints, usage). [`Governance::apply`] dispatches each command to one function.

mod approvals;
mod audit;
mod officers;
mod policies;
mod terminals;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

pub use approvals::{Approval, Stored};
pub use audit::AuditKey;
use cloudkey_protocol::gov::{GuardedOp, PolicyScope, Rule, TerminalInfo, TmkDelivery};
use cloudkey_protocol::msg::ObjectId;
use cloudkey_protocol::ErrorCode;
pub use officers::Officer;
use serde::{Deserialize, Serialize};
pub use terminals::{tmk_params_hash, AppState, Application, SmsCode, Terminal};

use crate::state::{refuse, PinHash, Refusal};

/// Wrong SMS codes or QR payloads that lock a TMK application.
pub const MAX_APPLICATION_FAILURES: u32 = 5;
/// The most approval requests kept open at once (older closed ones are pruned first).
pub const MAX_OPEN_APPROVALS: usize = 10_000;
/// Closed (approved-and-used, rejected, expired) requests kept for listing.
pub const KEEP_CLOSED_APPROVALS: usize = 1_000;

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
    /// A wrong officer PIN, counted after the check. → `Failures`. Written by nodes before
    /// attempts were counted first ([`GovCommand::OfficerAttempt`]); still applied when the
    /// log holds it.
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
    /// An officer PIN attempt, counted before the PIN is checked. → `Failures` (`locked`
    /// when it was the last one allowed); refused `PinLocked`, uncounted, at the limit.
    OfficerAttempt {
        /// Officer.
        name: String,
    },
}

impl GovCommand {
    /// Who may have it committed through a forward (`crate::state::CommandClass`).
    #[must_use]
    pub fn class(&self) -> crate::state::CommandClass {
        use crate::state::CommandClass::{Direct, Node};
        match self {
            // Counted attempts, read barriers, audit bookkeeping a node writes on its own, and
            // opening or consuming an approval (which needs officers' approvals to mean
            // anything).
            Self::OfficerAttempt { .. }
            | Self::Barrier
            | Self::SetAuditKey(_)
            | Self::Checkpoint { .. }
            | Self::Usage { .. }
            | Self::Propose { .. }
            | Self::Consume { .. } => Node,
            // Operator, officer and terminal acts; the two officer counters of before
            // attempts were counted first (a forged success would clear a counter).
            Self::AddOfficer { .. }
            | Self::OfficerFailed { .. }
            | Self::OfficerSucceeded { .. }
            | Self::SetPolicy { .. }
            | Self::Approve { .. }
            | Self::Reject { .. }
            | Self::AddTerminal(_)
            | Self::TmkRequest { .. }
            | Self::SmsIssued { .. }
            | Self::TmkApply { .. }
            | Self::TmkInjected { .. }
            | Self::TmkCheck { .. } => Direct,
        }
    }

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
            Self::OfficerAttempt { .. } => "officer_attempt",
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

type Outcome = Result<(GovResult, String), Refusal>;

/// `officer/NAME`: how an officer appears as a requester.
#[must_use]
pub fn officer_requester(name: &str) -> String {
    format!("officer/{name}")
}

impl Governance {
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
            } => self.add_officer(name, identity, pin),
            GovCommand::OfficerFailed { name } => self.officer_failed(name, max_failures),
            GovCommand::OfficerSucceeded { name } => self.officer_succeeded(name),
            GovCommand::OfficerAttempt { name } => self.officer_attempt(name, max_failures),
            GovCommand::SetPolicy { scope, rules } => self.set_policy(*scope, rules),
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
            } => self.propose(
                requester,
                *op,
                *scope,
                description,
                params_hash,
                *quorum,
                eligible,
                *now_ms,
                *ttl_ms,
            ),
            GovCommand::Approve {
                id,
                officer,
                identity,
                params_hash,
                now_ms,
            } => self.approve(*id, officer, identity, params_hash, *now_ms),
            GovCommand::Reject {
                id,
                officer,
                identity,
                now_ms,
            } => self.reject(*id, officer, identity, *now_ms),
            GovCommand::Consume {
                id,
                requester,
                params_hash,
                now_ms,
            } => self.consume_approved(index, *id, requester, params_hash, *now_ms),
            GovCommand::AddTerminal(t) => self.add_terminal(t),
            GovCommand::TmkRequest {
                terminal,
                nonce_hash,
                now_ms,
                ttl_ms,
            } => self.tmk_request(terminal, nonce_hash, *now_ms, *ttl_ms),
            GovCommand::SmsIssued {
                officer,
                terminal,
                mac,
                now_ms,
                ttl_ms,
            } => self.sms_issued(officer, terminal, mac, *now_ms, *ttl_ms),
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
            } => self.tmk_injected(index, *application, delivery, blob, *now_ms),
            GovCommand::TmkCheck {
                application,
                terminal,
                admin,
            } => self.tmk_check(*application, terminal, admin),
            // An empty summary: nothing to audit.
            GovCommand::Barrier => Ok((GovResult::Done, String::new())),
            GovCommand::SetAuditKey(key) => self.set_audit_key(key),
            GovCommand::Checkpoint {
                index: covered,
                hash,
                signature,
            } => self.checkpoint(*covered, hash, signature),
            GovCommand::Usage {
                node,
                counts,
                now_ms,
            } => self.usage(*node, counts, *now_ms),
        }
    }
}

/// SHA-256.
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
