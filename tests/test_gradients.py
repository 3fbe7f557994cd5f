"""Analytic gradients against central differences, in float64 on small random inputs.

Each op is wrapped as a scalar loss L = <op(inputs), g> with a fixed random g,
so dL/d(input) is the op's backward applied to g.  Every input and parameter is
checked coordinate by coordinate (:func:`zfraw.gradcheck.check_gradient`), and
larger ones also along random directions (:func:`check_gradient_directions`).
"""
import zlib

import numpy as np
import pytest

from zfraw import functional as F
from zfraw.gradcheck import (
    check_gradient, check_gradient_directions, numerical_gradient, tie_free,
)

TOL = 1e-7  # central differences with eps = 1e-6 in float64 reach ~1e-9 here


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def randn(rng, shape):
    return rng.standard_normal(shape)


def assert_grad(f, x, grad, tol=TOL):
    err = check_gradient(f, x, grad)
    assert err < tol, f"gradient relative error {err:.3g}"


# ============================================================== the checker itself

def test_numerical_gradient_of_a_known_function():
    rng = rng_for("known")
    a = randn(rng, (3, 4))
    x = randn(rng, (3, 4))
    f = lambda v: float(np.sum(a * v ** 3))
    np.testing.assert_allclose(numerical_gradient(f, x.copy()), 3 * a * x ** 2, rtol=1e-8, atol=1e-9)


def test_check_gradient_detects_a_wrong_gradient():
    rng = rng_for("wrong")
    x = randn(rng, (4, 5))
    f = lambda v: float(np.sum(np.sin(v)))
    assert check_gradient(f, x, np.cos(x)) < 1e-8
    bad = np.cos(x)
    bad[1, 2] += 1e-3
    assert check_gradient(f, x, bad) > 1e-5
    assert check_gradient_directions(f, x, np.cos(x), rng) < 1e-8
    assert check_gradient_directions(f, x, 1.01 * np.cos(x), rng) > 1e-4


# ============================================================== conv2d

CONV_CASES = [
    # x shape, w shape, stride, pad, groups
    ((2, 3, 5, 5), (2, 3, 3, 3), 1, 0, 1),
    ((1, 2, 6, 5), (3, 2, 3, 2), 2, 1, 1),
    ((2, 4, 5, 6), (4, 2, 3, 3), (2, 1), (1, 0), 2),
    ((1, 3, 7, 7), (3, 1, 3, 3), 2, 1, 3),
    ((2, 2, 4, 4), (2, 2, 4, 4), 1, 2, 1),
]


@pytest.mark.parametrize("x_shape, w_shape, stride, pad, groups", CONV_CASES)
def test_conv2d_gradients(x_shape, w_shape, stride, pad, groups):
    rng = rng_for("conv", x_shape, w_shape, stride, pad, groups)
    x, w, b = randn(rng, x_shape), randn(rng, w_shape), randn(rng, (w_shape[0],))
    g = randn(rng, F.conv2d(x, w, b, stride, pad, groups).shape)
    dx, dw, db = F.conv2d_backward(g, x, w, stride, pad, groups)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape

    def loss(x_, w_, b_):
        return float(np.vdot(F.conv2d(x_, w_, b_, stride, pad, groups), g))

    assert_grad(lambda v: loss(v, w, b), x, dx)
    assert_grad(lambda v: loss(x, v, b), w, dw)
    assert_grad(lambda v: loss(x, w, v), b, db)
    assert check_gradient_directions(lambda v: loss(v, w, b), x, dx, rng) < TOL


@pytest.mark.parametrize("x_shape, w_shape, stride, pad, groups", CONV_CASES)
def test_conv_transpose2d_gradients(x_shape, w_shape, stride, pad, groups):
    """L = <conv_transpose2d(y, w), g>: dL/dy = conv2d(g, w), dL/dw = conv2d_backward(y, g, w).dw."""
    rng = rng_for("convT", x_shape, w_shape, stride, pad, groups)
    w = randn(rng, w_shape)
    y = randn(rng, F.conv2d(randn(rng, x_shape), w, None, stride, pad, groups).shape)
    g = randn(rng, x_shape)

    def loss(y_, w_):
        return float(np.vdot(F.conv_transpose2d(y_, w_, stride, pad, groups, output_shape=x_shape), g))

    assert_grad(lambda v: loss(v, w), y, F.conv2d(g, w, None, stride, pad, groups))
    assert_grad(lambda v: loss(y, v), w, F.conv2d_backward(y, g, w, stride, pad, groups)[1])


# ============================================================== max-pooling

POOL_CASES = [
    # x shape, size, stride, pad, ceil_mode
    ((2, 2, 6, 6), 2, None, 0, False),
    ((1, 2, 7, 7), 3, 2, 0, True),     # overlapping windows: one pixel can win twice
    ((1, 3, 6, 5), 3, 2, 1, False),
    ((2, 1, 5, 6), (2, 3), (1, 2), (1, 1), True),
    ((1, 2, 5, 5), 3, 1, 1, False),
]


@pytest.mark.parametrize("shape, size, stride, pad, ceil_mode", POOL_CASES)
def test_max_pool2d_gradient_is_unpooling(shape, size, stride, pad, ceil_mode):
    rng = rng_for("pool", shape, size, stride, pad, ceil_mode)
    x = tie_free(shape, rng)  # distinct values 1/size apart: a 1e-6 step never swaps a maximum
    y, switches = F.max_pool2d(x, size, stride, pad, ceil_mode)
    g = randn(rng, y.shape)
    grad = F.max_unpool2d(g, switches, x.shape)

    def loss(v):
        return float(np.vdot(F.max_pool2d(v, size, stride, pad, ceil_mode)[0], g))

    assert_grad(loss, x, grad)
    assert check_gradient_directions(loss, x, grad, rng) < TOL


# ============================================================== local response norm

@pytest.mark.parametrize(
    "shape, size, alpha, beta, k",
    [
        ((2, 6, 3, 3), 5, 1e-4, 0.75, 2.0),
        ((1, 7, 2, 3), 5, 0.8, 0.75, 1.0),
        ((2, 5, 2, 2), 4, 1.5, 0.6, 0.7),
        ((1, 3, 3, 2), 7, 0.5, 1.2, 1.0),
        ((1, 4, 2, 2), 2, 2.0, 0.5, 1.0),
    ],
)
def test_local_response_norm_gradient(shape, size, alpha, beta, k):
    rng = rng_for("lrn", shape, size, alpha)
    x, g = 1.5 * randn(rng, shape), randn(rng, shape)
    grad = F.local_response_norm_backward(g, x, size, alpha, beta, k)

    def loss(v):
        return float(np.vdot(F.local_response_norm(v, size, alpha, beta, k), g))

    assert_grad(loss, x, grad)


# ============================================================== linear

@pytest.mark.parametrize("n, n_in, n_out", [(1, 3, 2), (4, 6, 5), (3, 10, 1)])
def test_linear_gradients(n, n_in, n_out):
    rng = rng_for("linear", n, n_in, n_out)
    x, w, b = randn(rng, (n, n_in)), randn(rng, (n_out, n_in)), randn(rng, (n_out,))
    g = randn(rng, (n, n_out))
    dx, dw, db = F.linear_backward(g, x, w)

    def loss(x_, w_, b_):
        return float(np.vdot(F.linear(x_, w_, b_), g))

    assert_grad(lambda v: loss(v, w, b), x, dx)
    assert_grad(lambda v: loss(x, v, b), w, dw)
    assert_grad(lambda v: loss(x, w, v), b, db)


# ============================================================== softmax + cross-entropy

@pytest.mark.parametrize("n, k, scale", [(1, 2, 1.0), (4, 6, 2.0), (8, 3, 5.0), (3, 10, 0.1)])
def test_cross_entropy_gradient(n, k, scale):
    rng = rng_for("ce", n, k, scale)
    z = scale * randn(rng, (n, k))
    labels = rng.integers(0, k, size=n)
    _, dz = F.cross_entropy(z, labels)
    assert_grad(lambda v: F.cross_entropy(v, labels)[0], z, dz)


def test_softmax_gradient():
    """d<softmax(z), g>/dz = p * (g - <p, g>) row by row."""
    rng = rng_for("softmax")
    z, g = randn(rng, (3, 5)), randn(rng, (3, 5))
    p = F.softmax(z)
    grad = p * (g - np.sum(p * g, axis=1, keepdims=True))
    assert_grad(lambda v: float(np.vdot(F.softmax(v), g)), z, grad)


# ============================================================== relu

@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 4)])
def test_relu_gradient_away_from_zero(shape):
    rng = rng_for("relu", shape)
    x = randn(rng, shape)
    x = np.where(np.abs(x) < 0.1, 0.1 * np.sign(x) + x, x)  # |x| > 0.1: no kink within eps
    g = randn(rng, shape)
    grad = F.relu_backward(g, x, rule="backprop")
    assert_grad(lambda v: float(np.vdot(F.relu(v), g)), x, grad)


# ============================================================== a whole small net

def test_small_net_gradients_end_to_end():
    """conv -> pool -> relu -> LRN -> conv -> relu -> linear -> cross-entropy, chained by hand.

    The pool comes before the rectifier (they commute), so the windows hold no
    ties at zero and every kink is far from the random inputs.
    """
    rng = rng_for("net")
    x = randn(rng, (2, 3, 9, 9))
    params = {
        "w1": 0.5 * randn(rng, (4, 3, 3, 3)), "b1": 0.1 * randn(rng, (4,)),
        "w2": 0.5 * randn(rng, (6, 2, 2, 2)), "b2": 0.1 * randn(rng, (6,)),
        "w3": 0.5 * randn(rng, (5, 6 * 2 * 2)), "b3": 0.1 * randn(rng, (5,)),
    }
    labels = np.array([1, 4])
    lrn = dict(size=3, alpha=0.5, beta=0.75, k=1.0)

    def forward(x, p):
        a1 = F.conv2d(x, p["w1"], p["b1"], stride=1, pad=1)            # (2, 4, 9, 9)
        m1, sw = F.max_pool2d(a1, 3, stride=2, ceil_mode=True)          # (2, 4, 4, 4)
        r1 = F.relu(m1)
        n1 = F.local_response_norm(r1, **lrn)
        a2 = F.conv2d(n1, p["w2"], p["b2"], stride=2, groups=2)         # (2, 6, 2, 2)
        r2 = F.relu(a2)
        z = F.linear(r2.reshape(2, -1), p["w3"], p["b3"])
        loss, dz = F.cross_entropy(z, labels)
        return loss, (x, a1, m1, sw, r1, n1, a2, r2, dz)

    def backward(p, cache):
        x, a1, m1, sw, r1, n1, a2, r2, dz = cache
        d = {}
        dr2, d["w3"], d["b3"] = F.linear_backward(dz, r2.reshape(2, -1), p["w3"])
        da2 = F.relu_backward(dr2.reshape(r2.shape), a2)
        dn1, d["w2"], d["b2"] = F.conv2d_backward(da2, n1, p["w2"], stride=2, groups=2)
        dr1 = F.local_response_norm_backward(dn1, r1, **lrn)
        dm1 = F.relu_backward(dr1, m1)
        da1 = F.max_unpool2d(dm1, sw, a1.shape)
        d["x"], d["w1"], d["b1"] = F.conv2d_backward(da1, x, p["w1"], stride=1, pad=1)
        return d

    _, cache = forward(x, params)
    grads = backward(params, cache)
    assert_grad(lambda v: forward(v, params)[0], x, grads["x"], tol=1e-6)
    for name in params:
        def loss(v, name=name):
            return forward(x, {**params, name: v})[0]
        assert_grad(loss, params[name], grads[name], tol=1e-6)
