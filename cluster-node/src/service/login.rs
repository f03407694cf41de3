//! Logins, PINs and session grants.
//!
//! * PINs are stored as argon2id PHC strings ([`PinHasher`]). Hashing runs on the blocking
//!   thread pool, at most `security.pin_hash_concurrency` at once, because each hash takes
//!   `argon2_memory_kib` of memory and tens of milliseconds of CPU.
//! * [`login`] checks a PIN on the node the client reached. A locked PIN is refused before the
//!   PIN is even looked at; a wrong PIN is counted cluster-wide through Raft
//!   (`Command::LoginFailed`), so the lockout holds whichever node an attacker tries.
//! * A successful login yields a [`SessionGrant`]: `postcard(GrantBody) || HMAC-SHA-256 tag`
//!   under the cluster's session MAC key, which every node derives inside its chips from the
//!   replicated session secret blob (see [`crate::chips`]). Every node verifies a grant with
//!   [`verify_grant`] without re-running the PIN hash. A grant names the token's generation, so
//!   `C_InitToken` or deleting the token voids every earlier grant.
//!
//! # A node cut off from the leader
//!
//! A wrong PIN on a node that cannot reach the Raft leader cannot be counted cluster-wide. Such
//! failures are counted on the node itself ([`LocalFailures`]) and added to the replicated count
//! when deciding whether the PIN is locked, so a partitioned node allows at most `max_failures`
//! guesses per [`LOCAL_FAILURE_TTL`]. The wrong PIN is still answered `PinIncorrect` (or
//! `PinLocked`), never with an error that would tell a wrong PIN from a right one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use aws_lc_rs::hmac;
use cloudkey_protocol::msg::{Auth, Secret, SessionGrant, TokenId, UserType};
use cloudkey_protocol::ErrorCode;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::Security;
use crate::error::{NodeError, Result};
use crate::service::Session;
use crate::service::{NodeCtx, Plan};
use crate::state::{Command, CommandResult, PinHash, Token, MAX_LABEL_LEN};

/// Shortest PIN accepted (bytes).
pub const MIN_PIN_LEN: usize = 4;
/// Longest PIN accepted (bytes).
pub const MAX_PIN_LEN: usize = 64;

/// Version byte of the grants this node issues.
const GRANT_VERSION: u8 = 1;
/// Length of a grant's HMAC-SHA-256 tag.
const TAG_LEN: usize = 32;
/// Grants longer than this are refused before any work is done on them.
const MAX_GRANT_LEN: usize = 128;
/// Entries [`LocalFailures`] keeps at most; beyond it new entries are not recorded (the
/// replicated counters still apply).
const MAX_LOCAL_FAILURE_ENTRIES: usize = 65_536;

/// Hashes and verifies PINs with argon2id, on the blocking pool, with bounded concurrency.
pub struct PinHasher {
    params: Params,
    permits: Arc<Semaphore>,
}

impl fmt::Debug for PinHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinHasher")
            .field("m_kib", &self.params.m_cost())
            .field("t", &self.params.t_cost())
            .field("p", &self.params.p_cost())
            .field("free", &self.permits.available_permits())
            .finish()
    }
}

impl PinHasher {
    /// A hasher with the configured argon2id cost and concurrency.
    ///
    /// # Errors
    /// [`NodeError::Config`] for parameters argon2 rejects (the configuration check has
    /// already refused them).
    pub fn new(security: &Security) -> Result<Self> {
        let params = Params::new(
            security.argon2_memory_kib,
            security.argon2_iterations,
            security.argon2_parallelism,
            None,
        )
        .map_err(|e| NodeError::Config(format!("argon2 parameters: {e}")))?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(security.pin_hash_concurrency)),
        })
    }

    /// The argon2id PHC string of `pin`, with a fresh random salt.
    ///
    /// # Errors
    /// [`NodeError::Internal`] if hashing fails.
    pub async fn hash(&self, pin: &Secret) -> Result<PinHash> {
        let pin = pin.clone();
        let params = self.params.clone();
        self.run(move || {
            let mut salt = [0u8; argon2::RECOMMENDED_SALT_LEN];
            aws_lc_rs::rand::fill(&mut salt)
                .map_err(|_| NodeError::Internal("random generator failed".into()))?;
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password_with_salt(pin.expose(), &salt)
                .map(|h| PinHash(h.to_string()))
                .map_err(NodeError::PinHash)
        })
        .await
    }

    /// True when `pin` matches `hash`. The hash's own parameters are used.
    ///
    /// # Errors
    /// [`NodeError::Internal`] for a stored hash that does not parse.
    pub async fn verify(&self, pin: &Secret, hash: &PinHash) -> Result<bool> {
        let pin = pin.clone();
        let hash = hash.clone();
        self.run(move || {
            let parsed = PasswordHash::new(&hash.0)
                .map_err(|_| NodeError::Internal("stored PIN hash does not parse".into()))?;
            match Argon2::default().verify_password(pin.expose(), &parsed) {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(e) => Err(NodeError::PinHash(e)),
            }
        })
        .await
    }

    /// Runs `f` on the blocking pool once a permit is free. The permit moves into the blocking
    /// task, so concurrency stays bounded even when the caller gives up waiting.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| NodeError::Internal("PIN hasher closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|source| NodeError::Task {
            what: "PIN hash",
            source,
        })?
    }
}

/// Wrong PINs this node could not count cluster-wide (see the [module docs](self)).
///
/// An entry is forgotten when the replicated counter is seen lower than when the entry was last
/// bumped (an unlock, a successful login or a new PIN, through any node), when this node
/// replicates a login outcome for that PIN, and [`LOCAL_FAILURE_TTL`] after its last failure,
/// so a node that was cut off never keeps a PIN locked by itself for long.
#[derive(Debug, Default)]
pub struct LocalFailures {
    counts: DashMap<(TokenId, bool), LocalEntry>,
}

/// How long a failure counted only on this node holds.
pub const LOCAL_FAILURE_TTL: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy)]
struct LocalEntry {
    count: u32,
    /// The replicated counter when the entry was last bumped.
    replicated: u32,
    last: Instant,
}

impl LocalFailures {
    fn key(token: TokenId, user: UserType) -> (TokenId, bool) {
        (token, user == UserType::So)
    }

    /// The local failures still in force, given the replicated counter now.
    fn get(&self, token: TokenId, user: UserType, replicated: u32) -> u32 {
        let key = Self::key(token, user);
        let Some(e) = self.counts.get(&key).map(|e| *e) else {
            return 0;
        };
        if replicated < e.replicated || e.last.elapsed() > LOCAL_FAILURE_TTL {
            self.counts.remove(&key);
            return 0;
        }
        e.count
    }

    /// Counts one more local failure; returns the local count.
    fn bump(&self, token: TokenId, user: UserType, replicated: u32) -> u32 {
        let key = Self::key(token, user);
        let current = self.get(token, user, replicated);
        if self.counts.len() >= MAX_LOCAL_FAILURE_ENTRIES && current == 0 {
            // Full: the replicated counters still apply.
            return 0;
        }
        let entry = LocalEntry {
            count: current.saturating_add(1),
            replicated,
            last: Instant::now(),
        };
        self.counts.insert(key, entry);
        entry.count
    }

    fn clear(&self, token: TokenId, user: UserType) {
        self.counts.remove(&Self::key(token, user));
    }

    /// Forgets every local failure of `token` (after an operator unlock).
    pub fn clear_token(&self, token: TokenId) {
        self.counts.retain(|(t, _), _| *t != token);
    }
}

/// What a grant says, before its tag.
#[derive(Serialize, Deserialize)]
struct GrantBody {
    version: u8,
    token: u64,
    user: UserType,
    generation: u64,
    expires_unix_ms: u64,
    nonce: [u8; 16],
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn refuse(code: ErrorCode, detail: &str) -> NodeError {
    NodeError::refuse(code, detail)
}

/// Checks a PIN's length.
///
/// # Errors
/// `PinLenRange`.
pub fn check_pin_len(pin: &Secret) -> Result<()> {
    if (MIN_PIN_LEN..=MAX_PIN_LEN).contains(&pin.expose().len()) {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::PinLenRange,
            &format!("a PIN has {MIN_PIN_LEN} to {MAX_PIN_LEN} bytes"),
        ))
    }
}

/// Checks a token label: 1 to [`MAX_LABEL_LEN`] bytes, no control characters.
///
/// # Errors
/// `ArgumentsBad`.
pub fn check_label(label: &str) -> Result<()> {
    if label.is_empty() || label.len() > MAX_LABEL_LEN || label.chars().any(char::is_control) {
        return Err(refuse(
            ErrorCode::ArgumentsBad,
            &format!("a token label has 1 to {MAX_LABEL_LEN} bytes and no control characters"),
        ));
    }
    Ok(())
}

fn token_of(ctx: &NodeCtx, token: TokenId) -> Result<Arc<Token>> {
    ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    ctx.svc
        .state
        .token(token)
        .ok_or_else(|| refuse(ErrorCode::TokenNotPresent, "no such token"))
}

/// Checks `pin` against `user`'s PIN of `token`, counting a wrong PIN cluster-wide.
///
/// # Errors
/// `PinLocked` (before the PIN is checked, or when this attempt locked it), `PinIncorrect`,
/// `UserPinNotInitialized`; Raft errors only for a correct PIN's counter reset.
async fn check_pin(ctx: &NodeCtx, token: &Token, user: UserType, pin: &Secret) -> Result<()> {
    let cluster = ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    let replicated = match user {
        UserType::So => token.so_failures,
        UserType::User => token.user_failures,
    };
    let local = ctx.local_failures.get(token.id, user, replicated);
    if replicated.saturating_add(local) >= cluster.max_failures {
        return Err(refuse(ErrorCode::PinLocked, "the PIN is locked"));
    }
    let hash = match user {
        UserType::So => &token.so_pin,
        UserType::User => token.user_pin.as_ref().ok_or_else(|| {
            refuse(
                ErrorCode::UserPinNotInitialized,
                "the user PIN is not initialised",
            )
        })?,
    };
    // A PIN of impossible length is wrong, but still counted: it is a guess like any other.
    let right = if (1..=MAX_PIN_LEN * 4).contains(&pin.expose().len()) {
        ctx.pins.verify(pin, hash).await?
    } else {
        false
    };
    if right {
        if replicated > 0 {
            let cmd = Command::LoginSucceeded {
                token: token.id,
                user,
            };
            if let Err(e) = ctx.write(cmd).await {
                // The login is right; only the counter reset waits for the leader.
                tracing::warn!(token = %token.id, error = %e, "could not reset the failure counter");
            } else {
                ctx.local_failures.clear(token.id, user);
            }
        } else if local > 0 {
            ctx.local_failures.clear(token.id, user);
        }
        return Ok(());
    }
    // Counted here first, so that the failure holds even if the write below never completes
    // (no leader, or the request's deadline ends it); cleared once the cluster has counted it.
    let local = ctx.local_failures.bump(token.id, user, replicated);
    let cmd = Command::LoginFailed {
        token: token.id,
        user,
    };
    // Leave time to answer within the request's deadline whatever Raft does.
    let write = tokio::time::timeout(ctx.limits.request_deadline / 2, ctx.write(cmd)).await;
    let locked = match write {
        Ok(Ok((CommandResult::Failures { locked, count }, _))) => {
            ctx.local_failures.clear(token.id, user);
            tracing::info!(token = %token.id, ?user, count, locked, "wrong PIN");
            locked
        }
        Ok(Ok((other, _))) => {
            return Err(NodeError::Internal(format!(
                "unexpected result of a failed login: {other:?}"
            )))
        }
        // The state refused the count (e.g. the token was deleted meanwhile).
        Ok(Err(NodeError::Refused(w))) => return Err(NodeError::Refused(w)),
        Ok(Err(e)) => {
            tracing::warn!(
                token = %token.id, ?user, error = %e,
                "wrong PIN counted on this node only: the cluster could not count it"
            );
            replicated.saturating_add(local) >= cluster.max_failures
        }
        Err(_) => {
            tracing::warn!(
                token = %token.id, ?user,
                "wrong PIN counted on this node only: the cluster did not count it in time"
            );
            replicated.saturating_add(local) >= cluster.max_failures
        }
    };
    if locked {
        Err(refuse(
            ErrorCode::PinLocked,
            "wrong PIN; the PIN is now locked",
        ))
    } else {
        Err(refuse(ErrorCode::PinIncorrect, "wrong PIN"))
    }
}

/// `C_Login`: checks the PIN and issues a session grant.
///
/// Returns the grant and its expiry (milliseconds since the Unix epoch).
///
/// # Errors
/// `ClusterNotInitialized`, `TokenNotPresent`, the errors of the PIN check, and `Unavailable`
/// when this node's chips cannot derive the session MAC key yet.
pub async fn login(
    ctx: &NodeCtx,
    token: TokenId,
    user: UserType,
    pin: &Secret,
) -> Result<(SessionGrant, u64)> {
    let t = token_of(ctx, token)?;
    check_pin(ctx, &t, user, pin).await?;
    let cluster = ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    let key = ctx.domain.session_mac(&ctx.svc.state).await?;
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| NodeError::Internal("random generator failed".into()))?;
    let expires_unix_ms = now_unix_ms().saturating_add(cluster.session_ttl_ms);
    let body = GrantBody {
        version: GRANT_VERSION,
        token: token.0,
        user,
        generation: t.generation,
        expires_unix_ms,
        nonce,
    };
    let mut grant = postcard::to_stdvec(&body).map_err(|source| NodeError::Encode {
        what: "a session grant",
        source,
    })?;
    let tag = hmac::sign(key.key(), &grant);
    grant.extend_from_slice(tag.as_ref());
    tracing::info!(%token, ?user, "login");
    Ok((SessionGrant(grant), expires_unix_ms))
}

/// Turns a request's [`Auth`] into a [`Session`]: without a grant, a public session of the
/// token; with one, the grant's user after checking its tag, expiry, token and generation.
///
/// # Errors
/// `UserNotLoggedIn` for a forged, altered, expired or voided grant (and for a grant of another
/// token); `TokenNotPresent` when the token does not exist; `ClusterNotInitialized`;
/// `Unavailable` while this node cannot derive the session MAC key.
pub async fn verify_grant(ctx: &NodeCtx, auth: &Auth) -> Result<Session> {
    let token = token_of(ctx, auth.token)?;
    let Some(grant) = &auth.grant else {
        return Ok(Session {
            token: auth.token,
            user: None,
        });
    };
    let not_logged_in = |why: &str| refuse(ErrorCode::UserNotLoggedIn, why);
    let bytes = grant.0.as_slice();
    if bytes.len() <= TAG_LEN || bytes.len() > MAX_GRANT_LEN {
        return Err(not_logged_in("malformed session grant"));
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let key = ctx.domain.session_mac(&ctx.svc.state).await?;
    // Constant-time comparison of the tag.
    hmac::verify(key.key(), body, tag).map_err(|_| not_logged_in("invalid session grant"))?;
    let body: GrantBody =
        postcard::from_bytes(body).map_err(|_| not_logged_in("malformed session grant"))?;
    if body.version != GRANT_VERSION {
        return Err(not_logged_in("session grant of an unknown version"));
    }
    if body.token != auth.token.0 {
        return Err(not_logged_in("session grant of another token"));
    }
    if body.expires_unix_ms <= now_unix_ms() {
        return Err(not_logged_in("session grant expired"));
    }
    if body.generation != token.generation {
        return Err(not_logged_in(
            "session grant voided: the token was re-initialised",
        ));
    }
    Ok(Session {
        token: auth.token,
        user: Some(body.user),
    })
}

/// `C_InitPIN`: the SO sets the user PIN.
///
/// # Errors
/// `UserNotLoggedIn` without an SO session; `PinLenRange`; Raft errors.
pub async fn init_pin(ctx: &NodeCtx, auth: &Auth, pin: &Secret) -> Result<Plan<()>> {
    let session = verify_grant(ctx, auth).await?;
    if session.user != Some(UserType::So) {
        return Err(refuse(
            ErrorCode::UserNotLoggedIn,
            "C_InitPIN needs the SO logged in",
        ));
    }
    check_pin_len(pin)?;
    let hash = ctx.pins.hash(pin).await?;
    let (token, failures) = (auth.token, ctx.local_failures.clone());
    let cmd = Command::SetPin {
        token,
        user: UserType::User,
        pin: hash,
    };
    Ok(Plan::write(cmd, ()).on_commit(move || {
        failures.clear(token, UserType::User);
        tracing::info!(%token, "user PIN initialised");
    }))
}

/// `C_SetPIN`: changes the logged-in user's own PIN (the user PIN in a public session, as
/// PKCS#11 specifies), after checking the old one.
///
/// # Errors
/// The errors of the PIN check for `old_pin`; `PinLenRange` for `new_pin`; Raft errors.
pub async fn set_pin(
    ctx: &NodeCtx,
    auth: &Auth,
    old_pin: &Secret,
    new_pin: &Secret,
) -> Result<Plan<()>> {
    let session = verify_grant(ctx, auth).await?;
    let user = session.user.unwrap_or(UserType::User);
    check_pin_len(new_pin)?;
    let token = token_of(ctx, auth.token)?;
    check_pin(ctx, &token, user, old_pin).await?;
    let hash = ctx.pins.hash(new_pin).await?;
    let token = auth.token;
    let cmd = Command::SetPin {
        token,
        user,
        pin: hash,
    };
    Ok(Plan::write(cmd, ()).on_commit(move || {
        tracing::info!(%token, ?user, "PIN changed");
    }))
}

/// `C_InitToken`: with the SO PIN, relabels the token, drops its user PIN and objects and voids
/// every session grant of it.
///
/// # Errors
/// `ArgumentsBad` for a bad label; the errors of the SO PIN check; Raft errors.
pub async fn init_token(
    ctx: &NodeCtx,
    token: TokenId,
    so_pin: &Secret,
    label: &str,
) -> Result<Plan<()>> {
    check_label(label)?;
    let t = token_of(ctx, token)?;
    if let Some(other) = ctx.svc.state.token_by_label(label) {
        if other.id != token {
            return Err(refuse(
                ErrorCode::ArgumentsBad,
                "another token has that label",
            ));
        }
    }
    check_pin(ctx, &t, UserType::So, so_pin).await?;
    let failures = ctx.local_failures.clone();
    let cmd = Command::InitToken {
        token,
        label: label.to_owned(),
    };
    Ok(Plan::write(cmd, ()).on_commit(move || {
        failures.clear(token, UserType::User);
        tracing::info!(%token, "token initialised");
    }))
}

/// The session MAC key: `HMAC-SHA-256(session secret, "cloudkey session mac v1")`, computed in a
/// chip, kept in memory only.
pub struct SessionMacKey {
    key: hmac::Key,
}

impl SessionMacKey {
    /// Wraps the derived key bytes (which the caller zeroizes).
    #[must_use]
    pub fn new(bytes: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    fn key(&self) -> &hmac::Key {
        &self.key
    }

    /// HMAC-SHA-256 of `data` under this key (for one-time codes, domain-separated by the
    /// caller).
    #[must_use]
    pub fn mac(&self, data: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.key, data);
        let mut out = [0u8; 32];
        out.copy_from_slice(&tag.as_ref()[..32]);
        out
    }
}

impl fmt::Debug for SessionMacKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionMacKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hasher() -> PinHasher {
        PinHasher::new(&Security {
            argon2_memory_kib: 64,
            argon2_iterations: 1,
            ..Security::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn pins_hash_to_argon2id_and_verify() {
        let h = hasher();
        let pin = Secret::from("123456");
        let hash = h.hash(&pin).await.unwrap();
        assert!(
            hash.0.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{}",
            hash.0
        );
        assert!(h.verify(&pin, &hash).await.unwrap());
        assert!(!h.verify(&Secret::from("654321"), &hash).await.unwrap());
        // Salted: the same PIN hashes differently.
        assert_ne!(h.hash(&pin).await.unwrap(), hash);
        assert!(h.verify(&pin, &PinHash("garbage".into())).await.is_err());
    }

    #[test]
    fn pin_and_label_bounds() {
        assert!(check_pin_len(&Secret::from("123")).is_err());
        assert!(check_pin_len(&Secret::from("1234")).is_ok());
        assert!(check_pin_len(&Secret(vec![b'1'; MAX_PIN_LEN + 1])).is_err());
        assert!(check_label("").is_err());
        assert!(check_label(&"x".repeat(33)).is_err());
        assert!(check_label("tab\tlabel").is_err());
        assert!(check_label("payments").is_ok());
    }

    #[test]
    fn local_failures_count_per_pin_until_the_replicated_counter_drops() {
        let f = LocalFailures::default();
        let (t, u) = (TokenId(1), UserType::User);
        assert_eq!(f.bump(t, u, 2), 1);
        assert_eq!(f.bump(t, u, 2), 2);
        assert_eq!(f.get(t, u, 2), 2);
        assert_eq!(f.get(t, UserType::So, 2), 0);
        // The replicated counter went up meanwhile (failures elsewhere): still in force.
        assert_eq!(f.get(t, u, 3), 2);
        // It dropped (an unlock or a successful login somewhere): forgotten.
        assert_eq!(f.get(t, u, 0), 0);
        assert_eq!(f.bump(t, u, 0), 1);
        f.clear_token(t);
        assert_eq!(f.get(t, u, 0), 0);
    }
}
