//! Quorum approval requests: propose, approve, reject, consume, and keeping the table bounded.

use cloudkey_protocol::gov::{ApprovalInfo, ApprovalStatus, GuardedOp, PolicyScope};
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{
    officer_requester, refuse, GovResult, Governance, Outcome, Refusal, KEEP_CLOSED_APPROVALS,
    MAX_OPEN_APPROVALS,
};

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

/// What a new approval request is for: everything but its id, its times and its progress.
pub(super) struct NewRequest<'a> {
    pub(super) requester: String,
    pub(super) op: GuardedOp,
    pub(super) scope: PolicyScope,
    pub(super) description: String,
    pub(super) params_hash: [u8; 32],
    pub(super) quorum: u32,
    pub(super) eligible: &'a [String],
}

impl Governance {
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
    ) -> Result<(), Refusal> {
        let Some(a) = self.approvals.get(&id) else {
            return refuse(
                ErrorCode::ApprovalRequired,
                format!("no approval request {id}"),
            );
        };
        if a.requester != requester || a.params_hash != *params_hash {
            return refuse(
                ErrorCode::ApprovalRequired,
                format!("approval request {id} authorises another requester or other parameters"),
            );
        }
        match a.status_at(now_ms) {
            ApprovalStatus::Approved => Ok(()),
            s => refuse(
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

    /// Opens a pending request with the next id, made at `now_ms` and open for `ttl_ms`;
    /// returns its id.
    pub(super) fn open_pending(&mut self, r: NewRequest<'_>, now_ms: u64, ttl_ms: u64) -> u64 {
        self.next_approval = self.next_approval.max(1);
        let id = self.next_approval;
        self.next_approval += 1;
        self.approvals.insert(
            id,
            Approval {
                id,
                requester: r.requester,
                op: r.op,
                scope: r.scope,
                description: r.description,
                params_hash: r.params_hash,
                created_ms: now_ms,
                expires_ms: now_ms.saturating_add(ttl_ms),
                quorum: r.quorum.max(1),
                eligible: r.eligible.to_vec(),
                approvals: Vec::new(),
                rejected_by: None,
                status: Stored::Pending,
            },
        );
        id
    }

    /// `Propose`: a new approval request, or the open one with the same requester and parameters.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn propose(
        &mut self,
        requester: &str,
        op: GuardedOp,
        scope: PolicyScope,
        description: &str,
        params_hash: &[u8; 32],
        quorum: u32,
        eligible: &[String],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Outcome {
        if let Some(a) = self.approvals.values().find(|a| {
            a.requester == *requester
                && a.params_hash == *params_hash
                && matches!(a.status, Stored::Pending | Stored::Approved)
                && now_ms <= a.expires_ms
        }) {
            // The same call again while it waits (or once approved, from a node that
            // had not seen the approval yet): the same request.
            return Ok((
                GovResult::Approval(a.id),
                format!("propose_again id={} requester={requester}", a.id),
            ));
        }
        self.prune(now_ms);
        if self.approvals.values().filter(|a| a.is_open()).count() >= MAX_OPEN_APPROVALS {
            return refuse(ErrorCode::Busy, "too many open approval requests");
        }
        let id = self.open_pending(
            NewRequest {
                requester: requester.to_owned(),
                op,
                scope,
                description: description.to_owned(),
                params_hash: *params_hash,
                quorum,
                eligible,
            },
            now_ms,
            ttl_ms,
        );
        Ok((
            GovResult::Approval(id),
            format!(
                "propose id={id} requester={requester} op={op} scope={scope:?} \
                 params={} quorum={quorum} eligible={eligible:?} expires_ms={} what={description:?}",
                hex::encode(params_hash),
                now_ms.saturating_add(ttl_ms)
            ),
        ))
    }

    /// `Approve`: one officer's approval; the request is approved at its quorum.
    pub(super) fn approve(
        &mut self,
        id: u64,
        officer: &str,
        identity: &str,
        params_hash: &[u8; 32],
        now_ms: u64,
    ) -> Outcome {
        let a = self.open_request(id, now_ms)?;
        if a.params_hash != *params_hash {
            return refuse(
                ErrorCode::ArgumentsBad,
                format!("request {id} has other parameters than the ones approved"),
            );
        }
        Self::check_approver(a, officer, identity)?;
        if a.status == Stored::Approved {
            return refuse(
                ErrorCode::ActionProhibited,
                format!("request {id} is already approved"),
            );
        }
        let Some(a) = self.approvals.get_mut(&id) else {
            return refuse(
                ErrorCode::GeneralError,
                format!("approval request {id} vanished"),
            );
        };
        a.approvals.push(officer.to_owned());
        let met = a.approvals.len() as u64 >= u64::from(a.quorum);
        if met {
            a.status = Stored::Approved;
        }
        let n = a.approvals.len();
        let q = a.quorum;
        Ok((
            GovResult::Approval(id),
            format!(
                "approve id={id} officer={officer} approvals={n}/{q}{}",
                if met { " approved" } else { "" }
            ),
        ))
    }

    /// `Reject`: one officer closes the request.
    pub(super) fn reject(
        &mut self,
        id: u64,
        officer: &str,
        identity: &str,
        now_ms: u64,
    ) -> Outcome {
        let a = self.open_request(id, now_ms)?;
        Self::check_approver(a, officer, identity)?;
        let Some(a) = self.approvals.get_mut(&id) else {
            return refuse(
                ErrorCode::GeneralError,
                format!("approval request {id} vanished"),
            );
        };
        a.status = Stored::Rejected;
        a.rejected_by = Some(officer.to_owned());
        Ok((
            GovResult::Approval(id),
            format!("reject id={id} officer={officer}"),
        ))
    }

    /// `Consume`: uses up an approved request (an operation outside this state ran under it).
    pub(super) fn consume_approved(
        &mut self,
        index: u64,
        id: u64,
        requester: &str,
        params_hash: &[u8; 32],
        now_ms: u64,
    ) -> Outcome {
        self.check_consumable(id, requester, params_hash, now_ms)?;
        self.consume(id, index);
        Ok((
            GovResult::Done,
            format!("consume id={id} requester={requester}"),
        ))
    }

    /// An unexpired request that can still be approved or rejected.
    pub(super) fn open_request(&self, id: u64, now_ms: u64) -> Result<&Approval, Refusal> {
        let Some(a) = self.approvals.get(&id) else {
            return refuse(ErrorCode::ArgumentsBad, format!("no approval request {id}"));
        };
        match a.status_at(now_ms) {
            ApprovalStatus::Pending | ApprovalStatus::Approved => Ok(a),
            s => refuse(ErrorCode::ActionProhibited, format!("request {id} is {s}")),
        }
    }

    pub(super) fn check_approver(
        a: &Approval,
        officer: &str,
        identity: &str,
    ) -> Result<(), Refusal> {
        if a.requester == officer_requester(officer) || a.requester == identity {
            return refuse(
                ErrorCode::FunctionRejected,
                format!(
                    "officer {officer} made request {} and cannot approve it",
                    a.id
                ),
            );
        }
        if !a.eligible.is_empty() && !a.eligible.iter().any(|e| e == officer) {
            return refuse(
                ErrorCode::FunctionRejected,
                format!("officer {officer} may not approve request {}", a.id),
            );
        }
        if a.approvals.iter().any(|o| o == officer) {
            return refuse(
                ErrorCode::ActionProhibited,
                format!("officer {officer} already approved request {}", a.id),
            );
        }
        Ok(())
    }

    /// Drops the oldest closed requests beyond [`KEEP_CLOSED_APPROVALS`], so the table stays
    /// bounded (the audit chain keeps their history).
    pub(super) fn prune(&mut self, now_ms: u64) {
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
