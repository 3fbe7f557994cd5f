"""Boxes over object parts in a user's own images, for :mod:`zfraw.analysis.correspondence`.

A boxes file names, per line, an image and a box over one part in that image's
own pixels:

- CSV: ``image,top,left,bottom,right[,part]`` (a header line whose first field is
  ``image`` and lines starting with ``#`` are skipped);
- JSON: a list of ``{"image": "a.png", "box": [top, left, bottom, right], "part": "eye"}``.

Boxes are (top, left, bottom, right), bottom/right exclusive; image paths are
relative to the boxes file's folder; a missing part name is ``"part"``.
:func:`box_to_input` carries a box through the evaluation preprocessing (shorter
side resized, central square crop) to the pixels the network sees.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import NamedTuple, Tuple

__all__ = ["BoxEntry", "read_boxes", "box_to_input"]


class BoxEntry(NamedTuple):
    """One line of a boxes file: the image path, the box in its pixels, the part, the line number (from 1)."""

    image: str
    box: Tuple[int, int, int, int]
    part: str
    line: int


def _entry(folder, image, box, part, line):
    box = tuple(int(v) for v in box)
    if len(box) != 4:
        raise ValueError(f"boxes file line {line}: expected a box (top, left, bottom, right), got {box}")
    return BoxEntry(os.path.join(folder, str(image)), box, str(part), line)


def read_boxes(path):
    """The entries of a boxes file (CSV or, by its ``.json`` suffix, JSON) as a list of :class:`BoxEntry`.

    A malformed file is a ValueError naming the file and the line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"--boxes: file {path!r} does not exist")
    folder = os.path.dirname(os.path.abspath(path))
    entries = []
    try:
        with open(path, encoding="utf-8") as fh:
            if path.lower().endswith(".json"):
                for k, item in enumerate(json.load(fh)):
                    entries.append(_entry(folder, item["image"], item["box"], item.get("part", "part"), k + 1))
            else:
                for k, row in enumerate(csv.reader(fh)):
                    if not row or row[0].strip().lower() == "image" or row[0].lstrip().startswith("#"):
                        continue
                    if len(row) not in (5, 6):
                        raise ValueError(f"line {k + 1}: expected image,top,left,bottom,right[,part], "
                                         f"got {len(row)} fields")
                    entries.append(_entry(folder, row[0].strip(), row[1:5],
                                          row[5].strip() if len(row) == 6 else "part", k + 1))
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"--boxes: cannot read {path!r}: {exc}") from None
    if not entries:
        raise ValueError(f"--boxes: {path!r} holds no boxes")
    return entries


def box_to_input(entry, image_shape, side):
    """The box of ``entry`` in the network input: the image (H, W) has its shorter side resized to
    ``side`` (the longer to ``round(long * side / short)``) and the central side x side square kept,
    as :func:`zfraw.data.eval_transform` (side, side) does.

    Edges are rounded outwards (floor the top/left, ceil the bottom/right) and clipped to the crop.
    A box outside the image, or wholly outside the crop, is a ValueError naming the line.
    """
    h, w = int(image_shape[0]), int(image_shape[1])
    where = f"--boxes: line {entry.line} ({os.path.basename(entry.image)})"
    if h <= w:
        nh, nw = side, max(1, int(round(w * side / h)))
    else:
        nh, nw = max(1, int(round(h * side / w))), side
    top, left = (nh - side) // 2, (nw - side) // 2
    t, l, b, r = entry.box
    if not (0 <= t < b <= h and 0 <= l < r <= w):
        raise ValueError(f"{where}: box {entry.box} is not inside the {h}x{w} image")
    t, b = math.floor(t * nh / h) - top, math.ceil(b * nh / h) - top
    l, r = math.floor(l * nw / w) - left, math.ceil(r * nw / w) - left
    t, l, b, r = max(t, 0), max(l, 0), min(b, side), min(r, side)
    if b <= t or r <= l:
        raise ValueError(f"{where}: box {entry.box} falls outside the central crop the network sees")
    return t, l, b, r
