//! `freqsweep slurm submit`: the worker array script of `deploy/slurm/freqsweep-workers.sbatch`
//! filled in with a submission's values. Pure: the command (`main.rs`'s shell) writes the script
//! and calls `sbatch`.

use freqsweep_common::text::one_line;

/// The script every submission starts from (the file users can also `sbatch` by hand).
pub const WORKER_TEMPLATE: &str = include_str!("../../deploy/slurm/freqsweep-workers.sbatch");

/// What one submission sets.
#[derive(Clone, Debug, PartialEq)]
pub struct Submission {
    pub coordinator: String,
    pub workers: u32,
    pub partition: Option<String>,
    pub time: Option<String>,
    /// 0: CPU workers (no GPU requested).
    pub gpus_per_task: u32,
    pub cpus_per_task: Option<u32>,
    /// The token the workers present; `None` when the coordinator runs without one.
    pub token: Option<String>,
    /// The worker binary on the nodes (default: `freqsweep-worker` on their PATH).
    pub worker: Option<String>,
    /// More `#SBATCH` options, each `--name` or `--name=value` (`--account=…`, `--qos=…`); see
    /// `check_sbatch_arg` for what is refused.
    pub sbatch_args: Vec<String>,
}

/// SLURM's array indices are bounded by `MaxArraySize` (1001 by default, at most 4 000 001).
pub const MAX_WORKERS: u32 = 4_000_000;

/// The script for `submission`; `show_token` false writes a placeholder instead of the token
/// (what `--dry-run` prints).
pub fn worker_script(submission: &Submission, show_token: bool) -> Result<String, String> {
    check(submission)?;
    let mut out = String::with_capacity(WORKER_TEMPLATE.len() + 512);
    let mut seen = (false, false, false, false);
    let mut extra_written = false;
    let mut exports_written = false;
    let lines: Vec<&str> = WORKER_TEMPLATE.lines().collect();
    let last_sbatch =
        lines.iter().rposition(|l| l.starts_with("#SBATCH ")).ok_or("the template has no #SBATCH lines")?;
    for (i, line) in lines.iter().enumerate() {
        let option = line.strip_prefix("#SBATCH ");
        match option {
            Some(o) if o.starts_with("--array=") => {
                seen.0 = true;
                out.push_str(&format!("#SBATCH --array=0-{}\n", submission.workers - 1));
            }
            Some(o) if o.starts_with("--time=") => {
                seen.1 = true;
                let time = submission.time.as_deref().unwrap_or(&o["--time=".len()..]);
                out.push_str(&format!("#SBATCH --time={time}\n"));
            }
            Some(o) if o.starts_with("--gres=gpu:") => {
                seen.2 = true;
                if submission.gpus_per_task > 0 {
                    out.push_str(&format!("#SBATCH --gres=gpu:{}\n", submission.gpus_per_task));
                }
            }
            Some(o) if o.starts_with("--cpus-per-task=") => {
                seen.3 = true;
                let cpus = submission
                    .cpus_per_task
                    .map_or_else(|| o["--cpus-per-task=".len()..].to_string(), |c| c.to_string());
                out.push_str(&format!("#SBATCH --cpus-per-task={cpus}\n"));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
        if i == last_sbatch {
            if let Some(p) = &submission.partition {
                out.push_str(&format!("#SBATCH --partition={p}\n"));
            }
            for arg in &submission.sbatch_args {
                out.push_str(&format!("#SBATCH {arg}\n"));
            }
            extra_written = true;
        }
        if *line == "set -euo pipefail" {
            out.push_str(&exports(submission, show_token));
            exports_written = true;
        }
    }
    if seen != (true, true, true, true) || !extra_written || !exports_written {
        return Err(format!(
            "deploy/slurm/freqsweep-workers.sbatch lacks a line freqsweep slurm submit fills in \
             (array, time, gres, cpus-per-task, set -euo pipefail: {seen:?}, {exports_written})"
        ));
    }
    Ok(out)
}

fn exports(s: &Submission, show_token: bool) -> String {
    let mut block = String::from("\n# Set by `freqsweep slurm submit` (they override the submitting shell's).\n");
    block.push_str(&format!("export FREQSWEEP_COORDINATOR={}\n", shell_quote(&s.coordinator)));
    block.push_str("unset FREQSWEEP_COORDINATOR_FILE\n");
    match (&s.token, show_token) {
        (Some(token), true) => block.push_str(&format!("export FREQSWEEP_TOKEN={}\n", shell_quote(token))),
        (Some(token), false) => block.push_str(&format!(
            "export FREQSWEEP_TOKEN='<the {}-character token of $FREQSWEEP_TOKEN; not printed>'\n",
            token.chars().count()
        )),
        (None, _) => block.push_str("# no token: the coordinator accepts any worker that reaches it\n"),
    }
    if let Some(worker) = &s.worker {
        block.push_str(&format!("export FREQSWEEP_WORKER={}\n", shell_quote(worker)));
    }
    block
}

/// One-line reasons for values SLURM or the workers would trip over later.
fn check(s: &Submission) -> Result<(), String> {
    let url = s.coordinator.as_str();
    if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() <= "https://".len() {
        return Err(format!("--coordinator {url:?} must be an http:// or https:// URL (http://host:7070)"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("--coordinator {url:?} contains whitespace"));
    }
    if s.workers == 0 || s.workers > MAX_WORKERS {
        return Err(format!("--workers {} must be between 1 and {MAX_WORKERS}", s.workers));
    }
    if let Some(p) = &s.partition {
        if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || "_.-,".contains(c)) {
            return Err(format!(
                "--partition {p:?} is not a partition name (letters, digits, _ . - and , between names)"
            ));
        }
    }
    if let Some(t) = &s.time {
        if !is_slurm_time(t) {
            return Err(format!(
                "--time {t:?} is not a SLURM time limit (minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS or UNLIMITED)"
            ));
        }
    }
    if s.gpus_per_task > 64 {
        return Err(format!("--gpus-per-task {} is more than a node has (at most 64)", s.gpus_per_task));
    }
    if s.cpus_per_task == Some(0) {
        return Err("--cpus-per-task must be at least 1".into());
    }
    if let Some(token) = &s.token {
        if token.is_empty() || token.chars().any(|c| c.is_control()) {
            return Err("the token (FREQSWEEP_TOKEN) is empty or holds control characters".into());
        }
    }
    if let Some(w) = &s.worker {
        if w.is_empty() || w.chars().any(|c| c.is_control()) {
            return Err(format!("--worker-bin {w:?} is not a path"));
        }
    }
    for arg in &s.sbatch_args {
        check_sbatch_arg(arg)?;
    }
    Ok(())
}

/// The sbatch options `--sbatch-arg` may not give, and why: the script sets them itself, or a
/// flag of ours writes them after checking the value (a second `#SBATCH` line would override it
/// unchecked). `--gres` stays open: a typed GPU (`gpu:a100:1`) is a request `--gpus-per-task`
/// cannot write. A negation (`no-…`) is listed beside what it negates.
pub const RESERVED: &[(&str, &str)] = &[
    ("array", "the script sets --array itself, from --workers"),
    ("job-name", "the script sets --job-name itself"),
    ("ntasks", "the script sets --ntasks itself: one worker per array task"),
    ("output", "the script sets --output itself: one log per array task, appended across requeues"),
    ("open-mode", "the script sets --open-mode itself: a requeued task appends to its log"),
    ("signal", "the script sets --signal itself: the workers' drain depends on it"),
    ("requeue", "the script sets --requeue itself: a requeued task resumes from its checkpoint"),
    ("no-requeue", "the script sets --requeue itself: a requeued task resumes from its checkpoint"),
    ("wait", "sbatch would wait for the whole array to end"),
    ("partition", "use --partition, which checks the name"),
    ("time", "use --time, which checks the limit"),
    ("cpus-per-task", "use --cpus-per-task"),
];

/// One `--sbatch-arg`, written as one `#SBATCH` line: exactly one option, `--name` or
/// `--name=value`. sbatch reads such a line splitting at whitespace, taking quotes and
/// backslashes as quoting, cutting at `#` and splitting at `hetjob`/`packjob` anywhere: each of
/// those is refused, so the line is one option with its value verbatim. Other characters
/// (`; | & $ <`) are inert: bash reads the line as a comment and sbatch expands nothing in it
/// (`--constraint=a100|h100` needs `|`). Short options are refused rather than parsed (`-oa`,
/// `-a1-9`: getopt's clusters and attached values); sbatch takes any unambiguous prefix of a long
/// option (`--arr` is `--array`), so a name that begins a reserved one is refused too.
fn check_sbatch_arg(arg: &str) -> Result<(), String> {
    let shown = one_line(arg, 80);
    let (name, value) = match arg.strip_prefix("--").map(|rest| rest.split_once('=').unwrap_or((rest, ""))) {
        Some((name, value))
            if name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') =>
        {
            (name, value)
        }
        _ => {
            return Err(format!(
                "--sbatch-arg \"{shown}\" must be one sbatch option in its long form, --name or --name=value \
                 (--account=lab, not -A lab)"
            ))
        }
    };
    let special = arg.chars().find_map(|c| match c {
        c if c.is_whitespace() => Some("whitespace"),
        c if c.is_control() => Some("a control character"),
        '"' | '\'' => Some("a quote"),
        '\\' => Some("a backslash"),
        '#' => Some("a #"),
        _ => None,
    });
    if let Some(what) = special {
        return Err(format!(
            "--sbatch-arg \"{shown}\" holds {what}, where sbatch's #SBATCH reader splits, unquotes or cuts: \
             give one option per --sbatch-arg, its value unquoted"
        ));
    }
    let lower = arg.to_ascii_lowercase();
    if lower.contains("hetjob") || lower.contains("packjob") {
        return Err(format!(
            "--sbatch-arg \"{shown}\" holds hetjob or packjob, where sbatch splits an #SBATCH line into job components"
        ));
    }
    if arg.contains('=') && value.is_empty() {
        return Err(format!("--sbatch-arg \"{shown}\" has an empty value"));
    }
    if let Some((reserved, why)) = RESERVED.iter().find(|(r, _)| r.starts_with(name)) {
        if name == *reserved {
            return Err(format!("--sbatch-arg \"{shown}\": {why}"));
        }
        return Err(format!(
            "--sbatch-arg \"{shown}\": --{name} abbreviates --{reserved} (sbatch takes any unambiguous prefix \
             of an option); {why}"
        ));
    }
    Ok(())
}

/// How many characters of sbatch's output an error quotes.
pub const QUOTED_OUTPUT: usize = 300;

/// The job id `sbatch --parsable` printed, or why there is none, on one line. `status` is the
/// exit status in words. sbatch's output is untrusted text (a site's wrapper may print anything,
/// colour escapes included): it is quoted escaped and cut at [`QUOTED_OUTPUT`] characters.
pub fn sbatch_reply(success: bool, status: &str, stdout: &[u8], stderr: &[u8]) -> Result<String, String> {
    let quoted = |bytes: &[u8]| {
        // The bytes of QUOTED_OUTPUT characters at most (4 bytes each): a megabyte of noise is
        // neither decoded nor joined whole.
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4 * QUOTED_OUTPUT + 4)]);
        let text = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ");
        if text.is_empty() {
            "no message".to_string()
        } else {
            one_line(&text, QUOTED_OUTPUT)
        }
    };
    if !success {
        return Err(format!("sbatch refused the script ({status}): {}", quoted(stderr)));
    }
    // `--parsable` prints `jobid` or `jobid;cluster`, as its last line.
    let stdout_text = String::from_utf8_lossy(stdout);
    let last = stdout_text.lines().map(str::trim).rfind(|l| !l.is_empty()).unwrap_or("");
    let (job, cluster) = last.split_once(';').unwrap_or((last, ""));
    let word = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if job.is_empty() || !job.chars().all(|c| c.is_ascii_digit()) || !word(cluster) {
        return Err(format!("sbatch printed no job id (its output: {})", quoted(stdout)));
    }
    Ok(job.to_string())
}

/// What to say when sbatch ran past `--sbatch-timeout` and was killed.
pub fn sbatch_timed_out(secs: u64) -> String {
    format!(
        "sbatch did not finish within {secs} s and was killed (--sbatch-timeout SECS); the array may have \
         been submitted anyway: check squeue --me"
    )
}

/// SLURM's `--time` formats.
fn is_slurm_time(t: &str) -> bool {
    if ["UNLIMITED", "INFINITE", "unlimited", "infinite"].contains(&t) {
        return true;
    }
    let digits = |s: &str| !s.is_empty() && s.len() <= 6 && s.chars().all(|c| c.is_ascii_digit());
    let (days, rest) = match t.split_once('-') {
        Some((d, r)) => (Some(d), r),
        None => (None, t),
    };
    if days.is_some_and(|d| !digits(d)) {
        return false;
    }
    let parts: Vec<&str> = rest.split(':').collect();
    if !parts.iter().all(|p| digits(p)) {
        return false;
    }
    match (days.is_some(), parts.len()) {
        (false, 1..=3) => true, // minutes, MM:SS, HH:MM:SS
        (true, 1..=3) => true,  // D-HH, D-HH:MM, D-HH:MM:SS
        _ => false,
    }
}

/// `'…'` with embedded quotes closed, escaped and reopened: safe for any bytes but NUL.
pub fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r#"'\''"#))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission() -> Submission {
        Submission {
            coordinator: "http://node1:7070".into(),
            workers: 16,
            partition: Some("gpu".into()),
            time: Some("12:00:00".into()),
            gpus_per_task: 1,
            cpus_per_task: None,
            token: Some("s3cr3t'x".into()),
            worker: Some("/opt/freqsweep/bin/freqsweep-worker".into()),
            sbatch_args: vec!["--account=lab".into()],
        }
    }

    #[test]
    fn the_script_carries_the_submissions_values_and_the_template_rest() {
        let script = worker_script(&submission(), true).unwrap();
        for line in [
            "#SBATCH --array=0-15",
            "#SBATCH --time=12:00:00",
            "#SBATCH --gres=gpu:1",
            "#SBATCH --cpus-per-task=4",
            "#SBATCH --partition=gpu",
            "#SBATCH --account=lab",
            "#SBATCH --signal=B:TERM@120",
            "export FREQSWEEP_COORDINATOR='http://node1:7070'",
            r#"export FREQSWEEP_TOKEN='s3cr3t'\''x'"#,
            "export FREQSWEEP_WORKER='/opt/freqsweep/bin/freqsweep-worker'",
        ] {
            assert!(script.lines().any(|l| l == line), "{line} missing:\n{script}");
        }
        // Every #SBATCH line comes before the first command (sbatch stops reading at it).
        let first_command = script.lines().position(|l| l == "set -euo pipefail").unwrap();
        assert!(script.lines().skip(first_command).all(|l| !l.starts_with("#SBATCH")));
        assert_eq!(script.lines().filter(|l| l.starts_with("#SBATCH --array")).count(), 1);
        assert!(script.ends_with("\"${extra[@]}\"\n"), "the worker exec stays last");
    }

    #[test]
    fn a_dry_run_hides_the_token_and_cpu_workers_request_no_gpu() {
        let mut s = submission();
        s.gpus_per_task = 0;
        s.cpus_per_task = Some(2);
        let script = worker_script(&s, false).unwrap();
        assert!(!script.contains("s3cr3t"), "{script}");
        assert!(script.contains("<the 8-character token of $FREQSWEEP_TOKEN; not printed>"));
        assert!(!script.contains("--gres"), "{script}");
        assert!(script.contains("#SBATCH --cpus-per-task=2\n"));
        s.token = None;
        assert!(worker_script(&s, true).unwrap().contains("# no token"));
    }

    /// The script the user gets is valid bash (bash -n parses without running).
    #[test]
    fn the_script_parses_as_bash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.sbatch");
        std::fs::write(&path, worker_script(&submission(), true).unwrap()).unwrap();
        let out = std::process::Command::new("bash").arg("-n").arg(&path).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    #[test]
    fn values_slurm_or_the_workers_would_refuse_are_named() {
        type Change = Box<dyn Fn(&mut Submission)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.coordinator = "node1:7070".into()), "must be an http:// or https:// URL"),
            (Box::new(|s| s.coordinator = "http://a b".into()), "contains whitespace"),
            (Box::new(|s| s.workers = 0), "--workers 0 must be between 1"),
            (Box::new(|s| s.workers = 5_000_000), "must be between 1 and 4000000"),
            (Box::new(|s| s.partition = Some("gpu;rm -rf".into())), "is not a partition name"),
            (Box::new(|s| s.time = Some("12h".into())), "is not a SLURM time limit"),
            (Box::new(|s| s.time = Some("1-2-3".into())), "is not a SLURM time limit"),
            (Box::new(|s| s.gpus_per_task = 1000), "more than a node has"),
            (Box::new(|s| s.cpus_per_task = Some(0)), "at least 1"),
            (Box::new(|s| s.token = Some("a\nb".into())), "control characters"),
            (Box::new(|s| s.sbatch_args = vec!["--account=x\n#SBATCH --array=0".into()]), "holds whitespace"),
            (Box::new(|s| s.sbatch_args = vec!["-A lab".into()]), "must be one sbatch option"),
            (Box::new(|s| s.sbatch_args = vec!["--signal=KILL".into()]), "sets --signal itself"),
        ];
        for (change, expected) in cases {
            let mut s = submission();
            change(&mut s);
            let err = worker_script(&s, true).unwrap_err();
            assert!(err.contains(expected), "{err} (expected {expected:?})");
            assert!(!err.contains('\n'), "one line: {err}");
        }
        for ok in ["30", "30:00", "12:00:00", "2-00", "2-12:30", "1-00:00:00", "UNLIMITED"] {
            assert!(is_slurm_time(ok), "{ok}");
        }
    }

    /// Each way one `--sbatch-arg` could set an option the script sets itself, or a value no
    /// check saw: two options in one argument, sbatch's abbreviations, short options, a
    /// negation, a partition around `--partition`'s check, the characters sbatch's `#SBATCH`
    /// reader splits or quotes at.
    #[test]
    fn an_sbatch_arg_cannot_set_what_the_script_or_a_flag_sets() {
        let refused = [
            ("--mem=4G --array=1-9", "whitespace"),
            ("--mem=4G\t--array=1-9", "whitespace"),
            ("--comment=\"a b\"", "a quote"),
            ("--comment=a\\ --array=1", "a backslash"),
            ("--comment=x#y", "#"),
            ("--comment=x\u{a0}y", "whitespace"),
            ("--comment=HetJob", "hetjob"),
            ("--arr=1-9", "--arr abbreviates --array"),
            ("--ar=1-9", "--ar abbreviates --array"),
            ("--outp=/tmp/x", "--outp abbreviates --output"),
            ("--sig=KILL", "--sig abbreviates --signal"),
            ("--open=truncate", "--open abbreviates --open-mode"),
            ("--job=x", "--job abbreviates --job-name"),
            ("--no-requeue", "sets --requeue itself"),
            ("--no-req", "--no-req abbreviates --no-requeue"),
            ("--requeue", "sets --requeue itself"),
            ("--wait", "sbatch would wait"),
            ("-a", "long form"),
            ("-a1-9", "long form"),
            ("-o/tmp/x", "long form"),
            ("-e", "long form"),
            ("--partition=x;y", "use --partition"),
            ("--part=gpu", "use --partition"),
            ("--time=5", "use --time"),
            ("--cpus-per-task=8", "use --cpus-per-task"),
            ("--account=", "empty value"),
            ("--", "long form"),
            ("--=x", "long form"),
            ("--Array=1", "long form"),
        ];
        for (arg, expected) in refused {
            let mut s = submission();
            s.sbatch_args = vec![arg.into()];
            let err = worker_script(&s, true).unwrap_err();
            assert!(err.contains(expected), "{arg:?}: {err} (expected {expected:?})");
            assert!(!err.contains('\n') && err.len() < 400, "one line: {err}");
        }
        // What sbatch reads as another option, or a typed GPU the flag cannot write, passes.
        for ok in [
            "--account=lab",
            "--qos=long",
            "--constraint=a100|h100",
            "--nodelist=node[01-04]",
            "--ntasks-per-node=1",
            "--time-min=30",
            "--wait-all-nodes=1",
            "--cpus-per-gpu=8",
            "--gres=gpu:a100:1",
            "--error=w-%A_%a.err",
            "--exclusive",
            "--comment=café",
        ] {
            let mut s = submission();
            s.sbatch_args = vec![ok.into()];
            let script = worker_script(&s, true).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(script.contains(&format!("#SBATCH {ok}\n")), "{ok}");
        }
    }

    /// Every option the template sets is out of `--sbatch-arg`'s reach, but `--gres` (a typed GPU,
    /// `gpu:a100:1`, is a request `--gpus-per-task` cannot write).
    #[test]
    fn every_option_the_template_sets_is_reserved() {
        for line in WORKER_TEMPLATE.lines().filter_map(|l| l.strip_prefix("#SBATCH --")) {
            let name = line.split('=').next().unwrap();
            assert!(
                name == "gres" || RESERVED.iter().any(|(r, _)| *r == name),
                "the template sets --{name}: add it to RESERVED"
            );
        }
    }

    /// A noisy sbatch (megabytes of terminal escapes on one line) is quoted bounded and escaped; a
    /// job id is only what `--parsable` prints.
    #[test]
    fn sbatch_replies_are_quoted_on_one_bounded_line() {
        let noise = "\u{1b}[31mERROR\u{1b}[0m \u{1b}[2J".repeat(200_000);
        let err = sbatch_reply(false, "exit status: 1", b"", noise.as_bytes()).unwrap_err();
        assert!(err.len() < 2 * QUOTED_OUTPUT, "{} bytes", err.len());
        assert!(!err.contains('\u{1b}') && !err.contains('\n'), "{err}");
        assert!(err.starts_with("sbatch refused the script (exit status: 1): \\u{1b}[31mERROR"), "{err}");
        let err = sbatch_reply(true, "exit status: 0", noise.as_bytes(), b"").unwrap_err();
        assert!(err.starts_with("sbatch printed no job id") && err.len() < 2 * QUOTED_OUTPUT, "{err}");
        assert!(!err.contains('\u{1b}'), "{err}");
        let err = sbatch_reply(false, "exit status: 1", b"", b"  \n").unwrap_err();
        assert!(err.ends_with("no message"), "{err}");
        assert_eq!(sbatch_reply(true, "", b"4242\n", b"").unwrap(), "4242");
        assert_eq!(sbatch_reply(true, "", b"4242;cluster2\n", b"").unwrap(), "4242");
        assert_eq!(sbatch_reply(true, "", b"note\n4242\n", b"").unwrap(), "4242");
        assert!(sbatch_reply(true, "", b"", b"").is_err());
        assert!(sbatch_reply(true, "", b"42x\n", b"").is_err());
    }

    #[test]
    fn quoting_survives_any_text() {
        assert_eq!(shell_quote("a'b"), r#"'a'\''b'"#);
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("printf %s {}", shell_quote("x'$(id)`y\" z")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x'$(id)`y\" z");
    }
}
