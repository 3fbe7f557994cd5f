"""Training: minibatch SGD with momentum, weight decay, a learning-rate schedule,
dropout, and the paper's filter renormalization.

Zeiler & Fergus train with SGD (minibatch 128, learning rate 1e-2, momentum
0.9), dropout 0.5 in the fully connected layers, weights N(0, 1e-2) and biases
0, and after every update they renormalize each convolution filter whose RMS
exceeds 0.1 back to RMS 0.1 (this keeps the first layer's filters from being
dominated by a few).  :func:`fit` runs that loop with a tqdm progress bar,
per-epoch validation, atomic checkpoints and resume.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from zfraw import functional as F
from zfraw.backend import get_backend, kernel, to_host
from zfraw._args import int_arg
from zfraw.io import npz
from zfraw.nn import Conv2d, Dropout, Sequential

__all__ = [
    "SGD", "StepSchedule", "PlateauSchedule", "renormalize_filters", "filter_rms",
    "train_step", "evaluate", "fit", "History", "load_checkpoint", "save_snapshot", "snapshot_path",
]


# ============================================================== the paper's renormalization

def filter_rms(w):
    """RMS of each filter: w (F, C, kh, kw) -> (F,) = sqrt(mean over (C, kh, kw) of w^2)."""
    return (w.reshape(w.shape[0], -1) ** 2).mean(axis=1) ** 0.5


def renormalize_filters(net, radius=0.1):
    """Scale every conv filter whose RMS exceeds ``radius`` back to RMS ``radius`` (in place).

    Returns the number of filters that were rescaled.
    """
    if radius is None:
        return 0
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    xp = get_backend().xp
    rescaled = 0
    for _, layer in net:
        if not isinstance(layer, Conv2d):
            continue
        w = layer.params["w"]
        rms = filter_rms(w)
        scale = xp.minimum(1.0, radius / xp.maximum(rms, 1e-30)).astype(w.dtype)
        rescaled += int((rms > radius).sum())
        w *= scale.reshape(-1, 1, 1, 1)
    return rescaled


# ============================================================== optimizer and schedules

class SGD:
    """SGD with momentum and weight decay: v <- momentum v - lr (g + wd w); w <- w + v.

    Weight decay applies to weights (``*.w``), not to biases.  After each step the
    conv filters are renormalized to RMS <= ``renorm_radius`` (None turns it off).
    """

    def __init__(self, net, lr=1e-2, momentum=0.9, weight_decay=5e-4, renorm_radius=0.1):
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.net, self.lr, self.momentum = net, float(lr), float(momentum)
        self.weight_decay, self.renorm_radius = float(weight_decay), renorm_radius
        xp = get_backend().xp
        self.velocity = {k: xp.zeros_like(p) for k, p in net.parameters().items()}

    def step(self):
        """One update from the gradients of the last ``net.backward``, in place.

        v <- momentum v - lr g - lr wd w, then w <- w + v, by the backend's
        ``sgd_update`` kernel (the numba one fused in one pass on every thread;
        the vectorized one in cache-sized blocks, with no temporary the size of
        a parameter).  A parameter or velocity that is not C-contiguous (a view
        the user set) is updated with whole-array operations instead.
        """
        grads = self.net.gradients()
        params = self.net.parameters()
        missing = [name for name in params if name not in grads]
        if missing:
            raise RuntimeError(f"no gradient for {missing[0]}: run net.backward(...) before step()")
        xp = get_backend().xp
        update = kernel("sgd_update")
        for name, p in params.items():
            decay = self.lr * self.weight_decay if name.endswith(".w") else 0.0
            v, g = self.velocity[name], grads[name]
            if p.flags.c_contiguous and v.flags.c_contiguous:
                update(p, xp.ascontiguousarray(g, dtype=p.dtype), v, self.lr, self.momentum, decay)
            else:
                v *= self.momentum
                v -= self.lr * g + decay * p
                p += v
        renormalize_filters(self.net, self.renorm_radius)

    def state_dict(self):
        return {f"velocity/{k}": np.asarray(to_host(v)) for k, v in self.velocity.items()}

    def load_state_dict(self, state):
        xp = get_backend().xp
        for k in self.velocity:
            key = f"velocity/{k}"
            if key in state:
                self.velocity[k] = xp.asarray(state[key], dtype=self.velocity[k].dtype)


class StepSchedule:
    """lr = base_lr * gamma ** (epoch // step)."""

    def __init__(self, step=10, gamma=0.1):
        if not int(step) >= 1:
            raise ValueError(f"step must be >= 1 epoch, got {step}")
        if not gamma > 0:
            raise ValueError(f"gamma must be > 0, got {gamma}")
        self.step, self.gamma = int(step), float(gamma)

    def __call__(self, base_lr, epoch, history):
        return base_lr * self.gamma ** (epoch // self.step)


class PlateauSchedule:
    """Divide the learning rate by ``factor`` whenever the watched loss has not improved for ``patience`` epochs.

    ``monitor`` is the :class:`History` field watched (``"val_loss"``, or
    ``"train_loss"`` for a run without validation); an improvement is a loss
    below the best so far by more than 1e-4.  The rate never goes below
    ``min_lr`` (once there, it stays).  The rate of an epoch depends only on
    the history before it, so a resumed run gets the same rates.
    """

    MONITORS = ("val_loss", "train_loss")

    def __init__(self, factor=10.0, patience=2, min_lr=0.0, monitor="val_loss"):
        if not factor > 1:
            raise ValueError(f"factor must be > 1 (the rate is divided by it), got {factor}")
        patience = int_arg("patience", patience, 1)
        if not (min_lr >= 0 and math.isfinite(min_lr)):
            raise ValueError(f"min_lr must be a finite number >= 0, got {min_lr}")
        if monitor not in self.MONITORS:
            raise ValueError(f"monitor must be one of {self.MONITORS}, got {monitor!r}")
        self.factor, self.patience, self.min_lr, self.monitor = float(factor), int(patience), float(min_lr), monitor

    def __call__(self, base_lr, epoch, history):
        lr, best, wait = base_lr, math.inf, 0
        floor = min(self.min_lr, base_lr)
        for loss in getattr(history, self.monitor)[:epoch]:
            if math.isnan(loss):  # no validation that epoch: no evidence of a plateau
                continue
            if loss < best - 1e-4:
                best, wait = loss, 0
            else:
                wait += 1
                if wait >= self.patience:
                    lr, wait = max(lr / self.factor, floor), 0
        return lr


# ============================================================== steps

def train_step(net, x, labels, opt):
    """Forward, cross-entropy, backward and one SGD update; returns (loss, accuracy) of the batch.

    A non-finite loss raises ``FloatingPointError`` before the update, so the weights stay usable.
    """
    net.train()
    scores = net.forward(x, keep=False)
    loss, dscores = F.cross_entropy(scores, labels)
    if not math.isfinite(loss):
        raise FloatingPointError(f"the loss became {loss}: lower the learning rate (lr={opt.lr})")
    net.backward(dscores, input_grad=False)  # no dx of the input image
    opt.step()
    return loss, float((to_host(scores.argmax(axis=1)) == to_host(labels)).mean())


def evaluate(net, batches):
    """Mean loss and accuracy over an iterable of (x, labels) batches, in evaluation mode."""
    net.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, labels in batches:
        x = get_backend().xp.asarray(x)
        scores = net.forward(x, keep=False, cache=False)
        loss, _ = F.cross_entropy(scores, get_backend().xp.asarray(labels))
        total_loss += loss * len(labels)
        correct += int((to_host(scores.argmax(axis=1)) == np.asarray(to_host(labels))).sum())
        count += len(labels)
    net.clear()
    if count == 0:
        raise ValueError("evaluate got no batches (is the validation set empty?)")
    return total_loss / count, correct / count


# ============================================================== the loop

@dataclass
class History:
    """Per-epoch records of a run."""

    epoch: list = field(default_factory=list)
    lr: list = field(default_factory=list)
    train_loss: list = field(default_factory=list)
    train_acc: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    val_acc: list = field(default_factory=list)
    seconds: list = field(default_factory=list)

    def to_json(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


def _dropout_states(net):
    """The state of every dropout layer's generator (JSON-able), so a resumed run draws the same masks."""
    return {lname: layer.rng.bit_generator.state for lname, layer in net if isinstance(layer, Dropout)}


def _set_dropout_states(net, states):
    for lname, state in states.items():
        if lname in net.layers and isinstance(net.layers[lname], Dropout):
            bit_generator = getattr(np.random, state["bit_generator"])()
            bit_generator.state = state
            net.layers[lname].rng = np.random.Generator(bit_generator)


def _save_checkpoint(path, net, opt, history, epoch, extra):
    npz.write(path, net.spec(), net.state_dict(), extra=extra, arrays=opt.state_dict(), epoch=epoch,
              history=json.loads(history.to_json()), dropout_rng=_dropout_states(net))


def load_checkpoint(path, net, opt=None):
    """Load a checkpoint written by :func:`fit` into net (and opt); returns (epoch, history, extra).

    The dropout generators are restored too, so a resumed run continues exactly.
    """
    contents = npz.read(path, require_meta=True)
    meta = contents.meta
    net.load_state_dict(contents.params)
    _set_dropout_states(net, meta.get("dropout_rng", {}))
    if opt is not None:
        opt.load_state_dict(contents.other)
    return int(meta.get("epoch", 0)), History(**meta.get("history", {})), contents.extra


def snapshot_path(snapshot_dir, epoch):
    """Where :func:`fit` keeps the snapshot after ``epoch`` (1-based): ``snapshot_dir/epochNNN.npz``."""
    return os.path.join(os.fspath(snapshot_dir), f"epoch{int(epoch):03d}.npz")


def save_snapshot(net, snapshot_dir, epoch, extra=None):
    """Save the weights after ``epoch`` with ``net.save`` (a temporary name, then ``os.replace``).

    The file (:func:`snapshot_path`) is a whole model, loadable with
    :func:`zfraw.nn.load`, that also records ``epoch`` and ``extra`` (class
    names, mean); a write that fails or is killed leaves any older file intact.
    """
    return net.save(snapshot_path(snapshot_dir, epoch), **dict(extra or {}), epoch=int(epoch))


def _check_snapshots(snapshots, snapshot_dir):
    if snapshots is None:
        return set()
    try:
        epochs = {int(e) for e in snapshots}
    except (TypeError, ValueError):
        raise TypeError(f"snapshots must be epoch numbers (ints), got {snapshots!r}") from None
    if any(e < 1 for e in epochs):
        raise ValueError(f"snapshots must be epochs >= 1, got {sorted(epochs)}")
    if epochs and snapshot_dir is None:
        raise ValueError("snapshot_dir is needed when snapshots are asked for")
    return epochs


def fit(net, train_batches, val_batches=None, epochs=10, lr=1e-2, momentum=0.9, weight_decay=5e-4,
        renorm_radius=0.1, schedule=None, checkpoint=None, resume=False, progress=True, extra=None,
        on_epoch=None, snapshots=None, snapshot_dir=None):
    """Train ``net`` with SGD and return its :class:`History`.

    train_batches: a function ``epoch -> iterable of (x, labels)`` (so each epoch
    can shuffle with its own seed: reproducible, and resumable mid-run);
    val_batches: a function ``() -> iterable`` or None; schedule: a callable
    ``(base_lr, epoch, history) -> lr`` (:class:`StepSchedule`,
    :class:`PlateauSchedule`) or None for a constant rate; checkpoint: a ``.npz``
    path written atomically after every epoch (weights, velocities, history);
    resume: continue from that checkpoint when it exists (temporaries of a
    checkpoint write that was killed half-way are removed, at the start and after
    each checkpoint, once a minute old: see ``npz.remove_stale_temporaries``); on_epoch:
    called as ``on_epoch(epoch, net, history)`` after each epoch (e.g. to save
    the best model so far); snapshots: epochs (1-based) after which the weights
    are kept in ``snapshot_dir`` (:func:`save_snapshot`), for the
    feature-evolution pictures of :mod:`zfraw.analysis.evolution`.

    An epoch that makes no update (no batch) is a ``ValueError``; a loss that
    stops being finite (training or validation) a ``FloatingPointError``, so no
    run ends with NaN metrics.
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"net must be a zfraw.nn.Sequential, got {type(net).__name__}")
    if not callable(train_batches):
        raise TypeError("train_batches must be a function epoch -> iterable of (x, labels) batches")
    epochs = int_arg("epochs", epochs, 1)
    snapshots = _check_snapshots(snapshots, snapshot_dir)
    opt = SGD(net, lr, momentum, weight_decay, renorm_radius)
    history, start = History(), 0
    if checkpoint:
        npz.remove_stale_temporaries(checkpoint)  # left by a write that was killed half-way
    if resume and checkpoint and os.path.exists(checkpoint):
        start, history, _ = load_checkpoint(checkpoint, net, opt)
    extra = dict(extra or {})
    xp = get_backend().xp
    from tqdm.auto import tqdm

    for epoch in range(start, epochs):
        opt.lr = schedule(lr, epoch, history) if schedule else lr
        t0 = time.perf_counter()
        losses, accs, sizes = [], [], []
        bar = tqdm(train_batches(epoch), desc=f"epoch {epoch + 1}/{epochs}", unit="batch", leave=False,
                   disable=not progress)
        for x, labels in bar:
            loss, acc = train_step(net, xp.asarray(x), xp.asarray(labels), opt)
            losses.append(loss), accs.append(acc), sizes.append(len(labels))
            bar.set_postfix(loss=f"{np.average(losses[-50:], weights=sizes[-50:]):.3f}",
                            acc=f"{np.average(accs[-50:], weights=sizes[-50:]):.3f}")
        net.clear()
        if not losses:
            raise ValueError(f"train_batches({epoch}) gave no batch, so epoch {epoch + 1} made no update "
                             f"(fewer training images than one batch, with drop_last?)")
        history.epoch.append(epoch + 1)
        history.lr.append(opt.lr)
        history.train_loss.append(float(np.average(losses, weights=sizes)))
        history.train_acc.append(float(np.average(accs, weights=sizes)))
        vl = va = float("nan")
        if val_batches is not None:
            vl, va = evaluate(net, val_batches())
            if not math.isfinite(vl):
                raise FloatingPointError(f"the validation loss became {vl} in epoch {epoch + 1}: "
                                         f"lower the learning rate (lr={opt.lr})")
        history.val_loss.append(vl)
        history.val_acc.append(va)
        history.seconds.append(time.perf_counter() - t0)
        val_text = f"  val loss {vl:.4f} acc {va:.3f}" if val_batches is not None else ""
        _log(f"epoch {epoch + 1}/{epochs}: lr {opt.lr:.2e}  train loss {history.train_loss[-1]:.4f} "
             f"acc {history.train_acc[-1]:.3f}{val_text}  ({history.seconds[-1]:.0f} s)", progress)
        if checkpoint:
            _save_checkpoint(checkpoint, net, opt, history, epoch + 1, extra)
            npz.remove_stale_temporaries(checkpoint)  # one a restart found still too fresh to call stale
        if epoch + 1 in snapshots:
            save_snapshot(net, snapshot_dir, epoch + 1, extra)
        if on_epoch is not None:
            on_epoch(epoch + 1, net, history)
    net.eval()
    return history


def _log(message, progress):
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)
