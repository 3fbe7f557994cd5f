"""The tile layout of the convolutions: one GEMM per tile and group.

* ``im2col_tile`` / ``col2im_tile`` of every backend against the loop
  references of zfraw.reference (the public (N, C*kh*kw, Ho*Wo) layout with the
  image axis moved beside the positions), and their adjointness;
* conv2d, conv_transpose2d and conv2d_backward against SciPy in float64 with
  workspace budgets that make tiles of several images, tiles that split the
  batch, and bands that split a plane (down to one row), grouped or not;
  gradient and adjoint checks through those tiled paths; conv2d_backward's dx
  (computed over the columns of x it has just used for dw) equal to
  conv_transpose2d's bit for bit, its inputs untouched;
* the tile planner: it covers the output once, in order, never exceeds the
  budget (except for the documented one-row minimum) and gives each GEMM
  thread its columns when the budget allows.
"""
import numpy as np
import pytest

import zfraw
from zfraw import functional as F
from zfraw import reference as R
from zfraw.gradcheck import adjoint_error, check_gradient_directions

from conftest import backend_params


def _host(a):
    return zfraw.to_host(a)


def _geometry(rng, max_n=4):
    """A random conv: shapes, stride, pad, groups."""
    groups = int(rng.integers(1, 4))
    cg, fg = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kh, kw = (int(v) for v in rng.integers(1, 5, size=2))
    sh, sw = (int(v) for v in rng.integers(1, 4, size=2))
    ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    h = int(rng.integers(max(1, kh - 2 * ph), 13))
    w = int(rng.integers(max(1, kw - 2 * pw), 13))
    n = int(rng.integers(1, max_n + 1))
    return (n, cg * groups, h, w), (fg * groups, cg, kh, kw), (sh, sw), (ph, pw), groups


def _tile_reference(x, kh, kw, stride, pad):
    """The tile layout from the loop reference: (N, K, P) -> (K, N*P)."""
    cols = R.im2col(x, kh, kw, stride, pad)
    n, k, p = cols.shape
    return cols.transpose(1, 0, 2).reshape(k, n * p)


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
def test_im2col_tile_and_col2im_tile_match_the_loop_references(backend, rng):
    for _ in range(20):
        x_shape, w_shape, stride, pad, _ = _geometry(rng)
        kh, kw = w_shape[2:]
        x = rng.standard_normal(x_shape)
        want = _tile_reference(x, kh, kw, stride, pad)
        d = rng.standard_normal(want.shape)
        n, k, p = x_shape[0], want.shape[0], want.shape[1] // x_shape[0]
        with zfraw.use_backend(backend) as be:
            cols = _host(be.kernel("im2col_tile")(zfraw.to_device(x), kh, kw, *stride, *pad))
            back = _host(be.kernel("col2im_tile")(zfraw.to_device(d), x_shape, kh, kw, *stride, *pad))
        np.testing.assert_array_equal(cols, want)  # a copy of input values: exact
        ref_back = R.col2im(d.reshape(k, n, p).transpose(1, 0, 2), x_shape, kh, kw, stride, pad)
        np.testing.assert_allclose(back, ref_back, rtol=1e-12, atol=1e-12)
        lhs, rhs = float(np.vdot(cols, d)), float(np.vdot(x, back))
        assert abs(lhs - rhs) <= 1e-10 * (abs(lhs) + 1)


def _column_bytes(x_shape, w_shape, itemsize=8):
    return x_shape[1] * w_shape[2] * w_shape[3] * itemsize


def _budgets(x_shape, w_shape, ho, wo):
    """Workspace budgets: the default (whole batch), two images per tile, a few
    rows per band (bands split each plane) and one byte (one-row bands)."""
    col = _column_bytes(x_shape, w_shape)
    return {"default": zfraw.workspace_bytes(), "two_images": 2 * col * ho * wo,
            "bands": max(1, ho // 3) * col * wo, "one_row": 1}


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
@pytest.mark.parametrize("budget_name", ["default", "two_images", "bands", "one_row"])
def test_tiled_convolutions_match_scipy(backend, budget_name, rng):
    for trial in range(4):
        x_shape, w_shape, stride, pad, groups = _geometry(rng, max_n=5)
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        b = rng.standard_normal(w_shape[0])
        y_ref = R.conv2d(x, w, b, stride, pad, groups)
        ho, wo = y_ref.shape[2:]
        dy = rng.standard_normal(y_ref.shape)
        old = zfraw.set_workspace_bytes(_budgets(x_shape, w_shape, ho, wo)[budget_name])
        try:
            with zfraw.use_backend(backend):
                tiles = F.conv_tiles(x_shape[0], ho, wo, _column_bytes(x_shape, w_shape))
                xd, wd, bd, dyd = (zfraw.to_device(a) for a in (x, w, b, dy))
                y = _host(F.conv2d(xd, wd, bd, stride, pad, groups))
                ct = _host(F.conv_transpose2d(dyd, wd, stride, pad, groups, output_shape=x_shape))
                dx, dw, db = (_host(a) for a in F.conv2d_backward(dyd, xd, wd, stride, pad, groups))
        finally:
            zfraw.set_workspace_bytes(old)
        if budget_name == "two_images":
            assert all(t[1] - t[0] <= 2 and t[2:] == (0, ho) for t in tiles)
        if budget_name == "one_row":
            assert len(tiles) == x_shape[0] * ho
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
        ct_ref = R.conv_transpose2d(dy, w, stride, pad, groups, output_shape=x_shape)
        np.testing.assert_allclose(ct, ct_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx, ct_ref, rtol=1e-10, atol=1e-10)
        # dw[f, c, i, j] = sum_n sum_p dy[n, f, p] cols[n, (g, c, i, j), p], from the loop im2col
        cols = R.im2col(x, *w_shape[2:], stride, pad)
        n, fg, kg = x_shape[0], w_shape[0] // groups, w_shape[1] * w_shape[2] * w_shape[3]
        dw_ref = np.einsum("ngfp,ngkp->gfk", dy.reshape(n, groups, fg, -1),
                           cols.reshape(n, groups, kg, -1)).reshape(w_shape)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(db, dy.sum(axis=(0, 2, 3)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
def test_gradients_and_adjoint_through_banded_tiles(backend, rng):
    for _ in range(3):
        x_shape, w_shape, stride, pad, groups = _geometry(rng, max_n=3)
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        ho, wo = R.conv2d(x, w, None, stride, pad, groups).shape[2:]
        dy = rng.standard_normal((x_shape[0], w_shape[0], ho, wo))
        old = zfraw.set_workspace_bytes(_budgets(x_shape, w_shape, ho, wo)["bands"])
        try:
            with zfraw.use_backend(backend):
                xd, wd, dyd = (zfraw.to_device(a) for a in (x, w, dy))
                dx, dw, _ = F.conv2d_backward(dyd, xd, wd, stride, pad, groups)
                loss_x = lambda v: float((F.conv2d(v, wd, None, stride, pad, groups) * dyd).sum())  # noqa: E731
                loss_w = lambda v: float((F.conv2d(xd, v, None, stride, pad, groups) * dyd).sum())  # noqa: E731
                assert check_gradient_directions(loss_x, xd, dx, rng) < 1e-6
                assert check_gradient_directions(loss_w, wd, dw, rng) < 1e-6
                err = adjoint_error(lambda v: F.conv2d(v, wd, None, stride, pad, groups),
                                    lambda u: F.conv_transpose2d(u, wd, stride, pad, groups, x_shape), xd, dyd)
        finally:
            zfraw.set_workspace_bytes(old)
        assert err < 1e-12


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
@pytest.mark.parametrize("budget_name", ["default", "two_images", "bands", "one_row"])
def test_backward_shares_its_tiles_with_the_transpose_and_leaves_its_inputs_alone(backend, budget_name, rng):
    """conv2d_backward computes dx in the tile loop of dw, over the columns of x it
    has just used: dx must be conv_transpose2d's result bit for bit, x and dy
    unchanged (1x1 kernels included, whose columns are x's own values), and
    dw, db the same with ``input_grad=False``."""
    for trial in range(4):
        x_shape, w_shape, stride, pad, groups = _geometry(rng, max_n=4)
        if trial == 0:  # a 1x1 kernel, stride 1, no pad: the columns are a copy of x
            x_shape, w_shape, stride, pad = x_shape, w_shape[:2] + (1, 1), (1, 1), (0, 0)
        x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
        ho, wo = R.conv2d(x, w, None, stride, pad, groups).shape[2:]
        dy = rng.standard_normal((x_shape[0], w_shape[0], ho, wo))
        old = zfraw.set_workspace_bytes(_budgets(x_shape, w_shape, ho, wo)[budget_name])
        try:
            with zfraw.use_backend(backend):
                xd, wd, dyd = (zfraw.to_device(a) for a in (x, w, dy))
                dx, dw, db = (_host(a) for a in F.conv2d_backward(dyd, xd, wd, stride, pad, groups))
                ct = _host(F.conv_transpose2d(dyd, wd, stride, pad, groups, output_shape=x_shape))
                none, dw2, db2 = F.conv2d_backward(dyd, xd, wd, stride, pad, groups, input_grad=False)
                x_after, dy_after = _host(xd), _host(dyd)
        finally:
            zfraw.set_workspace_bytes(old)
        np.testing.assert_array_equal(dx, ct)
        np.testing.assert_array_equal(x_after, x)
        np.testing.assert_array_equal(dy_after, dy)
        assert none is None
        np.testing.assert_array_equal(_host(dw2), dw)
        np.testing.assert_array_equal(_host(db2), db)


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
def test_backward_of_an_empty_batch(backend):
    with zfraw.use_backend(backend):
        x = zfraw.to_device(np.zeros((0, 4, 6, 6)))
        w = zfraw.to_device(np.ones((4, 2, 3, 3)))
        dy = zfraw.to_device(np.zeros((0, 4, 4, 4)))
        dx, dw, db = (_host(a) for a in F.conv2d_backward(dy, x, w, groups=2))
    assert dx.shape == (0, 4, 6, 6)
    np.testing.assert_array_equal(dw, np.zeros((4, 2, 3, 3)))
    np.testing.assert_array_equal(db, np.zeros(4))


@pytest.mark.parametrize("threads", [None, 1, 2, 16])
def test_tile_planner_covers_the_output_within_the_budget(threads, rng, monkeypatch):
    monkeypatch.setattr(zfraw.get_backend(), "threads", None if threads is None else (lambda: threads))
    old = zfraw.workspace_bytes()
    try:
        for _ in range(300):
            n, ho, wo = (int(v) for v in rng.integers(1, 40, size=3))
            column_bytes = int(rng.integers(1, 5000))
            plane = column_bytes * ho * wo
            budget = int(rng.integers(1, 3 * n * plane))
            zfraw.set_workspace_bytes(budget)
            tiles = F.conv_tiles(n, ho, wo, column_bytes)
            covered = [(i, r) for n0, n1, r0, r1 in tiles for i in range(n0, n1) for r in range(r0, r1)]
            assert covered == [(i, r) for i in range(n) for r in range(ho)]  # once each, in order
            target = None if threads is None else threads * F.GEMM_COLUMNS_PER_THREAD
            banded = plane > budget or (target is not None and ho * wo > target)
            for n0, n1, r0, r1 in tiles:
                nbytes = column_bytes * (n1 - n0) * (r1 - r0) * wo
                one_row = n1 - n0 == 1 and r1 - r0 == 1 and column_bytes * wo > budget
                assert nbytes <= budget or one_row, (n, ho, wo, column_bytes, budget, (n0, n1, r0, r1))
                assert (n1 - n0 == 1) if banded else ((r0, r1) == (0, ho))
            if banded:  # bands of at least T columns (or the whole plane) where the budget does not bind
                rows_wanted = ho if target is None else min(ho, -(-target // wo))
                if 2 * rows_wanted * column_bytes * wo <= budget:
                    assert min(r1 - r0 for _, _, r0, r1 in tiles) >= rows_wanted
            else:  # whole images, at least T columns' worth where the budget does not bind
                fit = budget // plane
                want = n if target is None else -(-target // (ho * wo))
                if min(n, want) * 2 <= fit:
                    assert min(n1 - n0 for n0, n1, _, _ in tiles) >= min(n, want)
    finally:
        zfraw.set_workspace_bytes(old)
    assert F.conv_tiles(0, 3, 3, 10) == []
