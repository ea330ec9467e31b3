// python/cuda_ops.cpp — the CUDA implementations of the rnnkernels_C ops (built only into a
// CUDAExtension, see setup.py).
//
// Path choice (csrc/cuda/scan_cuda.h): the persistent kernel (whole sequence in one launch, W_hh
// in shared memory) whenever W_hh fits in a block's shared memory and there is no projection;
// otherwise one cuBLAS GEMM per step through ATen (at::mm_out / addmm_, on the current stream,
// into preallocated fp32 buffers) followed by the fused pointwise kernel.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/scan_cuda.h"
#include "ops_impl.h"
#include "step_gemm.h"

namespace rnnk {
namespace bridge {
namespace {

const char* describe_cuda_error(int code) {
  return cudaGetErrorString(static_cast<cudaError_t>(code));
}

// The persistent plan when that path is to run, or a plan with ok == false for the step path.
cuda::PersistentPlan choose(const ScanArgs& a, bool backward, int device) {
  const std::string& p = options().cuda_path;
  if (p == "step") return cuda::PersistentPlan{};
  cuda::PersistentPlan plan = cuda::plan_persistent(a, backward, device);
  TORCH_CHECK(plan.ok || p != "persistent", "rnnkernels cuda backend: cuda_path='persistent' "
              "cannot run this case: ", plan.why);
  return plan;
}

struct CudaRunner {
  static constexpr at::DeviceType device = at::kCUDA;
  static const char* name() { return "cuda"; }

  static void check_dtype(const Checker& ck) {
    TORCH_CHECK(ck.dtype == at::kFloat || ck.dtype == at::kHalf || ck.dtype == at::kBFloat16,
                ck.who, ": unsupported dtype ", ck.dtype,
                " (float32, float16 and bfloat16 are supported on CUDA)");
  }

  static void run(const ScanArgs& a, const Weights& w, const at::TensorOptions& acc,
                  bool backward) {
    const c10::cuda::CUDAGuard guard(acc.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const char* fn = backward ? "backward" : "forward";
    const cuda::PersistentPlan plan = choose(a, backward, acc.device().index());
    if (plan.ok) {
      raise_if_failed(cuda::run_persistent(a, ptr(w.w_hh_dt), plan, stream), "cuda", fn, nullptr,
                      describe_cuda_error);
      return;
    }
    // The forward's Wᵀ as views: cuBLAS takes the transpose as an operand flag.
    StepGemm g(a, w, acc, backward, /*copy_transposed=*/false);
    const Status st = backward ? cuda::backward_step(a, g.backward_scratch(), g.callback(), stream)
                               : cuda::forward_step(a, g.forward_scratch(), g.callback(), stream);
    raise_if_failed(st, "cuda", fn, &g, describe_cuda_error);
  }
};

}  // namespace
}  // namespace bridge
}  // namespace rnnk

TORCH_LIBRARY_IMPL(rnnkernels_C, CUDA, m) {
  RNNK_REGISTER_SCAN_OPS(m, ::rnnk::bridge::CudaRunner);
}
