//! Loads the built `libcloudkey_pkcs11.so` with the `cryptoki` crate, which takes the 3.0
//! function list through `C_GetInterface`:
//! * without a configuration, `C_Initialize` fails cleanly with `CKR_GENERAL_ERROR`;
//! * with a configuration naming an unreachable cluster, it succeeds; slots and mechanisms come
//!   from the configuration, and what needs the cluster fails with `CKR_DEVICE_ERROR` within
//!   the configured deadline.
//!
//! Each case runs in a child process (this test binary again), because the configuration is
//! read from the environment and tests must not change their own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cloudkey_test_support::TestPki;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::MechanismType;

const CHILD: &str = "CLOUDKEY_PKCS11_TEST_CHILD";
const DEADLINE_MS: u64 = 400;

/// The module cargo built for this test: `target/<profile>/deps/libcloudkey_pkcs11.so`, next to
/// this test binary (always current; the copy in `target/<profile>/` is refreshed only by
/// `cargo build`).
fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let deps = exe.parent().expect("deps dir");
    let fresh = deps.join("libcloudkey_pkcs11.so");
    if fresh.exists() {
        return fresh;
    }
    deps.parent()
        .expect("target dir")
        .join("libcloudkey_pkcs11.so")
}

/// A configuration next to the test PKI's CA and a client certificate, in the PKI's directory.
fn write_config(pki: &TestPki) -> PathBuf {
    let dir = pki.dir();
    let _ = pki.write("app", &pki.client("app"));
    let path = dir.join("cloudkey.toml");
    std::fs::write(
        &path,
        format!(
            "endpoints = [\"127.0.0.1:9\"]\nca = \"ca.pem\"\ncert = \"app.pem\"\nkey = \"app.key\"\n\
             deadline_ms = {DEADLINE_MS}\nconnect_timeout_ms = 100\n\
             [[slots]]\ntoken = \"main\"\n[[slots]]\ntoken = \"backup\"\n"
        ),
    )
    .expect("write");
    path
}

fn run_child(test: &str, config: Option<&Path>) {
    let mut cmd = Command::new(std::env::current_exe().expect("current exe"));
    cmd.args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env_remove("CLOUDKEY_PKCS11_CONFIG");
    if let Some(c) = config {
        cmd.env("CLOUDKEY_PKCS11_CONFIG", c);
    }
    let out = cmd.output().expect("run child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "child {test} failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("1 passed"),
        "child {test} did not run:\n{stdout}"
    );
}

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

fn load() -> Pkcs11 {
    let lib = library();
    assert!(lib.exists(), "{} not built", lib.display());
    Pkcs11::new(&lib).expect("load the module")
}

#[test]
fn without_configuration_initialize_fails_cleanly() {
    if !in_child() {
        run_child("child_without_configuration", None);
    }
}

#[test]
fn child_without_configuration() {
    if !in_child() {
        return;
    }
    let p = load();
    let e = p
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect_err("no configuration");
    assert!(matches!(e, Error::Pkcs11(RvError::GeneralError, _)), "{e}");
}

#[test]
fn an_unreachable_cluster_answers_device_error_within_the_deadline() {
    if in_child() {
        return;
    }
    let pki = TestPki::new("test CA");
    let config = write_config(&pki);
    run_child("child_unreachable_cluster", Some(&config));
}

#[test]
fn child_unreachable_cluster() {
    if !in_child() {
        return;
    }
    let p = load();
    p.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect("initialize");
    let e = p
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .expect_err("twice");
    assert!(
        matches!(e, Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)),
        "{e}"
    );
    let info = p.get_library_info().expect("info");
    assert_eq!(info.manufacturer_id(), "cloudkey");

    let slots = p.get_all_slots().expect("slots");
    assert_eq!(slots.len(), 2);
    let mechs = p.get_mechanism_list(slots[0]).expect("mechanisms");
    assert!(mechs.contains(&MechanismType::ECDSA_SHA256));
    assert!(mechs.contains(&MechanismType::RSA_PKCS_OAEP));

    let bound = Duration::from_millis(DEADLINE_MS + 600);
    let t = Instant::now();
    let e = p.get_slots_with_token().expect_err("unreachable");
    assert!(matches!(e, Error::Pkcs11(RvError::DeviceError, _)), "{e}");
    assert!(t.elapsed() < bound, "{:?}", t.elapsed());
    let t = Instant::now();
    let e = p.open_ro_session(slots[0]).expect_err("unreachable");
    assert!(matches!(e, Error::Pkcs11(RvError::DeviceError, _)), "{e}");
    assert!(t.elapsed() < bound, "{:?}", t.elapsed());
    p.finalize().expect("finalize");
}
