//! cloudkey load tester
//!
//! This crate is filled by a later issue; it holds no behaviour yet.
#![forbid(unsafe_code)]
