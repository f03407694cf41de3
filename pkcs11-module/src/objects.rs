//! Object handles and the object functions (PKCS#11 3.0 §5.7): create, copy, destroy, size,
//! get and set attributes, and the `C_FindObjects*` cursors.
//!
//! A handle (`CK_OBJECT_HANDLE`) names a cluster [`ObjectId`] for the life of the module: the
//! same object always gets the same handle, handles are never reused, and they are the same in
//! every session. The node owns the object model (defaults, read-only attributes, visibility,
//! sensitivity); the module converts values and remembers which objects are *session objects*
//! (`CKA_TOKEN` false), which it destroys when their session closes.
//!
//! The table holds only objects that may still exist, so it does not grow with every object
//! the application has ever seen: an entry is dropped when the object is destroyed through
//! this module, when its session closes (session objects), when its token is re-initialised,
//! and when the cluster answers that the object named by a request is not on the token
//! (destroyed by another application). A dropped handle stays invalid for good
//! (`CKR_OBJECT_HANDLE_INVALID`): handles are never reused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cloudkey_protocol::msg::{AttrValue, ObjectId, Request, Response};
use cryptoki_sys as ck;
use cryptoki_sys::{CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_SLOT_ID, CK_ULONG};

use crate::attrs;
use crate::error::Ckr;
use crate::ffi::ptr::{AttrAnswer, AttrQuery, RawAttr};
use crate::module::{done, lock, object_of, unexpected, Module};
use crate::session::Session;

/// What the module caches about a key (immutable attributes only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct KeyMeta {
    /// `CKK_*` (wire numbering), when the node gave it.
    pub(crate) key_type: Option<u64>,
    /// RSA modulus length in bytes.
    pub(crate) modulus_len: Option<usize>,
}

#[derive(Debug)]
struct Entry {
    id: ObjectId,
    /// The slot whose token holds the object (where it was first seen: an object is on one
    /// token, and another slot's "no such object" says nothing about it).
    slot: CK_SLOT_ID,
    /// The session that created this session object; `None` for token objects (and objects
    /// the module did not create).
    owner: Option<CK_SESSION_HANDLE>,
    meta: Option<KeyMeta>,
}

#[derive(Debug, Default)]
struct Maps {
    by_handle: HashMap<CK_OBJECT_HANDLE, Entry>,
    by_id: HashMap<ObjectId, CK_OBJECT_HANDLE>,
}

/// The handle table.
#[derive(Debug)]
pub(crate) struct Objects {
    maps: Mutex<Maps>,
    next: AtomicU64,
}

impl Default for Objects {
    fn default() -> Self {
        Self {
            maps: Mutex::new(Maps::default()),
            // 0 is CK_INVALID_HANDLE.
            next: AtomicU64::new(1),
        }
    }
}

impl Objects {
    /// The handle of `id`, an object of `slot`'s token, made on first sight.
    pub(crate) fn handle(&self, id: ObjectId, slot: CK_SLOT_ID) -> CK_OBJECT_HANDLE {
        let mut m = lock(&self.maps);
        if let Some(h) = m.by_id.get(&id) {
            return *h;
        }
        let h = self.next.fetch_add(1, Ordering::Relaxed);
        m.by_id.insert(id, h);
        m.by_handle.insert(
            h,
            Entry {
                id,
                slot,
                owner: None,
                meta: None,
            },
        );
        h
    }

    /// The object of a handle.
    ///
    /// # Errors
    /// `CKR_OBJECT_HANDLE_INVALID`.
    pub(crate) fn id(&self, h: CK_OBJECT_HANDLE) -> Result<ObjectId, Ckr> {
        lock(&self.maps)
            .by_handle
            .get(&h)
            .map(|e| e.id)
            .ok_or(Ckr::OBJECT_HANDLE_INVALID)
    }

    /// Marks a handle as a session object of session `owner`.
    pub(crate) fn set_owner(&self, h: CK_OBJECT_HANDLE, owner: CK_SESSION_HANDLE) {
        if let Some(e) = lock(&self.maps).by_handle.get_mut(&h) {
            e.owner = Some(owner);
        }
    }

    /// True for session objects.
    pub(crate) fn is_session_object(&self, h: CK_OBJECT_HANDLE) -> bool {
        lock(&self.maps)
            .by_handle
            .get(&h)
            .is_some_and(|e| e.owner.is_some())
    }

    /// The session objects of a session.
    pub(crate) fn owned_by(&self, owner: CK_SESSION_HANDLE) -> Vec<(CK_OBJECT_HANDLE, ObjectId)> {
        lock(&self.maps)
            .by_handle
            .iter()
            .filter(|(_, e)| e.owner == Some(owner))
            .map(|(h, e)| (*h, e.id))
            .collect()
    }

    /// Forgets a destroyed object (its handle is never reused).
    pub(crate) fn forget(&self, h: CK_OBJECT_HANDLE) {
        let mut m = lock(&self.maps);
        if let Some(e) = m.by_handle.remove(&h) {
            m.by_id.remove(&e.id);
        }
    }

    /// Forgets `id` when the cluster answered, for a request of a session on `slot`, that
    /// the token has no such object: it was destroyed elsewhere, and its handle stays invalid.
    pub(crate) fn forget_gone(&self, id: ObjectId, slot: CK_SLOT_ID) {
        let mut m = lock(&self.maps);
        let Some(h) = m.by_id.get(&id).copied() else {
            return;
        };
        if m.by_handle.get(&h).is_some_and(|e| e.slot == slot) {
            m.by_handle.remove(&h);
            m.by_id.remove(&id);
        }
    }

    /// Forgets every object of `slot`'s token (`C_InitToken` destroyed them all).
    pub(crate) fn forget_slot(&self, slot: CK_SLOT_ID) {
        let mut m = lock(&self.maps);
        let Maps { by_handle, by_id } = &mut *m;
        by_handle.retain(|_, e| {
            let keep = e.slot != slot;
            if !keep {
                by_id.remove(&e.id);
            }
            keep
        });
    }

    /// How many objects the table holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let m = lock(&self.maps);
        debug_assert_eq!(m.by_handle.len(), m.by_id.len());
        m.by_handle.len()
    }

    /// Cached key facts.
    pub(crate) fn meta(&self, h: CK_OBJECT_HANDLE) -> Option<KeyMeta> {
        lock(&self.maps).by_handle.get(&h).and_then(|e| e.meta)
    }

    fn set_meta(&self, h: CK_OBJECT_HANDLE, meta: KeyMeta) {
        if let Some(e) = lock(&self.maps).by_handle.get_mut(&h) {
            e.meta = Some(meta);
        }
    }
}

/// An active `C_FindObjects` search: the handles found at `C_FindObjectsInit`.
#[derive(Debug, Default)]
pub(crate) struct FindCursor {
    handles: Vec<CK_OBJECT_HANDLE>,
    next: usize,
}

impl Module {
    /// Registers a new object for session `s`; a session object (`token` not true) belongs
    /// to the session.
    pub(crate) fn register(
        &self,
        s: &Session,
        id: ObjectId,
        token: Option<bool>,
    ) -> CK_OBJECT_HANDLE {
        let h = self.objects.handle(id, self.slots[s.slot].id);
        if token != Some(true) {
            self.objects.set_owner(h, s.handle);
        }
        h
    }

    /// A key's type and modulus length, fetched once per handle.
    ///
    /// # Errors
    /// `CKR_KEY_HANDLE_INVALID` (or `invalid`) for an unknown or invisible key; as
    /// [`Module::call_as`].
    pub(crate) fn key_meta(
        &self,
        s: &Session,
        h: CK_OBJECT_HANDLE,
        invalid: Ckr,
    ) -> Result<(ObjectId, KeyMeta), Ckr> {
        let id = self.objects.id(h).map_err(|e| e.for_key(invalid))?;
        if let Some(meta) = self.objects.meta(h) {
            return Ok((id, meta));
        }
        let slot = &self.slots[s.slot];
        let v = self
            .attributes(slot, id, vec![ck::CKA_KEY_TYPE, ck::CKA_MODULUS])
            .map_err(|e| e.for_key(invalid))?;
        let key_type = match &v[0] {
            AttrValue::Value(b) => b.as_slice().try_into().ok().map(u64::from_le_bytes),
            _ => None,
        };
        let modulus_len = match &v[1] {
            AttrValue::Value(m) => Some(m.iter().skip_while(|b| **b == 0).count()),
            _ => None,
        };
        let meta = KeyMeta {
            key_type,
            modulus_len,
        };
        if key_type.is_some() {
            self.objects.set_meta(h, meta);
        }
        Ok((id, meta))
    }

    /// `C_CreateObject`.
    ///
    /// # Errors
    /// `CKR_SESSION_READ_ONLY` for a token object in a read-only session; the attribute
    /// errors of [`attrs::to_wire`]; the node's template errors.
    pub(crate) fn create_object(
        &self,
        h: CK_SESSION_HANDLE,
        template: &[RawAttr<'_>],
    ) -> Result<CK_OBJECT_HANDLE, Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let template = attrs::to_wire(template, &self.numbering)?;
        let token = attrs::token_flag(&template);
        s.check_write(token == Some(true))?;
        let id = object_of(self.call_as(slot, |auth| Request::CreateObject {
            auth,
            template: template.clone(),
        })?)?;
        Ok(self.register(&s, id, token))
    }

    /// `C_CopyObject`.
    ///
    /// # Errors
    /// As [`Module::create_object`]; `CKR_OBJECT_HANDLE_INVALID`.
    pub(crate) fn copy_object(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        template: &[RawAttr<'_>],
    ) -> Result<CK_OBJECT_HANDLE, Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let id = self.objects.id(object)?;
        let template = attrs::to_wire(template, &self.numbering)?;
        // A copy is a token object if asked, or if the original is one.
        let token =
            attrs::token_flag(&template).unwrap_or_else(|| !self.objects.is_session_object(object));
        s.check_write(token)?;
        let new = object_of(self.call_as(slot, |auth| Request::CopyObject {
            auth,
            object: id,
            template: template.clone(),
        })?)?;
        Ok(self.register(&s, new, Some(token)))
    }

    /// `C_DestroyObject`.
    ///
    /// # Errors
    /// `CKR_OBJECT_HANDLE_INVALID`, `CKR_SESSION_READ_ONLY`, the node's `CKR_ACTION_PROHIBITED`.
    pub(crate) fn destroy_object(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<(), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let id = self.objects.id(object)?;
        s.check_write(!self.objects.is_session_object(object))?;
        done(self.call_as(slot, |auth| Request::DestroyObject { auth, object: id })?)?;
        self.objects.forget(object);
        Ok(())
    }

    /// `C_GetObjectSize`: the cluster does not expose sizes, so `CK_UNAVAILABLE_INFORMATION`
    /// (allowed by §5.7.4).
    ///
    /// # Errors
    /// `CKR_OBJECT_HANDLE_INVALID`.
    pub(crate) fn object_size(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
    ) -> Result<CK_ULONG, Ckr> {
        self.session(h)?;
        self.objects.id(object)?;
        Ok(ck::CK_UNAVAILABLE_INFORMATION)
    }

    /// `C_GetAttributeValue`: the answers to write back and the return value (§5.7.5).
    ///
    /// # Errors
    /// `CKR_OBJECT_HANDLE_INVALID` and call failures (then nothing is written).
    pub(crate) fn get_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        queries: &[AttrQuery],
    ) -> Result<(Vec<AttrAnswer>, Result<(), Ckr>), Ckr> {
        let (_, slot) = self.session_slot(h)?;
        let id = self.objects.id(object)?;
        let types: Vec<u64> = queries
            .iter()
            .map(|q| q.ty)
            .filter(|t| attrs::is_queryable(*t))
            .collect();
        let values = if types.is_empty() {
            Vec::new()
        } else {
            self.attributes(slot, id, types)?
        };
        Ok(attrs::answer(queries, values, &self.numbering))
    }

    /// `C_SetAttributeValue`.
    ///
    /// # Errors
    /// `CKR_OBJECT_HANDLE_INVALID`, `CKR_SESSION_READ_ONLY`, the node's
    /// `CKR_ATTRIBUTE_READ_ONLY` and friends.
    pub(crate) fn set_attributes(
        &self,
        h: CK_SESSION_HANDLE,
        object: CK_OBJECT_HANDLE,
        template: &[RawAttr<'_>],
    ) -> Result<(), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        let id = self.objects.id(object)?;
        let template = attrs::to_wire(template, &self.numbering)?;
        s.check_write(!self.objects.is_session_object(object))?;
        done(self.call_as(slot, |auth| Request::SetAttributes {
            auth,
            object: id,
            template: template.clone(),
        })?)
    }

    /// `C_FindObjectsInit`: asks the cluster once and keeps the result.
    ///
    /// # Errors
    /// `CKR_OPERATION_ACTIVE`; attribute and call errors.
    pub(crate) fn find_init(
        &self,
        h: CK_SESSION_HANDLE,
        template: &[RawAttr<'_>],
    ) -> Result<(), Ckr> {
        let (s, slot) = self.session_slot(h)?;
        if s.lock().find.is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        let template = attrs::to_wire(template, &self.numbering)?;
        let ids = match self.call_as(slot, |auth| Request::FindObjects {
            auth,
            template: template.clone(),
        })? {
            Response::Found(ids) => ids,
            _ => return Err(unexpected("find_objects")),
        };
        let handles = ids
            .into_iter()
            .map(|id| self.objects.handle(id, slot.id))
            .collect();
        let mut st = s.lock();
        if st.find.is_some() {
            return Err(Ckr::OPERATION_ACTIVE);
        }
        st.find = Some(FindCursor { handles, next: 0 });
        Ok(())
    }

    /// `C_FindObjects`: up to `max` more handles.
    ///
    /// # Errors
    /// `CKR_OPERATION_NOT_INITIALIZED`.
    pub(crate) fn find_next(
        &self,
        h: CK_SESSION_HANDLE,
        max: usize,
    ) -> Result<Vec<CK_OBJECT_HANDLE>, Ckr> {
        let s = self.session(h)?;
        let mut st = s.lock();
        let c = st.find.as_mut().ok_or(Ckr::OPERATION_NOT_INITIALIZED)?;
        let end = c.handles.len().min(c.next.saturating_add(max));
        let out = c.handles[c.next..end].to_vec();
        c.next = end;
        Ok(out)
    }

    /// `C_FindObjectsFinal`.
    ///
    /// # Errors
    /// `CKR_OPERATION_NOT_INITIALIZED`.
    pub(crate) fn find_final(&self, h: CK_SESSION_HANDLE) -> Result<(), Ckr> {
        let s = self.session(h)?;
        let found = s.lock().find.take();
        found.map(|_| ()).ok_or(Ckr::OPERATION_NOT_INITIALIZED)
    }
}

/// The one object a request names, for which the node's `CKR_OBJECT_HANDLE_INVALID` or
/// `CKR_KEY_HANDLE_INVALID` means "not on the token" (the node answers an invisible private
/// object with `CKR_USER_NOT_LOGGED_IN`, not with these). Requests naming two objects (wrap,
/// unwrap) or none are not used: their error does not say which object is gone.
pub(crate) fn named_object(r: &Request) -> Option<ObjectId> {
    match r {
        Request::GetAttributes { object, .. }
        | Request::SetAttributes { object, .. }
        | Request::DestroyObject { object, .. }
        | Request::CopyObject { object, .. } => Some(*object),
        Request::Sign { key, .. }
        | Request::Verify { key, .. }
        | Request::Encrypt { key, .. }
        | Request::Decrypt { key, .. } => Some(*key),
        _ => None,
    }
}

/// True for the node's answers that the object a request names does not exist.
pub(crate) fn is_gone(e: Ckr) -> bool {
    e == Ckr::OBJECT_HANDLE_INVALID || e == Ckr::KEY_HANDLE_INVALID
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_stable_and_never_reused() {
        let o = Objects::default();
        let a = ObjectId([1; 16]);
        let b = ObjectId([2; 16]);
        let ha = o.handle(a, 0);
        assert_eq!(o.handle(a, 0), ha);
        let hb = o.handle(b, 0);
        assert_ne!(ha, hb);
        assert_ne!(ha, 0);
        assert_eq!(o.id(ha), Ok(a));
        o.set_owner(hb, 7);
        assert!(o.is_session_object(hb));
        assert_eq!(o.owned_by(7), vec![(hb, b)]);
        o.forget(ha);
        assert_eq!(o.id(ha), Err(Ckr::OBJECT_HANDLE_INVALID));
        let ha2 = o.handle(a, 0);
        assert!(ha2 > hb, "a destroyed handle is never reused");
    }

    #[test]
    fn objects_gone_from_their_token_are_forgotten_and_only_there() {
        let o = Objects::default();
        let (a, b, c) = (ObjectId([1; 16]), ObjectId([2; 16]), ObjectId([3; 16]));
        let ha = o.handle(a, 0);
        let hb = o.handle(b, 1);
        let hc = o.handle(c, 1);
        // Slot 0's token says nothing about slot 1's objects.
        o.forget_gone(b, 0);
        assert_eq!(o.id(hb), Ok(b));
        o.forget_gone(b, 1);
        assert_eq!(o.id(hb), Err(Ckr::OBJECT_HANDLE_INVALID));
        assert_eq!(o.len(), 2);
        o.forget_slot(1);
        assert_eq!(o.id(hc), Err(Ckr::OBJECT_HANDLE_INVALID));
        assert_eq!((o.id(ha), o.len()), (Ok(a), 1));
        assert!(o.handle(b, 1) > hc, "handles are never reused");
    }
}
