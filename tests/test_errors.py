"""Bad input gets a ValueError or TypeError whose message names the argument.

Each case builds valid arguments, spoils one, and checks the exception type and
that the message names the spoiled argument as a word (``x`` must not be found
inside ``x_shape``).
"""
import re

import numpy as np
import pytest

from zfraw import functional as F

rng = np.random.default_rng(4)


def arr(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


X = arr(2, 3, 6, 6)
W = arr(4, 3, 3, 3)
B = arr(4)
Y = F.conv2d(X, W, B, pad=1)            # (2, 4, 6, 6)
POOLED, SWITCHES = F.max_pool2d(X, 2)    # (2, 3, 3, 3)
Z = arr(4, 5)
LABELS = np.array([0, 4, 2, 1])
LIN_X, LIN_W = arr(3, 5), arr(2, 5)


class Foreign:
    """Looks like an array of another library (a CuPy array on a NumPy backend, say)."""

    shape = (2, 3, 6, 6)
    dtype = np.dtype(np.float32)
    ndim = 4


CASES = [
    # id, call, exception, the argument the message must name
    # ---- wrong ndim
    ("conv2d x ndim", lambda: F.conv2d(X[0], W), ValueError, "x"),
    ("conv2d w ndim", lambda: F.conv2d(X, W[0]), ValueError, "w"),
    ("conv2d b ndim", lambda: F.conv2d(X, W, B[:, None]), ValueError, "b"),
    ("im2col x ndim", lambda: F.im2col(X[0], 3, 3), ValueError, "x"),
    ("col2im cols ndim", lambda: F.col2im(X, X.shape, 3, 3), ValueError, "cols"),
    ("conv_transpose2d y ndim", lambda: F.conv_transpose2d(Y[0], W), ValueError, "y"),
    ("max_pool2d x ndim", lambda: F.max_pool2d(X[0], 2), ValueError, "x"),
    ("max_unpool2d y ndim", lambda: F.max_unpool2d(POOLED[0], SWITCHES[0], X.shape), ValueError, "y"),
    ("lrn x ndim", lambda: F.local_response_norm(X[0]), ValueError, "x"),
    ("linear x ndim", lambda: F.linear(X, LIN_W), ValueError, "x"),
    ("linear w ndim", lambda: F.linear(LIN_X, W), ValueError, "w"),
    ("cross_entropy z ndim", lambda: F.cross_entropy(X, LABELS), ValueError, "z"),
    ("conv_matrix w ndim", lambda: F.conv_matrix(W[0], (3, 6, 6)), ValueError, "w"),
    # ---- channel and shape mismatches
    ("conv2d channels", lambda: F.conv2d(arr(2, 5, 6, 6), W), ValueError, "x"),
    ("conv2d groups channels", lambda: F.conv2d(X, arr(4, 1, 3, 3), groups=2), ValueError, "x"),
    ("conv2d groups divide F", lambda: F.conv2d(arr(2, 6, 6, 6), arr(3, 2, 3, 3), groups=2), ValueError, "groups"),
    ("conv2d b shape", lambda: F.conv2d(X, W, arr(3)), ValueError, "b"),
    ("conv_transpose2d channels", lambda: F.conv_transpose2d(arr(2, 5, 4, 4), W), ValueError, "y"),
    ("conv_transpose2d output_shape", lambda: F.conv_transpose2d(Y, W, output_shape=(9, 6)), ValueError, "output_shape"),
    ("conv_transpose2d output_shape one too big", lambda: F.conv_transpose2d(Y, W, pad=1, output_shape=(7, 6)),
     ValueError, "output_shape"),
    ("conv_transpose2d output_shape stride 2 too big",
     lambda: F.conv_transpose2d(Y, W, stride=2, pad=1, output_shape=(11, 13)), ValueError, "output_shape"),
    ("conv_transpose2d output_shape too small",
     lambda: F.conv_transpose2d(Y, W, stride=2, pad=1, output_shape=(10, 10)), ValueError, "output_shape"),
    ("conv_transpose2d output_shape len", lambda: F.conv_transpose2d(Y, W, output_shape=(6,)), ValueError, "output_shape"),
    ("conv_transpose2d output_shape N,C", lambda: F.conv_transpose2d(Y, W, pad=1, output_shape=(2, 5, 6, 6)),
     ValueError, "output_shape"),
    ("conv_transpose2d empty output", lambda: F.conv_transpose2d(arr(1, 4, 1, 1), arr(4, 3, 1, 1), pad=1),
     ValueError, "y"),
    ("conv2d_backward dy shape", lambda: F.conv2d_backward(Y[:, :, :5], X, W, pad=1), ValueError, "dy"),
    ("conv2d_backward channels", lambda: F.conv2d_backward(Y, arr(2, 5, 6, 6), W, pad=1), ValueError, "x"),
    ("col2im cols shape", lambda: F.col2im(arr(2, 27, 15), X.shape, 3, 3), ValueError, "cols"),
    ("col2im x_shape", lambda: F.col2im(arr(2, 27, 16), (6, 6), 3, 3), ValueError, "x_shape"),
    ("conv_matrix channels", lambda: F.conv_matrix(W, (2, 6, 6)), ValueError, "input_shape"),
    ("conv_matrix batch", lambda: F.conv_matrix(W, (2, 3, 6, 6)), ValueError, "input_shape"),
    ("max_unpool2d switches shape", lambda: F.max_unpool2d(POOLED, SWITCHES[:, :, :2], X.shape), ValueError, "switches"),
    ("max_unpool2d input_shape N,C", lambda: F.max_unpool2d(POOLED, SWITCHES, (2, 4, 6, 6)), ValueError, "input_shape"),
    ("max_unpool2d input_shape C", lambda: F.max_unpool2d(POOLED, SWITCHES, (4, 6, 6)), ValueError, "input_shape"),
    ("conv_transpose2d output_shape C", lambda: F.conv_transpose2d(Y, W, pad=1, output_shape=(5, 6, 6)),
     ValueError, "output_shape"),
    ("max_unpool2d input_shape len", lambda: F.max_unpool2d(POOLED, SWITCHES, (6,)), ValueError, "input_shape"),
    ("relu_backward x shape", lambda: F.relu_backward(X, X[:1]), ValueError, "x"),
    ("lrn_backward dy shape", lambda: F.local_response_norm_backward(X[:1], X), ValueError, "dy"),
    ("linear features", lambda: F.linear(arr(3, 4), LIN_W), ValueError, "x"),
    ("linear b shape", lambda: F.linear(LIN_X, LIN_W, arr(3)), ValueError, "b"),
    ("linear_backward dy shape", lambda: F.linear_backward(arr(3, 3), LIN_X, LIN_W), ValueError, "dy"),
    ("cross_entropy labels shape", lambda: F.cross_entropy(Z, LABELS[:3]), ValueError, "labels"),
    # ---- windows larger than the padded input
    ("conv2d window height", lambda: F.conv2d(arr(1, 3, 2, 6), W), ValueError, "x"),
    ("conv2d window width", lambda: F.conv2d(arr(1, 3, 6, 1), W, pad=(0, 0)), ValueError, "x"),
    ("im2col window", lambda: F.im2col(X, 9, 3), ValueError, "x"),
    ("max_pool2d window", lambda: F.max_pool2d(arr(1, 1, 3, 3), 4, pad=0), ValueError, "x"),
    ("max_pool2d window width", lambda: F.max_pool2d(arr(1, 1, 5, 2), (2, 3)), ValueError, "x"),
    ("conv_matrix window", lambda: F.conv_matrix(W, (3, 2, 2)), ValueError, "input"),
    # ---- strides, pads, sizes
    ("conv2d stride 0", lambda: F.conv2d(X, W, stride=0), ValueError, "stride"),
    ("conv2d stride pair", lambda: F.conv2d(X, W, stride=(1, 0)), ValueError, "stride"),
    ("conv2d stride triple", lambda: F.conv2d(X, W, stride=(1, 1, 1)), ValueError, "stride"),
    ("conv2d stride float", lambda: F.conv2d(X, W, stride=1.5), TypeError, "stride"),
    ("conv2d pad negative", lambda: F.conv2d(X, W, pad=-1), ValueError, "pad"),
    ("conv2d groups 0", lambda: F.conv2d(X, W, groups=0), ValueError, "groups"),
    ("conv_transpose2d stride 0", lambda: F.conv_transpose2d(Y, W, stride=0), ValueError, "stride"),
    ("im2col kh 0", lambda: F.im2col(X, 0, 3), ValueError, "kh"),
    ("im2col pad negative", lambda: F.im2col(X, 3, 3, pad=(0, -1)), ValueError, "pad"),
    ("max_pool2d size 0", lambda: F.max_pool2d(X, 0), ValueError, "size"),
    ("max_pool2d stride 0", lambda: F.max_pool2d(X, 2, stride=0), ValueError, "stride"),
    ("max_pool2d pad negative", lambda: F.max_pool2d(X, 2, pad=-1), ValueError, "pad"),
    ("max_pool2d pad over half", lambda: F.max_pool2d(X, 3, pad=2), ValueError, "pad"),
    ("max_pool2d size bool", lambda: F.max_pool2d(X, True), TypeError, "size"),
    ("lrn size 0", lambda: F.local_response_norm(X, size=0), ValueError, "size"),
    ("lrn k 0", lambda: F.local_response_norm(X, k=0.0), ValueError, "k"),
    ("lrn alpha negative", lambda: F.local_response_norm(X, alpha=-1e-4), ValueError, "alpha"),
    ("lrn alpha str", lambda: F.local_response_norm(X, alpha="1e-4"), TypeError, "alpha"),
    ("lrn beta None", lambda: F.local_response_norm(X, beta=None), TypeError, "beta"),
    # ---- dtypes
    ("conv2d int x", lambda: F.conv2d(X.astype(np.int32), W), TypeError, "x"),
    ("conv2d int w", lambda: F.conv2d(X, W.astype(np.int64)), TypeError, "w"),
    ("conv2d float16 x", lambda: F.conv2d(X.astype(np.float16), W), TypeError, "x"),
    ("conv2d mixed w", lambda: F.conv2d(X, W.astype(np.float64)), TypeError, "w"),
    ("conv2d mixed b", lambda: F.conv2d(X, W, B.astype(np.float64)), TypeError, "b"),
    ("conv_transpose2d mixed w", lambda: F.conv_transpose2d(Y, W.astype(np.float64)), TypeError, "w"),
    ("conv2d_backward mixed dy", lambda: F.conv2d_backward(Y.astype(np.float64), X, W, pad=1), TypeError, "dy"),
    ("im2col int x", lambda: F.im2col(X.astype(np.int16), 3, 3), TypeError, "x"),
    ("col2im bool cols", lambda: F.col2im(np.ones((2, 27, 16), bool), X.shape, 3, 3), TypeError, "cols"),
    ("conv_matrix int w", lambda: F.conv_matrix(W.astype(np.int32), (3, 6, 6)), TypeError, "w"),
    ("max_pool2d int x", lambda: F.max_pool2d(X.astype(np.int32), 2), TypeError, "x"),
    ("max_pool2d complex x", lambda: F.max_pool2d(X.astype(np.complex64), 2), TypeError, "x"),
    ("max_unpool2d int y", lambda: F.max_unpool2d(SWITCHES, SWITCHES, X.shape), TypeError, "y"),
    ("relu int x", lambda: F.relu(np.arange(5)), TypeError, "x"),
    ("relu_backward int s", lambda: F.relu_backward(np.arange(5), np.ones(5)), TypeError, "s"),
    ("lrn int x", lambda: F.local_response_norm(X.astype(np.int32)), TypeError, "x"),
    ("lrn_backward mixed dy", lambda: F.local_response_norm_backward(X.astype(np.float64), X), TypeError, "dy"),
    ("linear mixed w", lambda: F.linear(LIN_X, LIN_W.astype(np.float64)), TypeError, "w"),
    ("linear mixed b", lambda: F.linear(LIN_X, LIN_W, arr(2, dtype=np.float64)), TypeError, "b"),
    ("linear_backward mixed dy", lambda: F.linear_backward(arr(3, 2, dtype=np.float64), LIN_X, LIN_W),
     TypeError, "dy"),
    ("dropout int x", lambda: F.dropout(np.arange(6), 0.5, rng), TypeError, "x"),
    ("softmax int z", lambda: F.softmax(np.arange(6).reshape(2, 3)), TypeError, "z"),
    ("cross_entropy int z", lambda: F.cross_entropy(np.ones((4, 5), np.int64), LABELS), TypeError, "z"),
    # ---- switches
    ("max_unpool2d switches too big", lambda: F.max_unpool2d(POOLED, SWITCHES + 36, X.shape), ValueError, "switches"),
    ("max_unpool2d switches negative", lambda: F.max_unpool2d(POOLED, SWITCHES - 100, X.shape), ValueError, "switches"),
    ("max_unpool2d switches for a smaller input", lambda: F.max_unpool2d(POOLED, SWITCHES, (5, 5)), ValueError,
     "switches"),
    ("max_unpool2d float switches", lambda: F.max_unpool2d(POOLED, SWITCHES.astype(np.float32), X.shape),
     TypeError, "switches"),
    ("max_unpool2d list switches", lambda: F.max_unpool2d(POOLED, SWITCHES.tolist(), X.shape), TypeError, "switches"),
    # ---- rules, labels, probabilities
    ("relu_backward rule", lambda: F.relu_backward(X, X, rule="guided_backprop"), ValueError, "rule"),
    ("relu_backward rule case", lambda: F.relu_backward(X, X, rule="Backprop"), ValueError, "rule"),
    ("relu_backward x None", lambda: F.relu_backward(X, None, rule="guided"), TypeError, "x"),
    ("cross_entropy label too big", lambda: F.cross_entropy(Z, np.array([0, 5, 1, 1])), ValueError, "labels"),
    ("cross_entropy label negative", lambda: F.cross_entropy(Z, np.array([0, -1, 1, 1])), ValueError, "labels"),
    ("cross_entropy float labels", lambda: F.cross_entropy(Z, np.array([0.0, 1.0, 2.0, 3.0])), TypeError, "labels"),
    ("dropout p 1", lambda: F.dropout(X, 1.0, rng), ValueError, "p"),
    ("dropout p negative", lambda: F.dropout(X, -0.1, rng), ValueError, "p"),
    ("dropout p above 1", lambda: F.dropout(X, 1.5, rng), ValueError, "p"),
    ("dropout p nan", lambda: F.dropout(X, float("nan"), rng), ValueError, "p"),
    ("dropout p str", lambda: F.dropout(X, "0.5", rng), (ValueError, TypeError), "p"),
    ("dropout rng", lambda: F.dropout(X, 0.5, 42), TypeError, "rng"),
    # ---- not an array of the active backend
    ("conv2d list x", lambda: F.conv2d(X.tolist(), W), TypeError, "x"),
    ("conv2d list w", lambda: F.conv2d(X, W.tolist()), TypeError, "w"),
    ("conv2d foreign x", lambda: F.conv2d(Foreign(), W), TypeError, "x"),
    ("max_pool2d list x", lambda: F.max_pool2d(X.tolist(), 2), TypeError, "x"),
    ("relu list x", lambda: F.relu([1.0, -1.0]), TypeError, "x"),
    ("linear list x", lambda: F.linear(LIN_X.tolist(), LIN_W), TypeError, "x"),
    ("lrn foreign x", lambda: F.local_response_norm(Foreign()), TypeError, "x"),
    ("softmax list z", lambda: F.softmax([[1.0, 2.0]]), TypeError, "z"),
    # ---- empty axes, non-finite constants, shapes that are not tuples of ints, NumPy scalars
    ("conv2d no channels", lambda: F.conv2d(arr(2, 0, 6, 6), arr(4, 0, 3, 3)), ValueError, "w"),
    ("conv2d no filters", lambda: F.conv2d(X, arr(0, 3, 3, 3)), ValueError, "w"),
    ("conv_transpose2d no channels", lambda: F.conv_transpose2d(Y, arr(4, 0, 3, 3)), ValueError, "w"),
    ("conv2d_backward no channels", lambda: F.conv2d_backward(arr(2, 4, 4, 4), arr(2, 0, 6, 6), arr(4, 0, 3, 3)),
     ValueError, "w"),
    ("softmax no classes", lambda: F.softmax(arr(3, 0)), ValueError, "z"),
    ("softmax 0-d", lambda: F.softmax(np.asarray(np.float32(1.0))), ValueError, "z"),
    ("cross_entropy no rows", lambda: F.cross_entropy(arr(0, 5), np.zeros(0, np.int64)), ValueError, "z"),
    ("cross_entropy no classes", lambda: F.cross_entropy(arr(3, 0), np.zeros(3, np.int64)), ValueError, "z"),
    ("lrn beta nan", lambda: F.local_response_norm(X, beta=float("nan")), ValueError, "beta"),
    ("lrn beta inf", lambda: F.local_response_norm(X, beta=float("inf")), ValueError, "beta"),
    ("lrn k nan", lambda: F.local_response_norm(X, k=float("nan")), ValueError, "k"),
    ("lrn k inf", lambda: F.local_response_norm(X, k=float("inf")), ValueError, "k"),
    ("lrn alpha nan", lambda: F.local_response_norm(X, alpha=float("nan")), ValueError, "alpha"),
    ("lrn_backward beta nan", lambda: F.local_response_norm_backward(X, X, beta=float("nan")), ValueError, "beta"),
    ("conv_matrix input_shape str", lambda: F.conv_matrix(W, "366"), TypeError, "input_shape"),
    ("conv_matrix input_shape floats", lambda: F.conv_matrix(W, (3, 6.7, 6.2)), TypeError, "input_shape"),
    ("max_unpool2d input_shape str", lambda: F.max_unpool2d(POOLED, SWITCHES, "66"), TypeError, "input_shape"),
    ("max_unpool2d input_shape floats", lambda: F.max_unpool2d(POOLED, SWITCHES, (6.0, 6.0)), TypeError,
     "input_shape"),
    ("conv_transpose2d output_shape str", lambda: F.conv_transpose2d(Y, W, pad=1, output_shape="66"), TypeError,
     "output_shape"),
    ("col2im x_shape floats", lambda: F.col2im(arr(2, 27, 16), (2, 3, 6.0, 6.0), 3, 3), TypeError, "x_shape"),
    ("conv2d numpy scalar x", lambda: F.conv2d(np.float32(1.0), W), TypeError, "x"),
    ("relu numpy scalar x", lambda: F.relu(np.float64(-1.0)), TypeError, "x"),
]


@pytest.mark.parametrize("call, exc, name", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(call, exc, name):
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message), (
        f"message does not name {name!r}: {message}"
    )


def test_shapes_given_as_strings_or_floats_are_refused_everywhere():
    """ "44" used to be read as (4, 4) and (4.7, 4.2) as (4, 4)."""
    from zfraw import nn, visualize

    for bad in ("344", (3, 4.7, 4.2), [3, True, 4]):
        with pytest.raises(TypeError, match="input_shape"):
            nn.Sequential([("relu", nn.ReLU())], input_shape=bad)
        with pytest.raises(TypeError, match="input_shape"):
            visualize.architecture_table(nn.Sequential([("relu", nn.ReLU())]), input_shape=bad)
        with pytest.raises(TypeError, match="input_shape"):
            nn.Sequential([("relu", nn.ReLU())]).summary(bad)
    assert nn.Sequential([("relu", nn.ReLU())], input_shape=np.array([3, 4, 4])).input_shape == (3, 4, 4)


@pytest.mark.parametrize("raw", ["abc", "-5", "0", "nan", "inf", "1e-9"])
def test_a_bad_workspace_variable_names_itself(raw):
    from zfraw import backend

    with pytest.raises(ValueError, match="ZFRAW_WORKSPACE_MB") as info:
        backend.workspace_from_env(raw)
    assert repr(raw) in str(info.value)


def test_good_workspace_values():
    from zfraw import backend

    assert backend.workspace_from_env("") == 256 * 2**20
    assert backend.workspace_from_env(" 1.5 ") == int(1.5 * 2**20)


def test_a_numpy_scalar_is_not_told_to_move_to_another_backend():
    with pytest.raises(TypeError) as info:
        F.conv2d(np.float32(1.0), W)
    assert "to_device" not in str(info.value) and "NumPy scalar" in str(info.value)


def test_load_state_dict_refuses_complex_and_non_numeric_arrays():
    from zfraw import nn

    net = nn.Sequential([("fc", nn.Linear(3, 2, seed=0))])
    state = {k: v.copy() for k, v in net.state_dict().items()}
    for bad in (state["fc.w"].astype(np.complex64) * (1 + 1j), state["fc.w"].astype(str), [[1.0] * 3] * 2):
        with pytest.raises(TypeError, match="fc.w"):
            net.load_state_dict(dict(state, **{"fc.w": bad}))
    before = net.parameters()["fc.w"].copy()
    np.testing.assert_array_equal(net.parameters()["fc.w"], before)  # nothing half-loaded
    net.load_state_dict(state)  # real arrays still load


def saturated_scores(rng, n, k, margin, dtype):
    z = rng.standard_normal((n, k))
    labels = rng.integers(0, k, n)
    z[np.arange(n), labels] += margin
    return z.astype(dtype), labels


@pytest.mark.parametrize("margin", [8.0, 12.0, 16.0])
def test_cross_entropy_gradient_keeps_its_digits_when_the_softmax_saturates(margin):
    """p_label -> 1: dz = p - 1 used to cancel in float32; now it matches float64 and beats PyTorch's error."""
    rng = np.random.default_rng(int(margin))
    z, labels = saturated_scores(rng, 64, 10, margin, np.float32)
    loss, dz = F.cross_entropy(z, labels)
    z64 = z.astype(np.float64)
    p = np.exp(z64 - z64.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    want = p.copy()
    want[np.arange(64), labels] = -(p.sum(axis=1) - p[np.arange(64), labels])  # 1 - p_label, without cancelling
    want /= 64
    err = np.linalg.norm(dz - want) / np.linalg.norm(want)
    assert err < 2e-6, err
    want_loss = -np.mean(np.log(p[np.arange(64), labels]))
    assert abs(loss - want_loss) <= 1e-5 * abs(want_loss) + 1e-12
    torch = pytest.importorskip("torch")
    zt = torch.tensor(z, requires_grad=True)
    torch.nn.functional.cross_entropy(zt, torch.tensor(labels)).backward()
    torch_err = np.linalg.norm(zt.grad.numpy() - want) / np.linalg.norm(want)
    assert err <= max(torch_err, 1e-6), (err, torch_err)


def test_messages_say_what_was_expected_and_what_came():
    with pytest.raises(ValueError) as info:
        F.conv2d(X[0], W)
    assert "4" in str(info.value) and "3" in str(info.value)
    with pytest.raises(TypeError) as info:
        F.conv2d(X.astype(np.int32), W)
    assert "float32" in str(info.value) and "int32" in str(info.value)
    with pytest.raises(ValueError) as info:
        F.max_unpool2d(POOLED, SWITCHES + 36, X.shape)
    assert "36" in str(info.value)
    with pytest.raises(TypeError) as info:
        F.conv2d(Foreign(), W)
    assert "to_device" in str(info.value) or "to_host" in str(info.value)


def test_valid_edge_arguments_are_accepted():
    """The checks do not reject what the contract allows."""
    F.conv2d(X, W, stride=(1, 2), pad=(0, 1))
    F.conv2d(X, W, stride=np.int64(2), pad=np.int32(1))
    F.max_pool2d(X, 3, pad=1)                               # pad = half the window (floored)
    F.max_pool2d(X, (2, 4), pad=(1, 2))
    F.max_unpool2d(POOLED, SWITCHES.astype(np.int32), (6, 6))
    F.cross_entropy(Z, [0, 4, 2, 1])
    F.dropout(X, 0.0, rng)
    F.relu_backward(X, None, rule="deconvnet")
    F.conv_transpose2d(Y, W, pad=1, output_shape=(2, 3, 6, 6))
