//! cloudkey's multi-process integration tests: one test binary, every test with a cluster of
//! real `cloudkey-node` processes on loopback (see the `cloudkey-tests` harness).
//!
//! * `consistency`: read-your-writes across nodes.
//! * `failover`: SIGKILL of the leader under a create-and-sign load; the killed node catches up.
//! * `restart`: every node stopped and started again keeps every object and blob.
//! * `mtls`: connections without a client certificate, or with one of another CA, are refused.
//! * `tokens`: PIN lockout holds on every node; one token cannot see or use another's keys.
//! * `at_rest`: no key material in clear in any node's data directory or log.
//! * `malformed`: hostile frames get error codes and the node stays up.
//! * `dev_cli`: `cloudkey dev up`, `status`, `dev down` end to end.
#![forbid(unsafe_code)]

mod at_rest;
mod consistency;
mod dev_cli;
mod failover;
mod malformed;
mod mtls;
mod restart;
mod tokens;
mod util;
mod wire;
