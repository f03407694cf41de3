//! Policies: which operations on which scopes need quorum approval.

use std::fmt::Write as _;

use cloudkey_protocol::gov::{GuardedOp, PolicyScope, Rule};
use cloudkey_protocol::msg::{ObjectId, TokenId};
use cloudkey_protocol::ErrorCode;

use super::{refuse, GovResult, Governance, Outcome};

impl Governance {
    /// The rule guarding `op` on one of `keys` (checked first, in order) or on `token`, and its
    /// scope. An operation that involves two keys (a wrap: the key and the wrapping key) is
    /// guarded when either is.
    #[must_use]
    pub fn rule_for(
        &self,
        op: GuardedOp,
        token: Option<TokenId>,
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

    /// `SetPolicy`: replaces the rules of a scope (no rules: removes its policy).
    pub(super) fn set_policy(&mut self, scope: PolicyScope, rules: &[Rule]) -> Outcome {
        for r in rules {
            if r.quorum == 0 || r.quorum > 16 {
                return refuse(ErrorCode::ArgumentsBad, "a quorum is 1 to 16 approvals");
            }
            if r.ttl_ms == 0 {
                return refuse(
                    ErrorCode::ArgumentsBad,
                    "a request lifetime must be positive",
                );
            }
            if let Some(unknown) = r.officers.iter().find(|o| !self.officers.contains_key(*o)) {
                return refuse(ErrorCode::ArgumentsBad, format!("no officer {unknown}"));
            }
            if !r.officers.is_empty() && (r.officers.len() as u64) < u64::from(r.quorum) {
                return refuse(
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
            self.policies.remove(&scope);
        } else {
            self.policies.insert(scope, rules.to_vec());
        }
        Ok((GovResult::Done, summary))
    }
}
