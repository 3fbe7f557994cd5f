"""How zfraw starts the BLAS that runs its GEMMs on the CPU (OpenBLAS, under NumPy).

Two habits of OpenBLAS cost the CPU backends time, both measured on a 2-vCPU
AMD EPYC with OpenBLAS 0.3.31 (Haswell kernels; bench/README.md, issue 11's
items 7 and 8 and "The BLAS start, in one run"):

* **Its idle workers spin.**  After every multi-threaded GEMM, OpenBLAS's worker
  threads busy-wait ``2**28`` cycles (about 0.1 s) before they sleep.  zfraw
  alternates GEMMs with its own multi-threaded kernels (im2col, pooling, ReLU),
  which then run on the cores those workers spin on: ZFNet's conv2 im2col took
  28 ms instead of 17, pool1 in a training step 96 ms instead of 54.
  OpenBLAS's ``OPENBLAS_THREAD_TIMEOUT`` (the wait is ``2**value`` cycles) is
  read when its threads start, so :func:`start` gives them
  :data:`THREAD_TIMEOUT` (about 0.1 ms) unless the user set the variable:

  - NumPy not imported yet: the variable is set while NumPy loads OpenBLAS,
    then removed again (child processes and other libraries see the user's
    environment);
  - NumPy already imported (a notebook's ``import numpy`` first, or PyTorch
    imported before zfraw): OpenBLAS's workers are restarted with it through
    OpenBLAS's exported C functions (``openblas_read_env``, then
    ``blas_thread_shutdown_`` and ``blas_thread_init``, the pair OpenBLAS's own
    fork handler uses), only when called from the main thread while every
    other Python thread is a daemon thread (a notebook kernel's I/O threads),
    so that no GEMM of the user's own threads can be running.

  ``import zfraw`` calls :func:`start` first thing; :func:`thread_timeout` says
  what took effect.
* **A thin GEMM is slow until a square one has run.**  In a fresh process a
  float32 GEMM as thin as conv1's (96 x 147 times 147 x 8192) ran at 29
  GFLOP/s, and at 69 GFLOP/s once any multi-threaded float32 GEMM with K >= 256
  had run (float64: 17% faster after its own); the state persists, and
  OpenBLAS on one thread shows no such change (``bench/gemm_state.py``).  The
  cause is inside OpenBLAS; :func:`prime` runs one 256^3 GEMM per dtype (about
  3 ms), and the CPU backends call it when they load.

Under another BLAS (MKL, Accelerate) both do nothing that matters: no OpenBLAS
library is found to restart, and priming is two small GEMMs.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import sys
import threading

__all__ = ["THREAD_TIMEOUT", "start", "thread_timeout", "prime", "openblas_libraries"]

#: the ``OPENBLAS_THREAD_TIMEOUT`` zfraw starts OpenBLAS with: idle workers spin
#: ``2**18`` cycles (about 0.1 ms at 2-3 GHz) before they sleep.  Every value from
#: 4 to 22 measured the same on the 2-vCPU AMD EPYC (``bench/threading_layers.py``);
#: 18 keeps a worker awake across the gap between two back-to-back GEMMs and
#: asleep through every zfraw kernel.
THREAD_TIMEOUT = 18

#: OpenBLAS's default exponent (when the variable is unset or not in 1..)
OPENBLAS_DEFAULT_TIMEOUT = 28

_VARIABLE = "OPENBLAS_THREAD_TIMEOUT"
_RESTART_SYMBOLS = ("openblas_read_env", "blas_thread_shutdown_", "blas_thread_init")

#: how :func:`start` left OpenBLAS: "set at load", "restarted", "user",
#: "not restarted" (NumPy came first and a restart was not safe or not possible)
_how = None


def openblas_libraries():
    """Paths of the OpenBLAS shared libraries mapped into this process (Linux; else [])."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if ".so" in os.path.basename(p))


def _safe_to_restart():
    """True in the main thread when every other Python thread is a daemon thread.

    A notebook kernel runs its cells in the main thread beside daemon I/O
    threads (ipykernel: IOPub, Heartbeat, Control, history); a thread the user
    started (``threading.Thread``, ``ThreadPoolExecutor``: not daemons) might be
    inside a GEMM, and OpenBLAS's workers must not be stopped under it.
    """
    main = threading.main_thread()
    return threading.current_thread() is main and all(t is main or t.daemon for t in threading.enumerate())


def _restart_workers():
    """Restart every loaded OpenBLAS's worker threads with ``THREAD_TIMEOUT``; True if any was."""
    if not _safe_to_restart():
        return False
    restarted = False
    os.environ[_VARIABLE] = str(THREAD_TIMEOUT)
    try:
        for path in openblas_libraries():
            try:
                lib = ctypes.CDLL(path)
                read_env, shutdown, init = (getattr(lib, name) for name in _RESTART_SYMBOLS)
            except (OSError, AttributeError):  # an OpenBLAS without this API: leave it
                continue
            read_env()
            shutdown()
            init()
            restarted = True
    finally:
        del os.environ[_VARIABLE]
    return restarted


def start():
    """Start OpenBLAS's workers with :data:`THREAD_TIMEOUT` (once per process; see the module docstring).

    Leaves a user's ``OPENBLAS_THREAD_TIMEOUT`` alone.  Never leaves the variable
    in the environment.
    """
    global _how
    if _how is not None:
        return
    if _VARIABLE in os.environ:
        _how = "user"
    elif "numpy" not in sys.modules:
        os.environ[_VARIABLE] = str(THREAD_TIMEOUT)
        try:
            importlib.import_module("numpy")  # loads OpenBLAS, which reads the variable now
        finally:
            del os.environ[_VARIABLE]
        _how = "set at load"
    else:
        _how = "restarted" if _restart_workers() else "not restarted"


def thread_timeout():
    """(exponent, how): OpenBLAS's idle workers spin ``2**exponent`` cycles; how is
    ``"set at load"`` or ``"restarted"`` (zfraw's :data:`THREAD_TIMEOUT`), ``"user"``
    (the user's ``OPENBLAS_THREAD_TIMEOUT``, clamped to 4..30 as OpenBLAS does) or
    ``"not restarted"`` (OpenBLAS's default, 28: NumPy was imported before zfraw,
    and zfraw was imported outside the main thread or beside a non-daemon thread).  Before :func:`start`: (28, "not started").
    """
    if _how in ("set at load", "restarted"):
        return THREAD_TIMEOUT, _how
    if _how == "user":
        try:
            value = int(os.environ.get(_VARIABLE, ""))
        except ValueError:
            value = 0
        return (min(max(value, 4), 30) if value > 0 else OPENBLAS_DEFAULT_TIMEOUT), "user"
    return OPENBLAS_DEFAULT_TIMEOUT, _how or "not started"


_primed = False


def prime():
    """Run one 256^3 GEMM in float32 and one in float64, once per process (about 3 ms).

    Takes OpenBLAS out of the state in which a thin GEMM (K < 256, conv1's) runs
    at less than half speed (module docstring).  Returns True when it ran them,
    False when an earlier call had.
    """
    global _primed
    if _primed:
        return False
    import numpy as np

    for dtype in (np.float32, np.float64):
        a = np.ones((256, 256), dtype=dtype)
        a @ a
    _primed = True
    return True
