// python/cpu_ops.cpp — the CPU implementations of the rnnkernels_C ops.
//
// Path choice (csrc/cpu/scan_cpu.h, cpu::choose_path): small batches run the fused kernel (its
// own register-blocked GEMM on a packed W_hh with the cell update on the accumulators, one OpenMP
// team for the whole sequence); larger ones run one GEMM per step through ATen into preallocated
// buffers, followed by the fused pointwise kernel. The per-step GEMM is at::mm_out /
// Tensor::addmm_, i.e. MKL on x86. Measured per call at B = 16..64, H = 256, 2 threads (Zen 3):
// MKL h·Wᵀ from a contiguous Wᵀ 99-108 GFLOP/s, from the transposed view 87-96, oneDNN's linear
// (mkldnn::_linear_pointwise, unpacked weight) 72-96, so MKL with a contiguous Wᵀ it is.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <exception>

#include "cpu/scan_cpu.h"
#include "ops_impl.h"

namespace rnnk {
namespace bridge {
namespace {

// The GEMMs of the step path (GemmOp in scan_params.h) on the scratch tensors. The forward uses
// W_hhᵀ / W_hrᵀ made contiguous once per call: MKL runs h·Wᵀ ~10% faster from a [P, G·H] row-major
// copy than from the transposed view (measured at B = 16..64, H = 256), and the copy costs less
// than one step.
struct CpuGemm {
  Tensor h, gh, hh, hp, w_hh, w_hr;
  std::exception_ptr error;

  static bool call(void* ctx, GemmOp op) {
    auto* g = static_cast<CpuGemm*>(ctx);
    try {
      switch (op) {
        case GemmOp::kGates: at::mm_out(g->gh, g->h, g->w_hh); break;
        case GemmOp::kProject: at::mm_out(g->hp, g->hh, g->w_hr); break;
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

cpu::Path requested_path(const ScanArgs& a, bool backward) {
  const std::string& p = options().cpu_path;
  if (p == "gemm") return cpu::Path::kGemm;
  if (p == "fused") {
    TORCH_CHECK(cpu::fused_supported(a), "rnnkernels cpu backend: cpu_path='fused' cannot run an "
                "LSTM with projection; use 'auto' or 'gemm'");
    return cpu::Path::kFused;
  }
  return cpu::choose_path(a, backward, at::get_num_threads());
}

void check(const Status& st, const char* fn, const CpuGemm* g = nullptr) {
  if (g && g->error) std::rethrow_exception(g->error);
  TORCH_CHECK(st.ok(), "rnnkernels cpu backend: ", fn, " failed: ", st.what);
}

struct CpuRunner {
  static constexpr at::DeviceType device = at::kCPU;
  static const char* name() { return "cpu"; }

  static void check_dtype(const Checker& ck) {
    TORCH_CHECK(ck.dtype == at::kFloat || ck.dtype == at::kDouble || ck.dtype == at::kBFloat16 ||
                    ck.dtype == at::kHalf,
                ck.who, ": unsupported dtype ", ck.dtype,
                " (float32, float64, bfloat16 and float16 are supported)");
  }

  static void forward(const ScanArgs& a, const Weights& w, const at::TensorOptions& acc) {
    const int64_t B = a.sched.B, H = a.H, P = a.P, GH = int64_t(a.gates_count()) * H;
    StepScratch s;
    if (requested_path(a, false) == cpu::Path::kFused) {
      Tensor h = alloc({2, B, H}, acc), c = alloc({B, H}, acc),
             pack = alloc({cpu::fused_pack_elems(a)}, acc);
      s.h = mptr(h);
      s.c = mptr(c);
      s.pack = mptr(pack);
      const int nt = cpu::fused_threads(a, at::get_num_threads());
      check(cpu::forward_fused(a, s, nt), "forward (fused)");
      return;
    }
    CpuGemm g;
    g.h = alloc({B, P}, acc);
    g.gh = alloc({B, GH}, acc);
    g.w_hh = w.w_hh.t().contiguous();
    Tensor c = alloc({B, H}, acc);
    if (w.w_hr.defined()) {
      g.hh = alloc({B, H}, acc);
      g.hp = alloc({B, P}, acc);
      g.w_hr = w.w_hr.t().contiguous();
    }
    s.h = mptr(g.h);
    s.c = mptr(c);
    s.gh = mptr(g.gh);
    s.hh = mptr(g.hh);
    s.hp = mptr(g.hp);
    const Status st = cpu::forward_gemm(a, s, GemmCallback{&g, &CpuGemm::call});
    check(st, "forward", &g);
  }

  static void backward(const ScanArgs& a, const Weights& w, const at::TensorOptions& acc) {
    const int64_t B = a.sched.B, H = a.H, P = a.P, GH = int64_t(a.gates_count()) * H;
    StepScratch s;
    if (requested_path(a, true) == cpu::Path::kFused) {
      Tensor h = alloc({B, H}, acc), c = alloc({B, H}, acc),
             gh = alloc({2, B, GH}, acc);
      s.h = mptr(h);
      s.c = mptr(c);
      s.gh = mptr(gh);
      const int nt = cpu::fused_threads(a, at::get_num_threads());
      check(cpu::backward_fused(a, s, nt), "backward (fused)");
      return;
    }
    CpuGemm g;
    g.h = alloc({B, P}, acc);
    g.gh = alloc({B, GH}, acc);
    g.w_hh = w.w_hh;
    Tensor c = alloc({B, H}, acc);
    if (w.w_hr.defined()) {
      g.hh = alloc({B, H}, acc);
      g.hp = alloc({B, P}, acc);
      g.w_hr = w.w_hr;
    }
    s.h = mptr(g.h);
    s.c = mptr(c);
    s.gh = mptr(g.gh);
    s.hh = mptr(g.hh);
    s.hp = mptr(g.hp);
    const Status st = cpu::backward_gemm(a, s, GemmCallback{&g, &CpuGemm::call});
    check(st, "backward", &g);
  }
};

}  // namespace
}  // namespace bridge
}  // namespace rnnk

TORCH_LIBRARY_IMPL(rnnkernels_C, CPU, m) {
  RNNK_REGISTER_SCAN_OPS(m, ::rnnk::bridge::CpuRunner);
}
