//! metacrypt-keyd: the process that keeps every key of Metacrypt.
//!
//! keyd owns the SQLite database and the seal state. While unsealed it keeps
//! the MEK, the DEKs and every engine key in locked memory, and it serves
//! requests from frontd and the CLI on two Unix sockets. No request can read
//! a key out of it.
//!
//! Unsafe code is confined to [`secure`], which manages locked memory, and
//! [`sandbox`], which confines the process once setup is done.
#![deny(unsafe_code)]

// The sandbox probe makes keyd try forbidden actions on request; a binary
// that ships must never contain it.
#[cfg(all(feature = "sandbox-probe", not(debug_assertions)))]
compile_error!(
    "the sandbox-probe feature is for tests: release builds (without debug assertions) cannot enable it"
);

pub mod audit;
pub mod barrier;
pub mod clock;
mod crypto;
pub mod db;
pub mod engine;
pub mod policy;
pub mod sandbox;
pub mod seal;
pub mod secure;
pub mod server;
pub mod service;
pub mod slot;
mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
