//! What an ATM terminal does with its keys, on its side: it makes its key pair (RSA-2048 or
//! SM2), gives the cluster its public key, decrypts the terminal master key (TMK) the cluster
//! delivers encrypted to it, and checks the key's check value (KCV) against the one the
//! cluster announced. The CLI plays the terminal in `tmk terminal keygen` and `tmk fetch
//! --private-key`; the node's side of the same exchange is in the node's TMK service.

use anyhow::{anyhow, bail};
use aws_lc_rs::cipher::{EncryptingKey, UnboundCipherKey, AES_256};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OaepPrivateDecryptingKey, PrivateDecryptingKey, OAEP_SHA256_MGF1SHA256,
};
use cloudkey_protocol::gov::TerminalKey;
use sm2::elliptic_curve::sec1::ToSec1Point;
use sm2::elliptic_curve::Generate;
use sm2::pkcs8::der::pem::{self as pem_encoding, LineEnding};
use sm2::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use sm4::cipher::{BlockCipherEncrypt, KeyInit};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

/// The DER contents of the first PEM block in `text` with one of `labels`.
pub(crate) fn pem_block(
    text: &str,
    labels: &[&str],
) -> anyhow::Result<(String, Zeroizing<Vec<u8>>)> {
    for pem in x509_parser::pem::Pem::iter_from_buffer(text.as_bytes()) {
        let pem = pem.map_err(|e| anyhow!("invalid PEM: {e}"))?;
        if labels.contains(&pem.label.as_str()) {
            return Ok((pem.label, Zeroizing::new(pem.contents)));
        }
    }
    bail!("no PEM block labelled {}", labels.join(" or "))
}

/// Which kind of key a terminal has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TerminalKeyKind {
    /// RSA, 2048 bits or more: the TMK is AES-256.
    Rsa,
    /// SM2: the TMK is SM4.
    Sm2,
}

/// Parses a terminal's public key: RSA (SubjectPublicKeyInfo or PKCS#1 PEM, at least 2048
/// bits) or SM2 (SubjectPublicKeyInfo PEM with the SM2 curve).
pub(crate) fn terminal_key_from_pem(
    text: &str,
    kind: TerminalKeyKind,
) -> anyhow::Result<TerminalKey> {
    match kind {
        TerminalKeyKind::Rsa => {
            let (label, der) = pem_block(text, &["PUBLIC KEY", "RSA PUBLIC KEY"])?;
            let rsa_der: Vec<u8> = if label == "RSA PUBLIC KEY" {
                der.to_vec()
            } else {
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&der)
                    .map_err(|e| anyhow!("not a SubjectPublicKeyInfo: {e}"))?;
                if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
                    bail!("not an RSA public key");
                }
                spki.subject_public_key.data.to_vec()
            };
            let (_, key) = x509_parser::public_key::RSAPublicKey::from_der(&rsa_der)
                .map_err(|e| anyhow!("not an RSA public key: {e}"))?;
            let n = strip_zeros(key.modulus);
            let e = strip_zeros(key.exponent);
            let bits = n
                .first()
                .map_or(0, |b| (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize));
            if bits < 2048 {
                bail!("the RSA key has {bits} bits; a terminal key needs at least 2048");
            }
            if e.is_empty() || e.last().is_some_and(|b| b & 1 == 0) {
                bail!("the RSA public exponent is not odd");
            }
            Ok(TerminalKey::Rsa {
                n: n.to_vec(),
                e: e.to_vec(),
            })
        }
        TerminalKeyKind::Sm2 => {
            let (_, der) = pem_block(text, &["PUBLIC KEY"])?;
            let key = sm2::PublicKey::from_public_key_der(&der)
                .map_err(|e| anyhow!("not an SM2 public key: {e}"))?;
            Ok(TerminalKey::Sm2 {
                point: key.to_sec1_point(false).as_bytes().to_vec(),
            })
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

fn pem(label: &str, der: &[u8]) -> anyhow::Result<String> {
    pem_encoding::encode_string(label, LineEnding::LF, der)
        .map_err(|e| anyhow!("PEM encoding failed: {e}"))
}

pub(crate) fn rsa_key_pair_pem() -> anyhow::Result<(Zeroizing<String>, String)> {
    let key = PrivateDecryptingKey::generate(KeySize::Rsa2048)
        .map_err(|_| anyhow!("RSA key generation failed"))?;
    let private = key
        .as_der()
        .map_err(|_| anyhow!("RSA private key encoding failed"))?;
    let public = key
        .public_key()
        .as_der()
        .map_err(|_| anyhow!("RSA public key encoding failed"))?;
    Ok((
        Zeroizing::new(pem("PRIVATE KEY", private.as_ref())?),
        pem("PUBLIC KEY", public.as_ref())?,
    ))
}

pub(crate) fn sm2_key_pair_pem() -> anyhow::Result<(Zeroizing<String>, String)> {
    let key =
        sm2::SecretKey::try_generate().map_err(|e| anyhow!("SM2 key generation failed: {e}"))?;
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| anyhow!("SM2 private key encoding failed: {e}"))?;
    let public = key
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| anyhow!("SM2 public key encoding failed: {e}"))?;
    Ok((Zeroizing::new(private.to_string()), public))
}

/// Decrypts a delivered TMK with the terminal's private key (PKCS#8 DER): RSA-OAEP (SHA-256)
/// for `aes-256`, SM2 (`C1 || C3 || C2`) for `sm4`.
pub(crate) fn decrypt_tmk(
    algorithm: &str,
    pkcs8: &[u8],
    encrypted: &[u8],
) -> anyhow::Result<Zeroizing<Vec<u8>>> {
    let key = match algorithm {
        "aes-256" => {
            let key = PrivateDecryptingKey::from_pkcs8(pkcs8)
                .map_err(|e| anyhow!("the private key is not an RSA PKCS#8 key: {e}"))?;
            let key = OaepPrivateDecryptingKey::new(key)
                .map_err(|_| anyhow!("the RSA key cannot do OAEP"))?;
            let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
            let n = key
                .decrypt(&OAEP_SHA256_MGF1SHA256, encrypted, &mut out, None)
                .map_err(|_| {
                    anyhow!("RSA-OAEP decryption failed: not this terminal's key, or a damaged key")
                })?
                .len();
            out.truncate(n);
            out
        }
        "sm4" => {
            let key = sm2::SecretKey::from_pkcs8_der(pkcs8)
                .map_err(|e| anyhow!("the private key is not an SM2 PKCS#8 key: {e}"))?;
            let key = sm2::pke::DecryptingKey::new_with_mode(
                key.to_nonzero_scalar(),
                sm2::pke::Mode::C1C3C2,
            );
            Zeroizing::new(key.decrypt(encrypted).map_err(|_| {
                anyhow!("SM2 decryption failed: not this terminal's key, or a damaged key")
            })?)
        }
        other => bail!("unknown TMK algorithm {other:?}"),
    };
    let want = if algorithm == "sm4" { 16 } else { 32 };
    if key.len() != want {
        bail!(
            "the decrypted {algorithm} key has {} bytes, not {want}",
            key.len()
        );
    }
    Ok(key)
}

/// Key check value: the first 3 bytes of the key's encryption of a zero block (AES-256-ECB or
/// SM4-ECB).
pub(crate) fn kcv(algorithm: &str, key: &[u8]) -> anyhow::Result<[u8; 3]> {
    let mut block = [0u8; 16];
    match algorithm {
        "aes-256" => {
            let key = UnboundCipherKey::new(&AES_256, key)
                .map_err(|_| anyhow!("an AES-256 key has 32 bytes"))?;
            EncryptingKey::ecb(key)
                .and_then(|k| k.encrypt(&mut block))
                .map_err(|_| anyhow!("AES encryption failed"))?;
        }
        "sm4" => sm4_encrypt_block(key, &mut block)?,
        other => bail!("unknown TMK algorithm {other:?}"),
    }
    Ok([block[0], block[1], block[2]])
}

fn sm4_encrypt_block(key: &[u8], block: &mut [u8; 16]) -> anyhow::Result<()> {
    let cipher = sm4::Sm4::new_from_slice(key).map_err(|_| anyhow!("an SM4 key has 16 bytes"))?;
    let mut b = sm4::cipher::Block::<sm4::Sm4>::default();
    b.copy_from_slice(block);
    cipher.encrypt_block(&mut b);
    block.copy_from_slice(&b);
    Ok(())
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn kcvs_match_known_answers() {
        // AES-256, zero key, zero block: dc95c078...
        assert_eq!(kcv("aes-256", &[0u8; 32]).unwrap(), [0xdc, 0x95, 0xc0]);
        assert!(kcv("aes-256", &[0u8; 16]).is_err());
        // SM4, GM/T 0002-2012 example 1.
        let key = hex::decode("0123456789abcdeffedcba9876543210").unwrap();
        let mut block = [0u8; 16];
        block.copy_from_slice(&key);
        sm4_encrypt_block(&key, &mut block).unwrap();
        assert_eq!(hex::encode(block), "681edf34d206965e86b3e94f536e4246");
        let mut zero = [0u8; 16];
        sm4_encrypt_block(&key, &mut zero).unwrap();
        assert_eq!(kcv("sm4", &key).unwrap(), [zero[0], zero[1], zero[2]]);
        assert!(kcv("des", &key).is_err());
    }

    #[test]
    fn rsa_terminal_keys_round_trip() {
        use aws_lc_rs::rsa::{OaepPublicEncryptingKey, PublicEncryptingKey};
        let (private, public) = rsa_key_pair_pem().unwrap();
        let TerminalKey::Rsa { n, e } =
            terminal_key_from_pem(&public, TerminalKeyKind::Rsa).unwrap()
        else {
            panic!("not RSA");
        };
        assert_eq!((n.len(), e.as_slice()), (256, &[1u8, 0, 1][..]));
        assert!(terminal_key_from_pem(&public, TerminalKeyKind::Sm2).is_err());
        // The node's side: RSA-OAEP (SHA-256) under the registered public key.
        let (_, spki) = pem_block(&public, &["PUBLIC KEY"]).unwrap();
        let enc =
            OaepPublicEncryptingKey::new(PublicEncryptingKey::from_der(&spki).unwrap()).unwrap();
        let tmk = [7u8; 32];
        let mut ct = vec![0u8; enc.ciphertext_size()];
        let ct = enc
            .encrypt(&OAEP_SHA256_MGF1SHA256, &tmk, &mut ct, None)
            .unwrap()
            .to_vec();
        let (_, der) = pem_block(&private, &["PRIVATE KEY"]).unwrap();
        let key = decrypt_tmk("aes-256", &der, &ct).unwrap();
        assert_eq!(key.as_slice(), &tmk);
        assert_eq!(kcv("aes-256", &key).unwrap(), kcv("aes-256", &tmk).unwrap());
        assert!(
            decrypt_tmk("sm4", &der, &ct).is_err(),
            "an RSA key is no SM2 key"
        );
        let mut bad = ct;
        bad[0] ^= 1;
        assert!(decrypt_tmk("aes-256", &der, &bad).is_err());
    }

    #[test]
    fn sm2_terminal_keys_round_trip() {
        let (private, public) = sm2_key_pair_pem().unwrap();
        let TerminalKey::Sm2 { point } =
            terminal_key_from_pem(&public, TerminalKeyKind::Sm2).unwrap()
        else {
            panic!("not SM2");
        };
        assert_eq!((point.len(), point[0]), (65, 0x04));
        assert!(terminal_key_from_pem(&public, TerminalKeyKind::Rsa).is_err());
        // The node's side: SM2 encryption, C1 || C3 || C2.
        let tmk = [9u8; 16];
        let ct = sm2::pke::EncryptingKey::new_with_mode(
            sm2::PublicKey::from_sec1_bytes(&point).unwrap(),
            sm2::pke::Mode::C1C3C2,
        )
        .encrypt(&mut sm2::elliptic_curve::common::getrandom::SysRng, &tmk)
        .unwrap();
        let (_, der) = pem_block(&private, &["PRIVATE KEY"]).unwrap();
        let key = decrypt_tmk("sm4", &der, &ct).unwrap();
        assert_eq!(key.as_slice(), &tmk);
        assert!(decrypt_tmk("aes-256", &der, &ct).is_err());
        assert!(terminal_key_from_pem("no pem here", TerminalKeyKind::Sm2).is_err());
    }
}
