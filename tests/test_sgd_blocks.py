"""SGD.step walks large parameters block by block, in place: checked against the
update formula on a parameter of more than one block, a non-contiguous one, in
float32 and float64, on every backend."""
import numpy as np
import pytest

import zfraw
from zfraw import nn, train

from conftest import backend_params


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocked_in_place_update_matches_the_formula(backend, dtype):
    rng = np.random.default_rng(7)
    lr, mom, wd = 0.05, 0.9, 1e-2
    with zfraw.use_backend(backend):
        # fc: 1100 x 1000 = 1.1 M weights, more than one 2**20 block; conv: a small one
        net = nn.Sequential([("conv", nn.Conv2d(2, 3, 3, dtype=dtype)), ("flat", nn.Flatten()),
                             ("fc", nn.Linear(1100, 1000, dtype=dtype))])
        # a non-contiguous weight (a transposed view): updated in place through the fallback
        net.set_parameter("conv.w", zfraw.to_device(rng.standard_normal((3, 2, 3, 3)).astype(dtype)).transpose(0, 1, 3, 2))
        opt = train.SGD(net, lr=lr, momentum=mom, weight_decay=wd, renorm_radius=None)
        live = net.parameters()
        w = {k: zfraw.to_host(p).astype(np.float64) for k, p in live.items()}
        v = {k: np.zeros_like(p) for k, p in w.items()}
        for step in range(2):
            grads = {}
            for lname, layer in net:
                for pname, p in layer.params.items():
                    g = rng.standard_normal(p.shape).astype(dtype)
                    layer.grads[pname], grads[f"{lname}.{pname}"] = zfraw.to_device(g), g.astype(np.float64)
            opt.step()
            for k in w:
                v[k] = mom * v[k] - lr * (grads[k] + (wd * w[k] if k.endswith(".w") else 0.0))
                w[k] = w[k] + v[k]
                tol = 1e-5 if dtype == np.float32 else 1e-12
                got = net.parameters()[k]
                assert got is live[k]  # the same array, updated in place
                np.testing.assert_allclose(zfraw.to_host(got), w[k], rtol=tol, atol=tol, err_msg=f"{k} step {step}")
                np.testing.assert_allclose(zfraw.to_host(opt.velocity[k]), v[k], rtol=tol, atol=tol)
    assert not live["conv.w"].flags.c_contiguous


@pytest.mark.parametrize("backend", backend_params(include_numpy=True))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_sgd_update_kernel_against_the_formula_in_float64(backend, dtype):
    """Random sizes (one element, not a multiple of the threads' chunks, more than
    one vectorized block), with and without decay; in place, nothing else written."""
    rng = np.random.default_rng(11)
    tol = 2e-6 if dtype == np.float32 else 1e-14
    for size in (1, 7, 16385, 3 * 2**19 + 5, 2**21 + 3):
        for lr, mom, decay in ((0.01, 0.9, 5e-6), (0.3, 0.0, 0.0), (1e-3, 0.99, 0.0)):
            w, g, v = (rng.standard_normal(size).astype(dtype) for _ in range(3))
            v_ref = mom * v.astype(np.float64) - lr * g.astype(np.float64) - decay * w.astype(np.float64)
            w_ref = w.astype(np.float64) + v_ref
            with zfraw.use_backend(backend):
                wd, gd, vd = (zfraw.to_device(a) for a in (w, g, v))
                g_before = zfraw.to_host(gd).copy()
                assert zfraw.backend.kernel("sgd_update")(wd, gd, vd, lr, mom, decay) is None
                np.testing.assert_allclose(zfraw.to_host(vd), v_ref, rtol=tol, atol=tol, err_msg=f"v size {size}")
                np.testing.assert_allclose(zfraw.to_host(wd), w_ref, rtol=tol, atol=tol, err_msg=f"w size {size}")
                np.testing.assert_array_equal(zfraw.to_host(gd), g_before)  # the gradient is read only


@pytest.mark.skipif("numba" not in zfraw.backends(), reason="needs Numba")
def test_the_numba_update_agrees_with_the_vectorized_one_and_refuses_views():
    from zfraw.kernels import cpu, vectorized

    rng = np.random.default_rng(3)
    w, g, v = (rng.standard_normal(100003).astype(np.float32) for _ in range(3))
    w2, v2 = w.copy(), v.copy()
    cpu.sgd_update(w, g, v, 0.01, 0.9, 5e-6)
    vectorized.sgd_update(w2, g, v2, 0.01, 0.9, 5e-6)
    np.testing.assert_allclose(w, w2, rtol=1e-6, atol=1e-6)  # FMA contraction: last-bit differences
    np.testing.assert_allclose(v, v2, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="w must be C-contiguous"):
        cpu.sgd_update(np.ones((4, 4), np.float32).T, np.ones((4, 4), np.float32), np.ones((4, 4), np.float32),
                       0.1, 0.9, 0.0)
