//! Tokens, their PINs and failed-login counters.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cloudkey_protocol::msg::{TokenId, UserType};
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{refuse, Applied, ClusterInfo, CommandResult, Refusal, State};

/// A stored PIN: an argon2id PHC string (salt and parameters included).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinHash(pub String);

impl PinHash {
    /// SHA-256 of the PHC string: names this exact hash (and so this PIN and salt) in a
    /// command without repeating it.
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.0.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        out
    }
}

impl std::fmt::Debug for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinHash(..)")
    }
}

/// A token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Id, assigned at creation (one more than the highest so far).
    pub id: TokenId,
    /// Label, unique in the cluster.
    pub label: String,
    /// SO PIN.
    pub so_pin: PinHash,
    /// User PIN, once set.
    pub user_pin: Option<PinHash>,
    /// Failed SO logins since the last success or unlock.
    pub so_failures: u32,
    /// Failed user logins since the last success or unlock.
    pub user_failures: u32,
    /// The log index of the command that created this token or last re-initialised it
    /// (`Command::CreateToken`, `Command::InitToken`); apply sets it. Nothing reads it since
    /// session grants name their login instead (which `C_InitToken` and deletion end, see
    /// `state::logins`); it stays because the snapshot encoding holds it.
    #[serde(default)]
    pub generation: u64,
}

/// The longest token label (`CK_TOKEN_INFO.label` is 32 bytes).
pub const MAX_LABEL_LEN: usize = 32;

pub(super) fn user_name(user: UserType) -> &'static str {
    match user {
        UserType::So => "so",
        UserType::User => "user",
    }
}

impl State {
    /// A token by id.
    #[must_use]
    pub fn token(&self, id: TokenId) -> Option<Arc<Token>> {
        self.tokens.get(&id).map(|t| t.clone())
    }

    /// A token by label.
    #[must_use]
    pub fn token_by_label(&self, label: &str) -> Option<Arc<Token>> {
        self.tokens
            .iter()
            .find(|t| t.label == label)
            .map(|t| t.clone())
    }

    /// All tokens, by id.
    #[must_use]
    pub fn tokens(&self) -> Vec<Arc<Token>> {
        let mut v: Vec<_> = self.tokens.iter().map(|t| t.clone()).collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// `CreateToken`: a new token with the next id.
    pub(super) fn apply_create_token(
        &self,
        index: u64,
        label: &str,
        so_pin: &PinHash,
        user_pin: Option<&PinHash>,
    ) -> Result<Applied, Refusal> {
        self.check_label(label, None)?;
        let id = TokenId(self.next_token.fetch_add(1, Ordering::AcqRel));
        self.update_token(&Token {
            id,
            label: label.to_owned(),
            so_pin: so_pin.clone(),
            user_pin: user_pin.cloned(),
            so_failures: 0,
            user_failures: 0,
            generation: index,
        });
        Ok(Applied {
            result: CommandResult::Token(id),
            summary: format!(
                "create_token id={id} label={label:?} user_pin={}",
                if user_pin.is_some() { "set" } else { "none" }
            ),
        })
    }

    /// `DeleteToken`: the token, its objects and its logins.
    pub(super) fn apply_delete_token(&self, id: TokenId) -> Result<Applied, Refusal> {
        self.token_or_refuse(id)?;
        self.tokens.remove(&id);
        let removed = self.remove_objects_of(id);
        let ended = self.end_logins(id, None);
        Ok(Applied {
            result: CommandResult::Done,
            summary: format!("delete_token id={id} objects={removed} logins_ended={ended}"),
        })
    }

    /// `InitToken` (`C_InitToken`): relabel, drop the user PIN and every object, clear counters,
    /// end every login.
    pub(super) fn apply_init_token(
        &self,
        index: u64,
        token: TokenId,
        label: &str,
    ) -> Result<Applied, Refusal> {
        let mut t = (*self.token_or_refuse(token)?).clone();
        self.check_label(label, Some(token))?;
        let removed = self.remove_objects_of(token);
        label.clone_into(&mut t.label);
        t.user_pin = None;
        t.so_failures = 0;
        t.user_failures = 0;
        t.generation = index;
        self.update_token(&t);
        let ended = self.end_logins(token, None);
        Ok(Applied {
            result: CommandResult::Done,
            summary: format!(
                "init_token id={token} label={label:?} objects={removed} logins_ended={ended}"
            ),
        })
    }

    /// `SetPin` (`C_InitPIN`, `C_SetPIN`): a new PIN hash; clears its failure counter and ends
    /// every login of that user.
    pub(super) fn apply_set_pin(
        &self,
        token: TokenId,
        user: UserType,
        pin: &PinHash,
    ) -> Result<Applied, Refusal> {
        let mut t = (*self.token_or_refuse(token)?).clone();
        match user {
            UserType::So => {
                t.so_pin = pin.clone();
                t.so_failures = 0;
            }
            UserType::User => {
                t.user_pin = Some(pin.clone());
                t.user_failures = 0;
            }
        }
        self.update_token(&t);
        let ended = self.end_logins(token, Some(user));
        Ok(Applied {
            result: CommandResult::Done,
            summary: format!(
                "set_pin token={token} user={} logins_ended={ended}",
                user_name(user)
            ),
        })
    }

    /// Replaces `user`'s PIN hash with another hash of the same PIN (a re-hash), keeping its
    /// logins and counter.
    pub(super) fn replace_pin_hash(
        &self,
        token: TokenId,
        user: UserType,
        hash: &PinHash,
    ) -> Result<(), Refusal> {
        let mut t = (*self.token_or_refuse(token)?).clone();
        match user {
            UserType::So => t.so_pin = hash.clone(),
            UserType::User => t.user_pin = Some(hash.clone()),
        }
        self.update_token(&t);
        Ok(())
    }

    /// `LoginFailed`: counts the failure; locked at the cluster's `max_failures`.
    pub(super) fn apply_login_failed(
        &self,
        cluster: &ClusterInfo,
        token: TokenId,
        user: UserType,
    ) -> Result<Applied, Refusal> {
        self.count_failure(cluster, token, user, "login_failed")
    }

    /// Counts one more failure (or attempt) of `user`'s PIN; locked at `max_failures`. `what`
    /// names the command in the audit summary.
    pub(super) fn count_failure(
        &self,
        cluster: &ClusterInfo,
        token: TokenId,
        user: UserType,
        what: &str,
    ) -> Result<Applied, Refusal> {
        let mut t = (*self.token_or_refuse(token)?).clone();
        let counter = match user {
            UserType::So => &mut t.so_failures,
            UserType::User => {
                if t.user_pin.is_none() {
                    return refuse(
                        ErrorCode::UserPinNotInitialized,
                        format!("token {token} has no user PIN"),
                    );
                }
                &mut t.user_failures
            }
        };
        *counter = counter.saturating_add(1);
        let count = *counter;
        let locked = count >= cluster.max_failures;
        self.update_token(&t);
        Ok(Applied {
            result: CommandResult::Failures { count, locked },
            summary: format!(
                "{what} token={token} user={} count={count} locked={locked}",
                user_name(user)
            ),
        })
    }

    /// `LoginSucceeded`: clears the failure counter.
    pub(super) fn apply_login_succeeded(
        &self,
        token: TokenId,
        user: UserType,
    ) -> Result<Applied, Refusal> {
        let mut t = (*self.token_or_refuse(token)?).clone();
        match user {
            UserType::So => t.so_failures = 0,
            UserType::User => t.user_failures = 0,
        }
        self.update_token(&t);
        Ok(Applied {
            result: CommandResult::Done,
            summary: format!("login_succeeded token={token} user={}", user_name(user)),
        })
    }

    /// `Unlock`: clears both counters.
    pub(super) fn apply_unlock(&self, token: TokenId) -> Result<Applied, Refusal> {
        let mut t = (*self.token_or_refuse(token)?).clone();
        t.so_failures = 0;
        t.user_failures = 0;
        self.update_token(&t);
        Ok(Applied {
            result: CommandResult::Done,
            summary: format!("unlock token={token}"),
        })
    }

    pub(super) fn token_or_refuse(&self, id: TokenId) -> Result<Arc<Token>, Refusal> {
        match self.token(id) {
            Some(t) => Ok(t),
            None => refuse(ErrorCode::TokenNotPresent, format!("no token {id}")),
        }
    }

    pub(super) fn check_label(&self, label: &str, except: Option<TokenId>) -> Result<(), Refusal> {
        if label.is_empty() || label.len() > MAX_LABEL_LEN {
            return refuse(
                ErrorCode::ArgumentsBad,
                format!("a token label has 1 to {MAX_LABEL_LEN} bytes"),
            );
        }
        if self
            .tokens
            .iter()
            .any(|t| t.label == label && Some(t.id) != except)
        {
            return refuse(
                ErrorCode::TemplateInconsistent,
                format!("token label {label:?} is taken"),
            );
        }
        Ok(())
    }

    fn update_token(&self, token: &Token) {
        self.tokens.insert(token.id, Arc::new(token.clone()));
    }
}
