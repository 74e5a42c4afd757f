//! Batched Fourier heatmaps (SCIENCE.md §2–3) for a chunk of canonical cells.
//!
//! For each cell `(u, v)` and test image `x_i`, the perturbed image is
//! `clamp(x_i + ε · r_ic · U_uv, 0, 1)` with an independent sign `r_ic ∈ {−1, +1}` per image and
//! channel. The error map counts misclassified perturbed images; each requested layer map sums the
//! cosine distance between the layer's clean and perturbed responses.
//!
//! How the work is batched, so the device stays busy and nothing round-trips per image:
//! - the basis images of the chunk (`[cells, H, W]`) and all signs (`[cells, N, C]`) are built once
//!   and moved to the device once;
//! - images are taken in blocks of `m = min(N, batch)`; for each block the clean forward pass runs
//!   once (clean error and clean layer responses), then groups of `k = batch / m` cells are
//!   perturbed together by broadcasting (`[k, m, C, H, W]`) and pushed through **one** forward pass
//!   of `k · m ≤ batch` images, without gradient tracking;
//! - counts stay on the device and are read back once at the end.
//!
//! Each canonical cell stands for its conjugate (`U_{u,v} = U_{−u,−v}`), so a full map costs 514
//! cells on 32 × 32 instead of 1024.
//!
//! Signs: cell `c` uses the ChaCha8 stream `centred_index(c)` of `seed`; image `i`, channel `ch`
//! takes bit `i·C + ch` of the stream's successive 64-bit words (1 → +1). They depend only on
//! `(seed, cell, i, ch)`, so chunking, batch size and image limit never change a cell's result.

use crate::models::{Classifier, ForwardError};
use freqsweep_common::heatmap::CellStat;
use freqsweep_common::spectrum::{basis_image, Cell, Shape2};
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum HeatmapError {
    #[error("images must be float32 [N, 3, H, W]; got shape {0:?}")]
    Shape(Vec<i64>),
    #[error("images must lie in [0, 1]; found values in [{min}, {max}]")]
    Range { min: f64, max: f64 },
    #[error("{labels} labels for {images} images")]
    Count { labels: usize, images: usize },
    #[error("the model outputs {outputs} values per image but the labels go up to {max_label}")]
    Classes { outputs: i64, max_label: i64 },
    #[error("the model's output has shape {0:?}; expected logits [N, classes]")]
    Output(Vec<i64>),
    #[error("unknown layer {name:?}; this model has: {available}")]
    Layer { name: String, available: String },
    #[error("cell {cell:?} is outside the {height}x{width} spectrum")]
    Cell { cell: Cell, height: usize, width: usize },
    #[error("eps must be a finite non-negative number, got {0}")]
    Eps(f64),
    #[error("no test images to perturb (the test split, or its image limit, is empty)")]
    Empty,
    #[error("the model's logits are NaN or infinite for {count} of {total} images (clean and perturbed): a broken model has no heatmap")]
    NonFinite { count: i64, total: u64 },
    #[error(transparent)]
    Forward(#[from] ForwardError),
}

/// What to compute.
#[derive(Clone, Debug)]
pub struct HeatmapConfig {
    pub eps: f64,
    /// Canonical cells (each also stands for its conjugate).
    pub cells: Vec<Cell>,
    /// Layers whose cosine-distance maps are wanted.
    pub layers: Vec<String>,
    pub seed: u64,
    /// Perturbed images per forward pass.
    pub batch: usize,
}

/// Counts for every cell of the chunk (rates are derived when merging).
#[derive(Clone, Debug, PartialEq)]
pub struct HeatmapCounts {
    pub images: usize,
    pub clean: CellStat,
    pub error: Vec<(Cell, CellStat)>,
    pub layers: BTreeMap<String, Vec<(Cell, CellStat)>>,
}

/// The signs `r_ic` of `cell` (one definition, in `common`, shared with the `fourier(u, v, ε)`
/// corruption, so a corrupted set and a heatmap cell perturb an image alike).
pub use freqsweep_common::spectrum::signs;

/// Check inputs that would otherwise fail deep inside libtorch or silently give nonsense.
pub fn validate_inputs(images: &Tensor, labels: &[i64]) -> Result<(), HeatmapError> {
    let size = images.size();
    if size.len() != 4 || size[1] != 3 || images.kind() != Kind::Float {
        return Err(HeatmapError::Shape(size));
    }
    if labels.len() as i64 != size[0] {
        return Err(HeatmapError::Count { labels: labels.len(), images: size[0] as usize });
    }
    if size[0] == 0 {
        return Err(HeatmapError::Empty);
    }
    if size[0] > 0 {
        let min = f64::try_from(images.min()).unwrap_or(f64::NAN);
        let max = f64::try_from(images.max()).unwrap_or(f64::NAN);
        if !(min >= 0.0 && max <= 1.0) {
            return Err(HeatmapError::Range { min, max });
        }
    }
    Ok(())
}

/// How many rows of `logits` (`[N, classes]`) hold a NaN or an infinity.
pub(crate) fn broken_rows(logits: &Tensor) -> Tensor {
    logits.isfinite().logical_not().any_dim(-1, false).sum(Kind::Int64)
}

/// Compute the heatmap cells of `config` for `model` on `images` (`float32 [N, 3, H, W]` in
/// `[0, 1]`, on the model's device) with `labels`. `progress(done, total)` counts perturbed images.
pub fn compute(
    model: &dyn Classifier,
    images: &Tensor,
    labels: &[i64],
    config: &HeatmapConfig,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<HeatmapCounts, HeatmapError> {
    validate_inputs(images, labels)?;
    if !(config.eps.is_finite() && config.eps >= 0.0) {
        return Err(HeatmapError::Eps(config.eps));
    }
    let available = model.layer_names();
    if let Some(name) = config.layers.iter().find(|l| !available.contains(l)) {
        return Err(HeatmapError::Layer { name: name.clone(), available: available.join(", ") });
    }
    let size = images.size();
    let (n, channels, h, w) = (size[0], size[1], size[2], size[3]);
    let shape = Shape2::new(h as usize, w as usize);
    if let Some(&cell) = config.cells.iter().find(|&&c| !shape.contains(c)) {
        return Err(HeatmapError::Cell { cell, height: shape.h, width: shape.w });
    }
    let device = images.device();
    let cells = config.cells.len() as i64;
    let batch = config.batch.max(1) as i64;
    let block = n.min(batch).max(1);
    let group = (batch / block).max(1);

    // Everything the loops need, on the device once.
    let basis: Vec<f32> = config.cells.iter().flat_map(|&c| basis_image(shape, c)).collect();
    // Scaled by ε once: `r · (ε U)` equals `(r · U) · ε` bit for bit, as `r` is ±1.
    let basis = (Tensor::from_slice(&basis).view([cells, 1, 1, h, w]) * config.eps).to_device(device);
    let sign_values: Vec<f32> =
        config.cells.iter().flat_map(|&c| signs(config.seed, shape, c, n as usize, channels as usize)).collect();
    let signs = Tensor::from_slice(&sign_values).view([cells, n, channels, 1, 1]).to_device(device);
    let labels_t = Tensor::from_slice(labels).to_device(device);
    let scratch = Tensor::empty([group * block, channels, h, w], (Kind::Float, device));

    let wanted = &config.layers;
    let wrong = Tensor::zeros([cells], (Kind::Int64, device));
    let mut clean_wrong = Tensor::zeros([], (Kind::Int64, device));
    // Images whose logits are not all finite (argmax of NaN is an arbitrary class): counted on the
    // device, read once at the end.
    let mut non_finite = Tensor::zeros([], (Kind::Int64, device));
    let mut distances: Vec<Tensor> = wanted.iter().map(|_| Tensor::zeros([cells], (Kind::Double, device))).collect();
    let total = (cells * n) as u64;
    let mut done = 0u64;
    let max_label = labels.iter().copied().max().unwrap_or(0);

    tch::no_grad(|| -> Result<(), HeatmapError> {
        let mut start = 0;
        while start < n {
            let m = block.min(n - start);
            let x = images.narrow(0, start, m);
            let y = labels_t.narrow(0, start, m);
            let (clean_logits, clean_layers) = forward(model, &x, wanted)?;
            let out = clean_logits.size();
            if out.len() != 2 || out[0] != m {
                return Err(HeatmapError::Output(out));
            }
            if out[1] <= max_label {
                return Err(HeatmapError::Classes { outputs: out[1], max_label });
            }
            clean_wrong += clean_logits.argmax(-1, false).ne_tensor(&y).sum(Kind::Int64);
            non_finite += broken_rows(&clean_logits);

            let mut first = 0;
            while first < cells {
                let k = group.min(cells - first);
                let u = basis.narrow(0, first, k);
                let r = signs.narrow(0, first, k).narrow(1, start, m);
                // `clamp(x + r·εU, 0, 1)` written in place into the reused buffer: no allocation per
                // forward pass (a fresh multi-MB tensor each time made glibc map and unmap pages, which
                // cost up to half the throughput of small models). Same values as the plain expression.
                let perturbed = scratch.narrow(0, 0, k * m);
                let mut copies = perturbed.view([k, m, channels, h, w]);
                // One pass for `x + r·εU` (two passes over a 38 MB buffer at 224 × 224 cost a
                // quarter of a cheap model's time), then the clamp in place.
                let _ = x.unsqueeze(0).addcmul_out(&copies, &r, &u);
                let _ = copies.clamp_(0.0, 1.0);
                let (logits, layers) = forward(model, &perturbed, wanted)?;
                non_finite += broken_rows(&logits);
                let misses = logits.argmax(-1, false).view([k, m]).ne_tensor(&y.unsqueeze(0)).sum_dim_intlist(
                    1,
                    false,
                    Kind::Int64,
                );
                let _ = wrong.narrow(0, first, k).g_add_(&misses);
                for ((acc, clean), pert) in distances.iter_mut().zip(&clean_layers).zip(&layers) {
                    let d = cosine_distance(&pert.view([k, m, -1]), clean);
                    let _ = acc.narrow(0, first, k).g_add_(&d.sum_dim_intlist(1, false, Kind::Double));
                }
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
        return Err(HeatmapError::NonFinite { count, total: n as u64 * (cells as u64 + 1) });
    }
    let to_stats = |t: &Tensor, n: u64| -> Vec<(Cell, CellStat)> {
        let sums = Vec::<f64>::try_from(t.to_kind(Kind::Double).to_device(Device::Cpu)).expect("counts");
        config.cells.iter().zip(sums).map(|(&c, sum)| (c, CellStat { sum, n })).collect()
    };
    Ok(HeatmapCounts {
        images: n as usize,
        clean: CellStat { sum: i64::try_from(&clean_wrong).expect("count") as f64, n: n as u64 },
        error: to_stats(&wrong, n as u64),
        layers: wanted.iter().cloned().zip(distances.iter().map(|d| to_stats(d, n as u64))).collect(),
    })
}

/// Logits and the requested layers' responses, flattened per image, in `wanted`'s order, in
/// fp32 whatever the model computes in (a no-op for an fp32 model), so the cosine sums and the
/// argmax are the same code at every precision.
pub(crate) fn forward(
    model: &dyn Classifier,
    x: &Tensor,
    wanted: &[String],
) -> Result<(Tensor, Vec<Tensor>), ForwardError> {
    if wanted.is_empty() {
        return Ok((model.logits(x, false)?.to_kind(Kind::Float), Vec::new()));
    }
    let mut seen: Vec<Option<Tensor>> = wanted.iter().map(|_| None).collect();
    let logits = model.forward_named(x, false, &mut |name, t| {
        if let Some(i) = wanted.iter().position(|w| w == name) {
            seen[i] = Some(t.flatten(1, -1).to_kind(Kind::Float));
        }
    })?;
    let logits = logits.to_kind(Kind::Float);
    // A layer the model listed but did not report this time (a TorchScript `layers()` whose
    // keys depend on the input) is the model's error, not a panic.
    let layers = seen
        .into_iter()
        .zip(wanted)
        .map(|(t, name)| t.ok_or_else(|| ForwardError(format!("the model did not report its layer {name:?}"))))
        .collect::<Result<_, _>>()?;
    Ok((logits, layers))
}

/// `1 − cos(a, b)` per row for `a [k, m, D]` against `b [m, D]`, with SCIENCE.md §8's guard: the
/// cosine of two zero vectors is 1, of one zero vector 0.
fn cosine_distance(a: &Tensor, b: &Tensor) -> Tensor {
    let b = b.unsqueeze(0);
    let dot = (a * &b).sum_dim_intlist(-1, false, Kind::Float);
    let na = a.square().sum_dim_intlist(-1, false, Kind::Float).sqrt();
    let nb = b.square().sum_dim_intlist(-1, false, Kind::Float).sqrt();
    let denom = &na * &nb;
    let both_zero = na.eq(0.0).logical_and(&nb.eq(0.0)).to_kind(Kind::Float);
    let cos = (dot / denom.clamp_min(f64::MIN_POSITIVE)).where_self(&denom.gt(0.0), &both_zero);
    1.0 - cos
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{build, Arch, ModelConfig};
    use freqsweep_common::bands::Band;
    use freqsweep_common::syn::{self, Split, SynConfig};
    use tch::nn;

    /// `logits = W x + b`, flattened input.
    struct Linear {
        w: Tensor,
        b: Tensor,
    }

    impl Classifier for Linear {
        // Test doubles of one fixed computation.
        fn set_numerics(&mut self, _: crate::models::Numerics) {}

        fn forward_named(
            &self,
            x: &Tensor,
            _: bool,
            sink: &mut dyn FnMut(&str, &Tensor),
        ) -> Result<Tensor, ForwardError> {
            let logits = x.flatten(1, -1).matmul(&self.w.tr()) + &self.b;
            sink("fc", &logits);
            Ok(logits)
        }
        fn layer_names(&self) -> Vec<String> {
            vec!["fc".into()]
        }
    }

    /// A model that ignores its input.
    struct Constant;

    impl Classifier for Constant {
        // Test doubles of one fixed computation.
        fn set_numerics(&mut self, _: crate::models::Numerics) {}

        fn forward_named(
            &self,
            x: &Tensor,
            _: bool,
            sink: &mut dyn FnMut(&str, &Tensor),
        ) -> Result<Tensor, ForwardError> {
            let n = x.size()[0];
            let logits = Tensor::from_slice(&[0.1f32, 0.7, 0.2, 0.0]).view([1, 4]).repeat([n, 1]);
            sink("fc", &logits);
            Ok(logits)
        }
        fn layer_names(&self) -> Vec<String> {
            vec!["fc".into()]
        }
    }

    /// A broken model: its logits are NaN.
    struct NotANumber;

    impl Classifier for NotANumber {
        // Test doubles of one fixed computation.
        fn set_numerics(&mut self, _: crate::models::Numerics) {}

        fn forward_named(
            &self,
            x: &Tensor,
            _: bool,
            sink: &mut dyn FnMut(&str, &Tensor),
        ) -> Result<Tensor, ForwardError> {
            let logits = Tensor::full([x.size()[0], 4], f64::NAN, (Kind::Float, Device::Cpu));
            sink("fc", &logits);
            Ok(logits)
        }
        fn layer_names(&self) -> Vec<String> {
            vec!["fc".into()]
        }
    }

    fn test_images(count: usize) -> (Tensor, Vec<i64>) {
        let config = SynConfig { train: 0, test: count, ..SynConfig::new(Band::new(2).unwrap(), 9) };
        let data = syn::generate(&config, Split::Test);
        (crate::eval::images_tensor(&data, Device::Cpu), data.labels)
    }

    fn all_cells() -> Vec<Cell> {
        Shape2::new(32, 32).heatmap_cells()
    }

    #[test]
    fn a_model_that_ignores_its_input_has_a_flat_map() {
        let (x, y) = test_images(20);
        let config = HeatmapConfig { eps: 4.0, cells: all_cells(), layers: vec!["fc".into()], seed: 1, batch: 64 };
        let counts = compute(&Constant, &x, &y, &config, &mut |_, _| {}).unwrap();
        let clean = counts.clean.mean();
        // Constant predicts class 1: the error is the fraction of other labels, at every cell.
        let expected = y.iter().filter(|&&l| l != 1).count() as f64 / 20.0;
        assert_eq!(clean, expected);
        assert_eq!(counts.error.len(), 514);
        assert!(counts.error.iter().all(|(_, s)| s.mean() == clean && s.n == 20));
        assert!(counts.layers["fc"].iter().all(|(_, s)| s.sum.abs() < 1e-6), "logits never move");
    }

    #[test]
    fn a_linear_model_matches_the_definition_computed_directly() {
        let (x, y) = test_images(24);
        tch::manual_seed(3);
        let model = Linear {
            w: Tensor::randn([4, 3 * 32 * 32], (Kind::Float, Device::Cpu)) * 0.05,
            b: Tensor::zeros([4], (Kind::Float, Device::Cpu)),
        };
        let shape = Shape2::new(32, 32);
        let cells = [
            Cell::new(0, 0),
            Cell::new(-16, -16),
            Cell::new(-16, 0),
            Cell::new(-3, 5),
            Cell::new(-1, -15),
            Cell::new(0, 7),
        ];
        let cells: Vec<Cell> = cells.iter().map(|&c| shape.canonical(c)).collect();
        let eps = 20.0;
        let config = HeatmapConfig { eps, cells: cells.clone(), layers: vec![], seed: 42, batch: 50 };
        let counts = compute(&model, &x, &y, &config, &mut |_, _| {}).unwrap();

        // The definition, in f64 on the host, image by image.
        let pixels = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
        let weights = Vec::<f32>::try_from(model.w.flatten(0, -1)).unwrap();
        let plane = 32 * 32;
        let mut margins = Vec::new();
        for (ci, &cell) in cells.iter().enumerate() {
            let basis = basis_image(shape, cell);
            let r = signs(42, shape, cell, 24, 3);
            let mut wrong = 0u64;
            for i in 0..24 {
                let mut logits = [0f64; 4];
                for ch in 0..3 {
                    for p in 0..plane {
                        let v = f64::from(pixels[(i * 3 + ch) * plane + p])
                            + eps * f64::from(r[i * 3 + ch]) * f64::from(basis[p]);
                        let v = v.clamp(0.0, 1.0);
                        for (k, logit) in logits.iter_mut().enumerate() {
                            *logit += f64::from(weights[k * 3 * plane + ch * plane + p]) * v;
                        }
                    }
                }
                let mut sorted = logits;
                sorted.sort_by(|a, b| b.total_cmp(a));
                margins.push(sorted[0] - sorted[1]);
                let predicted = (0..4).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap() as i64;
                wrong += u64::from(predicted != y[i]);
            }
            assert_eq!(counts.error[ci], (cell, CellStat { sum: wrong as f64, n: 24 }), "cell {cell:?}");
        }
        // The comparison is only meaningful if no prediction sat on a float-rounding tie.
        assert!(margins.iter().all(|&m| m > 1e-4), "a near-tie makes this test fragile; change the seed");
        let distinct: std::collections::BTreeSet<u64> = counts.error.iter().map(|(_, s)| s.sum as u64).collect();
        assert!(distinct.len() > 1, "perturbations change predictions differently per cell");
    }

    #[test]
    fn chunks_and_batch_sizes_do_not_change_the_map() {
        let (x, y) = test_images(12);
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs, &ModelConfig::new(Arch::Tiny, 4));
        let cells: Vec<Cell> = all_cells().into_iter().step_by(9).collect();
        let layers = vec!["conv1".to_string(), "fc".to_string()];
        let whole = HeatmapConfig { eps: 6.0, cells: cells.clone(), layers: layers.clone(), seed: 8, batch: 48 };
        let full = compute(model.as_ref(), &x, &y, &whole, &mut |_, _| {}).unwrap();
        let mut merged_error = Vec::new();
        let mut merged_fc = Vec::new();
        for (part, batch) in [(&cells[..20], 5usize), (&cells[20..], 200)] {
            let config = HeatmapConfig { cells: part.to_vec(), batch, ..whole.clone() };
            let counts = compute(model.as_ref(), &x, &y, &config, &mut |_, _| {}).unwrap();
            merged_error.extend(counts.error);
            merged_fc.extend(counts.layers["fc"].clone());
        }
        assert_eq!(full.error, merged_error);
        for ((c1, a), (c2, b)) in full.layers["fc"].iter().zip(&merged_fc) {
            assert_eq!(c1, c2);
            assert!((a.sum - b.sum).abs() < 1e-4 * a.sum.abs().max(1.0), "{c1:?}: {} vs {}", a.sum, b.sum);
        }
        assert!(full.layers["conv1"].iter().all(|(_, s)| s.sum > 0.0), "perturbations move conv1");
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let (x, y) = test_images(8);
        let config = HeatmapConfig { eps: 4.0, cells: vec![Cell::new(0, 1)], layers: vec![], seed: 1, batch: 8 };
        let err = |x: &Tensor, y: &[i64], c: &HeatmapConfig| {
            compute(&Constant, x, y, c, &mut |_, _| {}).unwrap_err().to_string()
        };
        assert!(err(&(&x * 2.0), &y, &config).contains("[0, 1]"));
        assert!(err(&x, &y[..7], &config).contains("7 labels for 8 images"));
        let big: Vec<i64> = y.iter().map(|l| l + 4).collect();
        assert!(err(&x, &big, &config).contains("outputs 4 values per image but the labels go up to"));
        let layered = HeatmapConfig { layers: vec!["layer9".into()], ..config.clone() };
        assert!(err(&x, &y, &layered).contains("unknown layer \"layer9\"; this model has: fc"));
        let outside = HeatmapConfig { cells: vec![Cell::new(16, 0)], ..config.clone() };
        assert!(err(&x, &y, &outside).contains("outside the 32x32 spectrum"));
        let none = Tensor::zeros([0, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert!(err(&none, &[], &config).contains("no test images"), "an empty split is an error, not a NaN map");
        let broken = compute(&NotANumber, &x, &y, &config, &mut |_, _| {}).unwrap_err().to_string();
        assert!(broken.contains("NaN or infinite for 16 of 16 images"), "{broken}");
    }

    #[test]
    fn signs_are_balanced_and_depend_only_on_cell_and_image() {
        let shape = Shape2::new(32, 32);
        let a = signs(7, shape, Cell::new(-2, 3), 1000, 3);
        let b = signs(7, shape, Cell::new(-2, 3), 10, 3);
        assert_eq!(&a[..30], &b[..], "a prefix of images gets the same signs");
        let plus = a.iter().filter(|&&s| s > 0.0).count();
        assert!((1300..1700).contains(&plus), "{plus} of 3000 positive");
        assert_ne!(a, signs(7, shape, Cell::new(-2, 4), 1000, 3));
        assert_ne!(a, signs(8, shape, Cell::new(-2, 3), 1000, 3));
    }
}
