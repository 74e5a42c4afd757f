//! Fog and snow.
//!
//! # Choices
//! - `fog`: the reference's diamond-square `plasma_fractal` (corner 0, wibble 100 divided by the
//!   decay each level, every new point the mean of its four neighbours (wrapping around) plus
//!   `wibble·U(−wibble, wibble)`, draws in the reference's order, then rescaled to `[0, 1]`), on
//!   a map of the next power of two ≥ `max(H, W)` (at least 2) cropped to the image, as
//!   imagecorruptions does; 32 × 32 at CIFAR size like the reference. The same map is added to
//!   every channel: `x + a·plasma`, then `x·m/(m + a)` with `m` the image's maximum over all channels
//!   before the fog.
//! - `snow`: a layer `N(μ, σ)` per pixel, `clipped_zoom`ed, zeroed below the threshold, clipped to
//!   `[0, 1]`, then motion-blurred by the same kernel as `motion_blur` (imagecorruptions' rather
//!   than the reference's ImageMagick), angle uniform in (−135°, −45°), radius and σ scaled with the
//!   image. The image is whitened toward `max(x, 1.5·grey + 0.5)` by `1 − blend` (grey is OpenCV's
//!   `0.299 R + 0.587 G + 0.114 B`; a one-channel image is its own grey), and the layer and its
//!   180° rotation are added.

use super::blur::motion_blur_plane;
use super::filter;
use super::sample::Draws;
use super::{scaled_radius, Planes};

/// The reference's `plasma_fractal(mapsize, wibbledecay)`: a `size × size` map (`size` a power of
/// two ≥ 2) in `[0, 1]`.
pub(crate) fn plasma_fractal(size: usize, decay: f64, draws: &mut Draws) -> Vec<f64> {
    let mut map = vec![0.0; size * size];
    let mut step = size;
    let mut wibble = 100.0;
    while step >= 2 {
        let (half, cells) = (step / 2, size / step);
        let wrap = |i: usize, delta: isize| (i as isize + delta).rem_euclid(cells as isize) as usize;
        let corner = |map: &[f64], i: usize, j: usize| map[i * step * size + j * step];
        let centre = |map: &[f64], i: usize, j: usize| map[(i * step + half) * size + j * step + half];
        // Squares: each centre from its four corners.
        for i in 0..cells {
            for j in 0..cells {
                let sum = corner(&map, i, j)
                    + corner(&map, wrap(i, 1), j)
                    + corner(&map, i, wrap(j, 1))
                    + corner(&map, wrap(i, 1), wrap(j, 1));
                map[(i * step + half) * size + j * step + half] = sum / 4.0 + wibble * draws.uniform(-wibble, wibble);
            }
        }
        // Diamonds: the midpoints of the top edges, then of the left edges, from two corners and two
        // centres each.
        for i in 0..cells {
            for j in 0..cells {
                let sum = centre(&map, i, j)
                    + centre(&map, wrap(i, -1), j)
                    + corner(&map, i, j)
                    + corner(&map, i, wrap(j, 1));
                map[i * step * size + j * step + half] = sum / 4.0 + wibble * draws.uniform(-wibble, wibble);
            }
        }
        for i in 0..cells {
            for j in 0..cells {
                let sum = centre(&map, i, j)
                    + centre(&map, i, wrap(j, -1))
                    + corner(&map, i, j)
                    + corner(&map, wrap(i, 1), j);
                map[(i * step + half) * size + j * step] = sum / 4.0 + wibble * draws.uniform(-wibble, wibble);
            }
        }
        step /= 2;
        wibble /= decay;
    }
    let min = map.iter().copied().fold(f64::INFINITY, f64::min);
    let max = map.iter().map(|v| v - min).fold(0.0, f64::max);
    map.iter().map(|v| if max > 0.0 { (v - min) / max } else { 0.0 }).collect()
}

pub(crate) fn fog(img: &mut Planes, (amplitude, decay): (f64, f64), draws: &mut Draws) {
    let max = img.data.iter().copied().fold(0.0, f64::max);
    let size = img.h.max(img.w).next_power_of_two().max(2);
    let plasma = plasma_fractal(size, decay, draws);
    let (h, w) = (img.h, img.w);
    img.map_planes(|p| {
        (0..h * w).map(|i| (p[i] + amplitude * plasma[(i / w) * size + i % w]) * max / (max + amplitude)).collect()
    });
}

pub(crate) fn snow(img: &mut Planes, p: [f64; 7], draws: &mut Draws) {
    let [mean, deviation, zoom, threshold, radius, sigma, blend] = p;
    let (h, w) = (img.h, img.w);
    let flakes: Vec<f64> = (0..h * w).map(|_| mean + deviation * draws.normal()).collect();
    let flakes: Vec<f64> = filter::clipped_zoom(&flakes, h, w, zoom)
        .into_iter()
        .map(|v| if v < threshold { 0.0 } else { v.clamp(0.0, 1.0) })
        .collect();
    let scale = img.scale();
    let angle = draws.uniform(-135.0, -45.0);
    let layer = motion_blur_plane(&flakes, h, w, scaled_radius(radius, scale), sigma * scale, angle);
    let grey: Vec<f64> = if img.c == 3 {
        (0..h * w).map(|i| 0.299 * img.plane(0)[i] + 0.587 * img.plane(1)[i] + 0.114 * img.plane(2)[i]).collect()
    } else {
        img.plane(0).to_vec()
    };
    let n = h * w;
    img.map_planes(|p| {
        (0..n)
            .map(|i| {
                let whitened = blend * p[i] + (1.0 - blend) * p[i].max(grey[i] * 1.5 + 0.5);
                // `np.rot90(layer, 2)`: the layer turned by 180°, pixel `i` reads pixel `n − 1 − i`.
                whitened + layer[i] + layer[n - 1 - i]
            })
            .collect()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plasma_spans_zero_to_one_and_is_smooth_at_steep_decay() {
        let mut draws = Draws::new("test", 1, 0, 0);
        for size in [2, 8, 32, 64] {
            let map = plasma_fractal(size, 3.0, &mut draws);
            let (min, max) = map.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
            assert_eq!((min, max), (0.0, 1.0), "size {size}");
        }
        // Decay 3 makes the finest level ~3⁵ times weaker than the first: neighbours are close.
        let map = plasma_fractal(32, 3.0, &mut draws);
        let steps: f64 = (0..32 * 31).map(|i| (map[i] - map[i + 32]).abs()).sum::<f64>() / (32.0 * 31.0);
        assert!(steps < 0.15, "mean neighbour step {steps}");
    }
}
