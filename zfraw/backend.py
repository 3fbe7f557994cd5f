"""Which backend runs the hot paths, and moving arrays between host and device.

A *backend* is an array module (NumPy or CuPy) plus a table of kernels, looked
up by name (``im2col``, ``col2im``, ``im2col_tile``, ``col2im_tile``,
``relu``, ``relu_backward``, ``max_pool2d``, ``max_unpool2d``, ``lrn``, ``lrn_backward``,
``sgd_update``).  Layer and functional code asks for a kernel by
name and never branches on which backend is active:

=========  ======  ======================================  ========
name       arrays  hot paths                               GEMM
=========  ======  ======================================  ========
``numpy``  NumPy   vectorized NumPy (kernels/vectorized)   BLAS
``numba``  NumPy   ``@njit(parallel=True)`` (kernels/cpu)  BLAS
``cupy``   CuPy    the same vectorized code, on the GPU    cuBLAS
``cuda``   CuPy    raw CUDA kernels (kernels/*.cu)         cuBLAS
=========  ======  ======================================  ========

Select one with :func:`set_backend`, ``with use_backend(name):`` or the
``ZFRAW_BACKEND`` environment variable.  Numba and CuPy are optional imports.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

__all__ = [
    "Backend", "backends", "get_backend", "set_backend", "use_backend",
    "kernel", "get_array_module", "to_device", "to_host", "BackendUnavailable",
    "KERNEL_NAMES", "workspace_bytes", "set_workspace_bytes", "workspace_from_env", "cpu_threads",
]

#: kernels every backend provides (a backend that does not override one gets
#: the vectorized array-module version, run on its own array type).
KERNEL_NAMES = ("im2col", "col2im", "im2col_tile", "col2im_tile", "relu", "relu_backward",
                "max_pool2d", "max_unpool2d", "lrn", "lrn_backward", "sgd_update")

NAMES = ("numpy", "numba", "cupy", "cuda")



def cpu_threads() -> int:
    """Threads a CPU backend computes with: the first of ``OMP_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS`` that is set, else the CPUs this
    process may run on (``os.sched_getaffinity``; ``os.cpu_count`` elsewhere)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        raw = os.environ.get(var, "").split(",")[0].strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run on this machine (says why and how to fix)."""


@dataclass
class Backend:
    """One backend: its name, its array module ``xp`` and its kernel table."""

    name: str
    xp: object
    kernels: Dict[str, Callable] = field(default_factory=dict)
    on_device: bool = False  # True when arrays live on a GPU
    #: how many CPU threads run its GEMMs (None on a GPU): the conv tile planner
    #: gives each of them enough columns (:func:`zfraw.functional.conv_tiles`)
    threads: Optional[Callable[[], int]] = None

    def kernel(self, name: str) -> Callable:
        try:
            return self.kernels[name]
        except KeyError:
            raise ValueError(f"kernel name {name!r} is not one of {KERNEL_NAMES}") from None

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


# ---------------------------------------------------------------- loading

def _cupy_or_raise(name: str):
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend {name!r} needs CuPy, which is not installed ({exc}). Install it with "
            "`pip install zfraw[cuda12]` or `pip install zfraw[cuda13]` "
            "(cupy-cuda12x / cupy-cuda13x, matching your CUDA driver)."
        ) from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError when there is no driver
        raise BackendUnavailable(
            f"backend {name!r} needs a CUDA GPU, but CuPy found none ({exc})."
        ) from None
    if count < 1:
        raise BackendUnavailable(f"backend {name!r} needs a CUDA GPU, but CuPy found none.")
    return cupy


def _load(name: str) -> Backend:
    from zfraw.kernels import vectorized

    generic = {k: getattr(vectorized, k) for k in KERNEL_NAMES}
    if name in ("numpy", "numba"):
        from zfraw import blas

        blas.prime()  # out of OpenBLAS's slow state for thin GEMMs (conv1's)
    if name == "numpy":
        return Backend("numpy", np, dict(generic), threads=cpu_threads)
    if name == "numba":
        if importlib.util.find_spec("numba") is None:  # found, not imported: kernels/cpu sets it up
            raise BackendUnavailable(
                "backend 'numba' needs Numba, which is not installed. "
                "Install it with `pip install zfraw[numba]` (or `pip install numba`)."
            )
        from zfraw.kernels import cpu

        return Backend("numba", np, {**generic, **cpu.KERNELS}, threads=_numba_threads)
    if name == "cupy":
        cupy = _cupy_or_raise(name)
        return Backend("cupy", cupy, dict(generic), on_device=True)
    if name == "cuda":
        cupy = _cupy_or_raise(name)
        from zfraw.kernels import cuda

        return Backend("cuda", cupy, {**generic, **cuda.KERNELS}, on_device=True)
    raise ValueError(f"backend name must be one of {NAMES}, got {name!r}")


_loaded: Dict[str, Backend] = {}


def _get(name: str) -> Backend:
    if not isinstance(name, str):
        raise TypeError(f"backend name must be a str, got {type(name).__name__}")
    name = name.strip().lower()
    if name not in _loaded:
        _loaded[name] = _load(name)
    return _loaded[name]


def backends() -> list:
    """Names of the backends that can run on this machine, fastest CPU one first after numpy."""
    out = []
    for name in NAMES:
        try:
            _get(name)
        except BackendUnavailable:
            continue
        out.append(name)
    return out


# ---------------------------------------------------------------- selection

_default_name = os.environ.get("ZFRAW_BACKEND", "numpy") or "numpy"
_active: contextvars.ContextVar = contextvars.ContextVar("zfraw_backend", default=None)


def get_backend() -> Backend:
    """The active backend (``ZFRAW_BACKEND``, else ``numpy``, unless set)."""
    name = _active.get()
    return _get(name if name is not None else _default_name)


def set_backend(name: str) -> Backend:
    """Make ``name`` the active backend for this context; returns it.

    Raises :class:`BackendUnavailable` (with the install command) when it cannot run.
    """
    backend = _get(name)
    _active.set(backend.name)
    return backend


@contextlib.contextmanager
def use_backend(name: str):
    """``with use_backend("numba"): ...`` runs the block on that backend, then restores."""
    backend = _get(name)
    token = _active.set(backend.name)
    try:
        yield backend
    finally:
        _active.reset(token)


def kernel(name: str) -> Callable:
    """The active backend's kernel called ``name``."""
    return get_backend().kernel(name)


# ---------------------------------------------------------------- arrays

def get_array_module(*arrays):
    """``numpy`` or ``cupy``, whichever the arrays belong to (NumPy when none is a CuPy array)."""
    for a in arrays:
        mod = type(a).__module__
        if mod.startswith("cupy"):
            import cupy

            return cupy
    return np


def _map(obj, fn):
    """Apply ``fn`` to an array, or to every parameter of a layer / Sequential, or to a dict/list."""
    if hasattr(obj, "_apply"):
        obj._apply(fn)
        return obj
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return fn(obj)


def to_device(obj, backend: str = None):
    """Move an array (or a layer's parameters, or a dict/list of arrays) to ``backend``'s memory.

    With no ``backend`` the active one is used: NumPy arrays for ``numpy``/``numba``,
    CuPy arrays on the current GPU for ``cupy``/``cuda``.  Layers are moved in place
    and returned.
    """
    target = _get(backend) if backend is not None else get_backend()

    def move(a):
        if a is None or np.isscalar(a):
            return a
        if target.on_device:
            return target.xp.asarray(a)
        return to_host(a)

    return _map(obj, move)


def to_host(obj):
    """Copy a CuPy array (or every parameter of a layer, dict or list) back to NumPy."""

    def move(a):
        if a is None or np.isscalar(a):
            return a
        if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
            return a.get()
        return np.asarray(a)

    return _map(obj, move)


# ---------------------------------------------------------------- workspace

def workspace_from_env(raw=None) -> int:
    """The column-buffer budget in bytes that ``ZFRAW_WORKSPACE_MB`` asks for (256 MB when unset).

    ``raw`` is the variable's text (default: read from the environment).  Anything
    but a positive, finite number of megabytes is a ``ValueError`` that names the
    variable and says how to fix it.
    """
    if raw is None:
        raw = os.environ.get("ZFRAW_WORKSPACE_MB", "")
    if not raw.strip():
        return 256 * 2**20
    try:
        mb = float(raw)
    except ValueError:
        mb = float("nan")
    if not (mb > 0 and mb != float("inf")) or int(mb * 2**20) < 1:
        raise ValueError(f"the environment variable ZFRAW_WORKSPACE_MB must be a positive number of megabytes "
                         f"(e.g. 256), got {raw!r}; fix it or unset it")
    return int(mb * 2**20)


#: the budget set by :func:`set_workspace_bytes`; None: read ``ZFRAW_WORKSPACE_MB`` when first needed
#: (not at import, so that a bad value is an error of the call that needs it, not of ``import zfraw``)
_workspace: Optional[int] = None


def workspace_bytes() -> int:
    """Byte budget for the im2col column buffer (default 256 MB, ``ZFRAW_WORKSPACE_MB``).

    Convolutions build columns for as many images at a time as fit in it (at least
    one), so their peak memory stays bounded whatever the batch size.  A bad
    ``ZFRAW_WORKSPACE_MB`` raises ``ValueError`` here (see :func:`workspace_from_env`).
    """
    global _workspace
    if _workspace is None:
        _workspace = workspace_from_env()
    return _workspace


def set_workspace_bytes(nbytes: int) -> int:
    """Set the column-buffer budget in bytes; returns the previous one."""
    global _workspace
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 1:
        raise ValueError(f"nbytes must be a positive int, got {nbytes!r}")
    old = _workspace if _workspace is not None else workspace_from_env()
    _workspace = int(nbytes)
    return old
