"""ONNX files with the layouts of the ONNX Model Zoo's ZFNet-512 and CaffeNet, random weights.

The real files cannot be downloaded here (and nothing in zfraw downloads them), so
the tests -- and a user who wants to try the commands first -- build a model of the
same layout with ``onnx.helper``: the same ops, attributes, names and opset idioms
(a ``shape`` attribute on Reshape, ``broadcast`` on Gemm and ``is_test`` on
Dropout for the old opsets), random weights N(0, 1e-2) (He-scaled, so that the
activations neither vanish nor explode) and optionally fewer channels::

    python -m zfraw.io.layouts zfnet512 -o zfnet512-layout.onnx      # full size, 365 MB
    python -m zfraw.io.layouts caffenet --width 0.25 -o caffenet-small.onnx

ZFNet-512 as described for the Model Zoo's ``zfnet512-*.onnx``: input
``gpu_0/data_0`` (1, 3, 224, 224); conv1 96 7x7/2 -> relu -> LRN(5, 5e-4, 0.75, 2) ->
max-pool 3x3/2 (109 -> 54); conv2 256 5x5/2 -> relu -> LRN -> pool (25 -> 12);
conv3 512, conv4 1024, conv5 512 (3x3 pad 1) -> relu; pool 2x2/2 (-> 6); fc6 4096,
fc7 1024, fc8 1000 (Dropout after fc6 and fc7); softmax -- 87 M parameters, 348 MiB
in float32, as the Zoo's "about 340 MB" file.  CaffeNet: conv1 96
11x11/4; max-pools 3x3/2 with bottom/right pads standing in for Caffe's ceil
rounding; grouped conv2/4/5 (group 2); LRN(5, 1e-4, 0.75, 1) after the pool
(``lrn_first=True``: before it, as BVLC AlexNet); fc7 as MatMul + Add.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

__all__ = ["zfnet512", "caffenet"]


class _Graph:
    def __init__(self, opset, rng, dtype=np.float32):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.opset, self.rng, self.dtype = opset, rng, dtype
        self.nodes, self.inits = [], []

    def weight(self, name, shape, fan_in):
        w = (self.rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(self.dtype)
        self.inits.append(self.numpy_helper.from_array(w, name))
        return name

    def bias(self, name, n):
        self.inits.append(self.numpy_helper.from_array((self.rng.standard_normal(n) * 0.01).astype(self.dtype), name))
        return name

    def node(self, op, inputs, output, name="", **attrs):
        self.nodes.append(self.helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def dropout(self, x, out):
        if self.opset < 7:
            return self.node("Dropout", [x], out, is_test=1, ratio=0.5)
        if self.opset < 12:
            return self.node("Dropout", [x], out, ratio=0.5)
        return self.node("Dropout", [x], out)

    def reshape(self, x, out, features):
        if self.opset < 5:
            return self.node("Reshape", [x], out, shape=[1, features])
        shape = self.numpy_helper.from_array(np.array([1, features], dtype=np.int64), out + "_shape")
        self.inits.append(shape)
        return self.node("Reshape", [x, shape.name], out)

    def gemm(self, x, w, b, out):
        extra = {"broadcast": 1} if self.opset < 7 else {}
        return self.node("Gemm", [x, w, b], out, transB=1, **extra)

    def model(self, name, input_name, side, classes):
        from onnx import TensorProto

        h = self.helper
        graph = h.make_graph(self.nodes, name,
                             [h.make_tensor_value_info(input_name, TensorProto.FLOAT, [1, 3, side, side])],
                             [h.make_tensor_value_info(self.nodes[-1].output[0], TensorProto.FLOAT, [1, classes])],
                             initializer=self.inits)
        model = h.make_model(graph, producer_name="zfraw.io.layouts", opset_imports=[h.make_opsetid("", self.opset)])
        model.ir_version = 3 if self.opset < 7 else min(model.ir_version, 7 if self.opset < 13 else 8)
        if model.ir_version < 4:  # IR 3: every initializer is also a graph input
            model.graph.input.extend(h.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in self.inits)
        return model


def _widths(base, width):
    return [max(2, int(round(c * width))) for c in base]


def zfnet512(opset=9, width=1.0, classes=1000, seed=0, side=224):
    """An ``onnx.ModelProto`` with ZFNet-512's layout (see the module docstring).

    width scales every channel count and the fc sizes (tests: 1/16); side: the
    input side (224 for the real network).
    """
    rng = np.random.default_rng(seed)
    g = _Graph(opset, rng)
    c1, c2, c3, c4, c5, f6, f7 = _widths((96, 256, 512, 1024, 512, 4096, 1024), width)
    p = "gpu_0/"
    x = p + "data_0"
    cin = 3
    for i, (c, k, s, pad) in enumerate(((c1, 7, 2, 0), (c2, 5, 2, 0)), start=1):
        w = g.weight(f"{p}conv{i}_w_0", (c, cin, k, k), cin * k * k)
        b = g.bias(f"{p}conv{i}_b_0", c)
        x = g.node("Conv", [x, w, b], f"{p}conv{i}_1", kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4)
        x = g.node("Relu", [x], f"{p}conv{i}_2")
        x = g.node("LRN", [x], f"{p}norm{i}_1", size=5, alpha=5e-4, beta=0.75, bias=2.0)
        x = g.node("MaxPool", [x], f"{p}pool{i}_1", kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 0, 0])
        cin = c
    for i, c in ((3, c3), (4, c4), (5, c5)):
        w = g.weight(f"{p}conv{i}_w_0", (c, cin, 3, 3), cin * 9)
        b = g.bias(f"{p}conv{i}_b_0", c)
        x = g.node("Conv", [x, w, b], f"{p}conv{i}_1", kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
        x = g.node("Relu", [x], f"{p}conv{i}_2")
        cin = c
    x = g.node("MaxPool", [x], f"{p}pool5_1", kernel_shape=[2, 2], strides=[2, 2])
    spatial = side
    for k in (7, 3, 5, 3):                 # conv1, pool1, conv2, pool2: stride 2, no padding, floor
        spatial = (spatial - k) // 2 + 1
    spatial //= 2                          # pool5
    features = cin * spatial * spatial
    x = g.reshape(x, p + "OC2_DUMMY_0", features)
    for i, (fin, fout) in enumerate(((features, f6), (f6, f7), (f7, classes)), start=6):
        w = g.weight(f"{p}fc{i}_w_0", (fout, fin), fin)
        b = g.bias(f"{p}fc{i}_b_0", fout)
        x = g.gemm(x, w, b, f"{p}fc{i}_1")
        if i < 8:
            x = g.node("Relu", [x], f"{p}fc{i}_2")
            x = g.dropout(x, f"{p}fc{i}_3")
    g.node("Softmax", [x], p + "softmax_1")
    return g.model("zfnet512", p + "data_0", side, classes)


def caffenet(opset=9, width=1.0, classes=1000, seed=0, side=227, lrn_first=False, group=2):
    """An ``onnx.ModelProto`` with CaffeNet's layout (``lrn_first``: BVLC AlexNet's order).

    The max-pools pad the bottom and right by one ([0, 0, 1, 1]) where Caffe's ceil
    rounding keeps a last partial window, as the Model Zoo's conversions do.
    """
    from zfraw.functional import conv_output_size, pool_output_size

    rng = np.random.default_rng(seed)
    g = _Graph(opset, rng)
    c1, c2, c3, c4, c5, f6, f7 = _widths((96, 256, 384, 384, 256, 4096, 4096), width)
    c1, c2, c3, c4, c5 = (c + c % group for c in (c1, c2, c3, c4, c5))
    x, cin, size = "data_0", 3, side

    def pool(x, i, size):
        floor = pool_output_size(size, 3, 2, 0, False)
        ceil = pool_output_size(size, 3, 2, 0, True)
        pads = [0, 0, 1, 1] if ceil > floor else [0, 0, 0, 0]
        return g.node("MaxPool", [x], f"pool{i}_1", name=f"pool{i}", kernel_shape=[3, 3], strides=[2, 2],
                      pads=pads), ceil

    def norm(x, i):
        return g.node("LRN", [x], f"norm{i}_1", name=f"norm{i}", size=5, alpha=1e-4, beta=0.75, bias=1.0)

    spec = ((c1, 11, 4, 0, 1, True), (c2, 5, 1, 2, group, True), (c3, 3, 1, 1, 1, False),
            (c4, 3, 1, 1, group, False), (c5, 3, 1, 1, group, False))
    for i, (c, k, s, pad, grp, pooled) in enumerate(spec, start=1):
        w = g.weight(f"conv{i}_w_0", (c, cin // grp, k, k), cin // grp * k * k)
        b = g.bias(f"conv{i}_b_0", c)
        x = g.node("Conv", [x, w, b], f"conv{i}_1", name=f"conv{i}", kernel_shape=[k, k], strides=[s, s],
                   pads=[pad] * 4, group=grp)
        size = conv_output_size(size, k, s, pad)
        x = g.node("Relu", [x], f"conv{i}_2", name=f"relu{i}")
        if i <= 2:
            if lrn_first:
                x = norm(x, i)
                x, size = pool(x, i, size)
            else:
                x, size = pool(x, i, size)
                x = norm(x, i)
        cin = c
    x, size = pool(x, 5, size)
    features = cin * size * size
    x = g.node("Flatten", [x], "flatten_1", axis=1)
    w6, b6 = g.weight("fc6_w_0", (f6, features), features), g.bias("fc6_b_0", f6)
    x = g.gemm(x, w6, b6, "fc6_1")
    x = g.dropout(g.node("Relu", [x], "fc6_2"), "fc6_3")
    w7 = g.weight("fc7_w_0", (f7, f6), f6)
    wt = g.inits.pop()                     # MatMul takes B as (in, out)
    from onnx import numpy_helper

    g.inits.append(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(wt).T), w7))
    x = g.node("MatMul", [x, w7], "fc7_0")
    x = g.node("Add", [x, g.bias("fc7_b_0", f7)], "fc7_1", **({"broadcast": 1} if opset < 7 else {}))
    x = g.dropout(g.node("Relu", [x], "fc7_2"), "fc7_3")
    w8, b8 = g.weight("fc8_w_0", (classes, f7), f7), g.bias("fc8_b_0", classes)
    x = g.gemm(x, w8, b8, "fc8_1")
    g.node("Softmax", [x], "prob_1")
    return g.model("bvlc_alexnet" if lrn_first else "caffenet", "data_0", side, classes)


def main(argv=None):
    import onnx

    p = argparse.ArgumentParser(prog="python -m zfraw.io.layouts",
                                description="write an ONNX model with a Model Zoo layout and random weights")
    p.add_argument("layout", choices=["zfnet512", "caffenet", "bvlc_alexnet"])
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    p.add_argument("--opset", type=int, default=9, help="opset (default 9; 3 for the oldest idioms)")
    p.add_argument("--width", type=float, default=1.0, help="channel scale (default 1: the real sizes)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.layout == "zfnet512":
        model = zfnet512(args.opset, args.width, seed=args.seed)
    else:
        model = caffenet(args.opset, args.width, seed=args.seed, lrn_first=args.layout == "bvlc_alexnet")
    from zfraw.io.npz import atomic_write

    data = model.SerializeToString()
    atomic_write(args.output, lambda fh: fh.write(data))
    print(f"wrote {args.output} ({len(data) / 1e6:.1f} MB, {args.layout} layout, opset {args.opset}, random weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
