//! The module's private tokio runtime and the blocking call into the cluster.
//!
//! PKCS#11 functions are synchronous and are called on the application's threads, which are
//! never this runtime's threads; but an application may itself run tokio and call the module
//! from inside its own runtime, where `Handle::block_on` would panic. So a call is *spawned*
//! on the private runtime and the calling thread waits on a channel, bounded by the deadline
//! (the client bounds the call by the same deadline; the channel wait is a backstop).
//!
//! After `fork()` the child has none of the runtime's threads: the module leaks the parent's
//! runtime there (never drops it, which would wait for threads that do not exist) and builds a
//! new one at the child's `C_Initialize` (see `module.rs`).

use std::sync::mpsc;
use std::time::Duration;

use cloudkey_protocol::client::{Client, ClientSettings};
use cloudkey_protocol::msg::{Request, Response};

use crate::error::Ckr;

/// Extra time the calling thread waits beyond the deadline before giving up on an answer.
const GRACE: Duration = Duration::from_millis(500);
/// How long `C_Finalize` lets tasks still in flight finish before the runtime is dropped.
const SHUTDOWN: Duration = Duration::from_millis(200);

/// Where requests go: the cluster, or a fake node in tests.
pub(crate) trait Backend: Send + Sync {
    /// Sends one request and waits for its answer, within the configured deadline.
    ///
    /// # Errors
    /// The node's refusal as its `CK_RV`; `CKR_DEVICE_ERROR` when the cluster cannot be
    /// reached in time.
    fn call(&self, request: Request) -> Result<Response, Ckr>;
}

/// The cluster, reached with the protocol [`Client`] on a private runtime.
///
/// The runtime is a current-thread runtime driven by one dedicated thread: the module only
/// waits on the network, and one thread that runs every task (the QUIC endpoint, the
/// connections and the calls) hands no work between its own threads. With a multi-threaded
/// runtime each request woke an idle worker, and workers woke each other to steal the
/// connection's tasks: context switches that cost more than the work on a busy host.
pub(crate) struct Remote {
    handle: tokio::runtime::Handle,
    /// Ends the runtime thread's `block_on`.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    client: Option<Client>,
    deadline: Duration,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("client", &self.client)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Builds the runtime and the client (which binds its UDP socket on the runtime), and
    /// starts the thread that drives them.
    ///
    /// # Errors
    /// A one-line message when the runtime cannot start or the client settings are unusable.
    pub(crate) fn new(settings: &ClientSettings) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the module's runtime: {e}"))?;
        let client = {
            let _guard = runtime.enter();
            Client::new(settings).map_err(|e| e.to_string())?
        };
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("cloudkey-pkcs11".into())
            .spawn(move || {
                // Runs every task until `C_Finalize`, then gives those in flight a moment.
                let _ = runtime.block_on(stopped);
                runtime.shutdown_timeout(SHUTDOWN);
            })
            .map_err(|e| format!("cannot start the module's runtime thread: {e}"))?;
        Ok(Self {
            handle,
            stop: Some(stop),
            thread: Some(thread),
            client: Some(client),
            deadline: settings.deadline(),
        })
    }
}

impl Backend for Remote {
    fn call(&self, request: Request) -> Result<Response, Ckr> {
        let Some(client) = &self.client else {
            return Err(Ckr::GENERAL_ERROR);
        };
        let name = request.name();
        let client = client.clone();
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let r = client.call(request).await;
            // The caller may have given up already; nothing to do then.
            let _ = tx.send(r);
        });
        match rx.recv_timeout(self.deadline + GRACE) {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                tracing::debug!(request = name, error = %e, "cluster call failed");
                Err(e.into())
            }
            Err(_) => {
                tracing::debug!(request = name, "no answer within the deadline");
                Err(Ckr::DEVICE_ERROR)
            }
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        // C_Finalize on an application thread: close the connections, then stop the runtime
        // thread, which waits a moment for tasks still in flight.
        if let Some(client) = self.client.take() {
            // `C_Finalize` may come from an exit handler (OpenSSL's cleanup at exit finalises
            // libp11's modules) after this thread's locals were destroyed, where entering the
            // runtime panics. Closing and dropping the client needs no runtime context: it only
            // wakes the endpoint's tasks.
            let locals_gone = matches!(
                tokio::runtime::Handle::try_current(),
                Err(e) if e.is_thread_local_destroyed()
            );
            let _guard = (!locals_gone).then(|| self.handle.enter());
            client.close();
            drop(client);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // Bounded: the thread only waits `SHUTDOWN` for the tasks in flight.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::time::Instant;

    use super::*;

    /// Writes a CA and a client certificate (as `cloudkey pki` makes them) into `dir`.
    pub(crate) fn write_pki(dir: &Path) {
        let pki = cloudkey_test_support::TestPki::new("test CA");
        let app = pki.client("app");
        std::fs::write(dir.join("ca.pem"), pki.ca_pem()).expect("write");
        std::fs::write(dir.join("app.pem"), &app.cert_pem).expect("write");
        std::fs::write(dir.join("app.key"), &app.key_pem).expect("write");
    }

    #[test]
    fn an_unreachable_cluster_fails_within_the_deadline_even_inside_a_runtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_pki(dir.path());
        let settings = ClientSettings {
            // Nothing answers QUIC on the discard port.
            endpoints: vec!["127.0.0.1:9".into()],
            ca: dir.path().join("ca.pem"),
            cert: dir.path().join("app.pem"),
            key: dir.path().join("app.key"),
            deadline_ms: 300,
            connect_timeout_ms: 100,
        };
        let remote = Remote::new(&settings).expect("remote");
        let bound = Duration::from_millis(300) + GRACE;
        let t = Instant::now();
        assert_eq!(remote.call(Request::ListTokens), Err(Ckr::DEVICE_ERROR));
        assert!(t.elapsed() <= bound, "{:?}", t.elapsed());
        // An application calling from inside its own tokio runtime: no panic, same answer,
        // and finalising there does not block the runtime.
        let app = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let r = app.block_on(async { remote.call(Request::ListTokens) });
        assert_eq!(r, Err(Ckr::DEVICE_ERROR));
        app.block_on(async move { drop(remote) });
    }
}
