//! The files of a map: its numbers (`.npy`) beside its figure (`.png`), written the same way by
//! `freqsweep-worker` and by the report. Here, with the rendering, so the science modules
//! (`heatmap`, `dfm`) only compute (a tidy test holds it).

use crate::spectrum::Shape2;

/// Write a map as `DIR/STEM.npy` (float64 `H × W`, centred layout, `NaN` where not computed) and
/// `DIR/STEM.png`, the report's heatmap figure: frequency axes and a colour bar labelled
/// `bar_label` (colour scale `range`; `None` uses the map's own finite range).
pub fn write_map_files(
    dir: &std::path::Path,
    stem: &str,
    map: &crate::heatmap::HeatmapAccumulator,
    range: Option<(f64, f64)>,
    title: &str,
    bar_label: &str,
) -> Result<(), String> {
    let shape = map.shape();
    let means = map.means();
    crate::npy::NpyArray::from_f64(vec![shape.h, shape.w], &means)
        .write(&dir.join(format!("{stem}.npy")))
        .map_err(|e| e.to_string())?;
    let centred = crate::figures::CentredMap { values: &means, height: shape.h, width: shape.w };
    crate::figures::heatmap(centred, range, title, bar_label)?.write_png(&dir.join(format!("{stem}.png")))
}

/// The files of one model's DFMs in `dir` (SCIENCE.md §7; DESIGN.md's run directory), for each
/// class of `classes`: `loss_class<c>.npy/.png` (`L_c`, float64 `H × W`, centred), `accdrop_class
/// <c>.npy/.png` (the accuracy drop, 0..1) and per `top` X `dfm_class<c>_top<X>.npy` (uint8 0/1)
/// with `dfm_class<c>_top<X>.png` (the loss map shown only inside the mask, grey outside), and
/// `class<c>_maps.png`, all of them side by side. Maps not yet complete are written with grey
/// (NaN) units and no DFMs. `title` begins every figure's title. Returns the paths written,
/// relative to `dir`.
pub fn write_dfm_files(
    dir: &std::path::Path,
    acc: &crate::dfm::DfmAccumulator,
    classes: &[usize],
    tops: &[f64],
    title: &str,
) -> Result<Vec<String>, String> {
    use crate::figures::{heatmap, heatmap_grid, CentredMap, MapPanel};
    let shape = acc.shape();
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut written = Vec::new();
    let put_npy = |name: String, array: crate::npy::NpyArray, written: &mut Vec<String>| -> Result<(), String> {
        array.write(&dir.join(&name)).map_err(|e| format!("{}: {e}", dir.join(&name).display()))?;
        written.push(name);
        Ok(())
    };
    let put_png = |name: String, figure: crate::figures::Figure, written: &mut Vec<String>| -> Result<(), String> {
        figure.write_png(&dir.join(&name))?;
        written.push(name);
        Ok(())
    };
    let dims = vec![shape.h, shape.w];
    for &class in classes {
        let loss = acc.loss_map(class);
        fn map(values: &[f64], shape: Shape2) -> CentredMap<'_> {
            CentredMap { values, height: shape.h, width: shape.w }
        }
        let loss_range = map(&loss, shape).finite_range();
        put_npy(format!("loss_class{class}.npy"), crate::npy::NpyArray::from_f64(dims.clone(), &loss), &mut written)?;
        let figure =
            heatmap(map(&loss, shape), Some(loss_range), &format!("{title}: loss, class {class}"), "cross-entropy")?;
        put_png(format!("loss_class{class}.png"), figure, &mut written)?;
        let drop = acc.accuracy_drop_map(class);
        put_npy(
            format!("accdrop_class{class}.npy"),
            crate::npy::NpyArray::from_f64(dims.clone(), &drop),
            &mut written,
        )?;
        let figure = heatmap(
            map(&drop, shape),
            Some((0.0, 1.0)),
            &format!("{title}: accuracy drop, class {class}"),
            "turned wrong",
        )?;
        put_png(format!("accdrop_class{class}.png"), figure, &mut written)?;
        let mut masked: Vec<(String, Vec<f64>)> = Vec::new();
        for &top in tops.iter().filter(|_| acc.is_complete()) {
            let mask = acc.dfm(class, top).map_err(|e| e.to_string())?;
            let label = crate::text::format_number(top);
            put_npy(
                format!("dfm_class{class}_top{label}.npy"),
                crate::npy::NpyArray::from_u8(dims.clone(), &mask),
                &mut written,
            )?;
            let shown: Vec<f64> = loss.iter().zip(&mask).map(|(&v, &m)| if m == 1 { v } else { f64::NAN }).collect();
            let figure = heatmap(
                map(&shown, shape),
                Some(loss_range),
                &format!("{title}: DFM, class {class}, top {label} %"),
                "cross-entropy",
            )?;
            put_png(format!("dfm_class{class}_top{label}.png"), figure, &mut written)?;
            masked.push((format!("DFM top {label} %"), shown));
        }
        let mut panels = vec![
            MapPanel { name: "loss", map: map(&loss, shape), range: Some(loss_range), bar_label: "cross-entropy" },
            MapPanel {
                name: "accuracy drop",
                map: map(&drop, shape),
                range: Some((0.0, 1.0)),
                bar_label: "turned wrong",
            },
        ];
        for (name, shown) in &masked {
            panels.push(MapPanel { name, map: map(shown, shape), range: Some(loss_range), bar_label: "cross-entropy" });
        }
        let figure = heatmap_grid(&panels, 3, &format!("{title}: class {class}"))?;
        put_png(format!("class{class}_maps.png"), figure, &mut written)?;
    }
    Ok(written)
}
