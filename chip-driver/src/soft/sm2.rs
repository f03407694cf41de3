//! SM2 (GM/T 0003) keys: signing over SM3 with the user id's Z value, decryption and ECDH,
//! written on the RustCrypto `sm2` curve arithmetic; verification and encryption with public keys.

use ::sm2::dsa::signature::hazmat::PrehashVerifier;
use ::sm2::elliptic_curve::ops::Reduce;
use ::sm2::elliptic_curve::point::AffineCoordinates;
use ::sm2::elliptic_curve::sec1::ToSec1Point;
use ::sm2::elliptic_curve::{Group, PrimeField};
use aws_lc_rs::constant_time;
use sm3::{Digest as _, Sm3};
use zeroize::{Zeroize, Zeroizing};

use super::{fill_random, internal, AwsLcRng};
use crate::{ChipError, Result, SM2_DEFAULT_ID};

/// An SM2 key pair with `(1 + d)^-1` precomputed; both scalars are zeroized on drop.
pub(super) struct Sm2Key {
    pub(super) d: ::sm2::NonZeroScalar,
    pub(super) d1_inv: ::sm2::Scalar,
    pub(super) public_bytes: [u8; 65],
    /// `Z` for [`SM2_DEFAULT_ID`], the common case.
    pub(super) z_default: [u8; 32],
}

impl Drop for Sm2Key {
    fn drop(&mut self) {
        self.d.zeroize();
        self.d1_inv.zeroize();
    }
}

impl Sm2Key {
    pub(super) fn parse(scalar: &[u8]) -> std::result::Result<Self, String> {
        if scalar.len() != 32 {
            return Err(format!(
                "an SM2 private key is a 32-byte scalar, not {} bytes",
                scalar.len()
            ));
        }
        let d = ::sm2::NonZeroScalar::try_from(scalar)
            .map_err(|_| "not an SM2 private scalar (zero or not below the group order)")?;
        let mut d1 = *d + ::sm2::Scalar::ONE;
        let d1_inv = Option::<::sm2::Scalar>::from(d1.invert());
        d1.zeroize();
        // GM/T 0003.1 requires d in [1, n-2]: for d = n-1, 1 + d has no inverse.
        let d1_inv = d1_inv.ok_or("SM2 private scalar n-1 is not allowed (GM/T 0003: d <= n-2)")?;
        let public = ::sm2::PublicKey::from_secret_scalar(&d);
        let public_bytes = sm2_point_bytes(public.as_affine());
        let z_default = sm2_z(SM2_DEFAULT_ID, &public_bytes)
            .map_err(|_| "cannot compute Z for the default id")?;
        Ok(Self {
            d,
            d1_inv,
            public_bytes,
            z_default,
        })
    }

    pub(super) fn z(&self, user_id: &[u8]) -> Result<[u8; 32]> {
        if user_id == SM2_DEFAULT_ID {
            Ok(self.z_default)
        } else {
            sm2_z(user_id, &self.public_bytes)
        }
    }

    /// Signs a 32-byte `e` (GM/T 0003.2, 6.1, steps A3 to A7) with a fresh random `k`.
    pub(super) fn sign_prehash(&self, e: &[u8]) -> Result<Vec<u8>> {
        let e = sm2_e_scalar(e)?;
        // A retry happens with probability about 2^-224 per attempt.
        for _ in 0..16 {
            let k = Zeroizing::new(random_sm2_scalar()?);
            if let Some(sig) = sm2_sign_with_k(&self.d, &self.d1_inv, &e, &k) {
                return Ok(sig.to_vec());
            }
        }
        Err(internal("SM2 signing found no valid nonce"))
    }

    /// SM2 decryption (GM/T 0003.4, 7.1) of `C1 || C3 || C2`.
    pub(super) fn decrypt(&self, ct: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        const C1: usize = 65;
        const C3: usize = 32;
        if ct.len() <= C1 + C3 || ct[0] != 0x04 {
            return Err(ChipError::EncryptedDataInvalid);
        }
        // B1: C1 must be a point on the curve (cofactor 1, so [h]C1 != O holds for any valid
        // point, which `from_sec1_bytes` guarantees by rejecting the identity).
        let c1 = ::sm2::PublicKey::from_sec1_bytes(&ct[..C1])
            .map_err(|_| ChipError::EncryptedDataInvalid)?;
        let (c3, c2) = ct[C1..].split_at(C3);
        // B3: (x2, y2) = [d]C1
        let shared = Zeroizing::new(sm2_point_bytes(&(c1.to_projective() * *self.d).to_affine()));
        let (x2, y2) = (&shared[1..33], &shared[33..65]);
        // B4, B5: t = KDF(x2 || y2, klen), M' = C2 xor t
        let mut m = sm2_kdf(x2, y2, c2.len());
        if m.iter().all(|b| *b == 0) {
            return Err(ChipError::EncryptedDataInvalid);
        }
        m.iter_mut().zip(c2).for_each(|(t, c)| *t ^= c);
        // B6: u = SM3(x2 || M' || y2) must equal C3
        let u = Sm3::new()
            .chain_update(x2)
            .chain_update(&m[..])
            .chain_update(y2)
            .finalize();
        constant_time::verify_slices_are_equal(&u, c3)
            .map_err(|_| ChipError::EncryptedDataInvalid)?;
        Ok(m)
    }

    /// ECDH on the SM2 curve: the x-coordinate of `[d]P`.
    pub(super) fn ecdh(&self, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if peer.len() != 65 || peer[0] != 0x04 {
            return Err(ChipError::DataInvalid(
                "the peer point must be uncompressed SEC1".into(),
            ));
        }
        let peer = ::sm2::PublicKey::from_sec1_bytes(peer)
            .map_err(|_| ChipError::DataInvalid("the peer point is not on the SM2 curve".into()))?;
        let shared = (peer.to_projective() * *self.d).to_affine();
        Ok(Zeroizing::new(shared.x().to_vec()))
    }
}

/// The uncompressed SEC1 encoding of an SM2 point.
pub(super) fn sm2_point_bytes(point: &::sm2::AffinePoint) -> [u8; 65] {
    let encoded = point.to_sec1_point(false);
    let mut out = [0u8; 65];
    out.copy_from_slice(encoded.as_bytes());
    out
}

/// SM2 curve coefficient `a` (GM/T 0003.5).
pub(super) const SM2_A: [u8; 32] =
    hex32("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF00000000FFFFFFFFFFFFFFFC");
/// SM2 curve coefficient `b`.
pub(super) const SM2_B: [u8; 32] =
    hex32("28E9FA9E9D9F5E344D5A9E4BCF6509A7F39789F515AB8F92DDBCBD414D940E93");
/// SM2 base point `G`, x.
pub(super) const SM2_GX: [u8; 32] =
    hex32("32C4AE2C1F1981195F9904466A39C9948FE30BBFF2660BE1715A4589334C74C7");
/// SM2 base point `G`, y.
pub(super) const SM2_GY: [u8; 32] =
    hex32("BC3736A2F4F6779C59BDCEE36B692153D0A9877CC62A474002DF32E52139F0A0");

/// 64 hex digits to 32 bytes, at compile time.
pub(super) const fn hex32(s: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => panic!("not a hex digit"),
        }
    }
    let s = s.as_bytes();
    assert!(s.len() == 64, "need 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(s[2 * i]) << 4) | nibble(s[2 * i + 1]);
        i += 1;
    }
    out
}

/// `Z = SM3(ENTL || ID || a || b || xG || yG || xA || yA)` (GM/T 0003.2, 5.5) for an
/// uncompressed public point.
pub(super) fn sm2_z(user_id: &[u8], public: &[u8; 65]) -> Result<[u8; 32]> {
    let entl = user_id
        .len()
        .checked_mul(8)
        .and_then(|bits| u16::try_from(bits).ok())
        .ok_or_else(|| ChipError::DataLenRange("an SM2 user id is at most 8191 bytes".into()))?;
    let z = Sm3::new()
        .chain_update(entl.to_be_bytes())
        .chain_update(user_id)
        .chain_update(SM2_A)
        .chain_update(SM2_B)
        .chain_update(SM2_GX)
        .chain_update(SM2_GY)
        .chain_update(&public[1..])
        .finalize();
    Ok(z.into())
}

/// `e = SM3(Z || M)`.
pub(super) fn sm2_e(user_id: &[u8], public: &[u8; 65], msg: &[u8]) -> Result<[u8; 32]> {
    Ok(Sm3::new()
        .chain_update(sm2_z(user_id, public)?)
        .chain_update(msg)
        .finalize()
        .into())
}

pub(super) fn sm2_e_scalar(e: &[u8]) -> Result<::sm2::Scalar> {
    let e: [u8; 32] = e.try_into().map_err(|_| {
        ChipError::DataLenRange(format!("SM2 needs a 32-byte e, not {} bytes", e.len()))
    })?;
    Ok(<::sm2::Scalar as Reduce<::sm2::FieldBytes>>::reduce(
        &::sm2::FieldBytes::from(e),
    ))
}

/// A uniformly random scalar in `[1, n-1]` from the aws-lc-rs generator (rejection sampling).
pub(super) fn random_sm2_scalar() -> Result<::sm2::Scalar> {
    loop {
        let mut bytes = Zeroizing::new([0u8; 32]);
        fill_random(&mut bytes[..])?;
        let candidate = Option::<::sm2::Scalar>::from(::sm2::Scalar::from_repr(
            ::sm2::FieldBytes::from(*bytes),
        ));
        if let Some(k) = candidate {
            if !bool::from(k.is_zero()) {
                return Ok(k);
            }
        }
    }
}

/// GM/T 0003.2 steps A4 to A7 for a given `k`: `None` when this `k` must be rejected.
pub(super) fn sm2_sign_with_k(
    d: &::sm2::Scalar,
    d1_inv: &::sm2::Scalar,
    e: &::sm2::Scalar,
    k: &::sm2::Scalar,
) -> Option<[u8; 64]> {
    // A4: (x1, y1) = [k]G
    let x1 = ::sm2::ProjectivePoint::mul_by_generator(k).to_affine().x();
    // A5: r = (e + x1) mod n; reject r = 0 and r + k = n
    let r = *e + <::sm2::Scalar as Reduce<::sm2::FieldBytes>>::reduce(&x1);
    if bool::from(r.is_zero() | (r + k).is_zero()) {
        return None;
    }
    // A6: s = (1 + d)^-1 (k - r d) mod n; reject s = 0
    let s = *d1_inv * (*k - r * d);
    if bool::from(s.is_zero()) {
        return None;
    }
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&r.to_repr());
    sig[32..].copy_from_slice(&s.to_repr());
    Some(sig)
}

/// SM2's key derivation function (GM/T 0003.4, 5.4.3) on `x2 || y2`.
pub(super) fn sm2_kdf(x2: &[u8], y2: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len + 32));
    let mut counter: u32 = 1;
    while out.len() < len {
        let block = Sm3::new()
            .chain_update(x2)
            .chain_update(y2)
            .chain_update(counter.to_be_bytes())
            .finalize();
        out.extend_from_slice(&block);
        counter = counter.wrapping_add(1);
    }
    out.truncate(len);
    out
}

pub(super) fn sm2_public(point: &[u8]) -> Result<::sm2::PublicKey> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(ChipError::DataInvalid(
            "an SM2 public key must be an uncompressed point".into(),
        ));
    }
    ::sm2::PublicKey::from_sec1_bytes(point)
        .map_err(|_| ChipError::DataInvalid("the SM2 public key is not on the curve".into()))
}

pub(super) fn sm2_verify_prehash(point: &[u8], e: &[u8], sig: &[u8]) -> Result<()> {
    let public = sm2_public(point)?;
    if e.len() != 32 {
        return Err(ChipError::DataLenRange(format!(
            "SM2 needs a 32-byte e, not {} bytes",
            e.len()
        )));
    }
    // The distinguishing id of a `VerifyingKey` only matters for message verification; the
    // prehash path gets `e`, computed by `sm2_e` for any (also non-UTF-8) id.
    let verifying = ::sm2::dsa::VerifyingKey::new("", public)
        .map_err(|_| ChipError::DataInvalid("unusable SM2 public key".into()))?;
    let sig = ::sm2::dsa::Signature::from_slice(sig).map_err(|_| ChipError::SignatureInvalid)?;
    verifying
        .verify_prehash(e, &sig)
        .map_err(|_| ChipError::SignatureInvalid)
}

pub(super) fn sm2_encrypt(point: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    if data.is_empty() {
        return Err(ChipError::DataLenRange(
            "SM2 cannot encrypt an empty message".into(),
        ));
    }
    let public = sm2_public(point)?;
    ::sm2::pke::EncryptingKey::new_with_mode(public, ::sm2::pke::Mode::C1C3C2)
        .encrypt(&mut AwsLcRng, data)
        .map_err(|_| internal("SM2 encryption failed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sm2_z_matches_the_rustcrypto_verifier() {
        // A signature over e = SM3(Z || M) with our Z verifies as a message signature with
        // sm2's own Z computation for the same id.
        use ::sm2::dsa::signature::Verifier;
        let key = Sm2Key::parse(&[7u8; 32]).unwrap();
        let msg = b"z check";
        let e = sm2_e(SM2_DEFAULT_ID, &key.public_bytes, msg).unwrap();
        let sig = key.sign_prehash(&e).unwrap();
        let vk = ::sm2::dsa::VerifyingKey::from_sec1_bytes("1234567812345678", &key.public_bytes)
            .unwrap();
        vk.verify(msg, &::sm2::dsa::Signature::from_slice(&sig).unwrap())
            .unwrap();
    }
}
