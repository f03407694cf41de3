//! What the load is put on: a [`Target`] prepares its key at setup and opens one [`Session`] per
//! worker.
//!
//! * [`pkcs11::Pkcs11Target`]: any PKCS#11 module through the `cryptoki` crate (ours, SoftHSMv2,
//!   a hardware token): one context, one login, a session per worker.
//! * [`client::ClientTarget`]: the cluster through `cloudkey-protocol`'s client directly: one
//!   `Login` for a session grant shared by the workers, then `Sign` and `GenerateKeyPair`
//!   requests.
//! * [`chip::ChipTarget`]: software chips in this process behind a `ChipPool`: the crypto
//!   ceiling, without network, Raft or PKCS#11.
//!
//! Sessions are blocking: every worker is an OS thread that calls its session the way a PKCS#11
//! application calls a token, so every target is driven alike. The async targets (client and
//! chip) enter their futures with [`tokio::runtime::Handle::block_on`] on a runtime this
//! process owns.

pub mod chip;
pub mod client;
pub mod pkcs11;

use anyhow::Result;

use crate::stats::OpError;
use crate::workload::Verifier;

/// What a target says about itself.
pub struct About {
    /// The name in reports (unique within a run).
    pub name: String,
    /// What exactly is measured (module path, token, endpoints, chips).
    pub description: String,
    /// The verifier of the signing key's signatures (`None` for a key-generation workload).
    pub verifier: Option<Verifier>,
}

/// A system under test, set up: its signing key exists and it can open sessions.
pub trait Target: Send + Sync {
    /// Its name, description and verifier.
    fn about(&self) -> &About;

    /// The name in reports (unique within a run).
    fn name(&self) -> &str {
        &self.about().name
    }

    /// A description of what exactly is measured (module path, token, endpoints, chips).
    fn describe(&self) -> String {
        self.about().description.clone()
    }

    /// The verifier of the signing key's signatures (`None` for a key-generation workload).
    fn verifier(&self) -> Option<&Verifier> {
        self.about().verifier.as_ref()
    }

    /// Opens one worker's session.
    ///
    /// # Errors
    /// If the target refuses a new session.
    fn open_session(&self, worker: usize) -> Result<Box<dyn Session>>;
}

/// One worker's session. Each method is one measured operation.
pub trait Session: Send {
    /// Signs (MACs) `data` with the target's key and returns the signature.
    ///
    /// # Errors
    /// The target's failure, with its `CKR_*` code.
    fn sign(&mut self, data: &[u8]) -> Result<Vec<u8>, OpError>;

    /// Generates one key (pair) of the run's algorithm.
    ///
    /// # Errors
    /// The target's failure, with its `CKR_*` code.
    fn generate(&mut self) -> Result<(), OpError>;

    /// Ends the session: destroys what it generated (unless the target keeps it) and closes.
    ///
    /// # Errors
    /// What could not be cleaned up.
    fn close(self: Box<Self>) -> Result<()>;
}

/// Closes sessions in parallel (one thread each, at most `parallel` at a time), since closing
/// may destroy many generated objects; returns the errors.
pub fn close_all(sessions: Vec<Box<dyn Session>>, parallel: usize) -> Vec<String> {
    let parallel = parallel.max(1);
    let mut errors = Vec::new();
    let mut sessions = sessions;
    while !sessions.is_empty() {
        let batch: Vec<Box<dyn Session>> = sessions.drain(..parallel.min(sessions.len())).collect();
        let results: Vec<Result<()>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .into_iter()
                .map(|session| s.spawn(move || session.close()))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(anyhow::anyhow!("closing a session panicked")))
                })
                .collect()
        });
        errors.extend(
            results
                .into_iter()
                .filter_map(Result::err)
                .map(|e| format!("{e:#}")),
        );
    }
    errors
}
