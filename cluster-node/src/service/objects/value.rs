//! Attribute values: the `CK_BBOOL`/`CK_ULONG` encodings, reading them off a record, and
//! [`Template`], a request's attributes indexed by type.

use std::collections::BTreeMap;

use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{Attribute, ObjectId};
use cloudkey_protocol::ErrorCode;

use super::*;
use crate::service::mechanism::{curve_of, vendor, KeyAlg};
use crate::state::ObjectRecord;
use crate::{NodeError, Result};

pub(crate) fn ulong_value(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub(crate) fn bool_value(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}

pub(super) fn refuse(code: ErrorCode, detail: impl Into<String>) -> NodeError {
    NodeError::refuse(code, detail)
}

pub(super) fn invalid_value(ty: u64, why: impl std::fmt::Display) -> NodeError {
    refuse(
        ErrorCode::AttributeValueInvalid,
        format!("attribute 0x{ty:x}: {why}"),
    )
}

pub(super) fn check_kind(kind: Kind, ty: u64, v: &[u8]) -> Result<()> {
    let ok = match kind {
        Kind::Bool => matches!(v, [0] | [1]),
        Kind::Ulong => v.len() == 8,
        Kind::UlongArray => v.len() % 8 == 0,
        Kind::Bytes => true,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid_value(
            ty,
            match kind {
                Kind::Bool => "a CK_BBOOL is one byte, 0 or 1",
                Kind::Ulong => "a CK_ULONG is 8 bytes",
                Kind::UlongArray => "a CK_ULONG array is a multiple of 8 bytes",
                Kind::Bytes => "",
            },
        ))
    }
}

pub(super) fn decode_ulong(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_le_bytes)
}

/// A `CK_BBOOL` attribute of a record.
pub(crate) fn record_bool(record: &ObjectRecord, ty: u64) -> Option<bool> {
    match record.attrs.get(&ty).map(Vec::as_slice) {
        Some([0]) => Some(false),
        Some([1]) => Some(true),
        _ => None,
    }
}

/// A `CK_ULONG` attribute of a record.
pub(crate) fn record_ulong(record: &ObjectRecord, ty: u64) -> Option<u64> {
    record.attrs.get(&ty).and_then(|v| decode_ulong(v))
}

/// A record's class.
pub(crate) fn class_of(record: &ObjectRecord) -> Option<u64> {
    record_ulong(record, ck::CKA_CLASS)
}

/// The kind of key a record is, from `CKA_KEY_TYPE` (and `CKA_EC_PARAMS` for `CKK_EC`).
pub(crate) fn alg_of(record: &ObjectRecord) -> Option<KeyAlg> {
    match record_ulong(record, ck::CKA_KEY_TYPE)? {
        ck::CKK_EC => curve_of(record.attrs.get(&ck::CKA_EC_PARAMS)?),
        vendor::CKK_SM2 => Some(KeyAlg::Sm2),
        ck::CKK_RSA => Some(KeyAlg::Rsa),
        ck::CKK_AES => Some(KeyAlg::Aes),
        vendor::CKK_SM4 => Some(KeyAlg::Sm4),
        ck::CKK_GENERIC_SECRET => Some(KeyAlg::Generic),
        _ => None,
    }
}

/// True unless the record says `CKA_PRIVATE` false (a record without it is treated as private).
pub(crate) fn is_private(record: &ObjectRecord) -> bool {
    record_bool(record, ck::CKA_PRIVATE) != Some(false)
}

/// A fresh random object id.
///
/// # Errors
/// [`NodeError::Internal`] when the random generator fails.
pub(crate) fn new_object_id() -> Result<ObjectId> {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| NodeError::Internal("the random generator failed".into()))?;
    Ok(ObjectId(id))
}

/// A template: attribute types to values, borrowed from the request (secret values are not
/// copied).
pub(crate) struct Template<'a> {
    attrs: BTreeMap<u64, &'a [u8]>,
}

impl<'a> Template<'a> {
    /// Indexes a template.
    ///
    /// # Errors
    /// `CKR_TEMPLATE_INCONSISTENT` for an attribute given twice with different values,
    /// `CKR_ARGUMENTS_BAD` above [`MAX_TEMPLATE_ATTRS`], `CKR_ATTRIBUTE_VALUE_INVALID` for a value
    /// longer than [`MAX_ATTR_LEN`].
    pub(crate) fn parse(template: &'a [Attribute]) -> Result<Self> {
        if template.len() > MAX_TEMPLATE_ATTRS {
            return Err(refuse(
                ErrorCode::ArgumentsBad,
                format!("at most {MAX_TEMPLATE_ATTRS} attributes per template"),
            ));
        }
        let mut attrs = BTreeMap::new();
        for at in template {
            if at.value.len() > MAX_ATTR_LEN {
                return Err(invalid_value(
                    at.ty,
                    format!("longer than {MAX_ATTR_LEN} bytes"),
                ));
            }
            if let Some(prev) = attrs.insert(at.ty, at.value.as_slice()) {
                if prev != at.value.as_slice() {
                    return Err(refuse(
                        ErrorCode::TemplateInconsistent,
                        format!("attribute 0x{:x} given twice with different values", at.ty),
                    ));
                }
            }
        }
        Ok(Self { attrs })
    }

    pub(crate) fn get(&self, ty: u64) -> Option<&'a [u8]> {
        self.attrs.get(&ty).copied()
    }

    pub(crate) fn has(&self, ty: u64) -> bool {
        self.attrs.contains_key(&ty)
    }

    pub(crate) fn bool(&self, ty: u64) -> Result<Option<bool>> {
        self.get(ty)
            .map(|v| {
                check_kind(Kind::Bool, ty, v)?;
                Ok(v == [1])
            })
            .transpose()
    }

    pub(crate) fn ulong(&self, ty: u64) -> Result<Option<u64>> {
        self.get(ty)
            .map(|v| decode_ulong(v).ok_or_else(|| invalid_value(ty, "a CK_ULONG is 8 bytes")))
            .transpose()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (u64, &'a [u8])> + '_ {
        self.attrs.iter().map(|(t, v)| (*t, *v))
    }
}
