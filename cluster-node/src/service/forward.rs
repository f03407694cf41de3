//! The leader's check of a forwarded write's caller (`crate::raft::authority`): the session
//! grant the forwarding node passed on, with its certificate identity, holds on the leader
//! now, and the command is one that session may have committed.

use cloudkey_protocol::msg::{ObjectId, TokenId, UserType};
use cloudkey_protocol::tls::PeerIdentity;
use cloudkey_protocol::ErrorCode;
use futures::future::BoxFuture;

use super::login;
use super::NodeCtx;
use crate::error::{NodeError, Result};
use crate::raft::{Authority, Authorizer};
use crate::state::Command;

fn forbidden(detail: impl Into<String>) -> NodeError {
    NodeError::refuse(ErrorCode::Forbidden, detail)
}

impl Authorizer for NodeCtx {
    fn authorize<'a>(
        &'a self,
        cmd: &'a Command,
        authority: &'a Authority,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(check(self, cmd, authority))
    }
}

async fn check(ctx: &NodeCtx, cmd: &Command, authority: &Authority) -> Result<()> {
    // An approval does not stand for its requester: the change is judged as itself.
    let cmd = match cmd {
        Command::Guarded { inner, .. } => inner,
        other => other,
    };
    match authority {
        Authority::Node => Err(forbidden(format!(
            "{} needs its caller's session grant",
            cmd.kind()
        ))),
        Authority::Grant { auth, identity } => {
            let peer = PeerIdentity::from_uri(identity)
                .map_err(|e| forbidden(format!("the caller's identity: {e}")))?;
            let (session, login) = login::grant_login(ctx, &peer, auth).await?;
            let user = session
                .user
                .ok_or_else(|| forbidden("a public session writes nothing"))?;
            fits_session(ctx, cmd, auth.token, user, login)
        }
    }
}

/// Whether a session of `user` on `token` (login `login`) may have `cmd` committed.
fn fits_session(
    ctx: &NodeCtx,
    cmd: &Command,
    token: TokenId,
    user: UserType,
    login: u64,
) -> Result<()> {
    let object_of_token = |id: &ObjectId| {
        ctx.svc
            .state
            .object(id)
            .is_some_and(|o| o.record.token == token)
    };
    let fits = match cmd {
        Command::PutObjects(records) => records.iter().all(|r| r.token == token),
        Command::SetAttributes { id, .. } | Command::DestroyObject(id) => object_of_token(id),
        // C_SetPIN sets one's own PIN; C_InitPIN is the SO's, for the user.
        Command::SetPin {
            token: t, user: u, ..
        } => *t == token && (*u == user || (*u == UserType::User && user == UserType::So)),
        Command::LoginRenewed {
            token: t, login: l, ..
        }
        | Command::LoginClosed {
            token: t, login: l, ..
        } => *t == token && *l == login,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{} does not fit the caller's session on token {token}",
            cmd.kind()
        )))
    }
}
