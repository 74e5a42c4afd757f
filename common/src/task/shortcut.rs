//! The shortcut degree (SCIENCE.md §7): what a shortcut task says and reports. The spec asks for
//! it in the `[dfm]` section (`shortcut_degree`, `common::task::dfm`).

use super::*;

/// The shortcut degree (SCIENCE.md §7): `model` on the whole test split filtered to each chosen
/// class's DFM at each `top` (DC kept), from the merged maps the input `maps` names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Not `deny_unknown_fields` (serde cannot combine it with `flatten`): `AnalysisTarget`
// refuses the fields no one reads.
pub struct ShortcutTask {
    /// The model, the test set and how the model runs.
    #[serde(flatten)]
    pub target: AnalysisTarget,
    /// The input artifact holding the merged DFM maps (`common::dfm::MapsFile`).
    pub maps: String,
    /// The classes whose DFMs filter the test set.
    pub chosen: Vec<usize>,
    /// DFM sizes, percent of the units.
    pub top: Vec<f64>,
    /// Clip filtered images to `[0, 1]`.
    #[serde(default)]
    pub clip: bool,
}

/// One (class, top) of a shortcut-degree result: the confusion matrix (`[truth][predicted]`) of
/// the test set filtered to that class's DFM (TPR and FPR follow: `common::dfm::shortcut_degree`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShortcutEntry {
    pub class: usize,
    pub top: f64,
    pub confusion: Vec<Vec<u64>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShortcutOutcome {
    pub images: usize,
    /// In `chosen` × `top` order.
    pub entries: Vec<ShortcutEntry>,
    pub seconds: f64,
    pub device: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "is_contiguous")]
    pub memory_format: MemoryFormat,
}
