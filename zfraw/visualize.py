"""Pictures: deconvnet projections, top-9 grids, layer-1 filters and the architecture table.

Everything here renders with Pillow from plain NumPy arrays (CuPy results are
brought to the host with :func:`zfraw.to_host` first), and follows the figures
of Zeiler & Fergus 2014:

- a *projection* (3, H, W) is shown contrast-normalized around grey: 0 is
  grey 128, +s and -s are equally far above and below it
  (:func:`projection_to_image`);
- a *top-9 figure* (the paper's fig. 2) shows, for one feature map of one
  layer, the 9 dataset images that excite it most: on the left the projection
  of each image's strongest activation alone, on the right the image patch
  that activation sees (its receptive field), both cropped to the same box so
  that they line up (:func:`top9`; the search itself, :func:`top_activations` and
  :func:`scan_layers`, lives in :mod:`zfraw.analysis.topk` and is re-exported here);
- the layer-1 filters as a montage (:func:`filters_image`, fig. 6);
- a plain-text architecture table with output shapes, parameter counts and
  receptive fields (:func:`architecture_table`, :func:`format_table`).

>>> from zfraw import models, visualize
>>> net = models.zfnet()
>>> rows = visualize.architecture_table(net)
>>> rows[0]["output_shape"], rows[0]["rf_size"]
((96, 110, 110), 7)
"""
from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from zfraw import data as _data
from zfraw import deconvnet
from zfraw._args import int_arg, shape_arg
from zfraw.analysis.topk import (CHOOSE_MODES, Activation, choose_features, scan_layers,  # noqa: F401 (re-exported)
                                 top_activations)
from zfraw.backend import get_backend, to_host
from zfraw.nn import Conv2d, Flatten, Linear, Sequential

__all__ = [
    "Activation", "projection_to_image", "image_to_uint8", "grid", "upscale", "caption",
    "top_activations", "scan_layers", "choose_features", "top9", "project_image", "beside_input",
    "filters_image", "architecture_table", "format_table", "format_cell", "CHOOSE_MODES",
]

GREY = 128


# --------------------------------------------------------------------------- checks
def _host(a, name, ndim=None):
    """``a`` as a NumPy array (from CuPy too), with an optional ndim check."""
    a = to_host(a)
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if ndim is not None and a.ndim not in (ndim if isinstance(ndim, tuple) else (ndim,)):
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {a.shape}")
    return a


def _check_net(net):
    if not isinstance(net, Sequential):
        raise TypeError(f"net: expected a zfraw.nn.Sequential, got {type(net).__name__}")
    return net


# --------------------------------------------------------------------------- pixels
def projection_to_image(p, scale=None):
    """A projection (3, H, W) as an RGB picture, contrast-normalized around grey.

    ``pixel = 128 + round(127 * clip(p / scale, -1, 1))``: zero maps to grey 128
    and the map is odd-symmetric (``p`` and ``-p`` land equally far above and
    below grey).  ``scale`` defaults to ``max |p|`` (so the strongest pixel is at
    1 or 255); give one shared value to put several projections on one scale.
    An all-zero projection is plain grey.

    Parameters
    ----------
    p : array (3, H, W) (or (H, W) for one channel)
    scale : float, optional

    Returns
    -------
    numpy.ndarray
        uint8 (H, W, 3) (or (H, W)).
    """
    p = _host(p, "p", (2, 3)).astype(np.float64)
    if scale is None:
        scale = float(np.abs(p).max()) if p.size else 0.0
    scale = float(scale)
    if not scale >= 0:
        raise ValueError(f"scale: expected a non-negative number, got {scale}")
    t = np.zeros_like(p) if scale == 0 else np.clip(p / scale, -1.0, 1.0)
    out = (GREY + np.rint(127.0 * t)).astype(np.uint8)
    return out.transpose(1, 2, 0) if out.ndim == 3 else out


def image_to_uint8(x, mean=None):
    """A preprocessed image back to uint8 HWC: ``clip(round((x + mean) * 255), 0, 255)``.

    x float (3, H, W) in the [0, 1] units of :func:`zfraw.data.to_chw_float` minus
    ``mean`` (per channel (3,), or per pixel (3, H, W) / (H, W, 3); None: no mean).
    """
    x = _host(x, "x", 3).astype(np.float64)
    if x.shape[0] != 3:
        raise ValueError(f"x: expected 3 channels (3, H, W), got shape {x.shape}")
    if mean is not None:
        x = x + _data.mean_chw(_host(mean, "mean"), x.shape[1], x.shape[2])
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def _as_rgb_array(img, name="image"):
    """PIL image or uint8 array (H, W) / (H, W, 3) -> uint8 (H, W, 3)."""
    if isinstance(img, Image.Image):
        return np.asarray(img.convert("RGB"))
    a = _host(img, name, (2, 3))
    if a.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8 pixels, got {a.dtype}")
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] != 3:
        raise ValueError(f"{name}: expected (H, W, 3), got shape {a.shape}")
    return a


def upscale(img, factor):
    """Nearest-neighbour enlargement by an integer ``factor`` (each pixel becomes factor x factor).

    Takes and returns the same kind: a PIL image, or an array (H, W[, C]) ->
    (H*factor, W*factor[, C]).
    """
    factor = int_arg("factor", factor, 1)
    if isinstance(img, Image.Image):
        return img.resize((img.width * factor, img.height * factor), Image.NEAREST)
    a = _host(img, "img", (2, 3))
    return np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)


def grid(images, ncols, pad=2, background=(255, 255, 255)):
    """Lay images out in rows of ``ncols`` cells, each image centred in its cell.

    Every cell is as large as the largest image (cell_h x cell_w); cells are
    separated, and surrounded, by ``pad`` pixels of ``background``:
    width = ncols*cell_w + (ncols + 1)*pad, height = nrows*cell_h + (nrows + 1)*pad
    with nrows = ceil(n / ncols).

    Parameters
    ----------
    images : sequence of uint8 (H, W, 3) / (H, W) arrays or PIL images
    ncols : int
    pad : int
    background : RGB tuple

    Returns
    -------
    PIL.Image.Image (RGB)
    """
    arrays = [_as_rgb_array(im, f"images[{i}]") for i, im in enumerate(images)]
    ncols = int_arg("ncols", ncols, 1)
    pad = int_arg("pad", pad, 0)
    if not arrays:
        raise ValueError("images: expected at least one image")
    ncols = min(ncols, len(arrays))
    nrows = math.ceil(len(arrays) / ncols)
    ch = max(a.shape[0] for a in arrays)
    cw = max(a.shape[1] for a in arrays)
    canvas = Image.new("RGB", (ncols * cw + (ncols + 1) * pad, nrows * ch + (nrows + 1) * pad),
                       tuple(int(c) for c in background))
    for i, a in enumerate(arrays):
        r, c = divmod(i, ncols)
        top = pad + r * (ch + pad) + (ch - a.shape[0]) // 2
        left = pad + c * (cw + pad) + (cw - a.shape[1]) // 2
        canvas.paste(Image.fromarray(a), (left, top))
    return canvas


def _font(size=12):
    """ImageDraw's default font (scalable where Pillow has FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def caption(img, text, size=12, background=(255, 255, 255), colour=(0, 0, 0)):
    """``img`` (PIL) with ``text`` lines drawn above it in the default font; returns a new image."""
    font = _font(size)
    lines = str(text).split("\n")
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [probe.textbbox((0, 0), line, font=font) for line in lines]
    line_h = max(b[3] for b in boxes) + 3
    width = max([img.width] + [b[2] + 8 for b in boxes])
    out = Image.new("RGB", (width, img.height + line_h * len(lines) + 4), background)
    draw = ImageDraw.Draw(out)
    for k, line in enumerate(lines):
        draw.text((4, 2 + k * line_h), line, fill=colour, font=font)
    out.paste(img, ((width - img.width) // 2, line_h * len(lines) + 4))
    return out


def _beside(left, right, gap=12, background=(255, 255, 255)):
    """Two PIL images side by side, vertically centred."""
    h = max(left.height, right.height)
    out = Image.new("RGB", (left.width + gap + right.width, h), background)
    out.paste(left, (0, (h - left.height) // 2))
    out.paste(right, (left.width + gap, (h - right.height) // 2))
    return out


# --------------------------------------------------------------------------- top-9 figures
def _crop(a, box):
    """a (..., H, W) cropped to box (top, left, bottom, right)."""
    t, l, b, r = box
    return a[..., t:b, l:r]


def _projections(net, xs, layer, feats, rule, batch_size):
    """Deconvnet projections of each image's strongest activation of its feature, in batches.

    xs (N, C, H, W) host, feats (N,) -> (pixels (N, C, H, W) host, locations (N, 2), values (N,)).
    """
    xp = get_backend().xp
    dtype = net.dtype
    pix, locs, vals = [], [], []
    for s in range(0, len(xs), batch_size):
        p, info = deconvnet.project(net, xp.asarray(xs[s:s + batch_size], dtype=dtype), layer,
                                    feature=np.asarray(feats[s:s + batch_size], dtype=np.int64),
                                    rule=rule, keep="max", return_info=True)
        pix.append(np.asarray(to_host(p), dtype=np.float64))
        locs.append(info["location"])
        vals.append(np.asarray(to_host(info["value"]), dtype=np.float64))
    net.clear()
    return np.concatenate(pix), np.concatenate(locs), np.concatenate(vals)


def _factor(side, cell):
    """The nearest-neighbour factor that brings a patch of ``side`` pixels near ``cell`` pixels."""
    return max(1, int(round(cell / max(side, 1))))


def top9(net, dataset, layer, features, transform, mean, k=9, batch_size=64, progress=False, cell=96,
         rule="deconvnet", records=None, ncols=3, n_features=4, how="top", limit=None, title=True):
    """Fig. 2 of Zeiler & Fergus for each feature: top-k projections beside their image patches.

    For each feature, its k strongest activations over the dataset are found
    with :func:`top_activations` (or taken from ``records``); each is projected
    *alone* to pixel space (:func:`zfraw.deconvnet.project` with
    ``keep="max"``, one image at a time, batched); the projection and the
    preprocessed input are cropped to the activation's receptive field
    (:func:`zfraw.deconvnet.patch_box`), so the two grids line up.  The
    projections of one feature share one contrast scale (max |p| over its k
    crops).  Crops are enlarged by nearest neighbour to about ``cell`` pixels.

    Parameters
    ----------
    net, dataset, layer, features, k, batch_size, progress, limit
        As in :func:`top_activations` (``features=None`` chooses automatically).
    transform : callable
        The preprocessing ``image -> float32 (3, h, w)`` the activations use.
    mean : array_like or None
        The mean ``transform`` subtracts (for :func:`image_to_uint8`).
    records : dict, optional
        feature -> list of :class:`Activation`, from an earlier scan.
    title : bool
        Draw a caption (layer, feature, strongest activation) above the figure.

    Returns
    -------
    OrderedDict
        feature -> PIL.Image: a ``ncols``-column grid of projections, then a
        gap, then the grid of the matching patches.
    """
    net = _check_net(net)
    net.check_layer(layer)
    if records is None:
        records = top_activations(net, dataset, layer, features, k, batch_size, transform, progress,
                                  n_features=n_features, how=how, limit=limit)
    jobs = [(f, r) for f, recs in records.items() for r in recs[:k]]
    figures = OrderedDict()
    if not jobs:
        return figures
    xs = np.stack([_data.load_item(dataset, r.index, transform) for _, r in jobs])
    feats = np.array([f for f, _ in jobs], dtype=np.int64)
    pix, locs, _ = _projections(net, xs, layer, feats, rule, batch_size)
    shape = xs.shape[-2:]
    crops = {}
    for j, (f, r) in enumerate(jobs):
        box = deconvnet.patch_box(net, layer, locs[j][0], locs[j][1], shape)
        crops.setdefault(f, []).append((_crop(pix[j], box), image_to_uint8(_crop(xs[j], box), mean), r))
    for f, items in crops.items():
        scale = max(float(np.abs(p).max()) for p, _, _ in items)
        side = max(max(p.shape[-2:]) for p, _, _ in items)
        factor = _factor(side, cell)
        proj = grid([upscale(projection_to_image(p, scale), factor) for p, _, _ in items], ncols)
        patches = grid([upscale(im, factor) for _, im, _ in items], ncols)
        fig = _beside(proj, patches)
        if title:
            fig = caption(fig, f"{layer} feature {f}: top {len(items)} (max {items[0][2].value:.3g})")
        figures[f] = fig
    return figures


# --------------------------------------------------------------------------- single projections
def project_image(net, x, layer, feature=None, rule="deconvnet", mean=None, factor=None, box=True,
                  keep="max", return_info=False):
    """The input image beside the deconvnet projection of one of its activations.

    x (3, H, W) or (1, 3, H, W), preprocessed as the network expects; ``feature``
    None picks the strongest feature map; ``keep="max"`` projects its single
    strongest activation (``"map"``: the whole feature map).  With ``box`` the
    activation's receptive field is outlined on the input.  Both pictures are
    full size (enlarged by ``factor``, default: to about 384 pixels), under a
    caption with the layer, feature, location (row, col) and activation value.
    A feature whose best activation is <= 0 does not fire on the image: the
    caption says so (its projection shows nothing the feature detects).

    Returns
    -------
    PIL.Image.Image, or (PIL.Image.Image, dict) with ``return_info``
        The dict holds ``feature`` (int), ``location`` (row, col), ``value``
        (float) and ``fires`` (value > 0).
    """
    net = _check_net(net)
    net.check_layer(layer)
    xh = _host(x, "x", (3, 4))
    if xh.ndim == 3:
        xh = xh[None]
    if xh.shape[0] != 1:
        raise ValueError(f"x: expected one image (3, H, W) or (1, 3, H, W), got shape {xh.shape}")
    xp = get_backend().xp
    p, info = deconvnet.project(net, xp.asarray(xh, dtype=net.dtype), layer, feature=feature, rule=rule,
                                keep=keep, return_info=True)
    net.clear()
    p = np.asarray(to_host(p))[0]
    h, w = xh.shape[-2:]
    factor = _factor(max(h, w), 384) if factor is None else int_arg("factor", factor, 1)
    image = Image.fromarray(upscale(image_to_uint8(xh[0], mean), factor))
    f, (row, col), value = int(info["feature"][0]), info["location"][0], float(info["value"][0])
    row, col = int(row), int(col)
    if box:
        t, l, b, r = deconvnet.patch_box(net, layer, row, col, (h, w))
        ImageDraw.Draw(image).rectangle([l * factor, t * factor, r * factor - 1, b * factor - 1],
                                        outline=(255, 0, 0), width=max(1, factor // 2))
    proj = Image.fromarray(upscale(projection_to_image(p), factor))
    where = "" if keep == "map" else f" at (row, col) = ({row}, {col})"
    text = f"{layer} feature {f}{where}: activation {value:.3g} ({rule})"
    if not value > 0:
        text += "\nthis feature does not fire on this image (activation <= 0): nothing here is what it detects"
    picture = caption(_beside(image, proj), text, size=max(12, 4 * factor))
    if return_info:
        return picture, dict(feature=f, location=(row, col), value=value, fires=bool(value > 0))
    return picture


def beside_input(picture, image, box, text, colour=(255, 0, 0)):
    """``picture`` with the full original ``image`` on its left, ``box`` outlined on it, under ``text``.

    For pictures of a preprocessed crop: ``image`` uint8 (H, W, 3) is the file
    as read, ``box`` (top, left, bottom, right) in its pixels the region the
    network saw.  The image is scaled to the height of ``picture``.
    """
    original = Image.fromarray(_as_rgb_array(image, "image"))
    scale = max(1e-6, (picture.height * 0.8) / original.height)
    shown = original.resize((max(1, round(original.width * scale)), max(1, round(original.height * scale))),
                            Image.NEAREST if scale >= 1 else Image.BILINEAR)
    t, l, b, r = (v * scale for v in box)
    ImageDraw.Draw(shown).rectangle([l, t, r - 1, b - 1], outline=colour, width=max(2, round(2 * scale)))
    return _beside(caption(shown, text, size=max(12, picture.height // 22)), picture)


# --------------------------------------------------------------------------- filters
def _first_conv(net):
    for lname, layer in net:
        if isinstance(layer, Conv2d):
            return layer.params["w"]
    raise ValueError("net: it has no convolution layer")


def filters_image(w, ncols=None, scale=6, normalize="filter", pad=1, background=(255, 255, 255)):
    """The first layer's filters as a montage (fig. 6 of the paper).

    w (F, 3, k, k) (or a Sequential: its first conv layer's weights).  Each filter
    is shown with :func:`projection_to_image` (0 -> grey), normalized by its own
    max |w| (``normalize="filter"``, as the paper does) or by one max over all
    filters (``"shared"``, which shows their relative strength), enlarged
    ``scale`` times by nearest neighbour, in ``ncols`` columns (default
    ceil(sqrt(F))): width = ncols*k*scale + (ncols + 1)*pad.

    Returns
    -------
    PIL.Image.Image
    """
    if isinstance(w, Sequential):
        w = _first_conv(w)
    w = _host(w, "w", 4).astype(np.float64)
    if w.shape[1] != 3:
        raise ValueError(f"w: expected (F, 3, k, k) filters of RGB input, got shape {w.shape}")
    if normalize not in ("filter", "shared"):
        raise ValueError(f"normalize: expected 'filter' or 'shared', got {normalize!r}")
    scale = int_arg("scale", scale, 1)
    ncols = math.ceil(math.sqrt(len(w))) if ncols is None else int_arg("ncols", ncols, 1)
    shared = float(np.abs(w).max())
    tiles = [upscale(projection_to_image(f, shared if normalize == "shared" else None), scale) for f in w]
    return grid(tiles, ncols, pad=pad, background=background)


# --------------------------------------------------------------------------- architecture
def _describe(layer):
    """A short configuration string: '96 7x7/2 pad 1', '3x3/2 ceil', '4096' ..."""
    cfg = layer.config()
    if layer.geometry is not None:  # conv or pooling
        (kh, kw), (sh, sw), (ph, pw) = layer.geometry
        sides = getattr(layer, "padding", (ph, ph, pw, pw))
        pad = f" pad {ph}" if ph else ""
        if len(set(sides)) > 1:  # per side: (top, bottom, left, right)
            pad = " pad " + ",".join(map(str, sides))
        if isinstance(layer, Conv2d):
            return f"{layer.out_channels} {kh}x{kw}/{sh}{pad}" + (f" groups {layer.groups}" if layer.groups > 1 else "")
        return f"{kh}x{kw}/{sh}{pad}" + (" ceil" if cfg.get("ceil_mode") else "")
    if isinstance(layer, Linear):
        return str(layer.out_features)
    if "p" in cfg:
        return f"p={cfg['p']:g}"
    if "size" in cfg:
        return f"size {cfg['size']}"
    return ""


def architecture_table(net, input_shape=None):
    """One row per layer: what it is, what it outputs, how many parameters, what it sees.

    Returns a list of dicts with keys ``name``, ``type``, ``config`` (e.g.
    ``"96 7x7/2 pad 1"``), ``output_shape`` (one image, e.g. (96, 110, 110)),
    ``params`` (int), ``rf_size`` and ``rf_stride`` (the receptive field of one
    output unit in input pixels and the step between neighbouring units; the
    input side for fully connected layers) and ``receptive_field`` (a string:
    ``"7/2"``, or ``"whole image"`` from the first fully connected layer on).
    """
    net = _check_net(net)
    shape = input_shape if input_shape is not None else net.input_shape
    if shape is None:
        raise ValueError("input_shape: needed (the network does not record one)")
    shape = shape_arg("input_shape", shape, (3,))
    saved = net.input_shape
    net.input_shape = shape  # receptive_field of fc layers reads the input side from here
    try:
        summary = net.summary(shape)
        rows, whole = [], False
        for lname, ltype, out_shape, params in summary:
            layer = net[lname]
            whole = whole or isinstance(layer, (Flatten, Linear))
            rf = deconvnet.receptive_field(net, lname)
            rows.append(dict(name=lname, type=ltype, config=_describe(layer), output_shape=tuple(out_shape),
                             params=int(params), rf_size=int(rf.size), rf_stride=int(rf.stride),
                             receptive_field="whole image" if whole else f"{rf.size}/{rf.stride}"))
    finally:
        net.input_shape = saved
    return rows


TABLE_COLUMNS = (("name", "layer"), ("type", "type"), ("config", "config"), ("output_shape", "output"),
                 ("params", "parameters"), ("receptive_field", "receptive field (size/stride)"))


def format_cell(key, value):
    """One value of an :func:`architecture_table` row as table text (shapes as 96x55x55, counts with commas)."""
    if key == "output_shape":
        return "x".join(str(s) for s in value)
    if key == "params":
        return f"{value:,}"
    return str(value)


def format_table(rows):
    """The rows of :func:`architecture_table` as aligned plain text, with a total line."""
    header = [title for _, title in TABLE_COLUMNS]
    body = [[format_cell(key, row[key]) for key, _ in TABLE_COLUMNS] for row in rows]
    total = sum(int(row["params"]) for row in rows)
    footer = ["total", "", "", "", f"{total:,}", ""]
    table = [header] + body + [footer]
    widths = [max(len(r[j]) for r in table) for j in range(len(header))]
    right = {"params"}

    def line(cells):
        parts = [c.rjust(wd) if key in right else c.ljust(wd)
                 for c, wd, (key, _) in zip(cells, widths, TABLE_COLUMNS)]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * wd for wd in widths)
    return "\n".join([line(header), rule] + [line(r) for r in body] + [rule, line(footer)])
