"""zfraw: a from-scratch convnet engine that reproduces the deconvnet of Zeiler & Fergus.

>>> import zfraw
>>> from zfraw import functional as F
"""
from zfraw.backend import (
    BackendUnavailable, backends, get_array_module, get_backend, set_backend,
    set_workspace_bytes, to_device, to_host, use_backend, workspace_bytes,
)
from zfraw import functional

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailable", "backends", "get_array_module", "get_backend", "set_backend",
    "set_workspace_bytes", "to_device", "to_host", "use_backend", "workspace_bytes",
    "functional", "__version__",
]
