//! The bank's security review (issue 11), attack by attack, on real 3-node clusters:
//!
//! * parallel PIN guesses spread over every node get at most `max_failures` PIN checks, and
//!   the right PIN is refused once the PIN locked;
//! * a session grant is honoured only from the certificate that logged in, and ends with its
//!   login (`Logout`), at a PIN change, and at token re-initialisation, on every node; it
//!   lives `session_ttl` and is renewed while in use.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use cloudkey_node::pki::Identity;
use cloudkey_protocol::client::{Client, ClientError};
use cloudkey_protocol::msg::{Auth, Request, Response, Secret, TokenId, UserType};
use cloudkey_protocol::ErrorCode;
use cloudkey_test_support::wait_for;
use cloudkey_tests::{Cluster, ClusterOptions, Role};
use futures::future::join_all;

use crate::util::{self, expect_code};

/// Wrong guesses sent at once, spread over the nodes.
const GUESSES: usize = 240;
const MAX_FAILURES: u32 = 5;

/// What the nodes answered a burst of logins.
#[derive(Debug, Default)]
struct Burst {
    /// Wrong PINs that were checked (answered "wrong PIN…").
    checked: usize,
    /// Refused before the PIN was looked at ("the PIN is locked").
    unchecked: usize,
    /// The right PIN's answer: `None` for a session.
    right: Option<Option<ErrorCode>>,
}

fn classify(burst: &mut Burst, r: &Result<Response, ClientError>) -> Result<()> {
    match r {
        Err(ClientError::Remote(w)) if w.detail.starts_with("wrong PIN") => {
            ensure!(
                matches!(w.code, ErrorCode::PinIncorrect | ErrorCode::PinLocked),
                "{w:?}"
            );
            burst.checked += 1;
        }
        Err(ClientError::Remote(w)) if w.code == ErrorCode::PinLocked => burst.unchecked += 1,
        other => bail!("a wrong PIN got {other:?}"),
    }
    Ok(())
}

/// Sends [`GUESSES`] wrong PINs at once, round-robin over one client per node, and the right
/// PIN among them when `with_right` (on the last node, after a third of the guesses).
async fn burst(clients: &[Client], token: TokenId, with_right: bool) -> Result<Burst> {
    let guesses = (0..GUESSES).map(|i| {
        let client = &clients[i % clients.len()];
        async move {
            let pin = format!("wrong-{i:04}");
            client.call(util::login_req(token, &pin)).await
        }
    });
    let right = async {
        if !with_right {
            return None;
        }
        let client = &clients[clients.len() - 1];
        Some(client.call(util::login_req(token, util::USER_PIN)).await)
    };
    let (answers, right) = tokio::join!(join_all(guesses), right);
    let mut b = Burst::default();
    for r in &answers {
        classify(&mut b, r)?;
    }
    b.right = match right {
        None => None,
        Some(Ok(Response::Session { .. })) => Some(None),
        Some(Err(ClientError::Remote(w))) => Some(Some(w.code)),
        Some(other) => bail!("the right PIN got {other:?}"),
    };
    Ok(b)
}

async fn user_failures(cluster: &Cluster, token: TokenId) -> Result<u32> {
    match util::call(cluster.admin(), Request::ListTokens).await? {
        Response::Tokens(t) => match t.iter().find(|t| t.id == token) {
            Some(t) => Ok(t.user_failures),
            None => bail!("token {token} not listed"),
        },
        r => bail!("list tokens: {r:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_on_every_node_get_at_most_max_failures_pin_checks() -> Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        max_login_failures: Some(MAX_FAILURES),
        ..ClusterOptions::new(3)
    })
    .await?;
    cluster.init().await?;
    let token = util::create_token(cluster.admin(), "guessed").await?;
    cluster.settle(cluster.admin()).await?;
    let clients: Vec<Client> = cluster
        .ids()
        .iter()
        .map(|&id| cluster.client_on(Role::Client, &[id]))
        .collect::<Result<_>>()?;

    // Wrong guesses alone: exactly `max_failures` are checked, the rest refused unchecked.
    let b = burst(&clients, token, false).await?;
    ensure!(
        b.checked <= MAX_FAILURES as usize && b.checked + b.unchecked == GUESSES,
        "{GUESSES} parallel guesses: {b:?} (at most {MAX_FAILURES} may be checked)"
    );
    let counted = user_failures(&cluster, token).await?;
    ensure!(
        counted == MAX_FAILURES,
        "the counter reads {counted}/{MAX_FAILURES}"
    );
    for (i, client) in clients.iter().enumerate() {
        let r = client.call(util::login_req(token, util::USER_PIN)).await;
        expect_code(
            &format!("the right PIN on node {} once locked", i + 1),
            r,
            &[ErrorCode::PinLocked],
        )?;
    }

    // Unlocked, then the right PIN among the guesses: if it was let through it opens a
    // session (and clears the count, after which `max_failures` more may be checked); if not,
    // it was refused unchecked, as locked, never as a wrong PIN.
    util::call(cluster.admin(), Request::UnlockToken(token)).await?;
    cluster.settle(cluster.admin()).await?;
    let b = burst(&clients, token, true).await?;
    match b.right {
        Some(None) => ensure!(
            b.checked <= 2 * MAX_FAILURES as usize,
            "with one right login: {b:?}"
        ),
        Some(Some(ErrorCode::PinLocked)) => ensure!(
            b.checked <= MAX_FAILURES as usize,
            "the right PIN was refused as locked: {b:?}"
        ),
        other => bail!("the right PIN got {other:?} ({b:?})"),
    }
    ensure!(
        user_failures(&cluster, token).await? == MAX_FAILURES,
        "locked again at the end"
    );
    Ok(())
}

/// A sign request with `auth` against a key, on each node in turn; the codes each refused
/// with (`None` for a signature).
async fn sign_everywhere(
    clients: &[Client],
    auth: &Auth,
    key: cloudkey_protocol::msg::ObjectId,
) -> Vec<Option<ErrorCode>> {
    let mut out = Vec::new();
    for c in clients {
        out.push(match c.call(util::sign_req(auth, key, b"grant")).await {
            Ok(_) => None,
            Err(e) => Some(e.code()),
        });
    }
    out
}

/// Waits until `auth` is refused `UserNotLoggedIn` on every node.
async fn refused_everywhere(
    what: &str,
    clients: &[Client],
    auth: &Auth,
    key: cloudkey_protocol::msg::ObjectId,
) -> Result<()> {
    wait_for(what, Duration::from_secs(10), || async {
        sign_everywhere(clients, auth, key)
            .await
            .iter()
            .all(|c| *c == Some(ErrorCode::UserNotLoggedIn))
            .then_some(())
    })
    .await?;
    Ok(())
}

async fn login_as(client: &Client, token: TokenId, user: UserType, pin: &str) -> Result<Auth> {
    let r = util::call(
        client,
        Request::Login {
            token,
            user,
            pin: Secret::from(pin),
        },
    )
    .await?;
    util::auth_of(token, r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_bound_to_its_certificate_and_ends_with_its_login_everywhere() -> Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        session_ttl_s: Some(3),
        ..ClusterOptions::new(3)
    })
    .await?;
    cluster.init().await?;
    let token = util::create_token(cluster.admin(), "bound").await?;
    cluster.settle(cluster.admin()).await?;
    let app = cluster.client(Role::Client)?;
    let on_each: Vec<Client> = cluster
        .ids()
        .iter()
        .map(|&id| cluster.client_on(Role::Client, &[id]))
        .collect::<Result<_>>()?;
    let mallory = cluster.client_as(&Identity::Client("mallory".into()))?;

    let auth = util::login(&app, token).await?;
    let key = util::generate_ec(&app, &auth, "bound-key").await?.private;
    cluster.settle(&app).await?;
    ensure!(
        sign_everywhere(&on_each, &auth, key)
            .await
            .iter()
            .all(Option::is_none),
        "the grant signs on every node"
    );

    // Another application certificate of the same CA presents the grant: not logged in.
    let r = mallory.call(util::sign_req(&auth, key, b"stolen")).await;
    expect_code(
        "a grant from another certificate",
        r,
        &[ErrorCode::UserNotLoggedIn],
    )?;
    let r = mallory
        .call(Request::RenewSession { auth: auth.clone() })
        .await;
    expect_code(
        "renewing another certificate's grant",
        r,
        &[ErrorCode::UserNotLoggedIn],
    )?;

    // Renewed while in use: the renewed grant outlives the first one's lifetime.
    let renewed = Mutex::new(auth.clone());
    wait_for(
        "the first grant to expire",
        Duration::from_secs(15),
        || async {
            let current = renewed.lock().expect("lock").clone();
            let r = app.call(Request::RenewSession { auth: current }).await;
            *renewed.lock().expect("lock") = util::auth_of(token, r.ok()?).ok()?;
            match app.call(util::sign_req(&auth, key, b"old")).await {
                Err(e) if e.code() == ErrorCode::UserNotLoggedIn => Some(()),
                _ => None,
            }
        },
    )
    .await?;
    let renewed = renewed.into_inner().expect("lock");
    util::call(&app, util::sign_req(&renewed, key, b"renewed")).await?;

    // Logout ends the login on every node.
    util::call(
        &app,
        Request::Logout {
            auth: renewed.clone(),
        },
    )
    .await?;
    refused_everywhere("the grant after logout", &on_each, &renewed, key).await?;

    // A PIN change ends every login of the user, the changer's too.
    let a = util::login(&app, token).await?;
    let b = util::login(&on_each[2], token).await?;
    util::call(
        &app,
        Request::SetPin {
            auth: a.clone(),
            old_pin: Secret::from(util::USER_PIN),
            new_pin: Secret::from("a-new-pin-1234"),
        },
    )
    .await?;
    refused_everywhere("the changer's grant after a PIN change", &on_each, &a, key).await?;
    refused_everywhere("another grant after a PIN change", &on_each, &b, key).await?;
    let c = login_as(&app, token, UserType::User, "a-new-pin-1234").await?;
    util::call(&app, util::sign_req(&c, key, b"new pin")).await?;

    // Re-initialising the token ends every login, the SO's too.
    let so = login_as(&app, token, UserType::So, util::SO_PIN).await?;
    util::call(
        &app,
        Request::InitToken {
            token,
            so_pin: Secret::from(util::SO_PIN),
            label: "bound".into(),
        },
    )
    .await?;
    // (The key went with the re-initialisation: a public session sees nothing; the grant
    // itself is what must be refused.)
    for (what, auth) in [("the user's grant", &c), ("the SO's grant", &so)] {
        wait_for(what, Duration::from_secs(10), || async {
            let mut all = true;
            for client in &on_each {
                let r = client
                    .call(Request::FindObjects {
                        auth: auth.clone(),
                        template: vec![],
                    })
                    .await;
                all &= matches!(r, Err(e) if e.code() == ErrorCode::UserNotLoggedIn);
            }
            all.then_some(())
        })
        .await?;
    }
    Ok(())
}

/// Runs the `cloudkey` CLI with `args` and `stdin`, without PIN variables in its environment.
async fn cli(args: Vec<String>, stdin: &'static str) -> Result<std::process::Output> {
    let bin = cloudkey_tests::cli_binary()?;
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(bin)
            .args(&args)
            .env_remove("CLOUDKEY_SO_PIN")
            .env_remove("CLOUDKEY_USER_PIN")
            .env_remove("CLOUDKEY_OFFICER_PIN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(mut input) = child.stdin.take() {
            input.write_all(stdin.as_bytes())?;
        }
        child.wait_with_output()
    })
    .await??;
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_see_no_counters_or_governance_and_the_cli_takes_no_pin_arguments(
) -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let token = util::create_token(cluster.admin(), "listed").await?;
    let app = cluster.client(Role::Client)?;
    let r = app.call(util::login_req(token, "wrong-pin-1")).await;
    expect_code("a wrong PIN", r, &[ErrorCode::PinIncorrect])?;
    let auth = util::login(&app, token).await?;
    util::generate_ec(&app, &auth, "listed-key").await?;
    let r = app.call(util::login_req(token, "wrong-pin-2")).await;
    expect_code("another wrong PIN", r, &[ErrorCode::PinIncorrect])?;

    let listed = |r: Response| -> Result<cloudkey_protocol::msg::TokenInfo> {
        match r {
            Response::Tokens(t) => t
                .into_iter()
                .find(|t| t.id == token)
                .ok_or_else(|| anyhow::anyhow!("token not listed")),
            r => bail!("list tokens: {r:?}"),
        }
    };
    let full = listed(util::call(cluster.admin(), Request::ListTokens).await?)?;
    ensure!(
        full.user_failures == 1 && full.objects == 2,
        "the operator sees the counter and the objects: {full:?}"
    );
    let public = listed(util::call(&app, Request::ListTokens).await?)?;
    ensure!(
        public.user_failures == 0 && public.so_failures == 0 && public.objects == 0,
        "an application sees no counters: {public:?}"
    );
    ensure!(
        public.label == full.label && public.user_pin_initialized && !public.user_locked,
        "an application still sees what C_GetTokenInfo shows: {public:?}"
    );
    for req in [
        Request::ListOfficers,
        Request::ListPolicies,
        Request::ListApprovals { all: true },
        Request::ListTerminals,
    ] {
        let name = req.name();
        util::call(cluster.admin(), req.clone()).await?;
        expect_code(
            &format!("{name} with an application certificate"),
            app.call(req).await,
            &[ErrorCode::Forbidden],
        )?;
    }

    // The CLI: a PIN on its command line is refused; standard input with --pin-stdin works;
    // without either (and not at a terminal) it says where a PIN may come from.
    let settings = cluster.settings_as(&Identity::Operator("cli".into()))?;
    let config = settings.to_string_lossy().into_owned();
    let args = |extra: &[&str]| -> Vec<String> {
        ["--config", config.as_str()]
            .iter()
            .chain(extra)
            .map(|s| (*s).to_owned())
            .collect()
    };
    let out = cli(
        args(&["token", "create", "by-cli", "--so-pin", "so-pin-1234"]),
        "",
    )
    .await?;
    ensure!(
        !out.status.success(),
        "a PIN as an argument is refused: {out:?}"
    );
    let out = cli(args(&["token", "create", "by-cli"]), "").await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && stderr.contains("--pin-stdin"),
        "no PIN from anywhere: {stderr}"
    );
    let out = cli(
        args(&["--pin-stdin", "token", "create", "by-cli"]),
        "so-pin-1234\nuser-pin-5678\n",
    )
    .await?;
    ensure!(
        out.status.success(),
        "token create --pin-stdin: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = match util::call(cluster.admin(), Request::ListTokens).await? {
        Response::Tokens(t) => t.into_iter().find(|t| t.label == "by-cli"),
        r => bail!("list tokens: {r:?}"),
    };
    let made = made
        .ok_or_else(|| anyhow::anyhow!("by-cli not created"))?
        .id;
    cluster.settle(cluster.admin()).await?;
    login_as(&app, made, UserType::User, "user-pin-5678").await?;
    login_as(&app, made, UserType::So, "so-pin-1234").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pki_rotate_reissues_every_leaf_and_the_restarted_cluster_serves_with_them() -> Result<()> {
    let mut cluster = Cluster::start_init(3).await?;
    let token = util::create_token(cluster.admin(), "rotated").await?;
    cluster.settle(cluster.admin()).await?;
    let node_cert = cluster.pki_dir().join("node-1.pem");
    let before = std::fs::read(&node_cert)?;
    let pki = cluster.pki_dir().to_string_lossy().into_owned();
    let out = cli(vec!["pki".into(), "rotate".into(), "--dir".into(), pki], "").await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && stdout.contains("valid 90 days"),
        "pki rotate: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in ["node-1", "node-2", "node-3", "operator-admin", "client-app"] {
        ensure!(stdout.contains(id), "{id} reissued: {stdout}");
    }
    ensure!(
        std::fs::read(&node_cert)? != before,
        "node 1's certificate was replaced"
    );
    // Every node restarted on its new certificate and key; clients on their new files.
    for id in cluster.ids() {
        cluster.stop(id).await?;
        cluster.restart(id).await?;
    }
    cluster.wait_ready().await?;
    let app = cluster.client(Role::Client)?;
    let auth = util::login(&app, token).await?;
    let key = util::generate_ec(&app, &auth, "after-rotate")
        .await?
        .private;
    util::call(&app, util::sign_req(&auth, key, b"rotated")).await?;
    Ok(())
}
