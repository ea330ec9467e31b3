#!/usr/bin/env bash
# Compile-check the CUDA kernels and build + run the torch-free C++ tests.
#
#   .ci/compile_cuda.sh            # from the repository root (or anywhere: paths are resolved)
#
# 1. CMake configure + build of csrc/ with the CUDA kernels on (RNNK_WITH_CUDA=ON): every
#    csrc/cuda/*.cu with the machine's nvcc for sm_80 and sm_90, with the defines torch uses for
#    extensions (no implicit half/bfloat16 conversions, set by CMakeLists.txt) and every nvcc and
#    host-compiler warning an error, so a kernel that only builds without them fails here; the CPU
#    kernels and the C++ tests alongside;
# 2. ctest of csrc/ (CPU: nothing CUDA runs here);
# 3. the torch bridge python/cuda_ops.cpp syntax-checked against torch's headers (when torch is
#    importable), so the CUDA glue is checked on machines without a CUDA torch.
# Exits non-zero on the first failure. NVCC, CXX, PYTHON and CMAKE may override the tools.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
CXX="${CXX:-c++}"
CMAKE="${CMAKE:-cmake}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON="$(command -v python3 || true)"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

echo "== nvcc: $("$NVCC" --version | tail -1)"
shopt -s nullglob
cu_files=("$ROOT"/csrc/cuda/*.cu)
[ ${#cu_files[@]} -gt 0 ] || { echo "no csrc/cuda/*.cu found" >&2; exit 1; }

echo "== cmake (csrc, torch-free; CUDA kernels for sm_80, sm_90 with -Werror) + ctest"
"$CMAKE" -S "$ROOT" -B "$TMP/build" -DCMAKE_BUILD_TYPE=Release -DRNNK_WITH_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$NVCC" -DCMAKE_CUDA_ARCHITECTURES="80;90" \
  -DCMAKE_CUDA_FLAGS="-Werror all-warnings -Xcompiler -Wall" >"$TMP/cmake.log" 2>&1 || {
  cat "$TMP/cmake.log"; exit 1; }
"$CMAKE" --build "$TMP/build" -j "$(nproc)"
(cd "$TMP/build" && ctest --output-on-failure)

TORCH_INC=""
if [ -n "$PYTHON" ]; then
  TORCH_INC="$("$PYTHON" -c 'import torch.utils.cpp_extension as c
print(" ".join(c.include_paths()))' 2>/dev/null || true)"
fi
if [ -n "$TORCH_INC" ]; then
  # nvcc may be a wrapper script or a link: ask it where its headers are
  CUDA_INC="$("$NVCC" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 |
              sed -n 's/.*INCLUDES="-I\([^" ]*\)".*/\1/p' | head -1)"
  PY_INC="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  echo "-- syntax check python/cuda_ops.cpp against torch's headers"
  inc=()
  for d in $TORCH_INC; do inc+=("-I$d"); done
  # A CPU-only torch wheel lacks this generated header of the CUDA build; an empty stand-in is
  # enough for a syntax check (it only configures symbol visibility).
  found=0
  for d in $TORCH_INC; do
    if [ -f "$d/c10/cuda/impl/cuda_cmake_macros.h" ]; then found=1; fi
  done
  if [ "$found" = 0 ]; then
    mkdir -p "$TMP/stub/c10/cuda/impl"
    printf '#pragma once\n' > "$TMP/stub/c10/cuda/impl/cuda_cmake_macros.h"
    inc+=("-I$TMP/stub")
  fi
  "$CXX" -fsyntax-only -std=c++20 -Wall -Wno-unknown-pragmas -DRNNK_WITH_CUDA=1 \
    "${inc[@]}" -I"$CUDA_INC" -I"$PY_INC" -I"$ROOT/csrc/include" -I"$ROOT/csrc" -I"$ROOT/python" \
    "$ROOT/python/cuda_ops.cpp"
else
  echo "-- torch not importable: skipping the syntax check of python/cuda_ops.cpp"
fi
echo "== compile_cuda.sh: OK"
