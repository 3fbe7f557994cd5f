"""Pictures: top-k activations against brute force, receptive-field crops, rendering, tables."""

import numpy as np
import pytest
from PIL import Image

from zfraw import data, deconvnet, models
from zfraw import visualize as V


# ----------------------------------------------------------------------------- fixtures
def _small_net(seed=3):
    """A narrow zfnet_mini (random He weights) for 32x32 images: fast, all layer types."""
    return models.zfnet_mini(num_classes=5, seed=seed, widths=(6, 8, 8, 8, 6), hidden=12, input_size=32,
                             init_std="he")


@pytest.fixture(scope="module")
def tiny_set():
    """23 random 32x32 images with exact duplicates (5 -> 17, 3 -> 20, 3 -> 22) for ties."""
    rng = np.random.default_rng(77)
    images = rng.integers(0, 256, size=(23, 32, 32, 3), dtype=np.uint8)
    images[17], images[20], images[22] = images[5], images[3], images[3]
    return data.ArrayDataset(images, rng.integers(0, 5, size=23))


MEAN = np.array([0.48, 0.5, 0.52], dtype=np.float32)


def _transform(img):
    return data.to_chw_float(img, MEAN)


def _brute_force(net, dataset, layer, k):
    """Forward the whole set at once; per feature, sort (value desc, index asc) of each image's max.

    Returns (top: feature -> [(value, index, (row, col))], val (N, C) every image's max).
    """
    x = np.stack([_transform(dataset[i][0]) for i in range(len(dataset))])
    net.eval()
    a = np.asarray(net.forward(x, upto=layer, keep=False), dtype=np.float64)
    n, c = a.shape[:2]
    width = a.shape[3] if a.ndim == 4 else 1
    maps = a.reshape(n, c, -1)
    loc = maps.argmax(axis=2)
    val = maps.max(axis=2)
    out = {}
    for f in range(c):
        order = sorted(range(n), key=lambda i: (-val[i, f], i))[:k]
        out[f] = [(val[i, f], i, (int(loc[i, f] // width), int(loc[i, f] % width))) for i in order]
    return out, val


# ----------------------------------------------------------------------------- top activations
@pytest.mark.parametrize("layer,k,batch_size", [("conv1", 5, 4), ("pool2", 9, 7), ("conv5", 3, 23),
                                                ("relu4", 23, 5), ("fc6", 4, 6), ("fc8", 7, 5)])
def test_top_activations_equal_brute_force(tiny_set, layer, k, batch_size):
    net = _small_net()
    c = net.forward(np.zeros((1, 3, 32, 32), np.float32), upto=layer).shape[1]
    got = V.top_activations(net, tiny_set, layer, range(c), k=k, batch_size=batch_size, transform=_transform)
    want, val = _brute_force(net, tiny_set, layer, k)
    # every layer's output is a GEMM over a tile of several images (conv: one GEMM per tile, fc: one
    # over the batch), whose float32 round-off depends on the batch: two images whose values agree
    # to round-off may trade places (not otherwise); where the image is the same, so is the location.
    tol = 1e-5
    assert list(got) == list(range(c))
    for f in range(c):
        got_idx, want_idx = [r.index for r in got[f]], [w[1] for w in want[f]]
        np.testing.assert_allclose([r.value for r in got[f]], [w[0] for w in want[f]], rtol=tol)
        np.testing.assert_allclose([r.value for r in got[f]], val[got_idx, f], rtol=tol)
        assert [r.value for r in got[f]] == sorted((r.value for r in got[f]), reverse=True)
        for r, g, w in zip(got[f], got_idx, want[f]):
            assert g == w[1] or abs(val[g, f] - val[w[1], f]) <= tol * abs(val[w[1], f]), f"feature {f}"
            if layer.startswith("fc"):
                assert r.location == (0, 0)
            elif g == w[1]:
                assert r.location == w[2], f"feature {f}"
        assert len(set(got_idx)) == len(got_idx)


def test_duplicate_images_tie_and_lower_index_wins(tiny_set):
    net = _small_net()
    got = V.top_activations(net, tiny_set, "conv3", None, k=23, batch_size=4, transform=_transform,
                            n_features=3)
    for recs in got.values():
        pos = {r.index: j for j, r in enumerate(recs)}
        for a, b in [(5, 17), (3, 20), (20, 22)]:
            assert recs[pos[a]].value == recs[pos[b]].value  # exact tie across batches
            assert pos[a] < pos[b]


def test_all_zero_feature_ties_in_index_order(tiny_set):
    """A feature that never fires (a huge negative bias) ties at 0 everywhere: images 0..k-1, first location."""
    net = _small_net()
    b = np.array(net["conv1"].params["b"])
    b[2] = -1e6
    net.set_parameter("conv1.b", b)
    got = V.top_activations(net, tiny_set, "relu1", [2, 0], k=6, batch_size=5, transform=_transform)
    assert list(got) == [2, 0]
    assert [r.index for r in got[2]] == list(range(6))
    assert all(r.value == 0.0 and r.location == (0, 0) for r in got[2])
    assert got[0][0].value > 0


def test_streams_in_bounded_batches_and_fetches_each_image_once(tiny_set):
    net = _small_net()
    fetched, sizes = [], []

    class Counting:
        def __len__(self):
            return len(tiny_set)

        def __getitem__(self, i):
            fetched.append(i)
            return tiny_set[i]

    conv1 = net["conv1"]
    forward = conv1.forward
    conv1.forward = lambda x: (sizes.append(x.shape[0]), forward(x))[1]
    V.top_activations(net, Counting(), "conv2", [0], k=3, batch_size=6, transform=_transform)
    assert sorted(fetched) == list(range(len(tiny_set)))
    assert max(sizes) <= 6 and sum(sizes) == len(tiny_set)
    assert not net.training


def test_auto_features_are_the_most_active(tiny_set):
    net = _small_net()
    every = V.top_activations(net, tiny_set, "conv2", range(8), k=1, transform=_transform)
    maxima = np.array([every[f][0].value for f in range(8)])
    auto = V.top_activations(net, tiny_set, "conv2", None, k=1, transform=_transform, n_features=3)
    assert list(auto) == V.choose_features(maxima, 3) == list(np.argsort(-maxima, kind="stable")[:3])


def test_choose_features_against_sorting(rng):
    for _ in range(20):
        c = int(rng.integers(3, 40))
        maxima = np.round(rng.standard_normal(c), 1)  # rounding makes ties
        n = int(rng.integers(1, c + 1))
        ref = sorted(range(c), key=lambda f: (-maxima[f], f))
        assert V.choose_features(maxima, n, "top") == ref[:n]
        spread = V.choose_features(maxima, n, "spread")
        alive = [f for f in ref if maxima[f] > 0]
        if len(alive) >= n:
            assert set(spread) <= set(alive) and spread[0] == alive[0]
            assert len(spread) == n and (n == 1 or spread[-1] == alive[-1])
            assert spread == sorted(spread, key=ref.index)
        else:
            assert spread == ref[:n]


def test_bad_arguments_name_the_argument(tiny_set):
    net = _small_net()
    with pytest.raises(ValueError, match="features"):
        V.top_activations(net, tiny_set, "conv1", [6], transform=_transform)
    with pytest.raises(ValueError, match="conv9"):
        V.top_activations(net, tiny_set, "conv9", [0], transform=_transform)
    with pytest.raises(ValueError, match="k"):
        V.top_activations(net, tiny_set, "conv1", [0], k=0, transform=_transform)
    with pytest.raises(ValueError, match="how"):
        V.choose_features([1.0, 2.0], 1, how="best")


# ----------------------------------------------------------------------------- receptive fields
@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "pool2", "conv3", "conv5", "pool5"])
def test_projection_support_lies_inside_the_patch_box(layer, rng):
    net = models.zfnet_mini(seed=int(rng.integers(1000)), init_std="he")
    x = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
    a = np.asarray(net.eval().forward(x, upto=layer))
    firing = a.reshape(4, a.shape[1], -1).max(axis=2) > 0
    feats = np.array([rng.choice(np.flatnonzero(firing[i])) for i in range(4)])  # a random feature that fires
    p, info = deconvnet.project(net, x, layer, feature=feats, keep="max", return_info=True)
    for i in range(4):
        assert info["value"][i] > 0
        support = np.abs(p[i]).sum(axis=0) > 0
        box = deconvnet.patch_box(net, layer, *info["location"][i], (64, 64))
        assert support.any()
        inside = np.zeros_like(support)
        inside[box[0]:box[2], box[1]:box[3]] = True
        assert not (support & ~inside).any(), f"{layer}: support outside {box}"
        # the crop top9 takes keeps all of the projection
        assert np.abs(V._crop(p[i], box)).sum() == pytest.approx(np.abs(p[i]).sum(), rel=1e-6)


# ----------------------------------------------------------------------------- rendering
def test_projection_to_image_grey_zero_and_symmetry(rng):
    p = rng.standard_normal((3, 9, 11))
    p[:, 2, 3] = 0.0
    img = V.projection_to_image(p)
    neg = V.projection_to_image(-p)
    assert img.shape == (9, 11, 3) and img.dtype == np.uint8
    assert (img[2, 3] == 128).all()
    assert (img.astype(int) + neg.astype(int) == 256).all()
    assert img.max() == 255 or img.min() == 1  # the default scale uses the full range
    assert (V.projection_to_image(np.zeros((3, 4, 4))) == 128).all()
    # a shared, larger scale compresses toward grey, linearly
    shared = V.projection_to_image(p, scale=2 * np.abs(p).max()).astype(int)
    assert np.abs(shared - 128).max() <= 64
    np.testing.assert_allclose(shared - 128, 63.5 * p.transpose(1, 2, 0) / np.abs(p).max(), atol=0.5 + 1e-9)
    with pytest.raises(ValueError, match="scale"):
        V.projection_to_image(p, scale=-1)


def test_image_to_uint8_inverts_the_preprocessing(rng):
    img = rng.integers(0, 256, size=(10, 12, 3), dtype=np.uint8)
    for mean in [rng.uniform(0, 1, 3).astype(np.float32), rng.uniform(0, 1, (3, 10, 12)).astype(np.float32)]:
        x = data.to_chw_float(img, mean)
        assert np.array_equal(V.image_to_uint8(x, mean), img)
    assert np.array_equal(V.image_to_uint8(data.to_chw_float(img)), img)


def test_grid_layout_sizes_and_centring(rng):
    sizes = [(5, 7), (9, 4), (3, 3), (9, 7), (2, 6)]
    images = [rng.integers(0, 256, size=s + (3,), dtype=np.uint8) for s in sizes]
    g = V.grid(images, ncols=3, pad=2, background=(10, 20, 30))
    ch, cw = 9, 7
    assert g.size == (3 * cw + 4 * 2, 2 * ch + 3 * 2)
    a = np.asarray(g)
    assert (a[0, 0] == (10, 20, 30)).all()
    for i, im in enumerate(images):
        r, c = divmod(i, 3)
        top = 2 + r * (ch + 2) + (ch - im.shape[0]) // 2
        left = 2 + c * (cw + 2) + (cw - im.shape[1]) // 2
        assert np.array_equal(a[top:top + im.shape[0], left:left + im.shape[1]], im)
    assert V.grid(images[:2], ncols=5, pad=0).size == (14, 9)  # ncols larger than the count
    gray = V.grid([rng.integers(0, 256, size=(4, 4), dtype=np.uint8)], 1, pad=1)
    assert gray.mode == "RGB" and gray.size == (6, 6)
    with pytest.raises(TypeError, match="uint8"):
        V.grid([np.zeros((3, 3, 3))], 1)


def test_upscale_is_nearest_neighbour(rng):
    a = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
    up = V.upscale(a, 3)
    assert np.array_equal(up, np.kron(a, np.ones((3, 3, 1), dtype=np.uint8)))
    pil = V.upscale(Image.fromarray(a), 3)
    assert pil.size == (15, 12) and np.array_equal(np.asarray(pil), up)


@pytest.mark.parametrize("normalize", ["filter", "shared"])
def test_filters_image_size_and_normalization(rng, normalize):
    w = rng.standard_normal((10, 3, 5, 5)) * rng.uniform(0.1, 2.0, size=(10, 1, 1, 1))
    img = V.filters_image(w, ncols=4, scale=3, pad=1, normalize=normalize)
    assert img.size == (4 * 15 + 5, 3 * 15 + 4)
    a = np.asarray(img).astype(int)
    extremes = []
    for f in range(10):
        r, c = divmod(f, 4)
        tile = a[1 + r * 16:1 + r * 16 + 15, 1 + c * 16:1 + c * 16 + 15]
        extremes.append(np.abs(tile - 128).max())
    if normalize == "filter":
        assert all(e == 127 for e in extremes)  # each filter reaches the full range
    else:
        assert max(extremes) == 127 and min(extremes) < 127
    net = models.zfnet_mini(init_std="he")
    assert V.filters_image(net, ncols=8, scale=2).size == (8 * 14 + 9, 4 * 14 + 5)


def test_top9_figure_lines_up_projections_and_patches(tiny_set):
    net = _small_net()
    recs = V.top_activations(net, tiny_set, "conv2", [1, 4], k=9, transform=_transform)
    figs = V.top9(net, tiny_set, "conv2", [1, 4], _transform, MEAN, records=recs, title=False, cell=20)
    assert list(figs) == [1, 4]
    for f, fig in figs.items():
        a = np.asarray(fig)
        assert fig.mode == "RGB" and a.std() > 0
        # two 3x3 grids of the same cells side by side: each cell is the largest receptive-field box
        # (clipped by the image border) of the feature's records, enlarged by one factor
        boxes = [deconvnet.patch_box(net, "conv2", *r.location, (32, 32)) for r in recs[f]]
        ch, cw = max(b[2] - b[0] for b in boxes), max(b[3] - b[1] for b in boxes)
        factor = V._factor(max(ch, cw), 20)
        assert fig.size == (2 * (3 * cw * factor + 4 * 2) + 12, 3 * ch * factor + 4 * 2)
        half = (fig.width - 12) // 2
        left, right = a[:, :half], a[:, half + 12:]
        # the right grid: the records' images, as given, cut to their boxes
        patches = [np.kron(tiny_set[r.index][0][t:b, l:rr], np.ones((factor, factor, 1), np.uint8))
                   for r, (t, l, b, rr) in zip(recs[f], boxes)]
        assert np.array_equal(right, np.asarray(V.grid(patches, 3)))
        # the left grid: projections drawn around grey
        drawn = left[(left != 255).any(axis=2)]
        assert abs(np.median(drawn) - 128) < 8 and drawn.std() > 0
    # without records it scans itself and gets the same figures
    again = V.top9(net, tiny_set, "conv2", [1, 4], _transform, MEAN, title=False, cell=20)
    assert all(np.array_equal(np.asarray(again[f]), np.asarray(figs[f])) for f in figs)


def test_project_image_shows_image_and_projection(tiny_set):
    net = _small_net()
    x = _transform(tiny_set[2][0])
    img = V.project_image(net, x, "conv3", mean=MEAN, factor=2)
    assert img.width >= 2 * 64 and img.height > 64
    a = np.asarray(img)
    assert a.std() > 0
    with pytest.raises(ValueError, match="one image"):
        V.project_image(net, np.stack([x, x]), "conv3")


# ----------------------------------------------------------------------------- architecture
def test_architecture_table_of_zfnet():
    net = models.zfnet(num_classes=1000)
    rows = {r["name"]: r for r in V.architecture_table(net)}
    shapes = {"conv1": (96, 110, 110), "pool1": (96, 55, 55), "conv2": (256, 26, 26), "pool2": (256, 13, 13),
              "conv3": (384, 13, 13), "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,),
              "fc8": (1000,)}
    for name, shape in shapes.items():
        assert rows[name]["output_shape"] == shape, name
    params = {"conv1": 96 * 3 * 7 * 7 + 96, "conv2": 256 * 96 * 25 + 256, "conv3": 384 * 256 * 9 + 384,
              "conv4": 384 * 384 * 9 + 384, "conv5": 256 * 384 * 9 + 256, "fc6": 4096 * 9216 + 4096,
              "fc7": 4096 * 4096 + 4096, "fc8": 1000 * 4096 + 1000, "relu1": 0, "pool1": 0}
    for name, count in params.items():
        assert rows[name]["params"] == count, name
    assert sum(r["params"] for r in rows.values()) == net.num_parameters()
    assert (rows["conv1"]["rf_size"], rows["conv1"]["rf_stride"]) == (7, 2)
    assert rows["conv1"]["receptive_field"] == "7/2"
    # 7 + (3-1)*2 = 11 at pool1, + (5-1)*4 = 27 at conv2
    assert rows["pool1"]["rf_size"] == 11 and rows["conv2"]["rf_size"] == 27
    assert rows["fc6"]["receptive_field"] == "whole image" and rows["flatten"]["receptive_field"] == "whole image"
    assert rows["conv1"]["config"] == "96 7x7/2 pad 1" and rows["pool1"]["config"] == "3x3/2 ceil"

    text = V.format_table(list(rows.values()))
    lines = text.splitlines()
    assert len(lines) == len(rows) + 4
    starts = [line.index("conv1") for line in lines if line.startswith("conv1")]
    assert starts == [0]
    # every data line ends its parameter count in the same column
    col = lines[0].index("parameters") + len("parameters")
    for line in lines[2:-3]:
        assert line[col - 1].isdigit() and line[col] == " ", line
    assert lines[-1].startswith("total") and f"{net.num_parameters():,}" in lines[-1]


def test_architecture_table_of_zfnet_mini_at_another_size():
    net = models.zfnet_mini(init_std="he")
    rows = V.architecture_table(net)
    assert rows[0]["output_shape"] == (32, 32, 32) and rows[0]["receptive_field"] == "7/2"
    assert net.input_shape == (3, 64, 64)
    with pytest.raises(ValueError, match="input_shape"):
        V.architecture_table(net, (64, 64))
