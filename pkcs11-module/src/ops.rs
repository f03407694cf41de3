//! Cryptographic operations (PKCS#11 3.0 §5.8-§5.14 and §5.18-§5.19): encryption,
//! decryption, digests, signatures and verification, key generation, wrapping, unwrapping,
//! derivation and random numbers.
//!
//! * Digests are local ([`crate::digest`]).
//! * Hash-and-sign mechanisms hash locally, in one part or many, and send only the digest
//!   (`SignInput::Digest`). HMAC and SM3-with-SM2 need the message on the node: their
//!   multi-part input is buffered, as is multi-part encryption and decryption, up to
//!   [`MAX_DATA`] (`CKR_DATA_LEN_RANGE` / `CKR_ENCRYPTED_DATA_LEN_RANGE` beyond), and sent at
//!   `*Final`; `*Update` then returns no output. Raw mechanisms (`CKM_ECDSA`, `CKM_RSA_PKCS`,
//!   `CKM_RSA_PKCS_PSS`, `CKM_SM2`) are single-part only (`CKR_FUNCTION_NOT_SUPPORTED` for
//!   `*Update`/`*Final`), as the mechanism tables of the specification say.
//! * Output buffers follow the two-call protocol. When the length is known beforehand
//!   (signatures: 64 bytes for EC and SM2, the modulus length for RSA, the hash length for
//!   HMAC) a size query answers without contacting the cluster. Otherwise (ciphertexts,
//!   plaintexts, wrapped keys) the module performs the operation, keeps the result, and hands
//!   it out on the next call for the same input, so a size query costs no second round trip.
//!   A too-small buffer never ends an operation; any other error does.

use std::sync::atomic::{AtomicU64, Ordering};

use cloudkey_protocol::msg::{Mechanism, ObjectId, Request, Response, SignInput};
use cryptoki_sys as ck;
use cryptoki_sys::{CK_FLAGS, CK_OBJECT_HANDLE, CK_SESSION_HANDLE};
use zeroize::Zeroizing;

use crate::attrs;
use crate::digest::Hasher;
use crate::error::Ckr;
use crate::ffi::ptr::{MechPtr, Output, RawAttr};
use crate::mechanism::{self, Hash, SignKind, Spec, MAX_DATA};
use crate::module::{bytes_of, done, object_of, unexpected, Module};
use crate::session::{Session, SessionState};

/// Bytes one `GenerateRandom` request may ask for.
const RANDOM_CHUNK: usize = 4096;

static OP_IDS: AtomicU64 = AtomicU64::new(1);

/// The four key operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `C_Sign*`.
    Sign,
    /// `C_Verify*`.
    Verify,
    /// `C_Encrypt*`.
    Encrypt,
    /// `C_Decrypt*`.
    Decrypt,
}

impl Kind {
    fn flag(self) -> CK_FLAGS {
        match self {
            Self::Sign => ck::CKF_SIGN,
            Self::Verify => ck::CKF_VERIFY,
            Self::Encrypt => ck::CKF_ENCRYPT,
            Self::Decrypt => ck::CKF_DECRYPT,
        }
    }

    fn slot(self, st: &mut SessionState) -> &mut Option<KeyOp> {
        match self {
            Self::Sign => &mut st.sign,
            Self::Verify => &mut st.verify,
            Self::Encrypt => &mut st.encrypt,
            Self::Decrypt => &mut st.decrypt,
        }
    }

    /// The error for too much data.
    fn too_long(self) -> Ckr {
        match self {
            Self::Decrypt => Ckr::ENCRYPTED_DATA_LEN_RANGE,
            _ => Ckr::DATA_LEN_RANGE,
        }
    }
}

/// The input of a finishing call, from which its [`CacheKey`] is made only when needed: a
/// result is kept, or compared with a kept one, only when the output length is not known
/// beforehand or the caller's buffer was too small, so the common call hashes nothing.
#[derive(Clone, Copy)]
enum Input<'a> {
    /// The data of a single-part call.
    Single(&'a [u8]),
    /// The final call of a multi-part operation.
    Final,
}

impl Input<'_> {
    fn key(self) -> CacheKey {
        match self {
            Self::Single(data) => single_key(data),
            Self::Final => CacheKey::Final,
        }
    }
}

/// Which input a kept result belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CacheKey {
    /// A single-part call, by the SHA-256 of its input.
    Single(Vec<u8>),
    /// The final call of a multi-part operation.
    Final,
}

/// An active sign, verify, encrypt or decrypt operation.
#[derive(Debug)]
pub(crate) struct KeyOp {
    id: u64,
    key: ObjectId,
    mech: Mechanism,
    spec: &'static Spec,
    /// The output length when known beforehand.
    out_len: Option<usize>,
    hasher: Option<Hasher>,
    buf: Zeroizing<Vec<u8>>,
    multipart: bool,
    cached: Option<(CacheKey, Zeroizing<Vec<u8>>)>,
}

/// An active digest.
#[derive(Debug)]
pub(crate) struct DigestOp {
    hasher: Hasher,
    hash: Hash,
    multipart: bool,
}

/// A `C_WrapKey` result kept after a size query.
#[derive(Debug)]
pub(crate) struct WrapCache {
    wrapping: CK_OBJECT_HANDLE,
    key: CK_OBJECT_HANDLE,
    mech: Mechanism,
    wrapped: Zeroizing<Vec<u8>>,
}

/// What a finishing call sends.
enum Payload {
    Sign(SignInput),
    Data(Vec<u8>),
}

fn single_key(data: &[u8]) -> CacheKey {
    #[cfg(test)]
    KEYS_HASHED.with(|n| n.set(n.get() + 1));
    CacheKey::Single(Hasher::digest(Hash::Sha256, data))
}

#[cfg(test)]
thread_local! {
    /// How many cache keys this thread has hashed (tests of the hot path's cost).
    pub(crate) static KEYS_HASHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn fits(cap: Option<usize>, n: usize) -> bool {
    cap.is_some_and(|c| c >= n)
}

/// The single-part payload of a sign or verify operation.
fn sign_input(op: &KeyOp, data: &[u8]) -> Result<SignInput, Ckr> {
    if op.multipart {
        return Err(Ckr::OPERATION_ACTIVE);
    }
    match op.spec.sign {
        Some(SignKind::Hashed(h)) => Ok(SignInput::Digest(Hasher::digest(h, data))),
        _ if data.len() > MAX_DATA => Err(Ckr::DATA_LEN_RANGE),
        _ => Ok(SignInput::Data(data.to_vec())),
    }
}

/// The payload of a multi-part sign or verify operation at its end.
fn final_input(op: &mut KeyOp) -> Result<SignInput, Ckr> {
    match op.spec.sign {
        Some(SignKind::Hashed(h)) => Ok(SignInput::Digest(
            op.hasher.take().unwrap_or_else(|| Hasher::new(h)).finish(),
        )),
        Some(SignKind::Buffered) => Ok(SignInput::Data(std::mem::take(&mut *op.buf))),
        _ => Err(Ckr::FUNCTION_NOT_SUPPORTED),
    }
}

/// Adds a part to a multi-part operation.
fn update(op: &mut KeyOp, kind: Kind, part: &[u8]) -> Result<(), Ckr> {
    op.multipart = true;
    match (kind, op.spec.sign) {
        (Kind::Sign | Kind::Verify, Some(SignKind::Hashed(_))) => {
            if let Some(h) = op.hasher.as_mut() {
                h.update(part);
            }
            Ok(())
        }
        (Kind::Sign | Kind::Verify, Some(SignKind::Raw) | None) => Err(Ckr::FUNCTION_NOT_SUPPORTED),
        _ => {
            if op.buf.len().saturating_add(part.len()) > MAX_DATA {
                return Err(kind.too_long());
            }
            op.buf.extend_from_slice(part);
            Ok(())
        }
    }
}

impl Module {
    /// `C_SignInit`, `C_VerifyInit`, `C_EncryptInit`, `C_DecryptInit`. A NULL mechanism ends
    /// the active operation (PKCS#11 3.0).
    ///
    /// # Errors
    /// `CKR_OPERATION_ACTIVE`, `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`,
    /// `CKR_KEY_HANDLE_INVALID`, `CKR_KEY_TYPE_INCONSISTENT`.
    pub(crate) fn op_init(
        &self,
        h: CK_SESSION_HANDLE,
        kind: Kind,
        mech: Option<MechPtr>,
        key: CK_OBJECT_HANDLE,
    ) -> Result<(), Ckr> {
        let s = self.session(h)?;
        let Some(mech) = mech else {
            *kind.slot(&mut s.lock()) = None;
            return Ok(());
        };
        if kind.slot(&mut s.lock()).is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let r = mechanism::resolve(&mech, &self.numbering, kind.flag())?;
        let (id, meta) = self.key_meta(&s, key, Ckr::KEY_HANDLE_INVALID)?;
        if meta.key_type.is_some_and(|t| !r.spec.family.accepts(t)) {
            return Err(Ckr::KEY_TYPE_INCONSISTENT);
        }
        let out_len = match kind {
            Kind::Sign | Kind::Verify => r.spec.signature_len(meta.modulus_len),
            Kind::Encrypt | Kind::Decrypt => None,
        };
        let hasher = match r.spec.sign {
            Some(SignKind::Hashed(h)) if matches!(kind, Kind::Sign | Kind::Verify) => {
                Some(Hasher::new(h))
            }
            _ => None,
        };
        let op = KeyOp {
            id: OP_IDS.fetch_add(1, Ordering::Relaxed),
            key: id,
            mech: r.mech,
            spec: r.spec,
            out_len,
            hasher,
            buf: Zeroizing::new(Vec::new()),
            multipart: false,
            cached: None,
        };
        let mut st = s.lock();
        let slot = kind.slot(&mut st);
        if slot.is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        *slot = Some(op);
        Ok(())
    }

    /// `C_SignUpdate`, `C_VerifyUpdate`, `C_EncryptUpdate`, `C_DecryptUpdate` (the latter two
    /// produce no output: see the module docs).
    ///
    /// # Errors
    /// `CKR_OPERATION_NOT_INITIALIZED`, `CKR_FUNCTION_NOT_SUPPORTED` (single-part mechanisms),
    /// `CKR_DATA_LEN_RANGE`; errors end the operation.
    pub(crate) fn op_update(
        &self,
        h: CK_SESSION_HANDLE,
        kind: Kind,
        part: &[u8],
    ) -> Result<(), Ckr> {
        let s = self.session(h)?;
        let mut st = s.lock();
        let slot = kind.slot(&mut st);
        let op = slot.as_mut().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        let r = update(op, kind, part);
        if r.is_err() {
            *slot = None;
        }
        r
    }

    /// Checks that an operation of `kind` is active: the size query of `C_EncryptUpdate` and
    /// `C_DecryptUpdate` (NULL output), which takes no part.
    ///
    /// # Errors
    /// `CKR_SESSION_HANDLE_INVALID`, `CKR_OPERATION_NOT_INITIALIZED`.
    pub(crate) fn op_active(&self, h: CK_SESSION_HANDLE, kind: Kind) -> Result<(), Ckr> {
        let s = self.session(h)?;
        let mut st = s.lock();
        match kind.slot(&mut st) {
            Some(_) => Ok(()),
            None => Err(Ckr::OPERATION_NOT_INITIALIZED),
        }
    }

    /// The end of an operation that produces output (`C_Sign`, `C_SignFinal`, `C_Encrypt`,
    /// `C_EncryptFinal`, `C_Decrypt`, `C_DecryptFinal`).
    fn produce(
        &self,
        s: &Session,
        kind: Kind,
        input: Input<'_>,
        cap: Option<usize>,
        payload: impl FnOnce(&mut KeyOp) -> Result<Payload, Ckr>,
    ) -> Result<Output, Ckr> {
        let (op_id, object, mech, payload) = {
            let mut st = s.lock();
            let slot = kind.slot(&mut st);
            let op = slot.as_mut().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
            if let Some((k, v)) = &op.cached {
                if *k == input.key() {
                    if !fits(cap, v.len()) {
                        return Ok(Output::Len(v.len()));
                    }
                    let v = op.cached.take().map(|(_, v)| v).unwrap_or_default();
                    *slot = None;
                    return Ok(Output::Data(v));
                }
            }
            if let Some(n) = op.out_len {
                if !fits(cap, n) {
                    return Ok(Output::Len(n));
                }
            }
            match payload(op) {
                Ok(p) => (op.id, op.key, op.mech.clone(), p),
                Err(e) => {
                    *slot = None;
                    return Err(e);
                }
            }
        };
        let slot = &self.slots[s.slot];
        let result = self
            .call_as(slot, |auth| match (&payload, kind) {
                (Payload::Sign(input), _) => Request::Sign {
                    auth,
                    key: object,
                    mechanism: mech.clone(),
                    input: input.clone(),
                },
                (Payload::Data(data), Kind::Decrypt) => Request::Decrypt {
                    auth,
                    key: object,
                    mechanism: mech.clone(),
                    data: data.clone(),
                },
                (Payload::Data(data), _) => Request::Encrypt {
                    auth,
                    key: object,
                    mechanism: mech.clone(),
                    data: data.clone(),
                },
            })
            .and_then(bytes_of);
        let mut st = s.lock();
        let slot = kind.slot(&mut st);
        let same = slot.as_ref().is_some_and(|o| o.id == op_id);
        match result {
            Err(e) => {
                if same {
                    *slot = None;
                }
                Err(e)
            }
            Ok(v) if !fits(cap, v.len()) => {
                let n = v.len();
                if let Some(op) = slot.as_mut().filter(|_| same) {
                    op.cached = Some((input.key(), v));
                }
                Ok(Output::Len(n))
            }
            Ok(v) => {
                if same {
                    *slot = None;
                }
                Ok(Output::Data(v))
            }
        }
    }

    /// `C_Sign`.
    ///
    /// # Errors
    /// See [`Module::produce`] and the node's errors.
    pub(crate) fn sign(
        &self,
        h: CK_SESSION_HANDLE,
        data: &[u8],
        cap: Option<usize>,
    ) -> Result<Output, Ckr> {
        let s = self.session(h)?;
        self.produce(&s, Kind::Sign, Input::Single(data), cap, |op| {
            sign_input(op, data).map(Payload::Sign)
        })
    }

    /// `C_SignFinal`.
    ///
    /// # Errors
    /// `CKR_FUNCTION_NOT_SUPPORTED` for single-part mechanisms.
    pub(crate) fn sign_final(
        &self,
        h: CK_SESSION_HANDLE,
        cap: Option<usize>,
    ) -> Result<Output, Ckr> {
        let s = self.session(h)?;
        self.produce(&s, Kind::Sign, Input::Final, cap, |op| {
            final_input(op).map(Payload::Sign)
        })
    }

    /// `C_Encrypt` / `C_Decrypt`.
    ///
    /// # Errors
    /// `CKR_DATA_LEN_RANGE` / `CKR_ENCRYPTED_DATA_LEN_RANGE` above [`MAX_DATA`], and the node's.
    pub(crate) fn crypt(
        &self,
        h: CK_SESSION_HANDLE,
        kind: Kind,
        data: &[u8],
        cap: Option<usize>,
    ) -> Result<Output, Ckr> {
        let s = self.session(h)?;
        self.produce(&s, kind, Input::Single(data), cap, |op| {
            if op.multipart {
                return Err(Ckr::OPERATION_ACTIVE);
            }
            if data.len() > MAX_DATA {
                return Err(kind.too_long());
            }
            Ok(Payload::Data(data.to_vec()))
        })
    }

    /// `C_EncryptFinal` / `C_DecryptFinal`.
    ///
    /// # Errors
    /// As [`Module::crypt`].
    pub(crate) fn crypt_final(
        &self,
        h: CK_SESSION_HANDLE,
        kind: Kind,
        cap: Option<usize>,
    ) -> Result<Output, Ckr> {
        let s = self.session(h)?;
        self.produce(&s, kind, Input::Final, cap, |op| {
            Ok(Payload::Data(std::mem::take(&mut *op.buf)))
        })
    }

    /// `C_Verify` (`data` given) or `C_VerifyFinal` (`None`). Always ends the operation.
    ///
    /// # Errors
    /// `CKR_SIGNATURE_INVALID`, `CKR_SIGNATURE_LEN_RANGE`, `CKR_OPERATION_NOT_INITIALIZED`.
    pub(crate) fn verify(
        &self,
        h: CK_SESSION_HANDLE,
        data: Option<&[u8]>,
        signature: &[u8],
    ) -> Result<(), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let mut op = s
            .lock()
            .verify
            .take()
            .ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        let input = match data {
            Some(d) => sign_input(&op, d)?,
            None => final_input(&mut op)?,
        };
        if op.out_len.is_some_and(|n| n != signature.len()) {
            return Err(Ckr::SIGNATURE_LEN_RANGE);
        }
        done(self.call_as(slot, |auth| Request::Verify {
            auth,
            key: op.key,
            mechanism: op.mech.clone(),
            input: input.clone(),
            signature: signature.to_vec(),
        })?)
    }

    /// `C_DigestInit` (NULL mechanism: end the active digest).
    ///
    /// # Errors
    /// `CKR_OPERATION_ACTIVE`, `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`.
    pub(crate) fn digest_init(
        &self,
        h: CK_SESSION_HANDLE,
        mech: Option<MechPtr>,
    ) -> Result<(), Ckr> {
        let s = self.session(h)?;
        let mut st = s.lock();
        let Some(mech) = mech else {
            st.digest = None;
            return Ok(());
        };
        if st.digest.is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let r = mechanism::resolve(&mech, &self.numbering, ck::CKF_DIGEST)?;
        let hash = r.spec.digest.ok_or(Ckr::MECHANISM_INVALID)?;
        st.digest = Some(DigestOp {
            hasher: Hasher::new(hash),
            hash,
            multipart: false,
        });
        Ok(())
    }

    /// `C_Digest` (`data` given) or `C_DigestFinal`.
    ///
    /// # Errors
    /// `CKR_OPERATION_NOT_INITIALIZED`, `CKR_OPERATION_ACTIVE` (`C_Digest` after an update).
    pub(crate) fn digest(
        &self,
        h: CK_SESSION_HANDLE,
        data: Option<&[u8]>,
        cap: Option<usize>,
    ) -> Result<Output, Ckr> {
        let s = self.session(h)?;
        let mut st = s.lock();
        let op = st.digest.as_ref().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        if data.is_some() && op.multipart {
            st.digest = None;
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let n = op.hash.len();
        if !fits(cap, n) {
            return Ok(Output::Len(n));
        }
        let mut op = st.digest.take().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        if let Some(d) = data {
            op.hasher.update(d);
        }
        Ok(Output::Data(Zeroizing::new(op.hasher.finish())))
    }

    /// `C_DigestUpdate`.
    ///
    /// # Errors
    /// `CKR_OPERATION_NOT_INITIALIZED`.
    pub(crate) fn digest_update(&self, h: CK_SESSION_HANDLE, part: &[u8]) -> Result<(), Ckr> {
        let s = self.session(h)?;
        let mut st = s.lock();
        let op = st.digest.as_mut().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        op.hasher.update(part);
        op.multipart = true;
        Ok(())
    }

    /// `C_GenerateKey`.
    ///
    /// # Errors
    /// `CKR_MECHANISM_INVALID`, `CKR_SESSION_READ_ONLY`, attribute and node errors.
    pub(crate) fn generate_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &MechPtr,
        template: &[RawAttr<'_>],
    ) -> Result<CK_OBJECT_HANDLE, Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let r = mechanism::resolve(mech, &self.numbering, ck::CKF_GENERATE)?;
        let template = attrs::to_wire(template, &self.numbering)?;
        let token = attrs::token_flag(&template);
        s.check_write(token == Some(true))?;
        let id = object_of(self.call_as(slot, |auth| Request::GenerateKey {
            auth,
            mechanism: r.mech.clone(),
            template: template.clone(),
        })?)?;
        Ok(self.register(&s, id, token))
    }

    /// `C_GenerateKeyPair`: (public, private).
    ///
    /// # Errors
    /// As [`Module::generate_key`].
    pub(crate) fn generate_key_pair(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &MechPtr,
        public: &[RawAttr<'_>],
        private: &[RawAttr<'_>],
    ) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let r = mechanism::resolve(mech, &self.numbering, ck::CKF_GENERATE_KEY_PAIR)?;
        let public = attrs::to_wire(public, &self.numbering)?;
        let private = attrs::to_wire(private, &self.numbering)?;
        let (pub_token, priv_token) = (attrs::token_flag(&public), attrs::token_flag(&private));
        s.check_write(pub_token == Some(true) || priv_token == Some(true))?;
        let resp = self.call_as(slot, |auth| Request::GenerateKeyPair {
            auth,
            mechanism: r.mech.clone(),
            public_template: public.clone(),
            private_template: private.clone(),
        })?;
        let Response::KeyPair { public, private } = resp else {
            return Err(unexpected("generate_key_pair"));
        };
        Ok((
            self.register(&s, public, pub_token),
            self.register(&s, private, priv_token),
        ))
    }

    /// `C_WrapKey`, with the two-call protocol.
    ///
    /// # Errors
    /// `CKR_WRAPPING_KEY_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID`, mechanism and node errors.
    pub(crate) fn wrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &MechPtr,
        wrapping: CK_OBJECT_HANDLE,
        key: CK_OBJECT_HANDLE,
        cap: Option<usize>,
    ) -> Result<Output, Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let r = mechanism::resolve(mech, &self.numbering, ck::CKF_WRAP)?;
        let wrapping_id = self
            .objects
            .id(wrapping)
            .map_err(|_| Ckr::WRAPPING_KEY_HANDLE_INVALID)?;
        let key_id = self.objects.id(key).map_err(|_| Ckr::KEY_HANDLE_INVALID)?;
        {
            let mut st = s.lock();
            if let Some(c) = st.wrap.as_ref() {
                if c.wrapping == wrapping && c.key == key && c.mech == r.mech {
                    let n = c.wrapped.len();
                    if !fits(cap, n) {
                        return Ok(Output::Len(n));
                    }
                    return Ok(Output::Data(
                        st.wrap.take().map(|c| c.wrapped).unwrap_or_default(),
                    ));
                }
            }
        }
        let wrapped = self
            .call_as(slot, |auth| Request::WrapKey {
                auth,
                wrapping_key: wrapping_id,
                mechanism: r.mech.clone(),
                key: key_id,
            })
            .map_err(|e| e.for_key(Ckr::WRAPPING_KEY_HANDLE_INVALID))
            .and_then(bytes_of)?;
        if fits(cap, wrapped.len()) {
            return Ok(Output::Data(wrapped));
        }
        let n = wrapped.len();
        s.lock().wrap = Some(WrapCache {
            wrapping,
            key,
            mech: r.mech,
            wrapped,
        });
        Ok(Output::Len(n))
    }

    /// `C_UnwrapKey`.
    ///
    /// # Errors
    /// `CKR_UNWRAPPING_KEY_HANDLE_INVALID`, mechanism, attribute and node errors.
    pub(crate) fn unwrap_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &MechPtr,
        unwrapping: CK_OBJECT_HANDLE,
        wrapped: &[u8],
        template: &[RawAttr<'_>],
    ) -> Result<CK_OBJECT_HANDLE, Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let r = mechanism::resolve(mech, &self.numbering, ck::CKF_UNWRAP)?;
        let unwrapping = self
            .objects
            .id(unwrapping)
            .map_err(|_| Ckr::UNWRAPPING_KEY_HANDLE_INVALID)?;
        let template = attrs::to_wire(template, &self.numbering)?;
        let token = attrs::token_flag(&template);
        s.check_write(token == Some(true))?;
        let id = self
            .call_as(slot, |auth| Request::UnwrapKey {
                auth,
                unwrapping_key: unwrapping,
                mechanism: r.mech.clone(),
                wrapped: wrapped.to_vec(),
                template: template.clone(),
            })
            .map_err(|e| e.for_key(Ckr::UNWRAPPING_KEY_HANDLE_INVALID))
            .and_then(object_of)?;
        Ok(self.register(&s, id, token))
    }

    /// `C_DeriveKey`.
    ///
    /// # Errors
    /// `CKR_KEY_HANDLE_INVALID`, mechanism, attribute and node errors.
    pub(crate) fn derive_key(
        &self,
        h: CK_SESSION_HANDLE,
        mech: &MechPtr,
        base: CK_OBJECT_HANDLE,
        template: &[RawAttr<'_>],
    ) -> Result<CK_OBJECT_HANDLE, Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let r = mechanism::resolve(mech, &self.numbering, ck::CKF_DERIVE)?;
        let base = self.objects.id(base).map_err(|_| Ckr::KEY_HANDLE_INVALID)?;
        let template = attrs::to_wire(template, &self.numbering)?;
        let token = attrs::token_flag(&template);
        s.check_write(token == Some(true))?;
        let id = self
            .call_as(slot, |auth| Request::DeriveKey {
                auth,
                base_key: base,
                mechanism: r.mech.clone(),
                template: template.clone(),
            })
            .map_err(|e| e.for_key(Ckr::KEY_HANDLE_INVALID))
            .and_then(object_of)?;
        Ok(self.register(&s, id, token))
    }

    /// `C_GenerateRandom`, in requests of at most 4096 bytes.
    ///
    /// # Errors
    /// `CKR_SESSION_HANDLE_INVALID`; call errors.
    pub(crate) fn generate_random(
        &self,
        h: CK_SESSION_HANDLE,
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, Ckr> {
        self.session(h)?;
        let mut out = Zeroizing::new(Vec::with_capacity(len));
        while out.len() < len {
            let n = (len - out.len()).min(RANDOM_CHUNK);
            let b = bytes_of(self.call(Request::GenerateRandom {
                len: u32::try_from(n).unwrap_or(4096),
            })?)?;
            if b.len() != n {
                return Err(unexpected("generate_random"));
            }
            out.extend_from_slice(&b);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_keys_and_fits() {
        assert_eq!(single_key(b"a"), single_key(b"a"));
        assert_ne!(single_key(b"a"), single_key(b"b"));
        assert!(!fits(None, 0));
        assert!(fits(Some(4), 4));
        assert!(!fits(Some(3), 4));
    }
}
