//! Attribute values between the application's C layout and the wire encoding of
//! [`cloudkey_protocol::msg`]: `CK_ULONG` ↔ 8-byte little-endian `u64`, `CK_BBOOL` ↔ one byte,
//! `CKA_ALLOWED_MECHANISMS` (an array of `CK_MECHANISM_TYPE`) ↔ concatenated `u64` LE, bytes
//! as they are. Vendor key type and mechanism numbers are translated on the way
//! ([`Numbering`]).
//!
//! Attribute-array attributes (`CKA_WRAP_TEMPLATE`, `CKA_UNWRAP_TEMPLATE`,
//! `CKA_DERIVE_TEMPLATE`) are not supported: `CKR_ATTRIBUTE_TYPE_INVALID`.
//!
//! [`answer`] implements the rules of `C_GetAttributeValue` (PKCS#11 3.0 §5.7.5).

use cloudkey_protocol::msg::{AttrValue, Attribute};
use cryptoki_sys as ck;
use zeroize::Zeroizing;

use crate::error::Ckr;
use crate::ffi::ptr::{AttrAnswer, AttrQuery, RawAttr};
use crate::mechanism::Numbering;

/// How an attribute's value is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `CK_ULONG` (a class, a key type, a length, a mechanism).
    Ulong(Num),
    /// `CK_BBOOL`.
    Bool,
    /// An array of `CK_MECHANISM_TYPE`.
    Mechanisms,
    /// An array of attributes: not supported.
    AttrArray,
    /// Bytes.
    Bytes,
}

/// Which numbering a `CK_ULONG` value is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Num {
    Plain,
    KeyType,
    Mechanism,
}

fn kind(ty: u64) -> Kind {
    match ty {
        ck::CKA_KEY_TYPE => Kind::Ulong(Num::KeyType),
        ck::CKA_KEY_GEN_MECHANISM | ck::CKA_MECHANISM_TYPE => Kind::Ulong(Num::Mechanism),
        ck::CKA_CLASS
        | ck::CKA_CERTIFICATE_TYPE
        | ck::CKA_CERTIFICATE_CATEGORY
        | ck::CKA_JAVA_MIDP_SECURITY_DOMAIN
        | ck::CKA_NAME_HASH_ALGORITHM
        | ck::CKA_VALUE_LEN
        | ck::CKA_VALUE_BITS
        | ck::CKA_MODULUS_BITS
        | ck::CKA_PRIME_BITS
        | ck::CKA_SUBPRIME_BITS
        | ck::CKA_HW_FEATURE_TYPE
        | ck::CKA_PROFILE_ID => Kind::Ulong(Num::Plain),
        ck::CKA_TOKEN
        | ck::CKA_PRIVATE
        | ck::CKA_TRUSTED
        | ck::CKA_SENSITIVE
        | ck::CKA_ENCRYPT
        | ck::CKA_DECRYPT
        | ck::CKA_WRAP
        | ck::CKA_UNWRAP
        | ck::CKA_SIGN
        | ck::CKA_SIGN_RECOVER
        | ck::CKA_VERIFY
        | ck::CKA_VERIFY_RECOVER
        | ck::CKA_DERIVE
        | ck::CKA_EXTRACTABLE
        | ck::CKA_LOCAL
        | ck::CKA_NEVER_EXTRACTABLE
        | ck::CKA_ALWAYS_SENSITIVE
        | ck::CKA_MODIFIABLE
        | ck::CKA_COPYABLE
        | ck::CKA_DESTROYABLE
        | ck::CKA_ALWAYS_AUTHENTICATE
        | ck::CKA_WRAP_WITH_TRUSTED
        | ck::CKA_RESET_ON_INIT
        | ck::CKA_HAS_RESET => Kind::Bool,
        ck::CKA_ALLOWED_MECHANISMS => Kind::Mechanisms,
        ck::CKA_WRAP_TEMPLATE | ck::CKA_UNWRAP_TEMPLATE | ck::CKA_DERIVE_TEMPLATE => {
            Kind::AttrArray
        }
        _ => Kind::Bytes,
    }
}

const ULONG: usize = std::mem::size_of::<ck::CK_ULONG>();

fn ulong_in(b: &[u8]) -> Option<u64> {
    Some(u64::from_ne_bytes(b.try_into().ok()?))
}

fn translate_in(n: &Numbering, num: Num, v: u64) -> Option<u64> {
    match num {
        Num::Plain => Some(v),
        Num::KeyType => n.key_type_to_wire(v),
        Num::Mechanism => n.mech_to_wire(v),
    }
}

fn translate_out(n: &Numbering, num: Num, v: u64) -> u64 {
    match num {
        Num::Plain => v,
        Num::KeyType => n.key_type_to_app(v),
        Num::Mechanism => n.mech_to_app(v),
    }
}

/// Converts an application template to the wire.
///
/// # Errors
/// `CKR_ATTRIBUTE_TYPE_INVALID` for attribute arrays; `CKR_ATTRIBUTE_VALUE_INVALID` for a
/// `CK_ULONG` or `CK_BBOOL` of the wrong size, or a vendor number that was renamed away.
pub(crate) fn to_wire(raw: &[RawAttr<'_>], n: &Numbering) -> Result<Vec<Attribute>, Ckr> {
    raw.iter()
        .map(|a| {
            let value = match kind(a.ty) {
                Kind::AttrArray => return Err(Ckr::ATTRIBUTE_TYPE_INVALID),
                Kind::Bytes => a.value.to_vec(),
                Kind::Bool => match a.value {
                    [b] => vec![u8::from(*b != 0)],
                    _ => return Err(Ckr::ATTRIBUTE_VALUE_INVALID),
                },
                Kind::Ulong(num) => ulong_in(a.value)
                    .and_then(|v| translate_in(n, num, v))
                    .ok_or(Ckr::ATTRIBUTE_VALUE_INVALID)?
                    .to_le_bytes()
                    .to_vec(),
                Kind::Mechanisms => {
                    if a.value.len() % ULONG != 0 {
                        return Err(Ckr::ATTRIBUTE_VALUE_INVALID);
                    }
                    let mut out = Vec::with_capacity(a.value.len());
                    for c in a.value.chunks_exact(ULONG) {
                        let v = ulong_in(c)
                            .and_then(|v| n.mech_to_wire(v))
                            .ok_or(Ckr::ATTRIBUTE_VALUE_INVALID)?;
                        out.extend_from_slice(&v.to_le_bytes());
                    }
                    out
                }
            };
            Ok(Attribute { ty: a.ty, value })
        })
        .collect()
}

/// Converts a wire value of attribute `ty` to the application's layout. A malformed wire value
/// (a `CK_ULONG` that is not 8 bytes) is passed on as it is.
pub(crate) fn to_app(ty: u64, wire: Vec<u8>, n: &Numbering) -> Zeroizing<Vec<u8>> {
    let wire = Zeroizing::new(wire);
    let le = |b: &[u8]| b.try_into().ok().map(u64::from_le_bytes);
    match kind(ty) {
        Kind::Ulong(num) => match le(&wire) {
            Some(v) => Zeroizing::new(translate_out(n, num, v).to_ne_bytes().to_vec()),
            None => wire,
        },
        Kind::Mechanisms if wire.len() % 8 == 0 => {
            let mut out = Vec::with_capacity(wire.len());
            for c in wire.chunks_exact(8) {
                let v = le(c).unwrap_or_default();
                out.extend_from_slice(&n.mech_to_app(v).to_ne_bytes());
            }
            Zeroizing::new(out)
        }
        _ => wire,
    }
}

/// True when `ty` can be asked of the node (attribute arrays are answered locally as
/// invalid).
pub(crate) fn is_queryable(ty: u64) -> bool {
    kind(ty) != Kind::AttrArray
}

/// The `CKA_TOKEN` value of a wire template, if given.
pub(crate) fn token_flag(template: &[Attribute]) -> Option<bool> {
    template
        .iter()
        .rev()
        .find(|a| a.ty == ck::CKA_TOKEN)
        .map(|a| a.value.first().is_some_and(|b| *b != 0))
}

/// Builds the answers of `C_GetAttributeValue` from the node's values (one per query whose
/// type [`is_queryable`], in order) and the return value, following PKCS#11 3.0 §5.7.5: every
/// attribute is processed; sensitive and invalid ones get `CK_UNAVAILABLE_INFORMATION`, as do
/// values that do not fit; a NULL `pValue` gets the length. The return value is
/// `CKR_ATTRIBUTE_SENSITIVE`, else `CKR_ATTRIBUTE_TYPE_INVALID`, else `CKR_BUFFER_TOO_SMALL`,
/// else `CKR_OK` (the specification lets a module return any applicable one).
pub(crate) fn answer(
    queries: &[AttrQuery],
    values: Vec<AttrValue>,
    n: &Numbering,
) -> (Vec<AttrAnswer>, Result<(), Ckr>) {
    let (mut sensitive, mut invalid, mut small) = (false, false, false);
    let mut values = values.into_iter();
    let answers = queries
        .iter()
        .map(|q| {
            let value = if is_queryable(q.ty) {
                values.next().unwrap_or(AttrValue::Invalid)
            } else {
                AttrValue::Invalid
            };
            match value {
                AttrValue::Sensitive => {
                    sensitive = true;
                    AttrAnswer::Unavailable
                }
                AttrValue::Invalid => {
                    invalid = true;
                    AttrAnswer::Unavailable
                }
                AttrValue::Value(v) => {
                    let v = to_app(q.ty, v, n);
                    match q.capacity {
                        None => AttrAnswer::Len(v.len()),
                        Some(cap) if cap < v.len() => {
                            small = true;
                            AttrAnswer::Unavailable
                        }
                        Some(_) => AttrAnswer::Value(v),
                    }
                }
            }
        })
        .collect();
    let rv = if sensitive {
        Err(Ckr::ATTRIBUTE_SENSITIVE)
    } else if invalid {
        Err(Ckr::ATTRIBUTE_TYPE_INVALID)
    } else if small {
        Err(Ckr::BUFFER_TOO_SMALL)
    } else {
        Ok(())
    };
    (answers, rv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mechanism::VendorNumbers;

    fn raw(ty: u64, value: &[u8]) -> RawAttr<'_> {
        RawAttr { ty, value }
    }

    #[test]
    fn template_to_wire() {
        let n = Numbering::default();
        let class = ck::CKO_PRIVATE_KEY.to_ne_bytes();
        let mechs: Vec<u8> = [ck::CKM_ECDSA, ck::CKM_ECDSA_SHA256]
            .iter()
            .flat_map(|m| m.to_ne_bytes())
            .collect();
        let t = [
            raw(ck::CKA_CLASS, &class),
            raw(ck::CKA_SIGN, &[7]),
            raw(ck::CKA_LABEL, b"k1"),
            raw(ck::CKA_ALLOWED_MECHANISMS, &mechs),
        ];
        let w = to_wire(&t, &n).unwrap();
        assert_eq!(w[0], Attribute::ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY));
        assert_eq!(w[1], Attribute::bool(ck::CKA_SIGN, true));
        assert_eq!(w[2], Attribute::bytes(ck::CKA_LABEL, b"k1".to_vec()));
        let mut expect = ck::CKM_ECDSA.to_le_bytes().to_vec();
        expect.extend_from_slice(&ck::CKM_ECDSA_SHA256.to_le_bytes());
        assert_eq!(w[3].value, expect);
        assert_eq!(token_flag(&w), None);

        for bad in [
            raw(ck::CKA_CLASS, &[1, 2, 3]),
            raw(ck::CKA_TOKEN, &[]),
            raw(ck::CKA_TOKEN, &[1, 0]),
            raw(ck::CKA_ALLOWED_MECHANISMS, &[1, 2, 3]),
        ] {
            assert_eq!(to_wire(&[bad], &n), Err(Ckr::ATTRIBUTE_VALUE_INVALID));
        }
        assert_eq!(
            to_wire(&[raw(ck::CKA_WRAP_TEMPLATE, &[])], &n),
            Err(Ckr::ATTRIBUTE_TYPE_INVALID)
        );
        let t = to_wire(&[raw(ck::CKA_TOKEN, &[1])], &n).unwrap();
        assert_eq!(token_flag(&t), Some(true));
    }

    #[test]
    fn vendor_key_types_are_translated() {
        let n = Numbering::new(&VendorNumbers {
            key_type_sm2: Some(0x8000_0004),
            ..VendorNumbers::default()
        })
        .unwrap();
        let app = 0x8000_0004u64.to_ne_bytes();
        let w = to_wire(&[raw(ck::CKA_KEY_TYPE, &app)], &n).unwrap();
        assert_eq!(w[0].value, cloudkey_protocol::vendor::CKK_SM2.to_le_bytes());
        let back = to_app(ck::CKA_KEY_TYPE, w[0].value.clone(), &n);
        assert_eq!(*back, app);
        // cloudkey's own number was renamed away.
        let old = cloudkey_protocol::vendor::CKK_SM2.to_ne_bytes();
        assert_eq!(
            to_wire(&[raw(ck::CKA_KEY_TYPE, &old)], &n),
            Err(Ckr::ATTRIBUTE_VALUE_INVALID)
        );
    }

    #[test]
    fn get_attribute_value_rules() {
        let n = Numbering::default();
        let q = |ty, capacity| AttrQuery { ty, capacity };
        let class = ck::CKO_SECRET_KEY.to_le_bytes().to_vec();
        // All fine: a length query and a value.
        let (a, rv) = answer(
            &[q(ck::CKA_LABEL, None), q(ck::CKA_CLASS, Some(8))],
            vec![
                AttrValue::Value(b"abc".to_vec()),
                AttrValue::Value(class.clone()),
            ],
            &n,
        );
        assert_eq!(rv, Ok(()));
        assert_eq!(a[0], AttrAnswer::Len(3));
        assert_eq!(
            a[1],
            AttrAnswer::Value(Zeroizing::new(ck::CKO_SECRET_KEY.to_ne_bytes().to_vec()))
        );
        // Too small, invalid, sensitive, attribute array: all processed; sensitive wins.
        let (a, rv) = answer(
            &[
                q(ck::CKA_LABEL, Some(1)),
                q(0x9999, Some(8)),
                q(ck::CKA_VALUE, None),
                q(ck::CKA_WRAP_TEMPLATE, None),
                q(ck::CKA_CLASS, Some(8)),
            ],
            vec![
                AttrValue::Value(b"abc".to_vec()),
                AttrValue::Invalid,
                AttrValue::Sensitive,
                AttrValue::Value(class),
            ],
            &n,
        );
        assert_eq!(rv, Err(Ckr::ATTRIBUTE_SENSITIVE));
        assert!(a[..4].iter().all(|x| *x == AttrAnswer::Unavailable));
        assert!(matches!(a[4], AttrAnswer::Value(_)));
        let (_, rv) = answer(
            &[q(ck::CKA_LABEL, Some(1)), q(0x9999, None)],
            vec![AttrValue::Value(b"abc".to_vec()), AttrValue::Invalid],
            &n,
        );
        assert_eq!(rv, Err(Ckr::ATTRIBUTE_TYPE_INVALID));
        let (_, rv) = answer(
            &[q(ck::CKA_LABEL, Some(1))],
            vec![AttrValue::Value(b"abc".to_vec())],
            &n,
        );
        assert_eq!(rv, Err(Ckr::BUFFER_TOO_SMALL));
    }
}
