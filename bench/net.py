"""The whole ZFNet, timed on every zfraw backend beside the same network in PyTorch.

    python bench/net.py [--quick] [--batch 1 16] [--train-batch 16] [--backends numpy numba]
                        [--out DIR] [--no-torch] [--no-memory] [--memory-batch 64] [--max-load 0.7]

Tasks, each side by side with PyTorch CPU (same thread count) on the same
weights and images, each implementation timed in a worker process of its own
(see ``common.run_worker``):

- ``forward``: inference at each ``--batch`` (1 and 16; 128 on a GPU):
  ``net.forward(x, keep=False, cache=False)`` in evaluation mode, against
  ``model(x)`` under ``torch.no_grad()``;
- ``train_step``: forward, cross-entropy, backward and an SGD step (momentum
  0.9, weight decay 5e-4, the paper's conv-filter RMS renormalization in both)
  at ``--train-batch`` (16), ``zfraw.train.train_step`` against autograd and
  ``torch.optim.SGD``;
- ``project_conv5``: ``zfraw.deconvnet.project(net, x, "conv5")`` (forward to
  conv5, keep each image's strongest conv5 activation, deconvnet down to the
  pixels) against its closest PyTorch analogue, the gradient of that same
  activation with respect to the input (forward with autograd, then backward);
- peak memory of one batch-``--memory-batch`` (64) forward: ours without
  caches (``cache=False``; and with them, for reference) against PyTorch under
  ``no_grad``, both with plain ``ReLU`` and with ``ReLU(inplace=True)``
  (torchvision's choice) -- the rise of the RSS high-water mark in a worker
  subprocess (weights and input are resident before and not counted).

The PyTorch network is built from zfraw's own layer list with zfraw's weights
copied in; the largest relative difference of their outputs is recorded, as a
check that both compute the same function.  Results go to
``bench/results/net-<cpu>-<cores>c-blas-<core>-<impls>.json`` and ``.md``.
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
from zfraw import deconvnet, nn  # noqa: E402
from zfraw.models import build  # noqa: E402
from zfraw.train import SGD, train_step  # noqa: E402

DEFAULT_BATCHES = (1, 16)
TORCH, TORCH_CUDA, TORCH_IMPLS = common.TORCH, common.TORCH_CUDA, common.TORCH_IMPLS
PROJECT_LAYER = "conv5"
LR = 1e-4  # small: the timed steps must not blow the random network up


# ============================================================== the networks

def our_net(model, image_size, num_classes, backend):
    """A seeded zfraw network on ``backend`` (every call gives the same weights)."""
    kwargs = {"num_classes": num_classes, "seed": 0}
    if model == "zfnet_mini":
        kwargs["input_size"] = image_size
    with zfraw.use_backend(backend):
        return zfraw.to_device(build(model, **kwargs))


def torch_net(torch, net, inplace=False):
    """The same network in PyTorch, zfraw's weights copied in."""
    tnn = torch.nn
    modules = []
    for _, layer in net:
        if isinstance(layer, nn.Conv2d):
            m = tnn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.pad,
                           groups=layer.groups, bias="b" in layer.params)
        elif isinstance(layer, nn.ReLU):
            m = tnn.ReLU(inplace=inplace)
        elif isinstance(layer, nn.MaxPool2d):
            m = tnn.MaxPool2d(layer.size, layer.stride, layer.pad, ceil_mode=layer.ceil_mode)
        elif isinstance(layer, nn.LocalResponseNorm):
            m = tnn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
        elif isinstance(layer, nn.Flatten):
            m = tnn.Flatten()
        elif isinstance(layer, nn.Linear):
            m = tnn.Linear(layer.in_features, layer.out_features, bias="b" in layer.params)
        elif isinstance(layer, nn.Dropout):
            m = tnn.Dropout(layer.p)
        else:
            raise TypeError(f"no PyTorch equivalent for {type(layer).__name__}")
        with torch.no_grad():
            for pname, p in layer.params.items():
                getattr(m, {"w": "weight", "b": "bias"}[pname]).copy_(torch.from_numpy(zfraw.to_host(p)))
        modules.append(m)
    return tnn.Sequential(*modules)


def torch_renormalize(torch, model, radius=0.1):
    """Scale every conv filter whose RMS exceeds ``radius`` back to it (as zfraw.train does)."""
    with torch.no_grad():
        for m in model:
            if isinstance(m, torch.nn.Conv2d):
                rms = m.weight.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
                m.weight.mul_(torch.clamp(radius / rms, max=1.0))


# ============================================================== tasks

def images(batch, image_size, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, image_size, image_size), dtype=np.float32)


def labels_for(batch, num_classes, seed=1):
    return np.random.default_rng(seed).integers(0, num_classes, size=batch)


def our_tasks(backend, net, x, labels, opt):
    """{task: callable} for one zfraw backend (arrays already on it)."""
    def forward():
        with zfraw.use_backend(backend):
            net.eval()
            return net.forward(x, keep=False, cache=False)

    def step():
        with zfraw.use_backend(backend):
            return train_step(net, x, labels, opt)

    def project():
        with zfraw.use_backend(backend):
            return deconvnet.project(net, x, PROJECT_LAYER)

    return {"forward": forward, "train_step": step, "project_conv5": project}


def torch_tasks(torch, model, x, labels, opt, project_index):
    """{task: callable} for the PyTorch network."""
    loss_fn = torch.nn.CrossEntropyLoss()

    def forward():
        model.eval()
        with torch.no_grad():
            return model(x)

    def step():
        model.train()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), labels)
        loss.backward()
        opt.step()
        torch_renormalize(torch, model)
        return loss.item()

    def project():
        model.eval()
        xg = x.detach().requires_grad_(True)
        a = model[:project_index + 1](xg)
        strongest = a.flatten(1).max(dim=1).values  # each image's strongest conv5 activation
        (grad,) = torch.autograd.grad(strongest.sum(), xg)
        return grad

    return {"forward": forward, "train_step": step, "project_conv5": project}


def time_tasks(args, impl, torch, repeat, log=print):
    """Rows for every (task, batch) on one impl, in this process.

    One network serves the forward and projection tasks; the training step,
    which changes the weights, gets a fresh one.
    """
    rows = []
    plan = [("forward", b) for b in args.batches] + [("project_conv5", b) for b in args.batches]
    plan.append(("train_step", args.train_batch))
    host_net = our_net(args.model, args.image_size, args.num_classes, "numpy")
    project_index = host_net.names.index(PROJECT_LAYER)
    for task, batch in plan:
        x_host, y_host = images(batch, args.image_size), labels_for(batch, args.num_classes)
        fresh = task == "train_step"
        if impl in TORCH_IMPLS:
            device = common.torch_device(impl)
            model = torch_net(torch, our_net(args.model, args.image_size, args.num_classes, "numpy")
                              if fresh else host_net).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9, weight_decay=5e-4)
            x, labels = torch.from_numpy(x_host).to(device), torch.from_numpy(y_host).to(device)
            fn = torch_tasks(torch, model, x, labels, opt, project_index)[task]
        else:
            net = our_net(args.model, args.image_size, args.num_classes, impl) if fresh or impl != "numpy" \
                else host_net
            with zfraw.use_backend(impl):
                x, labels = zfraw.to_device(x_host), zfraw.to_device(y_host)
                opt = SGD(net, lr=LR) if fresh else None
            fn = our_tasks(impl, net, x, labels, opt)[task]
        t = common.time_call(fn, repeat=repeat, warmup=1, gpu=common.timer_for(impl))
        rows.append({"task": task, "batch": batch, "impl": impl, "images_per_s": 1e3 * batch / t["median_ms"], **t})
        log(f"  {task:<14} batch {batch:<4} {impl:<10} {t['median_ms']:9.2f} ms (IQR {t['iqr_ms']:.2f})")
        del fn
        gc.collect()
    return rows


def time_worker(args, impl):
    """Worker process: time every task on one impl; prints progress, then JSON
    {rows, info, agreement, gpu_memory}."""
    cuda = impl == TORCH_CUDA
    torch = common.import_torch(args.threads, cuda=cuda) if impl in TORCH_IMPLS else None
    rows = time_tasks(args, impl, torch, args.repeat)
    info, agree, memory = {"numba_threading_layer": common.numba_layer()}, None, None
    if torch is not None:
        info.update(common.torch_info(torch, cuda=cuda))
        # the GPU column is checked against zfraw's cuda backend, on the GPU
        backend = ("cuda" if "cuda" in args.backends_run else args.backends_run[0]) if cuda else "numpy"
        agree = agreement(args, torch, backend, common.torch_device(impl))
    if impl in common.GPU_IMPLS and not args.no_memory:
        memory = gpu_memory(args, impl, torch)
    print(json.dumps({"rows": rows, "info": info, "agreement": agree, "gpu_memory": memory}))


def agreement(args, torch, backend, device="cpu"):
    """Largest |ours - torch| / max|torch| of the forward outputs at batch 2 (a same-function check):
    zfraw on ``backend`` against PyTorch on ``device``."""
    net = our_net(args.model, args.image_size, args.num_classes, backend)
    model = torch_net(torch, our_net(args.model, args.image_size, args.num_classes, "numpy")).to(device)
    x = images(2, args.image_size, seed=5)
    with zfraw.use_backend(backend):
        net.eval()
        ours = zfraw.to_host(net.forward(zfraw.to_device(x), keep=False, cache=False))
    model.eval()
    with torch.no_grad():
        theirs = model(torch.from_numpy(x).to(device)).cpu().numpy()
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def gpu_memory(args, impl, torch):
    """{variant: bytes}: GPU allocator peak of one batch-``memory_batch`` forward
    (``common.gpu_peak_delta``), in this worker; the variants of ``measure_memory``."""
    x_host = images(args.memory_batch, args.image_size)
    out = {}
    if impl == TORCH_CUDA:
        for variant, inplace in ((impl, False), (f"{impl} inplace ReLU", True)):
            model = torch_net(torch, our_net(args.model, args.image_size, args.num_classes, "numpy"),
                              inplace=inplace).to("cuda").eval()
            x = torch.from_numpy(x_host).to("cuda")

            def fn(model=model, x=x):
                with torch.no_grad():
                    return model(x)
            fn()  # warm-up: cuDNN's algorithm search is not counted
            out[variant] = common.gpu_peak_delta(fn, impl)
            del model, x, fn
        return out
    net = our_net(args.model, args.image_size, args.num_classes, impl)
    net.eval()
    with zfraw.use_backend(impl):
        x = zfraw.to_device(x_host)
    for cache in (False, True):
        def fn(cache=cache):
            with zfraw.use_backend(impl):
                out = net.forward(x, keep=False, cache=cache)
                net.clear()  # (after the peak was reached)
                return out
        fn()
        out[f"{impl} cache={cache}"] = common.gpu_peak_delta(fn, impl)
    return out


# ============================================================== memory

def memory_worker(variant, backend, batch, model, image_size, num_classes, threads):
    """Peak extra memory (bytes) of one forward; prints JSON {variant: bytes}."""
    x_host = images(batch, image_size)
    if variant.startswith(TORCH):
        torch = common.import_torch(threads)
        net = torch_net(torch, our_net(model, image_size, num_classes, "numpy"), inplace="inplace" in variant)
        net.eval()
        x = torch.from_numpy(x_host)

        def fn():
            with torch.no_grad():
                return net(x)
    else:
        cache = variant.endswith("cache=True")
        net = our_net(model, image_size, num_classes, backend)
        net.eval()

        def fn():
            with zfraw.use_backend(backend):
                out = net.forward(x_host, keep=False, cache=cache)
                net.clear()  # (after the peak was reached: drops the caches before the next call)
                return out
    fn()  # warm-up (compilation, oneDNN primitives)
    print(json.dumps({variant: common.peak_delta(fn)}))


def measure_memory(args, backends, with_torch, threads, log=print):
    """{variant: bytes} of a batch-``memory_batch`` forward for each CPU backend and PyTorch."""
    out = {}
    jobs = [(f"{b} cache={c}", b) for b in backends if b not in common.GPU_BACKENDS for c in (False, True)]
    if with_torch and TORCH in with_torch:
        jobs += [("torch", "numpy"), ("torch inplace ReLU", "numpy")]
    for variant, backend in jobs:
        log(f"  peak memory: {variant}, batch {args.memory_batch}")
        out.update(common.run_worker(Path(__file__), [
            "--memory-worker", variant, "--memory-backend", backend, "--memory-batch", args.memory_batch,
            "--model", args.model, "--image-size", args.image_size, "--num-classes", args.num_classes,
            "--threads", threads]))
    return out


# ============================================================== Markdown

def markdown(result):
    info, rows, impls = result["machine"], result["rows"], result["impls"]
    backends = [i for i in impls if i not in TORCH_IMPLS]
    compared = [b for b in backends if common.reference_for(b) in impls]
    index = {(r["task"], r["batch"], r["impl"]): r for r in rows}
    lines = [f"# zfraw whole network: {result['model']} {result['input_shape']}, {result['num_classes']} classes\n",
             common.machine_line(info) + ".\n",
             f"Median of {result['repeat']} runs after a warm-up, float32, ms per call (IQR); GPU columns timed "
             "with CUDA events.  'x vs torch' = PyTorch ms / backend ms (above 1: faster than PyTorch), a CPU "
             "backend against torch (CPU), a GPU backend against torch-cuda (cuDNN, TF32 off).  forward: "
             "evaluation mode, "
             "`cache=False` / `torch.no_grad()`; train_step: forward + cross-entropy + backward + SGD "
             f"(batch {result['train_batch']}); project_conv5: zfraw's deconvnet from each image's strongest "
             "conv5 activation to the pixels vs PyTorch's gradient of that activation w.r.t. the input."
             + (f"  Outputs of the two networks agree to {result['agreement']:.1e} (max abs diff / max abs)."
                if result.get("agreement") is not None else "")
             + (f"  On the GPU, zfraw's cuda backend and torch-cuda agree to {result['agreement_gpu']:.1e}."
                if result.get("agreement_gpu") is not None else "") + "\n"]
    headers = (["task", "batch"] + [f"{i} ms (IQR)" for i in impls] + [f"{i} images/s" for i in impls]
               + [f"{b} x vs {common.reference_for(b)}" for b in compared])
    table = []
    for task, batch in dict.fromkeys((r["task"], r["batch"]) for r in rows):
        got = {i: index.get((task, batch, i)) for i in impls}
        cells = [task, batch]
        cells += [f"{common.fmt(r['median_ms'], 1)} ({common.fmt(r['iqr_ms'], 1)})" if r else "-" for r in got.values()]
        cells += [common.fmt(r["images_per_s"], 1) if r else "-" for r in got.values()]
        cells += [common.fmt(got[common.reference_for(b)]["median_ms"] / got[b]["median_ms"], 2, "x")
                  if got[common.reference_for(b)] and got[b] else "-" for b in compared]
        table.append(cells)
    lines.append("\n## Time\n")
    lines.append(common.markdown_table(headers, table, "ll" + "r" * (len(headers) - 2)))
    mem = result.get("memory")
    if mem:
        ref = mem.get("torch")
        lines.append(f"\n## Peak memory of one batch-{result['memory_batch']} forward\n")
        lines.append("Rise of the process RSS high-water mark during the call (the weights and the input are "
                     "already resident and not counted); ratio = this / PyTorch (plain ReLU).\n")
        table = [[k, common.fmt(common.mib(v), 0), common.fmt(v / ref, 2, "x") if ref else "-"] for k, v in mem.items()]
        lines.append(common.markdown_table(["variant", "peak MiB", "vs torch"], table))
    gmem = result.get("gpu_memory")
    if gmem:
        ref = gmem.get(TORCH_CUDA)
        lines.append(f"\n## Peak GPU memory of one batch-{result['memory_batch']} forward\n")
        lines.append("Peak of the GPU allocator during the call above what was in use before (CuPy's memory pool "
                     "for zfraw, PyTorch's caching allocator for torch-cuda, cuDNN workspace included); "
                     "ratio = this / torch-cuda (plain ReLU).\n")
        table = [[k, common.fmt(common.mib(v), 0), common.fmt(v / ref, 2, "x") if ref else "-"]
                 for k, v in gmem.items()]
        lines.append(common.markdown_table(["variant", "peak MiB", "vs torch-cuda"], table))
    lines.append(gpu_section(result.get("out_dir")))
    return "\n".join(lines)


def gpu_section(out_dir):
    """CPU-vs-GPU speed-ups for every net result in ``out_dir`` that has GPU rows
    (see ``common.cpu_gpu_pairs`` for what each is compared with): one table."""
    def render(gpus, cpus, rows):
        index = {(r["task"], r["batch"], r["impl"]): r for r in rows}
        shared = [k for k in dict.fromkeys((r["task"], r["batch"]) for r in rows if r["impl"] in gpus)
                  if any((*k, i) in index for i in cpus)]
        if not shared:
            return ["(no task and batch measured in both)\n"]
        table = [[task, batch] + common.speedup_cells({i: index.get((task, batch, i)) for i in gpus + cpus},
                                                      gpus, cpus, 2) for task, batch in shared]
        headers = ["task", "batch"] + common.speedup_headers(gpus, cpus)
        return [common.markdown_table(headers, table, "ll" + "r" * (len(headers) - 2))]

    return common.gpu_section(out_dir, "net", render)


# ============================================================== main

def main(argv=None, log=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    common.common_arguments(parser, DEFAULT_BATCHES)
    parser.add_argument("--train-batch", type=int, default=16, help="batch of the training step (default 16)")
    parser.add_argument("--memory-batch", type=int, default=64, help="batch of the peak-memory forward (default 64)")
    parser.add_argument("--model", default="zfnet", help="zfnet (default) or zfnet_mini (small, for tests)")
    parser.add_argument("--image-size", type=int, default=None, help="input side (default: the model's own)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--memory-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--memory-backend", default="numpy", help=argparse.SUPPRESS)
    parser.add_argument("--time-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.image_size = common.image_side(args.model, args.image_size)

    if args.memory_worker:
        memory_worker(args.memory_worker, args.memory_backend, args.memory_batch, args.model, args.image_size,
                      args.num_classes, args.threads)
        return None

    backends, args.batches, repeat = common.resolve_common(args, DEFAULT_BATCHES)
    args.backends_run = backends
    if args.time_worker:
        args.repeat = repeat
        time_worker(args, args.time_worker)
        return None

    threads = common.cpu_threads()
    with_torch = not args.no_torch and common.torch_installed()
    torch_impls = common.torch_impls(args.torch_devices, backends) if with_torch else []
    impls = backends + torch_impls
    if args.max_load is not None:
        common.wait_for_quiet(args.max_load, args.max_wait, log=log)
    info = common.machine_info(None, backends)
    rows, agree, agree_gpu, gpu_mem = [], None, None, {}
    for impl in impls:  # each in a fresh process (see common.run_worker)
        log(f"{impl}")
        out = common.run_worker(Path(__file__), [
            "--time-worker", impl, "--batch", *args.batches, "--train-batch", args.train_batch,
            "--model", args.model, "--image-size", args.image_size, "--num-classes", args.num_classes,
            "--memory-batch", args.memory_batch, "--repeat", repeat, "--threads", threads,
            "--backends", *backends] + (["--no-memory"] if args.no_memory else []), memory=False, log=log)
        rows += out["rows"]
        info.setdefault("workers", {})[impl] = out["info"]
        gpu_mem.update(out.get("gpu_memory") or {})
        if impl in TORCH_IMPLS:
            info.update({k: v for k, v in out["info"].items() if k.startswith("torch")})
        if impl == TORCH:
            info["threads"]["torch"] = out["info"]["torch_threads"]
            agree = out["agreement"]
        elif impl == TORCH_CUDA:
            agree_gpu = out["agreement"]
    memory = None
    if not args.no_memory and common.memory_supported() and (
            TORCH in torch_impls or any(b not in common.GPU_BACKENDS for b in backends)):
        memory = measure_memory(args, backends, torch_impls, threads, log=log)
    info["load_after"] = common.load_average()
    info["numba_threading_layer"] = info.get("workers", {}).get("numba", {}).get("numba_threading_layer")
    result = {"kind": "net", "model": args.model, "input_shape": [3, args.image_size, args.image_size],
              "num_classes": args.num_classes, "batches": args.batches, "train_batch": args.train_batch,
              "memory_batch": args.memory_batch, "repeat": repeat, "quick": args.quick, "impls": impls,
              "backends": backends, "machine": info, "rows": rows, "memory": memory,
              "agreement": agree, "agreement_gpu": agree_gpu, "gpu_memory": gpu_mem or None,
              "gpu_note": None if any(b in common.GPU_BACKENDS for b in backends)
              else "no GPU backend ran (CuPy or a CUDA GPU missing): GPU rows skipped",
              "out_dir": args.out}
    stem = common.result_stem("net", info, impls) + ("" if args.model == "zfnet" else f"-{args.model}")
    paths = common.write_results(args.out, stem, result, lambda: markdown(result))
    log(f"wrote {paths[0]} and {paths[1]}")
    return result


if __name__ == "__main__":
    main()
