//! `cloudkey-protocol`: what every cloudkey front end and node shares.
//!
//! * [`msg`]: the request and response messages (serde + postcard) of the client protocol.
//! * [`error`]: [`ErrorCode`], one per PKCS#11 `CKR_*` value, and [`WireError`].
//! * [`frame`]: `u32 BE length | postcard` framing on QUIC streams, bounded before allocation.
//! * [`tls`]: rustls configurations with mandatory client certificates, PEM loading, and the
//!   role and name a peer's certificate gives it.
//! * [`client`]: the async client: one pooled QUIC connection per node, many concurrent streams,
//!   deadlines, failover, leader hints and read-your-writes via the highest applied index seen.
//! * [`gov`]: governance messages: officers, quorum approvals, the audit chain, TMK injection.
//! * [`audit`]: the offline audit-chain export format and its verifier.
//! * [`der`]: the DER of PKCS#11 attributes: EC points, `SubjectPublicKeyInfo`, RSA PKCS#8,
//!   X.509 fields.
//! * [`vendor`]: the vendor-defined `CKM_*`/`CKK_*` numbers of SM2, SM3 and SM4.
//!
//! Where each concern lives across the workspace, and how a request flows through the files:
//! `docs/architecture.md` at the root of the workspace.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod audit;
pub mod client;
pub mod der;
pub mod error;
pub mod frame;
pub mod gov;
pub mod msg;
pub mod tls;
pub mod vendor;

pub use error::{ErrorCode, WireError};

/// The PKCS#11 constants (`CKA_*`, `CKM_*`, `CKO_*`, `CKK_*`, `CKR_*`) used on the wire.
pub use cryptoki_sys as ck;

/// Version of the client protocol; a node refuses a request envelope of another version.
pub const PROTOCOL_VERSION: u16 = 1;
/// ALPN of the client protocol (applications, the PKCS#11 module, the CLI, the gateway).
pub const ALPN_CLIENT: &[u8] = b"cloudkey/1";
/// ALPN of node-to-node traffic (Raft, write forwarding, domain transfer).
pub const ALPN_RAFT: &[u8] = b"cloudkey-raft/1";
