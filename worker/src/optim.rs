//! SGD and Adam with their state as plain named tensors, so a checkpoint can hold the optimizer
//! exactly and a resumed run continues bit for bit (tch's built-in optimizers keep their state
//! inside libtorch where it cannot be saved). The update rules are PyTorch's (`torch.optim.SGD`
//! with dampening 0, `torch.optim.Adam` with L2 weight decay, not AdamW), so results compare with
//! PyTorch runs.

use freqsweep_common::task::Optimizer;
use tch::{nn, Tensor};

/// The parameters being optimised and the optimizer's per-parameter buffers.
pub struct OptimizerState {
    kind: Optimizer,
    /// Trainable variables, sorted by name (the order of `buffers`).
    params: Vec<(String, Tensor)>,
    /// SGD: `[momentum]`; Adam: `[exp_avg, exp_avg_sq]`; empty until the first step.
    buffers: Vec<Vec<Tensor>>,
    /// Number of steps taken (Adam's bias correction uses it).
    steps: u64,
    /// Per-parameter work space (not state: never saved).
    scratch: Vec<Tensor>,
}

impl OptimizerState {
    pub fn new(vs: &nn::VarStore, kind: Optimizer) -> Self {
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        OptimizerState { kind, params, buffers: Vec::new(), steps: 0, scratch: Vec::new() }
    }

    /// The trainable variables' names, in the order `step_with` numbers them.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.params.iter().map(|(n, _)| n.as_str())
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// One update with learning rate `lr` from the gradients currently stored on the parameters.
    pub fn step(&mut self, lr: f64) {
        self.step_with(lr, |_, p| p.grad());
    }

    /// One step where the gradient of parameter `i` (in name order) is `grad(i, param)`: bf16-mixed
    /// training takes them from the bf16 compute copy, cast to fp32 (see [`OptimizerState::names`]).
    pub fn step_with(&mut self, lr: f64, grad: impl Fn(usize, &Tensor) -> Tensor) {
        if self.buffers.is_empty() {
            self.buffers = self.params.iter().map(|(_, p)| self.fresh_buffers(p)).collect();
        }
        self.steps += 1;
        let t = self.steps as i32;
        if self.scratch.len() != self.params.len() {
            self.scratch = self.params.iter().map(|(_, p)| p.zeros_like()).collect();
        }
        // Every update is in place, through one scratch tensor per parameter: temporaries the
        // size of AlexNet's 16.8M-weight layer cost a fresh allocation (and page faults) each.
        tch::no_grad(|| {
            let params = self.params.iter_mut().zip(&mut self.buffers).zip(&mut self.scratch);
            for (i, (((_, p), buffers), scratch)) in params.enumerate() {
                let mut g = grad(i, p);
                if !g.defined() {
                    continue;
                }
                let decay = match self.kind {
                    Optimizer::Sgd { weight_decay, .. } | Optimizer::Adam { weight_decay, .. } => weight_decay,
                };
                if decay != 0.0 {
                    scratch.copy_(p);
                    let _ = g.g_add_(&scratch.g_mul_scalar_(decay));
                }
                match self.kind {
                    Optimizer::Sgd { momentum, nesterov, .. } => {
                        let mut d = g.shallow_clone();
                        if momentum != 0.0 {
                            let buf = &mut buffers[0];
                            if t == 1 {
                                buf.copy_(&g);
                            } else {
                                let _ = buf.g_mul_scalar_(momentum).g_add_(&g);
                            }
                            if nesterov {
                                scratch.copy_(buf);
                                let _ = g.g_add_(&scratch.g_mul_scalar_(momentum));
                            } else {
                                d = buf.shallow_clone();
                            }
                        }
                        scratch.copy_(&d);
                        let _ = p.g_add_(&scratch.g_mul_scalar_(-lr));
                    }
                    Optimizer::Adam { beta1, beta2, eps, .. } => {
                        let (m, v) = buffers.split_at_mut(1);
                        let (m, v) = (&mut m[0], &mut v[0]);
                        let _ = m.lerp_(&g, 1.0 - beta1);
                        scratch.copy_(&g);
                        let _ = v.g_mul_scalar_(beta2).addcmul_(&g, &scratch.g_mul_scalar_(1.0 - beta2));
                        let bias1 = 1.0 - beta1.powi(t);
                        let bias2 = 1.0 - beta2.powi(t);
                        // p += -(lr / bias1) · m / (sqrt(v) / sqrt(bias2) + eps), as one addcdiv.
                        scratch.copy_(v);
                        let _ = scratch
                            .sqrt_()
                            .g_mul_scalar_(1.0 / bias2.sqrt())
                            .g_add_scalar_(eps)
                            .g_mul_scalar_(-bias1 / lr);
                        let _ = p.addcdiv_(m, scratch);
                    }
                }
            }
        });
    }

    fn fresh_buffers(&self, p: &Tensor) -> Vec<Tensor> {
        let count = match self.kind {
            Optimizer::Sgd { momentum, .. } => usize::from(momentum != 0.0),
            Optimizer::Adam { .. } => 2,
        };
        (0..count).map(|_| p.zeros_like()).collect()
    }

    /// The state as named tensors (`<param>/<buffer index>`) plus the step count, for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("steps".to_string(), Tensor::from_slice(&[self.steps as i64]))];
        for ((name, _), buffers) in self.params.iter().zip(&self.buffers) {
            for (i, b) in buffers.iter().enumerate() {
                out.push((format!("{name}/{i}"), b.shallow_clone()));
            }
        }
        out
    }

    /// Restore what [`Self::state_tensors`] produced. Fails on a missing or mis-shaped buffer.
    pub fn load_state(&mut self, named: &std::collections::HashMap<String, Tensor>) -> Result<(), String> {
        let steps = named.get("steps").ok_or("optimizer state has no step count")?;
        self.steps = i64::try_from(steps).map_err(|e| e.to_string())? as u64;
        if self.steps == 0 {
            self.buffers.clear();
            return Ok(());
        }
        let mut buffers = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let fresh = self.fresh_buffers(p);
            let mut restored = Vec::with_capacity(fresh.len());
            for (i, f) in fresh.iter().enumerate() {
                let key = format!("{name}/{i}");
                let t = named.get(&key).ok_or_else(|| format!("optimizer state lacks {key}"))?;
                if t.size() != f.size() {
                    return Err(format!("optimizer state {key} has shape {:?}, expected {:?}", t.size(), f.size()));
                }
                restored.push(t.to_device(p.device()));
            }
            buffers.push(restored);
        }
        self.buffers = buffers;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Minimise `|w − 3|²` for a single scalar and compare with the update rules written out.
    fn run(kind: Optimizer, steps: usize, lr: f64) -> (f64, OptimizerState, nn::VarStore) {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = vs.root().zeros("w", &[1]);
        let mut opt = OptimizerState::new(&vs, kind);
        for _ in 0..steps {
            opt.zero_grad();
            let loss = (&w - 3.0).square().sum(Kind::Float);
            loss.backward();
            opt.step(lr);
        }
        (f64::try_from(&w).unwrap(), opt, vs)
    }

    #[test]
    fn sgd_with_momentum_matches_the_pytorch_rule() {
        let (w, _, _) = run(Optimizer::sgd(0.9, 0.0), 3, 0.1);
        // By hand: g = 2(w − 3); v1 = g1, v_t = 0.9 v + g; w -= 0.1 v.
        let (mut x, mut v) = (0.0f64, 0.0f64);
        for t in 0..3 {
            let g = 2.0 * (x - 3.0);
            v = if t == 0 { g } else { 0.9 * v + g };
            x -= 0.1 * v;
        }
        assert!((w - x).abs() < 1e-5, "{w} vs {x}");
    }

    #[test]
    fn adam_matches_the_pytorch_rule() {
        let (w, _, _) = run(Optimizer::adam(), 4, 0.1);
        let (mut x, mut m, mut v) = (0.0f64, 0.0f64, 0.0f64);
        for t in 1..=4 {
            let g = 2.0 * (x - 3.0);
            m = 0.9 * m + 0.1 * g;
            v = 0.999 * v + 0.001 * g * g;
            let (b1, b2) = (1.0 - 0.9f64.powi(t), 1.0 - 0.999f64.powi(t));
            x -= 0.1 / b1 * m / ((v).sqrt() / b2.sqrt() + 1e-8);
        }
        assert!((w - x).abs() < 1e-5, "{w} vs {x}");
    }

    #[test]
    fn state_round_trips() {
        let (_, opt, vs) = run(Optimizer::adam(), 2, 0.1);
        let named: std::collections::HashMap<_, _> = opt.state_tensors().into_iter().collect();
        let mut fresh = OptimizerState::new(&vs, Optimizer::adam());
        fresh.load_state(&named).unwrap();
        assert_eq!(fresh.steps(), 2);
        assert_eq!(fresh.state_tensors().len(), opt.state_tensors().len());
        let mut broken = named;
        broken.remove("w/1");
        assert!(fresh.load_state(&broken).unwrap_err().contains("w/1"));
    }
}
