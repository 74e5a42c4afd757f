"""NumPy baseline for common/benches/spectral.rs: the same work on the same sizes.

Prints one JSON object: {"band_filter_10k": seconds, "basis_all_cells_32x32": seconds, "perturb_10k": seconds}
(median of repeated runs). Run by `cargo xtask bench`.
"""
import json
import statistics
import time

import numpy as np

N = 10_000
rng = np.random.default_rng(0)
images = rng.random((N, 3, 32, 32), dtype=np.float32)

u = np.fft.fftshift(np.fft.fftfreq(32, 1 / 32))
r = np.sqrt(u[:, None] ** 2 + u[None, :] ** 2)
keep = (r <= 8) | (r > 12)  # B124 with DC: drop band 3 (8 < r <= 12)
mask = np.fft.ifftshift(keep).astype(np.float32)
half_mask = mask[:, :17]  # the rfft2 half-spectrum; the mask is conjugate-symmetric


def band_filter():
    # The strongest plain-NumPy form: real-input transforms (half the work of fft2/ifft2).
    return np.fft.irfft2(np.fft.rfft2(images) * half_mask, s=(32, 32)).astype(np.float32)


def canonical_cells():
    cells = []
    for row in range(32):
        for col in range(32):
            uu, vv = row - 16, col - 16
            cu, cv = (-uu) % 32, (-vv) % 32
            crow, ccol = (cu + 16) % 32, (cv + 16) % 32
            if (row, col) <= (crow, ccol):
                cells.append((uu, vv))
    return cells


CELLS = canonical_cells()
assert len(CELLS) == 514


def basis_all():
    out = []
    for uu, vv in CELLS:
        spec = np.zeros((32, 32), dtype=np.complex128)
        spec[uu % 32, vv % 32] = 1
        spec[(-uu) % 32, (-vv) % 32] = 1
        b = np.fft.ifft2(spec).real
        out.append((b / np.linalg.norm(b)).astype(np.float32))
    return out


basis = basis_all()[100]
signs = rng.choice(np.array([-1.0, 1.0], dtype=np.float32), size=(N, 3, 1, 1))


def perturb():
    return np.clip(images + np.float32(4.0) * signs * basis, 0, 1)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


print(json.dumps({
    "band_filter_10k": median_time(band_filter, 5),
    "basis_all_cells_32x32": median_time(basis_all, 10),
    "perturb_10k": median_time(perturb, 10),
    "numpy": np.__version__,
}))
