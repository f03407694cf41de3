//! The snapshot encoding of the whole replicated state, and restoring from it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cloudkey_protocol::msg::TokenId;
use serde::{Deserialize, Serialize};

use super::logins::TokenLogins;
use super::{
    verify_chain, AuditRecord, ClusterInfo, EnrolledChip, LoginEntry, Object, ObjectRecord, State,
    Token, FIRST_TOKEN_ID,
};
use crate::error::{NodeError, Result};
use crate::governance::Governance;

/// Version of the [`State::snapshot_bytes`] encoding.
const SNAPSHOT_VERSION: u32 = 4;

/// The [`State::snapshot_bytes`] encoding: the version-1 fields, then (since version 2) the
/// governance state, then (since version 3) the live logins, then (since version 4) the chip
/// registry. postcard writes a nested struct's fields in place, so a version-1 snapshot is
/// exactly the bytes of its [`SnapshotBase`], a version-2 one those of a [`SnapshotV2`] and a
/// version-3 one those of a [`SnapshotV3`].
#[derive(Serialize, Deserialize)]
pub(super) struct StateSnapshot {
    pub(super) base: SnapshotBase,
    pub(super) gov: Governance,
    /// Live logins: token, login id, entry.
    pub(super) logins: Vec<(TokenId, u64, LoginEntry)>,
    /// The chip registry, by fingerprint.
    pub(super) chips: Vec<EnrolledChip>,
}

/// A version-3 snapshot: no chip registry (a cluster of that time enrols the chips it adds
/// from now on; chips that hold the domain keep it).
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotV3 {
    pub(super) base: SnapshotBase,
    pub(super) gov: Governance,
    pub(super) logins: Vec<(TokenId, u64, LoginEntry)>,
}

/// A version-2 snapshot: no logins (every grant of that time is of an older version, which
/// nodes refuse, so nothing is lost).
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotV2 {
    pub(super) base: SnapshotBase,
    pub(super) gov: Governance,
}

/// The fields of every snapshot version.
#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotBase {
    pub(super) version: u32,
    pub(super) cluster: Option<ClusterInfo>,
    pub(super) next_token: u64,
    pub(super) tokens: Vec<Token>,
    /// Records with the index that created them, in creation order.
    pub(super) objects: Vec<(ObjectRecord, u64)>,
    pub(super) audit: Vec<AuditRecord>,
    pub(super) applied: u64,
}

impl State {
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
            logins: self.all_logins(),
            chips: self.enrolled_chips(),
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
    /// [`NodeError::Decode`] when the bytes do not decode, [`NodeError::Storage`] when they do
    /// not hold a consistent state.
    pub fn restore(&self, bytes: &[u8]) -> Result<()> {
        let (snap, gov, logins, chips) = match postcard::from_bytes::<StateSnapshot>(bytes) {
            Ok(s) if s.base.version == SNAPSHOT_VERSION => (s.base, s.gov, s.logins, s.chips),
            _ => match postcard::from_bytes::<SnapshotV3>(bytes) {
                Ok(v3) if v3.base.version == 3 => (v3.base, v3.gov, v3.logins, Vec::new()),
                _ => match postcard::from_bytes::<SnapshotV2>(bytes) {
                    Ok(v2) if v2.base.version == 2 => (v2.base, v2.gov, Vec::new(), Vec::new()),
                    _ => match postcard::from_bytes::<SnapshotBase>(bytes) {
                        Ok(v1) if v1.version == 1 => {
                            (v1, Governance::default(), Vec::new(), Vec::new())
                        }
                        Ok(other) => {
                            return Err(NodeError::Storage(format!(
                                "state snapshot version {} (expected {SNAPSHOT_VERSION})",
                                other.version
                            )))
                        }
                        Err(e) => {
                            return Err(NodeError::Decode {
                                what: "state snapshot".into(),
                                source: Box::new(e),
                            })
                        }
                    },
                },
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
        let mut by_token: BTreeMap<TokenId, TokenLogins> = BTreeMap::new();
        for (token, id, entry) in logins {
            if !tokens.contains_key(&token) {
                return Err(NodeError::Storage(format!(
                    "state snapshot: login {id} of unknown token {token}"
                )));
            }
            by_token.entry(token).or_default().insert(id, entry);
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
        self.update_gov(|g| *g = gov);
        self.logins.clear();
        for (token, l) in by_token {
            self.logins.insert(token, Arc::new(l));
        }
        self.set_chips(chips);
        self.next_token
            .store(snap.next_token.max(FIRST_TOKEN_ID), Ordering::Release);
        self.set_applied(snap.applied);
        Ok(())
    }
}
