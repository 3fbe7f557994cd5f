"""Every op of zfraw.functional against the independent float64 references of zfraw.reference.

Inputs are seeded random draws over many shapes; relative errors
||out - ref|| / ||ref|| must stay under 1e-12 in float64 and 1e-5 in float32.
Outputs the op allocates with ``empty`` are poisoned with NaN first (the
``poison`` fixture), so an element a kernel forgets to write shows up.
"""
import zlib

import numpy as np
import pytest
import scipy.sparse

import zfraw
from zfraw import functional as F
from zfraw import reference as R
from zfraw.gradcheck import relative_error

DTYPES = [np.float64, np.float32]
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 1e-5}


def rng_for(*key):
    """A generator seeded from the test case (a CRC of its parameters), so each case
    draws its own inputs, the same in every run."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, shape, dtype=np.float64):
    return rng.standard_normal(shape).astype(dtype)


def assert_close(out, ref, dtype):
    """dtype kept, shape equal and ||out - ref|| / ||ref|| under the dtype's tolerance."""
    dtype = np.dtype(dtype)
    assert out.dtype == dtype, f"dtype {out.dtype}, expected {dtype}"
    assert out.shape == ref.shape, f"shape {out.shape}, expected {ref.shape}"
    assert np.all(np.isfinite(out)), "non-finite values (an unwritten element?)"
    err = relative_error(out, ref)
    assert err < TOL[dtype], f"relative error {err:.3g} >= {TOL[dtype]:g}"


@pytest.fixture
def poison(monkeypatch):
    """np.empty returns NaN-filled float arrays (and -1-filled int arrays) during the test."""
    real_empty = np.empty

    def poisoned(shape, dtype=float, order="C", **kwargs):
        out = real_empty(shape, dtype, order, **kwargs)
        kind = np.dtype(dtype).kind
        if kind == "f":
            out.fill(np.nan)
        elif kind in "iu":
            out.fill(-1)
        return out

    monkeypatch.setattr(np, "empty", poisoned)
    yield


@pytest.fixture
def small_workspace():
    """A column-buffer budget of one byte: every convolution works one image at a time."""
    old = zfraw.set_workspace_bytes(1)
    yield
    zfraw.set_workspace_bytes(old)


# ============================================================== im2col / col2im

IM2COL_CASES = [
    # x shape, kh, kw, stride, pad
    ((1, 1, 5, 5), 3, 3, 1, 0),
    ((2, 3, 6, 7), 3, 2, 1, 1),
    ((2, 2, 7, 5), 2, 3, (2, 1), (1, 0)),
    ((3, 2, 8, 8), 3, 3, 2, 1),
    ((1, 4, 9, 6), 4, 1, (3, 2), (2, 1)),
    ((2, 1, 4, 4), 4, 4, 1, 0),
    ((1, 2, 5, 6), 1, 1, 2, 0),
    ((2, 3, 6, 6), 2, 2, 3, 2),  # stride larger than the window: gaps
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kh, kw, stride, pad", IM2COL_CASES)
def test_im2col_matches_loop_definition(shape, kh, kw, stride, pad, dtype, poison):
    x = randn(rng_for(shape, kh, kw, stride, pad), shape, dtype)
    cols = F.im2col(x, kh, kw, stride, pad)
    np.testing.assert_array_equal(cols, R.im2col(x, kh, kw, stride, pad).astype(dtype))
    assert cols.dtype == dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, kh, kw, stride, pad", IM2COL_CASES)
def test_col2im_matches_loop_definition(shape, kh, kw, stride, pad, dtype, poison):
    ref_cols_shape = R.im2col(np.ones(shape), kh, kw, stride, pad).shape
    cols = randn(rng_for("col2im", shape, stride, pad), ref_cols_shape, dtype)
    assert_close(F.col2im(cols, shape, kh, kw, stride, pad), R.col2im(cols, shape, kh, kw, stride, pad), dtype)


# ============================================================== conv2d

CONV_CASES = [
    # x shape, w shape, stride, pad, groups
    ((1, 1, 5, 5), (1, 1, 3, 3), 1, 0, 1),
    ((2, 3, 8, 7), (4, 3, 3, 3), 1, 1, 1),
    ((2, 3, 9, 9), (5, 3, 3, 2), (2, 1), (1, 0), 1),  # rectangular kernel, mixed stride/pad
    ((2, 4, 10, 9), (6, 2, 5, 3), 2, (2, 1), 2),      # AlexNet-like groups=2
    ((1, 6, 7, 8), (6, 2, 3, 3), 1, 1, 3),
    ((2, 4, 6, 6), (4, 1, 3, 3), 2, 1, 4),            # depthwise
    ((3, 2, 11, 11), (3, 2, 7, 7), 2, 1, 1),          # conv1-like 7x7/2 pad 1
    ((2, 5, 6, 5), (3, 5, 1, 1), 1, 0, 1),            # 1x1
    ((1, 2, 7, 7), (2, 2, 2, 2), 3, 0, 1),            # stride beyond the kernel
    ((2, 2, 3, 4), (3, 2, 3, 4), 1, 0, 1),            # one output pixel
    ((1, 3, 4, 6), (2, 3, 5, 5), 1, 2, 1),            # kernel larger than the input
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("x_shape, w_shape, stride, pad, groups", CONV_CASES)
def test_conv2d_matches_scipy_correlate(x_shape, w_shape, stride, pad, groups, bias, dtype, poison):
    rng = rng_for(x_shape, w_shape, stride, pad, groups, bias)
    x, w = randn(rng, x_shape, dtype), randn(rng, w_shape, dtype)
    b = randn(rng, (w_shape[0],), dtype) if bias else None
    y = F.conv2d(x, w, b, stride=stride, pad=pad, groups=groups)
    assert_close(y, R.conv2d(x, w, b, stride, pad, groups), dtype)


@pytest.mark.parametrize("x_shape, w_shape, stride, pad, groups", CONV_CASES[1:5])
def test_conv2d_chunked_equals_whole_batch(x_shape, w_shape, stride, pad, groups, small_workspace):
    rng = rng_for("chunks", x_shape, w_shape)
    x = randn(rng, (5,) + x_shape[1:])
    w, b = randn(rng, w_shape), randn(rng, (w_shape[0],))
    assert_close(F.conv2d(x, w, b, stride, pad, groups), R.conv2d(x, w, b, stride, pad, groups), np.float64)
    y = F.conv_transpose2d(R.conv2d(x, w, None, stride, pad, groups), w, stride, pad, groups, x.shape)
    ref = R.conv_transpose2d(R.conv2d(x, w, None, stride, pad, groups), w, stride, pad, groups, x.shape)
    assert_close(y, ref, np.float64)
    # the weight gradient accumulates over the chunks
    dy = randn(rng, R.conv2d(x, w, None, stride, pad, groups).shape)
    _, dw, db = F.conv2d_backward(dy, x, w, stride, pad, groups)
    dw_per_image = [F.conv2d_backward(dy[i:i + 1], x[i:i + 1], w, stride, pad, groups)[1] for i in range(len(x))]
    assert_close(dw, np.sum(dw_per_image, axis=0), np.float64)
    assert_close(db, dy.sum(axis=(0, 2, 3)), np.float64)


def test_conv2d_accepts_non_contiguous_views():
    rng = rng_for("views")
    base = randn(rng, (3, 7, 6, 2))
    x = base.transpose(3, 0, 1, 2)[:, :, ::2]  # (2, 3, 4, 6) with odd strides
    w = randn(rng, (4, 6, 2, 2)).transpose(0, 1, 2, 3)[:, ::2]  # (4, 3, 2, 2), a strided view
    assert_close(F.conv2d(x, w, pad=1), R.conv2d(x, w, None, 1, 1), np.float64)


# ============================================================== conv_transpose2d

def _valid_output_shapes(y_shape, w_shape, stride, pad):
    """Every (H, W) whose convolution has y's spatial size."""
    (sh, sw), (ph, pw) = R._pair(stride), R._pair(pad)
    _, _, kh, kw = w_shape
    h0 = (y_shape[2] - 1) * sh - 2 * ph + kh
    w0 = (y_shape[3] - 1) * sw - 2 * pw + kw
    return [(h, w) for h in range(h0, h0 + sh) for w in range(w0, w0 + sw) if h > 0 and w > 0]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, pad, groups", CONV_CASES)
def test_conv_transpose2d_matches_scipy_convolve(x_shape, w_shape, stride, pad, groups, dtype, poison):
    rng = rng_for("T", x_shape, w_shape, stride, pad, groups)
    w = randn(rng, w_shape, dtype)
    y_shape = R.conv2d(np.ones(x_shape), np.ones(w_shape), None, stride, pad, groups).shape
    y = randn(rng, y_shape, dtype)
    # default: the smallest input size
    assert_close(F.conv_transpose2d(y, w, stride, pad, groups), R.conv_transpose2d(y, w, stride, pad, groups), dtype)
    for hw in _valid_output_shapes(y_shape, w_shape, stride, pad):
        out = F.conv_transpose2d(y, w, stride=stride, pad=pad, groups=groups, output_shape=hw)
        assert_close(out, R.conv_transpose2d(y, w, stride, pad, groups, hw), dtype)
        # the same through the (N, C, H, W) form
        full = (y_shape[0], x_shape[1]) + hw
        out4 = F.conv_transpose2d(y, w, stride=stride, pad=pad, groups=groups, output_shape=full)
        np.testing.assert_array_equal(out4, out)


def test_conv_transpose2d_output_shape_choices_differ_only_in_the_extra_rows():
    """Without padding, the extra row/column of a larger output_shape is one no window
    touches (zero); with padding the last windows reach into it."""
    rng = rng_for("extra")
    w, y = randn(rng, (3, 2, 3, 3)), randn(rng, (2, 3, 4, 4))
    small = F.conv_transpose2d(y, w, stride=2, pad=0, output_shape=(9, 9))
    big = F.conv_transpose2d(y, w, stride=2, pad=0, output_shape=(10, 10))
    np.testing.assert_array_equal(big[:, :, :9, :9], small)
    np.testing.assert_array_equal(big[:, :, 9, :], 0)
    np.testing.assert_array_equal(big[:, :, :, 9], 0)
    # with padding the extra row is reached by the last windows
    padded = F.conv_transpose2d(y, w, stride=2, pad=1, output_shape=(8, 8))
    assert np.all(padded[:, :, 7, :7] != 0)
    assert_close(padded, R.conv_transpose2d(y, w, 2, 1, 1, (8, 8)), np.float64)


# ============================================================== conv_matrix

MATRIX_CASES = [
    # input shape (C, H, W), w shape, stride, pad, groups
    ((1, 4, 4), (1, 1, 3, 3), 1, 0, 1),
    ((2, 5, 6), (3, 2, 3, 2), 1, 1, 1),
    ((3, 7, 7), (2, 3, 3, 3), 2, 1, 1),
    ((4, 6, 5), (4, 2, 2, 3), (2, 1), (0, 1), 2),
    ((2, 5, 5), (2, 1, 5, 5), 1, 2, 2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_shape, w_shape, stride, pad, groups", MATRIX_CASES)
def test_conv_matrix_matches_correlate_and_conv_ops(in_shape, w_shape, stride, pad, groups, dtype):
    rng = rng_for("matrix", in_shape, w_shape, stride, pad, groups)
    w = randn(rng, w_shape, dtype)
    C = F.conv_matrix(w, in_shape, stride=stride, pad=pad, groups=groups)
    assert scipy.sparse.issparse(C)
    assert C.dtype == dtype
    dense_ref = R.conv_matrix(w, in_shape, stride, pad, groups)
    assert C.shape == dense_ref.shape
    assert_close(C.toarray(), dense_ref, dtype)
    # the explicit matrix only stores entries the definition makes nonzero
    assert C.nnz == np.count_nonzero(dense_ref)

    x = randn(rng, (1,) + in_shape, dtype)
    y_ref = R.conv2d(x, w, None, stride, pad, groups)
    y = randn(rng, y_ref.shape, dtype)
    assert_close((C @ x.ravel()).astype(dtype), F.conv2d(x, w, None, stride, pad, groups).ravel().astype(np.float64), dtype)
    xt = F.conv_transpose2d(y, w, stride, pad, groups, output_shape=in_shape[1:])
    assert_close(xt.ravel(), (C.T @ y.ravel()).astype(np.float64), dtype)
    # the 4-d input_shape form gives the same matrix
    assert (F.conv_matrix(w, (1,) + in_shape, stride, pad, groups) != C).nnz == 0


def test_conv_matrix_4x4_input_3x3_filter_is_4x16_with_the_textbook_pattern():
    """The classic example: a 3x3 filter over a 4x4 image gives a 2x2 output and C is 4 x 16.

    Row r = (a, b) of C holds the filter's 9 values, in row-major order, at the
    columns (a + i) * 4 + (b + j) of the pixels under the window.
    """
    rng = rng_for("textbook")
    w = rng.uniform(0.5, 1.5, (1, 1, 3, 3))  # no zero entries, so nnz counts the pattern
    C = F.conv_matrix(w, (1, 4, 4))
    assert C.shape == (4, 16)
    assert C.nnz == 36
    pattern = [
        [0, 1, 2, 4, 5, 6, 8, 9, 10],
        [1, 2, 3, 5, 6, 7, 9, 10, 11],
        [4, 5, 6, 8, 9, 10, 12, 13, 14],
        [5, 6, 7, 9, 10, 11, 13, 14, 15],
    ]
    dense = C.toarray()
    for row, columns in enumerate(pattern):
        np.testing.assert_array_equal(np.flatnonzero(dense[row]), columns)
        np.testing.assert_array_equal(dense[row, columns], w.ravel())
    y = randn(rng, (1, 1, 2, 2))
    np.testing.assert_allclose(
        F.conv_transpose2d(y, w).ravel(), C.T @ y.ravel(), rtol=1e-14, atol=1e-14
    )
    x = randn(rng, (1, 1, 4, 4))
    np.testing.assert_allclose(F.conv2d(x, w).ravel(), C @ x.ravel(), rtol=1e-14, atol=1e-14)


# ============================================================== output sizes

@pytest.mark.parametrize("ceil_mode", [False, True])
def test_pool_output_size_follows_pytorch_rule(ceil_mode):
    for size in range(1, 14):
        for k in range(1, 6):
            for stride in range(1, 5):
                for pad in range(0, k // 2 + 1):
                    if size + 2 * pad < k:
                        continue
                    out = F.pool_output_size(size, k, stride, pad, ceil_mode)
                    assert out == R.pool_output_size(size, k, stride, pad, ceil_mode)
                    # every window starts inside the input or its left padding ...
                    assert (out - 1) * stride - pad < size
                    # ... and, without ceil mode, ends inside the right padding
                    if not ceil_mode:
                        assert (out - 1) * stride + k <= size + 2 * pad


def test_conv_output_size():
    for size in range(1, 12):
        for k in range(1, 6):
            for stride in range(1, 4):
                for pad in range(0, 3):
                    if size + 2 * pad >= k:
                        out = F.conv_output_size(size, k, stride, pad)
                        assert out == R.conv_output_size(size, k, stride, pad)
                        assert out == len(range(0, size + 2 * pad - k + 1, stride))


def test_zfnet_spatial_sizes_through_the_functional_ops():
    """224 -conv1-> 110 -pool-> 55 -conv2-> 26 -pool-> 13 -conv3,4,5-> 13 -pool-> 6."""
    rng = rng_for("zfnet")
    x = randn(rng, (1, 3, 224, 224), np.float32)
    sizes = [x.shape[-1]]
    x = F.conv2d(x, randn(rng, (4, 3, 7, 7), np.float32) * 0.1, stride=2, pad=1)
    sizes.append(x.shape[-1])
    x, _ = F.max_pool2d(F.relu(x), 3, stride=2, ceil_mode=True)
    sizes.append(x.shape[-1])
    x = F.local_response_norm(x)
    x = F.conv2d(x, randn(rng, (4, 4, 5, 5), np.float32) * 0.1, stride=2)
    sizes.append(x.shape[-1])
    x, _ = F.max_pool2d(F.relu(x), 3, stride=2, ceil_mode=True)
    sizes.append(x.shape[-1])
    x = F.local_response_norm(x)
    for _ in range(3):
        x = F.relu(F.conv2d(x, randn(rng, (4, 4, 3, 3), np.float32) * 0.1, pad=1))
    sizes.append(x.shape[-1])
    x, _ = F.max_pool2d(x, 3, stride=2)
    sizes.append(x.shape[-1])
    assert sizes == [224, 110, 55, 26, 13, 13, 6]
    assert x.shape == (1, 4, 6, 6) and x.dtype == np.float32
    # without ceil mode the first pool would give 54, which the paper does not use
    assert F.pool_output_size(110, 3, 2, 0, ceil_mode=False) == 54
    assert F.pool_output_size(26, 3, 2, 0, ceil_mode=False) == 12


# ============================================================== max-pooling

POOL_CASES = [
    # x shape, size, stride, pad, ceil_mode
    ((2, 3, 6, 6), 2, None, 0, False),
    ((2, 2, 7, 7), 3, 2, 0, False),
    ((2, 2, 7, 7), 3, 2, 0, True),
    ((1, 3, 8, 6), 3, 2, 1, True),      # overlapping, padded, ceil
    ((2, 2, 9, 10), (3, 2), (2, 1), (1, 1), False),
    ((1, 2, 5, 7), (2, 3), (3, 2), (1, 0), True),
    ((2, 1, 6, 5), 3, 1, 1, False),     # stride 1: heavy overlap
    ((1, 2, 10, 10), 2, 3, 0, True),    # stride beyond the window: gaps
    ((1, 1, 3, 3), 3, 2, 1, True),
    ((1, 2, 4, 4), 4, 2, 2, True),      # pad = half the window
    ((2, 2, 11, 11), 3, 2, 0, True),
    # per-side pads (top, bottom, left, right): Caffe-in-ONNX pads only bottom/right
    ((1, 2, 8, 8), 3, 2, (0, 1, 0, 1), False),
    ((2, 2, 6, 9), (3, 2), (2, 1), (1, 0, 0, 1), True),
    ((1, 2, 7, 5), (4, 3), (3, 2), (2, 1, 1, 0), False),
    ((1, 2, 1, 5), 7, 4, 2, True),      # ceil mode: a window larger than the padded input
]
POOL_IDS = [f"{s}-k{k}-s{st}-p{p}-{'ceil' if c else 'floor'}" for s, k, st, p, c in POOL_CASES]


def _check_pool(x, size, stride, pad, ceil_mode):
    y, switches = F.max_pool2d(x, size, stride=stride, pad=pad, ceil_mode=ceil_mode)
    ref_y, ref_s = R.max_pool2d(x, size, stride, pad, ceil_mode)
    assert y.dtype == x.dtype and y.shape == ref_y.shape
    assert switches.dtype == np.int64 and switches.shape == ref_y.shape
    np.testing.assert_array_equal(y, ref_y.astype(x.dtype))  # NaN == NaN here
    np.testing.assert_array_equal(switches, ref_s)
    return y, switches


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d_random(shape, size, stride, pad, ceil_mode, dtype, poison):
    x = randn(rng_for("pool", shape, size, stride, pad, ceil_mode), shape, dtype)
    y, switches = _check_pool(x, size, stride, pad, ceil_mode)
    # the switch points at the value that was selected
    n, c = shape[:2]
    picked = np.take_along_axis(x.reshape(n, c, -1), switches.reshape(n, c, -1), axis=2)
    np.testing.assert_array_equal(picked.reshape(y.shape), y)


@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d_negative_inputs_padding_never_wins(shape, size, stride, pad, ceil_mode):
    x = -np.abs(randn(rng_for("neg", shape, size), shape)) - 5.0
    y, switches = _check_pool(x, size, stride, pad, ceil_mode)
    assert np.all(y <= -5.0)  # a zero (or -inf) from the padding would show here
    h, w = shape[2:]
    assert switches.min() >= 0 and switches.max() < h * w


@pytest.mark.parametrize("levels", [2, 3])
@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d_ties_go_to_the_first_maximum(shape, size, stride, pad, ceil_mode, levels):
    rng = rng_for("ties", shape, size, levels)
    x = rng.integers(-levels, 1, size=shape).astype(np.float64)  # many ties, all <= 0
    _check_pool(x, size, stride, pad, ceil_mode)
    _check_pool(x.astype(np.float32), size, stride, pad, ceil_mode)


@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d_nan_wins_and_propagates(shape, size, stride, pad, ceil_mode, poison):
    rng = rng_for("nan", shape, size)
    x = randn(rng, shape)
    x[rng.random(shape) < 0.15] = np.nan
    x.reshape(-1)[rng.integers(x.size)] = np.nan
    y, switches = _check_pool(x, size, stride, pad, ceil_mode)
    assert np.isnan(y).any()
    n, c = shape[:2]
    picked = np.take_along_axis(x.reshape(n, c, -1), switches.reshape(n, c, -1), axis=2).reshape(y.shape)
    np.testing.assert_array_equal(np.isnan(picked), np.isnan(y))


@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d_infinities_and_all_minus_inf_windows(shape, size, stride, pad, ceil_mode):
    rng = rng_for("inf", shape, size)
    x = randn(rng, shape)
    x[rng.random(shape) < 0.5] = -np.inf
    x[-1, -1].flat[-1] = np.inf
    x[0, 0] = -np.inf                # a whole plane of -inf: every window is -inf
    y, switches = _check_pool(x, size, stride, pad, ceil_mode)
    assert np.all(y[0, 0] == -np.inf)
    # an all -inf window points at its first in-bounds pixel
    h, w = shape[2:]
    assert switches.min() >= 0 and switches.max() < h * w


def _torch_pool(torch, x, size, stride, pad, ceil_mode):
    """PyTorch's max_pool2d with indices; per-side pads as explicit -inf padding, the
    indices mapped back to the unpadded plane."""
    import torch.nn.functional as TF

    top, bottom, left, right = F.pool_padding(pad)
    t = torch.from_numpy(x)
    if (top, left) == (bottom, right):
        y, idx = TF.max_pool2d(t, size, stride, (top, left), ceil_mode=ceil_mode, return_indices=True)
        return y.numpy(), idx.numpy()
    padded = TF.pad(t, (left, right, top, bottom), value=-float("inf"))
    y, idx = TF.max_pool2d(padded, size, stride, 0, ceil_mode=ceil_mode, return_indices=True)
    wp = x.shape[3] + left + right
    rows, cols = idx.numpy() // wp - top, idx.numpy() % wp - left
    return y.numpy(), rows * x.shape[3] + cols


def test_max_pool2d_agrees_with_torch_on_random_geometries():
    """Shape, values and switches as torch.nn.functional.max_pool2d(return_indices=True),
    ceil mode included (every geometry PyTorch accepts, windows larger than the padded
    input too), and per-side pads through explicit -inf padding in torch (floor mode
    only: with explicit padding torch's ceil rule would keep a window that starts in
    the bottom padding; per-side pads in ceil mode are held against onnxruntime in
    tests/test_onnx.py)."""
    torch = pytest.importorskip("torch")
    rng = rng_for("torch-pool")
    checked = {"ceil": 0, "per-side": 0, "too small": 0}
    for _ in range(400):
        k = tuple(int(v) for v in rng.integers(1, 8, size=2))
        st = tuple(int(v) for v in rng.integers(1, 5, size=2))
        ceil_mode = bool(rng.integers(2))
        if rng.random() < 0.3:
            pad = tuple(int(rng.integers(0, k[i // 2] // 2 + 1)) for i in range(4))
            ceil_mode = False
        else:
            pad = tuple(int(rng.integers(0, kk // 2 + 1)) for kk in k)
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 3))) + tuple(int(v) for v in rng.integers(1, 12, size=2))
        x = rng.integers(-3, 4, size=shape).astype(np.float32)  # ties
        x[rng.random(shape) < 0.05] = np.nan
        try:
            ref_y, ref_s = _torch_pool(torch, x, k, st, pad, ceil_mode)
            torch_ok = True
        except RuntimeError:  # torch: "output size is too small"
            torch_ok = False
        if not torch_ok:
            with pytest.raises(ValueError, match="larger than the padded"):
                F.max_pool2d(x, k, st, pad, ceil_mode)
            checked["too small"] += 1
            continue
        y, switches = F.max_pool2d(x, k, st, pad, ceil_mode)
        assert y.shape == ref_y.shape, (shape, k, st, pad, ceil_mode)
        np.testing.assert_array_equal(y, ref_y)
        np.testing.assert_array_equal(switches, ref_s)
        checked["ceil"] += ceil_mode
        checked["per-side"] += len(pad) == 4
    assert min(checked.values()) > 20, checked


def test_max_pool2d_ceil_mode_accepts_a_window_larger_than_the_padded_input():
    x = randn(rng_for("big-window"), (1, 1, 1, 3))
    y, switches = F.max_pool2d(x, 7, stride=4, pad=2, ceil_mode=True)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == x.max() and switches[0, 0, 0, 0] == x.argmax()
    with pytest.raises(ValueError, match="ceil_mode=True keeps a partial window"):
        F.max_pool2d(x, 7, stride=4, pad=2)


def test_pool_padding_forms():
    assert F.pool_padding(1) == (1, 1, 1, 1)
    assert F.pool_padding((1, 2)) == (1, 1, 2, 2)
    assert F.pool_padding([0, 1, 2, 0]) == (0, 1, 2, 0)
    with pytest.raises(ValueError, match="pad"):
        F.pool_padding((1, 2, 3))
    with pytest.raises(ValueError, match="pad"):
        F.pool_padding((0, -1, 0, 0))
    with pytest.raises(ValueError, match="half the window"):
        F.max_pool2d(randn(rng_for("p"), (1, 1, 5, 5)), 3, pad=(0, 2, 0, 0))


def test_max_pool2d_zfnet_ceil_mode_sizes():
    rng = rng_for("zf-pool")
    for size_in, size_out in ((110, 55), (26, 13), (13, 6)):
        x = randn(rng, (1, 2, size_in, size_in), np.float32)
        y, switches = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        assert y.shape == (1, 2, size_out, size_out) == switches.shape
        if size_in <= 26:
            _check_pool(x, 3, 2, 0, True)


# ============================================================== max_unpool2d

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES, ids=POOL_IDS)
def test_max_unpool2d_matches_loop_and_sums_on_collision(shape, size, stride, pad, ceil_mode, dtype, poison):
    rng = rng_for("unpool", shape, size, stride, pad)
    # quantized inputs make overlapping windows pick the same pixel often
    x = rng.integers(-2, 3, size=shape).astype(dtype)
    _, switches = F.max_pool2d(x, size, stride, pad, ceil_mode)
    dy = randn(rng, switches.shape, dtype)
    out = F.max_unpool2d(dy, switches, shape)
    assert_close(out, R.max_unpool2d(dy, switches, shape), dtype)
    # the (H, W) form and int32 switches give the same
    np.testing.assert_array_equal(F.max_unpool2d(dy, switches.astype(np.int32), shape[2:]), out)


def test_max_unpool2d_collisions_are_summed_not_overwritten():
    rng = rng_for("collide")
    x = randn(rng, (1, 1, 5, 5)) - 10.0
    x[0, 0, 2, 2] = 10.0  # the maximum of all nine 3x3 stride-1 windows
    y, switches = F.max_pool2d(x, 3, stride=1)
    assert np.all(switches == 12)
    dy = rng.uniform(0.5, 1.5, y.shape)
    out = F.max_unpool2d(dy, switches, x.shape)
    expected = np.zeros_like(x)
    expected[0, 0, 2, 2] = dy.sum()
    np.testing.assert_allclose(out, expected, rtol=1e-14)


# ============================================================== relu

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 3, 4, 5)])
def test_relu_and_its_three_backward_rules(shape, dtype):
    rng = rng_for("relu", shape)
    x = randn(rng, shape, dtype)
    s = randn(rng, shape, dtype)
    x[rng.random(shape) < 0.2] = 0  # the x > 0 test must be strict
    s[rng.random(shape) < 0.2] = 0
    out = F.relu(x)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, R.relu(x).astype(dtype))
    for rule in F.RELU_RULES:
        got = F.relu_backward(s, x, rule=rule)
        assert got.dtype == dtype and got.shape == shape
        np.testing.assert_array_equal(got, R.relu_backward(s, x, rule).astype(dtype))
    # the deconvnet rule ignores x
    np.testing.assert_array_equal(F.relu_backward(s, None, rule="deconvnet"), np.maximum(s, 0))
    # default rule is the gradient
    np.testing.assert_array_equal(F.relu_backward(s, x), F.relu_backward(s, x, "backprop"))


def test_relu_rules_differ_as_the_table_says():
    rng = rng_for("rules")
    x, s = randn(rng, (200,)), randn(rng, (200,))
    back, deconv, guided = (F.relu_backward(s, x, r) for r in ("backprop", "deconvnet", "guided"))
    both = (x > 0) & (s > 0)
    assert np.all(guided[both] == s[both]) and np.all(guided[~both] == 0)
    assert np.any(back < 0)               # the gradient lets negative signals through
    assert np.all(deconv >= 0) and np.any((deconv > 0) & (x <= 0))  # deconvnet ignores x


def test_elementwise_ops_keep_any_shape_including_0d():
    rng = rng_for("0d")
    for shape in [(), (1,), (3, 1, 2)]:
        x, s = randn(rng, shape), randn(rng, shape)
        assert F.relu(x).shape == shape
        for rule in F.RELU_RULES:
            assert F.relu_backward(s, x, rule).shape == shape
        y, mask = F.dropout(x, 0.5, np.random.default_rng(1))
        assert y.shape == mask.shape == shape


def test_relu_propagates_nan():
    x = np.array([np.nan, -1.0, 2.0])
    np.testing.assert_array_equal(F.relu(x), [np.nan, 0.0, 2.0])


# ============================================================== local response norm

LRN_CASES = [
    # shape, size, alpha, beta, k
    ((2, 7, 3, 4), 5, 1e-4, 0.75, 2.0),   # ZFNet / AlexNet defaults
    ((2, 7, 3, 4), 5, 0.9, 0.75, 1.0),    # strong normalization
    ((1, 6, 4, 3), 4, 0.5, 0.6, 1.5),     # even size: PyTorch's window
    ((2, 3, 2, 5), 7, 2.0, 1.3, 0.5),     # window larger than C
    ((1, 5, 3, 3), 1, 1.0, 0.5, 1.0),     # size 1: only the channel itself
    ((2, 1, 3, 3), 3, 0.3, 0.75, 2.0),    # one channel
    ((1, 8, 2, 2), 2, 0.7, 0.9, 1.2),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, size, alpha, beta, k", LRN_CASES)
def test_local_response_norm_forward_and_backward(shape, size, alpha, beta, k, dtype, poison):
    rng = rng_for("lrn", shape, size, alpha)
    x = (2.0 * randn(rng, shape)).astype(dtype)
    dy = randn(rng, shape, dtype)
    out = F.local_response_norm(x, size=size, alpha=alpha, beta=beta, k=k)
    assert_close(out, R.local_response_norm(x, size, alpha, beta, k), dtype)
    dx = F.local_response_norm_backward(dy, x, size=size, alpha=alpha, beta=beta, k=k)
    assert_close(dx, R.local_response_norm_backward(dy, x, size, alpha, beta, k), dtype)


def test_local_response_norm_defaults_are_zfnets():
    rng = rng_for("lrn-defaults")
    x = 30.0 * randn(rng, (1, 9, 2, 2))
    np.testing.assert_allclose(
        F.local_response_norm(x), R.local_response_norm(x, 5, 1e-4, 0.75, 2.0), rtol=1e-13
    )


# ============================================================== linear

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, n_in, n_out", [(1, 1, 1), (3, 7, 5), (8, 20, 3), (2, 64, 33)])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_linear_forward_and_backward(n, n_in, n_out, bias, dtype):
    rng = rng_for("linear", n, n_in, n_out, bias)
    x, w = randn(rng, (n, n_in), dtype), randn(rng, (n_out, n_in), dtype)
    b = randn(rng, (n_out,), dtype) if bias else None
    assert_close(F.linear(x, w, b), R.linear(x, w, b), dtype)
    dy = randn(rng, (n, n_out), dtype)
    for got, ref in zip(F.linear_backward(dy, x, w), R.linear_backward(dy, x, w)):
        assert_close(got, ref, dtype)


# ============================================================== dropout

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_statistics_and_inverted_scaling(p, dtype):
    rng_x = rng_for("dropout-x", p)
    x = rng_x.uniform(0.5, 1.5, (40, 50, 50)).astype(dtype)  # 100 000 elements
    y, mask = F.dropout(x, p, np.random.default_rng(7))
    assert y.dtype == mask.dtype == dtype and y.shape == mask.shape == x.shape
    scale = dtype(1.0 / (1.0 - p))
    kept = mask != 0
    assert np.all(mask[kept] == scale)      # kept elements scaled by exactly 1 / (1 - p)
    np.testing.assert_array_equal(y, x * mask)
    # keep rate 1 - p within 5 binomial standard deviations
    sd = np.sqrt(p * (1 - p) / x.size)
    assert abs(kept.mean() - (1 - p)) < 5 * sd
    # inverted scaling keeps the expectation: E[y] = E[x]
    assert abs(y.mean() - x.mean()) / x.mean() < 5 * np.sqrt(p / (1 - p) / x.size) * 1.5
    # the dropped elements are not all in one place
    assert 0 < kept[0].mean() < 1 and 0 < kept[:, :, 0].mean() < 1


def test_dropout_is_reproducible_with_a_seeded_generator():
    x = rng_for("drop-repro").standard_normal((6, 7, 8)).astype(np.float32)
    y1, m1 = F.dropout(x, 0.5, np.random.default_rng(123))
    y2, m2 = F.dropout(x, 0.5, np.random.default_rng(123))
    y3, m3 = F.dropout(x, 0.5, np.random.default_rng(124))
    np.testing.assert_array_equal(m1, m2)
    np.testing.assert_array_equal(y1, y2)
    assert np.any(m1 != m3)
    # successive calls on one generator draw new masks
    gen = np.random.default_rng(5)
    assert np.any(F.dropout(x, 0.5, gen)[1] != F.dropout(x, 0.5, gen)[1])


def test_dropout_p_zero_is_the_identity():
    x = rng_for("drop0").standard_normal((3, 4))
    y, mask = F.dropout(x, 0.0, np.random.default_rng(0))
    np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(mask, np.ones_like(x))


# ============================================================== softmax, cross-entropy

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, scale", [((1, 2), 1.0), ((4, 10), 3.0), ((7, 5), 300.0), ((2, 3, 6), 1.0)])
def test_softmax_matches_scipy(shape, scale, dtype):
    z = (scale * randn(rng_for("softmax", shape, scale), shape)).astype(dtype)
    p = F.softmax(z)
    assert_close(p, R.softmax(z), dtype)
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=TOL[np.dtype(dtype)])


def test_softmax_is_shift_invariant_and_does_not_overflow():
    z = randn(rng_for("shift"), (3, 6))
    np.testing.assert_allclose(F.softmax(z + 1000.0), R.softmax(z), rtol=1e-12)
    np.testing.assert_allclose(F.softmax(z - 1000.0), R.softmax(z), rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k, scale", [(1, 2, 1.0), (5, 10, 2.0), (16, 7, 50.0), (3, 1000, 1.0)])
def test_cross_entropy_matches_scipy_log_softmax(n, k, scale, dtype):
    rng = rng_for("ce", n, k, scale)
    z = (scale * randn(rng, (n, k))).astype(dtype)
    labels = rng.integers(0, k, size=n)
    loss, dz = F.cross_entropy(z, labels)
    ref_loss, ref_dz = R.cross_entropy(z, labels)
    assert isinstance(loss, float)
    assert abs(loss - ref_loss) <= TOL[np.dtype(dtype)] * max(1.0, abs(ref_loss))
    assert_close(dz, ref_dz, dtype)
    # labels as a list or int32 give the same
    loss2, dz2 = F.cross_entropy(z, [int(v) for v in labels])
    assert loss2 == loss
    np.testing.assert_array_equal(dz2, dz)
    np.testing.assert_array_equal(F.cross_entropy(z, labels.astype(np.int32))[1], dz)
