"""The top-k scan over a folder of real-size JPEGs: 1 process against Dask workers, beside its ceilings.

    python bench/scan.py [--images 5000] [--workers 1 2] [--cache DIR] [--quick] [--out DIR]
                         [--max-load 1.0] [--zfnet-images 16]

What is measured (each a rate in images per second):

- ``decode``: :func:`zfraw.data.load_image` of a 500x375 JPEG plus the
  evaluation preprocessing, one process on one thread; for the built-in
  model's input (shorter side to 64, centre 64x64) and for ZFNet's (shorter
  side to 256, centre 224x224);
- ``forward``: the built-in ``zfnet_mini``'s forward up to fc8 keeping every
  layer's activations (what the scan computes), on images already in memory,
  batch 64, on 1 thread and on all threads (each in a process of its own):
  the ceiling of the scan on this machine (N workers: N x the 1-thread rate);
- ``scan 1 process``: :func:`zfraw.analysis.topk.scan` of every conv and fc
  layer (k = 9) over the JPEG folder in this process, all threads;
- ``scan N workers``: the same with :func:`zfraw.distributed.scan` on a
  ``LocalCluster`` of N worker processes of one thread each (``--workers``;
  the cluster's start is timed apart, the first shards include each worker's
  Numba start-up);
- ``zfnet forward``: the full 224x224 :func:`zfraw.models.zfnet` forward (the
  scan's cost per image for every unit of ZFNet), batch 8, on 1 thread and on
  all threads, in worker processes of their own (thread counts are fixed at
  process start).

From these the script estimates the time to scan 1.3 M ImageNet-size images
for every unit of ZFNet: core-seconds per image = 1 / (1-thread forward rate)
+ 1 / (1-thread decode rate at 224), divided over the cores, assuming the
per-core rate holds (what the measured 1-to-N-worker scaling says about that
is in the table).  The images are generated once into ``--cache`` (default
``~/.cache/zfraw/bench-scan``): the built-in procedural classes drawn at 128
pixels, enlarged to 500x500, cropped to 500x375 and given sensor-like noise,
saved as JPEG quality 90 (about 50 KB each; ImageNet's training JPEGs average about 110 KB).
Results go to ``bench/results/scan-<cpu>-<cores>c-blas-<core>-<backend>.json``
and ``.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

IMAGENET_IMAGES = 1_300_000
TOOLBOX_HOURS = 40.0  # Yosinski et al., Deep Visualization Toolbox: top-9 of every unit over ImageNet train
PHOTO_SIZE = (500, 375)  # width, height


# ============================================================== the images

def _write_image(args):
    """Draw, enlarge, crop and noise one image and save it as a JPEG (atomically)."""
    path, label, seed = args
    from PIL import Image

    from zfraw import synthetic

    rng = np.random.default_rng(seed)
    small = synthetic.render(label, rng, size=128)
    big = np.asarray(Image.fromarray(small).resize((PHOTO_SIZE[0], PHOTO_SIZE[0]), Image.BICUBIC), dtype=np.float32)
    top = (PHOTO_SIZE[0] - PHOTO_SIZE[1]) // 2
    crop = big[top:top + PHOTO_SIZE[1]] + rng.normal(0, 6, (PHOTO_SIZE[1], PHOTO_SIZE[0], 3))
    tmp = path + ".tmp"
    Image.fromarray(np.clip(crop, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=90)
    os.replace(tmp, path)
    return path


def make_images(root, n, processes=None):
    """``n`` JPEGs in ``root/<class>/`` (made once; a ``complete.json`` marks a finished folder)."""
    from multiprocessing import Pool

    from zfraw import synthetic

    root = Path(root)
    done = root / "complete.json"
    if done.exists() and json.loads(done.read_text()).get("images") == n:
        return root, 0.0
    t0 = time.perf_counter()
    jobs = []
    for i in range(n):
        label = i % len(synthetic.CLASSES)
        folder = root / synthetic.CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"img{i:06d}.jpg"
        if not path.exists():
            jobs.append((str(path), label, i))
    processes = processes or os.cpu_count() or 1
    if processes == 1:
        for job in jobs:
            _write_image(job)
    else:
        with Pool(processes) as pool:
            for _ in pool.imap_unordered(_write_image, jobs, chunksize=32):
                pass
    common.write_atomic(done, json.dumps({"images": n, "size": PHOTO_SIZE}))
    return root, time.perf_counter() - t0


# ============================================================== measurements

def decode_rate(ds, transform, n):
    """Images per second of load_image + transform over the first n files."""
    from zfraw import data

    t0 = time.perf_counter()
    for i in range(n):
        data.load_item(ds, i, transform)
    return n / (time.perf_counter() - t0)


def forward_rate(net, x, repeat):
    """Images per second of the forward to the last layer, keeping every activation."""
    import zfraw

    xp = zfraw.get_backend().xp
    xb = xp.asarray(x)
    net.eval()
    net.forward(xb, keep=True, cache=False)  # warm-up (compilation, caches)
    t = common.time_call(lambda: net.forward(xb, keep=True, cache=False), repeat=repeat, warmup=0)
    net.clear()
    return len(x) / (t["median_ms"] / 1e3)


def compare(result, single, layers):
    """(same image ids and locations everywhere, largest relative difference of the values) of two scans.

    The workers run BLAS on one thread, this process on all of them, and OpenBLAS's
    float32 sums depend on its thread count: values may differ in the last bit,
    and then ids only where two activations tie to within it.
    """
    same, diff = True, 0.0
    for lyr in layers:
        a, b = result.layers[lyr][0], single.layers[lyr][0]
        same &= bool(np.array_equal(a.idx, b.idx) and np.array_equal(a.loc, b.loc))
        scale = np.maximum(np.abs(b.val), 1e-30)
        diff = max(diff, float(np.max(np.abs(a.val - b.val) / scale)))
    return same, diff


def scan_layers_of(net):
    from zfraw import nn

    return [name for name, layer in net if isinstance(layer, (nn.Conv2d, nn.Linear))]


def worker_forward(model, threads, batch, repeat, backend):
    """In a fresh process with ``threads`` threads everywhere: the forward rate of ``model``
    ('zfnet_mini': the built-in one at 64x64; 'zfnet': the full ZFNet at 224x224)."""
    import zfraw
    from zfraw import builtin, models

    zfraw.set_backend(backend)
    net = builtin.load_model()[0] if model == "zfnet_mini" else models.zfnet()
    x = np.random.default_rng(0).standard_normal((batch,) + tuple(net.input_shape)).astype(np.float32)
    rate = forward_rate(zfraw.to_device(net), x, repeat)
    print(json.dumps({"model": model, "threads": threads, "batch": batch, "images_per_s": rate}))


def forward_rate_in_process(model, threads, batch, repeat, backend):
    """:func:`worker_forward` in a subprocess (thread counts are fixed when BLAS and Numba load)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    done = subprocess.run([sys.executable, __file__, "--forward-worker", model, str(threads), str(batch),
                           str(repeat), backend], env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"{model} forward worker ({threads} threads) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args):
    import zfraw
    from zfraw import builtin, data, distributed
    from zfraw.analysis import topk

    backend = args.backend or ("numba" if "numba" in zfraw.backends() else "numpy")
    zfraw.set_backend(backend)
    root, made_s = make_images(Path(args.cache) / f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}-{args.images}", args.images)
    if made_s:
        print(f"made {args.images} JPEGs in {root} in {made_s:.0f} s")
    if args.max_load is not None:
        common.wait_for_quiet(args.max_load, args.max_wait)
    info = common.machine_info(backends=[backend])
    ds = data.ImageFolder(root, skip_bad=True)
    net, meta = builtin.load_model()
    net = zfraw.to_device(net)
    transform = builtin.eval_transform(meta["mean"])
    transform224 = data.eval_transform(256, 224, meta["mean"])
    layers = scan_layers_of(net)
    n_decode = min(len(ds), 200 if args.quick else 1000)
    rows = []

    def row(task, workers, images, seconds=None, rate=None, **extra):
        rate = rate if rate is not None else images / seconds
        rows.append(dict(task=task, workers=workers, images=images, seconds=seconds, images_per_s=rate, **extra))
        print(f"{task:28s} workers={workers!s:>4} {rate:9.1f} img/s" + (f"  ({seconds:.1f} s)" if seconds else ""))

    row("decode 64 (1 thread)", 1, n_decode, rate=decode_rate(ds, transform, n_decode))
    row("decode 224 (1 thread)", 1, n_decode, rate=decode_rate(ds, transform224, n_decode))
    repeat = 2 if args.quick else 5
    threads = list(dict.fromkeys([1, os.cpu_count() or 1]))
    for t in threads:
        r = forward_rate_in_process("zfnet_mini", t, 64, repeat, backend)
        row(f"forward zfnet_mini ({t} thr)", 1, 64, rate=r["images_per_s"], threads=t)
    t0 = time.perf_counter()
    single = topk.scan(net, ds, layers, k=9, batch_size=64, transform=transform, progress=True)
    row("scan 1 process", 1, single.n_images, time.perf_counter() - t0)
    for workers in args.workers:
        t0 = time.perf_counter()
        with distributed.cluster(workers) as client:
            start_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            result = distributed.scan(net, ds, layers, k=9, batch_size=64, transform=transform, client=client,
                                      progress=True)
            seconds = time.perf_counter() - t0
        same_ids, value_diff = compare(result, single, layers)
        row(f"scan {workers} worker(s)", workers, result.n_images, seconds, cluster_start_s=start_s,
            same_ids=same_ids, max_rel_value_diff=value_diff)
    zf = {t: forward_rate_in_process("zfnet", t, args.zfnet_batch, 2 if args.quick else 3, backend) for t in threads}
    for t, r in zf.items():
        row(f"forward zfnet 224 ({t} thr)", 1, r["batch"], rate=r["images_per_s"], threads=t)
    info["load_after"] = common.load_average()
    estimate = imagenet_estimate(rows, zf)
    result = dict(kind="scan", machine=info, backend=backend, images=len(ds), layers=layers, rows=rows,
                  estimate=estimate, image_size=PHOTO_SIZE, cache=str(root))
    stem = common.result_stem("scan", info, [backend])
    paths = common.write_results(args.out, stem, result, markdown(result))
    print("wrote " + ", ".join(map(str, paths)))


def imagenet_estimate(rows, zf):
    """Hours to scan 1.3 M images for every unit of ZFNet, from the 1-thread rates."""
    dec = next(r["images_per_s"] for r in rows if r["task"].startswith("decode 224"))
    fwd = zf[1]["images_per_s"]
    core_s = 1.0 / fwd + 1.0 / dec
    out = {"core_seconds_per_image": core_s, "decode_share": (1.0 / dec) / core_s, "setups": []}
    for name, cores, how in (("one 2-core machine (this one)", 2, "per-core rate x 2"),
                             ("16 cores", 16, "extrapolated: per-core rate x 16"),
                             ("10 machines of 2 cores", 20, "extrapolated: per-core rate x 20"),
                             ("10 machines of 16 cores", 160, "extrapolated: per-core rate x 160")):
        hours = IMAGENET_IMAGES * core_s / cores / 3600
        out["setups"].append(dict(setup=name, cores=cores, hours=hours, how=how))
    return out


def markdown(result):
    info, rows = result["machine"], result["rows"]
    lines = [f"# Top-k scan throughput: {result['images']} JPEGs of {result['image_size'][0]}x"
             f"{result['image_size'][1]}, backend `{result['backend']}`\n",
             common.machine_line(info) + "\n",
             f"Scan: k = 9 for every unit of {', '.join(result['layers'])} of the built-in zfnet_mini (64x64 input). "
             "Rates in images per second; one run on a machine shared with other jobs (see the load), so "
             "read ratios measured side by side, not absolute values.\n"]
    one = next(r["images_per_s"] for r in rows if r["task"] == "forward zfnet_mini (1 thr)")
    every = [r["images_per_s"] for r in rows if r["task"].startswith("forward zfnet_mini")][-1]
    decode = next(r["images_per_s"] for r in rows if r["task"].startswith("decode 64"))
    per_worker = 1.0 / (1.0 / one + 1.0 / decode)  # one thread decodes, then forwards, image after image
    body = []
    for r in rows:
        note = []
        if r["task"] == "scan 1 process":
            note.append(f"{100 * r['images_per_s'] / every:.0f}% of the forward alone on all threads")
        elif r["task"].startswith("scan"):
            note.append(f"{100 * r['images_per_s'] / (r['workers'] * per_worker):.0f}% of {r['workers']} x "
                        f"{per_worker:.1f} (1-thread decode + forward)")
        if "cluster_start_s" in r:
            note.append(f"cluster start {r['cluster_start_s']:.1f} s apart; image ids as 1 process: "
                        f"{'same' if r['same_ids'] else 'differ'}, values within {r['max_rel_value_diff']:.1g} (relative)")
        body.append([r["task"], r["workers"], r["images"], common.fmt(r["seconds"]),
                     common.fmt(r["images_per_s"]), "; ".join(note)])
    lines.append(common.markdown_table(["task", "workers", "images", "seconds", "images/s", "note"], body,
                                       "lrrrrl"))
    est = result["estimate"]
    lines.append(f"\n## 1.3 M ImageNet-size images, every unit of ZFNet (224x224)\n\n"
                 f"Per image {1e3 * est['core_seconds_per_image']:.0f} ms of one core (1-thread ZFNet forward + "
                 f"1-thread decode and preprocessing at 224; decode share {100 * est['decode_share']:.0f}%). "
                 f"The Deep Visualization Toolbox reports {TOOLBOX_HOURS:.0f} hours for this scan.\n")
    lines.append(common.markdown_table(["setup", "cores", "hours", "how"],
                                       [[s["setup"], s["cores"], common.fmt(s["hours"]), s["how"]]
                                        for s in est["setups"]], "lrrl"))
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--forward-worker"]:
        threads, batch, repeat = (int(a) for a in argv[2:5])
        return worker_forward(argv[1], threads, batch, repeat, argv[5])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=5000, help="JPEGs in the folder (default 5000)")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="Dask worker counts (default 1, 2, 4, 8, 16 up to the CPU count)")
    p.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "zfraw", "bench-scan"),
                   help="where the generated JPEGs are kept")
    p.add_argument("--zfnet-batch", type=int, default=8, help="batch of the full ZFNet forward (default 8)")
    p.add_argument("--backend", default=None, help="zfraw backend (default numba when installed)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and decodes (a rough look)")
    p.add_argument("--out", default=str(common.RESULTS), help="directory for the JSON and Markdown")
    p.add_argument("--max-load", type=float, default=None, help="wait until the 1-minute load is below this")
    p.add_argument("--max-wait", type=float, default=900)
    args = p.parse_args(argv)
    if args.workers is None:
        args.workers = [w for w in (1, 2, 4, 8, 16) if w <= (os.cpu_count() or 1)]
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
