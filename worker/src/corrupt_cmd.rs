//! `freqsweep-worker corrupt`: a corrupted copy of an image set (SCIENCE.md §9.1), written as the
//! other commands read images, and a sheet of every corruption × severity of one image for the
//! eye. Pure `common::corruption`; no model, no libtorch.

use anyhow::{bail, Context, Result};
use clap::Args;
use freqsweep_common::corruption::{self, Corruption, ALL, SEVERITIES};
use freqsweep_common::dataset::read_images_npy;
use freqsweep_common::image::write_rgb_png;
use freqsweep_common::npy::NpyArray;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Args)]
pub struct CorruptArgs {
    /// Images: float32 [N,C,H,W] in [0,1] or uint8 [N,H,W,C], as the other commands read them.
    #[arg(long)]
    images: PathBuf,
    /// The corruption: gaussian_noise, shot_noise, …, jpeg_compression, or fourier(u,v,eps).
    #[arg(long)]
    corruption: Option<String>,
    /// Severity 1 (mildest) to 5.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=5))]
    severity: Option<u32>,
    /// Seed of the random corruptions (each image's randomness is keyed by the corruption, the
    /// severity, the image's index in the file and this seed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The corrupted set: float32 [N,C,H,W] in [0,1] (needs --corruption and --severity).
    #[arg(long)]
    out: Option<PathBuf>,
    /// A PNG of image --sheet-image clean and under every corruption at severities 1 to 5 (rows:
    /// corruptions in CIFAR-10-C order, columns: clean, then severity 1 to 5).
    #[arg(long)]
    sheet: Option<PathBuf>,
    #[arg(long, default_value_t = 0)]
    sheet_image: usize,
}

pub fn run(args: CorruptArgs) -> Result<()> {
    if args.out.is_none() && args.sheet.is_none() {
        bail!("nothing to write: give --out OUT.npy (with --corruption and --severity) and/or --sheet SHEET.png");
    }
    // Its errors name the file.
    let (dims, images) = read_images_npy(&args.images)?;
    let [n, channels, height, width] = dims;
    if let Some(out) = &args.out {
        let (Some(name), Some(severity)) = (&args.corruption, args.severity) else {
            bail!("--out needs --corruption and --severity");
        };
        let corruption = Corruption::parse(name).context("--corruption")?;
        let started = Instant::now();
        let corrupted =
            corruption::corrupt_batch(&images, channels, height, width, corruption, severity, args.seed, 0)?;
        NpyArray::from_f32(dims.to_vec(), &corrupted).write(out).with_context(|| out.display().to_string())?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            corruption = %corruption::describe(corruption, severity, height, width)?,
            images = n,
            images_per_second = n as f64 / seconds.max(1e-9),
            out = %out.display(),
            "corrupted set written"
        );
    }
    if let Some(sheet) = &args.sheet {
        if args.sheet_image >= n {
            bail!("--sheet-image {} is not an image of {} ({} images)", args.sheet_image, args.images.display(), n);
        }
        let per_image = channels * height * width;
        let image = &images[args.sheet_image * per_image..][..per_image];
        let mut rows: Vec<Vec<Vec<f32>>> = Vec::with_capacity(ALL.len());
        for corruption in ALL {
            let mut row = vec![image.to_vec()];
            for severity in SEVERITIES {
                row.push(
                    corruption::corrupt(
                        image,
                        channels,
                        height,
                        width,
                        corruption,
                        severity,
                        args.seed,
                        args.sheet_image as u64,
                    )
                    .with_context(|| corruption.name())?,
                );
            }
            rows.push(row);
        }
        let (w, h, rgb) = tile(&rows, channels, height, width);
        write_rgb_png(sheet, w, h, &rgb).with_context(|| sheet.display().to_string())?;
        tracing::info!(rows = %ALL.map(|c| c.name()).join(" "), sheet = %sheet.display(), "sample sheet written");
    }
    Ok(())
}

/// Tiles (rows × columns of CHW images in [0, 1]) as one RGB picture with a 2-pixel white gap;
/// a one-channel image is shown grey, the first three channels of others as RGB.
fn tile(rows: &[Vec<Vec<f32>>], channels: usize, height: usize, width: usize) -> (u32, u32, Vec<u8>) {
    const GAP: usize = 2;
    let columns = rows.first().map_or(0, Vec::len);
    let (w, h) = (columns * (width + GAP) + GAP, rows.len() * (height + GAP) + GAP);
    let mut rgb = vec![255u8; w * h * 3];
    for (r, row) in rows.iter().enumerate() {
        for (c, image) in row.iter().enumerate() {
            for y in 0..height {
                for x in 0..width {
                    let at = ((GAP + r * (height + GAP) + y) * w + GAP + c * (width + GAP) + x) * 3;
                    for k in 0..3 {
                        let channel = if channels >= 3 { k } else { 0 };
                        let v = image[(channel * height + y) * width + x];
                        rgb[at + k] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    }
                }
            }
        }
    }
    (w as u32, h as u32, rgb)
}
