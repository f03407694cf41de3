//! `cloudkey-loadtest` end to end, briefly: about two seconds against a 3-node cluster through
//! the protocol client (signatures and a share of key generations, every signature verified),
//! and two seconds against the in-process `chip` target with `--verify`. Each run must report
//! operations, no error, every signature verified by the independent verifier, and no cleanup
//! failure, as read from its JSON results.

use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context, Result};
use cloudkey_tests::{Cluster, P11_USER_PIN};
use serde_json::Value;

/// Runs the load tester with `args` plus `--json <dir>/out.json`, and returns the JSON.
fn run(args: &[&str], dir: &Path) -> Result<Value> {
    let json = dir.join("out.json");
    // Run options come before the target.
    let out = Command::new(cloudkey_tests::loadtest_binary()?)
        .arg("--json")
        .arg(&json)
        .args(args)
        .env_remove("CLOUDKEY_PKCS11_CONFIG")
        .output()
        .context("running cloudkey-loadtest")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.success(),
        "cloudkey-loadtest {args:?} failed:\n{stdout}\n{stderr}"
    );
    let text = std::fs::read_to_string(&json)
        .with_context(|| format!("no results; output:\n{stdout}\n{stderr}"))?;
    serde_json::from_str(&text).context("parsing the results")
}

fn num(v: &Value, key: &str) -> Result<u64> {
    v.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow!("{key} missing in {v}"))
}

/// One step; ops > 0, no errors, every signature verified, and nothing left to clean up.
fn check(report: &Value) -> Result<()> {
    let steps = report["steps"]
        .as_array()
        .ok_or_else(|| anyhow!("no steps in {report}"))?;
    ensure!(steps.len() == 1, "one step expected: {report}");
    let s = &steps[0];
    let signs = num(&s["sign_latency"], "count")?;
    ensure!(num(s, "ops")? > 0, "no operation: {s}");
    ensure!(signs > 0, "no signature: {s}");
    ensure!(num(s, "errors")? == 0, "errors: {}", s["errors_by_code"]);
    ensure!(
        num(s, "verify_failures")? == 0,
        "verification failures: {s}"
    );
    ensure!(
        num(s, "verified")? == signs,
        "{} of {signs} signatures verified",
        num(s, "verified")?
    );
    let cleanup = report["cleanup_errors"]
        .as_array()
        .ok_or_else(|| anyhow!("no cleanup_errors in {report}"))?;
    if !cleanup.is_empty() {
        bail!("cleanup failed: {cleanup:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadtest_drives_a_cluster_through_the_protocol_client() -> Result<()> {
    let cluster = Cluster::start_init(3).await?;
    // A token and the module's configuration, which the client target also reads.
    let token = cluster.pkcs11_token("loadtest").await?;
    let dir = tempfile::tempdir()?;
    let config = token.config.display().to_string();
    let args = [
        "--workload",
        "mix",
        "--keygen-percent",
        "10",
        "--workers",
        "4",
        "--warmup",
        "0.3",
        "--duration",
        "2",
        "--verify",
        "client",
        "--config",
        &config,
        "--pin",
        P11_USER_PIN,
    ]
    .map(str::to_string);
    let path = dir.path().to_path_buf();
    let report = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&args, &path)
    })
    .await??;
    check(&report)?;
    let s = &report["steps"][0];
    ensure!(
        num(&s["keygen_latency"], "count")? > 0,
        "the mix generated no key: {s}"
    );
    Ok(())
}

#[test]
fn loadtest_chip_target_verifies_every_signature() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let report = run(
        &[
            "--workers",
            "4",
            "--warmup",
            "0.3",
            "--duration",
            "2",
            "--verify",
            "chip",
        ],
        dir.path(),
    )?;
    check(&report)
}
