//! What requests do. The handler verifies a request's session grant, turns it into a
//! [`Session`], and calls one function of these modules per request variant:
//!
//! * [`objects`]: the PKCS#11 object model (PKCS#11 3.0 base specification, §4): create, copy,
//!   destroy, find, get and set attributes, with the spec's defaults, read-only and one-way
//!   attributes, sensitivity and the visibility rules of public, user and SO sessions.
//! * [`keys`]: key generation, signing, verification, encryption, key wrapping, unwrapping, ECDH
//!   derivation and randomness, all done by chips through the [`ChipPool`]. The node itself only
//!   hashes (for hash-and-sign mechanisms) and parses public keys.
//! * [`mechanism`]: which `CKM_*` numbers the cluster supports and how each maps onto a chip
//!   mechanism; the vendor SM2/SM3/SM4 numbers (from [`cloudkey_protocol::vendor`]).
//!
//! The services write nothing themselves for the requests that change the state (object and key
//! writes, init-token, PINs, token deletion and unlock, governance changes): the function that
//! serves one checks it, does its chip work and returns a [`Plan`] (the one [`Command`] to
//! commit and the answer). What still writes on its own: a login's outcome (part of the PIN
//! check), cluster init and membership, token creation (its answer is the applied result),
//! approvals, rejections, the TMK flow, a guard's proposal and consumption, and the audit task. The handler commits the plan once ([`Plan::commit`]),
//! wrapped in the request's quorum guard when it has one ([`gov::Guard::guarded`]), so the
//! approval is consumed by the same log entry as the change. Writes go through a [`Replicator`]
//! (Raft in the node, an in-memory applier in tests) and are acknowledged only once committed;
//! reads and key use are served from the applied [`State`].
//!
//! # Where security attributes are enforced
//! Every key use is checked twice: first by the node against the object's *replicated record*
//! (class, key type, `CKA_SIGN`/`CKA_DECRYPT`/..., `CKA_EXTRACTABLE`, `CKA_ALLOWED_MECHANISMS`,
//! `CKA_WRAP_WITH_TRUSTED`), then by the chip against the usage flags sealed into the key's blob.
//! A blob's flags cannot change after the chip sealed them, so the node allows only those
//! attribute changes that *narrow* what a key may do (a usage flag true → false,
//! `CKA_EXTRACTABLE` true → false, `CKA_SENSITIVE` false → true): the record is then stricter than
//! the blob, and the node-side check, which always runs first, enforces it. Widening a usage
//! flag is refused with `CKR_ATTRIBUTE_READ_ONLY`, because the chip would refuse the use anyway.

pub mod admin;
pub mod chips;
pub mod forward;
pub mod gov;
pub mod keys;
pub mod login;
pub mod mechanism;
pub mod notify;
pub mod objects;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use cloudkey_chip::pool::ChipPool;
use cloudkey_chip::ChipError;
use cloudkey_protocol::msg::{TokenId, UserType};
use cloudkey_protocol::ErrorCode;
use futures::future::BoxFuture;

use crate::chips::ChipDomain;
use crate::config::{Config, Limits, Security};
use crate::raft::RaftNode;
use crate::state::{Command, CommandResult, State};
use crate::{NodeError, Result};
use login::PinHasher;

/// The write path: commits a [`Command`] to the replicated log and applies it.
///
/// In the node this is Raft (a follower forwards to the leader); in tests an in-memory applier.
pub trait Replicator: Send + Sync + 'static {
    /// Commits `cmd` and returns what applying it gave and its log index. Resolves only once
    /// the command is committed and applied on this node.
    ///
    /// # Errors
    /// [`NodeError::NotLeader`], [`NodeError::Raft`], [`NodeError::Timeout`] when the command
    /// could not be committed.
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<(CommandResult, u64)>>;
}

/// What the services work with.
pub struct Ctx {
    /// The applied replicated state.
    pub state: Arc<State>,
    /// This node's chips.
    pub pool: Arc<ChipPool>,
    /// The write path.
    pub replicator: Arc<dyn Replicator>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("applied", &self.state.applied())
            .field("chips", &self.pool.len())
            .finish_non_exhaustive()
    }
}

/// Pause between attempts of an administrative write while the cluster has no leader.
const ADMIN_RETRY: Duration = Duration::from_millis(200);

/// The one context of a node: [`Ctx`] (state, chips, write path) and what the node-level
/// services (login, administration, governance) need besides. The handler builds nothing of
/// its own; services take this or, when state, chips and writes are all they need, its
/// [`NodeCtx::svc`].
pub struct NodeCtx {
    /// This node's Raft id.
    pub id: u64,
    /// The address this node serves on.
    pub addr: String,
    /// Raft.
    pub raft: RaftNode,
    /// The applied state, the chips and the write path: what the object and key services
    /// work with.
    pub svc: Ctx,
    /// The chips' domain and the session MAC key.
    pub domain: Arc<ChipDomain>,
    /// PIN hashing.
    pub pins: PinHasher,
    /// Limits and deadlines.
    pub limits: Limits,
    /// Login settings.
    pub security: Security,
    /// Set while an init runs on this node.
    pub(crate) init_running: AtomicBool,
    /// Governance on this node: TLS key for endorsements, SMS notifier, signature counters.
    pub gov: gov::GovNode,
}

impl std::fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCtx")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("applied", &self.svc.state.applied())
            .finish_non_exhaustive()
    }
}

/// The Raft write path, as the services see it.
impl Replicator for RaftNode {
    fn write(&self, cmd: Command) -> BoxFuture<'_, Result<(CommandResult, u64)>> {
        Box::pin(RaftNode::write(self, cmd))
    }
}

impl NodeCtx {
    /// The context of a node serving on `addr`.
    ///
    /// # Errors
    /// [`NodeError::Config`] for argon2 parameters the configuration check let through.
    pub fn new(
        config: &Config,
        addr: String,
        state: Arc<State>,
        pool: Arc<ChipPool>,
        raft: RaftNode,
        domain: Arc<ChipDomain>,
    ) -> Result<Self> {
        let svc = Ctx {
            state,
            pool,
            replicator: Arc::new(raft.clone()),
        };
        Ok(Self {
            id: config.id,
            addr,
            raft,
            svc,
            domain,
            pins: PinHasher::new(&config.security)?,
            limits: config.limits,
            security: config.security,
            init_running: AtomicBool::new(false),
            gov: gov::GovNode {
                notifier: config.notifier.clone().map(notify::notifier),
                interval: config.audit_interval,
                ..gov::GovNode::default()
            },
        })
    }

    /// Gives the node's TLS material to governance (its key endorses the audit key).
    #[must_use]
    pub fn with_tls(mut self, tls: Arc<cloudkey_protocol::tls::TlsMaterial>) -> Self {
        self.gov.tls = Some(tls);
        self
    }

    /// Commits `cmd`; a refusal by the state becomes [`NodeError::Refused`]. When this returns,
    /// this node has applied the command.
    ///
    /// # Errors
    /// Raft errors, or the refusal.
    pub(crate) async fn write(&self, cmd: Command) -> Result<(CommandResult, u64)> {
        self.svc.write(cmd).await
    }

    /// [`NodeCtx::write`] for administrative commands that may be repeated safely: retries
    /// while no leader is known or reachable. The caller's deadline bounds it.
    pub(crate) async fn write_admin(&self, cmd: Command) -> Result<(CommandResult, u64)> {
        loop {
            match self.write(cmd.clone()).await {
                Err(
                    NodeError::NotLeader { .. }
                    | NodeError::Peer(_)
                    | NodeError::Call { .. }
                    | NodeError::Timeout(_),
                ) => {
                    tokio::time::sleep(ADMIN_RETRY).await;
                }
                other => return other,
            }
        }
    }
}

/// Who a request acts as, after the handler verified the session grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    /// The token the session is open on.
    pub token: TokenId,
    /// The logged-in user; `None` for a public session (not logged in).
    pub user: Option<UserType>,
}

impl Session {
    /// A public session (not logged in) on `token`.
    #[must_use]
    pub fn public(token: TokenId) -> Self {
        Self { token, user: None }
    }

    /// A session logged in as the normal user.
    #[must_use]
    pub fn user(token: TokenId) -> Self {
        Self {
            token,
            user: Some(UserType::User),
        }
    }

    /// A session logged in as the security officer.
    #[must_use]
    pub fn so(token: TokenId) -> Self {
        Self {
            token,
            user: Some(UserType::So),
        }
    }

    /// True when logged in as the normal user: only then are private objects visible
    /// (PKCS#11 3.0 §4.4: the SO has no access to private objects).
    #[must_use]
    pub fn is_user(&self) -> bool {
        self.user == Some(UserType::User)
    }
}

/// The wire code for a chip error. `handler.rs` uses this for [`NodeError::Chip`], so chip
/// failures map to PKCS#11 codes in one place. Exhaustive, without a catch-all: a chip error
/// added later does not compile until it is mapped here.
#[must_use]
pub fn chip_error_code(e: &ChipError) -> ErrorCode {
    match e {
        ChipError::Busy(_) => ErrorCode::Busy,
        ChipError::MechanismInvalid(_) => ErrorCode::MechanismInvalid,
        ChipError::KeyTypeInconsistent(_) => ErrorCode::KeyTypeInconsistent,
        ChipError::KeySizeRange(_) => ErrorCode::KeySizeRange,
        ChipError::KeyFunctionNotPermitted(_) => ErrorCode::KeyFunctionNotPermitted,
        ChipError::KeyNotExtractable(_) => ErrorCode::KeyUnextractable,
        ChipError::KeyInvalid(_) => ErrorCode::AttributeValueInvalid,
        ChipError::DataLenRange(_) => ErrorCode::DataLenRange,
        ChipError::DataInvalid(_) => ErrorCode::DataInvalid,
        ChipError::EncryptedDataInvalid => ErrorCode::EncryptedDataInvalid,
        ChipError::WrappedKeyInvalid => ErrorCode::WrappedKeyInvalid,
        ChipError::SignatureInvalid => ErrorCode::SignatureInvalid,
        // The chip or its transport failed, or a blob does not fit this cluster's domain: the
        // request was fine, the device was not.
        ChipError::KeyNotLoaded(_)
        | ChipError::SlotsFull(_)
        | ChipError::NoDomain
        | ChipError::DomainAlreadySet
        | ChipError::WrongDomain { .. }
        | ChipError::BlobInvalid(_)
        | ChipError::BlobAuthFailed
        | ChipError::DomainPackageInvalid(_)
        | ChipError::SelfTestFailed(_)
        | ChipError::Timeout { .. }
        | ChipError::DeviceLost(_)
        | ChipError::Protocol(_)
        | ChipError::Internal(_) => ErrorCode::DeviceError,
    }
}

/// What a service asks the handler to commit for a request, and what the request answers once
/// it is committed. A service does its checks and its chip work, then returns a plan; it writes
/// nothing itself. The handler commits the plan's command once, in one log entry, wrapped in a
/// quorum guard when the request runs under an approval ([`gov::Guard::guarded`]).
#[must_use = "a plan does nothing until the handler commits it"]
pub struct Plan<T> {
    /// The one command to commit; `None` when the request changes nothing (a `C_SetAttributeValue`
    /// that sets every attribute to the value it has), so nothing is written.
    pub command: Option<Command>,
    /// The answer, valid once the command is committed.
    pub answer: T,
    /// What to do once the command is committed (the service's log line).
    committed: Option<Box<dyn FnOnce() + Send>>,
}

impl<T: std::fmt::Debug> std::fmt::Debug for Plan<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("command", &self.command)
            .field("answer", &self.answer)
            .finish_non_exhaustive()
    }
}

impl<T> Plan<T> {
    /// Commit `command`, then answer `answer`.
    pub fn write(command: Command, answer: T) -> Self {
        Self {
            command: Some(command),
            answer,
            committed: None,
        }
    }

    /// Nothing to commit: answer `answer` at once.
    pub fn nothing(answer: T) -> Self {
        Self {
            command: None,
            answer,
            committed: None,
        }
    }

    /// Runs `f` (the service's log line, what it forgets locally) once the command is committed,
    /// and not if committing fails.
    pub fn on_commit(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.committed = Some(Box::new(f));
        self
    }

    /// Commits the plan, its command as it is or, under `guard`, as `guard.guarded(command)`:
    /// the approval is consumed by the same log entry as the change. A plan with no command
    /// writes nothing and consumes nothing. This is the one place a service's plan is written.
    ///
    /// # Errors
    /// The replicator's error, or the state's refusal (a guarded command whose approval is gone).
    pub async fn commit(self, ctx: &Ctx, guard: Option<&gov::Guard>) -> Result<T> {
        if let Some(cmd) = self.command {
            let cmd = match guard {
                Some(g) => g.guarded(cmd),
                None => cmd,
            };
            ctx.write(cmd).await?;
            if let Some(log) = self.committed {
                log();
            }
        }
        Ok(self.answer)
    }
}

impl Ctx {
    /// Commits `cmd` and returns what applying it gave and its log index; a refusal by the
    /// state becomes [`NodeError::Refused`] (the one place that conversion is made).
    ///
    /// # Errors
    /// The replicator's error, or the refusal with the code the state gave.
    pub(crate) async fn write(&self, cmd: Command) -> Result<(CommandResult, u64)> {
        match self.replicator.write(cmd).await? {
            (CommandResult::Refused(refusal), _) => Err(refusal.into()),
            other => Ok(other),
        }
    }
}

/// In-process fixtures for the service tests: a chip pool of software chips sharing one domain,
/// a [`State`], and a [`Replicator`] that applies commands directly.
#[cfg(test)]
pub(crate) mod testkit {
    use std::sync::Mutex;

    use cloudkey_chip::pool::PoolConfig;
    use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
    use cloudkey_chip::{Chip, ChipExt as _};

    use super::*;
    use crate::state::{ClusterInfo, PinHash};

    /// Applies every command at once, in order, to a [`State`].
    pub struct MemReplicator {
        state: Arc<State>,
        next: Mutex<u64>,
    }

    impl Replicator for MemReplicator {
        fn write(&self, cmd: Command) -> BoxFuture<'_, Result<(CommandResult, u64)>> {
            let applied = self
                .next
                .lock()
                .map(|mut next| {
                    *next += 1;
                    (self.state.apply(*next, &cmd), *next)
                })
                .map_err(|_| NodeError::Internal("replicator lock poisoned".into()));
            Box::pin(async move { applied })
        }
    }

    /// The write services as the tests call them: each plans, then commits its plan unguarded
    /// as the handler does, and answers what the handler would.
    pub mod committed {
        use cloudkey_protocol::msg::{Attribute, Mechanism, ObjectId};

        use crate::service::{keys, objects, Ctx, Session};
        use crate::Result;

        pub async fn create_object(ctx: &Ctx, s: Session, t: &[Attribute]) -> Result<ObjectId> {
            objects::create_object(ctx, s, t)
                .await?
                .commit(ctx, None)
                .await
        }

        pub async fn copy_object(
            ctx: &Ctx,
            s: Session,
            object: ObjectId,
            t: &[Attribute],
        ) -> Result<ObjectId> {
            objects::copy_object(ctx, s, object, t)
                .await?
                .commit(ctx, None)
                .await
        }

        pub async fn destroy_object(ctx: &Ctx, s: Session, object: ObjectId) -> Result<()> {
            objects::destroy_object(ctx, s, object)
                .await?
                .commit(ctx, None)
                .await
        }

        pub async fn set_attributes(
            ctx: &Ctx,
            s: Session,
            object: ObjectId,
            t: &[Attribute],
        ) -> Result<()> {
            objects::set_attributes(ctx, s, object, t)
                .await?
                .commit(ctx, None)
                .await
        }

        pub async fn generate_key(
            ctx: &Ctx,
            s: Session,
            m: &Mechanism,
            t: &[Attribute],
        ) -> Result<ObjectId> {
            keys::generate_key(ctx, s, m, t)
                .await?
                .commit(ctx, None)
                .await
        }

        pub async fn generate_key_pair(
            ctx: &Ctx,
            s: Session,
            m: &Mechanism,
            public: &[Attribute],
            private: &[Attribute],
        ) -> Result<(ObjectId, ObjectId)> {
            let plan = keys::generate_key_pair(ctx, s, m, public, private).await?;
            plan.commit(ctx, None).await
        }

        pub async fn unwrap_key(
            ctx: &Ctx,
            s: Session,
            unwrapping_key: ObjectId,
            m: &Mechanism,
            wrapped: Vec<u8>,
            t: &[Attribute],
        ) -> Result<ObjectId> {
            let plan = keys::unwrap_key(ctx, s, unwrapping_key, m, wrapped, t).await?;
            plan.commit(ctx, None).await
        }

        pub async fn derive_key(
            ctx: &Ctx,
            s: Session,
            base_key: ObjectId,
            m: &Mechanism,
            t: &[Attribute],
        ) -> Result<ObjectId> {
            keys::derive_key(ctx, s, base_key, m, t)
                .await?
                .commit(ctx, None)
                .await
        }
    }

    /// A context with two software chips, an initialised cluster and two tokens.
    pub struct Fixture {
        pub ctx: Ctx,
        pub t1: TokenId,
        pub t2: TokenId,
    }

    pub fn fixture() -> Fixture {
        let chips: Vec<Arc<SoftChip>> = (0..2)
            .map(|_| Arc::new(SoftChip::new(SoftChipConfig::default()).expect("soft chip")))
            .collect();
        let domain = chips[0].domain_generate().expect("domain");
        let package = chips[0]
            .domain_export(&chips[1].info().expect("info").identity_key)
            .expect("export");
        chips[1].domain_import(&package).expect("import");
        let pool = ChipPool::new(
            chips.iter().map(|c| c.clone() as Arc<dyn Chip>).collect(),
            PoolConfig::default(),
        )
        .expect("pool");
        let state = Arc::new(State::new());
        let replicator = MemReplicator {
            state: state.clone(),
            next: Mutex::new(0),
        };
        let write = |cmd| {
            let mut next = replicator.next.lock().expect("lock");
            *next += 1;
            state.apply(*next, &cmd)
        };
        write(Command::Init(ClusterInfo {
            domain_kcv: domain.kcv,
            session_secret_blob: Vec::new(),
            max_failures: 3,
            session_ttl_ms: 60_000,
        }));
        let mut tokens = Vec::new();
        for label in ["t1", "t2"] {
            match write(Command::CreateToken {
                label: label.into(),
                so_pin: PinHash("so".into()),
                user_pin: Some(PinHash("user".into())),
            }) {
                CommandResult::Token(t) => tokens.push(t),
                other => panic!("create token: {other:?}"),
            }
        }
        Fixture {
            ctx: Ctx {
                state,
                pool: Arc::new(pool),
                replicator: Arc::new(replicator),
            },
            t1: tokens[0],
            t2: tokens[1],
        }
    }
}
