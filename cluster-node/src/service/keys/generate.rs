//! Key generation: `C_GenerateKeyPair` and `C_GenerateKey`, the templates they take and the
//! key sizes they allow.

use super::*;

/// `C_GenerateKeyPair` (*Base* §5.14): `CKM_EC_KEY_PAIR_GEN` (`CKA_EC_PARAMS` P-256 or the SM2
/// curve), `CKM_RSA_PKCS_KEY_PAIR_GEN` (`CKA_MODULUS_BITS` 2048 or 3072, public exponent 65537
/// only) or vendor `CKM_SM2_KEY_PAIR_GEN`. The key pair is made in a chip; both objects are
/// committed in one command before the reply. `CKA_ID` and `CKA_LABEL` given in one template
/// only are copied to the other; `CKA_EC_PARAMS`/`CKA_EC_POINT` or `CKA_MODULUS`/
/// `CKA_PUBLIC_EXPONENT`/`CKA_MODULUS_BITS` and `CKA_PUBLIC_KEY_INFO` are on both.
///
/// Returns `(public, private)`.
///
/// # Errors
/// `CKR_MECHANISM_INVALID`, `CKR_MECHANISM_PARAM_INVALID`, `CKR_TEMPLATE_INCOMPLETE` (no curve,
/// no modulus size), `CKR_CURVE_NOT_SUPPORTED`, `CKR_KEY_SIZE_RANGE`,
/// `CKR_ATTRIBUTE_VALUE_INVALID` (an exponent other than 65537), the template errors of
/// [`objects::create_object`], `CKR_USER_NOT_LOGGED_IN`, chip errors. Replication errors come when the plan is committed.
pub async fn generate_key_pair(
    ctx: &Ctx,
    s: Session,
    mechanism: &Mechanism,
    public_template: &[Attribute],
    private_template: &[Attribute],
) -> Result<Plan<(ObjectId, ObjectId)>> {
    require_write(s, false)?;
    let gen = PairGen::of(mechanism.ckm, &mechanism.param)?;
    let pub_t = Template::parse(public_template)?;
    let priv_t = Template::parse(private_template)?;
    expect_class(&pub_t, ck::CKO_PUBLIC_KEY)?;
    expect_class(&priv_t, ck::CKO_PRIVATE_KEY)?;
    require_write(s, pub_t.bool(ck::CKA_PRIVATE)?.unwrap_or(false))?;
    require_write(s, priv_t.bool(ck::CKA_PRIVATE)?.unwrap_or(true))?;

    let given_params = match (pub_t.get(ck::CKA_EC_PARAMS), priv_t.get(ck::CKA_EC_PARAMS)) {
        (Some(a), Some(b)) if a != b => {
            return Err(refuse(
                ErrorCode::TemplateInconsistent,
                "the two templates give different CKA_EC_PARAMS",
            ))
        }
        (a, b) => a.or(b),
    };
    let (alg, bits, default_ckk) = match gen {
        PairGen::Ec => {
            let params = given_params.ok_or_else(|| {
                refuse(
                    ErrorCode::TemplateIncomplete,
                    "CKM_EC_KEY_PAIR_GEN needs CKA_EC_PARAMS in the public template",
                )
            })?;
            (curve_from_params(params)?, 256, ck::CKK_EC)
        }
        PairGen::Sm2 => {
            if given_params.is_some_and(|p| curve_of(p) != Some(KeyAlg::Sm2)) {
                return Err(refuse(
                    ErrorCode::CurveNotSupported,
                    "CKM_SM2_KEY_PAIR_GEN makes keys on the SM2 curve only",
                ));
            }
            (KeyAlg::Sm2, 256, mechanism::vendor::CKK_SM2)
        }
        PairGen::Rsa => {
            if given_params.is_some() {
                return Err(refuse(
                    ErrorCode::AttributeTypeInvalid,
                    "CKA_EC_PARAMS is not an attribute of RSA keys",
                ));
            }
            (KeyAlg::Rsa, rsa_bits(&pub_t, &priv_t)?, ck::CKK_RSA)
        }
    };
    let params = given_params.unwrap_or_else(|| curve_params(alg));
    let pub_ckk = key_type_for(&pub_t, ck::CKO_PUBLIC_KEY, alg, default_ckk)?;
    let priv_ckk = key_type_for(&priv_t, ck::CKO_PRIVATE_KEY, alg, default_ckk)?;

    let (pub_id, priv_id) = (objects::new_object_id()?, objects::new_object_id()?);
    let late = late_attrs(alg);
    let mut pub_attrs = {
        let mut computed = vec![
            (ck::CKA_CLASS, ulong_value(ck::CKO_PUBLIC_KEY)),
            (ck::CKA_KEY_TYPE, ulong_value(pub_ckk)),
        ];
        shared_names(&pub_t, &priv_t, &mut computed);
        if alg.is_ec() {
            computed.push((ck::CKA_EC_PARAMS, params.to_vec()));
        }
        build_attrs(
            s,
            pub_id,
            ck::CKO_PUBLIC_KEY,
            Some(alg),
            &pub_t,
            late,
            computed,
        )?
    };
    let mut priv_attrs = {
        let mut computed = vec![
            (ck::CKA_CLASS, ulong_value(ck::CKO_PRIVATE_KEY)),
            (ck::CKA_KEY_TYPE, ulong_value(priv_ckk)),
        ];
        shared_names(&priv_t, &pub_t, &mut computed);
        if alg.is_ec() {
            computed.push((ck::CKA_EC_PARAMS, params.to_vec()));
        }
        build_attrs(
            s,
            priv_id,
            ck::CKO_PRIVATE_KEY,
            Some(alg),
            &priv_t,
            late,
            computed,
        )?
    };

    let new = ctx
        .pool
        .generate_key_pair(KeyTemplate {
            id: KeyId(priv_id.0),
            spec: alg.spec(bits),
            usage: usage_of(&priv_attrs),
        })
        .await?;
    let public = new
        .public
        .as_ref()
        .ok_or_else(|| refuse(ErrorCode::DeviceError, "the chip returned no public key"))?;
    for (ty, v) in public_attrs(alg, params, public)? {
        // The exponent was checked by value (65537) before; its bytes may differ.
        if ty != ck::CKA_PUBLIC_EXPONENT {
            check_late(&pub_t, ty, &v)?;
            check_late(&priv_t, ty, &v)?;
        }
        pub_attrs.insert(ty, v.clone());
        priv_attrs.insert(ty, v);
    }
    finish_chip_key(&mut priv_attrs, &new, Some(mechanism.ckm))?;
    pub_attrs.insert(ck::CKA_LOCAL, bool_value(true));
    pub_attrs.insert(ck::CKA_KEY_GEN_MECHANISM, ulong_value(mechanism.ckm));

    let records = vec![
        ObjectRecord {
            id: pub_id,
            token: s.token,
            attrs: pub_attrs,
            blob: None,
        },
        ObjectRecord {
            id: priv_id,
            token: s.token,
            attrs: priv_attrs,
            blob: Some(new.blob.0),
        },
    ];
    Ok(
        Plan::write(Command::PutObjects(records), (pub_id, priv_id)).on_commit(move || {
            tracing::info!(public = %pub_id, private = %priv_id, token = %s.token, alg = alg.name(), "key pair generated");
        }),
    )
}

/// `CKA_ID` and `CKA_LABEL` that only the other template of a key pair gives.
fn shared_names(own: &Template<'_>, other: &Template<'_>, computed: &mut Vec<(u64, Vec<u8>)>) {
    for ty in [ck::CKA_ID, ck::CKA_LABEL] {
        if let (None, Some(v)) = (own.get(ty), other.get(ty)) {
            computed.push((ty, v.to_vec()));
        }
    }
}

/// The modulus size and exponent of an RSA key pair generation (*Mech* §2.1.4).
fn rsa_bits(pub_t: &Template<'_>, priv_t: &Template<'_>) -> Result<u32> {
    if priv_t.has(ck::CKA_PUBLIC_EXPONENT) && !pub_t.has(ck::CKA_PUBLIC_EXPONENT) {
        return Err(refuse(
            ErrorCode::TemplateInconsistent,
            "CKA_PUBLIC_EXPONENT belongs in the public template",
        ));
    }
    let bits = match (
        pub_t.ulong(ck::CKA_MODULUS_BITS)?,
        priv_t.ulong(ck::CKA_MODULUS_BITS)?,
    ) {
        (Some(a), Some(b)) if a != b => {
            return Err(refuse(
                ErrorCode::TemplateInconsistent,
                "the two templates give different CKA_MODULUS_BITS",
            ))
        }
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => {
            return Err(refuse(
                ErrorCode::TemplateIncomplete,
                "CKM_RSA_PKCS_KEY_PAIR_GEN needs CKA_MODULUS_BITS",
            ))
        }
    };
    if !matches!(bits, 2048 | 3072) {
        return Err(refuse(
            ErrorCode::KeySizeRange,
            format!("{bits}-bit RSA keys are not generated (2048 or 3072)"),
        ));
    }
    if let Some(e) = pub_t.get(ck::CKA_PUBLIC_EXPONENT) {
        if der::strip(e) != [1, 0, 1] {
            return Err(refuse(
                ErrorCode::AttributeValueInvalid,
                "the chips generate RSA keys with the public exponent 65537 only",
            ));
        }
    }
    // `u32::try_from` cannot fail for 2048 or 3072.
    Ok(u32::try_from(bits).unwrap_or(2048))
}

/// `C_GenerateKey` (*Base* §5.14): `CKM_AES_KEY_GEN` (`CKA_VALUE_LEN` 16, 24 or 32),
/// `CKM_GENERIC_SECRET_KEY_GEN` (`CKA_VALUE_LEN` 8 to 512) or vendor `CKM_SM4_KEY_GEN`
/// (16 bytes). The key is made in a chip and committed before the reply.
///
/// # Errors
/// `CKR_MECHANISM_INVALID`, `CKR_TEMPLATE_INCOMPLETE` (no `CKA_VALUE_LEN`),
/// `CKR_ATTRIBUTE_VALUE_INVALID` (a length the key type does not have), the template errors of
/// [`objects::create_object`], `CKR_USER_NOT_LOGGED_IN`, chip errors. Replication errors come when the plan is committed.
pub async fn generate_key(
    ctx: &Ctx,
    s: Session,
    mechanism: &Mechanism,
    template: &[Attribute],
) -> Result<Plan<ObjectId>> {
    require_write(s, false)?;
    let alg = mechanism::key_gen(mechanism.ckm, &mechanism.param)?;
    let tmpl = Template::parse(template)?;
    expect_class(&tmpl, ck::CKO_SECRET_KEY)?;
    let ckk = key_type_for(&tmpl, ck::CKO_SECRET_KEY, alg, alg.default_ckk())?;
    let len = secret_len(alg, tmpl.ulong(ck::CKA_VALUE_LEN)?, None, (8, 512))?;
    require_write(s, tmpl.bool(ck::CKA_PRIVATE)?.unwrap_or(true))?;
    let id = objects::new_object_id()?;
    let computed = secret_key_computed(ckk, len);
    let attrs = build_attrs(s, id, ck::CKO_SECRET_KEY, Some(alg), &tmpl, &[], computed)?;
    let new = ctx
        .pool
        .generate_secret_key(KeyTemplate {
            id: KeyId(id.0),
            spec: alg.spec(bits(len)),
            usage: usage_of(&attrs),
        })
        .await?;
    Ok(chip_key_plan(s, id, attrs, new, Some(mechanism.ckm))?.on_commit(move || {
        tracing::info!(object = %id, token = %s.token, alg = alg.name(), "secret key generated");
    }))
}
