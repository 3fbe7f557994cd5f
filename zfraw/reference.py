"""Independent float64 references for the ops of :mod:`zfraw.functional`.

Every function here recomputes one op from its mathematical definition with
SciPy (``scipy.signal``, ``scipy.ndimage``, ``scipy.special``) or with plain
Python loops, never with zfraw's own kernels, so that a disagreement points at
a bug rather than at a shared mistake.  They are slow and meant for small
inputs: the tests and ``zfraw check`` hold the fast ops against them.

The signatures mirror :mod:`zfraw.functional` (same argument names and
defaults); inputs may be NumPy or CuPy arrays of any float dtype, and every
result is a NumPy float64 array (switches: int64).

Conventions (the same as zfraw and PyTorch):

* images are NCHW, conv weights (F, C // groups, kh, kw), convolution is
  cross-correlation;
* ``stride`` and ``pad`` are ints or (h, w) pairs; a pooling ``pad`` may also be
  per side, (top, bottom, left, right);
* max-pool switches are flat indices h*W + w into the unpadded input plane,
  ties go to the first maximum in row-major window order and a NaN wins.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.ndimage
import scipy.signal
import scipy.special

__all__ = [
    "im2col", "col2im", "conv_output_size", "pool_output_size", "conv2d",
    "conv_transpose2d", "conv_matrix", "max_pool2d", "max_pool2d_switches",
    "max_unpool2d", "relu", "relu_backward", "local_response_norm",
    "local_response_norm_backward", "linear", "linear_backward", "softmax",
    "log_softmax", "cross_entropy",
]


# ============================================================== helpers

def _f64(a):
    """A host float64 copy of an array (NumPy or CuPy)."""
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        a = a.get()
    return np.array(a, dtype=np.float64)


def _pair(v):
    """An int or an (h, w) pair -> (h, w)."""
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def _pad_hw(x, ph, pw, value=0.0, extra_h=0, extra_w=0):
    """x (N, C, H, W) padded with ``value``: ph/pw on both sides, plus extra_h/extra_w after."""
    return np.pad(
        x, ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w)),
        mode="constant", constant_values=value,
    )


def conv_output_size(size, k, stride, pad):
    """Number of full windows: floor((size + 2 pad - k) / stride) + 1."""
    return (size + 2 * pad - k) // stride + 1


def pool_output_size(size, k, stride, pad, ceil_mode=False):
    """Pooled size by PyTorch's rule; ``pad`` an int or (before, after).

    floor (or, with ``ceil_mode``, ceil) of (size + before + after - k) / stride,
    plus one; in ceil mode a last window that would start at or beyond
    ``size + before`` (entirely in the after-padding) is dropped.
    """
    before, after = _pair(pad)
    span = (size + before + after - k) / stride
    out = (math.ceil(span) if ceil_mode else math.floor(span)) + 1
    if ceil_mode and (out - 1) * stride >= size + before:
        out -= 1
    return out


# ============================================================== im2col / col2im

def im2col(x, kh, kw, stride=1, pad=0):
    """Plain-loop im2col: x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo) float64.

    ``cols[n, c*kh*kw + i*kw + j, ho*Wo + wo] = xpad[n, c, ho*sh + i, wo*sw + j]``
    with zero padding.
    """
    x = _f64(x)
    (sh, sw), (ph, pw) = _pair(stride), _pair(pad)
    n, c, h, w = x.shape
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xpad = _pad_hw(x, ph, pw)
    cols = np.empty((n, c * kh * kw, ho * wo))
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                row = (ci * kh + i) * kw + j
                for oi in range(ho):
                    for oj in range(wo):
                        cols[:, row, oi * wo + oj] = xpad[:, ci, oi * sh + i, oj * sw + j]
    return cols


def col2im(cols, x_shape, kh, kw, stride=1, pad=0):
    """Plain-loop col2im (the adjoint of :func:`im2col`): overlapping entries add.

    cols (N, C*kh*kw, Ho*Wo) -> x (N, C, H, W) float64; entries that fall in the
    padding are dropped.
    """
    cols = _f64(cols)
    (sh, sw), (ph, pw) = _pair(stride), _pair(pad)
    n, c, h, w = (int(s) for s in x_shape)
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(w, kw, sw, pw)
    xpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for ci in range(c):
        for i in range(kh):
            for j in range(kw):
                row = (ci * kh + i) * kw + j
                for oi in range(ho):
                    for oj in range(wo):
                        xpad[:, ci, oi * sh + i, oj * sw + j] += cols[:, row, oi * wo + oj]
    return xpad[:, :, ph:ph + h, pw:pw + w].copy()


# ============================================================== convolution

def conv2d(x, w, b=None, stride=1, pad=0, groups=1):
    """Cross-correlation by ``scipy.signal.correlate``, one (n, f, c) plane at a time.

    x (N, C, H, W), w (F, C // groups, kh, kw), b (F,) or None -> y (N, F, Ho, Wo)::

        y[n, f] = b[f] + sum_c correlate(xpad[n, g*Cg + c], w[f, c], 'valid')[::sh, ::sw]

    with g = f // (F / groups), Cg = C / groups.
    """
    x, w = _f64(x), _f64(w)
    b = None if b is None else _f64(b)
    (sh, sw), (ph, pw) = _pair(stride), _pair(pad)
    n, c, h, wd = x.shape
    f, cg, kh, kw = w.shape
    fg = f // groups
    xpad = _pad_hw(x, ph, pw)
    ho, wo = conv_output_size(h, kh, sh, ph), conv_output_size(wd, kw, sw, pw)
    y = np.zeros((n, f, ho, wo))
    for ni in range(n):
        for fi in range(f):
            g = fi // fg
            for ci in range(cg):
                full = scipy.signal.correlate(xpad[ni, g * cg + ci], w[fi, ci], mode="valid", method="direct")
                y[ni, fi] += full[::sh, ::sw][:ho, :wo]
            if b is not None:
                y[ni, fi] += b[fi]
    return y


def conv_transpose2d(y, w, stride=1, pad=0, groups=1, output_shape=None):
    """The transposed convolution by ``scipy.signal.convolve`` of the stride-upsampled signal.

    y (N, F, Ho, Wo), w (F, C // groups, kh, kw) -> x (N, C, H, W)::

        xpad[n, g*Cg + c] = sum_{f in group g} convolve(up(y[n, f]), w[f, c], 'full')

    where up() puts y[o, p] at (o*sh, p*sw) and zeros between; x is xpad cropped
    by the padding.  (H, W) is ``output_shape`` ((H, W) or (N, C, H, W)), by
    default the smallest, (Ho - 1) sh - 2 ph + kh.
    """
    y, w = _f64(y), _f64(w)
    (sh, sw), (ph, pw) = _pair(stride), _pair(pad)
    n, f, ho, wo = y.shape
    _, cg, kh, kw = w.shape
    fg, c = f // groups, cg * groups
    if output_shape is None:
        h, wd = (ho - 1) * sh - 2 * ph + kh, (wo - 1) * sw - 2 * pw + kw
    else:
        h, wd = (int(s) for s in tuple(output_shape)[-2:])
    up = np.zeros((n, f, (ho - 1) * sh + 1, (wo - 1) * sw + 1))
    up[:, :, ::sh, ::sw] = y
    xpad = np.zeros((n, c, max(h + 2 * ph, (ho - 1) * sh + kh), max(wd + 2 * pw, (wo - 1) * sw + kw)))
    for ni in range(n):
        for fi in range(f):
            g = fi // fg
            for ci in range(cg):
                full = scipy.signal.convolve(up[ni, fi], w[fi, ci], mode="full", method="direct")
                xpad[ni, g * cg + ci, :full.shape[0], :full.shape[1]] += full
    return xpad[:, :, ph:ph + h, pw:pw + wd].copy()


def conv_matrix(w, input_shape, stride=1, pad=0, groups=1):
    """Dense C (F*Ho*Wo, C*H*W) of the convolution of one image, column by column.

    Column k is :func:`conv2d` of the k-th unit image, so
    ``C @ x.ravel() == conv2d(x[None], w).ravel()`` by construction.
    """
    shape = tuple(int(s) for s in input_shape)[-3:]
    size = int(np.prod(shape))
    basis = np.eye(size).reshape((size,) + shape)
    return conv2d(basis, w, None, stride, pad, groups).reshape(size, -1).T.copy()


# ============================================================== pooling

def _pool_pads(pad):
    """(top, bottom, left, right) from an int, (ph, pw) or four ints."""
    if isinstance(pad, (tuple, list)) and len(pad) == 4:
        return tuple(int(v) for v in pad)
    ph, pw = _pair(pad)
    return ph, ph, pw, pw


def _pool_geometry(x_shape, size, stride, pad, ceil_mode):
    """(kh, kw, sh, sw, top, left, ho, wo, bottom, right)."""
    kh, kw = _pair(size)
    sh, sw = (kh, kw) if stride is None else _pair(stride)
    top, bottom, left, right = _pool_pads(pad)
    h, w = x_shape[-2:]
    ho = pool_output_size(h, kh, sh, (top, bottom), ceil_mode)
    wo = pool_output_size(w, kw, sw, (left, right), ceil_mode)
    return kh, kw, sh, sw, top, left, ho, wo, bottom, right


def max_pool2d_switches(x, size, stride=None, pad=0, ceil_mode=False):
    """PyTorch's max-pool switch rule, in plain loops: x (N, C, H, W) -> int64 (N, C, Ho, Wo).

    Each window is clipped to the input; the running index starts at its first
    in-bounds pixel and the running maximum at -inf; a pixel v replaces it when
    ``v > best or isnan(v)`` (row-major order), so ties keep the first maximum,
    padding never wins and the last NaN of a window wins.
    """
    x = _f64(x)
    n, c, h, w = x.shape
    kh, kw, sh, sw, ph, pw, ho, wo, _, _ = _pool_geometry(x.shape, size, stride, pad, ceil_mode)
    switches = np.empty((n, c, ho, wo), dtype=np.int64)
    for ni in range(n):
        for ci in range(c):
            plane = x[ni, ci]
            for oi in range(ho):
                h0 = oi * sh - ph
                h1, h0 = min(h0 + kh, h), max(h0, 0)
                for oj in range(wo):
                    w0 = oj * sw - pw
                    w1, w0 = min(w0 + kw, w), max(w0, 0)
                    best, index = -math.inf, h0 * w + w0
                    for hi in range(h0, h1):
                        for wi in range(w0, w1):
                            v = plane[hi, wi]
                            if v > best or math.isnan(v):
                                best, index = v, hi * w + wi
                    switches[ni, ci, oi, oj] = index
    return switches


def max_pool2d(x, size, stride=None, pad=0, ceil_mode=False):
    """Max-pooling by ``scipy.ndimage.maximum_filter`` on the -inf-padded input.

    x (N, C, H, W) -> (y float64, switches int64), both (N, C, Ho, Wo).  The
    values come from the filter, subsampled at the window starts (a window that
    holds a NaN gives NaN); the switches from :func:`max_pool2d_switches`.
    """
    x = _f64(x)
    kh, kw, sh, sw, top, left, ho, wo, bottom, right = _pool_geometry(x.shape, size, stride, pad, ceil_mode)
    h, w = x.shape[-2:]
    # rows/columns past the input: the after-padding, or further where a ceil-mode window reaches
    bottom = max(bottom, (ho - 1) * sh + kh - (h + top))
    right = max(right, (wo - 1) * sw + kw - (w + left))
    nan = np.isnan(x)
    pads = ((0, 0), (0, 0), (top, bottom), (left, right))
    xpad = np.pad(np.where(nan, -np.inf, x), pads, mode="constant", constant_values=-np.inf)
    nanpad = np.pad(nan.astype(np.float64), pads, mode="constant", constant_values=0.0)
    # maximum_filter's window for an output at i is [i - k//2, i - k//2 + k): a window
    # starting at s is read at its centre s + k//2.
    footprint = (1, 1, kh, kw)
    peak = scipy.ndimage.maximum_filter(xpad, size=footprint, mode="constant", cval=-np.inf)
    has_nan = scipy.ndimage.maximum_filter(nanpad, size=footprint, mode="constant", cval=0.0)
    rows = np.arange(ho) * sh + kh // 2
    cols = np.arange(wo) * sw + kw // 2
    y = peak[:, :, rows[:, None], cols[None, :]]
    y[has_nan[:, :, rows[:, None], cols[None, :]] > 0] = np.nan
    return y, max_pool2d_switches(x, size, stride, pad, ceil_mode)


def max_unpool2d(y, switches, input_shape):
    """Plain-loop unpooling: x[n, c].flat[switches[n, c, i, j]] += y[n, c, i, j] (sums on collision)."""
    y = _f64(y)
    switches = np.asarray(switches.get() if hasattr(switches, "get") else switches)
    n, c = y.shape[:2]
    h, w = (int(s) for s in tuple(input_shape)[-2:])
    x = np.zeros((n, c, h * w))
    for ni in range(n):
        for ci in range(c):
            for value, index in zip(y[ni, ci].ravel(), switches[ni, ci].ravel()):
                x[ni, ci, int(index)] += value
    return x.reshape(n, c, h, w)


# ============================================================== rectifier

def relu(x):
    """max(x, 0) in float64 (NaN stays NaN)."""
    x = _f64(x)
    return np.where(x > 0, x, np.where(np.isnan(x), np.nan, 0.0))


def relu_backward(s, x, rule="backprop"):
    """The three rectifier rules, elementwise from their definitions.

    ``backprop``: s if x > 0 else 0; ``deconvnet``: s if s > 0 else 0;
    ``guided``: s if (x > 0 and s > 0) else 0.
    """
    s = _f64(s)
    if rule == "deconvnet":
        return np.where(s > 0, s, 0.0)
    x = _f64(x)
    if rule == "backprop":
        return np.where(x > 0, s, 0.0)
    if rule == "guided":
        return np.where((x > 0) & (s > 0), s, 0.0)
    raise ValueError(f"rule must be backprop, deconvnet or guided, got {rule!r}")


# ============================================================== local response norm

def _lrn_scale(x, size, alpha, k):
    """k + alpha/size * sum of x_j^2 over channels [c - size//2, c + (size-1)//2] (zeros outside).

    ``scipy.ndimage.correlate1d`` with ``size`` ones centres its window exactly
    there (for an even size one more channel before c than after, as PyTorch).
    """
    sums = scipy.ndimage.correlate1d(x * x, np.ones(size), axis=1, mode="constant", cval=0.0)
    return k + alpha / size * sums


def local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """b_c = a_c / (k + alpha/size * sum_j a_j^2)^beta, over the channel window of c."""
    x = _f64(x)
    return x / _lrn_scale(x, size, alpha, k) ** beta


def local_response_norm_backward(dy, x, size=5, alpha=1e-4, beta=0.75, k=2.0):
    """dx = J^T dy with the Jacobian of :func:`local_response_norm` written out channel by channel.

    db_c/da_m = [c == m] s_c^-beta - 2 alpha beta / size * a_c a_m s_c^(-beta-1) [m in win(c)].
    """
    dy, x = _f64(dy), _f64(x)
    channels = x.shape[1]
    scale = _lrn_scale(x, size, alpha, k)
    dx = dy * scale ** -beta
    for c in range(channels):
        lo, hi = max(0, c - size // 2), min(channels, c + (size - 1) // 2 + 1)
        common = dy[:, c] * x[:, c] * scale[:, c] ** (-beta - 1) * (2.0 * alpha * beta / size)
        for m in range(lo, hi):
            dx[:, m] -= common * x[:, m]
    return dx


# ============================================================== fully connected

def linear(x, w, b=None):
    """y[n, o] = sum_i x[n, i] w[o, i] + b[o], by ``np.einsum`` in float64."""
    y = np.einsum("ni,oi->no", _f64(x), _f64(w))
    return y if b is None else y + _f64(b)


def linear_backward(dy, x, w):
    """(dx, dw, db) = (dy w, dy^T x, sum_n dy) in float64."""
    dy, x, w = _f64(dy), _f64(x), _f64(w)
    return np.einsum("no,oi->ni", dy, w), np.einsum("no,ni->oi", dy, x), dy.sum(axis=0)


# ============================================================== softmax, loss

def softmax(z):
    """``scipy.special.softmax`` over the last axis, float64."""
    return scipy.special.softmax(_f64(z), axis=-1)


def log_softmax(z):
    """``scipy.special.log_softmax`` over the last axis, float64."""
    return scipy.special.log_softmax(_f64(z), axis=-1)


def cross_entropy(z, labels):
    """(loss, dz): loss = -mean_n log_softmax(z)[n, labels[n]], dz = (softmax(z) - onehot) / N."""
    z = _f64(z)
    labels = np.asarray(labels.get() if hasattr(labels, "get") else labels).astype(np.int64)
    n = z.shape[0]
    log_p = log_softmax(z)
    loss = -log_p[np.arange(n), labels].mean()
    onehot = np.zeros_like(z)
    onehot[np.arange(n), labels] = 1.0
    return float(loss), (softmax(z) - onehot) / n
