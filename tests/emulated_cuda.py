"""The CUDA kernels of kernels/*.cu run on the CPU, for tests on machines without a GPU.

The exact kernel text is compiled by the host C++ compiler against a small shim
(``__global__`` -> plain function, the grid and block as nested loops, atomics as plain
adds since the threads run one after another) and launched through the real Python
wrappers of kernels/cuda.py (``cuda._use_launcher(Emulator(...))``).  The launcher checks
every argument's type and width against the kernel's parameter list and guards every
buffer against out-of-bounds writes.  What this cannot show: races, and NVRTC or device
specifics (tests/test_gpu.py checks those on a GPU).
"""
import ctypes
import os
import shutil
import subprocess

import numpy as np

from zfraw.kernels import cuda

CXX = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")

SHIM = r"""
#include <cmath>
#include <cstddef>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>

struct zf_uint3 { unsigned int x, y, z; };
static zf_uint3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __forceinline__ inline

static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
static inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, sizeof d); return d; }
static inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, sizeof i); return i; }
template <typename T> static inline bool zf_host_isnan(T v) { return std::isnan(v); }
#define isnan zf_host_isnan
// threads run one after another, so a plain add is atomic here
template <typename T> static inline T atomicAdd(T* a, T v) { T old = *a; *a = old + v; return old; }
static inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long cmp, unsigned long long v) {
    unsigned long long old = *a;
    if (old == cmp) *a = v;
    return old;
}
"""

DRIVER = r"""
template <typename... A, std::size_t... Is>
static void zf_call(void (*k)(A...), void** args, std::index_sequence<Is...>) {
    k(*static_cast<std::remove_cv_t<A>*>(args[Is])...);
}

// Launch like cudaLaunchKernel(k, grid, block, args): every thread in turn.
template <typename... A>
static void zf_emulate(void (*k)(A...), unsigned grid, unsigned block, void** args) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b)
        for (unsigned t = 0; t < block; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            zf_call(k, args, std::index_sequence_for<A...>{});
        }
}

// One code per parameter: p (pointer) or not, then f/i and the byte width.
template <typename A>
static void zf_describe(std::string& s) {
    using V = std::remove_cv_t<A>;
    using E = std::remove_cv_t<std::remove_pointer_t<V>>;
    if (std::is_pointer<V>::value) s += 'p';
    s += std::is_floating_point<E>::value ? 'f' : 'i';
    s += std::to_string(sizeof(E));
    s += ',';
}

template <typename... A>
static void zf_signature(void (*)(A...), char* out) {
    std::string s;
    (zf_describe<A>(s), ...);
    std::strcpy(out, s.c_str());
}
"""

GUARD = 16  # elements of 0xFF bytes either side of every buffer


def build_emulator(directory):
    """Compile every kernel of kernels/*.cu for the CPU into ``directory``; -> (the library, expression -> (source, j))."""
    exprs = [(name, e) for name in cuda.SOURCES for e in cuda.name_expressions(name)]
    parts = [SHIM] + [cuda.source_code(name) for name in cuda.SOURCES] + [DRIVER]
    for j, (_, e) in enumerate(exprs):
        parts.append(f'extern "C" void zf_launch_{j}(unsigned g, unsigned b, void** a) '
                     f"{{ zf_emulate(&{e}, g, b, a); }}")
        parts.append(f'extern "C" void zf_signature_{j}(char* out) {{ zf_signature(&{e}, out); }}')
    parts.append('extern "C" double zf_cas_add(double a, double b) { zf_atomic_add_cas(&a, b); return a; }')
    src = os.path.join(directory, "emulate.cpp")
    lib = os.path.join(directory, "emulate.so")
    with open(src, "w") as f:
        f.write("\n".join(parts) + "\n")
    cmd = [CXX, "-std=c++17", "-O1", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-o", lib, src]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"host compile of the kernels failed:\n{out.stderr}"
    return ctypes.CDLL(lib), {e: (name, j) for j, (name, e) in enumerate(exprs)}


SCALARS = {"i4": ctypes.c_int32, "i8": ctypes.c_int64, "f4": ctypes.c_float, "f8": ctypes.c_double}


class Emulator:
    """A launcher for :func:`zfraw.kernels.cuda._use_launcher` that runs the kernels here (NumPy arrays)."""

    def __init__(self, lib, index):
        self.lib, self.index, self.calls = lib, index, []

    def signature(self, expr):
        buf = ctypes.create_string_buffer(512)
        getattr(self.lib, f"zf_signature_{self.index[expr][1]}")(buf)
        return buf.value.decode().rstrip(",").split(",")

    @staticmethod
    def describe(a):
        if isinstance(a, np.ndarray):
            return "p" + ("f" if a.dtype.kind == "f" else "i") + str(a.itemsize)
        if isinstance(a, np.generic):
            return ("f" if a.dtype.kind == "f" else "i") + str(a.itemsize)
        return f"a bare Python {type(a).__name__}"

    def __call__(self, source, dtype, expr, blocks, threads, args):
        name, j = self.index[expr]
        assert name == source, f"{expr} launched from {source} but defined in {name}"
        assert 1 <= blocks <= cuda.MAX_BLOCKS and threads == cuda.THREADS
        params = self.signature(expr)
        given = [self.describe(a) for a in args]
        assert given == params, f"{expr}: arguments {given} do not match parameters {params}"
        self.calls.append((expr, blocks))
        holders, guarded = [], []
        for a in args:
            if isinstance(a, np.ndarray):
                assert a.flags.c_contiguous, f"{expr}: a non-contiguous array argument"
                buf = np.empty(a.size + 2 * GUARD, a.dtype)
                buf.view(np.uint8)[:] = 0xFF
                buf[GUARD:GUARD + a.size] = a.reshape(-1)
                guarded.append((a, buf))
                holders.append(ctypes.c_void_p(buf.ctypes.data + GUARD * a.itemsize))
            else:
                holders.append(SCALARS[self.describe(a)](a.item()))
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(h) for h in holders])
        getattr(self.lib, f"zf_launch_{j}")(ctypes.c_uint(blocks), ctypes.c_uint(threads), pointers)
        for a, buf in guarded:
            edges = np.concatenate([buf[:GUARD], buf[GUARD + a.size:]]).view(np.uint8)
            assert (edges == 0xFF).all(), f"{expr} wrote outside a buffer"
            a.reshape(-1)[:] = buf[GUARD:GUARD + a.size]


def emulator_in(directory):
    """An :class:`Emulator` built in ``directory``; None where there is no C++ compiler."""
    return None if CXX is None else Emulator(*build_emulator(str(directory)))


__all__ = ["CXX", "SHIM", "DRIVER", "GUARD", "SCALARS", "build_emulator", "Emulator", "emulator_in"]
