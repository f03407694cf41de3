//! Every node stopped with SIGTERM (each exits 0) and started again: every object is still
//! there, and blobs made before the restart still load (keys made before sign after).

use std::collections::BTreeSet;

use anyhow::{bail, ensure, Result};
use cloudkey_protocol::msg::{Request, Response};
use cloudkey_tests::{Cluster, Role};

use crate::util::{self, bytes_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stop_and_start_keeps_objects_and_blobs() -> Result<()> {
    let mut cluster = Cluster::start_init(3).await?;
    let token = util::create_token(cluster.admin(), "restart").await?;
    // Other clients carry no applied index yet: let every node apply the new token.
    cluster.settle(cluster.admin()).await?;
    let client = cluster.client(Role::Client)?;
    let auth = util::login(&client, token).await?;
    let mut keys = Vec::new();
    for i in 0..4 {
        let kp = util::generate_ec(&client, &auth, &format!("before-{i}")).await?;
        let point = util::ec_point(&client, &auth, kp.public).await?;
        keys.push((kp, point));
    }
    let objects = |r: Response| -> Result<BTreeSet<String>> {
        match r {
            Response::Objects(o) => Ok(o.iter().map(|o| o.id.to_string()).collect()),
            r => bail!("list objects: unexpected {r:?}"),
        }
    };
    // Every node has applied the keys: the operator's client may ask any of them.
    cluster.settle(&client).await?;
    let applied = client.max_applied();
    let before = objects(util::call(cluster.admin(), Request::ListObjects { token: None }).await?)?;
    ensure!(before.len() == 8, "four key pairs: {before:?}");
    drop(client);

    for id in cluster.ids() {
        let status = cluster.stop(id).await?;
        ensure!(status.success(), "node {id} exits 0 on SIGTERM: {status}");
    }
    for id in cluster.ids() {
        cluster.restart(id).await?;
    }
    cluster.wait_ready().await?;
    // Each node replays its log: the per-node clients below carry no applied index.
    cluster.wait_applied(applied).await?;

    // Asked of every node: each must hold every object.
    for id in cluster.ids() {
        let admin = cluster.client_on(Role::Operator, &[id])?;
        let after = objects(util::call(&admin, Request::ListObjects { token: None }).await?)?;
        ensure!(
            after == before,
            "node {id} after the restart: {after:?} != {before:?}"
        );
    }
    let client = cluster.client(Role::Client)?;
    let auth = util::login(&client, token).await?;
    for (i, (kp, point)) in keys.iter().enumerate() {
        let msg = format!("after the restart {i}");
        let sig = bytes_of(
            util::call(&client, util::sign_req(&auth, kp.private, msg.as_bytes())).await?,
        )?;
        ensure!(
            util::verify(point, msg.as_bytes(), &sig),
            "pre-restart key {i} signs"
        );
    }
    Ok(())
}
