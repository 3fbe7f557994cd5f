"""zfraw's numba convolutions with PyTorch in the same process, in both import orders.

    python bench/same_process.py [--quick] [--batch 16] [--rounds 2] [--cases "conv3 forward" ...]

A user who compares zfraw with PyTorch, or loads a torch model, has both in
one process.  Both use OpenMP, and a process has one GNU OpenMP runtime, whose
wait policy is fixed by whoever loads it first; ``zfraw.kernels.cpu`` chooses
Numba's threading layer so that this does not matter (its ``_start_threads``).
This script checks it: each *order* runs in a fresh worker process --

- ``alone``: zfraw's numba backend, PyTorch never imported (the separate-process
  column, as in ``layers.py``);
- ``torch first``: ``import torch``, then the numba backend is loaded;
- ``torch after``: the numba backend is loaded, then ``import torch``;

and times the conv cases of ``layers.py`` (forward, backward and C^T of
conv1..conv5, batch 16) on numba, on the layer's conv-shaped GEMM and, where
torch is there, on PyTorch, alternating them call by call.  The workers run ``--rounds`` times in turn
(alone, torch first, torch after, alone, ...), so slow drifts of a shared
machine's load hit every order alike; each figure is the median over all the
rounds' repeats.  Reported: numba ms per order, the ratio of each same-process
order to ``alone`` (the target: within 1.1x), PyTorch ms in each process, the
conv-shaped GEMM (NumPy's BLAS) timed in the same alternation as the ceiling,
and the threading layer Numba ran on.  Results go to
``bench/results/same-process-<cpu>-<cores>c-blas-<core>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ORDERS = ("alone", "torch first", "torch after")
DEFAULT_CASES = [f"conv{i} {op}" for i in range(1, 6) for op in ("forward", "backward", "C^T")]


def _load(order, threads):
    """Import torch and load the numba backend in ``order``; returns (torch or None, zfraw)."""
    torch = common.import_torch(threads) if order == "torch first" else None
    import zfraw

    zfraw.set_backend("numba")
    if order == "torch after":
        torch = common.import_torch(threads)
    return torch, zfraw


def worker(order, batch, repeat, threads, cases, model="zfnet", image_size=224):
    """Time every case in this process (set up in ``order``); prints JSON {rows, info}."""
    import json

    torch, zfraw = _load(order, threads)
    import layers  # after _load: importing it imports zfraw, never the numba backend first

    from zfraw.kernels import cpu

    rows = []
    for i, case in enumerate(layers.make_cases(model, image_size, batch, set(cases))):
        arrays = case.make(np.random.default_rng(2014 + i))
        fns = layers.callables(case, arrays, ["numba"] + ([common.TORCH] if torch is not None else []), torch)
        fns["gemm"] = conv_gemm(arrays, case)
        seconds = {impl: [] for impl in fns}
        for fn in fns.values():
            fn()  # warm-up (and Numba's compilation)
        grad = torch is not None and case.op != "backward"
        for _ in range(repeat):
            for impl, fn in fns.items():  # alternate: numba, torch, numba, torch, ...
                with (torch.no_grad() if grad and impl == common.TORCH else layers._Null()):
                    t0 = time.perf_counter()
                    fn()
                    seconds[impl].append(time.perf_counter() - t0)
        for impl, s in seconds.items():
            rows.append({"layer": case.layer, "op": case.op, "impl": impl, "order": order, "seconds": s,
                         "flops": case.flops})
        print(f"  {order:<12} {case.key:<16} " + "  ".join(
            f"{impl} {1e3 * statistics.median(s):8.2f} ms" for impl, s in seconds.items()), flush=True)
    info = {"numba_threading_layer": cpu.threading_layer(), "numba_threads": cpu.numba.get_num_threads()}
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
    print(json.dumps({"rows": rows, "info": info}))


def conv_gemm(arrays, case):
    """The conv-shaped GEMM of a case, (F, C kh kw) x (C kh kw, N Ho Wo) float32 on NumPy's
    BLAS (once for forward and C^T, twice for backward: dx and dw), timed beside it as
    this moment's ceiling."""
    w, dy = arrays["w"], arrays["dy"]
    f, k = w.shape[0], int(np.prod(w.shape[1:]))
    q = dy.shape[0] * dy.shape[2] * dy.shape[3]
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((f, k), dtype=np.float32), rng.standard_normal((k, q), dtype=np.float32)
    out = np.empty((f, q), np.float32)
    times = 2 if case.op == "backward" else 1

    def run():
        for _ in range(times):
            np.matmul(a, b, out=out)
    return run


def summarize(rows):
    """{(layer, op): {(order, impl): median ms}} over every round."""
    pooled = {}
    for r in rows:
        pooled.setdefault((r["layer"], r["op"]), {}).setdefault((r["order"], r["impl"]), []).extend(r["seconds"])
    return {k: {kk: 1e3 * statistics.median(v) for kk, v in d.items()} for k, d in pooled.items()}


def markdown(result):
    info = result["machine"]
    layers_used = result["threading_layers"]
    lines = [f"# zfraw numba convolutions beside PyTorch in one process ({result['model']}, batch {result['batch']})", "",
             common.machine_line(info) + ".", "",
             f"{result['rounds']} rounds of one fresh worker process per order ({', '.join(ORDERS)}), "
             f"{result['repeat']} timed calls per case and round after a warm-up, numba and PyTorch alternating "
             "call by call; median ms over all rounds, float32.  Numba's threading layer: "
             + ", ".join(f"{o}: {layers_used.get(o)}" for o in ORDERS) + ".  "
             "'x alone' = numba ms in that process / numba ms with PyTorch never imported (target: at most 1.1x).  "
             "GEMM: the conv-shaped float32 GEMM (F, C kh kw) x (C kh kw, N Ho Wo) on NumPy's BLAS (twice for a "
             "backward), timed in the same alternation: 'numba % of GEMM' = GEMM ms / numba ms.  'numba vs torch' = "
             "torch ms / numba ms in the same process (above 1: numba faster).",
             ""]
    headers = ["layer", "op", "numba alone ms", "GEMM alone ms", "numba % of GEMM", "numba, torch first ms",
               "x alone", "numba, torch after ms", "x alone", "torch (torch first) ms", "numba vs torch (first)",
               "torch (torch after) ms", "numba vs torch (after)"]
    body = []
    for (layer, op), t in result["summary"].items():
        alone = t.get(("alone", "numba"))
        first, after = t.get(("torch first", "numba")), t.get(("torch after", "numba"))
        gemm = t.get(("alone", "gemm"))
        t_first, t_after = t.get(("torch first", common.TORCH)), t.get(("torch after", common.TORCH))
        body.append([layer, op, common.fmt(alone, 2), common.fmt(gemm, 2),
                     common.fmt(100 * gemm / alone if gemm and alone else None, 0, "%"), common.fmt(first, 2),
                     common.fmt(first / alone if first and alone else None, 2, "x"), common.fmt(after, 2),
                     common.fmt(after / alone if after and alone else None, 2, "x"),
                     common.fmt(t_first, 2), common.fmt(t_first / first if t_first and first else None, 2, "x"),
                     common.fmt(t_after, 2), common.fmt(t_after / after if t_after and after else None, 2, "x")])
    return "\n".join(lines) + "\n" + common.markdown_table(headers, body)


def main(argv=None, log=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 repeats and 1 round (a rough look)")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls per case and round (default 5)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the three workers (default 2)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="e.g. 'conv3 forward'")
    parser.add_argument("--model", default="zfnet", help="zfnet (default) or zfnet_mini (small, for tests)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the model's own)")
    parser.add_argument("--out", default=str(common.RESULTS))
    parser.add_argument("--max-load", type=float, default=None)
    parser.add_argument("--max-wait", type=float, default=900)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeat = args.repeat or (2 if args.quick else 5)
    rounds = args.rounds or (1 if args.quick else 2)
    image_size = common.image_side(args.model, args.image_size)
    if args.worker:
        worker(args.worker, args.batch, repeat, args.threads, args.cases, args.model, image_size)
        return None
    if not common.torch_installed():
        raise SystemExit("same_process.py needs PyTorch (pip install torch)")
    if args.max_load is not None:
        common.wait_for_quiet(args.max_load, args.max_wait, log=log)
    info = common.machine_info()
    threads = common.cpu_threads()
    rows, layers_used = [], {}
    for r in range(rounds):
        for order in ORDERS:
            log(f"round {r + 1}/{rounds}: {order}")
            out = common.run_worker(Path(__file__), ["--worker", order, "--batch", args.batch, "--repeat", repeat,
                                                     "--threads", threads, "--model", args.model,
                                                     "--image-size", image_size, "--cases", *args.cases],
                                    memory=False, log=log)
            rows += out["rows"]
            layers_used[order] = out["info"]["numba_threading_layer"]
            info.setdefault("workers", {})[order] = out["info"]
    info["load_after"] = common.load_average()
    info["threads"]["torch"] = info["workers"]["torch first"].get("torch_threads")
    summary = summarize(rows)
    result = {"kind": "same-process", "model": args.model, "batch": args.batch, "repeat": repeat, "rounds": rounds,
              "machine": info, "threading_layers": layers_used, "rows": rows,
              "summary": {k: dict(v) for k, v in summary.items()}}
    text = markdown(result)
    result["summary"] = [{"layer": k[0], "op": k[1], "median_ms": [[o, i, ms] for (o, i), ms in v.items()]}
                         for k, v in summary.items()]
    stem = common.result_stem("same-process", info, []).rstrip("-") + (
        "" if args.model == "zfnet" else f"-{args.model}")
    paths = common.write_results(args.out, stem, result, text)
    log(f"wrote {paths[0]} and {paths[1]}")
    return result


if __name__ == "__main__":
    main()
