//! Report figures drawn with plotters from plain arrays, into an RGB buffer, written as PNG.
//!
//! Every function here takes the numbers behind one figure (the same numbers the run directory
//! keeps as `.npy`/CSV beside it) and returns a [`Figure`]; nothing reads the store or the disk, so
//! rendering is tested on known arrays. Text uses DejaVu Sans embedded in the binary: report
//! rendering must not depend on the fonts a cluster node happens to have. Used by the
//! coordinator's reports and by `freqsweep-worker heatmap` (one figure per map).

mod canvas;
mod files;
pub use files::{write_dfm_files, write_map_files};

use crate::image::{viridis, write_rgb_png};
use canvas::Canvas;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

pub(super) static FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

/// The embedded font, registered with plotters (which measures text) and parsed for
/// [`Canvas`] (which draws it).
fn font_face() -> &'static ab_glyph::FontRef<'static> {
    static FACE: std::sync::OnceLock<ab_glyph::FontRef<'static>> = std::sync::OnceLock::new();
    FACE.get_or_init(|| {
        // The embedded font is a valid TrueType file; a failure here would be a build defect.
        plotters::style::register_font(FAMILY, FontStyle::Normal, FONT).ok().expect("embedded DejaVu Sans parses");
        ab_glyph::FontRef::try_from_slice(FONT).expect("embedded DejaVu Sans parses")
    })
}

/// A rendered figure: `width × height` RGB pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct Figure {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
}

impl Figure {
    pub fn write_png(&self, path: &Path) -> Result<(), String> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        }
        write_rgb_png(path, self.width, self.height, &self.rgb).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn png(&self) -> Result<Vec<u8>, String> {
        crate::image::rgb_png_bytes(self.width, self.height, &self.rgb)
    }
}

fn render(
    width: u32,
    height: u32,
    draw: impl FnOnce(&DrawingArea<Canvas, Shift>) -> DrawResult,
) -> Result<Figure, String> {
    let face = font_face();
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    {
        let root = Canvas::new(&mut rgb, (width, height), face).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(&root).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Figure { width, height, rgb })
}

/// An `f64` axis with exactly the given ticks. (plotters' `with_key_points` opts out of the
/// default formatting that `configure_mesh` needs, so this small axis type stands in.)
struct Ticked {
    range: RangedCoordf64,
    ticks: Vec<f64>,
}

fn ticked(range: std::ops::Range<f64>, ticks: Vec<f64>) -> Ticked {
    Ticked { range: range.into(), ticks }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.range.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Bold points are the ticks; no light grid lines in between.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.range.range()
    }
}

fn font(size: u32) -> TextStyle<'static> {
    (FAMILY, size).into_font().into()
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// A map in centred layout (DC at row `height/2`, column `width/2`), row-major, NaN = not computed.
#[derive(Clone, Copy, Debug)]
pub struct CentredMap<'a> {
    pub values: &'a [f64],
    pub height: usize,
    pub width: usize,
}

impl CentredMap<'_> {
    /// Finite minimum and maximum, `(0, 1)` when nothing is finite or the map is flat at 0.
    pub fn finite_range(&self) -> (f64, f64) {
        let finite = self.values.iter().copied().filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if hi - lo < 1e-12 {
            (lo, lo + 1e-6_f64.max(lo.abs() * 1e-6))
        } else {
            (lo, hi)
        }
    }
}

/// Frequency ticks for an axis of `n` cells: the ends, the quarters and DC.
fn frequency_ticks(n: usize) -> Vec<f64> {
    let half = (n / 2) as i64;
    let low = -half;
    let high = n as i64 - 1 - half;
    let mut ticks: Vec<i64> = vec![low, low / 2, 0, high / 2 + i64::from(high % 2 != 0), high];
    ticks.dedup();
    ticks.into_iter().map(|t| t as f64).collect()
}

/// One heatmap panel with frequency axes. Rows are drawn top to bottom in array order, as
/// `imshow` shows the `.npy`: the vertical frequency `u` grows downwards, `v` to the right.
fn draw_map_panel(area: &DrawingArea<Canvas, Shift>, map: CentredMap, range: (f64, f64), title: &str) -> DrawResult {
    let (h, w) = (map.height as i64, map.width as i64);
    let (v_lo, v_hi) = (-(w / 2) as f64 - 0.5, (w - w / 2) as f64 - 0.5);
    let (u_lo, u_hi) = (-(h / 2) as f64 - 0.5, (h - h / 2) as f64 - 0.5);
    // The chart's y grows upwards; plot −u so that u grows downwards like the array rows.
    let y_ticks: Vec<f64> = frequency_ticks(map.height).into_iter().map(|u| -u).collect();
    let mut chart = ChartBuilder::on(area)
        .caption(title, font(15))
        .margin(6)
        .margin_left(16)
        .x_label_area_size(34)
        .y_label_area_size(40)
        .build_cartesian_2d(ticked(v_lo..v_hi, frequency_ticks(map.width)), ticked(-u_hi..-u_lo, y_ticks))?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("v (cycles / image)")
        .y_desc("u")
        .label_style(font(11))
        .axis_desc_style(font(12))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{:.0}", -y))
        .draw()?;
    let (lo, hi) = range;
    let span = (hi - lo).max(f64::MIN_POSITIVE);
    chart.draw_series((0..map.height).flat_map(|r| (0..map.width).map(move |c| (r, c))).map(|(r, c)| {
        let value = map.values[r * map.width + c];
        let colour = if value.is_finite() { rgb(viridis((value - lo) / span)) } else { RGBColor(200, 200, 200) };
        let (v, u) = (c as f64 - (w / 2) as f64, r as f64 - (h / 2) as f64);
        Rectangle::new([(v - 0.5, -u + 0.5), (v + 0.5, -u - 0.5)], colour.filled())
    }))?;
    Ok(())
}

/// A vertical colour bar for `range` with its label.
fn draw_colour_bar(area: &DrawingArea<Canvas, Shift>, range: (f64, f64), label: &str) -> DrawResult {
    let (lo, hi) = range;
    let mut chart = ChartBuilder::on(area)
        .margin_top(28)
        .margin_bottom(40)
        .margin_right(4)
        .set_label_area_size(LabelAreaPosition::Right, 46)
        .build_cartesian_2d(0.0..1.0, lo..hi)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .disable_x_axis()
        .y_labels(6)
        .y_desc(label)
        .label_style(font(11))
        .axis_desc_style(font(12))
        .y_label_formatter(&|y| format_tick(*y))
        .draw()?;
    let steps = 128;
    chart.draw_series((0..steps).map(|i| {
        let a = lo + (hi - lo) * i as f64 / steps as f64;
        let b = lo + (hi - lo) * (i + 1) as f64 / steps as f64;
        Rectangle::new([(0.0, a), (1.0, b)], rgb(viridis((i as f64 + 0.5) / steps as f64)).filled())
    }))?;
    Ok(())
}

fn format_tick(y: f64) -> String {
    if y == 0.0 {
        "0".into()
    } else if y.abs() >= 0.01 {
        format!("{y:.2}")
    } else {
        format!("{y:.1e}")
    }
}

/// One Fourier heatmap with a colour bar. `range` fixes the colour scale (error maps use 0..1);
/// `None` scales to the map's finite values.
pub fn heatmap(map: CentredMap, range: Option<(f64, f64)>, title: &str, bar_label: &str) -> Result<Figure, String> {
    check_map(map)?;
    let range = range.unwrap_or_else(|| map.finite_range());
    render(560, 470, |root| {
        let (left, right) = root.split_horizontally(460);
        draw_map_panel(&left, map, range, title)?;
        draw_colour_bar(&right, range, bar_label)
    })
}

/// One panel of a [`heatmap_grid`]: a map, its colour range (`None`: its own) and colour-bar label.
#[derive(Clone, Copy, Debug)]
pub struct MapPanel<'a> {
    pub name: &'a str,
    pub map: CentredMap<'a>,
    pub range: Option<(f64, f64)>,
    pub bar_label: &'a str,
}

/// Several maps side by side (the error map, then each layer), each with its own colour bar,
/// like the poster's Figure 2. At most `columns` panels per row.
pub fn heatmap_grid(panels: &[MapPanel], columns: usize, title: &str) -> Result<Figure, String> {
    if panels.is_empty() {
        return Err("a heatmap grid needs at least one map".into());
    }
    for panel in panels {
        check_map(panel.map)?;
    }
    let columns = columns.clamp(1, panels.len());
    let rows = panels.len().div_ceil(columns);
    let (panel_w, panel_h, caption_h) = (400u32, 340u32, 36u32);
    render(panel_w * columns as u32, panel_h * rows as u32 + caption_h, |root| {
        let (top, body) = root.split_vertically(caption_h);
        top.titled(title, font(18))?;
        let cells = body.split_evenly((rows, columns));
        for (cell, MapPanel { name, map, range, bar_label: bar }) in cells.iter().zip(panels) {
            let range = range.unwrap_or_else(|| map.finite_range());
            let (left, right) = cell.split_horizontally(panel_w - 96);
            draw_map_panel(&left, *map, range, name)?;
            draw_colour_bar(&right, range, bar)?;
        }
        Ok(())
    })
}

fn check_map(map: CentredMap) -> Result<(), String> {
    if map.height == 0 || map.width == 0 || map.values.len() != map.height * map.width {
        return Err(format!(
            "a {}×{} map needs {} values, got {}",
            map.height,
            map.width,
            map.height * map.width,
            map.values.len()
        ));
    }
    Ok(())
}

/// Categorical colours for classes and test sets (Tableau 10, as matplotlib's default cycle).
pub const SERIES_COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One panel of lines: `(series name, [(x, y)])`.
pub struct LinePanel {
    pub title: String,
    pub series: Vec<(String, Vec<(f64, f64)>)>,
    /// Shaded ranges `(x, low, high)` behind the lines, in the colour of the series of the same
    /// name (mean ± standard deviation over seeds); empty for plain curves.
    pub bands: Vec<(String, Vec<Spread>)>,
}

/// `(x, low, high)` of a shaded range.
pub type Spread = (f64, f64, f64);

/// Panels of lines side by side with a shared x label, y in `0..=1` (F1 over training). One
/// legend above the panels: a series keeps its colour in every panel.
pub fn line_panels(panels: &[LinePanel], x_label: &str, y_label: &str, title: &str) -> Result<Figure, String> {
    if panels.is_empty() {
        return Err("a line figure needs at least one panel".into());
    }
    let mut names: Vec<&str> = Vec::new();
    for (name, _) in panels.iter().flat_map(|panel| &panel.series) {
        if !names.contains(&name.as_str()) {
            names.push(name);
        }
    }
    let colour_of =
        |name: &str| SERIES_COLOURS[names.iter().position(|n| *n == name).unwrap_or(0) % SERIES_COLOURS.len()];
    let (panel_w, panel_h, caption_h, legend_h) = (460u32, 360u32, 32u32, 24u32);
    let columns = panels.len().min(4);
    let rows = panels.len().div_ceil(columns);
    render(panel_w * columns as u32, panel_h * rows as u32 + caption_h + legend_h, |root| {
        let (top, body) = root.split_vertically(caption_h + legend_h);
        let (caption, legend) = top.split_vertically(caption_h);
        caption.titled(title, font(18))?;
        let entries: Vec<(&str, RGBColor)> = names.iter().map(|name| (*name, colour_of(name))).collect();
        draw_legend_row(&legend, &entries, Marker::Line)?;
        for (cell, panel) in body.split_evenly((rows, columns)).iter().zip(panels) {
            let x_max = panel.series.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.0)).fold(0.0f64, f64::max);
            let x_max = if x_max > 0.0 { x_max } else { 1.0 };
            let mut chart = ChartBuilder::on(cell)
                .caption(&panel.title, font(15))
                .margin(8)
                .x_label_area_size(34)
                .y_label_area_size(44)
                .build_cartesian_2d(0.0..x_max, 0.0..1.02)?;
            chart
                .configure_mesh()
                .light_line_style(RGBColor(235, 235, 235))
                .x_desc(x_label)
                .y_desc(y_label)
                .label_style(font(11))
                .axis_desc_style(font(12))
                .x_label_formatter(&|x| format_axis(*x))
                .draw()?;
            for (name, band) in &panel.bands {
                let upper = band.iter().map(|&(x, _, hi)| (x, hi.clamp(0.0, 1.02)));
                let lower = band.iter().rev().map(|&(x, lo, _)| (x, lo.clamp(0.0, 1.02)));
                let outline: Vec<(f64, f64)> = upper.chain(lower).collect();
                chart.draw_series(std::iter::once(Polygon::new(outline, colour_of(name).mix(0.22).filled())))?;
            }
            for (name, points) in &panel.series {
                chart.draw_series(LineSeries::new(points.iter().copied(), colour_of(name).stroke_width(2)))?;
            }
        }
        Ok(())
    })
}

/// How a legend entry shows its series.
#[derive(Clone, Copy)]
enum Marker {
    Line,
    Dot,
}

/// One row of legend entries centred in `area`, a strip outside the plots, so that no legend
/// covers data.
fn draw_legend_row(area: &DrawingArea<Canvas, Shift>, entries: &[(&str, RGBColor)], marker: Marker) -> DrawResult {
    let style = font(12).pos(Pos::new(HPos::Left, VPos::Center));
    let (key_w, gap, pad) = (22i32, 6i32, 18i32);
    let mut widths = Vec::with_capacity(entries.len());
    for (name, _) in entries {
        widths.push(area.estimate_text_size(name, &style)?.0 as i32);
    }
    let total: i32 = widths.iter().map(|w| key_w + gap + w).sum::<i32>() + pad * (entries.len() as i32 - 1).max(0);
    let (width, height) = area.dim_in_pixel();
    let (mut x, y) = ((width as i32 - total).max(0) / 2, height as i32 / 2);
    for ((name, colour), w) in entries.iter().zip(widths) {
        match marker {
            Marker::Line => area.draw(&PathElement::new(vec![(x, y), (x + key_w, y)], colour.stroke_width(3)))?,
            Marker::Dot => area.draw(&Circle::new((x + key_w / 2, y), 5, colour.filled()))?,
        }
        area.draw_text(name, &style, (x + key_w + gap, y))?;
        x += key_w + gap + w + pad;
    }
    Ok(())
}

fn format_axis(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

/// A confusion matrix `rows[truth][predicted]`: counts written in each cell, shading normalised
/// per row (the fraction of each true class predicted as each class).
pub fn confusion(rows: &[Vec<u64>], title: &str) -> Result<Figure, String> {
    let classes = rows.len();
    if classes == 0 || rows.iter().any(|r| r.len() != classes) {
        return Err(format!("a confusion matrix must be square and non-empty, got {} rows", classes));
    }
    let cell = if classes <= 10 { 56u32 } else { 26 };
    let side = cell * classes as u32;
    // Wide enough for the title (about 7 px per character at 13 px).
    let width = (side + 150).max(7 * title.chars().count() as u32 + 30);
    render(width, side + 110, |root| {
        let last = classes as f64 - 0.5;
        let ticks: Vec<f64> = (0..classes).map(|c| c as f64).collect();
        let mut chart = ChartBuilder::on(root)
            .caption(title, font(13))
            .margin(8)
            .margin_right(40)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(
                ticked(-0.5..last, ticks.clone()),
                ticked(-last..0.5, ticks.iter().map(|t| -t).collect()),
            )?;
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc("predicted class")
            .y_desc("true class")
            .label_style(font(12))
            .axis_desc_style(font(12))
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{:.0}", -y))
            .draw()?;
        for (truth, row) in rows.iter().enumerate() {
            let total: u64 = row.iter().sum();
            for (pred, &count) in row.iter().enumerate() {
                let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
                let (x, y) = (pred as f64, -(truth as f64));
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.5, y + 0.5), (x + 0.5, y - 0.5)],
                    blues(share).filled(),
                )))?;
                if cell >= 40 {
                    let colour = if share > 0.55 { WHITE } else { BLACK };
                    let style = font(13).color(&colour).pos(Pos::new(HPos::Center, VPos::Center));
                    chart.draw_series(std::iter::once(Text::new(count.to_string(), (x, y), style)))?;
                }
            }
        }
        Ok(())
    })
}

/// White to dark blue, for shares in `0..=1`.
fn blues(share: f64) -> RGBColor {
    let t = share.clamp(0.0, 1.0);
    let mix = |a: f64, b: f64| (a + (b - a) * t).round() as u8;
    RGBColor(mix(247.0, 8.0), mix(251.0, 48.0), mix(255.0, 107.0))
}

/// A dot plot of one value per (row, series): rows are grid points, series are test sets, x in `0..=1`.
pub fn dot_rows(
    rows: &[(String, Vec<Option<f64>>)],
    series: &[String],
    x_label: &str,
    title: &str,
) -> Result<Figure, String> {
    if rows.is_empty() || series.is_empty() {
        return Err("an overview needs at least one row and one series".into());
    }
    let longest = rows.iter().map(|(name, _)| name.chars().count()).max().unwrap_or(0).min(60) as u32;
    let label_w = 20 + 7 * longest;
    let (legend_h, height) = (24u32, 144 + 22 * rows.len() as u32);
    render(label_w + 520, height, |root| {
        let (title_area, root) = root.split_vertically(34);
        let (legend, root) = root.split_vertically(legend_h);
        title_area.titled(title, font(15))?;
        let entries: Vec<(&str, RGBColor)> = series
            .iter()
            .enumerate()
            .map(|(s, name)| (name.as_str(), SERIES_COLOURS[s % SERIES_COLOURS.len()]))
            .collect();
        draw_legend_row(&legend, &entries, Marker::Dot)?;
        let n = rows.len() as f64;
        let names: Vec<String> = rows.iter().map(|(name, _)| name.chars().take(60).collect()).collect();
        let ticks: Vec<f64> = (0..rows.len()).map(|i| -(i as f64)).collect();
        let mut chart = ChartBuilder::on(&root)
            .margin(10)
            .x_label_area_size(36)
            .y_label_area_size(label_w)
            .build_cartesian_2d(0.0..1.0, ticked(-(n - 0.5)..0.5, ticks))?;
        chart
            .configure_mesh()
            .light_line_style(RGBColor(235, 235, 235))
            .x_desc(x_label)
            .label_style(font(11))
            .axis_desc_style(font(12))
            .y_label_formatter(&|y| names.get((-y).round() as usize).cloned().unwrap_or_default())
            .draw()?;
        for s in 0..series.len() {
            let colour = SERIES_COLOURS[s % SERIES_COLOURS.len()];
            let points: Vec<(f64, f64)> = rows
                .iter()
                .enumerate()
                .filter_map(|(i, (_, values))| values.get(s).copied().flatten().map(|v| (v, -(i as f64))))
                .collect();
            chart.draw_series(points.into_iter().map(|p| Circle::new(p, 5, colour.filled())))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_png(path: &Path) -> (u32, u32, Vec<u8>) {
        let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (info.width, info.height, buf)
    }

    fn distinct_colours(rgb: &[u8]) -> usize {
        let mut set: Vec<[u8; 3]> = rgb.chunks(3).map(|p| [p[0], p[1], p[2]]).collect();
        set.sort_unstable();
        set.dedup();
        set.len()
    }

    #[test]
    fn heatmap_png_has_the_expected_size_and_shows_the_map() {
        let (h, w) = (32, 32);
        let values: Vec<f64> = (0..h * w).map(|i| (i % w) as f64 / w as f64).collect();
        let fig =
            heatmap(CentredMap { values: &values, height: h, width: w }, Some((0.0, 1.0)), "test ε=4", "error rate")
                .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.png");
        fig.write_png(&path).unwrap();
        let (pw, ph, rgb) = read_png(&path);
        assert_eq!((pw, ph), (560, 470));
        assert_eq!(rgb, fig.rgb);
        // A 32-step ramp plus the colour bar's gradient plus text: many colours, not a blank canvas.
        assert!(distinct_colours(&rgb) > 60, "{} colours", distinct_colours(&rgb));
        // Viridis' two ends both appear (the ramp spans 0..31/32).
        let has = |c: [u8; 3]| rgb.chunks(3).any(|p| p == c);
        assert!(has(viridis(0.0)), "lowest colour drawn");
    }

    #[test]
    fn grid_and_lines_and_confusion_and_overview_render_at_their_sizes() {
        let values = vec![0.5; 16];
        let map = CentredMap { values: &values, height: 4, width: 4 };
        let names: Vec<String> = (0..5).map(|i| format!("layer{i}")).collect();
        let panels: Vec<MapPanel> =
            names.iter().map(|name| MapPanel { name, map, range: None, bar_label: "1 − cos" }).collect();
        let grid = heatmap_grid(&panels, 3, "grid").unwrap();
        assert_eq!((grid.width, grid.height), (3 * 400, 2 * 340 + 36));

        let panel = |t: &str| LinePanel {
            bands: Vec::new(),
            title: t.into(),
            series: (0..4)
                .map(|c| (format!("class {c}"), vec![(0.0, 0.0), (1.0, 0.3 * c as f64), (2.0, 1.0)]))
                .collect(),
        };
        let lines = line_panels(&[panel("B1234"), panel("B124")], "step", "F1", "curves").unwrap();
        assert_eq!((lines.width, lines.height), (2 * 460, 360 + 32 + 24));
        for (i, colour) in SERIES_COLOURS.iter().take(4).enumerate() {
            assert!(lines.rgb.chunks(3).any(|p| p == [colour.0, colour.1, colour.2]), "class {i} line drawn");
        }

        let rows = vec![vec![90, 10, 0, 0], vec![5, 95, 0, 0], vec![0, 0, 100, 0], vec![0, 0, 0, 100]];
        let conf = confusion(&rows, "B124").unwrap();
        assert_eq!((conf.width, conf.height), (4 * 56 + 150, 4 * 56 + 110));
        assert!(confusion(&rows, &"x".repeat(80)).unwrap().width > 4 * 56 + 150, "a long title widens the figure");
        let dark = blues(1.0);
        assert!(conf.rgb.chunks(3).any(|p| p == [dark.0, dark.1, dark.2]), "a full row is shaded darkest");

        let overview = dot_rows(
            &[("a".into(), vec![Some(0.9), None]), ("b".into(), vec![Some(0.5), Some(0.4)])],
            &["B1234".into(), "B124".into()],
            "accuracy",
            "o",
        )
        .unwrap();
        assert_eq!(overview.height, 144 + 2 * 22);
    }

    #[test]
    fn bad_shapes_are_one_line_errors() {
        let values = vec![0.0; 10];
        let err = heatmap(CentredMap { values: &values, height: 4, width: 4 }, None, "t", "x").unwrap_err();
        assert_eq!(err, "a 4×4 map needs 16 values, got 10");
        assert!(confusion(&[vec![1, 2]], "t").unwrap_err().contains("square"));
        assert!(heatmap_grid(&[], 3, "t").is_err());
    }

    #[test]
    fn ticks_cover_both_ends_and_dc() {
        assert_eq!(frequency_ticks(32), vec![-16.0, -8.0, 0.0, 8.0, 15.0]);
        assert_eq!(frequency_ticks(8), vec![-4.0, -2.0, 0.0, 2.0, 3.0]);
    }
}
