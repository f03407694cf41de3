//! The payload encodings of [`Request`] and [`Response`] (layouts in `PROTOCOL.md`).

use super::{cmd, shape, Request, Response, Shape};
use crate::types::{
    ChipInfo, CipherMech, DomainInfo, HashAlg, KeyBlob, KeyId, KeyRef, KeySpec, KeyTemplate,
    KeyType, KeyUsage, NewKey, PublicKey, SecretBytes, SignMech, WrapMech,
};
use crate::{ChipError, Result};

impl Request {
    /// The request payload.
    ///
    /// A `bytes` field longer than 65 535 bytes cannot be represented; its length is written as
    /// `0xFFFF` and the whole encoding is then longer than [`crate::frame::MAX_PAYLOAD`], so
    /// [`crate::frame::encode`] refuses it with [`ChipError::DataLenRange`]. Payloads of
    /// [`ImportKey`](Self::ImportKey) carry clear key material: zeroize them after use.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        match self {
            Self::Info | Self::SelfTest | Self::DomainGenerate => {}
            Self::GenerateKeyPair(t) | Self::GenerateSecretKey(t) => put_template(&mut w, t),
            Self::ImportKey { template, material } => {
                put_template(&mut w, template);
                put_bytes(&mut w, material.expose());
            }
            Self::LoadKey(blob) => put_bytes(&mut w, blob.as_bytes()),
            Self::EvictKey(id) | Self::PublicKey(id) => w.extend_from_slice(&id.0),
            Self::Sign { key, mech, data } => {
                w.extend_from_slice(&key.0);
                put_sign_mech(&mut w, mech);
                put_bytes(&mut w, data);
            }
            Self::Verify {
                key,
                mech,
                data,
                signature,
            } => {
                put_key_ref(&mut w, key);
                put_sign_mech(&mut w, mech);
                put_bytes(&mut w, data);
                put_bytes(&mut w, signature);
            }
            Self::Encrypt { key, mech, data } => {
                put_key_ref(&mut w, key);
                put_cipher_mech(&mut w, mech);
                put_bytes(&mut w, data);
            }
            Self::Decrypt { key, mech, data } => {
                w.extend_from_slice(&key.0);
                put_cipher_mech(&mut w, mech);
                put_bytes(&mut w, data);
            }
            Self::WrapKey {
                wrapping,
                mech,
                target,
            } => {
                put_key_ref(&mut w, wrapping);
                put_wrap_mech(&mut w, mech);
                w.extend_from_slice(&target.0);
            }
            Self::UnwrapKey {
                unwrapping,
                mech,
                wrapped,
                target,
            } => {
                w.extend_from_slice(&unwrapping.0);
                put_wrap_mech(&mut w, mech);
                put_bytes(&mut w, wrapped);
                put_template(&mut w, target);
            }
            Self::DeriveEcdh {
                key,
                peer_point,
                target,
            } => {
                w.extend_from_slice(&key.0);
                put_bytes(&mut w, peer_point);
                put_template(&mut w, target);
            }
            Self::Random(n) => w.extend_from_slice(&n.to_be_bytes()),
            Self::DomainExport(b) | Self::DomainImport(b) => put_bytes(&mut w, b),
            Self::IdentityProof { challenge, nonce } => {
                put_bytes(&mut w, challenge);
                put_bytes(&mut w, nonce);
            }
        }
        w
    }

    /// Parses the payload of a request frame with command code `cmd`.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for an unknown command; [`ChipError::MechanismInvalid`] for an
    /// unknown mechanism tag or hash; [`ChipError::DataInvalid`] for any other malformed payload,
    /// including trailing bytes.
    pub fn decode(cmd: u8, payload: &[u8]) -> Result<Request> {
        let mut r = Reader::new(payload);
        let req = match cmd {
            cmd::INFO => Self::Info,
            cmd::SELF_TEST => Self::SelfTest,
            cmd::GENERATE_KEY_PAIR => Self::GenerateKeyPair(r.template()?),
            cmd::GENERATE_SECRET_KEY => Self::GenerateSecretKey(r.template()?),
            cmd::IMPORT_KEY => Self::ImportKey {
                template: r.template()?,
                material: SecretBytes::new(r.bytes("material")?.to_vec()),
            },
            cmd::LOAD_KEY => Self::LoadKey(KeyBlob(r.bytes("blob")?.to_vec())),
            cmd::EVICT_KEY => Self::EvictKey(r.key_id()?),
            cmd::PUBLIC_KEY => Self::PublicKey(r.key_id()?),
            cmd::SIGN => Self::Sign {
                key: r.key_id()?,
                mech: r.sign_mech()?,
                data: r.bytes("data")?.to_vec(),
            },
            cmd::VERIFY => Self::Verify {
                key: r.key_ref()?,
                mech: r.sign_mech()?,
                data: r.bytes("data")?.to_vec(),
                signature: r.bytes("signature")?.to_vec(),
            },
            cmd::ENCRYPT => Self::Encrypt {
                key: r.key_ref()?,
                mech: r.cipher_mech()?,
                data: r.bytes("data")?.to_vec(),
            },
            cmd::DECRYPT => Self::Decrypt {
                key: r.key_id()?,
                mech: r.cipher_mech()?,
                data: r.bytes("data")?.to_vec(),
            },
            cmd::WRAP_KEY => Self::WrapKey {
                wrapping: r.key_ref()?,
                mech: r.wrap_mech()?,
                target: r.key_id()?,
            },
            cmd::UNWRAP_KEY => Self::UnwrapKey {
                unwrapping: r.key_id()?,
                mech: r.wrap_mech()?,
                wrapped: r.bytes("wrapped key")?.to_vec(),
                target: r.template()?,
            },
            cmd::DERIVE_ECDH => Self::DeriveEcdh {
                key: r.key_id()?,
                peer_point: r.bytes("peer point")?.to_vec(),
                target: r.template()?,
            },
            cmd::RANDOM => Self::Random(r.u32("length")?),
            cmd::DOMAIN_GENERATE => Self::DomainGenerate,
            cmd::DOMAIN_EXPORT => Self::DomainExport(r.bytes("identity key")?.to_vec()),
            cmd::DOMAIN_IMPORT => Self::DomainImport(r.bytes("package")?.to_vec()),
            cmd::IDENTITY_PROOF => Self::IdentityProof {
                challenge: r.bytes("challenge")?.to_vec(),
                nonce: r.bytes("nonce")?.to_vec(),
            },
            other => {
                return Err(ChipError::Protocol(format!(
                    "unknown command 0x{other:02x}"
                )))
            }
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// The response payload. As with [`Request::encode`], a `bytes` field over 65 535 bytes
    /// makes an encoding that [`crate::frame::encode`] refuses.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::new();
        match self {
            Self::Info(info) => put_chip_info(&mut w, info),
            Self::Done => {}
            Self::NewKey(k) => put_new_key(&mut w, k),
            Self::KeyId(id) => w.extend_from_slice(&id.0),
            Self::PublicKey(pk) => put_public_key(&mut w, pk),
            Self::Bytes(b) => put_bytes(&mut w, b),
            Self::Domain(d) => w.extend_from_slice(&d.kcv),
        }
        w
    }

    /// Parses the payload of a successful (`STATUS_OK`) response to command `cmd`.
    ///
    /// # Errors
    /// [`ChipError::Protocol`] for an unknown command or a malformed payload.
    pub fn decode(cmd: u8, payload: &[u8]) -> Result<Response> {
        let Some(shape) = shape(cmd) else {
            return Err(ChipError::Protocol(format!(
                "response to unknown command 0x{cmd:02x}"
            )));
        };
        let mut r = Reader::new(payload);
        let parsed = (|| {
            let resp = match shape {
                Shape::Info => Self::Info(r.chip_info()?),
                Shape::Done => Self::Done,
                Shape::NewKey => Self::NewKey(r.new_key()?),
                Shape::KeyId => Self::KeyId(r.key_id()?),
                Shape::PublicKey => Self::PublicKey(r.public_key()?),
                Shape::Bytes => Self::Bytes(r.bytes("data")?.to_vec()),
                Shape::Domain => Self::Domain(DomainInfo {
                    kcv: r.array("domain kcv")?,
                }),
            };
            r.finish()?;
            Ok(resp)
        })();
        parsed.map_err(|e: ChipError| {
            let name = cmd::name(cmd).unwrap_or("unknown");
            ChipError::Protocol(format!("malformed {name} response: {}", detail(&e)))
        })
    }
}

/// The detail text of an error made by [`Reader`] (without the variant's prefix).
fn detail(e: &ChipError) -> String {
    match e {
        ChipError::DataInvalid(s) | ChipError::MechanismInvalid(s) => s.clone(),
        other => other.to_string(),
    }
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    // Over-long fields are marked with the largest length; see Request::encode.
    let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
    w.extend_from_slice(&len.to_be_bytes());
    w.extend_from_slice(b);
}

fn put_template(w: &mut Vec<u8>, t: &KeyTemplate) {
    w.extend_from_slice(&t.id.0);
    put_spec(w, t.spec);
    w.extend_from_slice(&t.usage.bits().to_be_bytes());
}

fn put_spec(w: &mut Vec<u8>, s: KeySpec) {
    w.push(s.key_type as u8);
    w.extend_from_slice(&s.bits.to_be_bytes());
}

fn put_public_key(w: &mut Vec<u8>, pk: &PublicKey) {
    match pk {
        PublicKey::EcP256(point) => {
            w.push(KeyType::EcP256 as u8);
            put_bytes(w, point);
        }
        PublicKey::Sm2(point) => {
            w.push(KeyType::Sm2 as u8);
            put_bytes(w, point);
        }
        PublicKey::Rsa { n, e } => {
            w.push(KeyType::Rsa as u8);
            put_bytes(w, n);
            put_bytes(w, e);
        }
    }
}

const KEY_REF_LOADED: u8 = 0x00;
const KEY_REF_PUBLIC: u8 = 0x01;

fn put_key_ref(w: &mut Vec<u8>, k: &KeyRef) {
    match k {
        KeyRef::Loaded(id) => {
            w.push(KEY_REF_LOADED);
            w.extend_from_slice(&id.0);
        }
        KeyRef::Public(pk) => {
            w.push(KEY_REF_PUBLIC);
            put_public_key(w, pk);
        }
    }
}

pub(super) mod tag {
    pub const SIGN_ECDSA: u8 = 0x01;
    pub const SIGN_RSA_PKCS1: u8 = 0x02;
    pub const SIGN_RSA_PSS: u8 = 0x03;
    pub const SIGN_SM2: u8 = 0x04;
    pub const SIGN_SM2_DIGEST: u8 = 0x05;
    pub const SIGN_HMAC: u8 = 0x06;
    pub const SIGN_AES_CMAC: u8 = 0x07;

    pub const CIPHER_AES_GCM: u8 = 0x01;
    pub const CIPHER_AES_CBC: u8 = 0x02;
    pub const CIPHER_RSA_OAEP: u8 = 0x03;
    pub const CIPHER_SM2: u8 = 0x04;
    pub const CIPHER_SM4_CBC: u8 = 0x05;

    pub const WRAP_AES_KW: u8 = 0x01;
    pub const WRAP_AES_KWP: u8 = 0x02;
    pub const WRAP_RSA_OAEP: u8 = 0x03;
    pub const WRAP_SM2: u8 = 0x04;
}

fn put_sign_mech(w: &mut Vec<u8>, m: &SignMech) {
    match m {
        SignMech::Ecdsa => w.push(tag::SIGN_ECDSA),
        SignMech::RsaPkcs1 => w.push(tag::SIGN_RSA_PKCS1),
        SignMech::RsaPss { hash } => w.extend_from_slice(&[tag::SIGN_RSA_PSS, *hash as u8]),
        SignMech::Sm2 { user_id } => {
            w.push(tag::SIGN_SM2);
            put_bytes(w, user_id);
        }
        SignMech::Sm2Digest => w.push(tag::SIGN_SM2_DIGEST),
        SignMech::Hmac(hash) => w.extend_from_slice(&[tag::SIGN_HMAC, *hash as u8]),
        SignMech::AesCmac => w.push(tag::SIGN_AES_CMAC),
    }
}

fn put_cipher_mech(w: &mut Vec<u8>, m: &CipherMech) {
    match m {
        CipherMech::AesGcm { iv, aad, tag_bits } => {
            w.push(tag::CIPHER_AES_GCM);
            put_bytes(w, iv);
            put_bytes(w, aad);
            w.push(*tag_bits);
        }
        CipherMech::AesCbc { iv, pad } => {
            w.push(tag::CIPHER_AES_CBC);
            w.extend_from_slice(iv);
            w.push(u8::from(*pad));
        }
        CipherMech::RsaOaep { hash, label } => {
            w.extend_from_slice(&[tag::CIPHER_RSA_OAEP, *hash as u8]);
            put_bytes(w, label);
        }
        CipherMech::Sm2 => w.push(tag::CIPHER_SM2),
        CipherMech::Sm4Cbc { iv, pad } => {
            w.push(tag::CIPHER_SM4_CBC);
            w.extend_from_slice(iv);
            w.push(u8::from(*pad));
        }
    }
}

fn put_wrap_mech(w: &mut Vec<u8>, m: &WrapMech) {
    match m {
        WrapMech::AesKeyWrap => w.push(tag::WRAP_AES_KW),
        WrapMech::AesKeyWrapPad => w.push(tag::WRAP_AES_KWP),
        WrapMech::RsaOaep { hash, label } => {
            w.extend_from_slice(&[tag::WRAP_RSA_OAEP, *hash as u8]);
            put_bytes(w, label);
        }
        WrapMech::Sm2 => w.push(tag::WRAP_SM2),
    }
}

fn put_new_key(w: &mut Vec<u8>, k: &NewKey) {
    put_bytes(w, k.blob.as_bytes());
    match &k.public {
        None => w.push(0),
        Some(pk) => {
            w.push(1);
            put_public_key(w, pk);
        }
    }
}

fn put_chip_info(w: &mut Vec<u8>, i: &ChipInfo) {
    put_bytes(w, i.model.as_bytes());
    put_bytes(w, i.serial.as_bytes());
    put_bytes(w, i.firmware.as_bytes());
    w.extend_from_slice(&i.slots.to_be_bytes());
    w.extend_from_slice(&i.loaded.to_be_bytes());
    put_bytes(w, &i.identity_key);
    match &i.domain {
        None => w.push(0),
        Some(d) => {
            w.push(1);
            w.extend_from_slice(&d.kcv);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding

/// A cursor over a payload. Every read is bounds-checked; errors are
/// [`ChipError::DataInvalid`], or [`ChipError::MechanismInvalid`] for unknown mechanisms.
struct Reader<'a> {
    rest: &'a [u8],
    /// Offset of `rest` in the payload, for error messages.
    at: usize,
}

fn malformed(msg: String) -> ChipError {
    ChipError::DataInvalid(msg)
}

impl<'a> Reader<'a> {
    fn new(payload: &'a [u8]) -> Self {
        Self {
            rest: payload,
            at: 0,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(malformed(format!(
                "{what} at offset {}: needs {n} bytes, {} left",
                self.at,
                self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        self.at += n;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let b = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn bool(&mut self, what: &str) -> Result<bool> {
        let at = self.at;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(malformed(format!(
                "{what} at offset {at}: 0x{other:02x} is not a bool"
            ))),
        }
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8]> {
        let len = self.u16(what)?;
        self.take(usize::from(len), what)
    }

    fn str(&mut self, what: &str) -> Result<String> {
        let at = self.at;
        let b = self.bytes(what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| malformed(format!("{what} at offset {at} is not UTF-8")))
    }

    fn key_id(&mut self) -> Result<KeyId> {
        Ok(KeyId(self.array("key id")?))
    }

    fn template(&mut self) -> Result<KeyTemplate> {
        let id = self.key_id()?;
        let spec = self.spec()?;
        let at = self.at;
        let bits = self.u32("usage")?;
        let usage = KeyUsage::from_bits(bits).ok_or_else(|| {
            malformed(format!(
                "usage at offset {at}: unknown bits in 0x{bits:08x}"
            ))
        })?;
        Ok(KeyTemplate { id, spec, usage })
    }

    fn spec(&mut self) -> Result<KeySpec> {
        let at = self.at;
        let t = self.u8("key type")?;
        let key_type = KeyType::from_u8(t)
            .ok_or_else(|| malformed(format!("key type at offset {at}: unknown 0x{t:02x}")))?;
        let bits = self.u32("key bits")?;
        Ok(KeySpec { key_type, bits })
    }

    fn hash(&mut self) -> Result<HashAlg> {
        let at = self.at;
        let h = self.u8("hash")?;
        HashAlg::from_u8(h).ok_or_else(|| {
            ChipError::MechanismInvalid(format!("hash at offset {at}: unknown 0x{h:02x}"))
        })
    }

    fn public_key(&mut self) -> Result<PublicKey> {
        let at = self.at;
        let t = self.u8("public key type")?;
        match KeyType::from_u8(t) {
            Some(KeyType::EcP256) => Ok(PublicKey::EcP256(self.bytes("EC point")?.to_vec())),
            Some(KeyType::Sm2) => Ok(PublicKey::Sm2(self.bytes("SM2 point")?.to_vec())),
            Some(KeyType::Rsa) => Ok(PublicKey::Rsa {
                n: self.bytes("RSA modulus")?.to_vec(),
                e: self.bytes("RSA exponent")?.to_vec(),
            }),
            _ => Err(malformed(format!(
                "public key type at offset {at}: unknown 0x{t:02x}"
            ))),
        }
    }

    fn key_ref(&mut self) -> Result<KeyRef> {
        let at = self.at;
        match self.u8("key reference")? {
            KEY_REF_LOADED => Ok(KeyRef::Loaded(self.key_id()?)),
            KEY_REF_PUBLIC => Ok(KeyRef::Public(self.public_key()?)),
            other => Err(malformed(format!(
                "key reference at offset {at}: unknown tag 0x{other:02x}"
            ))),
        }
    }

    fn sign_mech(&mut self) -> Result<SignMech> {
        let at = self.at;
        Ok(match self.u8("sign mechanism")? {
            tag::SIGN_ECDSA => SignMech::Ecdsa,
            tag::SIGN_RSA_PKCS1 => SignMech::RsaPkcs1,
            tag::SIGN_RSA_PSS => SignMech::RsaPss { hash: self.hash()? },
            tag::SIGN_SM2 => SignMech::Sm2 {
                user_id: self.bytes("SM2 user id")?.to_vec(),
            },
            tag::SIGN_SM2_DIGEST => SignMech::Sm2Digest,
            tag::SIGN_HMAC => SignMech::Hmac(self.hash()?),
            tag::SIGN_AES_CMAC => SignMech::AesCmac,
            other => {
                return Err(ChipError::MechanismInvalid(format!(
                    "sign mechanism at offset {at}: unknown tag 0x{other:02x}"
                )))
            }
        })
    }

    fn cipher_mech(&mut self) -> Result<CipherMech> {
        let at = self.at;
        Ok(match self.u8("cipher mechanism")? {
            tag::CIPHER_AES_GCM => CipherMech::AesGcm {
                iv: self.bytes("GCM iv")?.to_vec(),
                aad: self.bytes("GCM aad")?.to_vec(),
                tag_bits: self.u8("GCM tag bits")?,
            },
            tag::CIPHER_AES_CBC => CipherMech::AesCbc {
                iv: self.array("CBC iv")?,
                pad: self.bool("CBC pad")?,
            },
            tag::CIPHER_RSA_OAEP => CipherMech::RsaOaep {
                hash: self.hash()?,
                label: self.bytes("OAEP label")?.to_vec(),
            },
            tag::CIPHER_SM2 => CipherMech::Sm2,
            tag::CIPHER_SM4_CBC => CipherMech::Sm4Cbc {
                iv: self.array("CBC iv")?,
                pad: self.bool("CBC pad")?,
            },
            other => {
                return Err(ChipError::MechanismInvalid(format!(
                    "cipher mechanism at offset {at}: unknown tag 0x{other:02x}"
                )))
            }
        })
    }

    fn wrap_mech(&mut self) -> Result<WrapMech> {
        let at = self.at;
        Ok(match self.u8("wrap mechanism")? {
            tag::WRAP_AES_KW => WrapMech::AesKeyWrap,
            tag::WRAP_AES_KWP => WrapMech::AesKeyWrapPad,
            tag::WRAP_RSA_OAEP => WrapMech::RsaOaep {
                hash: self.hash()?,
                label: self.bytes("OAEP label")?.to_vec(),
            },
            tag::WRAP_SM2 => WrapMech::Sm2,
            other => {
                return Err(ChipError::MechanismInvalid(format!(
                    "wrap mechanism at offset {at}: unknown tag 0x{other:02x}"
                )))
            }
        })
    }

    fn new_key(&mut self) -> Result<NewKey> {
        let blob = KeyBlob(self.bytes("blob")?.to_vec());
        let public = if self.bool("public key present")? {
            Some(self.public_key()?)
        } else {
            None
        };
        Ok(NewKey { blob, public })
    }

    fn chip_info(&mut self) -> Result<ChipInfo> {
        Ok(ChipInfo {
            model: self.str("model")?,
            serial: self.str("serial")?,
            firmware: self.str("firmware")?,
            slots: self.u32("slots")?,
            loaded: self.u32("loaded")?,
            identity_key: self.bytes("identity key")?.to_vec(),
            domain: if self.bool("domain present")? {
                Some(DomainInfo {
                    kcv: self.array("domain kcv")?,
                })
            } else {
                None
            },
        })
    }

    fn finish(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!(
                "{} trailing bytes at offset {}",
                self.rest.len(),
                self.at
            )))
        }
    }
}
