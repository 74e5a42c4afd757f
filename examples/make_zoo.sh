#!/bin/sh
# A small model zoo for examples/zoo.toml: scikit-learn's handwritten digits as an image folder
# (examples/make_digits.py), and three TorchScript classifiers trained on it at 32 × 32 by
# freqsweep-worker (its model.pt): the tiny CNN after 2 and after 20 epochs, and AlexNet after
# 20. A few minutes on 2 CPU cores. Then:
#
#   freqsweep run examples/zoo.toml --local-workers 2 --worker-threads 1 --out runs/zoo
#
# Needs `pip install scikit-learn` (for the data) and the built binaries on PATH or in
# target/release.
set -eu
BIN=${BIN:-target/release}
OUT=${OUT:-runs}
python3 examples/make_digits.py --out "$OUT/digits"
mkdir -p "$OUT/zoo"
train() { # name model epochs
    "$BIN/freqsweep-worker" --threads 2 train --folder "$OUT/digits" --size 32 --model "$2" \
        --epochs "$3" --batch-size 64 --lr 0.001 --optimizer adam --seed 0 --out "$OUT/zoo-train/$1"
    cp "$OUT/zoo-train/$1/model.pt" "$OUT/zoo/$1.pt"
}
train tiny_ep2 tiny 2
train tiny_ep20 tiny 20
train alexnet_ep20 alexnet 20
ls -l "$OUT/zoo"
