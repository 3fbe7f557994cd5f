"""The procedural dataset: determinism, balance, variety, and that colour alone does not give the class."""
import numpy as np
import pytest

from zfraw import synthetic as S

K = len(S.CLASSES)


@pytest.fixture(scope="module")
def train_set():
    """60 images per class of the train split and 30 per class of the val split."""
    return S.make_dataset(60, seed=11), S.make_dataset(30, seed=11, split="val")


# ----------------------------------------------------------------------------- classes
def test_classes_are_named_and_documented():
    assert len(S.CLASSES) == 10 and len(set(S.CLASSES)) == 10
    assert list(S.DESCRIPTIONS) == S.CLASSES
    for name in S.CLASSES:
        d = S.DESCRIPTIONS[name]
        assert isinstance(d, str) and d.strip() and "\n" not in d
        assert f"``{name}``" in S.__doc__, f"class {name} missing from the module docstring table"


# ----------------------------------------------------------------------------- determinism
def test_same_seed_gives_identical_bytes():
    a, la = S.make_dataset(3, seed=5)
    b, lb = S.make_dataset(3, seed=5)
    assert a.tobytes() == b.tobytes()
    assert np.array_equal(la, lb)


def _shared_images(a, b):
    """Number of images of a that also occur in b."""
    seen = {img.tobytes() for img in b}
    return sum(img.tobytes() in seen for img in a)


@pytest.mark.parametrize("other", [dict(seed=6), dict(split="val"), dict(split="test")])
def test_other_seed_or_split_gives_other_images(other):
    base, _ = S.make_dataset(2, seed=5)
    kw = dict(seed=5, split="train")
    kw.update(other)
    imgs, _ = S.make_dataset(2, **kw)
    assert _shared_images(imgs, base) == 0


def test_splits_are_disjoint_streams():
    tr, _ = S.make_dataset(2, seed=0, split="train")
    va, _ = S.make_dataset(2, seed=0, split="val")
    te, _ = S.make_dataset(2, seed=0, split="test")
    assert _shared_images(tr, va) == _shared_images(tr, te) == _shared_images(va, te) == 0


def test_image_i_does_not_depend_on_n_per_class():
    small, ls = S.make_dataset(2, seed=3)
    large, ll = S.make_dataset(4, seed=3)
    assert np.array_equal(large[:len(small)], small)
    assert np.array_equal(ll[:len(ls)], ls)
    lazy = S.SyntheticDataset(500, seed=3)            # far larger, still lazy
    for i in (0, 7, 19):
        img, label = lazy[i]
        assert np.array_equal(img, small[i]) and label == ls[i]


def test_lazy_dataset_matches_make_dataset():
    imgs, labels = S.make_dataset(2, seed=9, size=32, split="test")
    ds = S.SyntheticDataset(2, seed=9, size=32, split="test")
    assert len(ds) == 20 and ds.classes == S.CLASSES
    assert np.array_equal(ds.labels, labels)
    for i, (img, label) in enumerate(ds):
        assert img.dtype == np.uint8 and img.shape == (32, 32, 3)
        assert np.array_equal(img, imgs[i]) and label == labels[i] and isinstance(label, int)
    img, label = ds[-1]
    assert np.array_equal(img, imgs[-1]) and label == labels[-1]
    with pytest.raises(IndexError):
        ds[20]
    with pytest.raises(IndexError):
        ds[-21]
    with pytest.raises(TypeError):
        ds[1.5]


def test_render_is_a_function_of_the_generator_state():
    for label in range(K):
        a = S.render(label, np.random.default_rng(label + 100))
        b = S.render(S.CLASSES[label], np.random.default_rng(label + 100))
        assert np.array_equal(a, b)


# ----------------------------------------------------------------------------- shapes, balance, variety
@pytest.mark.parametrize("size", [16, 40, 64])
def test_shapes_and_dtypes(size):
    imgs, labels = S.make_dataset(1, seed=2, size=size)
    assert imgs.shape == (K, size, size, 3) and imgs.dtype == np.uint8
    assert labels.shape == (K,) and labels.dtype == np.int64


def test_classes_balanced_in_every_block_of_ten():
    ds = S.SyntheticDataset(40, seed=4)
    assert np.array_equal(np.bincount(ds.labels, minlength=K), np.full(K, 40))
    blocks = ds.labels.reshape(-1, K)
    assert all(np.array_equal(np.sort(b), np.arange(K)) for b in blocks)
    assert len({tuple(b) for b in blocks}) > 10, "blocks should be shuffled, not one fixed order"


def test_images_are_not_blank_and_all_differ(train_set):
    (imgs, labels), _ = train_set
    std = imgs.reshape(len(imgs), -1, 3).astype(np.float64).std(axis=1).max(axis=1)
    assert std.min() > 10.0, f"an image is nearly flat (max channel std {std.min():.1f})"
    assert len({img.tobytes() for img in imgs}) == len(imgs)
    for c in range(K):
        x = imgs[labels == c][:20].astype(np.int16)
        d = np.abs(x[:, None] - x[None]).mean(axis=(2, 3, 4))
        off = d[~np.eye(len(x), dtype=bool)]
        assert off.min() > 10.0, f"two images of {S.CLASSES[c]} are nearly the same"


# ----------------------------------------------------------------------------- separability
def _nearest_class_mean(ftr, ytr, fte, yte):
    mu = np.stack([ftr[ytr == c].mean(axis=0) for c in range(K)])
    d = ((fte[:, None, :] - mu[None]) ** 2).sum(axis=-1)
    return float((d.argmin(axis=1) == yte).mean())


def _ridge(ftr, ytr, fte, yte, lam=0.1):
    m, s = ftr.mean(axis=0), ftr.std(axis=0) + 1e-6
    a, b = (ftr - m) / s, (fte - m) / s
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ np.eye(K)[ytr])
    return float(((b @ w).argmax(axis=1) == yte).mean())


def _colour_histogram(imgs, bins=4):
    q = (imgs // (256 // bins)).reshape(len(imgs), -1, 3).astype(np.int64)
    idx = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    return np.stack([np.bincount(r, minlength=bins ** 3) for r in idx]) / idx.shape[1]


def _orientation_histograms(imgs, cells=4, bins=9):
    """A small HOG: gradient-magnitude-weighted orientation histograms on a cells x cells grid."""
    g = imgs.astype(np.float64).mean(axis=-1)
    gy, gx = np.gradient(g, axis=(1, 2))
    mag, ang = np.hypot(gx, gy), np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((ang / np.pi * bins).astype(np.int64), bins - 1)
    n, h, _ = g.shape
    c = h // cells
    cell = (np.arange(h) // c).clip(max=cells - 1)
    where = (cell[:, None] * cells + cell[None, :])[None] * bins + b         # (n, h, w) bin index
    f = np.stack([np.bincount(where[k].ravel(), mag[k].ravel(), cells * cells * bins) for k in range(n)])
    return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-9)


def test_colour_does_not_give_the_class_but_shape_does(train_set):
    (xtr, ytr), (xte, yte) = train_set
    chance = 1.0 / K
    flat = lambda x: x.reshape(len(x), -1).astype(np.float64)                 # noqa: E731
    mean_colour = lambda x: x.reshape(len(x), -1, 3).mean(axis=1)             # noqa: E731
    accs = {
        "raw pixels, nearest class mean": _nearest_class_mean(flat(xtr), ytr, flat(xte), yte),
        "mean colour, nearest class mean": _nearest_class_mean(mean_colour(xtr), ytr, mean_colour(xte), yte),
        "colour histogram, nearest class mean": _nearest_class_mean(
            _colour_histogram(xtr), ytr, _colour_histogram(xte), yte),
        "colour histogram, ridge": _ridge(_colour_histogram(xtr), ytr, _colour_histogram(xte), yte),
    }
    for what, acc in accs.items():
        assert acc < chance + 0.1, f"{what} gets {acc:.2f}: classes are separable without shape"
    shape_acc = _ridge(_orientation_histograms(xtr), ytr, _orientation_histograms(xte), yte)
    assert shape_acc > max(accs.values()) + 0.08, f"edge orientations get only {shape_acc:.2f} vs {accs}"


# ----------------------------------------------------------------------------- errors and the sheet
def test_bad_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="label"):
        S.render(10, rng)
    with pytest.raises(ValueError, match="label"):
        S.render("dog", rng)
    with pytest.raises(TypeError, match="label"):
        S.render(1.0, rng)
    with pytest.raises(TypeError, match="rng"):
        S.render(0, 123)
    with pytest.raises(ValueError, match="size"):
        S.render(0, rng, size=8)
    with pytest.raises(ValueError, match="split"):
        S.make_dataset(1, split="training")
    with pytest.raises(ValueError, match="seed"):
        S.SyntheticDataset(1, seed=-1)
    with pytest.raises(ValueError, match="n_per_class"):
        S.SyntheticDataset(0)


def test_contact_sheet_layout():
    imgs, labels = S.make_dataset(3, seed=1, size=32)
    plain = S.contact_sheet(imgs, ncols=10, pad=2)
    assert plain.size == (2 + 10 * 34, 2 + 3 * 34)
    assert np.array_equal(np.asarray(plain)[2:34, 2:34], imgs[0])
    by_class = S.contact_sheet(imgs, labels, ncols=3, pad=2)
    assert by_class.size[1] == 2 + K * 34
    first_face = imgs[np.flatnonzero(labels == 2)[0]]
    sheet = np.asarray(by_class)
    left = by_class.size[0] - 3 * 34
    assert np.array_equal(sheet[2 + 2 * 34:2 + 2 * 34 + 32, left:left + 32], first_face)
    with pytest.raises(ValueError, match="images"):
        S.contact_sheet(imgs[0])
