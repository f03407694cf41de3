//! The offline audit-chain export (`cloudkey audit export`) and its verifier
//! (`cloudkey audit verify`), which needs nothing but the export and the cluster CA.
//!
//! # The chain
//! Every applied command leaves one record: its Raft log `index`, the previous record's hash
//! `prev` (32 zero bytes for the first record), a one-line `summary`, and
//! `hash = SHA-256(prev || index as 8 bytes big-endian || summary)`. Changing, dropping,
//! inserting or reordering a record breaks the links; rewriting every hash after a change is
//! caught by the checkpoints:
//!
//! * `set_audit_key public=<hex> endorsed_by_cert_sha256=<hex>`: the cluster's audit key, a
//!   P-256 key held in the chips. A node vouches for it by signing
//!   [`endorsement_message`] with its TLS key; the export carries that node's certificate, so
//!   the verifier checks that it chains to the CA and names a node.
//! * `checkpoint index=<u64> hash=<64 hex> signature=<128 hex>`: the audit key's signature
//!   (ECDSA P-256, SHA-256, fixed-size `r || s`) over [`checkpoint_message`] of an earlier
//!   record's index and hash, which commits to every record up to it.
//!
//! # The export format (JSON)
//! ```json
//! {
//!   "format": "cloudkey-audit-v1",
//!   "exported_unix_ms": 1767225600000,
//!   "audit_key": {
//!     "public": "04…",          // uncompressed P-256 point, 65 bytes
//!     "endorser_cert": "3082…", // DER of the endorsing node's certificate
//!     "endorsement": "3045…"    // ECDSA P-256 SHA-256, ASN.1
//!   },
//!   "records": [
//!     { "index": 3, "prev": "00…00", "summary": "init …", "hash": "5f…" }
//!   ]
//! }
//! ```
//! Bytes are lowercase hex; `audit_key` is `null` before the cluster has one. An export may be
//! a page that starts after the chain's first record; the verifier then reports that it does
//! not start at the genesis record.

use std::fmt;
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest::{digest, SHA256};
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_FIXED};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::{Deserialize, Serialize};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};

use crate::gov::{checkpoint_message, endorsement_message, AuditEntry, AuditKeyInfo};
use crate::tls::{identity_of_cert, Role};

/// The value of [`AuditExport::format`].
pub const FORMAT: &str = "cloudkey-audit-v1";

/// The summary prefix of the record that sets the audit key.
pub const SET_AUDIT_KEY_PREFIX: &str = "set_audit_key ";

/// The summary prefix of a checkpoint record.
pub const CHECKPOINT_PREFIX: &str = "checkpoint ";

/// An exported audit chain (or a page of it), as written to a file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditExport {
    /// Always [`FORMAT`].
    pub format: String,
    /// When the export was made, milliseconds since the Unix epoch. The endorser certificate
    /// must have been valid then.
    pub exported_unix_ms: u64,
    /// The audit key, once the cluster has one.
    pub audit_key: Option<ExportedKey>,
    /// The records, in chain order.
    pub records: Vec<ExportedRecord>,
}

/// One exported record; byte fields are lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedRecord {
    /// Raft log index.
    pub index: u64,
    /// The previous record's hash (64 hex digits).
    pub prev: String,
    /// What happened.
    pub summary: String,
    /// `SHA-256(prev || index BE || summary)` (64 hex digits).
    pub hash: String,
}

/// The exported audit key and who vouches for it; byte fields are lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedKey {
    /// Uncompressed P-256 point (65 bytes).
    pub public: String,
    /// DER certificate of the node that vouched for the key.
    pub endorser_cert: String,
    /// ECDSA P-256 SHA-256 signature (ASN.1) by the certificate's key over
    /// [`endorsement_message`] of the public key.
    pub endorsement: String,
}

/// Why an export cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The text is not JSON of an export.
    #[error("not a cloudkey audit export: {0}")]
    Json(serde_json::Error),
    /// The `format` field names another format.
    #[error("unsupported audit export format {0:?} (expected {FORMAT:?})")]
    Format(String),
}

impl From<serde_json::Error> for ExportError {
    fn from(e: serde_json::Error) -> Self {
        Self::Json(e)
    }
}

impl From<&AuditEntry> for ExportedRecord {
    fn from(e: &AuditEntry) -> Self {
        Self {
            index: e.index,
            prev: hex::encode(e.prev),
            summary: e.summary.clone(),
            hash: hex::encode(e.hash),
        }
    }
}

impl From<&AuditKeyInfo> for ExportedKey {
    fn from(k: &AuditKeyInfo) -> Self {
        Self {
            public: hex::encode(&k.public),
            endorser_cert: hex::encode(&k.endorser_cert),
            endorsement: hex::encode(&k.endorsement),
        }
    }
}

impl AuditExport {
    /// An export of `records` (in chain order) with the cluster's audit key, made at `now_ms`.
    #[must_use]
    pub fn new(key: Option<&AuditKeyInfo>, records: &[AuditEntry], now_ms: u64) -> Self {
        Self {
            format: FORMAT.to_owned(),
            exported_unix_ms: now_ms,
            audit_key: key.map(ExportedKey::from),
            records: records.iter().map(ExportedRecord::from).collect(),
        }
    }

    /// The export as pretty-printed JSON.
    ///
    /// # Errors
    /// [`ExportError::Json`] if serialisation fails (it does not for this structure).
    pub fn to_json(&self) -> Result<String, ExportError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// Parses an export written by [`AuditExport::to_json`]. Does not verify it ([`verify`]).
    ///
    /// # Errors
    /// [`ExportError::Json`] for text that is not an export, [`ExportError::Format`] for
    /// another format.
    pub fn from_json(text: &str) -> Result<Self, ExportError> {
        let export: Self = serde_json::from_str(text)?;
        if export.format != FORMAT {
            return Err(ExportError::Format(export.format));
        }
        Ok(export)
    }
}

/// What kind of flaw [`verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The export is malformed: another format, a field that is not hex of the right length.
    Malformed,
    /// A record's hash does not match its contents: the record was changed.
    Changed,
    /// A record does not follow the one before it (its `prev` is not that record's hash, or
    /// its index is not higher): a record was dropped, inserted or reordered before it.
    Sequence,
    /// A checkpoint is malformed, covers no record before it with the hash it signs, does not
    /// follow the previous checkpoint, or its signature does not verify with the audit key.
    Checkpoint,
    /// The audit key is missing while the chain needs it, is not endorsed by a node
    /// certificate of the CA, or is not the key the chain records.
    AuditKey,
}

impl Failure {
    /// A short description, for people.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Malformed => "malformed export",
            Self::Changed => "record changed",
            Self::Sequence => "a record was dropped, inserted or reordered before it",
            Self::Checkpoint => "bad checkpoint",
            Self::AuditKey => "bad audit key",
        }
    }
}

/// Why an export does not verify, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyError {
    /// What kind of flaw.
    pub failure: Failure,
    /// Position (0-based) in [`AuditExport::records`] of the record at fault, if one is.
    pub position: Option<usize>,
    /// That record's log index, when known.
    pub index: Option<u64>,
    /// What exactly is wrong (one line).
    pub reason: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.position, self.index) {
            (Some(p), Some(i)) => write!(f, "record at position {p} (log index {i}): ")?,
            (Some(p), None) => write!(f, "record at position {p}: ")?,
            (None, Some(i)) => write!(f, "log index {i}: ")?,
            (None, None) => {}
        }
        write!(f, "{}: {}", self.failure.describe(), self.reason)
    }
}

impl std::error::Error for VerifyError {}

/// What a successful [`verify`] established.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records in the export.
    pub records: usize,
    /// Log index of the first record (`None` for an empty export).
    pub first_index: Option<u64>,
    /// Log index of the last record.
    pub last_index: Option<u64>,
    /// The first record's `prev` is 32 zero bytes: the export starts at the chain's first
    /// record. Otherwise it is a page, and records before it were not checked.
    pub starts_at_genesis: bool,
    /// Checkpoints verified.
    pub checkpoints: usize,
    /// Log index covered by the last checkpoint.
    pub last_checkpoint_index: Option<u64>,
    /// Records after the record the last checkpoint covers (all of them without checkpoints):
    /// their integrity rests on the hash links alone.
    pub uncovered_after_last_checkpoint: usize,
    /// The audit key (hex of the uncompressed point); empty when the export has none.
    pub audit_key_public_hex: String,
    /// Who endorsed the audit key, e.g. `node 2`; empty when the export has no audit key.
    pub endorser: String,
    /// Log index of the record that set the audit key, if the export holds it.
    pub audit_key_set_at_index: Option<u64>,
}

/// Appends the record of log entry `index` to `chain`: linked to the last record's hash (zeros
/// for the first) and hashed with [`record_hash`]. The node's audit log and the tests of the
/// verifier build chains with this one rule.
pub fn append(chain: &mut Vec<AuditEntry>, index: u64, summary: String) {
    let prev = chain.last().map_or([0u8; 32], |e| e.hash);
    let hash = record_hash(&prev, index, &summary);
    chain.push(AuditEntry {
        index,
        prev,
        summary,
        hash,
    });
}

/// `SHA-256(prev || index BE || summary)`: a record's hash.
#[must_use]
pub fn record_hash(prev: &[u8; 32], index: u64, summary: &str) -> [u8; 32] {
    let mut m = Vec::with_capacity(40 + summary.len());
    m.extend_from_slice(prev);
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(summary.as_bytes());
    let d = digest(&SHA256, &m);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A record with its hex decoded.
struct Decoded<'a> {
    index: u64,
    prev: [u8; 32],
    hash: [u8; 32],
    summary: &'a str,
}

/// The audit key once its endorsement is verified.
struct VerifiedKey {
    public: Vec<u8>,
    public_hex: String,
    cert_sha256: [u8; 32],
    endorser: String,
}

/// A parsed checkpoint summary.
struct Checkpoint {
    index: u64,
    hash: [u8; 32],
    signature: Vec<u8>,
}

fn fail(
    failure: Failure,
    position: Option<usize>,
    index: Option<u64>,
    reason: String,
) -> VerifyError {
    VerifyError {
        failure,
        position,
        index,
        reason,
    }
}

fn hash32(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    Some(out)
}

fn decode_records(export: &AuditExport) -> Result<Vec<Decoded<'_>>, VerifyError> {
    export
        .records
        .iter()
        .enumerate()
        .map(|(pos, r)| {
            let bad = |field: &str| {
                fail(
                    Failure::Malformed,
                    Some(pos),
                    Some(r.index),
                    format!("its {field} is not 64 hex digits"),
                )
            };
            Ok(Decoded {
                index: r.index,
                prev: hash32(&r.prev).ok_or_else(|| bad("prev"))?,
                hash: hash32(&r.hash).ok_or_else(|| bad("hash"))?,
                summary: &r.summary,
            })
        })
        .collect()
}

/// The `key=value` fields of a summary after its command word.
fn fields(rest: &str) -> impl Iterator<Item = (&str, &str)> {
    rest.split_ascii_whitespace()
        .filter_map(|f| f.split_once('='))
}

fn parse_checkpoint(rest: &str) -> Result<Checkpoint, String> {
    let expected = "expected `checkpoint index=<u64> hash=<64 hex> signature=<128 hex>`";
    let words: Vec<&str> = rest.split_ascii_whitespace().collect();
    let [index, hash, signature] = words.as_slice() else {
        return Err(expected.to_owned());
    };
    let index = index
        .strip_prefix("index=")
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| expected.to_owned())?;
    let hash = hash
        .strip_prefix("hash=")
        .and_then(hash32)
        .ok_or_else(|| expected.to_owned())?;
    let signature = signature
        .strip_prefix("signature=")
        .and_then(|v| hex::decode(v).ok())
        .filter(|s| s.len() == 64)
        .ok_or_else(|| expected.to_owned())?;
    Ok(Checkpoint {
        index,
        hash,
        signature,
    })
}

fn parse_ca(ca_pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(ca_pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA PEM does not parse: {e}"))?;
    if certs.is_empty() {
        return Err("the CA PEM holds no certificate".to_owned());
    }
    Ok(certs)
}

/// Checks that `cert` chains to a CA certificate of `ca_pem`, was valid for client
/// authentication at `at_ms`, names a node, and that its P-256 key signed `message` with
/// `signature` (ASN.1). Returns the node's identity, e.g. `node 2`.
fn verify_endorsement(
    ca_pem: &str,
    cert: &[u8],
    at_ms: u64,
    message: &[u8],
    signature: &[u8],
) -> Result<String, String> {
    let mut roots = RootCertStore::empty();
    for ca in parse_ca(ca_pem)? {
        roots
            .add(ca)
            .map_err(|e| format!("unusable CA certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("unusable CA certificates: {e}"))?;
    let at = UnixTime::since_unix_epoch(Duration::from_millis(at_ms));
    verifier
        .verify_client_cert(&CertificateDer::from(cert), &[], at)
        .map_err(|e| {
            format!("the endorser certificate is not a valid certificate of the CA: {e}")
        })?;
    let who = identity_of_cert(cert).map_err(|e| format!("the endorser certificate: {e}"))?;
    if !matches!(who.role, Role::Node(_)) {
        return Err(format!("the endorser certificate is {who}'s, not a node's"));
    }
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("the endorser certificate does not parse: {e}"))?;
    let spki = parsed.public_key();
    let p256 = spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
        && spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|oid| oid == OID_EC_P256);
    if !p256 {
        return Err("the endorser certificate's key is not a P-256 key".to_owned());
    }
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &spki.subject_public_key.data)
        .verify(message, signature)
        .map_err(|_| format!("the endorsement does not verify with {who}'s certificate key"))?;
    Ok(who.to_string())
}

fn verify_key(key: &ExportedKey, ca_pem: &str, at_ms: u64) -> Result<VerifiedKey, VerifyError> {
    let bad = |reason: String| fail(Failure::AuditKey, None, None, reason);
    let public = hex::decode(&key.public)
        .ok()
        .filter(|p| p.len() == 65 && p[0] == 0x04)
        .ok_or_else(|| bad("the public key is not an uncompressed P-256 point in hex".into()))?;
    let cert = hex::decode(&key.endorser_cert)
        .map_err(|_| bad("the endorser certificate is not hex".into()))?;
    let endorsement =
        hex::decode(&key.endorsement).map_err(|_| bad("the endorsement is not hex".into()))?;
    let endorser = verify_endorsement(
        ca_pem,
        &cert,
        at_ms,
        &endorsement_message(&public),
        &endorsement,
    )
    .map_err(bad)?;
    let mut cert_sha256 = [0u8; 32];
    cert_sha256.copy_from_slice(digest(&SHA256, &cert).as_ref());
    Ok(VerifiedKey {
        public_hex: hex::encode(&public),
        public,
        cert_sha256,
        endorser,
    })
}

/// Checks the `set_audit_key` record at `pos` against the exported key.
fn check_key_record(
    r: &Decoded<'_>,
    pos: usize,
    rest: &str,
    key: Option<&VerifiedKey>,
) -> Result<(), VerifyError> {
    let bad = |reason: String| fail(Failure::AuditKey, Some(pos), Some(r.index), reason);
    let Some(key) = key else {
        return Err(bad(
            "the chain sets an audit key here but the export carries none".into(),
        ));
    };
    let mut public = None;
    for (name, value) in fields(rest) {
        match name {
            "public" => public = hex::decode(value).ok(),
            "endorsed_by_cert_sha256" if hash32(value) != Some(key.cert_sha256) => {
                return Err(bad(
                    "the chain records another endorser certificate than the exported one".into(),
                ));
            }
            _ => {}
        }
    }
    match public {
        Some(p) if p == key.public => Ok(()),
        Some(_) => Err(bad(
            "the chain records another audit key than the exported one".into(),
        )),
        None => Err(bad("the record names no public key".into())),
    }
}

/// Verifies an export against the cluster CA (`ca_pem`: one or more PEM certificates):
/// the hash of every record, the links between records, the audit key's endorsement by a
/// node certificate of the CA (valid at the export time), that the chain records that key,
/// and every checkpoint (it covers an earlier record of the export with exactly the hash it
/// signs, each covers a later record than the one before, and its signature verifies with the
/// audit key). A checkpoint of a page may cover a record before the page: only its signature is
/// checked then.
///
/// # Errors
/// The first flaw found, with the position of the record at fault.
pub fn verify(export: &AuditExport, ca_pem: &str) -> Result<VerifyReport, VerifyError> {
    if export.format != FORMAT {
        return Err(fail(
            Failure::Malformed,
            None,
            None,
            format!("format {:?}, expected {FORMAT:?}", export.format),
        ));
    }
    let records = decode_records(export)?;

    // 1. Every record's hash, and its link to the record before it.
    for (pos, r) in records.iter().enumerate() {
        if record_hash(&r.prev, r.index, r.summary) != r.hash {
            return Err(fail(
                Failure::Changed,
                Some(pos),
                Some(r.index),
                "its hash does not match its index and summary".into(),
            ));
        }
        let Some(before) = pos.checked_sub(1).and_then(|p| records.get(p)) else {
            continue;
        };
        if r.index <= before.index {
            return Err(fail(
                Failure::Sequence,
                Some(pos),
                Some(r.index),
                format!(
                    "its log index does not follow the previous record's {}",
                    before.index
                ),
            ));
        }
        if r.prev != before.hash {
            return Err(fail(
                Failure::Sequence,
                Some(pos),
                Some(r.index),
                format!(
                    "its prev is not the hash of the record before it (log index {})",
                    before.index
                ),
            ));
        }
    }
    let starts_at_genesis = records.first().is_none_or(|r| r.prev == [0u8; 32]);
    let first_index = records.first().map(|r| r.index);

    // 2. The audit key.
    let key = export
        .audit_key
        .as_ref()
        .map(|k| verify_key(k, ca_pem, export.exported_unix_ms))
        .transpose()?;
    let mut key_set_at: Option<usize> = None;
    for (pos, r) in records.iter().enumerate() {
        if let Some(rest) = r.summary.strip_prefix(SET_AUDIT_KEY_PREFIX) {
            if key_set_at.is_some() {
                return Err(fail(
                    Failure::AuditKey,
                    Some(pos),
                    Some(r.index),
                    "the chain sets an audit key a second time".into(),
                ));
            }
            check_key_record(r, pos, rest, key.as_ref())?;
            key_set_at = Some(pos);
        }
    }
    if key.is_some() && key_set_at.is_none() && starts_at_genesis {
        return Err(fail(
            Failure::AuditKey,
            None,
            None,
            "the chain never records setting the exported audit key".into(),
        ));
    }

    // 3. The checkpoints.
    let mut checkpoints = 0usize;
    let mut last_covered: Option<u64> = None;
    for (pos, r) in records.iter().enumerate() {
        let Some(rest) = r.summary.strip_prefix(CHECKPOINT_PREFIX) else {
            continue;
        };
        let bad = |reason: String| fail(Failure::Checkpoint, Some(pos), Some(r.index), reason);
        let cp = parse_checkpoint(rest).map_err(bad)?;
        let Some(key) = key.as_ref() else {
            return Err(fail(
                Failure::AuditKey,
                Some(pos),
                Some(r.index),
                "the chain holds a checkpoint but the export carries no audit key".into(),
            ));
        };
        match key_set_at {
            Some(k) if k > pos => {
                return Err(bad(
                    "it comes before the record that sets the audit key".into()
                ));
            }
            None if starts_at_genesis => {
                return Err(bad("the chain never set the audit key".into()));
            }
            _ => {}
        }
        if let Some(last) = last_covered {
            if cp.index <= last {
                return Err(bad(format!(
                    "it covers log index {}, not after the previous checkpoint's {last}",
                    cp.index
                )));
            }
        }
        match records[..pos].binary_search_by_key(&cp.index, |c| c.index) {
            Ok(c) if records[c].hash == cp.hash => {}
            Ok(c) => {
                return Err(bad(format!(
                    "it signs hash {} for log index {}, but the record at position {c} has hash {}",
                    hex::encode(cp.hash),
                    cp.index,
                    hex::encode(records[c].hash)
                )));
            }
            Err(_) if !starts_at_genesis && first_index.is_some_and(|f| cp.index < f) => {}
            Err(_) => {
                return Err(bad(format!(
                    "it covers log index {}, which is not in the export before it",
                    cp.index
                )));
            }
        }
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.public)
            .verify(&checkpoint_message(cp.index, &cp.hash), &cp.signature)
            .map_err(|_| bad("its signature does not verify with the audit key".into()))?;
        checkpoints += 1;
        last_covered = Some(cp.index);
    }
    let uncovered_after_last_checkpoint = records
        .iter()
        .filter(|r| last_covered.is_none_or(|c| r.index > c))
        .count();

    Ok(VerifyReport {
        records: records.len(),
        first_index,
        last_index: records.last().map(|r| r.index),
        starts_at_genesis,
        checkpoints,
        last_checkpoint_index: last_covered,
        uncovered_after_last_checkpoint,
        audit_key_public_hex: key
            .as_ref()
            .map(|k| k.public_hex.clone())
            .unwrap_or_default(),
        endorser: key.as_ref().map(|k| k.endorser.clone()).unwrap_or_default(),
        audit_key_set_at_index: key_set_at.map(|p| records[p].index),
    })
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING,
    };

    use super::*;

    /// A CA and one leaf it issued: CA PEM, leaf DER, leaf key PKCS#8.
    struct Pki {
        ca_pem: String,
        leaf_der: Vec<u8>,
        leaf_pkcs8: Vec<u8>,
    }

    /// A test CA and a leaf certificate for `uri` from it.
    fn pki(uri: &str) -> Pki {
        let ca = cloudkey_test_support::TestPki::new("test CA");
        let leaf = ca.issue(&cloudkey_test_support::LeafSpec::uris(&[uri]).server());
        Pki {
            ca_pem: ca.ca_pem().to_owned(),
            leaf_der: leaf.cert_der,
            leaf_pkcs8: leaf.key_der,
        }
    }

    fn sign_asn1(pkcs8: &[u8], msg: &[u8]) -> Vec<u8> {
        let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8).unwrap();
        k.sign(&SystemRandom::new(), msg).unwrap().as_ref().to_vec()
    }

    /// The audit key (checkpoint signer).
    struct AuditSigner(EcdsaKeyPair);

    impl AuditSigner {
        fn new() -> Self {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &SystemRandom::new(),
            )
            .unwrap();
            Self(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap(),
            )
        }
        fn public(&self) -> Vec<u8> {
            self.0.public_key().as_ref().to_vec()
        }
        fn checkpoint(&self, index: u64, hash: &[u8; 32]) -> String {
            let sig = self
                .0
                .sign(&SystemRandom::new(), &checkpoint_message(index, hash))
                .unwrap();
            format!(
                "checkpoint index={index} hash={} signature={}",
                hex::encode(hash),
                hex::encode(sig.as_ref())
            )
        }
    }

    /// Recomputes every link and hash from `from` on, as a forger would.
    fn rehash(records: &mut [ExportedRecord], from: usize) {
        for i in from..records.len() {
            let prev = if i == 0 {
                [0u8; 32]
            } else {
                hash32(&records[i - 1].hash).unwrap()
            };
            records[i].prev = hex::encode(prev);
            records[i].hash =
                hex::encode(record_hash(&prev, records[i].index, &records[i].summary));
        }
    }

    struct Fixture {
        pki: Pki,
        export: AuditExport,
    }

    /// Ten records at log indexes 1, 3, 5, ...: init, set_audit_key (position 1), checkpoints
    /// at positions 5 (covering position 4, log index 9) and 7 (covering position 6, log index 13).
    fn fixture() -> Fixture {
        let pki = pki("cloudkey://node/2");
        let audit = AuditSigner::new();
        let public = audit.public();
        let key = AuditKeyInfo {
            endorsement: sign_asn1(&pki.leaf_pkcs8, &endorsement_message(&public)),
            endorser_cert: pki.leaf_der.clone(),
            public: public.clone(),
        };
        let mut chain = Vec::new();
        append(&mut chain, 1, "init domain_kcv=00 max_failures=5".into());
        let cert_sha = hex::encode(digest(&SHA256, &pki.leaf_der));
        append(
            &mut chain,
            3,
            format!(
                "set_audit_key public={} endorsed_by_cert_sha256={cert_sha}",
                hex::encode(&public)
            ),
        );
        for i in [5, 7, 9] {
            append(&mut chain, i, format!("create_object id={i}"));
        }
        let covered = chain[4].hash;
        append(&mut chain, 11, audit.checkpoint(9, &covered));
        append(&mut chain, 13, "destroy_object id=5".into());
        let covered = chain[6].hash;
        append(&mut chain, 15, audit.checkpoint(13, &covered));
        append(&mut chain, 17, "add_officer name=alice".into());
        append(&mut chain, 19, "add_officer name=bob".into());
        let now_ms = 1_767_225_600_000;
        Fixture {
            export: AuditExport::new(Some(&key), &chain, now_ms),
            pki,
        }
    }

    fn expect_failure(export: &AuditExport, ca: &str, failure: Failure, position: Option<usize>) {
        let e = verify(export, ca).unwrap_err();
        assert_eq!((e.failure, e.position), (failure, position), "{e}");
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn an_intact_export_verifies_and_survives_json() {
        let f = fixture();
        let text = f.export.to_json().unwrap();
        assert!(text.contains("\"format\": \"cloudkey-audit-v1\""));
        let back = AuditExport::from_json(&text).unwrap();
        assert_eq!(back, f.export);
        let r = verify(&back, &f.pki.ca_pem).unwrap();
        assert_eq!(r.records, 10);
        assert_eq!((r.first_index, r.last_index), (Some(1), Some(19)));
        assert!(r.starts_at_genesis);
        assert_eq!(r.checkpoints, 2);
        assert_eq!(r.last_checkpoint_index, Some(13));
        assert_eq!(r.uncovered_after_last_checkpoint, 3);
        assert_eq!(r.endorser, "node 2");
        assert_eq!(r.audit_key_set_at_index, Some(3));
        assert_eq!(r.audit_key_public_hex, f.export.audit_key.unwrap().public);
    }

    #[test]
    fn other_formats_are_refused() {
        let f = fixture();
        let text = f
            .export
            .to_json()
            .unwrap()
            .replace("cloudkey-audit-v1", "cloudkey-audit-v9");
        assert!(matches!(
            AuditExport::from_json(&text),
            Err(ExportError::Format(_))
        ));
        assert!(matches!(
            AuditExport::from_json("{}"),
            Err(ExportError::Json(_))
        ));
    }

    #[test]
    fn a_changed_summary_is_reported_at_its_position() {
        let mut f = fixture();
        f.export.records[6].summary = "destroy_object id=7".into();
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Changed, Some(6));
        let e = verify(&f.export, &f.pki.ca_pem).unwrap_err();
        assert_eq!(e.index, Some(13));
        assert!(e.to_string().contains("position 6"), "{e}");
    }

    #[test]
    fn a_dropped_record_is_reported_after_the_gap() {
        let mut f = fixture();
        f.export.records.remove(3);
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Sequence, Some(3));
    }

    #[test]
    fn swapped_records_are_reported() {
        let mut f = fixture();
        f.export.records.swap(2, 3);
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Sequence, Some(2));
    }

    #[test]
    fn an_inserted_record_is_reported() {
        let mut f = fixture();
        let mut forged = f.export.records[2].clone();
        forged.index = 6;
        forged.summary = "create_object id=6".into();
        forged.prev = f.export.records[2].hash.clone();
        forged.hash = hex::encode(record_hash(
            &hash32(&forged.prev).unwrap(),
            6,
            &forged.summary,
        ));
        f.export.records.insert(3, forged);
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Sequence, Some(4));
    }

    #[test]
    fn rewriting_every_hash_after_a_change_breaks_the_checkpoint() {
        let mut f = fixture();
        f.export.records[2].summary = "create_object id=55".into();
        rehash(&mut f.export.records, 2);
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Checkpoint, Some(5));
        // Changing the checkpoint's hash too breaks its signature.
        let mut f = fixture();
        f.export.records[3].summary = "create_object id=77".into();
        rehash(&mut f.export.records, 3);
        let covered = f.export.records[4].hash.clone();
        let old = f.export.records[5].summary.clone();
        let old_hash = old
            .split_ascii_whitespace()
            .find_map(|w| w.strip_prefix("hash="))
            .unwrap()
            .to_owned();
        f.export.records[5].summary = old.replace(&old_hash, &covered);
        rehash(&mut f.export.records, 5);
        let e = verify(&f.export, &f.pki.ca_pem).unwrap_err();
        assert_eq!(
            (e.failure, e.position),
            (Failure::Checkpoint, Some(5)),
            "{e}"
        );
        assert!(e.reason.contains("signature"), "{e}");
    }

    #[test]
    fn a_checkpoint_with_a_wrong_signature_is_refused() {
        let mut f = fixture();
        let s = f.export.records[7].summary.clone();
        let (head, sig) = s.rsplit_once("signature=").unwrap();
        let mut sig = hex::decode(sig).unwrap();
        sig[10] ^= 1;
        f.export.records[7].summary = format!("{head}signature={}", hex::encode(sig));
        rehash(&mut f.export.records, 7);
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Checkpoint, Some(7));
        // A checkpoint signed by another key.
        let mut f = fixture();
        let covered = hash32(&f.export.records[6].hash).unwrap();
        f.export.records[7].summary = AuditSigner::new().checkpoint(13, &covered);
        rehash(&mut f.export.records, 7);
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Checkpoint, Some(7));
    }

    #[test]
    fn checkpoints_need_the_key() {
        let mut f = fixture();
        f.export.audit_key = None;
        // The set_audit_key record comes first and names a key the export lacks.
        expect_failure(&f.export, &f.pki.ca_pem, Failure::AuditKey, Some(1));
        f.export.records.remove(1);
        rehash(&mut f.export.records, 1);
        expect_failure(&f.export, &f.pki.ca_pem, Failure::AuditKey, Some(4));
    }

    #[test]
    fn an_endorsement_from_another_ca_is_refused() {
        let f = fixture();
        let other = pki("cloudkey://node/2");
        expect_failure(&f.export, &other.ca_pem, Failure::AuditKey, None);
        // Endorsed by a node of the other CA, verified against the other CA: but the chain
        // records the first endorser certificate.
        let mut export = f.export.clone();
        let key = export.audit_key.as_mut().unwrap();
        let public = hex::decode(&key.public).unwrap();
        key.endorser_cert = hex::encode(&other.leaf_der);
        key.endorsement = hex::encode(sign_asn1(&other.leaf_pkcs8, &endorsement_message(&public)));
        expect_failure(&export, &f.pki.ca_pem, Failure::AuditKey, None);
        expect_failure(&export, &other.ca_pem, Failure::AuditKey, Some(1));
    }

    #[test]
    fn endorsements_must_be_by_a_node_and_over_the_key() {
        let f = fixture();
        // A client certificate of the right CA.
        let client = pki("cloudkey://client/app");
        let mut export = f.export.clone();
        let key = export.audit_key.as_mut().unwrap();
        let public = hex::decode(&key.public).unwrap();
        key.endorser_cert = hex::encode(&client.leaf_der);
        key.endorsement = hex::encode(sign_asn1(&client.leaf_pkcs8, &endorsement_message(&public)));
        let e = verify(&export, &client.ca_pem).unwrap_err();
        assert_eq!(e.failure, Failure::AuditKey);
        assert!(e.reason.contains("not a node"), "{e}");
        // An endorsement over another key.
        let mut export = f.export.clone();
        let key = export.audit_key.as_mut().unwrap();
        key.endorsement = hex::encode(sign_asn1(&f.pki.leaf_pkcs8, &endorsement_message(b"x")));
        expect_failure(&export, &f.pki.ca_pem, Failure::AuditKey, None);
        // No certificate in the CA text.
        expect_failure(&f.export, "not pem", Failure::AuditKey, None);
    }

    #[test]
    fn a_page_verifies_without_genesis() {
        let f = fixture();
        let mut page = f.export.clone();
        page.records.drain(..6);
        let r = verify(&page, &f.pki.ca_pem).unwrap();
        assert!(!r.starts_at_genesis);
        assert_eq!(r.first_index, Some(13));
        assert_eq!(r.audit_key_set_at_index, None);
        assert_eq!(r.checkpoints, 1);
        assert_eq!(r.last_checkpoint_index, Some(13));
        // A page whose first record claims to be genesis does not link.
        let mut page = f.export.clone();
        page.records.drain(..6);
        page.records[0].prev = hex::encode([0u8; 32]);
        expect_failure(&page, &f.pki.ca_pem, Failure::Changed, Some(0));
    }

    #[test]
    fn malformed_fields_are_reported() {
        let mut f = fixture();
        f.export.records[4].prev = "zz".into();
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Malformed, Some(4));
        let mut f = fixture();
        f.export.records[5].summary = "checkpoint index=9 hash=00".into();
        rehash(&mut f.export.records, 5);
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Checkpoint, Some(5));
        let mut f = fixture();
        f.export.format = "other".into();
        expect_failure(&f.export, &f.pki.ca_pem, Failure::Malformed, None);
    }
}
