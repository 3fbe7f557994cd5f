"""Images from disk or memory, the preprocessing of the paper, and batches for training.

A *dataset* here is any sequence of ``(image, label)`` pairs: ``len(ds)`` and
``ds[i]``, where ``image`` is uint8 (H, W, 3) RGB and ``label`` an int.  Three
are provided: :class:`ImageFolder` (the ImageNet / Imagenette layout on disk),
:class:`ArrayDataset` (arrays in memory) and
:class:`zfraw.synthetic.SyntheticDataset` (drawn on demand).

Preprocessing follows Zeiler & Fergus (section 3): resize the shorter side to
256, keep the central 256x256 region, subtract the per-pixel mean (over all
images) and take 224x224 sub-crops: a random one with a random horizontal flip
for training (:func:`train_transform`), the centre one or the ten corner and
centre crops with their flips for testing (:func:`eval_transform`,
:func:`ten_crop`).

The value convention: :func:`to_chw_float` maps uint8 ``v`` to ``v / 255`` in
[0, 1] *before* the mean is subtracted, so every mean (:func:`compute_mean`)
is in [0, 1] units too::

    x[c, i, j] = img[i, j, c] / 255 - mean[c]          (per-channel mean, shape (3,))
    x[c, i, j] = img[i, j, c] / 255 - mean[c, i, j]    (per-pixel mean, shape (3, H, W))

:func:`batches` turns a dataset and a transform into ``(x, labels)`` batches,
float32 (B, 3, h, w) and int64 (B,), holding one batch at a time.
"""
from __future__ import annotations

import math
import operator
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from zfraw._args import int_arg

__all__ = [
    "DataError", "IMG_EXTENSIONS", "load_image", "ImageFolder", "ArrayDataset",
    "dataset_length", "resolve_skip_bad", "items", "transform_item", "load_item", "stream",
    "resize_shorter", "center_crop", "random_crop", "pad", "hflip", "ten_crop",
    "to_chw_float", "mean_chw", "compute_mean", "train_transform", "eval_transform",
    "batches", "Batches",
]

#: file name endings ImageFolder picks up by default (compared case-insensitively)
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif",
                  ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """An image that cannot be read, or a dataset that cannot be built; the message names the file."""


# --------------------------------------------------------------------------- loading
def _to_rgb(img, background):
    """Any Pillow mode -> an RGB image; alpha is composited over ``background``."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 257.0                                  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
        base = Image.new("RGBA", img.size, tuple(background) + (255,))
        img = Image.alpha_composite(base, img)
    return img.convert("RGB")


def load_image(path, background=(255, 255, 255)):
    """Read an image file as RGB.

    Grayscale, palette, CMYK and 16-bit images are converted to 8-bit RGB (16-bit
    values are divided by 257); a transparent image is composited over
    ``background``; the EXIF orientation tag is applied, so the array is upright.

    Parameters
    ----------
    path : str or os.PathLike
        The image file.
    background : tuple of 3 ints
        RGB colour behind transparent pixels: ``out = a * c + (1 - a) * background``
        with ``a = alpha / 255``, rounded (Pillow's ``alpha_composite``).

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3).

    Raises
    ------
    DataError
        If the file is missing, not an image, truncated or otherwise unreadable;
        the message names the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img, background)
    except FileNotFoundError:
        raise DataError(f"image file not found: {os.fspath(path)!r}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image {os.fspath(path)!r}: {type(e).__name__}: {e}") from e
    return np.asarray(img, dtype=np.uint8).copy()


# --------------------------------------------------------------------------- datasets
def _index(i, n):
    try:
        i = operator.index(i)
    except TypeError:
        raise TypeError(f"index: expected an int, got {type(i).__name__}") from None
    if i < 0:
        i += n
    if not 0 <= i < n:
        raise IndexError(f"index {i} out of range for a dataset of {n} items")
    return i


class ImageFolder:
    """Images on disk in one folder per class: ``root/<class name>/**/<image>``.

    The layout of ImageNet and Imagenette.  Class names are the sub-folder names
    of ``root`` (hidden ones skipped), sorted; the label of an image is the index
    of its class.  Images are found recursively under each class folder, in
    sorted order, by their extension.  Nothing is read until asked for:
    ``ds[i]`` loads ``(image uint8 (H, W, 3), label int)`` with :func:`load_image`.

    Parameters
    ----------
    root : str or os.PathLike
        The folder holding the class folders.
    extensions : tuple of str
        File endings to take, compared case-insensitively.
    skip_bad : bool
        What to do with a file that cannot be read.  ``ds[i]`` always raises
        :class:`DataError` for it; with ``skip_bad=True`` iterating over the
        dataset, :func:`batches` and :func:`compute_mean` skip it with a
        ``warnings.warn`` that names the file (when they reach it).

    Attributes
    ----------
    classes : list of str
    class_to_idx : dict
    paths : list of str
        One per image, in dataset order.
    labels : numpy.ndarray
        int64 (N,).

    Raises
    ------
    DataError
        If ``root`` is not a folder, holds no class folder, or no image at all.
        A class folder without images only gives a warning (its label is kept).
    """

    def __init__(self, root, extensions=IMG_EXTENSIONS, skip_bad=False):
        self.root = os.fspath(root)
        if isinstance(extensions, str):
            extensions = (extensions,)
        self.extensions = tuple(e.lower() for e in extensions)
        if not self.extensions:
            raise ValueError("extensions: expected at least one file ending, got none")
        self.skip_bad = bool(skip_bad)
        if not os.path.isdir(self.root):
            raise DataError(f"ImageFolder root {self.root!r} is not a folder")
        self.classes = sorted(e.name for e in os.scandir(self.root)
                              if e.is_dir() and not e.name.startswith("."))
        if not self.classes:
            raise DataError(f"ImageFolder root {self.root!r} has no class folders "
                            f"(expected root/<class name>/<image files>)")
        self.class_to_idx = {c: k for k, c in enumerate(self.classes)}
        self.paths, labels, empty = [], [], []
        for k, c in enumerate(self.classes):
            found = self._scan(os.path.join(self.root, c))
            if not found:
                empty.append(c)
            self.paths += found
            labels += [k] * len(found)
        self.labels = np.asarray(labels, dtype=np.int64)
        if not self.paths:
            raise DataError(f"ImageFolder root {self.root!r}: no images ending in "
                            f"{', '.join(self.extensions)} in any of its {len(self.classes)} class folders")
        if empty:
            warnings.warn(f"ImageFolder {self.root!r}: class folders without images: {', '.join(empty)}",
                          stacklevel=2)

    def _scan(self, folder):
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found += [os.path.join(dirpath, f) for f in sorted(filenames)
                      if not f.startswith(".") and f.lower().endswith(self.extensions)]
        return found

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        i = _index(i, len(self))
        return load_image(self.paths[i]), int(self.labels[i])

    def __iter__(self):
        for _, image, label in items(self, range(len(self)), self.skip_bad):
            yield image, label

    def __repr__(self):
        return f"ImageFolder({self.root!r}, {len(self)} images, {len(self.classes)} classes)"


class ArrayDataset:
    """Images held in memory as one array.

    Parameters
    ----------
    images : array_like
        uint8 (N, H, W, 3).
    labels : array_like of int
        (N,).
    classes : list of str, optional
        Class names; ``str(k)`` for k = 0 .. max(labels) by default.
    """

    def __init__(self, images, labels, classes=None):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images: expected shape (N, H, W, 3), got {images.shape}")
        if images.dtype != np.uint8:
            raise TypeError(f"images: expected uint8, got {images.dtype}")
        if labels.shape != (len(images),):
            raise ValueError(f"labels: expected shape ({len(images)},) to match images, got {labels.shape}")
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise TypeError(f"labels: expected integers, got {labels.dtype}")
        self.images, self.labels = images, labels.astype(np.int64)
        n_classes = int(self.labels.max()) + 1 if self.labels.size else 0
        self.classes = list(classes) if classes is not None else [str(k) for k in range(n_classes)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        i = _index(i, len(self))
        return self.images[i], int(self.labels[i])

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def __repr__(self):
        return f"ArrayDataset({len(self)} images of {self.images.shape[1:]}, {len(self.classes)} classes)"


def dataset_length(dataset):
    """``len(dataset)`` after checking that it is a sequence of (image, label)."""
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"dataset: expected a sequence of (image, label), got {type(dataset).__name__}")
    return len(dataset)


def resolve_skip_bad(dataset, skip_bad=None):
    """Whether to skip unreadable items: ``skip_bad`` if given, else the dataset's own
    ``skip_bad`` attribute (False when it has none)."""
    return bool(getattr(dataset, "skip_bad", False)) if skip_bad is None else bool(skip_bad)


def items(dataset, indices, skip_bad=None):
    """Yield ``(index, image, label)`` for the given dataset indices, in their order.

    An item that raises :class:`DataError` (an unreadable file) is skipped with a
    warning naming it when ``skip_bad`` (default: the dataset's own setting, see
    :func:`resolve_skip_bad`), and raised otherwise.
    """
    skip = resolve_skip_bad(dataset, skip_bad)
    for i in indices:
        try:
            image, label = dataset[i]
        except DataError as e:
            if not skip:
                raise
            warnings.warn(f"skipping item {i}: {e}", stacklevel=3)
            continue
        yield i, image, label


def transform_item(transform, image, index):
    """``transform(image)``, checked to be an array (C, h, w); ``index`` names the item in errors."""
    x = transform(image)
    if not isinstance(x, np.ndarray) or x.ndim != 3:
        raise ValueError(f"transform of item {index}: expected a float array (C, h, w), got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    return x


def load_item(dataset, index, transform=None):
    """One preprocessed item: ``transform(dataset[index][0])`` (:func:`to_chw_float` by default)."""
    transform = to_chw_float if transform is None else transform
    return transform_item(transform, dataset[index][0], index)


def stream(dataset, batch_size, transform=None, limit=None, indices=None, skip_bad=None):
    """Yield ``(x float32 (B, C, h, w), dataset indices int64 (B,))``, one batch at a time.

    The items are ``indices`` (any subset of the dataset, in that order; default
    all of them, in dataset order), cut to the first ``limit``.  Only one batch is
    held.  Items that raise :class:`DataError` are skipped with a warning when
    ``skip_bad`` (default: the dataset's own setting), so the indices returned are
    always the true dataset indices of the images in ``x``.
    """
    n = dataset_length(dataset)
    batch_size = int_arg("batch_size", batch_size, 1)
    order = range(n) if indices is None else [_index(i, n) for i in indices]
    if limit is not None:
        order = order[:int_arg("limit", limit, 0)]
    transform = to_chw_float if transform is None else transform
    if not callable(transform):
        raise TypeError(f"transform: expected a callable, got {type(transform).__name__}")
    for start in range(0, len(order), batch_size):
        xs, idx = [], []
        for i, image, _ in items(dataset, order[start:start + batch_size], skip_bad):
            x = transform_item(transform, image, i)
            if xs and x.shape != xs[0].shape:
                raise ValueError(f"transform of item {i}: shape {x.shape} differs from {xs[0].shape} "
                                 f"(use a transform that crops to one size)")
            xs.append(x)
            idx.append(i)
        if xs:
            yield np.stack(xs).astype(np.float32, copy=False), np.asarray(idx, dtype=np.int64)


# --------------------------------------------------------------------------- preprocessing
def _image(img, name="img"):
    if not isinstance(img, np.ndarray):
        raise TypeError(f"{name}: expected a numpy array, got {type(img).__name__}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name}: expected shape (H, W, 3), got {img.shape}")
    if img.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8, got {img.dtype}")
    return img


def _size2(size, name="size"):
    """An int or an (h, w) pair -> (h, w), each >= 1."""
    if isinstance(size, (tuple, list)):
        if len(size) != 2:
            raise ValueError(f"{name}: expected an int or an (h, w) pair, got {size!r}")
        pair = size
    else:
        pair = (size, size)
    try:
        h, w = (operator.index(v) for v in pair)
    except TypeError:
        raise TypeError(f"{name}: expected ints, got {size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{name}: expected sizes >= 1, got {size!r}")
    return h, w


def _fits(img, h, w, name):
    H, W = img.shape[:2]
    if h > H or w > W:
        raise ValueError(f"{name}: a {h}x{w} crop does not fit in a {H}x{W} image")


def resize_shorter(img, size, resample=Image.BILINEAR):
    """Resize so that the shorter side is ``size``, keeping the aspect ratio.

    The longer side becomes ``round(long * size / short)``.  Pillow's resampling
    filters widen with the scale when shrinking, so this is anti-aliased.  An
    image whose shorter side already is ``size`` comes back unchanged (the same array).

    Parameters
    ----------
    img : numpy.ndarray
        uint8 (H, W, 3).
    size : int
    resample : int
        A Pillow filter (``Image.BILINEAR`` by default, as in Caffe's tools).

    Returns
    -------
    numpy.ndarray
        uint8 (size, W') or (H', size) by 3.
    """
    img = _image(img)
    size = _size2(size)[0]
    H, W = img.shape[:2]
    if min(H, W) == size:
        return img
    if H <= W:
        h, w = size, max(1, int(round(W * size / H)))
    else:
        h, w = max(1, int(round(H * size / W))), size
    return np.asarray(Image.fromarray(img).resize((w, h), resample), dtype=np.uint8)


def center_crop(img, size):
    """The central ``size`` crop: rows ``top = (H - h) // 2`` .. ``top + h``, columns likewise.

    When the margin is odd the extra pixel is left at the bottom / right.

    Parameters
    ----------
    img : numpy.ndarray
        (H, W, C).
    size : int or (h, w)

    Returns
    -------
    numpy.ndarray
        A view (h, w, C).
    """
    img = _image(img)
    h, w = _size2(size)
    _fits(img, h, w, "size")
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top:top + h, left:left + w]


def random_crop(img, size, rng):
    """A ``size`` crop at a uniformly random position (every top-left corner equally likely).

    Parameters
    ----------
    img : numpy.ndarray
        uint8 (H, W, 3).
    size : int or (h, w)
    rng : numpy.random.Generator

    Returns
    -------
    numpy.ndarray
        A view (h, w, 3) at ``top ~ U{0 .. H - h}``, ``left ~ U{0 .. W - w}``.
    """
    img = _image(img)
    h, w = _size2(size)
    _fits(img, h, w, "size")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, got {type(rng).__name__}")
    top = int(rng.integers(0, img.shape[0] - h + 1))
    left = int(rng.integers(0, img.shape[1] - w + 1))
    return img[top:top + h, left:left + w]


_PAD_MODES = ("reflect", "edge", "constant", "symmetric")


def _pad_mode(mode):
    if mode not in _PAD_MODES:
        raise ValueError(f"mode: expected one of {', '.join(_PAD_MODES)}, got {mode!r}")
    return mode


def pad(img, width, mode="reflect"):
    """Pad ``width`` pixels on every side, with a ``numpy.pad`` mode.

    Modes: ``reflect`` (mirror without repeating the edge: ``c b | a b c``),
    ``symmetric`` (with it: ``a | a b c``), ``edge`` (repeat the edge) and
    ``constant`` (zeros).  Padding then taking a random crop of the original
    size translates the image by up to ``width`` pixels.

    Returns
    -------
    numpy.ndarray
        uint8 (H + 2 width, W + 2 width, 3); the same array when ``width == 0``.
    """
    img = _image(img)
    width = int_arg("width", width, 0)
    _pad_mode(mode)
    if width == 0:
        return img
    if mode == "reflect" and width >= min(img.shape[:2]):
        raise ValueError(f"width: reflect padding needs width < {min(img.shape[:2])}, got {width}")
    return np.pad(img, ((width, width), (width, width), (0, 0)), mode=mode)


def hflip(img):
    """Mirror left-right: ``out[:, j] = img[:, W - 1 - j]`` (a contiguous copy)."""
    return np.ascontiguousarray(_image(img)[:, ::-1])


def ten_crop(img, size):
    """The ten test crops: four corners and the centre, then the mirror of each.

    Order: top-left, top-right, bottom-left, bottom-right, centre, then
    ``hflip`` of those five in the same order (crop ``k + 5`` is the mirror of
    crop ``k``, as in Caffe's ``oversample``; torchvision's ``TenCrop`` instead
    crops the mirrored image, which swaps the left and right corners).

    Parameters
    ----------
    img : numpy.ndarray
        uint8 (H, W, 3).
    size : int or (h, w)

    Returns
    -------
    numpy.ndarray
        uint8 (10, h, w, 3).
    """
    img = _image(img)
    h, w = _size2(size)
    _fits(img, h, w, "size")
    H, W = img.shape[:2]
    five = [img[:h, :w], img[:h, W - w:], img[H - h:, :w], img[H - h:, W - w:], center_crop(img, (h, w))]
    crops = np.stack(five)
    return np.concatenate([crops, crops[:, :, ::-1]])


def mean_chw(mean, h, w):
    """Check a mean and bring it to a shape that broadcasts against (3, h, w)."""
    m = np.asarray(mean, dtype=np.float32)
    if m.shape == (3,):
        return m.reshape(3, 1, 1)
    if m.shape == (3, h, w):
        return m
    if m.shape == (h, w, 3):
        return m.transpose(2, 0, 1)
    raise ValueError(f"mean: expected shape (3,), (3, {h}, {w}) or ({h}, {w}, 3), got {m.shape}")


def to_chw_float(img, mean=None):
    """uint8 HWC -> float32 CHW in [0, 1], minus the mean.

    ``x[c, i, j] = img[i, j, c] / 255 - mean[c]`` for a per-channel mean of shape
    (3,), or ``- mean[c, i, j]`` for a per-pixel mean of shape (3, H, W) (or
    (H, W, 3), transposed; a (3, 3, 3) mean is taken as (3, H, W)).  The mean is
    in the same [0, 1] units (as :func:`compute_mean` returns it).

    Returns
    -------
    numpy.ndarray
        float32 (3, H, W), C-contiguous.
    """
    img = _image(img)
    x = img.transpose(2, 0, 1).astype(np.float32, order="C")
    x /= np.float32(255.0)
    if mean is not None:
        x -= mean_chw(mean, img.shape[0], img.shape[1])
    return x


def compute_mean(dataset, per_pixel=False, size=None, skip_bad=None):
    """The mean image of a dataset in [0, 1] units, streaming one image at a time.

    Parameters
    ----------
    dataset : sequence of (image, label)
        Images uint8 (H, W, 3).
    per_pixel : bool
        False: the mean of each channel over every pixel of every image,
        ``mean[c] = sum_n sum_ij img_n[i, j, c] / (255 * total pixels)``, shape (3,).
        True: ``mean[c, i, j] = sum_n img_n[i, j, c] / (255 N)``, shape (3, h, w);
        the images must then share one shape (or use ``size``).
    size : int, optional
        Resize the shorter side to ``size`` and take the centre ``size`` crop first
        (the preprocessing of :func:`eval_transform`).
    skip_bad : bool, optional
        Skip unreadable images with a warning; by default the dataset's own
        ``skip_bad`` attribute (False if it has none).

    Returns
    -------
    numpy.ndarray
        float32 (3,) or (3, h, w).
    """
    skip = resolve_skip_bad(dataset, skip_bad)
    total, count, shape = None, 0, None
    for i, img, _ in items(dataset, range(len(dataset)), skip):
        img = _image(img, f"dataset[{i}] image")
        if size is not None:
            img = center_crop(resize_shorter(img, size), size)
        if per_pixel:
            if shape is None:
                shape, total = img.shape, np.zeros(img.shape, dtype=np.float64)
            elif img.shape != shape:
                raise ValueError(f"dataset[{i}]: per-pixel mean needs images of one shape; got {img.shape} "
                                 f"after {shape} (pass size=... to resize and crop)")
            total += img
            count += 1
        else:
            s = img.reshape(-1, 3).sum(axis=0, dtype=np.float64)
            total = s if total is None else total + s
            count += img.shape[0] * img.shape[1]
    if count == 0:
        raise DataError("compute_mean: the dataset has no (readable) images")
    mean = total / (255.0 * count)
    return (mean.transpose(2, 0, 1) if per_pixel else mean).astype(np.float32)


class _Mean:
    """A mean to subtract, placed for the crops of one transform.

    A per-channel mean (3,) broadcasts.  A per-pixel mean is either the size of
    the square ``size`` x ``size`` region (the paper's mean image: each crop
    subtracts the part of the mean under it, as Caffe does) or the size of the
    crop (subtracted as is).
    """

    def __init__(self, mean, size, crop, pad_width=0, pad_mode="reflect"):
        self.kind, self.m = "none", None
        if mean is None:
            return
        m = np.asarray(mean, dtype=np.float32)
        h, w = crop
        if m.shape == (3,):
            self.kind, self.m = "channel", m.reshape(3, 1, 1)
            return
        if m.ndim == 3 and m.shape[0] != 3 and m.shape[2] == 3:
            m = m.transpose(2, 0, 1)
        if m.shape == (3, size, size):
            self.kind = "region"
            if pad_width:
                m = np.pad(m, ((0, 0), (pad_width, pad_width), (pad_width, pad_width)),
                           mode=pad_mode)
            self.m = np.ascontiguousarray(m)
        elif m.shape == (3, h, w):
            self.kind, self.m = "crop", np.ascontiguousarray(m)
        else:
            raise ValueError(f"mean: expected shape (3,), the region's (3, {size}, {size}) or the crop's "
                             f"(3, {h}, {w}) (or HWC), got {np.shape(mean)}")

    def subtract(self, x, top, left):
        """x float32 (3, h, w), the crop at (top, left) of the (padded) region; in place."""
        if self.kind == "region":
            x -= self.m[:, top:top + x.shape[1], left:left + x.shape[2]]
        elif self.kind != "none":
            x -= self.m
        return x


def _transform_args(size, crop):
    size = _size2(size, "size")[0]
    crop = _size2(crop, "crop")
    if crop[0] > size or crop[1] > size:
        raise ValueError(f"crop: a {crop[0]}x{crop[1]} crop does not fit in the {size}x{size} region")
    return size, crop


def _region(img, size):
    """The paper's first step: shorter side to ``size``, then the central size x size square."""
    return center_crop(resize_shorter(img, size), size)


def train_transform(size, crop, mean=None, rng=None, flip=True, pad_width=0, pad_mode="reflect"):
    """The training preprocessing as a function ``img uint8 HWC -> float32 (3, h, w)``.

    The paper's steps: resize the shorter side to ``size`` and keep the central
    ``size`` x ``size`` region; (optionally) pad it by ``pad_width`` pixels on
    each side (``pad_mode``, see :func:`pad`); take a ``crop`` at a uniformly
    random position; scale to [0, 1] and subtract the mean under the crop;
    mirror with probability 1/2 if ``flip``.  The paper: ``size=256, crop=224``.
    For 64x64 synthetic images either ``size=64, crop=56`` (translation by up
    to 8 pixels; centre crop 56 at test) or ``size=64, crop=64, pad_width=4``
    (translation by up to 4 pixels; the whole image at test).

    Parameters
    ----------
    size : int
    crop : int or (h, w)
    mean : array_like, optional
        Per-channel (3,), or per-pixel over the region, (3, size, size) (the
        crop subtracts the part of the mean under it, padded like the image), or
        per-pixel of the crop's size (3, h, w); HWC layouts are accepted too.
        In [0, 1] units, as :func:`compute_mean` gives it (use ``size=size``).
    rng : numpy.random.Generator or int, optional
        Drives the crops and flips (``np.random.default_rng(rng)``, made once).
    flip : bool
    pad_width : int
    pad_mode : {"reflect", "edge", "constant", "symmetric"}
    """
    size, (h, w) = _transform_args(size, crop)
    pad_width = int_arg("pad_width", pad_width, 0)
    _pad_mode(pad_mode)
    mean = _Mean(mean, size, (h, w), pad_width, pad_mode)
    rng = np.random.default_rng(rng)

    def transform(img):
        region = pad(_region(img, size), pad_width, pad_mode)
        top = int(rng.integers(0, region.shape[0] - h + 1))
        left = int(rng.integers(0, region.shape[1] - w + 1))
        x = mean.subtract(to_chw_float(region[top:top + h, left:left + w]), top, left)
        if flip and rng.random() < 0.5:
            x = np.ascontiguousarray(x[:, :, ::-1])
        return x

    return transform


def eval_transform(size, crop, mean=None):
    """The test preprocessing: the central ``size`` region, its centre ``crop``, to float minus the mean.

    Returns a function ``img uint8 HWC -> float32 (3, h, w)``; ``mean`` as in
    :func:`train_transform`.
    """
    size, (h, w) = _transform_args(size, crop)
    mean = _Mean(mean, size, (h, w))
    top, left = (size - h) // 2, (size - w) // 2

    def transform(img):
        region = _region(img, size)
        return mean.subtract(to_chw_float(region[top:top + h, left:left + w]), top, left)

    return transform


# --------------------------------------------------------------------------- batches
class Batches:
    """Iterate over a dataset in batches ``(x float32 (B, 3, h, w), labels int64 (B,))``.

    Only the items of the batch being built are held: each item is fetched,
    transformed and written into the batch array, so a dataset on disk (or
    drawn on demand) is never loaded whole.  Each pass (``iter``) draws a new
    order from ``rng`` when ``shuffle``; a seeded ``rng`` makes the sequence of
    passes reproducible.

    Parameters
    ----------
    dataset : sequence of (image, label)
    batch_size : int
    transform : callable, optional
        ``image -> float32 (3, h, w)``, the same shape for every item;
        :func:`to_chw_float` (no mean) by default.
    shuffle : bool
    rng : numpy.random.Generator or int, optional
        The generator for the shuffles (``np.random.default_rng(rng)``, made
        once, so successive passes differ).
    drop_last : bool
        Drop a last batch smaller than ``batch_size``.
    skip_bad : bool, optional
        Skip items that raise :class:`DataError` with a warning naming the file,
        and fill the batch from the following items; by default the dataset's
        ``skip_bad`` (False if it has none).  With skipping, a pass may give
        fewer batches than ``len()`` says.
    """

    def __init__(self, dataset, batch_size, transform=None, shuffle=False, rng=None, drop_last=False,
                 skip_bad=None):
        if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
            raise TypeError(f"dataset: expected a sequence of (image, label), got {type(dataset).__name__}")
        self.batch_size = int_arg("batch_size", batch_size, 1)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform: expected a callable, got {type(transform).__name__}")
        self.dataset = dataset
        self.transform = to_chw_float if transform is None else transform
        self.shuffle = bool(shuffle)
        self.rng = np.random.default_rng(rng)
        self.drop_last = bool(drop_last)
        self.skip_bad = resolve_skip_bad(dataset, skip_bad)

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _item(self, i, image, label, ref_shape):
        x = self.transform(image)
        if not isinstance(x, np.ndarray) or x.ndim != 3:
            raise ValueError(f"transform of item {i}: expected an array (C, h, w), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if ref_shape is not None and x.shape != ref_shape:
            raise ValueError(f"transform of item {i}: shape {x.shape} differs from {ref_shape} "
                             f"of the batch (use a transform that crops to one size)")
        return x, int(label)

    def __iter__(self):
        n = len(self.dataset)
        order = self.rng.permutation(n) if self.shuffle else np.arange(n)
        B = self.batch_size
        x = y = shape = None
        k = 0
        for i, image, label in items(self.dataset, order, self.skip_bad):
            xi, yi = self._item(i, image, label, shape)
            if x is None:
                shape = xi.shape
                x = np.empty((B,) + shape, dtype=np.float32)
                y = np.empty(B, dtype=np.int64)
            x[k], y[k] = xi, yi
            k += 1
            if k == B:
                yield x, y
                x = y = None
                k = 0
        if k and not self.drop_last:
            yield x[:k], y[:k]


def batches(dataset, batch_size, transform=None, shuffle=False, rng=None, drop_last=False, skip_bad=None):
    """``Batches(...)``: an iterable of ``(x float32 (B, 3, h, w), labels int64 (B,))`` with ``len``.

    See :class:`Batches` for the parameters.
    """
    return Batches(dataset, batch_size, transform, shuffle, rng, drop_last, skip_bad)
