//! The replicated state and its applied view.
//!
//! Every change is a [`Command`] committed through Raft and applied, in log order and
//! deterministically, by [`State::apply`] on every node. Reads are served from the applied view
//! without locks on the hot path (`DashMap`s of `Arc`s).
//!
//! Nothing secret is ever in a command or in this state: PINs are argon2id hashes, private and
//! secret keys are chip blobs (encrypted under the domain key), and the session-grant secret is a
//! chip blob too.
//!
//! One file per concern, each with the `impl State` of its commands: [`cluster`] (bootstrap and
//! membership), [`tokens`] (tokens, PINs, login counters), [`objects`] (object records),
//! [`gov`] (governance changes and quorum-guarded changes), [`logins`] (attempts counted before
//! the PIN check, live logins that session grants name), [`audit`] (the hash chain),
//! [`snapshot`] (encoding and restore), [`command`] (what is replicated and what applying gives).
//! [`State::apply`] dispatches each command to one function.

mod audit;
mod chips;
mod cluster;
mod command;
mod gov;
mod logins;
mod objects;
mod snapshot;
mod tokens;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use audit::{verify_chain, AuditRecord};
pub use chips::{EnrolledChip, MAX_ENROLLED_CHIPS};
use cloudkey_protocol::msg::{ObjectId, TokenId};
use cloudkey_protocol::ErrorCode;
pub use cluster::ClusterInfo;
pub use command::{Command, CommandClass, CommandResult, Refusal};
use dashmap::DashMap;
pub use logins::{Holder, LoginEntry, MAX_LOGINS_PER_TOKEN};
pub use objects::{Object, ObjectRecord};
pub use tokens::{PinHash, Token, MAX_LABEL_LEN};
use tokio::sync::watch;

use crate::error::{NodeError, Result};
use crate::governance::Governance;

/// The applied view. Shared by the Raft state machine (which applies) and the services (which
/// read).
#[derive(Debug)]
pub struct State {
    pub(crate) cluster: RwLock<Option<ClusterInfo>>,
    pub(crate) tokens: DashMap<TokenId, Arc<Token>>,
    pub(crate) objects: DashMap<ObjectId, Arc<Object>>,
    pub(crate) audit: RwLock<Vec<AuditRecord>>,
    /// Officers, policies, approvals, terminals, the audit key. Private: it changes only
    /// through [`State::update_gov`], which keeps `policies` current.
    gov: RwLock<Governance>,
    /// Whether `gov` has a policy, for [`State::has_policies`] on every signature without a
    /// lock.
    policies: AtomicBool,
    pub(crate) applied: AtomicU64,
    pub(crate) applied_tx: watch::Sender<u64>,
    /// The id the next token gets. Monotonic and replicated, so a deleted token's id is never
    /// handed out again (a stale session grant can never name a newer token).
    pub(crate) next_token: AtomicU64,
    /// The live logins of each token ([`logins`]).
    pub(crate) logins: DashMap<TokenId, Arc<logins::TokenLogins>>,
    /// The chip registry ([`chips`]), by identity fingerprint.
    pub(crate) chips: RwLock<std::collections::BTreeMap<[u8; 32], EnrolledChip>>,
}

impl Default for State {
    fn default() -> Self {
        Self {
            cluster: RwLock::new(None),
            tokens: DashMap::new(),
            objects: DashMap::new(),
            audit: RwLock::new(Vec::new()),
            gov: RwLock::new(Governance::default()),
            policies: AtomicBool::new(false),
            applied: AtomicU64::new(0),
            applied_tx: watch::Sender::new(0),
            next_token: AtomicU64::new(FIRST_TOKEN_ID),
            logins: DashMap::new(),
            chips: RwLock::new(std::collections::BTreeMap::new()),
        }
    }
}

impl State {
    /// Runs `f` on the governance state (a read lock; keep `f` short and never await in it).
    pub fn with_gov<T>(&self, f: impl FnOnce(&Governance) -> T) -> T {
        match self.gov.read() {
            Ok(g) => f(&g),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    /// True when some policy puts operations under quorum control. Checked on every
    /// signature, so it reads a flag kept by [`State::update_gov`] instead of taking the
    /// governance lock.
    #[must_use]
    pub fn has_policies(&self) -> bool {
        self.policies.load(Ordering::Acquire)
    }

    /// Runs `f` on the governance state under the write lock, then refreshes the
    /// [`State::has_policies`] flag (still under the lock, so the flag follows the changes in
    /// order). Every change of the governance state goes through here. `None` when the lock is
    /// poisoned (nothing runs).
    fn update_gov<T>(&self, f: impl FnOnce(&mut Governance) -> T) -> Option<T> {
        let mut g = self.gov.write().ok()?;
        let out = f(&mut g);
        self.policies
            .store(!g.policies.is_empty(), Ordering::Release);
        Some(out)
    }

    /// The last applied log index.
    #[must_use]
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// A receiver that sees every change of the applied index (for bounded read-your-writes
    /// waits).
    #[must_use]
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }
}

/// The id of the first token of a cluster.
const FIRST_TOKEN_ID: u64 = 1;

/// `Err` of a [`Refusal`] with `code` and a detail.
pub(crate) fn refuse<T>(code: ErrorCode, detail: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal::new(code, detail))
}

/// A change that passed validation: what to report and what to audit.
struct Applied {
    result: CommandResult,
    summary: String,
}

impl State {
    /// An empty state (nothing applied).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a committed command at log `index`. Deterministic: every node applying the same
    /// log reaches the same state, results and audit chain.
    ///
    /// A command the state does not allow (unknown token or object, taken label, existing id,
    /// second `Init`, ...) gives [`CommandResult::Refused`] and leaves the state unchanged, but
    /// still advances the applied index. Every change that is made appends one
    /// [`AuditRecord`].
    ///
    /// Single writer: only the Raft state machine calls this, in log order.
    pub fn apply(&self, index: u64, cmd: &Command) -> CommandResult {
        let result = match self.try_apply(index, cmd) {
            Ok(Applied { result, summary }) => {
                // A renewal has nothing to say (only an expiry moved); every other change has
                // a summary.
                if !summary.is_empty() {
                    self.append_audit(index, summary);
                }
                result
            }
            Err(refusal) => {
                tracing::debug!(index, kind = cmd.kind(), code = %refusal.code,
                    detail = %refusal.detail, "command refused");
                CommandResult::Refused(refusal)
            }
        };
        self.set_applied(index);
        result
    }

    /// Advances the applied index for a log entry without a command (a leader's blank entry).
    pub fn mark_applied(&self, index: u64) {
        self.set_applied(index);
    }

    /// Waits until this node has applied at least `index`.
    ///
    /// # Errors
    /// [`NodeError::Timeout`] when `timeout` passes first.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<()> {
        if self.applied() >= index {
            return Ok(());
        }
        let mut rx = self.applied_tx.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            rx.wait_for(|&a| a >= index).await.map(|_| ())
        })
        .await;
        match waited {
            Ok(Ok(())) => Ok(()),
            // The sender lives in `self`, so it cannot be gone while we borrow `self`.
            Ok(Err(_)) => Err(NodeError::Internal("applied index channel closed".into())),
            Err(_) => Err(NodeError::Timeout(format!(
                "log index {index} not applied within {timeout:?} (applied {})",
                self.applied()
            ))),
        }
    }

    fn set_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Release);
        self.applied_tx.send_replace(index);
    }

    /// Dispatches a command to the function that applies it (one per command).
    fn try_apply(&self, index: u64, cmd: &Command) -> Result<Applied, Refusal> {
        let Some(cluster) = self.cluster() else {
            return match cmd {
                Command::Init(info) => self.apply_init(info),
                Command::InitWithChips { info, chips } => {
                    // Both or neither: the settings are checked before the chips change.
                    Self::check_init(info)?;
                    let enrolled = self.apply_enroll_chips(chips)?;
                    let init = self.apply_init(info)?;
                    Ok(Applied {
                        result: init.result,
                        summary: format!("{}; {}", init.summary, enrolled.summary),
                    })
                }
                _ => refuse(
                    ErrorCode::ClusterNotInitialized,
                    "the cluster is not initialised",
                ),
            };
        };
        match cmd {
            Command::Init(_) | Command::InitWithChips { .. } => refuse(
                ErrorCode::ActionProhibited,
                "the cluster is already initialised",
            ),
            Command::CreateToken {
                label,
                so_pin,
                user_pin,
            } => self.apply_create_token(index, label, so_pin, user_pin.as_ref()),
            Command::DeleteToken(id) => self.apply_delete_token(*id),
            Command::InitToken { token, label } => self.apply_init_token(index, *token, label),
            Command::SetPin { token, user, pin } => self.apply_set_pin(*token, *user, pin),
            Command::LoginFailed { token, user } => {
                self.apply_login_failed(&cluster, *token, *user)
            }
            Command::LoginSucceeded { token, user } => self.apply_login_succeeded(*token, *user),
            Command::Unlock(token) => self.apply_unlock(*token),
            Command::PutObjects(records) => self.apply_put_objects(index, &cluster, records),
            Command::SetAttributes { id, attrs } => self.apply_set_attributes(id, attrs),
            Command::DestroyObject(id) => self.apply_destroy_object(id),
            Command::Gov(g) => self.apply_gov(index, &cluster, g),
            Command::Guarded {
                approval,
                requester,
                params_hash,
                now_ms,
                inner,
            } => self.apply_guarded(index, *approval, requester, params_hash, *now_ms, inner),
            Command::LoginAttempt { token, user } => {
                self.apply_login_attempt(&cluster, *token, *user)
            }
            Command::LoginOpened {
                token,
                user,
                holder,
                pin,
                upgrade,
                now_ms,
            } => self.apply_login_opened(
                &cluster,
                index,
                (*token, *user),
                (*holder, pin, upgrade.as_ref()),
                *now_ms,
            ),
            Command::LoginRenewed {
                token,
                login,
                holder,
                now_ms,
            } => self.apply_login_renewed(&cluster, *token, *login, *holder, *now_ms),
            Command::LoginClosed {
                token,
                login,
                now_ms,
            } => self.apply_login_closed(*token, *login, *now_ms),
            Command::EnrollChips(chips) => self.apply_enroll_chips(chips),
            Command::RetireChip(fp) => self.apply_retire_chip(fp),
        }
    }
}
