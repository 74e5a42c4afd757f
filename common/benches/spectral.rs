//! Spectral kernels on a 10 000-image CIFAR-sized batch (`[10000, 3, 32, 32]`), the sizes a sweep
//! filters and perturbs: band filtering (`B124`), generating every Fourier basis image of a 32 × 32
//! heatmap (514 pairs), and perturbing the whole batch with one basis image (`x + ε·r·U`, clamped).
//! `cargo xtask bench` runs these next to `bench/numpy_spectral.py` (the same work in NumPy) and
//! writes the ratios to BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion};
use freqsweep_common::bands::{BandFilter, BandLayout};
use freqsweep_common::spectrum::{basis_image, Cell, Shape2};
use std::hint::black_box;

const N: usize = 10_000;

fn batch() -> Vec<f32> {
    // Deterministic pseudo-random pixels in [0, 1].
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..N * 3 * 32 * 32)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn spectral(c: &mut Criterion) {
    let shape = Shape2::new(32, 32);
    let images = batch();
    let mut group = c.benchmark_group("spectral");
    group.sample_size(10);

    let filter = BandFilter::new(shape, &BandLayout::default(), "B124".parse().unwrap(), false);
    let mut work = images.clone();
    group.bench_function("band_filter_10k", |b| {
        b.iter(|| {
            work.copy_from_slice(&images);
            filter.apply(black_box(&mut work));
        })
    });

    group.bench_function("basis_all_cells_32x32", |b| {
        b.iter(|| shape.heatmap_cells().into_iter().map(|cell| basis_image(shape, cell)).collect::<Vec<_>>())
    });

    let basis = basis_image(shape, Cell::new(3, -5));
    let signs: Vec<f32> = (0..N * 3).map(|i| if (i * 2_654_435_761) & 1 << 7 == 0 { 1.0 } else { -1.0 }).collect();
    let eps = 4.0f32;
    group.bench_function("perturb_10k", |b| {
        b.iter(|| {
            for ((plane, out), &r) in images.chunks(1024).zip(work.chunks_mut(1024)).zip(&signs) {
                let step = eps * r;
                for ((o, &x), &u) in out.iter_mut().zip(plane).zip(&basis) {
                    *o = (x + step * u).clamp(0.0, 1.0);
                }
            }
            black_box(&work);
        })
    });
    group.finish();
}

criterion_group!(benches, spectral);
criterion_main!(benches);
