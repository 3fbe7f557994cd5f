"""The ``cuda`` backend on a real GPU: the raw kernels of kernels/*.cu against
the NumPy reference (kernels/vectorized.py).

Everything here is marked ``gpu`` and skipped, with the reason, where CuPy or a
GPU is missing.  What the CPU run already shows (tests/test_cuda_sources.py:
the sources compile with nvcc, and the same kernel text run on the CPU matches
the reference) is not repeated at length; these tests check what only a
device can: NVRTC through ``cupy.RawModule``, the argument passing of CuPy,
parallel execution (atomics, grid-stride loops over a real grid), float64
instantiations at float64 accuracy, 64-bit indexing, and the compile cache.
"""
import contextlib

import numpy as np
import pytest

import zfraw
from zfraw import functional as F
from zfraw.kernels import cuda, vectorized

from conftest import AVAILABLE

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif("cuda" not in AVAILABLE, reason="backend 'cuda' cannot run here: needs CuPy and a CUDA GPU"),
]

DTYPES = [np.float32, np.float64]


@pytest.fixture
def cp():
    import cupy

    return cupy


@contextlib.contextmanager
def poisoned_allocations(cp):
    """Every CuPy allocation in the block starts as 0xFF bytes (NaN for floats,
    -1 for int64), so an output element a kernel forgets to write shows."""
    pool = cp.get_default_memory_pool()

    def allocate(size):
        mem = pool.malloc(size)
        if size:
            cp.cuda.runtime.memset(mem.ptr, 0xFF, size)
        return mem

    old = cp.cuda.get_allocator()
    cp.cuda.set_allocator(allocate)
    try:
        yield
    finally:
        cp.cuda.set_allocator(old)


def _run(cp, name, *args, **kwargs):
    """cuda kernel ``name`` on device copies of the array arguments, poisoned outputs; results on the host."""
    dev = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    with poisoned_allocations(cp):
        out = cuda.KERNELS[name](*dev, **kwargs)
        return tuple(o.get() for o in out) if isinstance(out, tuple) else out.get()


def _conv_geometry(rng, big=False):
    kh, kw = (int(v) for v in rng.integers(1, 6, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
    ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    top = 40 if big else 12
    h = int(rng.integers(max(1, kh - 2 * ph), top))
    w = int(rng.integers(max(1, kw - 2 * pw), top))
    return (int(rng.integers(1, 4)), int(rng.integers(1, 5)), h, w), (kh, kw, sh, sw, ph, pw)


def _pool_geometry(rng):
    kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
    ph, pw = int(rng.integers(0, kh // 2 + 1)), int(rng.integers(0, kw // 2 + 1))
    h = int(rng.integers(max(1, kh - 2 * ph), 20))
    w = int(rng.integers(max(1, kw - 2 * pw), 20))
    ceil = bool(rng.integers(2))
    out = (F.pool_output_size(h, kh, sh, ph, ceil), F.pool_output_size(w, kw, sw, pw, ceil))
    return (int(rng.integers(1, 4)), int(rng.integers(1, 5)), h, w), (kh, kw, sh, sw, ph, pw), out


def _rel_err(got, ref):
    return np.linalg.norm((got - ref).ravel()) / max(np.linalg.norm(ref.ravel()), 1e-300)


# ============================================================== each kernel against numpy

@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_col2im_match_numpy_bit_for_bit(cp, rng, dtype):
    for case in range(20):
        shape, g = _conv_geometry(rng, big=case < 3)
        x = rng.standard_normal(shape).astype(dtype)
        cols = _run(cp, "im2col", x, *g)
        np.testing.assert_array_equal(cols, vectorized.im2col(x, *g))
        d = rng.standard_normal(cols.shape).astype(dtype)
        np.testing.assert_array_equal(_run(cp, "col2im", d, shape, *g), vectorized.col2im(d, shape, *g))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_matches_numpy_with_ties_nan_and_minus_inf(cp, rng, dtype):
    for _ in range(20):
        shape, g, out = _pool_geometry(rng)
        x = rng.integers(-3, 4, size=shape).astype(dtype)  # many ties
        x[rng.random(shape) < 0.1] = -np.inf
        x[rng.random(shape) < 0.03] = np.nan
        y, s = _run(cp, "max_pool2d", x, *g, *out)
        y_ref, s_ref = vectorized.max_pool2d(x, *g, *out)
        assert s.dtype == np.int64 and y.dtype == dtype
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(s, s_ref)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unpool_gather_on_overlapping_ceil_mode_pools(cp, rng, dtype):
    """Switches from a real max_pool2d with ZFNet's overlapping 3x3/2 ceil_mode
    windows (110 -> 55) on tie-heavy input, so switches collide."""
    x = rng.integers(-2, 3, size=(2, 3, 110, 110)).astype(dtype)
    with zfraw.use_backend("cuda"):
        y_dev, s_dev = F.max_pool2d(cp.asarray(x), 3, 2, ceil_mode=True)
    assert y_dev.shape == (2, 3, 55, 55)
    y_ref, s_ref = vectorized.max_pool2d(x, 3, 3, 2, 2, 0, 0, 55, 55)
    np.testing.assert_array_equal(s_dev.get(), s_ref)
    assert len(np.unique(s_ref[0, 0])) < s_ref[0, 0].size  # the test needs collisions

    dy = rng.standard_normal(s_ref.shape).astype(dtype)
    ref = vectorized.max_unpool2d(dy, s_ref, 110, 110)
    gathered = _run(cp, "max_unpool2d", dy, s_ref, 110, 110, (3, 3, 2, 2, 0, 0))
    again = _run(cp, "max_unpool2d", dy, s_ref, 110, 110, (3, 3, 2, 2, 0, 0))
    scattered = _run(cp, "max_unpool2d", dy, s_ref, 110, 110, None)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(gathered, ref, **tol)
    np.testing.assert_allclose(scattered, ref, **tol)
    np.testing.assert_array_equal(gathered, again)  # the gather is deterministic
    if dtype == np.float64:  # same order of addition as numpy's bincount
        np.testing.assert_array_equal(gathered, ref)

    with zfraw.use_backend("cuda"):  # the public op passes the window through
        dx = F.max_unpool2d(cp.asarray(dy), s_dev, (110, 110), size=3, stride=2)
    np.testing.assert_array_equal(dx.get(), gathered)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unpool_random_geometries_and_stray_switches(cp, rng, dtype):
    for case in range(15):
        shape, g, out = _pool_geometry(rng)
        h, w = shape[2:]
        y = rng.standard_normal(shape[:2] + out).astype(dtype)
        if case % 3 == 0:  # switches that need not lie in their window: the second pass adds them
            s = rng.integers(0, h * w, size=y.shape)
        else:
            _, s = vectorized.max_pool2d(rng.integers(-2, 3, size=shape).astype(dtype), *g, *out)
        ref = vectorized.max_unpool2d(y, s, h, w)
        tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(_run(cp, "max_unpool2d", y, s, h, w, g), ref, **tol)
        np.testing.assert_allclose(_run(cp, "max_unpool2d", y, s, h, w, None), ref, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unpool_scatter_is_atomic(cp, dtype):
    """4096 values on one pixel: a non-atomic add would lose some."""
    y = np.ones((2, 3, 64, 64), dtype)
    s = np.zeros(y.shape, np.int64)
    x = _run(cp, "max_unpool2d", y, s, 8, 8, None)
    assert (x[:, :, 0, 0] == 64 * 64).all() and (x.reshape(6, -1)[:, 1:] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_lrn_forward_and_backward_match_numpy(cp, rng, dtype):
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for size in (1, 2, 3, 4, 5, 7):
        shape = (int(rng.integers(1, 4)), int(rng.integers(1, 12)), int(rng.integers(1, 9)), int(rng.integers(1, 9)))
        alpha, beta, k = float(rng.uniform(1e-4, 2.0)), float(rng.uniform(0.1, 1.5)), float(rng.uniform(0.5, 3.0))
        x = (rng.standard_normal(shape) * 2).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
        y = _run(cp, "lrn", x, size, alpha, beta, k)
        dx = _run(cp, "lrn_backward", dy, x, size, alpha, beta, k)
        assert y.dtype == dx.dtype == dtype
        assert _rel_err(y, vectorized.lrn(x64, size, alpha, beta, k)) < tol
        assert _rel_err(dx, vectorized.lrn_backward(dy64, x64, size, alpha, beta, k)) < tol


# ============================================================== float64, 64-bit indexing

def test_double_instantiations_give_float64_accuracy(cp, rng):
    """Values that float32 cannot hold: a kernel that truncated to float would be off by ~1e-8."""
    x = 1.0 + rng.random((2, 6, 7, 9)) * 1e-9 + rng.standard_normal((2, 6, 7, 9))
    dy = rng.standard_normal(x.shape)
    assert _rel_err(_run(cp, "lrn", x, 5, 1e-3, 0.75, 2.0), vectorized.lrn(x, 5, 1e-3, 0.75, 2.0)) < 1e-13
    assert _rel_err(_run(cp, "lrn_backward", dy, x, 5, 1e-3, 0.75, 2.0),
                    vectorized.lrn_backward(dy, x, 5, 1e-3, 0.75, 2.0)) < 1e-13
    np.testing.assert_array_equal(_run(cp, "im2col", x, 3, 3, 1, 1, 1, 1), vectorized.im2col(x, 3, 3, 1, 1, 1, 1))
    y, s = _run(cp, "max_pool2d", x, 3, 3, 2, 2, 1, 1, 4, 5)
    np.testing.assert_array_equal(y, vectorized.max_pool2d(x, 3, 3, 2, 2, 1, 1, 4, 5)[0])
    cols = rng.standard_normal((2, 6 * 9, 7 * 9))
    back = _run(cp, "col2im", cols, x.shape, 3, 3, 1, 1, 1, 1)
    np.testing.assert_array_equal(back, vectorized.col2im(cols, x.shape, 3, 3, 1, 1, 1, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_long_instantiations_on_small_arrays(cp, rng, dtype, monkeypatch):
    """The 64-bit index path (used for arrays of 2**31 elements or more) gives the same numbers."""
    launched = []
    real = cuda._launcher
    monkeypatch.setattr(cuda, "_launcher", lambda *a: (launched.append(a[2]), real(*a)))
    shape, g = _conv_geometry(rng)
    x = rng.standard_normal(shape).astype(dtype)
    pshape, pg, pout = _pool_geometry(rng)
    px = rng.standard_normal(pshape).astype(dtype)
    with cuda._index64():
        cols = _run(cp, "im2col", x, *g)
        back = _run(cp, "col2im", cols, shape, *g)
        y, s = _run(cp, "max_pool2d", px, *pg, *pout)
        up = _run(cp, "max_unpool2d", y, s, pshape[2], pshape[3], pg)
        norm = _run(cp, "lrn", x, 5, 1e-2, 0.75, 2.0)
        dnorm = _run(cp, "lrn_backward", x, x, 5, 1e-2, 0.75, 2.0)
    assert launched and all(e.endswith("long long>") for e in launched)
    np.testing.assert_array_equal(cols, vectorized.im2col(x, *g))
    np.testing.assert_array_equal(back, vectorized.col2im(cols, shape, *g))
    np.testing.assert_array_equal(y, vectorized.max_pool2d(px, *pg, *pout)[0])
    np.testing.assert_allclose(up, vectorized.max_unpool2d(y, s, *pshape[2:]), rtol=1e-6, atol=1e-6)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert _rel_err(norm, vectorized.lrn(x, 5, 1e-2, 0.75, 2.0)) < tol
    assert _rel_err(dnorm, vectorized.lrn_backward(x, x, 5, 1e-2, 0.75, 2.0)) < tol


@pytest.mark.slow
def test_lrn_beyond_two_to_the_31_elements(cp, rng, monkeypatch):
    """An array of more than 2**31 elements (about 17 GB on the device, x and y):
    the long long path, checked on the last pixel columns."""
    shape = (1, 2, 32768, 32769)
    assert np.prod(shape) > 2**31
    free, _ = cp.cuda.runtime.memGetInfo()
    if free < 2.2 * 4 * np.prod(shape):
        pytest.skip(f"needs about {2.2 * 4 * np.prod(shape) / 1e9:.0f} GB of free GPU memory, {free / 1e9:.0f} GB free")
    launched = []
    real = cuda._launcher
    monkeypatch.setattr(cuda, "_launcher", lambda *a: (launched.append(a[2]), real(*a)))
    x = cp.random.default_rng(7).standard_normal(shape, dtype=np.float32)
    y = cuda.lrn(x, 2, 1e-1, 0.75, 2.0)
    assert launched == ["lrn_kernel<float, long long>"]
    tail = x[:, :, -1:, -1000:].get().astype(np.float64)
    np.testing.assert_allclose(y[:, :, -1:, -1000:].get(), vectorized.lrn(tail, 2, 1e-1, 0.75, 2.0), rtol=1e-5)
    del x, y
    cp.get_default_memory_pool().free_all_blocks()


# ============================================================== compiling

def test_kernels_are_compiled_once_per_device_source_and_dtype(cp, rng):
    x32 = cp.asarray(rng.standard_normal((1, 2, 5, 5)).astype(np.float32))
    cuda.im2col(x32, 2, 2, 1, 1, 0, 0)
    first = cuda.cache_info()
    device = cp.cuda.Device().id
    assert (device, "im2col.cu", "float32") in first["modules"]
    for _ in range(3):
        cuda.im2col(x32, 2, 2, 1, 1, 0, 0)
        cuda.col2im(cuda.im2col(x32, 3, 3, 1, 1, 1, 1), x32.shape, 3, 3, 1, 1, 1, 1)
    assert cuda.cache_info() == first  # same module for both kernels, no recompiles

    cuda.im2col(x32.astype(np.float64), 2, 2, 1, 1, 0, 0)
    after = cuda.cache_info()
    assert (device, "im2col.cu", "float64") in after["modules"]
    assert after["compiles"] - first["compiles"] <= 1
    cuda.im2col(x32.astype(np.float64), 2, 2, 1, 1, 0, 0)
    assert cuda.cache_info() == after
    assert len(set(after["modules"])) == len(after["modules"]) == after["compiles"]


@pytest.mark.skipif("cuda" not in AVAILABLE or __import__("cupy").cuda.runtime.getDeviceCount() < 2,
                    reason="needs the cuda backend and two GPUs")
def test_arrays_on_a_second_device(cp, rng):
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    with cp.cuda.Device(1):
        xd = cp.asarray(x)
    cols = cuda.im2col(xd, 3, 3, 2, 2, 1, 1)  # current device is 0; the kernel runs on 1
    assert cols.device.id == 1
    np.testing.assert_array_equal(cols.get(), vectorized.im2col(x, 3, 3, 2, 2, 1, 1))
    assert (1, "im2col.cu", "float32") in cuda.cache_info()["modules"]
