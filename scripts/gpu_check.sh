#!/usr/bin/env bash
# GPU check: install Taichi from wheels carried with the tree (no network), then run on CUDA
#   1. a smoke test (Taichi really runs on CUDA, one op on CUDA tensors),
#   2. pytest -m cuda (every op's forward and gradients on CUDA against the CPU),
#   3. taichi-dr bench raster on CUDA,
#   4. taichi-dr gradcheck on CUDA (float64 finite differences),
#   5. the demo with --arch cuda (a short run),
# each step with its own timeout, going on after a failure, everything within GPU_CHECK_BUDGET
# seconds (default 470). Writes $OUT/gpu_summary.txt (one line per step plus the key numbers) and
# $OUT/logs/<step>.log; prints the summary at the end. Exit status: number of failed steps.
#
# Prepare on a machine with network (the wheels folder is git-ignored, ~56 MiB):
#   pip download taichi==1.7.4 dill colorama rich --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_27_x86_64 -d wheels/ && rm wheels/numpy-*
# Run from the repository root:   bash scripts/gpu_check.sh
# Knobs: GPU_CHECK_ARCH=cpu (dry run of every step on the CPU), GPU_CHECK_PYTHON (default python3),
#        GPU_CHECK_WHEELS (default ./wheels), GPU_CHECK_BUDGET (seconds), GPU_CHECK_DEMO_ITERS (DMTet
#        iterations of the demo; default: the demo's own), OUT (default ./gpu_check_out).
set -u
cd "$(dirname "$0")/.."
REPO=$(pwd)
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-470}
ARCH=${GPU_CHECK_ARCH:-cuda}
PY=${GPU_CHECK_PYTHON:-python3}
WHEELS=${GPU_CHECK_WHEELS:-$REPO/wheels}
OUT=${OUT:-$REPO/gpu_check_out}
LOGS=$OUT/logs
SUMMARY=$OUT/gpu_summary.txt
SITE=${GPU_CHECK_SITE:-${TMPDIR:-/tmp}/taichi_dr_gpu_site}
mkdir -p "$LOGS"
: > "$SUMMARY"

export TAICHI_DR_ARCH=$ARCH TAICHI_DR_TEST_ARCH=$ARCH
export TI_SKIP_VERSION_CHECK=ON MPLBACKEND=Agg OMP_WAIT_POLICY=PASSIVE THP_MEM_ALLOC_ENABLE=1
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
FAILED=0

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - START) )); }

# step NAME TIMEOUT CMD...: run with min(TIMEOUT, budget left - 5 s), log to $LOGS/NAME.log
step() {
    local name=$1 limit=$2; shift 2
    local rest; rest=$(( $(left) - 5 ))
    if [ "$rest" -lt 10 ]; then
        note "SKIP  $name (budget of ${BUDGET}s used up)"; FAILED=$((FAILED + 1)); return 1
    fi
    [ "$limit" -gt "$rest" ] && limit=$rest
    local t0 rc; t0=$(date +%s)
    echo "== $name (timeout ${limit}s): $*" > "$LOGS/$name.log"
    timeout -k 5 "$limit" "$@" >> "$LOGS/$name.log" 2>&1
    rc=$?
    local dt=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then note "PASS  $name (${dt}s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then note "FAIL  $name: timed out after ${dt}s"; FAILED=$((FAILED + 1))
    else note "FAIL  $name: exit $rc after ${dt}s (tail of $name.log below)"; tail -n 15 "$LOGS/$name.log" | sed 's/^/      /' >> "$SUMMARY"; FAILED=$((FAILED + 1)); fi
    return $rc
}

note "taichi_dr GPU check, arch=$ARCH, budget ${BUDGET}s, $(date -u +%FT%TZ)"
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } 2>/dev/null | sed 's/^/gpu: /' | tee -a "$SUMMARY"
"$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| devices', torch.cuda.device_count())" 2>&1 | tee -a "$SUMMARY"

# 0. Taichi: use an installed one, else unpack the carried wheels into a private folder on
# PYTHONPATH. Unpacking (a wheel is a zip) needs neither pip, nor network, nor write access to the
# system Python (which may be "externally managed"); numpy is the machine's own.
mkdir -p "$SITE"
step install 60 "$PY" - "$WHEELS" "$SITE" <<'EOF'
import glob, importlib, os, sys, zipfile
wheels, site = sys.argv[1:]
try:
    import taichi
    print("taichi already importable:", taichi.__file__)
except ImportError:
    tag = "cp%d%d" % sys.version_info[:2]
    if not glob.glob(os.path.join(wheels, f"taichi-1.7.4-{tag}-*.whl")):
        sys.exit(f"no taichi 1.7.4 wheel for {tag} in {wheels}")
    for w in sorted(glob.glob(os.path.join(wheels, "*.whl"))):
        name = os.path.basename(w)
        if name.startswith("numpy-") or ("-cp" in name and f"-{tag}-" not in name):
            print("skip", name)  # the machine's numpy stays in charge; other Pythons' builds
            continue
        with zipfile.ZipFile(w) as z:
            # the wheel's *.data/ folder holds C headers of Taichi's C API: not needed to import it
            z.extractall(site, [m for m in z.namelist() if not m.split("/")[0].endswith(".data")])
        print("unpacked", name)
    importlib.invalidate_caches()
import taichi, dill, rich, colorama
print("taichi", taichi.__version__, "from", taichi.__file__)
EOF

step smoke 60 "$PY" - <<'EOF'
import time, torch
t = time.time()
import taichi_dr
from taichi_dr import runtime
arch = runtime.init()
want = runtime._resolve(None)
print("taichi_dr arch:", arch, "| torch device:", runtime.torch_device_for_arch())
assert arch == want, f"asked for {want}, Taichi runs on {arch} (no CUDA driver found by Taichi?)"
dev = runtime.torch_device_for_arch()
pos = torch.tensor([[[-0.8, -0.8, 0.0, 1.0], [0.8, -0.8, 0.0, 1.0], [0.0, 0.8, 0.0, 1.0]]], device=dev)
tri = torch.tensor([[0, 1, 2]], dtype=torch.int32, device=dev)
rast, _ = taichi_dr.rasterize(pos, tri, (64, 64))
cov = int((rast[..., 3] > 0).sum())
print("covered pixels:", cov, "| first op incl. compile %.2f s" % (time.time() - t))
assert rast.device.type == dev.split(":")[0] and 1000 < cov < 2000, cov
EOF

step pytest_cuda 180 "$PY" -m pytest -p no:cacheprovider -q -rA -s -m cuda tests/test_cuda.py
grep -E "vs cpu: ids differing|passed|failed|error" "$LOGS/pytest_cuda.log" | sed 's/^[.FEs]*//' | cut -c1-400 | tail -n 14 | sed 's/^/      /' >> "$SUMMARY"

step bench_raster 100 "$PY" -m taichi_dr.cli --arch "$ARCH" bench raster
sed -n '/^ *ops |/,/^$/p;/^scaling/,$p' "$LOGS/bench_raster.log" | sed 's/^/      /' >> "$SUMMARY"

step gradcheck 120 "$PY" -m taichi_dr.cli --arch "$ARCH" gradcheck
echo "      cases passed: $(grep -cE ' pass$' "$LOGS/gradcheck.log"), failed: $(grep -cE ' FAIL$' "$LOGS/gradcheck.log")" >> "$SUMMARY"
grep -E " FAIL$" "$LOGS/gradcheck.log" | head -n 10 | sed 's/^/      /' >> "$SUMMARY"

step demo 150 "$PY" -m taichi_dr.cli --arch "$ARCH" demo --out "$OUT/demo" ${GPU_CHECK_DEMO_ITERS:+--iters "$GPU_CHECK_DEMO_ITERS"}
grep -v "^==" "$LOGS/demo.log" | grep -iE "chamfer|psnr|iou|total|wrote|time" | tail -n 8 | sed 's/^/      /' >> "$SUMMARY"
rm -rf "$OUT/demo/dataset" 2>/dev/null  # keep what comes back small

note "failed steps: $FAILED, total $(( $(date +%s) - START ))s"
echo "---- $SUMMARY"; cat "$SUMMARY"
exit $FAILED
