"""The deconvnet: projecting an activation of any layer back to pixel space.

Zeiler & Fergus attach a deconvnet to every layer of the convnet.  To see what
drives one activation, all other activations of its layer are set to zero and
the signal is walked down: at a max-pool it is unpooled through the switches
the forward pass recorded, at a ReLU it is rectified (the ``deconvnet`` rule),
at a convolution it goes through the transposed filters C^T, at a contrast
norm it passes unchanged, at a fully connected layer it goes through w^T.
The result has the input's shape: the pixels that activation responds to.

``rule="backprop"`` gives the gradient instead (Simonyan et al.), ``"guided"``
guided backpropagation (Springenberg et al.).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from zfraw import functional as F
from zfraw.backend import get_backend
from zfraw.nn import Flatten, Linear, Sequential

__all__ = ["project", "select", "receptive_field", "patch_box", "ReceptiveField", "KEEP_MODES"]

KEEP_MODES = ("max", "map")


def _check_features(feature, n, c, layer):
    """None, an int, or one int per image -> int64 array (n,) or None."""
    if feature is None:
        return None
    feats = np.asarray(feature)
    if feats.dtype.kind not in "iu":
        raise TypeError(f"feature must be an int (or one int per image), got {feature!r}")
    if feats.ndim == 0:
        feats = np.full(n, int(feats), dtype=np.int64)
    if feats.shape != (n,):
        raise ValueError(f"feature must be an int or {n} ints (one per image), got shape {feats.shape}")
    if feats.min() < 0 or feats.max() >= c:
        raise ValueError(f"feature must be in [0, {c}) for layer {layer!r} ({c} features), got {feature!r}")
    return feats.astype(np.int64)


def select(a, feature=None, keep="max", layer="layer"):
    """Keep chosen activations of a layer's output, zero all others.

    a (N, C, H, W) or (N, C) -> (signal like a, features (N,), locations (N,), values (N,)).
    ``feature=None`` picks each image's strongest feature map (largest single value);
    ``keep="max"`` keeps that map's single strongest activation, ``"map"`` the whole map.
    ``locations`` are flat indices into the H*W map (0 for fc layers).
    """
    if keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {KEEP_MODES}, got {keep!r}")
    xp = get_backend().xp
    n, c = a.shape[:2]
    maps = a.reshape(n, c, -1)
    feats = _check_features(feature, n, c, layer)
    if feats is None:
        feats = np.asarray(_to_host(maps.max(axis=2).argmax(axis=1)), dtype=np.int64)
    rows = xp.arange(n)
    chosen = maps[rows, xp.asarray(feats)]  # (N, H*W)
    locs = chosen.argmax(axis=1)
    values = chosen[rows, locs]
    signal = xp.zeros_like(maps)
    if keep == "map":
        signal[rows, xp.asarray(feats)] = chosen
    else:
        signal[rows, xp.asarray(feats), locs] = values
    return (signal.reshape(a.shape), feats, np.asarray(_to_host(locs), dtype=np.int64),
            np.asarray(_to_host(values)))


def _to_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else a


def project(net, x, layer, feature=None, rule="deconvnet", keep="max", return_info=False):
    """Project activations of ``layer`` back to pixel space.

    net: a :class:`~zfraw.nn.Sequential`; x (N, C, H, W) input images; layer: a layer
    name (``"conv5"``, ``"pool2"``, ``"fc8"`` ...; the output of that layer is
    projected); feature: the feature map (or class, for fc layers) to keep — an
    int, one int per image, or None for each image's strongest; rule:
    ``"deconvnet"``, ``"guided"`` or ``"backprop"``; keep: ``"max"`` (one
    activation) or ``"map"`` (the whole feature map).

    Returns an array of x's shape; with ``return_info`` also a dict with the
    chosen ``feature``, ``location`` (row, col) and activation ``value`` per image.
    The network runs in evaluation mode (no dropout).
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"net must be a zfraw.nn.Sequential, got {type(net).__name__}")
    net.check_layer(layer)
    if rule not in F.RELU_RULES:
        raise ValueError(f"rule must be one of {F.RELU_RULES}, got {rule!r}")
    if keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {KEEP_MODES}, got {keep!r}")
    x = F._array("x", x, 4)
    was_training = net.training
    net.eval()
    try:
        a = net.forward(x, upto=layer, keep=False)
        signal, feats, locs, values = select(a, feature, keep, layer)
        pixels = net.project(signal, layer, rule)
    finally:
        net.train(was_training)
    if not return_info:
        return pixels
    width = a.shape[3] if a.ndim == 4 else 1
    info = dict(feature=feats, location=np.stack([locs // width, locs % width], axis=1), value=values)
    return pixels, info


class ReceptiveField(NamedTuple):
    """Unit (row, col) of a layer sees input rows [offset + row*stride, offset + row*stride + size)."""

    size: int
    stride: int
    offset: int


def receptive_field(net, layer):
    """(size, stride, offset) of one unit of ``layer``'s output, in input pixels.

    Walks the windowed layers (conv, pool) from the input: size += (k - 1) * jump,
    offset -= pad * jump, jump *= stride, with pad the top/left pad (where the
    first window starts; a bottom/right pad only adds windows).  The offset is
    negative when padding is involved (the window then starts outside the
    image).  A fully connected layer
    sees the whole input: (H, H, 0) for an H x H input (``net.input_shape``).
    Non-square geometry is not supported.
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"net must be a zfraw.nn.Sequential, got {type(net).__name__}")
    names = net.names[: net.names.index(net.check_layer(layer)) + 1]
    size, jump, offset = 1, 1, 0
    for lname in names:
        lyr = net[lname]
        if isinstance(lyr, (Flatten, Linear)):
            if net.input_shape is None:
                raise ValueError(f"layer {layer!r} sees the whole input, whose size the network does not record")
            side = net.input_shape[-1]
            return ReceptiveField(side, side, 0)
        if lyr.geometry is None:
            continue
        (kh, kw), (sh, sw), (ph, pw) = lyr.geometry
        if kh != kw or sh != sw or ph != pw:
            raise ValueError(f"layer {lname!r} has non-square geometry; receptive_field supports square only")
        size += (kh - 1) * jump
        offset -= ph * jump
        jump *= sh
    return ReceptiveField(size, jump, offset)


def patch_box(net, layer, row, col, image_shape=None):
    """The input box (top, left, bottom, right) (bottom/right exclusive) that unit (row, col)
    of ``layer`` depends on, clipped to the image ``image_shape`` (H, W) (default: net.input_shape)."""
    rf = receptive_field(net, layer)
    shape = image_shape if image_shape is not None else (net.input_shape[-2:] if net.input_shape else None)
    if shape is None:
        raise ValueError("image_shape is needed (the network does not record its input shape)")
    h, w = int(shape[-2]), int(shape[-1])
    top, left = rf.offset + int(row) * rf.stride, rf.offset + int(col) * rf.stride
    return max(top, 0), max(left, 0), min(top + rf.size, h), min(left + rf.size, w)
