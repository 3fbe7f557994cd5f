"""How the whole ZFNet forward scales with the thread count: numba against PyTorch CPU.

    python bench/threads.py [--threads 1 2 16] [--batch 16] [--repeat 5] [--out DIR] [--no-torch]

For each thread count T (default: 1, 2, 4, 8, 16 up to this machine's CPUs,
and all of them), each implementation runs in a fresh worker process started
with ``OMP_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``NUMBA_NUM_THREADS`` = T (and ``torch.set_num_threads(T)``), and times the
inference forward at ``--batch`` (``net.forward(x, keep=False, cache=False)``
against ``model(x)`` under ``torch.no_grad()``, the same weights; see
``net.py``).  The table gives the medians, each one's speed-up over its own
1-thread time, and numba against PyTorch at the same T.  Results go to
``bench/results/threads-<cpu>-<cores>c-blas-<core>-<impls>.json`` and ``.md``.
Issue 11's target: at 16 threads, numba's forward at batch 16 no slower than
PyTorch's.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is a folder of scripts, not a package)
import net as net_bench  # noqa: E402

import zfraw  # noqa: E402

#: the variables a worker of T threads starts with
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def default_threads(cpus):
    """1, 2, 4, 8, 16 up to ``cpus``, and ``cpus`` itself."""
    counts = [t for t in (1, 2, 4, 8, 16) if t <= cpus]
    return sorted(set(counts + [cpus]))


@contextlib.contextmanager
def thread_environment(threads):
    """os.environ with every :data:`THREAD_VARIABLES` set to ``threads`` (restored after)."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: str(threads) for k in THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def worker(impl, threads, args):
    """Time one forward in this process; prints JSON {median_ms, iqr_ms, threads_used}."""
    x_host = net_bench.images(args.batch, args.image_size)
    if impl == "torch":
        torch = common.import_torch(threads)
        model = net_bench.torch_net(torch, net_bench.our_net(args.model, args.image_size, args.num_classes,
                                                             "numpy")).eval()
        x = torch.from_numpy(x_host)

        def forward():
            with torch.no_grad():
                return model(x)

        used = {"torch": torch.get_num_threads()}
    else:
        net = net_bench.our_net(args.model, args.image_size, args.num_classes, impl)
        with zfraw.use_backend(impl):
            x = zfraw.to_device(x_host)
        net.eval()

        def forward():
            with zfraw.use_backend(impl):
                return net.forward(x, keep=False, cache=False)

        with zfraw.use_backend(impl) as backend:
            used = {impl: backend.threads() if backend.threads else None}
    t = common.time_call(forward, repeat=args.repeat, warmup=1)
    used["openblas"] = common.machine_info(None, ())["threads"].get("openblas")
    print(json.dumps({"median_ms": t["median_ms"], "iqr_ms": t["iqr_ms"], "threads_used": used}))


def markdown(result):
    info = result["machine"]
    impls = result["impls"]
    by = {(r["impl"], r["threads"]): r for r in result["rows"]}
    headers = ["threads"] + [f"{i} ms (IQR)" for i in impls] + [f"{i} speed-up vs 1 thread" for i in impls]
    if "torch" in impls and len(impls) > 1:
        headers += [f"{i} x vs torch" for i in impls if i != "torch"]
    rows = []
    for t in result["threads"]:
        row = [t]
        for i in impls:
            r = by.get((i, t))
            row.append(f"{r['median_ms']:.1f} ({r['iqr_ms']:.1f})" if r else "-")
        for i in impls:
            r, one = by.get((i, t)), by.get((i, 1))
            row.append(f"{one['median_ms'] / r['median_ms']:.2f}x" if r and one else "-")
        if "torch" in impls and len(impls) > 1:
            for i in impls:
                if i == "torch":
                    continue
                r, tr = by.get((i, t)), by.get(("torch", t))
                row.append(f"{tr['median_ms'] / r['median_ms']:.2f}x" if r and tr else "-")
        rows.append(row)
    lines = [f"# zfraw forward against the thread count: {result['model']} {result['input_shape']}, "
             f"batch {result['batch']}", "", common.machine_line(info) + ".", "",
             f"Median of {result['repeat']} forwards after a warm-up, float32, each implementation and thread "
             f"count in a fresh worker started with {', '.join(THREAD_VARIABLES)} = T.  'x vs torch' = PyTorch "
             "ms / numba ms at the same T (above 1: numba faster).", "",
             common.markdown_table(headers, rows)]
    return "\n".join(lines) + "\n"


def main(argv=None, log=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts (default: 1 2 4 8 16 up to the CPUs, and all)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--backends", nargs="+", default=["numba"], help="zfraw CPU backends (default numba)")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--model", default="zfnet", help="zfnet (default) or zfnet_mini (small, for tests)")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--out", default=str(common.RESULTS))
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.image_size = common.image_side(args.model, args.image_size)
    if args.worker:
        worker(args.worker, args.worker_threads, args)
        return None

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or default_threads(cpus)
    if any(t < 1 for t in threads):
        parser.error(f"--threads must be >= 1, got {threads}")
    unknown = [b for b in args.backends if b not in zfraw.backends() or b in common.GPU_BACKENDS]
    if unknown:
        parser.error(f"--backends: {unknown[0]!r} is not a CPU backend that runs here ({zfraw.backends()})")
    impls = list(args.backends) + ([] if args.no_torch or not common.torch_installed() else ["torch"])
    info = common.machine_info(None, args.backends)
    rows = []
    for t in threads:
        for impl in impls:
            with thread_environment(t):
                out = common.run_worker(Path(__file__), [
                    "--worker", impl, "--worker-threads", t, "--batch", args.batch, "--repeat", args.repeat,
                    "--model", args.model, "--image-size", args.image_size, "--num-classes", args.num_classes],
                    memory=False, log=log)
            rows.append({"impl": impl, "threads": t, **out})
            log(f"  {t:>3} threads  {impl:<6} {out['median_ms']:9.1f} ms (IQR {out['iqr_ms']:.1f})  {out['threads_used']}")
    info["load_after"] = common.load_average()
    result = {"kind": "threads", "model": args.model, "input_shape": [3, args.image_size, args.image_size],
              "batch": args.batch, "repeat": args.repeat, "impls": impls, "threads": threads,
              "machine": info, "rows": rows}
    stem = common.result_stem("threads", info, impls) + ("" if args.model == "zfnet" else f"-{args.model}")
    paths = common.write_results(args.out, stem, result, markdown(result))
    log(f"wrote {paths[0]} and {paths[1]}")
    return result


if __name__ == "__main__":
    main()
