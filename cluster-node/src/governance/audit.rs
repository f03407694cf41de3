//! The chip-held audit key, signed checkpoints of the audit chain, and usage summaries.

use std::fmt::Write as _;

use cloudkey_protocol::gov::AuditKeyInfo;
use cloudkey_protocol::msg::ObjectId;
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{refuse, sha256, GovResult, Governance, Outcome};

/// The chip-held audit key: its blob and its endorsement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditKey {
    /// Blob (P-256, sign only).
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
    /// Public key and endorsement.
    pub info: AuditKeyInfo,
}

impl Governance {
    /// `SetAuditKey`: the cluster's audit key, once.
    pub(super) fn set_audit_key(&mut self, key: &AuditKey) -> Outcome {
        if self.audit_key.is_some() {
            return refuse(
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

    /// `Checkpoint`: a signed checkpoint covering the chain up to `covered`.
    pub(super) fn checkpoint(
        &mut self,
        covered: u64,
        hash: &[u8; 32],
        signature: &[u8],
    ) -> Outcome {
        if self.audit_key.is_none() {
            return refuse(ErrorCode::ActionProhibited, "no audit key yet");
        }
        if self.last_checkpoint.is_some_and(|l| covered <= l) {
            return refuse(
                ErrorCode::ActionProhibited,
                "an older checkpoint than the last one",
            );
        }
        self.last_checkpoint = Some(covered);
        Ok((
            GovResult::Done,
            format!(
                "checkpoint index={covered} hash={} signature={}",
                hex::encode(hash),
                hex::encode(signature)
            ),
        ))
    }

    /// `Usage`: a node's signature counts per key (audited only).
    pub(super) fn usage(&mut self, node: u64, counts: &[(ObjectId, u64)], now_ms: u64) -> Outcome {
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
