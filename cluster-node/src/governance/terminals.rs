//! The terminal registry and terminal master-key (TMK) applications: a terminal asks (QR
//! payload), an administrator applies with a one-time SMS code, a quorum approves, a chip injects.

use cloudkey_protocol::gov::{GuardedOp, PolicyScope, TerminalInfo, TerminalKey, TmkDelivery};
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::approvals::NewRequest;
use super::{
    officer_requester, refuse, sha256, GovResult, Governance, Outcome, MAX_APPLICATION_FAILURES,
};

/// A registered terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terminal {
    /// Terminal number.
    pub id: String,
    /// Public key.
    pub key: TerminalKey,
    /// Responsible officers.
    pub admins: Vec<String>,
    /// Bound certificate identity.
    pub identity: Option<String>,
    /// Last injected application.
    pub last_injection: Option<u64>,
}

impl Terminal {
    /// As listed.
    #[must_use]
    pub fn info(&self) -> TerminalInfo {
        TerminalInfo {
            id: self.id.clone(),
            key: self.key.clone(),
            admins: self.admins.clone(),
            identity: self.identity.clone(),
            last_injection: self.last_injection,
        }
    }
}

/// Where a TMK application stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppState {
    /// The terminal asked; waiting for the first administrator.
    Requested,
    /// Too many wrong codes or payloads.
    Locked,
    /// The first administrator applied; waiting for approval (request `approval`).
    Applied {
        /// The approval request.
        approval: u64,
        /// The applicant officer.
        applicant: String,
    },
    /// The key was generated and delivered.
    Injected {
        /// The approval request it consumed.
        approval: u64,
        /// The applicant.
        applicant: String,
        /// The delivery (encrypted key and KCV).
        delivery: TmkDelivery,
        /// The TMK's chip blob.
        #[serde(with = "serde_bytes")]
        blob: Vec<u8>,
    },
}

/// A TMK injection application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Application {
    /// Id.
    pub id: u64,
    /// Terminal.
    pub terminal: String,
    /// SHA-256 of the QR nonce.
    pub nonce_hash: [u8; 32],
    /// Created.
    pub created_ms: u64,
    /// The QR payload expires.
    pub expires_ms: u64,
    /// Wrong attempts.
    pub failures: u32,
    /// State.
    pub state: AppState,
}

/// A one-time SMS code, stored as a MAC.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmsCode {
    /// `HMAC(session MAC key, "cloudkey sms v1" || officer || 0 || terminal || 0 || code)`.
    pub mac: [u8; 32],
    /// Expires.
    pub expires_ms: u64,
    /// Used (a successful application consumed it).
    pub used: bool,
}

impl Governance {
    /// `AddTerminal`: registers (or replaces) a terminal; its last injection is kept.
    pub(super) fn add_terminal(&mut self, t: &TerminalInfo) -> Outcome {
        if !cloudkey_protocol::gov::valid_terminal_id(&t.id) {
            return refuse(
                ErrorCode::ArgumentsBad,
                format!("bad terminal number {:?}", t.id),
            );
        }
        if t.admins.is_empty() {
            return refuse(
                ErrorCode::ArgumentsBad,
                "a terminal needs at least one administrator",
            );
        }
        if let Some(unknown) = t.admins.iter().find(|a| !self.officers.contains_key(*a)) {
            return refuse(ErrorCode::ArgumentsBad, format!("no officer {unknown}"));
        }
        let key = match &t.key {
            TerminalKey::Rsa { n, .. } => format!("rsa-{}", n.len() * 8),
            TerminalKey::Sm2 { .. } => "sm2".to_string(),
        };
        let last_injection = self.terminals.get(&t.id).and_then(|old| old.last_injection);
        self.terminals.insert(
            t.id.clone(),
            Terminal {
                id: t.id.clone(),
                key: t.key.clone(),
                admins: t.admins.clone(),
                identity: t.identity.clone(),
                last_injection,
            },
        );
        Ok((
            GovResult::Done,
            format!(
                "add_terminal id={} key={key} admins={:?} identity={:?}",
                t.id, t.admins, t.identity
            ),
        ))
    }

    /// `TmkRequest`: a terminal's application for a TMK (from its QR payload).
    pub(super) fn tmk_request(
        &mut self,
        terminal: &str,
        nonce_hash: &[u8; 32],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Outcome {
        if !self.terminals.contains_key(terminal) {
            return refuse(ErrorCode::ArgumentsBad, format!("no terminal {terminal}"));
        }
        self.next_application = self.next_application.max(1);
        let id = self.next_application;
        self.next_application += 1;
        self.applications.insert(
            id,
            Application {
                id,
                terminal: terminal.to_owned(),
                nonce_hash: *nonce_hash,
                created_ms: now_ms,
                expires_ms: now_ms.saturating_add(ttl_ms),
                failures: 0,
                state: AppState::Requested,
            },
        );
        Ok((
            GovResult::Application(id),
            format!(
                "tmk_request application={id} terminal={terminal} expires_ms={}",
                now_ms.saturating_add(ttl_ms)
            ),
        ))
    }

    /// `SmsIssued`: a one-time SMS code for an administrator of a terminal (its MAC only).
    pub(super) fn sms_issued(
        &mut self,
        officer: &str,
        terminal: &str,
        mac: &[u8; 32],
        now_ms: u64,
        ttl_ms: u64,
    ) -> Outcome {
        let Some(t) = self.terminals.get(terminal) else {
            return refuse(ErrorCode::ArgumentsBad, format!("no terminal {terminal}"));
        };
        if !t.admins.iter().any(|a| a == officer) {
            return refuse(
                ErrorCode::FunctionRejected,
                format!("officer {officer} is not an administrator of terminal {terminal}"),
            );
        }
        self.sms.insert(
            (officer.to_owned(), terminal.to_owned()),
            SmsCode {
                mac: *mac,
                expires_ms: now_ms.saturating_add(ttl_ms),
                used: false,
            },
        );
        Ok((
            GovResult::Done,
            format!("sms_code_issued officer={officer} terminal={terminal}"),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    /// `TmkApply`: an administrator applies with the QR payload and the SMS code; a wrong one
    /// counts (locked at [`MAX_APPLICATION_FAILURES`]), a right one opens the approval request.
    pub(super) fn tmk_apply(
        &mut self,
        application: u64,
        terminal: &str,
        officer: &str,
        nonce_hash: &[u8; 32],
        sms_mac: &[u8; 32],
        now_ms: u64,
        ttl_ms: u64,
        quorum: u32,
        eligible: &[String],
    ) -> Outcome {
        let Some(app) = self.applications.get(&application) else {
            return refuse(
                ErrorCode::ArgumentsBad,
                format!("no application {application}"),
            );
        };
        if app.terminal != terminal {
            return refuse(
                ErrorCode::ArgumentsBad,
                format!("application {application} is not for terminal {terminal}"),
            );
        }
        match app.state {
            AppState::Requested => {}
            AppState::Locked => {
                return refuse(
                    ErrorCode::PinLocked,
                    format!("application {application} is locked after too many wrong attempts"),
                )
            }
            _ => {
                return refuse(
                    ErrorCode::ActionProhibited,
                    format!("application {application} was already applied for"),
                )
            }
        }
        if now_ms > app.expires_ms {
            return refuse(
                ErrorCode::FunctionRejected,
                format!("the QR payload of application {application} has expired; ask the terminal for a new one"),
            );
        }
        let admin = self
            .terminals
            .get(terminal)
            .is_some_and(|t| t.admins.iter().any(|a| a == officer));
        let code = self.sms.get(&(officer.to_string(), terminal.to_string()));
        let failure = if app.nonce_hash != *nonce_hash {
            Some("the QR payload does not match the terminal's application")
        } else if !admin {
            Some("the officer is not an administrator of this terminal")
        } else {
            match code {
                None => Some("no SMS code was issued to this officer for this terminal"),
                Some(c) if c.used => Some("the SMS code was already used"),
                Some(c) if now_ms > c.expires_ms => Some("the SMS code has expired"),
                Some(c) if c.mac != *sms_mac => Some("wrong SMS code"),
                Some(_) => None,
            }
        };
        if let Some(why) = failure {
            let Some(app) = self.applications.get_mut(&application) else {
                return refuse(
                    ErrorCode::GeneralError,
                    format!("application {application} vanished"),
                );
            };
            app.failures += 1;
            let locked = app.failures >= MAX_APPLICATION_FAILURES;
            if locked {
                app.state = AppState::Locked;
            }
            let count = app.failures;
            return Ok((
                GovResult::Failed(
                    if locked { ErrorCode::PinLocked } else { ErrorCode::PinIncorrect },
                    format!("{why} (attempt {count} of {MAX_APPLICATION_FAILURES}{})", if locked { ", application locked" } else { "" }),
                ),
                format!(
                    "tmk_apply_failed application={application} officer={officer} reason={why:?} count={count} locked={locked}"
                ),
            ));
        }
        if let Some(c) = self
            .sms
            .get_mut(&(officer.to_string(), terminal.to_string()))
        {
            c.used = true;
        }
        let id = self.open_pending(
            NewRequest {
                requester: officer_requester(officer),
                op: GuardedOp::TmkInject,
                scope: PolicyScope::Cluster,
                description: format!(
                    "inject a terminal master key into terminal {terminal} (application {application})"
                ),
                params_hash: tmk_params_hash(terminal, application),
                quorum,
                eligible,
            },
            now_ms,
            ttl_ms,
        );
        if let Some(app) = self.applications.get_mut(&application) {
            app.state = AppState::Applied {
                approval: id,
                applicant: officer.to_string(),
            };
        }
        Ok((
            GovResult::Approval(id),
            format!(
                "tmk_apply application={application} terminal={terminal} officer={officer} approval={id} \
                 quorum={quorum} eligible={eligible:?}"
            ),
        ))
    }

    /// `TmkInjected`: the TMK was injected under the approved request, which this consumes.
    pub(super) fn tmk_injected(
        &mut self,
        index: u64,
        application: u64,
        delivery: &TmkDelivery,
        blob: &[u8],
        now_ms: u64,
    ) -> Outcome {
        let Some(app) = self.applications.get(&application) else {
            return refuse(
                ErrorCode::ArgumentsBad,
                format!("no application {application}"),
            );
        };
        let (approval, applicant) = match &app.state {
            AppState::Applied {
                approval,
                applicant,
            } => (*approval, applicant.clone()),
            AppState::Injected { .. } => {
                return refuse(
                    ErrorCode::ActionProhibited,
                    format!("application {application} was already injected"),
                )
            }
            _ => {
                return refuse(
                    ErrorCode::ApprovalRequired,
                    format!("application {application} has not been applied for"),
                )
            }
        };
        let terminal = app.terminal.clone();
        let requester = officer_requester(&applicant);
        let params = tmk_params_hash(&terminal, application);
        self.check_consumable(approval, &requester, &params, now_ms)?;
        self.consume(approval, index);
        if let Some(app) = self.applications.get_mut(&application) {
            app.state = AppState::Injected {
                approval,
                applicant,
                delivery: delivery.clone(),
                blob: blob.to_vec(),
            };
        }
        if let Some(t) = self.terminals.get_mut(&terminal) {
            t.last_injection = Some(application);
        }
        Ok((
            GovResult::Done,
            format!(
                "tmk_injected application={application} terminal={terminal} approval={approval} \
                 algorithm={} kcv={}",
                delivery.algorithm,
                hex::encode(delivery.kcv)
            ),
        ))
    }

    /// `TmkCheck`: an administrator checked a terminal's key (audited only).
    pub(super) fn tmk_check(&mut self, application: u64, terminal: &str, admin: &str) -> Outcome {
        if !self.terminals.contains_key(terminal) {
            return refuse(ErrorCode::ArgumentsBad, format!("no terminal {terminal}"));
        }
        Ok((
            GovResult::Done,
            format!("tmk_check application={application} terminal={terminal} admin={admin}"),
        ))
    }
}

/// The parameters hash of a TMK injection: terminal and application.
#[must_use]
pub fn tmk_params_hash(terminal: &str, application: u64) -> [u8; 32] {
    let mut m = b"cloudkey tmk v1\0".to_vec();
    m.extend_from_slice(terminal.as_bytes());
    m.push(0);
    m.extend_from_slice(&application.to_be_bytes());
    sha256(&m)
}
