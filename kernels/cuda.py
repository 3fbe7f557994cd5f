"""The ``cuda`` backend's hot paths: raw CUDA C kernels launched through CuPy.

The kernels live in ``*.cu`` files beside this module (installed with the
package as ``zfraw.kernels``), with the helpers of ``common.cuh`` pasted in
front of each.  Every kernel is a template on the element type ``T`` (float or
double) and the index type ``I`` (``int`` when every array of a call has fewer
than 2**31 elements, ``long long`` otherwise: 32-bit division is several times
cheaper on a GPU); loop counters over a whole array are always 64-bit.  A
source is compiled once per process, device and dtype by ``cupy.RawModule``
with the instantiations named in :func:`name_expressions`, and memoized.

Each Python function here has the signature of its reference in
:mod:`zfraw.kernels.vectorized` (see :mod:`zfraw.kernels` for the semantics)
and returns the same numbers: bit for bit for ``im2col``, ``col2im`` (the taps
are summed in the reference's order) and ``max_pool2d``; within round-off for
the unpooling sums and the local response norm (CUDA's ``pow``).  One caveat:
CuPy compiles every module with ``-ftz=true`` (appended after our options, so
it cannot be turned off here), which flushes float32 *subnormal* numbers to
zero in arithmetic and comparisons; results differ from NumPy only where
values below about 1.2e-38 occur.

CuPy is imported lazily, so this module (its :data:`SOURCES` and
:func:`name_expressions`) can be imported, and its sources compiled by the
tests with ``nvcc``, on a machine without CuPy or a GPU.
"""
from __future__ import annotations

import contextlib
import functools
from importlib import resources
from typing import Dict, List, Tuple

import numpy as np

from zfraw.kernels import vectorized

__all__ = [
    "KERNELS", "SOURCES", "HEADER", "OPTIONS", "KERNEL_FUNCTIONS",
    "read_source", "source_code", "name_expression", "name_expressions", "cache_info",
    "im2col", "col2im", "im2col_tile", "col2im_tile", "max_pool2d", "max_unpool2d", "lrn", "lrn_backward",
]

#: the kernel sources, each compiled as one module (``HEADER`` pasted in front).
SOURCES = ("im2col.cu", "pool.cu", "lrn.cu")
#: helpers shared by every source.
HEADER = "common.cuh"
#: the ``__global__`` function templates defined by each source.
KERNEL_FUNCTIONS: Dict[str, Tuple[str, ...]] = {
    "im2col.cu": ("im2col_kernel", "col2im_kernel"),
    "pool.cu": ("max_pool2d_kernel", "max_unpool2d_gather_kernel", "max_unpool2d_scatter_kernel"),
    "lrn.cu": ("lrn_kernel", "lrn_backward_inner_kernel", "lrn_backward_kernel"),
}
#: compiler options, for NVRTC (``cupy.RawModule``) and for ``nvcc`` in the tests.
OPTIONS = ("-std=c++17",)

#: threads per block; the grid is ceil(total / THREADS) blocks, at most MAX_BLOCKS
#: (each kernel is a grid-stride loop, so any grid covers any size).
THREADS = 256
MAX_BLOCKS = 65536

_ELEMENT_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_INDEX_TYPES = {np.dtype(np.int32): "int", np.dtype(np.int64): "long long"}
_INT32_LIMIT = 2**31 - 1


# ================================================================ sources

def read_source(name: str) -> str:
    """The text of one kernel file (``*.cu`` / ``*.cuh``), read from the installed package."""
    if name not in SOURCES and name != HEADER:
        raise ValueError(f"name must be one of {SOURCES + (HEADER,)}, got {name!r}")
    return resources.files("zfraw.kernels").joinpath(name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def source_code(name: str) -> str:
    """The code compiled for ``name``: ``common.cuh`` then the ``.cu`` file, with
    ``#line`` markers so that compiler messages name the right file and line."""
    if name not in SOURCES:
        raise ValueError(f"name must be one of {SOURCES}, got {name!r}")
    return (f'#line 1 "{HEADER}"\n{read_source(HEADER)}\n'
            f'#line 1 "{name}"\n{read_source(name)}')


def name_expression(kernel: str, dtype, index_dtype) -> str:
    """The C++ name of one instantiation, e.g. ``im2col_kernel<float, int>``."""
    try:
        t = _ELEMENT_TYPES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}") from None
    try:
        i = _INDEX_TYPES[np.dtype(index_dtype)]
    except KeyError:
        raise TypeError(f"index_dtype must be int32 or int64, got {np.dtype(index_dtype)}") from None
    return f"{kernel}<{t}, {i}>"


def name_expressions(name: str, dtype=None) -> List[str]:
    """Every template instantiation the Python side launches from source ``name``:
    each kernel for ``dtype`` (both float32 and float64 when None) and both index types."""
    if name not in KERNEL_FUNCTIONS:
        raise ValueError(f"name must be one of {SOURCES}, got {name!r}")
    dtypes = list(_ELEMENT_TYPES) if dtype is None else [np.dtype(dtype)]
    return [name_expression(k, d, i)
            for d in dtypes for k in KERNEL_FUNCTIONS[name] for i in _INDEX_TYPES]


# ================================================================ compiling and launching

_modules: Dict[tuple, object] = {}
_functions: Dict[tuple, object] = {}
_compiles = 0


def cache_info() -> dict:
    """What has been compiled in this process: ``compiles`` (how many ``RawModule``
    were built) and ``modules`` (their keys: device id, source, dtype)."""
    return {"compiles": _compiles, "modules": sorted(_modules)}


def _module(device_id: int, name: str, dtype: np.dtype):
    """The compiled module of source ``name`` for ``dtype`` on a device (memoized)."""
    global _compiles
    key = (device_id, name, dtype.name)
    if key not in _modules:
        import cupy

        _modules[key] = cupy.RawModule(
            code=source_code(name), options=OPTIONS, name_expressions=name_expressions(name, dtype)
        )
        _compiles += 1
    return _modules[key]


def _cupy_launch(source: str, dtype: np.dtype, expr: str, blocks: int, threads: int, args: tuple):
    """Run kernel ``expr`` of ``source`` on the device that holds the array arguments."""
    import cupy

    device = next(a.device for a in args if isinstance(a, cupy.ndarray))
    with device:
        key = (device.id, expr)
        if key not in _functions:
            _functions[key] = _module(device.id, source, dtype).get_function(expr)
        _functions[key]((blocks,), (threads,), args)


_launcher = _cupy_launch
_force_index64 = False


@contextlib.contextmanager
def _use_launcher(launcher):
    """For tests: run the Python side through another launcher with ``_cupy_launch``'s
    signature (tests/test_cuda_sources.py runs the kernels on the CPU this way)."""
    global _launcher
    old, _launcher = _launcher, launcher
    try:
        yield
    finally:
        _launcher = old


@contextlib.contextmanager
def _index64():
    """For tests: use the ``long long`` instantiations even for small arrays."""
    global _force_index64
    old, _force_index64 = _force_index64, True
    try:
        yield
    finally:
        _force_index64 = old


def _index_dtype(*sizes: int) -> np.dtype:
    """int32 when every array of the call (given by its size) fits 32-bit indexing."""
    if _force_index64 or max(sizes) > _INT32_LIMIT:
        return np.dtype(np.int64)
    return np.dtype(np.int32)


def _launch(source: str, kernel: str, total: int, arrays: tuple, ints: tuple,
            index_dtype: np.dtype, reals: tuple = (), flags: tuple = ()):
    """Launch ``kernel<T, I>`` over ``total`` threads' worth of work.

    Arguments reach the kernel in the order ``arrays``, ``total`` (long long),
    ``ints`` (as ``I``), ``reals`` (as ``T``), ``flags`` (as int): every scalar
    with an explicit width, since CuPy would pass a bare Python int as long long
    and a float as double.
    """
    if total == 0:
        return
    dtype = arrays[0].dtype
    args = (
        tuple(arrays)
        + (np.int64(total),)
        + tuple(index_dtype.type(v) for v in ints)
        + tuple(dtype.type(v) for v in reals)
        + tuple(np.int32(v) for v in flags)
    )
    blocks = max(1, min(-(-total // THREADS), MAX_BLOCKS))
    _launcher(source, dtype, name_expression(kernel, dtype, index_dtype), blocks, THREADS, args)


# ================================================================ arrays

def _xp(a):
    """cupy for a CuPy array, else numpy (the CPU emulation in the tests)."""
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    return np


def _empty(xp, shape, dtype):
    """An uninitialised output; every element is written by the kernel (the tests
    replace this with a NaN-filled array to prove it)."""
    return xp.empty(shape, dtype=dtype)


def _float_input(name, a, ndim=4):
    if a.dtype not in _ELEMENT_TYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(a.shape)}")
    return _xp(a).ascontiguousarray(a)


# ================================================================ kernels

def _unfold(x, kh, kw, sh, sw, ph, pw, tile_layout):
    x = _float_input("x", x)
    xp = _xp(x)
    n, c, h, w = x.shape
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    shape = (c * kh * kw, n * ho * wo) if tile_layout else (n, c * kh * kw, ho * wo)
    cols = _empty(xp, shape, x.dtype)
    it = _index_dtype(x.size, cols.size)
    _launch("im2col.cu", "im2col_kernel", cols.size, (x, cols),
            (n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo), it, flags=(int(tile_layout),))
    return cols


def im2col(x, kh, kw, sh, sw, ph, pw):
    """x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo), one thread per column entry."""
    return _unfold(x, kh, kw, sh, sw, ph, pw, False)


def im2col_tile(x, kh, kw, sh, sw, ph, pw):
    """x (N, C, H, W) -> cols (C*kh*kw, N*Ho*Wo), the tile layout (one GEMM per group)."""
    return _unfold(x, kh, kw, sh, sw, ph, pw, True)


def _fold(cols, x_shape, kh, kw, sh, sw, ph, pw, tile_layout):
    cols = _float_input("cols", cols, ndim=2 if tile_layout else 3)
    xp = _xp(cols)
    n, c, h, w = (int(s) for s in x_shape)
    ho = (h + 2 * ph - kh) // sh + 1
    wo = (w + 2 * pw - kw) // sw + 1
    shape = (c * kh * kw, n * ho * wo) if tile_layout else (n, c * kh * kw, ho * wo)
    if cols.shape != shape:
        raise ValueError(f"cols must have shape {shape}, got {tuple(cols.shape)}")
    x = _empty(xp, (n, c, h, w), cols.dtype)
    it = _index_dtype(x.size, cols.size)
    _launch("im2col.cu", "col2im_kernel", x.size, (cols, x),
            (n, c, h, w, kh, kw, sh, sw, ph, pw, ho, wo), it, flags=(int(tile_layout),))
    return x


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col` as a gather: one thread per pixel of x (N, C, H, W)
    sums its taps in the reference's order (deterministic, no atomics)."""
    return _fold(cols, x_shape, kh, kw, sh, sw, ph, pw, False)


def col2im_tile(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col_tile`: cols (C*kh*kw, N*Ho*Wo) -> x (N, C, H, W), the same gather."""
    return _fold(cols, x_shape, kh, kw, sh, sw, ph, pw, True)


def max_pool2d(x, kh, kw, sh, sw, ph, pw, Ho, Wo):
    """x (N, C, H, W) -> (y, switches), both (N, C, Ho, Wo), switches int64 flat
    indices h*W + w; one thread per pooled value, PyTorch's rules."""
    x = _float_input("x", x)
    xp = _xp(x)
    n, c, h, w = x.shape
    y = _empty(xp, (n, c, Ho, Wo), x.dtype)
    switches = _empty(xp, (n, c, Ho, Wo), np.int64)
    it = _index_dtype(x.size, y.size)
    _launch("pool.cu", "max_pool2d_kernel", y.size, (x, y, switches),
            (h, w, kh, kw, sh, sw, ph, pw, Ho, Wo), it)
    return y, switches


def max_unpool2d(y, switches, h, w, window=None):
    """x (N, C, H, W) with ``x[n, c].flat[switches] += y`` (sums on collision).

    With ``window = (kh, kw, sh, sw, ph, pw)`` (the geometry that made the
    switches) a deterministic gather: one thread per pixel of x visits the pooled
    windows that contain it and sums the values whose switch names it; a second
    pass adds, with atomics, any switch that lies outside its own window (none,
    when the switches came from ``max_pool2d`` with that window).  With
    ``window=None`` a scatter with ``atomicAdd`` into zeros, whose summation
    order on collision is not deterministic (float sums may differ in the last
    bits between runs).
    """
    y = _float_input("y", y)
    xp = _xp(y)
    switches = xp.ascontiguousarray(switches, dtype=np.int64)
    if switches.shape != y.shape:
        raise ValueError(f"switches must have y's shape {tuple(y.shape)}, got {tuple(switches.shape)}")
    n, c, ho, wo = y.shape
    h, w = int(h), int(w)
    it = _index_dtype(y.size, n * c * h * w)
    if window is None:
        x = xp.zeros((n, c, h, w), dtype=y.dtype)
        geometry = (h, w, 1, 1, 1, 1, 0, 0, ho, wo)  # unused when strays_only = 0
        _launch("pool.cu", "max_unpool2d_scatter_kernel", y.size, (y, switches, x),
                geometry, it, flags=(0,))
        return x
    kh, kw, sh, sw, ph, pw = (int(v) for v in window)
    geometry = (h, w, kh, kw, sh, sw, ph, pw, ho, wo)
    x = _empty(xp, (n, c, h, w), y.dtype)
    _launch("pool.cu", "max_unpool2d_gather_kernel", x.size, (y, switches, x), geometry, it)
    _launch("pool.cu", "max_unpool2d_scatter_kernel", y.size, (y, switches, x),
            geometry, it, flags=(1,))
    return x


def _lrn_window(size):
    """(before, after): PyTorch's channel window [c - size//2, c + (size-1)//2]."""
    return size // 2, (size - 1) // 2


def lrn(x, size, alpha, beta, k):
    """b_c = a_c * (k + alpha/size * sum_window a_j^2) ** -beta, one thread per element."""
    x = _float_input("x", x)
    xp = _xp(x)
    n, c, h, w = x.shape
    before, after = _lrn_window(size)
    y = _empty(xp, x.shape, x.dtype)
    _launch("lrn.cu", "lrn_kernel", x.size, (x, y), (c, h * w, before, after),
            _index_dtype(x.size), reals=(alpha / size, beta, k))
    return y


def lrn_backward(dy, x, size, alpha, beta, k):
    """Gradient of :func:`lrn` in two passes (see lrn.cu): scale^-beta and the
    per-channel terms, then the sum over the channels whose window holds c."""
    dy = _float_input("dy", dy)
    x = _float_input("x", x)
    if dy.shape != x.shape or dy.dtype != x.dtype:
        raise ValueError(f"dy {dy.dtype}{tuple(dy.shape)} must match x {x.dtype}{tuple(x.shape)}")
    xp = _xp(x)
    n, c, h, w = x.shape
    before, after = _lrn_window(size)
    it = _index_dtype(x.size)
    scale_pow = _empty(xp, x.shape, x.dtype)
    inner = _empty(xp, x.shape, x.dtype)
    dx = _empty(xp, x.shape, x.dtype)
    geometry = (c, h * w, before, after)
    _launch("lrn.cu", "lrn_backward_inner_kernel", x.size, (dy, x, scale_pow, inner),
            geometry, it, reals=(alpha / size, beta, k))
    _launch("lrn.cu", "lrn_backward_kernel", x.size, (dy, x, scale_pow, inner, dx),
            geometry, it, reals=(2.0 * alpha * beta / size,))
    return dx


#: the kernel table the ``cuda`` backend installs (zfraw/backend.py).
KERNELS = {
    "im2col": im2col,
    "col2im": col2im,
    "im2col_tile": im2col_tile,
    "col2im_tile": col2im_tile,
    "relu": vectorized.relu,  # one CuPy elementwise kernel each already
    "relu_backward": vectorized.relu_backward,
    "max_pool2d": max_pool2d,
    "max_unpool2d": max_unpool2d,
    "lrn": lrn,
    "lrn_backward": lrn_backward,
    "sgd_update": vectorized.sgd_update,  # memory-bound CuPy ufuncs, a small share of a GPU step
}
