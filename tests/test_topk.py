"""zfraw.analysis.topk: the store's merge order and the public streaming it is built on."""
import numpy as np
import pytest

from zfraw import data, visualize
from zfraw.analysis import topk


def test_store_keeps_the_k_best_by_value_then_index():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n, c, k = int(rng.integers(1, 40)), int(rng.integers(1, 6)), int(rng.integers(1, 10))
        val = rng.integers(0, 5, size=(n, c)).astype(np.float64)  # many ties
        loc = rng.integers(0, 100, size=(n, c))
        store = topk.TopK(k)
        bounds = np.sort(rng.integers(0, n + 1, size=3))
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, n]):
            if b > a:
                store.add(val[a:b], np.arange(a, b), loc[a:b])
        for f in range(c):
            want = sorted(range(n), key=lambda i: (-val[i, f], i))[:k]
            assert store.idx[f].tolist() == want
            assert store.loc[f].tolist() == loc[want, f].tolist()


def test_nan_ranks_last_and_is_not_reported():
    store = topk.TopK(3)
    store.add(np.array([[np.nan], [1.0]]), [0, 1], np.zeros((2, 1), np.int64))
    assert [r.index for r in store.records(0, 1)] == [1]


def test_visualize_reexports_the_scan():
    assert visualize.scan_layers is topk.scan_layers
    assert visualize.top_activations is topk.top_activations
    assert visualize.Activation is topk.Activation


def test_stream_gives_true_indices_of_a_subset_and_skips_bad_items():
    images = np.random.default_rng(1).integers(0, 256, size=(7, 4, 4, 3), dtype=np.uint8)

    class Flaky(data.ArrayDataset):
        skip_bad = True

        def __getitem__(self, i):
            if i == 3:
                raise data.DataError("cannot read image 'three.jpg'")
            return super().__getitem__(i)

    ds = Flaky(images, np.zeros(7, np.int64))
    with pytest.warns(UserWarning, match="three.jpg"):
        got = list(data.stream(ds, 2, indices=[6, 3, 1, 0]))
    assert [idx.tolist() for _, idx in got] == [[6], [1, 0]]
    np.testing.assert_array_equal(got[1][0][0], data.to_chw_float(images[1]))
    assert [idx.tolist() for _, idx in data.stream(ds, 3, limit=2, skip_bad=False)] == [[0, 1]]
    with pytest.raises(ValueError, match="batch_size"):
        list(data.stream(ds, 0))
