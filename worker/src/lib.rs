//! `freqsweep-worker`: the engine that runs models on libtorch (through `tch`). It is the only crate
//! of the workspace that links libtorch.
//!
//! - [`client`]: the loop that talks to the coordinator; what it does is decided by [`agent`], a
//!   state machine without I/O (outbox, uploads, drain, reconnection), and artifacts travel
//!   through `transfer`.
//! - [`device`]: choosing and describing the compute device (`--device cuda:N|cpu`).
//! - [`eval`]: confusion matrices on band-filtered test sets, batched, without gradients.
//! - [`models`]: ResNet18-CIFAR, AlexNet-CIFAR and a tiny CNN with named intermediate outputs.
//!   Its tests include the smoke test that proves libtorch trains and runs `fft2` here.

pub mod agent;
pub mod checkpoint;
pub mod client;
pub mod data;
pub mod device;
pub mod dfm;
pub mod engine;
pub mod eval;
pub mod heatmap;
pub mod models;
pub mod optim;
pub mod progress;
pub mod train;
mod transfer;
