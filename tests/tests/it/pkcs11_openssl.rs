//! OpenSSL 3 with the libp11 engine (`libengine-pkcs11-openssl`) on the built module against a
//! real cluster: keys addressed by RFC 7512 `pkcs11:` URIs sign files and self-signed
//! certificates, which plain OpenSSL verifies with the public keys the engine exports.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use cloudkey_tests::{Pkcs11Token, P11_CONFIG_ENV, P11_USER_PIN};

use crate::p11::{self, openssl, tool_keypair, words};

/// libp11's engine (Debian: `libengine-pkcs11-openssl`), in OpenSSL's engines directory
/// (`openssl version -e`; `/usr/lib/x86_64-linux-gnu/engines-3` on Debian 12 amd64).
fn engine_path(dir: &Path) -> Result<PathBuf> {
    let out = openssl(dir, &[], &["version", "-e"])?;
    let engines = out
        .split_once("ENGINESDIR: \"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map(|(path, _)| PathBuf::from(path))
        .with_context(|| format!("no ENGINESDIR in `openssl version -e`: {out}"))?;
    let engine = engines.join("pkcs11.so");
    ensure!(
        engine.exists(),
        "{} is missing: apt-get install libengine-pkcs11-openssl (see .ci/run)",
        engine.display()
    );
    Ok(engine)
}

/// An `openssl.cnf` that loads the engine with our module (not initialised until used).
fn write_openssl_cnf(dir: &Path, module: &Path) -> Result<PathBuf> {
    let path = dir.join("openssl.cnf");
    std::fs::write(
        &path,
        format!(
            "openssl_conf = openssl_init\n\
             [openssl_init]\nengines = engine_section\n\
             [engine_section]\npkcs11 = pkcs11_section\n\
             [pkcs11_section]\nengine_id = pkcs11\ndynamic_path = {}\n\
             MODULE_PATH = {}\ninit = 0\n",
            engine_path(dir)?.display(),
            module.display()
        ),
    )?;
    Ok(path)
}

/// The URI of the key `label` of `token`; private keys carry the PIN.
fn uri(token: &Pkcs11Token, label: &str, private: bool) -> String {
    if private {
        format!(
            "pkcs11:token={};object={label};type=private?pin-value={P11_USER_PIN}",
            token.label
        )
    } else {
        format!("pkcs11:token={};object={label};type=public", token.label)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_signs_files_and_certificates_with_pkcs11_uris() -> Result<()> {
    p11::on_token("openssl", openssl_session).await
}

fn openssl_session(token: &Pkcs11Token, dir: &Path) -> Result<()> {
    tool_keypair(token, dir, "EC:prime256v1", "ec", "01")?;
    tool_keypair(token, dir, "rsa:2048", "rsa", "02")?;
    let cnf = write_openssl_cnf(dir, &token.module)?;
    let env: [(&str, &Path); 2] = [("OPENSSL_CONF", &cnf), (P11_CONFIG_ENV, &token.config)];
    // `openssl` with the engine; command lines without spaces in their words.
    let engine = |line: String| openssl(dir, &env, &words(&line));
    let plain = |line: &str| openssl(dir, &[], &words(line));
    let (ec, rsa) = (uri(token, "ec", true), uri(token, "rsa", true));
    std::fs::write(dir.join("msg"), b"signed through libp11 and cloudkey\n")?;
    std::fs::write(dir.join("other"), b"something else\n")?;

    // The public keys, read through the engine.
    for label in ["ec", "rsa"] {
        engine(format!(
            "pkey -engine pkcs11 -inform engine -pubin -in {} -pubout -out {label}.pub.pem",
            uri(token, label, false)
        ))?;
    }

    // ECDSA over a digest with pkeyutl.
    plain("dgst -sha256 -binary -out msg.sha256 msg")?;
    engine(format!(
        "pkeyutl -engine pkcs11 -keyform engine -inkey {ec} -sign -in msg.sha256 -out ec.sig"
    ))?;
    let out = plain("pkeyutl -verify -pubin -inkey ec.pub.pem -in msg.sha256 -sigfile ec.sig")?;
    ensure!(out.contains("Signature Verified Successfully"), "{out}");

    // RSA PKCS#1 v1.5 and PSS with dgst.
    engine(format!(
        "dgst -engine pkcs11 -keyform engine -sign {rsa} -sha256 -out rsa.sig msg"
    ))?;
    let out = plain("dgst -sha256 -verify rsa.pub.pem -signature rsa.sig msg")?;
    ensure!(out.contains("Verified OK"), "{out}");
    ensure!(
        p11::openssl_fails(
            dir,
            &words("dgst -sha256 -verify rsa.pub.pem -signature rsa.sig other")
        )?,
        "the RSA signature verifies another file"
    );
    let pss = "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32";
    engine(format!(
        "dgst -engine pkcs11 -keyform engine -sign {rsa} -sha256 {pss} -out pss.sig msg"
    ))?;
    let out = plain(&format!(
        "dgst -sha256 {pss} -verify rsa.pub.pem -signature pss.sig msg"
    ))?;
    ensure!(out.contains("Verified OK"), "{out}");

    // Self-signed certificates whose keys never leave the cluster.
    for (label, key, alg) in [
        ("ec", &ec, "ecdsa-with-SHA256"),
        ("rsa", &rsa, "sha256WithRSAEncryption"),
    ] {
        let cert = format!("{label}.cert.pem");
        engine(format!(
            "req -new -x509 -engine pkcs11 -keyform engine -key {key} -subj /CN=test -days 1 \
             -sha256 -out {cert}"
        ))?;
        let text = plain(&format!("x509 -noout -text -in {cert}"))?;
        ensure!(
            text.contains("Subject: CN = test") && text.contains(alg),
            "{label} certificate:\n{text}"
        );
        let out = plain(&format!("verify -CAfile {cert} {cert}"))?;
        ensure!(out.contains(&format!("{cert}: OK")), "{out}");
        let public = plain(&format!("x509 -pubkey -noout -in {cert}"))?;
        ensure!(
            public == std::fs::read_to_string(dir.join(format!("{label}.pub.pem")))?,
            "the {label} certificate holds another public key"
        );
    }

    // A wrong PIN: refused. libp11 then finalises the module from OpenSSL's exit handler,
    // after the main thread's locals are gone; that must be clean too.
    let wrong = format!(
        "pkcs11:token={};object=ec;type=private?pin-value=0000",
        token.label
    );
    let out = p11::output_within(
        Command::new("openssl")
            .current_dir(dir)
            .env("OPENSSL_CONF", &cnf)
            .env(P11_CONFIG_ENV, &token.config)
            .args(words(&format!(
                "pkeyutl -engine pkcs11 -keyform engine -inkey {wrong} -sign -in msg.sha256 \
                 -out wrong.sig"
            ))),
        p11::TOOL_TIMEOUT,
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "signed with a wrong PIN:\n{stderr}");
    ensure!(
        !stderr.contains("panicked") && !stderr.contains("cloudkey-pkcs11:"),
        "the module complained at exit:\n{stderr}"
    );
    Ok(())
}
