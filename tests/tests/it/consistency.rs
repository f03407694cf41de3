//! Read-your-writes across nodes: a key pair created through node A can be used through node C
//! at once, because the client sends the highest applied index it has seen and C waits until
//! it has applied that much.

use anyhow::Result;
use cloudkey_tests::{Cluster, Role};

use crate::util::{self, bytes_of, key_pair_of, point_of};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_created_through_one_node_signs_at_once_through_another() -> Result<()> {
    let cluster = Cluster::start_init(3).await?;
    let token = util::create_token(cluster.admin(), "ryw").await?;
    // Other clients carry no applied index yet: let every node apply the new token.
    cluster.settle(cluster.admin()).await?;
    // Write through a follower (it forwards to the leader) and read through the other follower,
    // the node least likely to have applied the write already.
    let leader = cluster
        .wait_leader(std::time::Duration::from_secs(10))
        .await?;
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&i| i != leader).collect();
    let (a, c) = (followers[0], followers[1]);
    // One client, endpoints [A, C]: `call_node(0)` is A only, `call_node(1)` is C only, and
    // both carry the client's highest applied index.
    let client = cluster.client_on(Role::Client, &[a, c])?;
    // A login is served by the leader only; the grant is the certificate's, on any node.
    let leader_client = cluster.client(Role::Client)?;
    let auth = util::login(&leader_client, token).await?;
    cluster.settle(&leader_client).await?;
    for i in 0..10 {
        let kp = key_pair_of(
            client
                .call_node(0, util::gen_ec_req(&auth, &format!("ryw-{i}"), false))
                .await?,
        )?;
        let msg = format!("read your writes {i}");
        let sig = bytes_of(
            client
                .call_node(1, util::sign_req(&auth, kp.private, msg.as_bytes()))
                .await?,
        )?;
        let point = point_of(
            client
                .call_node(1, util::point_req(&auth, kp.public))
                .await?,
        )?;
        assert!(
            util::verify(&point, msg.as_bytes(), &sig),
            "signature {i} verifies"
        );
    }
    Ok(())
}
