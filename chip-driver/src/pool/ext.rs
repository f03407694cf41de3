//! [`PoolExt`]: the typed calls of a [`ChipPool`], built on [`ChipPool::call`] alone.
//!
//! The pool itself passes requests through without knowing their kinds; these helpers only
//! build a [`Request`], name the blobs of the keys it uses and take the answer out of the
//! [`Response`], as [`ChipExt`](crate::ChipExt) does for a single chip.

use std::future::Future;
use std::slice;

use super::{ChipPool, PoolKey, PoolKeyRef};
use crate::wire::{Request, Response};
use crate::{CipherMech, KeyRef, KeyTemplate, NewKey, PublicKey, Result, SignMech, WrapMech};

/// The typed calls of a chip pool; see the [module docs](self). Every error is that of
/// [`ChipPool::call`] or the chip's refusal of the command (listed at the
/// [`ChipExt`](crate::ChipExt) helper of the same name).
pub trait PoolExt: Sync {
    /// Runs `request` on one chip of the pool after loading `keys` there: [`ChipPool::call`].
    fn call(
        &self,
        request: Request,
        keys: &[PoolKey],
    ) -> impl Future<Output = Result<Response>> + Send;

    /// Signs with a key; see [`ChipExt::sign`](crate::ChipExt::sign).
    ///
    /// # Errors
    /// The chip's error, [`crate::ChipError::Busy`], or [`crate::ChipError::DeviceLost`] when no
    /// chip is left.
    fn sign(
        &self,
        key: &PoolKey,
        mech: SignMech,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async move {
            let req = Request::Sign {
                key: key.id(),
                mech,
                data,
            };
            self.call(req, slice::from_ref(key)).await?.into_bytes()
        }
    }

    /// Verifies with a key held in the pool or a given public key; see
    /// [`ChipExt::verify`](crate::ChipExt::verify).
    ///
    /// # Errors
    /// As [`PoolExt::sign`], and [`crate::ChipError::SignatureInvalid`].
    fn verify(
        &self,
        key: &PoolKeyRef,
        mech: SignMech,
        data: Vec<u8>,
        signature: Vec<u8>,
    ) -> impl Future<Output = Result<()>> + Send {
        async move {
            let (key, keys) = key.split();
            let req = Request::Verify {
                key,
                mech,
                data,
                signature,
            };
            self.call(req, &keys).await?.into_done()
        }
    }

    /// Encrypts; see [`ChipExt::encrypt`](crate::ChipExt::encrypt).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn encrypt(
        &self,
        key: &PoolKeyRef,
        mech: CipherMech,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async move {
            let (key, keys) = key.split();
            let req = Request::Encrypt { key, mech, data };
            self.call(req, &keys).await?.into_bytes()
        }
    }

    /// Decrypts; see [`ChipExt::decrypt`](crate::ChipExt::decrypt).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn decrypt(
        &self,
        key: &PoolKey,
        mech: CipherMech,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async move {
            let req = Request::Decrypt {
                key: key.id(),
                mech,
                data,
            };
            self.call(req, slice::from_ref(key)).await?.into_bytes()
        }
    }

    /// Wraps `target` under `wrapping`; both are loaded on the same chip. See
    /// [`ChipExt::wrap_key`](crate::ChipExt::wrap_key).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn wrap_key(
        &self,
        wrapping: &PoolKeyRef,
        mech: WrapMech,
        target: &PoolKey,
    ) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async move {
            let (wrapping, mut keys) = wrapping.split();
            keys.push(target.clone());
            let req = Request::WrapKey {
                wrapping,
                mech,
                target: target.id(),
            };
            self.call(req, &keys).await?.into_bytes()
        }
    }

    /// Unwraps into a new key; see [`ChipExt::unwrap_key`](crate::ChipExt::unwrap_key).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn unwrap_key(
        &self,
        unwrapping: &PoolKey,
        mech: WrapMech,
        wrapped: Vec<u8>,
        target: KeyTemplate,
    ) -> impl Future<Output = Result<NewKey>> + Send {
        async move {
            let req = Request::UnwrapKey {
                unwrapping: unwrapping.id(),
                mech,
                wrapped,
                target,
            };
            self.call(req, slice::from_ref(unwrapping))
                .await?
                .into_new_key()
        }
    }

    /// ECDH into a new secret key; see [`ChipExt::derive_ecdh`](crate::ChipExt::derive_ecdh).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn derive_ecdh(
        &self,
        key: &PoolKey,
        peer_point: Vec<u8>,
        target: KeyTemplate,
    ) -> impl Future<Output = Result<NewKey>> + Send {
        async move {
            let req = Request::DeriveEcdh {
                key: key.id(),
                peer_point,
                target,
            };
            self.call(req, slice::from_ref(key)).await?.into_new_key()
        }
    }

    /// The public key of a key pair; see [`ChipExt::public_key`](crate::ChipExt::public_key).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn public_key(&self, key: &PoolKey) -> impl Future<Output = Result<PublicKey>> + Send {
        async move {
            self.call(Request::PublicKey(key.id()), slice::from_ref(key))
                .await?
                .into_public_key()
        }
    }

    /// Generates a key pair on the least busy chip; see
    /// [`ChipExt::generate_key_pair`](crate::ChipExt::generate_key_pair).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn generate_key_pair(
        &self,
        template: KeyTemplate,
    ) -> impl Future<Output = Result<NewKey>> + Send {
        async move {
            self.call(Request::GenerateKeyPair(template), &[])
                .await?
                .into_new_key()
        }
    }

    /// Generates a secret key on the least busy chip; see
    /// [`ChipExt::generate_secret_key`](crate::ChipExt::generate_secret_key).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn generate_secret_key(
        &self,
        template: KeyTemplate,
    ) -> impl Future<Output = Result<NewKey>> + Send {
        async move {
            self.call(Request::GenerateSecretKey(template), &[])
                .await?
                .into_new_key()
        }
    }

    /// Random bytes from the least busy chip; see [`ChipExt::random`](crate::ChipExt::random).
    ///
    /// # Errors
    /// As [`PoolExt::sign`].
    fn random(&self, len: u32) -> impl Future<Output = Result<Vec<u8>>> + Send {
        async move { self.call(Request::Random(len), &[]).await?.into_bytes() }
    }
}

impl PoolExt for ChipPool {
    fn call(
        &self,
        request: Request,
        keys: &[PoolKey],
    ) -> impl Future<Output = Result<Response>> + Send {
        ChipPool::call(self, request, keys)
    }
}

impl PoolKeyRef {
    /// The key reference a request carries, and the blob to load for it (none for a public key).
    fn split(&self) -> (KeyRef, Vec<PoolKey>) {
        match self {
            Self::Key(k) => (KeyRef::Loaded(k.id()), vec![k.clone()]),
            Self::Public(p) => (KeyRef::Public(p.clone()), Vec::new()),
        }
    }
}
