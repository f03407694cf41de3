//! `cloudkey officer|policy|approval ...`: governance. Officers approve what a quorum policy
//! guards; policies are edited here as a whole scope (the CLI reads the scope's rules, changes
//! one, and sets them all); an officer sees a request in full before approving it.

use anyhow::{anyhow, bail};
use cloudkey_protocol::client::Client;
use cloudkey_protocol::gov::{
    ApprovalInfo, ApprovalStatus, GuardedOp, OfficerAuth, PolicyScope, Rule,
};
use cloudkey_protocol::msg::{Request, Response, Secret, TokenInfo};

use crate::args::{ApprovalCommand, KeyTypeArg, OfficerCommand, PolicyCommand, ScopeArgs};
use crate::output::{
    describe_approval, describe_rule, format_approvals, format_officers, format_policies, now_ms,
    scope_name,
};
use crate::pins::{self, Need};
use crate::token::resolve_token;
use crate::{call, unexpected};

/// Environment variable with an officer's own PIN (`officer add`, `approval approve|reject`,
/// `tmk sms|apply`); see [`crate::pins`] for the other sources.
pub const OFFICER_PIN_ENV: &str = "CLOUDKEY_OFFICER_PIN";

pub(crate) fn officer_pin() -> anyhow::Result<Secret> {
    match pins::read("officer PIN", OFFICER_PIN_ENV, Need::Required)? {
        Some(pin) => Ok(Secret::from(pin.as_str())),
        None => bail!("no officer PIN"),
    }
}

pub(crate) fn officer_auth(name: &str) -> anyhow::Result<OfficerAuth> {
    Ok(OfficerAuth {
        name: name.to_owned(),
        pin: officer_pin()?,
    })
}

/// Runs one `officer` command.
///
/// # Errors
/// No officer PIN; refusals of the cluster.
pub(crate) async fn officer_command(client: &Client, cmd: OfficerCommand) -> anyhow::Result<()> {
    match cmd {
        OfficerCommand::Add { name, identity } => add_officer(client, &name, &identity).await,
        OfficerCommand::List => list_officers(client).await,
    }
}

async fn add_officer(client: &Client, name: &str, identity: &str) -> anyhow::Result<()> {
    let pin = officer_pin()?;
    let req = Request::AddOfficer {
        name: name.to_owned(),
        identity: identity.to_owned(),
        pin,
    };
    call(client, req).await?;
    println!("officer {name} added; they connect as {identity}");
    Ok(())
}

async fn list_officers(client: &Client) -> anyhow::Result<()> {
    match call(client, Request::ListOfficers).await? {
        Response::Officers(officers) => print!("{}", format_officers(&officers)),
        r => return Err(unexpected("list officers", &r)),
    }
    Ok(())
}

/// The rule `policy set` asks for, checked as far as the CLI can.
fn make_rule(
    op: GuardedOp,
    quorum: u32,
    officers: Vec<String>,
    key_type: Option<KeyTypeArg>,
    ttl_secs: u64,
) -> anyhow::Result<Rule> {
    if quorum == 0 {
        bail!("--quorum must be at least 1");
    }
    if key_type.is_some() && op != GuardedOp::Generate {
        bail!("--key-type applies only to --op generate");
    }
    let mut distinct = officers.clone();
    distinct.sort();
    distinct.dedup();
    if distinct.len() != officers.len() {
        bail!("an officer is named twice");
    }
    if !officers.is_empty() && officers.len() < quorum as usize {
        bail!(
            "{} officer(s) cannot give {quorum} approvals",
            officers.len()
        );
    }
    if ttl_secs == 0 {
        bail!("--ttl-secs must be positive");
    }
    let ttl_ms = ttl_secs
        .checked_mul(1000)
        .ok_or_else(|| anyhow!("--ttl-secs is too large"))?;
    Ok(Rule {
        op,
        key_type: key_type.map(KeyTypeArg::ckk),
        quorum,
        officers,
        ttl_ms,
    })
}

/// Replaces the rule for the same operation and key type, or adds `rule`; true if replaced.
fn upsert_rule(rules: &mut Vec<Rule>, rule: Rule) -> bool {
    match rules
        .iter_mut()
        .find(|r| r.op == rule.op && r.key_type == rule.key_type)
    {
        Some(r) => {
            *r = rule;
            true
        }
        None => {
            rules.push(rule);
            false
        }
    }
}

/// Removes every rule for `op`; returns how many.
fn remove_rules(rules: &mut Vec<Rule>, op: GuardedOp) -> usize {
    let before = rules.len();
    rules.retain(|r| r.op != op);
    before - rules.len()
}

async fn resolve_scope(client: &Client, args: &ScopeArgs) -> anyhow::Result<PolicyScope> {
    match (&args.token, args.key, args.cluster) {
        (Some(t), None, false) => Ok(PolicyScope::Token(resolve_token(client, t).await?.id)),
        (None, Some(k), false) => Ok(PolicyScope::Key(k)),
        (None, None, true) => Ok(PolicyScope::Cluster),
        _ => bail!("give exactly one of --token, --key and --cluster"),
    }
}

async fn list_policies(client: &Client) -> anyhow::Result<Vec<(PolicyScope, Vec<Rule>)>> {
    match call(client, Request::ListPolicies).await? {
        Response::Policies(p) => Ok(p),
        r => Err(unexpected("list policies", &r)),
    }
}

/// Token labels for display; none if the tokens cannot be listed.
async fn token_labels(client: &Client) -> Vec<TokenInfo> {
    match call(client, Request::ListTokens).await {
        Ok(Response::Tokens(t)) => t,
        _ => Vec::new(),
    }
}

/// Runs one `policy` command.
///
/// # Errors
/// A rule the CLI can tell is wrong; refusals of the cluster.
pub(crate) async fn policy_command(client: &Client, cmd: PolicyCommand) -> anyhow::Result<()> {
    match cmd {
        PolicyCommand::Set {
            scope,
            op,
            quorum,
            officers,
            key_type,
            ttl_secs,
        } => {
            let rule = make_rule(op, quorum, officers, key_type, ttl_secs)?;
            set_policy(client, &scope, rule).await
        }
        PolicyCommand::Clear { scope, op } => clear_policy(client, &scope, op).await,
        PolicyCommand::List => show_policies(client).await,
    }
}

/// Replaces the rule for the same operation and key type in the scope, or adds it.
async fn set_policy(client: &Client, scope: &ScopeArgs, rule: Rule) -> anyhow::Result<()> {
    let scope = resolve_scope(client, scope).await?;
    let mut rules = rules_of(&list_policies(client).await?, scope);
    let replaced = upsert_rule(&mut rules, rule.clone());
    let n = rules.len();
    call(client, Request::SetPolicy { scope, rules }).await?;
    let tokens = token_labels(client).await;
    println!(
        "{}: {} rule {}; the scope has {n} rule(s)",
        scope_name(scope, &tokens),
        if replaced { "replaced" } else { "added" },
        describe_rule(&rule)
    );
    Ok(())
}

/// Removes the scope's rules for `op` (all key types), or all its rules.
async fn clear_policy(
    client: &Client,
    scope: &ScopeArgs,
    op: Option<GuardedOp>,
) -> anyhow::Result<()> {
    let scope = resolve_scope(client, scope).await?;
    let mut rules = rules_of(&list_policies(client).await?, scope);
    let removed = match op {
        Some(op) => remove_rules(&mut rules, op),
        None => std::mem::take(&mut rules).len(),
    };
    let tokens = token_labels(client).await;
    let name = scope_name(scope, &tokens);
    if removed == 0 {
        println!("{name}: no rule to remove");
        return Ok(());
    }
    let left = rules.len();
    call(client, Request::SetPolicy { scope, rules }).await?;
    println!("{name}: {removed} rule(s) removed, {left} left");
    Ok(())
}

async fn show_policies(client: &Client) -> anyhow::Result<()> {
    let policies = list_policies(client).await?;
    let tokens = token_labels(client).await;
    print!("{}", format_policies(&policies, &tokens));
    Ok(())
}

fn rules_of(policies: &[(PolicyScope, Vec<Rule>)], scope: PolicyScope) -> Vec<Rule> {
    policies
        .iter()
        .find(|(s, _)| *s == scope)
        .map(|(_, r)| r.clone())
        .unwrap_or_default()
}

async fn find_pending(client: &Client, id: u64, verb: &str) -> anyhow::Result<ApprovalInfo> {
    let list = match call(client, Request::ListApprovals { all: true }).await? {
        Response::Approvals(l) => l,
        r => return Err(unexpected("list approvals", &r)),
    };
    let a = list
        .into_iter()
        .find(|a| a.id == id)
        .ok_or_else(|| anyhow!("no approval request {id}"))?;
    if a.status != ApprovalStatus::Pending {
        bail!(
            "approval request {id} is {}; only a pending request can be {verb}",
            a.status
        );
    }
    Ok(a)
}

/// Runs one `approval` command.
///
/// # Errors
/// No officer PIN; no such pending request; refusals of the cluster.
pub(crate) async fn approval_command(client: &Client, cmd: ApprovalCommand) -> anyhow::Result<()> {
    match cmd {
        ApprovalCommand::List { all } => list_approvals(client, all).await,
        ApprovalCommand::Approve { id, officer } => approve(client, id, &officer).await,
        ApprovalCommand::Reject { id, officer } => reject(client, id, &officer).await,
    }
}

async fn list_approvals(client: &Client, all: bool) -> anyhow::Result<()> {
    match call(client, Request::ListApprovals { all }).await? {
        Response::Approvals(l) => print!("{}", format_approvals(&l, now_ms())),
        r => return Err(unexpected("list approvals", &r)),
    }
    Ok(())
}

/// The officer's credentials and the pending request `id`, shown in full to the officer
/// who `decides` (`approves`, `rejects`) on it.
async fn before_deciding(
    client: &Client,
    id: u64,
    officer: &str,
    decides: &str,
    decided: &str,
) -> anyhow::Result<(OfficerAuth, ApprovalInfo)> {
    let auth = officer_auth(officer)?;
    let a = find_pending(client, id, decided).await?;
    println!("{officer} {decides}:");
    print!("{}", describe_approval(&a, now_ms()));
    Ok((auth, a))
}

/// Shows the pending request `id`, then approves exactly its parameters.
async fn approve(client: &Client, id: u64, officer: &str) -> anyhow::Result<()> {
    let (auth, a) = before_deciding(client, id, officer, "approves", "approved").await?;
    let req = Request::Approve {
        officer: auth,
        id,
        params_hash: a.params_hash,
    };
    match call(client, req).await? {
        Response::Approval(a) => println!(
            "approved by {officer}: {}/{} approval(s), request {} is {}",
            a.approvals.len(),
            a.quorum,
            a.id,
            a.status
        ),
        r => return Err(unexpected("approve", &r)),
    }
    Ok(())
}

async fn reject(client: &Client, id: u64, officer: &str) -> anyhow::Result<()> {
    let (auth, _) = before_deciding(client, id, officer, "rejects", "rejected").await?;
    match call(client, Request::Reject { officer: auth, id }).await? {
        Response::Approval(a) => println!("request {} is {}", a.id, a.status),
        r => return Err(unexpected("reject", &r)),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use cloudkey_protocol::ck;
    use cloudkey_protocol::msg::TokenId;

    use super::*;

    #[test]
    fn rules_are_checked_replaced_and_removed() {
        let rule = |op, quorum, officers: &[&str], kt| {
            make_rule(
                op,
                quorum,
                officers.iter().map(|s| (*s).to_owned()).collect(),
                kt,
                60,
            )
        };
        assert!(rule(GuardedOp::Sign, 0, &[], None).is_err(), "quorum 0");
        assert!(
            rule(GuardedOp::Sign, 3, &["a", "b"], None).is_err(),
            "3 of 2"
        );
        assert!(
            rule(GuardedOp::Sign, 1, &["a", "a"], None).is_err(),
            "twice"
        );
        assert!(rule(GuardedOp::Sign, 1, &[], Some(KeyTypeArg::Aes)).is_err());
        let r = rule(GuardedOp::Generate, 2, &["a", "b"], Some(KeyTypeArg::Aes)).unwrap();
        assert_eq!((r.key_type, r.ttl_ms), (Some(ck::CKK_AES), 60_000));
        assert!(make_rule(GuardedOp::Sign, 1, vec![], None, 0).is_err());

        let mut rules = vec![r.clone()];
        let mut any_generate = r.clone();
        any_generate.key_type = None;
        assert!(
            !upsert_rule(&mut rules, any_generate),
            "another key type: added"
        );
        let mut stricter = r;
        stricter.quorum = 1;
        assert!(
            upsert_rule(&mut rules, stricter),
            "same op and key type: replaced"
        );
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].quorum, 1);
        let sign = rule(GuardedOp::Sign, 1, &[], None).unwrap();
        upsert_rule(&mut rules, sign);
        assert_eq!(remove_rules(&mut rules, GuardedOp::Generate), 2);
        assert_eq!(rules.len(), 1);
        assert_eq!(remove_rules(&mut rules, GuardedOp::Wrap), 0);
        let text = format_policies(&[(PolicyScope::Token(TokenId(1)), rules)], &[]);
        assert!(text.contains("token 1") && text.contains("sign"), "{text}");
    }
}
