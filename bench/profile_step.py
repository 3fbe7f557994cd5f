"""Where zfraw's training step spends its time: per layer and per part.

    python bench/profile_step.py [--backend numba] [--batch 16] [--repeat 5] [--threads N]

Runs ``zfraw.train.train_step`` on ZFNet (3x224x224, 1000 classes, batch 16)
with every layer's ``forward`` and ``backward`` wrapped in a wall-clock timer,
and the loss (``F.cross_entropy``) and the update (``SGD.step``, which includes
the paper's filter renormalization) timed on their own.  One untimed warm-up
step, then ``--repeat`` timed ones; each entry is the median over those steps.
The parts add up to the step (what is left over, the accuracy and the Python
between the calls, is shown as "rest").  PyTorch's whole step (autograd and
``torch.optim.SGD``, the same network and weights, as in ``net.py``) is timed
in the same process, alternating step by step, for scale (PyTorch is imported
first: the numba backend then runs on a thread pool of its own, see
``zfraw.kernels.cpu``).  Writes
``bench/results/profile-step-<cpu>-<cores>c-blas-<core>-<backend>.json`` and ``.md``.
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


class Timers:
    """Wall-clock seconds per (layer, part), one list entry per step."""

    def __init__(self):
        self.current, self.steps = {}, []

    def add(self, key, seconds):
        self.current[key] = self.current.get(key, 0.0) + seconds

    def wrap(self, key, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.add(key, time.perf_counter() - t0)
            return out
        return timed

    def end_step(self, total):
        self.current["step"] = total
        self.steps.append(self.current)
        self.current = {}


def instrument(net, opt, timers, functional):
    """Wrap every layer's forward/backward, the loss and the update with timers (on the instances)."""
    from zfraw.nn import Layer

    for name, layer in net:
        layer.forward = timers.wrap((name, "forward"), layer.forward)
        layer.backward = timers.wrap((name, "backward"), layer.backward)
        if type(layer).param_backward is not Layer.param_backward:  # its own (Layer's calls backward)
            layer.param_backward = timers.wrap((name, "backward"), layer.param_backward)
    opt.step = timers.wrap(("SGD.step", "update"), opt.step)
    return timers.wrap(("loss", "forward"), functional.cross_entropy)


def main(argv=None, log=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--model", default="zfnet")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--out", default=str(common.RESULTS))
    args = parser.parse_args(argv)
    image_size = common.image_side(args.model, args.image_size)
    torch = None if args.no_torch or not common.torch_installed() else common.import_torch()

    import zfraw
    from zfraw import functional as F
    from zfraw import train
    import net as netbench

    zfraw.set_backend(args.backend)
    if torch is not None:
        torch.set_num_threads(common.cpu_threads())
    info = common.machine_info(torch, [args.backend])
    net = netbench.our_net(args.model, image_size, args.num_classes, args.backend)
    x_host, y_host = netbench.images(args.batch, image_size), netbench.labels_for(args.batch, args.num_classes)
    x, labels = zfraw.to_device(x_host), zfraw.to_device(y_host)
    opt = train.SGD(net, lr=netbench.LR)
    timers = Timers()
    timed_loss = instrument(net, opt, timers, F)
    theirs = None
    if torch is not None:
        model = netbench.torch_net(torch, netbench.our_net(args.model, image_size, args.num_classes, "numpy"))
        topt = torch.optim.SGD(model.parameters(), lr=netbench.LR, momentum=0.9, weight_decay=5e-4)
        theirs = netbench.torch_tasks(torch, model, torch.from_numpy(x_host), torch.from_numpy(y_host), topt,
                                      0)["train_step"]
    torch_seconds = []
    original_loss = F.cross_entropy
    train.F.cross_entropy = timed_loss  # train_step calls F.cross_entropy through its module
    try:
        for i in range(args.repeat + 1):
            t0 = time.perf_counter()
            train.train_step(net, x, labels, opt)
            total = time.perf_counter() - t0
            if i == 0:
                timers.current = {}
            else:
                timers.end_step(total)
            if theirs is not None:
                t0 = time.perf_counter()
                theirs()
                if i:
                    torch_seconds.append(time.perf_counter() - t0)
            log(f"  step {i}: {1e3 * total:.1f} ms" + (f", torch {1e3 * torch_seconds[-1]:.1f} ms" if i and torch_seconds else ""))
    finally:
        train.F.cross_entropy = original_loss

    median = {k: 1e3 * statistics.median(s[k] for s in timers.steps) for k in timers.steps[0]}
    step_ms = median.pop("step")
    rows = [{"layer": k[0], "part": k[1], "median_ms": v} for k, v in median.items()]
    result = {"kind": "profile-step", "backend": args.backend, "batch": args.batch, "repeat": args.repeat,
              "model": args.model, "machine": info, "step_ms": step_ms, "rows": rows,
              "torch_step_ms": 1e3 * statistics.median(torch_seconds) if torch_seconds else None}
    info["load_after"] = common.load_average()
    stem = common.result_stem("profile-step", info, [args.backend]) + ("" if args.model == "zfnet" else f"-{args.model}")
    paths = common.write_results(args.out, stem, result, markdown(result))
    log(f"wrote {paths[0]} and {paths[1]}")
    return result


def markdown(result):
    rows, step = result["rows"], result["step_ms"]
    by_part = {}
    for r in rows:
        by_part[r["part"]] = by_part.get(r["part"], 0.0) + r["median_ms"]
    rest = step - sum(by_part.values())
    lines = [f"# zfraw training step profile: {result['model']}, batch {result['batch']}, {result['backend']}", "",
             common.machine_line(result["machine"]) + ".", "",
             f"Median of {result['repeat']} steps after a warm-up, wall clock per layer and part (ms); the "
             f"step: {step:.1f} ms" + (f", PyTorch's (same process, alternating): {result['torch_step_ms']:.1f} ms"
                                       if result.get("torch_step_ms") else "") + ".", ""]
    layers = list(dict.fromkeys(r["layer"] for r in rows))
    table = []
    for layer in layers:
        cells = {r["part"]: r["median_ms"] for r in rows if r["layer"] == layer}
        total = sum(cells.values())
        table.append([layer, common.fmt(cells.get("forward"), 2), common.fmt(cells.get("backward"), 2),
                      common.fmt(cells.get("update"), 2), common.fmt(total, 2), common.fmt(100 * total / step, 1, "%")])
    table.append(["**sum**", common.fmt(by_part.get("forward"), 1), common.fmt(by_part.get("backward"), 1),
                  common.fmt(by_part.get("update"), 1), common.fmt(step - rest, 1), common.fmt(100 * (step - rest) / step, 1, "%")])
    table.append(["rest (accuracy, Python)", "", "", "", common.fmt(rest, 1), common.fmt(100 * rest / step, 1, "%")])
    return "\n".join(lines) + "\n" + common.markdown_table(
        ["layer", "forward ms", "backward ms", "update ms", "total ms", "share"], table)


if __name__ == "__main__":
    main()
