#!/usr/bin/env bash
# One script for a CUDA machine: build, CUDA tests against cuDNN, then the full benchmark.
#
#   bash bench/gpu.sh                 # from the repository root
#
# Expects python (3.12), torch (2.11, CUDA), triton (3.6), pytest, ninja and nvcc already there,
# and no package registry: nothing is downloaded (pip runs with --no-deps --no-build-isolation).
# Everything lands in ONE folder: $OUT if set, else bench/results/gpu-<date>/ — at most 8 files,
# so the folder can be shipped back whole:
#   gpu.log                  environment, build, tests and benchmark output (all of stdout/stderr)
#   tests-junit.xml          pytest's per-test results of the CUDA/Triton tests
#   cuda-validate-*.jsonl    validation table records (every module vs torch.nn, odd sizes)
#   cuda-full-*.jsonl/.png   benchmark records (one JSON line per measurement) and speedup plot
# Knobs (environment):
#   PYTHON=python  BENCH_DTYPES=float32 (e.g. float32,bfloat16)  BENCH_ARGS="" (extra runner args)
#   SKIP_INSTALL=1  SKIP_TESTS=1  SKIP_BENCH=1
#   TEST_TIMEOUT=300  BENCH_TIMEOUT=480 (seconds; records written before a timeout are kept)
# Exit status: 0 only if the build, the tests and the strict benchmark (every error within
# tolerance, no provider failure) all passed; each stage runs even if an earlier one failed.
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

if [ -z "${SKIP_INSTALL:-}" ]; then
  log "build: pip install --no-deps --no-build-isolation -e . (arch $TORCH_CUDA_ARCH_LIST, $MAX_JOBS jobs)"
  SECONDS=0
  if ! run "$PY" -m pip install --no-deps --no-build-isolation --no-index -e .; then
    log "BUILD FAILED"; status=1
  fi
  log "build took ${SECONDS}s"
  run "$PY" -c 'import rnnkernels; print("backends on cuda:", rnnkernels.available_backends("cuda"))' \
    || status=1
fi

if [ -z "${SKIP_TESTS:-}" ]; then
  log "tests: pytest tests -k 'cuda or triton' (TF32 off)"
  SECONDS=0
  if ! run timeout "${TEST_TIMEOUT:-300}" "$PY" -m pytest tests -k "cuda or triton" -q \
      -p no:cacheprovider -rfEs --durations=15 --junitxml="$DIR/tests-junit.xml"; then
    log "TESTS FAILED (or timed out)"; status=1
  fi
  log "tests took ${SECONDS}s"
fi

if [ -z "${SKIP_BENCH:-}" ]; then
  log "benchmark: python -m bench.run --full --device cuda --strict --dtypes ${BENCH_DTYPES:-float32}"
  SECONDS=0
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments on purpose
  if ! run timeout "${BENCH_TIMEOUT:-480}" "$PY" -m bench.run --full --device cuda --strict \
      --dtypes "${BENCH_DTYPES:-float32}" --out "$DIR" ${BENCH_ARGS:-}; then
    log "BENCHMARK FAILED, above tolerance, or timed out"; status=1
  fi
  log "benchmark took ${SECONDS}s"
fi

log "done, status $status; files:"
ls -la "$DIR" | tee -a "$LOG"
exit "$status"
