//! Network definitions, each a function of a variable path (`p / "conv1"` names the weights so
//! checkpoints have readable keys), in the style of tch-rs's own vision models.

use tch::nn::{self, ModuleT};

/// A deliberately tiny CNN for `[N, 3, 32, 32]` inputs: two 3×3 conv + ReLU + 2×2 max-pool stages,
/// then a linear classifier. Used by smoke tests and as a fast model in test sweeps.
pub fn tiny_cnn(p: &nn::Path, classes: i64) -> impl ModuleT {
    let conv =
        |name: &str, cin, cout| nn::conv2d(p / name, cin, cout, 3, nn::ConvConfig { padding: 1, ..Default::default() });
    nn::seq_t()
        .add(conv("conv1", 3, 8))
        .add_fn(|x| x.relu().max_pool2d_default(2))
        .add(conv("conv2", 8, 16))
        .add_fn(|x| x.relu().max_pool2d_default(2).flatten(1, -1))
        .add(nn::linear(p / "fc", 16 * 8 * 8, classes, Default::default()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::OptimizerConfig, Device, Kind, Tensor};

    /// The smoke test of the foundation: libtorch really runs here. A tiny conv net takes SGD steps
    /// on a fixed batch and its loss goes down; `fft2` through libtorch matches the DFT definition.
    #[test]
    fn libtorch_trains_a_tiny_cnn_and_computes_fft2() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = tiny_cnn(&vs.root(), 4);
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let x = Tensor::rand([32, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::arange(32, (Kind::Int64, Device::Cpu)).remainder(4);
        let loss_at = |net: &dyn ModuleT| f64::try_from(net.forward_t(&x, false).cross_entropy_for_logits(&y)).unwrap();
        let initial = loss_at(&net);
        for _ in 0..20 {
            let loss = net.forward_t(&x, true).cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
        }
        let trained = loss_at(&net);
        assert!(trained < 0.5 * initial, "loss did not decrease: {initial} -> {trained}");

        // fft2 of a 2-D cosine puts energy H·W/2 at (u, v) and its conjugate only.
        let (h, w, u, v) = (8i64, 8i64, 1i64, 2i64);
        let m = Tensor::arange(h, (Kind::Double, Device::Cpu)).view([h, 1]);
        let n = Tensor::arange(w, (Kind::Double, Device::Cpu)).view([1, w]);
        let img = ((m * (u as f64 / h as f64) + n * (v as f64 / w as f64)) * std::f64::consts::TAU).cos();
        let spec = img.fft_fft2(None::<&[i64]>, [-2i64, -1].as_slice(), "backward").abs();
        let at = |r: i64, c: i64| f64::try_from(spec.get(r).get(c)).unwrap();
        assert!((at(u, v) - (h * w) as f64 / 2.0).abs() < 1e-9);
        assert!((at(h - u, w - v) - (h * w) as f64 / 2.0).abs() < 1e-9);
        let total = f64::try_from(spec.square().sum(Kind::Double)).unwrap();
        assert!((total - 2.0 * ((h * w) as f64 / 2.0).powi(2)).abs() < 1e-6, "energy outside the pair");
    }
}
