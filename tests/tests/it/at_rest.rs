//! Keys at rest.
//!
//! * No key material in clear: after importing an AES key and an EC private key whose values
//!   the test knows, and deriving an ECDH secret the test can compute too, no node's data
//!   directory (Raft log, state, sealed chip nvram, everything) and no node log holds those
//!   bytes, raw or hex, nor the PINs. Each secret is first shown to be the one the cluster
//!   really uses, and the public key of a generated key pair is found in every data directory,
//!   so the scan is known to read the real store.
//! * The soft chips' NVRAM key (issue 11, item 7): a real `cloudkey-node` whose key lies inside
//!   its data directory (directly or through a symlink) exits 64 with one line naming the
//!   setting and the paths, and serves nothing; with `--insecure-dev-keys` it starts, warns
//!   once and serves. A key from a systemd credential (`nvram_key_credential`) is read from
//!   `$CREDENTIALS_DIRECTORY` and seals the chips; without the variable the node refuses to
//!   start.
//! * PIN hashes (issue 11, item 2): every argon2id hash in a stopped node's data directory is
//!   found and attacked offline with the right PIN, as one would with a stolen disk. The PIN
//!   does not verify against any of them: they are hashes of the PIN's pepper, which only a
//!   chip of the domain computes.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, ensure, Context, Result};
use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, UnparsedPublicKey};
use aws_lc_rs::encoding::AsBigEndian;
use aws_lc_rs::hmac;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use cloudkey_node::dev::{self, NodeFiles, NodeOptions};
use cloudkey_node::pki::Identity;
use cloudkey_protocol::ck;
use cloudkey_protocol::client::{Client, ClientSettings};
use cloudkey_protocol::msg::{Attribute, MechParam, Mechanism, Request, Response, SignInput};
use cloudkey_test_support::NodeProcess;
use cloudkey_tests::{wait_for, Cluster, Pki, Role, OPERATOR, START_TIMEOUT, STOP_TIMEOUT};

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

// ---- the soft chips' NVRAM key -------------------------------------------------------------

/// The start-up refusal's marker, and the flag that lifts it.
const INSECURE: &str = "--insecure-dev-keys";

/// One node (node 1 of a one-node PKI) in a directory of its own, configured as `cloudkey dev`
/// and the harness configure nodes, except for the line naming the NVRAM key, which a test
/// sets.
struct LoneNode {
    pki: Pki,
    _root: tempfile::TempDir,
    root: PathBuf,
    files: NodeFiles,
    config: String,
}

impl LoneNode {
    fn new() -> Result<Self> {
        let pki = Pki::new(1)?;
        let tmp = tempfile::Builder::new()
            .prefix("cloudkey-nvram-")
            .tempdir()?;
        let root = tmp.path().canonicalize()?;
        let files = NodeFiles::new(&root, 1);
        let opts = NodeOptions {
            chips: 1,
            cheap_pin_hash: true,
            ..NodeOptions::default()
        };
        dev::write_node_files(&files, pki.dir(), &opts)?;
        let config = std::fs::read_to_string(&files.config)?;
        ensure!(
            config.contains("\nnvram_key_file = "),
            "the written configuration names its key file: {config}"
        );
        Ok(Self {
            pki,
            _root: tmp,
            root,
            files,
            config,
        })
    }

    /// Writes the configuration with `line` (`nvram_key_file = "..."`, or a credential) in
    /// place of the written `nvram_key_file` line.
    fn set_key_line(&self, line: &str) -> Result<()> {
        let text: String = self
            .config
            .lines()
            .map(|l| {
                if l.starts_with("nvram_key_file = ") {
                    line
                } else {
                    l
                }
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        std::fs::write(&self.files.config, text)?;
        Ok(())
    }

    fn set_key_file(&self, path: &Path) -> Result<()> {
        let path = path.to_str().context("a UTF-8 path")?;
        self.set_key_line(&format!("nvram_key_file = {path:?}"))
    }

    /// Starts the node with `args` after `--config`, `env` set and `CREDENTIALS_DIRECTORY`
    /// removed unless `env` sets it.
    fn spawn(&self, args: &[&str], env: &[(&str, &Path)]) -> Result<NodeProcess> {
        let bin = cloudkey_tests::node_binary()?;
        let mut launch = NodeProcess::launch(&bin, &self.files.config)
            .args(args.iter().copied())
            .env_remove("CREDENTIALS_DIRECTORY")
            .env("RUST_LOG", "info")
            .log_to(&self.files.log)
            .name("node 1");
        for (k, v) in env {
            launch = launch.env(k, v);
        }
        Ok(NodeProcess::spawn(launch)?)
    }

    /// Starts the node and expects it to exit with status 64 before serving; its last line.
    async fn refused(&self, args: &[&str], env: &[(&str, &Path)]) -> Result<String> {
        let mut node = self.spawn(args, env)?;
        if let Ok(addr) = node.listening(START_TIMEOUT).await {
            bail!(
                "the node started and serves on {addr}; it should have refused to start. Its \
                 log:\n{}",
                node.log_tail()
            );
        }
        let status = node.try_exit().context("the node exited")?;
        ensure!(status.code() == Some(64), "exit status 64, not {status}");
        let log = node.log();
        ensure!(!log.contains("LISTENING"), "nothing served: {log}");
        let last = log.trim_end().lines().last().unwrap_or_default().to_owned();
        ensure!(last.starts_with("cloudkey-node: "), "one last line: {log}");
        Ok(last)
    }

    /// Starts the node and waits until it serves: a status request answered.
    async fn serving(&self, args: &[&str], env: &[(&str, &Path)]) -> Result<NodeProcess> {
        let mut node = self.spawn(args, env)?;
        let addr = node.listening(START_TIMEOUT).await?;
        let settings = self.root.join("operator.toml");
        let text = dev::client_settings_toml(
            &[addr.to_string()],
            self.pki.dir(),
            &Identity::Operator(OPERATOR.into()),
        );
        std::fs::write(&settings, text)?;
        let settings = ClientSettings::from_file(&settings).map_err(|e| anyhow!("{e}"))?;
        let client = Client::new(&settings).map_err(|e| anyhow!("{e}"))?;
        match client.call(Request::Status).await {
            Ok(Response::Status(s)) => ensure!(s.id == 1, "status of node 1: {s:?}"),
            other => bail!("status: {other:?}"),
        }
        Ok(node)
    }

    /// The node's log, every run.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.files.log).unwrap_or_default()
    }

    /// The entries of the data directory.
    fn data_entries(&self) -> Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir(&self.files.data_dir)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        names.sort();
        Ok(names)
    }
}

async fn stop(mut node: NodeProcess) -> Result<()> {
    let status = node.stop(STOP_TIMEOUT).await?;
    ensure!(status.success(), "exit 0 after SIGTERM: {status}");
    Ok(())
}

/// Issue 11, item 7: a node whose NVRAM key lies in its data directory refuses to start,
/// whether the configuration names the file there or a symlink to it, unless it is started
/// with `--insecure-dev-keys`, which it then warns about once. The key next to the data
/// directory (the layout of `cloudkey dev up`) is accepted without a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_an_nvram_key_inside_its_data_dir_unless_insecure_dev_keys() -> Result<()> {
    let n = LoneNode::new()?;
    let data_dir = &n.files.data_dir;
    let inside = data_dir.join("nvram.key");
    std::fs::rename(&n.files.nvram_key, &inside)?;
    let link = n.root.join("nvram-link.key");
    std::os::unix::fs::symlink(&inside, &link)?;

    // Named inside data_dir, and named by a link from outside it: refused, one line naming the
    // setting, the key's path and data_dir, nothing served and nothing written.
    n.set_key_file(&inside)?;
    let line = n.refused(&[], &[]).await?;
    for want in [
        format!(
            "nvram_key_file {} is inside data_dir {}",
            inside.display(),
            data_dir.display()
        ),
        INSECURE.to_owned(),
    ] {
        ensure!(line.contains(&want), "{line:?} should say {want:?}");
    }
    ensure!(
        n.data_entries()? == ["nvram.key"],
        "the refused node wrote nothing in its data directory: {:?}",
        n.data_entries()?
    );
    n.set_key_file(&link)?;
    let line = n.refused(&[], &[]).await?;
    let want = format!(
        "nvram_key_file {} (resolved: {}) is inside data_dir {}",
        link.display(),
        inside.display(),
        data_dir.display()
    );
    ensure!(line.contains(&want), "{line:?} should say {want:?}");

    // With --insecure-dev-keys: it starts, serves, and says why it should not, once.
    let node = n.serving(&[INSECURE], &[]).await?;
    let warnings = node
        .log()
        .matches(&format!("{INSECURE}: nvram_key_file"))
        .count();
    ensure!(warnings == 1, "one warning, not {warnings}: {}", node.log());
    stop(node).await?;

    // Next to data_dir, as `cloudkey dev up` has it: accepted without the flag or a warning.
    std::fs::remove_file(&link)?;
    std::fs::rename(&inside, &n.files.nvram_key)?;
    n.set_key_file(&n.files.nvram_key)?;
    let before = n.log().len();
    let node = n.serving(&[], &[]).await?;
    ensure!(
        !node.log()[before..].contains(INSECURE),
        "no warning for a key outside data_dir: {}",
        node.log()
    );
    stop(node).await
}

/// `nvram_key_credential`: a node without `$CREDENTIALS_DIRECTORY` refuses to start, naming
/// the variable; with it, the node reads `$CREDENTIALS_DIRECTORY/NAME` and seals its chip's
/// NVRAM under that key (a restart with another key in the credential cannot open it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_takes_its_nvram_key_from_a_systemd_credential() -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let n = LoneNode::new()?;
    let creds = n.root.join("credentials");
    std::fs::create_dir(&creds)?;
    let write_key = |key: [u8; 32]| -> Result<()> {
        let path = creds.join("cloudkey-nvram");
        std::fs::write(&path, hex::encode(key))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        Ok(())
    };
    write_key(random())?;
    std::fs::remove_file(&n.files.nvram_key)?;
    n.set_key_line("nvram_key_credential = \"cloudkey-nvram\"")?;

    let line = n.refused(&[], &[]).await?;
    let want = "nvram_key_credential = \"cloudkey-nvram\" needs $CREDENTIALS_DIRECTORY";
    ensure!(line.contains(want), "{line:?} should say {want:?}");

    let env: &[(&str, &Path)] = &[("CREDENTIALS_DIRECTORY", &creds)];
    let node = n.serving(&[], env).await?;
    stop(node).await?;
    let sealed = n.data_entries()?;
    ensure!(
        sealed.iter().any(|f| f == "chip-soft-0.nvram"),
        "the chip's NVRAM is sealed in the data directory: {sealed:?}"
    );

    // Another key in the credential: the sealed NVRAM does not open, the node does not start.
    write_key(random())?;
    let before = n.log().len();
    let mut node = n.spawn(&[], env)?;
    ensure!(
        node.listening(START_TIMEOUT).await.is_err(),
        "a node started with another NVRAM key than the one that sealed its chip"
    );
    let log = &node.log()[before..];
    ensure!(
        log.contains("authentication failed (wrong NVRAM key"),
        "the chip names the wrong key: {log}"
    );
    Ok(())
}

/// Every argon2id PHC string (`$argon2id$v=19$m=…$salt$hash`) in `bytes`.
fn phc_strings(bytes: &[u8]) -> Vec<String> {
    const START: &[u8] = b"$argon2id$v=19$";
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(pos) = bytes[at..].windows(START.len()).position(|w| w == START) {
        let begin = at + pos;
        let end = bytes[begin..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || b"$=,+/".contains(b)))
            .map_or(bytes.len(), |n| begin + n);
        out.push(String::from_utf8_lossy(&bytes[begin..end]).into_owned());
        at = end;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_data_directory_alone_cannot_test_a_pin_guess() -> Result<()> {
    use argon2::password_hash::phc::PasswordHash;
    use argon2::password_hash::PasswordVerifier as _;

    let mut cluster = Cluster::start_init(1).await?;
    let token = util::create_token(cluster.admin(), "stolen").await?;
    let app = cluster.client(Role::Client)?;
    util::login(&app, token).await?;
    cluster.stop(1).await?;

    let mut hashes = Vec::new();
    for f in files_under(cluster.data_dir(1))? {
        let bytes = std::fs::read(&f).with_context(|| f.display().to_string())?;
        hashes.extend(phc_strings(&bytes));
    }
    hashes.sort();
    hashes.dedup();
    // The SO and the user PIN hashes at least: the scan reads the real store.
    ensure!(hashes.len() >= 2, "PIN hashes found on disk: {hashes:?}");
    for (pin, what) in [(util::USER_PIN, "user"), (util::SO_PIN, "SO")] {
        for h in &hashes {
            let Ok(parsed) = PasswordHash::new(h) else {
                continue;
            };
            ensure!(
                argon2::Argon2::default()
                    .verify_password(pin.as_bytes(), &parsed)
                    .is_err(),
                "the {what} PIN verifies offline against a hash from the data directory: {h}"
            );
        }
    }
    Ok(())
}
