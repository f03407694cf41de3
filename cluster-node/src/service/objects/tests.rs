//! Tests of the object model.

use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{AttrValue, Attribute, Mechanism, ObjectId, SignInput};
use cloudkey_protocol::ErrorCode;

use super::*;
use crate::service::keys::{decrypt, encrypt, sign, verify};
use crate::service::mechanism::{KeyAlg, P256_OID_DER};
use crate::service::testkit::committed::{
    copy_object, create_object, destroy_object, generate_key, generate_key_pair, set_attributes,
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

/// An attribute's value as `get_attributes` gives it.
pub(crate) fn val(v: impl AsRef<[u8]>) -> AttrValue {
    AttrValue::Value(v.as_ref().to_vec())
}

/// Reads the listed attributes of `id` in one call and checks each against its row.
pub(crate) async fn check_attrs(ctx: &Ctx, s: Session, id: ObjectId, want: &[(u64, AttrValue)]) {
    let types: Vec<u64> = want.iter().map(|(ty, _)| *ty).collect();
    let got = get_attributes(ctx, s, id, &types).await.expect("get");
    assert_eq!(got.len(), want.len());
    for ((ty, want), got) in want.iter().zip(got) {
        assert_eq!(&got, want, "attribute 0x{ty:x} of {id}");
    }
}

/// One call into the object or key services, for a table of refusals.
pub(crate) enum Use {
    Get(ObjectId, u64),
    Create(Vec<Attribute>),
    Copy(ObjectId, Vec<Attribute>),
    Set(ObjectId, Attribute),
    Destroy(ObjectId),
    Gen(Mechanism, Vec<Attribute>),
    GenPair(Mechanism, Vec<Attribute>, Vec<Attribute>),
    Sign(ObjectId, Mechanism, SignInput),
    Verify(ObjectId, Mechanism, SignInput, Vec<u8>),
    Encrypt(ObjectId, Mechanism, Vec<u8>),
    Decrypt(ObjectId, Mechanism, Vec<u8>),
}

impl Use {
    async fn run(self, ctx: &Ctx, s: Session) -> Result<()> {
        match self {
            Use::Get(id, ty) => get_attributes(ctx, s, id, &[ty]).await.map(drop),
            Use::Create(t) => create_object(ctx, s, &t).await.map(drop),
            Use::Copy(id, t) => copy_object(ctx, s, id, &t).await.map(drop),
            Use::Set(id, a) => set_attributes(ctx, s, id, &[a]).await,
            Use::Destroy(id) => destroy_object(ctx, s, id).await,
            Use::Gen(m, t) => generate_key(ctx, s, &m, &t).await.map(drop),
            Use::GenPair(m, p, q) => generate_key_pair(ctx, s, &m, &p, &q).await.map(drop),
            Use::Sign(k, m, i) => sign(ctx, s, k, &m, i).await.map(drop),
            Use::Verify(k, m, i, sig) => verify(ctx, s, k, &m, i, sig).await,
            Use::Encrypt(k, m, d) => encrypt(ctx, s, k, &m, d).await.map(drop),
            Use::Decrypt(k, m, d) => decrypt(ctx, s, k, &m, d).await.map(drop),
        }
    }
}

/// A case of a refusal table: its name, who asks, what, and the code it must get.
pub(crate) type Refusal = (&'static str, Session, Use, ErrorCode);

/// Runs the cases in order; each must be refused with its code.
pub(crate) async fn check_refusals(ctx: &Ctx, cases: Vec<Refusal>) {
    for (name, s, u, want) in cases {
        let r = u.run(ctx, s).await;
        assert!(r.is_err(), "{name}: expected {want:?}, got {r:?}");
        assert_eq!(code(r), want, "{name}");
    }
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

/// A template of `class`, `key_type`, then `rest`.
fn key(class: u64, key_type: u64, rest: Vec<Attribute>) -> Vec<Attribute> {
    let mut t = vec![
        at_ulong(ck::CKA_CLASS, class),
        at_ulong(ck::CKA_KEY_TYPE, key_type),
    ];
    t.extend(rest);
    t
}

/// An AES key with a 16-byte value, then `rest`.
fn aes16(rest: Vec<Attribute>) -> Vec<Attribute> {
    let mut t = vec![at(ck::CKA_VALUE, &[1; 16])];
    t.extend(rest);
    key(ck::CKO_SECRET_KEY, ck::CKK_AES, t)
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
    #[rustfmt::skip]
    check_attrs(&ctx, user, pubobj, &[
        (ck::CKA_MODIFIABLE, val([1])),
        (ck::CKA_COPYABLE, val([1])),
        (ck::CKA_DESTROYABLE, val([1])),
        (ck::CKA_APPLICATION, val([])),
        (ck::CKA_VALUE, val(b"payload")),
        (ck::CKA_UNIQUE_ID, val(pubobj.to_string())),
        (ck::CKA_SIGN, AttrValue::Invalid),
    ]).await;

    // Visibility: the public session and the SO see only the public object.
    let other = Session::user(t2);
    for (s, want) in [
        (user, vec![pubobj, privobj]),
        (public, vec![pubobj]),
        (so, vec![pubobj]),
        // Another token sees nothing of t1.
        (other, vec![]),
    ] {
        assert_eq!(
            find_objects(&ctx, s, &[]).await.expect("find"),
            want,
            "{s:?}"
        );
    }
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("public reads private", public, Use::Get(privobj, ck::CKA_LABEL), ErrorCode::UserNotLoggedIn),
        ("SO reads private", so, Use::Get(privobj, ck::CKA_LABEL), ErrorCode::UserNotLoggedIn),
        ("other token reads", other, Use::Get(pubobj, ck::CKA_LABEL), ErrorCode::ObjectHandleInvalid),
        ("other token destroys", other, Use::Destroy(pubobj), ErrorCode::ObjectHandleInvalid),
        // Writes need a login; the SO writes public objects only.
        ("public creates", public, Use::Create(data(b"x", false)), ErrorCode::UserNotLoggedIn),
        ("SO creates private", so, Use::Create(data(b"x", true)), ErrorCode::UserNotLoggedIn),
    ]).await;
    let so_obj = create_object(&ctx, so, &data(b"so", false))
        .await
        .expect("so create");
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("public sets", public, Use::Set(pubobj, at(ck::CKA_LABEL, b"y")), ErrorCode::UserNotLoggedIn),
    ]).await;

    // Find matches bytes exactly.
    for (template, want) in [
        (at(ck::CKA_LABEL, b"priv"), vec![privobj]),
        (at_bool(ck::CKA_PRIVATE, false), vec![pubobj, so_obj]),
        (at(ck::CKA_LABEL, b"pri"), vec![]),
    ] {
        let found = find_objects(&ctx, user, std::slice::from_ref(&template))
            .await
            .expect("find");
        assert_eq!(found, want, "{template:?}");
    }

    // Set, copy, destroy.
    set_attributes(&ctx, user, pubobj, &[at(ck::CKA_LABEL, b"renamed")])
        .await
        .expect("set");
    assert_eq!(value(&ctx, user, pubobj, ck::CKA_LABEL), val(b"renamed"));
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("private on", user, Use::Set(pubobj, at_bool(ck::CKA_PRIVATE, true)), ErrorCode::AttributeReadOnly),
        ("class", user, Use::Set(pubobj, at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE)), ErrorCode::AttributeReadOnly),
        ("sign on data", user, Use::Set(pubobj, at_bool(ck::CKA_SIGN, true)), ErrorCode::AttributeTypeInvalid),
    ]).await;
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
    #[rustfmt::skip]
    check_attrs(&ctx, user, copy, &[
        (ck::CKA_LABEL, val(b"renamed")),
        (ck::CKA_UNIQUE_ID, val(copy.to_string())),
    ]).await;
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("label of a non-modifiable copy", user, Use::Set(copy, at(ck::CKA_LABEL, b"z")), ErrorCode::ActionProhibited),
        ("copy modifiable again", user, Use::Copy(copy, vec![at_bool(ck::CKA_MODIFIABLE, true)]), ErrorCode::AttributeReadOnly),
    ]).await;
    // Non-copyable, non-destroyable (one-way).
    set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_COPYABLE, false)])
        .await
        .expect("set");
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("copyable again", user, Use::Set(pubobj, at_bool(ck::CKA_COPYABLE, true)), ErrorCode::AttributeReadOnly),
        ("copy non-copyable", user, Use::Copy(pubobj, vec![]), ErrorCode::ActionProhibited),
    ]).await;
    set_attributes(&ctx, user, privobj, &[at_bool(ck::CKA_DESTROYABLE, false)])
        .await
        .expect("set");
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("destroy non-destroyable", user, Use::Destroy(privobj), ErrorCode::ActionProhibited),
    ]).await;
    destroy_object(&ctx, user, pubobj).await.expect("destroy");
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("read destroyed", user, Use::Get(pubobj, ck::CKA_LABEL), ErrorCode::ObjectHandleInvalid),
    ]).await;
}

#[tokio::test]
async fn template_errors() {
    use ErrorCode::*;
    let Fixture { ctx, t1, .. } = fixture();
    let user = Session::user(t1);
    let class = |c| at_ulong(ck::CKA_CLASS, c);
    let data = |a: Attribute| vec![class(ck::CKO_DATA), a];
    let secret = ck::CKO_SECRET_KEY;
    let (public, private) = (ck::CKO_PUBLIC_KEY, ck::CKO_PRIVATE_KEY);
    let p384 = [0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
    let x509 = at_ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509);
    let ec_pub = |params: &[u8], rest: Vec<Attribute>| {
        let mut t = vec![at(ck::CKA_EC_PARAMS, params)];
        t.extend(rest);
        key(public, ck::CKK_EC, t)
    };
    #[rustfmt::skip]
    let cases: Vec<(Vec<Attribute>, ErrorCode)> = vec![
        (vec![at(ck::CKA_LABEL, b"x")], TemplateIncomplete),
        (vec![class(ck::CKO_HW_FEATURE)], AttributeValueInvalid),
        (data(at_bool(ck::CKA_SIGN, true)), AttributeTypeInvalid),
        (data(at(ck::CKA_TOKEN, &[2])), AttributeValueInvalid),
        (data(at(ck::CKA_UNIQUE_ID, b"x")), AttributeReadOnly),
        (vec![class(ck::CKO_DATA), at(ck::CKA_LABEL, b"a"), at(ck::CKA_LABEL, b"b")], TemplateInconsistent),
        // Keys.
        (vec![class(secret)], TemplateIncomplete),
        (key(secret, ck::CKK_AES, vec![]), TemplateIncomplete),
        (key(secret, ck::CKK_AES, vec![at(ck::CKA_VALUE, &[1; 20])]), AttributeValueInvalid),
        (aes16(vec![at_bool(ck::CKA_LOCAL, false)]), AttributeReadOnly),
        (aes16(vec![at_ulong(ck::CKA_VALUE_LEN, 32)]), TemplateInconsistent),
        (key(secret, ck::CKK_RSA, vec![at(ck::CKA_VALUE, &[1; 16])]), TemplateInconsistent),
        (aes16(vec![at_bool(ck::CKA_TRUSTED, true)]), AttributeReadOnly),
        (ec_pub(&p384, vec![at(ck::CKA_EC_POINT, &[4; 65])]), CurveNotSupported),
        (ec_pub(P256_OID_DER, vec![at(ck::CKA_EC_POINT, &[4; 65])]), AttributeValueInvalid),
        (ec_pub(P256_OID_DER, vec![]), TemplateIncomplete),
        (key(private, ck::CKK_RSA, vec![
            at(ck::CKA_MODULUS, &[0xc1; 256]),
            at(ck::CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
        ]), TemplateIncomplete),
        (key(private, ck::CKK_EC, vec![
            at(ck::CKA_EC_PARAMS, P256_OID_DER),
            at(ck::CKA_VALUE, &[1; 32]),
            at_bool(ck::CKA_ALWAYS_AUTHENTICATE, true),
        ]), AttributeValueInvalid),
        (vec![class(ck::CKO_CERTIFICATE), x509.clone()], TemplateIncomplete),
        (vec![class(ck::CKO_CERTIFICATE), x509, at(ck::CKA_VALUE, b"not DER")], TemplateIncomplete),
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
    let public = Session::public(t1);
    let AttrValue::Value(serial) = value(&ctx, public, id, ck::CKA_SERIAL_NUMBER) else {
        panic!("serial")
    };
    assert_eq!(serial[0], 0x02);
    assert_eq!(der::strip(&serial[2..]), der::strip(parsed.raw_serial()));
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
    #[rustfmt::skip]
    check_attrs(&ctx, public, id, &[
        (ck::CKA_SUBJECT, val(parsed.subject().as_raw())),
        (ck::CKA_ISSUER, val(parsed.issuer().as_raw())),
        (ck::CKA_CHECK_VALUE, val(&sha1.as_ref()[..3])),
        (ck::CKA_PRIVATE, val([0])),
        (ck::CKA_PUBLIC_KEY_INFO, val(parsed.public_key().raw)),
    ]).await;
    // Only CKA_ID, CKA_ISSUER, CKA_SERIAL_NUMBER (and the label) change; CKA_TRUSTED is
    // the SO's.
    set_attributes(&ctx, user, id, &[at(ck::CKA_ID, b"\x02")])
        .await
        .expect("id");
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("certificate value", user, Use::Set(id, at(ck::CKA_VALUE, b"x")), ErrorCode::AttributeReadOnly),
        ("user trusts", user, Use::Set(id, at_bool(ck::CKA_TRUSTED, true)), ErrorCode::AttributeReadOnly),
    ]).await;
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
    let ec_t = key(
        ck::CKO_PUBLIC_KEY,
        ck::CKK_EC,
        vec![
            at(ck::CKA_EC_PARAMS, P256_OID_DER),
            at(ck::CKA_EC_POINT, &point),
        ],
    );
    let id = create_object(&ctx, user, &ec_t).await.expect("ec public");
    #[rustfmt::skip]
    check_attrs(&ctx, user, id, &[
        (ck::CKA_EC_POINT, val(der::ec_point_der(&point))),
        (ck::CKA_PRIVATE, val([0])),
        (ck::CKA_VERIFY, val([1])),
        (ck::CKA_WRAP, val([0])),
        (ck::CKA_LOCAL, val([0])),
    ]).await;
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
    assert_eq!(value(&ctx, user, id, ck::CKA_PUBLIC_KEY_INFO), val(spki));

    // An RSA public key: CKA_MODULUS_BITS is computed.
    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
    let public = {
        use aws_lc_rs::signature::KeyPair as _;
        rsa.public_key().clone()
    };
    let n = public.modulus().big_endian_without_leading_zero().to_vec();
    let rsa_t = |extra: Vec<Attribute>| {
        let mut t = vec![
            at(ck::CKA_MODULUS, &n),
            at(ck::CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
        ];
        t.extend(extra);
        key(ck::CKO_PUBLIC_KEY, ck::CKK_RSA, t)
    };
    let id = create_object(&ctx, user, &rsa_t(vec![]))
        .await
        .expect("rsa public");
    let spki = {
        use aws_lc_rs::encoding::AsDer;
        let der: aws_lc_rs::encoding::PublicKeyX509Der<'_> = public.as_der().expect("der");
        der.as_ref().to_vec()
    };
    #[rustfmt::skip]
    check_attrs(&ctx, user, id, &[
        (ck::CKA_MODULUS_BITS, val(ulong_value(2048))),
        (ck::CKA_PUBLIC_KEY_INFO, val(spki)),
    ]).await;
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("modulus bits disagree", user, Use::Create(rsa_t(vec![at_ulong(ck::CKA_MODULUS_BITS, 1024)])), ErrorCode::TemplateInconsistent),
    ]).await;
}

#[tokio::test]
async fn secret_keys_by_value_stay_secret() {
    use ErrorCode::AttributeReadOnly;
    let Fixture { ctx, t1, .. } = fixture();
    let user = Session::user(t1);
    let t = key(
        ck::CKO_SECRET_KEY,
        ck::CKK_AES,
        vec![
            at(ck::CKA_VALUE, &[0x42; 32]),
            at_bool(ck::CKA_SENSITIVE, false),
            at_bool(ck::CKA_EXTRACTABLE, true),
        ],
    );
    let id = create_object(&ctx, user, &t).await.expect("aes");
    let o = ctx.state.object(&id).expect("object");
    assert!(o.record.blob.is_some());
    assert!(
        o.record
            .attrs
            .values()
            .all(|v| !v.windows(32).any(|w| w == [0x42; 32])),
        "the key value is not in the record"
    );
    #[rustfmt::skip]
    check_attrs(&ctx, user, id, &[
        (ck::CKA_VALUE, AttrValue::Sensitive),
        (ck::CKA_VALUE_LEN, val(ulong_value(32))),
        (ck::CKA_LOCAL, val([0])),
        (ck::CKA_ALWAYS_SENSITIVE, val([0])),
        (ck::CKA_NEVER_EXTRACTABLE, val([0])),
        (ck::CKA_KEY_GEN_MECHANISM, val(ulong_value(ck::CK_UNAVAILABLE_INFORMATION))),
        (ck::CKA_PRIVATE, val([1])),
        (ck::CKA_ENCRYPT, val([1])),
        (ck::CKA_WRAP, val([0])),
        (ck::CKA_MODULUS, AttrValue::Invalid),
    ]).await;
    // Key material never matches a search.
    assert!(find_objects(&ctx, user, &[at(ck::CKA_VALUE, &[0x42; 32])])
        .await
        .expect("find")
        .is_empty());
    // §4.10: SENSITIVE only false → true, EXTRACTABLE only true → false; chip-bound usage
    // flags only off. Each row: the allowed change, then the refused one.
    #[rustfmt::skip]
    let one_way = [
        (Some(at_bool(ck::CKA_SENSITIVE, true)), at_bool(ck::CKA_SENSITIVE, false)),
        (Some(at_bool(ck::CKA_EXTRACTABLE, false)), at_bool(ck::CKA_EXTRACTABLE, true)),
        (None, at_bool(ck::CKA_WRAP, true)),
        (Some(at_bool(ck::CKA_DECRYPT, false)), at_bool(ck::CKA_DECRYPT, true)),
    ];
    for (allowed, refused) in one_way {
        if let Some(a) = allowed {
            let what = format!("{a:?}");
            set_attributes(&ctx, user, id, &[a])
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:?}"));
        }
        let r = set_attributes(&ctx, user, id, std::slice::from_ref(&refused)).await;
        assert_eq!(code(r), AttributeReadOnly, "{refused:?}");
    }
    // ALWAYS_SENSITIVE stays false: the key was not sensitive from the start.
    assert_eq!(value(&ctx, user, id, ck::CKA_ALWAYS_SENSITIVE), val([0]));
    // A copy shares the blob; it cannot widen usage either.
    let copy = copy_object(&ctx, user, id, &[at(ck::CKA_LABEL, b"copy")])
        .await
        .expect("copy");
    assert_eq!(
        ctx.state.object(&copy).expect("copy").record.blob,
        o.record.blob
    );
    #[rustfmt::skip]
    check_refusals(&ctx, vec![
        ("copy widens decrypt", user, Use::Copy(id, vec![at_bool(ck::CKA_DECRYPT, true)]), AttributeReadOnly),
        // The public session does not see the (private) key at all.
        ("public reads", Session::public(t1), Use::Get(id, ck::CKA_LABEL), ErrorCode::UserNotLoggedIn),
    ]).await;
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
