//! The module's configuration: a TOML file named by `CLOUDKEY_PKCS11_CONFIG`.
//!
//! ```toml
//! # the cluster (cloudkey_protocol::client::ClientSettings, at the top level)
//! endpoints = ["10.0.0.1:7400", "10.0.0.2:7400"]
//! ca = "ca.pem"                 # relative paths are relative to this file
//! cert = "app.pem"
//! key = "app.key"
//! deadline_ms = 5000            # optional: bound of every call, failover included
//! connect_timeout_ms = 1000     # optional
//!
//! log_level = "info"            # optional: level when CLOUDKEY_PKCS11_LOG is set but empty
//!
//! [[slots]]                     # the tokens shown as slots 0, 1, ... in this order
//! token = "payments"
//! [[slots]]
//! token = "signing"
//!
//! [vendor_mechanisms]           # optional: another vendor's SM2/SM3/SM4 numbers (VENDOR.md)
//! sm2 = 0x8000_8000
//! ```
//!
//! Parsed, then validated into typed values before anything is built (style habit 9); unknown
//! keys are errors, so a misspelt key never silently means its default.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use cloudkey_protocol::client::ClientSettings;
use serde::Deserialize;

use crate::mechanism::VendorNumbers;

/// The environment variable naming the configuration file.
pub const ENV_CONFIG: &str = "CLOUDKEY_PKCS11_CONFIG";
/// The environment variable that turns logging to stderr on (its value: a `tracing` filter
/// such as `debug` or `cloudkey_pkcs11=trace`; empty for the configured `log_level`).
pub const ENV_LOG: &str = "CLOUDKEY_PKCS11_LOG";

const MAX_FILE: u64 = 1 << 20;
/// Longest token label (`CK_TOKEN_INFO.label`).
pub const MAX_LABEL: usize = 32;
/// Most slots a configuration may list.
pub const MAX_SLOTS: usize = 64;

/// One `[[slots]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotEntry {
    token: String,
}

/// The module's own keys (everything else of the file is the client settings).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModuleKeys {
    #[serde(default)]
    slots: Vec<SlotEntry>,
    #[serde(default)]
    vendor_mechanisms: VendorNumbers,
    log_level: Option<String>,
}

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// How to reach the cluster.
    pub client: ClientSettings,
    /// Token labels, one per slot, in slot order.
    pub slots: Vec<String>,
    /// Vendor mechanism renames.
    pub vendor: VendorNumbers,
    /// Default log level.
    pub log_level: Option<String>,
}

impl Config {
    /// Reads the file named by [`ENV_CONFIG`].
    ///
    /// # Errors
    /// A one-line message saying what is wrong and where.
    pub fn from_env() -> Result<Self, String> {
        let path = std::env::var_os(ENV_CONFIG).ok_or_else(|| {
            format!("{ENV_CONFIG} is not set (it names the module's TOML configuration file)")
        })?;
        Self::load(Path::new(&path))
    }

    /// Reads and validates a configuration file (at most 1 MiB).
    ///
    /// # Errors
    /// A one-line message naming the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let ctx = |e: String| format!("{}: {e}", path.display());
        let file = File::open(path).map_err(|e| ctx(e.to_string()))?;
        let mut text = String::new();
        file.take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| ctx(e.to_string()))?;
        if text.len() as u64 > MAX_FILE {
            return Err(ctx(format!("larger than {MAX_FILE} bytes")));
        }
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")), true).map_err(ctx)
    }

    /// Parses a configuration; relative TLS paths are made relative to `dir`. With `check_files`
    /// the client settings are fully validated (the TLS files must be readable).
    ///
    /// # Errors
    /// A one-line message.
    pub fn parse(text: &str, dir: &Path, check_files: bool) -> Result<Self, String> {
        let one_line = |e: toml::de::Error| e.to_string().replace('\n', " ").trim().to_string();
        let mut table: toml::Table = toml::from_str(text).map_err(one_line)?;
        let mut own = toml::Table::new();
        for key in ["slots", "vendor_mechanisms", "log_level"] {
            if let Some(v) = table.remove(key) {
                own.insert(key.into(), v);
            }
        }
        let own: ModuleKeys = own.try_into().map_err(one_line)?;
        let mut client: ClientSettings = table
            .try_into()
            .map_err(|e| format!("client settings: {}", one_line(e)))?;
        client.resolve_relative_to(dir);
        if check_files {
            client.validate().map_err(|e| e.to_string())?;
        }
        if own.slots.is_empty() {
            return Err(
                "no [[slots]]: list the tokens to show, e.g. [[slots]] token = \"main\"".into(),
            );
        }
        if own.slots.len() > MAX_SLOTS {
            return Err(format!("at most {MAX_SLOTS} [[slots]]"));
        }
        let mut slots: Vec<String> = Vec::new();
        for s in own.slots {
            if s.token.is_empty() || s.token.len() > MAX_LABEL {
                return Err(format!(
                    "[[slots]] token {:?}: a token label is 1 to {MAX_LABEL} bytes",
                    s.token
                ));
            }
            if slots.contains(&s.token) {
                return Err(format!("[[slots]] token {:?} is listed twice", s.token));
            }
            slots.push(s.token);
        }
        crate::mechanism::Numbering::new(&own.vendor_mechanisms)?;
        if let Some(level) = &own.log_level {
            tracing_subscriber::EnvFilter::try_new(level)
                .map_err(|e| format!("log_level {level:?}: {e}"))?;
        }
        Ok(Self {
            client,
            slots,
            vendor: own.vendor_mechanisms,
            log_level: own.log_level,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        endpoints = ["127.0.0.1:7400"]
        ca = "ca.pem"
        cert = "c.pem"
        key = "c.key"
        deadline_ms = 300
    "#;

    fn parse(extra: &str) -> Result<Config, String> {
        Config::parse(&format!("{BASE}\n{extra}"), Path::new("/etc/ck"), false)
    }

    #[test]
    fn parses_slots_vendor_numbers_and_client_settings() {
        let c = parse(
            r#"
            log_level = "debug"
            [[slots]]
            token = "a"
            [[slots]]
            token = "b"
            [vendor_mechanisms]
            sm2 = 0x8000_0100
            "#,
        )
        .unwrap();
        assert_eq!(c.slots, ["a", "b"]);
        assert_eq!(c.vendor.sm2, Some(0x8000_0100));
        assert_eq!(c.client.deadline_ms, 300);
        assert_eq!(c.client.ca, Path::new("/etc/ck/ca.pem"));
        assert_eq!(c.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn refuses_bad_configurations() {
        for (extra, want) in [
            ("", "no [[slots]]"),
            ("[[slots]]\ntoken = \"\"", "1 to 32"),
            (
                "[[slots]]\ntoken = \"a\"\n[[slots]]\ntoken = \"a\"",
                "twice",
            ),
            ("[[slots]]\ntoken = \"a\"\nslot_count = 3", "slot_count"),
            (
                "[[slots]]\ntoken = \"a\"\n[vendor_mechanisms]\nsm9 = 1",
                "sm9",
            ),
            (
                "[[slots]]\ntoken = \"a\"\n[vendor_mechanisms]\nsm3 = 0x250",
                "already",
            ),
            ("[[slots]]\nlabel = \"a\"", "label"),
        ] {
            let e = parse(extra).unwrap_err();
            assert!(e.contains(want), "{extra:?}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
        let e = Config::parse("[[slots]]\ntoken = \"a\"", Path::new("."), false).unwrap_err();
        assert!(e.contains("client settings"), "{e}");
        let e = Config::load(Path::new("/nonexistent/cloudkey.toml")).unwrap_err();
        assert!(e.starts_with("/nonexistent/cloudkey.toml: "), "{e}");
    }

    #[test]
    fn checks_tls_files_when_asked() {
        let e = Config::parse(
            &format!("{BASE}\n[[slots]]\ntoken = \"a\""),
            Path::new("/nonexistent"),
            true,
        )
        .unwrap_err();
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
    }
}
