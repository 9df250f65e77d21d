#!/usr/bin/env bash
# One command for a GPU machine: build, CUDA tests, compute-sanitizer, benchmarks, report.
#
#   scripts/gpu_check.sh [OUTDIR]          (default: benchmarks/results/)
#
# Runs in the repository root on a machine with no network whose python3 has torch
# with CUDA, nvcc, pytest, hypothesis and ninja. Every step is logged and timed; a
# failing step is recorded and the script goes on. The whole run stays under
# GPU_CHECK_BUDGET_S seconds (default 540): each step's time limit is cut to what is
# left, and the benchmarks get what the other steps leave (at most 300 s).
#
# A grid too large for one call: a follow-up call can run only some steps and resume
# the benchmarks from an earlier run's records on the same device (committed under
# benchmarks/results/), e.g.
#   GPU_CHECK_STEPS=environment,build,bench \
#   GPU_CHECK_RESUME=benchmarks/results/<run>/bench.json scripts/gpu_check.sh "$OUT"
#
# OUTDIR receives at most 8 files:
#   gpu_check.md, gpu_check.json   summary: step, status, seconds, key lines, counts
#   gpu_check.log                  every step's full output
#   junit-cuda.xml, junit-suite.xml   pytest -m cuda / the whole suite on backend cuda
#   bench.json                     benchmarks/bench_ops.py records
#   <device>.md, <device>.png      benchmarks/report.py
set -u

cd "$(dirname "$0")/.." || exit 2
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET=${GPU_CHECK_BUDGET_S:-540}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"
: >"$STEPS"
: >"$OUT/gpu_check.log"
rm -f "$OUT/junit-cuda.xml" "$OUT/junit-suite.xml" "$OUT/bench.json"
START=$SECONDS
SUMMARY_RESERVE=15  # seconds kept for writing the summary

remaining() { echo $((BUDGET - (SECONDS - START) - SUMMARY_RESERVE)); }

# step NAME CAP_S COMMAND...: run COMMAND with a time limit of min(CAP_S, time left),
# append its output to the log and a line "name status rc seconds" to $STEPS.
step() {
  local name=$1 cap=$2
  shift 2
  if [[ -n ${GPU_CHECK_STEPS:-} && ",$GPU_CHECK_STEPS," != *",$name,"* ]]; then
    printf '%s\tskipped\t-\t0\n' "$name" >>"$STEPS"
    echo "== $name: skipped (not in GPU_CHECK_STEPS)" | tee -a "$OUT/gpu_check.log"
    return 0
  fi
  local limit
  limit=$(remaining)
  ((limit > cap)) && limit=$cap
  local log="$WORK/$name.log"
  if ((limit < 10)); then
    printf '%s\tskipped\t-\t0\n' "$name" >>"$STEPS"
    echo "== $name: skipped, no time left" | tee -a "$OUT/gpu_check.log"
    return 0
  fi
  echo "== $name (limit ${limit}s): $*" | tee -a "$OUT/gpu_check.log"
  local t0=$SECONDS rc status
  # bash -c so that COMMAND may be one of the functions below (exported with export -f)
  timeout -k 10 "$limit" bash -c '"$@"' "$name" "$@" >"$log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status=timeout ;;
    *) status=failed ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$((SECONDS - t0))" >>"$STEPS"
  cat "$log" >>"$OUT/gpu_check.log"
  echo "== $name: $status (rc $rc, $((SECONDS - t0)) s)" | tee -a "$OUT/gpu_check.log"
  tail -n 3 "$log"
}

environment() {
  nvidia-smi
  nvcc --version
  compute-sanitizer --version
  python3 -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
    "cuDNN", torch.backends.cudnn.version(), "device", torch.cuda.get_device_name(0))'
}

build() {
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
  python3 -m pip install --no-build-isolation --no-deps --no-index -e . && return 0
  echo "pip install failed; falling back to: python3 setup.py build_ext --inplace"
  python3 setup.py build_ext --inplace
}

sanitize() {  # sanitize TOOL [compute-sanitizer options...] [-- driver options...]
  local tool=$1
  shift
  local options=() driver=()
  while (($#)) && [[ $1 != -- ]]; do options+=("$1"); shift; done
  (($#)) && shift && driver=("$@")
  # No caching allocator: an access past a tensor must not land inside a pooled block.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool "$tool" --print-limit 20 \
    --error-exitcode 3 --report-api-errors no ${options[@]+"${options[@]}"} \
    python3 scripts/sanitizer_driver.py ${driver[@]+"${driver[@]}"}
}

bench_and_report() {  # bench_and_report BUDGET_S
  # 10 timed loops per variant (the default is 15): the first H100 run reached 741 of the
  # 1242 cases in 240 s. The grid (1266 cases) may need a second call: GPU_CHECK_RESUME.
  local resume=()
  [[ -n ${GPU_CHECK_RESUME:-} ]] && resume=(--resume "$GPU_CHECK_RESUME")
  python3 benchmarks/bench_ops.py --device cuda --budget-s "$1" --repeats 10 \
    ${resume[@]+"${resume[@]}"} --json "$OUT/bench.json"
  local rc=$?
  [[ -s $OUT/bench.json ]] || return 1
  python3 benchmarks/report.py "$OUT/bench.json" --out "$OUT" || return 1
  return $rc
}

probe_error_paths() {  # ok only if the probe itself reached its last line
  local out
  out=$(cuda-gdb -batch -ex run -ex bt --args python3 scripts/error_path_probe.py 2>&1)
  echo "$out"
  grep -q "^0 probes failed" <<<"$out"
}

export -f environment build sanitize bench_and_report probe_error_paths
export OUT CPG_TEST_BACKENDS=cuda PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
step environment 30 environment
step build 300 build
step driver 60 python3 scripts/sanitizer_driver.py
# Error paths after CUDA is up, under cuda-gdb so that a crash leaves a native backtrace.
step error-paths 90 probe_error_paths
# Which kernels each threshold-straddling shape launched, and their times (log only).
step kernels 60 python3 scripts/kernel_profile.py
step pytest-cuda 120 python3 -m pytest -q -p no:cacheprovider -m cuda tests \
  --junitxml "$OUT/junit-cuda.xml"
step memcheck 120 sanitize memcheck
# racecheck is slow on library kernels: only the project's own (names contain "cpg"). One
# run per group of calls: the first H100 run's racecheck died inside the tool on a conv case,
# which hid every later call.
step racecheck-linear 60 sanitize racecheck --kernel-name kns=cpg -- --only helpers,linear
step racecheck-conv 90 sanitize racecheck --kernel-name kns=cpg -- --only conv
# The benchmarks stop starting cases after BENCH_S; a minute stays for the report and the suite.
BENCH_S=$(($(remaining) - 60))
((BENCH_S > 300)) && BENCH_S=300
((BENCH_S < 20)) && BENCH_S=20
step bench $((BENCH_S + 60)) bench_and_report "$BENCH_S"
step pytest-suite 600 python3 -m pytest -q -p no:cacheprovider tests \
  --ignore tests/test_benchmarks.py --junitxml "$OUT/junit-suite.xml"

python3 scripts/gpu_check_summary.py "$STEPS" "$WORK" "$OUT" "$((SECONDS - START))"
