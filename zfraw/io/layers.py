"""What the importers share: the table from foreign ops to zfraw layers, and layer names.

Both :mod:`zfraw.io.onnx` and :mod:`zfraw.io.torch` turn a foreign network into a
:class:`zfraw.nn.Sequential` whose layers a user recognises from the paper:
conv1..conv5, relu1, pool1, norm1, ..., fc6..fc8 (Caffe's and the paper's
names).  :data:`FOREIGN_OPS` lists, for each supported foreign op, the zfraw layer
it becomes and the stem of its name; :class:`LayerNamer` picks each name.
"""
from __future__ import annotations

import re

__all__ = ["FOREIGN_OPS", "LayerNamer"]

#: foreign op (ONNX op_type; torch.nn class name) -> (zfraw layer type, name stem)
FOREIGN_OPS = {
    "Conv": ("Conv2d", "conv"), "Conv2d": ("Conv2d", "conv"),
    "Relu": ("ReLU", "relu"), "ReLU": ("ReLU", "relu"),
    "MaxPool": ("MaxPool2d", "pool"), "MaxPool2d": ("MaxPool2d", "pool"),
    "LRN": ("LocalResponseNorm", "norm"), "LocalResponseNorm": ("LocalResponseNorm", "norm"),
    "Gemm": ("Linear", "fc"), "MatMul": ("Linear", "fc"), "Linear": ("Linear", "fc"),
    "Flatten": ("Flatten", "flatten"), "Reshape": ("Flatten", "flatten"),
    "Dropout": ("Dropout", "drop"),
    "Softmax": ("Softmax", "prob"),
}

_NUMBERED = re.compile(r"(?<![a-z])(conv|fc)_?(\d+)", re.IGNORECASE)
_CLEAN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


class LayerNamer:
    """Names layers in order, as the paper and Caffe do.

    A conv or fc layer is named ``conv<k>``/``fc<k>`` when its node or weight name
    says so (``gpu_0/conv1_w_0`` -> conv1, ``fc6.w`` -> fc6); else by the node's own
    name when that is a clean identifier that is not an exporter's automatic name
    (``Conv_3``); else by counting (convs 1, 2, ...; fc layers continue after the
    last conv, as AlexNet's fc6 follows conv5).  The layers between take the number
    of the conv/fc before them (relu1, pool1, norm1, drop6); flatten and softmax
    (``prob``) have fixed names.  A name already used gets ``_2``, ``_3``, ...
    """

    def __init__(self):
        self.used = set()
        self.number = None      # the number of the last conv/fc layer
        self.convs = 0
        self.fcs = 0

    def _unique(self, name):
        out, k = name, 2
        while out in self.used:
            out, k = f"{name}_{k}", k + 1
        self.used.add(out)
        return out

    @staticmethod
    def _clean(name, op):
        return bool(name) and _CLEAN.match(name) and not name.lower().startswith(op.lower() + "_")

    def name(self, op, hints=()):
        """The name of the next layer, made from the foreign ``op`` and name ``hints``
        (node name first, then weight names)."""
        _, stem = FOREIGN_OPS[op]
        hints = [h for h in hints if h]
        if stem in ("conv", "fc"):
            if stem == "conv":
                self.convs += 1
            else:
                self.fcs += 1
            for hint in hints:
                m = _NUMBERED.search(hint)
                if m and m.group(1).lower() == stem:
                    self.number = int(m.group(2))
                    return self._unique(f"{stem}{self.number}")
            if hints and self._clean(hints[0], op) and hints[0] not in self.used:
                self.number = None
                return self._unique(hints[0])
            self.number = self.convs if stem == "conv" else self.convs + self.fcs
            return self._unique(f"{stem}{self.number}")
        if hints and self._clean(hints[0], op) and hints[0] not in self.used:
            return self._unique(hints[0])
        if stem in ("flatten", "prob") or self.number is None:
            return self._unique(stem)
        return self._unique(f"{stem}{self.number}")
