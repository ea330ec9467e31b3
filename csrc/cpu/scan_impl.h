// csrc/cpu/scan_impl.h — the CPU scans. Included by isa_build.h, once per instruction-set build
// (scan_generic.cpp, scan_avx2.cpp, scan_avx512.cpp, each defining RNNK_CPU_ISA, the namespace of
// that build, first); scan_dispatch.cpp picks one at run time. Do not include it (or its parts) anywhere else.
//
// Two ways to run a scan (docs/BACKENDS.md has the contract, cell_math.h the formulas, cell_io.h
// what each cell reads and writes):
//
// * GEMM path (scan_step.h; any size, the only one for an LSTM with projection). Per step the
//   caller's GEMM callback computes h_{t-1}·W_hhᵀ for the whole batch (MKL through ATen: the
//   fastest GEMM there at large batch), then one fused pointwise pass over batch × hidden,
//   parallel over both with OpenMP, vectorised, writing the state, the output and the workspaces
//   in place. The backward mirrors it: pointwise pass producing d gates, then one GEMM
//   accumulating d gates·W_hh into the carried ∂L/∂h. Shared with CUDA: rnnkernels/step_path.h.
//
// * Fused path (scan_fused_fwd.h, scan_fused_bwd.h; small and medium batch). One OpenMP team
//   lives for the whole sequence; thread k owns a slice of hidden units and the matching rows of
//   W_hh, multiplied with register-blocked tiles (micro_kernels.h). Threads meet once per step at a
//   barrier. There is no per-step library call (µs each through the dispatcher) and no pass over
//   a [B, G·H] pre-activation buffer.
//
// Time order, lengths, reverse: see Schedule in scan_params.h. An inactive sequence keeps its state
// and gets exact zeros in `out` / `dxp` at position t = s (each padded position once).

#include "micro_kernels.h"
#include "scan_common.h"
#include "scan_fused_bwd.h"
#include "scan_fused_fwd.h"
#include "scan_step.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {

namespace {

// rnnk::dispatch with the CPU storage types.
template <class F>
Status by_dtype(const ScanArgs& a, F&& f) {
  return dispatch<float, double, f16_t, bf16_t>(a, f);
}

// The GEMM path (Scratch = ForwardScratch: forward, BackwardScratch: backward).
template <class Scratch>
Status run_gemm(const ScanArgs& a, const Scratch& w, const GemmCallback& gemm) {
  constexpr bool backward = std::is_same_v<Scratch, BackwardScratch>;
  return by_dtype(a, [&](auto cell, auto* s) {
    constexpr Cell C = decltype(cell)::value;
    return step_path<C>(a, w, gemm, CpuStep<C, std::remove_pointer_t<decltype(s)>, backward>{a, w});
  });
}

// The fused path, likewise.
template <class Scratch>
Status run_fused(const ScanArgs& a, const Scratch& w, int nthreads) {
  if (a.w_hr || a.P != a.H)
    return Status::error(kErrorUnsupported, "the fused CPU path has no projection");
  return by_dtype(a, [&](auto cell, auto* s) {
    constexpr Cell C = decltype(cell)::value;
    using S = std::remove_pointer_t<decltype(s)>;
    if constexpr (std::is_same_v<Scratch, BackwardScratch>)
      return backward_fused_impl<C, S>(a, w, nthreads);
    else
      return forward_fused_impl<C, S>(a, w, nthreads);
  });
}

// f(Panel<C, Vec<A>::L>{}) for the runtime cell (the panel shapes of micro_kernels.h).
template <class A, class F>
int64_t with_panel(Cell cell, F&& f) {
  constexpr int L = Vec<A>::L;
  switch (cell) {
    case Cell::kLSTM: return f(Panel<Cell::kLSTM, L>{});
    case Cell::kGRU: return f(Panel<Cell::kGRU, L>{});
    default: return f(Panel<Cell::kRNNTanh, L>{});  // both Elman cells
  }
}

}  // namespace

Status forward_gemm(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm) {
  return run_gemm(a, w, gemm);
}
Status backward_gemm(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm) {
  return run_gemm(a, w, gemm);
}
Status forward_fused(const ScanArgs& a, const ForwardScratch& w, int nthreads) {
  return run_fused(a, w, nthreads);
}
Status backward_fused(const ScanArgs& a, const BackwardScratch& w, int nthreads) {
  return run_fused(a, w, nthreads);
}

// Threads worth using for the fused path: enough multiply-adds per thread and step to pay for a
// barrier, at least one panel of hidden units (a float panel) each.
int fused_threads(const ScanArgs& a, int max_threads) {
  const int64_t macs = a.sched.B * int64_t(gates_of(a.cell)) * a.H * a.P;
  const int64_t units = with_panel<float>(a.cell, [](auto pn) { return decltype(pn)::U; });
  int64_t n = std::max<int64_t>(1, macs / kFusedMinMacsPerThread);
  n = std::min<int64_t>(n, (a.H + units - 1) / units);
  n = std::min<int64_t>(n, std::max(1, max_threads));
  return int(n);
}

// Elements (of the accumulation type) of the packed W_hh the fused forward needs.
int64_t fused_pack_elems(const ScanArgs& a) {
  auto elems = [&](auto pn) -> int64_t {
    using PN = decltype(pn);
    return (a.H + PN::U - 1) / PN::U * a.H * PN::NV * PN::lanes;
  };
  return a.dtype == DType::kFloat64 ? with_panel<double>(a.cell, elems)
                                    : with_panel<float>(a.cell, elems);
}

}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
