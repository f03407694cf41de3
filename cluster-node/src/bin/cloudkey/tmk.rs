//! `cloudkey tmk ...`: terminal master-key injection. Terminals are registered with their
//! public key and administrators; the terminal opens an application (a QR code); the first
//! administrator has a one-time code sent and applies; the second approves (`approval
//! approve`); the terminal fetches its key. What the terminal does with its keys is in
//! [`crate::terminal`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use cloudkey_protocol::client::Client;
use cloudkey_protocol::gov::{valid_terminal_id, QrPayload, TmkDelivery};
use cloudkey_protocol::msg::{Request, Response, Secret};
use qrcode::render::unicode::Dense1x2;
use qrcode::QrCode;
use zeroize::Zeroizing;

use cloudkey_node::pki;

use crate::args::{TerminalCommand, TmkCommand};
use crate::gov::officer_auth;
use crate::output::{
    describe_approval, describe_delivery, format_terminals, now_ms, relative_time,
    terminal_key_name,
};
use crate::terminal::{self, TerminalKeyKind};
use crate::{call, unexpected};

/// The terminal's private key as `tmk terminal keygen` writes it (PKCS#8 PEM).
pub const TERMINAL_KEY_FILE: &str = "terminal.key.pem";
/// The terminal's public key as `tmk terminal keygen` writes it (SubjectPublicKeyInfo PEM).
pub const TERMINAL_PUB_FILE: &str = "terminal.pub.pem";

/// Runs one `tmk` command.
///
/// # Errors
/// Refusals of the cluster, unreadable files, keys that do not parse or do not check.
pub(crate) async fn command(client: &Client, cmd: TmkCommand) -> anyhow::Result<()> {
    match cmd {
        TmkCommand::Terminal(TerminalCommand::Add {
            id,
            rsa_public_key,
            sm2_public_key,
            admins,
            identity,
        }) => add_terminal(client, id, rsa_public_key, sm2_public_key, admins, identity).await,
        TmkCommand::Terminal(TerminalCommand::List) => list_terminals(client).await,
        TmkCommand::Terminal(TerminalCommand::Keygen { out, sm2 }) => terminal_keygen(&out, sm2),
        TmkCommand::Request { id, png } => request(client, &id, png).await,
        TmkCommand::Sms { id, officer } => sms(client, &id, &officer).await,
        TmkCommand::Apply {
            id,
            payload,
            sms_code,
            officer,
        } => apply(client, &id, payload, sms_code, &officer).await,
        TmkCommand::Fetch {
            id,
            payload,
            admin,
            private_key,
            out,
        } => fetch(client, &id, payload, admin, private_key, out).await,
    }
}

async fn add_terminal(
    client: &Client,
    id: String,
    rsa_public_key: Option<PathBuf>,
    sm2_public_key: Option<PathBuf>,
    admins: Vec<String>,
    identity: Option<String>,
) -> anyhow::Result<()> {
    check_terminal_id(&id)?;
    let (path, kind) = match (rsa_public_key, sm2_public_key) {
        (Some(p), None) => (p, TerminalKeyKind::Rsa),
        (None, Some(p)) => (p, TerminalKeyKind::Sm2),
        _ => bail!("give exactly one of --rsa-public-key and --sm2-public-key"),
    };
    let key = terminal::terminal_key_from_pem(&read_text(&path)?, kind)
        .with_context(|| format!("{}", path.display()))?;
    let name = terminal_key_name(&key);
    let req = Request::AddTerminal {
        id: id.clone(),
        key,
        admins: admins.clone(),
        identity: identity.clone(),
    };
    call(client, req).await?;
    println!(
        "terminal {id} registered: {name} key, administrators {}, {}",
        admins.join(","),
        identity.map_or_else(
            || "any client identity".to_owned(),
            |i| format!("connects as {i}")
        )
    );
    Ok(())
}

async fn list_terminals(client: &Client) -> anyhow::Result<()> {
    match call(client, Request::ListTerminals).await? {
        Response::Terminals(t) => print!("{}", format_terminals(&t)),
        r => return Err(unexpected("list terminals", &r)),
    }
    Ok(())
}

/// Writes a new terminal key pair into `dir`: RSA-2048 (aws-lc-rs) or SM2.
pub(crate) fn terminal_keygen(dir: &Path, sm2: bool) -> anyhow::Result<()> {
    let (private_pem, public_pem) = if sm2 {
        terminal::sm2_key_pair_pem()?
    } else {
        terminal::rsa_key_pair_pem()?
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = dir.join(TERMINAL_KEY_FILE);
    let public = dir.join(TERMINAL_PUB_FILE);
    pki::write_file(&key, private_pem.as_bytes(), 0o600)?;
    pki::write_file(&public, public_pem.as_bytes(), 0o644)?;
    println!(
        "{} terminal key pair: {} (private, keep it on the terminal) and {}",
        if sm2 { "SM2" } else { "RSA-2048" },
        key.display(),
        public.display()
    );
    println!(
        "register it with `cloudkey tmk terminal add ID --{}-public-key {} --admin NAME --admin NAME`",
        if sm2 { "sm2" } else { "rsa" },
        public.display()
    );
    Ok(())
}

async fn request(client: &Client, id: &str, png: Option<PathBuf>) -> anyhow::Result<()> {
    check_terminal_id(id)?;
    let qr = match call(
        client,
        Request::TmkRequest {
            terminal: id.to_owned(),
        },
    )
    .await?
    {
        Response::TmkQr(q) => q,
        r => return Err(unexpected("tmk request", &r)),
    };
    let code = QrCode::new(qr.payload.as_bytes())
        .map_err(|e| anyhow!("the payload does not fit a QR code: {e}"))?;
    println!("application {} for terminal {id}", qr.application);
    println!("payload  {}", qr.payload);
    println!("expires  {}", relative_time(now_ms(), qr.expires_unix_ms));
    print!("{}", qr_text(&code));
    if let Some(path) = png {
        write_qr_png(&code, &path)?;
        println!("QR code written to {}", path.display());
    }
    Ok(())
}

async fn sms(client: &Client, id: &str, officer: &str) -> anyhow::Result<()> {
    check_terminal_id(id)?;
    let req = Request::TmkSmsCode {
        officer: officer_auth(officer)?,
        terminal: id.to_owned(),
    };
    call(client, req).await?;
    println!("code sent to {officer} for terminal {id}; see the notifier");
    Ok(())
}

async fn apply(
    client: &Client,
    id: &str,
    payload: String,
    sms_code: String,
    officer: &str,
) -> anyhow::Result<()> {
    check_terminal_id(id)?;
    check_payload(id, &payload)?;
    let sms_code = Zeroizing::new(sms_code);
    let req = Request::TmkApply {
        officer: officer_auth(officer)?,
        terminal: id.to_owned(),
        payload,
        sms_code: Secret::from(sms_code.as_str()),
    };
    match call(client, req).await? {
        Response::Approval(a) => {
            println!("{officer} applied for a TMK for terminal {id}; approval request opened:");
            print!("{}", describe_approval(&a, now_ms()));
            println!(
                "the second administrator approves it with `cloudkey approval approve {} --officer NAME`",
                a.id
            );
        }
        r => return Err(unexpected("tmk apply", &r)),
    }
    Ok(())
}

async fn fetch(
    client: &Client,
    id: &str,
    payload: String,
    admin: String,
    private_key: Option<PathBuf>,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    check_terminal_id(id)?;
    check_payload(id, &payload)?;
    let req = Request::TmkFetch {
        terminal: id.to_owned(),
        payload,
        admin,
    };
    let d = match call(client, req).await? {
        Response::Tmk(d) => d,
        r => return Err(unexpected("tmk fetch", &r)),
    };
    print!("{}", describe_delivery(id, &d));
    if let Some(path) = out {
        pki::write_file(&path, &d.encrypted, 0o600)?;
        println!("encrypted key written to {}", path.display());
    }
    if let Some(path) = private_key {
        check_kcv_locally(&d, &path)?;
    }
    Ok(())
}

/// As the terminal: decrypts the delivered key with the private key in `path` and compares
/// its KCV with the cluster's (the key itself is never shown).
fn check_kcv_locally(d: &TmkDelivery, path: &Path) -> anyhow::Result<()> {
    let (_, der) = terminal::pem_block(&read_text(path)?, &["PRIVATE KEY"])
        .with_context(|| format!("{}", path.display()))?;
    let key = terminal::decrypt_tmk(&d.algorithm, &der, &d.encrypted)?;
    let local = terminal::kcv(&d.algorithm, &key)?;
    if local != d.kcv {
        bail!(
            "KCV MISMATCH: the key decrypted with {} has KCV {}, the cluster says {}",
            path.display(),
            hex::encode(local),
            hex::encode(d.kcv)
        );
    }
    println!(
        "KCV check: the key decrypted locally with {} has KCV {}: matches",
        path.display(),
        hex::encode(local)
    );
    Ok(())
}

/// The payload, checked to be a TMK QR payload of terminal `id`.
fn check_payload(id: &str, payload: &str) -> anyhow::Result<()> {
    let p = QrPayload::parse(payload).ok_or_else(|| {
        anyhow!("{payload:?} is not a TMK QR payload (CKTMK1.<terminal>.<application>.<nonce>)")
    })?;
    if p.terminal != id {
        bail!("the payload is terminal {}'s, not {id}'s", p.terminal);
    }
    Ok(())
}

fn check_terminal_id(id: &str) -> anyhow::Result<()> {
    if !valid_terminal_id(id) {
        bail!("{id:?} is not a terminal number (1 to 64 of A-Z a-z 0-9 - _)");
    }
    Ok(())
}

/// The QR code as text: two modules per character cell (Unicode half blocks), light modules
/// drawn, for a dark terminal background.
fn qr_text(code: &QrCode) -> String {
    let mut text = code
        .render::<Dense1x2>()
        .dark_color(Dense1x2::Light)
        .light_color(Dense1x2::Dark)
        .build();
    text.push('\n');
    text
}

fn write_qr_png(code: &QrCode, path: &Path) -> anyhow::Result<()> {
    let image = code
        .render::<image::Luma<u8>>()
        .min_dimensions(256, 256)
        .build();
    let mut png = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut png, image::ImageFormat::Png)
        .map_err(|e| anyhow!("PNG encoding failed: {e}"))?;
    pki::write_file(path, png.get_ref(), 0o644)?;
    Ok(())
}

fn read_text(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    std::fs::read_to_string(path)
        .map(Zeroizing::new)
        .with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use crate::terminal::terminal_key_from_pem;

    use super::*;

    #[test]
    fn keygen_writes_both_files_and_qr_codes_render() {
        let dir = tempfile::tempdir().unwrap();
        terminal_keygen(dir.path(), true).unwrap();
        let public = std::fs::read_to_string(dir.path().join(TERMINAL_PUB_FILE)).unwrap();
        assert!(terminal_key_from_pem(&public, TerminalKeyKind::Sm2).is_ok());
        let private = std::fs::read_to_string(dir.path().join(TERMINAL_KEY_FILE)).unwrap();
        assert!(private.starts_with("-----BEGIN PRIVATE KEY-----"));

        let payload = QrPayload {
            terminal: "ATM-1".into(),
            application: 3,
            nonce: [0xab; 16],
        }
        .encode();
        assert!(check_payload("ATM-1", &payload).is_ok());
        assert!(check_payload("ATM-2", &payload).is_err());
        assert!(check_payload("ATM-1", "CKTMK1.ATM-1").is_err());
        let code = QrCode::new(payload.as_bytes()).unwrap();
        let text = qr_text(&code);
        assert!(
            text.contains('\u{2580}') || text.contains('\u{2584}'),
            "{text}"
        );
        let png = dir.path().join("qr.png");
        write_qr_png(&code, &png).unwrap();
        assert!(std::fs::read(&png)
            .unwrap()
            .starts_with(b"\x89PNG\r\n\x1a\n"));
    }
}
