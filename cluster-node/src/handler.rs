//! A client request in, a response out.
//!
//! [`handle`] checks the envelope (protocol version), waits (bounded) until this node has
//! applied the client's `min_applied` index, checks the caller's role, verifies the session
//! grant, runs the request under its deadline and dispatches it to the service function for its
//! variant. [`to_wire`] is the one place a [`NodeError`] becomes a wire [`ErrorCode`].

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use cloudkey_chip::pool::ChipPool;
use cloudkey_protocol::gov::{GuardedOp, TerminalInfo};
use cloudkey_protocol::msg::{
    Auth, ClientRequest, ClientResponse, Mechanism, ObjectId, Request, Response, SignInput,
};
use cloudkey_protocol::tls::{PeerIdentity, Role};
use cloudkey_protocol::{ErrorCode, WireError, PROTOCOL_VERSION};
use futures::future::BoxFuture;
use tracing::Instrument as _;

use crate::chips::ChipDomain;
use crate::config::{Config, Limits, Security};
use crate::error::{NodeError, Result};
use crate::raft::RaftNode;
use crate::service::login::{self, LocalFailures, PinHasher};
use crate::service::{self, admin, gov, keys, objects, Replicator, Session};
use crate::state::{Command, CommandResult, State};

/// Pause between attempts of an administrative write while the cluster has no leader.
const ADMIN_RETRY: Duration = Duration::from_millis(200);

/// Everything a request may need on this node.
pub struct NodeCtx {
    /// This node's Raft id.
    pub id: u64,
    /// The address this node serves on.
    pub addr: String,
    /// The applied replicated state.
    pub state: Arc<State>,
    /// This node's chips.
    pub pool: Arc<ChipPool>,
    /// Raft.
    pub raft: RaftNode,
    /// What the object and key services work with.
    pub svc: service::Ctx,
    /// The chips' domain and the session MAC key.
    pub domain: Arc<ChipDomain>,
    /// PIN hashing.
    pub pins: PinHasher,
    /// Wrong PINs not yet counted cluster-wide.
    pub local_failures: LocalFailures,
    /// Limits and deadlines.
    pub limits: Limits,
    /// Login settings.
    pub security: Security,
    /// Set while an init runs on this node.
    pub(crate) init_running: AtomicBool,
    /// Governance on this node: TLS key for endorsements, SMS notifier, signature counters.
    pub gov: service::gov::GovNode,
}

impl std::fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCtx")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .field("applied", &self.state.applied())
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
        let svc = service::Ctx {
            state: state.clone(),
            pool: pool.clone(),
            replicator: Arc::new(raft.clone()),
        };
        Ok(Self {
            id: config.id,
            addr,
            state,
            pool,
            raft,
            svc,
            domain,
            pins: PinHasher::new(&config.security)?,
            local_failures: LocalFailures::default(),
            limits: config.limits,
            security: config.security,
            init_running: AtomicBool::new(false),
            gov: service::gov::GovNode {
                notifier: config.notifier.clone().map(service::notify::notifier),
                interval: config.audit_interval,
                ..service::gov::GovNode::default()
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
        match self.svc.replicator.write(cmd).await? {
            (CommandResult::Refused(refusal), _) => Err(refusal.into()),
            other => Ok(other),
        }
    }

    /// [`NodeCtx::write`] for administrative commands that may be repeated safely: retries
    /// while no leader is known or reachable. The caller's deadline bounds it.
    pub(crate) async fn write_admin(&self, cmd: Command) -> Result<(CommandResult, u64)> {
        loop {
            match self.write(cmd.clone()).await {
                Err(NodeError::NotLeader { .. } | NodeError::Peer(_) | NodeError::Timeout(_)) => {
                    tokio::time::sleep(ADMIN_RETRY).await;
                }
                other => return other,
            }
        }
    }
}

/// True for requests only an operator certificate may make.
fn operator_only(req: &Request) -> bool {
    matches!(
        req,
        Request::Init { .. }
            | Request::AddNode(_)
            | Request::RemoveNode { .. }
            | Request::CreateToken { .. }
            | Request::DeleteToken(_)
            | Request::UnlockToken(_)
            | Request::ListObjects { .. }
            | Request::AddOfficer { .. }
            | Request::SetPolicy { .. }
            | Request::AuditExport { .. }
            | Request::AddTerminal { .. }
    )
}

/// True for requests that wait on Raft membership changes (the longer admin deadline).
fn membership_change(req: &Request) -> bool {
    matches!(
        req,
        Request::Init { .. } | Request::AddNode(_) | Request::RemoveNode { .. }
    )
}

/// Handles one request from `peer`. Never fails: errors are in the response.
pub async fn handle(ctx: &NodeCtx, peer: &PeerIdentity, req: ClientRequest) -> ClientResponse {
    // A debug span: at the default level it costs nothing per request. Failures worth a
    // warning name the request and the peer themselves.
    let name = req.request.name();
    let span = tracing::debug_span!("request", node = ctx.id, name, peer = %peer);
    async move {
        let result = match check_and_run(ctx, peer, req).await {
            Ok(r) => Ok(r),
            Err(e) => {
                let w = to_wire(e, ctx);
                match w.code {
                    ErrorCode::GeneralError | ErrorCode::DeviceError => {
                        tracing::warn!(
                            node = ctx.id,
                            request = name,
                            %peer,
                            code = %w.code,
                            detail = %w.detail,
                            "request failed"
                        );
                    }
                    _ => tracing::debug!(code = %w.code, detail = %w.detail, "request refused"),
                }
                Err(w)
            }
        };
        ClientResponse {
            applied: ctx.state.applied(),
            node: ctx.id,
            result,
        }
    }
    .instrument(span)
    .await
}

async fn check_and_run(ctx: &NodeCtx, peer: &PeerIdentity, req: ClientRequest) -> Result<Response> {
    if req.version != PROTOCOL_VERSION {
        return Err(NodeError::refuse(
            ErrorCode::BadRequest,
            format!(
                "protocol version {} is not supported (this node speaks {PROTOCOL_VERSION})",
                req.version
            ),
        ));
    }
    match peer.role {
        Role::Node(_) => {
            return Err(NodeError::refuse(
                ErrorCode::Forbidden,
                "node certificates may not use the client protocol",
            ))
        }
        Role::Client if operator_only(&req.request) => {
            return Err(NodeError::refuse(
                ErrorCode::Forbidden,
                format!("{} needs an operator certificate", req.request.name()),
            ))
        }
        Role::Client | Role::Operator => {}
    }
    if ctx.state.applied() < req.min_applied {
        ctx.state
            .wait_applied(req.min_applied, ctx.limits.read_wait)
            .await
            .map_err(|_| {
                NodeError::refuse(
                    ErrorCode::Stale,
                    format!(
                        "this node has applied index {}, not yet {}",
                        ctx.state.applied(),
                        req.min_applied
                    ),
                )
            })?;
    }
    let deadline = if membership_change(&req.request) {
        ctx.limits.admin_deadline
    } else {
        ctx.limits.request_deadline
    };
    match tokio::time::timeout(deadline, dispatch(ctx, peer, req.request)).await {
        Ok(r) => r,
        Err(_) => Err(NodeError::Timeout(format!(
            "the request did not complete within {deadline:?}"
        ))),
    }
}

async fn session(ctx: &NodeCtx, auth: &Auth) -> Result<Session> {
    login::verify_grant(ctx, auth).await
}

/// Runs a request. Signing, the hot path, runs inline; every other request is boxed, so that the
/// future of a request stays small: the arms that write through Raft make this future several
/// kilobytes, and the future of every request's task is moved (copied) when it is spawned.
async fn dispatch(ctx: &NodeCtx, peer: &PeerIdentity, req: Request) -> Result<Response> {
    match req {
        Request::Sign {
            auth,
            key,
            mechanism,
            input,
        } => sign(ctx, peer, &auth, key, &mechanism, input).await,
        other => Box::pin(dispatch_other(ctx, peer, other)).await,
    }
}

async fn sign(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &Auth,
    key: ObjectId,
    mechanism: &Mechanism,
    input: SignInput,
) -> Result<Response> {
    let s = session(ctx, auth).await?;
    if ctx.state.has_policies() {
        // Use of a designated key: each signature consumes its own approval, before it is made.
        let params = (key, mechanism, &input);
        if let Some(g) = gov::guard(
            ctx,
            peer,
            GuardedOp::Sign,
            Some(s.token),
            &[key],
            None,
            &params,
            || format!("sign with key {key} (mechanism 0x{:x})", mechanism.ckm),
        )
        .await?
        {
            g.consume(ctx).await?;
        }
    }
    let signature = keys::sign(&ctx.svc, s, key, mechanism, input).await?;
    ctx.gov.usage.record(key);
    Ok(Response::Bytes(signature))
}

/// The services' context for a key generation: guarded when a `generate` rule covers the
/// token and the key type (see [`gov::guard`]).
async fn guard_generation(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    s: Session,
    mechanism: &Mechanism,
    params: &impl serde::Serialize,
    what: &str,
) -> Result<service::Ctx> {
    let g = gov::guard(
        ctx,
        peer,
        GuardedOp::Generate,
        Some(s.token),
        &[],
        generated_key_type(mechanism.ckm),
        params,
        || {
            format!(
                "generate {what} (mechanism 0x{:x}) on token {}",
                mechanism.ckm, s.token
            )
        },
    )
    .await?;
    Ok(gov::svc_for(&ctx.svc, g.as_ref()))
}

/// The `CKK_*` a key-generation mechanism makes (by its number alone: a policy names key
/// types, whatever the parameters), from the mechanism tables of [`service::mechanism`].
fn generated_key_type(ckm: u64) -> Option<u64> {
    use service::mechanism::{key_gen, PairGen};
    let none = cloudkey_protocol::msg::MechParam::None;
    key_gen(ckm, &none)
        .map(service::mechanism::KeyAlg::default_ckk)
        .or_else(|_| PairGen::of(ckm, &none).map(PairGen::default_ckk))
        .ok()
}

async fn dispatch_other(ctx: &NodeCtx, peer: &PeerIdentity, req: Request) -> Result<Response> {
    let svc = &ctx.svc;
    Ok(match req {
        Request::Status => Response::Status(admin::status(ctx)),
        Request::Init { members } => {
            admin::init(ctx, &members).await?;
            Response::Done
        }
        Request::AddNode(member) => {
            admin::add_node(ctx, &member).await?;
            Response::Done
        }
        Request::RemoveNode { id } => {
            admin::remove_node(ctx, id).await?;
            Response::Done
        }
        Request::CreateToken {
            label,
            so_pin,
            user_pin,
        } => Response::Token(admin::create_token(ctx, &label, &so_pin, user_pin.as_ref()).await?),
        Request::DeleteToken(id) => {
            admin::delete_token(ctx, id).await?;
            Response::Done
        }
        Request::UnlockToken(id) => {
            admin::unlock_token(ctx, id).await?;
            Response::Done
        }
        Request::ListTokens => Response::Tokens(admin::list_tokens(ctx)),
        Request::ListObjects { token } => Response::Objects(admin::list_objects(ctx, token)?),
        Request::InitToken {
            token,
            so_pin,
            label,
        } => {
            login::init_token(ctx, token, &so_pin, &label).await?;
            Response::Done
        }
        Request::Login { token, user, pin } => {
            let (grant, expires_unix_ms) = login::login(ctx, token, user, &pin).await?;
            Response::Session {
                grant,
                expires_unix_ms,
            }
        }
        Request::InitPin { auth, pin } => {
            login::init_pin(ctx, &auth, &pin).await?;
            Response::Done
        }
        Request::SetPin {
            auth,
            old_pin,
            new_pin,
        } => {
            login::set_pin(ctx, &auth, &old_pin, &new_pin).await?;
            Response::Done
        }
        Request::CreateObject { auth, template } => {
            let s = session(ctx, &auth).await?;
            Response::Object(objects::create_object(svc, s, &template).await?)
        }
        Request::CopyObject {
            auth,
            object,
            template,
        } => {
            let s = session(ctx, &auth).await?;
            Response::Object(objects::copy_object(svc, s, object, &template).await?)
        }
        Request::DestroyObject { auth, object } => {
            let s = session(ctx, &auth).await?;
            let g = gov::guard(
                ctx,
                peer,
                GuardedOp::Destroy,
                Some(s.token),
                &[object],
                None,
                &object,
                || format!("destroy object {object}"),
            )
            .await?;
            objects::destroy_object(&gov::svc_for(svc, g.as_ref()), s, object).await?;
            Response::Done
        }
        Request::GetAttributes {
            auth,
            object,
            types,
        } => {
            let s = session(ctx, &auth).await?;
            Response::Attributes(objects::get_attributes(svc, s, object, &types).await?)
        }
        Request::SetAttributes {
            auth,
            object,
            template,
        } => {
            let s = session(ctx, &auth).await?;
            let params = (object, &template);
            let g = gov::guard(
                ctx,
                peer,
                GuardedOp::SetAttributes,
                Some(s.token),
                &[object],
                None,
                &params,
                || format!("change {} attribute(s) of object {object}", template.len()),
            )
            .await?;
            let svc = gov::svc_for(svc, g.as_ref());
            objects::set_attributes(&svc, s, object, &template).await?;
            Response::Done
        }
        Request::FindObjects { auth, template } => {
            let s = session(ctx, &auth).await?;
            Response::Found(objects::find_objects(svc, s, &template).await?)
        }
        Request::GenerateKey {
            auth,
            mechanism,
            template,
        } => {
            let s = session(ctx, &auth).await?;
            let params = (&mechanism, &template);
            let svc = guard_generation(ctx, peer, s, &mechanism, &params, "a secret key").await?;
            Response::Object(keys::generate_key(&svc, s, &mechanism, &template).await?)
        }
        Request::GenerateKeyPair {
            auth,
            mechanism,
            public_template,
            private_template,
        } => {
            let s = session(ctx, &auth).await?;
            let params = (&mechanism, &public_template, &private_template);
            let svc = guard_generation(ctx, peer, s, &mechanism, &params, "a key pair").await?;
            let (public, private) =
                keys::generate_key_pair(&svc, s, &mechanism, &public_template, &private_template)
                    .await?;
            Response::KeyPair { public, private }
        }
        Request::Sign {
            auth,
            key,
            mechanism,
            input,
        } => sign(ctx, peer, &auth, key, &mechanism, input).await?,
        Request::Verify {
            auth,
            key,
            mechanism,
            input,
            signature,
        } => {
            let s = session(ctx, &auth).await?;
            keys::verify(svc, s, key, &mechanism, input, signature).await?;
            Response::Done
        }
        Request::Encrypt {
            auth,
            key,
            mechanism,
            data,
        } => {
            let s = session(ctx, &auth).await?;
            Response::Bytes(keys::encrypt(svc, s, key, &mechanism, data).await?)
        }
        Request::Decrypt {
            auth,
            key,
            mechanism,
            data,
        } => {
            let s = session(ctx, &auth).await?;
            Response::Bytes(keys::decrypt(svc, s, key, &mechanism, data).await?)
        }
        Request::WrapKey {
            auth,
            wrapping_key,
            mechanism,
            key,
        } => {
            let s = session(ctx, &auth).await?;
            let params = (wrapping_key, &mechanism, key);
            let g = gov::guard(
                ctx,
                peer,
                GuardedOp::Wrap,
                Some(s.token),
                &[key, wrapping_key],
                None,
                &params,
                || format!("export key {key} wrapped under {wrapping_key}"),
            )
            .await?;
            if let Some(g) = g {
                g.consume(ctx).await?;
            }
            Response::Bytes(keys::wrap_key(svc, s, wrapping_key, &mechanism, key).await?)
        }
        Request::UnwrapKey {
            auth,
            unwrapping_key,
            mechanism,
            wrapped,
            template,
        } => {
            let s = session(ctx, &auth).await?;
            Response::Object(
                keys::unwrap_key(svc, s, unwrapping_key, &mechanism, wrapped, &template).await?,
            )
        }
        Request::DeriveKey {
            auth,
            base_key,
            mechanism,
            template,
        } => {
            let s = session(ctx, &auth).await?;
            Response::Object(keys::derive_key(svc, s, base_key, &mechanism, &template).await?)
        }
        Request::GenerateRandom { len } => Response::Bytes(keys::generate_random(svc, len).await?),
        Request::AddOfficer {
            name,
            identity,
            pin,
        } => {
            gov::add_officer(ctx, peer, &name, &identity, &pin).await?;
            Response::Done
        }
        Request::ListOfficers => Response::Officers(gov::list_officers(ctx)),
        Request::SetPolicy { scope, rules } => {
            gov::set_policy(ctx, peer, scope, rules).await?;
            Response::Done
        }
        Request::ListPolicies => Response::Policies(gov::list_policies(ctx)),
        Request::ListApprovals { all } => Response::Approvals(gov::list_approvals(ctx, all)),
        Request::Approve {
            officer,
            id,
            params_hash,
        } => Response::Approval(Box::new(
            gov::approve(ctx, peer, &officer, id, params_hash).await?,
        )),
        Request::Reject { officer, id } => {
            Response::Approval(Box::new(gov::reject(ctx, peer, &officer, id).await?))
        }
        Request::AuditExport { from, max } => {
            Response::Audit(Box::new(gov::audit_export(ctx, from, max)))
        }
        Request::AddTerminal {
            id,
            key,
            admins,
            identity,
        } => {
            gov::add_terminal(
                ctx,
                peer,
                TerminalInfo {
                    id,
                    key,
                    admins,
                    identity,
                    last_injection: None,
                },
            )
            .await?;
            Response::Done
        }
        Request::ListTerminals => Response::Terminals(gov::list_terminals(ctx)),
        Request::TmkRequest { terminal } => {
            Response::TmkQr(gov::tmk_request(ctx, peer, &terminal).await?)
        }
        Request::TmkSmsCode { officer, terminal } => {
            gov::tmk_sms_code(ctx, peer, &officer, &terminal).await?;
            Response::Done
        }
        Request::TmkApply {
            officer,
            terminal,
            payload,
            sms_code,
        } => Response::Approval(Box::new(
            gov::tmk_apply(ctx, peer, &officer, &terminal, &payload, &sms_code).await?,
        )),
        Request::TmkFetch {
            terminal,
            payload,
            admin,
        } => Response::Tmk(gov::tmk_fetch(ctx, peer, &terminal, &payload, &admin).await?),
    })
}

/// The one mapping of node errors to wire errors.
#[must_use]
pub fn to_wire(e: NodeError, ctx: &NodeCtx) -> WireError {
    match e {
        NodeError::Refused(w) => w,
        NodeError::Chip(c) => WireError::new(service::chip_error_code(&c), c.to_string()),
        NodeError::NotLeader { leader } => WireError {
            code: ErrorCode::NotLeader,
            detail: "this node is not the leader and could not forward the request".into(),
            leader_hint: leader.or_else(|| ctx.raft.leader_addr()),
        },
        NodeError::NotInitialized => WireError::new(
            ErrorCode::ClusterNotInitialized,
            "the cluster is not initialised (cloudkey init)",
        ),
        NodeError::Raft(d) | NodeError::Peer(d) | NodeError::Timeout(d) => {
            WireError::new(ErrorCode::Unavailable, d)
        }
        NodeError::Storage(d) => WireError::new(ErrorCode::DeviceError, format!("storage: {d}")),
        NodeError::Config(d) | NodeError::Internal(d) => WireError::new(ErrorCode::GeneralError, d),
    }
}
