//! The module's semantics against a fake node: sessions and logins, read-only sessions,
//! objects and attributes, the operations and their two-call outputs, re-login after an
//! expired grant, and an unreachable cluster.

use std::ptr::null_mut;
use std::sync::Arc;

use cloudkey_protocol::msg::SignInput;
use cryptoki_sys as ck;
use cryptoki_sys::{CK_MECHANISM, CK_OBJECT_HANDLE, CK_SESSION_HANDLE};
use zeroize::Zeroizing;

use crate::digest::Hasher;
use crate::error::Ckr;
use crate::ffi::ptr::{self, AttrAnswer, AttrQuery, MechPtr, Output, RawAttr};
use crate::mechanism::Hash;
use crate::module::Module;
use crate::ops::Kind;
use crate::testing::{fake_signature, module, FakeNode, SO_PIN, USER_PIN};

const RW: u64 = ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION;
const RO: u64 = ck::CKF_SERIAL_SESSION;

fn setup() -> (Arc<FakeNode>, Module) {
    let node = Arc::new(FakeNode::default());
    let m = module(Arc::clone(&node));
    (node, m)
}

fn pin(p: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(p.to_vec())
}

fn mech(ckm: u64) -> MechPtr {
    let m = CK_MECHANISM {
        mechanism: ckm,
        pParameter: null_mut(),
        ulParameterLen: 0,
    };
    ptr::test_mechanism(&m).unwrap()
}

fn ulong(ty: u64, v: u64) -> (u64, Vec<u8>) {
    (ty, v.to_ne_bytes().to_vec())
}

fn boolean(ty: u64, v: bool) -> (u64, Vec<u8>) {
    (ty, vec![u8::from(v)])
}

fn raw(t: &[(u64, Vec<u8>)]) -> Vec<RawAttr<'_>> {
    t.iter()
        .map(|(ty, v)| RawAttr { ty: *ty, value: v })
        .collect()
}

/// A logged-in RW session with an EC key pair (token objects).
fn with_key_pair(m: &Module, gen: u64) -> (CK_SESSION_HANDLE, CK_OBJECT_HANDLE, CK_OBJECT_HANDLE) {
    let h = m.open_session(0, RW).unwrap();
    m.login(h, ck::CKU_USER, pin(USER_PIN)).unwrap();
    let public = [boolean(ck::CKA_TOKEN, true), boolean(ck::CKA_VERIFY, true)];
    let private = [
        boolean(ck::CKA_TOKEN, true),
        boolean(ck::CKA_SIGN, true),
        (ck::CKA_LABEL, b"k1".to_vec()),
    ];
    let (p, q) = m
        .generate_key_pair(h, &mech(gen), &raw(&public), &raw(&private))
        .unwrap();
    (h, p, q)
}

fn data(o: Output) -> Vec<u8> {
    match o {
        Output::Data(d) => d.to_vec(),
        Output::Len(n) => panic!("only a length: {n}"),
    }
}

#[test]
fn sessions_and_slots() {
    let (_, m) = setup();
    assert_eq!(m.open_session(9, RW), Err(Ckr::SLOT_ID_INVALID));
    assert_eq!(
        m.open_session(0, ck::CKF_RW_SESSION),
        Err(Ckr::SESSION_PARALLEL_NOT_SUPPORTED)
    );
    assert_eq!(m.open_session(1, RW), Err(Ckr::TOKEN_NOT_PRESENT));
    let a = m.open_session(0, RW).unwrap();
    let b = m.open_session(0, RO).unwrap();
    assert!(b > a, "handles grow");
    assert_eq!(
        m.session_info(b).unwrap(),
        (0, ck::CKS_RO_PUBLIC_SESSION, RO)
    );
    assert_eq!(m.session_info(a).unwrap().1, ck::CKS_RW_PUBLIC_SESSION);
    m.close_session(a).unwrap();
    assert_eq!(m.close_session(a), Err(Ckr::SESSION_HANDLE_INVALID));
    let c = m.open_session(0, RW).unwrap();
    assert!(c > b, "handles are never reused");
    m.close_all_sessions(0).unwrap();
    assert_eq!(m.session_info(b), Err(Ckr::SESSION_HANDLE_INVALID));
    assert_eq!(m.sessions.counts(0), (0, 0));
}

#[test]
fn login_rules() {
    let (node, m) = setup();
    let rw = m.open_session(0, RW).unwrap();
    assert_eq!(m.login(rw, 7, pin(USER_PIN)), Err(Ckr::USER_TYPE_INVALID));
    assert_eq!(
        m.login(rw, ck::CKU_USER, pin(b"0000")),
        Err(Ckr::PIN_INCORRECT)
    );
    assert_eq!(node.st().user_failures, 1);
    assert_eq!(m.logout(rw), Err(Ckr::USER_NOT_LOGGED_IN));
    m.login(rw, ck::CKU_USER, pin(USER_PIN)).unwrap();
    assert_eq!(
        m.login(rw, ck::CKU_USER, pin(USER_PIN)),
        Err(Ckr::USER_ALREADY_LOGGED_IN)
    );
    assert_eq!(
        m.login(rw, ck::CKU_SO, pin(SO_PIN)),
        Err(Ckr::USER_ANOTHER_ALREADY_LOGGED_IN)
    );
    // Login state is per slot: a new session sees it.
    let ro = m.open_session(0, RO).unwrap();
    assert_eq!(m.session_info(ro).unwrap().1, ck::CKS_RO_USER_FUNCTIONS);
    assert_eq!(m.session_info(rw).unwrap().1, ck::CKS_RW_USER_FUNCTIONS);
    // Context-specific login re-checks the user's PIN.
    m.login(rw, ck::CKU_CONTEXT_SPECIFIC, pin(USER_PIN))
        .unwrap();
    m.logout(ro).unwrap();
    assert_eq!(m.session_info(rw).unwrap().1, ck::CKS_RW_PUBLIC_SESSION);
    // SO with a read-only session open.
    assert_eq!(
        m.login(rw, ck::CKU_SO, pin(SO_PIN)),
        Err(Ckr::SESSION_READ_ONLY_EXISTS)
    );
    m.close_session(ro).unwrap();
    m.login(rw, ck::CKU_SO, pin(SO_PIN)).unwrap();
    assert_eq!(m.session_info(rw).unwrap().1, ck::CKS_RW_SO_FUNCTIONS);
    assert_eq!(
        m.open_session(0, RO),
        Err(Ckr::SESSION_READ_WRITE_SO_EXISTS)
    );
    // Closing the last session logs out.
    m.close_session(rw).unwrap();
    let again = m.open_session(0, RW).unwrap();
    assert_eq!(m.session_info(again).unwrap().1, ck::CKS_RW_PUBLIC_SESSION);
    // C_InitToken refuses while sessions are open.
    assert_eq!(
        m.init_token(0, pin(SO_PIN), "main".into()),
        Err(Ckr::SESSION_EXISTS)
    );
}

#[test]
fn read_only_sessions_and_session_objects() {
    let (node, m) = setup();
    let ro = m.open_session(0, RO).unwrap();
    let token_obj = [
        ulong(ck::CKA_CLASS, ck::CKO_DATA),
        boolean(ck::CKA_TOKEN, true),
    ];
    assert_eq!(
        m.create_object(ro, &raw(&token_obj)),
        Err(Ckr::SESSION_READ_ONLY)
    );
    // Session objects may be created in read-only sessions, and die with the session.
    let session_obj = [
        ulong(ck::CKA_CLASS, ck::CKO_DATA),
        (ck::CKA_LABEL, b"tmp".to_vec()),
    ];
    let o = m.create_object(ro, &raw(&session_obj)).unwrap();
    m.set_attributes(ro, o, &raw(&[(ck::CKA_LABEL, b"tmp2".to_vec())]))
        .unwrap();
    let rw = m.open_session(0, RW).unwrap();
    m.login(rw, ck::CKU_USER, pin(USER_PIN)).unwrap();
    let t = m.create_object(rw, &raw(&token_obj)).unwrap();
    assert_eq!(m.destroy_object(ro, t), Err(Ckr::SESSION_READ_ONLY));
    assert_eq!(
        m.set_attributes(ro, t, &raw(&[(ck::CKA_LABEL, b"x".to_vec())])),
        Err(Ckr::SESSION_READ_ONLY)
    );
    m.close_session(ro).unwrap();
    assert_eq!(node.st().log.last(), Some(&"destroy_object"));
    assert_eq!(m.objects.id(o), Err(Ckr::OBJECT_HANDLE_INVALID));
    assert!(m.objects.id(t).is_ok());
    m.destroy_object(rw, t).unwrap();
    assert_eq!(m.destroy_object(rw, t), Err(Ckr::OBJECT_HANDLE_INVALID));
}

#[test]
fn find_and_get_attributes() {
    let (_, m) = setup();
    let (h, public, private) = with_key_pair(&m, ck::CKM_EC_KEY_PAIR_GEN);
    // All visible objects, then by class.
    m.find_init(h, &[]).unwrap();
    assert_eq!(m.find_init(h, &[]), Err(Ckr::OPERATION_ACTIVE));
    assert_eq!(m.find_next(h, 1).unwrap(), vec![public]);
    assert_eq!(m.find_next(h, 10).unwrap(), vec![private]);
    assert!(m.find_next(h, 10).unwrap().is_empty());
    m.find_final(h).unwrap();
    assert_eq!(m.find_final(h), Err(Ckr::OPERATION_NOT_INITIALIZED));
    assert_eq!(m.find_next(h, 1), Err(Ckr::OPERATION_NOT_INITIALIZED));
    let class = [ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY)];
    m.find_init(h, &raw(&class)).unwrap();
    assert_eq!(m.find_next(h, 10).unwrap(), vec![private]);
    m.find_final(h).unwrap();

    let q = |ty, capacity| AttrQuery { ty, capacity };
    let (a, rv) = m
        .get_attributes(
            h,
            private,
            &[
                q(ck::CKA_LABEL, None),
                q(ck::CKA_KEY_TYPE, Some(8)),
                q(ck::CKA_VALUE, Some(64)),
                q(ck::CKA_MODULUS, Some(64)),
            ],
        )
        .unwrap();
    assert_eq!(rv, Err(Ckr::ATTRIBUTE_SENSITIVE));
    assert_eq!(a[0], AttrAnswer::Len(2));
    assert_eq!(
        a[1],
        AttrAnswer::Value(Zeroizing::new(ck::CKK_EC.to_ne_bytes().to_vec()))
    );
    assert_eq!(a[2], AttrAnswer::Unavailable);
    assert_eq!(a[3], AttrAnswer::Unavailable);
    assert_eq!(
        m.object_size(h, private),
        Ok(ck::CK_UNAVAILABLE_INFORMATION)
    );
    assert_eq!(m.object_size(h, 999), Err(Ckr::OBJECT_HANDLE_INVALID));
    // The same object keeps its handle; a private object is refused after logout (as the
    // node does), and its handle works again after a new login.
    m.logout(h).unwrap();
    assert_eq!(
        m.get_attributes(h, private, &[q(ck::CKA_LABEL, None)])
            .unwrap_err(),
        Ckr::USER_NOT_LOGGED_IN
    );
    m.login(h, ck::CKU_USER, pin(USER_PIN)).unwrap();
    assert!(m
        .get_attributes(h, private, &[q(ck::CKA_LABEL, None)])
        .is_ok());
}

#[test]
fn the_handle_table_keeps_only_objects_that_may_exist() {
    let (node, m) = setup();
    let rw = m.open_session(0, RW).unwrap();
    m.login(rw, ck::CKU_USER, pin(USER_PIN)).unwrap();
    let data_obj = |token: bool| {
        [
            ulong(ck::CKA_CLASS, ck::CKO_DATA),
            boolean(ck::CKA_TOKEN, token),
        ]
    };
    // Created and destroyed through the module: nothing stays behind.
    let mut last = 0;
    for _ in 0..500 {
        let o = m.create_object(rw, &raw(&data_obj(true))).unwrap();
        assert!(o > last, "handles are never reused");
        last = o;
        m.destroy_object(rw, o).unwrap();
    }
    assert_eq!(m.objects.len(), 0);
    // Session objects go with their session.
    let other = m.open_session(0, RW).unwrap();
    for _ in 0..100 {
        m.create_object(other, &raw(&data_obj(false))).unwrap();
    }
    assert_eq!(m.objects.len(), 100);
    m.close_session(other).unwrap();
    assert_eq!(m.objects.len(), 0);
    // Objects another application destroys: forgotten when the cluster says so, and the
    // stale handle stays invalid while live objects keep theirs.
    let kept = m.create_object(rw, &raw(&data_obj(true))).unwrap();
    let mut stale = Vec::new();
    for _ in 0..100 {
        stale.push(m.create_object(rw, &raw(&data_obj(true))).unwrap());
    }
    m.find_init(rw, &[]).unwrap();
    assert_eq!(m.find_next(rw, 1000).unwrap().len(), 101);
    m.find_final(rw).unwrap();
    let kept_id = m.objects.id(kept).unwrap();
    node.st().objects.retain(|id, _| *id == kept_id);
    for &o in &stale {
        let q = [AttrQuery {
            ty: ck::CKA_LABEL,
            capacity: None,
        }];
        assert_eq!(
            m.get_attributes(rw, o, &q).unwrap_err(),
            Ckr::OBJECT_HANDLE_INVALID
        );
    }
    assert_eq!(m.objects.len(), 1);
    for &o in &stale {
        assert_eq!(
            m.set_attributes(rw, o, &raw(&[(ck::CKA_LABEL, b"x".to_vec())])),
            Err(Ckr::OBJECT_HANDLE_INVALID)
        );
        assert_eq!(m.destroy_object(rw, o), Err(Ckr::OBJECT_HANDLE_INVALID));
    }
    m.find_init(rw, &[]).unwrap();
    assert_eq!(m.find_next(rw, 1000).unwrap(), vec![kept]);
    m.find_final(rw).unwrap();
}

#[test]
fn a_sign_or_encrypt_whose_length_is_known_hashes_no_cache_key() {
    let hashed = || crate::ops::KEYS_HASHED.with(std::cell::Cell::get);
    let (_, m) = setup();
    let (h, _, private) = with_key_pair(&m, ck::CKM_EC_KEY_PAIR_GEN);
    let before = hashed();
    // Size query, short buffer, then the call: the length (64) is known at init, so the
    // input is never hashed to recognise the repeated call.
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    assert_eq!(m.sign(h, &[1; 32], None).unwrap(), Output::Len(64));
    assert_eq!(m.sign(h, &[1; 32], Some(10)).unwrap(), Output::Len(64));
    assert_eq!(data(m.sign(h, &[1; 32], Some(64)).unwrap()).len(), 64);
    assert_eq!(hashed(), before, "no cache key for a known output length");
}

#[test]
fn sign_two_call_protocol_and_local_hashing() {
    let (node, m) = setup();
    let (h, public, private) = with_key_pair(&m, ck::CKM_EC_KEY_PAIR_GEN);
    assert_eq!(m.sign(h, b"x", None), Err(Ckr::OPERATION_NOT_INITIALIZED));
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA_SHA256)), private)
        .unwrap();
    assert_eq!(
        m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA_SHA256)), private),
        Err(Ckr::OPERATION_ACTIVE)
    );
    let calls = node.st().log.len();
    // Size query and a short buffer: 64 bytes, no round trip, operation still active.
    assert_eq!(m.sign(h, b"msg", None).unwrap(), Output::Len(64));
    assert_eq!(m.sign(h, b"msg", Some(10)).unwrap(), Output::Len(64));
    assert_eq!(node.st().log.len(), calls);
    let sig = data(m.sign(h, b"msg", Some(64)).unwrap());
    let digest = SignInput::Digest(Hasher::digest(Hash::Sha256, b"msg"));
    assert_eq!(sig, fake_signature(&digest, 64));
    assert_eq!(node.st().last_input, Some(digest.clone()));
    assert_eq!(
        m.sign(h, b"msg", Some(64)),
        Err(Ckr::OPERATION_NOT_INITIALIZED)
    );

    // Multi-part gives the same digest.
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA_SHA256)), private)
        .unwrap();
    m.op_update(h, Kind::Sign, b"m").unwrap();
    m.op_update(h, Kind::Sign, b"sg").unwrap();
    assert_eq!(m.sign(h, b"msg", Some(64)), Err(Ckr::OPERATION_ACTIVE));
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA_SHA256)), private)
        .unwrap();
    m.op_update(h, Kind::Sign, b"m").unwrap();
    m.op_update(h, Kind::Sign, b"sg").unwrap();
    assert_eq!(m.sign_final(h, None).unwrap(), Output::Len(64));
    assert_eq!(data(m.sign_final(h, Some(100)).unwrap()), sig);

    // Raw ECDSA is single-part only.
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    assert_eq!(
        m.op_update(h, Kind::Sign, b"x"),
        Err(Ckr::FUNCTION_NOT_SUPPORTED)
    );
    assert_eq!(m.sign_final(h, None), Err(Ckr::OPERATION_NOT_INITIALIZED));
    // A NULL mechanism cancels (3.0).
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    m.op_init(h, Kind::Sign, None, 0).unwrap();
    assert_eq!(m.sign(h, b"x", None), Err(Ckr::OPERATION_NOT_INITIALIZED));

    // Verify: good, bad, wrong length; single and multi-part.
    m.op_init(h, Kind::Verify, Some(mech(ck::CKM_ECDSA_SHA256)), public)
        .unwrap();
    m.verify(h, Some(b"msg"), &sig).unwrap();
    m.op_init(h, Kind::Verify, Some(mech(ck::CKM_ECDSA_SHA256)), public)
        .unwrap();
    m.op_update(h, Kind::Verify, b"ms").unwrap();
    m.op_update(h, Kind::Verify, b"g").unwrap();
    m.verify(h, None, &sig).unwrap();
    m.op_init(h, Kind::Verify, Some(mech(ck::CKM_ECDSA_SHA256)), public)
        .unwrap();
    assert_eq!(
        m.verify(h, Some(b"other"), &sig),
        Err(Ckr::SIGNATURE_INVALID)
    );
    m.op_init(h, Kind::Verify, Some(mech(ck::CKM_ECDSA_SHA256)), public)
        .unwrap();
    assert_eq!(
        m.verify(h, Some(b"msg"), &sig[..10]),
        Err(Ckr::SIGNATURE_LEN_RANGE)
    );

    // Mechanism and key checks at init.
    assert_eq!(
        m.op_init(h, Kind::Sign, Some(mech(ck::CKM_SHA256_RSA_PKCS)), private),
        Err(Ckr::KEY_TYPE_INCONSISTENT)
    );
    assert_eq!(
        m.op_init(h, Kind::Sign, Some(mech(ck::CKM_AES_GCM)), private),
        Err(Ckr::MECHANISM_INVALID)
    );
    assert_eq!(
        m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), 999),
        Err(Ckr::KEY_HANDLE_INVALID)
    );
}

#[test]
fn rsa_signature_length_comes_from_the_modulus() {
    let (node, m) = setup();
    let (h, _, private) = with_key_pair(&m, ck::CKM_RSA_PKCS_KEY_PAIR_GEN);
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_SHA256_RSA_PKCS)), private)
        .unwrap();
    let calls = node.st().log.len();
    assert_eq!(m.sign(h, b"msg", None).unwrap(), Output::Len(256));
    assert_eq!(node.st().log.len(), calls);
    assert_eq!(data(m.sign(h, b"msg", Some(256)).unwrap()).len(), 256);
    // The key's facts are fetched once per handle.
    let fetches = node
        .st()
        .log
        .iter()
        .filter(|n| **n == "get_attributes")
        .count();
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_SHA256_RSA_PKCS)), private)
        .unwrap();
    assert_eq!(
        node.st()
            .log
            .iter()
            .filter(|n| **n == "get_attributes")
            .count(),
        fetches
    );
}

#[test]
fn encryption_keeps_the_result_of_a_size_query() {
    let (node, m) = setup();
    let (h, _, private) = with_key_pair(&m, ck::CKM_RSA_PKCS_KEY_PAIR_GEN);
    let mut label = *b"";
    let mut oaep = ck::CK_RSA_PKCS_OAEP_PARAMS {
        hashAlg: ck::CKM_SHA256,
        mgf: ck::CKG_MGF1_SHA256,
        source: ck::CKZ_DATA_SPECIFIED,
        pSourceData: label.as_mut_ptr().cast(),
        ulSourceDataLen: 0,
    };
    let cm = CK_MECHANISM {
        mechanism: ck::CKM_RSA_PKCS_OAEP,
        pParameter: (&raw mut oaep).cast(),
        ulParameterLen: std::mem::size_of::<ck::CK_RSA_PKCS_OAEP_PARAMS>() as u64,
    };
    let oaep_mech = || ptr::test_mechanism(&cm).unwrap();
    m.op_init(h, Kind::Encrypt, Some(oaep_mech()), private)
        .unwrap();
    let calls = node.st().log.len();
    assert_eq!(
        m.crypt(h, Kind::Encrypt, b"secret", None).unwrap(),
        Output::Len(22)
    );
    assert_eq!(
        m.crypt(h, Kind::Encrypt, b"secret", Some(4)).unwrap(),
        Output::Len(22)
    );
    let c = data(m.crypt(h, Kind::Encrypt, b"secret", Some(22)).unwrap());
    assert_eq!(
        node.st().log.len(),
        calls + 1,
        "one round trip for three calls"
    );
    // Decrypt, multi-part: parts are buffered, the result comes at the end.
    m.op_init(h, Kind::Decrypt, Some(oaep_mech()), private)
        .unwrap();
    m.op_update(h, Kind::Decrypt, &c[..5]).unwrap();
    m.op_update(h, Kind::Decrypt, &c[5..]).unwrap();
    assert_eq!(
        m.crypt_final(h, Kind::Decrypt, None).unwrap(),
        Output::Len(6)
    );
    assert_eq!(
        data(m.crypt_final(h, Kind::Decrypt, Some(6)).unwrap()),
        b"secret"
    );
    // RSA PKCS#1 v1.5 encryption is not offered.
    assert_eq!(
        m.op_init(h, Kind::Encrypt, Some(mech(ck::CKM_RSA_PKCS)), private),
        Err(Ckr::MECHANISM_INVALID)
    );
    // A node error ends the operation.
    m.op_init(h, Kind::Decrypt, Some(oaep_mech()), private)
        .unwrap();
    assert_eq!(
        m.crypt(h, Kind::Decrypt, b"short", Some(100)),
        Err(Ckr::ENCRYPTED_DATA_LEN_RANGE)
    );
    assert_eq!(
        m.crypt(h, Kind::Decrypt, b"short", Some(100)),
        Err(Ckr::OPERATION_NOT_INITIALIZED)
    );
}

#[test]
fn digests_are_local() {
    let (node, m) = setup();
    let h = m.open_session(0, RO).unwrap();
    let calls = node.st().log.len();
    for (ckm, hash) in [
        (ck::CKM_SHA256, Hash::Sha256),
        (cloudkey_protocol::vendor::CKM_SM3, Hash::Sm3),
    ] {
        m.digest_init(h, Some(mech(ckm))).unwrap();
        assert_eq!(m.digest(h, Some(b"abc"), None).unwrap(), Output::Len(32));
        assert_eq!(
            m.digest(h, Some(b"abc"), Some(31)).unwrap(),
            Output::Len(32)
        );
        assert_eq!(
            data(m.digest(h, Some(b"abc"), Some(32)).unwrap()),
            Hasher::digest(hash, b"abc")
        );
        m.digest_init(h, Some(mech(ckm))).unwrap();
        m.digest_update(h, b"a").unwrap();
        m.digest_update(h, b"bc").unwrap();
        assert_eq!(
            data(m.digest(h, None, Some(64)).unwrap()),
            Hasher::digest(hash, b"abc")
        );
    }
    assert_eq!(
        m.digest_init(h, Some(mech(ck::CKM_ECDSA))),
        Err(Ckr::MECHANISM_INVALID)
    );
    assert_eq!(node.st().log.len(), calls);
}

#[test]
fn an_expired_grant_is_renewed_transparently() {
    let (node, m) = setup();
    let (h, _, private) = with_key_pair(&m, ck::CKM_EC_KEY_PAIR_GEN);
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    data(m.sign(h, &[1; 32], Some(64)).unwrap());
    node.st().generation += 1;
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    data(m.sign(h, &[1; 32], Some(64)).unwrap());
    let log = node.st().log.clone();
    let n = log.len();
    assert_eq!(&log[n - 3..], &["sign", "login", "sign"]);
}

#[test]
fn a_grant_about_to_expire_is_renewed_without_the_pin() {
    let (node, m) = setup();
    let (h, _, private) = with_key_pair(&m, ck::CKM_EC_KEY_PAIR_GEN);
    // Log in again with grants that are already inside the renewal margin.
    m.logout(h).unwrap();
    node.st().grant_ttl_ms = Some(1_000);
    m.login(h, ck::CKU_USER, Zeroizing::new(USER_PIN.to_vec()))
        .unwrap();
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    data(m.sign(h, &[1; 32], Some(64)).unwrap());
    let log = node.st().log.clone();
    let n = log.len();
    assert_eq!(&log[n - 2..], &["renew_session", "sign"]);
    // C_Logout ends the login on the cluster.
    m.logout(h).unwrap();
    assert_eq!(node.st().log.last(), Some(&"logout"));
}

#[test]
fn a_failed_renewal_logs_the_slot_out() {
    let (node, m) = setup();
    let (h, _, private) = with_key_pair(&m, ck::CKM_EC_KEY_PAIR_GEN);
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    data(m.sign(h, &[1; 32], Some(64)).unwrap());
    node.st().generation += 1;
    node.st().pin_changed = true;
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    assert_eq!(m.sign(h, &[1; 32], Some(64)), Err(Ckr::USER_NOT_LOGGED_IN));
    assert_eq!(m.session_info(h).unwrap().1, ck::CKS_RW_PUBLIC_SESSION);
}

#[test]
fn an_unreachable_cluster_is_a_device_error_and_calls_recover() {
    let (node, m) = setup();
    let (h, public, private) = with_key_pair(&m, ck::CKM_EC_KEY_PAIR_GEN);
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    node.st().down = true;
    assert_eq!(m.sign(h, &[1; 32], Some(64)), Err(Ckr::DEVICE_ERROR));
    // A key never used before needs its facts from the cluster.
    assert_eq!(
        m.op_init(h, Kind::Verify, Some(mech(ck::CKM_ECDSA)), public),
        Err(Ckr::DEVICE_ERROR)
    );
    assert_eq!(m.token_list(true).unwrap_err(), Ckr::DEVICE_ERROR);
    node.st().down = false;
    m.op_init(h, Kind::Sign, Some(mech(ck::CKM_ECDSA)), private)
        .unwrap();
    data(m.sign(h, &[1; 32], Some(64)).unwrap());
    assert_eq!(m.session_info(h).unwrap().1, ck::CKS_RW_USER_FUNCTIONS);
}

#[test]
fn random_and_wrapping() {
    let (node, m) = setup();
    let (h, public, private) = with_key_pair(&m, ck::CKM_EC_KEY_PAIR_GEN);
    let r = m.generate_random(h, 10_000).unwrap();
    assert_eq!(r.len(), 10_000);
    let randoms = node
        .st()
        .log
        .iter()
        .filter(|n| **n == "generate_random")
        .count();
    assert_eq!(randoms, 3);
    let kw = mech(ck::CKM_AES_KEY_WRAP);
    let calls = node.st().log.len();
    assert_eq!(
        m.wrap_key(h, &kw, public, private, None).unwrap(),
        Output::Len(40)
    );
    assert_eq!(
        data(m.wrap_key(h, &kw, public, private, Some(40)).unwrap()).len(),
        40
    );
    assert_eq!(node.st().log.len(), calls + 1);
    assert_eq!(
        m.wrap_key(h, &kw, 999, private, None),
        Err(Ckr::WRAPPING_KEY_HANDLE_INVALID)
    );
}
