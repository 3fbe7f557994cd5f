"""Curves of :func:`zfraw.analysis.invariance.invariance`, laid out as fig. 5 of Zeiler & Fergus.

One panel per layer (the feature-vector distance against the amount) and one
for the probability of the true class, one line per image.  Drawn with
matplotlib's Agg canvas (no GUI, no pyplot state) and returned as a PIL image.
"""
from __future__ import annotations

import numpy as np

from zfraw.analysis.invariance import UNITS
from zfraw.render.figures import figure_to_image, plain_text

__all__ = ["invariance_figure", "KINDS"]

#: which distance a layer panel plots
KINDS = ("relative", "distance")


@plain_text()
def invariance_figure(result, layers=None, kind="relative", labels=None, title=None, panel_size=(3.2, 2.6)):
    """Fig. 5: one panel per layer and one for the class probability, one line per image.

    Parameters
    ----------
    result : dict
        What :func:`zfraw.analysis.invariance.invariance` returned.
    layers : sequence of str, optional
        The layer panels, in order (default: every layer in ``result``).
    kind : ``"relative"`` or ``"distance"``
        ``"relative"`` (default) plots the distance divided by the original's
        feature norm, which puts layers of different sizes on one scale;
        ``"distance"`` the plain Euclidean distance.  The y label says which.
    labels : sequence of str, optional
        One legend entry per image (e.g. its class).
    title : str, optional

    Returns
    -------
    PIL.Image.Image
    """
    from matplotlib.figure import Figure

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    transform = result["transform"]
    amounts = np.asarray(result["amounts"], dtype=np.float64)
    if layers is None:
        layers = [k for k, v in result.items() if isinstance(v, dict)]
    for lyr in layers:
        if not isinstance(result.get(lyr), dict):
            raise ValueError(f"layers: {lyr!r} is not in the result (it has "
                             f"{', '.join(k for k, v in result.items() if isinstance(v, dict))})")
    prob = np.asarray(result["probability"])
    n = prob.shape[0]
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels must give one name per image ({n}), got {len(labels)}")
    panels = len(layers) + 1
    fig = Figure(figsize=(panel_size[0] * panels, panel_size[1] + 0.6))
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ylabel = ("distance / ||f(original)||" if kind == "relative" else "Euclidean distance")
    lines = []
    for ax, lyr in zip(axes, layers):
        values = np.asarray(result[lyr][kind])
        lines = [ax.plot(amounts, values[i], marker=".", linewidth=1.2)[0] for i in range(n)]
        ax.set_title(f"{lyr}: {'relative ' if kind == 'relative' else ''}feature distance", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
    ax = axes[-1]
    lines = [ax.plot(amounts, prob[i], marker=".", linewidth=1.2)[0] for i in range(n)]
    ax.set_title("probability of the " + ("predicted" if result.get("target_is_prediction") else "true")
                 + " class", fontsize=9)
    ax.set_ylim(-0.03, 1.03)
    for ax in axes:
        ax.set_xlabel(UNITS[transform], fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    if labels is not None:
        fig.legend(lines, [str(s) for s in labels], loc="lower center", ncol=min(n, 8), fontsize=8,
                   frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.1 if labels is not None else 0, 1, 1))
    return figure_to_image(fig)
