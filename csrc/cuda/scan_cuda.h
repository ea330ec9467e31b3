// csrc/cuda/scan_cuda.h — entry points of the CUDA scans. Host functions; every kernel runs on
// the given stream and every launch is checked (the Status carries the cudaError_t).
//
// Step path (any size, the only one for an LSTM with projection): per step the caller's GEMM
// callback computes h_{t-1}·W_hhᵀ (cuBLAS through ATen, on the same stream), then one fused
// pointwise kernel over batch × hidden does the cell update, the output and the workspaces. The
// backward mirrors it (rnnkernels/step_path.h, shared with the CPU). Scratch: ForwardScratch /
// BackwardScratch as documented in scan_params.h, all fp32.
//
// Persistent path (small hidden sizes): ONE launch for the whole sequence. A block owns a few
// batch rows and all hidden units; it keeps W_hh in shared memory (padded rows: conflict-free for
// both the forward's row reads and the backward's column reads) and h (or d gates) in shared
// memory, and synchronises with __syncthreads() between steps — batch rows are independent, so
// no grid-wide barrier is needed. It reads W_hh in the storage dtype (`w_hh_dt`, [G·H, H]), so
// half inputs use half the shared memory. No projection.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>

#include "rnnkernels/scan_params.h"

namespace rnnk {
namespace cuda {

Status forward_step(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm,
                    cudaStream_t stream);
Status backward_step(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm,
                     cudaStream_t stream);

// Launch shape of the persistent kernels for a case on a device, or the reason it cannot run.
struct PersistentPlan {
  bool ok = false;
  const char* why = "";
  bool backward = false;   // which of the two kernels
  int threads = 0;         // per block: the hidden size rounded up to a warp
  int rows = 0;            // batch rows per block
  size_t smem = 0;         // dynamic shared memory per block, bytes
  unsigned blocks = 0;
};
PersistentPlan plan_persistent(const ScanArgs& a, bool backward, int device);

// Runs the forward or the backward kernel, as planned.
Status run_persistent(const ScanArgs& a, const void* w_hh_dt, const PersistentPlan& plan,
                      cudaStream_t stream);

}  // namespace cuda
}  // namespace rnnk
