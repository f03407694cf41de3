//! Object management (PKCS#11 3.0 §5.7).
#![deny(unsafe_code)]

use cryptoki_sys::{CK_ATTRIBUTE, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG};

use super::ptr;
use crate::error::Ckr;
use crate::module;

ck_fn!(
    /// §5.7 C_CreateObject.
    C_CreateObject = create_object(h: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG, out: *mut CK_OBJECT_HANDLE)
);
pub(super) fn create_object(
    h: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let o = m.create_object(h, &ptr::template_in(t, n)?)?;
    ptr::out_value(out, o)
}

ck_fn!(
    /// §5.7 C_CopyObject.
    C_CopyObject = copy_object(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG, out: *mut CK_OBJECT_HANDLE)
);
pub(super) fn copy_object(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let new = m.copy_object(h, o, &ptr::template_in(t, n)?)?;
    ptr::out_value(out, new)
}

ck_fn!(
    /// §5.7 C_DestroyObject.
    C_DestroyObject = destroy_object(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE)
);
pub(super) fn destroy_object(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE) -> Result<(), Ckr> {
    module::get()?.destroy_object(h, o)
}

ck_fn!(
    /// §5.7 C_GetObjectSize: `CK_UNAVAILABLE_INFORMATION`.
    C_GetObjectSize = get_object_size(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, size: *mut CK_ULONG)
);
pub(super) fn get_object_size(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    size: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if size.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let n = m.object_size(h, o)?;
    ptr::out_value(size, n)
}

ck_fn!(
    /// §5.7 C_GetAttributeValue: every attribute is answered; see `attrs::answer`.
    C_GetAttributeValue = get_attribute_value(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG)
);
pub(super) fn get_attribute_value(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    let queries = ptr::template_query(t, n)?;
    let (answers, rv) = m.get_attributes(h, o, &queries)?;
    ptr::template_answer(t, &answers)?;
    rv
}

ck_fn!(
    /// §5.7 C_SetAttributeValue.
    C_SetAttributeValue = set_attribute_value(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG)
);
pub(super) fn set_attribute_value(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    m.set_attributes(h, o, &ptr::template_in(t, n)?)
}

ck_fn!(
    /// §5.7 C_FindObjectsInit: one request to the cluster; the handles are kept.
    C_FindObjectsInit = find_objects_init(h: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG)
);
pub(super) fn find_objects_init(
    h: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    m.find_init(h, &ptr::template_in(t, n)?)
}

ck_fn!(
    /// §5.7 C_FindObjects.
    C_FindObjects = find_objects(h: CK_SESSION_HANDLE, out: *mut CK_OBJECT_HANDLE, max: CK_ULONG, count: *mut CK_ULONG)
);
pub(super) fn find_objects(
    h: CK_SESSION_HANDLE,
    out: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if count.is_null() || (out.is_null() && max > 0) {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let found = m.find_next(h, usize::try_from(max).unwrap_or(usize::MAX))?;
    ptr::out_items(out, &found)?;
    ptr::out_value(count, found.len() as CK_ULONG)
}

ck_fn!(
    /// §5.7 C_FindObjectsFinal.
    C_FindObjectsFinal = find_objects_final(h: CK_SESSION_HANDLE)
);
pub(super) fn find_objects_final(h: CK_SESSION_HANDLE) -> Result<(), Ckr> {
    module::get()?.find_final(h)
}
