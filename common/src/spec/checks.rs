//! Value checks: each returns the typed value or a message naming the key.

use super::*;

// Value checks: each returns the typed value or a message naming the key.

/// A spec value as a message quotes it: numbers as labels show them, strings and arrays
/// on one line and cut (a 5 MB string must not become a 5 MB error).
pub(crate) fn show(v: &Value) -> String {
    match v {
        // As written (`-1.0`), unless that is long (`1.7e308` is 309 digits).
        Value::Float(f) if v.to_string().len() > 16 => format!("{f:e}"),
        Value::String(s) => format!("\"{}\"", one_line(s, 60)),
        Value::Array(items) => {
            let shown: Vec<String> = items.iter().take(8).map(show).collect();
            let more = if items.len() > 8 { format!(", … {} in all", items.len()) } else { String::new() };
            format!("[{}{more}]", shown.join(", "))
        }
        _ => one_line(&v.to_string(), 60),
    }
}

pub(crate) fn integer(key: &str, v: &Value, min: i64, what: &str) -> Result<u64, String> {
    match v {
        Value::Integer(n) if *n >= min => Ok(*n as u64),
        _ => Err(format!("{key} must be {what}, got {}", show(v))),
    }
}

pub(crate) fn positive_int(key: &str, v: &Value) -> Result<u64, String> {
    integer(key, v, 1, "a positive integer")
}

pub(crate) fn non_negative_int(key: &str, v: &Value) -> Result<u64, String> {
    integer(key, v, 0, "a non-negative integer")
}

pub(crate) fn positive_usize(key: &str, v: &Value) -> Result<usize, String> {
    positive_int(key, v).and_then(|n| usize::try_from(n).map_err(|_| format!("{key} is too large: {n}")))
}

pub(crate) fn non_negative_usize(key: &str, v: &Value) -> Result<usize, String> {
    non_negative_int(key, v).and_then(|n| usize::try_from(n).map_err(|_| format!("{key} is too large: {n}")))
}

/// A positive (`min` 1) or non-negative (`min` 0) integer of at most `max`; `why` says what the
/// bound protects (shown in the error).
pub(crate) fn bounded(key: &str, v: &Value, min: u64, max: u64, why: &str) -> Result<usize, String> {
    let at_least = format!("an integer of at least {min}");
    let what = match min {
        0 => "a non-negative integer",
        1 => "a positive integer",
        _ => &at_least,
    };
    let n = integer(key, v, min as i64, what)?;
    if n > max {
        return Err(format!("{key} must be at most {max} ({why}), got {n}"));
    }
    Ok(n as usize)
}

pub(crate) fn small_positive(key: &str, v: &Value) -> Result<u32, String> {
    positive_int(key, v).and_then(|n| u32::try_from(n).map_err(|_| format!("{key} is too large: {n}")))
}

pub(crate) fn small_non_negative(key: &str, v: &Value) -> Result<u32, String> {
    non_negative_int(key, v).and_then(|n| u32::try_from(n).map_err(|_| format!("{key} is too large: {n}")))
}

/// A finite number (integers allowed) for which `ok` holds; `what` describes the allowed range.
pub(crate) fn number(key: &str, v: &Value, ok: impl Fn(f64) -> bool, what: &str) -> Result<f64, String> {
    let x = match v {
        Value::Integer(n) => *n as f64,
        Value::Float(f) => *f,
        _ => return Err(format!("{key} must be {what}, got {}", show(v))),
    };
    if x.is_finite() && ok(x) {
        Ok(x)
    } else {
        Err(format!("{key} must be {what}, got {}", show(v)))
    }
}

pub(crate) fn positive_number(key: &str, v: &Value) -> Result<f64, String> {
    number(key, v, |x| x > 0.0, "a positive number")
}

pub(crate) fn non_negative_number(key: &str, v: &Value) -> Result<f64, String> {
    number(key, v, |x| x >= 0.0, "a number >= 0")
}

pub(crate) fn unit_interval(key: &str, v: &Value) -> Result<f64, String> {
    number(key, v, |x| (0.0..1.0).contains(&x), "in [0, 1)")
}

pub(crate) fn string(key: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(format!("{key} must be a string, got {}", show(v))),
    }
}

pub(crate) fn boolean(key: &str, v: &Value) -> Result<bool, String> {
    match v {
        Value::Boolean(b) => Ok(*b),
        _ => Err(format!("{key} must be true or false, got {}", show(v))),
    }
}

/// `a, b or c`.
pub(crate) fn alternatives(options: &[&str]) -> String {
    match options {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

pub(crate) fn choice(key: &str, v: &Value, options: &[&str]) -> Result<String, String> {
    let s = string(key, v)?;
    if options.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(format!("unknown {key} {s:?}: use {}", alternatives(options)))
    }
}

pub(crate) fn check_precision(v: &Value) -> Result<Precision, String> {
    let names: Vec<&str> = Precision::ALL.iter().map(|p| p.as_str()).collect();
    choice("precision", v, &names).map(|s| Precision::parse(&s).expect("one of the names"))
}

pub(crate) fn check_memory_format(v: &Value) -> Result<MemoryFormat, String> {
    let names: Vec<&str> = MemoryFormat::ALL.iter().map(|f| f.as_str()).collect();
    choice("memory_format", v, &names).map(|s| MemoryFormat::parse(&s).expect("one of the names"))
}

pub(crate) fn path(key: &str, v: &Value) -> Result<PathBuf, String> {
    let s = string(key, v)?;
    if s.is_empty() {
        return Err(format!("{key} is an empty path"));
    }
    Ok(PathBuf::from(s))
}

pub(crate) fn arch_names() -> Vec<&'static str> {
    ARCHS.iter().map(|(name, _)| *name).collect()
}

// Grid-axis checks, shared by the lists and by include/exclude tables.
pub(crate) fn check_arch(v: &Value) -> Result<String, String> {
    choice("arch", v, &arch_names())
}
pub(crate) fn check_optimizer(v: &Value) -> Result<String, String> {
    choice("optimizer", v, &OPTIMIZERS)
}
pub(crate) fn check_lr(v: &Value) -> Result<f64, String> {
    positive_number("lr", v)
}
pub(crate) fn check_batch(v: &Value) -> Result<usize, String> {
    bounded("batch_size", v, 1, MAX_BATCH, "images on the device at once")
}
pub(crate) fn check_epochs(v: &Value) -> Result<u32, String> {
    small_positive("epochs", v)
}
pub(crate) fn check_schedule(v: &Value) -> Result<String, String> {
    choice("schedule", v, &SCHEDULES)
}
pub(crate) fn check_momentum(v: &Value) -> Result<f64, String> {
    unit_interval("momentum", v)
}
pub(crate) fn check_nesterov(v: &Value) -> Result<bool, String> {
    boolean("nesterov", v)
}
pub(crate) fn check_decay(v: &Value) -> Result<f64, String> {
    non_negative_number("weight_decay", v)
}
pub(crate) fn check_beta1(v: &Value) -> Result<f64, String> {
    unit_interval("beta1", v)
}
pub(crate) fn check_beta2(v: &Value) -> Result<f64, String> {
    unit_interval("beta2", v)
}
pub(crate) fn check_seed(v: &Value) -> Result<u64, String> {
    non_negative_int("seed", v)
}
