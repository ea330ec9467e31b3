// rnnkernels/cell_io.h — what each cell reads and writes around cell_math.h, once for the CPU
// kernels (csrc/cpu) and the CUDA kernels (csrc/cuda).
//
// cell_math.h holds the formulas; this file holds where their operands come from and where the
// results go: xp_t and the hidden pre-activations in, the new state, the output, the saved
// workspaces (forward) and the d gates, dxp and carries (backward) out, in the layout of
// docs/BACKENDS.md. Every kernel calls forward_unit / backward_unit for one hidden unit (a CUDA
// thread) or one vector of units (the CPU's SIMD lanes); what stays in the kernels is only what
// really differs between them: where h_{t-1}·W_hhᵀ comes from and where the state lives.
//
// The element access goes through an IO policy object `io`, so the same code serves scalars and
// vectors:
//   typename IO::T        the value type (float on CUDA, a SIMD vector of the acc type on the CPU)
//   typename IO::Acc      the accumulation type of the buffers (float, or double on the CPU)
//   io.load(const X* p)   X = the storage dtype or Acc, converted to T
//   io.store(X* p, T v)   rounded to X
//   io.zero()
// (csrc/cuda/cuda_common.cuh: ScalarIO; csrc/cpu/simd.h: VecIO, which carries the number of valid
// lanes of a ragged last vector). No torch, no CUDA header: compiles with g++ and nvcc.
#pragma once

#include <cstdint>

#include "rnnkernels/cell_math.h"
#include "rnnkernels/scan_params.h"

namespace rnnk {

// ScanArgs' per-step tensors, typed, and where one sequence's step is in them: `row` = t·B + b
// indexes the [T, B, ·] tensors at time index t, `prev` the same at the previous step's time
// index (-1 at the sequence's first step), `b` the [B, ·] ones. The units compute the offsets
// where they use them, 64-bit, from 32-bit sizes (H, G·H): the cheaper multiplication on GPUs.
// Pointers a call does not have are null.
template <class S, class A>
struct ForwardRow {
  int64_t row;
  const S* xp;    // [T, B, G·H]
  S* out;         // [T, B, P]
  A* gates;       // [T, B, G·H] activated gates, or null (not saved)
  A* cs;          // [T, B, H] LSTM c_t, or null
  A* hn_lin;      // [T, B, H] GRU W_hn·h_{t-1} + b_hn, or null
  const A* b_hn;  // [H] GRU bias of the n gate, or null
};

template <class S, class A>
RNNK_HOST_DEVICE RNNK_INLINE ForwardRow<S, A> forward_row(const ScanArgs& a, int64_t t,
                                                         int64_t b) {
  return {t * a.sched.B + b,
          static_cast<const S*>(a.xp),
          static_cast<S*>(a.out),
          static_cast<A*>(a.gates),
          static_cast<A*>(a.cs),
          static_cast<A*>(a.hn_lin),
          static_cast<const A*>(a.b_hn)};
}

template <class S, class A>
struct BackwardRow {
  int64_t row, prev, b;
  const S* grad_out;  // [T, B, P]
  S* dxp;             // [T, B, G·H]
  const A* gates;     // [T, B, G·H] the saved activated gates
  const A* cs;        // [T, B, H] LSTM c_t; c_{t-1} at `prev`, or c0 at the first step
  const S* c0;        // [B, H]
  const A* hn_lin;    // [T, B, H] GRU
  const S* out;       // [T, B, H] h_t (Elman: its value gives the activation's derivative), and
  const S* h0;        // [B, H]    h_{t-1} (GRU) at `prev`, or h0 at the first step
};

// `tprev`: the time index of the previous step of sequence b, or -1 at its first step.
template <class S, class A>
RNNK_HOST_DEVICE RNNK_INLINE BackwardRow<S, A> backward_row(const ScanArgs& a, int64_t t,
                                                           int64_t tprev, int64_t b) {
  const int64_t B = a.sched.B;
  return {t * B + b,
          tprev < 0 ? -1 : tprev * B + b,
          b,
          static_cast<const S*>(a.grad_out),
          static_cast<S*>(a.dxp),
          static_cast<const A*>(a.gates),
          static_cast<const A*>(a.cs),
          static_cast<const S*>(a.c0),
          static_cast<const A*>(a.hn_lin),
          static_cast<const S*>(a.out),
          static_cast<const S*>(a.h0)};
}

// v0 at p, v1 at p + stride, ...: one value per gate of a [.., G·H] row.
template <class IO, class X, class... Ts>
RNNK_HOST_DEVICE RNNK_INLINE void store_gates(const IO& io, X* p, int stride, const Ts&... v) {
  int q = 0;
  (io.store(p + (q++) * stride, v), ...);
}

// Forward of unit j of one sequence at one step (at row `r`):
//   x  = xp_t at unit j, gate q at x + q·xs (the row itself, or values the kernel loaded early),
//   gh = h_{t-1}·W_hhᵀ at unit j, gate q at gh + q·gs (GRU: without b_hn, added here),
//   h_prev = GRU h_{t-1} (may alias h), c = LSTM c_{t-1}, replaced by c_t.
// Writes h_t to h (the state the next step reads) and to the output, and the workspaces.
// kProjected (an LSTM with projection): h_t is hh, which the projection turns into the state and
// the output; the output is not written here.
template <Cell C, class M, bool kProjected = false, class IO, class S, class A, class X>
RNNK_HOST_DEVICE RNNK_INLINE void forward_unit(const IO& io, const ForwardRow<S, A>& r, int H,
                                               int64_t j, const X* x, int xs, const A* gh, int gs,
                                               const A* h_prev, A* c, A* h) {
  using T = typename IO::T;
  const int64_t gate_at = r.row * (gates_of(C) * H) + j, unit_at = r.row * H + j;
  T hn;
  if constexpr (C == Cell::kLSTM) {
    T i, f, u, o, cn;
    lstm_cell_fwd<M>(io.load(x) + io.load(gh), io.load(x + xs) + io.load(gh + gs),
                     io.load(x + 2 * xs) + io.load(gh + 2 * gs),
                     io.load(x + 3 * xs) + io.load(gh + 3 * gs), io.load(c), i, f, u, o, cn, hn);
    io.store(c, cn);
    if (r.gates) store_gates(io, r.gates + gate_at, H, i, f, u, o);
    if (r.cs) io.store(r.cs + unit_at, cn);
  } else if constexpr (C == Cell::kGRU) {
    T hn_lin = io.load(gh + 2 * gs);
    if (r.b_hn) hn_lin = hn_lin + io.load(r.b_hn + j);
    T rr, z, n;
    gru_cell_fwd<M>(io.load(x), io.load(x + xs), io.load(x + 2 * xs), io.load(gh),
                    io.load(gh + gs), hn_lin, io.load(h_prev), rr, z, n, hn);
    if (r.gates) store_gates(io, r.gates + gate_at, H, rr, z, n);
    if (r.hn_lin) io.store(r.hn_lin + unit_at, hn_lin);
  } else {
    hn = rnn_cell_fwd<M>(io.load(x) + io.load(gh), C == Cell::kRNNReLU);
  }
  io.store(h, hn);
  if constexpr (!kProjected) io.store(r.out + unit_at, hn);  // [T, B, H]: P = H
}

// The same with xp_t read from the row.
template <Cell C, class M, bool kProjected = false, class IO, class S, class A>
RNNK_HOST_DEVICE RNNK_INLINE void forward_unit(const IO& io, const ForwardRow<S, A>& r, int H,
                                               int64_t j, const A* gh, int gs, const A* h_prev,
                                               A* c, A* h) {
  const int GH = gates_of(C) * H;
  forward_unit<C, M, kProjected>(io, r, H, j, r.xp + r.row * GH + j, H, gh, gs, h_prev, c, h);
}

// Backward of unit j of one sequence at one step. dh = the carry ∂L/∂h_t from step t+1, to which
// grad_out_t is added here, replaced by the part of ∂L/∂h_{t-1} that does not pass through W_hh
// (GRU dh ⊙ z, the other cells 0); dc = LSTM ∂L/∂c_t, replaced by ∂L/∂c_{t-1}. Writes the d gates
// the recurrent GEMM multiplies (dg, gate stride H; GRU's n block is dn ⊙ r, the gradient of
// hn_lin) and dxp. kProjected (an LSTM with projection): dh is ∂L/∂hh, the total gradient of the
// unprojected hidden from the projection's backward, and is only read. dg is in the accumulation
// type in the scans; a cell step (csrc/cpu/cell_step.h) has it in the storage dtype, for its GEMMs.
template <Cell C, class M, bool kProjected = false, class IO, class S, class A, class DG>
RNNK_HOST_DEVICE RNNK_INLINE void backward_unit(const IO& io, const BackwardRow<S, A>& r, int H,
                                                int64_t j, A* dh, A* dc, DG* dg) {
  using T = typename IO::T;
  const int64_t gate_at = r.row * (gates_of(C) * H) + j, unit_at = r.row * H + j;
  // the previous step's unit: in the [T, B, H] tensors, or at the first step in the [B, H] ones
  const int64_t prev_at = (r.prev < 0 ? r.b : r.prev) * H + j;
  T dh_t = io.load(dh);
  if constexpr (!kProjected) dh_t = dh_t + io.load(r.grad_out + unit_at);  // P = H
  static_assert(!kProjected || C == Cell::kLSTM, "only an LSTM has a projection");
  if constexpr (C == Cell::kLSTM) {
    const A* g = r.gates + gate_at;
    const T c_prev = r.prev >= 0 ? io.load(r.cs + prev_at) : io.load(r.c0 + prev_at);
    T di, df, du, dout, dcp;
    lstm_cell_bwd<M>(dh_t, io.load(dc), io.load(g), io.load(g + H), io.load(g + 2 * H),
                     io.load(g + 3 * H), io.load(r.cs + unit_at), c_prev, di, df, du, dout, dcp);
    io.store(dc, dcp);
    store_gates(io, dg, H, di, df, du, dout);
    store_gates(io, r.dxp + gate_at, H, di, df, du, dout);
    if constexpr (!kProjected) io.store(dh, io.zero());
  } else if constexpr (C == Cell::kGRU) {
    const A* g = r.gates + gate_at;
    const T h_prev = io.load((r.prev >= 0 ? r.out : r.h0) + prev_at);
    T dr, dz, dn, dhn, direct;
    gru_cell_bwd<M>(dh_t, io.load(g), io.load(g + H), io.load(g + 2 * H),
                    io.load(r.hn_lin + unit_at), h_prev, dr, dz, dn, dhn, direct);
    io.store(dh, direct);
    store_gates(io, dg, H, dr, dz, dhn);
    store_gates(io, r.dxp + gate_at, H, dr, dz, dn);
  } else {
    const T dp = rnn_cell_bwd<M>(dh_t, io.load(r.out + unit_at), C == Cell::kRNNReLU);
    io.store(dh, io.zero());
    io.store(dg, dp);
    io.store(r.dxp + gate_at, dp);
  }
}

// A padded position (a step past the end of its sequence) of the backward: dxp is exactly 0
// there (dx = its row at the unit), and so are the d gates unless dg is null (the recurrent GEMM
// then adds nothing to the carry).
template <Cell C, class IO, class S, class A>
RNNK_HOST_DEVICE RNNK_INLINE void backward_padding(const IO& io, S* dx, A* dg, int H) {
  for (int q = 0; q < gates_of(C); ++q) {
    io.store(dx + q * H, io.zero());
    if (dg) io.store(dg + q * H, io.zero());
  }
}

}  // namespace rnnk
