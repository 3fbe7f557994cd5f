"""Transpose (adjoint) checks: <A x, y> == <x, A^T y> for every linear pair of the engine.

The deconvnet runs every layer backwards through its transpose, so each pair
below must be an exact transpose: the relative error
|<A x, y> - <x, A^T y>| / (||A x|| ||y||) stays at float64 round-off (< 1e-12),
and at float32 round-off (< 1e-5) in single precision.
"""
import zlib

import numpy as np
import pytest

from zfraw import functional as F
from zfraw.gradcheck import adjoint_error, tie_free

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
DTYPES = [np.float64, np.float32]


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def assert_adjoint(A, AT, x, y):
    err = adjoint_error(A, AT, x, y)
    tol = TOL[np.dtype(x.dtype)]
    assert err < tol, f"adjoint error {err:.3g} >= {tol:g}"


def test_adjoint_error_detects_a_wrong_transpose():
    rng = rng_for("wrong")
    M = randn(rng, (5, 7))
    x, y = randn(rng, (7,)), randn(rng, (5,))
    assert adjoint_error(lambda v: M @ v, lambda u: M.T @ u, x, y) < 1e-14
    M2 = M.copy()
    M2[2, 3] += 1e-3
    assert adjoint_error(lambda v: M @ v, lambda u: M2.T @ u, x, y) > 1e-6


# ============================================================== im2col / col2im

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape, kh, kw, stride, pad",
    [
        ((2, 3, 6, 6), 3, 3, 1, 1),
        ((1, 2, 7, 8), 2, 3, (2, 1), (0, 1)),
        ((2, 1, 9, 9), 3, 3, 2, 1),
        ((1, 3, 5, 7), 5, 5, 1, 2),
        ((2, 2, 8, 6), 2, 2, 3, 1),
        ((1, 1, 4, 4), 4, 4, 1, 0),
    ],
)
def test_im2col_col2im(shape, kh, kw, stride, pad, dtype):
    rng = rng_for("im2col", shape, kh, kw, stride, pad)
    x = randn(rng, shape, dtype)
    y = randn(rng, F.im2col(x, kh, kw, stride, pad).shape, dtype)
    assert_adjoint(
        lambda v: F.im2col(v, kh, kw, stride, pad),
        lambda u: F.col2im(u, shape, kh, kw, stride, pad),
        x, y,
    )


# ============================================================== conv2d / conv_transpose2d

CONV_CASES = [
    # x shape, w shape, stride, pad, groups
    ((2, 3, 7, 7), (4, 3, 3, 3), 1, 1, 1),
    ((2, 4, 9, 8), (6, 2, 3, 3), 2, 1, 2),
    ((1, 6, 8, 9), (3, 2, 2, 3), (2, 3), (1, 0), 3),
    ((2, 3, 11, 11), (5, 3, 7, 7), 2, 1, 1),
    ((1, 4, 10, 10), (4, 1, 3, 3), 3, 0, 4),
    ((2, 2, 5, 4), (3, 2, 5, 4), 1, 0, 1),
]


def _output_shapes(x_shape, w_shape, stride, pad, groups):
    """Every (H, W) that a convolution with this geometry maps onto the same (Ho, Wo)."""
    (sh, sw) = stride if isinstance(stride, tuple) else (stride, stride)
    (ph, pw) = pad if isinstance(pad, tuple) else (pad, pad)
    _, _, kh, kw = w_shape
    ho = F.conv_output_size(x_shape[2], kh, sh, ph)
    wo = F.conv_output_size(x_shape[3], kw, sw, pw)
    h0, w0 = (ho - 1) * sh - 2 * ph + kh, (wo - 1) * sw - 2 * pw + kw
    return [(h, w) for h in range(h0, h0 + sh) for w in range(w0, w0 + sw)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, pad, groups", CONV_CASES)
def test_conv2d_conv_transpose2d(x_shape, w_shape, stride, pad, groups, dtype):
    rng = rng_for("conv", x_shape, w_shape, stride, pad, groups)
    w = randn(rng, w_shape, dtype)
    for hw in _output_shapes(x_shape, w_shape, stride, pad, groups):
        shape = x_shape[:2] + hw
        x = randn(rng, shape, dtype)
        y = randn(rng, F.conv2d(x, w, None, stride, pad, groups).shape, dtype)
        assert_adjoint(
            lambda v: F.conv2d(v, w, None, stride, pad, groups),
            lambda u: F.conv_transpose2d(u, w, stride, pad, groups, output_shape=hw),
            x, y,
        )


@pytest.mark.parametrize("x_shape, w_shape, stride, pad, groups", CONV_CASES)
def test_conv2d_in_w_and_its_weight_gradient(x_shape, w_shape, stride, pad, groups):
    """w -> conv2d(x, w) is linear too; its transpose is conv2d_backward's dw."""
    rng = rng_for("conv-w", x_shape, w_shape, stride, pad, groups)
    x, w = randn(rng, x_shape), randn(rng, w_shape)
    y = randn(rng, F.conv2d(x, w, None, stride, pad, groups).shape)
    assert_adjoint(
        lambda v: F.conv2d(x, v, None, stride, pad, groups),
        lambda u: F.conv2d_backward(u, x, w, stride, pad, groups)[1],
        w, y,
    )


@pytest.mark.parametrize("x_shape, w_shape, stride, pad, groups", CONV_CASES[:3])
def test_conv_matrix_transpose(x_shape, w_shape, stride, pad, groups):
    rng = rng_for("matrix", x_shape, w_shape)
    w = randn(rng, w_shape)
    C = F.conv_matrix(w, x_shape[1:], stride, pad, groups)
    x = randn(rng, (1,) + x_shape[1:])
    y = randn(rng, F.conv2d(x, w, None, stride, pad, groups).shape)
    assert_adjoint(
        lambda v: F.conv2d(v, w, None, stride, pad, groups),
        lambda u: (C.T @ u.ravel()).reshape(x.shape),
        x, y,
    )


# ============================================================== pooling selection / unpooling

POOL_CASES = [
    # x shape, size, stride, pad, ceil_mode
    ((2, 3, 6, 6), 2, None, 0, False),
    ((2, 2, 7, 7), 3, 2, 0, True),
    ((1, 2, 8, 7), 3, 2, 1, True),
    ((2, 1, 6, 6), 3, 1, 1, False),
    ((1, 3, 9, 10), (2, 3), (3, 2), (1, 1), False),
]


def _select(x, switches):
    """The pooling selection as a linear map of x (for fixed switches): x[n, c].flat[switches]."""
    n, c = x.shape[:2]
    picked = np.take_along_axis(x.reshape(n, c, -1), switches.reshape(n, c, -1), axis=2)
    return picked.reshape(switches.shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES)
def test_pool_selection_and_unpool(shape, size, stride, pad, ceil_mode, dtype):
    rng = rng_for("pool", shape, size, stride, pad, ceil_mode)
    # switches from a quantized input, so overlapping windows share winners (collisions)
    q = rng.integers(-2, 3, size=shape).astype(dtype)
    pooled, switches = F.max_pool2d(q, size, stride, pad, ceil_mode)
    np.testing.assert_array_equal(_select(q, switches), pooled)  # the selection is what pooling picks
    x, y = randn(rng, shape, dtype), randn(rng, switches.shape, dtype)
    assert_adjoint(
        lambda v: _select(v, switches),
        lambda u: F.max_unpool2d(u, switches, shape),
        x, y,
    )


@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES)
def test_max_pool2d_is_locally_its_selection(shape, size, stride, pad, ceil_mode):
    """At a tie-free input, max_pool2d(x + d) == select(x + d) for small d: the map is piecewise linear."""
    rng = rng_for("local", shape, size)
    x = tie_free(shape, rng)
    _, switches = F.max_pool2d(x, size, stride, pad, ceil_mode)
    d = 1e-4 / np.prod(shape) * randn(rng, shape)
    np.testing.assert_array_equal(F.max_pool2d(x + d, size, stride, pad, ceil_mode)[0], _select(x + d, switches))


# ============================================================== linear

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, n_in, n_out", [(1, 4, 3), (5, 9, 7), (3, 32, 10)])
def test_linear_in_x_and_in_w(n, n_in, n_out, dtype):
    rng = rng_for("linear", n, n_in, n_out)
    x, w = randn(rng, (n, n_in), dtype), randn(rng, (n_out, n_in), dtype)
    y = randn(rng, (n, n_out), dtype)
    assert_adjoint(lambda v: F.linear(v, w), lambda u: F.linear_backward(u, x, w)[0], x, y)
    assert_adjoint(lambda v: F.linear(x, v), lambda u: F.linear_backward(u, x, w)[1], w, y)
