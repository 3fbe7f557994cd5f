"""The correspondence result as a table in the shape of table 1 of Zeiler & Fergus (2014).

One row per part, two columns per layer: Delta per ordered pair for the part's
boxes, and the mean +- standard deviation over the random draws of Delta per pair
for boxes of the same size at random positions (the baseline).  Smaller means the
occlusions changed the layer's features more consistently across the images.
"""
from __future__ import annotations

import html

__all__ = ["table_rows", "markdown_table", "html_table"]


def _layers(results, layers):
    if not results:
        raise ValueError("results: expected at least one part")
    first = next(iter(results.values()))
    layers = list(first) if layers is None else list(layers)
    for part, result in results.items():
        missing = [layer for layer in layers if layer not in result]
        if missing:
            raise ValueError(f"results: part {part!r} has no result for layers {missing}")
    return layers


def table_rows(results, layers=None, digits=3):
    """Header and rows of strings: ``part, n, then per layer: part Delta, random mean +- std``.

    ``results`` maps a part's label to the dict :func:`zfraw.analysis.correspondence.correspondence`
    returned (layer -> values); ``layers`` picks and orders the columns (default: all, in order).
    """
    layers = _layers(results, layers)
    header = ["part", "images"]
    for layer in layers:
        header += [f"{layer}: part", f"{layer}: random"]
    rows = []
    for part, result in results.items():
        row = [str(part), str(next(iter(result.values()))["n"])]
        for layer in layers:
            r = result[layer]
            row += [f"{r['delta_per_pair']:.{digits}f}",
                    f"{r['random_mean_per_pair']:.{digits}f} ± {r['random_std_per_pair']:.{digits}f}"]
        rows.append(row)
    return header, rows


def markdown_table(results, layers=None, digits=3):
    """The table as GitHub Markdown (also readable as plain text)."""
    header, rows = table_rows(results, layers, digits)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(header) - 2)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(results, layers=None, digits=3, css_class="arch"):
    """The table as an HTML ``<table>`` (every cell escaped)."""
    header, rows = table_rows(results, layers, digits)
    esc = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" if j < 2 else f"<td class=\"num\">{esc(c)}</td>"
                                    for j, c in enumerate(row)) + "</tr>" for row in rows)
    return f'<table class="{esc(css_class)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
