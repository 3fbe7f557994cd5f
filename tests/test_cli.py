"""The ``zfraw`` command: ``check`` prints its table and exits 0, ``summary`` prints the
shape table, and bad input exits with status 2 and one line on stderr."""
import os
import subprocess
import sys

import numpy as np
import pytest

from zfraw import cli, nn


@pytest.fixture
def weights(tmp_path):
    """A tiny saved model (3x16x16 input) as a --weights file."""
    net = nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, seed=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc8", nn.Linear(4 * 8 * 8, 3, seed=2)),
    ], input_shape=(3, 16, 16), name="tiny")
    return str(net.save(tmp_path / "tiny.npz", classes=["a", "b", "c"], mean=[0.5, 0.5, 0.5]))


@pytest.fixture
def image(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(pixels).save(path)
    return str(path)


def run_main(argv, capsys):
    status = cli.main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_python_m_zfraw_check_exits_0_with_a_table():
    env = dict(os.environ)
    env.pop("ZFRAW_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "zfraw", "check", "--backend", "numpy"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    header = next(line for line in lines if line.startswith("op "))
    assert header.split() == ["op", "case", "check", "dtype", "error", "tolerance", "result"]
    rows = [line for line in lines if line.rstrip().endswith(("pass", "FAIL"))]
    assert len(rows) > 50 and all(line.rstrip().endswith("pass") for line in rows)
    assert any(line.startswith("conv2d ") for line in rows)
    assert f"{len(rows)} of {len(rows)} checks passed" in proc.stdout


def test_summary_prints_the_zfnet_shapes(capsys):
    status, out, err = run_main(["summary", "--model", "zfnet"], capsys)
    assert status == 0 and err == ""
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for layer, shape in (("conv1", "96x110x110"), ("pool1", "96x55x55"), ("conv2", "256x26x26"),
                         ("pool2", "256x13x13"), ("conv3", "384x13x13"), ("conv4", "384x13x13"),
                         ("conv5", "256x13x13"), ("pool5", "256x6x6"), ("fc6", "4096"), ("fc7", "4096"),
                         ("fc8", "1000")):
        assert shape in rows[layer].split(), (layer, rows[layer])
    assert "14,208" in rows["conv1"]  # 96 * 3 * 7 * 7 + 96


def test_summary_of_a_weights_file(weights, capsys):
    status, out, _ = run_main(["summary", "--weights", weights], capsys)
    assert status == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "4x16x16" in rows["conv1"].split() and "4x8x8" in rows["pool1"].split()
    assert f"{nn.load(weights).num_parameters():,} parameters" in out


def one_error_line(err, command):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"zfraw {command}: error:"), lines[0]
    return lines[0]


def test_project_of_a_missing_image_exits_2(weights, tmp_path, capsys):
    missing = str(tmp_path / "missing.png")
    status, out, err = run_main(["project", missing, "--weights", weights, "--layer", "conv1",
                                 "--backend", "numpy", "-o", str(tmp_path / "p.png")], capsys)
    assert status == 2
    assert "missing.png" in one_error_line(err, "project")
    assert not os.path.exists(tmp_path / "p.png")


def test_project_with_an_unknown_layer_exits_2(weights, image, tmp_path, capsys):
    status, _, err = run_main(["project", image, "--weights", weights, "--layer", "conv9",
                               "--backend", "numpy", "-o", str(tmp_path / "p.png")], capsys)
    assert status == 2
    line = one_error_line(err, "project")
    assert "conv9" in line and "conv1" in line  # names the bad layer and the ones there are


def test_missing_weights_exit_2(tmp_path, capsys):
    missing = str(tmp_path / "none.npz")
    status, _, err = run_main(["summary", "--weights", missing], capsys)
    assert status == 2 and "none.npz" in one_error_line(err, "summary")
    status, _, err = run_main(["filters", "--weights", missing, "--backend", "numpy"], capsys)
    assert status == 2 and "none.npz" in one_error_line(err, "filters")


def test_an_unavailable_backend_exits_2(capsys):
    status, _, err = run_main(["check", "--backend", "tpu"], capsys)
    assert status == 2 and "tpu" in one_error_line(err, "check")


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["summary", "--model", "vgg"])
    assert exc.value.code == 2
    assert "vgg" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main([])
    assert exc.value.code == 2


# ============================================================== project, demo: what they say and write

def test_project_writes_the_format_of_its_suffix_and_says_what_it_did(weights, image, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "p.jpg"
    status, printed, err = run_main(["project", image, "--weights", weights, "--layer", "conv1",
                                     "--backend", "numpy", "-o", str(out)], capsys)
    assert status == 0, err
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG, not PNG bytes under a .jpg name
    with Image.open(out) as im:
        assert im.format == "JPEG" and im.width >= 3 * 384 and im.height >= 384  # input, crop, projection
    assert "(row, col) = (" in printed
    assert "input 24x20 (width x height) resized to shorter side 16 and centre-cropped to 16x16" in printed
    assert "does not fire" not in printed


def test_project_says_when_the_feature_does_not_fire(tmp_path, image, capsys):
    net = nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, seed=1)), ("relu1", nn.ReLU()), ("pool1", nn.MaxPool2d(2)),
        ("flatten", nn.Flatten()), ("fc8", nn.Linear(4 * 8 * 8, 3, seed=2)),
    ], input_shape=(3, 16, 16), name="tiny")
    net["conv1"].params["b"][0] = -1e3  # feature 0 is negative everywhere
    path = str(net.save(tmp_path / "dead.npz", mean=[0.5, 0.5, 0.5]))
    status, printed, err = run_main(["project", image, "--weights", path, "--layer", "conv1", "--feature", "0",
                                     "--backend", "numpy", "-o", str(tmp_path / "p.png")], capsys)
    assert status == 0, err
    assert "does not fire on this image (activation <= 0)" in printed
    from zfraw import visualize

    x = np.zeros((3, 16, 16), np.float32)
    _, info = visualize.project_image(nn.load(path), x, "conv1", feature=0, return_info=True)
    assert info["fires"] is False and info["value"] <= 0


def test_crop_box_is_where_eval_transform_crops():
    from zfraw import data

    rng = np.random.default_rng(3)
    for h, w, side in ((20, 24, 16), (50, 30, 16), (64, 64, 64), (33, 100, 32)):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        t, l, b, r = cli.eval_crop_box(h, w, side)
        assert 0 <= t < b <= h + 1e-9 and 0 <= l < r <= w + 1e-9
        assert b - t == pytest.approx(min(h, w)) and r - l == pytest.approx(min(h, w))
        # the crop's pixels are (up to resampling) the box of the image: compare their mean colours
        crop = data.eval_transform(side, side)(img)
        box = img[int(round(t)):int(round(b)), int(round(l)):int(round(r))] / 255.0
        assert np.allclose(crop.mean(axis=(1, 2)), box.mean(axis=(0, 1)), atol=0.02)


def test_demo_with_another_model_says_which_model_and_whose_classes(weights, tmp_path, capsys):
    status, printed, err = run_main(["demo", "--weights", weights, "--images", "10", "--features", "1", "--quiet",
                                     "--backend", "numpy", "--out", str(tmp_path / "rep")], capsys)
    assert status == 0, err
    page = (tmp_path / "rep" / "index.html").read_text(encoding="utf-8")
    assert "<title>zfraw demo: what tiny.npz (tiny) learned</title>" in page
    assert "built-in ZFNet learned" not in page
    assert "the model predicts a " in page or "the model predicts b " in page or "the model predicts c " in page
    assert "(a bicycle image)" in page or "(a car image)" in page  # the dataset's names for the images
    assert "procedural dataset" in page and "checkerboard" in page  # what the images are, with the classes
