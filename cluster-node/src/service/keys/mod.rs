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
//! unwrap, derive) have the chip make the key, then return a [`Plan`] that puts the new objects;
//! the handler commits it through Raft before it answers.
//!
//! Not supported, with the code given: `CKM_RSA_PKCS` encryption (`CKR_MECHANISM_INVALID`);
//! KDFs other than `CKD_NULL` for ECDH (`CKR_MECHANISM_PARAM_INVALID`); wrapping with
//! `CKA_WRAP_TEMPLATE`/`CKA_UNWRAP_TEMPLATE` (the attributes do not exist here). Wrapped private
//! keys use the chips' key encoding: EC and SM2 as the raw 32-byte scalar, RSA as PKCS#8.

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudkey_chip::pool::{PoolExt as _, PoolKey, PoolKeyRef};
use cloudkey_chip::{KeyId, KeyTemplate, NewKey, MAX_RANDOM_LEN};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{Attribute, Mechanism, ObjectId, SignInput};
use cloudkey_protocol::ErrorCode;

use super::mechanism::{self, curve_of, CipherOp, KeyAlg, PairGen, SignOp, WrapOp};
use super::objects::{
    self, alg_of, bool_value, build_attrs, check_late, class_of, curve_from_params, curve_params,
    der, finish_chip_key, key_template_alg, lookup, public_attrs, public_key_of, record_bool,
    require_write, template_alg, ulong_value, usage_of, Template,
};
use super::{Ctx, Plan, Session};
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

impl Need {
    /// What sign, verify, encrypt and decrypt need of their one key: a key of `class` and `alg`
    /// with `flag` true that allows `ckm`, a wrong one refused with the plain key codes
    /// (`CKR_KEY_HANDLE_INVALID`, `CKR_KEY_TYPE_INCONSISTENT`).
    fn key(class: u64, alg: KeyAlg, flag: u64, ckm: u64) -> Self {
        Need {
            class,
            alg,
            flag,
            ckm,
            invalid: ErrorCode::KeyHandleInvalid,
            inconsistent: ErrorCode::KeyTypeInconsistent,
        }
    }
}

/// The attributes the node computes for a new secret key: its class, type and length.
fn secret_key_computed(ckk: u64, len: usize) -> Vec<(u64, Vec<u8>)> {
    vec![
        (ck::CKA_CLASS, ulong_value(ck::CKO_SECRET_KEY)),
        (ck::CKA_KEY_TYPE, ulong_value(ckk)),
        (ck::CKA_VALUE_LEN, ulong_value(len as u64)),
    ]
}

/// The plan that commits the one key a chip made (generated, derived or unwrapped): `attrs`
/// finished with what the chip's blob says ([`finish_chip_key`], `gen_mechanism` for a key
/// generated here), the blob kept in the record. The caller adds what to log on commit.
fn chip_key_plan(
    s: Session,
    id: ObjectId,
    mut attrs: BTreeMap<u64, Vec<u8>>,
    new: NewKey,
    gen_mechanism: Option<u64>,
) -> Result<Plan<ObjectId>> {
    finish_chip_key(&mut attrs, &new, gen_mechanism)?;
    let record = ObjectRecord {
        id,
        token: s.token,
        attrs,
        blob: Some(new.blob.0),
    };
    Ok(Plan::write(Command::PutObjects(vec![record]), id))
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

mod crypt;
mod derive;
mod generate;
#[cfg(test)]
mod tests;
mod wrap;

pub use crypt::{decrypt, encrypt, sign, verify};
pub use derive::derive_key;
pub use generate::{generate_key, generate_key_pair};
pub use wrap::{unwrap_key, wrap_key};

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
