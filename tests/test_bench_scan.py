"""bench/scan.py: its JPEGs are photo-sized and made once, and its ImageNet estimate is the
arithmetic it states (the timings themselves are never checked in tests)."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="module")
def scan():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("bench_scan", BENCH / "scan.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


def test_the_images_are_500x375_jpegs_made_once(scan, tmp_path):
    root, seconds = scan.make_images(tmp_path / "imgs", 3, processes=1)
    files = sorted(root.glob("*/*.jpg"))
    assert len(files) == 3 and seconds > 0
    with Image.open(files[0]) as im:
        assert im.format == "JPEG" and im.size == (500, 375)
        pixels = np.asarray(im)
    assert pixels.std() > 5  # not a flat picture
    assert json.loads((root / "complete.json").read_text())["images"] == 3
    assert scan.make_images(root, 3) == (root, 0.0)  # a finished folder is reused


def test_the_imagenet_estimate_is_the_stated_arithmetic(scan):
    rows = [dict(task="decode 224 (1 thread)", images_per_s=50.0)]
    est = scan.imagenet_estimate(rows, {1: {"images_per_s": 25.0}})
    assert est["core_seconds_per_image"] == pytest.approx(1 / 25 + 1 / 50)
    assert est["decode_share"] == pytest.approx(1 / 3)
    hours = {s["cores"]: s["hours"] for s in est["setups"]}
    assert hours[2] == pytest.approx(1.3e6 * 0.06 / 2 / 3600)
    assert hours[16] == pytest.approx(hours[2] / 8) and hours[160] == pytest.approx(hours[2] / 80)
