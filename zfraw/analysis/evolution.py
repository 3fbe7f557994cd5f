"""Feature evolution during training (fig. 4 of Zeiler & Fergus).

Training keeps *snapshots* of the weights after chosen epochs
(:func:`zfraw.train.fit` with ``snapshots=[1, 2, 5, 10, 20]``, or
``zfraw train ... --snapshots 1,2,5,10,20``).  For a few feature maps of each
conv layer, :func:`evolution` finds, at every snapshot, the single strongest
activation of that map over a fixed set of images, and projects it alone to
pixel space with the deconvnet; laid out in rows over the epochs
(:func:`zfraw.render.evolution.evolution_figure`) this shows when each layer's
features settle: in the paper the lower layers converge within a few epochs,
the upper ones only after many.

Snapshots come in two forms, both read by :func:`load_snapshots`:

- a folder of whole-model files ``epochNNN.npz`` written by :func:`zfraw.train.fit`
  (each loadable with :func:`zfraw.nn.load`);
- one packed file written by :func:`pack_snapshots`: the layers up to the last
  conv layer (all the figure needs), for every epoch, stored in float16 to halve
  the size and computed in float32 when loaded.  The built-in model's pack ships
  as ``zfraw/weights/zfnet_mini_snapshots.npz``.
"""
from __future__ import annotations

import glob
import json
import os
import re
from importlib import resources
from typing import NamedTuple

import numpy as np

from zfraw import deconvnet, nn
from zfraw._args import int_arg, layers_arg
from zfraw.backend import get_backend, to_host

__all__ = ["Evolution", "evolution", "load_snapshots", "pack_snapshots", "builtin_snapshots_path",
           "conv_layers", "SNAPSHOTS", "BUILTIN_NOTE"]

#: file name of the built-in model's packed snapshots inside the package
SNAPSHOTS = "zfnet_mini_snapshots.npz"

#: how the shipped snapshots were made (shown under the demo's figure)
BUILTIN_NOTE = ("Epochs 1, 2, 5, 10 and 20 of one run of the built-in recipe (zfraw train --builtin --snapshots "
                "1,2,5,10,20, on a 2-core AMD EPYC). It is a sister of the shipped model, not the shipped model "
                "itself: the same recipe and seeds, but the shipped weights were trained on another CPU, whose "
                "BLAS rounds differently, so the last column's features differ from those of the model above.")

_PACK_KEY = "__zfraw_snapshots__"
_EPOCH_FILE = re.compile(r"epoch(\d+)\.npz$")


def builtin_snapshots_path():
    """Where the built-in model's packed snapshots live (inside the installed package)."""
    return str(resources.files("zfraw").joinpath("weights", SNAPSHOTS))


def conv_layers(net):
    """The names of the convolution layers of ``net``, in order."""
    return [lname for lname, layer in net if isinstance(layer, nn.Conv2d)]


# ============================================================== files

def _through_last_conv(spec):
    """The spec truncated after the last conv layer (and the ReLU right after it, if any)."""
    layers = spec["layers"]
    last = max((i for i, (_, kind, _) in enumerate(layers) if kind == "Conv2d"), default=None)
    if last is None:
        raise ValueError("snapshots: the network has no convolution layer")
    if last + 1 < len(layers) and layers[last + 1][1] == "ReLU":
        last += 1
    return dict(spec, layers=layers[: last + 1])


def pack_snapshots(paths, out, dtype=np.float16):
    """Pack whole-model snapshot files into one compact file (written atomically).

    Keeps, for every file, the parameters of the layers up to the last conv
    layer, cast to ``dtype`` (float16 by default: the projections keep their
    look, the size halves), plus each file's epoch and the class names and mean
    of the last file.  All files must hold one architecture.

    Parameters
    ----------
    paths : sequence of paths
        Files written by :func:`zfraw.train.save_snapshot` (``epochNNN.npz``).
    out : path (.npz)

    Returns
    -------
    str
        ``out``.
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        raise ValueError("paths must name at least one snapshot file, got none")
    spec, arrays, epochs, extra = None, {}, [], {}
    for path in paths:
        meta = nn.read_meta(path)
        this = _through_last_conv(meta["spec"])
        if spec is None:
            spec = this
        elif this["layers"] != spec["layers"]:
            raise ValueError(f"paths: {path!r} holds another architecture than {paths[0]!r}")
        extra = meta.get("extra", {})
        epoch = int(extra.get("epoch", _epoch_from_name(path)))
        if epoch in epochs:
            raise ValueError(f"paths: epoch {epoch} appears twice")
        epochs.append(epoch)
        names = {lname for lname, _, _ in spec["layers"]}
        with np.load(path, allow_pickle=False) as data:
            for key in data.files:
                if "." in key and not key.startswith(("__", "velocity/")) and key.split(".")[0] in names:
                    arrays[f"epoch{epoch:03d}/{key}"] = data[key].astype(dtype)
    keep = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in extra.items() if k in ("classes", "mean")}
    meta = dict(spec=spec, epochs=epochs, extra=keep)
    arrays[_PACK_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    return nn.atomic_savez(out, arrays)


def _epoch_from_name(path):
    m = _EPOCH_FILE.search(os.path.basename(path))
    if not m:
        raise ValueError(f"snapshots: {path!r} records no epoch and is not named epochNNN.npz")
    return int(m.group(1))


def _check_like(net, like, source):
    """``net``'s layers must be the first layers of ``like``, with the same types and configurations."""
    if like is None:
        return
    theirs = {lname: (type(layer).__name__, layer.config()) for lname, layer in like}
    for lname, layer in net:
        mine = (type(layer).__name__, layer.config())
        if theirs.get(lname) != mine:
            got = theirs.get(lname, ("no such layer", {}))
            raise ValueError(f"snapshots: {source!r} are snapshots of another architecture than the model "
                             f"({like.name!r}): layer {lname!r} is {mine[0]} {mine[1]} there, "
                             f"{got[0]} {got[1]} in the model")


def load_snapshots(source, like=None):
    """The snapshots of one training run, oldest first.

    Parameters
    ----------
    source : path or sequence of paths
        A file written by :func:`pack_snapshots`, a folder of ``epochNNN.npz``
        files written by :func:`zfraw.train.fit`, or a list of such files.
    like : zfraw.nn.Sequential, optional
        The trained model the snapshots should belong to: a snapshot whose
        layers differ from its layers (names, types, sizes) is refused with a
        ValueError naming ``snapshots``.

    Returns
    -------
    (epochs, nets, extra)
        epochs: list of ints; nets: one :class:`zfraw.nn.Sequential` per epoch
        (float32, evaluation mode, on the host); extra: the ``classes`` and
        ``mean`` recorded with them (possibly empty).
    """
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        files = sorted(glob.glob(os.path.join(os.fspath(source), "epoch*.npz")))
        if not files:
            raise ValueError(f"snapshots: the folder {os.fspath(source)!r} holds no epochNNN.npz files")
        source = files
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise FileNotFoundError(f"snapshots: {path!r} does not exist")
        with np.load(path, allow_pickle=False) as data:
            if _PACK_KEY not in data.files:
                source = [path]
            else:
                meta = json.loads(bytes(data[_PACK_KEY]).decode())
                nets = []
                for epoch in meta["epochs"]:
                    prefix = f"epoch{int(epoch):03d}/"
                    net = nn.Sequential.from_spec(meta["spec"])
                    net.load_state_dict({k[len(prefix):]: data[k] for k in data.files if k.startswith(prefix)})
                    _check_like(net, like, path)
                    nets.append(net.eval())
                order = np.argsort(meta["epochs"], kind="stable")
                return ([int(meta["epochs"][i]) for i in order], [nets[i] for i in order],
                        dict(meta.get("extra", {})))
    records = []
    for path in [os.fspath(p) for p in source]:
        if not os.path.exists(path):
            raise FileNotFoundError(f"snapshots: {path!r} does not exist")
        net = nn.load(path, allow_float16=True).astype(np.float32).eval()
        _check_like(net, like, path)
        extra = nn.read_meta(path).get("extra", {})
        records.append((int(extra.get("epoch", _epoch_from_name(path))), net, extra))
    if not records:
        raise ValueError("snapshots: no snapshot files given")
    first = records[0][1]
    for _, net, _ in records[1:]:
        _check_like(net, first, "the snapshot files")
    records.sort(key=lambda r: r[0])
    extra = {k: v for k, v in records[-1][2].items() if k in ("classes", "mean")}
    return [r[0] for r in records], [r[1] for r in records], extra


# ============================================================== the analysis

class Evolution(NamedTuple):
    """What :func:`evolution` found.

    epochs (E,); features: layer -> list of F feature indices; for each layer,
    arrays over (F, E): ``projection`` (F, E, C, H, W) the deconvnet
    projection of the strongest activation alone, ``index`` the image it
    came from, ``location`` (F, E, 2) its (row, col) in the feature map,
    ``value`` the activation; ``box`` (F, E, 4) its receptive field
    (top, left, bottom, right) in the image.
    """

    epochs: list
    features: dict
    projection: dict
    index: dict
    location: dict
    value: dict
    box: dict


def _strongest(net, x, layers, batch_size):
    """Per layer, per feature: the strongest activation over all images and positions.

    Returns layer -> (value (C,), image index (C,)).
    """
    xp = get_backend().xp
    deepest = max(layers, key=net.names.index)
    best = {}
    for start in range(0, len(x), batch_size):
        net.forward(xp.asarray(x[start:start + batch_size], dtype=np.float32), upto=deepest, keep=True,
                    cache=False)
        for lyr in layers:
            a = net.activations[lyr]
            per_image = np.asarray(to_host(a.reshape(a.shape[0], a.shape[1], -1).max(axis=2)), dtype=np.float64)
            val, idx = per_image.max(axis=0), per_image.argmax(axis=0) + start
            if lyr in best:
                old_val, old_idx = best[lyr]
                better = val > old_val  # ties keep the earlier image
                val, idx = np.where(better, val, old_val), np.where(better, idx, old_idx)
            best[lyr] = (val, idx)
    net.activations.clear()
    return best


def _check_features(features, net, layers, n_features):
    if features is None:
        return None
    if not isinstance(features, dict):
        raise TypeError(f"features must be a dict layer -> list of feature indices, got {type(features).__name__}")
    out = {}
    for lyr, feats in features.items():
        if lyr not in layers:
            raise ValueError(f"features: layer {lyr!r} is not one of the layers {layers}")
        c = net[lyr].out_channels
        feats = [int(f) for f in feats]
        if not feats or min(feats) < 0 or max(feats) >= c:
            raise ValueError(f"features: {lyr!r} needs feature indices in [0, {c}), got {feats}")
        out[lyr] = feats
    return out


def evolution(snapshots, x, layers=None, features=None, n_features=4, *, rule="deconvnet", batch_size=64,
              progress=False):
    """The strongest activation of chosen feature maps at each snapshot, projected to pixels (fig. 4).

    Parameters
    ----------
    snapshots : (epochs, nets) or (epochs, nets, extra)
        From :func:`load_snapshots` (nets of one architecture, oldest first).
    x : array (N, C, H, W)
        The fixed image set, preprocessed (the same at every epoch).
    layers : sequence of str, optional
        Conv layers to follow (default: the layers of ``features``, else every conv layer).
    features : dict, optional
        layer -> feature indices to follow; default: per layer the
        ``n_features`` maps with the strongest activation over ``x`` at the
        last snapshot (the features that end up most active).
    rule : str
        The ReLU rule of the projection (``"deconvnet"``).
    batch_size : int
        Images forwarded at a time.
    progress : bool
        A tqdm bar over the snapshots.

    Returns
    -------
    Evolution
    """
    epochs, nets = list(snapshots[0]), list(snapshots[1])
    if not nets or len(epochs) != len(nets):
        raise ValueError("snapshots must hold one network per epoch, at least one")
    net0 = nets[-1]
    if layers is None:
        layers = list(features) if isinstance(features, dict) else conv_layers(net0)
    layers = layers_arg("layers", layers, net0)
    for lyr in layers:
        if not isinstance(net0[lyr], nn.Conv2d):
            raise ValueError(f"layers: {lyr!r} is not a conv layer (feature evolution follows conv feature maps)")
    n_features = int_arg("n_features", n_features, 1)
    batch_size = int_arg("batch_size", batch_size, 1)
    features = _check_features(features, net0, layers, n_features)
    x = np.asarray(to_host(x), dtype=np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"x must be images (N, C, H, W) with N >= 1, got shape {x.shape}")
    from tqdm.auto import tqdm

    found = {}
    for e, net in tqdm(list(zip(epochs, nets)), desc="feature evolution", unit="snapshot", leave=False,
                       disable=not progress):
        net.eval()
        found[e] = (net, _strongest(net, x, layers, batch_size))
    if features is None:
        last = found[epochs[-1]][1]
        features = {lyr: [int(f) for f in np.lexsort((np.arange(len(last[lyr][0])), -last[lyr][0]))[:n_features]]
                    for lyr in layers}
    xp = get_backend().xp
    shape = x.shape[-2:]
    out = {k: {} for k in ("projection", "index", "location", "value", "box")}
    for lyr in layers:
        feats = np.asarray(features[lyr], dtype=np.int64)
        proj = np.zeros((len(feats), len(epochs)) + x.shape[1:])
        index = np.zeros((len(feats), len(epochs)), dtype=np.int64)
        loc = np.zeros((len(feats), len(epochs), 2), dtype=np.int64)
        value = np.zeros((len(feats), len(epochs)))
        box = np.zeros((len(feats), len(epochs), 4), dtype=np.int64)
        for j, e in enumerate(epochs):
            net, best = found[e]
            index[:, j] = best[lyr][1][feats]
            p, info = deconvnet.project(net, xp.asarray(x[index[:, j]]), lyr, feature=feats, rule=rule,
                                        keep="max", return_info=True)
            net.clear()
            proj[:, j] = np.asarray(to_host(p), dtype=np.float64)
            loc[:, j], value[:, j] = info["location"], np.asarray(to_host(info["value"]), dtype=np.float64)
            box[:, j] = [deconvnet.patch_box(net, lyr, r, c, shape) for r, c in info["location"]]
        for k, v in (("projection", proj), ("index", index), ("location", loc), ("value", value), ("box", box)):
            out[k][lyr] = v
    return Evolution(epochs, {lyr: list(features[lyr]) for lyr in layers}, **out)
