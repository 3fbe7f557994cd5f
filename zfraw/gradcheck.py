"""Gradient and transpose (adjoint) checks by finite differences.

Used by the tests and by ``zfraw check``.  Everything is computed in float64:

* :func:`numerical_gradient` -- central differences, one coordinate at a time;
* :func:`directional_derivative` -- (f(x + eps v) - f(x - eps v)) / (2 eps), the
  cheap check along a direction (Chainer's ``check_backward`` idea): it needs
  two evaluations of f per direction instead of two per coordinate;
* :func:`check_gradient` -- the relative error of an analytic gradient against
  either of them;
* :func:`adjoint_error` -- how far ``AT`` is from the transpose of ``A``:
  ``|<A x, y> - <x, AT y>|`` relative to the sizes of both sides;
* :func:`tie_free` -- random inputs without ties (a shuffled ``linspace``),
  so that max-pooling is differentiable at them.

The arrays may be NumPy or CuPy; ``f`` must return a scalar (a Python float or a
0-d array).
"""
from __future__ import annotations

import numpy as np

from zfraw.backend import get_array_module

__all__ = [
    "numerical_gradient", "directional_derivative", "check_gradient",
    "check_gradient_directions", "adjoint_error", "relative_error", "tie_free",
]


def _vdot(a, b):
    """<a, b> over all elements, as a Python float."""
    xp = get_array_module(a, b)
    return float(xp.vdot(a.ravel(), b.ravel()))


def _norm(a):
    xp = get_array_module(a)
    return float(xp.linalg.norm(a.ravel()))


def relative_error(actual, expected):
    """||actual - expected|| / ||expected|| (0 when both are zero, inf when only expected is)."""
    xp = get_array_module(actual, expected)
    diff = _norm(xp.asarray(actual, dtype=np.float64) - xp.asarray(expected, dtype=np.float64))
    scale = _norm(xp.asarray(expected, dtype=np.float64))
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def numerical_gradient(f, x, eps=1e-6):
    """Central-difference gradient of a scalar function at x.

    Parameters
    ----------
    f : callable
        f(x) -> scalar; it is called with ``x`` itself, perturbed in place one
        element at a time (and restored), so it must not keep a reference to x.
    x : float64 array, any shape
    eps : float
        The step: g[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps).

    Returns
    -------
    g : float64 array of x's shape.  Costs 2 x.size evaluations of f.
    """
    xp = get_array_module(x)
    if x.dtype != np.float64:
        raise TypeError(f"x must be float64 for a numerical gradient, got {x.dtype}")
    grad = xp.empty(x.shape, dtype=np.float64)
    if not x.flags.c_contiguous:
        raise ValueError("x must be C-contiguous (it is perturbed in place through a flat view)")
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + eps
        up = float(f(x))
        flat[i] = old - eps
        down = float(f(x))
        flat[i] = old
        gflat[i] = (up - down) / (2.0 * eps)
    return grad


def directional_derivative(f, x, v, eps=1e-6):
    """(f(x + eps v) - f(x - eps v)) / (2 eps): the derivative of f at x along v."""
    return (float(f(x + eps * v)) - float(f(x - eps * v))) / (2.0 * eps)


def check_gradient(f, x, grad, eps=1e-6):
    """Relative error of an analytic gradient against central differences.

    Parameters
    ----------
    f : callable, f(x) -> scalar
    x : float64 array (left unchanged)
    grad : array of x's shape, the analytic df/dx at x
    eps : float, the finite-difference step

    Returns
    -------
    float : ||grad - g_num|| / max(||g_num||, ||grad||) (0 when both vanish).
    """
    if tuple(grad.shape) != tuple(x.shape):
        raise ValueError(f"grad must have x's shape {tuple(x.shape)}, got {tuple(grad.shape)}")
    num = numerical_gradient(f, x.copy(), eps)
    return _symmetric_error(grad, num)


def check_gradient_directions(f, x, grad, rng, n_directions=4, eps=1e-6):
    """Relative error of an analytic gradient along random directions (Chainer-style).

    For each random unit direction v (standard normal, normalized), compares
    ``<grad, v>`` with :func:`directional_derivative` of f along v.

    Returns
    -------
    float : max over directions of |<grad, v> - D_v f| / max(||grad||, |D_v f|, tiny).
    """
    xp = get_array_module(x)
    worst = 0.0
    gnorm = _norm(grad)
    for _ in range(n_directions):
        v = xp.asarray(rng.standard_normal(x.shape))
        v /= _norm(v)
        analytic = _vdot(grad, v)
        numeric = directional_derivative(f, x, v, eps)
        scale = max(gnorm, abs(numeric), 1e-300)
        worst = max(worst, abs(analytic - numeric) / scale)
    return worst


def _symmetric_error(a, b):
    xp = get_array_module(a, b)
    a = xp.asarray(a, dtype=np.float64)
    b = xp.asarray(b, dtype=np.float64)
    scale = max(_norm(a), _norm(b))
    if scale == 0.0:
        return 0.0
    return _norm(a - b) / scale


def adjoint_error(A, AT, x, y):
    """How far ``AT`` is from the transpose of the linear map ``A``.

    Parameters
    ----------
    A : callable, x -> A x
    AT : callable, y -> A^T y (claimed)
    x : array in A's domain;  y : array of A x's shape

    Returns
    -------
    float : |<A x, y> - <x, AT y>| / max(||A x|| ||y||, ||x|| ||AT y||),
        which is at the round-off of the dtype when AT is A's transpose.
    """
    ax, aty = A(x), AT(y)
    if tuple(ax.shape) != tuple(y.shape):
        raise ValueError(f"y must have the shape of A(x), {tuple(ax.shape)}, got {tuple(y.shape)}")
    if tuple(aty.shape) != tuple(x.shape):
        raise ValueError(f"AT(y) has shape {tuple(aty.shape)} but x has {tuple(x.shape)}")
    lhs, rhs = _vdot(ax, y), _vdot(x, aty)
    scale = max(_norm(ax) * _norm(y), _norm(x) * _norm(aty))
    if scale == 0.0:
        return 0.0 if lhs == rhs else float("inf")
    return abs(lhs - rhs) / scale


def tie_free(shape, rng, low=-1.0, high=1.0, dtype=np.float64):
    """A random array of distinct values: a shuffled ``linspace(low, high)``.

    Neighbouring values are (high - low) / (size - 1) apart, so a finite-difference
    step well below that never changes which element of a max-pool window wins.
    """
    size = int(np.prod(shape))
    values = np.linspace(low, high, size)
    rng.shuffle(values)
    return values.reshape(shape).astype(dtype)
