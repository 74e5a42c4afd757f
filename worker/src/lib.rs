//! `freqsweep-worker`: the engine that runs models on libtorch (through `tch`). It is the only crate
//! of the workspace that links libtorch.
//!
//! - [`device`]: choosing and describing the compute device (`--device cuda:N|cpu`).
//! - [`nets`]: network definitions built from a `tch::nn::Path`.

pub mod device;
pub mod nets;
