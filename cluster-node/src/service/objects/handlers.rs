//! The object operations (*Base* §5.7): create, copy, destroy, get and set attributes, find.

use std::collections::BTreeMap;

use cloudkey_chip::wire::Request as ChipRequest;
use cloudkey_chip::{KeyId, KeyTemplate, NewKey, PublicKey, SecretBytes};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{AttrValue, Attribute, ObjectId};
use cloudkey_protocol::ErrorCode;
use zeroize::Zeroizing;

use super::*;
use crate::service::mechanism::KeyAlg;
use crate::service::{Ctx, Plan, Session};
use crate::state::{Command, ObjectRecord};
use crate::Result;

/// Imports clear key material into a chip and returns the sealed key.
pub(super) async fn import(
    ctx: &Ctx,
    template: KeyTemplate,
    material: Zeroizing<Vec<u8>>,
) -> Result<NewKey> {
    let mut material = material;
    // Move the bytes out (no copy left behind); SecretBytes zeroizes them when dropped.
    let material = SecretBytes::new(std::mem::take(&mut *material));
    Ok(ctx
        .pool
        .call(ChipRequest::ImportKey { template, material }, &[])
        .await?
        .into_new_key()?)
}

// ---------------------------------------------------------------------------------------------
// The operations

/// `C_CreateObject` (*Base* §5.7): a data object, an X.509 certificate, a public key (EC/SM2
/// point or RSA modulus and exponent), or a private or secret key by value, which a chip imports
/// and seals (the value is never stored).
///
/// Private keys by value: EC and SM2 take `CKA_VALUE` (the private scalar, at most 32 bytes);
/// RSA takes all of `CKA_MODULUS`, `CKA_PUBLIC_EXPONENT`, `CKA_PRIVATE_EXPONENT`,
/// `CKA_PRIME_1/2`, `CKA_EXPONENT_1/2` and `CKA_COEFFICIENT` (2048 or 3072 bits), which the node
/// encodes as PKCS#8 for the chip. Secret keys take `CKA_VALUE`: AES 16/24/32 bytes, SM4 16,
/// generic secrets 1 to 512.
///
/// # Errors
/// `CKR_USER_NOT_LOGGED_IN` (see the module docs); `CKR_TEMPLATE_INCOMPLETE` without
/// `CKA_CLASS`, a key type or required values; `CKR_ATTRIBUTE_VALUE_INVALID`,
/// `CKR_ATTRIBUTE_TYPE_INVALID`, `CKR_ATTRIBUTE_READ_ONLY`, `CKR_TEMPLATE_INCONSISTENT`,
/// `CKR_CURVE_NOT_SUPPORTED`; chip errors. Replication errors come when the plan is committed.
pub async fn create_object(
    ctx: &Ctx,
    s: Session,
    template: &[Attribute],
) -> Result<Plan<ObjectId>> {
    require_write(s, false)?;
    let tmpl = Template::parse(template)?;
    let class = tmpl
        .ulong(ck::CKA_CLASS)?
        .ok_or_else(|| refuse(ErrorCode::TemplateIncomplete, "CKA_CLASS is required"))?;
    let private = tmpl
        .bool(ck::CKA_PRIVATE)?
        .unwrap_or(matches!(class, ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY));
    require_write(s, private)?;
    let id = new_object_id()?;
    let (attrs, blob) = match class {
        ck::CKO_DATA => (
            build_attrs(
                s,
                id,
                class,
                None,
                &tmpl,
                &[],
                vec![(ck::CKA_CLASS, ulong_value(class))],
            )?,
            None,
        ),
        ck::CKO_CERTIFICATE => (create_certificate(s, id, &tmpl)?, None),
        ck::CKO_PUBLIC_KEY => (create_public_key(s, id, &tmpl)?, None),
        ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY => {
            let (attrs, new) = create_chip_key(ctx, s, id, class, &tmpl).await?;
            (attrs, Some(new.blob.0))
        }
        other => {
            return Err(invalid_value(
                ck::CKA_CLASS,
                format!("objects of class 0x{other:x} cannot be created"),
            ))
        }
    };
    let record = ObjectRecord {
        id,
        token: s.token,
        attrs,
        blob,
    };
    Ok(
        Plan::write(Command::PutObjects(vec![record]), id).on_commit(move || {
            tracing::info!(object = %id, token = %s.token, class, "object created");
        }),
    )
}

/// An X.509 certificate (*Base* §4.6.3). `CKA_SUBJECT`, `CKA_ISSUER`, `CKA_SERIAL_NUMBER` and
/// `CKA_PUBLIC_KEY_INFO` default to the certificate's own fields when it parses;
/// `CKA_CHECK_VALUE` is the first three bytes of the SHA-1 of `CKA_VALUE` (*Base* §4.6.2).
pub(super) fn create_certificate(
    s: Session,
    id: ObjectId,
    tmpl: &Template<'_>,
) -> Result<BTreeMap<u64, Vec<u8>>> {
    let cert_type = tmpl.ulong(ck::CKA_CERTIFICATE_TYPE)?.ok_or_else(|| {
        refuse(
            ErrorCode::TemplateIncomplete,
            "a certificate needs CKA_CERTIFICATE_TYPE",
        )
    })?;
    if cert_type != ck::CKC_X_509 {
        return Err(invalid_value(
            ck::CKA_CERTIFICATE_TYPE,
            "only X.509 public key certificates (CKC_X_509) are supported",
        ));
    }
    let value = tmpl
        .get(ck::CKA_VALUE)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            refuse(
                ErrorCode::TemplateIncomplete,
                "a certificate needs CKA_VALUE (its DER)",
            )
        })?;
    let fields = der::x509_fields(value);
    let mut computed = vec![
        (ck::CKA_CLASS, ulong_value(ck::CKO_CERTIFICATE)),
        (ck::CKA_CERTIFICATE_TYPE, ulong_value(cert_type)),
        (
            ck::CKA_CHECK_VALUE,
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, value).as_ref()
                [..3]
                .to_vec(),
        ),
    ];
    if let Some(f) = &fields {
        for (ty, v) in [
            (ck::CKA_SUBJECT, f.subject),
            (ck::CKA_ISSUER, f.issuer),
            (ck::CKA_SERIAL_NUMBER, f.serial),
            (ck::CKA_PUBLIC_KEY_INFO, f.spki),
        ] {
            if !tmpl.has(ty) {
                computed.push((ty, v.to_vec()));
            }
        }
    }
    if !tmpl.has(ck::CKA_SUBJECT) && fields.is_none() {
        return Err(refuse(
            ErrorCode::TemplateIncomplete,
            "CKA_SUBJECT is required (the certificate does not parse to take it from)",
        ));
    }
    build_attrs(s, id, ck::CKO_CERTIFICATE, None, tmpl, &[], computed)
}

/// The key kind of a key template of `class`.
pub(crate) fn key_template_alg(class: u64, tmpl: &Template<'_>) -> Result<(u64, KeyAlg)> {
    let ckk = tmpl
        .ulong(ck::CKA_KEY_TYPE)?
        .ok_or_else(|| refuse(ErrorCode::TemplateIncomplete, "CKA_KEY_TYPE is required"))?;
    Ok((ckk, template_alg(class, ckk, tmpl.get(ck::CKA_EC_PARAMS))?))
}

/// A public key object from its public values.
pub(super) fn create_public_key(
    s: Session,
    id: ObjectId,
    tmpl: &Template<'_>,
) -> Result<BTreeMap<u64, Vec<u8>>> {
    let class = ck::CKO_PUBLIC_KEY;
    let (ckk, alg) = key_template_alg(class, tmpl)?;
    let mut computed = vec![
        (ck::CKA_CLASS, ulong_value(class)),
        (ck::CKA_KEY_TYPE, ulong_value(ckk)),
        (ck::CKA_LOCAL, bool_value(false)),
        (
            ck::CKA_KEY_GEN_MECHANISM,
            ulong_value(ck::CK_UNAVAILABLE_INFORMATION),
        ),
    ];
    let mut skip = Vec::new();
    let public = if alg.is_ec() {
        let raw = tmpl.get(ck::CKA_EC_POINT).ok_or_else(|| {
            refuse(
                ErrorCode::TemplateIncomplete,
                "an EC public key needs CKA_EC_POINT",
            )
        })?;
        let point = der::ec_point(raw).ok_or_else(|| {
            invalid_value(
                ck::CKA_EC_POINT,
                "not an uncompressed point (65 bytes, raw or DER OCTET STRING)",
            )
        })?;
        if !point_on_curve(alg, &point) {
            return Err(invalid_value(
                ck::CKA_EC_POINT,
                format!("not a point on the {} curve", alg.name()),
            ));
        }
        // Stored in the spec's form, the DER OCTET STRING; a raw point is accepted as given.
        skip.push(ck::CKA_EC_POINT);
        if alg == KeyAlg::Sm2 {
            PublicKey::Sm2(point.to_vec())
        } else {
            PublicKey::EcP256(point.to_vec())
        }
    } else {
        let n = tmpl.get(ck::CKA_MODULUS).ok_or_else(|| {
            refuse(
                ErrorCode::TemplateIncomplete,
                "an RSA public key needs CKA_MODULUS",
            )
        })?;
        let e = tmpl.get(ck::CKA_PUBLIC_EXPONENT).ok_or_else(|| {
            refuse(
                ErrorCode::TemplateIncomplete,
                "an RSA public key needs CKA_PUBLIC_EXPONENT",
            )
        })?;
        check_rsa_public(n, e)?;
        PublicKey::Rsa {
            n: der::strip(n).to_vec(),
            e: der::strip(e).to_vec(),
        }
    };
    let params = tmpl
        .get(ck::CKA_EC_PARAMS)
        .unwrap_or_else(|| curve_params(alg));
    for (ty, v) in public_attrs(alg, params, &public)? {
        // The caller's exact modulus and exponent bytes stay as given (they may carry a
        // leading zero), so that FindObjects with the same template finds the key.
        if let Some(given) = tmpl
            .get(ty)
            .filter(|_| matches!(ty, ck::CKA_MODULUS | ck::CKA_PUBLIC_EXPONENT))
        {
            computed.push((ty, given.to_vec()));
        } else {
            computed.push((ty, v));
        }
    }
    build_attrs(s, id, class, Some(alg), tmpl, &skip, computed)
}

/// Checks an RSA public key's values: 2048 to 8192 bits, an odd exponent above 1.
pub(super) fn check_rsa_public(n: &[u8], e: &[u8]) -> Result<u32> {
    let bits = der::bit_len(der::strip(n));
    if !(2048..=8192).contains(&bits) {
        return Err(invalid_value(
            ck::CKA_MODULUS,
            format!("a {bits}-bit modulus (2048 to 8192 bits are supported)"),
        ));
    }
    let e = der::strip(e);
    if e.is_empty() || e.len() > 8 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
        return Err(invalid_value(
            ck::CKA_PUBLIC_EXPONENT,
            "the public exponent must be odd, above 1 and at most 64 bits",
        ));
    }
    Ok(bits)
}

/// A private or secret key by value: imported into a chip.
pub(super) async fn create_chip_key(
    ctx: &Ctx,
    s: Session,
    id: ObjectId,
    class: u64,
    tmpl: &Template<'_>,
) -> Result<(BTreeMap<u64, Vec<u8>>, NewKey)> {
    let (ckk, alg) = key_template_alg(class, tmpl)?;
    let mut computed = vec![
        (ck::CKA_CLASS, ulong_value(class)),
        (ck::CKA_KEY_TYPE, ulong_value(ckk)),
    ];
    let mut skip: Vec<u64> = Vec::new();
    let (spec, material) = match alg {
        KeyAlg::P256 | KeyAlg::Sm2 => {
            let scalar = tmpl.get(ck::CKA_VALUE).ok_or_else(|| {
                refuse(
                    ErrorCode::TemplateIncomplete,
                    "an EC private key by value needs CKA_VALUE",
                )
            })?;
            let scalar = der::strip(scalar);
            if scalar.is_empty() || scalar.len() > 32 {
                return Err(invalid_value(
                    ck::CKA_VALUE,
                    "an EC private key is a non-zero scalar of at most 32 bytes",
                ));
            }
            let mut material = Zeroizing::new(vec![0u8; 32]);
            material[32 - scalar.len()..].copy_from_slice(scalar);
            // Checked against the key after the chip computed the public point.
            skip.extend([ck::CKA_VALUE, ck::CKA_EC_POINT, ck::CKA_PUBLIC_KEY_INFO]);
            let params = tmpl
                .get(ck::CKA_EC_PARAMS)
                .unwrap_or_else(|| curve_params(alg));
            computed.push((ck::CKA_EC_PARAMS, params.to_vec()));
            (alg.spec(256), material)
        }
        KeyAlg::Rsa => {
            let part = |ty: u64| {
                tmpl.get(ty).ok_or_else(|| {
                    refuse(
                        ErrorCode::TemplateIncomplete,
                        format!(
                            "an RSA private key by value needs the modulus, both exponents and \
                             all CRT values; 0x{ty:x} is missing"
                        ),
                    )
                })
            };
            let parts = [
                part(ck::CKA_MODULUS)?,
                part(ck::CKA_PUBLIC_EXPONENT)?,
                part(ck::CKA_PRIVATE_EXPONENT)?,
                part(ck::CKA_PRIME_1)?,
                part(ck::CKA_PRIME_2)?,
                part(ck::CKA_EXPONENT_1)?,
                part(ck::CKA_EXPONENT_2)?,
                part(ck::CKA_COEFFICIENT)?,
            ];
            let bits = check_rsa_public(parts[0], parts[1])?;
            if !matches!(bits, 2048 | 3072) {
                return Err(invalid_value(
                    ck::CKA_MODULUS,
                    format!("a {bits}-bit RSA private key (2048 or 3072 bits are supported)"),
                ));
            }
            skip.extend([
                ck::CKA_PRIVATE_EXPONENT,
                ck::CKA_PRIME_1,
                ck::CKA_PRIME_2,
                ck::CKA_EXPONENT_1,
                ck::CKA_EXPONENT_2,
                ck::CKA_COEFFICIENT,
            ]);
            let public = PublicKey::Rsa {
                n: der::strip(parts[0]).to_vec(),
                e: der::strip(parts[1]).to_vec(),
            };
            for (ty, v) in public_attrs(alg, &[], &public)? {
                let given = tmpl
                    .get(ty)
                    .filter(|_| matches!(ty, ck::CKA_MODULUS | ck::CKA_PUBLIC_EXPONENT));
                computed.push((ty, given.map_or(v, <[u8]>::to_vec)));
            }
            (alg.spec(bits), der::pkcs8_rsa(&parts))
        }
        KeyAlg::Aes | KeyAlg::Sm4 | KeyAlg::Generic => {
            let value = tmpl.get(ck::CKA_VALUE).ok_or_else(|| {
                refuse(
                    ErrorCode::TemplateIncomplete,
                    "a secret key by value needs CKA_VALUE",
                )
            })?;
            let ok = match alg {
                KeyAlg::Aes => matches!(value.len(), 16 | 24 | 32),
                KeyAlg::Sm4 => value.len() == 16,
                _ => (1..=512).contains(&value.len()),
            };
            if !ok {
                return Err(invalid_value(
                    ck::CKA_VALUE,
                    format!(
                        "{} bytes is not a valid {} key length",
                        value.len(),
                        alg.name()
                    ),
                ));
            }
            skip.push(ck::CKA_VALUE);
            computed.push((ck::CKA_VALUE_LEN, ulong_value(value.len() as u64)));
            let bits = u32::try_from(value.len() * 8).unwrap_or(u32::MAX);
            (alg.spec(bits), Zeroizing::new(value.to_vec()))
        }
    };
    let mut attrs = build_attrs(s, id, class, Some(alg), tmpl, &skip, computed)?;
    let template = KeyTemplate {
        id: KeyId(id.0),
        spec,
        usage: usage_of(&attrs),
    };
    let new = import(ctx, template, material).await?;
    if alg.is_ec() {
        let public = new
            .public
            .as_ref()
            .ok_or_else(|| refuse(ErrorCode::DeviceError, "the chip returned no public key"))?;
        let params = attrs
            .get(&ck::CKA_EC_PARAMS)
            .cloned()
            .unwrap_or_else(|| curve_params(alg).to_vec());
        for (ty, v) in public_attrs(alg, &params, public)? {
            check_late(tmpl, ty, &v)?;
            attrs.insert(ty, v);
        }
    }
    finish_chip_key(&mut attrs, &new, None)?;
    Ok((attrs, new))
}

/// Checks a template value against one the chip computed (`CKA_EC_POINT` in either form).
pub(crate) fn check_late(tmpl: &Template<'_>, ty: u64, computed: &[u8]) -> Result<()> {
    let Some(given) = tmpl.get(ty) else {
        return Ok(());
    };
    let same = if ty == ck::CKA_EC_POINT {
        der::ec_point(given).is_some_and(|p| der::ec_point_der(&p) == computed)
    } else {
        given == computed
    };
    if same {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::TemplateInconsistent,
            format!("attribute 0x{ty:x} does not match the key"),
        ))
    }
}

/// `C_CopyObject` (*Base* §5.7): a new object with the original's attributes, changed by the
/// template within the rules of the module docs. A copy of a chip key shares its blob.
///
/// # Errors
/// `CKR_OBJECT_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, `CKR_ACTION_PROHIBITED` when
/// `CKA_COPYABLE` is false, `CKR_ATTRIBUTE_READ_ONLY` for a change the rules forbid,
/// `CKR_ATTRIBUTE_TYPE_INVALID`, `CKR_ATTRIBUTE_VALUE_INVALID`.
pub async fn copy_object(
    ctx: &Ctx,
    s: Session,
    object: ObjectId,
    template: &[Attribute],
) -> Result<Plan<ObjectId>> {
    require_write(s, false)?;
    let original = lookup(ctx, s, &object, ErrorCode::ObjectHandleInvalid)?;
    let record = &original.record;
    if record_bool(record, ck::CKA_COPYABLE) == Some(false) {
        return Err(refuse(
            ErrorCode::ActionProhibited,
            format!("object {object} is not copyable"),
        ));
    }
    let tmpl = Template::parse(template)?;
    let changes = changes(s, record, &tmpl, true)?;
    let mut attrs = record.attrs.clone();
    attrs.extend(changes);
    let id = new_object_id()?;
    attrs.insert(ck::CKA_UNIQUE_ID, id.to_string().into_bytes());
    let copy = ObjectRecord {
        id,
        token: s.token,
        attrs,
        blob: record.blob.clone(),
    };
    require_write(s, is_private(&copy))?;
    Ok(
        Plan::write(Command::PutObjects(vec![copy]), id).on_commit(move || {
            tracing::info!(object = %id, original = %object, token = %s.token, "object copied");
        }),
    )
}

/// The attribute changes a template asks of `record`, checked against the rules for
/// `C_SetAttributeValue` or, with `copy`, `C_CopyObject`. Unchanged values are left out.
pub(super) fn changes(
    s: Session,
    record: &ObjectRecord,
    tmpl: &Template<'_>,
    copy: bool,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let class = class_of(record).unwrap_or(ck::CKO_DATA);
    let alg = alg_of(record);
    let chip_key = record.blob.is_some();
    let mut out = Vec::new();
    for (ty, v) in tmpl.iter() {
        let sp = spec(class, alg, ty).ok_or_else(|| {
            refuse(
                ErrorCode::AttributeTypeInvalid,
                format!("attribute 0x{ty:x} is not one of this object"),
            )
        })?;
        check_kind(sp.kind, ty, v)?;
        let old = record.attrs.get(&ty).map(Vec::as_slice);
        if old == Some(v) {
            continue;
        }
        if sp.role != Role::Free {
            return Err(refuse(
                ErrorCode::AttributeReadOnly,
                format!("attribute 0x{ty:x} cannot be changed"),
            ));
        }
        let rule = if copy { sp.copy } else { sp.set };
        check_change(s, sp, rule, chip_key, v)?;
        out.push((ty, v.to_vec()));
    }
    Ok(out)
}

/// `C_DestroyObject` (*Base* §5.7).
///
/// # Errors
/// `CKR_OBJECT_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, `CKR_ACTION_PROHIBITED` when
/// `CKA_DESTROYABLE` is false.
pub async fn destroy_object(ctx: &Ctx, s: Session, object: ObjectId) -> Result<Plan<()>> {
    require_write(s, false)?;
    let o = lookup(ctx, s, &object, ErrorCode::ObjectHandleInvalid)?;
    require_write(s, is_private(&o.record))?;
    if record_bool(&o.record, ck::CKA_DESTROYABLE) == Some(false) {
        return Err(refuse(
            ErrorCode::ActionProhibited,
            format!("object {object} is not destroyable"),
        ));
    }
    Ok(
        Plan::write(Command::DestroyObject(object), ()).on_commit(move || {
            tracing::info!(%object, token = %s.token, "object destroyed");
        }),
    )
}

/// `C_GetAttributeValue` (*Base* §5.7): one answer per type, in order: the value, `Sensitive`
/// for key material (never held by the node, see the module docs), `Invalid` for an attribute
/// the object does not have.
///
/// # Errors
/// `CKR_OBJECT_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`.
pub async fn get_attributes(
    ctx: &Ctx,
    s: Session,
    object: ObjectId,
    types: &[u64],
) -> Result<Vec<AttrValue>> {
    let o = lookup(ctx, s, &object, ErrorCode::ObjectHandleInvalid)?;
    let record = &o.record;
    let class = class_of(record).unwrap_or(ck::CKO_DATA);
    let alg = alg_of(record);
    Ok(types
        .iter()
        .map(|&ty| {
            let material = spec(class, alg, ty).is_some_and(|sp| sp.role == Role::Material);
            match record.attrs.get(&ty) {
                _ if material => AttrValue::Sensitive,
                Some(v) => AttrValue::Value(v.clone()),
                None => AttrValue::Invalid,
            }
        })
        .collect())
}

/// `C_SetAttributeValue` (*Base* §5.7), within the rules of the module docs. Values equal to
/// the current ones are accepted and not written.
///
/// # Errors
/// `CKR_OBJECT_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, `CKR_ACTION_PROHIBITED` when
/// `CKA_MODIFIABLE` is false, `CKR_ATTRIBUTE_READ_ONLY`, `CKR_ATTRIBUTE_TYPE_INVALID`,
/// `CKR_ATTRIBUTE_VALUE_INVALID`, `CKR_TEMPLATE_INCONSISTENT`.
pub async fn set_attributes(
    ctx: &Ctx,
    s: Session,
    object: ObjectId,
    template: &[Attribute],
) -> Result<Plan<()>> {
    require_write(s, false)?;
    let o = lookup(ctx, s, &object, ErrorCode::ObjectHandleInvalid)?;
    require_write(s, is_private(&o.record))?;
    if record_bool(&o.record, ck::CKA_MODIFIABLE) == Some(false) {
        return Err(refuse(
            ErrorCode::ActionProhibited,
            format!("object {object} is not modifiable"),
        ));
    }
    let tmpl = Template::parse(template)?;
    // Only real changes are written, so two concurrent one-way changes cannot undo each other.
    let attrs = changes(s, &o.record, &tmpl, false)?;
    if attrs.is_empty() {
        return Ok(Plan::nothing(()));
    }
    Ok(Plan::write(
        Command::SetAttributes { id: object, attrs },
        (),
    ))
}

/// `C_FindObjects*` (*Base* §5.7): the session's visible objects whose attributes equal every
/// template attribute byte for byte, in creation order. Private objects appear only to the
/// logged-in user; key material never matches.
///
/// # Errors
/// None today; the `Result` leaves room for limits.
pub async fn find_objects(ctx: &Ctx, s: Session, template: &[Attribute]) -> Result<Vec<ObjectId>> {
    Ok(ctx
        .state
        .objects_of(s.token)
        .iter()
        .filter(|o| !is_private(&o.record) || s.is_user())
        .filter(|o| {
            template
                .iter()
                .all(|at| o.record.attrs.get(&at.ty).is_some_and(|v| *v == at.value))
        })
        .map(|o| o.record.id)
        .collect())
}
