"""Occlusion sensitivity (fig. 7 of Zeiler & Fergus 2014): what happens when a part
of the image is hidden.

A square of side ``size``, filled with ``fill`` (0 is the dataset mean once the
mean has been subtracted), is slid over the image with its top-left corner at
rows and columns 0, stride, 2*stride, ..., up to H - size, so the grid has

    gh = (H - size) // stride + 1   rows and   gw = (W - size) // stride + 1   columns.

For every position one forward pass of the occluded copy gives the three maps of
the paper's figure 7, all from the same sweep:

- ``activity[r, c]`` = sum over (h, w) of a[feature, h, w] at ``layer`` (the total
  activation of one feature map; for an fc layer the unit itself);
- ``probability[r, c]`` = softmax(scores)[target] (the network's output; the output
  itself when the network ends in a Softmax layer);
- ``label[r, c]`` = argmax of the scores (the most probable class).

Occluded copies are forwarded in batches of at most ``batch_size`` that also fit
in the workspace budget (:func:`zfraw.backend.workspace_bytes`), never all at once
(a 224x224 image at stride 1 is 50,000 copies).

>>> import numpy as np
>>> from zfraw import models
>>> from zfraw.analysis.occlusion import occlusion
>>> net = models.zfnet_mini(num_classes=10)
>>> x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
>>> maps = occlusion(net, x, size=16, stride=8, progress=False)
>>> maps.activity.shape, maps.layer
((1, 7, 7), 'conv5')
"""
from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from zfraw._args import int_arg
from zfraw.backend import get_backend, to_host, workspace_bytes
from zfraw.nn import Conv2d, Sequential

__all__ = ["OcclusionMaps", "Drop", "occlusion", "strongest_drop", "grid_shape", "plan_batch", "last_conv", "occlude", "as_images",
           "fill_value"]


class OcclusionMaps(NamedTuple):
    """The three maps of one occlusion sweep (host NumPy arrays).

    ``activity``, ``probability`` float64 and ``label`` int64, each (N, gh, gw):
    entry [n, r, c] is for image n with the square's top-left corner at
    (r * stride, c * stride).  ``feature`` and ``target`` int64 (N,): the feature
    map of ``layer`` summed into ``activity`` and the class of ``probability``.
    """

    activity: np.ndarray
    probability: np.ndarray
    label: np.ndarray
    layer: str
    feature: np.ndarray
    target: np.ndarray
    size: int
    stride: int


class Drop(NamedTuple):
    """Where the square hurts the target class most in one image: the square's top-left
    pixel (``top``, ``left``), the target's ``probability`` there and the ``label`` predicted there."""

    top: int
    left: int
    probability: float
    label: int


def strongest_drop(maps):
    """One :class:`Drop` per image of ``maps``: the position of the lowest target probability
    (the first in row-major order on ties)."""
    out = []
    for prob, label in zip(maps.probability, maps.label):
        r, c = np.unravel_index(int(np.argmin(prob)), prob.shape)
        out.append(Drop(int(r) * maps.stride, int(c) * maps.stride, float(prob[r, c]), int(label[r, c])))
    return out


def grid_shape(height, width, size, stride):
    """(gh, gw) = ((H - size) // stride + 1, (W - size) // stride + 1), with the checks.

    A square larger than the image or a stride < 1 is a ValueError naming the argument.
    """
    size = int_arg("size", size, 1)
    stride = int_arg("stride", stride, 1)
    if size > min(height, width):
        raise ValueError(f"size: the occluding square ({size} pixels) is larger than the image "
                         f"({height}x{width})")
    return (height - size) // stride + 1, (width - size) // stride + 1


def plan_batch(bytes_per_copy, batch_size, n_copies, budget=None):
    """How many occluded copies to forward at once: at most ``batch_size`` and ``n_copies``,
    and at most ``budget // bytes_per_copy`` (default budget: :func:`workspace_bytes`),
    but at least one."""
    budget = workspace_bytes() if budget is None else int(budget)
    fits = max(1, budget // max(1, int(bytes_per_copy)))
    return int(max(1, min(int(batch_size), int(n_copies), fits)))


def last_conv(net):
    """The name of the last convolution layer of ``net`` (the default layer of :func:`occlusion`)."""
    names = [name for name, layer in net if isinstance(layer, Conv2d)]
    if not names:
        raise ValueError("layer: the network has no convolution layer; give layer= explicitly")
    return names[-1]


def occlude(x, top, left, size, fill):
    """Copies of one image with a square hidden: x (C, H, W), top/left (B,) -> (B, C, H, W).

    Copy b has x[:, top[b]:top[b] + size, left[b]:left[b] + size] set to ``fill``
    (a number, or one value per channel (C, 1, 1)).  Works on the active backend's arrays.
    """
    xp = get_backend().xp
    out = xp.repeat(x[None], len(top), axis=0)
    for b, (t, l) in enumerate(zip(top, left)):
        out[b, :, t:t + size, l:l + size] = fill
    return out


def fill_value(fill, channels, dtype):
    """``fill`` (a number, or one number per channel) as an array of the active backend
    that broadcasts over (C, h, w): shape () or (C, 1, 1)."""
    xp = get_backend().xp
    if isinstance(fill, numbers.Real) and not isinstance(fill, bool):
        values = np.float64(fill)
    else:
        values = np.asarray(to_host(fill), dtype=np.float64)
        if values.shape != (channels,):
            raise ValueError(f"fill: expected a number or {channels} numbers (one per channel), got {fill!r}")
        values = values.reshape(channels, 1, 1)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"fill: expected finite numbers, got {fill!r}")
    return xp.asarray(values, dtype=dtype)


def _per_image(name, value, n, upper, what):
    """None, an int, or n ints in [0, upper) -> int64 (n,) or None."""
    if value is None:
        return None
    values = np.asarray(to_host(value))
    if values.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an int or {n} ints (one per image), got {value!r}")
    if values.ndim == 0:
        values = np.full(n, int(values), dtype=np.int64)
    if values.shape != (n,):
        raise ValueError(f"{name}: expected an int or {n} ints (one per image), got shape {values.shape}")
    if values.min() < 0 or values.max() >= upper:
        raise ValueError(f"{name}: expected values in [0, {upper}) ({upper} {what}), got {value!r}")
    return values.astype(np.int64)


def as_images(x, dtype):
    """Images (C, H, W) or (N, C, H, W), NumPy or device, as a ``dtype`` (N, C, H, W) array of the
    active backend (float pixels only; a ValueError/TypeError naming ``x`` otherwise)."""
    xh = to_host(x)
    if not hasattr(xh, "ndim") or xh.ndim not in (3, 4):
        raise ValueError(f"x: expected images (C, H, W) or (N, C, H, W), got "
                         f"{getattr(xh, 'shape', type(x).__name__)}")
    xh = np.asarray(xh)
    if xh.dtype.kind != "f":
        raise TypeError(f"x: expected float pixels (preprocessed images), got {xh.dtype}")
    return get_backend().xp.asarray(xh[None] if xh.ndim == 3 else xh, dtype=dtype)


def _readout(net, out, layer, feature, target):
    """(activity (B,), probability (B,), label (B,)) host arrays from one forward's outputs."""
    a = net.activations[layer]
    act = a[:, feature].reshape(a.shape[0], -1).sum(axis=1)
    prob = net.probabilities(out)
    return (np.asarray(to_host(act), dtype=np.float64), np.asarray(to_host(prob[:, target]), dtype=np.float64),
            np.asarray(to_host(out.argmax(axis=1)), dtype=np.int64))


def occlusion(net, x, size, stride, *, layer=None, feature=None, target=None, fill=0.0, batch_size=64,
              progress=True):
    """Slide a ``fill``-valued square over each image and record three maps (fig. 7).

    Parameters
    ----------
    net : zfraw.nn.Sequential
        Run in evaluation mode (no dropout); its last layer gives the class scores.
    x : array (C, H, W) or (N, C, H, W)
        Preprocessed images (as the network expects them), NumPy or the active backend's.
    size, stride : int
        Side of the square and the step between positions (both >= 1, size <= H, W).
    layer : str, optional
        Where ``activity`` is read; default the last convolution layer.
    feature : int or (N,) ints, optional
        The feature map of ``layer``; default each image's strongest map of the
        unoccluded image (the largest single activation, as :func:`zfraw.deconvnet.select`).
    target : int or (N,) ints, optional
        The class of ``probability``: the true label when you know it; default
        the unoccluded image's prediction.
    fill : float or (C,) floats
        The value of the hidden pixels (0: the mean, for mean-subtracted input).
    batch_size : int
        Most occluded copies per forward (fewer when the workspace budget is smaller).
    progress : bool
        A tqdm bar over the occluded copies.

    Returns
    -------
    OcclusionMaps
        ``activity``, ``probability``, ``label`` (N, gh, gw) and the chosen
        ``layer``, ``feature`` (N,), ``target`` (N,), ``size``, ``stride``.
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"net: expected a zfraw.nn.Sequential, got {type(net).__name__}")
    layer = last_conv(net) if layer is None else net.check_layer(layer)
    params = list(net.parameters().values())
    dtype = params[0].dtype if params else np.float32
    x = as_images(x, dtype)
    n, channels, height, width = x.shape
    gh, gw = grid_shape(height, width, size, stride)
    batch_size = int_arg("batch_size", batch_size, 1)
    hidden = fill_value(fill, channels, dtype)

    was_training = net.training
    net.eval()
    bar = None
    try:
        out = net.forward(x, keep=True, cache=False)
        if out.ndim != 2:
            raise ValueError(f"net: its last layer must give class scores (N, K), got shape {tuple(out.shape)}")
        a = net.activations[layer]
        feature_ = _per_image("feature", feature, n, a.shape[1], f"features of layer {layer!r}")
        if feature_ is None:
            feature_ = np.asarray(to_host(a.reshape(n, a.shape[1], -1).max(axis=2).argmax(axis=1)), dtype=np.int64)
        target_ = _per_image("target", target, n, out.shape[1], "classes")
        if target_ is None:
            target_ = np.asarray(to_host(out.argmax(axis=1)), dtype=np.int64)
        bytes_per_copy = x[0].nbytes + sum(v.nbytes for v in net.activations.values()) // n
        net.clear()

        positions = gh * gw
        rows, cols = np.divmod(np.arange(positions), gw)
        tops, lefts = rows * stride, cols * stride
        step = plan_batch(bytes_per_copy, batch_size, positions)
        activity = np.empty((n, positions), dtype=np.float64)
        probability = np.empty((n, positions), dtype=np.float64)
        label = np.empty((n, positions), dtype=np.int64)
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=n * positions, desc=f"occlusion {size}x{size}/{stride}", unit="copy", leave=False)
        for i in range(n):
            for s in range(0, positions, step):
                batch = occlude(x[i], tops[s:s + step], lefts[s:s + step], size, hidden)
                scores = net.forward(batch, keep=True, cache=False)
                activity[i, s:s + step], probability[i, s:s + step], label[i, s:s + step] = _readout(
                    net, scores, layer, int(feature_[i]), int(target_[i]))
                net.clear()
                if bar is not None:
                    bar.update(len(batch))
    finally:
        net.train(was_training)
        net.clear()
        if bar is not None:
            bar.close()
    shape = (n, gh, gw)
    return OcclusionMaps(activity.reshape(shape), probability.reshape(shape), label.reshape(shape), layer,
                         feature_, target_, int(size), int(stride))
