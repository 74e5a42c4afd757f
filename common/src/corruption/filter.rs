//! Filters and resampling on one channel plane (row-major `h × w`, `f64`), each written to match
//! the library call the reference generator makes: scipy/skimage Gaussian filters, OpenCV's
//! `filter2D` and `GaussianBlur`, scipy's order-1 `zoom`, PIL's `BOX` resize, and bilinear
//! sampling with the border rules those libraries use.

/// How a filter reads past the image edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Border {
    /// Repeat the edge pixel: `a a | a b c d | d d` (scipy `nearest`, OpenCV `BORDER_REPLICATE`).
    Nearest,
    /// Half-sample symmetric: `b a | a b c d | d c` (scipy `reflect`).
    Reflect,
    /// Whole-sample symmetric: `c b | a b c d | c b` (scipy `mirror`, OpenCV's default
    /// `BORDER_REFLECT_101`).
    Mirror,
}

impl Border {
    /// The in-range index that stands for `i` on an axis of `n ≥ 1` samples, for any `i` (kernels
    /// wider than the image reflect more than once).
    pub(crate) fn index(self, i: isize, n: usize) -> usize {
        let n_i = n as isize;
        if (0..n_i).contains(&i) {
            return i as usize;
        }
        match self {
            Border::Nearest => i.clamp(0, n_i - 1) as usize,
            Border::Reflect => {
                let m = i.rem_euclid(2 * n_i);
                (if m < n_i { m } else { 2 * n_i - 1 - m }) as usize
            }
            Border::Mirror if n == 1 => 0,
            Border::Mirror => {
                let period = 2 * n_i - 2;
                let m = i.rem_euclid(period);
                (if m < n_i { m } else { period - m }) as usize
            }
        }
    }
}

/// scipy's `_gaussian_kernel1d`: weights `exp(−x²/2σ²)` on `x ∈ [−r, r]`, `r = ⌊truncate·σ + ½⌋`,
/// normalised to sum 1.
pub(crate) fn gaussian_kernel(sigma: f64, truncate: f64) -> Vec<f64> {
    let radius = (truncate * sigma + 0.5).floor() as isize;
    let weights: Vec<f64> = (-radius..=radius).map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp()).collect();
    let total: f64 = weights.iter().sum();
    weights.into_iter().map(|w| w / total).collect()
}

/// Correlate every row (`along_rows`: along x) or every column with an odd-length `kernel`
/// centred on its middle tap.
pub(crate) fn correlate_1d(
    plane: &[f64],
    h: usize,
    w: usize,
    kernel: &[f64],
    border: Border,
    along_rows: bool,
) -> Vec<f64> {
    let radius = (kernel.len() / 2) as isize;
    let mut out = vec![0.0; plane.len()];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (k, &weight) in kernel.iter().enumerate() {
                let offset = k as isize - radius;
                acc += weight
                    * if along_rows {
                        plane[y * w + border.index(x as isize + offset, w)]
                    } else {
                        plane[border.index(y as isize + offset, h) * w + x]
                    };
            }
            out[y * w + x] = acc;
        }
    }
    out
}

/// skimage's `gaussian(x, sigma)` on one plane (scipy `gaussian_filter`, `truncate` 4 by default in
/// skimage, `border` `nearest` there). scipy skips an axis whose σ is ≤ 1e-15, so σ = 0 is the
/// identity.
pub(crate) fn gaussian_plane(plane: &[f64], h: usize, w: usize, sigma: f64, truncate: f64, border: Border) -> Vec<f64> {
    if sigma <= 1e-15 {
        return plane.to_vec();
    }
    let kernel = gaussian_kernel(sigma, truncate);
    let columns = correlate_1d(plane, h, w, &kernel, border, false);
    correlate_1d(&columns, h, w, &kernel, border, true)
}

/// A dense 2-D kernel (row-major `size × size`, `size` odd, anchored at its centre).
pub(crate) struct Kernel2 {
    pub(crate) size: usize,
    pub(crate) weights: Vec<f64>,
}

/// OpenCV's `filter2D(x, -1, kernel)`: correlation with the kernel centred, `BORDER_REFLECT_101`.
/// Zero taps are skipped (a disk kernel is mostly zeros), which changes nothing in the sum.
pub(crate) fn filter_2d(plane: &[f64], h: usize, w: usize, kernel: &Kernel2) -> Vec<f64> {
    let radius = (kernel.size / 2) as isize;
    let taps: Vec<(isize, isize, f64)> = kernel
        .weights
        .iter()
        .enumerate()
        .filter(|(_, &k)| k != 0.0)
        .map(|(i, &k)| ((i / kernel.size) as isize - radius, (i % kernel.size) as isize - radius, k))
        .collect();
    let mut out = vec![0.0; plane.len()];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = taps
                .iter()
                .map(|&(dy, dx, k)| {
                    k * plane[Border::Mirror.index(y as isize + dy, h) * w + Border::Mirror.index(x as isize + dx, w)]
                })
                .sum();
        }
    }
    out
}

/// Bilinear sample at row `y`, column `x` (pixel centres on integers), reading past the edge by
/// `border`.
pub(crate) fn bilinear(plane: &[f64], h: usize, w: usize, y: f64, x: f64, border: Border) -> f64 {
    let (y0, x0) = (y.floor(), x.floor());
    let (fy, fx) = (y - y0, x - x0);
    let (y0, x0) = (y0 as isize, x0 as isize);
    let at = |yy: isize, xx: isize| plane[border.index(yy, h) * w + border.index(xx, w)];
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
    let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// One axis of the reference's `clipped_zoom`: the source position of each of the `n` output
/// samples. The centred crop of `⌈n/z⌉` samples (starting at `(n − crop) / 2`) is zoomed by
/// scipy's order-1 `zoom` to `round(crop·z)` samples, which maps output `o` to input
/// `o·(crop − 1)/(out − 1)` (corners aligned), and the centre `n` samples are kept.
fn zoom_axis(n: usize, factor: f64) -> Vec<f64> {
    let crop = ((n as f64 / factor).ceil() as usize).clamp(1, n);
    let top = (n - crop) / 2;
    let zoomed = ((crop as f64 * factor).round_ties_even() as usize).max(n);
    let trim = (zoomed - n) / 2;
    let step = if zoomed > 1 { (crop - 1) as f64 / (zoomed - 1) as f64 } else { 0.0 };
    (0..n).map(|o| top as f64 + (o + trim) as f64 * step).collect()
}

/// The two neighbours and the weight of the second for each position (positions lie in `[0, n − 1]`).
fn linear_taps(positions: &[f64], n: usize) -> Vec<(usize, usize, f64)> {
    positions
        .iter()
        .map(|&p| {
            let i0 = (p.floor() as usize).min(n - 1);
            (i0, (i0 + 1).min(n - 1), p - i0 as f64)
        })
        .collect()
}

/// The reference's `clipped_zoom(x, z)` for `z ≥ 1`, per axis on non-square planes. Positions stay
/// inside the crop, so the border rule never matters; order-1 interpolation is separable, so rows
/// are interpolated first, then columns (the same bilinear value up to rounding).
pub(crate) fn clipped_zoom(plane: &[f64], h: usize, w: usize, factor: f64) -> Vec<f64> {
    let (ys, xs) = (linear_taps(&zoom_axis(h, factor), h), linear_taps(&zoom_axis(w, factor), w));
    let mut wide = Vec::with_capacity(plane.len());
    for row in plane.chunks(w) {
        wide.extend(xs.iter().map(|&(a, b, f)| row[a] * (1.0 - f) + row[b] * f));
    }
    let mut out = Vec::with_capacity(plane.len());
    for &(a, b, f) in &ys {
        let (top, bottom) = (&wide[a * w..(a + 1) * w], &wide[b * w..(b + 1) * w]);
        out.extend(top.iter().zip(bottom).map(|(t, u)| t * (1.0 - f) + u * f));
    }
    out
}

/// PIL's resampling coefficients for the `BOX` filter along one axis (`precompute_coeffs` in
/// Pillow's `Resample.c`): output `o` averages the inputs whose centres fall in
/// `(c − s/2, c + s/2]` around its centre `c = (o + ½)·s`, `s = in/out` (at least one input, the
/// nearest, when enlarging).
fn box_axis(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = 0.5 * filter_scale;
    (0..output)
        .map(|o| {
            let centre = (o as f64 + 0.5) * scale;
            // C's truncation toward zero, then the clamp, as Pillow does.
            let first = ((centre - support + 0.5).trunc() as isize).max(0) as usize;
            let last = ((centre + support + 0.5).trunc() as usize).min(input);
            let mut weights: Vec<f64> = (first..last)
                .map(|i| {
                    let t = (i as f64 - centre + 0.5) / filter_scale;
                    if t > -0.5 && t <= 0.5 {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let total: f64 = weights.iter().sum();
            if total != 0.0 {
                weights.iter_mut().for_each(|w| *w /= total);
            }
            (first, weights)
        })
        .collect()
}

/// PIL `resize((out_w, out_h), BOX)` of one plane, horizontal pass first as Pillow does (in `f64`,
/// without Pillow's 8-bit rounding between and after the passes).
pub(crate) fn box_resize(plane: &[f64], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f64> {
    let (columns, rows) = (box_axis(w, out_w), box_axis(h, out_h));
    let mut wide = vec![0.0; h * out_w];
    for y in 0..h {
        for (x, (first, weights)) in columns.iter().enumerate() {
            wide[y * out_w + x] = weights.iter().enumerate().map(|(k, wt)| wt * plane[y * w + first + k]).sum();
        }
    }
    let mut out = vec![0.0; out_h * out_w];
    for (y, (first, weights)) in rows.iter().enumerate() {
        for x in 0..out_w {
            out[y * out_w + x] = weights.iter().enumerate().map(|(k, wt)| wt * wide[(first + k) * out_w + x]).sum();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borders_follow_their_libraries() {
        let n = 4;
        let got = |b: Border| (-5..9).map(|i| b.index(i, n)).collect::<Vec<_>>();
        assert_eq!(got(Border::Nearest), [0, 0, 0, 0, 0, 0, 1, 2, 3, 3, 3, 3, 3, 3]);
        // scipy reflect: d c b a | a b c d | d c b a
        assert_eq!(got(Border::Reflect), [3, 3, 2, 1, 0, 0, 1, 2, 3, 3, 2, 1, 0, 0]);
        // OpenCV reflect-101: c b | a b c d | c b a
        assert_eq!(got(Border::Mirror), [1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]);
        assert!([Border::Nearest, Border::Reflect, Border::Mirror].iter().all(|b| b.index(-3, 1) == 0));
    }

    #[test]
    fn gaussian_kernel_is_scipys() {
        let k = gaussian_kernel(1.0, 4.0);
        assert_eq!(k.len(), 9);
        let norm: f64 = (-4..=4).map(|x: i32| (-0.5 * f64::from(x * x)).exp()).sum();
        assert!((k[4] - 1.0 / norm).abs() < 1e-15 && (k[5] - (-0.5f64).exp() / norm).abs() < 1e-15);
        assert_eq!(gaussian_kernel(0.4, 4.0).len(), 5, "radius ⌊4·0.4 + ½⌋ = 2");
    }

    #[test]
    fn zoom_by_one_is_the_identity_and_zoom_keeps_the_centre() {
        let (h, w) = (5, 6);
        let plane: Vec<f64> = (0..h * w).map(|i| i as f64).collect();
        assert_eq!(clipped_zoom(&plane, h, w, 1.0), plane);
        // 32 samples zoomed by 1.1: a crop of 30 from 1, resized to 33, trimmed by 0.
        let axis = zoom_axis(32, 1.1);
        assert_eq!(axis[0], 1.0);
        assert!((axis[31] - (1.0 + 31.0 * 29.0 / 32.0)).abs() < 1e-12);
    }

    #[test]
    fn separable_zoom_equals_bilinear_sampling() {
        let (h, w) = (7, 9);
        let plane: Vec<f64> = (0..h * w).map(|i| ((i * 37) % 11) as f64 / 10.0).collect();
        for factor in [1.0, 1.07, 1.25, 2.25] {
            let (ys, xs) = (zoom_axis(h, factor), zoom_axis(w, factor));
            let want: Vec<f64> = ys
                .iter()
                .flat_map(|&y| xs.iter().map(move |&x| (y, x)))
                .map(|(y, x)| bilinear(&plane, h, w, y, x, Border::Nearest))
                .collect();
            let got = clipped_zoom(&plane, h, w, factor);
            assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-12), "factor {factor}");
        }
    }

    #[test]
    fn box_resize_averages_whole_pixels_and_enlarges_by_nearest() {
        // 4 → 2 averages pairs; 2 → 4 repeats each pixel.
        let plane = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(box_resize(&plane, 1, 4, 1, 2), [0.5, 2.5]);
        assert_eq!(box_resize(&[0.0, 1.0], 1, 2, 1, 4), [0.0, 0.0, 1.0, 1.0]);
        // 32 → 30: output 0 is input 0 alone (centre 0.533, support 0.533).
        let row: Vec<f64> = (0..32).map(f64::from).collect();
        assert_eq!(box_resize(&row, 1, 32, 1, 30)[0], 0.0);
    }

    #[test]
    fn filter_2d_of_a_centred_delta_kernel_is_the_identity() {
        let mut weights = vec![0.0; 9];
        weights[4] = 1.0;
        let plane: Vec<f64> = (0..12).map(f64::from).collect();
        assert_eq!(filter_2d(&plane, 3, 4, &Kernel2 { size: 3, weights }), plane);
    }
}
