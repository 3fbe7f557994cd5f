"""Model files: reading and writing networks.

- :mod:`zfraw.io.npz` — zfraw's own format (architecture + weights + metadata),
  used by :meth:`zfraw.nn.Sequential.save`, :func:`zfraw.nn.load` and the
  training checkpoints;
- :mod:`zfraw.io.onnx` — import and export of ONNX models (optional ``onnx``);
- :mod:`zfraw.io.torch` — PyTorch state dicts (optional ``torch``).
"""
