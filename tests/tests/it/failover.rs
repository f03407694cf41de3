//! SIGKILL of the Raft leader while a client creates keys and signs in a loop:
//! * every key whose creation was acknowledged still exists afterwards, on every survivor;
//! * signing goes on through the survivors (the client fails over);
//! * writes resume once a new leader is elected;
//! * the killed node, restarted, catches up (applied index, domain in every chip) and signs
//!   with keys created while it was down.
//!
//! Prints the election time and the key-creation rate.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use cloudkey_protocol::client::Client;
use cloudkey_protocol::msg::{Auth, Request, Response};
use cloudkey_tests::{wait_for, Cluster, Role};

use crate::util::{self, bytes_of, key_pair_of, point_of, KeyPair};

#[derive(Default)]
struct Log {
    /// Key pairs whose creation was acknowledged, and when.
    acked: Vec<(KeyPair, Instant)>,
    /// Failed creations (outcome unknown or refused), and when.
    write_errors: Vec<(Instant, String)>,
    /// Successful signatures, and when.
    signed: Vec<Instant>,
    /// Failed signatures, and when.
    sign_errors: Vec<(Instant, String)>,
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Creates key pairs in a loop and signs once with each new key.
async fn writer(client: Client, auth: Auth, stop: Arc<AtomicBool>, log: Arc<Mutex<Log>>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let created = client
            .call(util::gen_ec_req(&auth, &format!("failover-{i}"), false))
            .await;
        match created
            .map_err(|e| e.to_string())
            .and_then(|r| key_pair_of(r).map_err(|e| e.to_string()))
        {
            Ok(kp) => {
                lock(&log).acked.push((kp, Instant::now()));
                let signed = client
                    .call(util::sign_req(&auth, kp.private, b"fresh key"))
                    .await;
                let mut l = lock(&log);
                match signed {
                    Ok(_) => l.signed.push(Instant::now()),
                    Err(e) => l.sign_errors.push((Instant::now(), e.to_string())),
                }
            }
            Err(e) => lock(&log).write_errors.push((Instant::now(), e)),
        }
    }
}

/// Signs with existing keys in a loop (reads only: no leader needed).
async fn signer(
    client: Client,
    auth: Auth,
    keys: Vec<KeyPair>,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let kp = keys[i % keys.len()];
        i += 1;
        let r = client
            .call(util::sign_req(&auth, kp.private, b"steady"))
            .await;
        let mut l = lock(&log);
        match r {
            Ok(_) => l.signed.push(Instant::now()),
            Err(e) => l.sign_errors.push((Instant::now(), e.to_string())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_under_load_loses_no_acknowledged_key() -> Result<()> {
    let mut cluster = Cluster::start_init(3).await?;
    let token = util::create_token(cluster.admin(), "failover").await?;
    // Other clients carry no applied index yet: let every node apply the new token.
    cluster.settle(cluster.admin()).await?;
    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let leader_idx = usize::try_from(leader - 1)?;
    let term_before = cluster.status(leader).await?.term;

    let writes = cluster.client(Role::Client)?;
    let auth = util::login(&writes, token).await?;
    let mut steady = Vec::new();
    for i in 0..3 {
        steady.push(util::generate_ec(&writes, &auth, &format!("steady-{i}")).await?);
    }
    // The signer reads from the leader first, so that the kill makes it fail over.
    let reads = cluster.client(Role::Client)?;
    reads.set_preferred(leader_idx)?;
    util::call(&reads, cloudkey_protocol::msg::Request::Status).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let log = Arc::new(Mutex::new(Log::default()));
    let started = Instant::now();
    let w = tokio::spawn(writer(
        writes.clone(),
        auth.clone(),
        stop.clone(),
        log.clone(),
    ));
    let s = tokio::spawn(signer(
        reads.clone(),
        auth.clone(),
        steady,
        stop.clone(),
        log.clone(),
    ));

    // Enough keys before the kill for a meaningful creation rate.
    wait_for(
        "60 acknowledged keys before the kill",
        Duration::from_secs(60),
        || async { (lock(&log).acked.len() >= 60).then_some(()) },
    )
    .await?;
    let killed_at = Instant::now();
    let acked_before = lock(&log).acked.len();
    cluster.kill(leader);

    let new_leader = cluster.wait_leader(Duration::from_secs(30)).await?;
    let election = killed_at.elapsed();
    ensure!(new_leader != leader, "the killed node cannot lead");
    let term_after = cluster.status(new_leader).await?.term;
    ensure!(
        term_after > term_before,
        "a new term: {term_before} -> {term_after}"
    );

    let after = |t: &Instant| *t > killed_at;
    wait_for(
        "20 keys acknowledged after the kill",
        Duration::from_secs(60),
        || async {
            (lock(&log).acked.iter().filter(|(_, t)| after(t)).count() >= 20).then_some(())
        },
    )
    .await?;
    wait_for(
        "signatures after the kill",
        Duration::from_secs(30),
        || async { (lock(&log).signed.iter().filter(|t| after(t)).count() >= 20).then_some(()) },
    )
    .await?;
    stop.store(true, Ordering::Relaxed);
    w.await?;
    s.await?;

    // Outages: the longest gap between consecutive successes (times are recorded under the
    // log's lock, so they are in order).
    let longest_gap = |times: &[Instant]| {
        times
            .windows(2)
            .map(|w| w[1].duration_since(w[0]))
            .max()
            .unwrap_or_default()
    };
    let (acked, write_errors, sign_errors, write_outage, sign_outage, signed_after) = {
        let l = lock(&log);
        let ack_times: Vec<Instant> = l.acked.iter().map(|(_, t)| *t).collect();
        (
            l.acked.clone(),
            l.write_errors.len(),
            l.sign_errors.len(),
            longest_gap(&ack_times),
            longest_gap(&l.signed),
            l.signed.iter().filter(|t| after(t)).count(),
        )
    };

    // Every acknowledged key exists and signs, on every survivor. `writes` carries the highest
    // applied index it saw, so each survivor answers only once it has applied every write.
    let survivors = cluster.running();
    for &node in &survivors {
        let idx = usize::try_from(node - 1)?;
        for (n, (kp, _)) in acked.iter().enumerate() {
            let msg = format!("survivor {node} key {n}");
            let point = point_of(
                writes
                    .call_node(idx, util::point_req(&auth, kp.public))
                    .await?,
            )
            .with_context(|| format!("key {n} on node {node}"))?;
            let sig = bytes_of(
                writes
                    .call_node(idx, util::sign_req(&auth, kp.private, msg.as_bytes()))
                    .await?,
            )?;
            ensure!(
                util::verify(&point, msg.as_bytes(), &sig),
                "key {n} signs on node {node}"
            );
        }
    }

    // The killed node comes back, catches up and serves the keys made while it was down. Its
    // chips come back blank (their sealed nvram removed, as if they had been replaced), so they
    // must obtain the domain key again, chip to chip, from a peer: once an operator enrolled
    // the new chips (the domain goes to enrolled chips only).
    let mut blanked = 0;
    for entry in std::fs::read_dir(cluster.data_dir(leader))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "nvram") {
            std::fs::remove_file(&path)?;
            blanked += 1;
        }
    }
    ensure!(blanked > 0, "the killed node had sealed chip nvram files");
    let target = cluster.status(new_leader).await?.applied;
    let restarted_at = Instant::now();
    cluster.restart(leader).await?;
    // The operator's act; enrolling again changes nothing, so an operator whose answer was
    // lost (the admin client's old connection to the killed node) runs it again.
    let enrolled = wait_for(
        "the new chips enrolled",
        Duration::from_secs(30),
        || async {
            match cluster
                .admin()
                .call(Request::EnrollChips { node: leader })
                .await
            {
                Ok(Response::Chips(c)) => Some(c),
                _ => None,
            }
        },
    )
    .await?;
    ensure!(
        !enrolled.is_empty() && enrolled.iter().all(|c| c.node == leader),
        "enrolled {enrolled:?}"
    );
    wait_for(
        "the restarted node to catch up",
        Duration::from_secs(60),
        || async {
            let st = cluster.status(leader).await.ok()?;
            (st.applied >= target && !st.chips.is_empty() && st.chips.iter().all(|c| c.has_domain))
                .then_some(())
        },
    )
    .await?;
    let catch_up = restarted_at.elapsed();
    let back = cluster.client_on(Role::Client, &[leader])?;
    let made_while_down: Vec<KeyPair> = acked
        .iter()
        .filter(|(_, t)| after(t))
        .map(|(kp, _)| *kp)
        .collect();
    for (n, kp) in made_while_down.iter().enumerate() {
        let msg = format!("restarted node key {n}");
        let point = util::ec_point(&back, &auth, kp.public).await?;
        let sig =
            bytes_of(util::call(&back, util::sign_req(&auth, kp.private, msg.as_bytes())).await?)?;
        ensure!(
            util::verify(&point, msg.as_bytes(), &sig),
            "key {n} signs on the restarted node"
        );
    }

    let before_secs = killed_at.duration_since(started).as_secs_f64();
    let total_secs = started.elapsed().as_secs_f64();
    println!(
        "failover: leader {leader} killed; new leader {new_leader} (term {term_before} -> \
         {term_after}) seen after {election:?}; write outage (longest gap between acknowledged \
         creations) {write_outage:?}, longest gap between signatures {sign_outage:?}; \
         {signed_after} signatures after the kill; key creation \
         {:.1}/s before the kill ({acked_before} keys in {before_secs:.1}s), {} keys in all \
         ({:.1}/s including the failover); {write_errors} failed creations (outcome unknown \
         or refused), {sign_errors} failed signatures; restarted node (chips blanked) caught \
         up (applied {target}, domain in every chip) in {catch_up:?}",
        acked_before as f64 / before_secs,
        acked.len(),
        acked.len() as f64 / total_secs,
    );
    Ok(())
}
