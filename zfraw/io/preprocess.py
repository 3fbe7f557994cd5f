"""The preprocessing a network expects of its input image, stored with the model.

An imported network was trained on images prepared one particular way; zfraw's
own models take ``pixels / 255`` (RGB) minus a per-channel mean.  A
:class:`Preprocessing` says, for one model, how a uint8 RGB photo becomes the
network's input::

    v[c] = rgb_or_bgr(img)[c] / 255 * scale          # scale 1 (0-1) or 255 (0-255)
    x[c] = (v[c] - mean[c]) / std[c]                 # mean, std in the scaled units,
                                                     # in the model's channel order

after resizing the shorter side to ``resize`` and cutting the central
``input_size`` square.  It is kept in the model's ``.npz``
(``spec["preprocessing"]``, see :mod:`zfraw.io.npz`) and shown by ``zfraw import``.

The presets, one per supported model (:data:`PRESETS`):

===================  =====  =====  ===========================================  ==================  ====
model                order  scale  mean                                         std                 size
===================  =====  =====  ===========================================  ==================  ====
zfnet512 (ONNX zoo)  BGR    255    104.00699, 116.66877, 122.67892 (B, G, R)    1, 1, 1             224
caffenet, bvlc       BGR    255    104.00699, 116.66877, 122.67892 (B, G, R)    1, 1, 1             227
alexnet_torchvision  RGB    1      0.485, 0.456, 0.406                          0.229, 0.224, 0.225 224
===================  =====  =====  ===========================================  ==================  ====

(the BGR means are those of Caffe's ``ilsvrc_2012_mean.npy``, averaged over the
image; torchvision's are its ImageNet statistics).  The command line overrides
any field (``--channel-order``, ``--scale``, ``--mean``, ``--std``,
``--input-size``).

For the pictures, :meth:`Preprocessing.input_layer` gives an :class:`zfraw.nn.Normalize`
layer that does the affine part inside the network, so that the network can
take ``pixels / 255`` (RGB) like every zfraw model, and its deconvnet
projections land in RGB pixel space.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = ["Preprocessing", "PRESETS", "preset", "CAFFE_BGR_MEAN", "IMAGENET_RGB_MEAN", "IMAGENET_RGB_STD"]

#: Caffe's ImageNet mean (``ilsvrc_2012_mean.npy`` averaged over the image), B, G, R in 0-255
CAFFE_BGR_MEAN = (104.00698793, 116.66876762, 122.67891434)
#: torchvision's ImageNet statistics, R, G, B in 0-1
IMAGENET_RGB_MEAN = (0.485, 0.456, 0.406)
IMAGENET_RGB_STD = (0.229, 0.224, 0.225)


def _triple(name, v):
    try:
        t = tuple(float(a) for a in v)
    except TypeError:
        raise TypeError(f"{name} must be three numbers (one per channel), got {v!r}") from None
    if len(t) != 3 or not all(math.isfinite(a) for a in t):
        raise ValueError(f"{name} must be three finite numbers (one per channel), got {v!r}")
    return t


@dataclass(frozen=True)
class Preprocessing:
    """How a uint8 RGB image becomes the network's input (see the module docstring).

    channel_order : "RGB" or "BGR"
        The order of the network's input channels.
    scale : float
        The pixel range the network expects: 1.0 (0-1) or 255.0 (0-255).
    mean, std : three floats
        Subtracted, then divided, per input channel (in the network's channel
        order and in ``scale`` units).
    input_size : int
        The side of the square the network takes.
    resize : int
        The shorter side is resized to this before the central crop (>= input_size).
    name : str
        Which preset (or "custom").
    """

    channel_order: str = "RGB"
    scale: float = 1.0
    mean: tuple = (0.0, 0.0, 0.0)
    std: tuple = (1.0, 1.0, 1.0)
    input_size: int = 224
    resize: int = 256
    name: str = "custom"

    def __post_init__(self):
        order = str(self.channel_order).upper()
        if order not in ("RGB", "BGR"):
            raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {self.channel_order!r}")
        object.__setattr__(self, "channel_order", order)
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number (1 for 0-1 pixels, 255 for 0-255), got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        object.__setattr__(self, "mean", _triple("mean", self.mean))
        std = _triple("std", self.std)
        if min(std) <= 0:
            raise ValueError(f"std must be positive, got {std}")
        object.__setattr__(self, "std", std)
        for field_name in ("input_size", "resize"):
            v = getattr(self, field_name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{field_name} must be a positive int, got {v!r}")
        if self.resize < self.input_size:
            raise ValueError(f"resize ({self.resize}) must be at least input_size ({self.input_size})")

    # --- records
    def to_dict(self):
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d):
        if d is None:
            return None
        if isinstance(d, Preprocessing):
            return d
        known = {k: v for k, v in dict(d).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def updated(self, **changes):
        """A copy with the fields given (None: unchanged); the name becomes "custom" if any changed."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        return replace(self, **changes, name=changes.get("name", "custom"))

    def describe(self):
        """One line for people: ``BGR, 0-255, mean (104, 117, 123), std (1, 1, 1), 224x224 (resize 256)``."""
        rng = "0-255" if self.scale == 255 else ("0-1" if self.scale == 1 else f"0-{self.scale:g}")

        def fmt(t):
            return "(" + ", ".join(f"{v:.6g}" for v in t) + ")"

        return (f"{self.name}: {self.channel_order}, {rng}, mean {fmt(self.mean)}, std {fmt(self.std)}, "
                f"{self.input_size}x{self.input_size} centre crop (shorter side resized to {self.resize})")

    # --- use
    def input_layer(self):
        """A :class:`zfraw.nn.Normalize` layer: ``pixels / 255`` (RGB) -> the network's input."""
        from zfraw.nn import Normalize

        return Normalize(self.channel_order, self.scale, self.mean, self.std)

    def transform(self):
        """``img uint8 HWC RGB -> float32 (3, s, s)`` in *zfraw's* units (pixels / 255, RGB):
        resize, centre crop; the rest is :meth:`input_layer`'s."""
        from zfraw import data

        return data.eval_transform(self.resize, self.input_size)

    def apply(self, img):
        """The network's input for one image: ``img uint8 HWC RGB -> float32 (3, s, s)``."""
        return self.apply_chw(self.transform()(img))

    def apply_chw(self, x):
        """The affine part alone: x float (3, H, W) = pixels / 255 (RGB) -> the network's input."""
        if self.channel_order == "BGR":
            x = x[::-1]
        x = x * np.float32(self.scale)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


PRESETS = {
    "zfnet512": Preprocessing("BGR", 255.0, CAFFE_BGR_MEAN, (1.0, 1.0, 1.0), 224, 256, "zfnet512"),
    "caffenet": Preprocessing("BGR", 255.0, CAFFE_BGR_MEAN, (1.0, 1.0, 1.0), 227, 256, "caffenet"),
    "bvlc_alexnet": Preprocessing("BGR", 255.0, CAFFE_BGR_MEAN, (1.0, 1.0, 1.0), 227, 256, "bvlc_alexnet"),
    "alexnet_torchvision": Preprocessing("RGB", 1.0, IMAGENET_RGB_MEAN, IMAGENET_RGB_STD, 224, 256,
                                         "alexnet_torchvision"),
}


def preset(name):
    """The :class:`Preprocessing` of a supported model by name (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"preprocessing preset must be one of {sorted(PRESETS)}, got {name!r}")
    return PRESETS[name]
