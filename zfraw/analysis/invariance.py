"""Invariance of the features to translation, scaling and rotation (fig. 5 of Zeiler & Fergus).

For each image x_n and each amount a of a transformation T_a, and for each chosen
layer l with output f^l (flattened to one vector per image),

    distance[n, a] = || f^l(T_a x_n) - f^l(x_n) ||_2
    relative[n, a] = distance[n, a] / || f^l(x_n) ||_2

(``relative`` lets layers of very different sizes be compared; it is NaN where
the original's feature vector is zero), and the probability the network gives
the image's class: ``probability[n, a] = softmax(net(T_a x_n))[target_n]``.
The paper draws these curves for a vertical translation, a scaling and a
rotation of a few images, and finds the first layer very sensitive to all
three, the top layers roughly invariant to translation and scaling but not to
rotation (unless the object is rotation-symmetric).

The transforms work on the preprocessed image (mean subtracted), by bilinear
resampling about the image centre; a pixel that comes from outside the image
is filled with 0, which is the dataset mean once the mean is subtracted.  The
identity amount (0 pixels, factor 1, 0 degrees) returns the image unchanged,
so its distance is exactly 0.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.ndimage

from zfraw._args import layers_arg
from zfraw.backend import get_backend, to_host
from zfraw.nn import Conv2d, Linear, Sequential

__all__ = ["invariance", "transform_images", "default_layers", "TRANSFORMS", "IDENTITY", "UNITS"]

#: the transforms :func:`invariance` knows
TRANSFORMS = ("translate", "scale", "rotate")

#: the amount that leaves an image unchanged, per transform
IDENTITY = {"translate": 0.0, "scale": 1.0, "rotate": 0.0}

#: what an amount is measured in, per transform (for axis labels)
UNITS = {"translate": "vertical shift (pixels, + = down)", "scale": "scale factor",
         "rotate": "rotation (degrees, + = counter-clockwise)"}


def _check_transform(transform):
    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    return transform


def _check_amounts(amounts, transform):
    try:
        values = [float(a) for a in np.atleast_1d(np.asarray(amounts, dtype=object)).ravel()]
    except (TypeError, ValueError):
        raise TypeError(f"amounts must be numbers, got {amounts!r}") from None
    if not values:
        raise ValueError("amounts must hold at least one amount, got none")
    if not all(math.isfinite(a) for a in values):
        raise ValueError(f"amounts must be finite numbers, got {values}")
    if transform == "scale" and min(values) <= 0:
        raise ValueError(f"amounts must be scale factors > 0 for transform 'scale', got {values}")
    return values


def _affine(transform, amount, h, w):
    """(matrix, offset) such that output pixel o samples the input at matrix @ o + offset (row, col)."""
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    if transform == "translate":
        return np.eye(2), np.array([-amount, 0.0])
    if transform == "scale":
        matrix = np.eye(2) / amount
    else:
        t = math.radians(amount)
        matrix = np.array([[math.cos(t), math.sin(t)], [-math.sin(t), math.cos(t)]])
    return matrix, centre - matrix @ centre


def transform_images(x, transform, amount):
    """Translate, scale or rotate images about their centre.

    x (N, C, H, W) host array (preprocessed: the mean subtracted) -> a new array
    of the same shape and dtype.  ``"translate"``: down by ``amount`` pixels
    (negative: up); ``"scale"``: enlarged by the factor ``amount`` about the
    centre (< 1 shrinks); ``"rotate"``: ``amount`` degrees counter-clockwise
    about the centre.  Bilinear resampling; pixels from outside the image are 0
    (the mean).  The identity amount returns an exact copy.
    """
    transform = _check_transform(transform)
    amount = float(amount)
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"x must be images (N, C, H, W), got shape {x.shape}")
    if amount == IDENTITY[transform]:
        return x.copy()
    if transform == "scale" and not amount > 0:
        raise ValueError(f"amount must be a scale factor > 0, got {amount}")
    matrix, offset = _affine(transform, amount, x.shape[2], x.shape[3])
    out = np.empty_like(x)
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            out[n, c] = scipy.ndimage.affine_transform(
                x[n, c].astype(np.float64), matrix, offset, order=1, mode="grid-constant", cval=0.0)
    return out


def default_layers(net):
    """The layers fig. 5 follows: the first and the last conv layer and the last hidden fc layer
    (conv1, conv5 and fc7 of ZFNet), those that exist."""
    convs = [n for n, lyr in net if isinstance(lyr, Conv2d)]
    fcs = [n for n, lyr in net if isinstance(lyr, Linear)]
    return list(dict.fromkeys(convs[:1] + convs[-1:] + fcs[-2:-1]))


def _targets(target, predicted, n, num_classes):
    if target is None:
        return predicted
    if isinstance(target, numbers.Integral) and not isinstance(target, bool):
        target = np.full(n, int(target))
    target = np.asarray(target)
    if target.dtype.kind not in "iu" or target.shape != (n,):
        raise ValueError(f"target must be a class index or {n} class indices (one per image), got {target!r}")
    if target.min() < 0 or target.max() >= num_classes:
        raise ValueError(f"target must be classes in [0, {num_classes}), got {target.tolist()}")
    return target.astype(np.int64)


def _forward(net, x, layers):
    """Host float64 feature vectors (N, D) of each layer, and the softmax of the net's output (N, K)."""
    xp = get_backend().xp
    dtype = next(iter(net.parameters().values())).dtype if net.parameters() else np.float32
    out = net.forward(xp.asarray(x, dtype=dtype), keep=True, cache=False)
    feats = {lyr: np.asarray(to_host(net.activations[lyr]), dtype=np.float64).reshape(len(x), -1)
             for lyr in layers}
    net.activations.clear()
    if out.ndim != 2:
        raise ValueError(f"the network's output must be class scores (N, K), got shape {tuple(out.shape)}")
    return feats, np.asarray(to_host(net.probabilities(out)), dtype=np.float64)


def invariance(net, x, transform, amounts, layers, *, target=None, progress=False):
    """How much each layer's features (and the class probability) change as images are transformed.

    Parameters
    ----------
    net : zfraw.nn.Sequential
        A classifier (its last layer gives class scores).
    x : array (N, C, H, W)
        Preprocessed images (host or device).
    transform : str
        ``"translate"`` (vertical, in pixels, + = down), ``"scale"`` (a factor
        about the centre) or ``"rotate"`` (degrees, + = counter-clockwise).
        Pixels from outside the image are filled with 0 (the mean once the
        mean is subtracted); see :func:`transform_images`.
    amounts : sequence of float
        The amounts, e.g. ``range(-20, 21, 4)`` pixels, ``[0.5, 1, 1.5]``,
        ``range(0, 361, 30)`` degrees.  The identity (0 or factor 1) gives
        distance 0 exactly.
    layers : sequence of str
        Layers whose output is compared (flattened: one vector per image).
    target : int or (N,) ints, optional
        The class whose probability is reported (the true class); default: the
        network's prediction on each original image.
    progress : bool
        A tqdm bar over the amounts.

    Returns
    -------
    dict
        ``layer -> {"distance": (N, A), "relative": (N, A)}`` for each layer,
        ``"probability" -> (N, A)``, and ``"target" -> (N,)``, ``"amounts" -> (A,)``,
        ``"transform"``, ``"target_is_prediction"`` (A = len(amounts)).  ``distance`` is the Euclidean
        distance between the feature vectors of the original and the
        transformed image, ``relative`` the same divided by the original's norm
        (NaN where that norm is 0).
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"net must be a zfraw.nn.Sequential, got {type(net).__name__}")
    transform = _check_transform(transform)
    amounts = _check_amounts(amounts, transform)
    layers = layers_arg("layers", layers, net)
    x = np.asarray(to_host(x))
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"x must be images (N, C, H, W) with N >= 1, got shape {x.shape}")
    was_training = net.training
    net.eval()
    try:
        base, prob0 = _forward(net, x, layers)
        targets = _targets(target, prob0.argmax(axis=1), len(x), prob0.shape[1])
        norms = {lyr: np.linalg.norm(f, axis=1) for lyr, f in base.items()}
        result = {lyr: {"distance": np.zeros((len(x), len(amounts))),
                        "relative": np.zeros((len(x), len(amounts)))} for lyr in layers}
        probability = np.zeros((len(x), len(amounts)))
        from tqdm.auto import tqdm

        rows = np.arange(len(x))
        for j, amount in enumerate(tqdm(amounts, desc=f"invariance ({transform})", leave=False,
                                        disable=not progress)):
            if amount == IDENTITY[transform]:  # unchanged image: distance 0 exactly, no rounding
                feats, prob = base, prob0
            else:
                feats, prob = _forward(net, transform_images(x, transform, amount), layers)
            for lyr in layers:
                d = np.linalg.norm(feats[lyr] - base[lyr], axis=1)
                result[lyr]["distance"][:, j] = d
                result[lyr]["relative"][:, j] = np.divide(d, norms[lyr], out=np.full_like(d, np.nan),
                                                          where=norms[lyr] > 0)
            probability[:, j] = prob[rows, targets]
    finally:
        net.train(was_training)
        net.clear()
    result.update(probability=probability, target=targets, amounts=np.asarray(amounts), transform=transform,
                  target_is_prediction=target is None)
    return result
