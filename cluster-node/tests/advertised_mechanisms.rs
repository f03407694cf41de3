//! The node accepts every mechanism the PKCS#11 module advertises, for every operation the
//! module advertises it for: each (mechanism, flag) of `cloudkey_pkcs11::advertised()` goes
//! through the node's mechanism resolution (`service::mechanism`), and the key type the
//! module expects is the one the node uses. A mechanism added to the module's table without
//! the node, or dropped from the node while the module still offers it, fails here. So does a
//! signature length the module states (and answers size queries with) that is not the length
//! the node produces.

use cloudkey_node::service::mechanism::{
    ecdh_peer_point, key_gen, CipherOp, KeyAlg, PairGen, SignOp, WrapOp,
};
use cloudkey_pkcs11::{advertised, Advertised, SignatureLen};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::MechParam;

/// The flags of `CK_MECHANISM_INFO` that name no operation.
const INFO_ONLY: u64 = ck::CKF_HW | ck::CKF_EC_F_P | ck::CKF_EC_NAMEDCURVE | ck::CKF_EC_UNCOMPRESS;

/// Checks the key type the module expects against the node's.
fn same_key(m: &Advertised, op: &str, node: KeyAlg) -> Result<(), String> {
    match m.key_type {
        Some(ckk) if ckk == node.default_ckk() => Ok(()),
        other => Err(format!(
            "0x{:x} ({op}): the module expects key type {other:x?}, the node a {} key (0x{:x})",
            m.ckm,
            node.name(),
            node.default_ckk()
        )),
    }
}

/// Checks the signature length the module states against the node's, for every key size the
/// module advertises the mechanism for (bits for RSA and EC, bytes for secret keys; stepping by
/// 8 walks every RSA modulus length in bytes and the AES key sizes). The node reads the modulus
/// length only for RSA.
fn same_len(m: &Advertised, op: SignOp) -> Result<(), String> {
    let Some(stated) = m.signature_len else {
        return Err(format!(
            "0x{:x}: advertised for signing without a signature length",
            m.ckm
        ));
    };
    let wrong: Vec<String> = (m.min_key_size..=m.max_key_size)
        .step_by(8)
        .filter_map(|size| {
            let modulus = usize::try_from(size / 8).expect("a key size fits usize");
            let module = match stated {
                SignatureLen::Fixed(len) => len,
                SignatureLen::Modulus => modulus,
            };
            let node = op.signature_len(modulus);
            (module != node).then(|| format!("key size {size}: module {module}, node {node}"))
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "0x{:x}: signature length {stated:?} is not the node's: {}",
            m.ckm,
            wrong.join(", ")
        ))
    }
}

/// Every operation `m` is advertised for, resolved by the node; the failures.
fn check(m: &Advertised) -> Vec<String> {
    let mut bad = Vec::new();
    let mut note = |r: Result<(), String>| {
        if let Err(e) = r {
            bad.push(e);
        }
    };
    let refused = |op: &str, e: &dyn std::fmt::Display| {
        Err::<(), _>(format!("0x{:x} ({op}): refused by the node: {e}", m.ckm))
    };
    let has = |f: u64| m.flags & f != 0;
    if has(ck::CKF_SIGN | ck::CKF_VERIFY) {
        match SignOp::of(m.ckm) {
            Ok(op) => {
                note(same_key(m, "sign/verify", op.key_alg()));
                note(same_len(m, op));
            }
            Err(e) => note(refused("sign/verify", &e)),
        }
    }
    if has(ck::CKF_ENCRYPT | ck::CKF_DECRYPT) {
        note(match CipherOp::of(m.ckm) {
            Ok(op) => same_key(m, "encrypt/decrypt", op.key_alg()),
            Err(e) => refused("encrypt/decrypt", &e),
        });
    }
    if has(ck::CKF_WRAP | ck::CKF_UNWRAP) {
        note(match WrapOp::of(m.ckm) {
            Ok(op) => same_key(m, "wrap/unwrap", op.key_alg()),
            Err(e) => refused("wrap/unwrap", &e),
        });
    }
    if has(ck::CKF_GENERATE_KEY_PAIR) {
        note(
            PairGen::of(m.ckm, &MechParam::None)
                .map(|_| ())
                .or_else(|e| refused("generate key pair", &e)),
        );
    }
    if has(ck::CKF_GENERATE) {
        note(
            key_gen(m.ckm, &MechParam::None)
                .map(|_| ())
                .or_else(|e| refused("generate key", &e)),
        );
    }
    if has(ck::CKF_DERIVE) {
        let mut point = vec![0x04];
        point.extend_from_slice(&[1; 64]);
        let param = MechParam::Ecdh1 {
            kdf: ck::CKD_NULL,
            shared_data: Vec::new(),
            public_data: point,
        };
        note(
            ecdh_peer_point(m.ckm, &param)
                .map(|_| ())
                .or_else(|e| refused("derive", &e)),
        );
    }
    if has(ck::CKF_DIGEST) && !m.local {
        bad.push(format!(
            "0x{:x}: a digest the module does not compute itself",
            m.ckm
        ));
    }
    let known = ck::CKF_SIGN
        | ck::CKF_VERIFY
        | ck::CKF_ENCRYPT
        | ck::CKF_DECRYPT
        | ck::CKF_WRAP
        | ck::CKF_UNWRAP
        | ck::CKF_GENERATE_KEY_PAIR
        | ck::CKF_GENERATE
        | ck::CKF_DERIVE
        | ck::CKF_DIGEST
        | INFO_ONLY;
    if m.flags & !known != 0 {
        bad.push(format!(
            "0x{:x}: flags 0x{:x} name an operation this test does not check yet",
            m.ckm,
            m.flags & !known
        ));
    }
    if m.flags & !INFO_ONLY == 0 {
        bad.push(format!("0x{:x}: advertised for no operation", m.ckm));
    }
    bad
}

#[test]
fn the_node_accepts_every_mechanism_the_module_advertises() {
    let all = advertised();
    assert!(all.len() > 30, "the module's table: {all:?}");
    let bad: Vec<String> = all.iter().flat_map(check).collect();
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_check_fails_for_a_mechanism_the_node_does_not_know() {
    // The test above would catch a mechanism the node does not implement: CKM_RSA_PKCS
    // advertised for encryption, which the node refuses by design, and an unknown number.
    let rsa_pkcs = advertised()
        .into_iter()
        .find(|m| m.ckm == ck::CKM_RSA_PKCS)
        .expect("CKM_RSA_PKCS is advertised for signing");
    assert!(check(&rsa_pkcs).is_empty());
    let encrypting = Advertised {
        flags: rsa_pkcs.flags | ck::CKF_ENCRYPT,
        ..rsa_pkcs
    };
    assert_eq!(check(&encrypting).len(), 1, "{:?}", check(&encrypting));
    let unknown = Advertised {
        ckm: 0x7fff_fff0,
        ..rsa_pkcs
    };
    assert_eq!(check(&unknown).len(), 1, "{:?}", check(&unknown));
    // And a key type the node does not use for the mechanism.
    let wrong_key = Advertised {
        key_type: Some(ck::CKK_AES),
        ..rsa_pkcs
    };
    assert_eq!(check(&wrong_key).len(), 1, "{:?}", check(&wrong_key));
}

#[test]
fn the_check_fails_for_a_signature_length_the_node_does_not_produce() {
    let find = |ckm| {
        advertised()
            .into_iter()
            .find(|m| m.ckm == ckm)
            .expect("advertised for signing")
    };
    let (rsa, cmac, hmac) = (
        find(ck::CKM_RSA_PKCS),
        find(ck::CKM_AES_CMAC),
        find(ck::CKM_SHA384_HMAC),
    );
    assert_eq!(rsa.signature_len, Some(SignatureLen::Modulus));
    assert_eq!(cmac.signature_len, Some(SignatureLen::Fixed(16)));
    assert_eq!(hmac.signature_len, Some(SignatureLen::Fixed(48)));
    for m in [rsa, cmac, hmac] {
        assert!(check(&m).is_empty(), "{:?}", check(&m));
    }
    // A fixed length for RSA is right for one modulus only; a MAC one byte longer or another
    // hash's length is wrong for every key; a signer without a length is caught too.
    let cases = [
        Advertised {
            signature_len: Some(SignatureLen::Fixed(256)),
            ..rsa
        },
        Advertised {
            signature_len: Some(SignatureLen::Fixed(17)),
            ..cmac
        },
        Advertised {
            signature_len: Some(SignatureLen::Modulus),
            ..cmac
        },
        Advertised {
            signature_len: Some(SignatureLen::Fixed(32)),
            ..hmac
        },
        Advertised {
            signature_len: None,
            ..hmac
        },
    ];
    for m in cases {
        assert_eq!(check(&m).len(), 1, "{m:?}: {:?}", check(&m));
    }
}
