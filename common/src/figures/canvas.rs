//! The drawing surface behind every report figure: plotters' RGB bitmap backend with its own
//! text drawing.
//!
//! plotters 0.3.7 draws each `ab_glyph` glyph at the pen position without the glyph's left side
//! bearing, so letters with a wide bearing (`n`, `y`, `1`) shift left and leave a gap after them:
//! "conv1" reads "con v1", "B1234" reads "B1 234". [`Canvas`] forwards everything to
//! [`BitMapBackend`] except `draw_text`, which places each glyph by its pixel bounds. Layout
//! (the text box, anchors, rotation, the baseline at half the font size) is plotters' own, so
//! label areas sized for plotters still fit.

use ab_glyph::{point, Font, FontRef, GlyphId, ScaleFont};
use plotters::prelude::{BitMapBackend, DrawingBackend};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{BackendColor, BackendCoord, BackendStyle, BackendTextStyle, DrawingErrorKind};

type Error = DrawingErrorKind<<BitMapBackend<'static> as DrawingBackend>::ErrorType>;

/// Plotters' RGB bitmap backend with correctly spaced text in `font`.
pub struct Canvas<'a> {
    bitmap: BitMapBackend<'a>,
    font: &'a FontRef<'static>,
}

impl<'a> Canvas<'a> {
    pub fn new(rgb: &'a mut [u8], size: (u32, u32), font: &'a FontRef<'static>) -> Self {
        Canvas { bitmap: BitMapBackend::with_buffer(rgb, size), font }
    }
}

/// Rasterise `text` at `size` px with its pen starting at x = 0, calling `put(x, y, coverage)`
/// for every covered pixel; y = 0 is the top of plotters' text box (baseline at `size / 2`).
fn rasterise(font: &FontRef<'static>, size: f32, text: &str, mut put: impl FnMut(i32, i32, f32)) {
    let scaled = font.as_scaled(size);
    let mut pen = 0.0f32;
    let mut previous: Option<GlyphId> = None;
    for c in text.chars() {
        let id = scaled.glyph_id(c);
        if let Some(previous) = previous {
            pen += scaled.kern(previous, id);
        }
        previous = Some(id);
        if let Some(outline) = scaled.outline_glyph(id.with_scale_and_position(size, point(pen, 0.0))) {
            let bounds = outline.px_bounds();
            let (left, top) = (bounds.min.x as i32, (size / 2.0 + bounds.min.y) as i32);
            outline.draw(|x, y, coverage| put(left + x as i32, top + y as i32, coverage));
        }
        pen += scaled.h_advance(id);
    }
}

impl DrawingBackend for Canvas<'_> {
    type ErrorType = <BitMapBackend<'static> as DrawingBackend>::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.bitmap.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), Error> {
        self.bitmap.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), Error> {
        self.bitmap.present()
    }

    fn draw_pixel(&mut self, point: BackendCoord, color: BackendColor) -> Result<(), Error> {
        self.bitmap.draw_pixel(point, color)
    }

    fn draw_line<S: BackendStyle>(&mut self, from: BackendCoord, to: BackendCoord, style: &S) -> Result<(), Error> {
        self.bitmap.draw_line(from, to, style)
    }

    fn draw_rect<S: BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), Error> {
        self.bitmap.draw_rect(upper_left, bottom_right, style, fill)
    }

    fn draw_path<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), Error> {
        self.bitmap.draw_path(path, style)
    }

    fn draw_circle<S: BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), Error> {
        self.bitmap.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), Error> {
        self.bitmap.fill_polygon(vert, style)
    }

    fn blit_bitmap(&mut self, pos: BackendCoord, size: (u32, u32), src: &[u8]) -> Result<(), Error> {
        self.bitmap.blit_bitmap(pos, size, src)
    }

    fn draw_text<S: BackendTextStyle>(&mut self, text: &str, style: &S, pos: BackendCoord) -> Result<(), Error> {
        let color = style.color();
        if color.alpha == 0.0 {
            return Ok(());
        }
        // The same anchoring as plotters' default `draw_text`, so text lands where plotters planned it.
        let ((min_x, min_y), (max_x, max_y)) =
            style.layout_box(text).map_err(|e| DrawingErrorKind::FontError(Box::new(e)))?;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let transform = style.transform();
        let (w, h) = self.get_size();
        let mut result = Ok(());
        rasterise(self.font, style.size() as f32, text, |x, y, coverage| {
            let (x, y) = transform.transform(x + dx - min_x, y + dy - min_y);
            let (x, y) = (pos.0 + x, pos.1 + y);
            if result.is_ok() && x >= 0 && x < w as i32 && y >= 0 && y < h as i32 {
                let pixel = BackendColor { alpha: color.alpha * f64::from(coverage), rgb: color.rgb };
                result = self.bitmap.draw_pixel((x, y), pixel);
            }
        });
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: f32 = 20.0;

    fn face() -> FontRef<'static> {
        FontRef::try_from_slice(super::super::FONT).unwrap()
    }

    /// Blank columns between the ink of the first and the second character of a two-letter
    /// string, as rasterised.
    fn drawn_gap(pair: &str) -> i32 {
        let (font, mut columns) = (face(), vec![false; 100]);
        rasterise(&font, SIZE, pair, |x, _, coverage| {
            if coverage > 0.0 {
                columns[x as usize] = true;
            }
        });
        let first_end =
            columns.iter().position(|&c| c).unwrap() + columns.iter().skip_while(|&&c| !c).take_while(|&&c| c).count();
        let second_start = first_end + columns[first_end..].iter().take_while(|&&c| !c).count();
        (second_start - first_end) as i32
    }

    /// The same gap from the font's metrics: the first glyph's right side bearing, the kerning and
    /// the second glyph's left side bearing.
    fn metric_gap(pair: &str) -> f32 {
        let font = face();
        let scaled = font.as_scaled(SIZE);
        let mut ids = pair.chars().map(|c| scaled.glyph_id(c));
        let (a, b) = (ids.next().unwrap(), ids.next().unwrap());
        // Ink extent in font units (the outline's control box), scaled to pixels.
        let ink = |id: GlyphId| font.outline(id).unwrap().bounds;
        let px = scaled.h_scale_factor();
        scaled.h_advance(a) - ink(a).max.x * px + scaled.kern(a, b) + ink(b).min.x * px
    }

    #[test]
    fn letters_sit_where_their_advances_and_bearings_put_them() {
        // plotters' own drawing drops the bearings: a 2–3 px hole after `n` ("con v1", "lay er").
        for pair in ["nv", "nn", "vn", "ye", "12", "23", "B1", "on"] {
            let (drawn, expected) = (drawn_gap(pair), metric_gap(pair));
            assert!(
                (drawn as f32 - expected).abs() <= 1.5,
                "{pair}: {drawn} px drawn, {expected:.2} px from the metrics"
            );
        }
    }
}
