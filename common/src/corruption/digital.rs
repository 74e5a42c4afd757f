//! Brightness, contrast, saturation, pixelation and JPEG.
//!
//! # Choices
//! - `brightness`, `saturate`: skimage's `rgb2hsv` and `hsv2rgb` exactly (hue from the maximum
//!   channel, blue winning ties over green over red; hue and saturation 0 on grey pixels), the value
//!   or saturation changed and clipped to `[0, 1]`. One channel is the value of a grey pixel (see the
//!   module's overview).
//! - `contrast`: `(x − m)·c + m` with `m` each channel's own mean, as the reference's
//!   `mean(axis=(0, 1))`.
//! - `pixelate`: PIL's `resize(…, BOX)` down to `⌊c·W⌋ × ⌊c·H⌋` (at least 1) and back, with PIL's
//!   box weights (every input whose centre falls in the output's box counts 1, then normalised),
//!   computed in `f64` without PIL's 8-bit rounding.
//! - `jpeg_compression`: [`JPEG_ENCODER`]; the image is rounded to 8 bits (`round(255·x)`),
//!   encoded at the severity's quality, decoded, and divided by 255. The reference used PIL
//!   (libjpeg, 4:2:0 chroma subsampling at these qualities); this encoder keeps full-resolution
//!   chroma, so colour suffers less than in the released CIFAR-10-C.

use super::{CorruptionError, Planes};

/// The JPEG codec behind `jpeg_compression`, for outputs to name.
pub const JPEG_ENCODER: &str =
    "image 0.25 JpegEncoder (baseline, 4:4:4 chroma, IJG-scaled standard tables), decoded by zune-jpeg";

/// skimage `rgb2hsv` of one pixel.
fn rgb_to_hsv([r, g, b]: [f64; 3]) -> [f64; 3] {
    let v = r.max(g).max(b);
    let delta = v - r.min(g).min(b);
    if delta == 0.0 {
        return [0.0, 0.0, v];
    }
    let s = delta / v;
    // Later matches win, as the reference's successive masked assignments do.
    let mut h = (g - b) / delta;
    if g == v {
        h = 2.0 + (b - r) / delta;
    }
    if b == v {
        h = 4.0 + (r - g) / delta;
    }
    [(h / 6.0).rem_euclid(1.0), s, v]
}

/// skimage `hsv2rgb` of one pixel.
fn hsv_to_rgb([h, s, v]: [f64; 3]) -> [f64; 3] {
    let hi = (h * 6.0).floor();
    let f = h * 6.0 - hi;
    let p = v * (1.0 - s);
    let q = v * (1.0 - f * s);
    let t = v * (1.0 - (1.0 - f) * s);
    match (hi as i64).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Change every pixel's HSV by `f`; one channel is the value of a grey pixel.
fn map_hsv(img: &mut Planes, f: impl Fn([f64; 3]) -> [f64; 3]) {
    let n = img.h * img.w;
    if img.c == 1 {
        for x in &mut img.data {
            *x = f([0.0, 0.0, *x])[2];
        }
        return;
    }
    for i in 0..n {
        let rgb = [img.data[i], img.data[n + i], img.data[2 * n + i]];
        let out = hsv_to_rgb(f(rgb_to_hsv(rgb)));
        for (channel, v) in out.into_iter().enumerate() {
            img.data[channel * n + i] = v;
        }
    }
}

pub(crate) fn brightness(img: &mut Planes, c: f64) {
    map_hsv(img, |[h, s, v]| [h, s, (v + c).clamp(0.0, 1.0)]);
}

pub(crate) fn saturate(img: &mut Planes, (a, b): (f64, f64)) {
    map_hsv(img, |[h, s, v]| [h, (s * a + b).clamp(0.0, 1.0), v]);
}

pub(crate) fn contrast(img: &mut Planes, c: f64) {
    img.map_planes(|p| {
        let mean = p.iter().sum::<f64>() / p.len() as f64;
        p.iter().map(|x| (x - mean) * c + mean).collect()
    });
}

pub(crate) fn pixelate(img: &mut Planes, c: f64) {
    let (h, w) = (img.h, img.w);
    let (small_h, small_w) = (((h as f64 * c) as usize).max(1), ((w as f64 * c) as usize).max(1));
    img.map_planes(|p| {
        let small = super::filter::box_resize(p, h, w, small_h, small_w);
        super::filter::box_resize(&small, small_h, small_w, h, w)
    });
}

pub(crate) fn jpeg(img: &mut Planes, quality: u8) -> Result<(), CorruptionError> {
    use ::image::{codecs::jpeg::JpegEncoder, ExtendedColorType, ImageFormat};
    let (c, n) = (img.c, img.h * img.w);
    let side = |v: usize| u32::try_from(v).map_err(|_| CorruptionError::Jpeg(format!("side {v} is too large")));
    let (width, height) = (side(img.w)?, side(img.h)?);
    // Interleaved 8-bit pixels, as the codec takes them.
    let bytes: Vec<u8> =
        (0..n * c).map(|k| (img.data[(k % c) * n + k / c] * 255.0).round().clamp(0.0, 255.0) as u8).collect();
    let color = if c == 3 { ExtendedColorType::Rgb8 } else { ExtendedColorType::L8 };
    let mut encoded = Vec::new();
    JpegEncoder::new_with_quality(&mut encoded, quality)
        .encode(&bytes, width, height, color)
        .map_err(|e| CorruptionError::Jpeg(format!("encoding: {e}")))?;
    let decoded = ::image::load_from_memory_with_format(&encoded, ImageFormat::Jpeg)
        .map_err(|e| CorruptionError::Jpeg(format!("decoding: {e}")))?;
    let pixels = if c == 3 { decoded.to_rgb8().into_raw() } else { decoded.to_luma8().into_raw() };
    if pixels.len() != n * c {
        return Err(CorruptionError::Jpeg(format!("decoded {} values, expected {}", pixels.len(), n * c)));
    }
    for (k, &v) in pixels.iter().enumerate() {
        img.data[(k % c) * n + k / c] = f64::from(v) / 255.0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsv_round_trips_and_matches_known_pixels() {
        assert_eq!(rgb_to_hsv([1.0, 0.0, 0.0]), [0.0, 1.0, 1.0]);
        assert_eq!(rgb_to_hsv([0.0, 0.5, 0.0]), [1.0 / 3.0, 1.0, 0.5]);
        assert_eq!(rgb_to_hsv([0.4, 0.4, 0.4]), [0.0, 0.0, 0.4]);
        let h = rgb_to_hsv([0.2, 0.4, 0.8]);
        assert!((h[0] - (4.0 + (0.2 - 0.4) / 0.6) / 6.0).abs() < 1e-12 && (h[1] - 0.75).abs() < 1e-12);
        for rgb in [[0.2, 0.4, 0.8], [0.9, 0.1, 0.5], [0.3, 0.3, 0.7], [0.6, 0.6, 0.1], [0.0, 0.0, 0.0]] {
            let back = hsv_to_rgb(rgb_to_hsv(rgb));
            assert!(back.iter().zip(rgb).all(|(a, b)| (a - b).abs() < 1e-12), "{rgb:?} → {back:?}");
        }
    }
}
