"""zfraw.io.npz: the one reader/writer of zfraw's .npz files, and its errors on foreign files."""
import json
import os
import time

import numpy as np
import pytest
from PIL import Image

from zfraw import models, nn
from zfraw.io import npz


def _tiny():
    return nn.Sequential([("conv1", nn.Conv2d(3, 4, 3, seed=1)), ("relu1", nn.ReLU()),
                          ("flatten", nn.Flatten()), ("fc", nn.Linear(4 * 6 * 6, 2, seed=2))],
                         input_shape=(3, 8, 8), name="tiny")


def test_save_load_round_trip_with_extras(tmp_path):
    net = _tiny()
    path = tmp_path / "m.npz"
    net.save(path, classes=["a", "b"], mean=[0.1, 0.2, 0.3], counts=np.arange(3))
    again = nn.load(path)
    assert again.spec() == net.spec()
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)
    meta = nn.read_meta(path)
    assert meta["extra"]["classes"] == ["a", "b"]
    np.testing.assert_array_equal(meta["extra"]["counts"], np.arange(3))
    contents = npz.read(path)
    assert set(contents.params) == set(net.state_dict()) and contents.spec == json.loads(json.dumps(net.spec()))


def test_the_shipped_weights_load_unchanged():
    from zfraw import builtin

    path = builtin.weights_path()
    net = nn.load(path)
    assert net.name == "zfnet_mini" and "conv5.w" in net.state_dict()
    with np.load(path) as raw:  # the same arrays as a plain np.load gives
        np.testing.assert_array_equal(net.state_dict()["fc8.w"], raw["fc8.w"])


def test_the_writer_is_the_one_format_of_the_checkpoints(tmp_path):
    from zfraw import train

    net = _tiny()
    path = tmp_path / "ck.npz"
    opt = train.SGD(net)
    train._save_checkpoint(path, net, opt, train.History(epoch=[1], lr=[0.1]), 1, {"classes": ["a", "b"]})
    contents = npz.read(path, require_meta=True)
    assert contents.meta["epoch"] == 1 and contents.meta["spec"] == json.loads(json.dumps(net.spec()))
    assert set(contents.other) == {f"velocity/{k}" for k in net.state_dict()}
    rebuilt = nn.load(path)  # a checkpoint is also a model file
    assert rebuilt.spec() == net.spec()
    epoch, history, extra = train.load_checkpoint(path, _tiny())
    assert epoch == 1 and history.lr == [0.1] and extra == {"classes": ["a", "b"]}


def _foreign_files(tmp_path):
    files = {}
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8), (200, 10, 10)).save(jpeg)
    files["image"] = jpeg
    text = tmp_path / "notes.npz"
    text.write_text("these are not weights\n")
    files["text"] = text
    npy = tmp_path / "array.npy"
    np.save(npy, np.zeros(3))
    files[".npy"] = npy
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    files["empty"] = empty
    good = tmp_path / "good.npz"
    _tiny().save(good)
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    files["truncated"] = truncated
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    files["folder"] = folder
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"conv1.w": np.array([{"a": 1}], dtype=object)})
    files["pickled"] = pickled
    return files


EXPECTED = {"image": "image", "text": "text file", ".npy": ".npy", "empty": "empty",
            "truncated": "truncated", "folder": "folder", "pickled": "pickled"}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_a_file_that_is_not_a_zfraw_npz_says_what_it_is(tmp_path, kind):
    path = _foreign_files(tmp_path)[kind]
    for load in (nn.load, lambda p: _tiny().load(p), npz.read, nn.read_meta):
        with pytest.raises(ValueError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message and "not a zfraw weights file" in message
        assert EXPECTED[kind] in message
        assert "allow_pickle" not in message


def test_a_random_savez_has_no_architecture(tmp_path):
    path = tmp_path / "random.npz"
    np.savez(path, a=np.zeros(3), b=np.ones(2))
    with pytest.raises(ValueError, match="no '__zfraw__' record") as info:
        nn.load(path)
    assert str(path) in str(info.value)


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.npz"):
        nn.load(tmp_path / "nothere.npz")


def _with_dtype(tmp_path, dtype):
    net = _tiny()
    state = net.state_dict()
    state["conv1.w"] = (state["conv1.w"] * 100).astype(dtype)
    path = tmp_path / f"w_{np.dtype(dtype).name}.npz"
    npz.write(path, net.spec(), state)
    return path


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.float16])
def test_parameters_of_the_wrong_dtype_are_refused_when_read(tmp_path, dtype):
    path = _with_dtype(tmp_path, dtype)
    with pytest.raises(ValueError, match=r"conv1\.w.*dtype") as info:
        nn.load(path)
    assert str(path) in str(info.value)


def test_float16_is_accepted_only_when_asked_and_cast_to_float32(tmp_path):
    path = _with_dtype(tmp_path, np.float16)
    net = nn.load(path, allow_float16=True)
    w = net.state_dict()["conv1.w"]
    assert w.dtype == np.float32
    with np.load(path) as raw:
        np.testing.assert_array_equal(w, raw["conv1.w"].astype(np.float32))


def test_a_corrupt_metadata_record_is_named(tmp_path):
    path = tmp_path / "bad_meta.npz"
    np.savez(path, **{"__zfraw__": np.frombuffer(b"{not json", dtype=np.uint8), "conv1.w": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="metadata"):
        nn.load(path)
    path2 = tmp_path / "bad_spec.npz"
    record = json.dumps({"spec": {"layers": [["conv1", "Bogus", {}]]}}).encode()
    np.savez(path2, **{"__zfraw__": np.frombuffer(record, dtype=np.uint8)})
    with pytest.raises(ValueError, match="Bogus") as info:
        nn.load(path2)
    assert str(path2) in str(info.value)


def test_weights_that_do_not_fit_the_architecture_name_the_file_and_key(tmp_path):
    net = _tiny()
    state = net.state_dict()
    state["fc.w"] = np.zeros((3, 5), np.float32)
    path = tmp_path / "misfit.npz"
    npz.write(path, net.spec(), state)
    with pytest.raises(ValueError, match=r"fc\.w") as info:
        nn.load(path)
    assert str(path) in str(info.value)


def test_writes_are_atomic_and_stale_temporaries_can_be_cleaned(tmp_path):
    path = tmp_path / "m.npz"
    with pytest.raises(ValueError, match=r"\.npz"):
        npz.write(tmp_path / "m.txt", None, {})
    an_hour_ago = time.time() - 3600
    stale = tmp_path / ".m.npz.abc_1234.tmp"               # a killed write of m.npz
    running = tmp_path / ".m.npz.xyz98765.tmp"             # m.npz being written by another process now
    others = [tmp_path / ".n.npz.abc_1234.tmp",             # another file's write
              tmp_path / "tmpabc123.npz.tmp", tmp_path / "keep.tmp", tmp_path / ".m.npz.notours.tmp"]
    for f in [stale, running, *others]:
        f.write_bytes(b"half")
        if f is not running:
            os.utime(f, (an_hour_ago, an_hour_ago))
    assert npz.remove_stale_temporaries(path) == [str(stale)]
    assert not stale.exists() and running.exists() and all(f.exists() for f in others)
    assert npz.remove_stale_temporaries(path, stale_after_s=0) == [str(running)]
    for f in others:
        f.unlink()
    models.zfnet_mini(num_classes=2).save(path)
    assert os.listdir(tmp_path) == ["m.npz"]


def test_a_failed_write_leaves_nothing_and_the_temporary_is_named_after_its_target(tmp_path):
    path = tmp_path / "m.npz"
    seen = []

    def write(fh):
        fh.write(b"half")
        seen.extend(os.listdir(tmp_path))
        raise RuntimeError("the write stops here")

    with pytest.raises(RuntimeError, match="stops here"):
        npz.atomic_write(path, write)
    assert os.listdir(tmp_path) == []
    assert len(seen) == 1
    assert seen[0].startswith(npz.temporary_prefix(path)) and seen[0].endswith(npz.TMP_SUFFIX)
    assert len(seen[0]) == len(".m.npz.") + 8 + len(".tmp")  # what remove_stale_temporaries matches


def test_the_commands_say_a_weights_file_is_not_one(tmp_path, capsys):
    from zfraw import cli

    files = _foreign_files(tmp_path)
    for kind in ("image", "truncated", "folder", "empty"):
        assert cli.main(["filters", "--weights", str(files[kind]), "-o", str(tmp_path / "f.png")]) == 2
        err = capsys.readouterr().err
        assert "not a zfraw weights file" in err and EXPECTED[kind] in err and len(err.strip().splitlines()) == 1
