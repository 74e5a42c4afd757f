//! Batched dominant-frequency loss maps (SCIENCE.md §7) for a chunk of removal units.
//!
//! For each removal unit (a cell and its conjugate, or a patch of cells and their conjugates:
//! `common::dfm`) and test image `x_i`, the filtered image is `x_i` with the unit's frequencies
//! zeroed in every channel. One forward pass of the filtered images serves every class: the
//! cross-entropy and the right-to-wrong flips are summed per class of the image (SCIENCE.md §7;
//! the authors' code re-runs the test set once per class).
//!
//! Removing a set `S` of frequencies closed under conjugation is subtracting the image's
//! orthogonal projection onto the real Fourier functions of `S`: with `Q_S` an orthonormal basis
//! of them (per conjugate pair `√(2/HW)·cos θ` and `√(2/HW)·sin θ`, `θ = 2π(u·m/H + v·n/W)`; per
//! self-conjugate cell `√(1/HW)·cos θ`), `x − Q_S Q_Sᵀ x` equals `real(ifft2(fft2(x)·(1 − 1_S)))`
//! (tested against the FFT band filter). For a group of `k` units this is two batched matrix
//! products on the device: the coefficients of every image channel on every unit's basis, then
//! the components, subtracted from the clean images broadcast to `[k, m, C, H, W]`.
//!
//! Batched like the heatmap engine: images in blocks of `m = min(N, batch)`, one clean pass per
//! block, then groups of `batch / m` units per forward pass; the per-class sums are one matrix
//! product with the block's one-hot labels, kept on the device and read once at the end.

use crate::heatmap::{broken_rows, forward, validate_inputs, HeatmapError};
use crate::models::Classifier;
use freqsweep_common::dfm::{self, ClassStat, CleanStat};
use freqsweep_common::spectrum::{Cell, Shape2};
use tch::{Device, Kind, Tensor};

/// What to compute.
#[derive(Clone, Debug)]
pub struct DfmConfig {
    /// Side of the square patches (1: single cells).
    pub patch: usize,
    /// Anchors of the removal units (`common::dfm::units`).
    pub units: Vec<Cell>,
    /// Filtered images per forward pass.
    pub batch: usize,
}

/// Sums and counts for every unit of the chunk (means are derived when merging).
#[derive(Clone, Debug, PartialEq)]
pub struct DfmCounts {
    pub images: usize,
    pub clean: Vec<CleanStat>,
    pub units: Vec<(Cell, Vec<ClassStat>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum DfmComputeError {
    #[error(transparent)]
    Input(#[from] HeatmapError),
    #[error("{0}")]
    Patch(String),
    #[error("unit {0:?} is not a removal unit of this map (patch {1})")]
    Unit(Cell, usize),
}

/// An orthonormal real basis of the frequencies a unit removes, as `[H·W, d]` columns.
fn unit_basis(shape: Shape2, patch: usize, anchor: Cell) -> Vec<Vec<f32>> {
    let (h, w) = (shape.h as f64, shape.w as f64);
    let mut columns = Vec::new();
    for cell in dfm::removed_cells(shape, patch, anchor) {
        if shape.canonical(cell) != cell {
            continue; // its conjugate's columns span it
        }
        let theta = |row: usize, col: usize| {
            2.0 * std::f64::consts::PI * (f64::from(cell.u) * row as f64 / h + f64::from(cell.v) * col as f64 / w)
        };
        let wave = |f: fn(f64) -> f64, scale: f64| -> Vec<f32> {
            (0..shape.h)
                .flat_map(|r| (0..shape.w).map(move |c| (r, c)))
                .map(|(r, c)| (scale * f(theta(r, c))) as f32)
                .collect()
        };
        if shape.is_self_conjugate(cell) {
            columns.push(wave(f64::cos, (1.0 / (h * w)).sqrt()));
        } else {
            columns.push(wave(f64::cos, (2.0 / (h * w)).sqrt()));
            columns.push(wave(f64::sin, (2.0 / (h * w)).sqrt()));
        }
    }
    columns
}

/// The units' bases as one `[units, H·W, d]` tensor, zero-padded to the widest unit.
fn bases(shape: Shape2, patch: usize, units: &[Cell], device: Device) -> Tensor {
    let per_unit: Vec<Vec<Vec<f32>>> = units.iter().map(|&a| unit_basis(shape, patch, a)).collect();
    let d = per_unit.iter().map(Vec::len).max().unwrap_or(1).max(1);
    let pixels = shape.len();
    let mut flat = vec![0f32; units.len() * pixels * d];
    for (k, columns) in per_unit.iter().enumerate() {
        for (j, column) in columns.iter().enumerate() {
            for (p, &value) in column.iter().enumerate() {
                flat[(k * pixels + p) * d + j] = value;
            }
        }
    }
    Tensor::from_slice(&flat).view([units.len() as i64, pixels as i64, d as i64]).to_device(device)
}

/// `x` (`[m, C, H, W]`) with each of a group's units removed: `[k·m, C, H, W]`, unit-major.
/// `q` is the group's `[k, H·W, d]` bases.
pub fn remove_units(x: &Tensor, q: &Tensor) -> Tensor {
    let size = x.size();
    let out = Tensor::empty([q.size()[0] * size[0], size[1], size[2], size[3]], (Kind::Float, x.device()));
    remove_units_into(x, q, &q.transpose(1, 2).neg().contiguous(), &out);
    out
}

/// [`remove_units`] written into `out` (`[k·m, C, H, W]`, reused across passes: a fresh
/// multi-MB tensor per pass made glibc map and unmap pages, which cost small models a third of
/// their throughput), with `q_neg_t` the group's `−Qᵀ` (`[k, d, H·W]`).
fn remove_units_into(x: &Tensor, q: &Tensor, q_neg_t: &Tensor, out: &Tensor) {
    let size = x.size();
    let (m, c, h, w) = (size[0], size[1], size[2], size[3]);
    let (k, d) = (q.size()[0], q.size()[2]);
    let planes = x.reshape([m * c, h * w]);
    // Coefficients of every plane on every unit's basis: [m·C, k·d] → [k, m·C, d].
    let q_cat = q.permute([1, 0, 2]).reshape([h * w, k * d]);
    let coefficients = planes.matmul(&q_cat).view([m * c, k, d]).permute([1, 0, 2]);
    // −components [k, m·C, H·W] = coefficients · (−Qᵀ), then the clean planes added, in place.
    let mut filtered = out.view([k, m * c, h * w]);
    let _ = coefficients.bmm_out(&filtered, q_neg_t);
    let _ = filtered.g_add_(&planes.unsqueeze(0));
}

/// Per-image cross-entropy (natural log) of fp32 `logits` against `y`.
fn cross_entropy(logits: &Tensor, y: &Tensor) -> Tensor {
    logits.log_softmax(-1, Kind::Float).gather(1, &y.unsqueeze(1), false).squeeze_dim(1).neg()
}

/// Compute the DFM statistics of `config`'s units for `model` on `images` (`float32 [N, 3, H, W]`
/// in `[0, 1]`, on the model's device) with `labels`, for every class the model outputs.
/// `progress(done, total)` counts filtered images.
pub fn compute(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &[i64],
    config: &DfmConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<DfmCounts, DfmComputeError> {
    validate_inputs(images, labels)?;
    let size = images.size();
    let (n, h, w) = (size[0], size[2], size[3]);
    let shape = Shape2::new(h as usize, w as usize);
    let all_units = dfm::units(shape, config.patch).map_err(DfmComputeError::Patch)?;
    if let Some(&bad) = config.units.iter().find(|u| !all_units.contains(u)) {
        return Err(DfmComputeError::Unit(bad, config.patch));
    }
    let device = images.device();
    let units = config.units.len() as i64;
    let batch = config.batch.max(1) as i64;
    let block = n.min(batch).max(1);
    let group = (batch / block).max(1);
    let q = bases(shape, config.patch, &config.units, device);
    let q_neg_t = q.transpose(1, 2).neg().contiguous();
    let scratch = Tensor::empty([group * block, size[1], h, w], (Kind::Float, device));
    let labels_t = Tensor::from_slice(labels).to_device(device);
    let max_label = labels.iter().copied().max().unwrap_or(0);

    // Sized once the model's class count is known (from the first clean pass).
    let mut classes = 0i64;
    let mut loss = Tensor::zeros([0], (Kind::Double, device));
    let mut flipped = Tensor::zeros([0], (Kind::Double, device));
    let mut clean_loss = Tensor::zeros([0], (Kind::Double, device));
    let mut clean_correct = Tensor::zeros([0], (Kind::Double, device));
    let mut non_finite = Tensor::zeros([], (Kind::Int64, device));
    let total = (units * n) as u64;
    let mut done = 0u64;

    tch::no_grad(|| -> Result<(), DfmComputeError> {
        let mut start = 0;
        while start < n {
            let m = block.min(n - start);
            let x = images.narrow(0, start, m);
            let y = labels_t.narrow(0, start, m);
            let (clean_logits, _) = forward(model, &x, &[]).map_err(HeatmapError::from)?;
            let out = clean_logits.size();
            if out.len() != 2 || out[0] != m {
                return Err(HeatmapError::Output(out).into());
            }
            if out[1] <= max_label {
                return Err(HeatmapError::Classes { outputs: out[1], max_label }.into());
            }
            if classes == 0 {
                classes = out[1];
                loss = Tensor::zeros([units, classes], (Kind::Double, device));
                flipped = Tensor::zeros([units, classes], (Kind::Double, device));
                clean_loss = Tensor::zeros([classes], (Kind::Double, device));
                clean_correct = Tensor::zeros([classes], (Kind::Double, device));
            }
            // One-hot labels [m, classes]: a per-image value times this sums it per class.
            let one_hot = y.one_hot(classes).to_kind(Kind::Double);
            non_finite += broken_rows(&clean_logits);
            let right = clean_logits.argmax(-1, false).eq_tensor(&y);
            clean_loss += cross_entropy(&clean_logits, &y).to_kind(Kind::Double).matmul(&one_hot);
            clean_correct += right.to_kind(Kind::Double).matmul(&one_hot);

            let mut first = 0;
            while first < units {
                let k = group.min(units - first);
                let filtered = scratch.narrow(0, 0, k * m);
                remove_units_into(&x, &q.narrow(0, first, k), &q_neg_t.narrow(0, first, k), &filtered);
                let (logits, _) = forward(model, &filtered, &[]).map_err(HeatmapError::from)?;
                non_finite += broken_rows(&logits);
                let yk = y.repeat([k]);
                let per_image = cross_entropy(&logits, &yk).to_kind(Kind::Double).view([k, m]);
                let _ = loss.narrow(0, first, k).g_add_(&per_image.matmul(&one_hot));
                let wrong = logits.argmax(-1, false).ne_tensor(&yk).view([k, m]);
                let flips = wrong.logical_and(&right.unsqueeze(0)).to_kind(Kind::Double);
                let _ = flipped.narrow(0, first, k).g_add_(&flips.matmul(&one_hot));
                first += k;
                done += (k * m) as u64;
                progress(done, total);
            }
            start += m;
        }
        Ok(())
    })?;

    let count = i64::try_from(&non_finite).expect("count");
    if count > 0 {
        return Err(HeatmapError::NonFinite { count, total: n as u64 * (units as u64 + 1) }.into());
    }
    let read = |t: &Tensor| Vec::<f64>::try_from(t.to_device(Device::Cpu).flatten(0, -1)).expect("sums");
    let mut images_per_class = vec![0u64; classes as usize];
    for &l in labels {
        images_per_class[l as usize] += 1;
    }
    let (clean_loss, clean_correct) = (read(&clean_loss), read(&clean_correct));
    let clean = (0..classes as usize)
        .map(|c| CleanStat { images: images_per_class[c], loss: clean_loss[c], correct: clean_correct[c] as u64 })
        .collect();
    let (loss, flipped) = (read(&loss), read(&flipped));
    let per_unit = config
        .units
        .iter()
        .enumerate()
        .map(|(i, &anchor)| {
            let stats = (0..classes as usize)
                .map(|c| {
                    let j = i * classes as usize + c;
                    ClassStat { loss: loss[j], flipped: flipped[j] as u64 }
                })
                .collect();
            (anchor, stats)
        })
        .collect();
    Ok(DfmCounts { images: n as usize, clean, units: per_unit })
}

/// The shortcut degree's confusion matrices (SCIENCE.md §7): `test` filtered to each class of
/// `chosen`'s DFM at each of `tops` (from `maps`, DC kept; `clip` clamps to `[0, 1]`), classified
/// by `model`, in `chosen` × `tops` order. `progress(done)` counts finished entries.
#[allow(clippy::too_many_arguments)]
pub fn shortcut_confusions(
    model: &dyn Classifier,
    test: &freqsweep_common::dataset::Dataset,
    maps: &dfm::DfmAccumulator,
    chosen: &[usize],
    tops: &[f64],
    clip: bool,
    device: Device,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<freqsweep_common::task::ShortcutEntry>, String> {
    let shape = Shape2::new(test.dims[2], test.dims[3]);
    if shape != maps.shape() {
        return Err(format!(
            "the DFM maps are of {}×{} images, the test images {}×{}",
            maps.shape().h,
            maps.shape().w,
            shape.h,
            shape.w
        ));
    }
    let classes = maps.classes();
    let mut entries = Vec::with_capacity(chosen.len() * tops.len());
    for &class in chosen {
        for &top in tops {
            let mask = maps.dfm(class, top).map_err(|e| format!("class {class}, top {top} %: {e}"))?;
            // Keep the DFM's frequencies and DC; zero every other one.
            let mut keep: Vec<f32> = mask.iter().map(|&m| f32::from(m)).collect();
            keep[shape.centred_index(Cell::new(0, 0))] = 1.0;
            let mut filtered = test.clone();
            freqsweep_common::bands::BandFilter::from_centred_mask(shape, &keep, clip).apply(&mut filtered.images);
            let set = crate::eval::TestSet {
                name: format!("dfm_class{class}"),
                images: crate::eval::images_tensor(&filtered, device),
                labels: filtered.labels,
            };
            let m = crate::eval::evaluate(model, &set, classes, 256).map_err(|e| e.to_string())?;
            entries.push(freqsweep_common::task::ShortcutEntry { class, top, confusion: m.rows() });
            progress(entries.len());
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::bands::BandFilter;

    /// Removing a unit by projection equals zeroing its cells with the FFT band filter.
    #[test]
    fn projection_removal_equals_the_fft_filter_for_cells_and_patches() {
        tch::manual_seed(3);
        for (h, w, patch) in [(8usize, 8usize, 1usize), (8, 6, 1), (8, 8, 2), (32, 32, 4), (7, 5, 1)] {
            let shape = Shape2::new(h, w);
            let x = Tensor::rand([2, 3, h as i64, w as i64], (Kind::Float, Device::Cpu));
            let units = dfm::units(shape, patch).unwrap();
            let q = bases(shape, patch, &units, Device::Cpu);
            let ours = remove_units(&x, &q);
            let planes = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
            for (k, &anchor) in units.iter().enumerate() {
                let mut mask = vec![1f32; shape.len()];
                for c in dfm::removed_cells(shape, patch, anchor) {
                    mask[shape.centred_index(c)] = 0.0;
                }
                let mut expected = planes.clone();
                BandFilter::from_centred_mask(shape, &mask, false).apply(&mut expected);
                let got = Vec::<f32>::try_from(ours.narrow(0, 2 * k as i64, 2).flatten(0, -1)).unwrap();
                let worst = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(worst < 1e-5, "{h}×{w} patch {patch} unit {anchor:?}: differs by {worst}");
            }
        }
    }
}
