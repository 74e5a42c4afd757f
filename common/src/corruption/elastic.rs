//! `elastic_transform`: a random affine warp, then a smooth random displacement field.
//!
//! # Choices
//! - Scales are the reference's fractions of `IMSIZE` = 32 applied to `min(H, W)`: displacement
//!   amplitude α, its smoothing σ and the affine jitter.
//! - Affine: the reference's three points around the centre (`centre ± s`, `(c₀ + s, c₁ − s)`,
//!   `s = ⌊min(H, W)/3⌋`), each coordinate moved by `U(−jitter, jitter)`, and OpenCV's
//!   `warpAffine` (the output at `p` reads the input at `M⁻¹ p`, bilinear, whole-sample symmetric
//!   edges). The reference builds the centre from `(H, W)` but hands it to OpenCV as `(x, y)`;
//!   here the centre is `(W/2, H/2)` in `(x, y)`, the same on square images. OpenCV's 1/32-pixel
//!   rounding of sample positions is not reproduced (exact bilinear weights). A degenerate
//!   triangle (images under 3 pixels, or a jitter that makes the points collinear) skips the warp.
//! - Displacements: `dx` then `dy`, each `U(−1, 1)` per pixel smoothed by skimage's `gaussian`
//!   (σ, truncated at 3σ, half-sample symmetric edges) and multiplied by α; every channel moves
//!   alike and is sampled by scipy's order-1 `map_coordinates` (half-sample symmetric edges).

use super::filter::{self, Border};
use super::sample::Draws;
use super::Planes;

/// The affine map sending each `from[k]` to `to[k]` (`(x, y)` points), as `[a, b, c, d, e, f]` with
/// `x' = a·x + b·y + c`, `y' = d·x + e·y + f`; `None` when `from` is degenerate.
fn affine_through(from: [[f64; 2]; 3], to: [[f64; 2]; 3]) -> Option<[f64; 6]> {
    let [[x0, y0], [x1, y1], [x2, y2]] = from;
    let det = x0 * (y1 - y2) - y0 * (x1 - x2) + (x1 * y2 - x2 * y1);
    if det.abs() < 1e-9 {
        return None;
    }
    // Cramer's rule on [x y 1]·(a, b, c)ᵀ = x' and likewise for y'.
    let solve = |t: [f64; 3]| {
        let a = (t[0] * (y1 - y2) - y0 * (t[1] - t[2]) + (t[1] * y2 - t[2] * y1)) / det;
        let b = (x0 * (t[1] - t[2]) - t[0] * (x1 - x2) + (x1 * t[2] - x2 * t[1])) / det;
        let c = (x0 * (y1 * t[2] - y2 * t[1]) - y0 * (x1 * t[2] - x2 * t[1]) + t[0] * (x1 * y2 - x2 * y1)) / det;
        [a, b, c]
    };
    let [a, b, c] = solve([to[0][0], to[1][0], to[2][0]]);
    let [d, e, f] = solve([to[0][1], to[1][1], to[2][1]]);
    Some([a, b, c, d, e, f])
}

pub(crate) fn elastic(img: &mut Planes, (alpha, sigma, jitter): (f64, f64, f64), draws: &mut Draws) {
    let (h, w) = (img.h, img.w);
    let size = h.min(w) as f64;
    let (alpha, sigma, jitter) = (alpha * size, sigma * size, jitter * size);
    let (cx, cy) = ((w / 2) as f64, (h / 2) as f64);
    let s = (h.min(w) / 3) as f64;
    let from = [[cx + s, cy + s], [cx + s, cy - s], [cx - s, cy - s]];
    let mut to = from;
    for point in &mut to {
        for v in point.iter_mut() {
            *v += draws.uniform(-jitter, jitter);
        }
    }
    // warpAffine samples the input at M⁻¹·p: the map from the moved points back to the originals.
    if let Some([a, b, c, d, e, f]) = affine_through(to, from) {
        img.map_planes(|p| {
            (0..h * w)
                .map(|i| {
                    let (x, y) = ((i % w) as f64, (i / w) as f64);
                    filter::bilinear(p, h, w, d * x + e * y + f, a * x + b * y + c, Border::Mirror)
                })
                .collect()
        });
    }
    let mut field = || {
        let noise: Vec<f64> = (0..h * w).map(|_| draws.uniform(-1.0, 1.0)).collect();
        let smooth = filter::gaussian_plane(&noise, h, w, sigma, 3.0, Border::Reflect);
        smooth.into_iter().map(|v| v * alpha).collect::<Vec<f64>>()
    };
    let dx = field();
    let dy = field();
    img.map_planes(|p| {
        (0..h * w)
            .map(|i| filter::bilinear(p, h, w, (i / w) as f64 + dy[i], (i % w) as f64 + dx[i], Border::Reflect))
            .collect()
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_through_three_points_maps_them() {
        let from = [[26.0, 26.0], [26.0, 6.0], [6.0, 6.0]];
        let to = [[27.5, 24.0], [25.0, 7.25], [6.5, 4.0]];
        let [a, b, c, d, e, f] = affine_through(from, to).unwrap();
        for (p, q) in from.iter().zip(&to) {
            assert!((a * p[0] + b * p[1] + c - q[0]).abs() < 1e-12 && (d * p[0] + e * p[1] + f - q[1]).abs() < 1e-12);
        }
        assert!(affine_through([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]], to).is_none());
    }
}
