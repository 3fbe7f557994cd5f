"""Training: the SGD update against a hand computation, the paper's filter
renormalization, the schedules, the gradients a training step uses (central
differences), the loop with atomic checkpoints and an exact resume, and evaluation.
"""
import json
import os
import zlib

import numpy as np
import pytest

from zfraw import functional as F
from zfraw import nn, train
from zfraw.gradcheck import check_gradient, check_gradient_directions


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def tiny_net(seed=0, dtype=np.float64, dropout=0.5, classes=3):
    """conv -> relu -> pool -> conv -> relu -> flatten -> fc -> relu -> dropout -> fc, on 3x8x8."""
    net = nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, init_std=0.3, seed=seed, dtype=dtype)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(4, 4, 3, 1, 1, groups=2, init_std=0.3, seed=seed + 1, dtype=dtype)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(4 * 4 * 4, 16, init_std=0.2, seed=seed + 2, dtype=dtype)), ("relu3", nn.ReLU()),
        ("drop", nn.Dropout(dropout, seed=seed + 3)),
        ("fc2", nn.Linear(16, classes, init_std=0.2, seed=seed + 4, dtype=dtype)),
    ], input_shape=(3, 8, 8), name="tiny")
    for name, p in net.parameters().items():
        if name.endswith(".b"):
            p[...] = 0.1
    return net


def toy_data(n=24, seed=0, dtype=np.float64, classes=3):
    """Separable toy images: class c has a bright blob in one of three places."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    x = 0.3 * rng.standard_normal((n, 3, 8, 8))
    for i, c in enumerate(labels):
        x[i, :, 2 * c: 2 * c + 3, 2 * c: 2 * c + 3] += 1.5
    return x.astype(dtype), labels


def batches_for(x, labels, batch=8, seed=0):
    """A function epoch -> seeded shuffled batches (what fit expects)."""
    def make(epoch):
        order = np.random.default_rng([seed, epoch]).permutation(len(labels))
        return [(x[order[i:i + batch]], labels[order[i:i + batch]]) for i in range(0, len(labels), batch)]
    return make


# ============================================================== the update

def test_sgd_update_against_a_hand_computation():
    rng = rng_for("sgd")
    net = tiny_net(1)
    lr, mom, wd = 0.05, 0.9, 1e-2
    opt = train.SGD(net, lr=lr, momentum=mom, weight_decay=wd, renorm_radius=None)
    w = {k: v.copy() for k, v in net.parameters().items()}
    v = {k: np.zeros_like(p) for k, p in w.items()}
    for step in range(3):
        for lname, layer in net:
            for pname, p in layer.params.items():
                layer.grads[pname] = rng.standard_normal(p.shape)
        grads = {k: g.copy() for k, g in net.gradients().items()}
        opt.step()
        for k in w:
            g = grads[k] + (wd * w[k] if k.endswith(".w") else 0.0)  # no decay on biases
            v[k] = mom * v[k] - lr * g
            w[k] = w[k] + v[k]
            np.testing.assert_allclose(net.parameters()[k], w[k], rtol=1e-13, atol=1e-15, err_msg=f"{k} step {step}")
            np.testing.assert_allclose(opt.velocity[k], v[k], rtol=1e-13, atol=1e-15)
    # biases do not decay: with zero gradients a bias moves only by its momentum
    b_before = net["fc2"].params["b"].copy()
    vel = opt.velocity["fc2.b"].copy()
    for _, layer in net:
        for pname, p in layer.params.items():
            layer.grads[pname] = np.zeros_like(p)
    opt.step()
    np.testing.assert_allclose(net["fc2"].params["b"], b_before + mom * vel, rtol=1e-14)


def test_sgd_argument_errors_and_missing_gradients():
    net = tiny_net(0)
    with pytest.raises(ValueError, match="lr"):
        train.SGD(net, lr=0)
    with pytest.raises(ValueError, match="momentum"):
        train.SGD(net, momentum=1.0)
    with pytest.raises(ValueError, match="weight_decay"):
        train.SGD(net, weight_decay=-1)
    with pytest.raises(RuntimeError, match="backward"):
        train.SGD(net).step()


# ============================================================== renormalization

def test_filter_rms():
    rng = rng_for("rms")
    w = rng.standard_normal((5, 3, 4, 4))
    want = [np.sqrt(np.mean(w[f] ** 2)) for f in range(5)]
    np.testing.assert_allclose(train.filter_rms(w), want, rtol=1e-14)


def test_renormalize_scales_large_filters_only():
    rng = rng_for("renorm")
    net = tiny_net(2)
    w = rng.standard_normal((4, 3, 3, 3)) * np.array([0.05, 0.3, 0.09, 1.0]).reshape(-1, 1, 1, 1)
    net["conv1"].params["w"] = w.copy()
    fc_before = net["fc1"].params["w"] * 50  # large fc weights are not touched
    net["fc1"].params["w"] = fc_before.copy()
    big = train.filter_rms(w) > 0.1
    assert list(big) == [False, True, False, True]
    n_conv2 = int(np.sum(train.filter_rms(net["conv2"].params["w"]) > 0.1))
    assert train.renormalize_filters(net, 0.1) == 2 + n_conv2
    after = net["conv1"].params["w"]
    np.testing.assert_array_equal(after[~big], w[~big])  # bit for bit
    np.testing.assert_allclose(train.filter_rms(after[big]), 0.1, rtol=1e-12)
    np.testing.assert_allclose(after[big] / w[big], np.broadcast_to(
        (0.1 / train.filter_rms(w[big])).reshape(-1, 1, 1, 1), w[big].shape), rtol=1e-12)  # direction kept
    np.testing.assert_array_equal(net["fc1"].params["w"], fc_before)
    assert train.renormalize_filters(net, None) == 0
    with pytest.raises(ValueError, match="radius"):
        train.renormalize_filters(net, 0)


def test_renormalization_holds_after_every_step():
    x, labels = toy_data(16, seed=3)
    net = tiny_net(3)
    opt = train.SGD(net, lr=0.5, momentum=0.9, weight_decay=0, renorm_radius=0.1)
    small_seen = False
    for step in range(6):
        before = {k: v.copy() for k, v in net.parameters().items()}
        net.train()
        loss, dz = F.cross_entropy(net.forward(x, keep=False), labels)
        net.backward(dz)
        expected = {}  # what the plain SGD step gives, before renormalization
        for k, p in before.items():
            expected[k] = p + (opt.momentum * opt.velocity[k] - opt.lr * net.gradients()[k])
        opt.step()
        for name in ("conv1", "conv2"):
            w = net[name].params["w"]
            rms = train.filter_rms(w)
            assert np.all(rms <= 0.1 * (1 + 1e-12)), f"step {step} {name}: rms {rms.max()}"
            plain = expected[f"{name}.w"]
            small = train.filter_rms(plain) <= 0.1
            small_seen |= bool(small.any())
            np.testing.assert_allclose(w[small], plain[small], rtol=1e-13, atol=1e-16)
            np.testing.assert_allclose(rms[~small], 0.1, rtol=1e-12)
    assert small_seen


# ============================================================== schedules

def test_step_schedule():
    s = train.StepSchedule(step=3, gamma=0.5)
    assert [s(0.1, e, None) for e in range(8)] == pytest.approx(
        [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025], rel=1e-15)


def test_plateau_schedule():
    s = train.PlateauSchedule(factor=10, patience=2)
    h = train.History(val_loss=[1.0, 0.8, 0.8, 0.81, 0.7, 0.7, 0.7, 0.7, 0.7])
    lrs = [s(1.0, e, h) for e in range(10)]
    # epochs 0-3 see no plateau; the losses of epochs 2 and 3 (no improvement on 0.8)
    # divide the rate from epoch 4 on; 0.7 improves; epochs 5, 6 and 7, 8 are two more plateaus
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001])
    # epochs without validation (NaN, as fit records them) are no evidence of a plateau
    h = train.History(val_loss=[float("nan")] * 6 + [1.0, 1.0, 1.0])
    assert [s(1.0, e, h) for e in range(10)] == pytest.approx([1.0] * 9 + [0.1])


def test_schedule_argument_errors():
    with pytest.raises(ValueError, match="step"):
        train.StepSchedule(step=0)
    with pytest.raises(ValueError, match="gamma"):
        train.StepSchedule(gamma=0)
    with pytest.raises(ValueError, match="factor"):
        train.PlateauSchedule(factor=0)
    with pytest.raises(ValueError, match="patience"):
        train.PlateauSchedule(patience=0)


# ============================================================== gradients of a training step

def test_training_step_gradients_numerically():
    rng = rng_for("step grad")
    net = tiny_net(4, dropout=0.3).train()
    x, labels = toy_data(6, seed=4)
    drop = net["drop"]

    def loss():
        drop.rng = np.random.default_rng(9)  # one dropout mask for every evaluation
        return F.cross_entropy(net.forward(x, keep=False), labels)

    value, dz = loss()
    net.backward(dz)
    grads = {k: g.copy() for k, g in net.gradients().items()}
    assert np.any(drop._cache_mask == 0)
    for name, p in net.parameters().items():
        def f(a, name=name, p=p):
            net.set_parameter(name, a)
            try:
                return loss()[0]
            finally:
                net.set_parameter(name, p)

        if p.size <= 200:
            err = check_gradient(f, p.copy(), grads[name])
        else:  # fc1.w (1024): along random directions
            err = check_gradient_directions(f, p.copy(), grads[name], rng, 8)
        assert err < 1e-7, f"{name}: relative error {err:.3g}"


def test_train_step_reduces_the_loss():
    x, labels = toy_data(24, seed=5)
    net = tiny_net(5)
    opt = train.SGD(net, lr=0.05, momentum=0.9, weight_decay=5e-4)
    first, _ = train.evaluate(net, [(x, labels)])
    for _ in range(25):
        loss, acc = train.train_step(net, x, labels, opt)
        assert np.isfinite(loss) and 0 <= acc <= 1
        assert net.training
    last, acc = train.evaluate(net, [(x, labels)])
    assert last < 0.5 * first, (first, last)
    assert acc > 0.9


# ============================================================== evaluate

def test_evaluate_against_a_direct_computation():
    x, labels = toy_data(20, seed=6)
    net = tiny_net(6).train()
    chunks = [(x[i:i + 7], labels[i:i + 7]) for i in range(0, 20, 7)]  # 7, 7, 6
    loss, acc = train.evaluate(net, chunks)
    assert not net.training
    scores = net.eval().forward(x)
    want_loss, _ = F.cross_entropy(scores, labels)
    assert loss == pytest.approx(want_loss, rel=1e-12)
    assert acc == pytest.approx(np.mean(scores.argmax(axis=1) == labels))
    with pytest.raises(ValueError, match="no batches"):
        train.evaluate(net, [])


# ============================================================== the loop

def run_fit(tmp_path, epochs, resume=False, name="ck.npz", seed=7, **kw):
    x, labels = toy_data(24, seed=8)
    val = toy_data(12, seed=9)
    net = tiny_net(seed)
    history = train.fit(net, batches_for(x, labels, 8, seed=1), lambda: [val], epochs=epochs, lr=0.05,
                        checkpoint=str(tmp_path / name), resume=resume, progress=False, **kw)
    return net, history


def test_fit_trains_writes_checkpoints_and_history(tmp_path):
    seen = []
    net, history = run_fit(tmp_path, 3, extra={"classes": ["a", "b", "c"]},
                           on_epoch=lambda e, n, h: seen.append((e, len(h.epoch), os.path.exists(tmp_path / "ck.npz"))))
    assert seen == [(1, 1, True), (2, 2, True), (3, 3, True)]
    assert history.epoch == [1, 2, 3] and history.lr == [0.05] * 3
    assert len(history.train_loss) == len(history.val_acc) == len(history.seconds) == 3
    assert history.train_loss[-1] < history.train_loss[0]
    assert not net.training
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]  # no temporary left
    probe = tiny_net(0)
    epoch, h, extra = train.load_checkpoint(tmp_path / "ck.npz", probe)
    assert epoch == 3 and extra == {"classes": ["a", "b", "c"]}
    assert h.val_loss == history.val_loss and h.train_acc == history.train_acc
    for k, v in net.parameters().items():
        np.testing.assert_array_equal(probe.parameters()[k], v)
    with np.load(tmp_path / "ck.npz") as data:
        assert {f"velocity/{k}" for k in net.parameters()} <= set(data.files)
    # a checkpoint is also a model file: nn.load rebuilds the net from it (velocities ignored)
    rebuilt = nn.load(tmp_path / "ck.npz")
    assert rebuilt.spec() == net.spec()
    for k, v in net.parameters().items():
        np.testing.assert_array_equal(rebuilt.parameters()[k], v)
        assert rebuilt.parameters()[k].dtype == np.float64
    # History survives JSON
    again = train.History.from_json(history.to_json())
    assert again == history and json.loads(history.to_json())["epoch"] == [1, 2, 3]


def test_fit_resume_gives_the_uninterrupted_weights(tmp_path):
    full, h_full = run_fit(tmp_path, 4, name="full.npz")
    run_fit(tmp_path, 2, name="part.npz")  # "interrupted" after epoch 2
    with np.load(tmp_path / "part.npz") as data:
        assert json.loads(bytes(data["__zfraw__"]).decode())["epoch"] == 2
    resumed, h_res = run_fit(tmp_path, 4, resume=True, name="part.npz")
    for k, v in full.parameters().items():
        np.testing.assert_array_equal(resumed.parameters()[k], v, err_msg=k)
    assert h_res.epoch == [1, 2, 3, 4]
    assert h_res.train_loss == h_full.train_loss and h_res.val_loss == h_full.val_loss


def test_fit_resume_keeps_the_schedule(tmp_path):
    sched = train.StepSchedule(step=2, gamma=0.1)
    run_fit(tmp_path, 3, schedule=sched, name="s.npz")
    _, h = run_fit(tmp_path, 5, resume=True, schedule=sched, name="s.npz")
    assert h.lr == pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005])
    # resume without a checkpoint file starts from scratch
    _, h = run_fit(tmp_path, 1, resume=True, name="none.npz")
    assert h.epoch == [1]


def test_fit_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    run_fit(tmp_path, 1, name="ck.npz")
    good = (tmp_path / "ck.npz").read_bytes()

    def failing_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        run_fit(tmp_path, 2, resume=True, name="ck.npz")
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]
    assert (tmp_path / "ck.npz").read_bytes() == good


def test_fit_errors(tmp_path):
    net = tiny_net(0)
    with pytest.raises(TypeError, match="net"):
        train.fit([net], lambda e: [])
    with pytest.raises(TypeError, match="train_batches"):
        train.fit(net, [(np.zeros((1, 3, 8, 8)), np.zeros(1, int))])
    x, labels = toy_data(8, seed=1)
    x[0, 0, 3, 3] = np.nan  # a diverged run: the loss is no longer finite
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="lr"):
        train.fit(net, lambda e: [(x, labels)], epochs=1, lr=1.0, progress=False)


# ============================================================== schedules for small data, and guards

def test_plateau_schedule_has_a_floor_and_can_watch_the_training_loss():
    s = train.PlateauSchedule(factor=10, patience=1, min_lr=0.01)
    h = train.History(val_loss=[1.0] * 8)
    assert [s(1.0, e, h) for e in range(8)] == pytest.approx([1.0, 1.0, 0.1, 0.01, 0.01, 0.01, 0.01, 0.01])
    s = train.PlateauSchedule(factor=10, patience=2, monitor="train_loss")
    h = train.History(train_loss=[1.0, 0.5, 0.5, 0.5], val_loss=[float("nan")] * 4)
    assert [s(1.0, e, h) for e in range(5)] == pytest.approx([1.0, 1.0, 1.0, 1.0, 0.1])
    with pytest.raises(ValueError, match="monitor"):
        train.PlateauSchedule(monitor="val_acc")
    with pytest.raises(ValueError, match="min_lr"):
        train.PlateauSchedule(min_lr=float("nan"))
    with pytest.raises(ValueError, match="factor"):
        train.PlateauSchedule(factor=1.0)


def test_fit_refuses_runs_that_would_end_in_nan(tmp_path):
    x, labels = toy_data(8, seed=2)
    net = tiny_net(0)
    for epochs in (0, -3):
        with pytest.raises(ValueError, match="epochs"):
            train.fit(net, lambda e: [(x, labels)], epochs=epochs, progress=False)
    with pytest.raises(ValueError, match="no batch"):  # fewer images than one batch, with drop_last
        train.fit(net, lambda e: [], epochs=2, progress=False)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="validation loss"):
        train.fit(net, lambda e: [(x, labels)], lambda: [(bad, labels)], epochs=1, progress=False)


def test_fit_without_validation_prints_no_val_metrics(capsys):
    x, labels = toy_data(8, seed=2)
    history = train.fit(tiny_net(0), lambda e: [(x, labels)], epochs=2, lr=0.05, progress=True)
    out = capsys.readouterr().out
    assert "epoch 2/2" in out and "train loss" in out
    assert "val" not in out and "nan" not in out
    assert all(np.isfinite(history.train_loss))


def test_fit_removes_the_temporaries_of_a_killed_checkpoint_write(tmp_path):
    ours = tmp_path / ".ck.npz.ab12cd34.tmp"  # zfraw.io.npz's temporary of ck.npz, an hour old
    ours.write_bytes(b"PK\x03\x04 half")
    os.utime(ours, (time.time() - 3600,) * 2)
    someone_elses = tmp_path / "notes.tmp"
    someone_elses.write_bytes(b"keep")
    being_written = tmp_path / ".ck.npz.zz99yy88.tmp"  # fresh: another process may be writing ck.npz
    being_written.write_bytes(b"PK\x03\x04")
    run_fit(tmp_path, 1, name="ck.npz")
    assert sorted(os.listdir(tmp_path)) == [being_written.name, "ck.npz", "notes.tmp"]


# ============================================================== `zfraw train --data`: a user's own folder

import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

from conftest import draw_two_class_folder, run_cli  # noqa: E402


def zfraw_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", ZFRAW_BACKEND="numpy")
    env.pop("ZFRAW_DEBUG", None)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    return (draw_two_class_folder(root / "train", 32, seed=10), draw_two_class_folder(root / "val", 16, seed=11))


def test_train_on_a_small_folder_learns_with_the_default_recipe(folders, tmp_path):
    """64 drawn images (discs against stripes), the default options, 5 epochs: >= 90% on 32 held-out ones."""
    from zfraw import data

    train_dir, val_dir = folders
    out = tmp_path / "mine.npz"
    proc = subprocess.run([sys.executable, "-m", "zfraw", "train", "--data", train_dir, "--val", val_dir,
                           "--epochs", "5", "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env=zfraw_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "init: He N(0, 2/fan_in)" in proc.stdout
    assert "the best on --val" in proc.stdout and "nan" not in proc.stdout
    # an independent check of the saved model on the validation folder
    net = nn.load(out).eval()
    meta = nn.read_meta(out)["extra"]
    assert meta["classes"] == ["discs", "stripes"]
    val = data.ImageFolder(val_dir)
    _, acc = train.evaluate(net, data.batches(val, 32, data.eval_transform(64, 64, meta["mean"])))
    assert acc >= 0.9, proc.stdout
    assert f"validation accuracy {acc:.3f}" in proc.stdout


def test_a_checkpoint_write_killed_half_way_leaves_the_previous_one(folders, tmp_path):
    """SIGKILL while the second checkpoint is being written: the first stays complete, and the next
    start removes the half-written temporary and resumes from it."""
    small = draw_two_class_folder(tmp_path / "small", 4, seed=3)
    ck, marker = tmp_path / "ck.npz", tmp_path / "paused"
    pause_in_second_write = f"""
import os, sys, time
real_replace, calls = os.replace, []
def replace(src, dst, *a, **kw):
    if os.path.basename(dst) == "ck.npz":
        calls.append(dst)
        if len(calls) == 2:  # the second checkpoint: leave its temporary half-written and wait to be killed
            os.truncate(src, os.path.getsize(src) // 2)
            open({str(marker)!r}, "w").close()
            time.sleep(120)
    return real_replace(src, dst, *a, **kw)
os.replace = replace
from zfraw.cli import main
sys.exit(main(sys.argv[1:]))
"""
    argv = ["train", "--data", small, "--batch-size", "4", "--epochs", "3", "--checkpoint", str(ck),
            "--out", str(tmp_path / "m.npz")]
    proc = subprocess.Popen([sys.executable, "-c", pause_in_second_write] + argv, env=zfraw_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stale = [n for n in os.listdir(tmp_path) if n.startswith(".ck.npz.")]
    assert len(stale) == 1  # the half-written temporary
    os.utime(tmp_path / stale[0], (time.time() - 3600,) * 2)  # the restart comes an hour later
    with np.load(ck) as complete:  # the previous checkpoint, whole
        assert json.loads(bytes(complete["__zfraw__"]).decode())["epoch"] == 1
    again = subprocess.run([sys.executable, "-m", "zfraw"] + argv + ["--resume"], capture_output=True, text=True,
                           timeout=300, env=zfraw_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert "removed" in again.stderr and stale[0] in again.stderr
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    with np.load(ck) as done:
        meta = json.loads(bytes(done["__zfraw__"]).decode())
    assert meta["epoch"] == 3 and meta["history"]["epoch"] == [1, 2, 3]


def test_train_guards_refuse_before_the_first_epoch(folders, tmp_path, capsys):
    train_dir, val_dir = folders
    draw_two_class_folder(tmp_path / "single", 2, seed=1)
    import shutil

    shutil.rmtree(tmp_path / "single" / "stripes")
    other = draw_two_class_folder(tmp_path / "other", 1, seed=2)
    os.rename(os.path.join(other, "stripes"), os.path.join(other, "lines"))
    a_dir = tmp_path / "adir.npz"
    a_dir.mkdir()
    foreign = str(tiny_net(0).save(tmp_path / "foreign.npz", classes=["cats", "dogs"]))
    cases = [
        (["--data", train_dir, "--checkpoint", foreign, "--resume"], ["--checkpoint", "foreign.npz", "cats, dogs"]),
        (["--data", str(tmp_path / "single")], ["--data", "single", "at least two"]),
        (["--data", train_dir, "--val", other], ["--val", "other", "stripes", "lines"]),
        (["--data", train_dir, "--resume"], ["--resume", "--checkpoint"]),
        (["--data", train_dir, "--out", str(tmp_path / "model.pt")], ["--out", "model.pt", ".npz"]),
        (["--data", train_dir, "--out", str(a_dir)], ["--out", "adir.npz", "folder"]),
        (["--data", train_dir, "--checkpoint", str(tmp_path / "ck.npy")], ["--checkpoint", "ck.npy", ".npz"]),
        (["--data", train_dir, "--out", str(tmp_path / "x.npz"), "--checkpoint", str(tmp_path / "x.npz")],
         ["--checkpoint", "--out", "same file"]),
        (["--data", str(tmp_path / "nowhere")], ["--data", "nowhere", "not a folder"]),
    ]
    for argv, words in cases:
        t0 = time.perf_counter()
        status, out, err = run_cli(["train", "--backend", "numpy"] + argv, capsys)
        lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
        assert status == 2 and len(lines) == 1 and lines[0].startswith("zfraw train: error:"), (argv, err)
        assert all(w in lines[0] for w in words), lines[0]
        assert "epoch" not in out and time.perf_counter() - t0 < 10
    assert not (tmp_path / "x.npz").exists() and not (tmp_path / "model.pt").exists()


def test_fewer_images_than_a_batch_trains_with_a_smaller_batch_and_says_so(tmp_path, capsys):
    small = draw_two_class_folder(tmp_path / "small", 3, seed=4)
    status, out, err = run_cli(["train", "--backend", "numpy", "--data", small, "--epochs", "1",
                                "--out", str(tmp_path / "m.npz"), "--snapshots", "1",
                                "--snapshot-dir", str(tmp_path / "snaps")], capsys)
    assert status == 0, err
    assert "warning: --batch-size 16 is larger than the 6 training images; using batches of 6" in err
    assert "val loss" not in out and "nan" not in out
    assert "the model after epoch 1" in out and "give --val" in out
    assert nn.read_meta(tmp_path / "m.npz")["extra"]["classes"] == ["discs", "stripes"]
    assert len(os.listdir(tmp_path / "snaps")) == 1


def test_an_unreadable_image_is_named_once_on_one_line(tmp_path, capsys):
    """A file that cannot be read is skipped at every pass (the mean, each epoch) but named once,
    as ``warning: ...``, without Python's warning location and source line."""
    small = draw_two_class_folder(tmp_path / "small", 4, seed=5)
    (tmp_path / "small" / "discs" / "broken.png").write_bytes(b"\x89PNG not really")
    status, out, err = run_cli(["train", "--backend", "numpy", "--data", small, "--epochs", "2",
                                "--batch-size", "4", "--out", str(tmp_path / "m.npz")], capsys)
    assert status == 0, err
    lines = [line for line in err.splitlines() if "broken.png" in line]
    assert len(lines) == 1 and lines[0].startswith("warning: skipping item"), err
    assert "UserWarning" not in err and "warnings.warn" not in err and "epoch 2/2" in out


def test_ctrl_c_says_what_was_kept_and_how_to_go_on(tmp_path, capsys, monkeypatch):
    from zfraw import cli

    small = draw_two_class_folder(tmp_path / "small", 3, seed=6)
    ck = tmp_path / "ck.npz"
    argv = ["train", "--backend", "numpy", "--data", small, "--batch-size", "3", "--out", str(tmp_path / "m.npz")]
    assert run_cli(argv + ["--epochs", "1", "--checkpoint", str(ck)], capsys)[0] == 0

    def stopped(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_train_folder", stopped)
    for extra, words in [([], "interrupted; nothing was saved (--checkpoint FILE"),
                         (["--checkpoint", str(ck)], f"interrupted; {ck} holds epoch 1: run the same command with "
                                                     "--resume")]:
        status, out, err = run_cli(argv + ["--epochs", "3"] + extra, capsys)
        assert status == 130 and err.strip().splitlines()[-1].startswith(words), err


def test_a_run_resumed_after_its_last_epoch_keeps_the_best_model(folders, tmp_path):
    """With --val the saved file is the best epoch's; resuming a finished run must not replace it
    with the last epoch's model."""
    train_dir, val_dir = folders
    out, ck = tmp_path / "mine.npz", tmp_path / "ck.npz"
    args = [sys.executable, "-m", "zfraw", "train", "--data", train_dir, "--val", val_dir, "--epochs", "2",
            "--out", str(out), "--checkpoint", str(ck)]
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, env=zfraw_env())
    assert first.returncode == 0, first.stderr[-3000:]
    before = out.read_bytes()
    again = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=300, env=zfraw_env())
    assert again.returncode == 0, again.stderr[-3000:]
    assert out.read_bytes() == before
    assert "the best on --val" in again.stdout, again.stdout
