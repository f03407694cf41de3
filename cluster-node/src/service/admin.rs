//! Administration: cluster bootstrap and membership, tokens, listings and node status.
//!
//! The role checks (operator certificate for everything but `Status` and `ListTokens`) are made
//! by [`crate::handler`] before these functions run.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{
    ChipLoad, Member, NodeStatus, ObjectSummary, Secret, TokenId, TokenInfo,
};
use cloudkey_protocol::tls::{PeerIdentity, Role};
use cloudkey_protocol::ErrorCode;

use crate::error::{NodeError, Result};
use crate::service::login::{self, check_label, check_pin_len};
use crate::service::{chips, gov, NodeCtx, Plan};
use crate::state::{ClusterInfo, Command, CommandResult, Object, Token};

/// Most members a cluster is bootstrapped with.
const MAX_MEMBERS: usize = 64;
/// Longest member address.
const MAX_ADDR_LEN: usize = 255;

fn refuse(code: ErrorCode, detail: impl Into<String>) -> NodeError {
    NodeError::refuse(code, detail)
}

fn check_member(m: &Member) -> Result<()> {
    if m.id == 0 {
        return Err(refuse(ErrorCode::ArgumentsBad, "node ids start at 1"));
    }
    if m.addr.is_empty() || m.addr.len() > MAX_ADDR_LEN || m.addr.chars().any(char::is_whitespace) {
        return Err(refuse(
            ErrorCode::ArgumentsBad,
            format!("node {}: the address must be host:port", m.id),
        ));
    }
    Ok(())
}

/// Clears the "init running" flag when the init ends, however it ends.
struct InitGuard<'a>(&'a NodeCtx);

impl Drop for InitGuard<'_> {
    fn drop(&mut self) {
        self.0.init_running.store(false, Ordering::Release);
    }
}

/// `cloudkey init`: bootstraps a cluster with `members` (this node among them).
///
/// The domain key is generated in this node's chip 0 (or the domain the chips already hold from
/// an interrupted init is kept) and copied to the node's other chips; the session secret is
/// generated in the same chip; Raft is initialised with the members; then `Command::Init` is
/// committed. Repeating an init that failed after Raft was initialised finishes it.
///
/// # Errors
/// `ActionProhibited` when the cluster is already initialised; `ArgumentsBad` for bad members;
/// `Busy` while another init runs; chip and Raft errors.
pub async fn init(ctx: &NodeCtx, peer: &PeerIdentity, members: &[Member]) -> Result<()> {
    if ctx.svc.state.cluster().is_some() {
        return Err(refuse(
            ErrorCode::ActionProhibited,
            "the cluster is already initialised",
        ));
    }
    if members.is_empty() || members.len() > MAX_MEMBERS {
        return Err(refuse(
            ErrorCode::ArgumentsBad,
            format!("a cluster starts with 1 to {MAX_MEMBERS} members"),
        ));
    }
    let mut ids = HashSet::new();
    for m in members {
        check_member(m)?;
        if !ids.insert(m.id) {
            return Err(refuse(
                ErrorCode::ArgumentsBad,
                format!("node {} is listed twice", m.id),
            ));
        }
    }
    let Some(me) = members.iter().find(|m| m.id == ctx.id) else {
        return Err(refuse(
            ErrorCode::ArgumentsBad,
            format!("the members must include this node ({})", ctx.id),
        ));
    };
    if me.addr != ctx.addr {
        tracing::warn!(given = %me.addr, bound = %ctx.addr, "this node's member address differs from its bound address");
    }
    if ctx
        .init_running
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(refuse(ErrorCode::Busy, "an init is already running"));
    }
    let _guard = InitGuard(ctx);

    // A node whose Raft already knows a membership either ran an init that was interrupted
    // (its chips then hold the domain it generated, which is reused) or joined a cluster whose
    // state it has not applied yet: then its chips must not get a domain of their own.
    let raft_initialized = ctx.raft.is_initialized();
    let (chip, kcv) = ctx.domain.prepare_init(!raft_initialized).await?;
    let session_secret_blob = ctx.domain.generate_session_secret(chip).await?;
    if raft_initialized {
        tracing::warn!(
            "raft is already initialised (an earlier init was interrupted); finishing it"
        );
    } else {
        let pairs: Vec<(u64, String)> = members.iter().map(|m| (m.id, m.addr.clone())).collect();
        ctx.raft.initialize(&pairs).await?;
    }
    let info = ClusterInfo {
        domain_kcv: kcv,
        session_secret_blob,
        max_failures: ctx.security.max_login_failures,
        session_ttl_ms: u64::try_from(ctx.security.session_ttl.as_millis()).unwrap_or(u64::MAX),
    };
    // The founding members' chips, each proving possession of its identity key: the only
    // chips the domain may be exported to until an operator enrols more. A member that does
    // not answer now is enrolled later (`cloudkey chip enroll --node ID`).
    let by = gov::identity_string(peer);
    let mut chips = Vec::new();
    for m in members {
        match chips::verified_chips(ctx, m.id, &m.addr, &by).await {
            Ok(c) => chips.extend(c),
            Err(e) if m.id == ctx.id => return Err(e),
            Err(e) => tracing::warn!(
                node = m.id,
                error = %e,
                "chips of a founding member not enrolled (cloudkey chip enroll --node {})",
                m.id
            ),
        }
    }
    match ctx
        .write_admin(Command::InitWithChips { info, chips })
        .await
    {
        Ok(_) => {}
        // A retried write whose first attempt was committed: fine if it is our domain.
        Err(NodeError::Refused(_))
            if ctx.svc.state.cluster().is_some_and(|c| c.domain_kcv == kcv) => {}
        Err(e) => return Err(e),
    }
    ctx.domain.kick();
    tracing::info!(kcv = %hex::encode(kcv), members = members.len(), "cluster initialised");
    Ok(())
}

/// Adds a node (as learner, then voter once caught up).
///
/// # Errors
/// `ClusterNotInitialized`; `ArgumentsBad`; Raft errors.
pub async fn add_node(ctx: &NodeCtx, member: &Member) -> Result<()> {
    ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    check_member(member)?;
    ctx.raft.add_node(member.id, member.addr.clone()).await?;
    tracing::info!(node = member.id, addr = %member.addr, "node added");
    Ok(())
}

/// Removes a node from the membership.
///
/// # Errors
/// `ClusterNotInitialized`; Raft errors.
pub async fn remove_node(ctx: &NodeCtx, id: u64) -> Result<()> {
    ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    ctx.raft.remove_node(id).await?;
    tracing::info!(node = id, "node removed");
    Ok(())
}

/// Creates a token with its SO PIN and, optionally, its user PIN.
///
/// # Errors
/// `ClusterNotInitialized`; `ArgumentsBad` for a bad or taken label; `PinLenRange`; Raft
/// errors.
pub async fn create_token(
    ctx: &NodeCtx,
    label: &str,
    so_pin: &Secret,
    user_pin: Option<&Secret>,
) -> Result<TokenInfo> {
    let cluster = ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    check_label(label)?;
    if ctx.svc.state.token_by_label(label).is_some() {
        return Err(refuse(
            ErrorCode::ArgumentsBad,
            "a token with that label exists",
        ));
    }
    check_pin_len(so_pin)?;
    if let Some(p) = user_pin {
        check_pin_len(p)?;
    }
    let so_hash = login::hash_pin(ctx, so_pin).await?;
    let user_hash = match user_pin {
        Some(p) => Some(login::hash_pin(ctx, p).await?),
        None => None,
    };
    let (result, _) = ctx
        .write(Command::CreateToken {
            label: label.to_owned(),
            so_pin: so_hash,
            user_pin: user_hash,
        })
        .await?;
    let CommandResult::Token(id) = result else {
        return Err(NodeError::Internal(format!(
            "unexpected result of CreateToken: {result:?}"
        )));
    };
    tracing::info!(token = %id, label, "token created");
    let token =
        ctx.svc.state.token(id).ok_or_else(|| {
            NodeError::Internal("the new token is not in the applied state".into())
        })?;
    Ok(token_info(ctx, &token, cluster.max_failures, Listing::Full))
}

fn existing(ctx: &NodeCtx, id: TokenId) -> Result<()> {
    ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    if ctx.svc.state.token(id).is_none() {
        return Err(refuse(ErrorCode::TokenNotPresent, "no such token"));
    }
    Ok(())
}

/// Deletes a token and every object on it.
///
/// # Errors
/// `TokenNotPresent`; Raft errors.
pub fn delete_token(ctx: &NodeCtx, id: TokenId) -> Result<Plan<()>> {
    existing(ctx, id)?;
    Ok(
        Plan::write(Command::DeleteToken(id), ()).on_commit(move || {
            tracing::info!(token = %id, "token deleted");
        }),
    )
}

/// Clears a token's failed-login counters (and so its PIN locks).
///
/// # Errors
/// `TokenNotPresent`; Raft errors.
pub fn unlock_token(ctx: &NodeCtx, id: TokenId) -> Result<Plan<()>> {
    existing(ctx, id)?;
    Ok(Plan::write(Command::Unlock(id), ()).on_commit(move || {
        tracing::info!(token = %id, "token unlocked");
    }))
}

/// What a token listing shows: everything to operators; to other certificates what
/// `C_GetTokenInfo` shows any application (label, whether the PINs are set or locked), not the
/// failure counters or how many objects a token holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listing {
    /// An operator's listing.
    Full,
    /// An application's listing.
    Public,
}

impl Listing {
    /// The listing a certificate of `role` gets.
    #[must_use]
    pub fn for_role(role: &Role) -> Self {
        match role {
            Role::Operator => Self::Full,
            Role::Client | Role::Node(_) => Self::Public,
        }
    }
}

fn token_info(ctx: &NodeCtx, t: &Token, max_failures: u32, listing: Listing) -> TokenInfo {
    let full = listing == Listing::Full;
    TokenInfo {
        id: t.id,
        label: t.label.clone(),
        user_pin_initialized: t.user_pin.is_some(),
        user_failures: if full { t.user_failures } else { 0 },
        user_locked: t.user_failures >= max_failures,
        so_failures: if full { t.so_failures } else { 0 },
        so_locked: t.so_failures >= max_failures,
        max_failures,
        objects: if full {
            ctx.svc.state.objects_of(t.id).len() as u64
        } else {
            0
        },
    }
}

/// Every token (none before init), as `listing` shows them.
#[must_use]
pub fn list_tokens(ctx: &NodeCtx, listing: Listing) -> Vec<TokenInfo> {
    let Some(cluster) = ctx.svc.state.cluster() else {
        return Vec::new();
    };
    ctx.svc
        .state
        .tokens()
        .iter()
        .map(|t| token_info(ctx, t, cluster.max_failures, listing))
        .collect()
}

fn attr_ulong(o: &Object, ty: u64) -> Option<u64> {
    let v = o.record.attrs.get(&ty)?;
    let bytes: [u8; 8] = v.as_slice().try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Summaries of the objects of `token`, or of all tokens, in creation order.
///
/// # Errors
/// `TokenNotPresent` for an unknown token.
pub fn list_objects(ctx: &NodeCtx, token: Option<TokenId>) -> Result<Vec<ObjectSummary>> {
    let objects = match token {
        Some(id) => {
            if ctx.svc.state.token(id).is_none() {
                return Err(refuse(ErrorCode::TokenNotPresent, "no such token"));
            }
            ctx.svc.state.objects_of(id)
        }
        None => ctx.svc.state.all_objects(),
    };
    Ok(objects
        .iter()
        .map(|o| ObjectSummary {
            id: o.record.id,
            token: o.record.token,
            class: attr_ulong(o, ck::CKA_CLASS).unwrap_or(u64::MAX),
            key_type: attr_ulong(o, ck::CKA_KEY_TYPE),
            label: o
                .record
                .attrs
                .get(&ck::CKA_LABEL)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .unwrap_or_default(),
            cka_id_hex: o
                .record
                .attrs
                .get(&ck::CKA_ID)
                .map(hex::encode)
                .unwrap_or_default(),
        })
        .collect())
}

/// This node's view of itself and the cluster.
#[must_use]
pub fn status(ctx: &NodeCtx) -> NodeStatus {
    let cluster = ctx.svc.state.cluster();
    let kcv = cluster.as_ref().map(|c| c.domain_kcv);
    let chips = ctx
        .svc
        .pool
        .status()
        .into_iter()
        .map(|s| ChipLoad {
            has_domain: ctx.domain.has_domain(s.index, kcv),
            name: s.name,
            queued: s.queued as u64,
            loaded: s.loaded as u64,
            slots: s.slots,
            served: s.served,
            healthy: s.healthy,
        })
        .collect();
    NodeStatus {
        id: ctx.id,
        addr: ctx.addr.clone(),
        initialized: cluster.is_some(),
        term: ctx.raft.term(),
        // A node cut off from its quorum does not know who leads, whatever it last heard
        // (an old leader keeps believing it leads).
        leader: ctx
            .raft
            .leader()
            .filter(|_| ctx.raft.freshness().check().is_ok()),
        applied: ctx.svc.state.applied(),
        members: ctx
            .raft
            .members()
            .into_iter()
            .map(|(id, addr)| Member { id, addr })
            .collect(),
        chips,
        domain_kcv: kcv.map(hex::encode).unwrap_or_default(),
        confirmed_ms_ago: ctx
            .raft
            .freshness()
            .age()
            .map(|a| u64::try_from(a.as_millis()).unwrap_or(u64::MAX)),
    }
}
