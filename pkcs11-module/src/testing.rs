//! Test support: a fake node (an in-memory [`Backend`]) and the lock that serialises tests
//! which use the process-wide module.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use cloudkey_protocol::msg::{
    AttrValue, Attribute, ObjectId, Request, Response, SessionGrant, SignInput, TokenId, TokenInfo,
    UserType,
};
use cloudkey_protocol::ErrorCode;
use cryptoki_sys as ck;

use crate::digest::Hasher;
use crate::error::Ckr;
use crate::mechanism::{Hash, Numbering};
use crate::module::Module;
use crate::runtime::Backend;

/// Serialises tests that install a module in the process-wide state.
pub(crate) static GLOBAL: Global = Global(Mutex::new(()));

/// See [`GLOBAL`].
pub(crate) struct Global(Mutex<()>);

impl Global {
    /// Takes the lock (a failed test does not poison the others).
    pub(crate) fn lock(&self) -> MutexGuard<'_, ()> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(crate) const USER_PIN: &[u8] = b"1234";
pub(crate) const SO_PIN: &[u8] = b"87654321";

#[derive(Default)]
pub(crate) struct FakeState {
    /// Every request's name, in order.
    pub(crate) log: Vec<&'static str>,
    /// The last sign/verify input.
    pub(crate) last_input: Option<SignInput>,
    /// The objects of the token.
    pub(crate) objects: BTreeMap<ObjectId, Vec<Attribute>>,
    next_object: u64,
    /// Grants issued before this generation are refused (as if expired).
    pub(crate) generation: u8,
    /// Every call fails with CKR_DEVICE_ERROR.
    pub(crate) down: bool,
    pub(crate) user_failures: u32,
    /// Logins fail as if the PIN had been changed elsewhere.
    pub(crate) pin_changed: bool,
    /// Grants expire this long after they are issued (never when `None`).
    pub(crate) grant_ttl_ms: Option<u64>,
}

/// An in-memory node with one token, "main" (id 1).
#[derive(Default)]
pub(crate) struct FakeNode {
    pub(crate) state: Mutex<FakeState>,
}

fn value(attrs: &[Attribute], ty: u64) -> Option<&[u8]> {
    attrs
        .iter()
        .find(|a| a.ty == ty)
        .map(|a| a.value.as_slice())
}

/// The fake signature of an input: deterministic, so verification can check it.
pub(crate) fn fake_signature(input: &SignInput, len: usize) -> Vec<u8> {
    let bytes = match input {
        SignInput::Data(d) | SignInput::Digest(d) => d,
    };
    Hasher::digest(Hash::Sha512, bytes)
        .into_iter()
        .cycle()
        .take(len)
        .collect()
}

impl FakeState {
    fn grant_ok(&self, grant: Option<&SessionGrant>) -> bool {
        grant.is_some_and(|g| g.0.get(1) == Some(&self.generation))
    }

    fn session(&self, user: UserType) -> Response {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Response::Session {
            grant: SessionGrant(vec![u8::from(user == UserType::So), self.generation]),
            expires_unix_ms: self
                .grant_ttl_ms
                .map_or(u64::MAX, |ttl| now.saturating_add(ttl)),
        }
    }

    fn new_object(&mut self, attrs: Vec<Attribute>) -> ObjectId {
        self.next_object += 1;
        let mut id = ObjectId([0; 16]);
        id.0[..8].copy_from_slice(&self.next_object.to_le_bytes());
        id.0[8..].copy_from_slice(&self.next_object.to_le_bytes());
        self.objects.insert(id, attrs);
        id
    }

    fn visible(&self, id: &ObjectId, logged_in: bool) -> Option<&Vec<Attribute>> {
        self.objects
            .get(id)
            .filter(|a| logged_in || value(a, ck::CKA_PRIVATE) != Some(&[1]))
    }

    fn handle(&mut self, req: Request) -> Result<Response, ErrorCode> {
        use ErrorCode as E;
        // Like the node: a grant that does not verify (expired) is refused outright.
        let grant = match &req {
            Request::CreateObject { auth, .. }
            | Request::GenerateKeyPair { auth, .. }
            | Request::FindObjects { auth, .. }
            | Request::GetAttributes { auth, .. }
            | Request::SetAttributes { auth, .. }
            | Request::DestroyObject { auth, .. }
            | Request::Sign { auth, .. }
            | Request::Verify { auth, .. }
            | Request::Encrypt { auth, .. }
            | Request::Decrypt { auth, .. }
            | Request::WrapKey { auth, .. } => auth.grant.as_ref(),
            _ => None,
        };
        if grant.is_some() && !self.grant_ok(grant) {
            return Err(E::UserNotLoggedIn);
        }
        Ok(match req {
            Request::ListTokens => Response::Tokens(vec![TokenInfo {
                id: TokenId(1),
                label: "main".into(),
                user_pin_initialized: true,
                user_failures: self.user_failures,
                user_locked: false,
                so_failures: 0,
                so_locked: false,
                max_failures: 5,
                objects: self.objects.len() as u64,
            }]),
            Request::Login { token, user, pin } => {
                if token != TokenId(1) {
                    return Err(E::TokenNotPresent);
                }
                let want = if user == UserType::User {
                    USER_PIN
                } else {
                    SO_PIN
                };
                if pin.expose() != want || self.pin_changed {
                    self.user_failures += 1;
                    return Err(E::PinIncorrect);
                }
                self.session(user)
            }
            Request::RenewSession { auth } => {
                if !self.grant_ok(auth.grant.as_ref()) {
                    return Err(E::UserNotLoggedIn);
                }
                let so = auth.grant.as_ref().and_then(|g| g.0.first()) == Some(&1);
                self.session(if so { UserType::So } else { UserType::User })
            }
            Request::Logout { auth } => {
                if !self.grant_ok(auth.grant.as_ref()) {
                    return Err(E::UserNotLoggedIn);
                }
                Response::Done
            }
            Request::CreateObject { auth, template } => {
                if !self.grant_ok(auth.grant.as_ref())
                    && value(&template, ck::CKA_TOKEN) == Some(&[1])
                {
                    return Err(E::UserNotLoggedIn);
                }
                Response::Object(self.new_object(template))
            }
            Request::GenerateKeyPair {
                auth,
                mechanism,
                mut public_template,
                mut private_template,
            } => {
                if !self.grant_ok(auth.grant.as_ref()) {
                    return Err(E::UserNotLoggedIn);
                }
                let (ckk, extra) = if mechanism.ckm == ck::CKM_RSA_PKCS_KEY_PAIR_GEN {
                    (
                        ck::CKK_RSA,
                        Some(Attribute::bytes(ck::CKA_MODULUS, vec![0xC1; 256])),
                    )
                } else {
                    (ck::CKK_EC, None)
                };
                for (t, class) in [
                    (&mut public_template, ck::CKO_PUBLIC_KEY),
                    (&mut private_template, ck::CKO_PRIVATE_KEY),
                ] {
                    t.push(Attribute::ulong(ck::CKA_CLASS, class));
                    t.push(Attribute::ulong(ck::CKA_KEY_TYPE, ckk));
                    t.extend(extra.clone());
                }
                private_template.push(Attribute::bool(ck::CKA_PRIVATE, true));
                private_template.push(Attribute::bytes(ck::CKA_VALUE, vec![9; 32]));
                private_template.push(Attribute::bool(ck::CKA_SENSITIVE, true));
                Response::KeyPair {
                    public: self.new_object(public_template),
                    private: self.new_object(private_template),
                }
            }
            Request::FindObjects { auth, template } => {
                let logged_in = self.grant_ok(auth.grant.as_ref());
                let ids = self
                    .objects
                    .keys()
                    .filter(|id| {
                        self.visible(id, logged_in).is_some_and(|attrs| {
                            template
                                .iter()
                                .all(|t| value(attrs, t.ty) == Some(t.value.as_slice()))
                        })
                    })
                    .copied()
                    .collect();
                Response::Found(ids)
            }
            Request::GetAttributes {
                auth,
                object,
                types,
            } => {
                // Like the node: a missing object is an invalid handle, a private one
                // without a user login is refused as such.
                self.objects.get(&object).ok_or(E::ObjectHandleInvalid)?;
                let attrs = self
                    .visible(&object, self.grant_ok(auth.grant.as_ref()))
                    .ok_or(E::UserNotLoggedIn)?;
                let sensitive = value(attrs, ck::CKA_SENSITIVE) == Some(&[1]);
                Response::Attributes(
                    types
                        .iter()
                        .map(|t| match value(attrs, *t) {
                            Some(_) if *t == ck::CKA_VALUE && sensitive => AttrValue::Sensitive,
                            Some(v) => AttrValue::Value(v.to_vec()),
                            None => AttrValue::Invalid,
                        })
                        .collect(),
                )
            }
            Request::SetAttributes {
                object, template, ..
            } => {
                let attrs = self
                    .objects
                    .get_mut(&object)
                    .ok_or(E::ObjectHandleInvalid)?;
                for t in template {
                    attrs.retain(|a| a.ty != t.ty);
                    attrs.push(t);
                }
                Response::Done
            }
            Request::DestroyObject { object, .. } => {
                self.objects.remove(&object).ok_or(E::ObjectHandleInvalid)?;
                Response::Done
            }
            Request::Sign {
                auth, key, input, ..
            } => {
                if !self.grant_ok(auth.grant.as_ref()) {
                    return Err(E::UserNotLoggedIn);
                }
                let attrs = self.objects.get(&key).ok_or(E::KeyHandleInvalid)?;
                let len = value(attrs, ck::CKA_MODULUS).map_or(64, <[u8]>::len);
                self.last_input = Some(input.clone());
                Response::Bytes(fake_signature(&input, len))
            }
            Request::Verify {
                key,
                input,
                signature,
                ..
            } => {
                let attrs = self.objects.get(&key).ok_or(E::KeyHandleInvalid)?;
                let len = value(attrs, ck::CKA_MODULUS).map_or(64, <[u8]>::len);
                self.last_input = Some(input.clone());
                if signature != fake_signature(&input, len) {
                    return Err(E::SignatureInvalid);
                }
                Response::Done
            }
            Request::Encrypt { data, .. } => {
                let mut c: Vec<u8> = data.iter().rev().copied().collect();
                c.extend_from_slice(&[0xEE; 16]);
                Response::Bytes(c)
            }
            Request::Decrypt { data, .. } => {
                let n = data.len().checked_sub(16).ok_or(E::EncryptedDataLenRange)?;
                Response::Bytes(data[..n].iter().rev().copied().collect())
            }
            Request::WrapKey { .. } => Response::Bytes(vec![0x77; 40]),
            Request::GenerateRandom { len } => Response::Bytes(vec![0x42; len as usize]),
            _ => return Err(E::FunctionNotSupported),
        })
    }
}

impl Backend for FakeNode {
    fn call(&self, request: Request) -> Result<Response, Ckr> {
        let mut st = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        st.log.push(request.name());
        if st.down {
            return Err(Ckr::DEVICE_ERROR);
        }
        st.handle(request).map_err(Ckr::from)
    }
}

/// A module over a fake node; the node is shared so tests can look at and change it.
pub(crate) fn module(node: std::sync::Arc<FakeNode>) -> Module {
    struct Shared(std::sync::Arc<FakeNode>);
    impl Backend for Shared {
        fn call(&self, request: Request) -> Result<Response, Ckr> {
            self.0.call(request)
        }
    }
    Module::new(
        std::process::id(),
        vec!["main".into(), "absent".into()],
        Numbering::default(),
        Box::new(Shared(node)),
    )
}

impl FakeNode {
    /// The node's state, locked.
    pub(crate) fn st(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
