//! Any PKCS#11 module through the `cryptoki` crate: cloudkey's `libcloudkey_pkcs11.so`
//! (configured by `CLOUDKEY_PKCS11_CONFIG`, as for any application), SoftHSMv2, or another
//! vendor's module.
//!
//! One `Pkcs11` context per target, initialised with `CKF_OS_LOCKING_OK`; one session logged in
//! as the user, kept open for the whole run (logins are per application and slot, and closing
//! the last session of a slot logs out); one read-write session per worker. The signing key is
//! a token object found by its label (`<prefix>-<alg>`) or generated (imported, for HMAC) at
//! setup; the public key is read back for the independent verifier. Generated keys are session
//! objects, destroyed by the module when their worker's session closes.

use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use cloudkey_protocol::vendor;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::vendor_defined::VendorDefinedMechanism;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session as CkSession, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;

use super::{About, Session, Target};
use crate::stats::{ckr_name, OpError};
use crate::workload::{
    hmac_key_value, Alg, PublicKeyBytes, Verifier, Workload, GENERATED_LABEL, P256_OID_DER,
};

/// How to reach the token.
#[derive(Clone, Debug)]
pub struct Pkcs11Options {
    /// The module's shared object.
    pub module: PathBuf,
    /// The token's label (trailing blanks ignored).
    pub token: Option<String>,
    /// The slot id (as `pkcs11-tool --slot` takes it).
    pub slot: Option<u64>,
    /// The user PIN.
    pub pin: String,
    /// Prefix of the signing key's label.
    pub label_prefix: String,
    /// The target's name in reports.
    pub name: String,
}

/// A PKCS#11 module, set up; see the [module docs](self).
pub struct Pkcs11Target {
    about: About,
    ctx: Pkcs11,
    slot: Slot,
    alg: Alg,
    key: Option<ObjectHandle>,
    /// Holds the login for the whole run (never used for operations).
    _login: Mutex<CkSession>,
}

/// The `CKR_*` name of a cryptoki error.
fn op_error(e: &CkError) -> OpError {
    match e {
        CkError::Pkcs11(RvError::VendorDefined(v), f) => {
            OpError::new(format!("CKR_VENDOR_DEFINED_{v:#x}"), format!("{f}"))
        }
        CkError::Pkcs11(rv, f) => {
            let code = ckr_name(&format!("{rv:?}"));
            let detail = format!("{f} returned {code}");
            OpError::new(code, detail)
        }
        other => OpError::new("LOADTEST_CRYPTOKI", other.to_string()),
    }
}

fn sm3_sm2() -> Result<MechanismType> {
    MechanismType::new_vendor_defined(vendor::CKM_SM3_SM2)
        .map_err(|e| anyhow!("vendor mechanism CKM_SM3_SM2: {e}"))
}

/// The signing mechanism of `alg` (see [`crate::workload`]).
fn sign_mechanism(alg: Alg, sm2: MechanismType) -> Mechanism<'static> {
    match alg {
        Alg::P256 => Mechanism::Ecdsa,
        Alg::Rsa2048 => Mechanism::Sha256RsaPkcs,
        Alg::Sm2 => Mechanism::VendorDefined(VendorDefinedMechanism::new::<()>(sm2, None)),
        Alg::Hmac => Mechanism::Sha256Hmac,
    }
}

/// The key-generation mechanism of `alg`.
fn generation_mechanism(alg: Alg) -> MechanismType {
    match alg {
        Alg::P256 | Alg::Sm2 => MechanismType::ECC_KEY_PAIR_GEN,
        Alg::Rsa2048 => MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        Alg::Hmac => MechanismType::GENERIC_SECRET_KEY_GEN,
    }
}

/// Key-pair generation: mechanism, public template, private template (label, token, id and
/// the usage attributes).
fn key_pair_templates(
    alg: Alg,
    label: &str,
    token: bool,
    id: &[u8],
) -> (Mechanism<'static>, Vec<Attribute>, Vec<Attribute>) {
    let mut public = vec![
        Attribute::Token(token),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let private = vec![
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ];
    let mech = match alg {
        Alg::Rsa2048 => {
            public.push(Attribute::ModulusBits(2048.into()));
            public.push(Attribute::PublicExponent(vec![1, 0, 1]));
            Mechanism::RsaPkcsKeyPairGen
        }
        Alg::Sm2 => {
            public.push(Attribute::EcParams(vendor::SM2_CURVE_OID_DER.to_vec()));
            Mechanism::EccKeyPairGen
        }
        Alg::P256 | Alg::Hmac => {
            public.push(Attribute::EcParams(P256_OID_DER.to_vec()));
            Mechanism::EccKeyPairGen
        }
    };
    (mech, public, private)
}

/// The HMAC key's template (imported with the known test value).
fn hmac_template(label: &str, token: bool, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::GENERIC_SECRET),
        Attribute::Value(hmac_key_value()),
        Attribute::Token(token),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Sign(true),
        Attribute::Verify(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

fn random_id() -> Vec<u8> {
    let mut id = vec![0u8; 8];
    // A failing system RNG leaves an all-zero id, which only weakens the pairing of duplicates.
    let _ = aws_lc_rs::rand::fill(&mut id);
    id
}

fn find_slot(ctx: &Pkcs11, o: &Pkcs11Options) -> Result<(Slot, String)> {
    let slots = ctx.get_slots_with_token().context("C_GetSlotList")?;
    let labelled = |s: &Slot| -> Result<String> {
        Ok(ctx
            .get_token_info(*s)
            .context("C_GetTokenInfo")?
            .label()
            .trim_end()
            .to_string())
    };
    match (&o.token, o.slot) {
        (Some(_), Some(_)) => bail!("give --token or --slot, not both"),
        (None, Some(id)) => {
            let slot = slots
                .iter()
                .find(|s| s.id() == id)
                .copied()
                .ok_or_else(|| anyhow!("no slot {id} with a token"))?;
            Ok((slot, labelled(&slot)?))
        }
        (Some(label), None) => {
            for s in &slots {
                if labelled(s)? == label.trim_end() {
                    return Ok((*s, label.clone()));
                }
            }
            bail!("no token labelled {label:?} in {}", o.module.display())
        }
        (None, None) => {
            let slot = *slots
                .first()
                .ok_or_else(|| anyhow!("{} shows no token", o.module.display()))?;
            Ok((slot, labelled(&slot)?))
        }
    }
}

/// Finds the signing key by label or makes it; returns it and its public key.
fn prepare_key(
    s: &CkSession,
    alg: Alg,
    label: &str,
) -> Result<(ObjectHandle, PublicKeyBytes, bool)> {
    let secret = matches!(alg, Alg::Hmac);
    let class = if secret {
        ObjectClass::SECRET_KEY
    } else {
        ObjectClass::PRIVATE_KEY
    };
    let found = s
        .find_objects(&[
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Token(true),
        ])
        .context("C_FindObjects (signing key)")?;
    let (key, created) = if let Some(k) = found.first() {
        (*k, false)
    } else {
        let id = random_id();
        let key = if secret {
            s.create_object(&hmac_template(label, true, &id))
                .context("C_CreateObject (HMAC key)")?
        } else {
            let (mech, public, private) = key_pair_templates(alg, label, true, &id);
            s.generate_key_pair(&mech, &public, &private)
                .context("C_GenerateKeyPair (signing key)")?
                .1
        };
        (key, true)
    };
    if secret {
        return Ok((key, PublicKeyBytes::Hmac(hmac_key_value()), created));
    }
    // The public key of the same pair: same label and CKA_ID.
    let id = match s
        .get_attributes(key, &[AttributeType::Id])
        .context("C_GetAttributeValue (CKA_ID)")?
        .into_iter()
        .next()
    {
        Some(Attribute::Id(id)) => id,
        _ => Vec::new(),
    };
    let mut template = vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ];
    if !id.is_empty() {
        template.push(Attribute::Id(id));
    }
    let public = *s
        .find_objects(&template)
        .context("C_FindObjects (public key)")?
        .first()
        .ok_or_else(|| {
            anyhow!("the private key {label:?} has no public key object; delete it or use --label")
        })?;
    let bytes = if matches!(alg, Alg::Rsa2048) {
        let attrs = s
            .get_attributes(
                public,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .context("C_GetAttributeValue (modulus)")?;
        let (mut n, mut e) = (Vec::new(), Vec::new());
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = v,
                Attribute::PublicExponent(v) => e = v,
                _ => {}
            }
        }
        PublicKeyBytes::Rsa { n, e }
    } else {
        let point = match s
            .get_attributes(public, &[AttributeType::EcPoint])
            .context("C_GetAttributeValue (CKA_EC_POINT)")?
            .into_iter()
            .next()
        {
            Some(Attribute::EcPoint(p)) => p,
            _ => bail!("the public key {label:?} has no CKA_EC_POINT"),
        };
        PublicKeyBytes::ec_point(alg, point)
    };
    Ok((key, bytes, created))
}

impl Pkcs11Target {
    /// Loads and initialises the module, finds the slot, logs in, and prepares the signing key
    /// when the workload signs.
    ///
    /// # Errors
    /// Any PKCS#11 failure during setup, with the function that failed.
    pub fn new(o: &Pkcs11Options, alg: Alg, workload: Workload) -> Result<Self> {
        let ctx =
            Pkcs11::new(&o.module).with_context(|| format!("loading {}", o.module.display()))?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .with_context(|| format!("C_Initialize of {}", o.module.display()))?;
        let (slot, token) = find_slot(&ctx, o)?;
        let login = ctx.open_rw_session(slot).context("C_OpenSession")?;
        match login.login(UserType::User, Some(&AuthPin::from(o.pin.as_str()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(e).context("C_Login"),
        }
        let label = alg.key_label(&o.label_prefix);
        // Refuse an algorithm the token lacks before making a key for it.
        let sm2 = sm3_sm2()?;
        let needed: Vec<MechanismType> = [
            workload
                .signs()
                .then(|| sign_mechanism(alg, sm2).mechanism_type()),
            workload.generates().then(|| generation_mechanism(alg)),
        ]
        .into_iter()
        .flatten()
        .collect();
        // C_GetMechanismInfo, not cryptoki's mechanism list, which leaves out vendor numbers.
        if let Some(missing) = needed
            .iter()
            .find(|m| ctx.get_mechanism_info(slot, **m).is_err())
        {
            bail!(
                "token {token:?} of {} does not offer {missing} (needed for {alg})",
                o.module.display()
            );
        }
        let (key, verifier, note) = if workload.signs() {
            let (key, public, created) = prepare_key(&login, alg, &label)?;
            let note = if created { "created" } else { "found" };
            (Some(key), Some(Verifier::new(&public)?), note)
        } else {
            (None, None, "none needed")
        };
        let info = ctx.get_library_info().context("C_GetInfo")?;
        let description = format!(
            "PKCS#11 module {} ({} {}, v{}), slot {} token {token:?}, key {label:?} ({note})",
            o.module.display(),
            info.manufacturer_id().trim_end(),
            info.library_description().trim_end(),
            info.library_version(),
            slot.id(),
        );
        Ok(Self {
            about: About {
                name: o.name.clone(),
                description,
                verifier,
            },
            ctx,
            slot,
            alg,
            key,
            _login: Mutex::new(login),
        })
    }
}

impl Target for Pkcs11Target {
    fn about(&self) -> &About {
        &self.about
    }

    fn open_session(&self, _worker: usize) -> Result<Box<dyn Session>> {
        let session = self
            .ctx
            .open_rw_session(self.slot)
            .context("C_OpenSession")?;
        Ok(Box::new(Pkcs11Session {
            session,
            key: self.key,
            alg: self.alg,
            sm2: sm3_sm2()?,
        }))
    }
}

struct Pkcs11Session {
    session: CkSession,
    key: Option<ObjectHandle>,
    alg: Alg,
    sm2: MechanismType,
}

impl Session for Pkcs11Session {
    fn sign(&mut self, data: &[u8]) -> Result<Vec<u8>, OpError> {
        let key = self
            .key
            .ok_or_else(|| OpError::new("LOADTEST_NO_KEY", "no signing key was prepared"))?;
        self.session
            .sign(&sign_mechanism(self.alg, self.sm2), key, data)
            .map_err(|e| op_error(&e))
    }

    fn generate(&mut self) -> Result<(), OpError> {
        if self.alg == Alg::Hmac {
            let tmpl = [
                Attribute::Token(false),
                Attribute::Sign(true),
                Attribute::Sensitive(true),
                Attribute::ValueLen(32.into()),
                Attribute::Label(GENERATED_LABEL.as_bytes().to_vec()),
            ];
            self.session
                .generate_key(&Mechanism::GenericSecretKeyGen, &tmpl)
                .map(|_| ())
                .map_err(|e| op_error(&e))
        } else {
            let (mech, public, private) =
                key_pair_templates(self.alg, GENERATED_LABEL, false, b"loadtest");
            self.session
                .generate_key_pair(&mech, &public, &private)
                .map(|_| ())
                .map_err(|e| op_error(&e))
        }
    }

    fn close(self: Box<Self>) -> Result<()> {
        // Closing destroys the session's objects (the generated keys).
        self.session.close().context("C_CloseSession")
    }
}
