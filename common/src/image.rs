//! Writing images as PNG: raw RGB buffers and grids of dataset samples (like the poster's Figure 3).
//! Report figures with axes and colour bars live with the reports; this is the plain-pixel layer.

use crate::dataset::Dataset;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {detail}")]
    Write { path: String, detail: String },
}

/// Write an 8-bit RGB image (`rgb.len() == 3·width·height`).
pub fn write_rgb_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> Result<(), ImageError> {
    let err = |detail: String| ImageError::Write { path: path.display().to_string(), detail };
    let file = std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    encode_rgb_png(std::io::BufWriter::new(file), width, height, rgb).map_err(err)
}

/// The PNG bytes of an RGB image (for embedding, e.g. in a TensorBoard event).
pub fn rgb_png_bytes(width: u32, height: u32, rgb: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_rgb_png(&mut out, width, height, rgb)?;
    Ok(out)
}

fn encode_rgb_png(out: impl std::io::Write, width: u32, height: u32, rgb: &[u8]) -> Result<(), String> {
    assert_eq!(rgb.len(), 3 * width as usize * height as usize, "rgb buffer does not match {width}x{height}");
    let mut encoder = png::Encoder::new(out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(|e| e.to_string())?;
    writer.write_image_data(rgb).map_err(|e| e.to_string())?;
    writer.finish().map_err(|e| e.to_string())
}

/// A grid with one row per class (`0..classes`) of up to `per_class` images each, every pixel
/// magnified `scale` times, separated by a 2-pixel white gutter. Images must be RGB or grey.
/// Returns `(width, height, rgb)`.
pub fn sample_grid(data: &Dataset, classes: usize, per_class: usize, scale: usize) -> (u32, u32, Vec<u8>) {
    let [_, c, h, w] = data.dims;
    let gutter = 2;
    let (cell_w, cell_h) = (w * scale + gutter, h * scale + gutter);
    let (width, height) = (per_class * cell_w + gutter, classes * cell_h + gutter);
    let mut rgb = vec![255u8; width * height * 3];
    for class in 0..classes {
        let members = (0..data.len()).filter(|&i| data.labels[i] == class as i64).take(per_class);
        for (col, i) in members.enumerate() {
            let img = data.image(i);
            for y in 0..h * scale {
                for x in 0..w * scale {
                    let (py, px) = (y / scale, x / scale);
                    let (oy, ox) = (gutter + class * cell_h + y, gutter + col * cell_w + x);
                    for ch in 0..3 {
                        let v = img[(ch.min(c - 1) * h + py) * w + px];
                        rgb[(oy * width + ox) * 3 + ch] = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    }
                }
            }
        }
    }
    (width as u32, height as u32, rgb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_png_has_expected_size_and_pixels() {
        let data = Dataset { dims: [2, 3, 2, 2], images: [vec![1.0; 12], vec![0.0; 12]].concat(), labels: vec![1, 0] };
        let (w, h, rgb) = sample_grid(&data, 2, 3, 2);
        assert_eq!((w, h), (3 * 6 + 2, 2 * 6 + 2));
        // Row 0 (class 0) starts with the black image, row 1 with the white one.
        assert_eq!(rgb[((2 * w + 2) * 3) as usize], 0);
        assert_eq!(rgb[(((2 + 6) * w + 2) * 3) as usize], 255);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.png");
        write_rgb_png(&path, w, h, &rgb).unwrap();
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let reader = decoder.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (w, h));
    }
}

/// Viridis, sampled at 9 stops and interpolated linearly: perceptually uniform and readable in
/// grey-scale print, for `t` in `[0, 1]` (clamped; `NaN` maps to mid grey).
pub fn viridis(t: f64) -> [u8; 3] {
    const STOPS: [[f64; 3]; 9] = [
        [68.0, 1.0, 84.0],
        [71.0, 44.0, 122.0],
        [59.0, 81.0, 139.0],
        [44.0, 113.0, 142.0],
        [33.0, 144.0, 141.0],
        [39.0, 173.0, 129.0],
        [92.0, 200.0, 99.0],
        [170.0, 220.0, 50.0],
        [253.0, 231.0, 37.0],
    ];
    if t.is_nan() {
        return [128, 128, 128];
    }
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |k: usize| (STOPS[i][k] * (1.0 - f) + STOPS[i + 1][k] * f).round() as u8;
    [mix(0), mix(1), mix(2)]
}

#[cfg(test)]
mod heatmap_picture_tests {
    use super::*;

    #[test]
    fn colours_run_from_dark_to_bright() {
        assert_eq!(viridis(0.0), [68, 1, 84]);
        assert_eq!(viridis(1.0), [253, 231, 37]);
        let brightness = |c: [u8; 3]| c.iter().map(|&v| u32::from(v)).sum::<u32>();
        assert!(brightness(viridis(0.25)) < brightness(viridis(0.75)));
    }
}
