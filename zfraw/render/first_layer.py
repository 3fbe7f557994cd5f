"""Fig. 6 of Zeiler & Fergus from :func:`zfraw.analysis.first_layer.first_layer_report` results.

For each network one row: its first-layer filters (each normalized on its own,
grey = 0) and, for each shown conv2 feature, the 3x3 grid of the projections
of its top-9 activations cropped to their receptive fields (one contrast scale
per feature), under a caption with the two measured numbers.
"""
from __future__ import annotations

import math

import numpy as np

from zfraw import visualize as V
from zfraw.render.evolution import stack

__all__ = ["first_layer_figure", "report_line"]


def report_line(name, report):
    """One line of text: the dead-filter fraction and the high-frequency share of one network."""
    dead = report.dead
    return (f"{name}: {int(dead['dead'].sum())}/{len(dead['dead'])} dead conv1 filters "
            f"({100 * dead['fraction']:.0f}%, RMS < {dead['threshold']:g} x median); "
            f"{report.layer2} projections: {100 * report.mean_hf_share:.1f}% of the power above "
            f"{report.cutoff:g} x Nyquist")


def _projection_grid(report, feature, cell):
    proj, boxes = report.projections[feature], report.boxes[feature]
    crops = [p[:, t:b, l:r] for p, (t, l, b, r) in zip(proj, boxes)]
    scale = max(float(np.abs(c).max()) for c in crops)
    side = max(max(c.shape[-2:]) for c in crops)
    factor = max(1, int(round(cell / max(side, 1))))
    ncols = int(math.ceil(math.sqrt(len(crops))))
    return V.grid([V.upscale(V.projection_to_image(c, scale), factor) for c in crops], ncols)


def first_layer_figure(reports, filter_scale=5, cell=40):
    """Networks one above the other: first-layer filters beside conv2 top-9 projections.

    Parameters
    ----------
    reports : dict
        name -> :class:`zfraw.analysis.first_layer.FirstLayerReport`.
    filter_scale : int
        Nearest-neighbour enlargement of the filters.
    cell : int
        The projection crops are enlarged to about this many pixels.

    Returns
    -------
    PIL.Image.Image
    """
    if not reports:
        raise ValueError("reports must hold at least one network's report")
    rows = []
    for name, rep in reports.items():
        k = rep.filters.shape[-1]
        filters = V.filters_image(rep.filters, ncols=int(math.ceil(math.sqrt(2 * len(rep.filters)))),
                                  scale=max(1, int(round(filter_scale * 11 / k))))
        panels = [V.caption(filters, f"conv1 filters ({rep.filters.shape[-1]}x{rep.filters.shape[-1]})", size=11)]
        for f in rep.projections:
            panels.append(V.caption(_projection_grid(rep, f, cell), f"{rep.layer2} feature {f}", size=11))
        row = panels[0]
        for panel in panels[1:]:
            row = _side(row, panel)
        rows.append(V.caption(row, report_line(name, rep), size=12))
    return stack(rows, gap=16)


def _side(left, right, gap=10):
    from PIL import Image

    h = max(left.height, right.height)
    out = Image.new("RGB", (left.width + gap + right.width, h), (255, 255, 255))
    out.paste(left, (0, 0))
    out.paste(right, (left.width + gap, 0))
    return out
