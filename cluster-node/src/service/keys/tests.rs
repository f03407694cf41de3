//! The key services' tests, on the in-process fixture of [`crate::service::testkit`].

use cloudkey_protocol::msg::{AttrValue, MechParam};
use cloudkey_protocol::vendor;

use super::*;
use crate::service::mechanism::P256_OID_DER;
use crate::service::objects::get_attributes;
use crate::service::objects::tests::{
    at, at_bool, at_ulong, check_attrs, check_refusals, code, rsa_parts, val, Use,
};
use crate::service::testkit::committed::{
    create_object, derive_key, generate_key, generate_key_pair, set_attributes, unwrap_key,
};
use crate::service::testkit::{fixture, Fixture};

fn mech(ckm: u64) -> Mechanism {
    Mechanism::new(ckm)
}

fn input(data: &[u8]) -> SignInput {
    SignInput::Data(data.to_vec())
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

/// Signs, or fails naming the mechanism.
async fn sign_ok(ctx: &Ctx, s: Session, key: ObjectId, m: &Mechanism, i: SignInput) -> Vec<u8> {
    let ckm = m.ckm;
    sign(ctx, s, key, m, i)
        .await
        .unwrap_or_else(|e| panic!("sign 0x{ckm:x}: {e:?}"))
}

/// Verifies at the node, or fails naming the mechanism and `what`.
async fn verify_ok(
    ctx: &Ctx,
    (s, key): (Session, ObjectId),
    m: &Mechanism,
    i: SignInput,
    sig: Vec<u8>,
    what: &str,
) {
    let ckm = m.ckm;
    verify(ctx, s, key, m, i, sig)
        .await
        .unwrap_or_else(|e| panic!("{what}: verify 0x{ckm:x}: {e:?}"));
}

/// Encrypts `plain` under `enc`, checks that `dec` decrypts it back; the ciphertext.
async fn check_round_trip(
    ctx: &Ctx,
    s: Session,
    (enc, dec): (ObjectId, ObjectId),
    m: &Mechanism,
    plain: &[u8],
) -> Vec<u8> {
    let ckm = m.ckm;
    let ct = encrypt(ctx, s, enc, m, plain.to_vec())
        .await
        .unwrap_or_else(|e| panic!("encrypt 0x{ckm:x}: {e:?}"));
    let back = decrypt(ctx, s, dec, m, ct.clone())
        .await
        .unwrap_or_else(|e| panic!("decrypt 0x{ckm:x}: {e:?}"));
    assert_eq!(back, plain, "0x{ckm:x} round trip");
    ct
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

fn iv_mech(ckm: u64, iv: u8) -> Mechanism {
    Mechanism {
        ckm,
        param: MechParam::Iv(vec![iv; 16]),
    }
}

#[tokio::test]
async fn ec_key_pair_signs_and_verifies() {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    use ErrorCode::*;
    let Fixture { ctx, t1, t2 } = fixture();
    let user = Session::user(t1);
    let (public, private) = ec_pair(&ctx, user, vec![]).await;

    // Both halves: same id and label, the curve and the point, generation facts.
    let point = bytes(&ctx, user, public, ck::CKA_EC_POINT).await;
    assert_eq!(point.len(), 67);
    assert_eq!(&point[..3], &[0x04, 0x41, 0x04]);
    for id in [public, private] {
        #[rustfmt::skip]
        check_attrs(&ctx, user, id, &[
            (ck::CKA_EC_POINT, val(&point)),
            (ck::CKA_ID, val(b"\x01\x02")),
            (ck::CKA_LABEL, val(b"ec")),
            (ck::CKA_EC_PARAMS, val(P256_OID_DER)),
            (ck::CKA_LOCAL, val([1])),
            (ck::CKA_KEY_GEN_MECHANISM, val(ulong_value(ck::CKM_EC_KEY_PAIR_GEN))),
        ]).await;
    }
    #[rustfmt::skip]
    check_attrs(&ctx, user, private, &[
        (ck::CKA_SENSITIVE, val([1])),
        (ck::CKA_EXTRACTABLE, val([0])),
        (ck::CKA_ALWAYS_SENSITIVE, val([1])),
        (ck::CKA_NEVER_EXTRACTABLE, val([1])),
        (ck::CKA_PRIVATE, val([1])),
        (ck::CKA_SIGN, val([1])),
        (ck::CKA_DERIVE, val([0])),
        (ck::CKA_VALUE, AttrValue::Sensitive),
    ]).await;
    check_attrs(&ctx, user, public, &[(ck::CKA_PRIVATE, val([0]))]).await;

    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point[2..]).expect("point");
    // CKM_ECDSA over a digest, CKM_ECDSA_SHA256 over the message or a digest.
    let digest = mechanism::digest(cloudkey_chip::HashAlg::Sha256, b"pay 100").expect("d");
    for (ckm, i) in [
        (ck::CKM_ECDSA, SignInput::Data(digest.clone())),
        (ck::CKM_ECDSA_SHA256, input(b"pay 100")),
        (ck::CKM_ECDSA_SHA256, SignInput::Digest(digest.clone())),
    ] {
        let m = mech(ckm);
        let sig = sign_ok(&ctx, user, private, &m, i.clone()).await;
        assert_eq!(sig.len(), 64, "0x{ckm:x}");
        let parsed = p256::ecdsa::Signature::from_slice(&sig).expect("sig");
        vk.verify_prehash(&digest, &parsed).expect("p256 verifies");
        verify_ok(&ctx, (user, public), &m, i.clone(), sig.clone(), "node").await;
        // The public key is public: a session without login verifies too.
        let anyone = (Session::public(t1), public);
        verify_ok(&ctx, anyone, &m, i.clone(), sig.clone(), "public session").await;
        let mut bad = sig.clone();
        bad[10] ^= 1;
        let short = sig[..63].to_vec();
        #[rustfmt::skip]
        check_refusals(&ctx, vec![
            ("flipped bit", user, Use::Verify(public, m.clone(), i.clone(), bad), SignatureInvalid),
            ("short signature", user, Use::Verify(public, m, i, short), SignatureLenRange),
        ]).await;
    }
    // Wrong halves and wrong mechanisms; sessions: public session and SO cannot use the
    // private key; another token cannot see it at all.
    let data = || SignInput::Data(digest.clone());
    let ecdsa = |key| Use::Sign(key, mech(ck::CKM_ECDSA), data());
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("public half signs", user, ecdsa(public), KeyTypeInconsistent),
        ("RSA mechanism", user, Use::Sign(private, mech(ck::CKM_SHA256_RSA_PKCS), data()), KeyTypeInconsistent),
        ("ECDSA-SHA1", user, Use::Sign(private, mech(ck::CKM_ECDSA_SHA1), data()), MechanismInvalid),
        ("public session", Session::public(t1), ecdsa(private), UserNotLoggedIn),
        ("SO", Session::so(t1), ecdsa(private), UserNotLoggedIn),
        ("other token", Session::user(t2), ecdsa(private), KeyHandleInvalid),
    ]).await;
    // Turning CKA_SIGN off (allowed: it narrows) stops signing at the node.
    set_attributes(&ctx, user, private, &[at_bool(ck::CKA_SIGN, false)])
        .await
        .expect("off");
    check_refusals(
        &ctx,
        vec![("sign off", user, ecdsa(private), KeyFunctionNotPermitted)],
    )
    .await;
}

#[tokio::test]
async fn usage_and_allowed_mechanisms_are_enforced() {
    use ErrorCode::*;
    let Fixture { ctx, t1, .. } = fixture();
    let user = Session::user(t1);
    let data = || input(&[1; 32]);
    let (_, no_sign) = ec_pair(&ctx, user, vec![at_bool(ck::CKA_SIGN, false)]).await;
    let allowed = ck::CKM_ECDSA.to_le_bytes().to_vec();
    let (_, only_raw) = ec_pair(&ctx, user, vec![at(ck::CKA_ALLOWED_MECHANISMS, &allowed)]).await;
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("sign off", user, Use::Sign(no_sign, mech(ck::CKM_ECDSA), data()), KeyFunctionNotPermitted),
        // The chip's blob does not permit it either: widening is refused.
        ("sign on again", user, Use::Set(no_sign, at_bool(ck::CKA_SIGN, true)), AttributeReadOnly),
    ]).await;
    sign_ok(&ctx, user, only_raw, &mech(ck::CKM_ECDSA), data()).await;
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("not allowed", user, Use::Sign(only_raw, mech(ck::CKM_ECDSA_SHA256), data()), MechanismInvalid),
        ("allowed mechanisms", user, Use::Set(only_raw, at(ck::CKA_ALLOWED_MECHANISMS, &[])), AttributeReadOnly),
    ]).await;
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
    let aes_gen = mech(ck::CKM_AES_KEY_GEN);
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("public session", Session::public(t1), Use::GenPair(ec, vec![], vec![]), ErrorCode::UserNotLoggedIn),
        ("AES without length", user, Use::Gen(aes_gen.clone(), vec![]), ErrorCode::TemplateIncomplete),
        ("AES of 20 bytes", user, Use::Gen(aes_gen, vec![at_ulong(ck::CKA_VALUE_LEN, 20)]), ErrorCode::AttributeValueInvalid),
        ("DES3", user, Use::Gen(mech(ck::CKM_DES3_KEY_GEN), vec![]), ErrorCode::MechanismInvalid),
    ]).await;
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
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
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
    use ErrorCode::*;
    let Fixture { ctx, t1, .. } = fixture();
    let user = Session::user(t1);
    let key = aes(&ctx, user, 32, vec![]).await;
    #[rustfmt::skip]
    check_attrs(&ctx, user, key, &[
        (ck::CKA_KEY_TYPE, val(ulong_value(ck::CKK_AES))),
        (ck::CKA_VALUE_LEN, val(ulong_value(32))),
        (ck::CKA_VALUE, AttrValue::Sensitive),
    ]).await;
    let ct = check_round_trip(&ctx, user, (key, key), &gcm(7), b"account 42").await;
    assert_eq!(ct.len(), 10 + 16);
    let mut tampered = ct.clone();
    tampered[0] ^= 1;
    let ct = check_round_trip(
        &ctx,
        user,
        (key, key),
        &iv_mech(ck::CKM_AES_CBC_PAD, 1),
        b"0123456789abcdef",
    )
    .await;
    assert_eq!(ct.len(), 32);
    // SM4.
    let sm4 = generate_key(&ctx, user, &mech(vendor::CKM_SM4_KEY_GEN), &[])
        .await
        .expect("sm4");
    check_attrs(
        &ctx,
        user,
        sm4,
        &[(ck::CKA_KEY_TYPE, val(ulong_value(vendor::CKK_SM4)))],
    )
    .await;
    let m = iv_mech(vendor::CKM_SM4_CBC_PAD, 9);
    check_round_trip(&ctx, user, (sm4, sm4), &m, b"sm4 data").await;
    let ct7 = encrypt(&ctx, user, key, &gcm(7), b"account 42".to_vec())
        .await
        .expect("gcm");
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("tampered", user, Use::Decrypt(key, gcm(7), tampered), EncryptedDataInvalid),
        ("other IV", user, Use::Decrypt(key, gcm(8), ct7), EncryptedDataInvalid),
        ("shorter than the tag", user, Use::Decrypt(key, gcm(7), vec![0; 15]), EncryptedDataLenRange),
        ("CBC of 15 bytes", user, Use::Encrypt(key, iv_mech(ck::CKM_AES_CBC, 1), vec![0; 15]), DataLenRange),
        // Not for signing; not with a GCM key as HMAC key.
        ("HMAC with AES", user, Use::Sign(key, mech(ck::CKM_SHA256_HMAC), input(&[1])), KeyTypeInconsistent),
        ("SM4 with AES", user, Use::Encrypt(key, m, vec![1]), KeyTypeInconsistent),
    ]).await;
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
    let sha256 = mech(ck::CKM_SHA256_HMAC);
    let mac = sign_ok(&ctx, user, key, &sha256, input(&msg)).await;
    let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &value), &msg);
    assert_eq!(mac, expected.as_ref());
    verify_ok(&ctx, (user, key), &sha256, input(&msg), mac.clone(), "mac").await;
    let mut bad = mac.clone();
    bad[0] ^= 1;
    let short = mac[..16].to_vec();
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("flipped bit", user, Use::Verify(key, sha256.clone(), input(&msg), bad), ErrorCode::SignatureInvalid),
        ("short mac", user, Use::Verify(key, sha256, input(&msg), short), ErrorCode::SignatureLenRange),
    ]).await;
    let mac512 = sign_ok(&ctx, user, key, &mech(ck::CKM_SHA512_HMAC), input(&msg)).await;
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
    let sha384 = mech(ck::CKM_SHA384_HMAC);
    let mac = sign_ok(&ctx, user, gen, &sha384, input(&msg)).await;
    verify_ok(&ctx, (user, gen), &sha384, input(&msg), mac, "generated").await;
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
