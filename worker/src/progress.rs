//! Progress for long work: a bar on a terminal (indicatif), a log line every few seconds
//! otherwise (batch jobs, CI, `--log-format json`), so a SLURM log shows the run moving.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    label: String,
    total: u64,
    bar: Option<ProgressBar>,
    last_log: Instant,
    started: Instant,
}

/// How often a non-terminal progress line is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    pub fn new(label: &str, total: u64, unit: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            let template = format!("{label} [{{bar:40}}] {{pos}}/{{len}} {unit} ({{per_sec}}, eta {{eta}})");
            bar.set_style(ProgressStyle::with_template(&template).expect("valid template").progress_chars("=> "));
            bar
        });
        let now = Instant::now();
        Progress { label: label.to_string(), total, bar, last_log: now, started: now }
    }

    pub fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        } else if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
            tracing::info!(task = %self.label, done, total = self.total, per_second = rate.round(), "progress");
        }
    }

    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
