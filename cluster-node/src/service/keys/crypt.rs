//! Key use that writes nothing: signatures and MACs, their verification, encryption and
//! decryption.

use super::*;

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
    let need = Need::key(secret_class(alg), alg, ck::CKA_SIGN, mechanism.ckm);
    let key = usable(ctx, s, &key, &need)?;
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
    let need = Need::key(open_class(alg), alg, ck::CKA_VERIFY, mechanism.ckm);
    let key = usable(ctx, s, &key, &need)?;
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
    let (op, alg, key, mech) = cipher_key(ctx, s, &key, mechanism, open_class, ck::CKA_ENCRYPT)?;
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
    let (op, _, key, mech) = cipher_key(ctx, s, &key, mechanism, secret_class, ck::CKA_DECRYPT)?;
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

/// What encrypt and decrypt start with: the mechanism's operation and key kind, `key` if it is
/// usable for `flag` (of the class `class_for` the key kind), and the chip's mechanism.
fn cipher_key(
    ctx: &Ctx,
    s: Session,
    key: &ObjectId,
    mechanism: &Mechanism,
    class_for: fn(KeyAlg) -> u64,
    flag: u64,
) -> Result<(CipherOp, KeyAlg, Arc<Object>, cloudkey_chip::CipherMech)> {
    let op = CipherOp::of(mechanism.ckm)?;
    let alg = op.key_alg();
    let key = usable(
        ctx,
        s,
        key,
        &Need::key(class_for(alg), alg, flag, mechanism.ckm),
    )?;
    let mech = op.mech(mechanism.ckm, &mechanism.param)?;
    Ok((op, alg, key, mech))
}
