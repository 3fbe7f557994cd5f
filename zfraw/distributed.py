"""Dataset-scale work on Dask: the top-k scan in shards, and per-image maps, over many processes.

The top-k scan is map-reduce shaped: :func:`scan` cuts the dataset's indices
into shards, each Dask worker scans its shards with
:func:`zfraw.analysis.topk.scan` (decoding and preprocessing its own images,
running the forward with ``threads`` threads), and the client merges the
partial :class:`~zfraw.analysis.topk.ScanResult` s (an exact merge: the result
equals the single-process scan).  :func:`map_images` and :func:`map_items` run
any per-image (or per-item) function the same way; :func:`occlusion_folder`
and :func:`correspondence_sets` are the paper's occlusion and correspondence
analyses over many images.

The network travels once per worker: its architecture and weights are
scattered once (``client.scatter``); each worker fetches them with its first
task, keeps the copy, builds the network from it once and keeps it for every later task
(:func:`worker_net`).  The dataset object (a file list, not the images) is
scattered the same way; workers read the image files themselves, so on a
cluster the folder must be visible to every worker at the same path.  Each is
scattered as one object under a fresh key.  If the worker holding the
scattered copies is lost (it died, or an overloaded scheduler dropped it),
Dask cancels the waiting tasks; they are then resubmitted with freshly
scattered copies (at most :data:`LOST_INPUT_RETRIES` times, each with a
``RuntimeWarning``).

Warnings a task raises on a worker (an unreadable image skipped, with the
file's name) are sent back with its result and raised again on the client.

Dask is an optional dependency: ``pip install 'zfraw[dask]'`` (that is,
``dask[distributed]``).  Everything else in zfraw works without it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import uuid
import warnings
from collections import OrderedDict
from concurrent.futures import CancelledError

import numpy as np

from zfraw import data
from zfraw._args import int_arg
from zfraw.analysis import topk
from zfraw.backend import get_backend, use_backend
from zfraw.io.npz import atomic_write
from zfraw.nn import Sequential

__all__ = ["INSTALL_HINT", "require_dask", "cluster", "worker_net", "map_items", "map_images", "scan",
           "scanner", "shard_plan", "occlusion_folder", "correspondence_sets"]

#: what to install for this module (the message when Dask is missing)
INSTALL_HINT = "pip install 'zfraw[dask]'  (or: pip install 'dask[distributed]')"

#: name of the file that identifies the scan a shard folder belongs to
MANIFEST = "scan.json"


def require_dask():
    """Import ``dask.distributed``; an ImportError that says what to install when it is missing."""
    try:
        import dask.distributed as dd
    except ImportError as exc:
        raise ImportError(f"parallel work on Dask needs the dask extra: {INSTALL_HINT} ({exc})") from None
    return dd


@contextlib.contextmanager
def cluster(workers=None, scheduler=None):
    """A Dask client for the lifetime of the block.

    ``scheduler``: the address of a running cluster (``tcp://host:8786``), which
    is used and left running.  Else a ``LocalCluster`` of ``workers`` processes
    with one thread each is started here and closed at the end (BLAS and OpenMP
    libraries limited to one thread each by Dask's worker environment).
    """
    dd = require_dask()
    if scheduler is not None:
        if workers is not None:
            raise ValueError("workers: give either workers (a local cluster) or scheduler (an existing one)")
        try:
            client = dd.Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"scheduler: cannot reach a Dask scheduler at {scheduler!r} ({exc})") from None
        with client:
            yield client
        return
    workers = int_arg("workers", 1 if workers is None else workers, 1)
    with dd.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         dashboard_address=None) as local, dd.Client(local) as client:
        yield client


# ============================================================== the network on a worker

_NETS = OrderedDict()  # token -> network, in each worker process (the last few kept)
_KEEP_NETS = 2


def net_payload(net):
    """What a worker needs to rebuild ``net``: its architecture, dtype and host weights."""
    if not isinstance(net, Sequential):
        raise TypeError(f"net: expected a zfraw.nn.Sequential, got {type(net).__name__}")
    return dict(token=uuid.uuid4().hex, spec=net.spec(), dtype=np.dtype(net.dtype).str, state=net.state_dict())


def worker_net(payload):
    """The network of ``payload``, built once per process (and backend) and kept for later tasks.

    Call it inside ``use_backend(...)``: the weights go to the active backend.
    """
    key = (payload["token"], get_backend().name)
    net = _NETS.get(key)
    if net is None:
        net = Sequential.from_spec(payload["spec"]).astype(np.dtype(payload["dtype"]))
        net.load_state_dict(payload["state"]).eval()
        _NETS[key] = net
        while len(_NETS) > _KEEP_NETS:
            _NETS.popitem(last=False)
    return net


def _limit_threads(threads):
    """Run the numba backend's parallel kernels on ``threads`` threads in this thread (BLAS is
    limited by the worker's environment, OPENBLAS_NUM_THREADS=1, which Dask sets for its workers).

    Only once that backend is active: its kernels start Numba's thread pool with
    OpenMP's passive wait policy, which an earlier ``set_num_threads`` would pre-empt.
    """
    if get_backend().name != "numba":
        return
    import numba

    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


def _run_task(fn, payload, backend, threads, item, kwargs):
    """On a worker: ``fn(net, item, **kwargs)`` on the shipped network, with the warnings it raised.

    Returns (result, [(warning category, message), ...]).
    """
    with use_backend(backend), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _limit_threads(threads)
        net = None if payload is None else worker_net(payload)
        result = fn(net, item, **kwargs)
    return result, [(w.category, str(w.message)) for w in caught]


def _warn_again(messages):
    for category, message in messages:
        if not (isinstance(category, type) and issubclass(category, Warning)):
            category = UserWarning
        warnings.warn(message, category, stacklevel=4)


#: how many times the shipped inputs are sent again when a worker that held them is lost
LOST_INPUT_RETRIES = 3


def _scatter_inputs(client, net, kwargs):
    """The network's payload and the dataset-like keyword arguments, scattered to the workers once.

    Each is scattered as one object under a fresh random key.  (``client.scatter`` of a
    dict would store each value under its dict key -- "spec", "state", ... -- the same
    keys for every call, so the release of one call's payload could delete the next
    call's: the tasks then failed with "lost dependencies".)
    """
    payload = None if net is None else client.scatter([net_payload(net)], hash=False)[0]
    return payload, {k: (client.scatter([v], hash=False)[0] if _worth_scattering(v) else v)
                     for k, v in kwargs.items()}


def _submit_and_collect(client, fn, net, items, threads, kwargs, progress, desc):
    """Submit ``fn(net, item, **kwargs)`` for every item to the workers; yield (position, result)
    as each finishes (a tqdm bar over finished items), raising its warnings here.

    The network and the datasets are scattered once, with no replica; when the worker
    holding them is lost (it died, or the scheduler dropped it as unresponsive on an
    overloaded machine), the waiting tasks are cancelled with "lost dependencies": the
    inputs are then scattered again and the unfinished items resubmitted, up to
    :data:`LOST_INPUT_RETRIES` times.
    """
    dd = require_dask()
    items = list(items)
    backend = get_backend().name
    pending = set(range(len(items)))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="task", leave=False)
    retries = 0
    try:
        while pending:
            payload, shipped = _scatter_inputs(client, net, kwargs)
            futures = {client.submit(_run_task, fn, payload, backend, threads, items[pos], shipped, pure=False): pos
                       for pos in sorted(pending)}
            try:
                for fut in dd.as_completed(futures):
                    result, messages = fut.result()
                    _warn_again(messages)
                    pending.discard(futures[fut])
                    if bar is not None:
                        bar.update(1)
                    yield futures[fut], result
            except CancelledError:
                retries += 1
                if retries > LOST_INPUT_RETRIES:
                    raise
                warnings.warn(f"a Dask worker holding the network or the dataset was lost; sending them again "
                              f"and resubmitting {len(pending)} unfinished task(s) (retry {retries} of "
                              f"{LOST_INPUT_RETRIES})", RuntimeWarning, stacklevel=3)
            finally:
                client.cancel(list(futures))
    finally:
        if bar is not None:
            bar.close()


def _worth_scattering(value):
    """Send a dataset (or another large object) to the workers once, not with every task."""
    return hasattr(value, "__len__") and hasattr(value, "__getitem__") and not isinstance(
        value, (str, bytes, tuple, list, dict, np.ndarray))


def map_items(fn, net, items, *, client, threads=1, progress=True, desc="tasks", **kwargs):
    """``[fn(net, item, **kwargs) for item in items]``, one Dask task per item.

    ``net`` (a Sequential, or None) is shipped once per worker and built there
    once (:func:`worker_net`); ``fn`` must be picklable (a module-level
    function); keyword arguments that are datasets are scattered once.
    Returns the results in the order of ``items``.
    """
    out = [None] * len(items)
    for pos, result in _submit_and_collect(client, fn, net, items, threads, kwargs, progress, desc):
        out[pos] = result
    return out


# ============================================================== per-image maps

def _map_chunk(net, indices, dataset, transform, image_fn, batch_size, fn_kwargs):
    """On a worker: the images ``indices`` of ``dataset``, preprocessed, through ``image_fn`` in batches."""
    results = []
    for x, idx in data.stream(dataset, batch_size, transform, indices=indices):
        results.append((idx, image_fn(net, get_backend().xp.asarray(x, dtype=net.dtype), idx, **fn_kwargs)))
    return results


def map_images(fn, net, dataset, *, client, indices=None, transform=None, batch_size=16, chunk_size=None,
               threads=1, progress=True, **fn_kwargs):
    """Run ``fn(net, x, idx, **fn_kwargs)`` over the images of ``dataset`` on Dask workers.

    The indices (default all) are cut into chunks of ``chunk_size`` (default
    about four chunks per worker, a multiple of ``batch_size``); each chunk is
    one task, which reads its images, preprocesses them with ``transform``
    (:func:`zfraw.data.to_chw_float` by default) and calls ``fn`` on batches
    ``x`` (B, 3, h, w) on the backend with their dataset indices ``idx`` (B,).
    Unreadable images are skipped with the dataset's ``skip_bad`` (the warning,
    naming the file, is raised again on the client).

    Returns
    -------
    list of (idx int64 (B,), result)
        One entry per batch, in the order of ``indices``.
    """
    order = topk.scan_indices(dataset, indices=indices)
    batch_size = int_arg("batch_size", batch_size, 1)
    chunk = _chunk_size(chunk_size, len(order), batch_size, _n_workers(client))
    chunks = [order[s:s + chunk] for s in range(0, len(order), chunk)]
    per_chunk = map_items(_map_chunk, net, chunks, client=client, threads=threads, progress=progress,
                          desc="images", dataset=dataset, transform=transform, image_fn=fn, batch_size=batch_size,
                          fn_kwargs=fn_kwargs)
    return [pair for results in per_chunk for pair in results]


def _n_workers(client):
    return max(1, len(client.scheduler_info().get("workers", {})))


def _chunk_size(chunk_size, n, batch_size, workers, per_worker=4, cap=1024):
    """``chunk_size``, or about ``per_worker`` chunks per worker, rounded up to whole batches."""
    if chunk_size is not None:
        return int_arg("chunk_size", chunk_size, 1)
    size = min(cap, max(1, math.ceil(n / (per_worker * workers))))
    return batch_size * math.ceil(size / batch_size)


def _occlude_batch(net, x, idx, size, stride, targets, **kwargs):
    from zfraw.analysis.occlusion import occlusion

    target = None if targets is None else np.asarray(targets)[idx]
    return occlusion(net, x, size, stride, target=target, progress=False, **kwargs)


def occlusion_folder(net, dataset, size, stride, *, client, transform=None, use_labels=False, indices=None,
                     batch_size=8, chunk_size=None, threads=1, progress=True, **occlusion_kwargs):
    """:func:`zfraw.analysis.occlusion.occlusion` over many images of ``dataset``, on Dask workers.

    Each worker reads and preprocesses its images (``transform``) and sweeps
    the occluder over them; the client concatenates the maps.  ``use_labels``:
    the probability maps are of each image's true class (``dataset.labels``),
    else as ``occlusion``'s ``target=None`` decides.  Other keywords
    (``layer``, ``feature``, ``fill``, ``batch_size`` of the occluded copies as
    ``occlusion_batch_size``) go to ``occlusion``.

    Returns
    -------
    (OcclusionMaps, indices)
        The maps of every image read (fields (N, ...) concatenated in the order
        of ``indices``) and their dataset indices int64 (N,).
    """
    if "occlusion_batch_size" in occlusion_kwargs:
        occlusion_kwargs["batch_size"] = occlusion_kwargs.pop("occlusion_batch_size")
    targets = np.asarray(getattr(dataset, "labels")) if use_labels else None
    parts = map_images(_occlude_batch, net, dataset, client=client, indices=indices, transform=transform,
                       batch_size=batch_size, chunk_size=chunk_size, threads=threads, progress=progress,
                       size=size, stride=stride, targets=targets, **occlusion_kwargs)
    if not parts:
        raise ValueError("dataset: no (readable) images to occlude")
    idx = np.concatenate([i for i, _ in parts])
    maps = [m for _, m in parts]
    first = maps[0]
    joined = {f: np.concatenate([np.asarray(getattr(m, f)) for m in maps])
              for f in ("activity", "probability", "label", "feature", "target")}
    return type(first)(layer=first.layer, size=first.size, stride=first.stride, **joined), idx


def _correspond_set(net, item, layers, **kwargs):
    from zfraw.analysis.correspondence import correspondence

    x, boxes = item
    return correspondence(net, get_backend().xp.asarray(x, dtype=net.dtype), boxes, layers, **kwargs)


def correspondence_sets(net, sets, layers, *, client, threads=1, progress=True, **kwargs):
    """:func:`zfraw.analysis.correspondence.correspondence` for many image sets, one Dask task each.

    ``sets``: a sequence of ``(x (n, 3, H, W), boxes (n, 4))`` (e.g. one per
    object part); keywords (``fill``, ``random_draws``, ``seed``) go to
    ``correspondence``.  Returns the list of its result dicts, in order.
    """
    sets = [(np.asarray(x), np.asarray(b)) for x, b in sets]
    return map_items(_correspond_set, net, sets, client=client, threads=threads, progress=progress,
                     desc="image sets", layers=list(layers), **kwargs)


# ============================================================== the top-k scan

def shard_plan(n, shard_size):
    """The shards of a scan of ``n`` images: consecutive runs of ``shard_size`` positions."""
    shard_size = int_arg("shard_size", shard_size, 1)
    return [(s, min(n, s + shard_size)) for s in range(0, n, shard_size)]


def _scan_shard(net, indices, dataset, layers, k, batch_size, transform):
    """On a worker: one shard's partial top-k, with the warnings of its scan (the files
    skipped) kept in ``messages``, so that they are repeated on the client and on resume."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        part = topk.scan(net, dataset, layers, k, batch_size, transform, indices=indices)
    part.messages = part.messages + tuple(str(w.message) for w in caught)
    return part


def _fingerprint(net, dataset, layers, k, order, shard_size, batch_size):
    """What identifies a scan, so that a folder of shards is only resumed by the same scan."""
    h = hashlib.sha256()
    for name, a in net.state_dict().items():
        h.update(name.encode())
        h.update(np.ascontiguousarray(a).tobytes())
    files = hashlib.sha256("\n".join(getattr(dataset, "paths", [])).encode()).hexdigest()
    return dict(format="zfraw-topk-shards-1", net=net.name, weights_sha256=h.hexdigest(), layers=list(layers),
                k=int(k), n_images=int(len(order)), order_sha256=hashlib.sha256(order.tobytes()).hexdigest(),
                dataset=repr(dataset), dataset_len=int(len(dataset)), files_sha256=files,
                shard_size=int(shard_size), batch_size=int(batch_size))


def _open_shard_dir(shard_dir, fingerprint):
    """Create ``shard_dir`` with its manifest, or check that it holds shards of this very scan."""
    os.makedirs(shard_dir, exist_ok=True)
    path = os.path.join(shard_dir, MANIFEST)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            old = json.load(fh)
        differ = [key for key in fingerprint if old.get(key) != fingerprint[key]]
        if differ:
            raise ValueError(f"shard_dir: {shard_dir!r} holds shards of another scan ({', '.join(differ)} "
                             f"differ); use a new folder, or delete this one to start again")
    else:
        atomic_write(path, lambda fh: fh.write(json.dumps(fingerprint, indent=1).encode()))


def _shard_path(shard_dir, j):
    return os.path.join(shard_dir, f"shard-{j:06d}.npz")


def scan(net, dataset, layers, k=9, batch_size=64, transform=None, *, client, limit=None, indices=None,
         shard_size=None, shard_dir=None, threads=1, progress=True):
    """The top-k scan of :func:`zfraw.analysis.topk.scan` in shards on Dask workers.

    The dataset indices (``indices``, default all, cut to the first ``limit``)
    are cut into shards of ``shard_size`` (default: about four per worker, at
    most 1024 images; rounded up to a whole number of batches); each is a task that returns a
    partial :class:`~zfraw.analysis.topk.ScanResult`, merged here.  With
    ``shard_dir`` each finished shard is saved there atomically as it arrives,
    beside a manifest of the scan (weights, layers, k, files, shard size); run
    again with the same folder, the scan loads the finished shards and computes
    only the others.  The transform is not in the manifest: resume with the
    same one.

    Shards of whole batches hold, batch for batch, the images the
    single-process scan with the same ``batch_size`` puts together, so the
    result is bit-identical to it (a BLAS product's last bit can depend on the
    batch's size).  Unreadable images are skipped with the dataset's
    ``skip_bad``, with the worker's warning (naming the file) raised here; a
    shard that fails otherwise stops the scan, with the shards finished so far
    kept in ``shard_dir``.

    Returns
    -------
    ScanResult
        Over all the requested indices; ``.layer_stores()`` is what
        :func:`zfraw.analysis.topk.scan_layers` returns.
    """
    if not isinstance(net, Sequential):
        raise TypeError(f"net: expected a zfraw.nn.Sequential, got {type(net).__name__}")
    layers = [net.check_layer(lyr) for lyr in ([layers] if isinstance(layers, str) else layers)]
    if not layers:
        raise ValueError("layers: expected at least one layer name")
    k = int_arg("k", k, 1)
    batch_size = int_arg("batch_size", batch_size, 1)
    order = topk.scan_indices(dataset, limit, indices)
    if shard_size is None and shard_dir is not None and os.path.exists(os.path.join(shard_dir, MANIFEST)):
        with open(os.path.join(shard_dir, MANIFEST), encoding="utf-8") as fh:
            shard_size = json.load(fh).get("shard_size")  # resume with the plan the folder was made with
    shard_size = _chunk_size(shard_size, len(order), batch_size, _n_workers(client))
    shard_size = batch_size * math.ceil(shard_size / batch_size)  # whole batches: see above
    plan = shard_plan(len(order), shard_size)
    if shard_dir is not None:
        shard_dir = os.fspath(shard_dir)
        _open_shard_dir(shard_dir, _fingerprint(net, dataset, layers, k, order, shard_size, batch_size))
    parts, todo = [], []
    for j, (a, b) in enumerate(plan):
        path = None if shard_dir is None else _shard_path(shard_dir, j)
        if path is not None and os.path.exists(path):
            part = topk.ScanResult.load(path)
            if not np.array_equal(part.covered, np.sort(order[a:b])):
                raise ValueError(f"shard_dir: {path!r} covers other images than shard {j} of this scan")
            _warn_again((UserWarning, m) for m in part.messages)
            parts.append(part)
        else:
            todo.append(j)
    if todo:
        for pos, part in _submit_and_collect(client, _scan_shard, net, [order[plan[j][0]:plan[j][1]] for j in todo],
                                               threads, dict(dataset=dataset, layers=layers, k=k,
                                                             batch_size=batch_size, transform=transform),
                                               progress, f"top-{k} shards"):
            _warn_again((UserWarning, m) for m in part.messages)
            if shard_dir is not None:
                part.save(_shard_path(shard_dir, todo[pos]))
            parts.append(part)
    if not parts:
        return topk.ScanResult(k, OrderedDict((lyr, (topk.TopK(k), None)) for lyr in layers), order)
    return topk.merge(parts)



def scanner(client, *, shard_dir=None, shard_size=None, threads=1):
    """A function with the signature and return value of :func:`zfraw.analysis.topk.scan_layers`
    that scans on ``client``'s workers (:func:`scan`), for code that takes a scan function
    (``zfraw.report.write_report(..., scan_layers=...)``)."""

    def scan_layers(net, dataset, layers, k=9, batch_size=64, transform=None, progress=False, limit=None,
                    indices=None):
        return scan(net, dataset, layers, k, batch_size, transform, client=client, limit=limit, indices=indices,
                    shard_size=shard_size, shard_dir=shard_dir, threads=threads, progress=progress).layer_stores()

    return scan_layers
