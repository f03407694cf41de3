//! The C-level bodies against the process-wide module: "not initialised" before
//! `C_Initialize` and in a forked child, the two-call protocol end to end, panics.

use std::ptr::null_mut;
use std::sync::Arc;

use cryptoki_sys as ck;
use cryptoki_sys::{
    CK_ATTRIBUTE, CK_INFO, CK_MECHANISM, CK_MECHANISM_INFO, CK_OBJECT_HANDLE, CK_SESSION_HANDLE,
    CK_SESSION_INFO, CK_SLOT_INFO, CK_TOKEN_INFO, CK_ULONG,
};

use super::{crypt, digest, general, keys, object, session, sign, slot};
use crate::error::Ckr;
use crate::mechanism::Numbering;
use crate::module::{self, Module};
use crate::testing::{self, FakeNode, GLOBAL, USER_PIN};

fn slot_info() -> CK_SLOT_INFO {
    CK_SLOT_INFO {
        slotDescription: [0; 64],
        manufacturerID: [0; 32],
        flags: 0,
        hardwareVersion: ck::CK_VERSION::default(),
        firmwareVersion: ck::CK_VERSION::default(),
    }
}

fn ecdsa() -> CK_MECHANISM {
    CK_MECHANISM {
        mechanism: ck::CKM_ECDSA,
        pParameter: null_mut(),
        ulParameterLen: 0,
    }
}

#[test]
fn every_function_needs_initialize() {
    // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
    // the call, with the size given, as the PKCS#11 caller contract asks.
    unsafe {
        let _g = GLOBAL.lock();
        module::install(None);
        let nope = Err(Ckr::CRYPTOKI_NOT_INITIALIZED);
        let mut n: CK_ULONG = 0;
        let mut h: CK_SESSION_HANDLE = 0;
        let mut o: CK_OBJECT_HANDLE = 0;
        let mut buf = [0u8; 64];
        let mut m = ecdsa();
        assert_eq!(general::get_info(&mut CK_INFO::default()), nope);
        assert_eq!(slot::get_slot_list(0, null_mut(), &mut n), nope);
        assert_eq!(slot::get_slot_info(0, &mut slot_info()), nope);
        assert_eq!(slot::get_token_info(0, &mut CK_TOKEN_INFO::default()), nope);
        assert_eq!(slot::get_mechanism_list(0, null_mut(), &mut n), nope);
        assert_eq!(
            slot::get_mechanism_info(0, ck::CKM_ECDSA, &mut CK_MECHANISM_INFO::default()),
            nope
        );
        assert_eq!(
            slot::wait_for_slot_event(ck::CKF_DONT_BLOCK, null_mut(), null_mut()),
            nope
        );
        assert_eq!(
            session::open_session(0, ck::CKF_SERIAL_SESSION, null_mut(), None, &mut h),
            nope
        );
        assert_eq!(session::close_session(1), nope);
        assert_eq!(session::close_all_sessions(0), nope);
        assert_eq!(
            session::get_session_info(1, &mut CK_SESSION_INFO::default()),
            nope
        );
        assert_eq!(session::login(1, ck::CKU_USER, buf.as_mut_ptr(), 4), nope);
        assert_eq!(session::logout(1), nope);
        assert_eq!(object::create_object(1, null_mut(), 0, &mut o), nope);
        assert_eq!(object::find_objects_init(1, null_mut(), 0), nope);
        assert_eq!(object::get_attribute_value(1, 1, null_mut(), 0), nope);
        assert_eq!(digest::digest_init(1, &mut m), nope);
        assert_eq!(sign::sign_init(1, &mut m, 1), nope);
        assert_eq!(sign::sign(1, buf.as_mut_ptr(), 4, null_mut(), &mut n), nope);
        assert_eq!(
            sign::verify(1, buf.as_mut_ptr(), 4, buf.as_mut_ptr(), 4),
            nope
        );
        assert_eq!(crypt::encrypt_init(1, &mut m, 1), nope);
        assert_eq!(
            crypt::decrypt(1, buf.as_mut_ptr(), 4, null_mut(), &mut n),
            nope
        );
        assert_eq!(keys::generate_random(1, buf.as_mut_ptr(), 4), nope);
        assert_eq!(keys::seed_random(1, buf.as_mut_ptr(), 4), nope);
        assert_eq!(general::finalize(null_mut()), nope);
        // The function list and interfaces work before C_Initialize.
        let mut list = null_mut();
        general::get_function_list(&mut list).unwrap();
        assert!(!list.is_null());
    }
}

#[test]
fn a_forked_child_sees_no_module() {
    // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
    // the call, with the size given, as the PKCS#11 caller contract asks.
    unsafe {
        let _g = GLOBAL.lock();
        let node = Arc::new(FakeNode::default());
        let parent = Module::new(
            std::process::id().wrapping_add(1),
            vec!["main".into()],
            Numbering::default(),
            Box::new(SharedNode(node)),
        );
        module::install(Some(parent));
        assert_eq!(
            general::get_info(&mut CK_INFO::default()),
            Err(Ckr::CRYPTOKI_NOT_INITIALIZED)
        );
        assert_eq!(
            general::finalize(null_mut()),
            Err(Ckr::CRYPTOKI_NOT_INITIALIZED)
        );
        module::install(None);
    }
}

struct SharedNode(Arc<FakeNode>);

impl crate::runtime::Backend for SharedNode {
    fn call(
        &self,
        r: cloudkey_protocol::msg::Request,
    ) -> Result<cloudkey_protocol::msg::Response, Ckr> {
        self.0.call(r)
    }
}

#[test]
fn c_level_flow_with_two_call_outputs() {
    // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
    // the call, with the size given, as the PKCS#11 caller contract asks.
    unsafe {
        let _g = GLOBAL.lock();
        let node = Arc::new(FakeNode::default());
        module::install(Some(testing::module(Arc::clone(&node))));

        // Slots: two configured, one token present.
        let mut n: CK_ULONG = 0;
        slot::get_slot_list(0, null_mut(), &mut n).unwrap();
        assert_eq!(n, 2);
        slot::get_slot_list(1, null_mut(), &mut n).unwrap();
        assert_eq!(n, 1);
        let mut ids = [99; 1];
        slot::get_slot_list(1, ids.as_mut_ptr(), &mut n).unwrap();
        assert_eq!(ids, [0]);
        assert_eq!(
            slot::get_slot_list(0, ids.as_mut_ptr(), &mut n),
            Err(Ckr::BUFFER_TOO_SMALL)
        );
        assert_eq!(n, 2);
        let mut si = slot_info();
        slot::get_slot_info(1, &mut si).unwrap();
        assert_eq!(si.flags & ck::CKF_TOKEN_PRESENT, 0);
        slot::get_slot_info(0, &mut si).unwrap();
        assert_ne!(si.flags & ck::CKF_TOKEN_PRESENT, 0);
        assert_eq!(slot::get_slot_info(5, &mut si), Err(Ckr::SLOT_ID_INVALID));
        let mut ti = CK_TOKEN_INFO::default();
        slot::get_token_info(0, &mut ti).unwrap();
        assert_eq!(&ti.label[..6], b"main  ");
        assert_eq!(ti.label[31], b' ');
        assert_eq!(&ti.serialNumber[..2], b"1 ");
        assert_eq!((ti.ulMinPinLen, ti.ulMaxPinLen), (4, 255));
        assert_eq!(ti.ulMaxSessionCount, ck::CK_EFFECTIVELY_INFINITE);
        assert_ne!(ti.flags & ck::CKF_LOGIN_REQUIRED, 0);
        assert_eq!(
            slot::get_token_info(1, &mut ti),
            Err(Ckr::TOKEN_NOT_PRESENT)
        );

        // Mechanisms.
        slot::get_mechanism_list(0, null_mut(), &mut n).unwrap();
        let mut mechs = vec![0; usize::try_from(n).unwrap()];
        slot::get_mechanism_list(0, mechs.as_mut_ptr(), &mut n).unwrap();
        assert!(mechs.contains(&ck::CKM_ECDSA));
        let mut mi = CK_MECHANISM_INFO::default();
        slot::get_mechanism_info(0, ck::CKM_RSA_PKCS_KEY_PAIR_GEN, &mut mi).unwrap();
        assert_eq!((mi.ulMinKeySize, mi.ulMaxKeySize), (2048, 3072));
        assert_eq!(
            slot::get_mechanism_info(0, ck::CKM_DES3_CBC, &mut mi),
            Err(Ckr::MECHANISM_INVALID)
        );

        // Session and login.
        let mut h: CK_SESSION_HANDLE = 0;
        assert_eq!(
            session::open_session(0, ck::CKF_SERIAL_SESSION, null_mut(), None, null_mut()),
            Err(Ckr::ARGUMENTS_BAD)
        );
        session::open_session(
            0,
            ck::CKF_SERIAL_SESSION | ck::CKF_RW_SESSION,
            null_mut(),
            None,
            &mut h,
        )
        .unwrap();
        let mut user_pin = USER_PIN.to_vec();
        assert_eq!(
            session::login(h, ck::CKU_USER, null_mut(), 4),
            Err(Ckr::ARGUMENTS_BAD)
        );
        session::login(h, ck::CKU_USER, user_pin.as_mut_ptr(), 4).unwrap();
        let mut info = CK_SESSION_INFO::default();
        session::get_session_info(h, &mut info).unwrap();
        assert_eq!(info.state, ck::CKS_RW_USER_FUNCTIONS);

        // A key pair from C templates.
        let mut yes: ck::CK_BBOOL = 1;
        let mut label = *b"signer";
        let mut public = [CK_ATTRIBUTE {
            type_: ck::CKA_TOKEN,
            pValue: (&raw mut yes).cast(),
            ulValueLen: 1,
        }];
        let mut private = [
            CK_ATTRIBUTE {
                type_: ck::CKA_TOKEN,
                pValue: (&raw mut yes).cast(),
                ulValueLen: 1,
            },
            CK_ATTRIBUTE {
                type_: ck::CKA_LABEL,
                pValue: label.as_mut_ptr().cast(),
                ulValueLen: 6,
            },
        ];
        let mut gen = CK_MECHANISM {
            mechanism: ck::CKM_EC_KEY_PAIR_GEN,
            ..ecdsa()
        };
        let (mut hp, mut hq) = (0, 0);
        keys::generate_key_pair(
            h,
            &mut gen,
            public.as_mut_ptr(),
            1,
            private.as_mut_ptr(),
            2,
            &mut hp,
            &mut hq,
        )
        .unwrap();
        assert!(hp != 0 && hq != 0 && hp != hq);

        // C_GetAttributeValue: length query, then values; an invalid type among them.
        let mut t = [
            CK_ATTRIBUTE {
                type_: ck::CKA_LABEL,
                pValue: null_mut(),
                ulValueLen: 0,
            },
            CK_ATTRIBUTE {
                type_: ck::CKA_CLASS,
                pValue: null_mut(),
                ulValueLen: 0,
            },
        ];
        object::get_attribute_value(h, hq, t.as_mut_ptr(), 2).unwrap();
        assert_eq!((t[0].ulValueLen, t[1].ulValueLen), (6, 8));
        let mut got_label = [0u8; 6];
        let mut class: CK_ULONG = 0;
        t[0].pValue = got_label.as_mut_ptr().cast();
        t[1].pValue = (&raw mut class).cast();
        object::get_attribute_value(h, hq, t.as_mut_ptr(), 2).unwrap();
        assert_eq!((&got_label, class), (b"signer", ck::CKO_PRIVATE_KEY));
        let mut bad = [CK_ATTRIBUTE {
            type_: 0x7777,
            pValue: null_mut(),
            ulValueLen: 0,
        }];
        assert_eq!(
            object::get_attribute_value(h, hq, bad.as_mut_ptr(), 1),
            Err(Ckr::ATTRIBUTE_TYPE_INVALID)
        );
        assert_eq!(bad[0].ulValueLen, ck::CK_UNAVAILABLE_INFORMATION);

        // Find.
        object::find_objects_init(h, null_mut(), 0).unwrap();
        let mut found = [0; 4];
        object::find_objects(h, found.as_mut_ptr(), 4, &mut n).unwrap();
        assert_eq!((n, &found[..2]), (2, &[hp, hq][..]));
        object::find_objects_final(h).unwrap();

        // C_Sign: NULL buffer → length; short → CKR_BUFFER_TOO_SMALL and the length; then the
        // signature.
        let mut m = ecdsa();
        sign::sign_init(h, &mut m, hq).unwrap();
        let mut digest = [7u8; 32];
        let mut sig_len: CK_ULONG = 0;
        sign::sign(h, digest.as_mut_ptr(), 32, null_mut(), &mut sig_len).unwrap();
        assert_eq!(sig_len, 64);
        let mut sig = [0u8; 64];
        sig_len = 10;
        assert_eq!(
            sign::sign(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut sig_len),
            Err(Ckr::BUFFER_TOO_SMALL)
        );
        assert_eq!(sig_len, 64);
        sign::sign(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut sig_len).unwrap();
        assert_eq!(sig_len, 64);
        assert_ne!(sig, [0; 64]);
        assert_eq!(
            sign::sign(h, digest.as_mut_ptr(), 32, sig.as_mut_ptr(), &mut sig_len),
            Err(Ckr::OPERATION_NOT_INITIALIZED)
        );

        // Random, and the unsupported and stub functions.
        let mut r = [0u8; 16];
        keys::generate_random(h, r.as_mut_ptr(), 16).unwrap();
        assert_eq!(r, [0x42; 16]);
        assert_eq!(
            keys::seed_random(h, r.as_mut_ptr(), 16),
            Err(Ckr::RANDOM_SEED_NOT_SUPPORTED)
        );
        assert_eq!(
            slot::wait_for_slot_event(ck::CKF_DONT_BLOCK, null_mut(), null_mut()),
            Err(Ckr::NO_EVENT)
        );

        // Double initialisation, finalisation.
        assert_eq!(
            general::initialize(null_mut()),
            Err(Ckr::CRYPTOKI_ALREADY_INITIALIZED)
        );
        general::finalize(null_mut()).unwrap();
        assert_eq!(
            general::get_info(&mut CK_INFO::default()),
            Err(Ckr::CRYPTOKI_NOT_INITIALIZED)
        );
    }
}

#[test]
fn a_size_query_of_encrypt_update_takes_no_part() {
    // SAFETY: every pointer passed below is NULL or points to a local of this test that outlives
    // the call, with the size given, as the PKCS#11 caller contract asks.
    unsafe {
        let _g = GLOBAL.lock();
        let node = Arc::new(FakeNode::default());
        module::install(Some(testing::module(Arc::clone(&node))));
        let mut h: CK_SESSION_HANDLE = 0;
        session::open_session(0, ck::CKF_SERIAL_SESSION, null_mut(), None, &mut h).unwrap();
        // A session AES key given by value.
        let (mut class, mut kt) = (ck::CKO_SECRET_KEY, ck::CKK_AES);
        let mut value = [5u8; 32];
        let mut t = [
            CK_ATTRIBUTE {
                type_: ck::CKA_CLASS,
                pValue: (&raw mut class).cast(),
                ulValueLen: 8,
            },
            CK_ATTRIBUTE {
                type_: ck::CKA_KEY_TYPE,
                pValue: (&raw mut kt).cast(),
                ulValueLen: 8,
            },
            CK_ATTRIBUTE {
                type_: ck::CKA_VALUE,
                pValue: value.as_mut_ptr().cast(),
                ulValueLen: 32,
            },
        ];
        let mut key: CK_OBJECT_HANDLE = 0;
        object::create_object(h, t.as_mut_ptr(), 3, &mut key).unwrap();
        let mut iv = [0u8; 16];
        let mut m = CK_MECHANISM {
            mechanism: ck::CKM_AES_CBC_PAD,
            pParameter: iv.as_mut_ptr().cast(),
            ulParameterLen: 16,
        };
        crypt::encrypt_init(h, &mut m, key).unwrap();
        // As `cryptoki` does: the size, then the call, for each part.
        let mut part = *b"abc";
        let mut out = [0u8; 32];
        for _ in 0..2 {
            let mut n: CK_ULONG = 99;
            crypt::encrypt_update(h, part.as_mut_ptr(), 3, null_mut(), &mut n).unwrap();
            assert_eq!(n, 0);
            crypt::encrypt_update(h, part.as_mut_ptr(), 3, out.as_mut_ptr(), &mut n).unwrap();
            assert_eq!(n, 0);
        }
        // The fake node reverses the data and appends 16 bytes: both parts, each once.
        let mut n = 32;
        crypt::encrypt_final(h, out.as_mut_ptr(), &mut n).unwrap();
        assert_eq!(n, 6 + 16);
        assert_eq!(&out[..6], b"cbacba");
        // A size query needs an active operation all the same.
        assert_eq!(
            crypt::encrypt_update(h, part.as_mut_ptr(), 3, null_mut(), &mut n),
            Err(Ckr::OPERATION_NOT_INITIALIZED)
        );
        general::finalize(null_mut()).unwrap();
    }
}

#[test]
fn panics_become_general_error() {
    assert_eq!(
        super::guard("test", || panic!("boom")),
        ck::CKR_GENERAL_ERROR
    );
    assert_eq!(
        super::guard("test", || Err(Ckr::PIN_INCORRECT)),
        ck::CKR_PIN_INCORRECT
    );
    assert_eq!(super::guard("test", || Ok(())), ck::CKR_OK);
}
