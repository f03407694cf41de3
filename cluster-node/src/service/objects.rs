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

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudkey_chip::wire::Request as ChipRequest;
use cloudkey_chip::{BlobHeader, KeyId, KeyTemplate, KeyUsage, NewKey, PublicKey, SecretBytes};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{AttrValue, Attribute, ObjectId, UserType};
use cloudkey_protocol::ErrorCode;
use zeroize::Zeroizing;

use super::mechanism::{curve_of, vendor, KeyAlg, P256_OID_DER};
use super::{commit, Ctx, Session};
use crate::state::{Command, Object, ObjectRecord};
use crate::{NodeError, Result};

/// The most attributes one template may carry.
pub const MAX_TEMPLATE_ATTRS: usize = 128;
/// The longest attribute value (a certificate, a data object's value).
pub const MAX_ATTR_LEN: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Attribute tables

/// How an attribute's value is encoded on the wire (`cloudkey_protocol::msg`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `CK_BBOOL`: one byte, 0 or 1.
    Bool,
    /// `CK_ULONG`: 8 bytes little-endian.
    Ulong,
    /// Raw bytes.
    Bytes,
    /// An array of `CK_ULONG` (`CKA_ALLOWED_MECHANISMS`).
    UlongArray,
}

/// Who supplies an attribute when an object is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The caller (or its default).
    Free,
    /// Only the token (`CKA_LOCAL`, ...): given in a template, `CKR_ATTRIBUTE_READ_ONLY`.
    TokenSet,
    /// Secret key material: never stored, always sensitive.
    Material,
    /// Determined by the node from the key or other attributes; a template may repeat the value.
    Derived,
}

/// How an attribute may change after creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    /// Never.
    Never,
    /// Freely.
    Free,
    /// Only false → true (footnote 11).
    ToTrue,
    /// Only true → false (footnote 12).
    ToFalse,
    /// A usage flag: freely on public keys, only true → false on keys held by chips.
    Usage,
    /// Only the SO may set it to true (footnote 10).
    SoTrue,
}

/// The default of an attribute the template does not give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DefaultValue {
    /// None: the attribute is required or derived.
    None,
    False,
    True,
    Empty,
    Ulong(u64),
    /// What the key type can do (see the module docs).
    Usage,
    /// `CKA_PRIVATE`: true for private and secret keys.
    Private,
}

#[derive(Clone, Copy, Debug)]
struct Spec {
    ty: u64,
    kind: Kind,
    role: Role,
    /// Rule for `C_SetAttributeValue`.
    set: Change,
    /// Rule for `C_CopyObject`.
    copy: Change,
    default: DefaultValue,
}

const fn a(ty: u64, kind: Kind, role: Role, change: Change, default: DefaultValue) -> Spec {
    Spec {
        ty,
        kind,
        role,
        set: change,
        copy: change,
        default,
    }
}

const fn usage(ty: u64) -> Spec {
    a(
        ty,
        Kind::Bool,
        Role::Free,
        Change::Usage,
        DefaultValue::Usage,
    )
}

const fn bytes(ty: u64, change: Change) -> Spec {
    a(ty, Kind::Bytes, Role::Free, change, DefaultValue::Empty)
}

/// Storage objects, *Base* §4.4.
const STORAGE: &[Spec] = &[
    a(
        ck::CKA_CLASS,
        Kind::Ulong,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
    Spec {
        ty: ck::CKA_TOKEN,
        kind: Kind::Bool,
        role: Role::Free,
        set: Change::Never,
        copy: Change::Free,
        default: DefaultValue::False,
    },
    Spec {
        ty: ck::CKA_PRIVATE,
        kind: Kind::Bool,
        role: Role::Free,
        set: Change::Never,
        copy: Change::Free,
        default: DefaultValue::Private,
    },
    Spec {
        ty: ck::CKA_MODIFIABLE,
        kind: Kind::Bool,
        role: Role::Free,
        set: Change::Never,
        copy: Change::ToFalse,
        default: DefaultValue::True,
    },
    bytes(ck::CKA_LABEL, Change::Free),
    a(
        ck::CKA_COPYABLE,
        Kind::Bool,
        Role::Free,
        Change::ToFalse,
        DefaultValue::True,
    ),
    a(
        ck::CKA_DESTROYABLE,
        Kind::Bool,
        Role::Free,
        Change::ToFalse,
        DefaultValue::True,
    ),
    a(
        ck::CKA_UNIQUE_ID,
        Kind::Bytes,
        Role::TokenSet,
        Change::Never,
        DefaultValue::None,
    ),
];

/// Data objects, *Base* §4.5.
const DATA: &[Spec] = &[
    bytes(ck::CKA_APPLICATION, Change::Free),
    bytes(ck::CKA_OBJECT_ID, Change::Free),
    bytes(ck::CKA_VALUE, Change::Free),
];

/// Certificates, *Base* §4.6.2.
const CERTIFICATE: &[Spec] = &[
    a(
        ck::CKA_CERTIFICATE_TYPE,
        Kind::Ulong,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_TRUSTED,
        Kind::Bool,
        Role::Free,
        Change::SoTrue,
        DefaultValue::False,
    ),
    a(
        ck::CKA_CERTIFICATE_CATEGORY,
        Kind::Ulong,
        Role::Free,
        Change::Never,
        DefaultValue::Ulong(0),
    ),
    a(
        ck::CKA_CHECK_VALUE,
        Kind::Bytes,
        Role::TokenSet,
        Change::Never,
        DefaultValue::None,
    ),
    bytes(ck::CKA_START_DATE, Change::Never),
    bytes(ck::CKA_END_DATE, Change::Never),
    bytes(ck::CKA_PUBLIC_KEY_INFO, Change::Never),
];

/// X.509 public key certificates, *Base* §4.6.3 ("only CKA_ID, CKA_ISSUER and
/// CKA_SERIAL_NUMBER may be modified").
const X509: &[Spec] = &[
    a(
        ck::CKA_SUBJECT,
        Kind::Bytes,
        Role::Free,
        Change::Never,
        DefaultValue::None,
    ),
    bytes(ck::CKA_ID, Change::Free),
    bytes(ck::CKA_ISSUER, Change::Free),
    bytes(ck::CKA_SERIAL_NUMBER, Change::Free),
    a(
        ck::CKA_VALUE,
        Kind::Bytes,
        Role::Free,
        Change::Never,
        DefaultValue::None,
    ),
    bytes(ck::CKA_URL, Change::Never),
    bytes(ck::CKA_HASH_OF_SUBJECT_PUBLIC_KEY, Change::Never),
    bytes(ck::CKA_HASH_OF_ISSUER_PUBLIC_KEY, Change::Never),
    a(
        ck::CKA_JAVA_MIDP_SECURITY_DOMAIN,
        Kind::Ulong,
        Role::Free,
        Change::Never,
        DefaultValue::Ulong(0),
    ),
    a(
        ck::CKA_NAME_HASH_ALGORITHM,
        Kind::Ulong,
        Role::Free,
        Change::Never,
        DefaultValue::Ulong(ck::CKM_SHA_1),
    ),
];

/// Keys, *Base* §4.7.
const KEY: &[Spec] = &[
    a(
        ck::CKA_KEY_TYPE,
        Kind::Ulong,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
    bytes(ck::CKA_ID, Change::Free),
    bytes(ck::CKA_START_DATE, Change::Free),
    bytes(ck::CKA_END_DATE, Change::Free),
    usage(ck::CKA_DERIVE),
    a(
        ck::CKA_LOCAL,
        Kind::Bool,
        Role::TokenSet,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_KEY_GEN_MECHANISM,
        Kind::Ulong,
        Role::TokenSet,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_ALLOWED_MECHANISMS,
        Kind::UlongArray,
        Role::Free,
        Change::Never,
        DefaultValue::Empty,
    ),
];

/// Public keys, *Base* §4.8.
const PUBLIC_KEY: &[Spec] = &[
    bytes(ck::CKA_SUBJECT, Change::Free),
    usage(ck::CKA_ENCRYPT),
    usage(ck::CKA_VERIFY),
    usage(ck::CKA_VERIFY_RECOVER),
    usage(ck::CKA_WRAP),
    a(
        ck::CKA_TRUSTED,
        Kind::Bool,
        Role::Free,
        Change::SoTrue,
        DefaultValue::False,
    ),
    a(
        ck::CKA_PUBLIC_KEY_INFO,
        Kind::Bytes,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
];

// Attributes private and secret keys share (*Base* §4.9, §4.10).
const SENSITIVE: Spec = a(
    ck::CKA_SENSITIVE,
    Kind::Bool,
    Role::Free,
    Change::ToTrue,
    DefaultValue::True,
);
const EXTRACTABLE: Spec = a(
    ck::CKA_EXTRACTABLE,
    Kind::Bool,
    Role::Free,
    Change::ToFalse,
    DefaultValue::False,
);
const ALWAYS_SENSITIVE: Spec = a(
    ck::CKA_ALWAYS_SENSITIVE,
    Kind::Bool,
    Role::TokenSet,
    Change::Never,
    DefaultValue::None,
);
const NEVER_EXTRACTABLE: Spec = a(
    ck::CKA_NEVER_EXTRACTABLE,
    Kind::Bool,
    Role::TokenSet,
    Change::Never,
    DefaultValue::None,
);
const WRAP_WITH_TRUSTED: Spec = a(
    ck::CKA_WRAP_WITH_TRUSTED,
    Kind::Bool,
    Role::Free,
    Change::ToTrue,
    DefaultValue::False,
);

/// Private keys, *Base* §4.9.
const PRIVATE_KEY: &[Spec] = &[
    bytes(ck::CKA_SUBJECT, Change::Free),
    SENSITIVE,
    usage(ck::CKA_DECRYPT),
    usage(ck::CKA_SIGN),
    usage(ck::CKA_SIGN_RECOVER),
    usage(ck::CKA_UNWRAP),
    EXTRACTABLE,
    ALWAYS_SENSITIVE,
    NEVER_EXTRACTABLE,
    WRAP_WITH_TRUSTED,
    a(
        ck::CKA_ALWAYS_AUTHENTICATE,
        Kind::Bool,
        Role::Free,
        Change::Never,
        DefaultValue::False,
    ),
    a(
        ck::CKA_PUBLIC_KEY_INFO,
        Kind::Bytes,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
];

/// Secret keys, *Base* §4.10, with `CKA_VALUE`/`CKA_VALUE_LEN` of the AES, SM4 and generic
/// secret key types.
const SECRET_KEY: &[Spec] = &[
    SENSITIVE,
    usage(ck::CKA_ENCRYPT),
    usage(ck::CKA_DECRYPT),
    usage(ck::CKA_SIGN),
    usage(ck::CKA_VERIFY),
    usage(ck::CKA_WRAP),
    usage(ck::CKA_UNWRAP),
    EXTRACTABLE,
    ALWAYS_SENSITIVE,
    NEVER_EXTRACTABLE,
    WRAP_WITH_TRUSTED,
    a(
        ck::CKA_TRUSTED,
        Kind::Bool,
        Role::Free,
        Change::SoTrue,
        DefaultValue::False,
    ),
    a(
        ck::CKA_VALUE,
        Kind::Bytes,
        Role::Material,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_VALUE_LEN,
        Kind::Ulong,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
];

/// EC and SM2 keys (*Mech* §2.3.3, §2.3.4). `CKA_EC_POINT` is on private keys too, as most
/// tokens do, so applications can find a key pair's halves by point.
const EC_KEY: &[Spec] = &[
    a(
        ck::CKA_EC_PARAMS,
        Kind::Bytes,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_EC_POINT,
        Kind::Bytes,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
];

const EC_PRIVATE: &[Spec] = &[a(
    ck::CKA_VALUE,
    Kind::Bytes,
    Role::Material,
    Change::Never,
    DefaultValue::None,
)];

/// RSA keys (*Mech* §2.1.2, §2.1.3); `CKA_MODULUS_BITS` on private keys too.
const RSA_KEY: &[Spec] = &[
    a(
        ck::CKA_MODULUS,
        Kind::Bytes,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_MODULUS_BITS,
        Kind::Ulong,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_PUBLIC_EXPONENT,
        Kind::Bytes,
        Role::Derived,
        Change::Never,
        DefaultValue::None,
    ),
];

const RSA_PRIVATE: &[Spec] = &[
    a(
        ck::CKA_PRIVATE_EXPONENT,
        Kind::Bytes,
        Role::Material,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_PRIME_1,
        Kind::Bytes,
        Role::Material,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_PRIME_2,
        Kind::Bytes,
        Role::Material,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_EXPONENT_1,
        Kind::Bytes,
        Role::Material,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_EXPONENT_2,
        Kind::Bytes,
        Role::Material,
        Change::Never,
        DefaultValue::None,
    ),
    a(
        ck::CKA_COEFFICIENT,
        Kind::Bytes,
        Role::Material,
        Change::Never,
        DefaultValue::None,
    ),
];

/// The attribute tables of an object of `class` (and, for keys, `alg`).
fn tables(class: u64, alg: Option<KeyAlg>) -> [&'static [Spec]; 5] {
    let (ec, rsa) = (alg.is_some_and(KeyAlg::is_ec), alg == Some(KeyAlg::Rsa));
    match class {
        ck::CKO_DATA => [STORAGE, DATA, &[], &[], &[]],
        ck::CKO_CERTIFICATE => [STORAGE, CERTIFICATE, X509, &[], &[]],
        ck::CKO_PUBLIC_KEY if ec => [STORAGE, KEY, PUBLIC_KEY, EC_KEY, &[]],
        ck::CKO_PUBLIC_KEY if rsa => [STORAGE, KEY, PUBLIC_KEY, RSA_KEY, &[]],
        ck::CKO_PRIVATE_KEY if ec => [STORAGE, KEY, PRIVATE_KEY, EC_KEY, EC_PRIVATE],
        ck::CKO_PRIVATE_KEY if rsa => [STORAGE, KEY, PRIVATE_KEY, RSA_KEY, RSA_PRIVATE],
        ck::CKO_SECRET_KEY if alg.is_some_and(|a| !a.is_pair()) => {
            [STORAGE, KEY, SECRET_KEY, &[], &[]]
        }
        _ => [STORAGE, &[], &[], &[], &[]],
    }
}

fn spec(class: u64, alg: Option<KeyAlg>, ty: u64) -> Option<&'static Spec> {
    tables(class, alg)
        .into_iter()
        .flat_map(|t| t.iter())
        .find(|s| s.ty == ty)
}

/// The default of a usage flag: what the key type can do, except wrapping, unwrapping,
/// derivation and the recover variants.
fn usage_default(ty: u64, alg: Option<KeyAlg>) -> bool {
    let Some(alg) = alg else { return false };
    match ty {
        ck::CKA_SIGN | ck::CKA_VERIFY => {
            matches!(
                alg,
                KeyAlg::P256 | KeyAlg::Sm2 | KeyAlg::Rsa | KeyAlg::Generic
            )
        }
        ck::CKA_ENCRYPT | ck::CKA_DECRYPT => {
            matches!(alg, KeyAlg::Sm2 | KeyAlg::Rsa | KeyAlg::Aes | KeyAlg::Sm4)
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Values

pub(crate) fn ulong_value(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

pub(crate) fn bool_value(v: bool) -> Vec<u8> {
    vec![u8::from(v)]
}

fn refuse(code: ErrorCode, detail: impl Into<String>) -> NodeError {
    NodeError::refuse(code, detail)
}

fn invalid_value(ty: u64, why: impl std::fmt::Display) -> NodeError {
    refuse(
        ErrorCode::AttributeValueInvalid,
        format!("attribute 0x{ty:x}: {why}"),
    )
}

fn check_kind(kind: Kind, ty: u64, v: &[u8]) -> Result<()> {
    let ok = match kind {
        Kind::Bool => matches!(v, [0] | [1]),
        Kind::Ulong => v.len() == 8,
        Kind::UlongArray => v.len() % 8 == 0,
        Kind::Bytes => true,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid_value(
            ty,
            match kind {
                Kind::Bool => "a CK_BBOOL is one byte, 0 or 1",
                Kind::Ulong => "a CK_ULONG is 8 bytes",
                Kind::UlongArray => "a CK_ULONG array is a multiple of 8 bytes",
                Kind::Bytes => "",
            },
        ))
    }
}

fn decode_ulong(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_le_bytes)
}

/// A `CK_BBOOL` attribute of a record.
pub(crate) fn record_bool(record: &ObjectRecord, ty: u64) -> Option<bool> {
    match record.attrs.get(&ty).map(Vec::as_slice) {
        Some([0]) => Some(false),
        Some([1]) => Some(true),
        _ => None,
    }
}

/// A `CK_ULONG` attribute of a record.
pub(crate) fn record_ulong(record: &ObjectRecord, ty: u64) -> Option<u64> {
    record.attrs.get(&ty).and_then(|v| decode_ulong(v))
}

/// A record's class.
pub(crate) fn class_of(record: &ObjectRecord) -> Option<u64> {
    record_ulong(record, ck::CKA_CLASS)
}

/// The kind of key a record is, from `CKA_KEY_TYPE` (and `CKA_EC_PARAMS` for `CKK_EC`).
pub(crate) fn alg_of(record: &ObjectRecord) -> Option<KeyAlg> {
    match record_ulong(record, ck::CKA_KEY_TYPE)? {
        ck::CKK_EC => curve_of(record.attrs.get(&ck::CKA_EC_PARAMS)?),
        vendor::CKK_SM2 => Some(KeyAlg::Sm2),
        ck::CKK_RSA => Some(KeyAlg::Rsa),
        ck::CKK_AES => Some(KeyAlg::Aes),
        vendor::CKK_SM4 => Some(KeyAlg::Sm4),
        ck::CKK_GENERIC_SECRET => Some(KeyAlg::Generic),
        _ => None,
    }
}

/// True unless the record says `CKA_PRIVATE` false (a record without it is treated as private).
pub(crate) fn is_private(record: &ObjectRecord) -> bool {
    record_bool(record, ck::CKA_PRIVATE) != Some(false)
}

/// A fresh random object id.
///
/// # Errors
/// [`NodeError::Internal`] when the random generator fails.
pub(crate) fn new_object_id() -> Result<ObjectId> {
    let mut id = [0u8; 16];
    aws_lc_rs::rand::fill(&mut id)
        .map_err(|_| NodeError::Internal("the random generator failed".into()))?;
    Ok(ObjectId(id))
}

/// A template: attribute types to values, borrowed from the request (secret values are not
/// copied).
pub(crate) struct Template<'a> {
    attrs: BTreeMap<u64, &'a [u8]>,
}

impl<'a> Template<'a> {
    /// Indexes a template.
    ///
    /// # Errors
    /// `CKR_TEMPLATE_INCONSISTENT` for an attribute given twice with different values,
    /// `CKR_ARGUMENTS_BAD` above [`MAX_TEMPLATE_ATTRS`], `CKR_ATTRIBUTE_VALUE_INVALID` for a value
    /// longer than [`MAX_ATTR_LEN`].
    pub(crate) fn parse(template: &'a [Attribute]) -> Result<Self> {
        if template.len() > MAX_TEMPLATE_ATTRS {
            return Err(refuse(
                ErrorCode::ArgumentsBad,
                format!("at most {MAX_TEMPLATE_ATTRS} attributes per template"),
            ));
        }
        let mut attrs = BTreeMap::new();
        for at in template {
            if at.value.len() > MAX_ATTR_LEN {
                return Err(invalid_value(
                    at.ty,
                    format!("longer than {MAX_ATTR_LEN} bytes"),
                ));
            }
            if let Some(prev) = attrs.insert(at.ty, at.value.as_slice()) {
                if prev != at.value.as_slice() {
                    return Err(refuse(
                        ErrorCode::TemplateInconsistent,
                        format!("attribute 0x{:x} given twice with different values", at.ty),
                    ));
                }
            }
        }
        Ok(Self { attrs })
    }

    pub(crate) fn get(&self, ty: u64) -> Option<&'a [u8]> {
        self.attrs.get(&ty).copied()
    }

    pub(crate) fn has(&self, ty: u64) -> bool {
        self.attrs.contains_key(&ty)
    }

    pub(crate) fn bool(&self, ty: u64) -> Result<Option<bool>> {
        self.get(ty)
            .map(|v| {
                check_kind(Kind::Bool, ty, v)?;
                Ok(v == [1])
            })
            .transpose()
    }

    pub(crate) fn ulong(&self, ty: u64) -> Result<Option<u64>> {
        self.get(ty)
            .map(|v| decode_ulong(v).ok_or_else(|| invalid_value(ty, "a CK_ULONG is 8 bytes")))
            .transpose()
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &'a [u8])> + '_ {
        self.attrs.iter().map(|(t, v)| (*t, *v))
    }
}

// ---------------------------------------------------------------------------------------------
// Access rules

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

// ---------------------------------------------------------------------------------------------
// Building records

/// Builds the attributes of a new object of `class` from a template: checks every template
/// attribute against the class's table, keeps the caller's values, adds `computed` (the values
/// the node determines; a template may repeat them exactly) and fills defaults. Attributes in
/// `skip` were handled by the caller.
///
/// # Errors
/// `CKR_ATTRIBUTE_TYPE_INVALID` for an attribute the class does not have,
/// `CKR_ATTRIBUTE_VALUE_INVALID` for a badly encoded value, `CKR_ATTRIBUTE_READ_ONLY` for one only
/// the token sets (`CKA_LOCAL`, ...) or `CKA_TRUSTED` true outside the SO,
/// `CKR_TEMPLATE_INCONSISTENT` for key material outside `C_CreateObject` or a value that
/// contradicts a computed one.
pub(crate) fn build_attrs(
    s: Session,
    id: ObjectId,
    class: u64,
    alg: Option<KeyAlg>,
    tmpl: &Template<'_>,
    skip: &[u64],
    computed: Vec<(u64, Vec<u8>)>,
) -> Result<BTreeMap<u64, Vec<u8>>> {
    let computed: BTreeMap<u64, Vec<u8>> = computed.into_iter().collect();
    let mut attrs = BTreeMap::new();
    for (ty, v) in tmpl.iter() {
        if skip.contains(&ty) {
            continue;
        }
        let sp = spec(class, alg, ty).ok_or_else(|| {
            refuse(
                ErrorCode::AttributeTypeInvalid,
                format!("attribute 0x{ty:x} is not one of an object of class 0x{class:x}"),
            )
        })?;
        check_kind(sp.kind, ty, v)?;
        match sp.role {
            Role::TokenSet => {
                return Err(refuse(
                    ErrorCode::AttributeReadOnly,
                    format!("attribute 0x{ty:x} is set by the token"),
                ))
            }
            Role::Material => {
                return Err(refuse(
                    ErrorCode::TemplateInconsistent,
                    format!(
                        "attribute 0x{ty:x} is key material; only C_CreateObject takes a key \
                         by value"
                    ),
                ))
            }
            Role::Derived => match computed.get(&ty) {
                Some(c) if c.as_slice() == v => {}
                Some(_) => {
                    return Err(refuse(
                        ErrorCode::TemplateInconsistent,
                        format!("attribute 0x{ty:x} contradicts the key or the other attributes"),
                    ))
                }
                None => {
                    return Err(refuse(
                        ErrorCode::AttributeReadOnly,
                        format!("attribute 0x{ty:x} cannot be given here"),
                    ))
                }
            },
            Role::Free => {
                check_new_value(s, sp, v)?;
                attrs.insert(ty, v.to_vec());
            }
        }
    }
    attrs.extend(computed);
    for sp in tables(class, alg).into_iter().flat_map(|t| t.iter()) {
        if attrs.contains_key(&sp.ty) {
            continue;
        }
        let value = match sp.default {
            DefaultValue::None => continue,
            DefaultValue::False => bool_value(false),
            DefaultValue::True => bool_value(true),
            DefaultValue::Empty => Vec::new(),
            DefaultValue::Ulong(v) => ulong_value(v),
            DefaultValue::Usage => bool_value(usage_default(sp.ty, alg)),
            DefaultValue::Private => {
                bool_value(matches!(class, ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY))
            }
        };
        attrs.insert(sp.ty, value);
    }
    attrs.insert(ck::CKA_UNIQUE_ID, id.to_string().into_bytes());
    Ok(attrs)
}

/// Rules for a caller-given value of a new object (creation, or a change in a copy).
fn check_new_value(s: Session, sp: &Spec, v: &[u8]) -> Result<()> {
    if (sp.set == Change::SoTrue) && v == [1] && s.user != Some(UserType::So) {
        return Err(refuse(
            ErrorCode::AttributeReadOnly,
            "only the SO can set CKA_TRUSTED",
        ));
    }
    if sp.ty == ck::CKA_ALWAYS_AUTHENTICATE && v == [1] {
        return Err(invalid_value(
            sp.ty,
            "CKA_ALWAYS_AUTHENTICATE is not supported (no context-specific login)",
        ));
    }
    Ok(())
}

/// Checks a change of an existing attribute to `new` under `rule`.
fn check_change(s: Session, sp: &Spec, rule: Change, chip_key: bool, new: &[u8]) -> Result<()> {
    let read_only = |why: &str| {
        Err(refuse(
            ErrorCode::AttributeReadOnly,
            format!("attribute 0x{:x} {why}", sp.ty),
        ))
    };
    let to_true = new == [1];
    match rule {
        Change::Never => read_only("cannot be changed"),
        Change::Free => Ok(()),
        Change::ToTrue if to_true => Ok(()),
        Change::ToTrue => read_only("can only change from false to true"),
        Change::ToFalse if !to_true => Ok(()),
        Change::ToFalse => read_only("can only change from true to false"),
        Change::Usage if !chip_key || !to_true => Ok(()),
        Change::Usage => read_only(
            "is bound into the key's chip blob: it can be turned off, not on (make a new key)",
        ),
        Change::SoTrue => check_new_value(s, sp, new),
    }
}

/// Finishes the security attributes of a key a chip just made, from the flags the chip sealed
/// into its blob: `CKA_LOCAL`, `CKA_ALWAYS_SENSITIVE`, `CKA_NEVER_EXTRACTABLE` (*Base* §4.9,
/// §4.10), and `CKA_KEY_GEN_MECHANISM` (*Base* §4.7: the generating mechanism, else
/// `CK_UNAVAILABLE_INFORMATION`).
///
/// # Errors
/// [`NodeError::Chip`] for a blob whose header does not parse.
pub(crate) fn finish_chip_key(
    attrs: &mut BTreeMap<u64, Vec<u8>>,
    new: &NewKey,
    gen_mechanism: Option<u64>,
) -> Result<()> {
    let header = BlobHeader::parse(new.blob.as_bytes())?;
    attrs.insert(
        ck::CKA_LOCAL,
        bool_value(header.usage.contains(KeyUsage::LOCAL)),
    );
    attrs.insert(
        ck::CKA_ALWAYS_SENSITIVE,
        bool_value(header.usage.contains(KeyUsage::ALWAYS_SENSITIVE)),
    );
    attrs.insert(
        ck::CKA_NEVER_EXTRACTABLE,
        bool_value(header.usage.contains(KeyUsage::NEVER_EXTRACTABLE)),
    );
    attrs.insert(
        ck::CKA_KEY_GEN_MECHANISM,
        ulong_value(gen_mechanism.unwrap_or(ck::CK_UNAVAILABLE_INFORMATION)),
    );
    Ok(())
}

/// The chip usage flags a key record asks for.
pub(crate) fn usage_of(attrs: &BTreeMap<u64, Vec<u8>>) -> KeyUsage {
    let on = |ty: u64| attrs.get(&ty).is_some_and(|v| v.as_slice() == [1]);
    let mut usage = KeyUsage::empty();
    for (ty, flag) in [
        (ck::CKA_SIGN, KeyUsage::SIGN),
        (ck::CKA_VERIFY, KeyUsage::VERIFY),
        (ck::CKA_ENCRYPT, KeyUsage::ENCRYPT),
        (ck::CKA_DECRYPT, KeyUsage::DECRYPT),
        (ck::CKA_WRAP, KeyUsage::WRAP),
        (ck::CKA_UNWRAP, KeyUsage::UNWRAP),
        (ck::CKA_DERIVE, KeyUsage::DERIVE),
        (ck::CKA_EXTRACTABLE, KeyUsage::EXTRACTABLE),
        (ck::CKA_SENSITIVE, KeyUsage::SENSITIVE),
    ] {
        if on(ty) {
            usage |= flag;
        }
    }
    usage
}

/// The attributes of a key pair's public part (on both halves): `CKA_EC_PARAMS`,
/// `CKA_EC_POINT` (DER OCTET STRING), or `CKA_MODULUS`, `CKA_PUBLIC_EXPONENT`,
/// `CKA_MODULUS_BITS`; and `CKA_PUBLIC_KEY_INFO` (the DER `SubjectPublicKeyInfo`).
///
/// # Errors
/// `CKR_DEVICE_ERROR` when the chip's public key does not fit `alg`.
pub(crate) fn public_attrs(
    alg: KeyAlg,
    ec_params: &[u8],
    public: &PublicKey,
) -> Result<Vec<(u64, Vec<u8>)>> {
    match (alg, public) {
        (KeyAlg::P256, PublicKey::EcP256(point)) | (KeyAlg::Sm2, PublicKey::Sm2(point)) => {
            let point: [u8; 65] = point.as_slice().try_into().map_err(|_| {
                refuse(
                    ErrorCode::DeviceError,
                    "the chip returned a malformed EC point",
                )
            })?;
            Ok(vec![
                (ck::CKA_EC_PARAMS, ec_params.to_vec()),
                (ck::CKA_EC_POINT, der::ec_point_der(&point)),
                (ck::CKA_PUBLIC_KEY_INFO, der::spki_ec(alg, &point)),
            ])
        }
        (KeyAlg::Rsa, PublicKey::Rsa { n, e }) => {
            let n = der::strip(n);
            Ok(vec![
                (ck::CKA_MODULUS, n.to_vec()),
                (ck::CKA_PUBLIC_EXPONENT, der::strip(e).to_vec()),
                (
                    ck::CKA_MODULUS_BITS,
                    ulong_value(u64::from(der::bit_len(n))),
                ),
                (ck::CKA_PUBLIC_KEY_INFO, der::spki_rsa(n, e)),
            ])
        }
        _ => Err(refuse(
            ErrorCode::DeviceError,
            format!("the chip returned a public key that is not {}", alg.name()),
        )),
    }
}

/// The public key of a key record, for verification, encryption and wrapping with public key
/// objects.
///
/// # Errors
/// `CKR_KEY_TYPE_INCONSISTENT` when the record lacks a usable public key.
pub(crate) fn public_key_of(record: &ObjectRecord, alg: KeyAlg) -> Result<PublicKey> {
    let missing = || {
        refuse(
            ErrorCode::KeyTypeInconsistent,
            format!(
                "object {} has no usable {} public key",
                record.id,
                alg.name()
            ),
        )
    };
    match alg {
        KeyAlg::P256 | KeyAlg::Sm2 => {
            let point = record
                .attrs
                .get(&ck::CKA_EC_POINT)
                .and_then(|p| der::ec_point(p))
                .ok_or_else(missing)?;
            Ok(if alg == KeyAlg::P256 {
                PublicKey::EcP256(point.to_vec())
            } else {
                PublicKey::Sm2(point.to_vec())
            })
        }
        KeyAlg::Rsa => {
            let n = record.attrs.get(&ck::CKA_MODULUS).ok_or_else(missing)?;
            let e = record
                .attrs
                .get(&ck::CKA_PUBLIC_EXPONENT)
                .ok_or_else(missing)?;
            Ok(PublicKey::Rsa {
                n: der::strip(n).to_vec(),
                e: der::strip(e).to_vec(),
            })
        }
        _ => Err(missing()),
    }
}

/// The key kind a key template names: `CKA_KEY_TYPE` (and `CKA_EC_PARAMS` for `CKK_EC`), checked
/// against the object class.
///
/// # Errors
/// `CKR_TEMPLATE_INCOMPLETE` for `CKK_EC` without `CKA_EC_PARAMS`, `CKR_CURVE_NOT_SUPPORTED` for
/// a curve other than P-256 and SM2, `CKR_TEMPLATE_INCONSISTENT` for a key type of another class
/// or `CKK_SM2` with another curve, `CKR_ATTRIBUTE_VALUE_INVALID` for an unsupported key type.
pub(crate) fn template_alg(class: u64, ckk: u64, ec_params: Option<&[u8]>) -> Result<KeyAlg> {
    let alg = match ckk {
        ck::CKK_EC => {
            let params = ec_params.ok_or_else(|| {
                refuse(ErrorCode::TemplateIncomplete, "CKK_EC needs CKA_EC_PARAMS")
            })?;
            curve_from_params(params)?
        }
        vendor::CKK_SM2 => {
            if ec_params.is_some_and(|p| curve_of(p) != Some(KeyAlg::Sm2)) {
                return Err(refuse(
                    ErrorCode::TemplateInconsistent,
                    "CKK_SM2 with CKA_EC_PARAMS of another curve",
                ));
            }
            KeyAlg::Sm2
        }
        ck::CKK_RSA => KeyAlg::Rsa,
        ck::CKK_AES => KeyAlg::Aes,
        vendor::CKK_SM4 => KeyAlg::Sm4,
        ck::CKK_GENERIC_SECRET => KeyAlg::Generic,
        other => {
            return Err(invalid_value(
                ck::CKA_KEY_TYPE,
                format!("key type 0x{other:x} is not supported"),
            ))
        }
    };
    let fits = match class {
        ck::CKO_PUBLIC_KEY | ck::CKO_PRIVATE_KEY => alg.is_pair(),
        ck::CKO_SECRET_KEY => !alg.is_pair(),
        _ => false,
    };
    if !fits {
        return Err(refuse(
            ErrorCode::TemplateInconsistent,
            format!("key type 0x{ckk:x} does not fit object class 0x{class:x}"),
        ));
    }
    Ok(alg)
}

/// The curve of `CKA_EC_PARAMS`.
///
/// # Errors
/// `CKR_CURVE_NOT_SUPPORTED`.
pub(crate) fn curve_from_params(params: &[u8]) -> Result<KeyAlg> {
    curve_of(params).ok_or_else(|| {
        refuse(
            ErrorCode::CurveNotSupported,
            "only the P-256 and SM2 curves are supported",
        )
    })
}

/// The canonical `CKA_EC_PARAMS` of a curve (the OID's DER).
pub(crate) fn curve_params(alg: KeyAlg) -> &'static [u8] {
    if alg == KeyAlg::Sm2 {
        vendor::SM2_CURVE_OID_DER
    } else {
        P256_OID_DER
    }
}

/// Checks that an uncompressed point lies on the curve of `alg`.
pub(crate) fn point_on_curve(alg: KeyAlg, point: &[u8; 65]) -> bool {
    match alg {
        KeyAlg::P256 => aws_lc_rs::signature::ParsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            point,
        )
        .is_ok(),
        KeyAlg::Sm2 => sm2::PublicKey::from_sec1_bytes(point).is_ok(),
        _ => false,
    }
}

/// Imports clear key material into a chip and returns the sealed key.
async fn import(ctx: &Ctx, template: KeyTemplate, material: Zeroizing<Vec<u8>>) -> Result<NewKey> {
    let mut material = material;
    // Move the bytes out (no copy left behind); SecretBytes zeroizes them when dropped.
    let material = SecretBytes::new(std::mem::take(&mut *material));
    Ok(ctx
        .pool
        .call(ChipRequest::ImportKey { template, material }, &[])
        .await?
        .into_new_key()?)
}

// ---------------------------------------------------------------------------------------------
// The operations

/// `C_CreateObject` (*Base* §5.7): a data object, an X.509 certificate, a public key (EC/SM2
/// point or RSA modulus and exponent), or a private or secret key by value, which a chip imports
/// and seals (the value is never stored).
///
/// Private keys by value: EC and SM2 take `CKA_VALUE` (the private scalar, at most 32 bytes);
/// RSA takes all of `CKA_MODULUS`, `CKA_PUBLIC_EXPONENT`, `CKA_PRIVATE_EXPONENT`,
/// `CKA_PRIME_1/2`, `CKA_EXPONENT_1/2` and `CKA_COEFFICIENT` (2048 or 3072 bits), which the node
/// encodes as PKCS#8 for the chip. Secret keys take `CKA_VALUE`: AES 16/24/32 bytes, SM4 16,
/// generic secrets 1 to 512.
///
/// # Errors
/// `CKR_USER_NOT_LOGGED_IN` (see the module docs); `CKR_TEMPLATE_INCOMPLETE` without
/// `CKA_CLASS`, a key type or required values; `CKR_ATTRIBUTE_VALUE_INVALID`,
/// `CKR_ATTRIBUTE_TYPE_INVALID`, `CKR_ATTRIBUTE_READ_ONLY`, `CKR_TEMPLATE_INCONSISTENT`,
/// `CKR_CURVE_NOT_SUPPORTED`; chip and replication errors.
pub async fn create_object(ctx: &Ctx, s: Session, template: &[Attribute]) -> Result<ObjectId> {
    require_write(s, false)?;
    let tmpl = Template::parse(template)?;
    let class = tmpl
        .ulong(ck::CKA_CLASS)?
        .ok_or_else(|| refuse(ErrorCode::TemplateIncomplete, "CKA_CLASS is required"))?;
    let private = tmpl
        .bool(ck::CKA_PRIVATE)?
        .unwrap_or(matches!(class, ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY));
    require_write(s, private)?;
    let id = new_object_id()?;
    let (attrs, blob) = match class {
        ck::CKO_DATA => (
            build_attrs(
                s,
                id,
                class,
                None,
                &tmpl,
                &[],
                vec![(ck::CKA_CLASS, ulong_value(class))],
            )?,
            None,
        ),
        ck::CKO_CERTIFICATE => (create_certificate(s, id, &tmpl)?, None),
        ck::CKO_PUBLIC_KEY => (create_public_key(s, id, &tmpl)?, None),
        ck::CKO_PRIVATE_KEY | ck::CKO_SECRET_KEY => {
            let (attrs, new) = create_chip_key(ctx, s, id, class, &tmpl).await?;
            (attrs, Some(new.blob.0))
        }
        other => {
            return Err(invalid_value(
                ck::CKA_CLASS,
                format!("objects of class 0x{other:x} cannot be created"),
            ))
        }
    };
    let record = ObjectRecord {
        id,
        token: s.token,
        attrs,
        blob,
    };
    commit(ctx, Command::PutObjects(vec![record])).await?;
    tracing::info!(object = %id, token = %s.token, class, "object created");
    Ok(id)
}

/// An X.509 certificate (*Base* §4.6.3). `CKA_SUBJECT`, `CKA_ISSUER`, `CKA_SERIAL_NUMBER` and
/// `CKA_PUBLIC_KEY_INFO` default to the certificate's own fields when it parses;
/// `CKA_CHECK_VALUE` is the first three bytes of the SHA-1 of `CKA_VALUE` (*Base* §4.6.2).
fn create_certificate(
    s: Session,
    id: ObjectId,
    tmpl: &Template<'_>,
) -> Result<BTreeMap<u64, Vec<u8>>> {
    let cert_type = tmpl.ulong(ck::CKA_CERTIFICATE_TYPE)?.ok_or_else(|| {
        refuse(
            ErrorCode::TemplateIncomplete,
            "a certificate needs CKA_CERTIFICATE_TYPE",
        )
    })?;
    if cert_type != ck::CKC_X_509 {
        return Err(invalid_value(
            ck::CKA_CERTIFICATE_TYPE,
            "only X.509 public key certificates (CKC_X_509) are supported",
        ));
    }
    let value = tmpl
        .get(ck::CKA_VALUE)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            refuse(
                ErrorCode::TemplateIncomplete,
                "a certificate needs CKA_VALUE (its DER)",
            )
        })?;
    let fields = der::x509_fields(value);
    let mut computed = vec![
        (ck::CKA_CLASS, ulong_value(ck::CKO_CERTIFICATE)),
        (ck::CKA_CERTIFICATE_TYPE, ulong_value(cert_type)),
        (
            ck::CKA_CHECK_VALUE,
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, value).as_ref()
                [..3]
                .to_vec(),
        ),
    ];
    if let Some(f) = &fields {
        for (ty, v) in [
            (ck::CKA_SUBJECT, f.subject),
            (ck::CKA_ISSUER, f.issuer),
            (ck::CKA_SERIAL_NUMBER, f.serial),
            (ck::CKA_PUBLIC_KEY_INFO, f.spki),
        ] {
            if !tmpl.has(ty) {
                computed.push((ty, v.to_vec()));
            }
        }
    }
    if !tmpl.has(ck::CKA_SUBJECT) && fields.is_none() {
        return Err(refuse(
            ErrorCode::TemplateIncomplete,
            "CKA_SUBJECT is required (the certificate does not parse to take it from)",
        ));
    }
    build_attrs(s, id, ck::CKO_CERTIFICATE, None, tmpl, &[], computed)
}

/// The key kind of a key template of `class`.
pub(crate) fn key_template_alg(class: u64, tmpl: &Template<'_>) -> Result<(u64, KeyAlg)> {
    let ckk = tmpl
        .ulong(ck::CKA_KEY_TYPE)?
        .ok_or_else(|| refuse(ErrorCode::TemplateIncomplete, "CKA_KEY_TYPE is required"))?;
    Ok((ckk, template_alg(class, ckk, tmpl.get(ck::CKA_EC_PARAMS))?))
}

/// A public key object from its public values.
fn create_public_key(
    s: Session,
    id: ObjectId,
    tmpl: &Template<'_>,
) -> Result<BTreeMap<u64, Vec<u8>>> {
    let class = ck::CKO_PUBLIC_KEY;
    let (ckk, alg) = key_template_alg(class, tmpl)?;
    let mut computed = vec![
        (ck::CKA_CLASS, ulong_value(class)),
        (ck::CKA_KEY_TYPE, ulong_value(ckk)),
        (ck::CKA_LOCAL, bool_value(false)),
        (
            ck::CKA_KEY_GEN_MECHANISM,
            ulong_value(ck::CK_UNAVAILABLE_INFORMATION),
        ),
    ];
    let mut skip = Vec::new();
    let public = if alg.is_ec() {
        let raw = tmpl.get(ck::CKA_EC_POINT).ok_or_else(|| {
            refuse(
                ErrorCode::TemplateIncomplete,
                "an EC public key needs CKA_EC_POINT",
            )
        })?;
        let point = der::ec_point(raw).ok_or_else(|| {
            invalid_value(
                ck::CKA_EC_POINT,
                "not an uncompressed point (65 bytes, raw or DER OCTET STRING)",
            )
        })?;
        if !point_on_curve(alg, &point) {
            return Err(invalid_value(
                ck::CKA_EC_POINT,
                format!("not a point on the {} curve", alg.name()),
            ));
        }
        // Stored in the spec's form, the DER OCTET STRING; a raw point is accepted as given.
        skip.push(ck::CKA_EC_POINT);
        if alg == KeyAlg::Sm2 {
            PublicKey::Sm2(point.to_vec())
        } else {
            PublicKey::EcP256(point.to_vec())
        }
    } else {
        let n = tmpl.get(ck::CKA_MODULUS).ok_or_else(|| {
            refuse(
                ErrorCode::TemplateIncomplete,
                "an RSA public key needs CKA_MODULUS",
            )
        })?;
        let e = tmpl.get(ck::CKA_PUBLIC_EXPONENT).ok_or_else(|| {
            refuse(
                ErrorCode::TemplateIncomplete,
                "an RSA public key needs CKA_PUBLIC_EXPONENT",
            )
        })?;
        check_rsa_public(n, e)?;
        PublicKey::Rsa {
            n: der::strip(n).to_vec(),
            e: der::strip(e).to_vec(),
        }
    };
    let params = tmpl
        .get(ck::CKA_EC_PARAMS)
        .unwrap_or_else(|| curve_params(alg));
    for (ty, v) in public_attrs(alg, params, &public)? {
        // The caller's exact modulus and exponent bytes stay as given (they may carry a
        // leading zero), so that FindObjects with the same template finds the key.
        if let Some(given) = tmpl
            .get(ty)
            .filter(|_| matches!(ty, ck::CKA_MODULUS | ck::CKA_PUBLIC_EXPONENT))
        {
            computed.push((ty, given.to_vec()));
        } else {
            computed.push((ty, v));
        }
    }
    build_attrs(s, id, class, Some(alg), tmpl, &skip, computed)
}

/// Checks an RSA public key's values: 2048 to 8192 bits, an odd exponent above 1.
fn check_rsa_public(n: &[u8], e: &[u8]) -> Result<u32> {
    let bits = der::bit_len(der::strip(n));
    if !(2048..=8192).contains(&bits) {
        return Err(invalid_value(
            ck::CKA_MODULUS,
            format!("a {bits}-bit modulus (2048 to 8192 bits are supported)"),
        ));
    }
    let e = der::strip(e);
    if e.is_empty() || e.len() > 8 || e.last().is_some_and(|b| b & 1 == 0) || e == [1] {
        return Err(invalid_value(
            ck::CKA_PUBLIC_EXPONENT,
            "the public exponent must be odd, above 1 and at most 64 bits",
        ));
    }
    Ok(bits)
}

/// A private or secret key by value: imported into a chip.
async fn create_chip_key(
    ctx: &Ctx,
    s: Session,
    id: ObjectId,
    class: u64,
    tmpl: &Template<'_>,
) -> Result<(BTreeMap<u64, Vec<u8>>, NewKey)> {
    let (ckk, alg) = key_template_alg(class, tmpl)?;
    let mut computed = vec![
        (ck::CKA_CLASS, ulong_value(class)),
        (ck::CKA_KEY_TYPE, ulong_value(ckk)),
    ];
    let mut skip: Vec<u64> = Vec::new();
    let (spec, material) = match alg {
        KeyAlg::P256 | KeyAlg::Sm2 => {
            let scalar = tmpl.get(ck::CKA_VALUE).ok_or_else(|| {
                refuse(
                    ErrorCode::TemplateIncomplete,
                    "an EC private key by value needs CKA_VALUE",
                )
            })?;
            let scalar = der::strip(scalar);
            if scalar.is_empty() || scalar.len() > 32 {
                return Err(invalid_value(
                    ck::CKA_VALUE,
                    "an EC private key is a non-zero scalar of at most 32 bytes",
                ));
            }
            let mut material = Zeroizing::new(vec![0u8; 32]);
            material[32 - scalar.len()..].copy_from_slice(scalar);
            // Checked against the key after the chip computed the public point.
            skip.extend([ck::CKA_VALUE, ck::CKA_EC_POINT, ck::CKA_PUBLIC_KEY_INFO]);
            let params = tmpl
                .get(ck::CKA_EC_PARAMS)
                .unwrap_or_else(|| curve_params(alg));
            computed.push((ck::CKA_EC_PARAMS, params.to_vec()));
            (alg.spec(256), material)
        }
        KeyAlg::Rsa => {
            let part = |ty: u64| {
                tmpl.get(ty).ok_or_else(|| {
                    refuse(
                        ErrorCode::TemplateIncomplete,
                        format!(
                            "an RSA private key by value needs the modulus, both exponents and \
                             all CRT values; 0x{ty:x} is missing"
                        ),
                    )
                })
            };
            let parts = [
                part(ck::CKA_MODULUS)?,
                part(ck::CKA_PUBLIC_EXPONENT)?,
                part(ck::CKA_PRIVATE_EXPONENT)?,
                part(ck::CKA_PRIME_1)?,
                part(ck::CKA_PRIME_2)?,
                part(ck::CKA_EXPONENT_1)?,
                part(ck::CKA_EXPONENT_2)?,
                part(ck::CKA_COEFFICIENT)?,
            ];
            let bits = check_rsa_public(parts[0], parts[1])?;
            if !matches!(bits, 2048 | 3072) {
                return Err(invalid_value(
                    ck::CKA_MODULUS,
                    format!("a {bits}-bit RSA private key (2048 or 3072 bits are supported)"),
                ));
            }
            skip.extend([
                ck::CKA_PRIVATE_EXPONENT,
                ck::CKA_PRIME_1,
                ck::CKA_PRIME_2,
                ck::CKA_EXPONENT_1,
                ck::CKA_EXPONENT_2,
                ck::CKA_COEFFICIENT,
            ]);
            let public = PublicKey::Rsa {
                n: der::strip(parts[0]).to_vec(),
                e: der::strip(parts[1]).to_vec(),
            };
            for (ty, v) in public_attrs(alg, &[], &public)? {
                let given = tmpl
                    .get(ty)
                    .filter(|_| matches!(ty, ck::CKA_MODULUS | ck::CKA_PUBLIC_EXPONENT));
                computed.push((ty, given.map_or(v, <[u8]>::to_vec)));
            }
            (alg.spec(bits), der::pkcs8_rsa(&parts))
        }
        KeyAlg::Aes | KeyAlg::Sm4 | KeyAlg::Generic => {
            let value = tmpl.get(ck::CKA_VALUE).ok_or_else(|| {
                refuse(
                    ErrorCode::TemplateIncomplete,
                    "a secret key by value needs CKA_VALUE",
                )
            })?;
            let ok = match alg {
                KeyAlg::Aes => matches!(value.len(), 16 | 24 | 32),
                KeyAlg::Sm4 => value.len() == 16,
                _ => (1..=512).contains(&value.len()),
            };
            if !ok {
                return Err(invalid_value(
                    ck::CKA_VALUE,
                    format!(
                        "{} bytes is not a valid {} key length",
                        value.len(),
                        alg.name()
                    ),
                ));
            }
            skip.push(ck::CKA_VALUE);
            computed.push((ck::CKA_VALUE_LEN, ulong_value(value.len() as u64)));
            let bits = u32::try_from(value.len() * 8).unwrap_or(u32::MAX);
            (alg.spec(bits), Zeroizing::new(value.to_vec()))
        }
    };
    let mut attrs = build_attrs(s, id, class, Some(alg), tmpl, &skip, computed)?;
    let template = KeyTemplate {
        id: KeyId(id.0),
        spec,
        usage: usage_of(&attrs),
    };
    let new = import(ctx, template, material).await?;
    if alg.is_ec() {
        let public = new
            .public
            .as_ref()
            .ok_or_else(|| refuse(ErrorCode::DeviceError, "the chip returned no public key"))?;
        let params = attrs
            .get(&ck::CKA_EC_PARAMS)
            .cloned()
            .unwrap_or_else(|| curve_params(alg).to_vec());
        for (ty, v) in public_attrs(alg, &params, public)? {
            check_late(tmpl, ty, &v)?;
            attrs.insert(ty, v);
        }
    }
    finish_chip_key(&mut attrs, &new, None)?;
    Ok((attrs, new))
}

/// Checks a template value against one the chip computed (`CKA_EC_POINT` in either form).
pub(crate) fn check_late(tmpl: &Template<'_>, ty: u64, computed: &[u8]) -> Result<()> {
    let Some(given) = tmpl.get(ty) else {
        return Ok(());
    };
    let same = if ty == ck::CKA_EC_POINT {
        der::ec_point(given).is_some_and(|p| der::ec_point_der(&p) == computed)
    } else {
        given == computed
    };
    if same {
        Ok(())
    } else {
        Err(refuse(
            ErrorCode::TemplateInconsistent,
            format!("attribute 0x{ty:x} does not match the key"),
        ))
    }
}

/// `C_CopyObject` (*Base* §5.7): a new object with the original's attributes, changed by the
/// template within the rules of the module docs. A copy of a chip key shares its blob.
///
/// # Errors
/// `CKR_OBJECT_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, `CKR_ACTION_PROHIBITED` when
/// `CKA_COPYABLE` is false, `CKR_ATTRIBUTE_READ_ONLY` for a change the rules forbid,
/// `CKR_ATTRIBUTE_TYPE_INVALID`, `CKR_ATTRIBUTE_VALUE_INVALID`.
pub async fn copy_object(
    ctx: &Ctx,
    s: Session,
    object: ObjectId,
    template: &[Attribute],
) -> Result<ObjectId> {
    require_write(s, false)?;
    let original = lookup(ctx, s, &object, ErrorCode::ObjectHandleInvalid)?;
    let record = &original.record;
    if record_bool(record, ck::CKA_COPYABLE) == Some(false) {
        return Err(refuse(
            ErrorCode::ActionProhibited,
            format!("object {object} is not copyable"),
        ));
    }
    let tmpl = Template::parse(template)?;
    let changes = changes(s, record, &tmpl, true)?;
    let mut attrs = record.attrs.clone();
    attrs.extend(changes);
    let id = new_object_id()?;
    attrs.insert(ck::CKA_UNIQUE_ID, id.to_string().into_bytes());
    let copy = ObjectRecord {
        id,
        token: s.token,
        attrs,
        blob: record.blob.clone(),
    };
    require_write(s, is_private(&copy))?;
    commit(ctx, Command::PutObjects(vec![copy])).await?;
    tracing::info!(object = %id, original = %object, token = %s.token, "object copied");
    Ok(id)
}

/// The attribute changes a template asks of `record`, checked against the rules for
/// `C_SetAttributeValue` or, with `copy`, `C_CopyObject`. Unchanged values are left out.
fn changes(
    s: Session,
    record: &ObjectRecord,
    tmpl: &Template<'_>,
    copy: bool,
) -> Result<Vec<(u64, Vec<u8>)>> {
    let class = class_of(record).unwrap_or(ck::CKO_DATA);
    let alg = alg_of(record);
    let chip_key = record.blob.is_some();
    let mut out = Vec::new();
    for (ty, v) in tmpl.iter() {
        let sp = spec(class, alg, ty).ok_or_else(|| {
            refuse(
                ErrorCode::AttributeTypeInvalid,
                format!("attribute 0x{ty:x} is not one of this object"),
            )
        })?;
        check_kind(sp.kind, ty, v)?;
        let old = record.attrs.get(&ty).map(Vec::as_slice);
        if old == Some(v) {
            continue;
        }
        if sp.role != Role::Free {
            return Err(refuse(
                ErrorCode::AttributeReadOnly,
                format!("attribute 0x{ty:x} cannot be changed"),
            ));
        }
        let rule = if copy { sp.copy } else { sp.set };
        check_change(s, sp, rule, chip_key, v)?;
        out.push((ty, v.to_vec()));
    }
    Ok(out)
}

/// `C_DestroyObject` (*Base* §5.7).
///
/// # Errors
/// `CKR_OBJECT_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, `CKR_ACTION_PROHIBITED` when
/// `CKA_DESTROYABLE` is false.
pub async fn destroy_object(ctx: &Ctx, s: Session, object: ObjectId) -> Result<()> {
    require_write(s, false)?;
    let o = lookup(ctx, s, &object, ErrorCode::ObjectHandleInvalid)?;
    require_write(s, is_private(&o.record))?;
    if record_bool(&o.record, ck::CKA_DESTROYABLE) == Some(false) {
        return Err(refuse(
            ErrorCode::ActionProhibited,
            format!("object {object} is not destroyable"),
        ));
    }
    commit(ctx, Command::DestroyObject(object)).await?;
    tracing::info!(%object, token = %s.token, "object destroyed");
    Ok(())
}

/// `C_GetAttributeValue` (*Base* §5.7): one answer per type, in order: the value, `Sensitive`
/// for key material (never held by the node, see the module docs), `Invalid` for an attribute
/// the object does not have.
///
/// # Errors
/// `CKR_OBJECT_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`.
pub async fn get_attributes(
    ctx: &Ctx,
    s: Session,
    object: ObjectId,
    types: &[u64],
) -> Result<Vec<AttrValue>> {
    let o = lookup(ctx, s, &object, ErrorCode::ObjectHandleInvalid)?;
    let record = &o.record;
    let class = class_of(record).unwrap_or(ck::CKO_DATA);
    let alg = alg_of(record);
    Ok(types
        .iter()
        .map(|&ty| {
            let material = spec(class, alg, ty).is_some_and(|sp| sp.role == Role::Material);
            match record.attrs.get(&ty) {
                _ if material => AttrValue::Sensitive,
                Some(v) => AttrValue::Value(v.clone()),
                None => AttrValue::Invalid,
            }
        })
        .collect())
}

/// `C_SetAttributeValue` (*Base* §5.7), within the rules of the module docs. Values equal to
/// the current ones are accepted and not written.
///
/// # Errors
/// `CKR_OBJECT_HANDLE_INVALID`, `CKR_USER_NOT_LOGGED_IN`, `CKR_ACTION_PROHIBITED` when
/// `CKA_MODIFIABLE` is false, `CKR_ATTRIBUTE_READ_ONLY`, `CKR_ATTRIBUTE_TYPE_INVALID`,
/// `CKR_ATTRIBUTE_VALUE_INVALID`, `CKR_TEMPLATE_INCONSISTENT`.
pub async fn set_attributes(
    ctx: &Ctx,
    s: Session,
    object: ObjectId,
    template: &[Attribute],
) -> Result<()> {
    require_write(s, false)?;
    let o = lookup(ctx, s, &object, ErrorCode::ObjectHandleInvalid)?;
    require_write(s, is_private(&o.record))?;
    if record_bool(&o.record, ck::CKA_MODIFIABLE) == Some(false) {
        return Err(refuse(
            ErrorCode::ActionProhibited,
            format!("object {object} is not modifiable"),
        ));
    }
    let tmpl = Template::parse(template)?;
    // Only real changes are written, so two concurrent one-way changes cannot undo each other.
    let attrs = changes(s, &o.record, &tmpl, false)?;
    if attrs.is_empty() {
        return Ok(());
    }
    commit(ctx, Command::SetAttributes { id: object, attrs }).await?;
    Ok(())
}

/// `C_FindObjects*` (*Base* §5.7): the session's visible objects whose attributes equal every
/// template attribute byte for byte, in creation order. Private objects appear only to the
/// logged-in user; key material never matches.
///
/// # Errors
/// None today; the `Result` leaves room for limits.
pub async fn find_objects(ctx: &Ctx, s: Session, template: &[Attribute]) -> Result<Vec<ObjectId>> {
    Ok(ctx
        .state
        .objects_of(s.token)
        .iter()
        .filter(|o| !is_private(&o.record) || s.is_user())
        .filter(|o| {
            template
                .iter()
                .all(|at| o.record.attrs.get(&at.ty).is_some_and(|v| *v == at.value))
        })
        .map(|o| o.record.id)
        .collect())
}

// ---------------------------------------------------------------------------------------------
// DER

/// The little DER the node needs: EC points, `SubjectPublicKeyInfo`, RSA PKCS#8 for import, and
/// reading the names out of an X.509 certificate.
pub(crate) mod der {
    use zeroize::Zeroizing;

    use super::KeyAlg;

    /// An uncompressed point from a `CKA_EC_POINT` value: the DER OCTET STRING the spec
    /// defines, or the raw 65 bytes many applications send.
    pub fn ec_point(v: &[u8]) -> Option<[u8; 65]> {
        let raw = match v {
            [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
            _ if v.len() == 65 => v,
            _ => return None,
        };
        if raw[0] != 0x04 {
            return None;
        }
        raw.try_into().ok()
    }

    /// `CKA_EC_POINT` as PKCS#11 defines it: the point as a DER OCTET STRING.
    pub fn ec_point_der(point: &[u8; 65]) -> Vec<u8> {
        tlv(0x04, point)
    }

    /// The bytes without leading zeros.
    pub fn strip(v: &[u8]) -> &[u8] {
        let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
        &v[start..]
    }

    /// Bit length of a big-endian unsigned integer without leading zeros.
    pub fn bit_len(n: &[u8]) -> u32 {
        match n.first() {
            None => 0,
            Some(&top) => {
                let bytes = u32::try_from(n.len()).unwrap_or(u32::MAX / 8);
                bytes * 8 - top.leading_zeros()
            }
        }
    }

    fn header_len(len: usize) -> usize {
        match len {
            0..=0x7f => 2,
            0x80..=0xff => 3,
            0x100..=0xffff => 4,
            _ => 5,
        }
    }

    fn push_header(out: &mut Vec<u8>, tag: u8, len: usize) {
        out.push(tag);
        match len {
            0..=0x7f => out.push(len as u8),
            0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
            0x100..=0xffff => {
                out.push(0x82);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(0x83);
                out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
            }
        }
    }

    /// A tag-length-value.
    pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(header_len(content.len()) + content.len());
        push_header(&mut out, tag, content.len());
        out.extend_from_slice(content);
        out
    }

    /// Length of an unsigned INTEGER's content (a zero byte in front of a set top bit).
    fn uint_len(v: &[u8]) -> usize {
        let v = strip(v);
        match v.first() {
            None => 1,
            Some(&b) if b & 0x80 != 0 => v.len() + 1,
            Some(_) => v.len(),
        }
    }

    fn push_uint(out: &mut Vec<u8>, v: &[u8]) {
        let v = strip(v);
        push_header(out, 0x02, uint_len(v));
        if v.first().is_none_or(|&b| b & 0x80 != 0) {
            out.push(0);
        }
        out.extend_from_slice(v);
    }

    const EC_PUBLIC_KEY_ALG: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    const RSA_ALG_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];

    /// `SubjectPublicKeyInfo` of an EC or SM2 key (RFC 5480; SM2 per GB/T 35276 uses
    /// id-ecPublicKey with the SM2 curve).
    pub fn spki_ec(alg: KeyAlg, point: &[u8; 65]) -> Vec<u8> {
        let mut algid = EC_PUBLIC_KEY_ALG.to_vec();
        algid.extend_from_slice(super::curve_params(alg));
        let mut bits = vec![0u8];
        bits.extend_from_slice(point);
        let mut content = tlv(0x30, &algid);
        content.extend(tlv(0x03, &bits));
        tlv(0x30, &content)
    }

    /// `SubjectPublicKeyInfo` of an RSA key (RFC 8017 A.1.1, RFC 3279).
    pub fn spki_rsa(n: &[u8], e: &[u8]) -> Vec<u8> {
        let mut ints = Vec::new();
        push_uint(&mut ints, n);
        push_uint(&mut ints, e);
        let mut bits = vec![0u8];
        bits.extend(tlv(0x30, &ints));
        let mut content = RSA_ALG_ID.to_vec();
        content.extend(tlv(0x03, &bits));
        tlv(0x30, &content)
    }

    /// PKCS#8 `PrivateKeyInfo` (RFC 5208) holding an `RSAPrivateKey` (RFC 8017 A.1.2) from
    /// `[n, e, d, p, q, dp, dq, qinv]`, written into one buffer of the exact size so that no
    /// copy of the key is left in freed memory.
    pub fn pkcs8_rsa(parts: &[&[u8]; 8]) -> Zeroizing<Vec<u8>> {
        let ints: usize = 3 + parts
            .iter()
            .map(|p| header_len(uint_len(p)) + uint_len(p))
            .sum::<usize>();
        let rsa_key = header_len(ints) + ints;
        let octets = header_len(rsa_key) + rsa_key;
        let content = 3 + RSA_ALG_ID.len() + octets;
        let mut out = Zeroizing::new(Vec::with_capacity(header_len(content) + content));
        push_header(&mut out, 0x30, content);
        out.extend_from_slice(&[0x02, 0x01, 0x00]);
        out.extend_from_slice(RSA_ALG_ID);
        push_header(&mut out, 0x04, rsa_key);
        push_header(&mut out, 0x30, ints);
        out.extend_from_slice(&[0x02, 0x01, 0x00]);
        for p in parts {
            push_uint(&mut out, p);
        }
        out
    }

    /// One DER element read off the front of some input: `(tag, content, whole element, rest)`.
    pub type Element<'a> = (u8, &'a [u8], &'a [u8], &'a [u8]);

    /// Reads one DER element (definite lengths of up to 4 bytes).
    pub fn read(input: &[u8]) -> Option<Element<'_>> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let header = input.len() - rest.len();
        Some((tag, &rest[..len], &input[..header + len], &rest[len..]))
    }

    /// The fields of an X.509 certificate that PKCS#11 repeats as attributes (whole DER
    /// elements).
    pub struct X509Fields<'a> {
        pub serial: &'a [u8],
        pub issuer: &'a [u8],
        pub subject: &'a [u8],
        pub spki: &'a [u8],
    }

    /// Reads `Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    /// serialNumber, signature, issuer, validity, subject, subjectPublicKeyInfo, ... } ... }`
    /// (RFC 5280 §4.1).
    pub fn x509_fields(cert: &[u8]) -> Option<X509Fields<'_>> {
        let (0x30, cert_content, _, []) = read(cert)? else {
            return None;
        };
        let (0x30, tbs, _, _) = read(cert_content)? else {
            return None;
        };
        let mut rest = tbs;
        let (tag, _, _, after) = read(rest)?;
        if tag == 0xa0 {
            rest = after;
        }
        let (0x02, _, serial, rest) = read(rest)? else {
            return None;
        };
        let (0x30, _, _, rest) = read(rest)? else {
            return None;
        };
        let (0x30, _, issuer, rest) = read(rest)? else {
            return None;
        };
        let (0x30, _, _, rest) = read(rest)? else {
            return None;
        };
        let (0x30, _, subject, rest) = read(rest)? else {
            return None;
        };
        let (0x30, _, spki, _) = read(rest)? else {
            return None;
        };
        Some(X509Fields {
            serial,
            issuer,
            subject,
            spki,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::service::testkit::{fixture, Fixture};

    pub(crate) fn code<T: std::fmt::Debug>(r: Result<T>) -> ErrorCode {
        match r {
            Err(NodeError::Refused(w)) => w.code,
            Err(NodeError::Chip(e)) => crate::service::chip_error_code(&e),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    pub(crate) fn at_ulong(ty: u64, v: u64) -> Attribute {
        Attribute::ulong(ty, v)
    }

    pub(crate) fn at_bool(ty: u64, v: bool) -> Attribute {
        Attribute::bool(ty, v)
    }

    pub(crate) fn at(ty: u64, v: &[u8]) -> Attribute {
        Attribute::bytes(ty, v.to_vec())
    }

    fn value(ctx: &Ctx, s: Session, id: ObjectId, ty: u64) -> AttrValue {
        futures::executor::block_on(get_attributes(ctx, s, id, &[ty]))
            .expect("get")
            .remove(0)
    }

    fn data(label: &[u8], private: bool) -> Vec<Attribute> {
        vec![
            at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
            at(ck::CKA_LABEL, label),
            at(ck::CKA_VALUE, b"payload"),
            at_bool(ck::CKA_PRIVATE, private),
            at_bool(ck::CKA_TOKEN, true),
        ]
    }

    #[tokio::test]
    async fn data_objects_defaults_visibility_and_writes() {
        let Fixture { ctx, t1, t2 } = fixture();
        let user = Session::user(t1);
        let public = Session::public(t1);
        let so = Session::so(t1);

        let pubobj = create_object(&ctx, user, &data(b"pub", false))
            .await
            .expect("create");
        let privobj = create_object(&ctx, user, &data(b"priv", true))
            .await
            .expect("create");
        // Defaults (Base §4.4, §4.5).
        let got = get_attributes(
            &ctx,
            user,
            pubobj,
            &[
                ck::CKA_MODIFIABLE,
                ck::CKA_COPYABLE,
                ck::CKA_DESTROYABLE,
                ck::CKA_APPLICATION,
                ck::CKA_VALUE,
                ck::CKA_UNIQUE_ID,
                ck::CKA_SIGN,
            ],
        )
        .await
        .expect("get");
        assert_eq!(got[0], AttrValue::Value(vec![1]));
        assert_eq!(got[1], AttrValue::Value(vec![1]));
        assert_eq!(got[2], AttrValue::Value(vec![1]));
        assert_eq!(got[3], AttrValue::Value(vec![]));
        assert_eq!(got[4], AttrValue::Value(b"payload".to_vec()));
        assert_eq!(got[5], AttrValue::Value(pubobj.to_string().into_bytes()));
        assert_eq!(got[6], AttrValue::Invalid);

        // Visibility: the public session and the SO see only the public object.
        assert_eq!(
            find_objects(&ctx, user, &[]).await.expect("find"),
            vec![pubobj, privobj]
        );
        assert_eq!(
            find_objects(&ctx, public, &[]).await.expect("find"),
            vec![pubobj]
        );
        assert_eq!(
            find_objects(&ctx, so, &[]).await.expect("find"),
            vec![pubobj]
        );
        assert_eq!(
            code(get_attributes(&ctx, public, privobj, &[ck::CKA_LABEL]).await),
            ErrorCode::UserNotLoggedIn
        );
        assert_eq!(
            code(get_attributes(&ctx, so, privobj, &[ck::CKA_LABEL]).await),
            ErrorCode::UserNotLoggedIn
        );
        // Another token sees nothing of t1.
        let other = Session::user(t2);
        assert!(find_objects(&ctx, other, &[])
            .await
            .expect("find")
            .is_empty());
        assert_eq!(
            code(get_attributes(&ctx, other, pubobj, &[ck::CKA_LABEL]).await),
            ErrorCode::ObjectHandleInvalid
        );
        assert_eq!(
            code(destroy_object(&ctx, other, pubobj).await),
            ErrorCode::ObjectHandleInvalid
        );

        // Writes need a login; the SO writes public objects only.
        assert_eq!(
            code(create_object(&ctx, public, &data(b"x", false)).await),
            ErrorCode::UserNotLoggedIn
        );
        assert_eq!(
            code(create_object(&ctx, so, &data(b"x", true)).await),
            ErrorCode::UserNotLoggedIn
        );
        let so_obj = create_object(&ctx, so, &data(b"so", false))
            .await
            .expect("so create");
        assert_eq!(
            code(set_attributes(&ctx, public, pubobj, &[at(ck::CKA_LABEL, b"y")]).await),
            ErrorCode::UserNotLoggedIn
        );

        // Find matches bytes exactly.
        let found = find_objects(&ctx, user, &[at(ck::CKA_LABEL, b"priv")])
            .await
            .expect("find");
        assert_eq!(found, vec![privobj]);
        let found = find_objects(&ctx, user, &[at_bool(ck::CKA_PRIVATE, false)])
            .await
            .expect("find");
        assert_eq!(found, vec![pubobj, so_obj]);
        assert!(find_objects(&ctx, user, &[at(ck::CKA_LABEL, b"pri")])
            .await
            .expect("find")
            .is_empty());

        // Set, copy, destroy.
        set_attributes(&ctx, user, pubobj, &[at(ck::CKA_LABEL, b"renamed")])
            .await
            .expect("set");
        assert_eq!(
            value(&ctx, user, pubobj, ck::CKA_LABEL),
            AttrValue::Value(b"renamed".to_vec())
        );
        assert_eq!(
            code(set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_PRIVATE, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        assert_eq!(
            code(
                set_attributes(
                    &ctx,
                    user,
                    pubobj,
                    &[at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE)]
                )
                .await
            ),
            ErrorCode::AttributeReadOnly
        );
        assert_eq!(
            code(set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_SIGN, true)]).await),
            ErrorCode::AttributeTypeInvalid
        );
        // A copy may become private and non-modifiable.
        let copy = copy_object(
            &ctx,
            user,
            pubobj,
            &[
                at_bool(ck::CKA_PRIVATE, true),
                at_bool(ck::CKA_MODIFIABLE, false),
            ],
        )
        .await
        .expect("copy");
        assert_eq!(
            value(&ctx, user, copy, ck::CKA_LABEL),
            AttrValue::Value(b"renamed".to_vec())
        );
        assert_eq!(
            value(&ctx, user, copy, ck::CKA_UNIQUE_ID),
            AttrValue::Value(copy.to_string().into_bytes())
        );
        assert_eq!(
            code(set_attributes(&ctx, user, copy, &[at(ck::CKA_LABEL, b"z")]).await),
            ErrorCode::ActionProhibited
        );
        assert_eq!(
            code(copy_object(&ctx, user, copy, &[at_bool(ck::CKA_MODIFIABLE, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        // Non-copyable, non-destroyable (one-way).
        set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_COPYABLE, false)])
            .await
            .expect("set");
        assert_eq!(
            code(set_attributes(&ctx, user, pubobj, &[at_bool(ck::CKA_COPYABLE, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        assert_eq!(
            code(copy_object(&ctx, user, pubobj, &[]).await),
            ErrorCode::ActionProhibited
        );
        set_attributes(&ctx, user, privobj, &[at_bool(ck::CKA_DESTROYABLE, false)])
            .await
            .expect("set");
        assert_eq!(
            code(destroy_object(&ctx, user, privobj).await),
            ErrorCode::ActionProhibited
        );
        destroy_object(&ctx, user, pubobj).await.expect("destroy");
        assert_eq!(
            code(get_attributes(&ctx, user, pubobj, &[ck::CKA_LABEL]).await),
            ErrorCode::ObjectHandleInvalid
        );
    }

    #[tokio::test]
    async fn template_errors() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let cases: Vec<(Vec<Attribute>, ErrorCode)> = vec![
            (vec![at(ck::CKA_LABEL, b"x")], ErrorCode::TemplateIncomplete),
            (
                vec![at_ulong(ck::CKA_CLASS, ck::CKO_HW_FEATURE)],
                ErrorCode::AttributeValueInvalid,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
                    at_bool(ck::CKA_SIGN, true),
                ],
                ErrorCode::AttributeTypeInvalid,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
                    at(ck::CKA_TOKEN, &[2]),
                ],
                ErrorCode::AttributeValueInvalid,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
                    at(ck::CKA_UNIQUE_ID, b"x"),
                ],
                ErrorCode::AttributeReadOnly,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_DATA),
                    at(ck::CKA_LABEL, b"a"),
                    at(ck::CKA_LABEL, b"b"),
                ],
                ErrorCode::TemplateInconsistent,
            ),
            // Keys.
            (
                vec![at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY)],
                ErrorCode::TemplateIncomplete,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                ],
                ErrorCode::TemplateIncomplete,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                    at(ck::CKA_VALUE, &[1; 20]),
                ],
                ErrorCode::AttributeValueInvalid,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                    at(ck::CKA_VALUE, &[1; 16]),
                    at_bool(ck::CKA_LOCAL, false),
                ],
                ErrorCode::AttributeReadOnly,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                    at(ck::CKA_VALUE, &[1; 16]),
                    at_ulong(ck::CKA_VALUE_LEN, 32),
                ],
                ErrorCode::TemplateInconsistent,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                    at(ck::CKA_VALUE, &[1; 16]),
                ],
                ErrorCode::TemplateInconsistent,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                    at(ck::CKA_VALUE, &[1; 16]),
                    at_bool(ck::CKA_TRUSTED, true),
                ],
                ErrorCode::AttributeReadOnly,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                    at(
                        ck::CKA_EC_PARAMS,
                        &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22],
                    ),
                    at(ck::CKA_EC_POINT, &[4; 65]),
                ],
                ErrorCode::CurveNotSupported,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                    at(ck::CKA_EC_PARAMS, P256_OID_DER),
                    at(ck::CKA_EC_POINT, &[4; 65]),
                ],
                ErrorCode::AttributeValueInvalid,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                    at(ck::CKA_EC_PARAMS, P256_OID_DER),
                ],
                ErrorCode::TemplateIncomplete,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                    at(ck::CKA_MODULUS, &[0xc1; 256]),
                    at(ck::CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
                ],
                ErrorCode::TemplateIncomplete,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_PRIVATE_KEY),
                    at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                    at(ck::CKA_EC_PARAMS, P256_OID_DER),
                    at(ck::CKA_VALUE, &[1; 32]),
                    at_bool(ck::CKA_ALWAYS_AUTHENTICATE, true),
                ],
                ErrorCode::AttributeValueInvalid,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
                    at_ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509),
                ],
                ErrorCode::TemplateIncomplete,
            ),
            (
                vec![
                    at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
                    at_ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509),
                    at(ck::CKA_VALUE, b"not DER"),
                ],
                ErrorCode::TemplateIncomplete,
            ),
        ];
        for (i, (template, want)) in cases.into_iter().enumerate() {
            assert_eq!(
                code(create_object(&ctx, user, &template).await),
                want,
                "case {i}"
            );
        }
        assert!(
            find_objects(&ctx, user, &[])
                .await
                .expect("find")
                .is_empty(),
            "nothing half-made"
        );
    }

    /// A self-signed certificate made with rcgen, with the fields x509-parser reads out.
    #[tokio::test]
    async fn certificates_take_their_names_from_the_der() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["bank.example".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let der = cert.der().to_vec();
        let id = create_object(
            &ctx,
            user,
            &[
                at_ulong(ck::CKA_CLASS, ck::CKO_CERTIFICATE),
                at_ulong(ck::CKA_CERTIFICATE_TYPE, ck::CKC_X_509),
                at(ck::CKA_VALUE, &der),
                at(ck::CKA_ID, b"\x01"),
            ],
        )
        .await
        .expect("cert");
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let got = get_attributes(
            &ctx,
            Session::public(t1),
            id,
            &[
                ck::CKA_SUBJECT,
                ck::CKA_ISSUER,
                ck::CKA_SERIAL_NUMBER,
                ck::CKA_CHECK_VALUE,
                ck::CKA_PRIVATE,
                ck::CKA_PUBLIC_KEY_INFO,
            ],
        )
        .await
        .expect("get");
        assert_eq!(got[0], AttrValue::Value(parsed.subject().as_raw().to_vec()));
        assert_eq!(got[1], AttrValue::Value(parsed.issuer().as_raw().to_vec()));
        let AttrValue::Value(serial) = &got[2] else {
            panic!("serial")
        };
        assert_eq!(serial[0], 0x02);
        assert_eq!(der::strip(&serial[2..]), der::strip(parsed.raw_serial()));
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &der);
        assert_eq!(got[3], AttrValue::Value(sha1.as_ref()[..3].to_vec()));
        assert_eq!(got[4], AttrValue::Value(vec![0]));
        assert_eq!(got[5], AttrValue::Value(parsed.public_key().raw.to_vec()));
        // Only CKA_ID, CKA_ISSUER, CKA_SERIAL_NUMBER (and the label) change; CKA_TRUSTED is
        // the SO's.
        set_attributes(&ctx, user, id, &[at(ck::CKA_ID, b"\x02")])
            .await
            .expect("id");
        assert_eq!(
            code(set_attributes(&ctx, user, id, &[at(ck::CKA_VALUE, b"x")]).await),
            ErrorCode::AttributeReadOnly
        );
        assert_eq!(
            code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_TRUSTED, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        set_attributes(&ctx, Session::so(t1), id, &[at_bool(ck::CKA_TRUSTED, true)])
            .await
            .expect("SO trusts");
    }

    fn p256_point(seed: u8) -> [u8; 65] {
        let sk = p256::SecretKey::from_slice(&[seed; 32]).expect("scalar");
        let point = sk.public_key().to_sec1_bytes();
        point.as_ref().try_into().expect("65 bytes")
    }

    #[tokio::test]
    async fn public_keys_by_value() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let point = p256_point(7);
        // A raw point is stored as the DER OCTET STRING.
        let id = create_object(
            &ctx,
            user,
            &[
                at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_EC),
                at(ck::CKA_EC_PARAMS, P256_OID_DER),
                at(ck::CKA_EC_POINT, &point),
            ],
        )
        .await
        .expect("ec public");
        let got = get_attributes(
            &ctx,
            user,
            id,
            &[
                ck::CKA_EC_POINT,
                ck::CKA_PRIVATE,
                ck::CKA_VERIFY,
                ck::CKA_WRAP,
                ck::CKA_LOCAL,
            ],
        )
        .await
        .expect("get");
        assert_eq!(got[0], AttrValue::Value(der::ec_point_der(&point)));
        assert_eq!(got[1], AttrValue::Value(vec![0]));
        assert_eq!(got[2], AttrValue::Value(vec![1]));
        assert_eq!(got[3], AttrValue::Value(vec![0]));
        assert_eq!(got[4], AttrValue::Value(vec![0]));
        // Usage flags of public keys change both ways.
        set_attributes(&ctx, user, id, &[at_bool(ck::CKA_WRAP, true)])
            .await
            .expect("wrap on");
        set_attributes(&ctx, user, id, &[at_bool(ck::CKA_VERIFY, false)])
            .await
            .expect("verify off");
        // The SPKI is what p256 itself encodes.
        let spki = {
            use p256::pkcs8::EncodePublicKey;
            p256::PublicKey::from_sec1_bytes(&point)
                .expect("point")
                .to_public_key_der()
                .expect("der")
                .as_bytes()
                .to_vec()
        };
        assert_eq!(
            value(&ctx, user, id, ck::CKA_PUBLIC_KEY_INFO),
            AttrValue::Value(spki)
        );

        // An RSA public key: CKA_MODULUS_BITS is computed.
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
        let public = {
            use aws_lc_rs::signature::KeyPair as _;
            rsa.public_key().clone()
        };
        let n = public.modulus().big_endian_without_leading_zero().to_vec();
        let id = create_object(
            &ctx,
            user,
            &[
                at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                at(ck::CKA_MODULUS, &n),
                at(ck::CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
            ],
        )
        .await
        .expect("rsa public");
        assert_eq!(
            value(&ctx, user, id, ck::CKA_MODULUS_BITS),
            AttrValue::Value(ulong_value(2048))
        );
        assert_eq!(
            value(&ctx, user, id, ck::CKA_PUBLIC_KEY_INFO),
            AttrValue::Value({
                use aws_lc_rs::encoding::AsDer;
                let der: aws_lc_rs::encoding::PublicKeyX509Der<'_> = public.as_der().expect("der");
                der.as_ref().to_vec()
            })
        );
        assert_eq!(
            code(
                create_object(
                    &ctx,
                    user,
                    &[
                        at_ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                        at_ulong(ck::CKA_KEY_TYPE, ck::CKK_RSA),
                        at(ck::CKA_MODULUS, &n),
                        at(ck::CKA_PUBLIC_EXPONENT, &[1, 0, 1]),
                        at_ulong(ck::CKA_MODULUS_BITS, 1024),
                    ],
                )
                .await
            ),
            ErrorCode::TemplateInconsistent
        );
    }

    #[tokio::test]
    async fn secret_keys_by_value_stay_secret() {
        let Fixture { ctx, t1, .. } = fixture();
        let user = Session::user(t1);
        let id = create_object(
            &ctx,
            user,
            &[
                at_ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
                at_ulong(ck::CKA_KEY_TYPE, ck::CKK_AES),
                at(ck::CKA_VALUE, &[0x42; 32]),
                at_bool(ck::CKA_SENSITIVE, false),
                at_bool(ck::CKA_EXTRACTABLE, true),
            ],
        )
        .await
        .expect("aes");
        let o = ctx.state.object(&id).expect("object");
        assert!(o.record.blob.is_some());
        assert!(
            o.record
                .attrs
                .values()
                .all(|v| !v.windows(32).any(|w| w == [0x42; 32])),
            "the key value is not in the record"
        );
        let got = get_attributes(
            &ctx,
            user,
            id,
            &[
                ck::CKA_VALUE,
                ck::CKA_VALUE_LEN,
                ck::CKA_LOCAL,
                ck::CKA_ALWAYS_SENSITIVE,
                ck::CKA_NEVER_EXTRACTABLE,
                ck::CKA_KEY_GEN_MECHANISM,
                ck::CKA_PRIVATE,
                ck::CKA_ENCRYPT,
                ck::CKA_WRAP,
                ck::CKA_MODULUS,
            ],
        )
        .await
        .expect("get");
        assert_eq!(got[0], AttrValue::Sensitive);
        assert_eq!(got[1], AttrValue::Value(ulong_value(32)));
        assert_eq!(got[2], AttrValue::Value(vec![0]));
        assert_eq!(got[3], AttrValue::Value(vec![0]));
        assert_eq!(got[4], AttrValue::Value(vec![0]));
        assert_eq!(
            got[5],
            AttrValue::Value(ulong_value(ck::CK_UNAVAILABLE_INFORMATION))
        );
        assert_eq!(got[6], AttrValue::Value(vec![1]));
        assert_eq!(got[7], AttrValue::Value(vec![1]));
        assert_eq!(got[8], AttrValue::Value(vec![0]));
        assert_eq!(got[9], AttrValue::Invalid);
        // Key material never matches a search.
        assert!(find_objects(&ctx, user, &[at(ck::CKA_VALUE, &[0x42; 32])])
            .await
            .expect("find")
            .is_empty());
        // §4.10: SENSITIVE only false → true, EXTRACTABLE only true → false; chip-bound usage
        // flags only off.
        set_attributes(&ctx, user, id, &[at_bool(ck::CKA_SENSITIVE, true)])
            .await
            .expect("sensitive");
        assert_eq!(
            code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_SENSITIVE, false)]).await),
            ErrorCode::AttributeReadOnly
        );
        set_attributes(&ctx, user, id, &[at_bool(ck::CKA_EXTRACTABLE, false)])
            .await
            .expect("unextractable");
        assert_eq!(
            code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_EXTRACTABLE, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        assert_eq!(
            code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_WRAP, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        set_attributes(&ctx, user, id, &[at_bool(ck::CKA_DECRYPT, false)])
            .await
            .expect("decrypt off");
        assert_eq!(
            code(set_attributes(&ctx, user, id, &[at_bool(ck::CKA_DECRYPT, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        // ALWAYS_SENSITIVE stays false: the key was not sensitive from the start.
        assert_eq!(
            value(&ctx, user, id, ck::CKA_ALWAYS_SENSITIVE),
            AttrValue::Value(vec![0])
        );
        // A copy shares the blob; it cannot widen usage either.
        let copy = copy_object(&ctx, user, id, &[at(ck::CKA_LABEL, b"copy")])
            .await
            .expect("copy");
        assert_eq!(
            ctx.state.object(&copy).expect("copy").record.blob,
            o.record.blob
        );
        assert_eq!(
            code(copy_object(&ctx, user, id, &[at_bool(ck::CKA_DECRYPT, true)]).await),
            ErrorCode::AttributeReadOnly
        );
        // The public session does not see the (private) key at all.
        assert_eq!(
            code(get_attributes(&ctx, Session::public(t1), id, &[ck::CKA_LABEL]).await),
            ErrorCode::UserNotLoggedIn
        );
    }

    #[test]
    fn der_helpers() {
        assert_eq!(der::strip(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(der::bit_len(&[0x01, 0x00]), 9);
        assert_eq!(der::tlv(0x04, &[1, 2]), vec![0x04, 2, 1, 2]);
        assert_eq!(der::tlv(0x04, &[0; 200])[..3], [0x04, 0x81, 200]);
        assert_eq!(der::tlv(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
        let (tag, content, whole, rest) = der::read(&[0x30, 0x81, 0x02, 9, 9, 7]).expect("read");
        assert_eq!(
            (tag, content, whole.len(), rest),
            (0x30, &[9u8, 9][..], 5, &[7u8][..])
        );
        assert!(der::read(&[0x30, 0x05, 1]).is_none());
        assert!(der::read(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        let point = p256_point(3);
        assert_eq!(der::ec_point(&point), Some(point));
        assert_eq!(der::ec_point(&der::ec_point_der(&point)), Some(point));
        assert_eq!(der::ec_point(&point[1..]), None);
        let mut compressed = point;
        compressed[0] = 2;
        assert_eq!(der::ec_point(&compressed), None);
        assert!(point_on_curve(KeyAlg::P256, &point));
        assert!(!point_on_curve(KeyAlg::Sm2, &point));
    }

    /// The PKCS#8 the node builds is what aws-lc itself writes for the same key.
    #[test]
    fn rsa_pkcs8_round_trip() {
        use aws_lc_rs::encoding::AsDer;
        let pair =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa");
        let pkcs8 = pair.as_der().expect("der");
        let parts = rsa_parts(pkcs8.as_ref());
        let refs: [&[u8]; 8] = std::array::from_fn(|i| parts[i].as_slice());
        let built = der::pkcs8_rsa(&refs);
        assert_eq!(built.as_slice(), pkcs8.as_ref());
    }

    /// `[n, e, d, p, q, dp, dq, qinv]` of an RSA PKCS#8.
    pub(crate) fn rsa_parts(pkcs8: &[u8]) -> Vec<Vec<u8>> {
        let (_, info, _, _) = der::read(pkcs8).expect("info");
        let (_, _, _, rest) = der::read(info).expect("version");
        let (_, _, _, rest) = der::read(rest).expect("algid");
        let (0x04, key, _, _) = der::read(rest).expect("octets") else {
            panic!("octets")
        };
        let (_, mut ints, _, _) = der::read(key).expect("seq");
        let mut parts = Vec::new();
        while let Some((0x02, v, _, rest)) = der::read(ints) {
            parts.push(der::strip(v).to_vec());
            ints = rest;
        }
        assert_eq!(parts.len(), 9);
        parts.remove(0);
        parts
    }
}
