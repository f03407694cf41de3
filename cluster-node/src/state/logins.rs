//! Login attempts and live logins: the replicated half of the PIN lockout and of session
//! grants.
//!
//! * An attempt is counted **before** its PIN is checked (`Command::LoginAttempt`), the way a
//!   smart card decrements its try counter first: the log orders every attempt on every node,
//!   so at most `max_failures` attempts are ever let through to a PIN check before the PIN
//!   locks, however many arrive at once. A right PIN clears the counter when its login opens.
//! * A login that succeeded is a [`LoginEntry`] under its log index, the id its session grants
//!   name. A grant is honoured only while its entry lives: `LoginClosed` (`C_Logout`), a new
//!   PIN for that user, re-initialising or deleting the token end it on every node, and
//!   entries past their expiry are pruned whenever a login of the same token changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudkey_protocol::msg::{TokenId, UserType};
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::tokens::user_name;
use super::{refuse, Applied, ClusterInfo, CommandResult, PinHash, Refusal, State};

/// Live logins a token may have at once; one more is refused `SessionCount` until some end
/// or expire.
pub const MAX_LOGINS_PER_TOKEN: usize = 4096;

/// Who logged in: a digest of the certificate identity that presented the PIN. A grant is
/// honoured only from the same identity.
pub type Holder = [u8; 16];

/// A live login.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginEntry {
    /// Who is logged in.
    pub user: UserType,
    /// The certificate identity that logged in.
    pub holder: Holder,
    /// When it ends unless renewed (the proposing node's clock, milliseconds since the Unix
    /// epoch).
    pub expires_ms: u64,
}

/// The live logins of one token, by login id (the log index that opened each).
pub(crate) type TokenLogins = BTreeMap<u64, LoginEntry>;

impl State {
    /// The live login `id` of `token`, if it has not ended. (Its expiry is the caller's to
    /// check against its own clock.)
    #[must_use]
    pub fn login(&self, token: TokenId, id: u64) -> Option<LoginEntry> {
        self.logins.get(&token)?.get(&id).copied()
    }

    /// How many logins of `token` are recorded (expired ones until they are pruned).
    #[must_use]
    pub fn login_count(&self, token: TokenId) -> usize {
        self.logins.get(&token).map_or(0, |l| l.len())
    }

    /// `LoginAttempt`: counts an attempt before its PIN is checked. Refused `PinLocked`,
    /// without counting, once the count has reached `max_failures`.
    pub(super) fn apply_login_attempt(
        &self,
        cluster: &ClusterInfo,
        token: TokenId,
        user: UserType,
    ) -> Result<Applied, Refusal> {
        let t = self.token_or_refuse(token)?;
        let count = match user {
            UserType::So => t.so_failures,
            UserType::User => t.user_failures,
        };
        if count >= cluster.max_failures {
            return refuse(ErrorCode::PinLocked, "the PIN is locked");
        }
        self.count_failure(cluster, token, user, "login_attempt")
    }

    /// `LoginOpened`: a PIN checked right against the hash whose digest is `pin`. Clears the
    /// user's counter and records the login under `index`, expiring `session_ttl_ms` after
    /// `now_ms`. Refused `PinIncorrect` when the PIN changed after it was checked.
    pub(super) fn apply_login_opened(
        &self,
        cluster: &ClusterInfo,
        index: u64,
        (token, user): (TokenId, UserType),
        (holder, pin, upgrade): (Holder, &[u8; 32], Option<&PinHash>),
        now_ms: u64,
    ) -> Result<Applied, Refusal> {
        let t = self.token_or_refuse(token)?;
        let current = match user {
            UserType::So => Some(&t.so_pin),
            UserType::User => t.user_pin.as_ref(),
        };
        if current.map(PinHash::digest).as_ref() != Some(pin) {
            return refuse(
                ErrorCode::PinIncorrect,
                "the PIN changed while it was being checked",
            );
        }
        let mut logins = self.live_logins(token, now_ms);
        if logins.len() >= MAX_LOGINS_PER_TOKEN {
            return refuse(
                ErrorCode::SessionCount,
                format!("token {token} has {MAX_LOGINS_PER_TOKEN} live logins"),
            );
        }
        self.apply_login_succeeded(token, user)?;
        if let Some(new) = upgrade {
            // The same PIN, hashed with its pepper: no login of it ends.
            self.replace_pin_hash(token, user, new)?;
        }
        let expires_ms = now_ms.saturating_add(cluster.session_ttl_ms);
        logins.insert(
            index,
            LoginEntry {
                user,
                holder,
                expires_ms,
            },
        );
        self.set_logins(token, logins);
        Ok(Applied {
            result: CommandResult::Login {
                id: index,
                expires_ms,
            },
            summary: format!(
                "login_opened token={token} user={} login={index}{}",
                user_name(user),
                if upgrade.is_some() {
                    " pin_rehashed=peppered"
                } else {
                    ""
                }
            ),
        })
    }

    /// `LoginRenewed`: moves a live login's expiry to `session_ttl_ms` after `now_ms`.
    /// Refused `UserNotLoggedIn` when the login has ended, expired, or belongs to another
    /// holder. Not audited: it changes nothing but the expiry.
    pub(super) fn apply_login_renewed(
        &self,
        cluster: &ClusterInfo,
        token: TokenId,
        login: u64,
        holder: Holder,
        now_ms: u64,
    ) -> Result<Applied, Refusal> {
        self.token_or_refuse(token)?;
        let mut logins = self.live_logins(token, now_ms);
        let Some(entry) = logins.get_mut(&login).filter(|e| e.holder == holder) else {
            return refuse(ErrorCode::UserNotLoggedIn, "the login has ended");
        };
        entry.expires_ms = now_ms.saturating_add(cluster.session_ttl_ms);
        let expires_ms = entry.expires_ms;
        self.set_logins(token, logins);
        Ok(Applied {
            result: CommandResult::Login {
                id: login,
                expires_ms,
            },
            summary: String::new(),
        })
    }

    /// `LoginClosed` (`C_Logout`): ends a login. Ending one that has already ended is not an
    /// error.
    pub(super) fn apply_login_closed(
        &self,
        token: TokenId,
        login: u64,
        now_ms: u64,
    ) -> Result<Applied, Refusal> {
        self.token_or_refuse(token)?;
        let mut logins = self.live_logins(token, now_ms);
        let ended = logins.remove(&login).is_some();
        self.set_logins(token, logins);
        Ok(Applied {
            result: CommandResult::Done,
            summary: format!("login_closed token={token} login={login} ended={ended}"),
        })
    }

    /// Ends every login of `token` by `user` (`None`: by anyone). Returns how many ended.
    pub(super) fn end_logins(&self, token: TokenId, user: Option<UserType>) -> usize {
        let Some(current) = self.logins.get(&token).map(|l| Arc::clone(&l)) else {
            return 0;
        };
        let kept: TokenLogins = current
            .iter()
            .filter(|(_, e)| user.is_some_and(|u| e.user != u))
            .map(|(id, e)| (*id, *e))
            .collect();
        let ended = current.len() - kept.len();
        self.set_logins(token, kept);
        ended
    }

    /// The logins of `token` that have not expired at `now_ms`.
    fn live_logins(&self, token: TokenId, now_ms: u64) -> TokenLogins {
        self.logins
            .get(&token)
            .map(|l| {
                l.iter()
                    .filter(|(_, e)| e.expires_ms > now_ms)
                    .map(|(id, e)| (*id, *e))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set_logins(&self, token: TokenId, logins: TokenLogins) {
        if logins.is_empty() {
            self.logins.remove(&token);
        } else {
            self.logins.insert(token, Arc::new(logins));
        }
    }

    /// Every live login, by token then id (for the snapshot).
    pub(super) fn all_logins(&self) -> Vec<(TokenId, u64, LoginEntry)> {
        let mut v: Vec<_> = self
            .logins
            .iter()
            .flat_map(|l| {
                let token = *l.key();
                l.value()
                    .iter()
                    .map(|(id, e)| (token, *id, *e))
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort_by_key(|(t, id, _)| (*t, *id));
        v
    }
}
