"""The numba im2col / col2im in the tile layout against the public layout, ZFNet's geometries.

    python bench/tile_kernels.py [--batch 16] [--repeat 9] [--backend numba]

The convolutions write a tile's columns as (C*kh*kw, n*Ho*Wo) (``im2col_tile``)
and fold them back with ``col2im_tile``; ``F.im2col`` keeps (N, C*kh*kw, Ho*Wo).
Both layouts hold the same numbers, so the same work should take the same time.
For each conv layer's input at ``--batch`` (a whole-batch tile, as conv2..conv5
use at batch 16; conv1's tiles are one image, where the layouts coincide) this
times the four kernels alternating call by call in one process and prints the
medians (ms) and tile / public.  Writes nothing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import zfraw  # first: zfraw.blas starts OpenBLAS before NumPy loads it
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main(argv=None, log=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--layers", nargs="+", default=list(common.ZFNET_CONVS), choices=list(common.ZFNET_CONVS))
    args = parser.parse_args(argv)
    b = zfraw.backend.set_backend(args.backend)
    rng = np.random.default_rng(0)
    log(f"{common.cpu_model()}, {common.cpu_threads()} threads, backend {b.name}, batch {args.batch}, "
        f"load {common.load_average():.2f}")
    log("| layer | im2col ms | im2col_tile ms | tile / public | col2im ms | col2im_tile ms | tile / public |")
    log("|---|---:|---:|---:|---:|---:|---:|")
    rows = {}
    for name in args.layers:
        c, _, k, s, p, h = common.ZFNET_CONVS[name]
        x = rng.standard_normal((args.batch, c, h, h), dtype=np.float32)
        geometry = (k, k, s, s, p, p)
        public, tile = b.kernel("im2col")(x, *geometry), b.kernel("im2col_tile")(x, *geometry)
        m = common.alternating_medians({
            "im2col": lambda: b.kernel("im2col")(x, *geometry),
            "im2col_tile": lambda: b.kernel("im2col_tile")(x, *geometry),
            "col2im": lambda: b.kernel("col2im")(public, x.shape, *geometry),
            "col2im_tile": lambda: b.kernel("col2im_tile")(tile, x.shape, *geometry),
        }, args.repeat)
        rows[name] = m
        log(f"| {name} | {m['im2col']:.2f} | {m['im2col_tile']:.2f} | {m['im2col_tile'] / m['im2col']:.2f} | "
            f"{m['col2im']:.2f} | {m['col2im_tile']:.2f} | {m['col2im_tile'] / m['col2im']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
