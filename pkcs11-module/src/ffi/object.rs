//! Object management (PKCS#11 3.0 §5.7).

use cryptoki_sys::{CK_ATTRIBUTE, CK_OBJECT_HANDLE, CK_SESSION_HANDLE, CK_ULONG};

use super::ptr;
use crate::error::Ckr;
use crate::module;

ck_fn!(
    /// §5.7 C_CreateObject.
    C_CreateObject = unsafe create_object(h: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG, out: *mut CK_OBJECT_HANDLE)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn create_object(
    h: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
    out: *mut CK_OBJECT_HANDLE,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if out.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: `t` is NULL or a template of `n` attributes with valid values (this body's contract).
    let o = m.create_object(h, &unsafe { ptr::template_in(t, n) }?)?;
    // SAFETY: `out` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(out, o) }
}

ck_fn!(
    /// §5.7 C_CopyObject.
    C_CopyObject = unsafe copy_object(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG, out: *mut CK_OBJECT_HANDLE)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn copy_object(
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
    // SAFETY: `t` is NULL or a template of `n` attributes with valid values (this body's contract).
    let new = m.copy_object(h, o, &unsafe { ptr::template_in(t, n) }?)?;
    // SAFETY: `out` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(out, new) }
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
    C_GetObjectSize = unsafe get_object_size(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, size: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_object_size(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    size: *mut CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    if size.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    let n = m.object_size(h, o)?;
    // SAFETY: `size` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(size, n) }
}

ck_fn!(
    /// §5.7 C_GetAttributeValue: every attribute is answered; see `attrs::answer`.
    C_GetAttributeValue = unsafe get_attribute_value(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn get_attribute_value(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `t` is NULL or a template of `n` attributes (this body's contract).
    let queries = unsafe { ptr::template_query(t, n) }?;
    let (answers, rv) = m.get_attributes(h, o, &queries)?;
    // SAFETY: `t` is the template of as many attributes as answers, with writable values (this
    // body's contract).
    unsafe { ptr::template_answer(t, &answers) }?;
    rv
}

ck_fn!(
    /// §5.7 C_SetAttributeValue.
    C_SetAttributeValue = unsafe set_attribute_value(h: CK_SESSION_HANDLE, o: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn set_attribute_value(
    h: CK_SESSION_HANDLE,
    o: CK_OBJECT_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `t` is NULL or a template of `n` attributes with valid values (this body's contract).
    m.set_attributes(h, o, &unsafe { ptr::template_in(t, n) }?)
}

ck_fn!(
    /// §5.7 C_FindObjectsInit: one request to the cluster; the handles are kept.
    C_FindObjectsInit = unsafe find_objects_init(h: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn find_objects_init(
    h: CK_SESSION_HANDLE,
    t: *mut CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<(), Ckr> {
    let m = module::get()?;
    // SAFETY: `t` is NULL or a template of `n` attributes with valid values (this body's contract).
    m.find_init(h, &unsafe { ptr::template_in(t, n) }?)
}

ck_fn!(
    /// §5.7 C_FindObjects.
    C_FindObjects = unsafe find_objects(h: CK_SESSION_HANDLE, out: *mut CK_OBJECT_HANDLE, max: CK_ULONG, count: *mut CK_ULONG)
);
/// # Safety
/// The PKCS#11 caller contract for the pointer arguments (see `ffi/ptr.rs`): each is NULL or
/// valid, for the rest of the call, for what the specification says it points to (its length
/// argument's bytes, a `CK_ULONG` length and `*len` bytes for an output buffer, a template of
/// its count, a `CK_MECHANISM` with its parameter).
pub(super) unsafe fn find_objects(
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
    // SAFETY: `out` has room for `max` handles (this body's contract), and `find_next` gives
    // at most `max`.
    unsafe { ptr::out_items(out, &found) }?;
    // SAFETY: `count` is NULL or valid for writes (this body's contract).
    unsafe { ptr::out_value(count, found.len() as CK_ULONG) }
}

ck_fn!(
    /// §5.7 C_FindObjectsFinal.
    C_FindObjectsFinal = find_objects_final(h: CK_SESSION_HANDLE)
);
pub(super) fn find_objects_final(h: CK_SESSION_HANDLE) -> Result<(), Ckr> {
    module::get()?.find_final(h)
}
