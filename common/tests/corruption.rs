//! The corruption suite (SCIENCE.md §9.1) through its public API: deterministic corruptions against
//! their definitions, random ones by their statistics, seeding, ranges, errors and odd sizes.

use freqsweep_common::corruption::{
    corrupt, corrupt_batch, describe, params, Corruption, CorruptionError, ALL, JPEG_ENCODER, LABEL,
};
use freqsweep_common::spectrum::{basis_image, signs, Cell, Fft2, Shape2};
use num_complex::Complex;

/// A reproducible image in `[lo, hi]` (a hash of the index, no generator needed).
fn textured(len: usize, lo: f32, hi: f32, salt: u64) -> Vec<f32> {
    (0..len as u64)
        .map(|i| {
            let mut z = i.wrapping_add(salt.wrapping_mul(0x9e37_79b9_7f4a_7c15)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z ^= z >> 31;
            z = z.wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 29;
            lo + (hi - lo) * ((z >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

fn one(image: &[f32], c: usize, h: usize, w: usize, corruption: Corruption, severity: u32) -> Vec<f32> {
    corrupt(image, c, h, w, corruption, severity, 7, 0).unwrap()
}

fn fourier() -> Corruption {
    Corruption::Fourier { u: 2, v: -3, eps: 1.5 }
}

#[test]
fn names_round_trip_and_bad_names_are_one_line_errors() {
    for c in ALL.iter().copied().chain([fourier()]) {
        assert_eq!(Corruption::parse(&c.name()).unwrap(), c, "{}", c.name());
    }
    assert_eq!(fourier().name(), "fourier(2,-3,1.5)");
    assert_eq!(Corruption::parse(" fourier( 1, 0, 4 ) ").unwrap(), Corruption::Fourier { u: 1, v: 0, eps: 4.0 });
    let message = |name: &str| Corruption::parse(name).unwrap_err().to_string();
    assert!(message("gaussian_nosie").contains("unknown corruption \"gaussian_nosie\""));
    assert!(message("gaussian_nosie").contains("gaussian_noise"), "the known names are listed");
    assert!(message("frost").contains("frost needs a folder of frost photos"));
    for bad in ["fourier(1,2)", "fourier(1,2,-1)", "fourier(a,2,3)", "fourier(1,2,nan)"] {
        assert!(message(bad).contains(bad), "{bad}: {}", message(bad));
    }
    assert!(!message("a\nb").contains('\n'));
}

#[test]
fn bad_requests_are_refused_naming_the_value() {
    let image = vec![0.5f32; 3 * 8 * 8];
    let err = |r: Result<Vec<f32>, CorruptionError>| r.unwrap_err().to_string();
    for severity in [0, 6] {
        let e = err(corrupt(&image, 3, 8, 8, Corruption::Fog, severity, 0, 0));
        assert_eq!(e, format!("severity {severity} is outside 1..=5"));
        assert!(describe(Corruption::Fog, severity, 8, 8).is_err());
    }
    assert!(err(corrupt(&image, 3, 8, 7, Corruption::Fog, 1, 0, 0)).contains("192 values is not 3×8×7"));
    assert!(err(corrupt(&[], 0, 8, 8, Corruption::Fog, 1, 0, 0)).contains("0×8×8"));
    let two = vec![0.5f32; 2 * 8 * 8];
    for c in [Corruption::Brightness, Corruption::Saturate, Corruption::JpegCompression, Corruption::Snow] {
        assert_eq!(err(corrupt(&two, 2, 8, 8, c, 1, 0, 0)), format!("{} needs 1 or 3 channels, got 2", c.name()));
    }
    assert!(corrupt(&two, 2, 8, 8, Corruption::Contrast, 1, 0, 0).is_ok(), "per-channel corruptions take any count");
    let mut bright = image.clone();
    bright[5] = 255.0;
    assert_eq!(err(corrupt(&bright, 3, 8, 8, Corruption::Fog, 1, 0, 4)), "image 4, value 5 is 255, outside [0, 1]");
    bright[5] = f32::NAN;
    assert!(err(corrupt(&bright, 3, 8, 8, Corruption::Fog, 1, 0, 4)).contains("NaN"));
    let far = Corruption::Fourier { u: 4, v: 0, eps: 1.0 };
    assert!(err(corrupt(&image, 3, 8, 8, far, 1, 0, 0)).contains("cell (4, 0) lies outside the 8×8 spectrum"));
    let batch = vec![0.5f32; 2 * 3 * 8 * 8];
    assert!(err(corrupt_batch(&batch[1..], 3, 8, 8, Corruption::Fog, 1, 0, 0)).contains("383 values"));
}

#[test]
fn contrast_brightness_and_saturate_follow_their_definitions() {
    let (h, w) = (4, 5);
    let image = textured(3 * h * w, 0.1, 0.9, 1);
    for severity in 1..=5 {
        let c = params::CONTRAST[severity - 1];
        let out = one(&image, 3, h, w, Corruption::Contrast, severity as u32);
        for ch in 0..3 {
            let plane = &image[ch * h * w..(ch + 1) * h * w];
            let mean = plane.iter().map(|&x| f64::from(x)).sum::<f64>() / (h * w) as f64;
            for (i, &x) in plane.iter().enumerate() {
                let want = ((f64::from(x) - mean) * c + mean) as f32;
                assert!((out[ch * h * w + i] - want).abs() < 1e-6, "contrast {severity} ch {ch} px {i}");
            }
        }
    }
    // One pixel (0.2, 0.4, 0.8): hue 0.6111, saturation 0.75, value 0.8.
    let pixel = [0.2f32, 0.4, 0.8];
    let out = one(&pixel, 3, 1, 1, Corruption::Brightness, 1);
    let k = 0.85 / 0.8; // value 0.8 + 0.05, hue and saturation kept: every channel scales
    for (o, x) in out.iter().zip(pixel) {
        assert!((o - x * k).abs() < 1e-6, "brightness {out:?}");
    }
    let out = one(&pixel, 3, 1, 1, Corruption::Saturate, 1);
    let ratio = 0.3; // saturation 0.75 → 0.225: each channel's distance to the value scales by 0.3
    for (o, x) in out.iter().zip(pixel) {
        assert!((o - (0.8 - (0.8 - x) * ratio)).abs() < 1e-6, "saturate {out:?}");
    }
    // One channel is a grey pixel's value: brightness adds, saturate leaves it.
    assert!((one(&[0.5], 1, 1, 1, Corruption::Brightness, 5)[0] - 0.8).abs() < 1e-6);
    assert_eq!(one(&[0.5], 1, 1, 1, Corruption::Saturate, 5), [0.5]);
    assert_eq!(one(&[0.9], 1, 1, 1, Corruption::Brightness, 5), [1.0], "clipped");
}

#[test]
fn filters_keep_constants_and_blur_kernels_sum_to_one() {
    let (h, w) = (32, 32);
    let flat = vec![0.375f32; 3 * h * w];
    let filters = [
        Corruption::GaussianBlur,
        Corruption::DefocusBlur,
        Corruption::MotionBlur,
        Corruption::ZoomBlur,
        Corruption::GlassBlur,
        Corruption::Pixelate,
        Corruption::ElasticTransform,
        Corruption::Contrast,
    ];
    for c in filters {
        for severity in 1..=5 {
            let out = one(&flat, 3, h, w, c, severity);
            assert!(out.iter().all(|&v| (v - 0.375).abs() < 1e-6), "{} {severity}: a constant changed", c.name());
        }
    }
    // An impulse in the middle: the blur's kernel, which holds all of the impulse's mass.
    let mut impulse = vec![0.0f32; h * w];
    impulse[16 * w + 16] = 1.0;
    for c in [Corruption::GaussianBlur, Corruption::DefocusBlur] {
        for severity in 1..=5 {
            let out = one(&impulse, 1, h, w, c, severity);
            let total: f32 = out.iter().sum();
            assert!((total - 1.0).abs() < 1e-5, "{} {severity}: kernel sums to {total}", c.name());
            for (dy, dx) in [(1, 0), (0, 1), (2, 1)] {
                let at = |y: usize, x: usize| out[y * w + x];
                assert!((at(16 + dy, 16 + dx) - at(16 - dy, 16 - dx)).abs() < 1e-7, "{} is symmetric", c.name());
            }
        }
    }
    // Gaussian blur σ = 1 (severity 5): the centre weight is scipy's 1-D centre tap squared.
    let taps: f64 = (-4..=4).map(|x: i32| (-0.5 * f64::from(x * x)).exp()).sum();
    let out = one(&impulse, 1, h, w, Corruption::GaussianBlur, 5);
    assert!((f64::from(out[16 * w + 16]) - 1.0 / (taps * taps)).abs() < 1e-6);
}

#[test]
fn pixelate_boxes_down_and_back() {
    // 32 → 20 → 32 (severity 5): two-pixel stripes of 0 and 1 become a mix, constants stay.
    let (h, w) = (32, 32);
    let stripes: Vec<f32> = (0..h * w).map(|i| if (i % w) / 2 % 2 == 0 { 0.0 } else { 1.0 }).collect();
    let out = one(&stripes, 1, h, w, Corruption::Pixelate, 5);
    assert!(out.iter().any(|&v| v > 0.0 && v < 1.0), "box averaging mixes the stripes");
    // Every row is the same (the stripes are vertical) and the column mean is kept roughly.
    assert!((0..h).all(|y| out[y * w..(y + 1) * w] == out[..w]));
    let mean: f32 = out.iter().sum::<f32>() / (h * w) as f32;
    assert!((mean - 0.5).abs() < 0.1, "mean {mean}");
    // Down by 0.95 at 32 is 30 wide: columns 0 and 31 are copied from the edges.
    let ramp: Vec<f32> = (0..w).map(|x| x as f32 / 31.0).collect();
    let out = one(&ramp, 1, 1, w, Corruption::Pixelate, 1);
    assert_eq!((out[0], out[31]), (0.0, 1.0));
}

fn mean_var(values: impl Iterator<Item = f64>) -> (f64, f64, usize) {
    let v: Vec<f64> = values.collect();
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (mean, v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0), v.len())
}

#[test]
fn noises_have_their_statistics() {
    let (n, c, h, w) = (8, 3, 32, 32);
    let grey = vec![0.5f32; n * c * h * w];
    let residual = |corruption, severity| {
        let out = corrupt_batch(&grey, c, h, w, corruption, severity, 3, 0).unwrap();
        mean_var(out.iter().map(|&x| f64::from(x) - 0.5))
    };
    for severity in 1..=5u32 {
        let s = severity as usize - 1;
        // Gaussian: mean 0, variance c²; standard errors c/√N and c²·√(2/N).
        let sigma = params::GAUSSIAN_NOISE[s];
        let (mean, var, count) = residual(Corruption::GaussianNoise, severity);
        let se = (2.0 / count as f64).sqrt();
        assert!(mean.abs() < 5.0 * sigma / (count as f64).sqrt(), "gaussian {severity} mean {mean}");
        assert!((var / (sigma * sigma) - 1.0).abs() < 5.0 * se, "gaussian {severity} variance {var}");
        // Shot: Poisson(0.5·c)/c has mean 0.5 and variance 0.5/c.
        let photons = params::SHOT_NOISE[s];
        let (mean, var, count) = residual(Corruption::ShotNoise, severity);
        assert!(mean.abs() < 5.0 * (0.5 / photons / count as f64).sqrt(), "shot {severity} mean {mean}");
        assert!((var / (0.5 / photons) - 1.0).abs() < 5.0 * se + 0.02, "shot {severity} variance {var}");
        // Speckle: x + x·N(0, c²) has variance (0.5·c)².
        let sigma = 0.5 * params::SPECKLE_NOISE[s];
        let (_, var, _) = residual(Corruption::SpeckleNoise, severity);
        assert!((var / (sigma * sigma) - 1.0).abs() < 5.0 * se, "speckle {severity} variance {var}");
        // Impulse: a fraction `amount` of elements turns to 0 or 1, half each.
        let amount = params::IMPULSE_NOISE[s];
        let out = corrupt_batch(&grey, c, h, w, Corruption::ImpulseNoise, severity, 3, 0).unwrap();
        let (salt, pepper) = (out.iter().filter(|&&x| x == 1.0).count(), out.iter().filter(|&&x| x == 0.0).count());
        assert_eq!(salt + pepper, out.iter().filter(|&&x| x != 0.5).count(), "only salt and pepper");
        let count = out.len() as f64;
        let fraction = (salt + pepper) as f64 / count;
        assert!((fraction - amount).abs() < 5.0 * (amount * (1.0 - amount) / count).sqrt(), "impulse {fraction}");
        let half = salt as f64 / (salt + pepper) as f64;
        assert!((half - 0.5).abs() < 5.0 * (0.25 / (salt + pepper) as f64).sqrt(), "salt share {half}");
    }
}

/// Mean energy per cell of the residual's spectrum at radius ≤ 8 (DC left out) over that at > 8,
/// summed over channels and images of a `[N, C, 32, 32]` residual.
fn low_over_high(residual: &[f32]) -> f64 {
    let shape = Shape2::new(32, 32);
    let fft = Fft2::new(shape);
    let mut scratch = fft.scratch();
    let (mut low, mut high, mut n_low, mut n_high) = (0.0, 0.0, 0usize, 0usize);
    for plane in residual.chunks(shape.len()) {
        let mut data: Vec<Complex<f32>> = plane.iter().map(|&x| Complex::new(x, 0.0)).collect();
        fft.forward(&mut data, &mut scratch);
        for (i, z) in data.iter().enumerate() {
            let r = shape.cell_at_dft(i).radius();
            let e = f64::from(z.norm_sqr());
            if r == 0.0 {
                continue;
            } else if r <= 8.0 {
                (low, n_low) = (low + e, n_low + 1);
            } else {
                (high, n_high) = (high + e, n_high + 1);
            }
        }
    }
    (low / n_low as f64) / (high / n_high as f64)
}

#[test]
fn noise_residuals_are_flat_blur_ones_high_and_fog_low_in_frequency() {
    let (n, c, h, w) = (4, 3, 32, 32);
    let image = textured(n * c * h * w, 0.25, 0.75, 5);
    let ratio = |corruption, severity| {
        let out = corrupt_batch(&image, c, h, w, corruption, severity, 1, 0).unwrap();
        low_over_high(&out.iter().zip(&image).map(|(a, b)| a - b).collect::<Vec<_>>())
    };
    let noise = ratio(Corruption::GaussianNoise, 3);
    assert!((0.8..1.25).contains(&noise), "white noise is flat: low/high {noise}");
    // (Glass blur's residual on a white-noise image is white too: it moves pixels around.)
    for blur in [Corruption::GaussianBlur, Corruption::DefocusBlur] {
        let r = ratio(blur, 5);
        assert!(r < 0.3, "{} removes high frequencies: low/high {r}", blur.name());
    }
    let grey = vec![0.5f32; n * c * h * w];
    let out = corrupt_batch(&grey, c, h, w, Corruption::Fog, 3, 1, 0).unwrap();
    let fog = low_over_high(&out.iter().map(|a| a - 0.5).collect::<Vec<_>>());
    assert!(fog > 5.0, "fog lives at low frequencies: low/high {fog}");
}

#[test]
fn an_image_is_corrupted_alike_in_every_batch_and_unlike_at_another_index() {
    let (n, c, h, w) = (5, 3, 12, 10);
    let per = c * h * w;
    let images = textured(n * per, 0.0, 1.0, 9);
    for corruption in ALL.iter().copied().chain([fourier()]) {
        let whole = corrupt_batch(&images, c, h, w, corruption, 4, 21, 10).unwrap();
        let head = corrupt_batch(&images[..2 * per], c, h, w, corruption, 4, 21, 10).unwrap();
        let tail = corrupt_batch(&images[2 * per..], c, h, w, corruption, 4, 21, 12).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&whole), bits(&[head, tail].concat()), "{}: split batches", corruption.name());
        for i in 0..n {
            let single = corrupt(&images[i * per..(i + 1) * per], c, h, w, corruption, 4, 21, 10 + i as u64).unwrap();
            assert_eq!(bits(&single), bits(&whole[i * per..(i + 1) * per]), "{}: image {i}", corruption.name());
        }
        let image = &images[..per];
        let at = |index, seed| corrupt(image, c, h, w, corruption, 4, seed, index).unwrap();
        if corruption.is_random() {
            assert_ne!(at(10, 21), at(11, 21), "{}: another index", corruption.name());
            assert_ne!(at(10, 21), at(10, 22), "{}: another seed", corruption.name());
        } else {
            assert_eq!(at(10, 21), at(11, 22), "{}: deterministic", corruption.name());
        }
    }
}

#[test]
fn every_output_lies_in_the_unit_interval_at_every_size() {
    let shapes = [(3, 16, 16), (1, 28, 28), (3, 64, 48), (3, 5, 7), (1, 1, 1)];
    for (c, h, w) in shapes {
        let inputs = [textured(c * h * w, 0.0, 1.0, 2), vec![0.0; c * h * w], vec![1.0; c * h * w]];
        for corruption in ALL.iter().copied().chain([Corruption::Fourier { u: 0, v: 0, eps: 3.0 }]) {
            for severity in 1..=5 {
                for image in &inputs {
                    let out = corrupt(image, c, h, w, corruption, severity, 0, 3).unwrap();
                    assert_eq!(out.len(), image.len());
                    assert!(
                        out.iter().all(|x| (0.0..=1.0).contains(x)),
                        "{} {severity} on {c}×{h}×{w}",
                        corruption.name()
                    );
                }
            }
            assert!(describe(corruption, 3, h, w).unwrap().contains("regenerated (CIFAR-10-C parameters)"));
        }
    }
}

#[test]
fn fourier_adds_the_heatmaps_perturbation() {
    let (c, h, w) = (3, 8, 8);
    let image = textured(c * h * w, 0.4, 0.6, 4);
    let corruption = Corruption::Fourier { u: 1, v: 2, eps: 0.5 };
    let shape = Shape2::new(h, w);
    let basis = basis_image(shape, Cell::new(1, 2));
    let r = signs(13, shape, Cell::new(1, 2), 4, c);
    let out = corrupt(&image, c, h, w, corruption, 1, 13, 3).unwrap();
    for ch in 0..c {
        for i in 0..h * w {
            let want = image[ch * h * w + i] + 0.5 * r[3 * c + ch] * basis[i];
            assert!((out[ch * h * w + i] - want).abs() < 1e-6, "channel {ch} pixel {i}");
        }
    }
    assert_eq!(out, corrupt(&image, c, h, w, corruption, 5, 13, 3).unwrap(), "severity does not change it");
}

#[test]
fn snow_only_brightens_and_jpeg_loses_more_at_lower_quality() {
    let (c, h, w) = (3, 32, 32);
    let image = textured(c * h * w, 0.0, 1.0, 8);
    for severity in 1..=5 {
        let out = one(&image, c, h, w, Corruption::Snow, severity);
        assert!(out.iter().zip(&image).all(|(o, x)| o >= x), "snow {severity}");
    }
    // A smooth image, so that quantisation, not the texture, decides the error.
    let smooth: Vec<f32> =
        (0..c * h * w).map(|i| 0.5 + 0.3 * ((i % w) as f32 / 5.0 + (i / w) as f32 / 7.0).sin()).collect();
    let error = |severity| {
        let out = one(&smooth, c, h, w, Corruption::JpegCompression, severity);
        out.iter().zip(&smooth).map(|(a, b)| f64::from((a - b).abs())).sum::<f64>() / out.len() as f64
    };
    let (best, worst) = (error(1), error(5));
    assert!(best > 0.0 && best < worst && worst < 0.05, "jpeg mean errors {best} (q80), {worst} (q40)");
    // A flat 8-bit grey comes back within one level (the codec's DC rounding).
    let grey = vec![128.0f32 / 255.0; h * w];
    let out = one(&grey, 1, h, w, Corruption::JpegCompression, 5);
    assert!(out.iter().all(|v| (v - grey[0]).abs() <= 1.0 / 255.0 + 1e-6), "flat grey moved by more than a level");
}

#[test]
fn descriptions_say_how_parameters_scale_and_which_encoder_ran() {
    let blur = describe(Corruption::GaussianBlur, 3, 48, 64).unwrap();
    assert_eq!(
        blur,
        format!("gaussian_blur severity 3 on 48×64 (scale min(H, W)/32 = 1.5): sigma 0.7 at 32×32, 1.05 here; {LABEL}")
    );
    let motion = describe(Corruption::MotionBlur, 5, 28, 28).unwrap();
    assert!(
        motion.contains("radius 9 at 32×32, 8 here") && motion.contains("sigma 2.5 at 32×32, 2.1875 here"),
        "{motion}"
    );
    assert!(describe(Corruption::JpegCompression, 5, 32, 32).unwrap().contains(&format!("quality 40, {JPEG_ENCODER}")));
    let zoom = describe(Corruption::ZoomBlur, 1, 32, 32).unwrap();
    assert!(zoom.contains("zoom factors 1 to 1.06 step 0.01"), "{zoom}");
}

#[test]
fn glass_blur_copies_each_pixel_from_itself_or_its_upper_left_neighbours() {
    // Severity 1 at 32×32: σ 0.05 (a one-tap Gaussian, the identity), δ 1, one pass.
    let (h, w) = (32, 32);
    let image: Vec<f32> = (0..h * w).map(|i| i as f32 / (h * w) as f32).collect();
    let out = one(&image, 1, h, w, Corruption::GlassBlur, 1);
    let mut moved = 0;
    for y in 0..h {
        for x in 0..w {
            let v = out[y * w + x];
            if !(2..h).contains(&y) || !(2..w).contains(&x) {
                assert_eq!(v, image[y * w + x], "({y}, {x}) lies outside the shuffled rows and columns");
                continue;
            }
            let sources = [(y, x), (y - 1, x), (y, x - 1), (y - 1, x - 1)].map(|(a, b)| image[a * w + b]);
            assert!(sources.contains(&v), "({y}, {x}) took {v}, not a value of its upper-left neighbours");
            moved += usize::from(v != image[y * w + x]);
        }
    }
    // Each of the 900 visited pixels keeps its value with probability ¼.
    assert!((600..750).contains(&moved), "{moved} of 900 pixels moved");
}
