//! What parsing asks of the file system (npy and IDX headers, image folders, globs). Parsing does no
//! I/O itself: the caller hands it a [`Probe`] — the coordinator the file system
//! (`files::FileSystem`) when it opens a run, which records the answers — or the answers a run
//! recorded, which every later parse of its stored spec replays.

use super::*;

/// What parsing a spec read from the file system, keyed by the path or pattern as the spec
/// wrote it: each npy or idx dataset's image size (from its header), each image folder's classes,
/// each glob's matches. The plan depends on these answers, so a run stores them when it opens
/// and every later parse of its stored spec replays them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecInputs {
    #[serde(default)]
    pub npy_sizes: BTreeMap<String, [usize; 2]>,
    /// Each idx dataset's image size (from its IDX header). Not written when empty, so the
    /// record of a run without one is the JSON it was before idx datasets existed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub idx_sizes: BTreeMap<String, [usize; 2]>,
    #[serde(default)]
    pub folder_classes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub globs: BTreeMap<String, Vec<String>>,
}

/// The questions parsing asks of the file system, answered by whoever parses: each answer is
/// an error text naming the cause (the spec's line is added by the parser).
pub trait Probe {
    /// The `[H, W]` of the images in the `.npy` file at `path`, from its header.
    fn npy_image_size(&self, path: &Path) -> Result<[usize; 2], String>;
    /// The `[H, W]` of the images in the IDX file at `path` (gzipped or not), from its header.
    fn idx_image_size(&self, path: &Path) -> Result<[usize; 2], String>;
    /// The classes of the image folder `dir` (its subdirectories, sorted).
    fn folder_classes(&self, dir: &Path) -> Result<Vec<String>, String>;
    /// The files a glob names, sorted.
    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String>;
}

/// Where parsing gets its file-system answers: a probe (answers recorded), or a replay.
pub(super) struct Inputs<'p> {
    pub(super) probe: Option<&'p dyn Probe>,
    pub(super) replay: Option<SpecInputs>,
    pub(super) recorded: std::cell::RefCell<SpecInputs>,
}

impl<'p> Inputs<'p> {
    pub(super) fn probing(probe: &'p dyn Probe) -> Self {
        Inputs { probe: Some(probe), replay: None, recorded: Default::default() }
    }

    pub(super) fn replaying(recorded: &SpecInputs) -> Self {
        Inputs { probe: None, replay: Some(recorded.clone()), recorded: Default::default() }
    }

    fn probe(&self) -> &'p dyn Probe {
        self.probe.expect("an input is either probed or replayed")
    }

    pub(super) fn missing(what: &str, key: &str) -> String {
        format!("the run's record holds no {what} for {key:?} (a store from before inputs were recorded?)")
    }

    pub(super) fn npy_image_size(&self, path: &Path) -> Result<[usize; 2], String> {
        let key = path.display().to_string();
        if let Some(replay) = &self.replay {
            return replay.npy_sizes.get(&key).copied().ok_or_else(|| Self::missing("npy image size", &key));
        }
        let [h, w] = self.probe().npy_image_size(path)?;
        self.recorded.borrow_mut().npy_sizes.insert(key, [h, w]);
        Ok([h, w])
    }

    pub(super) fn idx_image_size(&self, path: &Path) -> Result<[usize; 2], String> {
        let key = path.display().to_string();
        if let Some(replay) = &self.replay {
            return replay.idx_sizes.get(&key).copied().ok_or_else(|| Self::missing("IDX image size", &key));
        }
        let [h, w] = self.probe().idx_image_size(path)?;
        self.recorded.borrow_mut().idx_sizes.insert(key, [h, w]);
        Ok([h, w])
    }

    pub(super) fn folder_classes(&self, dir: &Path) -> Result<Vec<String>, String> {
        let key = dir.display().to_string();
        if let Some(replay) = &self.replay {
            return replay.folder_classes.get(&key).cloned().ok_or_else(|| Self::missing("class list", &key));
        }
        let classes = self.probe().folder_classes(dir)?;
        self.recorded.borrow_mut().folder_classes.insert(key, classes.clone());
        Ok(classes)
    }

    pub(super) fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        if let Some(replay) = &self.replay {
            let paths = replay.globs.get(pattern).ok_or_else(|| Self::missing("glob expansion", pattern))?;
            return Ok(paths.iter().map(PathBuf::from).collect());
        }
        let paths = self.probe().glob(pattern)?;
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
