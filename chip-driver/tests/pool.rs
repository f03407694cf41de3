//! The chip pool: concurrency across chips, LRU eviction and reload, busy under saturation,
//! failover away from a lost chip.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::Mutex;

use cloudkey_chip::pool::{ChipPool, PoolConfig, PoolExt, PoolKey};
use cloudkey_chip::soft::{SoftChip, SoftChipConfig};
use cloudkey_chip::{
    Chip, ChipError, ChipExt, KeyId, KeySpec, KeyTemplate, KeyUsage, PublicKey, Request, Response,
    Result, SignMech,
};
use p256::ecdsa::signature::hazmat::PrehashVerifier;

fn soft(slots: u32, latency: Option<Duration>) -> Arc<SoftChip> {
    Arc::new(
        SoftChip::new(SoftChipConfig {
            slots,
            latency,
            ..SoftChipConfig::default()
        })
        .unwrap(),
    )
}

/// `n` software chips sharing one domain key, transferred chip to chip.
fn domain_chips(n: usize, slots: u32, latency: Option<Duration>) -> Vec<Arc<SoftChip>> {
    let chips: Vec<_> = (0..n).map(|_| soft(slots, latency)).collect();
    chips[0].domain_generate().unwrap();
    for c in &chips[1..] {
        let package = chips[0]
            .domain_export(&c.info().unwrap().identity_key)
            .unwrap();
        c.domain_import(&package).unwrap();
    }
    chips
}

fn as_dyn(chips: &[Arc<SoftChip>]) -> Vec<Arc<dyn Chip>> {
    chips.iter().map(|c| c.clone() as Arc<dyn Chip>).collect()
}

fn p256_template() -> KeyTemplate {
    KeyTemplate {
        id: KeyId::random(),
        spec: KeySpec::EC_P256,
        usage: KeyUsage::SIGN | KeyUsage::VERIFY | KeyUsage::SENSITIVE,
    }
}

fn verifier(public: &PublicKey) -> p256::ecdsa::VerifyingKey {
    let PublicKey::EcP256(point) = public else {
        panic!("not a P-256 key: {public:?}")
    };
    p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap()
}

fn check(vk: &p256::ecdsa::VerifyingKey, digest: &[u8], sig: &[u8]) {
    let sig = p256::ecdsa::Signature::from_slice(sig).unwrap();
    vk.verify_prehash(digest, &sig)
        .expect("signature from the pool verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_sign_through_four_chips_and_every_signature_verifies() {
    let chips = domain_chips(4, 16, None);
    let pool = Arc::new(ChipPool::new(as_dyn(&chips), PoolConfig::default()).unwrap());
    let mut keys = Vec::new();
    for _ in 0..8 {
        let new = pool.generate_key_pair(p256_template()).await.unwrap();
        let vk = verifier(new.public.as_ref().unwrap());
        keys.push((PoolKey::new(new.blob).unwrap(), vk));
    }
    let keys = Arc::new(keys);
    let mut tasks = Vec::new();
    for t in 0..64usize {
        let pool = pool.clone();
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..40usize {
                let (key, vk) = &keys[(t + i) % keys.len()];
                let digest = aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    format!("task {t} message {i}").as_bytes(),
                );
                let sig = pool
                    .sign(key, SignMech::Ecdsa, digest.as_ref().to_vec())
                    .await
                    .unwrap();
                check(vk, digest.as_ref(), &sig);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let status = pool.status();
    assert_eq!(status.iter().map(|s| s.served).sum::<u64>(), 64 * 40 + 8);
    for s in &status {
        assert!(s.served > 0, "every chip takes part: {status:?}");
        assert_eq!(s.queued, 0);
        assert!(s.healthy);
    }
}

#[tokio::test]
async fn lru_evicts_within_the_slot_count_and_reloads_on_a_miss() {
    let chips = domain_chips(1, 2, None);
    let pool = ChipPool::new(as_dyn(&chips), PoolConfig::default()).unwrap();
    let mut keys = Vec::new();
    for _ in 0..3 {
        let new = pool.generate_key_pair(p256_template()).await.unwrap();
        keys.push((
            PoolKey::new(new.blob).unwrap(),
            verifier(new.public.as_ref().unwrap()),
        ));
    }
    let digest = [7u8; 32];
    // a b a: two loads, one hit. c evicts b (least recently used), then b must be reloaded.
    for (i, expect_loads) in [(0, 1), (1, 2), (0, 2), (2, 3), (0, 3), (1, 4)] {
        let (key, vk) = &keys[i];
        let sig = pool
            .sign(key, SignMech::Ecdsa, digest.to_vec())
            .await
            .unwrap();
        check(vk, &digest, &sig);
        let st = &pool.status()[0];
        assert_eq!(st.loads, expect_loads, "after signing with key {i}: {st:?}");
        assert!(st.loaded <= 2);
        let info = chips[0].info().unwrap();
        assert!(
            info.loaded <= info.slots,
            "chip holds no more keys than its slots: {info:?}"
        );
    }
    // The evicted key really left the chip: signing with it directly fails until reloaded.
    let evicted = keys[2].0.id();
    assert_eq!(
        chips[0].sign(evicted, &SignMech::Ecdsa, &digest),
        Err(ChipError::KeyNotLoaded(evicted))
    );
}

#[tokio::test]
async fn a_key_sticks_to_the_chip_that_has_it_loaded() {
    let chips = domain_chips(3, 8, None);
    let pool = ChipPool::new(as_dyn(&chips), PoolConfig::default()).unwrap();
    let new = pool.generate_key_pair(p256_template()).await.unwrap();
    let key = PoolKey::new(new.blob).unwrap();
    for _ in 0..20 {
        pool.sign(&key, SignMech::Ecdsa, vec![1; 32]).await.unwrap();
    }
    let loads: u64 = pool.status().iter().map(|s| s.loads).sum();
    assert_eq!(
        loads,
        1,
        "sequential use of one key loads it once: {:?}",
        pool.status()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_pool_answers_busy_quickly_instead_of_hanging() {
    let chips = domain_chips(1, 8, Some(Duration::from_millis(100)));
    let config = PoolConfig {
        queue_depth: 1,
        queue_timeout: Duration::from_millis(30),
        ..PoolConfig::default()
    };
    let pool = Arc::new(ChipPool::new(as_dyn(&chips), config).unwrap());
    let new = pool.generate_key_pair(p256_template()).await.unwrap();
    let key = PoolKey::new(new.blob).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let pool = pool.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            pool.sign(&key, SignMech::Ecdsa, vec![2; 32]).await
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(ChipError::Busy(_)) => busy += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // One job runs and one waits in the queue; the rest cannot get in within 30 ms.
    assert!(ok >= 1, "some requests are served");
    assert!(busy >= 10, "most requests are refused as busy, got {busy}");
    // Without shedding, 16 jobs of 100 ms each would take 1.6 s.
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "took {:?}",
        started.elapsed()
    );
    // Once the load is gone the pool serves again.
    pool.sign(&key, SignMech::Ecdsa, vec![3; 32]).await.unwrap();
}

/// A chip that can be made to vanish, like a serial chip whose cable was pulled.
struct Unpluggable {
    inner: Arc<SoftChip>,
    gone: AtomicBool,
}

impl Unpluggable {
    fn check(&self) -> Result<()> {
        if self.gone.load(Ordering::SeqCst) {
            Err(ChipError::DeviceLost("unplugged".into()))
        } else {
            Ok(())
        }
    }
}

impl Chip for Unpluggable {
    fn execute(&self, request: &Request) -> Result<Response> {
        self.check()?;
        self.inner.execute(request)
    }
}

#[tokio::test]
async fn a_lost_chip_leaves_rotation_and_its_request_runs_on_another() {
    let chips = domain_chips(2, 8, None);
    let flaky = Arc::new(Unpluggable {
        inner: chips[0].clone(),
        gone: AtomicBool::new(false),
    });
    let pool = ChipPool::new(
        vec![flaky.clone() as Arc<dyn Chip>, chips[1].clone()],
        PoolConfig::default(),
    )
    .unwrap();
    let new = pool.generate_key_pair(p256_template()).await.unwrap();
    let vk = verifier(new.public.as_ref().unwrap());
    let key = PoolKey::new(new.blob).unwrap();
    // Load the key on both chips so that the first pick may well be the flaky one.
    for i in 0..2 {
        pool.call_on(
            i,
            cloudkey_chip::wire::Request::PublicKey(key.id()),
            std::slice::from_ref(&key),
        )
        .await
        .unwrap();
    }
    flaky.gone.store(true, Ordering::SeqCst);
    for _ in 0..10 {
        let sig = pool.sign(&key, SignMech::Ecdsa, vec![9; 32]).await.unwrap();
        check(&vk, &[9; 32], &sig);
    }
    let status = pool.status();
    assert!(
        !status[0].healthy,
        "the unplugged chip is marked lost: {status:?}"
    );
    assert!(status[1].healthy);
    // With no chip left, requests fail with a clear error instead of hanging.
    let solo = ChipPool::new(vec![flaky.clone() as Arc<dyn Chip>], PoolConfig::default());
    assert!(
        matches!(solo, Err(ChipError::DeviceLost(_))),
        "info fails on a lost chip"
    );
}

/// A chip that notes where the data of each signing request it executes lies in memory.
struct Recording {
    inner: Arc<SoftChip>,
    data_at: Mutex<Vec<usize>>,
}

impl Chip for Recording {
    fn execute(&self, request: &Request) -> Result<Response> {
        if let Request::Sign { data, .. } = request {
            let at = data.as_ptr() as usize;
            self.data_at.lock().unwrap().push(at);
        }
        self.inner.execute(request)
    }
}

/// The pool hands the chip the caller's request itself: the data to sign is not copied on the
/// way (it used to be cloned twice per call, once for the failover retry and once per run).
#[tokio::test]
async fn the_pool_passes_the_callers_data_to_the_chip_without_copying_it() {
    let chip = Arc::new(Recording {
        inner: domain_chips(1, 4, None).remove(0),
        data_at: Mutex::new(Vec::new()),
    });
    let pool = ChipPool::new(vec![chip.clone() as Arc<dyn Chip>], PoolConfig::default()).unwrap();
    let new = pool.generate_key_pair(p256_template()).await.unwrap();
    let key = PoolKey::new(new.blob).unwrap();
    let data = vec![7u8; 32];
    let caller_at = data.as_ptr() as usize;
    let req = Request::Sign {
        key: key.id(),
        mech: SignMech::Ecdsa,
        data,
    };
    let sig = pool.call(req, std::slice::from_ref(&key)).await.unwrap();
    assert!(matches!(sig, Response::Bytes(_)), "{sig:?}");
    assert_eq!(*chip.data_at.lock().unwrap(), [caller_at]);
}
