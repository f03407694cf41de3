//! Cluster bootstrap (`Init`) and membership changes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{refuse, Applied, CommandResult, Refusal, State};

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

impl State {
    /// Cluster settings, once initialised.
    #[must_use]
    pub fn cluster(&self) -> Option<ClusterInfo> {
        self.cluster.read().ok().and_then(|c| c.clone())
    }

    /// Whether `info` may initialise the cluster; [`State::apply_init`] changes nothing
    /// unless it may.
    pub(super) fn check_init(info: &ClusterInfo) -> Result<(), Refusal> {
        if info.max_failures == 0 {
            return refuse(ErrorCode::ArgumentsBad, "max_failures must be at least 1");
        }
        Ok(())
    }

    /// `Init`: fixes the cluster settings.
    pub(super) fn apply_init(&self, info: &ClusterInfo) -> Result<Applied, Refusal> {
        Self::check_init(info)?;
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
}
