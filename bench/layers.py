"""Every ZFNet layer, timed on every zfraw backend beside PyTorch.

    python bench/layers.py [--quick] [--batch 1 16] [--backends numpy numba] [--out DIR]
                           [--no-torch] [--no-memory] [--max-load 0.7]

For each layer of the model (ZFNet at 3x224x224 by default) and each batch
size (1 and 16, plus 128 when a GPU backend runs):

- conv1..conv5: forward, backward (dx, dw, db) and the C^T projection
  (``conv_transpose2d``); and im2col / col2im of their geometry on the whole
  batch (against ``torch.nn.functional.unfold`` / ``fold``);
- pool1, pool2, pool5: max-pooling with switches, and unpooling through them;
- norm1, norm2: local response norm, forward and backward;
- fc6..fc8: forward.

Each case runs on every backend (``zfraw.backends()`` or ``--backends``) and on
PyTorch CPU (``torch.nn.functional``, same thread count), on the same seeded
inputs, in one run: each implementation in a worker process of its own, one
after the other (in one process PyTorch and Numba would share one OpenMP
runtime and its settings; see ``common.run_worker``).  Reported: the median and
interquartile range of ``--repeat`` runs after a warm-up, GFLOP/s for conv and
fc (2 F C/groups kh kw Ho Wo N flops a forward, twice that for a backward),
that rate as a share of the machine's own float32 GEMM rate (measured at the
start), and the peak memory of one call (the rise of the RSS high-water mark
in a worker subprocess per implementation and batch; see ``common.peak_delta``).
Results go to ``bench/results/layers-<cpu>-<cores>c-blas-<core>-<impls>.json``
and ``.md``.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (bench/ is a folder of scripts, not a package)

import zfraw  # noqa: E402
from zfraw import functional as F  # noqa: E402
from zfraw import nn  # noqa: E402
from zfraw.models import build  # noqa: E402

DEFAULT_BATCHES = (1, 16)
TORCH, TORCH_CUDA, TORCH_IMPLS = common.TORCH, common.TORCH_CUDA, common.TORCH_IMPLS


# ============================================================== the cases

def layer_shapes(net, input_shape):
    """[(name, layer, input shape (C, H, W) or (features,))] for every layer of ``net``."""
    shape, out = tuple(input_shape), []
    for name, layer in net:
        out.append((name, layer, shape))
        if isinstance(layer, nn.Conv2d):
            (kh, kw), (sh, sw), _ = layer.geometry
            shape = (layer.out_channels, F.conv_output_size(shape[1], kh, sh, layer.padding[:2]),
                     F.conv_output_size(shape[2], kw, sw, layer.padding[2:]))
        elif isinstance(layer, nn.MaxPool2d):
            (kh, kw), (sh, sw), _ = layer.geometry
            shape = (shape[0], F.pool_output_size(shape[1], kh, sh, layer.padding[:2], layer.ceil_mode),
                     F.pool_output_size(shape[2], kw, sw, layer.padding[2:], layer.ceil_mode))
        elif isinstance(layer, nn.Flatten):
            shape = (int(np.prod(shape)),)
        elif isinstance(layer, nn.Linear):
            shape = (layer.out_features,)
    return out


class Case:
    """One timed operation: ``make(rng)`` draws its host inputs, ``ours(a)`` and
    ``theirs(torch, t)`` turn inputs (backend arrays / torch tensors, by name)
    into a zero-argument callable."""

    def __init__(self, layer, op, kind, flops, make, ours, theirs):
        self.layer, self.op, self.kind, self.flops = layer, op, kind, flops
        self.make, self.ours, self.theirs = make, ours, theirs

    @property
    def key(self):
        return f"{self.layer} {self.op}"


def _normal(rng, shape, scale=1.0):
    return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))


def conv_cases(name, layer, in_shape, n):
    """forward, backward and C^T of a Conv2d layer on a batch of ``n``."""
    c, h, w = in_shape
    f, g = layer.out_channels, layer.groups
    (kh, kw), stride, pad = layer.geometry
    ho, wo = F.conv_output_size(h, kh, stride[0], pad[0]), F.conv_output_size(w, kw, stride[1], pad[1])
    flops = 2.0 * f * (c // g) * kh * kw * ho * wo * n
    out_pad = (h - ((ho - 1) * stride[0] - 2 * pad[0] + kh), w - ((wo - 1) * stride[1] - 2 * pad[1] + kw))

    def make(rng):
        return {"x": _normal(rng, (n, c, h, w)), "w": _normal(rng, (f, c // g, kh, kw), 0.01),
                "b": _normal(rng, (f,), 0.1), "dy": _normal(rng, (n, f, ho, wo))}

    def backward_torch(torch, t):
        return lambda: torch.ops.aten.convolution_backward(
            t["dy"], t["x"], t["w"], [f], list(stride), list(pad), [1, 1], False, [0, 0], g, [True, True, True])

    return [
        Case(name, "forward", "conv", flops, make,
             lambda a: lambda: F.conv2d(a["x"], a["w"], a["b"], stride, pad, g),
             lambda torch, t: lambda: torch.nn.functional.conv2d(t["x"], t["w"], t["b"], stride, pad, 1, g)),
        Case(name, "backward", "conv", 2 * flops, make,
             lambda a: lambda: F.conv2d_backward(a["dy"], a["x"], a["w"], stride, pad, g),
             backward_torch),
        Case(name, "C^T", "conv", flops, make,
             lambda a: lambda: F.conv_transpose2d(a["dy"], a["w"], stride, pad, g, output_shape=(h, w)),
             lambda torch, t: lambda: torch.nn.functional.conv_transpose2d(
                 t["dy"], t["w"], None, stride, pad, out_pad, g)),
    ] + unfold_cases(name, layer, in_shape, n)


def unfold_cases(name, layer, in_shape, n):
    """im2col and col2im of a Conv2d layer's geometry on the whole batch of ``n`` (one
    call, no tiling), against ``torch.nn.functional.unfold`` / ``fold``, which use the
    same column layout (N, C*kh*kw, Ho*Wo)."""
    c, h, w = in_shape
    (kh, kw), stride, pad = layer.geometry
    ho, wo = F.conv_output_size(h, kh, stride[0], pad[0]), F.conv_output_size(w, kw, stride[1], pad[1])

    def make(rng):
        return {"x": _normal(rng, (n, c, h, w)), "cols": _normal(rng, (n, c * kh * kw, ho * wo))}

    return [
        Case(name, "im2col", "unfold", None, make,
             lambda a: lambda: F.im2col(a["x"], kh, kw, stride, pad),
             lambda torch, t: lambda: torch.nn.functional.unfold(t["x"], (kh, kw), 1, pad, stride)),
        Case(name, "col2im", "unfold", None, make,
             lambda a: lambda: F.col2im(a["cols"], (n, c, h, w), kh, kw, stride, pad),
             lambda torch, t: lambda: torch.nn.functional.fold(t["cols"], (h, w), (kh, kw), 1, pad, stride)),
    ]


def pool_cases(name, layer, in_shape, n):
    """max-pool with switches and unpooling of a MaxPool2d layer."""
    c, h, w = in_shape
    size, stride, pad = layer.geometry
    ceil = layer.ceil_mode

    def make(rng):
        x = _normal(rng, (n, c, h, w))
        with zfraw.use_backend("numba" if "numba" in zfraw.backends() else "numpy"):
            y, switches = F.max_pool2d(x, size, stride, pad, ceil)
        return {"x": x, "y": _normal(rng, y.shape), "s": switches}

    return [
        Case(name, "pool", "pool", None, make,
             lambda a: lambda: F.max_pool2d(a["x"], size, stride, pad, ceil),
             lambda torch, t: lambda: torch.nn.functional.max_pool2d(
                 t["x"], size, stride, pad, ceil_mode=ceil, return_indices=True)),
        Case(name, "unpool", "pool", None, make,
             lambda a: lambda: F.max_unpool2d(a["y"], a["s"], (h, w), size=size, stride=stride, pad=pad),
             lambda torch, t: lambda: torch.nn.functional.max_unpool2d(
                 t["y"], t["s"], size, stride, pad, output_size=(h, w))),
    ]


def lrn_cases(name, layer, in_shape, n):
    """local response norm forward and backward."""
    args = (layer.size, layer.alpha, layer.beta, layer.k)

    def make(rng):
        return {"x": _normal(rng, (n,) + tuple(in_shape)), "dy": _normal(rng, (n,) + tuple(in_shape))}

    def backward_torch(torch, t):
        x = t["x"].detach().requires_grad_(True)
        y = torch.nn.functional.local_response_norm(x, *args)
        return lambda: torch.autograd.grad(y, x, t["dy"], retain_graph=True)

    return [
        Case(name, "forward", "lrn", None, make,
             lambda a: lambda: F.local_response_norm(a["x"], *args),
             lambda torch, t: lambda: torch.nn.functional.local_response_norm(t["x"], *args)),
        Case(name, "backward", "lrn", None, make,
             lambda a: lambda: F.local_response_norm_backward(a["dy"], a["x"], *args),
             backward_torch),
    ]


def fc_cases(name, layer, in_shape, n):
    fin, fout = layer.in_features, layer.out_features

    def make(rng):
        return {"x": _normal(rng, (n, fin)), "w": _normal(rng, (fout, fin), 0.01), "b": _normal(rng, (fout,), 0.1)}

    return [Case(name, "forward", "fc", 2.0 * n * fin * fout, make,
                 lambda a: lambda: F.linear(a["x"], a["w"], a["b"]),
                 lambda torch, t: lambda: torch.nn.functional.linear(t["x"], t["w"], t["b"]))]


_CASES = {nn.Conv2d: conv_cases, nn.MaxPool2d: pool_cases, nn.LocalResponseNorm: lrn_cases, nn.Linear: fc_cases}


def make_cases(model, image_size, n, only=None):
    """Every case of ``model`` (a name of :mod:`zfraw.models`) at batch ``n``, in layer order."""
    kwargs = {"input_size": image_size} if model == "zfnet_mini" else {}
    net = build(model, **kwargs)
    input_shape = (3, image_size, image_size)
    cases = []
    for name, layer, shape in layer_shapes(net, input_shape):
        maker = _CASES.get(type(layer))
        if maker is not None:
            cases += [c for c in maker(name, layer, shape, n) if only is None or c.key in only]
    return cases


# ============================================================== running

def _on_backend(arrays, backend):
    with zfraw.use_backend(backend):
        return {k: zfraw.to_device(v) for k, v in arrays.items()}


def _torch_tensors(torch, arrays, device="cpu"):
    return {k: torch.from_numpy(v).to(device) for k, v in arrays.items()}


def callables(case, arrays, impls, torch):
    """{impl: zero-argument callable} for one case (zfraw calls run under their backend)."""
    out = {}
    for impl in impls:
        if impl in TORCH_IMPLS:
            out[impl] = case.theirs(torch, _torch_tensors(torch, arrays, common.torch_device(impl)))
            continue
        fn = case.ours(_on_backend(arrays, impl))

        def run(fn=fn, impl=impl):
            with zfraw.use_backend(impl):
                return fn()
        out[impl] = run
    return out


def time_cases(cases, impls, repeat, torch, seed=2014, log=print):
    """Time every case on every impl (in this process); returns rows (dicts)."""
    rows = []
    for i, case in enumerate(cases):
        arrays = case.make(np.random.default_rng(seed + i))
        fns = callables(case, arrays, impls, torch)
        for impl, fn in fns.items():
            ctx = torch.no_grad() if impl in TORCH_IMPLS and case.op != "backward" else _Null()
            with ctx:
                t = common.time_call(fn, repeat=repeat, warmup=1, gpu=common.timer_for(impl))
            rows.append({"layer": case.layer, "op": case.op, "kind": case.kind, "impl": impl,
                         "flops": case.flops, "gflops": common.gflops(case.flops, t["median_ms"]), **t})
            log(f"  {case.key:<18} {impl:<10} {t['median_ms']:9.3f} ms (IQR {t['iqr_ms']:.3f})")
        del fns, arrays
        gc.collect()
    return rows


def time_worker(impl, batch, model, image_size, repeat, threads, only, gemm_size):
    """Worker process: time every case on one impl; prints progress, then JSON {rows, info, gemm}."""
    torch = common.import_torch(threads, cuda=impl == TORCH_CUDA) if impl in TORCH_IMPLS else None
    cases = make_cases(model, image_size, batch, only)
    rows = [dict(r, batch=batch) for r in time_cases(cases, [impl], repeat, torch)]
    info, gemm = {"numba_threading_layer": common.numba_layer()}, None
    if torch is not None:
        info.update(common.torch_info(torch, cuda=impl == TORCH_CUDA))
        gemm = _torch_gemm(torch, max(3, repeat), gemm_size, common.torch_device(impl))
    elif impl in common.GPU_BACKENDS:
        import cupy

        gemm = common.gemm_rates(cupy, repeat=max(3, repeat), size=gemm_size)
    print(json.dumps({"rows": rows, "info": info, "gemm": gemm}))


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def memory_worker(impl, batch, model, image_size, threads):
    """Peak memory (bytes) of one call of every case, for one impl and batch; prints JSON.

    A CPU impl: the rise of the process RSS high-water mark; a GPU impl: the peak
    of its GPU allocator above what was in use before (``common.gpu_peak_delta``).
    """
    torch = common.import_torch(threads, cuda=impl == TORCH_CUDA) if impl in TORCH_IMPLS else None
    out = {}
    for i, case in enumerate(make_cases(model, image_size, batch)):
        arrays = case.make(np.random.default_rng(2014 + i))
        fn = callables(case, arrays, [impl], torch)[impl]
        ctx = torch.no_grad() if impl in TORCH_IMPLS and case.op != "backward" else _Null()
        with ctx:
            fn()  # warm-up: compilation and one-time caches are not counted
            out[case.key] = (common.gpu_peak_delta(fn, impl) if impl in common.GPU_IMPLS
                             else common.peak_delta(fn))
        del fn, arrays
        gc.collect()
    print(json.dumps(out))


def measure_memory(impls, batch, model, image_size, threads, log=print):
    """{impl: {case key: bytes}} from one worker subprocess per impl (CPU: RSS; GPU: allocator peak)."""
    out = {}
    for impl in impls:
        log(f"  peak memory: {impl}, batch {batch}")
        out[impl] = common.run_worker(Path(__file__), ["--memory-worker", impl, "--batch", batch, "--model", model,
                                                       "--image-size", image_size, "--threads", threads])
    return out


# ============================================================== Markdown

def _row_index(rows):
    return {(r["batch"], r["layer"], r["op"], r["impl"]): r for r in rows}


def markdown(result):
    """The Markdown report of one layers result (and a CPU-vs-GPU section from any GPU results)."""
    info, rows, impls = result["machine"], result["rows"], result["impls"]
    index = _row_index(rows)
    backends = [i for i in impls if i not in TORCH_IMPLS]
    compared = [b for b in backends if common.reference_for(b) in impls]
    gemm = result["gemm"]["cpu"]
    lines = [f"# zfraw layers: {result['model']} {result['input_shape']}\n",
             common.machine_line(info) + ".\n",
             f"Median of {result['repeat']} runs after a warm-up, float32.  Ceiling: this machine's float32 "
             f"GEMM (NumPy/OpenBLAS, {info['threads'].get('openblas')} threads) runs "
             f"{gemm['square']['gflops']:.0f} GFLOP/s at 2048^3 and {gemm['conv_shaped']['gflops']:.0f} GFLOP/s "
             f"conv-shaped ({'x'.join(map(str, gemm['conv_shaped']['shape']))})"
             + (f"; PyTorch's (MKL) {result['gemm']['torch']['square']['gflops']:.0f} GFLOP/s at 2048^3"
                if result["gemm"].get("torch") else "")
             + (f"; the GPU's (CuPy/cuBLAS, float32, no TF32) {result['gemm']['gpu']['square']['gflops']:.0f} "
                f"GFLOP/s at 2048^3" if result["gemm"].get("gpu") else "") + ".  "
             "% GEMM = GFLOP/s / the 2048^3 rate (a GPU impl's: its GPU's).  'x vs torch' = PyTorch ms / backend "
             "ms (above 1: faster than PyTorch), a CPU backend against torch (CPU), a GPU backend against "
             "torch-cuda (cuDNN, TF32 off).  Peak memory: on the CPU the rise of the process RSS high-water mark "
             "during one call, on a GPU the peak of the allocator (CuPy's pool, PyTorch's caching allocator) "
             "above what was in use before (outputs and temporaries; inputs not counted).\n"]
    for batch in result["batches"]:
        keys = [(r["layer"], r["op"]) for r in rows if r["batch"] == batch and r["impl"] == impls[0]]
        headers = (["layer", "op"] + [f"{i} ms (IQR)" for i in impls] + [f"{i} GFLOP/s (% GEMM)" for i in impls]
                   + [f"{b} x vs {common.reference_for(b)}" for b in compared]
                   + [f"{b} x vs numpy" for b in backends if b != "numpy" and "numpy" in backends])
        table = []
        for layer, op in keys:
            cells = [layer, op]
            got = {i: index.get((batch, layer, op, i)) for i in impls}
            cells += [f"{common.fmt(r['median_ms'], 2)} ({common.fmt(r['iqr_ms'], 2)})" if r else "-"
                      for r in got.values()]
            for impl, r in got.items():
                ceiling = result["gemm"].get("gpu" if impl in common.GPU_IMPLS else "cpu", gemm)
                if r and r.get("gflops"):
                    rate = r["gflops"]
                    cells.append(f"{common.fmt(rate, 0 if rate >= 10 else 1)} "
                                 f"({100 * rate / ceiling['square']['gflops']:.0f}%)")
                else:
                    cells.append("-")
            cells += [common.fmt(_ratio(got[common.reference_for(b)], got[b]), 2, "x") for b in compared]
            if "numpy" in backends:
                cells += [common.fmt(_ratio(got["numpy"], got[b]), 2, "x") for b in backends if b != "numpy"]
            table.append(cells)
        lines.append(f"\n## Batch {batch}: time\n")
        lines.append(common.markdown_table(headers, table, "ll" + "r" * (len(headers) - 2)))
        mem = result.get("memory", {}).get(str(batch))
        if mem:
            mem_impls = [i for i in impls if i in mem]
            table = [[layer, op] + [common.fmt(common.mib(mem[i].get(f"{layer} {op}")), 1) for i in mem_impls]
                     for layer, op in keys]
            lines.append(f"\n## Batch {batch}: peak memory of one call (MiB)\n")
            lines.append(common.markdown_table(["layer", "op"] + mem_impls, table, "ll" + "r" * len(mem_impls)))
    lines.append(gpu_section(result.get("out_dir")))
    return "\n".join(lines)


def _ratio(ref, r):
    if not ref or not r or not r["median_ms"]:
        return None
    return ref["median_ms"] / r["median_ms"]


def gpu_section(out_dir):
    """CPU-vs-GPU speed-ups for every layers result in ``out_dir`` that has GPU rows
    (see ``common.cpu_gpu_pairs`` for what each is compared with): a table per batch."""
    def render(gpus, cpus, rows):
        index, blocks = _row_index(rows), []
        for batch in sorted({r["batch"] for r in rows if r["impl"] in gpus}
                            & {r["batch"] for r in rows if r["impl"] in cpus}):
            keys = [(r["layer"], r["op"]) for r in rows if r["batch"] == batch and r["impl"] == gpus[0]]
            table = [[layer, op] + common.speedup_cells({i: index.get((batch, layer, op, i)) for i in gpus + cpus},
                                                        gpus, cpus, 3) for layer, op in keys]
            headers = ["layer", "op"] + common.speedup_headers(gpus, cpus)
            blocks += [f"\n### Batch {batch}\n", common.markdown_table(headers, table, "ll" + "r" * (len(headers) - 2))]
        return blocks

    return common.gpu_section(out_dir, "layers", render)


# ============================================================== main

def main(argv=None, log=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_arguments(parser, DEFAULT_BATCHES)
    parser.add_argument("--model", default="zfnet", help="zfnet (default) or zfnet_mini (small, for tests)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the model's own)")
    parser.add_argument("--cases", nargs="+", default=None, help="only these cases, e.g. 'conv1 forward'")
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--time-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    image_size = common.image_side(args.model, args.image_size)

    if args.memory_worker:
        memory_worker(args.memory_worker, args.batch[0], args.model, image_size, args.threads)
        return None

    if args.time_worker:
        time_worker(args.time_worker, args.batch[0], args.model, image_size, args.repeat, args.threads,
                    args.cases, args.gemm_size)
        return None

    backends, batches, repeat = common.resolve_common(args, DEFAULT_BATCHES)
    threads = common.cpu_threads()
    with_torch = not args.no_torch and common.torch_installed()
    impls = backends + (common.torch_impls(args.torch_devices, backends) if with_torch else [])
    if not with_torch and not args.no_torch:
        log("PyTorch is not installed: no torch column")
    if args.max_load is not None:
        common.wait_for_quiet(args.max_load, args.max_wait, log=log)
    info = common.machine_info(None, backends)

    log("GEMM ceiling")
    gemm = {"cpu": common.gemm_rates(repeat=max(3, repeat), size=args.gemm_size)}
    rows, memory = [], {}
    script = Path(__file__)
    for batch in batches:
        for impl in impls:  # each in a fresh process (see common.run_worker)
            log(f"batch {batch}, {impl}")
            out = common.run_worker(script, [
                "--time-worker", impl, "--batch", batch, "--model", args.model, "--image-size", image_size,
                "--repeat", repeat, "--threads", threads, "--gemm-size", args.gemm_size]
                + (["--cases", *args.cases] if args.cases else []), memory=False, log=log)
            rows += out["rows"]
            info.setdefault("workers", {})[impl] = out["info"]
            if impl in TORCH_IMPLS:
                info.update({k: v for k, v in out["info"].items() if k.startswith("torch")})
                if impl == TORCH:
                    info["threads"]["torch"] = out["info"]["torch_threads"]
                gemm[impl] = out["gemm"]
            elif out["gemm"]:
                gemm["gpu"] = out["gemm"]
        if not args.no_memory and common.memory_supported():
            memory[str(batch)] = measure_memory(impls, batch, args.model, image_size, threads, log=log)
    info["load_after"] = common.load_average()
    info["numba_threading_layer"] = info.get("workers", {}).get("numba", {}).get("numba_threading_layer")
    result = {"kind": "layers", "model": args.model, "input_shape": [3, image_size, image_size],
              "batches": batches, "repeat": repeat, "quick": args.quick, "impls": impls, "backends": backends,
              "machine": info, "gemm": gemm, "rows": rows, "memory": memory,
              "memory_method": None if args.no_memory else "RSS high-water-mark rise in a worker subprocess",
              "gpu_note": None if any(b in common.GPU_BACKENDS for b in backends)
              else "no GPU backend ran (CuPy or a CUDA GPU missing): GPU rows skipped"}
    result["out_dir"] = args.out
    stem = common.result_stem("layers", info, impls) + ("" if args.model == "zfnet" else f"-{args.model}")
    paths = common.write_results(args.out, stem, result, lambda: markdown(result))
    log(f"wrote {paths[0]} and {paths[1]}")
    return result


def _torch_gemm(torch, repeat, size=2048, device="cpu"):
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    c = torch.empty(size, size, device=device)
    t = common.time_call(lambda: torch.mm(a, b, out=c), repeat=repeat, warmup=2,
                         gpu="torch" if device == "cuda" else False)
    return {"square": {"shape": [size] * 3, "gflops": common.gflops(2.0 * size ** 3, t["median_ms"]), **t}}


if __name__ == "__main__":
    main()
