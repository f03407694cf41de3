//! Key management and cryptographic operations (PKCS#11 3.0 base specification §5.10-§5.18,
//! cited as *Base*; mechanisms as in [`super::mechanism`]). Every private and secret key
//! operation runs in a chip of the [`ChipPool`](cloudkey_chip::pool::ChipPool); the node only
//! hashes for hash-and-sign mechanisms and reads public keys from records.
//!
//! Before any chip sees a request, the node checks, in this order: the key exists on the
//! session's token (`CKR_KEY_HANDLE_INVALID` and its wrapping/unwrapping variants); a private key
//! is used only by the logged-in user (`CKR_USER_NOT_LOGGED_IN`); the mechanism is supported
//! (`CKR_MECHANISM_INVALID`); class and key type fit it (`CKR_KEY_TYPE_INCONSISTENT`); the usage
//! attribute (`CKA_SIGN`, `CKA_DECRYPT`, ...) is true (`CKR_KEY_FUNCTION_NOT_PERMITTED`);
//! `CKA_ALLOWED_MECHANISMS`, when not empty, lists the mechanism (`CKR_MECHANISM_INVALID`); then
//! the parameters and data lengths. The chip enforces the usage sealed into the blob again.
//!
//! Public-key operations (verify, encrypt, wrap with RSA or SM2) use the public key object: the
//! chip gets its point or modulus from the record. Operations that create keys (generate,
//! unwrap, derive) commit the new objects through Raft before they answer.
//!
//! Not supported, with the code given: `CKM_RSA_PKCS` encryption (`CKR_MECHANISM_INVALID`);
//! KDFs other than `CKD_NULL` for ECDH (`CKR_MECHANISM_PARAM_INVALID`); wrapping with
//! `CKA_WRAP_TEMPLATE`/`CKA_UNWRAP_TEMPLATE` (the attributes do not exist here). Wrapped private
//! keys use the chips' key encoding: EC and SM2 as the raw 32-byte scalar, RSA as PKCS#8.

use std::sync::Arc;

use cloudkey_chip::pool::{PoolExt as _, PoolKey, PoolKeyRef};
use cloudkey_chip::{KeyId, KeyTemplate, MAX_RANDOM_LEN};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{Attribute, Mechanism, ObjectId, SignInput};
use cloudkey_protocol::ErrorCode;

use super::mechanism::{self, curve_of, CipherOp, KeyAlg, PairGen, SignOp, WrapOp};
use super::objects::{
    self, alg_of, bool_value, build_attrs, check_late, class_of, curve_from_params, curve_params,
    der, finish_chip_key, key_template_alg, lookup, public_attrs, public_key_of, record_bool,
    require_write, template_alg, ulong_value, usage_of, Template,
};
use super::{commit, Ctx, Session};
use crate::state::{Command, Object, ObjectRecord};
use crate::{NodeError, Result};

fn refuse(code: ErrorCode, detail: impl Into<String>) -> NodeError {
    NodeError::refuse(code, detail)
}

/// What an operation needs of a key.
struct Need {
    /// Acceptable classes.
    class: u64,
    /// The key kind the mechanism works with.
    alg: KeyAlg,
    /// The usage attribute that must be true.
    flag: u64,
    /// The mechanism, for `CKA_ALLOWED_MECHANISMS`.
    ckm: u64,
    /// The code for an unknown or foreign handle.
    invalid: ErrorCode,
    /// The code for a key of the wrong class or type.
    inconsistent: ErrorCode,
}

/// The key `id` if it may serve `need` (see the module docs for the order of the checks).
fn usable(ctx: &Ctx, s: Session, id: &ObjectId, need: &Need) -> Result<Arc<Object>> {
    let key = lookup(ctx, s, id, need.invalid)?;
    let record = &key.record;
    if class_of(record) != Some(need.class) || alg_of(record) != Some(need.alg) {
        return Err(refuse(
            need.inconsistent,
            format!(
                "mechanism 0x{:x} needs a {} {} key",
                need.ckm,
                need.alg.name(),
                class_name(need.class)
            ),
        ));
    }
    if record_bool(record, need.flag) != Some(true) {
        return Err(refuse(
            ErrorCode::KeyFunctionNotPermitted,
            format!("the key's attribute 0x{:x} is false", need.flag),
        ));
    }
    check_allowed(record, need.ckm)?;
    Ok(key)
}

fn class_name(class: u64) -> &'static str {
    match class {
        ck::CKO_PUBLIC_KEY => "public",
        ck::CKO_PRIVATE_KEY => "private",
        _ => "secret",
    }
}

/// `CKA_ALLOWED_MECHANISMS` (*Base* §4.7): empty allows every mechanism.
fn check_allowed(record: &ObjectRecord, ckm: u64) -> Result<()> {
    let Some(list) = record.attrs.get(&ck::CKA_ALLOWED_MECHANISMS) else {
        return Ok(());
    };
    if list.is_empty()
        || list
            .chunks_exact(8)
            .any(|c| <[u8; 8]>::try_from(c).ok().map(u64::from_le_bytes) == Some(ckm))
    {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::MechanismInvalid,
            format!("mechanism 0x{ckm:x} is not in the key's CKA_ALLOWED_MECHANISMS"),
        ))
    }
}

/// The chip blob of a private or secret key.
fn pool_key(key: &Object) -> Result<&PoolKey> {
    key.key.as_ref().ok_or_else(|| {
        refuse(
            ErrorCode::DeviceError,
            format!("key {} has no usable chip blob", key.record.id),
        )
    })
}

/// The modulus length in bytes of an RSA record (0 for other keys).
fn modulus_len(record: &ObjectRecord) -> usize {
    record
        .attrs
        .get(&ck::CKA_MODULUS)
        .map_or(0, |n| der::strip(n).len())
}

/// A key pair's private or a secret key: the class that signs, decrypts and unwraps.
fn secret_class(alg: KeyAlg) -> u64 {
    if alg.is_pair() {
        ck::CKO_PRIVATE_KEY
    } else {
        ck::CKO_SECRET_KEY
    }
}

/// The class that verifies, encrypts and wraps.
fn open_class(alg: KeyAlg) -> u64 {
    if alg.is_pair() {
        ck::CKO_PUBLIC_KEY
    } else {
        ck::CKO_SECRET_KEY
    }
}

/// A key for verification, encryption or wrapping: a public key object's public key, or a
/// secret key's blob.
fn open_ref(key: &Object, alg: KeyAlg) -> Result<PoolKeyRef> {
    if alg.is_pair() {
        Ok(PoolKeyRef::Public(public_key_of(&key.record, alg)?))
    } else {
        Ok(PoolKeyRef::Key(pool_key(key)?.clone()))
    }
}

/// Checks a template's `CKA_CLASS`, if given, against the class being made.
fn expect_class(tmpl: &Template<'_>, class: u64) -> Result<()> {
    match tmpl.ulong(ck::CKA_CLASS)? {
        Some(c) if c != class => Err(refuse(
            ErrorCode::TemplateInconsistent,
            format!("CKA_CLASS 0x{c:x} where 0x{class:x} is made"),
        )),
        _ => Ok(()),
    }
}

/// The `CKA_KEY_TYPE` for a new key of kind `alg`: the template's, when it names that kind,
/// else `default`.
fn key_type_for(tmpl: &Template<'_>, class: u64, alg: KeyAlg, default: u64) -> Result<u64> {
    match tmpl.ulong(ck::CKA_KEY_TYPE)? {
        None => Ok(default),
        Some(ckk) => {
            let named = template_alg(class, ckk, Some(curve_params(alg)))?;
            if named == alg {
                Ok(ckk)
            } else {
                Err(refuse(
                    ErrorCode::TemplateInconsistent,
                    format!("CKA_KEY_TYPE 0x{ckk:x} does not fit a {} key", alg.name()),
                ))
            }
        }
    }
}

/// The attributes a key's public half determines; a template may repeat them but not choose
/// them. Checked after the chip made the key.
fn late_attrs(alg: KeyAlg) -> &'static [u64] {
    if alg.is_ec() {
        &[ck::CKA_EC_POINT, ck::CKA_PUBLIC_KEY_INFO]
    } else if alg == KeyAlg::Rsa {
        &[
            ck::CKA_MODULUS,
            ck::CKA_MODULUS_BITS,
            ck::CKA_PUBLIC_EXPONENT,
            ck::CKA_PUBLIC_KEY_INFO,
        ]
    } else {
        &[]
    }
}

// ---------------------------------------------------------------------------------------------
// Generation

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
/// [`objects::create_object`], `CKR_USER_NOT_LOGGED_IN`, chip and replication errors.
pub async fn generate_key_pair(
    ctx: &Ctx,
    s: Session,
    mechanism: &Mechanism,
    public_template: &[Attribute],
    private_template: &[Attribute],
) -> Result<(ObjectId, ObjectId)> {
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
    commit(ctx, Command::PutObjects(records)).await?;
    tracing::info!(public = %pub_id, private = %priv_id, token = %s.token, alg = alg.name(), "key pair generated");
    Ok((pub_id, priv_id))
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
/// [`objects::create_object`], `CKR_USER_NOT_LOGGED_IN`, chip and replication errors.
pub async fn generate_key(
    ctx: &Ctx,
    s: Session,
    mechanism: &Mechanism,
    template: &[Attribute],
) -> Result<ObjectId> {
    require_write(s, false)?;
    let alg = mechanism::key_gen(mechanism.ckm, &mechanism.param)?;
    let tmpl = Template::parse(template)?;
    expect_class(&tmpl, ck::CKO_SECRET_KEY)?;
    let ckk = key_type_for(&tmpl, ck::CKO_SECRET_KEY, alg, alg.default_ckk())?;
    let len = secret_len(alg, tmpl.ulong(ck::CKA_VALUE_LEN)?, None, (8, 512))?;
    require_write(s, tmpl.bool(ck::CKA_PRIVATE)?.unwrap_or(true))?;
    let id = objects::new_object_id()?;
    let computed = vec![
        (ck::CKA_CLASS, ulong_value(ck::CKO_SECRET_KEY)),
        (ck::CKA_KEY_TYPE, ulong_value(ckk)),
        (ck::CKA_VALUE_LEN, ulong_value(len as u64)),
    ];
    let mut attrs = build_attrs(s, id, ck::CKO_SECRET_KEY, Some(alg), &tmpl, &[], computed)?;
    let new = ctx
        .pool
        .generate_secret_key(KeyTemplate {
            id: KeyId(id.0),
            spec: alg.spec(bits(len)),
            usage: usage_of(&attrs),
        })
        .await?;
    finish_chip_key(&mut attrs, &new, Some(mechanism.ckm))?;
    let record = ObjectRecord {
        id,
        token: s.token,
        attrs,
        blob: Some(new.blob.0),
    };
    commit(ctx, Command::PutObjects(vec![record])).await?;
    tracing::info!(object = %id, token = %s.token, alg = alg.name(), "secret key generated");
    Ok(id)
}

fn bits(len: usize) -> u32 {
    u32::try_from(len * 8).unwrap_or(u32::MAX)
}

/// The length in bytes of a new secret key of kind `alg`: `CKA_VALUE_LEN` if given (it must fit
/// the type), else `inferred` (from a wrapped key's length) or the type's only size (SM4).
/// Generic secrets must lie in `generic` (inclusive bytes).
fn secret_len(
    alg: KeyAlg,
    given: Option<u64>,
    inferred: Option<usize>,
    generic: (usize, usize),
) -> Result<usize> {
    let given = given.map(|v| usize::try_from(v).unwrap_or(usize::MAX));
    let len = match (alg, given.or(inferred)) {
        (KeyAlg::Sm4, None) => 16,
        (_, Some(len)) => len,
        (_, None) => {
            return Err(refuse(
                ErrorCode::TemplateIncomplete,
                format!("a new {} key needs CKA_VALUE_LEN", alg.name()),
            ))
        }
    };
    let ok = match alg {
        KeyAlg::Aes => matches!(len, 16 | 24 | 32),
        KeyAlg::Sm4 => len == 16,
        _ => (generic.0..=generic.1).contains(&len),
    };
    if ok {
        Ok(len)
    } else {
        Err(refuse(
            ErrorCode::AttributeValueInvalid,
            format!(
                "{len} bytes is not a valid length for a new {} key",
                alg.name()
            ),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Signatures

/// `C_Sign` (*Base* §5.12): a signature or MAC with a private or generic secret key.
///
/// # Errors
/// `CKR_KEY_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, `CKR_MECHANISM_INVALID`,
/// `CKR_KEY_TYPE_INCONSISTENT`, `CKR_KEY_FUNCTION_NOT_PERMITTED`, `CKR_MECHANISM_PARAM_INVALID`,
/// `CKR_DATA_LEN_RANGE`, `CKR_ARGUMENTS_BAD`, chip errors.
pub async fn sign(
    ctx: &Ctx,
    s: Session,
    key: ObjectId,
    mechanism: &Mechanism,
    input: SignInput,
) -> Result<Vec<u8>> {
    let op = SignOp::of(mechanism.ckm)?;
    let alg = op.key_alg();
    let key = usable(
        ctx,
        s,
        &key,
        &Need {
            class: secret_class(alg),
            alg,
            flag: ck::CKA_SIGN,
            ckm: mechanism.ckm,
            invalid: ErrorCode::KeyHandleInvalid,
            inconsistent: ErrorCode::KeyTypeInconsistent,
        },
    )?;
    let (mech, data) = op.prepare(mechanism.ckm, &mechanism.param, input, true)?;
    Ok(ctx.pool.sign(pool_key(&key)?, mech, data).await?)
}

/// `C_Verify` (*Base* §5.13): with a public key object (its point or modulus goes to the chip)
/// or a generic secret (HMAC, compared inside the chip).
///
/// # Errors
/// As [`sign`] (with `CKA_VERIFY`), `CKR_SIGNATURE_LEN_RANGE` for a signature of the wrong
/// length, [`cloudkey_chip::ChipError::SignatureInvalid`] when it does not verify.
pub async fn verify(
    ctx: &Ctx,
    s: Session,
    key: ObjectId,
    mechanism: &Mechanism,
    input: SignInput,
    signature: Vec<u8>,
) -> Result<()> {
    let op = SignOp::of(mechanism.ckm)?;
    let alg = op.key_alg();
    let key = usable(
        ctx,
        s,
        &key,
        &Need {
            class: open_class(alg),
            alg,
            flag: ck::CKA_VERIFY,
            ckm: mechanism.ckm,
            invalid: ErrorCode::KeyHandleInvalid,
            inconsistent: ErrorCode::KeyTypeInconsistent,
        },
    )?;
    let want = op.signature_len(modulus_len(&key.record));
    if signature.len() != want {
        return Err(refuse(
            ErrorCode::SignatureLenRange,
            format!("a signature here is {want} bytes, not {}", signature.len()),
        ));
    }
    let key_ref = open_ref(&key, alg)?;
    let (mech, data) = op.prepare(mechanism.ckm, &mechanism.param, input, false)?;
    Ok(ctx.pool.verify(&key_ref, mech, data, signature).await?)
}

// ---------------------------------------------------------------------------------------------
// Encryption

/// `C_Encrypt` (*Base* §5.8): AES-GCM/CBC and SM4-CBC with a secret key, RSA-OAEP and SM2 with a
/// public key object.
///
/// # Errors
/// As [`sign`] (with `CKA_ENCRYPT`); `CKR_DATA_LEN_RANGE` for unpadded CBC data that is not
/// whole blocks or OAEP data longer than the key allows.
pub async fn encrypt(
    ctx: &Ctx,
    s: Session,
    key: ObjectId,
    mechanism: &Mechanism,
    data: Vec<u8>,
) -> Result<Vec<u8>> {
    let op = CipherOp::of(mechanism.ckm)?;
    let alg = op.key_alg();
    let key = usable(
        ctx,
        s,
        &key,
        &Need {
            class: open_class(alg),
            alg,
            flag: ck::CKA_ENCRYPT,
            ckm: mechanism.ckm,
            invalid: ErrorCode::KeyHandleInvalid,
            inconsistent: ErrorCode::KeyTypeInconsistent,
        },
    )?;
    let mech = op.mech(mechanism.ckm, &mechanism.param)?;
    let too_long = match (op, &mech) {
        (CipherOp::AesCbc { pad: false } | CipherOp::Sm4Cbc { pad: false }, _) => {
            (data.len() % 16 != 0).then(|| "unpadded CBC needs whole 16-byte blocks".to_string())
        }
        (CipherOp::RsaOaep, cloudkey_chip::CipherMech::RsaOaep { hash, .. }) => {
            let max = modulus_len(&key.record).saturating_sub(2 * hash.output_len() + 2);
            (data.len() > max).then(|| format!("OAEP with this key takes at most {max} bytes"))
        }
        _ => None,
    };
    if let Some(why) = too_long {
        return Err(refuse(ErrorCode::DataLenRange, why));
    }
    let key_ref = open_ref(&key, alg)?;
    Ok(ctx.pool.encrypt(&key_ref, mech, data).await?)
}

/// `C_Decrypt` (*Base* §5.9): with a secret key or a private key.
///
/// # Errors
/// As [`sign`] (with `CKA_DECRYPT`); `CKR_ENCRYPTED_DATA_LEN_RANGE` for ciphertext of an
/// impossible length; [`cloudkey_chip::ChipError::EncryptedDataInvalid`] when it does not
/// authenticate or unpad.
pub async fn decrypt(
    ctx: &Ctx,
    s: Session,
    key: ObjectId,
    mechanism: &Mechanism,
    data: Vec<u8>,
) -> Result<Vec<u8>> {
    let op = CipherOp::of(mechanism.ckm)?;
    let alg = op.key_alg();
    let key = usable(
        ctx,
        s,
        &key,
        &Need {
            class: secret_class(alg),
            alg,
            flag: ck::CKA_DECRYPT,
            ckm: mechanism.ckm,
            invalid: ErrorCode::KeyHandleInvalid,
            inconsistent: ErrorCode::KeyTypeInconsistent,
        },
    )?;
    let mech = op.mech(mechanism.ckm, &mechanism.param)?;
    let n = data.len();
    let bad_len = match op {
        CipherOp::AesCbc { pad } | CipherOp::Sm4Cbc { pad } => n % 16 != 0 || (pad && n == 0),
        CipherOp::AesGcm => n < 16,
        CipherOp::RsaOaep => n != modulus_len(&key.record),
        CipherOp::Sm2 => n <= 97,
    };
    if bad_len {
        return Err(refuse(
            ErrorCode::EncryptedDataLenRange,
            format!(
                "{n} bytes cannot be a ciphertext of mechanism 0x{:x}",
                mechanism.ckm
            ),
        ));
    }
    Ok(ctx.pool.decrypt(pool_key(&key)?, mech, data).await?)
}

// ---------------------------------------------------------------------------------------------
// Key wrapping and derivation

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
            class: open_class(alg),
            alg,
            flag: ck::CKA_WRAP,
            ckm: mechanism.ckm,
            invalid: ErrorCode::WrappingKeyHandleInvalid,
            inconsistent: ErrorCode::WrappingKeyTypeInconsistent,
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
) -> Result<ObjectId> {
    require_write(s, false)?;
    let op = WrapOp::of(mechanism.ckm)?;
    let alg = op.key_alg();
    let unwrapping = usable(
        ctx,
        s,
        &unwrapping_key,
        &Need {
            class: secret_class(alg),
            alg,
            flag: ck::CKA_UNWRAP,
            ckm: mechanism.ckm,
            invalid: ErrorCode::UnwrappingKeyHandleInvalid,
            inconsistent: ErrorCode::UnwrappingKeyTypeInconsistent,
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
    finish_chip_key(&mut attrs, &new, None)?;
    let record = ObjectRecord {
        id,
        token: s.token,
        attrs,
        blob: Some(new.blob.0),
    };
    commit(ctx, Command::PutObjects(vec![record])).await?;
    tracing::info!(object = %id, token = %s.token, alg = target.name(), "key unwrapped");
    Ok(id)
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
/// template errors, `CKR_USER_NOT_LOGGED_IN`, chip and replication errors.
pub async fn derive_key(
    ctx: &Ctx,
    s: Session,
    base_key: ObjectId,
    mechanism: &Mechanism,
    template: &[Attribute],
) -> Result<ObjectId> {
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
    let computed = vec![
        (ck::CKA_CLASS, ulong_value(ck::CKO_SECRET_KEY)),
        (ck::CKA_KEY_TYPE, ulong_value(ckk)),
        (ck::CKA_VALUE_LEN, ulong_value(len as u64)),
    ];
    let mut attrs = build_attrs(
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
    finish_chip_key(&mut attrs, &new, None)?;
    let record = ObjectRecord {
        id,
        token: s.token,
        attrs,
        blob: Some(new.blob.0),
    };
    commit(ctx, Command::PutObjects(vec![record])).await?;
    tracing::info!(object = %id, base = %base_key, token = %s.token, "key derived");
    Ok(id)
}

/// `C_GenerateRandom` (*Base* §5.19): `len` bytes from a chip's generator, at most
/// [`MAX_RANDOM_LEN`] per request.
///
/// # Errors
/// `CKR_ARGUMENTS_BAD` above the maximum; chip errors.
pub async fn generate_random(ctx: &Ctx, len: u32) -> Result<Vec<u8>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    if usize::try_from(len).map_or(true, |l| l > MAX_RANDOM_LEN) {
        return Err(refuse(
            ErrorCode::ArgumentsBad,
            format!("at most {MAX_RANDOM_LEN} random bytes per request"),
        ));
    }
    Ok(ctx.pool.random(len).await?)
}

#[cfg(test)]
mod tests {
    use cloudkey_protocol::msg::{AttrValue, MechParam};
    use cloudkey_protocol::vendor;

    use super::*;
    use crate::service::mechanism::P256_OID_DER;
    use crate::service::objects::tests::{at, at_bool, at_ulong, code, rsa_parts};
    use crate::service::objects::{create_object, get_attributes, set_attributes};
    use crate::service::testkit::{fixture, Fixture};

    fn mech(ckm: u64) -> Mechanism {
        Mechanism::new(ckm)
    }

    async fn attr(ctx: &Ctx, s: Session, id: ObjectId, ty: u64) -> AttrValue {
        get_attributes(ctx, s, id, &[ty])
            .await
            .expect("get")
            .remove(0)
    }

    async fn bytes(ctx: &Ctx, s: Session, id: ObjectId, ty: u64) -> Vec<u8> {
        match attr(ctx, s, id, ty).await {
            AttrValue::Value(v) => v,
            other => panic!("attribute 0x{ty:x}: {other:?}"),
        }
    }

    async fn ec_pair(ctx: &Ctx, s: Session, extra_priv: Vec<Attribute>) -> (ObjectId, ObjectId) {
        let mut priv_t = vec![at_bool(ck::CKA_TOKEN, true), at(ck::CKA_LABEL, b"ec")];
        priv_t.extend(extra_priv);
        generate_key_pair(
            ctx,
            s,
            &mech(ck::CKM_EC_KEY_PAIR_GEN),
            &[
                at(ck::CKA_EC_PARAMS, P256_OID_DER),
                at(ck::CKA_ID, b"\x01\x02"),
            ],
            &priv_t,
        )
        .await
        .expect("ec pair")
    }

    async fn aes(ctx: &Ctx, s: Session, len: u64, extra: Vec<Attribute>) -> ObjectId {
        let mut t = vec![at_ulong(ck::CKA_VALUE_LEN, len)];
        t.extend(extra);
        generate_key(ctx, s, &mech(ck::CKM_AES_KEY_GEN), &t)
            .await
            .expect("aes")
    }

    fn gcm(iv: u8) -> Mechanism {
        Mechanism {
            ckm: ck::CKM_AES_GCM,
            param: MechParam::Gcm {
                iv: vec![iv; 12],
                aad: b"aad".to_vec(),
                tag_bits: 128,
            },
        }
    }

    #[tokio::test]
    async fn ec_key_pair_signs_and_verifies() {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let Fixture { ctx, t1, t2 } = fixture();
        let user = Session::user(t1);
        let (public, private) = ec_pair(&ctx, user, vec![]).await;

        // Both halves: same id and label, the curve and the point, generation facts.
        let point = bytes(&ctx, user, public, ck::CKA_EC_POINT).await;
        assert_eq!(point.len(), 67);
        assert_eq!(&point[..3], &[0x04, 0x41, 0x04]);
        for id in [public, private] {
            assert_eq!(bytes(&ctx, user, id, ck::CKA_EC_POINT).await, point);
            assert_eq!(bytes(&ctx, user, id, ck::CKA_ID).await, b"\x01\x02");
            assert_eq!(bytes(&ctx, user, id, ck::CKA_LABEL).await, b"ec");
            assert_eq!(bytes(&ctx, user, id, ck::CKA_EC_PARAMS).await, P256_OID_DER);
            assert_eq!(bytes(&ctx, user, id, ck::CKA_LOCAL).await, [1]);
            assert_eq!(
                bytes(&ctx, user, id, ck::CKA_KEY_GEN_MECHANISM).await,
                ulong_value(ck::CKM_EC_KEY_PAIR_GEN)
            );
        }
        for (ty, want) in [
            (ck::CKA_SENSITIVE, 1),
            (ck::CKA_EXTRACTABLE, 0),
            (ck::CKA_ALWAYS_SENSITIVE, 1),
            (ck::CKA_NEVER_EXTRACTABLE, 1),
            (ck::CKA_PRIVATE, 1),
            (ck::CKA_SIGN, 1),
            (ck::CKA_DERIVE, 0),
        ] {
            assert_eq!(bytes(&ctx, user, private, ty).await, [want], "0x{ty:x}");
        }
        assert_eq!(bytes(&ctx, user, public, ck::CKA_PRIVATE).await, [0]);
        assert_eq!(
            attr(&ctx, user, private, ck::CKA_VALUE).await,
            AttrValue::Sensitive
        );

        let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point[2..]).expect("point");
        // CKM_ECDSA over a digest, CKM_ECDSA_SHA256 over the message or a digest.
        let digest = mechanism::digest(cloudkey_chip::HashAlg::Sha256, b"pay 100").expect("d");
        for (m, input) in [
            (ck::CKM_ECDSA, SignInput::Data(digest.clone())),
            (ck::CKM_ECDSA_SHA256, SignInput::Data(b"pay 100".to_vec())),
            (ck::CKM_ECDSA_SHA256, SignInput::Digest(digest.clone())),
        ] {
            let sig = sign(&ctx, user, private, &mech(m), input.clone())
                .await
                .expect("sign");
            assert_eq!(sig.len(), 64);
            let parsed = p256::ecdsa::Signature::from_slice(&sig).expect("sig");
            vk.verify_prehash(&digest, &parsed).expect("p256 verifies");
            verify(&ctx, user, public, &mech(m), input.clone(), sig.clone())
                .await
                .expect("node verifies");
            // The public key is public: a session without login verifies too.
            verify(
                &ctx,
                Session::public(t1),
                public,
                &mech(m),
                input.clone(),
                sig.clone(),
            )
            .await
            .expect("public session verifies");
            let mut bad = sig.clone();
            bad[10] ^= 1;
            assert_eq!(
                code(verify(&ctx, user, public, &mech(m), input.clone(), bad).await),
                ErrorCode::SignatureInvalid
            );
            assert_eq!(
                code(verify(&ctx, user, public, &mech(m), input, sig[..63].to_vec()).await),
                ErrorCode::SignatureLenRange
            );
        }
        // Wrong halves and wrong mechanisms.
        let data = SignInput::Data(digest.clone());
        assert_eq!(
            code(sign(&ctx, user, public, &mech(ck::CKM_ECDSA), data.clone()).await),
            ErrorCode::KeyTypeInconsistent
        );
        assert_eq!(
            code(
                sign(
                    &ctx,
                    user,
                    private,
                    &mech(ck::CKM_SHA256_RSA_PKCS),
                    data.clone()
                )
                .await
            ),
            ErrorCode::KeyTypeInconsistent
        );
        assert_eq!(
            code(sign(&ctx, user, private, &mech(ck::CKM_ECDSA_SHA1), data.clone()).await),
            ErrorCode::MechanismInvalid
        );
        // Sessions: public session and SO cannot use the private key; another token cannot
        // see it at all.
        assert_eq!(
            code(
                sign(
                    &ctx,
                    Session::public(t1),
                    private,
                    &mech(ck::CKM_ECDSA),
                    data.clone()
                )
                .await
            ),
            ErrorCode::UserNotLoggedIn
        );
        assert_eq!(
            code(
                sign(
                    &ctx,
                    Session::so(t1),
                    private,
                    &mech(ck::CKM_ECDSA),
                    data.clone()
                )
                .await
            ),
            ErrorCode::UserNotLoggedIn
        );
        assert_eq!(
            code(
                sign(
                    &ctx,
                    Session::user(t2),
                    private,
                    &mech(ck::CKM_ECDSA),
                    data.clone()
                )
                .await
            ),
            ErrorCode::KeyHandleInvalid
        );
        // Turning CKA_SIGN off (allowed: it narrows) stops signing at the node.
        set_attributes(&ctx, user, private, &[at_bool(ck::CKA_SIGN, false)])
            .await
            .expect("off");
        assert_eq!(
            code(sign(&ctx, user, private, &mech(ck::CKM_ECDSA), data).await),
            ErrorCode::KeyFunctionNotPermitted
        );
    }

    #[tokio::test]
    async fn usage_and_allowed_mechanisms_are_enforced() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let data = SignInput::Data(vec![1; 32]);
        let (_, no_sign) = ec_pair(&ctx, user, vec![at_bool(ck::CKA_SIGN, false)]).await;
        assert_eq!(
            code(sign(&ctx, user, no_sign, &mech(ck::CKM_ECDSA), data.clone()).await),
            ErrorCode::KeyFunctionNotPermitted
        );
        // The chip's blob does not permit it either: widening is refused.
        assert_eq!(
            code(set_attributes(&ctx, user, no_sign, &[at_bool(ck::CKA_SIGN, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        let allowed = ck::CKM_ECDSA.to_le_bytes().to_vec();
        let (_, only_raw) =
            ec_pair(&ctx, user, vec![at(ck::CKA_ALLOWED_MECHANISMS, &allowed)]).await;
        sign(&ctx, user, only_raw, &mech(ck::CKM_ECDSA), data.clone())
            .await
            .expect("allowed");
        assert_eq!(
            code(sign(&ctx, user, only_raw, &mech(ck::CKM_ECDSA_SHA256), data).await),
            ErrorCode::MechanismInvalid
        );
        assert_eq!(
            code(
                set_attributes(&ctx, user, only_raw, &[at(ck::CKA_ALLOWED_MECHANISMS, &[])]).await
            ),
            ErrorCode::AttributeReadOnly
        );
    }

    #[tokio::test]
    async fn key_pair_template_errors() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let ec = mech(ck::CKM_EC_KEY_PAIR_GEN);
        let rsa = mech(ck::CKM_RSA_PKCS_KEY_PAIR_GEN);
        let p384 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
        let cases: Vec<(&Mechanism, Vec<Attribute>, Vec<Attribute>, ErrorCode)> = vec![
            (&ec, vec![], vec![], ErrorCode::TemplateIncomplete),
            (
                &ec,
                vec![at(ck::CKA_EC_PARAMS, &p384)],
                vec![],
                ErrorCode::CurveNotSupported,
            ),
            (
                &ec,
                vec![
                    at(ck::CKA_EC_PARAMS, P256_OID_DER),
                    at(ck::CKA_EC_POINT, &[4; 65]),
                ],
                vec![],
                ErrorCode::TemplateInconsistent,
            ),
            (
                &ec,
                vec![at(ck::CKA_EC_PARAMS, P256_OID_DER)],
                vec![at(ck::CKA_VALUE, &[1; 32])],
                ErrorCode::TemplateInconsistent,
            ),
            (
                &ec,
                vec![at(ck::CKA_EC_PARAMS, P256_OID_DER)],
                vec![at_bool(ck::CKA_LOCAL, true)],
                ErrorCode::AttributeReadOnly,
            ),
            (
                &ec,
                vec![
                    at(ck::CKA_EC_PARAMS, P256_OID_DER),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                ],
                vec![],
                ErrorCode::TemplateInconsistent,
            ),
            (&rsa, vec![], vec![], ErrorCode::TemplateIncomplete),
            (
                &rsa,
                vec![at_ulong(ck::CKA_MODULUS_BITS, 1024)],
                vec![],
                ErrorCode::KeySizeRange,
            ),
            (
                &rsa,
                vec![
                    at_ulong(ck::CKA_MODULUS_BITS, 2048),
                    at(ck::CKA_PUBLIC_EXPONENT, &[3]),
                ],
                vec![],
                ErrorCode::AttributeValueInvalid,
            ),
            (
                &rsa,
                vec![at_ulong(ck::CKA_MODULUS_BITS, 2048)],
                vec![at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY)],
                ErrorCode::TemplateInconsistent,
            ),
        ];
        for (i, (m, p, q, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                code(generate_key_pair(&ctx, user, m, &p, &q).await),
                want,
                "case {i}"
            );
        }
        assert_eq!(
            code(generate_key_pair(&ctx, Session::public(t1), &ec, &[], &[]).await),
            ErrorCode::UserNotLoggedIn
        );
        assert_eq!(
            code(generate_key(&ctx, user, &mech(ck::CKM_AES_KEY_GEN), &[]).await),
            ErrorCode::TemplateIncomplete
        );
        assert_eq!(
            code(
                generate_key(
                    &ctx,
                    user,
                    &mech(ck::CKM_AES_KEY_GEN),
                    &[at_ulong(ck::CKA_VALUE_LEN, 20)]
                )
                .await
            ),
            ErrorCode::AttributeValueInvalid
        );
        assert_eq!(
            code(generate_key(&ctx, user, &mech(ck::CKM_DES3_KEY_GEN), &[]).await),
            ErrorCode::MechanismInvalid
        );
        assert!(objects::find_objects(&ctx, user, &[])
            .await
            .expect("find")
            .is_empty());
    }

    fn rsa_public(n: &[u8]) -> aws_lc_rs::signature::RsaPublicKeyComponents<Vec<u8>> {
        aws_lc_rs::signature::RsaPublicKeyComponents {
            n: n.to_vec(),
            e: vec![1, 0, 1],
        }
    }

    #[tokio::test]
    async fn rsa_pkcs1_pss_and_oaep() {
        use aws_lc_rs::signature as sig;
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let (public, private) = generate_key_pair(
            &ctx,
            user,
            &mech(ck::CKM_RSA_PKCS_KEY_PAIR_GEN),
            &[
                at_ulong(ck::CKA_MODULUS_BITS, 2048),
                at(ck::CKA_PUBLIC_EXPONENT, &[0, 1, 0, 1]),
                at_bool(ck::CKA_WRAP, true),
            ],
            &[at_bool(ck::CKA_UNWRAP, true)],
        )
        .await
        .expect("rsa pair");
        let n = bytes(&ctx, user, public, ck::CKA_MODULUS).await;
        assert_eq!(n.len(), 256);
        assert_eq!(bytes(&ctx, user, private, ck::CKA_MODULUS).await, n);
        assert_eq!(
            bytes(&ctx, user, public, ck::CKA_MODULUS_BITS).await,
            ulong_value(2048)
        );
        assert_eq!(
            bytes(&ctx, user, public, ck::CKA_PUBLIC_EXPONENT).await,
            [1, 0, 1]
        );
        assert_eq!(
            attr(&ctx, user, private, ck::CKA_PRIVATE_EXPONENT).await,
            AttrValue::Sensitive
        );
        let key = rsa_public(&n);
        let msg = b"transfer 250.00 EUR".to_vec();

        // PKCS#1 v1.5 with the node hashing, and raw CKM_RSA_PKCS over a DigestInfo.
        let s1 = sign(
            &ctx,
            user,
            private,
            &mech(ck::CKM_SHA256_RSA_PKCS),
            SignInput::Data(msg.clone()),
        )
        .await
        .expect("sign");
        key.verify(&sig::RSA_PKCS1_2048_8192_SHA256, &msg, &s1)
            .expect("aws-lc verifies");
        let digest = mechanism::digest(cloudkey_chip::HashAlg::Sha256, &msg).expect("d");
        let info = mechanism::digest_info(cloudkey_chip::HashAlg::Sha256, &digest).expect("info");
        let s2 = sign(
            &ctx,
            user,
            private,
            &mech(ck::CKM_RSA_PKCS),
            SignInput::Data(info.clone()),
        )
        .await
        .expect("raw");
        assert_eq!(s1, s2, "PKCS#1 v1.5 is deterministic");
        verify(
            &ctx,
            user,
            public,
            &mech(ck::CKM_SHA256_RSA_PKCS),
            SignInput::Digest(digest.clone()),
            s1,
        )
        .await
        .expect("node verifies");
        // Raw CKM_RSA_PKCS pads any data of at most k - 11 bytes as it is (a SHA-1 DigestInfo,
        // the TLS 1.0/1.1 MD5 || SHA-1 value, a message): the node passes it to the chip.
        let sha1_info = mechanism::digest_info(
            cloudkey_chip::HashAlg::Sha1,
            &mechanism::digest(cloudkey_chip::HashAlg::Sha1, &msg).expect("sha1"),
        )
        .expect("sha1 info");
        for data in [sha1_info, vec![0x5a; 36], msg.clone(), vec![0xa5; 256 - 11]] {
            let s3 = sign(
                &ctx,
                user,
                private,
                &mech(ck::CKM_RSA_PKCS),
                SignInput::Data(data.clone()),
            )
            .await
            .expect("raw data");
            assert_eq!(s3.len(), 256);
            verify(
                &ctx,
                user,
                public,
                &mech(ck::CKM_RSA_PKCS),
                SignInput::Data(data.clone()),
                s3.clone(),
            )
            .await
            .expect("raw verifies");
            let mut other = data;
            other[0] ^= 1;
            assert_eq!(
                code(
                    verify(
                        &ctx,
                        user,
                        public,
                        &mech(ck::CKM_RSA_PKCS),
                        SignInput::Data(other),
                        s3
                    )
                    .await
                ),
                ErrorCode::SignatureInvalid
            );
        }
        assert_eq!(
            code(
                sign(
                    &ctx,
                    user,
                    private,
                    &mech(ck::CKM_RSA_PKCS),
                    SignInput::Data(vec![0xa5; 256 - 10])
                )
                .await
            ),
            ErrorCode::DataLenRange
        );

        // PSS: salt = hash length, MGF1 of the same hash.
        let pss = Mechanism {
            ckm: ck::CKM_SHA256_RSA_PKCS_PSS,
            param: MechParam::Pss {
                hash: ck::CKM_SHA256,
                mgf: ck::CKG_MGF1_SHA256,
                salt_len: 32,
            },
        };
        let s3 = sign(&ctx, user, private, &pss, SignInput::Data(msg.clone()))
            .await
            .expect("pss");
        key.verify(&sig::RSA_PSS_2048_8192_SHA256, &msg, &s3)
            .expect("aws-lc verifies PSS");
        let raw_pss = Mechanism {
            ckm: ck::CKM_RSA_PKCS_PSS,
            param: pss.param.clone(),
        };
        verify(
            &ctx,
            user,
            public,
            &raw_pss,
            SignInput::Data(digest.clone()),
            s3.clone(),
        )
        .await
        .expect("node verifies PSS");
        let bad_salt = Mechanism {
            ckm: ck::CKM_RSA_PKCS_PSS,
            param: MechParam::Pss {
                hash: ck::CKM_SHA256,
                mgf: ck::CKG_MGF1_SHA256,
                salt_len: 0,
            },
        };
        assert_eq!(
            code(sign(&ctx, user, private, &bad_salt, SignInput::Data(digest)).await),
            ErrorCode::MechanismParamInvalid
        );

        // OAEP: encrypt with the public key object, decrypt with the private key.
        let oaep = Mechanism {
            ckm: ck::CKM_RSA_PKCS_OAEP,
            param: MechParam::Oaep {
                hash: ck::CKM_SHA256,
                mgf: ck::CKG_MGF1_SHA256,
                source: b"label".to_vec(),
            },
        };
        let ct = encrypt(&ctx, user, public, &oaep, b"pin block".to_vec())
            .await
            .expect("oaep");
        assert_eq!(ct.len(), 256);
        assert_eq!(
            decrypt(&ctx, user, private, &oaep, ct.clone())
                .await
                .expect("decrypt"),
            b"pin block"
        );
        assert_eq!(
            code(decrypt(&ctx, user, private, &oaep, ct[..255].to_vec()).await),
            ErrorCode::EncryptedDataLenRange
        );
        assert_eq!(
            code(encrypt(&ctx, user, public, &oaep, vec![0; 200]).await),
            ErrorCode::DataLenRange
        );
        assert_eq!(
            code(encrypt(&ctx, user, public, &mech(ck::CKM_RSA_PKCS), vec![1]).await),
            ErrorCode::MechanismInvalid
        );

        // OAEP key transport: wrap an extractable AES key under the public key, unwrap with the
        // private key (the key length is not in the wrapped length: CKA_VALUE_LEN is needed).
        let target = aes(&ctx, user, 32, vec![at_bool(ck::CKA_EXTRACTABLE, true)]).await;
        let wrapped = wrap_key(&ctx, user, public, &oaep, target)
            .await
            .expect("wrap");
        let template = [
            at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
        ];
        assert_eq!(
            code(unwrap_key(&ctx, user, private, &oaep, wrapped.clone(), &template).await),
            ErrorCode::TemplateIncomplete
        );
        let mut with_len = template.to_vec();
        with_len.push(at_ulong(ck::CKA_VALUE_LEN, 32));
        let copy = unwrap_key(&ctx, user, private, &oaep, wrapped, &with_len)
            .await
            .expect("unwrap");
        let ct = encrypt(&ctx, user, target, &gcm(1), b"secret".to_vec())
            .await
            .expect("gcm");
        assert_eq!(
            decrypt(&ctx, user, copy, &gcm(1), ct).await.expect("gcm"),
            b"secret"
        );
    }

    #[tokio::test]
    async fn rsa_and_ec_private_keys_by_value() {
        use aws_lc_rs::encoding::AsDer;
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        // RSA: the node builds PKCS#8 from the components; the chip signs with that key.
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
        let parts = rsa_parts(pair.as_der().expect("der").as_ref());
        let names = [
            ck::CKA_MODULUS,
            ck::CKA_PUBLIC_EXPONENT,
            ck::CKA_PRIVATE_EXPONENT,
            ck::CKA_PRIME_1,
            ck::CKA_PRIME_2,
            ck::CKA_EXPONENT_1,
            ck::CKA_EXPONENT_2,
            ck::CKA_COEFFICIENT,
        ];
        let mut t = vec![
            at_ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
            at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
        ];
        t.extend(names.iter().zip(&parts).map(|(ty, v)| at(*ty, v)));
        let rsa = create_object(&ctx, user, &t).await.expect("rsa import");
        assert_eq!(
            bytes(&ctx, user, rsa, ck::CKA_MODULUS_BITS).await,
            ulong_value(2048)
        );
        assert_eq!(bytes(&ctx, user, rsa, ck::CKA_LOCAL).await, [0]);
        assert_eq!(
            attr(&ctx, user, rsa, ck::CKA_PRIME_1).await,
            AttrValue::Sensitive
        );
        let msg = b"statement".to_vec();
        let s = sign(
            &ctx,
            user,
            rsa,
            &mech(ck::CKM_SHA256_RSA_PKCS),
            SignInput::Data(msg.clone()),
        )
        .await
        .expect("sign");
        rsa_public(&parts[0])
            .verify(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, &msg, &s)
            .expect("verifies under the imported modulus");
        // A wrong CRT value: the chip refuses the key.
        let mut bad = t.clone();
        bad.last_mut().expect("coefficient").value[0] ^= 1;
        assert_eq!(
            code(create_object(&ctx, user, &bad).await),
            ErrorCode::AttributeValueInvalid
        );

        // EC: the scalar in, the point computed by the chip.
        let sk = p256::SecretKey::from_slice(&[9; 32]).expect("scalar");
        let point = sk.public_key().to_sec1_bytes().to_vec();
        let ec = create_object(
            &ctx,
            user,
            &[
                at_ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                at(ck::CKA_EC_PARAMS, P256_OID_DER),
                at(ck::CKA_VALUE, &[9; 32]),
                at(ck::CKA_EC_POINT, &point),
            ],
        )
        .await
        .expect("ec import");
        assert_eq!(
            bytes(&ctx, user, ec, ck::CKA_EC_POINT).await[2..],
            point[..]
        );
        let digest = [5u8; 32];
        let s = sign(
            &ctx,
            user,
            ec,
            &mech(ck::CKM_ECDSA),
            SignInput::Data(digest.to_vec()),
        )
        .await
        .expect("sign");
        p256::ecdsa::VerifyingKey::from(sk.public_key())
            .verify_prehash(
                &digest,
                &p256::ecdsa::Signature::from_slice(&s).expect("sig"),
            )
            .expect("verifies");
        // A point that is not the scalar's.
        let other = p256::SecretKey::from_slice(&[8; 32])
            .expect("scalar")
            .public_key()
            .to_sec1_bytes()
            .to_vec();
        assert_eq!(
            code(
                create_object(
                    &ctx,
                    user,
                    &[
                        at_ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
                        at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                        at(ck::CKA_EC_PARAMS, P256_OID_DER),
                        at(ck::CKA_VALUE, &[9; 32]),
                        at(ck::CKA_EC_POINT, &other),
                    ],
                )
                .await
            ),
            ErrorCode::TemplateInconsistent
        );
    }

    #[tokio::test]
    async fn sm2_sign_verify_and_encrypt() {
        use sm2::dsa::signature::Verifier;
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let (public, private) =
            generate_key_pair(&ctx, user, &mech(vendor::CKM_SM2_KEY_PAIR_GEN), &[], &[])
                .await
                .expect("sm2 pair");
        assert_eq!(
            bytes(&ctx, user, public, ck::CKA_KEY_TYPE).await,
            ulong_value(vendor::CKK_SM2)
        );
        assert_eq!(
            bytes(&ctx, user, private, ck::CKA_EC_PARAMS).await,
            vendor::SM2_CURVE_OID_DER
        );
        let point = bytes(&ctx, user, public, ck::CKA_EC_POINT).await;
        let msg = b"SM2 payment order".to_vec();
        let sig = sign(
            &ctx,
            user,
            private,
            &mech(vendor::CKM_SM3_SM2),
            SignInput::Data(msg.clone()),
        )
        .await
        .expect("sign");
        let vk = sm2::dsa::VerifyingKey::new(
            "1234567812345678",
            sm2::PublicKey::from_sec1_bytes(&point[2..]).expect("point"),
        )
        .expect("vk");
        vk.verify(&msg, &sm2::dsa::Signature::from_slice(&sig).expect("sig"))
            .expect("the sm2 crate verifies");
        verify(
            &ctx,
            user,
            public,
            &mech(vendor::CKM_SM3_SM2),
            SignInput::Data(msg.clone()),
            sig.clone(),
        )
        .await
        .expect("node verifies");
        // Another distinguishing id gives another Z: the signature no longer verifies.
        let other_id = Mechanism {
            ckm: vendor::CKM_SM3_SM2,
            param: MechParam::Sm2Id(b"ALICE123@YAHOO.COM".to_vec()),
        };
        assert_eq!(
            code(
                verify(
                    &ctx,
                    user,
                    public,
                    &other_id,
                    SignInput::Data(msg.clone()),
                    sig
                )
                .await
            ),
            ErrorCode::SignatureInvalid
        );
        // ECDSA is not an SM2 mechanism.
        assert_eq!(
            code(
                sign(
                    &ctx,
                    user,
                    private,
                    &mech(ck::CKM_ECDSA),
                    SignInput::Data(vec![1; 32])
                )
                .await
            ),
            ErrorCode::KeyTypeInconsistent
        );
        // SM2 encryption: public key object in, private key out.
        let ct = encrypt(
            &ctx,
            user,
            public,
            &mech(vendor::CKM_SM2_ENCRYPT),
            b"pin".to_vec(),
        )
        .await
        .expect("encrypt");
        assert_eq!(ct.len(), 97 + 3);
        assert_eq!(
            decrypt(&ctx, user, private, &mech(vendor::CKM_SM2_ENCRYPT), ct)
                .await
                .expect("decrypt"),
            b"pin"
        );
        // An EC-mechanism key on the SM2 curve is an SM2 key too.
        let (ec_pub, ec_priv) = generate_key_pair(
            &ctx,
            user,
            &mech(ck::CKM_EC_KEY_PAIR_GEN),
            &[at(ck::CKA_EC_PARAMS, vendor::SM2_CURVE_OID_DER)],
            &[],
        )
        .await
        .expect("sm2 via EC");
        assert_eq!(
            bytes(&ctx, user, ec_pub, ck::CKA_KEY_TYPE).await,
            ulong_value(ck::CKK_EC)
        );
        let e = vec![3u8; 32];
        let sig = sign(
            &ctx,
            user,
            ec_priv,
            &mech(vendor::CKM_SM2),
            SignInput::Data(e.clone()),
        )
        .await
        .expect("CKM_SM2 over e");
        verify(
            &ctx,
            user,
            ec_pub,
            &mech(vendor::CKM_SM3_SM2),
            SignInput::Digest(e),
            sig,
        )
        .await
        .expect("SM3-with-SM2 over the same e");
    }

    #[tokio::test]
    async fn aes_gcm_cbc_and_sm4() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let key = aes(&ctx, user, 32, vec![]).await;
        assert_eq!(
            bytes(&ctx, user, key, ck::CKA_KEY_TYPE).await,
            ulong_value(ck::CKK_AES)
        );
        assert_eq!(
            bytes(&ctx, user, key, ck::CKA_VALUE_LEN).await,
            ulong_value(32)
        );
        assert_eq!(
            attr(&ctx, user, key, ck::CKA_VALUE).await,
            AttrValue::Sensitive
        );
        let ct = encrypt(&ctx, user, key, &gcm(7), b"account 42".to_vec())
            .await
            .expect("gcm");
        assert_eq!(ct.len(), 10 + 16);
        assert_eq!(
            decrypt(&ctx, user, key, &gcm(7), ct.clone())
                .await
                .expect("open"),
            b"account 42"
        );
        let mut tampered = ct.clone();
        tampered[0] ^= 1;
        assert_eq!(
            code(decrypt(&ctx, user, key, &gcm(7), tampered).await),
            ErrorCode::EncryptedDataInvalid
        );
        assert_eq!(
            code(decrypt(&ctx, user, key, &gcm(8), ct).await),
            ErrorCode::EncryptedDataInvalid
        );
        assert_eq!(
            code(decrypt(&ctx, user, key, &gcm(7), vec![0; 15]).await),
            ErrorCode::EncryptedDataLenRange
        );
        let cbc_pad = Mechanism {
            ckm: ck::CKM_AES_CBC_PAD,
            param: MechParam::Iv(vec![1; 16]),
        };
        let ct = encrypt(&ctx, user, key, &cbc_pad, b"0123456789abcdef".to_vec())
            .await
            .expect("cbc");
        assert_eq!(ct.len(), 32);
        assert_eq!(
            decrypt(&ctx, user, key, &cbc_pad, ct).await.expect("cbc"),
            b"0123456789abcdef"
        );
        let cbc = Mechanism {
            ckm: ck::CKM_AES_CBC,
            param: MechParam::Iv(vec![1; 16]),
        };
        assert_eq!(
            code(encrypt(&ctx, user, key, &cbc, vec![0; 15]).await),
            ErrorCode::DataLenRange
        );
        // Not for signing; not with a GCM key as HMAC key.
        assert_eq!(
            code(
                sign(
                    &ctx,
                    user,
                    key,
                    &mech(ck::CKM_SHA256_HMAC),
                    SignInput::Data(vec![1])
                )
                .await
            ),
            ErrorCode::KeyTypeInconsistent
        );
        // SM4.
        let sm4 = generate_key(&ctx, user, &mech(vendor::CKM_SM4_KEY_GEN), &[])
            .await
            .expect("sm4");
        assert_eq!(
            bytes(&ctx, user, sm4, ck::CKA_KEY_TYPE).await,
            ulong_value(vendor::CKK_SM4)
        );
        let m = Mechanism {
            ckm: vendor::CKM_SM4_CBC_PAD,
            param: MechParam::Iv(vec![9; 16]),
        };
        let ct = encrypt(&ctx, user, sm4, &m, b"sm4 data".to_vec())
            .await
            .expect("sm4");
        assert_eq!(
            decrypt(&ctx, user, sm4, &m, ct).await.expect("sm4"),
            b"sm4 data"
        );
        assert_eq!(
            code(encrypt(&ctx, user, key, &m, vec![1]).await),
            ErrorCode::KeyTypeInconsistent
        );
    }

    #[tokio::test]
    async fn aes_key_wrap_and_unwrap() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let kek = aes(
            &ctx,
            user,
            32,
            vec![at_bool(ck::CKA_WRAP, true), at_bool(ck::CKA_UNWRAP, true)],
        )
        .await;
        let target = aes(&ctx, user, 16, vec![at_bool(ck::CKA_EXTRACTABLE, true)]).await;
        assert_eq!(
            bytes(&ctx, user, target, ck::CKA_NEVER_EXTRACTABLE).await,
            [0]
        );
        let locked = aes(&ctx, user, 16, vec![]).await;
        let kw = mech(ck::CKM_AES_KEY_WRAP);
        let wrapped = wrap_key(&ctx, user, kek, &kw, target).await.expect("wrap");
        assert_eq!(wrapped.len(), 24);
        assert_eq!(
            code(wrap_key(&ctx, user, kek, &kw, locked).await),
            ErrorCode::KeyUnextractable
        );
        assert_eq!(
            code(wrap_key(&ctx, user, target, &kw, kek).await),
            ErrorCode::KeyFunctionNotPermitted
        );
        // The unwrapped key's length comes from the wrapped length.
        let template = [
            at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            at(ck::CKA_LABEL, b"unwrapped"),
        ];
        let copy = unwrap_key(&ctx, user, kek, &kw, wrapped.clone(), &template)
            .await
            .expect("unwrap");
        assert_eq!(
            bytes(&ctx, user, copy, ck::CKA_VALUE_LEN).await,
            ulong_value(16)
        );
        for (ty, want) in [
            (ck::CKA_LOCAL, 0),
            (ck::CKA_ALWAYS_SENSITIVE, 0),
            (ck::CKA_NEVER_EXTRACTABLE, 0),
        ] {
            assert_eq!(bytes(&ctx, user, copy, ty).await, [want]);
        }
        let ct = encrypt(&ctx, user, target, &gcm(3), b"same key".to_vec())
            .await
            .expect("gcm");
        assert_eq!(
            decrypt(&ctx, user, copy, &gcm(3), ct).await.expect("gcm"),
            b"same key"
        );
        let mut bad = wrapped.clone();
        bad[3] ^= 1;
        assert_eq!(
            code(unwrap_key(&ctx, user, kek, &kw, bad, &template).await),
            ErrorCode::WrappedKeyInvalid
        );
        // RFC 5649 (CKM_AES_KEY_WRAP_PAD) wraps an EC private key's 32-byte scalar too.
        let (_, ec) = ec_pair(&ctx, user, vec![at_bool(ck::CKA_EXTRACTABLE, true)]).await;
        let kwp = mech(ck::CKM_AES_KEY_WRAP_PAD);
        let wrapped_ec = wrap_key(&ctx, user, kek, &kwp, ec).await.expect("wrap ec");
        let ec_copy = unwrap_key(
            &ctx,
            user,
            kek,
            &kwp,
            wrapped_ec,
            &[
                at_ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                at(ck::CKA_EC_PARAMS, P256_OID_DER),
            ],
        )
        .await
        .expect("unwrap ec");
        assert_eq!(
            bytes(&ctx, user, ec_copy, ck::CKA_EC_POINT).await,
            bytes(&ctx, user, ec, ck::CKA_EC_POINT).await
        );
        // Turning CKA_EXTRACTABLE off is enforced by the node although the blob still allows it.
        set_attributes(&ctx, user, target, &[at_bool(ck::CKA_EXTRACTABLE, false)])
            .await
            .expect("narrow");
        assert_eq!(
            code(wrap_key(&ctx, user, kek, &kw, target).await),
            ErrorCode::KeyUnextractable
        );
        // CKA_WRAP_WITH_TRUSTED needs a trusted wrapping key.
        let guarded = aes(
            &ctx,
            user,
            16,
            vec![
                at_bool(ck::CKA_EXTRACTABLE, true),
                at_bool(ck::CKA_WRAP_WITH_TRUSTED, true),
            ],
        )
        .await;
        assert_eq!(
            code(wrap_key(&ctx, user, kek, &kw, guarded).await),
            ErrorCode::KeyNotWrappable
        );
        // Handles of the wrong kind.
        assert_eq!(
            code(wrap_key(&ctx, user, ObjectId([0; 16]), &kw, target).await),
            ErrorCode::WrappingKeyHandleInvalid
        );
        assert_eq!(
            code(unwrap_key(&ctx, user, ec, &kw, wrapped, &template).await),
            ErrorCode::UnwrappingKeyTypeInconsistent
        );
    }

    #[tokio::test]
    async fn ecdh_gives_both_sides_the_same_key() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let derive = vec![at_bool(ck::CKA_DERIVE, true)];
        let (a_pub, a_priv) = ec_pair(&ctx, user, derive.clone()).await;
        let (b_pub, b_priv) = ec_pair(&ctx, user, derive).await;
        let template = [
            at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            at_ulong(ck::CKA_VALUE_LEN, 32),
        ];
        let ecdh = |point: Vec<u8>| Mechanism {
            ckm: ck::CKM_ECDH1_DERIVE,
            param: MechParam::Ecdh1 {
                kdf: ck::CKD_NULL,
                shared_data: vec![],
                public_data: point,
            },
        };
        let a_point = bytes(&ctx, user, a_pub, ck::CKA_EC_POINT).await;
        // The peer point raw (65 bytes) on one side, DER on the other.
        let b_point = bytes(&ctx, user, b_pub, ck::CKA_EC_POINT).await[2..].to_vec();
        let k_a = derive_key(&ctx, user, a_priv, &ecdh(b_point), &template)
            .await
            .expect("a");
        let k_b = derive_key(&ctx, user, b_priv, &ecdh(a_point.clone()), &template)
            .await
            .expect("b");
        assert_eq!(bytes(&ctx, user, k_a, ck::CKA_LOCAL).await, [0]);
        // Derived from always-sensitive, never-extractable keys, sensitive and unextractable.
        assert_eq!(bytes(&ctx, user, k_a, ck::CKA_ALWAYS_SENSITIVE).await, [1]);
        assert_eq!(bytes(&ctx, user, k_a, ck::CKA_NEVER_EXTRACTABLE).await, [1]);
        let ct = encrypt(&ctx, user, k_a, &gcm(5), b"shared".to_vec())
            .await
            .expect("enc");
        assert_eq!(
            decrypt(&ctx, user, k_b, &gcm(5), ct).await.expect("dec"),
            b"shared"
        );

        // Without CKA_DERIVE, with a KDF, with a point off the curve.
        let (_, plain) = ec_pair(&ctx, user, vec![]).await;
        assert_eq!(
            code(derive_key(&ctx, user, plain, &ecdh(a_point.clone()), &template).await),
            ErrorCode::KeyFunctionNotPermitted
        );
        let kdf = Mechanism {
            ckm: ck::CKM_ECDH1_DERIVE,
            param: MechParam::Ecdh1 {
                kdf: ck::CKD_SHA256_KDF,
                shared_data: vec![],
                public_data: a_point,
            },
        };
        assert_eq!(
            code(derive_key(&ctx, user, a_priv, &kdf, &template).await),
            ErrorCode::MechanismParamInvalid
        );
        let mut off = vec![4u8; 65];
        off[64] = 5;
        assert_eq!(
            code(derive_key(&ctx, user, a_priv, &ecdh(off), &template).await),
            ErrorCode::MechanismParamInvalid
        );
        let mut long = template.to_vec();
        long[2] = at_ulong(ck::CKA_VALUE_LEN, 48);
        long[1] = at_ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET);
        assert_eq!(
            code(
                derive_key(
                    &ctx,
                    user,
                    a_priv,
                    &ecdh(bytes(&ctx, user, b_pub, ck::CKA_EC_POINT).await),
                    &long
                )
                .await
            ),
            ErrorCode::AttributeValueInvalid
        );
    }

    #[tokio::test]
    async fn hmac_sign_and_verify() {
        use aws_lc_rs::hmac;
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let value = [0x5a; 32];
        let key = create_object(
            &ctx,
            user,
            &[
                at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET),
                at(ck::CKA_VALUE, &value),
            ],
        )
        .await
        .expect("hmac key");
        let msg = b"MAC this".to_vec();
        let mac = sign(
            &ctx,
            user,
            key,
            &mech(ck::CKM_SHA256_HMAC),
            SignInput::Data(msg.clone()),
        )
        .await
        .expect("mac");
        let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &value), &msg);
        assert_eq!(mac, expected.as_ref());
        verify(
            &ctx,
            user,
            key,
            &mech(ck::CKM_SHA256_HMAC),
            SignInput::Data(msg.clone()),
            mac.clone(),
        )
        .await
        .expect("verify");
        let mut bad = mac.clone();
        bad[0] ^= 1;
        assert_eq!(
            code(
                verify(
                    &ctx,
                    user,
                    key,
                    &mech(ck::CKM_SHA256_HMAC),
                    SignInput::Data(msg.clone()),
                    bad
                )
                .await
            ),
            ErrorCode::SignatureInvalid
        );
        assert_eq!(
            code(
                verify(
                    &ctx,
                    user,
                    key,
                    &mech(ck::CKM_SHA256_HMAC),
                    SignInput::Data(msg.clone()),
                    mac[..16].to_vec()
                )
                .await
            ),
            ErrorCode::SignatureLenRange
        );
        let mac512 = sign(
            &ctx,
            user,
            key,
            &mech(ck::CKM_SHA512_HMAC),
            SignInput::Data(msg.clone()),
        )
        .await
        .expect("mac512");
        assert_eq!(mac512.len(), 64);
        // A generated generic secret MACs too.
        let gen = generate_key(
            &ctx,
            user,
            &mech(ck::CKM_GENERIC_SECRET_KEY_GEN),
            &[at_ulong(ck::CKA_VALUE_LEN, 48)],
        )
        .await
        .expect("gen");
        let mac = sign(
            &ctx,
            user,
            gen,
            &mech(ck::CKM_SHA384_HMAC),
            SignInput::Data(msg.clone()),
        )
        .await
        .expect("mac");
        verify(
            &ctx,
            user,
            gen,
            &mech(ck::CKM_SHA384_HMAC),
            SignInput::Data(msg),
            mac,
        )
        .await
        .expect("verify");
    }

    #[tokio::test]
    async fn random_bytes() {
        let Fixture { ctx, .. } = fixture();
        let a = generate_random(&ctx, 32).await.expect("random");
        let b = generate_random(&ctx, 32).await.expect("random");
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(generate_random(&ctx, 0).await.expect("none").is_empty());
        assert_eq!(
            code(generate_random(&ctx, 4097).await),
            ErrorCode::ArgumentsBad
        );
    }
}
