//! The Raft storage: openraft's storage test suite against the redb log store and the state
//! machine, plus durability across reopening (log, vote, committed id, snapshot).

use std::collections::BTreeMap;
use std::sync::Arc;

use cloudkey_node::raft::{Entry, LogStore, StateMachine, TypeConfig};
use cloudkey_node::state::{ClusterInfo, Command, CommandResult, PinHash, State};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, RaftLogReader,
    RaftSnapshotBuilder, StorageError, Vote,
};
use tempfile::TempDir;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = LogStore::open(dir.path()).expect("log store");
        let sm = StateMachine::open(dir.path(), Arc::new(State::new())).expect("state machine");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(Builder).expect("openraft storage suite");
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64, payload: EntryPayload<TypeConfig>) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload,
    }
}

fn init_cmd() -> Command {
    Command::Init(ClusterInfo {
        domain_kcv: [1; 8],
        session_secret_blob: vec![9; 16],
        max_failures: 5,
        session_ttl_ms: 1000,
    })
}

fn create_token(label: &str) -> Command {
    Command::CreateToken {
        label: label.into(),
        so_pin: PinHash("$argon2id$so".into()),
        user_pin: None,
    }
}

fn membership() -> Membership<u64, BasicNode> {
    let nodes = BTreeMap::from([(
        1,
        BasicNode {
            addr: "127.0.0.1:1".into(),
        },
    )]);
    Membership::new(vec![[1].into()], nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_vote_and_committed_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = LogStore::open(dir.path()).expect("open");
        log.save_vote(&Vote::new(3, 1)).await.expect("vote");
        log.blocking_append((1..=10).map(|i| entry(3, i, EntryPayload::Blank)))
            .await
            .expect("append");
        log.save_committed(Some(log_id(3, 8)))
            .await
            .expect("committed");
        log.purge(log_id(3, 2)).await.expect("purge");
        log.truncate(log_id(3, 10)).await.expect("truncate");
    }
    let mut log = LogStore::open(dir.path()).expect("reopen");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(3, 1)));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(3, 8))
    );
    let st = log.get_log_state().await.expect("state");
    assert_eq!(st.last_purged_log_id, Some(log_id(3, 2)));
    assert_eq!(st.last_log_id, Some(log_id(3, 9)));
    let got = log.try_get_log_entries(0..100).await.expect("read");
    let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, (3..=9).collect::<Vec<_>>());
    // Reversed and empty ranges read nothing (openraft may ask for them; redb would panic).
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 7..3;
    assert!(log
        .try_get_log_entries(reversed)
        .await
        .expect("read")
        .is_empty());
    assert!(log
        .try_get_log_entries(5..5)
        .await
        .expect("read")
        .is_empty());
    // Keys are big-endian: index order survives crossing a byte boundary.
    log.blocking_append((10..=300).map(|i| entry(3, i, EntryPayload::Blank)))
        .await
        .expect("append");
    let got = log.try_get_log_entries(250..=260).await.expect("read");
    let idx: Vec<u64> = got.iter().map(|e| e.log_id.index).collect();
    assert_eq!(idx, (250..=260).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_durable_and_restores_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (audit, bytes) = {
        let state = Arc::new(State::new());
        let mut sm = StateMachine::open(dir.path(), state.clone()).expect("open");
        let results = sm
            .apply([
                entry(1, 1, EntryPayload::Membership(membership())),
                entry(1, 2, EntryPayload::Normal(init_cmd())),
                entry(1, 3, EntryPayload::Normal(create_token("alpha"))),
                entry(1, 4, EntryPayload::Blank),
            ])
            .await
            .expect("apply");
        assert_eq!(
            results[2],
            CommandResult::Token(cloudkey_protocol::msg::TokenId(1))
        );
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot");
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 4)));
        // Applying after the builder was taken does not leak into the snapshot.
        sm.apply([entry(1, 5, EntryPayload::Normal(create_token("beta")))])
            .await
            .expect("apply");
        assert_eq!(state.applied(), 5);
        (state.audit(), snap.snapshot.into_inner())
    };

    // Reopened: the state is the snapshot's (index 4), not the later apply.
    let state = Arc::new(State::new());
    let mut sm = StateMachine::open(dir.path(), state.clone()).expect("reopen");
    assert_eq!(state.applied(), 4);
    assert!(state.token_by_label("alpha").is_some());
    assert!(state.token_by_label("beta").is_none());
    assert_eq!(state.audit(), audit[..audit.len() - 1].to_vec());
    assert_eq!(state.snapshot_bytes(), bytes);
    let (applied, mem) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 4)));
    assert_eq!(mem.membership(), &membership());
    let current = sm
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("a snapshot");
    assert_eq!(current.meta.last_log_id, Some(log_id(1, 4)));
    drop(sm);

    // A damaged snapshot file is refused, not half-loaded.
    let path = dir.path().join("snapshot.bin");
    let mut raw = std::fs::read(&path).expect("read");
    let mid = raw.len() / 2;
    raw[mid] ^= 0xff;
    std::fs::write(&path, raw).expect("write");
    let fresh = Arc::new(State::new());
    assert!(StateMachine::open(dir.path(), fresh.clone()).is_err());
    assert_eq!(fresh.applied(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_snapshot_replaces_the_state_and_is_kept() {
    let src_dir = tempfile::tempdir().expect("tempdir");
    let dst_dir = tempfile::tempdir().expect("tempdir");
    let mut src = StateMachine::open(src_dir.path(), Arc::new(State::new())).expect("open");
    src.apply([
        entry(2, 1, EntryPayload::Membership(membership())),
        entry(2, 2, EntryPayload::Normal(init_cmd())),
        entry(2, 3, EntryPayload::Normal(create_token("t"))),
    ])
    .await
    .expect("apply");
    let snap = src
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");

    let dst_state = Arc::new(State::new());
    {
        let mut dst = StateMachine::open(dst_dir.path(), dst_state.clone()).expect("open");
        dst.apply([entry(1, 1, EntryPayload::Normal(init_cmd()))])
            .await
            .expect("apply");
        let mut rx = dst.begin_receiving_snapshot().await.expect("begin");
        *rx = *snap.snapshot.clone();
        dst.install_snapshot(&snap.meta, rx).await.expect("install");
        assert_eq!(dst_state.applied(), 3);
        assert!(dst_state.token_by_label("t").is_some());
        // A bad snapshot is refused and changes nothing.
        let mut bad_meta = snap.meta.clone();
        bad_meta.last_log_id = Some(log_id(2, 9));
        let bad = Box::new(std::io::Cursor::new(b"garbage".to_vec()));
        assert!(dst.install_snapshot(&bad_meta, bad).await.is_err());
        let mismatched = Box::new(std::io::Cursor::new(snap.snapshot.get_ref().clone()));
        assert!(dst.install_snapshot(&bad_meta, mismatched).await.is_err());
        assert_eq!(dst_state.applied(), 3);
    }
    let again = Arc::new(State::new());
    StateMachine::open(dst_dir.path(), again.clone()).expect("reopen");
    assert_eq!(again.snapshot_bytes(), dst_state.snapshot_bytes());
}
