"""The raw CUDA backend's sources, checked without a GPU.

* every ``.cu`` file compiles with ``nvcc`` for sm_90, with every template
  instantiation that kernels/cuda.py launches, warnings as errors (skipped
  where there is no nvcc);
* the kernels *run* on the CPU (tests/emulated_cuda.py): the exact kernel
  text is compiled by the host C++ compiler against a small shim and launched
  through the real Python wrappers of kernels/cuda.py with NumPy arrays; every
  argument's type and width is checked against the kernel's parameter list,
  every buffer guarded against out-of-bounds writes, and the outputs are
  poisoned with NaN before a kernel runs; results are compared with
  kernels/vectorized.py.
  (Skipped where there is no C++ compiler.)  What this cannot show: races,
  and NVRTC/device specifics; tests/test_gpu.py checks those on a GPU.
"""
import contextlib
import ctypes
import re
import shutil
import subprocess
import sys
from importlib import resources

import numpy as np
import pytest

from zfraw import backend
from zfraw import functional as F
from zfraw.kernels import cuda, vectorized

from emulated_cuda import CXX, emulator_in

NVCC = shutil.which("nvcc")


# ============================================================== the package

def test_every_kernel_name_has_a_cuda_kernel():
    assert set(cuda.KERNELS) == set(backend.KERNEL_NAMES)
    assert all(callable(f) for f in cuda.KERNELS.values())


def test_sources_are_found_through_the_installed_package():
    root = resources.files("zfraw.kernels")
    for name in cuda.SOURCES + (cuda.HEADER,):
        assert root.joinpath(name).is_file(), f"{name} is not installed with zfraw.kernels"
        assert cuda.read_source(name) == root.joinpath(name).read_text(encoding="utf-8")


def test_every_global_function_is_instantiated():
    """The kernels a source defines are exactly those the Python side instantiates."""
    for name in cuda.SOURCES:
        defined = re.findall(r"__global__\s+void\s+(\w+)\s*\(", cuda.read_source(name))
        assert sorted(defined) == sorted(cuda.KERNEL_FUNCTIONS[name]), name
        exprs = cuda.name_expressions(name)
        assert len(exprs) == len(defined) * 4  # float, double x int, long long
        for kernel in defined:
            for t in ("float", "double"):
                for i in ("int", "long long"):
                    assert f"{kernel}<{t}, {i}>" in exprs
        assert cuda.name_expressions(name, np.float32) == [e for e in exprs if "<float," in e]
    with pytest.raises(TypeError, match="dtype"):
        cuda.name_expressions("lrn.cu", np.int32)
    with pytest.raises(ValueError, match="name"):
        cuda.source_code("nothing.cu")


def test_no_hard_coded_float_in_templated_code():
    """Templated code names its element type T: a stray ``float`` would truncate doubles."""
    for name in cuda.SOURCES:
        code = re.sub(r"//[^\n]*", "", cuda.read_source(name))
        assert not re.search(r"\b(float|double)\b", code), f"{name} hard-codes an element type"
        assert "extern \"C\"" not in code
        assert not re.search(r"\bint\s+\w+\s*=\s*blockIdx", code)  # 32-bit flat index


def test_importing_cuda_does_not_import_cupy():
    code = "import sys, zfraw.kernels.cuda as c; assert 'cupy' not in sys.modules; print(len(c.SOURCES))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(len(cuda.SOURCES))


def test_non_float_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        cuda.im2col(np.zeros((1, 1, 3, 3), np.int32), 2, 2, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        cuda.lrn(np.ones((3, 3), np.float32), 5, 1e-4, 0.75, 2.0)


# ============================================================== nvcc

def _mangled_prefix(expr):
    """``im2col_kernel<float, long long>`` -> ``_Z13im2col_kernelIfxE`` (Itanium ABI)."""
    m = re.fullmatch(r"(\w+)<(float|double), (int|long long)>", expr)
    kernel, t, i = m.groups()
    return f"_Z{len(kernel)}{kernel}I{t[0]}{'i' if i == 'int' else 'x'}E".encode()


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on the PATH (install the CUDA toolkit to compile the kernels)")
@pytest.mark.parametrize("name", cuda.SOURCES)
def test_source_compiles_with_nvcc(name, tmp_path):
    """One nvcc call per source: all its float/double x int/long long instantiations,
    compiled as CuPy compiles them (cuda.OPTIONS, -ftz=true), warnings as errors."""
    exprs = cuda.name_expressions(name)
    (tmp_path / name).write_text(cuda.source_code(name))
    # a template that is never instantiated compiles to nothing: take every address
    wrapper = [f'#include "{name}"', "void* zf_instances[] = {"]
    wrapper += [f"    (void*)&{e}," for e in exprs] + ["};", ""]
    (tmp_path / "instances.cu").write_text("\n".join(wrapper))
    cubin = tmp_path / "out.cubin"
    cmd = [
        NVCC, "-arch=sm_90", "-cubin", *cuda.OPTIONS, "-ftz=true",
        "-Werror", "all-warnings",
        "-Xptxas", "--warning-as-error,--warn-on-spills,--warn-on-local-memory-usage",
        "-o", str(cubin), "instances.cu",
    ]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"nvcc failed on {name}:\n{out.stdout}\n{out.stderr}"
    assert not re.search(r"warning", out.stdout + out.stderr, re.I), out.stdout + out.stderr
    binary = cubin.read_bytes()
    for e in exprs:
        assert _mangled_prefix(e) in binary, f"{e} is missing from the cubin of {name}"


# ============================================================== the CPU emulation

@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    if CXX is None:
        pytest.skip("no C++ compiler (g++ or clang++) to run the CUDA kernels on the CPU")
    return emulator_in(tmp_path_factory.mktemp("emulate"))


def _poisoned_empty(xp, shape, dtype):
    out = np.empty(shape, dtype)
    out.view(np.uint8)[...] = 0xFF  # NaN for floats, -1 for the int64 switches
    return out


@pytest.fixture
def emulated(emulator, monkeypatch):
    """Run kernels/cuda.py's wrappers on the CPU, outputs poisoned, few blocks
    (so every grid-stride loop goes round more than once)."""
    monkeypatch.setattr(cuda, "_empty", _poisoned_empty)
    monkeypatch.setattr(cuda, "MAX_BLOCKS", 3)
    emulator.calls.clear()
    with cuda._use_launcher(emulator):
        yield emulator


DTYPES = [np.float32, np.float64]
INDEX = ["int32", "int64"]


def _index_mode(index):
    return cuda._index64() if index == "int64" else contextlib.nullcontext()


def _check_index_type(emulator, index):
    suffix = "long long>" if index == "int64" else "int>"
    assert emulator.calls and all(e.endswith(suffix) for e, _ in emulator.calls)


def _conv_geometry(rng):
    kh, kw = rng.integers(1, 5, size=2)
    sh, sw = rng.integers(1, 4, size=2)
    ph, pw = rng.integers(0, kh), rng.integers(0, kw)
    h = int(rng.integers(max(1, kh - 2 * ph), 10))
    w = int(rng.integers(max(1, kw - 2 * pw), 10))
    n, c = rng.integers(1, 3), rng.integers(1, 4)
    return (int(n), int(c), h, w), tuple(int(v) for v in (kh, kw, sh, sw, ph, pw))


@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_im2col_col2im_match_reference_bit_for_bit(emulated, rng, dtype, index):
    for _ in range(25):
        shape, g = _conv_geometry(rng)
        x = rng.standard_normal(shape).astype(dtype)
        with _index_mode(index):
            cols = cuda.im2col(x, *g)
        np.testing.assert_array_equal(cols, vectorized.im2col(x, *g))
        d = rng.standard_normal(cols.shape).astype(dtype)
        with _index_mode(index):
            back = cuda.col2im(d, shape, *g)
        # the gather adds the taps in the reference's order: the same bits
        np.testing.assert_array_equal(back, vectorized.col2im(d, shape, *g))
        # the tile layout (C*kh*kw, N*Ho*Wo): the same values, the image axis beside the positions
        with _index_mode(index):
            tile = cuda.im2col_tile(x, *g)
            tile_back = cuda.col2im_tile(d.transpose(1, 0, 2).reshape(tile.shape), shape, *g)
        np.testing.assert_array_equal(tile, vectorized.im2col_tile(x, *g))
        np.testing.assert_array_equal(tile, cols.transpose(1, 0, 2).reshape(tile.shape))
        np.testing.assert_array_equal(tile_back, back)
    _check_index_type(emulated, index)


def _pool_geometry(rng):
    """A random pooling geometry with per-side pads (top, bottom, left, right); the
    kernels take the top and left pads, Ho and Wo imply the others.  In ceil mode
    the window may be larger than the padded input (as PyTorch allows)."""
    while True:
        kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
        sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
        top, bottom = (int(v) for v in rng.integers(0, kh // 2 + 1, size=2))
        left, right = (int(v) for v in rng.integers(0, kw // 2 + 1, size=2))
        h, w = (int(v) for v in rng.integers(1, 11, size=2))
        ceil = bool(rng.integers(2))
        try:
            ho = F.pool_output_size(h, kh, sh, (top, bottom), ceil)
            wo = F.pool_output_size(w, kw, sw, (left, right), ceil)
        except ValueError:  # no window fits
            continue
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), h, w)
        return shape, (kh, kw, sh, sw, top, left), (ho, wo)


def _pool_input(rng, shape, dtype):
    """Few distinct values (many ties), some -inf and the odd NaN."""
    x = rng.integers(-3, 4, size=shape).astype(dtype)
    x[rng.random(shape) < 0.1] = -np.inf
    x[rng.random(shape) < 0.03] = np.nan
    return x


@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_max_pool2d_matches_reference(emulated, rng, dtype, index):
    for _ in range(30):
        shape, g, out = _pool_geometry(rng)
        x = _pool_input(rng, shape, dtype)
        with _index_mode(index):
            y, s = cuda.max_pool2d(x, *g, *out)
        y_ref, s_ref = vectorized.max_pool2d(x, *g, *out)
        assert s.dtype == np.int64 and y.dtype == x.dtype
        np.testing.assert_array_equal(y, y_ref)  # NaN where the reference has NaN
        np.testing.assert_array_equal(s, s_ref)
    _check_index_type(emulated, index)


def test_emulated_max_pool2d_all_minus_inf_window_switches_to_first_pixel(emulated):
    x = np.full((1, 1, 5, 5), -np.inf, np.float32)
    g = (3, 3, 2, 2, 1, 1)
    ho = F.pool_output_size(5, 3, 2, 1, True)
    y, s = cuda.max_pool2d(x, *g, ho, ho)
    y_ref, s_ref = vectorized.max_pool2d(x, *g, ho, ho)
    np.testing.assert_array_equal(s, s_ref)
    assert np.isneginf(y).all()
    assert s[0, 0, 0, 0] == 0 and s[0, 0, 1, 1] == 1 * 5 + 1


@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_unpool_gather_and_scatter_match_reference(emulated, rng, dtype, index):
    """Switches from real pools (ties, so they collide on overlapping windows),
    unpooled with the window (gather) and without (scatter)."""
    for case in range(30):
        if case < 5:  # ZFNet's pool: overlapping 3x3/2 windows, ceil_mode
            h = int(rng.integers(5, 14))
            shape, g = (2, 2, h, h + 1), (3, 3, 2, 2, 0, 0)
            out = (F.pool_output_size(h, 3, 2, 0, True), F.pool_output_size(h + 1, 3, 2, 0, True))
        else:
            shape, g, out = _pool_geometry(rng)
        x = rng.integers(-2, 3, size=shape).astype(dtype)
        _, s = vectorized.max_pool2d(x, *g, *out)
        y = rng.standard_normal(s.shape).astype(dtype)
        ref = vectorized.max_unpool2d(y, s, shape[2], shape[3])
        with _index_mode(index):
            gathered = cuda.max_unpool2d(y, s, shape[2], shape[3], g)
            scattered = cuda.max_unpool2d(y, s, shape[2], shape[3], None)
        tol = dict(rtol=1e-6, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-15, atol=1e-15)
        np.testing.assert_allclose(gathered, ref, **tol)
        np.testing.assert_allclose(scattered, ref, **tol)
        if dtype == np.float64:  # same order of addition as the reference's bincount
            np.testing.assert_array_equal(gathered, ref)
    _check_index_type(emulated, index)


def test_emulated_unpool_with_a_wrong_window_still_sums_every_value(emulated, rng):
    """Switches outside their window (arbitrary ones, or another geometry's) are
    added by the second pass, so the gather path never drops a value."""
    for _ in range(10):
        shape, g, out = _pool_geometry(rng)
        h, w = shape[2:]
        y = rng.standard_normal(shape[:2] + out)
        s = rng.integers(0, h * w, size=y.shape)
        ref = vectorized.max_unpool2d(y, s, h, w)
        np.testing.assert_allclose(cuda.max_unpool2d(y, s, h, w, g), ref, rtol=1e-14, atol=1e-14)
    # switches of a padded pool, window given without the pad
    x = rng.standard_normal((2, 3, 9, 9))
    _, s = vectorized.max_pool2d(x, 3, 3, 2, 2, 1, 1, 5, 5)
    y = rng.standard_normal(s.shape)
    np.testing.assert_allclose(cuda.max_unpool2d(y, s, 9, 9, (3, 3, 2, 2, 0, 0)),
                               vectorized.max_unpool2d(y, s, 9, 9), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("index", INDEX)
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_lrn_forward_backward_match_reference(emulated, rng, dtype, index):
    tol = 2e-6 if dtype == np.float32 else 1e-13
    for _ in range(20):
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 10)), int(rng.integers(1, 5)), int(rng.integers(1, 5)))
        size = int(rng.integers(1, 8))
        alpha, beta, k = float(rng.uniform(1e-4, 2.0)), float(rng.uniform(0.1, 1.5)), float(rng.uniform(0.5, 3.0))
        x = (rng.standard_normal(shape) * 2).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        with _index_mode(index):
            y = cuda.lrn(x, size, alpha, beta, k)
            dx = cuda.lrn_backward(dy, x, size, alpha, beta, k)
        x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
        for got, ref in ((y, vectorized.lrn(x64, size, alpha, beta, k)),
                         (dx, vectorized.lrn_backward(dy64, x64, size, alpha, beta, k))):
            assert got.dtype == dtype
            err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            assert err < tol, (shape, size, err)
    _check_index_type(emulated, index)


def test_emulator_rejects_a_scalar_of_the_wrong_width(emulated):
    """The argument check can fail: a Python int (CuPy would send 8 bytes) or an
    int64 where the kernel takes int."""
    x = np.ones((1, 1, 2, 2), np.float32)
    y = np.empty_like(x)
    expr = cuda.name_expression("lrn_kernel", np.float32, np.int32)
    good = (x, y, np.int64(4), *(np.int32(v) for v in (1, 4, 2, 2)), *(np.float32(v) for v in (1e-4, 0.75, 2.0)))
    emulated("lrn.cu", np.dtype(np.float32), expr, 1, cuda.THREADS, good)
    for bad in (good[:3] + (1,) + good[4:], good[:3] + (np.int64(1),) + good[4:],
                good[:-1] + (np.float64(2.0),)):
        with pytest.raises(AssertionError, match="do not match"):
            emulated("lrn.cu", np.dtype(np.float32), expr, 1, cuda.THREADS, bad)


def test_emulated_compare_and_swap_add(emulator):
    """The double atomicAdd of devices older than sm_60 (a CAS loop)."""
    f = emulator.lib.zf_cas_add
    f.restype, f.argtypes = ctypes.c_double, [ctypes.c_double, ctypes.c_double]
    assert f(0.1, 0.2) == 0.1 + 0.2 and f(-2.5, 1e300) == 1e300 and np.isnan(f(1.0, np.nan))


def test_emulated_outputs_are_fully_written_on_empty_and_odd_shapes(emulated, rng):
    """A single pixel, a single channel, an empty batch."""
    x = rng.standard_normal((1, 1, 1, 1)).astype(np.float32)
    np.testing.assert_array_equal(cuda.im2col(x, 1, 1, 1, 1, 0, 0), x.reshape(1, 1, 1))
    np.testing.assert_array_equal(cuda.max_pool2d(x, 1, 1, 1, 1, 0, 0, 1, 1)[0], x)
    np.testing.assert_allclose(cuda.lrn(x, 5, 1e-4, 0.75, 2.0), vectorized.lrn(x, 5, 1e-4, 0.75, 2.0), rtol=1e-6)
    empty = np.zeros((0, 2, 4, 4), np.float32)
    assert cuda.im2col(empty, 2, 2, 1, 1, 0, 0).shape == (0, 8, 9)
    assert cuda.lrn(empty, 3, 1e-4, 0.75, 2.0).shape == empty.shape
