"""Shared test set-up: seeded generators, the backends that can run here, GPU skips."""
import os

import numpy as np
import pytest

import zfraw

os.environ.setdefault("MPLBACKEND", "Agg")

try:  # a hypothesis profile that keeps the default run to a few minutes on 2 cores
    from hypothesis import HealthCheck, settings

    settings.register_profile(
        "zfraw", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
    )
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "zfraw"))
except ImportError:  # hypothesis is in the test extra
    pass

GPU_BACKENDS = ("cupy", "cuda")
AVAILABLE = zfraw.backends()


def backend_params(include_numpy=False):
    """pytest params for every backend; GPU ones carry the gpu mark and skip with a reason."""
    params = []
    for name in ("numpy", "numba", "cupy", "cuda"):
        if name == "numpy" and not include_numpy:
            continue
        marks = [pytest.mark.gpu] if name in GPU_BACKENDS else []
        if name not in AVAILABLE:
            why = "needs CuPy and a CUDA GPU" if name in GPU_BACKENDS else "needs Numba (pip install zfraw[numba])"
            marks.append(pytest.mark.skip(reason=f"backend {name!r} cannot run here: {why}"))
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(autouse=True)
def keep_backend():
    """Commands and backend tests select a backend for the process; give the next test the one it had."""
    name = zfraw.get_backend().name
    yield
    zfraw.set_backend(name)


@pytest.fixture
def emulated_cupy(monkeypatch):
    """``import cupy`` gives the NumPy stand-in of tests/emulated_cupy.py (CuPy's host/device boundary,
    one pretend device) for this test, and the ``cupy`` backend runs on it; returns that module."""
    import emulated_cupy as emulation
    from zfraw import backend

    cupy = emulation.install(monkeypatch)
    monkeypatch.setattr(backend, "_loaded", {k: v for k, v in backend._loaded.items() if k not in ("cupy", "cuda")})
    return cupy


@pytest.fixture(scope="session")
def cuda_emulator(tmp_path_factory):
    """kernels/*.cu compiled for the CPU (tests/emulated_cuda.py), once per session."""
    from emulated_cuda import emulator_in

    emulator = emulator_in(tmp_path_factory.mktemp("emulated-cuda"))
    if emulator is None:
        pytest.skip("no C++ compiler (g++ or clang++) to run the CUDA kernels on the CPU")
    return emulator


@pytest.fixture
def emulated_gpu(request, emulated_cupy, cuda_emulator):
    """The ``cupy`` and ``cuda`` backends without a GPU: CuPy emulated (``emulated_cupy``) and the
    ``cuda`` backend's kernels run by ``cuda_emulator`` on the emulated device arrays; returns cupy."""
    import emulated_cupy as emulation
    from zfraw.kernels import cuda

    def launch(source, dtype, expr, blocks, threads, args):
        host = tuple(emulation.host_view(a) if isinstance(a, emulation.ndarray) else a for a in args)
        cuda_emulator(source, dtype, expr, blocks, threads, host)

    with cuda._use_launcher(launch):
        yield emulated_cupy


@pytest.fixture
def rng():
    """A fresh seeded generator per test."""
    return np.random.default_rng(20141)


def draw_two_class_folder(root, n_per_class, seed, size=64):
    """A class-per-folder dataset on disk, drawn with Pillow: ``root/discs`` (one or two bright discs)
    and ``root/stripes`` (bright vertical or horizontal stripes), on dark backgrounds of random colours.
    Returns ``root``."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for kind in ("discs", "stripes"):
        os.makedirs(os.path.join(root, kind), exist_ok=True)
        for i in range(n_per_class):
            im = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 90, 3)))
            fg = tuple(int(v) for v in rng.integers(160, 256, 3))
            draw = ImageDraw.Draw(im)
            if kind == "discs":
                for _ in range(int(rng.integers(1, 3))):
                    r = int(rng.integers(size // 8, size // 4))
                    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
                    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
            else:
                w = int(rng.integers(3, 6))
                period = int(rng.integers(2 * w + 2, 4 * w))
                vertical = rng.random() < 0.5
                for t in range(int(rng.integers(0, period)) - period, size + period, period):
                    draw.rectangle([t, 0, t + w - 1, size] if vertical else [0, t, size, t + w - 1], fill=fg)
            im.save(os.path.join(root, kind, f"{i:03d}.png"))
    return str(root)


def run_cli(argv, capsys):
    """``zfraw.cli.main(argv)`` in process: (status, stdout, stderr); argparse errors come back as status 2."""
    from zfraw import cli

    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err
