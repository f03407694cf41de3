//! OpenSC's `pkcs11-tool` on the built module against a real cluster: slots, mechanisms, key
//! pair generation, signatures (verified by the `openssl` CLI with the public keys the tool
//! exports), OAEP decryption of what OpenSSL encrypted, and the tool's own `--test`.

use std::path::Path;

use anyhow::{ensure, Result};
use cloudkey_tests::{Cluster, Pkcs11Token, P11_USER_PIN};

use crate::p11::{self, openssl, pkcs11_tool, tool_keypair, words};

/// `pkcs11-tool --login --pin <user PIN> args...`.
fn logged_in(token: &Pkcs11Token, dir: &Path, args: &[&str]) -> Result<String> {
    let mut all = vec!["--login", "--pin", P11_USER_PIN];
    all.extend_from_slice(args);
    Ok(pkcs11_tool(token, dir, &all)?.0)
}

/// Exports a public key by id (`--read-object`, DER) and converts it to `<name>.pem`.
fn export_public(token: &Pkcs11Token, dir: &Path, id: &str, name: &str) -> Result<()> {
    let der = format!("{name}.der");
    pkcs11_tool(
        token,
        dir,
        &[
            "--read-object",
            "--type",
            "pubkey",
            "--id",
            id,
            "--output-file",
            &der,
        ],
    )?;
    let pem = format!("{name}.pem");
    openssl(
        dir,
        &[],
        &[
            "pkey", "-pubin", "-inform", "DER", "-in", &der, "-out", &pem,
        ],
    )?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_tool_lists_generates_signs_and_decrypts() -> Result<()> {
    p11::on_token("tool", tool_session).await
}

fn tool_session(token: &Pkcs11Token, dir: &Path) -> Result<()> {
    let (slots, _) = pkcs11_tool(token, dir, &["--list-slots"])?;
    for want in [
        "token label        : tool",
        "token manufacturer : cloudkey",
        "login required",
        "token initialized",
        "PIN initialized",
    ] {
        ensure!(
            slots.contains(want),
            "--list-slots lacks {want:?}:\n{slots}"
        );
    }
    let (mechs, _) = pkcs11_tool(token, dir, &["--list-mechanisms"])?;
    for want in [
        "ECDSA-KEY-PAIR-GEN",
        "ECDSA-SHA256",
        "RSA-PKCS-KEY-PAIR-GEN",
        "SHA256-RSA-PKCS-PSS",
        "RSA-PKCS-OAEP",
        "AES-GCM",
        "SHA256-HMAC",
    ] {
        ensure!(
            mechs.contains(want),
            "--list-mechanisms lacks {want}:\n{mechs}"
        );
    }

    tool_keypair(token, dir, "EC:prime256v1", "ec", "01")?;
    tool_keypair(token, dir, "rsa:2048", "rsa", "02")?;
    let objects = logged_in(token, dir, &["--list-objects"])?;
    for want in [
        "Private Key Object; EC",
        "Public Key Object; EC",
        "Private Key Object; RSA",
        "Public Key Object; RSA 2048 bits",
    ] {
        ensure!(
            objects.contains(want),
            "--list-objects lacks {want}:\n{objects}"
        );
    }
    // Without a login only the public keys show.
    let (public, _) = pkcs11_tool(token, dir, &["--list-objects"])?;
    ensure!(
        !public.contains("Private Key Object") && public.contains("Public Key Object; EC"),
        "--list-objects without a login:\n{public}"
    );
    export_public(token, dir, "01", "ec.pub")?;
    export_public(token, dir, "02", "rsa.pub")?;
    std::fs::write(dir.join("msg"), b"signed by pkcs11-tool through cloudkey\n")?;
    std::fs::write(dir.join("other"), b"not what was signed\n")?;

    // ECDSA with SHA-256: the tool hashes, the token signs; OpenSSL verifies the DER form.
    logged_in(
        token,
        dir,
        &words(concat!(
            "--sign --mechanism ECDSA-SHA256 --id 01 --input-file msg ",
            "--output-file ec.sig --signature-format openssl",
        )),
    )?;
    let verify_ec = words("dgst -sha256 -verify ec.pub.pem -signature ec.sig");
    let out = openssl(dir, &[], &[&verify_ec[..], &["msg"]].concat())?;
    ensure!(out.contains("Verified OK"), "{out}");
    ensure!(
        p11::openssl_fails(dir, &[&verify_ec[..], &["other"]].concat())?,
        "the EC signature verifies another message"
    );
    let (valid, _) = pkcs11_tool(
        token,
        dir,
        &words(concat!(
            "--verify --mechanism ECDSA-SHA256 --id 01 --input-file msg ",
            "--signature-file ec.sig --signature-format openssl",
        )),
    )?;
    ensure!(valid.contains("Signature is valid"), "{valid}");

    // Raw ECDSA over a digest OpenSSL made.
    openssl(dir, &[], &words("dgst -sha256 -binary -out msg.sha256 msg"))?;
    logged_in(
        token,
        dir,
        &words("--sign --mechanism ECDSA --id 01 --input-file msg.sha256 --output-file ec-raw.sig"),
    )?;
    let raw = std::fs::read(dir.join("ec-raw.sig"))?;
    ensure!(
        raw.len() == 64,
        "raw ECDSA signature of {} bytes",
        raw.len()
    );
    std::fs::write(dir.join("ec-raw.der"), p11::sig_der(&raw))?;
    let out = openssl(
        dir,
        &[],
        &words("pkeyutl -verify -pubin -inkey ec.pub.pem -in msg.sha256 -sigfile ec-raw.der"),
    )?;
    ensure!(out.contains("Signature Verified Successfully"), "{out}");

    // RSA PKCS#1 v1.5 and PSS with SHA-256.
    logged_in(
        token,
        dir,
        &words("--sign --mechanism SHA256-RSA-PKCS --id 02 --input-file msg --output-file rsa.sig"),
    )?;
    let out = openssl(
        dir,
        &[],
        &words("dgst -sha256 -verify rsa.pub.pem -signature rsa.sig msg"),
    )?;
    ensure!(out.contains("Verified OK"), "{out}");
    logged_in(
        token,
        dir,
        &words(concat!(
            "--sign --mechanism SHA256-RSA-PKCS-PSS --mgf MGF1-SHA256 --salt-len ",
            "32 --id 02 --input-file msg --output-file pss.sig",
        )),
    )?;
    let out = openssl(
        dir,
        &[],
        &words(concat!(
            "dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 ",
            "-verify rsa.pub.pem -signature pss.sig msg",
        )),
    )?;
    ensure!(out.contains("Verified OK"), "{out}");

    // OAEP: OpenSSL encrypts to the token's public key, the token decrypts.
    std::fs::write(dir.join("secret"), b"for the token only")?;
    openssl(
        dir,
        &[],
        &words(concat!(
            "pkeyutl -encrypt -pubin -inkey rsa.pub.pem -pkeyopt ",
            "rsa_padding_mode:oaep -pkeyopt rsa_oaep_md:sha256 -pkeyopt ",
            "rsa_mgf1_md:sha256 -in secret -out secret.enc",
        )),
    )?;
    logged_in(
        token,
        dir,
        &words(concat!(
            "--decrypt --mechanism RSA-PKCS-OAEP --hash-algorithm SHA256 --mgf ",
            "MGF1-SHA256 --id 02 --input-file secret.enc --output-file secret.dec",
        )),
    )?;
    ensure!(
        std::fs::read(dir.join("secret.dec"))? == b"for the token only",
        "OAEP decryption"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pkcs11_tool_self_test_reports_no_error() -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let token = cluster.pkcs11_token("selftest").await?;
    tokio::task::spawn_blocking(move || {
        let tmp = tempfile::tempdir()?;
        let dir = tmp.path();
        // The keys `--test` works with: an RSA key pair (signatures, verification, OAEP
        // decryption) and an EC one.
        tool_keypair(&token, dir, "rsa:2048", "rsa", "01")?;
        tool_keypair(&token, dir, "EC:prime256v1", "ec", "02")?;
        let (stdout, stderr) =
            pkcs11_tool(&token, dir, &["--login", "--pin", P11_USER_PIN, "--test"])?;
        let all = format!("{stdout}\n{stderr}");
        println!("pkcs11-tool --test:\n{all}");
        for bad in ["ERR", "error:", "Aborting"] {
            ensure!(
                !all.contains(bad),
                "pkcs11-tool --test reports {bad:?}:\n{all}"
            );
        }
        ensure!(
            stdout.contains("No errors"),
            "pkcs11-tool --test did not finish cleanly:\n{all}"
        );
        // Its one warning is that CKM_RSA_PKCS is single-part, as the specification has it.
        for line in all
            .lines()
            .filter(|l| l.contains("warning") || l.contains("failed"))
        {
            ensure!(
                line.contains("C_SignUpdate failed: rv = CKR_FUNCTION_NOT_SUPPORTED"),
                "pkcs11-tool --test warns: {line}\n{all}"
            );
        }
        // It really tested the token's signatures and decryption.
        // (`--test` signs only with mechanisms that have CKF_HW.)
        for want in [
            "Signatures (currently only for RSA)",
            "testing signature mechanisms",
            "SHA256-RSA-PKCS: OK",
            "Decryption (currently only for RSA)",
            "RSA-PKCS-OAEP",
        ] {
            ensure!(all.contains(want), "--test skipped {want:?}:\n{all}");
        }
        Ok(())
    })
    .await?
}
