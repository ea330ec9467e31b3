// csrc/cuda/cuda_common.cuh — shared device helpers of the CUDA scans: storage-type loads and
// stores with fp32 math (float, half, bfloat16), the launch check, dtype dispatch.
// No torch header: compiles with plain nvcc (.ci/compile_cuda.sh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "rnnkernels/cell_math.h"
#include "rnnkernels/scan_params.h"

namespace rnnk {
namespace cuda {

// Loads convert to float, stores round to nearest even. Explicit intrinsics because torch builds
// extensions with __CUDA_NO_HALF_CONVERSIONS__ / __CUDA_NO_BFLOAT16_CONVERSIONS__.
__device__ __forceinline__ float ld(const float* p) { return *p; }
__device__ __forceinline__ float ld(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float ld(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(float* p, float v) { *p = v; }
__device__ __forceinline__ void st(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void st(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

// Launch configuration of the elementwise kernels.
constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) {
  return static_cast<unsigned>((n + kThreads - 1) / kThreads);
}

// Every launch is followed by this: a failed launch (bad configuration, no kernel image for the
// device, a sticky error of an earlier kernel) returns its cudaError_t and the kernel's name.
#define RNNK_CUDA_CHECK(name)                                              \
  do {                                                                     \
    const cudaError_t rnnk_err_ = cudaGetLastError();                      \
    if (rnnk_err_ != cudaSuccess) return Status::error(int(rnnk_err_), name); \
  } while (0)

// Calls f(Cell constant, S* null) for the dtype and cell of `a`; float64 is not a CUDA dtype here.
template <class F>
Status dispatch(const ScanArgs& a, F&& f) {
  auto by_cell = [&](auto* s) -> Status {
    switch (a.cell) {
      case Cell::kLSTM: return f(std::integral_constant<Cell, Cell::kLSTM>{}, s);
      case Cell::kGRU: return f(std::integral_constant<Cell, Cell::kGRU>{}, s);
      case Cell::kRNNTanh: return f(std::integral_constant<Cell, Cell::kRNNTanh>{}, s);
      case Cell::kRNNReLU: return f(std::integral_constant<Cell, Cell::kRNNReLU>{}, s);
    }
    return Status::error(kErrorUnsupported, "unknown cell");
  };
  switch (a.dtype) {
    case DType::kFloat32: return by_cell(static_cast<float*>(nullptr));
    case DType::kFloat16: return by_cell(static_cast<__half*>(nullptr));
    case DType::kBFloat16: return by_cell(static_cast<__nv_bfloat16*>(nullptr));
    default: break;
  }
  return Status::error(kErrorUnsupported, "the CUDA kernels support float32, float16, bfloat16");
}

template <Cell C>
struct CellG {
  static constexpr int G = C == Cell::kLSTM ? 4 : (C == Cell::kGRU ? 3 : 1);
};

}  // namespace cuda
}  // namespace rnnk
