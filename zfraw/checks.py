"""``zfraw check``: every op held against SciPy, its gradient and its transpose.

The user-facing form of the test suite, for anyone verifying their own
understanding or a new backend.  Three kinds of check, on seeded random inputs:

- ``reference``: the op on the chosen backend against the independent float64
  SciPy/loop reference in :mod:`zfraw.reference`; ||out - ref|| / ||ref|| under
  1e-12 in float64, 1e-5 in float32; switches must be identical;
- ``gradient``: analytic gradients against central differences in float64 (for
  the ops and for a whole small net with every layer type);
- ``adjoint``: ``<A x, y> == <x, A^T y>`` in float64, for every pair the
  deconvnet relies on, and ``conv_transpose2d(y) == C^T y`` with the explicit C.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from zfraw import functional as F
from zfraw import reference as R
from zfraw.backend import get_array_module, to_device, to_host, use_backend
from zfraw.gradcheck import adjoint_error, check_gradient, check_gradient_directions, relative_error, tie_free

__all__ = ["Check", "run_checks", "format_table", "TOLERANCE", "conv_case", "pool_case"]

#: tolerance of each kind of check (reference tolerances per dtype)
TOLERANCE = {
    ("reference", "float64"): 1e-12,
    ("reference", "float32"): 1e-5,
    ("gradient", "float64"): 1e-6,
    ("adjoint", "float64"): 1e-12,
}


@dataclass
class Check:
    """One row of the table: ``op`` checked on ``case`` (its shapes and geometry) by ``kind`` in ``dtype``."""

    op: str
    kind: str
    dtype: str
    error: float
    tolerance: float
    case: str = ""

    @property
    def passed(self):
        return bool(np.isfinite(self.error) and self.error <= self.tolerance)


# ============================================================== the cases

def _dims(shape):
    return "x".join(str(int(s)) for s in shape)


def _geometry(stride, pad):
    def text(v):
        return "x".join(map(str, v)) if isinstance(v, (tuple, list)) else str(v)
    return f"stride {text(stride)} pad {text(pad)}"


def conv_case(xs, ws, stride, pad, groups):
    """The label of a conv case: 'x 2x4x9x8 w 6x2x3x3 stride 2 pad 1 groups 2'."""
    return f"x {_dims(xs)} w {_dims(ws)} {_geometry(stride, pad)}" + (f" groups {groups}" if groups != 1 else "")


def pool_case(xs, size, stride, pad, ceil):
    """The label of a pooling case: 'x 2x3x10x10 size 3 stride 2 pad 0 ceil'."""
    size = "x".join(map(str, size)) if isinstance(size, (tuple, list)) else size
    return f"x {_dims(xs)} size {size} {_geometry(stride, pad)}" + (" ceil" if ceil else "")


# (x shape, w shape, stride, pad, groups): AlexNet-like groups, ZFNet-like stride 2
CONV_CASES = [((2, 4, 9, 8), (6, 2, 3, 3), 2, 1, 2), ((1, 3, 11, 11), (4, 3, 5, 5), (2, 1), (0, 2), 1)]
# (x shape, size, stride, pad, ceil_mode): ZFNet's overlapping 3x3/2 with ceil, and a padded one
POOL_CASES = [((2, 3, 10, 10), 3, 2, 0, True), ((1, 2, 7, 9), (3, 2), (2, 1), (1, 1), False)]


def _reference_checks(rng, dtype, dev):
    """(op, error) pairs of the fast ops on the backend against SciPy references."""
    out = []

    def rand(*shape):
        return rng.standard_normal(shape).astype(dtype)

    for xs, ws, stride, pad, groups in CONV_CASES:
        case = conv_case(xs, ws, stride, pad, groups)
        x, w, b = rand(*xs), rand(*ws), rand(ws[0])
        kh, kw = ws[2:]
        y = F.conv2d(dev(x), dev(w), dev(b), stride, pad, groups)
        out.append(("conv2d", case, relative_error(to_host(y), R.conv2d(x, w, b, stride, pad, groups))))
        dy = rand(*y.shape)
        out.append(("conv_transpose2d", case, relative_error(
            to_host(F.conv_transpose2d(dev(dy), dev(w), stride, pad, groups, output_shape=xs)),
            R.conv_transpose2d(dy, w, stride, pad, groups, output_shape=xs))))
        xg = x[:, : ws[1]]  # im2col/col2im on the first group's channels
        cols = F.im2col(dev(xg), kh, kw, stride, pad)
        unfold_case = f"x {_dims(xg.shape)} window {kh}x{kw} {_geometry(stride, pad)}"
        out.append(("im2col", unfold_case, relative_error(to_host(cols), R.im2col(xg, kh, kw, stride, pad))))
        dc = rand(*cols.shape)
        out.append(("col2im", unfold_case, relative_error(to_host(F.col2im(dev(dc), xg.shape, kh, kw, stride, pad)),
                                                          R.col2im(dc, xg.shape, kh, kw, stride, pad))))
    for xs, size, stride, pad, ceil in POOL_CASES:
        case = pool_case(xs, size, stride, pad, ceil)
        x = np.round(rand(*xs) * 2) / 2  # quantized: many ties, which the switches must break alike
        y, sw = F.max_pool2d(dev(x), size, stride, pad, ceil)
        ry, rsw = R.max_pool2d(x, size, stride, pad, ceil)
        out.append(("max_pool2d", case, relative_error(to_host(y), ry)))
        out.append(("max_pool2d switches", case, float(np.mean(to_host(sw) != rsw))))
        dy = rand(*y.shape)
        out.append(("max_unpool2d", case, relative_error(
            to_host(F.max_unpool2d(dev(dy), sw, xs, size=size, stride=stride, pad=pad)),
            R.max_unpool2d(dy, rsw, xs))))
    x, s = rand(2, 7, 5, 4), rand(2, 7, 5, 4)
    for rule in F.RELU_RULES:
        out.append((f"relu_backward {rule}", f"x {_dims(x.shape)}", relative_error(
            to_host(F.relu_backward(dev(s), dev(x), rule)), R.relu_backward(s, x, rule))))
    x, dy = rand(2, 7, 5, 4) * 3, rand(2, 7, 5, 4)
    for size, k in ((5, 2.0), (4, 1.0)):
        args = (size, 1e-1, 0.75, k)
        case = f"x {_dims(x.shape)} size {size} alpha 0.1 beta 0.75 k {k:g}"
        out.append(("local_response_norm", case,
                    relative_error(to_host(F.local_response_norm(dev(x), *args)), R.local_response_norm(x, *args))))
        out.append(("local_response_norm_backward", case, relative_error(
            to_host(F.local_response_norm_backward(dev(dy), dev(x), *args)), R.local_response_norm_backward(dy, x, *args))))
    x, w, b, dy = rand(5, 12), rand(7, 12), rand(7), rand(5, 7)
    case = f"x {_dims(x.shape)} w {_dims(w.shape)}"
    out.append(("linear", case, relative_error(to_host(F.linear(dev(x), dev(w), dev(b))), R.linear(x, w, b))))
    got = F.linear_backward(dev(dy), dev(x), dev(w))
    want = R.linear_backward(dy, x, w)
    out.append(("linear_backward", case, max(relative_error(to_host(g), r) for g, r in zip(got, want))))
    z, labels = rand(6, 10) * 3, rng.integers(0, 10, 6)
    case = f"z {_dims(z.shape)}"
    out.append(("softmax", case, relative_error(to_host(F.softmax(dev(z))), R.softmax(z))))
    loss, dz = F.cross_entropy(dev(z), dev(labels))
    rloss, rdz = R.cross_entropy(z, labels)
    out.append(("cross_entropy", case, max(abs(loss - rloss) / abs(rloss), relative_error(to_host(dz), rdz))))
    return out


def _gradient_checks(rng, dev):
    """(op, error) of analytic gradients against central differences, float64."""
    out = []
    x, w, b = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 3)), rng.standard_normal(6)
    stride, pad, groups = 2, 1, 2
    y = F.conv2d(dev(x), dev(w), dev(b), stride, pad, groups)
    r = rng.standard_normal(y.shape)  # loss = <conv(x), r>, so dL/dy = r
    dx, dw, db = (to_host(a) for a in F.conv2d_backward(dev(r), dev(x), dev(w), stride, pad, groups))

    def conv_loss(x_, w_, b_):
        return float(np.vdot(to_host(F.conv2d(dev(x_), dev(w_), dev(b_), stride, pad, groups)), r))

    case = conv_case(x.shape, w.shape, stride, pad, groups)
    out.append(("conv2d dx", case, check_gradient(lambda a: conv_loss(a, w, b), x, dx)))
    out.append(("conv2d dw", case, check_gradient(lambda a: conv_loss(x, a, b), w, dw)))
    out.append(("conv2d db", case, check_gradient(lambda a: conv_loss(x, w, a), b, db)))

    x = tie_free((2, 3, 9, 9), rng)
    y, sw = F.max_pool2d(dev(x), 3, 2, 0, True)
    r = rng.standard_normal(y.shape)
    dx = to_host(F.max_unpool2d(dev(r), sw, x.shape, size=3, stride=2))
    out.append(("max_pool2d dx", pool_case(x.shape, 3, 2, 0, True), check_gradient(
        lambda a: float(np.vdot(to_host(F.max_pool2d(dev(a), 3, 2, 0, True)[0]), r)), x, dx)))

    x = rng.standard_normal((2, 6, 3, 3)) * 2
    r = rng.standard_normal(x.shape)
    args = (5, 0.5, 0.75, 1.0)  # a large alpha so the normalization matters
    dx = to_host(F.local_response_norm_backward(dev(r), dev(x), *args))
    out.append(("local_response_norm dx", f"x {_dims(x.shape)} size 5 alpha 0.5 beta 0.75 k 1", check_gradient(
        lambda a: float(np.vdot(to_host(F.local_response_norm(dev(a), *args)), r)), x, dx)))

    x, w, b = rng.standard_normal((4, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)
    r = rng.standard_normal((4, 3))
    dx, dw, db = (to_host(a) for a in F.linear_backward(dev(r), dev(x), dev(w)))

    def lin_loss(x_, w_, b_):
        return float(np.vdot(to_host(F.linear(dev(x_), dev(w_), dev(b_))), r))

    case = f"x {_dims(x.shape)} w {_dims(w.shape)}"
    out.append(("linear dx", case, check_gradient(lambda a: lin_loss(a, w, b), x, dx)))
    out.append(("linear dw", case, check_gradient(lambda a: lin_loss(x, a, b), w, dw)))
    out.append(("linear db", case, check_gradient(lambda a: lin_loss(x, w, a), b, db)))

    z, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    _, dz = F.cross_entropy(dev(z), dev(labels))
    out.append(("cross_entropy dz", f"z {_dims(z.shape)}", check_gradient(lambda a: F.cross_entropy(dev(a), dev(labels))[0], z, to_host(dz))))

    x = rng.standard_normal((3, 8))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    r = rng.standard_normal(x.shape)
    out.append(("relu dx", f"x {_dims(x.shape)}", check_gradient(lambda a: float(np.vdot(to_host(F.relu(dev(a))), r)), x,
                                          to_host(F.relu_backward(dev(r), dev(x), "backprop")))))
    out.extend(_net_gradient_checks(rng, dev))
    return out


def small_net(seed=0):
    """A tiny float64 net with every layer type (input normalization, conv, relu, pool, LRN, flatten,
    linear, dropout, softmax)."""
    from zfraw import nn

    layers = [
        ("input", nn.Normalize("BGR", 2.0, mean=(0.1, -0.2, 0.3), std=(0.9, 1.1, 1.3))),
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, init_std=0.5, seed=seed)), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(3, 2, ceil_mode=True)), ("norm1", nn.LocalResponseNorm(3, 0.5, 0.75, 1.0)),
        ("conv2", nn.Conv2d(4, 6, 3, 2, 1, groups=2, init_std=0.5, seed=seed + 1)), ("relu2", nn.ReLU()),
        ("flatten", nn.Flatten()), ("fc3", nn.Linear(6 * 2 * 2, 12, init_std=0.3, seed=seed + 2)),
        ("relu3", nn.ReLU()), ("drop3", nn.Dropout(0.25, seed=seed + 3)),
        ("fc4", nn.Linear(12, 4, init_std=0.3, seed=seed + 4)), ("prob", nn.Softmax()),
    ]
    net = nn.Sequential(layers, input_shape=(3, 9, 9), name="small")
    for name, p in net.parameters().items():  # positive biases keep most rectifiers open
        if name.endswith(".b"):
            bias = 0.2 + 0.1 * np.random.default_rng(seed + 9).standard_normal(p.shape)
            p[...] = get_array_module(p).asarray(bias)  # parameters live on the active backend
    return net.astype(np.float64)


def _net_gradient_checks(rng, dev):
    """The whole small net in training mode (dropout with a fixed mask), every parameter and the input."""
    net = to_device(small_net(int(rng.integers(1000))))
    x = dev(rng.standard_normal((2, 3, 9, 9)))
    labels = dev(rng.integers(0, 4, 2))
    drop = net["drop3"]

    def loss_at(params=None, x_=x):
        drop.rng = np.random.default_rng(7)  # the same dropout mask at every evaluation
        net.train()
        return F.cross_entropy(net.forward(x_, keep=False), labels)

    _, dz = loss_at()
    dx = to_host(net.backward(dz))
    grads = {k: to_host(g) for k, g in net.gradients().items()}
    def checked(f, value, grad):
        if not np.any(grad):  # a dead net would pass vacuously
            return float("inf")
        return check_gradient_directions(f, value, grad, rng, 6)

    case = "small_net, x 2x3x9x9, training mode"
    out = [("net dx", case, checked(lambda a: loss_at(x_=dev(a))[0], to_host(x), dx))]
    for name, p in net.parameters().items():
        host = to_host(p)

        def f(a, name=name):
            net.set_parameter(name, dev(a))
            try:
                return loss_at()[0]
            finally:
                net.set_parameter(name, p)

        out.append((f"net {name}", case, checked(f, host, grads[name])))
    return out


def _adjoint_checks(rng, dev):
    """(op, error) of <A x, y> against <x, A^T y> in float64."""
    out = []
    for xs, ws, stride, pad, groups in CONV_CASES:
        case = conv_case(xs, ws, stride, pad, groups)
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        y = rng.standard_normal(to_host(F.conv2d(dev(x), dev(w), None, stride, pad, groups)).shape)
        out.append(("conv2d / conv_transpose2d", case, adjoint_error(
            lambda a: to_host(F.conv2d(dev(a), dev(w), None, stride, pad, groups)),
            lambda a: to_host(F.conv_transpose2d(dev(a), dev(w), stride, pad, groups, output_shape=xs)), x, y)))
        kh, kw = ws[2:]
        cols_shape = to_host(F.im2col(dev(x), kh, kw, stride, pad)).shape
        out.append(("im2col / col2im", f"x {_dims(xs)} window {kh}x{kw} {_geometry(stride, pad)}", adjoint_error(
            lambda a: to_host(F.im2col(dev(a), kh, kw, stride, pad)),
            lambda a: to_host(F.col2im(dev(a), xs, kh, kw, stride, pad)), x, rng.standard_normal(cols_shape))))
        # the explicit sparse C of one image: C^T y must be the deconvolution
        C = F.conv_matrix(w, xs[1:], stride, pad, groups)
        y1 = y[:1]
        out.append(("conv_matrix C^T y", case, relative_error(
            to_host(F.conv_transpose2d(dev(y1), dev(w), stride, pad, groups, output_shape=xs[2:])).ravel(),
            C.T @ y1.ravel())))
    for xs, size, stride, pad, ceil in POOL_CASES:
        x = rng.standard_normal(xs)
        _, sw = F.max_pool2d(dev(x), size, stride, pad, ceil)
        sw_host = to_host(sw)

        def select(a):  # the pooling selection: pick the values at the switches
            flat = a.reshape(a.shape[0], a.shape[1], -1)
            return np.take_along_axis(flat, sw_host.reshape(a.shape[0], a.shape[1], -1), axis=2).reshape(sw_host.shape)

        out.append(("pool selection / max_unpool2d", pool_case(xs, size, stride, pad, ceil), adjoint_error(
            select, lambda a: to_host(F.max_unpool2d(dev(a), sw, xs)), x, rng.standard_normal(sw_host.shape))))
    w = rng.standard_normal((5, 8))
    out.append(("linear / transpose", "x 3x8 w 5x8", adjoint_error(
        lambda a: to_host(F.linear(dev(a), dev(w))), lambda a: to_host(dev(a) @ dev(w)),
        rng.standard_normal((3, 8)), rng.standard_normal((3, 5)))))
    return out


# ============================================================== running and printing

def run_checks(backend="numpy", seed=0, kinds=("reference", "gradient", "adjoint")):
    """Run every check on ``backend``; returns a list of :class:`Check`."""
    results = []
    with use_backend(backend):
        dev = to_device
        if "reference" in kinds:
            for dtype in (np.float64, np.float32):
                rng = np.random.default_rng(seed)
                name = np.dtype(dtype).name
                for op, case, err in _reference_checks(rng, dtype, dev):
                    tol = 0.0 if op.endswith("switches") else TOLERANCE[("reference", name)]
                    results.append(Check(op, "reference", name, err, tol, case))
        if "gradient" in kinds:
            for op, case, err in _gradient_checks(np.random.default_rng(seed + 1), dev):
                results.append(Check(op, "gradient", "float64", err, TOLERANCE[("gradient", "float64")], case))
        if "adjoint" in kinds:
            for op, case, err in _adjoint_checks(np.random.default_rng(seed + 2), dev):
                results.append(Check(op, "adjoint", "float64", err, TOLERANCE[("adjoint", "float64")], case))
    return results


def format_table(results):
    """An aligned text table: op, case (shapes, stride, pad), check, dtype, max error, tolerance, pass/FAIL."""
    header = ("op", "case", "check", "dtype", "error", "tolerance", "result")
    rows = [(r.op, r.case or "-", r.kind, r.dtype, f"{r.error:.2e}", f"{r.tolerance:.0e}",
             "pass" if r.passed else "FAIL") for r in results]
    widths = [max(len(str(row[i])) for row in rows + [header]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w for w in widths)
    out = [line.format(*header), "  ".join("-" * w for w in widths)]
    out += [line.format(*row) for row in rows]
    failed = sum(not r.passed for r in results)
    out.append(f"\n{len(results) - failed} of {len(results)} checks passed" + (f", {failed} FAILED" if failed else ""))
    return "\n".join(out)


def main(backend="numpy", seed=0):
    """Print the table for ``backend``; returns the process exit status (1 if anything failed)."""
    t0 = time.perf_counter()
    print(f"zfraw check on backend {backend!r} (seed {seed})\n", flush=True)
    results = run_checks(backend, seed)
    print(format_table(results))
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0 if all(r.passed for r in results) else 1
