//! Raw QUIC access to a node, below the client library: custom TLS configurations and
//! hand-made frames.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use cloudkey_protocol::frame;
use cloudkey_protocol::msg::{ClientRequest, ClientResponse, Request};
use cloudkey_protocol::tls::{self, TlsMaterial};
use cloudkey_protocol::{ALPN_CLIENT, PROTOCOL_VERSION};

/// What became of one request stream.
#[derive(Debug)]
pub enum Outcome {
    /// The node answered with a response frame.
    Response(ClientResponse),
    /// The node reset its sending side with this application code.
    Reset(u64),
    /// The node stopped our sending side with this application code.
    Stopped(u64),
    /// The node finished its side without a frame.
    Empty,
    /// The connection failed (handshake refused, closed, timed out).
    Connection(String),
    /// Anything else (undecodable answer, ...).
    Other(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Response(r) => write!(f, "response from node {}: {:?}", r.node, r.result),
            Self::Reset(c) => write!(f, "stream reset with code {c}"),
            Self::Stopped(c) => write!(f, "stream stopped with code {c}"),
            Self::Empty => f.write_str("stream finished without a frame"),
            Self::Connection(e) => write!(f, "connection failed: {e}"),
            Self::Other(e) => write!(f, "{e}"),
        }
    }
}

/// A client endpoint bound to an ephemeral loopback port.
pub fn endpoint() -> Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::client(SocketAddr::from((
        [127, 0, 0, 1],
        0,
    )))?)
}

/// Material with `ca` to trust and the certificate and key of `cert`/`key`.
pub fn material(ca: &Path, cert: &Path, key: &Path) -> Result<TlsMaterial> {
    let read = |p: &Path| std::fs::read_to_string(p).with_context(|| p.display().to_string());
    Ok(TlsMaterial::from_pem(
        &read(ca)?,
        &read(cert)?,
        &read(key)?,
    )?)
}

/// The protocol's client configuration for `m`.
pub fn client_config(m: &TlsMaterial) -> Result<quinn::ClientConfig> {
    Ok(tls::client_config(m, ALPN_CLIENT)?)
}

/// A client configuration that trusts `ca` but presents no certificate.
pub fn config_without_client_cert(ca: &Path) -> Result<quinn::ClientConfig> {
    let pem = std::fs::read(ca)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert?)?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_CLIENT.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Dials `addr` with `config` (server name [`tls::SERVER_NAME`]).
///
/// # Errors
/// As a string: the handshake's failure.
pub async fn connect(
    ep: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection, String> {
    ep.connect_with(config, addr, tls::SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())
}

/// A well-formed request frame.
pub fn request_frame(request: Request) -> Vec<u8> {
    frame::encode(&ClientRequest {
        version: PROTOCOL_VERSION,
        min_applied: 0,
        request,
    })
    .expect("a small request encodes")
}

/// A frame around arbitrary body bytes (the length prefix is the body's).
pub fn raw_frame(body: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(body.len())
        .expect("small")
        .to_be_bytes()
        .to_vec();
    f.extend_from_slice(body);
    f
}

/// Sends `bytes` on a new stream, finishes it, and reports what the node did.
pub async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Outcome {
    let (mut send, mut recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Outcome::Connection(e.to_string()),
    };
    match send.write_all(bytes).await {
        Ok(()) => {}
        Err(quinn::WriteError::Stopped(code)) => return Outcome::Stopped(code.into_inner()),
        Err(quinn::WriteError::ConnectionLost(e)) => return Outcome::Connection(e.to_string()),
        Err(e) => return Outcome::Other(e.to_string()),
    }
    // The node may have stopped reading already; what it answers tells more.
    let _ = send.finish();
    match recv.read_to_end(frame::MAX_FRAME + frame::LEN_PREFIX).await {
        Ok(buf) if buf.is_empty() => match send.stopped().await {
            Ok(Some(code)) => Outcome::Stopped(code.into_inner()),
            _ => Outcome::Empty,
        },
        Ok(buf) => match frame::decode_frame::<ClientResponse>(&buf, frame::MAX_FRAME) {
            Ok(Some((r, _))) => Outcome::Response(r),
            Ok(None) => Outcome::Other(format!("{} bytes: a partial frame", buf.len())),
            Err(e) => Outcome::Other(e.to_string()),
        },
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
            Outcome::Reset(code.into_inner())
        }
        Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => {
            Outcome::Connection(e.to_string())
        }
        Err(e) => Outcome::Other(e.to_string()),
    }
}
