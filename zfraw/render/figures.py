"""What the matplotlib pictures of :mod:`zfraw.render` share: text drawn as given, and the
Figure as a PIL image.  Figures are built with matplotlib's object API (no pyplot state)
and rendered by the Agg canvas (no GUI).
"""
from __future__ import annotations

import contextlib
import io

from PIL import Image

__all__ = ["plain_text", "figure_to_image"]


@contextlib.contextmanager
def plain_text():
    """Build and render a figure inside this block (or decorate the function that does):
    every text is drawn as given, never parsed as mathtext, so that a class or file name
    such as ``cost $\\x$`` shows as written instead of failing to parse."""
    import matplotlib

    with matplotlib.rc_context({"text.parse_math": False}):
        yield


def figure_to_image(fig, dpi=100, tight=False):
    """A matplotlib Figure rendered by the Agg canvas to an RGB PIL image; ``tight`` crops it
    to what is drawn (``bbox_inches="tight"``, 0.1 inch of margin)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    crop = dict(bbox_inches="tight", pad_inches=0.1) if tight else {}
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white", **crop)
    buffer.seek(0)
    with Image.open(buffer) as picture:
        return picture.convert("RGB")
