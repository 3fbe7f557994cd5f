"""Does a thin GEMM (conv1's shape) run faster right after a dense one?  A machine check.

    python bench/gemm_state.py [--repeat 5]

Times, in one process and in this order: NumPy's float32 GEMM of ZFNet conv1's
shape at batch 16 tiles ((96 x 147) x (147 x 8192), K = 147: little arithmetic
per byte) before zfraw loads a backend; then, after the backend has loaded
(which runs ``zfraw.blas.prime``: one 256^3 GEMM per dtype), the same GEMM and
zfraw's numba conv1 forward at batch 16; then one dense GEMM (2048^3); then the
same two again; then again after a pause.  On the 2-vCPU AMD EPYC of 2026-12-01
the thin GEMM ran at half speed until a GEMM with K >= 256 had run, which made
conv1's figures depend on what ran before them until the backends primed
OpenBLAS.  Prints the medians (ms); writes nothing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def median_ms(fn, repeat):
    return common.time_call(fn, repeat=repeat)["median_ms"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pause", type=float, default=3.0, help="seconds idle before the last round")
    args = parser.parse_args(argv)

    from zfraw import backend, functional as F

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((96, 147), np.float32), rng.standard_normal((147, 8192), np.float32)
    unprimed = median_ms(lambda: a @ b, args.repeat)  # no zfraw backend loaded yet: nothing primed OpenBLAS
    backend.set_backend("numba" if "numba" in backend.backends() else "numpy")
    x = rng.standard_normal((16, 3, 224, 224), np.float32)
    w = (rng.standard_normal((96, 3, 7, 7)) * 0.01).astype(np.float32)
    big = rng.standard_normal((2048, 2048), np.float32)

    def row(label):
        thin = median_ms(lambda: a @ b, args.repeat)
        conv = median_ms(lambda: F.conv2d(x, w, None, 2, 1), args.repeat)
        print(f"{label:<34} thin GEMM {thin:7.2f} ms ({2 * 96 * 147 * 8192 / thin / 1e6:5.1f} GFLOP/s)   "
              f"conv1 forward ({backend.get_backend().name}) {conv:7.1f} ms", flush=True)

    print(f"{common.cpu_model()}, {common.cpu_threads()} threads, load {common.load_average():.2f}")
    print(f"{'before a backend loads (unprimed)':<34} thin GEMM {unprimed:7.2f} ms "
          f"({2 * 96 * 147 * 8192 / unprimed / 1e6:5.1f} GFLOP/s)")
    row("after the backend loaded (primed)")
    dense = median_ms(lambda: big @ big, 1)
    print(f"dense GEMM 2048^3: {dense:.0f} ms ({2 * 2048 ** 3 / dense / 1e6:.0f} GFLOP/s)")
    row("right after the dense GEMM")
    time.sleep(args.pause)
    row(f"after {args.pause:g} s idle")


if __name__ == "__main__":
    main()
