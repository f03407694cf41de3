//! The client protocol's messages.
//!
//! One bidirectional QUIC stream carries one [`ClientRequest`] and its [`ClientResponse`], each
//! framed by [`crate::frame`]. Requests name PKCS#11 things by their PKCS#11 numbers
//! (`CKA_*`, `CKM_*`, `CKO_*`), so the module passes templates and mechanisms through without
//! translating them, and the node owns the object semantics.
//!
//! # Attribute values on the wire
//! * `CK_BBOOL`: one byte, 0 or 1.
//! * `CK_ULONG` (classes, key types, lengths, mechanism lists): 8 bytes, little-endian `u64`.
//! * Everything else (labels, ids, `CKA_EC_POINT`, `CKA_MODULUS`, ...): the raw bytes PKCS#11
//!   defines.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::WireError;
use crate::gov::{
    ApprovalInfo, AuditPage, GuardedOp, OfficerAuth, OfficerInfo, PolicyScope, Rule, TerminalInfo,
    TerminalKey, TmkDelivery, TmkQr,
};
use crate::tls::Role;

/// A cluster-wide object identity: 16 random bytes, also the id bound into the object's chip
/// blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectId(pub [u8; 16]);

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({self})")
    }
}

/// A token (a PKCS#11 slot's token), numbered by the cluster when it is created.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TokenId(pub u64);

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// PKCS#11 user types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UserType {
    /// `CKU_SO`, the security officer.
    So,
    /// `CKU_USER`, the normal user.
    User,
}

/// Secret bytes (PINs, key values in `CKA_VALUE`): zeroized on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct Secret(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl Secret {
    /// The secret's bytes.
    #[must_use]
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().to_vec())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret([redacted; {}])", self.0.len())
    }
}

/// Proof of a login: opaque to clients, MAC'd by the cluster, short-lived. Every node accepts it
/// without re-checking the PIN.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SessionGrant(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionGrant([redacted])")
    }
}

/// Who a token request acts as: the token, and the session grant when logged in. Without a
/// grant only public objects (`CKA_PRIVATE` false) are visible and nothing can be used that
/// needs a login.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// The token.
    pub token: TokenId,
    /// The login, if any.
    pub grant: Option<SessionGrant>,
}

/// One PKCS#11 attribute: type and value (encoding in the module docs).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attribute {
    /// `CKA_*`.
    pub ty: u64,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

impl fmt::Debug for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // CKA_VALUE may be a secret key's value: never print values.
        write!(f, "Attribute(0x{:x}, {} bytes)", self.ty, self.value.len())
    }
}

impl Attribute {
    /// A `CK_BBOOL` attribute.
    #[must_use]
    pub fn bool(ty: u64, v: bool) -> Self {
        Self {
            ty,
            value: vec![u8::from(v)],
        }
    }

    /// A `CK_ULONG` attribute.
    #[must_use]
    pub fn ulong(ty: u64, v: u64) -> Self {
        Self {
            ty,
            value: v.to_le_bytes().to_vec(),
        }
    }

    /// A byte-string attribute.
    #[must_use]
    pub fn bytes(ty: u64, v: impl Into<Vec<u8>>) -> Self {
        Self {
            ty,
            value: v.into(),
        }
    }
}

/// The answer for one attribute of `GetAttributes`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrValue {
    /// The value.
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The attribute exists but may not be revealed (`CKR_ATTRIBUTE_SENSITIVE`).
    Sensitive,
    /// The object has no such attribute (`CKR_ATTRIBUTE_TYPE_INVALID`).
    Invalid,
}

impl fmt::Debug for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Value(v) => write!(f, "Value({} bytes)", v.len()),
            Self::Sensitive => f.write_str("Sensitive"),
            Self::Invalid => f.write_str("Invalid"),
        }
    }
}

/// A PKCS#11 mechanism: its `CKM_*` number and parameters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mechanism {
    /// `CKM_*` (vendor SM2/SM3/SM4 numbers as documented in `pkcs11-module/VENDOR.md`).
    pub ckm: u64,
    /// Parameters.
    pub param: MechParam,
}

impl Mechanism {
    /// A mechanism without parameters.
    #[must_use]
    pub fn new(ckm: u64) -> Self {
        Self {
            ckm,
            param: MechParam::None,
        }
    }
}

/// Mechanism parameters, by shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MechParam {
    /// No parameter.
    None,
    /// An IV (`CKM_AES_CBC_PAD`, SM4-CBC).
    Iv(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `CK_GCM_PARAMS`.
    Gcm {
        /// IV.
        #[serde(with = "serde_bytes")]
        iv: Vec<u8>,
        /// Additional authenticated data.
        #[serde(with = "serde_bytes")]
        aad: Vec<u8>,
        /// Tag length in bits.
        tag_bits: u32,
    },
    /// `CK_RSA_PKCS_PSS_PARAMS`.
    Pss {
        /// `CKM_SHA*` of the digest.
        hash: u64,
        /// `CKG_MGF1_*`.
        mgf: u64,
        /// Salt length in bytes.
        salt_len: u64,
    },
    /// `CK_RSA_PKCS_OAEP_PARAMS` (source always `CKZ_DATA_SPECIFIED`).
    Oaep {
        /// `CKM_SHA*`.
        hash: u64,
        /// `CKG_MGF1_*`.
        mgf: u64,
        /// The label (`pSourceData`), empty for none.
        #[serde(with = "serde_bytes")]
        source: Vec<u8>,
    },
    /// `CK_ECDH1_DERIVE_PARAMS`.
    Ecdh1 {
        /// `CKD_*`; the cluster supports `CKD_NULL`.
        kdf: u64,
        /// Shared data for the KDF.
        #[serde(with = "serde_bytes")]
        shared_data: Vec<u8>,
        /// The peer's public point (uncompressed, raw or DER OCTET STRING).
        #[serde(with = "serde_bytes")]
        public_data: Vec<u8>,
    },
    /// The SM2 distinguishing identifier for SM3-with-SM2 (default `1234567812345678`).
    Sm2Id(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// What is signed or verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignInput {
    /// The data as PKCS#11 defines for the mechanism (for `CKM_ECDSA`, the digest; for
    /// `CKM_SHA256_RSA_PKCS`, the message).
    Data(#[serde(with = "serde_bytes")] Vec<u8>),
    /// For hash-and-sign mechanisms only: the digest the client already computed over a
    /// multi-part message (for SM3-with-SM2: `e = SM3(Z || M)`).
    Digest(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// A cluster member: Raft node id and the address it serves on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Raft node id.
    pub id: u64,
    /// `host:port` (UDP, QUIC).
    pub addr: String,
}

/// A request. The comment on each variant names its response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Node and cluster state → [`Response::Status`]. Any role.
    Status,
    /// Operator: bootstrap a new cluster with these members (this node among them): generate
    /// the domain key in one of this node's chips, initialise Raft → [`Response::Done`].
    Init {
        /// All initial members.
        members: Vec<Member>,
    },
    /// Operator: add a node (as learner, then voter) → [`Response::Done`].
    AddNode(Member),
    /// Operator: remove a node from the membership → [`Response::Done`].
    RemoveNode {
        /// Raft node id.
        id: u64,
    },
    /// Operator: create a token → [`Response::Token`].
    CreateToken {
        /// Unique label (at most 32 bytes, the `CK_TOKEN_INFO` label).
        label: String,
        /// The SO PIN.
        so_pin: Secret,
        /// The user PIN, if set now (else `C_InitPIN` sets it later).
        user_pin: Option<Secret>,
    },
    /// Operator: delete a token and all its objects → [`Response::Done`].
    DeleteToken(TokenId),
    /// Operator: clear the failed-login counters and locks of a token → [`Response::Done`].
    UnlockToken(TokenId),
    /// All tokens → [`Response::Tokens`]. Any role.
    ListTokens,
    /// Operator: summaries of the objects of one token or all → [`Response::Objects`].
    ListObjects {
        /// Restrict to one token.
        token: Option<TokenId>,
    },
    /// `C_InitToken`: with the SO PIN, wipe the token's objects and user PIN and relabel it
    /// → [`Response::Done`].
    InitToken {
        /// The token.
        token: TokenId,
        /// The current SO PIN.
        so_pin: Secret,
        /// The new label.
        label: String,
    },
    /// `C_Login` → [`Response::Session`]. Every attempt is counted on every node before its PIN
    /// is checked; a right PIN clears the count. The grant is honoured only from the
    /// certificate that logged in.
    Login {
        /// The token.
        token: TokenId,
        /// Who logs in.
        user: UserType,
        /// The PIN.
        pin: Secret,
    },
    /// `C_InitPIN` (SO session) → [`Response::Done`].
    InitPin {
        /// SO login.
        auth: Auth,
        /// The new user PIN.
        pin: Secret,
    },
    /// `C_SetPIN` (the logged-in user's own PIN) → [`Response::Done`].
    SetPin {
        /// Login.
        auth: Auth,
        /// Current PIN.
        old_pin: Secret,
        /// New PIN.
        new_pin: Secret,
    },
    /// `C_CreateObject` → [`Response::Object`].
    CreateObject {
        /// Who.
        auth: Auth,
        /// The template.
        template: Vec<Attribute>,
    },
    /// `C_CopyObject` → [`Response::Object`].
    CopyObject {
        /// Who.
        auth: Auth,
        /// The original.
        object: ObjectId,
        /// Attributes to change in the copy.
        template: Vec<Attribute>,
    },
    /// `C_DestroyObject` → [`Response::Done`].
    DestroyObject {
        /// Who.
        auth: Auth,
        /// The object.
        object: ObjectId,
    },
    /// `C_GetAttributeValue` → [`Response::Attributes`], one answer per requested type.
    GetAttributes {
        /// Who.
        auth: Auth,
        /// The object.
        object: ObjectId,
        /// `CKA_*` wanted.
        types: Vec<u64>,
    },
    /// `C_SetAttributeValue` → [`Response::Done`].
    SetAttributes {
        /// Who.
        auth: Auth,
        /// The object.
        object: ObjectId,
        /// New values.
        template: Vec<Attribute>,
    },
    /// `C_FindObjects*` → [`Response::Objects`]. Objects whose attributes match every
    /// attribute of the template, in creation order.
    FindObjects {
        /// Who.
        auth: Auth,
        /// The match template (empty matches all visible objects).
        template: Vec<Attribute>,
    },
    /// `C_GenerateKey` → [`Response::Object`].
    GenerateKey {
        /// Who.
        auth: Auth,
        /// `CKM_*_KEY_GEN`.
        mechanism: Mechanism,
        /// The key's template.
        template: Vec<Attribute>,
    },
    /// `C_GenerateKeyPair` → [`Response::KeyPair`].
    GenerateKeyPair {
        /// Who.
        auth: Auth,
        /// `CKM_*_KEY_PAIR_GEN`.
        mechanism: Mechanism,
        /// Public key template.
        public_template: Vec<Attribute>,
        /// Private key template.
        private_template: Vec<Attribute>,
    },
    /// `C_Sign` → [`Response::Bytes`].
    Sign {
        /// Who.
        auth: Auth,
        /// The key.
        key: ObjectId,
        /// The mechanism.
        mechanism: Mechanism,
        /// What to sign.
        input: SignInput,
    },
    /// `C_Verify` → [`Response::Done`], or [`crate::ErrorCode::SignatureInvalid`].
    Verify {
        /// Who.
        auth: Auth,
        /// The key.
        key: ObjectId,
        /// The mechanism.
        mechanism: Mechanism,
        /// What was signed.
        input: SignInput,
        /// The signature.
        #[serde(with = "serde_bytes")]
        signature: Vec<u8>,
    },
    /// `C_Encrypt` → [`Response::Bytes`].
    Encrypt {
        /// Who.
        auth: Auth,
        /// The key.
        key: ObjectId,
        /// The mechanism.
        mechanism: Mechanism,
        /// Plaintext.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `C_Decrypt` → [`Response::Bytes`].
    Decrypt {
        /// Who.
        auth: Auth,
        /// The key.
        key: ObjectId,
        /// The mechanism.
        mechanism: Mechanism,
        /// Ciphertext.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// `C_WrapKey` → [`Response::Bytes`].
    WrapKey {
        /// Who.
        auth: Auth,
        /// The wrapping key.
        wrapping_key: ObjectId,
        /// The mechanism.
        mechanism: Mechanism,
        /// The key to wrap.
        key: ObjectId,
    },
    /// `C_UnwrapKey` → [`Response::Object`].
    UnwrapKey {
        /// Who.
        auth: Auth,
        /// The unwrapping key.
        unwrapping_key: ObjectId,
        /// The mechanism.
        mechanism: Mechanism,
        /// The wrapped key.
        #[serde(with = "serde_bytes")]
        wrapped: Vec<u8>,
        /// The new key's template.
        template: Vec<Attribute>,
    },
    /// `C_DeriveKey` → [`Response::Object`].
    DeriveKey {
        /// Who.
        auth: Auth,
        /// The base key.
        base_key: ObjectId,
        /// The mechanism.
        mechanism: Mechanism,
        /// The new key's template.
        template: Vec<Attribute>,
    },
    /// `C_GenerateRandom` → [`Response::Bytes`].
    GenerateRandom {
        /// How many bytes (at most 4096 per request).
        len: u32,
    },
    // ---- governance (`crate::gov`, docs/governance.md) ----
    /// Operator: register an officer → [`Response::Done`].
    AddOfficer {
        /// Unique name.
        name: String,
        /// The certificate identity the officer connects with (`operator/X` or `client/X`).
        identity: String,
        /// The officer's own PIN.
        pin: Secret,
    },
    /// Officers → [`Response::Officers`]. Any role.
    ListOfficers,
    /// Operator: set (replace) the policy of a scope; no rules removes it → [`Response::Done`].
    SetPolicy {
        /// Where it applies.
        scope: PolicyScope,
        /// The rules.
        rules: Vec<Rule>,
    },
    /// Policies → [`Response::Policies`]. Any role.
    ListPolicies,
    /// Approval requests → [`Response::Approvals`]: the open ones, or all. Any role.
    ListApprovals {
        /// Include approved, rejected, expired and consumed ones.
        all: bool,
    },
    /// Officer: approve request `id`, whose parameters hash to `params_hash` (what the officer
    /// was shown) → [`Response::Approval`].
    Approve {
        /// The officer.
        officer: OfficerAuth,
        /// The request.
        id: u64,
        /// The parameters being approved.
        params_hash: [u8; 32],
    },
    /// Officer: reject request `id` → [`Response::Approval`].
    Reject {
        /// The officer.
        officer: OfficerAuth,
        /// The request.
        id: u64,
    },
    /// Operator: audit records with `index >= from`, at most `max` → [`Response::Audit`].
    AuditExport {
        /// First log index.
        from: u64,
        /// Most records (at most 1000 per page).
        max: u32,
    },
    /// Operator: register (or replace) a terminal → [`Response::Done`].
    AddTerminal {
        /// Terminal number.
        id: String,
        /// Its public key.
        key: TerminalKey,
        /// The officers responsible for it.
        admins: Vec<String>,
        /// The certificate identity the terminal must connect with, if bound.
        identity: Option<String>,
    },
    /// Terminals → [`Response::Terminals`]. Any role.
    ListTerminals,
    /// Terminal: open a TMK injection application → [`Response::TmkQr`].
    TmkRequest {
        /// Terminal number.
        terminal: String,
    },
    /// Officer: send a one-time code to the officer's phone for this terminal
    /// → [`Response::Done`].
    TmkSmsCode {
        /// The officer.
        officer: OfficerAuth,
        /// Terminal number.
        terminal: String,
    },
    /// Officer (first administrator): apply for the injection with the scanned QR payload and
    /// the SMS code → [`Response::Approval`] (the request the second administrator approves).
    TmkApply {
        /// The officer.
        officer: OfficerAuth,
        /// Terminal number.
        terminal: String,
        /// The scanned QR payload.
        payload: String,
        /// The one-time code.
        sms_code: Secret,
    },
    /// Terminal: its own check (payload, applicant, application), then the TMK
    /// → [`Response::Tmk`]. Asking again returns the same key.
    TmkFetch {
        /// Terminal number.
        terminal: String,
        /// Its QR payload.
        payload: String,
        /// The applicant officer's name, as entered on the terminal.
        admin: String,
    },
    /// Extends the login behind a live grant → [`Response::Session`]: a fresh grant, for the
    /// certificate that logged in, without the PIN.
    RenewSession {
        /// The login.
        auth: Auth,
    },
    /// `C_Logout` → [`Response::Done`]: ends the login behind the grant on every node.
    Logout {
        /// The login.
        auth: Auth,
    },
    /// Operator: the chip registry → [`Response::Chips`].
    ListChips,
    /// Operator: enrol the chips of member `node` (each proves possession of its identity
    /// key to the node serving the request) → [`Response::Chips`], the node's enrolled chips.
    EnrollChips {
        /// The member whose chips to enrol.
        node: u64,
    },
    /// Operator: remove a chip identity from the registry (the domain is never exported to it
    /// again) → [`Response::Done`].
    RetireChip {
        /// SHA-256 of the chip's identity key ([`ChipEntry::fingerprint`]).
        fingerprint: [u8; 32],
    },
}

/// One chip of the cluster's chip registry: the domain key is exported only to these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipEntry {
    /// The node whose chip it is.
    pub node: u64,
    /// SHA-256 of its identity key: what operators compare with the chip's own display.
    pub fingerprint: [u8; 32],
    /// Its identity key (uncompressed P-256 point).
    #[serde(with = "serde_bytes")]
    pub identity: Vec<u8>,
    /// Model, as the chip reported it.
    pub model: String,
    /// Serial number, as the chip reported it.
    pub serial: String,
    /// Who enrolled it.
    pub by: String,
    /// When (milliseconds since the Unix epoch).
    pub enrolled_ms: u64,
}

/// Who may send a request, by the role its TLS certificate gives ([`Role`]). Node certificates
/// never use the client protocol; they have their own ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// Any client or operator certificate: the node's status and the token list (whose
    /// failure counters only operators see).
    Anyone,
    /// An application (PKCS#11 module, gateway, load tester) or an operator: token requests,
    /// whose session grant the node checks.
    Application,
    /// An operator certificate only (the `cloudkey` CLI).
    Operator,
    /// An officer, with a client or operator certificate; the node checks the officer's PIN
    /// and certificate identity ([`OfficerAuth`]).
    Officer,
    /// A terminal, with a client or operator certificate; the node checks the identity the
    /// terminal is bound to.
    Terminal,
}

impl Sender {
    /// True when a certificate of `role` may send a request of this kind. Denies what it does
    /// not name: node certificates always, other certificates below [`Sender::Operator`].
    #[must_use]
    pub fn permits(self, role: &Role) -> bool {
        match (self, role) {
            (_, Role::Node(_)) => false,
            (Self::Operator, Role::Operator) => true,
            (Self::Operator, Role::Client) => false,
            (
                Self::Anyone | Self::Application | Self::Officer | Self::Terminal,
                Role::Client | Role::Operator,
            ) => true,
        }
    }
}

/// How long a request may run on the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Deadline {
    /// The request deadline (`limits.request_deadline`).
    Request,
    /// The longer administrative deadline (`limits.admin_deadline`): the request waits on a
    /// Raft membership change.
    Membership,
}

/// The rules of one kind of request, all in one place ([`Request::spec`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestSpec {
    /// A short name for logs and metrics.
    pub name: &'static str,
    /// Who may send it.
    pub sender: Sender,
    /// True when it changes replicated state (it goes through the Raft leader). `Login`
    /// writes: every attempt is counted before its PIN is checked.
    pub write: bool,
    /// True when sending it twice has the effect of sending it once, and the second answer is
    /// the first one's: every read, `TmkFetch` (it returns the key already delivered) and
    /// `RenewSession` (any of the grants it gives is as good as the others).
    /// The client retries these when their outcome is unknown.
    pub idempotent: bool,
    /// Its deadline on the node.
    pub deadline: Deadline,
    /// The quorum-guarded operation a policy can put it under, if any.
    pub guard: Option<GuardedOp>,
    /// True for key use and logins: served only by a node that confirmed its state with a
    /// quorum within the staleness bound, else refused `Stale` (the client asks another
    /// node), so a key destroyed or a PIN changed through the majority is never used on a
    /// node cut off from it.
    pub current: bool,
    /// True for writes only the Raft leader serves: operator, officer and terminal writes
    /// (but `Init`, which a node not yet in a cluster serves), logins and `C_InitToken`. A
    /// node that is not the leader answers `NotLeader` with the leader's address before
    /// doing anything, and the client asks the leader: the caller's own connection and PIN
    /// are its authority, which a node does not pass on.
    pub leader: bool,
}

impl RequestSpec {
    const fn new(name: &'static str, sender: Sender) -> Self {
        Self {
            name,
            sender,
            write: false,
            idempotent: true,
            deadline: Deadline::Request,
            guard: None,
            current: false,
            leader: false,
        }
    }

    /// Served only by the leader ([`RequestSpec::leader`]).
    const fn on_leader(mut self) -> Self {
        self.leader = true;
        self
    }

    /// Served by the node asked, leader or not (`Init`).
    const fn anywhere(mut self) -> Self {
        self.leader = false;
        self
    }

    /// Served only by a node that knows it is current.
    const fn current(mut self) -> Self {
        self.current = true;
        self
    }

    /// A write that must not be sent again when its outcome is unknown.
    /// A write; the leader's alone when an operator, officer or terminal sends it.
    const fn write(mut self) -> Self {
        self.write = true;
        self.idempotent = false;
        self.leader = matches!(
            self.sender,
            Sender::Operator | Sender::Officer | Sender::Terminal
        );
        self
    }

    /// A write whose repetition is harmless.
    const fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    const fn membership(mut self) -> Self {
        self.deadline = Deadline::Membership;
        self
    }

    const fn guarded(mut self, op: GuardedOp) -> Self {
        self.guard = Some(op);
        self
    }
}

impl Request {
    /// The rules of this request. One exhaustive match: a new request does not compile until
    /// it has a spec, and nothing is allowed that its spec does not allow.
    #[must_use]
    pub const fn spec(&self) -> RequestSpec {
        use RequestSpec as S;
        use Sender::{Anyone, Application, Officer, Operator, Terminal};
        match self {
            Self::Status => S::new("status", Anyone),
            Self::Init { .. } => S::new("init", Operator).write().membership().anywhere(),
            Self::AddNode(_) => S::new("add_node", Operator).write().membership(),
            Self::RemoveNode { .. } => S::new("remove_node", Operator).write().membership(),
            Self::CreateToken { .. } => S::new("create_token", Operator).write(),
            Self::DeleteToken(_) => S::new("delete_token", Operator).write(),
            Self::UnlockToken(_) => S::new("unlock_token", Operator).write(),
            Self::ListTokens => S::new("list_tokens", Anyone),
            Self::ListObjects { .. } => S::new("list_objects", Operator),
            Self::InitToken { .. } => S::new("init_token", Application).write().on_leader(),
            Self::Login { .. } => S::new("login", Application).write().current().on_leader(),
            Self::InitPin { .. } => S::new("init_pin", Application).write(),
            Self::SetPin { .. } => S::new("set_pin", Application).write(),
            Self::CreateObject { .. } => S::new("create_object", Application).write(),
            Self::CopyObject { .. } => S::new("copy_object", Application).write(),
            Self::DestroyObject { .. } => S::new("destroy_object", Application)
                .write()
                .guarded(GuardedOp::Destroy),
            Self::GetAttributes { .. } => S::new("get_attributes", Application),
            Self::SetAttributes { .. } => S::new("set_attributes", Application)
                .write()
                .guarded(GuardedOp::SetAttributes),
            Self::FindObjects { .. } => S::new("find_objects", Application),
            Self::GenerateKey { .. } => S::new("generate_key", Application)
                .write()
                .guarded(GuardedOp::Generate),
            Self::GenerateKeyPair { .. } => S::new("generate_key_pair", Application)
                .write()
                .guarded(GuardedOp::Generate),
            Self::Sign { .. } => S::new("sign", Application)
                .guarded(GuardedOp::Sign)
                .current(),
            Self::Verify { .. } => S::new("verify", Application),
            Self::Encrypt { .. } => S::new("encrypt", Application),
            Self::Decrypt { .. } => S::new("decrypt", Application).current(),
            Self::WrapKey { .. } => S::new("wrap_key", Application)
                .guarded(GuardedOp::Wrap)
                .current(),
            Self::UnwrapKey { .. } => S::new("unwrap_key", Application).write().current(),
            Self::DeriveKey { .. } => S::new("derive_key", Application).write().current(),
            Self::GenerateRandom { .. } => S::new("generate_random", Application),
            Self::AddOfficer { .. } => S::new("add_officer", Operator)
                .write()
                .guarded(GuardedOp::Govern),
            Self::ListOfficers => S::new("list_officers", Operator),
            Self::SetPolicy { .. } => S::new("set_policy", Operator)
                .write()
                .guarded(GuardedOp::Govern),
            Self::ListPolicies => S::new("list_policies", Operator),
            Self::ListApprovals { .. } => S::new("list_approvals", Operator),
            Self::Approve { .. } => S::new("approve", Officer).write(),
            Self::Reject { .. } => S::new("reject", Officer).write(),
            Self::AuditExport { .. } => S::new("audit_export", Operator),
            Self::AddTerminal { .. } => S::new("add_terminal", Operator)
                .write()
                .guarded(GuardedOp::Govern),
            Self::ListTerminals => S::new("list_terminals", Operator),
            Self::TmkRequest { .. } => S::new("tmk_request", Terminal).write(),
            Self::TmkSmsCode { .. } => S::new("tmk_sms_code", Officer).write(),
            Self::TmkApply { .. } => S::new("tmk_apply", Officer)
                .write()
                .guarded(GuardedOp::TmkInject),
            Self::TmkFetch { .. } => S::new("tmk_fetch", Terminal).write().idempotent(),
            Self::RenewSession { .. } => S::new("renew_session", Application).write().idempotent(),
            Self::Logout { .. } => S::new("logout", Application).write(),
            Self::ListChips => S::new("list_chips", Operator),
            Self::EnrollChips { .. } => S::new("enroll_chips", Operator)
                .write()
                .membership()
                .guarded(GuardedOp::Govern),
            Self::RetireChip { .. } => S::new("retire_chip", Operator)
                .write()
                .guarded(GuardedOp::Govern),
        }
    }

    /// The session a token request runs in (its token and grant), `None` for requests without
    /// one.
    #[must_use]
    pub fn auth(&self) -> Option<&Auth> {
        match self {
            Self::InitPin { auth, .. }
            | Self::SetPin { auth, .. }
            | Self::CreateObject { auth, .. }
            | Self::CopyObject { auth, .. }
            | Self::DestroyObject { auth, .. }
            | Self::GetAttributes { auth, .. }
            | Self::SetAttributes { auth, .. }
            | Self::FindObjects { auth, .. }
            | Self::GenerateKey { auth, .. }
            | Self::GenerateKeyPair { auth, .. }
            | Self::Sign { auth, .. }
            | Self::Verify { auth, .. }
            | Self::Encrypt { auth, .. }
            | Self::Decrypt { auth, .. }
            | Self::WrapKey { auth, .. }
            | Self::UnwrapKey { auth, .. }
            | Self::DeriveKey { auth, .. }
            | Self::RenewSession { auth }
            | Self::Logout { auth } => Some(auth),
            _ => None,
        }
    }

    /// True for requests that change replicated state ([`RequestSpec::write`]).
    #[must_use]
    pub const fn is_write(&self) -> bool {
        self.spec().write
    }

    /// True for requests that are safe to send again when their outcome is unknown
    /// ([`RequestSpec::idempotent`]). The client retries these like reads.
    #[must_use]
    pub const fn is_idempotent(&self) -> bool {
        self.spec().idempotent
    }

    /// A short name for logs and metrics.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        self.spec().name
    }

    /// One request of every kind, with placeholder contents: for tests that a rule holds for
    /// every kind. A new kind belongs here too (the test of [`Request::spec`] counts them).
    #[must_use]
    pub fn one_of_each() -> Vec<Request> {
        let auth = || Auth {
            token: TokenId(1),
            grant: None,
        };
        let officer = || OfficerAuth {
            name: "o".into(),
            pin: Secret::from("pin"),
        };
        let member = || Member {
            id: 1,
            addr: "127.0.0.1:1".into(),
        };
        let id = ObjectId([0; 16]);
        let mech = || Mechanism::new(0);
        let input = || SignInput::Data(Vec::new());
        vec![
            Self::Status,
            Self::Init {
                members: vec![member()],
            },
            Self::AddNode(member()),
            Self::RemoveNode { id: 1 },
            Self::CreateToken {
                label: "t".into(),
                so_pin: Secret::from("so"),
                user_pin: None,
            },
            Self::DeleteToken(TokenId(1)),
            Self::UnlockToken(TokenId(1)),
            Self::ListTokens,
            Self::ListObjects { token: None },
            Self::InitToken {
                token: TokenId(1),
                so_pin: Secret::from("so"),
                label: "t".into(),
            },
            Self::Login {
                token: TokenId(1),
                user: UserType::User,
                pin: Secret::from("pin"),
            },
            Self::InitPin {
                auth: auth(),
                pin: Secret::from("pin"),
            },
            Self::SetPin {
                auth: auth(),
                old_pin: Secret::from("a"),
                new_pin: Secret::from("b"),
            },
            Self::CreateObject {
                auth: auth(),
                template: Vec::new(),
            },
            Self::CopyObject {
                auth: auth(),
                object: id,
                template: Vec::new(),
            },
            Self::DestroyObject {
                auth: auth(),
                object: id,
            },
            Self::GetAttributes {
                auth: auth(),
                object: id,
                types: Vec::new(),
            },
            Self::SetAttributes {
                auth: auth(),
                object: id,
                template: Vec::new(),
            },
            Self::FindObjects {
                auth: auth(),
                template: Vec::new(),
            },
            Self::GenerateKey {
                auth: auth(),
                mechanism: mech(),
                template: Vec::new(),
            },
            Self::GenerateKeyPair {
                auth: auth(),
                mechanism: mech(),
                public_template: Vec::new(),
                private_template: Vec::new(),
            },
            Self::Sign {
                auth: auth(),
                key: id,
                mechanism: mech(),
                input: input(),
            },
            Self::Verify {
                auth: auth(),
                key: id,
                mechanism: mech(),
                input: input(),
                signature: Vec::new(),
            },
            Self::Encrypt {
                auth: auth(),
                key: id,
                mechanism: mech(),
                data: Vec::new(),
            },
            Self::Decrypt {
                auth: auth(),
                key: id,
                mechanism: mech(),
                data: Vec::new(),
            },
            Self::WrapKey {
                auth: auth(),
                wrapping_key: id,
                mechanism: mech(),
                key: id,
            },
            Self::UnwrapKey {
                auth: auth(),
                unwrapping_key: id,
                mechanism: mech(),
                wrapped: Vec::new(),
                template: Vec::new(),
            },
            Self::DeriveKey {
                auth: auth(),
                base_key: id,
                mechanism: mech(),
                template: Vec::new(),
            },
            Self::GenerateRandom { len: 1 },
            Self::AddOfficer {
                name: "o".into(),
                identity: "client/o".into(),
                pin: Secret::from("pin"),
            },
            Self::ListOfficers,
            Self::SetPolicy {
                scope: PolicyScope::Cluster,
                rules: Vec::new(),
            },
            Self::ListPolicies,
            Self::ListApprovals { all: false },
            Self::Approve {
                officer: officer(),
                id: 1,
                params_hash: [0; 32],
            },
            Self::Reject {
                officer: officer(),
                id: 1,
            },
            Self::AuditExport { from: 0, max: 1 },
            Self::AddTerminal {
                id: "t".into(),
                key: TerminalKey::Sm2 { point: Vec::new() },
                admins: Vec::new(),
                identity: None,
            },
            Self::ListTerminals,
            Self::TmkRequest {
                terminal: "t".into(),
            },
            Self::TmkSmsCode {
                officer: officer(),
                terminal: "t".into(),
            },
            Self::TmkApply {
                officer: officer(),
                terminal: "t".into(),
                payload: String::new(),
                sms_code: Secret::from("1"),
            },
            Self::TmkFetch {
                terminal: "t".into(),
                payload: String::new(),
                admin: "a".into(),
            },
            Self::RenewSession { auth: auth() },
            Self::Logout { auth: auth() },
            Self::ListChips,
            Self::EnrollChips { node: 1 },
            Self::RetireChip {
                fingerprint: [0; 32],
            },
        ]
    }
}

/// A token as listed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Id.
    pub id: TokenId,
    /// Label.
    pub label: String,
    /// A user PIN is set.
    pub user_pin_initialized: bool,
    /// Failed user logins since the last success.
    pub user_failures: u32,
    /// The user PIN is locked.
    pub user_locked: bool,
    /// Failed SO logins since the last success.
    pub so_failures: u32,
    /// The SO PIN is locked.
    pub so_locked: bool,
    /// Failed attempts that lock a PIN.
    pub max_failures: u32,
    /// Objects on the token.
    pub objects: u64,
}

/// An object as the operator's `key list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectSummary {
    /// Id.
    pub id: ObjectId,
    /// Token.
    pub token: TokenId,
    /// `CKO_*`.
    pub class: u64,
    /// `CKK_*`, for keys.
    pub key_type: Option<u64>,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, hex.
    pub cka_id_hex: String,
}

/// One chip of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChipLoad {
    /// Model and serial.
    pub name: String,
    /// Jobs queued or running.
    pub queued: u64,
    /// Keys loaded.
    pub loaded: u64,
    /// Slots.
    pub slots: u32,
    /// Jobs done.
    pub served: u64,
    /// Still usable.
    pub healthy: bool,
    /// Holds the cluster's domain key.
    pub has_domain: bool,
}

/// A node's view of itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// This node's id.
    pub id: u64,
    /// This node's address.
    pub addr: String,
    /// The cluster has been initialised (and this node is part of it).
    pub initialized: bool,
    /// Current Raft term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// Log index applied to this node's state.
    pub applied: u64,
    /// Voters and learners.
    pub members: Vec<Member>,
    /// This node's chips.
    pub chips: Vec<ChipLoad>,
    /// Key check value of the cluster's domain key, hex (empty before init).
    pub domain_kcv: String,
    /// How long ago this node last confirmed its state with a quorum, milliseconds (`None`:
    /// never). Past the node's staleness bound it serves no key use, and reports no leader.
    pub confirmed_ms_ago: Option<u64>,
}

/// A response. The `Result` around it is in [`ClientResponse`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Success without a value.
    Done,
    /// Node status.
    Status(NodeStatus),
    /// A token.
    Token(TokenInfo),
    /// Tokens.
    Tokens(Vec<TokenInfo>),
    /// Object summaries.
    Objects(Vec<ObjectSummary>),
    /// Object ids (`FindObjects`).
    Found(Vec<ObjectId>),
    /// A login.
    Session {
        /// The grant to send with later requests.
        grant: SessionGrant,
        /// When it expires, milliseconds since the Unix epoch.
        expires_unix_ms: u64,
    },
    /// One new object.
    Object(ObjectId),
    /// A new key pair.
    KeyPair {
        /// The public key object.
        public: ObjectId,
        /// The private key object.
        private: ObjectId,
    },
    /// Attribute answers, in the order asked.
    Attributes(Vec<AttrValue>),
    /// Bytes: a signature, ciphertext, plaintext, wrapped key or random data.
    Bytes(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Officers.
    Officers(Vec<OfficerInfo>),
    /// Policies, by scope.
    Policies(Vec<(PolicyScope, Vec<Rule>)>),
    /// Approval requests.
    Approvals(Vec<ApprovalInfo>),
    /// One approval request (boxed: it is large, and every response is moved around).
    Approval(Box<ApprovalInfo>),
    /// A page of the audit chain.
    Audit(Box<AuditPage>),
    /// Terminals.
    Terminals(Vec<TerminalInfo>),
    /// A TMK application's QR payload.
    TmkQr(TmkQr),
    /// A delivered TMK.
    Tmk(TmkDelivery),
    /// Chips of the registry.
    Chips(Vec<ChipEntry>),
}

/// What a client sends on a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRequest {
    /// [`crate::PROTOCOL_VERSION`].
    pub version: u16,
    /// The highest applied log index the client has seen; the node answers only once it has
    /// applied at least this much (read-your-writes), or fails with `Stale` after a bound.
    pub min_applied: u64,
    /// The request.
    pub request: Request,
}

/// What a node answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientResponse {
    /// The node's applied log index when it answered (after any write it made).
    pub applied: u64,
    /// The answering node's id.
    pub node: u64,
    /// The outcome.
    pub result: Result<Response, WireError>,
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Every request kind there is; [`Request::spec`]'s match is what makes adding one without
    /// a spec fail to compile, this counts that [`Request::one_of_each`] has them all.
    const KINDS: usize = 48;

    /// The writes only the leader serves: every operator, officer and terminal write but
    /// `Init`, and what a PIN alone authorises. Nothing else (key use, session writes) waits
    /// for the leader.
    #[test]
    fn operator_officer_terminal_writes_and_logins_are_the_leaders() {
        let leader: Vec<&str> = Request::one_of_each()
            .iter()
            .filter(|r| r.spec().leader)
            .map(Request::name)
            .collect();
        assert_eq!(
            leader,
            [
                "add_node",
                "remove_node",
                "create_token",
                "delete_token",
                "unlock_token",
                "init_token",
                "login",
                "add_officer",
                "set_policy",
                "approve",
                "reject",
                "add_terminal",
                "tmk_request",
                "tmk_sms_code",
                "tmk_apply",
                "tmk_fetch",
                "enroll_chips",
                "retire_chip",
            ]
        );
        for r in Request::one_of_each() {
            assert!(!r.spec().leader || r.spec().write, "{}", r.name());
        }
    }

    #[test]
    fn every_request_kind_has_a_spec_with_its_own_name() {
        let all = Request::one_of_each();
        assert_eq!(all.len(), KINDS);
        let names: HashSet<&str> = all.iter().map(Request::name).collect();
        assert_eq!(names.len(), KINDS, "two kinds share a name");
        for r in &all {
            let spec = r.spec();
            assert!(
                !spec.idempotent
                    || !spec.write
                    || matches!(r, Request::TmkFetch { .. } | Request::RenewSession { .. })
            );
            assert!(spec.write || spec.idempotent, "{} is a read", spec.name);
            assert_eq!(
                spec.deadline == Deadline::Membership,
                matches!(
                    r,
                    Request::Init { .. }
                        | Request::AddNode(_)
                        | Request::RemoveNode { .. }
                        | Request::EnrollChips { .. }
                ),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn reads_and_idempotent_writes_are_the_ones_they_were() {
        let reads: HashSet<&str> = Request::one_of_each()
            .iter()
            .filter(|r| !r.is_write())
            .map(Request::name)
            .collect();
        let expected: HashSet<&str> = [
            "status",
            "list_tokens",
            "list_objects",
            "get_attributes",
            "find_objects",
            "sign",
            "verify",
            "encrypt",
            "decrypt",
            "wrap_key",
            "generate_random",
            "list_officers",
            "list_policies",
            "list_approvals",
            "audit_export",
            "list_terminals",
            "list_chips",
        ]
        .into_iter()
        .collect();
        assert_eq!(reads, expected);
        let idempotent_writes: Vec<&str> = Request::one_of_each()
            .iter()
            .filter(|r| r.is_write() && r.is_idempotent())
            .map(Request::name)
            .collect();
        assert_eq!(idempotent_writes, ["tmk_fetch", "renew_session"]);
    }

    #[test]
    fn nodes_never_and_applications_only_below_operator() {
        for r in Request::one_of_each() {
            let sender = r.spec().sender;
            assert!(!sender.permits(&Role::Node(1)), "{}", r.name());
            assert!(sender.permits(&Role::Operator), "{}", r.name());
            assert_eq!(
                sender.permits(&Role::Client),
                sender != Sender::Operator,
                "{}",
                r.name()
            );
        }
    }
}
