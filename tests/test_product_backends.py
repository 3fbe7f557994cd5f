"""The product on every backend: training steps, the top-k scan, the top-9 figures,
a single-image projection and ``zfraw demo`` give on ``numba``, ``cupy`` and
``cuda`` what they give on ``numpy``.

The op-level tests (tests/test_backends.py) compare kernels; these follow the
host/device boundary through the tools a learner runs (arrays brought to the host
before Pillow, NumPy-only bookkeeping in the scan, optimizer state, checkpoints).
The GPU parameters carry the ``gpu`` mark and skip where there is no GPU; the
``numba`` one runs everywhere Numba is installed and keeps these tests honest.
"""
import numpy as np
import pytest

import zfraw
from zfraw import builtin, cli, visualize
from zfraw.models import zfnet_mini
from zfraw.train import SGD, train_step

from conftest import backend_params


@pytest.fixture(scope="module")
def model():
    net, meta = builtin.load_model()
    return net, meta["mean"]


@pytest.fixture(scope="module")
def images():
    return builtin.dataset("val", n_per_class=2)  # 20 images, every class


@pytest.mark.parametrize("backend", backend_params())
def test_training_steps_match_numpy(backend, rng):
    """Three SGD steps (momentum, weight decay, renormalization, dropout) from the same
    weights and data: the same losses, accuracies and weights as on numpy."""
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    results = {}
    for name in ("numpy", backend):
        with zfraw.use_backend(name):
            net = zfraw.to_device(zfnet_mini(num_classes=10, input_size=32, seed=3))
            opt = SGD(net, lr=0.01)
            xd, yd = zfraw.to_device(x), zfraw.to_device(labels)
            steps = [train_step(net, xd, yd, opt) for _ in range(3)]
            params = {k: zfraw.to_host(v) for k, v in net.parameters().items()}
            state = opt.state_dict()
        results[name] = steps, params, state
    (ref_steps, ref_params, _), (steps, params, state) = results["numpy"], results[backend]
    for (ref_loss, ref_acc), (loss, acc) in zip(ref_steps, steps):
        assert abs(loss - ref_loss) <= 1e-4 * max(1.0, abs(ref_loss)) and acc == ref_acc
    for k in ref_params:
        assert isinstance(params[k], np.ndarray)
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-3, atol=1e-5, err_msg=k)
    assert all(isinstance(v, np.ndarray) for v in state.values())  # optimizer state saves from the host


@pytest.mark.parametrize("backend", backend_params())
def test_top_activations_and_top9_match_numpy(backend, model, images):
    net, mean = model
    transform = builtin.eval_transform(mean)
    out = {}
    for name in ("numpy", backend):
        with zfraw.use_backend(name):
            dev = zfraw.to_device(net)
            records = visualize.top_activations(dev, images, "conv3", [0, 5, 9], k=4, batch_size=8,
                                                transform=transform)
            figures = visualize.top9(dev, images, "conv3", None, transform, mean, k=4, batch_size=8,
                                     records=records)
        out[name] = records, {f: np.asarray(img) for f, img in figures.items()}
        with zfraw.use_backend("numpy"):
            zfraw.to_device(net)  # the shared model back on the host for the next backend
    (ref_records, ref_figs), (records, figs) = out["numpy"], out[backend]
    assert list(records) == list(ref_records)
    for f in ref_records:
        assert [(r.index, r.location) for r in records[f]] == [(r.index, r.location) for r in ref_records[f]]
        np.testing.assert_allclose([r.value for r in records[f]], [r.value for r in ref_records[f]], rtol=1e-4)
    for f in ref_figs:  # uint8 pictures: round-off moves a few pixels by a level or two at most
        diff = np.abs(figs[f].astype(int) - ref_figs[f].astype(int))
        assert figs[f].shape == ref_figs[f].shape and diff.max() <= 3 and diff.mean() < 0.05


@pytest.mark.parametrize("backend", backend_params())
def test_project_and_demo_commands(backend, tmp_path, capsys):
    """``zfraw project`` and a small ``zfraw demo`` on the backend: the same picture as numpy's,
    a complete report."""
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray(np.asarray(builtin.dataset("val", n_per_class=1)[3][0])).save(image)
    pictures = {}
    for name in ("numpy", backend):
        out = tmp_path / f"p_{name}.png"
        assert cli.main(["project", str(image), "--layer", "conv4", "--backend", name, "-o", str(out)]) == 0
        pictures[name] = np.asarray(Image.open(out)).astype(int)
    diff = np.abs(pictures[backend] - pictures["numpy"])
    assert diff.max() <= 3 and diff.mean() < 0.05
    report = tmp_path / "report"
    assert cli.main(["demo", "--backend", backend, "--images", "20", "--features", "1", "--quiet",
                     "--out", str(report)]) == 0
    html = (report / "index.html").read_text()
    pngs = sorted(report.rglob("*.png"))
    assert len(pngs) >= 6 and all(p.name in html for p in pngs)
    assert all(np.asarray(Image.open(p)).std() > 0 for p in pngs)  # nothing blank
    capsys.readouterr()
