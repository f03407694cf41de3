//! The digests the module computes itself: `C_Digest*` (SHA-1, SHA-256/384/512 with aws-lc-rs,
//! SM3 with the RustCrypto `sm3` crate) and the local hashing of hash-and-sign mechanisms,
//! which then send only the digest to the cluster.

use aws_lc_rs::digest as aws;
use sm3::Digest as _;

use crate::mechanism::Hash;

/// A running hash.
#[derive(Clone)]
pub(crate) enum Hasher {
    /// SHA-1 and SHA-2.
    Aws(aws::Context),
    /// SM3.
    Sm3(sm3::Sm3),
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Aws(_) => "Hasher(sha)",
            Self::Sm3(_) => "Hasher(sm3)",
        })
    }
}

impl Hasher {
    /// A new hash.
    pub(crate) fn new(hash: Hash) -> Self {
        let alg = match hash {
            Hash::Sha1 => &aws::SHA1_FOR_LEGACY_USE_ONLY,
            Hash::Sha256 => &aws::SHA256,
            Hash::Sha384 => &aws::SHA384,
            Hash::Sha512 => &aws::SHA512,
            Hash::Sm3 => return Self::Sm3(sm3::Sm3::new()),
        };
        Self::Aws(aws::Context::new(alg))
    }

    /// Hashes more data.
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Self::Aws(c) => c.update(data),
            Self::Sm3(c) => c.update(data),
        }
    }

    /// The digest.
    pub(crate) fn finish(self) -> Vec<u8> {
        match self {
            Self::Aws(c) => c.finish().as_ref().to_vec(),
            Self::Sm3(c) => c.finalize().to_vec(),
        }
    }

    /// The digest of `data` in one go.
    pub(crate) fn digest(hash: Hash, data: &[u8]) -> Vec<u8> {
        let mut h = Self::new(hash);
        h.update(data);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn known_answers() {
        assert_eq!(
            hex(&Hasher::digest(Hash::Sha256, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex(&Hasher::digest(Hash::Sha1, b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        // GM/T 0004-2012 appendix A.1.
        assert_eq!(
            hex(&Hasher::digest(Hash::Sm3, b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        for h in [
            Hash::Sha1,
            Hash::Sha256,
            Hash::Sha384,
            Hash::Sha512,
            Hash::Sm3,
        ] {
            let mut m = Hasher::new(h);
            m.update(b"a");
            m.update(b"bc");
            assert_eq!(m.finish(), Hasher::digest(h, b"abc"));
            assert_eq!(Hasher::digest(h, b"").len(), h.len());
        }
    }
}
