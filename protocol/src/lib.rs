//! cloudkey wire protocol: messages, framing, error codes, TLS helpers and the async client
//!
//! This crate is filled by a later issue; it holds no behaviour yet.
#![forbid(unsafe_code)]
