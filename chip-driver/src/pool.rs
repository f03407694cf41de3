//! [`ChipPool`]: several chips behind one async handle.
//!
//! * Each chip has a dedicated OS thread (its *worker*) fed by a bounded queue. Chip work never
//!   runs on the async runtime's threads: async callers only enqueue a job and await its reply.
//! * A request goes to the chip with the fewest queued jobs, preferring one that already holds
//!   the request's key in a slot unless its queue is longer than the shortest by more than
//!   [`PoolConfig::affinity_slack`]; then the key is loaded on a less busy chip as well, so a hot
//!   key spreads over the chips instead of queueing behind one.
//! * Each worker keeps an LRU of the keys loaded in its chip, never more than the chip's slot
//!   count: on a miss it evicts the least recently used key and loads the blob that travels with
//!   the request.
//! * Queues are bounded. When every queue is full, a request waits at most
//!   [`PoolConfig::queue_timeout`] for room and then fails with [`ChipError::Busy`]; a job that
//!   sat in a queue past that deadline is answered `Busy` without being run, so an overloaded
//!   pool sheds load instead of hanging.
//! * A chip that reports [`ChipError::DeviceLost`] is taken out of rotation; the request that
//!   found it lost is run once more on another chip (the same request: it is shared with the
//!   worker, never copied).
//! * The pool passes [`Request`]s through without knowing their kinds: all it needs is which
//!   keys a request uses ([`Request::key_ids`]) and their blobs. The typed calls (`sign`,
//!   `generate_key_pair`, ...) are the helpers of [`PoolExt`], built on [`ChipPool::call`].

use std::collections::HashSet;
use std::fmt;
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::{mpsc, oneshot};

use crate::wire::{Request, Response};
use crate::{Chip, ChipError, ChipExt as _, KeyBlob, KeyId, PublicKey, Result};

mod ext;
pub use ext::PoolExt;

/// Pool tuning.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Jobs each chip's queue holds before callers must wait.
    pub queue_depth: usize,
    /// How long a request may wait for room in a queue, and in the queue, before it fails with
    /// [`ChipError::Busy`].
    pub queue_timeout: Duration,
    /// How many more queued jobs a chip holding the key may have than the least busy chip and
    /// still be preferred.
    pub affinity_slack: usize,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            queue_depth: 256,
            queue_timeout: Duration::from_secs(2),
            affinity_slack: 4,
        }
    }
}

/// A key as the pool needs it: its id and the blob to load wherever it is missing.
#[derive(Clone, Debug)]
pub struct PoolKey {
    id: KeyId,
    blob: Arc<KeyBlob>,
}

impl PoolKey {
    /// Wraps a blob.
    ///
    /// # Errors
    /// [`ChipError::BlobInvalid`] when the blob's header does not parse.
    pub fn new(blob: KeyBlob) -> Result<Self> {
        let id = blob.header()?.id;
        Ok(Self {
            id,
            blob: Arc::new(blob),
        })
    }

    /// The key's id.
    #[must_use]
    pub fn id(&self) -> KeyId {
        self.id
    }
}

/// One chip's load, as [`ChipPool::status`] reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChipStatus {
    /// Position of the chip in the pool.
    pub index: usize,
    /// Chip model and serial number.
    pub name: String,
    /// Jobs queued or running.
    pub queued: usize,
    /// Keys loaded by the pool.
    pub loaded: usize,
    /// The chip's slot count.
    pub slots: u32,
    /// Jobs completed since the pool started.
    pub served: u64,
    /// Blobs loaded since the pool started (LRU misses).
    pub loads: u64,
    /// False once the chip reported it was lost.
    pub healthy: bool,
}

struct Job {
    /// Shared with the caller, who may send it to another chip if this one is lost.
    request: Arc<Request>,
    keys: Vec<PoolKey>,
    enqueued: Instant,
    queued_until: Instant,
    reply: oneshot::Sender<Result<Response>>,
}

/// What the async side shares with a chip's worker thread.
struct Shared {
    name: String,
    slots: u32,
    queued: AtomicUsize,
    served: AtomicU64,
    loads: AtomicU64,
    healthy: AtomicBool,
    /// Mirror of the worker's LRU, read when picking a chip.
    loaded: RwLock<HashSet<KeyId>>,
}

struct Lane {
    tx: mpsc::Sender<Job>,
    shared: Arc<Shared>,
}

/// Several chips behind one handle; see the module docs.
pub struct ChipPool {
    lanes: Vec<Lane>,
    config: PoolConfig,
    rotor: AtomicUsize,
}

impl fmt::Debug for ChipPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChipPool")
            .field("chips", &self.status())
            .finish()
    }
}

impl ChipPool {
    /// Starts one worker thread per chip. Each chip's [`Chip::info`] gives its slot count.
    ///
    /// # Errors
    /// [`ChipError::Internal`] for an empty pool, a zero queue depth or a chip without slots;
    /// the chip's own error when `info` fails.
    pub fn new(chips: Vec<Arc<dyn Chip>>, config: PoolConfig) -> Result<Self> {
        if chips.is_empty() {
            return Err(ChipError::Internal(
                "a chip pool needs at least one chip".into(),
            ));
        }
        if config.queue_depth == 0 {
            return Err(ChipError::Internal("queue depth must be at least 1".into()));
        }
        let mut lanes = Vec::with_capacity(chips.len());
        for (index, chip) in chips.into_iter().enumerate() {
            let info = chip.info()?;
            let slots = NonZeroUsize::new(info.slots as usize).ok_or_else(|| {
                ChipError::Internal(format!("chip {} reports no key slots", info.serial))
            })?;
            let shared = Arc::new(Shared {
                name: format!("{}#{}", info.model, info.serial),
                slots: info.slots,
                queued: AtomicUsize::new(0),
                served: AtomicU64::new(0),
                loads: AtomicU64::new(0),
                healthy: AtomicBool::new(true),
                loaded: RwLock::new(HashSet::new()),
            });
            let (tx, rx) = mpsc::channel(config.queue_depth);
            let worker = Worker {
                chip,
                shared: shared.clone(),
                lru: LruCache::new(slots),
            };
            thread::Builder::new()
                .name(format!("chip-{index}"))
                .spawn(move || worker.run(rx))
                .map_err(|e| ChipError::Internal(format!("cannot start chip worker: {e}")))?;
            lanes.push(Lane { tx, shared });
        }
        Ok(Self {
            lanes,
            config,
            rotor: AtomicUsize::new(0),
        })
    }

    /// Number of chips.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    /// Always false: a pool has at least one chip.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// The load of every chip.
    #[must_use]
    pub fn status(&self) -> Vec<ChipStatus> {
        self.lanes
            .iter()
            .enumerate()
            .map(|(index, lane)| {
                let s = &lane.shared;
                ChipStatus {
                    index,
                    name: s.name.clone(),
                    queued: s.queued.load(Ordering::Relaxed),
                    loaded: s.loaded.read().map_or(0, |l| l.len()),
                    slots: s.slots,
                    served: s.served.load(Ordering::Relaxed),
                    loads: s.loads.load(Ordering::Relaxed),
                    healthy: s.healthy.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Runs `request` on one chip of the pool, after loading `keys` (the blobs of the keys the
    /// request uses) into that chip where they are missing. The pool does not look at the
    /// request's kind: it schedules by [`Request::key_ids`] (a chip that holds the first key is
    /// preferred) and requests that use no key go to the least busy chip. The typed calls are
    /// the helpers of [`PoolExt`].
    ///
    /// # Errors
    /// The chip's error; [`ChipError::Busy`] when no queue had room in time;
    /// [`ChipError::DeviceLost`] when no healthy chip is left.
    pub async fn call(&self, request: Request, keys: &[PoolKey]) -> Result<Response> {
        let affinity = request.key_ids().next();
        // Shared, not copied: the retry below sends the same request (data included) again.
        let request = Arc::new(request);
        let first = self.pick(affinity, None)?;
        match self.enqueue(first, request.clone(), keys).await {
            // The chip vanished under this request: it is out of rotation now, so the retry
            // lands on another chip (or finds none left).
            Err(ChipError::DeviceLost(_)) if self.lanes.len() > 1 => {
                let second = self.pick(affinity, Some(first))?;
                self.enqueue(second, request, keys).await
            }
            other => other,
        }
    }

    /// Runs `request` on chip `index` (for per-chip work such as domain transfer).
    ///
    /// # Errors
    /// As [`ChipPool::call`]; [`ChipError::Internal`] for an index out of range.
    pub async fn call_on(
        &self,
        index: usize,
        request: Request,
        keys: &[PoolKey],
    ) -> Result<Response> {
        self.enqueue(index, Arc::new(request), keys).await
    }

    /// Queues `request` for chip `index` and waits for its answer.
    async fn enqueue(
        &self,
        index: usize,
        request: Arc<Request>,
        keys: &[PoolKey],
    ) -> Result<Response> {
        let lane = self
            .lanes
            .get(index)
            .ok_or_else(|| ChipError::Internal(format!("no chip {index} in the pool")))?;
        let enqueued = Instant::now();
        let queued_until = enqueued + self.config.queue_timeout;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            request,
            keys: keys.to_vec(),
            enqueued,
            queued_until,
            reply,
        };
        lane.shared.queued.fetch_add(1, Ordering::Relaxed);
        let sent = match lane.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(job)) => {
                match tokio::time::timeout(self.config.queue_timeout, lane.tx.send(job)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(lost(&lane.shared)),
                    Err(_) => Err(ChipError::Busy(self.config.queue_timeout)),
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(lost(&lane.shared)),
        };
        if let Err(e) = sent {
            lane.shared.queued.fetch_sub(1, Ordering::Relaxed);
            return Err(e);
        }
        // The worker always answers (or drops the sender when its thread ends).
        rx.await.unwrap_or_else(|_| Err(lost(&lane.shared)))
    }

    /// The chip for a request: least queued among healthy chips, with affinity for a chip that
    /// has the key loaded. Ties rotate so idle chips share the work.
    fn pick(&self, key: Option<KeyId>, avoid: Option<usize>) -> Result<usize> {
        let n = self.lanes.len();
        let start = self.rotor.fetch_add(1, Ordering::Relaxed);
        let mut least: Option<(usize, usize)> = None;
        let mut holder: Option<(usize, usize)> = None;
        for k in 0..n {
            let i = (start + k) % n;
            let s = &self.lanes[i].shared;
            if Some(i) == avoid || !s.healthy.load(Ordering::Relaxed) {
                continue;
            }
            let q = s.queued.load(Ordering::Relaxed);
            if least.is_none_or(|(_, lq)| q < lq) {
                least = Some((i, q));
            }
            if let Some(id) = key {
                let has = s.loaded.read().is_ok_and(|l| l.contains(&id));
                if has && holder.is_none_or(|(_, hq)| q < hq) {
                    holder = Some((i, q));
                }
            }
        }
        let (li, lq) = least
            .ok_or_else(|| ChipError::DeviceLost("no healthy chip left in the pool".into()))?;
        Ok(match holder {
            Some((hi, hq)) if hq <= lq + self.config.affinity_slack => hi,
            _ => li,
        })
    }
}

fn lost(shared: &Shared) -> ChipError {
    shared.healthy.store(false, Ordering::Relaxed);
    ChipError::DeviceLost(format!("chip {} is no longer served", shared.name))
}

/// A key reference for pool operations: a pool key (loaded where needed) or a public key given
/// with the request.
#[derive(Clone, Debug)]
pub enum PoolKeyRef {
    /// A key held as a blob.
    Key(PoolKey),
    /// A caller-supplied public key.
    Public(PublicKey),
}

/// A chip's worker thread: runs jobs one at a time and keeps the chip's LRU of loaded keys.
struct Worker {
    chip: Arc<dyn Chip>,
    shared: Arc<Shared>,
    lru: LruCache<KeyId, ()>,
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(job) = rx.blocking_recv() {
            let result = if job.reply.is_closed() {
                None // the caller gave up; don't spend the chip on it
            } else if Instant::now() > job.queued_until {
                Some(Err(ChipError::Busy(job.enqueued.elapsed())))
            } else {
                Some(self.run_job(&job))
            };
            self.shared.queued.fetch_sub(1, Ordering::Relaxed);
            self.shared.served.fetch_add(1, Ordering::Relaxed);
            if let Some(result) = result {
                if matches!(result, Err(ChipError::DeviceLost(_))) {
                    self.shared.healthy.store(false, Ordering::Relaxed);
                }
                // The caller may have gone away meanwhile; nothing to do then.
                let _ = job.reply.send(result);
            }
        }
    }

    fn run_job(&mut self, job: &Job) -> Result<Response> {
        let mut reloaded = false;
        loop {
            for key in &job.keys {
                self.ensure_loaded(key, &job.keys)?;
            }
            let chip = &*self.chip;
            let result = catch_unwind(AssertUnwindSafe(|| chip.execute(&job.request)))
                .unwrap_or_else(|_| Err(ChipError::Internal("chip operation panicked".into())));
            match result {
                // The chip forgot a key the LRU thought loaded (it was reset or restarted):
                // forget our view of it and load it again, once.
                Err(ChipError::KeyNotLoaded(id))
                    if !reloaded && job.keys.iter().any(|k| k.id == id) =>
                {
                    self.forget(id);
                    reloaded = true;
                }
                other => return other,
            }
        }
    }

    /// Loads `key` unless it is loaded, evicting least recently used keys (but none of `pinned`,
    /// the keys this job needs) to stay within the chip's slots.
    fn ensure_loaded(&mut self, key: &PoolKey, pinned: &[PoolKey]) -> Result<()> {
        if self.lru.get(&key.id).is_some() {
            return Ok(());
        }
        loop {
            if self.lru.len() < self.lru.cap().get() {
                match self.chip.load_key(&key.blob) {
                    Ok(_) => break,
                    // The chip has fewer free slots than we think (keys loaded behind our
                    // back): make room and try again, unless there is nothing left to evict.
                    Err(ChipError::SlotsFull(_)) if !self.lru.is_empty() => {}
                    Err(e) => return Err(e),
                }
            }
            let victim = self
                .lru
                .iter()
                .rev()
                .map(|(id, ())| *id)
                .find(|id| !pinned.iter().any(|p| p.id == *id));
            let Some(victim) = victim else {
                return Err(ChipError::SlotsFull(self.shared.slots));
            };
            self.chip.evict_key(victim)?;
            self.forget(victim);
        }
        self.lru.put(key.id, ());
        self.shared.loads.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut l) = self.shared.loaded.write() {
            l.insert(key.id);
        }
        Ok(())
    }

    fn forget(&mut self, id: KeyId) {
        self.lru.pop(&id);
        if let Ok(mut l) = self.shared.loaded.write() {
            l.remove(&id);
        }
    }
}
