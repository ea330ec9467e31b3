// rnnkernels/step_path.h — the step path, the same on both devices: per step one GEMM through the
// caller's callback (MKL through ATen on the CPU, cuBLAS through ATen on CUDA) and one pointwise
// pass over batch × hidden that runs the cell (cell_io.h) on the GEMM's result in place. It runs
// any case, and is the only path for an LSTM with projection.
//
//   forward, s = 0..T-1:   gh = h·W_hhᵀ               (GemmOp::kGates)
//                          StepForward                 over (b, j)
//                          LSTM with projection: hp = hh·W_hrᵀ (kProject), projection_unit
//                          over (b, k)
//   backward, s = T-1..0:  LSTM with projection: projection_unit over (b, k),
//                          dhh = dh_total·W_hr (kProjectBack)
//                          StepBackward                over (b, j)
//                          dh += dgates·W_hh           (kRecurrent)
//
// The units are host+device code for one unit (a CUDA thread, csrc/cuda/step_kernels.cu) or one
// vector of units (an OpenMP loop, csrc/cpu/scan_step.h); step_path (one overload per direction)
// is the host loop around them, given a `Device` that runs the passes:
//   Status pointwise(int64_t s)    StepForward / StepBackward over every (b, j)
//   Status projection(int64_t s)   the projection unit over every (b, k)
//   Status to_acc(void* dst, const void* src, int64_t n)       n elements, storage dtype → acc
//   Status to_storage(void* dst, const void* src, int64_t n)   and back
#pragma once

#include <cstdint>
#include <type_traits>

#include "rnnkernels/cell_io.h"
#include "rnnkernels/scan_params.h"

namespace rnnk {

// What a step s of sequence b in either direction's pointwise pass knows: set up once per sequence
// and step, then run for each unit j (a CUDA thread: one unit; the CPU: a vector of units at a
// time): padding() past the end of the sequence, else unit<kProjected>() (kProjected =
// `projected`).
template <Cell C>
struct StepCase {
  static constexpr Cell cell = C;
  int64_t t;       // the time index, -1 past the end
  int H;
  bool projected;  // LSTM with projection

  RNNK_HOST_DEVICE RNNK_INLINE StepCase(const ScanArgs& a, int64_t s, int64_t b)
      : t(a.sched.time(s, b)), H(int(a.H)), projected(C == Cell::kLSTM && a.w_hr) {}
  RNNK_HOST_DEVICE RNNK_INLINE bool active() const { return t >= 0; }
};

// The forward's step. With a projection the cell's h_t is hh, which the projection GEMM turns
// into the state and the output.
template <Cell C, class M, class S, class A>
struct StepForward : StepCase<C> {
  ForwardRow<S, A> r;
  S* pad;         // past the end: the output row at t = s, to zero (null: the projection does)
  A *h, *c, *hh;  // the scratch rows of sequence b
  const A* gh;

  RNNK_HOST_DEVICE RNNK_INLINE StepForward(const ScanArgs& a, const ForwardScratch& w, int64_t s,
                                           int64_t b)
      : StepCase<C>(a, s, b),
        r(forward_row<S, A>(a, this->t, b)),
        pad(a.w_hr ? nullptr : static_cast<S*>(a.out) + (s * a.sched.B + b) * a.P),
        h(static_cast<A*>(w.h) + b * a.P),
        c(C == Cell::kLSTM ? static_cast<A*>(w.c) + b * a.H : nullptr),
        hh(a.w_hr ? static_cast<A*>(w.hh) + b * a.H : nullptr),
        gh(static_cast<const A*>(w.gh) + b * (gates_of(C) * int(a.H))) {}

  // Past the end: the state stays frozen, the output is zero.
  template <class IO>
  RNNK_HOST_DEVICE RNNK_INLINE void padding(const IO& io, int64_t j) const {
    if (pad) io.store(pad + j, io.zero());
  }

  template <bool kProjected, class IO>
  RNNK_HOST_DEVICE RNNK_INLINE void unit(const IO& io, int64_t j) const {
    const int H = this->H;
    forward_unit<C, M, kProjected>(io, r, H, j, gh + j, H, h + j,
                                   C == Cell::kLSTM ? c + j : nullptr, kProjected ? hh + j : h + j);
  }
};

// The backward's step. With a projection ∂L/∂hh comes from the projection GEMM, which consumed
// the carry.
template <Cell C, class M, class S, class A>
struct StepBackward : StepCase<C> {
  BackwardRow<S, A> r;
  S* pad;                 // past the end: the dxp row at t = s, to zero
  A *dh, *dc, *dhh, *dg;  // the scratch rows of sequence b

  RNNK_HOST_DEVICE RNNK_INLINE StepBackward(const ScanArgs& a, const BackwardScratch& w,
                                            int64_t s, int64_t b)
      : StepCase<C>(a, s, b),
        r(backward_row<S, A>(a, this->t, s > 0 ? a.sched.time(s - 1, b) : -1, b)),
        pad(static_cast<S*>(a.dxp) + (s * a.sched.B + b) * (gates_of(C) * int(a.H))),
        dh(static_cast<A*>(w.dh) + b * a.P),
        dc(C == Cell::kLSTM ? static_cast<A*>(w.dc) + b * a.H : nullptr),
        dhh(a.w_hr ? static_cast<A*>(w.dhh) + b * a.H : nullptr),
        dg(static_cast<A*>(w.dgates) + b * (gates_of(C) * int(a.H))) {}

  // Past the end: the carry passes through (no GEMM contribution), the gradient is zero.
  template <class IO>
  RNNK_HOST_DEVICE RNNK_INLINE void padding(const IO& io, int64_t j) const {
    backward_padding<C>(io, pad + j, dg + j, this->H);
  }

  template <bool kProjected, class IO>
  RNNK_HOST_DEVICE RNNK_INLINE void unit(const IO& io, int64_t j) const {
    backward_unit<C, M, kProjected>(io, r, this->H, j, kProjected ? dhh + j : dh + j,
                                    C == Cell::kLSTM ? dc + j : nullptr, dg + j);
  }
};

// Unit j of a step (StepForward, StepBackward), whichever case it is: what a CUDA thread does.
// (The CPU decides the cases once per row and call, see csrc/cpu/scan_step.h.)
template <class Step, class IO>
RNNK_HOST_DEVICE RNNK_INLINE void step_unit(const Step& step, const IO& io, int64_t j) {
  constexpr bool lstm = Step::cell == Cell::kLSTM;
  if (!step.active())
    step.padding(io, j);
  else if (lstm && step.projected)
    step.template unit<lstm>(io, j);  // unit<true>, for the LSTM only
  else
    step.template unit<false>(io, j);
}

// The LSTM projection's pass at feature k of sequence b, step s. Forward, after hp = hh·W_hrᵀ:
// active rows take hp as their state and output. Backward, before the pointwise pass: the step's
// total ∂L/∂h_t (carry + output gradient) goes to dh_total (for dhh = dh_total·W_hr) and to
// dh_all, and the carry restarts from 0. The padded positions of out / dh_all get exact zeros.
template <class S, class IO, class Scratch>
RNNK_HOST_DEVICE RNNK_INLINE void projection_unit(const IO& io, const ScanArgs& a,
                                                  const Scratch& w, int64_t s, int64_t b,
                                                  int64_t k) {
  using A = typename IO::Acc;
  const int64_t B = a.sched.B, P = a.P, t = a.sched.time(s, b), bk = b * P + k;
  const int64_t at = (t < 0 ? s : t) * B * P + bk;  // in the [T, B, P] out / dh_all
  if constexpr (std::is_same_v<Scratch, BackwardScratch>) {
    A* dh_all = static_cast<A*>(a.dh_all);
    if (t < 0) return io.store(dh_all + at, io.zero());
    A* carry = static_cast<A*>(w.dh) + bk;
    const auto v = io.load(carry) + io.load(static_cast<const S*>(a.grad_out) + at);
    io.store(carry, io.zero());
    io.store(static_cast<A*>(w.dh_total) + bk, v);
    io.store(dh_all + at, v);
  } else {
    S* out = static_cast<S*>(a.out);
    if (t < 0) return io.store(out + at, io.zero());
    const auto v = io.load(static_cast<const A*>(w.hp) + bk);
    io.store(static_cast<A*>(w.h) + bk, v);
    io.store(out + at, v);
  }
}

// The carried state (forward: h, c; backward: ∂L/∂h, ∂L/∂c) from the storage-dtype inputs into
// the scratch, and at the end back.
template <Cell C, class Device>
Status states_to_acc(const ScanArgs& a, const Device& dev, void* h, void* c, const void* h_src,
                     const void* c_src) {
  Status st = dev.to_acc(h, h_src, a.sched.B * a.P);
  if (st.ok() && C == Cell::kLSTM) st = dev.to_acc(c, c_src, a.sched.B * a.H);
  return st;
}

template <Cell C, class Device>
Status states_to_storage(const ScanArgs& a, const Device& dev, void* h_dst, void* c_dst,
                         const void* h, const void* c) {
  Status st = dev.to_storage(h_dst, h, a.sched.B * a.P);
  if (st.ok() && C == Cell::kLSTM) st = dev.to_storage(c_dst, c, a.sched.B * a.H);
  return st;
}

// The forward's loop.
template <Cell C, class Device>
Status step_path(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm,
                 const Device& dev) {
  Status st = states_to_acc<C>(a, dev, w.h, w.c, a.h0, a.c0);
  for (int64_t s = 0; st.ok() && s < a.sched.T; ++s) {
    if (!gemm(GemmOp::kGates)) return Status::error(kErrorUnsupported, "gates GEMM failed");
    st = dev.pointwise(s);
    if (st.ok() && C == Cell::kLSTM && a.w_hr) {
      if (!gemm(GemmOp::kProject))
        return Status::error(kErrorUnsupported, "projection GEMM failed");
      st = dev.projection(s);
    }
  }
  return st.ok() ? states_to_storage<C>(a, dev, a.h_n, a.c_n, w.h, w.c) : st;
}

// The backward's loop.
template <Cell C, class Device>
Status step_path(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm,
                 const Device& dev) {
  Status st = states_to_acc<C>(a, dev, w.dh, w.dc, a.grad_hn, a.grad_cn);
  for (int64_t s = a.sched.T - 1; st.ok() && s >= 0; --s) {
    if (C == Cell::kLSTM && a.w_hr) {
      st = dev.projection(s);
      if (!st.ok()) break;
      if (!gemm(GemmOp::kProjectBack))
        return Status::error(kErrorUnsupported, "projection GEMM failed");
    }
    st = dev.pointwise(s);
    if (st.ok() && !gemm(GemmOp::kRecurrent))
      return Status::error(kErrorUnsupported, "recurrent GEMM failed");
  }
  return st.ok() ? states_to_storage<C>(a, dev, a.dh0, a.dc0, w.dh, w.dc) : st;
}

}  // namespace rnnk
