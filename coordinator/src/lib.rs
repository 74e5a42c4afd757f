//! `freqsweep-coordinator`: the coordinator as a library (the `freqsweep` binary wires it up).
//! It never links libtorch.
//!
//! - [`store`]: the durable SQLite store with group commit.

pub mod store;
