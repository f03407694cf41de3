//! No key material in clear at rest: after importing an AES key and an EC private key whose
//! values the test knows, and deriving an ECDH secret the test can compute too, no node's data
//! directory (Raft log, state, sealed chip nvram, everything) and no node log holds those bytes,
//! raw or hex, nor the PINs. Each secret is first shown to be the one the cluster really uses,
//! and the public key of a generated key pair is found in every data directory, so the scan is
//! known to read the real store.

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, UnparsedPublicKey};
use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{Attribute, MechParam, Mechanism, Request, Response, SignInput};
use cloudkey_tests::{wait_for, Cluster, Role};

use crate::util::{self, bytes_of, P256_PARAMS};

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    SystemRandom::new().fill(&mut b).expect("random");
    b
}

fn object_of(r: Response) -> Result<cloudkey_protocol::msg::ObjectId> {
    match r {
        Response::Object(id) => Ok(id),
        r => bail!("expected an object, got {r:?}"),
    }
}

/// Every regular file under `dir`.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).with_context(|| d.display().to_string())? {
            let e = e?;
            let t = e.file_type()?;
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    hay.iter()
        .enumerate()
        .filter(|&(_, &b)| b == first)
        .any(|(i, _)| hay.get(i + 1..i + 1 + rest.len()) == Some(rest))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_material_or_pin_is_stored_or_logged_in_clear() -> Result<()> {
    let mut cluster = Cluster::start_init(3).await?;
    let token = util::create_token(cluster.admin(), "at-rest").await?;
    // Other clients carry no applied index yet: let every node apply the new token.
    cluster.settle(cluster.admin()).await?;
    let client = cluster.client(Role::Client)?;
    let auth = util::login(&client, token).await?;

    // 1. An AES-256 key imported by value; it must be the key the cluster encrypts with.
    let aes: [u8; 32] = random();
    let aes_id = object_of(
        util::call(
            &client,
            Request::CreateObject {
                auth: auth.clone(),
                template: vec![
                    Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                    Attribute::bytes(ck::CKA_VALUE, aes.to_vec()),
                    Attribute::bool(ck::CKA_TOKEN, true),
                    Attribute::bool(ck::CKA_PRIVATE, true),
                    Attribute::bool(ck::CKA_SENSITIVE, true),
                    Attribute::bool(ck::CKA_EXTRACTABLE, false),
                    Attribute::bool(ck::CKA_ENCRYPT, true),
                    Attribute::bool(ck::CKA_DECRYPT, true),
                    Attribute::bytes(ck::CKA_LABEL, b"imported-aes".to_vec()),
                ],
            },
        )
        .await?,
    )?;
    let iv: [u8; 12] = random();
    let plaintext = b"the imported key is the one in use".to_vec();
    let ciphertext = bytes_of(
        util::call(
            &client,
            Request::Encrypt {
                auth: auth.clone(),
                key: aes_id,
                mechanism: Mechanism {
                    ckm: ck::CKM_AES_GCM,
                    param: MechParam::Gcm {
                        iv: iv.to_vec(),
                        aad: b"aad".to_vec(),
                        tag_bits: 128,
                    },
                },
                data: plaintext.clone(),
            },
        )
        .await?,
    )?;
    let local = LessSafeKey::new(UnboundKey::new(&aead::AES_256_GCM, &aes).expect("key"));
    let mut buf = ciphertext.clone();
    let opened = local
        .open_in_place(
            Nonce::assume_unique_for_key(iv),
            Aad::from(b"aad"),
            &mut buf,
        )
        .map_err(|_| {
            anyhow::anyhow!("the cluster's ciphertext does not open with the imported key")
        })?;
    ensure!(opened == plaintext.as_slice(), "AES-GCM round trip");

    // 2. An EC private key imported by value; it must be the key the cluster signs with.
    let local_ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).expect("generate");
    let scalar = local_ec
        .private_key()
        .as_be_bytes()
        .expect("scalar")
        .as_ref()
        .to_vec();
    let ec_id = object_of(
        util::call(
            &client,
            Request::CreateObject {
                auth: auth.clone(),
                template: vec![
                    Attribute::ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
                    Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                    Attribute::bytes(ck::CKA_EC_PARAMS, P256_PARAMS),
                    Attribute::bytes(ck::CKA_VALUE, scalar.clone()),
                    Attribute::bool(ck::CKA_TOKEN, true),
                    Attribute::bool(ck::CKA_PRIVATE, true),
                    Attribute::bool(ck::CKA_SENSITIVE, true),
                    Attribute::bool(ck::CKA_SIGN, true),
                    Attribute::bytes(ck::CKA_LABEL, b"imported-ec".to_vec()),
                ],
            },
        )
        .await?,
    )?;
    let sig = bytes_of(util::call(&client, util::sign_req(&auth, ec_id, b"imported")).await?)?;
    ensure!(
        util::verify(local_ec.public_key().as_ref(), b"imported", &sig),
        "the cluster signs with the imported scalar"
    );

    // 3. A generated key pair and an ECDH secret derived from it, which the test computes from
    //    its own ephemeral key; the derived key's HMAC proves the cluster holds that secret.
    let kp =
        util::key_pair_of(util::call(&client, util::gen_ec_req(&auth, "ecdh-base", true)).await?)?;
    let cluster_point = util::ec_point(&client, &auth, kp.public).await?;
    let eph = agreement::PrivateKey::generate(&agreement::ECDH_P256).expect("ephemeral");
    let eph_public = eph.compute_public_key().expect("public").as_ref().to_vec();
    let shared = agreement::agree(
        &eph,
        UnparsedPublicKey::new(&agreement::ECDH_P256, &cluster_point),
        anyhow::anyhow!("ECDH failed"),
        |s| Ok(s.to_vec()),
    )?;
    let derived = object_of(
        util::call(
            &client,
            Request::DeriveKey {
                auth: auth.clone(),
                base_key: kp.private,
                mechanism: Mechanism {
                    ckm: ck::CKM_ECDH1_DERIVE,
                    param: MechParam::Ecdh1 {
                        kdf: ck::CKD_NULL,
                        shared_data: vec![],
                        public_data: eph_public,
                    },
                },
                template: vec![
                    Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET),
                    Attribute::ulong(ck::CKA_VALUE_LEN, 32),
                    Attribute::bool(ck::CKA_TOKEN, true),
                    Attribute::bool(ck::CKA_PRIVATE, true),
                    Attribute::bool(ck::CKA_SENSITIVE, true),
                    Attribute::bool(ck::CKA_EXTRACTABLE, false),
                    Attribute::bool(ck::CKA_SIGN, true),
                    Attribute::bytes(ck::CKA_LABEL, b"ecdh-derived".to_vec()),
                ],
            },
        )
        .await?,
    )?;
    let mac = bytes_of(
        util::call(
            &client,
            Request::Sign {
                auth: auth.clone(),
                key: derived,
                mechanism: Mechanism::new(ck::CKM_SHA256_HMAC),
                input: SignInput::Data(b"derived".to_vec()),
            },
        )
        .await?,
    )?;
    let expected = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &shared), b"derived");
    ensure!(
        mac == expected.as_ref(),
        "the derived key is the ECDH secret"
    );

    // Every node has applied everything; then stop them (SIGTERM) so that all is on disk.
    let target = cluster.admin().max_applied().max(client.max_applied());
    for id in cluster.ids() {
        wait_for(
            &format!("node {id} to apply index {target}"),
            std::time::Duration::from_secs(20),
            || async { (cluster.status(id).await.ok()?.applied >= target).then_some(()) },
        )
        .await?;
    }
    for id in cluster.ids() {
        let st = cluster.stop(id).await?;
        ensure!(st.success(), "node {id} exits 0: {st}");
    }

    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, secret) in [
        ("imported AES key", aes.to_vec()),
        ("imported EC private scalar", scalar),
        ("ECDH shared secret", shared),
        ("user PIN", util::USER_PIN.as_bytes().to_vec()),
        ("SO PIN", util::SO_PIN.as_bytes().to_vec()),
    ] {
        needles.push((format!("{name} (hex)"), hex::encode(&secret).into_bytes()));
        needles.push((
            format!("{name} (HEX)"),
            hex::encode_upper(&secret).into_bytes(),
        ));
        needles.push((name.to_owned(), secret));
    }
    let mut scanned = 0usize;
    let mut bytes = 0usize;
    let mut found = Vec::new();
    for id in cluster.ids() {
        let files = cluster.files(id).clone();
        let mut control = false;
        let mut paths = files_under(&files.data_dir)?;
        paths.push(files.log.clone());
        for path in paths {
            let data = std::fs::read(&path)?;
            scanned += 1;
            bytes += data.len();
            if path.starts_with(&files.data_dir) && contains(&data, &cluster_point) {
                control = true;
            }
            for (name, needle) in &needles {
                if contains(&data, needle) {
                    found.push(format!("{name} in {}", path.display()));
                }
            }
        }
        ensure!(
            control,
            "node {id}: the generated public key was not found in {}: the scan does not see \
             the store",
            files.data_dir.display()
        );
    }
    println!(
        "scanned {scanned} files, {bytes} bytes, for {} needles",
        needles.len()
    );
    ensure!(found.is_empty(), "secrets in clear: {found:#?}");
    Ok(())
}
