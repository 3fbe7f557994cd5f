"""The picture of :func:`zfraw.analysis.evolution.evolution`, laid out as fig. 4 of Zeiler & Fergus.

One block per layer; in a block one row per feature map and one column per
snapshot epoch.  Each cell is the deconvnet projection of that feature's
strongest activation over the image set at that epoch, cropped to the
activation's receptive field and contrast-normalized on its own (grey = 0), so
that a feature which is still weak early in training is visible too.
"""
from __future__ import annotations

from PIL import Image

from zfraw import visualize as V

__all__ = ["evolution_figure", "stack"]


def stack(images, gap=10, background=(255, 255, 255)):
    """PIL images one above the other, left-aligned, ``gap`` pixels apart."""
    images = list(images)
    if not images:
        raise ValueError("images must hold at least one picture")
    out = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images) + gap * (len(images) - 1)),
                    background)
    top = 0
    for im in images:
        out.paste(im, (0, top))
        top += im.height + gap
    return out


def evolution_figure(result, layers=None, cell=56):
    """Fig. 4: per layer, rows of features over columns of epochs.

    Parameters
    ----------
    result : zfraw.analysis.evolution.Evolution
    layers : sequence of str, optional
        The layer blocks, top to bottom (default: all of ``result``).
    cell : int
        Crops are enlarged by nearest neighbour to about this many pixels.

    Returns
    -------
    PIL.Image.Image
    """
    layers = list(result.features) if layers is None else list(layers)
    for lyr in layers:
        if lyr not in result.features:
            raise ValueError(f"layers: {lyr!r} is not in the result (it has {', '.join(result.features)})")
    epochs = ", ".join(str(e) for e in result.epochs)
    blocks = []
    for lyr in layers:
        proj, boxes = result.projection[lyr], result.box[lyr]
        side = max(int(b[2] - b[0]) for b in boxes.reshape(-1, 4))
        factor = max(1, int(round(cell / max(side, 1))))
        tiles = []
        for f in range(proj.shape[0]):
            for j in range(proj.shape[1]):
                t, l, b, r = (int(v) for v in boxes[f, j])
                tiles.append(V.upscale(V.projection_to_image(proj[f, j][:, t:b, l:r]), factor))
        block = V.grid(tiles, ncols=proj.shape[1], pad=2)
        feats = ", ".join(str(f) for f in result.features[lyr])
        blocks.append(V.caption(block, f"{lyr}: features {feats} (rows) at epochs {epochs} (columns)"))
    return stack(blocks)
