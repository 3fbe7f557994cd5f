"""The ``zfraw`` command line.

=================  ==============================================================
``zfraw demo``     the built-in model and dataset -> an HTML report of deconvnet pictures
``zfraw check``    every op against SciPy, gradient and transpose checks (a table)
``zfraw train``    train a network (``--builtin`` reproduces the shipped model)
``zfraw project``  project one image at a layer/feature back to pixels (a PNG)
``zfraw top9``     the top-9 activations of features over a dataset (PNGs)
``zfraw filters``  the layer-1 filters as a montage (a PNG)
``zfraw summary``  the architecture table of a model
``zfraw occlude``  occlusion sensitivity of one image (fig. 7): five panels in a PNG
``zfraw correspond`` part correspondence (table 1): Delta per part and layer vs random boxes
``zfraw invariance``  feature distances and class probability under translation, scale, rotation (fig. 5)
``zfraw evolution``   the strongest features at snapshots taken during training (fig. 4)
``zfraw compare-first-layer``  AlexNet's first layer against ZFNet's: dead filters, aliasing (fig. 6)
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
    p.add_argument("--workers", type=int, default=None,
                   help="scan on a local Dask cluster of N worker processes (needs zfraw[dask])")
    p.add_argument("--scheduler", default=None, help="scan on an existing Dask cluster at this address")
    p.add_argument("--shard-dir", default=None,
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
            occlusion=True, correspondence=True,
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
                                    checkpoint=args.checkpoint, resume=args.resume, snapshots=args.snapshots,
                                    snapshot_dir=args.snapshot_dir)
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


# ---------------------------------------------------------------- occlude / correspond

def _class_names(spec, classes):
    """--classes: comma-separated names or a text file (one per line); else the model's own names."""
    if not spec:
        return classes
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as fh:
            return [line.strip() for line in fh if line.strip()]
    return [name.strip() for name in spec.split(",") if name.strip()]


def _class_index(text, classes, n_classes):
    """--target: a class name or an index in [0, n_classes)."""
    if text is None:
        return None
    if classes and text in classes:
        return classes.index(text)
    try:
        k = int(text)
    except ValueError:
        raise UsageError(f"--target: {text!r} is neither a class name ({', '.join(classes or [])}) "
                         f"nor a class index") from None
    if not 0 <= k < n_classes:
        raise UsageError(f"--target: expected a class index in [0, {n_classes}), got {k}")
    return k


def _check_output(path, suffixes):
    """Refuse an output path that cannot be written, before any long work (``suffixes``: one or a tuple)."""
    suffixes = (suffixes,) if isinstance(suffixes, str) else tuple(suffixes)
    if not path.lower().endswith(suffixes):
        raise UsageError(f"-o: expected a file ending in {' or '.join(suffixes)}, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"-o: cannot write {path!r} (is its folder there and writable?)")


def cmd_occlude(args):
    from zfraw import data, deconvnet, to_device, visualize
    from zfraw.analysis.occlusion import occlusion, strongest_drop
    from zfraw.functional import softmax
    from zfraw.render.occlusion import occlusion_figure

    _check_output(args.output, (".png",))
    backend = _select_backend(args.backend)
    img = data.load_image(args.image)
    net, classes, mean = _load_net(args.weights)
    if args.layer is not None:
        net.check_layer(args.layer)
    side = _input_side(net)
    x = to_device(data.eval_transform(side, side, mean)(img)[None])
    scores = net.forward(x, keep=False, cache=False)
    classes = _class_names(args.classes, classes)
    target = _class_index(args.target, classes, scores.shape[1])
    size = args.size if args.size is not None else max(1, side // 4)
    stride = args.stride if args.stride is not None else max(1, size // 4)
    maps = occlusion(net, x, size, stride, layer=args.layer, feature=args.feature, target=target,
                     fill=args.fill, batch_size=args.batch_size)
    unoccluded = float(_host_float(softmax(scores)[0, maps.target[0]]))
    projection = deconvnet.project(net, x, maps.layer, feature=maps.feature)
    net.clear()
    figure = occlusion_figure(maps, 0, visualize.image_to_uint8(_host_float(x[0]), mean),
                              _host_float(projection[0]), classes=classes)
    _save_png(figure, args.output)
    drop = strongest_drop(maps)[0]
    name = lambda k: classes[k] if classes and 0 <= k < len(classes) else f"class {k}"  # noqa: E731
    print(f"{maps.layer} feature {int(maps.feature[0])}; p({name(int(maps.target[0]))}) = {unoccluded:.3f} "
          f"unoccluded, lowest {drop.probability:.3f} with the {size}x{size} square at (top, left) = "
          f"({drop.top}, {drop.left}), where the network says {name(drop.label)}")
    print(f"wrote {args.output} ({maps.activity.shape[1]}x{maps.activity.shape[2]} positions, backend {backend!r})")
    return 0


def _host_float(a):
    """A backend array as a NumPy float64 array (for printing and drawing)."""
    from zfraw import to_host

    return np.asarray(to_host(a), dtype=np.float64)


def cmd_correspond(args):
    from zfraw import builtin, data, synthetic
    from zfraw.analysis.boxes import box_to_input, read_boxes
    from zfraw.analysis.correspondence import BUILTIN_LAYERS, correspondence, part_correspondence
    from zfraw.render.correspondence import html_table, markdown_table

    if args.output:
        _check_output(args.output, (".md", ".html"))
    backend = _select_backend(args.backend)
    net, _, mean = _load_net(args.weights)
    if args.layers is None and not all(name in net.layers for name in BUILTIN_LAYERS):
        raise UsageError(f"--layers: give the layers to compare (the model has no {' and '.join(BUILTIN_LAYERS)})")
    layers = [net.check_layer(name.strip()) for name in (args.layers or ",".join(BUILTIN_LAYERS)).split(",")
              if name.strip()]
    options = dict(fill=args.fill, random_draws=args.draws, seed=args.seed)
    if args.boxes:
        side = _input_side(net)
        transform = data.eval_transform(side, side, mean)
        groups = {}
        for entry in read_boxes(args.boxes):
            img = data.load_image(entry.image)
            groups.setdefault(entry.part, []).append((transform(img), box_to_input(entry, img.shape, side)))
        results = {}
        for part, items in groups.items():
            if len(items) < 2:
                raise UsageError(f"--boxes: part {part!r} has {len(items)} image; Delta needs at least 2")
            results[part] = correspondence(net, np.stack([x for x, _ in items]),
                                           np.asarray([b for _, b in items]), layers, **options)
    else:
        if args.weights is not None and (net.input_shape is None or net.input_shape[-1] != builtin.RECIPE["size"]):
            raise UsageError("--boxes is needed: the built-in part boxes are for 64x64 images")
        if args.cls not in synthetic.PARTS or not synthetic.PARTS[args.cls]:
            with_parts = [c for c, p in synthetic.PARTS.items() if p]
            raise UsageError(f"--class: expected one of {', '.join(with_parts)}, got {args.cls!r}")
        names = synthetic.PARTS[args.cls] if args.part in (None, "all") else [args.part]
        bad = [p for p in names if p not in synthetic.PARTS[args.cls]]
        if bad:
            raise UsageError(f"--part: class {args.cls!r} has the parts {', '.join(synthetic.PARTS[args.cls])} "
                             f"(or all), got {bad[0]!r}")
        results = part_correspondence(net, builtin.dataset("val"), builtin.eval_transform(mean),
                                      [(args.cls, p) for p in names], layers, n_images=args.images, **options)
    table = markdown_table(results, layers)
    print(f"Delta per ordered pair (fraction of feature signs that differ) for each part, against boxes of the "
          f"same size at random positions (mean ± std over {args.draws} draws); backend {backend!r}:")
    print(table)
    if args.output:
        from zfraw.nn import atomic_write

        text = html_table(results, layers) if args.output.lower().endswith(".html") else table + "\n"
        atomic_write(args.output, lambda fh: fh.write(text.encode("utf-8")), suffix=".tmp")
        print(f"wrote {args.output}")
    return 0


def _load_images(paths, side, mean):
    """Image files -> preprocessed (N, 3, side, side) float32 (resized, centre-cropped, mean subtracted)."""
    from zfraw import data

    transform = data.eval_transform(side, side, mean)
    return np.stack([transform(data.load_image(p)) for p in paths]).astype(np.float32)


def _default_invariance_layers(net):
    """The first and last conv layers and the last hidden fully connected layer (conv1, conv5, fc7)."""
    from zfraw import nn

    convs = [n for n, lyr in net if isinstance(lyr, nn.Conv2d)]
    fcs = [n for n, lyr in net if isinstance(lyr, nn.Linear)]
    return list(dict.fromkeys(convs[:1] + convs[-1:] + fcs[-2:-1]))


def cmd_invariance(args):
    from zfraw.analysis import invariance as inv
    from zfraw.render.invariance import invariance_figure

    _check_output(args.output, ".png")
    _select_backend(args.backend)
    net, classes, mean = _load_net(args.weights)
    classes = _class_names(args.classes, classes)
    layers = args.layers or _default_invariance_layers(net)
    for lyr in layers:
        net.check_layer(lyr)
    amounts = args.amounts if args.amounts is not None else DEFAULT_AMOUNTS[args.transform]
    x = _load_images(args.images, _input_side(net), mean)
    target = _class_index(args.target, classes, len(classes) if classes else 10**9)
    result = inv.invariance(net, x, args.transform, amounts, layers, target=target, progress=True)
    names = [os.path.basename(p) + (f" ({classes[t]})" if classes and t < len(classes) else f" (class {t})")
             for p, t in zip(args.images, result["target"])]
    _save_png(invariance_figure(result, layers, kind=args.kind, labels=names), args.output)
    for lyr in layers:
        worst = np.nanmax(result[lyr]["relative"], axis=1)
        print(f"{lyr}: largest relative distance per image " + ", ".join(f"{v:.3f}" for v in worst))
    print(f"wrote {args.output}")
    return 0


def cmd_evolution(args):
    from zfraw import data
    from zfraw.analysis import evolution as evo
    from zfraw.render.evolution import evolution_figure

    _check_output(args.output, ".png")
    _select_backend(args.backend)
    if args.weights and not args.snapshots:
        raise UsageError("--weights needs the snapshots of that model's training (SNAPSHOTS: a folder or a packed file)")
    snapshots = args.snapshots or evo.builtin_snapshots_path()
    like = _load_net(args.weights)[0] if args.weights else None
    epochs, nets, extra = evo.load_snapshots(snapshots, like=like)
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
    if args.weights:
        nets = {}
        for path in args.weights:
            nets[os.path.basename(path)] = _load_net(path)
    else:
        nets = {name: (net, None, mean) for name, (net, mean) in fl.builtin_models().items()}
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
                   help="comma-separated: pixels (translate, vertical), factors (scale) or degrees (rotate)")
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
    s.add_argument("--weights", nargs="+", default=None,
                   help="models to compare (default: the built-in alexnet_mini and zfnet_mini)")
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
    _add_weights(s), _add_backend(s), _add_dask(s)
    s.set_defaults(func=cmd_top9)

    s = sub.add_parser("filters", help="the first layer's filters as a picture")
    s.add_argument("--layer", default=None, help="a conv layer on the image (default: the first)")
    s.add_argument("-o", "--output", default="filters.png")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_filters)

    s = sub.add_parser("occlude", help="occlusion sensitivity of one image (fig. 7 of the paper)")
    s.add_argument("image")
    s.add_argument("--layer", default=None, help="layer of the activity map (default: the last conv layer)")
    s.add_argument("--feature", type=int, default=None, help="feature map (default: the strongest)")
    s.add_argument("--size", type=int, default=None, help="side of the grey square (default: input side / 4)")
    s.add_argument("--stride", type=int, default=None, help="step between positions (default: size / 4)")
    s.add_argument("--target", default=None, help="class (name or index) of the probability map "
                   "(default: the prediction for the whole image)")
    s.add_argument("--fill", type=float, default=0.0, help="value of the hidden pixels (default 0: the mean)")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--classes", default=None, help="class names: comma-separated, or a file with one per line "
                   "(default: those saved with the model)")
    s.add_argument("-o", "--output", default="occlusion.png")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_occlude)

    s = sub.add_parser("correspond", help="part correspondence (table 1 of the paper) against random boxes")
    s.add_argument("--class", dest="cls", default="face", help="built-in data: the class (default face)")
    s.add_argument("--part", default=None, help="built-in data: a part of that class, or 'all' (default)")
    s.add_argument("--images", type=int, default=20, help="built-in data: images per part (default 20)")
    s.add_argument("--boxes", default=None, help="your images instead: a CSV (image,top,left,bottom,right"
                   "[,part]) or JSON file of boxes in the images' own pixels")
    s.add_argument("--layers", default=None, help="comma-separated layers (default pool5,relu7)")
    s.add_argument("--draws", type=int, default=10, help="random-box draws for the baseline (default 10)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--fill", type=float, default=0.0, help="value of the hidden pixels (default 0: the mean)")
    s.add_argument("-o", "--output", default=None, help="also write the table (.md or .html)")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_correspond)

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
