//! Centred 2-D spectra, frequency cells and the Fourier basis (SCIENCE.md §1–2).
//!
//! Conventions, binding for the whole project:
//! - A frequency is a [`Cell`] `(u, v)` in centred coordinates, `u` vertical (rows), `v` horizontal,
//!   `u ∈ [-⌊H/2⌋, ⌈H/2⌉-1]`; it sits at row `u + ⌊H/2⌋`, column `v + ⌊W/2⌋` of a centred
//!   (`fftshift`) map, and at row `u mod H`, column `v mod W` of an unshifted DFT.
//! - `(u, v)` and `(-u, -v)` form a conjugate pair; a real image's spectrum is the same on both up to
//!   conjugation, so a heatmap computes one cell per pair, the **canonical** one: the member with the
//!   smaller centred `(row, col)` index. Self-conjugate cells (`u, v ∈ {0, -H/2}`) are their own pair.
//!
//! FFTs go through [`Fft2`], which builds its `rustfft` plans once per shape and is reused.

use num_complex::Complex;
use rand::RngCore;
use rustfft::{Fft, FftPlanner};
use std::sync::Arc;

/// A frequency in centred coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Cell {
    pub u: i32,
    pub v: i32,
}

impl Cell {
    pub const fn new(u: i32, v: i32) -> Self {
        Cell { u, v }
    }

    /// Euclidean distance from DC, `sqrt(u² + v²)`.
    pub fn radius(self) -> f64 {
        f64::from(self.u).hypot(f64::from(self.v))
    }
}

/// The shape of an image plane (`H × W`), with the coordinate conversions that depend on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Shape2 {
    pub h: usize,
    pub w: usize,
}

impl Shape2 {
    pub const fn new(h: usize, w: usize) -> Self {
        Shape2 { h, w }
    }

    pub const fn len(self) -> usize {
        self.h * self.w
    }

    pub const fn is_empty(self) -> bool {
        self.h == 0 || self.w == 0
    }

    fn u_min(self) -> i32 {
        -((self.h / 2) as i32)
    }

    fn v_min(self) -> i32 {
        -((self.w / 2) as i32)
    }

    /// Whether `cell` lies in the centred coordinate range of this shape.
    pub fn contains(self, cell: Cell) -> bool {
        let u_max = self.u_min() + self.h as i32 - 1;
        let v_max = self.v_min() + self.w as i32 - 1;
        (self.u_min()..=u_max).contains(&cell.u) && (self.v_min()..=v_max).contains(&cell.v)
    }

    /// Flat index of `cell` in a centred (`fftshift`) row-major map.
    pub fn centred_index(self, cell: Cell) -> usize {
        debug_assert!(self.contains(cell), "{cell:?} outside {self:?}");
        (cell.u - self.u_min()) as usize * self.w + (cell.v - self.v_min()) as usize
    }

    /// The cell at a flat index of a centred map.
    pub fn cell_at_centred(self, index: usize) -> Cell {
        Cell::new((index / self.w) as i32 + self.u_min(), (index % self.w) as i32 + self.v_min())
    }

    /// Flat index of `cell` in an unshifted DFT array (DC at index 0).
    pub fn dft_index(self, cell: Cell) -> usize {
        let row = cell.u.rem_euclid(self.h as i32) as usize;
        let col = cell.v.rem_euclid(self.w as i32) as usize;
        row * self.w + col
    }

    /// The cell at a flat index of an unshifted DFT array.
    pub fn cell_at_dft(self, index: usize) -> Cell {
        let (row, col) = ((index / self.w) as i32, (index % self.w) as i32);
        let wrap = |k: i32, n: usize, min: i32| {
            if k > min + n as i32 - 1 {
                k - n as i32
            } else {
                k
            }
        };
        Cell::new(wrap(row, self.h, self.u_min()), wrap(col, self.w, self.v_min()))
    }

    /// The conjugate partner `(-u, -v)`, wrapped back into range.
    pub fn conjugate(self, cell: Cell) -> Cell {
        self.cell_at_dft(self.dft_index(Cell::new(-cell.u, -cell.v)))
    }

    pub fn is_self_conjugate(self, cell: Cell) -> bool {
        self.conjugate(cell) == cell
    }

    /// The representative of `cell`'s conjugate pair (smaller centred index).
    pub fn canonical(self, cell: Cell) -> Cell {
        let partner = self.conjugate(cell);
        if self.centred_index(partner) < self.centred_index(cell) {
            partner
        } else {
            cell
        }
    }

    /// Every cell in centred order.
    pub fn cells(self) -> impl Iterator<Item = Cell> {
        (0..self.len()).map(move |i| self.cell_at_centred(i))
    }

    /// The cells a heatmap must compute: one per conjugate pair, in centred order
    /// (`(H·W + s) / 2` of them, `s` the number of self-conjugate cells; 514 for 32 × 32).
    pub fn heatmap_cells(self) -> Vec<Cell> {
        self.cells().filter(|&c| self.canonical(c) == c).collect()
    }
}

/// Move a row-major unshifted array into centred layout (`fftshift`).
pub fn fftshift<T: Copy>(shape: Shape2, dft: &[T]) -> Vec<T> {
    assert_eq!(dft.len(), shape.len(), "fftshift: array length does not match {shape:?}");
    (0..shape.len()).map(|i| dft[shape.dft_index(shape.cell_at_centred(i))]).collect()
}

/// Move a centred array back into unshifted DFT layout (`ifftshift`).
pub fn ifftshift<T: Copy>(shape: Shape2, centred: &[T]) -> Vec<T> {
    assert_eq!(centred.len(), shape.len(), "ifftshift: array length does not match {shape:?}");
    (0..shape.len()).map(|i| centred[shape.centred_index(shape.cell_at_dft(i))]).collect()
}

/// Reusable 2-D FFT plans for one shape. Transforms work in place on a row-major `H × W` buffer and
/// need a scratch buffer of the same length (see [`Fft2::scratch`]); neither allocates.
#[derive(Clone)]
pub struct Fft2 {
    shape: Shape2,
    row_fwd: Arc<dyn Fft<f32>>,
    row_inv: Arc<dyn Fft<f32>>,
    col_fwd: Arc<dyn Fft<f32>>,
    col_inv: Arc<dyn Fft<f32>>,
    scratch_len: usize,
}

impl std::fmt::Debug for Fft2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fft2").field("shape", &self.shape).finish()
    }
}

/// Scratch space for one thread's transforms.
pub struct FftScratch {
    transposed: Vec<Complex<f32>>,
    fft: Vec<Complex<f32>>,
}

impl Fft2 {
    pub fn new(shape: Shape2) -> Self {
        let mut planner = FftPlanner::<f32>::new();
        let row_fwd = planner.plan_fft_forward(shape.w);
        let row_inv = planner.plan_fft_inverse(shape.w);
        let col_fwd = planner.plan_fft_forward(shape.h);
        let col_inv = planner.plan_fft_inverse(shape.h);
        let scratch_len =
            [&row_fwd, &row_inv, &col_fwd, &col_inv].iter().map(|p| p.get_inplace_scratch_len()).max().unwrap_or(0);
        Fft2 { shape, row_fwd, row_inv, col_fwd, col_inv, scratch_len }
    }

    pub fn shape(&self) -> Shape2 {
        self.shape
    }

    pub fn scratch(&self) -> FftScratch {
        FftScratch {
            transposed: vec![Complex::default(); self.shape.len()],
            fft: vec![Complex::default(); self.scratch_len],
        }
    }

    /// Forward 2-D DFT (unnormalised, numpy's `fft2` convention), result in unshifted layout.
    pub fn forward(&self, data: &mut [Complex<f32>], scratch: &mut FftScratch) {
        self.transform(data, scratch, None, true);
    }

    /// Inverse 2-D DFT including the `1/(H·W)` factor (numpy's `ifft2`).
    pub fn inverse(&self, data: &mut [Complex<f32>], scratch: &mut FftScratch) {
        self.transform(data, scratch, None, false);
    }

    /// `ifft2(mask · fft2(data))` for a mask given in unshifted DFT layout, in one pass that skips
    /// two transposes (the mask is applied in the transposed domain). A real, conjugate-symmetric
    /// mask maps real images to real images, which [`crate::bands::BandFilter`] exploits to filter
    /// two channels per complex transform.
    pub fn filter(&self, data: &mut [Complex<f32>], scratch: &mut FftScratch, mask_transposed: &[f32]) {
        self.transform(data, scratch, Some(mask_transposed), true);
    }

    fn transform(&self, data: &mut [Complex<f32>], scratch: &mut FftScratch, mask_t: Option<&[f32]>, forward: bool) {
        let Shape2 { h, w } = self.shape;
        assert_eq!(data.len(), h * w, "Fft2: buffer length does not match {:?}", self.shape);
        let (row, col) = if forward { (&self.row_fwd, &self.col_fwd) } else { (&self.row_inv, &self.col_inv) };
        row.process_with_scratch(data, &mut scratch.fft);
        transpose(data, &mut scratch.transposed, h, w);
        col.process_with_scratch(&mut scratch.transposed, &mut scratch.fft);
        if let Some(mask_t) = mask_t {
            // Mask in the transposed domain, then run the inverse the same way back.
            for (x, &m) in scratch.transposed.iter_mut().zip(mask_t) {
                *x *= m;
            }
            self.col_inv.process_with_scratch(&mut scratch.transposed, &mut scratch.fft);
            transpose(&scratch.transposed, data, w, h);
            self.row_inv.process_with_scratch(data, &mut scratch.fft);
            scale(data, 1.0 / (h * w) as f32);
            return;
        }
        transpose(&scratch.transposed, data, w, h);
        if !forward {
            scale(data, 1.0 / (h * w) as f32);
        }
    }
}

fn scale(data: &mut [Complex<f32>], factor: f32) {
    for x in data {
        *x *= factor;
    }
}

/// Transpose a row-major `rows × cols` matrix into `out` (`cols × rows`).
fn transpose(input: &[Complex<f32>], out: &mut [Complex<f32>], rows: usize, cols: usize) {
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = input[r * cols + c];
        }
    }
}

/// The Fourier basis image `U_{u,v}` (SCIENCE.md §2): the real image whose DFT is 1 at `cell` and its
/// conjugate, scaled to unit L2 norm, row-major `H × W`. The inverse DFT of the two unit entries is
/// `cos(2π(u·m/H + v·n/W))` up to scale; it is evaluated in `f64` from per-row and per-column tables
/// (`cos(a+b) = cos a·cos b − sin a·sin b`, no trigonometry per pixel), then normalised. Tests check
/// it against the inverse-DFT definition.
pub fn basis_image(shape: Shape2, cell: Cell) -> Vec<f32> {
    assert!(shape.contains(cell), "basis_image: {cell:?} outside {shape:?}");
    // Both members of a pair give the same image; computing it from one makes them bit-identical.
    let cell = shape.canonical(cell);
    let tau = std::f64::consts::TAU;
    let table = |k: i32, n: usize| -> Vec<(f64, f64)> {
        (0..n).map(|i| (tau * f64::from(k) * i as f64 / n as f64).sin_cos()).map(|(s, c)| (c, s)).collect()
    };
    let (rows, cols) = (table(cell.u, shape.h), table(cell.v, shape.w));
    let mut out = Vec::with_capacity(shape.len());
    let mut energy = 0.0f64;
    for &(cr, sr) in &rows {
        for &(cc, sc) in &cols {
            let x = cr * cc - sr * sc;
            energy += x * x;
            out.push(x);
        }
    }
    let inv_norm = 1.0 / energy.sqrt();
    out.into_iter().map(|x| (x * inv_norm) as f32).collect()
}

/// The signs `r_ic ∈ {−1, +1}` of the perturbation `x + ε·r·U_{u,v}` (SCIENCE.md §2) for the first
/// `images` images with `channels` channels, image-major, as ±1.
///
/// Convention, shared by the worker's heatmaps and [`crate::corruption`]'s `fourier(u, v, ε)`: cell
/// `c` uses the ChaCha8 stream `centred_index(c)` of `seed`; image `i`, channel `ch` takes bit
/// `i·C + ch` of the stream's successive 64-bit words (1 → +1). A sign depends only on
/// `(seed, cell, i, ch)`, so chunking, batch size and image limits never change it.
pub fn signs(seed: u64, shape: Shape2, cell: Cell, images: usize, channels: usize) -> Vec<f32> {
    let mut rng = sign_stream(seed, shape, cell);
    let mut out = Vec::with_capacity(images.saturating_mul(channels));
    let mut word = 0u64;
    for bit in 0..images.saturating_mul(channels) {
        if bit % 64 == 0 {
            word = rng.next_u64();
        }
        out.push(if (word >> (bit % 64)) & 1 == 1 { 1.0 } else { -1.0 });
    }
    out
}

/// The one sign of [`signs`] for image `image`, channel `channel` of `channels`, without drawing the
/// signs of the images before it (the stream is seeked to the word that holds the bit).
pub fn sign_at(seed: u64, shape: Shape2, cell: Cell, image: u64, channel: usize, channels: usize) -> f32 {
    let bit = u128::from(image) * channels as u128 + channel as u128;
    let mut rng = sign_stream(seed, shape, cell);
    // `next_u64` reads two consecutive 32-bit words of the stream, so 64-bit word k starts at 2k.
    rng.set_word_pos(2 * (bit / 64));
    let word = rng.next_u64();
    if (word >> (bit % 64)) & 1 == 1 {
        1.0
    } else {
        -1.0
    }
}

fn sign_stream(seed: u64, shape: Shape2, cell: Cell) -> rand_chacha::ChaCha8Rng {
    use rand::SeedableRng;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(shape.centred_index(cell) as u64);
    rng
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive_dft(shape: Shape2, x: &[f64]) -> Vec<Complex<f64>> {
        let mut out = vec![Complex::default(); shape.len()];
        for (k, o) in out.iter_mut().enumerate() {
            let (ku, kv) = ((k / shape.w) as f64, (k % shape.w) as f64);
            for (i, &xi) in x.iter().enumerate() {
                let (m, n) = ((i / shape.w) as f64, (i % shape.w) as f64);
                let angle = -std::f64::consts::TAU * (ku * m / shape.h as f64 + kv * n / shape.w as f64);
                *o += Complex::from_polar(xi, angle);
            }
        }
        out
    }

    #[test]
    fn index_round_trips_and_dc_at_centre() {
        for shape in [Shape2::new(32, 32), Shape2::new(5, 8), Shape2::new(7, 3)] {
            for i in 0..shape.len() {
                assert_eq!(shape.centred_index(shape.cell_at_centred(i)), i);
                assert_eq!(shape.dft_index(shape.cell_at_dft(i)), i);
            }
            assert_eq!(shape.centred_index(Cell::new(0, 0)), (shape.h / 2) * shape.w + shape.w / 2);
            assert_eq!(shape.dft_index(Cell::new(0, 0)), 0);
        }
        let s = Shape2::new(32, 32);
        assert_eq!(s.cell_at_centred(0), Cell::new(-16, -16));
        assert_eq!(s.cell_at_centred(1023), Cell::new(15, 15));
    }

    #[test]
    fn heatmap_cells_cover_each_pair_once() {
        let s = Shape2::new(32, 32);
        let cells = s.heatmap_cells();
        assert_eq!(cells.len(), 514);
        let self_conj: Vec<Cell> = s.cells().filter(|&c| s.is_self_conjugate(c)).collect();
        assert_eq!(self_conj, vec![Cell::new(-16, -16), Cell::new(-16, 0), Cell::new(0, -16), Cell::new(0, 0)]);
        let mut covered = std::collections::HashSet::new();
        for &c in &cells {
            assert!(covered.insert(c));
            covered.insert(s.conjugate(c));
        }
        assert_eq!(covered.len(), 1024);
        for shape in [Shape2::new(5, 8), Shape2::new(7, 3)] {
            let n = shape.heatmap_cells().len();
            let s_count = shape.cells().filter(|&c| shape.is_self_conjugate(c)).count();
            assert_eq!(n, (shape.len() + s_count) / 2);
        }
    }

    #[test]
    fn fft_matches_naive_dft_and_inverts() {
        let shape = Shape2::new(6, 8);
        let x: Vec<f64> = (0..shape.len()).map(|i| ((i * 37 % 11) as f64) / 11.0).collect();
        let expected = naive_dft(shape, &x);
        let fft = Fft2::new(shape);
        let mut scratch = fft.scratch();
        let mut data: Vec<Complex<f32>> = x.iter().map(|&v| Complex::new(v as f32, 0.0)).collect();
        fft.forward(&mut data, &mut scratch);
        for (a, b) in data.iter().zip(&expected) {
            assert!((f64::from(a.re) - b.re).abs() < 1e-4 && (f64::from(a.im) - b.im).abs() < 1e-4);
        }
        fft.inverse(&mut data, &mut scratch);
        for (a, &b) in data.iter().zip(&x) {
            assert!((f64::from(a.re) - b).abs() < 1e-5 && a.im.abs() < 1e-5);
        }
    }

    #[test]
    fn basis_images_have_unit_norm_parseval_and_two_cells() {
        for shape in [Shape2::new(32, 32), Shape2::new(5, 8)] {
            let fft = Fft2::new(shape);
            let mut scratch = fft.scratch();
            for cell in shape.cells() {
                let b = basis_image(shape, cell);
                let energy: f64 = b.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
                assert!((energy - 1.0).abs() < 1e-5, "{cell:?} norm² {energy}");
                // U_{u,v} = U_{-u,-v}, bit for bit.
                assert!(b == basis_image(shape, shape.conjugate(cell)), "{cell:?} differs from its conjugate");
                let mut spec: Vec<Complex<f32>> = b.iter().map(|&x| Complex::new(x, 0.0)).collect();
                fft.forward(&mut spec, &mut scratch);
                // Parseval: Σ|X|² = H·W Σ|x|².
                let spec_energy: f64 = spec.iter().map(|c| f64::from(c.norm_sqr())).sum();
                assert!((spec_energy / shape.len() as f64 - energy).abs() < 1e-4);
                let pair = [shape.dft_index(cell), shape.dft_index(shape.conjugate(cell))];
                for (i, c) in spec.iter().enumerate() {
                    if !pair.contains(&i) {
                        assert!(c.norm() < 1e-3, "{cell:?} leaks energy into index {i}: {c}");
                    }
                }
            }
        }
    }

    #[test]
    fn basis_matches_inverse_dft_definition() {
        let shape = Shape2::new(8, 8);
        let fft = Fft2::new(shape);
        let mut scratch = fft.scratch();
        for cell in shape.cells() {
            let mut spec = vec![Complex::<f32>::default(); shape.len()];
            spec[shape.dft_index(cell)] = Complex::new(1.0, 0.0);
            spec[shape.dft_index(shape.conjugate(cell))] = Complex::new(1.0, 0.0);
            fft.inverse(&mut spec, &mut scratch);
            let norm = spec.iter().map(|c| c.re * c.re).sum::<f32>().sqrt();
            let closed = basis_image(shape, cell);
            for (a, b) in spec.iter().zip(&closed) {
                assert!((a.re / norm - b).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn shift_round_trip() {
        let shape = Shape2::new(5, 4);
        let x: Vec<usize> = (0..20).collect();
        let centred = fftshift(shape, &x);
        assert_eq!(centred[shape.centred_index(Cell::new(0, 0))], 0);
        assert_eq!(ifftshift(shape, &centred), x);
    }

    #[test]
    fn sign_at_seeks_to_the_sign_of_signs() {
        let shape = Shape2::new(32, 32);
        let cell = Cell::new(-3, 5);
        let all = signs(11, shape, cell, 70, 3);
        for image in [0usize, 1, 21, 22, 42, 69] {
            for ch in 0..3 {
                assert_eq!(sign_at(11, shape, cell, image as u64, ch, 3), all[image * 3 + ch], "image {image} ch {ch}");
            }
        }
        let plus = all.iter().filter(|&&s| s > 0.0).count();
        assert!((70..=140).contains(&plus), "{plus} of 210 signs positive");
        assert_ne!(all, signs(12, shape, cell, 70, 3));
    }
}
