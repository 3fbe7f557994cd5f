"""Open any model file zfraw reads, and make an imported network take zfraw's images.

:func:`load_model` picks the reader by the file's suffix (``.npz``: zfraw's own,
``.onnx``: :mod:`zfraw.io.onnx`, ``.pth``/``.pt``: :mod:`zfraw.io.torch`).
:func:`for_images` puts an imported network's preprocessing in front of it as a
:class:`zfraw.nn.Normalize` layer named ``input``, so that, like every zfraw model,
it takes ``pixels / 255`` (RGB) and its deconvnet projections come back in RGB
pixel space; the pictures then need no mean.
"""
from __future__ import annotations

import os

from zfraw import nn

__all__ = ["MODEL_SUFFIXES", "load_model", "for_images", "INPUT_LAYER"]

MODEL_SUFFIXES = (".npz", ".onnx", ".pth", ".pt")
#: the name of the preprocessing layer :func:`for_images` adds
INPUT_LAYER = "input"


def load_model(path, arch=None, preprocessing=None):
    """Read a network from a ``.onnx`` or ``.pth``/``.pt`` file, or zfraw's ``.npz`` (any other name).

    Returns ``(net, extra)``: ``extra`` is the ``.npz`` file's saved metadata
    (classes, mean, ...) and ``{}`` for the foreign formats.  ``arch`` names the
    architecture of a ``.pth`` state dict (default ``alexnet_torchvision``);
    ``preprocessing`` (a :class:`zfraw.io.preprocess.Preprocessing`, or a preset
    name) replaces the recorded one.
    """
    from zfraw.io.preprocess import Preprocessing, preset

    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file {path!r} does not exist")
    extra = {}
    if suffix not in (".onnx", ".pth", ".pt"):  # zfraw's own format (its reader says what else a file is)
        from zfraw import to_device
        from zfraw.io import npz

        net = to_device(nn.load(path)).eval()
        extra = npz.read_meta(path).get("extra", {})
    elif suffix == ".onnx":
        from zfraw.io import onnx

        net = onnx.load(path)
    else:
        from zfraw.io import torch

        net = torch.load(path, arch=arch or "alexnet_torchvision")
    if isinstance(preprocessing, str):
        preprocessing = preset(preprocessing)
    if preprocessing is not None:
        net.preprocessing = Preprocessing.from_dict(preprocessing)
    return net, extra


def for_images(net):
    """``net`` with its preprocessing as a first layer ``input`` (a new Sequential sharing the layers).

    A network without ``preprocessing`` (zfraw's own models) is returned as it is.
    The result's ``input_shape`` is (3, s, s) with s the preprocessing's input size;
    its own ``preprocessing`` is None (its input is already zfraw's).
    """
    prep = net.preprocessing
    if prep is None:
        return net
    if INPUT_LAYER in net.layers:
        raise ValueError(f"the network already has a layer named {INPUT_LAYER!r}")
    layers = [(INPUT_LAYER, prep.input_layer())] + list(net)
    return nn.Sequential(layers, input_shape=(3, prep.input_size, prep.input_size), name=net.name)
