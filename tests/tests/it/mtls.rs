//! Mutual TLS: a node refuses a connection without a client certificate, or with a client
//! certificate of another CA; a client certificate cannot do an operator's work.

use anyhow::{bail, ensure, Result};
use cloudkey_node::pki::Identity;
use cloudkey_protocol::msg::{Request, Response, Secret};
use cloudkey_protocol::ErrorCode;
use cloudkey_tests::{Cluster, Pki, Role, CLIENT};

use crate::util;
use crate::wire::{self, Outcome};

/// Connects with `config` and asks for the status; `Ok` only if the node answered.
async fn status_with(cluster: &Cluster, config: quinn::ClientConfig) -> Result<(), String> {
    let ep = wire::endpoint().map_err(|e| e.to_string())?;
    let conn = wire::connect(&ep, config, cluster.addr(1)).await?;
    let outcome = wire::exchange(&conn, &wire::request_frame(Request::Status)).await;
    ep.close(0u32.into(), b"done");
    match outcome {
        Outcome::Response(r) if matches!(r.result, Ok(Response::Status(_))) => Ok(()),
        other => Err(format!("{other}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_or_with_foreign_client_certificates_are_refused() -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let pki = cluster.pki_dir();
    let ca = pki.join("ca.pem");
    let client = cloudkey_node::pki::CertPaths::of(pki, &Identity::Client(CLIENT.into()));

    // Control: our own client certificate is accepted, through the same raw path.
    let good = wire::client_config(&wire::material(&ca, &client.cert, &client.key)?)?;
    if let Err(e) = status_with(&cluster, good).await {
        bail!("a client certificate of the cluster CA must be accepted: {e}");
    }

    // No client certificate at all.
    let none = wire::config_without_client_cert(&ca)?;
    match status_with(&cluster, none).await {
        Ok(()) => bail!("a connection without a client certificate was served"),
        Err(e) => println!("without a client certificate: refused ({e})"),
    }

    // A client certificate of another CA (trusting the cluster CA for the server).
    let other = Pki::new(1)?;
    let foreign = other.paths.client(CLIENT).expect("issued").clone();
    let config = wire::client_config(&wire::material(&ca, &foreign.cert, &foreign.key)?)?;
    match status_with(&cluster, config).await {
        Ok(()) => bail!("a client certificate of another CA was served"),
        Err(e) => println!("with another CA's client certificate: refused ({e})"),
    }
    // Even another CA's *node* certificate (a would-be peer) gets nothing.
    let node = other.paths.node(1).expect("issued").clone();
    let config = wire::client_config(&wire::material(&ca, &node.cert, &node.key)?)?;
    ensure!(
        status_with(&cluster, config).await.is_err(),
        "another CA's node certificate was served"
    );

    // Authenticated, but in the wrong role: a client certificate cannot create tokens.
    let app = cluster.client(Role::Client)?;
    let r = app
        .call(Request::CreateToken {
            label: "not-allowed".into(),
            so_pin: Secret::from(util::SO_PIN),
            user_pin: None,
        })
        .await;
    util::expect_code("create token as a client", r, &[ErrorCode::Forbidden])?;
    Ok(())
}
