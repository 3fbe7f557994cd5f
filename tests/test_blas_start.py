"""zfraw.blas: OpenBLAS's idle workers started with zfraw's short spin, whatever
was imported first, the user's choice left alone, and the priming GEMMs run when
a CPU backend loads.  Each case runs in a fresh interpreter (OpenBLAS starts once
per process); the speed it buys is measured in bench/threading_layers.py."""
import importlib.util
import os
import subprocess
import sys

import pytest

from zfraw import blas

#: after the prelude: a multi-threaded GEMM checked against a float64 loop, then the state
REPORT = ("import numpy as np, os, zfraw; rng = np.random.default_rng(0); "
          "a = rng.standard_normal((300, 257)); b = rng.standard_normal((257, 190)); "
          "ref = np.array([[sum(a[i, k] * b[k, j] for k in range(257)) for j in range(0, 190, 37)] for i in range(0, 300, 41)]); "
          "assert np.allclose((a @ b)[::41, ::37], ref, rtol=1e-12, atol=1e-10); "
          "print(*zfraw.blas.thread_timeout(), os.environ.get('OPENBLAS_THREAD_TIMEOUT'), sep='|')")


def _state(prelude, **env):
    clean = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-W", "error", "-c", prelude + "; " + REPORT], capture_output=True,
                         text=True, timeout=300, env={**clean, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    exponent, how, left = out.stdout.strip().splitlines()[-1].split("|")
    return int(exponent), how, left


def test_zfraw_imported_first_sets_the_timeout_while_numpy_loads_and_removes_it():
    assert _state("import zfraw") == (blas.THREAD_TIMEOUT, "set at load", "None")


@pytest.mark.skipif(not blas.openblas_libraries(), reason="NumPy runs on another BLAS than OpenBLAS here")
def test_numpy_imported_first_gets_its_workers_restarted():
    assert _state("import numpy as np; (np.ones((512, 512)) @ np.ones((512, 512))); import zfraw") == (
        blas.THREAD_TIMEOUT, "restarted", "None")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs PyTorch")
def test_torch_imported_first_gets_the_workers_restarted_too():
    assert _state("import torch; import zfraw")[:2] == (blas.THREAD_TIMEOUT, "restarted")


def test_no_restart_beside_a_thread_the_user_started():
    prelude = ("import numpy, threading, time; t = threading.Thread(target=time.sleep, args=(3,)); t.start(); "
               "import zfraw")
    assert _state(prelude) == (blas.OPENBLAS_DEFAULT_TIMEOUT, "not restarted", "None")


def test_no_restart_outside_the_main_thread():
    prelude = ("import numpy, threading; box = []; "
               "t = threading.Thread(target=lambda: box.append(__import__('zfraw'))); t.start(); t.join()")
    assert _state(prelude) == (blas.OPENBLAS_DEFAULT_TIMEOUT, "not restarted", "None")


@pytest.mark.skipif(not blas.openblas_libraries(), reason="NumPy runs on another BLAS than OpenBLAS here")
def test_restart_beside_daemon_threads_as_in_a_notebook_kernel():
    prelude = ("import numpy, threading, time; "
               "[threading.Thread(target=time.sleep, args=(3,), daemon=True).start() for _ in range(3)]; "
               "import zfraw")
    assert _state(prelude) == (blas.THREAD_TIMEOUT, "restarted", "None")


@pytest.mark.parametrize("value, expected", [("10", 10), ("2", 4), ("99", 30), ("0", 28), ("x", 28)])
def test_the_users_value_is_left_alone_and_reported_as_openblas_reads_it(value, expected):
    assert _state("import zfraw", OPENBLAS_THREAD_TIMEOUT=value) == (expected, "user", value)


def test_a_cpu_backend_primes_the_blas_once_when_it_loads():
    code = ("import zfraw; first = zfraw.blas.prime(); print(first, zfraw.blas.prime())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]
    code = "import zfraw; zfraw.set_backend('numpy'); print(zfraw.blas.prime())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split() == ["False"], out.stderr[-2000:]  # loading the backend ran it
