//! The TMK injection of `docs/governance.md`, step by step with the `cloudkey` CLI against
//! `cloudkey dev up` (real binaries, a temporary directory): officers, a terminal key made by
//! `tmk terminal keygen`, the QR payload and PNG, the SMS code from the development notifier,
//! apply, approve, the terminal's fetch with the local KCV check, then the audit export, its
//! offline verification, and a tampered and a truncated export that fail at the right record.

use std::path::Path;
use std::process::Output;

use anyhow::{anyhow, ensure, Context, Result};
use cloudkey_node::dev;

use crate::dev_cli::{cloudkey, cloudkey_env, text, Reaper};

const PIN_ENV: &str = "CLOUDKEY_OFFICER_PIN";

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The value after `key` at the start of a line (`payload  CKTMK1...`).
fn field(out: &str, key: &str) -> Result<String> {
    out.lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .ok_or_else(|| anyhow!("no {key:?} line in:\n{out}"))
}

/// Writes `export` as `<name>.json` and checks that `cloudkey audit verify` refuses it, naming the
/// record at `pos`.
async fn verify_fails_at(
    cwd: &Path,
    name: &str,
    export: &serde_json::Value,
    ca: &str,
    pos: usize,
) -> Result<()> {
    let file = format!("{name}.json");
    std::fs::write(cwd.join(&file), serde_json::to_string_pretty(export)?)?;
    let bad = cloudkey(&["audit", "verify", &file, "--ca", ca], cwd).await?;
    let err = String::from_utf8_lossy(&bad.stderr).into_owned();
    ensure!(
        !bad.status.success() && err.contains(&format!("position {pos} ")),
        "{name}: expected a failure at position {pos}: {}",
        text(&bad)
    );
    Ok(())
}

async fn ok(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Result<String> {
    let o = cloudkey_env(args, cwd, env).await?;
    ensure!(
        o.status.success(),
        "cloudkey {}: {}",
        args.join(" "),
        text(&o)
    );
    Ok(stdout(&o))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmk_injection_from_the_cli_against_dev_up_and_a_verified_audit_export() -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("cloudkey-tmk-").tempdir()?;
    let cwd = tmp.path();
    let dir = cwd.join(dev::DEFAULT_DIR);
    let _reaper = Reaper(dir.clone());
    let up = cloudkey(&["dev", "up", "--nodes", "3", "--chips-per-node", "1"], cwd).await?;
    ensure!(up.status.success(), "dev up: {}", text(&up));
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let (alice, bob, atm) = (d("alice.toml"), d("bob.toml"), d("atm-0001.toml"));
    let alice_pin = [(PIN_ENV, "alice-pin-1")];
    let bob_pin = [(PIN_ENV, "bob-pin-22")];

    // 0. Officers and the terminal.
    ok(
        &["officer", "add", "alice", "--identity", "operator/alice"],
        cwd,
        &alice_pin,
    )
    .await?;
    ok(
        &["officer", "add", "bob", "--identity", "operator/bob"],
        cwd,
        &bob_pin,
    )
    .await?;
    ok(&["tmk", "terminal", "keygen", "--out", "atm"], cwd, &[]).await?;
    ok(
        &[
            "tmk",
            "terminal",
            "add",
            "ATM-0001",
            "--rsa-public-key",
            "atm/terminal.pub.pem",
            "--admin",
            "alice",
            "--admin",
            "bob",
            "--identity",
            "client/atm-0001",
        ],
        cwd,
        &[],
    )
    .await?;

    // 1. The terminal asks; the payload comes with a QR code.
    let out = ok(
        &[
            "--config", &atm, "tmk", "request", "ATM-0001", "--png", "qr.png",
        ],
        cwd,
        &[],
    )
    .await?;
    let payload = field(&out, "payload")?;
    ensure!(payload.starts_with("CKTMK1.ATM-0001."), "{out}");
    let png = std::fs::read(cwd.join("qr.png"))?;
    ensure!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "qr.png is not a PNG");
    ensure!(
        out.contains('█') || out.contains('▀') || out.contains('▄'),
        "no QR code drawn: {out}"
    );

    // 2. The first administrator: SMS code, then apply.
    ok(
        &[
            "--config",
            &alice,
            "tmk",
            "sms",
            "ATM-0001",
            "--officer",
            "alice",
        ],
        cwd,
        &alice_pin,
    )
    .await?;
    let sms = std::fs::read_to_string(dir.join(dev::DEV_SMS_FILE))?;
    let code = sms
        .lines()
        .rev()
        .find_map(|l| l.split_once("officer=alice terminal=ATM-0001 code="))
        .map(|(_, c)| c.trim().to_string())
        .ok_or_else(|| anyhow!("no code in the notifier's file: {sms}"))?;
    let out = ok(
        &[
            "--config",
            &alice,
            "tmk",
            "apply",
            "ATM-0001",
            "--payload",
            &payload,
            "--sms-code",
            &code,
            "--officer",
            "alice",
        ],
        cwd,
        &alice_pin,
    )
    .await?;
    let request = field(&out, "request")?;
    let id = request
        .split_whitespace()
        .next()
        .ok_or_else(|| anyhow!("no request id in {out}"))?
        .to_string();
    // Alice cannot approve her own application.
    let own = cloudkey_env(
        &[
            "--config",
            &alice,
            "approval",
            "approve",
            &id,
            "--officer",
            "alice",
        ],
        cwd,
        &alice_pin,
    )
    .await?;
    ensure!(
        !own.status.success(),
        "self-approval succeeded: {}",
        text(&own)
    );
    // The terminal's check before the approval fails.
    let fetch = [
        "--config",
        &atm,
        "tmk",
        "fetch",
        "ATM-0001",
        "--payload",
        &payload,
        "--admin",
        "alice",
    ];
    let early = cloudkey(&fetch, cwd).await?;
    ensure!(
        !early.status.success(),
        "fetch before approval: {}",
        text(&early)
    );

    // 3. The second administrator approves.
    let list = ok(&["approval", "list"], cwd, &[]).await?;
    ensure!(list.contains("tmk-inject"), "{list}");
    ok(
        &[
            "--config",
            &bob,
            "approval",
            "approve",
            &id,
            "--officer",
            "bob",
        ],
        cwd,
        &bob_pin,
    )
    .await?;

    // 4. The terminal's check and its key, decrypted and checked locally.
    let out = ok(
        &[&fetch[..], &["--private-key", "atm/terminal.key.pem"]].concat(),
        cwd,
        &[],
    )
    .await?;
    ensure!(out.contains("matches"), "KCV check: {out}");
    let kcv = field(&out, "kcv")?;
    ensure!(kcv.len() == 6, "{out}");

    // 5. The audit chain: export, verify, then tamper.
    ok(&["audit", "export", "--out", "audit.json"], cwd, &[]).await?;
    let ca = d("pki/ca.pem");
    let report = ok(&["audit", "verify", "audit.json", "--ca", &ca], cwd, &[]).await?;
    ensure!(report.contains("audit chain OK"), "{report}");
    let json = std::fs::read_to_string(cwd.join("audit.json"))?;
    let export: serde_json::Value = serde_json::from_str(&json)?;
    let records = export["records"].as_array().context("records")?;
    let pos = records
        .iter()
        .position(|r| {
            r["summary"]
                .as_str()
                .is_some_and(|s| s.starts_with("approve id=") && s.contains("officer=bob"))
        })
        .ok_or_else(|| anyhow!("bob's approval is not in the export"))?;
    // A changed record.
    let mut changed = export.clone();
    let s = changed["records"][pos]["summary"]
        .as_str()
        .context("summary")?
        .replace("officer=bob", "officer=eve");
    changed["records"][pos]["summary"] = serde_json::Value::String(s);
    verify_fails_at(cwd, "changed", &changed, &ca, pos).await?;
    // A dropped record: the next one no longer links.
    let mut dropped = export.clone();
    dropped["records"]
        .as_array_mut()
        .context("records")?
        .remove(pos);
    verify_fails_at(cwd, "dropped", &dropped, &ca, pos).await?;
    // Another CA does not vouch for the audit key (once there is one).
    if export["audit_key"].is_object() {
        let other = cwd.join("other-pki");
        cloudkey_node::pki::init_pki(&other, 1, &[], &[])?;
        let other_ca = other.join("ca.pem").to_string_lossy().into_owned();
        let bad = cloudkey(&["audit", "verify", "audit.json", "--ca", &other_ca], cwd).await?;
        ensure!(!bad.status.success(), "another CA: {}", text(&bad));
    }

    let down = cloudkey(&["dev", "down", "--purge"], cwd).await?;
    ensure!(down.status.success(), "dev down: {}", text(&down));
    Ok(())
}
