// csrc/cuda/cuda_common.cuh — shared device helpers of the CUDA scans: storage-type loads and
// stores with fp32 math (float, half, bfloat16) and the IO policy of cell_io.h built on them, the
// launch check, dtype dispatch.
// No torch header: compiles with plain nvcc (.ci/compile_cuda.sh).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "rnnkernels/cell_io.h"
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

// The IO policy of rnnkernels/cell_io.h: one unit per thread, fp32 math.
struct ScalarIO {
  using Acc = float;
  using T = float;
  template <class X>
  __device__ __forceinline__ float load(const X* p) const {
    return ld(p);
  }
  template <class X>
  __device__ __forceinline__ void store(X* p, float v) const {
    st(p, v);
  }
  __device__ __forceinline__ float zero() const { return 0.0f; }
};

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

// rnnk::dispatch with the CUDA storage types; float64 is not a CUDA dtype here.
template <class F>
Status by_dtype(const ScanArgs& a, F&& f) {
  return dispatch<float, void, __half, __nv_bfloat16>(a, f);
}

}  // namespace cuda
}  // namespace rnnk
