//! What this machine can hold: the bounds on thread and process counts the binaries accept
//! (`freqsweep-worker --threads`, `freqsweep run --local-workers/--worker-threads`). A count
//! beyond them is a typo or a misunderstanding, not a request anyone means: `--threads 100000`
//! made 3 725 threads and 31 GB of virtual memory and never registered, `--local-workers 500`
//! started 412 processes that took 16 GB and made no progress. Each is refused with one line
//! that names the flag, the value and the machine's limit.
//!
//! The rules (the flags' help texts say the same):
//! - libtorch threads of one process: at most 4 × cores, and at most [`MAX_THREADS`];
//! - local worker processes: at most [`THREADS_PER_CORE`] per core (a few more workers than
//!   cores, each on one thread, is a fair way to fill a machine and what the tests do on two
//!   cores), and at most one per [`WORKER_MEMORY`] of the memory available now (at least one
//!   is always allowed);
//! - threads per local worker × local workers: at most 4 × cores.
//!
//! The checks are pure functions of a [`Machine`], so they are tested without the machine's
//! own numbers.

use crate::files::bytes_text;

/// The most libtorch threads one process may ask for, whatever the machine (libtorch's own
/// pools stop scaling long before this).
pub const MAX_THREADS: usize = 1024;

/// Threads per core a process (or all local workers together) may run: oversubscription beyond
/// this only adds context switches.
pub const THREADS_PER_CORE: usize = 4;

/// Memory one local worker needs, about: libtorch, a dataset, a model and its activations (a
/// tiny CNN on Syn_d takes about 300 MB resident).
pub const WORKER_MEMORY: u64 = 512 << 20;

/// The machine's cores and available memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Machine {
    pub cores: usize,
    /// `MemAvailable` of `/proc/meminfo` in bytes (`None` where it cannot be read: no bound
    /// from memory then).
    pub mem_available: Option<u64>,
}

impl Machine {
    /// This machine now: `std::thread::available_parallelism` (which honours CPU affinity and
    /// cgroup quotas, so a SLURM allocation counts its own cores) and `/proc/meminfo`.
    pub fn this() -> Machine {
        Machine {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_available: std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| mem_available(&t)),
        }
    }

    /// The most libtorch threads one process may use here.
    pub fn max_threads(&self) -> usize {
        self.cores.saturating_mul(THREADS_PER_CORE).clamp(1, MAX_THREADS)
    }

    /// The most local worker processes this machine can run.
    pub fn max_local_workers(&self) -> usize {
        let by_memory = self.mem_available.map_or(usize::MAX, |m| (m / WORKER_MEMORY) as usize);
        self.cores.saturating_mul(THREADS_PER_CORE).min(by_memory).max(1)
    }

    /// `--threads` (`flag`) of one process: between 1 and [`Machine::max_threads`].
    pub fn check_threads(&self, flag: &str, threads: usize) -> Result<(), String> {
        let max = self.max_threads();
        if threads == 0 {
            return Err(format!("{flag} 0: give at least 1 thread"));
        }
        if threads > max {
            return Err(format!(
                "{flag} {threads}: this machine has {} cores, so at most {max} threads ({THREADS_PER_CORE} per core, at most {MAX_THREADS})",
                self.cores
            ));
        }
        Ok(())
    }

    /// `--local-workers` and, when given, `--worker-threads`: between 1 and
    /// [`Machine::max_local_workers`] workers, and at most `THREADS_PER_CORE` × cores threads
    /// in all.
    pub fn check_local_workers(&self, workers: usize, threads: Option<usize>) -> Result<(), String> {
        if workers == 0 {
            return Err("--local-workers 0: give at least 1".into());
        }
        let max = self.max_local_workers();
        if workers > max {
            let memory = match self.mem_available {
                Some(m) => format!(
                    " and {} of memory available (one worker needs about {})",
                    bytes_text(round_mib(m)),
                    bytes_text(WORKER_MEMORY)
                ),
                None => String::new(),
            };
            return Err(format!(
                "--local-workers {workers}: this machine has {} cores{memory}, so at most {max} local workers",
                self.cores
            ));
        }
        if let Some(threads) = threads {
            self.check_threads("--worker-threads", threads)?;
            let all = self.cores.saturating_mul(THREADS_PER_CORE);
            if threads.saturating_mul(workers) > all {
                return Err(format!(
                    "--worker-threads {threads} × --local-workers {workers} = {} threads: this machine has {} cores, so at most {all} threads in all ({THREADS_PER_CORE} per core)",
                    threads.saturating_mul(workers),
                    self.cores
                ));
            }
        }
        Ok(())
    }
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib: u64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// Down to whole MiB, so the message says `3072 MiB`, not `3221225472 bytes`.
fn round_mib(bytes: u64) -> u64 {
    bytes / (1 << 20) * (1 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn threads_are_bounded_by_cores_and_an_absolute_cap() {
        let small = Machine { cores: 2, mem_available: Some(8 * GIB) };
        assert_eq!(small.max_threads(), 8);
        small.check_threads("--threads", 8).unwrap();
        let err = small.check_threads("--threads", 100_000).unwrap_err();
        assert_eq!(err, "--threads 100000: this machine has 2 cores, so at most 8 threads (4 per core, at most 1024)");
        assert!(small.check_threads("--threads", 0).unwrap_err().contains("at least 1"));
        let big = Machine { cores: 512, mem_available: None };
        assert_eq!(big.max_threads(), MAX_THREADS);
    }

    #[test]
    fn local_workers_are_bounded_by_cores_memory_and_threads_in_all() {
        let m = Machine { cores: 16, mem_available: Some(3 * GIB) };
        assert_eq!(m.max_local_workers(), 6, "3 GiB / 512 MiB");
        let two = Machine { cores: 2, mem_available: Some(24 * GIB) };
        assert_eq!(two.max_local_workers(), 8, "4 per core");
        two.check_local_workers(3, Some(1)).expect("3 one-thread workers on 2 cores");
        m.check_local_workers(6, None).unwrap();
        let err = m.check_local_workers(500, None).unwrap_err();
        assert_eq!(
            err,
            "--local-workers 500: this machine has 16 cores and 3 GiB of memory available (one worker needs about 512 MiB), so at most 6 local workers"
        );
        assert!(m.check_local_workers(0, None).is_err());
        // One worker is allowed even when memory is short.
        Machine { cores: 4, mem_available: Some(100 << 20) }.check_local_workers(1, None).unwrap();
        // Threads: each within the per-process bound, and all of them within 4 × cores.
        m.check_local_workers(4, Some(16)).unwrap();
        let err = m.check_local_workers(4, Some(17)).unwrap_err();
        assert!(
            err.starts_with("--worker-threads 17 × --local-workers 4 = 68 threads") && err.contains("at most 64"),
            "{err}"
        );
        let err = m.check_local_workers(1, Some(100_000)).unwrap_err();
        assert!(err.starts_with("--worker-threads 100000: "), "{err}");
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let text = "MemTotal:       16316412 kB\nMemFree:         1034604 kB\nMemAvailable:    9422360 kB\n";
        assert_eq!(mem_available(text), Some(9_422_360 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert!(Machine::this().cores >= 1);
    }
}
