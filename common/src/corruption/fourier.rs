//! `fourier(u, v, ε)`: `x + ε·r·U_{u,v}` per channel (SCIENCE.md §2, §9.1), clipped by the caller.
//! The basis image is [`crate::spectrum::basis_image`] and the signs are
//! [`crate::spectrum::sign_at`], the heatmap's own: image `i` of seed `S` and channel `ch` gets the
//! sign the Fourier heatmap of seed `S` gives it at `(u, v)`, so a corrupted set and a heatmap cell
//! see the same perturbed images.

use super::Planes;
use crate::spectrum::{basis_image, sign_at, Cell, Shape2};

/// The cell is checked to lie in the spectrum before this is called.
pub(crate) fn perturb(img: &mut Planes, u: i32, v: i32, eps: f64, seed: u64, image_index: u64) {
    let shape = Shape2::new(img.h, img.w);
    let cell = Cell::new(u, v);
    let basis = basis_image(shape, cell);
    let channels = img.c;
    let mut channel = 0;
    img.map_planes(|p| {
        let r = f64::from(sign_at(seed, shape, cell, image_index, channel, channels));
        channel += 1;
        p.iter().zip(&basis).map(|(x, &b)| x + eps * r * f64::from(b)).collect()
    });
}
