//! `cloudkey-chip`: the crypto chips a cloudkey node drives.
//!
//! * [`Chip`]: a chip executes one [`Request`] and returns its [`Response`] ([`wire`]); the
//!   typed calls of [`ChipExt`] (identity and self-test, key generation, loading and evicting
//!   key blobs, signing, verification, encryption, key wrapping, ECDH derivation, randomness and
//!   the chip-to-chip transfer of the cluster's domain key) are built on that one method.
//! * [`soft::SoftChip`]: the software chip (emulator) that holds its secrets in memory only.
//! * [`frame`] and [`wire`]: the serial protocol (see `PROTOCOL.md` beside this crate), and
//!   [`serial::SerialChip`], the host side of it. The bin `cloudkey-chip-emulator` serves a
//!   software chip over a pseudo-terminal or a serial device with that protocol.
//! * [`pool::ChipPool`]: several chips behind one async handle, with bounded queues, a per-chip
//!   LRU of loaded keys and least-queued scheduling; its typed calls are [`pool::PoolExt`].
//!
//! # Why the trait is blocking
//!
//! A chip is a device that executes one command at a time: a serial chip owns a UART, and even
//! the software chip spends its time in CPU-bound arithmetic. Making the trait `async` would put
//! that work (or a blocking read of a serial line) on the async runtime's worker threads, which
//! the signing core must never do. So [`Chip`] is a plain blocking trait with a `&self` method,
//! and the *pool* is the async boundary: each chip gets a dedicated OS thread fed by a bounded
//! queue, and async callers await a reply. Implementations are `Send + Sync` and may also be
//! called directly from ordinary threads (tests, the emulator, the load tester's `chip` target).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod error;
pub mod frame;
pub mod identity;
pub mod nvram;
pub mod pool;
pub mod serial;
pub mod soft;
pub mod types;
pub mod wire;

pub use error::{ChipError, Result};
pub use types::*;
pub use wire::{Request, Response};

/// A crypto chip: something that executes chip commands.
///
/// Private and secret keys never leave a chip in clear: a chip returns them only as
/// [`KeyBlob`]s (encrypted and authenticated under the cluster's domain key), and uses a key
/// only after its blob was [loaded](ChipExt::load_key) into one of its limited key slots.
///
/// The one required method executes one [`Request`] and returns its [`Response`]; the typed
/// calls (`sign`, `generate_key_pair`, ...) are the provided helpers of [`ChipExt`], which every
/// chip has. [`execute`](Chip::execute) blocks until the chip has answered; see the crate docs
/// for why.
pub trait Chip: Send + Sync {
    /// Executes one command. The response has the shape the command's [`Request`] variant
    /// documents (a [`Response::NewKey`] for a key generation, and so on).
    ///
    /// # Errors
    /// The chip's refusal of the command (the errors of each command are listed at its
    /// [`ChipExt`] helper); transport errors for a remote chip.
    fn execute(&self, request: &Request) -> Result<Response>;
}

/// The typed chip calls: one helper per command, each building its [`Request`] and taking the
/// answer out of the [`Response`]. Implemented for every [`Chip`].
pub trait ChipExt: Chip {
    /// Model, serial number, firmware, slot usage, identity key and domain state.
    ///
    /// # Errors
    /// Transport errors for a remote chip.
    fn info(&self) -> Result<ChipInfo> {
        self.execute(&Request::Info)?.into_info()
    }

    /// Runs the chip's known-answer self tests.
    ///
    /// # Errors
    /// [`ChipError::SelfTestFailed`] naming the failed test.
    fn self_test(&self) -> Result<()> {
        self.execute(&Request::SelfTest)?.into_done()
    }

    /// Generates a key pair (EC P-256, SM2, RSA-2048/3072) inside the chip and returns its public
    /// part and its blob. The key is not loaded into a slot.
    ///
    /// # Errors
    /// [`ChipError::NoDomain`] before the chip has a domain key; [`ChipError::KeySizeRange`] or
    /// [`ChipError::KeyTypeInconsistent`] for a spec that is not a key pair.
    fn generate_key_pair(&self, template: KeyTemplate) -> Result<NewKey> {
        self.execute(&Request::GenerateKeyPair(template))?
            .into_new_key()
    }

    /// Generates a secret key (AES, SM4, generic HMAC secret) inside the chip and returns its blob.
    ///
    /// # Errors
    /// As [`ChipExt::generate_key_pair`].
    fn generate_secret_key(&self, template: KeyTemplate) -> Result<NewKey> {
        self.execute(&Request::GenerateSecretKey(template))?
            .into_new_key()
    }

    /// Imports key material supplied in clear by the caller (PKCS#11 `C_CreateObject` with a
    /// value) and returns it as a blob. Encodings: secret keys raw; EC P-256 and SM2 the 32-byte
    /// big-endian private scalar; RSA a PKCS#8 `PrivateKeyInfo` DER.
    ///
    /// # Errors
    /// [`ChipError::KeyInvalid`] for material that does not parse or does not fit `spec`.
    fn import_key(&self, template: KeyTemplate, material: &[u8]) -> Result<NewKey> {
        let material = SecretBytes::new(material.to_vec());
        self.execute(&Request::ImportKey { template, material })?
            .into_new_key()
    }

    /// Verifies a blob and loads its key into a free slot. Loading a key that is already loaded
    /// succeeds and changes nothing.
    ///
    /// # Errors
    /// [`ChipError::WrongDomain`], [`ChipError::BlobInvalid`], [`ChipError::BlobAuthFailed`],
    /// [`ChipError::SlotsFull`].
    fn load_key(&self, blob: &KeyBlob) -> Result<KeyId> {
        self.execute(&Request::LoadKey(blob.clone()))?.into_key_id()
    }

    /// Frees the slot holding `id` and zeroizes the key. Evicting a key that is not loaded succeeds.
    ///
    /// # Errors
    /// Transport errors for a remote chip.
    fn evict_key(&self, id: KeyId) -> Result<()> {
        self.execute(&Request::EvictKey(id))?.into_done()
    }

    /// The public key of a loaded key pair.
    ///
    /// # Errors
    /// [`ChipError::KeyNotLoaded`]; [`ChipError::KeyTypeInconsistent`] for a secret key.
    fn public_key(&self, id: KeyId) -> Result<PublicKey> {
        self.execute(&Request::PublicKey(id))?.into_public_key()
    }

    /// Signs (or MACs) `data` with a loaded key; see [`SignMech`] for what `data` is per mechanism.
    ///
    /// # Errors
    /// [`ChipError::KeyNotLoaded`], [`ChipError::KeyFunctionNotPermitted`] (usage lacks `SIGN`),
    /// [`ChipError::MechanismInvalid`], [`ChipError::DataLenRange`].
    fn sign(&self, key: KeyId, mech: &SignMech, data: &[u8]) -> Result<Vec<u8>> {
        self.execute(&Request::Sign {
            key,
            mech: mech.clone(),
            data: data.to_vec(),
        })?
        .into_bytes()
    }

    /// Verifies a signature or MAC with a loaded key or a caller-supplied public key.
    ///
    /// # Errors
    /// [`ChipError::SignatureInvalid`] when the signature does not verify, besides the errors of
    /// [`ChipExt::sign`].
    fn verify(&self, key: &KeyRef, mech: &SignMech, data: &[u8], signature: &[u8]) -> Result<()> {
        self.execute(&Request::Verify {
            key: key.clone(),
            mech: mech.clone(),
            data: data.to_vec(),
            signature: signature.to_vec(),
        })?
        .into_done()
    }

    /// Encrypts with a loaded key or a caller-supplied public key.
    ///
    /// # Errors
    /// As [`ChipExt::sign`], with `ENCRYPT` in place of `SIGN`.
    fn encrypt(&self, key: &KeyRef, mech: &CipherMech, data: &[u8]) -> Result<Vec<u8>> {
        self.execute(&Request::Encrypt {
            key: key.clone(),
            mech: mech.clone(),
            data: data.to_vec(),
        })?
        .into_bytes()
    }

    /// Decrypts with a loaded key.
    ///
    /// # Errors
    /// [`ChipError::EncryptedDataInvalid`] when authentication or padding fails, besides the
    /// errors of [`ChipExt::encrypt`].
    fn decrypt(&self, key: KeyId, mech: &CipherMech, data: &[u8]) -> Result<Vec<u8>> {
        self.execute(&Request::Decrypt {
            key,
            mech: mech.clone(),
            data: data.to_vec(),
        })?
        .into_bytes()
    }

    /// Wraps the loaded key `target` (which must be `EXTRACTABLE`) under `wrapping` (which must
    /// permit `WRAP`, or be a caller-supplied public key).
    ///
    /// # Errors
    /// [`ChipError::KeyNotExtractable`], [`ChipError::KeyFunctionNotPermitted`],
    /// [`ChipError::MechanismInvalid`].
    fn wrap_key(&self, wrapping: &KeyRef, mech: &WrapMech, target: KeyId) -> Result<Vec<u8>> {
        self.execute(&Request::WrapKey {
            wrapping: wrapping.clone(),
            mech: mech.clone(),
            target,
        })?
        .into_bytes()
    }

    /// Unwraps `wrapped` with the loaded key `unwrapping` (which must permit `UNWRAP`) into a new
    /// key described by `target`, returned as a blob. The unwrapped material
    /// has the encoding of [`ChipExt::import_key`].
    ///
    /// # Errors
    /// [`ChipError::WrappedKeyInvalid`] when the wrapped data does not authenticate or parse.
    fn unwrap_key(
        &self,
        unwrapping: KeyId,
        mech: &WrapMech,
        wrapped: &[u8],
        target: KeyTemplate,
    ) -> Result<NewKey> {
        self.execute(&Request::UnwrapKey {
            unwrapping,
            mech: mech.clone(),
            wrapped: wrapped.to_vec(),
            target,
        })?
        .into_new_key()
    }

    /// ECDH (P-256 or SM2 curve, cofactor 1, no KDF: PKCS#11 `CKD_NULL`) between the loaded key
    /// and `peer_point` (uncompressed SEC1). The shared x-coordinate, truncated to the length of
    /// `target.spec`, becomes a new secret key returned as a blob.
    ///
    /// # Errors
    /// [`ChipError::DataInvalid`] for a point not on the curve; [`ChipError::KeyFunctionNotPermitted`]
    /// without `DERIVE`.
    fn derive_ecdh(&self, key: KeyId, peer_point: &[u8], target: KeyTemplate) -> Result<NewKey> {
        self.execute(&Request::DeriveEcdh {
            key,
            peer_point: peer_point.to_vec(),
            target,
        })?
        .into_new_key()
    }

    /// `len` bytes from the chip's random generator (at most [`MAX_RANDOM_LEN`]).
    ///
    /// # Errors
    /// [`ChipError::DataLenRange`] above the maximum.
    fn random(&self, len: usize) -> Result<Vec<u8>> {
        let len = u32::try_from(len)
            .map_err(|_| ChipError::DataLenRange(format!("{len} random bytes requested")))?;
        self.execute(&Request::Random(len))?.into_bytes()
    }

    /// Generates a new domain key inside this chip (cluster bootstrap).
    ///
    /// # Errors
    /// [`ChipError::DomainAlreadySet`] when the chip already has one.
    fn domain_generate(&self) -> Result<DomainInfo> {
        self.execute(&Request::DomainGenerate)?.into_domain()
    }

    /// Exports this chip's domain key encrypted to another chip's identity key (uncompressed
    /// P-256 point, from that chip's [`ChipInfo::identity_key`]): ECDH P-256 with an ephemeral
    /// key, HKDF-SHA-256, AES-256-GCM.
    ///
    /// # Errors
    /// [`ChipError::NoDomain`]; [`ChipError::DataInvalid`] for a bad identity key.
    fn domain_export(&self, recipient_identity: &[u8]) -> Result<Vec<u8>> {
        self.execute(&Request::DomainExport(recipient_identity.to_vec()))?
            .into_bytes()
    }

    /// Imports a domain key package made for this chip by [`ChipExt::domain_export`].
    ///
    /// # Errors
    /// [`ChipError::DomainPackageInvalid`] when the package was not made for this chip or was
    /// altered; [`ChipError::DomainAlreadySet`] when the chip holds a different domain key.
    fn domain_import(&self, package: &[u8]) -> Result<DomainInfo> {
        self.execute(&Request::DomainImport(package.to_vec()))?
            .into_domain()
    }

    /// Answers an identity challenge ([`identity::Challenge`]): proves that this chip holds
    /// the private half of its identity key.
    ///
    /// # Errors
    /// [`ChipError::DataInvalid`] for a malformed challenge.
    fn identity_proof(&self, challenge: &identity::Challenge) -> Result<Vec<u8>> {
        self.execute(&challenge.request())?.into_bytes()
    }
}

impl<C: Chip + ?Sized> ChipExt for C {}
