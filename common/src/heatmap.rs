//! Heatmap cells split into chunks and merged back (SCIENCE.md §3, DESIGN.md "Work partitioning").
//!
//! A heatmap is a per-cell statistic: for error maps the number of misclassified perturbed images
//! (`sum`) out of `n`; for layer maps the summed cosine distance over `n` images. Chunks of canonical
//! cells are computed on different workers; merging **writes** each cell (and mirrors it to its
//! conjugate), so merging the same chunk twice changes nothing. Rates are derived, never stored.

use crate::spectrum::{Cell, Shape2};

/// A contiguous run of canonical cells computed as one task.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CellChunk {
    pub index: usize,
    pub cells: Vec<Cell>,
}

/// Split `cells` into `chunks` contiguous chunks whose sizes differ by at most one.
/// `chunks` is clamped to `1..=cells.len()`.
pub fn partition_cells(cells: &[Cell], chunks: usize) -> Vec<CellChunk> {
    if cells.is_empty() {
        return Vec::new();
    }
    let chunks = chunks.clamp(1, cells.len());
    let (base, extra) = (cells.len() / chunks, cells.len() % chunks);
    let mut start = 0;
    (0..chunks)
        .map(|index| {
            let len = base + usize::from(index < extra);
            let chunk = CellChunk { index, cells: cells[start..start + len].to_vec() };
            start += len;
            chunk
        })
        .collect()
}

/// How many chunks to cut a map into so `workers` stay busy: about `chunks_per_worker` each, but no
/// chunk smaller than `min_cells` (tiny chunks cost more in scheduling than they compute).
pub fn chunk_count(n_cells: usize, workers: usize, chunks_per_worker: usize, min_cells: usize) -> usize {
    let wanted = workers.max(1) * chunks_per_worker.max(1);
    let most = (n_cells / min_cells.max(1)).max(1);
    wanted.min(most).min(n_cells.max(1))
}

/// The statistic of one cell.
#[derive(Clone, Copy, Debug, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct CellStat {
    /// Misclassified count (error maps) or summed cosine distance (layer maps).
    pub sum: f64,
    /// Number of perturbed images behind `sum`.
    pub n: u64,
}

impl CellStat {
    /// `sum / n`, `NaN` for a cell not yet computed.
    pub fn mean(self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.sum / self.n as f64
        }
    }

    /// Standard error of an error rate on `n` images, `sqrt(p(1−p)/n)`.
    pub fn standard_error(self) -> f64 {
        let p = self.mean();
        (p * (1.0 - p) / self.n as f64).sqrt()
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MergeError {
    #[error("cell {cell:?} is outside the {shape:?} map")]
    OutOfRange { cell: Cell, shape: Shape2 },
    #[error("cell {cell:?} was already written with different values ({old:?} vs {new:?})")]
    Conflict { cell: Cell, old: CellStat, new: CellStat },
}

/// Which canonical cells a heatmap computes; the others are skipped (`NaN` in its arrays, grey
/// in its figures, never zeros). `LowCrop(n)` is Yin et al.'s `n × n` low-frequency window
/// (`63` on ImageNet): rows `−⌊n/2⌋ … ⌊(n−1)/2⌋`, the same for columns; a canonical cell is kept
/// when it or its conjugate lies in the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellSelection {
    #[default]
    All,
    /// Cells with `sqrt(u² + v²) ≤ r`.
    MaxRadius(f64),
    LowCrop(usize),
}

impl CellSelection {
    /// The selected canonical cells of `shape`, in centred order.
    pub fn cells(self, shape: Shape2) -> Vec<Cell> {
        let mut cells = shape.heatmap_cells();
        cells.retain(|&c| self.keeps(shape, c));
        cells
    }

    fn keeps(self, shape: Shape2, cell: Cell) -> bool {
        match self {
            CellSelection::All => true,
            CellSelection::MaxRadius(r) => cell.radius() <= r,
            CellSelection::LowCrop(n) => {
                let (lo, hi) = (-((n / 2) as i64), ((n.max(1) - 1) / 2) as i64);
                let inside = |c: Cell| (lo..=hi).contains(&i64::from(c.u)) && (lo..=hi).contains(&i64::from(c.v));
                inside(cell) || inside(shape.conjugate(cell))
            }
        }
    }
}

/// A full map being assembled from chunks, centred layout.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeatmapAccumulator {
    shape: Shape2,
    stats: Vec<CellStat>,
}

impl HeatmapAccumulator {
    pub fn new(shape: Shape2) -> Self {
        HeatmapAccumulator { shape, stats: vec![CellStat::default(); shape.len()] }
    }

    pub fn shape(&self) -> Shape2 {
        self.shape
    }

    /// Write one computed cell and its conjugate. Writing identical values again is a no-op
    /// (idempotent); different values for a written cell are a [`MergeError::Conflict`].
    pub fn write(&mut self, cell: Cell, stat: CellStat) -> Result<(), MergeError> {
        if !self.shape.contains(cell) {
            return Err(MergeError::OutOfRange { cell, shape: self.shape });
        }
        for c in [cell, self.shape.conjugate(cell)] {
            let slot = &mut self.stats[self.shape.centred_index(c)];
            if slot.n != 0 && *slot != stat {
                return Err(MergeError::Conflict { cell: c, old: *slot, new: stat });
            }
            *slot = stat;
        }
        Ok(())
    }

    /// Write every cell of a chunk result.
    pub fn write_all(&mut self, cells: &[(Cell, CellStat)]) -> Result<(), MergeError> {
        cells.iter().try_for_each(|&(c, s)| self.write(c, s))
    }

    pub fn get(&self, cell: Cell) -> CellStat {
        self.stats[self.shape.centred_index(cell)]
    }

    /// Canonical cells still missing.
    pub fn missing(&self) -> Vec<Cell> {
        self.shape.heatmap_cells().into_iter().filter(|&c| self.get(c).n == 0).collect()
    }

    pub fn is_complete(&self) -> bool {
        self.stats.iter().all(|s| s.n > 0)
    }

    /// Canonical cells written so far.
    pub fn written(&self) -> usize {
        self.shape.heatmap_cells().into_iter().filter(|&c| self.get(c).n > 0).count()
    }

    /// Means in centred row-major layout (`NaN` where not computed).
    pub fn means(&self) -> Vec<f64> {
        self.stats.iter().map(|s| s.mean()).collect()
    }

    pub fn stats(&self) -> &[CellStat] {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cell_selections_keep_what_they_say() {
        let shape = Shape2::new(32, 32);
        assert_eq!(CellSelection::All.cells(shape), shape.heatmap_cells());
        // Yin et al.'s 63 × 63 window on 224 × 224: (63² + 1) / 2 canonical cells (DC alone).
        let big = Shape2::new(224, 224);
        let crop = CellSelection::LowCrop(63).cells(big);
        assert_eq!(crop.len(), (63 * 63 - 1) / 2 + 1, "conjugate pairs plus DC");
        assert!(crop.iter().all(|c| c.u.abs() <= 31 && c.v.abs() <= 31));
        // A window as large as the image is all of it; an even window keeps a cell whose
        // conjugate lies inside.
        assert_eq!(CellSelection::LowCrop(32).cells(shape), shape.heatmap_cells());
        let radius = CellSelection::MaxRadius(4.0).cells(shape);
        let brute: Vec<Cell> = shape.heatmap_cells().into_iter().filter(|c| c.u * c.u + c.v * c.v <= 16).collect();
        assert_eq!(radius, brute);
        assert_eq!(radius.len(), 48 / 2 + 1, "B1's 48 cells in conjugate pairs, plus DC");
    }

    fn fake_stat(c: Cell) -> CellStat {
        CellStat { sum: f64::from((c.u * 31 + c.v).rem_euclid(50)), n: 50 }
    }

    #[test]
    fn chunk_counts_are_bounded() {
        assert_eq!(chunk_count(514, 2, 4, 16), 8);
        assert_eq!(chunk_count(514, 100, 4, 16), 32);
        assert_eq!(chunk_count(3, 10, 4, 1), 3);
        assert_eq!(chunk_count(0, 10, 4, 1), 1);
    }

    #[test]
    fn conflicting_writes_are_rejected_and_identical_ones_ignored() {
        let shape = Shape2::new(8, 8);
        let mut acc = HeatmapAccumulator::new(shape);
        let c = Cell::new(1, 2);
        acc.write(c, CellStat { sum: 3.0, n: 10 }).unwrap();
        acc.write(c, CellStat { sum: 3.0, n: 10 }).unwrap();
        assert_eq!(acc.get(Cell::new(-1, -2)), CellStat { sum: 3.0, n: 10 });
        assert!(matches!(acc.write(c, CellStat { sum: 4.0, n: 10 }), Err(MergeError::Conflict { .. })));
        assert!(matches!(acc.write(Cell::new(4, 0), CellStat::default()), Err(MergeError::OutOfRange { .. })));
        assert!((acc.get(c).standard_error() - (0.3f64 * 0.7 / 10.0).sqrt()).abs() < 1e-12);
    }

    proptest! {
        #[test]
        fn partition_then_merge_in_any_order_rebuilds_the_map(
            h in 1usize..12, w in 1usize..12, chunks in 1usize..40, order_seed in any::<u64>(), dup in any::<bool>()
        ) {
            let shape = Shape2::new(h, w);
            let cells = shape.heatmap_cells();
            let parts = partition_cells(&cells, chunks);
            // Chunks cover each canonical cell exactly once, contiguously, sizes within one.
            let flat: Vec<Cell> = parts.iter().flat_map(|p| p.cells.clone()).collect();
            prop_assert_eq!(&flat, &cells);
            let sizes: Vec<usize> = parts.iter().map(|p| p.cells.len()).collect();
            prop_assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);

            let mut order: Vec<usize> = (0..parts.len()).collect();
            let mut s = order_seed;
            for i in (1..order.len()).rev() {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                order.swap(i, (s >> 33) as usize % (i + 1));
            }
            let mut acc = HeatmapAccumulator::new(shape);
            for &i in &order {
                let results: Vec<(Cell, CellStat)> = parts[i].cells.iter().map(|&c| (c, fake_stat(c))).collect();
                acc.write_all(&results).unwrap();
                if dup {
                    acc.write_all(&results).unwrap();
                }
            }
            prop_assert!(acc.is_complete());
            prop_assert!(acc.missing().is_empty());
            for c in shape.cells() {
                // Every cell holds its canonical cell's value.
                prop_assert_eq!(acc.get(c), fake_stat(shape.canonical(c)));
            }
        }
    }
}
