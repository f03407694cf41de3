//! Shared by the PKCS#11 client tests (`pkcs11_*`): scenarios run in child processes, external
//! tools, and the DER glue OpenSSL needs.
//!
//! # Children
//! The module reads its configuration from `CLOUDKEY_PKCS11_CONFIG` in `C_Initialize`, and its
//! state is global to a process; a test must not change its own environment, and the tests of
//! this binary run in parallel. So a scenario that loads the module with the `cryptoki` crate
//! runs in a child process: this test binary again, asked for one `#[ignore]`d entry point
//! (`--exact <name> --ignored`), with the configuration, the module's path and an output
//! directory in its environment ([`child_command`]). Outside a child, an entry point does
//! nothing ([`child`] is `None`); it is ignored in normal runs, so it is never counted as a
//! passing test.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use cloudkey_tests::{wait_for_blocking, Pkcs11Token, P11_CONFIG_ENV, P11_USER_PIN};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;

/// Set in a child: the module's path.
const CHILD_ENV: &str = "CLOUDKEY_IT_P11_MODULE";
/// Set in a child: a directory for its results.
const OUT_ENV: &str = "CLOUDKEY_IT_P11_OUT";
/// Set in a child: the token's label.
const LABEL_ENV: &str = "CLOUDKEY_IT_P11_TOKEN";

/// DER of the P-256 curve OID (`CKA_EC_PARAMS`).
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
/// DER of the SM2 curve OID 1.2.156.10197.1.301.
pub const SM2_PARAMS: &[u8] = &[0x06, 0x08, 0x2A, 0x81, 0x1C, 0xCF, 0x55, 0x01, 0x82, 0x2D];
/// DER of id-ecPublicKey.
const EC_PUBLIC_KEY_OID: &[u8] = &[0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];

/// What a child scenario gets.
pub struct ChildCtx {
    /// The module, loaded (not initialised).
    pub pkcs11: Pkcs11,
    /// The module's path.
    pub module: PathBuf,
    /// Where to leave results for the parent.
    pub out: PathBuf,
    /// The token's label.
    pub label: String,
}

impl ChildCtx {
    /// Initialises the module with OS locking, as multi-threaded applications do.
    pub fn initialize(&self) -> Result<()> {
        self.pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .context("C_Initialize")
    }

    /// The one slot of the test configuration.
    pub fn slot(&self) -> Result<cryptoki::slot::Slot> {
        let slots = self.pkcs11.get_slots_with_token()?;
        match slots.as_slice() {
            [s] => Ok(*s),
            other => bail!("expected one slot with a token, got {other:?}"),
        }
    }
}

/// The user PIN as `cryptoki` takes it.
pub fn user_pin() -> AuthPin {
    AuthPin::new(P11_USER_PIN.into())
}

/// Opens a read-write session and logs the user in.
pub fn login_rw(ctx: &ChildCtx) -> Result<cryptoki::session::Session> {
    let s = ctx.pkcs11.open_rw_session(ctx.slot()?)?;
    s.login(UserType::User, Some(&user_pin()))
        .context("C_Login")?;
    Ok(s)
}

/// In a child process: the module loaded from the path its parent gave. `None` otherwise.
pub fn child() -> Option<ChildCtx> {
    let module = PathBuf::from(std::env::var_os(CHILD_ENV)?);
    let out = PathBuf::from(std::env::var_os(OUT_ENV)?);
    let label = std::env::var(LABEL_ENV).ok()?;
    let pkcs11 =
        Pkcs11::new(&module).unwrap_or_else(|e| panic!("loading {}: {e}", module.display()));
    Some(ChildCtx {
        pkcs11,
        module,
        out,
        label,
    })
}

/// The command that runs the `#[ignore]`d entry point `test` (its full path, e.g.
/// `pkcs11_cryptoki::surface::session`) in a child, with `token`'s configuration and `out` as its
/// output directory. Its stdout is libtest's and the scenario's.
pub fn child_command(test: &str, token: &Pkcs11Token, out: &Path) -> Result<Command> {
    let exe = std::env::current_exe().context("the test executable")?;
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        test,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(P11_CONFIG_ENV, &token.config)
    .env(CHILD_ENV, &token.module)
    .env(OUT_ENV, out)
    .env(LABEL_ENV, &token.label);
    Ok(cmd)
}

/// Runs a child to its end; fails with its output unless it ran its one test and passed.
/// Returns its stdout.
pub fn run_child(test: &str, token: &Pkcs11Token, out: &Path) -> Result<String> {
    let output = output_within(&mut child_command(test, token, out)?, TOOL_TIMEOUT)?;
    check_child(test, &output)
}

/// Checks a finished child's output (see [`run_child`]).
pub fn check_child(test: &str, output: &Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "child {test} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    ensure!(
        stdout.contains("1 passed"),
        "child {test} did not run its test:\n{stdout}\n{stderr}"
    );
    Ok(stdout)
}

/// Bound on one external tool's run: a module that hangs fails the test instead of stalling it.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs `cmd` to its end (killed after `timeout`), its output collected.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what} (is it installed? see .ci/run)"))?;
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    );
    let status = match wait_for_blocking(&what, timeout, || child.try_wait().transpose()) {
        Ok(status) => status?,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not finish within {timeout:?}");
        }
    };
    let join = |h: std::thread::JoinHandle<Vec<u8>>| h.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout: join(stdout),
        stderr: join(stderr),
    })
}

/// Starts a one-node cluster with the PKCS#11 token `label`, then runs `session` (a real
/// client driven by blocking commands) in a temporary directory off the test's runtime.
pub async fn on_token(
    label: &str,
    session: impl FnOnce(&Pkcs11Token, &Path) -> Result<()> + Send + 'static,
) -> Result<()> {
    let cluster = cloudkey_tests::Cluster::start_init(1).await?;
    let token = cluster.pkcs11_token(label).await?;
    tokio::task::spawn_blocking(move || {
        let tmp = tempfile::tempdir()?;
        session(&token, tmp.path())
    })
    .await?
}

/// The words of a command line without quoting (`"-in msg -out sig"`).
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// Runs a tool to its end (at most [`TOOL_TIMEOUT`]); fails with its output unless it exits
/// with 0. Returns its stdout and stderr.
pub fn run(cmd: &mut Command) -> Result<(String, String)> {
    let what = format!("{cmd:?}");
    let out = output_within(cmd, TOOL_TIMEOUT)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    Ok((stdout, stderr))
}

/// `openssl args...` in `dir` (with `env`), which must succeed; returns stdout.
pub fn openssl(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("openssl");
    cmd.current_dir(dir).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(run(&mut cmd)?.0)
}

/// Whether `openssl args...` in `dir` fails.
pub fn openssl_fails(dir: &Path, args: &[&str]) -> Result<bool> {
    let out = output_within(
        Command::new("openssl").current_dir(dir).args(args),
        TOOL_TIMEOUT,
    )?;
    Ok(!out.status.success())
}

/// `pkcs11-tool --module <module> args...` with `token`'s configuration; must succeed.
pub fn pkcs11_tool(token: &Pkcs11Token, dir: &Path, args: &[&str]) -> Result<(String, String)> {
    run(Command::new("pkcs11-tool")
        .current_dir(dir)
        .env(P11_CONFIG_ENV, &token.config)
        .arg("--module")
        .arg(&token.module)
        .args(args))
}

/// Generates a P-256 key pair (`EC:prime256v1`) or an RSA one (`rsa:2048`) on the token with
/// `pkcs11-tool`.
pub fn tool_keypair(
    token: &Pkcs11Token,
    dir: &Path,
    kind: &str,
    label: &str,
    id: &str,
) -> Result<()> {
    pkcs11_tool(
        token,
        dir,
        &[
            "--login",
            "--pin",
            P11_USER_PIN,
            "--keypairgen",
            "--key-type",
            kind,
            "--label",
            label,
            "--id",
            id,
        ],
    )?;
    Ok(())
}

// ---- DER ------------------------------------------------------------------------------------

/// A DER TLV (definite length).
pub fn der_tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(body);
    out
}

/// A non-negative INTEGER from big-endian bytes.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let mut v: Vec<u8> = bytes.iter().copied().skip_while(|b| *b == 0).collect();
    if v.first().is_none_or(|b| b & 0x80 != 0) {
        v.insert(0, 0);
    }
    der_tlv(0x02, &v)
}

/// A raw `r || s` signature (64 bytes) as the DER `SEQUENCE { r, s }` OpenSSL reads.
pub fn sig_der(raw: &[u8]) -> Vec<u8> {
    let (r, s) = raw.split_at(raw.len() / 2);
    der_tlv(0x30, &[der_uint(r), der_uint(s)].concat())
}

/// The uncompressed point of a `CKA_EC_POINT` value (a DER OCTET STRING; a raw point is
/// returned as it is).
pub fn point_of(ec_point: &[u8]) -> Vec<u8> {
    match ec_point {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && rest.first() == Some(&4) => {
            rest.to_vec()
        }
        _ => ec_point.to_vec(),
    }
}

/// The `SubjectPublicKeyInfo` of an EC point on the curve named by `params` (`CKA_EC_PARAMS`).
pub fn ec_spki(params: &[u8], point: &[u8]) -> Vec<u8> {
    let alg = der_tlv(0x30, &[EC_PUBLIC_KEY_OID, params].concat());
    let mut bits = vec![0u8];
    bits.extend_from_slice(point);
    der_tlv(0x30, &[alg, der_tlv(0x03, &bits)].concat())
}

/// Writes a DER public key as `<name>.pem` in `dir` (through `openssl pkey`).
pub fn write_public_pem(dir: &Path, name: &str, spki: &[u8]) -> Result<PathBuf> {
    let der = dir.join(format!("{name}.der"));
    std::fs::write(&der, spki)?;
    let pem = dir.join(format!("{name}.pem"));
    openssl(
        dir,
        &[],
        &[
            "pkey",
            "-pubin",
            "-inform",
            "DER",
            "-in",
            &der.to_string_lossy(),
            "-out",
            &pem.to_string_lossy(),
        ],
    )?;
    Ok(pem)
}
