//! cloudkey PKCS#11 module (libcloudkey_pkcs11.so)
//!
//! This crate is filled by a later issue; it holds no behaviour yet.
#![forbid(unsafe_code)]
