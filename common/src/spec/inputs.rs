//! What parsing reads of the file system (npy headers, image folders, globs): recorded when a
//! run opens, replayed by every later parse of its stored spec.

use super::*;

/// What parsing a spec read from the file system, keyed by the path or pattern as the spec
/// wrote it: each npy dataset's image size (from its header), each image folder's classes,
/// each glob's matches. The plan depends on these answers, so a run stores them when it opens
/// and every later parse of its stored spec replays them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecInputs {
    #[serde(default)]
    pub npy_sizes: BTreeMap<String, [usize; 2]>,
    #[serde(default)]
    pub folder_classes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub globs: BTreeMap<String, Vec<String>>,
}

/// Where parsing gets its file-system answers: live (and recorded), or replayed.
pub(super) struct Inputs {
    pub(super) replay: Option<SpecInputs>,
    pub(super) recorded: std::cell::RefCell<SpecInputs>,
}

impl Inputs {
    pub(super) fn live() -> Self {
        Inputs { replay: None, recorded: Default::default() }
    }

    pub(super) fn missing(what: &str, key: &str) -> String {
        format!("the run's record holds no {what} for {key:?} (a store from before inputs were recorded?)")
    }

    pub(super) fn npy_image_size(&self, path: &Path) -> Result<[usize; 2], String> {
        let key = path.display().to_string();
        if let Some(replay) = &self.replay {
            return replay.npy_sizes.get(&key).copied().ok_or_else(|| Self::missing("npy image size", &key));
        }
        let (h, w) = crate::dataset::npy_image_size(path).map_err(|e| e.to_string())?;
        self.recorded.borrow_mut().npy_sizes.insert(key, [h, w]);
        Ok([h, w])
    }

    pub(super) fn folder_classes(&self, dir: &Path) -> Result<Vec<String>, String> {
        let key = dir.display().to_string();
        if let Some(replay) = &self.replay {
            return replay.folder_classes.get(&key).cloned().ok_or_else(|| Self::missing("class list", &key));
        }
        let classes = crate::dataset::folder_classes(dir).map_err(|e| e.to_string())?;
        self.recorded.borrow_mut().folder_classes.insert(key, classes.clone());
        Ok(classes)
    }

    pub(super) fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        if let Some(replay) = &self.replay {
            let paths = replay.globs.get(pattern).ok_or_else(|| Self::missing("glob expansion", pattern))?;
            return Ok(paths.iter().map(PathBuf::from).collect());
        }
        let paths = expand_glob(pattern)?;
        let mut texts = Vec::with_capacity(paths.len());
        for p in &paths {
            // Recorded as text (JSON in the store); a file name that is not UTF-8 cannot
            // name a point either.
            let text = p.to_str().ok_or_else(|| {
                format!(
                    "glob {pattern:?} matches {}, whose name is not UTF-8; rename it",
                    one_line(&p.display().to_string(), 200)
                )
            })?;
            texts.push(text.to_string());
        }
        self.recorded.borrow_mut().globs.insert(pattern.to_string(), texts);
        Ok(paths)
    }
}

/// The files a glob such as `models/*.pt` names, sorted: `*` and `?` in the last component
/// only (a directory of models, the common case).
pub(super) fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!("glob {pattern:?}: wildcards are allowed in the file name only"));
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("glob {pattern:?}: {}: {e}", dir.display()))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter(|e| wildcard_match(file.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
        .map(|e| dir.join(e.file_name()))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(format!("glob {pattern:?} matches no file"));
    }
    Ok(out)
}

/// `*` (any run) and `?` (one character) against a whole name, in O(pattern × name) time: the
/// recursive match took over 30 s for a pattern of 16 `*` (each star retried every split).
/// Greedy with one backtrack point (the last star), which suffices because a later star can
/// absorb whatever an earlier one would have.
pub(super) fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The position after the last star seen, and the name position it currently absorbs to.
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                backtrack = Some((p, n));
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((after_star, absorbed)) => {
                    p = after_star;
                    n = absorbed + 1;
                    backtrack = Some((after_star, absorbed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}
