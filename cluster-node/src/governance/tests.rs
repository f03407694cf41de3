//! Tests of the governance state machine.

use cloudkey_protocol::gov::{ApprovalStatus, TerminalKey};

use super::*;
use cloudkey_protocol::msg::TokenId;

fn pin() -> PinHash {
    PinHash("$argon2id$test".into())
}

fn with_officers(names: &[&str]) -> Governance {
    let mut g = Governance::default();
    for (i, n) in names.iter().enumerate() {
        let cmd = GovCommand::AddOfficer {
            name: (*n).into(),
            identity: format!("operator/{n}"),
            pin: pin(),
        };
        g.apply(i as u64 + 1, &cmd, 3).unwrap();
    }
    g
}

fn propose(g: &mut Governance, requester: &str, hash: [u8; 32], quorum: u32, now: u64) -> u64 {
    let cmd = GovCommand::Propose {
        requester: requester.into(),
        op: GuardedOp::Generate,
        scope: PolicyScope::Token(TokenId(1)),
        description: "generate".into(),
        params_hash: hash,
        quorum,
        eligible: vec![],
        now_ms: now,
        ttl_ms: 1000,
    };
    match g.apply(10, &cmd, 3).unwrap().0 {
        GovResult::Approval(id) => id,
        other => panic!("{other:?}"),
    }
}

fn approve(
    g: &mut Governance,
    id: u64,
    who: &str,
    hash: [u8; 32],
    now: u64,
) -> Result<(), Refusal> {
    let cmd = GovCommand::Approve {
        id,
        officer: who.into(),
        identity: format!("operator/{who}"),
        params_hash: hash,
        now_ms: now,
    };
    g.apply(11, &cmd, 3).map(|_| ())
}

#[test]
fn quorum_self_approval_binding_and_exactly_once() {
    let mut g = with_officers(&["alice", "bob", "carol"]);
    let h = [7u8; 32];
    let id = propose(&mut g, "officer/alice", h, 2, 100);
    // The same call again finds the same open request.
    assert_eq!(propose(&mut g, "officer/alice", h, 2, 150), id);
    // The requester never approves; approvals bind the parameters; each officer once.
    let e = approve(&mut g, id, "alice", h, 200).unwrap_err();
    assert_eq!(e.code, ErrorCode::FunctionRejected, "{}", e.detail);
    let e = approve(&mut g, id, "bob", [8u8; 32], 200).unwrap_err();
    assert_eq!(e.code, ErrorCode::ArgumentsBad, "{}", e.detail);
    approve(&mut g, id, "bob", h, 200).unwrap();
    assert!(approve(&mut g, id, "bob", h, 210).is_err());
    assert_eq!(g.approved_for("officer/alice", &h, 220), None);
    approve(&mut g, id, "carol", h, 220).unwrap();
    assert_eq!(g.approved_for("officer/alice", &h, 230), Some(id));
    // Other parameters or another requester: not authorised.
    assert!(g
        .check_consumable(id, "officer/alice", &[8u8; 32], 230)
        .is_err());
    assert!(g.check_consumable(id, "officer/bob", &h, 230).is_err());
    // Consumed once.
    let consume = GovCommand::Consume {
        id,
        requester: "officer/alice".into(),
        params_hash: h,
        now_ms: 240,
    };
    g.apply(42, &consume, 3).unwrap();
    let e = g.apply(43, &consume, 3).unwrap_err();
    assert_eq!(e.code, ErrorCode::ApprovalRequired);
    assert_eq!(
        g.approvals[&id].status_at(250),
        ApprovalStatus::Consumed { index: 42 }
    );
}

#[test]
fn expired_and_rejected_requests_cannot_be_approved_or_used() {
    let mut g = with_officers(&["alice", "bob"]);
    let h = [1u8; 32];
    let id = propose(&mut g, "client/app", h, 1, 100);
    // Expired (ttl 1000 ms).
    let e = approve(&mut g, id, "bob", h, 1_101).unwrap_err();
    assert_eq!(e.code, ErrorCode::ActionProhibited, "{}", e.detail);
    assert_eq!(g.approvals[&id].status_at(1_101), ApprovalStatus::Expired);
    // A new one, rejected.
    let id2 = propose(&mut g, "client/app", h, 1, 2_000);
    assert_ne!(id, id2);
    let reject = GovCommand::Reject {
        id: id2,
        officer: "alice".into(),
        identity: "operator/alice".into(),
        now_ms: 2_100,
    };
    g.apply(20, &reject, 3).unwrap();
    assert!(approve(&mut g, id2, "bob", h, 2_200).is_err());
    assert!(g.check_consumable(id2, "client/app", &h, 2_300).is_err());
    // A request made with an officer's own certificate is theirs too.
    let id3 = propose(&mut g, "operator/bob", h, 1, 3_000);
    assert_eq!(
        approve(&mut g, id3, "bob", h, 3_001).unwrap_err().code,
        ErrorCode::FunctionRejected
    );
}

fn terminal(g: &mut Governance) {
    let cmd = GovCommand::AddTerminal(TerminalInfo {
        id: "ATM-1".into(),
        key: TerminalKey::Sm2 { point: vec![4; 65] },
        admins: vec!["alice".into(), "bob".into()],
        identity: None,
        last_injection: None,
    });
    g.apply(30, &cmd, 3).unwrap();
}

fn apply_cmd(app: u64, officer: &str, nonce: [u8; 32], mac: [u8; 32], now: u64) -> GovCommand {
    GovCommand::TmkApply {
        application: app,
        terminal: "ATM-1".into(),
        officer: officer.into(),
        nonce_hash: nonce,
        sms_mac: mac,
        now_ms: now,
        ttl_ms: 10_000,
        quorum: 1,
        eligible: vec!["bob".into()],
    }
}

#[test]
fn tmk_application_checks_count_and_lock_and_codes_are_single_use() {
    let mut g = with_officers(&["alice", "bob", "mallory"]);
    terminal(&mut g);
    let req = GovCommand::TmkRequest {
        terminal: "ATM-1".into(),
        nonce_hash: [5; 32],
        now_ms: 1_000,
        ttl_ms: 60_000,
    };
    let GovResult::Application(app) = g.apply(31, &req, 3).unwrap().0 else {
        panic!()
    };
    let sms = GovCommand::SmsIssued {
        officer: "alice".into(),
        terminal: "ATM-1".into(),
        mac: [9; 32],
        now_ms: 1_000,
        ttl_ms: 300_000,
    };
    g.apply(32, &sms, 3).unwrap();
    // Not an admin of the terminal: no code for them.
    let mut other = sms.clone();
    if let GovCommand::SmsIssued { officer, .. } = &mut other {
        *officer = "mallory".into();
    }
    assert!(g.apply(33, &other, 3).is_err());
    // Wrong payload, wrong code, wrong officer: counted.
    for cmd in [
        apply_cmd(app, "alice", [6; 32], [9; 32], 2_000),
        apply_cmd(app, "alice", [5; 32], [1; 32], 2_000),
        apply_cmd(app, "mallory", [5; 32], [9; 32], 2_000),
    ] {
        match g.apply(34, &cmd, 3).unwrap().0 {
            GovResult::Failed(ErrorCode::PinIncorrect, _) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(g.applications[&app].failures, 3);
    // Stale: after the payload's lifetime.
    let e = g
        .apply(35, &apply_cmd(app, "alice", [5; 32], [9; 32], 70_000), 3)
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::FunctionRejected);
    // Right: opens the approval request; the code is used up.
    let GovResult::Approval(id) = g
        .apply(36, &apply_cmd(app, "alice", [5; 32], [9; 32], 3_000), 3)
        .unwrap()
        .0
    else {
        panic!()
    };
    assert_eq!(g.approvals[&id].eligible, vec!["bob".to_string()]);
    // The second check before approval: not consumable.
    let delivery = TmkDelivery {
        application: app,
        algorithm: "sm4".into(),
        encrypted: vec![1, 2, 3],
        kcv: [1, 2, 3],
    };
    let inject = GovCommand::TmkInjected {
        application: app,
        delivery,
        blob: vec![0; 8],
        now_ms: 3_500,
    };
    assert_eq!(
        g.apply(37, &inject, 3).unwrap_err().code,
        ErrorCode::ApprovalRequired
    );
    approve(&mut g, id, "bob", tmk_params_hash("ATM-1", app), 4_000).unwrap();
    g.apply(38, &inject, 3).unwrap();
    // Exactly once.
    assert_eq!(
        g.apply(39, &inject, 3).unwrap_err().code,
        ErrorCode::ActionProhibited
    );
    assert_eq!(g.terminals["ATM-1"].last_injection, Some(app));

    // A second application: the used code does not work again, and five failures lock.
    let GovResult::Application(app2) = g.apply(40, &req, 3).unwrap().0 else {
        panic!()
    };
    for i in 0..MAX_APPLICATION_FAILURES {
        let r = g
            .apply(41, &apply_cmd(app2, "alice", [5; 32], [9; 32], 5_000), 3)
            .unwrap()
            .0;
        let GovResult::Failed(code, detail) = r else {
            panic!("{r:?}")
        };
        if i == 0 {
            assert!(detail.contains("already used"), "{detail}");
        }
        let last = i + 1 == MAX_APPLICATION_FAILURES;
        assert_eq!(
            code,
            if last {
                ErrorCode::PinLocked
            } else {
                ErrorCode::PinIncorrect
            }
        );
    }
    assert_eq!(g.applications[&app2].state, AppState::Locked);
    assert_eq!(
        g.apply(42, &apply_cmd(app2, "alice", [5; 32], [9; 32], 5_000), 3)
            .unwrap_err()
            .code,
        ErrorCode::PinLocked
    );
}
