//! Merging what workers report into the run directory's result files (DESIGN.md "run directory"):
//! heatmap chunks into full maps (`heatmaps/`), metric points into per-class learning curves
//! (`curves/`) and final confusion matrices (`confusion/`). Pure functions over outcomes and metric
//! points plus small writers; the report renderer builds figures on top of these files.

use freqsweep_common::heatmap::{CellStat, HeatmapAccumulator, MergeError};
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::task::{HeatmapOutcome, MemoryFormat, MetricPoint, Precision};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// A full heatmap (error map plus layer maps) assembled from chunks.
#[derive(Clone, Debug, PartialEq)]
pub struct MergedHeatmap {
    pub eps: f64,
    pub images: usize,
    pub clean: CellStat,
    pub error: HeatmapAccumulator,
    pub layers: BTreeMap<String, HeatmapAccumulator>,
    /// What each merged chunk's model computed in, by chunk number (a worker without bf16
    /// instructions computes its chunks in fp32 even in a bf16 sweep).
    pub numerics: BTreeMap<usize, (Precision, MemoryFormat)>,
    /// Canonical cells planned for the map (all of the spectrum's, or a selection's); 0 for a map
    /// not planned from chunks, which is complete when every cell is written.
    pub planned_cells: usize,
}

impl MergedHeatmap {
    pub fn new(shape: Shape2, eps: f64) -> Self {
        MergedHeatmap {
            eps,
            images: 0,
            clean: CellStat::default(),
            error: HeatmapAccumulator::new(shape),
            layers: BTreeMap::new(),
            numerics: BTreeMap::new(),
            planned_cells: 0,
        }
    }

    /// What the model computed in, for the report: `fp32, NCHW`, `bf16, channels-last`, or each
    /// with its chunk count when the chunks differ.
    pub fn numerics_text(&self) -> String {
        let name = |(p, f): &(Precision, MemoryFormat)| {
            let layout = if matches!(f, MemoryFormat::ChannelsLast) { "channels-last" } else { "NCHW" };
            format!("{}, {layout}", p.as_str())
        };
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for n in self.numerics.values() {
            *counts.entry(name(n)).or_default() += 1;
        }
        match counts.len() {
            0 => name(&(Precision::Fp32, MemoryFormat::Contiguous)),
            1 => counts.into_keys().next().expect("one"),
            _ => counts.iter().map(|(n, c)| format!("{n} ({c} chunks)")).collect::<Vec<_>>().join("; "),
        }
    }

    /// Write one chunk's cells. Idempotent: the same chunk twice changes nothing; a chunk that
    /// disagrees with cells already written is a [`MergeError::Conflict`].
    pub fn add(&mut self, chunk: &HeatmapOutcome) -> Result<(), MergeError> {
        self.error.write_all(&chunk.error)?;
        for (layer, cells) in &chunk.layers {
            let shape = self.error.shape();
            self.layers.entry(layer.clone()).or_insert_with(|| HeatmapAccumulator::new(shape)).write_all(cells)?;
        }
        self.numerics.insert(chunk.chunk, (chunk.precision, chunk.memory_format.as_recorded()));
        // Every chunk evaluates the same clean images; keep one copy.
        self.clean = chunk.clean;
        self.images = chunk.images;
        Ok(())
    }

    /// Every planned cell written, in the error map and every layer map.
    pub fn is_complete(&self) -> bool {
        let done = |acc: &HeatmapAccumulator| match self.planned_cells {
            0 => acc.is_complete(),
            planned => acc.written() == planned,
        };
        done(&self.error) && self.layers.values().all(done)
    }
}

/// Per-class F1 over training as CSV: `epoch,step,test_set,class,f1`, in the order measured.
pub fn f1_curve_csv(points: &[MetricPoint]) -> String {
    let mut csv = String::from("epoch,step,test_set,class,f1\n");
    for p in points.iter().filter(|p| p.name == "f1") {
        let _ = writeln!(csv, "{},{},{},{},{}", p.epoch, p.step, p.test_set, p.class_index, p.value);
    }
    csv
}

/// The last confusion matrix of every test set, `test set → rows[truth][predicted]`.
pub fn final_confusions(points: &[MetricPoint], classes: usize) -> BTreeMap<String, Vec<Vec<u64>>> {
    let mut last_step: BTreeMap<&str, u64> = BTreeMap::new();
    for p in points.iter().filter(|p| p.name == "confusion") {
        let step = last_step.entry(&p.test_set).or_insert(p.step);
        *step = (*step).max(p.step);
    }
    let mut out = BTreeMap::new();
    for (set, step) in last_step {
        let mut rows = vec![vec![0u64; classes]; classes];
        for p in points.iter().filter(|p| p.name == "confusion" && p.test_set == set && p.step == step) {
            let index = p.class_index.max(0) as usize;
            if index < classes * classes {
                rows[index / classes][index % classes] = p.value as u64;
            }
        }
        out.insert(set.to_string(), rows);
    }
    out
}

/// A confusion matrix as CSV with a header row of predicted classes.
pub fn confusion_csv(rows: &[Vec<u64>]) -> String {
    let mut csv = String::from("truth");
    for c in 0..rows.len() {
        let _ = write!(csv, ",pred_{c}");
    }
    csv.push('\n');
    for (truth, row) in rows.iter().enumerate() {
        let _ = write!(csv, "{truth}");
        for v in row {
            let _ = write!(csv, ",{v}");
        }
        csv.push('\n');
    }
    csv
}

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::heatmap::partition_cells;

    #[test]
    fn a_map_says_what_its_chunks_computed_in() {
        let cells = Shape2::new(32, 32).heatmap_cells();
        let parts = partition_cells(&cells, 3);
        let mut map = MergedHeatmap::new(Shape2::new(32, 32), 4.0);
        assert_eq!(map.numerics_text(), "fp32, NCHW");
        let bf16 = |i: usize| HeatmapOutcome {
            precision: Precision::Bf16,
            memory_format: MemoryFormat::ChannelsLast,
            ..chunk(&parts[i].cells, i)
        };
        map.add(&bf16(0)).unwrap();
        map.add(&bf16(1)).unwrap();
        map.add(&bf16(1)).unwrap();
        assert_eq!(map.numerics_text(), "bf16, channels-last", "a chunk merged twice counts once");
        map.add(&chunk(&parts[2].cells, 2)).unwrap();
        assert_eq!(map.numerics_text(), "bf16, channels-last (2 chunks); fp32, NCHW (1 chunks)");
    }

    fn chunk(cells: &[freqsweep_common::spectrum::Cell], index: usize) -> HeatmapOutcome {
        let stat = |i: usize| CellStat { sum: (i % 5) as f64, n: 10 };
        HeatmapOutcome {
            eps: 4.0,
            chunk: index,
            images: 10,
            clean: CellStat { sum: 2.0, n: 10 },
            error: cells.iter().enumerate().map(|(i, &c)| (c, stat(i))).collect(),
            layers: BTreeMap::from([(
                "fc".to_string(),
                cells.iter().map(|&c| (c, CellStat { sum: 0.5, n: 10 })).collect(),
            )]),
            seconds: 1.0,
            images_per_second: 1.0,
            device: "cpu".into(),
            precision: Default::default(),
            memory_format: Default::default(),
        }
    }

    #[test]
    fn chunks_merge_into_a_complete_symmetric_map_idempotently() {
        let shape = Shape2::new(8, 8);
        let cells = shape.heatmap_cells();
        let chunks: Vec<_> = partition_cells(&cells, 3).iter().map(|c| chunk(&c.cells, c.index)).collect();
        let mut merged = MergedHeatmap::new(shape, 4.0);
        for c in &chunks {
            merged.add(c).unwrap();
        }
        assert!(merged.layers["fc"].missing().is_empty());
        merged.add(&chunks[1]).unwrap();
        assert!(merged.is_complete());
        let (u, v) = (freqsweep_common::spectrum::Cell::new(-3, 2), freqsweep_common::spectrum::Cell::new(3, -2));
        assert_eq!(merged.error.get(u), merged.error.get(v), "conjugate cells mirrored");
        // A chunk that disagrees with what is written is refused.
        let mut bad = chunks[0].clone();
        bad.error[0].1.sum += 1.0;
        assert!(matches!(merged.add(&bad), Err(MergeError::Conflict { .. })));
    }

    #[test]
    fn final_confusion_is_the_last_evaluation() {
        let p = |step: u64, index: i32, value: f64| MetricPoint {
            name: "confusion".into(),
            epoch: step as f64,
            step,
            test_set: "B124".into(),
            class_index: index,
            value,
        };
        let points = vec![p(1, 0, 9.0), p(1, 3, 1.0), p(2, 0, 5.0), p(2, 1, 5.0), p(2, 3, 10.0)];
        let m = final_confusions(&points, 2);
        assert_eq!(m["B124"], vec![vec![5, 5], vec![0, 10]]);
        assert_eq!(confusion_csv(&m["B124"]), "truth,pred_0,pred_1\n0,5,5\n1,0,10\n");
    }
}
