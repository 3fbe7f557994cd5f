"""Property tests (hypothesis): the ops against the references over random geometries.

Hypothesis draws the shapes, kernel sizes, strides, pads (as ints or (h, w)
pairs), groups, ceil modes and dtypes, plus a seed for the values; arrays stay
tiny so that a few hundred cases per op run in seconds.  Failures shrink to the
smallest geometry that breaks.
"""
import numpy as np
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from zfraw import functional as F
from zfraw import reference as R
from zfraw.gradcheck import adjoint_error, relative_error

TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}
MANY = settings(max_examples=800, deadline=None)
SOME = settings(max_examples=300, deadline=None)

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float64, np.float32])


def _int_or_pair(draw, h, w):
    """(h, w) given as an int when both are equal and hypothesis says so, else as a pair."""
    if h == w and draw(st.booleans()):
        return h
    return (h, w)


@st.composite
def conv_geometry(draw):
    """A conv call: shapes of x and w, stride, pad (int or pair) and groups."""
    groups = draw(st.integers(1, 3))
    cg, fg = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 8))
    w = draw(st.integers(max(1, kw - 2 * pw), 8))
    n = draw(st.integers(1, 2))
    return dict(
        x_shape=(n, cg * groups, h, w), w_shape=(fg * groups, cg, kh, kw),
        stride=_int_or_pair(draw, sh, sw), pad=_int_or_pair(draw, ph, pw), groups=groups,
    )


@st.composite
def pool_geometry(draw):
    """A max-pool call: x shape, window, stride (None = window), pad <= window/2, ceil mode."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9))
    w = draw(st.integers(max(1, kw - 2 * pw), 9))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    if stride is not None:
        stride = _int_or_pair(draw, *stride)
    return dict(
        shape=(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w),
        size=_int_or_pair(draw, kh, kw), stride=stride, pad=_int_or_pair(draw, ph, pw),
        ceil_mode=draw(st.booleans()),
    )


def _assert_close(out, ref, dtype):
    dtype = np.dtype(dtype)
    assert out.dtype == dtype and out.shape == ref.shape
    err = relative_error(out, ref)
    assert err < TOL[dtype], f"relative error {err:.3g}"


def _pairs(v):
    return v if isinstance(v, tuple) else (v, v)


# ============================================================== convolution

@MANY
@given(conv_geometry(), dtypes, seeds, st.booleans())
def test_conv2d_matches_reference(g, dtype, seed, bias):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(g["x_shape"]).astype(dtype)
    w = rng.standard_normal(g["w_shape"]).astype(dtype)
    b = rng.standard_normal(g["w_shape"][0]).astype(dtype) if bias else None
    out = F.conv2d(x, w, b, stride=g["stride"], pad=g["pad"], groups=g["groups"])
    _assert_close(out, R.conv2d(x, w, b, g["stride"], g["pad"], g["groups"]), dtype)


@MANY
@given(conv_geometry(), dtypes, seeds, st.integers(0, 2), st.integers(0, 2))
def test_conv_transpose2d_matches_reference_and_is_the_adjoint(g, dtype, seed, extra_h, extra_w):
    rng = np.random.default_rng(seed)
    (sh, sw), (ph, pw) = _pairs(g["stride"]), _pairs(g["pad"])
    w = rng.standard_normal(g["w_shape"]).astype(dtype)
    n, c, h, wd = g["x_shape"]
    y_shape = R.conv2d(np.ones(g["x_shape"]), np.ones(g["w_shape"]), None, g["stride"], g["pad"], g["groups"]).shape
    y = rng.standard_normal(y_shape).astype(dtype)
    # any output size in [smallest, smallest + stride) convolves back to y's size
    kh, kw = g["w_shape"][2:]
    hw = ((y_shape[2] - 1) * sh - 2 * ph + kh + extra_h % sh, (y_shape[3] - 1) * sw - 2 * pw + kw + extra_w % sw)
    assume(min(hw) >= 1)
    out = F.conv_transpose2d(y, w, g["stride"], g["pad"], g["groups"], output_shape=hw)
    _assert_close(out, R.conv_transpose2d(y, w, g["stride"], g["pad"], g["groups"], hw), dtype)
    x = rng.standard_normal((n, c) + hw).astype(dtype)
    err = adjoint_error(lambda v: F.conv2d(v, w, None, g["stride"], g["pad"], g["groups"]),
                        lambda u: F.conv_transpose2d(u, w, g["stride"], g["pad"], g["groups"], output_shape=hw),
                        x, y)
    assert err < TOL[np.dtype(dtype)]


@MANY
@given(conv_geometry(), seeds)
def test_conv2d_backward_weight_and_bias(g, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(g["x_shape"]), rng.standard_normal(g["w_shape"])
    dy = rng.standard_normal(F.conv2d(x, w, None, g["stride"], g["pad"], g["groups"]).shape)
    dx, dw, db = F.conv2d_backward(dy, x, w, g["stride"], g["pad"], g["groups"])
    _assert_close(dx, R.conv_transpose2d(dy, w, g["stride"], g["pad"], g["groups"], g["x_shape"]), np.float64)
    # dw[f, c, i, j] = sum over n and output pixels of dy * (the input pixel under tap (i, j))
    cols = R.im2col(x, *g["w_shape"][2:], g["stride"], g["pad"])  # (N, C*kh*kw, P)
    f, cg = g["w_shape"][:2]
    fg, k = f // g["groups"], cg * g["w_shape"][2] * g["w_shape"][3]
    ref_dw = np.zeros((f, k))
    for fi in range(f):
        grp = fi // fg
        ref_dw[fi] = np.einsum("np,nkp->k", dy[:, fi].reshape(dy.shape[0], -1), cols[:, grp * k:(grp + 1) * k])
    _assert_close(dw, ref_dw.reshape(g["w_shape"]), np.float64)
    _assert_close(db, dy.sum(axis=(0, 2, 3)), np.float64)


@SOME
@given(conv_geometry(), seeds)
def test_conv_matrix_matches_reference(g, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(g["w_shape"])
    C = F.conv_matrix(w, g["x_shape"][1:], g["stride"], g["pad"], g["groups"])
    ref = R.conv_matrix(w, g["x_shape"][1:], g["stride"], g["pad"], g["groups"])
    assert C.shape == ref.shape
    np.testing.assert_array_equal(C.toarray(), ref)  # each entry is one weight: exact


@MANY
@given(conv_geometry(), dtypes, seeds)
def test_im2col_matches_loops_and_col2im_is_its_adjoint(g, dtype, seed):
    rng = np.random.default_rng(seed)
    kh, kw = g["w_shape"][2:]
    x = rng.standard_normal(g["x_shape"]).astype(dtype)
    cols = F.im2col(x, kh, kw, g["stride"], g["pad"])
    np.testing.assert_array_equal(cols, R.im2col(x, kh, kw, g["stride"], g["pad"]).astype(dtype))
    y = rng.standard_normal(cols.shape).astype(dtype)
    _assert_close(F.col2im(y, x.shape, kh, kw, g["stride"], g["pad"]),
                  R.col2im(y, x.shape, kh, kw, g["stride"], g["pad"]), dtype)


# ============================================================== pooling

def _pool_input(rng, shape, kind, dtype):
    if kind == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if kind == "negative":
        return (-5.0 - np.abs(rng.standard_normal(shape))).astype(dtype)
    if kind == "ties":
        return rng.integers(-2, 1, size=shape).astype(dtype)
    x = rng.standard_normal(shape)
    special = rng.random(shape)
    x[special < 0.15] = np.nan
    x[(special >= 0.15) & (special < 0.45)] = -np.inf
    return x.astype(dtype)


@MANY
@given(pool_geometry(), dtypes, seeds, st.sampled_from(["normal", "negative", "ties", "special"]))
def test_max_pool2d_values_and_switches(g, dtype, seed, kind):
    rng = np.random.default_rng(seed)
    x = _pool_input(rng, g["shape"], kind, dtype)
    y, switches = F.max_pool2d(x, g["size"], stride=g["stride"], pad=g["pad"], ceil_mode=g["ceil_mode"])
    ref_y, ref_s = R.max_pool2d(x, g["size"], g["stride"], g["pad"], g["ceil_mode"])
    assert y.dtype == dtype and switches.dtype == np.int64
    np.testing.assert_array_equal(y, ref_y.astype(dtype))
    np.testing.assert_array_equal(switches, ref_s)
    assert y.shape[2:] == (
        F.pool_output_size(g["shape"][2], _pairs(g["size"])[0], _pairs(g["stride"] or g["size"])[0],
                           _pairs(g["pad"])[0], g["ceil_mode"]),
        F.pool_output_size(g["shape"][3], _pairs(g["size"])[1], _pairs(g["stride"] or g["size"])[1],
                           _pairs(g["pad"])[1], g["ceil_mode"]),
    )


@MANY
@given(pool_geometry(), dtypes, seeds)
def test_max_unpool2d_matches_loops_and_is_the_selections_adjoint(g, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = g["shape"]
    q = rng.integers(-1, 2, size=shape).astype(dtype)  # ties: overlapping windows collide
    _, switches = F.max_pool2d(q, g["size"], g["stride"], g["pad"], g["ceil_mode"])
    dy = rng.standard_normal(switches.shape).astype(dtype)
    out = F.max_unpool2d(dy, switches, shape)
    _assert_close(out, R.max_unpool2d(dy, switches, shape), dtype)
    n, c = shape[:2]

    def select(v):
        return np.take_along_axis(v.reshape(n, c, -1), switches.reshape(n, c, -1), axis=2).reshape(switches.shape)

    x = rng.standard_normal(shape).astype(dtype)
    assert adjoint_error(select, lambda u: F.max_unpool2d(u, switches, shape), x, dy) < TOL[np.dtype(dtype)]


@settings(max_examples=1000, deadline=None)
@given(st.integers(1, 40), st.integers(1, 7), st.integers(1, 5), st.integers(0, 3), st.booleans())
def test_pool_output_size_matches_reference(size, k, stride, pad, ceil_mode):
    assume(2 * pad <= k and size + 2 * pad >= k)
    out = F.pool_output_size(size, k, stride, pad, ceil_mode)
    assert out == R.pool_output_size(size, k, stride, pad, ceil_mode)
    assert out >= 1 and (out - 1) * stride - pad < size  # the last window starts in the input


# ============================================================== local response norm

@MANY
@given(
    st.tuples(st.integers(1, 2), st.integers(1, 9), st.integers(1, 3), st.integers(1, 3)),
    st.integers(1, 8), st.floats(0.0, 2.0), st.floats(0.25, 1.5), st.floats(0.5, 3.0), dtypes, seeds,
)
def test_local_response_norm_matches_reference(shape, size, alpha, beta, k, dtype, seed):
    rng = np.random.default_rng(seed)
    x = (2 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    _assert_close(F.local_response_norm(x, size, alpha, beta, k), R.local_response_norm(x, size, alpha, beta, k), dtype)
    _assert_close(F.local_response_norm_backward(dy, x, size, alpha, beta, k),
                  R.local_response_norm_backward(dy, x, size, alpha, beta, k), dtype)


# ============================================================== softmax, cross-entropy, linear

@MANY
@given(st.integers(1, 6), st.integers(1, 12), st.floats(0.01, 100.0), dtypes, seeds)
def test_cross_entropy_and_softmax_match_scipy(n, k, scale, dtype, seed):
    rng = np.random.default_rng(seed)
    z = (scale * rng.standard_normal((n, k))).astype(dtype)
    labels = rng.integers(0, k, size=n)
    _assert_close(F.softmax(z), R.softmax(z), dtype)
    loss, dz = F.cross_entropy(z, labels)
    ref_loss, ref_dz = R.cross_entropy(z, labels)
    assert abs(loss - ref_loss) <= TOL[np.dtype(dtype)] * max(1.0, abs(ref_loss))
    assert dz.dtype == dtype
    assert np.abs(dz - ref_dz).max() <= TOL[np.dtype(dtype)]  # dz entries are at most 1/n


@MANY
@given(st.integers(1, 5), st.integers(1, 12), st.integers(1, 9), st.booleans(), dtypes, seeds)
def test_linear_matches_reference(n, n_in, n_out, bias, dtype, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, n_in)).astype(dtype), rng.standard_normal((n_out, n_in)).astype(dtype)
    b = rng.standard_normal(n_out).astype(dtype) if bias else None
    _assert_close(F.linear(x, w, b), R.linear(x, w, b), dtype)
    dy = rng.standard_normal((n, n_out)).astype(dtype)
    for got, ref in zip(F.linear_backward(dy, x, w), R.linear_backward(dy, x, w)):
        _assert_close(got, ref, dtype)
