"""Shared helpers of the bench scripts: timing, peak memory, machine facts, files.

Everything a bench script needs that is not about *what* it measures:

- :func:`time_call` -- median and interquartile range of repeated calls, with a
  warm-up (first calls compile Numba kernels and fill caches), on the CPU with
  ``time.perf_counter`` and on a GPU with CuPy events;
- :func:`gemm_rates` -- the machine's own float32 GEMM rate, the ceiling the
  tables compare against;
- :func:`peak_delta` and :func:`run_worker` -- peak memory of one call, measured
  as the rise of the process's resident-set high-water mark (``VmHWM``) in a
  worker subprocess (see :func:`peak_delta` for the method);
- :func:`machine_info` -- CPU model, cores, library versions, BLAS build,
  thread counts, load and date, stored with every result;
- :func:`write_atomic`, :func:`result_stem`, :func:`markdown_table` -- files.

Nothing here imports torch or cupy at module level: both are optional.
"""
from __future__ import annotations

import ctypes
import datetime
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"

#: environment of the memory workers: every block of 64 KiB or more gets its own
#: mmap and goes back to the OS when freed, so the resident set follows the live
#: arrays (glibc's default threshold grows to 32 MiB after the first big free,
#: after which freed arrays stay resident and hide later peaks)
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}

GPU_BACKENDS = ("cupy", "cuda")
#: PyTorch on the CPU and on the GPU (cuDNN / cuBLAS), the two reference columns
TORCH = "torch"
TORCH_CUDA = "torch-cuda"
TORCH_IMPLS = (TORCH, TORCH_CUDA)
#: every implementation whose work runs on a GPU (timed with events, not wall clock)
GPU_IMPLS = GPU_BACKENDS + (TORCH_CUDA,)

#: the input side of each model the benches build (``--image-size`` overrides it)
IMAGE_SIDES = {"zfnet": 224, "alexnet": 227, "zfnet_mini": 64}


def image_side(model, given=None):
    """``given``, else the model's own input side (:data:`IMAGE_SIDES`)."""
    return given or IMAGE_SIDES[model]


def alternating_medians(fns, repeat):
    """{name: median ms} of the callables ``fns`` ({name: fn}), run in turn: one warm-up
    round, then ``repeat`` rounds, the order reversed every other round, so that a
    drift of the machine's speed hits each alike."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for r in range(repeat):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * float(np.median(ts)) for name, ts in times.items()}


#: ZFNet's convolutions at 224x224 as the kernel benches time them:
#: name -> (input channels C, filters F, window k, stride, pad, input side H)
ZFNET_CONVS = {"conv1": (3, 96, 7, 2, 1, 224), "conv2": (96, 256, 5, 2, 0, 55), "conv3": (256, 384, 3, 1, 1, 13),
               "conv4": (384, 384, 3, 1, 1, 13), "conv5": (384, 256, 3, 1, 1, 13)}


def reference_for(impl):
    """The PyTorch column a zfraw backend is compared with: torch-cuda for a GPU backend."""
    return TORCH_CUDA if impl in GPU_BACKENDS else TORCH


def torch_impls(requested, backends):
    """The PyTorch implementations to run: ``requested`` (a list of 'cpu'/'cuda'), or by
    default 'cpu' always and 'cuda' when a GPU backend runs."""
    devices = requested or (["cpu"] + (["cuda"] if any(b in GPU_BACKENDS for b in backends) else []))
    return [TORCH if d == "cpu" else TORCH_CUDA for d in dict.fromkeys(devices)]


# ============================================================== optional libraries

def torch_installed():
    """True when PyTorch can be imported (checked without importing it)."""
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def import_torch(threads=None, cuda=False):
    """``torch`` with ``threads`` intra-op threads, or None when it is not installed.

    With ``cuda``: PyTorch on the GPU, set up as the strongest float32 reference --
    ``cudnn.benchmark`` on (cuDNN times its algorithms on the first call of each
    shape, which the warm-up absorbs) and TF32 off for convolutions and matrix
    products alike (zfraw's cuBLAS GEMMs are plain float32 too).
    """
    try:
        import torch
    except ImportError:
        return None
    if threads:
        torch.set_num_threads(int(threads))
    if cuda:
        if not torch.cuda.is_available():
            raise SystemExit("torch-cuda: this PyTorch sees no CUDA GPU")
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return torch


def torch_device(impl):
    """'cuda' for the torch-cuda column, else 'cpu'."""
    return "cuda" if impl == TORCH_CUDA else "cpu"


def cpu_threads():
    """Threads the CPU backends use: Numba's count when Numba is there, else the CPU count."""
    try:
        import numba

        return int(numba.get_num_threads())
    except ImportError:
        return os.cpu_count() or 1


def gpu_sync(backend):
    """A function that waits for the GPU when ``backend`` runs there, else None."""
    if backend not in GPU_BACKENDS:
        return None
    import cupy

    return cupy.cuda.Device().synchronize


# ============================================================== timing

def _summary(seconds):
    """Median and quartiles (ms) of a list of durations in seconds."""
    ms = sorted(1e3 * s for s in seconds)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median_ms": statistics.median(ms), "q1_ms": q1, "q3_ms": q3, "iqr_ms": q3 - q1,
            "min_ms": ms[0], "runs": len(ms)}


def timer_for(impl):
    """How ``impl`` is timed: 'cupy' or 'torch' (GPU events), or False (wall clock)."""
    if impl in GPU_BACKENDS:
        return "cupy"
    return "torch" if impl == TORCH_CUDA else False


def _gpu_events(kind):
    """(start, end, seconds(start, end)) events of CuPy or PyTorch on the current stream."""
    if kind == "torch":
        import torch

        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        return start, end, lambda a, b: a.elapsed_time(b) / 1e3
    import cupy

    return cupy.cuda.Event(), cupy.cuda.Event(), lambda a, b: cupy.cuda.get_elapsed_time(a, b) / 1e3


def time_call(fn, repeat=7, warmup=1, gpu=False):
    """Time ``fn()``: ``warmup`` untimed calls, then ``repeat`` timed ones.

    Returns a dict with ``median_ms``, ``q1_ms``, ``q3_ms``, ``iqr_ms``, ``min_ms``
    and ``runs``.  On the CPU each call is timed with ``time.perf_counter``; with
    ``gpu`` ('cupy' or True, or 'torch') each call is bracketed by that library's
    CUDA events on its current stream and the end event is synchronized (the GPU
    time, not the launch time).
    """
    for _ in range(warmup):
        fn()
    if gpu:
        start, end, elapsed = _gpu_events("torch" if gpu == "torch" else "cupy")
        seconds = []
        for _ in range(repeat):
            start.record()
            fn()
            end.record()
            end.synchronize()
            seconds.append(elapsed(start, end))
        return _summary(seconds)
    seconds = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - t0)
    return _summary(seconds)


def gflops(flops, ms):
    """GFLOP/s of ``flops`` floating-point operations done in ``ms`` milliseconds."""
    return None if not flops or not ms else flops / (ms * 1e-3) / 1e9


# ============================================================== GEMM ceiling

def gemm_rates(xp=np, repeat=7, size=2048, conv_shape=None):
    """Measured float32 GEMM rates of this machine (BLAS via ``xp.matmul``).

    ``square``: (size x size) @ (size x size); ``conv_shaped``: (M x K) @ (K x N)
    with the default the shape of ZFNet's conv4 at batch 16 as one GEMM
    (384 filters, K = 384*3*3, N = 16*13*13).  Returns
    {name: {"shape": (M, K, N), "gflops": ..., "median_ms": ...}}.
    """
    if conv_shape is None:  # ZFNet's conv4 at batch 16, scaled down with a smaller square
        scale = min(1.0, size / 2048)
        conv_shape = (max(1, int(384 * scale)), max(1, int(3456 * scale)), max(1, int(2704 * scale)))
    rng = np.random.default_rng(0)
    gpu = xp is not np
    out = {}
    for name, (m, k, n) in (("square", (size, size, size)), ("conv_shaped", tuple(conv_shape))):
        a = xp.asarray(rng.standard_normal((m, k), dtype=np.float32))
        b = xp.asarray(rng.standard_normal((k, n), dtype=np.float32))
        c = xp.empty((m, n), dtype=np.float32)
        t = time_call(lambda: xp.matmul(a, b, out=c), repeat=repeat, warmup=2, gpu=gpu)
        out[name] = {"shape": [m, k, n], "gflops": gflops(2.0 * m * k * n, t["median_ms"]), **t}
        del a, b, c
    return out


# ============================================================== peak memory

def _status_kib():
    """{'VmRSS': KiB, 'VmHWM': KiB} of this process (Linux), or {} elsewhere."""
    out = {}
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def _reset_high_water_mark():
    """Set VmHWM back to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def memory_supported():
    """True where the RSS high-water mark can be read and reset (Linux)."""
    if not _status_kib():
        return False
    try:
        _reset_high_water_mark()
    except OSError:
        return False
    return True


def peak_delta(fn):
    """Peak extra resident memory (bytes) while ``fn()`` runs, and its result dropped.

    Method: collect garbage, read the resident set size (RSS), reset the
    high-water mark to it, call ``fn`` once, then read the high-water mark
    (``VmHWM``).  The difference is everything ``fn`` touched at its worst
    moment: outputs, temporaries, column buffers, Numba scratch, PyTorch and
    oneDNN buffers alike (tracemalloc would see only NumPy's allocations).  The
    inputs, weights and libraries are already resident and are not counted.
    Call ``fn`` once before (warm-up) so that compilation and one-time caches
    are not counted either, and run in a process started with
    :data:`MEMORY_ENV` (see :func:`run_worker`) so freed blocks leave the RSS.
    """
    gc.collect()
    before = _status_kib()["VmRSS"]
    _reset_high_water_mark()
    result = fn()
    peak = _status_kib()["VmHWM"]
    del result
    gc.collect()
    return 1024 * max(0, peak - before)


def gpu_peak_delta(fn, impl):
    """Peak extra GPU memory (bytes) while ``fn()`` runs on a GPU impl, its result dropped.

    Counted at the allocator: for a zfraw GPU backend every block CuPy's memory
    pool hands out and takes back (a ``cupy.cuda.MemoryHook``); for torch-cuda
    PyTorch's caching allocator (``max_memory_allocated`` above what was allocated
    before), cuDNN's workspace included.  Neither counts what the CUDA libraries
    allocate for themselves outside the allocator (cuBLAS's own workspace).
    """
    gc.collect()
    if impl == TORCH_CUDA:
        import torch

        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        result = fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        del result
        return int(peak)
    import cupy

    class PeakHook(cupy.cuda.MemoryHook):
        name = "zfraw_bench_peak"

        def __init__(self):
            self.current = self.peak = 0

        def malloc_postprocess(self, **kw):
            self.current += kw["mem_size"]
            self.peak = max(self.peak, self.current)

        def free_postprocess(self, **kw):
            self.current -= kw["mem_size"]

    hook = PeakHook()
    cupy.cuda.Device().synchronize()
    with hook:
        result = fn()
        cupy.cuda.Device().synchronize()
        del result
    return int(hook.peak)


def run_worker(script, args, memory=True, timeout=3600, log=None):
    """Run ``python script args`` in a fresh process; returns the JSON of its last stdout line.

    Every implementation is timed (and its memory measured) in a process of its
    own: PyTorch and Numba both use an OpenMP runtime, and in one process they
    share it -- with the wait policy of whichever loaded it first -- so each
    would run under the other's settings (PyTorch's spinning workers made
    zfraw's numba conv1 20x slower).  ``memory`` adds :data:`MEMORY_ENV`.
    Lines the worker prints before the last are passed to ``log``.
    """
    env = dict(os.environ, **MEMORY_ENV) if memory else dict(os.environ)
    done = subprocess.run([sys.executable, str(script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"worker {Path(script).name} {' '.join(map(str, args))} failed:\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    if log is not None:
        for line in lines[:-1]:
            log(line)
    return json.loads(lines[-1])


def mib(nbytes):
    return None if nbytes is None else nbytes / 2**20


# ============================================================== load

def load_average():
    """The 1-minute load average (0.0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def wait_for_quiet(max_load, max_wait_s=900, poll_s=15, log=print):
    """Sleep until the 1-minute load is below ``max_load`` (or ``max_wait_s`` passed).

    Returns the load seen last.  Other processes on a small machine skew every
    timing; a published run should start on a quiet machine.
    """
    t0 = time.monotonic()
    load = load_average()
    while load >= max_load and time.monotonic() - t0 < max_wait_s:
        log(f"load {load:.2f} >= {max_load}: waiting ({time.monotonic() - t0:.0f} s so far)")
        time.sleep(poll_s)
        load = load_average()
    return load


# ============================================================== machine facts

def cpu_model():
    """The CPU model name from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "sse4")))
    except OSError:
        pass
    return []


def _openblas():
    """{'threads', 'config', 'core'} of the OpenBLAS NumPy loaded (None values where unknown).

    ``core`` is the kernel set OpenBLAS picked for this CPU at load time
    (``OPENBLAS_CORETYPE`` overrides it): 'Haswell' means AVX2 kernels,
    'SkylakeX'/'Cooperlake' AVX-512 ones -- on an AVX-512 CPU the difference is
    twice the float32 GEMM rate.
    """
    out = {"threads": None, "config": None, "core": None}
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower() and "/" in line}
    except OSError:
        return out
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", ""), ("scipy_openblas", "")):
            get_threads = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            if get_threads is None:
                continue
            out["threads"] = int(get_threads())
            for key, name in (("config", "get_config"), ("core", "get_corename")):
                fn = getattr(lib, f"{prefix}_{name}{suffix}", None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    out[key] = fn().decode(errors="replace")
            return out
    return out


def _blas_config():
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return {k: deps.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception:  # older NumPy: no dict mode
        return None


def machine_info(torch=None, backends=()):
    """Facts a timing needs to be read: hardware, software, threads, load, date."""
    import scipy

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": _cpu_flags(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "blas": _blas_config(),
        "load_1min": load_average(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                               "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_WAIT_POLICY",
                                               "OPENBLAS_CORETYPE", "OPENBLAS_THREAD_TIMEOUT", "ZFRAW_WORKSPACE_MB")},
        "threads": {},
    }
    blas = _openblas()
    info["threads"]["openblas"] = blas["threads"]
    info["openblas_build"] = blas["config"]
    info["openblas_core"] = blas["core"]
    try:
        import numba

        info["numba"] = numba.__version__
        info["threads"]["numba"] = numba.get_num_threads()
        try:
            info["numba_threading_layer"] = numba.threading_layer()
        except ValueError:  # no parallel kernel has run yet
            info["numba_threading_layer"] = None
    except ImportError:
        info["numba"] = None
    if torch is not None:
        info.update(torch_info(torch))
        info["threads"]["torch"] = torch.get_num_threads()
    import zfraw

    info["zfraw"] = zfraw.__version__
    info["openblas_thread_timeout"] = list(zfraw.blas.thread_timeout())
    info["workspace_bytes"] = zfraw.workspace_bytes()
    if any(b in GPU_BACKENDS for b in backends):
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        info["gpu"] = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        info["cupy"] = cupy.__version__
        info["cuda_runtime"] = cupy.cuda.runtime.runtimeGetVersion()
    return info


def torch_info(torch, cuda=False):
    """PyTorch's version and parallel set-up (from a process that imported it); with
    ``cuda`` also its CUDA and cuDNN versions, GPU and settings."""
    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "torch_parallel": torch.__config__.parallel_info()}
    if cuda:
        info.update({"torch_cuda": torch.version.cuda, "torch_cudnn": torch.backends.cudnn.version(),
                     "torch_gpu": torch.cuda.get_device_name(),
                     "torch_cudnn_benchmark": torch.backends.cudnn.benchmark,
                     "torch_tf32": bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)})
    return info


def numba_layer():
    """Numba's threading layer once a parallel kernel has run in this process, else None."""
    try:
        import numba

        return numba.threading_layer()
    except (ImportError, ValueError):
        return None


# ============================================================== files

def slug(text):
    """Lower-case words joined by '-': 'AMD EPYC 7B13' -> 'amd-epyc-7b13'."""
    text = re.sub(r"\((r|tm)\)|cpu|processor|\d+-core", " ", text.lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "machine"


def result_stem(kind, info, impls):
    """File stem of a result: '<kind>-<cpu>-<cores>c[-<gpu>]-blas-<core>-<impl>+<impl>'.

    The OpenBLAS kernel set is part of the name: the same machine gives twice the
    GEMM rate with AVX-512 kernels as with AVX2 ones (``OPENBLAS_CORETYPE``).
    """
    parts = [kind, slug(info["cpu_model"]), f"{info['cpu_count']}c"]
    if info.get("gpu"):
        parts.append(slug(info["gpu"]))
    if info.get("openblas_core"):
        parts += ["blas", slug(info["openblas_core"])]
    return "-".join(parts) + "-" + "+".join(impls)


def write_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    from zfraw.nn import atomic_write

    return atomic_write(path, lambda fh: fh.write(text.encode()), suffix=".tmp")


def write_results(out_dir, stem, result, markdown):
    """Write ``<stem>.json``, then ``<stem>.md``, under ``out_dir`` atomically; returns both paths.

    ``markdown`` is the text, or a callable that makes it once the JSON is on disk
    (the CPU-versus-GPU sections read the folder's JSON files, this run's included).
    """
    out_dir = Path(out_dir)
    json_path = write_atomic(out_dir / f"{stem}.json", json.dumps(result, indent=1, default=_jsonable) + "\n")
    md_path = write_atomic(out_dir / f"{stem}.md", markdown() if callable(markdown) else markdown)
    return json_path, md_path


def _jsonable(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if isinstance(v, (tuple, set)):
        return list(v)
    raise TypeError(f"not JSON serializable: {type(v).__name__}")


def load_results(out_dir, kind):
    """Every result JSON of ``kind`` ('layers' or 'net') under ``out_dir``, by path."""
    found = {}
    for path in sorted(Path(out_dir).glob(f"{kind}-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if data.get("kind") == kind:
            found[str(path)] = data
    return found


def has_gpu_rows(result):
    return any(r["impl"] in GPU_IMPLS for r in result.get("rows", []))


def cpu_gpu_pairs(out_dir, kind):
    """What the CPU-versus-GPU sections compare: [(gpu, cpu, same_machine)], each a
    (path, result) pair.  Every result with GPU rows is paired with itself when it
    has CPU columns too (measured side by side), else with the most complete (then
    newest) result that has only CPU rows (another machine, most likely a
    workstation without a GPU)."""
    found = load_results(out_dir or RESULTS, kind)
    cpu_only = [(p, r) for p, r in found.items() if not has_gpu_rows(r)]
    # the most complete CPU result (a run of a few --cases covers little), the newest among equals
    newest_cpu = max(cpu_only, key=lambda pr: (len({tuple(v for k, v in r.items() if k in ("layer", "op", "task"))
                                                     for r in pr[1].get("rows", [])}),
                                               pr[1].get("machine", {}).get("date", "")), default=None)
    pairs = []
    for path, res in found.items():
        if not has_gpu_rows(res):
            continue
        if any(i not in GPU_IMPLS for i in res["impls"]):
            pairs.append(((path, res), (path, res), True))
        elif newest_cpu is not None:
            pairs.append(((path, res), newest_cpu, False))
    return pairs


def pair_caption(gpu, cpu, same_machine):
    """The sentence above one CPU-versus-GPU table."""
    (gpu_path, g), (cpu_path, c) = gpu, cpu
    if same_machine:
        return (f"From `{Path(gpu_path).name}` ({g['machine'].get('gpu')} vs {g['machine']['cpu_model']}, "
                f"{g['machine']['cpu_count']} CPUs); speed-up = CPU ms / GPU ms, measured side by side on that "
                "machine.\n")
    return (f"GPU from `{Path(gpu_path).name}` ({g['machine'].get('gpu')}), CPU from `{Path(cpu_path).name}` "
            f"({c['machine']['cpu_model']}, {c['machine']['cpu_count']} CPUs): two machines and two runs, so "
            "read the ratios as 'this workstation against that GPU', not as a controlled comparison; "
            "speed-up = CPU ms / GPU ms.\n")


def cpu_gpu_comparisons(out_dir, kind):
    """The material of a "CPU versus GPU" section: [(caption, gpus, cpus, rows)], one
    per pair of :func:`cpu_gpu_pairs` -- the GPU impls, the CPU impls, and the rows
    of both (GPU rows from the GPU result, CPU rows from the CPU one)."""
    out = []
    for gpu, cpu, same in cpu_gpu_pairs(out_dir, kind):
        (_, g), (_, c) = gpu, cpu
        gpus = [i for i in g["impls"] if i in GPU_IMPLS]
        cpus = [i for i in c["impls"] if i not in GPU_IMPLS]
        rows = [r for r in g["rows"] if r["impl"] in gpus] + [r for r in c["rows"] if r["impl"] in cpus]
        out.append((pair_caption(gpu, cpu, same), gpus, cpus, rows))
    return out


def gpu_section(out_dir, kind, render):
    """The "CPU versus GPU" section of a report: for each comparison of
    :func:`cpu_gpu_comparisons`, its caption, then ``render(gpus, cpus, rows)`` (a
    list of Markdown blocks: the script's own tables)."""
    lines = ["\n## CPU versus GPU\n"]
    comparisons = cpu_gpu_comparisons(out_dir, kind)
    if not comparisons:
        lines.append(NO_GPU_RESULT)
    for caption, gpus, cpus, rows in comparisons:
        lines.append(caption)
        lines += render(gpus, cpus, rows)
    return "\n".join(lines)


def speedup_cells(got, gpus, cpus, digits):
    """Table cells for one row: each impl's ms (GPU then CPU), then CPU ms / GPU ms
    for every (GPU, CPU) pair; ``got`` maps impl -> row or None."""
    ms = [fmt(got[i]["median_ms"], digits) if got[i] else "-" for i in gpus + cpus]
    ratios = [fmt(got[y]["median_ms"] / got[x]["median_ms"], 1, "x") if got[x] and got[y] and got[x]["median_ms"]
              else "-" for x in gpus for y in cpus]
    return ms + ratios


def speedup_headers(gpus, cpus):
    return [f"{i} ms" for i in gpus + cpus] + [f"{x} vs {y}" for x in gpus for y in cpus]


NO_GPU_RESULT = ("No GPU result in bench/results yet (no `cupy`/`cuda` backend has run), so there is no "
                 "CPU-versus-GPU table.  Run the script on a machine with CuPy and a CUDA GPU "
                 "(`bash bench/gpu_session.sh` runs everything); its JSON lands beside this one and this "
                 "section then compares them.\n")


# ============================================================== Markdown

def fmt(v, digits=1, suffix=""):
    """A number for a table cell ('-' for missing)."""
    if v is None:
        return "-"
    if isinstance(v, float) and (v != v):
        return "-"
    return f"{v:.{digits}f}{suffix}"


def markdown_table(headers, rows, align=None):
    """A GitHub Markdown table; ``align`` is a string of 'l'/'r' per column (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def machine_line(info):
    """One Markdown line that says where and how a result was measured."""
    t = info.get("threads", {})
    parts = [f"{info['cpu_model']}, {info['cpu_count']} CPUs"]
    if info.get("gpu"):
        parts.append(f"GPU {info['gpu']} (CuPy {info.get('cupy')}, CUDA runtime {info.get('cuda_runtime')})")
    parts.append(f"numpy {info['numpy']}")
    if info.get("numba"):
        layer = info.get("numba_threading_layer")
        parts.append(f"numba {info['numba']} ({t.get('numba')} threads" + (f", {layer})" if layer else ")"))
    if info.get("torch"):
        parts.append(f"torch {info['torch']}" + (f" ({t['torch']} threads)" if t.get("torch") else ""))
    if info.get("torch_cudnn"):
        parts.append(f"torch-cuda: CUDA {info.get('torch_cuda')}, cuDNN {info['torch_cudnn']}, "
                     f"cudnn.benchmark {info.get('torch_cudnn_benchmark')}, TF32 {info.get('torch_tf32')}")
    parts.append(f"OpenBLAS {t.get('openblas')} threads, {info.get('openblas_core')} kernels")
    if info.get("openblas_thread_timeout"):
        exponent, how = info["openblas_thread_timeout"]
        parts.append(f"OpenBLAS idle spin 2^{exponent} cycles ({how})")
    parts.append(f"1-min load {info.get('load_1min', 0):.2f} before, {info.get('load_after', 0):.2f} after")
    parts.append(info["date"])
    return "; ".join(parts)


def common_arguments(parser, default_batches):
    """The options every bench script takes."""
    parser.add_argument("--quick", action="store_true", help="few repeats (a rough look, not for publishing)")
    parser.add_argument("--repeat", type=int, default=None, help="timed runs per case (default 7, --quick 2)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help=f"batch sizes (default {' '.join(map(str, default_batches))}, plus 128 on a GPU)")
    parser.add_argument("--backends", nargs="+", default=None, help="zfraw backends (default: all that run here)")
    parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out even when it is installed")
    parser.add_argument("--torch-devices", nargs="+", choices=("cpu", "cuda"), default=None,
                        help="PyTorch columns: cpu (torch) and/or cuda (torch-cuda, cuDNN); default cpu, plus cuda "
                             "when a GPU backend runs")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--out", default=str(RESULTS), help="directory for the JSON and Markdown (default bench/results)")
    parser.add_argument("--max-load", type=float, default=None,
                        help="wait until the 1-minute load is below this before measuring")
    parser.add_argument("--max-wait", type=float, default=900, help="longest wait for --max-load, seconds")
    parser.add_argument("--gemm-size", type=int, default=2048,
                        help="side of the square GEMM of the ceiling (default 2048; smaller also shrinks the "
                             "conv-shaped one, for tests)")
    return parser


def resolve_common(args, default_batches):
    """(backends, batches, repeat) from parsed :func:`common_arguments`."""
    import zfraw

    available = zfraw.backends()
    backends = args.backends or available
    missing = [b for b in backends if b not in available]
    if missing:
        raise SystemExit(f"backend(s) {missing} cannot run here; available: {available}")
    batches = args.batch or list(default_batches) + ([128] if any(b in GPU_BACKENDS for b in backends) else [])
    repeat = args.repeat or (2 if args.quick else 7)
    return backends, batches, repeat
