//! `freqsweep syn`: write a `Syn_D` dataset as `.npy` arrays, a sample grid and `dataset.json`.

use anyhow::{Context, Result};
use freqsweep_common::bands::Band;
use freqsweep_common::image::{sample_grid, write_rgb_png};
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::syn::{self, Split, SynConfig};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct SynArgs {
    /// The band D (1-4) that class 3 uses; the other three bands make up classes 0-2.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=4))]
    band: u8,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Number of training images (balanced over the 4 classes).
    #[arg(long, default_value_t = 10_000)]
    train: usize,
    /// Number of test images.
    #[arg(long, default_value_t = 2_000)]
    test: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Energy of the special pattern relative to one band (E_sp).
    #[arg(long, default_value_t = 0.5)]
    special_energy: f64,
    /// Image side in pixels (32 in the poster); the band radii scale with it (SCIENCE.md §4).
    #[arg(long, default_value_t = syn::IMAGE_SIZE as u64, value_parser = clap::value_parser!(u64).range(4..=1024))]
    size: u64,
}

pub fn run(args: &SynArgs) -> Result<()> {
    anyhow::ensure!(
        args.special_energy.is_finite() && args.special_energy > 0.0,
        "--special-energy must be a positive number, got {}",
        args.special_energy
    );
    let config = SynConfig {
        train: args.train,
        test: args.test,
        special_energy: args.special_energy,
        size: args.size as usize,
        layout: freqsweep_common::bands::BandRadii::default()
            .layout(Shape2::new(args.size as usize, args.size as usize))?,
        ..SynConfig::new(Band::new(args.band)?, args.seed)
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let started = Instant::now();
    let train = syn::generate(&config, Split::Train);
    train.write_npy(&args.out, "train")?;
    let test = syn::generate(&config, Split::Test);
    test.write_npy(&args.out, "test")?;

    let shown = if test.len() >= 4 { &test } else { &train };
    let (w, h, rgb) = sample_grid(shown, syn::CLASSES, 8, 3);
    write_rgb_png(&args.out.join("samples.png"), w, h, &rgb)?;

    let bands = config.class_bands();
    let description = serde_json::json!({
        "name": config.name(),
        "generator": "freqsweep SCIENCE.md section 5",
        "band": args.band,
        "seed": config.seed,
        "train": config.train,
        "test": config.test,
        "image_shape": [syn::CHANNELS, config.size, config.size],
        "classes": [
            {"label": 0, "bands": bands[0].to_string(), "special_pattern": true},
            {"label": 1, "bands": bands[1].to_string(), "special_pattern": false},
            {"label": 2, "bands": bands[2].to_string(), "special_pattern": false},
            {"label": 3, "bands": bands[3].to_string(), "special_pattern": false},
        ],
        "band_upper_radii": config.layout.upper_radii,
        "special_pattern": syn::special_pattern(config.shape())
            .iter().map(|c| [c.u, c.v]).collect::<Vec<_>>(),
        "special_energy": config.special_energy,
        "files": {"train_x": "train_x.npy", "train_y": "train_y.npy", "test_x": "test_x.npy", "test_y": "test_y.npy", "samples": "samples.png"},
        "samples_png": "one row per class, 0 at the top",
    });
    std::fs::write(args.out.join("dataset.json"), serde_json::to_string_pretty(&description)? + "\n")?;
    tracing::info!(
        dataset = %config.name(),
        train = config.train,
        test = config.test,
        seconds = started.elapsed().as_secs_f64(),
        out = %args.out.display(),
        "dataset written"
    );
    Ok(())
}
