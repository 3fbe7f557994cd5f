"""Vectorized kernels written once for any array module (NumPy or CuPy).

These are the ``numpy`` and ``cupy`` backends' hot paths: a few Python
iterations over the kh*kw window taps, all the work in whole-array operations.
See :mod:`zfraw.kernels` for the kernel signatures.
"""
from __future__ import annotations

import numpy as np

from zfraw.backend import get_array_module


def _windows(xpad, kh, kw, sh, sw, Ho, Wo):
    """Zero-copy view (N, C, kh, kw, Ho, Wo) of every window tap of a padded input."""
    xp = get_array_module(xpad)
    n, c, _, _ = xpad.shape
    s0, s1, s2, s3 = xpad.strides
    return xp.lib.stride_tricks.as_strided(
        xpad, shape=(n, c, kh, kw, Ho, Wo), strides=(s0, s1, s2, s3, s2 * sh, s3 * sw)
    )


def _pad(x, ph_before, ph_after, pw_before, pw_after, value):
    """Copy of x (N, C, H, W) padded on H and W with a constant."""
    xp = get_array_module(x)
    if ph_before == ph_after == pw_before == pw_after == 0:
        return x
    n, c, h, w = x.shape
    out = xp.full((n, c, h + ph_before + ph_after, w + pw_before + pw_after), value, dtype=x.dtype)
    out[:, :, ph_before:ph_before + h, pw_before:pw_before + w] = x
    return out


def _output_size(h, w, kh, kw, sh, sw, ph, pw):
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def im2col(x, kh, kw, sh, sw, ph, pw):
    """x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo): one strided view, one copy."""
    n, c, h, w = x.shape
    Ho, Wo = _output_size(h, w, kh, kw, sh, sw, ph, pw)
    view = _windows(_pad(x, ph, ph, pw, pw, 0), kh, kw, sh, sw, Ho, Wo)
    xp = get_array_module(x)
    # always a fresh C-contiguous copy (a 1x1 window's view could otherwise alias x)
    return xp.array(view, copy=True, order="C").reshape(n, c * kh * kw, Ho * Wo)


def im2col_tile(x, kh, kw, sh, sw, ph, pw):
    """x (N, C, H, W) -> cols (C*kh*kw, N*Ho*Wo), the tile layout: the same strided
    view with the image axis moved next to the output positions, one copy."""
    n, c, h, w = x.shape
    Ho, Wo = _output_size(h, w, kh, kw, sh, sw, ph, pw)
    view = _windows(_pad(x, ph, ph, pw, pw, 0), kh, kw, sh, sw, Ho, Wo).transpose(1, 2, 3, 0, 4, 5)
    xp = get_array_module(x)
    return xp.array(view, copy=True, order="C").reshape(c * kh * kw, n * Ho * Wo)


def _fold(cols6, x_shape, kh, kw, sh, sw, ph, pw):
    """x (N, C, H, W) from a view cols6 (N, C, kh, kw, Ho, Wo) of columns: a loop
    over the kh*kw taps adds each tap's slab back."""
    xp = get_array_module(cols6)
    n, c, h, w = x_shape
    Ho, Wo = cols6.shape[4:]
    xpad = xp.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=cols6.dtype)
    for i in range(kh):
        for j in range(kw):
            xpad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += cols6[:, :, i, j]
    return xp.ascontiguousarray(xpad[:, :, ph:ph + h, pw:pw + w])


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col`: cols (N, C*kh*kw, Ho*Wo) -> x (N, C, H, W)."""
    n, c, h, w = x_shape
    Ho, Wo = _output_size(h, w, kh, kw, sh, sw, ph, pw)
    return _fold(cols.reshape(n, c, kh, kw, Ho, Wo), x_shape, kh, kw, sh, sw, ph, pw)


def col2im_tile(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col_tile`: cols (C*kh*kw, N*Ho*Wo) -> x (N, C, H, W)."""
    n, c, h, w = x_shape
    Ho, Wo = _output_size(h, w, kh, kw, sh, sw, ph, pw)
    cols6 = cols.reshape(c, kh, kw, n, Ho, Wo).transpose(3, 0, 1, 2, 4, 5)
    return _fold(cols6, x_shape, kh, kw, sh, sw, ph, pw)


def relu(x):
    """max(x, 0), elementwise (a NaN stays NaN)."""
    return get_array_module(x).maximum(x, x.dtype.type(0))


def relu_backward(s, x, rule):
    """The signal s through a ReLU whose input was x, by ``rule``: ``backprop``
    s * (x > 0), ``guided`` relu(s) * (x > 0), ``deconvnet`` relu(s) (x unused)."""
    xp = get_array_module(s)
    zero = s.dtype.type(0)
    if rule == "deconvnet":
        return xp.maximum(s, zero)
    if rule == "backprop":
        return xp.where(x > 0, s, zero)
    return xp.where((x > 0) & (s > 0), s, zero)


def max_pool2d(x, kh, kw, sh, sw, ph, pw, Ho, Wo):
    """Max over each window with its switch, by a loop over the kh*kw taps.

    A tap replaces the running maximum when it is strictly greater or NaN, so ties
    keep the first maximum and a NaN wins; padding is -inf and so never wins.  The
    switch starts at the window's first in-bounds pixel (PyTorch's rule, which
    matters only when every value is -inf).  ``ph``, ``pw`` are the top and left
    pads; the bottom and right ones are whatever windows ``Ho``, ``Wo`` reach.
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    hp = max(h + ph, (Ho - 1) * sh + kh)
    wp = max(w + pw, (Wo - 1) * sw + kw)
    xpad = _pad(x, ph, hp - h - ph, pw, wp - w - pw, -np.inf)
    taps = _windows(xpad, kh, kw, sh, sw, Ho, Wo)

    row0 = xp.arange(Ho, dtype=np.int64)[:, None] * sh - ph  # top row of each window
    col0 = xp.arange(Wo, dtype=np.int64)[None, :] * sw - pw
    best = xp.full((n, c, Ho, Wo), -np.inf, dtype=x.dtype)
    switches = xp.broadcast_to(xp.maximum(row0, 0) * w + xp.maximum(col0, 0), (n, c, Ho, Wo)).copy()
    for i in range(kh):
        for j in range(kw):
            tap = taps[:, :, i, j]
            wins = (tap > best) | xp.isnan(tap)
            best = xp.where(wins, tap, best)
            switches = xp.where(wins, (row0 + i) * w + (col0 + j), switches)
    return best, switches


def max_unpool2d(y, switches, h, w, window=None):
    """Scatter-add y into zeros (N, C, H, W) at its switches; ``window`` is not needed here."""
    xp = get_array_module(y)
    n, c = y.shape[:2]
    plane = xp.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1) * (h * w)
    flat = (switches + plane).ravel()
    out = xp.bincount(flat, weights=y.ravel(), minlength=n * c * h * w)
    return out.astype(y.dtype, copy=False).reshape(n, c, h, w)


def _channel_window_sum(a, before, after):
    """s[:, c] = sum of a[:, j] for j in [c - before, c + after] (zero outside)."""
    xp = get_array_module(a)
    n, c, h, w = a.shape
    padded = xp.zeros((n, c + before + after, h, w), dtype=a.dtype)
    padded[:, before:before + c] = a
    total = padded[:, 0:c].copy()
    for d in range(1, before + after + 1):
        total += padded[:, d:d + c]
    return total


def _lrn_scale(x, size, alpha, beta, k):
    """scale_c = k + alpha/size * sum over the window of x_j^2."""
    return k + (alpha / size) * _channel_window_sum(x * x, size // 2, (size - 1) // 2)


def lrn(x, size, alpha, beta, k):
    """b_c = a_c * scale_c ** -beta."""
    return x * _lrn_scale(x, size, alpha, beta, k) ** (-beta)


def lrn_backward(dy, x, size, alpha, beta, k):
    """da_c = dy_c scale_c^-beta - 2 alpha beta / size * a_c * sum_{j: c in win(j)} dy_j a_j scale_j^(-beta-1)."""
    scale = _lrn_scale(x, size, alpha, beta, k)
    scale_pow = scale ** (-beta)
    inner = dy * x * scale_pow / scale
    # c lies in the window of j exactly when j lies in [c - after, c + before]
    back = _channel_window_sum(inner, (size - 1) // 2, size // 2)
    return dy * scale_pow - (2.0 * alpha * beta / size) * x * back


#: elements per block of :func:`sgd_update` (4 MiB of float32: the five passes reuse a block in cache)
SGD_BLOCK = 2**20


def sgd_update(w, g, v, lr, momentum, decay):
    """One SGD step in place: v <- momentum v - lr g - decay w, then w <- w + v.

    w, g, v C-contiguous, same shape and dtype.  Walks them in blocks of
    :data:`SGD_BLOCK` elements with ``out=`` ufuncs into one scratch block, so
    no temporary is the size of a parameter (fc6 holds 38 M weights).
    """
    xp = get_array_module(w)
    w, g, v = w.reshape(-1), g.reshape(-1), v.reshape(-1)
    scratch = xp.empty(min(SGD_BLOCK, w.size), dtype=w.dtype)
    for i in range(0, w.size, SGD_BLOCK):
        w_blk, g_blk, v_blk = w[i:i + SGD_BLOCK], g[i:i + SGD_BLOCK], v[i:i + SGD_BLOCK]
        tmp = scratch[:w_blk.size]
        v_blk *= momentum
        xp.multiply(g_blk, lr, out=tmp)
        v_blk -= tmp
        if decay:
            xp.multiply(w_blk, decay, out=tmp)
            v_blk -= tmp
        w_blk += v_blk
