"""Correspondence of object parts (table 1 of Zeiler & Fergus 2014).

Does the network tie together the same part of an object across images?  Hide
the same part (say the left eye) in n images of one class and see whether the
feature vectors at a layer change in the *same way*.  For image x_i, with the
box over the part filled with ``fill``,

    eps_i^l = f^l(x_i) - f^l(occluded x_i)         (the change at layer l, flattened)

and, over the ordered pairs i != j,

    Delta_l = sum_{i != j} H(sign(eps_i^l), sign(eps_j^l))

where H is the Hamming distance normalized by the vector length (the fraction
of entries whose signs differ; signs in {-1, 0, +1}).  A small Delta means the
occlusions changed the features consistently.  ``delta_per_pair`` = Delta /
(n (n - 1)) does not grow with n.  The baseline hides, in each image, a box of
the same size at a random position inside the image (drawn independently per
image), ``random_draws`` times: its mean and standard deviation.  The paper finds
the parts lower than random at layer 5 and closer to random at layer 7.

>>> import numpy as np
>>> from zfraw.analysis.correspondence import sign_delta
>>> sign_delta(np.array([[1, 0, -1, 1], [1, 1, -1, -1]]))     # 2 of 4 signs differ, 2 ordered pairs
(1.0, 0.5)
"""
from __future__ import annotations

import numpy as np

from zfraw._args import int_arg
from zfraw.analysis.occlusion import as_images, fill_value
from zfraw.backend import to_host
from zfraw.nn import Sequential

__all__ = ["correspondence", "part_correspondence", "sign_delta", "BUILTIN_PARTS", "BUILTIN_LAYERS", "check_boxes", "random_boxes", "fill_boxes", "layer_features"]

#: images forwarded at once when the features are computed
BATCH = 64


def sign_delta(signs):
    """Delta = sum over ordered pairs i != j of the fraction of entries where signs differ.

    signs (n, D) with values in {-1, 0, +1} -> (delta, delta_per_pair) as floats,
    delta_per_pair = delta / (n (n - 1)).  Computed from the counts of agreeing
    entries, sum_s (S == s) (S == s)^T, in float64 (exact for D < 2**53).
    """
    signs = np.asarray(signs)
    if signs.ndim != 2 or signs.shape[0] < 2 or signs.shape[1] < 1:
        raise ValueError(f"signs: expected (n, D) with n >= 2 and D >= 1, got shape {signs.shape}")
    n, d = signs.shape
    agree = np.zeros((n, n), dtype=np.float64)
    for s in (-1, 0, 1):
        hit = (signs == s).astype(np.float64)
        agree += hit @ hit.T
    differ = (d - agree) / d
    np.fill_diagonal(differ, 0.0)
    delta = float(differ.sum())
    return delta, delta / (n * (n - 1))


def check_boxes(boxes, n, height, width):
    """``boxes`` as int64 (n, 4) of (top, left, bottom, right), bottom/right exclusive, each a
    non-empty box inside an image of height x width; a ValueError naming ``boxes`` otherwise."""
    b = np.asarray(boxes)
    if b.ndim == 1 and b.shape == (4,) and n == 1:
        b = b[None]
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes: expected one (top, left, bottom, right) per image, shape ({n}, 4), "
                         f"got shape {b.shape}")
    if b.shape[0] != n:
        raise ValueError(f"boxes: expected {n} boxes (one per image), got {b.shape[0]}")
    if b.dtype.kind not in "iu":
        raise TypeError(f"boxes: expected integer pixel coordinates, got {b.dtype}")
    top, left, bottom, right = b.T
    bad = (top < 0) | (left < 0) | (bottom > height) | (right > width) | (bottom <= top) | (right <= left)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"boxes: box {i} {tuple(int(v) for v in b[i])} is not a non-empty box inside the "
                         f"{height}x{width} image (0 <= top < bottom <= {height}, 0 <= left < right <= {width})")
    return b.astype(np.int64)


def random_boxes(boxes, height, width, rng):
    """For each box, one of the same size at a uniformly random position inside the image.

    boxes int (n, 4) -> int64 (n, 4); top ~ U{0..H - h}, left ~ U{0..W - w}, independently per box.
    """
    boxes = np.asarray(boxes, dtype=np.int64)
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    top = rng.integers(0, height - h + 1)
    left = rng.integers(0, width - w + 1)
    return np.stack([top, left, top + h, left + w], axis=1)


def fill_boxes(x, boxes, fill):
    """A copy of x (N, C, H, W) with box i of image i set to ``fill`` (a number or (C, 1, 1))."""
    out = x.copy()
    for i, (t, l, b, r) in enumerate(boxes):
        out[i, :, t:b, l:r] = fill
    return out


def layer_features(net, x, layers):
    """Flattened outputs of each of ``layers``: {layer: float64 host (N, D)}, forwarded in
    batches of :data:`BATCH` images, in evaluation mode, up to the deepest layer only."""
    deepest = max(layers, key=net.names.index)
    parts = {layer: [] for layer in layers}
    was_training = net.training
    net.eval()
    try:
        for s in range(0, x.shape[0], BATCH):
            net.forward(x[s:s + BATCH], upto=deepest, keep=True, cache=False)
            for layer in layers:
                a = net.activations[layer]
                parts[layer].append(np.asarray(to_host(a.reshape(a.shape[0], -1)), dtype=np.float64))
            net.clear()
    finally:
        net.train(was_training)
        net.clear()
    return {layer: np.concatenate(chunks) for layer, chunks in parts.items()}


def _deltas(net, x, boxes, layers, fill, reference):
    """{layer: (delta, delta_per_pair)} for one set of boxes, against the unoccluded features."""
    occluded = layer_features(net, fill_boxes(x, boxes, fill), layers)
    return {layer: sign_delta(np.sign(reference[layer] - occluded[layer]).astype(np.int8)) for layer in layers}


def correspondence(net, x, boxes, layers, *, fill=0.0, random_draws=10, seed=0):
    """The part-correspondence measure Delta of table 1, with its random-box baseline.

    Parameters
    ----------
    net : zfraw.nn.Sequential
        Run in evaluation mode.
    x : array (N, C, H, W), N >= 2
        Preprocessed images of one class (NumPy or the active backend's).
    boxes : int array (N, 4)
        One (top, left, bottom, right) per image over the same part, bottom/right
        exclusive (the convention of :func:`zfraw.deconvnet.patch_box`), inside the image.
    layers : str or sequence of str
        The layers whose (flattened) outputs are the feature vectors f^l.
    fill : float or (C,) floats
        The value of the hidden pixels (0: the mean, for mean-subtracted input).
    random_draws : int
        How many times the random boxes are drawn (>= 1).
    seed : int
        Seeds the random boxes: the result is a function of the arguments.

    Returns
    -------
    dict
        layer -> dict with ``delta`` and ``delta_per_pair`` for the given boxes;
        ``random_mean``, ``random_std`` (over the draws, ddof 0) of Delta for the
        random boxes and ``random_mean_per_pair``, ``random_std_per_pair`` of
        Delta / (N (N - 1)); plus ``n`` (the number of images) and ``draws``
        (Delta of each random draw, (random_draws,)).
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"net: expected a zfraw.nn.Sequential, got {type(net).__name__}")
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers: expected at least one layer name")
    layers = [net.check_layer(layer) for layer in layers]
    random_draws = int_arg("random_draws", random_draws, 1)
    seed = int_arg("seed", seed, 0)
    params = list(net.parameters().values())
    dtype = params[0].dtype if params else np.float32
    x = as_images(x, dtype)
    n, channels, height, width = x.shape
    if n < 2:
        raise ValueError(f"x: expected at least 2 images (Delta compares pairs), got {n}")
    boxes = check_boxes(to_host(boxes), n, height, width)
    hidden = fill_value(fill, channels, dtype)

    reference = layer_features(net, x, layers)
    parts = _deltas(net, x, boxes, layers, hidden, reference)
    rng = np.random.default_rng(seed)
    draws = {layer: [] for layer in layers}
    for _ in range(random_draws):
        for layer, (delta, _) in _deltas(net, x, random_boxes(boxes, height, width, rng), layers, hidden,
                                         reference).items():
            draws[layer].append(delta)
    pairs = n * (n - 1)
    result = {}
    for layer in layers:
        d = np.asarray(draws[layer], dtype=np.float64)
        result[layer] = dict(
            delta=parts[layer][0], delta_per_pair=parts[layer][1],
            random_mean=float(d.mean()), random_std=float(d.std()),
            random_mean_per_pair=float(d.mean() / pairs), random_std_per_pair=float(d.std() / pairs),
            n=n, draws=d)
    return result


#: the parts of the built-in dataset in the table of the report and the README: (class, part)
BUILTIN_PARTS = (("face", "left_eye"), ("face", "right_eye"), ("face", "mouth"), ("car", "left_wheel"),
                 ("house", "door"))

#: the layers of that table: the output of the top conv layer's block (conv5, ReLU, pool5) and of fc7
#: after its ReLU, the paper's "layer 5" and "layer 7" feature vectors
BUILTIN_LAYERS = ("pool5", "relu7")


def part_correspondence(net, dataset, transform, parts=BUILTIN_PARTS, layers=BUILTIN_LAYERS, n_images=20,
                        skip_scarce=False, **options):
    """:func:`correspondence` for several parts of a dataset that knows its part boxes.

    Parameters
    ----------
    net : zfraw.nn.Sequential
    dataset : zfraw.synthetic.SyntheticDataset (or anything with its ``part_boxes``)
    transform : callable
        ``image uint8 HWC -> float32 (C, H, W)``, a preprocessing that keeps the
        image's pixel grid (the built-in ``eval_transform`` on 64x64 images), so the
        part boxes stay valid.
    parts : sequence of (class, part)
        e.g. ``(("face", "left_eye"), ("car", "left_wheel"))``.
    layers, options
        As in :func:`correspondence` (``fill``, ``random_draws``, ``seed``).
    n_images : int
        Images per part: the first ``n_images`` of the class whose part is in the image.
    skip_scarce : bool
        Leave out a part the dataset has fewer than 2 images of (else a ValueError).

    Returns
    -------
    dict
        ``"class: part"`` -> the result of :func:`correspondence` (layer -> dict).
    """
    if not hasattr(dataset, "part_boxes"):
        raise TypeError(f"dataset: expected one that knows its part boxes (zfraw.synthetic.SyntheticDataset), "
                        f"got {type(dataset).__name__}")
    n_images = int_arg("n_images", n_images, 2)
    results = {}
    for label, part in parts:
        _, images, boxes = dataset.part_boxes(label, part, n_images)
        if len(images) < 2:
            if skip_scarce:
                continue
            raise ValueError(f"dataset: it has {len(images)} image(s) of {label!r} with a {part!r}; "
                             f"Delta needs at least 2")
        x = np.stack([transform(image) for image in images])
        if x.shape[-2:] != images.shape[1:3]:
            raise ValueError(f"transform: it changes the image size ({images.shape[1:3]} -> {x.shape[-2:]}), "
                             f"so the part boxes would not fit; use one that keeps the pixel grid")
        results[f"{label}: {part}"] = correspondence(net, x, boxes, layers, **options)
    return results
