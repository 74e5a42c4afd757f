//! The corruption suite of SCIENCE.md §9.1: Hendrycks & Dietterich's CIFAR-10-C corruptions
//! (`make_cifar_c.py` in hendrycks/robustness), with the same five severities and parameters at
//! 32 × 32, plus the Fourier-basis corruption `fourier(u, v, ε)` of §2. Results made with it are
//! [`LABEL`]led: they are regenerated, never the released files.
//!
//! [`corrupt`] corrupts one `[C, H, W]` image in `[0, 1]`; [`corrupt_batch`] corrupts `[N, C, H, W]`
//! on rayon's pool and equals [`corrupt`] image by image, bit for bit. An image's randomness comes
//! from a ChaCha8 generator keyed by the hash of (corruption name, severity, image index, seed), so a
//! corrupted set is the same whatever the chunking, worker count or thread count. Work is per image:
//! nothing but the output is allocated at the size of a batch.
//!
//! # Choices
//! Where the reference leaves something open or depends on its libraries, this module chooses:
//! - **Arithmetic.** Everything is computed in `f64` on the image as given, and only the output is
//!   clipped to `[0, 1]` and stored as `f32`. The reference's 8-bit steps in between (PIL images,
//!   glass blur's `uint8` cast, snow's PNG round trip, the final `uint8` save) are not reproduced;
//!   JPEG alone rounds to 8 bits (`round(255·x)`), because the codec needs bytes.
//! - **Random draws** (`sample`): uniform, Box–Muller normal, Poisson by multiplication below
//!   λ = 10 and Hörmann's PTRS from 10 on. Draws cannot equal numpy's stream; the distributions do.
//! - **Other sizes.** With `s = min(H, W)/32`: Gaussian and glass blur σ, defocus radius and alias
//!   σ, glass δ (`max(1, round(δ·s))`), motion (and snow) radius (`max(1, round(r·s))`) and σ, and
//!   elastic's three scales (they are fractions of the image size in the reference) scale with `s`;
//!   defocus's 3 × 3 alias kernel becomes `(2·max(1, round(s)) + 1)²`. Zoom blur's crops are
//!   relative to the image and scale by construction. Fog's plasma fractal is drawn on the next
//!   power of two ≥ `max(H, W)` and cropped, as imagecorruptions does. Non-square images apply the
//!   square reference per axis. [`describe`] says what an image size turns each parameter into.
//! - **Channels.** Per-channel corruptions (noises, blurs, fog, contrast, pixelate, elastic,
//!   zoom, fourier) take any channel count; one channel is corrupted as one channel. The HSV
//!   corruptions treat one channel as the HSV value of a grey pixel: `brightness` adds to it,
//!   `saturate` leaves it unchanged (a grey pixel's value is its maximum, which saturation does not
//!   move). `brightness`, `saturate`, `jpeg_compression` and `snow` (which needs a luminance) take 1 or
//!   3 channels and return [`CorruptionError::Channels`] otherwise.
//! - **Input.** Values outside `[0, 1]` or not finite are refused (0–255 data passed by mistake
//!   would otherwise be clipped to white silently).
//! - Each corruption's own choices (kernels, borders, draw order, the reference's quirks kept or
//!   not) are listed in the private module that implements it: `noise`, `blur`, `weather` (fog,
//!   snow), `digital` (HSV, contrast, pixelate, JPEG), `elastic`, `fourier`, and `sample` (draws).
//! - `frost` needs photographs and is refused by name ([`CorruptionError::Frost`]); `spatter`
//!   (Hendrycks' extra set, not in §9.1) is not implemented.

mod blur;
mod digital;
mod elastic;
mod filter;
mod fourier;
mod noise;
mod sample;
mod weather;

pub use digital::JPEG_ENCODER;

use rayon::prelude::*;
use sample::Draws;

/// How results made with this suite are labelled.
pub const LABEL: &str = "regenerated (CIFAR-10-C parameters)";

/// One corruption of the suite.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Corruption {
    GaussianNoise,
    ShotNoise,
    ImpulseNoise,
    SpeckleNoise,
    GaussianBlur,
    DefocusBlur,
    GlassBlur,
    MotionBlur,
    ZoomBlur,
    Snow,
    Fog,
    Brightness,
    Contrast,
    Saturate,
    ElasticTransform,
    Pixelate,
    JpegCompression,
    /// `clamp(x + ε·r·U_{u,v}, 0, 1)` with the signs `r` of [`crate::spectrum::signs`]: image `i` of
    /// seed `S` is perturbed exactly as the Fourier heatmap of seed `S` perturbs it at `(u, v)`.
    /// Severity does not change it (its strength is `eps`).
    Fourier {
        u: i32,
        v: i32,
        eps: f64,
    },
}

/// The natural corruptions, in `make_cifar_c.py`'s order (frost and spatter left out).
pub const ALL: [Corruption; 17] = [
    Corruption::GaussianNoise,
    Corruption::ShotNoise,
    Corruption::ImpulseNoise,
    Corruption::DefocusBlur,
    Corruption::GlassBlur,
    Corruption::MotionBlur,
    Corruption::ZoomBlur,
    Corruption::Snow,
    Corruption::Fog,
    Corruption::Brightness,
    Corruption::Contrast,
    Corruption::ElasticTransform,
    Corruption::Pixelate,
    Corruption::JpegCompression,
    Corruption::SpeckleNoise,
    Corruption::GaussianBlur,
    Corruption::Saturate,
];

/// The severities, as the reference numbers them.
pub const SEVERITIES: std::ops::RangeInclusive<u32> = 1..=5;

/// Why an image could not be corrupted; every message is one line naming the value at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CorruptionError {
    #[error("unknown corruption \"{0}\" (known: {known}, fourier(u,v,eps))", known = known_names())]
    Unknown(String),
    #[error("frost needs a folder of frost photos, which this build does not take yet")]
    Frost,
    #[error("{0}: expected fourier(u,v,eps) with integers u, v and a finite eps ≥ 0")]
    FourierSyntax(String),
    #[error("severity {0} is outside 1..=5")]
    Severity(u32),
    #[error("an image of {len} values is not {channels}×{height}×{width} (every size ≥ 1)")]
    Shape { len: usize, channels: usize, height: usize, width: usize },
    #[error("{corruption} needs 1 or 3 channels, got {channels}")]
    Channels { corruption: String, channels: usize },
    #[error("image {image}, value {index} is {value}, outside [0, 1]")]
    Range { image: u64, index: usize, value: f32 },
    #[error("{corruption}: cell ({u}, {v}) lies outside the {height}×{width} spectrum")]
    Cell { corruption: String, u: i32, v: i32, height: usize, width: usize },
    #[error("{corruption}: eps {eps} must be finite and ≥ 0")]
    Eps { corruption: String, eps: f64 },
    #[error("jpeg_compression: {0}")]
    Jpeg(String),
}

fn known_names() -> String {
    ALL.iter().map(|c| c.base_name()).collect::<Vec<_>>().join(", ")
}

impl Corruption {
    /// The corruption's name without parameters (`fourier` for every Fourier corruption).
    pub fn base_name(&self) -> &'static str {
        match self {
            Corruption::GaussianNoise => "gaussian_noise",
            Corruption::ShotNoise => "shot_noise",
            Corruption::ImpulseNoise => "impulse_noise",
            Corruption::SpeckleNoise => "speckle_noise",
            Corruption::GaussianBlur => "gaussian_blur",
            Corruption::DefocusBlur => "defocus_blur",
            Corruption::GlassBlur => "glass_blur",
            Corruption::MotionBlur => "motion_blur",
            Corruption::ZoomBlur => "zoom_blur",
            Corruption::Snow => "snow",
            Corruption::Fog => "fog",
            Corruption::Brightness => "brightness",
            Corruption::Contrast => "contrast",
            Corruption::Saturate => "saturate",
            Corruption::ElasticTransform => "elastic_transform",
            Corruption::Pixelate => "pixelate",
            Corruption::JpegCompression => "jpeg_compression",
            Corruption::Fourier { .. } => "fourier",
        }
    }

    /// The name [`Corruption::parse`] reads back: `gaussian_noise`, …, `fourier(u,v,eps)`.
    pub fn name(&self) -> String {
        match *self {
            Corruption::Fourier { u, v, eps } => format!("fourier({u},{v},{})", crate::text::format_number(eps)),
            _ => self.base_name().to_string(),
        }
    }

    /// The corruption named `name` (surrounding spaces ignored).
    pub fn parse(name: &str) -> Result<Corruption, CorruptionError> {
        let name = name.trim();
        if let Some(found) = ALL.iter().find(|c| c.base_name() == name) {
            return Ok(*found);
        }
        if name == "frost" {
            return Err(CorruptionError::Frost);
        }
        if let Some(args) = name.strip_prefix("fourier(").and_then(|rest| rest.strip_suffix(')')) {
            let bad = || CorruptionError::FourierSyntax(crate::text::one_line(name, 80));
            let parts: Vec<&str> = args.split(',').map(str::trim).collect();
            let [u, v, eps] = parts[..] else { return Err(bad()) };
            let (u, v) = (u.parse().map_err(|_| bad())?, v.parse().map_err(|_| bad())?);
            let eps: f64 = eps.parse().map_err(|_| bad())?;
            if !eps.is_finite() || eps < 0.0 {
                return Err(bad());
            }
            return Ok(Corruption::Fourier { u, v, eps });
        }
        Err(CorruptionError::Unknown(crate::text::one_line(name, 80)))
    }

    /// Whether the corruption draws random numbers (a deterministic one ignores seed and index).
    pub fn is_random(&self) -> bool {
        !matches!(
            self,
            Corruption::GaussianBlur
                | Corruption::DefocusBlur
                | Corruption::ZoomBlur
                | Corruption::Brightness
                | Corruption::Contrast
                | Corruption::Saturate
                | Corruption::Pixelate
                | Corruption::JpegCompression
        )
    }

    /// Refuse what this corruption cannot do on a `channels × height × width` image, before any work.
    fn check(&self, channels: usize, height: usize, width: usize) -> Result<(), CorruptionError> {
        let rgb_only = matches!(
            self,
            Corruption::Brightness | Corruption::Saturate | Corruption::JpegCompression | Corruption::Snow
        );
        if rgb_only && channels != 1 && channels != 3 {
            return Err(CorruptionError::Channels { corruption: self.name(), channels });
        }
        if let Corruption::Fourier { u, v, eps } = *self {
            let shape = crate::spectrum::Shape2::new(height, width);
            if !shape.contains(crate::spectrum::Cell::new(u, v)) {
                return Err(CorruptionError::Cell { corruption: self.name(), u, v, height, width });
            }
            if !eps.is_finite() || eps < 0.0 {
                return Err(CorruptionError::Eps { corruption: self.name(), eps });
            }
        }
        Ok(())
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

/// One image being corrupted: `c` planes of `h × w`, in `f64`.
pub(crate) struct Planes {
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) data: Vec<f64>,
}

impl Planes {
    /// `min(H, W) / 32`: how much larger than CIFAR's 32 × 32 the image is.
    pub(crate) fn scale(&self) -> f64 {
        self.h.min(self.w) as f64 / 32.0
    }

    pub(crate) fn plane(&self, channel: usize) -> &[f64] {
        &self.data[channel * self.h * self.w..(channel + 1) * self.h * self.w]
    }

    /// Replace every plane by `f(plane)`.
    pub(crate) fn map_planes(&mut self, mut f: impl FnMut(&[f64]) -> Vec<f64>) {
        let n = self.h * self.w;
        for channel in 0..self.c {
            let new = f(&self.data[channel * n..(channel + 1) * n]);
            self.data[channel * n..(channel + 1) * n].copy_from_slice(&new);
        }
    }
}

/// `image` (`[C, H, W]`, values in `[0, 1]`) corrupted by `corruption` at `severity` (1–5), with the
/// randomness of (`corruption`, `severity`, `image_index`, `seed`); clipped to `[0, 1]`.
#[allow(clippy::too_many_arguments)] // The image's shape and the corruption's key, all needed.
pub fn corrupt(
    image: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    corruption: Corruption,
    severity: u32,
    seed: u64,
    image_index: u64,
) -> Result<Vec<f32>, CorruptionError> {
    check_request(image.len(), 1, channels, height, width, corruption, severity)?;
    check_range(image, image_index)?;
    corrupt_checked(image, channels, height, width, corruption, severity, seed, image_index)
}

/// [`corrupt`] on each image of `images` (`[N, C, H, W]`); image `i` uses index `first_index + i`,
/// so a batch cut into pieces gives the same output as the whole. Runs on rayon's global pool.
#[allow(clippy::too_many_arguments)] // As `corrupt`, plus the batch's first index.
pub fn corrupt_batch(
    images: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    corruption: Corruption,
    severity: u32,
    seed: u64,
    first_index: u64,
) -> Result<Vec<f32>, CorruptionError> {
    let per_image = channels.checked_mul(height).and_then(|n| n.checked_mul(width)).unwrap_or(0);
    if per_image == 0 || !images.len().is_multiple_of(per_image) {
        return Err(CorruptionError::Shape { len: images.len(), channels, height, width });
    }
    check_request(per_image, 1, channels, height, width, corruption, severity)?;
    for (i, image) in images.chunks(per_image).enumerate() {
        check_range(image, first_index + i as u64)?;
    }
    let mut out = vec![0.0f32; images.len()];
    out.par_chunks_mut(per_image).zip(images.par_chunks(per_image)).enumerate().try_for_each(|(i, (out, image))| {
        let index = first_index + i as u64;
        out.copy_from_slice(&corrupt_checked(image, channels, height, width, corruption, severity, seed, index)?);
        Ok(())
    })?;
    Ok(out)
}

fn check_request(
    len: usize,
    images: usize,
    channels: usize,
    height: usize,
    width: usize,
    corruption: Corruption,
    severity: u32,
) -> Result<(), CorruptionError> {
    if !SEVERITIES.contains(&severity) {
        return Err(CorruptionError::Severity(severity));
    }
    let expected = images.checked_mul(channels).and_then(|n| n.checked_mul(height)).and_then(|n| n.checked_mul(width));
    if channels == 0 || height == 0 || width == 0 || expected != Some(len) {
        return Err(CorruptionError::Shape { len, channels, height, width });
    }
    corruption.check(channels, height, width)
}

fn check_range(image: &[f32], image_index: u64) -> Result<(), CorruptionError> {
    match image.iter().position(|x| !(0.0..=1.0).contains(x)) {
        Some(index) => Err(CorruptionError::Range { image: image_index, index, value: image[index] }),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)] // As `corrupt`.
fn corrupt_checked(
    image: &[f32],
    channels: usize,
    height: usize,
    width: usize,
    corruption: Corruption,
    severity: u32,
    seed: u64,
    image_index: u64,
) -> Result<Vec<f32>, CorruptionError> {
    let mut planes = Planes { c: channels, h: height, w: width, data: image.iter().map(|&x| f64::from(x)).collect() };
    let mut draws = Draws::new(&corruption.name(), severity as u8, image_index, seed);
    apply(&mut planes, corruption, severity as usize - 1, &mut draws, seed, image_index)?;
    Ok(planes.data.iter().map(|&x| x.clamp(0.0, 1.0) as f32).collect())
}

/// Dispatch to the corruption at severity index `s` (0–4), with the parameters of [`params`].
fn apply(
    img: &mut Planes,
    corruption: Corruption,
    s: usize,
    draws: &mut Draws,
    seed: u64,
    image_index: u64,
) -> Result<(), CorruptionError> {
    match corruption {
        Corruption::GaussianNoise => noise::gaussian(&mut img.data, params::GAUSSIAN_NOISE[s], draws),
        Corruption::ShotNoise => noise::shot(&mut img.data, params::SHOT_NOISE[s], draws),
        Corruption::ImpulseNoise => noise::impulse(&mut img.data, params::IMPULSE_NOISE[s], draws),
        Corruption::SpeckleNoise => noise::speckle(&mut img.data, params::SPECKLE_NOISE[s], draws),
        Corruption::GaussianBlur => blur::gaussian(img, params::GAUSSIAN_BLUR[s]),
        Corruption::DefocusBlur => blur::defocus(img, params::DEFOCUS_BLUR[s]),
        Corruption::GlassBlur => blur::glass(img, params::GLASS_BLUR[s], draws),
        Corruption::MotionBlur => blur::motion(img, params::MOTION_BLUR[s], draws),
        Corruption::ZoomBlur => blur::zoom(img, params::ZOOM_BLUR_FACTORS[s]),
        Corruption::Snow => weather::snow(img, params::SNOW[s], draws),
        Corruption::Fog => weather::fog(img, params::FOG[s], draws),
        Corruption::Brightness => digital::brightness(img, params::BRIGHTNESS[s]),
        Corruption::Contrast => digital::contrast(img, params::CONTRAST[s]),
        Corruption::Saturate => digital::saturate(img, params::SATURATE[s]),
        Corruption::ElasticTransform => elastic::elastic(img, params::ELASTIC[s], draws),
        Corruption::Pixelate => digital::pixelate(img, params::PIXELATE[s]),
        Corruption::JpegCompression => digital::jpeg(img, params::JPEG_QUALITY[s])?,
        Corruption::Fourier { u, v, eps } => fourier::perturb(img, u, v, eps, seed, image_index),
    }
    Ok(())
}

/// The parameters of `make_cifar_c.py` at 32 × 32, one entry per severity 1–5.
pub mod params {
    /// `gaussian_noise`: standard deviation `c`.
    pub const GAUSSIAN_NOISE: [f64; 5] = [0.04, 0.06, 0.08, 0.09, 0.10];
    /// `shot_noise`: photons at full scale `c` in `Poisson(x·c)/c`.
    pub const SHOT_NOISE: [f64; 5] = [500.0, 250.0, 100.0, 75.0, 50.0];
    /// `impulse_noise`: fraction of elements replaced by salt or pepper.
    pub const IMPULSE_NOISE: [f64; 5] = [0.01, 0.02, 0.03, 0.05, 0.07];
    /// `speckle_noise`: standard deviation `c` in `x + x·N(0, c²)`.
    pub const SPECKLE_NOISE: [f64; 5] = [0.06, 0.10, 0.12, 0.16, 0.20];
    /// `gaussian_blur`: σ in pixels.
    pub const GAUSSIAN_BLUR: [f64; 5] = [0.4, 0.6, 0.7, 0.8, 1.0];
    /// `defocus_blur`: (disk radius, alias blur σ) in pixels.
    pub const DEFOCUS_BLUR: [(f64, f64); 5] = [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)];
    /// `glass_blur`: (σ, largest shift δ, iterations).
    pub const GLASS_BLUR: [(f64, usize, usize); 5] =
        [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)];
    /// `motion_blur`: (radius, σ) in pixels.
    pub const MOTION_BLUR: [(f64, f64); 5] = [(6.0, 1.0), (6.0, 1.5), (6.0, 2.0), (8.0, 2.0), (9.0, 2.5)];
    /// `zoom_blur`: how many zoom factors `1 + i/100` (`i = 0, 1, …`) are averaged with the image.
    /// These are the lengths numpy gives `arange(1, 1.06, .01)`, …, `arange(1, 1.26, .01)`: its
    /// length `⌈(stop − start)/step⌉` rounds `6.000000000000005` up to 7 and `15.999999999999991` up
    /// to 16, so the factors run to 1.06, 1.11, 1.15, 1.20 and 1.25.
    pub const ZOOM_BLUR_FACTORS: [usize; 5] = [7, 12, 16, 21, 26];
    /// `fog`: (amplitude, plasma decay).
    pub const FOG: [(f64, f64); 5] = [(0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)];
    /// `brightness`: added to the HSV value.
    pub const BRIGHTNESS: [f64; 5] = [0.05, 0.1, 0.15, 0.2, 0.3];
    /// `contrast`: factor on the distance to the channel mean.
    pub const CONTRAST: [f64; 5] = [0.75, 0.5, 0.4, 0.3, 0.15];
    /// `saturate`: (a, b) in `s·a + b` on the HSV saturation.
    pub const SATURATE: [(f64, f64); 5] = [(0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)];
    /// `elastic_transform`: (displacement α, displacement smoothing σ, affine jitter) as fractions of
    /// the image size (the reference multiplies by `IMSIZE` = 32).
    pub const ELASTIC: [(f64, f64, f64); 5] =
        [(0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03)];
    /// `pixelate`: the fraction of the size the image is boxed down to.
    pub const PIXELATE: [f64; 5] = [0.95, 0.9, 0.85, 0.75, 0.65];
    /// `jpeg_compression`: quality.
    pub const JPEG_QUALITY: [u8; 5] = [80, 65, 58, 50, 40];
    /// `snow`: (flake mean, flake deviation, zoom, threshold, motion radius, motion σ, blend).
    pub const SNOW: [[f64; 7]; 5] = [
        [0.1, 0.2, 1.0, 0.6, 8.0, 3.0, 0.95],
        [0.1, 0.2, 1.0, 0.5, 10.0, 4.0, 0.9],
        [0.15, 0.3, 1.75, 0.55, 10.0, 4.0, 0.9],
        [0.25, 0.3, 2.25, 0.6, 12.0, 6.0, 0.85],
        [0.3, 0.3, 1.25, 0.65, 14.0, 12.0, 0.8],
    ];
}

/// A radius scaled to an image `scale` times CIFAR's, as a whole number of pixels, at least 1.
pub(crate) fn scaled_radius(radius: f64, scale: f64) -> usize {
    (radius * scale).round().max(1.0) as usize
}

/// One line saying what `corruption` at `severity` does to a `height × width` image: its parameters
/// at 32 × 32, the scale `min(H, W)/32` and the scaled spatial parameters, and the [`LABEL`]; for
/// outputs to record next to the corrupted data.
pub fn describe(corruption: Corruption, severity: u32, height: usize, width: usize) -> Result<String, CorruptionError> {
    if !SEVERITIES.contains(&severity) {
        return Err(CorruptionError::Severity(severity));
    }
    let s = severity as usize - 1;
    let scale = height.min(width) as f64 / 32.0;
    // Four decimals: enough to tell parameters apart, without float noise like 1.0499999999999998.
    let short = |v: f64| (v * 1e4).round() / 1e4;
    let sized = |what: &str, v: f64| format!("{what} {v} at 32×32, {} here", short(v * scale));
    let radius = |what: &str, v: f64| format!("{what} {v} at 32×32, {} here", scaled_radius(v, scale));
    let detail = match corruption {
        Corruption::GaussianNoise => format!("sigma {}", params::GAUSSIAN_NOISE[s]),
        Corruption::ShotNoise => format!("photons {}", params::SHOT_NOISE[s]),
        Corruption::ImpulseNoise => format!("amount {}", params::IMPULSE_NOISE[s]),
        Corruption::SpeckleNoise => format!("sigma {}", params::SPECKLE_NOISE[s]),
        Corruption::GaussianBlur => sized("sigma", params::GAUSSIAN_BLUR[s]),
        Corruption::DefocusBlur => {
            let (r, alias) = params::DEFOCUS_BLUR[s];
            format!("{}; {}", sized("radius", r), sized("alias sigma", alias))
        }
        Corruption::GlassBlur => {
            let (sigma, delta, iterations) = params::GLASS_BLUR[s];
            format!("{}; {}; iterations {iterations}", sized("sigma", sigma), radius("delta", delta as f64))
        }
        Corruption::MotionBlur => {
            let (r, sigma) = params::MOTION_BLUR[s];
            format!("{}; {}; angle U(-45°, 45°)", radius("radius", r), sized("sigma", sigma))
        }
        Corruption::ZoomBlur => {
            format!("zoom factors 1 to {:.2} step 0.01", 1.0 + (params::ZOOM_BLUR_FACTORS[s] - 1) as f64 * 0.01)
        }
        Corruption::Snow => {
            let p = params::SNOW[s];
            format!(
                "flakes N({}, {}) zoom {} threshold {}; {}; {}; blend {}",
                p[0],
                p[1],
                p[2],
                p[3],
                radius("motion radius", p[4]),
                sized("motion sigma", p[5]),
                p[6]
            )
        }
        Corruption::Fog => format!("amplitude {}, decay {}", params::FOG[s].0, params::FOG[s].1),
        Corruption::Brightness => format!("value + {}", params::BRIGHTNESS[s]),
        Corruption::Contrast => format!("factor {}", params::CONTRAST[s]),
        Corruption::Saturate => format!("saturation * {} + {}", params::SATURATE[s].0, params::SATURATE[s].1),
        Corruption::ElasticTransform => {
            let (alpha, sigma, affine) = params::ELASTIC[s];
            let size = height.min(width) as f64;
            format!(
                "alpha {}, sigma {}, affine {} pixels (fractions {alpha}, {sigma}, {affine} of min(H, W))",
                short(alpha * size),
                short(sigma * size),
                short(affine * size)
            )
        }
        Corruption::Pixelate => format!("box down to {} of the size and back", params::PIXELATE[s]),
        Corruption::JpegCompression => format!("quality {}, {JPEG_ENCODER}", params::JPEG_QUALITY[s]),
        Corruption::Fourier { eps, .. } => format!("eps {eps}, signs per image and channel as the heatmap's"),
    };
    Ok(format!(
        "{} severity {severity} on {height}×{width} (scale min(H, W)/32 = {}): {detail}; {LABEL}",
        corruption.name(),
        short(scale)
    ))
}
