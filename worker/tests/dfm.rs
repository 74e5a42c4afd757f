//! Dominant-frequency loss maps (SCIENCE.md §7) against known answers: a model rigged to decide
//! class 0 from one frequency puts that frequency on top of its class-0 map; chunks merge into
//! exactly the whole map; one pass for all classes equals a per-class computation written
//! independently (the public code's way: per class, per unit, the FFT filter on the CPU).

use freqsweep_common::bands::{Band, BandFilter};
use freqsweep_common::dfm::{self, DfmAccumulator};
use freqsweep_common::spectrum::{Cell, Shape2};
use freqsweep_common::syn::{self, Split, SynConfig};
use freqsweep_worker::dfm::{compute, shortcut_confusions, DfmConfig};
use freqsweep_worker::models::{build, Arch, Classifier, ModelConfig, Numerics};
use tch::{nn, Device, Kind, Tensor};

/// Decides class 0 from the energy of one frequency pair in channel 0: logits
/// `[gain·(energy − threshold), 0, −1, −1]`, so class 0 when the frequency is present, else 1.
struct OneFrequency {
    cos: Tensor,
    sin: Tensor,
    threshold: f64,
}

impl OneFrequency {
    fn new(shape: Shape2, cell: Cell, threshold: f64) -> Self {
        let wave = |f: fn(f64) -> f64| {
            let v: Vec<f32> = (0..shape.h)
                .flat_map(|r| (0..shape.w).map(move |c| (r, c)))
                .map(|(r, c)| {
                    let t = 2.0
                        * std::f64::consts::PI
                        * (f64::from(cell.u) * r as f64 / shape.h as f64
                            + f64::from(cell.v) * c as f64 / shape.w as f64);
                    f(t) as f32
                })
                .collect();
            Tensor::from_slice(&v)
        };
        OneFrequency { cos: wave(f64::cos), sin: wave(f64::sin), threshold }
    }

    fn energy(&self, x: &Tensor) -> Tensor {
        let plane = x.select(1, 0).flatten(1, -1);
        plane.matmul(&self.cos).square() + plane.matmul(&self.sin).square()
    }
}

impl Classifier for OneFrequency {
    // A fixed computation: numerics do not apply.
    fn set_numerics(&mut self, _: Numerics) {}

    fn forward_named(
        &self,
        x: &Tensor,
        _: bool,
        sink: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor, freqsweep_worker::models::ForwardError> {
        let e = self.energy(x);
        let n = x.size()[0];
        let class0 = ((e - self.threshold) * 50.0).unsqueeze(1);
        let rest = Tensor::from_slice(&[0f32, -1.0, -1.0]).view([1, 3]).repeat([n, 1]);
        let logits = Tensor::cat(&[class0, rest], 1);
        sink("fc", &logits);
        Ok(logits)
    }

    fn layer_names(&self) -> Vec<String> {
        vec!["fc".into()]
    }
}

fn syn4(test: usize) -> freqsweep_common::dataset::Dataset {
    let syn = SynConfig { train: 0, test, ..SynConfig::new(Band::new(4).unwrap(), 0) };
    syn::generate(&syn, Split::Test)
}

#[test]
fn a_model_rigged_on_one_frequency_puts_it_on_top_of_its_class_0_map() {
    let data = syn4(64);
    let shape = Shape2::new(32, 32);
    let images = freqsweep_worker::eval::images_tensor(&data, Device::Cpu);
    // (3, 3) is a special-pattern cell: present in class 0 only (SCIENCE.md §5).
    let special = shape.canonical(Cell::new(3, 3));
    let probe = OneFrequency::new(shape, special, 0.0);
    // The threshold halfway between the classes' energies at (3, 3) on these images.
    let e = Vec::<f32>::try_from(probe.energy(&images)).unwrap();
    let (mut in0, mut out0) = (f32::INFINITY, 0f32);
    for (&v, &l) in e.iter().zip(&data.labels) {
        if l == 0 {
            in0 = in0.min(v)
        } else {
            out0 = out0.max(v)
        }
    }
    assert!(in0 > 10.0 * out0, "class 0 carries the frequency: min {in0} vs others' max {out0}");
    let model = OneFrequency::new(shape, special, f64::from(in0 + out0) / 2.0);

    let units = dfm::units(shape, 1).unwrap();
    let config = DfmConfig { patch: 1, units: units.clone(), batch: 512 };
    let counts = compute(&model, &images, &data.labels, &config, &mut |_, _| {}).unwrap();
    assert_eq!(counts.clean[0].correct, counts.clean[0].images, "the rigged model gets class 0 right");
    let mut acc = DfmAccumulator::new(shape, 1, 4).unwrap();
    acc.write_clean(&counts.clean).unwrap();
    for (anchor, stats) in &counts.units {
        acc.write(*anchor, stats).unwrap();
    }
    let loss = acc.loss_map(0);
    let top =
        dfm::top_units(&acc.units().iter().map(|&u| loss[shape.centred_index(u)]).collect::<Vec<_>>(), 0.1).unwrap();
    assert_eq!(acc.units()[top[0]], special, "the relied-on frequency tops the class-0 loss map");
    let mask = acc.dfm(0, 1.0).unwrap();
    assert_eq!(mask[shape.centred_index(Cell::new(3, 3))], 1);
    assert_eq!(mask[shape.centred_index(Cell::new(-3, -3))], 1, "with its conjugate");
    // Removing it flips every class-0 image; removing another cell flips none.
    let drop = acc.accuracy_drop_map(0);
    assert_eq!(drop[shape.centred_index(Cell::new(3, 3))], 1.0);
    assert_eq!(drop[shape.centred_index(Cell::new(2, 5))], 0.0);
    // Class 1 does not depend on (3, 3): its images stay right (it has no such energy to lose).
    assert_eq!(acc.accuracy_drop_map(1)[shape.centred_index(Cell::new(3, 3))], 0.0);

    // The shortcut degree: the test set filtered to class 0's top-1 % DFM keeps (3, 3), so every
    // class-0 image is still class 0 (TPR 1) and no other image becomes class 0 (FPR 0).
    let entries = shortcut_confusions(&model, &data, &acc, &[0, 1], &[1.0], false, Device::Cpu, &mut |_| {}).unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(dfm::shortcut_degree(&entries[0].confusion, 0), (1.0, 0.0));
    let total: u64 = entries[0].confusion.iter().flatten().sum();
    assert_eq!(total, data.len() as u64, "the whole test set");
    // Filtered to class 1's DFM, class-1 images (which carry no (3, 3)) stay class 1.
    assert_eq!(dfm::shortcut_degree(&entries[1].confusion, 1).0, 1.0);
}

#[test]
fn chunks_merge_to_the_whole_map_and_one_pass_equals_per_class_passes() {
    let data = syn4(24);
    let shape = Shape2::new(32, 32);
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = build(&vs, &ModelConfig::new(Arch::Tiny, 4));
    let images = freqsweep_worker::eval::images_tensor(&data, Device::Cpu);
    for patch in [1usize, 4] {
        let units = dfm::units(shape, patch).unwrap();
        let some: Vec<Cell> = units.iter().copied().step_by(units.len() / 12).collect();
        // Whole (one chunk, a batch that fits several units per pass) vs three chunks with a
        // small batch (blocks of images, one unit per pass).
        let whole = compute(
            model.as_ref(),
            &images,
            &data.labels,
            &DfmConfig { patch, units: some.clone(), batch: 96 },
            &mut |_, _| {},
        )
        .unwrap();
        let mut merged = DfmAccumulator::new(shape, patch, 4).unwrap();
        for part in some.chunks(5) {
            let chunk = compute(
                model.as_ref(),
                &images,
                &data.labels,
                &DfmConfig { patch, units: part.to_vec(), batch: 7 },
                &mut |_, _| {},
            )
            .unwrap();
            merged.write_clean(&chunk.clean).unwrap();
            for (anchor, stats) in &chunk.units {
                let expected = &whole.units.iter().find(|(a, _)| a == anchor).unwrap().1;
                for (got, want) in stats.iter().zip(expected) {
                    assert!(
                        (got.loss - want.loss).abs() <= 1e-4 * want.loss.abs().max(1.0),
                        "patch {patch} {anchor:?}"
                    );
                    assert_eq!(got.flipped, want.flipped, "patch {patch} {anchor:?}");
                }
                merged.write(*anchor, stats).unwrap();
            }
        }
        assert!(merged.missing().len() == units.len() - some.len());

        // Per class, independently: the class's images only, each unit removed with the FFT
        // filter on the CPU, the model run, the cross-entropy averaged.
        for class in 0..4i64 {
            let index: Vec<usize> = (0..data.len()).filter(|&i| data.labels[i] == class).collect();
            let subset = data.subset(&index);
            for (anchor, stats) in &whole.units {
                let mut mask = vec![1f32; shape.len()];
                for c in dfm::removed_cells(shape, patch, *anchor) {
                    mask[shape.centred_index(c)] = 0.0;
                }
                let mut planes = subset.images.clone();
                BandFilter::from_centred_mask(shape, &mask, false).apply(&mut planes);
                let x = Tensor::from_slice(&planes).view([index.len() as i64, 3, 32, 32]);
                let y = Tensor::from_slice(&subset.labels);
                let logits = tch::no_grad(|| model.logits(&x, false)).unwrap();
                let mean = f64::try_from(logits.cross_entropy_for_logits(&y).to_kind(Kind::Double)).unwrap();
                let ours = stats[class as usize].loss / index.len() as f64;
                assert!((ours - mean).abs() < 1e-4, "patch {patch} unit {anchor:?} class {class}: {ours} vs {mean}");
            }
        }
    }
}
