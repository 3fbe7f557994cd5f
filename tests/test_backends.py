"""Every backend against ``numpy``, through the public functional ops.

Each test draws seeded random inputs (hypothesis picks the geometry: batch,
channels, sizes, kernel, stride, padding, ceil mode, groups, dtype), runs the op
under ``zfraw.use_backend(name)`` on arrays moved with ``zfraw.to_device``, and
compares with the ``numpy`` backend on the same inputs:

* im2col and max-pooling (values and switches) must be bit-identical: they only
  copy and compare;
* everything else within round-off, ||out - ref|| / ||ref|| < 1e-5 in float32
  and < 1e-12 in float64;
* outputs are C-contiguous and of the input's dtype (switches int64);
* the transpose identities ``<A x, y> == <x, A^T y>`` hold on each backend
  (im2col/col2im, pool selection/unpool, conv2d/conv_transpose2d);
* pooling inputs with ties (values quantized to a few levels), NaN and -inf.

The numba backend's outputs are poisoned (NaN, switches -1) before its kernels
run, so an element a kernel fails to write shows.  GPU backends carry the
``gpu`` mark and skip where CuPy or a GPU is missing (see conftest.py).
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zfraw
from zfraw import functional as F
from conftest import backend_params

BACKENDS = backend_params()
DTYPES = (np.float32, np.float64)
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
EXAMPLES = settings(max_examples=40)


# ============================================================== helpers

@contextlib.contextmanager
def poisoned(backend):
    """Make the numba kernels allocate outputs pre-filled with NaN (floats) or -1 (ints)."""
    if backend != "numba":
        yield
        return
    from zfraw.kernels import cpu

    def empty(shape, dtype=float):
        out = np.empty(shape, dtype=dtype)
        out.fill(np.nan if np.dtype(dtype).kind == "f" else -1)
        return out

    saved, cpu._empty = cpu._empty, empty
    try:
        yield
    finally:
        cpu._empty = saved


def _check_layout(out, dtype):
    outs = out if isinstance(out, tuple) else (out,)
    for a in outs:
        if a is None:
            continue
        assert a.flags.c_contiguous, f"output of shape {a.shape} is not C-contiguous"
        if a.dtype.kind == "f":
            assert a.dtype == dtype, f"output dtype {a.dtype}, input dtype {np.dtype(dtype)}"


def run(backend, fn, *args, **kwargs):
    """fn(*args, **kwargs) on ``backend`` (array args moved there), results back on the host.

    On a backend under test (not the ``numpy`` reference) it also checks that every
    array output is C-contiguous and that floats have the first array argument's dtype.
    """
    dtype = next(a.dtype for a in args if isinstance(a, np.ndarray))
    with zfraw.use_backend(backend), poisoned(backend):
        out = fn(*zfraw.to_device(list(args)), **kwargs)
        if backend != "numpy":
            _check_layout(out, dtype)
        return zfraw.to_host(out)


def both(backend, fn, *args, **kwargs):
    """(result on backend, result on numpy) of the same call."""
    return run(backend, fn, *args, **kwargs), run("numpy", fn, *args, **kwargs)


def assert_close(out, ref, name="output"):
    """||out - ref|| / ||ref|| under the dtype's round-off bound; NaNs must sit in the same places."""
    assert out.shape == ref.shape, f"{name}: shape {out.shape} vs numpy {ref.shape}"
    assert out.dtype == ref.dtype, f"{name}: dtype {out.dtype} vs numpy {ref.dtype}"
    nan = np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(out), nan, err_msg=f"{name}: NaNs differ")
    a, b = out[~nan].astype(np.float64), ref[~nan].astype(np.float64)
    scale = np.linalg.norm(b)
    err = np.linalg.norm(a - b)
    bound = RTOL[ref.dtype]
    assert err <= bound * scale or (scale == 0 and err == 0), (
        f"{name}: relative error {err / max(scale, 1e-300):.3g} exceeds {bound:g} ({ref.dtype})"
    )


def dot(a, b):
    return np.vdot(a.astype(np.float64).ravel(), b.astype(np.float64).ravel())


def assert_adjoint(ax, y, x, aty, what):
    """<A x, y> == <x, A^T y> to round-off, on the scale ||Ax|| ||y|| + ||x|| ||A^T y||
    (Cauchy-Schwarz: what the products could add up to without cancellation)."""
    lhs, rhs = dot(ax, y), dot(x, aty)
    norm = lambda a: np.linalg.norm(a.astype(np.float64))  # noqa: E731
    scale = norm(ax) * norm(y) + norm(x) * norm(aty)
    assert abs(lhs - rhs) <= RTOL[x.dtype] * scale, (
        f"{what}: <Ax, y> = {lhs!r} but <x, A^T y> = {rhs!r} (scale {scale:.3g})"
    )


# ============================================================== geometry strategies

@st.composite
def conv_geometry(draw, groups=False):
    """(x shape, kh, kw, stride, pad, groups, dtype, seed) with a window that fits."""
    g = draw(st.integers(1, 3)) if groups else 1
    n = draw(st.integers(1, 3))
    c = g * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), kh + 9))
    w = draw(st.integers(max(1, kw - 2 * pw), kw + 9))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    return (n, c, h, w), kh, kw, (sh, sw), (ph, pw), g, dtype, seed


@st.composite
def pool_geometry(draw):
    """(x shape, size, stride, pad, ceil_mode, dtype, seed); pad at most half the window,
    symmetric (ph, pw) or per side (top, bottom, left, right)."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    top, left = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    if draw(st.booleans()):
        pad = (top, left)
        bottom, right = top, left
    else:
        bottom, right = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
        pad = (top, bottom, left, right)
    h = draw(st.integers(max(1, kh - top - bottom), kh + 10))
    w = draw(st.integers(max(1, kw - left - right), kw + 10))
    ceil_mode = draw(st.booleans())
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    return (n, c, h, w), (kh, kw), (sh, sw), pad, ceil_mode, dtype, seed


def randn(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def pool_input(rng, shape, dtype, kind):
    """Random pooling input: plain normal, quantized (ties), or with NaN and -inf planted."""
    x = randn(rng, shape, dtype)
    if kind == "ties":
        x = rng.integers(-2, 3, size=shape).astype(dtype)
    elif kind == "nan_inf":
        x[rng.random(shape) < 0.08] = np.nan
        x[rng.random(shape) < 0.15] = -np.inf
        x[0, 0] = -np.inf  # a whole plane of -inf: every switch is the first in-bounds pixel
    return x


# ============================================================== im2col / col2im

@pytest.mark.parametrize("backend", BACKENDS)
@EXAMPLES
@given(geo=conv_geometry())
def test_im2col_col2im_match_numpy(backend, geo):
    shape, kh, kw, stride, pad, _, dtype, seed = geo
    rng = np.random.default_rng(seed)
    x = randn(rng, shape, dtype)
    cols, cols_ref = both(backend, F.im2col, x, kh, kw, stride=stride, pad=pad)
    np.testing.assert_array_equal(cols, cols_ref)  # a pure copy: bit-identical

    c = randn(rng, cols_ref.shape, dtype)
    back, back_ref = both(backend, F.col2im, c, shape, kh, kw, stride=stride, pad=pad)
    assert_close(back, back_ref, "col2im")
    assert_adjoint(cols, c, x, back, "im2col/col2im")


# ============================================================== convolution

@pytest.mark.parametrize("backend", BACKENDS)
@EXAMPLES
@given(geo=conv_geometry(groups=True), n_filters=st.integers(1, 3))
def test_conv2d_and_backward_match_numpy(backend, geo, n_filters):
    shape, kh, kw, stride, pad, groups, dtype, seed = geo
    rng = np.random.default_rng(seed)
    x = randn(rng, shape, dtype)
    w = randn(rng, (groups * n_filters, shape[1] // groups, kh, kw), dtype)
    b = randn(rng, (groups * n_filters,), dtype)
    y, y_ref = both(backend, F.conv2d, x, w, b, stride=stride, pad=pad, groups=groups)
    assert_close(y, y_ref, "conv2d")

    dy = randn(rng, y_ref.shape, dtype)
    grads = run(backend, F.conv2d_backward, dy, x, w, stride=stride, pad=pad, groups=groups)
    grads_ref = run("numpy", F.conv2d_backward, dy, x, w, stride=stride, pad=pad, groups=groups)
    for name, g, g_ref in zip(("dx", "dw", "db"), grads, grads_ref):
        assert_close(g, g_ref, f"conv2d_backward {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@EXAMPLES
@given(geo=conv_geometry(groups=True), n_filters=st.integers(1, 3), extra=st.integers(0, 2))
def test_conv_transpose2d_matches_numpy_and_is_the_adjoint(backend, geo, n_filters, extra):
    shape, kh, kw, (sh, sw), (ph, pw), groups, dtype, seed = geo
    rng = np.random.default_rng(seed)
    n, c, h, wd = shape
    w = randn(rng, (groups * n_filters, c // groups, kh, kw), dtype)
    x = randn(rng, shape, dtype)
    y = run(backend, F.conv2d, x, w, stride=(sh, sw), pad=(ph, pw), groups=groups)
    g = randn(rng, y.shape, dtype)
    # an output size that the stride leaves ambiguous (not always the smallest)
    ho, wo = y.shape[2:]
    h_min, w_min = (ho - 1) * sh - 2 * ph + kh, (wo - 1) * sw - 2 * pw + kw
    out_shape = (max(1, h_min + min(extra, sh - 1)), max(1, w_min + min(extra, sw - 1)))
    xt, xt_ref = both(backend, F.conv_transpose2d, g, w, stride=(sh, sw), pad=(ph, pw),
                      groups=groups, output_shape=out_shape)
    assert_close(xt, xt_ref, "conv_transpose2d")

    xt_here = run(backend, F.conv_transpose2d, g, w, stride=(sh, sw), pad=(ph, pw), groups=groups,
                  output_shape=(h, wd))
    assert_adjoint(y, g, x, xt_here, "conv2d/conv_transpose2d")


# ============================================================== pooling

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["normal", "ties", "nan_inf"])
@EXAMPLES
@given(geo=pool_geometry())
def test_max_pool2d_matches_numpy(backend, kind, geo):
    shape, size, stride, pad, ceil_mode, dtype, seed = geo
    x = pool_input(np.random.default_rng(seed), shape, dtype, kind)
    (y, sw), (y_ref, sw_ref) = both(backend, F.max_pool2d, x, size, stride=stride, pad=pad,
                                    ceil_mode=ceil_mode)
    assert sw.dtype == np.int64 and sw.shape == y_ref.shape
    np.testing.assert_array_equal(y, y_ref)     # NaN == NaN here
    np.testing.assert_array_equal(sw, sw_ref)
    # the switches point at the values they report
    h, w = shape[2:]
    picked = np.take_along_axis(x.reshape(shape[0], shape[1], h * w),
                                sw.reshape(shape[0], shape[1], -1), axis=2).reshape(y.shape)
    np.testing.assert_array_equal(picked, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["normal", "ties"])
@EXAMPLES
@given(geo=pool_geometry())
def test_max_unpool2d_matches_numpy_and_is_the_adjoint(backend, kind, geo):
    shape, size, stride, pad, ceil_mode, dtype, seed = geo
    rng = np.random.default_rng(seed)
    x = pool_input(rng, shape, dtype, kind)
    y, switches = run(backend, F.max_pool2d, x, size, stride=stride, pad=pad, ceil_mode=ceil_mode)
    g = randn(rng, y.shape, dtype)  # overlapping windows make switches collide: unpool sums them
    for window in ({}, {"size": size, "stride": stride, "pad": pad}):
        up, up_ref = both(backend, F.max_unpool2d, g, switches, shape, **window)
        assert_close(up, up_ref, "max_unpool2d")
        assert_adjoint(y, g, x, up, "pool selection/unpool")


# ============================================================== local response norm

@st.composite
def lrn_case(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 9))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    size = draw(st.integers(1, 7))
    alpha = draw(st.sampled_from([1e-4, 1e-2, 0.5]))
    beta = draw(st.sampled_from([0.75, 0.5, 1.3]))
    k = draw(st.sampled_from([2.0, 1.0, 0.5]))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    return (n, c, h, w), dict(size=size, alpha=alpha, beta=beta, k=k), dtype, seed


@pytest.mark.parametrize("backend", BACKENDS)
@EXAMPLES
@given(case=lrn_case())
def test_local_response_norm_and_backward_match_numpy(backend, case):
    shape, params, dtype, seed = case
    rng = np.random.default_rng(seed)
    x = (3 * rng.standard_normal(shape)).astype(dtype)  # big enough that the norm bites
    dy = randn(rng, shape, dtype)
    y, y_ref = both(backend, F.local_response_norm, x, **params)
    assert_close(y, y_ref, "local_response_norm")
    dx, dx_ref = both(backend, F.local_response_norm_backward, dy, x, **params)
    assert_close(dx, dx_ref, "local_response_norm_backward")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, size", [((1, 300, 20, 20), 5), ((2, 7, 33, 40), 4), ((3, 64, 9, 130), 3)])
def test_local_response_norm_many_channels_and_pixels(backend, dtype, shape, size, rng):
    """Bigger planes and channel counts than the hypothesis cases: kernels that
    split the pixels into blocks see several blocks and a partial last one."""
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    dy = randn(rng, shape, dtype)
    params = dict(size=size, alpha=0.1, beta=0.75, k=1.0)
    y, y_ref = both(backend, F.local_response_norm, x, **params)
    assert_close(y, y_ref, "local_response_norm")
    dx, dx_ref = both(backend, F.local_response_norm_backward, dy, x, **params)
    assert_close(dx, dx_ref, "local_response_norm_backward")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_zfnet_shapes_match_numpy(backend, dtype, rng):
    """ZFNet's own geometry, scaled down in batch and channels: conv1 7x7/2 pad 1,
    pool 3x3/2 ceil (110 -> 55), norm size 5, conv2 5x5/2 on 55 -> 26."""
    x = randn(rng, (2, 3, 224, 224), dtype)
    cols, cols_ref = both(backend, F.im2col, x, 7, 7, stride=2, pad=1)
    np.testing.assert_array_equal(cols, cols_ref)
    a = randn(rng, (2, 4, 110, 110), dtype)
    (p, s), (p_ref, s_ref) = both(backend, F.max_pool2d, a, 3, stride=2, ceil_mode=True)
    assert p.shape == (2, 4, 55, 55)
    np.testing.assert_array_equal(p, p_ref)
    np.testing.assert_array_equal(s, s_ref)
    nrm, nrm_ref = both(backend, F.local_response_norm, 10 * p, size=5, alpha=1e-4, beta=0.75, k=2.0)
    assert_close(nrm, nrm_ref, "local_response_norm")
    c2 = randn(rng, (2, 4 * 25, 26 * 26), dtype)
    back, back_ref = both(backend, F.col2im, c2, (2, 4, 55, 55), 5, 5, stride=2)
    assert_close(back, back_ref, "col2im")
