//! The chip registry as operators see it: enrol a member's chips (each proves possession of
//! its identity key to this node first), list them, retire one. The registry itself is in
//! `crate::state::chips`; the domain export checks it.

use std::time::Duration;

use cloudkey_chip::identity::{fingerprint, Challenge};
use cloudkey_protocol::msg::ChipEntry;
use cloudkey_protocol::tls::PeerIdentity;
use cloudkey_protocol::ErrorCode;

use super::gov::{govern_guard, identity_string, now_ms, Guard};
use super::{NodeCtx, Plan};
use crate::chips::{prove_identities, ChipProof};
use crate::error::{NodeError, Result};
use crate::raft::{PeerRequest, PeerResponse};
use crate::state::{Command, EnrolledChip};

/// How long a member may take to prove its chips.
const PROVE_TIMEOUT: Duration = Duration::from_secs(10);

fn refuse(code: ErrorCode, detail: impl Into<String>) -> NodeError {
    NodeError::refuse(code, detail)
}

/// The chips of node `node` (at `addr`; this node's own when `node` is this node), each
/// checked for possession of its identity key with a fresh challenge, as registry entries
/// enrolled by `by`.
///
/// # Errors
/// `Unavailable` when the node cannot be reached; `DeviceError` when a chip's proof is wrong
/// (then nothing of that node is enrolled); `ActionProhibited` when it reports no chip.
pub async fn verified_chips(
    ctx: &NodeCtx,
    node: u64,
    addr: &str,
    by: &str,
) -> Result<Vec<EnrolledChip>> {
    let challenge = Challenge::new()?;
    let proofs: Vec<ChipProof> = if node == ctx.id {
        prove_identities(&ctx.svc.pool, challenge.point(), challenge.nonce()).await
    } else {
        let req = PeerRequest::ProveChips {
            challenge: challenge.point().to_vec(),
            nonce: challenge.nonce().to_vec(),
        };
        match ctx
            .raft
            .network()
            .call_expecting(addr, node, req, PROVE_TIMEOUT)
            .await?
        {
            PeerResponse::ChipProofs(p) => p,
            PeerResponse::Error(e) => return Err(e.into()),
            other => {
                return Err(NodeError::Peer(format!(
                    "node {node} answered a chip proof request with {}",
                    other.kind()
                )))
            }
        }
    };
    if proofs.is_empty() {
        return Err(refuse(
            ErrorCode::ActionProhibited,
            format!("node {node} reports no chip that can prove its identity"),
        ));
    }
    let now = now_ms();
    let mut chips: Vec<EnrolledChip> = Vec::with_capacity(proofs.len());
    for p in proofs.into_iter().take(crate::state::MAX_ENROLLED_CHIPS) {
        if !challenge.verify(&p.identity, &p.tag) {
            tracing::warn!(node, serial = %p.serial, "chip identity proof failed");
            return Err(refuse(
                ErrorCode::DeviceError,
                format!(
                    "chip {} of node {node} failed its identity proof: it does not hold the \
                     identity key it reports; nothing was enrolled",
                    p.serial
                ),
            ));
        }
        if chips.iter().any(|c| c.identity == p.identity) {
            continue;
        }
        chips.push(EnrolledChip {
            identity: p.identity,
            node,
            model: p.model,
            serial: p.serial,
            by: by.to_owned(),
            enrolled_ms: now,
        });
    }
    Ok(chips)
}

/// A registry entry as the client protocol shows it.
#[must_use]
pub fn entry(c: &EnrolledChip) -> ChipEntry {
    ChipEntry {
        node: c.node,
        fingerprint: fingerprint(&c.identity),
        identity: c.identity.clone(),
        model: c.model.clone(),
        serial: c.serial.clone(),
        by: c.by.clone(),
        enrolled_ms: c.enrolled_ms,
    }
}

/// The registry, by node.
#[must_use]
pub fn list_chips(ctx: &NodeCtx) -> Vec<ChipEntry> {
    let mut chips: Vec<ChipEntry> = ctx.svc.state.enrolled_chips().iter().map(entry).collect();
    chips.sort_by(|a, b| (a.node, &a.serial).cmp(&(b.node, &b.serial)));
    chips
}

/// Enrols member `node`'s chips, under the cluster's `govern` rule when one is set.
///
/// # Errors
/// `ClusterNotInitialized`; `ArgumentsBad` when `node` is not a member; as
/// [`verified_chips`]; the guard's answer under a quorum rule.
pub async fn enroll_chips(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    node: u64,
) -> Result<(Plan<Vec<ChipEntry>>, Option<Guard>)> {
    ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    let addr = ctx
        .raft
        .members()
        .into_iter()
        .find(|(id, _)| *id == node)
        .map(|(_, addr)| addr)
        .ok_or_else(|| {
            refuse(
                ErrorCode::ArgumentsBad,
                format!("node {node} is not a member of the cluster (cloudkey node add first)"),
            )
        })?;
    let chips = verified_chips(ctx, node, &addr, &identity_string(peer)).await?;
    // What officers approve: the node and the exact identities.
    let params: Vec<(u64, &[u8])> = chips.iter().map(|c| (c.node, &c.identity[..])).collect();
    let g = govern_guard(ctx, peer, &params, || {
        format!(
            "enrol {} chip(s) of node {node}: {}",
            chips.len(),
            chips
                .iter()
                .map(|c| hex::encode(&fingerprint(&c.identity)[..8]))
                .collect::<Vec<_>>()
                .join(", ")
        )
    })
    .await?;
    let answer = chips.iter().map(entry).collect();
    Ok((Plan::write(Command::EnrollChips(chips), answer), g))
}

/// Retires a chip identity, under the cluster's `govern` rule when one is set.
///
/// # Errors
/// `ArgumentsBad` when it is not enrolled; the guard's answer under a quorum rule.
pub async fn retire_chip(
    ctx: &NodeCtx,
    peer: &PeerIdentity,
    fp: [u8; 32],
) -> Result<(Plan<()>, Option<Guard>)> {
    ctx.svc.state.cluster().ok_or(NodeError::NotInitialized)?;
    if ctx.svc.state.enrolled_chip(&fp).is_none() {
        return Err(refuse(
            ErrorCode::ArgumentsBad,
            format!("chip {} is not enrolled", hex::encode(&fp[..8])),
        ));
    }
    let g = govern_guard(ctx, peer, &fp, || {
        format!("retire chip {}", hex::encode(&fp[..8]))
    })
    .await?;
    Ok((Plan::write(Command::RetireChip(fp), ()), g))
}
