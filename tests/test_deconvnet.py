"""The deconvnet: projections against walks written out with the functional ops, the
three ReLU rules, projections from fully connected layers and class scores (the
backprop rule against central differences), selection of activations, receptive
fields (against the exact dependence of units on input rows, found by letting NaN
spread forward) and argument errors.
"""
import zlib

import numpy as np
import pytest

from zfraw import deconvnet as D
from zfraw import functional as F
from zfraw import models, nn
from zfraw.gradcheck import check_gradient, relative_error

TOL = 1e-12


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def tiny_net(seed=0):
    """float64 conv -> relu -> pool (overlapping, ceil) -> conv -> relu -> flatten -> fc -> relu -> fc8."""
    rng = np.random.default_rng(seed)
    net = nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, init_std=0.5, seed=seed, dtype=np.float64)),
        ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ("conv2", nn.Conv2d(4, 5, 3, 1, 1, init_std=0.5, seed=seed + 1, dtype=np.float64)),
        ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(5 * 4 * 4, 6, init_std=0.3, seed=seed + 2, dtype=np.float64)),
        ("relu3", nn.ReLU()),
        ("drop", nn.Dropout(0.5, seed=seed + 3)),
        ("fc8", nn.Linear(6, 3, init_std=0.3, seed=seed + 4, dtype=np.float64)),
    ], input_shape=(3, 8, 8), name="tiny")
    for name, p in net.parameters().items():
        if name.endswith(".b"):
            p[...] = 0.1 + 0.1 * rng.standard_normal(p.shape)
    return net


def strongest(a):
    """Plain loops: per image, the feature with the largest single value, and where it is."""
    out = []
    for img in a.reshape(a.shape[0], a.shape[1], -1):
        best = (-np.inf, None, None)
        for f, m in enumerate(img):
            for loc, v in enumerate(m):
                if v > best[0]:
                    best = (v, f, loc)
        out.append(best[1:])
    return out


def relu_rule(s, x, rule):
    if rule == "deconvnet":
        return np.where(s > 0, s, 0.0)
    if rule == "backprop":
        return np.where(x > 0, s, 0.0)
    return np.where((s > 0) & (x > 0), s, 0.0)


# ============================================================== against a walk by hand

@pytest.mark.parametrize("rule", ["deconvnet", "backprop", "guided"])
@pytest.mark.parametrize("keep", ["max", "map"])
def test_projection_from_pool_against_a_hand_walk(rule, keep):
    """conv -> relu -> pool: select, unpool through the switches, rectify by the rule, C^T."""
    rng = rng_for("walk", rule, keep)
    net = tiny_net(1)
    x = rng.standard_normal((3, 3, 8, 8))
    out, info = D.project(net, x, "pool1", rule=rule, keep=keep, return_info=True)
    assert out.shape == x.shape and out.dtype == x.dtype

    w = net["conv1"].params["w"]
    pre = F.conv2d(x, w, net["conv1"].params["b"], 1, 1)
    act = np.maximum(pre, 0)
    pooled, switches = F.max_pool2d(act, 3, 2, 0, True)
    signal = np.zeros_like(pooled)
    for n, (f, loc) in enumerate(strongest(pooled)):
        plane = signal[n, f].reshape(-1)
        if keep == "max":
            plane[loc] = pooled[n, f].reshape(-1)[loc]
        else:
            plane[:] = pooled[n, f].reshape(-1)
        assert info["feature"][n] == f
        assert tuple(info["location"][n]) == divmod(loc, pooled.shape[3])
        assert info["value"][n] == pooled[n, f].reshape(-1)[loc]
    s = F.max_unpool2d(signal, switches, act.shape)
    s = relu_rule(s, pre, rule)
    want = F.conv_transpose2d(s, w, 1, 1, 1, output_shape=x.shape)
    assert np.any(want)
    assert relative_error(out, want) < TOL


@pytest.mark.parametrize("keep", ["max", "map"])
def test_the_three_rules_differ_as_they_should(keep):
    """conv1 -> relu1 -> conv2, projected from conv2: C^T gives a dense signal of both signs
    at relu1; deconvnet rectifies the signal only, backprop masks by the forward input
    only, guided does both."""
    rng = rng_for("rules", keep)
    net = nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, init_std=0.5, seed=1, dtype=np.float64)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(4, 5, 3, 2, 1, init_std=0.5, seed=2, dtype=np.float64)),
    ])
    x = rng.standard_normal((2, 3, 7, 7))
    outs = {rule: D.project(net, x, "conv2", feature=[1, 3], rule=rule, keep=keep) for rule in F.RELU_RULES}

    net.forward(x)
    a = net.activations["conv2"]
    signal = np.zeros_like(a)
    for n, f in enumerate([1, 3]):
        if keep == "map":
            signal[n, f] = a[n, f]
        else:
            i = np.argmax(a[n, f])
            signal[n, f].flat[i] = a[n, f].flat[i]
    pre = net.activations["conv1"]
    s = F.conv_transpose2d(signal, net["conv2"].params["w"], 2, 1, output_shape=pre.shape)
    for rule, out in outs.items():
        want = F.conv_transpose2d(relu_rule(s, pre, rule), net["conv1"].params["w"], 1, 1, output_shape=x.shape)
        assert relative_error(out, want) < TOL, rule
    # the signal is negative where the forward input was positive, and positive where it was not
    assert np.any((s < 0) & (pre > 0)) and np.any((s > 0) & (pre <= 0))
    for r1, r2 in (("deconvnet", "backprop"), ("deconvnet", "guided"), ("backprop", "guided")):
        assert relative_error(outs[r1], outs[r2]) > 1e-2, (r1, r2)


def test_deconvnet_rule_does_not_use_the_forward_mask():
    """Flip the sign of relu1's recorded forward input at the pixels the unpooled signal
    reaches: the deconvnet projection stays the same, backprop and guided change."""
    rng = rng_for("mask")
    net = tiny_net(3)
    x = rng.standard_normal((1, 3, 8, 8))
    s = rng.standard_normal((1, 4, 4, 4))
    net.eval().forward(x)
    relu, pool = net["relu1"], net["pool1"]
    base = {rule: net.project(s, "pool1", rule) for rule in F.RELU_RULES}
    switched = np.zeros(relu._cache_x.shape, bool)
    for c in range(4):
        switched[0, c].flat[np.unique(pool.switches[0, c])] = True
    relu._cache_x = np.where(switched, -relu._cache_x, relu._cache_x)
    flipped = {rule: net.project(s, "pool1", rule) for rule in F.RELU_RULES}
    np.testing.assert_array_equal(flipped["deconvnet"], base["deconvnet"])
    assert relative_error(flipped["backprop"], base["backprop"]) > 0.1
    assert relative_error(flipped["guided"], base["guided"]) > 0.1


# ============================================================== fully connected layers and class scores

@pytest.mark.parametrize("cls", [0, 2])
def test_backprop_projection_of_a_class_score_is_its_gradient(cls):
    rng = rng_for("class", cls)
    net = tiny_net(4)
    x = rng.standard_normal((1, 3, 8, 8))
    out, info = D.project(net, x, "fc8", feature=cls, rule="backprop", return_info=True)
    assert out.shape == x.shape
    score = net.eval().forward(x)[0, cls]
    assert info["feature"][0] == cls and info["value"][0] == score
    assert tuple(info["location"][0]) == (0, 0)
    # keep="max" keeps the activation itself, so the projection is score * d score / dx
    def f(x_):
        return float(net.forward(x_, keep=False)[0, cls])

    assert check_gradient(f, x, out / score) < 1e-7
    # keep="map" of a (N, C) layer is the same single unit
    np.testing.assert_array_equal(D.project(net, x, "fc8", feature=cls, rule="backprop", keep="map"), out)


def test_projection_from_a_hidden_fc_layer_by_hand():
    rng = rng_for("fc hidden")
    net = tiny_net(5)
    x = rng.standard_normal((2, 3, 8, 8))
    out, info = D.project(net, x, "fc1", rule="deconvnet", return_info=True)
    net.eval().forward(x)
    a = net.activations["fc1"]
    np.testing.assert_array_equal(info["feature"], a.argmax(axis=1))
    signal = np.zeros_like(a)
    signal[np.arange(2), a.argmax(axis=1)] = a.max(axis=1)
    s = (signal @ net["fc1"].params["w"]).reshape(net.activations["relu2"].shape)
    s = F.conv_transpose2d(np.maximum(s, 0), net["conv2"].params["w"], 1, 1, 1, output_shape=(2, 4, 4, 4))
    s = F.max_unpool2d(s, net["pool1"].switches, (2, 4, 8, 8))
    want = F.conv_transpose2d(np.maximum(s, 0), net["conv1"].params["w"], 1, 1, 1, output_shape=x.shape)
    assert relative_error(out, want) < TOL


def test_project_runs_in_eval_mode_and_restores_the_mode():
    rng = rng_for("mode")
    net = tiny_net(6).train()
    x = rng.standard_normal((2, 3, 8, 8))
    a = D.project(net, x, "fc8", rule="backprop")
    assert net.training
    b = D.project(net.eval(), x, "fc8", rule="backprop")
    assert not net.training
    np.testing.assert_array_equal(a, b)  # no dropout inside project


# ============================================================== select

def test_select_max_keeps_one_activation_per_image():
    rng = rng_for("select")
    a = rng.standard_normal((4, 6, 5, 3))
    signal, feats, locs, values = D.select(a)
    for n, (f, loc) in enumerate(strongest(a)):
        assert np.count_nonzero(signal[n]) == 1
        assert feats[n] == f and locs[n] == loc
        assert signal[n, f].flat[loc] == a[n, f].flat[loc] == values[n] == a[n].max()
    # explicit features, one per image
    want = [5, 0, 2, 2]
    signal, feats, locs, values = D.select(a, feature=want)
    np.testing.assert_array_equal(feats, want)
    for n, f in enumerate(want):
        assert np.count_nonzero(signal[n]) == 1
        assert locs[n] == np.argmax(a[n, f]) and values[n] == a[n, f].max()
        assert signal[n, f].flat[locs[n]] == values[n]
    # one int for every image
    signal, feats, _, _ = D.select(a, feature=np.int64(3))
    np.testing.assert_array_equal(feats, [3, 3, 3, 3])


def test_select_map_keeps_the_whole_map():
    rng = rng_for("select map")
    a = rng.standard_normal((3, 5, 4, 4))
    signal, feats, _, _ = D.select(a, keep="map")
    for n, (f, _) in enumerate(strongest(a)):
        assert feats[n] == f
        np.testing.assert_array_equal(signal[n, f], a[n, f])
        others = np.delete(signal[n], f, axis=0)
        assert not np.any(others)
    signal, _, _, _ = D.select(a, feature=[4, 1, 0], keep="map")
    np.testing.assert_array_equal(signal[1, 1], a[1, 1])
    assert np.count_nonzero(signal) == 3 * 16


def test_project_with_map_uses_the_whole_map():
    rng = rng_for("project map")
    net = tiny_net(7)
    x = rng.standard_normal((2, 3, 8, 8))
    out = D.project(net, x, "conv2", feature=[0, 4], keep="map", rule="guided")
    net.eval().forward(x)
    a = net.activations["conv2"]
    signal = np.zeros_like(a)
    signal[0, 0], signal[1, 4] = a[0, 0], a[1, 4]
    np.testing.assert_array_equal(out, net.project(signal, "conv2", "guided"))


# ============================================================== receptive fields

ZFNET_RF = {
    "conv1": (7, 2, -1), "pool1": (11, 4, -1), "conv2": (27, 8, -1), "pool2": (43, 16, -1),
    "conv3": (75, 16, -17), "conv4": (107, 16, -33), "conv5": (139, 16, -49), "pool5": (171, 32, -49),
}


def thin_zfnet(dtype=np.float32):
    """ZFNet's exact geometry with 1-2 channels, so whole batches run in milliseconds."""
    def conv(cin, cout, k, s, p, seed):
        return nn.Conv2d(cin, cout, k, s, p, init_std=0.5, seed=seed, dtype=dtype)

    return nn.Sequential([
        ("conv1", conv(1, 2, 7, 2, 1, 1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ("norm1", nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
        ("conv2", conv(2, 2, 5, 2, 0, 2)), ("relu2", nn.ReLU()), ("pool2", nn.MaxPool2d(3, 2, ceil_mode=True)),
        ("norm2", nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
        ("conv3", conv(2, 2, 3, 1, 1, 3)), ("relu3", nn.ReLU()),
        ("conv4", conv(2, 2, 3, 1, 1, 4)), ("relu4", nn.ReLU()),
        ("conv5", conv(2, 2, 3, 1, 1, 5)), ("relu5", nn.ReLU()),
        ("pool5", nn.MaxPool2d(3, 2)),
    ], input_shape=(1, 224, 224), name="thin")


@pytest.fixture(scope="module")
def zfnet():
    return models.zfnet(seed=0)


def test_zfnet_receptive_fields(zfnet):
    thin = thin_zfnet()
    for layer, (size, stride, offset) in ZFNET_RF.items():
        rf = D.receptive_field(zfnet, layer)
        assert (rf.size, rf.stride, rf.offset) == (size, stride, offset), layer
        assert D.receptive_field(thin, layer) == rf
    # pointwise layers keep the field of the layer below; fc layers see the whole image
    assert D.receptive_field(zfnet, "relu1") == D.receptive_field(zfnet, "conv1")
    assert D.receptive_field(zfnet, "norm2") == D.receptive_field(zfnet, "pool2")
    assert D.receptive_field(zfnet, "fc6") == (224, 224, 0)
    assert D.receptive_field(zfnet, "fc8") == (224, 224, 0)


def test_receptive_fields_are_the_exact_dependence_on_input_rows():
    """Image r has NaN along input row r; a unit is NaN exactly when its field holds row r
    (conv, relu, LRN and max-pool all propagate NaN).  The width is kept small."""
    net = thin_zfnet()
    h, w = 224, 64  # 63 is the narrowest input that reaches pool5
    x = np.random.default_rng(0).standard_normal((h, 1, h, w)).astype(np.float32)
    x[np.arange(h), 0, np.arange(h), :] = np.nan
    net.eval().forward(x)
    for layer, (size, stride, offset) in ZFNET_RF.items():
        a = net.activations[layer]  # (h images, C, Ho, Wo)
        depends = np.isnan(a).any(axis=(1, 3))  # (input row, output row)
        for i in range(a.shape[2]):
            top = offset + i * stride
            want = np.zeros(h, bool)
            want[max(top, 0): min(top + size, h)] = True
            np.testing.assert_array_equal(depends[:, i], want, err_msg=f"{layer} row {i}")


@pytest.mark.parametrize("layer,row,col", [("conv5", 6, 7), ("pool2", 0, 12), ("pool5", 5, 2), ("conv2", 20, 3)])
def test_backprop_support_of_one_unit_lies_in_its_box(layer, row, col):
    rng = rng_for("support", layer)
    net = thin_zfnet(np.float64)
    for name, p in net.parameters().items():  # positive weights, biases and input: every
        p[...] = np.abs(p) + 0.1 if name.endswith(".w") else 0.5  # rectifier open, a large support
    x = np.abs(rng.standard_normal((1, 1, 224, 224)))
    a = net.eval().forward(x, upto=layer)
    c = int(np.argmax(a[0, :, row, col]))
    assert a[0, c, row, col] > 0, "the chosen unit is dead: it would project to nothing"
    s = np.zeros_like(a)
    s[0, c, row, col] = 1.0
    g = net.project(s, layer, "backprop")
    top, left, bottom, right = D.patch_box(net, layer, row, col)
    inside = np.zeros(g.shape, bool)
    inside[..., top:bottom, left:right] = True
    assert np.any(g[inside])
    assert not np.any(g[~inside]), f"{layer} ({row}, {col}): gradient outside {top, left, bottom, right}"
    # and the support reaches beyond the next smaller box (the field is not overstated by much)
    rows, cols = np.nonzero(g[0, 0])
    rf = D.receptive_field(net, layer)
    assert rows.max() - rows.min() + 1 > rf.size // 3 and cols.max() - cols.min() + 1 > rf.size // 3


def test_patch_box_clips_to_the_image(zfnet):
    assert D.patch_box(zfnet, "conv1", 0, 0) == (0, 0, 6, 6)
    assert D.patch_box(zfnet, "conv1", 10, 3) == (19, 5, 26, 12)
    assert D.patch_box(zfnet, "conv1", 109, 109) == (217, 217, 224, 224)
    assert D.patch_box(zfnet, "pool5", 0, 0) == (0, 0, 122, 122)
    assert D.patch_box(zfnet, "pool5", 5, 5) == (111, 111, 224, 224)
    assert D.patch_box(zfnet, "conv3", 6, 6) == (79, 79, 154, 154)
    assert D.patch_box(zfnet, "fc7", 0, 0) == (0, 0, 224, 224)
    assert D.patch_box(zfnet, "pool5", 1, 2, image_shape=(100, 120)) == (0, 15, 100, 120)


# ============================================================== bad input

def test_bad_arguments_name_themselves():
    net = tiny_net(8)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    cases = [
        (dict(layer="conv9"), ValueError, "conv9"),
        (dict(layer="conv2", feature=5), ValueError, "feature"),
        (dict(layer="conv2", feature=-1), ValueError, "feature"),
        (dict(layer="fc8", feature=3), ValueError, "feature"),
        (dict(layer="conv2", feature=[1, 2, 3]), ValueError, "feature"),
        (dict(layer="conv2", feature=1.0), TypeError, "feature"),
        (dict(layer="conv2", rule="gradient"), ValueError, "rule"),
        (dict(layer="conv2", keep="all"), ValueError, "keep"),
    ]
    for kwargs, exc, word in cases:
        with pytest.raises(exc, match=word):
            D.project(net, x, **kwargs)
    with pytest.raises(ValueError, match="x"):
        D.project(net, x[0], "conv2")
    with pytest.raises(TypeError, match="x"):
        D.project(net, x.tolist(), "conv2")
    with pytest.raises(TypeError, match="x"):
        D.project(net, x.astype(np.int64), "conv2")
    with pytest.raises(TypeError, match="net"):
        D.project([net], x, "conv2")
    with pytest.raises(ValueError, match="keep"):
        D.select(x, keep="one")
    with pytest.raises(ValueError, match="conv9"):
        D.receptive_field(net, "conv9")
    with pytest.raises(TypeError, match="net"):
        D.receptive_field("zfnet", "conv1")
    bare = nn.Sequential([("conv", nn.Conv2d(3, 2, 3)), ("flat", nn.Flatten())])
    with pytest.raises(ValueError, match="image_shape"):
        D.patch_box(bare, "conv", 0, 0)
    assert D.patch_box(bare, "conv", 1, 1, image_shape=(5, 5)) == (1, 1, 4, 4)
    with pytest.raises(ValueError, match="input"):
        D.receptive_field(bare, "flat")
