//! The live dashboard in a real headless browser: Chromium (the Debian package; `.ci/run`
//! installs it) loads the page of a `freqsweep serve` before any worker has joined (every cell
//! grey), then again and again while one worker trains the tiny CNN and fills its Fourier heatmap
//! in 22 chunks and its DFMs in 8, until the page says both are complete. It saves a screenshot,
//! and the numbers the page shows (mean and clean error of the map, the newest per-class F1 of each
//! test set, each class's DFM loss range) must equal the store's (`results.csv` and the DFM
//! arrays, written from the store, and its metric points).

use freqsweep_tests::{binary, run_bounded, serve};
use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The tiny sweep with 2 epochs, its map in 22 chunks of 24 cells on 32 images, and its DFMs of
/// 4 × 4 patches (64 units in 8 chunks).
fn dashboard_spec() -> String {
    freqsweep_tests::tiny_spec("dashboard", "0.003")
        .replace("epochs = 1", "epochs = 2")
        .replace("images = 8", "images = 32")
        .replace("chunk_cells = 257", "chunk_cells = 24")
        + "[dfm]\npatch = 4\nimages = 16\nchunk_cells = 8\n"
}

/// `(class, units done, units, caption)` of every DFM figure on the page.
fn dfm_figures(html: &str) -> Vec<(usize, usize, usize, String)> {
    html.split("<figure class=\"dfm\"")
        .skip(1)
        .map(|piece| {
            let attr = |name: &str| -> usize {
                piece.split(&format!("{name}=\"")).nth(1).and_then(|s| s.split('"').next()).unwrap().parse().unwrap()
            };
            let caption = piece.split("<figcaption>").nth(1).and_then(|s| s.split('<').next()).unwrap().to_string();
            (attr("data-class"), attr("data-units-done"), attr("data-units"), caption)
        })
        .collect()
}

fn chromium() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let dirs: Vec<&str> = path.split(':').chain(["/usr/bin", "/usr/local/bin", "/snap/bin"]).collect();
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .iter()
        .flat_map(|name| dirs.iter().map(move |d| Path::new(d).join(name)))
        .find(|p| p.is_file())
}

/// One headless page load: the DOM after the page's script ran for 3 s of virtual time (its
/// fetches complete in real time first), up to the script itself (whose text holds the markup
/// it renders).
fn browse(chrome: &Path, profile: &Path, url: &str, action: &[&OsStr]) -> String {
    let out = run_bounded(
        Command::new(chrome)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=3000", "--window-size=1280,1900"])
            .args(action)
            .arg(url),
        Duration::from_secs(90),
    );
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout);
    dom.split("<script>").next().unwrap_or_default().to_string()
}

/// The attributes of the first `<tag class="class" …>` in `html`.
fn attributes(html: &str, start: &str) -> Option<BTreeMap<String, String>> {
    let at = html.find(start)?;
    let end = at + html[at..].find('>')?;
    let mut attrs = BTreeMap::new();
    let mut rest = &html[at + start.len()..end];
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim().to_string();
        let value_end = rest[eq + 2..].find('"')?;
        attrs.insert(name, rest[eq + 2..eq + 2 + value_end].to_string());
        rest = &rest[eq + 2 + value_end + 1..];
    }
    Some(attrs)
}

/// The text of the first `<b class="class">…</b>` after `from`.
fn bold_text<'a>(html: &'a str, class: &str) -> Option<&'a str> {
    let marker = format!("<b class=\"{class}\">");
    let at = html.find(&marker)? + marker.len();
    Some(&html[at..at + html[at..].find('<')?])
}

/// `(test set, class) → value` of every `<b class="last-f1" data-set=… data-class=…>`.
fn last_f1(html: &str) -> BTreeMap<(String, usize), String> {
    let mut out = BTreeMap::new();
    for piece in html.split("<b class=\"last-f1\" ").skip(1) {
        let set = piece.split("data-set=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().to_string();
        let class = piece.split("data-class=\"").nth(1).and_then(|s| s.split('"').next()).unwrap().parse().unwrap();
        let value = piece.split('>').nth(1).and_then(|s| s.split('<').next()).unwrap().to_string();
        out.insert((set, class), value);
    }
    out
}

#[test]
fn the_dashboard_fills_in_the_heatmap_in_a_real_browser_and_shows_the_stores_numbers() {
    let Some(chrome) = chromium() else {
        return freqsweep_tests::skip(
            "the dashboard browser test (tests/tests/dashboard.rs)",
            "FREQSWEEP_REQUIRE_CHROMIUM",
            "Chromium is not installed (as root: apt-get install chromium)",
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("dashboard.toml");
    std::fs::write(&spec, dashboard_spec()).unwrap();
    let out = dir.path().join("run");
    let profile = dir.path().join("chromium-profile");
    // Kept after the test: the screenshot is for people to look at.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-test");
    std::fs::create_dir_all(&shots).unwrap();

    let extra: Vec<&OsStr> = ["--http", "127.0.0.1:0", "--linger", "120"].iter().map(OsStr::new).collect();
    let freqsweep_tests::Served { child: mut served, value: grpc, mut lines, .. } =
        serve(&spec, &out, &extra, "listen=");
    let http = loop {
        let line = lines.next().expect("serve logs the dashboard's address").unwrap();
        if let Some(rest) = line.split("http=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    // Drain the log so serve never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let url = format!("http://{http}/?token=right");

    // Before any worker: the map is planned and every cell is grey.
    let page = browse(&chrome, &profile, &url, &[OsStr::new("--dump-dom")]);
    let map = attributes(&page, "<figure class=\"map\"").unwrap_or_else(|| panic!("no heatmap on the page:\n{page}"));
    assert_eq!(map["data-written"], "0", "{map:?}");
    assert_eq!(map["data-complete"], "false");
    assert_eq!(map["data-grey"], "1024", "all 32 × 32 cells grey before any chunk");
    assert_eq!(map["data-chunks"], "22");
    assert_eq!(map["data-planned"], "514");

    let mut worker = Command::new(binary("freqsweep-worker"))
        .args(["--coordinator", &format!("http://{grpc}"), "--device", "cpu", "--threads", "1", "--cache-dir"])
        .arg(dir.path().join("worker"))
        .env("FREQSWEEP_TOKEN", "right")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Load after load until the page says the map is complete; what it shows only grows.
    let started = Instant::now();
    let mut written_seen = Vec::new();
    let page = loop {
        let page = browse(&chrome, &profile, &url, &[OsStr::new("--dump-dom")]);
        let map = attributes(&page, "<figure class=\"map\"").expect("the heatmap stays on the page");
        let written: usize = map["data-written"].parse().unwrap();
        let grey: usize = map["data-grey"].parse().unwrap();
        assert!(grey <= 1024 && (written == 0) == (grey == 1024), "{map:?}");
        written_seen.push(written);
        let dfms = dfm_figures(&page);
        assert_eq!(dfms.len(), 4, "one DFM loss map per class from the start");
        if map["data-complete"] == "true" && dfms.iter().all(|d| d.1 == d.2) {
            assert_eq!(written, 514);
            assert_eq!(grey, 0, "no grey cell once complete");
            break page;
        }
        assert!(started.elapsed() < Duration::from_secs(150), "the map never completed; seen {written_seen:?}");
    };
    eprintln!("cells written, load by load: {written_seen:?}");
    assert!(written_seen.windows(2).all(|w| w[0] <= w[1]), "{written_seen:?}");

    let shot = shots.join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    browse(&chrome, &profile, &url, &[OsStr::new(&format!("--screenshot={}", shot.display()))]);
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "{} bytes", png.len());
    eprintln!("screenshot: {}", shot.display());

    // The page's numbers are the store's: the map's mean and clean error as results.csv has them
    // (the report writes it from the store before --linger), the newest F1 per class and set.
    let results = out.join("results.csv");
    let started = Instant::now();
    while !results.is_file() {
        assert!(started.elapsed() < Duration::from_secs(60), "results.csv never appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    let csv = std::fs::read_to_string(&results).unwrap();
    let mut rows = csv.lines();
    let header: Vec<&str> = rows.next().unwrap().split(',').collect();
    let row: Vec<&str> = rows.next().unwrap().split(',').collect();
    let column = |name: &str| row[header.iter().position(|h| *h == name).unwrap()].parse::<f64>().unwrap();
    assert_eq!(bold_text(&page, "mean-error").unwrap(), format!("{:.6}", column("mean_heatmap_error_eps4")));
    assert_eq!(bold_text(&page, "clean-error").unwrap(), format!("{:.6}", column("clean_error_eps4")));

    // Each class's DFM loss map: the range in its caption is the report's `loss_class<k>.npy`'s.
    let dfm_dir = out.join("dfm").join(
        std::fs::read_dir(out.join("dfm"))
            .unwrap()
            .find_map(|e| e.ok().filter(|e| e.path().is_dir()))
            .unwrap()
            .file_name(),
    );
    for (class, done, units, caption) in dfm_figures(&page) {
        assert_eq!((done, units), (64, 64));
        let loss =
            freqsweep_common::npy::NpyArray::read(&dfm_dir.join(format!("loss_class{class}.npy"))).unwrap().to_f64();
        let finite: Vec<f64> = loss.into_iter().filter(|v| v.is_finite()).collect();
        let (lo, hi) = finite.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        assert_eq!(caption, format!("class {class}: loss {lo:.3} … {hi:.3}, 64 / 64 units"));
    }

    let (store, _writer) = freqsweep_coordinator::store::Store::open(&out.join("freqsweep.db")).unwrap();
    let reader = store.reader().unwrap();
    let train = reader.tasks().unwrap().into_iter().find(|t| t.kind == "train").unwrap();
    let mut stored = BTreeMap::new();
    for p in reader.metrics(train.id).unwrap().into_iter().filter(|p| p.name == "f1") {
        stored.insert((p.test_set.clone(), p.class_index as usize), format!("{:.6}", p.value));
    }
    let shown = last_f1(&page);
    assert_eq!(shown.len(), 8, "4 classes × 2 test sets: {shown:?}");
    assert_eq!(shown, stored);

    let _ = worker.wait();
    let _ = Command::new("kill").arg(served.id().to_string()).status();
    let _ = served.wait();
}
