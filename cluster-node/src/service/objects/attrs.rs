//! The attribute tables: which attributes each class of object has, how they are encoded,
//! who supplies them, their defaults and how they may change (*Base* §4.4-§4.10).

use cloudkey_protocol::ck;

use crate::service::mechanism::KeyAlg;

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
pub(super) enum Role {
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
pub(super) enum Change {
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
pub(super) enum DefaultValue {
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
pub(super) struct Spec {
    pub(super) ty: u64,
    pub(super) kind: Kind,
    pub(super) role: Role,
    /// Rule for `C_SetAttributeValue`.
    pub(super) set: Change,
    /// Rule for `C_CopyObject`.
    pub(super) copy: Change,
    pub(super) default: DefaultValue,
}

pub(super) const fn a(
    ty: u64,
    kind: Kind,
    role: Role,
    change: Change,
    default: DefaultValue,
) -> Spec {
    Spec {
        ty,
        kind,
        role,
        set: change,
        copy: change,
        default,
    }
}

pub(super) const fn usage(ty: u64) -> Spec {
    a(
        ty,
        Kind::Bool,
        Role::Free,
        Change::Usage,
        DefaultValue::Usage,
    )
}

pub(super) const fn bytes(ty: u64, change: Change) -> Spec {
    a(ty, Kind::Bytes, Role::Free, change, DefaultValue::Empty)
}

/// Storage objects, *Base* §4.4.
pub(super) const STORAGE: &[Spec] = &[
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
pub(super) const DATA: &[Spec] = &[
    bytes(ck::CKA_APPLICATION, Change::Free),
    bytes(ck::CKA_OBJECT_ID, Change::Free),
    bytes(ck::CKA_VALUE, Change::Free),
];

/// Certificates, *Base* §4.6.2.
pub(super) const CERTIFICATE: &[Spec] = &[
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
pub(super) const X509: &[Spec] = &[
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
pub(super) const KEY: &[Spec] = &[
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
pub(super) const PUBLIC_KEY: &[Spec] = &[
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
pub(super) const SENSITIVE: Spec = a(
    ck::CKA_SENSITIVE,
    Kind::Bool,
    Role::Free,
    Change::ToTrue,
    DefaultValue::True,
);
pub(super) const EXTRACTABLE: Spec = a(
    ck::CKA_EXTRACTABLE,
    Kind::Bool,
    Role::Free,
    Change::ToFalse,
    DefaultValue::False,
);
pub(super) const ALWAYS_SENSITIVE: Spec = a(
    ck::CKA_ALWAYS_SENSITIVE,
    Kind::Bool,
    Role::TokenSet,
    Change::Never,
    DefaultValue::None,
);
pub(super) const NEVER_EXTRACTABLE: Spec = a(
    ck::CKA_NEVER_EXTRACTABLE,
    Kind::Bool,
    Role::TokenSet,
    Change::Never,
    DefaultValue::None,
);
pub(super) const WRAP_WITH_TRUSTED: Spec = a(
    ck::CKA_WRAP_WITH_TRUSTED,
    Kind::Bool,
    Role::Free,
    Change::ToTrue,
    DefaultValue::False,
);

/// Private keys, *Base* §4.9.
pub(super) const PRIVATE_KEY: &[Spec] = &[
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
pub(super) const SECRET_KEY: &[Spec] = &[
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
pub(super) const EC_KEY: &[Spec] = &[
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

pub(super) const EC_PRIVATE: &[Spec] = &[a(
    ck::CKA_VALUE,
    Kind::Bytes,
    Role::Material,
    Change::Never,
    DefaultValue::None,
)];

/// RSA keys (*Mech* §2.1.2, §2.1.3); `CKA_MODULUS_BITS` on private keys too.
pub(super) const RSA_KEY: &[Spec] = &[
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

pub(super) const RSA_PRIVATE: &[Spec] = &[
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
pub(super) fn tables(class: u64, alg: Option<KeyAlg>) -> [&'static [Spec]; 5] {
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

pub(super) fn spec(class: u64, alg: Option<KeyAlg>, ty: u64) -> Option<&'static Spec> {
    tables(class, alg)
        .into_iter()
        .flat_map(|t| t.iter())
        .find(|s| s.ty == ty)
}

/// The default of a usage flag: what the key type can do, except wrapping, unwrapping,
/// derivation and the recover variants.
pub(super) fn usage_default(ty: u64, alg: Option<KeyAlg>) -> bool {
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
