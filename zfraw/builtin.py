"""The built-in model: ``zfnet_mini`` trained on the built-in procedural dataset.

Its weights ship with the package (``zfraw/weights/zfnet_mini.npz``, about 2.5 MB)
so that ``zfraw demo`` shows a network we trained ourselves, with no downloads.
:func:`train_builtin` (``zfraw train --builtin``) reproduces them from seeds.

The recipe (all of it recorded in the weights file):

- data: :mod:`zfraw.synthetic`, ``train`` split for training, ``val`` split held out;
- preprocessing: pixels / 255 minus the per-channel training mean; for training a
  random 64x64 crop of the image padded by 4 (reflect) and a random mirror;
- network: :func:`zfraw.models.zfnet_mini` with He initialisation, N(0, 2/fan_in)
  (the paper's N(0, 1e-2) everywhere leaves this 8-layer net stuck at chance for
  many epochs on a CPU budget), except conv1, which keeps the paper's N(0, 1e-2):
  a short run cannot wash a large random start out of the first layer, whose
  filters would then look like noise;
- SGD, minibatch 64, learning rate 1e-2 (down x10 for the last epochs),
  momentum 0.9, weight decay 5e-4, dropout 0.5, conv filters renormalized to
  RMS <= 0.1 after every update, as in the paper.
"""
from __future__ import annotations

import os
import time
from importlib import resources

import numpy as np

from zfraw import data, models, nn, synthetic, train

__all__ = ["WEIGHTS", "ALEXNET_WEIGHTS", "RECIPE", "load_model", "weights_path", "first_layer_models", "dataset",
           "eval_transform", "train_builtin"]

#: file name of the shipped weights inside the package
WEIGHTS = "zfnet_mini.npz"
#: ``alexnet_mini`` (AlexNet's first layer) trained with the same recipe, for the
#: first-layer comparison (``zfraw train --builtin --model alexnet_mini``)
ALEXNET_WEIGHTS = "alexnet_mini.npz"

#: the training recipe of the shipped model (``zfraw train --builtin``)
RECIPE = dict(
    seed=0, n_train_per_class=1200, n_val_per_class=100, epochs=20, lr_drop_epoch=16,
    batch_size=64, lr=1e-2, momentum=0.9, weight_decay=5e-4, renorm_radius=0.1,
    pad_width=4, init_std="he", first_init_std=1e-2, size=64,
)


def weights_path(name=WEIGHTS):
    """Where the shipped weights ``name`` live (inside the installed package)."""
    return str(resources.files("zfraw").joinpath("weights", name))


def load_model(path=None):
    """The trained built-in network (evaluation mode) and its metadata.

    Returns ``(net, meta)``; ``meta`` holds ``classes``, ``mean`` (per-channel, [0, 1]
    units), the ``recipe`` and the held-out ``val_acc``.
    """
    path = path or weights_path()
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"the built-in weights {path!r} are missing; rebuild them with `zfraw train --builtin`"
        )
    net = nn.load(path)
    meta = nn.read_meta(path)["extra"]
    meta["mean"] = np.asarray(meta.get("mean", [0.0, 0.0, 0.0]), dtype=np.float32)
    return net.eval(), meta


def first_layer_models():
    """The shipped networks of the first-layer comparison (fig. 6): name -> (net, mean).

    ``"zfnet_mini"`` (the built-in model) and ``"alexnet_mini"`` (AlexNet's 11x11
    stride-4 first layer, same recipe), each with its per-channel training mean;
    ``alexnet_mini`` only when its weights are installed.
    """
    models_ = {}
    for name, weights in (("zfnet_mini", WEIGHTS), ("alexnet_mini", ALEXNET_WEIGHTS)):
        if weights == WEIGHTS or os.path.exists(weights_path(weights)):
            net, meta = load_model(weights_path(weights))
            models_[name] = (net, meta["mean"])
    return models_


def dataset(split="val", n_per_class=None, seed=None):
    """The built-in dataset (a lazy :class:`zfraw.synthetic.SyntheticDataset`)."""
    recipe = RECIPE
    if n_per_class is None:
        n_per_class = recipe["n_val_per_class"] if split != "train" else recipe["n_train_per_class"]
    return synthetic.SyntheticDataset(n_per_class, seed=recipe["seed"] if seed is None else seed,
                                      size=recipe["size"], split=split)


def eval_transform(mean):
    """The evaluation preprocessing of the built-in model: image uint8 HWC -> float32 (3, 64, 64)."""
    return data.eval_transform(RECIPE["size"], RECIPE["size"], mean)


def train_builtin(out, epochs=None, n_train_per_class=None, progress=True, checkpoint=None, resume=False,
                  snapshots=None, snapshot_dir=None, model="zfnet_mini", classes=None):
    """Train the built-in model with :data:`RECIPE` and save it to ``out`` (.npz).

    ``epochs``/``n_train_per_class`` override the recipe (for quick runs);
    ``checkpoint``/``resume`` as in :func:`zfraw.train.fit`.  ``snapshots``: epochs
    (1-based) after which the weights are kept, for the feature-evolution pictures
    (:mod:`zfraw.analysis.evolution`): each is saved whole to
    ``snapshot_dir/epochNNN.npz`` (default folder: ``out`` without ``.npz`` plus
    ``_snapshots``), and at the end their conv layers are packed in float16 into
    ``<out without .npz>_snapshots.npz`` (the form shipped as
    ``zfraw/weights/zfnet_mini_snapshots.npz``).  ``model``: ``"zfnet_mini"`` (the
    built-in model) or ``"alexnet_mini"`` (AlexNet's first layer, for the
    comparison of :mod:`zfraw.analysis.first_layer`), trained with the same recipe.
    ``classes``: train on these classes of :data:`zfraw.synthetic.CLASSES` only
    (names, in the order of the new labels 0, 1, ...; default all ten), e.g. to
    keep the others unseen for the held-out-classes experiment of
    :mod:`zfraw.transfer`; the images of each kept class are those of the full run.
    Returns the training :class:`~zfraw.train.History`.
    """
    if model not in ("zfnet_mini", "alexnet_mini"):
        raise ValueError(f"model must be 'zfnet_mini' or 'alexnet_mini', got {model!r}")
    class_names = _class_subset(classes)
    stem = os.fspath(out)[:-4] if os.fspath(out).endswith(".npz") else os.fspath(out)
    if snapshots and snapshot_dir is None:
        snapshot_dir = stem + "_snapshots"
    r = dict(RECIPE)
    if epochs is not None:
        r["epochs"] = int(epochs)
    if n_train_per_class is not None:
        r["n_train_per_class"] = int(n_train_per_class)
    if model != "zfnet_mini":
        r["model"] = model
    t0 = time.perf_counter()
    train_images, train_labels = synthetic.make_dataset(r["n_train_per_class"], seed=r["seed"], size=r["size"],
                                                        split="train")
    val_images, val_labels = synthetic.make_dataset(r["n_val_per_class"], seed=r["seed"], size=r["size"],
                                                    split="val")
    if classes is not None:
        train_images, train_labels = _keep_classes(train_images, train_labels, class_names)
        val_images, val_labels = _keep_classes(val_images, val_labels, class_names)
        r["classes"] = list(class_names)
    mean = (train_images.reshape(-1, 3).mean(axis=0) / 255.0).astype(np.float32)
    train_set = data.ArrayDataset(train_images, train_labels, classes=class_names)
    val_set = data.ArrayDataset(val_images, val_labels, classes=class_names)
    render_s = time.perf_counter() - t0

    net = models.build(model, num_classes=len(class_names), seed=r["seed"], init_std=r["init_std"],
                       first_init_std=r["first_init_std"], input_size=r["size"])

    def train_batches(epoch):
        rng = np.random.default_rng([r["seed"], epoch])
        transform = data.train_transform(r["size"], r["size"], mean, rng=rng, pad_width=r["pad_width"])
        return data.batches(train_set, r["batch_size"], transform, shuffle=True, rng=rng, drop_last=True)

    def val_batches():
        return data.batches(val_set, 250, eval_transform(mean))

    def schedule(base_lr, epoch, history):
        return base_lr * (0.1 if epoch >= r["lr_drop_epoch"] else 1.0)

    extra = dict(classes=list(class_names), mean=mean.tolist(), recipe=r)
    history = train.fit(net, train_batches, val_batches, epochs=r["epochs"], lr=r["lr"], momentum=r["momentum"],
                        weight_decay=r["weight_decay"], renorm_radius=r["renorm_radius"], schedule=schedule,
                        checkpoint=checkpoint, resume=resume, progress=progress, extra=extra,
                        snapshots=snapshots, snapshot_dir=snapshot_dir)
    extra.update(val_acc=history.val_acc[-1], train_seconds=round(time.perf_counter() - t0, 1),
                 render_seconds=round(render_s, 1), history=dict(val_acc=history.val_acc, train_loss=history.train_loss))
    net.save(out, **extra)
    if snapshots:
        from zfraw.analysis import evolution

        evolution.pack_snapshots([train.snapshot_path(snapshot_dir, e) for e in sorted(set(snapshots))],
                                 stem + "_snapshots.npz")
    return history


def _class_subset(classes):
    """``classes`` (None or names of :data:`zfraw.synthetic.CLASSES`) -> the list of names trained on."""
    if classes is None:
        return list(synthetic.CLASSES)
    if isinstance(classes, str):
        raise TypeError(f"classes must be a list of class names, got the string {classes!r}")
    names = list(classes)
    unknown = [c for c in names if c not in synthetic.CLASSES]
    if unknown:
        raise ValueError(f"classes: {unknown} are not built-in classes (those are {list(synthetic.CLASSES)})")
    if len(set(names)) != len(names) or len(names) < 2:
        raise ValueError(f"classes must name at least two different built-in classes, got {names}")
    return names


def _keep_classes(images, labels, names):
    """The images of the classes ``names`` (N', H, W, 3) and their new labels 0..len(names)-1 (N',)."""
    old = np.array([synthetic.CLASSES.index(c) for c in names])
    keep = np.isin(labels, old)
    remap = np.full(len(synthetic.CLASSES), -1, dtype=np.int64)
    remap[old] = np.arange(len(names))
    return images[keep], remap[labels[keep]]
