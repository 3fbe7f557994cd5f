"""ONNX import and export (zfraw.io.onnx) against onnxruntime.

The graphs are built here with onnx.helper (zfraw.io.layouts: the Model Zoo's
ZFNet-512 and CaffeNet layouts, random weights, fewer channels); our forward must
match onnxruntime on random inputs, on every output of the file and on the scores
before the softmax.
"""
import os

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from zfraw import builtin, models, nn  # noqa: E402
from zfraw.io import layouts, onnx as zonnx  # noqa: E402


def _ort_outputs(model, x, extra=()):
    """Run ``model`` in onnxruntime image by image (the files fix N = 1), with the
    tensors ``extra`` as further outputs."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for name in extra:
        model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    runs = [session.run(None, {name: x[i:i + 1]}) for i in range(len(x))]
    return [np.concatenate([r[k] for r in runs]) for k in range(len(runs[0]))]


def _save(model, tmp_path, name):
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _check_against_ort(net, model, x, scores_tensor):
    probs, scores = _ort_outputs(model, x, [scores_tensor])
    ours = net.forward(x)
    np.testing.assert_allclose(ours, probs, rtol=1e-4, atol=1e-6)
    scores_layer = [n for n in net.names if n.startswith("fc")][-1]
    np.testing.assert_allclose(net.activations[scores_layer], scores, rtol=2e-4, atol=2e-4 * np.abs(scores).max())
    assert probs.shape[1] == ours.shape[1] and abs(ours.sum(axis=1) - 1).max() < 1e-5


ZF_NAMES = ["conv1", "relu1", "norm1", "pool1", "conv2", "relu2", "norm2", "pool2", "conv3", "relu3", "conv4",
            "relu4", "conv5", "relu5", "pool5", "flatten", "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "fc8",
            "prob"]


@pytest.mark.parametrize("opset", [9, 17])
def test_zfnet512_layout_matches_onnxruntime(tmp_path, opset):
    model = layouts.zfnet512(opset, width=1 / 16, seed=opset)
    net = zonnx.load(_save(model, tmp_path, f"zfnet512-{opset}.onnx"))
    assert net.names == ZF_NAMES and net.input_shape == (3, 224, 224)
    assert net.preprocessing.name == "zfnet512" and net.preprocessing.channel_order == "BGR"
    assert isinstance(net["prob"], nn.Softmax) and net["norm1"].k == 2.0
    assert net.summary()[3][2][1:] == (54, 54) and net.summary()[7][2][1:] == (12, 12)
    x = np.random.default_rng(opset).standard_normal((2, 3, 224, 224)).astype(np.float32) * 3
    _check_against_ort(net, model, x, "gpu_0/fc8_1")


@pytest.mark.parametrize("legacy", [3, 6])
def test_old_opset_idioms_give_the_same_network(tmp_path, legacy):
    """Reshape's shape attribute, Gemm's broadcast and Dropout's is_test (opsets < 7,
    which onnxruntime no longer runs): the same network as the opset-9 file."""
    old = zonnx.load(_save(layouts.zfnet512(legacy, width=1 / 16, seed=1), tmp_path, "old.onnx"))
    new = zonnx.load(_save(layouts.zfnet512(9, width=1 / 16, seed=1), tmp_path, "new.onnx"))
    assert old.spec() == new.spec()
    for k, v in new.state_dict().items():
        np.testing.assert_array_equal(old.state_dict()[k], v)


@pytest.mark.parametrize("lrn_first, opset", [(False, 9), (True, 17)])
def test_caffenet_layout_with_groups_lrn_and_asymmetric_pool_pads(tmp_path, lrn_first, opset):
    # at 231x231 every pool keeps a last partial window: pads [0, 0, 1, 1] (bottom/right)
    model = layouts.caffenet(opset, width=1 / 8, side=231, lrn_first=lrn_first, seed=3)
    net = zonnx.load(_save(model, tmp_path, "caffenet.onnx"))
    pools = [layer for _, layer in net if isinstance(layer, nn.MaxPool2d)]
    assert [p.padding for p in pools] == [(0, 1, 0, 1)] * 3
    assert [net[c].groups for c in ("conv1", "conv2", "conv3", "conv4", "conv5")] == [1, 2, 1, 2, 2]
    order = [n for n in net.names if n[:4] in ("norm", "pool")][:2]
    assert order == (["norm1", "pool1"] if lrn_first else ["pool1", "norm1"])
    assert "fc7" in net.names and net["fc7"].params["b"].shape == (512,)  # from MatMul + Add
    x = np.random.default_rng(4).standard_normal((2, 3, 231, 231)).astype(np.float32) * 3
    _check_against_ort(net, model, x, "fc8_1")


def _pool_model(pads, kernel, strides, ceil_mode, shape):
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=kernel, strides=strides, pads=pads,
                            ceil_mode=ceil_mode)
    graph = helper.make_graph([node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_max_pool_per_side_pads_and_ceil_mode_match_onnxruntime(tmp_path):
    """Random kernels, strides, ONNX pads [top, left, bottom, right] and ceil_mode."""
    rng = np.random.default_rng(7)
    cases = 0
    while cases < 25:
        kernel = [int(v) for v in rng.integers(1, 6, size=2)]
        strides = [int(v) for v in rng.integers(1, 4, size=2)]
        pads = [int(rng.integers(0, kernel[i % 2] // 2 + 1)) for i in range(4)]
        ceil_mode = int(rng.integers(2))
        shape = [1, 2] + [int(v) for v in rng.integers(max(kernel), 12, size=2)]
        x = rng.standard_normal(shape).astype(np.float32)
        path = _save(_pool_model(pads, kernel, strides, ceil_mode, shape), tmp_path, "pool.onnx")
        net = zonnx.load(path)
        (ref,) = _ort_outputs(onnx.load(str(path)), x)
        np.testing.assert_array_equal(net.forward(x), ref)
        cases += 1


# ============================================================== export

def _export_and_run(net, tmp_path, x, name="net.onnx"):
    path = tmp_path / name
    zonnx.save(net, path)
    (ref,) = _ort_outputs(onnx.load(str(path)), x)
    return path, ref


def test_export_of_the_builtin_model_and_zfnet_mini_runs_the_same_in_onnxruntime(tmp_path):
    net, _ = builtin.load_model()
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    _, ref = _export_and_run(net.eval(), tmp_path, x)
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    mini = models.zfnet_mini(num_classes=3, seed=1, init_std="he").eval()
    _, ref = _export_and_run(mini, tmp_path, x, "mini.onnx")
    np.testing.assert_allclose(mini.forward(x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.slow
@pytest.mark.parametrize("name", ["zfnet", "alexnet"])
def test_export_of_the_full_size_paper_networks(tmp_path, name):
    """Full-size ZFNet (ceil-mode pools) and two-tower AlexNet (groups), 10 classes
    (about 10 s each: 60 M random weights drawn, written, read back twice)."""
    net = models.build(name, num_classes=10, seed=2).eval()
    x = np.random.default_rng(1).standard_normal((1,) + net.input_shape).astype(np.float32)
    path, ref = _export_and_run(net, tmp_path, x, f"{name}.onnx")
    np.testing.assert_allclose(net.forward(x), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    again = zonnx.load(path)
    assert again.names == net.names


def test_import_then_export_round_trips_exactly(tmp_path):
    model = layouts.caffenet(17, width=1 / 8, side=231, seed=5)
    first = zonnx.load(_save(model, tmp_path, "in.onnx"), preprocessing="caffenet")
    zonnx.save(first, tmp_path / "out1.onnx")
    second = zonnx.load(tmp_path / "out1.onnx")
    assert second.spec() == first.spec() and second.preprocessing == first.preprocessing
    for k, v in first.state_dict().items():
        np.testing.assert_array_equal(second.state_dict()[k], v)
    zonnx.save(second, tmp_path / "out2.onnx")
    assert (tmp_path / "out1.onnx").read_bytes() == (tmp_path / "out2.onnx").read_bytes()
    # and through zfraw's own .npz (preprocessing kept)
    first.save(tmp_path / "w.npz")
    third = nn.load(tmp_path / "w.npz")
    assert third.spec() == first.spec() and third.preprocessing.name == "caffenet"


def test_export_refuses_what_onnx_cannot_hold(tmp_path):
    net = nn.Sequential([("norm", nn.LocalResponseNorm(4))], input_shape=(3, 4, 4))
    with pytest.raises(ValueError, match="norm.*even LRN size"):
        zonnx.save(net, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"\.onnx"):
        zonnx.save(models.zfnet_mini(), tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


# ============================================================== bad files and graphs

def _tiny_graph(nodes, inits, out="y", in_shape=(1, 3, 8, 8), opset=17):
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


W = {"w": np.zeros((4, 3, 3, 3), np.float32), "b": np.zeros(4, np.float32)}


@pytest.mark.parametrize("nodes, inits, match", [
    ([helper.make_node("Sigmoid", ["x"], ["y"], name="sig")], {}, r"'sig' \(Sigmoid\): op 'Sigmoid' is not supported"),
    ([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c1", dilations=[2, 2])], W,
     r"'c1' \(Conv\): dilations \[2, 2\] are not supported"),
    ([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c1", auto_pad="SAME_UPPER")], W,
     r"auto_pad 'SAME_UPPER' is not supported"),
    ([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="c1", pads=[0, 0, -1, 1])], W,
     r"'c1' \(Conv\): negative pads \[0, 0, -1, 1\] are not supported"),
    ([helper.make_node("Conv", ["x", "w"], ["y"], name="c1", foo=1)], W, r"attribute 'foo' is not supported"),
    ([helper.make_node("Relu", ["x"], ["r"], name="a"), helper.make_node("Relu", ["x"], ["s"], name="b"),
      helper.make_node("Add", ["r", "s"], ["y"], name="c")], {}, r"branches|not a chain"),
    ([helper.make_node("LRN", ["x"], ["y"], name="n", size=4)], {}, r"'n' \(LRN\): an even size"),
    ([helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv1"),
      helper.make_node("Flatten", ["c"], ["f"], name="flat"),
      helper.make_node("Gemm", ["f", "g"], ["y"], name="fc6", transB=1)],
     dict(W, g=np.zeros((10, 99), np.float32)), r"'fc6' \(Gemm\): weight of shape \(10, 99\) expects 99 input "
                                               r"features, but the input has 144"),
    ([helper.make_node("Conv", ["x", "w2", "b"], ["y"], name="conv1")], {"w2": np.zeros((4, 5, 3, 3), np.float32),
                                                                          "b": np.zeros(4, np.float32)},
     r"'conv1' \(Conv\): weight 'w2' of shape \(4, 5, 3, 3\) with group 1 expects 5 input channels, but the input has 3"),
    ([helper.make_node("Reshape", ["x", "s"], ["y"], name="r")], {"s": np.array([1, 3, 64], np.int64)},
     r"'r' \(Reshape\): Reshape to \[1, 3, 64\] is not supported"),
    ([helper.make_node("MaxPool", ["x"], ["y", "i"], name="p", kernel_shape=[2, 2])], {},
     r"'p' \(MaxPool\): its Indices output"),
])
def test_unsupported_graphs_name_the_file_node_op_and_what(tmp_path, nodes, inits, match):
    path = _save(_tiny_graph(nodes, inits), tmp_path, "bad.onnx")
    with pytest.raises(ValueError, match=match) as info:
        zonnx.load(path)
    assert str(path) in str(info.value)


def test_files_that_are_not_onnx_models(tmp_path):
    good = _save(layouts.zfnet512(9, width=1 / 32), tmp_path, "good.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:5000])
    text = tmp_path / "notes.onnx"
    text.write_text("not a model at all\n" * 20)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path in (truncated, text, empty, tmp_path):
        with pytest.raises(ValueError, match="not an ONNX model|is a folder") as info:
            zonnx.load(path)
        assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        zonnx.load(tmp_path / "missing.onnx")


def test_external_data_is_read_only_from_the_models_folder(tmp_path):
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = _tiny_graph([helper.make_node("Conv", ["x", "w", "b"], ["y"], name="conv1")],
                        {"w": w, "b": np.zeros(4, np.float32)})
    inside = tmp_path / "model"
    inside.mkdir()
    onnx.save(model, str(inside / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="weights.bin", size_threshold=0)
    net = zonnx.load(inside / "m.onnx")
    np.testing.assert_array_equal(net["conv1"].params["w"], w)
    # the same model pointing at a file outside its folder
    outside = onnx.load(str(inside / "m.onnx"), load_external_data=False)
    for t in outside.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../secret.bin"
    (tmp_path / "secret.bin").write_bytes((inside / "weights.bin").read_bytes())
    onnx.save(outside, str(inside / "evil.onnx"))
    with pytest.raises(ValueError, match=r"external data '\.\./secret\.bin' outside the model's folder"):
        zonnx.load(inside / "evil.onnx")


def test_preprocessing_can_be_given_and_is_recorded(tmp_path):
    path = _save(layouts.zfnet512(9, width=1 / 32), tmp_path, "z.onnx")
    net = zonnx.load(path, preprocessing="alexnet_torchvision")
    assert net.preprocessing.channel_order == "RGB" and net.preprocessing.std == (0.229, 0.224, 0.225)
    x = np.random.default_rng(0).random((1, 3, 224, 224)).astype(np.float32)
    layer = net.preprocessing.input_layer()
    y = layer.forward(x)
    np.testing.assert_allclose(y[0, 0], (x[0, 0] - 0.485) / 0.229, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y, net.preprocessing.apply_chw(x[0])[None], rtol=1e-6, atol=1e-6)


# ============================================================== the commands

def _photo(path, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((240, 320, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_import_and_predict_commands_follow_the_file(tmp_path, capsys):
    """`zfraw import` prints the layer table and the preprocessing and writes a .npz; `zfraw
    predict` gives the top-5 that onnxruntime gives on the image preprocessed as recorded."""
    from zfraw import cli, data
    from zfraw.io.classes import imagenet_classes
    from zfraw.io.preprocess import PRESETS

    model = layouts.zfnet512(9, width=1 / 32, seed=11)
    path = _save(model, tmp_path, "zfnet512-layout.onnx")
    out = tmp_path / "zf.npz"
    assert cli.main(["import", str(path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "conv5" in printed and "fc8" in printed and "prob" in printed
    assert "preprocessing: zfnet512: BGR, 0-255, mean (104.007, 116.669, 122.679)" in printed
    saved = nn.load(out)
    assert saved.preprocessing == PRESETS["zfnet512"] and nn.read_meta(out)["extra"]["classes"][281] == "tabby"

    photo = _photo(tmp_path / "photo.jpg")
    x = PRESETS["zfnet512"].apply(data.load_image(str(photo)))
    (probs,) = _ort_outputs(model, x[None])
    top = np.argsort(-probs[0])[:5]
    for source in (["--model", str(path)], ["--weights", str(out)]):
        assert cli.main(["predict", str(photo), *source]) == 0
        lines = capsys.readouterr().out.strip().splitlines()[1:]
        assert [int(line.rsplit("class ", 1)[1].rstrip(")")) for line in lines] == list(top)
        assert imagenet_classes()[top[0]] in lines[0]
        assert f"{probs[0, top[0]]:7.2%}" in lines[0]


def test_visual_commands_take_an_imported_model(tmp_path, capsys):
    from zfraw import cli

    path = _save(layouts.zfnet512(9, width=1 / 32, seed=12), tmp_path, "z.onnx")
    photo = _photo(tmp_path / "photo.jpg", 1)
    assert cli.main(["project", str(photo), "--model", str(path), "--layer", "conv5",
                     "-o", str(tmp_path / "p.png")]) == 0
    assert cli.main(["filters", "--model", str(path), "-o", str(tmp_path / "f.png")]) == 0
    assert cli.main(["summary", "--model", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "wrote" in printed and "pool5" in printed
    assert (tmp_path / "p.png").stat().st_size > 0 and (tmp_path / "f.png").stat().st_size > 0
    # overrides on the command line replace what the file records
    assert cli.main(["import", str(path), "-o", str(tmp_path / "o.npz"), "--channel-order", "RGB",
                     "--scale", "1", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]) == 0
    assert "custom: RGB, 0-1, mean (0.5, 0.5, 0.5), std (0.25, 0.25, 0.25)" in capsys.readouterr().out
    assert nn.load(tmp_path / "o.npz").preprocessing.std == (0.25, 0.25, 0.25)


def test_occlude_takes_an_imported_model(tmp_path, capsys):
    """`zfraw occlude --model X.onnx`: the file's own probabilities (its Softmax is not applied
    twice), ImageNet names, and the default square hides the image with the model's mean pixel."""
    from zfraw import cli, data
    from zfraw.io.classes import imagenet_classes
    from zfraw.io.preprocess import PRESETS

    model = layouts.zfnet512(9, width=1 / 32, seed=13)
    path = _save(model, tmp_path, "z.onnx")
    photo = _photo(tmp_path / "photo.jpg", 2)
    out = tmp_path / "occ.png"
    assert cli.main(["occlude", str(photo), "--model", str(path), "--size", "112", "--stride", "56",
                     "--backend", "numpy", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    (probs,) = _ort_outputs(model, PRESETS["zfnet512"].apply(data.load_image(str(photo)))[None])
    top = int(np.argmax(probs[0]))
    assert f"p({imagenet_classes()[top]}) = {probs[0, top]:.3f} unoccluded" in printed
    assert "3x3 positions" in printed and out.stat().st_size > 0
    # the mean pixel is what the preprocessing maps to zero
    layer = PRESETS["zfnet512"].input_layer()
    mean_image = np.broadcast_to(np.asarray(layer.pixel_mean(), np.float32)[None, :, None, None], (1, 3, 4, 4))
    np.testing.assert_allclose(layer.forward(np.ascontiguousarray(mean_image)), 0, atol=1e-4)


def test_probabilities_do_not_apply_a_second_softmax():
    from zfraw import functional as F

    scores = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    plain = nn.Sequential([("fc", nn.Linear(4, 5))])
    ending = nn.Sequential([("fc", nn.Linear(4, 5)), ("prob", nn.Softmax())])
    np.testing.assert_array_equal(plain.probabilities(scores), F.softmax(scores))
    assert ending.probabilities(scores) is scores


def test_import_errors_are_one_line_with_status_2(tmp_path, capsys):
    import subprocess
    import sys

    from zfraw import cli

    truncated = tmp_path / "bad.onnx"
    truncated.write_bytes(_save(layouts.zfnet512(9, width=1 / 32), tmp_path, "g.onnx").read_bytes()[:3000])
    run = subprocess.run([sys.executable, "-m", "zfraw", "import", str(truncated), "-o", str(tmp_path / "w.npz")],
                         capture_output=True, text=True, env=dict(os.environ, ZFRAW_DEBUG=""))
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert str(truncated) in run.stderr and "not an ONNX model" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    cases = [(["import", str(tmp_path / "g.onnx"), "-o", str(tmp_path / "w.txt")], ".npz"),
             (["import", str(tmp_path / "w.npz"), "-o", str(tmp_path / "w2.npz")], "must be an ONNX model"),
             (["import", str(tmp_path / "g.onnx"), "-o", str(truncated / "w.npz")], "is a file, not a folder"),
             (["predict", str(tmp_path / "nophoto.jpg"), "--model", str(tmp_path / "g.onnx")], "nophoto.jpg"),
             (["predict", str(tmp_path / "nophoto.jpg"), "--model", str(tmp_path / "g.onnx"),
               "--weights", "x.npz"], "not both")]
    for argv, message in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "w.npz").exists()
