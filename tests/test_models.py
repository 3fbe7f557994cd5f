"""The networks: ZFNet's shape table end to end, AlexNet's two-tower shapes and parameter
count, the small ZFNet, and the paper's initialisation (seeded, N(0, 1e-2), zero biases).

ZFNet and AlexNet are ~60 M parameters and ~1 GFLOP per image: each is built once
(module fixtures) and run forward once.
"""
import numpy as np
import pytest

from zfraw import models, nn

ZFNET_SHAPES = {
    "conv1": (96, 110, 110), "relu1": (96, 110, 110), "pool1": (96, 55, 55), "norm1": (96, 55, 55),
    "conv2": (256, 26, 26), "relu2": (256, 26, 26), "pool2": (256, 13, 13), "norm2": (256, 13, 13),
    "conv3": (384, 13, 13), "relu3": (384, 13, 13), "conv4": (384, 13, 13), "relu4": (384, 13, 13),
    "conv5": (256, 13, 13), "relu5": (256, 13, 13), "pool5": (256, 6, 6), "flatten": (9216,),
    "fc6": (4096,), "relu6": (4096,), "drop6": (4096,), "fc7": (4096,), "relu7": (4096,), "drop7": (4096,),
}


@pytest.fixture(scope="module")
def zfnet():
    return models.zfnet(num_classes=7, seed=0)


@pytest.fixture(scope="module")
def alexnet():
    return models.alexnet(seed=0)


def conv_params(cin, cout, k, groups=1):
    return cout * (cin // groups) * k * k + cout


def fc_params(fin, fout):
    return fin * fout + fout


def test_zfnet_shape_table_end_to_end(zfnet):
    x = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype(np.float32)
    zfnet.eval()
    y = zfnet.forward(x)
    got = {name: tuple(a.shape) for name, a in zfnet.activations.items()}
    zfnet.clear()
    want = {name: (2,) + shape for name, shape in ZFNET_SHAPES.items()}
    want["fc8"] = (2, 7)
    assert got == want
    assert y.shape == (2, 7) and y.dtype == np.float32 and np.all(np.isfinite(y))
    assert zfnet.input_shape == (3, 224, 224) and zfnet.name == "zfnet"


def test_zfnet_layers_and_parameter_count(zfnet):
    geometry = {name: (layer.kernel_size, layer.stride, layer.pad, layer.groups)
                for name, layer in zfnet if isinstance(layer, nn.Conv2d)}
    assert geometry == {
        "conv1": ((7, 7), (2, 2), (1, 1), 1), "conv2": ((5, 5), (2, 2), (0, 0), 1),
        "conv3": ((3, 3), (1, 1), (1, 1), 1), "conv4": ((3, 3), (1, 1), (1, 1), 1),
        "conv5": ((3, 3), (1, 1), (1, 1), 1),
    }
    pools = {name: (layer.size, layer.stride, layer.ceil_mode) for name, layer in zfnet
             if isinstance(layer, nn.MaxPool2d)}
    assert pools == {"pool1": ((3, 3), (2, 2), True), "pool2": ((3, 3), (2, 2), True),
                     "pool5": ((3, 3), (2, 2), False)}
    for name in ("norm1", "norm2"):
        assert zfnet[name].config() == dict(size=5, alpha=1e-4, beta=0.75, k=2.0)
    assert [zfnet[d].p for d in ("drop6", "drop7")] == [0.5, 0.5]
    expected = (conv_params(3, 96, 7) + conv_params(96, 256, 5) + conv_params(256, 384, 3)
                + conv_params(384, 384, 3) + conv_params(384, 256, 3)
                + fc_params(9216, 4096) + fc_params(4096, 4096) + fc_params(4096, 7))
    assert zfnet.num_parameters() == expected


def test_zfnet_paper_initialisation(zfnet):
    for name, p in zfnet.parameters().items():
        if name.endswith(".b"):
            assert not np.any(p), f"{name}: biases must start at 0"
            continue
        assert p.dtype == np.float32
        std, mean = float(p.std()), float(p.mean())
        # N(0, 1e-2): the sample std of n draws is within a few / sqrt(2n) of 0.01
        assert abs(std - 0.01) < 0.01 * 5 / np.sqrt(2 * p.size), f"{name}: std {std}"
        assert abs(mean) < 0.01 * 5 / np.sqrt(p.size), f"{name}: mean {mean}"
    # each layer draws its own weights (not the same stream restarted)
    a = zfnet["fc6"].params["w"].ravel()[:1000]
    b = zfnet["fc7"].params["w"].ravel()[:1000]
    assert abs(np.corrcoef(a, b)[0, 1]) < 0.15


def test_alexnet_two_tower_shapes_and_parameter_count(alexnet):
    # the Krizhevsky et al. two-GPU AlexNet: conv2, conv4, conv5 split into 2 groups
    expected = (conv_params(3, 96, 11) + conv_params(96, 256, 5, 2) + conv_params(256, 384, 3)
                + conv_params(384, 384, 3, 2) + conv_params(384, 256, 3, 2)
                + fc_params(9216, 4096) + fc_params(4096, 4096) + fc_params(4096, 1000))
    assert expected == 60_965_224  # the known count of the grouped AlexNet (Caffe's bvlc_alexnet)
    assert alexnet.num_parameters() == expected
    assert alexnet["conv2"].params["w"].shape == (256, 48, 5, 5)
    assert alexnet["conv4"].params["w"].shape == (384, 192, 3, 3)
    assert alexnet["conv5"].params["w"].shape == (256, 192, 3, 3)
    assert [alexnet[c].groups for c in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [1, 2, 1, 2, 2]
    x = np.random.default_rng(2).standard_normal((1, 3, 227, 227)).astype(np.float32)
    alexnet.eval()
    y = alexnet.forward(x)
    shapes = {name: tuple(a.shape[1:]) for name, a in alexnet.activations.items()}
    alexnet.clear()
    assert {k: shapes[k] for k in ("conv1", "norm1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5",
                                   "pool5", "fc6", "fc7", "fc8")} == {
        "conv1": (96, 55, 55), "norm1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27),
        "pool2": (256, 13, 13), "conv3": (384, 13, 13), "conv4": (384, 13, 13), "conv5": (256, 13, 13),
        "pool5": (256, 6, 6), "fc6": (4096,), "fc7": (4096,), "fc8": (1000,),
    }
    assert y.shape == (1, 1000) and np.all(np.isfinite(y))
    # Caffe's order: conv, relu, norm, pool
    assert alexnet.names[:4] == ["conv1", "relu1", "norm1", "pool1"]


def test_alexnet_groups_really_split_the_channels(alexnet):
    """With groups=2, the first half of conv2's outputs does not see the second half of its inputs."""
    conv2 = nn.Conv2d(96, 256, 5, 1, 2, groups=2, seed=3, dtype=np.float64)
    conv2.params["w"] = alexnet["conv2"].params["w"].astype(np.float64)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 96, 7, 7))
    y = conv2.forward(x)
    x2 = x.copy()
    x2[:, 48:] = rng.standard_normal((1, 48, 7, 7))
    y2 = conv2.forward(x2)
    np.testing.assert_array_equal(y2[:, :128], y[:, :128])
    assert not np.allclose(y2[:, 128:], y[:, 128:])


@pytest.mark.parametrize("size,side", [(64, 4), (32, 2), (96, 6)])
def test_zfnet_mini_shapes(size, side):
    net = models.zfnet_mini(num_classes=5, input_size=size, widths=(8, 8, 8, 8, 6), hidden=16, seed=1)
    x = np.random.default_rng(size).standard_normal((2, 3, size, size)).astype(np.float32)
    y = net.eval().forward(x)
    shapes = {name: tuple(a.shape[1:]) for name, a in net.activations.items()}
    assert y.shape == (2, 5)
    assert shapes["conv1"] == (8, size // 2, size // 2)
    assert shapes["pool5"] == (6, side, side)
    assert shapes["flatten"] == (6 * side * side,)
    assert net.input_shape == (3, size, size)


def test_zfnet_mini_default_table():
    net = models.zfnet_mini()
    rows = {name: shape for name, _, shape, _ in net.summary()}
    assert rows["conv1"] == (32, 32, 32) and rows["pool1"] == (32, 16, 16)
    assert rows["conv2"] == (64, 16, 16) and rows["pool2"] == (64, 8, 8)
    assert rows["conv3"] == (96, 8, 8) and rows["conv4"] == (96, 8, 8) and rows["conv5"] == (64, 8, 8)
    assert rows["pool5"] == (64, 4, 4) and rows["fc6"] == (256,) and rows["fc8"] == (10,)
    assert net.names == [n for n, _ in models.zfnet_mini(seed=5)]


def test_seeded_init_is_reproducible():
    a = models.zfnet_mini(seed=3).state_dict()
    b = models.zfnet_mini(seed=3).state_dict()
    c = models.zfnet_mini(seed=4).state_dict()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
        if k.endswith(".w"):
            assert not np.array_equal(a[k], c[k]), f"{k}: seeds 3 and 4 give the same weights"
    # layers of equal shape still get different weights
    assert not np.array_equal(a["fc7.w"][:, :100], a["fc6.w"][:, :100])


def test_init_std_he_and_paper():
    net = models.zfnet_mini(seed=2, init_std="he")
    for name, p in net.parameters().items():
        if name.endswith(".b"):
            assert not np.any(p)
            continue
        fan_in = int(np.prod(p.shape[1:]))
        want = np.sqrt(2.0 / fan_in)
        assert abs(p.std() / want - 1) < 5 / np.sqrt(2 * p.size) + 1e-3, f"{name}: std {p.std()}, want {want}"
    paper = models.zfnet_mini(seed=2)
    for name, p in paper.parameters().items():
        if name.endswith(".w"):
            assert abs(p.std() / 0.01 - 1) < 5 / np.sqrt(2 * p.size) + 1e-3, f"{name}: std {p.std()}"


def test_model_argument_errors():
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(ValueError, match="num_classes"):
            models.zfnet_mini(num_classes=bad)
    with pytest.raises(ValueError, match="widths"):
        models.zfnet_mini(widths=(8, 8, 8))
    with pytest.raises(ValueError, match="model"):
        models.build("vgg16")
    with pytest.raises(ValueError, match="init_std"):
        models.zfnet_mini(init_std=0)
    net = models.build("zfnet_mini", num_classes=3, seed=1)
    assert net.name == "zfnet_mini" and net["fc8"].out_features == 3
