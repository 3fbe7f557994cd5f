"""Numba kernels: the ``numba`` backend's hot paths on the CPU.

Every kernel of :data:`zfraw.backend.KERNEL_NAMES` is here, with the signature
documented in :mod:`zfraw.kernels` (the same as :mod:`zfraw.kernels.vectorized`),
collected in :data:`KERNELS`.  Each public function is a thin Python wrapper
that allocates the output with ``np.empty`` (through :data:`_empty`, which the
tests replace by a poisoning allocator) and calls one compiled kernel; the
kernel writes every output element.

How the kernels are built
-------------------------
* ``@njit(parallel=True, cache=True, fastmath=FASTMATH)``: ``prange`` runs the
  outer loop over independent tasks, (n, c) planes or (n, block of pixels), on
  all cores; inner loops run over contiguous memory, so the kernels stream at
  memory bandwidth.  Compiled code is cached after the first call of each
  kernel for each dtype, in ``$XDG_CACHE_HOME/zfraw/numba`` (``~/.cache/zfraw/numba``)
  unless ``NUMBA_CACHE_DIR`` says otherwise: not beside the installed sources,
  where files pip does not know of would outlive an uninstall (and turn the left
  ``zfraw`` folder into a namespace package that shadows a later install).
* ``FASTMATH`` allows reassociation, contraction to FMA and approximate
  functions, but never ``nnan``/``ninf``: max-pooling pads with -inf and a NaN
  must win, so comparisons with NaN and infinities keep their IEEE meaning.
  ``error_model="numpy"``: a float division by zero gives inf/nan as in NumPy
  instead of raising, which also lets LLVM vectorize loops that divide.
* float32 and float64 each get their own compiled version; scalars reach the
  kernels already cast to the input's dtype (and constants are made with
  ``x.dtype.type``), so nothing is silently computed in another precision.
  Indices are int64 (``intp``) throughout.
* Each output element is written by exactly one task: ``col2im`` sums all the
  taps that reach a plane in that plane's task (a private buffer),
  ``max_unpool2d`` runs each plane sequentially.  No races, no atomics, and the
  results are deterministic.
* The tasks are dealt to a few ``prange`` chunks per thread, and each chunk
  allocates its scratch buffers once (a fresh allocation per task costs page
  faults that, for small planes, take longer than the work).
* Inner loops index a slice from 0 (``row[wo] = src[wo]``), not ``src[q0 + wo]``:
  Numba's negative-index wrap-around on a computed index keeps LLVM from
  vectorizing the loop.

The column-phase trick
----------------------
A strided window reads ``xpad[ho*sh + i, wo*sw + j]``: along ``wo`` that is a
stride-``sw`` walk, which does not vectorize.  So each task first copies its
padded plane into *column phases*, ``xph[p, r, q] = xpad[r, q*sw + p]`` (p < sw),
after which every tap reads a contiguous run:
``xpad[ho*sh + i, wo*sw + j] = xph[j % sw, ho*sh + i, j // sw + wo]``.
The copy is one pass over a plane that stays in cache; ``im2col``, ``col2im``
(in reverse) and ``max_pool2d`` use it.

Agreement with the ``numpy`` backend: ``im2col`` and ``max_pool2d`` (values and
switches) are bit-identical; ``col2im`` and ``max_unpool2d`` add in the same
order as NumPy (``max_unpool2d`` in the input's dtype, where NumPy's bincount
adds in float64); the local response norm agrees to round-off (FMA contraction,
and ``pow`` from another math library or, for beta = 0.75, square roots).
"""
from __future__ import annotations

import os
import sys


def _default_cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "zfraw", "numba")


if "numba" not in sys.modules:  # Numba reads NUMBA_CACHE_DIR once, when it is imported
    os.environ.setdefault("NUMBA_CACHE_DIR", _default_cache_dir())

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

__all__ = ["KERNELS", "FASTMATH", "threading_layer", "USER_THREADING_VARIABLES", "SEPARATE_POOL_LAYERS", "im2col", "col2im", "im2col_tile", "col2im_tile", "relu", "relu_backward", "max_pool2d", "max_unpool2d", "lrn", "lrn_backward",
           "sgd_update", "POOL_LANES", "POOL_LANES_MAX_PIXELS"]

#: LLVM fast-math flags for every kernel: no ``nnan``/``ninf`` (NaN and -inf must behave).
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

_jit = njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
_helper = njit(cache=True, fastmath=FASTMATH, error_model="numpy")  # serial, called from the kernels


#: allocator of every output (the tests swap in one that fills with NaN / -1, so an
#: element a kernel fails to write shows up)
_empty = np.empty


def _openmp_loaded():
    """True when a GNU OpenMP runtime is already mapped into this process (Linux; else False)."""
    try:
        with open("/proc/self/maps") as fh:
            return any("libgomp" in line for line in fh)
    except OSError:
        return False


#: the environment variables by which a user chooses Numba's threads and OpenMP's wait
#: policy; when any is set, :func:`_start_threads` leaves the choice to Numba
USER_THREADING_VARIABLES = ("NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")

#: Numba's threading layers tried, in order, when an OpenMP runtime is already loaded:
#: thread pools of their own, not the loaded runtime's (``omp`` last, as Numba wants
#: every layer named; ``workqueue`` is always built, so it is never reached)
SEPARATE_POOL_LAYERS = ["tbb", "workqueue", "omp"]


def _start_threads():
    """Start Numba's thread pool so that nothing else in the process makes it spin.

    The ``numba`` backend alternates Numba kernels with BLAS calls (im2col, GEMM,
    im2col, ...).  GNU OpenMP's default wait policy keeps idle workers spinning
    for milliseconds after each kernel (``pause`` is slow on recent AMD cores),
    on the very cores the BLAS threads need next: on a 2-core machine that made
    the tiled ZFNet conv1 forward 7x slower (bench/README.md).  The policy is read
    once, when the runtime loads, and a process has one GNU OpenMP runtime, so:

    * no OpenMP runtime loaded yet: Numba's default layer (``omp`` here) starts
      with ``OMP_WAIT_POLICY=PASSIVE``, set only while the runtime loads, then
      removed.  Passive workers sleep at once; waking them costs microseconds.
      A PyTorch imported later shares this runtime.
    * an OpenMP runtime already loaded (PyTorch imported before zfraw, started
      with the spinning default): Numba takes a pool of its own,
      :data:`SEPARATE_POOL_LAYERS` (``tbb`` when the ``tbb`` package is
      installed, else Numba's ``workqueue``, whose idle workers sleep on a
      condition variable).  ``workqueue`` must not be entered by two Python
      threads at once; zfraw's kernels run from the calling thread only.
    * the user chose (any of :data:`USER_THREADING_VARIABLES` set, or
      ``numba.config.THREADING_LAYER`` changed from ``"default"``): left alone.

    :func:`threading_layer` says which layer runs.
    """
    chosen = any(k in os.environ for k in USER_THREADING_VARIABLES) or numba.config.THREADING_LAYER != "default"
    if chosen:
        numba.get_num_threads()
        return
    if _openmp_loaded():
        numba.config.THREADING_LAYER_PRIORITY = list(SEPARATE_POOL_LAYERS)
        numba.get_num_threads()
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        numba.get_num_threads()  # the first call loads the threading layer and starts the pool
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def threading_layer():
    """The name of the threading layer Numba's kernels run on (``omp``, ``tbb`` or ``workqueue``)."""
    return numba.threading_layer()


_start_threads()


def _contiguous(name, a):
    """C-contiguous float32/float64 array (a no-op for what :mod:`zfraw.functional` passes)."""
    a = np.ascontiguousarray(a)
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must have dtype float32 or float64 for the numba kernels, got {a.dtype}")
    return a


def _n_chunks(n_tasks):
    """Number of ``prange`` chunks: a few per thread, at least one."""
    return max(1, min(n_tasks, 4 * numba.get_num_threads()))


# ============================================================== helpers

@_helper
def _chunk(k, n_chunks, n_tasks):
    """[start, stop) of the tasks of chunk k: contiguous, sizes differ by at most one."""
    return k * n_tasks // n_chunks, (k + 1) * n_tasks // n_chunks


@_helper
def _ceil_div(a, b):
    """ceil(a / b) for ints, b > 0 (any sign of a)."""
    return -((-a) // b)


@_helper
def _deinterleave(src, xph, r):
    """xph[p, r, q] = src[q*sw + p] for p < sw = xph.shape[0], q < xph.shape[2].

    Strides 1 and 2 get loops with constant strides over contiguous rows, which
    LLVM vectorizes.
    """
    sw, wq = xph.shape[0], xph.shape[2]
    if sw == 1:
        d0 = xph[0, r]
        for q in range(wq):
            d0[q] = src[q]
    elif sw == 2:
        d0, d1 = xph[0, r], xph[1, r]
        for q in range(wq):
            d0[q] = src[2 * q]
            d1[q] = src[2 * q + 1]
    else:
        for p in range(sw):
            d = xph[p, r]
            for q in range(wq):
                d[q] = src[q * sw + p]


@_helper
def _interleave(xph, r, dst):
    """dst[q*sw + p] = xph[p, r, q], the inverse of :func:`_deinterleave`."""
    sw, wq = xph.shape[0], xph.shape[2]
    if sw == 1:
        s0 = xph[0, r]
        for q in range(wq):
            dst[q] = s0[q]
    elif sw == 2:
        s0, s1 = xph[0, r], xph[1, r]
        for q in range(wq):
            dst[2 * q] = s0[q]
            dst[2 * q + 1] = s1[q]
    else:
        for p in range(sw):
            s_p = xph[p, r]
            for q in range(wq):
                dst[q * sw + p] = s_p[q]


@_helper
def _split_columns(plane, xph, row, ph, pw, fill):
    """Padded plane in column phases: xph[p, r, q] = xpad[r, q*sw + p], sw = xph.shape[0].

    plane (H, W); xph (sw, Hp, Wq); row: scratch of sw*Wq.  xpad[r, s] is
    plane[r - ph, s - pw] inside the plane and ``fill`` elsewhere (also beyond
    H + 2 ph, where a ceil-mode window may reach).  Each padded row is built
    contiguously in ``row`` (a plain copy between two fills), then deinterleaved.
    """
    h_in, w_in = plane.shape
    sw, hp, wq = xph.shape
    width = sw * wq
    lo = min(pw, width)                  # row[lo:hi] = plane[h, :hi - lo]
    hi = min(pw + w_in, width)
    for r in range(hp):
        h = r - ph
        if h < 0 or h >= h_in:
            for s in range(width):
                row[s] = fill
        else:
            for s in range(lo):
                row[s] = fill
            line, dst = plane[h, 0:hi - lo], row[lo:hi]
            for s in range(hi - lo):
                dst[s] = line[s]
            for s in range(hi, width):
                row[s] = fill
        _deinterleave(row, xph, r)


# ============================================================== im2col

@_helper
def _tap_row(n, c, i, j, n_img, n_ch, kh, kw, tile_layout):
    """Row of the (rows, Ho, Wo) view of a column buffer that holds tap (i, j) of
    plane (n, c): ``cols[n, (c, i, j)]`` of the (N, C*kh*kw, Ho*Wo) layout, or, in
    the tile layout (C*kh*kw, N*Ho*Wo), the block ``cols[(c, i, j), n*Ho*Wo:]``."""
    if tile_layout:
        return ((c * kh + i) * kw + j) * n_img + n
    return ((n * n_ch + c) * kh + i) * kw + j


@_helper
def _task_plane(task, n_img, n_ch, tile_layout):
    """(n, c) of a task, in the order that makes consecutive tasks write consecutive
    memory: c-minor for the (N, C*kh*kw, Ho*Wo) layout, n-minor for the tile layout,
    where the rows of tap (c, i, j) hold image after image (on ZFNet's conv2..5
    at batch 16, im2col_tile 1.5-1.8x and col2im_tile 1.3-2.0x faster than in
    c-minor order, which scatters runs of one plane row across the buffer;
    ``bench/tile_kernels.py``)."""
    if tile_layout:
        return task % n_img, task // n_img
    return task // n_ch, task % n_ch


@_jit
def _im2col_kernel(x, cols, kh, kw, sh, sw, ph, pw, tile_layout, n_chunks):
    """cols[row(n, c, i, j), ho, wo] = xpad[n, c, ho*sh + i, wo*sw + j] (zero padding).

    x (N, C, H, W); cols (N*C*kh*kw, Ho, Wo), the rows of either column layout
    (:func:`_tap_row`).  One task per (n, c) plane: split the padded plane into
    column phases, then copy each tap's rows, which are contiguous there.
    """
    n_img, n_ch = x.shape[0], x.shape[1]
    ho_n, wo_n = cols.shape[1], cols.shape[2]
    hp = (ho_n - 1) * sh + kh             # padded rows the windows read
    wq = wo_n + (kw - 1) // sw            # phase columns the windows read
    zero = x.dtype.type(0)
    for chunk in prange(n_chunks):
        xph = np.empty((sw, hp, wq), dtype=x.dtype)
        row = np.empty(sw * wq, dtype=x.dtype)
        t0, t1 = _chunk(chunk, n_chunks, n_img * n_ch)
        for task in range(t0, t1):
            n, c = _task_plane(task, n_img, n_ch, tile_layout)
            _split_columns(x[n, c], xph, row, ph, pw, zero)
            for i in range(kh):
                for j in range(kw):
                    p, q0 = j % sw, j // sw
                    tap = cols[_tap_row(n, c, i, j, n_img, n_ch, kh, kw, tile_layout)]
                    for ho in range(ho_n):
                        src, dst = xph[p, ho * sh + i, q0:q0 + wo_n], tap[ho]
                        for wo in range(wo_n):
                            dst[wo] = src[wo]


def _output_size(h, w, kh, kw, sh, sw, ph, pw):
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _unfold(x, kh, kw, sh, sw, ph, pw, tile_layout):
    x = _contiguous("x", x)
    n, c, h, w = x.shape
    ho, wo = _output_size(h, w, kh, kw, sh, sw, ph, pw)
    cols = _empty((n * c * kh * kw, ho, wo), dtype=x.dtype)
    _im2col_kernel(x, cols, kh, kw, sh, sw, ph, pw, tile_layout, _n_chunks(n * c))
    return cols


def im2col(x, kh, kw, sh, sw, ph, pw):
    """Unfold windows into columns: x (N, C, H, W) -> cols (N, C*kh*kw, Ho*Wo).

    ``cols[n, c*kh*kw + i*kw + j, ho*Wo + wo] = xpad[n, c, ho*sh + i, wo*sw + j]``
    with zero padding, Ho = (H + 2 ph - kh) // sh + 1, Wo likewise.
    """
    n, c = x.shape[:2]
    cols = _unfold(x, kh, kw, sh, sw, ph, pw, False)
    return cols.reshape(n, c * kh * kw, cols.shape[1] * cols.shape[2])


def im2col_tile(x, kh, kw, sh, sw, ph, pw):
    """The tile layout: x (N, C, H, W) -> cols (C*kh*kw, N*Ho*Wo),
    ``cols[c*kh*kw + i*kw + j, (n*Ho + ho)*Wo + wo] = xpad[n, c, ho*sh + i, wo*sw + j]``."""
    n, c = x.shape[:2]
    cols = _unfold(x, kh, kw, sh, sw, ph, pw, True)
    return cols.reshape(c * kh * kw, n * cols.shape[1] * cols.shape[2])


# ============================================================== col2im

@_jit
def _col2im_kernel(cols, x, kh, kw, sh, sw, ph, pw, tile_layout, n_chunks):
    """x[n, c, h, w] = sum of cols[row(n, c, i, j), ho, wo] over the taps with
    ho*sh - ph + i = h and wo*sw - pw + j = w (taps in the padding are dropped).

    cols (N*C*kh*kw, Ho, Wo), the rows of either layout (:func:`_tap_row`), x
    (N, C, H, W).  Owner computes: one task owns each (n, c) plane and sums every
    tap that reaches the plane into a private padded buffer, kept in column
    phases (acc[p, r, q] = xpad[r, q*sw + p]) so that each tap adds a contiguous
    run.  Each pixel receives its taps in the order i, then j (as the NumPy
    kernel adds them), starting from zero; the task then copies the unpadded
    part to x, row by row.  No other task touches the plane: no races, no
    atomics, the same result on every run.
    """
    n_img, n_ch, h_in, w_in = x.shape
    ho_n, wo_n = cols.shape[1], cols.shape[2]
    hp = max((ho_n - 1) * sh + kh, h_in + ph)                  # every pixel has a slot
    wq = max(wo_n + (kw - 1) // sw, _ceil_div(w_in + pw, sw))
    for chunk in prange(n_chunks):
        acc = np.empty((sw, hp, wq), dtype=x.dtype)
        flat = acc.reshape(sw * hp * wq)
        row = np.empty(sw * wq, dtype=x.dtype)
        t0, t1 = _chunk(chunk, n_chunks, n_img * n_ch)
        for task in range(t0, t1):
            n, c = _task_plane(task, n_img, n_ch, tile_layout)
            for e in range(flat.size):
                flat[e] = 0
            for i in range(kh):
                for j in range(kw):
                    p, q0 = j % sw, j // sw
                    tap = cols[_tap_row(n, c, i, j, n_img, n_ch, kh, kw, tile_layout)]
                    for ho in range(ho_n):
                        src, dst = tap[ho], acc[p, ho * sh + i, q0:q0 + wo_n]
                        for wo in range(wo_n):
                            dst[wo] += src[wo]
            for h in range(h_in):
                _interleave(acc, h + ph, row)
                src, dst = row[pw:pw + w_in], x[n, c, h]
                for w in range(w_in):
                    dst[w] = src[w]


def _fold(cols, x_shape, kh, kw, sh, sw, ph, pw, tile_layout):
    cols = _contiguous("cols", cols)
    n, c, h, w = (int(s) for s in x_shape)
    ho, wo = _output_size(h, w, kh, kw, sh, sw, ph, pw)
    x = _empty((n, c, h, w), dtype=cols.dtype)
    _col2im_kernel(cols.reshape(n * c * kh * kw, ho, wo), x, kh, kw, sh, sw, ph, pw, tile_layout,
                   _n_chunks(n * c))
    return x


def col2im(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col`: cols (N, C*kh*kw, Ho*Wo) -> x (N, C, H, W) = ``x_shape``.

    ``x[n, c, h, w] = sum over (i, j, ho, wo) with ho*sh - ph + i = h, wo*sw - pw + j = w
    of cols[n, c*kh*kw + i*kw + j, ho*Wo + wo]``, so ``<im2col(x), cols> == <x, col2im(cols)>``.
    """
    return _fold(cols, x_shape, kh, kw, sh, sw, ph, pw, False)


def col2im_tile(cols, x_shape, kh, kw, sh, sw, ph, pw):
    """Adjoint of :func:`im2col_tile`: cols (C*kh*kw, N*Ho*Wo) -> x (N, C, H, W) = ``x_shape``."""
    return _fold(cols, x_shape, kh, kw, sh, sw, ph, pw, True)


# ============================================================== rectifier

#: the rules of :func:`relu_backward`, by the number its kernel takes
RELU_RULE_CODES = {"backprop": 0, "guided": 1, "deconvnet": 2}


@_jit
def _relu_kernel(x, y, n_chunks):
    """y = max(x, 0) over flat arrays, a NaN kept (``v <= 0`` is false for NaN)."""
    zero = x.dtype.type(0)
    for chunk in prange(n_chunks):
        t0, t1 = _chunk(chunk, n_chunks, x.size)
        src, dst = x[t0:t1], y[t0:t1]
        for i in range(t1 - t0):
            v = src[i]
            dst[i] = zero if v <= zero else v


@_jit
def _relu_backward_kernel(s, x, out, rule, n_chunks):
    """out = s where x > 0 (rule 0, backprop), s where x > 0 and s > 0 (1, guided),
    max(s, 0) (2, deconvnet; x unused); flat arrays, one pass."""
    zero = s.dtype.type(0)
    for chunk in prange(n_chunks):
        t0, t1 = _chunk(chunk, n_chunks, s.size)
        sig, inp, dst = s[t0:t1], x[t0:t1], out[t0:t1]
        if rule == 0:
            for i in range(t1 - t0):
                dst[i] = sig[i] if inp[i] > zero else zero
        elif rule == 1:
            for i in range(t1 - t0):
                dst[i] = sig[i] if (inp[i] > zero) & (sig[i] > zero) else zero
        else:
            for i in range(t1 - t0):
                v = sig[i]
                dst[i] = zero if v <= zero else v


def _elementwise_chunks(size):
    """A few contiguous chunks per thread, each at least 16384 elements."""
    return max(1, min(4 * numba.get_num_threads(), size // 16384))


def relu(x):
    """max(x, 0), elementwise, any shape (a NaN stays NaN)."""
    x = _contiguous("x", x).reshape(np.shape(x))  # (np.ascontiguousarray makes 0-d 1-d)
    y = _empty(x.shape, dtype=x.dtype)
    _relu_kernel(x.reshape(-1), y.reshape(-1), _elementwise_chunks(x.size))
    return y


def relu_backward(s, x, rule):
    """The signal s through a ReLU whose forward input was x (same shape), in one
    pass: ``backprop`` s * (x > 0), ``guided`` relu(s) * (x > 0), ``deconvnet``
    relu(s) (x may be None)."""
    shape = np.shape(s)
    s = _contiguous("s", s).reshape(shape)  # (np.ascontiguousarray makes 0-d 1-d)
    x = s if x is None else _contiguous("x", x).reshape(shape)
    out = _empty(shape, dtype=s.dtype)
    _relu_backward_kernel(s.reshape(-1), x.reshape(-1), out.reshape(-1), RELU_RULE_CODES[rule],
                          _elementwise_chunks(s.size))
    return out


# ============================================================== max pooling

@_helper
def _take_max(best, tap, vals, k):
    """Where vals > best or vals is NaN: best = vals and tap = k (elementwise; vectorizes)."""
    for q in range(best.size):
        v, b = vals[q], best[q]
        wins = (v > b) | (v != v)
        best[q] = v if wins else b
        tap[q] = k if wins else tap[q]


@_jit
def _max_pool_kernel(x, y, switches, kh, kw, sh, sw, ph, pw, n_chunks):
    """y[n, c, ho, wo] = max_{i < kh, j < kw} xpad[n, c, ho*sh + i, wo*sw + j] (-inf padding)
    and switches[n, c, ho, wo] = h*W + w of that maximum in the unpadded plane.

    One task per (n, c) plane: split the -inf-padded plane into column phases,
    then for each tap (i, j), in row-major order, copy the tap's values for
    the whole output plane (contiguous rows) and take them where ``v > best`` or
    ``v != v`` (NaN): ties keep the first maximum, the last NaN wins and the
    padding (-inf) never wins.  The winning tap starts at the window's first
    in-bounds pixel (it matters only when every value is -inf).  A tap is kept
    as its int32 offset i*W + j from the window's corner, so the switch is
    corner + offset.
    """
    n_img, n_ch, h_in, w_in = x.shape
    ho_n, wo_n = y.shape[2], y.shape[3]
    hp = (ho_n - 1) * sh + kh
    wq = wo_n + (kw - 1) // sw
    neg_inf = x.dtype.type(-np.inf)
    for chunk in prange(n_chunks):
        xph = np.empty((sw, hp, wq), dtype=x.dtype)
        row = np.empty(sw * wq, dtype=x.dtype)
        vals = np.empty(ho_n * wo_n, dtype=x.dtype)
        tap = np.empty(ho_n * wo_n, dtype=np.int32)
        t0, t1 = _chunk(chunk, n_chunks, n_img * n_ch)
        for task in range(t0, t1):
            n, c = task // n_ch, task % n_ch
            _split_columns(x[n, c], xph, row, ph, pw, neg_inf)
            best = y[n, c].reshape(ho_n * wo_n)
            for ho in range(ho_n):
                h0 = ho * sh - ph
                for wo in range(wo_n):
                    w0 = wo * sw - pw
                    best[ho * wo_n + wo] = neg_inf
                    tap[ho * wo_n + wo] = (max(h0, 0) - h0) * w_in + max(w0, 0) - w0
            for i in range(kh):
                for j in range(kw):
                    p, q0 = j % sw, j // sw
                    for ho in range(ho_n):
                        src = xph[p, ho * sh + i, q0:q0 + wo_n]
                        dst = vals[ho * wo_n:(ho + 1) * wo_n]
                        for wo in range(wo_n):
                            dst[wo] = src[wo]
                    _take_max(best, tap, vals, np.int32(i * w_in + j))
            for ho in range(ho_n):
                corner = (ho * sh - ph) * w_in - pw   # flat index of the window's (0, 0) tap at wo = 0
                t, arg = tap[ho * wo_n:(ho + 1) * wo_n], switches[n, c, ho]
                for wo in range(wo_n):
                    arg[wo] = corner + wo * sw + t[wo]


#: channels pooled together by :func:`_max_pool_lanes_kernel` (one AVX-512 register of float32)
POOL_LANES = 16

#: planes of at most this many pixels are pooled by :func:`_max_pool_lanes_kernel`
#: (ZFNet's pool2 26x26 and pool5 13x13); larger ones by :func:`_max_pool_kernel`
#: (pool1 110x110), whose rows are long enough to vectorize on their own
POOL_LANES_MAX_PIXELS = 2048


@_jit
def _max_pool_lanes_kernel(x, y, switches, kh, kw, sh, sw, ph, pw, n_chunks, lanes):
    """The same max-pooling as :func:`_max_pool_kernel`, vectorized across channels.

    For small planes a row of output is too short to vectorize, so a task takes
    ``lanes`` channels of one image at once.  It first copies them into a
    transposed, column-phase scratch ``xt[p, h, q*lanes + l] = xpad[c0 + l, h, q*sw + p]``
    (-inf padding in width; rows outside the input are skipped instead), in
    which the values one tap (i, j) contributes to a whole output row, for all
    the lanes, are one contiguous run of Wo*lanes values:
    ``xt[j % sw, ho*sh - ph + i, (j // sw)*lanes:(j // sw + Wo)*lanes]``.  Each
    output row then takes its kh*kw taps in row-major order with
    :func:`_take_max` (same rule, so the same values and switches as the
    per-plane kernel and as NumPy).  ``lanes`` is an argument, not a constant:
    LLVM unrolls a loop of constant trip count 16 into scalar code instead of
    vectorizing it.
    """
    n_img, n_ch, h_in, w_in = x.shape
    ho_n, wo_n = y.shape[2], y.shape[3]
    wq = wo_n + (kw - 1) // sw
    n_blocks = (n_ch + lanes - 1) // lanes
    neg_inf = x.dtype.type(-np.inf)
    for chunk in prange(n_chunks):
        xt = np.empty((sw, h_in, wq * lanes), dtype=x.dtype)
        best = np.empty(wo_n * lanes, dtype=x.dtype)
        tap = np.empty(wo_n * lanes, dtype=np.int32)
        t0, t1 = _chunk(chunk, n_chunks, n_img * n_blocks)
        for task in range(t0, t1):
            n, c0 = task // n_blocks, (task % n_blocks) * lanes
            cb = min(lanes, n_ch - c0)            # the last block may be partial
            for p in range(sw):
                for q in range(wq):
                    w = q * sw + p - pw
                    for h in range(h_in):
                        dst = xt[p, h, q * lanes:(q + 1) * lanes]
                        if w < 0 or w >= w_in:
                            for lane in range(lanes):
                                dst[lane] = neg_inf
                        else:
                            src = x[n, c0:c0 + cb, h, w]
                            for lane in range(cb):
                                dst[lane] = src[lane]
            for ho in range(ho_n):
                h0 = ho * sh - ph
                off = (max(h0, 0) - h0) * w_in     # first in-bounds row of the window
                for wo in range(wo_n):
                    w0 = wo * sw - pw
                    first = np.int32(off + max(w0, 0) - w0)
                    b, t = best[wo * lanes:(wo + 1) * lanes], tap[wo * lanes:(wo + 1) * lanes]
                    for lane in range(lanes):
                        b[lane] = neg_inf
                        t[lane] = first
                for i in range(kh):
                    h = h0 + i
                    if h < 0 or h >= h_in:         # padding rows never win
                        continue
                    for j in range(kw):
                        p, q0 = j % sw, j // sw
                        _take_max(best, tap, xt[p, h, q0 * lanes:(q0 + wo_n) * lanes], np.int32(i * w_in + j))
                corner = h0 * w_in - pw
                for lane in range(cb):
                    out, arg = y[n, c0 + lane, ho], switches[n, c0 + lane, ho]
                    for wo in range(wo_n):
                        out[wo] = best[wo * lanes + lane]
                        arg[wo] = corner + wo * sw + tap[wo * lanes + lane]


def max_pool2d(x, kh, kw, sh, sw, ph, pw, Ho, Wo):
    """Max-pooling with switches: x (N, C, H, W) -> (y, switches), both (N, C, Ho, Wo).

    ``y[n, c, ho, wo] = max_{i < kh, j < kw} xpad[n, c, ho*sh + i, wo*sw + j]`` with
    -inf padding; ``switches`` (int64) is the flat index h*W + w of the maximum in
    the unpadded plane.  Ties: first in row-major window order; a NaN wins (the
    last one, as in PyTorch).  Planes of up to :data:`POOL_LANES_MAX_PIXELS`
    pixels are pooled :data:`POOL_LANES` channels at a time.
    """
    x = _contiguous("x", x)
    n, c, h, w = x.shape
    y = _empty((n, c, Ho, Wo), dtype=x.dtype)
    switches = _empty((n, c, Ho, Wo), dtype=np.int64)
    if h * w <= POOL_LANES_MAX_PIXELS and c > 1:
        tasks = n * -(-c // POOL_LANES)
        _max_pool_lanes_kernel(x, y, switches, kh, kw, sh, sw, ph, pw, _n_chunks(tasks), POOL_LANES)
    else:
        _max_pool_kernel(x, y, switches, kh, kw, sh, sw, ph, pw, _n_chunks(n * c))
    return y, switches


# ============================================================== max unpooling

@_jit
def _max_unpool_kernel(y, switches, x):
    """x[p, :] = 0, then x[p, switches[p, k]] += y[p, k] for k in order.

    y, switches (P, Ho*Wo) and x (P, H*W), P = N*C planes.  ``prange`` over
    planes, sequential within one, so collisions add in a fixed order.
    """
    n_planes, n_in = x.shape
    n_out = y.shape[1]
    for p in prange(n_planes):
        out, vals, idx = x[p], y[p], switches[p]
        for k in range(n_in):
            out[k] = 0
        for k in range(n_out):
            out[idx[k]] += vals[k]


def max_unpool2d(y, switches, H, W, window=None):
    """Unpooling: y (N, C, Ho, Wo), int64 switches -> x (N, C, H, W), zero except
    ``x[n, c].flat[switches[n, c, i, j]] += y[n, c, i, j]`` (sums on collision).

    ``window`` (the pooling geometry) is not needed: the per-plane loop is already
    deterministic.  Switches must lie in [0, H*W) (:func:`zfraw.functional.max_unpool2d`
    checks that).
    """
    y = _contiguous("y", y)
    switches = np.ascontiguousarray(switches, dtype=np.int64)
    n, c, ho, wo = y.shape
    x = _empty((n, c, H, W), dtype=y.dtype)
    _max_unpool_kernel(y.reshape(n * c, ho * wo), switches.reshape(n * c, ho * wo), x.reshape(n * c, H * W))
    return x


# ============================================================== local response norm

@_helper
def _window_sum_sq(x, n, c, before, after, p0, acc):
    """acc[p] = sum of x[n, j, p0 + p]^2 over j in [c - before, c + after] ∩ [0, C), ascending j."""
    n_ch, m = x.shape[1], acc.size
    j0, j1 = max(c - before, 0), min(c + after, n_ch - 1)
    first = x[n, j0, p0:p0 + m]
    for p in range(m):
        acc[p] = first[p] * first[p]
    for j in range(j0 + 1, j1 + 1):
        line = x[n, j, p0:p0 + m]
        for p in range(m):
            acc[p] += line[p] * line[p]


@_helper
def _scale_and_power(acc, s_pow, coef, neg_beta, k):
    """In place acc -> s = k + coef * acc, and s_pow = s ** neg_beta.

    beta = 0.75 (ZFNet, AlexNet) is computed as 1 / (sqrt(s) sqrt(sqrt(s))),
    which vectorizes; any other beta calls ``pow`` (scalar, slower).
    """
    for p in range(acc.size):
        acc[p] = k + coef * acc[p]
    one = acc.dtype.type(1)
    if neg_beta == -0.75:
        for p in range(acc.size):
            r = np.sqrt(acc[p])
            s_pow[p] = one / (r * np.sqrt(r))
    else:
        for p in range(acc.size):
            s_pow[p] = acc[p] ** neg_beta


@_jit
def _lrn_kernel(x, y, before, after, coef, neg_beta, k, block, n_chunks):
    """y[n, c, p] = x[n, c, p] * s[n, c, p] ** neg_beta with
    s = k + coef * sum_{j=c-before}^{c+after} x[n, j, p]^2 (zero outside [0, C)).

    x, y (N, C, H*W); coef = alpha / size, neg_beta = -beta.  One task per
    (n, block of pixels); the block of all channels stays in cache while the
    window sums run along contiguous pixels.
    """
    n_img, n_ch, n_pix = x.shape
    n_blocks = (n_pix + block - 1) // block
    for chunk in prange(n_chunks):
        s = np.empty(block, dtype=x.dtype)
        s_pow = np.empty(block, dtype=x.dtype)
        t0, t1 = _chunk(chunk, n_chunks, n_img * n_blocks)
        for task in range(t0, t1):
            n, p0 = task // n_blocks, (task % n_blocks) * block
            m = min(block, n_pix - p0)
            for c in range(n_ch):
                _window_sum_sq(x, n, c, before, after, p0, s[:m])
                _scale_and_power(s[:m], s_pow[:m], coef, neg_beta, k)
                src, dst = x[n, c, p0:p0 + m], y[n, c, p0:p0 + m]
                for p in range(m):
                    dst[p] = src[p] * s_pow[p]


@_jit
def _lrn_backward_kernel(dy, x, dx, before, after, coef, neg_beta, k, coef2, block, n_chunks):
    """dx_c = dy_c s_c^-beta - coef2 * x_c * sum_{j: c in win(j)} dy_j x_j s_j^-beta / s_j.

    s_j = k + coef * (window sum of x^2 at j), coef = alpha / size,
    coef2 = 2 alpha beta / size; c lies in the window [j - before, j + after] of j
    exactly when j lies in [c - after, c + before].  All arrays (N, C, H*W).  Per
    (n, block of pixels) task: first s^-beta and the inner term of every channel
    (scratch of C x block), then the output.
    """
    n_img, n_ch, n_pix = x.shape
    n_blocks = (n_pix + block - 1) // block
    for chunk in prange(n_chunks):
        s = np.empty(block, dtype=x.dtype)
        s_pow_all = np.empty((n_ch, block), dtype=x.dtype)
        inner_all = np.empty((n_ch, block), dtype=x.dtype)
        t0, t1 = _chunk(chunk, n_chunks, n_img * n_blocks)
        for task in range(t0, t1):
            n, p0 = task // n_blocks, (task % n_blocks) * block
            m = min(block, n_pix - p0)
            for c in range(n_ch):
                _window_sum_sq(x, n, c, before, after, p0, s[:m])
                s_pow, inner = s_pow_all[c, :m], inner_all[c, :m]
                _scale_and_power(s[:m], s_pow, coef, neg_beta, k)
                xc, dyc = x[n, c, p0:p0 + m], dy[n, c, p0:p0 + m]
                for p in range(m):
                    inner[p] = dyc[p] * xc[p] * s_pow[p] / s[p]
            for c in range(n_ch):
                j0, j1 = max(c - after, 0), min(c + before, n_ch - 1)
                first = inner_all[j0, :m]
                for p in range(m):
                    s[p] = first[p]                # s now holds the sum over j
                for j in range(j0 + 1, j1 + 1):
                    term = inner_all[j, :m]
                    for p in range(m):
                        s[p] += term[p]
                xc, dyc, out = x[n, c, p0:p0 + m], dy[n, c, p0:p0 + m], dx[n, c, p0:p0 + m]
                s_pow = s_pow_all[c, :m]
                for p in range(m):
                    out[p] = dyc[p] * s_pow[p] - coef2 * xc[p] * s[p]


def _lrn_scalars(dtype, size, alpha, beta, k):
    """(before, after, alpha/size, -beta, k, 2 alpha beta/size), the floats in ``dtype``."""
    t = np.dtype(dtype).type
    return (size // 2, (size - 1) // 2, t(alpha / size), t(-beta), t(k), t(2.0 * alpha * beta / size))


def _lrn_tasks(n, c, h, w):
    """(pixels per block, number of chunks): the backward's two C x block scratch
    arrays stay within ~512 KiB."""
    block = int(max(64, min(2048, 65536 // max(1, c))))
    block = min(block, max(1, h * w))
    return block, _n_chunks(n * -(-(h * w) // block))


def lrn(x, size, alpha, beta, k):
    """Local response norm across channels: x (N, C, H, W) -> y (N, C, H, W),

    ``y_c = x_c * (k + alpha/size * sum_{j=c-size//2}^{c+(size-1)//2} x_j^2) ** -beta``
    (channels outside [0, C) count as zero; PyTorch's window).
    """
    x = _contiguous("x", x)
    n, c, h, w = x.shape
    before, after, coef, neg_beta, kk, _ = _lrn_scalars(x.dtype, size, alpha, beta, k)
    y = _empty(x.shape, dtype=x.dtype)
    _lrn_kernel(x.reshape(n, c, h * w), y.reshape(n, c, h * w), before, after, coef, neg_beta, kk,
                *_lrn_tasks(n, c, h, w))
    return y


def lrn_backward(dy, x, size, alpha, beta, k):
    """Gradient of :func:`lrn`: dy, x (N, C, H, W) -> dx (N, C, H, W),

    ``dx_c = dy_c s_c^-beta - (2 alpha beta / size) x_c sum_{j: c in win(j)} dy_j x_j s_j^(-beta-1)``
    with s_j = k + alpha/size * sum_{i in win(j)} x_i^2.
    """
    dy, x = _contiguous("dy", dy), _contiguous("x", x)
    if dy.dtype != x.dtype:
        raise TypeError(f"dy has dtype {dy.dtype} but x has {x.dtype}")
    n, c, h, w = x.shape
    before, after, coef, neg_beta, kk, coef2 = _lrn_scalars(x.dtype, size, alpha, beta, k)
    dx = _empty(x.shape, dtype=x.dtype)
    shape3 = (n, c, h * w)
    _lrn_backward_kernel(dy.reshape(shape3), x.reshape(shape3), dx.reshape(shape3),
                         before, after, coef, neg_beta, kk, coef2, *_lrn_tasks(n, c, h, w))
    return dx


# ============================================================== the SGD update

@_jit
def _sgd_kernel(w, g, v, lr, momentum, decay, n_chunks):
    """v = momentum v - lr g - decay w; w = w + v over flat arrays, in place, one pass."""
    for chunk in prange(n_chunks):
        t0, t1 = _chunk(chunk, n_chunks, w.size)
        ws, gs, vs = w[t0:t1], g[t0:t1], v[t0:t1]
        for i in range(t1 - t0):
            vi = vs[i] * momentum - gs[i] * lr - ws[i] * decay
            vs[i] = vi
            ws[i] += vi


def sgd_update(w, g, v, lr, momentum, decay):
    """One SGD step in place: v <- momentum v - lr g - decay w, then w <- w + v.

    w, g, v C-contiguous, same shape and dtype; one fused pass on all threads
    (five reads and writes per element instead of the vectorized version's
    eleven, and on every core: NumPy's ufuncs run on one).
    """
    for name, a in (("w", w), ("g", g), ("v", v)):
        if not a.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous for the numba SGD update")
    t = w.dtype.type
    _sgd_kernel(w.reshape(-1), g.reshape(-1), v.reshape(-1), t(lr), t(momentum), t(decay),
                _elementwise_chunks(w.size))


#: the kernel table the ``numba`` backend merges over the vectorized defaults
KERNELS = {
    "im2col": im2col,
    "col2im": col2im,
    "im2col_tile": im2col_tile,
    "col2im_tile": col2im_tile,
    "relu": relu,
    "relu_backward": relu_backward,
    "max_pool2d": max_pool2d,
    "max_unpool2d": max_unpool2d,
    "lrn": lrn,
    "lrn_backward": lrn_backward,
    "sgd_update": sgd_update,
}
