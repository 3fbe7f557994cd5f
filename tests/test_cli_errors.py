"""Every mistake a user can make on the command line: one line on stderr, exit status 2, no traceback,
and the message names the file or the option.  A few cases run ``python -m zfraw`` in a subprocess
(import-time settings, pipes, the traceback switch, real files); the rest call ``cli.main`` in process.
"""
import errno
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

import zfraw
from conftest import run_cli
from test_cli import image, weights  # noqa: F401  (the fixtures: a tiny model file, an image)
from zfraw import cli


def one_line(err, command):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"zfraw {command}: error:"), lines[0]
    assert "Traceback" not in err
    return lines[0]


def zfraw_process(*argv, env=None, **kw):
    full = dict(os.environ)
    full.pop("ZFRAW_DEBUG", None)
    full.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", ZFRAW_BACKEND="numpy")
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "zfraw", *argv], capture_output=True, text=True, timeout=120,
                          env=full, **kw)


# ============================================================== in a subprocess

def test_a_bad_workspace_variable_is_one_line_naming_it():
    proc = zfraw_process("summary", "--model", "zfnet_mini", env={"ZFRAW_WORKSPACE_MB": "abc"})
    assert proc.returncode == 2
    line = one_line(proc.stderr, "summary")
    assert "ZFRAW_WORKSPACE_MB" in line and "'abc'" in line
    assert proc.stdout == ""


def test_zfraw_debug_keeps_the_traceback(tmp_path):
    missing = str(tmp_path / "none.npz")
    proc = zfraw_process("summary", "--weights", missing)
    assert proc.returncode == 2 and "none.npz" in one_line(proc.stderr, "summary")
    proc = zfraw_process("summary", "--weights", missing, env={"ZFRAW_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "none.npz" in proc.stderr


@pytest.mark.parametrize("argv", [["summary", "--model", "zfnet_mini"], ["check", "--backend", "numpy"]],
                         ids=["summary", "check"])
def test_a_closed_pipe_ends_quietly(argv):
    """`zfraw summary | head`: the reader is gone before we write; no traceback, no message."""
    env = dict(os.environ, OMP_NUM_THREADS="1", ZFRAW_BACKEND="numpy")
    env.pop("ZFRAW_DEBUG", None)
    proc = subprocess.Popen([sys.executable, "-m", "zfraw", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # like `head` that has exited
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert err.decode().strip() == ""


def test_bad_weights_files_name_the_file(tmp_path, image, weights):
    """A folder, a JPEG, an empty and a truncated file as --weights: one line each, the file named."""
    folder = tmp_path / "weights_dir"
    folder.mkdir()
    jpeg = tmp_path / "photo.jpg"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(open(weights, "rb").read()[:300])
    text = tmp_path / "notes.npz"
    text.write_text("not a model\n")
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, a=np.zeros(3))
    for bad in (folder, jpeg, empty, truncated, text, npy, foreign):
        proc = zfraw_process("project", image, "--weights", str(bad), "--layer", "conv1",
                             "-o", str(tmp_path / "p.png"))
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr, "project")
        assert os.path.basename(bad) in line and "--weights" in line
        assert "allow_pickle" not in line
    assert not (tmp_path / "p.png").exists()


def test_an_unwritable_output_folder_is_refused_before_any_work(image, weights, tmp_path):
    if not os.path.isdir("/sys"):
        pytest.skip("no /sys here: no folder that even root cannot write to")
    proc = zfraw_process("project", image, "--weights", weights, "--layer", "conv1", "-o", "/sys/zfraw-out.png")
    assert proc.returncode == 2
    line = one_line(proc.stderr, "project")
    assert "/sys/zfraw-out.png" in line and "-o/--output" in line


def test_a_diverging_run_is_one_line(tmp_path):
    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b")):
        (data / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(data / name / f"{i}.png")
    proc = zfraw_process("train", "--data", str(data), "--lr", "1e6", "--batch-size", "4", "--epochs", "3",
                         "--out", str(tmp_path / "m.npz"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    messages = "\n".join(line for line in proc.stderr.splitlines() if "batch" not in line)  # not the bars
    line = one_line(messages, "train")
    assert "lr" in line and ("nan" in line or "inf" in line)
    assert not (tmp_path / "m.npz").exists()


# ============================================================== in process: option values

@pytest.mark.parametrize("argv, option", [
    (["demo", "--images", "0"], "--images"),
    (["demo", "--images", "-5"], "--images"),
    (["demo", "--features", "0"], "--features"),
    (["top9", "--images", "0"], "--images"),
    (["top9", "--features", "a,b"], "--features"),
    (["summary", "--classes", "0"], "--classes"),
    (["train", "--data", "x", "--epochs", "0"], "--epochs"),
    (["train", "--data", "x", "--epochs", "-3"], "--epochs"),
    (["train", "--data", "x", "--batch-size", "0"], "--batch-size"),
    (["train", "--data", "x", "--lr", "nan"], "--lr"),
    (["train", "--data", "x", "--lr", "-1"], "--lr"),
    (["retrain", "x", "-o", "r.npz", "--epochs", "0"], "--epochs"),   # before the features are extracted
    (["retrain", "x", "-o", "r.npz", "--lr", "0"], "--lr"),
    (["predict", "x.png", "--top", "0"], "--top"),
    (["predict", "x.png", "--top", "-2"], "--top"),
    (["predict", "x.png", "--input-size", "0"], "--input-size"),
    (["project", "x.png", "--resize", "-5"], "--resize"),
    (["evolution", "--images", "0"], "--images"),
    (["evolution", "--features", "0"], "--features"),
    (["compare-first-layer", "--images", "0"], "--images"),
    (["compare-first-layer", "--features", "-1"], "--features"),
    (["occlude", "x.png", "--size", "0"], "--size"),
    (["occlude", "x.png", "--stride", "0"], "--stride"),
    (["occlude", "x.png", "--batch-size", "0"], "--batch-size"),
    (["occlude", "x.png", "--fill", "nan"], "--fill"),
    (["correspond", "--images", "1"], "--images"),
    (["correspond", "--draws", "0"], "--draws"),
    (["correspond", "--fill", "inf"], "--fill"),
])
def test_invalid_option_values_are_refused(argv, option, capsys):
    status, out, err = run_cli(argv, capsys)
    assert status == 2 and out == ""
    assert option in one_line(err, argv[0])


def test_a_model_that_cannot_be_read_is_named_by_its_own_argument(tmp_path, capsys):
    pytest.importorskip("torch")
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a state dict")
    status, _, err = run_cli(["import", str(bad), "-o", str(tmp_path / "w.npz")], capsys)
    assert status == 2 and one_line(err, "import").startswith("zfraw import: error: MODEL")
    photo = tmp_path / "photo.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(photo)
    status, _, err = run_cli(["predict", str(photo), "--model", str(tmp_path)], capsys)  # a folder
    line = one_line(err, "predict")
    assert status == 2 and "--model" in line and ".onnx" in line and ".pth" in line


@pytest.mark.parametrize("argv", [["top9", "--data"], ["evolution", "--snapshots"], ["demo", "--bogus", "3"]])
def test_an_unknown_option_is_reported_by_its_command(argv, capsys):
    status, out, err = run_cli(argv, capsys)
    assert status == 2 and out == ""
    line = one_line(err, argv[0])
    assert f"unrecognized arguments: {' '.join(argv[1:])}" in line and f"zfraw {argv[0]} --help" in line


@pytest.mark.parametrize("argv, words", [
    (["summary", "--model", "alexnet", "--weights", "w.npz"], ["--weights", "--model"]),
    (["summary", "--classes", "5", "--weights", "w.npz"], ["--weights", "--classes"]),
    (["train", "--builtin", "--data", "somewhere"], ["--builtin", "--data"]),
    (["train", "--builtin", "--lr", "0.1"], ["--builtin", "--lr"]),
    (["train", "--data", "somewhere", "--n-per-class", "3"], ["--data", "--n-per-class"]),
])
def test_options_that_exclude_each_other(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, out, err = run_cli(argv, capsys)
    assert status == 2
    line = one_line(err, argv[0])
    assert all(w in line for w in words), line


def test_version(capsys):
    status, out, _ = run_cli(["--version"], capsys)
    assert status == 0 and out.strip() == f"zfraw {zfraw.__version__}"


def test_every_option_has_a_help_line_with_its_default():
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    formatter = cli.HelpFormatter("zfraw")
    seen = 0
    for name, command in sub.choices.items():
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction)) or action.help == argparse.SUPPRESS:
                continue
            text = formatter._get_help_string(action)
            assert text, f"{name} {action.option_strings}: no help"
            if action.option_strings and not action.required and not isinstance(action, argparse._StoreTrueAction):
                assert "default" in text, f"zfraw {name} {action.option_strings}: {text!r} names no default"
            seen += 1
    assert seen > 30
    help_text = sub.choices["top9"].format_help()
    assert "--builtin" not in help_text  # top9 has no such flag
    assert "built-in trained" not in sub.choices["summary"].format_help()  # summary's default is --model
    train_help = sub.choices["train"].format_help()
    for words in ("lr / 10", "lr / 100", "He", "--init paper", "best validation accuracy", "PATIENCE"):
        assert words in train_help, words


# ============================================================== in process: files and layers

def test_filters_of_a_layer_without_weights(weights, tmp_path, capsys):
    status, _, err = run_cli(["filters", "--weights", weights, "--layer", "relu1", "--backend", "numpy",
                               "-o", str(tmp_path / "f.png")], capsys)
    assert status == 2
    line = one_line(err, "filters")
    assert "relu1" in line and "conv1" in line and "no filters" in line


@pytest.mark.parametrize("name, why", [("out.txt", "not a picture format"), ("out", "no suffix")])
def test_project_refuses_an_unknown_picture_suffix(weights, image, tmp_path, capsys, name, why):
    status, _, err = run_cli(["project", image, "--weights", weights, "--layer", "conv1", "--backend", "numpy",
                               "-o", str(tmp_path / name)], capsys)
    assert status == 2
    line = one_line(err, "project")
    assert name in line and why in line


def test_output_paths_checked_before_any_work(weights, image, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["project", image, "-o", str(afile / "p.png")], "project"),          # a folder that is a file
        (["project", image, "-o", str(tmp_path)], "project"),                 # a folder, not a file
        (["filters", "-o", str(tmp_path) + os.sep], "filters"),
        (["top9", "-o", str(afile)], "top9"),                                 # an output folder that is a file
        (["demo", "--out", str(afile)], "demo"),
    ]
    for argv, command in cases:
        status, out, err = run_cli(argv + ["--weights", weights, "--backend", "numpy"], capsys)
        assert status == 2, (argv, err)
        assert str(argv[-1]).rstrip(os.sep) in one_line(err, command).replace(os.sep + "'", "'")


@pytest.mark.parametrize("exc, words", [
    (PermissionError(errno.EACCES, "Permission denied", "/data/out.npz"), ["/data/out.npz", "permissions"]),
    (OSError(errno.EROFS, "Read-only file system", "/mnt/ro/out.npz"), ["/mnt/ro/out.npz", "read-only"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/data/folder"), ["/data/folder", "folder"]),
    (OSError(errno.ENOSPC, "No space left on device", "/data/x.npz"), ["/data/x.npz", "disk is full"]),
    (zipfile.BadZipFile("File is not a zip file"), ["zip"]),
    (EOFError("No data left in file"), ["empty or truncated"]),
    (FloatingPointError("the loss became nan: lower the learning rate (lr=1e6)"), ["lr=1e6"]),
])
def test_main_turns_expected_errors_into_one_line(exc, words, monkeypatch, capsys):
    def failing(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_summary", failing)
    status, out, err = run_cli(["summary"], capsys)
    assert status == 2
    line = one_line(err, "summary")
    assert all(w in line for w in words), line


def test_a_read_only_place_is_refused_before_training(tmp_path, monkeypatch, capsys):
    import tempfile

    def read_only(*a, **kw):
        raise OSError(errno.EROFS, "Read-only file system", kw.get("dir", "?"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    status, _, err = run_cli(["train", "--data", str(tmp_path), "--out", str(tmp_path / "m.npz")], capsys)
    assert status == 2
    line = one_line(err, "train")
    assert "--out" in line and "m.npz" in line and "Read-only" in line


def test_check_honours_zfraw_backend(monkeypatch, capsys):
    from zfraw import checks

    chosen, ran = [], []

    class Active:
        name = None

    def set_backend(name):
        chosen.append(name)
        Active.name = name

    monkeypatch.setattr(zfraw, "set_backend", set_backend)
    monkeypatch.setattr(zfraw, "get_backend", lambda: Active)
    monkeypatch.setattr(checks, "main", lambda backend, seed: ran.append(backend) or 0)
    for name in ("numpy", "numba", "cuda"):
        monkeypatch.setenv("ZFRAW_BACKEND", name)
        assert run_cli(["check"], capsys)[0] == 0
    monkeypatch.setenv("ZFRAW_BACKEND", "cuda")
    assert run_cli(["check", "--backend", "numpy"], capsys)[0] == 0  # --backend wins over the variable
    assert chosen == ran == ["numpy", "numba", "cuda", "numpy"]
