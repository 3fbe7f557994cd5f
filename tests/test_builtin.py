"""The built-in model: shipped weights that really classify, a reproducible recipe, and `zfraw demo`."""
import os
import re

import numpy as np
import pytest

from zfraw import builtin, cli, data, nn, synthetic, train


def test_shipped_weights_classify_held_out_images():
    net, meta = builtin.load_model()
    assert meta["classes"] == list(synthetic.CLASSES)
    assert meta["mean"].shape == (3,) and np.all((meta["mean"] > 0) & (meta["mean"] < 1))
    # held-out images the training never saw (the test split), not the val split it reported on
    test_set = builtin.dataset("test", n_per_class=30)
    _, acc = train.evaluate(net, data.batches(test_set, 100, builtin.eval_transform(meta["mean"])))
    assert acc >= 0.9, f"the shipped model classifies only {acc:.1%} of held-out images"
    assert meta["val_acc"] >= 0.9


def test_shipped_alexnet_mini_is_the_recipe_on_alexnets_first_layer_and_classifies():
    """The second network of the first-layer comparison (fig. 6) ships trained."""
    from zfraw import models

    path = builtin.weights_path(builtin.ALEXNET_WEIGHTS)
    net, meta = builtin.load_model(path)
    expected = models.alexnet_mini(num_classes=len(synthetic.CLASSES))
    assert net.names == expected.names and meta["recipe"]["model"] == "alexnet_mini"
    assert net["conv1"].config() == expected["conv1"].config()
    assert {k: v.shape for k, v in net.parameters().items()} == {k: v.shape for k, v in expected.parameters().items()}
    assert {k: v for k, v in meta["recipe"].items() if k != "model"} == builtin.RECIPE
    test_set = builtin.dataset("test", n_per_class=30)
    _, acc = train.evaluate(net, data.batches(test_set, 100, builtin.eval_transform(meta["mean"])))
    assert acc >= 0.9, f"the shipped alexnet_mini classifies only {acc:.1%} of held-out images"
    assert list(builtin.first_layer_models()) == ["zfnet_mini", "alexnet_mini"]


def test_shipped_weights_have_trained_first_layer_filters():
    net, _ = builtin.load_model()
    w = net["conv1"].params["w"]
    rms = train.filter_rms(w)
    assert np.all(rms <= builtin.RECIPE["renorm_radius"] * (1 + 1e-5)), "renormalization must hold"
    # a learned filter is smooth: neighbouring taps are correlated, unlike i.i.d. noise
    right = (w[:, :, :, 1:] * w[:, :, :, :-1]).sum(axis=(1, 2, 3))
    energy = (w[:, :, :, 1:] ** 2).sum(axis=(1, 2, 3))
    assert np.median(right / energy) > 0.6  # 0.37 for a He-initialised conv1


def test_train_builtin_tiny_run_writes_a_loadable_model(tmp_path):
    out = tmp_path / "mini.npz"
    history = builtin.train_builtin(str(out), epochs=1, n_train_per_class=7, progress=False)
    assert len(history.val_acc) == 1 and 0 <= history.val_acc[0] <= 1
    net, meta = builtin.load_model(str(out))
    assert meta["recipe"]["epochs"] == 1 and meta["recipe"]["n_train_per_class"] == 7
    assert meta["classes"] == list(synthetic.CLASSES)
    x = np.zeros((2, 3, 64, 64), np.float32)
    assert net.forward(x).shape == (2, len(synthetic.CLASSES))


def test_train_builtin_on_a_subset_of_classes(tmp_path):
    out = tmp_path / "seen.npz"
    builtin.train_builtin(str(out), epochs=1, n_train_per_class=22, progress=False, classes=["star", "car", "ring"])
    net, meta = builtin.load_model(str(out))
    assert meta["classes"] == ["star", "car", "ring"] and meta["recipe"]["classes"] == ["star", "car", "ring"]
    assert net.forward(np.zeros((1, 3, 64, 64), np.float32)).shape == (1, 3)
    # the kept images are those of the full run, relabelled in the order given
    images, labels = synthetic.make_dataset(2, seed=0, split="val")
    kept, new = builtin._keep_classes(images, labels, ["star", "car"])
    star, car = synthetic.CLASSES.index("star"), synthetic.CLASSES.index("car")
    np.testing.assert_array_equal(kept, images[(labels == star) | (labels == car)])
    np.testing.assert_array_equal(new, np.where(labels[(labels == star) | (labels == car)] == star, 0, 1))


@pytest.mark.parametrize("classes, match", [(["star", "dog"], "dog"), (["star"], "at least two"),
                                            (["star", "star"], "at least two"), ("star,car", "list")])
def test_train_builtin_refuses_bad_classes(tmp_path, classes, match):
    with pytest.raises((ValueError, TypeError), match=match):
        builtin.train_builtin(str(tmp_path / "x.npz"), epochs=1, n_train_per_class=1, progress=False, classes=classes)


def test_load_model_missing_file_says_how_to_rebuild(tmp_path):
    with pytest.raises(FileNotFoundError, match="zfraw train --builtin"):
        builtin.load_model(str(tmp_path / "nope.npz"))


def test_demo_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "report"
    assert cli.main(["demo", "--out", str(out), "--images", "30", "--features", "1", "--quiet",
                     "--backend", "numpy"]) == 0
    html = (out / "index.html").read_text()
    sources = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(sources) >= 1 + 5  # the filters and one top-9 grid per conv layer at least
    for src in sources:
        assert os.path.getsize(out / src) > 0
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        assert layer in html
    assert "wrote" in capsys.readouterr().out


def test_demo_with_missing_weights_exits_2(tmp_path, capsys):
    assert cli.main(["demo", "--out", str(tmp_path / "r"), "--weights", str(tmp_path / "none.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none.npz" in err[0]


def test_saved_model_metadata_round_trip(tmp_path):
    net, meta = builtin.load_model()
    path = tmp_path / "copy.npz"
    net.save(str(path), classes=meta["classes"], mean=meta["mean"].tolist())
    again = nn.read_meta(str(path))["extra"]
    assert again["classes"] == meta["classes"]
    np.testing.assert_allclose(again["mean"], meta["mean"])


def test_the_packages_weight_files_stay_under_10_mb():
    folder = os.path.dirname(builtin.weights_path())
    sizes = {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder) if name.endswith(".npz")}
    assert {builtin.WEIGHTS, builtin.ALEXNET_WEIGHTS} <= set(sizes)
    assert sum(sizes.values()) < 10 * 10**6, sizes
