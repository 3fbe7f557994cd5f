"""Retrained fc8 of the built-in model vs zfnet_mini from scratch on the same few images.

python docs/transfer_vs_scratch.py   (the numbers in the README's "Features carried to
your own classes"; a few minutes on 2 cores)
"""
import time
import numpy as np
from zfraw import builtin, data, models, train, transfer

net, meta = builtin.load_model()
tr = builtin.eval_transform(meta["mean"])
ds = builtin.dataset("val", n_per_class=25)
def subset(lo, hi):
    idx = [i for c in range(10) for i in np.flatnonzero(ds.labels == c)[lo:hi]]
    return data.ArrayDataset(np.stack([ds[int(i)][0] for i in idx]), [int(ds.labels[i]) for i in idx])
few, test = subset(0, 5), subset(5, 25)
t = time.perf_counter()
new, h = transfer.retrain_last_layer(net, few, tr, 10, val_set=test, epochs=30)
print(f"retrained fc8 on {len(few)} images: held-out accuracy {h.val_acc[-1]:.3f} ({time.perf_counter() - t:.1f} s)")
t = time.perf_counter()
scratch = models.zfnet_mini(num_classes=10, init_std="he", first_init_std=1e-2, seed=0)
def tb(epoch):
    rng = np.random.default_rng([0, epoch])
    return data.batches(few, 16, data.train_transform(64, 64, meta["mean"], rng=rng, pad_width=4), shuffle=True, rng=rng)
def vb():
    return data.batches(test, 100, tr)
train.fit(scratch, tb, None, epochs=60, lr=1e-2, progress=False)
_, acc = train.evaluate(scratch, vb())
print(f"zfnet_mini from scratch on the same {len(few)} images, 60 epochs: held-out accuracy {acc:.3f} "
      f"({time.perf_counter() - t:.1f} s)")
