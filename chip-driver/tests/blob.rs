//! Key blobs and the domain key: blobs move between chips of one domain only, every altered bit
//! or attribute is refused, domain packages are bound to their recipient chip, key slots are
//! limited, usage flags are enforced, and no secret shows in debug output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::{aead, agreement, hkdf, hmac};
use cloudkey_chip::soft::{SoftChip, SoftChipConfig, DOMAIN_PACKAGE_LEN};
use cloudkey_chip::{
    ChipError, ChipExt, CipherMech, DomainInfo, HashAlg, KeyBlob, KeyId, KeyRef, KeySpec,
    KeyTemplate, KeyType, KeyUsage, NewKey, PublicKey, SignMech, WrapMech, BLOB_HEADER_LEN,
};
use p256::ecdsa::signature::hazmat::PrehashVerifier;

fn new_chip() -> SoftChip {
    SoftChip::new(SoftChipConfig::default()).expect("chip powers on")
}

fn chip_with_slots(slots: u32) -> SoftChip {
    SoftChip::new(SoftChipConfig {
        slots,
        ..SoftChipConfig::default()
    })
    .expect("chip powers on")
}

/// A chip with a fresh domain.
fn chip() -> SoftChip {
    let chip = new_chip();
    chip.domain_generate().unwrap();
    chip
}

/// Gives `to` the domain of `from`, chip to chip.
fn transfer_domain(from: &SoftChip, to: &SoftChip) -> DomainInfo {
    let package = from
        .domain_export(&to.info().unwrap().identity_key)
        .unwrap();
    assert_eq!(package.len(), DOMAIN_PACKAGE_LEN);
    to.domain_import(&package).unwrap()
}

fn template(spec: KeySpec, usage: KeyUsage) -> KeyTemplate {
    KeyTemplate {
        id: KeyId::random(),
        spec,
        usage,
    }
}

fn p256(chip: &SoftChip, usage: KeyUsage) -> NewKey {
    chip.generate_key_pair(template(KeySpec::EC_P256, usage))
        .unwrap()
}

fn verifier(new: &NewKey) -> p256::ecdsa::VerifyingKey {
    let Some(PublicKey::EcP256(point)) = &new.public else {
        panic!("P-256 public key")
    };
    p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap()
}

fn digest(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

const SIGNING: KeyUsage = KeyUsage::SIGN.union(KeyUsage::VERIFY);

#[test]
fn a_blob_loads_on_a_chip_that_received_the_domain_chip_to_chip() {
    let a = chip();
    let b = new_chip();
    assert_eq!(b.info().unwrap().domain, None);
    let domain = transfer_domain(&a, &b);
    assert_eq!(Some(domain), a.info().unwrap().domain);
    assert_eq!(b.info().unwrap().domain, Some(domain));

    let new = p256(&a, SIGNING);
    let header = new.blob.header().unwrap();
    assert_eq!(header.domain_kcv, domain.kcv);
    assert_eq!(new.blob.as_bytes().len(), BLOB_HEADER_LEN + 12 + 32 + 16);

    let id = b.load_key(&new.blob).unwrap();
    assert_eq!(id, header.id);
    assert_eq!(b.public_key(id).unwrap(), new.public.clone().unwrap());
    let d = digest(b"signed on chip B");
    let sig = b.sign(id, &SignMech::Ecdsa, &d).unwrap();
    // Verified with A's public key, by RustCrypto and by chip A.
    verifier(&new)
        .verify_prehash(&d, &p256::ecdsa::Signature::from_slice(&sig).unwrap())
        .unwrap();
    a.verify(
        &KeyRef::Public(new.public.clone().unwrap()),
        &SignMech::Ecdsa,
        &d,
        &sig,
    )
    .unwrap();
    // And the key works on A too, from the same blob.
    let on_a = a.load_key(&new.blob).unwrap();
    a.verify(&KeyRef::Loaded(on_a), &SignMech::Ecdsa, &d, &sig)
        .unwrap();

    // Secret keys move too.
    let aes = a
        .generate_secret_key(template(
            KeySpec::AES_256,
            KeyUsage::ENCRYPT | KeyUsage::DECRYPT,
        ))
        .unwrap();
    let (ka, kb) = (
        a.load_key(&aes.blob).unwrap(),
        b.load_key(&aes.blob).unwrap(),
    );
    let mech = CipherMech::AesGcm {
        iv: vec![1; 12],
        aad: vec![],
        tag_bits: 128,
    };
    let ct = a
        .encrypt(&KeyRef::Loaded(ka), &mech, b"across chips")
        .unwrap();
    assert_eq!(b.decrypt(kb, &mech, &ct).unwrap(), b"across chips");
}

#[test]
fn a_chip_of_another_domain_refuses_the_blob() {
    let a = chip();
    let c = chip();
    let new = p256(&a, SIGNING);
    let kcv = |chip: &SoftChip| hex::encode(chip.info().unwrap().domain.unwrap().kcv);
    assert_eq!(
        c.load_key(&new.blob),
        Err(ChipError::WrongDomain {
            blob: kcv(&a),
            chip: kcv(&c)
        })
    );
    // A chip without a domain cannot load or create keys.
    let bare = new_chip();
    assert_eq!(bare.load_key(&new.blob), Err(ChipError::NoDomain));
    assert_eq!(
        bare.generate_key_pair(template(KeySpec::EC_P256, SIGNING)),
        Err(ChipError::NoDomain)
    );
    assert_eq!(
        bare.domain_export(&a.info().unwrap().identity_key),
        Err(ChipError::NoDomain)
    );
}

#[test]
fn every_single_bit_flip_of_a_blob_is_refused() {
    let chip = chip();
    let new = p256(&chip, SIGNING);
    let bytes = new.blob.as_bytes();
    let mut outcomes = std::collections::BTreeMap::<&str, usize>::new();
    for bit in 0..bytes.len() * 8 {
        let mut flipped = bytes.to_vec();
        flipped[bit / 8] ^= 1 << (bit % 8);
        let result = chip.load_key(&KeyBlob(flipped));
        let kind = match result {
            Err(ChipError::BlobAuthFailed) => "auth",
            Err(ChipError::WrongDomain { .. }) => {
                assert!(
                    (1..9).contains(&(bit / 8)),
                    "WrongDomain for a flip outside the kcv"
                );
                "domain"
            }
            Err(ChipError::BlobInvalid(_)) => {
                assert!(
                    bit / 8 < BLOB_HEADER_LEN,
                    "BlobInvalid for a flip outside the header"
                );
                "invalid"
            }
            other => panic!("bit {bit}: a flipped blob gave {other:?}"),
        };
        *outcomes.entry(kind).or_default() += 1;
    }
    assert_eq!(outcomes["domain"], 64);
    assert!(outcomes["auth"] >= (bytes.len() - BLOB_HEADER_LEN) * 8);
    assert_eq!(
        chip.info().unwrap().loaded,
        0,
        "no flipped blob took a slot"
    );
    // The untouched blob still loads.
    chip.load_key(&new.blob).unwrap();
    // Truncated blobs are malformed or fail authentication.
    for len in [
        0,
        10,
        BLOB_HEADER_LEN,
        BLOB_HEADER_LEN + 27,
        bytes.len() - 1,
    ] {
        let result = chip.load_key(&KeyBlob(bytes[..len].to_vec()));
        assert!(
            matches!(
                result,
                Err(ChipError::BlobInvalid(_) | ChipError::BlobAuthFailed)
            ),
            "{len} bytes: {result:?}"
        );
    }
}

#[test]
fn a_blob_cannot_be_replayed_under_other_attributes() {
    let chip = chip();
    let new = p256(&chip, SIGNING);
    let other = p256(&chip, SIGNING);
    let bytes = new.blob.as_bytes();

    // Grant EXTRACTABLE (usage is bytes 28..32, big-endian; EXTRACTABLE is bit 7).
    let mut extractable = bytes.to_vec();
    extractable[31] |= 0x80;
    let header = KeyBlob(extractable.clone()).header().unwrap();
    assert!(header.usage.contains(KeyUsage::EXTRACTABLE));
    assert_eq!(
        chip.load_key(&KeyBlob(extractable)),
        Err(ChipError::BlobAuthFailed)
    );

    // Add DERIVE and drop NEVER_EXTRACTABLE.
    let mut usage = new.blob.header().unwrap().usage;
    usage |= KeyUsage::DERIVE;
    usage.remove(KeyUsage::NEVER_EXTRACTABLE);
    let mut changed = bytes.to_vec();
    changed[28..32].copy_from_slice(&usage.bits().to_be_bytes());
    assert_eq!(
        chip.load_key(&KeyBlob(changed)),
        Err(ChipError::BlobAuthFailed)
    );

    // Take another key's id.
    let mut swapped = bytes.to_vec();
    swapped[9..25].copy_from_slice(&other.blob.header().unwrap().id.0);
    assert_eq!(
        chip.load_key(&KeyBlob(swapped)),
        Err(ChipError::BlobAuthFailed)
    );

    // Splice another blob's sealed body under this header.
    let mut spliced = bytes[..BLOB_HEADER_LEN].to_vec();
    spliced.extend_from_slice(&other.blob.as_bytes()[BLOB_HEADER_LEN..]);
    assert_eq!(
        chip.load_key(&KeyBlob(spliced)),
        Err(ChipError::BlobAuthFailed)
    );

    // Claim another key type of a valid size (P-256 -> SM2).
    let mut retyped = bytes.to_vec();
    retyped[25] = KeyType::Sm2 as u8;
    assert_eq!(
        chip.load_key(&KeyBlob(retyped)),
        Err(ChipError::BlobAuthFailed)
    );
    assert_eq!(chip.info().unwrap().loaded, 0);
}

#[test]
fn domain_packages_are_bound_to_their_recipient_and_to_every_bit() {
    let a = chip();
    let b = new_chip();
    let c = new_chip();
    let package = a.domain_export(&b.info().unwrap().identity_key).unwrap();
    assert_eq!(package.len(), DOMAIN_PACKAGE_LEN);

    // Made for B: C cannot open it.
    assert!(matches!(
        c.domain_import(&package),
        Err(ChipError::DomainPackageInvalid(_))
    ));
    assert_eq!(c.info().unwrap().domain, None);

    // Every single bit flip is refused by B.
    for bit in 0..package.len() * 8 {
        let mut flipped = package.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        match b.domain_import(&flipped) {
            Err(ChipError::DomainPackageInvalid(_)) => {}
            other => panic!("bit {bit}: a flipped package gave {other:?}"),
        }
    }
    assert_eq!(b.info().unwrap().domain, None);
    for len in [0, 1, DOMAIN_PACKAGE_LEN - 1] {
        assert!(matches!(
            b.domain_import(&package[..len]),
            Err(ChipError::DomainPackageInvalid(_))
        ));
    }
    let mut longer = package.clone();
    longer.push(0);
    assert!(matches!(
        b.domain_import(&longer),
        Err(ChipError::DomainPackageInvalid(_))
    ));

    // The real package works, and importing it again is idempotent.
    let info = b.domain_import(&package).unwrap();
    assert_eq!(Some(info), a.info().unwrap().domain);
    assert_eq!(b.domain_import(&package).unwrap(), info);
    // A fresh package of the same domain is accepted too.
    assert_eq!(transfer_domain(&a, &b), info);

    // A chip holding another domain refuses a different domain key.
    let d = chip();
    let package_for_d = a.domain_export(&d.info().unwrap().identity_key).unwrap();
    assert_eq!(
        d.domain_import(&package_for_d),
        Err(ChipError::DomainAlreadySet)
    );
    assert_eq!(d.domain_generate(), Err(ChipError::DomainAlreadySet));
    assert_eq!(a.domain_generate(), Err(ChipError::DomainAlreadySet));

    // Bad recipient identities.
    let mut off_curve = b.info().unwrap().identity_key;
    off_curve[64] ^= 1;
    assert!(matches!(
        a.domain_export(&off_curve),
        Err(ChipError::DataInvalid(_))
    ));
    assert!(matches!(
        a.domain_export(&[4u8; 33]),
        Err(ChipError::DataInvalid(_))
    ));
}

/// Builds a domain package exactly as documented (`DOMAIN_PACKAGE_LEN` in `soft.rs`), from a
/// domain key the test chooses, with aws-lc-rs only.
fn package_by_the_book(domain_key: &[u8; 32], recipient: &[u8]) -> Vec<u8> {
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, domain_key),
        b"cloudkey domain kcv",
    );
    let kcv = &tag.as_ref()[..8];
    let eph = agreement::PrivateKey::generate(&agreement::ECDH_P256).unwrap();
    let eph_pub = eph.compute_public_key().unwrap().as_ref().to_vec();
    let mut key = [0u8; 32];
    agreement::agree(
        &eph,
        agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, recipient),
        (),
        |z| {
            let salt = [&eph_pub[..], recipient].concat();
            hkdf::Salt::new(hkdf::HKDF_SHA256, &salt)
                .extract(z)
                .expand(&[b"cloudkey domain transfer v1"], hkdf::HKDF_SHA256)
                .unwrap()
                .fill(&mut key)
                .unwrap();
            Ok(())
        },
    )
    .unwrap();
    let nonce = [0x42u8; 12];
    let aad = [&[1u8][..], kcv, &eph_pub, recipient].concat();
    let mut sealed = domain_key.to_vec();
    aead::LessSafeKey::new(aead::UnboundKey::new(&aead::AES_256_GCM, &key).unwrap())
        .seal_in_place_append_tag(
            aead::Nonce::assume_unique_for_key(nonce),
            aead::Aad::from(&aad),
            &mut sealed,
        )
        .unwrap();
    [&[1u8][..], kcv, &eph_pub, &nonce, &sealed].concat()
}

#[test]
fn the_documented_package_layout_is_the_real_one_and_debug_shows_no_secret() {
    let domain_key = [0x5cu8; 32];
    let b = new_chip();
    let package = package_by_the_book(&domain_key, &b.info().unwrap().identity_key);
    let info = b.domain_import(&package).unwrap();
    let tag = hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &domain_key),
        b"cloudkey domain kcv",
    );
    assert_eq!(info.kcv[..], tag.as_ref()[..8]);

    // Keys whose values the test knows.
    let aes_value = [0xa7u8; 32];
    let scalar =
        hex::decode("c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721").unwrap();
    let aes = b
        .import_key(template(KeySpec::AES_256, KeyUsage::ENCRYPT), &aes_value)
        .unwrap();
    let ec = b
        .import_key(template(KeySpec::EC_P256, KeyUsage::SIGN), &scalar)
        .unwrap();
    let sm2 = b
        .import_key(template(KeySpec::SM2, KeyUsage::SIGN), &scalar)
        .unwrap();
    let hmac_key = b"debug-me-not secret".to_vec();
    let gs = b
        .import_key(
            template(
                KeySpec::generic_secret(hmac_key.len() as u32),
                KeyUsage::SIGN,
            ),
            &hmac_key,
        )
        .unwrap();
    for new in [&aes, &ec, &sm2, &gs] {
        b.load_key(&new.blob).unwrap();
    }
    let debug = format!(
        "{b:?} {aes:?} {ec:?} {sm2:?} {gs:?} {:?}",
        b.info().unwrap()
    );
    assert!(debug.contains("cloudkey-soft"), "{debug}");
    for secret in [&domain_key[..], &aes_value, &scalar, &hmac_key] {
        let hex_lower = hex::encode(secret);
        let hex_upper = hex_lower.to_uppercase();
        let bytes_list = format!("{:?}", secret);
        for needle in [&hex_lower, &hex_upper, &bytes_list] {
            assert!(
                !debug.contains(needle.as_str()),
                "a secret shows in debug output: {debug}"
            );
        }
    }
    assert!(!debug.contains("debug-me-not"));
    // And every key made there works with the known values.
    let chip_b_aes = b.load_key(&aes.blob).unwrap();
    let mech = CipherMech::AesCbc {
        iv: [0; 16],
        pad: false,
    };
    let ct = b
        .encrypt(&KeyRef::Loaded(chip_b_aes), &mech, &[0u8; 16])
        .unwrap();
    let expected = {
        use aws_lc_rs::cipher::{EncryptingKey, EncryptionContext, UnboundCipherKey, AES_256};
        let key = EncryptingKey::cbc(UnboundCipherKey::new(&AES_256, &aes_value).unwrap()).unwrap();
        let mut buf = [0u8; 16];
        key.less_safe_encrypt(&mut buf, EncryptionContext::Iv128([0u8; 16].into()))
            .unwrap();
        buf
    };
    assert_eq!(ct, expected);
}

#[test]
fn key_slots_are_limited_and_eviction_frees_them() {
    let chip = chip_with_slots(3);
    chip.domain_generate().unwrap();
    let keys: Vec<NewKey> = (0..4).map(|_| p256(&chip, SIGNING)).collect();
    let ids: Vec<KeyId> = keys[..3]
        .iter()
        .map(|k| chip.load_key(&k.blob).unwrap())
        .collect();
    assert_eq!(chip.info().unwrap().loaded, 3);
    assert_eq!(chip.load_key(&keys[3].blob), Err(ChipError::SlotsFull(3)));
    // Reloading a loaded key takes no slot and changes nothing.
    assert_eq!(chip.load_key(&keys[0].blob).unwrap(), ids[0]);
    assert_eq!(chip.info().unwrap().loaded, 3);

    chip.evict_key(ids[1]).unwrap();
    assert_eq!(chip.info().unwrap().loaded, 2);
    assert_eq!(
        chip.sign(ids[1], &SignMech::Ecdsa, &digest(b"x")),
        Err(ChipError::KeyNotLoaded(ids[1]))
    );
    let fourth = chip.load_key(&keys[3].blob).unwrap();
    chip.sign(fourth, &SignMech::Ecdsa, &digest(b"x")).unwrap();
    assert_eq!(chip.load_key(&keys[1].blob), Err(ChipError::SlotsFull(3)));
    // Evicting a key that is not loaded succeeds.
    chip.evict_key(ids[1]).unwrap();
    chip.evict_key(KeyId::random()).unwrap();
    assert_eq!(chip.info().unwrap().loaded, 3);
}

#[test]
fn keys_that_are_not_loaded_cannot_be_used() {
    let chip = chip();
    let new = p256(&chip, SIGNING);
    let id = new.blob.key_id().unwrap();
    let d = digest(b"x");
    assert_eq!(
        chip.sign(id, &SignMech::Ecdsa, &d),
        Err(ChipError::KeyNotLoaded(id))
    );
    assert_eq!(chip.public_key(id), Err(ChipError::KeyNotLoaded(id)));
    assert_eq!(
        chip.verify(&KeyRef::Loaded(id), &SignMech::Ecdsa, &d, &[0; 64]),
        Err(ChipError::KeyNotLoaded(id))
    );
    assert_eq!(
        chip.decrypt(id, &CipherMech::Sm2, &[0; 100]),
        Err(ChipError::KeyNotLoaded(id))
    );
    chip.load_key(&new.blob).unwrap();
    chip.sign(id, &SignMech::Ecdsa, &d).unwrap();
    chip.evict_key(id).unwrap();
    assert_eq!(
        chip.sign(id, &SignMech::Ecdsa, &d),
        Err(ChipError::KeyNotLoaded(id))
    );
}

#[test]
fn usage_flags_are_enforced_and_maintained_by_the_chip() {
    let chip = chip();
    let d = digest(b"usage");

    // A key without SIGN cannot sign; without VERIFY it cannot verify.
    let verify_only = p256(&chip, KeyUsage::VERIFY);
    let id = chip.load_key(&verify_only.blob).unwrap();
    assert_eq!(
        chip.sign(id, &SignMech::Ecdsa, &d),
        Err(ChipError::KeyFunctionNotPermitted("sign"))
    );
    let sign_only = p256(&chip, KeyUsage::SIGN);
    let sid = chip.load_key(&sign_only.blob).unwrap();
    let sig = chip.sign(sid, &SignMech::Ecdsa, &d).unwrap();
    assert_eq!(
        chip.verify(&KeyRef::Loaded(sid), &SignMech::Ecdsa, &d, &sig),
        Err(ChipError::KeyFunctionNotPermitted("verify"))
    );
    // ... but anyone may verify with the public key.
    chip.verify(
        &KeyRef::Public(sign_only.public.unwrap()),
        &SignMech::Ecdsa,
        &d,
        &sig,
    )
    .unwrap();

    // ENCRYPT / DECRYPT / DERIVE.
    let aes = chip
        .generate_secret_key(template(KeySpec::AES_256, KeyUsage::ENCRYPT))
        .unwrap();
    let aes = chip.load_key(&aes.blob).unwrap();
    let gcm = CipherMech::AesGcm {
        iv: vec![0; 12],
        aad: vec![],
        tag_bits: 128,
    };
    let ct = chip.encrypt(&KeyRef::Loaded(aes), &gcm, b"m").unwrap();
    assert_eq!(
        chip.decrypt(aes, &gcm, &ct),
        Err(ChipError::KeyFunctionNotPermitted("decrypt"))
    );
    let dec_only = chip
        .generate_secret_key(template(KeySpec::AES_256, KeyUsage::DECRYPT))
        .unwrap();
    let dec_only = chip.load_key(&dec_only.blob).unwrap();
    assert_eq!(
        chip.encrypt(&KeyRef::Loaded(dec_only), &gcm, b"m"),
        Err(ChipError::KeyFunctionNotPermitted("encrypt"))
    );
    let peer = p256(&chip, KeyUsage::DERIVE);
    let Some(PublicKey::EcP256(peer_point)) = &peer.public else {
        panic!()
    };
    assert_eq!(
        chip.derive_ecdh(
            id,
            peer_point,
            template(KeySpec::AES_256, KeyUsage::ENCRYPT)
        ),
        Err(ChipError::KeyFunctionNotPermitted("derive"))
    );

    // Wrapping: the target must be EXTRACTABLE, the wrapping key must permit WRAP, the
    // unwrapping key UNWRAP.
    let kek = chip
        .generate_secret_key(template(
            KeySpec::AES_256,
            KeyUsage::WRAP | KeyUsage::UNWRAP,
        ))
        .unwrap();
    let kek = chip.load_key(&kek.blob).unwrap();
    let not_extractable = chip
        .generate_secret_key(template(
            KeySpec::AES_256,
            KeyUsage::ENCRYPT | KeyUsage::SENSITIVE,
        ))
        .unwrap();
    let nx = chip.load_key(&not_extractable.blob).unwrap();
    assert_eq!(
        chip.wrap_key(&KeyRef::Loaded(kek), &WrapMech::AesKeyWrap, nx),
        Err(ChipError::KeyNotExtractable(nx))
    );
    let rsa_public = KeyRef::Public(PublicKey::Rsa {
        n: vec![0xc5; 256],
        e: vec![1, 0, 1],
    });
    let oaep = WrapMech::RsaOaep {
        hash: HashAlg::Sha256,
        label: vec![],
    };
    assert_eq!(
        chip.wrap_key(&rsa_public, &oaep, nx),
        Err(ChipError::KeyNotExtractable(nx))
    );
    let extractable = chip
        .generate_secret_key(template(
            KeySpec::AES_256,
            KeyUsage::ENCRYPT | KeyUsage::EXTRACTABLE,
        ))
        .unwrap();
    let ex = chip.load_key(&extractable.blob).unwrap();
    assert_eq!(
        chip.wrap_key(&KeyRef::Loaded(aes), &WrapMech::AesKeyWrap, ex),
        Err(ChipError::KeyFunctionNotPermitted("wrap"))
    );
    let wrapped = chip
        .wrap_key(&KeyRef::Loaded(kek), &WrapMech::AesKeyWrap, ex)
        .unwrap();
    assert_eq!(
        chip.unwrap_key(
            aes,
            &WrapMech::AesKeyWrap,
            &wrapped,
            template(KeySpec::AES_256, KeyUsage::ENCRYPT)
        ),
        Err(ChipError::KeyFunctionNotPermitted("unwrap"))
    );
    chip.unwrap_key(
        kek,
        &WrapMech::AesKeyWrap,
        &wrapped,
        template(KeySpec::AES_256, KeyUsage::ENCRYPT),
    )
    .unwrap();

    // Chip-maintained attributes: set from the key's origin, never from the caller.
    let asked = KeyUsage::SIGN | KeyUsage::SENSITIVE | KeyUsage::LOCAL | KeyUsage::ALWAYS_SENSITIVE;
    let generated = p256(&chip, asked | KeyUsage::EXTRACTABLE)
        .blob
        .header()
        .unwrap()
        .usage;
    assert_eq!(
        generated,
        KeyUsage::SIGN
            | KeyUsage::SENSITIVE
            | KeyUsage::EXTRACTABLE
            | KeyUsage::LOCAL
            | KeyUsage::ALWAYS_SENSITIVE
    );
    let generated = p256(&chip, KeyUsage::SIGN).blob.header().unwrap().usage;
    assert_eq!(
        generated,
        KeyUsage::SIGN | KeyUsage::LOCAL | KeyUsage::NEVER_EXTRACTABLE
    );
    let imported = chip
        .import_key(
            template(KeySpec::AES_256, asked | KeyUsage::NEVER_EXTRACTABLE),
            &[1u8; 32],
        )
        .unwrap();
    assert_eq!(
        imported.blob.header().unwrap().usage,
        KeyUsage::SIGN | KeyUsage::SENSITIVE
    );
}

#[test]
fn key_specs_are_validated() {
    let chip = chip();
    let bad_sizes = [
        KeySpec {
            key_type: KeyType::EcP256,
            bits: 384,
        },
        KeySpec {
            key_type: KeyType::Sm2,
            bits: 255,
        },
        KeySpec {
            key_type: KeyType::Rsa,
            bits: 1024,
        },
        KeySpec {
            key_type: KeyType::Rsa,
            bits: 4096,
        },
    ];
    for spec in bad_sizes {
        assert!(matches!(
            chip.generate_key_pair(template(spec, KeyUsage::SIGN)),
            Err(ChipError::KeySizeRange(_))
        ));
    }
    for spec in [
        KeySpec {
            key_type: KeyType::Aes,
            bits: 100,
        },
        KeySpec {
            key_type: KeyType::Sm4,
            bits: 256,
        },
        KeySpec::generic_secret(4),
        KeySpec::generic_secret(513),
        KeySpec {
            key_type: KeyType::GenericSecret,
            bits: 100,
        },
    ] {
        assert!(matches!(
            chip.generate_secret_key(template(spec, KeyUsage::SIGN)),
            Err(ChipError::KeySizeRange(_))
        ));
    }
    assert!(matches!(
        chip.generate_key_pair(template(KeySpec::AES_256, KeyUsage::ENCRYPT)),
        Err(ChipError::KeyTypeInconsistent(_))
    ));
    assert!(matches!(
        chip.generate_secret_key(template(KeySpec::EC_P256, KeyUsage::SIGN)),
        Err(ChipError::KeyTypeInconsistent(_))
    ));
    // Short HMAC keys can be imported (not generated).
    chip.import_key(template(KeySpec::generic_secret(1), KeyUsage::SIGN), &[7])
        .unwrap();
    // Material that does not fit the spec.
    assert!(matches!(
        chip.import_key(template(KeySpec::AES_256, KeyUsage::ENCRYPT), &[0; 16]),
        Err(ChipError::KeyInvalid(_))
    ));
    assert!(matches!(
        chip.import_key(template(KeySpec::RSA_2048, KeyUsage::SIGN), &[0x30, 0x00]),
        Err(ChipError::KeyInvalid(_))
    ));
    // The mechanism must fit the key type.
    let ec = p256(&chip, SIGNING);
    let ec = chip.load_key(&ec.blob).unwrap();
    for mech in [
        SignMech::RsaPkcs1,
        SignMech::Sm2Digest,
        SignMech::Hmac(HashAlg::Sha256),
    ] {
        assert!(matches!(
            chip.sign(ec, &mech, &[0; 32]),
            Err(ChipError::KeyTypeInconsistent(_))
        ));
    }
}

#[test]
fn one_chip_signs_from_many_threads_at_once() {
    let chip = Arc::new(chip());
    let new = p256(&chip, SIGNING);
    let id = chip.load_key(&new.blob).unwrap();
    let vk = verifier(&new);
    let handles: Vec<_> = (0..4u8)
        .map(|t| {
            let chip = Arc::clone(&chip);
            std::thread::spawn(move || {
                for i in 0..100u8 {
                    let d = digest(&[t, i]);
                    let sig = chip.sign(id, &SignMech::Ecdsa, &d).unwrap();
                    vk.verify_prehash(&d, &p256::ecdsa::Signature::from_slice(&sig).unwrap())
                        .unwrap();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
}

#[test]
fn simulated_latency_applies_to_every_command() {
    let latency = Duration::from_millis(30);
    let chip = SoftChip::new(SoftChipConfig {
        latency: Some(latency),
        ..SoftChipConfig::default()
    })
    .unwrap();
    let start = Instant::now();
    chip.domain_generate().unwrap();
    let new = p256(&chip, SIGNING);
    let id = chip.load_key(&new.blob).unwrap();
    chip.sign(id, &SignMech::Ecdsa, &digest(b"slow")).unwrap();
    assert!(start.elapsed() >= latency * 4, "{:?}", start.elapsed());
}
