"""zfraw.distributed: the top-k scan and per-image maps on a Dask LocalCluster (2 processes).

One cluster serves the whole module (started and closed by a module-scoped
fixture).  Every result is compared with the single-process computation on the
same images: the scan's values, image ids and locations, the top-9 pictures,
and a per-image forward.
"""
import contextlib
import os
import sys

import numpy as np
import pytest
from PIL import Image

import zfraw
from zfraw import cli, data, nn, visualize
from zfraw.analysis import topk

dd = pytest.importorskip("dask.distributed")
import cloudpickle  # noqa: E402  (comes with dask)
import threadpoolctl  # noqa: E402  (in the test extra)

from zfraw import distributed  # noqa: E402

# the helper classes below travel to the workers by value (the workers need not import this file)
cloudpickle.register_pickle_by_value(sys.modules[__name__])

SIDE = 16
LAYERS = ["conv1", "conv2", "fc"]
N_IMAGES = 240
BATCH = 16


def tiny_net():
    return nn.Sequential([
        ("conv1", nn.Conv2d(3, 6, 3, 1, 1, seed=1, init_std="he")), ("relu1", nn.ReLU()),
        ("pool1", nn.MaxPool2d(2)),
        ("conv2", nn.Conv2d(6, 8, 3, 1, 1, seed=2, init_std="he")), ("relu2", nn.ReLU()),
        ("pool2", nn.MaxPool2d(2)), ("flat", nn.Flatten()), ("fc", nn.Linear(8 * 4 * 4, 5, seed=3)),
    ], input_shape=(3, SIDE, SIDE), name="tiny")


@pytest.fixture(scope="module")
def client():
    import warnings

    with warnings.catch_warnings():  # another session's cluster may hold Dask's default HTTP port
        warnings.filterwarnings("ignore", message="Port .* is already in use")
        local = dd.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    with local, dd.Client(local) as c:
        yield c


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """N_IMAGES procedural images (blobs and stripes) in 3 class folders, as PNG files."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for i in range(N_IMAGES):
        cls = root / f"class{i % 3}"
        cls.mkdir(exist_ok=True)
        cy, cx, r = rng.uniform(0, SIDE, 2).tolist() + [rng.uniform(2, 6)]
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r)[:, :, None]
        stripes = (np.sin(xx * rng.uniform(0.3, 2) + yy * rng.uniform(-1, 1)) > 0)[:, :, None]
        img = np.where(blob, rng.integers(0, 256, 3), np.where(stripes, rng.integers(0, 256, 3), 40))
        Image.fromarray(img.astype(np.uint8)).save(cls / f"img{i:04d}.png")
    return str(root)


@pytest.fixture(scope="module")
def transform():
    return data.eval_transform(SIDE, SIDE, mean=[0.4, 0.5, 0.6])


@contextlib.contextmanager
def one_thread():
    """Compute as a Dask worker does, on one thread: the conv tile planner sizes tiles from the
    thread count (zfraw.functional.conv_tiles), and float32 GEMM round-off depends on the tile."""
    saved_env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # what zfraw.backend.cpu_threads reads for the numpy backend
    saved_numba = None
    if zfraw.get_backend().name == "numba":
        import numba

        saved_numba = numba.get_num_threads()
        numba.set_num_threads(1)
    try:
        with threadpoolctl.threadpool_limits(1):  # OpenBLAS, as Dask's OPENBLAS_NUM_THREADS=1 does for workers
            yield
    finally:
        if saved_env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved_env
        if saved_numba is not None:
            import numba

            numba.set_num_threads(saved_numba)


@pytest.fixture(scope="module")
def single(folder, transform):
    """The single-process scan (on one thread, as each worker runs), the reference for everything else."""
    with one_thread():
        return topk.scan_layers(tiny_net(), data.ImageFolder(folder, skip_bad=True), LAYERS, k=9,
                                batch_size=BATCH, transform=transform)


def assert_same_topk(stores, want):
    assert list(stores) == list(want)
    for lyr, (store, width) in want.items():
        got, got_width = stores[lyr]
        assert got_width == width
        for name in ("val", "idx", "loc"):
            np.testing.assert_array_equal(getattr(got, name), getattr(store, name), err_msg=f"{lyr}.{name}")


def test_parallel_scan_equals_the_single_process_scan_and_its_pictures(client, folder, transform, single):
    net, ds = tiny_net(), data.ImageFolder(folder, skip_bad=True)
    result = distributed.scan(net, ds, LAYERS, k=9, batch_size=BATCH, transform=transform, client=client,
                              shard_size=3 * BATCH, progress=False)
    assert result.n_images == N_IMAGES and len(result.skipped) == 0
    assert_same_topk(result.layer_stores(), single)
    # the pictures: projections computed once, on the client, from the merged records
    store, width = result.layers["conv2"]
    records = topk.feature_records(store, width, None, "conv2", n_features=2)
    got = visualize.top9(net, ds, "conv2", None, transform, [0.4, 0.5, 0.6], records=records)
    with one_thread():
        want = visualize.top9(net, ds, "conv2", None, transform, [0.4, 0.5, 0.6], batch_size=BATCH,
                              n_features=2)
    assert list(got) == list(want)
    for f in want:
        np.testing.assert_array_equal(np.asarray(got[f]), np.asarray(want[f]))


def test_the_network_is_built_once_per_worker(client):
    def built(net, item):
        return id(net), os.getpid()

    seen = distributed.map_items(built, tiny_net(), list(range(12)), client=client, progress=False)
    pids = {pid for _, pid in seen}
    assert len(set(seen)) == len(pids)  # one network object per worker process, for all 12 tasks


def test_maps_back_to_back_do_not_lose_each_others_network(client):
    """Each map ships its network under a fresh key: releasing one map's copy (when it ends)
    cannot delete the next map's (a dict scattered by its keys did, now and then)."""
    def rows(net, item):
        return net["fc"].params["w"].shape[0] + item

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no resubmission either
        for round_ in range(20):
            got = distributed.map_items(rows, tiny_net(), [0, 1, 2, 3], client=client, progress=False)
            assert got == [5, 6, 7, 8], round_


def forward_logits(net, x, idx):
    return np.asarray(zfraw.to_host(net.forward(x, keep=False, cache=False)))


def test_map_images_gives_each_image_its_own_forward(client, folder, transform):
    net, ds = tiny_net(), data.ImageFolder(folder, skip_bad=True)
    order = np.random.default_rng(2).permutation(N_IMAGES)[:50]
    parts = distributed.map_images(forward_logits, net, ds, client=client, indices=order, transform=transform,
                                   batch_size=8, chunk_size=16, progress=False)
    idx = np.concatenate([i for i, _ in parts])
    np.testing.assert_array_equal(idx, order)
    logits = np.concatenate([out for _, out in parts])
    for i in (0, 17, 49):  # batches of 8 from chunks of 16: compare with a forward of the same batch
        start = (i // 8) * 8
        x = np.stack([data.load_item(ds, j, transform) for j in order[start:start + 8]])
        np.testing.assert_array_equal(logits[i], forward_logits(net.eval(), x, None)[i - start])


def test_inputs_lost_with_their_worker_are_sent_again(client, folder, transform, monkeypatch):
    """When the worker holding the scattered network dies (here: its data is released), the
    waiting tasks are cancelled; the inputs are scattered again and the tasks resubmitted."""
    net, ds = tiny_net(), data.ImageFolder(folder, skip_bad=True)
    real, calls = distributed._scatter_inputs, []

    def losing(client_, net_, kwargs_):
        payload, shipped = real(client_, net_, kwargs_)
        calls.append(1)
        if len(calls) == 1:
            client_.cancel([payload])  # as if the worker holding it were gone
        return payload, shipped

    monkeypatch.setattr(distributed, "_scatter_inputs", losing)
    with pytest.warns(RuntimeWarning, match="was lost; sending them again"):
        parts = distributed.map_images(forward_logits, net, ds, client=client, indices=list(range(20)),
                                       transform=transform, batch_size=8, chunk_size=8, progress=False)
    assert len(calls) == 2
    np.testing.assert_array_equal(np.concatenate([i for i, _ in parts]), np.arange(20))
    x = np.stack([data.load_item(ds, j, transform) for j in range(8)])
    np.testing.assert_array_equal(parts[0][1], forward_logits(net.eval(), x, None))


class Failing(data.ImageFolder):
    """An image folder whose item ``bad_index`` raises a non-data error while ``marker`` exists
    (a scan that stops part-way), or kills its worker process once (``kill=True``)."""

    def __init__(self, root, marker, bad_index, kill=False):
        super().__init__(root, skip_bad=True)
        self.marker, self.bad_index, self.kill = str(marker), bad_index, kill

    def __getitem__(self, i):
        if i == self.bad_index and os.path.exists(self.marker):
            if self.kill:
                os.unlink(self.marker)  # only the first worker that reaches it dies
                os._exit(1)
            raise RuntimeError("the scan stops here")
        return super().__getitem__(i)


def test_a_stopped_scan_resumes_from_its_finished_shards(client, folder, transform, single, tmp_path):
    marker, shards = tmp_path / "stop", tmp_path / "shards"
    marker.write_text("")
    net = tiny_net()
    ds = Failing(folder, marker, bad_index=N_IMAGES - 5)  # in the last shard
    kw = dict(k=9, batch_size=BATCH, transform=transform, client=client, shard_size=2 * BATCH, progress=False,
              shard_dir=shards)
    with pytest.raises(RuntimeError, match="the scan stops here"):
        distributed.scan(net, ds, LAYERS, **kw)
    saved = sorted(p for p in os.listdir(shards) if p.startswith("shard-"))
    assert 0 < len(saved) < 8 and "shard-000007.npz" not in saved
    (shards / "shard-000007.npz.tmp").write_bytes(b"a half-written file")  # as a crash would leave it
    stamps = {p: os.stat(shards / p).st_mtime_ns for p in saved}
    os.unlink(marker)
    result = distributed.scan(net, ds, LAYERS, **kw)
    assert_same_topk(result.layer_stores(), single)
    assert {p: os.stat(shards / p).st_mtime_ns for p in saved} == stamps  # finished shards were not redone
    assert len([p for p in os.listdir(shards) if p.endswith(".npz")]) == 8
    # the folder belongs to this scan: another k (or weights, or files) is refused
    with pytest.raises(ValueError, match="shards of another scan.*k"):
        distributed.scan(net, ds, LAYERS, **dict(kw, k=4))


def test_a_killed_worker_loses_nothing(client, folder, transform, single, tmp_path):
    marker = tmp_path / "kill"
    marker.write_text("")
    ds = Failing(folder, marker, bad_index=100, kill=True)
    result = distributed.scan(tiny_net(), ds, LAYERS, k=9, batch_size=BATCH, transform=transform, client=client,
                              shard_size=4 * BATCH, progress=False)
    assert not marker.exists()  # a worker did die
    assert_same_topk(result.layer_stores(), single)
    client.wait_for_workers(2, timeout=60)


def test_a_corrupt_image_is_skipped_with_its_name_and_the_other_shards_survive(client, folder, transform,
                                                                              tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(folder, root)
    bad = data.ImageFolder(root).paths[123]
    with open(bad, "wb") as fh:
        fh.write(b"\x89PNG\r\n\x1a\n this is not an image")
    ds = data.ImageFolder(root, skip_bad=True)
    with pytest.warns(UserWarning, match="skipping item 123"), one_thread():
        want = topk.scan_layers(tiny_net(), ds, LAYERS, k=9, batch_size=BATCH, transform=transform)
    kw = dict(k=9, batch_size=BATCH, transform=transform, client=client, shard_size=2 * BATCH, progress=False,
              shard_dir=tmp_path / "shards")
    with pytest.warns(UserWarning, match=os.path.basename(bad)) as caught:
        result = distributed.scan(tiny_net(), ds, LAYERS, **kw)
    assert sum(os.path.basename(bad) in str(w.message) for w in caught) == 1
    assert result.skipped.tolist() == [123] and result.n_images == N_IMAGES - 1
    assert_same_topk(result.layer_stores(), want)
    with pytest.warns(UserWarning, match=os.path.basename(bad)):  # a resumed scan says it again
        again = distributed.scan(tiny_net(), ds, LAYERS, **kw)
    assert_same_topk(again.layer_stores(), want)


def test_cli_top9_on_a_scheduler_draws_the_same_pictures(client, folder, tmp_path, capsys):
    weights = str(tiny_net().save(tmp_path / "tiny.npz", mean=[0.4, 0.5, 0.6]))
    base = ["top9", folder, "--weights", weights, "--layer", "conv2", "--features", "1,3", "--backend", "numpy"]
    assert cli.main(base + ["-o", str(tmp_path / "one")]) == 0
    assert cli.main(base + ["-o", str(tmp_path / "dask"), "--scheduler", client.scheduler.address,
                            "--shard-dir", str(tmp_path / "shards")]) == 0
    names = sorted(os.listdir(tmp_path / "one"))
    assert names == ["conv2_feature1.png", "conv2_feature3.png"] == sorted(os.listdir(tmp_path / "dask"))
    for name in names:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one" / name)),
                                      np.asarray(Image.open(tmp_path / "dask" / name)))
    assert os.path.exists(tmp_path / "shards" / "scan.json")
    capsys.readouterr()


def test_cli_without_dask_says_what_to_install(folder, tmp_path, capsys, monkeypatch):
    for name in [m for m in sys.modules if m == "dask" or m.startswith("dask.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "dask", None)  # import dask -> ImportError
    monkeypatch.setitem(sys.modules, "dask.distributed", None)
    status = cli.main(["top9", folder, "--workers", "2", "-o", str(tmp_path / "out"), "--backend", "numpy"])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "pip install 'zfraw[dask]'" in err and "dask[distributed]" in err
    assert not os.path.exists(tmp_path / "out")


def test_cli_refuses_bad_dask_options(folder, tmp_path, capsys):
    for extra, msg in ((["--workers", "0"], "--workers: expected at least 1"),
                       (["--workers", "2", "--scheduler", "tcp://x:1"], "not both"),
                       (["--shard-dir", str(tmp_path)], "--shard-dir needs")):
        status = cli.main(["top9", folder, "-o", str(tmp_path / "out"), "--backend", "numpy"] + extra)
        err = capsys.readouterr().err
        assert status == 2 and msg in err, err


# ---------------------------------------------------------------- the analyses of issue 8 (merged later)

def test_occlusion_folder_equals_occlusion_of_the_same_images(client, folder, transform):
    occ = pytest.importorskip("zfraw.analysis.occlusion")
    net, ds = tiny_net(), data.ImageFolder(folder, skip_bad=True)
    order = [3, 50, 51, 200, 7]
    maps, idx = distributed.occlusion_folder(net, ds, 6, 5, client=client, transform=transform, indices=order,
                                             batch_size=2, chunk_size=2, progress=False, layer="conv2")
    np.testing.assert_array_equal(idx, order)
    x = np.stack([data.load_item(ds, i, transform) for i in order])
    want = occ.occlusion(net.eval(), x, 6, 5, layer="conv2", progress=False)
    assert (maps.layer, maps.size, maps.stride) == (want.layer, want.size, want.stride)
    for name in ("label", "feature", "target"):
        np.testing.assert_array_equal(np.asarray(getattr(maps, name)), np.asarray(getattr(want, name)), name)
    for name in ("activity", "probability"):
        np.testing.assert_allclose(np.asarray(getattr(maps, name)), np.asarray(getattr(want, name)),
                                   rtol=1e-5, atol=1e-7, err_msg=name)


def test_correspondence_sets_equal_correspondence_of_each_set(client, folder, transform):
    corr = pytest.importorskip("zfraw.analysis.correspondence")
    net, ds = tiny_net(), data.ImageFolder(folder, skip_bad=True)
    rng = np.random.default_rng(4)
    sets = []
    for s in range(3):
        x = np.stack([data.load_item(ds, int(i), transform) for i in rng.choice(N_IMAGES, 4, replace=False)])
        top, left = rng.integers(0, SIDE - 6, size=(2, 4))
        sets.append((x, np.stack([top, left, top + 6, left + 6], axis=1)))
    got = distributed.correspondence_sets(net, sets, ["conv2", "fc"], client=client, random_draws=3, seed=1,
                                          progress=False)
    want = [corr.correspondence(net.eval(), x, boxes, ["conv2", "fc"], random_draws=3, seed=1) for x, boxes in sets]
    assert len(got) == 3
    for g, w in zip(got, want):
        assert sorted(g) == sorted(w)
        for lyr in w:
            for key, value in w[lyr].items():
                np.testing.assert_allclose(g[lyr][key], value, rtol=1e-6, err_msg=f"{lyr} {key}")


def test_the_report_with_a_dask_scan_is_the_same_report(client, folder, transform, tmp_path):
    from zfraw import report

    net, ds = tiny_net(), data.ImageFolder(folder, skip_bad=True)
    kw = dict(layers=["conv1", "conv2"], features_per_layer=2, n_images=200, batch_size=BATCH, progress=False,
              n_examples=1)
    report.write_report(tmp_path / "one", net, ds, transform, [0.4, 0.5, 0.6], **kw)
    report.write_report(tmp_path / "dask", net, ds, transform, [0.4, 0.5, 0.6],
                        scan_layers=distributed.scanner(client, shard_size=2 * BATCH), **kw)
    pictures = sorted(os.listdir(tmp_path / "one" / "img"))
    assert pictures == sorted(os.listdir(tmp_path / "dask" / "img")) and len(pictures) > 4
    for name in pictures:
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one" / "img" / name)),
                                      np.asarray(Image.open(tmp_path / "dask" / "img" / name)), err_msg=name)
    captions = [[line for line in open(tmp_path / d / "index.html") if "figcaption" in line] for d in ("one", "dask")]
    assert captions[0] == captions[1]
