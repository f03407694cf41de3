//! A throwaway cluster PKI: a P-256 CA made with rcgen, and leaves as `cloudkey pki` issues
//! them. Identities are `cloudkey://<role>/<name>` URI SANs; node certificates also name
//! [`NODE_DNS_NAME`] and 127.0.0.1 and may serve. Certificates and keys are PEM strings, and
//! [`TestPki::write`] puts them in the PKI's temporary directory (removed on drop) for what reads
//! files.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use tempfile::TempDir;

/// The DNS name every node certificate carries and clients check (`cloudkey_protocol::tls::
/// SERVER_NAME`; the protocol's tests check that the two agree).
pub const NODE_DNS_NAME: &str = "cloudkey-node";

/// The identity URI of node `id`.
#[must_use]
pub fn node_uri(id: u64) -> String {
    format!("cloudkey://node/{id}")
}

/// The identity URI of the operator `name`.
#[must_use]
pub fn operator_uri(name: &str) -> String {
    format!("cloudkey://operator/{name}")
}

/// The identity URI of the application client `name`.
#[must_use]
pub fn client_uri(name: &str) -> String {
    format!("cloudkey://client/{name}")
}

/// What a leaf certificate says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeafSpec {
    /// URI SANs, in order (the identity is the one `cloudkey://` URI among them).
    pub uris: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// Whether it may serve: the server EKU and an IP SAN for 127.0.0.1. Every leaf may
    /// authenticate as a client.
    pub server: bool,
}

impl LeafSpec {
    /// A client-only leaf with these URI SANs.
    #[must_use]
    pub fn uris(uris: &[&str]) -> Self {
        Self {
            uris: uris.iter().map(|u| (*u).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// With these DNS SANs as well.
    #[must_use]
    pub fn dns(mut self, names: &[&str]) -> Self {
        self.dns.extend(names.iter().map(|d| (*d).to_owned()));
        self
    }

    /// Able to serve as well.
    #[must_use]
    pub fn server(mut self) -> Self {
        self.server = true;
        self
    }

    /// The certificate `cloudkey pki` issues to node `id`.
    #[must_use]
    pub fn node(id: u64) -> Self {
        Self::uris(&[&node_uri(id)])
            .dns(&[NODE_DNS_NAME, "localhost"])
            .server()
    }
}

/// A certificate and its key.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The certificate, DER.
    pub cert_der: Vec<u8>,
    /// The key, PKCS#8 PEM.
    pub key_pem: String,
    /// The key, PKCS#8 DER.
    pub key_der: Vec<u8>,
}

/// Where [`TestPki::write`] put a leaf: the CA, the certificate and the key, PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemFiles {
    /// `ca.pem`.
    pub ca: PathBuf,
    /// `<stem>.pem`.
    pub cert: PathBuf,
    /// `<stem>.key`.
    pub key: PathBuf,
}

/// A cluster CA in a temporary directory (which holds `ca.pem` and what [`TestPki::write`]
/// writes), removed on drop.
pub struct TestPki {
    dir: TempDir,
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
}

fn p256_key() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("a P-256 key")
}

impl TestPki {
    /// A new CA named `name` (its common name).
    ///
    /// # Panics
    /// If the directory or the CA cannot be made (a test fixture: nothing to recover).
    #[must_use]
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cloudkey-test-pki-")
            .tempdir()
            .expect("a PKI directory");
        let key = p256_key();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("the CA certificate");
        let ca_pem = cert.pem();
        std::fs::write(dir.path().join("ca.pem"), &ca_pem).expect("writing ca.pem");
        Self {
            dir,
            issuer: Issuer::new(params, key),
            ca_pem,
        }
    }

    /// The CA certificate, PEM.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The directory (holding `ca.pem`).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Issues a leaf as `spec` says.
    ///
    /// # Panics
    /// On a URI or DNS name rcgen does not take.
    #[must_use]
    pub fn issue(&self, spec: &LeafSpec) -> Issued {
        let key = p256_key();
        let mut params = CertificateParams::default();
        let cn = spec.uris.first().map_or("leaf", String::as_str);
        params.distinguished_name.push(DnType::CommonName, cn);
        for u in &spec.uris {
            let uri = u.as_str().try_into().expect("a URI SAN");
            params.subject_alt_names.push(SanType::URI(uri));
        }
        for d in &spec.dns {
            let dns = d.as_str().try_into().expect("a DNS SAN");
            params.subject_alt_names.push(SanType::DnsName(dns));
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if spec.server {
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("the leaf certificate");
        Issued {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
        }
    }

    /// Node `id`'s certificate ([`LeafSpec::node`]).
    #[must_use]
    pub fn node(&self, id: u64) -> Issued {
        self.issue(&LeafSpec::node(id))
    }

    /// The operator `name`'s certificate.
    #[must_use]
    pub fn operator(&self, name: &str) -> Issued {
        self.issue(&LeafSpec::uris(&[&operator_uri(name)]))
    }

    /// The application client `name`'s certificate.
    #[must_use]
    pub fn client(&self, name: &str) -> Issued {
        self.issue(&LeafSpec::uris(&[&client_uri(name)]))
    }

    /// Writes `issued` as `<stem>.pem` and `<stem>.key` (mode 0600) in the PKI's directory.
    ///
    /// # Panics
    /// If the files cannot be written.
    #[must_use]
    pub fn write(&self, stem: &str, issued: &Issued) -> PemFiles {
        use std::os::unix::fs::PermissionsExt;
        let files = PemFiles {
            ca: self.dir.path().join("ca.pem"),
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        std::fs::write(&files.cert, &issued.cert_pem).expect("writing the certificate");
        std::fs::write(&files.key, &issued.key_pem).expect("writing the key");
        std::fs::set_permissions(&files.key, std::fs::Permissions::from_mode(0o600))
            .expect("key permissions");
        files
    }
}

/// A self-signed certificate (DER) without any subject alternative name: no identity at all.
#[must_use]
pub fn self_signed_without_san() -> Vec<u8> {
    let key = p256_key();
    let params = CertificateParams::default();
    params
        .self_signed(&key)
        .expect("a self-signed certificate")
        .der()
        .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_are_issued_by_the_ca_and_written_where_said() {
        let pki = TestPki::new("test CA");
        assert!(pki.ca_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let node = pki.node(3);
        assert!(node.key_pem.contains("PRIVATE KEY"));
        assert!(!node.cert_der.is_empty() && !node.key_der.is_empty());
        let files = pki.write("node-3", &node);
        assert_eq!(std::fs::read_to_string(&files.cert).unwrap(), node.cert_pem);
        assert_eq!(std::fs::read_to_string(&files.ca).unwrap(), pki.ca_pem());
        let dir = pki.dir().to_path_buf();
        drop(pki);
        assert!(!dir.exists(), "the directory goes with the PKI");
        assert_eq!(node_uri(3), "cloudkey://node/3");
        assert_eq!(
            LeafSpec::node(3),
            LeafSpec {
                uris: vec!["cloudkey://node/3".into()],
                dns: vec![NODE_DNS_NAME.into(), "localhost".into()],
                server: true,
            }
        );
    }
}
