//! The Raft log and vote, in redb (`data_dir/raft.redb`).
//!
//! * table `log`: key = log index as 8 big-endian bytes (so the byte order is the index order),
//!   value = postcard of the [`Entry`](openraft::Entry).
//! * table `meta`: `vote`, `committed` and `last_purged`, each a postcard value.
//!
//! Every write is one redb transaction committed with [`Durability::Immediate`] (fsync) before
//! the call returns or the flush callback fires, so an acknowledged vote or entry survives a
//! crash. `committed` is saved too, so a restarted node re-applies its committed entries at
//! startup (on top of the last snapshot) before it hears from a leader.
//!
//! redb calls block (they may fsync), so each one runs on tokio's blocking pool, never on an
//! async worker thread. Writes are serialised by openraft (`&mut self`); readers (the replication
//! tasks) use redb's MVCC read transactions and never wait for a writer.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Entry, TypeConfig};
use crate::error::{NodeError, Result};

/// Log entries by index (8 bytes, big-endian).
const LOG: TableDefinition<'static, [u8; 8], &'static [u8]> = TableDefinition::new("log");
/// Vote, committed log id, last purged log id.
const META: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("meta");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_LAST_PURGED: &str = "last_purged";

/// The file name of the log database inside the data directory.
pub const LOG_FILE: &str = "raft.redb";

/// How long [`LogStore::open`] waits for a previous instance in this process to release the
/// database (its last reader may still be finishing after a shutdown).
const OPEN_WAIT: Duration = Duration::from_secs(5);

type StorageResult<T> = std::result::Result<T, StorageError<u64>>;

/// The redb-backed Raft log store; also its own log reader (clones share the database).
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

/// openraft's storage error for `e`, with `e`'s chain of causes (not only its text).
fn sto_err<E: std::error::Error + 'static>(
    subject: ErrorSubject<u64>,
    verb: ErrorVerb,
    e: &E,
) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::new(e)).into()
}

fn encode<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn decode<T: DeserializeOwned>(b: &[u8]) -> io::Result<T> {
    postcard::from_bytes(b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Runs blocking redb work on the blocking pool.
async fn blocking<T, F>(subject: ErrorSubject<u64>, verb: ErrorVerb, f: F) -> StorageResult<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(sto_err(subject, verb, &e)),
        Err(e) => Err(sto_err(subject, verb, &e)),
    }
}

/// A redb (or task) error as the I/O error openraft's storage errors are made of, kept as the
/// inner error rather than its text, so that its chain reaches the log.
fn io<E: std::error::Error + Send + Sync + 'static>(e: E) -> io::Error {
    io::Error::other(e)
}

impl LogStore {
    /// Opens (or creates) `data_dir/raft.redb` and its tables.
    ///
    /// # Errors
    /// [`NodeError::Db`] when the file cannot be opened or is not a redb database,
    /// [`NodeError::Io`] when its tables cannot be made.
    pub fn open(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join(LOG_FILE);
        let started = Instant::now();
        let db = loop {
            match Database::create(&path) {
                Ok(db) => break db,
                // Within one process, a stopped node's last log reader may still hold the
                // database for a moment after shutdown: wait for it, bounded.
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if started.elapsed() < OPEN_WAIT => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => {
                    return Err(NodeError::Db {
                        what: path.display().to_string(),
                        source: Box::new(e.into()),
                    });
                }
            }
        };
        let store = Self { db: Arc::new(db) };
        store
            .write_txn(|txn| {
                txn.open_table(LOG).map_err(io)?;
                txn.open_table(META).map_err(io)?;
                Ok(())
            })
            .map_err(NodeError::io(path.display().to_string()))?;
        Ok(store)
    }

    /// One durable write transaction.
    fn write_txn<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut txn = self.db.begin_write().map_err(io)?;
        txn.set_durability(Durability::Immediate).map_err(io)?;
        let out = f(&txn)?;
        txn.commit().map_err(io)?;
        Ok(out)
    }

    fn read_meta<T: DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(META).map_err(io)?;
        let v = table.get(name).map_err(io)?;
        v.map(|v| decode(v.value())).transpose()
    }

    fn write_meta<T: Serialize>(&self, name: &'static str, value: &T) -> io::Result<()> {
        let bytes = encode(value)?;
        self.write_txn(|txn| {
            let mut table = txn.open_table(META).map_err(io)?;
            table.insert(name, bytes.as_slice()).map_err(io)?;
            Ok(())
        })
    }

    fn entries(&self, start: Bound<u64>, end: Bound<u64>) -> io::Result<Vec<Entry>> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(LOG).map_err(io)?;
        let start = match start {
            Bound::Included(i) => Bound::Included(key(i)),
            Bound::Excluded(i) => Bound::Excluded(key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match end {
            Bound::Included(i) => Bound::Included(key(i)),
            Bound::Excluded(i) => Bound::Excluded(key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        if let (Bound::Included(s) | Bound::Excluded(s), Bound::Included(e) | Bound::Excluded(e)) =
            (&start, &end)
        {
            // redb panics on a reversed range; openraft may ask for an empty one.
            if s > e {
                return Ok(Vec::new());
            }
        }
        let mut out = Vec::new();
        for item in table.range::<[u8; 8]>((start, end)).map_err(io)? {
            let (_, v) = item.map_err(io)?;
            out.push(decode(v.value())?);
        }
        Ok(out)
    }

    fn log_state(&self) -> io::Result<LogState<TypeConfig>> {
        let last_purged: Option<LogId<u64>> = self.read_meta(KEY_LAST_PURGED)?;
        let txn = self.db.begin_read().map_err(io)?;
        let table = txn.open_table(LOG).map_err(io)?;
        let last = match table.last().map_err(io)? {
            Some((_, v)) => Some(*decode::<Entry>(v.value())?.get_log_id()),
            None => None,
        };
        Ok(LogState {
            last_log_id: last.or(last_purged),
            last_purged_log_id: last_purged,
        })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let start = range.start_bound().cloned();
        let end = range.end_bound().cloned();
        let this = self.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            this.entries(start, end)
        })
        .await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let this = self.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Read, move || {
            this.log_state()
        })
        .await
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> StorageResult<()> {
        let this = self.clone();
        let vote = *vote;
        blocking(ErrorSubject::Vote, ErrorVerb::Write, move || {
            this.write_meta(KEY_VOTE, &vote)
        })
        .await
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<u64>>> {
        let this = self.clone();
        blocking(ErrorSubject::Vote, ErrorVerb::Read, move || {
            this.read_meta(KEY_VOTE)
        })
        .await
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> StorageResult<()> {
        let this = self.clone();
        blocking(ErrorSubject::Store, ErrorVerb::Write, move || {
            this.write_meta(KEY_COMMITTED, &committed)
        })
        .await
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<u64>>> {
        let this = self.clone();
        blocking(ErrorSubject::Store, ErrorVerb::Read, move || {
            Ok(this
                .read_meta::<Option<LogId<u64>>>(KEY_COMMITTED)?
                .flatten())
        })
        .await
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut rows = Vec::new();
        for e in entries {
            let index = e.get_log_id().index;
            let bytes = encode(&e).map_err(|err| {
                sto_err(ErrorSubject::Log(*e.get_log_id()), ErrorVerb::Write, &err)
            })?;
            rows.push((index, bytes));
        }
        let this = self.clone();
        let res = tokio::task::spawn_blocking(move || {
            this.write_txn(|txn| {
                let mut table = txn.open_table(LOG).map_err(io)?;
                for (index, bytes) in &rows {
                    table.insert(key(*index), bytes.as_slice()).map_err(io)?;
                }
                Ok(())
            })
        })
        .await
        .unwrap_or_else(|e| Err(io(e)));
        match res {
            Ok(()) => {
                // Durable: the transaction committed with fsync.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let err = sto_err(ErrorSubject::Logs, ErrorVerb::Write, &e);
                callback.log_io_completed(Err(e));
                Err(err)
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let this = self.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            this.write_txn(|txn| {
                let mut table = txn.open_table(LOG).map_err(io)?;
                table
                    .retain_in::<[u8; 8], _>(key(log_id.index).., |_, _| false)
                    .map_err(io)?;
                Ok(())
            })
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> StorageResult<()> {
        let this = self.clone();
        blocking(ErrorSubject::Logs, ErrorVerb::Delete, move || {
            let bytes = encode(&log_id)?;
            this.write_txn(|txn| {
                let mut meta = txn.open_table(META).map_err(io)?;
                meta.insert(KEY_LAST_PURGED, bytes.as_slice()).map_err(io)?;
                let mut table = txn.open_table(LOG).map_err(io)?;
                table
                    .retain_in::<[u8; 8], _>(..=key(log_id.index), |_, _| false)
                    .map_err(io)?;
                Ok(())
            })
        })
        .await
    }
}
