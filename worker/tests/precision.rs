//! bf16 against fp32 (issue "Past the fp32 ceiling"): a tiny CNN trained on Syn_4, its Fourier
//! heatmap computed in fp32 (NCHW), fp32 channels-last and bf16 channels-last. Each map agrees
//! with the fp32 one within sampling noise: per-cell binomial z-scores (pooled rate, n images per
//! cell) have a mean below 1.5 and the maps correlate above 0.9, the tests' usual bar for two
//! computations of one map. fp32 channels-last computes the same products in another order and
//! lands far inside it. The bf16 path runs here whether or not the CPU has bf16 instructions
//! (libtorch emulates them; only the speed differs), so the comparison is exercised everywhere.

use freqsweep_common::bands::Band;
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::syn::{self, Split, SynConfig};
use freqsweep_common::task::MemoryFormat;
use freqsweep_common::task::Precision;
use freqsweep_worker::checkpoint;
use freqsweep_worker::heatmap::{self, HeatmapConfig, HeatmapCounts};
use freqsweep_worker::models::{Numerics, Requested};
use freqsweep_worker::train::{self, Quiet};
use tch::{Device, Kind};

mod common;

/// Error rates per cell and the number of images behind each.
fn rates(counts: &HeatmapCounts) -> (Vec<f64>, f64) {
    let n = counts.images as f64;
    (counts.error.iter().map(|(_, s)| s.sum / n).collect(), n)
}

/// Mean |z| of the per-cell differences (pooled binomial variance; cells where both rates are 0
/// or 1 carry no information and are skipped) and the Pearson correlation of the two maps.
fn agreement(a: &HeatmapCounts, b: &HeatmapCounts) -> (f64, f64) {
    let ((ra, n), (rb, _)) = (rates(a), rates(b));
    let zs: Vec<f64> = ra
        .iter()
        .zip(&rb)
        .filter_map(|(&p, &q)| {
            let pooled = (p + q) / 2.0;
            let var = pooled * (1.0 - pooled) * 2.0 / n;
            (var > 0.0).then(|| (p - q).abs() / var.sqrt())
        })
        .collect();
    let mean_z = zs.iter().sum::<f64>() / zs.len().max(1) as f64;
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (ma, mb) = (mean(&ra), mean(&rb));
    let cov: f64 = ra.iter().zip(&rb).map(|(p, q)| (p - ma) * (q - mb)).sum();
    let va: f64 = ra.iter().map(|p| (p - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|q| (q - mb).powi(2)).sum();
    (mean_z, cov / (va * vb).sqrt())
}

#[test]
fn bf16_and_channels_last_maps_agree_with_fp32_within_sampling_noise() {
    let syn = SynConfig { train: 512, test: 48, ..SynConfig::new(Band::new(4).unwrap(), 0) };
    let (train_set, test_set) = (syn::generate(&syn, Split::Train), syn::generate(&syn, Split::Test));
    let task = common::tiny_task(syn.clone(), 0, Precision::Fp32);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.ot");
    train::run(&task, &train_set, &test_set, Device::Cpu, &path, &mut Quiet).unwrap();

    let images = freqsweep_worker::eval::images_tensor(&test_set, Device::Cpu);
    let shape = Shape2::new(32, 32);
    let config =
        HeatmapConfig { eps: 4.0, cells: shape.heatmap_cells(), layers: vec!["conv2".into()], seed: 0, batch: 512 };
    let map = |kind: Kind, format: MemoryFormat, expected: Numerics| {
        let loaded = checkpoint::load_classifier(&path, Device::Cpu, 32, 32, Requested { kind, format }).unwrap();
        assert_eq!(loaded.numerics, expected, "{:?}", loaded.fallback);
        heatmap::compute(loaded.model.as_ref(), &images, &test_set.labels, &config, &mut |_, _| {}).unwrap()
    };
    let fp32 = map(Kind::Float, MemoryFormat::Contiguous, Numerics::FP32);
    // `Auto` is channels-last for this conv net.
    let fp32_cl = map(Kind::Float, MemoryFormat::Auto, Numerics { kind: Kind::Float, channels_last: true });
    let bf16_cl = map(Kind::BFloat16, MemoryFormat::Auto, Numerics { kind: Kind::BFloat16, channels_last: true });
    let (mean_rate, _) = rates(&fp32);
    let mean_rate = mean_rate.iter().sum::<f64>() / mean_rate.len() as f64;
    assert!(mean_rate > 0.05 && mean_rate < 0.95, "a map with structure to compare: mean error {mean_rate}");
    for (name, other) in [("fp32 channels-last", &fp32_cl), ("bf16 channels-last", &bf16_cl)] {
        let (mean_z, corr) = agreement(&fp32, other);
        eprintln!(
            "{name} vs fp32: mean z {mean_z:.3}, correlation {corr:.4}; clean error {} vs {}",
            other.clean.sum, fp32.clean.sum
        );
        assert!(mean_z < 1.5 && corr > 0.9, "{name}: mean z {mean_z}, correlation {corr}");
        // The layer map (cosine distances, summed in fp64) agrees as closely.
        let (la, lb) = (&fp32.layers["conv2"], &other.layers["conv2"]);
        let worst =
            la.iter().zip(lb).map(|((_, a), (_, b))| (a.sum - b.sum).abs() / a.sum.max(1e-9)).fold(0.0, f64::max);
        assert!(worst < 0.1, "{name}: conv2 distances differ by up to {:.1} %", worst * 100.0);
    }
    // bf16 really ran: its counts are not fp32's, bit for bit.
    assert_ne!(bf16_cl.error, fp32.error, "the bf16 map is the fp32 one: bf16 did not run");
    // fp32 channels-last reorders sums only: the counts can differ by a few images at most.
    let moved: f64 = fp32.error.iter().zip(&fp32_cl.error).map(|((_, a), (_, b))| (a.sum - b.sum).abs()).sum();
    assert!(moved <= 0.01 * fp32.error.len() as f64 * fp32.images as f64, "{moved} images moved in fp32 channels-last");

    // The TorchScript export in bf16: its parameters are converted and the input cast; a module
    // whose graph cannot run that way (fp32 constants meeting bf16 tensors; tch offers no autocast
    // on the CPU) falls back to fp32 and says why. Either way the map must be right.
    let mut vs = tch::nn::VarStore::new(Device::Cpu);
    let stored = checkpoint::load(&path).unwrap();
    let model = freqsweep_worker::models::build(&vs, &stored.meta.model);
    stored.restore_model(&mut vs, &path).unwrap();
    let script = dir.path().join("tiny.pt");
    let example = tch::Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    freqsweep_worker::models::export_torchscript(&mut vs, model.as_ref(), &example, &script).unwrap();
    let asked = Numerics { kind: Kind::BFloat16, channels_last: true };
    let request = Requested { kind: Kind::BFloat16, format: MemoryFormat::Auto };
    let loaded = checkpoint::load_classifier(&script, Device::Cpu, 32, 32, request).unwrap();
    let config = HeatmapConfig { layers: vec![], ..config };
    let from_script =
        heatmap::compute(loaded.model.as_ref(), &images, &test_set.labels, &config, &mut |_, _| {}).unwrap();
    match &loaded.fallback {
        Some(why) => {
            eprintln!("TorchScript in bf16 fell back to fp32: {why}");
            assert_eq!(loaded.numerics, Numerics::FP32);
            assert_eq!(from_script.error, fp32.error, "the fallback computes the fp32 map");
        }
        None => {
            assert_eq!(loaded.numerics, asked);
            let (mean_z, corr) = agreement(&fp32, &from_script);
            eprintln!("TorchScript bf16 vs fp32: mean z {mean_z:.3}, correlation {corr:.4}");
            assert!(mean_z < 1.5 && corr > 0.9, "TorchScript bf16: mean z {mean_z}, correlation {corr}");
            assert_ne!(from_script.error, fp32.error, "bf16 did not run");
        }
    }
}
