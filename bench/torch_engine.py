"""PyTorch baseline for the worker engine benchmark (`cargo xtask bench engine`).

The same architectures as `worker/src/models.rs` (layer for layer, normalisation `(x - 0.5) / 0.25`
inside the model), the same Syn_4 test images (written by `worker/benches/engine.rs`), the same
thread count, and per model:

- **loop** (a): the per-cell loop of public Fourier-heatmap code (Yin et al. 2019 and the PyTorch
  tools after it), fp32 NCHW: for every cell of the half plane, build the Fourier basis image,
  then for each batch of images draw a random sign per image and channel, perturb, clamp to
  [0, 1], forward, count errors. Perturbed images/s over `--loop-cells` cells (every cell costs
  the same, so a subset gives the full map's rate);
- **batched** (b), per numerics variant: the best batched PyTorch written here: perturbed copies
  of many (cell, image) pairs per forward pass, signs and basis images built once, counts kept on
  the device, one clean pass per image block (what the engine does), in fp32 NCHW (`fp32`), fp32
  channels-last (`fp32_cl`) or bf16 autocast channels-last (`bf16_cl`);
- **forward**, per variant: the pure batched forward pass (`no_grad`, eval), the ceiling;
- **dfm loop**: the loop of the DFM authors' public code for one class (each class repeats it):
  per cell, the whole test set, FFT, zero the cell, inverse FFT, forward, the class's loss;
- **train**, per variant: steps/s of the plain training loop at batch 64 with `torch.optim.Adam`;
  `bf16_cl` is `torch.autocast("cpu", torch.bfloat16)` on a channels-last model (fp32 master
  weights, the way PyTorch AMP does it).

`--device cuda:0` runs everything on that GPU (timings synchronise the device) and also reports
the forward pass's FLOPs per image (`torch.utils.flop_counter`), for the roofline line.

Prints one JSON object. Usage:
  python3 bench/torch_engine.py --data DIR --threads T [--batch tiny=256,resnet18=64] [--models tiny,resnet18]
      [--loop-cells tiny=64,resnet18=16] [--steps tiny=200,resnet18=12] [--variants fp32,fp32_cl,bf16_cl]
      [--device cpu|cuda:0]
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 4.0
TRAIN_BATCH = 64
LR = 1e-3
# Set by --device; every tensor and model lives there.
DEVICE = torch.device("cpu")


def sync():
    """Wait for the device (CUDA runs asynchronously: a timer must not stop before the work)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


class Normalize(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("std", torch.full((1, 3, 1, 1), 0.25))

    def forward(self, x):
        return (x - self.mean) / self.std


class Tiny(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.norm = Normalize()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 8 * 8, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(self.norm(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(torch.flatten(x, 1))


class AlexNet(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.norm = Normalize()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 3, stride=2, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 192, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * 2 * 2, 4096), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, classes),
        )  # fmt: skip

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(self.norm(x)), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """CIFAR variant: 3x3 stem, stride 1, no max-pool."""

    def __init__(self, classes):
        super().__init__()
        self.norm = Normalize()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        stages, cin = [], 64
        for i, width in enumerate([64, 128, 256, 512]):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(cin, width, stride), BasicBlock(width, width, 1)))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(512, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(self.norm(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


MODELS = {"tiny": Tiny, "alexnet": AlexNet, "resnet18": ResNet18}


def fourier_basis(i, j, h, w):
    """Unit-norm real image whose spectrum is 1 at centred cell (i, j) and its conjugate."""
    spectrum = torch.zeros(h, w, dtype=torch.complex64)
    u, v = i - h // 2, j - w // 2
    spectrum[u % h, v % w] = 1
    spectrum[(-u) % h, (-v) % w] = 1
    basis = torch.fft.ifft2(spectrum).real
    return (basis / basis.norm()).to(DEVICE)


VARIANTS = {
    # name: (channels_last, bf16 autocast)
    "fp32": (False, False),
    "fp32_cl": (True, False),
    "bf16_cl": (True, True),
}


def in_variant(model, variant):
    """The model laid out for `variant` (conv weights channels-last where it asks)."""
    channels_last, _ = VARIANTS[variant]
    return model.to(memory_format=torch.channels_last) if channels_last else model


def numerics(variant):
    """The context the forward pass of `variant` runs in."""
    _, bf16 = VARIANTS[variant]
    return torch.autocast(DEVICE.type, dtype=torch.bfloat16) if bf16 else torch.autocast(DEVICE.type, enabled=False)


def laid_out(x, variant):
    return x.contiguous(memory_format=torch.channels_last) if VARIANTS[variant][0] else x


def batched_map(model, images, labels, cells, batch, variant):
    """The best batched heatmap loop in PyTorch; returns (perturbed images, seconds)."""
    n, c, h, w = images.shape
    k = len(cells)
    sync()
    start = time.perf_counter()
    with torch.no_grad(), numerics(variant):
        basis = torch.stack([fourier_basis(i, j, h, w) for i, j in cells]) * EPS  # [k, h, w]
        signs = torch.randint(0, 2, (k, n, c, 1, 1), device=DEVICE).float() * 2 - 1
        wrong = torch.zeros(k, dtype=torch.int64, device=DEVICE)
        block = min(n, batch)
        group = max(1, batch // block)
        for first in range(0, n, block):
            x, y = images[first : first + block], labels[first : first + block]
            m = x.shape[0]
            clean_wrong = (model(laid_out(x, variant)).argmax(1) != y).sum()
            for g in range(0, k, group):
                cells_here = min(group, k - g)
                # [cells, m, c, h, w]: every image of the block perturbed at every cell of the group.
                perturbed = x.unsqueeze(0) + signs[g : g + cells_here, first : first + m] * basis[g : g + cells_here, None, None]
                perturbed = laid_out(perturbed.clamp_(0, 1).view(cells_here * m, c, h, w), variant)
                miss = (model(perturbed).argmax(1) != y.repeat(cells_here)).view(cells_here, m).sum(1)
                wrong[g : g + cells_here] += miss
        wrong.sum().item()
        clean_wrong.item()
    return k * n, time.perf_counter() - start


def public_dfm_loop(model, images, labels, cells, batch, target_class):
    """The loop of the DFM authors' public code (`nn-frequency-shortcuts`, `test_rank.py`) for one
    class: for every cell, the whole test set in batches: FFT, centre, zero the cell (and its
    mirror), shift back, inverse FFT, real part, forward, cross-entropy of the class's images.
    Every class repeats it. Returns (filtered images, seconds)."""
    n, c, h, w = images.shape
    count = 0
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for i, j in cells:
            loss = torch.zeros((), device=DEVICE)
            for first in range(0, n, batch):
                x, y = images[first : first + batch], labels[first : first + batch]
                spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
                spectrum[:, :, i, j] = 0
                spectrum[:, :, (h - i) % h, (w - j) % w] = 0
                filtered = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real
                losses = F.cross_entropy(model(filtered), y, reduction="none")
                loss += losses[y == target_class].sum()
                count += x.shape[0]
            loss.item()
    return count, time.perf_counter() - start


def per_cell_loop(model, images, labels, cells, batch):
    """The per-cell loop of public Fourier-heatmap code; returns (perturbed images, seconds, errors)."""
    n, c, h, w = images.shape
    errors, count = 0, 0
    sync()
    start = time.perf_counter()
    with torch.no_grad():
        for i, j in cells:
            basis = fourier_basis(i, j, h, w)
            for first in range(0, n, batch):
                x, y = images[first : first + batch], labels[first : first + batch]
                signs = torch.randint(0, 2, (x.shape[0], c, 1, 1), device=DEVICE).float() * 2 - 1
                perturbed = torch.clamp(x + EPS * signs * basis, 0, 1)
                errors += (model(perturbed).argmax(1) != y).sum().item()
                count += x.shape[0]
    return count, time.perf_counter() - start, errors


def forward_rate(model, images, batch, total, variant="fp32"):
    chunk = laid_out(images.repeat(-(-batch // images.shape[0]), 1, 1, 1)[:batch], variant)
    passes = max(1, -(-total // chunk.shape[0]))
    with torch.no_grad(), numerics(variant):
        model(chunk)
        sync()
        start = time.perf_counter()
        for _ in range(passes):
            model(chunk)
        sync()
        seconds = time.perf_counter() - start
    return passes * chunk.shape[0] / seconds


def train_rate(name, images, labels, steps, variant="fp32"):
    torch.manual_seed(1)
    model = in_variant(MODELS[name](4).to(DEVICE), variant)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    n = images.shape[0]
    loss_sum = torch.zeros((), device=DEVICE)

    def step():
        nonlocal loss_sum
        index = torch.randperm(n, device=DEVICE)[: min(TRAIN_BATCH, n)]
        x, y = laid_out(images.index_select(0, index), variant), labels.index_select(0, index)
        with numerics(variant):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss_sum += loss.detach()

    step()
    step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - start
    loss_sum.item()
    return steps / seconds


def forward_flops(model, one_image):
    """FLOPs of one image's forward pass (a multiply-add counts 2), by PyTorch's own counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(one_image)
    return counter.get_total_flops()


def parse_map(text):
    return {k.strip().lower(): int(v) for k, v in (kv.split("=") for kv in text.split(",") if "=" in kv)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, help="directory with syn4_test_x.npy / syn4_test_y.npy")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--batch", default="tiny=256,alexnet=256,resnet18=64")
    p.add_argument("--models", default="tiny,resnet18")
    p.add_argument("--loop-cells", default="tiny=128,alexnet=64,resnet18=32")
    p.add_argument("--forward-images", default="tiny=16384,alexnet=8192,resnet18=4096")
    p.add_argument("--steps", default="tiny=200,alexnet=20,resnet18=12")
    p.add_argument("--variants", default="fp32,fp32_cl", help="of fp32, fp32_cl, bf16_cl")
    p.add_argument("--dfm-models", default="tiny", help="models whose public DFM loop is timed")
    p.add_argument("--device", default="cpu", help="cpu or cuda:N")
    args = p.parse_args()

    global DEVICE
    DEVICE = torch.device(args.device)
    torch.set_num_threads(args.threads)
    images = torch.from_numpy(np.load(os.path.join(args.data, "syn4_test_x.npy"))).to(DEVICE)
    labels = torch.from_numpy(np.load(os.path.join(args.data, "syn4_test_y.npy"))).to(DEVICE)
    n, _, h, w = images.shape
    loop_cells, forward_images, steps, batches = map(
        parse_map, (args.loop_cells, args.forward_images, args.steps, args.batch)
    )
    # The half plane: one cell of each conjugate pair (514 of a 32 x 32 spectrum, as many as the
    # engine's canonical cells), so time to a full map is the inverse of images/s for both.
    def conjugate(i, j):
        return (h - i) % h, (w - j) % w

    half_plane = [(i, j) for i in range(h) for j in range(w) if (i, j) <= conjugate(i, j)]
    variants = [v for v in args.variants.split(",") if v]
    dfm_models = [m for m in args.dfm_models.split(",") if m]

    # Flat keys ("tiny.loop_images_per_second": …) so `cargo xtask bench` reads them without a JSON crate.
    out = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "images": n,
        "device": str(DEVICE),
    }
    if DEVICE.type == "cuda":
        out["device_name"] = torch.cuda.get_device_name(DEVICE)
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = MODELS[name](4).to(DEVICE).eval()
        k = loop_cells.get(name, 32)
        cells = [half_plane[t * len(half_plane) // k] for t in range(k)]
        batch = batches.get(name, 256)
        per_cell_loop(model, images, labels, cells[:1], batch)  # warm-up
        count, seconds, _ = per_cell_loop(model, images, labels, cells, batch)
        row = {
            "batch": batch,
            "loop_cells": k,
            "half_plane_cells": len(half_plane),
            "loop_images_per_second": count / seconds,
            "train_steps": steps.get(name, 10),
            "forward_flops_per_image": forward_flops(model, images[:1]),
        }
        if name in dfm_models:
            public_dfm_loop(model, images, labels, cells[:1], batch, 0)  # warm-up
            count, seconds = public_dfm_loop(model, images, labels, cells, batch, 0)
            row["dfm_loop_images_per_second"] = count / seconds
        for variant in variants:
            torch.manual_seed(0)
            model = in_variant(MODELS[name](4).to(DEVICE).eval(), variant)
            batched_map(model, images, labels, cells[:1], batch, variant)  # warm-up
            count, seconds = batched_map(model, images, labels, cells, batch, variant)
            row[f"batched_images_per_second.{variant}"] = count / seconds
            row[f"forward_images_per_second.{variant}"] = forward_rate(
                model, images, batch, forward_images.get(name, 4096), variant
            )
            row[f"train_steps_per_second.{variant}"] = train_rate(name, images, labels, steps.get(name, 10), variant)
        for key, value in row.items():
            out[f"{name}.{key}"] = value
            print(f"torch baseline: {name}.{key} = {value:.2f}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
