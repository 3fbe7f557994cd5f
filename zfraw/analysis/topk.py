"""The top-k scan: the k dataset images that excite each feature of a layer most.

One pass streams the dataset in batches (:func:`zfraw.data.stream`), forwards
each batch once up to the deepest requested layer, in evaluation mode and
without caches, and merges each image's strongest activation per feature into
a (C, k) store (:class:`TopK`).  This is the search behind the paper's figure 2;
drawing the figures is :func:`zfraw.visualize.top9`'s job.

Order everywhere: value descending, then dataset index ascending, so ties are
deterministic; a NaN activation ranks below every number and is not reported.

>>> import numpy as np
>>> from zfraw.analysis.topk import TopK
>>> store = TopK(2)
>>> store.add(np.array([[1.0], [3.0], [2.0]]), [10, 11, 12], np.zeros((3, 1), np.int64))
>>> store.val[0].tolist(), store.idx[0].tolist()
([3.0, 2.0], [11, 12])

A scan can also be cut into shards: :func:`scan` scans some dataset indices
and returns a :class:`ScanResult`, a value that saves to ``.npz``
(:meth:`ScanResult.save`, :meth:`ScanResult.load`) and merges exactly
(:func:`merge`): the top-k of a union is the top-k of the shards' top-k, and
with the order (value descending, index ascending) every (value, index) pair of
a feature is distinct, so merging shard results in any order and grouping gives
the single-pass scan bit for bit.  :mod:`zfraw.distributed` runs the shards on
Dask workers.
"""
from __future__ import annotations

import json
import operator
from collections import OrderedDict
from typing import NamedTuple, Tuple

import numpy as np

from zfraw import data
from zfraw._args import int_arg
from zfraw.backend import get_backend, to_host
from zfraw.io.npz import atomic_savez
from zfraw.nn import Sequential

__all__ = ["Activation", "TopK", "CHOOSE_MODES", "image_maxima", "scan_layers", "choose_features",
           "check_features", "feature_records", "top_activations", "ScanResult", "scan", "scan_indices",
           "merge"]

#: how :func:`choose_features` picks features when none are given
CHOOSE_MODES = ("top", "spread")


class Activation(NamedTuple):
    """One of a feature's strongest activations: its ``value``, the dataset ``index`` of the
    image, and its ``location`` (row, col) in the feature map ((0, 0) for fc layers)."""

    value: float
    index: int
    location: Tuple[int, int]


def image_maxima(a):
    """Per image and feature, the strongest activation and where it is.

    a (B, C, H, W) or (B, C) on the active backend -> host arrays values float64
    (B, C), flat locations int64 (B, C) (the first maximum in row-major order, as
    :func:`zfraw.deconvnet.select` picks it), and the map width W (1 for (B, C)).
    """
    b, c = a.shape[:2]
    maps = a.reshape(b, c, -1)
    loc = maps.argmax(axis=2)
    val = get_backend().xp.take_along_axis(maps, loc[:, :, None], axis=2)[:, :, 0]
    width = a.shape[3] if a.ndim == 4 else 1
    return np.asarray(to_host(val), dtype=np.float64), np.asarray(to_host(loc), dtype=np.int64), width


class TopK:
    """The k strongest (value, index, location) per feature, merged batch by batch.

    Holds (C, k) arrays only (``val`` float64, ``idx`` dataset indices int64,
    ``loc`` flat locations int64; None before the first batch): each batch's
    (C, B) maxima are merged with the kept (C, k) and cut back to k.
    """

    def __init__(self, k):
        self.k = int_arg("k", k, 1)
        self.val = self.idx = self.loc = None

    def add(self, val, idx, loc):
        """Merge one batch: val, loc (B, C) and dataset indices idx (B,)."""
        b, c = val.shape
        val = np.where(np.isnan(val), -np.inf, val).T  # (C, B)
        idx = np.broadcast_to(np.asarray(idx, dtype=np.int64)[None, :], (c, b))
        self._keep_best(val, idx, np.asarray(loc, dtype=np.int64).T)

    def merge(self, other):
        """Take in another store's (C, k') entries (images it saw that this one did not);
        returns self.  The result is the k best of both, in the same order as if
        every image had been added here."""
        if not isinstance(other, TopK):
            raise TypeError(f"other: expected a TopK, got {type(other).__name__}")
        if other.val is not None:
            self._keep_best(other.val, other.idx, other.loc)
        return self

    def _keep_best(self, val, idx, loc):
        """Merge (C, m) candidates with the kept (C, k) and cut back to the k best."""
        if self.val is not None:
            if val.shape[0] != self.val.shape[0]:
                raise ValueError(f"TopK: {val.shape[0]} features do not match the {self.val.shape[0]} kept")
            val = np.concatenate([self.val, val], axis=1)
            idx = np.concatenate([self.idx, idx], axis=1)
            loc = np.concatenate([self.loc, loc], axis=1)
        keep = self._select(val, idx)
        rows = np.arange(val.shape[0])[:, None]
        self.val, self.idx, self.loc = val[rows, keep], idx[rows, keep], loc[rows, keep]

    def _select(self, val, idx):
        """Columns of the k best per row, best first: sorted by (-value, index).

        The rows hold only the k kept plus one batch, so an exact sort
        (``np.lexsort``) costs little next to the forward pass and, unlike a
        partition, orders ties deterministically.
        """
        return np.lexsort((idx, -val), axis=1)[:, :self.k]

    def records(self, feature, width):
        """The kept activations of one feature as :class:`Activation` s, best first
        (``width``: the feature-map width, to turn flat locations into (row, col))."""
        out = []
        for v, i, l in zip(self.val[feature], self.idx[feature], self.loc[feature]):
            if v == -np.inf:  # a NaN entered here: nothing real to report
                continue
            out.append(Activation(float(v), int(i), (int(l // width), int(l % width))))
        return out


def _check_net(net):
    if not isinstance(net, Sequential):
        raise TypeError(f"net: expected a zfraw.nn.Sequential, got {type(net).__name__}")
    return net


def scan_layers(net, dataset, layers, k=9, batch_size=64, transform=None, progress=False, limit=None,
                indices=None):
    """One pass over the dataset that keeps the k strongest activations of *every* feature of
    each of ``layers``.

    The batch is forwarded once, up to the deepest of ``layers``, in evaluation
    mode; for each layer, each image counts once per feature, at its strongest
    location (the first maximum in row-major order).  Memory: (C, k) per layer.
    ``indices`` scans only those dataset indices (in that order; cut to the
    first ``limit``); :func:`scan` returns the same as a mergeable
    :class:`ScanResult`.

    Returns
    -------
    dict
        layer -> (topk, width): a :class:`TopK` store and the feature-map width
        (see :func:`feature_records` for the records it gives).
    """
    return scan(net, dataset, layers, k, batch_size, transform, progress, limit, indices).layer_stores()


def scan_indices(dataset, limit=None, indices=None):
    """The dataset indices a scan covers, int64 (M,): ``indices`` (default all; negative ones
    count from the end; each at most once) cut to the first ``limit``."""
    n = data.dataset_length(dataset)
    order = np.arange(n, dtype=np.int64) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if limit is not None:
        order = order[:int_arg("limit", limit, 0)]
    if len(order) and (order.min() < -n or order.max() >= n):
        raise IndexError(f"indices: expected dataset indices in [0, {n}), got {order.min()} .. {order.max()}")
    order = np.where(order < 0, order + n, order)
    if len(np.unique(order)) != len(order):
        raise ValueError("indices: each dataset index may appear only once")
    return order


def scan(net, dataset, layers, k=9, batch_size=64, transform=None, progress=False, limit=None, indices=None):
    """The top-k scan of :func:`scan_layers` over some dataset ``indices`` (default all),
    as a :class:`ScanResult` that merges with the results of other shards.

    Unreadable images are skipped (with the dataset's ``skip_bad``, with a warning
    naming the file) and listed in ``result.skipped``; a shard where no image
    could be read gives an empty result (it still merges).
    """
    net = _check_net(net)
    layers = [net.check_layer(lyr) for lyr in ([layers] if isinstance(layers, str) else layers)]
    if not layers:
        raise ValueError("layers: expected at least one layer name")
    k = int_arg("k", k, 1)
    batch_size = int_arg("batch_size", batch_size, 1)
    order = scan_indices(dataset, limit, indices)
    deepest = max(layers, key=net.names.index)
    stores = {lyr: TopK(k) for lyr in layers}
    widths = dict.fromkeys(layers)
    seen = []
    xp = get_backend().xp
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(order), desc=f"top-{k} over {','.join(layers)}", unit="img", leave=False)
    was_training = net.training
    net.eval()
    try:
        for x, idx in data.stream(dataset, batch_size, transform, indices=order):
            keep = len(layers) > 1
            out = net.forward(xp.asarray(x, dtype=net.dtype), upto=deepest, keep=keep, cache=False)
            for lyr in layers:
                a = net.activations[lyr] if keep else out
                val, loc, widths[lyr] = image_maxima(a)
                stores[lyr].add(val, idx, loc)
            seen.append(idx)
            if bar is not None:
                bar.update(len(idx))
    finally:
        net.train(was_training)
        net.clear()
        if bar is not None:
            bar.close()
    skipped = np.setdiff1d(order, np.concatenate(seen) if seen else np.zeros(0, np.int64))
    return ScanResult(k, OrderedDict((lyr, (stores[lyr], widths[lyr])) for lyr in layers), order, skipped)


def _as_int64(a, name):
    a = np.asarray(a)
    if a.ndim != 1 or (a.size and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{name}: expected a 1-d array of dataset indices, got {a.dtype} {a.shape}")
    return np.sort(a.astype(np.int64))


class ScanResult:
    """A top-k scan over some of a dataset's images: a value that merges, saves and loads.

    Attributes
    ----------
    k : int
    layers : OrderedDict
        layer name -> (:class:`TopK` with (C, k') arrays, feature-map width);
        ``(TopK with val None, None)`` when the shard had no readable image.
        k' = min(k, images seen).
    covered : numpy.ndarray
        int64 (M,), sorted: the dataset indices this result was asked to scan (its shard).
    skipped : numpy.ndarray
        int64, sorted: those of ``covered`` that could not be read.
    messages : tuple of str
        The warnings raised while scanning (e.g. the files skipped), so that a
        scan run elsewhere, or read back from disk, can repeat them.

    ``n_images`` = len(covered) - len(skipped), the images actually scanned.
    """

    FORMAT = "zfraw-topk-scan-1"

    def __init__(self, k, layers, covered, skipped=(), messages=()):
        self.k = int_arg("k", k, 1)
        self.layers = OrderedDict(layers)
        self.covered = _as_int64(covered, "covered")
        self.skipped = _as_int64(np.asarray(skipped, dtype=np.int64), "skipped")
        self.messages = tuple(str(m) for m in messages)
        for lyr, (store, width) in self.layers.items():
            if store.k != self.k:
                raise ValueError(f"layers: the store of {lyr!r} keeps k={store.k}, expected {self.k}")

    @property
    def n_images(self):
        return int(len(self.covered) - len(self.skipped))

    def layer_stores(self):
        """``{layer: (TopK, width)}``, what :func:`scan_layers` returns; ValueError when no image was read."""
        if self.n_images == 0:
            raise ValueError("dataset: no (readable) images to scan")
        return {lyr: (store, width) for lyr, (store, width) in self.layers.items()}

    def merge(self, *others):
        """This result merged with ``others`` (results over disjoint shards, the same layers
        and k): a new :class:`ScanResult`, equal to one scan over the union of the shards."""
        return merge([self, *others])

    # ---------------------------------------------------------------- files
    def save(self, path):
        """Write to ``path`` (.npz) atomically (a temporary file beside it, then a rename).

        Arrays ``val_<j>``, ``idx_<j>``, ``loc_<j>`` per layer j (absent for an
        empty shard), ``covered``, ``skipped``; the rest (format, k, layer names and
        widths, messages) as JSON bytes in ``meta``.
        """
        meta = dict(format=self.FORMAT, k=self.k, messages=list(self.messages),
                    layers=[[lyr, width] for lyr, (_, width) in self.layers.items()])
        arrays = dict(covered=self.covered, skipped=self.skipped,
                      meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
        for j, (store, _) in enumerate(self.layers.values()):
            if store.val is not None:
                arrays.update({f"val_{j}": store.val, f"idx_{j}": store.idx, f"loc_{j}": store.loc})
        atomic_savez(path, arrays)
        return path

    @classmethod
    def load(cls, path):
        """Read a result written by :meth:`save` (no pickles: ``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as f:
            if "meta" not in f.files:
                raise ValueError(f"path: {path!r} is not a zfraw scan result (it has no meta record)")
            meta = json.loads(bytes(f["meta"]).decode())
            if meta.get("format") != cls.FORMAT:
                raise ValueError(f"path: {path!r} holds format {meta.get('format')!r}, expected {cls.FORMAT!r}")
            layers = OrderedDict()
            for j, (lyr, width) in enumerate(meta["layers"]):
                store = TopK(meta["k"])
                if f"val_{j}" in f.files:
                    store.val, store.idx, store.loc = f[f"val_{j}"], f[f"idx_{j}"], f[f"loc_{j}"]
                layers[lyr] = (store, None if width is None else int(width))
            return cls(meta["k"], layers, f["covered"], f["skipped"], meta.get("messages", ()))

    def __repr__(self):
        return (f"ScanResult(k={self.k}, layers={list(self.layers)}, {len(self.covered)} images covered, "
                f"{len(self.skipped)} skipped)")


def merge(results):
    """One :class:`ScanResult` from results over disjoint shards of one dataset.

    Per layer and feature the k best of all the shards' entries, ordered by
    (value descending, dataset index ascending): exactly the single-pass scan
    of the union, whatever the order or grouping of the merges.  The shards
    must share the layers, k and the feature-map widths, and cover disjoint
    indices (an image counted twice would take two places).
    """
    results = list(results)
    if not results or not all(isinstance(r, ScanResult) for r in results):
        raise TypeError("results: expected one or more ScanResult values")
    first = results[0]
    for r in results[1:]:
        if r.k != first.k or list(r.layers) != list(first.layers):
            raise ValueError(f"results: cannot merge a scan of k={r.k} over {list(r.layers)} with one of "
                             f"k={first.k} over {list(first.layers)}")
    covered = np.concatenate([r.covered for r in results])
    if len(np.unique(covered)) != len(covered):
        raise ValueError("results: the shards overlap (an image would be counted twice)")
    layers = OrderedDict()
    for lyr in first.layers:
        store, width = TopK(first.k), None
        for r in results:
            part, w = r.layers[lyr]
            if part.val is None:
                continue
            if width is not None and w != width:
                raise ValueError(f"results: layer {lyr!r} has maps {w} wide in one shard and {width} in another")
            width = w
            store.merge(part)
        layers[lyr] = (store, width)
    skipped = np.concatenate([r.skipped for r in results])
    messages = sorted(m for r in results for m in r.messages)
    return ScanResult(first.k, layers, covered, skipped, messages)


def choose_features(maxima, n, how="top"):
    """Pick ``n`` features from their maximum activations over a dataset.

    ``how="top"``: the n with the largest maxima (ties: lower feature first);
    ``"spread"``: n features evenly spaced along the ranking of the features that
    fire at all (maximum > 0), strongest first, so weak and strong ones both show.
    Features that never fire are chosen only when nothing else is left.

    maxima (C,) -> list of n feature indices (fewer if C < n).
    """
    maxima = np.asarray(maxima, dtype=np.float64)
    if maxima.ndim != 1:
        raise ValueError(f"maxima: expected shape (C,), got {maxima.shape}")
    n = int_arg("n", n, 1)
    if how not in CHOOSE_MODES:
        raise ValueError(f"how: expected one of {CHOOSE_MODES}, got {how!r}")
    key = np.where(np.isnan(maxima), -np.inf, maxima)
    ranking = np.lexsort((np.arange(len(key)), -key))  # strongest first, ties by index
    n = min(n, len(ranking))
    if how == "top":
        return [int(f) for f in ranking[:n]]
    alive = ranking[key[ranking] > 0]
    if len(alive) < n:
        return [int(f) for f in ranking[:n]]
    picks = np.unique(np.round(np.linspace(0, len(alive) - 1, n)).astype(int))
    return [int(f) for f in alive[picks]]


def check_features(features, c, layer):
    """``features`` as a list of ints in [0, c), else an error naming the layer."""
    feats = []
    for f in features:
        try:
            f = operator.index(f)
        except TypeError:
            raise TypeError(f"features: expected ints, got {f!r}") from None
        if not 0 <= f < c:
            raise ValueError(f"features: feature {f} is not in [0, {c}) for layer {layer!r}")
        feats.append(f)
    return feats


def feature_records(topk, width, features, layer, n_features=4, how="top"):
    """The records of chosen features from a scan's ``(topk, width)``.

    ``features``: an int, a list of ints, or None to choose ``n_features`` with
    :func:`choose_features` (``how``) from each feature's best value.

    Returns an OrderedDict feature -> list of :class:`Activation`, strongest first.
    """
    c = topk.val.shape[0]
    if features is None:
        features = choose_features(topk.val[:, 0], n_features, how)
    elif isinstance(features, (int, np.integer)):
        features = [features]
    feats = check_features(features, c, layer)
    return OrderedDict((f, topk.records(f, width)) for f in feats)


def top_activations(net, dataset, layer, features, k=9, batch_size=64, transform=None, progress=False,
                    n_features=4, how="top", limit=None):
    """The k images of ``dataset`` that excite each chosen feature of ``layer`` most.

    The dataset is streamed in batches of ``batch_size`` (never held whole),
    each batch forwarded up to ``layer`` only, in evaluation mode.  Each image
    counts once per feature, with its strongest activation in that feature map
    (the first maximum in row-major order); the k best are kept per feature in
    a (C, k) store merged batch by batch.  Order: value descending, ties by the
    lower dataset index.

    Parameters
    ----------
    net : zfraw.nn.Sequential
    dataset : sequence of (image uint8 HWC, label)
    layer : str
    features : iterable of int, or None
        None chooses ``n_features`` automatically with :func:`choose_features`
        (``how="top"``: the largest maximum activation over the dataset).
    k, batch_size : int
    transform : callable, optional
        ``image -> float32 (3, h, w)``; :func:`zfraw.data.to_chw_float` by default.
    progress : bool
        A tqdm bar over the images.
    limit : int, optional
        Use only the first ``limit`` images.

    Returns
    -------
    OrderedDict
        feature -> list of :class:`Activation` ``(value, index, (row, col))``,
        strongest first (fewer than k when the dataset is smaller).
    """
    (topk, width), = scan_layers(net, dataset, [layer], k, batch_size, transform, progress, limit).values()
    return feature_records(topk, width, features, layer, n_features, how)
