"""Convolutions with per-side (asymmetric) padding: nn.Conv2d(pad=(top, bottom, left, right)).

The layer against an independent float64 reference (``np.pad`` of the input, then
``zfraw.reference.conv2d`` with pad 0) on every backend over many random
geometries; its backward by finite differences; its projection as the exact
transpose of the forward; ``F.pad2d`` / ``F.crop2d`` as each other's adjoint; the
receptive-field boxes; the ``.npz`` round trip; and ONNX import and export against
onnxruntime.
"""
import numpy as np
import pytest

import zfraw
from zfraw import deconvnet, functional as F, nn, reference as R
from zfraw.gradcheck import adjoint_error, check_gradient
from zfraw.visualize import architecture_table
from conftest import backend_params

BACKENDS = backend_params(include_numpy=True)
RTOL = {np.float32: 1e-5, np.float64: 1e-12}


def _random_geometry(rng):
    """(x shape, Conv2d kwargs) with a random per-side padding, stride, groups."""
    groups = int(rng.choice([1, 2, 3]))
    c, f = groups * int(rng.integers(1, 3)), groups * int(rng.integers(1, 3))
    kh, kw = (int(v) for v in rng.integers(1, 5, 2))
    pads = tuple(int(v) for v in rng.integers(0, 4, 4))
    stride = tuple(int(v) for v in rng.integers(1, 4, 2))
    h = int(rng.integers(max(1, kh - pads[0] - pads[1]), 10))
    w = int(rng.integers(max(1, kw - pads[2] - pads[3]), 10))
    return (int(rng.integers(1, 3)), c, h, w), dict(in_channels=c, out_channels=f, kernel_size=(kh, kw),
                                                    stride=stride, pad=pads, groups=groups)


def _reference(x, layer):
    """float64: zero-pad (top, bottom, left, right) with np.pad, then the SciPy conv with pad 0."""
    top, bottom, left, right = layer.padding
    xpad = np.pad(np.asarray(x, np.float64), ((0, 0), (0, 0), (top, bottom), (left, right)))
    params = {k: zfraw.to_host(v) for k, v in layer.params.items()}
    return R.conv2d(xpad, params["w"], params.get("b"), layer.stride, 0, layer.groups)


def _layer(rng, dtype=np.float64, **kwargs):
    layer = nn.Conv2d(**kwargs, init_std=0.5, seed=int(rng.integers(1 << 30)), dtype=dtype)
    layer.params["b"] = zfraw.to_device(rng.standard_normal(layer.out_channels).astype(dtype))
    return layer


# ============================================================== the layer's forms

def test_pad_forms_padding_pad_geometry_and_config():
    layer = nn.Conv2d(2, 4, 3, stride=2, pad=(0, 1, 2, 1))
    assert layer.padding == (0, 1, 2, 1) and layer.pad == (0, 1, 2, 1)
    assert layer.geometry == ((3, 3), (2, 2), (0, 2))  # the window offset is (top, left)
    assert layer.config()["pad"] == [0, 1, 2, 1]
    for pad, padding, pair in [(1, (1, 1, 1, 1), (1, 1)), ((1, 2), (1, 1, 2, 2), (1, 2)),
                               ([2, 2, 0, 0], (2, 2, 0, 0), (2, 0))]:
        sym = nn.Conv2d(2, 4, 3, pad=pad)
        assert sym.padding == padding and sym.pad == pair and sym.config()["pad"] == list(pair)
        assert sym.geometry == ((3, 3), (1, 1), pair)
    square = nn.Sequential([("c", nn.Conv2d(2, 4, 3, 2, pad=(1, 0, 1, 2)))], input_shape=(2, 8, 8))
    assert architecture_table(square)[0]["config"] == "4 3x3/2 pad 1,0,1,2"


@pytest.mark.parametrize("pad, match", [
    (-1, "pad must be >= 0"), ((1, -1), "pad must be >= 0"), ((0, 1, -2, 0), "pad must be >= 0"),
    ((1, 2, 3), r"pad must be an int, a pair \(ph, pw\) or \(top, bottom, left, right\), got \(1, 2, 3\)"),
    ((1, 2, 3, 4, 5), "pad must be an int, a pair"),
])
def test_bad_pads_are_value_errors_naming_pad(pad, match):
    with pytest.raises(ValueError, match=match):
        nn.Conv2d(2, 4, 3, pad=pad)


def test_bad_paddings_of_pad2d_and_crop2d():
    x = np.zeros((1, 1, 3, 3))
    with pytest.raises(ValueError, match="padding must be an int, a pair"):
        F.pad2d(x, (1, 2, 3))
    with pytest.raises(ValueError, match="padding must be >= 0"):
        F.crop2d(x, (0, -1, 0, 0))
    with pytest.raises(ValueError, match=r"crops y of 3x3 to nothing"):
        F.crop2d(x, (1, 2, 0, 0))
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        F.pad2d(np.zeros((3, 3)), 1)


def test_conv_output_size_with_a_pad_pair():
    for size in range(1, 9):
        for k in range(1, 6):
            for s in (1, 2, 3):
                for before in range(3):
                    for after in range(3):
                        if size + before + after < k:
                            with pytest.raises(ValueError, match=rf"\({size} \+ {before}\+{after} = "):
                                F.conv_output_size(size, k, s, (before, after))
                            continue
                        out = F.conv_output_size(size, k, s, (before, after))
                        assert out == len(range(0, size + before + after - k + 1, s))
                        if before == after:
                            assert out == F.conv_output_size(size, k, s, before)


# ============================================================== against the reference

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_asymmetric_conv_matches_the_padded_reference(backend, dtype):
    rng = np.random.default_rng(7 if dtype is np.float32 else 8)
    with zfraw.use_backend(backend):
        for _ in range(25):
            shape, kwargs = _random_geometry(rng)
            layer = _layer(rng, dtype, **kwargs)
            x = rng.standard_normal(shape).astype(dtype)
            y = zfraw.to_host(layer.forward(zfraw.to_device(x)))
            ref = _reference(x, layer)
            assert y.dtype == dtype and y.shape == ref.shape, kwargs
            assert np.linalg.norm(y - ref) <= RTOL[dtype] * np.linalg.norm(ref), kwargs


@pytest.mark.parametrize("backend", BACKENDS)
def test_symmetric_pads_keep_the_plain_conv_bit_for_bit_without_a_copy(backend):
    rng = np.random.default_rng(3)
    with zfraw.use_backend(backend):
        x = zfraw.to_device(rng.standard_normal((2, 4, 9, 8)).astype(np.float32))
        for pad in [(1, 1, 2, 2), (0, 0, 0, 0), (2, 2, 1, 1)]:
            layer = nn.Conv2d(4, 6, 3, 2, pad=pad, groups=2, init_std=0.3)
            ph, pw = pad[0], pad[2]
            y = layer.forward(x)
            assert layer._cache_x is x  # no padded copy
            want = F.conv2d(x, layer.params["w"], layer.params["b"], 2, (ph, pw), 2)
            assert np.array_equal(zfraw.to_host(y), zfraw.to_host(want))
            s = zfraw.to_device(rng.standard_normal(y.shape).astype(np.float32))
            want = F.conv_transpose2d(s, layer.params["w"], 2, (ph, pw), 2, output_shape=x.shape)
            assert np.array_equal(zfraw.to_host(layer.project(s)), zfraw.to_host(want))
            want = F.conv2d_backward(s, x, layer.params["w"], 2, (ph, pw), 2)
            got = layer.backward(s)
            assert np.array_equal(zfraw.to_host(got), zfraw.to_host(want[0]))
            assert np.array_equal(zfraw.to_host(layer.grads["w"]), zfraw.to_host(want[1]))


# ============================================================== gradients and adjoints

@pytest.mark.parametrize("pad, stride, groups", [((0, 2, 1, 0), (2, 1), 2), ((3, 1, 0, 2), (1, 2), 1),
                                                 ((1, 0, 0, 1), (2, 2), 3)])
def test_backward_is_the_gradient(pad, stride, groups):
    rng = np.random.default_rng(sum(pad))
    layer = _layer(rng, in_channels=groups, out_channels=2 * groups, kernel_size=(3, 2), stride=stride, pad=pad,
                   groups=groups)
    x = rng.standard_normal((2, groups, 5, 6))
    r = rng.standard_normal(layer.forward(x).shape)
    dx = layer.backward(r)
    w = layer.params["w"]
    assert dx.shape == x.shape
    assert check_gradient(lambda a: np.vdot(layer.forward(a), r), x, dx) < 1e-8
    dw, db = layer.grads["w"], layer.grads["b"]

    def loss_w(v):
        layer.params["w"] = v
        return np.vdot(layer.forward(x), r)

    assert check_gradient(loss_w, w.copy(), dw) < 1e-8
    layer.params["w"] = w
    np.testing.assert_allclose(db, r.sum(axis=(0, 2, 3)), rtol=1e-12)
    assert np.vdot(layer.forward(x), r) == pytest.approx(np.vdot(_reference(x, layer), r), rel=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_projection_is_the_transpose_of_the_conv(backend):
    """<conv(x) - b, y> == <x, project(y)>, and pad2d / crop2d are each other's adjoint."""
    rng = np.random.default_rng(11)
    with zfraw.use_backend(backend):
        for _ in range(12):
            shape, kwargs = _random_geometry(rng)
            layer = _layer(rng, **kwargs)
            b = layer.params.pop("b")
            x = zfraw.to_device(rng.standard_normal(shape))
            y = zfraw.to_device(rng.standard_normal(layer.forward(x).shape))
            assert adjoint_error(layer.forward, layer.project, x, y) < 1e-13  # (forward runs first: the cache)
            layer.params["b"] = b
            padding = layer.padding
            big = zfraw.to_device(rng.standard_normal(F.pad2d(x, padding).shape))
            assert adjoint_error(lambda a: F.pad2d(a, padding), lambda a: F.crop2d(a, padding), x, big) < 1e-13
            assert np.array_equal(zfraw.to_host(F.crop2d(F.pad2d(x, padding), padding)), zfraw.to_host(x))


def test_pad2d_and_crop2d_shapes_and_values():
    x = np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)
    p = F.pad2d(x, (1, 0, 2, 1))
    assert p.shape == (1, 1, 3, 6) and p.dtype == np.float32
    np.testing.assert_array_equal(p[0, 0], [[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 2, 0], [0, 0, 3, 4, 5, 0]])
    c = F.crop2d(p, (1, 0, 2, 1))
    np.testing.assert_array_equal(c, x)
    assert c.flags.c_contiguous and F.pad2d(x, 0) is x and F.crop2d(x, (0, 0)) is x


def test_receptive_field_boxes_are_where_the_gradient_reaches():
    """With positive weights, unit (r, c) of conv2 depends on exactly the pixels in
    patch_box: the support of its gradient."""
    net = nn.Sequential([("conv1", nn.Conv2d(1, 1, 3, 2, pad=(1, 2, 1, 0), dtype=np.float64)),
                         ("conv2", nn.Conv2d(1, 1, 2, 1, pad=(0, 1, 0, 1), dtype=np.float64))],
                        input_shape=(1, 11, 10))
    for _, layer in net:
        layer.params["w"] = np.ones_like(layer.params["w"])
    y = net.forward(np.ones((1, 1, 11, 10)))
    for r in range(y.shape[2]):
        for c in range(y.shape[3]):
            seed = np.zeros_like(y)
            seed[0, 0, r, c] = 1
            grad = net.backward(seed)[0, 0]
            rows, cols = np.nonzero(grad)
            box = deconvnet.patch_box(net, "conv2", r, c)
            if rows.size == 0:  # a unit that sees only padding
                assert box[0] >= box[2] or box[1] >= box[3]
                continue
            assert box == (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1), (r, c)


# ============================================================== files

def test_npz_round_trip_of_asymmetric_and_symmetric_convs(tmp_path):
    net = nn.Sequential([("conv1", nn.Conv2d(3, 4, 3, 2, pad=(0, 1, 1, 0), init_std=0.2)), ("relu1", nn.ReLU()),
                         ("conv2", nn.Conv2d(4, 6, 3, 1, pad=(1, 2), groups=2, init_std=0.2)),
                         ("flatten", nn.Flatten()), ("fc3", nn.Linear(6 * 4 * 7, 5))], input_shape=(3, 8, 11))
    assert net.summary()[2][2] == (6, 4, 7)
    net.save(tmp_path / "m.npz")
    again = nn.load(tmp_path / "m.npz")
    assert again.spec() == net.spec()
    assert again["conv1"].padding == (0, 1, 1, 0) and again["conv1"].pad == (0, 1, 1, 0)
    assert again["conv2"].padding == (1, 1, 2, 2) and again["conv2"].pad == (1, 2)
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 11)).astype(np.float32)
    np.testing.assert_array_equal(again.forward(x), net.forward(x))


onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from zfraw.io import onnx as zonnx  # noqa: E402


def _run_ort(model, x):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_onnx_conv_with_asymmetric_pads_and_groups_matches_onnxruntime(tmp_path):
    rng = np.random.default_rng(5)
    # ONNX pads are [top, left, bottom, right]
    specs = [([0, 1, 2, 0], [2, 1], 2, (3, 3)), ([3, 0, 1, 2], [1, 2], 1, (2, 3)), ([1, 1, 0, 0], [2, 2], 2, (3, 2))]
    nodes, inits, cin, x_name = [], [], 4, "x"
    for i, (pads, strides, group, kernel) in enumerate(specs, start=1):
        w = (rng.standard_normal((4, cin // group) + kernel) * 0.4).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(rng.standard_normal(4).astype(np.float32),
                                                                                f"b{i}")]
        nodes.append(helper.make_node("Conv", [x_name, f"w{i}", f"b{i}"], [f"conv{i}"], name=f"conv{i}",
                                      kernel_shape=list(kernel), strides=strides, pads=pads, group=group))
        x_name = f"conv{i}"
    graph = helper.make_graph(nodes, "asym", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 13, 12])],
                              [helper.make_tensor_value_info(x_name, TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "asym.onnx"))
    net = zonnx.load(tmp_path / "asym.onnx")
    assert [net[f"conv{i}"].padding for i in (1, 2, 3)] == [(0, 2, 1, 0), (3, 1, 0, 2), (1, 0, 1, 0)]
    assert net["conv3"].pad == (1, 0, 1, 0)
    x = rng.standard_normal((2, 4, 13, 12)).astype(np.float32)
    ref = _run_ort(model, x)
    ours = net.forward(x)
    assert ours.shape == ref.shape == (2, 4) + net.summary((4, 13, 12))[-1][2][1:]
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    # export: onnxruntime runs zfraw's file to the same outputs, and import -> export round-trips
    zonnx.save(net, tmp_path / "out1.onnx", input_shape=(4, 13, 12))
    exported = onnx.load(str(tmp_path / "out1.onnx"))
    assert [list(a.ints) for n in exported.graph.node for a in n.attribute if a.name == "pads"] == [
        s[0] for s in specs]
    np.testing.assert_allclose(_run_ort(exported, x), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    again = zonnx.load(tmp_path / "out1.onnx")
    assert again.spec() == net.spec()
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[k], v)
    zonnx.save(again, tmp_path / "out2.onnx", input_shape=(4, 13, 12))
    assert (tmp_path / "out1.onnx").read_bytes() == (tmp_path / "out2.onnx").read_bytes()


def test_onnx_export_of_a_zfraw_net_with_an_asymmetric_conv(tmp_path):
    net = nn.Sequential([("conv1", nn.Conv2d(3, 4, 5, 2, pad=(2, 1, 1, 2), init_std=0.2)), ("relu1", nn.ReLU()),
                         ("pool1", nn.MaxPool2d(3, 2, pad=(0, 1, 0, 1))),
                         ("conv2", nn.Conv2d(4, 6, 3, 1, pad=(0, 0, 1, 0), groups=2, init_std=0.2)),
                         ("flatten", nn.Flatten()), ("fc3", nn.Linear(6 * 2 * 2, 5))], input_shape=(3, 16, 15))
    assert net.summary()[3][2] == (6, 2, 2)
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 15)).astype(np.float32)
    zonnx.save(net, tmp_path / "net.onnx")
    ref = _run_ort(onnx.load(str(tmp_path / "net.onnx")), x)
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    assert zonnx.load(tmp_path / "net.onnx").spec() == net.spec()
