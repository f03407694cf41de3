//! Governance messages: officers, quorum (M-of-N) approvals, the audit chain, and terminal
//! master-key (TMK) injection. The semantics are in `cluster-node/src/governance.rs` and
//! `docs/governance.md`.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::msg::{ObjectId, Secret, TokenId};

/// An officer's credentials for one request: their registered name and their own PIN. The
/// request must also come over a connection whose client certificate is the one registered for
/// the officer.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficerAuth {
    /// The officer's name.
    pub name: String,
    /// The officer's PIN.
    pub pin: Secret,
}

impl fmt::Debug for OfficerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OfficerAuth")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An officer as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfficerInfo {
    /// Name.
    pub name: String,
    /// The certificate identity the officer must connect with (`operator/NAME` or
    /// `client/NAME`).
    pub identity: String,
    /// Wrong PINs since the last success.
    pub failures: u32,
    /// Locked after too many wrong PINs.
    pub locked: bool,
}

/// The operations a policy can put under quorum control.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GuardedOp {
    /// `C_GenerateKey` / `C_GenerateKeyPair` (optionally only of one key type).
    Generate,
    /// `C_WrapKey` (export) with or of a guarded key.
    Wrap,
    /// `C_DestroyObject`.
    Destroy,
    /// `C_SetAttributeValue`.
    SetAttributes,
    /// `C_Sign` with a designated key: every signature needs its own approval.
    Sign,
    /// Terminal master-key injection.
    TmkInject,
    /// Changes to governance itself (cluster scope): adding an officer, setting a policy,
    /// registering a terminal. Once a cluster policy has this rule, no single operator can
    /// change who approves.
    Govern,
}

impl GuardedOp {
    /// Every operation.
    pub const ALL: [GuardedOp; 7] = [
        Self::Generate,
        Self::Wrap,
        Self::Destroy,
        Self::SetAttributes,
        Self::Sign,
        Self::TmkInject,
        Self::Govern,
    ];

    /// The name used on the command line and in the audit chain.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Generate => "generate",
            Self::Wrap => "wrap",
            Self::Destroy => "destroy",
            Self::SetAttributes => "set-attributes",
            Self::Sign => "sign",
            Self::TmkInject => "tmk-inject",
            Self::Govern => "govern",
        }
    }

    /// The operation of a name from [`GuardedOp::name`].
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.name() == s)
    }
}

impl fmt::Display for GuardedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a policy applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PolicyScope {
    /// The whole cluster (terminal master-key injection, governance changes).
    Cluster,
    /// Every object of a token.
    Token(TokenId),
    /// One key.
    Key(ObjectId),
}

impl fmt::Display for PolicyScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cluster => f.write_str("cluster"),
            Self::Token(t) => write!(f, "token {t}"),
            Self::Key(k) => write!(f, "key {k}"),
        }
    }
}

/// One rule of a policy: `op` needs `quorum` approvals from distinct officers among `officers`
/// (any registered officer when empty), none of them the requester.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The guarded operation.
    pub op: GuardedOp,
    /// For [`GuardedOp::Generate`]: only keys of this `CKK_*` type (all types when `None`).
    pub key_type: Option<u64>,
    /// Approvals needed (M), at least 1.
    pub quorum: u32,
    /// The officers who may approve (N); empty means every officer.
    pub officers: Vec<String>,
    /// How long a request stays open, milliseconds.
    pub ttl_ms: u64,
}

/// The state of an approval request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApprovalStatus {
    /// Waiting for approvals.
    Pending,
    /// The quorum is met; the operation may run once.
    Approved,
    /// An officer rejected it.
    Rejected,
    /// It expired before it was approved or used.
    Expired,
    /// The approved operation ran (at the given Raft log index).
    Consumed {
        /// Log index of the operation.
        index: u64,
    },
}

impl fmt::Display for ApprovalStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pending => f.write_str("pending"),
            Self::Approved => f.write_str("approved"),
            Self::Rejected => f.write_str("rejected"),
            Self::Expired => f.write_str("expired"),
            Self::Consumed { index } => write!(f, "consumed at index {index}"),
        }
    }
}

/// An approval request as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalInfo {
    /// Id, unique in the cluster.
    pub id: u64,
    /// Who asked: a certificate identity (`client/app`), or an officer (`officer/alice`).
    pub requester: String,
    /// The operation.
    pub op: GuardedOp,
    /// Where the policy that guards it lives.
    pub scope: PolicyScope,
    /// What exactly is to be done, for people.
    pub description: String,
    /// SHA-256 of the canonical encoding of the operation's parameters: an approval authorises
    /// exactly these.
    pub params_hash: [u8; 32],
    /// Created, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Expires, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
    /// Approvals needed.
    pub quorum: u32,
    /// Who may approve (empty: any officer but the requester).
    pub eligible: Vec<String>,
    /// Officers who approved, in order.
    pub approvals: Vec<String>,
    /// The officer who rejected it, if any.
    pub rejected_by: Option<String>,
    /// Status.
    pub status: ApprovalStatus,
}

/// A terminal's public key: the TMK is returned encrypted under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TerminalKey {
    /// RSA (2048 bits or more): the TMK (AES-256) is encrypted with RSA-OAEP (SHA-256).
    Rsa {
        /// Modulus, big-endian.
        #[serde(with = "serde_bytes")]
        n: Vec<u8>,
        /// Public exponent, big-endian.
        #[serde(with = "serde_bytes")]
        e: Vec<u8>,
    },
    /// SM2: the TMK (SM4) is encrypted with SM2 encryption (`C1 || C3 || C2`).
    Sm2 {
        /// Uncompressed point, 65 bytes.
        #[serde(with = "serde_bytes")]
        point: Vec<u8>,
    },
}

/// A terminal as registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalInfo {
    /// Terminal number.
    pub id: String,
    /// Its public key.
    pub key: TerminalKey,
    /// The officers responsible for it (the applicant must be one of them).
    pub admins: Vec<String>,
    /// The certificate identity the terminal connects with, if bound.
    pub identity: Option<String>,
    /// A TMK was injected (the last injection's application id).
    pub last_injection: Option<u64>,
}

/// The QR payload a terminal shows, and when it expires.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmkQr {
    /// The application it opened.
    pub application: u64,
    /// The text to encode as a QR code: `CKTMK1.<terminal>.<application>.<nonce hex>`.
    pub payload: String,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_unix_ms: u64,
}

/// A terminal master key as delivered to its terminal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmkDelivery {
    /// The application.
    pub application: u64,
    /// `"aes-256"` or `"sm4"`.
    pub algorithm: String,
    /// The key encrypted under the terminal's public key (RSA-OAEP SHA-256, or SM2).
    #[serde(with = "serde_bytes")]
    pub encrypted: Vec<u8>,
    /// Key check value: the first 3 bytes of the key's encryption of a zero block.
    pub kcv: [u8; 3],
}

/// The audit key's public half and who vouches for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditKeyInfo {
    /// Uncompressed P-256 point of the chip-held audit key.
    #[serde(with = "serde_bytes")]
    pub public: Vec<u8>,
    /// DER certificate of the node that vouched for the key.
    #[serde(with = "serde_bytes")]
    pub endorser_cert: Vec<u8>,
    /// ECDSA (ASN.1, SHA-256) by the endorser's TLS key over
    /// `"cloudkey audit key v1" || public`.
    #[serde(with = "serde_bytes")]
    pub endorsement: Vec<u8>,
}

/// One audit record as exported.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Raft log index.
    pub index: u64,
    /// Previous record's hash.
    pub prev: [u8; 32],
    /// What happened.
    pub summary: String,
    /// `SHA-256(prev || index BE || summary)`.
    pub hash: [u8; 32],
}

/// A page of the audit chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    /// The audit key, once the cluster has one.
    pub key: Option<AuditKeyInfo>,
    /// Records in chain order.
    pub records: Vec<AuditEntry>,
    /// More records follow (ask again from the last index + 1).
    pub more: bool,
}

/// The message a checkpoint signature covers (the chip signs its SHA-256 with `CKM_ECDSA`):
/// `"cloudkey audit checkpoint v1" || index BE || hash`.
#[must_use]
pub fn checkpoint_message(index: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = b"cloudkey audit checkpoint v1".to_vec();
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// The message an audit-key endorsement covers: `"cloudkey audit key v1" || public`.
#[must_use]
pub fn endorsement_message(public: &[u8]) -> Vec<u8> {
    let mut m = b"cloudkey audit key v1".to_vec();
    m.extend_from_slice(public);
    m
}

/// The prefix of a TMK QR payload.
pub const QR_PREFIX: &str = "CKTMK1";

/// A parsed QR payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QrPayload {
    /// Terminal number.
    pub terminal: String,
    /// Application id.
    pub application: u64,
    /// The nonce (16 bytes).
    pub nonce: [u8; 16],
}

impl QrPayload {
    /// The payload text.
    #[must_use]
    pub fn encode(&self) -> String {
        format!(
            "{QR_PREFIX}.{}.{}.{}",
            self.terminal,
            self.application,
            hex::encode(self.nonce)
        )
    }

    /// Parses a payload text.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.trim().rsplitn(3, '.');
        let nonce = it.next()?;
        let application = it.next()?.parse().ok()?;
        let head = it.next()?;
        let terminal = head.strip_prefix(QR_PREFIX)?.strip_prefix('.')?;
        if terminal.is_empty() {
            return None;
        }
        let mut n = [0u8; 16];
        hex::decode_to_slice(nonce, &mut n).ok()?;
        Some(Self {
            terminal: terminal.to_string(),
            application,
            nonce: n,
        })
    }
}

/// The most characters of a terminal number.
pub const MAX_TERMINAL_ID: usize = 64;

/// True for a usable terminal number: 1 to 64 ASCII letters, digits, `-` and `_`.
#[must_use]
pub fn valid_terminal_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_TERMINAL_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qr_payload_round_trip_and_refusals() {
        let p = QrPayload {
            terminal: "ATM-0042".into(),
            application: 7,
            nonce: [0xab; 16],
        };
        let text = p.encode();
        assert!(text.starts_with("CKTMK1.ATM-0042.7."));
        assert_eq!(QrPayload::parse(&text), Some(p));
        for bad in [
            "",
            "CKTMK1",
            "CKTMK1..7.abababababababababababababababab",
            "XKTMK1.A.7.abababababababababababababababab",
            "CKTMK1.A.x.abababababababababababababababab",
            "CKTMK1.A.7.abab",
        ] {
            assert_eq!(QrPayload::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn op_names_round_trip() {
        for op in GuardedOp::ALL {
            assert_eq!(GuardedOp::from_name(op.name()), Some(op));
        }
        assert!(valid_terminal_id("ATM_01-x"));
        assert!(!valid_terminal_id("ATM.01"));
        assert!(!valid_terminal_id(""));
    }
}
