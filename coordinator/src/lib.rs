//! `freqsweep-coordinator`: the coordinator as a library (the `freqsweep` binary wires it up).
//! It never links libtorch.
//!
//! - [`artifacts`]: content-addressed artifact files, verified uploads, chunked downloads.
//! - [`conn`]: bounds on connections (count, unauthenticated and idle time) of both ports.
//! - [`driver`]: the sans-IO driver (sessions, reports, leases → effects) and its shell.
//! - [`graph`]: the task graph of a sweep (train tasks, heatmap chunks) with stable keys.
//! - [`grpc`]: the thin tonic shell (proto ↔ domain conversion, errors to `Status`).
//! - [`identity`]: may a run directory go on with the spec given now (pure).
//! - [`http`]: `/metrics` (Prometheus), `/api/status` (JSON) and the dashboard page.
//! - [`kinds`]: one room per task kind (plan, inputs, result checks, checkpoints, history).
//! - [`lock`]: one run per directory (an OS lock on `freqsweep.lock`).
//! - [`merge`]: heatmap chunks into maps, metric points into curves and confusion matrices.
//! - [`report`]: result files, figures and `report.html` rendered from the store.
//! - [`run`]: opening/resuming a run directory, serving until done, writing result files.
//! - [`search`]: which points run (`Strategy::Grid`) and points added while a sweep runs.
//! - [`scheduler`]: the sans-IO scheduler core (tasks, attempts, leases, workers; time is an input).
//! - [`secret`]: random tokens and keys (OS CSPRNG), constant-time comparison.
//! - [`snapshot`]: the one picture of progress behind `status`, `/metrics` and the dashboard.
//! - [`store`]: the durable SQLite store with group commit.
//! - [`tls`]: the certificate and key for gRPC and HTTPS.

pub mod artifacts;
pub mod conn;
pub mod driver;
pub mod graph;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod kinds;
pub mod live;
pub mod lock;
pub mod merge;
pub mod report;
pub mod run;
pub mod scheduler;
pub mod search;
pub mod secret;
pub mod slurm;
pub mod snapshot;
pub mod store;
pub mod tensorboard;
#[doc(hidden)]
pub mod testing;
pub mod tls;
