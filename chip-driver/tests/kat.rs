//! Known-answer tests of the software chip against published vectors, and interoperability
//! with independent implementations: RustCrypto `p256` for ECDSA, aws-lc-rs used directly for
//! ECDH and key wrap, RustCrypto `rsa` against the chip's aws-lc-rs PKCS#1 v1.5 signatures, and
//! the `openssl` 3 command line for RSA, SM2 and HMAC-SM3.
//!
//! The OpenSSL tests skip (with a message on stderr) only when no `openssl` binary is on the
//! PATH; CI installs it.

use std::path::Path;
use std::process::Command;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::RsaPublicKeyComponents;
use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
use cloudkey_chip::{
    ChipError, ChipExt, CipherMech, HashAlg, KeyId, KeyRef, KeySpec, KeyTemplate, KeyType,
    KeyUsage, NewKey, PublicKey, SignMech, WrapMech, MAX_RANDOM_LEN, SM2_DEFAULT_ID,
};
use p256::ecdsa::signature::hazmat::PrehashVerifier;

// ---------------------------------------------------------------------------------------------
// helpers

fn h(s: &str) -> Vec<u8> {
    let clean: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    hex::decode(clean).expect("hex")
}

/// A chip with a fresh domain.
fn chip() -> SoftChip {
    let chip = SoftChip::new(SoftChipConfig::default()).expect("chip powers on");
    chip.domain_generate().expect("domain");
    chip
}

fn template(spec: KeySpec, usage: KeyUsage) -> KeyTemplate {
    KeyTemplate {
        id: KeyId::random(),
        spec,
        usage,
    }
}

fn import(chip: &SoftChip, spec: KeySpec, usage: KeyUsage, material: &[u8]) -> (KeyId, NewKey) {
    let new = chip
        .import_key(template(spec, usage), material)
        .expect("import");
    (chip.load_key(&new.blob).expect("load"), new)
}

fn generate(chip: &SoftChip, spec: KeySpec, usage: KeyUsage) -> (KeyId, NewKey) {
    let new = if spec.key_type.is_key_pair() {
        chip.generate_key_pair(template(spec, usage))
    } else {
        chip.generate_secret_key(template(spec, usage))
    }
    .expect("generate");
    (chip.load_key(&new.blob).expect("load"), new)
}

fn point(public: &Option<PublicKey>) -> Vec<u8> {
    match public {
        Some(PublicKey::EcP256(p) | PublicKey::Sm2(p)) => p.clone(),
        other => panic!("not an EC public key: {other:?}"),
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn digest_info_sha256(digest: &[u8]) -> Vec<u8> {
    let mut di = h("3031300d060960864801650304020105000420");
    di.extend_from_slice(digest);
    di
}

// --- a tiny DER writer and reader for the OpenSSL interop ------------------------------------

fn der_len(len: usize) -> Vec<u8> {
    if len < 0x80 {
        vec![len as u8]
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        let mut out = vec![0x80 | bytes.len() as u8];
        out.extend(bytes);
        out
    }
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend(der_len(content.len()));
    out.extend_from_slice(content);
    out
}

/// A non-negative INTEGER from big-endian bytes.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if v.is_empty() || v[0] & 0x80 != 0 {
        v.insert(0, 0);
    }
    der_tlv(0x02, &v)
}

/// Reads one TLV, returning (tag, content, rest).
fn der_read(b: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = b[0];
    let (len, hdr) = if b[1] < 0x80 {
        (b[1] as usize, 2)
    } else {
        let n = (b[1] & 0x7f) as usize;
        (
            b[2..2 + n]
                .iter()
                .fold(0usize, |acc, x| acc << 8 | *x as usize),
            2 + n,
        )
    };
    (tag, &b[hdr..hdr + len], &b[hdr + len..])
}

/// An INTEGER's content as exactly 32 big-endian bytes.
fn uint32(content: &[u8]) -> Vec<u8> {
    let v: Vec<u8> = content.iter().copied().skip_while(|b| *b == 0).collect();
    assert!(v.len() <= 32);
    let mut out = vec![0u8; 32 - v.len()];
    out.extend(v);
    out
}

/// `r || s` (64 bytes) to the DER `SEQUENCE { r INTEGER, s INTEGER }`.
fn sig_to_der(sig: &[u8]) -> Vec<u8> {
    let mut body = der_uint(&sig[..32]);
    body.extend(der_uint(&sig[32..]));
    der_tlv(0x30, &body)
}

fn sig_from_der(der: &[u8]) -> Vec<u8> {
    let (tag, body, _) = der_read(der);
    assert_eq!(tag, 0x30);
    let (_, r, rest) = der_read(body);
    let (_, s, _) = der_read(rest);
    [uint32(r), uint32(s)].concat()
}

/// SM2 ciphertext `C1 || C3 || C2` (raw, as the chip uses) to OpenSSL's DER `SM2Ciphertext`.
fn sm2_ct_to_der(raw: &[u8]) -> Vec<u8> {
    let mut body = der_uint(&raw[1..33]);
    body.extend(der_uint(&raw[33..65]));
    body.extend(der_tlv(0x04, &raw[65..97]));
    body.extend(der_tlv(0x04, &raw[97..]));
    der_tlv(0x30, &body)
}

fn sm2_ct_from_der(der: &[u8]) -> Vec<u8> {
    let (tag, body, _) = der_read(der);
    assert_eq!(tag, 0x30);
    let (_, x, rest) = der_read(body);
    let (_, y, rest) = der_read(rest);
    let (_, c3, rest) = der_read(rest);
    let (_, c2, _) = der_read(rest);
    [vec![0x04], uint32(x), uint32(y), c3.to_vec(), c2.to_vec()].concat()
}

const SM2_OID: &str = "06082a811ccf5501822d";

/// `SubjectPublicKeyInfo` of an SM2 point (id-ecPublicKey with the SM2 curve).
fn sm2_spki(point: &[u8]) -> Vec<u8> {
    let alg = der_tlv(0x30, &[h("06072a8648ce3d0201"), h(SM2_OID)].concat());
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    der_tlv(0x30, &[alg, der_tlv(0x03, &bits)].concat())
}

/// SEC1 `ECPrivateKey` of an SM2 scalar (OpenSSL derives the public key).
fn sm2_sec1(scalar: &[u8]) -> Vec<u8> {
    let body = [
        h("020101"),
        der_tlv(0x04, scalar),
        der_tlv(0xa0, &h(SM2_OID)),
    ]
    .concat();
    der_tlv(0x30, &body)
}

// --- openssl -----------------------------------------------------------------------------------

fn have_openssl(test: &str) -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED {test}: no `openssl` binary on the PATH (CI installs it)");
    }
    ok
}

/// Runs `openssl args...` in `dir`, returning stdout; panics with stderr on failure.
fn openssl(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn openssl_fails(dir: &Path, args: &[&str]) -> bool {
    !Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl")
        .status
        .success()
}

/// Writes a DER public or private key and converts it to PEM with `openssl pkey`.
fn write_pem(dir: &Path, name: &str, der: &[u8], public: bool) {
    let der_name = format!("{name}.der");
    std::fs::write(dir.join(&der_name), der).unwrap();
    let pem_name = format!("{name}.pem");
    let mut args = vec![
        "pkey", "-inform", "DER", "-in", &der_name, "-out", &pem_name,
    ];
    if public {
        args.insert(1, "-pubin");
    }
    openssl(dir, &args);
}

// ---------------------------------------------------------------------------------------------
// SM3, SM4

#[test]
fn sm3_gmt_0004_examples() {
    use sm3::{Digest, Sm3};
    // GM/T 0004-2012, appendix A, examples 1 and 2 (the chip's SM3 backend).
    assert_eq!(
        Sm3::digest(b"abc")[..],
        h("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0")[..]
    );
    assert_eq!(
        Sm3::digest(b"abcd".repeat(16))[..],
        h("debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732")[..]
    );
}

#[test]
fn sm3_through_the_chip_hmac_sm3_matches_openssl() {
    // SM3 through the chip's API: HMAC-SM3 with an imported generic secret, checked against
    // the HMAC-SM3 of OpenSSL for a short and a long (hashed) key.
    if !have_openssl("sm3_through_the_chip_hmac_sm3_matches_openssl") {
        return;
    }
    let chip = chip();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("msg"), b"abc").unwrap();
    for key in [h("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"), vec![0xa5; 100]] {
        let spec = KeySpec::generic_secret(key.len() as u32);
        let (id, _) = import(&chip, spec, KeyUsage::SIGN | KeyUsage::VERIFY, &key);
        let mac = chip
            .sign(id, &SignMech::Hmac(HashAlg::Sm3), b"abc")
            .unwrap();
        let hexkey = format!("hexkey:{}", hex::encode(&key));
        let out = openssl(
            dir.path(),
            &[
                "mac", "-digest", "SM3", "-macopt", &hexkey, "-in", "msg", "HMAC",
            ],
        );
        let expected = String::from_utf8(out).unwrap().trim().to_lowercase();
        assert_eq!(hex::encode(&mac), expected);
        chip.verify(
            &KeyRef::Loaded(id),
            &SignMech::Hmac(HashAlg::Sm3),
            b"abc",
            &mac,
        )
        .unwrap();
    }
}

#[test]
fn sm4_gmt_0002_examples() {
    let chip = chip();
    let key = h("0123456789abcdeffedcba9876543210");
    let (id, _) = import(
        &chip,
        KeySpec::SM4,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        &key,
    );
    // Example 1: one block; CBC with a zero IV and no padding is ECB on one block.
    let mech = CipherMech::Sm4Cbc {
        iv: [0; 16],
        pad: false,
    };
    let ct = chip.encrypt(&KeyRef::Loaded(id), &mech, &key).unwrap();
    assert_eq!(ct, h("681edf34d206965e86b3e94f536e4246"));
    assert_eq!(chip.decrypt(id, &mech, &ct).unwrap(), key);
    // Example 2: 1,000,000 encryptions. With a zero IV, the CBC encryption of P || 0 || 0 ...
    // chains C_i = E(C_{i-1}), so the last of 10^6 blocks is E^1000000(P).
    let mut data = vec![0u8; 16 * 1_000_000];
    data[..16].copy_from_slice(&key);
    let ct = chip.encrypt(&KeyRef::Loaded(id), &mech, &data).unwrap();
    assert_eq!(
        ct[ct.len() - 16..],
        h("595298c7c6fd271f0402f804c33d3f66")[..]
    );
}

#[test]
fn sm4_cbc_padding_round_trips() {
    let chip = chip();
    let (id, _) = generate(&chip, KeySpec::SM4, KeyUsage::ENCRYPT | KeyUsage::DECRYPT);
    for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 100] {
        let data: Vec<u8> = (0..len).map(|i| i as u8).collect();
        let mech = CipherMech::Sm4Cbc {
            iv: [7; 16],
            pad: true,
        };
        let ct = chip.encrypt(&KeyRef::Loaded(id), &mech, &data).unwrap();
        assert_eq!(ct.len(), (len / 16 + 1) * 16);
        assert_eq!(chip.decrypt(id, &mech, &ct).unwrap(), data);
    }
    let no_pad = CipherMech::Sm4Cbc {
        iv: [7; 16],
        pad: false,
    };
    assert!(matches!(
        chip.encrypt(&KeyRef::Loaded(id), &no_pad, &[0; 15]),
        Err(ChipError::DataLenRange(_))
    ));
    // A last block that does not decrypt to valid PKCS#7 padding.
    let pad = CipherMech::Sm4Cbc {
        iv: [7; 16],
        pad: true,
    };
    let garbage = chip
        .encrypt(&KeyRef::Loaded(id), &no_pad, &[0x11; 32])
        .unwrap();
    assert_eq!(
        chip.decrypt(id, &pad, &garbage),
        Err(ChipError::EncryptedDataInvalid)
    );
}

// ---------------------------------------------------------------------------------------------
// SM2

const SM2_D: &str = "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8";
const SM2_PUB: &str = "04 09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020
                          CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13";
const SM2_R_S: &str = "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3
                       B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA";
/// e = SM3(Z || "message digest") of the example.
const SM2_E: &str = "F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640";

#[test]
fn sm2_gmt_0003_signature_example() {
    // GM/T 0003.5-2012 signature example on the recommended curve: d, ID "1234567812345678",
    // M = "message digest", published public key and (r, s).
    let chip = chip();
    let (id, new) = import(
        &chip,
        KeySpec::SM2,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        &h(SM2_D),
    );
    assert_eq!(new.public, Some(PublicKey::Sm2(h(SM2_PUB))));
    assert_eq!(chip.public_key(id).unwrap(), PublicKey::Sm2(h(SM2_PUB)));

    let mech = SignMech::Sm2 {
        user_id: SM2_DEFAULT_ID.to_vec(),
    };
    let published = h(SM2_R_S);
    let public = KeyRef::Public(PublicKey::Sm2(h(SM2_PUB)));
    chip.verify(&KeyRef::Loaded(id), &mech, b"message digest", &published)
        .unwrap();
    chip.verify(&public, &mech, b"message digest", &published)
        .unwrap();
    chip.verify(&public, &SignMech::Sm2Digest, &h(SM2_E), &published)
        .unwrap();
    assert_eq!(
        chip.verify(&public, &mech, b"message digesT", &published),
        Err(ChipError::SignatureInvalid)
    );
    let other_id = SignMech::Sm2 {
        user_id: b"ALICE123@YAHOO.COM".to_vec(),
    };
    assert_eq!(
        chip.verify(&public, &other_id, b"message digest", &published),
        Err(ChipError::SignatureInvalid)
    );

    // The chip's own signatures (random k) verify, by message and by digest.
    let sig = chip.sign(id, &mech, b"message digest").unwrap();
    assert_eq!(sig.len(), 64);
    assert_ne!(sig, published, "k is random");
    chip.verify(&public, &mech, b"message digest", &sig)
        .unwrap();
    chip.verify(&public, &SignMech::Sm2Digest, &h(SM2_E), &sig)
        .unwrap();
    let sig = chip.sign(id, &SignMech::Sm2Digest, &h(SM2_E)).unwrap();
    chip.verify(&public, &mech, b"message digest", &sig)
        .unwrap();
    // A user id that is not UTF-8 works too.
    let binary_id = SignMech::Sm2 {
        user_id: vec![0xff, 0x00, 0x80],
    };
    let sig = chip.sign(id, &binary_id, b"m").unwrap();
    chip.verify(&public, &binary_id, b"m", &sig).unwrap();
    assert!(chip.verify(&public, &mech, b"m", &sig).is_err());
    assert!(matches!(
        chip.sign(id, &SignMech::Sm2Digest, &[0; 31]),
        Err(ChipError::DataLenRange(_))
    ));
}

#[test]
fn sm2_signatures_interoperate_with_openssl() {
    if !have_openssl("sm2_signatures_interoperate_with_openssl") {
        return;
    }
    let chip = chip();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (id, new) = generate(&chip, KeySpec::SM2, KeyUsage::SIGN | KeyUsage::VERIFY);
    let public = point(&new.public);
    write_pem(d, "sm2pub", &sm2_spki(&public), true);
    std::fs::write(d.join("msg"), b"cloudkey SM2 interop").unwrap();

    // The chip signs with the standard id; OpenSSL verifies with that distid.
    let mech = SignMech::Sm2 {
        user_id: SM2_DEFAULT_ID.to_vec(),
    };
    let sig = chip.sign(id, &mech, b"cloudkey SM2 interop").unwrap();
    std::fs::write(d.join("sig.der"), sig_to_der(&sig)).unwrap();
    let verify = [
        "pkeyutl",
        "-verify",
        "-pubin",
        "-inkey",
        "sm2pub.pem",
        "-rawin",
        "-in",
        "msg",
        "-sigfile",
        "sig.der",
        "-digest",
        "sm3",
        "-pkeyopt",
        "distid:1234567812345678",
    ];
    openssl(d, &verify);
    // A corrupted signature is refused by OpenSSL too.
    let mut bad = sig.clone();
    bad[40] ^= 1;
    std::fs::write(d.join("bad.der"), sig_to_der(&bad)).unwrap();
    let mut verify_bad = verify;
    verify_bad[9] = "bad.der";
    assert!(openssl_fails(d, &verify_bad));

    // OpenSSL 3.0 without `-pkeyopt distid:` uses an EMPTY distinguishing id (not
    // "1234567812345678"); the chip signs with an empty user id to match.
    let empty = SignMech::Sm2 {
        user_id: Vec::new(),
    };
    let sig = chip.sign(id, &empty, b"cloudkey SM2 interop").unwrap();
    std::fs::write(d.join("sig0.der"), sig_to_der(&sig)).unwrap();
    openssl(
        d,
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "sm2pub.pem",
            "-rawin",
            "-in",
            "msg",
            "-sigfile",
            "sig0.der",
            "-digest",
            "sm3",
        ],
    );

    // OpenSSL signs with a key imported into the chip; the chip verifies.
    let scalar = h(SM2_D);
    write_pem(d, "sm2key", &sm2_sec1(&scalar), false);
    openssl(
        d,
        &[
            "pkeyutl",
            "-sign",
            "-inkey",
            "sm2key.pem",
            "-rawin",
            "-in",
            "msg",
            "-out",
            "osig.der",
            "-digest",
            "sm3",
            "-pkeyopt",
            "distid:1234567812345678",
        ],
    );
    let osig = sig_from_der(&std::fs::read(d.join("osig.der")).unwrap());
    let (imported, _) = import(&chip, KeySpec::SM2, KeyUsage::VERIFY, &scalar);
    chip.verify(
        &KeyRef::Loaded(imported),
        &mech,
        b"cloudkey SM2 interop",
        &osig,
    )
    .unwrap();
    // OpenSSL derives the same public key from the scalar as the chip.
    let opub = openssl(
        d,
        &["pkey", "-in", "sm2key.pem", "-pubout", "-outform", "DER"],
    );
    assert_eq!(opub, sm2_spki(&h(SM2_PUB)));
}

#[test]
fn sm2_encryption_round_trips_and_interoperates_with_openssl() {
    let chip = chip();
    let usage = KeyUsage::ENCRYPT | KeyUsage::DECRYPT;
    let (id, new) = import(&chip, KeySpec::SM2, usage, &h(SM2_D));
    let public = KeyRef::Public(new.public.clone().unwrap());
    for msg in [&b"x"[..], b"cloudkey", &[0x5a; 1000]] {
        for key in [&public, &KeyRef::Loaded(id)] {
            let ct = chip.encrypt(key, &CipherMech::Sm2, msg).unwrap();
            assert_eq!(ct.len(), 65 + 32 + msg.len());
            assert_eq!(ct[0], 0x04);
            assert_eq!(chip.decrypt(id, &CipherMech::Sm2, &ct).unwrap(), msg);
        }
    }
    // Any altered byte (C1, C3 or C2) is refused.
    let ct = chip.encrypt(&public, &CipherMech::Sm2, b"tamper").unwrap();
    for i in [1, 64, 65, 96, 97, ct.len() - 1] {
        let mut bad = ct.clone();
        bad[i] ^= 0x01;
        assert_eq!(
            chip.decrypt(id, &CipherMech::Sm2, &bad),
            Err(ChipError::EncryptedDataInvalid)
        );
    }
    assert_eq!(
        chip.decrypt(id, &CipherMech::Sm2, &ct[..97]),
        Err(ChipError::EncryptedDataInvalid)
    );

    if !have_openssl("sm2_encryption_round_trips_and_interoperates_with_openssl (OpenSSL part)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pem(d, "sm2pub", &sm2_spki(&h(SM2_PUB)), true);
    write_pem(d, "sm2key", &sm2_sec1(&h(SM2_D)), false);
    let msg = b"encrypted by OpenSSL, decrypted by the chip";
    std::fs::write(d.join("pt"), msg).unwrap();
    openssl(
        d,
        &[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            "sm2pub.pem",
            "-in",
            "pt",
            "-out",
            "ct.der",
        ],
    );
    let raw = sm2_ct_from_der(&std::fs::read(d.join("ct.der")).unwrap());
    assert_eq!(chip.decrypt(id, &CipherMech::Sm2, &raw).unwrap(), msg);

    let msg = b"encrypted by the chip, decrypted by OpenSSL";
    let ct = chip.encrypt(&public, &CipherMech::Sm2, msg).unwrap();
    std::fs::write(d.join("chip.der"), sm2_ct_to_der(&ct)).unwrap();
    let out = openssl(
        d,
        &[
            "pkeyutl",
            "-decrypt",
            "-inkey",
            "sm2key.pem",
            "-in",
            "chip.der",
        ],
    );
    assert_eq!(out, msg);
}

#[test]
fn sm2_key_wrap_and_ecdh() {
    let a = chip();
    let b = chip();
    // Wrap an AES key under an SM2 public key (e.g. a terminal's), unwrap with the private key.
    let (kek, kek_new) = generate(&a, KeySpec::SM2, KeyUsage::WRAP | KeyUsage::UNWRAP);
    let (aes, _) = generate(
        &a,
        KeySpec::AES_256,
        KeyUsage::ENCRYPT | KeyUsage::EXTRACTABLE,
    );
    let public = KeyRef::Public(kek_new.public.unwrap());
    let wrapped = a.wrap_key(&public, &WrapMech::Sm2, aes).unwrap();
    assert_eq!(wrapped.len(), 65 + 32 + 32);
    let wrapped2 = a
        .wrap_key(&KeyRef::Loaded(kek), &WrapMech::Sm2, aes)
        .unwrap();
    let back = a
        .unwrap_key(
            kek,
            &WrapMech::Sm2,
            &wrapped2,
            template(KeySpec::AES_256, KeyUsage::DECRYPT),
        )
        .unwrap();
    let back = a.load_key(&back.blob).unwrap();
    let mech = CipherMech::AesGcm {
        iv: vec![1; 12],
        aad: vec![],
        tag_bits: 128,
    };
    let ct = a.encrypt(&KeyRef::Loaded(aes), &mech, b"same key").unwrap();
    assert_eq!(a.decrypt(back, &mech, &ct).unwrap(), b"same key");
    let mut bad = wrapped.clone();
    bad[100] ^= 1;
    assert_eq!(
        a.unwrap_key(
            kek,
            &WrapMech::Sm2,
            &bad,
            template(KeySpec::AES_256, KeyUsage::DECRYPT)
        ),
        Err(ChipError::WrappedKeyInvalid)
    );

    // SM2 ECDH between two chips gives the same secret.
    let (ka, na) = generate(&a, KeySpec::SM2, KeyUsage::DERIVE);
    let (kb, nb) = generate(&b, KeySpec::SM2, KeyUsage::DERIVE);
    let usage = KeyUsage::ENCRYPT | KeyUsage::DECRYPT;
    let da = a
        .derive_ecdh(ka, &point(&nb.public), template(KeySpec::SM4, usage))
        .unwrap();
    let db = b
        .derive_ecdh(kb, &point(&na.public), template(KeySpec::SM4, usage))
        .unwrap();
    let da = a.load_key(&da.blob).unwrap();
    let db = b.load_key(&db.blob).unwrap();
    let mech = CipherMech::Sm4Cbc {
        iv: [3; 16],
        pad: true,
    };
    let ct = a.encrypt(&KeyRef::Loaded(da), &mech, b"agreed").unwrap();
    assert_eq!(b.decrypt(db, &mech, &ct).unwrap(), b"agreed");
    let mut off_curve = point(&nb.public);
    off_curve[64] ^= 1;
    assert!(matches!(
        a.derive_ecdh(ka, &off_curve, template(KeySpec::SM4, usage)),
        Err(ChipError::DataInvalid(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// ECDSA P-256

#[test]
fn ecdsa_p256_signatures_verify_with_rustcrypto_p256() {
    let chip = chip();
    let (id, new) = generate(&chip, KeySpec::EC_P256, KeyUsage::SIGN | KeyUsage::VERIFY);
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point(&new.public)).unwrap();
    for i in 0..20u8 {
        let digest = sha256(&[i; 40]);
        let sig = chip.sign(id, &SignMech::Ecdsa, &digest).unwrap();
        assert_eq!(sig.len(), 64);
        let sig = p256::ecdsa::Signature::from_slice(&sig).unwrap();
        vk.verify_prehash(&digest, &sig)
            .expect("p256 verifies the chip's signature");
    }
    // Digests longer than 32 bytes: ECDSA uses the leftmost 256 bits (p256 does the same).
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, b"long")
        .as_ref()
        .to_vec();
    let sig = chip.sign(id, &SignMech::Ecdsa, &digest).unwrap();
    vk.verify_prehash(&digest, &p256::ecdsa::Signature::from_slice(&sig).unwrap())
        .unwrap();
    chip.verify(&KeyRef::Loaded(id), &SignMech::Ecdsa, &digest[..32], &sig)
        .unwrap();
    // Shorter digests are the same integer, left-padded.
    let short = [0x42u8; 20];
    let sig = chip.sign(id, &SignMech::Ecdsa, &short).unwrap();
    let mut padded = [0u8; 32];
    padded[12..].copy_from_slice(&short);
    chip.verify(&KeyRef::Loaded(id), &SignMech::Ecdsa, &padded, &sig)
        .unwrap();
    assert!(matches!(
        chip.sign(id, &SignMech::Ecdsa, &[]),
        Err(ChipError::DataLenRange(_))
    ));
}

#[test]
fn ecdsa_p256_rfc6979_vectors() {
    // RFC 6979 A.2.5: the private key, and the deterministic signatures of "sample" (SHA-256)
    // and "test" (SHA-384, truncated to 256 bits) as published / in RustCrypto's test suite.
    let chip = chip();
    let x = h("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721");
    let (id, new) = import(
        &chip,
        KeySpec::EC_P256,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        &x,
    );
    assert_eq!(
        point(&new.public),
        h(
            "04 60fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb6
              7903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299"
        )
    );
    let public = KeyRef::Public(new.public.clone().unwrap());
    let sample = sha256(b"sample");
    let sig = h(
        "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716
                 f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8",
    );
    chip.verify(&public, &SignMech::Ecdsa, &sample, &sig)
        .unwrap();
    chip.verify(&KeyRef::Loaded(id), &SignMech::Ecdsa, &sample, &sig)
        .unwrap();
    let test384 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA384, b"test");
    let sig384 = h(
        "ebde85f1539af67e70dd7a8a6afeeb332aa7f08f01ebb6ab6e04e2a62d2fef75
                    871af45800daddf55619b005a601a7a84f544260f1d2625b2ef5aa7a4f4dd76f",
    );
    chip.verify(&public, &SignMech::Ecdsa, test384.as_ref(), &sig384)
        .unwrap();
    let mut bad = sig.clone();
    bad[63] ^= 1;
    assert_eq!(
        chip.verify(&public, &SignMech::Ecdsa, &sample, &bad),
        Err(ChipError::SignatureInvalid)
    );
    // The chip's own signature with the imported key verifies with p256.
    let mine = chip.sign(id, &SignMech::Ecdsa, &sample).unwrap();
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point(&new.public)).unwrap();
    vk.verify_prehash(&sample, &p256::ecdsa::Signature::from_slice(&mine).unwrap())
        .unwrap();
    // Scalars out of range are refused.
    let n = h("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551");
    for bad in [vec![0u8; 32], n, vec![1u8; 31]] {
        assert!(matches!(
            chip.import_key(template(KeySpec::EC_P256, KeyUsage::SIGN), &bad),
            Err(ChipError::KeyInvalid(_))
        ));
    }
}

#[test]
fn ecdh_p256_two_chips_and_aws_lc_agree() {
    use aws_lc_rs::agreement;
    let a = chip();
    let b = chip();
    let (ka, na) = generate(&a, KeySpec::EC_P256, KeyUsage::DERIVE);
    let (kb, nb) = generate(&b, KeySpec::EC_P256, KeyUsage::DERIVE);
    let usage = KeyUsage::ENCRYPT | KeyUsage::DECRYPT;
    let da = a
        .derive_ecdh(ka, &point(&nb.public), template(KeySpec::AES_256, usage))
        .unwrap();
    let db = b
        .derive_ecdh(kb, &point(&na.public), template(KeySpec::AES_256, usage))
        .unwrap();
    // Derived keys are not LOCAL (PKCS#11).
    assert!(!da.blob.header().unwrap().usage.contains(KeyUsage::LOCAL));
    let da = a.load_key(&da.blob).unwrap();
    let db = b.load_key(&db.blob).unwrap();
    let mech = CipherMech::AesGcm {
        iv: vec![9; 12],
        aad: b"ecdh".to_vec(),
        tag_bits: 128,
    };
    let ct = a.encrypt(&KeyRef::Loaded(da), &mech, b"agreed").unwrap();
    assert_eq!(b.decrypt(db, &mech, &ct).unwrap(), b"agreed");

    // Against aws-lc-rs directly: the derived secret (wrapped out under a known KEK) is the
    // x-coordinate of the shared point, truncated to the key length (leftmost bytes).
    let peer = agreement::PrivateKey::generate(&agreement::ECDH_P256).unwrap();
    let peer_public = peer.compute_public_key().unwrap().as_ref().to_vec();
    let expected = agreement::agree(
        &peer,
        agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, point(&na.public)),
        (),
        |z| Ok(z.to_vec()),
    )
    .unwrap();
    let kek_value = [0x11u8; 16];
    let (kek, _) = import(
        &a,
        KeySpec {
            key_type: KeyType::Aes,
            bits: 128,
        },
        KeyUsage::WRAP,
        &kek_value,
    );
    for bytes in [32u32, 20] {
        let t = template(
            KeySpec::generic_secret(bytes),
            KeyUsage::SIGN | KeyUsage::EXTRACTABLE,
        );
        let derived = a.derive_ecdh(ka, &peer_public, t).unwrap();
        let derived = a.load_key(&derived.blob).unwrap();
        let wrapped = a
            .wrap_key(&KeyRef::Loaded(kek), &WrapMech::AesKeyWrapPad, derived)
            .unwrap();
        let mut out = vec![0u8; wrapped.len()];
        use aws_lc_rs::key_wrap::{KeyEncryptionKey, KeyWrapPadded, AES_128};
        let secret = KeyEncryptionKey::new(&AES_128, &kek_value)
            .unwrap()
            .unwrap_with_padding(&wrapped, &mut out)
            .unwrap();
        assert_eq!(secret, &expected[..bytes as usize]);
    }
    let mut off_curve = point(&nb.public);
    off_curve[64] ^= 1;
    assert!(matches!(
        a.derive_ecdh(ka, &off_curve, template(KeySpec::AES_256, usage)),
        Err(ChipError::DataInvalid(_))
    ));
    assert!(matches!(
        a.derive_ecdh(
            ka,
            &point(&nb.public),
            template(KeySpec::generic_secret(40), usage)
        ),
        Err(ChipError::KeySizeRange(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// RSA

#[test]
fn rsa_2048_pkcs1_and_pss_signatures_verify_with_openssl() {
    let chip = chip();
    let (id, new) = generate(&chip, KeySpec::RSA_2048, KeyUsage::SIGN | KeyUsage::VERIFY);
    let Some(PublicKey::Rsa { n, e }) = new.public.clone() else {
        panic!("RSA public key")
    };
    assert_eq!(n.len(), 256);
    assert_eq!(n[0] & 0x80, 0x80);
    assert_eq!(e, vec![1, 0, 1]);
    let msg = b"cloudkey RSA interop";
    let digest = sha256(msg);
    let pkcs1 = chip
        .sign(id, &SignMech::RsaPkcs1, &digest_info_sha256(&digest))
        .unwrap();
    let pss_mech = SignMech::RsaPss {
        hash: HashAlg::Sha256,
    };
    let pss = chip.sign(id, &pss_mech, &digest).unwrap();
    assert_eq!(pkcs1.len(), 256);
    assert_eq!(pss.len(), 256);
    // The chip verifies both, with the loaded key and with the bare public key.
    let public = KeyRef::Public(new.public.clone().unwrap());
    chip.verify(
        &public,
        &SignMech::RsaPkcs1,
        &digest_info_sha256(&digest),
        &pkcs1,
    )
    .unwrap();
    chip.verify(&KeyRef::Loaded(id), &pss_mech, &digest, &pss)
        .unwrap();
    assert_eq!(
        chip.verify(&public, &pss_mech, &sha256(b"other"), &pss),
        Err(ChipError::SignatureInvalid)
    );
    // SHA-384/512 DigestInfos are signed too (any other input: see
    // `rsa_pkcs1_signs_any_input_like_openssl`).
    for (prefix, len) in [
        ("3041300d060960864801650304020205000430", 48),
        ("3051300d060960864801650304020305000440", 64),
    ] {
        let mut di = h(prefix);
        di.extend(vec![0x5a; len]);
        let sig = chip.sign(id, &SignMech::RsaPkcs1, &di).unwrap();
        chip.verify(&public, &SignMech::RsaPkcs1, &di, &sig)
            .unwrap();
    }
    assert!(matches!(
        chip.sign(id, &pss_mech, &digest[..31]),
        Err(ChipError::DataLenRange(_))
    ));

    if !have_openssl("rsa_2048_pkcs1_and_pss_signatures_verify_with_openssl (OpenSSL part)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let spki = RsaPublicKeyComponents {
        n: &n[..],
        e: &e[..],
    }
    .as_der()
    .unwrap();
    write_pem(d, "rsapub", spki.as_ref(), true);
    std::fs::write(d.join("msg"), msg).unwrap();
    std::fs::write(d.join("pkcs1.sig"), &pkcs1).unwrap();
    std::fs::write(d.join("pss.sig"), &pss).unwrap();
    let out = openssl(
        d,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "rsapub.pem",
            "-signature",
            "pkcs1.sig",
            "msg",
        ],
    );
    assert!(String::from_utf8_lossy(&out).contains("Verified OK"));
    let out = openssl(
        d,
        &[
            "dgst",
            "-sha256",
            "-sigopt",
            "rsa_padding_mode:pss",
            "-sigopt",
            "rsa_pss_saltlen:32",
            "-sigopt",
            "rsa_mgf1_md:sha256",
            "-verify",
            "rsapub.pem",
            "-signature",
            "pss.sig",
            "msg",
        ],
    );
    assert!(String::from_utf8_lossy(&out).contains("Verified OK"));
    // And OpenSSL refuses the PSS signature as PKCS#1 v1.5 (the padding really is PSS).
    assert!(openssl_fails(
        d,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "rsapub.pem",
            "-signature",
            "pss.sig",
            "msg"
        ],
    ));
}

/// PKCS#11 `CKM_RSA_PKCS` signs any input of at most k - 11 bytes with EMSA-PKCS1-v1_5 type-1
/// padding: DigestInfos of any hash (SHA-1 here), the TLS 1.0/1.1 `MD5 || SHA-1` value,
/// arbitrary data. The chip's signatures are checked against OpenSSL's (same bytes: PKCS#1 v1.5
/// is deterministic) and verified by `openssl pkeyutl -verify` as raw PKCS#1 v1.5.
#[test]
fn rsa_pkcs1_signs_any_input_like_openssl() {
    use rsa::pkcs8::DecodePrivateKey as _;

    // An RSA key made outside the chip, so that OpenSSL and the `rsa` crate can sign too.
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = pair.as_der().unwrap();
    let chip = chip();
    let (id, new) = import(
        &chip,
        KeySpec::RSA_2048,
        KeyUsage::SIGN | KeyUsage::VERIFY,
        pkcs8.as_ref(),
    );
    let Some(PublicKey::Rsa { n, e }) = new.public.clone() else {
        panic!("RSA public key")
    };
    assert_eq!(n.len(), 256);
    let public = KeyRef::Public(new.public.clone().unwrap());
    let loaded = KeyRef::Loaded(id);

    let msg = b"abc";
    let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, msg);
    let mut sha1_info = h("3021300906052b0e03021a05000414");
    sha1_info.extend_from_slice(sha1.as_ref());
    // TLS 1.0/1.1: MD5("abc") || SHA-1("abc") (RFC 1321 A.5, FIPS 180 examples).
    let md5_sha1 = h("900150983cd24fb0d6963f7d28e17f72 a9993e364706816aba3e25717850c26c9cd0d89d");
    assert_eq!(&md5_sha1[16..], sha1.as_ref());
    let arbitrary: Vec<u8> = (0..100u8).map(|i| i.wrapping_mul(37) ^ 0x5c).collect();
    let longest = vec![0xa5; 256 - 11];
    let inputs: [(&str, &[u8]); 5] = [
        ("sha1_info", &sha1_info),
        ("md5_sha1", &md5_sha1),
        ("arbitrary", &arbitrary),
        ("longest", &longest),
        ("empty", &[]),
    ];

    let mut sigs = Vec::new();
    for (name, data) in inputs {
        let sig = chip.sign(id, &SignMech::RsaPkcs1, data).unwrap();
        assert_eq!(sig.len(), 256, "{name}");
        // Blinded, yet deterministic.
        assert_eq!(
            chip.sign(id, &SignMech::RsaPkcs1, data).unwrap(),
            sig,
            "{name}"
        );
        chip.verify(&public, &SignMech::RsaPkcs1, data, &sig)
            .unwrap();
        chip.verify(&loaded, &SignMech::RsaPkcs1, data, &sig)
            .unwrap();
        let mut other = data.to_vec();
        match other.first_mut() {
            Some(b) => *b ^= 1,
            None => other.push(0),
        }
        assert_eq!(
            chip.verify(&public, &SignMech::RsaPkcs1, &other, &sig),
            Err(ChipError::SignatureInvalid),
            "{name}"
        );
        let mut bad = sig.clone();
        bad[100] ^= 1;
        assert_eq!(
            chip.verify(&public, &SignMech::RsaPkcs1, data, &bad),
            Err(ChipError::SignatureInvalid),
            "{name}"
        );
        assert_eq!(
            chip.verify(&public, &SignMech::RsaPkcs1, data, &sig[1..]),
            Err(ChipError::SignatureInvalid),
            "{name}"
        );
        sigs.push((name, data, sig));
    }
    // The SHA-1 DigestInfo signature is the ordinary SHA-1 PKCS#1 v1.5 signature of the message.
    RsaPublicKeyComponents {
        n: &n[..],
        e: &e[..],
    }
    .verify(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        msg,
        &sigs[0].2,
    )
    .expect("aws-lc-rs verifies the SHA-1 signature");

    // The two implementations agree: a SHA-256 DigestInfo is signed by aws-lc-rs inside the chip;
    // the RustCrypto `rsa` crate (the chip's path for all other input), given the same input
    // unprefixed, yields the same bytes. And with SHA-384/512 DigestInfos.
    let rc = rsa::RsaPrivateKey::from_pkcs8_der(pkcs8.as_ref()).unwrap();
    for (prefix, alg) in [
        (
            "3031300d060960864801650304020105000420",
            &aws_lc_rs::digest::SHA256,
        ),
        (
            "3041300d060960864801650304020205000430",
            &aws_lc_rs::digest::SHA384,
        ),
        (
            "3051300d060960864801650304020305000440",
            &aws_lc_rs::digest::SHA512,
        ),
    ] {
        let mut di = h(prefix);
        di.extend_from_slice(aws_lc_rs::digest::digest(alg, msg).as_ref());
        let chip_sig = chip.sign(id, &SignMech::RsaPkcs1, &di).unwrap();
        let rc_sig = rc.sign(rsa::Pkcs1v15Sign::new_unprefixed(), &di).unwrap();
        assert_eq!(chip_sig, rc_sig, "aws-lc-rs and rsa agree on {alg:?}");
    }
    // Every signature of the first loop also verifies with the `rsa` crate used directly.
    let rc_public = rsa::RsaPublicKey::from(&rc);
    for (name, data, sig) in &sigs {
        rc_public
            .verify(rsa::Pkcs1v15Sign::new_unprefixed(), data, sig)
            .unwrap_or_else(|err| panic!("{name}: {err}"));
    }

    // Longer than k - 11: DATA_LEN_RANGE, signing and verifying.
    let too_long = vec![0xa5; 256 - 10];
    assert!(matches!(
        chip.sign(id, &SignMech::RsaPkcs1, &too_long),
        Err(ChipError::DataLenRange(_))
    ));
    assert!(matches!(
        chip.verify(&public, &SignMech::RsaPkcs1, &too_long, &sigs[0].2),
        Err(ChipError::DataLenRange(_))
    ));

    if !have_openssl("rsa_pkcs1_signs_any_input_like_openssl (OpenSSL part)") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pem(d, "rsakey", pkcs8.as_ref(), false);
    let spki = RsaPublicKeyComponents {
        n: &n[..],
        e: &e[..],
    }
    .as_der()
    .unwrap();
    write_pem(d, "rsapub", spki.as_ref(), true);
    for (name, data, sig) in &sigs {
        if data.is_empty() {
            continue; // `openssl pkeyutl` reads no empty input
        }
        let data_file = format!("{name}.in");
        let sig_file = format!("{name}.sig");
        std::fs::write(d.join(&data_file), data).unwrap();
        std::fs::write(d.join(&sig_file), sig).unwrap();
        // No digest: raw PKCS#1 v1.5 type 1 over the input as it is. (`pkeyutl -sign` and
        // `-verify` take at most 64 bytes of input, "too long to be a hash", so the longer inputs
        // are checked by `-verifyrecover` alone: it checks the type-1 padding and returns what
        // was padded, and since RSA is a permutation that also pins the signature's bytes.)
        if data.len() <= 64 {
            let theirs = openssl(
                d,
                &[
                    "pkeyutl",
                    "-sign",
                    "-inkey",
                    "rsakey.pem",
                    "-in",
                    &data_file,
                ],
            );
            assert_eq!(&theirs, sig, "{name}: the chip and OpenSSL sign alike");
            let out = openssl(
                d,
                &[
                    "pkeyutl",
                    "-verify",
                    "-pubin",
                    "-inkey",
                    "rsapub.pem",
                    "-in",
                    &data_file,
                    "-sigfile",
                    &sig_file,
                ],
            );
            assert!(
                String::from_utf8_lossy(&out).contains("Signature Verified Successfully"),
                "{name}"
            );
        }
        let recovered = openssl(
            d,
            &[
                "pkeyutl",
                "-verifyrecover",
                "-pubin",
                "-inkey",
                "rsapub.pem",
                "-in",
                &sig_file,
            ],
        );
        assert_eq!(&recovered, data, "{name}: the padded input is the input");
    }
    // The SHA-1 DigestInfo signature, as OpenSSL's SHA-1 signatures see it: over the digest with
    // `-pkeyopt digest:sha1`, and over the message with `dgst -sha1`.
    std::fs::write(d.join("sha1.bin"), sha1.as_ref()).unwrap();
    std::fs::write(d.join("msg"), msg).unwrap();
    let out = openssl(
        d,
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "rsapub.pem",
            "-pkeyopt",
            "digest:sha1",
            "-in",
            "sha1.bin",
            "-sigfile",
            "sha1_info.sig",
        ],
    );
    assert!(String::from_utf8_lossy(&out).contains("Signature Verified Successfully"));
    let out = openssl(
        d,
        &[
            "dgst",
            "-sha1",
            "-verify",
            "rsapub.pem",
            "-signature",
            "sha1_info.sig",
            "msg",
        ],
    );
    assert!(String::from_utf8_lossy(&out).contains("Verified OK"));
    // OpenSSL refuses a signature over other data.
    assert!(openssl_fails(
        d,
        &[
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            "rsapub.pem",
            "-in",
            "sha1_info.in",
            "-sigfile",
            "md5_sha1.sig",
        ],
    ));
}

#[test]
fn rsa_oaep_encryption_and_key_wrap_round_trip() {
    let chip = chip();
    let usage = KeyUsage::ENCRYPT | KeyUsage::DECRYPT | KeyUsage::WRAP | KeyUsage::UNWRAP;
    let (rsa, new) = generate(&chip, KeySpec::RSA_2048, usage);
    let public = KeyRef::Public(new.public.clone().unwrap());
    for hash in [
        HashAlg::Sha1,
        HashAlg::Sha256,
        HashAlg::Sha384,
        HashAlg::Sha512,
    ] {
        let mech = CipherMech::RsaOaep {
            hash,
            label: b"label".to_vec(),
        };
        let ct = chip.encrypt(&public, &mech, b"oaep message").unwrap();
        assert_eq!(ct.len(), 256);
        assert_eq!(chip.decrypt(rsa, &mech, &ct).unwrap(), b"oaep message");
        let other_label = CipherMech::RsaOaep {
            hash,
            label: Vec::new(),
        };
        assert_eq!(
            chip.decrypt(rsa, &other_label, &ct),
            Err(ChipError::EncryptedDataInvalid)
        );
    }
    let mech = CipherMech::RsaOaep {
        hash: HashAlg::Sha256,
        label: Vec::new(),
    };
    assert!(matches!(
        chip.encrypt(&public, &mech, &[0u8; 256 - 2 * 32 - 1]),
        Err(ChipError::DataLenRange(_))
    ));

    // Wrap an AES-256 key with RSA-OAEP (public and loaded wrapping key), unwrap it.
    let target = KeyUsage::ENCRYPT | KeyUsage::DECRYPT | KeyUsage::EXTRACTABLE;
    let (aes, _) = generate(&chip, KeySpec::AES_256, target);
    let wrap = WrapMech::RsaOaep {
        hash: HashAlg::Sha256,
        label: b"kek".to_vec(),
    };
    let w1 = chip.wrap_key(&public, &wrap, aes).unwrap();
    let w2 = chip.wrap_key(&KeyRef::Loaded(rsa), &wrap, aes).unwrap();
    assert_ne!(w1, w2, "OAEP is randomised");
    let gcm = CipherMech::AesGcm {
        iv: vec![5; 12],
        aad: vec![],
        tag_bits: 128,
    };
    let ct = chip
        .encrypt(&KeyRef::Loaded(aes), &gcm, b"wrapped key works")
        .unwrap();
    for w in [w1, w2] {
        let t = template(KeySpec::AES_256, KeyUsage::DECRYPT);
        let back = chip.unwrap_key(rsa, &wrap, &w, t).unwrap();
        let usage = back.blob.header().unwrap().usage;
        assert!(!usage.intersects(
            KeyUsage::LOCAL | KeyUsage::ALWAYS_SENSITIVE | KeyUsage::NEVER_EXTRACTABLE
        ));
        let back = chip.load_key(&back.blob).unwrap();
        assert_eq!(chip.decrypt(back, &gcm, &ct).unwrap(), b"wrapped key works");
        let mut bad = w.clone();
        bad[7] ^= 1;
        assert_eq!(
            chip.unwrap_key(rsa, &wrap, &bad, t),
            Err(ChipError::WrappedKeyInvalid)
        );
        // Unwrapped material that does not fit the target spec is refused.
        assert_eq!(
            chip.unwrap_key(rsa, &wrap, &w, template(KeySpec::SM4, KeyUsage::DECRYPT)),
            Err(ChipError::WrappedKeyInvalid)
        );
    }
    // An RSA private key (PKCS#8, ~1.2 kB) is too long for RSA-OAEP.
    let (big, _) = generate(
        &chip,
        KeySpec::EC_P256,
        KeyUsage::SIGN | KeyUsage::EXTRACTABLE,
    );
    chip.wrap_key(&public, &wrap, big).unwrap();
    let (rsa_target, _) = generate(
        &chip,
        KeySpec::RSA_2048,
        KeyUsage::SIGN | KeyUsage::EXTRACTABLE,
    );
    assert!(matches!(
        chip.wrap_key(&public, &wrap, rsa_target),
        Err(ChipError::KeySizeRange(_))
    ));
    // ... but it wraps with AES-KWP and unwraps into a working RSA key.
    let (kek, _) = generate(&chip, KeySpec::AES_256, KeyUsage::WRAP | KeyUsage::UNWRAP);
    let wrapped = chip
        .wrap_key(&KeyRef::Loaded(kek), &WrapMech::AesKeyWrapPad, rsa_target)
        .unwrap();
    let t = template(KeySpec::RSA_2048, KeyUsage::SIGN);
    let back = chip
        .unwrap_key(kek, &WrapMech::AesKeyWrapPad, &wrapped, t)
        .unwrap();
    assert_eq!(back.public, Some(chip.public_key(rsa_target).unwrap()));
}

// ---------------------------------------------------------------------------------------------
// AES

#[test]
fn aes_gcm_nist_vectors_via_import() {
    // McGrew & Viega, "The Galois/Counter Mode of Operation", test cases 3 and 4 (AES-128).
    let chip = chip();
    let key = h("feffe9928665731c6d6a8f9467308308");
    let spec = KeySpec {
        key_type: KeyType::Aes,
        bits: 128,
    };
    let (id, _) = import(&chip, spec, KeyUsage::ENCRYPT | KeyUsage::DECRYPT, &key);
    let p = h(
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72
               1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
    );
    let c = h(
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e
               21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
    );
    let iv = h("cafebabefacedbaddecaf888");
    let mech = CipherMech::AesGcm {
        iv: iv.clone(),
        aad: vec![],
        tag_bits: 128,
    };
    let out = chip.encrypt(&KeyRef::Loaded(id), &mech, &p).unwrap();
    assert_eq!(
        out,
        [c.clone(), h("4d5c2af327cd64a62cf35abd2ba6fab4")].concat()
    );
    assert_eq!(chip.decrypt(id, &mech, &out).unwrap(), p);

    let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
    let mech = CipherMech::AesGcm {
        iv,
        aad,
        tag_bits: 128,
    };
    let out = chip.encrypt(&KeyRef::Loaded(id), &mech, &p[..60]).unwrap();
    assert_eq!(
        out,
        [c[..60].to_vec(), h("5bc94fbc3221a5db94fae95ae7121a47")].concat()
    );
    assert_eq!(chip.decrypt(id, &mech, &out).unwrap(), p[..60]);
    for i in [0, 59, 60, 75] {
        let mut bad = out.clone();
        bad[i] ^= 0x80;
        assert_eq!(
            chip.decrypt(id, &mech, &bad),
            Err(ChipError::EncryptedDataInvalid)
        );
    }
    assert_eq!(
        chip.decrypt(id, &mech, &out[..15]),
        Err(ChipError::EncryptedDataInvalid)
    );

    // Parameters this chip does not support are refused clearly.
    let long_iv = CipherMech::AesGcm {
        iv: vec![0; 16],
        aad: vec![],
        tag_bits: 128,
    };
    let short_tag = CipherMech::AesGcm {
        iv: vec![0; 12],
        aad: vec![],
        tag_bits: 96,
    };
    for mech in [long_iv, short_tag] {
        assert!(matches!(
            chip.encrypt(&KeyRef::Loaded(id), &mech, b"x"),
            Err(ChipError::MechanismInvalid(_))
        ));
    }
}

#[test]
fn aes_gcm_and_cbc_round_trips_for_every_key_size() {
    let chip = chip();
    for bits in [128, 192, 256] {
        let spec = KeySpec {
            key_type: KeyType::Aes,
            bits,
        };
        let (id, _) = generate(&chip, spec, KeyUsage::ENCRYPT | KeyUsage::DECRYPT);
        for len in [0usize, 1, 16, 33, 1000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let gcm = CipherMech::AesGcm {
                iv: vec![len as u8; 12],
                aad: b"a".to_vec(),
                tag_bits: 128,
            };
            let ct = chip.encrypt(&KeyRef::Loaded(id), &gcm, &data).unwrap();
            assert_eq!(ct.len(), len + 16);
            assert_eq!(chip.decrypt(id, &gcm, &ct).unwrap(), data);
            let pad = CipherMech::AesCbc {
                iv: [len as u8; 16],
                pad: true,
            };
            let ct = chip.encrypt(&KeyRef::Loaded(id), &pad, &data).unwrap();
            assert_eq!(ct.len(), (len / 16 + 1) * 16);
            assert_eq!(chip.decrypt(id, &pad, &ct).unwrap(), data);
        }
    }
}

#[test]
fn aes_cbc_sp800_38a_vector_via_import() {
    // NIST SP 800-38A, F.2.5 CBC-AES256.Encrypt.
    let chip = chip();
    let key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
    let (id, _) = import(
        &chip,
        KeySpec::AES_256,
        KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        &key,
    );
    let iv: [u8; 16] = h("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
    let p = h(
        "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51
               30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710",
    );
    let c = h(
        "f58c4c04d6e5f1ba779eabfb5f7bfbd69cfc4e967edb808d679f777bc6702c7d
               39f23369a9d9bacfa530e26304231461b2eb05e2c39be9fcda6c19078c6a9d1b",
    );
    let mech = CipherMech::AesCbc { iv, pad: false };
    assert_eq!(chip.encrypt(&KeyRef::Loaded(id), &mech, &p).unwrap(), c);
    assert_eq!(chip.decrypt(id, &mech, &c).unwrap(), p);
    assert!(matches!(
        chip.encrypt(&KeyRef::Loaded(id), &mech, &p[..20]),
        Err(ChipError::DataLenRange(_))
    ));
    // Decrypting the vector with padding: its last block is not PKCS#7.
    let pad = CipherMech::AesCbc { iv, pad: true };
    assert_eq!(
        chip.decrypt(id, &pad, &c),
        Err(ChipError::EncryptedDataInvalid)
    );
}

#[test]
fn hmac_rfc4231_test_case_2() {
    let chip = chip();
    let (id, _) = import(
        &chip,
        KeySpec::generic_secret(4),
        KeyUsage::SIGN | KeyUsage::VERIFY,
        b"Jefe",
    );
    let data = b"what do ya want for nothing?";
    for (hash, expected) in [
        (
            HashAlg::Sha256,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        ),
        (
            HashAlg::Sha384,
            "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e
             8e2240ca5e69e2c78b3239ecfab21649",
        ),
        (
            HashAlg::Sha512,
            "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554
             9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
        ),
    ] {
        let mac = chip.sign(id, &SignMech::Hmac(hash), data).unwrap();
        assert_eq!(mac, h(expected), "{hash:?}");
        chip.verify(&KeyRef::Loaded(id), &SignMech::Hmac(hash), data, &mac)
            .unwrap();
        let mut bad = mac.clone();
        bad[0] ^= 1;
        assert_eq!(
            chip.verify(&KeyRef::Loaded(id), &SignMech::Hmac(hash), data, &bad),
            Err(ChipError::SignatureInvalid)
        );
        assert_eq!(
            chip.verify(&KeyRef::Loaded(id), &SignMech::Hmac(hash), data, &mac[..16]),
            Err(ChipError::SignatureInvalid)
        );
    }
    // HMAC needs a generic secret.
    let (aes, _) = generate(&chip, KeySpec::AES_256, KeyUsage::SIGN);
    assert!(matches!(
        chip.sign(aes, &SignMech::Hmac(HashAlg::Sha256), data),
        Err(ChipError::KeyTypeInconsistent(_))
    ));
}

/// RFC 4493 §4 (AES-128, the message lengths 0, 16, 40 and 64 bytes) and NIST SP 800-38B
/// appendix D.2/D.3 (AES-192, AES-256) for `CKM_AES_CMAC`; a flipped bit or a short tag does not
/// verify, and CMAC needs an AES key.
#[test]
fn aes_cmac_rfc4493_and_sp800_38b() {
    let chip = chip();
    let msg = h(
        "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                 30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710",
    );
    let cases: [(&str, [(usize, &str); 3]); 3] = [
        (
            "2b7e151628aed2a6abf7158809cf4f3c",
            [
                (0, "bb1d6929e95937287fa37d129b756746"),
                (16, "070a16b46b4d4144f79bdd9dd04a287c"),
                (64, "51f0bebf7e3b9d92fc49741779363cfe"),
            ],
        ),
        (
            "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b",
            [
                (0, "d17ddf46adaacde531cac483de7a9367"),
                (16, "9e99a7bf31e710900662f65e617c5184"),
                (64, "a1d5df0eed790f794d77589659f39a11"),
            ],
        ),
        (
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
            [
                (0, "028962f61b7bf89efc6b551f4667d983"),
                (16, "28a7023f452e8f82bd4bf28d8c37c35c"),
                (64, "e1992190549f6ed5696a2c056c315410"),
            ],
        ),
    ];
    let mech = SignMech::AesCmac;
    for (key, vectors) in cases {
        let key = h(key);
        let spec = KeySpec {
            key_type: KeyType::Aes,
            bits: u32::try_from(key.len() * 8).unwrap(),
        };
        let (id, _) = import(&chip, spec, KeyUsage::SIGN | KeyUsage::VERIFY, &key);
        let mut all = vectors.to_vec();
        if key.len() == 16 {
            // RFC 4493 example 3: a message that is not whole blocks.
            all.push((40, "dfa66747de9ae63030ca32611497c827"));
        }
        for (len, expected) in all {
            let data = &msg[..len];
            let mac = chip.sign(id, &mech, data).unwrap();
            assert_eq!(mac, h(expected), "AES-{} over {len} bytes", key.len() * 8);
            chip.verify(&KeyRef::Loaded(id), &mech, data, &mac).unwrap();
            let mut bad = mac.clone();
            bad[15] ^= 0x80;
            assert_eq!(
                chip.verify(&KeyRef::Loaded(id), &mech, data, &bad),
                Err(ChipError::SignatureInvalid)
            );
            assert_eq!(
                chip.verify(&KeyRef::Loaded(id), &mech, data, &mac[..8]),
                Err(ChipError::SignatureInvalid)
            );
        }
    }
    // CMAC needs an AES key, and the key's sign usage.
    let (hmac_key, _) = generate(
        &chip,
        KeySpec::generic_secret(32),
        KeyUsage::SIGN | KeyUsage::VERIFY,
    );
    assert!(matches!(
        chip.sign(hmac_key, &mech, b"m"),
        Err(ChipError::KeyTypeInconsistent(_))
    ));
    let (encrypt_only, _) = generate(&chip, KeySpec::AES_256, KeyUsage::ENCRYPT);
    assert!(matches!(
        chip.sign(encrypt_only, &mech, b"m"),
        Err(ChipError::KeyFunctionNotPermitted(_))
    ));
    // And a public key cannot check a MAC.
    let (_, pair) = generate(&chip, KeySpec::EC_P256, KeyUsage::SIGN);
    let public = pair.public.expect("a key pair's public key");
    assert!(matches!(
        chip.verify(&KeyRef::Public(public), &mech, b"m", &[0; 16]),
        Err(ChipError::KeyTypeInconsistent(_))
    ));
}

#[test]
fn aes_key_wrap_rfc3394_4_1() {
    let chip = chip();
    let spec = KeySpec {
        key_type: KeyType::Aes,
        bits: 128,
    };
    let (kek, _) = import(
        &chip,
        spec,
        KeyUsage::WRAP | KeyUsage::UNWRAP,
        &h("000102030405060708090A0B0C0D0E0F"),
    );
    let (target, _) = import(
        &chip,
        spec,
        KeyUsage::ENCRYPT | KeyUsage::EXTRACTABLE,
        &h("00112233445566778899AABBCCDDEEFF"),
    );
    let wrapped = chip
        .wrap_key(&KeyRef::Loaded(kek), &WrapMech::AesKeyWrap, target)
        .unwrap();
    assert_eq!(
        wrapped,
        h("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5")
    );
    // Unwrap into a new key and check it is the same key.
    let back = chip
        .unwrap_key(
            kek,
            &WrapMech::AesKeyWrap,
            &wrapped,
            template(spec, KeyUsage::ENCRYPT),
        )
        .unwrap();
    let back = chip.load_key(&back.blob).unwrap();
    let mech = CipherMech::AesCbc {
        iv: [0; 16],
        pad: false,
    };
    assert_eq!(
        chip.encrypt(&KeyRef::Loaded(back), &mech, &[0; 16])
            .unwrap(),
        chip.encrypt(&KeyRef::Loaded(target), &mech, &[0; 16])
            .unwrap()
    );
    let mut bad = wrapped.clone();
    bad[0] ^= 1;
    assert_eq!(
        chip.unwrap_key(
            kek,
            &WrapMech::AesKeyWrap,
            &bad,
            template(spec, KeyUsage::ENCRYPT)
        ),
        Err(ChipError::WrappedKeyInvalid)
    );

    // KWP (RFC 5649) for a length that KW cannot take.
    let (odd, _) = import(
        &chip,
        KeySpec::generic_secret(20),
        KeyUsage::SIGN | KeyUsage::EXTRACTABLE,
        &[0x33; 20],
    );
    assert!(matches!(
        chip.wrap_key(&KeyRef::Loaded(kek), &WrapMech::AesKeyWrap, odd),
        Err(ChipError::KeySizeRange(_))
    ));
    let wrapped = chip
        .wrap_key(&KeyRef::Loaded(kek), &WrapMech::AesKeyWrapPad, odd)
        .unwrap();
    assert_eq!(wrapped.len(), 32);
    let t = template(KeySpec::generic_secret(20), KeyUsage::SIGN);
    let back = chip
        .unwrap_key(kek, &WrapMech::AesKeyWrapPad, &wrapped, t)
        .unwrap();
    let back = chip.load_key(&back.blob).unwrap();
    let mech = SignMech::Hmac(HashAlg::Sha256);
    assert_eq!(
        chip.sign(back, &mech, b"m").unwrap(),
        chip.sign(odd, &mech, b"m").unwrap()
    );

    // AES-192 key-encryption keys are not supported by the backend.
    let spec192 = KeySpec {
        key_type: KeyType::Aes,
        bits: 192,
    };
    let (kek192, _) = generate(&chip, spec192, KeyUsage::WRAP);
    assert!(matches!(
        chip.wrap_key(&KeyRef::Loaded(kek192), &WrapMech::AesKeyWrap, target),
        Err(ChipError::MechanismInvalid(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// the chip itself

#[test]
fn self_test_passes_and_random_is_bounded() {
    let chip = SoftChip::new(SoftChipConfig::default()).unwrap();
    chip.self_test().unwrap();
    let info = chip.info().unwrap();
    assert_eq!(info.model, "cloudkey-soft");
    assert_eq!(info.firmware, env!("CARGO_PKG_VERSION"));
    assert_eq!(info.slots, 64);
    assert_eq!(info.identity_key.len(), 65);
    assert_eq!(info.domain, None);
    assert_eq!(chip.random(0).unwrap().len(), 0);
    let a = chip.random(MAX_RANDOM_LEN).unwrap();
    let b = chip.random(32).unwrap();
    assert_eq!(a.len(), MAX_RANDOM_LEN);
    assert_ne!(a[..32], b[..]);
    assert!(matches!(
        chip.random(MAX_RANDOM_LEN + 1),
        Err(ChipError::DataLenRange(_))
    ));
}
