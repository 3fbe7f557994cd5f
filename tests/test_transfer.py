"""Feature generalization (zfraw.transfer, `zfraw retrain`): frozen layers stay bit-identical,
the retrained last layer learns a small set of images."""
import numpy as np
from PIL import Image

from zfraw import builtin, cli, data, nn, transfer


def _subset(ds, classes, per_class, skip=0):
    """Images skip .. skip + per_class of each of ``classes``, relabelled 0, 1, ... (drawn
    without drawing the others: ds.labels is known in advance)."""
    index = [i for c in classes for i in np.flatnonzero(ds.labels == c)[skip:skip + per_class]]
    images = np.stack([ds[int(i)][0] for i in index])
    return data.ArrayDataset(images, [classes.index(int(ds.labels[i])) for i in index])


def test_retrained_last_layer_learns_and_the_rest_is_frozen():
    net, meta = builtin.load_model()
    before = {k: v.copy() for k, v in net.state_dict().items()}
    ds = builtin.dataset("val", n_per_class=10)
    train_set, val_set = _subset(ds, [2, 5, 7], 6), _subset(ds, [2, 5, 7], 4, skip=6)
    new, history = transfer.retrain_last_layer(net, train_set, builtin.eval_transform(meta["mean"]), 3,
                                               val_set=val_set, epochs=25)
    assert new["fc8"].out_features == 3 and history.val_acc[-1] >= 0.8
    for k, v in new.state_dict().items():
        if not k.startswith("fc8."):
            np.testing.assert_array_equal(v, before[k])       # bit-identical
            assert new[k.split(".")[0]].params[k.split(".")[1]] is net[k.split(".")[0]].params[k.split(".")[1]]
    np.testing.assert_array_equal(net.state_dict()["fc8.w"], before["fc8.w"])  # the original is untouched


def test_retrain_command_on_a_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for cls, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(6):
            img = np.clip(np.array(colour) + rng.normal(0, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "data" / cls / f"{i}.png")
    out = tmp_path / "retrained.npz"
    assert cli.main(["retrain", str(tmp_path / "data"), "-o", str(out), "--epochs", "15"]) == 0
    printed = capsys.readouterr().out
    assert "retrained fc8 on 12 images of 2 classes" in printed and "train acc 1.000" in printed
    again = nn.load(out)
    assert again["fc8"].out_features == 2 and nn.read_meta(out)["extra"]["classes"] == ["blue", "red"]
    assert cli.main(["retrain", str(tmp_path / "data"), "-o", str(tmp_path / "x.txt")]) == 2
    err = capsys.readouterr().err
    assert "x.txt" in err and ".npz" in err
