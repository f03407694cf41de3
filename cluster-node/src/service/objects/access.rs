//! Access rules: which objects a session sees and which it may write.

use std::sync::Arc;

use cloudkey_protocol::msg::{ObjectId, UserType};
use cloudkey_protocol::ErrorCode;

use super::*;
use crate::service::{Ctx, Session};
use crate::state::Object;
use crate::Result;

/// An object of the session's token that the session may see.
///
/// # Errors
/// `invalid` (`CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID`, ...) for an unknown object
/// or one of another token; `CKR_USER_NOT_LOGGED_IN` for a private object without a user login.
pub(crate) fn lookup(
    ctx: &Ctx,
    s: Session,
    id: &ObjectId,
    invalid: ErrorCode,
) -> Result<Arc<Object>> {
    let object = ctx
        .state
        .object(id)
        .filter(|o| o.record.token == s.token)
        .ok_or_else(|| refuse(invalid, format!("no object {id} on token {}", s.token)))?;
    if is_private(&object.record) && !s.is_user() {
        return Err(refuse(
            ErrorCode::UserNotLoggedIn,
            "a private object needs a user login",
        ));
    }
    Ok(object)
}

/// Checks that the session may write objects (`private` ones need the normal user).
///
/// # Errors
/// `CKR_USER_NOT_LOGGED_IN`.
pub(crate) fn require_write(s: Session, private: bool) -> Result<()> {
    match s.user {
        None => Err(refuse(
            ErrorCode::UserNotLoggedIn,
            "creating, changing or destroying objects needs a login",
        )),
        Some(UserType::So) if private => Err(refuse(
            ErrorCode::UserNotLoggedIn,
            "the SO cannot create or change private objects",
        )),
        Some(_) => Ok(()),
    }
}
