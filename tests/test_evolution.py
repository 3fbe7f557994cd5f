"""Feature evolution (fig. 4): training snapshots are written atomically at the chosen epochs,
load (whole files and the float16 pack) and project like a brute-force search; snapshots of
another architecture are refused."""
import os

import numpy as np
import pytest

from zfraw import deconvnet, nn, train
from zfraw.analysis import evolution as evo
from zfraw.render.evolution import evolution_figure


def _net(seed=0, width=4):
    return nn.Sequential([
        ("conv1", nn.Conv2d(3, width, 3, 1, 1, seed=seed + 1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(width, 5, 3, 1, 1, seed=seed + 2)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc", nn.Linear(5 * 6 * 6, 3, seed=seed + 3)),
    ], input_shape=(3, 12, 12), name="tiny")


def _batches(seed=0, n=3):
    rng = np.random.default_rng(seed)
    data = [(rng.standard_normal((8, 3, 12, 12)).astype(np.float32), rng.integers(0, 3, 8)) for _ in range(n)]
    return lambda epoch: data


@pytest.fixture
def run(tmp_path):
    """A 4-epoch run with snapshots after epochs 1, 2 and 4."""
    net = _net()
    folder = tmp_path / "snaps"
    train.fit(net, _batches(), epochs=4, lr=0.05, progress=False, snapshots=[1, 2, 4], snapshot_dir=str(folder),
              extra=dict(classes=["a", "b", "c"], mean=[0.1, 0.2, 0.3]))
    return net, folder


def test_snapshots_are_written_at_the_chosen_epochs_and_nothing_else(run):
    net, folder = run
    assert sorted(os.listdir(folder)) == ["epoch001.npz", "epoch002.npz", "epoch004.npz"]  # no temporary left
    last = nn.load(folder / "epoch004.npz")
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(last.state_dict()[k], v)  # the last snapshot is the final weights
    assert nn.read_meta(folder / "epoch002.npz")["extra"]["epoch"] == 2
    first = nn.load(folder / "epoch001.npz")
    assert not np.array_equal(first.state_dict()["conv1.w"], last.state_dict()["conv1.w"])


def test_a_killed_snapshot_write_leaves_the_old_file(run, monkeypatch):
    net, folder = run
    before = (folder / "epoch002.npz").read_bytes()

    def dies_half_way(fh, **arrays):
        fh.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(nn.np, "savez", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        train.save_snapshot(net, folder, 2)
    monkeypatch.undo()
    assert (folder / "epoch002.npz").read_bytes() == before
    assert sorted(os.listdir(folder)) == ["epoch001.npz", "epoch002.npz", "epoch004.npz"]


@pytest.mark.parametrize("kwargs, match", [
    (dict(snapshots=[1]), "snapshot_dir is needed"),
    (dict(snapshots=[0, 2], snapshot_dir="x"), "snapshots must be epochs >= 1"),
    (dict(snapshots=["one"], snapshot_dir="x"), "snapshots must be epoch numbers"),
])
def test_fit_checks_its_snapshot_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        train.fit(_net(), _batches(), epochs=1, progress=False, **kwargs)


def _brute_force(net, x, layer, feature):
    """The image with the strongest activation of ``feature`` anywhere, found one image at a time."""
    best, best_i = -np.inf, None
    for i in range(len(x)):
        v = float(net.forward(x[i:i + 1], upto=layer)[0, feature].max())
        if v > best:
            best, best_i = v, i
    return best_i, best


def test_evolution_projects_the_strongest_activation_at_every_snapshot(run, rng):
    _, folder = run
    epochs, nets, extra = evo.load_snapshots(folder)
    assert epochs == [1, 2, 4] and extra["classes"] == ["a", "b", "c"]
    x = rng.standard_normal((10, 3, 12, 12)).astype(np.float32)
    res = evo.evolution((epochs, nets), x, features={"conv1": [0, 3], "conv2": [1]}, batch_size=3)
    assert res.projection["conv1"].shape == (2, 3, 3, 12, 12) and res.projection["conv2"].shape == (1, 3, 3, 12, 12)
    for lyr, feats in res.features.items():
        for a, f in enumerate(feats):
            for j, net in enumerate(nets):
                i, v = _brute_force(net, x, lyr, f)
                assert res.index[lyr][a, j] == i
                np.testing.assert_allclose(res.value[lyr][a, j], v, rtol=1e-6)
                expected = deconvnet.project(net, x[i:i + 1], lyr, feature=f)[0]
                np.testing.assert_allclose(res.projection[lyr][a, j], expected, rtol=1e-6, atol=1e-7)
                r, c = res.location[lyr][a, j]
                assert tuple(res.box[lyr][a, j]) == deconvnet.patch_box(net, lyr, r, c, (12, 12))
    picture = evolution_figure(res, cell=24)
    assert picture.mode == "RGB" and picture.width > 3 * 24


def test_the_float16_pack_loads_to_float32_and_keeps_the_pictures(run, rng, tmp_path):
    _, folder = run
    pack = evo.pack_snapshots([train.snapshot_path(folder, e) for e in (4, 1, 2)], tmp_path / "pack.npz")
    with np.load(pack) as data:
        assert {data[k].dtype for k in data.files if "/" in k} == {np.dtype(np.float16)}
        assert not any(k.split("/")[-1].startswith("fc.") for k in data.files)  # only what the figure needs
    epochs, nets, extra = evo.load_snapshots(pack)
    assert epochs == [1, 2, 4] and extra["mean"] == [0.1, 0.2, 0.3]
    assert nets[0].names[-1] == "relu2" and nets[0]["conv1"].params["w"].dtype == np.float32
    full = evo.load_snapshots(folder)
    x = rng.standard_normal((6, 3, 12, 12)).astype(np.float32)
    a = evo.evolution(full, x, features={"conv2": [0, 1]})
    b = evo.evolution((epochs, nets), x, features={"conv2": [0, 1]})
    scale = np.abs(a.projection["conv2"]).max()
    assert np.abs(a.projection["conv2"] - b.projection["conv2"]).max() < 2e-2 * scale


def test_float16_files_load_as_float32_networks(tmp_path):
    net = _net().astype(np.float16)
    path = net.save(tmp_path / "half.npz")
    with pytest.raises(ValueError, match="allow_float16"):
        nn.load(path)
    loaded = nn.load(path, allow_float16=True)
    assert {p.dtype for p in loaded.parameters().values()} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(loaded.state_dict()["conv1.w"], net.state_dict()["conv1.w"].astype(np.float32))


def test_snapshots_of_another_architecture_are_refused(run, tmp_path):
    _, folder = run
    with pytest.raises(ValueError, match="snapshots: .* another architecture .* layer 'conv1'"):
        evo.load_snapshots(folder, like=_net(width=6))
    evo.load_snapshots(folder, like=_net(seed=5))  # same architecture, other weights: fine
    pack = evo.pack_snapshots([train.snapshot_path(folder, 1)], tmp_path / "p.npz")
    with pytest.raises(ValueError, match="snapshots: .* another architecture"):
        evo.load_snapshots(pack, like=_net(width=6))
    other = _net(width=6)
    other.save(tmp_path / "epoch009.npz")
    with pytest.raises(ValueError, match="another architecture"):
        evo.load_snapshots([train.snapshot_path(folder, 1), tmp_path / "epoch009.npz"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no epochNNN.npz"):
        evo.load_snapshots(tmp_path / "empty")


def test_bad_evolution_arguments_name_the_argument(run, rng):
    _, folder = run
    snaps = evo.load_snapshots(folder)
    x = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    with pytest.raises(ValueError, match="layers: 'conv7'"):
        evo.evolution(snaps, x, ["conv7"])
    with pytest.raises(ValueError, match="not a conv layer"):
        evo.evolution(snaps, x, ["relu1"])
    with pytest.raises(ValueError, match=r"features: 'conv1' needs feature indices in \[0, 4\)"):
        evo.evolution(snaps, x, ["conv1"], features={"conv1": [4]})
    with pytest.raises(ValueError, match="x must be images"):
        evo.evolution(snaps, x[0], ["conv1"])


@pytest.mark.slow
def test_train_builtin_keeps_and_packs_snapshots(tmp_path):
    """``zfraw train --builtin --snapshots 1`` in miniature: the whole file per epoch and the float16 pack."""
    from zfraw import builtin

    out = tmp_path / "mini.npz"
    builtin.train_builtin(str(out), epochs=1, n_train_per_class=7, progress=False, snapshots=[1])
    assert os.listdir(tmp_path / "mini_snapshots") == ["epoch001.npz"]
    net = nn.load(out)
    epochs, nets, extra = evo.load_snapshots(tmp_path / "mini_snapshots.npz", like=net)
    assert epochs == [1] and extra["classes"] == list(builtin.synthetic.CLASSES)
    np.testing.assert_allclose(nets[0]["conv5"].params["w"], net["conv5"].params["w"], rtol=1e-3, atol=1e-4)


def test_the_shipped_snapshots_are_one_run_of_the_recipe_at_the_issues_epochs():
    """zfraw/weights/zfnet_mini_snapshots.npz: epochs 1, 2, 5, 10, 20 of `zfraw train --builtin
    --snapshots 1,2,5,10,20`, the built-in architecture, filters that move and stay renormalized."""
    from zfraw import builtin

    net, _ = builtin.load_model()
    epochs, nets, extra = evo.load_snapshots(evo.builtin_snapshots_path(), like=net)
    assert epochs == [1, 2, 5, 10, 20] and extra["classes"] == list(builtin.synthetic.CLASSES)
    conv1 = [np.asarray(n["conv1"].params["w"], np.float64) for n in nets]
    for earlier, later in zip(conv1, conv1[1:]):
        assert np.abs(later - earlier).max() > 1e-3  # training moved the first layer between snapshots
    for w in conv1:
        assert train.filter_rms(w).max() <= builtin.RECIPE["renorm_radius"] * (1 + 1e-2)  # float16 rounding
