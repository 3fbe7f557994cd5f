"""zfraw.analysis.topk: shard scans as values -- exact, associative merges and atomic .npz files."""
import os
import warnings

import numpy as np
import pytest

from zfraw import data, nn
from zfraw.analysis import topk

LAYERS = ["conv1", "pool1", "fc"]


def tiny_net():
    return nn.Sequential([
        ("conv1", nn.Conv2d(3, 4, 3, 1, 1, seed=1, init_std="he")), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)), ("flat", nn.Flatten()), ("fc", nn.Linear(4 * 4 * 4, 5, seed=2)),
    ], input_shape=(3, 8, 8), name="tiny")


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(120, 8, 8, 3), dtype=np.uint8)
    images[40:50] = images[10]  # identical images: ties that only the index breaks
    images[60] = 0              # all-zero activations after the ReLU: more ties
    return data.ArrayDataset(images, np.zeros(len(images), np.int64))


@pytest.fixture(scope="module")
def whole(dataset):
    # batch_size=1 everywhere: a BLAS product's last bit can depend on the batch's size, so
    # comparisons between scans that batch differently would test BLAS, not the merge
    return topk.scan_layers(tiny_net(), dataset, LAYERS, k=6, batch_size=1)


def assert_same(result, whole):
    stores = result.layer_stores()
    assert list(stores) == list(whole)
    for lyr, (store, width) in whole.items():
        got, got_width = stores[lyr]
        assert got_width == width
        for name in ("val", "idx", "loc"):
            np.testing.assert_array_equal(getattr(got, name), getattr(store, name), err_msg=f"{lyr} {name}")


def random_shards(rng, n):
    cuts = np.sort(rng.choice(np.arange(1, n), size=min(n - 1, int(rng.integers(1, 8))), replace=False))
    order = rng.permutation(n) if rng.random() < 0.5 else np.arange(n)
    return [s for s in np.split(order, cuts) if len(s)]


def test_scan_of_all_indices_is_scan_layers(dataset, whole):
    result = topk.scan(tiny_net(), dataset, LAYERS, k=6, batch_size=1)
    assert result.n_images == len(dataset) and len(result.skipped) == 0
    assert_same(result, whole)


def test_merging_random_splits_in_random_orders_equals_the_whole_scan(dataset, whole):
    net, rng = tiny_net(), np.random.default_rng(3)
    for trial in range(6):
        parts = [topk.scan(net, dataset, LAYERS, k=6, batch_size=1, indices=s)
                 for s in random_shards(rng, len(dataset))]
        perm = rng.permutation(len(parts))
        flat = topk.merge([parts[j] for j in perm])
        assert_same(flat, whole)
        # any grouping: a left fold, a right fold, and a pairwise tree
        left = parts[perm[0]]
        for j in perm[1:]:
            left = left.merge(parts[j])
        right = parts[perm[-1]]
        for j in perm[-2::-1]:
            right = parts[j].merge(right)
        tree = list(parts)
        while len(tree) > 1:
            tree = [topk.merge(tree[i:i + 2]) for i in range(0, len(tree), 2)]
        for merged in (left, right, tree[0]):
            assert_same(merged, whole)
            np.testing.assert_array_equal(merged.covered, np.arange(len(dataset)))


def test_merge_against_a_brute_force_sort_with_ties():
    rng = np.random.default_rng(11)
    for trial in range(30):
        n, c, k = int(rng.integers(1, 60)), int(rng.integers(1, 5)), int(rng.integers(1, 8))
        val = rng.integers(0, 4, size=(n, c)).astype(np.float64)
        val[rng.random((n, c)) < 0.1] = np.nan
        loc = rng.integers(0, 50, size=(n, c))
        parts = []
        for s in random_shards(rng, n) if n > 1 else [np.arange(n)]:
            store = topk.TopK(k)
            store.add(val[s], s, loc[s])
            parts.append(topk.ScanResult(k, {"l": (store, 7)}, s))
        merged = topk.merge(parts[::-1]).layers["l"][0]
        for f in range(c):
            key = np.where(np.isnan(val[:, f]), -np.inf, val[:, f])
            want = sorted(range(n), key=lambda i: (-key[i], i))[:k]
            assert merged.idx[f].tolist() == want
            assert merged.loc[f].tolist() == loc[want, f].tolist()


def test_save_load_round_trip_is_exact_and_atomic(dataset, tmp_path, monkeypatch):
    part = topk.scan(tiny_net(), dataset, LAYERS, k=6, indices=np.arange(30, 70))
    path = part.save(tmp_path / "shard.npz")
    back = topk.ScanResult.load(path)
    assert back.k == 6 and list(back.layers) == LAYERS and back.n_images == 40
    np.testing.assert_array_equal(back.covered, np.arange(30, 70))
    for lyr in LAYERS:
        for name in ("val", "idx", "loc"):
            a, b = getattr(part.layers[lyr][0], name), getattr(back.layers[lyr][0], name)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
        assert back.layers[lyr][1] == part.layers[lyr][1]
    # a failing write leaves the old file as it was and no temporary file behind
    before = open(path, "rb").read()

    def broken_savez(fh, **arrays):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        part.save(path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["shard.npz"]


def test_load_refuses_other_files(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a zfraw scan result"):
        topk.ScanResult.load(tmp_path / "other.npz")


class Flaky(data.ArrayDataset):
    skip_bad = True

    def __getitem__(self, i):
        if i in (5, 6):
            raise data.DataError(f"cannot read image 'img{i}.jpg'")
        return super().__getitem__(i)


def test_empty_and_partly_unreadable_shards_merge(dataset, whole, tmp_path):
    flaky = Flaky(dataset.images, dataset.labels)
    net = tiny_net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = topk.scan(net, flaky, LAYERS, k=6, indices=[5, 6])
    assert ["img5.jpg" in str(w.message) for w in caught] == [True, False]
    assert "img6.jpg" in str(caught[1].message)
    assert bad.n_images == 0 and bad.skipped.tolist() == [5, 6]
    assert bad.layers["conv1"][0].val is None
    bad = topk.ScanResult.load(bad.save(tmp_path / "empty.npz"))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        rest = topk.scan(net, flaky, LAYERS, k=6, indices=np.r_[0:5, 7:len(dataset)])
    want = topk.scan_layers(net, data.ArrayDataset(dataset.images, dataset.labels), LAYERS, k=6,
                            indices=np.r_[0:5, 7:len(dataset)])
    merged = topk.merge([bad, rest])
    assert merged.skipped.tolist() == [5, 6] and merged.n_images == len(dataset) - 2
    assert_same(merged, want)
    with pytest.raises(ValueError, match="no \\(readable\\) images"):
        bad.layer_stores()


def test_merge_refuses_overlaps_and_mismatches(dataset):
    net = tiny_net()
    a = topk.scan(net, dataset, LAYERS, k=6, indices=np.arange(0, 20))
    with pytest.raises(ValueError, match="overlap"):
        topk.merge([a, topk.scan(net, dataset, LAYERS, k=6, indices=np.arange(10, 30))])
    with pytest.raises(ValueError, match="k=3"):
        topk.merge([a, topk.scan(net, dataset, LAYERS, k=3, indices=np.arange(20, 30))])
    with pytest.raises(TypeError, match="ScanResult"):
        topk.merge([a, {}])
    with pytest.raises(ValueError, match="only once"):
        topk.scan(net, dataset, LAYERS, indices=[1, 1])
