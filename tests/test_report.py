"""The HTML report: complete, self-contained, every picture present and not blank, written atomically."""
import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from zfraw import data, models, report, synthetic


class _Page(HTMLParser):
    """Collects img sources, links, anchors and tags of a page."""

    def __init__(self):
        super().__init__()
        self.imgs, self.hrefs, self.ids, self.tags = [], [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.imgs.append(attrs.get("src"))
        if "href" in attrs:
            self.hrefs.append(attrs["href"])
        if "id" in attrs:
            self.ids.add(attrs["id"])


def _parse(path):
    page = _Page()
    with open(path, encoding="utf-8") as fh:
        page.feed(fh.read())
    return page


@pytest.fixture(scope="module")
def tiny():
    """A random-weight zfnet_mini, 20 synthetic 64x64 images, their per-channel mean and transform."""
    images, labels = synthetic.make_dataset(2, seed=4, split="val")
    dataset = data.ArrayDataset(images, labels, classes=synthetic.CLASSES)
    mean = (images.reshape(-1, 3).mean(axis=0) / 255).astype(np.float32)
    net = models.zfnet_mini(seed=5, init_std="he")
    return net, dataset, mean, data.eval_transform(64, 64, mean)


def _write(tmp_path, tiny, name="report", **kw):
    net, dataset, mean, transform = tiny
    args = dict(layers=("conv1", "conv3"), features_per_layer=2, n_images=20, batch_size=8, progress=False,
                n_examples=2)
    args.update(kw)
    return report.write_report(tmp_path / name, net, dataset, transform, mean, **args)


def _leftovers(folder):
    return [e for e in os.listdir(folder) if e.startswith(".")]


def test_tiny_report_is_complete_and_self_contained(tmp_path, tiny):
    index = _write(tmp_path, tiny)
    out = tmp_path / "report"
    assert index == str(out / "index.html")
    page = _parse(index)
    assert "script" not in page.tags and "link" not in page.tags  # inline CSS only, no scripts
    assert page.imgs, "no pictures"
    for src in page.imgs:
        assert not src.startswith(("http:", "https:", "//", "/", "file:")), src  # relative links only
        path = out / src
        assert path.is_file(), f"missing {src}"
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB"), dtype=np.float64)
        assert a.std() > 0, f"{src} is blank"
    for href in page.hrefs:
        assert href.startswith("#") and href[1:] in page.ids, href
    names = {os.path.basename(s) for s in page.imgs}
    assert sum(n.startswith("top9_conv1_") for n in names) == 2
    assert sum(n.startswith("top9_conv3_") for n in names) == 2
    assert sum(n.startswith("project_") for n in names) == 2 * 2
    assert "filters.png" in names
    assert set(os.listdir(out / "img")) == names  # nothing written that the page does not show
    text = (out / "index.html").read_text(encoding="utf-8")
    for words in ["Zeiler", "top-9", "conv1", "conv3", "receptive field", "strongest single activation"]:
        assert words in text, words
    assert "conv2" not in page.ids
    assert _leftovers(tmp_path) == []


def test_report_replaces_an_old_report(tmp_path, tiny):
    _write(tmp_path, tiny)
    _write(tmp_path, tiny, layers=("conv2",), features_per_layer=1, how="spread")
    out = tmp_path / "report"
    names = set(os.listdir(out / "img"))
    assert not any("conv1" in n or "conv3" in n for n in names)
    assert sum(n.startswith("top9_conv2_") for n in names) == 1
    assert "spread evenly" in (out / "index.html").read_text(encoding="utf-8")
    assert _leftovers(tmp_path) == []


def test_a_failed_report_leaves_nothing_behind(tmp_path, tiny):
    net, dataset, mean, transform = tiny
    _write(tmp_path, tiny)
    before = (tmp_path / "report" / "index.html").read_bytes()
    calls = []

    def failing(img):
        calls.append(1)
        if len(calls) > 12:
            raise RuntimeError("disk on fire")
        return transform(img)

    for name in ("report", "fresh"):
        with pytest.raises(RuntimeError, match="disk on fire"):
            report.write_report(tmp_path / name, net, dataset, failing, mean, layers=("conv1",),
                                n_images=20, batch_size=8, progress=False)
        calls.clear()
    assert (tmp_path / "report" / "index.html").read_bytes() == before  # the old report is intact
    assert not (tmp_path / "fresh").exists()
    assert _leftovers(tmp_path) == []


def test_refuses_to_replace_a_folder_that_is_not_a_report(tmp_path, tiny):
    net, dataset, mean, transform = tiny
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="out_dir"):
        report.write_report(tmp_path / "mine", net, dataset, transform, mean, layers=("conv1",), n_images=4,
                            progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="conv9"):
        report.write_report(tmp_path / "x", net, dataset, transform, mean, layers=("conv9",), progress=False)
    with pytest.raises(ValueError, match="how"):
        report.write_report(tmp_path / "x", net, dataset, transform, mean, how="best", progress=False)
    assert not (tmp_path / "x").exists()


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = document.images, broken = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) broken++;
  }
  document.body.setAttribute("data-images", String(imgs.length));
  document.body.setAttribute("data-broken", String(broken));
});
</script>
</body>"""


@pytest.mark.skipif(_chromium() is None, reason="Chromium is not installed (looked for chromium, "
                    "chromium-browser, google-chrome on PATH): cannot open the report in a browser here")
def test_report_opens_in_headless_chromium_without_broken_images(tmp_path, tiny):
    index = _write(tmp_path, tiny)
    page = _parse(index)
    # a copy of the page, beside it, with a script that counts the images that did not load
    probe = os.path.join(os.path.dirname(index), "probe.html")
    with open(index, encoding="utf-8") as fh:
        text = fh.read()
    with open(probe, "w", encoding="utf-8") as fh:
        fh.write(text.replace("</body>", _CHECK))
    with tempfile.TemporaryDirectory() as profile:
        cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--no-first-run", f"--user-data-dir={profile}", "--allow-file-access-from-files",
               "--virtual-time-budget=10000", "--dump-dom", "file://" + probe]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    dom = result.stdout
    assert f'data-images="{len(page.imgs)}"' in dom, (result.returncode, result.stderr[-2000:])
    assert 'data-broken="0"' in dom


def test_report_says_what_the_images_are_explains_conv1_and_fits_narrow_windows(tmp_path, tiny):
    net, _, mean, transform = tiny
    drawn = synthetic.SyntheticDataset(2, seed=4, split="val")
    index = _write(tmp_path, (net, drawn, mean, transform), layers=("conv1", "conv2"), features_per_layer=1,
                   n_examples=1)
    text = open(index, encoding="utf-8").read()
    assert "procedural dataset" in text and "64x64" in text and "seed 4" in text
    assert ", ".join(synthetic.CLASSES) in text
    assert "nine copies of its filter" in text and "only the patches at layer 1" in text
    assert text.count("nine copies") == 1  # under conv1 only
    assert "max-width: 100%" in text and "overflow-x: auto" in text and "@media (max-width: 640px)" in text
    assert '<div class="scroll"><table class="arch">' in text


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_report_folder_follows_the_umask(tmp_path, tiny, mask):
    old = os.umask(mask)
    try:
        index = _write(tmp_path, tiny, layers=("conv1",), features_per_layer=1, n_examples=1)
    finally:
        os.umask(old)
    assert os.stat(os.path.dirname(index)).st_mode & 0o777 == 0o777 & ~mask
    assert os.stat(os.path.join(os.path.dirname(index), "img")).st_mode & 0o777 == 0o777 & ~mask


def test_report_names_predictions_with_the_model_classes(tmp_path, tiny):
    net, dataset, mean, transform = tiny
    names = [f"m{k}" for k in range(10)]
    index = report.write_report(tmp_path / "r", net, dataset, transform, mean, layers=("conv1",),
                                features_per_layer=1, n_images=20, batch_size=8, progress=False, n_examples=2,
                                model_classes=names)
    text = open(index, encoding="utf-8").read()
    assert "the model predicts m" in text
    assert any(f"(a {c} image)" in text for c in synthetic.CLASSES)
