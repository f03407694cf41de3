//! The software chip's non-volatile memory: its serial number, identity key and domain key,
//! sealed in one file so that a restarted software chip is the same chip, in the same domain.
//!
//! A hardware chip keeps these in tamper-resistant storage. The software chip has only the
//! host's disk, so the file is encrypted and authenticated with AES-256-GCM under a 32-byte
//! *NVRAM key* that the operator provides (a file readable only by the node's user, or a secret
//! from the platform). The key material never touches the disk in clear; the protection is as
//! strong as the custody of the NVRAM key, which is why production clusters use real chips.
//!
//! File layout (all integers big-endian):
//!
//! ```text
//! 0   4  magic "CKNV"
//! 4   1  version 0x01
//! 5  12  nonce (random, fresh on every write)
//! 17  n  AES-256-GCM(NVRAM key, nonce, plaintext, AAD = bytes 0..5) || 16-byte tag
//!
//! plaintext: serial length (1) || serial || identity scalar (32) || domain flag (1)
//!            || domain key (32, when the flag is 1)
//! ```
//!
//! Writes go to a temporary file that is synced and then renamed over the old one, so a crash
//! leaves either the old or the new contents.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroizing;

use crate::{ChipError, Result, SecretBytes};

const MAGIC: &[u8; 4] = b"CKNV";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 5;

/// Where a software chip keeps its non-volatile state, and the key that seals it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SoftNvram {
    /// The sealed file (created on first power-on).
    pub path: PathBuf,
    /// The 32-byte NVRAM key.
    pub key: SecretBytes,
}

impl SoftNvram {
    /// An NVRAM at `path` sealed under the key in `key_file`: 32 raw bytes, or 64 hex digits
    /// (surrounding white space ignored).
    ///
    /// # Errors
    /// [`ChipError::DataInvalid`] when the key file cannot be read or holds no 32-byte key.
    pub fn with_key_file(path: PathBuf, key_file: &Path) -> Result<Self> {
        Ok(Self {
            path,
            key: read_key_file(key_file)?,
        })
    }
}

/// Reads an NVRAM key file: 32 raw bytes, or 64 hex digits (surrounding white space ignored).
///
/// # Errors
/// [`ChipError::DataInvalid`] when the file cannot be read or holds no 32-byte key.
pub fn read_key_file(key_file: &Path) -> Result<SecretBytes> {
    let raw = Zeroizing::new(fs::read(key_file).map_err(|e| {
        ChipError::DataInvalid(format!(
            "cannot read NVRAM key file {}: {e}",
            key_file.display()
        ))
    })?);
    if raw.len() == 32 {
        return Ok(SecretBytes::new(raw.to_vec()));
    }
    let text = std::str::from_utf8(&raw).map(str::trim).unwrap_or_default();
    match hex::decode(text) {
        Ok(k) if k.len() == 32 => Ok(SecretBytes::new(k)),
        _ => Err(ChipError::DataInvalid(format!(
            "NVRAM key file {} must hold 32 raw bytes or 64 hex digits",
            key_file.display()
        ))),
    }
}

/// What the NVRAM holds.
pub(crate) struct NvramContents {
    pub serial: String,
    pub identity: Zeroizing<[u8; 32]>,
    pub domain: Option<Zeroizing<[u8; 32]>>,
}

fn aead(key: &SecretBytes) -> Result<LessSafeKey> {
    if key.expose().len() != 32 {
        return Err(ChipError::DataInvalid(format!(
            "the NVRAM key must be 32 bytes, not {}",
            key.expose().len()
        )));
    }
    let unbound = UnboundKey::new(&AES_256_GCM, key.expose())
        .map_err(|_| ChipError::Internal("cannot key AES-256-GCM with the NVRAM key".into()))?;
    Ok(LessSafeKey::new(unbound))
}

fn header() -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(MAGIC);
    h[4] = VERSION;
    h
}

/// Reads and opens the NVRAM file, or `None` when it does not exist yet.
pub(crate) fn load(nv: &SoftNvram) -> Result<Option<NvramContents>> {
    let bytes = match fs::read(&nv.path) {
        Ok(b) => Zeroizing::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(&nv.path, "read", &e)),
    };
    let bad = |why: &str| {
        ChipError::Internal(format!(
            "NVRAM file {} is unusable: {why}",
            nv.path.display()
        ))
    };
    if bytes.len() < HEADER_LEN + NONCE_LEN + 16 || &bytes[..4] != MAGIC {
        return Err(bad("not a cloudkey software chip NVRAM file"));
    }
    if bytes[4] != VERSION {
        return Err(bad(&format!("unknown version {}", bytes[4])));
    }
    let nonce = Nonce::try_assume_unique_for_key(&bytes[HEADER_LEN..HEADER_LEN + NONCE_LEN])
        .map_err(|_| bad("bad nonce"))?;
    let mut sealed = Zeroizing::new(bytes[HEADER_LEN + NONCE_LEN..].to_vec());
    let plain = aead(&nv.key)?
        .open_in_place(nonce, Aad::from(&bytes[..HEADER_LEN]), &mut sealed)
        .map_err(|_| bad("authentication failed (wrong NVRAM key, or the file was altered)"))?;
    parse(plain)
        .ok_or_else(|| bad("malformed contents"))
        .map(Some)
}

fn parse(p: &[u8]) -> Option<NvramContents> {
    let (&serial_len, rest) = p.split_first()?;
    let serial_len = usize::from(serial_len);
    let serial = String::from_utf8(rest.get(..serial_len)?.to_vec()).ok()?;
    let rest = &rest[serial_len..];
    let mut identity = Zeroizing::new([0u8; 32]);
    identity.copy_from_slice(rest.get(..32)?);
    let rest = &rest[32..];
    let domain = match rest {
        [0] => None,
        [1, key @ ..] if key.len() == 32 => {
            let mut d = Zeroizing::new([0u8; 32]);
            d.copy_from_slice(key);
            Some(d)
        }
        _ => return None,
    };
    Some(NvramContents {
        serial,
        identity,
        domain,
    })
}

/// Seals `contents` into the NVRAM file, atomically.
pub(crate) fn store(nv: &SoftNvram, contents: &NvramContents) -> Result<()> {
    let serial = contents.serial.as_bytes();
    let serial_len = u8::try_from(serial.len())
        .map_err(|_| ChipError::DataInvalid("serial numbers are at most 255 bytes".into()))?;
    let mut plain = Zeroizing::new(Vec::with_capacity(1 + serial.len() + 32 + 33));
    plain.push(serial_len);
    plain.extend_from_slice(serial);
    plain.extend_from_slice(contents.identity.as_ref());
    match &contents.domain {
        Some(d) => {
            plain.push(1);
            plain.extend_from_slice(d.as_ref());
        }
        None => plain.push(0),
    }
    let mut nonce = [0u8; NONCE_LEN];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| ChipError::Internal("the random generator failed".into()))?;
    let head = header();
    let mut body = plain.clone();
    let tag = aead(&nv.key)?
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&head[..]),
            &mut body,
        )
        .map_err(|_| ChipError::Internal("sealing the NVRAM failed".into()))?;
    let mut file = Vec::with_capacity(HEADER_LEN + NONCE_LEN + body.len() + 16);
    file.extend_from_slice(&head);
    file.extend_from_slice(&nonce);
    file.extend_from_slice(&body);
    file.extend_from_slice(tag.as_ref());

    let tmp = nv.path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&file)?;
        f.sync_all()?;
        fs::rename(&tmp, &nv.path)?;
        if let Some(dir) = nv.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    };
    write().map_err(|e| io_error(&nv.path, "write", &e))
}

fn io_error(path: &Path, what: &str, e: &std::io::Error) -> ChipError {
    ChipError::Internal(format!("cannot {what} NVRAM file {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nv(dir: &Path, key: u8) -> SoftNvram {
        SoftNvram {
            path: dir.join("chip.nvram"),
            key: SecretBytes::new(vec![key; 32]),
        }
    }

    #[test]
    fn round_trip_with_and_without_domain() {
        let dir = tempfile::tempdir().unwrap();
        let nv = nv(dir.path(), 7);
        assert!(load(&nv).unwrap().is_none());
        for domain in [None, Some(Zeroizing::new([9u8; 32]))] {
            let c = NvramContents {
                serial: "abc".into(),
                identity: Zeroizing::new([5u8; 32]),
                domain: domain.clone(),
            };
            store(&nv, &c).unwrap();
            let back = load(&nv).unwrap().unwrap();
            assert_eq!(back.serial, "abc");
            assert_eq!(*back.identity, [5u8; 32]);
            assert_eq!(back.domain.map(|d| *d), domain.map(|d| *d));
        }
        let mode = std::fs::metadata(&nv.path).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn wrong_key_or_altered_file_is_refused_and_no_secret_is_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let good = nv(dir.path(), 1);
        let c = NvramContents {
            serial: "s".into(),
            identity: Zeroizing::new([0x42; 32]),
            domain: Some(Zeroizing::new([0x24; 32])),
        };
        store(&good, &c).unwrap();
        let bytes = std::fs::read(&good.path).unwrap();
        assert!(!bytes
            .windows(32)
            .any(|w| w == [0x42; 32] || w == [0x24; 32]));
        assert!(matches!(
            load(&nv(dir.path(), 2)),
            Err(ChipError::Internal(_))
        ));
        for i in 0..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x01;
            std::fs::write(&good.path, &flipped).unwrap();
            assert!(load(&good).is_err(), "a flip at byte {i} is detected");
        }
    }
}
