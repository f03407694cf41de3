//! The Raft state machine over the shared [`State`], and its durable snapshot.
//!
//! Applying is in memory ([`State::apply`]); durability comes from the log store (entries and
//! the committed log id) plus the latest snapshot, kept in `data_dir/snapshot.bin`. At startup
//! the state is restored from that snapshot, and openraft re-applies the committed log entries
//! after it. The snapshot file is written atomically (temporary file, fsync, rename, fsync of the
//! directory) and carries a SHA-256 of its contents, checked when loaded.
//!
//! The last applied log id and the last membership live here, not in [`State`], and travel in
//! the snapshot's [`SnapshotMeta`].
//!
//! Building a snapshot: [`RaftStateMachine::get_snapshot_builder`] runs on the state machine's
//! task, between two applies, and takes the encoded state then, so the view is consistent; the
//! builder (which openraft runs in parallel with later applies) only writes it to disk.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::digest;
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, BasicNode, EntryPayload, ErrorSubject, ErrorVerb, LogId, RaftSnapshotBuilder,
    Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::{Entry, TypeConfig};
use crate::error::{NodeError, Result};
use crate::state::{CommandResult, State};

/// The file name of the snapshot inside the data directory.
pub const SNAPSHOT_FILE: &str = "snapshot.bin";
const SNAPSHOT_TMP: &str = "snapshot.bin.tmp";
const MAGIC: &[u8; 8] = b"CKSNAP1\0";
const DIGEST_LEN: usize = 32;

type StorageResult<T> = std::result::Result<T, StorageError<u64>>;
type Meta = SnapshotMeta<u64, BasicNode>;

/// openraft's storage error for `e`, with `e`'s chain of causes (not only its text).
fn sto_err<E: std::error::Error + 'static>(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: &E,
) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

/// A snapshot as stored: its meta and the encoded [`State`].
#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: Meta,
    #[serde(with = "serde_bytes")]
    data: Vec<u8>,
}

/// The latest snapshot, on disk and in memory.
#[derive(Debug)]
struct SnapshotStore {
    dir: PathBuf,
    current: Mutex<Option<Arc<StoredSnapshot>>>,
}

impl std::fmt::Debug for StoredSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StoredSnapshot({}, {} bytes)",
            self.meta,
            self.data.len()
        )
    }
}

impl SnapshotStore {
    /// Loads `dir/snapshot.bin` if there is one.
    fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(SNAPSHOT_FILE);
        let current = match fs::read(&path) {
            Ok(bytes) => Some(Arc::new(Self::decode(&bytes, &path)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(NodeError::io(path.display().to_string())(e)),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            current: Mutex::new(current),
        })
    }

    /// The snapshot in the bytes of the file at `path`. Its length, checksum and magic are
    /// checked by us (a failure has no cause but the bytes); the body is postcard's.
    fn decode(bytes: &[u8], path: &Path) -> Result<StoredSnapshot> {
        let bad = |why: &str| NodeError::Storage(format!("{}: {why}", path.display()));
        let body_len = bytes
            .len()
            .checked_sub(DIGEST_LEN)
            .filter(|&n| n >= MAGIC.len())
            .ok_or_else(|| bad("snapshot file too short"))?;
        let (body, sum) = bytes.split_at(body_len);
        if digest::digest(&digest::SHA256, body).as_ref() != sum {
            return Err(bad("snapshot file checksum mismatch"));
        }
        let payload = body
            .strip_prefix(MAGIC.as_slice())
            .ok_or_else(|| bad("not a cloudkey snapshot file"))?;
        postcard::from_bytes(payload).map_err(|e| NodeError::Decode {
            what: format!("snapshot file {}", path.display()),
            source: Box::new(e),
        })
    }

    fn current(&self) -> Option<Arc<StoredSnapshot>> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// Makes `snap` the current snapshot, durably, unless a newer one is already current (a
    /// slow builder finishing after an installed snapshot). Blocking: call on the blocking pool.
    fn save(&self, snap: Arc<StoredSnapshot>) -> io::Result<()> {
        let mut current = self
            .current
            .lock()
            .map_err(|_| io::Error::other("snapshot lock poisoned"))?;
        if let Some(cur) = current.as_ref() {
            if cur.meta.last_log_id > snap.meta.last_log_id {
                return Ok(());
            }
        }
        let mut body = MAGIC.to_vec();
        postcard::to_io(&*snap, &mut body)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let sum = digest::digest(&digest::SHA256, &body);
        let tmp = self.dir.join(SNAPSHOT_TMP);
        {
            let mut f = File::create(&tmp)?;
            f.write_all(&body)?;
            f.write_all(sum.as_ref())?;
            f.sync_all()?;
        }
        fs::rename(&tmp, self.dir.join(SNAPSHOT_FILE))?;
        // The rename is durable once the directory is.
        File::open(&self.dir)?.sync_all()?;
        *current = Some(snap);
        Ok(())
    }
}

async fn save_snapshot(store: Arc<SnapshotStore>, snap: Arc<StoredSnapshot>) -> StorageResult<()> {
    let sig = snap.meta.signature();
    let res = tokio::task::spawn_blocking(move || store.save(snap)).await;
    match res {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(sto_err(
            ErrorSubject::Snapshot(Some(sig)),
            ErrorVerb::Write,
            &e,
        )),
        Err(e) => Err(sto_err(
            ErrorSubject::Snapshot(Some(sig)),
            ErrorVerb::Write,
            &e,
        )),
    }
}

/// The Raft state machine: applies committed entries to the shared [`State`].
#[derive(Debug)]
pub struct StateMachine {
    state: Arc<State>,
    last_applied: Option<LogId<u64>>,
    last_membership: StoredMembership<u64, BasicNode>,
    snapshots: Arc<SnapshotStore>,
    /// Makes snapshot ids unique within this process.
    snapshot_seq: Arc<AtomicU64>,
}

impl StateMachine {
    /// Opens the state machine of `data_dir`: restores `state` from the stored snapshot, if any.
    /// `state` should be fresh (nothing applied): it is replaced by the snapshot's contents.
    ///
    /// # Errors
    /// [`NodeError::Io`] when the snapshot file cannot be read, [`NodeError::Decode`] when it
    /// does not decode, [`NodeError::Storage`] when it fails its checksum or does not hold a
    /// consistent state.
    pub fn open(data_dir: &Path, state: Arc<State>) -> Result<Self> {
        let snapshots = SnapshotStore::open(data_dir)?;
        let mut sm = Self {
            state,
            last_applied: None,
            last_membership: StoredMembership::default(),
            snapshots: Arc::new(snapshots),
            snapshot_seq: Arc::new(AtomicU64::new(0)),
        };
        if let Some(snap) = sm.snapshots.current() {
            sm.restore(&snap.meta, &snap.data)?;
            tracing::info!(snapshot = %snap.meta, "state restored from snapshot");
        }
        Ok(sm)
    }

    /// The shared state.
    #[must_use]
    pub fn state(&self) -> &Arc<State> {
        &self.state
    }

    /// Replaces the state with a snapshot's, after checking it matches its meta.
    fn restore(&mut self, meta: &Meta, data: &[u8]) -> Result<()> {
        let check = State::new();
        check.restore(data)?;
        let index = meta.last_log_id.map_or(0, |l| l.index);
        if check.applied() != index {
            return Err(NodeError::Storage(format!(
                "snapshot {} holds state applied up to {}",
                meta.snapshot_id,
                check.applied()
            )));
        }
        self.state.restore(data)?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }
}

/// Builds a snapshot from the state encoded when it was asked for.
#[derive(Debug)]
pub struct SnapshotBuilder {
    meta: Meta,
    data: Vec<u8>,
    store: Arc<SnapshotStore>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let data = std::mem::take(&mut self.data);
        let stored = Arc::new(StoredSnapshot {
            meta: self.meta.clone(),
            data,
        });
        save_snapshot(self.store.clone(), stored.clone()).await?;
        tracing::info!(snapshot = %self.meta, bytes = stored.data.len(), "snapshot built");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: Box::new(Cursor::new(stored.data.clone())),
        })
    }
}

fn membership_summary(
    m: &openraft::Membership<u64, BasicNode>,
) -> (Vec<BTreeSet<u64>>, BTreeMap<u64, String>) {
    let configs = m.get_joint_config().clone();
    let nodes = m.nodes().map(|(id, n)| (*id, n.addr.clone())).collect();
    (configs, nodes)
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries = entries.into_iter();
        let mut out = Vec::with_capacity(entries.size_hint().0);
        for entry in entries {
            let index = entry.log_id.index;
            let result = match &entry.payload {
                EntryPayload::Blank => {
                    self.state.mark_applied(index);
                    CommandResult::Done
                }
                EntryPayload::Normal(cmd) => {
                    // The kind only: commands carry PIN hashes, blobs and attribute values.
                    tracing::debug!(index, kind = cmd.kind(), "apply");
                    self.state.apply(index, cmd)
                }
                EntryPayload::Membership(m) => {
                    let (configs, nodes) = membership_summary(m);
                    self.state.apply_membership(index, &configs, &nodes);
                    self.last_membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    CommandResult::Done
                }
            };
            self.last_applied = Some(entry.log_id);
            out.push(result);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let seq = self.snapshot_seq.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match self.last_applied {
            Some(l) => format!(
                "{}-{}-{}-{seq}",
                l.leader_id.term, l.leader_id.node_id, l.index
            ),
            None => format!("0-0-0-{seq}"),
        };
        SnapshotBuilder {
            meta: SnapshotMeta {
                last_log_id: self.last_applied,
                last_membership: self.last_membership.clone(),
                snapshot_id,
            },
            data: self.state.snapshot_bytes(),
            store: self.snapshots.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data = snapshot.into_inner();
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        self.restore(meta, &data)
            .map_err(|e| sto_err(subject, ErrorVerb::Write, &e))?;
        let stored = Arc::new(StoredSnapshot {
            meta: meta.clone(),
            data,
        });
        save_snapshot(self.snapshots.clone(), stored).await?;
        tracing::info!(snapshot = %meta, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.snapshots.current().map(|s| Snapshot {
            meta: s.meta.clone(),
            snapshot: Box::new(Cursor::new(s.data.clone())),
        }))
    }
}
