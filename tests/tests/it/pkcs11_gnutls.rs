//! GnuTLS's `p11tool` (through p11-kit) on the built module against a real cluster: the token,
//! its objects and their `pkcs11:` URIs, with and without a login, a public key export, and
//! GnuTLS's own sign-and-verify test with the token's keys.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};
use cloudkey_tests::{Pkcs11Token, P11_CONFIG_ENV, P11_USER_PIN};

use crate::p11::{self, tool_keypair};

/// `p11tool --provider <module> args...`, with the PIN in `GNUTLS_PIN` when `login`.
fn p11tool(token: &Pkcs11Token, dir: &Path, login: bool, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("p11tool");
    cmd.current_dir(dir)
        .env(P11_CONFIG_ENV, &token.config)
        .arg("--provider")
        .arg(&token.module);
    if login {
        cmd.env("GNUTLS_PIN", P11_USER_PIN).arg("--login");
    }
    let (stdout, stderr) = p11::run(cmd.args(args))?;
    Ok(format!("{stdout}{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p11tool_lists_the_objects_with_their_uris_and_signs() -> Result<()> {
    p11::on_token("gnutls", gnutls_session).await
}

fn gnutls_session(token: &Pkcs11Token, dir: &Path) -> Result<()> {
    tool_keypair(token, dir, "EC:prime256v1", "ec", "01")?;
    tool_keypair(token, dir, "rsa:2048", "rsa", "02")?;
    let token_uri = format!("pkcs11:token={}", token.label);

    let tokens = p11tool(token, dir, false, &["--list-tokens"])?;
    ensure!(
        tokens.contains(&format!("Label: {}", token.label))
            && tokens.contains(&format!("token={}", token.label))
            && tokens.contains("Manufacturer: cloudkey"),
        "--list-tokens:\n{tokens}"
    );

    // Without a login: the public keys, each with its URI.
    let public = p11tool(token, dir, false, &["--list-all", &token_uri])?;
    for want in [
        "id=%01;object=ec;type=public",
        "id=%02;object=rsa;type=public",
        "Public key (EC/ECDSA-SECP256R1)",
        "Public key (RSA-2048)",
    ] {
        ensure!(
            public.contains(want),
            "--list-all lacks {want:?}:\n{public}"
        );
    }
    ensure!(
        !public.contains("type=private"),
        "private keys listed without a login:\n{public}"
    );

    // With a login: the private keys too, sensitive and never extractable.
    let all = p11tool(token, dir, true, &["--list-all", &token_uri])?;
    for want in [
        "id=%01;object=ec;type=private",
        "id=%02;object=rsa;type=private",
        "Private key (EC/ECDSA-SECP256R1)",
        "CKA_SENSITIVE",
        "CKA_NEVER_EXTRACTABLE",
    ] {
        ensure!(
            all.contains(want),
            "--login --list-all lacks {want:?}:\n{all}"
        );
    }

    // The public key GnuTLS exports is the one OpenSSL reads from pkcs11-tool's export.
    let ec_public = format!("{token_uri};object=ec;type=public");
    let exported = p11tool(
        token,
        dir,
        true,
        &["--export-pubkey", &ec_public, "--outfile", "gnutls.pem"],
    )?;
    ensure!(!exported.contains("rror"), "{exported}");
    p11::pkcs11_tool(
        token,
        dir,
        &[
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            "01",
            "--output-file",
            "ec.der",
        ],
    )?;
    let via_tool = p11::openssl(
        dir,
        &[],
        &["pkey", "-pubin", "-inform", "DER", "-in", "ec.der"],
    )?;
    let via_gnutls = p11::openssl(dir, &[], &["pkey", "-pubin", "-in", "gnutls.pem"])?;
    ensure!(via_tool == via_gnutls, "GnuTLS exports another key");

    // GnuTLS signs with each private key and verifies with the token's public key.
    for (label, alg) in [("ec", "ECDSA-SHA256"), ("rsa", "RSA-SHA256")] {
        let out = p11tool(
            token,
            dir,
            true,
            &["--test-sign", &format!("{token_uri};object={label}")],
        )?;
        for want in [
            format!("Signing using {alg}... ok"),
            "Verifying against private key parameters... ok".into(),
            "Verifying against public key in the token... ok".into(),
        ] {
            ensure!(
                out.contains(&want),
                "--test-sign {label} lacks {want:?}:\n{out}"
            );
        }
    }
    Ok(())
}
