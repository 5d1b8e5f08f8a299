#!/usr/bin/env bash
# The GPU check: the tests and the full benchmark on one NVIDIA GPU, offline and without pip,
# in 9 minutes. Everything lands in OUTDIR: gpu_check.log, nvidia-smi.txt, pytest.log,
# bench.log, the benchmark's CSV and plot, report.md, overhead.log (host time per call at
# 2^12), the static check (static_check.md/.json) and the layouts benchmark next to it
# (layouts.log, layouts/<device>.csv and .md).
#
#   bench/gpu_check.sh OUTDIR
#   PYTHON=python3.11 bench/gpu_check.sh OUTDIR   # the interpreter with torch and triton
#   QUICK=1 bench/gpu_check.sh OUTDIR             # quick benchmark: to try the script on a CPU
set -uo pipefail  # no -e: a failing stage is logged and the next one still runs

out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
# Time limits, seconds: 15 + 30 + 225 + 110 + 30 + 40 + 75 + 15 = 540 (9 minutes). On an
# H200 the tests got through about a third of the suite in 140 s (Triton compiles each new
# kernel there); the full sweep took 60 s, static 25 s, layouts 56 s.
tests_s=225 bench_s=110 overhead_s=30 static_s=40 layouts_s=75
full=--full quick=
[ "${QUICK:-0}" = 1 ] && full= quick=--quick

log() { echo "[$(date +%T)] $*" | tee -a "$out/gpu_check.log"; }

# fastdrop laid out as pip installs it (pyproject's package-dir maps kernels/ to fastdrop.kernels).
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r "$repo/fastdrop" "$stage/fastdrop"
rm -rf "$stage/fastdrop/kernels"
cp -r "$repo/kernels" "$stage/fastdrop/kernels"
find "$stage" -name __pycache__ -prune -exec rm -rf {} +
# Run from the stage: sys.path starts with the working directory, and the repo's own
# fastdrop/ (no kernels/ inside) must not shadow the staged one. The repo stays on the
# path after it for bench/.
export PYTHONPATH="$stage:$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
cd "$stage"
log "repo $repo, stage $stage, python $(command -v "$py")"

timeout 15 nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || log "nvidia-smi: rc $?"

timeout 30 "$py" - <<'EOF' 2>&1 | tee -a "$out/gpu_check.log"
import importlib, sys
import torch, triton
import fastdrop, fastdrop.kernels
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| triton", triton.__version__, "| cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
print("fastdrop from", fastdrop.__file__)
for name in ("pytest", "hypothesis", "matplotlib"):
    try:
        importlib.import_module(name)
    except ImportError:
        print("missing:", name)
EOF

timeout -k 10 "$tests_s" "$py" -m pytest -q -p no:cacheprovider --continue-on-collection-errors --rootdir "$repo" -c "$repo/pyproject.toml" \
    "$repo/tests/test_kernel.py" "$repo/tests/test_integration.py" "$repo/tests/test_family.py" \
    "$repo/tests" > "$out/pytest.log" 2>&1  # the GPU-heavy files first, should time run out
rc=$?
log "pytest: rc $rc$([ $rc = 124 ] && echo ' (timed out)'): $(tail -n 1 "$out/pytest.log")"

# --budget stops the sweep before new sizes in time for the CSV and plot; timeout is the backstop.
timeout -k 10 "$bench_s" "$py" -m bench.microbench $full --out "$out" --budget $((bench_s - 45)) \
    > "$out/bench.log" 2>&1
rc=$?
log "benchmark: rc $rc$([ $rc = 124 ] && echo ' (timed out)'): $(grep -h "^wrote .*csv" "$out/bench.log")"

# Host time per call at 2^12, where the sweep found fastdrop 1.25-7.4x slower than PyTorch.
timeout -k 5 "$overhead_s" "$py" -m bench.gpu_overhead > "$out/overhead.log" 2>&1
rc=$?
log "overhead: rc $rc$([ $rc = 124 ] && echo ' (timed out)')"

# The static model (sm_90 SASS of the kernels each listed call launches), then the same calls
# measured, each next to its prediction: layouts/<device>.md.
timeout -k 5 "$static_s" "$py" -m bench.static_check --markdown --save "$out/static_check.json" \
    > "$out/static_check.md" 2>&1
rc=$?
log "static check: rc $rc$([ $rc = 124 ] && echo ' (timed out)')"
timeout -k 10 "$layouts_s" "$py" -m bench.layouts --out "$out" --static "$out/static_check.json" \
    --budget $((layouts_s - 25)) $quick > "$out/layouts.log" 2>&1
rc=$?
log "layouts: rc $rc$([ $rc = 124 ] && echo ' (timed out)'): $(grep -h "^wrote\|^no CUDA" "$out/layouts.log")"

timeout 15 "$py" -m bench.report "$out" > "$out/report.md" 2>&1 || log "report: rc $?"
log "done"
