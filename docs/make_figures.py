"""Regenerate the pictures in README.md from the built-in model: ``python docs/make_figures.py``.

Writes docs/img/filters.png (the layer-1 filters) and docs/img/top9_<layer>.png
(the paper's figure-2 layout for one feature of conv2, conv3 and conv5), over the
first 1000 images of the built-in dataset's held-out ``val`` split;
docs/img/occlusion.png (fig. 7 for the first face of the ``val`` split) and, on
stdout, the part-correspondence table of the README (table 1, 20 images per part,
10 random draws); and (:func:`other_experiments`) docs/img/invariance_rotate.png
(fig. 5), docs/img/evolution.png (fig. 4, from the shipped snapshots) and
docs/img/first_layer.png (fig. 6).
"""
import argparse
import os

import numpy as np

from zfraw import builtin, deconvnet, report, visualize
from zfraw.analysis.correspondence import part_correspondence
from zfraw.analysis.occlusion import occlusion
from zfraw.nn import atomic_write
from zfraw.render.correspondence import markdown_table
from zfraw.render.occlusion import occlusion_figure

#: the feature shown per layer; None picks the layer's most active feature
FEATURES = {"conv2": None, "conv3": None, "conv5": None}


def main(out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "img"), n_images=1000, only=None):
    """Write the pictures (``only``: just these file names, e.g. ``{"first_layer.png"}``)."""
    net, meta = builtin.load_model()
    dataset = builtin.dataset("val", n_per_class=n_images // 10)
    transform = builtin.eval_transform(meta["mean"])
    save = {}
    if only is None:
        save["filters.png"] = visualize.filters_image(net["conv1"].params["w"])
        for layer, feature in FEATURES.items():
            figures = visualize.top9(net, dataset, layer, None if feature is None else [feature], transform,
                                     meta["mean"], n_features=1, cell=96)
            save[f"top9_{layer}.png"] = next(iter(figures.values()))
        save["occlusion.png"] = occlusion_picture(net, meta, dataset, transform)
    save.update(other_experiments(net, meta, dataset, transform))
    for name, picture in save.items():
        if only is not None and name not in only:
            continue
        atomic_write(os.path.join(out, name), lambda fh, p=picture: p.save(fh, format="PNG"), suffix=".png.tmp")
        print("wrote", os.path.join(out, name))
    if only is None:
        print(markdown_table(part_correspondence(net, dataset, transform, n_images=20, random_draws=10)))


def occlusion_picture(net, meta, dataset, transform, label="face", size=16, stride=2):
    """Fig. 7 for the first image of ``label``: the rectified conv5 map, the true class."""
    i = int(np.flatnonzero(dataset.labels == meta["classes"].index(label))[0])
    x = transform(dataset[i][0])[None]
    layer = report.rectified_top_conv(net)
    maps = occlusion(net, x, size, stride, layer=layer, target=int(dataset.labels[i]))
    projection = deconvnet.project(net, x, layer, feature=maps.feature)
    return occlusion_figure(maps, 0, visualize.image_to_uint8(x[0], meta["mean"]), projection[0],
                            classes=meta["classes"])


def other_experiments(net, meta, dataset, transform):
    """Invariance to rotation of a face, a car, a star and a house; the evolution of the built-in
    model's features over its snapshots (100 images); its first layer (200 images)."""
    import numpy as np

    from zfraw.analysis import evolution, first_layer, invariance
    from zfraw.render.evolution import evolution_figure
    from zfraw.render.first_layer import first_layer_figure, report_line
    from zfraw.render.invariance import invariance_figure

    labels = np.asarray(dataset.labels)
    picks = [int(np.flatnonzero(labels == c)[0]) for c in (2, 1, 4, 3)]
    x = np.stack([transform(dataset[i][0]) for i in picks])
    result = invariance.invariance(net, x, "rotate", range(0, 361, 30), invariance.default_layers(net),
                                   target=labels[picks])
    out = {"invariance_rotate.png": invariance_figure(result, labels=[meta["classes"][labels[i]] for i in picks])}
    snapshots = evolution.load_snapshots(evolution.builtin_snapshots_path(), like=net)
    image_set = np.stack([transform(dataset[i][0]) for i in range(100)])
    out["evolution.png"] = evolution_figure(evolution.evolution(snapshots, image_set, n_features=3))
    reports = {}
    for name, (other, mean) in builtin.first_layer_models().items():  # zfnet_mini, and alexnet_mini if shipped
        reports[f"built-in {name}"] = first_layer.first_layer_report(other, dataset, builtin.eval_transform(mean),
                                                                     limit=200)
        print(report_line(f"built-in {name}", reports[f"built-in {name}"]))
    out["first_layer.png"] = first_layer_figure(reports)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "img"))
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--only", default=None,
                        help="comma-separated pictures of other_experiments to write, e.g. first_layer.png,evolution.png")
    args = parser.parse_args()
    main(args.out, args.images, None if args.only is None else set(args.only.split(",")))
