"""PyTorch state dicts: torchvision's AlexNet, and other plain sequential CNNs by a name map.

:func:`load` reads a ``.pth`` file with ``torch.load(..., weights_only=True)`` (never
unpickling code) -- or takes a state dict already in memory -- and copies its
tensors into a zfraw network by name.  Needs the optional ``torch`` package
(``pip install zfraw[torch]``) for files; a dict of NumPy arrays needs nothing.

The name map (:data:`ARCHS`) says which zfraw layer each torch module becomes::

    torchvision AlexNet    features.0 -> conv1    features.3 -> conv2    features.6 -> conv3
                           features.8 -> conv4    features.10 -> conv5
                           classifier.1 -> fc6    classifier.4 -> fc7    classifier.6 -> fc8

and ``<module>.weight`` / ``<module>.bias`` become ``<layer>.w`` / ``<layer>.b``.

The hook for another plain sequential CNN (conv, relu, max-pool, LRN, linear,
dropout layers in one chain): build the same network in zfraw (a
:class:`zfraw.nn.Sequential` whose layers are in the torch model's order) and pass
it as ``net`` with ``name_map``, either a dict ``{torch module: zfraw layer}`` or a
function ``torch key -> "layer.param"`` (None to skip a key, e.g. BatchNorm's
``num_batches_tracked``)::

    net = zfraw.nn.Sequential([("conv1", Conv2d(3, 32, 3, pad=1)), ("relu1", ReLU()), ...])
    zfraw.io.torch.load("vgg_tiny.pth", net=net, name_map={"features.0": "conv1", ...})

Every key must be used and every zfraw parameter filled; a key that is not in the
map, a missing parameter or a shape that does not fit is a ValueError naming the
file and the key.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from zfraw import models, nn

__all__ = ["load", "read_state_dict", "ARCHS"]

#: arch -> (builder (num_classes -> Sequential), {torch module: zfraw layer}, classifier module)
ARCHS = {
    "alexnet_torchvision": (
        lambda num_classes: models.alexnet_torchvision(num_classes=num_classes, init_std=None),
        {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
         "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"},
        "classifier.6",
    ),
}

_PARAMS = {"weight": "w", "bias": "b"}


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError("reading PyTorch .pth files needs torch: pip install 'zfraw[torch]' "
                          "(or pass a dict of NumPy arrays)") from None
    return torch


def read_state_dict(path):
    """The tensors of a ``.pth`` file as ``{key: float ndarray}`` (``weights_only=True``).

    A checkpoint dict that wraps the weights in ``"state_dict"`` or ``"model"`` is
    unwrapped.  Anything else -- not a torch file, truncated, pickled objects that
    ``weights_only`` refuses, a tensor or list instead of a dict -- is a ValueError
    naming the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"PyTorch file {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a PyTorch .pth file")
    torch = _torch()
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path!r} is not a PyTorch state dict that can be read safely "
                         f"(weights_only=True): {first}") from None
    return _as_arrays(obj, path)


def _as_arrays(obj, where):
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model_state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where!r} is not a state dict (a dict of named tensors): it holds a {type(obj).__name__}")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise ValueError(f"{where!r}: state dict keys must be strings, got {key!r}")
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu()
            if value.is_floating_point() and value.dtype not in (_torch().float32, _torch().float64):
                value = value.float()  # float16 / bfloat16
            value = value.numpy()
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{where!r}: {key!r} is a {type(value).__name__}, not a tensor")
        out[key] = value
    return out


def _mapper(name_map):
    if callable(name_map):
        return name_map

    def by_module(key):
        module, _, param = key.rpartition(".")
        if module in name_map and param in _PARAMS:
            return f"{name_map[module]}.{_PARAMS[param]}"
        return None

    return by_module


def load(path_or_state_dict, arch="alexnet_torchvision", net=None, name_map=None, preprocessing=None):
    """A zfraw network with the weights of a PyTorch state dict (in evaluation mode).

    Parameters
    ----------
    path_or_state_dict : str, os.PathLike or mapping
        A ``.pth`` file, or a state dict (torch tensors or NumPy arrays).
    arch : str
        A key of :data:`ARCHS` (``"alexnet_torchvision"``); its number of classes
        is read from the classifier's weight.  Ignored when ``net`` is given.
    net, name_map :
        The hook for other plain sequential CNNs (see the module docstring).
    preprocessing : Preprocessing, dict, str or None
        Recorded on the network; by default the arch's preset
        (:mod:`zfraw.io.preprocess`), or None with ``net``.
    """
    from zfraw.io.preprocess import PRESETS, Preprocessing, preset

    if isinstance(path_or_state_dict, Mapping):
        where = "the state dict"
        state = _as_arrays(path_or_state_dict, where)
    else:
        where = os.fspath(path_or_state_dict)
        state = read_state_dict(where)
    if net is None:
        if arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)} (or pass net= and name_map=), got {arch!r}")
        build, module_map, classifier = ARCHS[arch]
        if name_map is None:
            name_map = module_map
        head = state.get(classifier + ".weight")
        if head is None or head.ndim != 2:
            missing = [k for k in (f"{m}.{p}" for m in module_map for p in _PARAMS) if k not in state]
            raise ValueError(f"{where!r} is not a {arch} state dict: missing keys {missing[:6]}"
                             f"{' ...' if len(missing) > 6 else ''}; its keys are {_preview(state)}")
        net = build(int(head.shape[0]))
        if preprocessing is None:
            preprocessing = PRESETS.get(arch)
    elif name_map is None:
        raise ValueError("with net= give name_map= too (torch module -> zfraw layer, or a function)")
    mapper = _mapper(name_map)
    own = net.parameters()
    filled = {}
    for key, value in state.items():
        target = mapper(key)
        if target is None:
            raise ValueError(f"{where!r}: key {key!r} has no place in the zfraw network ({net.name}); "
                             f"is this state dict for another architecture? Its keys are {_preview(state)}")
        if target not in own:
            raise ValueError(f"{where!r}: key {key!r} maps to {target!r}, which is not a parameter of the network")
        if value.dtype.kind != "f":
            raise ValueError(f"{where!r}: key {key!r} has dtype {value.dtype}; expected floating point")
        if tuple(value.shape) != tuple(own[target].shape):
            raise ValueError(f"{where!r}: key {key!r} has shape {tuple(value.shape)}, but {target} needs "
                             f"{tuple(own[target].shape)}")
        filled[target] = value
    missing = [k for k in own if k not in filled]
    if missing:
        raise ValueError(f"{where!r}: the state dict gives no value for {missing}")
    dtypes = {v.dtype for v in filled.values()}
    if len(dtypes) == 1 and dtypes != {np.dtype(np.float32)}:
        net.astype(dtypes.pop())  # keep float64 weights float64
    net.load_state_dict(filled)
    if preprocessing is not None:
        net.preprocessing = preset(preprocessing) if isinstance(preprocessing, str) else \
            Preprocessing.from_dict(preprocessing)
    from zfraw import to_device

    return to_device(net).eval()


def _preview(state, n=6):
    keys = list(state)
    return ", ".join(keys[:n]) + (f", ... ({len(keys)} keys)" if len(keys) > n else "")
