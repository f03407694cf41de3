//! Request helpers shared by the integration tests: tokens, logins, EC keys, signatures checked
//! independently of the cluster (aws-lc-rs), and error-code matching.

use anyhow::{anyhow, bail, Result};
use aws_lc_rs::digest;
use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use cloudkey_protocol::ck;
use cloudkey_protocol::client::{Client, ClientError};
use cloudkey_protocol::msg::{
    AttrValue, Attribute, Auth, Mechanism, ObjectId, Request, Response, Secret, SignInput, TokenId,
    UserType,
};
use cloudkey_protocol::ErrorCode;

/// SO PIN of every test token.
pub const SO_PIN: &str = "so-pin-8f3e2a71";
/// User PIN of every test token.
pub const USER_PIN: &str = "user-pin-5c09d4b6";
/// DER of the P-256 curve OID (`CKA_EC_PARAMS`).
pub const P256_PARAMS: &[u8] = &[0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];

/// A key pair's object ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyPair {
    /// Public key object.
    pub public: ObjectId,
    /// Private key object.
    pub private: ObjectId,
}

/// The node's error code, if the node refused.
pub fn remote_code(e: &ClientError) -> Option<ErrorCode> {
    match e {
        ClientError::Remote(w) => Some(w.code),
        _ => None,
    }
}

/// Fails unless `r` is a refusal with one of `codes`.
pub fn expect_code<T: std::fmt::Debug>(
    what: &str,
    r: Result<T, ClientError>,
    codes: &[ErrorCode],
) -> Result<ErrorCode> {
    match r {
        Err(e) => match remote_code(&e) {
            Some(c) if codes.contains(&c) => Ok(c),
            _ => bail!("{what}: expected one of {codes:?}, got error {e}"),
        },
        Ok(v) => bail!("{what}: expected one of {codes:?}, got success {v:?}"),
    }
}

/// `client.call` with the request name in the error.
pub async fn call(client: &Client, req: Request) -> Result<Response> {
    let name = req.name();
    client.call(req).await.map_err(|e| anyhow!("{name}: {e}"))
}

/// Creates a token with [`SO_PIN`] and [`USER_PIN`] (operator client).
pub async fn create_token(admin: &Client, label: &str) -> Result<TokenId> {
    let req = Request::CreateToken {
        label: label.into(),
        so_pin: Secret::from(SO_PIN),
        user_pin: Some(Secret::from(USER_PIN)),
    };
    match call(admin, req).await? {
        Response::Token(t) => Ok(t.id),
        r => bail!("create token: unexpected {r:?}"),
    }
}

/// The `Login` request for the user.
pub fn login_req(token: TokenId, pin: &str) -> Request {
    Request::Login {
        token,
        user: UserType::User,
        pin: Secret::from(pin),
    }
}

/// Turns a `Login` answer into an [`Auth`].
pub fn auth_of(token: TokenId, r: Response) -> Result<Auth> {
    match r {
        Response::Session { grant, .. } => Ok(Auth {
            token,
            grant: Some(grant),
        }),
        r => bail!("login: unexpected {r:?}"),
    }
}

/// Logs the user in with [`USER_PIN`].
pub async fn login(client: &Client, token: TokenId) -> Result<Auth> {
    auth_of(token, call(client, login_req(token, USER_PIN)).await?)
}

/// The `GenerateKeyPair` request for a P-256 signing key pair on the token (persistent,
/// private, sensitive, not extractable).
pub fn gen_ec_req(auth: &Auth, label: &str, derive: bool) -> Request {
    let label = label.as_bytes().to_vec();
    Request::GenerateKeyPair {
        auth: auth.clone(),
        mechanism: Mechanism::new(ck::CKM_EC_KEY_PAIR_GEN),
        public_template: vec![
            Attribute::bytes(ck::CKA_EC_PARAMS, P256_PARAMS),
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_VERIFY, true),
            Attribute::bytes(ck::CKA_LABEL, label.clone()),
            Attribute::bytes(ck::CKA_ID, label.clone()),
        ],
        private_template: vec![
            Attribute::bool(ck::CKA_TOKEN, true),
            Attribute::bool(ck::CKA_PRIVATE, true),
            Attribute::bool(ck::CKA_SENSITIVE, true),
            Attribute::bool(ck::CKA_EXTRACTABLE, false),
            Attribute::bool(ck::CKA_SIGN, true),
            Attribute::bool(ck::CKA_DERIVE, derive),
            Attribute::bytes(ck::CKA_LABEL, label.clone()),
            Attribute::bytes(ck::CKA_ID, label),
        ],
    }
}

/// The key pair of a `GenerateKeyPair` answer.
pub fn key_pair_of(r: Response) -> Result<KeyPair> {
    match r {
        Response::KeyPair { public, private } => Ok(KeyPair { public, private }),
        r => bail!("generate key pair: unexpected {r:?}"),
    }
}

/// Generates a P-256 signing key pair.
pub async fn generate_ec(client: &Client, auth: &Auth, label: &str) -> Result<KeyPair> {
    key_pair_of(call(client, gen_ec_req(auth, label, false)).await?)
}

/// SHA-256 of `msg`.
pub fn sha256(msg: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, msg).as_ref().to_vec()
}

/// The `Sign` request: `CKM_ECDSA` over SHA-256(`msg`).
pub fn sign_req(auth: &Auth, key: ObjectId, msg: &[u8]) -> Request {
    Request::Sign {
        auth: auth.clone(),
        key,
        mechanism: Mechanism::new(ck::CKM_ECDSA),
        input: SignInput::Data(sha256(msg)),
    }
}

/// The signature of a `Sign` answer.
pub fn bytes_of(r: Response) -> Result<Vec<u8>> {
    match r {
        Response::Bytes(b) => Ok(b),
        r => bail!("expected bytes, got {r:?}"),
    }
}

/// The uncompressed point (65 bytes) of an EC public key object, from its `CKA_EC_POINT` (a DER
/// OCTET STRING, or the raw point).
pub fn point_of(r: Response) -> Result<Vec<u8>> {
    match r {
        Response::Attributes(v) => match v.as_slice() {
            [AttrValue::Value(p)] => Ok(unwrap_octet_string(p)),
            other => bail!("CKA_EC_POINT: {other:?}"),
        },
        r => bail!("get attributes: unexpected {r:?}"),
    }
}

/// `CKA_EC_POINT` of `public`, asked through `client.call`.
pub async fn ec_point(client: &Client, auth: &Auth, public: ObjectId) -> Result<Vec<u8>> {
    point_of(call(client, point_req(auth, public)).await?)
}

/// The `GetAttributes` request for `CKA_EC_POINT`.
pub fn point_req(auth: &Auth, public: ObjectId) -> Request {
    Request::GetAttributes {
        auth: auth.clone(),
        object: public,
        types: vec![ck::CKA_EC_POINT],
    }
}

fn unwrap_octet_string(p: &[u8]) -> Vec<u8> {
    match p {
        [0x04, len, rest @ ..] if usize::from(*len) == rest.len() && rest.first() == Some(&4) => {
            rest.to_vec()
        }
        _ => p.to_vec(),
    }
}

/// Verifies a raw `r || s` P-256 signature of SHA-256(`msg`) with an uncompressed point,
/// independently of the cluster.
pub fn verify(point: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
        .verify(msg, sig)
        .is_ok()
}
