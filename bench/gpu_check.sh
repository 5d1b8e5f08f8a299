#!/usr/bin/env bash
# The GPU check: the whole test suite, the kernels under compute-sanitizer and the benchmarks on
# one NVIDIA GPU, offline and without pip, in about 7 minutes, so that a machine start, one run and
# a rerun of a failed stage fit a 15-minute device budget.
#
#   bench/gpu_check.sh OUTDIR                         # the default stages
#   STAGES="tests" bench/gpu_check.sh OUTDIR          # a chosen few (see STAGES below)
#   STAGES="train" bench/gpu_check.sh OUTDIR          # the real-model training steps (about 6 min)
#   STAGES="layouts" bench/gpu_check.sh OUTDIR        # the static check's calls measured (75 s)
#   QUICK=1 bench/gpu_check.sh OUTDIR                 # rehearsal on a CPU (interpreter, quick sweeps)
#   PYTHON=python3.12 COMMIT=<sha> bench/gpu_check.sh OUTDIR
#
# Everything lands in OUTDIR:
#   gpu_check.log    each stage's exit status and wall time, then a table of where the time went
#   env.txt          commit, python, torch, triton, CUDA, driver, GPU, compute-sanitizer, nvidia-smi
#   build.log        the C++ operators built for this torch (python -m fastdrop.build), which every
#                    later stage then loads
#   summary.txt      one line per failed, erroring or skipped test (pytest's -rfE lines, with skip
#                    reasons), written as each test ends, then the counts (bench/pytest_record.py)
#   junit.xml        every test's result, rewritten as tests end: both stay valid if the stage is killed
#   pytest.log       pytest's own output, with the 25 slowest tests
#   sanitizer.log    compute-sanitizer memcheck and racecheck over the kernel tests at small sizes,
#                    or why it could not run here
#   bench.log, <device>.csv/.png, report.md      the benchmark sweep and its table
#   overhead.log     host time per call at 2^12, C++ and Python launches against PyTorch (bench.host_cost)
#   static_check.md/.json                        the static model of the kernels (sm_90 SASS)
#   train_step.log, train_step.csv               STAGES=train only
#   layouts.log, layouts/<device>.csv/.md        STAGES=layouts only (after static)
#
# On the device tool (at most 8 files come back), for example:
#   COMMIT=<sha> bench/gpu_check.sh /tmp/gc; tar czf $OUT/gpu_check.tgz -C /tmp/gc .; cp /tmp/gc/{gpu_check.log,summary.txt} $OUT/
set -uo pipefail  # no -e: a failing stage is logged and the next one still runs

out=${1:?usage: bench/gpu_check.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
repo=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-python3}
quick=${QUICK:-0}
STAGES=${STAGES:-env build tests sanitizer bench overhead static report}
# Limits, seconds. The default stages: 30 + 60 + 150 + 2 x 30 + 45 + 40 + 25 + 10 = 420.
declare -A limit=([env]=30 [build]=60 [tests]=${TESTS_S:-150} [sanitizer]=30 [bench]=45 [overhead]=40
                  [static]=25 [report]=10 [train]=360 [layouts]=75)
workers=${WORKERS:-14}  # of the GPU machine's 16 cores; the controller and the compiler take the rest

cd "$repo"  # the checkout's root first on sys.path: fastdrop (with fastdrop/kernels) and bench
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
: > "$out/gpu_check.log"
log() { echo "[$(date +%T)] $*" | tee -a "$out/gpu_check.log"; }
times=()

# run NAME LIMIT LOGFILE CMD...: the command under timeout (TERM, then KILL 15 s later), its output
# appended to LOGFILE, its status and time logged.
run() {
    local name=$1 secs=$2 file=$3 t0=$SECONDS rc
    shift 3
    timeout -k 15 "$secs" "$@" >> "$file" 2>&1
    rc=$?
    local took=$((SECONDS - t0))
    times+=("$(printf '%-12s %4d s  (limit %d s)  rc %d%s' "$name" "$took" "$secs" "$rc" \
                "$([ $rc = 124 ] || [ $rc = 137 ] && echo ' TIMED OUT')")")
    log "$name: rc $rc$([ $rc = 124 ] || [ $rc = 137 ] && echo ' (timed out)') after ${took} s"
    return $rc
}

has() { "$py" -c "import $1" > /dev/null 2>&1; }

for stage in $STAGES; do
    case $stage in
    env)
        {
            echo "commit: ${COMMIT:-$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)}"
            echo "date: $(date -u +%FT%TZ)"
            "$py" - <<'EOF'
import importlib, platform, sys
import torch, triton
import fastdrop, fastdrop.kernels.dropout
print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| triton", triton.__version__)
print("cuda available:", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "(no GPU: a rehearsal)")
print("fastdrop from", fastdrop.__file__)
for name in ("pytest", "xdist", "pytest_timeout", "hypothesis", "matplotlib", "torchvision", "timm", "transformers"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '')}")
    except Exception as e:
        print(f"{name}: not importable ({type(e).__name__})")
EOF
            command -v nvidia-smi > /dev/null && timeout 15 nvidia-smi
            command -v compute-sanitizer > /dev/null && compute-sanitizer --version | tail -n 1
        } > "$out/env.txt" 2>&1
        log "env: $(grep -h "^torch\|^cuda available" "$out/env.txt" | tr '\n' ' ')"
        ;;
    build)
        : > "$out/build.log"
        run build "${limit[build]}" "$out/build.log" "$py" -m fastdrop.build
        tail -n 1 "$out/build.log" | tee -a "$out/gpu_check.log"
        ;;
    tests)
        opts=()
        if has xdist; then
            opts+=(-n "$workers" --dist loadgroup)
        else
            log "tests: pytest-xdist is not importable here: one process"
        fi
        has pytest_timeout && opts+=(--timeout 120)  # a hung test fails by name instead of eating the stage
        : > "$out/pytest.log"
        run tests "${limit[tests]}" "$out/pytest.log" "$py" -m pytest -q -rfE -p no:cacheprovider \
            -p bench.pytest_record --record-dir "$out" --durations 25 "${opts[@]}" tests
        log "tests: $(tail -n 1 "$out/summary.txt" 2>/dev/null)"
        ;;
    sanitizer)
        # The kernel tests at small sizes (every kernel, layout and variant against the CPU path).
        : > "$out/sanitizer.log"
        select=(tests/test_kernel.py tests/test_family.py tests/test_launch.py
                -k "equals_cpu_path or dropout_add_equals or on_the_gpu")
        if ! command -v compute-sanitizer > /dev/null; then
            log "sanitizer: compute-sanitizer is not on PATH here: not run" | tee -a "$out/sanitizer.log"
        elif ! timeout 60 compute-sanitizer --tool memcheck --error-exitcode 99 "$py" -c \
                "import torch; torch.ones(1, device='cuda').add_(1); torch.cuda.synchronize()" \
                >> "$out/sanitizer.log" 2>&1; then
            log "sanitizer: compute-sanitizer does not run on this machine's runtime (see sanitizer.log): not run"
        else
            for tool in memcheck racecheck; do
                echo "== $tool" >> "$out/sanitizer.log"
                run "$tool" "${limit[sanitizer]}" "$out/sanitizer.log" compute-sanitizer --tool "$tool" \
                    --error-exitcode 99 --print-limit 20 "$py" -m pytest -q -x -p no:cacheprovider "${select[@]}"
                grep -h "ERROR SUMMARY\|passed\|failed" "$out/sanitizer.log" | tail -n 2 | sed "s/^/  $tool: /" \
                    | tee -a "$out/gpu_check.log"
            done
        fi
        ;;
    bench)
        full=--full
        [ "$quick" = 1 ] && full=
        # --budget stops the sweep before new sizes, in time for the CSV and plot.
        : > "$out/bench.log"
        run bench "${limit[bench]}" "$out/bench.log" "$py" -m bench.microbench $full --out "$out" \
            --budget $((${limit[bench]} - 15))
        grep -h "^wrote .*csv" "$out/bench.log" | tee -a "$out/gpu_check.log"
        ;;
    overhead)
        : > "$out/overhead.log"
        run overhead "${limit[overhead]}" "$out/overhead.log" "$py" -m bench.host_cost --device cuda --blocks 7
        ;;
    static)
        : > "$out/static_check.md"
        run static "${limit[static]}" "$out/static_check.md" "$py" -m bench.static_check --markdown \
            --save "$out/static_check.json"
        ;;
    report)
        : > "$out/report.md"
        run report "${limit[report]}" "$out/report.md" "$py" -m bench.report "$out"
        ;;
    layouts)
        static=()
        [ -f "$out/static_check.json" ] && static=(--static "$out/static_check.json")
        lq=()
        [ "$quick" = 1 ] && lq=(--quick)
        : > "$out/layouts.log"
        run layouts "${limit[layouts]}" "$out/layouts.log" "$py" -m bench.layouts --out "$out" "${static[@]}" \
            --budget $((${limit[layouts]} - 25)) "${lq[@]}"
        ;;
    train)
        tq=()
        [ "$quick" = 1 ] && tq=(--quick)
        : > "$out/train_step.log"
        run train "${limit[train]}" "$out/train_step.log" "$py" -m bench.train_step --device cuda \
            --csv "$out/train_step.csv" --budget $((${limit[train]} - 20)) "${tq[@]}"
        ;;
    *)
        log "unknown stage $stage (known: env build tests sanitizer bench overhead static report train layouts)"
        ;;
    esac
done

{
    echo "where the time went:"
    printf '  %s\n' "${times[@]}"
    echo "  total        $SECONDS s"
} | tee -a "$out/gpu_check.log"
