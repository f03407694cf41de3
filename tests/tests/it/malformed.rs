//! Hostile frames: an oversized length, garbage postcard, an unknown request variant, trailing
//! bytes, a truncated frame, a wrong protocol version. Each gets an error code (a stream reset
//! or stop with the framing codes, or a `BadRequest` answer), and the node stays up: the same
//! connection and new ones are served afterwards.

use anyhow::{bail, ensure, Result};
use cloudkey_node::pki::{CertPaths, Identity};
use cloudkey_protocol::frame::{self, reset};
use cloudkey_protocol::msg::{ClientRequest, Request, Response};
use cloudkey_protocol::ErrorCode;
use cloudkey_tests::{Cluster, Role, CLIENT};

use crate::util;
use crate::wire::{self, Outcome};

/// An error code for the stream: a framing reset/stop code or a `BadRequest` answer.
fn error_code(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::Reset(c) | Outcome::Stopped(c)
            if [
                u64::from(reset::FRAME_TOO_LARGE),
                u64::from(reset::MALFORMED),
            ]
            .contains(c) =>
        {
            Some(format!("stream code {c}"))
        }
        Outcome::Response(r) => match &r.result {
            Err(e) if e.code == ErrorCode::BadRequest => Some(format!("{}", e.code)),
            _ => None,
        },
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_error_codes_and_the_node_stays_up() -> Result<()> {
    let cluster = Cluster::start_init(1).await?;
    let pki = cluster.pki_dir();
    let me = CertPaths::of(pki, &Identity::Client(CLIENT.into()));
    let config = wire::client_config(&wire::material(&pki.join("ca.pem"), &me.cert, &me.key)?)?;
    let ep = wire::endpoint()?;
    let conn = wire::connect(&ep, config.clone(), cluster.addr(1))
        .await
        .map_err(anyhow::Error::msg)?;

    let status = wire::request_frame(Request::Status);
    let mut trailing = status.clone();
    trailing.push(0);
    let len = u32::from_be_bytes(trailing[..4].try_into()?) + 1;
    trailing[..4].copy_from_slice(&len.to_be_bytes());
    let mut truncated = u32::to_be_bytes(100).to_vec();
    truncated.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut too_large = u32::to_be_bytes(u32::MAX).to_vec();
    too_large.extend_from_slice(&[0; 16]);
    let mut just_too_large = u32::try_from(frame::MAX_FRAME + 1)?.to_be_bytes().to_vec();
    just_too_large.extend_from_slice(&[0; 16]);
    let wrong_version = frame::encode(&ClientRequest {
        version: 999,
        min_applied: 0,
        request: Request::Status,
    })?;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("length u32::MAX", too_large),
        ("length MAX_FRAME + 1", just_too_large),
        ("garbage postcard", wire::raw_frame(&[0xff; 12])),
        // version 1, min_applied 0, request variant 200 (varint c8 01)
        (
            "unknown request variant",
            wire::raw_frame(&[0x01, 0x00, 0xc8, 0x01]),
        ),
        ("trailing bytes", trailing),
        ("truncated frame", truncated),
        ("wrong protocol version", wrong_version),
    ];
    for (what, bytes) in &cases {
        let outcome = wire::exchange(&conn, bytes).await;
        match error_code(&outcome) {
            Some(code) => println!("{what}: {code}"),
            None => bail!("{what}: no error code, got {outcome}"),
        }
        // The same connection still serves a good request.
        match wire::exchange(&conn, &status).await {
            Outcome::Response(r) if matches!(r.result, Ok(Response::Status(_))) => {}
            other => bail!("after {what}: status on the same connection: {other}"),
        }
    }

    // A burst of garbage on many streams at once.
    let garbage = wire::raw_frame(&[0xfe; 64]);
    let burst = (0..200).map(|_| wire::exchange(&conn, &garbage));
    for outcome in futures::future::join_all(burst).await {
        ensure!(error_code(&outcome).is_some(), "burst: {outcome}");
    }
    // An empty stream: finished before any byte.
    let _ = wire::exchange(&conn, &[]).await;

    // A new connection, and the ordinary client, are served.
    let conn2 = wire::connect(&ep, config, cluster.addr(1))
        .await
        .map_err(anyhow::Error::msg)?;
    ensure!(
        matches!(wire::exchange(&conn2, &status).await, Outcome::Response(_)),
        "a new connection is served"
    );
    util::call(&cluster.client(Role::Client)?, Request::Status).await?;
    ep.close(0u32.into(), b"done");
    Ok(())
}
