"""Regenerate the pictures in README.md from the built-in model: ``python docs/make_figures.py``.

Writes docs/img/filters.png (the layer-1 filters) and docs/img/top9_<layer>.png
(the paper's figure-2 layout for one feature of conv2, conv3 and conv5), over the
first 1000 images of the built-in dataset's held-out ``val`` split.
"""
import argparse
import os

from zfraw import builtin, visualize
from zfraw.nn import atomic_write

#: the feature shown per layer; None picks the layer's most active feature
FEATURES = {"conv2": None, "conv3": None, "conv5": None}


def main(out=os.path.join(os.path.dirname(os.path.abspath(__file__)), "img"), n_images=1000):
    net, meta = builtin.load_model()
    dataset = builtin.dataset("val", n_per_class=n_images // 10)
    transform = builtin.eval_transform(meta["mean"])
    save = {"filters.png": visualize.filters_image(net["conv1"].params["w"])}
    for layer, feature in FEATURES.items():
        figures = visualize.top9(net, dataset, layer, None if feature is None else [feature], transform,
                                 meta["mean"], n_features=1, cell=96)
        save[f"top9_{layer}.png"] = next(iter(figures.values()))
    for name, picture in save.items():
        atomic_write(os.path.join(out, name), lambda fh, p=picture: p.save(fh, format="PNG"), suffix=".png.tmp")
        print("wrote", os.path.join(out, name))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "img"))
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    main(args.out, args.images)
