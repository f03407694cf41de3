//! Key derivation: ECDH (`C_DeriveKey`).

use super::*;

/// `C_DeriveKey` with `CKM_ECDH1_DERIVE` or `CKM_ECDH1_COFACTOR_DERIVE` (*Mech* §2.3.13,
/// `CKD_NULL`): the shared x-coordinate, truncated to `CKA_VALUE_LEN`, becomes a new secret key
/// inside a chip. The template's key type defaults to `CKK_GENERIC_SECRET` and its length to 32
/// bytes (16 for SM4); at most 32 bytes can be derived. `CKA_ALWAYS_SENSITIVE` and
/// `CKA_NEVER_EXTRACTABLE` follow the base key (*Base* §5.16).
///
/// # Errors
/// `CKR_KEY_HANDLE_INVALID`, `CKR_KEY_TYPE_INCONSISTENT` (not an EC or SM2 private key),
/// `CKR_KEY_FUNCTION_NOT_PERMITTED` (`CKA_DERIVE` false), `CKR_MECHANISM_INVALID`,
/// `CKR_MECHANISM_PARAM_INVALID` (a KDF, shared data, or a peer point not on the curve), the
/// template errors, `CKR_USER_NOT_LOGGED_IN`, chip errors. Replication errors come when the plan is committed.
pub async fn derive_key(
    ctx: &Ctx,
    s: Session,
    base_key: ObjectId,
    mechanism: &Mechanism,
    template: &[Attribute],
) -> Result<Plan<ObjectId>> {
    require_write(s, false)?;
    let point = mechanism::ecdh_peer_point(mechanism.ckm, &mechanism.param)?;
    let base = lookup(ctx, s, &base_key, ErrorCode::KeyHandleInvalid)?;
    let alg = match (class_of(&base.record), alg_of(&base.record)) {
        (Some(ck::CKO_PRIVATE_KEY), Some(a)) if a.is_ec() => a,
        _ => {
            return Err(refuse(
                ErrorCode::KeyTypeInconsistent,
                "ECDH needs an EC P-256 or SM2 private key",
            ))
        }
    };
    if record_bool(&base.record, ck::CKA_DERIVE) != Some(true) {
        return Err(refuse(
            ErrorCode::KeyFunctionNotPermitted,
            "the base key's CKA_DERIVE is false",
        ));
    }
    check_allowed(&base.record, mechanism.ckm)?;
    if !objects::point_on_curve(alg, &point) {
        return Err(refuse(
            ErrorCode::MechanismParamInvalid,
            format!("the peer point is not on the {} curve", alg.name()),
        ));
    }
    let tmpl = Template::parse(template)?;
    expect_class(&tmpl, ck::CKO_SECRET_KEY)?;
    let ckk = tmpl
        .ulong(ck::CKA_KEY_TYPE)?
        .unwrap_or(ck::CKK_GENERIC_SECRET);
    let target = template_alg(ck::CKO_SECRET_KEY, ckk, None)?;
    let default_len = if target == KeyAlg::Sm4 { 16 } else { 32 };
    let len = secret_len(
        target,
        tmpl.ulong(ck::CKA_VALUE_LEN)?,
        Some(default_len),
        (1, 32),
    )?;
    require_write(s, tmpl.bool(ck::CKA_PRIVATE)?.unwrap_or(true))?;
    let id = objects::new_object_id()?;
    let computed = secret_key_computed(ckk, len);
    let attrs = build_attrs(
        s,
        id,
        ck::CKO_SECRET_KEY,
        Some(target),
        &tmpl,
        &[],
        computed,
    )?;
    let new = ctx
        .pool
        .derive_ecdh(
            pool_key(&base)?,
            point.to_vec(),
            KeyTemplate {
                id: KeyId(id.0),
                spec: target.spec(bits(len)),
                usage: usage_of(&attrs),
            },
        )
        .await?;
    Ok(chip_key_plan(s, id, attrs, new, None)?.on_commit(move || {
        tracing::info!(object = %id, base = %base_key, token = %s.token, "key derived");
    }))
}
