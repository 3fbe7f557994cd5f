#!/usr/bin/env bash
# Everything that needs a GPU, in one go: install, the gpu-marked tests, the
# whole suite, `zfraw check` on both GPU backends, and the GPU benches.
#
#   bash bench/gpu_session.sh [OUT_DIR] [STAGES...]
#
# STAGES (default: info check tests net threads, whose limits add up to 570 s: one
# call of the device tool, whose budget is about 15 minutes in all, start included):
# info, check (`zfraw check` on both GPU backends), tests (the gpu-marked tests:
# the kernels and the product on cupy/cuda), net (the whole ZFNet at batch 128 and
# the training step at batch 128 on cupy, cuda and PyTorch cuDNN, issue 11's GPU
# targets), threads (the host's CPU: numba and PyTorch forward at 2 and 16 threads,
# issue 11's 16-thread target); and, when there is time for a second call, suite
# (every test, in 8 processes) and layers (per layer, batch 16 and 128).  Each stage
# has its own time limit, writes its log to OUT_DIR/<stage>.log and cannot stop the
# stages after it.  On the H100 of 2026-11-26 the suite took 173 s, the checks 9 s,
# layers (batch 16 and 128, no memory) 125 s, and net with its CPU columns at batch
# 128 more than 200 s (bench/results/h100-2026-11-26/).  The bench results land in
# bench/results/ and are copied to OUT_DIR.  Meant for a machine with CuPy and an
# NVIDIA GPU (and PyTorch, for the torch columns).
set -u
out=${1:-${TMPDIR:-/tmp}/zfraw-gpu-session}; shift || true
stages=${*:-info check tests net threads}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
$py -m pip install -q --no-deps --no-build-isolation -e . >"$out/install.log" 2>&1 || { cat "$out/install.log"; exit 1; }

stage() {  # stage NAME SECONDS CMD...
    local name=$1 limit=$2; shift 2
    echo "=== $name ($(date +%T), limit ${limit}s): $*"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
    tail -n "${TAIL:-15}" "$out/$name.log"
}

for s in $stages; do
    case $s in
    info)   stage info 30 bash -c "nvidia-smi; $py -c 'import cupy, numpy, zfraw; print(cupy.__version__, numpy.__version__, zfraw.backends()); cupy.show_config()'" ;;
    check)  stage check 60 bash -c "$py -m zfraw check --backend cuda; $py -m zfraw check --backend cupy" ;;
    tests)  stage tests 180 $py -m pytest -q -m gpu -rs -p no:cacheprovider ;;
    net)    stage net 180 $py bench/net.py --backends cupy cuda --torch-devices cuda --batch 128 --train-batch 128 \
                --no-memory --repeat 5 ${NET_ARGS:-} ;;
    threads) stage threads 120 $py bench/threads.py --repeat 3 --threads 2 16 ;;
    suite)  stage suite 400 $py -m pytest -q -n 8 -rs -p no:cacheprovider ;;
    layers) stage layers 600 $py bench/layers.py --backends cupy cuda --torch-devices cuda ${LAYERS_ARGS:-} ;;
    *) echo "unknown stage $s"; exit 2 ;;
    esac
done
# the results of this run, '+' in the names spelled '_' (some file transfers refuse '+')
for f in $(find bench/results -newer "$out/install.log" -name '*.json' -o -newer "$out/install.log" -name '*.md'); do
    b=$(basename "$f"); cp "$f" "$out/${b//+/_}"
done
true
