"""The ``zfraw`` command line.

=================  ==============================================================
``zfraw demo``     the built-in model and dataset -> an HTML report of deconvnet pictures
``zfraw check``    every op against SciPy, gradient and transpose checks (a table)
``zfraw train``    train a network (``--builtin`` reproduces the shipped model)
``zfraw project``  project one image at a layer/feature back to pixels (a PNG)
``zfraw top9``     the top-9 activations of features over a dataset (PNGs)
``zfraw filters``  the layer-1 filters as a montage (a PNG)
``zfraw summary``  the architecture table of a model
``zfraw import``   an ONNX model or a PyTorch state dict -> a zfraw .npz
``zfraw predict``  the top-5 classes of an image
``zfraw retrain``  keep a model's layers, retrain its last layer on a folder
=================  ==============================================================

``project``, ``top9``, ``filters``, ``predict`` and ``summary`` take ``--model
MODEL.onnx|.pth|.npz`` (an imported network, with the preprocessing it records or
the ``--channel-order/--scale/--mean/--std/--input-size`` given) besides ``--weights``.

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


ARCH_NAMES = ("zfnet", "alexnet", "alexnet_torchvision", "zfnet_mini")


def _model_or_arch(text):
    from zfraw.io.files import MODEL_SUFFIXES

    if text in ARCH_NAMES or text.lower().endswith(MODEL_SUFFIXES):
        return text
    raise argparse.ArgumentTypeError(f"expected one of {', '.join(ARCH_NAMES)} or a model file "
                                     f"({', '.join(MODEL_SUFFIXES)}), got {text!r}")


def _add_model(p, arch_names=False):
    p.add_argument("--model", default=None, metavar="MODEL", type=_model_or_arch if arch_names else str,
                   help="an imported network: MODEL.onnx, MODEL.pth (see --arch) or a .npz from 'zfraw import'"
                        + (", or an architecture name (zfnet, alexnet, alexnet_torchvision, zfnet_mini)"
                           if arch_names else "") + "; default: --weights")
    p.add_argument("--arch", default=None, help="the architecture of a .pth state dict (default alexnet_torchvision)")


def _triple_arg(text):
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
    return values


def _add_preprocessing(p):
    g = p.add_argument_group("preprocessing (overrides what the model records)")
    g.add_argument("--channel-order", choices=["RGB", "BGR"], default=None, help="the network's channel order")
    g.add_argument("--scale", type=float, choices=[1.0, 255.0], default=None,
                   help="pixel range the network expects: 1 (0-1) or 255 (0-255)")
    g.add_argument("--mean", type=_triple_arg, default=None, metavar="A,B,C",
                   help="per-channel mean to subtract, in the network's channel order and scale")
    g.add_argument("--std", type=_triple_arg, default=None, metavar="A,B,C", help="per-channel std to divide by")
    g.add_argument("--input-size", type=int, default=None, help="side of the square input")
    g.add_argument("--resize", type=int, default=None, help="shorter side before the centre crop")
    g.add_argument("--preset", default=None,
                   help="a named preprocessing: zfnet512, caffenet, bvlc_alexnet, alexnet_torchvision")


def _preprocessing_from_args(args, net):
    """The network's preprocessing with the command line's overrides (None: nothing known or given)."""
    from zfraw.io.preprocess import Preprocessing, preset

    prep = preset(args.preset) if getattr(args, "preset", None) else net.preprocessing
    changes = {k: getattr(args, k, None) for k in ("channel_order", "scale", "mean", "std", "input_size", "resize")}
    if any(v is not None for v in changes.values()):
        if prep is None:
            side = int(net.input_shape[-1]) if net.input_shape else 224
            prep = Preprocessing(input_size=side, resize=side, name="custom")
        if changes["input_size"] is not None and changes["resize"] is None:
            changes["resize"] = max(prep.resize, changes["input_size"])
        prep = prep.updated(**changes)
    return prep


def _check_model_args(args):
    if getattr(args, "model", None) is not None and getattr(args, "weights", None):
        raise UsageError("give --model or --weights, not both")


def _open_model(args):
    """(net, extra) from --model (a file) or --weights / the built-in model; the
    command line's preprocessing applied."""
    from zfraw import builtin, to_device
    from zfraw.io import files

    _check_model_args(args)
    model = getattr(args, "model", None)
    if model is None:
        net, extra = (builtin.load_model() if args.weights is None else files.load_model(args.weights))
        net = to_device(net)
    else:
        try:
            net, extra = files.load_model(model, arch=getattr(args, "arch", None))
        except ImportError as exc:
            raise UsageError(str(exc)) from None
    prep = _preprocessing_from_args(args, net)
    if prep is not None:
        net.preprocessing = prep
    return net, extra


def _images_net(args):
    """(net, classes, mean, transform) ready for pictures: an imported network gets its
    preprocessing as an ``input`` layer (it then takes pixels / 255 and needs no mean)."""
    from zfraw import data
    from zfraw.io import files

    net, extra = _open_model(args)
    if net.preprocessing is None and getattr(args, "model", None) is not None:
        print("note: the model records no preprocessing; assuming RGB, 0-1, no mean "
              "(give --preset or --channel-order/--scale/--mean/--std)", file=sys.stderr)
    if net.preprocessing is not None:
        prep = net.preprocessing
        return files.for_images(net), extra.get("classes"), None, prep.transform()
    mean = np.asarray(extra.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    side = _input_side(net)
    return net, extra.get("classes"), mean, data.eval_transform(side, side, mean)


def _check_output(path, suffix):
    """An output path must end in ``suffix`` and lie in a writable folder (checked before any work)."""
    if not path.endswith(suffix):
        raise UsageError(f"output {path!r} must end in {suffix}")
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UsageError(f"output {path!r} is a folder")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"cannot write {path!r}: the folder {folder!r} does not exist or is not writable")


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
    index = report.write_report(
        args.out, net, ds, builtin.eval_transform(mean), mean, classes=classes,
        features_per_layer=args.features, progress=not args.quiet,
        title="zfraw demo: what the built-in ZFNet learned",
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

    _check_model_args(args)
    _select_backend(args.backend)
    img = data.load_image(args.image)
    net, _, mean, transform = _images_net(args)
    net.check_layer(args.layer)
    side = _input_side(net)
    if args.no_resize and mean is not None:
        transform = data.eval_transform(max(side, min(img.shape[:2])), side, mean)
    x = transform(img)
    from zfraw import to_device

    picture = visualize.project_image(net, to_device(x[None]), args.layer, feature=args.feature,
                                      rule=args.rule, mean=mean)
    _save_png(picture, args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_top9(args):
    from zfraw import data, visualize

    _select_backend(args.backend)
    net, _, mean, transform = _images_net(args)
    net.check_layer(args.layer)
    ds = _dataset(args.data, net, args.images)
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
    net, _ = _open_model(args)
    layer = args.layer or next((n for n, lyr in net if isinstance(lyr, nn.Conv2d)), None)
    if layer is None:
        raise UsageError("the model has no convolution layer")
    w = to_host(net[layer].params["w"])
    if net.preprocessing is not None and net.preprocessing.channel_order == "BGR" and w.shape[1] == 3:
        w = w[:, ::-1]  # show a BGR network's filters in RGB
    if w.shape[1] != 3:
        raise UsageError(f"layer {layer!r} does not see the RGB image (its filters have {w.shape[1]} channels)")
    _save_png(visualize.filters_image(w), args.output)
    print(f"wrote {args.output}")
    return 0


def cmd_summary(args):
    from zfraw import models, nn, visualize
    from zfraw.io import files

    if args.model and args.model.lower().endswith(files.MODEL_SUFFIXES):
        net, _ = _open_model(args)
    elif args.weights:
        net = nn.load(args.weights)
    else:
        net = models.build(args.model or "zfnet", **({"num_classes": args.classes} if args.classes else {}))
    rows = visualize.architecture_table(net)
    print(visualize.format_table(rows))
    print(f"\n{net.num_parameters():,} parameters")
    return 0


def cmd_import(args):
    from zfraw import visualize
    from zfraw.io import classes, files

    _check_output(args.output, ".npz")
    if not args.model.lower().endswith((".onnx", ".pth", ".pt")):
        raise UsageError(f"MODEL {args.model!r} must be an ONNX model (.onnx) or a PyTorch state dict (.pth, .pt)")
    t0 = time.perf_counter()
    net, _ = _open_model(args)
    print(f"{args.model}: {net.name}, {len(net)} layers, read in {time.perf_counter() - t0:.1f} s")
    print(visualize.format_table(visualize.architecture_table(net)))
    prep = net.preprocessing
    print("preprocessing: " + (prep.describe() if prep else
                               "unknown (give --preset or --channel-order/--scale/--mean/--std)"))
    n_out = [lyr.out_features for _, lyr in net if hasattr(lyr, "out_features")]
    names = classes.class_names(n_out[-1]) if n_out else None
    net.save(args.output, **({"classes": names} if names else {}))
    print(f"wrote {args.output} ({net.num_parameters():,} parameters)")
    return 0


def cmd_retrain(args):
    """Feature generalization: freeze a model's layers, retrain the last one on a folder."""
    from zfraw import data, transfer
    from zfraw.io import files

    _check_output(args.output, ".npz")
    if not os.path.isdir(args.data):
        raise UsageError(f"DATA {args.data!r} is not a folder of class folders")
    if args.val is not None and not os.path.isdir(args.val):
        raise UsageError(f"--val {args.val!r} is not a folder of class folders")
    backend = _select_backend(args.backend)
    ds = data.ImageFolder(args.data, skip_bad=True)
    val = data.ImageFolder(args.val, skip_bad=True) if args.val else None
    if val is not None and list(val.classes) != list(ds.classes):
        raise UsageError(f"--val has classes {list(val.classes)} but DATA has {list(ds.classes)}")
    if len(ds.classes) < 2:
        raise UsageError(f"DATA {args.data!r} has {len(ds.classes)} class folder(s); at least 2 are needed")
    if args.source == "builtin":
        args.model, args.weights = None, None
    else:
        args.model, args.weights = args.source, None
    net, extra = _open_model(args)
    if net.preprocessing is not None:
        prep = net.preprocessing
        transform = prep.apply
    else:
        mean = np.asarray(extra.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
        side = _input_side(net)
        transform = data.eval_transform(side, side, mean)
    t0 = time.perf_counter()
    new, history = transfer.retrain_last_layer(net, ds, transform, len(ds.classes), layer=args.layer, val_set=val,
                                               epochs=args.epochs, lr=args.lr, progress=True)
    last = f"train acc {history.train_acc[-1]:.3f}" + (f", val acc {history.val_acc[-1]:.3f}" if val else "")
    print(f"retrained {args.layer} on {len(ds)} images of {len(ds.classes)} classes in "
          f"{time.perf_counter() - t0:.1f} s on backend {backend!r} ({last}); the other layers are unchanged")
    kept = {"mean": np.asarray(extra["mean"]).tolist()} if "mean" in extra else {}
    new.save(args.output, classes=list(ds.classes), **kept)
    print(f"wrote {args.output}")
    return 0


def cmd_predict(args):
    from zfraw import data, functional as F, nn, to_device, to_host
    from zfraw.io import classes

    _check_model_args(args)
    _select_backend(args.backend)
    img = data.load_image(args.image)
    net, names, _, transform = _images_net(args)
    x = to_device(transform(img)[None].astype(_net_dtype(net)))
    scores = net.forward(x, keep=False, cache=False)
    probs = scores if isinstance(list(net.layers.values())[-1], nn.Softmax) else F.softmax(scores)
    probs = np.asarray(to_host(probs))[0]
    names = classes.class_names(len(probs), names)
    top = np.argsort(-probs, kind="stable")[:args.top]
    print(f"{args.image}: top {len(top)} of {len(probs)} classes ({net.name})")
    for rank, k in enumerate(top, start=1):
        print(f"{rank:3d}. {probs[k]:7.2%}  {names[k]}  (class {k})")
    return 0


def _net_dtype(net):
    params = list(net.parameters().values())
    return params[0].dtype if params else np.float32


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
    _add_weights(s), _add_model(s), _add_preprocessing(s), _add_backend(s)
    s.set_defaults(func=cmd_project)

    s = sub.add_parser("top9", help="top-9 activations of features over a dataset, projected")
    s.add_argument("data", nargs="?", default="builtin", help="'builtin' or a folder of class folders")
    s.add_argument("--layer", default="conv5")
    s.add_argument("--features", type=_feature_list, default=None, help="comma-separated (default: the most active)")
    s.add_argument("--images", type=int, default=1000, help="--builtin: images to search (default 1000)")
    s.add_argument("-o", "--output", default="top9", help="output folder")
    _add_weights(s), _add_model(s), _add_preprocessing(s), _add_backend(s)
    s.set_defaults(func=cmd_top9)

    s = sub.add_parser("filters", help="the first layer's filters as a picture")
    s.add_argument("--layer", default=None, help="a conv layer on the image (default: the first)")
    s.add_argument("-o", "--output", default="filters.png")
    _add_weights(s), _add_model(s), _add_backend(s)
    s.set_defaults(func=cmd_filters)

    s = sub.add_parser("summary", help="the architecture table of a model")
    s.add_argument("--classes", type=int, default=None)
    _add_weights(s), _add_model(s, arch_names=True)
    s.set_defaults(func=cmd_summary)

    s = sub.add_parser("import", help="convert an ONNX model or a PyTorch state dict to a zfraw .npz")
    s.add_argument("model", metavar="MODEL", help="MODEL.onnx or MODEL.pth")
    s.add_argument("--arch", default=None, help="the architecture of a .pth (default alexnet_torchvision)")
    s.add_argument("-o", "--output", required=True, help="the zfraw weights file to write (.npz)")
    _add_preprocessing(s)
    s.set_defaults(func=cmd_import)

    s = sub.add_parser("retrain", help="keep a model's layers, retrain its last layer on a folder (paper 5.2)")
    s.add_argument("data", metavar="DATA", help="a folder of class folders")
    s.add_argument("--from", dest="source", default="builtin",
                   help="the model whose layers are kept: MODEL.npz|.onnx|.pth or 'builtin' (default)")
    s.add_argument("--arch", default=None, help="the architecture of a .pth (default alexnet_torchvision)")
    s.add_argument("--layer", default="fc8", help="the fully connected layer to retrain (default fc8)")
    s.add_argument("--val", default=None, help="a folder of class folders for validation (same classes)")
    s.add_argument("--epochs", type=int, default=30, help="epochs over the cached features (default 30)")
    s.add_argument("--lr", type=float, default=1e-2, help="SGD learning rate, constant (default 1e-2)")
    s.add_argument("-o", "--output", required=True, help="the retrained model (.npz)")
    _add_preprocessing(s), _add_backend(s)
    s.set_defaults(func=cmd_retrain)

    s = sub.add_parser("predict", help="the top-5 classes of an image")
    s.add_argument("image")
    s.add_argument("--top", type=int, default=5, help="how many classes to print (default 5)")
    _add_weights(s), _add_model(s), _add_preprocessing(s), _add_backend(s)
    s.set_defaults(func=cmd_predict)
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
