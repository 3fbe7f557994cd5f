"""Model files: reading and writing networks.

- :mod:`zfraw.io.npz` — zfraw's own format (architecture + weights + metadata),
  used by :meth:`zfraw.nn.Sequential.save`, :func:`zfraw.nn.load` and the
  training checkpoints;
- :mod:`zfraw.io.onnx` — import and export of ONNX models (optional ``onnx``);
- :mod:`zfraw.io.torch` — PyTorch state dicts (optional ``torch``);
- :mod:`zfraw.io.layers` — the table from foreign ops to zfraw layers, layer names;
- :mod:`zfraw.io.preprocess` — the input preprocessing each model expects;
- :mod:`zfraw.io.classes` — the 1000 ImageNet class names;
- :mod:`zfraw.io.files` — open any model file by its suffix; an imported model for pictures;
- :mod:`zfraw.io.layouts` — ONNX files of the Model Zoo's layouts with random weights.
"""
