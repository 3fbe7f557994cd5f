"""Features carried to few images and to unseen classes: a retrained fc8 against a net from scratch.

    python docs/transfer_vs_scratch.py [--base FILE]

The numbers of the README's "Features carried to your own classes" (the paper's
section 5.2 on the built-in data):

1. *seen classes*: the built-in model's fc8 retrained on 5 held-out images per
   class (all ten classes), against zfnet_mini trained from scratch on the same
   50 images;
2. *held-out classes*: a zfnet_mini trained with the built-in recipe on six
   classes only (``--base``: trained and saved there when the file is missing,
   about 20 minutes on a 2-core CPU; ``zfraw.builtin.train_builtin(...,
   classes=SEEN)``), its fc8 replaced and retrained on 1, 5 or 20 images of each
   of the four classes it never saw, against zfnet_mini from scratch on the same
   images, and against the built-in model (which did see them) retrained the same
   way.  Every accuracy is on 50 other images per class of the ``val`` split.
"""
import argparse
import os
import time

import numpy as np

from zfraw import backend, builtin, data, models, synthetic, train, transfer

SEEN = ["bicycle", "car", "face", "house", "star", "cross"]
HELD_OUT = ["ring", "flag", "checkerboard", "arrow"]
SHOTS = (1, 5, 20)
TEST_PER_CLASS = 50


def pick(dataset, classes, lo, hi):
    """Images lo..hi-1 of each class of ``classes`` in ``dataset``, relabelled 0..len(classes)-1."""
    images, labels = [], []
    for new, name in enumerate(classes):
        for i in np.flatnonzero(dataset.labels == synthetic.CLASSES.index(name))[lo:hi]:
            images.append(dataset[int(i)][0])
            labels.append(new)
    return data.ArrayDataset(np.stack(images), labels, classes=list(classes))


def from_scratch(few, test, mean, epochs=60):
    """zfnet_mini trained on ``few`` alone (the built-in recipe's init and augmentation) -> test accuracy."""
    net = models.zfnet_mini(num_classes=len(few.classes), init_std="he", first_init_std=1e-2, seed=0)

    def batches(epoch):
        rng = np.random.default_rng([0, epoch])
        return data.batches(few, 16, data.train_transform(64, 64, mean, rng=rng, pad_width=4), shuffle=True, rng=rng)

    train.fit(net, batches, None, epochs=epochs, lr=1e-2, progress=False)
    return train.evaluate(net, data.batches(test, 100, builtin.eval_transform(mean)))[1]


def retrained(net, mean, few, test):
    """fc8 of ``net`` retrained on ``few`` (every other layer frozen) -> test accuracy."""
    _, history = transfer.retrain_last_layer(net, few, builtin.eval_transform(mean), len(few.classes),
                                             val_set=test, epochs=30)
    return history.val_acc[-1]


def seen_classes():
    net, meta = builtin.load_model()
    val = builtin.dataset("val", n_per_class=25)
    few, test = pick(val, synthetic.CLASSES, 0, 5), pick(val, synthetic.CLASSES, 5, 25)
    t = time.perf_counter()
    acc = retrained(net, meta["mean"], few, test)
    print(f"seen classes: retrained fc8 on {len(few)} images: held-out accuracy {acc:.3f} "
          f"({time.perf_counter() - t:.1f} s)")
    t = time.perf_counter()
    acc = from_scratch(few, test, meta["mean"])
    print(f"seen classes: zfnet_mini from scratch on the same {len(few)} images, 60 epochs: "
          f"held-out accuracy {acc:.3f} ({time.perf_counter() - t:.1f} s)")


def held_out_classes(base_path):
    if not os.path.exists(base_path):
        os.makedirs(os.path.dirname(os.path.abspath(base_path)), exist_ok=True)
        print(f"training the six-class base model -> {base_path} (the built-in recipe, about 20 min on 2 cores)")
        builtin.train_builtin(base_path, classes=SEEN)
    base, base_meta = builtin.load_model(base_path)
    if base_meta["classes"] != SEEN:
        raise SystemExit(f"--base {base_path}: trained on {base_meta['classes']}, not on {SEEN}")
    full, full_meta = builtin.load_model()
    print(f"base model: trained on {SEEN} only (held-out accuracy on them {base_meta['val_acc']:.3f}); "
          f"new classes {HELD_OUT}, tested on {TEST_PER_CLASS} val images each (chance {1 / len(HELD_OUT):.2f})")
    val = builtin.dataset("val", n_per_class=max(SHOTS) + TEST_PER_CLASS)
    test = pick(val, HELD_OUT, max(SHOTS), max(SHOTS) + TEST_PER_CLASS)
    print("| images per class | fc8 retrained on the six-class net (classes unseen) "
          "| zfnet_mini from scratch | fc8 retrained on the built-in net (classes seen) |")
    print("|---:|---:|---:|---:|")
    for shots in SHOTS:
        few = pick(val, HELD_OUT, 0, shots)
        row = (retrained(base, base_meta["mean"], few, test), from_scratch(few, test, base_meta["mean"]),
               retrained(full, full_meta["mean"], few, test))
        print(f"| {shots} | " + " | ".join(f"{100 * a:.1f}%" for a in row) + " |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=os.path.expanduser("~/.cache/zfraw/heldout_base.npz"),
                        help="the six-class model (trained and saved there when missing; "
                             "default ~/.cache/zfraw/heldout_base.npz)")
    args = parser.parse_args()
    backend.set_backend("numba" if "numba" in backend.backends() else "numpy")
    seen_classes()
    held_out_classes(args.base)
