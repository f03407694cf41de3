//! Signing throughput: P-256 with RustCrypto `p256` 0.14, aws-lc-rs and the software chip
//! (which uses aws-lc-rs), RSA-2048 PKCS#1 v1.5 and SM2 through the software chip (SM2 also
//! with the `sm2` crate's own signer, for comparison).
//!
//! `cargo bench -j2 -p cloudkey-chip --bench sign` runs the criterion groups (short
//! measurements), then prints one summary line per algorithm, in signatures per second from a
//! plain timed loop on one thread.

use std::hint::black_box;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
use cloudkey_chip::{ChipExt, KeyId, KeySpec, KeyTemplate, KeyUsage, SignMech, SM2_DEFAULT_ID};
use criterion::{criterion_group, Criterion};
use p256::ecdsa::signature::hazmat::PrehashSigner;

/// The RFC 6979 A.2.5 P-256 private key (any valid scalar would do).
const P256_SCALAR: &str = "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721";
/// The GM/T 0003.5 example SM2 private key.
const SM2_SCALAR: &str = "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8";

/// Everything the benchmarks sign with.
struct Fixture {
    digest: Vec<u8>,
    digest_info: Vec<u8>,
    rustcrypto: p256::ecdsa::SigningKey,
    aws_lc: EcdsaKeyPair,
    sm2_crate: sm2::dsa::SigningKey,
    chip: SoftChip,
    chip_p256: KeyId,
    chip_rsa: KeyId,
    chip_sm2: KeyId,
}

impl Fixture {
    fn new() -> Self {
        let scalar = hex::decode(P256_SCALAR).unwrap();
        let sm2_scalar = hex::decode(SM2_SCALAR).unwrap();
        let digest = digest::digest(&digest::SHA256, b"cloudkey bench")
            .as_ref()
            .to_vec();
        let mut digest_info = hex::decode("3031300d060960864801650304020105000420").unwrap();
        digest_info.extend_from_slice(&digest);

        let rustcrypto = p256::ecdsa::SigningKey::from_slice(&scalar).unwrap();
        let aws_lc = EcdsaKeyPair::from_private_key_der(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &sec1_p256(&scalar),
        )
        .unwrap();
        let sm2_crate = sm2::dsa::SigningKey::from_slice("1234567812345678", &sm2_scalar).unwrap();

        let chip = SoftChip::new(SoftChipConfig::default()).unwrap();
        chip.domain_generate().unwrap();
        let load = |spec: KeySpec, material: Option<&[u8]>| {
            let template = KeyTemplate {
                id: KeyId::random(),
                spec,
                usage: KeyUsage::SIGN,
            };
            let new = match material {
                Some(m) => chip.import_key(template, m),
                None => chip.generate_key_pair(template),
            }
            .unwrap();
            chip.load_key(&new.blob).unwrap()
        };
        let chip_p256 = load(KeySpec::EC_P256, Some(&scalar));
        let chip_rsa = load(KeySpec::RSA_2048, None);
        let chip_sm2 = load(KeySpec::SM2, Some(&sm2_scalar));
        Self {
            digest,
            digest_info,
            rustcrypto,
            aws_lc,
            sm2_crate,
            chip,
            chip_p256,
            chip_rsa,
            chip_sm2,
        }
    }

    fn p256_rustcrypto(&self) -> p256::ecdsa::Signature {
        self.rustcrypto
            .sign_prehash(black_box(&self.digest))
            .unwrap()
    }

    fn p256_aws_lc(&self) -> aws_lc_rs::signature::Signature {
        let d = digest::Digest::import_less_safe(black_box(&self.digest), &digest::SHA256).unwrap();
        self.aws_lc.sign_digest(&d).unwrap()
    }

    fn p256_chip(&self) -> Vec<u8> {
        self.chip
            .sign(self.chip_p256, &SignMech::Ecdsa, black_box(&self.digest))
            .unwrap()
    }

    fn rsa_chip(&self) -> Vec<u8> {
        self.chip
            .sign(
                self.chip_rsa,
                &SignMech::RsaPkcs1,
                black_box(&self.digest_info),
            )
            .unwrap()
    }

    fn sm2_chip(&self) -> Vec<u8> {
        let mech = SignMech::Sm2 {
            user_id: SM2_DEFAULT_ID.to_vec(),
        };
        self.chip
            .sign(self.chip_sm2, &mech, black_box(b"cloudkey bench"))
            .unwrap()
    }

    fn sm2_chip_digest(&self) -> Vec<u8> {
        self.chip
            .sign(self.chip_sm2, &SignMech::Sm2Digest, black_box(&self.digest))
            .unwrap()
    }

    fn sm2_crate(&self) -> sm2::dsa::Signature {
        self.sm2_crate
            .sign_prehash(black_box(&self.digest))
            .unwrap()
    }
}

/// SEC1 `ECPrivateKey` DER of a P-256 scalar (aws-lc derives the public key).
fn sec1_p256(scalar: &[u8]) -> Vec<u8> {
    let mut der = hex::decode("30310201010420").unwrap();
    der.extend_from_slice(scalar);
    der.extend(hex::decode("a00a06082a8648ce3d030107").unwrap());
    der
}

fn p256_sign(c: &mut Criterion) {
    let f = Fixture::new();
    let mut group = c.benchmark_group("p256_sign_digest");
    group.bench_function("rustcrypto_p256_0.14", |b| b.iter(|| f.p256_rustcrypto()));
    group.bench_function("aws_lc_rs", |b| b.iter(|| f.p256_aws_lc()));
    group.bench_function("softchip", |b| b.iter(|| f.p256_chip()));
    group.finish();
}

fn rsa_sign(c: &mut Criterion) {
    let f = Fixture::new();
    let mut group = c.benchmark_group("rsa2048_pkcs1_sign");
    group.bench_function("softchip", |b| b.iter(|| f.rsa_chip()));
    group.finish();
}

fn sm2_sign(c: &mut Criterion) {
    let f = Fixture::new();
    let mut group = c.benchmark_group("sm2_sign");
    group.bench_function("softchip_message", |b| b.iter(|| f.sm2_chip()));
    group.bench_function("softchip_digest", |b| b.iter(|| f.sm2_chip_digest()));
    group.bench_function("sm2_crate_0.14_digest", |b| b.iter(|| f.sm2_crate()));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = p256_sign, rsa_sign, sm2_sign
}

/// Operations per second of `op` over `n` calls.
fn rate<T>(n: u32, mut op: impl FnMut() -> T) -> f64 {
    for _ in 0..n / 10 {
        black_box(op());
    }
    let start = Instant::now();
    for _ in 0..n {
        black_box(op());
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

fn summary() {
    let f = Fixture::new();
    let n = 2000;
    let rc = rate(n, || f.p256_rustcrypto());
    let aws = rate(n, || f.p256_aws_lc());
    let chip = rate(n, || f.p256_chip());
    let rsa = rate(n, || f.rsa_chip());
    let sm2_msg = rate(n, || f.sm2_chip());
    let sm2_digest = rate(n, || f.sm2_chip_digest());
    let sm2_crate = rate(n, || f.sm2_crate());
    println!();
    println!("summary (one thread, {n} signatures each):");
    println!(
        "p256 sign: rustcrypto p256 = {rc:.0}/s, aws-lc-rs = {aws:.0}/s, ratio = {:.2}",
        aws / rc
    );
    println!("p256 sign: SoftChip::sign (aws-lc-rs) = {chip:.0}/s");
    println!("rsa-2048 pkcs1 sign: SoftChip::sign (aws-lc-rs) = {rsa:.0}/s");
    println!(
        "sm2 sign: SoftChip::sign message = {sm2_msg:.0}/s, digest = {sm2_digest:.0}/s, \
         sm2 crate SigningKey digest = {sm2_crate:.0}/s"
    );
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo bench` passes `--bench`; `cargo test --benches` runs each benchmark once without
    // it, and then the timed summary is skipped.
    if std::env::args().any(|a| a == "--bench") {
        summary();
    }
}
