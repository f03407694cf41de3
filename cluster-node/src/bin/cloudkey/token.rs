//! `cloudkey token|key ...`: tokens (PKCS#11 slots) and the objects in them; a token is named
//! by id or label.

use anyhow::bail;
use cloudkey_protocol::client::Client;
use cloudkey_protocol::msg::{Request, Response, Secret, TokenId, TokenInfo};

use crate::args::{KeyCommand, TokenCommand};
use crate::output::{format_objects, format_tokens};
use crate::pins::{self, Need};
use crate::{call, unexpected};

/// Environment variable with the SO PIN for `token create` (see [`crate::pins`]).
pub const SO_PIN_ENV: &str = "CLOUDKEY_SO_PIN";
/// Environment variable with the user PIN for `token create`.
pub const USER_PIN_ENV: &str = "CLOUDKEY_USER_PIN";

/// Runs one `token` command.
///
/// # Errors
/// No SO PIN for `create`; no such token; refusals of the cluster.
pub(crate) async fn token_command(client: &Client, cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { label } => create(client, label).await,
        TokenCommand::List => list(client).await,
        TokenCommand::Delete { token } => delete(client, &token).await,
        TokenCommand::Unlock { token } => unlock(client, &token).await,
    }
}

async fn create(client: &Client, label: String) -> anyhow::Result<()> {
    let so_pin = pins::read("SO PIN", SO_PIN_ENV, Need::Required)?;
    let user_pin = pins::read("user PIN", USER_PIN_ENV, Need::Optional)?;
    let req = Request::CreateToken {
        label,
        so_pin: Secret::from(so_pin.as_deref().map_or("", String::as_str)),
        user_pin: user_pin.as_deref().map(|p| Secret::from(p.as_str())),
    };
    match call(client, req).await? {
        Response::Token(t) => println!("token {} created: {:?}", t.id, t.label),
        r => return Err(unexpected("create token", &r)),
    }
    Ok(())
}

async fn list(client: &Client) -> anyhow::Result<()> {
    match call(client, Request::ListTokens).await? {
        Response::Tokens(tokens) => print!("{}", format_tokens(&tokens)),
        r => return Err(unexpected("list tokens", &r)),
    }
    Ok(())
}

async fn delete(client: &Client, token: &str) -> anyhow::Result<()> {
    let t = resolve_token(client, token).await?;
    call(client, Request::DeleteToken(t.id)).await?;
    println!("token {} ({:?}) deleted", t.id, t.label);
    Ok(())
}

async fn unlock(client: &Client, token: &str) -> anyhow::Result<()> {
    let t = resolve_token(client, token).await?;
    call(client, Request::UnlockToken(t.id)).await?;
    println!("token {} ({:?}) unlocked", t.id, t.label);
    Ok(())
}

/// Runs one `key` command.
///
/// # Errors
/// No such token; refusals of the cluster.
pub(crate) async fn key_command(client: &Client, cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::List { token } => list_objects(client, token.as_deref()).await,
    }
}

async fn list_objects(client: &Client, token: Option<&str>) -> anyhow::Result<()> {
    let token = match token {
        Some(t) => Some(resolve_token(client, t).await?.id),
        None => None,
    };
    match call(client, Request::ListObjects { token }).await? {
        Response::Objects(objects) => print!("{}", format_objects(&objects)),
        r => return Err(unexpected("list objects", &r)),
    }
    Ok(())
}

/// Finds a token by id or label (an id wins only when no token carries the text as label;
/// a text that is one token's id and another's label is refused as ambiguous).
pub(crate) async fn resolve_token(client: &Client, text: &str) -> anyhow::Result<TokenInfo> {
    let tokens = match call(client, Request::ListTokens).await? {
        Response::Tokens(t) => t,
        r => return Err(unexpected("list tokens", &r)),
    };
    pick_token(&tokens, text)
}

fn pick_token(tokens: &[TokenInfo], text: &str) -> anyhow::Result<TokenInfo> {
    let by_label = tokens.iter().find(|t| t.label == text);
    let by_id = text
        .parse::<u64>()
        .ok()
        .and_then(|id| tokens.iter().find(|t| t.id == TokenId(id)));
    match (by_id, by_label) {
        (Some(a), Some(b)) if a.id != b.id => bail!(
            "{text:?} is token {}'s id and token {}'s label; ambiguous",
            a.id,
            b.id
        ),
        (Some(t), _) | (None, Some(t)) => Ok(t.clone()),
        (None, None) => bail!("no token with id or label {text:?}"),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn tokens_resolve_by_id_or_label() {
        let t = |id, label: &str| TokenInfo {
            id: TokenId(id),
            label: label.into(),
            user_pin_initialized: true,
            user_failures: 0,
            user_locked: false,
            so_failures: 0,
            so_locked: false,
            max_failures: 5,
            objects: 0,
        };
        let tokens = [t(1, "dev"), t(2, "1"), t(3, "x")];
        assert_eq!(pick_token(&tokens, "dev").unwrap().id, TokenId(1));
        assert_eq!(pick_token(&tokens, "3").unwrap().id, TokenId(3));
        assert!(pick_token(&tokens, "1").is_err(), "ambiguous");
        assert!(pick_token(&tokens, "nope").is_err());
    }
}
