"""zfraw's convolutions as of an earlier commit against the working tree's, in one process.

    python bench/revisions.py --before REV [--batch 16] [--repeat 11] [--layers conv2 conv5]
                              [--no-step] [--step-model zfnet_mini] [--torch-first]

On a machine whose timings drift by 10-20% between runs minutes apart, a
change of a few percent shows only when the two versions alternate call by
call.  This loads ``zfraw/functional.py`` as it was at ``REV`` (``git show``,
as a module of its own, beside today's kernels and backends: it must call the
kernels by today's signatures) and times, on the ``--backend`` (numba), for
each ZFNet conv layer at ``--batch``: the forward, the C^T projection and the
backward, before and after in turn (the order flips every round), and checks
that both give the same numbers bit for bit; then the training step
(``zfraw.train.train_step``; ZFNet at 224x224 with 1000 classes, or
``--step-model``, ``--step-image-size``, ``--step-classes``) with the layers
calling the old or the new ``conv2d_backward``, ``conv2d`` and
``conv_transpose2d`` in turn.  ``--torch-first`` imports PyTorch first (Numba
then runs on its own thread pool).  Prints a Markdown table (medians, ms, and
after / before); writes nothing.
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: the functions the layers call, swapped together for the training step
SWAPPED = ("conv2d", "conv_transpose2d", "conv2d_backward")


def functional_at(rev):
    """``zfraw/functional.py`` as of git revision ``rev``, loaded as a module named ``functional_<rev>``."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:zfraw/functional.py"],
                                check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        why = (getattr(exc, "stderr", None) or str(exc)).strip().splitlines()[-1]
        raise ValueError(f"--before {rev!r}: cannot read zfraw/functional.py at that revision ({why})") from None
    with tempfile.TemporaryDirectory(prefix="zfraw-rev-") as folder:
        path = Path(folder) / f"functional_{rev}.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location(f"functional_{rev}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def alternating(before, after, repeat):
    """(median ms before, median ms after), the two run in turn (``common.alternating_medians``)."""
    m = common.alternating_medians({"before": before, "after": after}, repeat)
    return m["before"], m["after"]


def conv_cases(old, new, name, batch, rng):
    """{op: (before callable, after callable)} for one layer; each returns a tuple of arrays."""
    c, f, k, s, p, h = common.ZFNET_CONVS[name]
    x = rng.standard_normal((batch, c, h, h), dtype=np.float32)
    w = (0.01 * rng.standard_normal((f, c, k, k))).astype(np.float32)
    dy = rng.standard_normal(new.conv2d(x, w, None, s, p).shape, dtype=np.float32)
    return {
        "forward": tuple(lambda m=m: (m.conv2d(x, w, None, s, p),) for m in (old, new)),
        "C^T": tuple(lambda m=m: (m.conv_transpose2d(dy, w, s, p, output_shape=(h, h)),) for m in (old, new)),
        "backward": tuple(lambda m=m: m.conv2d_backward(dy, x, w, s, p) for m in (old, new)),
    }


def training_step(old, new, batch, repeat, backend, model_name="zfnet", image_size=None, num_classes=1000):
    """(before ms, after ms) of a training step, the layers calling old or new conv functions in turn."""
    import net as netbench
    from zfraw import functional as F
    from zfraw import train

    side = common.image_side(model_name, image_size)
    model = netbench.our_net(model_name, side, num_classes, backend)
    x, labels = netbench.images(batch, side), netbench.labels_for(batch, num_classes)
    opt = train.SGD(model, lr=netbench.LR)
    today = {name: getattr(new, name) for name in SWAPPED}

    def step_with(module):
        def run():
            for name in SWAPPED:
                setattr(F, name, getattr(module, name))
            train.train_step(model, x, labels, opt)
        return run

    try:
        return alternating(step_with(old), step_with(new), repeat)
    finally:
        for name, fn in today.items():
            setattr(F, name, fn)


def main(argv=None, log=print):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision whose zfraw/functional.py is 'before'")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--backend", default="numba")
    parser.add_argument("--layers", nargs="+", default=list(common.ZFNET_CONVS), choices=list(common.ZFNET_CONVS))
    parser.add_argument("--no-step", action="store_true", help="skip the training step")
    parser.add_argument("--step-model", default="zfnet", help="the training step's network (default: zfnet)")
    parser.add_argument("--step-image-size", type=int, default=None, help="its input side (default: its own)")
    parser.add_argument("--step-classes", type=int, default=1000, help="its classes (default: 1000)")
    parser.add_argument("--torch-first", action="store_true", help="import PyTorch before zfraw")
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeat < 1:
        parser.error("--batch and --repeat must be at least 1")
    if args.torch_first:
        common.import_torch()
    import zfraw
    from zfraw import functional as new

    zfraw.set_backend(args.backend)
    try:
        old = functional_at(args.before)
    except ValueError as exc:
        parser.error(str(exc))
    rng = np.random.default_rng(0)
    log(f"{common.cpu_model()}, {common.cpu_threads()} threads, backend {args.backend}, batch {args.batch}, "
        f"before = {args.before}, after = working tree{', torch imported first' if args.torch_first else ''}, "
        f"load {common.load_average():.2f}")
    log("| case | before ms | after ms | after / before | same numbers |")
    log("|---|---:|---:|---:|---|")
    rows = {}
    for name in args.layers:
        for op, (before, after) in conv_cases(old, new, name, args.batch, rng).items():
            same = all(np.array_equal(a, b) for a, b in zip(before(), after()))
            b_ms, a_ms = alternating(before, after, args.repeat)
            rows[f"{name} {op}"] = (b_ms, a_ms, same)
            log(f"| {name} {op} | {b_ms:.1f} | {a_ms:.1f} | {a_ms / b_ms:.3f} | {'bit for bit' if same else 'DIFFER'} |")
    if not args.no_step:
        b_ms, a_ms = training_step(old, new, args.batch, max(3, args.repeat // 2), args.backend,
                                   args.step_model, args.step_image_size, args.step_classes)
        rows["train_step"] = (b_ms, a_ms, None)
        log(f"| training step | {b_ms:.0f} | {a_ms:.0f} | {a_ms / b_ms:.3f} | - |")
    return rows


if __name__ == "__main__":
    main()
