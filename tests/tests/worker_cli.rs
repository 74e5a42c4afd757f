//! `freqsweep-worker train` and `heatmap` as a user runs them: a tiny model trained on a tiny Syn_4,
//! its heatmap from the exported TorchScript file and from the checkpoint, the files DESIGN.md
//! lists, and one-line errors for bad models, labels and images.

use freqsweep_common::npy::NpyArray;
use freqsweep_tests::{binary, png_size, run_bounded};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(300);

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn last_error_line(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string()
}

fn worker(args: &[&str], paths: &[&Path]) -> Output {
    let mut cmd = Command::new(binary("freqsweep-worker"));
    cmd.args(args).args(paths).args(["--device", "cpu"]);
    run_bounded(&mut cmd, LIMIT)
}

fn heatmap(model: &Path, images: &Path, labels: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(binary("freqsweep-worker"));
    cmd.arg("heatmap").arg("--model").arg(model).arg("--images").arg(images).arg("--labels").arg(labels);
    cmd.arg("--out").arg(out).args(["--eps", "4", "--device", "cpu", "--limit", "16", "--batch", "128"]).args(extra);
    run_bounded(&mut cmd, LIMIT)
}

#[test]
fn train_then_heatmap_writes_every_promised_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let args = [
        "train",
        "--model",
        "tiny",
        "--syn-band",
        "4",
        "--train",
        "256",
        "--test",
        "64",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--eval-every-steps",
        "4",
        "--test-sets",
        "B1234,B124",
        "--out",
    ];
    let stdout = ok(&worker(&args, &[&run]));
    assert!(stdout.contains("B124") && stdout.contains("accuracy"), "{stdout}");
    for file in ["task.json", "checkpoint.ot", "metrics.csv", "metrics.jsonl", "result.json", "model.pt"] {
        assert!(run.join(file).is_file(), "{file} missing");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    assert!(csv.starts_with("epoch,step,test_set,name,class,value\n"));
    assert!(csv.lines().any(|l| l.starts_with("0.5,4,B124,f1,3,")), "every-4-steps F1 of class 3 on B124");

    // Running the same command again resumes from the finished checkpoint: no new steps, and
    // it reports exactly what the first run did (its final loss was `null` before).
    let first: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    let again = ok(&worker(&args, &[&run]));
    assert!(again.contains("2 epochs, 16 steps"), "{again}");
    let second: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("result.json")).unwrap()).unwrap();
    assert!(first["final_loss"].is_f64(), "{first}");
    for key in ["final_loss", "epochs", "steps", "test_sets"] {
        assert_eq!(second[key], first[key], "{key} of the resumed run");
    }

    let data = dir.path().join("syn");
    let syn = Command::new(binary("freqsweep"))
        .args(["syn", "--band", "4", "--train", "4", "--test", "16", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(syn.status.success());
    let (x, y) = (data.join("test_x.npy"), data.join("test_y.npy"));

    let from_script = dir.path().join("hm_script");
    ok(&heatmap(&run.join("model.pt"), &x, &y, &from_script, &[]));
    let from_checkpoint = dir.path().join("hm_ckpt");
    ok(&heatmap(&run.join("checkpoint.ot"), &x, &y, &from_checkpoint, &["--layers", "all"]));

    let map = NpyArray::read(&from_script.join("heatmap.npy")).unwrap();
    assert_eq!(map.shape, [32, 32]);
    let values = map.to_f64();
    assert!(values.iter().all(|v| (0.0..=1.0).contains(v)), "error rates");
    // Conjugate symmetry: (u, v) and (-u, -v) hold the same value (centred layout, DC at 16,16).
    assert_eq!(values[(16 + 3) * 32 + (16 - 5)], values[(16 - 3) * 32 + (16 + 5)]);
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from_script.join("heatmap.json")).unwrap()).unwrap();
    assert_eq!(
        (json["eps"].as_f64(), json["height"].as_u64(), json["images"].as_u64()),
        (Some(4.0), Some(32), Some(16))
    );
    assert_eq!(json["error"].as_array().unwrap().len(), 32);
    // The report's heatmap figure (axes and colour bar), not bare pixels.
    assert_eq!(png_size(&std::fs::read(from_script.join("heatmap.png")).unwrap()), (560, 470));
    // The TorchScript export and the checkpoint are the same model: the same map.
    assert_eq!(
        std::fs::read(from_script.join("heatmap.npy")).unwrap(),
        std::fs::read(from_checkpoint.join("heatmap.npy")).unwrap()
    );
    for layer in ["conv1", "conv2", "fc"] {
        assert!(from_checkpoint.join(format!("heatmap_{layer}.npy")).is_file(), "{layer} map");
    }

    // The map records exactly which file it analysed.
    let (digest, _) = freqsweep_common::digest::of_file(&run.join("model.pt")).unwrap();
    assert_eq!(json["model_digest"], digest);

    // Bad input: one line naming the cause.
    let bad = dir.path().join("bad");
    // 200 flipped bytes inside a tensor of the checkpoint: its digest refuses it.
    let mut bytes = std::fs::read(run.join("checkpoint.ot")).unwrap();
    let middle = bytes.len() / 4;
    for b in &mut bytes[middle..middle + 200] {
        *b ^= 0xff;
    }
    let flipped = dir.path().join("flipped.ot");
    std::fs::write(&flipped, &bytes).unwrap();
    let line = last_error_line(&heatmap(&flipped, &x, &y, &bad, &[]));
    assert!(line.contains("flipped.ot: corrupt checkpoint"), "{line}");
    // Images the model was not built for: the sizes are named, and nothing panics.
    let small = dir.path().join("small.npy");
    NpyArray::from_f32(vec![16, 3, 16, 16], &vec![0.5; 16 * 3 * 16 * 16]).write(&small).unwrap();
    for model in [run.join("model.pt"), run.join("checkpoint.ot")] {
        let out = heatmap(&model, &small, &y, &bad, &[]);
        let line = last_error_line(&out);
        assert!(line.contains("images of 3×16×16 do not fit this"), "{line}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{line}");
    }
    let line = last_error_line(&heatmap(&x, &x, &y, &bad, &[]));
    assert!(line.contains("not a TorchScript module") && line.contains("test_x.npy"), "{line}");
    let line = last_error_line(&heatmap(&run.join("model.pt"), &x, &data.join("train_y.npy"), &bad, &[]));
    assert!(line.contains("4 labels but") && line.contains("16 images"), "{line}");
    let wide_labels = dir.path().join("labels9.npy");
    NpyArray::from_i64(vec![16], &[9; 16]).write(&wide_labels).unwrap();
    let line = last_error_line(&heatmap(&run.join("model.pt"), &x, &wide_labels, &bad, &[]));
    assert!(line.contains("outputs 4 values per image but the labels go up to 9"), "{line}");
    let bright = dir.path().join("bright.npy");
    NpyArray::from_f32(vec![16, 3, 32, 32], &vec![2.0; 16 * 3 * 32 * 32]).write(&bright).unwrap();
    let line = last_error_line(&heatmap(&run.join("model.pt"), &bright, &y, &bad, &[]));
    assert!(line.contains("[0, 1]"), "{line}");
    let line = last_error_line(&heatmap(&run.join("model.pt"), &x, &y, &bad, &["--layers", "layer7"]));
    assert!(line.contains("unknown layer \"layer7\""), "{line}");
    // 2 × 2 images panicked inside the model (issue 23): the bound `size =` has, from any source.
    let tiny = dir.path().join("tiny.npy");
    NpyArray::from_f32(vec![16, 3, 2, 2], &[0.5; 16 * 3 * 2 * 2]).write(&tiny).unwrap();
    let out = heatmap(&run.join("model.pt"), &tiny, &y, &bad, &[]);
    let line = last_error_line(&out);
    assert!(line.contains("tiny.npy: images are 2×2; images must be 4 to 1024 pixels a side"), "{line}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"), "{line}");
}

/// `freqsweep-worker corrupt` as a user runs it: the corrupted set is exactly the library's
/// (seeded per image), written as float32 [N,C,H,W]; uint8 [N,H,W,C] input reads as the other
/// commands read it; the sheet holds every corruption (rows) clean and at severities 1 to 5; bad
/// names, severities and image numbers are one line naming the value.
#[test]
fn corrupt_writes_the_librarys_corruption_and_a_sheet() {
    use freqsweep_common::corruption::{corrupt_batch, Corruption, ALL};
    let dir = tempfile::tempdir().unwrap();
    let (n, c, h, w) = (3usize, 3usize, 16usize, 12usize);
    let values: Vec<f32> = (0..n * c * h * w).map(|i| ((i * 37) % 255) as f32 / 255.0).collect();
    let images = dir.path().join("x.npy");
    NpyArray::from_f32(vec![n, c, h, w], &values).write(&images).unwrap();
    let out = dir.path().join("y.npy");
    let sheet = dir.path().join("sheet.png");
    let run = |extra: &[&str]| {
        let mut cmd = Command::new(binary("freqsweep-worker"));
        cmd.arg("corrupt").arg("--images").arg(&images).args(extra);
        run_bounded(&mut cmd, LIMIT)
    };
    let args = ["--corruption", "gaussian_noise", "--severity", "4", "--seed", "9", "--out"];
    ok(&run(&[&args[..], &[out.to_str().unwrap(), "--sheet", sheet.to_str().unwrap()]].concat()));
    let written = NpyArray::read(&out).unwrap();
    assert_eq!(written.shape, vec![n, c, h, w]);
    let expected = corrupt_batch(&values, c, h, w, Corruption::parse("gaussian_noise").unwrap(), 4, 9, 0).unwrap();
    let got: Vec<f32> = written.to_f64().iter().map(|&v| v as f32).collect();
    assert_eq!(got, expected, "the library's corruption, bit for bit");
    assert_eq!(png_size(&std::fs::read(&sheet).unwrap()), ((6 * (w + 2) + 2) as u32, (ALL.len() * (h + 2) + 2) as u32));

    for (extra, wanted) in [
        (vec!["--corruption", "spatter", "--severity", "1", "--out", "z.npy"], "unknown corruption \"spatter\""),
        (vec!["--corruption", "fog", "--severity", "6", "--out", "z.npy"], "6 is not in 1..=5"),
        (vec!["--corruption", "fog", "--out", "z.npy"], "--out needs --corruption and --severity"),
        (vec!["--sheet", "s.png", "--sheet-image", "3"], "--sheet-image 3 is not an image of"),
        (vec![], "nothing to write"),
        (
            vec!["--corruption", "fourier(100000,0,4)", "--severity", "1", "--out", "z.npy"],
            "lies outside the 16×12 spectrum",
        ),
    ] {
        let out = run(&extra);
        // clap's own refusals end with a usage hint; the command's are one line.
        let said = if wanted.contains("1..=5") {
            String::from_utf8_lossy(&out.stderr).into_owned()
        } else {
            last_error_line(&out)
        };
        assert!(!out.status.success() && said.contains(wanted), "{extra:?}: {said}");
    }
    // Not a file of images: refused in one line, never read (a FIFO would block forever).
    let fifo = dir.path().join("fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    for bad in [Path::new("/dev/zero"), fifo.as_path()] {
        let mut cmd = Command::new(binary("freqsweep-worker"));
        cmd.arg("corrupt").arg("--images").arg(bad).args(["--sheet", "s.png"]);
        let line = last_error_line(&run_bounded(&mut cmd, LIMIT));
        assert!(line.ends_with("not a regular file") && line.matches(bad.to_str().unwrap()).count() == 1, "{line}");
    }
}
