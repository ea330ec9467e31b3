// python/step_gemm.h — the device side of the step path (rnnkernels/step_path.h) that both
// devices share: its scratch buffers and the GEMMs the kernels call back for (GemmOp), run
// through ATen on the current stream (MKL on the CPU, cuBLAS on CUDA); and the error of a failed
// kernel call.
#pragma once

#include <ATen/ATen.h>

#include <exception>

#include "bridge.h"
#include "ops_impl.h"

namespace rnnk {
namespace bridge {

// Buffers [acc]: state [B, P], cell [B, H], gates [B, G·H], and with a projection hidden [B, H]
// and proj [B, P]; the forward and the backward use them in the roles of ForwardScratch and
// BackwardScratch. The forward multiplies by W_hhᵀ and W_hrᵀ: as contiguous copies when
// `copy_transposed` (once per call; MKL is faster on them than on the transposed views, see
// python/cpu_ops.cpp), else as the views.
class StepGemm {
 public:
  StepGemm(const ScanArgs& a, const Weights& w, const at::TensorOptions& acc, bool backward,
           bool copy_transposed) {
    const int64_t B = a.sched.B, H = a.H, P = a.P;
    auto weight = [&](const Tensor& W) {
      return backward ? W : copy_transposed ? W.t().contiguous() : W.t();
    };
    state_ = alloc({B, P}, acc);
    gates_ = alloc({B, gates_of(a.cell) * H}, acc);
    w_hh_ = weight(w.w_hh);
    cell_ = alloc({B, H}, acc);
    if (w.w_hr.defined()) {
      hidden_ = alloc({B, H}, acc);
      proj_ = alloc({B, P}, acc);
      w_hr_ = weight(w.w_hr);
    }
  }

  // The fields in the order of the structs (scan_params.h): h / dh, c / dc, gh / dgates,
  // hh / dhh, hp / dh_total.
  ForwardScratch forward_scratch() const {
    return {mptr(state_), mptr(cell_), mptr(gates_), mptr(hidden_), mptr(proj_), nullptr};
  }
  BackwardScratch backward_scratch() const {
    return {mptr(state_), mptr(cell_), mptr(gates_), mptr(hidden_), mptr(proj_)};
  }
  GemmCallback callback() { return GemmCallback{this, &StepGemm::call}; }

  // The exception of a GEMM that failed (the kernels then return an error Status), if any.
  void rethrow() const {
    if (error_) std::rethrow_exception(error_);
  }

 private:
  static bool call(void* ctx, GemmOp op) {
    auto* g = static_cast<StepGemm*>(ctx);
    try {
      switch (op) {
        case GemmOp::kGates: at::mm_out(g->gates_, g->state_, g->w_hh_); break;
        case GemmOp::kProject: at::mm_out(g->proj_, g->hidden_, g->w_hr_); break;
        case GemmOp::kRecurrent: g->state_.addmm_(g->gates_, g->w_hh_); break;
        case GemmOp::kProjectBack: at::mm_out(g->hidden_, g->proj_, g->w_hr_); break;
      }
      return true;
    } catch (...) {
      g->error_ = std::current_exception();
      return false;
    }
  }

  Tensor state_, cell_, gates_, hidden_, proj_, w_hh_, w_hr_;
  std::exception_ptr error_;
};

// Raises the error of a failed kernel call: the exception of a GEMM it called back for, else
// its Status, with `describe(code)` for a device error code (a positive one) when given.
inline void raise_if_failed(const Status& st, const char* backend, const char* fn,
                            const StepGemm* gemm = nullptr,
                            const char* (*describe)(int code) = nullptr) {
  if (gemm) gemm->rethrow();
  if (st.ok()) return;
  if (describe && st.code > 0)
    TORCH_CHECK(false, "rnnkernels ", backend, " backend: ", fn, ": ", st.what, " failed: ",
                describe(st.code));
  TORCH_CHECK(false, "rnnkernels ", backend, " backend: ", fn, " failed: ", st.what);
}

}  // namespace bridge
}  // namespace rnnk
