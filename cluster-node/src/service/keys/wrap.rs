//! Key wrapping (`C_WrapKey`) and unwrapping (`C_UnwrapKey`), with the sizes an unwrapped key
//! may have.

use super::*;

/// `C_WrapKey` (*Base* §5.18): exports `key` (a secret or private key with `CKA_EXTRACTABLE`
/// true) encrypted under `wrapping_key` (an AES key, or an RSA/SM2 public key object, with
/// `CKA_WRAP`). A key with `CKA_WRAP_WITH_TRUSTED` needs a wrapping key with `CKA_TRUSTED`.
///
/// # Errors
/// `CKR_WRAPPING_KEY_HANDLE_INVALID`, `CKR_WRAPPING_KEY_TYPE_INCONSISTENT`,
/// `CKR_KEY_HANDLE_INVALID`, `CKR_KEY_UNEXTRACTABLE`, `CKR_KEY_NOT_WRAPPABLE`,
/// `CKR_KEY_FUNCTION_NOT_PERMITTED`, `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`,
/// `CKR_USER_NOT_LOGGED_IN`, chip errors (`CKR_KEY_SIZE_RANGE` when RFC 3394 cannot wrap the
/// key's length).
pub async fn wrap_key(
    ctx: &Ctx,
    s: Session,
    wrapping_key: ObjectId,
    mechanism: &Mechanism,
    key: ObjectId,
) -> Result<Vec<u8>> {
    let op = WrapOp::of(mechanism.ckm)?;
    let alg = op.key_alg();
    let wrapping = usable(
        ctx,
        s,
        &wrapping_key,
        &Need {
            invalid: ErrorCode::WrappingKeyHandleInvalid,
            inconsistent: ErrorCode::WrappingKeyTypeInconsistent,
            ..Need::key(open_class(alg), alg, ck::CKA_WRAP, mechanism.ckm)
        },
    )?;
    let target = lookup(ctx, s, &key, ErrorCode::KeyHandleInvalid)?;
    if !matches!(
        class_of(&target.record),
        Some(ck::CKO_SECRET_KEY | ck::CKO_PRIVATE_KEY)
    ) {
        return Err(refuse(
            ErrorCode::KeyNotWrappable,
            "only secret and private keys are wrapped",
        ));
    }
    // The record decides, not only the blob: CKA_EXTRACTABLE may have been turned off after the
    // chip sealed the key (see `crate::service`).
    if record_bool(&target.record, ck::CKA_EXTRACTABLE) != Some(true) {
        return Err(refuse(
            ErrorCode::KeyUnextractable,
            format!("key {key} is not extractable"),
        ));
    }
    if record_bool(&target.record, ck::CKA_WRAP_WITH_TRUSTED) == Some(true)
        && record_bool(&wrapping.record, ck::CKA_TRUSTED) != Some(true)
    {
        return Err(refuse(
            ErrorCode::KeyNotWrappable,
            format!("key {key} may only be wrapped with a trusted key (CKA_WRAP_WITH_TRUSTED)"),
        ));
    }
    let mech = op.mech(mechanism.ckm, &mechanism.param)?;
    let wrapping_ref = open_ref(&wrapping, alg)?;
    Ok(ctx
        .pool
        .wrap_key(&wrapping_ref, mech, pool_key(&target)?)
        .await?)
}

/// `C_UnwrapKey` (*Base* §5.18): imports a wrapped secret or private key with a secret key or a
/// private key that has `CKA_UNWRAP`. The template needs `CKA_CLASS` and `CKA_KEY_TYPE` (and
/// `CKA_EC_PARAMS` for `CKK_EC`); a secret key's `CKA_VALUE_LEN` is taken from the template or
/// from the wrapped length when that tells it (RFC 3394/5649, SM2), an RSA key's size from
/// `CKA_MODULUS_BITS` or the wrapped length. The new key is never `CKA_LOCAL`, and neither
/// always sensitive nor never extractable (it was outside a chip).
///
/// # Errors
/// `CKR_UNWRAPPING_KEY_HANDLE_INVALID`, `CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT`,
/// `CKR_KEY_FUNCTION_NOT_PERMITTED`, the template errors of [`objects::create_object`],
/// `CKR_WRAPPED_KEY_INVALID` (chip), `CKR_WRAPPED_KEY_LEN_RANGE`, `CKR_USER_NOT_LOGGED_IN`.
pub async fn unwrap_key(
    ctx: &Ctx,
    s: Session,
    unwrapping_key: ObjectId,
    mechanism: &Mechanism,
    wrapped: Vec<u8>,
    template: &[Attribute],
) -> Result<Plan<ObjectId>> {
    require_write(s, false)?;
    let op = WrapOp::of(mechanism.ckm)?;
    let alg = op.key_alg();
    let unwrapping = usable(
        ctx,
        s,
        &unwrapping_key,
        &Need {
            invalid: ErrorCode::UnwrappingKeyHandleInvalid,
            inconsistent: ErrorCode::UnwrappingKeyTypeInconsistent,
            ..Need::key(secret_class(alg), alg, ck::CKA_UNWRAP, mechanism.ckm)
        },
    )?;
    let mech = op.mech(mechanism.ckm, &mechanism.param)?;
    let tmpl = Template::parse(template)?;
    let class = tmpl.ulong(ck::CKA_CLASS)?.ok_or_else(|| {
        refuse(
            ErrorCode::TemplateIncomplete,
            "an unwrapped key's template needs CKA_CLASS",
        )
    })?;
    if !matches!(class, ck::CKO_SECRET_KEY | ck::CKO_PRIVATE_KEY) {
        return Err(refuse(
            ErrorCode::TemplateInconsistent,
            "only secret and private keys are unwrapped",
        ));
    }
    let (ckk, target) = key_template_alg(class, &tmpl)?;
    require_write(s, tmpl.bool(ck::CKA_PRIVATE)?.unwrap_or(true))?;

    let range = op.material_len(wrapped.len());
    let exact = range.and_then(|(lo, hi)| (lo == hi).then_some(lo));
    let mut computed = vec![
        (ck::CKA_CLASS, ulong_value(class)),
        (ck::CKA_KEY_TYPE, ulong_value(ckk)),
    ];
    let spec = match target {
        KeyAlg::P256 | KeyAlg::Sm2 => {
            let params = tmpl
                .get(ck::CKA_EC_PARAMS)
                .unwrap_or_else(|| curve_params(target));
            computed.push((ck::CKA_EC_PARAMS, params.to_vec()));
            target.spec(256)
        }
        KeyAlg::Rsa => target.spec(unwrapped_rsa_bits(&tmpl, range)?),
        KeyAlg::Aes | KeyAlg::Sm4 | KeyAlg::Generic => {
            // AES key sizes are 8-byte multiples: one of them lies in an RFC 5649 range.
            let inferred = match (target, range) {
                (KeyAlg::Aes, Some((lo, hi))) => {
                    [16, 24, 32].into_iter().find(|n| (lo..=hi).contains(n))
                }
                _ => exact,
            };
            let len = secret_len(target, tmpl.ulong(ck::CKA_VALUE_LEN)?, inferred, (1, 512))?;
            computed.push((ck::CKA_VALUE_LEN, ulong_value(len as u64)));
            target.spec(bits(len))
        }
    };
    let id = objects::new_object_id()?;
    let mut attrs = build_attrs(
        s,
        id,
        class,
        Some(target),
        &tmpl,
        late_attrs(target),
        computed,
    )?;
    let new = ctx
        .pool
        .unwrap_key(
            pool_key(&unwrapping)?,
            mech,
            wrapped,
            KeyTemplate {
                id: KeyId(id.0),
                spec,
                usage: usage_of(&attrs),
            },
        )
        .await?;
    if target.is_pair() {
        let public = new
            .public
            .as_ref()
            .ok_or_else(|| refuse(ErrorCode::DeviceError, "the chip returned no public key"))?;
        let params = attrs.get(&ck::CKA_EC_PARAMS).cloned().unwrap_or_default();
        for (ty, v) in public_attrs(target, &params, public)? {
            check_late(&tmpl, ty, &v)?;
            attrs.insert(ty, v);
        }
    }
    Ok(chip_key_plan(s, id, attrs, new, None)?.on_commit(move || {
        tracing::info!(object = %id, token = %s.token, alg = target.name(), "key unwrapped");
    }))
}

/// The size of an unwrapped RSA key: `CKA_MODULUS_BITS`, or the PKCS#8 length (a 2048-bit key's
/// PKCS#8 is about 1.2 kB, a 3072-bit key's about 1.8 kB).
fn unwrapped_rsa_bits(tmpl: &Template<'_>, range: Option<(usize, usize)>) -> Result<u32> {
    match (tmpl.ulong(ck::CKA_MODULUS_BITS)?, range) {
        (Some(2048), _) => Ok(2048),
        (Some(3072), _) => Ok(3072),
        (Some(other), _) => Err(refuse(
            ErrorCode::AttributeValueInvalid,
            format!("{other}-bit RSA keys are not supported (2048 or 3072)"),
        )),
        (None, Some((_, hi))) => Ok(if hi < 1500 { 2048 } else { 3072 }),
        (None, None) => Err(refuse(
            ErrorCode::TemplateIncomplete,
            "give CKA_MODULUS_BITS for an RSA key unwrapped with this mechanism",
        )),
    }
}
