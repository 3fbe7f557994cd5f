"""The numba backend's thread pool beside PyTorch: which mechanism is in effect.

Speed is measured in bench/same_process.py; here only the choice is checked, in
fresh interpreters (the threading layer is fixed once per process)."""
import importlib.util
import os
import subprocess
import sys

import pytest

import zfraw

pytestmark = pytest.mark.skipif("numba" not in zfraw.backends(), reason="needs Numba")

REPORT = ("from zfraw.kernels import cpu; import numpy as np; from zfraw import functional as F; "
          "y = F.conv2d(np.ones((2, 3, 8, 8), np.float32), np.ones((4, 3, 3, 3), np.float32), pad=1); "
          "assert float(y[0, 0, 3, 3]) == 27.0; print(cpu.threading_layer())")


def _layer(prelude, **env):
    code = prelude + "; " + REPORT
    clean = {k: v for k, v in os.environ.items() if k not in ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY",
                                                               "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True, text=True,
                         timeout=300, env={**clean, **env})
    assert out.returncode == 0, out.stderr[-2000:]  # -W error: no warning either
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_torch_imported_first_gets_numba_a_pool_of_its_own():
    from zfraw.kernels import cpu

    layer = _layer("import torch; import zfraw; zfraw.set_backend('numba'); "
                   "torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))")
    assert layer in cpu.SEPARATE_POOL_LAYERS and layer != "omp"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_torch_imported_after_shares_the_passive_runtime_or_numba_default():
    layer = _layer("import zfraw; zfraw.set_backend('numba'); import torch; "
                   "torch.nn.functional.conv2d(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 3, 3))")
    assert layer in ("omp", "tbb")  # Numba's default choice: tbb when installed, else OpenMP (started passive)


def test_the_users_choice_is_respected():
    assert _layer("import zfraw; zfraw.set_backend('numba')", NUMBA_THREADING_LAYER="workqueue") == "workqueue"
