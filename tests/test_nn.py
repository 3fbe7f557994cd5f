"""Layers and Sequential: forward against the functional ops and the SciPy references,
backward against central differences (float64), ``project`` against the functional
adjoints and the explicit matrix C, and the bookkeeping (names, modes, state, files).

Every input is a seeded random draw; a gradient is checked coordinate by coordinate
on small shapes.  The whole-net checks use a small net holding every layer type
(grouped conv, overlapping ceil-mode pooling, LRN, dropout with a fixed mask).
"""
import os
import zlib

import numpy as np
import pytest

from zfraw import functional as F
from zfraw import nn
from zfraw import reference as R
from zfraw.gradcheck import check_gradient, relative_error, tie_free

GRAD_TOL = 1e-7   # central differences with eps 1e-6 in float64
REF_TOL = 1e-12   # float64 against the SciPy references


def rng_for(*key):
    """A generator seeded from the test case, so each case draws its own inputs."""
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def away_from_zero(x, margin=1e-3):
    """Move entries within ``margin`` of 0 away from it (the ReLU kink)."""
    x = x.copy()
    small = np.abs(x) < margin
    x[small] = np.where(x[small] >= 0, 0.5, -0.5)
    return x


def check_layer_gradients(layer, x, r, tol=GRAD_TOL):
    """L = <layer(x), r>: backward(r) must be dL/dx, layer.grads must be dL/dparams."""
    layer.forward(x)
    dx = layer.backward(r)
    grads = {k: g.copy() for k, g in layer.grads.items()}
    assert set(grads) == set(layer.params), "a parameter has no gradient"

    def loss_x(a):
        return float(np.vdot(layer.forward(a), r))

    err = check_gradient(loss_x, x, dx)
    assert err < tol, f"{type(layer).__name__} dx: relative error {err:.3g}"
    for name in list(layer.params):
        original = layer.params[name]

        def loss_p(a, name=name):
            layer.params[name] = a
            try:
                return float(np.vdot(layer.forward(x), r))
            finally:
                layer.params[name] = original

        err = check_gradient(loss_p, original.copy(), grads[name])
        assert err < tol, f"{type(layer).__name__} d{name}: relative error {err:.3g}"


# ============================================================== forward of each layer

@pytest.mark.parametrize("case", [
    # (x shape, out channels, kernel, stride, pad, groups)
    ((2, 4, 9, 8), 6, 3, 2, 1, 2),
    ((1, 3, 7, 7), 5, (3, 2), (1, 2), (0, 1), 1),
    ((2, 6, 6, 6), 6, 1, 1, 0, 3),
])
def test_conv2d_forward_matches_functional_and_scipy(case):
    xs, cout, k, stride, pad, groups = case
    rng = rng_for("conv fwd", case)
    layer = nn.Conv2d(xs[1], cout, k, stride, pad, groups, seed=int(rng.integers(1000)), dtype=np.float64)
    layer.params["b"] = rng.standard_normal(cout)  # a non-zero bias, so it is checked
    x = rng.standard_normal(xs)
    y = layer.forward(x)
    w, b = layer.params["w"], layer.params["b"]
    np.testing.assert_array_equal(y, F.conv2d(x, w, b, stride, pad, groups))
    assert relative_error(y, R.conv2d(x, w, b, stride, pad, groups)) < REF_TOL
    assert w.shape == (cout, xs[1] // groups) + F._pair("k", k, 1)


def test_conv2d_without_bias_and_bad_groups():
    rng = rng_for("conv nobias")
    layer = nn.Conv2d(4, 6, 3, 1, 1, groups=2, bias=False, dtype=np.float64)
    assert list(layer.params) == ["w"]
    x = rng.standard_normal((2, 4, 5, 5))
    assert relative_error(layer.forward(x), R.conv2d(x, layer.params["w"], None, 1, 1, 2)) < REF_TOL
    layer.backward(rng.standard_normal((2, 6, 5, 5)))
    assert list(layer.grads) == ["w"]
    with pytest.raises(ValueError, match="groups"):
        nn.Conv2d(4, 6, 3, groups=4)
    with pytest.raises(ValueError, match="init_std"):
        nn.Conv2d(3, 4, 3, init_std=-1.0)
    with pytest.raises(ValueError, match="init_std"):
        nn.Linear(3, 4, init_std="xavier")


def test_relu_maxpool_lrn_linear_flatten_forward():
    rng = rng_for("fwd")
    x = rng.standard_normal((2, 5, 7, 6)) * 2
    np.testing.assert_array_equal(nn.ReLU().forward(x), np.maximum(x, 0))

    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    y = pool.forward(x)
    ry, rsw = R.max_pool2d(x, 3, 2, 0, True)
    assert y.shape == (2, 5, 3, 3)  # ceil: 7 -> 3 and 6 -> 3 (floor would give 3 and 2)
    assert relative_error(y, ry) < REF_TOL
    np.testing.assert_array_equal(pool.switches, rsw)
    assert pool.switches.dtype == np.int64

    lrn = nn.LocalResponseNorm(3, 0.5, 0.75, 1.0)
    assert relative_error(lrn.forward(x), R.local_response_norm(x, 3, 0.5, 0.75, 1.0)) < REF_TOL

    lin = nn.Linear(6, 4, seed=3, dtype=np.float64)
    lin.params["b"] = rng.standard_normal(4)
    v = rng.standard_normal((3, 6))
    assert relative_error(lin.forward(v), v @ lin.params["w"].T + lin.params["b"]) < REF_TOL

    flat = nn.Flatten()
    np.testing.assert_array_equal(flat.forward(x), x.reshape(2, -1))
    np.testing.assert_array_equal(flat.backward(flat.forward(x)), x)

    # calling a layer is its forward
    for layer in (nn.ReLU(), pool, lrn, flat, nn.Dropout(0.5)):
        np.testing.assert_array_equal(layer(x), layer.forward(x))
    np.testing.assert_array_equal(lin(v), lin.forward(v))


# ============================================================== gradients of each layer

@pytest.mark.parametrize("case", [
    ((2, 4, 5, 6), 6, 3, 2, 1, 2),   # grouped, strided, padded
    ((1, 3, 6, 5), 4, (2, 3), (2, 1), (1, 0), 1),
])
def test_conv2d_gradients(case):
    xs, cout, k, stride, pad, groups = case
    rng = rng_for("conv grad", case)
    layer = nn.Conv2d(xs[1], cout, k, stride, pad, groups, init_std=0.5, seed=1, dtype=np.float64)
    layer.params["b"] = rng.standard_normal(cout)
    x = rng.standard_normal(xs)
    r = rng.standard_normal(layer.forward(x).shape)
    check_layer_gradients(layer, x, r)


def test_relu_gradient():
    rng = rng_for("relu grad")
    x = away_from_zero(rng.standard_normal((2, 3, 4, 4)))
    check_layer_gradients(nn.ReLU(), x, rng.standard_normal(x.shape))


@pytest.mark.parametrize("size,stride,pad,ceil", [(3, 2, 0, True), (2, 2, 0, False), (3, 2, 1, False)])
def test_maxpool_gradient(size, stride, pad, ceil):
    rng = rng_for("pool grad", size, stride, pad, ceil)
    x = tie_free((2, 3, 6, 7), rng)  # distinct values: eps never changes a window's winner
    layer = nn.MaxPool2d(size, stride, pad, ceil_mode=ceil)
    r = rng.standard_normal(layer.forward(x).shape)
    check_layer_gradients(layer, x, r)


def test_lrn_gradient():
    rng = rng_for("lrn grad")
    x = rng.standard_normal((2, 6, 3, 3)) * 2
    check_layer_gradients(nn.LocalResponseNorm(5, 0.5, 0.75, 1.0), x, rng.standard_normal(x.shape))


def test_linear_gradient():
    rng = rng_for("linear grad")
    layer = nn.Linear(7, 5, init_std=0.5, seed=2, dtype=np.float64)
    layer.params["b"] = rng.standard_normal(5)
    check_layer_gradients(layer, rng.standard_normal((3, 7)), rng.standard_normal((3, 5)))


def test_flatten_gradient():
    rng = rng_for("flatten grad")
    x = rng.standard_normal((2, 3, 2, 2))
    check_layer_gradients(nn.Flatten(), x, rng.standard_normal((2, 12)))


def test_dropout_train_fixed_mask_gradient_and_inverted_scaling():
    rng = rng_for("dropout")
    p = 0.3
    layer = nn.Dropout(p, seed=0)
    layer.training = True

    fixed = FixedDropout(p, seed=11)
    fixed.training = True
    x = rng.standard_normal((4, 50))
    y = fixed.forward(x)
    y_ref, mask_ref = F.dropout(x, p, np.random.default_rng(11))
    np.testing.assert_array_equal(y, y_ref)
    assert set(np.unique(mask_ref)) == {0.0, 1.0 / (1.0 - p)}
    kept = mask_ref != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1.0 - p), rtol=1e-15)
    assert np.all(y[~kept] == 0)
    check_layer_gradients(fixed, x, rng.standard_normal(x.shape))

    # inverted scaling keeps the mean: E[y] = x, and about 1 - p of the units survive
    big = np.ones((200, 500))
    out = layer.forward(big)
    assert abs(out.mean() - 1.0) < 0.02
    assert abs((out != 0).mean() - (1 - p)) < 0.01
    # two forwards in training draw two different masks
    assert not np.array_equal(layer.forward(big), out)


def test_dropout_identity_in_eval_and_bad_p():
    rng = rng_for("dropout eval")
    layer = nn.Dropout(0.5)
    x = rng.standard_normal((3, 8))
    assert layer.training is False
    y = layer.forward(x)
    np.testing.assert_array_equal(y, x)
    s = rng.standard_normal((3, 8))
    np.testing.assert_array_equal(layer.backward(s), s)
    np.testing.assert_array_equal(layer.project(s, "deconvnet"), s)
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="p"):
            nn.Dropout(p)


def test_backward_before_forward_is_an_error():
    for layer in (nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.LocalResponseNorm(), nn.Linear(3, 2),
                  nn.Flatten()):
        with pytest.raises(RuntimeError, match="forward"):
            layer.backward(np.ones((1, 4, 2, 2), dtype=np.float32))


# ============================================================== project of each layer

@pytest.mark.parametrize("case", [
    # x shape with an ambiguous strided size (10 and 9 both conv to 5 with k3 s2 p1)
    ((2, 4, 10, 9), 6, 3, 2, 1, 2),
    ((1, 3, 8, 7), 5, (3, 2), (1, 2), (0, 1), 1),
])
def test_conv2d_project_is_c_transpose_without_bias(case):
    xs, cout, k, stride, pad, groups = case
    rng = rng_for("conv project", case)
    layer = nn.Conv2d(xs[1], cout, k, stride, pad, groups, seed=4, dtype=np.float64)
    layer.params["b"] = rng.standard_normal(cout) + 3.0  # a bias that must not appear
    x = rng.standard_normal(xs)
    y = layer.forward(x)
    s = rng.standard_normal(y.shape)
    for rule in F.RELU_RULES:  # the rule only matters at rectifiers
        out = layer.project(s, rule)
        assert out.shape == xs
        w = layer.params["w"]
        np.testing.assert_array_equal(out, F.conv_transpose2d(s, w, stride, pad, groups, output_shape=xs))
        C = F.conv_matrix(w, xs[1:], stride, pad, groups)
        for n in range(xs[0]):
            assert relative_error(out[n].ravel(), C.T @ s[n].ravel()) < REF_TOL
        assert relative_error(out, R.conv_transpose2d(s, w, stride, pad, groups, output_shape=xs)) < REF_TOL
    # linear in s (a bias would break this) and the adjoint of the bias-free forward
    np.testing.assert_allclose(layer.project(2.5 * s), 2.5 * layer.project(s), rtol=1e-13, atol=1e-13)
    lhs = np.vdot(F.conv2d(x, layer.params["w"], None, stride, pad, groups), s)
    assert abs(lhs - np.vdot(x, layer.project(s))) < 1e-12 * abs(lhs) + 1e-12


def test_maxpool_project_unpools_through_the_last_switches():
    rng = rng_for("pool project")
    pool = nn.MaxPool2d(3, 2, ceil_mode=True)
    x1, x2 = tie_free((2, 3, 7, 7), rng), tie_free((2, 3, 7, 7), rng)
    y1 = pool.forward(x1)
    sw1 = pool.switches.copy()
    pool.forward(x2)
    sw2 = pool.switches
    assert not np.array_equal(sw1, sw2)
    s = rng.standard_normal(y1.shape)
    for rule in F.RELU_RULES:
        out = pool.project(s, rule)
        np.testing.assert_array_equal(out, pool.backward(s))
        assert relative_error(out, R.max_unpool2d(s, R.max_pool2d(x2, 3, 2, 0, True)[1], x2.shape)) < REF_TOL
    # overlapping windows: a pixel that wins two windows receives the sum of both signals
    collide = np.bincount((sw2 + 100 * np.arange(6).reshape(2, 3, 1, 1)).ravel())
    assert collide.max() >= 2


def test_relu_project_three_rules():
    rng = rng_for("relu project")
    relu = nn.ReLU()
    x = rng.standard_normal((2, 3, 4, 5))
    s = rng.standard_normal(x.shape)
    relu.forward(x)
    np.testing.assert_array_equal(relu.project(s, "backprop"), np.where(x > 0, s, 0))
    np.testing.assert_array_equal(relu.project(s, "deconvnet"), np.where(s > 0, s, 0))
    np.testing.assert_array_equal(relu.project(s, "guided"), np.where((x > 0) & (s > 0), s, 0))
    # deconvnet needs no forward (it ignores the forward mask)
    np.testing.assert_array_equal(nn.ReLU().project(s, "deconvnet"), np.maximum(s, 0))
    with pytest.raises(ValueError, match="rule"):
        relu.project(s, "nope")


def test_lrn_linear_flatten_dropout_project():
    rng = rng_for("misc project")
    x = rng.standard_normal((2, 6, 3, 3))
    s = rng.standard_normal(x.shape)
    lrn = nn.LocalResponseNorm(5, 0.5, 0.75, 1.0)
    lrn.forward(x)
    # the paper's deconvnet passes the norm through unchanged
    np.testing.assert_array_equal(lrn.project(s, "deconvnet"), s)
    # the gradient rules take the true adjoint (see test_backprop_projection_is_the_gradient)
    for rule in ("backprop", "guided"):
        np.testing.assert_array_equal(lrn.project(s, rule), lrn.backward(s))

    drop = nn.Dropout(0.5)
    drop.forward(x)
    np.testing.assert_array_equal(drop.project(s), s)

    lin = nn.Linear(6, 4, seed=1, dtype=np.float64)
    lin.params["b"] = rng.standard_normal(4)
    v = rng.standard_normal((3, 6))
    lin.forward(v)
    t = rng.standard_normal((3, 4))
    np.testing.assert_allclose(lin.project(t), t @ lin.params["w"], rtol=1e-14)
    lhs = np.vdot(v @ lin.params["w"].T, t)
    assert abs(lhs - np.vdot(v, lin.project(t))) < 1e-12 * abs(lhs)

    flat = nn.Flatten()
    flat.forward(x)
    np.testing.assert_array_equal(flat.project(s.reshape(2, -1)), s)


# ============================================================== a small net with every layer type

class FixedDropout(nn.Dropout):
    """Dropout whose mask is the same at every forward (for finite differences)."""

    def forward(self, x):
        self.rng = np.random.default_rng(self.seed)
        return super().forward(x)


def small_net(seed=0, dropout=FixedDropout):
    """float64: conv -> relu -> overlapping ceil pool -> LRN -> grouped strided conv -> relu ->
    flatten -> linear -> relu -> dropout -> linear."""
    rng = np.random.default_rng(seed + 100)
    net = nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, init_std=0.5, seed=seed, dtype=np.float64)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ("norm1", nn.LocalResponseNorm(3, 0.5, 0.75, 1.0)),
        ("conv2", nn.Conv2d(4, 6, 3, 2, 1, groups=2, init_std=0.5, seed=seed + 1, dtype=np.float64)),
        ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc3", nn.Linear(6 * 3 * 3, 10, init_std=0.3, seed=seed + 2, dtype=np.float64)),
        ("relu3", nn.ReLU()),
        ("drop3", dropout(0.25, seed=seed + 3)),
        ("fc4", nn.Linear(10, 4, init_std=0.3, seed=seed + 4, dtype=np.float64)),
    ], input_shape=(3, 10, 10), name="small")
    for name, p in net.parameters().items():  # positive biases keep most rectifiers open
        if name.endswith(".b"):
            p[...] = 0.2 + 0.1 * rng.standard_normal(p.shape)
    return net


def test_whole_net_gradients_in_training_mode():
    rng = rng_for("net grad")
    net = small_net(1).train()
    x = rng.standard_normal((2, 3, 10, 10))
    labels = rng.integers(0, 4, 2)

    def loss(x_):
        return F.cross_entropy(net.forward(x_, keep=False), labels)[0]

    _, dz = F.cross_entropy(net.forward(x), labels)
    dx = net.backward(dz)
    grads = {k: g.copy() for k, g in net.gradients().items()}
    assert list(grads) == list(net.parameters())
    assert np.any(net["drop3"]._cache_mask == 0), "the dropout mask dropped nothing"
    assert check_gradient(loss, x, dx) < GRAD_TOL
    for name, p in net.parameters().items():
        assert np.any(grads[name]), f"{name}: zero gradient (a dead net passes vacuously)"

        def loss_p(a, name=name, p=p):
            net.set_parameter(name, a)
            try:
                return loss(x)
            finally:
                net.set_parameter(name, p)

        err = check_gradient(loss_p, p.copy(), grads[name])
        assert err < GRAD_TOL, f"{name}: relative error {err:.3g}"


@pytest.mark.parametrize("layer", ["conv1", "pool1", "norm1", "conv2", "relu2", "fc3", "drop3", "fc4"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_backprop_projection_is_the_gradient(layer, mode):
    """project(s, layer, "backprop") == d<a_layer(x), s>/dx, checked by central differences."""
    rng = rng_for("project grad", layer, mode)
    net = small_net(2).train(mode == "train")
    x = rng.standard_normal((2, 3, 10, 10))
    a = net.forward(x, upto=layer)
    s = rng.standard_normal(a.shape)
    g = net.project(s, layer, "backprop")
    assert g.shape == x.shape and np.any(g)

    def f(x_):
        return float(np.vdot(net.forward(x_, upto=layer, keep=False), s))

    err = check_gradient(f, x, g)
    assert err < GRAD_TOL, f"backprop projection from {layer}: relative error {err:.3g}"


def test_project_deconvnet_walk_by_hand():
    """Sequential.project with the deconvnet rule against the same walk written out."""
    rng = rng_for("walk")
    net = small_net(3).eval()
    x = rng.standard_normal((2, 3, 10, 10))
    net.forward(x)
    acts = net.activations
    s = rng.standard_normal(acts["fc4"].shape)
    w = {k: v for k, v in net.parameters().items()}
    t = s @ w["fc4.w"]                                   # fc4^T (dropout: identity in eval)
    t = np.maximum(t, 0) @ w["fc3.w"]                    # relu3 (deconvnet), fc3^T
    t = np.maximum(t.reshape(acts["relu2"].shape), 0)    # flatten back, relu2
    t = F.conv_transpose2d(t, w["conv2.w"], 2, 1, 2, output_shape=acts["norm1"].shape)
    t = F.max_unpool2d(t, net["pool1"].switches, acts["relu1"].shape)  # norm1: identity
    t = F.conv_transpose2d(np.maximum(t, 0), w["conv1.w"], 1, 1, 1, output_shape=x.shape)
    out = net.project(s, "fc4", "deconvnet")
    assert relative_error(out, t) < REF_TOL


# ============================================================== Sequential bookkeeping

def test_activations_names_and_forward_upto():
    rng = rng_for("acts")
    net = small_net(4).eval()
    x = rng.standard_normal((2, 3, 10, 10))
    out = net.forward(x)
    assert list(net.activations) == net.names
    a = x
    for name, layer in net:
        a = layer.forward(a)
        np.testing.assert_array_equal(net.activations[name], a)
    np.testing.assert_array_equal(out, a)
    part = net.forward(x, upto="norm1")
    assert list(net.activations) == ["conv1", "relu1", "pool1", "norm1"]
    np.testing.assert_array_equal(part, net.activations["norm1"])
    net.forward(x, keep=False)
    assert len(net.activations) == 0
    with pytest.raises(ValueError, match="conv9"):
        net.forward(x, upto="conv9")
    with pytest.raises(ValueError, match="layer"):
        net.project(out, "conv9")
    with pytest.raises(ValueError, match="rule"):
        net.project(out, "fc4", "nope")
    assert net["pool1"] is dict(iter(net))["pool1"] and len(net) == 11


def test_sequential_construction_errors():
    with pytest.raises(ValueError, match="twice"):
        nn.Sequential([("a", nn.ReLU()), ("a", nn.ReLU())])
    with pytest.raises(ValueError, match="'a.b'"):
        nn.Sequential([("a.b", nn.ReLU())])
    with pytest.raises(TypeError, match="'a'"):
        nn.Sequential([("a", np.maximum)])
    with pytest.raises(TypeError, match="pairs"):
        nn.Sequential([nn.ReLU()])
    net = nn.Sequential({"r": nn.ReLU(), "f": nn.Flatten()})
    assert net.names == ["r", "f"]


def test_parameters_gradients_and_set_parameter():
    rng = rng_for("params")
    net = small_net(5).eval()
    names = list(net.parameters())
    assert names == ["conv1.w", "conv1.b", "conv2.w", "conv2.b", "fc3.w", "fc3.b", "fc4.w", "fc4.b"]
    assert net.parameters()["conv2.w"] is net["conv2"].params["w"]  # live arrays
    assert net.num_parameters() == sum(p.size for p in net.parameters().values()) == 108 + 4 + 108 + 6 + 540 + 10 + 40 + 4
    x = rng.standard_normal((2, 3, 10, 10))
    net.backward(rng.standard_normal(net.forward(x).shape))
    assert list(net.gradients()) == names
    for k, g in net.gradients().items():
        assert g.shape == net.parameters()[k].shape
    new = rng.standard_normal((4, 10))
    net.set_parameter("fc4.w", new)
    assert net["fc4"].params["w"] is new
    with pytest.raises(ValueError, match="'v'"):
        net.set_parameter("fc4.v", new)
    with pytest.raises(ValueError, match="nope"):
        net.set_parameter("nope.w", new)


def test_train_and_eval_modes():
    net = small_net(6, dropout=nn.Dropout)
    assert not net.training
    assert net.train() is net and net.training
    assert all(layer.training for _, layer in net)
    net.eval()
    assert not net.training and not any(layer.training for _, layer in net)
    # dropout is the identity in eval, and is not in train
    rng = rng_for("modes")
    x = rng.standard_normal((4, 3, 10, 10))
    y_eval = net.forward(x)
    np.testing.assert_array_equal(net.activations["drop3"], net.activations["relu3"])
    np.testing.assert_array_equal(net.forward(x), y_eval)
    net.train()
    net.forward(x)
    assert not np.array_equal(net.activations["drop3"], net.activations["relu3"])


def test_state_dict_round_trip_and_mismatches():
    rng = rng_for("state")
    a, b = small_net(7).eval(), small_net(8).eval()
    x = rng.standard_normal((2, 3, 10, 10))
    assert not np.allclose(a.forward(x), b.forward(x))
    state = a.state_dict()
    assert list(state) == list(a.parameters())
    state["conv1.w"][...] = 0.0  # state arrays are copies
    assert np.any(a["conv1"].params["w"])
    state = a.state_dict()
    assert b.load_state_dict(state) is b
    np.testing.assert_array_equal(b.forward(x), a.forward(x))
    for k in state:
        np.testing.assert_array_equal(b.parameters()[k], state[k])
        assert b.parameters()[k].dtype == np.float64

    missing = dict(state)
    del missing["fc3.b"]
    with pytest.raises(ValueError, match="fc3.b"):
        b.load_state_dict(missing)
    with pytest.raises(ValueError, match="extra.w"):
        b.load_state_dict({**state, "extra.w": np.ones(3)})
    bad = dict(state, **{"conv2.w": np.ones((6, 4, 3, 3))})
    with pytest.raises(ValueError, match="conv2.w"):
        b.load_state_dict(bad)
    # strict=False loads what matches and leaves the rest
    c = small_net(9)
    before = c["fc4"].params["w"].copy()
    c.load_state_dict({"conv1.w": state["conv1.w"]}, strict=False)
    np.testing.assert_array_equal(c["conv1"].params["w"], state["conv1.w"])
    np.testing.assert_array_equal(c["fc4"].params["w"], before)


def test_save_and_load_rebuild_the_architecture(tmp_path):
    rng = rng_for("save")
    net = small_net(10, dropout=nn.Dropout).eval()
    path = net.save(tmp_path / "sub" / "net.npz", classes=["a", "b", "c", "d"], epoch=3, mean=[0.1, 0.2, 0.3])
    assert os.path.exists(path)
    assert os.listdir(tmp_path / "sub") == ["net.npz"]  # no temporary left beside it
    loaded = nn.load(path)
    assert loaded.names == net.names
    assert loaded.spec() == net.spec()
    assert loaded.input_shape == (3, 10, 10) and loaded.name == "small"
    for (n1, l1), (n2, l2) in zip(net, loaded):
        assert type(l1) is type(l2) and l1.config() == l2.config()
    for k, v in net.parameters().items():
        np.testing.assert_array_equal(loaded.parameters()[k], v)
        assert loaded.parameters()[k].dtype == v.dtype, f"{k}: dtype {loaded.parameters()[k].dtype}, saved {v.dtype}"
    x = rng.standard_normal((2, 3, 10, 10))
    np.testing.assert_array_equal(loaded.eval().forward(x), net.forward(x))
    assert nn.read_meta(path)["extra"] == {"classes": ["a", "b", "c", "d"], "epoch": 3, "mean": [0.1, 0.2, 0.3]}
    # arrays passed to save come back in the metadata too (e.g. a per-channel mean)
    mean = rng.standard_normal(3).astype(np.float32)
    path2 = net.save(tmp_path / "arr.npz", mean=mean, classes=["x"])
    extra = nn.read_meta(path2)["extra"]
    assert extra["classes"] == ["x"]
    np.testing.assert_array_equal(extra["mean"], mean)
    assert extra["mean"].dtype == np.float32
    nn.load(path2)  # the extra array is not taken for a parameter
    # Sequential.load into an existing net of the same architecture
    other = small_net(11, dropout=nn.Dropout).load(path)
    np.testing.assert_array_equal(other.eval().forward(x), net.forward(x))


def test_loaded_dropout_layers_keep_their_own_seeds(tmp_path):
    """Rebuilt from a file, two dropout layers of one shape must not draw identical masks."""
    from zfraw import models

    net = models.zfnet_mini(num_classes=3, widths=(4, 4, 4, 4, 4), hidden=64, input_size=32, seed=1)
    loaded = nn.load(net.save(tmp_path / "mini.npz")).train()
    assert loaded["drop6"].config() == net["drop6"].config() != loaded["drop7"].config()
    a = np.ones((8, 64), dtype=np.float32)
    assert not np.array_equal(loaded["drop6"].forward(a), loaded["drop7"].forward(a))


def test_save_load_float32_model(tmp_path):
    from zfraw import models

    net = models.zfnet_mini(num_classes=3, widths=(4, 4, 4, 4, 4), hidden=8, input_size=32, seed=1)
    loaded = nn.load(net.save(tmp_path / "mini.npz"))
    assert loaded.spec() == net.spec() and loaded.num_parameters() == net.num_parameters()
    for k, v in net.parameters().items():
        assert loaded.parameters()[k].dtype == np.float32
        np.testing.assert_array_equal(loaded.parameters()[k], v)
    x = rng_for("mini").standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(loaded.eval().forward(x), net.eval().forward(x))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_saved_file_has_the_usual_mode(tmp_path):
    """The temporary file behind the atomic write is 0600; the result must be like np.savez's."""
    small_net(0, dropout=nn.Dropout).save(tmp_path / "net.npz")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    mode = os.stat(tmp_path / "net.npz").st_mode & 0o777
    assert mode == os.stat(tmp_path / "plain.npz").st_mode & 0o777, oct(mode)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        nn.load(tmp_path / "missing.npz")
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.ones(3))
    with pytest.raises(ValueError, match="zfraw"):
        nn.load(plain)
    with pytest.raises(ValueError, match="npz"):
        small_net(0).save(tmp_path / "net.pkl")


def test_save_is_atomic_when_the_directory_cannot_be_made(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(OSError):
        small_net(0).save(blocker / "sub" / "net.npz")
    assert sorted(os.listdir(tmp_path)) == ["file"]
    assert blocker.read_text() == "not a directory"


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    net = small_net(0, dropout=nn.Dropout)
    path = tmp_path / "net.npz"
    net.save(path)
    good = path.read_bytes()
    real_savez = np.savez

    def failing_savez(fh, **arrays):  # write part of the file, then fail
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        small_net(1).save(path)
    with pytest.raises(OSError, match="disk full"):
        small_net(1).save(tmp_path / "new.npz")
    monkeypatch.setattr(np, "savez", real_savez)
    assert sorted(os.listdir(tmp_path)) == ["net.npz"]  # no partial file, no temporary
    assert path.read_bytes() == good  # the old file is untouched
    nn.load(path)


def test_summary_and_repr():
    net = small_net(0)
    rows = net.summary()
    assert [r[0] for r in rows] == net.names
    shapes = dict((r[0], r[2]) for r in rows)
    assert shapes["pool1"] == (4, 5, 5) and shapes["conv2"] == (6, 3, 3) and shapes["fc4"] == (4,)
    params = dict((r[0], r[3]) for r in rows)
    assert params["conv2"] == 6 * 2 * 9 + 6 and params["relu1"] == 0
    assert "conv1" in repr(net) and "Conv2d" in repr(net)


def test_maxpool_layer_with_per_side_pads_saves_and_unpools(tmp_path):
    """Per-side pads (top, bottom, left, right) survive save/load; the layer's backward
    is the unpooling through its switches (the gradient, checked by finite differences)."""
    from zfraw import functional as F
    from zfraw.gradcheck import check_gradient

    layer = nn.MaxPool2d(3, 2, pad=(0, 1, 1, 0), ceil_mode=True)
    assert layer.padding == (0, 1, 1, 0) and layer.pad == (0, 1, 1, 0)
    assert nn.MaxPool2d(3, 2, pad=(1, 1, 0, 0)).pad == (1, 0)
    net = nn.Sequential([("pool", layer)], input_shape=(2, 7, 6))
    net.save(tmp_path / "p.npz")
    again = nn.load(tmp_path / "p.npz")
    assert again["pool"].padding == (0, 1, 1, 0)
    x = np.random.default_rng(3).standard_normal((1, 2, 7, 6))
    y = again.forward(x)
    ref, _ = F.max_pool2d(x, 3, 2, (0, 1, 1, 0), True)
    np.testing.assert_array_equal(y, ref)
    r = np.random.default_rng(4).standard_normal(y.shape)
    dx = again.backward(r)
    assert check_gradient(lambda a: float(np.vdot(F.max_pool2d(a, 3, 2, (0, 1, 1, 0), True)[0], r)), x, dx) < 1e-6


def test_backward_without_input_grad_gives_the_same_gradients_and_skips_the_rest():
    """Training needs no dx of the image: the lowest trainable layer stores dw, db only."""
    from zfraw import models

    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    grads = []
    for input_grad in (True, False):
        net = models.zfnet_mini(num_classes=5, seed=1)
        net.train()
        out = net.forward(x)
        dy = np.random.default_rng(4).standard_normal(out.shape).astype(np.float32)
        dx = net.backward(dy, input_grad=input_grad)
        assert (dx is None) == (not input_grad)
        grads.append({k: v.copy() for k, v in net.gradients().items()})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        np.testing.assert_array_equal(grads[0][key], grads[1][key], err_msg=key)


def test_backward_without_input_grad_stops_at_the_lowest_layer_with_parameters():
    calls = []

    class Spy(nn.ReLU):
        def backward(self, dy):
            calls.append("spy")
            return super().backward(dy)

    net = nn.Sequential([("spy", Spy()), ("conv", nn.Conv2d(2, 3, 3, pad=1)), ("relu", nn.ReLU())])
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5)).astype(np.float32)
    y = net.forward(x)
    assert net.backward(np.ones_like(y), input_grad=False) is None
    assert calls == [] and net["conv"].grads["w"].shape == (3, 2, 3, 3)
    _, dw, db = F.conv2d_backward(np.ones_like(y) * (y > 0), np.maximum(x, 0), net["conv"].params["w"], 1, 1)
    np.testing.assert_array_equal(net["conv"].grads["w"], dw)
    assert net.backward(np.ones_like(y)).shape == x.shape and calls == ["spy"]
    dx, _, _ = F.conv2d_backward(np.ones_like(y), x, net["conv"].params["w"], 1, 1, input_grad=False)
    assert dx is None
