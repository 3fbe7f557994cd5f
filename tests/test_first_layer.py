"""AlexNet's first layer against ZFNet's (fig. 6): the dead-filter fraction and the high-frequency
share against hand-made inputs with known answers and a brute-force DFT, the report on small nets,
the figure, and alexnet_mini's geometry."""
import numpy as np
import pytest

from zfraw import data, deconvnet, models, nn
from zfraw.analysis.first_layer import dead_filters, first_layer_report, high_frequency_share
from zfraw.render.first_layer import first_layer_figure, report_line


def test_dead_filters_counts_the_filters_far_below_the_median(rng):
    w = rng.standard_normal((12, 3, 5, 5))
    w /= np.sqrt((w.reshape(12, -1) ** 2).mean(axis=1))[:, None, None, None]  # every RMS = 1
    w[[3, 7]] *= 0.05  # two far below the median RMS (1)
    w[5] *= 0.2  # weak, but above 0.1 x median
    res = dead_filters(w)
    np.testing.assert_allclose(res["rms"][[0, 3, 5]], [1, 0.05, 0.2])
    assert res["dead"].nonzero()[0].tolist() == [3, 7] and res["fraction"] == pytest.approx(2 / 12)
    assert dead_filters(w, threshold=0.5)["dead"].nonzero()[0].tolist() == [3, 5, 7]
    with pytest.raises(ValueError, match="threshold must be in"):
        dead_filters(w, threshold=1.5)
    with pytest.raises(ValueError, match="w must be filters"):
        dead_filters(w[0])


def _checkerboard(h, w):
    return ((-1.0) ** (np.arange(h)[:, None] + np.arange(w)[None, :]))


def test_high_frequency_share_of_images_with_known_spectra():
    h = w = 32
    rows = np.arange(h)[:, None] * np.ones(w)
    smooth = np.stack([np.cos(2 * np.pi * rows / 16), np.sin(2 * np.pi * rows / 32), np.ones((h, w))])
    checker = np.stack([_checkerboard(h, w)] * 3)
    assert high_frequency_share(smooth) == pytest.approx(0.0, abs=1e-20)  # 1/16 and 1/32 cycles per pixel
    assert high_frequency_share(checker) == pytest.approx(1.0)  # all power at (1/2, 1/2)
    # the two are orthogonal: equal power -> share 1/2
    mixed = smooth[:1] / np.linalg.norm(smooth[:1]) + checker[:1] / np.linalg.norm(checker[:1])
    assert high_frequency_share(mixed) == pytest.approx(0.5)
    # a vertical stripe of period 4 is at 1/4 cycle per pixel: exactly half Nyquist, counted as high
    stripes = np.cos(2 * np.pi * np.arange(w) / 4)[None, None, :] * np.ones((1, h, 1))
    assert high_frequency_share(stripes) == pytest.approx(1.0)
    assert high_frequency_share(stripes, cutoff=0.6) == pytest.approx(0.0, abs=1e-20)
    assert np.isnan(high_frequency_share(np.zeros((3, 8, 8))))
    np.testing.assert_allclose(high_frequency_share(np.stack([smooth, checker])), [0.0, 1.0], atol=1e-12)


def test_high_frequency_share_against_a_brute_force_dft(rng):
    p = rng.standard_normal((3, 6, 8))
    power, total = 0.0, 0.0
    for u in range(6):
        for v in range(8):
            e = np.exp(-2j * np.pi * (u * np.arange(6)[:, None] / 6 + v * np.arange(8)[None, :] / 8))
            pw = sum(abs((p[c] * e).sum()) ** 2 for c in range(3))
            fu, fv = (u if u < 3 else u - 6) / 6, (v if v < 4 else v - 8) / 8
            total += pw
            power += pw if np.hypot(fu, fv) >= 0.25 else 0.0
    assert high_frequency_share(p) == pytest.approx(power / total, rel=1e-12)


def _tiny(kernel, stride, seed=0):
    return nn.Sequential([
        ("conv1", nn.Conv2d(3, 6, kernel, stride, kernel // 2, seed=seed)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(6, 5, 3, 1, 1, seed=seed + 1)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(5 * (16 // stride) ** 2, 3, seed=seed + 2)),
    ], input_shape=(3, 16, 16), name=f"tiny{kernel}")


def test_first_layer_report_projects_the_top_activations_of_conv2(rng):
    images = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    ds = data.ArrayDataset(images, np.zeros(12, dtype=np.int64))
    net = _tiny(5, 2)
    rep = first_layer_report(net, ds, data.to_chw_float, n_features=2, k=3, limit=10)
    assert rep.layer2 == "conv2" and len(rep.records) == 2 and rep.filters.shape == (6, 3, 5, 5)
    for f, recs in rep.records.items():
        assert len(recs) == 3 and all(r.index < 10 for r in recs)
        x = np.stack([data.to_chw_float(images[r.index]) for r in recs])
        expected = deconvnet.project(net, x, "conv2", feature=f)
        np.testing.assert_allclose(rep.projections[f], expected, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(rep.hf_share[f], high_frequency_share(expected))
    assert rep.mean_hf_share == pytest.approx(np.mean(np.concatenate(list(rep.hf_share.values()))))
    picture = first_layer_figure({"a": rep, "b": first_layer_report(_tiny(7, 4), ds, data.to_chw_float,
                                                                    n_features=1, k=4, limit=10)})
    assert picture.mode == "RGB" and picture.height > 40
    assert "dead conv1 filters" in report_line("a", rep)
    one_conv = nn.Sequential([("conv1", nn.Conv2d(3, 2, 3)), ("flatten", nn.Flatten())], input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="two conv layers"):
        first_layer_report(one_conv, ds, data.to_chw_float)


def test_alexnet_mini_differs_from_zfnet_mini_only_in_the_first_layer():
    a, z = models.alexnet_mini(), models.zfnet_mini()
    ta = {r[0]: r for r in a.summary()}
    tz = {r[0]: r for r in z.summary()}
    assert a["conv1"].geometry == ((11, 11), (4, 4), (5, 5)) and z["conv1"].geometry == ((7, 7), (2, 2), (3, 3))
    assert ta["conv1"][2] == (32, 16, 16) and tz["conv1"][2] == (32, 32, 32)
    for lname in a.names:
        if lname not in ("conv1", "relu1"):
            assert ta[lname][2:] == tz[lname][2:], lname  # same output shapes and parameter counts
    assert deconvnet.receptive_field(a, "norm1").stride == deconvnet.receptive_field(z, "norm1").stride == 4
    assert models.build("alexnet_mini", num_classes=4).forward(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 4)
