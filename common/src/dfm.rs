//! Dominant frequency maps (SCIENCE.md §7): which frequencies a model relies on, per class.
//!
//! The unit of work is a **removal unit**: for `patch = 1` a canonical cell (one of each conjugate
//! pair, 514 on 32 × 32), removed with its conjugate; for `patch = p > 1` a `p × p` square of the
//! centred spectrum, tiled from the top-left corner (row `u = −H/2`, column `v = −W/2`), removed
//! together with the conjugates of its cells (so the filtered image stays real). A patch's
//! conjugate cells do not form a tile of the same grid, so patch maps are not mirrored: every one
//! of the `(H/p)(W/p)` patches is its own unit and paints its own cells.
//!
//! For every unit, one pass over the test images gives every class's statistics at once: the
//! summed cross-entropy over the class's images and the number of them that turn from right
//! (clean) to wrong. Sums and counts, never means, so chunks of units merge exactly (writes,
//! idempotent, like heatmap cells) and means are derived. Pure code: the worker computes, the
//! coordinator merges, this decides.

use crate::bands::BandSet;
use crate::spectrum::{Cell, Shape2};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The largest patch side accepted (a patch is at most the whole 32 × 32 spectrum of the data
/// sets in use; larger images may use larger patches up to this).
pub const MAX_PATCH: usize = 64;

/// The removal units of a `shape` spectrum for patch size `patch`, in centred order of their
/// anchors (the canonical cell for `patch = 1`, the patch's top-left cell otherwise).
pub fn units(shape: Shape2, patch: usize) -> Result<Vec<Cell>, String> {
    check_patch(shape, patch)?;
    if patch == 1 {
        return Ok(shape.heatmap_cells());
    }
    let (top, left) = (-(shape.h as i32 / 2), -(shape.w as i32 / 2));
    let mut anchors = Vec::with_capacity((shape.h / patch) * (shape.w / patch));
    for row in (0..shape.h).step_by(patch) {
        for col in (0..shape.w).step_by(patch) {
            anchors.push(Cell::new(top + row as i32, left + col as i32));
        }
    }
    Ok(anchors)
}

/// A patch size is usable for `shape`: positive, at most [`MAX_PATCH`], and dividing both sides.
pub fn check_patch(shape: Shape2, patch: usize) -> Result<(), String> {
    if patch == 0 || patch > MAX_PATCH {
        return Err(format!("patch {patch} is outside 1..={MAX_PATCH}"));
    }
    if !shape.h.is_multiple_of(patch) || !shape.w.is_multiple_of(patch) {
        return Err(format!("patch {patch} does not divide the {}×{} image", shape.h, shape.w));
    }
    Ok(())
}

/// The cells a unit's value is shown on: the cell and its conjugate (`patch = 1`), or the
/// patch's own cells.
pub fn painted_cells(shape: Shape2, patch: usize, anchor: Cell) -> Vec<Cell> {
    if patch == 1 {
        let partner = shape.conjugate(anchor);
        return if partner == anchor { vec![anchor] } else { vec![anchor, partner] };
    }
    let mut cells = Vec::with_capacity(patch * patch);
    for du in 0..patch as i32 {
        for dv in 0..patch as i32 {
            cells.push(Cell::new(anchor.u + du, anchor.v + dv));
        }
    }
    cells
}

/// The cells zeroed when a unit is removed: its painted cells and all their conjugates, each
/// once, in centred order.
pub fn removed_cells(shape: Shape2, patch: usize, anchor: Cell) -> Vec<Cell> {
    let mut cells: Vec<Cell> =
        painted_cells(shape, patch, anchor).into_iter().flat_map(|c| [c, shape.conjugate(c)]).collect();
    cells.sort_by_key(|&c| shape.centred_index(c));
    cells.dedup();
    cells
}

/// What removing one unit did to the images of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ClassStat {
    /// Summed cross-entropy (natural log) of the class's images with the unit removed.
    pub loss: f64,
    /// Images of the class classified right when clean and wrong with the unit removed.
    pub flipped: u64,
}

/// The clean (nothing removed) statistics of one class.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CleanStat {
    /// Test images of the class.
    pub images: u64,
    /// Their summed clean cross-entropy.
    pub loss: f64,
    /// Of them, classified right.
    pub correct: u64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DfmError {
    #[error("unit {anchor:?} is not a removal unit of a {h}×{w} map with patch {patch}")]
    NotAUnit { anchor: Cell, h: usize, w: usize, patch: usize },
    #[error("unit {anchor:?} was already written with different values")]
    Conflict { anchor: Cell },
    #[error("a chunk has {got} classes, the map {expected}")]
    Classes { got: usize, expected: usize },
    #[error("a chunk counts other images per class than the map's (chunks of one map evaluate the same images)")]
    CleanConflict,
    #[error("the map is missing {missing} of its {total} units")]
    Incomplete { missing: usize, total: usize },
    #[error("class {class} has no test images")]
    EmptyClass { class: usize },
    #[error("top {0} % is outside (0, 100]")]
    Top(f64),
    #[error("class {class} does not exist (the maps have {classes} classes)")]
    NoClass { class: usize, classes: usize },
}

/// A loss map for every class, assembled from chunks of units.
#[derive(Clone, Debug, PartialEq)]
pub struct DfmAccumulator {
    shape: Shape2,
    patch: usize,
    classes: usize,
    units: Vec<Cell>,
    /// Unit anchor → its position in `units`.
    index: BTreeMap<Cell, usize>,
    /// Per unit, per class; `None` until written.
    stats: Vec<Option<Vec<ClassStat>>>,
    clean: Option<Vec<CleanStat>>,
}

impl DfmAccumulator {
    pub fn new(shape: Shape2, patch: usize, classes: usize) -> Result<Self, String> {
        let units = units(shape, patch)?;
        let index = units.iter().enumerate().map(|(i, &c)| (c, i)).collect();
        Ok(DfmAccumulator { shape, patch, classes, stats: vec![None; units.len()], units, index, clean: None })
    }

    pub fn shape(&self) -> Shape2 {
        self.shape
    }

    pub fn patch(&self) -> usize {
        self.patch
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn units(&self) -> &[Cell] {
        &self.units
    }

    /// Whether `anchor` is one of this map's units.
    pub fn is_unit(&self, anchor: Cell) -> bool {
        self.index.contains_key(&anchor)
    }

    /// Write the clean statistics. Every chunk of a map evaluates the same images, so their
    /// per-class image counts must agree; the first chunk's sums are kept (another worker's
    /// chunk may round its float loss sum differently, or compute in another precision).
    pub fn write_clean(&mut self, clean: &[CleanStat]) -> Result<(), DfmError> {
        if clean.len() != self.classes {
            return Err(DfmError::Classes { got: clean.len(), expected: self.classes });
        }
        match &self.clean {
            Some(old) if old.iter().zip(clean).any(|(a, b)| a.images != b.images) => Err(DfmError::CleanConflict),
            Some(_) => Ok(()),
            None => {
                self.clean = Some(clean.to_vec());
                Ok(())
            }
        }
    }

    /// Write one unit's per-class statistics. Identical values again are a no-op; different
    /// ones a [`DfmError::Conflict`].
    pub fn write(&mut self, anchor: Cell, per_class: &[ClassStat]) -> Result<(), DfmError> {
        let &i = self.index.get(&anchor).ok_or(DfmError::NotAUnit {
            anchor,
            h: self.shape.h,
            w: self.shape.w,
            patch: self.patch,
        })?;
        if per_class.len() != self.classes {
            return Err(DfmError::Classes { got: per_class.len(), expected: self.classes });
        }
        match &self.stats[i] {
            Some(old) if old.as_slice() != per_class => Err(DfmError::Conflict { anchor }),
            _ => {
                self.stats[i] = Some(per_class.to_vec());
                Ok(())
            }
        }
    }

    pub fn get(&self, anchor: Cell) -> Option<&[ClassStat]> {
        self.stats[*self.index.get(&anchor)?].as_deref()
    }

    pub fn clean(&self) -> Option<&[CleanStat]> {
        self.clean.as_deref()
    }

    /// Units not yet written.
    pub fn missing(&self) -> Vec<Cell> {
        self.units.iter().zip(&self.stats).filter(|(_, s)| s.is_none()).map(|(&c, _)| c).collect()
    }

    pub fn is_complete(&self) -> bool {
        self.clean.is_some() && self.stats.iter().all(Option::is_some)
    }

    fn class_images(&self, class: usize) -> Option<u64> {
        self.clean.as_ref().map(|c| c[class].images)
    }

    /// Per unit (in [`units`] order) the mean of `value` over class `class`'s images; `NaN` for
    /// units not written or a class without images.
    fn unit_means(&self, class: usize, value: impl Fn(&ClassStat) -> f64) -> Vec<f64> {
        let n = if class < self.classes { self.class_images(class).unwrap_or(0) } else { 0 };
        self.stats
            .iter()
            .map(|s| match s {
                Some(per_class) if n > 0 => value(&per_class[class]) / n as f64,
                _ => f64::NAN,
            })
            .collect()
    }

    /// Paint per-unit values onto an `H × W` centred map (`NaN` where nothing is painted).
    fn paint(&self, per_unit: &[f64]) -> Vec<f64> {
        let mut map = vec![f64::NAN; self.shape.len()];
        for (&anchor, &value) in self.units.iter().zip(per_unit) {
            for c in painted_cells(self.shape, self.patch, anchor) {
                map[self.shape.centred_index(c)] = value;
            }
        }
        map
    }

    /// `L_c`: the mean cross-entropy of class `class`'s images with each unit removed, centred
    /// `H × W` (SCIENCE.md §7).
    pub fn loss_map(&self, class: usize) -> Vec<f64> {
        self.paint(&self.unit_means(class, |s| s.loss))
    }

    /// The accuracy drop: the fraction of class `class`'s images that turn from right to wrong
    /// with each unit removed, centred `H × W`.
    pub fn accuracy_drop_map(&self, class: usize) -> Vec<f64> {
        self.paint(&self.unit_means(class, |s| s.flipped as f64))
    }

    /// `DFM_c` at the top `top` % of units: a centred `H × W` 0/1 mask holding every removed cell
    /// of the selected units (for `patch = 1` a conjugate pair is one unit, counted once).
    pub fn dfm(&self, class: usize, top: f64) -> Result<Vec<u8>, DfmError> {
        if class >= self.classes {
            return Err(DfmError::NoClass { class, classes: self.classes });
        }
        let missing = self.missing().len();
        if missing > 0 || self.clean.is_none() {
            return Err(DfmError::Incomplete { missing, total: self.units.len() });
        }
        if self.class_images(class) == Some(0) {
            return Err(DfmError::EmptyClass { class });
        }
        let chosen = top_units(&self.unit_means(class, |s| s.loss), top)?;
        let mut mask = vec![0u8; self.shape.len()];
        for i in chosen {
            for c in removed_cells(self.shape, self.patch, self.units[i]) {
                mask[self.shape.centred_index(c)] = 1;
            }
        }
        Ok(mask)
    }
}

/// How many of `units` units the top `top` % selects: `ceil(top/100 · units)`, at least one.
pub fn top_count(units: usize, top: f64) -> Result<usize, DfmError> {
    if !(top > 0.0 && top <= 100.0) {
        return Err(DfmError::Top(top));
    }
    Ok(((top / 100.0 * units as f64).ceil() as usize).clamp(1, units.max(1)))
}

/// The indices of the top `top` % of `values` (highest first). Ties are broken by position (the
/// earlier unit in centred order wins), so the choice is deterministic; NaN ranks lowest.
pub fn top_units(values: &[f64], top: f64) -> Result<Vec<usize>, DfmError> {
    let k = top_count(values.len(), top)?;
    let mut order: Vec<usize> = (0..values.len()).collect();
    let key = |i: usize| if values[i].is_nan() { f64::NEG_INFINITY } else { values[i] };
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order.truncate(k.min(values.len()));
    Ok(order)
}

/// The shortcut degree of class `class` from the confusion matrix (`rows[truth][predicted]`) of
/// the test set filtered to its DFM: the true-positive rate (recall of `class`) and the
/// false-positive rate (the fraction of other classes' images predicted as `class`). `NaN` where
/// there are no images to divide by.
pub fn shortcut_degree(rows: &[Vec<u64>], class: usize) -> (f64, f64) {
    let ratio = |a: u64, b: u64| if b == 0 { f64::NAN } else { a as f64 / b as f64 };
    let own: u64 = rows[class].iter().sum();
    let others: u64 = rows.iter().enumerate().filter(|(t, _)| *t != class).map(|(_, r)| r.iter().sum::<u64>()).sum();
    let false_pos: u64 = rows.iter().enumerate().filter(|(t, _)| *t != class).map(|(_, r)| r[class]).sum();
    (ratio(rows[class][class], own), ratio(false_pos, others))
}

/// Every non-empty subset of the four bands (15), smallest first, then in band order.
pub fn band_subsets() -> Vec<BandSet> {
    let mut sets: Vec<BandSet> = (1u8..16)
        .map(|bits| {
            BandSet::from_bands(crate::bands::Band::ALL.into_iter().filter(|b| bits & (1 << (b.index() - 1)) != 0))
        })
        .collect();
    sets.sort_by_key(|s| (s.bands().count(), s.to_string().len(), s.to_string()));
    sets
}

/// Per class, the smallest band sets whose F1 stays within `tolerance` of the full spectrum's:
/// of the sets in `f1` (band set → per-class F1) with `F1 ≥ full − tolerance`, those with the
/// fewest bands (every one of that size, in band order). A class that no set reaches gets none
/// (the full set itself always reaches when it is among them).
pub fn sufficient_sets(f1: &[(BandSet, Vec<f64>)], full: &[f64], tolerance: f64) -> Vec<Vec<BandSet>> {
    (0..full.len())
        .map(|class| {
            let good: Vec<BandSet> = f1
                .iter()
                .filter(|(_, per_class)| per_class.get(class).is_some_and(|&f| f >= full[class] - tolerance))
                .map(|(set, _)| *set)
                .collect();
            let fewest = good.iter().map(|s| s.bands().count()).min();
            let mut chosen: Vec<BandSet> = good.into_iter().filter(|s| Some(s.bands().count()) == fewest).collect();
            chosen.sort_by_key(|s| s.to_string());
            chosen
        })
        .collect()
}

/// The merged maps of one model as the artifact a later stage takes (JSON, format
/// `freqsweep-dfm-1`): every unit's per-class sums and counts, so a reader rebuilds exactly the
/// accumulator that was merged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MapsFile {
    pub format: String,
    pub point: String,
    pub height: usize,
    pub width: usize,
    pub patch: usize,
    pub clean: Vec<CleanStat>,
    pub units: Vec<(Cell, Vec<ClassStat>)>,
}

/// The artifact format name.
pub const MAPS_FORMAT: &str = "freqsweep-dfm-1";

impl MapsFile {
    /// The file of a complete accumulator (`None` while units are missing).
    pub fn of(point: &str, acc: &DfmAccumulator) -> Option<MapsFile> {
        let clean = acc.clean()?.to_vec();
        let units = acc.units().iter().map(|&u| Some((u, acc.get(u)?.to_vec()))).collect::<Option<Vec<_>>>()?;
        Some(MapsFile {
            format: MAPS_FORMAT.into(),
            point: point.into(),
            height: acc.shape().h,
            width: acc.shape().w,
            patch: acc.patch(),
            clean,
            units,
        })
    }

    /// The accumulator this file holds, checked: its format, shape, patch and every unit once.
    pub fn accumulator(&self) -> Result<DfmAccumulator, String> {
        if self.format != MAPS_FORMAT {
            return Err(format!(
                "not DFM maps: format {:?}, expected {MAPS_FORMAT:?}",
                crate::text::one_line(&self.format, 80)
            ));
        }
        if !(1..=4096).contains(&self.height) || !(1..=4096).contains(&self.width) {
            return Err(format!("DFM maps of a {}×{} image", self.height, self.width));
        }
        let shape = Shape2::new(self.height, self.width);
        let mut acc = DfmAccumulator::new(shape, self.patch, self.clean.len())?;
        acc.write_clean(&self.clean).map_err(|e| e.to_string())?;
        for (anchor, stats) in &self.units {
            acc.write(*anchor, stats).map_err(|e| e.to_string())?;
        }
        if !acc.is_complete() {
            return Err(format!("the DFM maps miss {} of their {} units", acc.missing().len(), acc.units().len()));
        }
        Ok(acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_canonical_cells_or_tiles_and_a_bad_patch_is_named() {
        let shape = Shape2::new(32, 32);
        assert_eq!(units(shape, 1).unwrap().len(), 514);
        let tiles = units(shape, 4).unwrap();
        assert_eq!(tiles.len(), 64);
        assert_eq!(tiles[0], Cell::new(-16, -16));
        assert_eq!(tiles[1], Cell::new(-16, -12));
        assert_eq!(units(shape, 3).unwrap_err(), "patch 3 does not divide the 32×32 image");
        assert_eq!(units(shape, 0).unwrap_err(), "patch 0 is outside 1..=64");
        // Every cell is painted by exactly one tile.
        let mut painted = vec![0; shape.len()];
        for &t in &tiles {
            for c in painted_cells(shape, 4, t) {
                painted[shape.centred_index(c)] += 1;
            }
        }
        assert!(painted.iter().all(|&n| n == 1));
        // A tile is removed with its conjugates: 16 cells and 16 others (none of its own here).
        let removed = removed_cells(shape, 4, Cell::new(4, 4));
        assert_eq!(removed.len(), 32);
        assert!(removed.contains(&Cell::new(-4, -4)) && removed.contains(&Cell::new(-7, -7)));
        // A cell with its conjugate; a self-conjugate cell alone.
        assert_eq!(removed_cells(shape, 1, Cell::new(1, 1)), vec![Cell::new(-1, -1), Cell::new(1, 1)]);
        assert_eq!(removed_cells(shape, 1, Cell::new(-16, 0)), vec![Cell::new(-16, 0)]);
    }

    #[test]
    fn thresholding_a_hand_made_map_takes_the_top_pairs_once_with_ties_by_position() {
        assert_eq!(top_count(514, 1.0).unwrap(), 6); // ceil(5.14)
        assert_eq!(top_count(514, 100.0).unwrap(), 514);
        assert_eq!(top_count(10, 0.01).unwrap(), 1, "at least one unit");
        assert!(matches!(top_count(10, 0.0), Err(DfmError::Top(_))));
        assert!(matches!(top_count(10, 100.5), Err(DfmError::Top(_))));
        assert!(matches!(top_count(10, f64::NAN), Err(DfmError::Top(_))));
        // Ties: the earlier position wins; NaN is last.
        assert_eq!(top_units(&[1.0, 3.0, f64::NAN, 3.0, 2.0], 40.0).unwrap(), vec![1, 3]);
        assert_eq!(top_units(&[1.0, 3.0, f64::NAN, 3.0, 2.0], 60.0).unwrap(), vec![1, 3, 4]);

        // A 4 × 4 map, one class: units are the 10 canonical cells; the loss is high at (1, 1)
        // (and so its conjugate (-1, -1)) and at (0, 1).
        let shape = Shape2::new(4, 4);
        let mut acc = DfmAccumulator::new(shape, 1, 1).unwrap();
        assert_eq!(acc.units().len(), 10);
        acc.write_clean(&[CleanStat { images: 10, loss: 1.0, correct: 9 }]).unwrap();
        assert!(matches!(acc.dfm(0, 10.0), Err(DfmError::Incomplete { missing: 10, total: 10 })));
        for &u in &acc.units().to_vec() {
            let loss = match (u.u, u.v) {
                (1, 1) | (-1, -1) => 50.0,
                (0, 1) | (0, -1) => 40.0,
                _ => 5.0,
            };
            acc.write(u, &[ClassStat { loss, flipped: (loss / 10.0) as u64 }]).unwrap();
        }
        let mask = acc.dfm(0, 10.0).unwrap(); // 1 of 10 units: the pair (±1, ±1)
        let ones: Vec<Cell> = shape.cells().filter(|&c| mask[shape.centred_index(c)] == 1).collect();
        assert_eq!(ones, vec![Cell::new(-1, -1), Cell::new(1, 1)]);
        let mask = acc.dfm(0, 20.0).unwrap(); // 2 units: 4 cells
        assert_eq!(mask.iter().filter(|&&m| m == 1).count(), 4);
        assert_eq!(mask[shape.centred_index(Cell::new(0, -1))], 1);
        // Means: loss 50 over 10 images, painted on both members; accuracy drop 5/10.
        let loss = acc.loss_map(0);
        assert_eq!(loss[shape.centred_index(Cell::new(-1, -1))], 5.0);
        assert_eq!(acc.accuracy_drop_map(0)[shape.centred_index(Cell::new(1, 1))], 0.5);
        // Writes are idempotent; a conflicting one is refused, as is a unit of another map.
        // ((-1, -1) is the canonical member of its pair, (1, -1) is not.)
        acc.write(Cell::new(-1, -1), &[ClassStat { loss: 50.0, flipped: 5 }]).unwrap();
        let changed = acc.write(Cell::new(-1, -1), &[ClassStat { loss: 49.0, flipped: 5 }]);
        assert!(matches!(changed, Err(DfmError::Conflict { .. })));
        assert!(matches!(acc.write(Cell::new(1, -1), &[ClassStat::default()]), Err(DfmError::NotAUnit { .. })));
        acc.write_clean(&[CleanStat { images: 10, loss: 1.5, correct: 8 }]).unwrap();
        assert_eq!(acc.clean().unwrap()[0].loss, 1.0, "the first chunk's sums are kept");
        let other_images = acc.write_clean(&[CleanStat { images: 11, loss: 1.0, correct: 9 }]);
        assert!(matches!(other_images, Err(DfmError::CleanConflict)));
    }

    #[test]
    fn an_empty_class_has_no_dfm() {
        let shape = Shape2::new(2, 2);
        let mut acc = DfmAccumulator::new(shape, 1, 2).unwrap();
        acc.write_clean(&[CleanStat { images: 4, loss: 1.0, correct: 4 }, CleanStat::default()]).unwrap();
        for &u in &acc.units().to_vec() {
            acc.write(u, &[ClassStat::default(); 2]).unwrap();
        }
        assert!(acc.dfm(0, 50.0).is_ok());
        assert!(matches!(acc.dfm(1, 50.0), Err(DfmError::EmptyClass { class: 1 })));
        assert!(matches!(acc.dfm(2, 50.0), Err(DfmError::NoClass { class: 2, classes: 2 })));
        assert!(acc.loss_map(7).iter().all(|v| v.is_nan()), "a class that does not exist has no values");
        assert!(acc.loss_map(1).iter().all(|v| v.is_nan()));
    }

    #[test]
    fn shortcut_degree_is_recall_and_the_false_positive_rate() {
        // truth 0: 8 right, 2 as 1; truth 1: 3 as 0, 7 right; truth 2: 5 as 0, 5 right.
        let rows = vec![vec![8, 2, 0], vec![3, 7, 0], vec![5, 0, 5]];
        assert_eq!(shortcut_degree(&rows, 0), (0.8, 8.0 / 20.0));
        assert_eq!(shortcut_degree(&rows, 2), (0.5, 0.0));
        let (tpr, fpr) = shortcut_degree(&[vec![0, 0], vec![1, 1]], 0);
        assert!(tpr.is_nan() && fpr == 0.5);
    }

    #[test]
    fn the_smallest_sufficient_band_sets_per_class() {
        let sets = band_subsets();
        assert_eq!(sets.len(), 15);
        assert_eq!(sets[0].to_string(), "B1");
        assert_eq!(sets[14], BandSet::ALL);
        let set = |s: &str| s.parse::<BandSet>().unwrap();
        let full = vec![0.9, 0.8];
        let f1 = vec![
            (set("B1"), vec![0.5, 0.79]),
            (set("B12"), vec![0.86, 0.2]),
            (set("B13"), vec![0.851, 0.2]),
            (set("B34"), vec![0.84, 0.7]),
            (BandSet::ALL, full.clone()),
        ];
        let chosen = sufficient_sets(&f1, &full, 0.05);
        assert_eq!(chosen[0], vec![set("B12"), set("B13")], "two bands suffice for class 0, both ways");
        assert_eq!(chosen[1], vec![set("B1")], "one band for class 1");
        assert_eq!(sufficient_sets(&f1, &full, 0.0)[0], vec![BandSet::ALL]);
    }
}
