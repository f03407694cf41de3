//! End-to-end tests of [`SerialChip`] against the `cloudkey-chip-emulator` process over real
//! pseudo-terminals: normal operation, line noise injected by a relay, a stalled chip, a killed
//! chip and hostile bytes sent straight to the emulator.
//!
//! Every wait is bounded and waits on a condition; no test sleeps for a fixed time.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cloudkey_chip::frame::{self, Decoder, Event, Frame};
use cloudkey_chip::serial::{SerialChip, SerialConfig};
use cloudkey_chip::wire::{self, Request};
use cloudkey_chip::{
    Chip, ChipError, ChipExt, CipherMech, HashAlg, KeyId, KeyRef, KeySpec, KeyTemplate, KeyUsage,
    PublicKey, SignMech, MAX_RANDOM_LEN, SM2_DEFAULT_ID,
};
use cloudkey_test_support::process::{send_signal, Launch, Process};
use cloudkey_test_support::wait_for_blocking;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use serialport::{SerialPort, TTYPort};

/// Bound on anything that should happen "at once" in these tests (process start, a reply).
const PROMPT: Duration = Duration::from_secs(20);
/// The per-attempt timeout the fault tests use, so that retries are quick.
const SHORT: Duration = Duration::from_millis(300);
/// Transmissions per idempotent command in the fault tests.
const ATTEMPTS: u32 = 3;

// ---------------------------------------------------------------------------------------------
// Harness: the emulator process
// ---------------------------------------------------------------------------------------------

/// A running `cloudkey-chip-emulator` (a support-crate [`Process`] that announces `PTY <path>`),
/// killed on drop. Its log (stderr, at debug level) is printed only when the test fails, so
/// that passing runs stay quiet.
struct Emulator {
    process: Process,
    path: String,
}

impl Emulator {
    fn start(args: &[&str]) -> Self {
        let launch = Launch::new(env!("CARGO_BIN_EXE_cloudkey-chip-emulator"), "PTY ")
            .args(args)
            .env("RUST_LOG", "debug");
        let process = Process::start(launch, PROMPT).unwrap_or_else(|e| panic!("{e}"));
        let path = process.announced().expect("announced").to_owned();
        assert!(path.starts_with("/dev/"), "{path}");
        Self { process, path }
    }

    fn pid(&self) -> u32 {
        self.process.pid().expect("the emulator runs")
    }

    /// Sends a signal with the `kill` utility (the tests use no libc).
    fn signal(&self, sig: &str) {
        assert!(
            self.process.signal(sig),
            "kill -{sig} {} failed",
            self.pid()
        );
    }

    /// The process state letter from `/proc/<pid>/stat` (`T` when stopped).
    fn state(&self) -> Option<char> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // "pid (comm) S ...": comm may contain spaces, so look after the last ')'.
        stat.rsplit_once(')')?.1.trim_start().chars().next()
    }

    fn is_running(&mut self) -> bool {
        self.process.is_running()
    }
}

/// Polls `cond` until it holds or `limit` passes (the support crate's wait, for a condition).
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    wait_for_blocking(what, limit, || cond().then_some(())).is_ok()
}

fn short_config(path: &str) -> SerialConfig {
    SerialConfig {
        timeout: Some(SHORT),
        retries: ATTEMPTS,
        ..SerialConfig::new(path)
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn template(spec: KeySpec, usage: KeyUsage) -> KeyTemplate {
    KeyTemplate {
        id: KeyId::random(),
        spec,
        usage,
    }
}

fn sign_verify() -> KeyUsage {
    KeyUsage::SIGN | KeyUsage::VERIFY
}

/// Checks an ECDSA P-256 signature (`r || s`) over a digest with the RustCrypto `p256` crate.
fn p256_verifies(public: &PublicKey, digest: &[u8], sig: &[u8]) -> bool {
    let PublicKey::EcP256(point) = public else {
        panic!("not a P-256 key: {public:?}")
    };
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).expect("P-256 point");
    let Ok(sig) = p256::ecdsa::Signature::from_slice(sig) else {
        return false;
    };
    key.verify_prehash(digest, &sig).is_ok()
}

/// A domain and one loaded P-256 signing key: what the fault tests sign with.
fn p256_key(chip: &dyn Chip) -> (KeyId, PublicKey) {
    chip.domain_generate().expect("domain_generate");
    let new = chip
        .generate_key_pair(template(KeySpec::EC_P256, sign_verify()))
        .expect("generate");
    let id = chip.load_key(&new.blob).expect("load");
    (id, new.public.expect("public key"))
}

fn sign_ok(chip: &dyn Chip, key: KeyId, public: &PublicKey, msg: &[u8]) {
    let digest = sha256(msg);
    let sig = chip.sign(key, &SignMech::Ecdsa, &digest).expect("sign");
    assert!(
        p256_verifies(public, &digest, &sig),
        "signature does not verify"
    );
}

fn sign_name() -> &'static str {
    Request::Sign {
        key: KeyId([0; 16]),
        mech: SignMech::Ecdsa,
        data: vec![0; 32],
    }
    .name()
}

/// Writes all of `bytes`, riding out write timeouts (a full pty buffer) for up to [`PROMPT`].
fn write_fully(port: &mut TTYPort, bytes: &[u8]) -> std::io::Result<()> {
    let deadline = Instant::now() + PROMPT;
    let mut written = 0;
    while written < bytes.len() {
        match port.write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut && Instant::now() < deadline => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Deterministic pseudo-random bytes (xorshift64*): reproducible garbage.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next().to_be_bytes()[0]).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Normal operation
// ---------------------------------------------------------------------------------------------

#[test]
fn normal_operation() {
    let emu = Emulator::start(&["--slots", "4", "--serial", "EMU-SERIAL-1"]);
    // Default per-command timeouts (RSA key generation takes a while).
    let chip = SerialChip::open(SerialConfig::new(emu.path.clone())).expect("open");

    let info = chip.info().expect("info");
    assert_eq!(info.serial, "EMU-SERIAL-1");
    assert_eq!(info.slots, 4);
    assert_eq!(info.loaded, 0);
    assert_eq!(info.domain, None);
    assert_eq!(info.identity_key.len(), 65);
    chip.self_test().expect("self_test");

    // No domain yet: keys cannot be made.
    let err = chip
        .generate_key_pair(template(KeySpec::EC_P256, sign_verify()))
        .unwrap_err();
    assert_eq!(err, ChipError::NoDomain);
    let domain = chip.domain_generate().expect("domain_generate");
    assert_eq!(chip.info().unwrap().domain, Some(domain));
    assert_eq!(
        chip.domain_generate().unwrap_err(),
        ChipError::DomainAlreadySet
    );

    // P-256: generate, load, sign, verify on the chip and with the p256 crate.
    let p256 = chip
        .generate_key_pair(template(KeySpec::EC_P256, sign_verify()))
        .unwrap();
    let p256_pub = p256.public.clone().expect("public part");
    let p256_id = chip.load_key(&p256.blob).expect("load P-256");
    assert_eq!(Some(p256_id), p256.blob.key_id());
    assert_eq!(
        chip.load_key(&p256.blob).unwrap(),
        p256_id,
        "loading twice changes nothing"
    );
    assert_eq!(chip.public_key(p256_id).unwrap(), p256_pub);
    let digest = sha256(b"pay 100 to alice");
    let sig = chip
        .sign(p256_id, &SignMech::Ecdsa, &digest)
        .expect("ECDSA sign");
    assert_eq!(sig.len(), 64);
    assert!(p256_verifies(&p256_pub, &digest, &sig));
    chip.verify(&KeyRef::Loaded(p256_id), &SignMech::Ecdsa, &digest, &sig)
        .expect("verify");
    chip.verify(
        &KeyRef::Public(p256_pub.clone()),
        &SignMech::Ecdsa,
        &digest,
        &sig,
    )
    .expect("verify with the public key");
    let other = sha256(b"pay 999 to mallory");
    assert_eq!(
        chip.verify(&KeyRef::Loaded(p256_id), &SignMech::Ecdsa, &other, &sig)
            .unwrap_err(),
        ChipError::SignatureInvalid
    );
    assert!(!p256_verifies(&p256_pub, &other, &sig));

    // SM2: sign a message with the default distinguishing id, verify on the chip.
    let sm2 = chip
        .generate_key_pair(template(KeySpec::SM2, sign_verify()))
        .unwrap();
    assert!(matches!(sm2.public, Some(PublicKey::Sm2(ref p)) if p.len() == 65));
    let sm2_id = chip.load_key(&sm2.blob).expect("load SM2");
    let sm2_mech = SignMech::Sm2 {
        user_id: SM2_DEFAULT_ID.to_vec(),
    };
    let msg = b"transfer 42 yuan";
    let sm2_sig = chip.sign(sm2_id, &sm2_mech, msg).expect("SM2 sign");
    assert_eq!(sm2_sig.len(), 64);
    chip.verify(&KeyRef::Loaded(sm2_id), &sm2_mech, msg, &sm2_sig)
        .expect("SM2 verify");
    assert_eq!(
        chip.verify(
            &KeyRef::Loaded(sm2_id),
            &sm2_mech,
            b"transfer 43 yuan",
            &sm2_sig
        )
        .unwrap_err(),
        ChipError::SignatureInvalid
    );

    // RSA-2048: PSS signature and OAEP encryption round trip.
    let rsa_usage = sign_verify() | KeyUsage::ENCRYPT | KeyUsage::DECRYPT;
    let rsa = chip
        .generate_key_pair(template(KeySpec::RSA_2048, rsa_usage))
        .unwrap();
    assert!(matches!(rsa.public, Some(PublicKey::Rsa { ref n, .. }) if n.len() == 256));
    let rsa_id = chip.load_key(&rsa.blob).expect("load RSA");
    let pss = SignMech::RsaPss {
        hash: HashAlg::Sha256,
    };
    let rsa_sig = chip.sign(rsa_id, &pss, &digest).expect("RSA-PSS sign");
    assert_eq!(rsa_sig.len(), 256);
    chip.verify(&KeyRef::Loaded(rsa_id), &pss, &digest, &rsa_sig)
        .expect("RSA-PSS verify");
    let oaep = CipherMech::RsaOaep {
        hash: HashAlg::Sha256,
        label: Vec::new(),
    };
    let ct = chip
        .encrypt(&KeyRef::Loaded(rsa_id), &oaep, b"PIN block")
        .expect("OAEP encrypt");
    assert_eq!(
        chip.decrypt(rsa_id, &oaep, &ct).expect("OAEP decrypt"),
        b"PIN block"
    );

    // AES-256-GCM round trip; a flipped bit fails authentication.
    let aes_usage = KeyUsage::ENCRYPT | KeyUsage::DECRYPT;
    let aes = chip
        .generate_secret_key(template(KeySpec::AES_256, aes_usage))
        .unwrap();
    assert_eq!(aes.public, None);
    let aes_id = chip.load_key(&aes.blob).expect("load AES");
    let gcm = CipherMech::AesGcm {
        iv: vec![7; 12],
        aad: b"header".to_vec(),
        tag_bits: 128,
    };
    let plain = b"card number 4111 1111 1111 1111".to_vec();
    let mut ct = chip
        .encrypt(&KeyRef::Loaded(aes_id), &gcm, &plain)
        .expect("GCM encrypt");
    assert_eq!(ct.len(), plain.len() + 16);
    assert_eq!(chip.decrypt(aes_id, &gcm, &ct).expect("GCM decrypt"), plain);
    ct[0] ^= 1;
    assert_eq!(
        chip.decrypt(aes_id, &gcm, &ct).unwrap_err(),
        ChipError::EncryptedDataInvalid
    );

    // Random.
    let r1 = chip.random(32).expect("random");
    let r2 = chip.random(32).expect("random");
    assert_eq!((r1.len(), r2.len()), (32, 32));
    assert_ne!(r1, r2);
    assert_eq!(chip.random(MAX_RANDOM_LEN).unwrap().len(), MAX_RANDOM_LEN);
    assert!(matches!(
        chip.random(MAX_RANDOM_LEN + 1),
        Err(ChipError::DataLenRange(_))
    ));

    // Evict, then signing with the evicted key names it.
    chip.evict_key(p256_id).expect("evict");
    chip.evict_key(p256_id)
        .expect("evicting an unloaded key succeeds");
    assert_eq!(
        chip.sign(p256_id, &SignMech::Ecdsa, &digest).unwrap_err(),
        ChipError::KeyNotLoaded(p256_id)
    );
    let never_loaded = KeyId::random();
    assert_eq!(
        chip.sign(never_loaded, &SignMech::Ecdsa, &digest)
            .unwrap_err(),
        ChipError::KeyNotLoaded(never_loaded)
    );

    // Slots: SM2, RSA and AES are loaded; one more fits, the fifth does not.
    assert_eq!(chip.info().unwrap().loaded, 3);
    chip.load_key(&p256.blob).expect("fourth slot");
    let extra = chip
        .generate_secret_key(template(KeySpec::AES_256, aes_usage))
        .unwrap();
    assert_eq!(
        chip.load_key(&extra.blob).unwrap_err(),
        ChipError::SlotsFull(4)
    );
    assert_eq!(chip.info().unwrap().loaded, 4);
    chip.evict_key(sm2_id).unwrap();
    chip.load_key(&extra.blob).expect("a freed slot is reused");

    // Nothing went wrong on the line.
    let stats = chip.stats();
    assert_eq!(stats.retransmissions, 0, "{stats:?}");
    assert_eq!(stats.transmissions, stats.requests, "{stats:?}");
    assert!(!format!("{chip:?}").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Injected line faults: a relay between SerialChip and the emulator
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Host to chip (requests).
    ToChip,
    /// Chip to host (responses).
    ToHost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Noise, including stray start-of-frame bytes, before the next frame.
    Garbage,
    /// Flip a bit of the payload CRC of the next frame.
    CorruptCrc,
    /// Send only the first half of the next frame.
    Truncate,
}

#[derive(Default)]
struct RelayShared {
    /// Faults waiting for the next frame, per direction (index: `Dir as usize`).
    pending: Mutex<[VecDeque<Fault>; 2]>,
    /// Faults actually applied, in order.
    applied: Mutex<Vec<(Dir, Fault)>>,
    /// Frames relayed per direction.
    frames: [AtomicU64; 2],
    /// Problems seen by the pump threads (must stay empty).
    errors: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// A fault-injecting relay: the host opens [`Relay::path`] (the slave of the relay's own pty
/// pair); two threads copy frames between that pair's master and the emulator's pty, applying
/// the faults queued with [`Relay::inject`].
///
/// The relay works on frames, not raw bytes: it decodes the (clean) streams and re-encodes each
/// frame, so it knows where a frame's payload CRC is and where its end is.
struct Relay {
    path: String,
    shared: Arc<RelayShared>,
    threads: Vec<JoinHandle<()>>,
    /// Kept open so the master never sees a hang-up while the host reopens the path.
    _slave: TTYPort,
}

impl Relay {
    fn start(emulator_path: &str) -> Self {
        let (mut master, slave) = TTYPort::pair().expect("relay pty pair");
        let path = slave.name().expect("relay slave path");
        let mut chip_side = serialport::new(emulator_path, 115_200)
            .open_native()
            .expect("open the emulator pty");
        let poll = Duration::from_millis(20);
        master.set_timeout(poll).unwrap();
        chip_side.set_timeout(poll).unwrap();
        let master_w = master.try_clone_native().unwrap();
        let chip_w = chip_side.try_clone_native().unwrap();
        let shared = Arc::new(RelayShared::default());
        let threads = vec![
            spawn_pump(master, chip_w, Dir::ToChip, Arc::clone(&shared)),
            spawn_pump(chip_side, master_w, Dir::ToHost, Arc::clone(&shared)),
        ];
        Self {
            path,
            shared,
            threads,
            _slave: slave,
        }
    }

    fn inject(&self, dir: Dir, fault: Fault) {
        self.shared.pending.lock().unwrap()[dir as usize].push_back(fault);
    }

    fn applied(&self) -> Vec<(Dir, Fault)> {
        self.shared.applied.lock().unwrap().clone()
    }

    fn frames(&self, dir: Dir) -> u64 {
        self.shared.frames[dir as usize].load(Ordering::SeqCst)
    }

    fn errors(&self) -> Vec<String> {
        self.shared.errors.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn spawn_pump(
    mut from: TTYPort,
    mut to: TTYPort,
    dir: Dir,
    shared: Arc<RelayShared>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut decoder = Decoder::new();
        let mut buf = [0u8; 4096];
        let mut noise = Noise(0x9E37_79B9_7F4A_7C15 ^ dir as u64);
        while !shared.stop.load(Ordering::SeqCst) {
            match from.read(&mut buf) {
                Ok(n) => decoder.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(e) => {
                    shared
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("{dir:?} read: {e}"));
                    return;
                }
            }
            while let Some(event) = decoder.next_event() {
                let Event::Frame(f) = event else {
                    // Both ends write well-formed frames over a clean pty.
                    shared
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("{dir:?}: {event:?} on a clean line"));
                    continue;
                };
                let mut bytes = frame::encode(&f).expect("re-encode");
                let fault = shared.pending.lock().unwrap()[dir as usize].pop_front();
                match fault {
                    None => {}
                    Some(Fault::Garbage) => {
                        let mut garbage = vec![
                            0x00, 0xA5, 0x5A, 0x01, 0x00, 0x12, 0x34, 0xFF, 0xA5, 0x00, 0x5A, 0xA5,
                            0xA5, 0x5A, 0x01, 0x01,
                        ];
                        garbage.extend(noise.bytes(48));
                        // A stray SOF right before the real one: its "header" takes the real
                        // frame's first bytes and must be rejected without losing the frame.
                        garbage.extend_from_slice(&frame::SOF);
                        garbage.extend_from_slice(&bytes);
                        bytes = garbage;
                    }
                    Some(Fault::CorruptCrc) => {
                        let last = bytes.len() - 1;
                        bytes[last] ^= 0x40;
                    }
                    Some(Fault::Truncate) => {
                        // Keep the header and part of the payload.
                        let keep = frame::HEADER_LEN + (bytes.len() - frame::HEADER_LEN) / 2;
                        bytes.truncate(keep);
                    }
                }
                // Counted before writing: the far end may act on the bytes (and the test go on
                // to look at the counters) before this thread runs again.
                shared.frames[dir as usize].fetch_add(1, Ordering::SeqCst);
                if let Some(fault) = fault {
                    shared.applied.lock().unwrap().push((dir, fault));
                }
                if let Err(e) = write_fully(&mut to, &bytes) {
                    shared
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("{dir:?} write: {e}"));
                    return;
                }
            }
        }
    })
}

#[test]
fn line_faults_are_survived() {
    let emu = Emulator::start(&[]);
    let relay = Relay::start(&emu.path);
    let chip = SerialChip::open(short_config(&relay.path)).expect("open via relay");
    let (key, public) = p256_key(&chip);
    sign_ok(&chip, key, &public, b"clean line");
    assert!(relay.frames(Dir::ToChip) >= 4 && relay.frames(Dir::ToHost) >= 4);

    let cases = [
        // (direction, fault, what the host must have seen)
        (Dir::ToChip, Fault::Garbage),
        (Dir::ToHost, Fault::Garbage),
        (Dir::ToChip, Fault::CorruptCrc),
        (Dir::ToHost, Fault::CorruptCrc),
        (Dir::ToChip, Fault::Truncate),
        (Dir::ToHost, Fault::Truncate),
    ];
    for (i, (dir, fault)) in cases.into_iter().enumerate() {
        let before = chip.stats();
        let applied_before = relay.applied().len();
        relay.inject(dir, fault);
        let started = Instant::now();
        sign_ok(&chip, key, &public, format!("message {i}").as_bytes());
        let elapsed = started.elapsed();
        let after = chip.stats();
        let applied = relay.applied();
        assert_eq!(
            applied.len(),
            applied_before + 1,
            "{dir:?} {fault:?} was not applied"
        );
        assert_eq!(applied[applied_before], (dir, fault));
        let delta = |f: fn(&cloudkey_chip::serial::SerialStats) -> u64| f(&after) - f(&before);
        match (dir, fault) {
            // Resynchronisation alone: no retransmission needed.
            (_, Fault::Garbage) => {
                assert_eq!(
                    delta(|s| s.retransmissions),
                    0,
                    "{dir:?} {fault:?}: {after:?}"
                );
                assert!(elapsed < SHORT, "{dir:?} {fault:?} took {elapsed:?}");
            }
            // The chip NAKs at once; the host resends at once.
            (Dir::ToChip, Fault::CorruptCrc) => {
                assert_eq!(delta(|s| s.naks), 1, "{after:?}");
                assert_eq!(delta(|s| s.retransmissions), 1, "{after:?}");
                assert!(elapsed < SHORT, "NAK recovery took {elapsed:?}");
            }
            (Dir::ToHost, Fault::CorruptCrc) => {
                assert_eq!(delta(|s| s.corrupt_responses), 1, "{after:?}");
                assert_eq!(delta(|s| s.retransmissions), 1, "{after:?}");
                assert!(
                    elapsed < SHORT,
                    "corrupt-response recovery took {elapsed:?}"
                );
            }
            // Nothing usable arrives: the attempt times out and is retried.
            (_, Fault::Truncate) => {
                assert_eq!(delta(|s| s.timeouts), 1, "{dir:?}: {after:?}");
                assert_eq!(delta(|s| s.retransmissions), 1, "{dir:?}: {after:?}");
                assert!(
                    elapsed >= SHORT,
                    "{dir:?} truncate recovered in {elapsed:?}?"
                );
            }
        }
    }

    // Two faults on one call: the request is truncated and then its retransmission corrupted;
    // the third attempt gets through.
    relay.inject(Dir::ToChip, Fault::Truncate);
    relay.inject(Dir::ToChip, Fault::CorruptCrc);
    sign_ok(&chip, key, &public, b"two faults");
    // A fault on every attempt exhausts the budget.
    let before = relay.applied().len();
    for _ in 0..ATTEMPTS {
        relay.inject(Dir::ToHost, Fault::Truncate);
    }
    let started = Instant::now();
    let err = chip
        .sign(key, &SignMech::Ecdsa, &sha256(b"doomed"))
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(err, ChipError::Timeout { command, .. } if command == sign_name()),
        "{err:?}"
    );
    assert_eq!(relay.applied().len(), before + ATTEMPTS as usize);
    assert!(
        elapsed < SHORT * ATTEMPTS + Duration::from_secs(1),
        "{elapsed:?}"
    );
    // The line is still good afterwards.
    sign_ok(&chip, key, &public, b"after the storm");

    // Not idempotent (PROTOCOL.md, section 6): a NAKed request is resent (the chip did not
    // execute it), a corrupted response is not (it may have).
    let aes = || template(KeySpec::AES_256, KeyUsage::ENCRYPT | KeyUsage::DECRYPT);
    let before = chip.stats();
    relay.inject(Dir::ToChip, Fault::CorruptCrc);
    chip.generate_secret_key(aes())
        .expect("generate after a NAK");
    let after = chip.stats();
    assert_eq!(
        (
            after.naks - before.naks,
            after.transmissions - before.transmissions
        ),
        (1, 2)
    );
    relay.inject(Dir::ToHost, Fault::CorruptCrc);
    let err = chip.generate_secret_key(aes()).unwrap_err();
    assert!(matches!(err, ChipError::Protocol(_)), "{err:?}");
    assert_eq!(chip.stats().transmissions - after.transmissions, 1);
    sign_ok(&chip, key, &public, b"still fine");
    assert_eq!(relay.errors(), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// A stalled chip and a dead chip
// ---------------------------------------------------------------------------------------------

#[test]
fn stalled_emulator_times_out_then_recovers() {
    let emu = Emulator::start(&[]);
    let chip = SerialChip::open(short_config(&emu.path)).expect("open");
    let (key, public) = p256_key(&chip);
    sign_ok(&chip, key, &public, b"before the stall");

    emu.signal("STOP");
    assert!(
        wait_until("the emulator to stop", PROMPT, || emu.state() == Some('T')),
        "emulator did not stop"
    );
    let before = chip.stats();
    let started = Instant::now();
    let err = chip
        .sign(key, &SignMech::Ecdsa, &sha256(b"stalled"))
        .unwrap_err();
    let elapsed = started.elapsed();
    let ChipError::Timeout { command, after } = err else {
        panic!("expected Timeout: {err:?}")
    };
    assert_eq!(command, sign_name());
    assert!(after >= SHORT * ATTEMPTS, "gave up after {after:?}");
    assert!(after <= elapsed);
    let bound = SHORT * ATTEMPTS + Duration::from_millis(700);
    assert!(
        elapsed < bound,
        "the timeout took {elapsed:?} (bound {bound:?})"
    );
    let stats = chip.stats();
    assert_eq!(
        stats.transmissions - before.transmissions,
        u64::from(ATTEMPTS)
    );
    assert_eq!(stats.timeouts - before.timeouts, u64::from(ATTEMPTS));

    // A command that is not idempotent is transmitted once.
    let started = Instant::now();
    let aes = template(KeySpec::AES_256, KeyUsage::ENCRYPT | KeyUsage::DECRYPT);
    let err = chip.generate_secret_key(aes).unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            ChipError::Timeout {
                command: "generate_secret_key",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        elapsed >= SHORT && elapsed < SHORT + Duration::from_millis(700),
        "{elapsed:?}"
    );
    assert_eq!(chip.stats().transmissions - stats.transmissions, 1);

    emu.signal("CONT");
    assert!(
        wait_until("the emulator to continue", PROMPT, || {
            emu.state() != Some('T')
        }),
        "emulator did not resume"
    );
    // The resumed chip answers the abandoned attempts first: those replies are stale.
    sign_ok(&chip, key, &public, b"after the stall");
    let stats = chip.stats();
    let abandoned = u64::from(ATTEMPTS) + 1;
    assert_eq!(
        stats.ignored_frames - before.ignored_frames,
        abandoned,
        "{stats:?}"
    );
    assert!(!chip.is_lost());
}

#[test]
fn killed_emulator_is_device_lost() {
    let mut emu = Emulator::start(&[]);
    let chip = SerialChip::open(short_config(&emu.path)).expect("open");
    chip.info().expect("info");

    emu.process.kill();
    let started = Instant::now();
    let err = chip.info().unwrap_err();
    let elapsed = started.elapsed();
    assert!(matches!(err, ChipError::DeviceLost(_)), "{err:?}");
    assert!(elapsed < SHORT, "device loss took {elapsed:?} to notice");
    assert!(chip.is_lost());

    for _ in 0..3 {
        let started = Instant::now();
        let err = chip.random(16).unwrap_err();
        assert!(matches!(err, ChipError::DeviceLost(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}

#[test]
fn killed_emulator_during_a_call_is_device_lost() {
    let emu = Emulator::start(&[]);
    let chip = Arc::new(
        SerialChip::open(SerialConfig {
            timeout: Some(Duration::from_secs(30)),
            ..SerialConfig::new(emu.path.clone())
        })
        .expect("open"),
    );
    chip.info().expect("info");
    // Stop the chip so that the call is waiting for an answer when the process dies.
    emu.signal("STOP");
    assert!(wait_until("the emulator to stop", PROMPT, || emu.state() == Some('T')));
    let sent = chip.stats().transmissions;
    let pid = emu.pid();
    let watcher = Arc::clone(&chip);
    let killer = thread::spawn(move || {
        // Kill once the request has been written: the call is then waiting for the answer.
        assert!(wait_until("the request to be sent", PROMPT, || {
            watcher.stats().transmissions > sent
        }));
        assert!(send_signal(pid, "KILL"));
    });
    let started = Instant::now();
    let err = chip.info().unwrap_err();
    let elapsed = started.elapsed();
    killer.join().expect("killer");
    assert!(matches!(err, ChipError::DeviceLost(_)), "{err:?}");
    assert!(
        elapsed < Duration::from_secs(5),
        "noticed after {elapsed:?}; the timeout is 30 s"
    );
    assert!(matches!(chip.info(), Err(ChipError::DeviceLost(_))));
}

// ---------------------------------------------------------------------------------------------
// Hostile bytes straight to the emulator
// ---------------------------------------------------------------------------------------------

/// A raw connection to the emulator speaking frames by hand.
struct RawLine {
    port: TTYPort,
    decoder: Decoder,
}

impl RawLine {
    fn open(path: &str) -> Self {
        let mut port = serialport::new(path, 115_200)
            .open_native()
            .expect("open raw");
        port.set_timeout(Duration::from_millis(20)).unwrap();
        Self {
            port,
            decoder: Decoder::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        write_fully(&mut self.port, bytes).expect("write");
    }

    fn request(&mut self, seq: u16, cmd: u8, payload: Vec<u8>) -> Vec<u8> {
        frame::encode(&Frame {
            response: false,
            seq,
            cmd,
            status: 0,
            payload,
        })
        .unwrap()
    }

    /// The next event from the emulator, within [`PROMPT`].
    fn next(&mut self) -> Event {
        let deadline = Instant::now() + PROMPT;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(e) = self.decoder.next_event() {
                return e;
            }
            assert!(Instant::now() < deadline, "no answer from the emulator");
            match self.port.read(&mut buf) {
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    /// The next frame, which must be the response to (`seq`, `cmd`).
    fn reply(&mut self, seq: u16, cmd: u8) -> Frame {
        match self.next() {
            Event::Frame(f) => {
                assert!(f.response, "{f:?}");
                assert_eq!((f.seq, f.cmd), (seq, cmd), "{f:?}");
                f
            }
            other => panic!("expected the reply to seq {seq}: {other:?}"),
        }
    }
}

#[test]
fn hostile_bytes_do_not_hurt_the_emulator() {
    let mut emu = Emulator::start(&["--frame-gap-ms", "50"]);
    let mut noise = Noise(0x0123_4567_89AB_CDEF);
    let mut line = RawLine::open(&emu.path);
    let info = Request::Info.cmd();
    let sign = Request::Sign {
        key: KeyId([0; 16]),
        mech: SignMech::Ecdsa,
        data: vec![],
    }
    .cmd();

    // 1. Pure noise, sprinkled with start-of-frame bytes; then a good request is answered.
    for _ in 0..16 {
        let mut junk = noise.bytes(1024);
        for i in (0..junk.len()).step_by(37) {
            junk[i] = 0xA5;
            if i + 1 < junk.len() {
                junk[i + 1] = 0x5A;
            }
        }
        line.send(&junk);
    }
    let req = line.request(1, info, Vec::new());
    line.send(&req);
    assert_eq!(line.reply(1, info).status, wire::STATUS_OK);

    // 2. Every command code with random payloads: each gets an answer with its seq and cmd,
    //    an error status unless the payload happened to decode.
    let mut seq = 100u16;
    for cmd in 0..=u8::MAX {
        for len in [0usize, 1, 7, 40] {
            let payload = noise.bytes(len);
            if Request::decode(cmd, &payload).is_ok() {
                // A request that decodes is a legitimate command, not hostile input.
                continue;
            }
            seq += 1;
            let req = line.request(seq, cmd, payload);
            line.send(&req);
            let reply = line.reply(seq, cmd);
            assert_ne!(reply.status, wire::STATUS_OK, "cmd {cmd:#04x} len {len}");
            assert_ne!(reply.status, wire::STATUS_BAD_FRAME);
            // The error decodes to something (never a panic).
            let _ = wire::decode_error(reply.status, &reply.payload);
        }
    }

    // 3. A malformed sign request gets an error status.
    seq += 1;
    let req = line.request(seq, sign, vec![0xFF; 3]);
    line.send(&req);
    assert_ne!(line.reply(seq, sign).status, wire::STATUS_OK);

    // 4. A response frame sent to the chip is ignored: the next reply is for the next request.
    let bogus = frame::encode(&Frame {
        response: true,
        seq: 7,
        cmd: info,
        status: 0,
        payload: vec![1, 2, 3],
    })
    .unwrap();
    line.send(&bogus);
    seq += 1;
    let req = line.request(seq, info, Vec::new());
    line.send(&req);
    assert_eq!(line.reply(seq, info).status, wire::STATUS_OK);

    // 5. A request whose payload CRC is bad is NAKed with its seq and cmd.
    seq += 1;
    let mut bad = line.request(seq, sign, vec![0; 40]);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    line.send(&bad);
    let nak = line.reply(seq, sign);
    assert_eq!(nak.status, wire::STATUS_BAD_FRAME);
    assert!(nak.payload.is_empty());

    // 6. A header announcing more payload than allowed is noise, as is one with a bad HCRC.
    let mut oversized = line.request(9, info, Vec::new());
    oversized[8..10].copy_from_slice(&u16::try_from(frame::MAX_PAYLOAD + 1).unwrap().to_be_bytes());
    let hcrc = frame::crc16(&oversized[..10]);
    oversized[10..12].copy_from_slice(&hcrc.to_be_bytes());
    line.send(&oversized);
    let mut bad_hcrc = line.request(10, info, Vec::new());
    bad_hcrc[11] ^= 0xFF;
    line.send(&bad_hcrc);
    seq += 1;
    let req = line.request(seq, info, Vec::new());
    line.send(&req);
    assert_eq!(line.reply(seq, info).status, wire::STATUS_OK);

    // 7. A truncated request followed by silence is dropped after the frame gap; a later
    //    request is answered normally. (The truncated frame announces a maximal payload, so
    //    without the gap rule it would swallow the next request.)
    let big = line.request(11, sign, vec![0; frame::MAX_PAYLOAD]);
    line.send(&big[..100]);
    // Probe until a probe is answered. A probe sent before the emulator dropped the partial
    // frame becomes part of its payload and goes unanswered; the drop comes after one frame
    // gap of silence, so at most the first probe may be lost.
    let mut probes = 0;
    let answered = wait_until("a probe to be answered", PROMPT, || {
        probes += 1;
        seq += 1;
        let req = line.request(seq, info, Vec::new());
        line.send(&req);
        // Give this probe a short while to be answered; unanswered probes become payload.
        let deadline = Instant::now() + Duration::from_millis(200);
        let mut buf = [0u8; 4096];
        loop {
            if let Some(Event::Frame(f)) = line.decoder.next_event() {
                return f.response && f.seq == seq && f.status == wire::STATUS_OK;
            }
            if Instant::now() >= deadline {
                return false;
            }
            if let Ok(n) = line.port.read(&mut buf) {
                line.decoder.push(&buf[..n]);
            }
        }
    });
    assert!(
        answered,
        "the emulator never recovered from a truncated frame"
    );
    assert!(
        probes <= 2,
        "{probes} probes were needed: the partial frame was not dropped"
    );

    // 8. A maximal frame of garbage payload for a command that needs none.
    seq += 1;
    let req = line.request(seq, info, noise.bytes(frame::MAX_PAYLOAD));
    line.send(&req);
    assert_ne!(line.reply(seq, info).status, wire::STATUS_OK);

    // The emulator is alive and serves a SerialChip after all that.
    drop(line);
    assert!(emu.is_running(), "the emulator exited");
    let chip = SerialChip::open(short_config(&emu.path)).expect("open after the abuse");
    chip.info().expect("info after the abuse");
    chip.self_test().expect("self test after the abuse");
    assert!(emu.is_running());
}

#[test]
fn concurrent_callers_are_serialised() {
    let emu = Emulator::start(&[]);
    let chip = Arc::new(SerialChip::open(short_config(&emu.path)).expect("open"));
    let (key, public) = p256_key(chip.as_ref());
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let chip = Arc::clone(&chip);
            let public = public.clone();
            thread::spawn(move || {
                for i in 0..25 {
                    sign_ok(chip.as_ref(), key, &public, format!("{t}/{i}").as_bytes());
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let stats = chip.stats();
    assert_eq!(stats.retransmissions, 0, "{stats:?}");
    assert_eq!(stats.ignored_frames, 0, "{stats:?}");
}
