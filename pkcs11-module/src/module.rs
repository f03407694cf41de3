//! The module's global state: initialisation and finalisation (PKCS#11 3.0 §5.4), the fork
//! rule, the slots and their tokens and logins, and the calls into the cluster on behalf of a
//! slot (with the transparent re-login of an expired session grant).
//!
//! # State and fork
//! One [`Module`] lives in `MODULE` between `C_Initialize` and `C_Finalize`; every function
//! takes an `Arc` of it ([`get`]) and holds no global lock while working. `C_Initialize`
//! records the process id; a call from another process (a child after `fork()`) sees
//! `CKR_CRYPTOKI_NOT_INITIALIZED` until the child calls `C_Initialize`, which leaks the
//! parent's module (its runtime's threads do not exist in the child, so it must never be
//! dropped there) and builds a fresh one.
//!
//! # Logins
//! Login state is per slot (shared by all sessions of the application, §5.5). The cluster's
//! session grant is short-lived and bound to this module's certificate. A grant about to
//! expire is renewed (`RenewSession`, no PIN). The module keeps the PIN (zeroized on logout
//! and drop) so that when a node answers `CKR_USER_NOT_LOGGED_IN` (the grant expired, or the
//! login ended because the PIN was changed), it logs in again transparently and retries the
//! request once. If that re-login fails (the PIN was changed or locked elsewhere), the slot is
//! logged out. `C_Logout`, and closing a slot's last session, end the login on the cluster
//! too (`Logout`), so the grant is void on every node.

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cloudkey_protocol::msg::{
    AttrValue, Auth, ObjectId, Request, Response, Secret, SessionGrant, TokenId, TokenInfo,
    UserType,
};
use cryptoki_sys::{CK_C_INITIALIZE_ARGS, CK_SLOT_ID};
use zeroize::Zeroizing;

use crate::config::{Config, ENV_LOG};
use crate::error::Ckr;
use crate::mechanism::Numbering;
use crate::objects::Objects;
use crate::runtime::{Backend, Remote};
use crate::session::Sessions;

static MODULE: RwLock<Option<Arc<Module>>> = RwLock::new(None);

/// How long a token list from the cluster is reused for slot and token information.
const TOKEN_LIST_TTL: Duration = Duration::from_secs(1);
/// A grant this close to its expiry is renewed before use.
const GRANT_MARGIN_MS: u64 = 5_000;

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

/// Locks a mutex; a panic elsewhere (caught at the FFI boundary) leaves plain data behind, so
/// a poisoned lock is used as it is.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The initialised module of this process.
///
/// # Errors
/// `CKR_CRYPTOKI_NOT_INITIALIZED` before `C_Initialize`, after `C_Finalize`, and in a forked
/// child until it calls `C_Initialize`.
pub(crate) fn get() -> Result<Arc<Module>, Ckr> {
    match read(&MODULE).as_ref() {
        Some(m) if m.pid == std::process::id() => Ok(Arc::clone(m)),
        _ => Err(Ckr::CRYPTOKI_NOT_INITIALIZED),
    }
}

/// Checks `CK_C_INITIALIZE_ARGS` (§5.4, C_Initialize): `pReserved` NULL; the four mutex
/// functions all NULL or all set; given mutex functions need `CKF_OS_LOCKING_OK`, since the
/// module only uses OS locking; the module must be allowed to create threads.
///
/// `CKF_LIBRARY_CANT_CREATE_OS_THREADS` together with `CKF_OS_LOCKING_OK` is accepted (the
/// module then creates its threads all the same): GnuTLS 3.7.9 as Debian 12 ships it
/// (`3.7.9-2+deb12u7`, and upstream from its commit aa5f15a8 until f6680ada) passes exactly
/// these two flags to ask for a thread-safe module, and treats `CKR_NEED_TO_CREATE_THREADS`
/// as fatal instead of initialising again without arguments, so that `p11tool` and every
/// GnuTLS application could not load the module at all. An application that allows the
/// module the operating system's locking has native threads; one that forbids threads
/// without allowing OS locking still gets `CKR_NEED_TO_CREATE_THREADS`.
///
/// # Errors
/// `CKR_ARGUMENTS_BAD`, `CKR_CANT_LOCK`, `CKR_NEED_TO_CREATE_THREADS`.
pub(crate) fn check_init_args(a: &CK_C_INITIALIZE_ARGS) -> Result<(), Ckr> {
    if !a.pReserved.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let set = [
        a.CreateMutex.is_some(),
        a.DestroyMutex.is_some(),
        a.LockMutex.is_some(),
        a.UnlockMutex.is_some(),
    ];
    let n = set.iter().filter(|s| **s).count();
    if n != 0 && n != 4 {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    if n == 4 && a.flags & cryptoki_sys::CKF_OS_LOCKING_OK == 0 {
        return Err(Ckr::CANT_LOCK);
    }
    if a.flags & cryptoki_sys::CKF_LIBRARY_CANT_CREATE_OS_THREADS != 0
        && a.flags & cryptoki_sys::CKF_OS_LOCKING_OK == 0
    {
        return Err(Ckr::NEED_TO_CREATE_THREADS);
    }
    Ok(())
}

static LOGGING: OnceLock<bool> = OnceLock::new();

/// Turns logging to stderr on when `CLOUDKEY_PKCS11_LOG` is set (once per process); never to
/// stdout, which applications such as `pkcs11-tool` print their results on.
fn init_logging(default_level: Option<&str>) -> bool {
    *LOGGING.get_or_init(|| {
        let Some(v) = std::env::var_os(ENV_LOG) else {
            return false;
        };
        let v = v.to_string_lossy().into_owned();
        let level = if v.is_empty() || v == "1" {
            default_level.unwrap_or("info").to_string()
        } else {
            v
        };
        let filter = tracing_subscriber::EnvFilter::try_new(&level)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Another library of the process may have installed a subscriber: keep it.
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_env_filter(filter)
            .try_init();
        true
    })
}

/// One clear line on stderr (through tracing when logging is on, so it is not printed twice).
fn report(msg: &str) {
    if LOGGING.get().copied().unwrap_or(false) {
        tracing::error!("{msg}");
    } else {
        let _ = writeln!(std::io::stderr(), "cloudkey-pkcs11: {msg}");
    }
}

/// `C_Initialize` after its arguments were checked: reads the configuration, starts the
/// runtime and the client. Never blocks on the network: the cluster is first contacted by
/// the first call that needs it.
///
/// # Errors
/// `CKR_CRYPTOKI_ALREADY_INITIALIZED`; `CKR_GENERAL_ERROR` for a missing or bad
/// configuration (after one line on stderr).
pub(crate) fn initialize() -> Result<(), Ckr> {
    let pid = std::process::id();
    let mut g = write(&MODULE);
    if let Some(m) = g.as_ref() {
        if m.pid == pid {
            return Err(Ckr::CRYPTOKI_ALREADY_INITIALIZED);
        }
        // A forked child: the parent's runtime threads do not exist here. Leak it.
        if let Some(old) = g.take() {
            std::mem::forget(old);
        }
    }
    let config = Config::from_env();
    init_logging(config.as_ref().ok().and_then(|c| c.log_level.as_deref()));
    let module = config.and_then(|c| {
        let numbering = Numbering::new(&c.vendor)?;
        let remote = Remote::new(&c.client)?;
        Ok(Module::new(pid, c.slots, numbering, Box::new(remote)))
    });
    match module {
        Ok(m) => {
            tracing::info!(slots = m.slots.len(), "initialised");
            *g = Some(Arc::new(m));
            Ok(())
        }
        Err(msg) => {
            report(&format!("C_Initialize failed: {msg}"));
            Err(Ckr::GENERAL_ERROR)
        }
    }
}

/// `C_Finalize`: closes every session (destroying their session objects) and drops the module.
///
/// # Errors
/// `CKR_CRYPTOKI_NOT_INITIALIZED`.
pub(crate) fn finalize() -> Result<(), Ckr> {
    let m = {
        let mut g = write(&MODULE);
        match g.as_ref() {
            Some(m) if m.pid == std::process::id() => g.take(),
            _ => return Err(Ckr::CRYPTOKI_NOT_INITIALIZED),
        }
    };
    if let Some(m) = m {
        m.close_all_everywhere();
        tracing::info!("finalised");
    }
    Ok(())
}

/// Installs a module for in-crate tests (serialised by the caller).
#[cfg(test)]
pub(crate) fn install(m: Option<Module>) {
    *write(&MODULE) = m.map(Arc::new);
}

/// A login of a slot.
pub(crate) struct Login {
    /// Who.
    pub(crate) user: UserType,
    grant: SessionGrant,
    expires_unix_ms: u64,
    pin: Zeroizing<Vec<u8>>,
    /// Changes at every login and logout of the slot.
    epoch: u64,
}

/// A slot: one configured token.
pub(crate) struct Slot {
    /// `CK_SLOT_ID` (the index in the configuration).
    pub(crate) id: CK_SLOT_ID,
    label: RwLock<String>,
    token: RwLock<Option<TokenId>>,
    login: Mutex<Option<Login>>,
    epochs: AtomicU64,
}

impl Slot {
    fn new(id: CK_SLOT_ID, label: String) -> Self {
        Self {
            id,
            label: RwLock::new(label),
            token: RwLock::new(None),
            login: Mutex::new(None),
            epochs: AtomicU64::new(0),
        }
    }

    /// The token label the slot shows.
    pub(crate) fn label(&self) -> String {
        read(&self.label).clone()
    }

    /// Who is logged in.
    pub(crate) fn user(&self) -> Option<UserType> {
        lock(&self.login).as_ref().map(|l| l.user)
    }

    /// Forgets the login (`C_Logout`, last session closed, token re-initialised) and returns
    /// it, so that the caller can end it on the cluster ([`Module::end_login`]).
    pub(crate) fn logout(&self) -> Option<Login> {
        self.epochs.fetch_add(1, Ordering::Relaxed);
        lock(&self.login).take()
    }

    /// Records a successful login; returns the login it replaces (a context-specific login),
    /// for the caller to end.
    pub(crate) fn set_login(
        &self,
        user: UserType,
        grant: Response,
        pin: Zeroizing<Vec<u8>>,
    ) -> Result<Option<Login>, Ckr> {
        let Response::Session {
            grant,
            expires_unix_ms,
        } = grant
        else {
            return Err(unexpected("login"));
        };
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(lock(&self.login).replace(Login {
            user,
            grant,
            expires_unix_ms,
            pin,
            epoch,
        }))
    }

    /// Replaces the grant of login `epoch` (renewed, or logged in again), if that login is
    /// still the slot's.
    fn replace_grant(&self, epoch: u64, grant: SessionGrant, expires_unix_ms: u64) {
        if let Some(l) = lock(&self.login).as_mut().filter(|l| l.epoch == epoch) {
            l.grant = grant;
            l.expires_unix_ms = expires_unix_ms;
        }
    }

    /// Replaces the remembered PIN after `C_SetPIN` by the logged-in user.
    pub(crate) fn update_pin(&self, user: UserType, pin: &[u8]) {
        if let Some(l) = lock(&self.login).as_mut().filter(|l| l.user == user) {
            l.pin = Zeroizing::new(pin.to_vec());
        }
    }

    /// Binds the slot to a (new) token label and id, after `C_InitToken`.
    pub(crate) fn rebind(&self, label: String, token: Option<TokenId>) {
        *write(&self.label) = label;
        *write(&self.token) = token;
    }
}

/// The initialised module.
pub(crate) struct Module {
    pid: u32,
    backend: Box<dyn Backend>,
    /// The application's vendor numbering.
    pub(crate) numbering: Numbering,
    /// Slots in order.
    pub(crate) slots: Vec<Slot>,
    /// Open sessions.
    pub(crate) sessions: Sessions,
    /// Object handles.
    pub(crate) objects: Objects,
    tokens: Mutex<Option<(Instant, TokenList)>>,
}

/// A token list from the cluster, or why there is none.
type TokenList = Result<Arc<Vec<TokenInfo>>, Ckr>;

impl Module {
    /// A module over `backend` showing `labels` as slots.
    pub(crate) fn new(
        pid: u32,
        labels: Vec<String>,
        numbering: Numbering,
        backend: Box<dyn Backend>,
    ) -> Self {
        Self {
            pid,
            backend,
            numbering,
            slots: labels
                .into_iter()
                .enumerate()
                .map(|(i, l)| Slot::new(i as CK_SLOT_ID, l))
                .collect(),
            sessions: Sessions::default(),
            objects: Objects::default(),
            tokens: Mutex::new(None),
        }
    }

    /// A slot by id.
    ///
    /// # Errors
    /// `CKR_SLOT_ID_INVALID`.
    pub(crate) fn slot(&self, id: CK_SLOT_ID) -> Result<&Slot, Ckr> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.slots.get(i))
            .ok_or(Ckr::SLOT_ID_INVALID)
    }

    /// Sends a request that needs no login.
    ///
    /// # Errors
    /// The node's refusal; `CKR_DEVICE_ERROR` when the cluster is unreachable.
    pub(crate) fn call(&self, req: Request) -> Result<Response, Ckr> {
        let name = req.name();
        let r = self.backend.call(req);
        if let Err(e) = &r {
            tracing::debug!(request = name, error = %e, "refused");
        }
        r
    }

    /// The cluster's tokens, cached briefly (`fresh` skips the cache). A failure is kept as
    /// briefly, so that listing several slots of an unreachable cluster waits for one deadline,
    /// not one per slot.
    ///
    /// # Errors
    /// As [`Module::call`].
    pub(crate) fn token_list(&self, fresh: bool) -> TokenList {
        if !fresh {
            if let Some((at, list)) = lock(&self.tokens).as_ref() {
                if at.elapsed() < TOKEN_LIST_TTL {
                    return list.clone();
                }
            }
        }
        let list = match self.call(Request::ListTokens) {
            Ok(Response::Tokens(list)) => Ok(Arc::new(list)),
            Ok(_) => Err(unexpected("list_tokens")),
            Err(e) => Err(e),
        };
        *lock(&self.tokens) = Some((Instant::now(), list.clone()));
        list
    }

    /// Drops the cached token list (after logins and PIN changes, whose counters it shows).
    pub(crate) fn forget_tokens(&self) {
        *lock(&self.tokens) = None;
    }

    /// The slot's token as the cluster lists it.
    ///
    /// # Errors
    /// `CKR_TOKEN_NOT_PRESENT` when the cluster has no such token; as [`Module::call`].
    pub(crate) fn token_info(&self, slot: &Slot, fresh: bool) -> Result<TokenInfo, Ckr> {
        let list = self.token_list(fresh)?;
        let id = *read(&slot.token);
        let label = slot.label();
        let found = list
            .iter()
            .find(|t| Some(t.id) == id)
            .or_else(|| list.iter().find(|t| t.label == label))
            .cloned();
        let info = found.ok_or(Ckr::TOKEN_NOT_PRESENT)?;
        *write(&slot.token) = Some(info.id);
        Ok(info)
    }

    /// The slot's token id (resolved once, then cached).
    ///
    /// # Errors
    /// As [`Module::token_info`].
    pub(crate) fn token_id(&self, slot: &Slot) -> Result<TokenId, Ckr> {
        if let Some(id) = *read(&slot.token) {
            return Ok(id);
        }
        self.token_info(slot, false).map(|t| t.id)
    }

    /// Logs the slot's user in with a PIN and returns the grant (not stored).
    ///
    /// # Errors
    /// The node's refusal (`CKR_PIN_INCORRECT`, `CKR_PIN_LOCKED`, ...).
    pub(crate) fn login_request(
        &self,
        slot: &Slot,
        user: UserType,
        pin: &[u8],
    ) -> Result<Response, Ckr> {
        let token = self.token_id(slot)?;
        let r = self.call(Request::Login {
            token,
            user,
            pin: Secret(pin.to_vec()),
        });
        self.forget_tokens();
        r
    }

    fn auth(&self, slot: &Slot) -> Result<(Auth, Option<u64>), Ckr> {
        let token = self.token_id(slot)?;
        let (grant, epoch, stale) = match lock(&slot.login).as_ref() {
            Some(l) => (
                Some(l.grant.clone()),
                Some(l.epoch),
                now_ms().saturating_add(GRANT_MARGIN_MS) >= l.expires_unix_ms,
            ),
            None => (None, None, false),
        };
        if let (true, Some(epoch)) = (stale, epoch) {
            self.renew(slot, token, epoch)?;
            return self.auth_now(slot, token);
        }
        Ok((Auth { token, grant }, epoch))
    }

    fn auth_now(&self, slot: &Slot, token: TokenId) -> Result<(Auth, Option<u64>), Ckr> {
        let l = lock(&slot.login);
        Ok((
            Auth {
                token,
                grant: l.as_ref().map(|l| l.grant.clone()),
            },
            l.as_ref().map(|l| l.epoch),
        ))
    }

    /// Renews a grant about to expire (`RenewSession`), if the login `epoch` is still
    /// current; when the cluster does not renew it, logs in again with the PIN.
    fn renew(&self, slot: &Slot, token: TokenId, epoch: u64) -> Result<(), Ckr> {
        let grant = match lock(&slot.login).as_ref() {
            Some(l) if l.epoch == epoch => l.grant.clone(),
            _ => return Ok(()),
        };
        let auth = Auth {
            token,
            grant: Some(grant),
        };
        match self.call(Request::RenewSession { auth }) {
            Ok(Response::Session {
                grant,
                expires_unix_ms,
            }) => {
                tracing::debug!(slot = slot.id, "session grant renewed");
                slot.replace_grant(epoch, grant, expires_unix_ms);
                Ok(())
            }
            Ok(_) => Err(unexpected("renew_session")),
            Err(e) if e == Ckr::DEVICE_ERROR => Err(e),
            Err(_) => self.relogin(slot, epoch),
        }
    }

    /// Ends `login` on the cluster, so that its grant is void on every node. Best effort: the
    /// local logout stands whatever the cluster answers, and a grant the cluster does not hear
    /// of ends at its expiry.
    pub(crate) fn end_login(&self, slot: &Slot, login: Option<Login>) {
        let (Some(login), Some(token)) = (login, *read(&slot.token)) else {
            return;
        };
        let auth = Auth {
            token,
            grant: Some(login.grant.clone()),
        };
        if let Err(e) = self.call(Request::Logout { auth }) {
            tracing::debug!(slot = slot.id, error = %e, "the cluster did not end the login");
        }
    }

    /// Logs in again with the remembered PIN, if the login `epoch` is still current.
    fn relogin(&self, slot: &Slot, epoch: u64) -> Result<(), Ckr> {
        let (user, pin) = match lock(&slot.login).as_ref() {
            Some(l) if l.epoch == epoch => (l.user, l.pin.clone()),
            // Someone logged out or in meanwhile: use what is there now.
            _ => return Ok(()),
        };
        tracing::debug!(slot = slot.id, "renewing the session grant");
        match self.login_request(slot, user, &pin) {
            Ok(Response::Session {
                grant,
                expires_unix_ms,
            }) => {
                // (The login the old grant named has ended or expired: nothing to end.)
                slot.replace_grant(epoch, grant, expires_unix_ms);
                Ok(())
            }
            Ok(_) => Err(unexpected("login")),
            Err(e) if e == Ckr::DEVICE_ERROR => Err(e),
            Err(e) => {
                tracing::warn!(slot = slot.id, error = %e, "re-login failed; logging out");
                let mut l = lock(&slot.login);
                if l.as_ref().is_some_and(|l| l.epoch == epoch) {
                    *l = None;
                    slot.epochs.fetch_add(1, Ordering::Relaxed);
                }
                Err(Ckr::USER_NOT_LOGGED_IN)
            }
        }
    }

    /// Sends a request as the slot's current login (or none), renewing an expired grant once.
    ///
    /// # Errors
    /// As [`Module::call`]; `CKR_USER_NOT_LOGGED_IN` when a renewal fails.
    pub(crate) fn call_as(
        &self,
        slot: &Slot,
        build: impl Fn(Auth) -> Request,
    ) -> Result<Response, Ckr> {
        let (auth, epoch) = self.auth(slot)?;
        let request = build(auth);
        let named = crate::objects::named_object(&request);
        let r = match self.call(request) {
            Err(e) if e == Ckr::USER_NOT_LOGGED_IN => {
                let Some(epoch) = epoch else { return Err(e) };
                self.relogin(slot, epoch)?;
                let (auth, _) = self.auth(slot)?;
                self.call(build(auth))
            }
            Err(e) if e == Ckr::TOKEN_NOT_PRESENT => {
                // The token may have been deleted and re-created: resolve the label again.
                *write(&slot.token) = None;
                Err(e)
            }
            r => r,
        };
        if let (Err(e), Some(id)) = (&r, named) {
            if crate::objects::is_gone(*e) {
                self.objects.forget_gone(id, slot.id);
            }
        }
        r
    }

    /// `C_Finalize`: close every session of every slot.
    fn close_all_everywhere(&self) {
        for slot in &self.slots {
            let _ = self.close_all_sessions(slot.id);
        }
    }

    /// The wire value of one attribute of an object, if the node gives it.
    ///
    /// # Errors
    /// As [`Module::call_as`].
    pub(crate) fn attributes(
        &self,
        slot: &Slot,
        object: ObjectId,
        types: Vec<u64>,
    ) -> Result<Vec<AttrValue>, Ckr> {
        match self.call_as(slot, |auth| Request::GetAttributes {
            auth,
            object,
            types: types.clone(),
        })? {
            Response::Attributes(v) if v.len() == types.len() => Ok(v),
            _ => Err(unexpected("get_attributes")),
        }
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A response of the wrong kind: a node of another version.
pub(crate) fn unexpected(what: &str) -> Ckr {
    tracing::warn!(request = what, "unexpected response from the cluster");
    Ckr::DEVICE_ERROR
}

/// The object id of a response.
///
/// # Errors
/// `CKR_DEVICE_ERROR` for another response.
pub(crate) fn object_of(r: Response) -> Result<ObjectId, Ckr> {
    match r {
        Response::Object(id) => Ok(id),
        _ => Err(unexpected("object")),
    }
}

/// The bytes of a response.
///
/// # Errors
/// `CKR_DEVICE_ERROR` for another response.
pub(crate) fn bytes_of(r: Response) -> Result<Zeroizing<Vec<u8>>, Ckr> {
    match r {
        Response::Bytes(b) => Ok(Zeroizing::new(b)),
        _ => Err(unexpected("bytes")),
    }
}

/// `Done`.
///
/// # Errors
/// `CKR_DEVICE_ERROR` for another response.
pub(crate) fn done(r: Response) -> Result<(), Ckr> {
    match r {
        Response::Done => Ok(()),
        _ => Err(unexpected("done")),
    }
}
