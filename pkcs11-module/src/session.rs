//! Sessions (PKCS#11 3.0 §5.6) and the functions that change a slot's login or PINs (§5.5,
//! §5.6): open and close, session info, `C_Login`/`C_Logout`, `C_InitToken`, `C_InitPIN`,
//! `C_SetPIN`.
//!
//! Session handles are monotonic and never reused. Each session has its own mutex, held only
//! to read or change its state, never across a call to the cluster: a function copies what it
//! needs out, calls, then locks again and checks that the operation it worked for is still the
//! active one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use cloudkey_protocol::msg::{Request, Response, Secret, UserType};
use cryptoki_sys as ck;
use cryptoki_sys::{CK_FLAGS, CK_SESSION_HANDLE, CK_SLOT_ID, CK_STATE, CK_USER_TYPE};
use zeroize::Zeroizing;

use crate::error::Ckr;
use crate::module::{done, lock, Module, Slot};
use crate::objects::FindCursor;
use crate::ops::{DigestOp, KeyOp, WrapCache};

/// PINs the tokens accept (`CK_TOKEN_INFO.ulMinPinLen`/`ulMaxPinLen`).
pub(crate) const MIN_PIN: usize = 4;
/// See [`MIN_PIN`].
pub(crate) const MAX_PIN: usize = 255;

/// What a session is doing.
#[derive(Debug, Default)]
pub(crate) struct SessionState {
    /// `C_FindObjects*`.
    pub(crate) find: Option<FindCursor>,
    /// `C_Digest*`.
    pub(crate) digest: Option<DigestOp>,
    /// `C_Sign*`.
    pub(crate) sign: Option<KeyOp>,
    /// `C_Verify*`.
    pub(crate) verify: Option<KeyOp>,
    /// `C_Encrypt*`.
    pub(crate) encrypt: Option<KeyOp>,
    /// `C_Decrypt*`.
    pub(crate) decrypt: Option<KeyOp>,
    /// The last `C_WrapKey` answered with a length only.
    pub(crate) wrap: Option<WrapCache>,
}

/// An open session.
#[derive(Debug)]
pub(crate) struct Session {
    /// Its handle.
    pub(crate) handle: CK_SESSION_HANDLE,
    /// Index of its slot.
    pub(crate) slot: usize,
    /// `CKF_RW_SESSION`.
    pub(crate) rw: bool,
    state: Mutex<SessionState>,
}

impl Session {
    /// The session's state, locked.
    pub(crate) fn lock(&self) -> MutexGuard<'_, SessionState> {
        lock(&self.state)
    }

    /// Refuses writing a token object in a read-only session.
    ///
    /// # Errors
    /// `CKR_SESSION_READ_ONLY`.
    pub(crate) fn check_write(&self, token_object: bool) -> Result<(), Ckr> {
        if token_object && !self.rw {
            Err(Ckr::SESSION_READ_ONLY)
        } else {
            Ok(())
        }
    }
}

/// The open sessions.
#[derive(Debug)]
pub(crate) struct Sessions {
    map: RwLock<HashMap<CK_SESSION_HANDLE, Arc<Session>>>,
    next: AtomicU64,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            map: RwLock::new(HashMap::new()),
            // 0 is CK_INVALID_HANDLE.
            next: AtomicU64::new(1),
        }
    }
}

impl Sessions {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<CK_SESSION_HANDLE, Arc<Session>>> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<CK_SESSION_HANDLE, Arc<Session>>> {
        self.map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A session by handle.
    ///
    /// # Errors
    /// `CKR_SESSION_HANDLE_INVALID`.
    pub(crate) fn get(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Session>, Ckr> {
        self.read()
            .get(&h)
            .cloned()
            .ok_or(Ckr::SESSION_HANDLE_INVALID)
    }

    /// The sessions of a slot.
    pub(crate) fn of_slot(&self, slot: usize) -> Vec<Arc<Session>> {
        self.read()
            .values()
            .filter(|s| s.slot == slot)
            .cloned()
            .collect()
    }

    /// (all, read-write) session counts of a slot.
    pub(crate) fn counts(&self, slot: usize) -> (usize, usize) {
        let m = self.read();
        let all = m.values().filter(|s| s.slot == slot);
        let rw = all.clone().filter(|s| s.rw).count();
        (all.count(), rw)
    }
}

/// The user type of `C_Login`.
fn user_of(t: CK_USER_TYPE) -> Result<Option<UserType>, Ckr> {
    match t {
        ck::CKU_USER => Ok(Some(UserType::User)),
        ck::CKU_SO => Ok(Some(UserType::So)),
        // Context-specific login: re-authentication of the user (CKA_ALWAYS_AUTHENTICATE).
        ck::CKU_CONTEXT_SPECIFIC => Ok(None),
        _ => Err(Ckr::USER_TYPE_INVALID),
    }
}

fn check_pin_len(pin: &[u8]) -> Result<(), Ckr> {
    if (MIN_PIN..=MAX_PIN).contains(&pin.len()) {
        Ok(())
    } else {
        Err(Ckr::PIN_LEN_RANGE)
    }
}

/// The session states of §5.6 for a login and a session kind.
pub(crate) fn state_of(user: Option<UserType>, rw: bool) -> CK_STATE {
    match (user, rw) {
        (None, false) => ck::CKS_RO_PUBLIC_SESSION,
        (None, true) => ck::CKS_RW_PUBLIC_SESSION,
        (Some(UserType::User), false) => ck::CKS_RO_USER_FUNCTIONS,
        (Some(UserType::User), true) => ck::CKS_RW_USER_FUNCTIONS,
        // An SO is never logged in with read-only sessions open.
        (Some(UserType::So), _) => ck::CKS_RW_SO_FUNCTIONS,
    }
}

impl Module {
    /// A session by handle.
    ///
    /// # Errors
    /// `CKR_SESSION_HANDLE_INVALID`.
    pub(crate) fn session(&self, h: CK_SESSION_HANDLE) -> Result<Arc<Session>, Ckr> {
        self.sessions.get(h)
    }

    /// A session and its slot.
    ///
    /// # Errors
    /// `CKR_SESSION_HANDLE_INVALID`.
    pub(crate) fn session_slot(&self, h: CK_SESSION_HANDLE) -> Result<(Arc<Session>, &Slot), Ckr> {
        let s = self.session(h)?;
        let slot = self.slots.get(s.slot).ok_or(Ckr::SESSION_HANDLE_INVALID)?;
        Ok((s, slot))
    }

    /// `C_OpenSession`.
    ///
    /// # Errors
    /// `CKR_SLOT_ID_INVALID`, `CKR_SESSION_PARALLEL_NOT_SUPPORTED`, `CKR_TOKEN_NOT_PRESENT`,
    /// `CKR_SESSION_READ_WRITE_SO_EXISTS`, `CKR_DEVICE_ERROR` (the token is looked up once).
    pub(crate) fn open_session(
        &self,
        slot_id: CK_SLOT_ID,
        flags: CK_FLAGS,
    ) -> Result<CK_SESSION_HANDLE, Ckr> {
        let slot = self.slot(slot_id)?;
        if flags & ck::CKF_SERIAL_SESSION == 0 {
            return Err(Ckr::SESSION_PARALLEL_NOT_SUPPORTED);
        }
        let rw = flags & ck::CKF_RW_SESSION != 0;
        self.token_id(slot)?;
        if !rw && slot.user() == Some(UserType::So) {
            return Err(Ckr::SESSION_READ_WRITE_SO_EXISTS);
        }
        let handle = self.sessions.next.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(Session {
            handle,
            slot: usize::try_from(slot.id).unwrap_or(usize::MAX),
            rw,
            state: Mutex::new(SessionState::default()),
        });
        self.sessions.write().insert(handle, s);
        tracing::debug!(slot = slot_id, session = handle, rw, "session opened");
        Ok(handle)
    }

    /// `C_CloseSession`: destroys the session's session objects; closing the last session of
    /// a slot logs the application out of it (§5.6).
    ///
    /// # Errors
    /// `CKR_SESSION_HANDLE_INVALID`.
    pub(crate) fn close_session(&self, h: CK_SESSION_HANDLE) -> Result<(), Ckr> {
        let (s, ended) = {
            let mut m = self.sessions.write();
            let s = m.remove(&h).ok_or(Ckr::SESSION_HANDLE_INVALID)?;
            let slot = self.slots.get(s.slot);
            let ended = slot
                .filter(|_| !m.values().any(|o| o.slot == s.slot))
                .and_then(|slot| slot.logout().map(|l| (slot, l)));
            (s, ended)
        };
        if let Some((slot, login)) = ended {
            self.end_login(slot, Some(login));
        }
        self.destroy_session_objects(&s);
        tracing::debug!(session = h, "session closed");
        Ok(())
    }

    /// `C_CloseAllSessions`.
    ///
    /// # Errors
    /// `CKR_SLOT_ID_INVALID`.
    pub(crate) fn close_all_sessions(&self, slot_id: CK_SLOT_ID) -> Result<(), Ckr> {
        let slot = self.slot(slot_id)?;
        let index = usize::try_from(slot.id).unwrap_or(usize::MAX);
        let closed: Vec<Arc<Session>> = {
            let mut m = self.sessions.write();
            let hs: Vec<_> = m
                .values()
                .filter(|s| s.slot == index)
                .map(|s| s.handle)
                .collect();
            hs.iter().filter_map(|h| m.remove(h)).collect()
        };
        self.end_login(slot, slot.logout());
        for s in closed {
            self.destroy_session_objects(&s);
        }
        Ok(())
    }

    /// Best effort: the cluster may be unreachable; the objects are then left behind.
    fn destroy_session_objects(&self, s: &Session) {
        let owned = self.objects.owned_by(s.handle);
        let Some(slot) = self.slots.get(s.slot) else {
            return;
        };
        for (handle, object) in owned {
            self.objects.forget(handle);
            let r = self.call_as(slot, |auth| Request::DestroyObject { auth, object });
            if r == Err(Ckr::DEVICE_ERROR) {
                tracing::warn!("cluster unreachable: session objects not destroyed");
                break;
            }
        }
    }

    /// `C_GetSessionInfo`: (slot, state, flags).
    ///
    /// # Errors
    /// `CKR_SESSION_HANDLE_INVALID`.
    pub(crate) fn session_info(
        &self,
        h: CK_SESSION_HANDLE,
    ) -> Result<(CK_SLOT_ID, CK_STATE, CK_FLAGS), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let flags = ck::CKF_SERIAL_SESSION | if s.rw { ck::CKF_RW_SESSION } else { 0 };
        Ok((slot.id, state_of(slot.user(), s.rw), flags))
    }

    /// `C_Login`.
    ///
    /// # Errors
    /// `CKR_USER_TYPE_INVALID`, `CKR_USER_ALREADY_LOGGED_IN`,
    /// `CKR_USER_ANOTHER_ALREADY_LOGGED_IN`, `CKR_SESSION_READ_ONLY_EXISTS`,
    /// `CKR_USER_NOT_LOGGED_IN` (context-specific without a user login), the node's
    /// `CKR_PIN_INCORRECT`/`CKR_PIN_LOCKED`/`CKR_USER_PIN_NOT_INITIALIZED`.
    pub(crate) fn login(
        &self,
        h: CK_SESSION_HANDLE,
        user_type: CK_USER_TYPE,
        pin: Zeroizing<Vec<u8>>,
    ) -> Result<(), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let Some(user) = user_of(user_type)? else {
            // Context-specific: check the user's PIN again and renew the grant.
            if slot.user() != Some(UserType::User) {
                return Err(Ckr::USER_NOT_LOGGED_IN);
            }
            let r = self.login_request(slot, UserType::User, &pin)?;
            let old = slot.set_login(UserType::User, r, pin)?;
            self.end_login(slot, old);
            return Ok(());
        };
        match slot.user() {
            Some(u) if u == user => return Err(Ckr::USER_ALREADY_LOGGED_IN),
            Some(_) => return Err(Ckr::USER_ANOTHER_ALREADY_LOGGED_IN),
            None => {}
        }
        if user == UserType::So && self.sessions.of_slot(s.slot).iter().any(|o| !o.rw) {
            return Err(Ckr::SESSION_READ_ONLY_EXISTS);
        }
        let r = self.login_request(slot, user, &pin)?;
        // Another thread may have logged in meanwhile.
        match slot.user() {
            Some(u) if u == user => return Err(Ckr::USER_ALREADY_LOGGED_IN),
            Some(_) => return Err(Ckr::USER_ANOTHER_ALREADY_LOGGED_IN),
            None => {}
        }
        let old = slot.set_login(user, r, pin)?;
        self.end_login(slot, old);
        tracing::debug!(slot = slot.id, ?user, "logged in");
        Ok(())
    }

    /// `C_Logout`.
    ///
    /// # Errors
    /// `CKR_USER_NOT_LOGGED_IN`.
    pub(crate) fn logout(&self, h: CK_SESSION_HANDLE) -> Result<(), Ckr> {
        let (_, slot) = self.session_slot(h)?;
        match slot.logout() {
            Some(login) => {
                self.end_login(slot, Some(login));
                Ok(())
            }
            None => Err(Ckr::USER_NOT_LOGGED_IN),
        }
    }

    /// `C_InitToken`: with the SO PIN, wipes the token and relabels it; a slot whose token does
    /// not exist yet gets a new token (if this client's certificate may create tokens).
    ///
    /// # Errors
    /// `CKR_SESSION_EXISTS` while the application has sessions on the slot; the node's
    /// `CKR_PIN_INCORRECT`, `CKR_FUNCTION_REJECTED`, ...
    pub(crate) fn init_token(
        &self,
        slot_id: CK_SLOT_ID,
        so_pin: Zeroizing<Vec<u8>>,
        label: String,
    ) -> Result<(), Ckr> {
        let slot = self.slot(slot_id)?;
        let index = usize::try_from(slot.id).unwrap_or(usize::MAX);
        if !self.sessions.of_slot(index).is_empty() {
            return Err(Ckr::SESSION_EXISTS);
        }
        let token = match self.token_info(slot, true) {
            Ok(t) => Some(t.id),
            Err(e) if e == Ckr::TOKEN_NOT_PRESENT => None,
            Err(e) => return Err(e),
        };
        let so_pin = Secret(so_pin.to_vec());
        let new_id = match token {
            Some(token) => {
                done(self.call(Request::InitToken {
                    token,
                    so_pin,
                    label: label.clone(),
                })?)?;
                Some(token)
            }
            None => match self.call(Request::CreateToken {
                label: label.clone(),
                so_pin,
                user_pin: None,
            })? {
                Response::Token(t) => Some(t.id),
                _ => None,
            },
        };
        // The cluster ended every login of the token with it.
        drop(slot.logout());
        slot.rebind(label, new_id);
        self.objects.forget_slot(slot.id);
        self.forget_tokens();
        Ok(())
    }

    /// `C_InitPIN`: the SO sets the user's PIN.
    ///
    /// # Errors
    /// `CKR_USER_NOT_LOGGED_IN` unless the SO is logged in; `CKR_SESSION_READ_ONLY`;
    /// `CKR_PIN_LEN_RANGE`.
    pub(crate) fn init_pin(
        &self,
        h: CK_SESSION_HANDLE,
        pin: Zeroizing<Vec<u8>>,
    ) -> Result<(), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        if slot.user() != Some(UserType::So) {
            return Err(Ckr::USER_NOT_LOGGED_IN);
        }
        s.check_write(true)?;
        check_pin_len(&pin)?;
        let r = self.call_as(slot, |auth| Request::InitPin {
            auth,
            pin: Secret(pin.to_vec()),
        });
        self.forget_tokens();
        done(r?)
    }

    /// `C_SetPIN`: changes the PIN of the logged-in user (or SO), or, in a public session, the
    /// user's PIN with the old one.
    ///
    /// # Errors
    /// `CKR_SESSION_READ_ONLY`, `CKR_PIN_LEN_RANGE`, the node's `CKR_PIN_INCORRECT`.
    pub(crate) fn set_pin(
        &self,
        h: CK_SESSION_HANDLE,
        old: Zeroizing<Vec<u8>>,
        new: Zeroizing<Vec<u8>>,
    ) -> Result<(), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        s.check_write(true)?;
        check_pin_len(&new)?;
        let build = |auth| Request::SetPin {
            auth,
            old_pin: Secret(old.to_vec()),
            new_pin: Secret(new.to_vec()),
        };
        let r = match slot.user() {
            Some(user) => {
                let r = self.call_as(slot, build);
                if r.is_ok() {
                    slot.update_pin(user, &new);
                }
                r
            }
            None => {
                // Not logged in: log the user in just for this request.
                let Response::Session { grant, .. } =
                    self.login_request(slot, UserType::User, &old)?
                else {
                    return Err(crate::module::unexpected("login"));
                };
                let token = self.token_id(slot)?;
                self.call(build(cloudkey_protocol::msg::Auth {
                    token,
                    grant: Some(grant),
                }))
            }
        };
        self.forget_tokens();
        done(r?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_states_follow_the_login() {
        assert_eq!(state_of(None, false), ck::CKS_RO_PUBLIC_SESSION);
        assert_eq!(state_of(None, true), ck::CKS_RW_PUBLIC_SESSION);
        assert_eq!(
            state_of(Some(UserType::User), false),
            ck::CKS_RO_USER_FUNCTIONS
        );
        assert_eq!(
            state_of(Some(UserType::User), true),
            ck::CKS_RW_USER_FUNCTIONS
        );
        assert_eq!(state_of(Some(UserType::So), true), ck::CKS_RW_SO_FUNCTIONS);
        assert_eq!(user_of(7), Err(Ckr::USER_TYPE_INVALID));
        assert_eq!(check_pin_len(b"123"), Err(Ckr::PIN_LEN_RANGE));
        assert!(check_pin_len(b"1234").is_ok());
    }
}
