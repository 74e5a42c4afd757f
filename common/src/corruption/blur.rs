//! The five blurs of CIFAR-10-C.
//!
//! # Choices
//! - `gaussian_blur`: skimage's `gaussian` (scipy `gaussian_filter`, truncated at 4σ, edges
//!   repeated), per channel.
//! - `defocus_blur`: the reference's `disk`: the indicator of `x² + y² ≤ r²`, normalised, blurred by
//!   OpenCV's 3 × 3 Gaussian of the alias σ (whole-sample symmetric edges), applied by `filter2D`
//!   (whole-sample symmetric image edges). The reference draws the disk on a 17 × 17 grid; the disk
//!   and its alias blur fit well inside, so a grid just large enough gives the same kernel. Its
//!   branch for radii over 8 (a non-integer `arange` grid) is replaced by an integer grid and a
//!   5 × 5 alias kernel.
//! - `glass_blur`: Gaussian blur, local pixel shuffling, Gaussian blur again. The reference's
//!   swap `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on numpy views of an RGB image copies
//!   `x[h', w']` into `x[h, w]` and leaves `x[h', w']` unchanged (both sides are views of the same
//!   array; numpy/numpy#14428); CIFAR-10-C was made that way, so this module copies, for every
//!   channel count (on a 2-D grey array numpy would swap scalars instead). At δ = 1 (CIFAR size)
//!   shifts are −1 or 0, so sources lie up or left and are visited later: every pixel takes the
//!   value one of those neighbours had before the pass. Shifts
//!   `dx`, `dy` are numpy's `randint(−δ, δ)`, which excludes `δ`; rows and columns are visited
//!   from `H − δ` down to `δ + 1` as in the reference.
//! - `motion_blur`: imagecorruptions ≥ 1.0's kernel, not ImageMagick's: `2r + 1` copies of the
//!   image shifted along the angle by `−⌈i·sin θ − ½⌉` rows and `−⌈i·cos θ − ½⌉` columns (edges
//!   repeated), weighted by a one-sided Gaussian `exp(−i²/2σ²)` normalised to sum 1, stopping where
//!   a shift would leave the image; angle uniform in (−45°, 45°).
//! - `zoom_blur`: the mean of the image and its `clipped_zoom`s by `1, 1.01, …` (see
//!   [`super::params::ZOOM_BLUR_FACTORS`] for numpy's count of factors), each a centred crop of
//!   `⌈n/z⌉` pixels resized by scipy's order-1 `zoom` and centre-trimmed, per axis.

use super::filter::{self, Border, Kernel2};
use super::sample::Draws;
use super::{scaled_radius, Planes};

/// skimage's default truncation of its Gaussian filter, in σ.
const SKIMAGE_TRUNCATE: f64 = 4.0;

pub(crate) fn gaussian(img: &mut Planes, sigma: f64) {
    let (h, w, sigma) = (img.h, img.w, sigma * img.scale());
    img.map_planes(|p| filter::gaussian_plane(p, h, w, sigma, SKIMAGE_TRUNCATE, Border::Nearest));
}

/// OpenCV's `getGaussianKernel(2·radius + 1, σ)` for σ > 0: `exp(−x²/2σ²)` normalised.
fn opencv_gaussian(radius: usize, sigma: f64) -> Vec<f64> {
    let r = radius as isize;
    let taps: Vec<f64> = (-r..=r).map(|x| (-((x * x) as f64) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f64 = taps.iter().sum();
    taps.into_iter().map(|t| t / total).collect()
}

/// The reference's `disk(radius, alias_blur)` at `scale` times CIFAR's size.
pub(crate) fn disk(radius: f64, alias_sigma: f64, scale: f64) -> Kernel2 {
    // 3 × 3 alias kernel at 32 × 32 (5 × 5 past radius 8), grown with the image.
    let alias_radius = scaled_radius(if radius <= 8.0 { 1.0 } else { 2.0 }, scale);
    let (radius, alias_sigma) = (radius * scale, alias_sigma * scale);
    // Large enough that the alias blur never reaches the grid's edge, where OpenCV would reflect.
    let half = radius.ceil() as usize + 2 * alias_radius;
    let size = 2 * half + 1;
    let mut weights: Vec<f64> = (0..size * size)
        .map(|i| {
            let (y, x) = ((i / size) as f64 - half as f64, (i % size) as f64 - half as f64);
            if x * x + y * y <= radius * radius {
                1.0
            } else {
                0.0
            }
        })
        .collect();
    let inside: f64 = weights.iter().sum();
    weights.iter_mut().for_each(|v| *v /= inside);
    if alias_sigma > 0.0 {
        let taps = opencv_gaussian(alias_radius, alias_sigma);
        let columns = filter::correlate_1d(&weights, size, size, &taps, Border::Mirror, false);
        weights = filter::correlate_1d(&columns, size, size, &taps, Border::Mirror, true);
    }
    Kernel2 { size, weights }
}

pub(crate) fn defocus(img: &mut Planes, (radius, alias_sigma): (f64, f64)) {
    let kernel = disk(radius, alias_sigma, img.scale());
    let (h, w) = (img.h, img.w);
    img.map_planes(|p| filter::filter_2d(p, h, w, &kernel));
}

pub(crate) fn glass(img: &mut Planes, (sigma, delta, iterations): (f64, usize, usize), draws: &mut Draws) {
    let scale = img.scale();
    let (h, w, sigma) = (img.h, img.w, sigma * scale);
    let delta = scaled_radius(delta as f64, scale);
    img.map_planes(|p| filter::gaussian_plane(p, h, w, sigma, SKIMAGE_TRUNCATE, Border::Nearest));
    let plane_len = h * w;
    let d = delta as i64;
    for _ in 0..iterations {
        for y in (delta + 1..=h.saturating_sub(delta)).rev() {
            for x in (delta + 1..=w.saturating_sub(delta)).rev() {
                // numpy's `randint(-δ, δ, size=(2,))` is (dx, dy) in that order.
                let dx = draws.integer(-d, d);
                let dy = draws.integer(-d, d);
                let from = (y as i64 + dy) as usize * w + (x as i64 + dx) as usize;
                for channel in 0..img.c {
                    img.data[channel * plane_len + y * w + x] = img.data[channel * plane_len + from];
                }
            }
        }
    }
    img.map_planes(|p| filter::gaussian_plane(p, h, w, sigma, SKIMAGE_TRUNCATE, Border::Nearest));
}

/// imagecorruptions' `_motion_blur` of one plane: `radius` in pixels, `sigma` of the one-sided
/// Gaussian weights, `angle` in degrees.
pub(crate) fn motion_blur_plane(plane: &[f64], h: usize, w: usize, radius: usize, sigma: f64, angle: f64) -> Vec<f64> {
    let width = 2 * radius + 1;
    let mut kernel: Vec<f64> = if sigma > 0.0 {
        (0..width).map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp()).collect()
    } else {
        (0..width).map(|i| if i == 0 { 1.0 } else { 0.0 }).collect()
    };
    let total: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= total);
    let (sin, cos) = angle.to_radians().sin_cos();
    let point = (width as f64 * sin, width as f64 * cos);
    let hypot = point.0.hypot(point.1);
    let mut out = vec![0.0; plane.len()];
    for (i, &weight) in kernel.iter().enumerate() {
        let dy = -((i as f64 * point.0) / hypot - 0.5).ceil() as isize;
        let dx = -((i as f64 * point.1) / hypot - 0.5).ceil() as isize;
        if dy.unsigned_abs() >= h || dx.unsigned_abs() >= w {
            // The reference stops where the motion would leave the image; later weights are lost.
            break;
        }
        for y in 0..h {
            let row = Border::Nearest.index(y as isize - dy, h) * w;
            for x in 0..w {
                out[y * w + x] += weight * plane[row + Border::Nearest.index(x as isize - dx, w)];
            }
        }
    }
    out
}

pub(crate) fn motion(img: &mut Planes, (radius, sigma): (f64, f64), draws: &mut Draws) {
    let scale = img.scale();
    let (h, w) = (img.h, img.w);
    let (radius, sigma) = (scaled_radius(radius, scale), sigma * scale);
    let angle = draws.uniform(-45.0, 45.0);
    img.map_planes(|p| motion_blur_plane(p, h, w, radius, sigma, angle));
}

pub(crate) fn zoom(img: &mut Planes, factors: usize) {
    let (h, w) = (img.h, img.w);
    img.map_planes(|p| {
        let mut sum = p.to_vec();
        for i in 0..factors {
            let zoomed = filter::clipped_zoom(p, h, w, 1.0 + i as f64 * 0.01);
            sum.iter_mut().zip(&zoomed).for_each(|(s, z)| *s += z);
        }
        sum.into_iter().map(|s| s / (factors + 1) as f64).collect()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_are_normalised_and_shaped_like_the_reference() {
        for (r, alias) in super::super::params::DEFOCUS_BLUR {
            for scale in [0.875, 1.0, 2.0] {
                let k = disk(r, alias, scale);
                let total: f64 = k.weights.iter().sum();
                assert!((total - 1.0).abs() < 1e-12, "disk({r}, {alias}) at {scale} sums to {total}");
            }
        }
        // Radius 1 at 32×32: the plus of 5 pixels, each blurred by a 3×3 Gaussian of σ 0.2.
        let k = disk(1.0, 0.2, 1.0);
        let g = opencv_gaussian(1, 0.2);
        let c = k.size / 2;
        let at = |dy: isize, dx: isize| k.weights[(c as isize + dy) as usize * k.size + (c as isize + dx) as usize];
        let centre = (g[1] * g[1] + 4.0 * g[0] * g[1]) / 5.0;
        assert!((at(0, 0) - centre).abs() < 1e-15, "{} vs {centre}", at(0, 0));
        assert_eq!(at(3, 0), 0.0);
    }

    #[test]
    fn motion_blur_of_a_constant_is_the_constant_and_its_kernel_runs_along_the_angle() {
        let (h, w) = (9, 11);
        let flat = vec![0.25; h * w];
        assert!(motion_blur_plane(&flat, h, w, 4, 1.5, 17.0).iter().all(|v| (v - 0.25).abs() < 1e-15));
        // Radius 6 on 11 columns: the shift reaches 11 columns and the reference stops there.
        assert!(motion_blur_plane(&flat, h, w, 6, 9.0, 17.0).iter().all(|&v| v < 0.25));
        // At angle 0 the shifts are 0, −1, −2, … columns: the output at x reads x, x + 1, x + 2, …
        let mut impulse = vec![0.0; h * w];
        impulse[4 * w + 5] = 1.0;
        let out = motion_blur_plane(&impulse, h, w, 2, 1.0, 0.0);
        let total: f64 = (0..5).map(|i| (-(i * i) as f64 / 2.0).exp()).sum();
        for (x, i) in [(5usize, 0), (4, 1), (3, 2)] {
            assert!((out[4 * w + x] - (-((i * i) as f64) / 2.0).exp() / total).abs() < 1e-15, "column {x}");
        }
        assert_eq!(out[4 * w + 6], 0.0);
        assert_eq!(out[3 * w + 5], 0.0);
    }
}
