//! Mutual TLS for every QUIC connection of the cluster, and the identity a certificate gives.
//!
//! * All certificates chain to the cluster CA made by `cloudkey pki`; servers *require* a client
//!   certificate from that CA, clients verify the server's chain against it.
//! * Identity is a URI subject alternative name: `cloudkey://node/<id>`,
//!   `cloudkey://operator/<name>` or `cloudkey://client/<name>` ([`PeerIdentity::uri`]).
//! * Node certificates also carry the DNS name [`SERVER_NAME`] (which clients check, so any
//!   node can serve any address a client was given or hinted), `localhost` and `127.0.0.1`, and
//!   both the `serverAuth` and `clientAuth` extended key usages (nodes dial each other).
//! * The crypto provider is always aws-lc-rs, passed explicitly to every builder: the process
//!   default is never consulted (several providers are linked into the binaries).
//! * QUIC mandates TLS 1.3; nothing older is offered.

use std::fmt;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use zeroize::Zeroizing;

/// The DNS name every node certificate carries and every client verifies.
pub const SERVER_NAME: &str = "cloudkey-node";

/// The URI scheme and authority of identities: `cloudkey://<role>/<name>`.
pub const URI_PREFIX: &str = "cloudkey://";

/// The longest name of an operator or client identity.
pub const MAX_NAME_LEN: usize = 128;

/// The rule for the name of an operator or client identity, as [`valid_name`] checks it.
pub const NAME_RULE: &str =
    "the name must be 1 to 128 characters of A-Z a-z 0-9 . _ - @, not starting with . or -";

/// Streams a peer may have open at once on one connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// Interval of QUIC keep-alive pings, so that an idle connection stays up and a dead peer is
/// noticed.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// Idle timeout a server offers. The connection uses the smaller of both sides' values.
pub const SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle timeout a client offers: with [`KEEP_ALIVE`], a dead node is noticed within 3 s.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// Bytes a peer may have in flight unread on one connection, all streams together (quinn's
/// default is unbounded): bounds what one peer can make us buffer.
pub const CONNECTION_RECEIVE_WINDOW: u32 = 32 * 1024 * 1024;

/// Largest PEM file we read (a CA bundle, a chain, a key).
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Why TLS material or a peer's identity is not usable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {what} file {path}: {source}")]
    Io {
        /// Which file (CA, certificate, key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file is larger than any PEM file we expect.
    #[error("{what} file {path} is larger than {MAX_PEM_FILE} bytes")]
    FileTooLarge {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
    },
    /// PEM text could not be parsed.
    #[error("invalid PEM in {what}: {detail}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A PEM input holds no certificate.
    #[error("no certificate in {0}")]
    NoCertificate(&'static str),
    /// The key PEM holds no private key, or more than one.
    #[error("the key PEM must hold exactly one private key, found {0}")]
    KeyCount(usize),
    /// The private key is unusable or does not belong to the certificate.
    #[error("private key: {0}")]
    Key(String),
    /// A CA certificate could not be used as a trust anchor.
    #[error("CA certificate: {0}")]
    Ca(String),
    /// Building a rustls or QUIC configuration failed.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The connection has no verified peer certificate (e.g. the handshake did not complete).
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    /// A certificate could not be parsed.
    #[error("unparsable certificate: {0}")]
    BadCertificate(String),
    /// A certificate has no `cloudkey://` URI subject alternative name.
    #[error("the certificate carries no cloudkey:// identity")]
    NoIdentity,
    /// A certificate has more than one `cloudkey://` URI.
    #[error("the certificate carries {0} cloudkey:// identities; exactly one is allowed")]
    AmbiguousIdentity(usize),
    /// The `cloudkey://` URI is not one of the known forms.
    #[error("invalid identity URI {uri:?}: {reason}")]
    BadIdentity {
        /// The URI (truncated to 200 characters).
        uri: String,
        /// Why.
        reason: &'static str,
    },
}

/// Paths of the PEM files of one party: the cluster CA, its certificate (chain, leaf first)
/// and its private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s), PEM.
    pub ca: PathBuf,
    /// Certificate chain, leaf first, PEM.
    pub cert: PathBuf,
    /// Private key (PKCS#8, SEC1 or PKCS#1), PEM.
    pub key: PathBuf,
}

/// Loaded, checked TLS material: the CA certificates to trust, our chain (leaf first) and the
/// private key that belongs to the leaf. `Debug` never shows the key.
pub struct TlsMaterial {
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let identity = self
            .identity()
            .map_or_else(|e| format!("<{e}>"), |i| i.to_string());
        f.debug_struct("TlsMaterial")
            .field("ca_certs", &self.ca.len())
            .field("chain_certs", &self.chain.len())
            .field("identity", &identity)
            .field("key", &"[redacted]")
            .finish()
    }
}

/// The aws-lc-rs provider, which every builder gets explicitly.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_pem_file(what: &'static str, path: &Path) -> Result<Zeroizing<Vec<u8>>, TlsError> {
    let io = |source| TlsError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let mut buf = Zeroizing::new(Vec::new());
    // Read one byte more than the bound to tell "exactly at the bound" from "too large".
    file.take(MAX_PEM_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > MAX_PEM_FILE {
        return Err(TlsError::FileTooLarge {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(buf)
}

fn parse_certs(what: &'static str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    let mut keys = Vec::new();
    for item in rustls_pemfile::read_all(&mut BufReader::new(pem)) {
        let item = item.map_err(|e| TlsError::Pem {
            what: "key",
            detail: e.to_string(),
        })?;
        match item {
            rustls_pemfile::Item::Pkcs1Key(k) => keys.push(PrivateKeyDer::from(k)),
            rustls_pemfile::Item::Pkcs8Key(k) => keys.push(PrivateKeyDer::from(k)),
            rustls_pemfile::Item::Sec1Key(k) => keys.push(PrivateKeyDer::from(k)),
            // A certificate next to the key is common and harmless.
            _ => {}
        }
    }
    if keys.len() != 1 {
        return Err(TlsError::KeyCount(keys.len()));
    }
    keys.pop().ok_or(TlsError::KeyCount(0))
}

impl TlsMaterial {
    /// Builds material from DER, checking that every CA certificate is a usable trust anchor,
    /// that the chain is not empty and that the key belongs to its leaf.
    ///
    /// # Errors
    /// [`TlsError::NoCertificate`], [`TlsError::Ca`], [`TlsError::Key`].
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        if ca.is_empty() {
            return Err(TlsError::NoCertificate("CA"));
        }
        if chain.is_empty() {
            return Err(TlsError::NoCertificate("certificate"));
        }
        root_store(&ca)?;
        CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider())
            .map_err(|e| TlsError::Key(e.to_string()))?;
        Ok(Self { ca, chain, key })
    }

    /// Loads and checks the three PEM files (each at most 1 MiB).
    ///
    /// # Errors
    /// [`TlsError::Io`] naming the file that cannot be read, then as [`TlsMaterial::from_pem`].
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let ca = read_pem_file("CA", &files.ca)?;
        let cert = read_pem_file("certificate", &files.cert)?;
        let key = read_pem_file("key", &files.key)?;
        Self::from_pem_bytes(&ca, &cert, &key)
    }

    /// Parses and checks PEM text: CA certificate(s), our chain (leaf first), our private key.
    ///
    /// # Errors
    /// [`TlsError::Pem`], [`TlsError::NoCertificate`], [`TlsError::KeyCount`], then as
    /// [`TlsMaterial::new`].
    pub fn from_pem(ca: &str, cert: &str, key: &str) -> Result<Self, TlsError> {
        Self::from_pem_bytes(ca.as_bytes(), cert.as_bytes(), key.as_bytes())
    }

    fn from_pem_bytes(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let ca = parse_certs("CA", ca)?;
        let chain = parse_certs("certificate", cert)?;
        let key = parse_key(key)?;
        Self::new(ca, chain, key)
    }

    /// The identity our own leaf certificate carries.
    ///
    /// # Errors
    /// As [`identity_of_cert`].
    pub fn identity(&self) -> Result<PeerIdentity, TlsError> {
        let leaf = self
            .chain
            .first()
            .ok_or(TlsError::NoCertificate("certificate"))?;
        identity_of_cert(leaf)
    }

    /// The CA certificates we trust.
    #[must_use]
    pub fn ca(&self) -> &[CertificateDer<'static>] {
        &self.ca
    }

    /// Our certificate chain, leaf first.
    #[must_use]
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Signs `msg` with our private key, ECDSA P-256 with SHA-256 (ASN.1 DER signature), for
    /// statements a node vouches for with its certificate (the audit key's endorsement). The
    /// key stays inside rustls' signing abstraction.
    ///
    /// # Errors
    /// [`TlsError::Key`] when the key is not a P-256 key or signing fails.
    pub fn sign_ecdsa_p256(&self, msg: &[u8]) -> Result<Vec<u8>, TlsError> {
        let key = provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| TlsError::Key(e.to_string()))?;
        let signer = key
            .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or_else(|| TlsError::Key("the key is not a P-256 ECDSA key".into()))?;
        signer.sign(msg).map_err(|e| TlsError::Key(e.to_string()))
    }
}

fn root_store(ca: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots
            .add(cert.clone())
            .map_err(|e| TlsError::Ca(e.to_string()))?;
    }
    Ok(Arc::new(roots))
}

fn transport(idle: Duration) -> Result<Arc<quinn::TransportConfig>, TlsError> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(idle).map_err(|e| TlsError::Config(e.to_string()))?;
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_CONCURRENT_STREAMS))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(0))
        .receive_window(quinn::VarInt::from_u32(CONNECTION_RECEIVE_WINDOW))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(idle));
    Ok(Arc::new(t))
}

/// A QUIC server configuration: our chain and key, the given ALPN protocols, and a *mandatory*
/// client certificate chaining to the CA. Transport: [`MAX_CONCURRENT_STREAMS`] bidirectional
/// streams per connection, no unidirectional ones, [`CONNECTION_RECEIVE_WINDOW`], keep-alive
/// [`KEEP_ALIVE`], idle timeout [`SERVER_IDLE_TIMEOUT`].
///
/// # Errors
/// [`TlsError::Ca`] or [`TlsError::Config`] if rustls refuses the material.
pub fn server_config(m: &TlsMaterial, alpns: &[&[u8]]) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(root_store(&m.ca)?, provider.clone())
            .build()
            .map_err(|e| TlsError::Ca(e.to_string()))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| TlsError::Key(e.to_string()))?;
    tls.alpn_protocols = alpns.iter().map(|a| a.to_vec()).collect();
    tls.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(SERVER_IDLE_TIMEOUT)?);
    Ok(config)
}

/// A QUIC client configuration: verifies the server's chain against the CA and its name
/// against [`SERVER_NAME`] (connect with that name), presents our chain, offers `alpn`.
/// Transport as [`server_config`], with idle timeout [`CLIENT_IDLE_TIMEOUT`].
///
/// # Errors
/// [`TlsError::Ca`] or [`TlsError::Config`] if rustls refuses the material.
pub fn client_config(m: &TlsMaterial, alpn: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(root_store(&m.ca)?)
        .with_client_auth_cert(m.chain.clone(), m.key.clone_key())
        .map_err(|e| TlsError::Key(e.to_string()))?;
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = false;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(CLIENT_IDLE_TIMEOUT)?);
    Ok(config)
}

/// What a certificate's identity allows its holder to be.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A cluster node, with its Raft node id.
    Node(u64),
    /// An operator (the `cloudkey` CLI).
    Operator,
    /// An application client (PKCS#11 module, gateway, load tester).
    Client,
}

/// The identity a verified certificate gives its holder.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerIdentity {
    /// The role.
    pub role: Role,
    /// The name: the decimal node id for nodes, the operator's or client's name otherwise.
    pub name: String,
}

impl PeerIdentity {
    /// A node's identity.
    #[must_use]
    pub fn node(id: u64) -> Self {
        Self {
            role: Role::Node(id),
            name: id.to_string(),
        }
    }

    /// An operator's identity.
    ///
    /// # Errors
    /// [`TlsError::BadIdentity`] if the name breaks [`NAME_RULE`].
    pub fn operator(name: &str) -> Result<Self, TlsError> {
        Self::parse("operator", name)
    }

    /// An application client's identity.
    ///
    /// # Errors
    /// As [`PeerIdentity::operator`].
    pub fn client(name: &str) -> Result<Self, TlsError> {
        Self::parse("client", name)
    }

    /// The identity of a role word (`node`, `operator`, `client`) and a name: the one rule
    /// for identities, which the peer check ([`PeerIdentity::from_uri`]) and the issuer of
    /// certificates (`cloudkey pki`) both apply, so that a certificate is issued exactly for
    /// the identities a peer accepts. A node id is a canonical decimal `u64` (no sign, no
    /// leading zero); a name follows [`NAME_RULE`].
    ///
    /// # Errors
    /// [`TlsError::BadIdentity`] (naming the URI the identity would have) for an unknown role,
    /// a node id that is not canonical, or a name that breaks [`NAME_RULE`].
    pub fn parse(role: &str, name: &str) -> Result<Self, TlsError> {
        Self::parse_parts(&format!("{URI_PREFIX}{role}/{name}"), role, name)
    }

    /// The URI subject alternative name that carries this identity, e.g. `cloudkey://node/3`.
    #[must_use]
    pub fn uri(&self) -> String {
        match self.role {
            Role::Node(id) => format!("{URI_PREFIX}node/{id}"),
            Role::Operator => format!("{URI_PREFIX}operator/{}", self.name),
            Role::Client => format!("{URI_PREFIX}client/{}", self.name),
        }
    }

    /// Parses a `cloudkey://` URI.
    ///
    /// # Errors
    /// [`TlsError::BadIdentity`] for an unknown role, a node id that is not a canonical decimal
    /// `u64`, or a bad name.
    pub fn from_uri(uri: &str) -> Result<Self, TlsError> {
        let bad = |reason| bad_identity(uri, reason);
        let rest = uri
            .strip_prefix(URI_PREFIX)
            .ok_or_else(|| bad("not a cloudkey:// URI"))?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected cloudkey://<role>/<name>"))?;
        Self::parse_parts(uri, role, name)
    }

    /// [`PeerIdentity::parse`], with `uri` for the error.
    fn parse_parts(uri: &str, role: &str, name: &str) -> Result<Self, TlsError> {
        let bad = |reason| bad_identity(uri, reason);
        match role {
            "node" => {
                let canonical = !name.is_empty()
                    && name.len() <= 20
                    && name.bytes().all(|b| b.is_ascii_digit())
                    && (name == "0" || !name.starts_with('0'));
                if !canonical {
                    return Err(bad(
                        "the node id must be a decimal number (no sign, no leading zero)",
                    ));
                }
                let id = name
                    .parse::<u64>()
                    .map_err(|_| bad("the node id must fit in 64 bits"))?;
                Ok(Self::node(id))
            }
            "operator" | "client" if !valid_name(name) => Err(bad(NAME_RULE)),
            "operator" => Ok(Self {
                role: Role::Operator,
                name: name.to_owned(),
            }),
            "client" => Ok(Self {
                role: Role::Client,
                name: name.to_owned(),
            }),
            _ => Err(bad("unknown role (expected node, operator or client)")),
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Node(id) => write!(f, "node {id}"),
            Role::Operator => write!(f, "operator {}", self.name),
            Role::Client => write!(f, "client {}", self.name),
        }
    }
}

fn bad_identity(uri: &str, reason: &'static str) -> TlsError {
    TlsError::BadIdentity {
        uri: uri.chars().take(200).collect(),
        reason,
    }
}

/// True for a usable operator or client name ([`NAME_RULE`]): 1 to [`MAX_NAME_LEN`]
/// characters of `A-Z a-z 0-9 . _ - @`, not starting with `.` or `-`. Names become URIs, file
/// names (`client-<name>.pem`) and command-line arguments: a leading `-` reads as an option, a
/// leading `.` as a hidden or relative path.
#[must_use]
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// The identity in a DER certificate: its one `cloudkey://` URI subject alternative name
/// (other URIs are ignored). Does not verify the certificate; use it on verified peers.
///
/// # Errors
/// [`TlsError::BadCertificate`] if the DER does not parse, [`TlsError::NoIdentity`] without a
/// `cloudkey://` URI, [`TlsError::AmbiguousIdentity`] with several,
/// [`TlsError::BadIdentity`] for a malformed one.
pub fn identity_of_cert(der: &[u8]) -> Result<PeerIdentity, TlsError> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?;
    if !rest.is_empty() {
        return Err(TlsError::BadCertificate(format!(
            "{} trailing bytes after the certificate",
            rest.len()
        )));
    }
    let san = cert
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate(e.to_string()))?
        .ok_or(TlsError::NoIdentity)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with(URI_PREFIX) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(TlsError::NoIdentity),
        [uri] => PeerIdentity::from_uri(uri),
        many => Err(TlsError::AmbiguousIdentity(many.len())),
    }
}

/// The identity of a connection's peer, from the leaf of the certificate chain rustls verified
/// during the handshake.
///
/// # Errors
/// [`TlsError::NoPeerCertificate`] if the connection has no peer certificate, else as
/// [`identity_of_cert`].
pub fn peer_identity(conn: &quinn::Connection) -> Result<PeerIdentity, TlsError> {
    let any = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| TlsError::NoPeerCertificate)?;
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    identity_of_cert(leaf)
}

/// The ALPN protocol negotiated on a connection, if any.
#[must_use]
pub fn negotiated_alpn(conn: &quinn::Connection) -> Option<Vec<u8>> {
    conn.handshake_data()?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()?
        .protocol
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_round_trip() {
        for id in [
            PeerIdentity::node(0),
            PeerIdentity::node(u64::MAX),
            PeerIdentity::operator("alice").unwrap(),
            PeerIdentity::client("terminal-42.branch_7@bank").unwrap(),
        ] {
            assert_eq!(PeerIdentity::from_uri(&id.uri()).unwrap(), id);
        }
    }

    #[test]
    fn bad_uris_are_refused() {
        for uri in [
            "cloudkey://node/",
            "cloudkey://node/01",
            "cloudkey://node/+1",
            "cloudkey://node/-1",
            "cloudkey://node/18446744073709551616",
            "cloudkey://node/1/2",
            "cloudkey://operator/",
            "cloudkey://operator/a b",
            "cloudkey://operator/a/b",
            "cloudkey://client/\u{e9}",
            "cloudkey://client/.hidden",
            "cloudkey://operator/-option",
            "cloudkey://admin/root",
            "cloudkey://node",
            "https://node/1",
        ] {
            assert!(PeerIdentity::from_uri(uri).is_err(), "{uri}");
        }
        let long = format!("cloudkey://client/{}", "a".repeat(MAX_NAME_LEN + 1));
        assert!(PeerIdentity::from_uri(&long).is_err());
        let max = format!("cloudkey://client/{}", "a".repeat(MAX_NAME_LEN));
        assert!(PeerIdentity::from_uri(&max).is_ok());
        assert!(PeerIdentity::operator("").is_err());
    }

    #[test]
    fn names_follow_one_rule() {
        for name in [
            "a",
            "A.b_c-d@e",
            "0",
            "@bank",
            "x.",
            "x-",
            &"a".repeat(MAX_NAME_LEN),
        ] {
            assert!(valid_name(name), "{name}");
            assert!(PeerIdentity::client(name).is_ok(), "{name}");
            assert!(PeerIdentity::parse("operator", name).is_ok(), "{name}");
        }
        for name in [
            "",
            ".x",
            "-x",
            "..",
            "a b",
            "a/b",
            "\u{e9}",
            &"a".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(!valid_name(name), "{name}");
            assert!(PeerIdentity::parse("client", name).is_err(), "{name}");
        }
        assert_eq!(
            PeerIdentity::parse("node", "7").unwrap(),
            PeerIdentity::node(7)
        );
        for id in ["", "01", "+1", "-1", "1 ", "18446744073709551616"] {
            assert!(PeerIdentity::parse("node", id).is_err(), "{id}");
        }
        assert!(PeerIdentity::parse("admin", "root").is_err());
        let e = PeerIdentity::parse("client", ".x").unwrap_err().to_string();
        assert!(
            e.contains("cloudkey://client/.x") && e.contains(NAME_RULE),
            "{e}"
        );
    }

    #[test]
    fn garbage_der_is_refused() {
        assert!(matches!(
            identity_of_cert(&[0x30, 0x03, 0x01, 0x01]),
            Err(TlsError::BadCertificate(_))
        ));
        assert!(matches!(
            identity_of_cert(&[]),
            Err(TlsError::BadCertificate(_))
        ));
    }

    #[test]
    fn pem_without_certificates_or_keys_is_refused() {
        assert!(matches!(
            TlsMaterial::from_pem("", "", ""),
            Err(TlsError::NoCertificate("CA"))
        ));
        assert!(matches!(
            parse_key(b"nothing here"),
            Err(TlsError::KeyCount(0))
        ));
        let bad = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            parse_certs("CA", bad.as_bytes()),
            Err(TlsError::Pem { .. })
        ));
    }
}
