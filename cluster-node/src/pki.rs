//! The cluster PKI behind `cloudkey pki`: one P-256 certificate authority per cluster, and leaf
//! certificates for nodes, operators and clients, made with rcgen.
//!
//! A certificate's identity is its URI SAN (`cloudkey://node/<id>`, `cloudkey://operator/<name>`,
//! `cloudkey://client/<name>`); nodes also carry the DNS name `cloudkey-node` (the name every
//! client verifies, whatever address it dialled), `localhost` and `127.0.0.1`.
//!
//! Layout of a PKI directory: `ca.pem`, `ca.key`, then `<stem>.pem` and `<stem>.key` per leaf with
//! `stem` = `node-<id>`, `operator-<name>` or `client-<name>`. Private keys are created with mode
//! 0600 (never widened then narrowed), and every file is written to a temporary name and renamed
//! into place, so a crash never leaves a half-written key.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};

use cloudkey_protocol::tls::{PeerIdentity, Role};

use crate::error::{NodeError, Result};

/// File name of the CA certificate.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY: &str = "ca.key";
/// The DNS name in every node certificate; clients verify it whatever address they dialled.
pub const NODE_DNS_NAME: &str = "cloudkey-node";
/// Days a leaf certificate (node, operator, client) is valid: short, and renewed with
/// [`rotate`] (`cloudkey pki rotate`).
pub const LEAF_DAYS: u64 = 90;
/// Days the CA certificate is valid (its key stays offline with the operators).
const CA_DAYS: u64 = 20 * 365 + 5;

/// Whom a certificate identifies.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A cluster node, by Raft node id.
    Node(u64),
    /// An operator (the `cloudkey` CLI): administration requests.
    Operator(String),
    /// A client (the PKCS#11 module, an application, the gateway).
    Client(String),
}

impl Identity {
    /// The URI SAN that carries the identity.
    #[must_use]
    pub fn uri(&self) -> String {
        match self {
            Self::Node(id) => format!("cloudkey://node/{id}"),
            Self::Operator(name) => format!("cloudkey://operator/{name}"),
            Self::Client(name) => format!("cloudkey://client/{name}"),
        }
    }

    /// The file stem of the certificate and key (`node-1`, `operator-admin`, `client-app`).
    #[must_use]
    pub fn file_stem(&self) -> String {
        match self {
            Self::Node(id) => format!("node-{id}"),
            Self::Operator(name) => format!("operator-{name}"),
            Self::Client(name) => format!("client-{name}"),
        }
    }

    /// The identity whose certificate files are named `stem` ([`Identity::file_stem`]), if any.
    #[must_use]
    pub fn from_file_stem(stem: &str) -> Option<Self> {
        let (role, name) = stem.split_once('-')?;
        Self::parse(role, name).ok()
    }

    /// Builds an identity from a role word (`node`, `operator`, `client`) and a name or id, by
    /// the protocol's one rule ([`PeerIdentity::parse`]): a certificate is issued for exactly
    /// the identities a peer accepts.
    ///
    /// # Errors
    /// [`NodeError::Tls`] for an unknown role, a node id that is not a canonical decimal
    /// number, or a name that breaks [`cloudkey_protocol::tls::NAME_RULE`].
    pub fn parse(role: &str, name: &str) -> Result<Self> {
        let peer = PeerIdentity::parse(role, name)?;
        Ok(match peer.role {
            Role::Node(id) => Self::Node(id),
            Role::Operator => Self::Operator(peer.name),
            Role::Client => Self::Client(peer.name),
        })
    }

    /// The role word of the identity's URI.
    fn role(&self) -> &'static str {
        match self {
            Self::Node(_) => "node",
            Self::Operator(_) => "operator",
            Self::Client(_) => "client",
        }
    }

    /// Checks the identity by the rule of [`Identity::parse`].
    fn validate(&self) -> Result<()> {
        match self {
            Self::Node(_) => Ok(()),
            Self::Operator(n) | Self::Client(n) => Self::parse(self.role(), n).map(drop),
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// A certificate and its private key on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertPaths {
    /// PEM certificate.
    pub cert: PathBuf,
    /// PEM PKCS#8 private key (mode 0600).
    pub key: PathBuf,
}

impl CertPaths {
    /// Where the certificate of `identity` lives in the PKI directory `dir`.
    #[must_use]
    pub fn of(dir: &Path, identity: &Identity) -> Self {
        let stem = identity.file_stem();
        Self {
            cert: dir.join(format!("{stem}.pem")),
            key: dir.join(format!("{stem}.key")),
        }
    }
}

/// What [`init_pki`] made.
#[derive(Clone, Debug)]
pub struct PkiPaths {
    /// The PKI directory.
    pub dir: PathBuf,
    /// The CA certificate.
    pub ca: PathBuf,
    /// The CA private key.
    pub ca_key: PathBuf,
    /// Every leaf issued, in order: nodes, operators, clients.
    pub issued: Vec<(Identity, CertPaths)>,
}

impl PkiPaths {
    /// The certificate of node `id`, if issued.
    #[must_use]
    pub fn node(&self, id: u64) -> Option<&CertPaths> {
        self.find(&Identity::Node(id))
    }

    /// The certificate of operator `name`, if issued.
    #[must_use]
    pub fn operator(&self, name: &str) -> Option<&CertPaths> {
        self.find(&Identity::Operator(name.to_owned()))
    }

    /// The certificate of client `name`, if issued.
    #[must_use]
    pub fn client(&self, name: &str) -> Option<&CertPaths> {
        self.find(&Identity::Client(name.to_owned()))
    }

    fn find(&self, who: &Identity) -> Option<&CertPaths> {
        self.issued.iter().find(|(i, _)| i == who).map(|(_, p)| p)
    }
}

/// Options of [`init_pki_with`].
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Node certificates for ids `1..=nodes`.
    pub nodes: u64,
    /// Operator names.
    pub operators: Vec<String>,
    /// Client names.
    pub clients: Vec<String>,
    /// Replace an existing CA (and remove every leaf of the old one).
    pub force: bool,
}

/// Makes a new cluster CA in `dir` (created if missing) and issues node certificates for ids
/// `1..=nodes`, and operator and client certificates for the names given. Refuses to replace
/// an existing CA; see [`init_pki_with`] for `force`.
///
/// # Errors
/// [`NodeError::Config`] when a CA exists or a name is invalid; [`NodeError::Io`] for file
/// system failures; [`NodeError::Cert`] if certificate generation fails.
pub fn init_pki(dir: &Path, nodes: u64, operators: &[&str], clients: &[&str]) -> Result<PkiPaths> {
    init_pki_with(
        dir,
        &InitOptions {
            nodes,
            operators: operators.iter().map(|s| (*s).to_owned()).collect(),
            clients: clients.iter().map(|s| (*s).to_owned()).collect(),
            force: false,
        },
    )
}

/// [`init_pki`] with all options.
///
/// # Errors
/// As [`init_pki`].
pub fn init_pki_with(dir: &Path, opts: &InitOptions) -> Result<PkiPaths> {
    let mut who: Vec<Identity> = (1..=opts.nodes).map(Identity::Node).collect();
    who.extend(opts.operators.iter().cloned().map(Identity::Operator));
    who.extend(opts.clients.iter().cloned().map(Identity::Client));
    for w in &who {
        w.validate()?;
    }
    create_dir(dir)?;
    let ca = dir.join(CA_CERT);
    let ca_key = dir.join(CA_KEY);
    if ca.exists() || ca_key.exists() {
        if !opts.force {
            return Err(NodeError::Config(format!(
                "a CA already exists in {} (pass --force to replace it and every certificate \
                 it issued)",
                dir.display()
            )));
        }
        remove_leaves(dir)?;
    }

    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "cloudkey");
    // A random suffix tells clusters' CAs apart in logs and `openssl x509 -text`.
    params.distinguished_name.push(
        DnType::CommonName,
        format!("cloudkey cluster CA {}", hex::encode(random_bytes::<4>()?)),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_DAYS);
    let cert = params.self_signed(&key).map_err(rcgen_err)?;
    // Key first: a CA certificate without its key would block a retry without --force.
    write_file(&ca_key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&ca, cert.pem().as_bytes(), 0o644)?;
    let issuer = Issuer::new(params, key);

    let mut issued = Vec::with_capacity(who.len());
    for w in who {
        let paths = issue_with(dir, &issuer, &w)?;
        issued.push((w, paths));
    }
    Ok(PkiPaths {
        dir: dir.to_path_buf(),
        ca,
        ca_key,
        issued,
    })
}

/// Issues a certificate for `identity` from the CA in `dir`. Refuses to replace an existing
/// certificate of the same identity unless `force`.
///
/// # Errors
/// [`NodeError::Setting`] when there is no CA in `dir`; [`NodeError::Config`] when the
/// certificate exists or the name is invalid; [`NodeError::Io`] for file system failures; [`NodeError::Cert`] if the CA
/// cannot be read back or signing fails.
pub fn issue(dir: &Path, identity: &Identity, force: bool) -> Result<CertPaths> {
    identity.validate()?;
    let ca_pem = fs::read_to_string(dir.join(CA_CERT)).map_err(|source| NodeError::Setting {
        what: format!("no CA in {} (run `cloudkey pki init` first)", dir.display()),
        source: Box::new(source),
    })?;
    let key_pem = read_to_string(&dir.join(CA_KEY))?;
    let key = KeyPair::from_pem(&key_pem).map_err(rcgen_err)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, key).map_err(rcgen_err)?;
    let paths = CertPaths::of(dir, identity);
    if !force && (paths.cert.exists() || paths.key.exists()) {
        return Err(NodeError::Config(format!(
            "{} already exists (pass --force to replace it)",
            paths.cert.display()
        )));
    }
    issue_with(dir, &issuer, identity)
}

fn issue_with(dir: &Path, issuer: &Issuer<'_, KeyPair>, who: &Identity) -> Result<CertPaths> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(rcgen_err)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "cloudkey");
    params
        .distinguished_name
        .push(DnType::CommonName, who.file_stem());
    params.subject_alt_names = vec![SanType::URI(who.uri().try_into().map_err(rcgen_err)?)];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if let Identity::Node(_) = who {
        for dns in [NODE_DNS_NAME, "localhost"] {
            params
                .subject_alt_names
                .push(SanType::DnsName(dns.try_into().map_err(rcgen_err)?));
        }
        params.subject_alt_names.extend([
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ]);
        params
            .extended_key_usages
            .insert(0, ExtendedKeyUsagePurpose::ServerAuth);
    }
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_DAYS);
    let cert = params.signed_by(&key, issuer).map_err(rcgen_err)?;
    let paths = CertPaths::of(dir, who);
    write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&paths.cert, cert.pem().as_bytes(), 0o644)?;
    Ok(paths)
}

/// Removes the leaves of an old CA (files named like ours only).
fn remove_leaves(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let leaf = ["node-", "operator-", "client-"]
            .iter()
            .any(|p| name.starts_with(p))
            && (name.ends_with(".pem") || name.ends_with(".key"));
        if leaf {
            fs::remove_file(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Valid from yesterday (clocks differ) for `days` days, at day granularity.
fn set_validity(params: &mut CertificateParams, days: u64) {
    let today = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 86_400);
    let start = today.saturating_sub(1);
    let (y, m, d) = civil_from_days(start);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(start.saturating_add(days));
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// Issues every leaf certificate in `dir` again from its CA, with a fresh key and a fresh
/// [`LEAF_DAYS`] lifetime, and returns what it issued. The identities stay; the old
/// certificates and keys are replaced (restart each node, and give each operator and client
/// its new files).
///
/// # Errors
/// As [`issue`]; [`NodeError::Io`] when `dir` cannot be listed.
pub fn rotate(dir: &Path) -> Result<Vec<(Identity, CertPaths)>> {
    let mut who = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".pem")) else {
            continue;
        };
        if let Some(id) = Identity::from_file_stem(stem) {
            who.push(id);
        }
    }
    who.sort_by_key(Identity::file_stem);
    who.into_iter()
        .map(|w| issue(dir, &w, true).map(|paths| (w, paths)))
        .collect()
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: u64) -> (i32, u8, u8) {
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        i32::try_from(y).unwrap_or(i32::MAX),
        u8::try_from(m).unwrap_or(1),
        u8::try_from(d).unwrap_or(1),
    )
}

fn random_bytes<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b).map_err(NodeError::Random)?;
    Ok(b)
}

/// Creates `dir` and its parents (mode 0700 for new directories: they hold keys).
fn create_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, e))
}

/// Writes `bytes` to `path` atomically: a new temporary file created with `mode` (so a key is
/// never readable by others, not even briefly), synced, then renamed over `path`.
///
/// # Errors
/// [`NodeError::Io`] with the path.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| NodeError::Config(format!("{}: not a file path", path.display())))?;
    let tmp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    // A leftover from a crashed run of this pid number: ours to replace.
    let _ = fs::remove_file(&tmp);
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err(path, e)
    })
}

fn read_to_string(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| io_err(path, e))
}

fn io_err(path: &Path, e: std::io::Error) -> NodeError {
    NodeError::io(path.display().to_string())(e)
}

fn rcgen_err(e: rcgen::Error) -> NodeError {
    NodeError::Cert(e)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    /// Whether the peer check accepts `role/name` as a certificate's identity URI.
    fn peer_accepts(role: &str, name: &str) -> bool {
        PeerIdentity::from_uri(&format!("cloudkey://{role}/{name}")).is_ok()
    }

    proptest::proptest! {
        /// The issuer accepts a name exactly when the peer check accepts the URI it issues.
        #[test]
        fn the_issuer_and_the_peer_check_accept_the_same_names(
            name in "[-.@_/ a-z0-9+\u{e9}]{0,6}|[a-z.-]{125,130}",
            role in "node|operator|client|admin",
        ) {
            proptest::prop_assert_eq!(
                Identity::parse(&role, &name).is_ok(),
                peer_accepts(&role, &name),
                "{}/{}", role, name
            );
        }
    }

    #[test]
    fn names_one_side_used_to_refuse_get_one_answer() {
        // The peer check accepted these and the issuer refused them; node ids the other way.
        for (role, name) in [
            ("client", ".x"),
            ("operator", "-x"),
            ("client", "..x"),
            ("node", "01"),
            ("node", "+1"),
            ("node", "007"),
        ] {
            assert!(Identity::parse(role, name).is_err(), "{role}/{name}");
            assert!(!peer_accepts(role, name), "{role}/{name}");
        }
        // Names either side accepts are issued, and read back from the certificate as given.
        let dir = tempfile::tempdir().unwrap();
        let pki = init_pki(dir.path(), 0, &[], &[]).unwrap();
        for (role, name) in [
            ("client", "x."),
            ("client", "a-b_c.d@bank"),
            ("operator", "0"),
            ("node", "0"),
        ] {
            assert!(peer_accepts(role, name), "{role}/{name}");
            let who = Identity::parse(role, name).unwrap();
            let p = issue(dir.path(), &who, false).unwrap();
            let files = cloudkey_protocol::tls::TlsFiles {
                ca: pki.ca.clone(),
                cert: p.cert,
                key: p.key,
            };
            let m = cloudkey_protocol::tls::TlsMaterial::load(&files).unwrap();
            assert_eq!(m.identity().unwrap().uri(), who.uri());
        }
    }

    #[test]
    fn leaves_live_ninety_days_and_rotate_with_fresh_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = init_pki(dir.path(), 2, &["admin"], &["app"]).expect("init");
        let read = |p: &Path| std::fs::read_to_string(p).expect("read");
        let leaf = paths.node(1).expect("node 1").clone();
        let pem = read(&leaf.cert);
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("pem");
        let cert = parsed.parse_x509().expect("x509");
        let v = cert.validity();
        let days = (v.not_after.timestamp() - v.not_before.timestamp()) / 86_400;
        assert_eq!(u64::try_from(days).ok(), Some(LEAF_DAYS), "{v:?}");
        let old_key = read(&leaf.key);
        let rotated = rotate(dir.path()).expect("rotate");
        let names: Vec<String> = rotated.iter().map(|(w, _)| w.to_string()).collect();
        assert_eq!(rotated.len(), 4, "{names:?}");
        assert!(rotated.iter().any(|(w, _)| *w == Identity::Node(2)));
        assert_ne!(read(&leaf.key), old_key, "a fresh key");
        assert_ne!(read(&leaf.cert), pem, "a fresh certificate");
        assert_eq!(
            Identity::from_file_stem("client-app"),
            Some(Identity::Client("app".into()))
        );
        assert_eq!(Identity::from_file_stem("ca"), None);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn init_issue_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let pki = init_pki(dir.path(), 2, &["admin"], &["app"]).unwrap();
        assert_eq!(pki.issued.len(), 4);
        for (_, p) in &pki.issued {
            let mode = fs::metadata(&p.key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.key.display());
            assert!(fs::read_to_string(&p.cert)
                .unwrap()
                .contains("BEGIN CERTIFICATE"));
        }
        let ca_mode = fs::metadata(&pki.ca_key).unwrap().permissions().mode() & 0o777;
        assert_eq!(ca_mode, 0o600);
        let node = fs::read(&pki.node(2).unwrap().cert).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&node).unwrap();
        let cert = pem.parse_x509().unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = san
            .value
            .general_names
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert!(
            names.iter().any(|n| n.contains("cloudkey://node/2")),
            "{names:?}"
        );
        assert!(names.iter().any(|n| n.contains(NODE_DNS_NAME)), "{names:?}");
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);

        // The protocol reads the identities back, and accepts the key pairs.
        use cloudkey_protocol::tls::{PeerIdentity, TlsFiles, TlsMaterial};
        for (who, want) in [
            (Identity::Node(1), PeerIdentity::node(1)),
            (
                Identity::Operator("admin".into()),
                PeerIdentity::operator("admin").unwrap(),
            ),
            (
                Identity::Client("app".into()),
                PeerIdentity::client("app").unwrap(),
            ),
        ] {
            let p = CertPaths::of(dir.path(), &who);
            let files = TlsFiles {
                ca: pki.ca.clone(),
                cert: p.cert,
                key: p.key,
            };
            let m = TlsMaterial::load(&files).unwrap();
            assert_eq!(m.identity().unwrap(), want);
        }

        let err = init_pki(dir.path(), 1, &[], &[]).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let extra = issue(dir.path(), &Identity::Client("other".into()), false).unwrap();
        assert!(extra.cert.ends_with("client-other.pem"));
        assert!(issue(dir.path(), &Identity::Client("other".into()), false).is_err());
        issue(dir.path(), &Identity::Client("other".into()), true).unwrap();
        assert!(Identity::parse("client", "../x").is_err());

        let again = init_pki_with(
            dir.path(),
            &InitOptions {
                nodes: 1,
                force: true,
                ..InitOptions::default()
            },
        )
        .unwrap();
        assert_eq!(again.issued.len(), 1);
        assert!(!dir.path().join("client-other.pem").exists());
    }

    #[test]
    fn issuing_without_a_ca_names_the_fix_and_keeps_the_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = issue(dir.path(), &Identity::Client("c".into()), false).unwrap_err();
        assert!(
            e.to_string().contains("run `cloudkey pki init` first"),
            "{e}"
        );
        let source = std::error::Error::source(&e).expect("a cause");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("an I/O error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
    }
}
