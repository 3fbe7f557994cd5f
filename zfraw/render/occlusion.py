"""Drawing an occlusion sweep in the layout of fig. 7 of Zeiler & Fergus (2014).

One row of five panels for one image:

(a) the image, with the square drawn where it hurts the target class most;
(b) the activity map: the total activation of the chosen feature map at each
    position of the square;
(c) the deconvnet projection of that feature (computed by the caller with
    :func:`zfraw.deconvnet.project`; nothing here runs a network);
(d) the probability of the target class at each position;
(e) the most probable class at each position, with a legend of class names.

Each map cell is drawn centred on the square's centre, so the maps line up with
the image.  Rendering uses matplotlib's object API (no pyplot state) into a PIL image.
"""
from __future__ import annotations

import numpy as np

from zfraw.analysis.occlusion import OcclusionMaps, strongest_drop
from zfraw.backend import to_host
from zfraw.render.figures import figure_to_image, plain_text
from zfraw.visualize import projection_to_image

__all__ = ["occlusion_figure", "map_extent"]


def map_extent(maps, height, width):
    """matplotlib ``extent`` (left, right, bottom, top) that puts map cell (r, c) on the
    square's centre (r*stride + (size-1)/2, c*stride + (size-1)/2), each cell stride wide."""
    gh, gw = maps.activity.shape[1:]
    half = (maps.size - 1) / 2 - maps.stride / 2
    return (half, half + gw * maps.stride, half + gh * maps.stride, half)


def _name(classes, k):
    return classes[k] if classes is not None and 0 <= k < len(classes) else f"class {k}"


@plain_text()
def occlusion_figure(maps, index, image, projection, classes=None, dpi=100):
    """Fig. 7 for image ``index`` of an :class:`~zfraw.analysis.occlusion.OcclusionMaps`.

    Parameters
    ----------
    maps : OcclusionMaps
    index : int
        Which image of the sweep.
    image : uint8 (H, W, 3)
        The image as a person sees it (e.g. :func:`zfraw.visualize.image_to_uint8`).
    projection : array (3, H, W)
        The deconvnet projection of ``maps.feature[index]`` of ``maps.layer``.
    classes : list of str, optional
        Class names for the titles and the legend of the label map.

    Returns
    -------
    PIL.Image.Image
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch, Rectangle

    if not isinstance(maps, OcclusionMaps):
        raise TypeError(f"maps: expected an OcclusionMaps, got {type(maps).__name__}")
    n = maps.activity.shape[0]
    if not 0 <= int(index) < n:
        raise ValueError(f"index: expected 0 <= index < {n}, got {index}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    projection = np.asarray(to_host(projection))
    if projection.shape != (3, height, width):
        raise ValueError(f"projection: expected shape (3, {height}, {width}), got {projection.shape}")

    i = int(index)
    feature, target = int(maps.feature[i]), int(maps.target[i])
    top, left, prob, worst = strongest_drop(maps)[i]
    extent = map_extent(maps, height, width)
    limits = dict(xlim=(-0.5, width - 0.5), ylim=(height - 0.5, -0.5))

    fig = Figure(figsize=(15.5, 3.0), dpi=dpi)
    axes = fig.subplots(1, 5, gridspec_kw=dict(wspace=0.35))
    for ax in axes:
        ax.set_xticks([]), ax.set_yticks([])

    ax = axes[0]
    ax.imshow(image)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), maps.size, maps.size, fill=False, edgecolor="red", lw=1.5))
    ax.set_title(f"(a) image; red: the {maps.size}x{maps.size} square\nwhere {_name(classes, target)} drops most",
                 fontsize=9)

    ax = axes[1]
    im = ax.imshow(maps.activity[i], cmap="viridis", extent=extent, interpolation="nearest")
    ax.set(**limits)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"(b) total activity of {maps.layer}\nfeature {feature} vs square position", fontsize=9)

    ax = axes[2]
    ax.imshow(projection_to_image(projection))
    ax.set_title(f"(c) deconvnet projection of\n{maps.layer} feature {feature}", fontsize=9)

    ax = axes[3]
    im = ax.imshow(maps.probability[i], cmap="magma", vmin=0.0, vmax=1.0, extent=extent, interpolation="nearest")
    ax.set(**limits)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"(d) p({_name(classes, target)})\nvs square position", fontsize=9)

    ax = axes[4]
    labels = maps.label[i]
    present = [int(k) for k in np.unique(labels)]
    palette = _palette(max(present + [target]) + 1)
    ax.imshow(palette[labels], extent=extent, interpolation="nearest")
    ax.set(**limits)
    ax.set_title("(e) most probable class\nvs square position", fontsize=9)
    ax.legend(handles=[Patch(color=palette[k], label=_name(classes, k)) for k in present],
              loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)

    return figure_to_image(fig, dpi=dpi, tight=True)


def _palette(k):
    """k distinct RGB colours in [0, 1], (k, 3): matplotlib's tab10 (or tab20), else hsv steps."""
    from matplotlib import colormaps

    if k <= 20:
        cmap = colormaps["tab10" if k <= 10 else "tab20"]
        return np.asarray([cmap(j)[:3] for j in range(k)])
    cmap = colormaps["hsv"]
    return np.asarray([cmap(j / k)[:3] for j in range(k)])
