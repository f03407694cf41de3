//! Governance changes in the replicated state, and quorum-guarded changes (an approval
//! consumed in the same log entry as the change it approved).

use cloudkey_protocol::ErrorCode;

use super::{refuse, Applied, ClusterInfo, Command, CommandResult, Refusal, State};
use crate::governance::{GovCommand, GovResult};

impl State {
    /// `Gov`: a governance change (`crate::governance`).
    pub(super) fn apply_gov(
        &self,
        index: u64,
        cluster: &ClusterInfo,
        g: &GovCommand,
    ) -> Result<Applied, Refusal> {
        let Some(applied) = self.update_gov(|gov| gov.apply(index, g, cluster.max_failures)) else {
            return refuse(ErrorCode::GeneralError, "governance state lock poisoned");
        };
        let (result, summary) = applied?;
        Ok(Applied {
            result: match result {
                GovResult::Done => CommandResult::Done,
                GovResult::Failures { count, locked } => CommandResult::Failures { count, locked },
                GovResult::Approval(id) => CommandResult::Approval(id),
                GovResult::Application(id) => CommandResult::Application(id),
                GovResult::Failed(code, detail) => CommandResult::Failed { code, detail },
            },
            summary,
        })
    }

    /// `Guarded`: consumes approval request `approval` and applies `inner` in the same log
    /// entry, or neither (exactly once).
    pub(super) fn apply_guarded(
        &self,
        index: u64,
        approval: u64,
        requester: &str,
        params_hash: &[u8; 32],
        now_ms: u64,
        inner: &Command,
    ) -> Result<Applied, Refusal> {
        // Object changes, and the governance changes a `govern` rule guards.
        let guardable = match inner {
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
        self.with_gov(|g| g.check_consumable(approval, requester, params_hash, now_ms))?;
        let applied = self.try_apply(index, inner)?;
        self.update_gov(|gov| gov.consume(approval, index));
        Ok(Applied {
            result: applied.result,
            summary: format!(
                "guarded approval={approval} requester={requester}: {}",
                applied.summary
            ),
        })
    }
}
