//! The built-in classifiers for 32 × 32 inputs (SCIENCE.md §6), with named intermediate outputs
//! for the layer heatmaps (SCIENCE.md §3):
//!
//! - **ResNet18-CIFAR**: 3×3 stem (64 channels, stride 1, no max-pool), four stages of two basic
//!   blocks (64, 128, 256, 512 channels; stride 2 from stage 2 on), global average pool, linear.
//!   Named outputs: `layer1` … `layer4` (each stage's output, i.e. after its last convolution, the
//!   residual add and ReLU) and `fc` (the logits).
//! - **AlexNet-CIFAR** (the usual CIFAR variant, no batch norm): conv 64 (3×3, stride 2) → pool →
//!   conv 192 → pool → conv 384 → conv 256 → conv 256 → pool → dropout, fc 4096, dropout, fc 4096,
//!   fc. Named outputs: `conv1` … `conv5` (each conv block after ReLU and its pool) and `fc`.
//! - **Tiny**: two conv stages and a linear layer, for tests and quick sweeps. Named outputs:
//!   `conv1`, `conv2`, `fc`.
//!
//! Every model takes `float32 [N, 3, H, W]` in `[0, 1]` and normalises inside (`(x − mean)/std`),
//! so perturbations are applied to raw pixels, never after normalisation. They are built for
//! 32 × 32 and take any size of at least 8 × 8 (AlexNet: 16 × 16): ResNet18 pools globally, and
//! Tiny and AlexNet average-pool their last feature map to the size their linear layer was made
//! for (8 × 8, 2 × 2) when it is another — at 32 × 32 nothing is added, so the poster's models
//! compute exactly what they did.

use freqsweep_common::task::{MemoryFormat, Precision};
use tch::nn;
use tch::{Device, Kind, Tensor};

/// Which network to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Tiny,
    AlexNet,
    ResNet18,
}

impl std::str::FromStr for Arch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tiny" => Ok(Arch::Tiny),
            "alexnet" => Ok(Arch::AlexNet),
            "resnet18" => Ok(Arch::ResNet18),
            _ => Err(format!("unknown model {s:?}: use alexnet, resnet18 or tiny")),
        }
    }
}

/// Everything needed to rebuild a model's graph (weights live in the `VarStore`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub arch: Arch,
    pub classes: i64,
    /// Per-channel normalisation applied inside the model.
    pub mean: [f64; 3],
    pub std: [f64; 3],
}

impl ModelConfig {
    /// Normalisation `mean 0.5, std 0.25` suits any `[0, 1]` data (Syn_d images span the full range).
    pub fn new(arch: Arch, classes: i64) -> Self {
        ModelConfig { arch, classes, mean: [0.5; 3], std: [0.25; 3] }
    }
}

/// A forward pass that failed, in one line. Only a given (TorchScript) model fails this way: its
/// code may raise on inputs the probe did not try (a module traced on one image raises on a
/// batch). The built-in models never do.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct ForwardError(pub String);

/// A classifier whose intermediate outputs can be observed by name.
pub trait Classifier: Send {
    /// Logits `[N, classes]`; `sink` sees every named intermediate output as it is computed (the
    /// last one is `fc`, the logits themselves). Training passes a no-op sink. Fallible, so that
    /// a given model's error ends its task with one line instead of a panic.
    fn forward_named(
        &self,
        x: &Tensor,
        train: bool,
        sink: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor, ForwardError>;

    /// Names `forward_named` reports, in order.
    fn layer_names(&self) -> Vec<String>;

    /// Compute in `numerics` from now on: the input is normalised in fp32, then cast (and laid
    /// out channels-last) before the first layer. The caller converts the weights
    /// ([`convert_vars`]); outputs come in `numerics.kind`.
    fn set_numerics(&mut self, numerics: Numerics);

    fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor, ForwardError> {
        self.forward_named(x, train, &mut |_, _| {})
    }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// Build `config`'s network with its weights under `vs.root()`.
pub fn build(vs: &nn::VarStore, config: &ModelConfig) -> Box<dyn Classifier> {
    let p = vs.root();
    let norm = Normalize::new(config, vs.device());
    match config.arch {
        Arch::Tiny => Box::new(Tiny::new(&p, config.classes, norm)),
        Arch::AlexNet => Box::new(AlexNet::new(&p, config.classes, norm)),
        Arch::ResNet18 => Box::new(ResNet18::new(&p, config.classes, norm)),
    }
}

/// The numbers and memory layout a model computes in (resolved from a task's `Precision` and
/// `MemoryFormat` by [`Requested::for_model`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Numerics {
    pub kind: Kind,
    pub channels_last: bool,
}

impl Numerics {
    /// fp32, NCHW: bit-identical to every run before memory formats existed.
    pub const FP32: Numerics = Numerics { kind: Kind::Float, channels_last: false };

    /// `x` in these numerics (a no-op in fp32 NCHW).
    pub fn apply(self, x: &Tensor) -> Tensor {
        let x = if x.kind() == self.kind { x.shallow_clone() } else { x.to_kind(self.kind) };
        if self.channels_last && x.dim() == 4 {
            channels_last(&x)
        } else {
            x
        }
    }

    /// The precision to record for a run in these numerics.
    pub fn precision(self) -> Precision {
        if self.kind == Kind::BFloat16 {
            Precision::Bf16
        } else {
            Precision::Fp32
        }
    }

    /// The memory format to record (never `Auto`).
    pub fn memory_format(self) -> MemoryFormat {
        if self.channels_last {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        }
    }
}

/// What a task asks a model to compute in, before the model is known: the kind (already fp32
/// where the device lacks bf16) and the memory format, whose `Auto` depends on the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Requested {
    pub kind: Kind,
    pub format: MemoryFormat,
}

impl Requested {
    /// fp32, NCHW.
    pub const FP32_NCHW: Requested = Requested { kind: Kind::Float, format: MemoryFormat::Contiguous };

    /// The numerics for a model that is (`conv_net`) or is not a convolutional network.
    pub fn for_model(self, conv_net: bool) -> Numerics {
        Numerics { kind: self.kind, channels_last: self.format.resolve(conv_net) == MemoryFormat::ChannelsLast }
    }
}

/// A model is a conv net when it has a 4-D weight (the rule `MemoryFormat::Auto` follows).
pub fn is_conv_net<'a>(weights: impl IntoIterator<Item = &'a Tensor>) -> bool {
    weights.into_iter().any(|w| w.dim() == 4)
}

/// The same values laid out NHWC in memory (PyTorch's `channels_last`: what its conv kernels
/// pick up from the strides; tch has no memory-format argument).
pub fn channels_last(x: &Tensor) -> Tensor {
    x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

/// The variables of normalisation layers (a batch norm's weight, bias and running statistics,
/// found by its `running_mean`): they stay fp32 in bf16, as under PyTorch's autocast, where
/// batch norm runs in fp32; the running statistics would otherwise be rounded to 8 mantissa bits
/// at every update. libtorch's batch norm takes bf16 input with fp32 parameters.
fn norm_layer_vars(vs: &nn::VarStore) -> std::collections::HashSet<String> {
    let vars = vs.variables();
    let prefixes: Vec<&str> = vars.keys().filter_map(|name| name.strip_suffix("running_mean")).collect();
    vars.keys()
        .filter(|name| prefixes.iter().any(|p| name.starts_with(p) && !name[p.len()..].contains('.')))
        .cloned()
        .collect()
}

/// Convert `vs`'s variables to `numerics`: their kind (normalisation layers stay fp32), and 4-D
/// ones (conv weights) channels-last. In place (`set_data`), so the modules built on `vs`, and
/// every handle on its variables, see the converted weights.
pub fn convert_vars(vs: &mut nn::VarStore, numerics: Numerics) {
    let keep_fp32 = if numerics.kind == Kind::Float { Default::default() } else { norm_layer_vars(vs) };
    tch::no_grad(|| {
        for (name, mut var) in vs.variables() {
            let mut converted = None;
            if var.kind() != numerics.kind && var.is_floating_point() && !keep_fp32.contains(&name) {
                converted = Some(var.to_kind(numerics.kind));
            }
            if numerics.channels_last && var.dim() == 4 {
                converted = Some(channels_last(converted.as_ref().unwrap_or(&var)));
            }
            if let Some(c) = converted {
                var.set_data(&c);
            }
        }
    });
}

struct Normalize {
    mean: Tensor,
    std: Tensor,
    numerics: Numerics,
}

impl Normalize {
    fn new(config: &ModelConfig, device: Device) -> Self {
        let t = |v: [f64; 3]| Tensor::from_slice(&v).to_kind(Kind::Float).view([1, 3, 1, 1]).to_device(device);
        Normalize { mean: t(config.mean), std: t(config.std), numerics: Numerics::FP32 }
    }

    /// In fp32 (the input's precision), then into the model's numerics.
    fn apply(&self, x: &Tensor) -> Tensor {
        let normalised = (x - &self.mean) / &self.std;
        if self.numerics == Numerics::FP32 {
            normalised
        } else {
            self.numerics.apply(&normalised)
        }
    }
}

fn conv3x3(p: nn::Path, cin: i64, cout: i64, stride: i64, bias: bool) -> nn::Conv2D {
    nn::conv2d(p, cin, cout, 3, nn::ConvConfig { stride, padding: 1, bias, ..Default::default() })
}

struct Tiny {
    norm: Normalize,
    conv1: nn::Conv2D,
    conv2: nn::Conv2D,
    fc: nn::Linear,
}

impl Tiny {
    fn new(p: &nn::Path, classes: i64, norm: Normalize) -> Self {
        Tiny {
            norm,
            conv1: conv3x3(p / "conv1", 3, 8, 1, true),
            conv2: conv3x3(p / "conv2", 8, 16, 1, true),
            fc: nn::linear(p / "fc", 16 * 8 * 8, classes, Default::default()),
        }
    }
}

impl Classifier for Tiny {
    fn forward_named(
        &self,
        x: &Tensor,
        _train: bool,
        sink: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor, ForwardError> {
        let x = self.norm.apply(x).apply(&self.conv1).relu().max_pool2d_default(2);
        sink("conv1", &x);
        let x = x.apply(&self.conv2).relu().max_pool2d_default(2);
        sink("conv2", &x);
        let logits = to_spatial(x, 8).flatten(1, -1).apply(&self.fc);
        sink("fc", &logits);
        Ok(logits)
    }

    fn layer_names(&self) -> Vec<String> {
        names(&["conv1", "conv2", "fc"])
    }

    fn set_numerics(&mut self, numerics: Numerics) {
        self.norm.numerics = numerics;
    }
}

/// `x` average-pooled to `side × side` unless it already is (other image sizes than 32 × 32).
fn to_spatial(x: Tensor, side: i64) -> Tensor {
    match x.size().as_slice() {
        [_, _, h, w] if *h == side && *w == side => x,
        _ => x.adaptive_avg_pool2d([side, side]),
    }
}

struct AlexNet {
    norm: Normalize,
    convs: [nn::Conv2D; 5],
    fc1: nn::Linear,
    fc2: nn::Linear,
    fc3: nn::Linear,
}

impl AlexNet {
    fn new(p: &nn::Path, classes: i64, norm: Normalize) -> Self {
        let f = p / "features";
        let c = p / "classifier";
        AlexNet {
            norm,
            convs: [
                conv3x3(&f / "0", 3, 64, 2, true),
                conv3x3(&f / "3", 64, 192, 1, true),
                conv3x3(&f / "6", 192, 384, 1, true),
                conv3x3(&f / "8", 384, 256, 1, true),
                conv3x3(&f / "10", 256, 256, 1, true),
            ],
            fc1: nn::linear(&c / "1", 256 * 2 * 2, 4096, Default::default()),
            fc2: nn::linear(&c / "4", 4096, 4096, Default::default()),
            fc3: nn::linear(&c / "6", 4096, classes, Default::default()),
        }
    }
}

impl Classifier for AlexNet {
    fn forward_named(
        &self,
        x: &Tensor,
        train: bool,
        sink: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor, ForwardError> {
        const NAMES: [&str; 5] = ["conv1", "conv2", "conv3", "conv4", "conv5"];
        const POOLED: [bool; 5] = [true, true, false, false, true];
        let mut x = self.norm.apply(x);
        for ((conv, name), pooled) in self.convs.iter().zip(NAMES).zip(POOLED) {
            x = x.apply(conv).relu();
            if pooled {
                x = x.max_pool2d_default(2);
            }
            sink(name, &x);
        }
        let x = to_spatial(x, 2).flatten(1, -1).dropout(0.5, train).apply(&self.fc1).relu().dropout(0.5, train);
        let logits = x.apply(&self.fc2).relu().apply(&self.fc3);
        sink("fc", &logits);
        Ok(logits)
    }

    fn layer_names(&self) -> Vec<String> {
        names(&["conv1", "conv2", "conv3", "conv4", "conv5", "fc"])
    }

    fn set_numerics(&mut self, numerics: Numerics) {
        self.norm.numerics = numerics;
    }
}

struct BasicBlock {
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    conv2: nn::Conv2D,
    bn2: nn::BatchNorm,
    shortcut: Option<(nn::Conv2D, nn::BatchNorm)>,
}

impl BasicBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, stride: i64) -> Self {
        let shortcut = (stride != 1 || cin != cout).then(|| {
            let d = &p / "downsample";
            let conv = nn::conv2d(&d / "0", cin, cout, 1, nn::ConvConfig { stride, bias: false, ..Default::default() });
            (conv, nn::batch_norm2d(&d / "1", cout, Default::default()))
        });
        BasicBlock {
            conv1: conv3x3(&p / "conv1", cin, cout, stride, false),
            bn1: nn::batch_norm2d(&p / "bn1", cout, Default::default()),
            conv2: conv3x3(&p / "conv2", cout, cout, 1, false),
            bn2: nn::batch_norm2d(&p / "bn2", cout, Default::default()),
            shortcut,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let y = x.apply(&self.conv1).apply_t(&self.bn1, train).relu();
        let y = y.apply(&self.conv2).apply_t(&self.bn2, train);
        let skip = match &self.shortcut {
            Some((conv, bn)) => x.apply(conv).apply_t(bn, train),
            None => x.shallow_clone(),
        };
        (y + skip).relu()
    }
}

struct ResNet18 {
    norm: Normalize,
    conv1: nn::Conv2D,
    bn1: nn::BatchNorm,
    stages: Vec<Vec<BasicBlock>>,
    fc: nn::Linear,
}

impl ResNet18 {
    fn new(p: &nn::Path, classes: i64, norm: Normalize) -> Self {
        let widths = [64, 128, 256, 512];
        let mut cin = 64;
        let stages = widths
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let stage = p / format!("layer{}", i + 1);
                let stride = if i == 0 { 1 } else { 2 };
                let blocks =
                    vec![BasicBlock::new(&stage / "0", cin, w, stride), BasicBlock::new(&stage / "1", w, w, 1)];
                cin = w;
                blocks
            })
            .collect();
        ResNet18 {
            norm,
            conv1: conv3x3(p / "conv1", 3, 64, 1, false),
            bn1: nn::batch_norm2d(p / "bn1", 64, Default::default()),
            stages,
            fc: nn::linear(p / "fc", 512, classes, Default::default()),
        }
    }
}

impl Classifier for ResNet18 {
    fn forward_named(
        &self,
        x: &Tensor,
        train: bool,
        sink: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor, ForwardError> {
        const NAMES: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];
        let mut x = self.norm.apply(x).apply(&self.conv1).apply_t(&self.bn1, train).relu();
        for (blocks, name) in self.stages.iter().zip(NAMES) {
            for block in blocks {
                x = block.forward(&x, train);
            }
            sink(name, &x);
        }
        let logits = x.adaptive_avg_pool2d([1, 1]).flatten(1, -1).apply(&self.fc);
        sink("fc", &logits);
        Ok(logits)
    }

    fn layer_names(&self) -> Vec<String> {
        names(&["layer1", "layer2", "layer3", "layer4", "fc"])
    }

    fn set_numerics(&mut self, numerics: Numerics) {
        self.norm.numerics = numerics;
    }
}

/// Why a file is not a usable TorchScript classifier.
#[derive(Debug)]
pub enum ScriptError {
    /// libtorch cannot load it as a module at all.
    NotAModule(String),
    /// It loads, but does not classify images of the given size.
    Rejected(String),
}

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ScriptError::NotAModule(e) | ScriptError::Rejected(e) => f.write_str(e),
        }
    }
}

/// A TorchScript classifier: `forward(x: float32 [N, 3, H, W] in [0, 1]) -> logits [N, classes]`.
/// If the module also has a method `layers(x) -> Dict[str, Tensor]`, its entries are the named
/// intermediate outputs (for layer heatmaps), reported before the logits (`fc`).
pub struct ScriptClassifier {
    module: tch::CModule,
    layers: Vec<String>,
    /// The input is cast (and laid out) into these before the module sees it.
    numerics: Numerics,
    classes: i64,
}

/// What a TorchScript `forward` returned, when it is not one tensor, in words.
fn ivalue_kind(value: &tch::IValue) -> &'static str {
    use tch::IValue as V;
    match value {
        V::Tuple(_) => "a tuple",
        V::TensorList(_) | V::GenericList(_) | V::IntList(_) | V::DoubleList(_) | V::BoolList(_) | V::StringList(_) => {
            "a list"
        }
        V::GenericDict(_) => "a dict",
        V::None => "None",
        V::Double(_) | V::Int(_) | V::Bool(_) => "a number",
        V::String(_) => "a string",
        V::Tensor(_) => "a tensor",
        _ => "a value that is not a tensor",
    }
}

impl ScriptClassifier {
    /// Load `path` onto `device` and probe it with zero images of `height × width`, one and then
    /// a batch of two, so a module that is not a classifier of such images fails here with a
    /// clear message rather than mid-task: one that does not take the size, one that returns
    /// something else than one logits tensor (a tuple, a dict), and one that takes one image but
    /// not a batch (traced on one image, its batch size baked into a `view`).
    pub fn load(path: &std::path::Path, device: Device, height: i64, width: i64) -> Result<Self, ScriptError> {
        let first = crate::checkpoint::first_line;
        let mut module = tch::CModule::load_on_device(path, device).map_err(|e| {
            ScriptError::NotAModule(format!("{}: not a TorchScript module ({})", path.display(), first(e)))
        })?;
        module.set_eval();
        let forward = |n: i64| {
            let probe = Tensor::zeros([n, 3, height, width], (Kind::Float, device));
            tch::no_grad(|| module.forward_is(&[tch::IValue::Tensor(probe)]))
        };
        let out = forward(1).map_err(|e| {
            ScriptError::Rejected(format!(
                "{}: images of 3×{height}×{width} do not fit this TorchScript module (forward on float32 [1, 3, {height}, {width}] failed: {}); give images of the size it takes",
                path.display(),
                first(e)
            ))
        })?;
        let logits = |out: tch::IValue, n: i64| {
            match out {
            tch::IValue::Tensor(t) if t.dim() == 2 && t.size()[0] == n => Ok(t),
            tch::IValue::Tensor(t) => Err(ScriptError::Rejected(format!(
                "{}: forward returned a tensor of shape {:?} for {n} image(s); the model must return one logits tensor [N, classes]",
                path.display(),
                t.size()
            ))),
            other => Err(ScriptError::Rejected(format!(
                "{}: forward returned {} instead of one tensor; the model must return one logits tensor [N, classes]",
                path.display(),
                ivalue_kind(&other)
            ))),
        }
        };
        let classes = logits(out, 1)?.size()[1];
        let batch = forward(2).map_err(|e| {
            ScriptError::Rejected(format!(
                "{}: forward runs on one image but fails on a batch of 2 ({}); the model must take a batch float32 [N, 3, {height}, {width}]",
                path.display(),
                first(e)
            ))
        })?;
        if logits(batch, 2)?.size()[1] != classes {
            return Err(ScriptError::Rejected(format!(
                "{}: forward returns a different number of logits for one image and for two",
                path.display()
            )));
        }
        let mut script = ScriptClassifier { module, layers: Vec::new(), numerics: Numerics::FP32, classes };
        let probe = Tensor::zeros([1, 3, height, width], (Kind::Float, device));
        if let Ok(named) = tch::no_grad(|| script.named_layers(&probe)) {
            script.layers = named.into_iter().map(|(name, _)| name).collect();
        }
        Ok(script)
    }

    /// Logits per image (the width of `forward`'s output, measured by the probe).
    pub fn classes(&self) -> i64 {
        self.classes
    }

    fn named_layers(&self, x: &Tensor) -> Result<Vec<(String, Tensor)>, tch::TchError> {
        let out = self.module.method_is("layers", &[tch::IValue::Tensor(x.shallow_clone())])?;
        let tch::IValue::GenericDict(entries) = out else {
            return Err(tch::TchError::Kind(format!("layers() returned {out:?}, expected Dict[str, Tensor]")));
        };
        entries
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (tch::IValue::String(name), tch::IValue::Tensor(t)) => Ok((name, t)),
                _ => Err(tch::TchError::Kind("layers() must map str to Tensor".into())),
            })
            .collect()
    }
}

impl ScriptClassifier {
    /// Whether the module is a conv net: it has a 4-D parameter (a conv weight), or shows no
    /// parameters at all (a traced or frozen module keeps its weights as graph constants, out of
    /// sight; image classifiers are conv nets, and channels-last costs a non-conv one a reorder).
    pub fn is_conv_net(&self) -> bool {
        match self.module.named_parameters() {
            Ok(params) if !params.is_empty() => is_conv_net(params.iter().map(|(_, t)| t)),
            _ => true,
        }
    }

    /// Convert the module's parameters and buffers to `numerics` and check on one image of
    /// `height × width` that it still runs (a module with fp32 constants in its graph does not
    /// run in bf16 without autocast, which tch does not offer on the CPU).
    pub fn convert(&mut self, numerics: Numerics, device: Device, height: i64, width: i64) -> Result<(), String> {
        if numerics == Numerics::FP32 {
            return Ok(());
        }
        self.module.to(device, numerics.kind, false);
        self.numerics = numerics;
        let probe = self.numerics.apply(&Tensor::zeros([1, 3, height, width], (Kind::Float, device)));
        match tch::no_grad(|| self.module.forward_ts(&[&probe])) {
            Ok(_) => Ok(()),
            Err(e) => {
                self.module.to(device, Kind::Float, false);
                self.numerics = Numerics::FP32;
                Err(crate::checkpoint::first_line(e))
            }
        }
    }
}

impl Classifier for ScriptClassifier {
    fn set_numerics(&mut self, numerics: Numerics) {
        self.numerics = numerics;
    }

    fn forward_named(
        &self,
        x: &Tensor,
        _train: bool,
        sink: &mut dyn FnMut(&str, &Tensor),
    ) -> Result<Tensor, ForwardError> {
        let converted;
        let x = if self.numerics == Numerics::FP32 {
            x
        } else {
            converted = self.numerics.apply(x);
            &converted
        };
        // The probe ran on one and two images; a batch of another size may still raise.
        let failed = |what: &str, e: tch::TchError| {
            ForwardError(format!(
                "{what} failed on a batch of {} images: {}",
                x.size().first().copied().unwrap_or(0),
                crate::checkpoint::first_line(e)
            ))
        };
        if !self.layers.is_empty() {
            for (name, t) in self.named_layers(x).map_err(|e| failed("layers()", e))? {
                sink(&name, &t);
            }
        }
        let logits = self.module.forward_ts(&[x]).map_err(|e| failed("forward", e))?;
        sink("fc", &logits);
        Ok(logits)
    }

    fn layer_names(&self) -> Vec<String> {
        let mut names = self.layers.clone();
        names.push("fc".into());
        names
    }
}

/// Save `model` as TorchScript (traced on `example`, `[N, 3, H, W]`), so any tool that loads
/// TorchScript — including `freqsweep-worker heatmap` and PyTorch — can run it.
/// The weights are frozen while tracing (the tracer stores them as constants, which must not
/// require gradients) and unfrozen afterwards.
pub fn export_torchscript(
    vs: &mut nn::VarStore,
    model: &dyn Classifier,
    example: &Tensor,
    path: &std::path::Path,
) -> Result<(), String> {
    let first = crate::checkpoint::first_line;
    vs.freeze();
    let mut failed = None;
    let traced =
        tch::CModule::create_by_tracing("FreqsweepClassifier", "forward", &[example.copy()], &mut |inputs| match model
            .logits(&inputs[0], false)
        {
            Ok(logits) => vec![logits],
            Err(e) => {
                failed = Some(e);
                vec![inputs[0].shallow_clone()]
            }
        })
        .map_err(|e| format!("tracing failed: {}", first(e)))
        .and_then(|module| match failed {
            Some(e) => Err(format!("tracing failed: {e}")),
            None => module.save(path).map_err(|e| format!("{}: {}", path.display(), first(e))),
        });
    // Unfreeze only after saving: the module shares the weight tensors, and a constant that
    // requires grad at save time cannot be loaded back ("Unsupported value kind: Tensor").
    vs.unfreeze();
    traced
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::OptimizerConfig;

    fn parameter_count(vs: &nn::VarStore) -> i64 {
        vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }

    fn shapes(model: &dyn Classifier, x: &Tensor) -> Vec<(String, Vec<i64>)> {
        let mut seen = Vec::new();
        let logits =
            tch::no_grad(|| model.forward_named(x, false, &mut |name, t| seen.push((name.to_string(), t.size()))))
                .unwrap();
        assert_eq!(seen.last().unwrap().1, logits.size(), "fc is the logits");
        seen
    }

    fn owned(expected: Vec<(&str, Vec<i64>)>) -> Vec<(String, Vec<i64>)> {
        expected.into_iter().map(|(n, s)| (n.to_string(), s)).collect()
    }

    #[test]
    fn bf16_conversion_keeps_batch_norm_in_fp32_and_lays_conv_weights_out_channels_last() {
        let mut vs = nn::VarStore::new(Device::Cpu);
        let mut model = build(&vs, &ModelConfig::new(Arch::ResNet18, 4));
        assert!(is_conv_net(vs.variables().values()));
        let numerics = Numerics { kind: Kind::BFloat16, channels_last: true };
        convert_vars(&mut vs, numerics);
        model.set_numerics(numerics);
        let vars = vs.variables();
        let norm = norm_layer_vars(&vs);
        // Every batch norm of ResNet18: the stem's, 2 per block × 8 blocks, 3 shortcuts; 4 each.
        assert_eq!(norm.len(), 4 * (1 + 16 + 3), "{norm:?}");
        for (name, t) in &vars {
            let expected = if norm.contains(name) { Kind::Float } else { Kind::BFloat16 };
            assert_eq!(t.kind(), expected, "{name}");
            if t.dim() == 4 && t.size()[2] * t.size()[3] > 1 {
                // NHWC strides: channels innermost, then width (a 1 × 1 kernel is both layouts).
                let (size, stride) = (t.size(), t.stride());
                assert!(stride[1] == 1 && stride[3] == size[1], "{name} is channels-last: strides {stride:?}");
            }
        }
        // Mixed batch norm (bf16 activations, fp32 statistics) runs forward and backward, and
        // updates the fp32 running statistics in training mode.
        let before = vars["bn1.running_mean"].copy();
        let x = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let logits = model.logits(&x, true).unwrap();
        assert_eq!(logits.kind(), Kind::BFloat16);
        logits.to_kind(Kind::Float).sum(Kind::Float).backward();
        assert!(vars["conv1.weight"].grad().defined());
        assert_eq!(vars["bn1.running_mean"].kind(), Kind::Float);
        assert!(vars["bn1.running_mean"].ne_tensor(&before).any().int64_value(&[]) == 1, "statistics updated");
        let eval = tch::no_grad(|| model.logits(&x, false)).unwrap();
        assert_eq!(eval.size(), [4, 4]);
        assert_eq!(eval.isfinite().all().int64_value(&[]), 1);
    }

    #[test]
    fn resnet18_has_the_known_size_and_stage_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs, &ModelConfig::new(Arch::ResNet18, 10));
        // The CIFAR ResNet18 of the literature has 11 173 962 trainable parameters for 10 classes.
        assert_eq!(parameter_count(&vs), 11_173_962);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        assert_eq!(
            shapes(model.as_ref(), &x),
            owned(vec![
                ("layer1", vec![2, 64, 32, 32]),
                ("layer2", vec![2, 128, 16, 16]),
                ("layer3", vec![2, 256, 8, 8]),
                ("layer4", vec![2, 512, 4, 4]),
                ("fc", vec![2, 10]),
            ])
        );
        assert_eq!(model.layer_names(), ["layer1", "layer2", "layer3", "layer4", "fc"]);
        assert!(vs.variables().contains_key("layer2.0.downsample.0.weight"), "readable checkpoint keys");
    }

    /// Every built-in model classifies other sizes than 32 × 32 (square and not), and its
    /// parameters do not depend on the size.
    #[test]
    fn every_model_takes_other_image_sizes() {
        for arch in [Arch::Tiny, Arch::AlexNet, Arch::ResNet18] {
            let vs = nn::VarStore::new(Device::Cpu);
            let model = build(&vs, &ModelConfig::new(arch, 7));
            for (h, w) in [(64, 64), (48, 40), (16, 16)] {
                let x = Tensor::rand([2, 3, h, w], (Kind::Float, Device::Cpu));
                let logits = tch::no_grad(|| model.logits(&x, false)).unwrap();
                assert_eq!(logits.size(), [2, 7], "{arch:?} at {h}×{w}");
                assert_eq!(logits.isfinite().all().int64_value(&[]), 1);
            }
        }
    }

    #[test]
    fn alexnet_has_the_known_size_and_block_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs, &ModelConfig::new(Arch::AlexNet, 10));
        // conv 1 792 + 110 784 + 663 936 + 884 992 + 590 080, fc 4 198 400 + 16 781 312 + 40 970.
        assert_eq!(parameter_count(&vs), 23_272_266);
        let x = Tensor::rand([2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let names: Vec<_> = shapes(model.as_ref(), &x).into_iter().map(|(n, s)| (n, s[1..].to_vec())).collect();
        assert_eq!(
            names,
            owned(vec![
                ("conv1", vec![64, 8, 8]),
                ("conv2", vec![192, 4, 4]),
                ("conv3", vec![384, 4, 4]),
                ("conv4", vec![256, 4, 4]),
                ("conv5", vec![256, 2, 2]),
                ("fc", vec![10]),
            ])
        );
    }

    #[test]
    fn observing_layers_does_not_change_logits_and_normalisation_is_inside() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs, &ModelConfig::new(Arch::Tiny, 4));
        let x = Tensor::rand([3, 3, 32, 32], (Kind::Float, Device::Cpu));
        let plain = model.logits(&x, false).unwrap();
        let observed = model.forward_named(&x, false, &mut |_, _| {}).unwrap();
        assert!(plain.allclose(&observed, 0.0, 0.0, false));
        // The model sees (x − 0.5)/0.25: an all-0.5 image gives the same logits as the graph run on zeros
        // without normalisation, which differs from feeding raw 0.5s.
        let half = Tensor::full([1, 3, 32, 32], 0.5, (Kind::Float, Device::Cpu));
        let mut first = None;
        let _ = model.forward_named(&half, false, &mut |name, t| {
            if name == "conv1" {
                first = Some(t.copy());
            }
        });
        let vars = vs.variables();
        let zeros_through_conv1 = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu))
            .conv2d(&vars["conv1.weight"], Some(&vars["conv1.bias"]), [1, 1], [1, 1], [1, 1], 1)
            .relu()
            .max_pool2d_default(2);
        assert!(first.unwrap().allclose(&zeros_through_conv1, 1e-6, 1e-6, false));
    }

    #[test]
    fn exported_torchscript_gives_the_same_logits_and_bad_files_are_named() {
        tch::manual_seed(2);
        let mut vs = nn::VarStore::new(Device::Cpu);
        let model = build(&vs, &ModelConfig::new(Arch::Tiny, 4));
        let x = Tensor::rand([5, 3, 32, 32], (Kind::Float, Device::Cpu));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tiny.pt");
        export_torchscript(&mut vs, model.as_ref(), &x.narrow(0, 0, 2), &path).unwrap();
        let script = ScriptClassifier::load(&path, Device::Cpu, 32, 32).unwrap();
        let (a, b) = tch::no_grad(|| (model.logits(&x, false).unwrap(), script.logits(&x, false).unwrap()));
        assert!(a.allclose(&b, 1e-5, 1e-5, false), "traced module reproduces the logits for another batch size");
        assert_eq!(script.layer_names(), ["fc"]);

        std::fs::write(dir.path().join("junk.pt"), b"PK not really").unwrap();
        let err = ScriptClassifier::load(&dir.path().join("junk.pt"), Device::Cpu, 32, 32).err().unwrap().to_string();
        assert!(err.contains("junk.pt: not a TorchScript module") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn model_names_parse() {
        assert_eq!("ResNet18".parse::<Arch>(), Ok(Arch::ResNet18));
        assert_eq!("alexnet".parse::<Arch>(), Ok(Arch::AlexNet));
        assert!("vgg".parse::<Arch>().unwrap_err().contains("unknown model"));
    }

    /// The smoke test of the foundation: libtorch really runs here. A tiny conv net takes SGD steps
    /// on a fixed batch and its loss goes down; `fft2` through libtorch matches the DFT definition.
    #[test]
    fn libtorch_trains_a_tiny_cnn_and_computes_fft2() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let net = build(&vs, &ModelConfig::new(Arch::Tiny, 4));
        let mut opt = nn::Adam::default().build(&vs, 1e-2).unwrap();
        let x = Tensor::rand([32, 3, 32, 32], (Kind::Float, Device::Cpu));
        let y = Tensor::arange(32, (Kind::Int64, Device::Cpu)).remainder(4);
        let loss_at =
            |net: &dyn Classifier| f64::try_from(net.logits(&x, false).unwrap().cross_entropy_for_logits(&y)).unwrap();
        let initial = loss_at(net.as_ref());
        for _ in 0..20 {
            let loss = net.logits(&x, true).unwrap().cross_entropy_for_logits(&y);
            opt.backward_step(&loss);
        }
        let trained = loss_at(net.as_ref());
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
