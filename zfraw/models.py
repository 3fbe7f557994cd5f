"""The networks: ZFNet exactly as the paper gives it, the original AlexNet, and a small ZFNet.

All initialise as the paper does by default: weights N(0, 1e-2), biases 0, from
a seed, so the same seed gives the same network (``init_std="he"`` for He's
N(0, 2/fan_in), with ``first_init_std`` for conv1).

=====  ====================  ===========  =======================
layer  ZFNet (3x224x224)     output       AlexNet (3x227x227)
=====  ====================  ===========  =======================
conv1  96 7x7/2 pad 1        96x110x110   96 11x11/4 -> 55
pool1  3x3/2 ceil            96x55x55     (after norm1) -> 27
conv2  256 5x5/2             256x26x26    256 5x5 pad 2 groups 2
pool2  3x3/2 ceil            256x13x13    -> 13
conv3  384 3x3 pad 1         384x13x13    384 3x3 pad 1
conv4  384 3x3 pad 1         384x13x13    384 3x3 pad 1 groups 2
conv5  256 3x3 pad 1         256x13x13    256 3x3 pad 1 groups 2
pool5  3x3/2                 256x6x6      -> 6
fc6    4096, dropout 0.5                  4096
fc7    4096, dropout 0.5                  4096
fc8    classes                            classes
=====  ====================  ===========  =======================
"""
from __future__ import annotations

import numpy as np

from zfraw.nn import (
    Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU, Sequential,
)

__all__ = ["zfnet", "alexnet", "alexnet_torchvision", "zfnet_mini", "alexnet_mini", "MODELS", "build"]

INIT_STD = 1e-2


class _Seeds:
    """A stream of per-layer seeds drawn from one model seed."""

    def __init__(self, seed):
        self._seq = np.random.SeedSequence(seed)

    def __call__(self):
        return int(self._seq.spawn(1)[0].generate_state(1)[0])


def _conv(seeds, cin, cout, k, stride=1, pad=0, groups=1, std=INIT_STD):
    return Conv2d(cin, cout, k, stride, pad, groups, init_std=std, seed=seeds())


def _fc(seeds, fin, fout, std=INIT_STD):
    return Linear(fin, fout, init_std=std, seed=seeds())


def _classifier(seeds, fin, hidden, num_classes, dropout, std=INIT_STD):
    return [
        ("flatten", Flatten()),
        ("fc6", _fc(seeds, fin, hidden, std)), ("relu6", ReLU()), ("drop6", Dropout(dropout, seed=seeds())),
        ("fc7", _fc(seeds, hidden, hidden, std)), ("relu7", ReLU()), ("drop7", Dropout(dropout, seed=seeds())),
        ("fc8", _fc(seeds, hidden, num_classes, std)),
    ]


def _check_classes(num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def zfnet(num_classes=1000, seed=0, dropout=0.5, init_std=INIT_STD, first_init_std=None):
    """ZFNet (Zeiler & Fergus 2014, fig. 3) for 3x224x224 inputs.

    Spatial sizes 224 -> 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 13 -> 6; layer names
    conv1..conv5, relu*, pool1, pool2, pool5, norm1, norm2, flatten, fc6..fc8, drop6, drop7.
    ``init_std`` (the paper's 1e-2, or ``"he"``) and ``first_init_std`` (conv1's, if
    different) as in :func:`zfnet_mini`.
    """
    num_classes = _check_classes(num_classes)
    s = _Seeds(seed)
    std, first = init_std, init_std if first_init_std is None else first_init_std
    layers = [
        ("conv1", _conv(s, 3, 96, 7, 2, 1, std=first)), ("relu1", ReLU()),
        ("pool1", MaxPool2d(3, 2, ceil_mode=True)), ("norm1", LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
        ("conv2", _conv(s, 96, 256, 5, 2, 0, std=std)), ("relu2", ReLU()),
        ("pool2", MaxPool2d(3, 2, ceil_mode=True)), ("norm2", LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
        ("conv3", _conv(s, 256, 384, 3, 1, 1, std=std)), ("relu3", ReLU()),
        ("conv4", _conv(s, 384, 384, 3, 1, 1, std=std)), ("relu4", ReLU()),
        ("conv5", _conv(s, 384, 256, 3, 1, 1, std=std)), ("relu5", ReLU()),
        ("pool5", MaxPool2d(3, 2)),
    ] + _classifier(s, 256 * 6 * 6, 4096, num_classes, dropout, std=std)
    return Sequential(layers, input_shape=(3, 224, 224), name="zfnet")


def alexnet(num_classes=1000, seed=0, dropout=0.5, init_std=INIT_STD, first_init_std=None):
    """The original AlexNet (Krizhevsky et al. 2012) with its two-tower ``groups=2`` layers.

    For 3x227x227 inputs, in the layer order of Caffe's bvlc_alexnet (conv, relu,
    norm, pool): 227 -> 55 -> 27 -> 27 -> 13 -> 13 -> 13 -> 13 -> 6.
    ``init_std``/``first_init_std`` as in :func:`zfnet`.
    """
    num_classes = _check_classes(num_classes)
    s = _Seeds(seed)
    std, first = init_std, init_std if first_init_std is None else first_init_std
    layers = [
        ("conv1", _conv(s, 3, 96, 11, 4, 0, std=first)), ("relu1", ReLU()),
        ("norm1", LocalResponseNorm(5, 1e-4, 0.75, 2.0)), ("pool1", MaxPool2d(3, 2)),
        ("conv2", _conv(s, 96, 256, 5, 1, 2, groups=2, std=std)), ("relu2", ReLU()),
        ("norm2", LocalResponseNorm(5, 1e-4, 0.75, 2.0)), ("pool2", MaxPool2d(3, 2)),
        ("conv3", _conv(s, 256, 384, 3, 1, 1, std=std)), ("relu3", ReLU()),
        ("conv4", _conv(s, 384, 384, 3, 1, 1, groups=2, std=std)), ("relu4", ReLU()),
        ("conv5", _conv(s, 384, 256, 3, 1, 1, groups=2, std=std)), ("relu5", ReLU()),
        ("pool5", MaxPool2d(3, 2)),
    ] + _classifier(s, 256 * 6 * 6, 4096, num_classes, dropout, std=std)
    return Sequential(layers, input_shape=(3, 227, 227), name="alexnet")


def alexnet_torchvision(num_classes=1000, seed=0, dropout=0.5, init_std=INIT_STD):
    """torchvision's single-tower AlexNet (``torchvision.models.alexnet``) for 3x224x224 inputs.

    conv1 64 11x11/4 pad 2 -> relu -> pool 3x3/2 -> conv2 192 5x5 pad 2 -> relu ->
    pool -> conv3 384, conv4 256, conv5 256 (3x3 pad 1, relu) -> pool 3x3/2
    (224 -> 55 -> 27 -> 27 -> 13 -> 13 -> 6); then Dropout, fc6 9216 -> 4096, relu,
    Dropout, fc7 4096 -> 4096, relu, fc8 -> classes (torchvision's order: dropout
    *before* each of the first two fc layers); no LRN.  torchvision's
    ``AdaptiveAvgPool2d((6, 6))`` is the identity on the 6x6 maps of a 224x224 input
    and is left out: other input sizes are refused (``input_shape`` is fixed and
    fc6 checks its 9216 inputs).  Load its weights with :func:`zfraw.io.torch.load`.
    """
    num_classes = _check_classes(num_classes)
    s = _Seeds(seed)
    layers = [
        ("conv1", _conv(s, 3, 64, 11, 4, 2, std=init_std)), ("relu1", ReLU()), ("pool1", MaxPool2d(3, 2)),
        ("conv2", _conv(s, 64, 192, 5, 1, 2, std=init_std)), ("relu2", ReLU()), ("pool2", MaxPool2d(3, 2)),
        ("conv3", _conv(s, 192, 384, 3, 1, 1, std=init_std)), ("relu3", ReLU()),
        ("conv4", _conv(s, 384, 256, 3, 1, 1, std=init_std)), ("relu4", ReLU()),
        ("conv5", _conv(s, 256, 256, 3, 1, 1, std=init_std)), ("relu5", ReLU()),
        ("pool5", MaxPool2d(3, 2)),
        ("flatten", Flatten()),
        ("drop6", Dropout(dropout, seed=s())), ("fc6", _fc(s, 256 * 6 * 6, 4096, init_std)), ("relu6", ReLU()),
        ("drop7", Dropout(dropout, seed=s())), ("fc7", _fc(s, 4096, 4096, init_std)), ("relu7", ReLU()),
        ("fc8", _fc(s, 4096, num_classes, init_std)),
    ]
    return Sequential(layers, input_shape=(3, 224, 224), name="alexnet_torchvision")


def zfnet_mini(num_classes=10, seed=0, widths=(32, 64, 96, 96, 64), hidden=256, input_size=64,
               dropout=0.5, init_std=INIT_STD, first_init_std=None):
    """ZFNet's structure scaled for small images (default 3x64x64), practical to train on a CPU.

    conv1 7x7/2 pad 3 -> relu -> pool 3x3/2 ceil -> norm -> conv2 5x5 pad 2 -> relu ->
    pool 3x3/2 ceil -> norm -> conv3, conv4, conv5 3x3 pad 1 -> pool 3x3/2 ceil -> fc6,
    fc7 (``hidden``, dropout) -> fc8.  At 64x64: 32 -> 16 -> 16 -> 8 -> 8 -> 4.
    ``init_std`` is the paper's 1e-2 by default; ``"he"`` (sqrt(2 / fan_in)) trains
    this small net far faster on a CPU budget and is what the built-in model uses.
    ``first_init_std`` overrides it for conv1 (the built-in model keeps the paper's
    1e-2 there: a short training run cannot wash a large random start out of the
    first layer's filters, which would then look like noise).
    """
    return _mini("zfnet_mini", (7, 2, 3), MaxPool2d(3, 2, ceil_mode=True), num_classes, seed, widths, hidden,
                 input_size, dropout, init_std, first_init_std)

def alexnet_mini(num_classes=10, seed=0, widths=(32, 64, 96, 96, 64), hidden=256, input_size=64,
                 dropout=0.5, init_std=INIT_STD, first_init_std=None):
    """``zfnet_mini`` with AlexNet's first layer (11x11, stride 4) instead of ZFNet's (7x7, stride 2).

    The paper's fig. 6 compares the two first layers; this net makes that
    comparison at 64x64.  ``zfnet_mini`` scales ZFNet by keeping its first
    layer's geometry as it is (7x7 stride 2, padded to give 32x32 maps) and
    narrowing the widths, with conv2's stride 2 -> 1 so that a 64x64 image
    still has 16x16 maps at conv2.  ``alexnet_mini`` keeps AlexNet's first
    layer as it is the same way: conv1 11x11 stride 4 pad 5 (64 -> 16), and
    pool1 3x3 stride 1 pad 1 (16 -> 16) in place of zfnet_mini's stride-2
    pool, so that conv2 sees the same 16x16 grid with the same total stride 4.
    Every later layer then has zfnet_mini's shape and parameter count, and the
    two nets differ only in the first layer's filter size and stride (and in a
    parameter-free pooling stride).  Arguments as in :func:`zfnet_mini`.
    """
    return _mini("alexnet_mini", (11, 4, 5), MaxPool2d(3, 1, pad=1), num_classes, seed, widths, hidden,
                 input_size, dropout, init_std, first_init_std)


def _mini(name, first, pool1, num_classes, seed, widths, hidden, input_size, dropout, init_std, first_init_std):
    """The small ZFNet-shaped net with conv1 of geometry ``first`` = (kernel, stride, pad) and ``pool1``."""
    num_classes = _check_classes(num_classes)
    if len(widths) != 5:
        raise ValueError(f"widths must give 5 conv widths, got {widths!r}")
    c1, c2, c3, c4, c5 = (int(w) for w in widths)
    s = _Seeds(seed)
    conv_layers = [
        ("conv1", _conv(s, 3, c1, *first, std=init_std if first_init_std is None else first_init_std)),
        ("relu1", ReLU()),
        ("pool1", pool1), ("norm1", LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
        ("conv2", _conv(s, c1, c2, 5, 1, 2, std=init_std)), ("relu2", ReLU()),
        ("pool2", MaxPool2d(3, 2, ceil_mode=True)), ("norm2", LocalResponseNorm(5, 1e-4, 0.75, 2.0)),
        ("conv3", _conv(s, c2, c3, 3, 1, 1, std=init_std)), ("relu3", ReLU()),
        ("conv4", _conv(s, c3, c4, 3, 1, 1, std=init_std)), ("relu4", ReLU()),
        ("conv5", _conv(s, c4, c5, 3, 1, 1, std=init_std)), ("relu5", ReLU()),
        ("pool5", MaxPool2d(3, 2, ceil_mode=True)),
    ]
    side = _pooled_side(conv_layers, input_size)
    layers = conv_layers + _classifier(s, c5 * side * side, hidden, num_classes, dropout, std=init_std)
    return Sequential(layers, input_shape=(3, input_size, input_size), name=name)

def _pooled_side(layers, size):
    """Spatial side after the windowed layers of ``layers`` for a size x size input."""
    from zfraw.functional import conv_output_size, pool_output_size

    for lname, layer in layers:
        if isinstance(layer, Conv2d):
            size = conv_output_size(size, layer.kernel_size[0], layer.stride[0], layer.padding[:2], lname)
        elif isinstance(layer, MaxPool2d):
            size = pool_output_size(size, layer.size[0], layer.stride[0], layer.padding[:2], layer.ceil_mode, lname)
    return size


MODELS = {"zfnet": zfnet, "alexnet": alexnet, "alexnet_torchvision": alexnet_torchvision, "zfnet_mini": zfnet_mini,
          "alexnet_mini": alexnet_mini}


def build(name, **kwargs):
    """A model by name (``zfnet``, ``alexnet``, ``alexnet_torchvision``, ``zfnet_mini``, ``alexnet_mini``)."""
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](**kwargs)
