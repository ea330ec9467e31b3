#!/usr/bin/env bash
# One script for a CUDA machine: build, CUDA tests against cuDNN, the full benchmark, then the
# measured plan of backend='auto' on this GPU (where cuDNN beats our kernels).
#
#   bash bench/gpu.sh                 # from the repository root
#
# Expects python (3.12), torch (2.11, CUDA), triton (3.6), pytest, ninja and nvcc already there,
# and no package registry: nothing is downloaded (pip runs with --no-deps --no-build-isolation).
# Everything lands in ONE folder: $OUT if set, else bench/results/gpu-<date>/ — at most 8 files,
# so the folder can be shipped back whole:
#   gpu.log                  environment, build, tests, resource counts (aot), benchmark output
#   tests-{triton,cuda}-junit.xml  pytest's per-test results of the Triton and CUDA tests
#   cuda-validate-*.jsonl    validation table records (every module vs torch.nn, odd sizes)
#   cuda-full-*.jsonl/.png   benchmark records (one JSON line per measurement) and speedup plot
#   cuda-full-*-triton-resident.jsonl  the resident strategy vs cuDNN (stage 3b)
#   plan-cuda.json           rnnkernels/plans/cuda.json with this GPU's table measured, also
#                            copied into the tree (on a lent machine, whose tree does not come
#                            back, copy this file to rnnkernels/plans/cuda.json and commit it)
# Knobs (environment):
#   PYTHON=python  BENCH_DTYPES=float32 (e.g. float32,bfloat16)  BENCH_ARGS="" (extra runner args)
#   SKIP_INSTALL=1  SKIP_TESTS=1  SKIP_BENCH=1  STRATEGY_SWEEP=1 (triton step vs persistent)
#   RESIDENT_SECS=110 (stage 3b's share; 0 skips it)  PEER_SECS=120 (stage 3c, FlashRNN; runs
#   only when .whl/ holds its wheels)
#   (STRATEGY_SWEEP adds 2 files: with SKIP_PLAN=1 the folder stays at 8)
#   SKIP_PLAN=1  PLAN_SECS=150 (seconds kept for the plan out of the benchmark's share; the plan
#   gets all that is left)  PLAN_ARGS="" (extra python -m bench.plan arguments, e.g. a grid)
#   DEADLINE=510 (seconds for the whole script; each stage gets a share of what is left;
#   records written before a timeout are kept)  TEST_WORKERS=8 (pytest-xdist, when installed)
# Exit status: 0 only if the build, the tests, the strict benchmark (every error within
# tolerance, no provider failure) and the plan all passed; each stage runs even if an earlier
# one failed.
set -u -o pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DIR=${OUT:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$DIR"
LOG="$DIR/gpu.log"
: > "$LOG"

# fp32 means fp32 on both sides: cuDNN's RNN and cuBLAS would otherwise be allowed TF32.
export NVIDIA_TF32_OVERRIDE=0
# Triton must compile for the GPU here, never interpret.
unset TRITON_INTERPRET
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

log() { echo "[gpu.sh $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
run() { "$@" 2>&1 | tee -a "$LOG"; return "${PIPESTATUS[0]}"; }

status=0
log "output folder: $DIR"
{
  echo "== environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  "$PY" - <<'EOF'
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version())
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton not importable:", exc)
print("cuda available:", torch.cuda.is_available(),
      "| device:", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
EOF
  git rev-parse HEAD 2>/dev/null || echo "git sha unknown"
} 2>&1 | tee -a "$LOG"

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  log "torch.cuda.is_available() is False: this script is for a CUDA machine"
  exit 2
fi
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  # Build for this GPU only (e.g. 9.0 on H100/H200): a fraction of the all-arch compile time.
  TORCH_CUDA_ARCH_LIST=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
  export TORCH_CUDA_ARCH_LIST
fi

# The time box: every stage gets what is left of DEADLINE seconds (default 510), so the whole
# script ends inside one device lease call and whatever finished comes back.
DEADLINE=${DEADLINE:-510}
left() { local l=$(( DEADLINE - SECONDS - ${1:-0} )); [ "$l" -gt 5 ] && echo "$l" || echo 5; }
cap() { local l; l=$(left "${2:-0}"); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
PYTEST_PAR=()
"$PY" -c 'import xdist' 2>/dev/null && PYTEST_PAR+=(-n "${TEST_WORKERS:-8}")
"$PY" -c 'import pytest_timeout' 2>/dev/null && PYTEST_PAR+=(--timeout "${TEST_CASE_TIMEOUT:-120}")
pytest_stage() {  # name, seconds, pytest args...
  local name=$1 secs=$2; shift 2
  log "tests ($name, ${secs}s max): pytest $*"
  local t0=$SECONDS
  if ! run timeout -k 10 "$secs" "$PY" -m pytest "$@" -q -p no:cacheprovider -rfE \
      --durations=10 "${PYTEST_PAR[@]}" --junitxml="$DIR/tests-$name-junit.xml"; then
    log "TESTS ($name) FAILED (or timed out)"; status=1
  fi
  log "tests ($name) took $((SECONDS - t0))s"
}

# 1. The extension builds in the background while the Triton tests (which do not need it) run.
BUILD_PID=""
if [ -z "${SKIP_INSTALL:-}" ]; then
  log "build (background): pip install --no-deps --no-build-isolation -e . (arch $TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs)"
  ( SECONDS=0; "$PY" -m pip install --no-deps --no-build-isolation --no-index -e . \
      > /tmp/rnnk-build.log 2>&1; echo "$? ${SECONDS}" > /tmp/rnnk-build.rc ) &
  BUILD_PID=$!
fi

# 2. Triton kernels vs the reference, and the modules on the triton backend vs cuDNN.
if [ -z "${SKIP_TESTS:-}" ]; then
  pytest_stage triton "$(cap "${TRITON_TEST_TIMEOUT:-220}" 200)" tests -k triton
fi

if [ -n "$BUILD_PID" ]; then
  wait "$BUILD_PID"
  read -r brc bsecs < /tmp/rnnk-build.rc || { brc=1; bsecs="?"; }
  tail -n 40 /tmp/rnnk-build.log >> "$LOG"
  log "build exit $brc after ${bsecs}s (log tail above)"
  [ "$brc" = 0 ] || { log "BUILD FAILED"; status=1; }
  run "$PY" -c 'import rnnkernels; print("backends on cuda:", rnnkernels.available_backends("cuda"))' \
    || status=1
fi

# 3. The compiled cuda backend vs the reference and vs cuDNN, compile/autocast/opcheck on CUDA.
if [ -z "${SKIP_TESTS:-}" ]; then
  pytest_stage cuda "$(cap "${CUDA_TEST_TIMEOUT:-150}" 120)" tests -k "cuda and not triton"
fi

# 3a. Per-kernel resource counts with this machine's triton and ptxas (registers and spilled
#     bytes of each scan kernel, the resident ones as their launcher picks them; to gpu.log).
if [ -z "${SKIP_TESTS:-}" ]; then
  log "resource counts (60s max): python -m rnnkernels.backends.triton.aot --quick"
  TRITON_DEFAULT_FP_FUSION=1 run timeout -k 5 "$(cap 60 60)" "$PY" -m rnnkernels.backends.triton.aot \
    --quick --dtypes fp32,bf16 || log "AOT RESOURCE COUNTS FAILED or timed out"
fi

# 3b. The resident strategy (issue 12; rnnkernels/backends/triton/resident.py), which auto does
#     not pick until measured here: the grid barrier alone (python -m bench.barrier: µs per
#     barrier, with and without the h exchange, B = 1/16/64; its table goes to gpu.log), then
#     triton with the strategy forced vs cuDNN at the issue's target shapes and one LSTM with a
#     projection (P=256 of H=512), fp32 and bf16, inference and training (one JSONL:
#     cuda-full-*-triton-resident.jsonl).
RESIDENT_SECS=${RESIDENT_SECS:-110}
if [ -z "${SKIP_BENCH:-}" ] && [ "$RESIDENT_SECS" -gt 0 ]; then
  stop=$((SECONDS + $(cap "$RESIDENT_SECS" 120)))
  log "grid barrier (30s max): python -m bench.barrier"
  run timeout -k 5 30 "$PY" -m bench.barrier --out /tmp || log "BARRIER BENCH FAILED or timed out"
  secs=$(( stop - SECONDS )); [ "$secs" -gt 20 ] || secs=20
  log "resident sweep (${secs}s max): triton strategy=resident vs cuDNN"
  # shellcheck disable=SC2086
  RNNKERNELS_TRITON_STRATEGY=resident run timeout -k 5 "$secs" "$PY" -m bench.run --full \
    --device cuda --no-validate --no-plot --providers torch,triton --tag triton-resident \
    --configs long-b1 long-b16 fastrnn --shape cell=lstm,T=1024,B=16,I=1024,H=1024 \
    --shape T=1024,B=16,I=512,H=512,P=256 \
    --dtypes float32,bfloat16 --min-time 0.1 --out "$DIR" \
    || log "RESIDENT SWEEP FAILED or timed out (records written so far are kept)"
fi

# 3c. FlashRNN beside ours and cuDNN (python -m bench.flashrnn_peer), when its wheels were carried
#     in .whl/ (no registry there: `pip download --no-deps flashrnn==1.0.8 einops -d .whl` on a
#     machine with one); its records are appended to the resident sweep's JSONL (8-file limit).
PEER_SECS=${PEER_SECS:-120}
if [ -z "${SKIP_BENCH:-}" ] && [ "$PEER_SECS" -gt 0 ] && ls .whl/flashrnn-*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/peer-site .whl/*.whl \
    && export PYTHONPATH="/tmp/peer-site${PYTHONPATH:+:$PYTHONPATH}"
  sweep=$(ls "$DIR"/*triton-resident*.jsonl 2>/dev/null | head -n 1)
  [ -n "$sweep" ] || sweep="$DIR/cuda-peer.jsonl"
  secs=$(cap "$PEER_SECS" 90)
  log "FlashRNN peer (${secs}s max): python -m bench.flashrnn_peer --jsonl $sweep"
  run timeout -k 5 "$secs" "$PY" -m bench.flashrnn_peer --budget-s $((secs > 40 ? secs - 20 : 20)) \
    --jsonl "$sweep" || log "FLASHRNN PEER FAILED or timed out (records so far are kept)"
fi

# 4. Validation table (every module vs torch.nn/cuDNN at odd sizes) + the benchmark sweep.
PLAN_SECS=${PLAN_SECS:-150}
[ -z "${SKIP_PLAN:-}" ] || PLAN_SECS=0
if [ -z "${SKIP_BENCH:-}" ]; then
  secs=$(left $((15 + PLAN_SECS)))
  log "benchmark (${secs}s max): python -m bench.run --full --device cuda --strict --dtypes ${BENCH_DTYPES:-float32} ${BENCH_ARGS:-}"
  t0=$SECONDS
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments on purpose
  if ! run timeout -k 10 "$secs" "$PY" -m bench.run --full --device cuda --strict \
      --dtypes "${BENCH_DTYPES:-float32}" --out "$DIR" ${BENCH_ARGS:-}; then
    log "BENCHMARK FAILED, above tolerance, or timed out"; status=1
  fi
  log "benchmark took $((SECONDS - t0))s"
fi

# 5. The measured plan of auto on this GPU: torch.nn (cuDNN) vs the backend auto resolves to,
#    per cell, mode, dtype, B and H (python -m bench.plan --device cuda; triton's points also
#    time the resident strategy and name it where it won, so auto runs it there), merged into a copy of
#    the tree's rnnkernels/plans/cuda.json (other GPUs' tables kept) in $DIR, then copied into
#    the tree. --budget-s leaves ~45 s for Python, CUDA and Triton start-up and the write; what
#    the budget cuts is dropped by whole (dtype, cell, mode) groups (float16 first to go).
if [ -z "${SKIP_PLAN:-}" ]; then
  secs=$(left 10)
  if [ "$secs" -gt 75 ]; then
    cp rnnkernels/plans/cuda.json "$DIR/plan-cuda.json" 2>/dev/null || true
    log "plan (${secs}s max): python -m bench.plan --device cuda --budget-s $((secs - 45)) ${PLAN_ARGS:-}"
    t0=$SECONDS
    # shellcheck disable=SC2086  # PLAN_ARGS is a list of arguments on purpose
    if run timeout -k 10 "$secs" "$PY" -m bench.plan --device cuda --budget-s "$((secs - 45))" \
        --out "$DIR/plan-cuda.json" ${PLAN_ARGS:-}; then
      cp "$DIR/plan-cuda.json" rnnkernels/plans/cuda.json && log "rnnkernels/plans/cuda.json updated"
    else
      log "PLAN FAILED or timed out (rnnkernels/plans/cuda.json unchanged)"; status=1
    fi
    log "plan took $((SECONDS - t0))s"
  else
    log "no time left for the plan (${secs}s)"; status=1
  fi
fi

# 6. Optional (STRATEGY_SWEEP=1), in what time is left: the Triton provider with each strategy
#    forced, on the latency-bound configs, to place the auto threshold.
if [ -n "${STRATEGY_SWEEP:-}" ] && [ -z "${SKIP_BENCH:-}" ]; then
  for strat in step persistent resident; do
    secs=$(left 10)
    [ "$secs" -gt 30 ] || { log "no time left for the $strat sweep"; continue; }
    log "strategy sweep ($strat, ${secs}s max)"
    RNNKERNELS_TRITON_STRATEGY=$strat run timeout -k 5 "$secs" "$PY" -m bench.run --full \
      --device cuda --no-validate --no-plot --providers torch,triton --tag "triton-$strat" \
      --configs long-b1 long-b16 fastrnn --min-time 0.1 --out "$DIR" || true
  done
fi

log "done, status $status; files:"
ls -la "$DIR" | tee -a "$LOG"
exit "$status"
