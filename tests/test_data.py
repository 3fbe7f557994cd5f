"""Loading images with Pillow, ImageFolder, the paper's preprocessing, and batches."""
import os
import warnings
import weakref

import numpy as np
import pytest
from PIL import Image

from zfraw import data as D
from zfraw import synthetic as S


def _coords(h, w):
    """An image whose pixel (i, j) is (i, j, 7): crops and flips can be read off it."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[..., 0] = np.arange(h)[:, None]
    img[..., 1] = np.arange(w)[None, :]
    img[..., 2] = 7
    return img


def _random_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- load_image
def test_load_png_is_exact(tmp_path, rng):
    for h, w in [(5, 9), (17, 4)]:
        img = _random_image(rng, h, w)
        p = tmp_path / f"x{h}.png"
        Image.fromarray(img).save(p)
        out = D.load_image(p)
        assert out.dtype == np.uint8 and out.flags.writeable
        assert np.array_equal(out, img)


def test_load_jpeg_is_close(tmp_path, rng):
    img = np.repeat(np.repeat(_random_image(rng, 4, 6), 8, axis=0), 8, axis=1)   # smooth-ish blocks
    p = tmp_path / "x.JPG"
    Image.fromarray(img).save(p, quality=95, subsampling=0)
    out = D.load_image(p)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).mean() < 3


def test_load_grayscale_palette_and_16_bit(tmp_path, rng):
    g = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    assert np.array_equal(D.load_image(tmp_path / "g.png"), np.repeat(g[..., None], 3, axis=2))

    rgb = _random_image(rng, 6, 5)
    Image.fromarray(rgb).quantize(16).save(tmp_path / "p.png")
    pal = Image.open(tmp_path / "p.png")
    assert pal.mode == "P"
    assert np.array_equal(D.load_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))

    g16 = rng.integers(0, 65536, size=(4, 3)).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    want = np.round(g16 / 257.0).astype(np.uint8)
    assert np.array_equal(D.load_image(tmp_path / "g16.png"), np.repeat(want[..., None], 3, axis=2))


def test_load_rgba_composites_over_background(tmp_path):
    rgba = np.array([[[200, 100, 0, 255], [200, 100, 0, 0], [200, 100, 50, 102]]], dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    white = D.load_image(tmp_path / "a.png")
    # out = a c + (1 - a) bg with a = alpha / 255; alpha 102 -> a = 0.4
    assert np.array_equal(white[0, 0], [200, 100, 0])
    assert np.array_equal(white[0, 1], [255, 255, 255])
    assert np.abs(white[0, 2].astype(int) - [0.4 * 200 + 0.6 * 255, 0.4 * 100 + 0.6 * 255,
                                             0.4 * 50 + 0.6 * 255]).max() <= 1
    black = D.load_image(tmp_path / "a.png", background=(0, 0, 0))
    assert np.array_equal(black[0, 1], [0, 0, 0])
    assert np.abs(black[0, 2].astype(int) - [80, 40, 20]).max() <= 1


def test_load_applies_exif_orientation(tmp_path, rng):
    img = _random_image(rng, 3, 5)
    exif = Image.Exif()
    exif[0x0112] = 6                       # "rotate 90 degrees clockwise to display"
    Image.fromarray(img).save(tmp_path / "r.png", exif=exif)
    out = D.load_image(tmp_path / "r.png")
    assert out.shape == (5, 3, 3)
    assert np.array_equal(out, np.rot90(img, k=-1))


def test_load_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(D.DataError, match="nope.jpg"):
        D.load_image(missing)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(D.DataError, match="junk.png"):
        D.load_image(junk)
    good = tmp_path / "cut.jpg"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(good)
    good.write_bytes(good.read_bytes()[:200])                       # truncated
    with pytest.raises(D.DataError, match="cut.jpg") as info:
        D.load_image(good)
    assert isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------- ImageFolder
def _tree(root, rng, bad=True):
    """root/cat: a.jpg, b.png (gray), sub/c.png (RGBA); root/dog: d.png, E.JPG, notes.txt, .h.png;
    root/emu: empty; root/.git: ignored; bad.jpg in dog if asked."""
    (root / "cat" / "sub").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "emu").mkdir()
    (root / ".git").mkdir()
    Image.fromarray(_random_image(rng, 10, 12)).save(root / "cat" / "a.jpg")
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L").save(root / "cat" / "b.png")
    Image.fromarray(rng.integers(0, 256, (9, 7, 4), dtype=np.uint8), "RGBA").save(root / "cat" / "sub" / "c.png")
    Image.fromarray(_random_image(rng, 6, 6)).save(root / "dog" / "d.png")
    Image.fromarray(_random_image(rng, 7, 5)).save(root / "dog" / "E.JPG")
    Image.fromarray(_random_image(rng, 7, 5)).save(root / "dog" / ".h.png")
    Image.fromarray(_random_image(rng, 7, 5)).save(root / ".git" / "x.png")
    (root / "dog" / "notes.txt").write_text("not an image")
    if bad:
        (root / "dog" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")


def test_image_folder_layout(tmp_path, rng):
    _tree(tmp_path, rng)
    with pytest.warns(UserWarning, match="emu"):
        ds = D.ImageFolder(tmp_path)
    assert ds.classes == ["cat", "dog", "emu"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "emu": 2}
    rel = [os.path.relpath(p, tmp_path).replace(os.sep, "/") for p in ds.paths]
    assert rel == ["cat/a.jpg", "cat/b.png", "cat/sub/c.png", "dog/E.JPG", "dog/bad.jpg", "dog/d.png"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.labels.dtype == np.int64
    assert len(ds) == 6
    shapes = {(0): (10, 12, 3), 1: (8, 8, 3), 2: (9, 7, 3), 3: (7, 5, 3), 5: (6, 6, 3)}
    for i, shape in shapes.items():
        img, label = ds[i]
        assert img.shape == shape and img.dtype == np.uint8 and label == ds.labels[i]
    with pytest.raises(D.DataError, match="bad.jpg"):
        ds[4]
    with pytest.raises(D.DataError, match="bad.jpg"):
        list(ds)                                           # skip_bad=False: iteration raises too
    with pytest.warns(UserWarning, match="emu"):
        only_png = D.ImageFolder(tmp_path, extensions=(".PNG",))
    assert [os.path.basename(p) for p in only_png.paths] == ["b.png", "c.png", "d.png"]


def test_image_folder_skip_bad_warns_and_skips(tmp_path, rng):
    _tree(tmp_path, rng)
    with pytest.warns(UserWarning):
        ds = D.ImageFolder(tmp_path, skip_bad=True)
    with pytest.warns(UserWarning, match="bad.jpg"):
        items = list(ds)
    assert [label for _, label in items] == [0, 0, 0, 1, 1]
    with pytest.warns(UserWarning, match="bad.jpg"):
        got = list(D.batches(ds, 2, D.eval_transform(5, 5)))
    assert [len(y) for _, y in got] == [2, 2, 1]            # the batch is filled from the next item
    assert np.concatenate([y for _, y in got]).tolist() == [0, 0, 0, 1, 1]
    with pytest.warns(UserWarning, match="bad.jpg"):
        m = D.compute_mean(ds, size=5)
    assert m.shape == (3,)


def test_image_folder_errors(tmp_path, rng):
    with pytest.raises(D.DataError, match="not a folder"):
        D.ImageFolder(tmp_path / "missing")
    Image.fromarray(_random_image(rng, 4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(D.DataError, match="no class folders"):
        D.ImageFolder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("x")
    with pytest.raises(D.DataError, match="no images"):
        D.ImageFolder(tmp_path)


# ----------------------------------------------------------------------------- preprocessing
def test_center_crop_coordinates():
    img = _coords(5, 8)
    c = D.center_crop(img, 3)                   # top = (5-3)//2 = 1, left = (8-3)//2 = 2
    assert c.shape == (3, 3, 3)
    assert (c[0, 0, 0], c[0, 0, 1]) == (1, 2) and (c[-1, -1, 0], c[-1, -1, 1]) == (3, 4)
    c = D.center_crop(img, (2, 5))              # top = 3//2 = 1, left = 3//2 = 1
    assert (c[0, 0, 0], c[0, 0, 1]) == (1, 1) and c.shape == (2, 5, 3)
    assert np.array_equal(D.center_crop(img, (5, 8)), img)
    with pytest.raises(ValueError, match="size"):
        D.center_crop(img, 6)


def test_random_crop_covers_every_position_uniformly():
    img = _coords(6, 5)
    rng = np.random.default_rng(3)
    counts = np.zeros((3, 3), dtype=int)                  # 6-4+1 tops x 5-3+1 lefts
    for _ in range(900):
        c = D.random_crop(img, (4, 3), rng)
        top, left = int(c[0, 0, 0]), int(c[0, 0, 1])
        assert np.array_equal(c, img[top:top + 4, left:left + 3])
        counts[top, left] += 1
    assert counts.min() > 60 and counts.max() < 140          # 100 expected each
    a = [D.random_crop(img, 2, np.random.default_rng(9))[0, 0].tolist() for _ in range(2)]
    assert a[0] == a[1]
    with pytest.raises(TypeError, match="rng"):
        D.random_crop(img, 2, 0)


def test_hflip_and_pad_by_hand():
    img = np.array([[[1, 2, 3], [4, 5, 6], [7, 8, 9]]], dtype=np.uint8)       # (1, 3, 3)
    assert D.hflip(img)[0, :, 0].tolist() == [7, 4, 1]
    assert np.array_equal(D.hflip(D.hflip(img)), img)
    row = np.array([[[10] * 3, [20] * 3, [30] * 3]], dtype=np.uint8)
    big = np.repeat(row, 3, axis=0)                                            # (3, 3, 3)
    assert D.pad(big, 1, "reflect")[1, :, 0].tolist() == [20, 10, 20, 30, 20]
    assert D.pad(big, 2, "edge")[2, :, 0].tolist() == [10, 10, 10, 20, 30, 30, 30]
    assert D.pad(big, 1, "constant")[1, :, 0].tolist() == [0, 10, 20, 30, 0]
    assert D.pad(big, 1).shape == (5, 5, 3)


def test_ten_crop_order():
    img = _coords(4, 5)
    crops = D.ten_crop(img, 2)
    assert crops.shape == (10, 2, 2, 3) and crops.dtype == np.uint8
    # corners then centre (top = (4-2)//2 = 1, left = (5-2)//2 = 1)
    tl = [(int(c[0, 0, 0]), int(c[0, 0, 1])) for c in crops[:5]]
    assert tl == [(0, 0), (0, 3), (2, 0), (2, 3), (1, 1)]
    for k in range(5):
        top, left = tl[k]
        assert np.array_equal(crops[k], img[top:top + 2, left:left + 2])
        assert np.array_equal(crops[k + 5], crops[k][:, ::-1])
    assert D.ten_crop(img, (3, 4)).shape == (10, 3, 4, 3)


def test_resize_shorter_shapes_and_values(rng):
    assert D.resize_shorter(_random_image(rng, 40, 60), 20).shape == (20, 30, 3)
    assert D.resize_shorter(_random_image(rng, 60, 40), 20).shape == (30, 20, 3)
    assert D.resize_shorter(_random_image(rng, 3, 7), 2).shape == (2, 5, 3)      # round(7 * 2 / 3) = 5
    assert D.resize_shorter(_random_image(rng, 10, 7), 14).shape == (20, 14, 3)
    same = _random_image(rng, 8, 12)
    assert D.resize_shorter(same, 8) is same
    flat = np.full((30, 45, 3), (12, 130, 250), np.uint8)
    assert np.array_equal(np.unique(D.resize_shorter(flat, 16).reshape(-1, 3), axis=0), [[12, 130, 250]])


def test_to_chw_float_by_hand():
    img = np.array([[[0, 51, 255], [102, 204, 153]]], dtype=np.uint8)            # (1, 2, 3)
    x = D.to_chw_float(img)
    assert x.dtype == np.float32 and x.shape == (3, 1, 2) and x.flags.c_contiguous
    np.testing.assert_allclose(x[:, 0, 0], [0.0, 0.2, 1.0], rtol=1e-6)
    np.testing.assert_allclose(x[:, 0, 1], [0.4, 0.8, 0.6], rtol=1e-6)
    per_channel = D.to_chw_float(img, mean=[0.5, 0.25, 0.125])
    np.testing.assert_allclose(per_channel[:, 0, 1], [0.4 - 0.5, 0.8 - 0.25, 0.6 - 0.125], atol=1e-6)
    m = np.array([[[0.1, 0.2]], [[0.3, 0.4]], [[0.5, 0.6]]], dtype=np.float32)  # (3, 1, 2)
    per_pixel = D.to_chw_float(img, mean=m)
    np.testing.assert_allclose(per_pixel[:, 0, 0], [0.0 - 0.1, 0.2 - 0.3, 1.0 - 0.5], atol=1e-6)
    np.testing.assert_allclose(per_pixel[:, 0, 1], [0.4 - 0.2, 0.8 - 0.4, 0.6 - 0.6], atol=1e-6)
    np.testing.assert_array_equal(D.to_chw_float(img, mean=m.transpose(1, 2, 0)), per_pixel)
    with pytest.raises(ValueError, match="mean"):
        D.to_chw_float(img, mean=np.zeros((3, 2, 1)))
    with pytest.raises(TypeError, match="uint8"):
        D.to_chw_float(img.astype(np.float32))


def test_to_chw_float_against_loops(rng):
    for h, w in [(3, 4), (7, 2), (1, 1)]:
        img = _random_image(rng, h, w)
        mean = rng.random((3, h, w)).astype(np.float32)
        x = D.to_chw_float(img, mean)
        ref = np.empty((3, h, w))
        for c in range(3):
            for i in range(h):
                for j in range(w):
                    ref[c, i, j] = img[i, j, c] / 255.0 - mean[c, i, j]
        assert np.linalg.norm(x - ref) / np.linalg.norm(ref) < 1e-6


def test_compute_mean_per_channel_and_per_pixel(rng):
    imgs = rng.integers(0, 256, size=(7, 5, 6, 3), dtype=np.uint8)
    ds = D.ArrayDataset(imgs, np.arange(7) % 2)
    m = D.compute_mean(ds)
    assert m.shape == (3,) and m.dtype == np.float32
    np.testing.assert_allclose(m, imgs.reshape(-1, 3).mean(axis=0) / 255, rtol=1e-6)
    mp = D.compute_mean(ds, per_pixel=True)
    assert mp.shape == (3, 5, 6)
    np.testing.assert_allclose(mp, imgs.mean(axis=0).transpose(2, 0, 1) / 255, rtol=1e-6)
    # images of different sizes: per channel weights every pixel; per pixel needs a size
    mixed = [(_random_image(rng, 4, 6), 0), (_random_image(rng, 8, 8), 1)]
    want = np.concatenate([mixed[0][0].reshape(-1, 3), mixed[1][0].reshape(-1, 3)]).mean(axis=0) / 255
    np.testing.assert_allclose(D.compute_mean(mixed), want, rtol=1e-6)
    with pytest.raises(ValueError, match="size"):
        D.compute_mean(mixed, per_pixel=True)
    sized = D.compute_mean(mixed, per_pixel=True, size=4)
    crops = [D.center_crop(D.resize_shorter(img, 4), 4) for img, _ in mixed]
    np.testing.assert_allclose(sized, np.mean(crops, axis=0).transpose(2, 0, 1) / 255, rtol=1e-6)


def test_eval_transform_crops_centre_and_per_pixel_mean(rng):
    img = _random_image(rng, 64, 64)
    x = D.eval_transform(64, 56)(img)
    np.testing.assert_array_equal(x, D.to_chw_float(img[4:60, 4:60]))
    same = D.eval_transform(64, 64, mean=[0.5, 0.5, 0.5])(img)
    np.testing.assert_allclose(same, img.transpose(2, 0, 1) / 255 - 0.5, atol=1e-6)
    # a per-pixel mean at the full size is centre-cropped to the crop, as Caffe does
    mean = D.to_chw_float(img)
    np.testing.assert_allclose(D.eval_transform(64, 56, mean=mean)(img), 0.0, atol=1e-7)
    np.testing.assert_allclose(D.eval_transform(64, 56, mean=mean[:, 4:60, 4:60])(img), 0.0, atol=1e-7)
    with pytest.raises(ValueError, match="mean"):
        D.eval_transform(64, 56, mean=np.zeros((3, 50, 50)))
    # a non-square image: shorter side to 20, the central 20x20 square, then its centre 16
    wide = _random_image(rng, 40, 80)
    region = D.center_crop(D.resize_shorter(wide, 20), 20)
    np.testing.assert_array_equal(D.eval_transform(20, 16)(wide), D.to_chw_float(region[2:18, 2:18]))
    with pytest.raises(ValueError, match="crop"):
        D.eval_transform(32, 40)


def test_train_transform_is_a_random_crop_and_flip(rng):
    img = _coords(64, 64)
    t = D.train_transform(64, 56, rng=np.random.default_rng(5))
    flips = 0
    for _ in range(40):
        x = t(img)
        assert x.shape == (3, 56, 56) and x.dtype == np.float32
        back = np.round(x.transpose(1, 2, 0) * 255).astype(np.uint8)
        flipped = back[0, 0, 1] > back[0, -1, 1]
        crop = back[:, ::-1] if flipped else back
        top, left = int(crop[0, 0, 0]), int(crop[0, 0, 1])
        assert top <= 8 and left <= 8
        assert np.array_equal(crop, img[top:top + 56, left:left + 56])
        flips += flipped
    assert 8 < flips < 32
    a = D.train_transform(64, 56, rng=1)(img)
    b = D.train_transform(64, 56, rng=1)(img)
    np.testing.assert_array_equal(a, b)
    # size == crop: no crop freedom; padding gives translation by up to 4 pixels
    same = D.train_transform(64, 64, flip=False, rng=0)(img)
    np.testing.assert_array_equal(same, D.to_chw_float(img))
    shifts = set()
    t = D.train_transform(64, 64, flip=False, pad_width=4, pad_mode="constant", rng=2)
    for _ in range(30):
        back = np.round(t(img).transpose(1, 2, 0) * 255).astype(np.uint8)
        assert back.shape == (64, 64, 3)
        shifts.add(tuple(int(v) for v in np.argwhere(back[..., 2] == 7)[0]))      # first real pixel
    assert len(shifts) > 5 and all(0 <= s <= 8 for pair in shifts for s in pair)


# ----------------------------------------------------------------------------- batches
class Counting:
    """A dataset that counts accesses and how many of the images it handed out are still alive."""

    def __init__(self, n, shape=(6, 6)):
        self.n, self.shape = n, shape
        self.calls = 0
        self.live = 0

    def __len__(self):
        return self.n

    def _died(self):
        self.live -= 1

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        self.calls += 1
        img = np.full(self.shape + (3,), i % 256, dtype=np.uint8)
        self.live += 1
        weakref.finalize(img, self._died)
        return img, i


def test_batches_load_one_batch_at_a_time():
    ds = Counting(23)
    it = D.batches(ds, 5)
    assert len(it) == 5
    seen = []
    for b, (x, y) in enumerate(it):
        assert ds.calls == min(5 * (b + 1), 23), "items fetched ahead of the batch"
        assert ds.live <= 5, f"{ds.live} images alive at once"
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(y), 3, 6, 6)
        np.testing.assert_allclose(x[:, 0, 0, 0], (y % 256) / 255, rtol=1e-6)
        seen += y.tolist()
    assert seen == list(range(23))
    assert ds.calls == 23


def test_batches_drop_last_and_len():
    ds = Counting(23)
    it = D.batches(ds, 5, drop_last=True)
    assert len(it) == 4
    assert [len(y) for _, y in it] == [5, 5, 5, 5]
    assert len(D.batches(ds, 23)) == 1 and len(D.batches(ds, 24, drop_last=True)) == 0
    assert list(D.batches(ds, 24, drop_last=True)) == []


def test_batches_shuffle_is_reproducible():
    ds = Counting(17)

    def passes(rng, n=2):
        it = D.batches(ds, 4, shuffle=True, rng=rng)
        return [np.concatenate([y for _, y in it]).tolist() for _ in range(n)]

    a, b = passes(np.random.default_rng(42)), passes(np.random.default_rng(42))
    assert a == b
    assert sorted(a[0]) == list(range(17)) and sorted(a[1]) == list(range(17))
    assert a[0] != a[1], "each pass should draw a new order"
    assert a[0] != list(range(17))
    assert passes(42) == a                     # an int seeds the same generator
    assert passes(43) != a


def test_batches_over_all_three_datasets(tmp_path, rng):
    syn = S.SyntheticDataset(1, seed=0, size=32)
    arr_imgs, arr_labels = S.make_dataset(1, seed=0, size=32)
    arr = D.ArrayDataset(arr_imgs, arr_labels, classes=S.CLASSES)
    for k in range(3):
        (tmp_path / f"c{k}").mkdir()
        for j in range(2):
            Image.fromarray(_random_image(rng, 40, 30 + 5 * j)).save(tmp_path / f"c{k}" / f"{j}.png")
    folder = D.ImageFolder(tmp_path)
    t = D.eval_transform(32, 28, mean=[0.5, 0.4, 0.3])
    xs, ys = {}, {}
    for name, ds in [("syn", syn), ("arr", arr), ("folder", folder)]:
        out = list(D.batches(ds, 4, t))
        xs[name] = np.concatenate([x for x, _ in out])
        ys[name] = np.concatenate([y for _, y in out])
        assert xs[name].shape == (len(ds), 3, 28, 28) and xs[name].dtype == np.float32
        for i in (0, len(ds) - 1):
            np.testing.assert_array_equal(xs[name][i], t(ds[i][0]))
    np.testing.assert_array_equal(xs["syn"], xs["arr"])
    np.testing.assert_array_equal(ys["syn"], ys["arr"])
    assert ys["folder"].tolist() == [0, 0, 1, 1, 2, 2]


def test_batches_errors():
    ds = Counting(6)
    with pytest.raises(ValueError, match="batch_size"):
        D.batches(ds, 0)
    with pytest.raises(TypeError, match="transform"):
        D.batches(ds, 2, transform="centre")
    shapes = iter([(3, 4, 4), (3, 5, 5)] * 3)
    bad = D.batches(ds, 3, transform=lambda img: np.zeros(next(shapes), np.float32))
    with pytest.raises(ValueError, match="item 1"):
        list(bad)


def test_array_dataset_checks(rng):
    imgs = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    ds = D.ArrayDataset(imgs, [0, 2, 1, 2])
    assert ds.classes == ["0", "1", "2"] and len(ds) == 4
    img, label = ds[-1]
    assert np.array_equal(img, imgs[3]) and label == 2 and isinstance(label, int)
    with pytest.raises(IndexError):
        ds[4]
    with pytest.raises(ValueError, match="labels"):
        D.ArrayDataset(imgs, [0, 1])
    with pytest.raises(TypeError, match="images"):
        D.ArrayDataset(imgs.astype(np.float32), [0, 1, 2, 3])
    with pytest.raises(ValueError, match="images"):
        D.ArrayDataset(imgs[..., 0], [0, 1, 2, 3])


def test_no_warning_without_bad_files(tmp_path, rng):
    (tmp_path / "only").mkdir()
    Image.fromarray(_random_image(rng, 4, 4)).save(tmp_path / "only" / "x.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = D.ImageFolder(tmp_path, skip_bad=True)
        assert len(list(D.batches(ds, 1))) == 1


@pytest.mark.parametrize("pad_width, pad_mode", [(0, "reflect"), (3, "reflect"), (2, "edge"), (2, "symmetric")])
def test_train_transform_subtracts_the_mean_under_the_crop(rng, pad_width, pad_mode):
    """With the region's own picture as the per-pixel mean every crop, flip and padding gives zeros."""
    img = _random_image(rng, 24, 24)
    mean = D.compute_mean(D.ArrayDataset(img[None], [0]), per_pixel=True)
    np.testing.assert_allclose(mean, D.to_chw_float(img), atol=1e-7)
    t = D.train_transform(24, 20, mean=mean, rng=rng, pad_width=pad_width, pad_mode=pad_mode)
    for _ in range(10):
        np.testing.assert_allclose(t(img), 0.0, atol=1e-6)
    other = _random_image(rng, 24, 24)
    assert np.abs(t(other)).max() > 0.1
    per_channel = D.train_transform(24, 20, mean=mean.mean(axis=(1, 2)), rng=0, flip=False)(img)
    want = D.train_transform(24, 20, rng=0, flip=False)(img) - mean.mean(axis=(1, 2))[:, None, None]
    np.testing.assert_allclose(per_channel, want, atol=1e-6)
