//! `cloudkey audit ...`: the tamper-evident audit chain: export it page by page with the
//! audit key, and verify an export offline against the cluster CA.

use std::path::Path;

use anyhow::{anyhow, bail, Context};
use cloudkey_protocol::audit::{self, AuditExport};
use cloudkey_protocol::client::Client;
use cloudkey_protocol::gov::AuditEntry;
use cloudkey_protocol::msg::{Request, Response};

use cloudkey_node::pki;

use crate::output::{format_report, now_ms};
use crate::{call, unexpected};

/// Records asked for per `AuditExport` page (the most a node sends).
pub const AUDIT_PAGE: u32 = 1000;

pub(crate) async fn audit_export(client: &Client, out: &Path) -> anyhow::Result<()> {
    let mut records: Vec<AuditEntry> = Vec::new();
    let mut key = None;
    let mut from = 0u64;
    loop {
        let req = Request::AuditExport {
            from,
            max: AUDIT_PAGE,
        };
        let page = match call(client, req).await? {
            Response::Audit(p) => p,
            r => return Err(unexpected("audit export", &r)),
        };
        if page.key.is_some() {
            key = page.key;
        }
        let last = page.records.last().map(|r| r.index);
        records.extend(page.records);
        if !page.more {
            break;
        }
        from = match last.and_then(|l| l.checked_add(1)) {
            Some(next) if next > from => next,
            _ => bail!("the cluster said more audit records follow log index {from} but sent none"),
        };
    }
    let export = AuditExport::new(key.as_ref(), &records, now_ms());
    let json = export.to_json()?;
    pki::write_file(out, json.as_bytes(), 0o644)?;
    match (records.first(), records.last()) {
        (Some(f), Some(l)) => println!(
            "{} audit record(s), log index {}..={}, written to {}",
            records.len(),
            f.index,
            l.index,
            out.display()
        ),
        _ => println!("the audit chain is empty; written to {}", out.display()),
    }
    println!(
        "audit key: {}; verify offline with `cloudkey audit verify {} --ca CA_PEM`",
        if key.is_some() {
            "included"
        } else {
            "none yet"
        },
        out.display()
    );
    Ok(())
}

/// Verifies an export file against a CA file; the report for people.
pub(crate) fn audit_verify(file: &Path, ca: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let ca_pem =
        std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
    let export = AuditExport::from_json(&text).with_context(|| format!("{}", file.display()))?;
    let r = audit::verify(&export, &ca_pem)
        .map_err(|e| anyhow!("{}: audit chain does NOT verify: {e}", file.display()))?;
    Ok(format_report(&r))
}

/// `cloudkey audit verify`: prints the report of an export that verifies.
///
/// # Errors
/// As [`audit_verify`].
pub(crate) fn verify(file: &Path, ca: &Path) -> anyhow::Result<()> {
    print!("{}", audit_verify(file, ca)?);
    Ok(())
}
