//! `libcloudkey_pkcs11.so`: the cloudkey PKCS#11 module.
//!
//! Applications load it like any PKCS#11 module (`C_GetFunctionList` for the v2.40 table,
//! `C_GetInterface` for the 3.0 one) and see the cluster's tokens as slots. The module is thin:
//! it checks the C arguments, keeps sessions, logins and object handles, computes digests, and
//! forwards everything else to the cluster, which owns the object model and whose chips hold
//! and use the keys. Configuration: the TOML file named by `CLOUDKEY_PKCS11_CONFIG`
//! ([`config`]); logging to stderr when `CLOUDKEY_PKCS11_LOG` is set.
//!
//! Layout:
//! * `ffi/`: the exported `C_*` functions (one line each, made by `ck_fn!`), one file per
//!   chapter of the specification, the function lists and interfaces; `ffi/ptr.rs` holds every
//!   raw-pointer access of the crate and nothing else.
//! * `module`: global state, `C_Initialize`/`C_Finalize`, fork detection, slots and logins.
//! * `runtime`: the private tokio runtime and the blocking call into the cluster.
//! * `session`, `objects`, `ops`: sessions and logins; object handles and object functions;
//!   cryptographic operations.
//! * `mechanism`, `attrs`, `digest`: the mechanism table and parameters, attribute encodings,
//!   local digests.
//! * [`error`]: [`Ckr`], the one error type, and the one mapping of cluster errors to `CK_RV`.
//!
//! `README.md` lists what is supported; `VENDOR.md` the SM2/SM3/SM4 numbers.
//!
//! Where each concern lives across the workspace, and how a request flows through the files:
//! `docs/architecture.md` at the root of the workspace.
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]
#![warn(missing_docs)]

#[forbid(unsafe_code)]
mod attrs;
#[forbid(unsafe_code)]
pub mod config;
#[forbid(unsafe_code)]
mod digest;
#[forbid(unsafe_code)]
pub mod error;
mod ffi;
#[forbid(unsafe_code)]
mod mechanism;
#[forbid(unsafe_code)]
mod module;
#[forbid(unsafe_code)]
mod objects;
#[forbid(unsafe_code)]
mod ops;
#[forbid(unsafe_code)]
mod runtime;
#[forbid(unsafe_code)]
mod session;
#[cfg(test)]
#[forbid(unsafe_code)]
mod testing;
#[cfg(test)]
#[forbid(unsafe_code)]
mod tests;

pub use error::Ckr;
pub use mechanism::{advertised, Advertised, SignatureLen, VendorNumbers};
