//! Every spec in `examples/` parses as it is (a user's first command must not fail on the spec).

use freqsweep_common::spec;

#[test]
fn every_example_spec_parses() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut parsed = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let sweep = spec::load(&path).unwrap_or_else(|e| panic!("{e}"));
            parsed.push((path.file_stem().unwrap().to_string_lossy().into_owned(), sweep));
        }
    }
    parsed.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = parsed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["demo", "learning_dynamics", "poster_cpu", "seed_poster", "shortcuts", "shortcuts_cpu", "shortcuts_demo"]
    );
    let demo = &parsed.iter().find(|(n, _)| n == "shortcuts_demo").unwrap().1;
    let dfm = demo.dfm.as_ref().expect("the shortcut demo has a [dfm] stage");
    assert_eq!((dfm.patch, dfm.top.len(), demo.points.len()), (1, 4, 1));
}
