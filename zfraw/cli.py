"""The ``zfraw`` command line.

=================  ==============================================================
``zfraw demo``     the built-in model and dataset -> an HTML report of deconvnet pictures
``zfraw check``    every op against SciPy, gradient and transpose checks (a table)
``zfraw train``    train a network (``--builtin`` reproduces the shipped model)
``zfraw project``  project one image at a layer/feature back to pixels (a picture)
``zfraw top9``     the top-9 activations of features over a dataset (PNGs)
``zfraw filters``  the layer-1 filters as a montage (a picture)
``zfraw summary``  the architecture table of a model
``zfraw import``   an ONNX model or a PyTorch state dict -> a zfraw .npz
``zfraw predict``  the top-5 classes of an image
``zfraw retrain``  keep a model's layers, retrain its last layer on a folder
``zfraw occlude``  occlusion sensitivity of one image (fig. 7): five panels in a PNG
``zfraw correspond`` part correspondence (table 1): Delta per part and layer vs random boxes
``zfraw invariance``  feature distances and class probability under translation, scale, rotation (fig. 5)
``zfraw evolution``   the strongest features at snapshots taken during training (fig. 4)
``zfraw compare-first-layer``  AlexNet's first layer against ZFNet's: dead filters, aliasing (fig. 6)
=================  ==============================================================

``project``, ``top9``, ``filters``, ``predict`` and ``summary`` take ``--model
MODEL.onnx|.pth|.npz`` (an imported network, with the preprocessing it records or
the ``--channel-order/--scale/--mean/--std/--input-size`` given) besides ``--weights``.

Each command is one small ``cmd_<name>(args)`` function; :func:`build_parser`
declares its options.  Every error a user can cause (a bad option, a missing or
unreadable file, an output path that cannot be written, a diverging run) prints
one line ``zfraw COMMAND: error: ...`` on stderr and exits with status 2; set
``ZFRAW_DEBUG=1`` for the traceback.  Output paths are checked before any long
work starts.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import math
import os
import sys
import tempfile
import time
import warnings
import zipfile

import numpy as np

__all__ = ["main", "build_parser", "UsageError"]


class UsageError(Exception):
    """A user error: printed as one line, exit status 2."""


# ============================================================== option types

def _int_type(minimum):
    """An argparse type: a whole number >= ``minimum``."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"
    return parse


#: argparse type: an int >= 1
positive_int = _int_type(1)


def _float_type(minimum, strict):
    """An argparse type: a finite float > ``minimum`` (``strict``) or >= ``minimum``; any finite float
    when ``minimum`` is None."""
    relation = ">" if strict else ">="
    wanted = "a finite number" if minimum is None else f"a finite number {relation} {minimum:g}"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        in_range = minimum is None or (value > minimum if strict else value >= minimum)
        if not (math.isfinite(value) and in_range):
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
        return value

    parse.__name__ = wanted
    return parse


#: argparse types: a finite float > 0, >= 0, and any finite float
positive_float = _float_type(0.0, strict=True)
non_negative_float = _float_type(0.0, strict=False)
finite_float = _float_type(None, strict=False)


def feature_list(text):
    """argparse type: comma-separated feature indices, e.g. ``3,7``."""
    try:
        values = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated feature numbers, got {text!r}") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated feature numbers >= 0, got {text!r}")
    return values


# ============================================================== shared helpers

def _add_dask(p):
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="scan on a local Dask cluster of N worker processes (needs zfraw[dask]; default: no cluster)")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="scan on an existing Dask cluster at this address (default: none)")
    p.add_argument("--shard-dir", default=None, metavar="DIR",
                   help="with --workers/--scheduler: keep each finished shard here; run again to resume "
                        "(default: none)")


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
    """The backend to run on: ``--backend``, else ``ZFRAW_BACKEND``, else numba if installed, else numpy."""
    import zfraw

    if name is None:
        name = os.environ.get("ZFRAW_BACKEND") or ("numba" if "numba" in zfraw.backends() else "numpy")
    zfraw.set_backend(name)
    return zfraw.get_backend().name


def _names_file(message, path):
    return os.fspath(path) in message or os.path.basename(os.fspath(path)) in message


#: what to give instead of a model file that cannot be read: a zfraw .npz (--weights), or any model (--model)
NPZ_HINT = "give a .npz written by zfraw (net.save, zfraw train)"
MODEL_HINT = "give an ONNX model (.onnx), a PyTorch state dict (.pth, .pt) or a .npz written by zfraw"


def _read_model_file(path, option, read, hint=NPZ_HINT):
    """``read(path)``, with any failure to read a model file turned into one UsageError naming it."""
    if not os.path.exists(path):
        raise UsageError(f"{option} {path!r}: no such file")
    if os.path.isdir(path):
        what = "a zfraw weights file (.npz)" if hint is NPZ_HINT else "a model file"
        raise UsageError(f"{option} {path!r} is not {what}: it is a folder; {hint}")
    try:
        return read(path)
    except (OSError, ValueError, TypeError, KeyError, EOFError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        text = _describe(exc)
        if "pickle" in text or isinstance(exc, TypeError):  # never NumPy's advice to load it unsafely
            raise UsageError(f"{option} {path!r} is not a zfraw model file (not a .npz archive of arrays); "
                             f"{hint}") from exc
        if _names_file(text, path):
            raise UsageError(f"{option}: {text}; {hint}") from exc
        raise UsageError(f"{option} {path!r} is not a readable zfraw model file ({text}); {hint}") from exc


def _model_label(weights, net):
    """Which model a report shows: 'the built-in zfnet_mini' or 'mine.npz (zfnet_mini)'."""
    return "the built-in zfnet_mini" if weights is None else f"{os.path.basename(weights)} ({net.name})"


def _load_net(weights, option="--weights"):
    """(net, classes, mean) from --weights (any file failure: one UsageError naming it) or the built-in model."""
    from zfraw import builtin, nn, to_device

    if weights is None:
        net, meta = builtin.load_model()
    else:
        net = _read_model_file(weights, option, lambda p: nn.load(p).eval())
        meta = _read_model_file(weights, option, nn.read_meta).get("extra", {})
    try:
        mean = np.asarray(meta.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    except (TypeError, ValueError):
        raise UsageError(f"{option} {weights!r}: its 'mean' metadata is not a list of numbers") from None
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes)):
        classes = None
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
    g.add_argument("--channel-order", choices=["RGB", "BGR"], default=None, help="the network's channel order (default: what the model records)")
    g.add_argument("--scale", type=float, choices=[1.0, 255.0], default=None,
                   help="pixel range the network expects: 1 (0-1) or 255 (0-255) (default: what the model records)")
    g.add_argument("--mean", type=_triple_arg, default=None, metavar="A,B,C",
                   help="per-channel mean to subtract, in the network's channel order and scale (default: what the model records)")
    g.add_argument("--std", type=_triple_arg, default=None, metavar="A,B,C", help="per-channel std to divide by (default: what the model records)")
    g.add_argument("--input-size", type=positive_int, default=None, help="side of the square input (default: what the model records)")
    g.add_argument("--resize", type=positive_int, default=None, help="shorter side before the centre crop (default: what the model records)")
    g.add_argument("--preset", default=None,
                   help="a named preprocessing: zfnet512, caffenet, bvlc_alexnet, alexnet_torchvision (default: none)")


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


def _open_model(args, model_option="--model"):
    """(net, extra) from --model (a file; ``model_option`` names it in errors) or --weights / the
    built-in model; the command line's preprocessing applied."""
    from zfraw import builtin, to_device
    from zfraw.io import files

    _check_model_args(args)
    model = getattr(args, "model", None)
    if model is None:
        net, extra = (builtin.load_model() if args.weights is None
                      else _read_model_file(args.weights, "--weights", files.load_model))
        net = to_device(net)
    else:
        try:
            net, extra = _read_model_file(model, model_option,
                                          lambda p: files.load_model(p, arch=getattr(args, "arch", None)),
                                          hint=MODEL_HINT)
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
        transform = prep.transform()
        transform.shorter_side = prep.resize  # where the crop lies (cmd_project draws it)
        return files.for_images(net), extra.get("classes"), None, transform
    mean = np.asarray(extra.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    side = _input_side(net)
    return net, extra.get("classes"), mean, data.eval_transform(side, side, mean)


def _input_side(net):
    if net.input_shape is None:
        raise UsageError("the model does not record its input size; it cannot preprocess images")
    return int(net.input_shape[-1])


def _dataset(spec, n):
    """A dataset from DATA: 'builtin' (the built-in val split, about ``n`` images) or a class-per-folder directory."""
    from zfraw import builtin, data

    if spec in (None, "builtin"):
        return builtin.dataset("val", n_per_class=max(1, math.ceil(n / 10)))
    if not os.path.isdir(spec):
        raise UsageError(f"DATA {spec!r} is neither 'builtin' nor a folder of class folders")
    return data.ImageFolder(spec, skip_bad=True)


def _existing_ancestor(folder):
    while not os.path.exists(folder):
        parent = os.path.dirname(folder)
        if parent == folder:
            break
        folder = parent
    return folder


def check_writable_folder(folder, option, path):
    """Refuse, before any work, a folder that is a file or in which no file can be created.

    A folder that does not exist yet is fine if its nearest existing ancestor is
    writable (it is created when the output is written).  The test is a real
    one: a temporary file is created there and removed (this catches read-only
    file systems and permissions alike).
    """
    folder = os.path.abspath(folder or ".")
    base = _existing_ancestor(folder)
    if not os.path.isdir(base):
        raise UsageError(f"{option} {path!r}: {base!r} is a file, not a folder; choose another path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".zfraw-probe-", dir=base)
    except OSError as exc:
        raise UsageError(f"{option} {path!r}: cannot write in {base!r} ({exc.strerror or exc}); "
                         f"choose a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path, option, suffixes):
    """Refuse, before any work, an output file path that cannot be written: wrong suffix, a folder, no access."""
    path = os.fspath(path)
    if suffixes and not path.lower().endswith(tuple(suffixes)):
        raise UsageError(f"{option} {path!r} must end in {' or '.join(suffixes)}")
    if os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a folder; give a file name in it, e.g. "
                         f"{os.path.join(path, 'out' + (suffixes[0] if suffixes else ''))!r}")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise UsageError(f"{option} {path!r} exists and is not writable; choose another name")
    check_writable_folder(os.path.dirname(os.path.abspath(path)), option, path)
    return path


def check_output_folder(path, option):
    """Refuse, before any work, an output folder that is a file or cannot be created/written."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{option} {path!r} is a file; give a folder")
    check_writable_folder(path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path)), option, path)
    return path


def picture_format(path, option):
    """The Pillow format that ``path``'s suffix names (``.png`` -> PNG, ``.jpg`` -> JPEG); UsageError if none."""
    from PIL import Image

    suffix = os.path.splitext(os.fspath(path))[1].lower()
    formats = Image.registered_extensions()
    if suffix not in formats or formats[suffix] not in Image.SAVE:
        raise UsageError(f"{option} {path!r}: {suffix or 'no suffix'} is not a picture format Pillow can write; "
                         f"end the name in .png, .jpg, .webp, .bmp or .tif")
    return formats[suffix]


def _save_picture(picture, path, option):
    """Save a PIL image atomically (temporary file beside it, then rename), in the format of its suffix."""
    from zfraw.nn import atomic_write

    fmt = picture_format(path, option)
    if fmt == "JPEG":
        picture = picture.convert("RGB")
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    atomic_write(path, lambda fh: picture.save(fh, format=fmt, **options))


def _forbid(args, option, names, reason):
    """UsageError if any of the options ``names`` (argparse dests, default None) was given with ``option``."""
    given = [n for n in names if getattr(args, n) not in (None, False)]
    if given:
        flags = ", ".join("--" + n.replace("_", "-") for n in given)
        raise UsageError(f"{option} and {flags} exclude each other: {reason}")


# ============================================================== commands

def _demo_sections(net, ds, transform, model_classes, builtin_weights):
    """The demo's sections for invariance (fig. 5), feature evolution (fig. 4) and the first layer (fig. 6).

    The invariance curves follow the images' true class when the model's classes are the
    dataset's, else its prediction; the evolution section needs the built-in model's snapshots.
    """
    from functools import partial

    from zfraw import builtin, nn, report, to_device
    from zfraw.analysis import evolution as evo
    from zfraw.analysis import first_layer as fl

    first = {}
    for i, label in enumerate(np.asarray(ds.labels).tolist()):
        first.setdefault(label, i)
    picks = [first[c] for c in (2, 1, 4, 3) if c in first] or [0]  # a face, a car, a star, a house
    x = np.stack([transform(ds[i][0]) for i in picks]).astype(np.float32)
    same_classes = model_classes is not None and list(model_classes) == list(ds.classes)
    target = np.asarray([ds.labels[i] for i in picks], dtype=np.int64) if same_classes else None
    sections = [partial(report.invariance_section, net=net, x=x, labels=[ds.classes[ds.labels[i]] for i in picks],
                        target=target)]
    if builtin_weights and os.path.exists(evo.builtin_snapshots_path()):
        epochs, nets, _ = evo.load_snapshots(evo.builtin_snapshots_path(), like=net)
        image_set = np.stack([transform(ds[i][0]) for i in range(min(100, len(ds)))]).astype(np.float32)
        sections.append(partial(report.evolution_section, snapshots=(epochs, [to_device(n) for n in nets]),
                                x=image_set, note=evo.BUILTIN_NOTE))
    convs = [lyr for _, lyr in net if isinstance(lyr, nn.Conv2d)]
    if builtin_weights:  # the shipped zfnet_mini and, when installed, alexnet_mini
        nets = {f"built-in {name}": (to_device(other), builtin.eval_transform(mean))
                for name, (other, mean) in builtin.first_layer_models().items()}
    elif len(convs) >= 2 and convs[0].in_channels == 3:
        nets = {net.name: (net, transform)}
    else:
        nets = {}
    if nets:
        sections.append(lambda img_dir: report.first_layer_section(
            img_dir, {name: fl.first_layer_report(other, ds, tr, limit=min(200, len(ds)))
                      for name, (other, tr) in nets.items()}))
    return sections


def cmd_check(args):
    from zfraw import checks

    return checks.main(_select_backend(args.backend), args.seed)


def cmd_demo(args):
    from zfraw import builtin, data, nn, report

    check_output_folder(args.out, "--out")
    backend = _select_backend(args.backend)
    net, model_classes, mean = _load_net(args.weights)
    label = _model_label(args.weights, net)
    side = _input_side(net)
    layers = [n for n, lyr in net if isinstance(lyr, nn.Conv2d)]
    if not layers:
        raise UsageError(f"--weights {args.weights!r}: the model has no convolution layer to show")
    ds = builtin.dataset("val", n_per_class=max(1, math.ceil(args.images / 10)))
    if args.weights is None:
        title = "zfraw demo: what the built-in ZFNet learned"
    else:
        title = f"zfraw demo: what {label} learned"
    t0 = time.perf_counter()
    with _scan_function(args) as scan_layers:
        index = report.write_report(
            args.out, net, ds, data.eval_transform(side, side, mean), mean, classes=ds.classes, layers=layers,
            model_classes=model_classes, features_per_layer=args.features, n_images=args.images,
            progress=not args.quiet, title=title, description=f"The model: {label}.", scan_layers=scan_layers,
            occlusion=True, correspondence=True,
            sections=_demo_sections(net, ds, data.eval_transform(side, side, mean), model_classes,
                                    builtin_weights=args.weights is None),
        )
    print(f"wrote {index} ({time.perf_counter() - t0:.0f} s on backend {backend!r}); open it in a browser")
    return 0


def cmd_train(args):
    try:
        return _train_builtin(args) if args.builtin else _train_folder(args)
    except KeyboardInterrupt:  # Ctrl-C: say what is kept and how to go on
        print(f"interrupted; {_resume_hint(args.checkpoint)}", file=sys.stderr)
        return 130


def _resume_hint(checkpoint):
    """What a stopped training run left: the checkpoint's epoch and how to continue, or that nothing was kept."""
    from zfraw.io import npz

    if not checkpoint or not os.path.exists(checkpoint):
        return "nothing was saved (--checkpoint FILE keeps every epoch, and --resume continues from it)"
    try:
        epoch = npz.read_meta(checkpoint).get("epoch")
    except (OSError, ValueError, zipfile.BadZipFile):
        epoch = None
    done = f"holds epoch {epoch}" if epoch is not None else "holds the last finished epoch"
    return f"{checkpoint} {done}: run the same command with --resume to continue"


def _train_builtin(args):
    from zfraw import builtin

    _forbid(args, "--builtin", ("data", "val", "size", "lr", "batch_size", "weight_decay", "init",
                                "patience", "seed"),
            "--builtin trains the shipped model with its own recipe (see zfraw.builtin.RECIPE)")
    model = args.model or "zfnet_mini"
    if model not in ("zfnet_mini", "alexnet_mini"):
        raise UsageError(f"--builtin trains --model zfnet_mini or alexnet_mini (AlexNet's first layer, for "
                         f"zfraw compare-first-layer), not {model}")
    out = _train_outputs(args, f"{model}.npz")
    backend = _select_backend(args.backend)
    print(f"training the built-in {model} on backend {backend!r} -> {out}")
    t0 = time.perf_counter()
    history = builtin.train_builtin(out, epochs=args.epochs, n_train_per_class=args.n_per_class,
                                    checkpoint=args.checkpoint, resume=args.resume, snapshots=args.snapshots,
                                    snapshot_dir=_snapshot_dir(args, out) if args.snapshots else None, model=model)
    print(f"held-out accuracy {history.val_acc[-1]:.3f} after {time.perf_counter() - t0:.0f} s; saved {out}")
    return 0


def _train_outputs(args, default_out):
    """Check --out, --checkpoint (with --resume) and --snapshots before any work; remove stale temporaries.

    Returns the --out path.
    """
    from zfraw.io import npz

    out = check_output_file(args.out or default_out, "--out", [".npz"])
    if args.checkpoint:
        check_output_file(args.checkpoint, "--checkpoint", [".npz"])
        if os.path.abspath(args.checkpoint) == os.path.abspath(out):
            raise UsageError(f"--checkpoint and --out are the same file {out!r}; give them different names")
    elif args.resume:
        raise UsageError("--resume needs --checkpoint FILE (the checkpoint to continue from)")
    if args.snapshots:
        check_output_folder(_snapshot_dir(args, out), "--snapshot-dir")
    for path in (out, args.checkpoint):
        if path:
            for name in npz.remove_stale_temporaries(path):
                print(f"removed {name}, left by a write that was interrupted", file=sys.stderr)
    return out


def _snapshot_dir(args, out):
    """--snapshot-dir, or beside --out: OUT_snapshots/ (as zfraw.builtin.train_builtin)."""
    return args.snapshot_dir or (out[:-4] if out.endswith(".npz") else out) + "_snapshots"


def _image_folder(root, option):
    from zfraw import data

    if not os.path.isdir(root):
        raise UsageError(f"{option} {root!r} is not a folder (expected a folder with one sub-folder per class)")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = data.ImageFolder(root, skip_bad=True)
    for w in caught:
        print(f"warning: {option}: {w.message}", file=sys.stderr)
    return ds


def _training_data(args):
    """The training and validation folders, checked: two classes or more, matching class folders."""
    ds = _image_folder(args.data, "--data")
    present = sorted({ds.classes[k] for k in np.unique(ds.labels)})
    if len(present) < 2:
        raise UsageError(f"--data {args.data!r} has images of {len(present)} class ({', '.join(present)}); "
                         f"a classifier needs at least two class folders with images")
    val = None
    if args.val:
        val = _image_folder(args.val, "--val")
        if val.classes != ds.classes:
            only_train = sorted(set(ds.classes) - set(val.classes))
            only_val = sorted(set(val.classes) - set(ds.classes))
            detail = "; ".join(part for part in (
                f"only in --data: {', '.join(only_train)}" if only_train else "",
                f"only in --val: {', '.join(only_val)}" if only_val else "") if part)
            raise UsageError(f"--val {args.val!r} must have the class folders of --data {args.data!r} "
                             f"({detail}); give both the same class folder names")
    return ds, val


def _batch_size(requested, n):
    if n < 2:
        raise UsageError(f"--data has {n} readable image; training needs at least 2")
    if requested <= n:
        return requested
    print(f"warning: --batch-size {requested} is larger than the {n} training images; using batches of {n} "
          f"(one update per epoch: add images or lower --batch-size)", file=sys.stderr)
    return n


#: ``--init`` choices: keyword arguments of the model builders, and what to print
INITS = {
    "he": (dict(init_std="he"), "He N(0, 2/fan_in) in every layer"),
    "builtin": (dict(init_std="he", first_init_std=1e-2), "He N(0, 2/fan_in), conv1 N(0, 1e-2) (the built-in model's)"),
    "paper": (dict(init_std=1e-2), "the paper's N(0, 1e-2) in every layer"),
}

#: the default recipe of ``zfraw train --data`` (documented in --help and the README)
FOLDER_RECIPE = dict(init="he", lr=5e-3, batch_size=16, weight_decay=5e-4, epochs=30,
                     lr_factor=10.0, lr_floor_ratio=100.0, pad_width=4, momentum=0.9)


def plateau_patience(n_images, batch_size):
    """Epochs without improvement before the learning rate drops: about 100 updates, 3 to 10 epochs."""
    steps = max(1, n_images // batch_size)
    return int(min(10, max(3, math.ceil(100 / steps))))


def _train_folder(args):
    """Train a model on a class-per-folder dataset (--data)."""
    from zfraw import data, models, train

    if not args.data:
        raise UsageError("give --builtin, or --data DIR (a folder of class folders) to train on")
    _forbid(args, "--data", ("n_per_class",), "--n-per-class sets the size of the built-in dataset")
    r = dict(FOLDER_RECIPE)
    model = args.model or "zfnet_mini"
    out = _train_outputs(args, f"{model}.npz")
    backend = _select_backend(args.backend)
    ds, val = _training_data(args)
    epochs = args.epochs or r["epochs"]
    batch_size = _batch_size(args.batch_size or r["batch_size"], len(ds))
    lr = args.lr or r["lr"]
    weight_decay = r["weight_decay"] if args.weight_decay is None else args.weight_decay
    seed = 0 if args.seed is None else args.seed
    init = args.init or r["init"]
    init_kw, init_text = INITS[init]
    net = models.build(model, num_classes=len(ds.classes), seed=seed, **init_kw)
    side = _input_side(net)
    size = args.size or side
    if size < side:
        raise UsageError(f"--size {size} is smaller than the model's input {side}x{side}")
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        _check_resumable(args.checkpoint, ds.classes)

    print(f"training {model} ({side}x{side}) on {len(ds)} images of {len(ds.classes)} classes "
          f"({', '.join(ds.classes)}) on backend {backend!r}; init: {init_text}")
    print(f"computing the per-channel mean of {len(ds)} images ...")
    mean = data.compute_mean(ds, size=size)
    patience = args.patience or plateau_patience(len(ds), batch_size)
    min_lr = lr / r["lr_floor_ratio"]
    watched = "validation" if val is not None else "training"
    print(f"recipe: SGD lr {lr:g}, momentum {r['momentum']}, weight decay {weight_decay:g}, batch {batch_size}, "
          f"{epochs} epochs; lr / {r['lr_factor']:g} after {patience} epochs without a better {watched} loss, "
          f"down to {min_lr:g}")

    def train_batches(epoch):
        rng = np.random.default_rng([seed, epoch])
        transform = data.train_transform(size, side, mean, rng=rng, pad_width=r["pad_width"] if size == side else 0)
        return data.batches(ds, batch_size, transform, shuffle=True, rng=rng, drop_last=True)

    def val_batches():
        return data.batches(val, 64, data.eval_transform(size, side, mean))

    meta = dict(classes=list(ds.classes), mean=np.asarray(mean).tolist(), init=init)
    best = _BestKeeper(out, meta) if val is not None else None

    def on_epoch(epoch, net, history):
        if best is not None:
            best.offer(epoch, net, history)

    schedule = train.PlateauSchedule(factor=r["lr_factor"], patience=patience, min_lr=min_lr,
                                     monitor="val_loss" if val is not None else "train_loss")
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run ends in fit's FloatingPointError
        history = train.fit(net, train_batches, val_batches if val is not None else None, epochs=epochs, lr=lr,
                            momentum=r["momentum"], weight_decay=weight_decay, checkpoint=args.checkpoint,
                            resume=args.resume, schedule=schedule, extra=meta, on_epoch=on_epoch,
                            snapshots=args.snapshots, snapshot_dir=_snapshot_dir(args, out))
    if best is not None and best.saved_epoch is None and history.epoch and os.path.exists(out):
        best.recall(history, len(history.epoch))  # resumed after its last epoch: the best file stands
    if best is not None and best.saved_epoch is not None:
        print(f"saved {out}: the model of epoch {best.saved_epoch} of {len(history.epoch)}, the best on --val "
              f"(validation accuracy {best.acc:.3f}, loss {best.loss:.4f})")
    else:
        net.save(out, history=history.train_loss, **meta)
        print(f"saved {out}: the model after epoch {len(history.epoch)} (training accuracy "
              f"{history.train_acc[-1]:.3f}; give --val DIR to keep the best model on held-out images)")
    return 0


class _BestKeeper:
    """Saves the model to ``out`` whenever its validation accuracy is the best so far (ties: lower loss)."""

    def __init__(self, out, meta):
        self.out, self.meta = out, meta
        self.acc, self.loss, self.saved_epoch = -1.0, math.inf, None

    def recall(self, history, n):
        """A resumed run: the best of the first ``n`` epochs is the file written before."""
        k = max(range(n), key=lambda i: (history.val_acc[i], -history.val_loss[i]))
        self.acc, self.loss, self.saved_epoch = history.val_acc[k], history.val_loss[k], history.epoch[k]

    def offer(self, epoch, net, history):
        if self.saved_epoch is None and len(history.epoch) > 1 and os.path.exists(self.out):
            self.recall(history, len(history.epoch) - 1)
        acc, loss = history.val_acc[-1], history.val_loss[-1]
        if (acc, -loss) > (self.acc, -self.loss):
            net.save(self.out, epoch=epoch, val_acc=acc, val_loss=loss, **self.meta)
            self.acc, self.loss, self.saved_epoch = acc, loss, epoch


def _check_resumable(checkpoint, classes):
    from zfraw import nn

    meta = _read_model_file(checkpoint, "--checkpoint", nn.read_meta)
    saved = meta.get("extra", {}).get("classes")
    if saved is not None and list(saved) != list(classes):
        raise UsageError(f"--checkpoint {checkpoint!r} was trained on the classes {', '.join(saved)}, not on "
                         f"those of --data ({', '.join(classes)}); give another checkpoint or drop --resume")


def eval_crop_box(h, w, side):
    """Where ``eval_transform(side, side)``'s crop lies in an h x w image: (top, left, bottom, right)."""
    scale = side / min(h, w)
    rh, rw = (side, max(1, round(w * scale))) if h <= w else (max(1, round(h * scale)), side)
    top, left = (rh - side) // 2, (rw - side) // 2
    return top / scale, left / scale, (top + side) / scale, (left + side) / scale


def cmd_project(args):
    from zfraw import data, to_device, visualize

    _check_picture_output(args.output)
    _check_model_args(args)
    _select_backend(args.backend)
    img = data.load_image(args.image)
    net, _, mean, transform = _images_net(args)
    net.check_layer(args.layer)
    side = _input_side(net)
    h, w = img.shape[:2]
    size = max(side, min(h, w)) if args.no_resize else getattr(transform, "shorter_side", side)
    if mean is not None:
        transform = data.eval_transform(size, side, mean)
    x = transform(img)
    picture, info = visualize.project_image(net, to_device(x[None]), args.layer, feature=args.feature,
                                            rule=args.rule, mean=mean, return_info=True)
    resized = "" if (h, w) == (side, side) else (
        f"input {w}x{h} (width x height) resized to shorter side {size} and centre-cropped to {side}x{side}")
    if resized:
        picture = visualize.beside_input(picture, img, eval_crop_box(h, w, size) if not args.no_resize else
                                         ((h - side) // 2, (w - side) // 2, (h - side) // 2 + side,
                                          (w - side) // 2 + side), resized + " (the box)")
    _save_picture(picture, args.output, "-o/--output")
    row, col = info["location"]
    line = (f"wrote {args.output}: {args.layer} feature {info['feature']} at (row, col) = ({row}, {col}), "
            f"activation {info['value']:.3g}")
    if not info["fires"]:
        line += "; this feature does not fire on this image (activation <= 0): the projection shows nothing it detects"
    print(line + (f"; {resized}" if resized else ""))
    return 0


def cmd_top9(args):
    from zfraw import visualize

    check_output_folder(args.output, "-o/--output")
    _select_backend(args.backend)
    net, _, mean, transform = _images_net(args)
    net.check_layer(args.layer)
    ds = _dataset(args.data, args.images)
    records = None
    with _scan_function(args) as scan_layers:
        if scan_layers is not None:
            from zfraw.analysis.topk import feature_records

            (store, width), = scan_layers(net, ds, [args.layer], transform=transform, progress=True,
                                          limit=args.images).values()
            records = feature_records(store, width, args.features, args.layer)
    figures = visualize.top9(net, ds, args.layer, args.features, transform, mean, progress=True, records=records,
                             limit=args.images)
    os.makedirs(args.output, exist_ok=True)
    for feature, picture in figures.items():
        path = os.path.join(args.output, f"{args.layer}_feature{feature}.png")
        _save_picture(picture, path, "-o/--output")
        print(f"wrote {path}")
    return 0


def cmd_filters(args):
    from zfraw import nn, to_host, visualize

    _check_picture_output(args.output)
    _select_backend(args.backend)
    net, _ = _open_model(args)
    convs = [n for n, lyr in net if isinstance(lyr, nn.Conv2d)]
    if not convs:
        raise UsageError("the model has no convolution layer, so it has no filters to show")
    layer = args.layer or convs[0]
    net.check_layer(layer)
    if layer not in convs:
        raise UsageError(f"--layer {layer!r} is a {type(net[layer]).__name__} layer, which has no filters; "
                         f"give a convolution layer: {', '.join(convs)}")
    w = to_host(net[layer].params["w"])
    if net.preprocessing is not None and net.preprocessing.channel_order == "BGR" and w.shape[1] == 3:
        w = w[:, ::-1]  # show a BGR network's filters in RGB
    if w.shape[1] != 3:
        raise UsageError(f"--layer {layer!r} does not see the RGB image (its filters have {w.shape[1]} channels); "
                         f"only {convs[0]!r} can be drawn as colour filters")
    _save_picture(visualize.filters_image(w), args.output, "-o/--output")
    print(f"wrote {args.output}")
    return 0


def cmd_summary(args):
    from zfraw import models, nn, visualize
    from zfraw.io import files

    if args.model and args.model.lower().endswith(files.MODEL_SUFFIXES):
        _forbid(args, "--model FILE", ("classes",), "a model file carries its own architecture")
        net, _ = _open_model(args)
    elif args.weights:
        _forbid(args, "--weights", ("model", "classes"), "a weights file carries its own architecture")
        net = _read_model_file(args.weights, "--weights", nn.load)
    else:
        net = models.build(args.model or "zfnet", **({"num_classes": args.classes} if args.classes else {}))
    rows = visualize.architecture_table(net)
    print(visualize.format_table(rows))
    print(f"\n{net.num_parameters():,} parameters")
    return 0


def cmd_import(args):
    from zfraw import visualize
    from zfraw.io import classes

    _check_output(args.output, ".npz")
    if not args.model.lower().endswith((".onnx", ".pth", ".pt")):
        raise UsageError(f"MODEL {args.model!r} must be an ONNX model (.onnx) or a PyTorch state dict (.pth, .pt)")
    t0 = time.perf_counter()
    net, _ = _open_model(args, model_option="MODEL")
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
    check_output_file(path, "-o/--output", [suffixes] if isinstance(suffixes, str) else list(suffixes))


def _check_picture_output(path):
    """Refuse, before any long work, an -o that names no picture format Pillow writes or cannot be written."""
    picture_format(path, "-o/--output")
    check_output_file(path, "-o/--output", None)


def cmd_occlude(args):
    from zfraw import data, deconvnet, to_device, visualize
    from zfraw.analysis.occlusion import occlusion, strongest_drop
    from zfraw.io.classes import class_names
    from zfraw.io.files import INPUT_LAYER
    from zfraw.render.occlusion import occlusion_figure

    _check_picture_output(args.output)
    _check_model_args(args)
    backend = _select_backend(args.backend)
    img = data.load_image(args.image)
    net, classes, mean, transform = _images_net(args)
    if args.layer is not None:
        net.check_layer(args.layer)
    side = _input_side(net)
    x = to_device(transform(img)[None])
    scores = net.forward(x, keep=False, cache=False)
    classes = _class_names(args.classes, classes)
    if classes is None and scores.shape[1] == 1000:
        classes = class_names(1000)  # an imported ImageNet model
    target = _class_index(args.target, classes, scores.shape[1])
    size = args.size if args.size is not None else max(1, side // 4)
    stride = args.stride if args.stride is not None else max(1, size // 4)
    fill = args.fill
    if fill is None:  # the training mean: 0 once it is subtracted, or an imported model's mean pixel
        fill = net[INPUT_LAYER].pixel_mean() if INPUT_LAYER in net.layers else 0.0
    maps = occlusion(net, x, size, stride, layer=args.layer, feature=args.feature, target=target,
                     fill=fill, batch_size=args.batch_size)
    unoccluded = float(_host_float(net.probabilities(scores)[0, maps.target[0]]))
    projection = deconvnet.project(net, x, maps.layer, feature=maps.feature)
    net.clear()
    figure = occlusion_figure(maps, 0, visualize.image_to_uint8(_host_float(x[0]), mean),
                              _host_float(projection[0]), classes=classes)
    _save_picture(figure, args.output, "-o/--output")
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
        atomic_write(args.output, lambda fh: fh.write(text.encode("utf-8")))
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

    _check_picture_output(args.output)
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
    _save_picture(invariance_figure(result, layers, kind=args.kind, labels=names), args.output, "-o/--output")
    for lyr in layers:
        worst = np.nanmax(result[lyr]["relative"], axis=1)
        print(f"{lyr}: largest relative distance per image " + ", ".join(f"{v:.3f}" for v in worst))
    print(f"wrote {args.output}")
    return 0


def cmd_predict(args):
    from zfraw import data, to_device, to_host
    from zfraw.io import classes

    _check_model_args(args)
    _select_backend(args.backend)
    img = data.load_image(args.image)
    net, names, _, transform = _images_net(args)
    x = to_device(transform(img)[None].astype(_net_dtype(net)))
    scores = net.forward(x, keep=False, cache=False)
    probs = net.probabilities(scores)
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


def cmd_evolution(args):
    from zfraw import data
    from zfraw.analysis import evolution as evo
    from zfraw.render.evolution import evolution_figure

    _check_picture_output(args.output)
    _select_backend(args.backend)
    if args.weights and not args.snapshots:
        raise UsageError("--weights needs the snapshots of that model's training (SNAPSHOTS: a folder or a packed file)")
    snapshots = args.snapshots or evo.builtin_snapshots_path()
    like = _load_net(args.weights)[0] if args.weights else None
    epochs, nets, extra = evo.load_snapshots(snapshots, like=like)
    mean = np.asarray(extra.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    side = _input_side(nets[-1])
    ds = _dataset(args.data, args.images)
    n = min(args.images, len(ds))
    transform = data.eval_transform(side, side, mean)
    x = np.stack([transform(ds[i][0]) for i in range(n)]).astype(np.float32)
    result = evo.evolution((epochs, nets), x, args.layers, n_features=args.features, progress=True)
    _save_picture(evolution_figure(result), args.output, "-o/--output")
    print(f"wrote {args.output} (epochs {', '.join(map(str, epochs))}, {n} images)")
    return 0


def cmd_compare_first_layer(args):
    from zfraw import builtin, data
    from zfraw.analysis import first_layer as fl
    from zfraw.render.first_layer import first_layer_figure, report_line

    _check_picture_output(args.output)
    _select_backend(args.backend)
    if args.weights:
        nets = {}
        for path in args.weights:
            nets[os.path.basename(path)] = _load_net(path)
    else:
        nets = {name: (net, None, mean) for name, (net, mean) in builtin.first_layer_models().items()}
    reports = {}
    for name, (net, _, mean) in nets.items():
        side = _input_side(net)
        ds = _dataset(args.data, args.images)
        reports[name] = fl.first_layer_report(net, ds, data.eval_transform(side, side, mean),
                                              n_features=args.features, limit=args.images, progress=True)
        print(report_line(name, reports[name]))
    _save_picture(first_layer_figure(reports), args.output, "-o/--output")
    print(f"wrote {args.output}")
    return 0


# ============================================================== parser

class _Parser(argparse.ArgumentParser):
    """argparse with errors on one line (no usage block), exit status 2, and help lines with defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown argument is reported by the subcommand it was given to."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            commands = getattr(self, "subcommands", None)
            owner = commands.choices.get(getattr(parsed, "command", None), self) if commands else self
            owner.error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help lines that end with the option's default unless they say it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or any(action.default is v for v in (None, False, argparse.SUPPRESS))
                or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def _add_backend(p):
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="numpy, numba, cupy or cuda (default: $ZFRAW_BACKEND, else numba if installed, else numpy)")


def _add_weights(p):
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="a model saved by zfraw (.npz) (default: the built-in trained zfnet_mini)")


_TRAIN_HELP = """\
--data DIR trains on a folder of class folders (DIR/<class>/<images>); the default recipe is
chosen for small folders (tens to thousands of images):
  init         He N(0, 2/fan_in) in every layer; --init builtin keeps conv1 at N(0, 1e-2) as the
               built-in model does (prettier conv1 filters, a slower start on small folders);
               --init paper is the paper's N(0, 1e-2) everywhere, which leaves these nets at
               chance for many epochs
  SGD          lr 5e-3 (half the paper's: the batches are small), momentum 0.9, weight decay 5e-4,
               batch 16 (the whole folder, with a warning, when it has fewer images), 30 epochs,
               the paper's filter renormalization (RMS <= 0.1)
  schedule     lr / 10 when the validation loss (the training loss without --val) has not
               improved for PATIENCE epochs, never below lr / 100; PATIENCE defaults to about
               100 updates' worth of epochs, between 3 and 10 (--patience)
  augmentation random crops of the image padded by 4 pixels, random mirrors
  saved model  with --val, the epoch with the best validation accuracy (ties: lower loss);
               without, the last epoch
--builtin reproduces the shipped model with its own recipe (zfraw.builtin.RECIPE).
"""


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
    s.add_argument("--transform", required=True, choices=["translate", "scale", "rotate"],
                   help="the transformation (required)")
    s.add_argument("--amounts", type=_float_list, default=None,
                   help="comma-separated: pixels (translate, vertical), factors (scale) or degrees (rotate) "
                        "(default: -20..20 by 4, 0.5..1.5 by 0.1, 0..360 by 30)")
    s.add_argument("--layers", type=_name_list, default=None,
                   help="comma-separated layers (default: first and last conv, last hidden fc)")
    s.add_argument("--kind", default="relative", choices=["relative", "distance"],
                   help="plot the distance divided by the original's norm (default) or the plain distance")
    s.add_argument("--target", default=None, help="the true class (name or index; default: the prediction)")
    s.add_argument("--classes", default=None, help="comma-separated class names of a model that records none (default: the model's own)")
    s.add_argument("-o", "--output", default="invariance.png", metavar="FILE",
                   help="the picture; its suffix picks the format (.png, .jpg, ...)")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_invariance)

    s = sub.add_parser("evolution", help="the strongest features at training snapshots (fig. 4)")
    s.add_argument("snapshots", nargs="?", default=None,
                   help="a folder of epochNNN.npz (zfraw train --snapshots) or a packed file; "
                        "default: the built-in model's")
    s.add_argument("--data", default="builtin", help="'builtin' or a folder of class folders (the image set)")
    s.add_argument("--images", type=positive_int, default=200, help="images searched at each snapshot (default 200)")
    s.add_argument("--layers", type=_name_list, default=None, help="comma-separated conv layers (default: all)")
    s.add_argument("--features", type=positive_int, default=4, help="features followed per layer (default 4)")
    s.add_argument("-o", "--output", default="evolution.png", metavar="FILE",
                   help="the picture; its suffix picks the format (.png, .jpg, ...)")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_evolution)

    s = sub.add_parser("compare-first-layer",
                       help="first-layer filters, dead filters and layer-2 aliasing of networks side by side (fig. 6)")
    s.add_argument("--weights", nargs="+", default=None,
                   help="models to compare (default: the built-in alexnet_mini and zfnet_mini)")
    s.add_argument("--data", default="builtin", help="'builtin' or a folder of class folders")
    s.add_argument("--images", type=positive_int, default=200, help="images searched for the conv2 top 9 (default 200)")
    s.add_argument("--features", type=positive_int, default=4, help="conv2 features shown (default 4)")
    s.add_argument("-o", "--output", default="first_layer.png", metavar="FILE",
                   help="the picture; its suffix picks the format (.png, .jpg, ...)")
    _add_backend(s)
    s.set_defaults(func=cmd_compare_first_layer)


def build_parser():
    from zfraw import __version__

    p = _Parser(prog="zfraw", formatter_class=HelpFormatter,
                description="Deconvnet visualization (Zeiler & Fergus 2014) with a from-scratch convnet engine.",
                epilog="Errors print one line and exit with status 2 (ZFRAW_DEBUG=1 shows the traceback).")
    p.add_argument("--version", action="version", version=f"zfraw {__version__}", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    p.subcommands = sub  # for parse_args's error about an unknown argument

    def command(name, help, **kw):
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter, **kw)

    s = command("demo", "write an HTML report from the built-in model and dataset")
    s.add_argument("--out", default="zfraw-report", metavar="DIR", help="the report folder")
    s.add_argument("--images", type=positive_int, default=1000, metavar="N",
                   help="images of the built-in dataset searched for top activations")
    s.add_argument("--features", type=positive_int, default=4, metavar="K", help="features shown per conv layer")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_weights(s), _add_backend(s), _add_dask(s)
    s.set_defaults(func=cmd_demo)

    s = command("check", "check every op against SciPy, gradients and transposes")
    s.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    _add_backend(s)
    s.set_defaults(func=cmd_check)

    s = command("train", "train a model on a folder of class folders (--data), or the shipped one (--builtin)",
                epilog=_TRAIN_HELP)
    s.add_argument("--builtin", action="store_true", help="reproduce the built-in model with its recipe")
    s.add_argument("--data", metavar="DIR", help="a folder of class folders to train on (default: none; give it or --builtin)")
    s.add_argument("--val", metavar="DIR", help="a folder with the same class folders, for validation; the saved "
                   "model is then the one with the best validation accuracy (default: none)")
    s.add_argument("--model", default=None, choices=["zfnet_mini", "alexnet_mini", "zfnet", "alexnet"],
                   help="the network (default: zfnet_mini, 64x64 input; with --builtin zfnet_mini or alexnet_mini)")
    s.add_argument("--init", default=None, choices=sorted(INITS),
                   help="he: N(0, 2/fan_in) everywhere; builtin: the same but conv1 N(0, 1e-2) (the built-in "
                        "model's); paper: N(0, 1e-2) everywhere (default: he)")
    s.add_argument("--size", type=positive_int, default=None, metavar="S",
                   help="resize the shorter side to S, keep the centre SxS, then crop the model's input from it "
                        "(default: the model's input side)")
    s.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help="epochs (default: 30 with --data, 20 with --builtin)")
    s.add_argument("--batch-size", type=positive_int, default=None, metavar="B", help="minibatch size (default: 16)")
    s.add_argument("--lr", type=positive_float, default=None, help="initial learning rate (default: 5e-3)")
    s.add_argument("--weight-decay", type=non_negative_float, default=None, metavar="WD",
                   help="L2 weight decay on the weights (default: 5e-4)")
    s.add_argument("--patience", type=positive_int, default=None, metavar="P",
                   help="epochs without a better loss before lr / 10 (default: about 100 updates, 3 to 10 epochs)")
    s.add_argument("--seed", type=int, default=None, help="seed of the weights, shuffles and crops (default: 0)")
    s.add_argument("--n-per-class", type=positive_int, default=None, metavar="N",
                   help="--builtin: training images per class (default: the recipe's 1200)")
    s.add_argument("--out", default=None, metavar="FILE",
                   help="where to save the trained model, a .npz (default: <model>.npz)")
    s.add_argument("--checkpoint", default=None, metavar="FILE",
                   help="a .npz written (atomically) after every epoch (default: none)")
    s.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    s.add_argument("--snapshots", type=feature_list, default=None, metavar="EPOCHS",
                   help="comma-separated epochs after which the weights are kept (e.g. 1,2,5,10,20), in "
                        "--snapshot-dir (default: none)")
    s.add_argument("--snapshot-dir", default=None, metavar="DIR",
                   help="the folder for --snapshots (default: beside --out, OUT_snapshots/)")
    _add_backend(s)
    s.set_defaults(func=cmd_train)

    s = command("project", "project an image's activation at a layer back to pixels")
    s.add_argument("image", help="an image file (resized and centre-cropped to the model's input)")
    s.add_argument("--layer", default="conv5", help="the layer whose activation is projected")
    s.add_argument("--feature", type=int, default=None, metavar="K",
                   help="the feature map (default: the one with the strongest activation)")
    s.add_argument("--rule", default="deconvnet", choices=["deconvnet", "guided", "backprop"],
                   help="what happens at a ReLU on the way down")
    s.add_argument("-o", "--output", default="projection.png", metavar="FILE",
                   help="the picture; its suffix picks the format (.png, .jpg, ...)")
    s.add_argument("--no-resize", action="store_true", help=argparse.SUPPRESS)
    _add_weights(s), _add_model(s), _add_preprocessing(s), _add_backend(s)
    s.set_defaults(func=cmd_project)

    s = command("top9", "top-9 activations of features over a dataset, projected")
    s.add_argument("data", nargs="?", default="builtin", metavar="DATA",
                   help="'builtin' (the built-in dataset) or a folder of class folders (default: builtin)")
    s.add_argument("--layer", default="conv5", help="the layer whose features are shown")
    s.add_argument("--features", type=feature_list, default=None, metavar="LIST",
                   help="comma-separated feature numbers, e.g. 3,7 (default: the 4 most active)")
    s.add_argument("--images", type=positive_int, default=1000, metavar="N",
                   help="search the first N images of DATA")
    s.add_argument("-o", "--output", default="top9", metavar="DIR", help="output folder")
    _add_weights(s), _add_model(s), _add_preprocessing(s), _add_backend(s), _add_dask(s)
    s.set_defaults(func=cmd_top9)

    s = command("filters", "the first layer's filters as a picture")
    s.add_argument("--layer", default=None, help="a conv layer on the image (default: the first conv layer)")
    s.add_argument("-o", "--output", default="filters.png", metavar="FILE",
                   help="the picture; its suffix picks the format (.png, .jpg, ...)")
    _add_weights(s), _add_model(s), _add_backend(s)
    s.set_defaults(func=cmd_filters)

    s = sub.add_parser("occlude", help="occlusion sensitivity of one image (fig. 7 of the paper)")
    s.add_argument("image", help="an image file")
    s.add_argument("--layer", default=None, help="layer of the activity map (default: the last conv layer)")
    s.add_argument("--feature", type=int, default=None, help="feature map (default: the strongest)")
    s.add_argument("--size", type=positive_int, default=None, help="side of the grey square (default: input side / 4)")
    s.add_argument("--stride", type=positive_int, default=None, help="step between positions (default: size / 4)")
    s.add_argument("--target", default=None, help="class (name or index) of the probability map "
                   "(default: the prediction for the whole image)")
    s.add_argument("--fill", type=finite_float, default=None,
                   help="value of the hidden pixels, in the network's input units (default: the training mean, "
                        "0 once it is subtracted; an imported model's mean pixel)")
    s.add_argument("--batch-size", type=positive_int, default=64, help="occluded copies per forward pass")
    s.add_argument("--classes", default=None, help="class names: comma-separated, or a file with one per line "
                   "(default: those saved with the model)")
    s.add_argument("-o", "--output", default="occlusion.png", metavar="FILE",
                   help="the picture; its suffix picks the format (.png, .jpg, ...)")
    _add_weights(s), _add_model(s), _add_preprocessing(s), _add_backend(s)
    s.set_defaults(func=cmd_occlude)

    s = sub.add_parser("correspond", help="part correspondence (table 1 of the paper) against random boxes")
    s.add_argument("--class", dest="cls", default="face", help="built-in data: the class (default face)")
    s.add_argument("--part", default=None, help="built-in data: a part of that class, or 'all' (default)")
    s.add_argument("--images", type=_int_type(2), default=20, help="built-in data: images per part (default 20)")
    s.add_argument("--boxes", default=None, help="your images instead: a CSV (image,top,left,bottom,right"
                   "[,part]) or JSON file of boxes in the images' own pixels (default: none: the built-in data)")
    s.add_argument("--layers", default=None, help="comma-separated layers (default pool5,relu7)")
    s.add_argument("--draws", type=positive_int, default=10, help="random-box draws for the baseline (default 10)")
    s.add_argument("--seed", type=int, default=0, help="seed of the random boxes")
    s.add_argument("--fill", type=finite_float, default=0.0, help="value of the hidden pixels (default 0: the mean)")
    s.add_argument("-o", "--output", default=None, help="also write the table (.md or .html) (default: print it only)")
    _add_weights(s), _add_backend(s)
    s.set_defaults(func=cmd_correspond)

    s = command("summary", "the architecture table of a model")
    s.add_argument("--model", default=None, type=_model_or_arch, metavar="MODEL",
                   help="a built-in architecture (zfnet, alexnet, alexnet_torchvision, zfnet_mini) or an "
                        "imported network (MODEL.onnx, MODEL.pth, a .npz) (default: zfnet)")
    s.add_argument("--arch", default=None, help="the architecture of a .pth state dict (default alexnet_torchvision)")
    s.add_argument("--classes", type=positive_int, default=None, metavar="N",
                   help="output classes of --model (default: the model's own, 1000 or 10)")
    s.add_argument("--weights", default=None, metavar="FILE",
                   help="a model file saved by zfraw (.npz) whose architecture to show, instead of --model "
                        "(default: none)")
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
    s.add_argument("--val", default=None, help="a folder of class folders for validation (same classes; default: none)")
    s.add_argument("--epochs", type=positive_int, default=30, help="epochs over the cached features (default 30)")
    s.add_argument("--lr", type=positive_float, default=1e-2, help="SGD learning rate, constant (default 1e-2)")
    s.add_argument("-o", "--output", required=True, help="the retrained model (.npz)")
    _add_preprocessing(s), _add_backend(s)
    s.set_defaults(func=cmd_retrain)

    s = sub.add_parser("predict", help="the top-5 classes of an image")
    s.add_argument("image", help="an image file (JPEG, PNG, ...)")
    s.add_argument("--top", type=positive_int, default=5, help="how many classes to print (default 5)")
    _add_weights(s), _add_model(s), _add_preprocessing(s), _add_backend(s)
    s.set_defaults(func=cmd_predict)

    _add_analysis_commands(sub)
    return p


# ============================================================== errors

_OS_HINTS = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose another path",
    errno.EISDIR: "it is a folder: give a file",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.ENOENT: "check the path",
    errno.ENOSPC: "the disk is full: free some space or choose another place",
}


def _describe(exc):
    """One line that says what went wrong, naming the file where there is one."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.strerror or type(exc).__name__}: {os.fspath(exc.filename)!r}"
        hint = _OS_HINTS.get(exc.errno)
        return f"{text} ({hint})" if hint else text
    if isinstance(exc, zipfile.BadZipFile):
        return f"not a zip archive, or a truncated one ({exc})"
    if isinstance(exc, EOFError):
        return "the file is empty or truncated"
    if isinstance(exc, KeyError):
        return f"missing entry {exc}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


#: what main() turns into one line and exit status 2
EXPECTED_ERRORS = (UsageError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile, FloatingPointError)


class _WarningLines:
    """``warnings.showwarning`` for the command line: ``warning: MESSAGE`` on stderr, one line, once per
    message (a file skipped every epoch is named once), without Python's source line."""

    def __init__(self):
        self.shown = set()

    def __call__(self, message, category, filename, lineno, file=None, line=None):
        text = " ".join(str(message).split())
        if text not in self.shown:
            self.shown.add(text)
            print(f"warning: {text}", file=sys.stderr if file is None else file)


def main(argv=None):
    """Run ``zfraw`` with ``argv`` (default: sys.argv); returns the exit status."""
    args = build_parser().parse_args(argv)
    saved = warnings.showwarning
    warnings.showwarning = _WarningLines()
    try:
        return _run(args)
    finally:
        warnings.showwarning = saved


def _run(args):
    """The command ``args.func``, its expected errors turned into one line and exit status 2."""
    from zfraw.backend import BackendUnavailable, workspace_bytes

    try:
        workspace_bytes()  # a bad ZFRAW_WORKSPACE_MB is an error before any work
        status = args.func(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler
        return status
    except BrokenPipeError:
        # the reader went away (`zfraw summary | head`): Python's documented way out,
        # stdout to devnull so that the flush at exit does not raise again; quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except EXPECTED_ERRORS + (BackendUnavailable,) as exc:
        if os.environ.get("ZFRAW_DEBUG"):
            raise
        print(f"zfraw {args.command}: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
