//! Mutual TLS over QUIC with certificates of the test PKI (`cloudkey-test-support`): who gets
//! in, who does not, and what identity each side sees.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use cloudkey_protocol::tls::{
    self, client_config, identity_of_cert, peer_identity, server_config, PeerIdentity, Role,
    TlsError, TlsFiles, TlsMaterial, SERVER_NAME,
};
use cloudkey_protocol::{ALPN_CLIENT, ALPN_RAFT};
use common::{LeafSpec, Pki};
use quinn::crypto::rustls::QuicClientConfig;
use rustls::pki_types::CertificateDer;

const STEP: Duration = Duration::from_secs(10);

fn server(material: &TlsMaterial, alpns: &[&[u8]]) -> quinn::Endpoint {
    let cfg = server_config(material, alpns).expect("server config");
    quinn::Endpoint::server(cfg, SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("bind")
}

fn client_endpoint(cfg: quinn::ClientConfig) -> quinn::Endpoint {
    let mut e =
        quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("client bind");
    e.set_default_client_config(cfg);
    e
}

/// The outcome of one connection attempt, seen from both sides.
struct Outcome {
    client: Result<quinn::Connection, String>,
    server: Result<quinn::Connection, String>,
}

/// Connects, and on success exchanges one byte both ways so that a server-side refusal that
/// arrives after the client's handshake completes (TLS 1.3 client auth) is seen too.
async fn connect(server: &quinn::Endpoint, client: &quinn::Endpoint) -> Outcome {
    let addr = server.local_addr().unwrap();
    let accept = async {
        let incoming = server.accept().await.ok_or("endpoint closed")?;
        let conn = incoming.await.map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        send.write_all(&b).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let _ = send.stopped().await;
        Ok::<_, String>(conn)
    };
    let dial = async {
        let conn = client
            .connect(addr, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(&[42]).await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let mut b = [0u8; 1];
        recv.read_exact(&mut b).await.map_err(|e| e.to_string())?;
        assert_eq!(b, [42]);
        Ok::<_, String>(conn)
    };
    let (server, client) = tokio::time::timeout(STEP, async { tokio::join!(accept, dial) })
        .await
        .expect("handshake outcome within 10 s");
    Outcome { client, server }
}

#[tokio::test]
async fn handshake_gives_both_sides_the_peer_identity() {
    let pki = Pki::new("cluster CA");
    let node = pki.node(7);
    let srv = server(&node, &[ALPN_CLIENT]);
    assert_eq!(node.identity().unwrap(), PeerIdentity::node(7));

    for (material, expected) in [
        (
            pki.client("terminal-1"),
            PeerIdentity::client("terminal-1").unwrap(),
        ),
        (
            pki.operator("alice"),
            PeerIdentity::operator("alice").unwrap(),
        ),
    ] {
        let cli = client_endpoint(client_config(&material, ALPN_CLIENT).unwrap());
        let out = connect(&srv, &cli).await;
        let (c, s) = (out.client.expect("client"), out.server.expect("server"));
        assert_eq!(peer_identity(&s).unwrap(), expected);
        assert_eq!(peer_identity(&c).unwrap(), PeerIdentity::node(7));
        assert_eq!(tls::negotiated_alpn(&c).as_deref(), Some(ALPN_CLIENT));
        assert_eq!(tls::negotiated_alpn(&s).as_deref(), Some(ALPN_CLIENT));
    }
}

#[tokio::test]
async fn nodes_dial_each_other_on_the_raft_alpn() {
    let pki = Pki::new("cluster CA");
    let srv = server(&pki.node(1), &[ALPN_CLIENT, ALPN_RAFT]);
    let cli = client_endpoint(client_config(&pki.node(2), ALPN_RAFT).unwrap());
    let out = connect(&srv, &cli).await;
    let (c, s) = (out.client.expect("client"), out.server.expect("server"));
    assert_eq!(peer_identity(&s).unwrap().role, Role::Node(2));
    assert_eq!(peer_identity(&c).unwrap().role, Role::Node(1));
    assert_eq!(tls::negotiated_alpn(&s).as_deref(), Some(ALPN_RAFT));
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let pki = Pki::new("cluster CA");
    let srv = server(&pki.node(1), &[ALPN_CLIENT]);
    // A client that trusts the CA but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    for c in pki.client("x").ca() {
        roots.add(c.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_CLIENT.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let out = connect(&srv, &client_endpoint(cfg)).await;
    let server_err = out.server.expect_err("the server must refuse");
    assert!(
        out.client.is_err(),
        "the client must not get a usable connection"
    );
    assert!(server_err.contains("no certificates"), "{server_err}");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("cluster CA");
    let rogue = Pki::new("rogue CA");
    let srv = server(&pki.node(1), &[ALPN_CLIENT]);
    // Trusts our CA (so the server is accepted), but its own certificate is the rogue CA's.
    let rogue_cert = rogue.issue(&LeafSpec::uris(&["cloudkey://operator/root"]));
    let material =
        TlsMaterial::from_pem(pki.ca_pem(), &rogue_cert.cert_pem, &rogue_cert.key_pem).unwrap();
    let cli = client_endpoint(client_config(&material, ALPN_CLIENT).unwrap());
    let out = connect(&srv, &cli).await;
    let err = out.server.expect_err("the server must refuse");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(
        out.client.is_err(),
        "the client must not get a usable connection"
    );
}

#[tokio::test]
async fn server_certificate_without_the_server_name_is_refused() {
    let pki = Pki::new("cluster CA");
    // A node-like certificate from the right CA, but without the cloudkey-node DNS name.
    let issued = pki.issue(
        &LeafSpec::uris(&["cloudkey://node/1"])
            .dns(&["localhost"])
            .server(),
    );
    let srv = server(&pki.material(&issued), &[ALPN_CLIENT]);
    let cli = client_endpoint(client_config(&pki.client("c"), ALPN_CLIENT).unwrap());
    let out = connect(&srv, &cli).await;
    let err = out.client.expect_err("the client must refuse");
    assert!(err.contains("not valid for name"), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused() {
    let pki = Pki::new("cluster CA");
    let rogue = Pki::new("rogue CA");
    let srv = server(&rogue.node(1), &[ALPN_CLIENT]);
    let cli = client_endpoint(client_config(&pki.client("c"), ALPN_CLIENT).unwrap());
    let out = connect(&srv, &cli).await;
    let err = out.client.expect_err("the client must refuse");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(out.server.is_err());
}

#[tokio::test]
async fn wrong_alpn_is_refused() {
    let pki = Pki::new("cluster CA");
    let srv = server(&pki.node(1), &[ALPN_RAFT]);
    let cli = client_endpoint(client_config(&pki.client("c"), ALPN_CLIENT).unwrap());
    let out = connect(&srv, &cli).await;
    let err = out.client.expect_err("no common protocol");
    assert!(out.server.is_err());
    assert!(err.contains("error 120"), "{err}"); // no_application_protocol
}

fn der_of(issued: &common::Issued) -> CertificateDer<'static> {
    CertificateDer::from(issued.cert_der.clone())
}

#[test]
fn the_test_pki_names_identities_as_the_protocol_does() {
    use cloudkey_test_support::pki;
    assert_eq!(pki::NODE_DNS_NAME, SERVER_NAME);
    assert_eq!(pki::node_uri(4), PeerIdentity::node(4).uri());
    assert_eq!(
        pki::operator_uri("alice"),
        PeerIdentity::operator("alice").unwrap().uri()
    );
    assert_eq!(
        pki::client_uri("app"),
        PeerIdentity::client("app").unwrap().uri()
    );
}

#[test]
fn identity_comes_from_exactly_one_cloudkey_uri() {
    let pki = Pki::new("cluster CA");
    let id = |uris: &[&str]| {
        identity_of_cert(&der_of(
            &pki.issue(&LeafSpec::uris(uris).dns(&["x.example"])),
        ))
    };

    assert_eq!(
        id(&["https://example.com/", "cloudkey://client/app"]).unwrap(),
        PeerIdentity::client("app").unwrap()
    );
    assert!(matches!(id(&[]), Err(TlsError::NoIdentity)));
    assert!(matches!(
        id(&["https://example.com/"]),
        Err(TlsError::NoIdentity)
    ));
    assert!(matches!(
        id(&["cloudkey://client/a", "cloudkey://operator/b"]),
        Err(TlsError::AmbiguousIdentity(2))
    ));
    assert!(matches!(
        id(&["cloudkey://root/admin"]),
        Err(TlsError::BadIdentity { .. })
    ));
    assert!(matches!(
        id(&["cloudkey://node/abc"]),
        Err(TlsError::BadIdentity { .. })
    ));
    // A certificate without any SAN extension at all.
    let bare = cloudkey_test_support::pki::self_signed_without_san();
    assert!(matches!(identity_of_cert(&bare), Err(TlsError::NoIdentity)));
    // Trailing garbage after the DER.
    let mut der = der_of(&pki.issue(&LeafSpec::uris(&["cloudkey://client/a"]))).to_vec();
    der.push(0);
    assert!(matches!(
        identity_of_cert(&der),
        Err(TlsError::BadCertificate(_))
    ));
}

#[test]
fn material_loads_from_files_and_reports_problems() {
    let pki = Pki::new("cluster CA");
    let issued = pki.issue(&LeafSpec::uris(&["cloudkey://client/app"]));
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles {
        ca: dir.path().join("ca.pem"),
        cert: dir.path().join("app.pem"),
        key: dir.path().join("app.key"),
    };
    std::fs::write(&files.ca, pki.ca_pem()).unwrap();
    std::fs::write(&files.cert, &issued.cert_pem).unwrap();
    std::fs::write(&files.key, &issued.key_pem).unwrap();

    let m = TlsMaterial::load(&files).unwrap();
    assert_eq!(m.identity().unwrap(), PeerIdentity::client("app").unwrap());
    let clone = m.clone();
    assert_eq!(clone.chain(), m.chain());
    let debug = format!("{m:?}");
    assert!(
        debug.contains("client app") && debug.contains("redacted"),
        "{debug}"
    );
    assert!(!debug.contains("PRIVATE"), "{debug}");

    // A missing file is named.
    let missing = TlsFiles {
        key: dir.path().join("nope.key"),
        ..files.clone()
    };
    let e = TlsMaterial::load(&missing).unwrap_err().to_string();
    assert!(e.contains("nope.key") && e.contains("key"), "{e}");

    // A key that is not the certificate's.
    let other = pki.issue(&LeafSpec::uris(&["cloudkey://client/other"]));
    let e = TlsMaterial::from_pem(pki.ca_pem(), &issued.cert_pem, &other.key_pem).unwrap_err();
    assert!(matches!(e, TlsError::Key(_)), "{e}");

    // Two keys in the key file.
    let two = format!("{}{}", issued.key_pem, other.key_pem);
    let e = TlsMaterial::from_pem(pki.ca_pem(), &issued.cert_pem, &two).unwrap_err();
    assert!(matches!(e, TlsError::KeyCount(2)), "{e}");

    // Certificate and key swapped.
    let e = TlsMaterial::from_pem(pki.ca_pem(), &issued.key_pem, &issued.cert_pem).unwrap_err();
    assert!(matches!(e, TlsError::NoCertificate(_)), "{e}");

    // A key file with the certificate in front of the key is fine.
    let both = format!("{}{}", issued.cert_pem, issued.key_pem);
    TlsMaterial::from_pem(pki.ca_pem(), &issued.cert_pem, &both).unwrap();

    // An oversized file is refused without reading it all.
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'A'; 1024 * 1024 + 1]).unwrap();
    let e = TlsMaterial::load(&TlsFiles {
        ca: big,
        ..files.clone()
    })
    .unwrap_err();
    assert!(matches!(e, TlsError::FileTooLarge { .. }), "{e}");
}
