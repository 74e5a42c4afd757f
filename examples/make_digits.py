#!/usr/bin/env python3
"""Write scikit-learn's handwritten digits (1 797 real 8 × 8 images, 10 classes; the data ships
inside the scikit-learn package, so nothing is downloaded) as an image-folder dataset for
`kind = "folder"`: OUT/train/<digit>/<n>.png and OUT/test/<digit>/<n>.png, grey scale stored as
RGB, ink dark on white like paper. freqsweep resizes them to the spec's `size` when it reads them.

    pip install scikit-learn
    python3 examples/make_digits.py --out runs/digits                  # 1 437 train / 360 test
    python3 examples/make_digits.py --out tests/fixtures/digits --train-per-class 20 --test-per-class 10

The split is by position after a seeded shuffle (seed 0), per class, so it is the same on every
machine. Only the PNG writer of the standard library's zlib is used (no Pillow needed).
"""
import argparse
import os
import struct
import zlib

import numpy as np
from sklearn.datasets import load_digits


def write_png(path, rgb):
    """rgb: uint8 [H, W, 3]."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-per-class", type=int, default=0, help="0: 80 %% of each class")
    parser.add_argument("--test-per-class", type=int, default=0, help="0: the other 20 %%")
    args = parser.parse_args()
    digits = load_digits()
    images = (255 - digits.images * (255 / 16)).round().astype(np.uint8)  # 0..16 ink → white paper
    rng = np.random.default_rng(0)
    counts = {"train": 0, "test": 0}
    for label in range(10):
        index = np.flatnonzero(digits.target == label)
        rng.shuffle(index)
        n_train = args.train_per_class or int(round(0.8 * len(index)))
        n_test = args.test_per_class or len(index) - n_train
        for split, part in (("train", index[:n_train]), ("test", index[n_train:n_train + n_test])):
            folder = os.path.join(args.out, split, str(label))
            os.makedirs(folder, exist_ok=True)
            for n, i in enumerate(part):
                write_png(os.path.join(folder, f"{n:04d}.png"), np.repeat(images[i][:, :, None], 3, axis=2))
                counts[split] += 1
    print(f"wrote {counts['train']} train and {counts['test']} test images of 10 classes to {args.out}")


if __name__ == "__main__":
    main()
