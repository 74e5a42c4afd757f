#!/usr/bin/env bash
# The GPU check: one run, on a machine with an NVIDIA GPU and CUDA PyTorch 2.11.0 but no Rust
# toolchain. `cargo xtask build --cuda` (on any machine, no GPU needed) puts this script into the
# bundle `target/cuda/dist/` beside what it runs; copy that directory over and:
#
#   bash gpu-check.sh [OUT]            # OUT: default ./gpu-check-out; PYTHON: default python3
#
# 1. libtorch from the active Python's torch (the worker links libtorch_cuda.so; LD_LIBRARY_PATH
#    points it at that torch's lib/, whose own RUNPATH finds cuBLAS, cuDNN, NCCL);
# 2. `freqsweep-worker info --device cuda:0`;
# 3. the engine benchmark on cuda:0 (Rust: heatmap images/s of the tiny CNN and ResNet18 in
#    fp32, channels-last and bf16, their pure forward pass, training steps/s) and its PyTorch
#    baseline on the same GPU (the per-cell loop of public heatmap code, the best batched loop,
#    the forward pass, training steps/s, the forward pass's FLOPs);
# 4. a 1-GPU `freqsweep run` of the demo (examples/demo.toml);
# 5. OUT/summary.md: the table for BENCHMARKS.md with a roofline line per model (FLOPs per image
#    × images/s against the device's peak).
# Every step has a time limit; the whole check takes about 5 minutes on an H100/H200 class GPU
# and stops at 8.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$PWD/gpu-check-out}
python=${PYTHON:-python3}
mkdir -p "$out"
started=$(date +%s)
step() { echo "gpu-check: ── $* ($(($(date +%s) - started)) s)" >&2; }
fail() { echo "gpu-check: error: $*" >&2; exit 2; }

for f in freqsweep freqsweep-worker freqsweep-engine-bench torch_engine.py demo.toml; do
  [ -e "$here/$f" ] || fail "$here/$f is missing: run this from the bundle cargo xtask build --cuda made"
done
torch_lib=$("$python" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))') \
  || fail "$python cannot import torch (install torch==2.11.0 with CUDA, or set PYTHON)"
version=$("$python" -c 'import torch; print(torch.__version__.split("+")[0])')
[ "$version" = "2.11.0" ] || fail "PyTorch $version found; the binaries are built against 2.11.0"
"$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
  || fail "torch.cuda.is_available() is False: no GPU, or a driver too old for this PyTorch"
export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$out/nvidia-smi.txt" 2>/dev/null || true

step "freqsweep-worker info --device cuda:0"
timeout 120 "$here/freqsweep-worker" info --device cuda:0 | tee "$out/info.txt"

step "engine benchmark, Rust (cuda:0)"
timeout 240 "$here/freqsweep-engine-bench" --device cuda:0 --out "$out/data" --images 1024 \
  --models tiny,resnet18 --batch tiny=2048,resnet18=512 --cells tiny=128,resnet18=32 \
  --steps tiny=400,resnet18=100 --batches 256,1024,4096 --sweep tiny --dfm tiny > "$out/engine.json"

step "engine benchmark, PyTorch baseline (cuda:0)"
timeout 240 "$python" "$here/torch_engine.py" --data "$out/data" --device cuda:0 --threads 4 \
  --models tiny,resnet18 --batch tiny=2048,resnet18=512 --loop-cells tiny=32,resnet18=8 \
  --forward-images tiny=262144,resnet18=32768 --steps tiny=400,resnet18=100 \
  --variants fp32,fp32_cl,bf16_cl --dfm-models tiny > "$out/torch.json"

step "freqsweep run demo.toml --local-workers 1 --device cuda:0"
rm -rf "$out/demo"
timeout 240 "$here/freqsweep" run "$here/demo.toml" --local-workers 1 --device cuda:0 --out "$out/demo" \
  > "$out/demo.txt" 2> "$out/demo.log" || { tail -20 "$out/demo.log" >&2; fail "the demo run failed"; }
cat "$out/demo.txt"

step "summary"
"$python" - "$out" <<'PY'
import json, os, sys

out = sys.argv[1]
ours = json.load(open(os.path.join(out, "engine.json")))
theirs = json.load(open(os.path.join(out, "torch.json")))
name = theirs.get("device_name", "?")
# Dense peak FLOP/s by device (vendor data sheets): FP32 on CUDA cores, TF32 and BF16 on tensor cores.
PEAKS = {
    "H200": (67e12, 494e12, 989e12),
    "H100": (67e12, 494e12, 989e12),
    "A100": (19.5e12, 156e12, 312e12),
    "L40S": (91.6e12, 183e12, 362e12),
}
peak = next((v for k, v in PEAKS.items() if k in name), None)
if os.environ.get("GPU_PEAK_FLOPS"):
    p = float(os.environ["GPU_PEAK_FLOPS"])
    peak = (p, p, p)
lines = [f"GPU: {name}; PyTorch {theirs['torch']}; one run of deploy/gpu-check.sh (`bash gpu-check.sh`).", ""]
lines.append("| model | batch | numerics | Rust heatmap img/s | forward img/s | % of forward | (a) loop img/s | vs (a) | (b) batched img/s | vs (b) |")
lines.append("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
roof = []
for model, label in [("tiny", "Tiny CNN"), ("resnet18", "ResNet18-CIFAR")]:
    p = f"cuda0.{model}"
    if f"{p}.heatmap" not in ours:
        continue
    batch = int(ours[f"{p}.batch"])
    loop = theirs[f"{model}.loop_images_per_second"]
    for variant, suffix, text in [("fp32", "", "fp32, NCHW"), ("fp32_cl", ".fp32_cl", "fp32, channels-last"), ("bf16_cl", ".bf16_cl", "bf16, channels-last")]:
        h, f = ours.get(f"{p}.heatmap{suffix}"), ours.get(f"{p}.forward{suffix}")
        b = theirs.get(f"{model}.batched_images_per_second.{variant}")
        if h is None or f is None:
            continue
        lines.append(f"| {label} | {batch} | {text} | {h:.0f} | {f:.0f} | {100 * h / f:.0f} % | {loop:.0f} | {h / loop:.2f}× | "
                     + (f"{b:.0f} | {h / b:.2f}× |" if b else "– | – |"))
        flops = theirs.get(f"{model}.forward_flops_per_image")
        if flops:
            achieved = flops * f
            if peak:
                ref = peak[2] if variant == "bf16_cl" else peak[1]
                kind = "BF16" if variant == "bf16_cl" else "TF32"
                roof.append(f"- {label}, {text}: {flops / 1e6:.1f} MFLOP per image × {f:.0f} img/s forward = {achieved / 1e12:.2f} TFLOP/s, "
                            f"{100 * achieved / ref:.1f} % of the {kind} tensor peak ({ref / 1e12:.0f} TFLOP/s), "
                            f"{100 * achieved / peak[0]:.1f} % of FP32 ({peak[0] / 1e12:.1f}); heatmap {100 * flops * h / ref:.1f} % of {kind}")
            else:
                roof.append(f"- {label}, {text}: {flops / 1e6:.1f} MFLOP per image × {f:.0f} img/s = {achieved / 1e12:.2f} TFLOP/s (peak unknown: set GPU_PEAK_FLOPS)")
lines.append("")
lines.append("Training steps/s at batch 64, Adam (Rust `train::run` end to end vs PyTorch's plain loop):")
lines.append("")
for model, label in [("tiny", "Tiny CNN"), ("resnet18", "ResNet18-CIFAR")]:
    r, t = ours.get(f"cuda0.{model}.train_run"), theirs.get(f"{model}.train_steps_per_second.fp32")
    if r and t:
        lines.append(f"- {label}: Rust {r:.1f}, PyTorch {t:.1f} steps/s ({r / t:.2f}×)")
lines.append("")
lines.append("Roofline (forward FLOPs from torch.utils.flop_counter; a multiply-add is 2 FLOPs):")
lines.append("")
lines.extend(roof)
text = "\n".join(lines) + "\n"
open(os.path.join(out, "summary.md"), "w").write(text)
print(text)
PY
step "done: $out (summary.md, engine.json, torch.json, info.txt, demo/)"
