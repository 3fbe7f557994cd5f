"""The ``zfraw`` command line.

=================  ==============================================================
``zfraw demo``     the built-in model and dataset -> an HTML report of deconvnet pictures
``zfraw check``    every op against SciPy, gradient and transpose checks (a table)
``zfraw train``    train a network (``--builtin`` reproduces the shipped model)
``zfraw project``  project one image at a layer/feature back to pixels (a PNG)
``zfraw top9``     the top-9 activations of features over a dataset (PNGs)
``zfraw filters``  the layer-1 filters as a montage (a PNG)
``zfraw summary``  the architecture table of a model
``zfraw invariance``  feature distances and class probability under translation, scale, rotation (fig. 5)
``zfraw evolution``   the strongest features at snapshots taken during training (fig. 4)
``zfraw compare-first-layer``  AlexNet's first layer against ZFNet's: dead filters, aliasing (fig. 6)
=================  ==============================================================

Errors (a missing file, an unknown layer, a feature out of range) print one line
and exit with status 2 (set ``ZFRAW_DEBUG=1`` for the traceback).
"""
from __future__ import annotations

import argparse
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

def _demo_sections(net, ds, mean, classes, builtin_weights):
    """The demo's sections for the paper's other experiments (invariance, evolution, first layer)."""
    from functools import partial

    from zfraw import builtin, report, to_device
    from zfraw.analysis import evolution as evo
    from zfraw.analysis import first_layer as fl

    transform = builtin.eval_transform(mean)
    first = {}
    for i, label in enumerate(np.asarray(ds.labels).tolist()):
        first.setdefault(label, i)
    picks = [first[c] for c in (2, 1, 4, 3) if c in first] or [0]  # a face, a car, a star, a house
    x = np.stack([transform(ds[i][0]) for i in picks]).astype(np.float32)
    names = [classes[ds.labels[i]] if classes else str(ds.labels[i]) for i in picks]
    sections = [partial(report.invariance_section, net=net, x=x, labels=names,
                        target=np.asarray([ds.labels[i] for i in picks], dtype=np.int64))]
    if builtin_weights and os.path.exists(evo.builtin_snapshots_path()):
        epochs, nets, extra = evo.load_snapshots(evo.builtin_snapshots_path(), like=net)
        image_set = np.stack([transform(ds[i][0]) for i in range(min(100, len(ds)))]).astype(np.float32)
        sections.append(partial(report.evolution_section, snapshots=(epochs, [to_device(n) for n in nets]),
                                x=image_set, note=evo.BUILTIN_NOTE))
    sections.append(lambda img_dir: report.first_layer_section(
        img_dir, {"built-in zfnet_mini": fl.first_layer_report(net, ds, transform, limit=min(200, len(ds)))}))
    return sections


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
    index = report.write_report(
        args.out, net, ds, builtin.eval_transform(mean), mean, classes=classes,
        features_per_layer=args.features, progress=not args.quiet,
        title="zfraw demo: what the built-in ZFNet learned",
        sections=_demo_sections(net, ds, mean, classes, builtin_weights=args.weights is None),
    )
    print(f"wrote {index} ({time.perf_counter() - t0:.0f} s on backend {backend!r}); open it in a browser")
    return 0


def cmd_train(args):
    from zfraw import builtin

    backend = _select_backend(args.backend)
    if not args.builtin:
        return _train_folder(args, backend)
    if args.model not in ("zfnet_mini", "alexnet_mini"):
        raise UsageError(f"--builtin trains zfnet_mini or alexnet_mini, not --model {args.model}")
    out = args.out or f"{args.model}.npz"
    print(f"training the built-in {args.model} on backend {backend!r} -> {out}")
    t0 = time.perf_counter()
    history = builtin.train_builtin(out, epochs=args.epochs, n_train_per_class=args.n_per_class,
                                    checkpoint=args.checkpoint, resume=args.resume, snapshots=args.snapshots,
                                    snapshot_dir=args.snapshot_dir, model=args.model)
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
    size = args.size or (side if args.model in ("zfnet_mini", "alexnet_mini") else 256)
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
                        extra=dict(classes=list(ds.classes), mean=np.asarray(mean).tolist()),
                        snapshots=args.snapshots,
                        snapshot_dir=args.snapshot_dir or (out[:-4] if out.endswith(".npz") else out) + "_snapshots")
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
    figures = visualize.top9(net, ds, args.layer, args.features, transform, mean, progress=True)
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


def _class_names(args, classes):
    """--classes (comma-separated) if given, else the names the model records (or None)."""
    if getattr(args, "classes", None):
        return [c.strip() for c in args.classes.split(",")]
    return classes


def _load_images(paths, side, mean):
    """Image files -> preprocessed (N, 3, side, side) float32 (resized, centre-cropped, mean subtracted)."""
    from zfraw import data

    transform = data.eval_transform(side, side, mean)
    return np.stack([transform(data.load_image(p)) for p in paths]).astype(np.float32)


def cmd_invariance(args):
    from zfraw.analysis import invariance as inv
    from zfraw.render.invariance import invariance_figure

    _check_output(args.output, ".png")
    _select_backend(args.backend)
    net, classes, mean = _load_net(args.weights)
    classes = _class_names(args, classes)
    layers = args.layers or inv.default_layers(net)
    for lyr in layers:
        net.check_layer(lyr)
    amounts = args.amounts if args.amounts is not None else DEFAULT_AMOUNTS[args.transform]
    x = _load_images(args.images, _input_side(net), mean)
    target = _class_index(args.target, classes) if args.target is not None else None
    result = inv.invariance(net, x, args.transform, amounts, layers, target=target, progress=True)
    names = [os.path.basename(p) + (f" ({classes[t]})" if classes and t < len(classes) else f" (class {t})")
             for p, t in zip(args.images, result["target"])]
    _save_png(invariance_figure(result, layers, kind=args.kind, labels=names), args.output)
    for lyr in layers:
        worst = np.nanmax(result[lyr]["relative"], axis=1)
        print(f"{lyr}: largest relative distance per image " + ", ".join(f"{v:.3f}" for v in worst))
    print(f"wrote {args.output}")
    return 0


def _class_index(target, classes):
    """--target: a class name (when the model has names) or an index."""
    if classes and target in classes:
        return classes.index(target)
    try:
        return int(target)
    except ValueError:
        raise UsageError(f"--target {target!r} is neither a class index nor one of the classes "
                         f"{', '.join(classes or [])}") from None


def cmd_evolution(args):
    from zfraw import data, to_device
    from zfraw.analysis import evolution as evo
    from zfraw.render.evolution import evolution_figure

    _check_output(args.output, ".png")
    _select_backend(args.backend)
    if args.weights and not args.snapshots:
        raise UsageError("--weights needs the snapshots of that model's training "
                         "(SNAPSHOTS: a folder or a packed file)")
    snapshots = args.snapshots or evo.builtin_snapshots_path()
    like = _load_net(args.weights)[0] if args.weights else None
    epochs, nets, extra = evo.load_snapshots(snapshots, like=like)
    nets = [to_device(net) for net in nets]
    mean = np.asarray(extra.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    side = _input_side(nets[-1])
    ds = _dataset(args.data, nets[-1], args.images)
    n = min(args.images, len(ds))
    transform = data.eval_transform(side, side, mean)
    x = np.stack([transform(ds[i][0]) for i in range(n)]).astype(np.float32)
    result = evo.evolution((epochs, nets), x, args.layers, n_features=args.features, progress=True)
    _save_png(evolution_figure(result), args.output)
    print(f"wrote {args.output} (epochs {', '.join(map(str, epochs))}, {n} images)")
    return 0


def cmd_compare_first_layer(args):
    from zfraw import data
    from zfraw.analysis import first_layer as fl
    from zfraw.render.first_layer import first_layer_figure, report_line

    _check_output(args.output, ".png")
    _select_backend(args.backend)
    nets = {}
    for path in args.weights:
        name = "built-in zfnet_mini" if path == "builtin" else os.path.basename(path)
        nets[name] = _load_net(None if path == "builtin" else path)
    reports = {}
    for name, (net, _, mean) in nets.items():
        side = _input_side(net)
        ds = _dataset(args.data, net, args.images)
        reports[name] = fl.first_layer_report(net, ds, data.eval_transform(side, side, mean),
                                              n_features=args.features, limit=args.images, progress=True)
        print(report_line(name, reports[name]))
    _save_png(first_layer_figure(reports), args.output)
    print(f"wrote {args.output}")
    return 0


def _check_output(path, suffix):
    """Refuse a bad output path before any long work starts."""
    if not path.lower().endswith(suffix):
        raise UsageError(f"-o/--output must end in {suffix}, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(f"-o/--output: {folder!r} is not a folder")
    if os.path.isdir(path):
        raise UsageError(f"-o/--output: {path!r} is a folder")


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


def _float_list(text):
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _name_list(text):
    return [t.strip() for t in text.split(",") if t.strip()]


#: amounts of ``zfraw invariance`` when --amounts is not given
DEFAULT_AMOUNTS = {
    "translate": list(range(-20, 21, 4)),
    "scale": [0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5],
    "rotate": list(range(0, 361, 30)),
}


def _add_analysis_commands(sub):
    """The parsers of ``invariance``, ``evolution`` and ``compare-first-layer``."""
    s = sub.add_parser("invariance", help="feature change and class probability as images are transformed (fig. 5)")
    s.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    s.add_argument("--transform", required=True, choices=["translate", "scale", "rotate"])
    s.add_argument("--amounts", type=_float_list, default=None,
                   help="comma-separated: pixels (translate, vertical), factors (scale) or degrees (rotate); "
                        "write --amounts=-8,0,8 when the first is negative")
    s.add_argument("--layers", type=_name_list, default=None,
                   help="comma-separated layers (default: first and last conv, last hidden fc)")
    s.add_argument("--kind", default="relative", choices=["relative", "distance"],
                   help="plot the distance divided by the original's norm (default) or the plain distance")
    s.add_argument("--target", default=None, help="the true class (name or index; default: the prediction)")
    s.add_argument("--classes", default=None, help="comma-separated class names of a model that records none")
    s.add_argument("-o", "--output", default="invariance.png")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_invariance)

    s = sub.add_parser("evolution", help="the strongest features at training snapshots (fig. 4)")
    s.add_argument("snapshots", nargs="?", default=None,
                   help="a folder of epochNNN.npz (zfraw train --snapshots) or a packed file; "
                        "default: the built-in model's")
    s.add_argument("--data", default="builtin", help="'builtin' or a folder of class folders (the image set)")
    s.add_argument("--images", type=int, default=200, help="images searched at each snapshot (default 200)")
    s.add_argument("--layers", type=_name_list, default=None, help="comma-separated conv layers (default: all)")
    s.add_argument("--features", type=int, default=4, help="features followed per layer (default 4)")
    s.add_argument("-o", "--output", default="evolution.png")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_evolution)

    s = sub.add_parser("compare-first-layer",
                       help="first-layer filters, dead filters and layer-2 aliasing of networks side by side (fig. 6)")
    s.add_argument("--weights", nargs="+", default=["builtin"],
                   help="models to compare, one row each ('builtin': the built-in zfnet_mini; default: it alone); "
                        "e.g. one trained with zfraw train --builtin --model alexnet_mini")
    s.add_argument("--data", default="builtin", help="'builtin' or a folder of class folders")
    s.add_argument("--images", type=int, default=200, help="images searched for the conv2 top 9 (default 200)")
    s.add_argument("--features", type=int, default=4, help="conv2 features shown (default 4)")
    s.add_argument("-o", "--output", default="first_layer.png")
    _add_backend(s)
    s.set_defaults(func=cmd_compare_first_layer)


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
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("check", help="check every op against SciPy, gradients and transposes")
    s.add_argument("--seed", type=int, default=0)
    _add_backend(s)
    s.set_defaults(func=cmd_check)

    s = sub.add_parser("train", help="train a model (--builtin: the shipped one)")
    s.add_argument("--builtin", action="store_true", help="reproduce the built-in model with its recipe")
    s.add_argument("--data", help="a folder of class folders to train on (instead of --builtin)")
    s.add_argument("--val", help="a folder of class folders for validation")
    s.add_argument("--model", default="zfnet_mini", choices=["zfnet_mini", "alexnet_mini", "zfnet", "alexnet"],
                   help="the architecture (--builtin: zfnet_mini, or alexnet_mini for the first-layer comparison)")
    s.add_argument("--size", type=int, default=None, help="resize the shorter side to this before cropping")
    s.add_argument("--epochs", type=int, default=None)
    s.add_argument("--n-per-class", type=int, default=None, help="--builtin: training images per class")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--lr", type=float, default=1e-2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", default=None, help="where to save the trained model (.npz)")
    s.add_argument("--checkpoint", default=None, help="a .npz written after every epoch")
    s.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    s.add_argument("--snapshots", type=_feature_list, default=None,
                   help="comma-separated epochs after which the weights are kept (e.g. 1,2,5,10,20), in "
                        "--snapshot-dir (default: beside --out, OUT_snapshots/)")
    s.add_argument("--snapshot-dir", default=None, help="the folder for --snapshots")
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
    _add_weights(s), _add_backend(s)
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

    _add_analysis_commands(sub)
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
