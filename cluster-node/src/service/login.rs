//! Logins, PINs and session grants.
//!
//! * PINs are stored as argon2id PHC strings ([`PinHasher`]) of the PIN's *pepper*, not of the
//!   PIN: `HMAC-SHA-256(session secret, label || PIN)`, computed in a chip for every hash and
//!   check ([`hash_pin`], [`verify_pin`]; `ChipDomain::pin_pepper`). The session secret is a
//!   chip blob under the domain key, so a stolen data directory alone cannot test a PIN guess:
//!   each guess needs a chip of the domain. Such hashes start with `$cloudkey-pepper-v1`.
//!   Hashes written before (plain argon2id of the PIN) still verify; a token's PIN is re-hashed
//!   with its pepper at its next successful login (`LoginOpened { upgrade }`), or when it is
//!   set again. Hashing runs on the blocking thread pool, at most
//!   `security.pin_hash_concurrency` at once, because each hash takes `argon2_memory_kib` of
//!   memory and tens of milliseconds of CPU.
//! * [`login`] checks a PIN on the node the client reached, after counting the attempt
//!   cluster-wide through Raft (`Command::LoginAttempt`): an attempt that would go past
//!   `max_failures` is refused `PinLocked` by the log itself, before its PIN is looked at, so
//!   parallel guesses on any number of nodes get at most `max_failures` PIN checks. A right
//!   PIN opens a login (`Command::LoginOpened`), which clears the counter. A node that cannot
//!   commit the attempt (no quorum) checks no PIN: it answers with a retryable error and the
//!   client tries another node.
//! * An opened login yields a [`SessionGrant`]: `postcard(GrantBody) || HMAC-SHA-256 tag`
//!   under the cluster's session MAC key, which every node derives inside its chips from the
//!   replicated session secret blob (see [`crate::chips`]). A grant names its login and a digest
//!   of the certificate identity that logged in ([`holder_of`]). Every node verifies it with
//!   [`verify_grant`] from its applied state, without a Raft round trip: the tag, the expiry,
//!   the presenting certificate, and that the login is still live. `C_Logout`
//!   ([`logout`]), a new PIN for that user, and re-initialising or deleting the token end the
//!   login on every node; a grant lives `session_ttl` and [`renew`] extends a live one.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Params, Version};
use aws_lc_rs::{digest, hmac};
use cloudkey_protocol::msg::{Auth, Secret, SessionGrant, TokenId, UserType};
use cloudkey_protocol::tls::PeerIdentity;
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::config::Security;
use crate::error::{NodeError, Result};
use crate::service::Session;
use crate::service::{NodeCtx, Plan};
use crate::state::{Command, CommandResult, Holder, PinHash, Token, MAX_LABEL_LEN};

/// Shortest PIN accepted (bytes).
pub const MIN_PIN_LEN: usize = 4;
/// Longest PIN accepted (bytes).
pub const MAX_PIN_LEN: usize = 64;

/// Version byte of the grants this node issues.
const GRANT_VERSION: u8 = 2;
/// Length of a grant's HMAC-SHA-256 tag.
const TAG_LEN: usize = 32;
/// Grants longer than this are refused before any work is done on them.
const MAX_GRANT_LEN: usize = 128;
/// How long a node waits to apply a login it has not applied yet, when a grant names one
/// (the login was opened through another node a moment ago).
const LOGIN_CATCH_UP: Duration = Duration::from_secs(1);

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

/// The prefix of a peppered PIN hash; the argon2id PHC string of the pepper follows.
const PEPPERED: &str = "$cloudkey-pepper-v1";

/// A PIN hash for storage: argon2id over the PIN's pepper, computed in a chip.
///
/// # Errors
/// The chip's (`Unavailable` while this node's chips do not hold the domain), hashing errors.
pub async fn hash_pin(ctx: &NodeCtx, pin: &Secret) -> Result<PinHash> {
    let phc = ctx.pins.hash(&pepper(ctx, pin).await?).await?;
    Ok(PinHash(format!("{PEPPERED}{}", phc.0)))
}

/// The pepper of `pin`, from a chip of the domain (`ChipDomain::pin_pepper`).
async fn pepper(ctx: &NodeCtx, pin: &Secret) -> Result<Secret> {
    let pepper = ctx.domain.pin_pepper(&ctx.svc.state, pin.expose()).await?;
    Ok(Secret(pepper.to_vec()))
}

/// How a PIN compares with a stored hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinMatch {
    /// Wrong PIN.
    No,
    /// Right, against a peppered hash.
    Yes,
    /// Right, against a hash from before peppering: re-hash it ([`hash_pin`]).
    Legacy,
}

/// Checks `pin` against `hash` (peppered, or from before).
///
/// # Errors
/// As [`hash_pin`]; a stored hash that does not parse.
pub async fn verify_pin(ctx: &NodeCtx, pin: &Secret, hash: &PinHash) -> Result<PinMatch> {
    match hash.0.strip_prefix(PEPPERED) {
        Some(phc) => {
            let pepper = pepper(ctx, pin).await?;
            let right = ctx.pins.verify(&pepper, &PinHash(phc.to_owned())).await?;
            Ok(if right { PinMatch::Yes } else { PinMatch::No })
        }
        None => {
            let right = ctx.pins.verify(pin, hash).await?;
            Ok(if right {
                PinMatch::Legacy
            } else {
                PinMatch::No
            })
        }
    }
}

/// What a right PIN gave [`check_pin`]: the digest of the hash it matched, and a peppered
/// hash to replace it with when it was from before peppering.
struct Checked {
    digest: [u8; 32],
    upgrade: Option<PinHash>,
}

/// What a grant says, before its tag.
#[derive(Serialize, Deserialize)]
struct GrantBody {
    version: u8,
    token: u64,
    user: UserType,
    /// The login (its log index).
    login: u64,
    /// [`holder_of`] the certificate that logged in.
    holder: Holder,
    expires_unix_ms: u64,
}

/// The digest a grant and its login keep of the certificate identity that logged in:
/// SHA-256 of a domain label and the identity's URI, cut to 16 bytes.
#[must_use]
pub fn holder_of(peer: &PeerIdentity) -> Holder {
    let mut h = digest::Context::new(&digest::SHA256);
    h.update(b"cloudkey grant holder v1\0");
    h.update(peer.uri().as_bytes());
    let d = h.finish();
    let mut out = [0u8; 16];
    out.copy_from_slice(&d.as_ref()[..16]);
    out
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

/// Checks `pin` against `user`'s PIN of `token`, after counting the attempt cluster-wide, and
/// returns what [`LoginOpened`](Command::LoginOpened) needs ([`Checked`]: the digest of the
/// hash it matched, and a peppered re-hash of an older one). A right PIN leaves the attempt
/// counted: the command the caller commits next (the login, the new PIN, the
/// re-initialisation) clears the counter.
///
/// # Errors
/// `PinLocked` (before the PIN is checked, or when this attempt was the last one allowed),
/// `PinIncorrect`, `UserPinNotInitialized`; Raft errors when the attempt could not be
/// counted (then no PIN was checked).
async fn check_pin(ctx: &NodeCtx, token: &Token, user: UserType, pin: &Secret) -> Result<Checked> {
    let cluster = ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    let counted = match user {
        UserType::So => token.so_failures,
        UserType::User => token.user_failures,
    };
    if counted >= cluster.max_failures {
        return Err(refuse(ErrorCode::PinLocked, "the PIN is locked"));
    }
    if user == UserType::User && token.user_pin.is_none() {
        return Err(refuse(
            ErrorCode::UserPinNotInitialized,
            "the user PIN is not initialised",
        ));
    }
    let cmd = Command::LoginAttempt {
        token: token.id,
        user,
    };
    // The log refuses an attempt past the limit (`PinLocked`, the PIN unchecked).
    let last = match ctx.write(cmd).await? {
        (CommandResult::Failures { locked, .. }, _) => locked,
        (other, _) => {
            return Err(NodeError::Internal(format!(
                "unexpected result of a login attempt: {other:?}"
            )))
        }
    };
    // The PIN as it is now that the attempt is applied (a change committed before the
    // attempt is seen here; one committed after it voids the login, see `LoginOpened`).
    let now = token_of(ctx, token.id)?;
    let hash = match user {
        UserType::So => Some(&now.so_pin),
        UserType::User => now.user_pin.as_ref(),
    };
    // A PIN of impossible length is wrong, but still counted: it is a guess like any other.
    if let Some(hash) = hash.filter(|_| (1..=MAX_PIN_LEN * 4).contains(&pin.expose().len())) {
        let digest = hash.digest();
        match verify_pin(ctx, pin, hash).await? {
            PinMatch::Yes => {
                return Ok(Checked {
                    digest,
                    upgrade: None,
                })
            }
            PinMatch::Legacy => {
                return Ok(Checked {
                    digest,
                    upgrade: Some(hash_pin(ctx, pin).await?),
                })
            }
            PinMatch::No => {}
        }
    }
    tracing::info!(token = %token.id, ?user, locked = last, "wrong PIN");
    if last {
        Err(refuse(
            ErrorCode::PinLocked,
            "wrong PIN; the PIN is now locked",
        ))
    } else {
        Err(refuse(ErrorCode::PinIncorrect, "wrong PIN"))
    }
}

/// `C_Login`: checks the PIN, opens a login for `peer` and issues its session grant.
///
/// Returns the grant and its expiry (milliseconds since the Unix epoch).
///
/// # Errors
/// `ClusterNotInitialized`, `TokenNotPresent`, the errors of the PIN check, `SessionCount`
/// when the token has too many live logins, and `Unavailable` when this node's chips cannot
/// derive the session MAC key yet.
pub async fn login(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    token: TokenId,
    user: UserType,
    pin: &Secret,
) -> Result<(SessionGrant, u64)> {
    let t = token_of(ctx, token)?;
    let checked = check_pin(ctx, &t, user, pin).await?;
    let holder = holder_of(peer);
    let cmd = Command::LoginOpened {
        token,
        user,
        holder,
        pin: checked.digest,
        upgrade: checked.upgrade,
        now_ms: now_unix_ms(),
    };
    let (id, expires_ms) = opened(ctx.write(cmd).await?.0)?;
    tracing::info!(%token, ?user, login = id, "login");
    issue(ctx, token, user, id, holder, expires_ms).await
}

/// The login a `LoginOpened` or `LoginRenewed` gave.
fn opened(result: CommandResult) -> Result<(u64, u64)> {
    match result {
        CommandResult::Login { id, expires_ms } => Ok((id, expires_ms)),
        other => Err(NodeError::Internal(format!(
            "unexpected result of a login: {other:?}"
        ))),
    }
}

/// The grant of login `id`.
async fn issue(
    ctx: &NodeCtx,
    token: TokenId,
    user: UserType,
    login: u64,
    holder: Holder,
    expires_unix_ms: u64,
) -> Result<(SessionGrant, u64)> {
    let key = ctx.domain.session_mac(&ctx.svc.state).await?;
    let body = GrantBody {
        version: GRANT_VERSION,
        token: token.0,
        user,
        login,
        holder,
        expires_unix_ms,
    };
    let mut grant = postcard::to_stdvec(&body).map_err(|source| NodeError::Encode {
        what: "a session grant",
        source,
    })?;
    let tag = hmac::sign(key.key(), &grant);
    grant.extend_from_slice(tag.as_ref());
    Ok((SessionGrant(grant), expires_unix_ms))
}

/// A verified grant: the session it gives and the login it names.
struct Verified {
    session: Session,
    login: u64,
    holder: Holder,
}

/// Checks a grant presented by `peer` for `auth.token`.
async fn verify(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    token: TokenId,
    grant: &SessionGrant,
) -> Result<Verified> {
    let not_logged_in = |why: &str| refuse(ErrorCode::UserNotLoggedIn, why);
    let bytes = grant.0.as_slice();
    if bytes.len() <= TAG_LEN || bytes.len() > MAX_GRANT_LEN {
        return Err(not_logged_in("malformed session grant"));
    }
    let (body, tag) = bytes.split_at(bytes.len() - TAG_LEN);
    let key = ctx.domain.session_mac(&ctx.svc.state).await?;
    // Constant-time comparison of the tag.
    hmac::verify(key.key(), body, tag).map_err(|_| not_logged_in("invalid session grant"))?;
    let body: GrantBody = postcard::from_bytes(body)
        .map_err(|_| not_logged_in("session grant of an unknown version"))?;
    if body.version != GRANT_VERSION {
        return Err(not_logged_in("session grant of an unknown version"));
    }
    if body.token != token.0 {
        return Err(not_logged_in("session grant of another token"));
    }
    if body.holder != holder_of(peer) {
        return Err(not_logged_in(
            "session grant of another certificate: a grant is honoured only from the certificate that logged in",
        ));
    }
    if body.expires_unix_ms <= now_unix_ms() {
        return Err(not_logged_in("session grant expired"));
    }
    let state = &ctx.svc.state;
    let mut entry = state.login(token, body.login);
    if entry.is_none() && body.login > state.applied() {
        // Opened through another node a moment ago: this node has not applied it yet.
        if state.wait_applied(body.login, LOGIN_CATCH_UP).await.is_ok() {
            entry = state.login(token, body.login);
        }
    }
    match entry {
        Some(e) if e.holder == body.holder && e.user == body.user => Ok(Verified {
            session: Session {
                token,
                user: Some(body.user),
            },
            login: body.login,
            holder: body.holder,
        }),
        _ => Err(not_logged_in(
            "session grant of a login that has ended (logout, a new PIN, or the token was re-initialised)",
        )),
    }
}

/// Turns a request's [`Auth`] into a [`Session`]: without a grant, a public session of the
/// token; with one, the grant's user after checking its tag, expiry, token, that `peer` is the
/// certificate that logged in, and that the login is live.
///
/// # Errors
/// `UserNotLoggedIn` for a forged, altered, expired or ended grant, a grant of another token,
/// and a grant presented by another certificate; `TokenNotPresent` when the token does not
/// exist; `ClusterNotInitialized`; `Unavailable` while this node cannot derive the session MAC
/// key.
pub async fn verify_grant(ctx: &NodeCtx, peer: &PeerIdentity, auth: &Auth) -> Result<Session> {
    token_of(ctx, auth.token)?;
    match &auth.grant {
        None => Ok(Session::public(auth.token)),
        Some(grant) => Ok(verify(ctx, peer, auth.token, grant).await?.session),
    }
}

/// The live login behind `auth`'s grant.
async fn verified_login(ctx: &NodeCtx, peer: &PeerIdentity, auth: &Auth) -> Result<Verified> {
    token_of(ctx, auth.token)?;
    let grant = auth
        .grant
        .as_ref()
        .ok_or_else(|| refuse(ErrorCode::UserNotLoggedIn, "not logged in"))?;
    verify(ctx, peer, auth.token, grant).await
}

/// The session and login id behind `auth`'s grant presented by `peer` (a leader's check of a
/// forwarded write, `crate::raft::authority`).
///
/// # Errors
/// As [`verify_grant`], and `UserNotLoggedIn` without a grant.
pub(crate) async fn grant_login(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &Auth,
) -> Result<(Session, u64)> {
    let v = verified_login(ctx, peer, auth).await?;
    Ok((v.session, v.login))
}

/// Renews a live login: a fresh grant, good for another `session_ttl`, for the certificate
/// that logged in. No PIN is checked again.
///
/// # Errors
/// As [`verify_grant`], and `UserNotLoggedIn` without a grant.
pub async fn renew(ctx: &NodeCtx, peer: &PeerIdentity, auth: &Auth) -> Result<(SessionGrant, u64)> {
    let v = verified_login(ctx, peer, auth).await?;
    let cmd = Command::LoginRenewed {
        token: auth.token,
        login: v.login,
        holder: v.holder,
        now_ms: now_unix_ms(),
    };
    let (id, expires_ms) = opened(ctx.write(cmd).await?.0)?;
    let user = v.session.user.unwrap_or(UserType::User);
    issue(ctx, auth.token, user, id, v.holder, expires_ms).await
}

/// `C_Logout`: ends the login behind `auth`'s grant on every node.
///
/// # Errors
/// As [`verify_grant`] (a grant that no longer verifies has nothing left to end), Raft errors.
pub async fn logout(ctx: &NodeCtx, peer: &PeerIdentity, auth: &Auth) -> Result<Plan<()>> {
    let v = verified_login(ctx, peer, auth).await?;
    let (token, login) = (auth.token, v.login);
    let cmd = Command::LoginClosed {
        token,
        login,
        now_ms: now_unix_ms(),
    };
    Ok(Plan::write(cmd, ()).on_commit(move || {
        tracing::info!(%token, login, "logout");
    }))
}

/// `C_InitPIN`: the SO sets the user PIN.
///
/// # Errors
/// `UserNotLoggedIn` without an SO session; `PinLenRange`; Raft errors.
pub async fn init_pin(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &Auth,
    pin: &Secret,
) -> Result<Plan<()>> {
    let session = verify_grant(ctx, peer, auth).await?;
    if session.user != Some(UserType::So) {
        return Err(refuse(
            ErrorCode::UserNotLoggedIn,
            "C_InitPIN needs the SO logged in",
        ));
    }
    check_pin_len(pin)?;
    let hash = hash_pin(ctx, pin).await?;
    let token = auth.token;
    let cmd = Command::SetPin {
        token,
        user: UserType::User,
        pin: hash,
    };
    Ok(Plan::write(cmd, ()).on_commit(move || {
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
    peer: &PeerIdentity,
    auth: &Auth,
    old_pin: &Secret,
    new_pin: &Secret,
) -> Result<Plan<()>> {
    let session = verify_grant(ctx, peer, auth).await?;
    let user = session.user.unwrap_or(UserType::User);
    check_pin_len(new_pin)?;
    let token = token_of(ctx, auth.token)?;
    check_pin(ctx, &token, user, old_pin).await?;
    let hash = hash_pin(ctx, new_pin).await?;
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
    let cmd = Command::InitToken {
        token,
        label: label.to_owned(),
    };
    Ok(Plan::write(cmd, ()).on_commit(move || {
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
}
