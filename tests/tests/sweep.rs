//! End-to-end sweeps with the real binaries on loopback: `freqsweep run` starts the coordinator
//! and real `freqsweep-worker` processes over a tiny Syn_d grid (train + heatmaps + layer maps),
//! the run directory is complete, 1, 2 and 3 workers give identical merged results (seeded, one
//! libtorch thread each), running again resumes without redoing anything, the report's figures are
//! valid PNGs that `report.html` references, and `freqsweep report` recreates the same CSV, figures
//! and page from the store.

use freqsweep_common::npy::NpyArray;
use freqsweep_tests::{binary, png_size, results_without_timing, run_bounded};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(600);

const SPEC: &str = r#"name = "e2e"
[[dataset]]
kind = "syn"
band = [1, 4]
train = 128
test = 32
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 32
epochs = 2
seed = 1
[eval]
test_sets = ["B1234", "B124"]
every_steps = 2
[heatmap]
eps = [4.0]
layers = ["conv1", "fc"]
images = 16
chunk_cells = 128
"#;

fn run(spec: &Path, out: &Path, workers: usize) -> (String, String) {
    let result = run_bounded(
        Command::new(binary("freqsweep"))
            .arg("run")
            .arg(spec)
            .args(["--local-workers", &workers.to_string(), "--worker-threads", "1", "--out"])
            .arg(out),
        LIMIT,
    );
    let stdout = String::from_utf8_lossy(&result.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "freqsweep run failed: {}", stderr.lines().last().unwrap_or(""));
    (stdout, stderr)
}

fn file(dir: &Path, rel: &str) -> Vec<u8> {
    std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

const POINTS: [&str; 2] = ["Syn_1-tiny-adam-lr0.003-bs32-ep2-seed1", "Syn_4-tiny-adam-lr0.003-bs32-ep2-seed1"];

#[test]
fn a_tiny_sweep_is_complete_identical_across_worker_counts_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("e2e.toml");
    std::fs::write(&spec, SPEC).unwrap();

    let two = dir.path().join("two");
    let (stdout, _) = run(&spec, &two, 2);
    assert!(stdout.contains("sweep finished: 12 done"), "{stdout}");
    for point in POINTS {
        for rel in [
            format!("heatmaps/{point}_eps4.npy"),
            format!("heatmaps/{point}_eps4.png"),
            format!("heatmaps/{point}_eps4_conv1.npy"),
            format!("heatmaps/{point}_eps4_fc.npy"),
            format!("curves/{point}.csv"),
            format!("confusion/{point}_B124.csv"),
            format!("checkpoints/{point}.ot"),
        ] {
            assert!(two.join(&rel).is_file(), "{rel} missing");
        }
        let map = NpyArray::read(&two.join(format!("heatmaps/{point}_eps4.npy"))).unwrap().to_f64();
        assert_eq!(map.len(), 1024);
        assert!(map.iter().all(|v| v.is_finite() && (0.0..=1.0).contains(v)), "every cell computed");
        let confusion = String::from_utf8(file(&two, &format!("confusion/{point}_B1234.csv"))).unwrap();
        let total: u64 =
            confusion.lines().skip(1).flat_map(|l| l.split(',').skip(1)).map(|v| v.parse::<u64>().unwrap()).sum();
        assert_eq!(total, 32, "the final confusion matrix covers the test set");
    }
    let results = results_without_timing(&two.join("results.csv"));
    assert_eq!(results.lines().count(), 3, "header + one row per grid point");
    assert!(results.lines().skip(1).all(|l| l.contains(",done,")), "{results}");

    // The same sweep with 1 and 3 workers: identical merged heatmaps, curves and results.
    for (workers, name) in [(1, "one"), (3, "three")] {
        let other = dir.path().join(name);
        let (_, stderr) = run(&spec, &other, workers);
        if workers == 1 {
            // The one worker trained every checkpoint its heatmap tasks read: it keeps its own
            // uploads and downloads nothing back.
            let finished = stderr.lines().find(|l| l.contains("sweep finished")).expect("a `sweep finished` log line");
            assert!(finished.contains("artifact_sent_bytes=0"), "{finished}");
            assert!(!finished.contains("artifact_received_bytes=0"), "{finished}");
        }
        for point in POINTS {
            for rel in [
                format!("heatmaps/{point}_eps4.npy"),
                format!("heatmaps/{point}_eps4_fc.npy"),
                format!("curves/{point}.csv"),
            ] {
                assert_eq!(file(&two, &rel), file(&other, &rel), "{rel} differs between 2 and {workers} workers");
            }
        }
        assert_eq!(
            results_without_timing(&other.join("results.csv")),
            results,
            "results.csv differs with {workers} workers"
        );
    }

    // Running again on the same directory resumes: nothing is leased again.
    let (stdout, stderr) = run(&spec, &two, 2);
    assert!(stdout.contains("sweep finished: 12 done"), "{stdout}");
    assert!(!stderr.contains("leased"), "a finished sweep re-ran tasks");
    assert_eq!(results_without_timing(&two.join("results.csv")), results);

    // The report: every figure is a valid PNG, and report.html references only files that exist.
    let html = String::from_utf8(file(&two, "report.html")).unwrap();
    let references = html_references(&html);
    for point in POINTS {
        for (rel, size) in [
            (format!("heatmaps/{point}_eps4.png"), Some((560, 470))),
            (format!("heatmaps/{point}_eps4_fc.png"), Some((560, 470))),
            // The error map, conv1 and fc side by side, three per row.
            (format!("heatmaps/{point}_eps4_layers.png"), Some((3 * 400, 340 + 36))),
            (format!("curves/{point}.png"), Some((2 * 460, 360 + 32 + 24))),
            (format!("curves/{point}_first3.png"), Some((2 * 460, 360 + 32 + 24))),
            (format!("confusion/{point}_B124.png"), None),
        ] {
            let (w, h) = png_size(&file(&two, &rel));
            if let Some(expected) = size {
                assert_eq!((w, h), expected, "{rel}");
            }
            assert!(references.iter().any(|r| r == &rel), "report.html does not show {rel}");
        }
    }
    assert!(references.iter().any(|r| r == "results.csv") && references.iter().any(|r| r == "overview.png"));
    for r in references.iter().filter(|r| !r.starts_with('#')) {
        assert!(two.join(r).is_file(), "report.html references {r}, which does not exist");
    }

    // `freqsweep report` re-renders everything from the store alone: the same bytes.
    let csv_before = file(&two, "results.csv");
    let figure = format!("heatmaps/{}_eps4_layers.png", POINTS[0]);
    let figure_before = file(&two, &figure);
    std::fs::remove_file(two.join("results.csv")).unwrap();
    std::fs::remove_dir_all(two.join("heatmaps")).unwrap();
    std::fs::remove_file(two.join("report.html")).unwrap();
    let report = run_bounded(Command::new(binary("freqsweep")).arg("report").arg(&two), LIMIT);
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    assert_eq!(file(&two, "results.csv"), csv_before, "report recreates results.csv byte for byte");
    assert_eq!(file(&two, &figure), figure_before, "report re-renders the same figure");
    assert_eq!(String::from_utf8(file(&two, "report.html")).unwrap(), html);
}

/// Every `src="…"` and `href="…"` value of a page.
fn html_references(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(start) = rest.find(attribute) {
            rest = &rest[start + attribute.len()..];
            let end = rest.find('"').expect("closed attribute");
            out.push(rest[..end].replace("&amp;", "&"));
            rest = &rest[end..];
        }
    }
    out
}

#[test]
fn a_bad_spec_is_one_line_naming_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.toml");
    std::fs::write(&spec, SPEC.replace("epochs = 2", "epochs = -2")).unwrap();
    let out = run_bounded(
        Command::new(binary("freqsweep")).arg("run").arg(&spec).arg("--out").arg(dir.path().join("o")),
        LIMIT,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("bad.toml:12:") && last.contains("epochs must be a positive integer"), "{stderr}");
}

/// A sweep asking for bf16 and channels-last: the heatmaps run, the report says what the model
/// computed in, and on a device without bf16 instructions the worker says it computed in fp32.
#[test]
fn a_bf16_channels_last_sweep_reports_what_its_model_computed_in() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bf16.toml");
    let text =
        freqsweep_tests::tiny_spec("bf16", "0.003") + "precision = \"bf16\"\nmemory_format = \"channels_last\"\n";
    std::fs::write(&spec, text).unwrap();
    let out = dir.path().join("run");
    let (_, log) = run(&spec, &out, 1);
    let html = String::from_utf8(file(&out, "report.html")).unwrap();
    let said = ["model computed in bf16, channels-last", "model computed in fp32, channels-last"];
    let which = said.iter().position(|s| html.contains(s)).unwrap_or_else(|| panic!("no numerics in the report"));
    if which == 1 {
        assert!(log.contains("bf16 requested, but this device has no bf16 instructions"), "{log}");
    }
    // The heatmap was computed (the map is complete) and results.csv has its columns.
    let results = String::from_utf8(file(&out, "results.csv")).unwrap();
    assert!(results.lines().nth(1).is_some_and(|l| l.contains(",done,")), "{results}");
}

/// The shortcut stages end to end: a model trained until it separates classes 0 and 1, its DFMs
/// (chunks on two workers, merged), the shortcut degree from the merged maps (an input the
/// coordinator made, not a worker) and its band sufficiency, with the run directory's files, the
/// report's sections and `results.csv`'s columns; `freqsweep report` writes the same files again.
#[test]
fn dfm_and_band_sufficiency_stages_write_their_maps_tables_and_report_sections() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("shortcuts.toml");
    let text = r#"name = "shortcuts"
[[dataset]]
kind = "syn"
band = 4
train = 1024
test = 64
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 64
epochs = 6
[eval]
test_sets = ["B1234"]
[dfm]
patch = 4
top = [5, 20]
images = 48
chunks_per_map = 3
classes = [0, 1]
[bands]
tolerance = 0.05
"#;
    std::fs::write(&spec, text).unwrap();
    let out = dir.path().join("run");
    run(&spec, &out, 2);
    let point = "Syn_4-tiny-adam-lr0.003-bs64-ep6-seed0";
    // DFM files: the listed classes only, every `top`, the per-class figure.
    for name in ["loss_class0", "accdrop_class0", "dfm_class0_top5", "dfm_class1_top20", "class1_maps"] {
        let ext = if name.ends_with("maps") { "png" } else { "npy" };
        assert!(out.join(format!("dfm/{point}/{name}.{ext}")).is_file(), "dfm/{point}/{name}.{ext}");
    }
    assert!(!out.join(format!("dfm/{point}/loss_class2.npy")).exists(), "class 2 was not asked for");
    let loss = NpyArray::read(&out.join(format!("dfm/{point}/loss_class0.npy"))).unwrap();
    assert_eq!(loss.shape, vec![32, 32]);
    assert!(loss.to_f64().iter().all(|v| v.is_finite() && *v >= 0.0), "every unit computed");
    let mask = NpyArray::read(&out.join(format!("dfm/{point}/dfm_class0_top5.npy"))).unwrap();
    // 5 % of 64 patches is 4 patches of 16 cells, each with its 16 conjugates (some shared).
    let ones = mask.to_f64().iter().filter(|&&v| v == 1.0).count();
    assert!((64..=128).contains(&ones), "{ones} cells in the top-5 % mask");
    // Band sufficiency: all 15 subsets, a row per class, the results.csv columns.
    let table = String::from_utf8(file(&out, &format!("bands/{point}_f1.csv"))).unwrap();
    assert_eq!(table.lines().count(), 16, "{table}");
    let sufficiency = String::from_utf8(file(&out, &format!("bands/{point}_sufficiency.csv"))).unwrap();
    assert_eq!(sufficiency.lines().count(), 5, "{sufficiency}");
    let results = String::from_utf8(file(&out, "results.csv")).unwrap();
    let header = results.lines().next().unwrap();
    assert!(header.ends_with(",sufficient_bands_class3"), "{results}");
    // The shortcut degree: after the merged maps, per chosen class and top, TPR and FPR.
    let degree = String::from_utf8(file(&out, &format!("dfm/{point}/shortcut_degree.csv"))).unwrap();
    assert_eq!(degree.lines().count(), 1 + 2 * 2, "{degree}");
    for line in degree.lines().skip(1) {
        let fields: Vec<&str> = line.split(',').collect();
        let (tpr, fpr): (f64, f64) = (fields[2].parse().unwrap(), fields[3].parse().unwrap());
        assert!((0.0..=1.0).contains(&tpr) && (0.0..=1.0).contains(&fpr), "{line}");
        assert_eq!(fields[4], "64", "the whole test set: {line}");
    }
    let columns: Vec<&str> = header.split(',').collect();
    let tpr = columns.iter().position(|c| *c == "tpr_class1_top20").expect("a TPR column");
    let row: Vec<&str> = results.lines().nth(1).unwrap().split(',').collect();
    assert!(row[tpr].parse::<f64>().is_ok(), "{results}");
    let html = String::from_utf8(file(&out, "report.html")).unwrap();
    assert!(html.contains("<h3>Dominant frequency maps</h3>") && html.contains("<h3>Band sufficiency</h3>"));
    assert!(html.contains("<h4>Shortcut degree</h4>"));
    assert!(html.contains(&format!("dfm/{point}/class0_maps.png")));
    // `freqsweep report` renders the same files from the store alone.
    let first = file(&out, &format!("dfm/{point}/loss_class0.npy"));
    std::fs::remove_dir_all(out.join("dfm")).unwrap();
    let again = run_bounded(Command::new(binary("freqsweep")).arg("report").arg(&out), LIMIT);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert_eq!(file(&out, &format!("dfm/{point}/loss_class0.npy")), first);
}

/// The robustness stage end to end: each model on its test split corrupted by every (corruption,
/// severity), cut into tasks of two pairs across workers; the table and the `results.csv` columns
/// are the same with 1 and 2 workers (a corrupted image depends only on its corruption, severity,
/// index and seed), and `freqsweep report` writes the same table from the store.
#[test]
fn a_robustness_stage_writes_its_table_identically_across_worker_counts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("robust.toml");
    let text = r#"name = "robust"
[[dataset]]
kind = "syn"
band = 4
train = 256
test = 32
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 64
epochs = 2
[eval]
test_sets = ["B1234"]
[robustness]
corruptions = ["gaussian_noise", "contrast", "fourier(3,1,20)"]
severities = [1, 5]
images = 24
pairs_per_task = 2
baseline = "Syn_4-tiny-adam-lr0.003-bs64-ep2-seed0"
"#;
    std::fs::write(&spec, text).unwrap();
    let point = "Syn_4-tiny-adam-lr0.003-bs64-ep2-seed0";
    let csv = format!("robustness/{point}.csv");
    let mut tables = Vec::new();
    for workers in [1, 2] {
        let out = dir.path().join(format!("run{workers}"));
        run(&spec, &out, workers);
        let table = String::from_utf8(file(&out, &csv)).unwrap();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + 1 + 3 * 2, "{table}");
        assert!(lines[0].starts_with("corruption,severity,error,error_class0"), "{table}");
        assert!(lines[1].starts_with("\"clean\",0,"), "{table}");
        assert!(lines.iter().any(|l| l.starts_with("\"fourier(3,1,20)\",5,")), "{table}");
        for line in &lines[1..] {
            let error: f64 = line.split("\",").nth(1).unwrap().split(',').nth(1).unwrap().parse().unwrap();
            assert!((0.0..=1.0).contains(&error), "{line}");
        }
        let results = String::from_utf8(file(&out, "results.csv")).unwrap();
        let header: Vec<&str> = results.lines().next().unwrap().split(',').collect();
        let mce = header.iter().position(|c| *c == "mce_raw").expect("an mce_raw column");
        let row: Vec<&str> = results.lines().nth(1).unwrap().split(',').collect();
        assert!(row[mce].parse::<f64>().is_ok_and(|v| (0.0..=1.0).contains(&v)), "{results}");
        // The point is its own baseline here: every CE_c is 1, so mCE is 1.
        let normalised = header.iter().position(|c| *c == "mce").expect("an mce column");
        assert_eq!(row[normalised].parse::<f64>().ok(), Some(1.0), "{results}");
        let ce = String::from_utf8(file(&out, &format!("robustness/{point}_ce.csv"))).unwrap();
        assert_eq!(ce.lines().count(), 1 + 3, "{ce}");
        let html = String::from_utf8(file(&out, "report.html")).unwrap();
        assert!(html.contains("<h3>Corruption robustness</h3>") && html.contains("regenerated"), "a report section");
        tables.push((table, row[mce].to_string()));
        if workers == 2 {
            std::fs::remove_dir_all(out.join("robustness")).unwrap();
            let again = run_bounded(Command::new(binary("freqsweep")).arg("report").arg(&out), LIMIT);
            assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
            assert_eq!(String::from_utf8(file(&out, &csv)).unwrap(), tables[1].0, "the report from the store");
        }
    }
    assert_eq!(tables[0], tables[1], "1 and 2 workers give the same table and mCE_raw");
}

/// A sweep on 64 × 64 images end to end with 2 workers: Syn_4 generated at that size (bands
/// scaled to 8, 16, 24), the tiny CNN trained on it, a heatmap of the cells within radius 10 in
/// three chunks (the rest skipped: NaN in the array, never zeros) and DFMs of 8 × 8 patches,
/// every array 64 × 64.
#[test]
fn a_64_by_64_sweep_plans_its_cells_from_the_data_and_skips_unselected_ones() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("big.toml");
    let text = r#"name = "big"
[[dataset]]
kind = "syn"
band = 4
size = 64
train = 128
test = 32
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 32
epochs = 1
[eval]
test_sets = ["B1234", "B123"]
[heatmap]
eps = [4.0]
images = 12
cells = { max_radius = 10 }
chunks_per_map = 3
[dfm]
patch = 8
images = 12
chunks_per_map = 2
shortcut_degree = false
"#;
    std::fs::write(&spec, text).unwrap();
    let out = dir.path().join("run");
    let (stdout, _) = run(&spec, &out, 2);
    // 1 train + 3 heatmap chunks + 2 DFM chunks.
    assert!(stdout.contains("sweep finished: 6 done"), "{stdout}");
    let point = "Syn_4_64px-tiny-adam-lr0.003-bs32-ep1-seed0";
    let map = NpyArray::read(&out.join(format!("heatmaps/{point}_eps4.npy"))).unwrap();
    assert_eq!(map.shape, vec![64, 64]);
    let values = map.to_f64();
    for (i, v) in values.iter().enumerate() {
        let (u, w) = (i as i32 / 64 - 32, i as i32 % 64 - 32);
        if u * u + w * w <= 100 {
            assert!(v.is_finite() && (0.0..=1.0).contains(v), "cell ({u}, {w}) was selected: {v}");
        } else {
            assert!(v.is_nan(), "cell ({u}, {w}) lies beyond radius 10 and must be skipped, not {v}");
        }
    }
    let loss = NpyArray::read(&out.join(format!("dfm/{point}/loss_class0.npy"))).unwrap();
    assert_eq!(loss.shape, vec![64, 64]);
    assert!(loss.to_f64().iter().all(|v| v.is_finite()), "every 8 × 8 patch removed");
    let results = String::from_utf8(file(&out, "results.csv")).unwrap();
    assert!(results.lines().nth(1).is_some_and(|l| l.contains(",done,")), "{results}");
    let html = String::from_utf8(file(&out, "report.html")).unwrap();
    assert!(html.contains(&format!("heatmaps/{point}_eps4.png")));
}

/// Given models in a sweep: a TorchScript model made by `freqsweep-worker train` (its
/// `model.pt`) is analysed beside a model the sweep trains, on an `.npy` test set whose size is
/// read from its header. The given model travels to both workers as a stored artifact; its map
/// equals what `freqsweep-worker heatmap` computes on the same file, bit for bit. A replaced
/// model file is refused on resume instead of mixing two models' results.
#[test]
fn a_given_torchscript_model_is_analysed_like_the_standalone_heatmap() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let syn = run_bounded(
        Command::new(binary("freqsweep"))
            .args(["syn", "--band", "2", "--train", "96", "--test", "16", "--out"])
            .arg(&data),
        LIMIT,
    );
    assert!(syn.status.success(), "{}", String::from_utf8_lossy(&syn.stderr));
    let trained = dir.path().join("trained");
    let train = run_bounded(
        Command::new(binary("freqsweep-worker"))
            .args(["--threads", "1", "train", "--syn-band", "2", "--train", "96", "--test", "16", "--model", "tiny"])
            .args(["--epochs", "1", "--batch-size", "32", "--lr", "0.003", "--out"])
            .arg(&trained),
        LIMIT,
    );
    assert!(train.status.success(), "{}", String::from_utf8_lossy(&train.stderr));
    // The model file lives outside the run and moves under the spec's name.
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models).unwrap();
    std::fs::copy(trained.join("model.pt"), models.join("zoo-a.pt")).unwrap();

    let text = format!(
        r#"name = "given"
[[dataset]]
kind = "npy"
name = "syn2"
train_images = "{d}/train_x.npy"
train_labels = "{d}/train_y.npy"
test_images = "{d}/test_x.npy"
test_labels = "{d}/test_y.npy"
[[model]]
arch = "tiny"
classes = 4
[[model]]
kind = "torchscript"
glob = "{m}/*.pt"
classes = 4
[train]
lr = 0.003
batch_size = 32
epochs = 1
[eval]
test_sets = ["B1234"]
[heatmap]
eps = [4.0]
images = 8
chunk_cells = 129
[bands]
images = 16
"#,
        d = data.display(),
        m = models.display()
    );
    let spec = dir.path().join("given.toml");
    std::fs::write(&spec, text).unwrap();
    let out = dir.path().join("run");
    let (stdout, _) = run(&spec, &out, 2);
    // Trained: 1 train + 4 chunks + 1 bands; given: 4 chunks + 1 bands.
    assert!(stdout.contains("sweep finished: 11 done"), "{stdout}");
    let given = "syn2-zoo_a";
    let results = String::from_utf8(file(&out, "results.csv")).unwrap();
    let row = results.lines().find(|l| l.starts_with(&format!("{given},"))).unwrap_or_else(|| panic!("{results}"));
    assert!(row.starts_with(&format!("{given},done,syn2,zoo_a,")), "{row}");
    assert!(out.join(format!("bands/{given}_f1.csv")).is_file());

    let standalone = dir.path().join("standalone");
    let heatmap = run_bounded(
        Command::new(binary("freqsweep-worker"))
            .args(["--threads", "1", "heatmap", "--model"])
            .arg(models.join("zoo-a.pt"))
            .arg("--images")
            .arg(data.join("test_x.npy"))
            .arg("--labels")
            .arg(data.join("test_y.npy"))
            .args(["--eps", "4", "--limit", "8", "--out"])
            .arg(&standalone),
        LIMIT,
    );
    assert!(heatmap.status.success(), "{}", String::from_utf8_lossy(&heatmap.stderr));
    let swept = NpyArray::read(&out.join(format!("heatmaps/{given}_eps4.npy"))).unwrap().to_f64();
    let alone = NpyArray::read(&standalone.join("heatmap.npy")).unwrap().to_f64();
    assert_eq!(swept.len(), 1024);
    assert!(swept.iter().all(|v| v.is_finite()));
    assert!(
        swept.iter().zip(&alone).all(|(a, b)| a.to_bits() == b.to_bits()),
        "the sweep's map of the given model differs from freqsweep-worker heatmap's"
    );

    // The same file name with other weights: refused on resume, nothing recomputed.
    let other = run_bounded(
        Command::new(binary("freqsweep-worker"))
            .args(["--threads", "1", "train", "--syn-band", "2", "--train", "96", "--test", "16", "--model", "tiny"])
            .args(["--epochs", "1", "--batch-size", "32", "--lr", "0.01", "--out"])
            .arg(dir.path().join("other")),
        LIMIT,
    );
    assert!(other.status.success());
    std::fs::copy(dir.path().join("other/model.pt"), models.join("zoo-a.pt")).unwrap();
    let again = run_bounded(
        Command::new(binary("freqsweep")).arg("run").arg(&spec).args(["--local-workers", "1", "--out"]).arg(&out),
        LIMIT,
    );
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.contains("model zoo_a") && last.contains("changed since this run started"), "{stderr}");
}

/// Heatmaps at chosen epochs: the checkpoints after epochs 1 and 2 are kept and mapped while
/// training goes on (a chunk of epoch 1 is leased before the train task is done), the report
/// shows the maps over training and the mean error per band against the epoch, and another run
/// with one worker gives the same epoch maps bit for bit (each depends only on its checkpoint).
#[test]
fn heatmaps_at_epochs_start_during_training_and_depend_only_on_their_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("epochs.toml");
    let text = r#"name = "epochs"
[[dataset]]
kind = "syn"
band = 1
train = 2048
test = 32
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 32
epochs = 3
[eval]
test_sets = ["B1234"]
[heatmap]
eps = [4.0]
images = 8
chunk_cells = 257
at_epochs = [1, 2]
"#;
    std::fs::write(&spec, text).unwrap();
    let two = dir.path().join("two");
    let (stdout, log) = run(&spec, &two, 2);
    // 1 train + 2 chunks of the trained model's map + 2 × 2 chunks of the epoch maps.
    assert!(stdout.contains("sweep finished: 7 done"), "{stdout}");
    let point = "Syn_1-tiny-adam-lr0.003-bs32-ep3-seed0";
    let line_of = |needle: &str| log.lines().position(|l| l.contains(needle));
    let kept = line_of("epoch checkpoint kept").expect("the coordinator keeps epoch checkpoints");
    let done = log
        .lines()
        .position(|l| l.contains(&format!("task=train/{point}")) && l.contains("to=\"done\""))
        .expect("the train task finished");
    assert!(kept < done);
    let first_epoch_map =
        log.lines().position(|l| l.contains(&format!("task=heatmap/{point}/ep1/"))).expect("an epoch-1 chunk ran");
    let leased_epoch_chunk = log.lines().take(done).any(|l| l.contains("leased") && l.contains("kind=\"heatmap\""));
    assert!(leased_epoch_chunk, "an epoch heatmap chunk was leased before training finished (line {first_epoch_map})");
    for rel in [
        format!("heatmaps/{point}_ep1_eps4.npy"),
        format!("heatmaps/{point}_ep2_eps4.npy"),
        format!("heatmaps/{point}_eps4_over_training.png"),
        format!("heatmaps/{point}_eps4_bands_over_training.png"),
    ] {
        assert!(two.join(&rel).is_file(), "{rel} missing");
    }
    let bands = String::from_utf8(file(&two, &format!("heatmaps/{point}_eps4_bands_over_training.csv"))).unwrap();
    let epochs: Vec<&str> = bands.lines().skip(1).map(|l| l.split(',').next().unwrap()).collect();
    assert_eq!(epochs, ["1", "2", "3"], "{bands}");
    assert!(bands.starts_with("epoch,clean,B1,B2,B3,B4\n"), "{bands}");
    let ep1 = NpyArray::read(&two.join(format!("heatmaps/{point}_ep1_eps4.npy"))).unwrap().to_f64();
    let last = NpyArray::read(&two.join(format!("heatmaps/{point}_eps4.npy"))).unwrap().to_f64();
    assert!(ep1.iter().all(|v| v.is_finite()));
    assert_ne!(ep1, last, "the map after epoch 1 is of another model than the trained one");
    let html = String::from_utf8(file(&two, "report.html")).unwrap();
    assert!(html.contains("<h4>Over training</h4>"));

    let one = dir.path().join("one");
    run(&spec, &one, 1);
    for rel in [format!("heatmaps/{point}_ep1_eps4.npy"), format!("heatmaps/{point}_ep2_eps4.npy")] {
        assert_eq!(file(&two, &rel), file(&one, &rel), "{rel} differs between runs");
    }
}

/// Real data through an image folder: scikit-learn's handwritten digits (`tests/fixtures/digits`,
/// 8 × 8 PNGs, 10 classes), resized to 16 × 16 when read; the tiny CNN learns them far above
/// chance and its 16 × 16 heatmap has every cell.
#[test]
fn a_real_image_folder_dataset_trains_and_maps_at_its_size() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/digits");
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("digits.toml");
    let text = format!(
        r#"name = "digits"
[[dataset]]
kind = "folder"
train = "{0}/train"
test = "{0}/test"
size = 16
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 32
epochs = 20
[eval]
test_sets = ["B1234"]
[heatmap]
eps = [2.0]
images = 100
chunks_per_map = 2
"#,
        fixture.display()
    );
    std::fs::write(&spec, text).unwrap();
    let out = dir.path().join("run");
    let (stdout, _) = run(&spec, &out, 2);
    assert!(stdout.contains("sweep finished: 3 done"), "{stdout}");
    let point = "digits-tiny-adam-lr0.003-bs32-ep20-seed0";
    let results = String::from_utf8(file(&out, "results.csv")).unwrap();
    let header: Vec<&str> = results.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = results.lines().nth(1).unwrap().split(',').collect();
    let accuracy: f64 = row[header.iter().position(|c| *c == "accuracy_B1234").unwrap()].parse().unwrap();
    assert!(accuracy > 0.5, "10 classes, chance 0.1: accuracy {accuracy}");
    let map = NpyArray::read(&out.join(format!("heatmaps/{point}_eps2.npy"))).unwrap();
    assert_eq!(map.shape, vec![16, 16]);
    assert!(map.to_f64().iter().all(|v| v.is_finite()));
    let confusion = String::from_utf8(file(&out, &format!("confusion/{point}_B1234.csv"))).unwrap();
    assert_eq!(confusion.lines().count(), 11, "10 classes: {confusion}");
}
