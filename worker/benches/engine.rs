//! Engine throughput, the Rust half of `cargo xtask bench engine` (the PyTorch half is
//! `bench/torch_engine.py`, run right after this in the same invocation on the same data and the
//! same thread count). For each model, on the CPU and on CUDA when libtorch sees a GPU:
//!
//! - **heatmap**: `heatmap::compute` (canonical cells only, many cell × image copies per forward
//!   pass, signs and basis images built once) in perturbed images per second, for a few batch sizes;
//! - **forward**: the pure batched forward pass (`no_grad`, eval) of the same model on the same
//!   images, the ceiling for any heatmap code;
//! - **numerics**: the heatmap and the forward pass of the same model in fp32 channels-last
//!   (`heatmap.fp32_cl`, `forward.fp32_cl`) and, where the device has bf16 instructions, bf16
//!   channels-last (`*.bf16_cl`); `bf16_native` says which;
//! - **dfm**: `dfm::compute` over the same cells and images (filtered images per second; one pass
//!   per removed cell serves every class), for the models in `--dfm tiny`;
//! - **training**: steps per second at batch 64 with Adam, both through `train::run` (one epoch,
//!   including its evaluations and checkpoint; in fp32 NCHW, `train_run`, and in each numerics
//!   variant, `train_run.fp32_cl`, `train_run.bf16_cl`) and as the bare fp32 NCHW step loop
//!   `train::run` runs (index a batch, forward, cross-entropy, backward, `OptimizerState::step`).
//!
//! Models are freshly initialised (seeded); the images are Syn_4 test images, written to `--out` as
//! `.npy` so the baseline uses exactly the same data. Prints one flat JSON object on stdout
//! (`"cpu.tiny.heatmap.256": images/s`, …; flat so `cargo xtask bench` reads it without a JSON crate).
//!
//! - **large**: for the models in `--large tiny=224`, a heatmap of images of that side over 64 cells (a
//!   default chunk) of Yin et al.'s 63 × 63 low-frequency window (`cells = { low_crop = 63 }`), against the pure
//!   forward pass of the same model at the same batch on the same images (`large224.heatmap`,
//!   `large224.forward`, `large224.ratio`).
//!
//! Options (all optional): `--out DIR`, `--images N`, `--batch tiny=256,resnet18=64` (main figures),
//! `--batches 32,64,128,256,512` (forward sweep for every model, over `--sweep-images tiny=8192,…`
//! images; heatmap sweep for the models in `--sweep tiny`), `--cells tiny=64,resnet18=16`,
//! `--steps tiny=200,resnet18=12`, `--models tiny,resnet18`, `--device cpu|cuda`, `--threads N` (libtorch's
//! CPU threads; default: its own choice).

use freqsweep_common::bands::{Band, BandLayout};
use freqsweep_common::spectrum::{Cell, Shape2};
use freqsweep_common::syn::{self, Split, SynConfig};
use freqsweep_common::task::{
    Augment, DatasetSource, LrSchedule, MemoryFormat, Optimizer, Precision, TrainConfig, TrainTask,
};
use freqsweep_worker::heatmap::{self, HeatmapConfig};
use freqsweep_worker::models::{build, convert_vars, Arch, ModelConfig, Numerics};
use freqsweep_worker::optim::OptimizerState;
use freqsweep_worker::train;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

const EPS: f64 = 4.0;
const TRAIN_BATCH: i64 = 64;
const LR: f64 = 1e-3;

struct Options {
    out: Option<PathBuf>,
    images: usize,
    /// Batch sizes of the forward-pass sweep (every model) and of the heatmap sweep (models in `sweep`).
    batches: Vec<usize>,
    /// The batch size of each model's main heatmap and forward figures.
    batch: BTreeMap<String, usize>,
    sweep: Vec<Arch>,
    /// Models whose DFM engine is measured.
    dfm: Vec<Arch>,
    /// Images per batch size in the forward-pass sweep.
    sweep_images: BTreeMap<String, usize>,
    cells: BTreeMap<String, usize>,
    steps: BTreeMap<String, usize>,
    models: Vec<Arch>,
    devices: Vec<Device>,
    /// Model → image side of the large-image heatmap measure.
    large: BTreeMap<String, usize>,
}

fn parse_map(text: &str) -> BTreeMap<String, usize> {
    text.split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().parse().expect("a count")))
        .collect()
}

fn options() -> Options {
    let mut o = Options {
        out: None,
        images: 256,
        batches: vec![32, 64, 128, 256, 512],
        batch: parse_map("tiny=256,alexnet=256,resnet18=64"),
        sweep_images: parse_map("tiny=8192,alexnet=1024,resnet18=256"),
        sweep: vec![Arch::Tiny],
        dfm: vec![Arch::Tiny],
        cells: parse_map("tiny=64,alexnet=32,resnet18=16"),
        steps: parse_map("tiny=200,alexnet=20,resnet18=12"),
        models: vec![Arch::Tiny, Arch::ResNet18],
        devices: if tch::Cuda::is_available() { vec![Device::Cpu, Device::Cuda(0)] } else { vec![Device::Cpu] },
        large: BTreeMap::new(),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || args.get(i + 1).cloned().unwrap_or_else(|| panic!("{} needs a value", args[i]));
        match args[i].as_str() {
            "--out" => o.out = Some(PathBuf::from(value())),
            "--images" => o.images = value().parse().expect("--images N"),
            "--batches" => o.batches = value().split(',').map(|b| b.parse().expect("batch size")).collect(),
            "--batch" => o.batch.extend(parse_map(&value())),
            "--threads" => tch::set_num_threads(value().parse().expect("--threads N")),
            "--sweep-images" => o.sweep_images.extend(parse_map(&value())),
            "--sweep" => o.sweep = value().split(',').map(|m| m.parse().expect("model name")).collect(),
            "--dfm" => o.dfm = value().split(',').map(|m| m.parse().expect("model name")).collect(),
            "--cells" => o.cells.extend(parse_map(&value())),
            "--steps" => o.steps.extend(parse_map(&value())),
            "--large" => o.large = parse_map(&value()),
            // `--models none`: only the `--large` measures.
            "--models" => {
                o.models = value().split(',').filter(|m| *m != "none").map(|m| m.parse().expect("model name")).collect()
            }
            "--device" => {
                o.devices = vec![freqsweep_worker::device::parse_device(&value()).expect("--device cpu|cuda")]
            }
            // `cargo bench` passes `--bench`; anything else unknown is ignored the same way.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Seconds for `f`, after the device has finished its work.
fn timed(device: Device, f: impl FnOnce()) -> f64 {
    sync(device);
    let t = Instant::now();
    f();
    sync(device);
    t.elapsed().as_secs_f64()
}

fn key(arch: Arch) -> String {
    format!("{arch:?}").to_ascii_lowercase()
}

/// `count` canonical cells spread evenly over the 514 of a 32 × 32 map.
fn spread_cells(count: usize) -> Vec<Cell> {
    let all = Shape2::new(32, 32).heatmap_cells();
    let count = count.clamp(1, all.len());
    (0..count).map(|i| all[i * all.len() / count]).collect()
}

/// A heatmap of `side × side` images over cells spread across the 63 × 63 low-frequency window,
/// against the pure forward pass of the same model at the same batch: what the heatmap engine
/// costs beyond the model at a large size (the basis images are built per chunk, `[cells, H, W]`).
fn bench_large(arch: Arch, side: usize, device: Device, o: &Options, out: &mut Map<String, Value>) {
    use freqsweep_common::bands::BandRadii;
    use freqsweep_common::heatmap::CellSelection;
    let name = key(arch);
    let prefix = format!("{}.{name}.large{side}", device_key(device));
    let shape = Shape2::new(side, side);
    let images_n = 64;
    let layout = BandRadii::default().layout(shape).expect("a large enough side");
    let syn = SynConfig { train: 0, test: images_n, size: side, layout, ..SynConfig::new(Band::new(4).unwrap(), 0) };
    let data = syn::generate(&syn, Split::Test);
    let images = freqsweep_worker::eval::images_tensor(&data, device);
    let window = CellSelection::LowCrop(63).cells(shape);
    // A sweep's default chunk: 64 cells (`[heatmap] chunk_cells`), so the clean pass per block
    // of images weighs what it does in a run.
    let count = o.cells.get(&format!("{name}{side}")).copied().unwrap_or(64).clamp(1, window.len());
    let cells: Vec<Cell> = (0..count).map(|i| window[i * window.len() / count]).collect();
    let batch = o.batch.get(&format!("{name}{side}")).copied().unwrap_or(64);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = build(&vs, &ModelConfig::new(arch, 4));
    let perturbed = cells.len() * images_n;
    let config = HeatmapConfig { eps: EPS, cells: cells.clone(), layers: vec![], seed: 0, batch };
    let warm = HeatmapConfig { cells: cells[..1].to_vec(), ..config.clone() };
    heatmap::compute(model.as_ref(), &images, &data.labels, &warm, &mut |_, _| {}).unwrap();
    let s = timed(device, || {
        heatmap::compute(model.as_ref(), &images, &data.labels, &config, &mut |_, _| {}).unwrap();
    });
    let heatmap_rate = perturbed as f64 / s;
    let b = batch as i64;
    let chunk = images.repeat([(b + images_n as i64 - 1) / images_n as i64, 1, 1, 1]).narrow(0, 0, b);
    let passes = perturbed.div_ceil(batch).max(1);
    let s = tch::no_grad(|| {
        let _ = model.logits(&chunk, false).expect("a built-in model");
        timed(device, || {
            for _ in 0..passes {
                let _ = model.logits(&chunk, false).expect("a built-in model");
            }
        })
    });
    let forward_rate = (passes * batch) as f64 / s;
    for (measure, value) in [
        ("cells", cells.len() as f64),
        ("batch", batch as f64),
        ("heatmap", heatmap_rate),
        ("forward", forward_rate),
        ("ratio", heatmap_rate / forward_rate),
    ] {
        eprintln!("engine bench: {prefix}.{measure} = {value:.3}");
        out.insert(format!("{prefix}.{measure}"), json!(value));
    }
}

/// Measurements of one model on one device, as flat `"<device>.<model>.<measure>": value` entries.
fn bench_model(arch: Arch, device: Device, o: &Options, out: &mut Map<String, Value>) {
    let name = key(arch);
    let prefix = format!("{}.{name}", device_key(device));
    let cells = spread_cells(o.cells.get(&name).copied().unwrap_or(16));
    let steps = o.steps.get(&name).copied().unwrap_or(10);
    let syn = SynConfig { train: 0, test: o.images, ..SynConfig::new(Band::new(4).unwrap(), 0) };
    let data = syn::generate(&syn, Split::Test);
    let images = freqsweep_worker::eval::images_tensor(&data, device);
    let n = data.len();
    let mut put = |measure: &str, value: f64| {
        eprintln!("engine bench: {prefix}.{measure} = {value:.2}");
        out.insert(format!("{prefix}.{measure}"), json!(value));
    };
    put("canonical_cells", cells.len() as f64);
    put("images", n as f64);

    tch::manual_seed(0);
    let vs = nn::VarStore::new(device);
    let model = build(&vs, &ModelConfig::new(arch, 4));

    let perturbed = cells.len() * n;
    let forward_rate_of = |model: &dyn freqsweep_worker::models::Classifier, batch: usize, count: usize| -> f64 {
        // A batch larger than the image set repeats the images, as the engine's cell × image copies do.
        let b = batch as i64;
        let chunk = images.repeat([(b + n as i64 - 1) / n as i64, 1, 1, 1]).narrow(0, 0, b);
        let passes = count.div_ceil(b as usize).max(1);
        let s = tch::no_grad(|| {
            let _ = model.logits(&chunk, false).expect("a built-in model"); // warm-up (oneDNN primitives, allocator)
            timed(device, || {
                for _ in 0..passes {
                    let _ = model.logits(&chunk, false).expect("a built-in model");
                }
            })
        });
        (passes as f64 * b as f64) / s
    };
    let forward_rate = |batch: usize, count: usize| forward_rate_of(model.as_ref(), batch, count);
    let heatmap_rate_of = |model: &dyn freqsweep_worker::models::Classifier, batch: usize| -> f64 {
        let config = HeatmapConfig { eps: EPS, cells: cells.clone(), layers: vec![], seed: 0, batch };
        let warm = HeatmapConfig { cells: cells[..1].to_vec(), ..config.clone() };
        heatmap::compute(model, &images, &data.labels, &warm, &mut |_, _| {}).unwrap();
        let s = timed(device, || {
            heatmap::compute(model, &images, &data.labels, &config, &mut |_, _| {}).unwrap();
        });
        perturbed as f64 / s
    };
    let heatmap_rate = |batch: usize| heatmap_rate_of(model.as_ref(), batch);
    // Main figures: the heatmap and, over as many images, the pure forward pass (the ceiling).
    let batch = o.batch.get(&name).copied().unwrap_or(256);
    put("batch", batch as f64);
    put("heatmap", heatmap_rate(batch));
    put("forward", forward_rate(batch, perturbed));
    // DFM loss maps (all classes from one pass per removed cell) over as many cells and images.
    if o.dfm.contains(&arch) {
        let config = freqsweep_worker::dfm::DfmConfig { patch: 1, units: cells.clone(), batch };
        let warm = freqsweep_worker::dfm::DfmConfig { units: cells[..1].to_vec(), ..config.clone() };
        freqsweep_worker::dfm::compute(model.as_ref(), &images, &data.labels, &warm, &mut |_, _| {}).unwrap();
        let s = timed(device, || {
            freqsweep_worker::dfm::compute(model.as_ref(), &images, &data.labels, &config, &mut |_, _| {}).unwrap();
        });
        put("dfm", perturbed as f64 / s);
    }
    // Sweeps: the forward pass by batch size; the heatmap too for the models asked.
    let sweep_images = o.sweep_images.get(&name).copied().unwrap_or(512);
    for &b in &o.batches {
        put(&format!("forward.{b}"), forward_rate(b, sweep_images));
        if o.sweep.contains(&arch) {
            put(&format!("heatmap.{b}"), heatmap_rate(b));
        }
    }
    // The same model (same seed, same weights) in other numerics: fp32 channels-last, and bf16
    // channels-last where the device has bf16 instructions (elsewhere it would be emulated).
    let mut variants = vec![("fp32_cl", Numerics { kind: Kind::Float, channels_last: true })];
    if freqsweep_worker::device::has_bf16(device) {
        variants.push(("bf16_cl", Numerics { kind: Kind::BFloat16, channels_last: true }));
    }
    put("bf16_native", f64::from(u8::from(freqsweep_worker::device::has_bf16(device))));
    for &(label, numerics) in &variants {
        tch::manual_seed(0);
        let mut other_vs = nn::VarStore::new(device);
        let mut other = build(&other_vs, &ModelConfig::new(arch, 4));
        convert_vars(&mut other_vs, numerics);
        other.set_numerics(numerics);
        put(&format!("heatmap.{label}"), heatmap_rate_of(other.as_ref(), batch));
        put(&format!("forward.{label}"), forward_rate_of(other.as_ref(), batch, perturbed));
    }
    put("train_loop", train_loop(arch, device, &images, &data.labels, steps));
    // `train::run` in fp32 NCHW and in each variant above (bf16: bf16-mixed).
    put("train_run", train_run(arch, device, steps, Precision::Fp32, MemoryFormat::Contiguous));
    for &(label, numerics) in &variants {
        let format = if numerics.channels_last { MemoryFormat::ChannelsLast } else { MemoryFormat::Contiguous };
        put(&format!("train_run.{label}"), train_run(arch, device, steps, numerics.precision(), format));
    }
    put("train_steps", steps as f64);
}

fn device_key(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda{i}"),
        _ => "cpu".into(),
    }
}

/// The step loop of `train::run`, bare: shuffled batches of 64 from the images, Adam.
fn train_loop(arch: Arch, device: Device, images: &Tensor, labels: &[i64], steps: usize) -> f64 {
    tch::manual_seed(1);
    let vs = nn::VarStore::new(device);
    let model = build(&vs, &ModelConfig::new(arch, 4));
    let mut opt = OptimizerState::new(&vs, Optimizer::adam());
    let labels = Tensor::from_slice(labels).to_device(device);
    let n = images.size()[0];
    let mut loss_sum = Tensor::zeros([], (Kind::Float, device));
    let mut step = |i: usize| {
        let index = Tensor::randperm(n, (Kind::Int64, Device::Cpu)).narrow(0, 0, TRAIN_BATCH.min(n)).to_device(device);
        let x = images.index_select(0, &index);
        let y = labels.index_select(0, &index);
        let loss = model.logits(&x, true).expect("a built-in model").cross_entropy_for_logits(&y);
        opt.zero_grad();
        loss.backward();
        opt.step(LR);
        loss_sum += loss.detach();
        let _ = i;
    };
    step(0);
    step(1);
    let s = timed(device, || (0..steps).for_each(&mut step));
    let _ = f64::try_from(&loss_sum);
    steps as f64 / s
}

/// `train::run` itself for one epoch of `steps` batches of 64 (plus its evaluation before and
/// after the epoch on a 64-image `B1234` test set, and its checkpoint), end to end.
fn train_run(arch: Arch, device: Device, steps: usize, precision: Precision, memory_format: MemoryFormat) -> f64 {
    let syn = SynConfig { train: steps * TRAIN_BATCH as usize, test: 64, ..SynConfig::new(Band::new(4).unwrap(), 3) };
    let train_data = syn::generate(&syn, Split::Train);
    let test_data = syn::generate(&syn, Split::Test);
    let task = TrainTask {
        dataset: DatasetSource::Syn(syn),
        train: TrainConfig {
            model: key(arch),
            classes: 4,
            optimizer: Optimizer::adam(),
            lr: LR,
            schedule: LrSchedule::Constant,
            batch_size: TRAIN_BATCH as usize,
            epochs: 1,
            seed: 5,
            augment: Augment::default(),
            test_sets: vec!["B1234".parse().unwrap()],
            band_layout: BandLayout::default(),
            clip_filtered: false,
            eval_every_steps: 0,
            eval_steps_epochs: 0,
            test_limit: 0,
            precision,
            memory_format,
            keep_epochs: Vec::new(),
        },
    };
    let dir = std::env::temp_dir().join(format!("freqsweep-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let checkpoint = dir.join(format!("{}.ot", key(arch)));
    // Warm-up run on two batches, then the measured run from scratch.
    let warm_data = train_data.subset(&(0..2 * TRAIN_BATCH as usize).collect::<Vec<_>>());
    train::run(&task, &warm_data, &test_data, device, &dir.join("warm.ot"), &mut train::Quiet).unwrap();
    let s = timed(device, || {
        train::run(&task, &train_data, &test_data, device, &checkpoint, &mut train::Quiet).unwrap();
    });
    std::fs::remove_dir_all(&dir).ok();
    steps as f64 / s
}

fn main() {
    let o = options();
    if let Some(out) = &o.out {
        std::fs::create_dir_all(out).unwrap();
        let syn = SynConfig { train: 0, test: o.images, ..SynConfig::new(Band::new(4).unwrap(), 0) };
        syn::generate(&syn, Split::Test).write_npy(out, "syn4_test").unwrap();
    }
    let mut out = Map::new();
    out.insert("threads".into(), json!(tch::get_num_threads()));
    out.insert("interop_threads".into(), json!(tch::get_num_interop_threads()));
    out.insert("cuda".into(), json!(tch::Cuda::is_available()));
    for &device in &o.devices {
        for &arch in &o.models {
            bench_model(arch, device, &o, &mut out);
        }
        for (name, &side) in &o.large {
            bench_large(name.parse().expect("model name"), side, device, &o, &mut out);
        }
    }
    let out = Value::Object(out);
    println!("{out}");
}
