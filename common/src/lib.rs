//! `freqsweep-common`: the frequency science every other crate relies on, in plain Rust (no
//! libtorch, no async runtime), so the coordinator, tests and tools build in seconds.
//!
//! - [`spectrum`]: centred spectra, [`spectrum::Cell`]s, conjugate pairs, FFT plans, Fourier basis.
//! - [`bands`]: the four radial bands, band sets like `B124`, batched band filtering.
//! - [`corruption`]: the CIFAR-10-C corruption suite (regenerated) and `fourier(u, v, ε)`.
//! - [`syn`]: the `Syn_d` generator.
//! - [`digest`]: `sha256:` content digests of artifacts.
//! - [`files`]: files read whole, each with a size bound.
//! - [`dataset`], [`npy`], [`idx`]: datasets in memory, `.npy`, IDX (MNIST and kin), image-folder
//!   and CIFAR-10 readers.
//! - [`metrics`]: confusion matrices, per-class F1, cosine similarity.
//! - [`heatmap`]: cell chunks and the idempotent merge of chunk results.
//! - [`image`]: PNG output. [`figures`]: heatmaps with colour bars, F1 curves, confusion matrices
//!   and overviews (plotters, font embedded).
//! - [`logging`]: the `tracing` set-up shared by both binaries.
//! - [`machine`]: the thread and process counts this machine's cores and memory allow.
//! - [`seeds`]: mean ± standard deviation over the runs of a group that differ only in seed.
//! - [`spec`]: sweep specs (TOML), validation with line numbers, grid expansion.
//! - [`task`]: task descriptions, outcomes and metric points exchanged by coordinator and worker.
//! - [`text`]: untrusted text on one bounded line, as error messages quote it.

pub mod bands;
pub mod corruption;
pub mod dataset;
pub mod dfm;
pub mod digest;
pub mod figures;
pub mod files;
pub mod heatmap;
pub mod idx;
pub mod image;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod npy;
pub mod seeds;
pub mod spec;
pub mod spectrum;
pub mod syn;
pub mod task;
pub mod text;
