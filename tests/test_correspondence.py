"""Correspondence analysis (table 1): Delta by hand on small sign vectors, against a
brute-force computation on a tiny net, identical images give 0, the random baseline,
determinism, the table, and bad arguments."""
import itertools

import numpy as np
import pytest

import zfraw
from zfraw import nn
from zfraw.analysis.correspondence import (check_boxes, correspondence, fill_boxes, random_boxes,
                                           sign_delta)
from zfraw.render.correspondence import html_table, markdown_table

from conftest import backend_params


def tiny_net():
    with zfraw.use_backend("numpy"):
        return nn.Sequential([
            ("conv1", nn.Conv2d(3, 4, 3, 1, 1, init_std="he", seed=1)), ("relu1", nn.ReLU()),
            ("pool1", nn.MaxPool2d(2)), ("flatten", nn.Flatten()),
            ("fc", nn.Linear(4 * 6 * 5, 6, init_std="he", seed=2)), ("relu", nn.ReLU()),
        ], input_shape=(3, 12, 10)).astype(np.float64)


def hamming_sum(signs):
    """Delta by the definition: a loop over ordered pairs, the fraction of differing signs."""
    return sum(np.mean(signs[i] != signs[j]) for i, j in itertools.permutations(range(len(signs)), 2))


def test_delta_by_hand():
    # two vectors of length 4 differing in 2 places: H = 1/2 each way
    assert sign_delta([[1, 0, -1, 1], [1, 1, -1, -1]]) == (1.0, 0.5)
    # three vectors: H(a,b) = 1/3, H(a,c) = 3/3, H(b,c) = 2/3 -> Delta = 2 * 2 = 4, per pair 4 / 6
    s = np.array([[1, -1, 0], [1, -1, 1], [-1, 1, 1]])
    delta, per_pair = sign_delta(s)
    assert delta == pytest.approx(2 * (1 / 3 + 1 + 2 / 3)) and per_pair == pytest.approx(delta / 6)
    # identical vectors: 0; all different: n (n - 1)
    assert sign_delta(np.ones((5, 7))) == (0.0, 0.0)
    assert sign_delta([[1, 1], [0, 0], [-1, -1]]) == (6.0, 1.0)


def test_delta_matches_the_pair_loop_on_random_signs(rng):
    for n, d in [(2, 1), (3, 10), (7, 33), (12, 200)]:
        s = rng.integers(-1, 2, (n, d))
        delta, per_pair = sign_delta(s)
        assert delta == pytest.approx(hamming_sum(s), rel=1e-12)
        assert per_pair == pytest.approx(delta / (n * (n - 1)), rel=1e-12)


def brute_delta(net, x, boxes, layer, fill=0.0):
    def features(images):
        net.forward(images, upto=layer)
        return net.activations[layer].reshape(len(images), -1)

    occluded = x.copy()
    for i, (t, l, b, r) in enumerate(boxes):
        occluded[i, :, t:b, l:r] = fill
    return hamming_sum(np.sign(features(x) - features(occluded)))


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
def test_correspondence_matches_brute_force(backend, rng):
    net = tiny_net()
    x = rng.standard_normal((5, 3, 12, 10))
    boxes = np.array([[0, 0, 4, 4], [2, 3, 6, 7], [8, 6, 12, 10], [1, 1, 5, 5], [5, 2, 9, 6]])
    layers = ["conv1", "pool1", "relu"]
    want = {layer: brute_delta(net, x, boxes, layer) for layer in layers}
    # the baseline: the same generator stream gives the same random boxes
    gen = np.random.default_rng(3)
    draws = [random_boxes(boxes, 12, 10, gen) for _ in range(4)]
    want_random = {layer: np.array([brute_delta(net, x, d, layer) for d in draws]) for layer in layers}
    with zfraw.use_backend(backend):
        result = correspondence(zfraw.to_device(tiny_net()), zfraw.to_device(x), boxes, layers,
                                random_draws=4, seed=3)
    for layer in layers:
        r = result[layer]
        assert r["delta"] == pytest.approx(want[layer], rel=1e-9, abs=1e-12)
        assert r["delta_per_pair"] == pytest.approx(want[layer] / 20, rel=1e-9, abs=1e-12)
        np.testing.assert_allclose(r["draws"], want_random[layer], rtol=1e-9)
        assert r["random_mean"] == pytest.approx(want_random[layer].mean(), rel=1e-9)
        assert r["random_std"] == pytest.approx(want_random[layer].std(), rel=1e-9, abs=1e-12)
        assert r["random_mean_per_pair"] == pytest.approx(r["random_mean"] / 20, rel=1e-12)
        assert r["random_std_per_pair"] == pytest.approx(r["random_std"] / 20, rel=1e-12, abs=1e-15)
        assert r["n"] == 5


def test_identical_images_and_boxes_give_zero(rng):
    net = tiny_net()
    x = np.repeat(rng.standard_normal((1, 3, 12, 10)), 4, axis=0)
    result = correspondence(net, x, [[3, 2, 8, 7]] * 4, ["conv1", "fc"], random_draws=3)
    for r in result.values():
        assert r["delta"] == 0.0 and r["delta_per_pair"] == 0.0
        assert r["random_mean"] > 0  # independent random boxes per image do differ


def test_deterministic_for_a_seed(rng):
    net = tiny_net()
    x = rng.standard_normal((4, 3, 12, 10))
    boxes = [[0, 0, 3, 3], [1, 1, 4, 4], [5, 5, 8, 8], [2, 6, 5, 9]]
    a = correspondence(net, x, boxes, "fc", random_draws=5, seed=11)
    b = correspondence(net, x, boxes, "fc", random_draws=5, seed=11)
    c = correspondence(net, x, boxes, "fc", random_draws=5, seed=12)
    np.testing.assert_array_equal(a["fc"]["draws"], b["fc"]["draws"])
    assert a["fc"]["delta"] == c["fc"]["delta"]
    assert not np.array_equal(a["fc"]["draws"], c["fc"]["draws"])


def test_random_boxes_have_the_same_size_and_stay_inside(rng):
    boxes = np.array([[0, 0, 12, 1], [3, 4, 5, 9], [0, 0, 1, 10]])
    seen = set()
    for _ in range(300):
        r = random_boxes(boxes, 12, 10, rng)
        np.testing.assert_array_equal(r[:, 2] - r[:, 0], boxes[:, 2] - boxes[:, 0])
        np.testing.assert_array_equal(r[:, 3] - r[:, 1], boxes[:, 3] - boxes[:, 1])
        assert (r[:, :2] >= 0).all() and (r[:, 2] <= 12).all() and (r[:, 3] <= 10).all()
        seen.add(tuple(r[1]))
    assert len(seen) == 11 * 6  # every position of the 2x5 box (tops 0..10, lefts 0..5) is drawn


def test_fill_boxes_fills_only_the_box():
    x = np.ones((2, 3, 5, 5))
    out = fill_boxes(x, [[0, 0, 2, 3], [4, 4, 5, 5]], np.array([7.0, 8.0, 9.0]).reshape(3, 1, 1))
    assert (out[0, :, :2, :3] == np.array([7, 8, 9])[:, None, None]).all() and out[0].sum() == 3 * 25 - 6 * 3 + 6 * 24
    assert (out[1, :, 4, 4] == [7, 8, 9]).all() and x.sum() == 150  # the input is untouched


def test_table_has_parts_rows_and_layer_columns(rng):
    net = tiny_net()
    x = rng.standard_normal((3, 3, 12, 10))
    r = correspondence(net, x, [[0, 0, 3, 3]] * 3, ["pool1", "relu"], random_draws=2)
    results = {"face: left_eye": r, "car: <wheel>": r}
    md = markdown_table(results)
    lines = md.splitlines()
    assert len(lines) == 4 and lines[0].count("|") == 7
    assert f"{r['pool1']['delta_per_pair']:.3f}" in lines[2] and "±" in lines[2]
    page = html_table(results, ["relu"])
    assert "&lt;wheel&gt;" in page and "<wheel>" not in page and "pool1" not in page


def test_bad_arguments_name_the_argument(rng):
    net = tiny_net()
    x = rng.standard_normal((3, 3, 12, 10))
    good = [[0, 0, 3, 3]] * 3
    with pytest.raises(ValueError, match="boxes: expected 3 boxes"):
        correspondence(net, x, good[:2], "fc")
    with pytest.raises(ValueError, match="boxes: box 1"):
        correspondence(net, x, [[0, 0, 3, 3], [10, 8, 13, 10], [0, 0, 3, 3]], "fc")   # below the image
    with pytest.raises(ValueError, match="boxes: box 0"):
        correspondence(net, x, [[-1, 0, 3, 3]] + good[1:], "fc")
    with pytest.raises(ValueError, match="boxes: box 2"):
        correspondence(net, x, good[:2] + [[4, 4, 4, 6]], "fc")                     # empty
    with pytest.raises(TypeError, match="boxes"):
        correspondence(net, x, np.array(good, dtype=float), "fc")
    with pytest.raises(ValueError, match="layer 'fc7'"):
        correspondence(net, x, good, ["fc", "fc7"])
    with pytest.raises(ValueError, match="layers"):
        correspondence(net, x, good, [])
    with pytest.raises(ValueError, match="x: expected at least 2"):
        correspondence(net, x[:1], good[:1], "fc")
    with pytest.raises(ValueError, match="random_draws"):
        correspondence(net, x, good, "fc", random_draws=0)
    with pytest.raises(ValueError, match="fill"):
        correspondence(net, x, good, "fc", fill=[1.0, 2.0])
    with pytest.raises(ValueError, match="signs"):
        sign_delta(np.ones((1, 4)))
    with pytest.raises(ValueError, match="boxes"):
        check_boxes(np.zeros((3, 5), dtype=int), 3, 12, 10)
