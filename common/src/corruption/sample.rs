//! The random draws of the corruptions: one ChaCha8 generator per (corruption, severity, image
//! index, seed), and the few distributions they need (uniform, normal, Poisson), written here
//! because `rand` 0.9 has no normal or Poisson sampler and the workspace does not carry
//! `rand_distr`. Every sampler is a fixed function of the generator's stream, so an image's
//! corruption is the same on every machine.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// A corruption's draws for one image.
pub(crate) struct Draws {
    rng: ChaCha8Rng,
    /// The second normal of the last Box–Muller pair, not yet handed out.
    spare_normal: Option<f64>,
}

impl Draws {
    /// The generator of `(name, severity, image, seed)`: ChaCha8 keyed by the SHA-256 of the four,
    /// so two images, severities or corruptions never share a stream and an image's draws do not
    /// depend on which batch or worker corrupts it.
    pub(crate) fn new(name: &str, severity: u8, image: u64, seed: u64) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"freqsweep corruption v1\0");
        hash.update(name.as_bytes());
        hash.update([0, severity]);
        hash.update(image.to_le_bytes());
        hash.update(seed.to_le_bytes());
        Draws { rng: ChaCha8Rng::from_seed(hash.finalize().into()), spare_normal: None }
    }

    /// Uniform on `[0, 1)`.
    pub(crate) fn unit(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    /// Uniform on `[low, high)` (numpy's `uniform(low, high)`).
    pub(crate) fn uniform(&mut self, low: f64, high: f64) -> f64 {
        low + (high - low) * self.unit()
    }

    /// Uniform integer in `[low, high)` (numpy's `randint(low, high)`: the upper end is excluded).
    pub(crate) fn integer(&mut self, low: i64, high: i64) -> i64 {
        self.rng.random_range(low..high)
    }

    /// Standard normal by Box–Muller; the pair's second value serves the next call.
    pub(crate) fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // 1 − u lies in (0, 1], so the logarithm is finite.
        let radius = (-2.0 * (1.0 - self.unit()).ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * self.unit()).sin_cos();
        self.spare_normal = Some(radius * sin);
        radius * cos
    }

    /// Poisson with mean `lambda ≥ 0`: multiplication of uniforms below 10 (few draws), Hörmann's
    /// transformed rejection (PTRS, the method numpy uses) from 10 on, whose cost does not grow
    /// with `lambda`.
    pub(crate) fn poisson(&mut self, lambda: f64) -> f64 {
        if lambda <= 0.0 || !lambda.is_finite() {
            return 0.0;
        }
        if lambda < 10.0 {
            let limit = (-lambda).exp();
            let (mut k, mut product) = (0.0, self.unit());
            while product > limit {
                k += 1.0;
                product *= self.unit();
            }
            return k;
        }
        self.poisson_ptrs(lambda)
    }

    fn poisson_ptrs(&mut self, lambda: f64) -> f64 {
        let (slam, loglam) = (lambda.sqrt(), lambda.ln());
        let b = 0.931 + 2.53 * slam;
        let a = -0.059 + 0.02483 * b;
        let inv_alpha = 1.1239 + 1.1328 / (b - 3.4);
        let vr = 0.9277 - 3.6224 / (b - 2.0);
        loop {
            let u = self.unit() - 0.5;
            let v = self.unit();
            let us = 0.5 - u.abs();
            let k = ((2.0 * a / us + b) * u + lambda + 0.43).floor();
            if us >= 0.07 && v <= vr {
                return k;
            }
            if k < 0.0 || (us < 0.013 && v > us) {
                continue;
            }
            if v.ln() + inv_alpha.ln() - (a / (us * us) + b).ln() <= -lambda + k * loglam - log_gamma(k + 1.0) {
                return k;
            }
        }
    }
}

/// `ln Γ(x)` for `x ≥ 1` by the Stirling series, shifted up to 7 first where `x` is small.
fn log_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 10] = [
        8.333333333333333e-02,
        -2.777777777777778e-03,
        7.936507936507937e-04,
        -5.952380952380952e-04,
        8.417508417508418e-04,
        -1.917526917526918e-03,
        6.410_256_410_256_41e-3,
        -2.955065359477124e-02,
        1.796443723688307e-01,
        -1.39243221690590e+00,
    ];
    if x == 1.0 || x == 2.0 {
        return 0.0;
    }
    let shift = if x < 7.0 { (7.0 - x).floor() } else { 0.0 };
    let mut x0 = x + shift;
    let x2 = 1.0 / (x0 * x0);
    let series = COEFFICIENTS.iter().rev().fold(0.0, |acc, &c| acc * x2 + c);
    let mut value = series / x0 + 0.5 * (std::f64::consts::TAU).ln() + (x0 - 0.5) * x0.ln() - x0;
    for _ in 0..shift as u32 {
        value -= (x0 - 1.0).ln();
        x0 -= 1.0;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean_var(values: &[f64]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        (mean, values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0))
    }

    #[test]
    fn log_gamma_matches_factorials() {
        let mut factorial = 1.0f64;
        for k in 1..30u32 {
            factorial *= f64::from(k);
            let got = log_gamma(f64::from(k) + 1.0);
            assert!((got - factorial.ln()).abs() < 1e-9, "ln {k}! = {got}, want {}", factorial.ln());
        }
    }

    #[test]
    fn normal_and_poisson_have_their_moments() {
        let mut draws = Draws::new("test", 1, 0, 0);
        let n = 40_000;
        let (mean, var) = mean_var(&(0..n).map(|_| draws.normal()).collect::<Vec<_>>());
        // Standard errors: 1/√n = 0.005 for the mean, √(2/n) = 0.007 for the variance.
        assert!(mean.abs() < 0.03 && (var - 1.0).abs() < 0.04, "normal mean {mean} var {var}");
        for lambda in [0.5, 3.0, 9.9, 10.0, 37.0, 250.0] {
            let (mean, var) = mean_var(&(0..n).map(|_| draws.poisson(lambda)).collect::<Vec<_>>());
            let se = (lambda / n as f64).sqrt();
            assert!((mean - lambda).abs() < 5.0 * se, "Poisson({lambda}) mean {mean}");
            assert!((var / lambda - 1.0).abs() < 0.06, "Poisson({lambda}) variance {var}");
        }
    }

    #[test]
    fn streams_differ_by_every_key() {
        let first = |name: &str, severity, image, seed| Draws::new(name, severity, image, seed).unit();
        let base = first("fog", 1, 0, 0);
        assert_eq!(base, first("fog", 1, 0, 0));
        for other in [first("snow", 1, 0, 0), first("fog", 2, 0, 0), first("fog", 1, 1, 0), first("fog", 1, 0, 1)] {
            assert_ne!(base, other);
        }
    }
}
