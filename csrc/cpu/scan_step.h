// csrc/cpu/scan_step.h — the step path on the CPU (part of the CPU scans, see scan_common.h):
// rnnkernels/step_path.h's units and loops, with the caller's GEMM callback (MKL through ATen)
// between the pointwise passes. A pass is an OpenMP loop over (sequence, chunk of units), one
// vector of units per call of the unit; no tensor is allocated per step.
#pragma once

#include "rnnkernels/step_path.h"
#include "scan_common.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {
namespace {

// Hidden units per work item of a pass (a multiple of every L).
constexpr int64_t kChunk = 64;

// Step(a, w, s, b) for every sequence b, then its unit (or padding) for every vector of hidden
// units j, in parallel over both: a Step (StepForward, StepBackward) sets up a sequence's step
// once per work item, and whether it is active is decided there, whether the LSTM is projected
// once per call, so that the loops over the vectors are free of those branches.
template <class S, class Step, bool kProjected, class Scratch>
void pointwise_pass(const ScanArgs& a, const Scratch& w, int64_t s) {
  using IO = typename Types<S>::IO;
  constexpr int L = Types<S>::L;
  const int64_t B = a.sched.B, H = a.H, nch = (H + kChunk - 1) / kChunk, items = B * nch;
  const int64_t elems = B * gates_of(a.cell) * H;
#pragma omp parallel for schedule(static) if (items > 1 && elems >= kParallelMinElems)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t b = it / nch, jb = (it % nch) * kChunk, je = std::min(H, jb + kChunk);
    const Step step(a, w, s, b);
    if (step.active())
      for_vectors<L>(jb, je, [&](int n, int64_t j) { step.template unit<kProjected>(IO{n}, j); });
    else
      for_vectors<L>(jb, je, [&](int n, int64_t j) { step.padding(IO{n}, j); });
  }
}

// unit(io, b, k) for every sequence b and vector of state features k, serially (the projection's
// passes).
template <class S, class Unit>
void projection_pass(const ScanArgs& a, const Unit& unit) {
  using IO = typename Types<S>::IO;
  constexpr int L = Types<S>::L;
  for (int64_t b = 0; b < a.sched.B; ++b)
    for_vectors<L>(0, a.P, [&](int n, int64_t k) { unit(IO{n}, b, k); });
}

// The step path's Device (rnnkernels/step_path.h) on the CPU, forward or backward.
template <Cell C, class S, bool Backward>
struct CpuStep {
  using A = typename Types<S>::A;
  using M = typename Types<S>::M;
  const ScanArgs& a;
  const std::conditional_t<Backward, BackwardScratch, ForwardScratch>& w;

  Status to_acc(void* dst, const void* src, int64_t n) const {
    convert_row<A>(static_cast<A*>(dst), static_cast<const S*>(src), n);
    return Status::success();
  }
  Status to_storage(void* dst, const void* src, int64_t n) const {
    convert_row<S>(static_cast<S*>(dst), static_cast<const A*>(src), n);
    return Status::success();
  }
  Status pointwise(int64_t s) const {
    using Step = std::conditional_t<Backward, StepBackward<C, M, S, A>, StepForward<C, M, S, A>>;
    if (C == Cell::kLSTM && a.w_hr)
      pointwise_pass<S, Step, C == Cell::kLSTM>(a, w, s);  // <.., true>, for the LSTM only
    else
      pointwise_pass<S, Step, false>(a, w, s);
    return Status::success();
  }
  Status projection(int64_t s) const {
    projection_pass<S>(
        a, [&](const auto& io, int64_t b, int64_t k) { projection_unit<S>(io, a, w, s, b, k); });
    return Status::success();
  }
};

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
