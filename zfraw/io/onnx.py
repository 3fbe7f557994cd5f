"""ONNX import and export: ZFNet-512, CaffeNet / BVLC AlexNet and zfraw's own networks.

:func:`load` walks an ONNX graph that is a plain chain of supported ops and builds a
:class:`zfraw.nn.Sequential` with its weights; :func:`save` writes a zfraw network as
an ONNX model that onnxruntime runs to the same outputs.  Needs the optional ``onnx``
package (``pip install zfraw[onnx]``).

Supported ops (checked against the ONNX operator specification, opsets 1 to 22):

==============  ================================================================
ONNX op         zfraw layer
==============  ================================================================
Conv            Conv2d: ``strides``, ``pads`` [top, left, bottom, right]
                (per side), ``group``; ``dilations`` 1
Relu            ReLU
LRN             LocalResponseNorm(size, alpha, beta, k=bias); odd ``size``
MaxPool         MaxPool2d: ``strides``, ``pads`` [top, left, bottom, right]
                (per side), ``ceil_mode``; ``dilations`` 1; Indices unused
Gemm            Linear: w = alpha * B (transB=1) or alpha * B^T, b = beta * C;
                transA 0; ``broadcast`` (opset < 7) accepted
MatMul [+ Add]  Linear: w = B^T, b the added constant
Flatten         Flatten (axis 1)
Reshape         Flatten, when it flattens (N, C, H, W) to (N, C*H*W): ``shape``
                attribute (opset < 5) or constant shape input ([0|-1|N, -1|CHW])
Dropout         Dropout(ratio): the identity at inference (``is_test`` old)
Softmax         Softmax over the classes (axis 1 or -1 of (N, K))
Identity        dropped
==============  ================================================================

Anything else -- a branch, another op, an attribute zfraw does not honour (a
``SAME`` ``auto_pad``, a dilation, negative pads, ...) -- is a ValueError that
names the node, its op and what is unsupported; never a silently different network.
Weights stored as external data are read only from files inside the model's own
folder.  Layer names follow the paper (conv1..conv5, fc6..fc8, from the node or
weight names where they say so; :class:`zfraw.io.layers.LayerNamer`).  The
network's :attr:`~zfraw.nn.Sequential.preprocessing` is taken from the file when
zfraw wrote it, else recognised from the architecture (ZFNet-512, CaffeNet/AlexNet,
torchvision AlexNet; :mod:`zfraw.io.preprocess`), else left None.
"""
from __future__ import annotations

import json
import os

import numpy as np

from zfraw import functional as F
from zfraw import nn
from zfraw.io.layers import LayerNamer
from zfraw.io.npz import atomic_write
from zfraw.io.preprocess import PRESETS, Preprocessing

__all__ = ["load", "save", "guess_preprocessing", "DEFAULT_OPSET"]

#: the opset :func:`save` writes
DEFAULT_OPSET = 13
PREPROCESSING_KEY = "zfraw.preprocessing"

#: attributes honoured per op; any other attribute is an error ("consumed_inputs",
#: a memory hint of opsets 1-5, is harmless everywhere)
_ATTRIBUTES = {
    "Conv": {"kernel_shape", "strides", "pads", "dilations", "group", "auto_pad"},
    "MaxPool": {"kernel_shape", "strides", "pads", "dilations", "ceil_mode", "auto_pad", "storage_order"},
    "LRN": {"size", "alpha", "beta", "bias"},
    "Gemm": {"alpha", "beta", "transA", "transB", "broadcast"},
    "MatMul": set(), "Add": {"broadcast", "axis"}, "Relu": set(), "Identity": set(),
    "Flatten": {"axis"}, "Reshape": {"shape"},
    "Dropout": {"ratio", "is_test", "seed"},
    "Softmax": {"axis"},
}


def _onnx():
    try:
        import onnx
    except ImportError:
        raise ImportError("reading and writing ONNX models needs the onnx package: pip install 'zfraw[onnx]'") from None
    return onnx


class _Node:
    """An ONNX node with its attributes decoded, and errors that name it."""

    def __init__(self, onnx, node, index):
        self.node, self.op, self.index = node, node.op_type, index
        self.label = f"node {index} {node.name!r} ({node.op_type})" if node.name else f"node {index} ({node.op_type})"
        self.attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        for k, v in list(self.attrs.items()):
            if isinstance(v, bytes):
                self.attrs[k] = v.decode()
            elif isinstance(v, float):  # float32 in the file: keep its shortest decimal (1e-4, not 9.99e-05)
                self.attrs[k] = float(str(np.float32(v)))

    def error(self, what):
        return ValueError(f"{self.label}: {what}")

    def check_attributes(self):
        allowed = _ATTRIBUTES.get(self.op)
        if allowed is None:
            raise self.error(f"op {self.op!r} is not supported (zfraw imports {', '.join(sorted(_ATTRIBUTES))})")
        for k in self.attrs:
            if k not in allowed and k != "consumed_inputs":
                raise self.error(f"attribute {k!r} is not supported for {self.op}")

    def ints(self, key, default):
        return [int(v) for v in self.attrs.get(key, default)]


# ============================================================== reading the file

def _inside(folder, path):
    folder, path = os.path.realpath(folder), os.path.realpath(path)
    return os.path.commonpath([folder, path]) == folder


def _read_model(onnx, path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"ONNX model {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not an ONNX model file")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # DecodeError and friends: not a protobuf ModelProto
        raise ValueError(f"{path!r} is not an ONNX model (it does not parse: {type(exc).__name__})") from None
    if not model.graph.node:
        raise ValueError(f"{path!r} is not an ONNX model (it has no graph nodes; truncated or another format?)")
    base = os.path.dirname(os.path.abspath(path))
    from onnx import external_data_helper

    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        target = os.path.join(base, location)
        if not location or os.path.isabs(location) or not _inside(base, target) or not os.path.isfile(target):
            raise ValueError(f"{path!r}: weight {tensor.name!r} refers to external data {location!r} outside "
                             "the model's folder (or missing); zfraw reads only files beside the model")
        external_data_helper.load_external_data_for_tensor(tensor, base)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]
    return model


def _constants(onnx, model):
    """Initializers and Constant-node outputs, by name, as NumPy arrays."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant":
            attrs = {a.name: a for a in node.attribute}
            if "value" not in attrs:
                raise ValueError(f"Constant node {node.name!r}: only a tensor 'value' is supported")
            consts[node.output[0]] = numpy_helper.to_array(attrs["value"].t)
    return consts


def _float_weight(node, consts, name, what):
    if name not in consts:
        raise node.error(f"its {what} {name!r} is not a constant (an initializer); zfraw needs fixed weights")
    a = consts[name]
    if a.dtype not in (np.float32, np.float64):
        if a.dtype == np.float16:
            a = a.astype(np.float32)
        else:
            raise node.error(f"its {what} {name!r} has dtype {a.dtype}; expected float32 or float64")
    return np.ascontiguousarray(a)


# ============================================================== the layers

class _Builder:
    """Walks the chain, keeps the current tensor's shape and builds the layers."""

    def __init__(self, path, consts, shape):
        self.path, self.consts = path, consts
        self.shape = shape            # (C, H, W), (K,) or None when unknown
        self.layers, self.namer = [], LayerNamer()
        self.dtype = None

    def add(self, node, layer, hints=(), op=None):
        name = self.namer.name(op or node.op, (node.node.name,) + tuple(hints))
        self.layers.append((name, layer))
        return name

    def weight(self, node, name, what):
        w = _float_weight(node, self.consts, name, what)
        self.dtype = self.dtype or w.dtype
        return w

    def need_4d(self, node):
        if self.shape is not None and len(self.shape) != 3:
            raise node.error(f"expects an (N, C, H, W) input here, but the tensor is (N, {self.shape[0]})")

    def conv(self, node):
        self.need_4d(node)
        inputs = list(node.node.input)
        w = self.weight(node, inputs[1], "weight W")
        if w.ndim != 4:
            raise node.error(f"weight {inputs[1]!r} must be (F, C/group, kh, kw), got shape {w.shape}")
        b = self.weight(node, inputs[2], "bias B") if len(inputs) > 2 and inputs[2] else None
        kernel = node.ints("kernel_shape", w.shape[2:])
        if tuple(kernel) != tuple(w.shape[2:]):
            raise node.error(f"kernel_shape {kernel} does not match the weight's {list(w.shape[2:])}")
        strides = node.ints("strides", [1, 1])
        pads = self._pads(node, "Conv")
        if node.ints("dilations", [1, 1]) != [1, 1]:
            raise node.error(f"dilations {node.ints('dilations', [])} are not supported (only 1)")
        group = int(node.attrs.get("group", 1))
        top, left, bottom, right = pads  # ONNX's order; zfraw's is (top, bottom, left, right)
        f, cg = w.shape[:2]
        if self.shape is not None and self.shape[0] != cg * group:
            raise node.error(f"weight {inputs[1]!r} of shape {w.shape} with group {group} expects "
                             f"{cg * group} input channels, but the input has {self.shape[0]}")
        if b is not None and b.shape != (f,):
            raise node.error(f"bias {inputs[2]!r} must have shape ({f},), got {b.shape}")
        if f % group:
            raise node.error(f"group {group} does not divide the {f} filters")
        layer = nn.Conv2d(cg * group, f, tuple(kernel), tuple(strides), (top, bottom, left, right), group,
                          bias=b is not None, init_std=None)
        layer.params["w"] = w
        if b is not None:
            layer.params["b"] = b
        if self.shape is not None:
            _, h, wd = self.shape
            try:
                self.shape = (f, F.conv_output_size(h, kernel[0], strides[0], (top, bottom), "input height"),
                              F.conv_output_size(wd, kernel[1], strides[1], (left, right), "input width"))
            except ValueError as exc:
                raise node.error(str(exc)) from None
        self.add(node, layer, inputs[1:])

    def _pads(self, node, op):
        auto_pad = node.attrs.get("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            raise node.error(f"auto_pad {auto_pad!r} is not supported (give explicit pads)")
        pads = node.ints("pads", [0, 0, 0, 0])
        if len(pads) != 4:
            raise node.error(f"pads must have 4 entries for a 2-D {op}, got {pads}")
        if min(pads) < 0:
            raise node.error(f"negative pads {pads} are not supported")
        return pads

    def maxpool(self, node):
        self.need_4d(node)
        if len(node.node.output) > 1 and node.node.output[1]:
            raise node.error("its Indices output is not supported (zfraw keeps switches internally)")
        kernel = node.ints("kernel_shape", [])
        if len(kernel) != 2:
            raise node.error(f"kernel_shape must have 2 entries, got {kernel}")
        strides = node.ints("strides", [1, 1])  # ONNX's default stride is 1, not the window
        if node.ints("dilations", [1, 1]) != [1, 1]:
            raise node.error(f"dilations {node.ints('dilations', [])} are not supported (only 1)")
        if int(node.attrs.get("storage_order", 0)) != 0:
            raise node.error("storage_order 1 (column-major indices) is not supported")
        top, left, bottom, right = self._pads(node, "MaxPool")
        ceil_mode = bool(node.attrs.get("ceil_mode", 0))
        try:
            layer = nn.MaxPool2d(tuple(kernel), tuple(strides), (top, bottom, left, right), ceil_mode)
            if self.shape is not None:
                c, h, w = self.shape
                if 2 * max(top, bottom) > kernel[0] or 2 * max(left, right) > kernel[1]:
                    raise ValueError(f"pads {[top, left, bottom, right]} exceed half the window {kernel}")
                self.shape = (c, F.pool_output_size(h, kernel[0], strides[0], (top, bottom), ceil_mode, "input height"),
                              F.pool_output_size(w, kernel[1], strides[1], (left, right), ceil_mode, "input width"))
        except (TypeError, ValueError) as exc:
            raise node.error(str(exc)) from None
        self.add(node, layer)

    def lrn(self, node):
        self.need_4d(node)
        if "size" not in node.attrs:
            raise node.error("attribute 'size' is required")
        size = int(node.attrs["size"])
        if size % 2 == 0:
            raise node.error(f"an even size ({size}) is not supported: ONNX centres an even window "
                             "differently from zfraw (and PyTorch)")
        layer = nn.LocalResponseNorm(size, float(node.attrs.get("alpha", 1e-4)), float(node.attrs.get("beta", 0.75)),
                                     float(node.attrs.get("bias", 1.0)))
        self.add(node, layer)

    def flatten(self, node, op):
        if self.shape is not None and len(self.shape) == 1:
            return  # already (N, K)
        self.shape = None if self.shape is None else (int(np.prod(self.shape)),)
        self.add(node, nn.Flatten(), op=op)

    def reshape(self, node):
        inputs = list(node.node.input)
        if "shape" in node.attrs:
            target = [int(v) for v in node.attrs["shape"]]
        elif len(inputs) > 1 and inputs[1] in self.consts:
            target = [int(v) for v in self.consts[inputs[1]].ravel()]
        else:
            raise node.error("its target shape is not a constant")
        flat = None if self.shape is None else int(np.prod(self.shape))
        ok = len(target) == 2 and target[0] in (0, -1, 1) and (target[1] == -1 or target[1] == flat or flat is None)
        if ok and target[0] == -1 and target[1] == -1:
            ok = False
        if ok and target[0] == -1 and flat is not None and target[1] != flat:
            ok = False
        if not ok:
            raise node.error(f"Reshape to {target} is not supported: only a flatten (N, C, H, W) -> "
                             f"(N, C*H*W{'' if flat is None else ' = ' + str(flat)}) before the first fc layer")
        self.flatten(node, "Reshape")

    def _linear(self, node, w, b, hints):
        """A Linear layer from w (out, in) and b (out,) or None."""
        if self.shape is not None and len(self.shape) != 1:
            raise node.error(f"needs a flattened (N, K) input, but the tensor is (N, {', '.join(map(str, self.shape))}) "
                             "(add a Flatten or Reshape before it)")
        out_f, in_f = w.shape
        if self.shape is not None and self.shape[0] != in_f:
            raise node.error(f"weight of shape {w.shape} expects {in_f} input features, but the input has {self.shape[0]}")
        layer = nn.Linear(in_f, out_f, bias=b is not None, init_std=None)
        layer.params["w"] = np.ascontiguousarray(w)
        if b is not None:
            layer.params["b"] = np.ascontiguousarray(b)
        self.shape = (out_f,)
        self.add(node, layer, hints, op="Gemm")

    def _bias(self, node, name, out_f, scale=1.0):
        c = self.weight(node, name, "bias C")
        try:
            c = np.broadcast_to(c.reshape(-1) if c.size == out_f else c, (out_f,))
        except ValueError:
            raise node.error(f"bias {name!r} of shape {c.shape} does not broadcast to ({out_f},)") from None
        return (c * c.dtype.type(scale)).astype(c.dtype) if scale != 1.0 else np.array(c)

    def gemm(self, node):
        inputs = list(node.node.input)
        if int(node.attrs.get("transA", 0)):
            raise node.error("transA=1 is not supported (the data must be (N, K))")
        bmat = self.weight(node, inputs[1], "weight B")
        if bmat.ndim != 2:
            raise node.error(f"weight {inputs[1]!r} must be 2-D, got shape {bmat.shape}")
        alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
        w = bmat if int(node.attrs.get("transB", 0)) else bmat.T
        if alpha != 1.0:
            w = (w * w.dtype.type(alpha)).astype(w.dtype)
        b = None
        if len(inputs) > 2 and inputs[2] and beta != 0.0:
            b = self._bias(node, inputs[2], w.shape[0], beta)
        self._linear(node, w, b, inputs[1:])

    def matmul(self, node, add):
        inputs = list(node.node.input)
        bmat = self.weight(node, inputs[1], "weight B")
        if bmat.ndim != 2:
            raise node.error(f"weight {inputs[1]!r} must be 2-D, got shape {bmat.shape}")
        b = None
        hints = [inputs[1]]
        if add is not None:
            const = [i for i in add.node.input if i in self.consts]
            b = self._bias(add, const[0], bmat.shape[1])
            hints.append(const[0])
        self._linear(node, bmat.T, b, hints)

    def dropout(self, node):
        inputs = list(node.node.input)
        ratio = float(node.attrs.get("ratio", 0.5))
        if len(inputs) > 1 and inputs[1]:
            if inputs[1] not in self.consts:
                raise node.error("its ratio input is not a constant")
            ratio = float(self.consts[inputs[1]])
        if len(inputs) > 2 and inputs[2]:
            if inputs[2] not in self.consts or bool(self.consts[inputs[2]]):
                raise node.error("training_mode must be a constant false (inference)")
        if len(node.node.output) > 1 and node.node.output[1]:
            raise node.error("its mask output is not supported")
        self.add(node, nn.Dropout(ratio))

    def softmax(self, node, opset):
        if self.shape is not None and len(self.shape) != 1:
            raise node.error("Softmax is supported only on (N, K) scores")
        axis = int(node.attrs.get("axis", 1 if opset < 13 else -1))
        if axis not in (1, -1):
            raise node.error(f"axis {axis} is not supported (only the class axis 1 / -1 of (N, K))")
        self.add(node, nn.Softmax())


def _opset(model):
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=1)


def _input_info(path, model, consts):
    graph = model.graph
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise ValueError(f"{path!r}: zfraw imports a chain with one input; the graph has "
                         f"{len(inputs)} ({', '.join(i.name for i in inputs)})")
    dims = inputs[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if len(shape) != 4:
        raise ValueError(f"{path!r}: input {inputs[0].name!r} must be (N, C, H, W), got {len(shape)} dimensions")
    chw = tuple(shape[1:]) if all(s for s in shape[1:]) else None
    return inputs[0].name, chw


def load(path, preprocessing=None):
    """Import an ONNX model as a :class:`zfraw.nn.Sequential` (in evaluation mode).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file (external data only from its own folder).
    preprocessing : Preprocessing, dict, str or None
        The input preprocessing to record (a preset name of
        :data:`zfraw.io.preprocess.PRESETS`); None: the file's own record if zfraw
        wrote it, else :func:`guess_preprocessing`.

    Raises
    ------
    ImportError
        ``onnx`` is not installed.
    ValueError
        Not an ONNX model, or a graph zfraw cannot represent exactly: the message
        names the node, its op and what is unsupported.
    """
    onnx = _onnx()
    path = os.fspath(path)
    model = _read_model(onnx, path)
    consts = _constants(onnx, model)
    data_name, chw = _input_info(path, model, consts)
    opset = _opset(model)
    nodes = [_Node(onnx, n, i) for i, n in enumerate(model.graph.node) if n.op_type != "Constant"]
    uses = {}
    for n in nodes:
        for name in n.node.input:
            if name and name not in consts:
                uses[name] = uses.get(name, 0) + 1
    builder = _Builder(path, consts, chw)
    current = data_name
    k = 0
    try:
        while k < len(nodes):
            node = nodes[k]
            node.check_attributes()
            data_inputs = [i for i in node.node.input if i and i not in consts]
            if data_inputs != [current]:
                raise node.error(f"the graph is not a chain: its inputs {list(node.node.input)} are not the "
                                 f"previous layer's output {current!r} and constants")
            if uses.get(current, 0) > 1:
                raise node.error(f"the graph branches: {current!r} feeds {uses[current]} nodes")
            add = None
            if node.op == "MatMul" and k + 1 < len(nodes) and nodes[k + 1].op == "Add":
                nxt = nodes[k + 1]
                if node.node.output[0] in nxt.node.input and sum(i in consts for i in nxt.node.input) == 1:
                    nxt.check_attributes()
                    add = nxt
            elif node.op == "Add":
                raise node.error("an Add that does not follow a MatMul (a bias) is not supported")
            if node.op == "Identity":
                pass
            elif node.op == "Conv":
                builder.conv(node)
            elif node.op == "Relu":
                builder.add(node, nn.ReLU())
            elif node.op == "MaxPool":
                builder.maxpool(node)
            elif node.op == "LRN":
                builder.lrn(node)
            elif node.op == "Flatten":
                if int(node.attrs.get("axis", 1)) != 1:
                    raise node.error(f"axis {node.attrs['axis']} is not supported (only 1)")
                builder.flatten(node, "Flatten")
            elif node.op == "Reshape":
                builder.reshape(node)
            elif node.op == "Gemm":
                builder.gemm(node)
            elif node.op == "MatMul":
                builder.matmul(node, add)
            elif node.op == "Dropout":
                builder.dropout(node)
            elif node.op == "Softmax":
                builder.softmax(node, opset)
            if add is not None:
                node, k = add, k + 1
            current = node.node.output[0]
            k += 1
    except ValueError as exc:
        raise ValueError(f"{path!r}: {exc}") from None
    outputs = [o.name for o in model.graph.output]
    if outputs != [current]:
        raise ValueError(f"{path!r}: the graph's outputs {outputs} are not the end of the chain {current!r}")
    if not builder.layers:
        raise ValueError(f"{path!r}: the graph has no layers zfraw can use")
    name = model.graph.name or os.path.splitext(os.path.basename(path))[0]
    net = nn.Sequential(builder.layers, input_shape=chw, name=name)
    if builder.dtype is not None and builder.dtype != np.float32:
        net.astype(builder.dtype)
    net.preprocessing = _preprocessing(preprocessing, model, net, path)
    from zfraw import to_device

    return to_device(net).eval()


def _preprocessing(choice, model, net, path):
    if choice is not None:
        return PRESETS[choice] if isinstance(choice, str) and choice in PRESETS else Preprocessing.from_dict(
            choice if not isinstance(choice, str) else {"name": choice})
    for prop in model.metadata_props:
        if prop.key == PREPROCESSING_KEY:
            try:
                return Preprocessing.from_dict(json.loads(prop.value))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path!r}: its {PREPROCESSING_KEY!r} metadata is not valid: {exc}") from None
    return guess_preprocessing(net)


def guess_preprocessing(net):
    """The preset of a network recognised by its first conv and input size, else None.

    ZFNet-512: 7x7 stride 2 pad 0 filters on 224x224 -> ``zfnet512``; CaffeNet /
    BVLC AlexNet: 11x11 stride 4 pad 0 on 227 -> ``caffenet``; torchvision
    AlexNet: 11x11 stride 4 pad 2 on 224 -> ``alexnet_torchvision``.
    """
    first = next((layer for _, layer in net if isinstance(layer, nn.Conv2d)), None)
    if first is None:
        return None
    side = net.input_shape[-1] if net.input_shape else None
    key = (first.kernel_size, first.stride, first.pad)
    if key == ((7, 7), (2, 2), (0, 0)) and side in (224, None):
        return PRESETS["zfnet512"]
    if key == ((11, 11), (4, 4), (0, 0)) and side in (227, None):
        return PRESETS["caffenet"]
    if key == ((11, 11), (4, 4), (2, 2)) and side in (224, None):
        return PRESETS["alexnet_torchvision"]
    return None


# ============================================================== export

def save(net, path, input_shape=None, opset=DEFAULT_OPSET):
    """Write ``net`` as an ONNX model (atomically); returns ``path``.

    input_shape (C, H, W): the input (default: the network's own); the batch
    dimension is symbolic (``N``).  Layers become Conv and MaxPool (per-side
    pads), Relu, LRN, Flatten, Gemm (transB=1), Dropout and Softmax nodes named like the
    layers, with initializers ``<layer>.w`` / ``<layer>.b``; the network's
    preprocessing goes into the metadata (``zfraw.preprocessing``), so that
    :func:`load` gives back the same network, names and weights.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    from zfraw import to_host

    if not isinstance(net, nn.Sequential):
        raise TypeError(f"net must be a zfraw.nn.Sequential, got {type(net).__name__}")
    if not os.fspath(path).endswith(".onnx"):
        raise ValueError(f"path must end in .onnx, got {os.fspath(path)!r}")
    shape = input_shape or net.input_shape
    if shape is None or len(tuple(shape)) != 3:
        raise ValueError(f"input_shape must be (C, H, W) (the network records none), got {shape!r}")
    shape = tuple(int(s) for s in shape)
    if opset < 10:
        raise ValueError(f"opset must be >= 10 (MaxPool's ceil_mode), got {opset}")
    dtypes = {p.dtype for p in net.parameters().values()} or {np.dtype(np.float32)}
    if len(dtypes) != 1:
        raise ValueError(f"the parameters mix dtypes {sorted(map(str, dtypes))}; cast the network first")
    dtype = dtypes.pop()
    elem = TensorProto.FLOAT if dtype == np.float32 else TensorProto.DOUBLE
    nodes, inits = [], []
    current = "input"

    def param(lname, key, array):
        inits.append(numpy_helper.from_array(np.asarray(to_host(array)), f"{lname}.{key}"))
        return f"{lname}.{key}"

    for lname, layer in net:
        kind = type(layer).__name__
        if isinstance(layer, nn.Conv2d):
            ins = [current, param(lname, "w", layer.params["w"])] + (
                [param(lname, "b", layer.params["b"])] if "b" in layer.params else [])
            top, bottom, left, right = layer.padding
            node = helper.make_node("Conv", ins, [lname], name=lname, kernel_shape=list(layer.kernel_size),
                                    strides=list(layer.stride), pads=[top, left, bottom, right], group=layer.groups)
        elif isinstance(layer, nn.ReLU):
            node = helper.make_node("Relu", [current], [lname], name=lname)
        elif isinstance(layer, nn.MaxPool2d):
            top, bottom, left, right = layer.padding
            node = helper.make_node("MaxPool", [current], [lname], name=lname, kernel_shape=list(layer.size),
                                    strides=list(layer.stride), pads=[top, left, bottom, right],
                                    ceil_mode=int(layer.ceil_mode))
        elif isinstance(layer, nn.LocalResponseNorm):
            if layer.size % 2 == 0:
                raise ValueError(f"layer {lname!r}: an even LRN size ({layer.size}) has no ONNX equivalent")
            node = helper.make_node("LRN", [current], [lname], name=lname, size=layer.size, alpha=layer.alpha,
                                    beta=layer.beta, bias=layer.k)
        elif isinstance(layer, nn.Linear):
            ins = [current, param(lname, "w", layer.params["w"])] + (
                [param(lname, "b", layer.params["b"])] if "b" in layer.params else [])
            node = helper.make_node("Gemm", ins, [lname], name=lname, transB=1)
        elif isinstance(layer, nn.Flatten):
            node = helper.make_node("Flatten", [current], [lname], name=lname, axis=1)
        elif isinstance(layer, nn.Dropout):
            ins = [current]
            if layer.p != 0.5:
                ratio = numpy_helper.from_array(np.array(layer.p, dtype=dtype), f"{lname}.ratio")
                inits.append(ratio)
                ins.append(ratio.name)
            node = helper.make_node("Dropout", ins, [lname], name=lname)
        elif isinstance(layer, nn.Softmax):
            node = helper.make_node("Softmax", [current], [lname], name=lname, axis=1)
        else:
            raise ValueError(f"layer {lname!r}: {kind} has no ONNX export")
        nodes.append(node)
        current = lname

    linears = [layer for _, layer in net if isinstance(layer, nn.Linear)]
    out_shape = (linears[-1].out_features,) if linears else net.summary(shape)[-1][2]
    graph = helper.make_graph(
        nodes, net.name or "zfraw",
        [helper.make_tensor_value_info("input", elem, ["N", *shape])],
        [helper.make_tensor_value_info(current, elem, ["N", *out_shape])],
        initializer=inits,
    )
    model = helper.make_model(graph, producer_name="zfraw", opset_imports=[helper.make_opsetid("", int(opset))])
    model.ir_version = min(model.ir_version, 10)
    if net.preprocessing is not None:
        helper.set_model_props(model, {PREPROCESSING_KEY: json.dumps(net.preprocessing.to_dict())})
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    atomic_write(path, lambda fh: fh.write(data))
    return path

