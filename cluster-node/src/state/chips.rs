//! The chip registry: the chip identities an operator enrolled, the only recipients the domain
//! key may be exported to.
//!
//! A chip's identity key is the recipient key of domain transfers (`cloudkey_chip::identity`).
//! A node asks for the domain for one of its chips; the node serving the export checks here
//! that this chip identity was enrolled for that node, so a stolen node certificate cannot have
//! the domain exported to a key of its own choosing. Enrolment is an operator act (`cloudkey
//! init` for the founding members, `cloudkey chip enroll` or `cloudkey node add` later),
//! after the enrolling node checked each chip's proof of possession of its identity key.

use std::collections::BTreeMap;

use cloudkey_chip::identity::fingerprint;
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{refuse, Applied, CommandResult, Refusal, State};

/// Chip identities the registry holds at most (a bound against misuse; a cluster has a few
/// nodes of a few chips each).
pub const MAX_ENROLLED_CHIPS: usize = 1024;

/// One enrolled chip identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolledChip {
    /// The identity key (uncompressed P-256 point).
    #[serde(with = "serde_bytes")]
    pub identity: Vec<u8>,
    /// The node whose chip it is: only that node may have the domain exported to it.
    pub node: u64,
    /// The chip's model, as it reported it.
    pub model: String,
    /// The chip's serial number, as it reported it.
    pub serial: String,
    /// Who enrolled it (the operator's certificate identity).
    pub by: String,
    /// When (the enrolling node's clock, milliseconds since the Unix epoch).
    pub enrolled_ms: u64,
}

impl EnrolledChip {
    /// The registry key: SHA-256 of the identity key.
    #[must_use]
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.identity)
    }
}

impl State {
    /// The enrolled chip whose identity key has fingerprint `fp`, if any.
    #[must_use]
    pub fn enrolled_chip(&self, fp: &[u8; 32]) -> Option<EnrolledChip> {
        self.chips.read().ok().and_then(|c| c.get(fp).cloned())
    }

    /// `Ok` when the chip with identity key `identity` is enrolled for node `node`: the one
    /// rule of where the domain key may go, for a peer's export and a node's own chips alike.
    /// The refusal names the chip (the first 8 bytes of its fingerprint) and why.
    ///
    /// # Errors
    /// `Forbidden` when the chip is not enrolled, or is enrolled for another node.
    pub fn check_enrolled(&self, identity: &[u8], node: u64) -> Result<(), Refusal> {
        let fp = fingerprint(identity);
        let short = hex::encode(&fp[..8]);
        match self.enrolled_chip(&fp) {
            Some(chip) if chip.node == node => Ok(()),
            Some(chip) => refuse(
                ErrorCode::Forbidden,
                format!(
                    "chip {short} is enrolled for node {}, not node {node}",
                    chip.node
                ),
            ),
            None => refuse(
                ErrorCode::Forbidden,
                format!(
                    "chip {short} is not enrolled in the chip registry (cloudkey chip enroll \
                     --node {node})"
                ),
            ),
        }
    }

    /// Every enrolled chip, by fingerprint.
    #[must_use]
    pub fn enrolled_chips(&self) -> Vec<EnrolledChip> {
        self.chips
            .read()
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }

    /// `EnrollChips`: adds chip identities. Enrolling an identity again for the same node
    /// changes nothing; for another node it is refused (a chip belongs to one node; retire it
    /// first). All or nothing.
    pub(super) fn apply_enroll_chips(&self, chips: &[EnrolledChip]) -> Result<Applied, Refusal> {
        let mut registry = self
            .chips
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut added = BTreeMap::new();
        for chip in chips {
            if chip.identity.len() != cloudkey_chip::identity::POINT_LEN {
                return refuse(ErrorCode::ArgumentsBad, "a chip identity is 65 bytes");
            }
            let fp = chip.fingerprint();
            match registry.get(&fp) {
                Some(known) if known.node == chip.node => {}
                Some(known) => {
                    return refuse(
                        ErrorCode::ActionProhibited,
                        format!(
                            "chip {} is enrolled for node {}; retire it before enrolling it for \
                             node {}",
                            hex::encode(&fp[..8]),
                            known.node,
                            chip.node
                        ),
                    )
                }
                None => {
                    added.insert(fp, chip.clone());
                }
            }
        }
        if registry.len() + added.len() > MAX_ENROLLED_CHIPS {
            return refuse(
                ErrorCode::ActionProhibited,
                format!("the chip registry holds at most {MAX_ENROLLED_CHIPS} chips"),
            );
        }
        let mut summary = String::from("enroll_chips");
        for (fp, chip) in &added {
            summary.push_str(&format!(
                " {}@node{}(serial={:?} by={:?})",
                hex::encode(&fp[..8]),
                chip.node,
                chip.serial,
                chip.by
            ));
        }
        let count = added.len();
        registry.extend(added);
        Ok(Applied {
            result: CommandResult::Enrolled(u32::try_from(count).unwrap_or(u32::MAX)),
            summary,
        })
    }

    /// `RetireChip`: removes a chip identity; the domain is never exported to it again (the
    /// chip keeps what it holds: wipe or destroy it).
    pub(super) fn apply_retire_chip(&self, fp: &[u8; 32]) -> Result<Applied, Refusal> {
        let mut registry = self
            .chips
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match registry.remove(fp) {
            Some(chip) => Ok(Applied {
                result: CommandResult::Done,
                summary: format!(
                    "retire_chip {}@node{} serial={:?}",
                    hex::encode(&fp[..8]),
                    chip.node,
                    chip.serial
                ),
            }),
            None => refuse(
                ErrorCode::ArgumentsBad,
                format!("chip {} is not enrolled", hex::encode(&fp[..8])),
            ),
        }
    }

    /// Replaces the registry (snapshot restore).
    pub(super) fn set_chips(&self, chips: Vec<EnrolledChip>) {
        let mut registry = self
            .chips
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *registry = chips.into_iter().map(|c| (c.fingerprint(), c)).collect();
    }
}
