//! Frequency bands and band filtering (SCIENCE.md §4–5).
//!
//! Bands by Euclidean radius `r = sqrt(u² + v²)` from DC: `B1: 0 < r ≤ 4`, `B2: 4 < r ≤ 8`,
//! `B3: 8 < r ≤ 12`, `B4: r > 12`; DC belongs to no band and is kept by every filter. The
//! boundaries are [`BandLayout`] so a spec can change them; the default is the one above.
//! A [`BandSet`] names a test-set variant (`B1234`, `B124`, …).

use crate::spectrum::{Cell, Fft2, Shape2};
use num_complex::Complex;
use rayon::prelude::*;
use std::fmt;
use std::str::FromStr;

/// One of the four radial bands, `B1` (lowest) … `B4` (highest).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Band(u8);

impl Band {
    pub const ALL: [Band; 4] = [Band(1), Band(2), Band(3), Band(4)];

    /// `index` in `1..=4`.
    pub fn new(index: u8) -> Result<Band, BandError> {
        if (1..=4).contains(&index) {
            Ok(Band(index))
        } else {
            Err(BandError::NoSuchBand(index.to_string()))
        }
    }

    pub fn index(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Band {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BandError {
    #[error("band set {0:?} must look like B1234 or B124: 'B' then band digits 1-4")]
    Syntax(String),
    #[error("there is no band {0}: bands are 1, 2, 3, 4")]
    NoSuchBand(String),
    #[error("band set {0:?} names band {1} twice")]
    Repeated(String, u8),
    #[error("band radii must be increasing and positive, got {0:?}")]
    BadRadii([f64; 3]),
    #[error("band fractions must be increasing, in (0, 1], got {0:?}")]
    BadFractions([f64; 3]),
    #[error("band radius {radius} exceeds the Nyquist radius {nyquist} of {h} × {w} images")]
    BeyondNyquist { radius: f64, nyquist: f64, h: usize, w: usize },
    #[error("band B{band} holds no frequency cell of {h} × {w} images with radii {radii:?} (cells per band: {sizes:?}); widen the radii")]
    EmptyBand { band: u8, radii: [f64; 3], sizes: [usize; 4], h: usize, w: usize },
}

/// How a spec places the three band radii: in cells, or as fractions of each image size's
/// Nyquist radius `r_N = min(H, W) / 2` (SCIENCE.md §4). The default, fractions 1/4, 1/2, 3/4,
/// is exactly the poster's 4, 8, 12 on 32 × 32 images.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum BandRadii {
    Cells([f64; 3]),
    Fractions([f64; 3]),
}

impl Default for BandRadii {
    fn default() -> Self {
        BandRadii::Fractions([0.25, 0.5, 0.75])
    }
}

impl BandRadii {
    /// The layout of `shape`'s spectrum: radii increasing, positive, within the Nyquist radius.
    pub fn layout(self, shape: Shape2) -> Result<BandLayout, BandError> {
        let nyquist = shape.h.min(shape.w) as f64 / 2.0;
        let radii = match self {
            BandRadii::Cells(radii) => radii,
            BandRadii::Fractions(f) => {
                if !(f[0] > 0.0 && f[0] < f[1] && f[1] < f[2] && f[2] <= 1.0) {
                    return Err(BandError::BadFractions(f));
                }
                f.map(|x| x * nyquist)
            }
        };
        let layout = BandLayout::new(radii)?;
        if let Some(&radius) = radii.iter().find(|&&r| r > nyquist) {
            return Err(BandError::BeyondNyquist { radius, nyquist, h: shape.h, w: shape.w });
        }
        // A band without a cell would make every result about it vacuous (an empty band
        // "suffices" for any class, and its filtered test set is the unfiltered one).
        let sizes = layout.band_sizes(shape);
        if let Some(empty) = sizes.iter().position(|&n| n == 0) {
            return Err(BandError::EmptyBand { band: empty as u8 + 1, radii, sizes, h: shape.h, w: shape.w });
        }
        Ok(layout)
    }
}

/// The radii that separate the bands: `B1 ≤ r1 < B2 ≤ r2 < B3 ≤ r3 < B4`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandLayout {
    pub upper_radii: [f64; 3],
}

impl Default for BandLayout {
    fn default() -> Self {
        BandLayout { upper_radii: [4.0, 8.0, 12.0] }
    }
}

impl BandLayout {
    pub fn new(upper_radii: [f64; 3]) -> Result<Self, BandError> {
        let [a, b, c] = upper_radii;
        if !(a > 0.0 && a < b && b < c) {
            return Err(BandError::BadRadii(upper_radii));
        }
        Ok(BandLayout { upper_radii })
    }

    /// The band of `cell`, or `None` for DC.
    pub fn band_of(&self, cell: Cell) -> Option<Band> {
        if cell == Cell::new(0, 0) {
            return None;
        }
        // Compare squared radii in integers where possible so boundary cells (r = 4 exactly) are exact.
        let r2 = f64::from(cell.u * cell.u + cell.v * cell.v);
        let band = self.upper_radii.iter().position(|&r| r2 <= r * r).map_or(4, |i| i as u8 + 1);
        Some(Band(band))
    }

    /// Number of cells of each band in `shape` (index 0 = B1).
    pub fn band_sizes(&self, shape: Shape2) -> [usize; 4] {
        let mut n = [0; 4];
        for cell in shape.cells() {
            if let Some(b) = self.band_of(cell) {
                n[usize::from(b.0 - 1)] += 1;
            }
        }
        n
    }

    /// A centred `H × W` 0/1 mask keeping DC and the bands of `set`.
    pub fn mask(&self, shape: Shape2, set: BandSet) -> Vec<f32> {
        shape.cells().map(|c| if self.band_of(c).is_none_or(|b| set.contains(b)) { 1.0 } else { 0.0 }).collect()
    }
}

/// A set of bands, named like `B124`. Parses from and prints as that name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct BandSet(u8);

impl BandSet {
    pub const ALL: BandSet = BandSet(0b1111);
    pub const EMPTY: BandSet = BandSet(0);

    pub fn from_bands(bands: impl IntoIterator<Item = Band>) -> Self {
        BandSet(bands.into_iter().fold(0, |acc, b| acc | 1 << (b.0 - 1)))
    }

    pub fn contains(self, band: Band) -> bool {
        self.0 & (1 << (band.0 - 1)) != 0
    }

    pub fn bands(self) -> impl Iterator<Item = Band> {
        Band::ALL.into_iter().filter(move |&b| self.contains(b))
    }

    pub fn without(self, band: Band) -> Self {
        BandSet(self.0 & !(1 << (band.0 - 1)))
    }

    pub fn with(self, band: Band) -> Self {
        BandSet(self.0 | 1 << (band.0 - 1))
    }

    pub fn is_all(self) -> bool {
        self == Self::ALL
    }
}

impl fmt::Display for BandSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("B")?;
        for b in self.bands() {
            write!(f, "{}", b.0)?;
        }
        Ok(())
    }
}

impl FromStr for BandSet {
    type Err = BandError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix('B').or_else(|| s.strip_prefix('b')).ok_or_else(|| BandError::Syntax(s.into()))?;
        if digits.is_empty() {
            return Err(BandError::Syntax(s.into()));
        }
        let mut set = BandSet::EMPTY;
        for ch in digits.chars() {
            let d = ch.to_digit(10).ok_or_else(|| BandError::Syntax(s.into()))?;
            let band = Band::new(d as u8).map_err(|_| BandError::NoSuchBand(format!("{ch} (in {s:?})")))?;
            if set.contains(band) {
                return Err(BandError::Repeated(s.into(), band.0));
            }
            set = set.with(band);
        }
        Ok(set)
    }
}

impl serde::Serialize for BandSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BandSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Zeroes every frequency outside a centred 0/1 mask in a batch of real images, in place.
///
/// The mask must be real and conjugate-symmetric (every band mask is: bands depend on `|(u, v)|`),
/// so filtering maps real images to real images. That lets one complex transform carry two real
/// planes (`x₁ + i·x₂` → `filter(x₁) + i·filter(x₂)`), halving the FFT work; plans and scratch are
/// built once and reused, and planes are split across threads with rayon.
#[derive(Clone, Debug)]
pub struct BandFilter {
    fft: Fft2,
    /// The mask in unshifted DFT layout, transposed (as [`Fft2::filter`] applies it).
    mask_transposed: Vec<f32>,
    clip: bool,
}

impl BandFilter {
    /// A filter from a centred mask. Panics if the mask is not conjugate-symmetric or has the wrong
    /// length (a programming error: masks come from [`BandLayout::mask`] or similar).
    pub fn from_centred_mask(shape: Shape2, centred_mask: &[f32], clip: bool) -> Self {
        assert_eq!(centred_mask.len(), shape.len(), "mask length does not match {shape:?}");
        for cell in shape.cells() {
            assert_eq!(
                centred_mask[shape.centred_index(cell)],
                centred_mask[shape.centred_index(shape.conjugate(cell))],
                "mask is not conjugate-symmetric at {cell:?}"
            );
        }
        let mut mask_transposed = vec![0.0; shape.len()];
        for cell in shape.cells() {
            let dft = shape.dft_index(cell);
            let (row, col) = (dft / shape.w, dft % shape.w);
            mask_transposed[col * shape.h + row] = centred_mask[shape.centred_index(cell)];
        }
        BandFilter { fft: Fft2::new(shape), mask_transposed, clip }
    }

    /// Keep DC and the bands of `set`. `clip` clamps the result to `[0, 1]` (default in specs: off).
    pub fn new(shape: Shape2, layout: &BandLayout, set: BandSet, clip: bool) -> Self {
        Self::from_centred_mask(shape, &layout.mask(shape, set), clip)
    }

    pub fn shape(&self) -> Shape2 {
        self.fft.shape()
    }

    /// Filter every `H × W` plane of `planes` (any `N·C` planes, row-major, contiguous) in place.
    pub fn apply(&self, planes: &mut [f32]) {
        let plane = self.shape().len();
        assert_eq!(
            planes.len() % plane,
            0,
            "buffer of {} floats is not a whole number of {plane}-pixel planes",
            planes.len()
        );
        // Work in units of two planes (one complex transform); big enough pieces per rayon task.
        let pair = 2 * plane;
        let per_task = pair * 64;
        planes.par_chunks_mut(per_task).for_each_init(
            || (self.fft.scratch(), vec![Complex::<f32>::default(); plane]),
            |(scratch, buf), chunk| {
                for two in chunk.chunks_mut(pair) {
                    let (a, b) = two.split_at_mut(plane.min(two.len()));
                    for (i, z) in buf.iter_mut().enumerate() {
                        *z = Complex::new(a[i], b.get(i).copied().unwrap_or(0.0));
                    }
                    self.fft.filter(buf, scratch, &self.mask_transposed);
                    for (i, z) in buf.iter().enumerate() {
                        a[i] = z.re;
                        if let Some(bi) = b.get_mut(i) {
                            *bi = z.im;
                        }
                    }
                    if self.clip {
                        two.iter_mut().for_each(|x| *x = x.clamp(0.0, 1.0));
                    }
                }
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radii_scale_with_the_nyquist_radius_and_are_checked() {
        let default = BandRadii::default();
        assert_eq!(default.layout(Shape2::new(32, 32)).unwrap(), BandLayout::default(), "exactly 4, 8, 12");
        assert_eq!(default.layout(Shape2::new(64, 64)).unwrap().upper_radii, [8.0, 16.0, 24.0]);
        // Non-square: the shorter side's Nyquist radius.
        assert_eq!(default.layout(Shape2::new(64, 48)).unwrap().upper_radii, [6.0, 12.0, 18.0]);
        let cells = BandRadii::Cells([4.0, 8.0, 12.0]);
        assert_eq!(cells.layout(Shape2::new(224, 224)).unwrap(), BandLayout::default());
        let err = cells.layout(Shape2::new(16, 16)).unwrap_err().to_string();
        assert_eq!(err, "band radius 12 exceeds the Nyquist radius 8 of 16 × 16 images");
        assert!(matches!(BandRadii::Cells([4.0, 4.0, 12.0]).layout(Shape2::new(32, 32)), Err(BandError::BadRadii(_))));
        let over = BandRadii::Fractions([0.25, 0.5, 1.5]).layout(Shape2::new(32, 32));
        assert!(matches!(over, Err(BandError::BadFractions(_))));
        // At 64 × 64 the scaled bands hold four times the cells of 32 × 32 (to within the rim).
        let sizes = default.layout(Shape2::new(64, 64)).unwrap().band_sizes(Shape2::new(64, 64));
        let base = BandLayout::default().band_sizes(Shape2::new(32, 32));
        for (big, small) in sizes.iter().zip(base) {
            assert!((*big as f64 / small as f64 - 4.0).abs() < 0.35, "{sizes:?} vs {base:?}");
        }
    }

    #[test]
    fn band_sizes_match_science_md() {
        let layout = BandLayout::default();
        assert_eq!(layout.band_sizes(Shape2::new(32, 32)), [48, 148, 244, 583]);
    }

    #[test]
    fn bands_partition_the_spectrum() {
        let shape = Shape2::new(32, 32);
        let layout = BandLayout::default();
        let mut dc = 0;
        for cell in shape.cells() {
            match layout.band_of(cell) {
                None => dc += 1,
                Some(b) => {
                    let in_sets = Band::ALL.iter().filter(|&&x| BandSet::from_bands([x]).contains(b)).count();
                    assert_eq!(in_sets, 1);
                    assert_eq!(layout.band_of(shape.conjugate(cell)), Some(b), "conjugates share a band");
                }
            }
        }
        assert_eq!(dc, 1);
        assert_eq!(layout.band_of(Cell::new(4, 0)), Some(Band(1)));
        assert_eq!(layout.band_of(Cell::new(4, 1)), Some(Band(2)));
        assert_eq!(layout.band_of(Cell::new(-16, -16)), Some(Band(4)));
    }

    #[test]
    fn band_set_names_parse_and_print() {
        let set: BandSet = "B124".parse().unwrap();
        assert_eq!(set.to_string(), "B124");
        assert!(!set.contains(Band(3)));
        assert_eq!("B1234".parse::<BandSet>().unwrap(), BandSet::ALL);
        assert_eq!("B421".parse::<BandSet>().unwrap().to_string(), "B124");
        assert!(matches!("124".parse::<BandSet>(), Err(BandError::Syntax(_))));
        assert!(matches!("B".parse::<BandSet>(), Err(BandError::Syntax(_))));
        assert!(matches!("B15".parse::<BandSet>(), Err(BandError::NoSuchBand(_))));
        assert!(matches!("B11".parse::<BandSet>(), Err(BandError::Repeated(_, 1))));
        assert_eq!(BandSet::ALL.without(Band(3)).to_string(), "B124");
    }

    fn test_images(n_planes: usize, plane: usize) -> Vec<f32> {
        (0..n_planes * plane).map(|i| ((i * 7919 % 1013) as f32) / 1013.0).collect()
    }

    #[test]
    fn filtering_with_all_bands_is_identity() {
        let shape = Shape2::new(32, 32);
        let filter = BandFilter::new(shape, &BandLayout::default(), BandSet::ALL, false);
        for n_planes in [1, 3, 6, 131] {
            let original = test_images(n_planes, shape.len());
            let mut x = original.clone();
            filter.apply(&mut x);
            let max_err = x.iter().zip(&original).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(max_err < 1e-5, "{n_planes} planes: max error {max_err}");
        }
    }

    #[test]
    fn filtered_planes_keep_only_their_bands() {
        let shape = Shape2::new(32, 32);
        let layout = BandLayout::default();
        let set: BandSet = "B124".parse().unwrap();
        let filter = BandFilter::new(shape, &layout, set, false);
        let mut x = test_images(3, shape.len());
        let original = x.clone();
        filter.apply(&mut x);
        let fft = Fft2::new(shape);
        let mut scratch = fft.scratch();
        for (p, o) in x.chunks(shape.len()).zip(original.chunks(shape.len())) {
            let mut spec: Vec<Complex<f32>> = p.iter().map(|&v| Complex::new(v, 0.0)).collect();
            let mut orig: Vec<Complex<f32>> = o.iter().map(|&v| Complex::new(v, 0.0)).collect();
            fft.forward(&mut spec, &mut scratch);
            fft.forward(&mut orig, &mut scratch);
            for cell in shape.cells() {
                let i = shape.dft_index(cell);
                let kept = layout.band_of(cell).is_none_or(|b| set.contains(b));
                if kept {
                    assert!((spec[i] - orig[i]).norm() < 1e-2, "{cell:?} changed");
                } else {
                    assert!(spec[i].norm() < 1e-2, "{cell:?} not removed: {}", spec[i]);
                }
            }
        }
    }

    #[test]
    fn band_energies_add_up() {
        // Filtering into disjoint band sets splits the non-DC energy exactly (Parseval + orthogonality).
        let shape = Shape2::new(32, 32);
        let layout = BandLayout::default();
        let x = test_images(2, shape.len());
        let mean: Vec<f32> = x.chunks(shape.len()).map(|p| p.iter().sum::<f32>() / p.len() as f32).collect();
        let energy = |v: &[f32]| -> f64 {
            v.chunks(shape.len())
                .zip(&mean)
                .map(|(p, m)| p.iter().map(|&a| f64::from(a - m).powi(2)).sum::<f64>())
                .sum()
        };
        let total = energy(&x);
        let parts: f64 = Band::ALL
            .iter()
            .map(|&b| {
                let mut y = x.clone();
                BandFilter::new(shape, &layout, BandSet::from_bands([b]), false).apply(&mut y);
                energy(&y)
            })
            .sum();
        assert!((total - parts).abs() / total < 1e-4, "total {total} vs sum of bands {parts}");
    }

    #[test]
    fn clip_keeps_values_in_unit_range() {
        let shape = Shape2::new(32, 32);
        let mut x = test_images(2, shape.len());
        BandFilter::new(shape, &BandLayout::default(), "B4".parse().unwrap(), true).apply(&mut x);
        assert!(x.iter().all(|v| (0.0..=1.0).contains(v)));
    }

    /// Radii so small that a band holds no cell made the sufficiency table say an empty band
    /// suffices; such a layout is an error naming the band.
    #[test]
    fn a_band_without_a_cell_is_refused() {
        let shape = Shape2::new(32, 32);
        let e = BandRadii::Cells([0.5, 0.7, 0.9]).layout(shape).unwrap_err().to_string();
        assert!(e.contains("band B1 holds no frequency cell of 32 × 32"), "{e}");
        let e = BandRadii::Cells([1.0, 1.1, 8.0]).layout(shape).unwrap_err().to_string();
        assert!(e.contains("band B2"), "{e}");
        let e = BandRadii::Fractions([0.01, 0.02, 0.03]).layout(shape).unwrap_err().to_string();
        assert!(e.contains("band B1"), "{e}");
        // The smallest layout with a cell in every band: B1 = the 4 cells at distance 1.
        assert!(BandRadii::Cells([1.0, 1.5, 2.0]).layout(shape).is_ok());
        assert!(BandRadii::default().layout(shape).is_ok());
    }
}
