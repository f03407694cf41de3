//! Tokens: the failed-login lockout is cluster-wide, and tokens are isolated from each other.

use anyhow::{bail, ensure, Result};
use cloudkey_protocol::ck;
use cloudkey_protocol::msg::{Attribute, Auth, Request, Response};
use cloudkey_protocol::ErrorCode;
use cloudkey_tests::{Cluster, ClusterOptions, Role};

use crate::util::{self, expect_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pins_through_one_node_lock_the_token_on_every_node() -> Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        max_login_failures: Some(3),
        ..ClusterOptions::new(3)
    })
    .await?;
    cluster.init().await?;
    let token = util::create_token(cluster.admin(), "lockout").await?;
    // Other clients carry no applied index yet: let every node apply the new token.
    cluster.settle(cluster.admin()).await?;
    // Endpoints [1, 2, 3]; every call carries the highest applied index seen.
    let client = cluster.client(Role::Client)?;
    // A login is served by the leader only (a follower sends the client there first).
    for attempt in 1..=3 {
        let r = client.call(util::login_req(token, "wrong-pin-0000")).await;
        let allowed: &[ErrorCode] = if attempt < 3 {
            &[ErrorCode::PinIncorrect]
        } else {
            // The attempt that reaches the limit may report the lock or the wrong PIN.
            &[ErrorCode::PinIncorrect, ErrorCode::PinLocked]
        };
        expect_code(&format!("wrong PIN, attempt {attempt}"), r, allowed)?;
    }
    for (idx, node) in [(1usize, 2u64), (2, 3)] {
        let r = client
            .call_node(idx, util::login_req(token, util::USER_PIN))
            .await;
        // The leader refuses the locked PIN; a follower checks no PIN and names the leader.
        expect_code(
            &format!("right PIN on node {node}"),
            r,
            &[ErrorCode::PinLocked, ErrorCode::NotLeader],
        )?;
    }
    {
        let r = client.call(util::login_req(token, util::USER_PIN)).await;
        expect_code("right PIN", r, &[ErrorCode::PinLocked])?;
    }
    match util::call(cluster.admin(), Request::ListTokens).await? {
        Response::Tokens(t) => {
            let t = t.iter().find(|t| t.id == token).expect("listed");
            ensure!(
                t.user_locked && t.user_failures >= 3,
                "listed as locked: {t:?}"
            );
        }
        r => bail!("list tokens: {r:?}"),
    }
    // The operator unlocks it; the right PIN works again, anywhere.
    util::call(cluster.admin(), Request::UnlockToken(token)).await?;
    // A new client has seen nothing yet: let every node apply the unlock first.
    cluster.settle(cluster.admin()).await?;
    let fresh = cluster.client_on(Role::Client, &[3])?;
    util::login(&fresh, token).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_session_can_neither_see_nor_use_another_tokens_keys() -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let t1 = util::create_token(cluster.admin(), "alice").await?;
    let t2 = util::create_token(cluster.admin(), "bob").await?;
    let client = cluster.client(Role::Client)?;
    let alice = util::login(&client, t1).await?;
    let bob = util::login(&client, t2).await?;
    let kp = util::generate_ec(&client, &alice, "alice-key").await?;
    let mine = util::generate_ec(&client, &bob, "bob-key").await?;

    let found = |r: Response| -> Result<Vec<_>> {
        match r {
            Response::Found(ids) => Ok(ids),
            r => bail!("find objects: {r:?}"),
        }
    };
    let all_of_bob = found(
        util::call(
            &client,
            Request::FindObjects {
                auth: bob.clone(),
                template: vec![],
            },
        )
        .await?,
    )?;
    ensure!(
        !all_of_bob.contains(&kp.private) && !all_of_bob.contains(&kp.public),
        "bob sees alice's objects: {all_of_bob:?}"
    );
    ensure!(all_of_bob.contains(&mine.private), "bob sees his own key");
    let by_label = found(
        util::call(
            &client,
            Request::FindObjects {
                auth: bob.clone(),
                template: vec![Attribute::bytes(ck::CKA_LABEL, b"alice-key".to_vec())],
            },
        )
        .await?,
    )?;
    ensure!(
        by_label.is_empty(),
        "bob finds alice's key by label: {by_label:?}"
    );

    let handle_codes = [ErrorCode::KeyHandleInvalid, ErrorCode::ObjectHandleInvalid];
    let r = client
        .call(util::sign_req(&bob, kp.private, b"not yours"))
        .await;
    expect_code("bob signs with alice's key", r, &handle_codes)?;
    let r = client.call(util::point_req(&bob, kp.public)).await;
    expect_code(
        "bob reads alice's public key",
        r,
        &[ErrorCode::ObjectHandleInvalid],
    )?;
    let r = client
        .call(Request::DestroyObject {
            auth: bob.clone(),
            object: kp.private,
        })
        .await;
    expect_code("bob destroys alice's key", r, &handle_codes)?;
    // Bob's grant presented for alice's token is no login at all.
    let forged = Auth {
        token: t1,
        grant: bob.grant.clone(),
    };
    let r = client
        .call(util::sign_req(&forged, kp.private, b"forged"))
        .await;
    ensure!(
        r.is_err(),
        "bob's grant used for alice's token signs: {r:?}"
    );
    // Not logged in: a private key cannot be used.
    let anonymous = Auth {
        token: t1,
        grant: None,
    };
    let r = client
        .call(util::sign_req(&anonymous, kp.private, b"anonymous"))
        .await;
    ensure!(r.is_err(), "an anonymous session signs: {r:?}");

    // Alice's key is intact and hers.
    let point = util::ec_point(&client, &alice, kp.public).await?;
    let sig =
        util::bytes_of(util::call(&client, util::sign_req(&alice, kp.private, b"mine")).await?)?;
    ensure!(
        util::verify(&point, b"mine", &sig),
        "alice's key still signs"
    );
    Ok(())
}
