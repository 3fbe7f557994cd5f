"""AlexNet's first layer against ZFNet's (fig. 6 of Zeiler & Fergus, their architecture argument).

The paper shows that AlexNet's first layer (11x11 filters, stride 4) has a mix
of very high- and very low-frequency filters and some "dead" ones, and that its
large stride causes *aliasing* artifacts in the second layer's projections;
ZFNet's 7x7 stride-2 first layer fixes both.  They say it in words; here are
two numbers for it:

- **dead first-layer filters**: a filter w_f (C, k, k) has
  RMS_f = sqrt(mean(w_f^2)); it is *dead* when RMS_f < ``threshold`` x the
  median RMS of the layer's filters (``threshold`` = 0.1 by default: ten times
  weaker than the typical filter).  :func:`dead_filters` gives the fraction.
- **high-frequency share of the layer-2 projections**: for a projection
  p (C, H, W), with P(u, v) = sum over channels of |FFT2(p_c)(u, v)|^2 at
  frequencies (u, v) in cycles per pixel (each in [-1/2, 1/2); the Nyquist
  frequency is 1/2), the share is the power at radius sqrt(u^2 + v^2) >= ``cutoff``
  x 1/2 over the total power (``cutoff`` = 0.5: above half the Nyquist
  frequency, i.e. patterns with a period under 4 pixels).  A smooth projection
  has a share near 0, a pixel checkerboard 1.  :func:`high_frequency_share`
  computes it per projection; :func:`first_layer_report` averages it over
  the top-9 projections of the most active conv2 features.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from zfraw import deconvnet, nn
from zfraw import visualize as V
from zfraw._args import int_arg
from zfraw.backend import get_backend, to_host

__all__ = ["dead_filters", "high_frequency_share", "first_layer_report", "FirstLayerReport",
           "DEAD_THRESHOLD", "HF_CUTOFF"]

#: a filter is dead when its RMS is below this fraction of the median filter RMS
DEAD_THRESHOLD = 0.1

#: high frequency = radius >= this fraction of the Nyquist frequency (1/2 cycle per pixel)
HF_CUTOFF = 0.5


def dead_filters(w, threshold=DEAD_THRESHOLD):
    """Which filters of a layer are dead: RMS below ``threshold`` x the median filter RMS.

    Parameters
    ----------
    w : array (F, C, kh, kw)
        The layer's filters (host or device).
    threshold : float in (0, 1)

    Returns
    -------
    dict
        ``rms`` (F,), ``dead`` (F,) bool, ``fraction`` (float: dead / F), ``threshold``.
    """
    w = np.asarray(to_host(w), dtype=np.float64)
    if w.ndim != 4 or len(w) == 0:
        raise ValueError(f"w must be filters (F, C, kh, kw) with F >= 1, got shape {w.shape}")
    threshold = float(threshold)
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    rms = np.sqrt((w.reshape(len(w), -1) ** 2).mean(axis=1))
    dead = rms < threshold * np.median(rms)
    return dict(rms=rms, dead=dead, fraction=float(dead.mean()), threshold=threshold)


def high_frequency_share(p, cutoff=HF_CUTOFF):
    """The share of a projection's spectral power above ``cutoff`` x the Nyquist frequency.

    p (C, H, W) or (N, C, H, W) -> share (float, or (N,)):
    sum over radius >= cutoff/2 cycles per pixel of sum_c |FFT2(p_c)|^2, divided by
    the total power; NaN for an all-zero projection (it has no power).
    """
    p = np.asarray(to_host(p), dtype=np.float64)
    single = p.ndim == 3
    if single:
        p = p[None]
    if p.ndim != 4:
        raise ValueError(f"p must be projections (C, H, W) or (N, C, H, W), got shape {p.shape}")
    cutoff = float(cutoff)
    if not 0 < cutoff <= 1:
        raise ValueError(f"cutoff must be in (0, 1] (a fraction of the Nyquist frequency), got {cutoff}")
    power = (np.abs(np.fft.fft2(p, axes=(-2, -1))) ** 2).sum(axis=1)  # (N, H, W)
    u = np.fft.fftfreq(p.shape[-2])[:, None]
    v = np.fft.fftfreq(p.shape[-1])[None, :]
    high = np.sqrt(u ** 2 + v ** 2) >= cutoff * 0.5 - 1e-12
    total = power.reshape(len(p), -1).sum(axis=1)
    above = (power * high).reshape(len(p), -1).sum(axis=1)
    share = np.divide(above, total, out=np.full_like(total, np.nan), where=total > 0)
    return float(share[0]) if single else share


class FirstLayerReport(NamedTuple):
    """What :func:`first_layer_report` measured for one network.

    ``filters`` (F, 3, k, k) the first layer's weights; ``dead`` the dict of
    :func:`dead_filters`; ``layer2`` the second conv layer's name; ``records``
    feature -> list of :class:`zfraw.visualize.Activation` (its top-k images);
    ``projections`` feature -> (k, 3, H, W) the full-size projections of those
    activations, ``boxes`` feature -> (k, 4) their receptive fields;
    ``hf_share`` feature -> (k,) the high-frequency share of each projection;
    ``mean_hf_share`` their mean over all features and images; ``cutoff``.
    """

    filters: np.ndarray
    dead: dict
    layer2: str
    records: dict
    projections: dict
    boxes: dict
    hf_share: dict
    mean_hf_share: float
    cutoff: float


def _conv_names(net):
    return [lname for lname, layer in net if isinstance(layer, nn.Conv2d)]


def first_layer_report(net, dataset, transform, *, n_features=4, k=9, limit=200, batch_size=64,
                       threshold=DEAD_THRESHOLD, cutoff=HF_CUTOFF, progress=False):
    """The two numbers of fig. 6 for one network, with what is needed to draw it.

    The first conv layer's dead-filter fraction (:func:`dead_filters`), and the
    mean high-frequency share (:func:`high_frequency_share`) of the deconvnet
    projections of the top-``k`` activations, over the first ``limit`` images
    of ``dataset``, of the ``n_features`` most active features of the second
    conv layer (each activation projected alone, full image size).

    Returns
    -------
    FirstLayerReport
    """
    convs = _conv_names(net)
    if len(convs) < 2:
        raise ValueError(f"net must have two conv layers to compare first layers, it has {convs}")
    first, layer2 = convs[0], convs[1]
    w = np.asarray(to_host(net[first].params["w"]))
    if w.shape[1] != 3:
        raise ValueError(f"net: its first conv layer {first!r} does not see an RGB image ({w.shape[1]} channels)")
    n_features = int_arg("n_features", n_features, 1)
    k = int_arg("k", k, 1)
    records = V.top_activations(net, dataset, layer2, None, k=k, batch_size=batch_size, transform=transform,
                                progress=progress, n_features=n_features, limit=int_arg("limit", limit, 1))
    xp = get_backend().xp
    projections, boxes, shares = {}, {}, {}
    for f, recs in records.items():
        xs = np.stack([transform(dataset[r.index][0]) for r in recs]).astype(np.float32)
        p, info = deconvnet.project(net, xp.asarray(xs), layer2, feature=np.full(len(recs), f, dtype=np.int64),
                                    keep="max", return_info=True)
        net.clear()
        projections[f] = np.asarray(to_host(p), dtype=np.float64)
        boxes[f] = np.array([deconvnet.patch_box(net, layer2, r, c, xs.shape[-2:]) for r, c in info["location"]])
        shares[f] = high_frequency_share(projections[f], cutoff)
    every = np.concatenate(list(shares.values())) if shares else np.array([np.nan])
    mean_share = float(np.nanmean(every)) if np.isfinite(every).any() else float("nan")
    return FirstLayerReport(w, dead_filters(w, threshold), layer2, records, projections, boxes, shares,
                            mean_share, float(cutoff))

