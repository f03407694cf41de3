//! cloudkey's multi-process integration tests: one test binary, every test with a cluster of
//! real `cloudkey-node` processes on loopback (see the `cloudkey-tests` harness).
//!
//! * `consistency`: read-your-writes across nodes.
//! * `failover`: SIGKILL of the leader under a create-and-sign load; the killed node catches up.
//! * `restart`: every node stopped and started again keeps every object and blob.
//! * `mtls`: connections without a client certificate, or with one of another CA, are refused.
//! * `tokens`: PIN lockout holds on every node; one token cannot see or use another's keys.
//! * `partition`: a real partition (iptables on loopback): the cut-off leader stops using keys
//!   within the staleness bound, the majority destroys a key and goes on; healed, it catches up.
//! * `security`: the security review's attacks (parallel PIN guesses on every node, session
//!   grants replayed from another certificate or after logout, a PIN change or re-init).
//! * `at_rest`: no key material in clear in any node's data directory or log; a node refuses
//!   to start with its soft chips' NVRAM key inside its data directory unless given
//!   `--insecure-dev-keys`, and reads it from a systemd credential.
//! * `malformed`: hostile frames get error codes and the node stays up.
//! * `dev_cli`: `cloudkey dev up`, `status`, `dev down` end to end.
//! * `governance`: officers and quorum approvals, terminal master-key injection (RSA and SM2
//!   terminals, every refusal, a leader killed mid-flow), the audit chain's checkpoints and
//!   signature counts.
//! * `governance_cli`: the TMK injection of `docs/governance.md` with the `cloudkey` CLI against
//!   `cloudkey dev up`, and an audit export that verifies offline until it is tampered with.
//! * `loadtest_smoke`: `cloudkey-loadtest` for two seconds against a cluster (protocol client)
//!   and against in-process chips; no errors, every signature verified.
//! * `pkcs11_cryptoki`: the `cryptoki` crate on `libcloudkey_pkcs11.so`: sessions, logins,
//!   objects, every operation, the standard errors, SM2 (verified by OpenSSL), 64 threads.
//! * `pkcs11_cmac`: `CKM_AES_CMAC` with `cryptoki` (single- and multi-part, verify), RFC 4493's
//!   vectors, the `openssl mac` CLI; `pkcs11-tool` lists it.
//! * `pkcs11_tool`, `pkcs11_openssl`, `pkcs11_gnutls`: OpenSC's `pkcs11-tool` (and its
//!   `--test`), OpenSSL with the libp11 engine and `pkcs11:` URIs, GnuTLS's `p11tool`.
//! * `pkcs11_fork`: a C program forks; the child initialises the module again and signs.
//! * `pkcs11_failover`: SIGKILL of the node serving a signing application is invisible to it;
//!   every node down gives `CKR_DEVICE_ERROR` in time, and a node back heals the sessions.
//!
//! `p11` and `p11_raw` are shared by the `pkcs11_*` tests; `p11_raw` is the one module with
//! `unsafe` code (raw calls into the module under test).
#![deny(unsafe_code)]

mod at_rest;
mod consistency;
mod dev_cli;
mod failover;
mod governance;
mod governance_cli;
mod loadtest_smoke;
mod malformed;
mod mtls;
mod node_trust;
mod p11;
mod p11_raw;
mod partition;
mod pkcs11_cmac;
mod pkcs11_cryptoki;
mod pkcs11_failover;
mod pkcs11_fork;
mod pkcs11_gnutls;
mod pkcs11_openssl;
mod pkcs11_tool;
mod restart;
mod security;
mod tokens;
mod util;
mod wire;
