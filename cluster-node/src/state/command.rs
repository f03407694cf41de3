//! What is replicated ([`Command`]) and what applying it gives ([`CommandResult`]).

use cloudkey_protocol::msg::{ObjectId, TokenId, UserType};
use cloudkey_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

use super::{ClusterInfo, EnrolledChip, Holder, ObjectRecord, PinHash};
use crate::governance::GovCommand;

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
    /// A failed login, counted after its PIN was checked. → [`CommandResult::Failures`].
    /// Written by nodes before login attempts were counted first ([`Command::LoginAttempt`]);
    /// still applied when the log holds it.
    LoginFailed {
        /// The token.
        token: TokenId,
        /// Who.
        user: UserType,
    },
    /// A successful login after failures: clear the counter. Written by nodes before logins
    /// were recorded ([`Command::LoginOpened`]); still applied when the log holds it.
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
    /// A governance change (`crate::governance`).
    Gov(GovCommand),
    /// A quorum-guarded change: consumes approval request `approval` and applies `inner` in
    /// the same log entry, or neither (exactly once).
    Guarded {
        /// The approved request.
        approval: u64,
        /// Who runs it (must be the requester).
        requester: String,
        /// The exact parameters (must be the approved ones).
        params_hash: [u8; 32],
        /// The proposing node's clock.
        now_ms: u64,
        /// The change.
        inner: Box<Command>,
    },
    /// A login attempt, counted before its PIN is checked. → [`CommandResult::Failures`]
    /// (`locked` when this was the last attempt allowed); refused `PinLocked`, uncounted, once
    /// the count has reached `max_failures`.
    LoginAttempt {
        /// The token.
        token: TokenId,
        /// Who.
        user: UserType,
    },
    /// A PIN checked right: clears its counter and opens a login. → [`CommandResult::Login`];
    /// refused `SessionCount` when the token has too many live logins.
    LoginOpened {
        /// The token.
        token: TokenId,
        /// Who.
        user: UserType,
        /// The certificate identity that logged in.
        holder: Holder,
        /// [`PinHash::digest`] of the PIN hash the PIN was checked against: refused
        /// `PinIncorrect` when the PIN changed since.
        pin: [u8; 32],
        /// A peppered hash of the same PIN, to replace one from before peppering.
        upgrade: Option<PinHash>,
        /// The proposing node's clock.
        now_ms: u64,
    },
    /// Extends a live login. → [`CommandResult::Login`]; refused `UserNotLoggedIn` once it
    /// has ended or for another holder.
    LoginRenewed {
        /// The token.
        token: TokenId,
        /// The login's id.
        login: u64,
        /// The certificate identity asking.
        holder: Holder,
        /// The proposing node's clock.
        now_ms: u64,
    },
    /// Ends a login (`C_Logout`).
    LoginClosed {
        /// The token.
        token: TokenId,
        /// The login's id.
        login: u64,
        /// The proposing node's clock.
        now_ms: u64,
    },
    /// Cluster bootstrap with the founding members' chips: [`Command::Init`] and
    /// [`Command::EnrollChips`] in one entry.
    InitWithChips {
        /// The cluster settings.
        info: ClusterInfo,
        /// The founding members' chips, each checked for possession of its identity key.
        chips: Vec<EnrolledChip>,
    },
    /// Enrol chip identities in the registry (`super::chips`). → [`CommandResult::Enrolled`].
    EnrollChips(Vec<EnrolledChip>),
    /// Remove a chip identity (by fingerprint) from the registry.
    RetireChip([u8; 32]),
}

/// Who may have a command committed, when a node forwards it to the leader
/// (`crate::raft::authority`): a node certificate alone is not a caller's authority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandClass {
    /// Any member may forward it: bookkeeping a node writes on its own (counted login
    /// attempts, audit checkpoints and usage, read barriers) or that is refused once the
    /// cluster is initialised. Forging one can at worst deny service (lock a PIN by counting
    /// attempts, burn an approval), never grant anything.
    Node,
    /// Forwarded only with the caller's live session grant, which the leader checks again
    /// (object and PIN changes, renewals, logouts).
    Session,
    /// Committed only by a leader serving the caller itself, never forwarded: operator,
    /// officer and terminal acts, authenticated by the caller's own TLS connection to the
    /// leader, and what a PIN alone authorises (a login, `C_InitToken`), checked by that
    /// leader.
    Direct,
}

impl Command {
    /// Who may have this command committed through a forward ([`CommandClass`]).
    #[must_use]
    pub fn class(&self) -> CommandClass {
        match self {
            Self::Init(_) | Self::InitWithChips { .. } | Self::LoginAttempt { .. } => {
                CommandClass::Node
            }
            Self::SetPin { .. }
            | Self::PutObjects(_)
            | Self::SetAttributes { .. }
            | Self::DestroyObject(_)
            | Self::LoginRenewed { .. }
            | Self::LoginClosed { .. } => CommandClass::Session,
            // The two counters of before attempts were counted first are never written any
            // more; forwarded, they could clear a counter.
            // What a PIN alone authorises: checked by the leader the caller asked.
            Self::LoginOpened { .. } | Self::InitToken { .. } => CommandClass::Direct,
            Self::CreateToken { .. }
            | Self::DeleteToken(_)
            | Self::Unlock(_)
            | Self::LoginFailed { .. }
            | Self::LoginSucceeded { .. }
            | Self::EnrollChips(_)
            | Self::RetireChip(_) => CommandClass::Direct,
            Self::Gov(g) => g.class(),
            // An approval does not stand for its requester: the change is judged as itself.
            Self::Guarded { inner, .. } => inner.class(),
        }
    }

    /// The command's name, for logs (never its contents).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Init(_) => "init",
            Self::CreateToken { .. } => "create_token",
            Self::DeleteToken(_) => "delete_token",
            Self::InitToken { .. } => "init_token",
            Self::SetPin { .. } => "set_pin",
            Self::LoginFailed { .. } => "login_failed",
            Self::LoginSucceeded { .. } => "login_succeeded",
            Self::Unlock(_) => "unlock",
            Self::PutObjects(_) => "put_objects",
            Self::SetAttributes { .. } => "set_attributes",
            Self::DestroyObject(_) => "destroy_object",
            Self::Gov(g) => g.kind(),
            Self::Guarded { .. } => "guarded",
            Self::LoginAttempt { .. } => "login_attempt",
            Self::LoginOpened { .. } => "login_opened",
            Self::LoginRenewed { .. } => "login_renewed",
            Self::LoginClosed { .. } => "login_closed",
            Self::InitWithChips { .. } => "init_with_chips",
            Self::EnrollChips(_) => "enroll_chips",
            Self::RetireChip(_) => "retire_chip",
        }
    }
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
    /// An approval request's id.
    Approval(u64),
    /// A TMK application's id.
    Application(u64),
    /// Applied (a counter changed and was audited), but the operation failed: code and
    /// detail.
    Failed {
        /// Why, as a PKCS#11 code.
        code: ErrorCode,
        /// Why.
        detail: String,
    },
    /// Not applied (the state did not allow it); the state is unchanged.
    Refused(Refusal),
    /// Chip identities enrolled (those not enrolled before).
    Enrolled(u32),
    /// A login opened or renewed: its id and when it expires.
    Login {
        /// The login's id (the log index that opened it).
        id: u64,
        /// Milliseconds since the Unix epoch.
        expires_ms: u64,
    },
}

/// A refusal: a command (or a request checked against the state) does not fit the state, and
/// nothing changed. The one refusal type of the state and governance; a service turns it into
/// [`NodeError::Refused`](crate::NodeError::Refused) with `?`.
///
/// Encoded (postcard, in forwarded write answers) exactly as the former
/// `Refused { code: u32, detail }`: [`ErrorCode`] serialises as its `u32`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {detail}")]
pub struct Refusal {
    /// The PKCS#11 code the client gets.
    pub code: ErrorCode,
    /// Why (for logs and the client's detail).
    pub detail: String,
}

impl Refusal {
    /// A refusal with `code` and a detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}
