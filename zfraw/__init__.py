"""zfraw: a from-scratch convnet engine that reproduces the deconvnet of Zeiler & Fergus.

>>> import zfraw
>>> from zfraw import functional as F
"""
# first, before anything loads NumPy: OpenBLAS's idle workers must not spin through zfraw's kernels
from zfraw import blas
blas.start()

from zfraw.backend import (  # noqa: E402
    BackendUnavailable, backends, get_array_module, get_backend, set_backend,
    set_workspace_bytes, to_device, to_host, use_backend, workspace_bytes,
)
from zfraw import functional  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "backends", "get_array_module", "get_backend", "set_backend",
    "set_workspace_bytes", "to_device", "to_host", "use_backend", "workspace_bytes",
    "functional", "__version__",
]
