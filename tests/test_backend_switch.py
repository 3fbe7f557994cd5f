"""The backend switch: listing, selecting, restoring, moving arrays, and errors that say how to fix them."""
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import zfraw
from zfraw import backend
from zfraw import functional as F


def test_numpy_always_available_and_default():
    assert zfraw.backends()[0] == "numpy"
    assert set(zfraw.backends()) <= {"numpy", "numba", "cupy", "cuda"}


def test_use_backend_restores_and_set_backend_sticks():
    before = zfraw.get_backend().name
    with zfraw.use_backend("numpy") as b:
        assert b.name == "numpy" and zfraw.get_backend() is b
    assert zfraw.get_backend().name == before
    try:
        assert zfraw.set_backend("NumPy ").name == "numpy"  # case and spaces do not matter
        assert zfraw.get_backend().name == "numpy"
    finally:
        zfraw.set_backend(before)


def test_unknown_backend_is_a_value_error_listing_the_names():
    with pytest.raises(ValueError, match="numpy.*numba.*cupy.*cuda"):
        zfraw.set_backend("tpu")
    with pytest.raises(TypeError, match="backend name"):
        zfraw.set_backend(3)


def test_missing_numba_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backend, "_loaded", {})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba" else real(name, *a))
    with pytest.raises(backend.BackendUnavailable, match=r"pip install zfraw\[numba\]"):
        zfraw.set_backend("numba")
    assert "numba" not in zfraw.backends()


def test_missing_cupy_says_how_to_install(monkeypatch):
    monkeypatch.setattr(backend, "_loaded", {})
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    for name in ("cupy", "cuda"):
        with pytest.raises(backend.BackendUnavailable, match=r"zfraw\[cuda12\].*zfraw\[cuda13\]"):
            zfraw.set_backend(name)


def test_import_zfraw_needs_neither_numba_nor_cupy():
    code = ("import sys; sys.modules['numba'] = None; sys.modules['cupy'] = None\n"
            "import zfraw; from zfraw import functional as F, models, deconvnet\n"
            "print(zfraw.backends())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['numpy']"


def test_environment_variable_picks_the_default():
    code = "import zfraw; print(zfraw.get_backend().name)"
    env = dict(os.environ, ZFRAW_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "numpy"


def test_to_device_and_to_host_on_the_cpu_are_numpy():
    x = np.arange(6.0).reshape(2, 3)
    assert isinstance(zfraw.to_device(x, "numpy"), np.ndarray)
    moved = zfraw.to_host({"a": x, "b": [x, None]})
    np.testing.assert_array_equal(moved["a"], x)
    assert moved["b"][1] is None


def test_workspace_budget_is_settable_and_bounds_the_chunks():
    old = zfraw.set_workspace_bytes(1)
    try:
        assert zfraw.workspace_bytes() == 1
        x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
        w = np.random.default_rng(1).standard_normal((4, 2, 3, 3)).astype(np.float32)
        tiny = F.conv2d(x, w, pad=1)
    finally:
        zfraw.set_workspace_bytes(old)
    np.testing.assert_allclose(tiny, F.conv2d(x, w, pad=1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="nbytes"):
        zfraw.set_workspace_bytes(0)


@pytest.mark.skipif("numba" not in zfraw.backends(), reason="needs Numba")
def test_numba_cache_lives_outside_the_package():
    code = "import zfraw; zfraw.set_backend('numba'); import numba; print(numba.config.CACHE_DIR)"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = "/tmp/zfraw-test-cache"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == os.path.join("/tmp/zfraw-test-cache", "zfraw", "numba")
