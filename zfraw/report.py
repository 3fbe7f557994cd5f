"""A self-contained HTML report of what each layer of a network responds to.

:func:`write_report` writes ``out_dir/index.html`` and its pictures under
``out_dir/img/`` (relative links, inline CSS, no scripts, nothing fetched from
the network), so the folder can be zipped, mailed or opened from disk:

- what the pictures are (the deconvnet of Zeiler & Fergus 2014) and how to read
  a top-9 figure; what the images are (:func:`describe_dataset`, with the class
  list); why the first layer's nine projections are copies of its filter;
- the architecture table (output shapes, parameters, receptive fields);
- the layer-1 filters;
- for each chosen layer, top-9 figures (fig. 2 of the paper) for a few features
  chosen automatically, and projections of a few single images with the model's
  prediction (in the model's own class names);
- optionally (``zfraw demo`` has them) occlusion sensitivity of the example images
  (fig. 7) and the part-correspondence table (table 1) against random boxes.

The page fits narrow windows (pictures shrink to the width, the table scrolls),
and the folder gets the mode the user's umask gives a new folder.

The dataset is scanned once, in batches, for all layers together
(:func:`zfraw.analysis.topk.scan_layers`).  The report is built in a temporary
folder beside ``out_dir`` and renamed into place at the end, so a reader never
sees a half-written report; an existing report there is replaced.
"""
from __future__ import annotations

import html
import os
import shutil
import tempfile
import time

import numpy as np

from zfraw import data
from zfraw import visualize as V
from zfraw.analysis.topk import feature_records
from zfraw._args import int_arg
from zfraw.backend import get_backend
from zfraw.nn import Conv2d, Sequential

__all__ = ["write_report", "describe_dataset", "DEFAULT_LAYERS", "occlusion_section", "correspondence_section",
           "rectified_top_conv", "invariance_section", "evolution_section", "first_layer_section"]

DEFAULT_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; overflow-wrap: break-word; }
h1 { margin-bottom: 0.2em; }
h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; }
table.arch { border-collapse: collapse; font-size: 0.9em; }
table.arch th, table.arch td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; }
table.arch td.num { text-align: right; font-variant-numeric: tabular-nums; }
table.arch tr.conv { background: #f3f7ff; }
.scroll { overflow-x: auto; max-width: 100%; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 100%; }
figcaption { font-size: 0.85em; color: #444; max-width: min(560px, 100%); }
img { image-rendering: pixelated; image-rendering: crisp-edges; border: 1px solid #eee;
      max-width: 100%; height: auto; }
@media (max-width: 640px) {
  body { margin: 1em auto; padding: 0 0.5em; }
  figure { margin: 0.5em 0; }
  table.arch { font-size: 0.8em; }
}
.note { background: #fafafa; border-left: 3px solid #aac; padding: 0.5em 1em; }
"""


def _esc(s):
    return html.escape(str(s), quote=True)


def _check_out_dir(out_dir):
    """The absolute path; refuse to replace a folder that holds something other than a report."""
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"out_dir: {out_dir!r} exists and is not a folder")
        entries = os.listdir(out_dir)
        if entries and "index.html" not in entries:
            raise ValueError(f"out_dir: {out_dir!r} is a non-empty folder without an index.html; "
                             f"not replacing it (choose a new folder or an old report)")
    return out_dir


def _replace_dir(tmp, out_dir):
    """Move the finished report ``tmp`` to ``out_dir``, replacing any old report there."""
    old = None
    if os.path.exists(out_dir):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(out_dir))
        os.rmdir(old)
        os.rename(out_dir, old)
    try:
        os.rename(tmp, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old, out_dir)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _labels(dataset, indices):
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        return [int(labels[i]) for i in indices]
    return [int(dataset[i][1]) for i in indices]


def _example_indices(dataset, n_images, n_examples):
    """The first image of each of ``n_examples`` different labels (by dataset order), or evenly spaced."""
    labels = getattr(dataset, "labels", None)
    if labels is not None:
        seen, picks = set(), []
        for i in range(n_images):
            lab = int(labels[i])
            if lab not in seen:
                seen.add(lab)
                picks.append(i)
            if len(picks) == n_examples:
                return picks
    return sorted(set(np.linspace(0, n_images - 1, n_examples).round().astype(int).tolist()))


def _save(img, tmp, name):
    img.save(os.path.join(tmp, "img", name), optimize=False)
    return f"img/{name}"


def _arch_html(rows):
    head = "".join(f"<th>{_esc(title)}</th>" for _, title in V.TABLE_COLUMNS)
    body = []
    for row in rows:
        cells = []
        for key, _ in V.TABLE_COLUMNS:
            cls = ' class="num"' if key == "params" else ""
            cells.append(f"<td{cls}>{_esc(V.format_cell(key, row[key]))}</td>")
        cls = ' class="conv"' if row["type"] == "Conv2d" else ""
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    total = sum(r["params"] for r in rows)
    body.append(f"<tr><th>total</th><td></td><td></td><td></td><td class=\"num\">{total:,}</td><td></td></tr>")
    return (f'<div class="scroll"><table class="arch"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


_CHOICE = {
    "top": "the {n} features with the strongest single activation over the {N} images",
    "spread": "{n} features spread evenly over the ranking of the features by their strongest activation over "
              "the {N} images (from the most active to the least active one that fires at all)",
}


def write_report(out_dir, net, dataset, transform, mean, classes=None, layers=DEFAULT_LAYERS,
                 features_per_layer=4, n_images=1000, batch_size=64, progress=True,
                 title="What the layers respond to: deconvnet projections", how="top", k=9,
                 n_examples=3, rule="deconvnet", description=None, scan_layers=None, occlusion=False,
                 correspondence=False, model_classes=None, about_images=None, sections=()):
    """Write an HTML report of the deconvnet visualizations of ``net`` over ``dataset``.

    Parameters
    ----------
    out_dir : path
        The report folder (``index.html`` and ``img/``); replaced if it holds
        an old report, refused if it is a non-empty folder without one.
    net : zfraw.nn.Sequential
    dataset : sequence of (image uint8 HWC, label)
    transform : callable
        ``image -> float32 (3, h, w)``, the preprocessing the network expects.
    mean : array_like or None
        The mean ``transform`` subtracts (to show the images as they were).
    classes : list of str, optional
        The dataset's class names, for the images' labels (default:
        ``dataset.classes`` if it has them).
    model_classes : list of str, optional
        The model's own class names, for its predictions (default: ``classes``
        when the model has as many outputs, else "class k").
    layers : sequence of str
        The layers to show (default conv1 .. conv5).
    features_per_layer : int
        Features shown per layer, chosen by ``how`` (see
        :func:`zfraw.visualize.choose_features`: ``"top"`` the most active,
        ``"spread"`` spread over the range).
    n_images : int
        Scan only the first ``n_images`` of the dataset.
    batch_size, progress, k, rule
        Batch size of the scan and the projections; tqdm bars; images per
        feature (9 as in the paper); the ReLU rule of the projections.
    n_examples : int
        Single images projected at each layer (their strongest feature).
    description : str, optional
        A paragraph (plain text) shown under the title, e.g. how the network was trained.
    scan_layers : callable, optional
        The top-k scan, with the signature of :func:`zfraw.analysis.topk.scan_layers`
        (the default); e.g. :func:`zfraw.distributed.scanner` scans on Dask workers.
    occlusion : bool
        Add the occlusion section (fig. 7 of the paper) for the example images
        (:func:`occlusion_section`; ``zfraw demo`` turns it on).
    correspondence : bool
        Add the part-correspondence table (table 1) when the dataset knows its part
        boxes, as the built-in one does (:func:`correspondence_section`).
    about_images : str, optional
        A paragraph (plain text) that says what the images are (default: a
        description built from the dataset: the procedural dataset, the
        folder, and the class list).
    sections : sequence of callables, optional
        More sections after the layers: each is called as ``section(img_dir)``
        and returns ``(anchor, html)`` (e.g. :func:`invariance_section`,
        :func:`evolution_section`, :func:`first_layer_section` with their
        data bound by :func:`functools.partial`).

    Returns
    -------
    str
        The path of ``out_dir/index.html``.
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"net: expected a zfraw.nn.Sequential, got {type(net).__name__}")
    layers = [net.check_layer(lyr) for lyr in ([layers] if isinstance(layers, str) else layers)]
    if not callable(transform):
        raise TypeError(f"transform: expected a callable, got {type(transform).__name__}")
    if scan_layers is not None and not callable(scan_layers):
        raise TypeError(f"scan_layers: expected a function like zfraw.analysis.topk.scan_layers, got "
                        f"{type(scan_layers).__name__}")
    features_per_layer = int_arg("features_per_layer", features_per_layer, 1)
    n_images = min(int_arg("n_images", n_images, 1), data.dataset_length(dataset))
    if n_images == 0:
        raise ValueError("dataset: it is empty")
    if how not in V.CHOOSE_MODES:
        raise ValueError(f"how: expected one of {V.CHOOSE_MODES}, got {how!r}")
    out_dir = _check_out_dir(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    classes = list(classes) if classes is not None else getattr(dataset, "classes", None)

    if about_images is None:
        about_images = describe_dataset(dataset, n_images, classes)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: give the report a new folder's usual mode
        os.mkdir(os.path.join(tmp, "img"))
        body, seconds, anchors = _build(tmp, net, dataset, transform, mean, classes, layers, features_per_layer,
                                        n_images, batch_size, progress, how, k, n_examples, rule,
                                        scan_layers or V.scan_layers, occlusion, correspondence,
                                        model_classes=model_classes, about_images=about_images)
        t0 = time.perf_counter()
        for section in sections:
            anchor, part = section(os.path.join(tmp, "img"))
            anchors.append(anchor)
            body += "\n" + part
        seconds += time.perf_counter() - t0
        page = _page(title, description, net, n_images, body, seconds, rule, anchors)
        with open(os.path.join(tmp, "index.html"), "w", encoding="utf-8") as fh:
            fh.write(page)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return os.path.join(out_dir, "index.html")


def _umask():
    """The process's file-creation mask (read by setting it and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def describe_dataset(dataset, n_images, classes=None):
    """A plain-text paragraph that says what the report's images are, with the class list."""
    from zfraw.data import ImageFolder
    from zfraw.synthetic import SyntheticDataset

    classes = list(classes) if classes is not None else list(getattr(dataset, "classes", None) or [])
    names = f" in {len(classes)} classes: {', '.join(map(str, classes))}" if classes else ""
    if isinstance(dataset, SyntheticDataset):
        return (f"The images: the first {n_images} of the '{dataset.split}' split of zfraw's built-in procedural "
                f"dataset, {dataset.size}x{dataset.size} RGB pictures drawn from seed {dataset.seed} by "
                f"zfraw.synthetic (no files){names}. Objects are drawn at random positions, scales, rotations and "
                f"colours on textured backgrounds.")
    if isinstance(dataset, ImageFolder):
        return f"The images: the first {n_images} of the {len(dataset)} images in the folder {dataset.root}{names}."
    return f"The images: the first {n_images} of {len(dataset)} images ({type(dataset).__name__}){names}."


def _class_name(names, k):
    return str(names[k]) if names and 0 <= k < len(names) else f"class {k}"


def _predictions(net, xs, model_classes):
    """(name, probability) of the model's top class for each preprocessed image of xs."""
    from zfraw import functional as F
    from zfraw.backend import to_host

    xp = get_backend().xp
    was_training = net.training
    net.eval()
    try:
        dtype = next(iter(net.parameters().values())).dtype if net.parameters() else np.float32
        scores = net.forward(xp.asarray(np.stack(xs), dtype=dtype), keep=False, cache=False)
    finally:
        net.train(was_training)
    if scores.ndim != 2:
        return [None] * len(xs)
    p = np.asarray(to_host(F.softmax(scores)), dtype=np.float64)
    return [(_class_name(model_classes, int(row.argmax())), float(row.max())) for row in p]


_FIRST_LAYER_NOTE = (
    "Why the nine projections at {layer} look alike: a {layer} unit sees the image pixels through one filter "
    "and nothing else, so the projection of a single activation is that filter, scaled by the activation and "
    "placed where the unit looks. The nine projections of a {layer} feature are therefore nine copies of its "
    "filter (cut where a patch meets the image border): correct, not a bug. The paper (fig. 2) shows only the "
    "patches at layer 1 for this reason; the patches on the right are what differs.")


def _build(tmp, net, dataset, transform, mean, classes, layers, n_features, n_images, batch_size, progress,
           how, k, n_examples, rule, scan_layers, occlusion=False, correspondence=False, model_classes=None,
           about_images=None):
    """Compute every picture into ``tmp/img``; returns (HTML sections, seconds taken, section anchors)."""
    t0 = time.perf_counter()
    parts, anchors = [], ["images", "architecture"]
    x0 = data.load_item(dataset, 0, transform)
    parts.append(f"<h2 id=\"images\">The images</h2><p>{_esc(about_images or '')}</p>")

    rows = V.architecture_table(net, x0.shape)
    parts.append("<h2 id=\"architecture\">The network</h2>")
    parts.append(f"<p>{_esc(net.name)}: {sum(r['params'] for r in rows):,} parameters, input "
                 f"{'x'.join(map(str, x0.shape))}. The receptive field is the square of input pixels one unit "
                 f"of a layer depends on (size / stride in pixels between neighbouring units).</p>")
    parts.append(_arch_html(rows))

    first = next((lyr for _, lyr in net if isinstance(lyr, Conv2d)), None)
    if first is not None and first.params["w"].shape[1] == 3:
        src = _save(V.filters_image(first.params["w"], scale=8), tmp, "filters.png")
        anchors.append("filters")
        parts.append("<h2 id=\"filters\">Layer-1 filters</h2>")
        parts.append(f"<figure><img src=\"{src}\" alt=\"layer-1 filters\"><figcaption>The "
                     f"{first.out_channels} filters of the first convolution, each contrast-normalized on its "
                     f"own (grey = 0), enlarged 8 times.</figcaption></figure>")

    scans = scan_layers(net, dataset, layers, k, batch_size, transform, progress, limit=n_images)
    examples = _example_indices(dataset, n_images, n_examples)
    example_x = [data.load_item(dataset, i, transform) for i in examples]
    example_labels = _labels(dataset, examples)
    n_outputs = int(net.summary(x0.shape)[-1][2][0]) if net.names else 0
    if model_classes is None and classes is not None and len(classes) == n_outputs:
        model_classes = classes
    predictions = _predictions(net, example_x, model_classes) if example_x else []
    choice = _CHOICE[how].format(n=n_features, N=n_images)
    for lyr in layers:
        topk, width = scans[lyr]
        records = feature_records(topk, width, None, lyr, n_features, how)
        figures = V.top9(net, dataset, lyr, None, transform, mean, k=k, batch_size=batch_size, rule=rule,
                         records=records)
        rf = next(r for r in rows if r["name"] == lyr)
        anchors.append(lyr)
        parts.append(f"<h2 id=\"{_esc(lyr)}\">{_esc(lyr)}</h2>")
        if rf["receptive_field"] == "whole image":
            sees = "each unit sees the whole image"
        else:
            sees = (f"each unit sees a {rf['rf_size']}x{rf['rf_size']}-pixel patch of the input (neighbouring "
                    f"units {rf['rf_stride']} pixels apart)")
        maps = "x".join(map(str, rf["output_shape"][1:])) or "1"
        parts.append(f"<p>{topk.val.shape[0]} feature maps of {maps} units; {sees}. Shown: {_esc(choice)}.</p>")
        if first is not None and lyr == next(n for n, lay in net if lay is first):
            parts.append(f"<p class=\"note\">{_esc(_FIRST_LAYER_NOTE.format(layer=lyr))}</p>")
        for f, fig in figures.items():
            src = _save(fig, tmp, f"top9_{lyr}_f{f}.png")
            recs = records[f]
            caption = f"Feature {f}: activations " + ", ".join(f"{r.value:.3g}" for r in recs)
            if classes:
                names = [classes[lab] if 0 <= lab < len(classes) else str(lab)
                         for lab in _labels(dataset, [r.index for r in recs])]
                caption += "; classes " + ", ".join(names)
            caption += "; images #" + ", ".join(str(r.index) for r in recs) + "."
            parts.append(f"<figure><img src=\"{src}\" alt=\"top {len(recs)} of {_esc(lyr)} feature {f}\">"
                         f"<figcaption>{_esc(caption)}</figcaption></figure>")
        parts.append(f"<h3>Single images at {_esc(lyr)}</h3><p>Each image beside the projection of its "
                     f"strongest activation at {_esc(lyr)} (the red box: that unit's receptive field).</p>")
        for i, x, lab, pred in zip(examples, example_x, example_labels, predictions):
            fig = V.project_image(net, x, lyr, rule=rule, mean=mean, factor=3)
            src = _save(fig, tmp, f"project_{lyr}_{i}.png")
            text = f"Image #{i} (a {_class_name(classes, lab)} image)"
            if pred is not None:
                text += f"; the model predicts {pred[0]} ({pred[1]:.0%})"
            parts.append(f"<figure><img src=\"{src}\" alt=\"image {i} projected at {_esc(lyr)}\">"
                         f"<figcaption>{_esc(text)}.</figcaption></figure>")
    sections = []
    if occlusion and model_classes is not None and list(model_classes) == list(classes or []):
        sections.append(occlusion_section(tmp, net, example_x, example_labels, mean, classes, progress=progress))
    elif occlusion:  # its target is the image's true class, which this model does not have
        parts.append("<p class=\"note\">No occlusion section: it measures the probability of each image's true "
                     "class, and this model's classes are not the images' classes.</p>")
    if correspondence:
        sections.append(correspondence_section(net, dataset, transform))
    for section in sections:
        if section is not None:
            anchors.append(section[0])
            parts.append(section[1])
    return "\n".join(parts), time.perf_counter() - t0, anchors


def _page(title, description, net, n_images, body, seconds, rule, anchors):
    rule_text = {
        "deconvnet": "the deconvnet rule of Zeiler &amp; Fergus (at each ReLU the signal coming down is "
                     "rectified, whatever the forward input was)",
        "guided": "guided backpropagation (Springenberg et al. 2014: rectified and masked by the forward input)",
        "backprop": "the plain gradient (Simonyan et al. 2013: masked by the forward input)",
    }[rule]
    desc = f"<p class=\"note\">{_esc(description)}</p>" if description else ""
    intro = f"""
<p>These pictures show what the units of a convolutional network respond to, with the
<em>deconvnet</em> of Zeiler &amp; Fergus, &ldquo;Visualizing and Understanding Convolutional
Networks&rdquo; (ECCV 2014). To see what drives one activation, an image is passed forward, every
other activation of that layer is set to zero, and the signal is passed back down to the pixels:
through the max-pooling <em>switches</em> recorded on the way up (unpooling), through each ReLU with
{rule_text}, and through the transposed filters of each convolution. The result, a
<em>projection</em>, has the shape of the image; it is drawn around grey (grey = 0, brighter and
darker = positive and negative), and shows which pixels, in which pattern, produced the
activation.</p>
<p><strong>How to read a top-9 figure</strong> (fig. 2 of the paper): it belongs to one feature map of one
layer. The {n_images} images were scanned and the 9 where the feature fires most strongly were kept (each
image once, at its strongest position). <em>Left</em>: the projection of that single activation of each
image; <em>right</em>: the image patch that activation sees (its receptive field), cropped to the same
box, in the same grid position. The 9 projections of a feature share one contrast scale. Patches at
the image border are cut by it, so they may be smaller than the receptive field.</p>
"""
    toc = " &middot; ".join(f"<a href=\"#{_esc(a)}\">{_esc(a)}</a>" for a in anchors)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{_esc(title)}</h1>
<p class="meta">{_esc(net.name)}, {n_images} images, backend {_esc(get_backend().name)},
computed in {seconds:.1f} s by zfraw. {toc}</p>
{desc}
{intro}
{body}
</body>
</html>
"""


# ============================================================== the paper's other experiments

def _save_to(img_dir, picture, name):
    picture.save(os.path.join(img_dir, name), optimize=False)
    return f"img/{name}"


def invariance_section(img_dir, net, x, labels, target=None, transforms=("translate", "scale", "rotate"),
                       layers=None, amounts=None):
    """Fig. 5: how the features and the class probability change as images move, grow and turn.

    x (N, 3, H, W) preprocessed images, labels: one name per image (for the
    legend), target: their true classes (N,) (default: the predictions);
    layers default to the first and last conv layers and the last hidden fc
    layer.  Returns ``(anchor, html)``.
    """
    from zfraw.analysis import invariance as inv
    from zfraw.render.invariance import invariance_figure

    layers = list(layers or inv.default_layers(net))
    amounts = amounts or {"translate": range(-20, 21, 4), "scale": np.round(np.arange(0.5, 1.55, 0.1), 2),
                          "rotate": range(0, 361, 30)}
    parts = ["<h2 id=\"invariance\">Invariance to translation, scale and rotation</h2>",
             f"<p>Each image is shifted down (or up), scaled about its centre, or rotated, and at each step we "
             f"measure how far the feature vector of {_esc(', '.join(layers))} moved from the original's "
             f"(the distance divided by the original's length, so that layers of different sizes can be "
             f"compared) and the probability the network gives the image's class (fig. 5 of the paper). "
             f"A small distance means the layer does not care about the change: the first layer reacts to every "
             f"shift, while the top layers and the class should stay steady over small shifts and scalings; "
             f"rotation is different, except for objects that look the same when turned (a star, a ring). "
             f"Pixels that come from outside the image are the dataset mean.</p>"]
    for t in transforms:
        result = inv.invariance(net, x, t, amounts[t], layers, target=target)
        picture = invariance_figure(result, layers, kind="relative", labels=labels)
        src = _save_to(img_dir, picture, f"invariance_{t}.png")
        parts.append(f"<figure><img src=\"{src}\" alt=\"invariance to {_esc(t)}\"><figcaption>{_esc(t)}: "
                     f"{_esc(inv.UNITS[t])} against the relative feature distance per layer and the probability "
                     f"of the image's class; one line per image.</figcaption></figure>")
    return "invariance", "\n".join(parts)


def evolution_section(img_dir, snapshots, x, n_features=3, note=None):
    """Fig. 4: the strongest feature maps of each conv layer at training snapshots.

    snapshots: (epochs, nets[, extra]) from :func:`zfraw.analysis.evolution.load_snapshots`;
    x (N, 3, H, W) the fixed image set.  Returns ``(anchor, html)``.
    """
    from zfraw.analysis import evolution as evo
    from zfraw.render.evolution import evolution_figure

    result = evo.evolution(snapshots, x, n_features=n_features)
    src = _save_to(img_dir, evolution_figure(result), "evolution.png")
    epochs = ", ".join(str(e) for e in result.epochs)
    text = (f"<h2 id=\"evolution\">Feature evolution during training</h2><p>The same network saved after epochs "
            f"{_esc(epochs)} of its training. For {n_features} feature maps of each conv layer (the most active "
            f"ones at the end) we find, at every epoch, the strongest activation over the same {len(x)} images and "
            f"project it to pixels; each row follows one feature from left (early) to right (late). In the paper "
            f"the lower layers settle within a few epochs and the upper ones only after many: look for the epoch "
            f"where a row stops changing.</p>")
    if note:
        text += f"<p class=\"note\">{_esc(note)}</p>"
    return "evolution", text + f"<figure><img src=\"{src}\" alt=\"feature evolution\"></figure>"


def first_layer_section(img_dir, reports):
    """Fig. 6: first-layer filters and conv2 top-9 projections of networks, with the two numbers.

    reports: name -> :class:`zfraw.analysis.first_layer.FirstLayerReport`.  Returns ``(anchor, html)``.
    """
    from zfraw.render.first_layer import first_layer_figure, report_line

    rep = next(iter(reports.values()))
    src = _save_to(img_dir, first_layer_figure(reports), "first_layer.png")
    lines = "".join(f"<li>{_esc(report_line(name, r))}</li>" for name, r in reports.items())
    return "first-layer", (
        f"<h2 id=\"first-layer\">The first layer: dead filters and aliasing</h2><p>Zeiler &amp; Fergus changed "
        f"AlexNet's first layer (11x11 filters, stride 4) to 7x7 with stride 2 because its filters were partly "
        f"dead and its second layer showed aliasing: grid-like high-frequency artifacts from the large stride "
        f"(fig. 6). Two numbers check a network for both: the share of first-layer filters whose RMS is below "
        f"{rep.dead['threshold']:g} times the median filter's, and the share of the power of the {_esc(rep.layer2)} "
        f"top-9 projections at spatial frequencies above {rep.cutoff:g} times the Nyquist frequency (patterns "
        f"finer than 4 pixels). Low numbers mean healthy filters and smooth projections.</p><ul>{lines}</ul>"
        f"<figure><img src=\"{src}\" alt=\"first-layer filters and conv2 projections\"></figure>")


# --------------------------------------------------------------------------- occlusion (fig. 7)
def rectified_top_conv(net):
    """The layer the occlusion section reads: the last conv layer's ReLU if one follows it
    directly (the paper's feature maps are rectified), else the last conv layer itself."""
    from zfraw.analysis.occlusion import last_conv
    from zfraw.nn import ReLU

    conv = last_conv(net)
    names = net.names
    after = names[names.index(conv) + 1] if names.index(conv) + 1 < len(names) else None
    return after if after is not None and isinstance(net[after], ReLU) else conv


def occlusion_section(tmp, net, images, labels, mean, classes, size=None, stride=None, progress=True):
    """The report's occlusion section (fig. 7): one five-panel figure per image.

    images: preprocessed (C, H, W) arrays; labels: their true classes (the target);
    size/stride default to a quarter of the input side and a quarter of that.
    Returns (anchor, HTML) or None when the network has no conv layer or no images.
    """
    from zfraw import deconvnet
    from zfraw.analysis.occlusion import occlusion, strongest_drop
    from zfraw.backend import to_host
    from zfraw.render.occlusion import occlusion_figure

    if not images or not any(isinstance(layer, Conv2d) for _, layer in net):
        return None
    x = np.stack([np.asarray(to_host(im)) for im in images])
    side = min(x.shape[-2:])
    size = size or max(1, side // 4)
    stride = stride or max(1, size // 4)
    layer = rectified_top_conv(net)
    xp = get_backend().xp
    xd = xp.asarray(x, dtype=next(iter(net.parameters().values())).dtype)
    maps = occlusion(net, xd, size, stride, layer=layer, target=np.asarray(labels, dtype=np.int64),
                     progress=progress)
    projections = np.asarray(to_host(deconvnet.project(net, xd, layer, feature=maps.feature)))
    net.clear()
    name = (lambda k: classes[k] if classes and 0 <= k < len(classes) else str(k))  # noqa: E731
    out = ["<h2 id=\"occlusion\">Occlusion: what the network looks at</h2>",
           f"<p>Each figure hides part of one image behind a grey {size}x{size} square (the mean colour: 0 "
           f"after the mean is subtracted), placed at every position of a grid {stride} pixels apart, and runs "
           f"the network on every copy. (b) shows how strongly the image's strongest {_esc(layer)} feature map "
           f"still fires, (d) the probability of the true class and (e) the class the network then predicts, "
           f"each drawn at the square's centre. If the network uses the object and not its surroundings, the "
           f"probability drops only where the square covers the object: the test Zeiler &amp; Fergus used "
           f"(their figure 7).</p>"]
    for i, drop in enumerate(strongest_drop(maps)):
        fig = occlusion_figure(maps, i, V.image_to_uint8(x[i], mean), projections[i], classes=classes)
        src = _save(fig, tmp, f"occlusion_{i}.png")
        caption = (f"True class {name(int(maps.target[i]))}: its probability falls to {drop.probability:.3f} "
                   f"with the square at (top, left) = ({drop.top}, {drop.left}), where the network says "
                   f"{name(drop.label)}.")
        out.append(f"<figure><img src=\"{src}\" alt=\"occlusion sensitivity of image {i}\">"
                   f"<figcaption>{_esc(caption)}</figcaption></figure>")
    return "occlusion", "\n".join(out)


# --------------------------------------------------------------------------- correspondence (table 1)
def correspondence_section(net, dataset, transform, n_images=16, random_draws=5):
    """The report's correspondence section (table 1), for a dataset that knows its part boxes
    (the built-in one) and a network with the layers of
    :data:`zfraw.analysis.correspondence.BUILTIN_LAYERS`; None otherwise."""
    from zfraw.analysis.correspondence import BUILTIN_LAYERS, BUILTIN_PARTS, part_correspondence
    from zfraw.render.correspondence import html_table

    if not hasattr(dataset, "part_boxes") or any(layer not in net.layers for layer in BUILTIN_LAYERS):
        return None
    results = part_correspondence(net, dataset, transform, BUILTIN_PARTS, BUILTIN_LAYERS, n_images=n_images,
                                  random_draws=random_draws, skip_scarce=True)
    if not results:
        return None
    n_images = max(next(iter(r.values()))["n"] for r in results.values())
    first, second = BUILTIN_LAYERS
    text = (f"<h2 id=\"correspondence\">Correspondence: does the network find the same part in every "
            f"image?</h2><p>For each part, the same part (say a face's left eye) is hidden in each of {n_images} "
            f"images of its class (fewer where the table says so) and the change of the features at a layer is compared between every two images: "
            f"&Delta; is the fraction of features whose change has a different sign, averaged over the ordered "
            f"pairs. If the network ties that part together across images, hiding it changes the features the "
            f"same way each time and &Delta; is lower than for boxes of the same size at random positions "
            f"(&ldquo;random&rdquo;: mean &plusmn; std over {random_draws} draws). {_esc(first)} is the output "
            f"of the top conv layer's block and {_esc(second)} of the second fc layer, the paper's layers 5 and "
            f"7; the paper (its table 1) found parts below random at layer 5 and closer to random at layer 7."
            f"</p>")
    return "correspondence", text + html_table(results, BUILTIN_LAYERS)
