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

#include <exception>

#include "cuda/scan_cuda.h"
#include "ops_impl.h"

namespace rnnk {
namespace bridge {
namespace {

struct CudaGemm {
  Tensor h, gh, hh, hp, w_hh, w_hr;
  std::exception_ptr error;

  static bool call(void* ctx, GemmOp op) {
    auto* g = static_cast<CudaGemm*>(ctx);
    try {
      switch (op) {
        case GemmOp::kGates: at::mm_out(g->gh, g->h, g->w_hh.t()); break;
        case GemmOp::kProject: at::mm_out(g->hp, g->hh, g->w_hr.t()); break;
        case GemmOp::kRecurrent: g->h.addmm_(g->gh, g->w_hh); break;
        case GemmOp::kProjectBack: at::mm_out(g->hh, g->hp, g->w_hr); break;
      }
      return true;
    } catch (...) {
      g->error = std::current_exception();
      return false;
    }
  }
};

void check(const Status& st, const char* fn, const CudaGemm* g = nullptr) {
  if (g && g->error) std::rethrow_exception(g->error);
  if (st.ok()) return;
  if (st.code > 0)
    TORCH_CHECK(false, "rnnkernels cuda backend: ", fn, ": ", st.what, " failed: ",
                cudaGetErrorString(static_cast<cudaError_t>(st.code)));
  TORCH_CHECK(false, "rnnkernels cuda backend: ", fn, " failed: ", st.what);
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

  template <bool Backward>
  static void run(const ScanArgs& a, const Weights& w, const at::TensorOptions& acc) {
    const c10::cuda::CUDAGuard guard(acc.device());
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const int64_t B = a.sched.B, H = a.H, P = a.P, GH = int64_t(a.gates_count()) * H;
    const char* fn = Backward ? "backward" : "forward";
    const cuda::PersistentPlan plan = choose(a, Backward, acc.device().index());
    if (plan.ok) {
      const Status st = Backward ? cuda::backward_persistent(a, ptr(w.w_hh_dt), plan, stream)
                                 : cuda::forward_persistent(a, ptr(w.w_hh_dt), plan, stream);
      check(st, fn);
      return;
    }
    CudaGemm g;
    g.h = alloc({B, P}, acc);
    g.gh = alloc({B, GH}, acc);
    g.w_hh = w.w_hh;
    Tensor c = alloc({B, H}, acc);
    if (w.w_hr.defined()) {
      g.hh = alloc({B, H}, acc);
      g.hp = alloc({B, P}, acc);
      g.w_hr = w.w_hr;
    }
    StepScratch s;
    s.h = mptr(g.h);
    s.c = mptr(c);
    s.gh = mptr(g.gh);
    s.hh = mptr(g.hh);
    s.hp = mptr(g.hp);
    const GemmCallback cb{&g, &CudaGemm::call};
    const Status st = Backward ? cuda::backward_step(a, s, cb, stream)
                               : cuda::forward_step(a, s, cb, stream);
    check(st, fn, &g);
  }

  static void forward(const ScanArgs& a, const Weights& w, const at::TensorOptions& acc) {
    run<false>(a, w, acc);
  }
  static void backward(const ScanArgs& a, const Weights& w, const at::TensorOptions& acc) {
    run<true>(a, w, acc);
  }
};

}  // namespace
}  // namespace bridge
}  // namespace rnnk

TORCH_LIBRARY_IMPL(rnnkernels_C, CUDA, m) {
  RNNK_REGISTER_SCAN_OPS(m, ::rnnk::bridge::CudaRunner);
}
