//! cloudkey's vendor-defined PKCS#11 numbers for the Chinese commercial algorithms (GM/T):
//! SM2 (public-key signature, encryption and key agreement on the curve sm2p256v1), SM3
//! (hash) and SM4 (block cipher).
//!
//! PKCS#11 3.x defines no numbers for them, so they live in the vendor ranges
//! (`CKM_VENDOR_DEFINED`, `CKK_VENDOR_DEFINED` = `0x8000_0000`). This module is the one place
//! they are defined; the node, the PKCS#11 module and every other front end use these constants,
//! and `pkcs11-module/VENDOR.md` documents them for application developers.
//!
//! | constant | value | what | parameter |
//! |---|---|---|---|
//! | [`CKK_SM2`] | `0x8000_0001` | SM2 key pair (`CKA_EC_PARAMS` = [`SM2_CURVE_OID_DER`], `CKA_EC_POINT` as for EC keys) | |
//! | [`CKK_SM4`] | `0x8000_0002` | SM4 secret key, 16 bytes | |
//! | [`CKM_SM2`] | `0x8000_8000` | SM2 signature over a caller-computed `e = SM3(Z ‖ M)` (32 bytes) | none |
//! | [`CKM_SM2_KEY_PAIR_GEN`] | `0x8000_8001` | SM2 key pair generation | none |
//! | [`CKM_SM3_SM2`] | `0x8000_8100` | SM3-with-SM2 signature of a message (`Z` from the distinguishing id) | optional id (default [`SM2_DEFAULT_ID`]) |
//! | [`CKM_SM2_ENCRYPT`] | `0x8000_8200` | SM2 public-key encryption (GM/T 0003.4), `C1 ‖ C3 ‖ C2`, also key wrapping | none |
//! | [`CKM_SM3`] | `0x8000_8300` | SM3 digest (computed by the PKCS#11 module) | none |
//! | [`CKM_SM4_KEY_GEN`] | `0x8000_8400` | SM4 key generation | none |
//! | [`CKM_SM4_CBC`] | `0x8000_8401` | SM4-CBC, whole 16-byte blocks | 16-byte IV |
//! | [`CKM_SM4_CBC_PAD`] | `0x8000_8402` | SM4-CBC with PKCS#7 padding | 16-byte IV |
//!
//! SM2 keys may also be named the standard way: `CKK_EC` with `CKA_EC_PARAMS` =
//! [`SM2_CURVE_OID_DER`], generated with `CKM_EC_KEY_PAIR_GEN`. Either way the key is an SM2 key:
//! it signs only with the SM2 mechanisms above, never with `CKM_ECDSA`.

/// `CKK_SM2`: an SM2 key pair.
pub const CKK_SM2: u64 = 0x8000_0001;
/// `CKK_SM4`: an SM4 secret key (128 bits).
pub const CKK_SM4: u64 = 0x8000_0002;

/// `CKM_SM2`: SM2 signature over a caller-computed 32-byte `e = SM3(Z || M)`.
pub const CKM_SM2: u64 = 0x8000_8000;
/// `CKM_SM2_KEY_PAIR_GEN`: SM2 key pair generation.
pub const CKM_SM2_KEY_PAIR_GEN: u64 = 0x8000_8001;
/// `CKM_SM3_SM2`: SM3-with-SM2 signature of a message (GM/T 0003.2, `Z` over the
/// distinguishing identifier, default [`SM2_DEFAULT_ID`]).
pub const CKM_SM3_SM2: u64 = 0x8000_8100;
/// `CKM_SM2_ENCRYPT`: SM2 public-key encryption (GM/T 0003.4), ciphertext `C1 || C3 || C2` with
/// `C1` uncompressed; also usable for key wrapping.
pub const CKM_SM2_ENCRYPT: u64 = 0x8000_8200;
/// `CKM_SM3`: the SM3 digest.
pub const CKM_SM3: u64 = 0x8000_8300;
/// `CKM_SM4_KEY_GEN`: SM4 key generation.
pub const CKM_SM4_KEY_GEN: u64 = 0x8000_8400;
/// `CKM_SM4_CBC`: SM4 in CBC mode without padding (a 16-byte IV as parameter).
pub const CKM_SM4_CBC: u64 = 0x8000_8401;
/// `CKM_SM4_CBC_PAD`: SM4 in CBC mode with PKCS#7 padding (a 16-byte IV as parameter).
pub const CKM_SM4_CBC_PAD: u64 = 0x8000_8402;

/// DER of the SM2 curve's object identifier 1.2.156.10197.1.301 (`CKA_EC_PARAMS`).
pub const SM2_CURVE_OID_DER: &[u8] = &[0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];

/// The SM2 distinguishing identifier used when none is given (GM/T 0009).
pub const SM2_DEFAULT_ID: &[u8] = b"1234567812345678";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_numbers_are_in_the_vendor_ranges() {
        for ckm in [
            CKM_SM2,
            CKM_SM2_KEY_PAIR_GEN,
            CKM_SM3_SM2,
            CKM_SM2_ENCRYPT,
            CKM_SM3,
            CKM_SM4_KEY_GEN,
            CKM_SM4_CBC,
            CKM_SM4_CBC_PAD,
        ] {
            assert!(ckm & cryptoki_sys::CKM_VENDOR_DEFINED != 0);
        }
        for ckk in [CKK_SM2, CKK_SM4] {
            assert!(ckk & cryptoki_sys::CKK_VENDOR_DEFINED != 0);
        }
    }
}
