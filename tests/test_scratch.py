"""The backends' scratch buffers (Backend.scratch, zfraw.release_workspace).

The CPU backends keep each convolution's column buffers between calls, one per
slot and thread.  Checked: a buffer is reused when nothing holds it, never while
a view of it is alive, grows to the largest request, is private to its thread,
and is freed by release_workspace; a backend that does not keep them (the GPU
ones, whose memory pool reuses) returns a new array each time.  The
convolutions give the SciPy results on every backend when every scratch buffer
they get is poisoned with NaN (every element written), over tiles of several
images, tiles that split the batch and row bands.
"""
import threading

import numpy as np
import pytest

import zfraw
from zfraw import functional as F
from zfraw import reference as R
from zfraw.backend import Backend

from conftest import backend_params


@pytest.fixture
def host():
    b = Backend("test", np, keeps_scratch=True)
    yield b
    b.release_scratch()


def _address(a):
    return a.__array_interface__["data"][0]


def test_a_free_buffer_is_reused_and_a_smaller_request_fits_in_it(host):
    a = host.scratch("columns", (64, 100), np.float32)
    first = _address(a)
    del a
    b = host.scratch("columns", (64, 100), np.float32)
    assert _address(b) == first and b.shape == (64, 100) and b.dtype == np.float32 and b.flags.c_contiguous
    del b
    c = host.scratch("columns", (10, 7), np.float64)  # smaller, another dtype: the same memory
    assert _address(c) == first and c.dtype == np.float64
    del c
    d = host.scratch("columns", (64, 1000), np.float32)  # larger: a new buffer
    assert d.nbytes == 64 * 1000 * 4
    assert host.release_scratch() == d.nbytes
    other = host.scratch("product", (3,), np.float32)  # slots are separate buffers
    assert not np.shares_memory(other, d)


def test_a_buffer_still_referenced_is_never_handed_out_again(host):
    a = host.scratch("columns", (1000,), np.float64)
    a[:] = 1.0
    view = a[10:20]
    del a
    b = host.scratch("columns", (1000,), np.float64)  # the view keeps the old buffer alive
    assert not np.shares_memory(b, view)
    b[:] = 2.0
    np.testing.assert_array_equal(view, 1.0)
    kept = _address(b)
    del view, b
    c = host.scratch("columns", (1000,), np.float64)  # the new buffer, free again: reused
    assert _address(c) == kept


def test_each_thread_has_its_own_buffers(host):
    mine = host.scratch("columns", (100,), np.float32)
    theirs = []
    worker = threading.Thread(target=lambda: theirs.append(host.scratch("columns", (100,), np.float32)))
    worker.start()
    worker.join()
    assert not np.shares_memory(mine, theirs[0])


def test_release_workspace_frees_the_cpu_backends_buffers():
    zfraw.release_workspace()
    with zfraw.use_backend("numpy"):
        x = np.ones((2, 3, 9, 9), dtype=np.float32)
        F.conv2d(x, np.ones((4, 3, 3, 3), dtype=np.float32))
    assert zfraw.release_workspace() >= 3 * 3 * 3 * 2 * 7 * 7 * 4  # the columns of both images
    assert zfraw.release_workspace() == 0


def test_a_backend_that_does_not_keep_scratch_allocates_each_time():
    b = Backend("gpu-like", np, keeps_scratch=False)
    a = b.scratch("columns", (100,), np.float32)
    del a
    assert b.release_scratch() == 0


def _poison_scratch(monkeypatch, backend):
    real = type(backend).scratch

    def poisoned(self, slot, shape, dtype):
        out = real(self, slot, shape, dtype)
        out.fill(np.nan)
        return out

    monkeypatch.setattr(type(backend), "scratch", poisoned)


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
def test_convolutions_write_every_element_of_their_scratch(backend, rng, monkeypatch):
    for trial in range(6):
        groups = int(rng.integers(1, 3))
        n, cg, fg = int(rng.integers(1, 4)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
        kh, kw = (int(v) for v in rng.integers(1, 4, size=2))
        stride, pad = (int(rng.integers(1, 3)),) * 2, (int(rng.integers(0, kh)), int(rng.integers(0, kw)))
        x = rng.standard_normal((n, cg * groups, 8, 9))
        w = rng.standard_normal((fg * groups, cg, kh, kw))
        y_ref = R.conv2d(x, w, None, stride, pad, groups)
        dy = rng.standard_normal(y_ref.shape)
        ho, wo = y_ref.shape[2:]
        column = cg * groups * kh * kw * 8
        budget = [zfraw.workspace_bytes(), 2 * column * ho * wo, column * wo][trial % 3]  # batch, 2 images, 1-row bands
        old = zfraw.set_workspace_bytes(budget)
        try:
            with zfraw.use_backend(backend) as be:
                _poison_scratch(monkeypatch, be)
                xd, wd, dyd = (zfraw.to_device(a) for a in (x, w, dy))
                y = zfraw.to_host(F.conv2d(xd, wd, None, stride, pad, groups))
                ct = zfraw.to_host(F.conv_transpose2d(dyd, wd, stride, pad, groups, output_shape=x.shape))
                dx, dw, _ = (zfraw.to_host(a) for a in F.conv2d_backward(dyd, xd, wd, stride, pad, groups))
                monkeypatch.undo()
        finally:
            zfraw.set_workspace_bytes(old)
        ct_ref = R.conv_transpose2d(dy, w, stride, pad, groups, output_shape=x.shape)
        np.testing.assert_allclose(y, y_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(ct, ct_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx, ct_ref, rtol=1e-10, atol=1e-10)
        cols = R.im2col(x, kh, kw, stride, pad)
        dw_ref = np.einsum("ngfp,ngkp->gfk", dy.reshape(n, groups, fg, -1),
                           cols.reshape(n, groups, cg * kh * kw, -1)).reshape(w.shape)
        np.testing.assert_allclose(dw, dw_ref, rtol=1e-10, atol=1e-10)
