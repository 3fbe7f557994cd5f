"""ZFNet conv2..conv5 at batch 16 against the tile size: forward, C^T and backward as % of their GEMM.

    python bench/tile_sweep.py

For each ``zfraw.functional.GEMM_COLUMNS_PER_THREAD`` in 512, 1024, 2048, 4096
(the tile aims at threads x that many columns), one process on the numba
backend times each layer's conv-shaped GEMM ((F, C kh kw) x (C kh kw, 16 Ho Wo)),
conv2d, conv_transpose2d and conv2d_backward (medians of 5 calls after a
warm-up, two rounds over the settings, the median of the rounds).  Prints a
table; writes nothing.
"""
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from zfraw import backend  # noqa: E402
from zfraw import functional as F  # noqa: E402

backend.set_backend("numba")
rng = np.random.default_rng(0)
# (C, H, F, k, stride, pad) of ZFNet conv2..conv5 inputs
cases = {"conv2": (96, 55, 256, 5, 2, 0), "conv3": (256, 13, 384, 3, 1, 1), "conv4": (384, 13, 384, 3, 1, 1),
         "conv5": (384, 13, 256, 3, 1, 1)}
data = {}
for name, (c, h, f, k, s, p) in cases.items():
    x = rng.standard_normal((16, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((f, c, k, k)) * 0.01).astype(np.float32)
    y = F.conv2d(x, w, None, s, p)
    data[name] = (x, w, y, s, p)


def t(fn, rep=5):
    """Median seconds of ``rep`` calls after one warm-up."""
    return common.time_call(fn, repeat=rep)["median_ms"] / 1e3


settings = [512, 1024, 2048, 4096]
res = {}
for rnd in range(2):
    for cols in settings:
        F.GEMM_COLUMNS_PER_THREAD = cols
        for name, (x, w, y, s, p) in data.items():
            ho, k = y.shape[2], w.shape[1] * w.shape[2] * w.shape[3]
            a = rng.standard_normal((w.shape[0], k)).astype(np.float32)
            b = rng.standard_normal((k, 16 * ho * ho)).astype(np.float32)
            g = t(lambda: a @ b)
            fw = t(lambda: F.conv2d(x, w, None, s, p))
            ct = t(lambda: F.conv_transpose2d(y, w, s, p, output_shape=x.shape[2:]))
            bw = t(lambda: F.conv2d_backward(y, x, w, s, p))
            res.setdefault((cols, name), []).append((g, fw, ct, bw))
print(f"{common.cpu_model()}, {common.cpu_threads()} threads")
print("cols/thread layer   GEMM ms   fwd ms (%GEMM)   C^T ms (%GEMM)   bwd ms (%2xGEMM)")
for (cols, name), v in sorted(res.items()):
    g, fw, ct, bw = (statistics.median(z) for z in zip(*v))
    print(f"{cols:6d} {name}  {g * 1e3:7.1f}  {fw * 1e3:7.1f} ({100 * g / fw:3.0f}%)  "
          f"{ct * 1e3:7.1f} ({100 * g / ct:3.0f}%)  {bw * 1e3:7.1f} ({200 * g / bw:3.0f}%)")
