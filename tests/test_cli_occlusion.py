"""``zfraw occlude`` and ``zfraw correspond`` in a subprocess (``python -m zfraw``): they write
their outputs and print a short result; a wrong argument exits 2 with one line, no traceback."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from zfraw import cli, nn


def run(*args, cwd=None):
    env = dict(os.environ, ZFRAW_BACKEND="numpy", OPENBLAS_NUM_THREADS="1")
    env.pop("ZFRAW_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "zfraw", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300)


@pytest.fixture
def weights(tmp_path):
    """A tiny saved model (3x16x16 input, 3 named classes)."""
    net = nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, seed=1, init_std="he")), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(4, 4, 3, 1, 1, seed=3, init_std="he")), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc8", nn.Linear(4 * 8 * 8, 3, seed=2, init_std="he")),
    ], input_shape=(3, 16, 16), name="tiny")
    return str(net.save(tmp_path / "tiny.npz", classes=["apple", "bee", "cat"], mean=[0.5, 0.5, 0.5]))


def _image(path, seed, shape=(20, 24, 3)):
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def test_occlude_writes_the_figure_and_says_where_it_hurts(weights, tmp_path):
    image = _image(tmp_path / "img.png", 0)
    out = tmp_path / "occ.png"
    proc = run("occlude", image, "--weights", weights, "--size", "4", "--stride", "2", "--target", "bee",
               "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "p(bee)" in proc.stdout and "square at (top, left)" in proc.stdout and "conv2 feature" in proc.stdout
    assert "7x7 positions" in proc.stdout  # (16 - 4) // 2 + 1
    with Image.open(out) as picture:
        assert picture.width > 4 * picture.height


def test_the_analysis_figures_take_the_format_of_their_suffix(weights, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image = _image(tmp_path / "img.png", 0)
    for argv, name, fmt in [(["occlude", image, "--size", "4", "--stride", "4"], "o.jpg", "JPEG"),
                            (["invariance", image, "--transform", "rotate"], "i.webp", "WEBP")]:
        status, _, err = run_cli(argv + ["--weights", weights, "--backend", "numpy", "-o", name], capsys)
        assert status == 0, err
        with Image.open(tmp_path / name) as picture:
            assert picture.format == fmt


def test_occlude_with_a_wrong_argument_exits_2_without_a_traceback(weights, tmp_path):
    image = _image(tmp_path / "img.png", 0)
    proc = run("occlude", image, "--weights", weights, "--size", "17", "-o", str(tmp_path / "x.png"))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "size" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("args, word", [
    (["--stride", "0"], "stride"), (["--layer", "conv9"], "conv9"), (["--target", "dog"], "--target"),
    (["--feature", "4"], "feature"), (["-o", "img.png/x.png"], "-o"), (["-o", "x.txt"], "not a picture format"),  # in a file
])
def test_occlude_errors_in_process(weights, tmp_path, capsys, monkeypatch, args, word):
    monkeypatch.chdir(tmp_path)
    image = _image(tmp_path / "img.png", 0)
    status, _, err = run_cli(["occlude", image, "--weights", weights, "--backend", "numpy", "-o", "x.png", *args],
                             capsys)
    assert status == 2
    err = err.strip().splitlines()
    assert len(err) == 1 and word in err[0]


def test_correspond_with_a_boxes_file(weights, tmp_path):
    """A user's images and boxes (CSV and JSON, in the images' own pixels, two parts)."""
    rows = ["image,top,left,bottom,right,part"]
    items = []
    for k in range(4):
        name = f"im{k}.png"
        _image(tmp_path / name, k, (32, 40, 3))   # shorter side 32 -> 16: boxes halve, then the central crop drops 2 columns each side
        rows.append(f"{name},{2 + k},{10},{12 + k},{22},eye")
        rows.append(f"{name},20,12,30,30,nose")
        items.append({"image": name, "box": [2 + k, 10, 12 + k, 22], "part": "eye"})
    (tmp_path / "boxes.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "boxes.json").write_text(json.dumps(items))
    proc = run("correspond", "--weights", weights, "--boxes", str(tmp_path / "boxes.csv"), "--layers",
               "conv2,fc8", "--draws", "3", "-o", str(tmp_path / "table.md"))
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "table.md").read_text()
    assert "| eye | 4 |" in table and "| nose | 4 |" in table and "conv2: random" in table
    proc = run("correspond", "--weights", weights, "--boxes", str(tmp_path / "boxes.json"), "--layers", "fc8",
               "--draws", "2")
    assert proc.returncode == 0, proc.stderr
    assert "| eye | 4 |" in proc.stdout


def test_correspond_on_the_builtin_parts():
    proc = run("correspond", "--class", "face", "--part", "mouth", "--images", "3", "--draws", "2")
    assert proc.returncode == 0, proc.stderr
    assert "| face: mouth | 3 |" in proc.stdout and "pool5: part" in proc.stdout and "relu7: random" in proc.stdout


def test_correspond_with_a_wrong_argument_exits_2():
    proc = run("correspond", "--class", "star")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--class" in lines[0] and "Traceback" not in proc.stderr


def test_correspond_errors_in_process(weights, tmp_path, capsys):
    _image(tmp_path / "a.png", 0)
    (tmp_path / "out.csv").write_text("a.png,0,0,30,30\na.png,0,0,5,5\n")  # 30 rows in a 20-row image
    (tmp_path / "one.csv").write_text("a.png,0,0,5,5\n")
    (tmp_path / "bad.csv").write_text("a.png,0,0,5\n")
    cases = [
        (["--part", "wheel"], "--part"), (["--layers", "conv9"], "conv9"),
        (["--boxes", str(tmp_path / "none.csv")], "--boxes"),
        (["--weights", weights, "--boxes", str(tmp_path / "out.csv"), "--layers", "fc8"], "line 1"),
        (["--weights", weights, "--boxes", str(tmp_path / "one.csv"), "--layers", "fc8"], "at least 2"),
        (["--weights", weights, "--boxes", str(tmp_path / "bad.csv"), "--layers", "fc8"], "fields"),
        (["--weights", weights, "--boxes", str(tmp_path / "one.csv")], "--layers"),
        (["-o", str(tmp_path / "table.txt")], "-o"),
    ]
    for args, word in cases:
        assert cli.main(["correspond", "--backend", "numpy", *args]) == 2, args
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], (args, err)


def test_report_sections(tmp_path):
    """The demo's two sections on the built-in model and data (cheap settings): a figure per
    image, the table with one row per part; ``zfraw demo`` runs them with the report's
    defaults (tests/test_product_backends.py)."""
    from zfraw import builtin, report

    net, meta = builtin.load_model()
    dataset = builtin.dataset("val", n_per_class=3)
    transform = builtin.eval_transform(meta["mean"])
    (tmp_path / "img").mkdir()
    images = [transform(dataset[i][0]) for i in (0, 1)]
    anchor, page = report.occlusion_section(str(tmp_path), net, images, dataset.labels[:2], meta["mean"],
                                            meta["classes"], size=32, stride=16, progress=False)
    assert anchor == "occlusion" and 'src="img/occlusion_1.png"' in page and "True class" in page
    with Image.open(tmp_path / "img" / "occlusion_0.png") as picture:
        assert np.asarray(picture).std() > 0
    anchor, table = report.correspondence_section(net, dataset, transform, n_images=3, random_draws=1)
    assert anchor == "correspondence"
    assert table.count("<tr><td>") == 5 and "face: left_eye" in table and "pool5: random" in table
    assert report.rectified_top_conv(net) == "relu5"
    assert report.correspondence_section(net, list(dataset), transform) is None  # no part boxes


def test_box_to_input_follows_the_eval_transform(tmp_path):
    """A box drawn into an image lands, after ``data.eval_transform``, where box_to_input says."""
    from zfraw import data
    from zfraw.analysis.boxes import BoxEntry, box_to_input

    for shape, box in [((40, 64), (10, 30, 20, 44)), ((64, 40), (30, 8, 50, 20)), ((16, 16), (2, 3, 9, 7))]:
        img = np.zeros(shape + (3,), dtype=np.uint8)
        img[box[0]:box[2], box[1]:box[3]] = 255
        x = data.eval_transform(16, 16)(img)[0]
        t, l, b, r = box_to_input(BoxEntry("a.png", box, "p", 1), shape, 16)
        bright = np.argwhere(x > 0.5)
        assert bright.min(axis=0).tolist() >= [t, l] and (bright.max(axis=0) + 1).tolist() <= [b, r]
        assert bright.min(axis=0).tolist() <= [t + 1, l + 1] and (bright.max(axis=0) + 1).tolist() >= [b - 1, r - 1]
    with pytest.raises(ValueError, match="line 3"):
        box_to_input(BoxEntry("a.png", (0, 0, 5, 70), "p", 3), (40, 64), 16)
    with pytest.raises(ValueError, match="crop"):
        box_to_input(BoxEntry("a.png", (0, 0, 40, 5), "p", 4), (40, 64), 16)   # in the cut-off margin
