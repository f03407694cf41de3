//! Output for people: the tables and descriptions the commands print, and times relative to
//! now. Pure functions of what the cluster answered, so that they are tested without one.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use cloudkey_protocol::audit;
use cloudkey_protocol::gov::{
    ApprovalInfo, OfficerInfo, PolicyScope, Rule, TerminalInfo, TerminalKey, TmkDelivery,
};
use cloudkey_protocol::msg::{NodeStatus, ObjectSummary, TokenInfo};
use cloudkey_protocol::{ck, vendor};

/// What `cloudkey status` printed, and how many nodes answered.
#[derive(Debug)]
pub struct StatusReport {
    /// The text.
    pub text: String,
    /// Nodes that answered.
    pub reachable: usize,
}

pub(crate) fn render_status(
    endpoints: &[String],
    answers: &[Result<NodeStatus, String>],
) -> StatusReport {
    let mut out = String::new();
    let ok: Vec<&NodeStatus> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let reachable = ok.len();
    // The view of the node with the highest term and applied index is the freshest.
    let best = ok.iter().max_by_key(|s| (s.term, s.applied)).copied();
    match best {
        Some(s) if s.initialized => {
            let leader = s
                .leader
                .map_or_else(|| "none".to_owned(), |l| format!("node {l}"));
            let _ = writeln!(
                out,
                "cluster: initialised, leader {leader}, term {}, domain KCV {}",
                s.term,
                if s.domain_kcv.is_empty() {
                    "-"
                } else {
                    &s.domain_kcv
                }
            );
            let members: Vec<String> = s
                .members
                .iter()
                .map(|m| format!("{}={}", m.id, m.addr))
                .collect();
            let _ = writeln!(out, "members: {}", members.join(" "));
            for m in &s.members {
                if !endpoints.contains(&m.addr) {
                    let _ = writeln!(
                        out,
                        "note: member {} ({}) is not among the configured endpoints; not asked",
                        m.id, m.addr
                    );
                }
            }
        }
        Some(_) => {
            let _ = writeln!(out, "cluster: not initialised (run `cloudkey init`)");
        }
        None => {
            let _ = writeln!(out, "cluster: no node answered");
        }
    }
    let _ = writeln!(out, "{reachable}/{} node(s) reachable", endpoints.len());
    for (ep, a) in endpoints.iter().zip(answers) {
        match a {
            Ok(s) => {
                let role = match s.leader {
                    Some(l) if l == s.id => "leader",
                    Some(_) => "follower",
                    None if s.initialized => "candidate",
                    None => "uninitialised",
                };
                let _ = writeln!(
                    out,
                    "node {} {ep} {role} term {} applied {} leader {}",
                    s.id,
                    s.term,
                    s.applied,
                    s.leader.map_or_else(|| "-".to_owned(), |l| l.to_string())
                );
                for c in &s.chips {
                    let _ = writeln!(
                        out,
                        "  chip {}: queued {} loaded {}/{} served {} domain {} {}",
                        c.name,
                        c.queued,
                        c.loaded,
                        c.slots,
                        c.served,
                        if c.has_domain { "yes" } else { "no" },
                        if c.healthy { "healthy" } else { "UNHEALTHY" }
                    );
                }
            }
            Err(e) => {
                let _ = writeln!(out, "node ? {ep} UNREACHABLE: {e}");
            }
        }
    }
    StatusReport {
        text: out,
        reachable,
    }
}

pub(crate) fn format_tokens(tokens: &[TokenInfo]) -> String {
    let mut out = format!(
        "{:<4} {:<32} {:<9} {:<14} {:<14} {}\n",
        "ID", "LABEL", "USER PIN", "USER FAILURES", "SO FAILURES", "OBJECTS"
    );
    for t in tokens {
        let pin = match (t.user_pin_initialized, t.user_locked) {
            (_, true) => "LOCKED",
            (true, false) => "set",
            (false, false) => "unset",
        };
        let so = if t.so_locked {
            format!("{}/{} LOCKED", t.so_failures, t.max_failures)
        } else {
            format!("{}/{}", t.so_failures, t.max_failures)
        };
        let _ = writeln!(
            out,
            "{:<4} {:<32} {:<9} {:<14} {:<14} {}",
            t.id.to_string(),
            t.label,
            pin,
            format!("{}/{}", t.user_failures, t.max_failures),
            so,
            t.objects
        );
    }
    out
}

fn class_name(class: u64) -> String {
    match class {
        ck::CKO_DATA => "data".into(),
        ck::CKO_CERTIFICATE => "certificate".into(),
        ck::CKO_PUBLIC_KEY => "public".into(),
        ck::CKO_PRIVATE_KEY => "private".into(),
        ck::CKO_SECRET_KEY => "secret".into(),
        other => format!("0x{other:x}"),
    }
}

pub(crate) fn key_type_name(kt: Option<u64>) -> String {
    match kt {
        None => "-".into(),
        Some(ck::CKK_RSA) => "RSA".into(),
        Some(ck::CKK_EC) => "EC".into(),
        Some(ck::CKK_AES) => "AES".into(),
        Some(ck::CKK_GENERIC_SECRET) => "GENERIC".into(),
        Some(vendor::CKK_SM2) => "SM2".into(),
        Some(vendor::CKK_SM4) => "SM4".into(),
        Some(other) => format!("0x{other:x}"),
    }
}

pub(crate) fn format_objects(objects: &[ObjectSummary]) -> String {
    let mut out = format!(
        "{:<32} {:<5} {:<11} {:<8} {:<24} {}\n",
        "OBJECT", "TOKEN", "CLASS", "TYPE", "LABEL", "CKA_ID"
    );
    for o in objects {
        let _ = writeln!(
            out,
            "{:<32} {:<5} {:<11} {:<8} {:<24} {}",
            o.id.to_string(),
            o.token.to_string(),
            class_name(o.class),
            key_type_name(o.key_type),
            o.label,
            o.cka_id_hex
        );
    }
    let _ = writeln!(out, "{} object(s)", objects.len());
    out
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When `at_ms` is, relative to `now_ms`: `in 4m 59s` or `12s ago`.
pub(crate) fn relative_time(now_ms: u64, at_ms: u64) -> String {
    fn span(ms: u64) -> String {
        let s = ms / 1000;
        match s {
            0..=59 => format!("{s}s"),
            60..=3599 => format!("{}m {}s", s / 60, s % 60),
            3600..=86_399 => format!("{}h {}m", s / 3600, s % 3600 / 60),
            _ => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        }
    }
    if at_ms >= now_ms {
        format!("in {}", span(at_ms - now_ms))
    } else {
        format!("{} ago", span(now_ms - at_ms))
    }
}

pub(crate) fn format_officers(officers: &[OfficerInfo]) -> String {
    let mut out = format!(
        "{:<24} {:<32} {:<9} {}\n",
        "NAME", "IDENTITY", "FAILURES", "STATE"
    );
    for o in officers {
        let _ = writeln!(
            out,
            "{:<24} {:<32} {:<9} {}",
            o.name,
            o.identity,
            o.failures,
            if o.locked { "LOCKED" } else { "active" }
        );
    }
    let _ = writeln!(out, "{} officer(s)", officers.len());
    out
}

pub(crate) fn scope_name(scope: PolicyScope, tokens: &[TokenInfo]) -> String {
    match scope {
        PolicyScope::Token(id) => match tokens.iter().find(|t| t.id == id) {
            Some(t) => format!("token {id} ({})", t.label),
            None => format!("token {id}"),
        },
        other => other.to_string(),
    }
}

fn officers_text(officers: &[String]) -> String {
    if officers.is_empty() {
        "any officer".into()
    } else {
        officers.join(",")
    }
}

pub(crate) fn describe_rule(r: &Rule) -> String {
    let of = officers_text(&r.officers);
    let kt = match r.key_type {
        Some(_) => format!(" ({} keys)", key_type_name(r.key_type)),
        None => String::new(),
    };
    format!(
        "{}{kt}: {} approval(s) from {of}, requests open {}s",
        r.op,
        r.quorum,
        r.ttl_ms / 1000
    )
}

pub(crate) fn format_policies(
    policies: &[(PolicyScope, Vec<Rule>)],
    tokens: &[TokenInfo],
) -> String {
    let mut out = format!(
        "{:<40} {:<15} {:<8} {:<7} {:<9} {}\n",
        "SCOPE", "OP", "KEY TYPE", "QUORUM", "TTL", "OFFICERS"
    );
    let mut n = 0;
    for (scope, rules) in policies {
        for r in rules {
            n += 1;
            let _ = writeln!(
                out,
                "{:<40} {:<15} {:<8} {:<7} {:<9} {}",
                scope_name(*scope, tokens),
                r.op.name(),
                key_type_name(r.key_type),
                r.quorum,
                format!("{}s", r.ttl_ms / 1000),
                officers_text(&r.officers)
            );
        }
    }
    let _ = writeln!(out, "{n} rule(s) in {} scope(s)", policies.len());
    out
}

pub(crate) fn format_approvals(list: &[ApprovalInfo], now: u64) -> String {
    let mut out = format!(
        "{:<6} {:<20} {:<15} {:<20} {:<24} {:<9} {:<14} {:<40} {}\n",
        "ID",
        "STATUS",
        "OP",
        "SCOPE",
        "REQUESTER",
        "APPROVALS",
        "EXPIRES",
        "DESCRIPTION",
        "PARAMS HASH"
    );
    for a in list {
        let _ = writeln!(
            out,
            "{:<6} {:<20} {:<15} {:<20} {:<24} {:<9} {:<14} {:<40} {}",
            a.id,
            a.status.to_string(),
            a.op.name(),
            a.scope.to_string(),
            a.requester,
            format!("{}/{}", a.approvals.len(), a.quorum),
            relative_time(now, a.expires_unix_ms),
            a.description,
            hex::encode(a.params_hash)
        );
    }
    let _ = writeln!(out, "{} request(s)", list.len());
    out
}

/// A request in full, for the officer about to decide on it.
pub(crate) fn describe_approval(a: &ApprovalInfo, now: u64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "request      {} ({})", a.id, a.status);
    let _ = writeln!(out, "operation    {} in {}", a.op, a.scope);
    let _ = writeln!(out, "description  {}", a.description);
    let _ = writeln!(out, "params hash  {}", hex::encode(a.params_hash));
    let _ = writeln!(out, "requester    {}", a.requester);
    let _ = writeln!(
        out,
        "approvals    {}/{} ({}) by {}",
        a.approvals.len(),
        a.quorum,
        if a.eligible.is_empty() {
            "any officer".to_owned()
        } else {
            format!("from {}", a.eligible.join(","))
        },
        if a.approvals.is_empty() {
            "nobody yet".to_owned()
        } else {
            a.approvals.join(",")
        }
    );
    if let Some(r) = &a.rejected_by {
        let _ = writeln!(out, "rejected by  {r}");
    }
    let _ = writeln!(
        out,
        "expires      {}",
        relative_time(now, a.expires_unix_ms)
    );
    out
}

pub(crate) fn format_report(r: &audit::VerifyReport) -> String {
    let mut out = String::new();
    match (r.first_index, r.last_index) {
        (Some(f), Some(l)) => {
            let _ = writeln!(
                out,
                "audit chain OK: {} record(s), log index {f}..={l}, {}",
                r.records,
                if r.starts_at_genesis {
                    "from the chain's first record".to_owned()
                } else {
                    format!("a page: records before log index {f} were not checked")
                }
            );
        }
        _ => {
            let _ = writeln!(out, "audit chain OK: empty");
        }
    }
    if r.audit_key_public_hex.is_empty() {
        let _ = writeln!(out, "audit key: none (no checkpoints)");
    } else {
        let set = r.audit_key_set_at_index.map_or_else(
            || "set before this page".to_owned(),
            |i| format!("set at log index {i}"),
        );
        let _ = writeln!(
            out,
            "audit key: {} endorsed by {} ({set})",
            r.audit_key_public_hex, r.endorser
        );
    }
    match r.last_checkpoint_index {
        Some(c) => {
            let _ = writeln!(
                out,
                "checkpoints: {} verified, the last covers log index {c}; {} record(s) after it rest on the hash links alone",
                r.checkpoints, r.uncovered_after_last_checkpoint
            );
        }
        None => {
            let _ = writeln!(
                out,
                "checkpoints: none; all {} record(s) rest on the hash links alone",
                r.uncovered_after_last_checkpoint
            );
        }
    }
    out
}

pub(crate) fn terminal_key_name(k: &TerminalKey) -> String {
    match k {
        TerminalKey::Rsa { n, .. } => format!("rsa-{}", n.len() * 8),
        TerminalKey::Sm2 { .. } => "sm2".into(),
    }
}

pub(crate) fn format_terminals(terminals: &[TerminalInfo]) -> String {
    let mut out = format!(
        "{:<20} {:<9} {:<30} {:<24} {}\n",
        "TERMINAL", "KEY", "ADMINS", "IDENTITY", "LAST INJECTION"
    );
    for t in terminals {
        let _ = writeln!(
            out,
            "{:<20} {:<9} {:<30} {:<24} {}",
            t.id,
            terminal_key_name(&t.key),
            t.admins.join(","),
            t.identity.as_deref().unwrap_or("-"),
            t.last_injection
                .map_or_else(|| "-".to_owned(), |a| format!("application {a}"))
        );
    }
    let _ = writeln!(out, "{} terminal(s)", terminals.len());
    out
}

pub(crate) fn describe_delivery(id: &str, d: &TmkDelivery) -> String {
    format!(
        "terminal     {id}\napplication  {}\nalgorithm    {}\nencrypted    {}\nkcv          {}\n",
        d.application,
        d.algorithm,
        hex::encode(&d.encrypted),
        hex::encode(d.kcv)
    )
}

#[cfg(test)]
mod tests {
    use cloudkey_protocol::msg::Member;

    use super::*;

    #[test]
    fn status_marks_unreachable_nodes() {
        let s = NodeStatus {
            id: 1,
            addr: "127.0.0.1:1".into(),
            initialized: true,
            term: 2,
            leader: Some(1),
            applied: 7,
            members: vec![Member {
                id: 1,
                addr: "127.0.0.1:1".into(),
            }],
            chips: vec![],
            domain_kcv: "00".into(),
            confirmed_ms_ago: Some(12),
        };
        let r = render_status(
            &["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            &[Ok(s), Err("timed out".into())],
        );
        assert_eq!(r.reachable, 1);
        assert!(r.text.contains("leader node 1"), "{}", r.text);
        assert!(r.text.contains("127.0.0.1:2 UNREACHABLE"), "{}", r.text);
    }
    #[test]
    fn times_are_relative() {
        assert_eq!(relative_time(1_000, 1_000), "in 0s");
        assert_eq!(relative_time(0, 299_000), "in 4m 59s");
        assert_eq!(relative_time(7_200_000, 0), "2h 0m ago");
        assert_eq!(relative_time(0, 90_000_000), "in 1d 1h");
    }
    #[test]
    fn verify_reports_read_well() {
        let r = audit::VerifyReport {
            records: 10,
            first_index: Some(1),
            last_index: Some(19),
            starts_at_genesis: true,
            checkpoints: 2,
            last_checkpoint_index: Some(13),
            uncovered_after_last_checkpoint: 3,
            audit_key_public_hex: "04ab".into(),
            endorser: "node 2".into(),
            audit_key_set_at_index: Some(3),
        };
        let text = format_report(&r);
        assert!(text.contains("10 record(s), log index 1..=19"), "{text}");
        assert!(
            text.contains("endorsed by node 2 (set at log index 3)"),
            "{text}"
        );
        assert!(
            text.contains("the last covers log index 13; 3 record(s)"),
            "{text}"
        );
    }
}
