"""Micro-benchmark of the Numba kernels (kernels/cpu.py) against the NumPy ones
(kernels/vectorized.py) at the sizes of ZFNet's big layers, batch 16.

    python bench/kernels_cpu.py [--batch 16] [--repeat 7] [--no-compile]

Prints a Markdown table of medians (and the speed-ups; NumPy's kernels run on
one core, so numba is also timed on one thread), the first-call time of
each kernel with an empty Numba cache and with a warm one (measured in fresh
subprocesses with their own ``NUMBA_CACHE_DIR``), and writes everything to
bench/results/kernels_cpu.json.  Both kernels run on the same inputs in the same
process, one after the other, so the ratio is fair even on a busy machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def cases(batch, rng):
    """(label, kernel name, args) at ZFNet sizes; inputs drawn once, float32."""
    f32 = np.float32
    x1 = rng.standard_normal((batch, 3, 224, 224)).astype(f32)       # conv1 input
    x2 = rng.standard_normal((batch, 96, 55, 55)).astype(f32)        # conv2 input / norm1
    p1 = rng.standard_normal((batch, 96, 110, 110)).astype(f32)      # pool1 input
    p2 = rng.standard_normal((batch, 256, 26, 26)).astype(f32)       # pool2 input
    cols1 = rng.standard_normal((batch, 3 * 49, 110 * 110)).astype(f32)
    cols2 = rng.standard_normal((batch, 96 * 25, 26 * 26)).astype(f32)
    y1 = rng.standard_normal((batch, 96, 55, 55)).astype(f32)
    from zfraw.kernels import vectorized
    _, s1 = vectorized.max_pool2d(p1, 3, 3, 2, 2, 0, 0, 55, 55)
    dy2 = rng.standard_normal(x2.shape).astype(f32)
    return [
        ("im2col conv1 (3x224x224, 7x7/2 pad 1)", "im2col", (x1, 7, 7, 2, 2, 1, 1)),
        ("im2col conv2 (96x55x55, 5x5/2)", "im2col", (x2, 5, 5, 2, 2, 0, 0)),
        ("col2im conv1", "col2im", (cols1, x1.shape, 7, 7, 2, 2, 1, 1)),
        ("col2im conv2", "col2im", (cols2, x2.shape, 5, 5, 2, 2, 0, 0)),
        ("max_pool2d pool1 (96x110x110, 3x3/2 ceil)", "max_pool2d", (p1, 3, 3, 2, 2, 0, 0, 55, 55)),
        ("max_pool2d pool2 (256x26x26, 3x3/2 ceil)", "max_pool2d", (p2, 3, 3, 2, 2, 0, 0, 13, 13)),
        ("max_unpool2d pool1", "max_unpool2d", (y1, s1, 110, 110, None)),
        ("lrn norm1 (96x55x55, size 5)", "lrn", (x2, 5, 1e-4, 0.75, 2.0)),
        ("lrn_backward norm1", "lrn_backward", (dy2, x2, 5, 1e-4, 0.75, 2.0)),
    ]


def median_seconds(fn, args, repeat):
    """Median wall time of ``fn(*args)`` over ``repeat`` runs (after one warm-up)."""
    fn(*args)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


_FIRST_CALL = r"""
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from zfraw.kernels import cpu
out = {"import": time.perf_counter() - t0}
rng = np.random.default_rng(0)
x = rng.standard_normal((2, 4, 9, 9)).astype(np.float32)
cols = rng.standard_normal((2, 4 * 9, 49)).astype(np.float32)
y = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
s = rng.integers(0, 81, size=y.shape)
calls = [  # the first call also starts Numba's thread pool
    ("im2col", lambda: cpu.im2col(x, 3, 3, 1, 1, 0, 0)),
    ("col2im", lambda: cpu.col2im(cols, x.shape, 3, 3, 1, 1, 0, 0)),
    ("max_pool2d", lambda: cpu.max_pool2d(x, 3, 3, 2, 2, 0, 0, 4, 4)),
    ("max_unpool2d", lambda: cpu.max_unpool2d(y, s, 9, 9)),
    ("lrn", lambda: cpu.lrn(x, 5, 1e-4, 0.75, 2.0)),
    ("lrn_backward", lambda: cpu.lrn_backward(x, x, 5, 1e-4, 0.75, 2.0)),
]
for name, call in calls:
    t0 = time.perf_counter()
    call()
    out[name] = time.perf_counter() - t0
print(json.dumps(out))
"""


def first_call_times():
    """First-call seconds per kernel (float32), empty cache then warm cache, in subprocesses."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = []
        for _ in range(2):
            done = subprocess.run([sys.executable, "-c", _FIRST_CALL], env=env, check=True,
                                  capture_output=True, text=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"empty_cache": runs[0], "warm_cache": runs[1]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip the first-call (compile) timings")
    args = parser.parse_args(argv)

    import numba

    from zfraw.kernels import cpu, vectorized

    threads = numba.get_num_threads()
    rng = np.random.default_rng(2014)
    rows = []
    for label, name, kargs in cases(args.batch, rng):
        t_np = median_seconds(getattr(vectorized, name), kargs, args.repeat)
        t_nb = median_seconds(cpu.KERNELS[name], kargs, args.repeat)
        numba.set_num_threads(1)  # NumPy's kernels use one core: the like-for-like comparison
        try:
            t_nb1 = median_seconds(cpu.KERNELS[name], kargs, args.repeat)
        finally:
            numba.set_num_threads(threads)
        rows.append({"case": label, "kernel": name, "numpy_ms": 1e3 * t_np, "numba_ms": 1e3 * t_nb,
                     "numba_1thread_ms": 1e3 * t_nb1, "speedup": t_np / t_nb, "speedup_1thread": t_np / t_nb1})

    print(f"batch {args.batch}, float32, median of {args.repeat}, numba on {threads} thread(s) "
          f"({numba.threading_layer()}) and on 1, {os.cpu_count()} CPU(s)\n")
    print(f"| kernel, ZFNet layer | numpy (ms) | numba, {threads} threads (ms) | numba, 1 thread (ms) "
          "| speed-up | speed-up, 1 thread |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['numpy_ms']:.1f} | {r['numba_ms']:.1f} | {r['numba_1thread_ms']:.1f} "
              f"| {r['speedup']:.1f}x | {r['speedup_1thread']:.1f}x |")

    compile_times = None
    if not args.no_compile:
        compile_times = first_call_times()
        print("\n| first call (float32, tiny input) | empty cache (s) | warm cache (s) |")
        print("|---|---:|---:|")
        for key in compile_times["empty_cache"]:
            print(f"| {key} | {compile_times['empty_cache'][key]:.2f} | {compile_times['warm_cache'][key]:.2f} |")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"batch": args.batch, "repeat": args.repeat, "dtype": "float32", "cpus": os.cpu_count(),
           "numba_threads": threads, "threading_layer": numba.threading_layer(),
           "machine": platform.processor() or platform.machine(), "rows": rows, "first_call_s": compile_times}
    (RESULTS / "kernels_cpu.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
