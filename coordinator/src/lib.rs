//! `freqsweep-coordinator`: the coordinator as a library (the `freqsweep` binary wires it up).
//! It never links libtorch.
//!
//! - [`artifacts`]: content-addressed artifact files, verified uploads, chunked downloads.
//! - [`graph`]: the task graph of a sweep (train tasks, heatmap chunks) with stable keys.
//! - [`http`]: `/metrics` (Prometheus), `/api/status` (JSON) and the dashboard page.
//! - [`merge`]: heatmap chunks into maps, metric points into curves and confusion matrices.
//! - [`report`]: result files, figures and `report.html` rendered from the store.
//! - [`run`]: opening/resuming a run directory, serving until done, writing result files.
//! - [`scheduler`]: the sans-IO scheduler core (tasks, attempts, leases, workers; time is an input).
//! - [`service`]: the tonic service and driver around the scheduler.
//! - [`store`]: the durable SQLite store with group commit.

pub mod artifacts;
pub mod graph;
pub mod http;
pub mod merge;
pub mod report;
pub mod run;
pub mod scheduler;
pub mod service;
pub mod store;
