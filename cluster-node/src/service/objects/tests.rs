//! Tests of the object model.

use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{AttrValue, Attribute, ObjectId};
use cloudkey_protocol::ErrorCode;

use super::*;
use crate::service::mechanism::{KeyAlg, P256_OID_DER};
use crate::service::testkit::committed::{
    copy_object, create_object, destroy_object, set_attributes,
};
use crate::service::testkit::{fixture, Fixture};
use crate::service::{Ctx, Session};
use crate::{NodeError, Result};

pub(crate) fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
    match r {
        Err(NodeError::Refused(w)) => w.code,
        Err(NodeError::Chip(e)) => crate::service::chip_error_code(&e),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub(crate) fn at_ulong(ty: u64, v: u64) -> Attribute {
    Attribute::ulong(ty, v)
}

pub(crate) fn at_bool(ty: u64, v: bool) -> Attribute {
    Attribute::bool(ty, v)
}

pub(crate) fn at(ty: u64, v: &[u8]) -> Attribute {
    Attribute::bytes(ty, v.to_vec())
}

fn value(ctx: &Ctx, s: Session, id: ObjectId, ty: u64) -> AttrValue {
    futures::executor::block_on(get_attributes(ctx, s, id, &[ty]))
        .expect("get")
        .remove(0)
}

fn data(label: &[u8], private: bool) -> Vec<Attribute> {
    vec![
        at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
        at(ck::CKA_LABEL, label),
        at(ck::CKA_VALUE, b"payload"),
        at_bool(ck::CKA_PRIVATE, private),
        at_bool(ck::CKA_TOKEN, true),
    ]
}

#[tokio::test]
async fn data_objects_defaults_visibility_and_writes() {
    let Fixture { ctx, t1, t2 } = fixture();
    let user = Session::user(t1);
    let public = Session::public(t1);
    let so = Session::so(t1);

    let pubobj = create_object(&ctx, user, &data(b"pub", false))
        .await
        .expect("create");
    let privobj = create_object(&ctx, user, &data(b"priv", true))
        .await
        .expect("create");
    // Defaults (Base §4.4, §4.5).
    let got = get_attributes(
        &ctx,
        user,
        pubobj,
        &[
            ck::CKA_MODIFIABLE,
            ck::CKA_COPYABLE,
            ck::CKA_DESTROYABLE,
            ck::CKA_APPLICATION,
            ck::CKA_VALUE,
            ck::CKA_UNIQUE_ID,
            ck::CKA_SIGN,
        ],
    )
    .await
    .expect("get");
    assert_eq!(got[0], AttrValue::Value(vec![1]));
    assert_eq!(got[1], AttrValue::Value(vec![1]));
    assert_eq!(got[2], AttrValue::Value(vec![1]));
    assert_eq!(got[3], AttrValue::Value(vec![]));
    assert_eq!(got[4], AttrValue::Value(b"payload".to_vec()));
    assert_eq!(got[5], AttrValue::Value(pubobj.to_string().into_bytes()));
    assert_eq!(got[6], AttrValue::Invalid);

    // Visibility: the public session and the SO see only the public object.
    assert_eq!(
        find_objects(&ctx, user, &[]).await.expect("find"),
        vec![pubobj, privobj]
    );
    assert_eq!(
        find_objects(&ctx, public, &[]).await.expect("find"),
        vec![pubobj]
    );
    assert_eq!(
        find_objects(&ctx, so, &[]).await.expect("find"),
        vec![pubobj]
    );
    assert_eq!(
        code(get_attributes(&ctx, public, privobj, &[ck::CKA_LABEL]).await),
        ErrorCode::UserNotLoggedIn
    );
    assert_eq!(
        code(get_attributes(&ctx, so, privobj, &[ck::CKA_LABEL]).await),
        ErrorCode::UserNotLoggedIn
    );
    // Another token sees nothing of t1.
    let other = Session::user(t2);
    assert!(find_objects(&ctx, other, &[])
        .await
        .expect("find")
        .is_empty());
    assert_eq!(
        code(get_attributes(&ctx, other, pubobj, &[ck::CKA_LABEL]).await),
        ErrorCode::ObjectHandleInvalid
    );
    assert_eq!(
        code(destroy_object(&ctx, other, pubobj).await),
        ErrorCode::ObjectHandleInvalid
    );

    // Writes need a login; the SO writes public objects only.
    assert_eq!(
        code(create_object(&ctx, public, &data(b"x", false)).await),
        ErrorCode::UserNotLoggedIn
    );
    assert_eq!(
        code(create_object(&ctx, so, &data(b"x", true)).await),
        ErrorCode::UserNotLoggedIn
    );
    let so_obj = create_object(&ctx, so, &data(b"so", false))
        .await
        .expect("so create");
    assert_eq!(
        code(set_attributes(&ctx, public, pubobj, &[at(ck::CKA_LABEL, b"y")]).await),
        ErrorCode::UserNotLoggedIn
    );

    // Find matches bytes exactly.
    let found = find_objects(&ctx, user, &[at(ck::CKA_LABEL, b"priv")])
        .await
        .expect("find");
    assert_eq!(found, vec![privobj]);
    let found = find_objects(&ctx, user, &[at_bool(ck::CKA_PRIVATE, false)])
        .await
        .expect("find");
    assert_eq!(found, vec![pubobj, so_obj]);
    assert!(find_objects(&ctx, user, &[at(ck::CKA_LABEL, b"pri")])
        .await
        .expect("find")
        .is_empty());

    // Set, copy, destroy.
    set_attributes(&ctx, user, pubobj, &[at(ck::CKA_LABEL, b"renamed")])
        .await
        .expect("set");
    assert_eq!(
        value(&ctx, user, pubobj, ck::CKA_LABEL),
        AttrValue::Value(b"renamed".to_vec())
    );
    assert_eq!(
        code(set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_PRIVATE, true)]).await),
        ErrorCode::AttributeReadOnly
    );
    assert_eq!(
        code(
            set_attributes(
                &ctx,
                user,
                pubobj,
                &[at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE)]
            )
            .await
        ),
        ErrorCode::AttributeReadOnly
    );
    assert_eq!(
        code(set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_SIGN, true)]).await),
        ErrorCode::AttributeTypeInvalid
    );
    // A copy may become private and non-modifiable.
    let copy = copy_object(
        &ctx,
        user,
        pubobj,
        &[
            at_bool(ck::CKA_PRIVATE, true),
            at_bool(ck::CKA_MODIFIABLE, false),
        ],
    )
    .await
    .expect("copy");
    assert_eq!(
        value(&ctx, user, copy, ck::CKA_LABEL),
        AttrValue::Value(b"renamed".to_vec())
    );
    assert_eq!(
        value(&ctx, user, copy, ck::CKA_UNIQUE_ID),
        AttrValue::Value(copy.to_string().into_bytes())
    );
    assert_eq!(
        code(set_attributes(&ctx, user, copy, &[at(ck::CKA_LABEL, b"z")]).await),
        ErrorCode::ActionProhibited
    );
    assert_eq!(
        code(copy_object(&ctx, user, copy, &[at_bool(ck::CKA_MODIFIABLE, true)]).await),
        ErrorCode::AttributeReadOnly
    );
    // Non-copyable, non-destroyable (one-way).
    set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_COPYABLE, false)])
        .await
        .expect("set");
    assert_eq!(
        code(set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_COPYABLE, true)]).await),
        ErrorCode::AttributeReadOnly
    );
    assert_eq!(
        code(copy_object(&ctx, user, pubobj, &[]).await),
        ErrorCode::ActionProhibited
    );
    set_attributes(&ctx, user, privobj, &[at_bool(ck::CKA_DESTROYABLE, false)])
        .await
        .expect("set");
    assert_eq!(
        code(destroy_object(&ctx, user, privobj).await),
        ErrorCode::ActionProhibited
    );
    destroy_object(&ctx, user, pubobj).await.expect("destroy");
    assert_eq!(
        code(get_attributes(&ctx, user, pubobj, &[ck::CKA_LABEL]).await),
        ErrorCode::ObjectHandleInvalid
    );
}

#[tokio::test]
async fn template_errors() {
    let Fixture { ctx, t1, .. } = fixture();
    let user = Session::user(t1);
    let cases: Vec<(Vec<Attribute>, ErrorCode)> = vec![
        (vec![at(ck::CKA_LABEL, b"x")], ErrorCode::TemplateIncomplete),
        (
            vec![at_ulong(ck::CKA_CLASS, ck::CKO_HW_FEATURE)],
            ErrorCode::AttributeValueInvalid,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
                at_bool(ck::CKA_SIGN, true),
            ],
            ErrorCode::AttributeTypeInvalid,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
                at(ck::CKA_TOKEN, &[2]),
            ],
            ErrorCode::AttributeValueInvalid,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
                at(ck::CKA_UNIQUE_ID, b"x"),
            ],
            ErrorCode::AttributeReadOnly,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
                at(ck::CKA_LABEL, b"a"),
                at(ck::CKA_LABEL, b"b"),
            ],
            ErrorCode::TemplateInconsistent,
        ),
        // Keys.
        (
            vec![at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY)],
            ErrorCode::TemplateIncomplete,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            ],
            ErrorCode::TemplateIncomplete,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                at(ck::CKA_VALUE, &[1; 20]),
            ],
            ErrorCode::AttributeValueInvalid,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                at(ck::CKA_VALUE, &[1; 16]),
                at_bool(ck::CKA_LOCAL, false),
            ],
            ErrorCode::AttributeReadOnly,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                at(ck::CKA_VALUE, &[1; 16]),
                at_ulong(ck::CKA_VALUE_LEN, 32),
            ],
            ErrorCode::TemplateInconsistent,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                at(ck::CKA_VALUE, &[1; 16]),
            ],
            ErrorCode::TemplateInconsistent,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                at(ck::CKA_VALUE, &[1; 16]),
                at_bool(ck::CKA_TRUSTED, true),
            ],
            ErrorCode::AttributeReadOnly,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                at(
                    ck::CKA_EC_PARAMS,
                    &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
                ),
                at(ck::CKA_EC_POINT, &[4; 65]),
            ],
            ErrorCode::CurveNotSupported,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                at(ck::CKA_EC_PARAMS, P256_OID_DER),
                at(ck::CKA_EC_POINT, &[4; 65]),
            ],
            ErrorCode::AttributeValueInvalid,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                at(ck::CKA_EC_PARAMS, P256_OID_DER),
            ],
            ErrorCode::TemplateIncomplete,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                at(ck::CKA_MODULUS, &[0xc1; 256]),
                at(ck::CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
            ],
            ErrorCode::TemplateIncomplete,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                at(ck::CKA_EC_PARAMS, P256_OID_DER),
                at(ck::CKA_VALUE, &[1; 32]),
                at_bool(ck::CKA_ALWAYS_AUTHENTICATE, true),
            ],
            ErrorCode::AttributeValueInvalid,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
                at_ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509),
            ],
            ErrorCode::TemplateIncomplete,
        ),
        (
            vec![
                at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
                at_ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509),
                at(ck::CKA_VALUE, b"not DER"),
            ],
            ErrorCode::TemplateIncomplete,
        ),
    ];
    for (i, (template, want)) in cases.into_iter().enumerate() {
        assert_eq!(
            code(create_object(&ctx, user, &template).await),
            want,
            "case {i}"
        );
    }
    assert!(
        find_objects(&ctx, user, &[])
            .await
            .expect("find")
            .is_empty(),
        "nothing half-made"
    );
}

/// A self-signed certificate made with rcgen, with the fields x509-parser reads out.
#[tokio::test]
async fn certificates_take_their_names_from_the_der() {
    let Fixture { ctx, t1, .. } = fixture();
    let user = Session::user(t1);
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["bank.example".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let der = cert.der().to_vec();
    let id = create_object(
        &ctx,
        user,
        &[
            at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
            at_ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509),
            at(ck::CKA_VALUE, &der),
            at(ck::CKA_ID, b"\x01"),
        ],
    )
    .await
    .expect("cert");
    let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
    let got = get_attributes(
        &ctx,
        Session::public(t1),
        id,
        &[
            ck::CKA_SUBJECT,
            ck::CKA_ISSUER,
            ck::CKA_SERIAL_NUMBER,
            ck::CKA_CHECK_VALUE,
            ck::CKA_PRIVATE,
            ck::CKA_PUBLIC_KEY_INFO,
        ],
    )
    .await
    .expect("get");
    assert_eq!(got[0], AttrValue::Value(parsed.subject().as_raw().to_vec()));
    assert_eq!(got[1], AttrValue::Value(parsed.issuer().as_raw().to_vec()));
    let AttrValue::Value(serial) = &got[2] else {
        panic!("serial")
    };
    assert_eq!(serial[0], 0x02);
    assert_eq!(der::strip(&serial[2..]), der::strip(parsed.raw_serial()));
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    assert_eq!(got[3], AttrValue::Value(sha1.as_ref()[..3].to_vec()));
    assert_eq!(got[4], AttrValue::Value(vec![0]));
    assert_eq!(got[5], AttrValue::Value(parsed.public_key().raw.to_vec()));
    // Only CKA_ID, CKA_ISSUER, CKA_SERIAL_NUMBER (and the label) change; CKA_TRUSTED is
    // the SO's.
    set_attributes(&ctx, user, id, &[at(ck::CKA_ID, b"\x02")])
        .await
        .expect("id");
    assert_eq!(
        code(set_attributes(&ctx, user, id, &[at(ck::CKA_VALUE, b"x")]).await),
        ErrorCode::AttributeReadOnly
    );
    assert_eq!(
        code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_TRUSTED, true)]).await),
        ErrorCode::AttributeReadOnly
    );
    set_attributes(&ctx, Session::so(t1), id, &[at_bool(ck::CKA_TRUSTED, true)])
        .await
        .expect("SO trusts");
}

fn p256_point(seed: u8) -> [u8; 65] {
    let sk = p256::SecretKey::from_slice(&[seed; 32]).expect("scalar");
    let point = sk.public_key().to_sec1_bytes();
    point.as_ref().try_into().expect("65 bytes")
}

#[tokio::test]
async fn public_keys_by_value() {
    let Fixture { ctx, t1, .. } = fixture();
    let user = Session::user(t1);
    let point = p256_point(7);
    // A raw point is stored as the DER OCTET STRING.
    let id = create_object(
        &ctx,
        user,
        &[
            at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
            at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
            at(ck::CKA_EC_PARAMS, P256_OID_DER),
            at(ck::CKA_EC_POINT, &point),
        ],
    )
    .await
    .expect("ec public");
    let got = get_attributes(
        &ctx,
        user,
        id,
        &[
            ck::CKA_EC_POINT,
            ck::CKA_PRIVATE,
            ck::CKA_VERIFY,
            ck::CKA_WRAP,
            ck::CKA_LOCAL,
        ],
    )
    .await
    .expect("get");
    assert_eq!(got[0], AttrValue::Value(der::ec_point_der(&point)));
    assert_eq!(got[1], AttrValue::Value(vec![0]));
    assert_eq!(got[2], AttrValue::Value(vec![1]));
    assert_eq!(got[3], AttrValue::Value(vec![0]));
    assert_eq!(got[4], AttrValue::Value(vec![0]));
    // Usage flags of public keys change both ways.
    set_attributes(&ctx, user, id, &[at_bool(ck::CKA_WRAP, true)])
        .await
        .expect("wrap on");
    set_attributes(&ctx, user, id, &[at_bool(ck::CKA_VERIFY, false)])
        .await
        .expect("verify off");
    // The SPKI is what p256 itself encodes.
    let spki = {
        use p256::pkcs8::EncodePublicKey;
        p256::PublicKey::from_sec1_bytes(&point)
            .expect("point")
            .to_public_key_der()
            .expect("der")
            .as_bytes()
            .to_vec()
    };
    assert_eq!(
        value(&ctx, user, id, ck::CKA_PUBLIC_KEY_INFO),
        AttrValue::Value(spki)
    );

    // An RSA public key: CKA_MODULUS_BITS is computed.
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let public = {
        use aws_lc_rs::signature::KeyPair as _;
        rsa.public_key().clone()
    };
    let n = public.modulus().big_endian_without_leading_zero().to_vec();
    let id = create_object(
        &ctx,
        user,
        &[
            at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
            at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
            at(ck::CKA_MODULUS, &n),
            at(ck::CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
        ],
    )
    .await
    .expect("rsa public");
    assert_eq!(
        value(&ctx, user, id, ck::CKA_MODULUS_BITS),
        AttrValue::Value(ulong_value(2048))
    );
    assert_eq!(
        value(&ctx, user, id, ck::CKA_PUBLIC_KEY_INFO),
        AttrValue::Value({
            use aws_lc_rs::encoding::AsDer;
            let der: aws_lc_rs::encoding::PublicKeyX509Der<'_> = public.as_der().expect("der");
            der.as_ref().to_vec()
        })
    );
    assert_eq!(
        code(
            create_object(
                &ctx,
                user,
                &[
                    at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                    at(ck::CKA_MODULUS, &n),
                    at(ck::CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
                    at_ulong(ck::CKA_MODULUS_BITS, 1024),
                ],
            )
            .await
        ),
        ErrorCode::TemplateInconsistent
    );
}

#[tokio::test]
async fn secret_keys_by_value_stay_secret() {
    let Fixture { ctx, t1, .. } = fixture();
    let user = Session::user(t1);
    let id = create_object(
        &ctx,
        user,
        &[
            at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
            at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
            at(ck::CKA_VALUE, &[0x42; 32]),
            at_bool(ck::CKA_SENSITIVE, false),
            at_bool(ck::CKA_EXTRACTABLE, true),
        ],
    )
    .await
    .expect("aes");
    let o = ctx.state.object(&id).expect("object");
    assert!(o.record.blob.is_some());
    assert!(
        o.record
            .attrs
            .values()
            .all(|v| !v.windows(32).any(|w| w == [0x42; 32])),
        "the key value is not in the record"
    );
    let got = get_attributes(
        &ctx,
        user,
        id,
        &[
            ck::CKA_VALUE,
            ck::CKA_VALUE_LEN,
            ck::CKA_LOCAL,
            ck::CKA_ALWAYS_SENSITIVE,
            ck::CKA_NEVER_EXTRACTABLE,
            ck::CKA_KEY_GEN_MECHANISM,
            ck::CKA_PRIVATE,
            ck::CKA_ENCRYPT,
            ck::CKA_WRAP,
            ck::CKA_MODULUS,
        ],
    )
    .await
    .expect("get");
    assert_eq!(got[0], AttrValue::Sensitive);
    assert_eq!(got[1], AttrValue::Value(ulong_value(32)));
    assert_eq!(got[2], AttrValue::Value(vec![0]));
    assert_eq!(got[3], AttrValue::Value(vec![0]));
    assert_eq!(got[4], AttrValue::Value(vec![0]));
    assert_eq!(
        got[5],
        AttrValue::Value(ulong_value(ck::CK_UNAVAILABLE_INFORMATION))
    );
    assert_eq!(got[6], AttrValue::Value(vec![1]));
    assert_eq!(got[7], AttrValue::Value(vec![1]));
    assert_eq!(got[8], AttrValue::Value(vec![0]));
    assert_eq!(got[9], AttrValue::Invalid);
    // Key material never matches a search.
    assert!(find_objects(&ctx, user, &[at(ck::CKA_VALUE, &[0x42; 32])])
        .await
        .expect("find")
        .is_empty());
    // §4.10: SENSITIVE only false → true, EXTRACTABLE only true → false; chip-bound usage
    // flags only off.
    set_attributes(&ctx, user, id, &[at_bool(ck::CKA_SENSITIVE, true)])
        .await
        .expect("sensitive");
    assert_eq!(
        code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_SENSITIVE, false)]).await),
        ErrorCode::AttributeReadOnly
    );
    set_attributes(&ctx, user, id, &[at_bool(ck::CKA_EXTRACTABLE, false)])
        .await
        .expect("unextractable");
    assert_eq!(
        code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_EXTRACTABLE, true)]).await),
        ErrorCode::AttributeReadOnly
    );
    assert_eq!(
        code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_WRAP, true)]).await),
        ErrorCode::AttributeReadOnly
    );
    set_attributes(&ctx, user, id, &[at_bool(ck::CKA_DECRYPT, false)])
        .await
        .expect("decrypt off");
    assert_eq!(
        code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_DECRYPT, true)]).await),
        ErrorCode::AttributeReadOnly
    );
    // ALWAYS_SENSITIVE stays false: the key was not sensitive from the start.
    assert_eq!(
        value(&ctx, user, id, ck::CKA_ALWAYS_SENSITIVE),
        AttrValue::Value(vec![0])
    );
    // A copy shares the blob; it cannot widen usage either.
    let copy = copy_object(&ctx, user, id, &[at(ck::CKA_LABEL, b"copy")])
        .await
        .expect("copy");
    assert_eq!(
        ctx.state.object(&copy).expect("copy").record.blob,
        o.record.blob
    );
    assert_eq!(
        code(copy_object(&ctx, user, id, &[at_bool(ck::CKA_DECRYPT, true)]).await),
        ErrorCode::AttributeReadOnly
    );
    // The public session does not see the (private) key at all.
    assert_eq!(
        code(get_attributes(&ctx, Session::public(t1), id, &[ck::CKA_LABEL]).await),
        ErrorCode::UserNotLoggedIn
    );
}

#[test]
fn points_on_their_curves() {
    let point = p256_point(3);
    assert_eq!(der::ec_point(&der::ec_point_der(&point)), Some(point));
    assert!(point_on_curve(KeyAlg::P256, &point));
    assert!(!point_on_curve(KeyAlg::Sm2, &point));
}

/// The PKCS#8 the node builds is what aws-lc itself writes for the same key.
#[test]
fn rsa_pkcs8_round_trip() {
    use aws_lc_rs::encoding::AsDer;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let pkcs8 = pair.as_der().expect("der");
    let parts = rsa_parts(pkcs8.as_ref());
    let refs: [&[u8]; 8] = std::array::from_fn(|i| parts[i].as_slice());
    let built = der::pkcs8_rsa(&refs);
    assert_eq!(built.as_slice(), pkcs8.as_ref());
}

/// `[n, e, d, p, q, dp, dq, qinv]` of an RSA PKCS#8.
pub(crate) fn rsa_parts(pkcs8: &[u8]) -> Vec<Vec<u8>> {
    let (_, info, _, _) = der::read(pkcs8).expect("info");
    let (_, _, _, rest) = der::read(info).expect("version");
    let (_, _, _, rest) = der::read(rest).expect("algid");
    let (0x04, key, _, _) = der::read(rest).expect("octets") else {
        panic!("octets")
    };
    let (_, mut ints, _, _) = der::read(key).expect("seq");
    let mut parts = Vec::new();
    while let Some((0x02, v, _, rest)) = der::read(ints) {
        parts.push(der::strip(v).to_vec());
        ints = rest;
    }
    assert_eq!(parts.len(), 9);
    parts.remove(0);
    parts
}
