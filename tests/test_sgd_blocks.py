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
