//! A client request in, a response out.
//!
//! [`handle`] checks the envelope (protocol version), waits (bounded) until this node has
//! applied the client's `min_applied` index, checks the caller's role, verifies the session
//! grant, runs the request under its deadline and dispatches it to the service function for its
//! variant. [`to_wire`] is the one place a [`NodeError`] becomes a wire [`ErrorCode`].
//!
//! An object or key service that changes the state returns a [`service::Plan`]; the handler
//! commits it once. A request a quorum policy can guard first asks governance ([`gov::guard`]
//! with a [`gov::Ask`]); under an approval, the plan's command is committed as
//! [`gov::Guard::guarded`], so the approval is consumed by the same log entry as the change,
//! and a request that writes nothing (a signature, a wrap) consumes it first
//! ([`gov::Guard::consume`]).

use cloudkey_protocol::gov::{GuardedOp, TerminalInfo};
use cloudkey_protocol::msg::{
    Attribute, Auth, ClientRequest, ClientResponse, Deadline, Mechanism, ObjectId, Request,
    Response, Sender, SignInput,
};
use cloudkey_protocol::tls::{PeerIdentity, Role};
use cloudkey_protocol::{ErrorCode, WireError, PROTOCOL_VERSION};
use futures::future::Either;
use tracing::Instrument as _;

use crate::error::{NodeError, Result};
use crate::raft::{with_authority, Authority};
use crate::service::login;
/// The node context lives in [`crate::service`]; re-exported here for the server and the bin.
pub use crate::service::NodeCtx;
use crate::service::{self, admin, chips, gov, keys, objects, Session};

/// Admits a request from a certificate of `role` by the request's spec ([`Request::spec`]):
/// what the spec's sender does not permit is refused, node certificates always.
///
/// # Errors
/// `Forbidden`.
fn admit(role: &Role, req: &Request) -> Result<()> {
    let spec = req.spec();
    if spec.sender.permits(role) {
        return Ok(());
    }
    Err(NodeError::refuse(
        ErrorCode::Forbidden,
        match (role, spec.sender) {
            (Role::Node(_), _) => "node certificates may not use the client protocol".to_owned(),
            (_, Sender::Operator) => format!("{} needs an operator certificate", spec.name),
            (_, sender) => format!("{} may not be sent by {sender:?} certificates", spec.name),
        },
    ))
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
            applied: ctx.svc.state.applied(),
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
    admit(&peer.role, &req.request)?;
    let spec = req.request.spec();
    if spec.current {
        current(ctx)?;
    }
    if spec.leader && !ctx.raft.is_leader() {
        // The caller's own connection (and PIN) is the authority of these writes, and a node
        // does not pass that on (`raft::authority`): the client asks the leader.
        return Err(NodeError::NotLeader {
            leader: ctx.raft.leader_addr(),
        });
    }
    if ctx.svc.state.applied() < req.min_applied {
        ctx.svc
            .state
            .wait_applied(req.min_applied, ctx.limits.read_wait)
            .await
            .map_err(|_| {
                NodeError::refuse(
                    ErrorCode::Stale,
                    format!(
                        "this node has applied index {}, not yet {}",
                        ctx.svc.state.applied(),
                        req.min_applied
                    ),
                )
            })?;
    }
    let deadline = match spec.deadline {
        Deadline::Membership => ctx.limits.admin_deadline,
        Deadline::Request => ctx.limits.request_deadline,
    };
    // A session write forwarded to the leader carries the caller's grant and certificate
    // identity, which the leader checks again (`raft::authority`). Reads (signing among
    // them) forward nothing and run as they are.
    let authority = match req.request.auth() {
        Some(auth) if spec.write && auth.grant.is_some() => Some(Authority::Grant {
            auth: auth.clone(),
            identity: peer.uri(),
        }),
        _ => None,
    };
    let run = dispatch(ctx, peer, req.request);
    let run = match authority {
        Some(a) => Either::Left(with_authority(a, run)),
        None => Either::Right(run),
    };
    match tokio::time::timeout(deadline, run).await {
        Ok(r) => r,
        Err(_) => Err(NodeError::Timeout(format!(
            "the request did not complete within {deadline:?}"
        ))),
    }
}

/// Refuses key use on a node that has not confirmed its state with a quorum within the
/// staleness bound (`raft::freshness`): `Stale`, which the client answers by asking another
/// node.
fn current(ctx: &NodeCtx) -> Result<()> {
    // Before init there is nothing to be current about.
    ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    let freshness = ctx.raft.freshness();
    freshness.check().map_err(|age| {
        let since = age.map_or_else(
            || "never confirmed its state with a quorum".to_owned(),
            |a| {
                format!(
                    "last confirmed its state with a quorum {} ms ago",
                    a.as_millis()
                )
            },
        );
        NodeError::refuse(
            ErrorCode::Stale,
            format!(
                "this node {since} (bound {} ms): it may be cut off from the cluster; \
                 another node will answer",
                freshness.bound().as_millis()
            ),
        )
    })
}

async fn session(ctx: &NodeCtx, peer: &PeerIdentity, auth: &Auth) -> Result<Session> {
    login::verify_grant(ctx, peer, auth).await
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
    let s = session(ctx, peer, auth).await?;
    if ctx.svc.state.has_policies() {
        // Use of a designated key: each signature consumes its own approval, before it is made.
        let params = (key, mechanism, &input);
        let ask = gov::Ask::new(GuardedOp::Sign, Some(s.token), &params)
            .on_keys(std::slice::from_ref(&key));
        if let Some(g) = gov::guard(ctx, peer, ask, || {
            format!("sign with key {key} (mechanism 0x{:x})", mechanism.ckm)
        })
        .await?
        {
            g.consume(ctx).await?;
        }
    }
    let signature = keys::sign(&ctx.svc, s, key, mechanism, input).await?;
    ctx.gov.usage.record(key);
    Ok(Response::Bytes(signature))
}

/// The guard of a key generation: `Some` when a `generate` rule covers the token and the key
/// type and the request is approved (see [`gov::guard`]); the generation's plan is committed
/// under it.
async fn guard_generation(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    s: Session,
    mechanism: &Mechanism,
    params: &impl serde::Serialize,
    what: &str,
) -> Result<Option<gov::Guard>> {
    let ask = gov::Ask::new(GuardedOp::Generate, Some(s.token), params)
        .making(generated_key_type(mechanism.ckm));
    gov::guard(ctx, peer, ask, || {
        format!(
            "generate {what} (mechanism 0x{:x}) on token {}",
            mechanism.ckm, s.token
        )
    })
    .await
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

/// The router of every request but `Sign`: each arm calls the one function that serves its
/// request (a token request with the session its grant verifies to).
async fn dispatch_other(ctx: &NodeCtx, peer: &PeerIdentity, req: Request) -> Result<Response> {
    let svc = &ctx.svc;
    Ok(match req {
        Request::Status => Response::Status(admin::status(ctx)),
        Request::Init { members } => done(admin::init(ctx, peer, &members).await)?,
        Request::AddNode(member) => done(admin::add_node(ctx, &member).await)?,
        Request::RemoveNode { id } => done(admin::remove_node(ctx, id).await)?,
        Request::CreateToken {
            label,
            so_pin,
            user_pin,
        } => Response::Token(admin::create_token(ctx, &label, &so_pin, user_pin.as_ref()).await?),
        Request::DeleteToken(id) => done(admin::delete_token(ctx, id)?.commit(svc, None).await)?,
        Request::UnlockToken(id) => done(admin::unlock_token(ctx, id)?.commit(svc, None).await)?,
        Request::ListTokens => Response::Tokens(admin::list_tokens(
            ctx,
            admin::Listing::for_role(&peer.role),
        )),
        Request::ListObjects { token } => Response::Objects(admin::list_objects(ctx, token)?),
        Request::InitToken {
            token,
            so_pin,
            label,
        } => {
            let plan = login::init_token(ctx, token, &so_pin, &label).await?;
            done(plan.commit(svc, None).await)?
        }
        Request::Login { token, user, pin } => {
            let (grant, expires_unix_ms) = login::login(ctx, peer, token, user, &pin).await?;
            Response::Session {
                grant,
                expires_unix_ms,
            }
        }
        Request::RenewSession { auth } => {
            let (grant, expires_unix_ms) = login::renew(ctx, peer, &auth).await?;
            Response::Session {
                grant,
                expires_unix_ms,
            }
        }
        Request::Logout { auth } => done(
            login::logout(ctx, peer, &auth)
                .await?
                .commit(svc, None)
                .await,
        )?,
        Request::InitPin { auth, pin } => done(
            login::init_pin(ctx, peer, &auth, &pin)
                .await?
                .commit(svc, None)
                .await,
        )?,
        Request::SetPin {
            auth,
            old_pin,
            new_pin,
        } => {
            let plan = login::set_pin(ctx, peer, &auth, &old_pin, &new_pin).await?;
            done(plan.commit(svc, None).await)?
        }
        Request::CreateObject { auth, template } => Response::Object(
            objects::create_object(svc, session(ctx, peer, &auth).await?, &template)
                .await?
                .commit(svc, None)
                .await?,
        ),
        Request::CopyObject {
            auth,
            object,
            template,
        } => Response::Object(
            objects::copy_object(svc, session(ctx, peer, &auth).await?, object, &template)
                .await?
                .commit(svc, None)
                .await?,
        ),
        Request::DestroyObject { auth, object } => {
            done(destroy_object(ctx, peer, &auth, object).await)?
        }
        Request::GetAttributes {
            auth,
            object,
            types,
        } => Response::Attributes(
            objects::get_attributes(svc, session(ctx, peer, &auth).await?, object, &types).await?,
        ),
        Request::SetAttributes {
            auth,
            object,
            template,
        } => done(set_attributes(ctx, peer, &auth, object, &template).await)?,
        Request::FindObjects { auth, template } => Response::Found(
            objects::find_objects(svc, session(ctx, peer, &auth).await?, &template).await?,
        ),
        Request::GenerateKey {
            auth,
            mechanism,
            template,
        } => Response::Object(generate_key(ctx, peer, &auth, &mechanism, &template).await?),
        Request::GenerateKeyPair {
            auth,
            mechanism,
            public_template,
            private_template,
        } => {
            let templates = (&public_template[..], &private_template[..]);
            let (public, private) =
                generate_key_pair(ctx, peer, &auth, &mechanism, templates).await?;
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
        } => done(
            keys::verify(
                svc,
                session(ctx, peer, &auth).await?,
                key,
                &mechanism,
                input,
                signature,
            )
            .await,
        )?,
        Request::Encrypt {
            auth,
            key,
            mechanism,
            data,
        } => Response::Bytes(
            keys::encrypt(svc, session(ctx, peer, &auth).await?, key, &mechanism, data).await?,
        ),
        Request::Decrypt {
            auth,
            key,
            mechanism,
            data,
        } => Response::Bytes(
            keys::decrypt(svc, session(ctx, peer, &auth).await?, key, &mechanism, data).await?,
        ),
        Request::WrapKey {
            auth,
            wrapping_key,
            mechanism,
            key,
        } => Response::Bytes(wrap_key(ctx, peer, &auth, wrapping_key, &mechanism, key).await?),
        Request::UnwrapKey {
            auth,
            unwrapping_key,
            mechanism,
            wrapped,
            template,
        } => Response::Object(
            keys::unwrap_key(
                svc,
                session(ctx, peer, &auth).await?,
                unwrapping_key,
                &mechanism,
                wrapped,
                &template,
            )
            .await?
            .commit(svc, None)
            .await?,
        ),
        Request::DeriveKey {
            auth,
            base_key,
            mechanism,
            template,
        } => Response::Object(
            keys::derive_key(
                svc,
                session(ctx, peer, &auth).await?,
                base_key,
                &mechanism,
                &template,
            )
            .await?
            .commit(svc, None)
            .await?,
        ),
        Request::GenerateRandom { len } => Response::Bytes(keys::generate_random(svc, len).await?),
        Request::AddOfficer {
            name,
            identity,
            pin,
        } => {
            let (plan, g) = gov::add_officer(ctx, peer, &name, &identity, &pin).await?;
            done(plan.commit(svc, g.as_ref()).await)?
        }
        Request::ListOfficers => Response::Officers(gov::list_officers(ctx)),
        Request::SetPolicy { scope, rules } => {
            let (plan, g) = gov::set_policy(ctx, peer, scope, rules).await?;
            done(plan.commit(svc, g.as_ref()).await)?
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
            let (plan, g) = gov::add_terminal(
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
            done(plan.commit(svc, g.as_ref()).await)?
        }
        Request::ListTerminals => Response::Terminals(gov::list_terminals(ctx)),
        Request::TmkRequest { terminal } => {
            Response::TmkQr(gov::tmk_request(ctx, peer, &terminal).await?)
        }
        Request::TmkSmsCode { officer, terminal } => {
            done(gov::tmk_sms_code(ctx, peer, &officer, &terminal).await)?
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
        Request::ListChips => Response::Chips(chips::list_chips(ctx)),
        Request::EnrollChips { node } => {
            let (plan, g) = chips::enroll_chips(ctx, peer, node).await?;
            Response::Chips(plan.commit(svc, g.as_ref()).await?)
        }
        Request::RetireChip { fingerprint } => {
            let (plan, g) = chips::retire_chip(ctx, peer, fingerprint).await?;
            done(plan.commit(svc, g.as_ref()).await)?
        }
    })
}

/// The response of a request that answers nothing but success.
fn done(r: Result<()>) -> Result<Response> {
    r.map(|()| Response::Done)
}

/// `C_DestroyObject`, under a `destroy` rule when one covers the object.
async fn destroy_object(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &Auth,
    object: ObjectId,
) -> Result<()> {
    let s = session(ctx, peer, auth).await?;
    let ask = gov::Ask::new(GuardedOp::Destroy, Some(s.token), &object)
        .on_keys(std::slice::from_ref(&object));
    let g = gov::guard(ctx, peer, ask, || format!("destroy object {object}")).await?;
    let plan = objects::destroy_object(&ctx.svc, s, object).await?;
    plan.commit(&ctx.svc, g.as_ref()).await
}

/// `C_SetAttributeValue`, under a `set-attributes` rule when one covers the object.
async fn set_attributes(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &Auth,
    object: ObjectId,
    template: &[Attribute],
) -> Result<()> {
    let s = session(ctx, peer, auth).await?;
    let params = (object, template);
    let ask = gov::Ask::new(GuardedOp::SetAttributes, Some(s.token), &params)
        .on_keys(std::slice::from_ref(&object));
    let g = gov::guard(ctx, peer, ask, || {
        format!("change {} attribute(s) of object {object}", template.len())
    })
    .await?;
    let plan = objects::set_attributes(&ctx.svc, s, object, template).await?;
    plan.commit(&ctx.svc, g.as_ref()).await
}

/// `C_GenerateKey`, under a `generate` rule when one covers the token and key type.
async fn generate_key(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &Auth,
    mechanism: &Mechanism,
    template: &[Attribute],
) -> Result<ObjectId> {
    let s = session(ctx, peer, auth).await?;
    let params = (mechanism, template);
    let g = guard_generation(ctx, peer, s, mechanism, &params, "a secret key").await?;
    let plan = keys::generate_key(&ctx.svc, s, mechanism, template).await?;
    plan.commit(&ctx.svc, g.as_ref()).await
}

/// `C_GenerateKeyPair` (public, private templates), under a `generate` rule when one covers
/// the token and key type.
async fn generate_key_pair(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &Auth,
    mechanism: &Mechanism,
    (public, private): (&[Attribute], &[Attribute]),
) -> Result<(ObjectId, ObjectId)> {
    let s = session(ctx, peer, auth).await?;
    let params = (mechanism, public, private);
    let g = guard_generation(ctx, peer, s, mechanism, &params, "a key pair").await?;
    let plan = keys::generate_key_pair(&ctx.svc, s, mechanism, public, private).await?;
    plan.commit(&ctx.svc, g.as_ref()).await
}

/// `C_WrapKey`: under a `wrap` rule covering either key, the wrap consumes its approval first.
async fn wrap_key(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    auth: &Auth,
    wrapping_key: ObjectId,
    mechanism: &Mechanism,
    key: ObjectId,
) -> Result<Vec<u8>> {
    let s = session(ctx, peer, auth).await?;
    let params = (wrapping_key, mechanism, key);
    let keys = [key, wrapping_key];
    let ask = gov::Ask::new(GuardedOp::Wrap, Some(s.token), &params).on_keys(&keys);
    let g = gov::guard(ctx, peer, ask, || {
        format!("export key {key} wrapped under {wrapping_key}")
    })
    .await?;
    if let Some(g) = g {
        g.consume(ctx).await?;
    }
    keys::wrap_key(&ctx.svc, s, wrapping_key, mechanism, key).await
}

/// The one mapping of node errors to wire errors.
#[must_use]
pub fn to_wire(e: NodeError, ctx: &NodeCtx) -> WireError {
    wire_error(e, || ctx.raft.leader_addr())
}

/// [`to_wire`], with the leader's address asked of `leader` when the error names none.
fn wire_error(e: NodeError, leader: impl FnOnce() -> Option<String>) -> WireError {
    match e {
        NodeError::Refused(r) => WireError::new(r.code, r.detail),
        NodeError::Chip(c) => WireError::new(service::chip_error_code(&c), c.to_string()),
        NodeError::NotLeader { leader: hint } => WireError {
            code: ErrorCode::NotLeader,
            detail: "this node is not the leader and could not forward the request".into(),
            leader_hint: hint.or_else(leader),
        },
        NodeError::NotInitialized => WireError::new(
            ErrorCode::ClusterNotInitialized,
            "the cluster is not initialised (cloudkey init)",
        ),
        NodeError::Raft(d) | NodeError::Peer(d) | NodeError::Timeout(d) => {
            WireError::new(ErrorCode::Unavailable, d)
        }
        e @ (NodeError::Openraft { .. } | NodeError::Call { .. } | NodeError::Client { .. }) => {
            WireError::new(ErrorCode::Unavailable, e.to_string())
        }
        e @ (NodeError::Storage(_)
        | NodeError::Io { .. }
        | NodeError::Db { .. }
        | NodeError::Decode { .. }) => WireError::new(ErrorCode::DeviceError, e.to_string()),
        NodeError::Config(d) | NodeError::Internal(d) => WireError::new(ErrorCode::GeneralError, d),
        e @ (NodeError::Tls(_)
        | NodeError::Setting { .. }
        | NodeError::RaftConfig(_)
        | NodeError::Encode { .. }
        | NodeError::PinHash(_)
        | NodeError::Task { .. }
        | NodeError::Cert(_)
        | NodeError::Random(_)
        | NodeError::ChipStart { .. }) => WireError::new(ErrorCode::GeneralError, e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requests that needed an operator certificate before the request specs.
    const OPERATOR_ONLY: [&str; 18] = [
        "init",
        "add_node",
        "remove_node",
        "create_token",
        "delete_token",
        "unlock_token",
        "list_objects",
        "add_officer",
        "list_officers",
        "set_policy",
        "list_policies",
        "list_approvals",
        "audit_export",
        "add_terminal",
        "list_terminals",
        "list_chips",
        "enroll_chips",
        "retire_chip",
    ];

    fn code(r: Result<()>) -> Option<ErrorCode> {
        r.err().map(|e| match e {
            NodeError::Refused(w) => w.code,
            other => panic!("not a refusal: {other}"),
        })
    }

    /// A storage or Raft failure keeps its cause as its `source` and maps to the code it
    /// mapped to when it was a string.
    #[test]
    fn a_storage_or_raft_error_keeps_its_cause_and_its_code() {
        use std::error::Error as _;

        let db = NodeError::Db {
            what: "raft.redb".into(),
            source: Box::new(redb::Error::DatabaseAlreadyOpen),
        };
        let cause = db.source().expect("a cause").to_string();
        assert_eq!(cause, redb::Error::DatabaseAlreadyOpen.to_string());
        assert_eq!(wire_error(db, || None).code, ErrorCode::DeviceError);

        let bad = postcard::from_bytes::<u64>(&[]).unwrap_err();
        let decode = NodeError::Decode {
            what: "state snapshot".into(),
            source: Box::new(bad.clone()),
        };
        assert_eq!(
            decode.source().expect("a cause").to_string(),
            bad.to_string()
        );
        assert_eq!(wire_error(decode, || None).code, ErrorCode::DeviceError);

        let fatal: openraft::error::Fatal<u64> = openraft::error::Fatal::Stopped;
        let raft = NodeError::Openraft {
            what: "write",
            source: Box::new(fatal.clone()),
        };
        let source = raft.source().expect("a cause");
        assert!(source.is::<openraft::error::Fatal<u64>>());
        assert_eq!(source.to_string(), fatal.to_string());
        assert_eq!(wire_error(raft, || None).code, ErrorCode::Unavailable);

        let config = openraft::Config {
            heartbeat_interval: 500,
            election_timeout_min: 100,
            election_timeout_max: 200,
            ..openraft::Config::default()
        }
        .validate()
        .unwrap_err();
        let timings = NodeError::RaftConfig(Box::new(config));
        assert!(timings.source().is_some());
        assert_eq!(wire_error(timings, || None).code, ErrorCode::GeneralError);
    }

    #[test]
    fn an_application_certificate_is_refused_every_operator_only_request() {
        let all = Request::one_of_each();
        let operator_only: Vec<&str> = all
            .iter()
            .filter(|r| r.spec().sender == Sender::Operator)
            .map(Request::name)
            .collect();
        assert_eq!(operator_only, OPERATOR_ONLY);
        for r in &all {
            let refused = OPERATOR_ONLY.contains(&r.name());
            let expected = refused.then_some(ErrorCode::Forbidden);
            assert_eq!(code(admit(&Role::Client, r)), expected, "{}", r.name());
            assert_eq!(code(admit(&Role::Operator, r)), None, "{}", r.name());
            assert_eq!(
                code(admit(&Role::Node(1), r)),
                Some(ErrorCode::Forbidden),
                "{}",
                r.name()
            );
        }
    }
}
