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


@pytest.fixture
def rng():
    """A fresh seeded generator per test."""
    return np.random.default_rng(20141)
