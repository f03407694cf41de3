//! The power-on and on-demand known-answer self tests.

use ::sm2::elliptic_curve::PrimeField;
use aws_lc_rs::digest;
use aws_lc_rs::hkdf;
use cbc::cipher::{BlockCipherEncrypt, KeyInit};
use sm3::{Digest as _, Sm3};

use super::ec::EcP256Key;
use super::ops::verify_public;
use super::sm2::{
    hex32, sm2_e, sm2_e_scalar, sm2_encrypt, sm2_sign_with_k, sm2_verify_prehash, Sm2Key,
};
use super::sym::{
    aes_cbc_decrypt, aes_cbc_encrypt, aes_cmac_sign, aes_gcm_decrypt, aes_gcm_encrypt, aes_unwrap,
    aes_wrap, hmac_sign, sm4_cbc_decrypt, sm4_cbc_encrypt, SecretKey,
};
use super::{fill_random, internal, SoftChip};
use crate::{ChipError, HashAlg, KeySpec, KeyUsage, PublicKey, Result, SignMech, SM2_DEFAULT_ID};

impl SoftChip {
    pub(super) fn self_test(&self) -> Result<()> {
        self.pause();
        run_self_tests()
    }
}

/// The power-on and on-demand known-answer tests.
pub(super) fn run_self_tests() -> Result<()> {
    fn check(name: &str, ok: bool) -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(ChipError::SelfTestFailed(name.to_string()))
        }
    }
    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap_or_default()
    }

    // SM3, GM/T 0004-2012 example 1.
    check(
        "SM3 known answer",
        Sm3::digest(b"abc")[..]
            == h("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"),
    )?;

    // SM4, GM/T 0002-2012 example 1 (one block, as ECB).
    {
        let key = h("0123456789abcdeffedcba9876543210");
        let cipher = sm4::Sm4::new_from_slice(&key).map_err(|_| internal("SM4 key"))?;
        let mut block = sm4::cipher::Block::<sm4::Sm4>::default();
        block.copy_from_slice(&key);
        cipher.encrypt_block(&mut block);
        check(
            "SM4 known answer",
            block[..] == h("681edf34d206965e86b3e94f536e4246"),
        )?;
        let out = sm4_cbc_encrypt(&key, &[0u8; 16], false, &key)?;
        check(
            "SM4-CBC known answer",
            out == h("681edf34d206965e86b3e94f536e4246"),
        )?;
        let back = sm4_cbc_decrypt(&key, &[0u8; 16], false, &out)?;
        check("SM4-CBC decryption", back == key)?;
    }

    // AES-256-GCM, McGrew & Viega test case 14 (zero key, zero IV, one zero block).
    {
        let key = SecretKey::parse(KeySpec::AES_256, KeyUsage::ENCRYPT, &[0u8; 32])
            .map_err(|e| ChipError::SelfTestFailed(format!("AES-GCM key: {e}")))?;
        let out = aes_gcm_encrypt(&key, &[0u8; 12], &[], 128, &[0u8; 16])?;
        check(
            "AES-GCM known answer",
            out == h("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"),
        )?;
        let back = aes_gcm_decrypt(&key, &[0u8; 12], &[], 128, &out)?;
        check("AES-GCM decryption", back == [0u8; 16])?;
        let mut bad = out.clone();
        bad[0] ^= 1;
        check(
            "AES-GCM tag check",
            aes_gcm_decrypt(&key, &[0u8; 12], &[], 128, &bad).is_err(),
        )?;
    }

    // AES-256-CBC, NIST SP 800-38A F.2.5 (first block).
    {
        let key = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
        let mut iv = [0u8; 16];
        iv.iter_mut().zip(0u8..).for_each(|(b, i)| *b = i);
        let pt = h("6bc1bee22e409f96e93d7e117393172a");
        let ct = aes_cbc_encrypt(&key, &iv, false, &pt)?;
        check(
            "AES-CBC known answer",
            ct == h("f58c4c04d6e5f1ba779eabfb5f7bfbd6"),
        )?;
        check(
            "AES-CBC decryption",
            aes_cbc_decrypt(&key, &iv, false, &ct)? == pt,
        )?;
    }

    // HMAC-SHA-256, RFC 4231 test case 2.
    check(
        "HMAC-SHA-256 known answer",
        hmac_sign(HashAlg::Sha256, b"Jefe", b"what do ya want for nothing?")
            == h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    )?;

    // AES-CMAC, RFC 4493 example 2 (16 bytes).
    check(
        "AES-CMAC known answer",
        aes_cmac_sign(
            &h("2b7e151628aed2a6abf7158809cf4f3c"),
            &h("6bc1bee22e409f96e93d7e117393172a"),
        )? == h("070a16b46b4d4144f79bdd9dd04a287c"),
    )?;

    // AES key wrap, RFC 3394 4.1.
    {
        let kek = h("000102030405060708090A0B0C0D0E0F");
        let key = h("00112233445566778899AABBCCDDEEFF");
        let wrapped = aes_wrap(&kek, false, &key)?;
        check(
            "AES key wrap known answer",
            wrapped == h("1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"),
        )?;
        check(
            "AES key unwrap",
            aes_unwrap(&kek, false, &wrapped)?[..] == key[..],
        )?;
    }

    // HKDF-SHA-256, RFC 5869 test case 1.
    {
        let salt: Vec<u8> = (0u8..=0x0c).collect();
        let info: Vec<u8> = (0xf0u8..=0xf9).collect();
        let mut okm = [0u8; 42];
        struct Len(usize);
        impl hkdf::KeyType for Len {
            fn len(&self) -> usize {
                self.0
            }
        }
        hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
            .extract(&[0x0b; 22])
            .expand(&[&info], Len(42))
            .and_then(|o| o.fill(&mut okm))
            .map_err(|_| ChipError::SelfTestFailed("HKDF".into()))?;
        check(
            "HKDF-SHA-256 known answer",
            okm[..]
                == h("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        )?;
    }

    // ECDSA P-256: verify the RFC 6979 A.2.5 signature of "sample" (SHA-256), then a pairwise
    // sign/verify with that key.
    {
        let scalar = h("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721");
        let key = EcP256Key::parse(&scalar, KeyUsage::empty())
            .map_err(|e| ChipError::SelfTestFailed(format!("ECDSA key: {e}")))?;
        let digest = digest::digest(&digest::SHA256, b"sample");
        let sig = h(
            "efd48b2aacb6a8fd1140dd9cd45e81d69d2c877b56aaf991c34d0ea84eaf3716\
                     f7cb1c942d657c41d436c7a1b6e29f65f3e900dbb9aff4064dc4ab2f843acda8",
        );
        let public = PublicKey::EcP256(key.public.clone());
        check(
            "ECDSA P-256 known answer",
            verify_public(&public, &SignMech::Ecdsa, digest.as_ref(), &sig).is_ok(),
        )?;
        let mine = key.sign(digest.as_ref())?;
        check(
            "ECDSA P-256 pairwise",
            verify_public(&public, &SignMech::Ecdsa, digest.as_ref(), &mine).is_ok()
                && verify_public(&public, &SignMech::Ecdsa, &[0u8; 32], &mine).is_err(),
        )?;
    }

    // SM2: GM/T 0003.5 signature example (fixed k) as a known answer, then a pairwise test.
    {
        let d = h("3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8");
        let key =
            Sm2Key::parse(&d).map_err(|e| ChipError::SelfTestFailed(format!("SM2 key: {e}")))?;
        let e = sm2_e(SM2_DEFAULT_ID, &key.public_bytes, b"message digest")?;
        let k = ::sm2::Scalar::from_repr(::sm2::FieldBytes::from(hex32(
            "59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21",
        )));
        let k = Option::<::sm2::Scalar>::from(k).ok_or_else(|| internal("SM2 test k"))?;
        let sig = sm2_sign_with_k(&key.d, &key.d1_inv, &sm2_e_scalar(&e)?, &k);
        check(
            "SM2 signature known answer",
            sig.map(|s| s.to_vec())
                == Some(h(
                    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3\
                           B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA",
                )),
        )?;
        let mine = key.sign_prehash(&e)?;
        check(
            "SM2 pairwise",
            sm2_verify_prehash(&key.public_bytes, &e, &mine).is_ok()
                && sm2_verify_prehash(&key.public_bytes, &[0u8; 32], &mine).is_err(),
        )?;
        let ct = sm2_encrypt(&key.public_bytes, b"cloudkey self test")?;
        check(
            "SM2 encryption pairwise",
            key.decrypt(&ct).map(|m| m.to_vec()).ok() == Some(b"cloudkey self test".to_vec()),
        )?;
    }

    // The random generator gives distinct outputs.
    {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        fill_random(&mut a)?;
        fill_random(&mut b)?;
        check("random generator", a != b && a != [0u8; 32])?;
    }
    Ok(())
}
