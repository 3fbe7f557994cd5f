"""Occlusion sensitivity (fig. 7): the three maps against a brute-force loop (occlude one
position, forward, read) on a tiny net, on every backend; a square over the whole image;
batching; bounded memory; the figure; bad arguments."""
import tracemalloc

import numpy as np
import pytest

import zfraw
from zfraw import nn
from zfraw.analysis.occlusion import OcclusionMaps, grid_shape, occlusion, plan_batch, strongest_drop
from zfraw.backend import set_workspace_bytes

from conftest import backend_params


def tiny_net(dtype=np.float64, classes=4):
    """conv 3->4 (3x3 pad 1) -> relu -> pool 2 -> conv 4->5 (3x3) -> relu -> fc -> 4 classes; input 3x12x10."""
    with zfraw.use_backend("numpy"):
        net = nn.Sequential([
            ("conv1", nn.Conv2d(3, 4, 3, 1, 1, init_std="he", seed=1)), ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(4, 5, 3, init_std="he", seed=2)), ("relu2", nn.ReLU()),
            ("flatten", nn.Flatten()), ("fc", nn.Linear(5 * 4 * 3, classes, init_std="he", seed=3)),
        ], input_shape=(3, 12, 10), name="tiny")
        for layer in (net["conv1"], net["conv2"], net["fc"]):
            if "b" in layer.params:
                layer.params["b"] = np.random.default_rng(7).normal(0, 0.1, layer.params["b"].shape)
        return net.astype(dtype)


def brute_force(net, x, size, stride, layer, feature, target, fill):
    """The maps by the definition: one occluded copy at a time, forward, read (NumPy, float64)."""
    n, _, h, w = x.shape
    rows, cols = range(0, h - size + 1, stride), range(0, w - size + 1, stride)
    shape = (n, len(rows), len(cols))
    activity, probability, label = np.zeros(shape), np.zeros(shape), np.zeros(shape, dtype=np.int64)
    for i in range(n):
        for a, r in enumerate(rows):
            for b, c in enumerate(cols):
                xo = x[i:i + 1].copy()
                xo[:, :, r:r + size, c:c + size] = fill
                scores = net.forward(xo)[0].astype(np.float64)
                activity[i, a, b] = net.activations[layer][0, feature[i]].sum()
                e = np.exp(scores - scores.max())
                probability[i, a, b] = e[target[i]] / e.sum()
                label[i, a, b] = int(np.argmax(scores))
    return activity, probability, label


CASES = [  # size, stride, layer, fill
    (3, 1, "conv2", 0.0),
    (4, 3, "relu1", 0.5),
    (5, 2, "fc", -1.0),
    (10, 4, "relu2", 0.0),
]


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
def test_maps_match_a_brute_force_loop(backend, rng):
    net = tiny_net()
    x = rng.standard_normal((2, 3, 12, 10))
    for size, stride, layer, fill in CASES:
        feature = rng.integers(0, net.forward(x, upto=layer).shape[1], 2)
        target = rng.integers(0, 4, 2)
        want = brute_force(net, x, size, stride, layer, feature, target, fill)
        with zfraw.use_backend(backend):
            dev = zfraw.to_device(tiny_net())
            maps = occlusion(dev, zfraw.to_device(x), size, stride, layer=layer, feature=feature, target=target,
                             fill=fill, batch_size=5, progress=False)
        assert isinstance(maps, OcclusionMaps) and maps.layer == layer and (maps.size, maps.stride) == (size, stride)
        assert maps.activity.shape == maps.probability.shape == maps.label.shape == want[0].shape
        assert maps.activity.shape[1:] == ((12 - size) // stride + 1, (10 - size) // stride + 1)
        assert all(isinstance(a, np.ndarray) for a in maps[:3])
        np.testing.assert_allclose(maps.activity, want[0], rtol=1e-9, atol=1e-9, err_msg=f"{backend} {layer}")
        np.testing.assert_allclose(maps.probability, want[1], rtol=1e-9, atol=1e-12)
        np.testing.assert_array_equal(maps.label, want[2])
        np.testing.assert_array_equal(maps.feature, feature)
        np.testing.assert_array_equal(maps.target, target)


def test_defaults_last_conv_strongest_map_and_prediction(rng):
    net = tiny_net()
    x = rng.standard_normal((3, 3, 12, 10))
    maps = occlusion(net, x, 4, 2, progress=False)
    scores = net.forward(x)
    a = net.activations["conv2"]
    assert maps.layer == "conv2"  # the last convolution layer
    np.testing.assert_array_equal(maps.feature, a.reshape(3, 5, -1).max(axis=2).argmax(axis=1))
    np.testing.assert_array_equal(maps.target, scores.argmax(axis=1))
    truth = np.array([0, 1, 2])
    np.testing.assert_array_equal(occlusion(net, x, 4, 2, target=truth, progress=False).target, truth)
    np.testing.assert_array_equal(occlusion(net, x, 4, 2, target=3, progress=False).target, [3, 3, 3])
    one = occlusion(net, x[0], 4, 2, progress=False)  # one image (C, H, W)
    assert one.activity.shape == (1,) + maps.activity.shape[1:]
    np.testing.assert_allclose(one.probability[0], maps.probability[0], rtol=1e-12)


def test_a_square_over_the_whole_image_gives_the_fill_images_outputs():
    net = nn.Sequential([("conv", nn.Conv2d(3, 2, 3, seed=4, init_std="he")), ("relu", nn.ReLU()),
                         ("flatten", nn.Flatten()), ("fc", nn.Linear(2 * 6 * 6, 3, seed=5, init_std="he"))]
                        ).astype(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8))
    for fill in (0.0, 0.7, np.array([0.1, -0.2, 0.3])):
        maps = occlusion(net, x, 8, 1, layer="relu", feature=1, fill=fill, progress=False)
        assert maps.activity.shape == (2, 1, 1)
        filled = np.broadcast_to(np.reshape(fill, (-1, 1, 1)), (3, 8, 8))[None].copy()
        scores = net.forward(filled)[0]
        p = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        for i in range(2):
            assert maps.activity[i, 0, 0] == pytest.approx(net.activations["relu"][0, 1].sum(), rel=1e-12)
            assert maps.probability[i, 0, 0] == pytest.approx(p[maps.target[i]], rel=1e-12)
            assert maps.label[i, 0, 0] == int(scores.argmax())


def test_batch_size_does_not_change_the_maps(rng):
    net = tiny_net()
    x = rng.standard_normal((2, 3, 12, 10))
    positions = int(np.prod(grid_shape(12, 10, 3, 1)))
    runs = [occlusion(net, x, 3, 1, batch_size=b, progress=False) for b in (1, 7, positions)]
    for other in runs[1:]:
        np.testing.assert_allclose(other.activity, runs[0].activity, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other.probability, runs[0].probability, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(other.label, runs[0].label)


def test_plan_batch_stays_within_the_budget():
    for per_copy in (1, 100, 4096, 10 ** 6):
        for budget in (1, 5000, 10 ** 6, 10 ** 9):
            for batch_size in (1, 7, 64, 10 ** 6):
                b = plan_batch(per_copy, batch_size, 50_000, budget)
                assert 1 <= b <= min(batch_size, 50_000)
                assert b == 1 or b * per_copy <= budget
                assert b == min(batch_size, 50_000, max(1, budget // per_copy))
    assert plan_batch(10, 64, 5, 10 ** 9) == 5  # never more copies than positions


def test_peak_memory_does_not_grow_with_the_number_of_positions():
    """With a small workspace budget the batch is capped, so a 16x finer grid (about 15x the
    occluded copies) needs no more memory at its peak than a coarse one."""
    net = tiny_net(np.float32)
    x = np.random.default_rng(2).standard_normal((1, 3, 12, 10)).astype(np.float32)
    old = set_workspace_bytes(40_000)  # a few copies' activations
    try:
        peaks = {}
        for stride in (4, 1):
            occlusion(net, x, 2, stride, batch_size=10 ** 6, progress=False)  # warm up
            tracemalloc.start()
            maps = occlusion(net, x, 2, stride, batch_size=10 ** 6, progress=False)
            peaks[stride] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert maps.activity.size == ((12 - 2) // stride + 1) * ((10 - 2) // stride + 1)
    finally:
        set_workspace_bytes(old)
    assert peaks[1] < 1.5 * peaks[4], peaks


def test_strongest_drop_points_at_the_lowest_probability(rng):
    net = tiny_net()
    maps = occlusion(net, rng.standard_normal((2, 3, 12, 10)), 4, 2, progress=False)
    for i, drop in enumerate(strongest_drop(maps)):
        r, c = drop.top // 2, drop.left // 2
        assert drop.probability == maps.probability[i].min() == maps.probability[i, r, c]
        assert drop.label == maps.label[i, r, c]


def test_figure_has_five_panels_and_a_legend(rng):
    from zfraw.render.occlusion import occlusion_figure

    net = tiny_net()
    x = rng.standard_normal((1, 3, 12, 10))
    maps = occlusion(net, x, 4, 2, progress=False)
    image = np.zeros((12, 10, 3), dtype=np.uint8)
    picture = occlusion_figure(maps, 0, image, np.zeros((3, 12, 10)), classes=["a", "b", "c", "d"])
    assert picture.mode == "RGB" and picture.width > 4 * picture.height
    odd = occlusion_figure(maps, 0, image, np.zeros((3, 12, 10)), classes=[r"cost $\bad$", "$x", "c", "d"])
    assert odd.width > 4 * odd.height  # drawn as written, not parsed as mathtext (which raised)
    with pytest.raises(ValueError, match="projection"):
        occlusion_figure(maps, 0, image, np.zeros((3, 5, 5)))
    with pytest.raises(ValueError, match="index"):
        occlusion_figure(maps, 1, image, np.zeros((3, 12, 10)))


def test_bad_arguments_name_the_argument(rng):
    net = tiny_net()
    x = rng.standard_normal((2, 3, 12, 10))
    with pytest.raises(ValueError, match="size"):
        occlusion(net, x, 11, 1, progress=False)          # larger than the 12x10 image
    with pytest.raises(ValueError, match="size"):
        occlusion(net, x, 0, 1, progress=False)
    with pytest.raises(ValueError, match="stride"):
        occlusion(net, x, 3, 0, progress=False)
    with pytest.raises(TypeError, match="stride"):
        occlusion(net, x, 3, 1.5, progress=False)
    with pytest.raises(ValueError, match="layer 'conv9'"):
        occlusion(net, x, 3, 1, layer="conv9", progress=False)
    with pytest.raises(ValueError, match="feature"):
        occlusion(net, x, 3, 1, layer="conv2", feature=5, progress=False)
    with pytest.raises(ValueError, match="target"):
        occlusion(net, x, 3, 1, target=[0, 1, 2], progress=False)
    with pytest.raises(ValueError, match="target"):
        occlusion(net, x, 3, 1, target=4, progress=False)
    with pytest.raises(ValueError, match="fill"):
        occlusion(net, x, 3, 1, fill=[0.0, 1.0], progress=False)
    for bad in (float("nan"), float("inf"), [0.0, np.nan, 1.0]):
        with pytest.raises(ValueError, match="fill: expected finite"):
            occlusion(net, x, 3, 1, fill=bad, progress=False)
    with pytest.raises(ValueError, match="x"):
        occlusion(net, x[0, 0], 3, 1, progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        occlusion(net, x, 3, 1, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="net"):
        occlusion("net", x, 3, 1, progress=False)
