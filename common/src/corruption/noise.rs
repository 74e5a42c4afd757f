//! The four noises of CIFAR-10-C, per element (every channel of every pixel draws its own noise),
//! in the order of the image's elements (channel-major, as the `[C, H, W]` layout stores them).
//! Outputs are clipped by the caller.

use super::sample::Draws;

/// `x + N(0, c²)`.
pub(crate) fn gaussian(data: &mut [f64], c: f64, draws: &mut Draws) {
    for x in data {
        *x += c * draws.normal();
    }
}

/// `Poisson(x·c) / c`: photon noise with `c` photons at full scale, so its variance `x/c` grows
/// with brightness.
pub(crate) fn shot(data: &mut [f64], c: f64, draws: &mut Draws) {
    for x in data {
        *x = draws.poisson(*x * c) / c;
    }
}

/// skimage's `random_noise(mode='s&p', amount)`: each element independently becomes, with
/// probability `amount`, salt (1) or pepper (0) with equal odds.
pub(crate) fn impulse(data: &mut [f64], amount: f64, draws: &mut Draws) {
    for x in data {
        let flipped = draws.unit() < amount;
        let salt = draws.unit() < 0.5;
        if flipped {
            *x = if salt { 1.0 } else { 0.0 };
        }
    }
}

/// `x + x·N(0, c²)`: multiplicative noise, none on black.
pub(crate) fn speckle(data: &mut [f64], c: f64, draws: &mut Draws) {
    for x in data {
        *x += *x * c * draws.normal();
    }
}
