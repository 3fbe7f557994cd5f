"""Class names: the 1000 ImageNet classes shipped with zfraw, and a network's own names.

``zfraw/imagenet_classes.txt`` lists the ILSVRC 2012 classes in the order of the
trained networks' outputs (ZFNet-512, CaffeNet, AlexNet, torchvision's models), one
``<WordNet id> <names>`` line each, as Caffe's ``synset_words.txt``.
"""
from __future__ import annotations

from importlib import resources

__all__ = ["imagenet_classes", "imagenet_wnids", "class_names"]

_FILE = "imagenet_classes.txt"


def _lines():
    text = resources.files("zfraw").joinpath(_FILE).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def imagenet_classes(full=False):
    """The 1000 ImageNet class names, index = output unit.

    ``full=False``: the first name of each synset (``"tabby"``, ``"golden retriever"``);
    ``full=True``: all its names (``"tabby, tabby cat"``).
    """
    names = [line.split(" ", 1)[1] for line in _lines()]
    return names if full else [n.split(",")[0].strip() for n in names]


def imagenet_wnids():
    """The WordNet ids of the 1000 classes (``"n01440764"`` ...), index = output unit."""
    return [line.split(" ", 1)[0] for line in _lines()]


def class_names(n_outputs, classes=None):
    """Names for a network's ``n_outputs`` classes: ``classes`` when it has that many,
    the ImageNet names for 1000 outputs, else ``"class <k>"``."""
    if classes is not None and len(classes) == n_outputs:
        return [str(c) for c in classes]
    if n_outputs == 1000:
        return imagenet_classes()
    return [f"class {k}" for k in range(n_outputs)]
