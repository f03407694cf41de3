//! The hash-chained audit log of state changes.

use cloudkey_protocol::audit::record_hash;

use super::State;

/// One record of the hash-chained audit log of state changes: the Raft log index of the
/// change, the previous record's hash (zeros for the first), what happened without secrets
/// (e.g. `create_token label=x id=3`), and `SHA-256(prev || index BE || summary)`
/// ([`record_hash`]). The record and its hash are the exported ones, defined once in
/// `cloudkey-protocol` for the node and the offline verifier alike.
pub type AuditRecord = cloudkey_protocol::gov::AuditEntry;

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

impl State {
    /// The audit chain so far.
    #[must_use]
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.audit.read().map(|a| a.clone()).unwrap_or_default()
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

    pub(super) fn append_audit(&self, index: u64, summary: String) {
        let Ok(mut audit) = self.audit.write() else {
            // A writer panicked while holding the lock: the state is already suspect.
            tracing::error!(index, "audit chain lock poisoned");
            return;
        };
        cloudkey_protocol::audit::append(&mut audit, index, summary);
    }
}
