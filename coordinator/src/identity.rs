//! Run identity: may a run directory that already holds a sweep go on with the spec it is given
//! now? Pure: the stored spec, its recorded inputs and tasks in, a verdict out.
//!
//! The rule: resume only when every planned task is, key for key and setting for setting, a
//! task the store holds (the task descriptions a worker receives decide every result, so two
//! equal descriptions compute the same thing). Anything else is refused with one line naming
//! the first changed spec key (old and new value) or the input file that changed, because
//! resuming would keep results computed under the old settings beside new ones — a map merged
//! from chunks on 64 and on 32 images — or silently keep the old results for the new spec.
//! Keys that change no task (the sweep's `name`, `[bands] tolerance`, which the report applies)
//! resume, and the new spec becomes the stored one.

use freqsweep_common::spec::SpecInputs;
use freqsweep_common::task::TaskSpec;
use freqsweep_common::text::one_line;
use std::collections::HashMap;
use toml::Value;

/// A task as the store holds it.
pub struct StoredTask<'a> {
    pub id: u64,
    pub key: &'a str,
    pub spec_json: &'a str,
}

/// A task as the spec given now plans it.
pub struct PlannedTask<'a> {
    pub id: u64,
    pub key: &'a str,
    pub spec: &'a TaskSpec,
}

/// What the stored run was opened with.
pub struct Recorded<'a> {
    pub spec_toml: &'a str,
    /// `None` for a store made before inputs were recorded.
    pub inputs: Option<&'a SpecInputs>,
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Same tasks; `changed` names the first spec key that differs without changing a task.
    Resume { changed: Option<String> },
    /// Another sweep: why, in one line (without the way out, which the caller adds).
    Refuse(String),
}

/// Compare what the store holds with what the spec plans now.
pub fn compare(
    recorded: &Recorded<'_>,
    stored: &[StoredTask<'_>],
    spec_toml: &str,
    inputs: &SpecInputs,
    planned: &[PlannedTask<'_>],
) -> Verdict {
    let key_change = first_key_change(recorded.spec_toml, spec_toml);
    let task_change = first_task_change(stored, planned);
    match task_change {
        None => Verdict::Resume { changed: key_change },
        Some(task) => {
            let input = recorded.inputs.and_then(|old| first_input_change(old, inputs));
            let why = match (key_change, input) {
                (Some(key), _) => key,
                (None, Some(input)) => input,
                (None, None) => task,
            };
            Verdict::Refuse(why)
        }
    }
}

/// The first planned task that the store does not hold as it is planned now, described.
fn first_task_change(stored: &[StoredTask<'_>], planned: &[PlannedTask<'_>]) -> Option<String> {
    let by_key: HashMap<&str, &StoredTask<'_>> = stored.iter().map(|t| (t.key, t)).collect();
    for task in planned {
        let Some(old) = by_key.get(task.key) else {
            return Some(format!("it plans task {} that the run does not hold", one_line(task.key, 160)));
        };
        if old.id != task.id {
            return Some(format!("task {} moved in the plan (id {} was {})", one_line(task.key, 160), task.id, old.id));
        }
        // Compared as task descriptions, not as text: a store written by an older release
        // lacks fields added since with their defaults, which describe the same task.
        match serde_json::from_str::<TaskSpec>(old.spec_json).map(|spec| spec.with_fields_added_since(task.spec)) {
            Ok(spec) if &spec == task.spec => {}
            Ok(spec) => {
                let old = serde_json::to_value(&spec).unwrap_or_default();
                let new = serde_json::to_value(task.spec).unwrap_or_default();
                let at = first_json_change("", &old, &new).unwrap_or_default();
                return Some(format!("task {} changed: {at}", one_line(task.key, 160)));
            }
            Err(e) => {
                return Some(format!(
                    "the stored task {} cannot be read ({})",
                    one_line(task.key, 160),
                    one_line(&e.to_string(), 160)
                ))
            }
        }
    }
    if stored.len() != planned.len() {
        let planned_keys: std::collections::HashSet<&str> = planned.iter().map(|t| t.key).collect();
        let gone = stored.iter().find(|t| !planned_keys.contains(t.key)).map_or("", |t| t.key);
        return Some(format!("it no longer plans task {} that the run holds", one_line(gone, 160)));
    }
    None
}

fn first_json_change(path: &str, old: &serde_json::Value, new: &serde_json::Value) -> Option<String> {
    use serde_json::Value as J;
    if old == new {
        return None;
    }
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match (old, new) {
        (J::Object(a), J::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter()
                .find_map(|k| first_json_change(&join(k), a.get(k).unwrap_or(&J::Null), b.get(k).unwrap_or(&J::Null)))
        }
        (J::Array(a), J::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (x, y))| first_json_change(&join(&i.to_string()), x, y))
        }
        _ => Some(format!("{path} = {} (was {})", short(&new.to_string()), short(&old.to_string()))),
    }
}

/// The first spec key whose value differs, as `[heatmap] images = 32 (was 64)`, with a count of
/// the others; `None` when both parse to the same TOML (comments, spacing and order aside).
pub fn first_key_change(old: &str, new: &str) -> Option<String> {
    let (Ok(old), Ok(new)) = (old.parse::<toml::Table>(), new.parse::<toml::Table>()) else {
        return (old != new).then(|| "the stored spec is not TOML any more".to_string());
    };
    let mut changes = Vec::new();
    diff_tables(&[], &old, &new, &mut changes);
    let first = changes.first()?;
    let more = match changes.len() - 1 {
        0 => String::new(),
        1 => " (and 1 more changed key)".to_string(),
        n => format!(" (and {n} more changed keys)"),
    };
    Some(format!("{first}{more}"))
}

fn diff_tables(path: &[String], old: &toml::Table, new: &toml::Table, out: &mut Vec<String>) {
    let mut keys: Vec<&String> = old.keys().chain(new.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let mut here = path.to_vec();
        here.push(key.clone());
        diff_values(&here, old.get(key), new.get(key), out);
    }
}

fn diff_values(path: &[String], old: Option<&Value>, new: Option<&Value>, out: &mut Vec<String>) {
    match (old, new) {
        (Some(Value::Table(a)), Some(Value::Table(b))) => diff_tables(path, a, b, out),
        // Arrays of tables (`[[dataset]]`, `[[model]]`) entry by entry when their count agrees.
        (Some(Value::Array(a)), Some(Value::Array(b)))
            if a.len() == b.len() && a.iter().chain(b).all(|v| matches!(v, Value::Table(_))) =>
        {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let mut here = path.to_vec();
                let last = here.pop().unwrap_or_default();
                here.push(if a.len() > 1 { format!("{last} #{}", i + 1) } else { last });
                if let (Value::Table(x), Value::Table(y)) = (x, y) {
                    diff_tables(&here, x, y, out);
                }
            }
        }
        (a, b) if a == b => {}
        (a, b) => {
            let shown = |v: Option<&Value>| v.map_or_else(|| "unset".to_string(), |v| short(&v.to_string()));
            let name = key_name(path);
            out.push(match b {
                Some(_) => format!("{name} = {} (was {})", shown(b), shown(a)),
                None => format!("{name} removed (was {})", shown(a)),
            });
        }
    }
}

/// `[heatmap] images`, `[[dataset]] #2 train`, `name`.
fn key_name(path: &[String]) -> String {
    match path {
        [] => String::new(),
        [key] => key.clone(),
        [table @ .., key] => format!("[{}] {key}", table.join(".")),
    }
}

/// The first input the spec reads from the file system that answers otherwise now.
fn first_input_change(old: &SpecInputs, new: &SpecInputs) -> Option<String> {
    for (pattern, files) in &new.globs {
        match old.globs.get(pattern) {
            Some(was) if was == files => {}
            Some(was) => {
                let added = files.iter().find(|f| !was.contains(f));
                let gone = was.iter().find(|f| !files.contains(f));
                let what = match (added, gone) {
                    (Some(f), _) => format!("now also matches {}", one_line(f, 160)),
                    (None, Some(f)) => format!("no longer matches {}", one_line(f, 160)),
                    (None, None) => "matches in another order".into(),
                };
                return Some(format!(
                    "glob {:?} {what} ({} files now, {} when the run started)",
                    one_line(pattern, 160),
                    files.len(),
                    was.len()
                ));
            }
            None => {}
        }
    }
    for (dir, classes) in &new.folder_classes {
        if let Some(was) = old.folder_classes.get(dir).filter(|was| *was != classes) {
            return Some(format!(
                "image folder {} now has classes {} ({} when the run started)",
                one_line(dir, 160),
                short(&format!("{classes:?}")),
                short(&format!("{was:?}"))
            ));
        }
    }
    for (now, then) in [(&new.npy_sizes, &old.npy_sizes), (&new.idx_sizes, &old.idx_sizes)] {
        for (file, size) in now {
            if let Some(was) = then.get(file).filter(|was| *was != size) {
                return Some(format!(
                    "{} now holds {} × {} images ({} × {} when the run started)",
                    one_line(file, 160),
                    size[0],
                    size[1],
                    was[0],
                    was[1]
                ));
            }
        }
    }
    None
}

fn short(text: &str) -> String {
    one_line(text, 80)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "name = \"s\"\n[[dataset]]\nkind = \"syn\"\nband = 1\ntrain = 32\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n[heatmap]\neps = 4\nimages = 64\n";

    #[test]
    fn the_first_changed_key_is_named_with_both_values() {
        assert_eq!(first_key_change(SPEC, SPEC), None);
        let reformatted = SPEC.replace("lr = 0.1", "lr   =   0.1 # the same");
        assert_eq!(first_key_change(SPEC, &reformatted), None, "comments and spacing are no change");
        let images = SPEC.replace("images = 64", "images = 32");
        assert_eq!(first_key_change(SPEC, &images).as_deref(), Some("[heatmap] images = 32 (was 64)"));
        let two = images.replace("train = 32", "train = 48");
        assert_eq!(
            first_key_change(SPEC, &two).as_deref(),
            Some("[dataset] train = 48 (was 32) (and 1 more changed key)")
        );
        let added = SPEC.replace("lr = 0.1", "lr = 0.1\nbeta1 = 0.8");
        assert_eq!(first_key_change(SPEC, &added).as_deref(), Some("[train] beta1 = 0.8 (was unset)"));
        let removed = SPEC.replace("images = 64\n", "");
        assert_eq!(first_key_change(SPEC, &removed).as_deref(), Some("[heatmap] images removed (was 64)"));
        let a = "name = \"s\"\n[[dataset]]\nkind = \"syn\"\nband = 1\n[[dataset]]\nkind = \"syn\"\nband = 2\n";
        let b = a.replace("band = 2", "band = 3");
        assert_eq!(first_key_change(a, &b).as_deref(), Some("[dataset #2] band = 3 (was 2)"));
    }

    fn train(lr: f64) -> TaskSpec {
        let text = SPEC.replace("lr = 0.1", &format!("lr = {lr}"));
        let sweep = freqsweep_common::spec::parse(&text, "s.toml").unwrap();
        TaskSpec::Train(sweep.points[0].task.clone())
    }

    #[test]
    fn equal_tasks_resume_and_a_changed_task_is_refused_naming_the_key() {
        let spec = train(0.1);
        let json = serde_json::to_string(&spec).unwrap();
        let stored = [StoredTask { id: 1, key: "train/a", spec_json: &json }];
        let planned = [PlannedTask { id: 1, key: "train/a", spec: &spec }];
        let inputs = SpecInputs::default();
        let recorded = Recorded { spec_toml: SPEC, inputs: Some(&inputs) };
        assert_eq!(compare(&recorded, &stored, SPEC, &inputs, &planned), Verdict::Resume { changed: None });
        let renamed = SPEC.replace("name = \"s\"", "name = \"t\"");
        assert_eq!(
            compare(&recorded, &stored, &renamed, &inputs, &planned),
            Verdict::Resume { changed: Some("name = \"t\" (was \"s\")".into()) }
        );
        let other = train(0.2);
        let planned = [PlannedTask { id: 1, key: "train/a", spec: &other }];
        let new_text = SPEC.replace("lr = 0.1", "lr = 0.2");
        assert_eq!(
            compare(&recorded, &stored, &new_text, &inputs, &planned),
            Verdict::Refuse("[train] lr = 0.2 (was 0.1)".into())
        );
        // The same text, but an input changed under it: the task names the difference.
        match compare(&recorded, &stored, SPEC, &inputs, &planned) {
            Verdict::Refuse(why) => assert!(why.starts_with("task train/a changed: train.lr = 0.2 (was 0.1)"), "{why}"),
            v => panic!("{v:?}"),
        }
        let missing = [PlannedTask { id: 2, key: "train/b", spec: &spec }];
        match compare(&recorded, &stored, SPEC, &inputs, &missing) {
            Verdict::Refuse(why) => assert!(why.contains("plans task train/b that the run does not hold"), "{why}"),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn a_changed_input_is_named_when_the_text_is_the_same() {
        let spec = train(0.1);
        let other = train(0.2);
        let json = serde_json::to_string(&spec).unwrap();
        let stored = [StoredTask { id: 1, key: "train/a", spec_json: &json }];
        let planned = [PlannedTask { id: 1, key: "train/a", spec: &other }];
        let mut old = SpecInputs::default();
        old.globs.insert("zoo/*.pt".into(), vec!["zoo/a.pt".into()]);
        old.folder_classes.insert("f/train".into(), vec!["ant".into()]);
        let mut new = old.clone();
        new.globs.insert("zoo/*.pt".into(), vec!["zoo/a.pt".into(), "zoo/b.pt".into()]);
        let recorded = Recorded { spec_toml: SPEC, inputs: Some(&old) };
        assert_eq!(
            compare(&recorded, &stored, SPEC, &new, &planned),
            Verdict::Refuse("glob \"zoo/*.pt\" now also matches zoo/b.pt (2 files now, 1 when the run started)".into())
        );
        let mut renamed = old.clone();
        renamed.folder_classes.insert("f/train".into(), vec!["bee".into()]);
        match compare(&recorded, &stored, SPEC, &renamed, &planned) {
            Verdict::Refuse(why) => assert!(why.starts_with("image folder f/train now has classes [\"bee\"]"), "{why}"),
            v => panic!("{v:?}"),
        }
    }
}
