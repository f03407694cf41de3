//! The cluster through `cloudkey-protocol`'s client, without the PKCS#11 module: what a server
//! application (the gateway) would do.
//!
//! Setup: `ListTokens` → the token id; one `Login` → a session grant shared by every worker (the
//! module also logs in once per slot), renewed by whichever worker finds it within a minute of
//! its expiry; `FindObjects` by label, else `GenerateKeyPair` (or `CreateObject` for the HMAC
//! key) for the signing key, and `GetAttributes` for its public key. Each worker then sends
//! `Sign` (or `GenerateKeyPair`) requests; RSA and SM2 hash in the client and send the digest,
//! as the module does. Generated keys are destroyed when the worker's session closes, unless
//! kept.
//!
//! `--config` takes client settings or the module's configuration (`pkcs11.toml`, whose
//! `[[slots]]` then name the default token); `--clients N` builds N clients (each one QUIC
//! endpoint with its own randomly chosen preferred node), shared round-robin by the workers.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use cloudkey_protocol::ck;
use cloudkey_protocol::client::{Client, ClientError, ClientSettings};
use cloudkey_protocol::msg::{
    AttrValue, Attribute, Auth, Mechanism, ObjectId, Request, Response, Secret, SignInput, TokenId,
    UserType,
};
use cloudkey_protocol::{vendor, ErrorCode};
use tokio::runtime::Handle;

use super::{About, Session, Target};
use crate::stats::{ckr_name, OpError};
use crate::workload::{
    hmac_key_value, sha256, Alg, PublicKeyBytes, Verifier, Workload, GENERATED_LABEL, P256_OID_DER,
};

/// A grant is renewed when it has less than this left.
const RENEW_BEFORE: Duration = Duration::from_secs(60);

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Client settings, or the PKCS#11 module's configuration.
    pub config: PathBuf,
    /// The token's label (default: the first `[[slots]]` of a module configuration).
    pub token: Option<String>,
    /// The user PIN.
    pub pin: String,
    /// Prefix of the signing key's label.
    pub label_prefix: String,
    /// Number of protocol clients (QUIC endpoints).
    pub clients: usize,
    /// Keep generated keys instead of destroying them at the end.
    pub keep_generated: bool,
    /// The target's name in reports.
    pub name: String,
}

/// The `CKR_*` name a PKCS#11 application would see for a protocol error code; vendor codes
/// (`Busy`, `NotLeader`, `Stale`, `Unavailable`) keep their own name after a slash.
#[must_use]
pub fn code_name(code: ErrorCode) -> String {
    let ckr = code.ckr();
    let standard = ErrorCode::ALL
        .iter()
        .find(|c| u64::from(u32::from(**c)) == ckr)
        .map_or_else(|| format!("CKR_{ckr:#x}"), |c| ckr_name(c.name()));
    if u32::from(code) & 0x8000_0000 != 0 {
        format!("{standard}/{}", code.name())
    } else {
        standard
    }
}

fn client_error(e: &ClientError) -> OpError {
    OpError::new(code_name(e.code()), e.to_string())
}

/// Reads client settings from a plain settings file or a module configuration; returns the
/// settings and the module configuration's first token, if any.
///
/// # Errors
/// If the file does not parse or the settings are invalid.
pub fn read_settings(path: &Path) -> Result<(ClientSettings, Option<String>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let first_token = table
        .get("slots")
        .and_then(|s| s.as_array())
        .and_then(|a| a.first())
        .and_then(|s| s.get("token"))
        .and_then(|t| t.as_str())
        .map(str::to_string);
    // The module's own keys; the rest are client settings.
    for k in ["slots", "log_level", "vendor_mechanisms"] {
        table.remove(k);
    }
    let mut settings: ClientSettings = table
        .try_into()
        .with_context(|| format!("{}: invalid client settings", path.display()))?;
    if let Some(dir) = path.parent() {
        settings.resolve_relative_to(dir);
    }
    settings
        .validate()
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok((settings, first_token))
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The shared login.
struct Grant {
    client: Client,
    token: TokenId,
    pin: Secret,
    current: RwLock<(Auth, u64)>,
}

impl Grant {
    async fn login(client: &Client, token: TokenId, pin: &Secret) -> Result<(Auth, u64), OpError> {
        match client
            .call(Request::Login {
                token,
                user: UserType::User,
                pin: pin.clone(),
            })
            .await
        {
            Ok(Response::Session {
                grant,
                expires_unix_ms,
            }) => Ok((
                Auth {
                    token,
                    grant: Some(grant),
                },
                expires_unix_ms,
            )),
            Ok(other) => Err(OpError::new(
                "LOADTEST_UNEXPECTED",
                format!("login answered {other:?}"),
            )),
            Err(e) => Err(client_error(&e)),
        }
    }

    /// The grant to send, renewed first when it is about to expire.
    fn auth(&self, rt: &Handle) -> Result<Auth, OpError> {
        let renew_at = |exp: u64| exp.saturating_sub(RENEW_BEFORE.as_millis() as u64);
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if now_unix_ms() < renew_at(cur.1) {
                return Ok(cur.0.clone());
            }
        }
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        // Another worker may have renewed it while this one waited for the lock.
        if now_unix_ms() >= renew_at(cur.1) {
            *cur = rt.block_on(Self::login(&self.client, self.token, &self.pin))?;
        }
        Ok(cur.0.clone())
    }
}

/// The cluster through the protocol client; see the [module docs](self).
pub struct ClientTarget {
    about: About,
    rt: Handle,
    clients: Vec<Client>,
    grant: Arc<Grant>,
    alg: Alg,
    key: Option<ObjectId>,
    keep_generated: bool,
}

async fn call(client: &Client, req: Request, what: &str) -> Result<Response> {
    client.call(req).await.map_err(|e| anyhow!("{what}: {e}"))
}

fn attr_value(r: Response, what: &str) -> Result<Vec<Vec<u8>>> {
    match r {
        Response::Attributes(v) => v
            .into_iter()
            .map(|a| match a {
                AttrValue::Value(b) => Ok(b),
                other => Err(anyhow!("{what}: {other:?}")),
            })
            .collect(),
        other => bail!("{what}: unexpected answer {other:?}"),
    }
}

fn found(r: Response, what: &str) -> Result<Vec<ObjectId>> {
    match r {
        Response::Found(ids) => Ok(ids),
        other => bail!("{what}: unexpected answer {other:?}"),
    }
}

/// Key-pair generation request parts: mechanism, public template, private template.
fn key_pair_request(
    alg: Alg,
    label: &str,
    token: bool,
    id: &[u8],
) -> (Mechanism, Vec<Attribute>, Vec<Attribute>) {
    let mut public = vec![
        Attribute::bool(ck::CKA_TOKEN, token),
        Attribute::bool(ck::CKA_VERIFY, true),
        Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
        Attribute::bytes(ck::CKA_ID, id),
    ];
    let private = vec![
        Attribute::bool(ck::CKA_TOKEN, token),
        Attribute::bool(ck::CKA_PRIVATE, true),
        Attribute::bool(ck::CKA_SENSITIVE, true),
        Attribute::bool(ck::CKA_SIGN, true),
        Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
        Attribute::bytes(ck::CKA_ID, id),
    ];
    let ckm = match alg {
        Alg::Rsa2048 => {
            public.push(Attribute::ulong(ck::CKA_MODULUS_BITS, 2048));
            public.push(Attribute::bytes(ck::CKA_PUBLIC_EXPONENT, vec![1, 0, 1]));
            ck::CKM_RSA_PKCS_KEY_PAIR_GEN
        }
        Alg::Sm2 => {
            public.push(Attribute::bytes(
                ck::CKA_EC_PARAMS,
                vendor::SM2_CURVE_OID_DER,
            ));
            ck::CKM_EC_KEY_PAIR_GEN
        }
        Alg::P256 | Alg::Hmac => {
            public.push(Attribute::bytes(ck::CKA_EC_PARAMS, P256_OID_DER));
            ck::CKM_EC_KEY_PAIR_GEN
        }
    };
    (Mechanism::new(ckm), public, private)
}

fn hmac_template(label: &str, token: bool) -> Vec<Attribute> {
    vec![
        Attribute::ulong(ck::CKA_CLASS, ck::CKO_SECRET_KEY),
        Attribute::ulong(ck::CKA_KEY_TYPE, ck::CKK_GENERIC_SECRET),
        Attribute::bytes(ck::CKA_VALUE, hmac_key_value()),
        Attribute::bool(ck::CKA_TOKEN, token),
        Attribute::bool(ck::CKA_PRIVATE, true),
        Attribute::bool(ck::CKA_SENSITIVE, true),
        Attribute::bool(ck::CKA_SIGN, true),
        Attribute::bool(ck::CKA_VERIFY, true),
        Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
    ]
}

/// Finds the signing key by label or makes it; returns it, its public key and whether it was
/// made now.
async fn prepare_key(
    client: &Client,
    auth: &Auth,
    alg: Alg,
    label: &str,
) -> Result<(ObjectId, PublicKeyBytes, bool)> {
    let secret = alg == Alg::Hmac;
    let class = if secret {
        ck::CKO_SECRET_KEY
    } else {
        ck::CKO_PRIVATE_KEY
    };
    let existing = found(
        call(
            client,
            Request::FindObjects {
                auth: auth.clone(),
                template: vec![
                    Attribute::ulong(ck::CKA_CLASS, class),
                    Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
                    Attribute::bool(ck::CKA_TOKEN, true),
                ],
            },
            "FindObjects (signing key)",
        )
        .await?,
        "FindObjects",
    )?;
    let (key, created) = match existing.first() {
        Some(k) => (*k, false),
        None if secret => match call(
            client,
            Request::CreateObject {
                auth: auth.clone(),
                template: hmac_template(label, true),
            },
            "CreateObject (HMAC key)",
        )
        .await?
        {
            Response::Object(id) => (id, true),
            other => bail!("CreateObject: unexpected answer {other:?}"),
        },
        None => {
            let mut id = vec![0u8; 8];
            let _ = aws_lc_rs::rand::fill(&mut id);
            let (mechanism, public_template, private_template) =
                key_pair_request(alg, label, true, &id);
            match call(
                client,
                Request::GenerateKeyPair {
                    auth: auth.clone(),
                    mechanism,
                    public_template,
                    private_template,
                },
                "GenerateKeyPair (signing key)",
            )
            .await?
            {
                Response::KeyPair { private, .. } => (private, true),
                other => bail!("GenerateKeyPair: unexpected answer {other:?}"),
            }
        }
    };
    if secret {
        return Ok((key, PublicKeyBytes::Hmac(hmac_key_value()), created));
    }
    let get = |object: ObjectId, types: Vec<u64>, what: &'static str| {
        let auth = auth.clone();
        async move {
            attr_value(
                call(
                    client,
                    Request::GetAttributes {
                        auth,
                        object,
                        types,
                    },
                    what,
                )
                .await?,
                what,
            )
        }
    };
    let id = get(key, vec![ck::CKA_ID], "GetAttributes (CKA_ID)")
        .await?
        .pop()
        .unwrap_or_default();
    let public = *found(
        call(
            client,
            Request::FindObjects {
                auth: auth.clone(),
                template: vec![
                    Attribute::ulong(ck::CKA_CLASS, ck::CKO_PUBLIC_KEY),
                    Attribute::bytes(ck::CKA_LABEL, label.as_bytes()),
                    Attribute::bytes(ck::CKA_ID, id),
                ],
            },
            "FindObjects (public key)",
        )
        .await?,
        "FindObjects",
    )?
    .first()
    .ok_or_else(|| {
        anyhow!("the private key {label:?} has no public key object; delete it or use --label")
    })?;
    let bytes = match alg {
        Alg::Rsa2048 => {
            let mut v = get(
                public,
                vec![ck::CKA_MODULUS, ck::CKA_PUBLIC_EXPONENT],
                "GetAttributes (modulus)",
            )
            .await?;
            let e = v.pop().unwrap_or_default();
            let n = v.pop().unwrap_or_default();
            PublicKeyBytes::Rsa { n, e }
        }
        Alg::Sm2 | Alg::P256 | Alg::Hmac => {
            let point = get(
                public,
                vec![ck::CKA_EC_POINT],
                "GetAttributes (CKA_EC_POINT)",
            )
            .await?
            .pop()
            .unwrap_or_default();
            PublicKeyBytes::ec_point(alg, point)
        }
    };
    Ok((key, bytes, created))
}

impl ClientTarget {
    /// Builds the clients, logs in and prepares the signing key when the workload signs.
    ///
    /// # Errors
    /// Unusable settings, an unknown token, a refused login, a failed key setup.
    pub fn new(o: &ClientOptions, alg: Alg, workload: Workload, rt: &Handle) -> Result<Self> {
        let (settings, first_token) = read_settings(&o.config)?;
        let label =
            o.token.clone().or(first_token).ok_or_else(|| {
                anyhow!("{} names no token: give --token LABEL", o.config.display())
            })?;
        let clients = (0..o.clients.max(1))
            .map(|_| {
                let _guard = rt.enter();
                Client::new(&settings).map_err(|e| anyhow!("client: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        let client = clients[0].clone();
        let pin = Secret::from(o.pin.as_str());
        let key_label = alg.key_label(&o.label_prefix);
        let (grant, key, verifier, note) = rt.block_on(async {
            let tokens = match call(&client, Request::ListTokens, "ListTokens").await? {
                Response::Tokens(t) => t,
                other => bail!("ListTokens: unexpected answer {other:?}"),
            };
            let token = tokens
                .iter()
                .find(|t| t.label == label)
                .map(|t| t.id)
                .ok_or_else(|| anyhow!("the cluster has no token {label:?}"))?;
            let (auth, expires) = Grant::login(&client, token, &pin)
                .await
                .map_err(|e| anyhow!("Login to {label:?}: {e}"))?;
            let (key, verifier, note) = if workload.signs() {
                let (key, public, created) = prepare_key(&client, &auth, alg, &key_label).await?;
                let note = if created { "created" } else { "found" };
                (Some(key), Some(Verifier::new(&public)?), note)
            } else {
                (None, None, "none needed")
            };
            let grant = Grant {
                client: client.clone(),
                token,
                pin: pin.clone(),
                current: RwLock::new((auth, expires)),
            };
            Ok((grant, key, verifier, note))
        })?;
        let description = format!(
            "cloudkey protocol client ({} client(s)) over {:?}, token {label:?}, key {key_label:?} \
             ({note})",
            clients.len(),
            settings.endpoints,
        );
        Ok(Self {
            about: About {
                name: o.name.clone(),
                description,
                verifier,
            },
            rt: rt.clone(),
            clients,
            grant: Arc::new(grant),
            alg,
            key,
            keep_generated: o.keep_generated,
        })
    }
}

impl Target for ClientTarget {
    fn about(&self) -> &About {
        &self.about
    }

    fn open_session(&self, worker: usize) -> Result<Box<dyn Session>> {
        Ok(Box::new(ClientSession {
            client: self.clients[worker % self.clients.len()].clone(),
            grant: self.grant.clone(),
            rt: self.rt.clone(),
            alg: self.alg,
            key: self.key,
            generated: Vec::new(),
            keep_generated: self.keep_generated,
        }))
    }
}

struct ClientSession {
    client: Client,
    grant: Arc<Grant>,
    rt: Handle,
    alg: Alg,
    key: Option<ObjectId>,
    generated: Vec<ObjectId>,
    keep_generated: bool,
}

impl Session for ClientSession {
    fn sign(&mut self, data: &[u8]) -> Result<Vec<u8>, OpError> {
        let key = self
            .key
            .ok_or_else(|| OpError::new("LOADTEST_NO_KEY", "no signing key was prepared"))?;
        let (ckm, input) = match self.alg {
            Alg::P256 => (ck::CKM_ECDSA, SignInput::Data(data.to_vec())),
            Alg::Rsa2048 => (ck::CKM_SHA256_RSA_PKCS, SignInput::Digest(sha256(data))),
            // The node computes Z and e = SM3(Z || M) from the message.
            Alg::Sm2 => (vendor::CKM_SM3_SM2, SignInput::Data(data.to_vec())),
            Alg::Hmac => (ck::CKM_SHA256_HMAC, SignInput::Data(data.to_vec())),
        };
        let req = Request::Sign {
            auth: self.grant.auth(&self.rt)?,
            key,
            mechanism: Mechanism::new(ckm),
            input,
        };
        match self.rt.block_on(self.client.call(req)) {
            Ok(Response::Bytes(sig)) => Ok(sig),
            Ok(other) => Err(OpError::new(
                "LOADTEST_UNEXPECTED",
                format!("sign answered {other:?}"),
            )),
            Err(e) => Err(client_error(&e)),
        }
    }

    fn generate(&mut self) -> Result<(), OpError> {
        let auth = self.grant.auth(&self.rt)?;
        let req = if self.alg == Alg::Hmac {
            Request::GenerateKey {
                auth,
                mechanism: Mechanism::new(ck::CKM_GENERIC_SECRET_KEY_GEN),
                template: vec![
                    Attribute::bool(ck::CKA_TOKEN, false),
                    Attribute::bool(ck::CKA_SIGN, true),
                    Attribute::bool(ck::CKA_SENSITIVE, true),
                    Attribute::ulong(ck::CKA_VALUE_LEN, 32),
                    Attribute::bytes(ck::CKA_LABEL, GENERATED_LABEL.as_bytes()),
                ],
            }
        } else {
            let (mechanism, public_template, private_template) =
                key_pair_request(self.alg, GENERATED_LABEL, false, b"loadtest");
            Request::GenerateKeyPair {
                auth,
                mechanism,
                public_template,
                private_template,
            }
        };
        match self.rt.block_on(self.client.call(req)) {
            Ok(Response::KeyPair { public, private }) => {
                self.generated.push(public);
                self.generated.push(private);
                Ok(())
            }
            Ok(Response::Object(id)) => {
                self.generated.push(id);
                Ok(())
            }
            Ok(other) => Err(OpError::new(
                "LOADTEST_UNEXPECTED",
                format!("key generation answered {other:?}"),
            )),
            Err(e) => Err(client_error(&e)),
        }
    }

    fn close(self: Box<Self>) -> Result<()> {
        if self.keep_generated || self.generated.is_empty() {
            return Ok(());
        }
        let mut failed = 0usize;
        let mut first = None;
        for object in &self.generated {
            let auth = match self.grant.auth(&self.rt) {
                Ok(a) => a,
                Err(e) => bail!("cannot log in to destroy generated keys: {e}"),
            };
            if let Err(e) = self.rt.block_on(self.client.call(Request::DestroyObject {
                auth,
                object: *object,
            })) {
                failed += 1;
                first.get_or_insert(e);
            }
        }
        match first {
            None => Ok(()),
            Some(e) => bail!(
                "{failed} of {} generated objects were not destroyed (first: {e})",
                self.generated.len()
            ),
        }
    }
}
