//! [`ClientSettings`]: where the cluster is and who we are, from TOML.
//!
//! ```toml
//! endpoints = ["10.0.0.1:7400", "10.0.0.2:7400", "node3.hsm.example:7400"]
//! ca = "/etc/cloudkey/ca.pem"
//! cert = "/etc/cloudkey/client-app.pem"
//! key = "/etc/cloudkey/client-app.key"
//! deadline_ms = 5000          # optional: bound of a whole call, retries included
//! connect_timeout_ms = 1000   # optional: bound of one handshake
//! ```
//!
//! Unknown keys are refused (a misspelt `deadline_msec` must not silently mean 5 s). To embed
//! these settings in a larger file, put them in their own table (e.g. `[cluster]`).

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::ClientError;
use crate::tls::TlsFiles;

/// Default [`ClientSettings::deadline_ms`].
pub const DEFAULT_DEADLINE_MS: u64 = 5000;
/// Default [`ClientSettings::connect_timeout_ms`].
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 1000;
/// Largest accepted deadline or connect timeout: ten minutes.
pub const MAX_TIMEOUT_MS: u64 = 600_000;
/// Most endpoints a configuration may list.
pub const MAX_CONFIGURED_ENDPOINTS: usize = 32;
/// Largest settings file read.
const MAX_SETTINGS_FILE: u64 = 1024 * 1024;

fn default_deadline_ms() -> u64 {
    DEFAULT_DEADLINE_MS
}

fn default_connect_timeout_ms() -> u64 {
    DEFAULT_CONNECT_TIMEOUT_MS
}

/// Client configuration: the cluster's node endpoints, the TLS files, and time bounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientSettings {
    /// Node client endpoints, `host:port` (an IP address or a DNS name; names are resolved
    /// when the [`super::Client`] is built).
    pub endpoints: Vec<String>,
    /// CA certificate(s), PEM.
    pub ca: PathBuf,
    /// Our certificate chain, PEM.
    pub cert: PathBuf,
    /// Our private key, PEM.
    pub key: PathBuf,
    /// Bound of a whole call, retries and failover included, in milliseconds.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
    /// Bound of one connection handshake, in milliseconds.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn config(msg: impl Into<String>) -> ClientError {
    ClientError::Config(msg.into())
}

/// Splits and checks `host:port` (`[v6]:port` for IPv6 literals) without resolving it.
pub(crate) fn check_endpoint(s: &str) -> Result<(), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(format!("endpoint {s:?} has no valid port"));
        }
        return Ok(());
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("endpoint {s:?} is not host:port"))?;
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("endpoint {s:?} has no valid port"))?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok {
        return Err(format!(
            "endpoint {s:?}: {host:?} is neither an IP address nor a DNS name \
             (IPv6 addresses are written [addr]:port)"
        ));
    }
    Ok(())
}

fn check_readable(what: &str, path: &Path) -> Result<(), ClientError> {
    let meta = std::fs::metadata(path)
        .map_err(|e| config(format!("{what} file {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(config(format!(
            "{what} file {} is not a regular file",
            path.display()
        )));
    }
    File::open(path).map_err(|e| config(format!("{what} file {}: {e}", path.display())))?;
    Ok(())
}

impl ClientSettings {
    /// Parses TOML and validates the result ([`ClientSettings::validate`]); relative paths are
    /// relative to the current directory.
    ///
    /// # Errors
    /// [`ClientError::Config`] with a message naming the bad key or file.
    pub fn from_toml_str(s: &str) -> Result<Self, ClientError> {
        let settings: Self =
            toml::from_str(s).map_err(|e| config(format!("invalid client settings: {e}")))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Reads a TOML file (at most 1 MiB); relative paths in it are relative to the file's
    /// directory. Validated as [`ClientSettings::validate`].
    ///
    /// # Errors
    /// [`ClientError::Config`] naming the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Self, ClientError> {
        let ctx = |e: String| config(format!("{}: {e}", path.display()));
        let file = File::open(path).map_err(|e| ctx(e.to_string()))?;
        let mut text = String::new();
        file.take(MAX_SETTINGS_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|e| ctx(e.to_string()))?;
        if text.len() as u64 > MAX_SETTINGS_FILE {
            return Err(ctx(format!("larger than {MAX_SETTINGS_FILE} bytes")));
        }
        let mut settings: Self =
            toml::from_str(&text).map_err(|e| ctx(format!("invalid client settings: {e}")))?;
        if let Some(dir) = path.parent() {
            settings.resolve_relative_to(dir);
        }
        settings.validate().map_err(|e| match e {
            ClientError::Config(m) => ctx(m),
            other => other,
        })?;
        Ok(settings)
    }

    /// Makes the relative TLS file paths relative to `dir`.
    pub fn resolve_relative_to(&mut self, dir: &Path) {
        for p in [&mut self.ca, &mut self.cert, &mut self.key] {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }

    /// Checks the settings: 1 to 32 distinct, well-formed endpoints; deadline and connect
    /// timeout between 1 ms and 10 minutes; the three TLS files exist and are readable.
    ///
    /// # Errors
    /// [`ClientError::Config`] describing the first problem.
    pub fn validate(&self) -> Result<(), ClientError> {
        if self.endpoints.is_empty() {
            return Err(config("endpoints: at least one node endpoint is needed"));
        }
        if self.endpoints.len() > MAX_CONFIGURED_ENDPOINTS {
            return Err(config(format!(
                "endpoints: at most {MAX_CONFIGURED_ENDPOINTS} endpoints, {} given",
                self.endpoints.len()
            )));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            check_endpoint(e).map_err(|m| config(format!("endpoints: {m}")))?;
            if self.endpoints[..i].contains(e) {
                return Err(config(format!("endpoints: {e:?} is listed twice")));
            }
        }
        for (key, v) in [
            ("deadline_ms", self.deadline_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if v == 0 || v > MAX_TIMEOUT_MS {
                return Err(config(format!(
                    "{key} = {v}: must be between 1 and {MAX_TIMEOUT_MS}"
                )));
            }
        }
        check_readable("ca", &self.ca)?;
        check_readable("cert", &self.cert)?;
        check_readable("key", &self.key)?;
        Ok(())
    }

    /// The TLS file paths.
    #[must_use]
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }

    /// The call deadline.
    #[must_use]
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline_ms)
    }

    /// The handshake timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The endpoints as socket addresses, in order. IP literals are taken as they are; DNS
    /// names are resolved with the system resolver (blocking), taking the first address.
    ///
    /// # Errors
    /// [`ClientError::Config`] for a malformed endpoint or a name that does not resolve.
    pub fn resolve_endpoints(&self) -> Result<Vec<SocketAddr>, ClientError> {
        self.endpoints
            .iter()
            .map(|e| {
                check_endpoint(e).map_err(|m| config(format!("endpoints: {m}")))?;
                if let Ok(a) = e.parse::<SocketAddr>() {
                    return Ok(a);
                }
                e.to_socket_addrs()
                    .map_err(|err| config(format!("endpoints: cannot resolve {e:?}: {err}")))?
                    .next()
                    .ok_or_else(|| config(format!("endpoints: {e:?} resolves to no address")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_syntax() {
        for ok in [
            "127.0.0.1:7400",
            "[::1]:7400",
            "node-1.hsm.example:7400",
            "localhost:1",
        ] {
            assert!(check_endpoint(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            ":7400",
            "::1:7400",
            "host name:7400",
            "host:port",
            "h\u{e9}:1",
        ] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
