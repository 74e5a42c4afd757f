//! Every spec in `examples/` parses as it is (a user's first command must not fail on the spec);
//! `zoo.toml`, which analyses the files `examples/make_zoo.sh` writes, parses once they exist and
//! says which is missing before.

use freqsweep_common::spec;

#[test]
fn every_example_spec_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut parsed = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let sweep = if path.ends_with("zoo.toml") {
                zoo(&path)
            } else {
                freqsweep_common::files::load_spec(&path).unwrap_or_else(|e| panic!("{e}"))
            };
            parsed.push((path.file_stem().unwrap().to_string_lossy().into_owned(), sweep));
        }
    }
    parsed.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "demo",
            "learning_dynamics",
            "poster_cpu",
            "robustness_demo",
            "seed_poster",
            "shortcuts",
            "shortcuts_cpu",
            "shortcuts_demo",
            "zoo"
        ]
    );
    let robust = &parsed.iter().find(|(n, _)| n == "robustness_demo").unwrap().1;
    let r = robust.analyses.robustness.as_ref().expect("the robustness demo has a [robustness] stage");
    assert_eq!((r.corruptions.len(), r.severities.as_slice(), r.chunks()), (17, &[1, 3, 5][..], 6));
    let zoo = &parsed.iter().find(|(n, _)| n == "zoo").unwrap().1;
    assert_eq!(zoo.points.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["digits-a", "digits-b"]);
    let demo = &parsed.iter().find(|(n, _)| n == "shortcuts_demo").unwrap().1;
    let dfm = demo.analyses.dfm.as_ref().expect("the shortcut demo has a [dfm] stage");
    assert_eq!((dfm.patch, dfm.top.len(), demo.points.len()), (1, 4, 1));
}

/// `zoo.toml` with its `runs/` paths under a temporary directory holding the digits fixture and
/// two model files; and, before they exist, the one-line error naming the missing folder.
fn zoo(path: &std::path::Path) -> spec::Sweep {
    let text = std::fs::read_to_string(path).unwrap();
    let missing = std::path::Path::new("/nonexistent-freqsweep-runs");
    let err = spec::parse(&text.replace("runs/", &format!("{}/", missing.display())), "zoo.toml").unwrap_err();
    assert!(err.to_string().contains("train: /nonexistent-freqsweep-runs/digits/train: No such file"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/digits");
    for split in ["train", "test"] {
        for class in std::fs::read_dir(fixture.join(split)).unwrap() {
            let class = class.unwrap().path();
            let target = dir.path().join("digits").join(split).join(class.file_name().unwrap());
            std::fs::create_dir_all(&target).unwrap();
            let first = std::fs::read_dir(&class).unwrap().next().unwrap().unwrap().path();
            std::fs::copy(&first, target.join(first.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir_all(dir.path().join("zoo")).unwrap();
    for model in ["b.pt", "a.pt"] {
        std::fs::write(dir.path().join("zoo").join(model), b"a model file").unwrap();
    }
    let sweep = spec::parse(&text.replace("runs/", &format!("{}/", dir.path().display())), "zoo.toml")
        .unwrap_or_else(|e| panic!("{e}"));
    sweep
}
