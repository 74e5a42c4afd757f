//! `freqsweep-coordinator`: the coordinator as a library (the `freqsweep` binary wires it up).
//! It never links libtorch.
//!
//! - [`artifacts`]: content-addressed artifact files, verified uploads, chunked downloads.
//! - [`store`]: the durable SQLite store with group commit.

pub mod artifacts;
pub mod store;
