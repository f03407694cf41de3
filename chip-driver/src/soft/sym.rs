//! Secret keys: AES (GCM, CBC, key wrap RFC 3394/5649, CMAC RFC 4493), SM4-CBC and HMAC (SHA-*
//! and SM3).

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::cipher::{
    self, DecryptingKey, DecryptionContext, EncryptingKey, EncryptionContext,
    PaddedBlockDecryptingKey, PaddedBlockEncryptingKey, UnboundCipherKey,
};
use aws_lc_rs::cmac;
use aws_lc_rs::hmac;
use aws_lc_rs::key_wrap::{self, KeyEncryptionKey, KeyWrap, KeyWrapPadded};
use cbc::cipher::block_padding::{NoPadding, Pkcs7};
use cbc::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use sm3::{Digest as _, Sm3};
use zeroize::{Zeroize, Zeroizing};

use super::{internal, NONCE_LEN, TAG_LEN};
use crate::{ChipError, HashAlg, KeySpec, KeyType, KeyUsage, Result};

/// A secret key: its value, plus the AES-GCM key schedule for AES keys that may encrypt.
pub(super) struct SecretKey {
    pub(super) value: Zeroizing<Vec<u8>>,
    pub(super) gcm: Option<LessSafeKey>,
}

impl SecretKey {
    pub(super) fn parse(
        spec: KeySpec,
        usage: KeyUsage,
        value: &[u8],
    ) -> std::result::Result<Self, String> {
        if value.len() != spec.bytes() || spec.bits % 8 != 0 {
            return Err(format!(
                "a {}-bit {:?} key is {} bytes, not {}",
                spec.bits,
                spec.key_type,
                spec.bytes(),
                value.len()
            ));
        }
        let gcm = if spec.key_type == KeyType::Aes
            && usage.intersects(KeyUsage::ENCRYPT | KeyUsage::DECRYPT)
        {
            let unbound = UnboundKey::new(aes_gcm_alg(value.len())?, value)
                .map_err(|_| "AES key rejected for GCM".to_string())?;
            Some(LessSafeKey::new(unbound))
        } else {
            None
        };
        Ok(Self {
            value: Zeroizing::new(value.to_vec()),
            gcm,
        })
    }

    pub(super) fn gcm(&self) -> Result<&LessSafeKey> {
        self.gcm
            .as_ref()
            .ok_or_else(|| internal("AES-GCM key schedule missing"))
    }
}

pub(super) fn aes_gcm_alg(len: usize) -> std::result::Result<&'static aead::Algorithm, String> {
    match len {
        16 => Ok(&aead::AES_128_GCM),
        24 => Ok(&aead::AES_192_GCM),
        32 => Ok(&aead::AES_256_GCM),
        n => Err(format!("{n} bytes is not an AES key length")),
    }
}

pub(super) fn aes_cipher_alg(len: usize) -> Result<&'static cipher::Algorithm> {
    match len {
        16 => Ok(&cipher::AES_128),
        24 => Ok(&cipher::AES_192),
        32 => Ok(&cipher::AES_256),
        n => Err(ChipError::KeySizeRange(format!(
            "{n} bytes is not an AES key length"
        ))),
    }
}

pub(super) fn gcm_nonce(iv: &[u8], tag_bits: u8) -> Result<Nonce> {
    if iv.len() != NONCE_LEN {
        return Err(ChipError::MechanismInvalid(format!(
            "AES-GCM on this chip needs a 12-byte IV, not {} bytes",
            iv.len()
        )));
    }
    if tag_bits != 128 {
        return Err(ChipError::MechanismInvalid(format!(
            "AES-GCM on this chip produces 128-bit tags only, not {tag_bits}"
        )));
    }
    Nonce::try_assume_unique_for_key(iv).map_err(|_| internal("AES-GCM nonce"))
}

pub(super) fn aes_gcm_encrypt(
    key: &SecretKey,
    iv: &[u8],
    aad: &[u8],
    tag_bits: u8,
    data: &[u8],
) -> Result<Vec<u8>> {
    let nonce = gcm_nonce(iv, tag_bits)?;
    let mut buf = data.to_vec();
    if key
        .gcm()?
        .seal_in_place_append_tag(nonce, Aad::from(aad), &mut buf)
        .is_err()
    {
        buf.zeroize();
        return Err(ChipError::DataLenRange("AES-GCM input too long".into()));
    }
    Ok(buf)
}

pub(super) fn aes_gcm_decrypt(
    key: &SecretKey,
    iv: &[u8],
    aad: &[u8],
    tag_bits: u8,
    data: &[u8],
) -> Result<Vec<u8>> {
    let nonce = gcm_nonce(iv, tag_bits)?;
    if data.len() < TAG_LEN {
        return Err(ChipError::EncryptedDataInvalid);
    }
    let mut buf = data.to_vec();
    match key.gcm()?.open_in_place(nonce, Aad::from(aad), &mut buf) {
        Ok(plain) => {
            let len = plain.len();
            buf.truncate(len);
            Ok(buf)
        }
        Err(_) => {
            buf.zeroize();
            Err(ChipError::EncryptedDataInvalid)
        }
    }
}

pub(super) fn aes_cbc_encrypt(
    key: &[u8],
    iv: &[u8; 16],
    pad: bool,
    data: &[u8],
) -> Result<Vec<u8>> {
    let unbound = UnboundCipherKey::new(aes_cipher_alg(key.len())?, key)
        .map_err(|_| internal("AES key rejected"))?;
    let context = EncryptionContext::Iv128((*iv).into());
    let mut buf = data.to_vec();
    let done = if pad {
        PaddedBlockEncryptingKey::cbc_pkcs7(unbound)
            .and_then(|k| k.less_safe_encrypt(&mut buf, context))
    } else {
        if data.len() % 16 != 0 {
            return Err(ChipError::DataLenRange(format!(
                "AES-CBC without padding needs whole 16-byte blocks, not {} bytes",
                data.len()
            )));
        }
        if data.is_empty() {
            return Ok(buf);
        }
        EncryptingKey::cbc(unbound).and_then(|k| k.less_safe_encrypt(&mut buf, context))
    };
    let len = buf.len();
    finish_in_place(buf, done.map(|_| len), || {
        internal("AES-CBC encryption failed")
    })
}

pub(super) fn aes_cbc_decrypt(
    key: &[u8],
    iv: &[u8; 16],
    pad: bool,
    data: &[u8],
) -> Result<Vec<u8>> {
    check_cbc_ciphertext(data, pad)?;
    let unbound = UnboundCipherKey::new(aes_cipher_alg(key.len())?, key)
        .map_err(|_| internal("AES key rejected"))?;
    let context = DecryptionContext::Iv128((*iv).into());
    let mut buf = data.to_vec();
    let len = if pad {
        PaddedBlockDecryptingKey::cbc_pkcs7(unbound)
            .and_then(|k| k.decrypt(&mut buf, context).map(|p| p.len()))
    } else if data.is_empty() {
        Ok(0)
    } else {
        DecryptingKey::cbc(unbound).and_then(|k| k.decrypt(&mut buf, context).map(|p| p.len()))
    };
    finish_in_place(buf, len, || ChipError::EncryptedDataInvalid)
}

pub(super) fn sm4_cbc_encrypt(
    key: &[u8],
    iv: &[u8; 16],
    pad: bool,
    data: &[u8],
) -> Result<Vec<u8>> {
    let enc = cbc::Encryptor::<sm4::Sm4>::new_from_slices(key, iv)
        .map_err(|_| internal("SM4 key of the wrong length"))?;
    let len = data.len();
    let mut buf = Vec::with_capacity(len + 16);
    buf.extend_from_slice(data);
    let out_len = if pad {
        buf.resize(len - len % 16 + 16, 0);
        enc.encrypt_padded::<Pkcs7>(&mut buf, len).map(<[u8]>::len)
    } else {
        if len % 16 != 0 {
            return Err(ChipError::DataLenRange(format!(
                "SM4-CBC without padding needs whole 16-byte blocks, not {len} bytes"
            )));
        }
        enc.encrypt_padded::<NoPadding>(&mut buf, len)
            .map(<[u8]>::len)
    };
    finish_in_place(buf, out_len, || internal("SM4-CBC encryption failed"))
}

pub(super) fn sm4_cbc_decrypt(
    key: &[u8],
    iv: &[u8; 16],
    pad: bool,
    data: &[u8],
) -> Result<Vec<u8>> {
    check_cbc_ciphertext(data, pad)?;
    let dec = cbc::Decryptor::<sm4::Sm4>::new_from_slices(key, iv)
        .map_err(|_| internal("SM4 key of the wrong length"))?;
    let mut buf = data.to_vec();
    let len = if pad {
        dec.decrypt_padded::<Pkcs7>(&mut buf).map(<[u8]>::len)
    } else {
        dec.decrypt_padded::<NoPadding>(&mut buf).map(<[u8]>::len)
    };
    finish_in_place(buf, len, || ChipError::EncryptedDataInvalid)
}

/// A CBC ciphertext is whole blocks, and at least one block when padded.
fn check_cbc_ciphertext(data: &[u8], pad: bool) -> Result<()> {
    if data.len() % 16 != 0 || (pad && data.is_empty()) {
        Err(ChipError::EncryptedDataInvalid)
    } else {
        Ok(())
    }
}

/// `buf` cut to the length a cipher working in place left in it; when the cipher failed, `buf`
/// is zeroized (it may hold part of a plaintext) and the error is `err()`.
fn finish_in_place<E>(
    mut buf: Vec<u8>,
    len: std::result::Result<usize, E>,
    err: impl FnOnce() -> ChipError,
) -> Result<Vec<u8>> {
    match len {
        Ok(n) => {
            buf.truncate(n);
            Ok(buf)
        }
        Err(_) => {
            buf.zeroize();
            Err(err())
        }
    }
}

pub(super) fn hmac_alg(hash: HashAlg) -> Option<hmac::Algorithm> {
    match hash {
        HashAlg::Sha1 => Some(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY),
        HashAlg::Sha256 => Some(hmac::HMAC_SHA256),
        HashAlg::Sha384 => Some(hmac::HMAC_SHA384),
        HashAlg::Sha512 => Some(hmac::HMAC_SHA512),
        HashAlg::Sm3 => None,
    }
}

pub(super) fn hmac_sign(hash: HashAlg, key: &[u8], data: &[u8]) -> Vec<u8> {
    match hmac_alg(hash) {
        Some(alg) => hmac::sign(&hmac::Key::new(alg, key), data)
            .as_ref()
            .to_vec(),
        None => hmac_sm3(key, data).to_vec(),
    }
}

/// AES-CMAC (NIST SP 800-38B, RFC 4493) of `data` with an AES-128, -192 or -256 key: the full
/// 16-byte tag.
pub(super) fn aes_cmac_sign(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    cmac::sign(&aes_cmac_key(key)?, data)
        .map(|tag| tag.as_ref().to_vec())
        .map_err(|_| internal("AES-CMAC failed"))
}

/// Checks an AES-CMAC tag in constant time (a tag of another length does not verify).
pub(super) fn aes_cmac_verify(key: &[u8], data: &[u8], tag: &[u8]) -> Result<()> {
    cmac::verify(&aes_cmac_key(key)?, data, tag).map_err(|_| ChipError::SignatureInvalid)
}

fn aes_cmac_key(key: &[u8]) -> Result<cmac::Key> {
    let alg = match key.len() {
        16 => cmac::AES_128,
        24 => cmac::AES_192,
        32 => cmac::AES_256,
        n => {
            return Err(ChipError::KeySizeRange(format!(
                "{n} bytes is not an AES key length"
            )))
        }
    };
    cmac::Key::new(alg, key).map_err(|_| internal("AES key rejected for CMAC"))
}

/// HMAC (RFC 2104) with SM3 (block size 64 bytes), which aws-lc-rs does not offer.
pub(super) fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k0 = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        k0[..32].copy_from_slice(&Sm3::digest(key));
    } else {
        k0[..key.len()].copy_from_slice(key);
    }
    let mut pad = Zeroizing::new([0u8; BLOCK]);
    pad.iter_mut()
        .zip(k0.iter())
        .for_each(|(p, k)| *p = k ^ 0x36);
    let inner = Sm3::new()
        .chain_update(&pad[..])
        .chain_update(data)
        .finalize();
    pad.iter_mut()
        .zip(k0.iter())
        .for_each(|(p, k)| *p = k ^ 0x5c);
    Sm3::new()
        .chain_update(&pad[..])
        .chain_update(inner)
        .finalize()
        .into()
}

pub(super) fn aes_kek(key: &[u8]) -> Result<KeyEncryptionKey<key_wrap::AesBlockCipher>> {
    let cipher = match key.len() {
        16 => &key_wrap::AES_128,
        32 => &key_wrap::AES_256,
        n => {
            return Err(ChipError::MechanismInvalid(format!(
                "AES key wrap on this chip needs a 128- or 256-bit wrapping key, not {} bits",
                n * 8
            )))
        }
    };
    KeyEncryptionKey::new(cipher, key).map_err(|_| internal("AES key wrap key rejected"))
}

pub(super) fn aes_wrap(kek: &[u8], pad: bool, material: &[u8]) -> Result<Vec<u8>> {
    let kek = aes_kek(kek)?;
    if pad {
        let mut out = vec![0u8; material.len().div_ceil(8) * 8 + 8];
        let len = kek
            .wrap_with_padding(material, &mut out)
            .map_err(|_| internal("AES key wrap with padding failed"))?
            .len();
        out.truncate(len);
        Ok(out)
    } else {
        if material.len() % 8 != 0 || material.len() < 16 {
            return Err(ChipError::KeySizeRange(format!(
                "AES key wrap (RFC 3394) needs a key of 16 or more bytes in 8-byte steps, not {} \
                 bytes; use AES key wrap with padding",
                material.len()
            )));
        }
        let mut out = vec![0u8; material.len() + 8];
        let len = kek
            .wrap(material, &mut out)
            .map_err(|_| internal("AES key wrap failed"))?
            .len();
        out.truncate(len);
        Ok(out)
    }
}

pub(super) fn aes_unwrap(kek: &[u8], pad: bool, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let kek = aes_kek(kek)?;
    let mut out = Zeroizing::new(vec![0u8; wrapped.len()]);
    let len = if pad {
        kek.unwrap_with_padding(wrapped, &mut out).map(|p| p.len())
    } else {
        kek.unwrap(wrapped, &mut out).map(|p| p.len())
    }
    .map_err(|_| ChipError::WrappedKeyInvalid)?;
    out.truncate(len);
    Ok(out)
}
