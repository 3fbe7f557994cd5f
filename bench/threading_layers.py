"""conv1..conv3 (ZFNet, batch 16) on the numba backend as this process's threading setup runs them.

Numba's threads:

    python bench/threading_layers.py                               # zfraw's default start
    OMP_WAIT_POLICY=PASSIVE python bench/threading_layers.py       # the user's choices, left alone
    NUMBA_THREADING_LAYER=workqueue python bench/threading_layers.py
    NUMBA_THREADING_LAYER=omp python bench/threading_layers.py     # GNU OpenMP's spinning default

OpenBLAS's idle workers (``zfraw.blas``):

    OPENBLAS_THREAD_TIMEOUT=28 python bench/threading_layers.py    # OpenBLAS's default: spin ~0.1 s
    python bench/threading_layers.py --numpy-first                 # zfraw restarts the loaded OpenBLAS

One dense 2048^3 GEMM first (out of the thin-GEMM slow state, see
``gemm_state.py``), then the median of ``F.conv2d`` (5 calls), ``F.conv2d_backward``
(3) and ``F.im2col`` (5) for each layer.  Prints one line per layer, with the
threading layer Numba runs and OpenBLAS's idle spin; writes nothing.  Compare processes run one after the
other on a quiet machine.
"""
import sys
from pathlib import Path

if "--numpy-first" in sys.argv:
    import numpy  # noqa: F401  (before zfraw, as a notebook does)
import zfraw  # noqa: E402,F401  (else first: zfraw.blas starts OpenBLAS before NumPy loads it)
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from zfraw import backend  # noqa: E402
from zfraw import functional as F  # noqa: E402

#: (C, H, F, k, stride, pad) of the layer's input and filters
CASES = {"conv1": (3, 224, 96, 7, 2, 1), "conv2": (96, 55, 256, 5, 2, 0), "conv3": (256, 13, 384, 3, 1, 1)}


def main():
    import numba

    backend.set_backend("numba")
    rng = np.random.default_rng(0)
    dense = np.ones((2048, 2048), np.float32)
    dense @ dense
    for name, (c, h, f, k, s, p) in CASES.items():
        x = rng.standard_normal((16, c, h, h)).astype(np.float32)
        w = (rng.standard_normal((f, c, k, k)) * 0.01).astype(np.float32)
        y = F.conv2d(x, w, None, s, p)
        fw = common.time_call(lambda: F.conv2d(x, w, None, s, p), repeat=5)["median_ms"]
        bw = common.time_call(lambda: F.conv2d_backward(y, x, w, s, p), repeat=3)["median_ms"]
        im = common.time_call(lambda: F.im2col(x, k, k, s, p), repeat=5)["median_ms"]
        spin = "2^%d (%s)" % zfraw.blas.thread_timeout()
        print(f"{numba.threading_layer():>9} spin {spin:<20} {name} forward {fw:6.1f} ms  backward {bw:6.1f} ms  "
              f"im2col {im:6.1f} ms", flush=True)


if __name__ == "__main__":
    main()
