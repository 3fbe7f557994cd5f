"""Invariance (fig. 5): the transforms against exact references, distance 0 at the identity,
a translation-equivariant hand-built net whose distances are known, the figure, bad arguments."""
import matplotlib
import numpy as np
import pytest

from zfraw import nn
from zfraw.analysis.invariance import IDENTITY, TRANSFORMS, invariance, transform_images
from zfraw.render.invariance import invariance_figure


def _tiny_net():
    return nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, seed=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(4 * 8 * 8, 16, seed=2)), ("relu2", nn.ReLU()),
        ("fc2", nn.Linear(16, 3, seed=3)),
    ], input_shape=(3, 16, 16), name="tiny")


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_identity_amount_gives_distance_zero_exactly(rng, transform):
    net = _tiny_net()
    x = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    other = {"translate": 3, "scale": 1.5, "rotate": 45}[transform]
    r = invariance(net, x, transform, [other, IDENTITY[transform], -other if transform != "scale" else 0.7],
                   ["conv1", "fc1"])
    for lyr in ("conv1", "fc1"):
        assert r[lyr]["distance"].shape == (3, 3) and r[lyr]["relative"].shape == (3, 3)
        assert np.all(r[lyr]["distance"][:, 1] == 0.0)
        assert np.all(r[lyr]["distance"][:, 0] > 0)
    p0 = r["probability"][:, 1]
    assert np.all(p0 > 1 / 3 - 1e-12)  # the prediction's own probability is the largest of 3


def test_transforms_match_exact_references(rng):
    x = rng.standard_normal((2, 3, 9, 9))
    shifted = np.zeros_like(x)
    shifted[:, :, 3:] = x[:, :, :-3]
    np.testing.assert_array_equal(transform_images(x, "translate", 3), shifted)  # down 3, zeros come in
    up = np.zeros_like(x)
    up[:, :, :-2] = x[:, :, 2:]
    np.testing.assert_array_equal(transform_images(x, "translate", -2), up)
    # 90 degrees counter-clockwise about the centre of a square image is np.rot90 (up to rounding of cos 90)
    np.testing.assert_allclose(transform_images(x, "rotate", 90), np.rot90(x, 1, axes=(2, 3)), atol=1e-12)
    np.testing.assert_allclose(transform_images(x, "rotate", 180), x[:, :, ::-1, ::-1], atol=1e-12)
    # scaling by 2 about the centre: output pixel (r, c) samples (4 + (r - 4) / 2, ...) bilinearly
    big = transform_images(x, "scale", 2.0)
    np.testing.assert_allclose(big[:, :, 4, 4], x[:, :, 4, 4], atol=1e-12)
    np.testing.assert_allclose(big[:, :, 2, 4], x[:, :, 3, 4], atol=1e-12)
    np.testing.assert_allclose(big[:, :, 3, 4], (x[:, :, 3, 4] + x[:, :, 4, 4]) / 2, atol=1e-12)
    for t in TRANSFORMS:
        np.testing.assert_array_equal(transform_images(x, t, IDENTITY[t]), x)


def _equivariant_net(kernel):
    """conv (3x3, pad 1, no bias, one map) -> flatten -> a linear layer whose first output is the map's sum."""
    conv = nn.Conv2d(1, 1, 3, 1, 1, bias=False)
    conv.params["w"] = kernel.reshape(1, 1, 3, 3).astype(np.float64)
    fc = nn.Linear(16 * 16, 2, bias=False)
    fc.params["w"] = np.stack([np.ones(256), np.zeros(256)])
    return nn.Sequential([("conv", conv), ("flatten", nn.Flatten()), ("sum", fc)],
                         input_shape=(1, 16, 16)).astype(np.float64)


def test_translation_of_an_equivariant_net_has_the_predicted_distances(rng):
    """A zero-padded conv commutes with shifts of an object away from the border: the conv feature
    moves with the image (distance = ||shift(f) - f||, computed here by hand) and its sum does not
    change at all (distance 0), while the probability of class 0 stays put."""
    kernel = rng.standard_normal((3, 3))
    net = _equivariant_net(kernel)
    x = np.zeros((2, 1, 16, 16))
    x[:, :, 6:10, 5:11] = rng.standard_normal((2, 1, 4, 6))
    amounts = [-4, -2, 0, 1, 3, 5]
    r = invariance(net, x, "translate", amounts, ["conv", "sum"], target=0)
    f = net.forward(x, upto="conv")[:, 0]
    for j, d in enumerate(amounts):
        moved = np.roll(f, d, axis=1)  # the object stays inside: rolling = shifting with zeros
        expected = np.sqrt(((moved - f) ** 2).sum(axis=(1, 2)))
        np.testing.assert_allclose(r["conv"]["distance"][:, j], expected, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(r["conv"]["relative"][:, j], expected / np.sqrt((f ** 2).sum(axis=(1, 2))),
                                   rtol=1e-10)
    np.testing.assert_allclose(r["sum"]["distance"], 0.0, atol=1e-9)
    s = f.sum(axis=(1, 2))
    p = 1 / (1 + np.exp(-s))  # softmax of (s, 0), class 0
    np.testing.assert_allclose(r["probability"], np.repeat(p[:, None], len(amounts), 1), rtol=1e-9)
    np.testing.assert_array_equal(r["target"], [0, 0])


def test_relative_is_nan_where_the_feature_is_zero():
    net = _equivariant_net(np.ones((3, 3)))
    x = np.zeros((1, 1, 16, 16))
    r = invariance(net, x, "rotate", [0, 30], ["conv"])
    assert np.all(np.isnan(r["conv"]["relative"])) and np.all(r["conv"]["distance"] == 0)


def test_figure_has_one_panel_per_layer_and_one_for_the_probability(rng):
    net = _tiny_net()
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    r = invariance(net, x, "scale", [0.8, 1.0, 1.2], ["conv1", "fc1"])
    one = invariance_figure(r, ["conv1"], labels=["a", "b"])
    two = invariance_figure(r, ["conv1", "fc1"], kind="distance")
    assert two.width > one.width * 1.3 and one.mode == "RGB"
    with pytest.raises(ValueError, match="kind"):
        invariance_figure(r, kind="cosine")
    with pytest.raises(ValueError, match="layers"):
        invariance_figure(r, ["conv9"])
    # names are drawn as written: "$\\bad$" would be mathtext that does not parse
    odd = invariance_figure(r, ["conv1"], labels=[r"cost $\bad$ x.jpg", "a_$5_$6"], title=r"$\bad$")
    assert odd.size[0] > 0 and matplotlib.rcParams["text.parse_math"]  # and the setting is restored


@pytest.mark.parametrize("kwargs, match", [
    (dict(transform="shear"), "transform must be one of"),
    (dict(layers=["conv9"]), "layers: 'conv9' is not a layer"),
    (dict(layers=[]), "layers must name at least one layer"),
    (dict(amounts=[]), "amounts must hold at least one"),
    (dict(amounts=["a"]), "amounts must be numbers"),
    (dict(transform="scale", amounts=[0.5, 0]), "amounts must be scale factors > 0"),
    (dict(target=7), "target must be classes in"),
    (dict(target=[0, 1, 2]), "target must be a class index or 2"),
])
def test_bad_arguments_name_the_argument(rng, kwargs, match):
    net = _tiny_net()
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    args = dict(transform="translate", amounts=[0, 2], layers=["conv1"])
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        invariance(net, x, args["transform"], args["amounts"], args["layers"], target=args.get("target"))
