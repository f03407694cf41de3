//! Building records: a new object's attributes from a template, changes to them, and the
//! public parts of keys.

use std::collections::BTreeMap;

use cloudkey_chip::{BlobHeader, KeyUsage, NewKey, PublicKey};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{ObjectId, UserType};
use cloudkey_protocol::ErrorCode;

use super::*;
use crate::service::mechanism::{curve_of, vendor, KeyAlg, P256_OID_DER};
use crate::service::Session;
use crate::state::ObjectRecord;
use crate::Result;

/// Builds the attributes of a new object of `class` from a template: checks every template
/// attribute against the class's table, keeps the caller's values, adds `computed` (the values
/// the node determines; a template may repeat them exactly) and fills defaults. Attributes in
/// `skip` were handled by the caller.
///
/// # Errors
/// `CKR_ATTRIBUTE_TYPE_INVALID` for an attribute the class does not have,
/// `CKR_ATTRIBUTE_VALUE_INVALID` for a badly encoded value, `CKR_ATTRIBUTE_READ_ONLY` for one only
/// the token sets (`CKA_LOCAL`, ...) or `CKA_TRUSTED` true outside the SO,
/// `CKR_TEMPLATE_INCONSISTENT` for key material outside `C_CreateObject` or a value that
/// contradicts a computed one.
pub(crate) fn build_attrs(
    s: Session,
    id: ObjectId,
    class: u64,
    alg: Option<KeyAlg>,
    tmpl: &Template<'_>,
    skip: &[u64],
    computed: Vec<(u64, Vec<u8>)>,
) -> Result<BTreeMap<u64, Vec<u8>>> {
    let computed: BTreeMap<u64, Vec<u8>> = computed.into_iter().collect();
    let mut attrs = BTreeMap::new();
    for (ty, v) in tmpl.iter() {
        if skip.contains(&ty) {
            continue;
        }
        let sp = spec(class, alg, ty).ok_or_else(|| {
            refuse(
                ErrorCode::AttributeTypeInvalid,
                format!("attribute 0x{ty:x} is not one of an object of class 0x{class:x}"),
            )
        })?;
        check_kind(sp.kind, ty, v)?;
        match sp.role {
            Role::TokenSet => {
                return Err(refuse(
                    ErrorCode::AttributeReadOnly,
                    format!("attribute 0x{ty:x} is set by the token"),
                ))
            }
            Role::Material => {
                return Err(refuse(
                    ErrorCode::TemplateInconsistent,
                    format!(
                        "attribute 0x{ty:x} is key material; only C_CreateObject takes a key \
                         by value"
                    ),
                ))
            }
            Role::Derived => match computed.get(&ty) {
                Some(c) if c.as_slice() == v => {}
                Some(_) => {
                    return Err(refuse(
                        ErrorCode::TemplateInconsistent,
                        format!("attribute 0x{ty:x} contradicts the key or the other attributes"),
                    ))
                }
                None => {
                    return Err(refuse(
                        ErrorCode::AttributeReadOnly,
                        format!("attribute 0x{ty:x} cannot be given here"),
                    ))
                }
            },
            Role::Free => {
                check_new_value(s, sp, v)?;
                attrs.insert(ty, v.to_vec());
            }
        }
    }
    attrs.extend(computed);
    for sp in tables(class, alg).into_iter().flat_map(|t| t.iter()) {
        if attrs.contains_key(&sp.ty) {
            continue;
        }
        let value = match sp.default {
            DefaultValue::None => continue,
            DefaultValue::False => bool_value(false),
            DefaultValue::True => bool_value(true),
            DefaultValue::Empty => Vec::new(),
            DefaultValue::Ulong(v) => ulong_value(v),
            DefaultValue::Usage => bool_value(usage_default(sp.ty, alg)),
            DefaultValue::Private => {
                bool_value(matches!(class, ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY))
            }
        };
        attrs.insert(sp.ty, value);
    }
    attrs.insert(ck::CKA_UNIQUE_ID, id.to_string().into_bytes());
    Ok(attrs)
}

/// Rules for a caller-given value of a new object (creation, or a change in a copy).
pub(super) fn check_new_value(s: Session, sp: &Spec, v: &[u8]) -> Result<()> {
    if (sp.set == Change::SoTrue) && v == [1] && s.user != Some(UserType::So) {
        return Err(refuse(
            ErrorCode::AttributeReadOnly,
            "only the SO can set CKA_TRUSTED",
        ));
    }
    if sp.ty == ck::CKA_ALWAYS_AUTHENTICATE && v == [1] {
        return Err(invalid_value(
            sp.ty,
            "CKA_ALWAYS_AUTHENTICATE is not supported (no context-specific login)",
        ));
    }
    Ok(())
}

/// Checks a change of an existing attribute to `new` under `rule`.
pub(super) fn check_change(
    s: Session,
    sp: &Spec,
    rule: Change,
    chip_key: bool,
    new: &[u8],
) -> Result<()> {
    let read_only = |why: &str| {
        Err(refuse(
            ErrorCode::AttributeReadOnly,
            format!("attribute 0x{:x} {why}", sp.ty),
        ))
    };
    let to_true = new == [1];
    match rule {
        Change::Never => read_only("cannot be changed"),
        Change::Free => Ok(()),
        Change::ToTrue if to_true => Ok(()),
        Change::ToTrue => read_only("can only change from false to true"),
        Change::ToFalse if !to_true => Ok(()),
        Change::ToFalse => read_only("can only change from true to false"),
        Change::Usage if !chip_key || !to_true => Ok(()),
        Change::Usage => read_only(
            "is bound into the key's chip blob: it can be turned off, not on (make a new key)",
        ),
        Change::SoTrue => check_new_value(s, sp, new),
    }
}

/// Finishes the security attributes of a key a chip just made, from the flags the chip sealed
/// into its blob: `CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE` (*Base* §4.9,
/// §4.10), and `CKA_KEY_GEN_MECHANISM` (*Base* §4.7: the generating mechanism, else
/// `CK_UNAVAILABLE_INFORMATION`).
///
/// # Errors
/// [`NodeError::Chip`] for a blob whose header does not parse.
pub(crate) fn finish_chip_key(
    attrs: &mut BTreeMap<u64, Vec<u8>>,
    new: &NewKey,
    gen_mechanism: Option<u64>,
) -> Result<()> {
    let header = BlobHeader::parse(new.blob.as_bytes())?;
    attrs.insert(
        ck::CKA_LOCAL,
        bool_value(header.usage.contains(KeyUsage::LOCAL)),
    );
    attrs.insert(
        ck::CKA_ALWAYS_SENSITIVE,
        bool_value(header.usage.contains(KeyUsage::ALWAYS_SENSITIVE)),
    );
    attrs.insert(
        ck::CKA_NEVER_EXTRACTABLE,
        bool_value(header.usage.contains(KeyUsage::NEVER_EXTRACTABLE)),
    );
    attrs.insert(
        ck::CKA_KEY_GEN_MECHANISM,
        ulong_value(gen_mechanism.unwrap_or(ck::CK_UNAVAILABLE_INFORMATION)),
    );
    Ok(())
}

/// The chip usage flags a key record asks for.
pub(crate) fn usage_of(attrs: &BTreeMap<u64, Vec<u8>>) -> KeyUsage {
    let on = |ty: u64| attrs.get(&ty).is_some_and(|v| v.as_slice() == [1]);
    let mut usage = KeyUsage::empty();
    for (ty, flag) in [
        (ck::CKA_SIGN, KeyUsage::SIGN),
        (ck::CKA_VERIFY, KeyUsage::VERIFY),
        (ck::CKA_ENCRYPT, KeyUsage::ENCRYPT),
        (ck::CKA_DECRYPT, KeyUsage::DECRYPT),
        (ck::CKA_WRAP, KeyUsage::WRAP),
        (ck::CKA_UNWRAP, KeyUsage::UNWRAP),
        (ck::CKA_DERIVE, KeyUsage::DERIVE),
        (ck::CKA_EXTRACTABLE, KeyUsage::EXTRACTABLE),
        (ck::CKA_SENSITIVE, KeyUsage::SENSITIVE),
    ] {
        if on(ty) {
            usage |= flag;
        }
    }
    usage
}

/// The attributes of a key pair's public part (on both halves): `CKA_EC_PARAMS`,
/// `CKA_EC_POINT` (DER OCTET STRING), or `CKA_MODULUS`, `CKA_PUBLIC_EXPONENT`,
/// `CKA_MODULUS_BITS`; and `CKA_PUBLIC_KEY_INFO` (the DER `SubjectPublicKeyInfo`).
///
/// # Errors
/// `CKR_DEVICE_ERROR` when the chip's public key does not fit `alg`.
pub(crate) fn public_attrs(
    alg: KeyAlg,
    ec_params: &[u8],
    public: &PublicKey,
) -> Result<Vec<(u64, Vec<u8>)>> {
    match (alg, public) {
        (KeyAlg::P256, PublicKey::EcP256(point)) | (KeyAlg::Sm2, PublicKey::Sm2(point)) => {
            let point: [u8; 65] = point.as_slice().try_into().map_err(|_| {
                refuse(
                    ErrorCode::DeviceError,
                    "the chip returned a malformed EC point",
                )
            })?;
            Ok(vec![
                (ck::CKA_EC_PARAMS, ec_params.to_vec()),
                (ck::CKA_EC_POINT, der::ec_point_der(&point)),
                (
                    ck::CKA_PUBLIC_KEY_INFO,
                    der::spki_ec(curve_params(alg), &point),
                ),
            ])
        }
        (KeyAlg::Rsa, PublicKey::Rsa { n, e }) => {
            let n = der::strip(n);
            Ok(vec![
                (ck::CKA_MODULUS, n.to_vec()),
                (ck::CKA_PUBLIC_EXPONENT, der::strip(e).to_vec()),
                (
                    ck::CKA_MODULUS_BITS,
                    ulong_value(u64::from(der::bit_len(n))),
                ),
                (ck::CKA_PUBLIC_KEY_INFO, der::spki_rsa(n, e)),
            ])
        }
        _ => Err(refuse(
            ErrorCode::DeviceError,
            format!("the chip returned a public key that is not {}", alg.name()),
        )),
    }
}

/// The public key of a key record, for verification, encryption and wrapping with public key
/// objects.
///
/// # Errors
/// `CKR_KEY_TYPE_INCONSISTENT` when the record lacks a usable public key.
pub(crate) fn public_key_of(record: &ObjectRecord, alg: KeyAlg) -> Result<PublicKey> {
    let missing = || {
        refuse(
            ErrorCode::KeyTypeInconsistent,
            format!(
                "object {} has no usable {} public key",
                record.id,
                alg.name()
            ),
        )
    };
    match alg {
        KeyAlg::P256 | KeyAlg::Sm2 => {
            let point = record
                .attrs
                .get(&ck::CKA_EC_POINT)
                .and_then(|p| der::ec_point(p))
                .ok_or_else(missing)?;
            Ok(if alg == KeyAlg::P256 {
                PublicKey::EcP256(point.to_vec())
            } else {
                PublicKey::Sm2(point.to_vec())
            })
        }
        KeyAlg::Rsa => {
            let n = record.attrs.get(&ck::CKA_MODULUS).ok_or_else(missing)?;
            let e = record
                .attrs
                .get(&ck::CKA_PUBLIC_EXPONENT)
                .ok_or_else(missing)?;
            Ok(PublicKey::Rsa {
                n: der::strip(n).to_vec(),
                e: der::strip(e).to_vec(),
            })
        }
        _ => Err(missing()),
    }
}

/// The key kind a key template names: `CKA_KEY_TYPE` (and `CKA_EC_PARAMS` for `CKK_EC`), checked
/// against the object class.
///
/// # Errors
/// `CKR_TEMPLATE_INCOMPLETE` for `CKK_EC` without `CKA_EC_PARAMS`, `CKR_CURVE_NOT_SUPPORTED` for
/// a curve other than P-256 and SM2, `CKR_TEMPLATE_INCONSISTENT` for a key type of another class
/// or `CKK_SM2` with another curve, `CKR_ATTRIBUTE_VALUE_INVALID` for an unsupported key type.
pub(crate) fn template_alg(class: u64, ckk: u64, ec_params: Option<&[u8]>) -> Result<KeyAlg> {
    let alg = match ckk {
        ck::CKK_EC => {
            let params = ec_params.ok_or_else(|| {
                refuse(ErrorCode::TemplateIncomplete, "CKK_EC needs CKA_EC_PARAMS")
            })?;
            curve_from_params(params)?
        }
        vendor::CKK_SM2 => {
            if ec_params.is_some_and(|p| curve_of(p) != Some(KeyAlg::Sm2)) {
                return Err(refuse(
                    ErrorCode::TemplateInconsistent,
                    "CKK_SM2 with CKA_EC_PARAMS of another curve",
                ));
            }
            KeyAlg::Sm2
        }
        ck::CKK_RSA => KeyAlg::Rsa,
        ck::CKK_AES => KeyAlg::Aes,
        vendor::CKK_SM4 => KeyAlg::Sm4,
        ck::CKK_GENERIC_SECRET => KeyAlg::Generic,
        other => {
            return Err(invalid_value(
                ck::CKA_KEY_TYPE,
                format!("key type 0x{other:x} is not supported"),
            ))
        }
    };
    let fits = match class {
        ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY => alg.is_pair(),
        ck::CKO_SECRET_KEY => !alg.is_pair(),
        _ => false,
    };
    if !fits {
        return Err(refuse(
            ErrorCode::TemplateInconsistent,
            format!("key type 0x{ckk:x} does not fit object class 0x{class:x}"),
        ));
    }
    Ok(alg)
}

/// The curve of `CKA_EC_PARAMS`.
///
/// # Errors
/// `CKR_CURVE_NOT_SUPPORTED`.
pub(crate) fn curve_from_params(params: &[u8]) -> Result<KeyAlg> {
    curve_of(params).ok_or_else(|| {
        refuse(
            ErrorCode::CurveNotSupported,
            "only the P-256 and SM2 curves are supported",
        )
    })
}

/// The canonical `CKA_EC_PARAMS` of a curve (the OID's DER).
pub(crate) fn curve_params(alg: KeyAlg) -> &'static [u8] {
    if alg == KeyAlg::Sm2 {
        vendor::SM2_CURVE_OID_DER
    } else {
        P256_OID_DER
    }
}

/// Checks that an uncompressed point lies on the curve of `alg`.
pub(crate) fn point_on_curve(alg: KeyAlg, point: &[u8; 65]) -> bool {
    match alg {
        KeyAlg::P256 => aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            point,
        )
        .is_ok(),
        KeyAlg::Sm2 => sm2::PublicKey::from_sec1_bytes(point).is_ok(),
        _ => false,
    }
}
