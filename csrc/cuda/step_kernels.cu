// csrc/cuda/step_kernels.cu — the step path of the CUDA scans (scan_cuda.h): the passes of
// rnnkernels/step_path.h as kernels, one thread per (sequence b, hidden unit j) — or state
// feature k for the projection's passes — around one cuBLAS GEMM per step. A thread does every
// gate of its unit, so the reads of xp_t[b, q·H + j] and gh[b, q·H + j] are coalesced over j.
#include "cuda_common.cuh"
#include "rnnkernels/step_path.h"
#include "scan_cuda.h"

namespace rnnk {
namespace cuda {
namespace {

using M = ExactMath;

template <bool Backward>
using Scratch = std::conditional_t<Backward, BackwardScratch, ForwardScratch>;

template <class D, class S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) st(dst + i, ld(src + i));
}

template <class D, class S>
Status convert(D* dst, const S* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return Status::success();
  convert_kernel<D, S><<<blocks_for(n), kThreads, 0, stream>>>(dst, src, n);
  RNNK_CUDA_CHECK("rnnkernels convert_kernel");
  return Status::success();
}

template <Cell C, class S, bool Backward>
__global__ void cell_step_kernel(ScanArgs a, Scratch<Backward> w, int64_t s) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.sched.B * a.H) return;
  const int64_t b = idx / a.H, j = idx - b * a.H;
  using Step = std::conditional_t<Backward, StepBackward<C, M, S, float>,
                                  StepForward<C, M, S, float>>;
  step_unit(Step(a, w, s, b), ScalarIO{}, j);
}

template <class S, bool Backward>
__global__ void projection_step_kernel(ScanArgs a, Scratch<Backward> w, int64_t s) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= a.sched.B * a.P) return;
  const int64_t b = idx / a.P, k = idx - b * a.P;
  projection_unit<S>(ScalarIO{}, a, w, s, b, k);
}

// The step path's Device (rnnkernels/step_path.h) on CUDA, forward or backward.
template <Cell C, class S, bool Backward>
struct CudaStep {
  const ScanArgs& a;
  const Scratch<Backward>& w;
  cudaStream_t stream;

  Status to_acc(void* dst, const void* src, int64_t n) const {
    return convert(static_cast<float*>(dst), static_cast<const S*>(src), n, stream);
  }
  Status to_storage(void* dst, const void* src, int64_t n) const {
    return convert(static_cast<S*>(dst), static_cast<const float*>(src), n, stream);
  }
  Status pointwise(int64_t s) const {
    if (a.sched.B * a.H == 0) return Status::success();
    cell_step_kernel<C, S, Backward><<<blocks_for(a.sched.B * a.H), kThreads, 0, stream>>>(a, w, s);
    RNNK_CUDA_CHECK(Backward ? "rnnkernels backward_step_kernel"
                             : "rnnkernels forward_step_kernel");
    return Status::success();
  }
  Status projection(int64_t s) const {
    if (a.sched.B * a.P == 0) return Status::success();
    projection_step_kernel<S, Backward><<<blocks_for(a.sched.B * a.P), kThreads, 0, stream>>>(
        a, w, s);
    RNNK_CUDA_CHECK(Backward ? "rnnkernels projection_prep_kernel"
                             : "rnnkernels projection_commit_kernel");
    return Status::success();
  }
};

template <bool Backward>
Status run_step(const ScanArgs& a, const Scratch<Backward>& w, const GemmCallback& gemm,
                cudaStream_t stream) {
  return by_dtype(a, [&](auto cell, auto* s) {
    constexpr Cell C = decltype(cell)::value;
    using S = std::remove_pointer_t<decltype(s)>;
    return step_path<C>(a, w, gemm, CudaStep<C, S, Backward>{a, w, stream});
  });
}

}  // namespace

Status forward_step(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm,
                    cudaStream_t stream) {
  return run_step<false>(a, w, gemm, stream);
}

Status backward_step(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm,
                     cudaStream_t stream) {
  return run_step<true>(a, w, gemm, stream);
}

}  // namespace cuda
}  // namespace rnnk
