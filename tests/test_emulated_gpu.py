"""Every command on the ``cupy`` and ``cuda`` backends, on a machine without a GPU: CuPy replaced
by the NumPy stand-in of tests/emulated_cupy.py, which keeps CuPy's host/device boundary (no
implicit conversion either way, 0-d device arrays for scalars, no ``__index__``), and for ``cuda``
the raw kernels of kernels/*.cu compiled for the CPU (tests/emulated_cuda.py) and launched on the
emulated device arrays through kernels/cuda.py's own wrappers.

What it checks is the product's side of the boundary: arrays brought to the host before Pillow,
matplotlib, ``np.savez`` and the NumPy-only bookkeeping, device arrays never mixed with host ones,
and for ``cuda`` the wrappers' arguments and outputs in the real tools.  On ``cupy`` the numbers
are NumPy's (the same vectorized kernels as ``numpy``), and with the ``numpy`` backend tiling its
convolutions as a device does (one tile of everything that fits, instead of tiles sized for the
CPU's threads: other GEMM shapes round differently) every output must equal the ``numpy``
backend's exactly; on ``cuda`` too, except the trained weights (its backward kernels add in
another order: round-off) and the errors ``zfraw check`` prints.  What only a GPU shows (CuPy's
own kernels, cuBLAS, NVRTC, races) is in tests/test_gpu.py and tests/test_product_backends.py,
marked ``gpu``.
"""
import os
import re

import numpy as np
import pytest
from PIL import Image

import zfraw
from zfraw import builtin, models, visualize
from zfraw.train import SGD, train_step

from conftest import draw_two_class_folder, run_cli


# ============================================================== the emulation itself

def test_the_emulation_keeps_cupys_boundary(emulated_cupy, rng):
    cp = emulated_cupy
    host = rng.standard_normal((3, 4)).astype(np.float32)
    dev = cp.asarray(host)
    assert type(dev).__module__ == "cupy" and isinstance(dev, cp.ndarray)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(dev)
    with pytest.raises(AttributeError, match="__array_interface__"):  # as with CuPy: no host buffer to see
        Image.fromarray(dev)
    for mixed in (lambda: dev + host, lambda: host * dev, lambda: cp.maximum(host, dev), lambda: np.add(dev, host),
                  lambda: cp.ascontiguousarray(host)):
        with pytest.raises(TypeError, match="NumPy array in a device operation"):
            mixed()
    total = dev.sum()
    assert isinstance(total, cp.ndarray) and total.shape == ()
    assert isinstance(np.sum(dev), cp.ndarray) and isinstance(dev[0, 0], cp.ndarray)
    assert float(total) == pytest.approx(float(host.sum())) and f"{total:.3f}" == f"{host.sum():.3f}"
    with pytest.raises(TypeError):
        range(dev.argmax())  # CuPy arrays have no __index__
    view = dev.reshape(4, 3)
    view[0] = np.arange(3, dtype=np.float32)  # assignment from the host is allowed, and writes through
    np.testing.assert_array_equal(dev.get().ravel()[:3], [0, 1, 2])
    out = cp.empty((3, 3), dtype=np.float32)
    cp.matmul(dev, dev.T, out=out)
    np.testing.assert_allclose(out.get(), dev.get() @ dev.get().T, rtol=1e-6)
    assert zfraw.get_array_module(dev) is cp and cp.asnumpy(dev).dtype == np.float32


@pytest.fixture
def device_tiles(monkeypatch):
    """The ``numpy`` backend tiles its convolutions as a device does (``Backend.threads`` None)."""
    with zfraw.use_backend("numpy") as numpy_backend:
        monkeypatch.setattr(numpy_backend, "threads", None)


# ============================================================== the library on emulated cupy

def test_training_steps_and_the_top_k_scan_equal_numpys(emulated_cupy, device_tiles, rng):
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, 4)
    images = builtin.dataset("val", n_per_class=1)
    results = {}
    for name in ("numpy", "cupy"):
        with zfraw.use_backend(name):
            net = zfraw.to_device(models.zfnet_mini(num_classes=10, input_size=32, seed=3))
            opt = SGD(net, lr=0.01)
            steps = [train_step(net, zfraw.to_device(x), zfraw.to_device(labels), opt) for _ in range(2)]
            params = zfraw.to_host(net.parameters())
            state = opt.state_dict()
            trained, meta = builtin.load_model()
            dev = zfraw.to_device(trained)
            records = visualize.top_activations(dev, images, "conv2", [1, 4], k=3, batch_size=4,
                                                transform=builtin.eval_transform(meta["mean"]))
        results[name] = steps, params, state, records
    (ref_steps, ref_params, _, ref_records), (steps, params, state, records) = results["numpy"], results["cupy"]
    assert steps == ref_steps and all(isinstance(v, float) for step in steps for v in step)
    for k in ref_params:
        assert isinstance(params[k], np.ndarray)
        np.testing.assert_array_equal(params[k], ref_params[k], err_msg=k)
    assert all(isinstance(v, np.ndarray) for v in state.values())
    assert {f: [(r.index, r.location, r.value) for r in rs] for f, rs in records.items()} == \
        {f: [(r.index, r.location, r.value) for r in rs] for f, rs in ref_records.items()}


# ============================================================== every command

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A two-class folder of noisy pictures (no flat regions, whose max-pool windows tie)."""
    root = tmp_path_factory.mktemp("emulated")
    data = draw_two_class_folder(root / "data", 4, seed=7)
    noise = np.random.default_rng(8)
    for path in sorted((root / "data").rglob("*.png")):
        pixels = np.asarray(Image.open(path)).astype(float) + noise.normal(0, 12, (64, 64, 3))
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    image = os.path.join(data, "discs", "000.png")
    return root, data, image


def _commands(data, image):
    """(name, argv, outputs) for every command that computes; outputs relative to the run's folder."""
    return [
        ("project", ["project", image, "--layer", "conv4", "-o", "p.png"], ["p.png"]),
        ("project-guided", ["project", image, "--layer", "conv2", "--rule", "guided", "-o", "g.png"], ["g.png"]),
        ("top9", ["top9", data, "--layer", "conv3", "--images", "8", "--features", "0,5", "-o", "t9"],
         ["t9/conv3_feature0.png", "t9/conv3_feature5.png"]),
        ("filters", ["filters", "-o", "f.png"], ["f.png"]),
        ("occlude", ["occlude", image, "--size", "16", "--stride", "8", "-o", "o.png"], ["o.png"]),
        ("correspond", ["correspond", "--images", "2", "--draws", "2", "-o", "c.md"], ["c.md"]),
        ("invariance", ["invariance", image, "--transform", "rotate", "-o", "i.png"], ["i.png"]),
        ("evolution", ["evolution", "--images", "8", "--features", "1", "-o", "e.png"], ["e.png"]),
        ("compare-first-layer", ["compare-first-layer", "--images", "8", "--features", "1", "-o", "cf.png"],
         ["cf.png"]),
        ("predict", ["predict", image], []),
        ("check", ["check"], []),
        ("train", ["train", "--data", data, "--epochs", "2", "--batch-size", "4", "--out", "m.npz",
                   "--checkpoint", "ck.npz", "--snapshots", "1"], ["m.npz", "ck.npz", "m_snapshots/epoch001.npz"]),
        ("retrain", ["retrain", data, "--epochs", "3", "-o", "r.npz"], ["r.npz"]),
        ("demo", ["demo", "--images", "9", "--features", "1", "--quiet", "--out", "report"], ["report/index.html"]),
    ]


def _same_file(a, b, backend):
    if a.endswith(".npz"):
        with np.load(a, allow_pickle=False) as fa, np.load(b, allow_pickle=False) as fb:
            assert sorted(fa.files) == sorted(fb.files)
            for k in fa.files:
                if k == "__zfraw__":  # the metadata records the time and the backend
                    continue
                if backend == "cupy":
                    np.testing.assert_array_equal(fb[k], fa[k], err_msg=f"{a}: {k}")
                else:  # the raw kernels' backward sums in another order: round-off, after training
                    np.testing.assert_allclose(fb[k], fa[k], rtol=1e-4, atol=1e-6, err_msg=f"{a}: {k}")
    elif a.endswith(".png"):
        np.testing.assert_array_equal(np.asarray(Image.open(b)), np.asarray(Image.open(a)), err_msg=a)
    else:  # text: the same but for the backend's name and the time taken
        ta, tb = (re.sub(r"computed in [0-9.]+ s", "computed in T s", open(f).read()) for f in (a, b))
        assert tb.replace(backend, "numpy") == ta, a


@pytest.fixture(scope="module")
def numpy_runs():
    """What each command printed on the ``numpy`` backend: run once, compared with both emulated GPUs."""
    return {}


def _command_params():
    """(name, backend) for every command on both emulated GPUs; the demo on ``cuda`` (37 s: the
    emulated kernels run one thread after another) only with ``-m slow``, as every command it
    runs has its own case here."""
    params = []
    for backend in ("cupy", "cuda"):
        for name in (c[0] for c in _commands("DATA", "IMAGE")):
            marks = [pytest.mark.slow] if (name, backend) == ("demo", "cuda") else []
            params.append(pytest.param(name, backend, marks=marks, id=f"{name}-{backend}"))
    return params


@pytest.mark.parametrize("name, backend", _command_params())
def test_every_command_on_an_emulated_gpu_equals_numpy(name, backend, files, numpy_runs, emulated_cupy, device_tiles,
                                                       capsys, monkeypatch, request):
    if backend == "cuda":
        request.getfixturevalue("emulated_gpu")  # the raw kernels, run on the CPU
        launched = request.getfixturevalue("cuda_emulator").calls
        launched.clear()
    root, data, image = files
    _, argv, outputs = next(c for c in _commands(data, image) if c[0] == name)
    printed = {}
    for run in ("numpy", backend):
        if run == "numpy" and name in numpy_runs:  # its outputs are in root / name / "numpy" already
            printed["numpy"] = numpy_runs[name]
            continue
        made = emulated_cupy.ndarray.made
        run_dir = root / name / run
        run_dir.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(run_dir)
        status, out, err = run_cli(argv + ["--backend", run], capsys)
        assert status == 0, f"{run}: {err[-3000:]}"
        out = re.sub(r"[0-9.]+ s\b", "T s", out.replace(str(run_dir), "RUN"))  # times differ
        if name == "check" and run == "cuda":  # its own kernels: other rounding, the same verdicts
            out = re.sub(r"\d\.\d\de[-+]\d\d(?=\s+1e-)", "ERR", out)
            printed["numpy"] = re.sub(r"\d\.\d\de[-+]\d\d(?=\s+1e-)", "ERR", printed["numpy"])
        printed[run] = out.replace(f"'{run}'", "'numpy'")
        if run == "numpy":
            numpy_runs[name] = printed["numpy"]
            assert emulated_cupy.ndarray.made == made  # nothing on the "device"
        else:
            assert emulated_cupy.ndarray.made > made + 10, "the command ran no array on the emulated device"
    assert printed[backend] == printed["numpy"]
    if backend == "cuda" and name != "filters":  # filters only draws the weights
        assert launched, "the cuda backend launched no kernel"
    for rel in outputs:
        _same_file(str(root / name / "numpy" / rel), str(root / name / backend / rel), backend)
    if name == "demo":  # every picture of the report, not only the page
        pictures = sorted(p.relative_to(root / name / "numpy") for p in (root / name / "numpy").rglob("*.png"))
        assert len(pictures) >= 6
        for rel in pictures:
            _same_file(str(root / name / "numpy" / rel), str(root / name / backend / rel), backend)
