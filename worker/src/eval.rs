//! Evaluation on band-filtered test sets (SCIENCE.md §4, §6): each variant (`B1234`, `B124`, …) is
//! filtered once with `freqsweep_common::bands::BandFilter`, moved to the device once, and then
//! classified in batches without gradient tracking; the result is a confusion matrix, from which
//! accuracy and per-class F1 follow (`freqsweep_common::metrics`).

use crate::models::{Classifier, ForwardError};
use freqsweep_common::bands::{BandFilter, BandLayout, BandSet};
use freqsweep_common::dataset::Dataset;
use freqsweep_common::metrics::{ConfusionMatrix, MetricsError};
use freqsweep_common::spectrum::Shape2;
use tch::{Device, Kind, Tensor};

/// One test set variant, resident on the device.
pub struct TestSet {
    /// The variant's name, e.g. `B124`.
    pub name: String,
    /// `float32 [N, C, H, W]`.
    pub images: Tensor,
    pub labels: Vec<i64>,
}

/// Images of a dataset as a device tensor `[N, C, H, W]`.
pub fn images_tensor(data: &Dataset, device: Device) -> Tensor {
    let [n, c, h, w] = data.dims.map(|d| d as i64);
    Tensor::from_slice(&data.images).view([n, c, h, w]).to_device(device)
}

/// Build the named band-filtered variants of `data` (`clip` clamps filtered images to `[0, 1]`).
pub fn band_filtered_test_sets(
    data: &Dataset,
    variants: &[BandSet],
    layout: &BandLayout,
    clip: bool,
    device: Device,
) -> Vec<TestSet> {
    let shape = Shape2::new(data.dims[2], data.dims[3]);
    variants
        .iter()
        .map(|&set| {
            let mut filtered = data.clone();
            // Keeping every band is the identity up to float rounding; skip the work.
            if !set.is_all() || clip {
                BandFilter::new(shape, layout, set, clip).apply(&mut filtered.images);
            }
            TestSet { name: set.to_string(), images: images_tensor(&filtered, device), labels: data.labels.clone() }
        })
        .collect()
}

/// Why an evaluation failed: the model's forward pass (a given model raised), or its predictions
/// do not fit the classes.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Forward(#[from] ForwardError),
    // Not `source`: thiserror would chain it, and `{:#}` would print the cause twice.
    #[error("{cause} (the model has {classes} classes)")]
    Metrics { cause: MetricsError, classes: usize },
}

/// Predicted classes (argmax of the logits) for every image, `batch` images per forward pass.
pub fn predict(model: &dyn Classifier, images: &Tensor, batch: i64) -> Result<Vec<i64>, ForwardError> {
    let n = images.size()[0];
    let mut out = Vec::with_capacity(n as usize);
    tch::no_grad(|| {
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let logits = model.logits(&images.narrow(0, start, len), false)?;
            if logits.dim() != 2 || logits.size()[0] != len {
                return Err(ForwardError(format!(
                    "forward returned shape {:?} for {len} images; expected logits [N, classes]",
                    logits.size()
                )));
            }
            let predicted = logits.argmax(-1, false).to_kind(Kind::Int64).to_device(Device::Cpu);
            out.extend(Vec::<i64>::try_from(&predicted).map_err(|e| ForwardError(e.to_string()))?);
            start += len;
        }
        Ok(())
    })?;
    Ok(out)
}

/// The confusion matrix of `model` on one test set.
pub fn evaluate(
    model: &dyn Classifier,
    set: &TestSet,
    classes: usize,
    batch: i64,
) -> Result<ConfusionMatrix, EvalError> {
    let predicted = predict(model, &set.images, batch)?;
    ConfusionMatrix::from_predictions(classes, &set.labels, &predicted)
        .map_err(|cause| EvalError::Metrics { cause, classes })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{build, Arch, ModelConfig};
    use freqsweep_common::bands::Band;
    use freqsweep_common::syn::{self, Split, SynConfig};
    use tch::nn;

    fn tiny_syn() -> Dataset {
        let config = SynConfig { train: 0, test: 24, ..SynConfig::new(Band::new(4).unwrap(), 5) };
        syn::generate(&config, Split::Test)
    }

    #[test]
    fn a_model_that_always_says_two_gets_column_two() {
        let data = tiny_syn();
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs, &ModelConfig::new(Arch::Tiny, 4));
        tch::no_grad(|| {
            let vars = vs.variables();
            let _ = vars["fc.weight"].shallow_clone().zero_();
            vars["fc.bias"].shallow_clone().copy_(&Tensor::from_slice(&[0.0f32, 0.0, 1.0, 0.0]));
        });
        let sets = band_filtered_test_sets(&data, &[BandSet::ALL], &BandLayout::default(), false, Device::Cpu);
        // Batch 5 does not divide 24: the tail batch must be handled.
        let m = evaluate(model.as_ref(), &sets[0], 4, 5).unwrap();
        for class in 0..4 {
            assert_eq!(m.get(class, 2), 6, "every image of class {class} predicted as 2");
        }
        assert!((m.accuracy() - 0.25).abs() < 1e-12);
        assert_eq!(m.per_class()[2].recall, 1.0);
    }

    #[test]
    fn variants_are_named_and_filtered() {
        let data = tiny_syn();
        let variants: Vec<BandSet> = ["B1234", "B124", "B4"].iter().map(|s| s.parse().unwrap()).collect();
        let sets = band_filtered_test_sets(&data, &variants, &BandLayout::default(), false, Device::Cpu);
        assert_eq!(sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["B1234", "B124", "B4"]);
        let original = images_tensor(&data, Device::Cpu);
        assert!(sets[0].images.allclose(&original, 0.0, 0.0, false), "B1234 is the data itself");
        // Syn_4's classes 0-2 carry band 3, so removing it must change the images; labels stay.
        let diff = f64::try_from((&sets[1].images - &original).abs().max()).unwrap();
        assert!(diff > 1e-3, "B124 changed nothing");
        assert_eq!(sets[2].labels, data.labels);
    }
}
