//! `CKM_AES_CMAC` (PKCS#11 3.0 *Mech* §2.10, RFC 4493) through the built module against a real
//! cluster, with real clients:
//! * the `cryptoki` crate (in a child process, see `p11`): an AES-256 key generated on the token
//!   MACs in one part and in many, with the same 16 bytes; `C_Verify` accepts the MAC and
//!   refuses it with a flipped byte; an AES-128 key imported by value (RFC 4493's key) gives
//!   RFC 4493's MACs;
//! * the `openssl` 3 CLI computes the same MAC independently (`openssl mac ... CMAC`);
//! * OpenSC's `pkcs11-tool --list-mechanisms` shows `AES-CMAC`. Its `--sign` cannot be used:
//!   the `pkcs11-tool` of OpenSC 0.23 (Debian 12) looks only for a private key to sign with
//!   ("Private key not found"); secret-key signing came with later releases.

use anyhow::{ensure, Context, Result};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, KeyType, ObjectClass};

use crate::p11::{self, openssl, pkcs11_tool};

/// RFC 4493 §4: the AES-128 key of the examples.
const RFC_KEY: &str = "2b7e151628aed2a6abf7158809cf4f3c";
/// RFC 4493 §4: the 64-byte message of example 4 (examples 1-3 are its first 0, 16, 40 bytes).
const RFC_MSG: &str = concat!(
    "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51",
    "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
);
/// RFC 4493 §4, examples 1-4: (message length, MAC).
const RFC_MACS: [(usize, &str); 4] = [
    (0, "bb1d6929e95937287fa37d129b756746"),
    (16, "070a16b46b4d4144f79bdd9dd04a287c"),
    (40, "dfa66747de9ae63030ca32611497c827"),
    (64, "51f0bebf7e3b9d92fc49741779363cfe"),
];

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_cmac_through_the_module_matches_rfc4493_and_openssl() -> Result<()> {
    p11::on_token("cmac", |token, dir| {
        p11::run_child("pkcs11_cmac::child_cmac", token, dir)?;
        let (_, want) = RFC_MACS[3];
        let by_module = std::fs::read(dir.join("rfc.mac")).context("the child's MAC")?;
        ensure!(
            hex::encode(&by_module) == want,
            "the module's MAC {} is not RFC 4493's {want}",
            hex::encode(&by_module)
        );
        std::fs::write(dir.join("msg"), unhex(RFC_MSG))?;
        let hexkey = format!("hexkey:{RFC_KEY}");
        let args = [
            "mac",
            "-cipher",
            "AES-128-CBC",
            "-macopt",
            &hexkey,
            "-in",
            "msg",
            "CMAC",
        ];
        let by_openssl = openssl(dir, &[], &args)?;
        ensure!(
            by_openssl.trim().eq_ignore_ascii_case(want),
            "openssl mac gives {by_openssl:?}, the module {want}"
        );
        let (mechs, _) = pkcs11_tool(token, dir, &["--list-mechanisms"])?;
        ensure!(
            mechs
                .lines()
                .any(|l| l.contains("AES-CMAC") && l.contains("sign") && l.contains("verify")),
            "--list-mechanisms lacks AES-CMAC for sign and verify:\n{mechs}"
        );
        Ok(())
    })
    .await
}

#[test]
#[ignore = "a child process of aes_cmac_through_the_module_matches_rfc4493_and_openssl"]
fn child_cmac() -> Result<()> {
    let Some(ctx) = p11::child() else {
        return Ok(());
    };
    ctx.initialize()?;
    let s = p11::login_rw(&ctx)?;
    let cmac = Mechanism::AesCMac;
    let msg = b"payment message: MAC it as TR-31 and ISO 9797-1 M5 do";

    // A generated AES-256 key: one part and many give the same MAC, which verifies; a flipped
    // byte does not.
    let key = s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(32.into()),
            Attribute::Sign(true),
            Attribute::Verify(true),
            Attribute::Label(b"cmac-256".to_vec()),
        ],
    )?;
    let mac = s.sign(&cmac, key, msg)?;
    ensure!(mac.len() == 16, "an AES-CMAC of {} bytes", mac.len());
    s.sign_init(&cmac, key)?;
    for part in msg.chunks(7) {
        s.sign_update(part)?;
    }
    ensure!(s.sign_final()? == mac, "multi-part AES-CMAC differs");
    s.verify(&cmac, key, msg, &mac)?;
    s.verify_init(&cmac, key)?;
    for part in msg.chunks(5) {
        s.verify_update(part)?;
    }
    s.verify_final(&mac)?;
    let mut bad = mac.clone();
    bad[3] ^= 0x01;
    match s.verify(&cmac, key, msg, &bad) {
        Err(Error::Pkcs11(RvError::SignatureInvalid, _)) => {}
        other => anyhow::bail!("a flipped byte: expected CKR_SIGNATURE_INVALID, got {other:?}"),
    }
    ensure!(
        s.sign(&cmac, key, b"another message")? != mac,
        "two messages, one MAC"
    );
    // AES-192 keys MAC as well.
    let key192 = s.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Token(false),
            Attribute::ValueLen(24.into()),
            Attribute::Sign(true),
            Attribute::Verify(true),
        ],
    )?;
    let mac192 = s.sign(&cmac, key192, msg)?;
    ensure!(
        mac192.len() == 16 && mac192 != mac,
        "AES-192 CMAC {mac192:02x?}"
    );
    s.verify(&cmac, key192, msg, &mac192)?;

    // RFC 4493's AES-128 key, given by value.
    let rfc = s.create_object(&[
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(false),
        Attribute::Label(b"rfc4493".to_vec()),
        Attribute::Value(unhex(RFC_KEY)),
        Attribute::Sign(true),
        Attribute::Verify(true),
    ])?;
    let rfc_msg = unhex(RFC_MSG);
    for (len, want) in RFC_MACS {
        let got = s.sign(&cmac, rfc, &rfc_msg[..len])?;
        ensure!(
            hex::encode(&got) == want,
            "RFC 4493 over {len} bytes: {} instead of {want}",
            hex::encode(&got)
        );
        s.verify(&cmac, rfc, &rfc_msg[..len], &got)?;
    }
    std::fs::write(ctx.out.join("rfc.mac"), s.sign(&cmac, rfc, &rfc_msg)?)?;
    s.close()?;
    ctx.pkcs11.clone().finalize()?;
    Ok(())
}
