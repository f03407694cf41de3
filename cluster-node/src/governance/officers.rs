//! Officers: registration and PIN failure counters.

use cloudkey_protocol::gov::OfficerInfo;
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{refuse, GovResult, Governance, Outcome};
use crate::state::PinHash;

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

impl Governance {
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

    /// `AddOfficer`: a new officer (unique name and certificate identity).
    pub(super) fn add_officer(&mut self, name: &str, identity: &str, pin: &PinHash) -> Outcome {
        if name.is_empty() || name.len() > 64 || name.contains('/') {
            return refuse(
                ErrorCode::ArgumentsBad,
                "an officer name has 1 to 64 characters, no '/'",
            );
        }
        if self.officers.contains_key(name) {
            return refuse(
                ErrorCode::ActionProhibited,
                format!("officer {name} exists"),
            );
        }
        if self.officers.values().any(|o| o.identity == *identity) {
            return refuse(
                ErrorCode::ActionProhibited,
                format!("certificate identity {identity} already belongs to an officer"),
            );
        }
        self.officers.insert(
            name.to_owned(),
            Officer {
                name: name.to_owned(),
                identity: identity.to_owned(),
                pin: pin.clone(),
                failures: 0,
            },
        );
        Ok((
            GovResult::Done,
            format!("add_officer name={name} identity={identity}"),
        ))
    }

    /// `OfficerFailed`: one more wrong PIN; locked at `max_failures`.
    pub(super) fn officer_failed(&mut self, name: &str, max_failures: u32) -> Outcome {
        self.count_officer_failure(name, max_failures, "officer_pin_failed")
    }

    /// Counts one more failure (or attempt) of an officer's PIN; locked at `max_failures`.
    /// `what` names the command in the audit summary.
    fn count_officer_failure(&mut self, name: &str, max_failures: u32, what: &str) -> Outcome {
        let Some(o) = self.officers.get_mut(name) else {
            return refuse(ErrorCode::ArgumentsBad, format!("no officer {name}"));
        };
        o.failures = o.failures.saturating_add(1);
        let (count, locked) = (o.failures, o.failures >= max_failures);
        Ok((
            GovResult::Failures { count, locked },
            format!("{what} name={name} count={count} locked={locked}"),
        ))
    }

    /// `OfficerAttempt`: counts an attempt before its PIN is checked; refused `PinLocked`,
    /// uncounted, once the count has reached `max_failures`.
    pub(super) fn officer_attempt(&mut self, name: &str, max_failures: u32) -> Outcome {
        match self.officers.get(name) {
            Some(o) if o.failures >= max_failures => {
                return refuse(
                    ErrorCode::PinLocked,
                    format!("officer {name}'s PIN is locked"),
                )
            }
            _ => {}
        }
        self.count_officer_failure(name, max_failures, "officer_pin_attempt")
    }

    /// `OfficerSucceeded`: clears the failure counter.
    pub(super) fn officer_succeeded(&mut self, name: &str) -> Outcome {
        let Some(o) = self.officers.get_mut(name) else {
            return refuse(ErrorCode::ArgumentsBad, format!("no officer {name}"));
        };
        o.failures = 0;
        Ok((GovResult::Done, format!("officer_pin_ok name={name}")))
    }
}
