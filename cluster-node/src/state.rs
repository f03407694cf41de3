//! The replicated state and its applied view.
//!
//! Every change is a [`Command`] committed through Raft and applied, in log order and
//! deterministically, by [`State::apply`] on every node. Reads are served from the applied view
//! without locks on the hot path (`DashMap`s of `Arc`s).
//!
//! Nothing secret is ever in a command or in this state: PINs are argon2id hashes, private and
//! secret keys are chip blobs (encrypted under the domain key), and the session-grant secret is a
//! chip blob too.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use cloudkey_chip::pool::PoolKey;
use cloudkey_chip::KeyBlob;
use cloudkey_protocol::msg::{ObjectId, TokenId, UserType};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Cluster-wide settings fixed at `cloudkey init`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Key check value of the domain key every chip of the cluster holds.
    pub domain_kcv: [u8; 8],
    /// Blob of the generic secret from which each node's chip derives the session-grant MAC key
    /// (`HMAC(secret, "cloudkey session mac v1")`).
    #[serde(with = "serde_bytes")]
    pub session_secret_blob: Vec<u8>,
    /// Failed logins that lock a PIN.
    pub max_failures: u32,
    /// Lifetime of session grants, milliseconds.
    pub session_ttl_ms: u64,
}

/// A stored PIN: an argon2id PHC string (salt and parameters included).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinHash(pub String);

impl std::fmt::Debug for PinHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PinHash(..)")
    }
}

/// A token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Id, assigned at creation (one more than the highest so far).
    pub id: TokenId,
    /// Label, unique in the cluster.
    pub label: String,
    /// SO PIN.
    pub so_pin: PinHash,
    /// User PIN, once set.
    pub user_pin: Option<PinHash>,
    /// Failed SO logins since the last success or unlock.
    pub so_failures: u32,
    /// Failed user logins since the last success or unlock.
    pub user_failures: u32,
}

/// An object as replicated: its PKCS#11 attributes and, for private and secret keys, its chip
/// blob. Attribute values never include secret key material (`CKA_VALUE` of sensitive keys,
/// private exponents): those exist only inside the blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// Id (also the id bound into the blob).
    pub id: ObjectId,
    /// Owning token.
    pub token: TokenId,
    /// `CKA_*` → value (encodings as in `cloudkey_protocol::msg`).
    pub attrs: BTreeMap<u64, Vec<u8>>,
    /// The chip blob, for keys whose secret part lives in chips.
    #[serde(with = "serde_bytes")]
    pub blob: Option<Vec<u8>>,
}

/// An object in the applied view.
#[derive(Debug)]
pub struct Object {
    /// The replicated record.
    pub record: ObjectRecord,
    /// The blob ready for the chip pool, parsed once when applied.
    pub key: Option<PoolKey>,
    /// Log index that created it (creation order for `FindObjects`).
    pub created: u64,
}

/// A replicated change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Cluster bootstrap: fixes [`ClusterInfo`]. Refused once set.
    Init(ClusterInfo),
    /// Create a token. → [`CommandResult::Token`]; `TemplateInconsistent`-like refusal
    /// ([`CommandResult::Refused`]) when the label is taken.
    CreateToken {
        /// Label.
        label: String,
        /// SO PIN hash.
        so_pin: PinHash,
        /// User PIN hash.
        user_pin: Option<PinHash>,
    },
    /// Delete a token and its objects.
    DeleteToken(TokenId),
    /// `C_InitToken`: relabel, drop the user PIN, delete every object, clear counters.
    InitToken {
        /// The token.
        token: TokenId,
        /// New label.
        label: String,
    },
    /// Set a PIN (InitPIN, SetPIN) and clear its failure counter.
    SetPin {
        /// The token.
        token: TokenId,
        /// Whose PIN.
        user: UserType,
        /// New hash.
        pin: PinHash,
    },
    /// A failed login. → [`CommandResult::Failures`].
    LoginFailed {
        /// The token.
        token: TokenId,
        /// Who.
        user: UserType,
    },
    /// A successful login after failures: clear the counter. (Not written when it is zero.)
    LoginSucceeded {
        /// The token.
        token: TokenId,
        /// Who.
        user: UserType,
    },
    /// Operator unlock: clear both counters.
    Unlock(TokenId),
    /// Create objects (a key pair is two, committed together). Refused when an id exists.
    PutObjects(Vec<ObjectRecord>),
    /// Replace some attributes of an object.
    SetAttributes {
        /// The object.
        id: ObjectId,
        /// New values.
        attrs: Vec<(u64, Vec<u8>)>,
    },
    /// Destroy an object.
    DestroyObject(ObjectId),
}

/// What applying a command gives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied.
    Done,
    /// The new token's id.
    Token(TokenId),
    /// After a failed login: the count and whether the PIN is now locked.
    Failures {
        /// Failed attempts so far.
        count: u32,
        /// Locked (count reached `max_failures`).
        locked: bool,
    },
    /// Not applied (the state did not allow it); the state is unchanged. Code and detail.
    Refused {
        /// `ErrorCode` as u32.
        code: u32,
        /// Why.
        detail: String,
    },
}

/// One record of the hash-chained audit log of state changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Raft log index of the change.
    pub index: u64,
    /// Hash of the previous record (zeros for the first).
    pub prev: [u8; 32],
    /// What happened, without secrets (e.g. `create_token label=x id=3`).
    pub summary: String,
    /// `SHA-256(prev || index BE || summary)`.
    pub hash: [u8; 32],
}

/// The applied view. Shared by the Raft state machine (which applies) and the services (which
/// read).
#[derive(Debug, Default)]
pub struct State {
    pub(crate) cluster: RwLock<Option<ClusterInfo>>,
    pub(crate) tokens: DashMap<TokenId, Arc<Token>>,
    pub(crate) objects: DashMap<ObjectId, Arc<Object>>,
    pub(crate) audit: RwLock<Vec<AuditRecord>>,
    pub(crate) applied: AtomicU64,
    pub(crate) applied_tx: watch::Sender<u64>,
}

impl State {
    /// Cluster settings, once initialised.
    #[must_use]
    pub fn cluster(&self) -> Option<ClusterInfo> {
        self.cluster.read().ok().and_then(|c| c.clone())
    }

    /// A token by id.
    #[must_use]
    pub fn token(&self, id: TokenId) -> Option<Arc<Token>> {
        self.tokens.get(&id).map(|t| t.clone())
    }

    /// A token by label.
    #[must_use]
    pub fn token_by_label(&self, label: &str) -> Option<Arc<Token>> {
        self.tokens
            .iter()
            .find(|t| t.label == label)
            .map(|t| t.clone())
    }

    /// All tokens, by id.
    #[must_use]
    pub fn tokens(&self) -> Vec<Arc<Token>> {
        let mut v: Vec<_> = self.tokens.iter().map(|t| t.clone()).collect();
        v.sort_by_key(|t| t.id);
        v
    }

    /// An object by id.
    #[must_use]
    pub fn object(&self, id: &ObjectId) -> Option<Arc<Object>> {
        self.objects.get(id).map(|o| o.clone())
    }

    /// The objects of a token, in creation order.
    #[must_use]
    pub fn objects_of(&self, token: TokenId) -> Vec<Arc<Object>> {
        let mut v: Vec<_> = self
            .objects
            .iter()
            .filter(|o| o.record.token == token)
            .map(|o| o.clone())
            .collect();
        v.sort_by_key(|o| (o.created, o.record.id));
        v
    }

    /// Every object, in creation order.
    #[must_use]
    pub fn all_objects(&self) -> Vec<Arc<Object>> {
        let mut v: Vec<_> = self.objects.iter().map(|o| o.clone()).collect();
        v.sort_by_key(|o| (o.created, o.record.id));
        v
    }

    /// The audit chain so far.
    #[must_use]
    pub fn audit(&self) -> Vec<AuditRecord> {
        self.audit.read().map(|a| a.clone()).unwrap_or_default()
    }

    /// The last applied log index.
    #[must_use]
    pub fn applied(&self) -> u64 {
        self.applied.load(Ordering::Acquire)
    }

    /// A receiver that sees every change of the applied index (for bounded read-your-writes
    /// waits).
    #[must_use]
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Builds the pool key of an object record's blob.
    pub(crate) fn pool_key(record: &ObjectRecord) -> Option<PoolKey> {
        record
            .blob
            .as_ref()
            .and_then(|b| PoolKey::new(KeyBlob(b.clone())).ok())
    }
}
