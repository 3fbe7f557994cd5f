"""The commands ``zfraw invariance``, ``zfraw evolution`` and ``zfraw compare-first-layer`` on a
user's own tiny model and images; a wrong argument exits 2 with one line and no traceback."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from zfraw import cli, nn, train


def _tiny():
    return nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 5, 2, 2, seed=1)), ("relu1", nn.ReLU()),
        ("conv2", nn.Conv2d(4, 6, 3, 1, 1, seed=2)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc1", nn.Linear(6 * 8 * 8, 8, seed=3)), ("relu3", nn.ReLU()),
        ("fc2", nn.Linear(8, 3, seed=4)),
    ], input_shape=(3, 16, 16), name="tiny")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny model (recording no class names), its snapshots, and a folder of class folders of images."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        os.makedirs(root / "data" / c)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (18, 20, 3), dtype=np.uint8)).save(root / "data" / c / f"{i}.png")
    net = _tiny()
    batches = [(rng.standard_normal((4, 3, 16, 16)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(2)]
    train.fit(net, lambda e: batches, epochs=3, progress=False, snapshots=[1, 3], snapshot_dir=str(root / "snaps"),
              extra=dict(mean=[0.5, 0.5, 0.5]))
    weights = str(net.save(root / "tiny.npz", mean=[0.5, 0.5, 0.5]))
    images = [str(root / "data" / "a" / "0.png"), str(root / "data" / "b" / "1.png")]
    return dict(root=root, weights=weights, images=images, snaps=str(root / "snaps"), data=str(root / "data"))


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100
        return im.size


def test_invariance_command_on_a_users_model(files, capsys):
    out = files["root"] / "inv.png"
    rc = cli.main(["invariance", *files["images"], "--transform", "translate", "--amounts=-4,0,4",
                   "--weights", files["weights"], "--backend", "numpy", "--classes", "x,y,z", "--target", "y",
                   "--layers", "conv1,fc1", "-o", str(out)])
    assert rc == 0 and _png(out)
    text = capsys.readouterr().out
    assert "conv1: largest relative distance" in text and "fc1:" in text


def test_evolution_command_on_a_users_snapshots(files, capsys):
    out = files["root"] / "evo.png"
    rc = cli.main(["evolution", files["snaps"], "--data", files["data"], "--images", "6", "--features", "2",
                   "--weights", files["weights"], "--backend", "numpy", "-o", str(out)])
    assert rc == 0 and _png(out)
    assert "epochs 1, 3, 6 images" in capsys.readouterr().out


def test_compare_first_layer_command(files, capsys):
    out = files["root"] / "fl.png"
    rc = cli.main(["compare-first-layer", "--weights", files["weights"], files["weights"], "--data", files["data"],
                   "--images", "8", "--features", "2", "--backend", "numpy", "-o", str(out)])
    assert rc == 0 and _png(out)
    assert capsys.readouterr().out.count("dead conv1 filters") == 1  # the same name twice is one row


def test_compare_first_layer_command_defaults_to_the_shipped_models(files, capsys):
    from zfraw import builtin

    out = files["root"] / "fl_builtin.png"
    rc = cli.main(["compare-first-layer", "--data", files["data"], "--images", "8", "--features", "1",
                   "--backend", "numpy", "-o", str(out)])
    assert rc == 0 and _png(out)
    lines = [line for line in capsys.readouterr().out.splitlines() if "dead conv1 filters" in line]
    assert [line.split(":")[0] for line in lines] == list(builtin.first_layer_models())
    assert lines[0].startswith("zfnet_mini:")


@pytest.mark.parametrize("argv, message", [
    (["invariance", "IMG", "--transform", "rotate", "--layers", "conv9", "--weights", "W"], "layer 'conv9'"),
    (["invariance", "IMG", "--transform", "shear"], "invalid choice: 'shear'"),
    (["evolution", "SNAPS", "--weights", "OTHER", "--data", "DATA"], "another architecture"),
    (["compare-first-layer", "--weights", "W", "-o", "out.txt"], "not a picture format"),
])
def test_wrong_arguments_exit_2_with_one_line(files, tmp_path, argv, message):
    other = nn.Sequential([("conv1", nn.Conv2d(3, 7, 5, 2, 2)), ("relu1", nn.ReLU()),
                           ("conv2", nn.Conv2d(7, 6, 3, 1, 1)), ("flatten", nn.Flatten()),
                           ("fc", nn.Linear(6 * 64, 3))], input_shape=(3, 16, 16))
    subst = {"IMG": files["images"][0], "W": files["weights"], "SNAPS": files["snaps"], "DATA": files["data"],
             "OTHER": str(other.save(tmp_path / "other.npz"))}
    argv = [subst.get(a, a) for a in argv]
    env = dict(os.environ, ZFRAW_BACKEND="numpy")
    env.pop("ZFRAW_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "zfraw", *argv], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("zfraw")]
    assert len(lines) == 1


def test_report_sections_of_the_three_experiments(files, tmp_path):
    """write_report(sections=...) adds each experiment's section with its pictures and explanation."""
    from functools import partial

    from zfraw import data, report
    from zfraw.analysis import evolution, first_layer

    net = nn.load(files["weights"])
    ds = data.ImageFolder(files["data"])
    transform = data.eval_transform(16, 16, [0.5, 0.5, 0.5])
    x = np.stack([transform(ds[i][0]) for i in range(len(ds))])
    sections = [
        partial(report.invariance_section, net=net, x=x[:2], labels=["a<b", "c"], transforms=("rotate",),
                amounts={"rotate": [0, 90]}),
        partial(report.evolution_section, snapshots=evolution.load_snapshots(files["snaps"]), x=x, n_features=2,
                note="made <here>"),
        lambda img_dir: report.first_layer_section(
            img_dir, {"tiny": first_layer.first_layer_report(net, ds, transform, n_features=1, k=3)}),
    ]
    index = report.write_report(tmp_path / "r", net, ds, transform, [0.5, 0.5, 0.5], layers=("conv1",),
                                features_per_layer=1, n_images=8, progress=False, n_examples=1, sections=sections)
    html = open(index, encoding="utf-8").read()
    for anchor, picture in (("invariance", "invariance_rotate.png"), ("evolution", "evolution.png"),
                            ("first-layer", "first_layer.png")):
        assert f'id="{anchor}"' in html and f'href="#{anchor}"' in html and f"img/{picture}" in html
        assert os.path.getsize(tmp_path / "r" / "img" / picture) > 0
    assert "made &lt;here&gt;" in html and "dead conv1 filters" in html
