"""Stateless convnet ops: the functional contract of zfraw.

Layouts are NCHW; conv weights are (F, C // groups, kh, kw); dtypes float32
(default) or float64, anything else is a ``TypeError``.  Convolution is
cross-correlation, as in Caffe and PyTorch.  Each op checks its arguments,
then runs the active backend's kernel (see :mod:`zfraw.backend`), so the same
code runs on NumPy and on CuPy arrays.

Convolution is im2col followed by one GEMM per group (BLAS / cuBLAS).  The
column buffer of a whole batch can be huge, so it is built for a *tile* at a
time -- several images side by side, or for a large plane a band of output
rows -- under a byte budget (:func:`zfraw.set_workspace_bytes`), with enough
columns for every GEMM thread (:func:`conv_tiles`).  A tile's columns are laid
out (C*kh*kw, images*Ho*Wo) (the ``im2col_tile`` kernel), so each group makes
*one* GEMM for the whole tile, whose result goes back to NCHW in the pass that
adds the bias.  The deconvolution is the transposed convolution ``C^T``: GEMM
with the transposed filters, then ``col2im``, tile by tile.
:func:`conv_matrix` builds the explicit sparse ``C`` for teaching and testing.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from zfraw import backend as _backend
from zfraw._args import int_arg as _int, pair_arg as _pair, shape_arg as _shape

__all__ = [
    "im2col", "col2im", "conv2d", "conv2d_backward", "conv_transpose2d", "conv_matrix",
    "conv_output_size", "pool_output_size", "pad_sides", "pool_padding", "pad2d", "crop2d",
    "max_pool2d", "max_unpool2d", "relu", "relu_backward", "RELU_RULES",
    "local_response_norm", "local_response_norm_backward",
    "linear", "linear_backward", "dropout", "softmax", "cross_entropy",
]

RELU_RULES = ("backprop", "deconvnet", "guided")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# ============================================================== argument checks

def _array(name, a, ndim=None, float_only=True):
    """Check that ``a`` is an array of the active backend, of float dtype and ``ndim`` dims."""
    xp = _backend.get_backend().xp
    if not isinstance(a, xp.ndarray):
        kind = type(a).__module__.split(".")[0] + "." + type(a).__name__
        if isinstance(a, np.generic):  # a NumPy scalar, e.g. np.float32(1.0): not an array of another backend
            raise TypeError(f"{name} must be an array ({xp.__name__}.ndarray), got the NumPy scalar {kind} {a!r}; "
                            f"make it an array of the right shape")
        if hasattr(a, "shape") and hasattr(a, "dtype"):
            raise TypeError(
                f"{name} is a {kind} but the active backend {_backend.get_backend().name!r} works on "
                f"{xp.__name__}.ndarray; move it with zfraw.to_device({name}) or zfraw.to_host({name})"
            )
        raise TypeError(f"{name} must be an array ({xp.__name__}.ndarray), got {kind}")
    if float_only and a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension{'s' if ndim != 1 else ''}, got {a.ndim} (shape {tuple(a.shape)})")
    return a if a.flags.c_contiguous else xp.ascontiguousarray(a)  # (ascontiguousarray makes 0-d 1-d)


def _same_dtype(ref_name, ref, name, a):
    if a.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {a.dtype} but {ref_name} has {ref.dtype}; cast one of them")


def _spatial_shape(name, shape):
    """(H, W) from a shape given as (H, W), (C, H, W) or (N, C, H, W) of ints >= 1."""
    return _shape(name, shape, (2, 3, 4))[-2:]


def conv_output_size(size, k, stride, pad, name="input"):
    """floor((size + before + after - k) / stride) + 1, or a ValueError when the window does not fit.

    ``pad`` is an int (both sides: floor((size + 2 pad - k) / stride) + 1) or a
    pair (before, after), e.g. (top, bottom) for the height.
    """
    if isinstance(pad, numbers.Integral):
        padded, pads = size + 2 * pad, f"2*{pad}"
    else:
        before, after = int(pad[0]), int(pad[1])
        padded, pads = size + before + after, f"{before}+{after}"
    if padded < k:
        raise ValueError(f"window of {k} is larger than the padded {name} ({size} + {pads} = {padded})")
    return (padded - k) // stride + 1


def pool_output_size(size, k, stride, pad, ceil_mode, name="x"):
    """Pooled size as PyTorch computes it (``pooling_output_shape_pad_lr``).

    ``pad`` is an int (both sides) or a pair (before, after).  With n = size +
    before + after - k: floor(n / stride) + 1 windows, or with ``ceil_mode``
    ceil(n / stride) + 1, less a last window that would start at or beyond
    ``size + before`` (entirely in the after-padding).  In ceil mode n may be
    negative (a window larger than the padded input, as PyTorch accepts) as long
    as one window results; otherwise a ValueError.
    """
    before, after = (pad, pad) if isinstance(pad, numbers.Integral) else (int(pad[0]), int(pad[1]))
    padded = size + before + after
    span = padded - k
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    if out < 1:
        pads = f"{before}" if before == after else f"{before}+{after}"
        raise ValueError(
            f"pooling window of {k} is larger than the padded {name} ({size} + {pads} padding = {padded})"
            + ("" if ceil_mode else "; ceil_mode=True keeps a partial window")
        )
    return out


def pad_sides(pad, name="pad"):
    """A conv or pooling ``pad`` as (top, bottom, left, right).

    ``pad`` is an int (every side), a pair (ph, pw) (ph above and below, pw left
    and right) or four ints (top, bottom, left, right), each >= 0; anything else
    is a ValueError or TypeError naming ``name``.  (ONNX lists pads as [top,
    left, bottom, right]: pass ``(p[0], p[2], p[1], p[3])``.)
    """
    if isinstance(pad, (tuple, list)) and len(pad) == 4:
        return tuple(_int(name, v, 0) for v in pad)
    if isinstance(pad, (tuple, list)) and len(pad) != 2:
        raise ValueError(f"{name} must be an int, a pair (ph, pw) or (top, bottom, left, right), got {pad!r}")
    ph, pw = _pair(name, pad, 0)
    return ph, ph, pw, pw


#: the name :class:`zfraw.nn.MaxPool2d` and the pooling ops have used (the same function)
pool_padding = pad_sides


def pad2d(x, padding):
    """Zero-pad the planes of x: (N, C, H, W) -> (N, C, top + H + bottom, left + W + right).

    ``padding`` is (top, bottom, left, right) (or an int or (ph, pw), as
    :func:`pad_sides` reads it).  With every side 0 it returns ``x`` itself (no
    copy).  The adjoint of :func:`crop2d` with the same padding:
    ``<pad2d(x, p), y> == <x, crop2d(y, p)>``.
    """
    top, bottom, left, right = pad_sides(padding, "padding")
    checked = _array("x", x, 4)
    if not (top or bottom or left or right):
        return x
    n, c, h, w = checked.shape
    out = _backend.get_backend().xp.zeros((n, c, top + h + bottom, left + w + right), dtype=checked.dtype)
    out[:, :, top:top + h, left:left + w] = checked
    return out


def crop2d(y, padding):
    """Cut ``padding`` off the planes of y: (N, C, H, W) -> (N, C, H - top - bottom, W - left - right).

    ``padding`` as in :func:`pad2d`, whose adjoint this is (it drops what
    :func:`pad2d` added); the result is a contiguous copy, or ``y`` itself when
    every side is 0.  A crop that leaves no row or column is a ValueError.
    """
    top, bottom, left, right = pad_sides(padding, "padding")
    checked = _array("y", y, 4)
    if not (top or bottom or left or right):
        return y
    n, c, h, w = checked.shape
    if top + bottom >= h or left + right >= w:
        raise ValueError(f"padding (top, bottom, left, right) = {(top, bottom, left, right)} crops "
                         f"y of {h}x{w} to nothing")
    return _backend.get_backend().xp.ascontiguousarray(checked[:, :, top:h - bottom, left:w - right])


#: Each thread that runs a conv's GEMM gets at least this many columns of it
#: (when the batch has them and the workspace allows).  A BLAS packs the filter
#: matrix once per call and thread and then streams columns past it, and every
#: tile is two parallel regions (im2col, GEMM) whose fork and join cost a wake-up
#: per thread -- on a loaded or many-core machine up to a scheduler time slice:
#: with fewer, larger tiles these costs are spread over more work.  (Measured on
#: a heavily loaded 2-vCPU machine, ZFNet conv1 at batch 16, interleaved: 80
#: tiles of ~2400 columns 6.3 s, 16 tiles of one image 2.9 s, one tile 3.4 s;
#: bench/README.md.)  Not a cache size: no machine's cache is assumed.
GEMM_COLUMNS_PER_THREAD = 4096


def _even_cuts(total, parts):
    """[(start, stop)] cutting range(total) into ``parts`` runs whose sizes differ by at most one."""
    return [(k * total // parts, (k + 1) * total // parts) for k in range(parts)]


def conv_tiles(n, ho, wo, column_bytes):
    """Split a conv's output into tiles (n0, n1, r0, r1): images n0:n1, output rows r0:r1.

    ``column_bytes`` is the size of one im2col column (C*kh*kw*itemsize).  Each
    tile's columns, column_bytes * (n1 - n0) * (r1 - r0) * wo bytes, go through
    one GEMM per group.  A tile aims at T = threads * :data:`GEMM_COLUMNS_PER_THREAD`
    columns (the backend's ``Backend.threads``; on a GPU, T is everything that
    fits) and never exceeds the workspace budget (:func:`zfraw.workspace_bytes`):

    * a plane of at most T positions whose columns fit: tiles of whole images,
      as many tiles of nearly equal size as keep each at least T columns (and
      enough tiles to respect the budget);
    * a plane of more than T positions, or one whose columns exceed the budget:
      each image is cut into nearly equal bands of output rows, each at least
      T columns when the budget allows, at most what fits (at least one row: a
      budget below one row's columns gets one-row bands).

    Tiles come image-chunk by image-chunk, the bands of an image in ascending
    row order.  Tiles no larger than the GEMM needs keep the columns small
    (cache, memory) and the calls few.
    """
    if n == 0:
        return []
    budget = _backend.workspace_bytes()
    threads = _backend.get_backend().threads
    target = None if threads is None else threads() * GEMM_COLUMNS_PER_THREAD
    column_bytes = max(1, column_bytes)
    plane_bytes = column_bytes * ho * wo
    if plane_bytes > budget or (target is not None and ho * wo > target):  # bands, one image at a time
        rows_fit = max(1, budget // (column_bytes * wo))
        rows_wanted = ho if target is None else min(ho, -(-target // wo))
        bands = _even_cuts(ho, max(-(-ho // rows_fit), ho // rows_wanted))
        return [(i, i + 1, r0, r1) for i in range(n) for r0, r1 in bands]
    fit = budget // plane_bytes
    wanted = n if target is None else -(-target // (ho * wo))
    images = max(1, min(n, fit, wanted))
    return [(n0, n1, 0, ho) for n0, n1 in _even_cuts(n, max(-(-n // fit), n // images))]


def _input_band(x, n0, n1, r0, r1, kh, sh, ph):
    """The rows of x[n0:n1] that output rows r0:r1 read, zero-padded in height.

    -> (n1 - n0, C, (r1 - r0 - 1)*sh + kh, W), C-contiguous; im2col of it with
    height pad 0 gives the columns of those output rows.
    """
    xp = _backend.get_backend().xp
    h = x.shape[2]
    top = r0 * sh - ph
    height = (r1 - r0 - 1) * sh + kh
    if top >= 0 and top + height <= h:
        return xp.ascontiguousarray(x[n0:n1, :, top:top + height])
    band = xp.zeros((n1 - n0, x.shape[1], height, x.shape[3]), dtype=x.dtype)
    lo, hi = max(top, 0), min(top + height, h)
    band[:, :, lo - top:hi - top] = x[n0:n1, :, lo:hi]
    return band


def _tile_columns(x, tile, ho, kh, kw, sh, sw, ph, pw):
    """im2col of one tile in the tile layout: (C*kh*kw, (n1 - n0)*(r1 - r0)*Wo)."""
    unfold = _backend.kernel("im2col_tile")
    n0, n1, r0, r1 = tile
    if r0 == 0 and r1 == ho:  # whole planes: the kernel pads
        return unfold(x[n0:n1], kh, kw, sh, sw, ph, pw)
    return unfold(_input_band(x, n0, n1, r0, r1, kh, sh, ph), kh, kw, sh, sw, 0, pw)


def _tile_matrix(a, tile, wo):
    """The tile's part of a (N, F, Ho, Wo) array as one (F, m*q) matrix, m = n1 - n0
    images of q = (r1 - r0)*Wo positions: a view for one image, else a copy that
    puts the images side by side (the tile layout of the conv's output)."""
    n0, n1, r0, r1 = tile
    n, f = a.shape[:2]
    part = a.reshape(n, f, -1)[n0:n1, :, r0 * wo:r1 * wo]
    if n1 - n0 == 1:
        return part[0]
    xp = _backend.get_backend().xp
    return xp.ascontiguousarray(part.transpose(1, 0, 2)).reshape(f, -1)


def _transposed_columns(w_groups_t, y_groups, out):
    """The columns of C^T y for one tile: out[g] = W_g^T y_g, one GEMM per group.

    w_groups_t (groups, Cg*kh*kw, Fg) (a transposed view of the filters),
    y_groups (groups, Fg, m*q) -> out (groups, Cg*kh*kw, m*q), written in place.
    """
    xp = _backend.get_backend().xp
    for g in range(w_groups_t.shape[0]):
        xp.matmul(w_groups_t[g], y_groups[g], out=out[g])


class _TileFolder:
    """col2im of successive tiles (in :func:`conv_tiles` order) into one x (N, C, H, W).

    ``add(tile, cols)`` folds the tile's columns, (groups, Cg*kh*kw, m*q) or
    (C*kh*kw, m*q) in the tile layout, into x[n0:n1]; a tile of whole planes is
    folded straight into x (no copy when it is the whole batch), the row bands of
    an image add up in a padded buffer (bands overlap by kh - sh input rows) that
    is copied into x when the image's last band arrives.  ``result()`` -> x.
    """

    def __init__(self, x_shape, dtype, kh, kw, stride, pad):
        self.x_shape, self.dtype = tuple(x_shape), dtype
        self.kh, self.kw, (self.sh, self.sw), (self.ph, self.pw) = kh, kw, stride, pad
        self.ho = (x_shape[2] + 2 * self.ph - kh) // self.sh + 1
        self._fold = _backend.kernel("col2im_tile")
        self._x = None
        self._band_sum = None

    def _target(self):
        if self._x is None:
            self._x = _backend.get_backend().xp.empty(self.x_shape, dtype=self.dtype)
        return self._x

    def add(self, tile, cols):
        n0, n1, r0, r1 = tile
        n, c, h, wd = self.x_shape
        m, kh, kw, sh, sw, ph, pw = n1 - n0, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw
        cols = cols.reshape(c * kh * kw, -1)
        if r0 == 0 and r1 == self.ho:  # whole planes
            planes = self._fold(cols, (m, c, h, wd), kh, kw, sh, sw, ph, pw)
            if m == n and self._x is None:
                self._x = planes
            else:
                self._target()[n0:n1] = planes
            return
        # a band of output rows reaches input rows [r0*sh, r0*sh + height) of the height-padded input
        if r0 == 0:
            self._band_sum = _backend.get_backend().xp.zeros((m, c, h + 2 * ph, wd), dtype=self.dtype)
        height = (r1 - r0 - 1) * sh + kh
        self._band_sum[:, :, r0 * sh:r0 * sh + height] += self._fold(cols, (m, c, height, wd), kh, kw, sh, sw, 0, pw)
        if r1 == self.ho:
            self._target()[n0:n1] = self._band_sum[:, :, ph:ph + h]
            self._band_sum = None

    def result(self):
        """x (N, C, H, W), every tile added."""
        return self._target()


# ============================================================== im2col / col2im

def im2col(x, kh, kw, stride=1, pad=0):
    """Unfold every kh x kw window of x into a column.

    x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo), with
    ``cols[n, c*kh*kw + i*kw + j, ho*Wo + wo] = xpad[n, c, ho*sh + i, wo*sw + j]``
    (zero padding), Ho = (H + 2 ph - kh) // sh + 1.  ``stride`` and ``pad``
    are ints or (h, w) pairs.
    """
    x = _array("x", x, 4)
    kh, kw = _int("kh", kh, 1), _int("kw", kw, 1)
    (sh, sw), (ph, pw) = _pair("stride", stride, 1), _pair("pad", pad, 0)
    conv_output_size(x.shape[2], kh, sh, ph, "x height")
    conv_output_size(x.shape[3], kw, sw, pw, "x width")
    return _backend.kernel("im2col")(x, kh, kw, sh, sw, ph, pw)


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Adjoint of :func:`im2col`: fold columns back, adding where windows overlap.

    cols (N, C*kh*kw, Ho*Wo) -> x (N, C, H, W) = ``x_shape``;
    ``<im2col(x), cols> == <x, col2im(cols)>``.
    """
    cols = _array("cols", cols, 3)
    kh, kw = _int("kh", kh, 1), _int("kw", kw, 1)
    (sh, sw), (ph, pw) = _pair("stride", stride, 1), _pair("pad", pad, 0)
    n, c, h, w = _shape("x_shape", x_shape, (4,), minimum=0)
    ho = conv_output_size(h, kh, sh, ph, "x_shape height")
    wo = conv_output_size(w, kw, sw, pw, "x_shape width")
    if cols.shape != (n, c * kh * kw, ho * wo):
        raise ValueError(
            f"cols must have shape {(n, c * kh * kw, ho * wo)} for x_shape {tuple(x_shape)}, "
            f"got {tuple(cols.shape)}"
        )
    return _backend.kernel("col2im")(cols, (n, c, h, w), kh, kw, sh, sw, ph, pw)


# ============================================================== convolution

def _conv_args(x_name, x, w, stride, pad, groups):
    """Validate a conv call; returns (w, (sh, sw), (ph, pw), groups)."""
    w = _array("w", w, 4)
    _same_dtype(x_name, x, "w", w)
    if 0 in w.shape:
        raise ValueError(f"w must have at least one filter, one channel and a window of at least 1x1 "
                         f"(F, C // groups, kh, kw), got shape {tuple(w.shape)}")
    groups = _int("groups", groups, 1)
    if w.shape[0] % groups:
        raise ValueError(f"w has {w.shape[0]} filters, which groups={groups} does not divide")
    return w, _pair("stride", stride, 1), _pair("pad", pad, 0), groups


def conv2d(x, w, b=None, stride=1, pad=0, groups=1):
    """2-D cross-correlation, as a GEMM over im2col columns.

    x (N, C, H, W), w (F, C // groups, kh, kw), b (F,) or None
    -> y (N, F, Ho, Wo) with
    ``y[n, f, ho, wo] = b[f] + sum_{c, i, j} w[f, c, i, j] xpad[n, g*Cg + c, ho*sh + i, wo*sw + j]``
    where g = f // (F / groups).
    """
    x = _array("x", x, 4)
    w, (sh, sw), (ph, pw), groups = _conv_args("x", x, w, stride, pad, groups)
    xp = _backend.get_backend().xp
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    if c != cg * groups:
        raise ValueError(
            f"x has {c} channels but w expects {cg} per group x {groups} groups = {cg * groups}"
        )
    ho = conv_output_size(h, kh, sh, ph, "x height")
    wo = conv_output_size(wd, kw, sw, pw, "x width")
    if b is not None:
        b = _array("b", b, 1)
        _same_dtype("x", x, "b", b)
        if b.shape[0] != f:
            raise ValueError(f"b must have shape ({f},) to match w, got {tuple(b.shape)}")

    p, kg, fg = ho * wo, cg * kh * kw, f // groups
    w_groups = w.reshape(groups, fg, kg)
    y = xp.empty((n, f, p), dtype=x.dtype)
    bias = None if b is None else b[:, None]
    for tile in conv_tiles(n, ho, wo, c * kh * kw * x.itemsize):
        n0, n1, r0, r1 = tile
        m, q = n1 - n0, (r1 - r0) * wo
        cols = _tile_columns(x, tile, ho, kh, kw, sh, sw, ph, pw).reshape(groups, kg, m * q)
        if m == 1:  # the GEMMs write into y (a view), the bias is added in cache
            out = y[n0, :, r0 * wo:r1 * wo]
            out_groups = out.reshape(groups, fg, q)
            for g in range(groups):
                xp.matmul(w_groups[g], cols[g], out=out_groups[g])
            if bias is not None:
                out += bias
            continue
        # one GEMM per group over every image of the tile, then to NCHW, adding the bias
        prod = xp.empty((groups, fg, m * q), dtype=x.dtype)
        for g in range(groups):
            xp.matmul(w_groups[g], cols[g], out=prod[g])
        prod = prod.reshape(f, m, q).transpose(1, 0, 2)
        out = y[n0:n1, :, r0 * wo:r1 * wo]
        if bias is None:
            out[...] = prod
        else:
            xp.add(prod, bias, out=out)
    return y.reshape(n, f, ho, wo)


def conv_transpose2d(y, w, stride=1, pad=0, groups=1, output_shape=None):
    """The transposed convolution C^T y (the deconvnet's "deconvolution").

    y (N, F, Ho, Wo), w (F, C // groups, kh, kw) -> x (N, C, H, W): the exact
    adjoint of :func:`conv2d` in x, ``<conv2d(x, w), y> == <x, conv_transpose2d(y, w)>``,
    computed as GEMM with the transposed filters, then :func:`col2im`.
    ``output_shape`` ((H, W) or (N, C, H, W)) picks among the input sizes that a
    strided conv maps to (Ho, Wo); by default the smallest,
    H = (Ho - 1) sh - 2 ph + kh.
    """
    y = _array("y", y, 4)
    w, (sh, sw), (ph, pw), groups = _conv_args("y", y, w, stride, pad, groups)
    xp = _backend.get_backend().xp
    n, f, ho, wo = y.shape
    f_w, cg, kh, kw = w.shape
    if f != f_w:
        raise ValueError(f"y has {f} channels but w has {f_w} filters")
    h_min, w_min = (ho - 1) * sh - 2 * ph + kh, (wo - 1) * sw - 2 * pw + kw
    if output_shape is None:
        h, wd = h_min, w_min
    else:
        h, wd = _spatial_shape("output_shape", output_shape)
        if not (h_min <= h < h_min + sh and w_min <= wd < w_min + sw):
            raise ValueError(
                f"output_shape {tuple(output_shape)} does not convolve to y's {ho}x{wo}: height must be in "
                f"[{h_min}, {h_min + sh - 1}] and width in [{w_min}, {w_min + sw - 1}]"
            )
    if h < 1 or wd < 1:
        raise ValueError(f"y of {ho}x{wo} with this kernel, stride and pad gives an empty output")
    c = cg * groups
    if output_shape is not None and tuple(output_shape)[:-2] not in ((), (c,), (n, c)):
        raise ValueError(f"output_shape {tuple(output_shape)} does not match the output's (N, C) = {(n, c)}")
    kg, fg = cg * kh * kw, f // groups
    w_groups_t = w.reshape(groups, fg, kg).transpose(0, 2, 1)
    folder = _TileFolder((n, c, h, wd), y.dtype, kh, kw, (sh, sw), (ph, pw))
    for tile in conv_tiles(n, ho, wo, c * kh * kw * y.itemsize):
        y_groups = _tile_matrix(y, tile, wo).reshape(groups, fg, -1)
        cols = xp.empty((groups, kg, y_groups.shape[2]), dtype=y.dtype)
        _transposed_columns(w_groups_t, y_groups, cols)
        folder.add(tile, cols)
    return folder.result()


def conv2d_backward(dy, x, w, stride=1, pad=0, groups=1, input_grad=True):
    """Gradients of :func:`conv2d`: dy (N, F, Ho, Wo) -> (dx, dw, db).

    dx = C^T dy (:func:`conv_transpose2d`), dw[f] = sum_n dy[n, f] . cols[n]^T,
    db[f] = sum of dy[:, f].  ``input_grad=False`` skips dx (returned as None): the
    first layer of a network in training needs only dw and db.  Both come from one
    loop over the tiles: each tile's columns of x give dw, then hold the columns of
    C^T dy (the same shape), folded into dx; dx is :func:`conv_transpose2d`'s result
    bit for bit.
    """
    dy = _array("dy", dy, 4)
    x = _array("x", x, 4)
    _same_dtype("x", x, "dy", dy)
    w, (sh, sw), (ph, pw), groups = _conv_args("x", x, w, stride, pad, groups)
    xp = _backend.get_backend().xp
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    if c != cg * groups:
        raise ValueError(f"x has {c} channels but w expects {cg} per group x {groups} groups")
    ho = conv_output_size(h, kh, sh, ph, "x height")
    wo = conv_output_size(wd, kw, sw, pw, "x width")
    if dy.shape != (n, f, ho, wo):
        raise ValueError(f"dy must have shape {(n, f, ho, wo)} (the conv output), got {tuple(dy.shape)}")

    kg, fg = cg * kh * kw, f // groups
    w_groups_t = w.reshape(groups, fg, kg).transpose(0, 2, 1)
    folder = _TileFolder((n, c, h, wd), x.dtype, kh, kw, (sh, sw), (ph, pw)) if input_grad else None
    dw_t = xp.zeros((groups, kg, fg), dtype=x.dtype)  # dw transposed, see below (zero for an empty batch)
    for k, tile in enumerate(conv_tiles(n, ho, wo, c * kh * kw * x.itemsize)):
        cols = _tile_columns(x, tile, ho, kh, kw, sh, sw, ph, pw).reshape(groups, kg, -1)
        dy_groups = _tile_matrix(dy, tile, wo).reshape(groups, fg, -1)
        # one GEMM per group over the whole tile, as dw_g^T += cols_g (kg, m*q) x dy_g^T (m*q, Fg):
        # the same product as dy_g cols_g^T, but the orientation OpenBLAS runs fast when the
        # inner dimension m*q is long (measured 12x on conv1, 1.5x on conv3; bench/README.md)
        for g in range(groups):
            if k == 0:  # the first tile's GEMM writes dw itself
                xp.matmul(cols[g], dy_groups[g].T, out=dw_t[g])
            else:
                dw_t[g] += cols[g] @ dy_groups[g].T
        if folder is not None:  # dx = C^T dy, its columns written over the tile's (no second buffer)
            _transposed_columns(w_groups_t, dy_groups, cols)
            folder.add(tile, cols)
    dx = None if folder is None else folder.result()
    dw = xp.ascontiguousarray(dw_t.transpose(0, 2, 1))
    db = dy.reshape(n, f, ho * wo).sum(axis=2).sum(axis=0)  # contiguous inner sums first: one fast pass
    return dx, dw.reshape(w.shape), db


def conv_matrix(w, input_shape, stride=1, pad=0, groups=1):
    """The convolution of one image as an explicit ``scipy.sparse`` matrix C.

    w (F, C // groups, kh, kw), input_shape (C, H, W) (or (1, C, H, W))
    -> C, a CSR matrix of shape (F*Ho*Wo, C*H*W) with
    ``C @ x.ravel() == conv2d(x[None], w).ravel()`` and so
    ``C.T @ y.ravel() == conv_transpose2d(y[None], w).ravel()``.
    Built from index arithmetic alone (not from im2col), for teaching and testing:
    with a 4x4 input and a 3x3 filter C is 4 x 16.
    """
    import scipy.sparse

    w = _backend.to_host(w)
    if not isinstance(w, np.ndarray) or w.dtype not in FLOAT_DTYPES:
        raise TypeError(f"w must be a float32/float64 array, got {getattr(w, 'dtype', type(w))}")
    if w.ndim != 4:
        raise ValueError(f"w must have 4 dimensions (F, C, kh, kw), got {w.ndim}")
    shape = _shape("input_shape", input_shape, (3, 4))
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3:
        raise ValueError(f"input_shape must be (C, H, W) for one image, got {tuple(input_shape)}")
    c, h, wd = shape
    groups = _int("groups", groups, 1)
    f, cg, kh, kw = w.shape
    if c != cg * groups or f % groups:
        raise ValueError(f"input_shape has {c} channels but w expects {cg} x {groups} groups")
    (sh, sw), (ph, pw) = _pair("stride", stride, 1), _pair("pad", pad, 0)
    ho = conv_output_size(h, kh, sh, ph, "input height")
    wo = conv_output_size(wd, kw, sw, pw, "input width")

    fi, oi, oj, ci, ki, kj = np.meshgrid(
        np.arange(f), np.arange(ho), np.arange(wo), np.arange(cg), np.arange(kh), np.arange(kw),
        indexing="ij",
    )
    hi, wi = oi * sh - ph + ki, oj * sw - pw + kj
    inside = (hi >= 0) & (hi < h) & (wi >= 0) & (wi < wd)
    channel = (fi // (f // groups)) * cg + ci
    rows = (fi * ho + oi) * wo + oj
    cols = (channel * h + hi) * wd + wi
    values = w[fi, ci, ki, kj]
    return scipy.sparse.csr_matrix(
        (values[inside], (rows[inside], cols[inside])), shape=(f * ho * wo, c * h * wd)
    )


# ============================================================== pooling

def max_pool2d(x, size, stride=None, pad=0, ceil_mode=False):
    """Max-pooling that records its switches.

    x (N, C, H, W) -> (y, switches), both (N, C, Ho, Wo); ``switches`` is int64,
    the flat index h*W + w of each maximum in the unpadded input plane
    (PyTorch's ``return_indices`` layout).  Padding counts as -inf; ties go to
    the first maximum in row-major window order; a NaN wins and propagates.
    ``stride`` defaults to ``size``; ``ceil_mode`` keeps a last partial window
    (ZFNet: 110 -> 55 and 26 -> 13 with size 3, stride 2) and accepts what
    PyTorch accepts (see :func:`pool_output_size`).  ``pad`` is an int, (ph, pw)
    or per side (top, bottom, left, right) (:func:`pad_sides`; Caffe models in
    ONNX pad only bottom and right); each side at most half the window, so that
    every window holds an input pixel.  Window (ho, wo) covers rows
    [ho*sh - top, ho*sh - top + kh) and columns [wo*sw - left, wo*sw - left + kw).
    """
    x = _array("x", x, 4)
    kh, kw = _pair("size", size, 1)
    sh, sw = (kh, kw) if stride is None else _pair("stride", stride, 1)
    top, bottom, left, right = pad_sides(pad)
    if 2 * max(top, bottom) > kh or 2 * max(left, right) > kw:
        raise ValueError(f"pad must be at most half the window size {(kh, kw)} on each side, "
                         f"got (top, bottom, left, right) = {(top, bottom, left, right)}")
    n, c, h, w = x.shape
    ho = pool_output_size(h, kh, sh, (top, bottom), bool(ceil_mode), "x height")
    wo = pool_output_size(w, kw, sw, (left, right), bool(ceil_mode), "x width")
    # the kernels take the top and left pads; Ho and Wo imply the bottom and right ones
    return _backend.kernel("max_pool2d")(x, kh, kw, sh, sw, top, left, ho, wo)


def max_unpool2d(y, switches, input_shape, *, size=None, stride=None, pad=0):
    """Unpooling through the switches: the exact transpose of the pooling selection.

    y (N, C, Ho, Wo), int switches of the same shape (from :func:`max_pool2d`),
    input_shape (H, W) or (N, C, H, W) -> x (N, C, H, W), zero except
    ``x[n, c].flat[switches[n, c, i, j]] += y[n, c, i, j]``.  Values whose switches
    collide (overlapping windows) are *summed*, so ``max_unpool2d(dy, ...)`` is the
    pooling gradient and ``<pool_select(x), y> == <x, max_unpool2d(y)>``.
    (PyTorch's ``max_unpool2d`` overwrites on collision instead.)

    ``size``/``stride``/``pad`` (keyword only; ``pad`` as in :func:`max_pool2d`)
    may name the pooling geometry that made the switches; a backend can then
    gather deterministically (CUDA).
    """
    y = _array("y", y, 4)
    switches = _array("switches", switches, 4, float_only=False)
    if switches.dtype.kind not in "iu":
        raise TypeError(f"switches must be an integer array, got dtype {switches.dtype}")
    if switches.shape != y.shape:
        raise ValueError(f"switches must have y's shape {tuple(y.shape)}, got {tuple(switches.shape)}")
    h, w = _spatial_shape("input_shape", input_shape)
    lead = tuple(input_shape)[:-2]
    if lead not in ((), tuple(y.shape[1:2]), tuple(y.shape[:2])):
        raise ValueError(f"input_shape {tuple(input_shape)} does not match y's (N, C) {tuple(y.shape[:2])}")
    if switches.size:
        lo, hi = int(switches.min()), int(switches.max())
        if lo < 0 or hi >= h * w:
            raise ValueError(
                f"switches must lie in [0, H*W) = [0, {h * w}) for input_shape {(h, w)}, got values in [{lo}, {hi}]"
            )
    window = None
    if size is not None:
        kh, kw = _pair("size", size, 1)
        sh, sw = (kh, kw) if stride is None else _pair("stride", stride, 1)
        top, _, left, _ = pad_sides(pad)
        window = (kh, kw, sh, sw, top, left)
    return _backend.kernel("max_unpool2d")(y, switches.astype(np.int64, copy=False), h, w, window)


# ============================================================== rectifier

def relu(x):
    """max(x, 0), elementwise."""
    x = _array("x", x)
    return _backend.kernel("relu")(x)


def relu_backward(s, x, rule="backprop"):
    """The signal s going down through a ReLU whose forward input was x.

    ``backprop``: s * (x > 0) (the gradient); ``deconvnet``: relu(s) (Zeiler &
    Fergus: the rectifier acts on the signal alone); ``guided``: relu(s) * (x > 0)
    (Springenberg et al.).  For ``deconvnet`` x is not used and may be None.
    """
    s = _array("s", s)
    if rule not in RELU_RULES:
        raise ValueError(f"rule must be one of {RELU_RULES}, got {rule!r}")
    if rule == "deconvnet":
        return _backend.kernel("relu_backward")(s, None, rule)
    x = _array("x", x)
    _same_dtype("s", s, "x", x)
    if x.shape != s.shape:
        raise ValueError(f"x must have s's shape {tuple(s.shape)}, got {tuple(x.shape)}")
    return _backend.kernel("relu_backward")(s, x, rule)


# ============================================================== local response norm

def _lrn_args(size, alpha, beta, k):
    size = _int("size", size, 1)
    for name, v in (("alpha", alpha), ("beta", beta), ("k", k)):
        if not isinstance(v, numbers.Real) or isinstance(v, bool):
            raise TypeError(f"{name} must be a real number, got {v!r}")
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if k <= 0:
        raise ValueError(f"k must be > 0 (it keeps the denominator positive), got {k}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return size, float(alpha), float(beta), float(k)


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Local response normalization across channels (Caffe / ONNX / PyTorch).

    x (N, C, H, W) -> b with ``b_c = a_c / (k + alpha/size * sum_j a_j^2)^beta``, the
    sum over the ``size`` channels centred on c (zero beyond the edges; for an even
    size, PyTorch's window [c - size//2, c + (size-1)//2]).
    """
    x = _array("x", x, 4)
    size, alpha, beta, k = _lrn_args(size, alpha, beta, k)
    return _backend.kernel("lrn")(x, size, alpha, beta, k)


def local_response_norm_backward(dy, x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """Gradient of :func:`local_response_norm` with respect to x: dy, x (N, C, H, W) -> dx."""
    dy = _array("dy", dy, 4)
    x = _array("x", x, 4)
    _same_dtype("x", x, "dy", dy)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have x's shape {tuple(x.shape)}, got {tuple(dy.shape)}")
    size, alpha, beta, k = _lrn_args(size, alpha, beta, k)
    return _backend.kernel("lrn_backward")(dy, x, size, alpha, beta, k)


# ============================================================== fully connected

def linear(x, w, b=None):
    """y = x w^T + b: x (N, in), w (out, in), b (out,) -> y (N, out)."""
    x = _array("x", x, 2)
    w = _array("w", w, 2)
    _same_dtype("x", x, "w", w)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"x has {x.shape[1]} features but w expects {w.shape[1]} (w is (out, in))")
    y = x @ w.T
    if b is not None:
        b = _array("b", b, 1)
        _same_dtype("x", x, "b", b)
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"b must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        y += b
    return y


def linear_backward(dy, x, w):
    """Gradients of :func:`linear`: dy (N, out) -> (dx = dy w, dw = dy^T x, db = sum_n dy)."""
    dy = _array("dy", dy, 2)
    x = _array("x", x, 2)
    w = _array("w", w, 2)
    _same_dtype("x", x, "dy", dy)
    _same_dtype("x", x, "w", w)
    if dy.shape != (x.shape[0], w.shape[0]):
        raise ValueError(f"dy must have shape {(x.shape[0], w.shape[0])}, got {tuple(dy.shape)}")
    return dy @ w, dy.T @ x, dy.sum(axis=0)


# ============================================================== dropout, softmax, loss

def dropout(x, p, rng):
    """Inverted dropout: each element is kept with probability 1 - p and scaled by 1 / (1 - p).

    x any shape, p in [0, 1), rng a ``numpy.random.Generator`` (or CuPy's) ->
    (y, mask) with y = x * mask; the backward is dy * mask.
    """
    x = _array("x", x)
    if isinstance(p, bool) or not isinstance(p, numbers.Real):
        raise TypeError(f"p must be a real number, got {p!r}")
    if not 0 <= p < 1:
        raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
    if not hasattr(rng, "random"):
        raise TypeError(f"rng must be a random Generator (numpy.random.default_rng(seed)), got {type(rng).__name__}")
    xp = _backend.get_backend().xp
    if p == 0:
        mask = xp.ones_like(x)
    else:
        u = xp.asarray(rng.random(x.shape))
        mask = (u >= p).astype(x.dtype) * x.dtype.type(1.0 / (1.0 - p))
    return x * mask, mask


def softmax(z):
    """Softmax over the last axis, shifted by the maximum for stability: z (N, K) -> p (N, K)."""
    z = _array("z", z)
    if z.ndim == 0 or z.shape[-1] == 0:
        raise ValueError(f"z must have at least one class on its last axis, got shape {tuple(z.shape)}")
    xp = _backend.get_backend().xp
    e = xp.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def cross_entropy(z, labels):
    """Mean cross-entropy of softmax(z) against integer labels, and its gradient.

    z (N, K) scores, labels (N,) ints in [0, K) -> (loss, dz) with
    loss = -mean_n log softmax(z)[n, labels[n]] and dz = (softmax(z) - onehot) / N.

    Computed so that nothing cancels when the softmax saturates: with
    s = z - max(z), log p = s - log1p(sum of exp(s) over all but one maximum),
    and the label's entry of dz is expm1(log p_label) rather than p_label - 1
    (which loses every digit of 1 - p_label below float32's 6e-8).
    """
    z = _array("z", z, 2)
    xp = _backend.get_backend().xp
    labels = xp.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    n, k = z.shape
    if n == 0 or k == 0:
        raise ValueError(f"z must hold at least one row of at least one class score (N, K >= 1), "
                         f"got shape {tuple(z.shape)}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) >= k):
        raise ValueError(f"labels must lie in [0, {k}), got values in [{int(labels.min())}, {int(labels.max())}]")
    rows = xp.arange(n)
    top = z.argmax(axis=1)
    shifted = z - z[rows, top][:, None]
    e = xp.exp(shifted)
    e[rows, top] = 0  # exp(0) = 1 of the maximum is the "1" of log1p
    log_p = shifted - xp.log1p(e.sum(axis=1, keepdims=True))
    loss = -log_p[rows, labels].mean()
    dz = xp.exp(log_p)
    dz[rows, labels] = xp.expm1(log_p[rows, labels])
    dz /= n
    return float(loss), dz
