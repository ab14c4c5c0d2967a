#!/usr/bin/env bash
# One GPU check for a short loan (about 8 minutes on one H200): build, GPU tests,
# compute-sanitizer (memcheck, racecheck) on the tally, upsample and quantile kernels, then the
# benchmarks: tally against its floor, Triton tally work counters, every op against its
# bandwidth floor, a Broden-size end-to-end dissection, and GAN dissection of 10^6 samples with
# flat statistics memory. Each step has its own time budget (and all share a deadline); each
# streams its output to files under $OUT as it runs, and summary.json is rewritten after every
# step, so a step cut short keeps what the earlier ones wrote.
#
#   OUT=/some/dir benchmarks/gpu_check.sh        # on the GPU machine
#   benchmarks/gpu_check.sh --dry-run            # the same steps on CPU, small sizes (CI, < 60 s)
#   ... --steps probe,sanitizer                  # only these steps
#
# Files in $OUT (at most 8, as the device tool returns): summary.json (steps: status, seconds,
# reason), check.log (everything not below), build.log, pytest.log, sanitizer.log, bench.md
# (the benchmark tables), bench.jsonl (one JSON line per measured result).
# Budgets: GPU_CHECK_DEADLINE (seconds, default 470; 90 with --dry-run, which takes ~45 s),
# GPU_CHECK_BUDGET_<STEP> (seconds) per step.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
ONLY=""
while (($#)); do
  case $1 in
    --dry-run) DRY=1 ;;
    --steps) ONLY=",$2,"; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

export OUT=${OUT:-$ROOT/build/gpu_check}     # exported: the steps append to $OUT/bench.jsonl
mkdir -p "$OUT"
DEADLINE=${GPU_CHECK_DEADLINE:-$((DRY ? 90 : 470))}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
STEPS_JSON=()
FAILED=0

# ---------------------------------------------------------------------------------- helpers
write_summary() {
  local IFS=,
  printf '{"dry_run": %s, "deadline_s": %s, "elapsed_s": %s, "steps": [%s]}\n' \
    "$([ $DRY = 1 ] && echo true || echo false)" "$DEADLINE" "$SECONDS" "${STEPS_JSON[*]}" >"$OUT/summary.json"
}

record() {  # name status seconds reason
  STEPS_JSON+=("{\"step\": \"$1\", \"status\": \"$2\", \"seconds\": $3, \"reason\": \"$4\"}")
  printf '%-14s %-8s %4ss  %s\n' "$1" "$2" "$3" "$4" | tee -a "$OUT/check.log"
  [ "$2" = failed ] || [ "$2" = timeout ] && FAILED=1
  write_summary
}

wanted() { [ -z "$ONLY" ] || [[ $ONLY == *",$1,"* ]]; }

budget_for() {  # step default -> seconds (GPU_CHECK_BUDGET_<STEP> overrides)
  local var="GPU_CHECK_BUDGET_${1^^}"
  echo "${!var:-$2}"
}

run_step() {  # name default-budget log command...
  local name=$1 budget log=$3 left t0 rc
  budget=$(budget_for "$1" "$2")
  shift 3
  wanted "$name" || return 0
  left=$((DEADLINE - SECONDS))
  if ((left < 3)); then
    record "$name" skipped 0 "no time left before the ${DEADLINE} s deadline"
    return 0
  fi
  ((budget > left)) && budget=$left
  echo "== $name (budget ${budget} s): $*" >>"$OUT/$log"
  t0=$SECONDS
  timeout --kill-after=5 "$budget" "$@" >>"$OUT/$log" 2>&1
  rc=$?
  case $rc in
    0) record "$name" ok $((SECONDS - t0)) "log: $log" ;;
    124|137) record "$name" timeout $((SECONDS - t0)) "cut at ${budget} s; partial output in $log" ;;
    *) record "$name" failed $((SECONDS - t0)) "exit $rc; see $log" ;;
  esac
}

skip_step() {  # name reason
  wanted "$1" && record "$1" skipped 0 "$2"
  return 0
}

have_gpu() { $PY -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }

# ------------------------------------------------------------------------------------ steps
: >"$OUT/check.log"
write_summary
if [ $DRY = 0 ] && ! have_gpu; then
  echo "gpu_check.sh: torch sees no CUDA GPU here; use --dry-run on a CPU machine" | tee -a "$OUT/check.log"
  record setup failed 0 "no CUDA GPU visible to torch"
  exit 2
fi

run_step env 15 check.log bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv \
  || echo 'no nvidia-smi here'; $PY -c 'import sys, torch; print(sys.version.split()[0], torch.__version__, torch.version.cuda)'"

if [ $DRY = 1 ]; then
  skip_step build "dry run: uses the installed build (pip install -e . made it)"
else
  # pip's editable install; if pip cannot (an old setuptools), the in-place build
  run_step build 150 build.log bash -c "DK_BUILD_JOBS=$(nproc) $PY -m pip install --no-build-isolation --no-deps -e . \
    || DK_BUILD_JOBS=$(nproc) $PY setup.py build_ext --inplace"
fi

# What backend choice sees: built archs, runtime, driver, capability, auto's pick for CUDA tensors.
run_step probe 20 check.log $PY - <<'EOF'
import json, torch
from dissect_kernels import _native
cuda = _native.native("_cuda")
facts = {"part": "probe", "cuda_module": cuda is not None, "torch_cuda": torch.cuda.is_available()}
if cuda is not None:
    facts.update(built_archs=cuda.built_archs(), runtime_version=cuda.runtime_version(),
                 driver_version=cuda.driver_version())
if torch.cuda.is_available():
    dev = torch.device("cuda", 0)
    facts.update(gpu=torch.cuda.get_device_name(dev), capability=list(torch.cuda.get_device_capability(dev)),
                 cuda_problem=_native.problem("cuda", dev), triton_problem=_native.problem("triton", dev),
                 auto_tally=_native.resolve("auto", dev, ("cpu", "cuda", "triton", "reference")))
else:
    facts["cuda_problem_on_cpu_tensors"] = _native.problem("cuda", torch.device("cpu"))
print(json.dumps(facts))
import os
with open(os.path.join(os.environ["OUT"], "bench.jsonl"), "a") as f:
    f.write(json.dumps(facts) + "\n")
EOF

if [ $DRY = 1 ]; then
  skip_step tests "dry run: every test marked gpu would skip without a GPU (CI runs the rest)"
else
  XDIST=$($PY -c 'import xdist' 2>/dev/null && echo "-n 8")
  # the gpu-marked tests, then the Triton tally tests (CUDA tensors on a GPU machine, unmarked)
  run_step tests 110 pytest.log bash -c "$PY -m pytest -q -p no:cacheprovider $XDIST -m gpu tests && \
    $PY -m pytest -q -p no:cacheprovider $XDIST tests/test_tally_triton.py"
fi

# compute-sanitizer: one driver process runs every case against the oracle, per tool.
SANITIZER=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
sanitize() {  # tool
  local extra=(--leak-check no)
  [ "$1" = racecheck ] && extra=(--racecheck-report hazard)
  "$SANITIZER" --tool "$1" --error-exitcode 99 "${extra[@]}" $PY benchmarks/cuda_kernel_driver.py \
    tally:cuda upsample:cuda tally:triton upsample:triton quantile:triton
}
export -f sanitize
export SANITIZER PY
if [ $DRY = 1 ] || [ -z "$SANITIZER" ]; then
  skip_step sanitizer "$([ $DRY = 1 ] && echo 'dry run' || echo 'no compute-sanitizer'): needs a GPU; the driver's cases run on CPU instead (sanitizer_cases)"
  run_step sanitizer_cases 20 sanitizer.log $PY benchmarks/cuda_kernel_driver.py \
    tally upsample tally:triton upsample:triton quantile --device cpu --backend cpu --small
else
  run_step memcheck 60 sanitizer.log bash -c "sanitize memcheck"
  run_step racecheck 60 sanitizer.log bash -c "sanitize racecheck"
fi

if [ $DRY = 1 ]; then
  run_step tally 30 check.log bash -c "$PY benchmarks/gpu_bench.py --smoke | tee -a '$OUT/bench.md'"
  run_step triton_counts 20 check.log $PY benchmarks/bench_tally_triton.py --device cpu --units 16 --json "$OUT/triton_counts.tmp"
else
  run_step tally 45 check.log bash -c "$PY benchmarks/gpu_bench.py --images 63305 | tee -a '$OUT/bench.md'"
  run_step triton_counts 30 check.log $PY benchmarks/bench_tally_triton.py --device cuda --images 64 --json "$OUT/triton_counts.tmp"
fi
if [ -f "$OUT/triton_counts.tmp" ]; then  # into bench.jsonl (one line), keeping $OUT to its 8 files
  $PY -c "import json,sys; print(json.dumps({'part': 'triton_counts', **json.load(open(sys.argv[1]))}))" \
    "$OUT/triton_counts.tmp" >>"$OUT/bench.jsonl" && rm -f "$OUT/triton_counts.tmp"
fi

DRYFLAG=$([ $DRY = 1 ] && echo --dry-run)
if [ $DRY = 1 ]; then
  skip_step machine "dry run: no bandwidth or matrix rate to measure on a CPU (ops and e2e report n/a floors)"
else
  run_step machine 20 check.log $PY benchmarks/suite_ops.py machine --out-dir "$OUT"
fi
run_step ops 60 check.log $PY benchmarks/suite_ops.py ops --out-dir "$OUT" $DRYFLAG
run_step e2e 90 check.log $PY benchmarks/suite_ops.py e2e --out-dir "$OUT" $DRYFLAG

# GAN dissection with the sketch: each N in a fresh process; flat memory = equal peaks.
if [ $DRY = 1 ]; then
  run_step gan 25 check.log bash -c "$PY benchmarks/bench_memory.py --n 16 32 --batch-size 16 | tee -a '$OUT/bench.md'"
else
  run_step gan 150 check.log bash -c "$PY benchmarks/bench_memory.py --device cuda --n 20000 1000000 \
    --batch-size 2048 --threads 0 --progress | tee -a '$OUT/bench.md'"
fi

echo "gpu_check.sh: $([ $FAILED = 0 ] && echo 'all steps ok or skipped' || echo 'some steps FAILED or timed out') in ${SECONDS} s; files in $OUT"
exit $FAILED
