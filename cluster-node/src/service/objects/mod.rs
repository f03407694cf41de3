//! The PKCS#11 object model (PKCS#11 3.0 base specification, cited as *Base*; v2.40 numbers
//! the same sections): data objects, X.509 certificates, public, private and secret keys, with
//! their attributes, defaults and the rules for creating, copying, changing, finding and
//! destroying them.
//!
//! # Visibility and writes
//! * An object belongs to one token; a session on another token sees no object of it
//!   (`CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID`).
//! * Private objects (`CKA_PRIVATE` true) are visible only to the logged-in normal user; a
//!   public session or the SO gets `CKR_USER_NOT_LOGGED_IN` (*Base* §4.4: the SO has no access to
//!   private objects) and `FindObjects` leaves them out.
//! * Every write (create, copy, change, destroy, and the key operations that create keys) needs
//!   a login. The SO may write public objects only. PKCS#11 would let a public read/write session
//!   write public objects; a bank HSM does not, so unauthenticated writes are refused with
//!   `CKR_USER_NOT_LOGGED_IN`.
//! * `CKA_TOKEN` false (session objects) is accepted and stored like any object: the node has no
//!   sessions, so the PKCS#11 module destroys the session objects it created when the session
//!   closes.
//!
//! # Secrets
//! Secret and private key material never enters the replicated record: it is given to a chip
//! (`C_CreateObject` with a value imports it) and kept only as the chip's blob. So the node cannot
//! reveal `CKA_VALUE` of a secret key, or the private parts of a private key, even when the key is
//! neither sensitive nor unextractable: those attributes always answer
//! [`AttrValue::Sensitive`] (`CKR_ATTRIBUTE_SENSITIVE`). The way to export such a key is
//! `C_WrapKey`. Data objects and certificates keep their `CKA_VALUE` in the record.
//!
//! # Defaults (*Base* §4.4-§4.10, "token-specific" defaults decided here)
//! `CKA_TOKEN` false; `CKA_PRIVATE` true for private and secret keys, false otherwise;
//! `CKA_MODIFIABLE`, `CKA_COPYABLE`, `CKA_DESTROYABLE` true; `CKA_LABEL`, `CKA_ID` empty;
//! `CKA_SENSITIVE` true and `CKA_EXTRACTABLE` false for private and secret keys. Usage flags
//! default to what the key type can do, except key wrapping and derivation, which must be asked
//! for: `CKA_SIGN`/`CKA_VERIFY` for EC, SM2, RSA and generic secrets, `CKA_ENCRYPT`/`CKA_DECRYPT`
//! for SM2, RSA, AES and SM4; `CKA_WRAP`, `CKA_UNWRAP`, `CKA_DERIVE`, `CKA_SIGN_RECOVER`,
//! `CKA_VERIFY_RECOVER` false. `CKA_ALLOWED_MECHANISMS` empty means every mechanism.
//! `CKA_UNIQUE_ID` is the object id in hex.
//!
//! # Changing attributes (*Base* §4.1.2, footnotes 8, 11, 12 of table 10)
//! `C_SetAttributeValue` may change `CKA_LABEL`, `CKA_ID`, `CKA_SUBJECT`, the dates, the data
//! object attributes and X.509 `CKA_ISSUER`/`CKA_SERIAL_NUMBER`; `CKA_SENSITIVE` and
//! `CKA_WRAP_WITH_TRUSTED` only false → true; `CKA_EXTRACTABLE`, `CKA_COPYABLE`,
//! `CKA_DESTROYABLE` only true → false; `CKA_TRUSTED` to true only by the SO. Usage flags of
//! public keys change freely; those of private and secret keys only true → false, because the
//! chip blob binds the flags the key was sealed with (see [`crate::service`]). `C_CopyObject` may
//! in addition change `CKA_TOKEN`, `CKA_PRIVATE` and `CKA_MODIFIABLE` (true → false); a copy of a
//! chip key shares the original's blob, which the chip cannot re-seal under a new id.
//! `CKA_ALLOWED_MECHANISMS` is fixed at creation. Unsupported: `CKA_WRAP_TEMPLATE` /
//! `CKA_UNWRAP_TEMPLATE` (`CKR_ATTRIBUTE_TYPE_INVALID`) and `CKA_ALWAYS_AUTHENTICATE` true
//! (`CKR_ATTRIBUTE_VALUE_INVALID`: there is no context-specific login).
//!
//! # Files
//! [`attrs`]: the attribute tables (which attributes a class has, their encoding, defaults and
//! change rules) · [`value`]: value encodings, reading a record, [`Template`] · [`access`]:
//! which objects a session sees and may write · [`record`]: building a new object's
//! attributes, changes, the public parts of keys · [`handlers`]: the operations. The DER they
//! need is [`cloudkey_protocol::der`].

mod access;
mod attrs;
mod handlers;
mod record;
mod value;

#[cfg(test)]
pub(crate) mod tests;

// The rest of the crate (keys, mechanism, handler) names these as `objects::…`.
pub(crate) use access::*;
pub(crate) use attrs::*;
pub(crate) use cloudkey_protocol::der;
pub(crate) use handlers::*;
pub use handlers::{
    copy_object, create_object, destroy_object, find_objects, get_attributes, set_attributes,
};
pub(crate) use record::*;
pub(crate) use value::*;

/// The most attributes one template may carry.
pub const MAX_TEMPLATE_ATTRS: usize = 128;
/// The longest attribute value (a certificate, a data object's value).
pub const MAX_ATTR_LEN: usize = 64 * 1024;
