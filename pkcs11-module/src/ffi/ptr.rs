//! Every raw-pointer read and write of the module, and nothing else.
//!
//! The PKCS#11 caller contract (PKCS#11 3.0 base specification §5, "Functions") is that each
//! pointer an application passes is either `NULL_PTR` or valid for the length it gives with it,
//! for the duration of the call, and that output buffers do not overlap inputs. The functions
//! here are the only code that relies on that contract: they check for NULL (answering
//! `CKR_ARGUMENTS_BAD`, or `CKR_MECHANISM_PARAM_INVALID` inside mechanism parameters), check
//! lengths, and hand safe Rust values to the rest of the module.
//!
//! Every function that takes a raw pointer is an `unsafe fn` whose `# Safety` section states
//! what its caller promises; the `C_*` bodies (themselves `unsafe fn`, see `ffi/mod.rs`) meet
//! it with the pointers the application passed, in an `unsafe { .. } // SAFETY: ..` block at
//! each call. The promise is always the same one, the caller contract above, restated for the
//! pointer at hand: "valid" below means valid for reads (or writes) of the stated size for
//! the rest of the current PKCS#11 call. Values that keep pointers ([`OutBuf`], [`MechPtr`])
//! are made by an `unsafe fn` that takes the promise for their whole life, so their methods
//! are safe; they, and the slices these functions return, must not outlive the call.
//!
//! The output side implements the standard two-call size protocol (§5.2, "Conventions for
//! functions returning output in a variable-length buffer") in [`OutBuf`] and [`out_list`].

use std::ffi::{c_void, CStr};
use std::mem::size_of;

use cryptoki_sys::{
    CK_ATTRIBUTE, CK_C_INITIALIZE_ARGS, CK_ECDH1_DERIVE_PARAMS, CK_GCM_PARAMS, CK_INTERFACE,
    CK_MECHANISM, CK_RSA_PKCS_OAEP_PARAMS, CK_RSA_PKCS_PSS_PARAMS, CK_ULONG,
    CK_UNAVAILABLE_INFORMATION,
};
use zeroize::Zeroizing;

use crate::error::Ckr;

// The module is built for LP64 platforms, where CK_ULONG is 64 bits like the wire's u64.
const _: () = assert!(size_of::<CK_ULONG>() == 8);

/// The largest single input the module accepts from an application (a pointer with a larger
/// length is a broken caller; data limits of operations are checked later and are smaller).
const MAX_IN: CK_ULONG = 1 << 40;

fn len(n: CK_ULONG) -> Result<usize, Ckr> {
    if n > MAX_IN {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    usize::try_from(n).map_err(|_| Ckr::ARGUMENTS_BAD)
}

fn ulong(n: usize) -> CK_ULONG {
    // usize and CK_ULONG are both 64 bits (asserted above).
    n as CK_ULONG
}

/// Input bytes (`pData`, `ulDataLen`). `NULL` with length 0 is the empty input.
///
/// # Errors
/// `CKR_ARGUMENTS_BAD` for `NULL` with a non-zero length.
///
/// # Safety
/// `p` is NULL or valid for reads of `n` bytes, not written to while `'a` lasts; `'a` ends
/// with the current PKCS#11 call at the latest.
pub(crate) unsafe fn in_bytes<'a>(p: *const u8, n: CK_ULONG) -> Result<&'a [u8], Ckr> {
    let n = len(n)?;
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: p is not NULL, and by this function's contract points to n readable bytes
    // that stay valid and unmodified for 'a; n ≤ MAX_IN < isize::MAX.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A PIN or other secret input, copied into memory that is zeroized on drop.
///
/// # Errors
/// As [`in_bytes`].
///
/// # Safety
/// `p` is NULL or valid for reads of `n` bytes.
pub(crate) unsafe fn in_secret(p: *const u8, n: CK_ULONG) -> Result<Zeroizing<Vec<u8>>, Ckr> {
    // SAFETY: this function's contract; the bytes are copied before it returns.
    Ok(Zeroizing::new(unsafe { in_bytes(p, n) }?.to_vec()))
}

/// A fixed-size value the caller passes by pointer.
///
/// # Errors
/// `CKR_ARGUMENTS_BAD` for `NULL`.
///
/// # Safety
/// `p` is NULL or valid for reads of a `T` (any alignment), and `T` is plain C data for
/// which every bit pattern the application may store is a valid value.
pub(crate) unsafe fn in_value<T: Copy>(p: *const T) -> Result<T, Ckr> {
    if p.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: p is not NULL and by this function's contract points to a readable T; T is
    // Copy (plain C data), and read_unaligned tolerates any alignment.
    Ok(unsafe { p.read_unaligned() })
}

/// A NUL-terminated string (`C_GetInterface`'s interface name); `None` for `NULL`.
///
/// The bytes are returned without the NUL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for reads.
pub(crate) unsafe fn in_cstr(p: *const u8) -> Option<Vec<u8>> {
    if p.is_null() {
        return None;
    }
    // SAFETY: p is not NULL and by this function's contract points to a NUL-terminated
    // string valid for reads; the bytes are copied out.
    Some(unsafe { CStr::from_ptr(p.cast()) }.to_bytes().to_vec())
}

/// Writes one value through an output pointer.
///
/// # Errors
/// `CKR_ARGUMENTS_BAD` for `NULL`.
///
/// # Safety
/// `p` is NULL or valid for writes of a `T` (any alignment).
pub(crate) unsafe fn out_value<T>(p: *mut T, v: T) -> Result<(), Ckr> {
    if p.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: p is not NULL and by this function's contract points to writable memory for a T;
    // write_unaligned does not read or drop the old contents.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Writes `items` into an array the caller sized (e.g. `C_FindObjects`' `phObject` of
/// `ulMaxObjectCount` entries, which the caller of this function has respected).
///
/// # Errors
/// `CKR_ARGUMENTS_BAD` for `NULL` when there is something to write.
///
/// # Safety
/// `p` is NULL or valid for writes of `items.len()` values of `T`, aligned for `T`, and does
/// not overlap `items` (the caller has checked the application's stated capacity).
pub(crate) unsafe fn out_items<T: Copy>(p: *mut T, items: &[T]) -> Result<(), Ckr> {
    if items.is_empty() {
        return Ok(());
    }
    if p.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: p is not NULL and, by this function's contract, has room for items.len()
    // values of T and does not overlap the source slice.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), p, items.len()) };
    Ok(())
}

/// An array output with the two-call protocol (`C_GetSlotList`, `C_GetMechanismList`,
/// `C_GetInterfaceList`): `p` NULL → the count is written and `CKR_OK`; `*count` too small →
/// the needed count is written and `CKR_BUFFER_TOO_SMALL`; else the items and their count.
///
/// # Errors
/// `CKR_ARGUMENTS_BAD` when `count` is NULL; `CKR_BUFFER_TOO_SMALL`.
///
/// # Safety
/// `count` is NULL or valid for reads and writes of a `CK_ULONG`; `p` is NULL or an array of
/// `*count` values of `T` valid for writes, not overlapping `items`.
pub(crate) unsafe fn out_list<T: Copy>(
    p: *mut T,
    count: *mut CK_ULONG,
    items: &[T],
) -> Result<(), Ckr> {
    if p.is_null() {
        // A size query: *count is not read (it may be uninitialised).
        // SAFETY: count is NULL or writable (this function's contract).
        return unsafe { out_value(count, ulong(items.len())) };
    }
    // SAFETY: count is NULL or readable and writable (this function's contract).
    let capacity = unsafe { in_value(count.cast_const()) }?;
    // SAFETY: as above; count is not NULL (it was read).
    unsafe { out_value(count, ulong(items.len())) }?;
    if len(capacity).unwrap_or(usize::MAX) < items.len() {
        return Err(Ckr::BUFFER_TOO_SMALL);
    }
    // SAFETY: p has room for `capacity` ≥ items.len() values (this function's contract,
    // checked just above) and does not overlap items.
    unsafe { out_items(p, items) }
}

/// What an output-producing operation answers, for [`OutBuf::deliver`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Output {
    /// Only the length is reported: the buffer was NULL (a size query, `CKR_OK`) or too small
    /// (`CKR_BUFFER_TOO_SMALL`). The operation stays active.
    Len(usize),
    /// The result, which fits the caller's buffer.
    Data(Zeroizing<Vec<u8>>),
}

/// A variable-length output buffer (`pSignature`, `pulSignatureLen`, ...). Made by the
/// `unsafe` [`OutBuf::new`], whose promise covers the buffer's whole life, so its methods are
/// safe; it lives only inside one `C_*` body.
#[derive(Debug)]
pub(crate) struct OutBuf {
    buf: *mut u8,
    len: *mut CK_ULONG,
}

impl OutBuf {
    /// Checks the length pointer and reads nothing yet.
    ///
    /// # Errors
    /// `CKR_ARGUMENTS_BAD` when the length pointer is NULL.
    ///
    /// # Safety
    /// While the `OutBuf` lives: `len` is NULL or valid for reads and writes of a `CK_ULONG`,
    /// and `buf` is NULL or valid for writes of `*len` bytes (the value `*len` has when a
    /// method is called), overlapping no input of the call.
    pub(crate) unsafe fn new(buf: *mut u8, len: *mut CK_ULONG) -> Result<Self, Ckr> {
        if len.is_null() {
            return Err(Ckr::ARGUMENTS_BAD);
        }
        Ok(Self { buf, len })
    }

    /// `None` for a size query (NULL buffer), else the buffer's size in bytes.
    pub(crate) fn capacity(&self) -> Option<usize> {
        if self.buf.is_null() {
            return None;
        }
        // SAFETY: self.len is readable for the life of self (the contract of new()).
        let n = unsafe { in_value(self.len.cast_const()) }.unwrap_or(0);
        Some(len(n).unwrap_or(usize::MAX))
    }

    fn set_len(&self, n: usize) {
        // SAFETY: self.len is writable for the life of self (the contract of new()), and was
        // checked non-NULL there.
        let _ = unsafe { out_value(self.len, ulong(n)) };
    }

    /// Writes `data` with the two-call protocol.
    ///
    /// # Errors
    /// `CKR_BUFFER_TOO_SMALL` (with the needed length written).
    pub(crate) fn write(&self, data: &[u8]) -> Result<(), Ckr> {
        match self.capacity() {
            None => {
                self.set_len(data.len());
                Ok(())
            }
            Some(cap) if cap < data.len() => {
                self.set_len(data.len());
                Err(Ckr::BUFFER_TOO_SMALL)
            }
            Some(_) => {
                // SAFETY: self.buf has room for capacity() ≥ data.len() bytes (the contract
                // of new()) and is not one of the call's inputs, which data was made from.
                unsafe { out_items(self.buf, data) }?;
                self.set_len(data.len());
                Ok(())
            }
        }
    }

    /// Delivers an operation's [`Output`].
    ///
    /// # Errors
    /// `CKR_BUFFER_TOO_SMALL` for a length answer to a non-NULL buffer.
    pub(crate) fn deliver(&self, out: Output) -> Result<(), Ckr> {
        match out {
            Output::Len(n) => {
                self.set_len(n);
                if self.buf.is_null() {
                    Ok(())
                } else {
                    Err(Ckr::BUFFER_TOO_SMALL)
                }
            }
            Output::Data(v) => self.write(&v),
        }
    }
}

/// One attribute of an input template, its value borrowed from the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RawAttr<'a> {
    /// `CKA_*`.
    pub(crate) ty: CK_ULONG,
    /// The value's bytes as the application laid them out.
    pub(crate) value: &'a [u8],
}

/// # Safety
/// `p` is NULL or an array of `n` `CK_ATTRIBUTE`s valid for reads for `'a`.
unsafe fn in_attrs<'a>(p: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<&'a [CK_ATTRIBUTE], Ckr> {
    let n = len(n)?;
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    if n > (isize::MAX as usize) / size_of::<CK_ATTRIBUTE>() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    // SAFETY: p is not NULL and by this function's contract points to n CK_ATTRIBUTEs valid
    // for 'a; the total size fits isize (checked above).
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// An input template (`pTemplate`, `ulCount`).
///
/// # Errors
/// `CKR_ARGUMENTS_BAD` for a NULL array with a non-zero count or a NULL value with a non-zero
/// length.
///
/// # Safety
/// `p` is NULL or an array of `n` `CK_ATTRIBUTE`s valid for reads, each `pValue` NULL or valid
/// for reads of its `ulValueLen` bytes, all unchanged while `'a` lasts (at most the call).
pub(crate) unsafe fn template_in<'a>(
    p: *const CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<Vec<RawAttr<'a>>, Ckr> {
    // SAFETY: this function's contract for the array.
    let attrs: &'a [CK_ATTRIBUTE] = unsafe { in_attrs(p, n) }?;
    attrs
        .iter()
        .map(|a| {
            Ok(RawAttr {
                ty: a.type_,
                // SAFETY: this function's contract for each value.
                value: unsafe { in_bytes(a.pValue.cast_const().cast(), a.ulValueLen) }?,
            })
        })
        .collect()
}

/// One attribute asked for by `C_GetAttributeValue`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct AttrQuery {
    /// `CKA_*`.
    pub(crate) ty: CK_ULONG,
    /// `None` when `pValue` is NULL (a length query), else `ulValueLen`.
    pub(crate) capacity: Option<usize>,
}

/// What to write back into one `CK_ATTRIBUTE` of `C_GetAttributeValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AttrAnswer {
    /// `ulValueLen = CK_UNAVAILABLE_INFORMATION`.
    Unavailable,
    /// `ulValueLen` = the value's length; nothing copied (length query).
    Len(usize),
    /// The value, copied to `pValue` (it fits: [`template_answer`] checks again).
    Value(Zeroizing<Vec<u8>>),
}

/// Reads the types and buffer sizes of a `C_GetAttributeValue` template.
///
/// # Errors
/// As [`template_in`].
///
/// # Safety
/// `p` is NULL or an array of `n` `CK_ATTRIBUTE`s valid for reads (the values are not read).
pub(crate) unsafe fn template_query(
    p: *const CK_ATTRIBUTE,
    n: CK_ULONG,
) -> Result<Vec<AttrQuery>, Ckr> {
    // SAFETY: this function's contract.
    Ok(unsafe { in_attrs(p, n) }?
        .iter()
        .map(|a| AttrQuery {
            ty: a.type_,
            capacity: if a.pValue.is_null() {
                None
            } else {
                Some(len(a.ulValueLen).unwrap_or(usize::MAX))
            },
        })
        .collect())
}

/// Writes the answers of `C_GetAttributeValue` into the caller's template, one per entry.
///
/// # Errors
/// `CKR_ARGUMENTS_BAD` for a NULL template or a count mismatch (an internal error).
///
/// # Safety
/// `p` is NULL or an array of (at least) `answers.len()` `CK_ATTRIBUTE`s valid for reads and
/// writes, each `pValue` NULL or valid for writes of its `ulValueLen` bytes and overlapping
/// neither the array nor the answers.
pub(crate) unsafe fn template_answer(
    p: *mut CK_ATTRIBUTE,
    answers: &[AttrAnswer],
) -> Result<(), Ckr> {
    if answers.is_empty() {
        return Ok(());
    }
    if p.is_null() {
        return Err(Ckr::ARGUMENTS_BAD);
    }
    for (i, answer) in answers.iter().enumerate() {
        // SAFETY: p is not NULL and points to at least answers.len() entries (this
        // function's contract); i < that count.
        let a = unsafe { &mut *p.add(i) };
        a.ulValueLen = match answer {
            AttrAnswer::Unavailable => CK_UNAVAILABLE_INFORMATION,
            AttrAnswer::Len(n) => ulong(*n),
            AttrAnswer::Value(v) => {
                let fits = !a.pValue.is_null() && len(a.ulValueLen).is_ok_and(|cap| cap >= v.len());
                if fits {
                    // SAFETY: pValue is not NULL and has room for ulValueLen ≥ v.len() bytes,
                    // overlapping nothing we read (this function's contract).
                    unsafe { out_items(a.pValue.cast::<u8>(), v) }?;
                    ulong(v.len())
                } else {
                    CK_UNAVAILABLE_INFORMATION
                }
            }
        };
    }
    Ok(())
}

/// A `CK_MECHANISM` as passed: its type and a view of its parameter. Made by the `unsafe`
/// [`mechanism`], whose promise covers its whole life, so its methods are safe.
#[derive(Debug)]
pub(crate) struct MechPtr {
    /// `CKM_*` as the application numbers it.
    pub(crate) ckm: CK_ULONG,
    param: *const c_void,
    param_len: CK_ULONG,
}

/// `CK_GCM_PARAMS`, copied out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GcmRaw {
    pub(crate) iv: Vec<u8>,
    pub(crate) aad: Vec<u8>,
    pub(crate) tag_bits: CK_ULONG,
}

/// `CK_RSA_PKCS_OAEP_PARAMS`, copied out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OaepRaw {
    pub(crate) hash: CK_ULONG,
    pub(crate) mgf: CK_ULONG,
    pub(crate) source: CK_ULONG,
    pub(crate) source_data: Vec<u8>,
}

/// `CK_ECDH1_DERIVE_PARAMS`, copied out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Ecdh1Raw {
    pub(crate) kdf: CK_ULONG,
    pub(crate) shared_data: Vec<u8>,
    pub(crate) public_data: Vec<u8>,
}

/// The `CK_GCM_PARAMS` layout of older headers (and NSS's `CK_NSS_GCM_PARAMS`) without
/// `ulIvBits`; some applications still pass it.
#[repr(C)]
#[derive(Clone, Copy)]
struct LegacyGcmParams {
    p_iv: *mut u8,
    ul_iv_len: CK_ULONG,
    p_aad: *mut u8,
    ul_aad_len: CK_ULONG,
    ul_tag_bits: CK_ULONG,
}

/// Inner pointers of mechanism parameters: a bad one is a bad parameter, not bad arguments.
///
/// # Safety
/// `p` is NULL or valid for reads of `n` bytes.
unsafe fn param_bytes(p: *const u8, n: CK_ULONG) -> Result<Vec<u8>, Ckr> {
    // SAFETY: this function's contract; the bytes are copied before it returns.
    unsafe { in_bytes(p, n) }
        .map(<[u8]>::to_vec)
        .map_err(|_| Ckr::MECHANISM_PARAM_INVALID)
}

/// Reads a `CK_MECHANISM`; `None` when `pMechanism` is NULL (PKCS#11 3.0: an `*Init` call
/// with a NULL mechanism cancels the active operation).
///
/// # Safety
/// `p` is NULL or a `CK_MECHANISM` valid for reads, and while the returned [`MechPtr`] lives,
/// its `pParameter` is NULL or valid for reads of `ulParameterLen` bytes, holding the
/// parameter structure of the mechanism, whose own pointers (IV, AAD, label, shared and
/// public data) are each NULL or valid for reads of the length given next to them.
pub(crate) unsafe fn mechanism(p: *const CK_MECHANISM) -> Option<MechPtr> {
    // SAFETY: this function's contract; CK_MECHANISM is plain C data.
    let m = unsafe { in_value(p) }.ok()?;
    Some(MechPtr {
        ckm: m.mechanism,
        param: m.pParameter.cast_const(),
        param_len: m.ulParameterLen,
    })
}

impl MechPtr {
    /// True when the mechanism carries no parameter (NULL or zero length).
    pub(crate) fn has_no_param(&self) -> bool {
        self.param.is_null() || self.param_len == 0
    }

    /// The parameter as bytes (an IV, an SM2 identifier).
    ///
    /// # Errors
    /// `CKR_MECHANISM_PARAM_INVALID` for NULL with a non-zero length.
    pub(crate) fn bytes(&self) -> Result<Vec<u8>, Ckr> {
        // SAFETY: the parameter is valid for param_len bytes (the contract of mechanism()).
        unsafe { param_bytes(self.param.cast(), self.param_len) }
    }

    /// The parameter as a `T`, when it has `T`'s size.
    ///
    /// # Safety
    /// `T` is a plain C parameter structure for which any bytes are a valid value.
    unsafe fn read<T: Copy>(&self) -> Result<T, Ckr> {
        if self.param.is_null() || self.param_len != ulong(size_of::<T>()) {
            return Err(Ckr::MECHANISM_PARAM_INVALID);
        }
        // SAFETY: the parameter is valid for param_len = size_of::<T>() bytes (the contract
        // of mechanism()), and T is plain C data (this function's contract).
        unsafe { in_value(self.param.cast::<T>()) }.map_err(|_| Ckr::MECHANISM_PARAM_INVALID)
    }

    /// `CK_GCM_PARAMS` (either layout).
    ///
    /// # Errors
    /// `CKR_MECHANISM_PARAM_INVALID` for a wrong size or bad inner pointers.
    pub(crate) fn gcm(&self) -> Result<GcmRaw, Ckr> {
        // SAFETY (the reads and param_bytes calls below): the structures are plain C data,
        // and their IV and AAD pointers are valid for their lengths (the contract of
        // mechanism()).
        if self.param_len == ulong(size_of::<LegacyGcmParams>()) {
            // SAFETY: see above.
            let g: LegacyGcmParams = unsafe { self.read() }?;
            return Ok(GcmRaw {
                // SAFETY: see above.
                iv: unsafe { param_bytes(g.p_iv, g.ul_iv_len) }?,
                // SAFETY: see above.
                aad: unsafe { param_bytes(g.p_aad, g.ul_aad_len) }?,
                tag_bits: g.ul_tag_bits,
            });
        }
        // SAFETY: see above.
        let g: CK_GCM_PARAMS = unsafe { self.read() }?;
        Ok(GcmRaw {
            // SAFETY: see above.
            iv: unsafe { param_bytes(g.pIv, g.ulIvLen) }?,
            // SAFETY: see above.
            aad: unsafe { param_bytes(g.pAAD, g.ulAADLen) }?,
            tag_bits: g.ulTagBits,
        })
    }

    /// `CK_RSA_PKCS_PSS_PARAMS`.
    ///
    /// # Errors
    /// `CKR_MECHANISM_PARAM_INVALID` for a wrong size.
    pub(crate) fn pss(&self) -> Result<CK_RSA_PKCS_PSS_PARAMS, Ckr> {
        // SAFETY: CK_RSA_PKCS_PSS_PARAMS is three CK_ULONGs, plain C data.
        unsafe { self.read() }
    }

    /// `CK_RSA_PKCS_OAEP_PARAMS`.
    ///
    /// # Errors
    /// `CKR_MECHANISM_PARAM_INVALID` for a wrong size or a bad source pointer.
    pub(crate) fn oaep(&self) -> Result<OaepRaw, Ckr> {
        // SAFETY: CK_RSA_PKCS_OAEP_PARAMS is plain C data.
        let o: CK_RSA_PKCS_OAEP_PARAMS = unsafe { self.read() }?;
        // SAFETY: the label pointer is valid for its length (the contract of mechanism()).
        let source_data =
            unsafe { param_bytes(o.pSourceData.cast_const().cast(), o.ulSourceDataLen) }?;
        Ok(OaepRaw {
            hash: o.hashAlg,
            mgf: o.mgf,
            source: o.source,
            source_data,
        })
    }

    /// `CK_ECDH1_DERIVE_PARAMS`.
    ///
    /// # Errors
    /// `CKR_MECHANISM_PARAM_INVALID` for a wrong size or bad inner pointers.
    pub(crate) fn ecdh1(&self) -> Result<Ecdh1Raw, Ckr> {
        // SAFETY: CK_ECDH1_DERIVE_PARAMS is plain C data.
        let e: CK_ECDH1_DERIVE_PARAMS = unsafe { self.read() }?;
        Ok(Ecdh1Raw {
            kdf: e.kdf,
            // SAFETY: the shared data pointer is valid for its length (mechanism()'s contract).
            shared_data: unsafe { param_bytes(e.pSharedData, e.ulSharedDataLen) }?,
            // SAFETY: the public data pointer is valid for its length (mechanism()'s contract).
            public_data: unsafe { param_bytes(e.pPublicData, e.ulPublicDataLen) }?,
        })
    }
}

/// `C_Initialize`'s argument: `None` for NULL.
///
/// # Safety
/// `p` is NULL or a `CK_C_INITIALIZE_ARGS` valid for reads.
pub(crate) unsafe fn init_args(p: *const c_void) -> Option<CK_C_INITIALIZE_ARGS> {
    // SAFETY: this function's contract; the structure holds integers, optional function
    // pointers and a pointer, for which the application's bytes are valid values.
    unsafe { in_value(p.cast::<CK_C_INITIALIZE_ARGS>()) }.ok()
}

/// A `CK_MECHANISM` a test built, for tests of the module below the C ABI (whose modules
/// forbid `unsafe`).
#[cfg(test)]
pub(crate) fn test_mechanism(m: &CK_MECHANISM) -> Option<MechPtr> {
    // SAFETY: test code only: every test builds the mechanism and its parameter from locals
    // that outlive the MechPtr it uses, with their true sizes.
    unsafe { mechanism(m) }
}

/// A `CK_INTERFACE` in a `static`: it points only at `'static` data.
#[repr(transparent)]
pub(crate) struct StaticInterface(pub(crate) CK_INTERFACE);

// SAFETY: a StaticInterface is built only from pointers to 'static, immutable data (a string
// literal and a static function list) and is never written, so sharing it between threads
// cannot race.
unsafe impl Sync for StaticInterface {}

#[cfg(test)]
mod tests {
    use std::ptr::{null, null_mut};

    use super::*;

    #[test]
    fn in_bytes_checks_null() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, or comes with a length the function rejects unread.
        unsafe {
            assert_eq!(in_bytes(null(), 0).unwrap(), b"");
            assert_eq!(in_bytes(null(), 3), Err(Ckr::ARGUMENTS_BAD));
            let data = *b"abc";
            assert_eq!(in_bytes(data.as_ptr(), 3).unwrap(), b"abc");
            assert_eq!(in_bytes(data.as_ptr(), MAX_IN + 1), Err(Ckr::ARGUMENTS_BAD));
            assert_eq!(in_value::<CK_ULONG>(null()), Err(Ckr::ARGUMENTS_BAD));
            assert_eq!(
                out_value::<CK_ULONG>(null_mut(), 1),
                Err(Ckr::ARGUMENTS_BAD)
            );
        }
    }

    #[test]
    fn out_buf_two_call_protocol() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, or comes with a length the function rejects unread.
        unsafe {
            let mut len: CK_ULONG = 0;
            assert_eq!(
                OutBuf::new(null_mut(), null_mut()).unwrap_err(),
                Ckr::ARGUMENTS_BAD
            );
            // NULL buffer: the length, CKR_OK.
            let out = OutBuf::new(null_mut(), &mut len).unwrap();
            assert_eq!(out.capacity(), None);
            out.write(b"hello").unwrap();
            assert_eq!(len, 5);
            // Too small: the needed length and CKR_BUFFER_TOO_SMALL.
            let mut buf = [0u8; 8];
            len = 2;
            let out = OutBuf::new(buf.as_mut_ptr(), &mut len).unwrap();
            assert_eq!(out.capacity(), Some(2));
            assert_eq!(out.write(b"hello"), Err(Ckr::BUFFER_TOO_SMALL));
            assert_eq!(len, 5);
            assert_eq!(buf, [0; 8]);
            // Large enough: copied, exact length.
            len = 8;
            let out = OutBuf::new(buf.as_mut_ptr(), &mut len).unwrap();
            out.write(b"hello").unwrap();
            assert_eq!(len, 5);
            assert_eq!(&buf[..5], b"hello");
        }
    }

    #[test]
    fn deliver_reports_lengths() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, or comes with a length the function rejects unread.
        unsafe {
            let mut len: CK_ULONG = 0;
            let out = OutBuf::new(null_mut(), &mut len).unwrap();
            out.deliver(Output::Len(64)).unwrap();
            assert_eq!(len, 64);
            let mut buf = [0u8; 4];
            len = 4;
            let out = OutBuf::new(buf.as_mut_ptr(), &mut len).unwrap();
            assert_eq!(out.deliver(Output::Len(64)), Err(Ckr::BUFFER_TOO_SMALL));
            assert_eq!(len, 64);
            len = 4;
            let out = OutBuf::new(buf.as_mut_ptr(), &mut len).unwrap();
            out.deliver(Output::Data(Zeroizing::new(vec![1, 2, 3])))
                .unwrap();
            assert_eq!((len, &buf[..3]), (3, &[1u8, 2, 3][..]));
        }
    }

    #[test]
    fn out_list_two_call_protocol() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, or comes with a length the function rejects unread.
        unsafe {
            let items: [CK_ULONG; 3] = [7, 8, 9];
            let mut count: CK_ULONG = 0;
            assert_eq!(
                out_list(null_mut(), null_mut(), &items),
                Err(Ckr::ARGUMENTS_BAD)
            );
            out_list(null_mut(), &mut count, &items).unwrap();
            assert_eq!(count, 3);
            let mut buf: [CK_ULONG; 3] = [0; 3];
            count = 2;
            assert_eq!(
                out_list(buf.as_mut_ptr(), &mut count, &items),
                Err(Ckr::BUFFER_TOO_SMALL)
            );
            assert_eq!(count, 3);
            count = 3;
            out_list(buf.as_mut_ptr(), &mut count, &items).unwrap();
            assert_eq!((count, buf), (3, items));
        }
    }

    #[test]
    fn templates_in_and_out() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, or comes with a length the function rejects unread.
        unsafe {
            let mut class: CK_ULONG = 4;
            let mut label = *b"key";
            let t = [
                CK_ATTRIBUTE {
                    type_: 0,
                    pValue: (&raw mut class).cast(),
                    ulValueLen: 8,
                },
                CK_ATTRIBUTE {
                    type_: 3,
                    pValue: label.as_mut_ptr().cast(),
                    ulValueLen: 3,
                },
                CK_ATTRIBUTE {
                    type_: 0x11,
                    pValue: null_mut(),
                    ulValueLen: 0,
                },
            ];
            let raw = template_in(t.as_ptr(), 3).unwrap();
            assert_eq!(raw[0].value, 4u64.to_ne_bytes());
            assert_eq!(raw[1].value, b"key");
            assert_eq!(raw[2].value, b"");
            assert_eq!(template_in(null(), 1), Err(Ckr::ARGUMENTS_BAD));
            assert!(template_in(null(), 0).unwrap().is_empty());
            let bad = [CK_ATTRIBUTE {
                type_: 3,
                pValue: null_mut(),
                ulValueLen: 4,
            }];
            assert_eq!(template_in(bad.as_ptr(), 1), Err(Ckr::ARGUMENTS_BAD));

            // Out: one length query, one value, one unavailable, one too-small value.
            let mut buf = [0u8; 4];
            let mut small = [0u8; 1];
            let mut t = [
                CK_ATTRIBUTE {
                    type_: 1,
                    pValue: null_mut(),
                    ulValueLen: 0,
                },
                CK_ATTRIBUTE {
                    type_: 2,
                    pValue: buf.as_mut_ptr().cast(),
                    ulValueLen: 4,
                },
                CK_ATTRIBUTE {
                    type_: 3,
                    pValue: null_mut(),
                    ulValueLen: 0,
                },
                CK_ATTRIBUTE {
                    type_: 4,
                    pValue: small.as_mut_ptr().cast(),
                    ulValueLen: 1,
                },
            ];
            let q = template_query(t.as_ptr(), 4).unwrap();
            assert_eq!(q[0].capacity, None);
            assert_eq!(q[1].capacity, Some(4));
            template_answer(
                t.as_mut_ptr(),
                &[
                    AttrAnswer::Len(9),
                    AttrAnswer::Value(Zeroizing::new(b"abc".to_vec())),
                    AttrAnswer::Unavailable,
                    AttrAnswer::Value(Zeroizing::new(b"toolong".to_vec())),
                ],
            )
            .unwrap();
            assert_eq!(t[0].ulValueLen, 9);
            assert_eq!(t[1].ulValueLen, 3);
            assert_eq!(&buf[..3], b"abc");
            assert_eq!(t[2].ulValueLen, CK_UNAVAILABLE_INFORMATION);
            assert_eq!(t[3].ulValueLen, CK_UNAVAILABLE_INFORMATION);
            assert_eq!(small, [0]);
        }
    }

    #[test]
    fn mechanism_parameters() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, or comes with a length the function rejects unread.
        unsafe {
            assert!(mechanism(null()).is_none());
            let mut iv = [1u8; 12];
            let mut aad = *b"aad";
            let gcm = CK_GCM_PARAMS {
                pIv: iv.as_mut_ptr(),
                ulIvLen: 12,
                ulIvBits: 96,
                pAAD: aad.as_mut_ptr(),
                ulAADLen: 3,
                ulTagBits: 128,
            };
            let m = CK_MECHANISM {
                mechanism: cryptoki_sys::CKM_AES_GCM,
                pParameter: (&raw const gcm).cast_mut().cast(),
                ulParameterLen: ulong(size_of::<CK_GCM_PARAMS>()),
            };
            let mp = mechanism(&m).unwrap();
            let g = mp.gcm().unwrap();
            assert_eq!(
                (g.iv, g.aad, g.tag_bits),
                (vec![1; 12], b"aad".to_vec(), 128)
            );
            // Wrong length → param invalid.
            let m2 = CK_MECHANISM {
                ulParameterLen: 7,
                ..m
            };
            assert_eq!(
                mechanism(&m2).unwrap().gcm(),
                Err(Ckr::MECHANISM_PARAM_INVALID)
            );
            // Legacy layout.
            let mut legacy = LegacyGcmParams {
                p_iv: iv.as_mut_ptr(),
                ul_iv_len: 12,
                p_aad: null_mut(),
                ul_aad_len: 0,
                ul_tag_bits: 128,
            };
            let m3 = CK_MECHANISM {
                mechanism: cryptoki_sys::CKM_AES_GCM,
                pParameter: (&raw mut legacy).cast(),
                ulParameterLen: ulong(size_of::<LegacyGcmParams>()),
            };
            let g = mechanism(&m3).unwrap().gcm().unwrap();
            assert_eq!((g.iv.len(), g.aad.len()), (12, 0));
            // NULL inner pointer with a length.
            let mut no_iv = CK_GCM_PARAMS {
                pIv: null_mut(),
                ..gcm
            };
            let m4 = CK_MECHANISM {
                pParameter: (&raw mut no_iv).cast(),
                ..m
            };
            assert_eq!(
                mechanism(&m4).unwrap().gcm(),
                Err(Ckr::MECHANISM_PARAM_INVALID)
            );
            // A parameter-less mechanism.
            let none = CK_MECHANISM {
                mechanism: cryptoki_sys::CKM_ECDSA,
                pParameter: null_mut(),
                ulParameterLen: 0,
            };
            let mp = mechanism(&none).unwrap();
            assert!(mp.has_no_param());
            assert_eq!(mp.bytes().unwrap(), b"");
            assert_eq!(mp.pss().unwrap_err(), Ckr::MECHANISM_PARAM_INVALID);
        }
    }

    #[test]
    fn oaep_and_ecdh_parameters() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, or comes with a length the function rejects unread.
        unsafe {
            let mut label = *b"L";
            let mut oaep = CK_RSA_PKCS_OAEP_PARAMS {
                hashAlg: cryptoki_sys::CKM_SHA256,
                mgf: cryptoki_sys::CKG_MGF1_SHA256,
                source: cryptoki_sys::CKZ_DATA_SPECIFIED,
                pSourceData: label.as_mut_ptr().cast(),
                ulSourceDataLen: 1,
            };
            let m = CK_MECHANISM {
                mechanism: cryptoki_sys::CKM_RSA_PKCS_OAEP,
                pParameter: (&raw mut oaep).cast(),
                ulParameterLen: ulong(size_of::<CK_RSA_PKCS_OAEP_PARAMS>()),
            };
            let o = mechanism(&m).unwrap().oaep().unwrap();
            assert_eq!(o.source_data, b"L");
            let mut point = [4u8; 65];
            let mut e = CK_ECDH1_DERIVE_PARAMS {
                kdf: cryptoki_sys::CKD_NULL,
                ulSharedDataLen: 0,
                pSharedData: null_mut(),
                ulPublicDataLen: 65,
                pPublicData: point.as_mut_ptr(),
            };
            let m = CK_MECHANISM {
                mechanism: cryptoki_sys::CKM_ECDH1_DERIVE,
                pParameter: (&raw mut e).cast(),
                ulParameterLen: ulong(size_of::<CK_ECDH1_DERIVE_PARAMS>()),
            };
            let d = mechanism(&m).unwrap().ecdh1().unwrap();
            assert_eq!(d.public_data.len(), 65);
            assert!(d.shared_data.is_empty());
        }
    }

    #[test]
    fn cstr_and_init_args() {
        // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
        // the call, with the size given, or comes with a length the function rejects unread.
        unsafe {
            assert_eq!(in_cstr(null()), None);
            assert_eq!(in_cstr(c"PKCS 11".as_ptr().cast()).unwrap(), b"PKCS 11");
            assert!(init_args(null()).is_none());
            let args = CK_C_INITIALIZE_ARGS {
                CreateMutex: None,
                DestroyMutex: None,
                LockMutex: None,
                UnlockMutex: None,
                flags: 2,
                pReserved: null_mut(),
            };
            let a = init_args((&raw const args).cast()).unwrap();
            assert_eq!(a.flags, 2);
        }
    }
}
