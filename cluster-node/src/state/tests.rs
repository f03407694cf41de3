//! Tests of the replicated state.

use cloudkey_chip::{BlobHeader, KeyId, KeySpec, KeyType, KeyUsage, BLOB_VERSION};

use std::collections::{BTreeMap, BTreeSet};

use cloudkey_protocol::audit::record_hash;
use cloudkey_protocol::msg::{ObjectId, TokenId, UserType};
use cloudkey_protocol::ErrorCode;

use super::snapshot::{SnapshotBase, StateSnapshot};
use super::*;
use crate::governance::{GovCommand, Governance};

const KCV: [u8; 8] = [7; 8];

fn info() -> ClusterInfo {
    ClusterInfo {
        domain_kcv: KCV,
        session_secret_blob: vec![1, 2, 3],
        max_failures: 3,
        session_ttl_ms: 60_000,
    }
}

fn pin(s: &str) -> PinHash {
    PinHash(format!("$argon2id$v=19$m=8,t=1,p=1$c2FsdA${s}"))
}

fn blob(id: [u8; 16], kcv: [u8; 8]) -> Vec<u8> {
    let header = BlobHeader {
        version: BLOB_VERSION,
        domain_kcv: kcv,
        id: KeyId(id),
        spec: KeySpec {
            key_type: KeyType::EcP256,
            bits: 256,
        },
        usage: KeyUsage::SIGN,
    };
    let mut b = header.to_bytes().to_vec();
    b.extend_from_slice(&[0xAB; 60]);
    b
}

fn record(id: u8, token: TokenId, with_blob: bool) -> ObjectRecord {
    let oid = [id; 16];
    ObjectRecord {
        id: ObjectId(oid),
        token,
        attrs: BTreeMap::from([(0, 3u64.to_le_bytes().to_vec()), (3, b"label".to_vec())]),
        blob: with_blob.then(|| blob(oid, KCV)),
    }
}

/// A state with `Init` applied at index 1 and one token (id 1, "t1") at index 2.
fn with_token() -> (State, TokenId) {
    let s = State::new();
    assert_eq!(s.apply(1, &Command::Init(info())), CommandResult::Done);
    let r = s.apply(
        2,
        &Command::CreateToken {
            label: "t1".into(),
            so_pin: pin("so"),
            user_pin: Some(pin("user")),
        },
    );
    let CommandResult::Token(id) = r else {
        panic!("unexpected {r:?}")
    };
    (s, id)
}

fn refused_code(r: &CommandResult) -> ErrorCode {
    match r {
        CommandResult::Refused(refusal) => refusal.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_guarded_change_consumes_its_approval_in_the_same_entry_exactly_once() {
    use cloudkey_protocol::gov::{ApprovalStatus, GuardedOp, PolicyScope};
    let (s, token) = with_token();
    let gov = |i: u64, c: GovCommand| s.apply(i, &Command::Gov(c));
    for (i, n) in ["alice", "bob"].iter().enumerate() {
        let r = gov(
            3 + i as u64,
            GovCommand::AddOfficer {
                name: (*n).into(),
                identity: format!("operator/{n}"),
                pin: pin(n),
            },
        );
        assert_eq!(r, CommandResult::Done);
    }
    let h = [3u8; 32];
    let r = gov(
        5,
        GovCommand::Propose {
            requester: "client/app".into(),
            op: GuardedOp::Generate,
            scope: PolicyScope::Token(token),
            description: "generate".into(),
            params_hash: h,
            quorum: 1,
            eligible: vec![],
            now_ms: 1_000,
            ttl_ms: 60_000,
        },
    );
    let CommandResult::Approval(id) = r else {
        panic!("{r:?}")
    };
    let guarded = |index: u64, obj: u8| {
        s.apply(
            index,
            &Command::Guarded {
                approval: id,
                requester: "client/app".into(),
                params_hash: h,
                now_ms: 2_000,
                inner: Box::new(Command::PutObjects(vec![record(obj, token, true)])),
            },
        )
    };
    // Not approved yet: neither the approval nor the objects change.
    assert_eq!(refused_code(&guarded(6, 1)), ErrorCode::ApprovalRequired);
    assert!(s.object(&ObjectId([1; 16])).is_none());
    let r = gov(
        7,
        GovCommand::Approve {
            id,
            officer: "bob".into(),
            identity: "operator/bob".into(),
            params_hash: h,
            now_ms: 1_500,
        },
    );
    assert_eq!(r, CommandResult::Approval(id));
    // An inner refusal consumes nothing.
    assert_eq!(
        refused_code(&s.apply(
            8,
            &Command::Guarded {
                approval: id,
                requester: "client/app".into(),
                params_hash: h,
                now_ms: 2_000,
                inner: Box::new(Command::DestroyObject(ObjectId([9; 16]))),
            }
        )),
        ErrorCode::ObjectHandleInvalid
    );
    assert_eq!(guarded(9, 1), CommandResult::Done);
    assert!(s.object(&ObjectId([1; 16])).is_some());
    // The same approval again (a retry, another node): refused, nothing created.
    assert_eq!(refused_code(&guarded(10, 2)), ErrorCode::ApprovalRequired);
    assert!(s.object(&ObjectId([2; 16])).is_none());
    assert_eq!(
        s.with_gov(|g| g.approvals[&id].status_at(3_000)),
        ApprovalStatus::Consumed { index: 9 }
    );
    // Governance survives a snapshot, and the chain records every step.
    let other = State::new();
    other.restore(&s.snapshot_bytes()).unwrap();
    assert_eq!(other.with_gov(Clone::clone), s.with_gov(Clone::clone));
    let audit: Vec<String> = s.audit().into_iter().map(|r| r.summary).collect();
    assert!(
        audit.iter().any(|a| a.starts_with("propose id=")),
        "{audit:?}"
    );
    assert!(
        audit.iter().any(|a| a.starts_with("approve id=")),
        "{audit:?}"
    );
    assert!(
        audit
            .iter()
            .any(|a| a.starts_with("guarded approval=") && a.contains("put_objects")),
        "{audit:?}"
    );
}

#[test]
fn a_version_1_snapshot_restores_without_governance() {
    let (s, _) = with_token();
    let v1 = SnapshotBase {
        version: 1,
        cluster: s.cluster(),
        next_token: 2,
        tokens: s.tokens().iter().map(|t| (**t).clone()).collect(),
        objects: Vec::new(),
        audit: s.audit(),
        applied: s.applied(),
    };
    let other = State::new();
    other.restore(&postcard::to_stdvec(&v1).unwrap()).unwrap();
    assert_eq!(other.tokens().len(), 1);
    assert_eq!(other.with_gov(Clone::clone), Governance::default());
    // A version this code does not know is refused.
    let v9 = SnapshotBase { version: 9, ..v1 };
    assert!(State::new()
        .restore(&postcard::to_stdvec(&v9).unwrap())
        .is_err());
}

#[test]
fn default_state_has_a_working_applied_channel() {
    let s = State::default();
    let rx = s.watch_applied();
    s.mark_applied(5);
    assert_eq!(*rx.borrow(), 5);
    assert_eq!(s.applied(), 5);
}

#[test]
fn init_once_and_nothing_before_init() {
    let s = State::new();
    let r = s.apply(
        1,
        &Command::CreateToken {
            label: "x".into(),
            so_pin: pin("so"),
            user_pin: None,
        },
    );
    assert_eq!(refused_code(&r), ErrorCode::ClusterNotInitialized);
    assert_eq!(s.applied(), 1, "a refused command still advances applied");
    assert!(
        s.audit().is_empty(),
        "refusals change nothing, audit nothing"
    );
    assert_eq!(s.apply(2, &Command::Init(info())), CommandResult::Done);
    assert_eq!(s.cluster(), Some(info()));
    let r = s.apply(3, &Command::Init(info()));
    assert_eq!(refused_code(&r), ErrorCode::ActionProhibited);
    assert_eq!(s.audit().len(), 1);
    assert_eq!(s.applied(), 3);
}

#[test]
fn token_lifecycle() {
    let (s, t1) = with_token();
    assert_eq!(t1, TokenId(1));
    // Duplicate label.
    let r = s.apply(
        3,
        &Command::CreateToken {
            label: "t1".into(),
            so_pin: pin("so"),
            user_pin: None,
        },
    );
    assert_eq!(refused_code(&r), ErrorCode::TemplateInconsistent);
    // Label bounds.
    let r = s.apply(
        4,
        &Command::CreateToken {
            label: "x".repeat(MAX_LABEL_LEN + 1),
            so_pin: pin("so"),
            user_pin: None,
        },
    );
    assert_eq!(refused_code(&r), ErrorCode::ArgumentsBad);
    let r = s.apply(
        5,
        &Command::CreateToken {
            label: "t2".into(),
            so_pin: pin("so2"),
            user_pin: None,
        },
    );
    assert_eq!(r, CommandResult::Token(TokenId(2)));
    assert_eq!(s.token_by_label("t2").map(|t| t.id), Some(TokenId(2)));
    assert_eq!(s.tokens().len(), 2);

    // Objects, then InitToken drops the user PIN and every object of that token only.
    let put = Command::PutObjects(vec![record(1, t1, true), record(2, t1, false)]);
    assert_eq!(s.apply(6, &put), CommandResult::Done);
    let put2 = Command::PutObjects(vec![record(3, TokenId(2), false)]);
    assert_eq!(s.apply(7, &put2), CommandResult::Done);
    // InitToken may not take another token's label, may keep its own.
    let r = s.apply(
        8,
        &Command::InitToken {
            token: t1,
            label: "t2".into(),
        },
    );
    assert_eq!(refused_code(&r), ErrorCode::TemplateInconsistent);
    let r = s.apply(
        9,
        &Command::InitToken {
            token: t1,
            label: "t1-new".into(),
        },
    );
    assert_eq!(r, CommandResult::Done);
    let t = s.token(t1).expect("token");
    assert_eq!(t.label, "t1-new");
    assert!(t.user_pin.is_none());
    assert!(s.objects_of(t1).is_empty());
    assert_eq!(s.objects_of(TokenId(2)).len(), 1);

    // SetPin, then DeleteToken removes its objects; the id is never reused.
    let r = s.apply(
        10,
        &Command::SetPin {
            token: t1,
            user: UserType::User,
            pin: pin("u2"),
        },
    );
    assert_eq!(r, CommandResult::Done);
    assert_eq!(
        s.token(t1).and_then(|t| t.user_pin.clone()),
        Some(pin("u2"))
    );
    assert_eq!(
        s.apply(11, &Command::DeleteToken(TokenId(2))),
        CommandResult::Done
    );
    assert!(s.token(TokenId(2)).is_none());
    assert!(s.all_objects().is_empty());
    let r = s.apply(12, &Command::DeleteToken(TokenId(2)));
    assert_eq!(refused_code(&r), ErrorCode::TokenNotPresent);
    let r = s.apply(
        13,
        &Command::CreateToken {
            label: "t3".into(),
            so_pin: pin("so"),
            user_pin: None,
        },
    );
    assert_eq!(r, CommandResult::Token(TokenId(3)));
    // Unknown tokens everywhere.
    for cmd in [
        Command::Unlock(TokenId(99)),
        Command::InitToken {
            token: TokenId(99),
            label: "z".into(),
        },
        Command::SetPin {
            token: TokenId(99),
            user: UserType::So,
            pin: pin("x"),
        },
        Command::LoginFailed {
            token: TokenId(99),
            user: UserType::So,
        },
        Command::LoginSucceeded {
            token: TokenId(99),
            user: UserType::User,
        },
        Command::PutObjects(vec![record(9, TokenId(99), false)]),
    ] {
        assert_eq!(refused_code(&s.apply(14, &cmd)), ErrorCode::TokenNotPresent);
    }
    assert_eq!(s.applied(), 14);
}

#[test]
fn lockout_at_max_failures_and_counters_clear() {
    let (s, t) = with_token();
    let fail = |i, user| s.apply(i, &Command::LoginFailed { token: t, user });
    assert_eq!(
        fail(3, UserType::User),
        CommandResult::Failures {
            count: 1,
            locked: false
        }
    );
    assert_eq!(
        fail(4, UserType::User),
        CommandResult::Failures {
            count: 2,
            locked: false
        }
    );
    assert_eq!(
        fail(5, UserType::User),
        CommandResult::Failures {
            count: 3,
            locked: true
        }
    );
    assert_eq!(
        fail(6, UserType::User),
        CommandResult::Failures {
            count: 4,
            locked: true
        }
    );
    // The SO counter is separate.
    assert_eq!(
        fail(7, UserType::So),
        CommandResult::Failures {
            count: 1,
            locked: false
        }
    );
    let r = s.apply(
        8,
        &Command::LoginSucceeded {
            token: t,
            user: UserType::So,
        },
    );
    assert_eq!(r, CommandResult::Done);
    let tok = s.token(t).expect("token");
    assert_eq!((tok.so_failures, tok.user_failures), (0, 4));
    // SetPin clears its own counter.
    s.apply(
        9,
        &Command::SetPin {
            token: t,
            user: UserType::User,
            pin: pin("new"),
        },
    );
    assert_eq!(s.token(t).map(|t| t.user_failures), Some(0));
    fail(10, UserType::User);
    fail(11, UserType::So);
    assert_eq!(s.apply(12, &Command::Unlock(t)), CommandResult::Done);
    let tok = s.token(t).expect("token");
    assert_eq!((tok.so_failures, tok.user_failures), (0, 0));
    // No user PIN: a failed user login is refused.
    s.apply(
        13,
        &Command::InitToken {
            token: t,
            label: "t1".into(),
        },
    );
    assert_eq!(
        refused_code(&fail(14, UserType::User)),
        ErrorCode::UserPinNotInitialized
    );
}

#[test]
fn objects() {
    let (s, t) = with_token();
    let put = Command::PutObjects(vec![record(1, t, true), record(2, t, false)]);
    assert_eq!(s.apply(3, &put), CommandResult::Done);
    let o = s.object(&ObjectId([1; 16])).expect("object");
    assert_eq!(o.created, 3);
    assert_eq!(o.key.as_ref().map(|k| k.id().0), Some([1; 16]));
    assert!(s.object(&ObjectId([2; 16])).expect("object").key.is_none());
    // Existing id, duplicates in one batch, empty batch: refused, nothing half-applied.
    let r = s.apply(
        4,
        &Command::PutObjects(vec![record(3, t, false), record(1, t, false)]),
    );
    assert_eq!(refused_code(&r), ErrorCode::TemplateInconsistent);
    assert!(s.object(&ObjectId([3; 16])).is_none());
    let r = s.apply(
        5,
        &Command::PutObjects(vec![record(4, t, false), record(4, t, false)]),
    );
    assert_eq!(refused_code(&r), ErrorCode::TemplateInconsistent);
    assert_eq!(
        refused_code(&s.apply(6, &Command::PutObjects(vec![]))),
        ErrorCode::ArgumentsBad
    );
    // Bad blobs.
    let mut bad = record(5, t, false);
    bad.blob = Some(vec![1, 2, 3]);
    let r = s.apply(7, &Command::PutObjects(vec![bad.clone()]));
    assert_eq!(refused_code(&r), ErrorCode::WrappedKeyInvalid);
    bad.blob = Some(blob([5; 16], [9; 8]));
    let r = s.apply(8, &Command::PutObjects(vec![bad]));
    assert_eq!(refused_code(&r), ErrorCode::WrappedKeyInvalid);
    // Creation order.
    assert_eq!(
        s.apply(9, &Command::PutObjects(vec![record(0, t, false)])),
        CommandResult::Done
    );
    let order: Vec<u8> = s.objects_of(t).iter().map(|o| o.record.id.0[0]).collect();
    assert_eq!(order, vec![1, 2, 0]);
    // SetAttributes.
    let r = s.apply(
        10,
        &Command::SetAttributes {
            id: ObjectId([1; 16]),
            attrs: vec![(3, b"renamed".to_vec()), (0x102, vec![1])],
        },
    );
    assert_eq!(r, CommandResult::Done);
    let o = s.object(&ObjectId([1; 16])).expect("object");
    assert_eq!(
        o.record.attrs.get(&3).map(Vec::as_slice),
        Some(&b"renamed"[..])
    );
    assert_eq!(
        o.record.attrs.get(&0x102).map(Vec::as_slice),
        Some(&[1u8][..])
    );
    assert_eq!(o.created, 3);
    assert!(o.key.is_some());
    let last = s.audit().last().cloned().expect("audit");
    assert_eq!(
        last.summary,
        format!("set_attributes id={} types=0x3,0x102", ObjectId([1; 16]))
    );
    let r = s.apply(
        11,
        &Command::SetAttributes {
            id: ObjectId([42; 16]),
            attrs: vec![],
        },
    );
    assert_eq!(refused_code(&r), ErrorCode::ObjectHandleInvalid);
    // Destroy.
    assert_eq!(
        s.apply(12, &Command::DestroyObject(ObjectId([1; 16]))),
        CommandResult::Done
    );
    assert!(s.object(&ObjectId([1; 16])).is_none());
    let r = s.apply(13, &Command::DestroyObject(ObjectId([1; 16])));
    assert_eq!(refused_code(&r), ErrorCode::ObjectHandleInvalid);
}

#[test]
fn audit_chain_links_and_detects_tampering() {
    let (s, t) = with_token();
    s.mark_applied(3);
    s.apply_membership(
        4,
        &[BTreeSet::from([1, 2, 3])],
        &BTreeMap::from([(1, "a:1".to_string()), (2, "b:2".into()), (3, "c:3".into())]),
    );
    s.apply(
        5,
        &Command::LoginFailed {
            token: t,
            user: UserType::So,
        },
    );
    s.apply(6, &Command::DeleteToken(TokenId(77))); // refused: not audited
    let chain = s.audit();
    let indexes: Vec<u64> = chain.iter().map(|r| r.index).collect();
    assert_eq!(indexes, vec![1, 2, 4, 5]);
    assert_eq!(chain[0].prev, [0; 32]);
    for w in chain.windows(2) {
        assert_eq!(w[1].prev, w[0].hash);
    }
    assert!(chain[2]
        .summary
        .starts_with("membership voters={1, 2, 3} nodes=1@\"a:1\""));
    // No secrets in summaries.
    assert!(chain.iter().all(|r| !r.summary.contains("argon2")));
    assert_eq!(verify_chain(&chain), Ok(()));
    assert_eq!(s.audit_head(), Some((5, chain[3].hash)));
    assert_eq!(s.audit_range(2, 2).len(), 2);
    assert_eq!(s.audit_range(3, 10)[0].index, 4);

    let mut bad = chain.clone();
    bad[1].summary.push('!');
    assert_eq!(verify_chain(&bad), Err(1));
    let mut bad = chain.clone();
    bad.remove(2);
    assert_eq!(verify_chain(&bad), Err(2));
    let mut bad = chain.clone();
    bad[3].index = 1;
    assert_eq!(verify_chain(&bad), Err(3));
    let mut bad = chain.clone();
    bad[0].prev = [1; 32];
    assert_eq!(verify_chain(&bad), Err(0));
    // Recomputing one record's hash still breaks the link to the next.
    let mut bad = chain;
    bad[1].summary = "create_token id=1 label=\"evil\" user_pin=set".into();
    bad[1].hash = record_hash(&bad[1].prev, bad[1].index, &bad[1].summary);
    assert_eq!(verify_chain(&bad), Err(2));
}

#[test]
fn snapshot_round_trip() {
    let (s, t) = with_token();
    s.apply(
        3,
        &Command::PutObjects(vec![record(1, t, true), record(2, t, false)]),
    );
    s.apply(
        4,
        &Command::LoginFailed {
            token: t,
            user: UserType::User,
        },
    );
    s.apply(5, &Command::DeleteToken(TokenId(50))); // refused
    let bytes = s.snapshot_bytes();

    let r = State::new();
    r.restore(&bytes).expect("restore");
    assert_eq!(r.applied(), 5);
    assert_eq!(r.cluster(), s.cluster());
    assert_eq!(r.tokens(), s.tokens());
    assert_eq!(r.audit(), s.audit());
    let a: Vec<_> = s
        .all_objects()
        .iter()
        .map(|o| (o.record.clone(), o.created))
        .collect();
    let b: Vec<_> = r
        .all_objects()
        .iter()
        .map(|o| (o.record.clone(), o.created))
        .collect();
    assert_eq!(a, b);
    assert!(r
        .object(&ObjectId([1; 16]))
        .and_then(|o| o.key.clone())
        .is_some());
    assert_eq!(r.snapshot_bytes(), bytes, "deterministic encoding");
    // Both continue identically (the next token id included).
    let cmd = Command::CreateToken {
        label: "t2".into(),
        so_pin: pin("s"),
        user_pin: None,
    };
    assert_eq!(s.apply(6, &cmd), r.apply(6, &cmd));
    assert_eq!(s.snapshot_bytes(), r.snapshot_bytes());

    // Restoring replaces everything, including what the target had.
    let other = State::new();
    other.apply(1, &Command::Init(info()));
    other.apply(
        2,
        &Command::CreateToken {
            label: "zz".into(),
            so_pin: pin("s"),
            user_pin: None,
        },
    );
    other.restore(&bytes).expect("restore");
    assert!(other.token_by_label("zz").is_none());
    assert_eq!(other.snapshot_bytes(), bytes);

    // Garbage and tampered snapshots are refused and change nothing.
    assert!(other.restore(&bytes[..bytes.len() / 2]).is_err());
    let mut snap: StateSnapshot = postcard::from_bytes(&bytes).expect("decode");
    snap.base.audit[0].summary.push('x');
    let tampered = postcard::to_stdvec(&snap).expect("encode");
    assert!(matches!(
        other.restore(&tampered),
        Err(NodeError::Storage(_))
    ));
    assert_eq!(other.snapshot_bytes(), bytes);
}

#[tokio::test]
async fn wait_applied_wakes_and_times_out() {
    let s = Arc::new(State::new());
    s.mark_applied(3);
    s.wait_applied(2, Duration::from_millis(1))
        .await
        .expect("already applied");
    let err = s.wait_applied(10, Duration::from_millis(20)).await;
    assert!(matches!(err, Err(NodeError::Timeout(_))));
    let s2 = s.clone();
    let waiter = tokio::spawn(async move { s2.wait_applied(10, Duration::from_secs(10)).await });
    tokio::task::yield_now().await;
    s.mark_applied(9);
    s.mark_applied(10);
    waiter.await.expect("join").expect("woken");
}

/// `CommandResult` travels in forwarded write answers between nodes (postcard); carrying an
/// `ErrorCode` and a `Refusal` instead of a `u32` code must not change a byte, so nodes of
/// either version understand each other.
#[test]
fn command_results_encode_as_with_u32_codes() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    enum Before {
        Done,
        Token(TokenId),
        Failures { count: u32, locked: bool },
        Approval(u64),
        Application(u64),
        Failed { code: u32, detail: String },
        Refused { code: u32, detail: String },
    }
    let pairs = [
        (
            CommandResult::Refused(Refusal::new(ErrorCode::PinLocked, "locked")),
            Before::Refused {
                code: ErrorCode::PinLocked.into(),
                detail: "locked".into(),
            },
        ),
        (
            CommandResult::Failed {
                code: ErrorCode::PinIncorrect,
                detail: "wrong".into(),
            },
            Before::Failed {
                code: ErrorCode::PinIncorrect.into(),
                detail: "wrong".into(),
            },
        ),
        (
            CommandResult::Failures {
                count: 2,
                locked: false,
            },
            Before::Failures {
                count: 2,
                locked: false,
            },
        ),
        (CommandResult::Token(TokenId(7)), Before::Token(TokenId(7))),
    ];
    for (now, before) in pairs {
        let bytes = postcard::to_stdvec(&before).expect("encode");
        assert_eq!(postcard::to_stdvec(&now).expect("encode"), bytes);
        assert_eq!(
            postcard::from_bytes::<CommandResult>(&bytes).expect("decode"),
            now
        );
    }
}

/// `has_policies` is asked on every signature: it reads a flag, never the governance lock, and
/// the flag follows every way the policies change (set, cleared, pruned with their token,
/// restored from a snapshot).
#[test]
fn has_policies_follows_the_policies_without_taking_the_governance_lock() {
    use cloudkey_protocol::gov::{GuardedOp, PolicyScope, Rule};

    let (s, t) = with_token();
    let set_policy = |rules: Vec<Rule>| {
        Command::Gov(GovCommand::SetPolicy {
            scope: PolicyScope::Token(t),
            rules,
        })
    };
    let rule = Rule {
        op: GuardedOp::Sign,
        key_type: None,
        quorum: 1,
        officers: Vec::new(),
        ttl_ms: 60_000,
    };
    let empty = s.snapshot_bytes();
    assert!(!s.has_policies());
    assert_eq!(
        s.apply(3, &set_policy(vec![rule.clone()])),
        CommandResult::Done
    );
    assert!(s.has_policies());
    let with_policy = s.snapshot_bytes();
    assert_eq!(s.apply(4, &set_policy(Vec::new())), CommandResult::Done);
    assert!(!s.has_policies());

    s.restore(&with_policy).expect("restore");
    assert!(s.has_policies());
    s.restore(&empty).expect("restore");
    assert!(!s.has_policies());
    let fresh = State::new();
    fresh.restore(&with_policy).expect("restore");
    assert!(fresh.has_policies());

    // Deleting the token prunes its policy.
    assert_eq!(
        fresh.apply(4, &Command::DeleteToken(t)),
        CommandResult::Done
    );
    assert!(!fresh.has_policies());

    // While the governance state is locked for writing, a signature still gets its answer.
    let s = Arc::new(State::new());
    s.restore(&with_policy).expect("restore");
    let writer = s.gov.write().expect("lock");
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || tx.send(s.has_policies()))
    };
    let answer = rx.recv_timeout(Duration::from_secs(5));
    drop(writer);
    reader.join().expect("reader").ok();
    assert_eq!(
        answer,
        Ok(true),
        "has_policies waited for the governance lock"
    );
}

fn attempt(s: &State, i: u64, t: TokenId, user: UserType) -> CommandResult {
    s.apply(i, &Command::LoginAttempt { token: t, user })
}

fn open(s: &State, i: u64, t: TokenId, user: UserType, holder: u8, now_ms: u64) -> CommandResult {
    let tok = s.token(t).expect("token");
    let hash = match user {
        UserType::So => tok.so_pin.clone(),
        UserType::User => tok.user_pin.clone().unwrap_or_else(|| pin("none")),
    };
    s.apply(
        i,
        &Command::LoginOpened {
            token: t,
            user,
            holder: [holder; 16],
            pin: hash.digest(),
            upgrade: None,
            now_ms,
        },
    )
}

/// `LoginOpened` for the user of `t` at index `i`, checked against `checked`.
fn open_user(
    s: &State,
    i: u64,
    t: TokenId,
    checked: &PinHash,
    upgrade: Option<PinHash>,
) -> CommandResult {
    s.apply(
        i,
        &Command::LoginOpened {
            token: t,
            user: UserType::User,
            holder: [1; 16],
            pin: checked.digest(),
            upgrade,
            now_ms: 1_000,
        },
    )
}

fn user_pin(s: &State, t: TokenId) -> PinHash {
    s.token(t)
        .and_then(|t| t.user_pin.clone())
        .expect("user PIN")
}

#[test]
fn a_login_checked_against_a_pin_that_changed_meanwhile_does_not_open() {
    let (s, t) = with_token();
    let old = user_pin(&s, t);
    s.apply(
        3,
        &Command::SetPin {
            token: t,
            user: UserType::User,
            pin: pin("changed"),
        },
    );
    let r = open_user(&s, 4, t, &old, None);
    assert_eq!(refused_code(&r), ErrorCode::PinIncorrect);
    assert_eq!(s.login_count(t), 0);
}

#[test]
fn attempts_are_counted_first_and_refused_unchecked_at_the_limit() {
    let (s, t) = with_token();
    let counts: Vec<_> = (3..6).map(|i| attempt(&s, i, t, UserType::User)).collect();
    assert_eq!(
        counts,
        [
            CommandResult::Failures {
                count: 1,
                locked: false
            },
            CommandResult::Failures {
                count: 2,
                locked: false
            },
            // The last attempt allowed says so.
            CommandResult::Failures {
                count: 3,
                locked: true
            },
        ]
    );
    // Past the limit: refused, and the count stays where it was.
    assert_eq!(
        refused_code(&attempt(&s, 6, t, UserType::User)),
        ErrorCode::PinLocked
    );
    assert_eq!(s.token(t).map(|t| t.user_failures), Some(3));
    // The SO has a counter of its own.
    assert!(matches!(
        attempt(&s, 7, t, UserType::So),
        CommandResult::Failures { count: 1, .. }
    ));
    // A login that opens clears its user's counter.
    assert!(matches!(
        open(&s, 8, t, UserType::So, 1, 1_000),
        CommandResult::Login { id: 8, .. }
    ));
    assert_eq!(s.token(t).map(|t| t.so_failures), Some(0));
    assert_eq!(
        refused_code(&attempt(&s, 9, t, UserType::User)),
        ErrorCode::PinLocked
    );
}

#[test]
fn logins_live_until_logout_a_new_pin_reinit_or_expiry() {
    let (s, t) = with_token();
    let ttl = info().session_ttl_ms;
    assert_eq!(
        open(&s, 3, t, UserType::User, 1, 1_000),
        CommandResult::Login {
            id: 3,
            expires_ms: 1_000 + ttl
        }
    );
    open(&s, 4, t, UserType::User, 2, 1_000);
    open(&s, 5, t, UserType::So, 1, 1_000);
    assert_eq!(s.login_count(t), 3);
    let entry = s.login(t, 3).expect("live");
    assert_eq!((entry.user, entry.holder), (UserType::User, [1; 16]));

    // Renewal: only by the holder, and it moves the expiry.
    let renew = |i, login, holder: u8, now_ms| {
        s.apply(
            i,
            &Command::LoginRenewed {
                token: t,
                login,
                holder: [holder; 16],
                now_ms,
            },
        )
    };
    assert_eq!(
        refused_code(&renew(6, 3, 9, 2_000)),
        ErrorCode::UserNotLoggedIn
    );
    assert_eq!(
        renew(7, 3, 1, 2_000),
        CommandResult::Login {
            id: 3,
            expires_ms: 2_000 + ttl
        }
    );
    // Logout ends one login; ending it again is no error.
    let close = |i, login| {
        s.apply(
            i,
            &Command::LoginClosed {
                token: t,
                login,
                now_ms: 2_000,
            },
        )
    };
    assert_eq!(close(8, 4), CommandResult::Done);
    assert_eq!(close(9, 4), CommandResult::Done);
    assert!(s.login(t, 4).is_none());
    assert_eq!(
        refused_code(&renew(10, 4, 2, 2_000)),
        ErrorCode::UserNotLoggedIn
    );

    // A new user PIN ends the user's logins, not the SO's.
    s.apply(
        11,
        &Command::SetPin {
            token: t,
            user: UserType::User,
            pin: pin("new"),
        },
    );
    assert!(s.login(t, 3).is_none());
    assert!(s.login(t, 5).is_some());

    // Expired logins are pruned when the token's logins change, and cannot be renewed.
    let late = 1_000 + ttl + 1;
    assert_eq!(
        refused_code(&renew(12, 5, 1, late)),
        ErrorCode::UserNotLoggedIn
    );
    open(&s, 13, t, UserType::User, 3, late);
    assert_eq!(s.login_count(t), 1);

    // Re-initialising the token ends every login; so does deleting it.
    s.apply(
        14,
        &Command::InitToken {
            token: t,
            label: "again".into(),
        },
    );
    assert_eq!(s.login_count(t), 0);
    open(&s, 15, t, UserType::So, 3, late);
    s.apply(16, &Command::DeleteToken(t));
    assert_eq!(s.login_count(t), 0);
}

#[test]
fn a_token_has_a_bounded_number_of_live_logins() {
    let (s, t) = with_token();
    let first = 3;
    for i in 0..MAX_LOGINS_PER_TOKEN as u64 {
        assert!(matches!(
            open(&s, first + i, t, UserType::User, 1, 1_000),
            CommandResult::Login { .. }
        ));
    }
    let next = first + MAX_LOGINS_PER_TOKEN as u64;
    assert_eq!(
        refused_code(&open(&s, next, t, UserType::User, 1, 1_000)),
        ErrorCode::SessionCount
    );
    // Once they expire there is room again.
    let late = 1_000 + info().session_ttl_ms;
    assert!(matches!(
        open(&s, next + 1, t, UserType::User, 1, late),
        CommandResult::Login { .. }
    ));
    assert_eq!(s.login_count(t), 1);
}

#[test]
fn live_logins_survive_a_snapshot_and_a_version_2_snapshot_restores_without_them() {
    let (s, t) = with_token();
    open(&s, 3, t, UserType::User, 1, 1_000);
    let bytes = s.snapshot_bytes();
    let other = State::new();
    other.restore(&bytes).expect("restore");
    assert_eq!(other.login(t, 3), s.login(t, 3));
    assert_eq!(other.snapshot_bytes(), bytes);

    let snap: StateSnapshot = postcard::from_bytes(&bytes).expect("decode");
    let mut base = snap.base;
    base.version = 2;
    let v2 = super::snapshot::SnapshotV2 {
        base,
        gov: snap.gov,
    };
    let older = State::new();
    older
        .restore(&postcard::to_stdvec(&v2).expect("encode"))
        .expect("restore version 2");
    assert_eq!(older.tokens().len(), 1);
    assert_eq!(older.login_count(t), 0);
}

#[test]
fn a_login_can_replace_a_hash_from_before_peppering_with_a_peppered_one() {
    let (s, t) = with_token();
    let old = user_pin(&s, t);
    let peppered = PinHash("$cloudkey-pepper-v1$argon2id$v=19$m=8,t=1,p=1$c2FsdA$x".into());
    let r = open_user(&s, 3, t, &old, Some(peppered.clone()));
    assert!(matches!(r, CommandResult::Login { id: 3, .. }), "{r:?}");
    assert_eq!(s.token(t).and_then(|t| t.user_pin.clone()), Some(peppered));
    // The re-hash is the same PIN: the login it came with stays open.
    assert!(s.login(t, 3).is_some());
    assert!(s
        .audit()
        .iter()
        .any(|a| a.summary.contains("pin_rehashed=peppered")));
}
