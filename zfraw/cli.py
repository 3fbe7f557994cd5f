"""The ``zfraw`` command line.

=================  ==============================================================
``zfraw demo``     the built-in model and dataset -> an HTML report of deconvnet pictures
``zfraw check``    every op against SciPy, gradient and transpose checks (a table)
``zfraw train``    train a network (``--builtin`` reproduces the shipped model)
``zfraw project``  project one image at a layer/feature back to pixels (a PNG)
``zfraw top9``     the top-9 activations of features over a dataset (PNGs)
``zfraw filters``  the layer-1 filters as a montage (a PNG)
``zfraw summary``  the architecture table of a model
=================  ==============================================================

Errors (a missing file, an unknown layer, a feature out of range) print one line
and exit with status 2 (set ``ZFRAW_DEBUG=1`` for the traceback).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


# ============================================================== shared options

def _add_backend(p):
    p.add_argument("--backend", default=None,
                   help="numpy, numba, cupy or cuda (default: ZFRAW_BACKEND, else the fastest CPU one available)")


def _add_weights(p):
    p.add_argument("--weights", default=None,
                   help="a model saved by zfraw (.npz); default: the built-in trained zfnet_mini")


def _add_dask(p):
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="scan on a local Dask cluster of N worker processes (needs zfraw[dask])")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS", help="scan on an existing Dask cluster at this address")
    p.add_argument("--shard-dir", default=None, metavar="DIR",
                   help="with --workers/--scheduler: keep each finished shard here; run again to resume")


@contextlib.contextmanager
def _scan_function(args):
    """The top-k scan for --workers/--scheduler (a function like scan_layers), or None without them."""
    if args.workers is None and args.scheduler is None:
        if args.shard_dir is not None:
            raise UsageError("--shard-dir needs --workers N or --scheduler ADDRESS")
        yield None
        return
    if args.workers is not None and args.scheduler is not None:
        raise UsageError("give --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: expected at least 1, got {args.workers}")
    try:
        from zfraw import distributed

        distributed.require_dask()
    except ImportError as exc:
        raise UsageError(str(exc)) from None
    with distributed.cluster(args.workers, args.scheduler) as client:
        yield distributed.scanner(client, shard_dir=args.shard_dir)


def _select_backend(name):
    import zfraw

    if name is None:
        name = os.environ.get("ZFRAW_BACKEND") or ("numba" if "numba" in zfraw.backends() else "numpy")
    zfraw.set_backend(name)
    return name


def _load_net(weights):
    """(net, classes, mean) from --weights or the built-in model."""
    from zfraw import builtin, nn, to_device

    if weights is None:
        net, meta = builtin.load_model()
    else:
        if not os.path.exists(weights):
            raise UsageError(f"weights file {weights!r} does not exist")
        net = nn.load(weights).eval()
        meta = nn.read_meta(weights).get("extra", {})
    mean = np.asarray(meta.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    classes = meta.get("classes")
    return to_device(net), classes, mean


def _input_side(net):
    if net.input_shape is None:
        raise UsageError("the model does not record its input size; it cannot preprocess images")
    return int(net.input_shape[-1])


def _dataset(spec, net, n):
    """A dataset from DATA: 'builtin' (the built-in val split) or a class-per-folder directory."""
    from zfraw import builtin, data

    if spec in (None, "builtin"):
        return builtin.dataset("val", n_per_class=max(1, n // 10) if n else None)
    if not os.path.isdir(spec):
        raise UsageError(f"DATA {spec!r} is neither 'builtin' nor a directory of class folders")
    return data.ImageFolder(spec, skip_bad=True)


# ============================================================== commands

def cmd_check(args):
    from zfraw import checks

    _select_backend(args.backend or "numpy")
    return checks.main(args.backend or "numpy", args.seed)


def cmd_demo(args):
    from zfraw import builtin, report

    backend = _select_backend(args.backend)
    net, classes, mean = _load_net(args.weights)
    ds = builtin.dataset("val", n_per_class=max(1, args.images // 10))
    t0 = time.perf_counter()
    with _scan_function(args) as scan_layers:
        index = report.write_report(
            args.out, net, ds, builtin.eval_transform(mean), mean, classes=classes,
            features_per_layer=args.features, progress=not args.quiet,
            title="zfraw demo: what the built-in ZFNet learned", scan_layers=scan_layers,
        )
    print(f"wrote {index} ({time.perf_counter() - t0:.0f} s on backend {backend!r}); open it in a browser")
    return 0


def cmd_train(args):
    from zfraw import builtin

    backend = _select_backend(args.backend)
    if not args.builtin:
        return _train_folder(args, backend)
    out = args.out or "zfnet_mini.npz"
    print(f"training the built-in zfnet_mini on backend {backend!r} -> {out}")
    t0 = time.perf_counter()
    history = builtin.train_builtin(out, epochs=args.epochs, n_train_per_class=args.n_per_class,
                                    checkpoint=args.checkpoint, resume=args.resume, snapshots=args.snapshots)
    print(f"held-out accuracy {history.val_acc[-1]:.3f} after {time.perf_counter() - t0:.0f} s; saved {out}")
    return 0


def _train_folder(args, backend):
    """Train a model on a class-per-folder dataset (--data)."""
    from zfraw import data, models, train

    if not args.data:
        raise UsageError("give --builtin, or --data DIR (a folder of class folders) to train on")
    ds = data.ImageFolder(args.data, skip_bad=True)
    val = data.ImageFolder(args.val, skip_bad=True) if args.val else None
    net = models.build(args.model, num_classes=len(ds.classes), seed=args.seed)
    side = _input_side(net)
    size = args.size or (side if args.model == "zfnet_mini" else 256)
    print(f"computing the per-channel mean of {len(ds)} images ...")
    mean = data.compute_mean(ds, size=size)
    out = args.out or f"{args.model}.npz"
    epochs = args.epochs or 10

    def train_batches(epoch):
        rng = np.random.default_rng([args.seed, epoch])
        return data.batches(ds, args.batch_size, data.train_transform(size, side, mean, rng=rng),
                            shuffle=True, rng=rng, drop_last=True)

    def val_batches():
        return data.batches(val, args.batch_size, data.eval_transform(size, side, mean))

    history = train.fit(net, train_batches, val_batches if val else None, epochs=epochs, lr=args.lr,
                        checkpoint=args.checkpoint, resume=args.resume,
                        schedule=train.PlateauSchedule() if val else None,
                        extra=dict(classes=list(ds.classes), mean=np.asarray(mean).tolist()))
    net.save(out, classes=list(ds.classes), mean=np.asarray(mean).tolist(), history=history.val_acc)
    print(f"saved {out} on backend {backend!r}")
    return 0


def cmd_project(args):
    from zfraw import data, visualize

    _select_backend(args.backend)
    img = data.load_image(args.image)
    net, _, mean = _load_net(args.weights)
    net.check_layer(args.layer)
    side = _input_side(net)
    x = data.eval_transform(max(side, min(img.shape[:2])) if args.no_resize else side, side, mean)(img)
    from zfraw import to_device

    picture = visualize.project_image(net, to_device(x[None]), args.layer, feature=args.feature,
                                      rule=args.rule, mean=mean)
    _save_png(picture, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_top9(args):
    from zfraw import data, visualize

    _select_backend(args.backend)
    net, _, mean = _load_net(args.weights)
    net.check_layer(args.layer)
    side = _input_side(net)
    ds = _dataset(args.data, net, args.images)
    transform = data.eval_transform(side, side, mean)
    records = None
    with _scan_function(args) as scan_layers:
        if scan_layers is not None:
            from zfraw.analysis.topk import feature_records

            (store, width), = scan_layers(net, ds, [args.layer], transform=transform, progress=True).values()
            records = feature_records(store, width, args.features, args.layer)
    figures = visualize.top9(net, ds, args.layer, args.features, transform, mean, progress=True, records=records)
    os.makedirs(args.output, exist_ok=True)
    for feature, picture in figures.items():
        path = os.path.join(args.output, f"{args.layer}_feature{feature}.png")
        _save_png(picture, path)
        print(f"wrote {path}")
    return 0


def cmd_filters(args):
    from zfraw import nn, to_host, visualize

    _select_backend(args.backend)
    net, _, _ = _load_net(args.weights)
    layer = args.layer or next((n for n, lyr in net if isinstance(lyr, nn.Conv2d)), None)
    if layer is None:
        raise UsageError("the model has no convolution layer")
    w = to_host(net[layer].params["w"])
    if w.shape[1] != 3:
        raise UsageError(f"layer {layer!r} does not see the RGB image (its filters have {w.shape[1]} channels)")
    _save_png(visualize.filters_image(w), args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_summary(args):
    from zfraw import models, nn, visualize

    if args.weights:
        net = nn.load(args.weights)
    else:
        net = models.build(args.model, **({"num_classes": args.classes} if args.classes else {}))
    rows = visualize.architecture_table(net)
    print(visualize.format_table(rows))
    print(f"\n{net.num_parameters():,} parameters")
    return 0


def _save_png(picture, path):
    """Save a PIL image atomically (temporary file beside it, then rename)."""
    from zfraw.nn import atomic_write

    atomic_write(path, lambda fh: picture.save(fh, format="PNG"), suffix=".png.tmp")


# ============================================================== parser

def _feature_list(text):
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"features must be comma-separated ints, got {text!r}") from None


def build_parser():
    p = argparse.ArgumentParser(prog="zfraw", description="Deconvnet visualization (Zeiler & Fergus 2014) "
                                "with a from-scratch convnet engine.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("demo", help="write an HTML report from the built-in model and dataset")
    s.add_argument("--out", default="zfraw-report", help="output folder (default: zfraw-report)")
    s.add_argument("--images", type=int, default=1000, help="images searched for top activations (default 1000)")
    s.add_argument("--features", type=int, default=4, help="features shown per conv layer (default 4)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_weights(s), _add_backend(s), _add_dask(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("check", help="check every op against SciPy, gradients and transposes")
    s.add_argument("--seed", type=int, default=0)
    _add_backend(s)
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("train", help="train a model (--builtin: the shipped one)")
    s.add_argument("--builtin", action="store_true", help="reproduce the built-in model with its recipe")
    s.add_argument("--data", help="a folder of class folders to train on (instead of --builtin)")
    s.add_argument("--val", help="a folder of class folders for validation")
    s.add_argument("--model", default="zfnet_mini", choices=["zfnet_mini", "zfnet", "alexnet"])
    s.add_argument("--size", type=int, default=None, help="resize the shorter side to this before cropping")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--n-per-class", type=int, default=None, help="--builtin: training images per class")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--lr", type=float, default=1e-2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="where to save the trained model (.npz)")
    s.add_argument("--checkpoint", default=None, help="a .npz written after every epoch")
    s.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    s.add_argument("--snapshots", default=None, help="--builtin: a folder for the weights after each epoch")
    _add_backend(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("project", help="project an image's activation at a layer back to pixels")
    s.add_argument("image")
    s.add_argument("--layer", default="conv5")
    s.add_argument("--feature", type=int, default=None, help="feature map (default: the strongest)")
    s.add_argument("--rule", default="deconvnet", choices=["deconvnet", "guided", "backprop"])
    s.add_argument("-o", "--output", default="projection.png")
    s.add_argument("--no-resize", action="store_true", help=argparse.SUPPRESS)
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_project)

    s = sub.add_parser("top9", help="top-9 activations of features over a dataset, projected")
    s.add_argument("data", nargs="?", default="builtin", help="'builtin' or a folder of class folders")
    s.add_argument("--layer", default="conv5")
    s.add_argument("--features", type=_feature_list, default=None, help="comma-separated (default: the most active)")
    s.add_argument("--images", type=int, default=1000, help="--builtin: images to search (default 1000)")
    s.add_argument("-o", "--output", default="top9", help="output folder")
    _add_weights(s), _add_backend(s), _add_dask(s)
    s.set_defaults(func=cmd_top9)

    s = sub.add_parser("filters", help="the first layer's filters as a picture")
    s.add_argument("--layer", default=None, help="a conv layer on the image (default: the first)")
    s.add_argument("-o", "--output", default="filters.png")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_filters)

    s = sub.add_parser("summary", help="the architecture table of a model")
    s.add_argument("--model", default="zfnet", choices=["zfnet", "alexnet", "zfnet_mini"])
    s.add_argument("--classes", type=int, default=None)
    _add_weights(s)
    s.set_defaults(func=cmd_summary)
    return p


def main(argv=None):
    from zfraw.backend import BackendUnavailable

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, BackendUnavailable) as exc:
        if os.environ.get("ZFRAW_DEBUG"):
            raise
        print(f"zfraw {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
