//! The `cryptoki` crate on the built `libcloudkey_pkcs11.so` against a real cluster, each
//! scenario in a child process (see `p11`):
//! * the surface, one child per PKCS#11 spec chapter (general and slot/token, session, object,
//!   sign/verify, encrypt/decrypt, key management: wrap and derive, digest and random, the
//!   refusals) on one cluster and token: the functions with the standard errors, the two-call
//!   size protocol and bad handles; what the module signs, encrypts or MACs is checked
//!   independently (aws-lc-rs) where the key allows; a failing chapter does not stop the others;
//! * SM2 through the vendor mechanisms, verified by the `openssl` 3 CLI;
//! * 64 threads, each with its own session, signing at once: every signature verifies (p256)
//!   and no call fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aws_lc_rs::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
    RSA_PSS_2048_8192_SHA256,
};
use cloudkey_tests::{Cluster, P11_SO_PIN};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::elliptic_curve::{EcKdf, Ecdh1DeriveParams};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeInfo, AttributeType, KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::types::AuthPin;
use cryptoki_sys as ck;

use crate::p11::{self, ChildCtx, P256_PARAMS, SM2_PARAMS};
use crate::p11_raw::Raw;

/// The vendor numbers of `VENDOR.md`.
const CKM_SM2_KEY_PAIR_GEN: u64 = 0x8000_8001;
const CKM_SM3_SM2: u64 = 0x8000_8100;

fn expect_rv<T: std::fmt::Debug>(
    what: &str,
    r: cryptoki::error::Result<T>,
    want: RvError,
) -> Result<()> {
    match r {
        Err(Error::Pkcs11(rv, _)) if rv == want => Ok(()),
        other => bail!("{what}: expected {want:?}, got {other:?}"),
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn value(s: &Session, o: ObjectHandle, t: AttributeType) -> Result<Vec<u8>> {
    let attrs = s.get_attributes(o, &[t])?;
    for a in attrs {
        match a {
            Attribute::EcPoint(v)
            | Attribute::EcParams(v)
            | Attribute::Modulus(v)
            | Attribute::PublicExponent(v)
            | Attribute::Label(v)
            | Attribute::Id(v)
            | Attribute::Value(v)
            | Attribute::Application(v) => return Ok(v),
            _ => {}
        }
    }
    bail!("{t:?} not returned")
}

fn ec_point(s: &Session, public: ObjectHandle) -> Result<Vec<u8>> {
    Ok(p11::point_of(&value(s, public, AttributeType::EcPoint)?))
}

fn ec_templates(label: &str, sign: bool, derive: bool) -> (Vec<Attribute>, Vec<Attribute>) {
    let l = label.as_bytes().to_vec();
    (
        vec![
            Attribute::Token(true),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Verify(true),
            Attribute::Label(l.clone()),
            Attribute::Id(l.clone()),
        ],
        vec![
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(sign),
            Attribute::Derive(derive),
            Attribute::Label(l.clone()),
            Attribute::Id(l),
        ],
    )
}

fn aes_template(label: &str, extractable: bool, wrap: bool) -> Vec<Attribute> {
    vec![
        Attribute::Token(false),
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Wrap(wrap),
        Attribute::Unwrap(wrap),
        Attribute::Sensitive(true),
        Attribute::Extractable(extractable),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// The template of an AES key made by unwrapping or derivation.
fn aes_result_template(label: &str) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sensitive(true),
        Attribute::Label(label.as_bytes().to_vec()),
    ]
}

/// Encrypts with `a` (AES-GCM) and decrypts with `b`: the keys are the same.
fn same_aes_key(s: &Session, a: ObjectHandle, b: ObjectHandle, what: &str) -> Result<()> {
    let msg = format!("{what}: same key?");
    let mut iv = *b"0123456789ab";
    let ct = s.encrypt(
        &Mechanism::AesGcm(GcmParams::new(&mut iv, b"", 128.into())?),
        a,
        msg.as_bytes(),
    )?;
    let mut iv = *b"0123456789ab";
    let pt = s
        .decrypt(
            &Mechanism::AesGcm(GcmParams::new(&mut iv, b"", 128.into())?),
            b,
            &ct,
        )
        .with_context(|| format!("{what}: decrypt with the other key"))?;
    ensure!(pt == msg.as_bytes(), "{what}: the keys differ");
    Ok(())
}

// ---- the surface, by spec chapter -------------------------------------------------------------
//
// One cluster and one token for the whole group; each chapter is a child process of its own
// (a fresh `C_Initialize`), and every chapter runs whatever another one does, so one failure
// does not hide the rest. Each chapter makes the keys it needs. The chapters of a phase run at
// once (logins are per process); `objects` counts the token's key pairs, so it runs in the
// phase before the chapters that make token keys.

/// The phases of chapters, and the chapters' child entry points (`surface::<chapter>`).
macro_rules! chapters {
    ($([$($chapter:ident),* $(,)?]),* $(,)?) => {
        const PHASES: &[&[&str]] = &[$(&[$(stringify!($chapter)),*]),*];

        /// The `#[ignore]`d entry points of the chapters' child processes.
        mod surface {
            $($(
                #[test]
                #[ignore = "a child process of cryptoki_drives_sessions_objects_and_every_operation"]
                fn $chapter() -> anyhow::Result<()> {
                    super::child_chapter(stringify!($chapter), super::$chapter)
                }
            )*)*
        }
    };
}

chapters!(
    [general_slot_token, session, objects, digest_random],
    [sign_verify, encrypt_decrypt, keys_wrap_derive, refusals],
);

/// Runs one chapter's child; what went wrong, if anything.
fn run_chapter(chapter: &str, token: &cloudkey_tests::Pkcs11Token) -> Option<String> {
    let out = match tempfile::tempdir() {
        Ok(out) => out,
        Err(e) => return Some(format!("{chapter}: a temporary directory: {e}")),
    };
    let test = format!("pkcs11_cryptoki::surface::{chapter}");
    let done = format!("surface {chapter}: done");
    match p11::run_child(&test, token, out.path()) {
        Ok(stdout) if stdout.contains(&done) => None,
        Ok(stdout) => Some(format!("{chapter}: no {done:?} in\n{stdout}")),
        Err(e) => Some(format!("{chapter}: {e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cryptoki_drives_sessions_objects_and_every_operation() -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let token = cluster.pkcs11_token("surface").await?;
    let started = Instant::now();
    let failures = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        for phase in PHASES {
            std::thread::scope(|scope| {
                let runs: Vec<_> = phase
                    .iter()
                    .map(|chapter| scope.spawn(|| run_chapter(chapter, &token)))
                    .collect();
                for (run, chapter) in runs.into_iter().zip(phase.iter()) {
                    let failed = run
                        .join()
                        .unwrap_or_else(|_| Some(format!("{chapter}: the runner panicked")));
                    failures.extend(failed);
                }
            });
        }
        failures
    })
    .await?;
    let chapters: usize = PHASES.iter().map(|p| p.len()).sum();
    ensure!(
        failures.is_empty(),
        "{} of {chapters} chapters failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    println!(
        "cryptoki surface ({chapters} chapters) in {:?}",
        started.elapsed()
    );
    Ok(())
}

/// A chapter's child: the module initialised, the chapter, the module finalised.
fn child_chapter(name: &str, chapter: fn(&ChildCtx) -> Result<()>) -> Result<()> {
    let Some(ctx) = p11::child() else {
        return Ok(());
    };
    ctx.initialize()?;
    chapter(&ctx)?;
    ctx.pkcs11.clone().finalize()?;
    println!("surface {name}: done");
    Ok(())
}

/// The message the signature chapters sign.
const MSG: &[u8] = b"cloudkey signs this";

/// A read-write session with the user logged in, and a read-only one (which shares the login).
fn user_sessions(ctx: &ChildCtx) -> Result<(Session, Session)> {
    let rw = p11::login_rw(ctx)?;
    let ro = ctx.pkcs11.open_ro_session(ctx.slot()?)?;
    Ok((rw, ro))
}

/// A P-256 key pair on the token (public, private).
fn ec_pair(
    s: &Session,
    label: &str,
    sign: bool,
    derive: bool,
) -> Result<(ObjectHandle, ObjectHandle)> {
    let (pub_t, priv_t) = ec_templates(label, sign, derive);
    Ok(s.generate_key_pair(&Mechanism::EccKeyPairGen, &pub_t, &priv_t)?)
}

/// The `CKA_ID` of [`rsa_pair`]'s keys.
const RSA_ID: &[u8] = b"rsa";

/// An RSA-2048 key pair on the token that signs, encrypts and wraps (public, private).
fn rsa_pair(s: &Session) -> Result<(ObjectHandle, ObjectHandle)> {
    Ok(s.generate_key_pair(
        &Mechanism::RsaPkcsKeyPairGen,
        &[
            Attribute::Token(true),
            Attribute::ModulusBits(2048.into()),
            Attribute::PublicExponent(vec![1, 0, 1]),
            Attribute::Verify(true),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
            Attribute::Label(b"rsa".to_vec()),
            Attribute::Id(RSA_ID.to_vec()),
        ],
        &[
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Decrypt(true),
            Attribute::Unwrap(true),
            Attribute::Label(b"rsa".to_vec()),
            Attribute::Id(RSA_ID.to_vec()),
        ],
    )?)
}

/// The non-extractable AES wrapping key.
fn kek(s: &Session) -> Result<ObjectHandle> {
    Ok(s.generate_key(&Mechanism::AesKeyGen, &aes_template("kek", false, true))?)
}

/// The extractable AES key.
fn aes(s: &Session) -> Result<ObjectHandle> {
    Ok(s.generate_key(&Mechanism::AesKeyGen, &aes_template("aes", true, false))?)
}

/// General purpose, slot and token management: the library, the slot, the token, the
/// mechanisms.
fn general_slot_token(ctx: &ChildCtx) -> Result<()> {
    let p = &ctx.pkcs11;
    expect_rv(
        "C_Initialize twice",
        p.initialize(cryptoki::context::CInitializeArgs::new(
            cryptoki::context::CInitializeFlags::OS_LOCKING_OK,
        )),
        RvError::CryptokiAlreadyInitialized,
    )?;
    let info = p.get_library_info()?;
    ensure!(info.manufacturer_id() == "cloudkey", "{info:?}");

    let slot = ctx.slot()?;
    let si = p.get_slot_info(slot)?;
    ensure!(si.token_present(), "{si:?}");
    let ti = p.get_token_info(slot)?;
    ensure!(ti.label() == ctx.label, "token label: {ti:?}");
    ensure!(
        ti.login_required() && ti.token_initialized() && ti.user_pin_initialized() && ti.rng(),
        "token flags: {ti:?}"
    );
    let mechs = p.get_mechanism_list(slot)?;
    for m in [
        MechanismType::ECC_KEY_PAIR_GEN,
        MechanismType::ECDSA,
        MechanismType::ECDSA_SHA256,
        MechanismType::ECDH1_DERIVE,
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        MechanismType::SHA256_RSA_PKCS,
        MechanismType::RSA_PKCS_PSS,
        MechanismType::RSA_PKCS_OAEP,
        MechanismType::AES_KEY_GEN,
        MechanismType::AES_GCM,
        MechanismType::AES_CBC_PAD,
        MechanismType::AES_KEY_WRAP,
        MechanismType::AES_KEY_WRAP_PAD,
        MechanismType::GENERIC_SECRET_KEY_GEN,
        MechanismType::SHA256_HMAC,
        MechanismType::SHA256,
    ] {
        ensure!(mechs.contains(&m), "{m} not listed: {mechs:?}");
    }
    let ecdsa = p.get_mechanism_info(slot, MechanismType::ECDSA)?;
    ensure!(
        ecdsa.sign() && ecdsa.verify() && ecdsa.hardware() && !ecdsa.encrypt(),
        "ECDSA info: {ecdsa:?}"
    );
    ensure!(
        (ecdsa.min_key_size(), ecdsa.max_key_size()) == (256, 256),
        "{ecdsa:?}"
    );
    let rsa = p.get_mechanism_info(slot, MechanismType::RSA_PKCS_KEY_PAIR_GEN)?;
    ensure!(
        rsa.generate_key_pair() && rsa.min_key_size() == 2048,
        "{rsa:?}"
    );
    let gcm = p.get_mechanism_info(slot, MechanismType::AES_GCM)?;
    ensure!(gcm.encrypt() && gcm.decrypt() && !gcm.sign(), "{gcm:?}");
    let sha = p.get_mechanism_info(slot, MechanismType::SHA256)?;
    ensure!(sha.digest() && !sha.hardware(), "SHA256 info: {sha:?}");
    expect_rv(
        "info of an unknown mechanism",
        p.get_mechanism_info(slot, MechanismType::DES3_CBC),
        RvError::MechanismInvalid,
    )?;
    Ok(())
}

/// Session management: session states, user and SO logins and their exclusions.
fn session(ctx: &ChildCtx) -> Result<()> {
    let p = &ctx.pkcs11;
    let slot = ctx.slot()?;
    let ro = p.open_ro_session(slot)?;
    let rw = p.open_rw_session(slot)?;
    let state = |s: &Session| s.get_session_info().map(|i| i.session_state());
    ensure!(state(&ro)? == SessionState::RoPublic);
    ensure!(state(&rw)? == SessionState::RwPublic);
    ensure!(rw.get_session_info()?.read_write() && !ro.get_session_info()?.read_write());
    expect_rv(
        "wrong user PIN",
        ro.login(UserType::User, Some(&AuthPin::new("9999".into()))),
        RvError::PinIncorrect,
    )?;
    ensure!(state(&ro)? == SessionState::RoPublic);
    ro.login(UserType::User, Some(&p11::user_pin()))?;
    ensure!(state(&ro)? == SessionState::RoUser);
    ensure!(state(&rw)? == SessionState::RwUser, "the login is per slot");
    expect_rv(
        "second login",
        rw.login(UserType::User, Some(&p11::user_pin())),
        RvError::UserAlreadyLoggedIn,
    )?;
    rw.logout()?;
    ensure!(state(&ro)? == SessionState::RoPublic);
    expect_rv("logout twice", rw.logout(), RvError::UserNotLoggedIn)?;
    let so_pin = AuthPin::new(P11_SO_PIN.into());
    expect_rv(
        "SO login with a read-only session open",
        rw.login(UserType::So, Some(&so_pin)),
        RvError::SessionReadOnlyExists,
    )?;
    ro.close()?;
    rw.login(UserType::So, Some(&so_pin))?;
    ensure!(state(&rw)? == SessionState::RwSecurityOfficer);
    expect_rv(
        "read-only session while the SO is logged in",
        p.open_ro_session(slot),
        RvError::SessionReadWriteSoExists,
    )?;
    expect_rv(
        "user login while the SO is",
        rw.login(UserType::User, Some(&p11::user_pin())),
        RvError::UserAnotherAlreadyLoggedIn,
    )?;
    rw.logout()?;
    rw.login(UserType::User, Some(&p11::user_pin()))?;
    let ro = p.open_ro_session(slot)?;
    ensure!(state(&ro)? == SessionState::RoUser);
    ro.close()?;
    rw.close()?;
    Ok(())
}

/// Object management: finding objects, attributes, objects by value, copy, destroy.
fn objects(ctx: &ChildCtx) -> Result<()> {
    let (rw, ro) = user_sessions(ctx)?;
    let s = &rw;
    let (ec_pub, ec_priv) = ec_pair(s, "ec-sign", true, false)?;
    ec_pair(s, "ecdh-a", false, true)?;
    ec_pair(s, "ecdh-b", false, true)?;
    let (_, rsa_priv) = rsa_pair(s)?;
    let aes = aes(s)?;

    // Finding objects.
    let by_label = s.find_objects(&[Attribute::Label(b"ec-sign".to_vec())])?;
    ensure!(by_label.len() == 2, "by label: {by_label:?}");
    let by_id = s.find_objects(&[
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::Id(RSA_ID.to_vec()),
    ])?;
    ensure!(by_id == [rsa_priv], "by id and class: {by_id:?}");
    let privates = s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?;
    ensure!(privates.len() == 4, "private keys: {privates:?}");
    let publics = ro.find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])?;
    ensure!(publics.len() == 4, "public keys: {publics:?}");
    ensure!(s
        .find_objects(&[Attribute::Label(b"nothing".to_vec())])?
        .is_empty());

    // Attributes.
    let attrs = s.get_attributes(
        ec_pub,
        &[
            AttributeType::Class,
            AttributeType::KeyType,
            AttributeType::EcParams,
            AttributeType::Token,
        ],
    )?;
    for want in [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::Token(true),
    ] {
        ensure!(attrs.contains(&want), "{want:?} not in {attrs:?}");
    }
    s.update_attributes(ec_pub, &[Attribute::Label(b"renamed".to_vec())])?;
    ensure!(value(s, ec_pub, AttributeType::Label)? == b"renamed");
    let info = s.get_attribute_info(aes, &[AttributeType::Value, AttributeType::ValueLen])?;
    ensure!(
        matches!(info[0], AttributeInfo::Sensitive),
        "CKA_VALUE of a sensitive key: {info:?}"
    );
    let attrs = s.get_attributes(aes, &[AttributeType::ValueLen, AttributeType::Sensitive])?;
    ensure!(
        attrs.contains(&Attribute::ValueLen(32.into()))
            && attrs.contains(&Attribute::Sensitive(true)),
        "{attrs:?}"
    );

    // Objects by value, copy, destroy.
    let point = ec_point(s, ec_pub)?;
    let data = s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(false),
        Attribute::Label(b"note".to_vec()),
        Attribute::Application(b"cloudkey-it".to_vec()),
        Attribute::Value(b"hello".to_vec()),
    ])?;
    ensure!(value(s, data, AttributeType::Value)? == b"hello");
    let imported = s.create_object(&[
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(false),
        Attribute::EcParams(P256_PARAMS.to_vec()),
        Attribute::EcPoint(p11::der_tlv(0x04, &point)),
        Attribute::Verify(true),
        Attribute::Label(b"imported".to_vec()),
    ])?;
    let sig = s.sign(&Mechanism::EcdsaSha256, ec_priv, MSG)?;
    s.verify(&Mechanism::EcdsaSha256, imported, MSG, &sig)?;
    let copy = s.copy_object(data, &[Attribute::Label(b"copy".to_vec())])?;
    ensure!(copy != data);
    ensure!(value(s, copy, AttributeType::Value)? == b"hello");
    ensure!(value(s, copy, AttributeType::Label)? == b"copy");
    ensure!(value(s, data, AttributeType::Label)? == b"note");
    s.destroy_object(copy)?;
    expect_rv(
        "a destroyed object's attributes",
        s.get_attributes(copy, &[AttributeType::Label]),
        RvError::ObjectHandleInvalid,
    )?;
    expect_rv(
        "destroying it again",
        s.destroy_object(copy),
        RvError::ObjectHandleInvalid,
    )?;
    ro.close()?;
    rw.close()?;
    Ok(())
}

/// Signing and MACing, verifying: checked by the module and independently.
fn sign_verify(ctx: &ChildCtx) -> Result<()> {
    let (rw, ro) = user_sessions(ctx)?;
    let s = &rw;
    let (ec_pub, ec_priv) = ec_pair(s, "ec-sign", true, false)?;
    let (rsa_pub, rsa_priv) = rsa_pair(s)?;
    let hmac_key = s.generate_key(
        &Mechanism::GenericSecretKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(32.into()),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Label(b"hmac".to_vec()),
        ],
    )?;
    let msg = MSG;
    let point = ec_point(s, ec_pub)?;
    ensure!(point.len() == 65 && point[0] == 4, "EC point {point:02x?}");
    let sig = s.sign(&Mechanism::Ecdsa, ec_priv, &sha256(msg))?;
    ensure!(sig.len() == 64);
    s.verify(&Mechanism::Ecdsa, ec_pub, &sha256(msg), &sig)?;
    ensure!(
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(msg, &sig)
            .is_ok(),
        "CKM_ECDSA signature does not verify with aws-lc-rs"
    );
    s.sign_init(&Mechanism::EcdsaSha256, ec_priv)?;
    for part in msg.chunks(5) {
        s.sign_update(part)?;
    }
    let sig = s.sign_final()?;
    ensure!(
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
            .verify(msg, &sig)
            .is_ok(),
        "multi-part CKM_ECDSA_SHA256 signature does not verify"
    );
    s.verify(&Mechanism::EcdsaSha256, ec_pub, msg, &sig)?;
    let mut bad = sig.clone();
    bad[10] ^= 1;
    expect_rv(
        "a corrupted signature",
        s.verify(&Mechanism::EcdsaSha256, ec_pub, msg, &bad),
        RvError::SignatureInvalid,
    )?;
    // A read-only session signs as well.
    let sig = ro.sign(&Mechanism::EcdsaSha256, ec_priv, msg)?;
    ro.verify(&Mechanism::EcdsaSha256, ec_pub, msg, &sig)?;

    let n = value(s, rsa_pub, AttributeType::Modulus)?;
    let e = value(s, rsa_pub, AttributeType::PublicExponent)?;
    ensure!(n.len() == 256, "modulus of {} bytes", n.len());
    let rsa_key = RsaPublicKeyComponents { n: &n, e: &e };
    let sig = s.sign(&Mechanism::Sha256RsaPkcs, rsa_priv, msg)?;
    ensure!(sig.len() == 256);
    s.verify(&Mechanism::Sha256RsaPkcs, rsa_pub, msg, &sig)?;
    rsa_key
        .verify(&RSA_PKCS1_2048_8192_SHA256, msg, &sig)
        .map_err(|_| anyhow::anyhow!("SHA256-RSA-PKCS signature does not verify"))?;
    let pss = Mechanism::RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: 32.into(),
    });
    let sig = s.sign(&pss, rsa_priv, &sha256(msg))?;
    s.verify(&pss, rsa_pub, &sha256(msg), &sig)?;
    rsa_key
        .verify(&RSA_PSS_2048_8192_SHA256, msg, &sig)
        .map_err(|_| anyhow::anyhow!("RSA-PSS signature does not verify"))?;
    expect_rv(
        "ECDSA with an RSA key",
        s.sign(&Mechanism::Ecdsa, rsa_priv, &sha256(msg)),
        RvError::KeyTypeInconsistent,
    )?;

    let mac = s.sign(&Mechanism::Sha256Hmac, hmac_key, msg)?;
    ensure!(mac.len() == 32);
    s.verify(&Mechanism::Sha256Hmac, hmac_key, msg, &mac)?;
    s.sign_init(&Mechanism::Sha256Hmac, hmac_key)?;
    s.sign_update(&msg[..7])?;
    s.sign_update(&msg[7..])?;
    ensure!(s.sign_final()? == mac, "multi-part HMAC differs");
    // A key given by value: the MAC is the one aws-lc-rs computes.
    let secret = [0x42u8; 32];
    let by_value = s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Token(false),
        Attribute::Value(secret.to_vec()),
        Attribute::Sign(true),
        Attribute::Verify(true),
    ])?;
    let want = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &secret),
        msg,
    );
    ensure!(
        s.sign(&Mechanism::Sha256Hmac, by_value, msg)? == want.as_ref(),
        "HMAC-SHA256 differs from aws-lc-rs"
    );
    ro.close()?;
    rw.close()?;
    Ok(())
}

/// Encryption and decryption: AES-GCM and AES-CBC-PAD single- and multi-part (checked against
/// aws-lc-rs with a key given by value), RSA-OAEP with and without a label.
fn encrypt_decrypt(ctx: &ChildCtx) -> Result<()> {
    let s = &p11::login_rw(ctx)?;
    let aes = aes(s)?;
    let (rsa_pub, rsa_priv) = rsa_pair(s)?;
    let plain = b"sixteen byte blk and then some more".to_vec();
    let aad = b"header";
    let mut iv = *b"unique-iv-12";
    let gcm = Mechanism::AesGcm(GcmParams::new(&mut iv, aad, 128.into())?);
    let ct = s.encrypt(&gcm, aes, &plain)?;
    ensure!(ct.len() == plain.len() + 16 && ct[..plain.len()] != plain[..]);
    ensure!(s.decrypt(&gcm, aes, &ct)? == plain);
    s.encrypt_init(&gcm, aes)?;
    let mut ct2 = s.encrypt_update(&plain[..10])?;
    ct2.extend(s.encrypt_update(&plain[10..])?);
    ct2.extend(s.encrypt_final()?);
    ensure!(ct2 == ct, "multi-part AES-GCM differs from single-part");
    s.decrypt_init(&gcm, aes)?;
    let mut pt = s.decrypt_update(&ct[..20])?;
    pt.extend(s.decrypt_update(&ct[20..])?);
    pt.extend(s.decrypt_final()?);
    ensure!(pt == plain, "multi-part AES-GCM decryption");
    let mut tampered = ct.clone();
    tampered[0] ^= 1;
    ensure!(
        s.decrypt(&gcm, aes, &tampered).is_err(),
        "a tampered GCM ciphertext decrypts"
    );
    // A key given by value: the ciphertext is the one aws-lc-rs computes.
    let key_bytes = [7u8; 32];
    let aes_by_value = s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Value(key_bytes.to_vec()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
    ])?;
    let mut iv = *b"unique-iv-12";
    let ct = s.encrypt(
        &Mechanism::AesGcm(GcmParams::new(&mut iv, aad, 128.into())?),
        aes_by_value,
        &plain,
    )?;
    let mut want = plain.clone();
    aws_lc_rs::aead::LessSafeKey::new(
        aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &key_bytes)
            .map_err(|_| anyhow::anyhow!("aes key"))?,
    )
    .seal_in_place_append_tag(
        aws_lc_rs::aead::Nonce::assume_unique_for_key(*b"unique-iv-12"),
        aws_lc_rs::aead::Aad::from(aad),
        &mut want,
    )
    .map_err(|_| anyhow::anyhow!("seal"))?;
    ensure!(ct == want, "AES-GCM differs from aws-lc-rs");

    let cbc = Mechanism::AesCbcPad([3u8; 16]);
    let ct = s.encrypt(&cbc, aes, &plain)?;
    // PKCS#7 padding always adds 1 to 16 bytes.
    ensure!(
        ct.len() == (plain.len() / 16 + 1) * 16,
        "CBC-PAD: {} bytes",
        ct.len()
    );
    ensure!(s.decrypt(&cbc, aes, &ct)? == plain);
    s.encrypt_init(&cbc, aes)?;
    let mut ct2 = s.encrypt_update(&plain[..17])?;
    ct2.extend(s.encrypt_update(&plain[17..])?);
    ct2.extend(s.encrypt_final()?);
    ensure!(ct2 == ct, "multi-part AES-CBC-PAD differs");
    s.decrypt_init(&cbc, aes)?;
    let mut pt = s.decrypt_update(&ct[..16])?;
    pt.extend(s.decrypt_update(&ct[16..])?);
    pt.extend(s.decrypt_final()?);
    ensure!(pt == plain, "multi-part AES-CBC-PAD decryption");

    for label in [None, Some(&b"label"[..])] {
        let source = label.map_or_else(PkcsOaepSource::empty, PkcsOaepSource::data_specified);
        let oaep = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
            MechanismType::SHA256,
            PkcsMgfType::MGF1_SHA256,
            source,
        ));
        let ct = s.encrypt(&oaep, rsa_pub, MSG)?;
        ensure!(ct.len() == 256);
        ensure!(
            s.decrypt(&oaep, rsa_priv, &ct)? == MSG,
            "RSA-OAEP round trip"
        );
    }
    Ok(())
}

/// Key management: wrapping and unwrapping (the extractable AES key leaves under the KEK and
/// under RSA-OAEP, and what comes back is the same key), ECDH derivation.
fn keys_wrap_derive(ctx: &ChildCtx) -> Result<()> {
    let s = &p11::login_rw(ctx)?;
    let kek = kek(s)?;
    let aes = aes(s)?;
    let (rsa_pub, rsa_priv) = rsa_pair(s)?;
    let (a_pub, a_priv) = ec_pair(s, "ecdh-a", false, true)?;
    let (b_pub, b_priv) = ec_pair(s, "ecdh-b", false, true)?;
    for (mech, len) in [(Mechanism::AesKeyWrap, 40), (Mechanism::AesKeyWrapPad, 40)] {
        let wrapped = s.wrap_key(&mech, kek, aes)?;
        ensure!(wrapped.len() == len, "{mech:?}: {} bytes", wrapped.len());
        let back = s.unwrap_key(&mech, kek, &wrapped, &aes_result_template("unwrapped"))?;
        same_aes_key(s, aes, back, &format!("{mech:?}"))?;
    }
    let oaep = Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    ));
    let wrapped = s.wrap_key(&oaep, rsa_pub, aes)?;
    ensure!(wrapped.len() == 256);
    // The wrapped length does not tell the key's: the node wants CKA_VALUE_LEN here.
    let template = [
        aes_result_template("unwrapped"),
        vec![Attribute::ValueLen(32.into())],
    ]
    .concat();
    let back = s.unwrap_key(&oaep, rsa_priv, &wrapped, &template)?;
    same_aes_key(s, aes, back, "RSA-OAEP wrap")?;
    expect_rv(
        "wrapping a non-extractable key",
        s.wrap_key(&Mechanism::AesKeyWrap, kek, kek),
        RvError::KeyUnextractable,
    )?;

    // ECDH: each side derives from its private key and the other's point.
    let (pa, pb) = (ec_point(s, a_pub)?, ec_point(s, b_pub)?);
    let kab = s.derive_key(
        &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &pb)),
        a_priv,
        &[
            aes_result_template("ecdh-ab"),
            vec![Attribute::ValueLen(32.into())],
        ]
        .concat(),
    )?;
    let kba = s.derive_key(
        &Mechanism::Ecdh1Derive(Ecdh1DeriveParams::new(EcKdf::null(), &pa)),
        b_priv,
        &[
            aes_result_template("ecdh-ba"),
            vec![Attribute::ValueLen(32.into())],
        ]
        .concat(),
    )?;
    same_aes_key(s, kab, kba, "ECDH")?;
    Ok(())
}

/// Message digesting (module-side) against known answers, random number generation.
fn digest_random(ctx: &ChildCtx) -> Result<()> {
    let s = &p11::login_rw(ctx)?;
    let abc_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    ensure!(hex::encode(s.digest(&Mechanism::Sha256, b"abc")?) == abc_sha256);
    s.digest_init(&Mechanism::Sha256)?;
    s.digest_update(b"a")?;
    s.digest_update(b"bc")?;
    ensure!(hex::encode(s.digest_final()?) == abc_sha256);
    ensure!(
        hex::encode(s.digest(&Mechanism::Sha1, b"abc")?)
            == "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    let r1 = s.generate_random_vec(32)?;
    let r2 = s.generate_random_vec(32)?;
    ensure!(r1 != r2 && r1 != [0u8; 32]);
    ensure!(s.generate_random_vec(5000)?.len() == 5000);
    Ok(())
}

/// The refusals: a key used against its attributes, a token object from a read-only session,
/// what `cryptoki` hides (the two-call size protocol, bad handles); logging out takes the
/// private objects away.
fn refusals(ctx: &ChildCtx) -> Result<()> {
    let (rw, ro) = user_sessions(ctx)?;
    let s = &rw;
    let msg = MSG;
    let (_, ec_priv) = ec_pair(s, "ec-sign", true, false)?;
    let (_, a_priv) = ec_pair(s, "ecdh-a", false, true)?;
    let kek = kek(s)?;
    let aes = aes(s)?;
    // A handle that was valid: a copied object, destroyed.
    let data = s.create_object(&[
        Attribute::Class(ObjectClass::DATA),
        Attribute::Token(false),
        Attribute::Value(b"hello".to_vec()),
    ])?;
    let copy = s.copy_object(data, &[Attribute::Label(b"copy".to_vec())])?;
    s.destroy_object(copy)?;
    expect_rv(
        "signing with a CKA_SIGN=false key",
        s.sign(&Mechanism::Ecdsa, a_priv, &sha256(msg)),
        RvError::KeyFunctionNotPermitted,
    )?;
    expect_rv(
        "a token object from a read-only session",
        ro.create_object(&[
            Attribute::Class(ObjectClass::DATA),
            Attribute::Token(true),
            Attribute::Value(b"x".to_vec()),
        ]),
        RvError::SessionReadOnly,
    )?;
    two_call_protocol_and_bad_handles(ctx, s, ec_priv, aes, kek, copy)?;

    // Logging out takes the private objects away.
    s.logout()?;
    ensure!(
        s.find_objects(&[Attribute::Class(ObjectClass::PRIVATE_KEY)])?
            .is_empty(),
        "private keys visible after logout"
    );
    expect_rv(
        "signing after logout",
        s.sign(&Mechanism::Ecdsa, ec_priv, &sha256(msg)),
        RvError::UserNotLoggedIn,
    )?;
    ro.close()?;
    rw.close()?;
    Ok(())
}

/// What `cryptoki` hides: NULL and too-short output buffers, handles never issued.
fn two_call_protocol_and_bad_handles(
    ctx: &ChildCtx,
    s: &Session,
    ec_priv: ObjectHandle,
    aes: ObjectHandle,
    kek: ObjectHandle,
    destroyed: ObjectHandle,
) -> Result<()> {
    let raw = Raw::open(&ctx.module)?;
    let h = s.handle();
    let digest = sha256(b"two calls");

    // C_Sign: NULL → length; short → CKR_BUFFER_TOO_SMALL and the length, the operation
    // still active; then the signature.
    ensure!(raw.sign_init(h, ck::CKM_ECDSA, ec_priv.handle()) == ck::CKR_OK);
    ensure!(raw.sign(h, &digest, None) == (ck::CKR_OK, 64));
    let mut short = [0u8; 10];
    ensure!(raw.sign(h, &digest, Some(&mut short)) == (ck::CKR_BUFFER_TOO_SMALL, 64));
    let mut sig = [0u8; 80];
    let (rv, n) = raw.sign(h, &digest, Some(&mut sig));
    ensure!(
        rv == ck::CKR_OK && n == 64,
        "C_Sign: rv 0x{rv:x}, {n} bytes"
    );
    ensure!(
        raw.sign(h, &digest, Some(&mut sig)).0 == ck::CKR_OPERATION_NOT_INITIALIZED,
        "the signature ended the operation"
    );

    // C_Encrypt (length unknown beforehand): the same protocol.
    let iv = [9u8; 16];
    let plain = [1u8; 20];
    ensure!(raw.encrypt_init_iv(h, ck::CKM_AES_CBC_PAD, aes.handle(), &iv) == ck::CKR_OK);
    ensure!(raw.encrypt(h, &plain, None) == (ck::CKR_OK, 32));
    let mut short = [0u8; 16];
    ensure!(raw.encrypt(h, &plain, Some(&mut short)) == (ck::CKR_BUFFER_TOO_SMALL, 32));
    let mut ct = [0u8; 32];
    ensure!(raw.encrypt(h, &plain, Some(&mut ct)) == (ck::CKR_OK, 32));
    let again = s.encrypt(&Mechanism::AesCbcPad(iv), aes, &plain)?;
    ensure!(again == ct, "the ciphertext of the two-call protocol");

    // C_WrapKey.
    let (rv, n) = raw.wrap_key(h, ck::CKM_AES_KEY_WRAP, kek.handle(), aes.handle(), None);
    ensure!(rv == ck::CKR_OK && n == 40, "C_WrapKey size: 0x{rv:x} {n}");
    let mut short = [0u8; 8];
    ensure!(
        raw.wrap_key(
            h,
            ck::CKM_AES_KEY_WRAP,
            kek.handle(),
            aes.handle(),
            Some(&mut short)
        ) == (ck::CKR_BUFFER_TOO_SMALL, 40)
    );
    let mut wrapped = [0u8; 40];
    ensure!(
        raw.wrap_key(
            h,
            ck::CKM_AES_KEY_WRAP,
            kek.handle(),
            aes.handle(),
            Some(&mut wrapped)
        ) == (ck::CKR_OK, 40)
    );

    // C_GetAttributeValue: NULL → length; short → CKR_BUFFER_TOO_SMALL with
    // CK_UNAVAILABLE_INFORMATION; a sensitive value → CKR_ATTRIBUTE_SENSITIVE.
    let (rv, n) = raw.attribute(h, aes.handle(), ck::CKA_LABEL, None);
    ensure!(rv == ck::CKR_OK && n == 3, "CKA_LABEL length: 0x{rv:x} {n}");
    let mut short = [0u8; 2];
    ensure!(
        raw.attribute(h, aes.handle(), ck::CKA_LABEL, Some(&mut short))
            == (ck::CKR_BUFFER_TOO_SMALL, ck::CK_UNAVAILABLE_INFORMATION)
    );
    let mut value = [0u8; 32];
    ensure!(
        raw.attribute(h, aes.handle(), ck::CKA_VALUE, Some(&mut value))
            == (ck::CKR_ATTRIBUTE_SENSITIVE, ck::CK_UNAVAILABLE_INFORMATION),
        "CKA_VALUE of a sensitive key"
    );
    ensure!(value == [0u8; 32], "nothing of the value is written");

    // Handles never issued, or no longer valid.
    let never = 0xdead_beef;
    ensure!(
        raw.sign_init(never, ck::CKM_ECDSA, ec_priv.handle()) == ck::CKR_SESSION_HANDLE_INVALID
    );
    ensure!(raw.sign(never, &digest, None).0 == ck::CKR_SESSION_HANDLE_INVALID);
    ensure!(raw.sign_init(h, ck::CKM_ECDSA, never) == ck::CKR_KEY_HANDLE_INVALID);
    ensure!(raw.sign_init(h, ck::CKM_ECDSA, destroyed.handle()) == ck::CKR_KEY_HANDLE_INVALID);
    ensure!(raw.attribute(h, never, ck::CKA_LABEL, None).0 == ck::CKR_OBJECT_HANDLE_INVALID);
    ensure!(raw.sign_init(h, ck::CKM_ECDSA, ck::CK_INVALID_HANDLE) == ck::CKR_KEY_HANDLE_INVALID);
    Ok(())
}

// ---- SM2 --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sm2_signatures_through_the_module_verify_with_openssl() -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let token = cluster.pkcs11_token("sm2").await?;
    let out = tempfile::tempdir()?;
    let dir = out.path().to_path_buf();
    tokio::task::spawn_blocking({
        let token = token.clone();
        let dir = dir.clone();
        move || p11::run_child("pkcs11_cryptoki::child_sm2", &token, &dir)
    })
    .await??;
    // Two keys: one by the vendor key-pair mechanism, one as CKK_EC on the SM2 curve.
    for name in ["vendor", "ec"] {
        let point = std::fs::read(dir.join(format!("{name}.point")))?;
        let sig = std::fs::read(dir.join(format!("{name}.sig")))?;
        ensure!(
            point.len() == 65 && sig.len() == 64,
            "{name}: {point:?} {sig:?}"
        );
        p11::write_public_pem(
            &dir,
            &format!("{name}pub"),
            &p11::ec_spki(SM2_PARAMS, &point),
        )?;
        std::fs::write(dir.join(format!("{name}.der")), p11::sig_der(&sig))?;
        let pem = format!("{name}pub.pem");
        let sigfile = format!("{name}.der");
        let verify = [
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            &pem,
            "-rawin",
            "-in",
            "msg",
            "-sigfile",
            &sigfile,
            "-digest",
            "sm3",
            "-pkeyopt",
            "distid:1234567812345678",
        ];
        let out = p11::openssl(&dir, &[], &verify)?;
        ensure!(out.contains("Signature Verified Successfully"), "{out}");
        // OpenSSL refuses what is not the signature.
        let mut bad = sig.clone();
        bad[5] ^= 1;
        std::fs::write(dir.join("bad.der"), p11::sig_der(&bad))?;
        let mut verify_bad = verify;
        verify_bad[9] = "bad.der";
        ensure!(
            p11::openssl_fails(&dir, &verify_bad)?,
            "a bad SM2 signature verifies"
        );
    }
    Ok(())
}

#[test]
#[ignore = "a child process of sm2_signatures_through_the_module_verify_with_openssl"]
fn child_sm2() -> Result<()> {
    let Some(ctx) = p11::child() else {
        return Ok(());
    };
    ctx.initialize()?;
    let s = p11::login_rw(&ctx)?;
    let msg = b"cloudkey SM2 through PKCS#11";
    std::fs::write(ctx.out.join("msg"), msg)?;
    let sm3_sm2 = MechanismType::new_vendor_defined(CKM_SM3_SM2)?;
    let sign_mech = Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(sm3_sm2, None));
    let vendor_gen = Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(
        MechanismType::new_vendor_defined(CKM_SM2_KEY_PAIR_GEN)?,
        None,
    ));
    let info = ctx.pkcs11.get_mechanism_info(ctx.slot()?, sm3_sm2)?;
    ensure!(info.sign() && info.verify(), "{info:?}");
    for (name, mech, params) in [
        ("vendor", vendor_gen, None),
        ("ec", Mechanism::EccKeyPairGen, Some(SM2_PARAMS)),
    ] {
        let mut public = vec![
            Attribute::Token(true),
            Attribute::Verify(true),
            Attribute::Label(name.as_bytes().to_vec()),
        ];
        if let Some(p) = params {
            public.push(Attribute::EcParams(p.to_vec()));
        }
        let private = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Sign(true),
            Attribute::Label(name.as_bytes().to_vec()),
        ];
        let (pubk, privk) = s.generate_key_pair(&mech, &public, &private)?;
        let sig = s.sign(&sign_mech, privk, msg)?;
        ensure!(
            sig.len() == 64,
            "{name}: SM2 signature of {} bytes",
            sig.len()
        );
        s.verify(&sign_mech, pubk, msg, &sig)?;
        // Multi-part gives a signature the module verifies too (SM2 signatures are random).
        s.sign_init(&sign_mech, privk)?;
        s.sign_update(&msg[..9])?;
        s.sign_update(&msg[9..])?;
        let sig2 = s.sign_final()?;
        s.verify(&sign_mech, pubk, msg, &sig2)?;
        expect_rv(
            "ECDSA with an SM2 key",
            s.sign(&Mechanism::Ecdsa, privk, &sha256(msg)),
            RvError::KeyTypeInconsistent,
        )
        .or_else(|_| {
            expect_rv(
                "ECDSA with an SM2 key",
                s.sign(&Mechanism::Ecdsa, privk, &sha256(msg)),
                RvError::KeyFunctionNotPermitted,
            )
        })?;
        std::fs::write(ctx.out.join(format!("{name}.point")), ec_point(&s, pubk)?)?;
        std::fs::write(ctx.out.join(format!("{name}.sig")), &sig)?;
    }
    Ok(())
}

// ---- threads ----------------------------------------------------------------------------------

fn verify_all(vk: &p256::ecdsa::VerifyingKey, signed: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
    use p256::ecdsa::signature::Verifier;
    for (msg, sig) in signed {
        let sig = p256::ecdsa::Signature::from_slice(sig)
            .map_err(|e| anyhow::anyhow!("signature encoding: {e}"))?;
        vk.verify(msg, &sig)
            .map_err(|e| anyhow::anyhow!("a signature does not verify: {e}"))?;
    }
    Ok(())
}

/// Messages and their signatures.
type Signed = Vec<(Vec<u8>, Vec<u8>)>;

/// Threads, each with its own session.
const THREADS: usize = 64;
/// How long they sign.
const SIGNING: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_threads_sign_at_once_without_an_error() -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let token = cluster.pkcs11_token("threads").await?;
    let out = tempfile::tempdir()?;
    let stdout = tokio::task::spawn_blocking({
        let token = token.clone();
        let out = out.path().to_path_buf();
        move || p11::run_child("pkcs11_cryptoki::child_threads", &token, &out)
    })
    .await??;
    // libtest may print the test's name on the same line.
    let line = stdout
        .lines()
        .find_map(|l| l.find("threads:").map(|i| &l[i..]))
        .context("no result line")?;
    println!("{line}");
    Ok(())
}

#[test]
#[ignore = "a child process of sixty_four_threads_sign_at_once_without_an_error"]
fn child_threads() -> Result<()> {
    let Some(ctx) = p11::child() else {
        return Ok(());
    };
    ctx.initialize()?;
    let s = p11::login_rw(&ctx)?;
    let (pub_t, priv_t) = ec_templates("threads", true, false);
    let (pubk, privk) = s.generate_key_pair(&Mechanism::EccKeyPairGen, &pub_t, &priv_t)?;
    let point = ec_point(&s, pubk)?;
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
        .map_err(|e| anyhow::anyhow!("P-256 point: {e}"))?;
    let slot = ctx.slot()?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let p = ctx.pkcs11.clone();
            let stop = stop.clone();
            std::thread::spawn(move || -> Result<(Signed, Vec<String>)> {
                let session = p.open_ro_session(slot)?;
                let mut done = Vec::new();
                let mut errors = Vec::new();
                // Bounded: the flag, or ten times the planned time.
                let bound = Instant::now() + SIGNING * 10;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < bound {
                    let msg = format!("thread {t} message {i}").into_bytes();
                    i += 1;
                    match session.sign(&Mechanism::EcdsaSha256, privk, &msg) {
                        Ok(sig) => done.push((msg, sig)),
                        Err(e) => errors.push(e.to_string()),
                    }
                }
                session.close()?;
                Ok((done, errors))
            })
        })
        .collect();
    std::thread::sleep(SIGNING);
    stop.store(true, Ordering::Relaxed);
    let mut signed = Vec::new();
    let mut errors = Vec::new();
    let mut per_thread = Vec::new();
    for h in handles {
        let (done, errs) = h
            .join()
            .map_err(|_| anyhow::anyhow!("a signing thread panicked"))??;
        per_thread.push(done.len());
        signed.extend(done);
        errors.extend(errs);
    }
    let elapsed = started.elapsed();
    ensure!(
        errors.is_empty(),
        "{} failed signatures, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    ensure!(
        per_thread.iter().all(|n| *n > 0),
        "a thread signed nothing: {per_thread:?}"
    );
    // Every signature verifies, independently of the cluster (p256), on every core.
    let verifying = Instant::now();
    let cores = std::thread::available_parallelism().map_or(2, usize::from);
    let chunk = signed.len().div_ceil(cores).max(1);
    std::thread::scope(|scope| {
        let checks: Vec<_> = signed
            .chunks(chunk)
            .map(|part| scope.spawn(|| verify_all(&vk, part)))
            .collect();
        checks.into_iter().try_for_each(|c| {
            c.join()
                .map_err(|_| anyhow::anyhow!("a verifying thread panicked"))?
        })
    })?;
    s.close()?;
    println!(
        "threads: {THREADS} threads, each with its own session, signed {} times in {elapsed:?} \
         ({:.0}/s; per thread {}..{}), 0 errors, all verified (in {:?})",
        signed.len(),
        signed.len() as f64 / elapsed.as_secs_f64(),
        per_thread.iter().min().unwrap_or(&0),
        per_thread.iter().max().unwrap_or(&0),
        verifying.elapsed(),
    );
    Ok(())
}
