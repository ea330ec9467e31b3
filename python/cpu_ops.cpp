// python/cpu_ops.cpp — the CPU implementations of the rnnkernels_C ops.
//
// Path choice (csrc/cpu/scan_cpu.h, cpu::choose_path): small batches run the fused kernel (its
// own register-blocked GEMM on a packed W_hh with the cell update on the accumulators, one OpenMP
// team for the whole sequence); larger ones run one GEMM per step through ATen into preallocated
// buffers, followed by the fused pointwise kernel. The per-step GEMM is at::mm_out /
// Tensor::addmm_, i.e. MKL on x86, with the forward's Wᵀ as a contiguous copy: of the per-step
// GEMMs measured (MKL on a contiguous Wᵀ, MKL on the transposed view, oneDNN's linear on the
// unpacked weight) it is the fastest, and the copy, once per call, costs less than one step. The
// figures: bench/results/cpu-20261126/README.md.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/scan_cpu.h"
#include "ops_impl.h"
#include "step_gemm.h"

namespace rnnk {
namespace bridge {

cpu::Path requested_path(const ScanArgs& a, bool backward) {
  const std::string& p = options().cpu_path;
  if (p == "gemm") return cpu::Path::kGemm;
  if (p == "fused") {
    TORCH_CHECK(cpu::fused_supported(a), "rnnkernels cpu backend: cpu_path='fused' cannot run an "
                "LSTM with projection; use 'auto' or 'gemm'");
    return cpu::Path::kFused;
  }
  return cpu::choose_path(a, backward);
}

namespace {

// The fused path's scratch (csrc/cpu/scan_cpu.h) and call.
Status run_fused(const ScanArgs& a, const at::TensorOptions& acc, bool backward) {
  const int64_t B = a.sched.B, H = a.H;
  const int nthreads = cpu::fused_threads(a, at::get_num_threads());
  if (backward) {
    const Tensor dh = alloc({B, H}, acc), dc = alloc({B, H}, acc),
                 dgates = alloc({2, B, gates_of(a.cell) * H}, acc);
    BackwardScratch s;
    s.dh = mptr(dh);
    s.dc = mptr(dc);
    s.dgates = mptr(dgates);
    return cpu::backward_fused(a, s, nthreads);
  }
  const Tensor h = alloc({2, B, H}, acc), c = alloc({B, H}, acc),
               pack = alloc({cpu::fused_pack_elems(a)}, acc);
  ForwardScratch s;
  s.h = mptr(h);
  s.c = mptr(c);
  s.pack = mptr(pack);
  return cpu::forward_fused(a, s, nthreads);
}

struct CpuRunner {
  static constexpr at::DeviceType device = at::kCPU;
  static const char* name() { return "cpu"; }

  static void check_dtype(const Checker& ck) { ck.cpu_dtype(); }

  static void run(const ScanArgs& a, const Weights& w, const at::TensorOptions& acc,
                  bool backward) {
    if (requested_path(a, backward) == cpu::Path::kFused) {
      raise_if_failed(run_fused(a, acc, backward), "cpu",
                      backward ? "backward (fused)" : "forward (fused)");
      return;
    }
    StepGemm g(a, w, acc, backward, /*copy_transposed=*/true);
    const Status st = backward ? cpu::backward_gemm(a, g.backward_scratch(), g.callback())
                               : cpu::forward_gemm(a, g.forward_scratch(), g.callback());
    raise_if_failed(st, "cpu", backward ? "backward" : "forward", &g);
  }
};

}  // namespace
}  // namespace bridge
}  // namespace rnnk

TORCH_LIBRARY_IMPL(rnnkernels_C, CPU, m) {
  RNNK_REGISTER_SCAN_OPS(m, ::rnnk::bridge::CpuRunner);
}
