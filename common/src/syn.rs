//! The frequency-controlled synthetic data sets `Syn_d` (SCIENCE.md §5), generated exactly as
//! specified there:
//!
//! - 4 classes over bands `a, b, c` (the three bands other than `d`) and `d`:
//!   class 0 = `a,b,c` + special pattern, class 1 = `a,b,c`, class 2 = `a,b,c,d`, class 3 = `d`;
//!   the special-pattern cells `(k, k)`, `(−k, −k)`, `k ∈ {1, 3, …, 15}` are zero except in class 0.
//! - Every non-special half-plane cell of a used band `b` gets `w_b·A·e^{iφ}`, `A ~ U(0,1)`,
//!   `φ ~ U(0, 2π)`, its conjugate partner the conjugate, `w_b = sqrt(3 / n_b)`, so each band carries
//!   the same expected energy (1). Self-conjugate cells must be real: they get `w_b·A·cos φ` (our
//!   choice; SCIENCE.md leaves it open, see ARCHITECTURE.md).
//! - Class 0's 16 special cells get amplitude `sqrt(E_sp / 16)` with random phases (conjugate pairs
//!   consistent), `E_sp = 0.5` by default.
//! - Per channel independently; inverse DFT, real part; then one affine map of the whole image (all
//!   channels) onto `[0, 1]`.
//!
//! Determinism: image `i` of a split draws from its own ChaCha8 stream derived from `(seed, split, i)`,
//! so images can be generated in parallel and any subset regenerated; labels are balanced
//! (`i mod 4` before shuffling) and shuffled with the seed.

use crate::bands::{Band, BandLayout, BandSet};
use crate::dataset::Dataset;
use crate::spectrum::{Cell, Fft2, FftScratch, Shape2};
use num_complex::Complex;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

pub const CLASSES: usize = 4;
/// The side of the poster's images (SCIENCE.md §5); [`SynConfig::size`] generalises it.
pub const IMAGE_SIZE: usize = 32;
pub const CHANNELS: usize = 3;

/// Parameters of one `Syn_d` data set.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SynConfig {
    /// The band `d` of class 3 (the data set's name: `Syn_d`).
    pub band: Band,
    pub train: usize,
    pub test: usize,
    pub seed: u64,
    /// Energy of the special pattern relative to one band (`E_sp`).
    pub special_energy: f64,
    /// The bands, in cells of this size's spectrum (for other sizes than 32 the spec scales the
    /// radii with the Nyquist radius, SCIENCE.md §4).
    pub layout: BandLayout,
    /// Images are `size × size` (32 in the poster); bands scale with the layout, the special
    /// pattern is `(k, k)` for every odd `k` below `size / 2`.
    #[serde(default = "default_size", skip_serializing_if = "is_default_size")]
    pub size: usize,
}

fn default_size() -> usize {
    IMAGE_SIZE
}

fn is_default_size(size: &usize) -> bool {
    *size == IMAGE_SIZE
}

impl SynConfig {
    /// SCIENCE.md defaults: 10 000 train / 2 000 test images, `E_sp = 0.5`, default bands.
    pub fn new(band: Band, seed: u64) -> Self {
        SynConfig {
            band,
            train: 10_000,
            test: 2_000,
            seed,
            special_energy: 0.5,
            layout: BandLayout::default(),
            size: IMAGE_SIZE,
        }
    }

    /// `Syn_4`, or `Syn_4_64px` for another size than the poster's 32.
    pub fn name(&self) -> String {
        match self.size {
            IMAGE_SIZE => format!("Syn_{}", self.band.index()),
            size => format!("Syn_{}_{size}px", self.band.index()),
        }
    }

    pub fn shape(&self) -> Shape2 {
        Shape2::new(self.size, self.size)
    }

    /// The band set of each class (special pattern aside).
    pub fn class_bands(&self) -> [BandSet; CLASSES] {
        let abc = BandSet::ALL.without(self.band);
        [abc, abc, BandSet::ALL, BandSet::from_bands([self.band])]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Test,
}

impl Split {
    fn stream(self) -> u64 {
        match self {
            Split::Train => 1,
            Split::Test => 2,
        }
    }
}

/// The special-pattern cells for `shape`: `(k, k)` and `(−k, −k)` for odd `k` below `min(H, W)/2`.
pub fn special_pattern(shape: Shape2) -> Vec<Cell> {
    let limit = (shape.h.min(shape.w) / 2) as i32;
    (1..limit).step_by(2).flat_map(|k| [Cell::new(k, k), Cell::new(-k, -k)]).collect()
}

/// Generate one split.
pub fn generate(config: &SynConfig, split: Split) -> Dataset {
    let n = match split {
        Split::Train => config.train,
        Split::Test => config.test,
    };
    let shape = config.shape();
    let mut labels: Vec<i64> = (0..n).map(|i| (i % CLASSES) as i64).collect();
    let mut shuffle_rng = rng_for(config.seed, split, u64::MAX);
    labels.shuffle(&mut shuffle_rng);

    let plan = Plan::new(config, shape);
    let image_len = CHANNELS * shape.len();
    let mut images = vec![0.0f32; n * image_len];
    images.par_chunks_mut(image_len).zip(labels.par_iter()).enumerate().for_each_init(
        || {
            let fft = Fft2::new(shape);
            let scratch = fft.scratch();
            (fft, scratch)
        },
        |(fft, scratch), (i, (out, &label))| {
            let mut rng = rng_for(config.seed, split, i as u64);
            plan.sample(fft, scratch, label as usize, &mut rng, out);
        },
    );
    Dataset { dims: [n, CHANNELS, shape.h, shape.w], images, labels }
}

fn rng_for(seed: u64, split: Split, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    // Streams are independent sequences of one key: one per (split, image).
    rng.set_stream(split.stream() << 48 ^ index);
    rng
}

/// Everything about the sampling that does not depend on the image: which half-plane cells each
/// class draws, with their band weights.
struct Plan {
    shape: Shape2,
    /// Per class: (canonical cell, weight) for every non-special cell of its bands.
    cells: [Vec<(Cell, f32)>; CLASSES],
    /// Canonical special cells and their amplitude (class 0 only).
    special: Vec<Cell>,
    special_amplitude: f32,
}

impl Plan {
    fn new(config: &SynConfig, shape: Shape2) -> Self {
        let sizes = config.layout.band_sizes(shape);
        let special_all = special_pattern(shape);
        let special: Vec<Cell> = special_all.iter().copied().filter(|&c| shape.canonical(c) == c).collect();
        let half_plane = shape.heatmap_cells();
        let cells = config.class_bands().map(|set| {
            half_plane
                .iter()
                .filter(|c| !special_all.contains(c))
                .filter_map(|&c| {
                    let band = config.layout.band_of(c)?;
                    set.contains(band).then(|| (c, (3.0 / sizes[usize::from(band.index() - 1)] as f64).sqrt() as f32))
                })
                .collect()
        });
        let special_amplitude = (config.special_energy / special_all.len() as f64).sqrt() as f32;
        Plan { shape, cells, special, special_amplitude }
    }

    fn sample(&self, fft: &Fft2, scratch: &mut FftScratch, class: usize, rng: &mut ChaCha8Rng, out: &mut [f32]) {
        let shape = self.shape;
        let mut spectrum = vec![Complex::<f32>::default(); shape.len()];
        for channel in out.chunks_mut(shape.len()) {
            spectrum.iter_mut().for_each(|z| *z = Complex::default());
            for &(cell, weight) in &self.cells[class] {
                let amplitude = weight * rng.random::<f32>();
                let phase = rng.random::<f32>() * std::f32::consts::TAU;
                self.set_pair(&mut spectrum, cell, amplitude, phase);
            }
            if class == 0 {
                for &cell in &self.special {
                    let phase = rng.random::<f32>() * std::f32::consts::TAU;
                    self.set_pair(&mut spectrum, cell, self.special_amplitude, phase);
                }
            }
            fft.inverse(&mut spectrum, scratch);
            for (o, z) in channel.iter_mut().zip(&spectrum) {
                *o = z.re;
            }
        }
        // One affine map of the whole image onto [0, 1]: changes only DC and a common scale.
        let (lo, hi) = out.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
        let range = hi - lo;
        for x in out.iter_mut() {
            *x = if range > 0.0 { ((*x - lo) / range).clamp(0.0, 1.0) } else { 0.5 };
        }
    }

    fn set_pair(&self, spectrum: &mut [Complex<f32>], cell: Cell, amplitude: f32, phase: f32) {
        let shape = self.shape;
        let partner = shape.conjugate(cell);
        if partner == cell {
            spectrum[shape.dft_index(cell)] = Complex::new(amplitude * phase.cos(), 0.0);
        } else {
            let z = Complex::from_polar(amplitude, phase);
            spectrum[shape.dft_index(cell)] = z;
            spectrum[shape.dft_index(partner)] = z.conj();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spectra_energy(d: &Dataset, i: usize) -> Vec<f64> {
        // Per-cell non-DC energy summed over channels, unshifted layout.
        let shape = Shape2::new(d.dims[2], d.dims[3]);
        let fft = Fft2::new(shape);
        let mut scratch = fft.scratch();
        let mut energy = vec![0.0; shape.len()];
        for ch in d.image(i).chunks(shape.len()) {
            let mut z: Vec<Complex<f32>> = ch.iter().map(|&x| Complex::new(x, 0.0)).collect();
            fft.forward(&mut z, &mut scratch);
            for (e, v) in energy.iter_mut().zip(&z) {
                *e += f64::from(v.norm_sqr());
            }
        }
        energy[0] = 0.0;
        energy
    }

    #[test]
    fn special_pattern_has_sixteen_cells() {
        let cells = special_pattern(Shape2::new(32, 32));
        assert_eq!(cells.len(), 16);
        assert!(cells.contains(&Cell::new(15, 15)) && cells.contains(&Cell::new(-1, -1)));
    }

    #[test]
    fn every_class_puts_its_energy_where_science_md_says() {
        check_class_energies(IMAGE_SIZE, 40);
    }

    /// Syn_d generalised to 64 × 64 (SCIENCE.md §4): the bands scaled with the Nyquist radius
    /// (8, 16, 24), the special pattern at every odd `k` below 32.
    #[test]
    fn at_64_by_64_the_bands_scale_and_the_pattern_spans_the_diagonal() {
        let shape = Shape2::new(64, 64);
        assert_eq!(special_pattern(shape).len(), 32);
        assert!(special_pattern(shape).contains(&Cell::new(31, 31)));
        check_class_energies(64, 12);
    }

    fn check_class_energies(size: usize, images: usize) {
        let shape = Shape2::new(size, size);
        let layout = crate::bands::BandRadii::default().layout(shape).unwrap();
        for d in 1..=4 {
            let config = SynConfig { train: 0, test: images, size, layout, ..SynConfig::new(Band::new(d).unwrap(), 7) };
            let data = generate(&config, Split::Test);
            assert_eq!(data.dims, [images, CHANNELS, size, size]);
            assert!(data.images.iter().all(|x| (0.0..=1.0).contains(x)));
            let special = special_pattern(shape);
            let bands = config.class_bands();
            for i in 0..data.len() {
                let class = data.labels[i] as usize;
                let energy = spectra_energy(&data, i);
                let total: f64 = energy.iter().sum();
                let (mut allowed, mut on_special) = (0.0, 0.0);
                for cell in shape.cells() {
                    let e = energy[shape.dft_index(cell)];
                    let is_special = special.contains(&cell);
                    if is_special {
                        on_special += e;
                    }
                    let in_band = config.layout.band_of(cell).is_some_and(|b| bands[class].contains(b));
                    if (in_band && !is_special) || (class == 0 && is_special) {
                        allowed += e;
                    }
                }
                assert!(
                    allowed / total >= 0.99,
                    "Syn_{d} class {class}: only {:.4} of the energy is allowed",
                    allowed / total
                );
                if class == 0 {
                    assert!(
                        on_special / total > 0.05,
                        "Syn_{d} class 0: special pattern carries {:.4}",
                        on_special / total
                    );
                } else {
                    assert!(on_special / total < 1e-6, "Syn_{d} class {class}: special pattern not empty");
                }
            }
        }
    }

    #[test]
    fn bands_carry_equal_expected_energy() {
        // Class 2 uses all four bands: their mean energies agree within sampling noise.
        let shape = Shape2::new(IMAGE_SIZE, IMAGE_SIZE);
        let config = SynConfig { train: 0, test: 200, ..SynConfig::new(Band::new(4).unwrap(), 3) };
        let data = generate(&config, Split::Test);
        let mut per_band = [0.0f64; 4];
        for i in (0..data.len()).filter(|&i| data.labels[i] == 2) {
            let energy = spectra_energy(&data, i);
            let total: f64 = energy.iter().sum();
            for cell in shape.cells() {
                if let Some(b) = config.layout.band_of(cell) {
                    per_band[usize::from(b.index() - 1)] += energy[shape.dft_index(cell)] / total;
                }
            }
        }
        let mean = per_band.iter().sum::<f64>() / 4.0;
        for (b, e) in per_band.iter().enumerate() {
            assert!((e / mean - 1.0).abs() < 0.1, "band {} has {:.3} of the mean energy", b + 1, e / mean);
        }
    }

    #[test]
    fn deterministic_per_seed_and_balanced() {
        let config = SynConfig { train: 20, test: 8, ..SynConfig::new(Band::new(1).unwrap(), 11) };
        let a = generate(&config, Split::Train);
        assert_eq!(a, generate(&config, Split::Train));
        assert_ne!(a.images, generate(&SynConfig { seed: 12, ..config.clone() }, Split::Train).images);
        assert_ne!(a.images[..3072], generate(&config, Split::Test).images[..3072]);
        for class in 0..4 {
            assert_eq!(a.labels.iter().filter(|&&l| l == class).count(), 5);
        }
        assert_ne!(a.labels, (0..20).map(|i| i % 4).collect::<Vec<i64>>(), "labels are shuffled");
    }
}
