//! cloudkey cluster node daemon and operator CLI
//!
//! This crate is filled by a later issue; it holds no behaviour yet.
#![forbid(unsafe_code)]
