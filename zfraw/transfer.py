"""Feature generalization (Zeiler & Fergus, section 5.2): keep a network's layers, retrain the last.

The paper carries ImageNet features to Caltech-101/256 by keeping every layer of
the trained network fixed and training only a new softmax classifier on top.
:func:`retrain_last_layer` does that for any zfraw network (trained or imported):

1. the frozen layers run **once** per image, in evaluation mode (no dropout), and
   their output -- the input of the layer to retrain, e.g. relu7's 4096 values
   for fc8 -- is kept in memory (:func:`extract_features`);
2. a new :class:`zfraw.nn.Linear` (He initialisation) is trained on those cached
   features (divided by their standard deviation, folded back into the weights
   afterwards) with SGD and cross-entropy (:func:`zfraw.train.fit`), in seconds on
   a CPU for a few hundred images;
3. the result is the frozen layers (the very same arrays, bit for bit) followed by
   the new layer (and a Softmax if the original network ended in one).
"""
from __future__ import annotations

import numpy as np

from zfraw import nn
from zfraw.backend import get_backend, to_host

__all__ = ["extract_features", "retrain_last_layer"]


def extract_features(net, dataset, upto, transform, batch_size=32, progress=False):
    """The output of layer ``upto`` for every item of ``dataset`` -> (features (N, D) float, labels (N,) int64).

    The network runs in evaluation mode without caches; ``transform`` turns each
    image into the network's input (3, H, W).
    """
    from tqdm.auto import tqdm

    from zfraw import data

    net.check_layer(upto)
    net.eval()
    xp = get_backend().xp
    feats, labels = [], []
    batches = data.batches(dataset, batch_size, transform)
    for x, y in tqdm(batches, desc=f"features at {upto}", unit="batch", leave=False, disable=not progress):
        out = net.forward(xp.asarray(x, dtype=_dtype(net)), upto=upto, keep=False, cache=False)
        feats.append(np.asarray(to_host(out)).reshape(len(y), -1))
        labels.append(np.asarray(y, dtype=np.int64))
    net.clear()
    if not feats:
        raise ValueError("dataset: no images to extract features from")
    return np.concatenate(feats), np.concatenate(labels)


def _dtype(net):
    params = list(net.parameters().values())
    return params[0].dtype if params else np.float32


def _feature_batches(features, labels, batch_size, seed):
    def batches(epoch):
        order = np.random.default_rng([seed, epoch]).permutation(len(labels))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield features[idx], labels[idx]

    return batches


def retrain_last_layer(net, train_set, transform, num_classes, layer="fc8", val_set=None, epochs=30, lr=1e-2,
                       weight_decay=5e-4, batch_size=16, seed=0, progress=False):
    """A copy of ``net`` whose ``layer`` (a Linear) is retrained on ``train_set``; the rest is frozen.

    Parameters
    ----------
    net : zfraw.nn.Sequential
        Trained or imported; ``layer`` must be a :class:`zfraw.nn.Linear` and the
        layers after it at most a Softmax.
    train_set, val_set : sequences of (image, label)
        The user's images; labels in [0, num_classes).
    transform : callable
        image -> the network's input (3, H, W).
    num_classes : int
        Outputs of the new layer.
    epochs, lr, weight_decay, batch_size, seed :
        The SGD recipe on the cached features (momentum 0.9, constant rate); the
        features are divided by their standard deviation for training, and the
        new weights by the same afterwards, so the recipe does not depend on the
        features' scale.

    Returns
    -------
    (zfraw.nn.Sequential, zfraw.train.History)
        The new network shares the frozen layers' arrays with ``net``.
    """
    from zfraw import train

    names = net.names
    net.check_layer(layer)
    if not isinstance(net[layer], nn.Linear):
        raise ValueError(f"layer {layer!r} must be a fully connected layer (Linear), got {type(net[layer]).__name__}")
    position = names.index(layer)
    after = names[position + 1:]
    if any(not isinstance(net[n], nn.Softmax) for n in after):
        raise ValueError(f"only a Softmax may follow {layer!r}; the network has {after} after it")
    if position == 0:
        raise ValueError(f"{layer!r} is the first layer: there is nothing to keep frozen")
    frozen = names[position - 1]
    feats, labels = extract_features(net, train_set, frozen, transform, batch_size, progress)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    val_feats = None if val_set is None else extract_features(net, val_set, frozen, transform, batch_size, progress)
    # the features' scale differs from network to network (0.1 for the built-in model, 10s for
    # an ImageNet one): train on features / scale, so that one learning rate suits all, and
    # fold the scale into the weights afterwards (exactly: w x / s = (w / s) x)
    dtype = _dtype(net)
    scale = float(feats.std()) or 1.0
    head = nn.Linear(feats.shape[1], int(num_classes), init_std="he", seed=seed, dtype=dtype)
    head_net = nn.Sequential([(layer, head)], name="head")
    from zfraw import to_device

    to_device(head_net)
    scaled = (feats / scale).astype(dtype)
    val = None
    if val_feats is not None:
        vf, vl = (val_feats[0] / scale).astype(dtype), val_feats[1]

        def val():
            return [(vf[i:i + batch_size], vl[i:i + batch_size]) for i in range(0, len(vl), batch_size)]

    history = train.fit(head_net, _feature_batches(scaled, labels, batch_size, seed), val,
                        epochs=epochs, lr=lr, weight_decay=weight_decay, renorm_radius=None, progress=progress)
    head.params["w"] = (head.params["w"] / dtype.type(scale)).astype(dtype)
    layers = [(n, net[n]) for n in names[:position]] + [(layer, head)] + [(n, net[n]) for n in after]
    out = nn.Sequential(layers, input_shape=net.input_shape, name=net.name, preprocessing=net.preprocessing)
    return out.eval(), history
