// csrc/cpu/scan_impl.h — the CPU scans. Included by scan_generic.cpp and scan_avx2.cpp, each
// defining RNNK_CPU_ISA (the namespace of that instruction-set build) first; scan_dispatch.cpp
// picks one at run time. Do not include it anywhere else.
//
// Two ways to run a scan (docs/BACKENDS.md has the contract, cell_math.h the formulas):
//
// * GEMM path (any size, the only one for an LSTM with projection). Per step the caller's GEMM
//   callback computes h_{t-1}·W_hhᵀ for the whole batch (MKL through ATen: the fastest GEMM there
//   at large batch), then one fused pointwise pass over batch × hidden, parallel over both with
//   OpenMP, vectorised, writing the state, the output and the workspaces in place. No tensor is
//   allocated per step. The backward mirrors it: pointwise pass producing d gates, then one GEMM
//   accumulating d gates·W_hh into the carried ∂L/∂h.
//
// * Fused path (small and medium batch). One OpenMP team lives for the whole sequence; thread k
//   owns a slice of hidden units and the matching rows of W_hh. Forward: the thread packs its rows
//   once per call into panels (G gates × 8 units contiguous per k) that stay in its L2, and every
//   step runs a register-blocked micro-GEMM (up to 3-5 batch rows × one panel, h_{t-1}[b][k]
//   broadcast against the panel's vectors) whose accumulators are exactly the pre-activations of
//   8 units: the cell update runs on them directly. Backward: the thread turns its units' ∂L/∂h_t
//   into d gates, then (after a barrier) accumulates its columns of d gates·W_hh with column
//   tiles over the unpacked W_hh rows. Threads meet once per step at a barrier; the shared h
//   (forward) or d gates (backward) buffer is double-buffered by step parity so one barrier
//   suffices. There is no per-step library call (µs each through the dispatcher) and no pass
//   over a [B, G·H] pre-activation buffer.
//
// Time order, lengths, reverse: see Schedule in scan_params.h. An inactive sequence keeps its state
// and gets exact zeros in `out` / `dxp` at position t = s (each padded position once).

#ifndef RNNK_CPU_ISA
#error "define RNNK_CPU_ISA before including scan_impl.h"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rnnkernels/cell_math.h"
#include "rnnkernels/scan_params.h"
#include "simd.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {

namespace {

// Work below this many multiply-adds (or pointwise elements) per step is not worth waking a team.
constexpr int64_t kParallelMinElems = 4096;
constexpr int64_t kFusedMinMacsPerThread = 12288;
// Hidden units per work item of the GEMM path's pointwise pass (a multiple of every L).
constexpr int64_t kChunk = 64;

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// Hidden units [j0, j1) of thread `tid` out of `nth`: whole vectors, as even as possible.
template <int L>
inline void slice_of(int64_t H, int tid, int nth, int64_t& j0, int64_t& j1) {
  const int64_t nv = (H + L - 1) / L;
  j0 = std::min(H, (nv * tid / nth) * L);
  j1 = std::min(H, (nv * (tid + 1) / nth) * L);
}

template <class S>
struct Types {
  using A = typename AccOf<S>::type;  // accumulation type
  using V = typename Vec<A>::type;    // its SIMD vector
  using M = typename VecMathOf<A>::type;
  static constexpr int L = Vec<A>::L;
};

template <class T>
inline void fill_zero(T* p, int64_t n) {
  std::memset(static_cast<void*>(p), 0, sizeof(T) * n);  // +0.0 in every dtype
}

template <class D, class Src>
inline void convert_row(D* dst, const Src* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = store_cast<D>(to_acc(src[k]));
}

// ================================================================= pointwise chunk bodies
// One chunk of n ≤ L hidden units j..j+n-1 of one sequence at one step. Pointers are already
// offset to unit j of the right row; `H` is the gate stride of xp / gates / dxp rows, `gs` the gate
// stride of the hidden pre-activations (H in a [B, G·H] GEMM result, L in the fused path's tile).

template <class S>
RNNK_INLINE void lstm_fwd_chunk(const S* x, int64_t H, const typename Types<S>::A* gh, int64_t gs,
                                typename Types<S>::A* c, typename Types<S>::A* h, S* out,
                                typename Types<S>::A* gates, typename Types<S>::A* cs, int n) {
  using T = Types<S>;
  using V = typename T::V;
  const V gi = vload(x, n) + vload(gh, n);
  const V gf = vload(x + H, n) + vload(gh + gs, n);
  const V gg = vload(x + 2 * H, n) + vload(gh + 2 * gs, n);
  const V go = vload(x + 3 * H, n) + vload(gh + 3 * gs, n);
  V i, f, u, o, cn, hn;
  lstm_cell_fwd<typename T::M>(gi, gf, gg, go, vload(c, n), i, f, u, o, cn, hn);
  vstore(c, cn, n);
  vstore(h, hn, n);
  if (out) vstore(out, hn, n);
  if (gates) {
    vstore(gates, i, n);
    vstore(gates + H, f, n);
    vstore(gates + 2 * H, u, n);
    vstore(gates + 3 * H, o, n);
  }
  if (cs) vstore(cs, cn, n);
}

// GRU: gh holds h_{t-1}·W_hhᵀ without b_hn (added here); `hprev` may alias `h` (read first).
template <class S>
RNNK_INLINE void gru_fwd_chunk(const S* x, int64_t H, const typename Types<S>::A* gh, int64_t gs,
                               const typename Types<S>::A* bhn, const typename Types<S>::A* hprev,
                               typename Types<S>::A* h, S* out, typename Types<S>::A* gates,
                               typename Types<S>::A* hn_ws, int n) {
  using T = Types<S>;
  using V = typename T::V;
  V hn_lin = vload(gh + 2 * gs, n);
  if (bhn) hn_lin = hn_lin + vload(bhn, n);
  V r, z, nn, hn;
  gru_cell_fwd<typename T::M>(vload(x, n), vload(x + H, n), vload(x + 2 * H, n), vload(gh, n),
                             vload(gh + gs, n), hn_lin, vload(hprev, n), r, z, nn, hn);
  vstore(h, hn, n);
  vstore(out, hn, n);
  if (gates) {
    vstore(gates, r, n);
    vstore(gates + H, z, n);
    vstore(gates + 2 * H, nn, n);
  }
  if (hn_ws) vstore(hn_ws, hn_lin, n);
}

template <class S>
RNNK_INLINE void rnn_fwd_chunk(const S* x, const typename Types<S>::A* gh,
                               typename Types<S>::A* h, S* out, bool relu, int n) {
  using T = Types<S>;
  const typename T::V hn = rnn_cell_fwd<typename T::M>(vload(x, n) + vload(gh, n), relu);
  vstore(h, hn, n);
  vstore(out, hn, n);
}

// LSTM backward. dh = `dh_acc` (+ `gout` when given): the gradient of the unprojected hidden.
// `dc` carries ∂L/∂c in place. c_{t-1} comes from the cell workspace or, at the first step, from
// c0 (storage dtype). Writes the pre-activation gradients to `dg` (acc, GEMM input) and `dxp`.
template <class S>
RNNK_INLINE void lstm_bwd_chunk(const typename Types<S>::A* dh_acc, const S* gout,
                                typename Types<S>::A* dc, const typename Types<S>::A* gts,
                                int64_t H, const typename Types<S>::A* c_t,
                                const typename Types<S>::A* cprev_acc, const S* cprev_dt,
                                typename Types<S>::A* dg, S* dxp, int n) {
  using T = Types<S>;
  using V = typename T::V;
  V dh = vload(dh_acc, n);
  if (gout) dh = dh + vload(gout, n);
  const V cprev = cprev_acc ? vload(cprev_acc, n) : vload(cprev_dt, n);
  V di, df, du, dout, dcp;
  lstm_cell_bwd<typename T::M>(dh, vload(dc, n), vload(gts, n), vload(gts + H, n),
                               vload(gts + 2 * H, n), vload(gts + 3 * H, n), vload(c_t, n),
                               cprev, di, df, du, dout, dcp);
  vstore(dc, dcp, n);
  vstore(dg, di, n);
  vstore(dg + H, df, n);
  vstore(dg + 2 * H, du, n);
  vstore(dg + 3 * H, dout, n);
  vstore(dxp, di, n);
  vstore(dxp + H, df, n);
  vstore(dxp + 2 * H, du, n);
  vstore(dxp + 3 * H, dout, n);
}

// GRU backward. `dcarry` holds ∂L/∂h_t from step t+1 and receives dh ⊙ z (the direct part of
// ∂L/∂h_{t-1}; the GEMM adds [dr, dz, dn⊙r]·W_hh to it).
template <class S>
RNNK_INLINE void gru_bwd_chunk(typename Types<S>::A* dcarry, const S* gout,
                               const typename Types<S>::A* gts, int64_t H,
                               const typename Types<S>::A* hn_lin, const S* hprev,
                               typename Types<S>::A* dg, S* dxp, int n) {
  using T = Types<S>;
  using V = typename T::V;
  const V dh = vload(dcarry, n) + vload(gout, n);
  V dr, dz, dn, dhn, ddir;
  gru_cell_bwd<typename T::M>(dh, vload(gts, n), vload(gts + H, n), vload(gts + 2 * H, n),
                              vload(hn_lin, n), vload(hprev, n), dr, dz, dn, dhn, ddir);
  vstore(dcarry, ddir, n);
  vstore(dg, dr, n);
  vstore(dg + H, dz, n);
  vstore(dg + 2 * H, dhn, n);
  vstore(dxp, dr, n);
  vstore(dxp + H, dz, n);
  vstore(dxp + 2 * H, dn, n);
}

// Elman backward; the carry is consumed (set to 0: the GEMM writes the whole ∂L/∂h_{t-1}).
template <class S>
RNNK_INLINE void rnn_bwd_chunk(typename Types<S>::A* dcarry, const S* gout, const S* hout,
                               typename Types<S>::A* dg, S* dxp, bool relu, int n) {
  using T = Types<S>;
  using V = typename T::V;
  const V dh = vload(dcarry, n) + vload(gout, n);
  const V dp = rnn_cell_bwd<typename T::M>(dh, vload(hout, n), relu);
  vstore(dcarry, vzero<V>(), n);
  vstore(dg, dp, n);
  vstore(dxp, dp, n);
}

// ======================================================================== state helpers
template <class S>
void init_states(const ScanArgs& a, typename Types<S>::A* h, typename Types<S>::A* c,
                 bool backward) {
  using A = typename Types<S>::A;
  const int64_t B = a.sched.B;
  const S* hs = static_cast<const S*>(backward ? a.grad_hn : a.h0);
  const S* cs = static_cast<const S*>(backward ? a.grad_cn : a.c0);
  convert_row<A>(h, hs, B * a.P);
  if (a.cell == Cell::kLSTM) convert_row<A>(c, cs, B * a.H);
}

template <class S>
void final_states(const ScanArgs& a, const typename Types<S>::A* h, const typename Types<S>::A* c,
                  bool backward) {
  const int64_t B = a.sched.B;
  S* hd = static_cast<S*>(backward ? a.dh0 : a.h_n);
  S* cd = static_cast<S*>(backward ? a.dc0 : a.c_n);
  convert_row<S>(hd, h, B * a.P);
  if (a.cell == Cell::kLSTM) convert_row<S>(cd, c, B * a.H);
}

// ===================================================================== GEMM path, forward
template <Cell C, class S>
void forward_pointwise_step(const ScanArgs& a, const StepScratch& w, int64_t s) {
  using T = Types<S>;
  using A = typename T::A;
  constexpr int L = T::L;
  const int64_t B = a.sched.B, H = a.H, P = a.P, G = gates_of(C), GH = G * H;
  const bool proj = a.w_hr != nullptr;
  const S* xp = static_cast<const S*>(a.xp);
  S* out = static_cast<S*>(a.out);
  A* h = static_cast<A*>(w.h);
  A* c = static_cast<A*>(w.c);
  const A* gh = static_cast<const A*>(w.gh);
  A* hh = static_cast<A*>(w.hh);
  A* gates = static_cast<A*>(a.gates);
  A* aux = static_cast<A*>(a.aux);
  const A* bhn = static_cast<const A*>(a.b_hn);
  const int64_t nch = (H + kChunk - 1) / kChunk;
  const int64_t items = B * nch;
#pragma omp parallel for schedule(static) if (items > 1 && B * GH >= kParallelMinElems)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t b = it / nch;
    const int64_t jb = (it % nch) * kChunk;
    const int64_t je = std::min(H, jb + kChunk);
    const int64_t t = a.sched.time(s, b);
    if (t < 0) {  // past the end: state frozen, output zero (the projection's commit does its own)
      if (!proj) fill_zero(out + (s * B + b) * P + jb, je - jb);
      continue;
    }
    const int64_t row = t * B + b;
    for (int64_t j = jb; j < je; j += L) {
      const int n = int(std::min<int64_t>(L, je - j));
      const S* x = xp + row * GH + j;
      const A* g = gh + b * GH + j;
      A* gw = gates ? gates + row * GH + j : nullptr;
      A* xw = aux ? aux + row * H + j : nullptr;
      if constexpr (C == Cell::kLSTM) {
        if (proj)
          lstm_fwd_chunk<S>(x, H, g, H, c + b * H + j, hh + b * H + j, nullptr, gw, xw, n);
        else
          lstm_fwd_chunk<S>(x, H, g, H, c + b * H + j, h + b * P + j, out + row * P + j, gw, xw,
                            n);
      } else if constexpr (C == Cell::kGRU) {
        gru_fwd_chunk<S>(x, H, g, H, bhn ? bhn + j : nullptr, h + b * H + j, h + b * H + j,
                         out + row * H + j, gw, xw, n);
      } else {
        rnn_fwd_chunk<S>(x, g, h + b * H + j, out + row * H + j, C == Cell::kRNNReLU, n);
      }
    }
  }
}

// LSTM with projection: after hp = hh·W_hrᵀ, active rows take hp as their state and output.
template <class S>
void projection_commit(const ScanArgs& a, const StepScratch& w, int64_t s) {
  using A = typename Types<S>::A;
  const int64_t B = a.sched.B, P = a.P;
  S* out = static_cast<S*>(a.out);
  A* h = static_cast<A*>(w.h);
  const A* hp = static_cast<const A*>(w.hp);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = a.sched.time(s, b);
    if (t < 0) {
      fill_zero(out + (s * B + b) * P, P);
      continue;
    }
    std::memcpy(h + b * P, hp + b * P, sizeof(A) * P);
    convert_row<S>(out + (t * B + b) * P, hp + b * P, P);
  }
}

template <Cell C, class S>
Status forward_gemm_impl(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm) {
  using A = typename Types<S>::A;
  const int64_t T = a.sched.T;
  init_states<S>(a, static_cast<A*>(w.h), static_cast<A*>(w.c), false);
  for (int64_t s = 0; s < T; ++s) {
    if (!gemm(GemmOp::kGates)) return Status::error(kErrorUnsupported, "gates GEMM failed");
    forward_pointwise_step<C, S>(a, w, s);
    if (C == Cell::kLSTM && a.w_hr) {
      if (!gemm(GemmOp::kProject))
        return Status::error(kErrorUnsupported, "projection GEMM failed");
      projection_commit<S>(a, w, s);
    }
  }
  final_states<S>(a, static_cast<A*>(w.h), static_cast<A*>(w.c), false);
  return Status::success();
}

// ==================================================================== GEMM path, backward
template <Cell C, class S>
void backward_pointwise_step(const ScanArgs& a, const StepScratch& w, int64_t s) {
  using T = Types<S>;
  using A = typename T::A;
  constexpr int L = T::L;
  const int64_t B = a.sched.B, H = a.H, P = a.P, G = gates_of(C), GH = G * H;
  const bool proj = a.w_hr != nullptr;
  const S* gout = static_cast<const S*>(a.grad_out);
  const S* out = static_cast<const S*>(a.out);
  const S* h0 = static_cast<const S*>(a.h0);
  const S* c0 = static_cast<const S*>(a.c0);
  const A* gates = static_cast<const A*>(a.gates);
  const A* aux = static_cast<const A*>(a.aux);
  S* dxp = static_cast<S*>(a.dxp);
  A* dcarry = static_cast<A*>(w.h);
  A* dc = static_cast<A*>(w.c);
  A* dg = static_cast<A*>(w.gh);
  const A* dhh = static_cast<const A*>(w.hh);
  const int64_t nch = (H + kChunk - 1) / kChunk;
  const int64_t items = B * nch;
#pragma omp parallel for schedule(static) if (items > 1 && B * GH >= kParallelMinElems)
  for (int64_t it = 0; it < items; ++it) {
    const int64_t b = it / nch;
    const int64_t jb = (it % nch) * kChunk;
    const int64_t je = std::min(H, jb + kChunk);
    const int64_t t = a.sched.time(s, b);
    if (t < 0) {  // carry passes through: no GEMM contribution, zero gradient at the padding
      for (int64_t q = 0; q < G; ++q) {
        fill_zero(dg + b * GH + q * H + jb, je - jb);
        fill_zero(dxp + (s * B + b) * GH + q * H + jb, je - jb);
      }
      continue;
    }
    const int64_t row = t * B + b;
    const int64_t tprev = s > 0 ? a.sched.time(s - 1, b) : -1;
    for (int64_t j = jb; j < je; j += L) {
      const int n = int(std::min<int64_t>(L, je - j));
      const A* gts = gates + row * GH + j;
      A* dgr = dg + b * GH + j;
      S* dx = dxp + row * GH + j;
      if constexpr (C == Cell::kLSTM) {
        const A* cprev_acc = tprev >= 0 ? aux + (tprev * B + b) * H + j : nullptr;
        const S* cprev_dt = tprev >= 0 ? nullptr : c0 + b * H + j;
        if (proj)
          lstm_bwd_chunk<S>(dhh + b * H + j, nullptr, dc + b * H + j, gts, H,
                            aux + row * H + j, cprev_acc, cprev_dt, dgr, dx, n);
        else {
          lstm_bwd_chunk<S>(dcarry + b * P + j, gout + row * P + j, dc + b * H + j, gts, H,
                            aux + row * H + j, cprev_acc, cprev_dt, dgr, dx, n);
          fill_zero(dcarry + b * P + j, n);  // the GEMM writes the whole ∂L/∂h_{t-1}
        }
      } else if constexpr (C == Cell::kGRU) {
        const S* hprev = tprev >= 0 ? out + (tprev * B + b) * H + j : h0 + b * H + j;
        gru_bwd_chunk<S>(dcarry + b * H + j, gout + row * H + j, gts, H, aux + row * H + j,
                         hprev, dgr, dx, n);
      } else {
        rnn_bwd_chunk<S>(dcarry + b * H + j, gout + row * H + j, out + row * H + j, dgr, dx,
                         C == Cell::kRNNReLU, n);
      }
    }
  }
}

// LSTM with projection, before the pointwise pass: the step's total ∂L/∂h_t (carry + output
// gradient) goes to `hp` (for hh = hp·W_hr) and to dh_all; the carry restarts from 0.
template <class S>
void projection_backward_prep(const ScanArgs& a, const StepScratch& w, int64_t s) {
  using A = typename Types<S>::A;
  const int64_t B = a.sched.B, P = a.P;
  const S* gout = static_cast<const S*>(a.grad_out);
  A* dcarry = static_cast<A*>(w.h);
  A* hp = static_cast<A*>(w.hp);
  A* dh_all = static_cast<A*>(a.dh_all);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = a.sched.time(s, b);
    if (t < 0) {
      fill_zero(dh_all + (s * B + b) * P, P);
      continue;
    }
    A* d = dcarry + b * P;
    A* o = hp + b * P;
    const S* g = gout + (t * B + b) * P;
    for (int64_t k = 0; k < P; ++k) {
      o[k] = d[k] + to_acc(g[k]);
      d[k] = A(0);
    }
    std::memcpy(dh_all + (t * B + b) * P, o, sizeof(A) * P);
  }
}

template <Cell C, class S>
Status backward_gemm_impl(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm) {
  using A = typename Types<S>::A;
  const int64_t T = a.sched.T;
  init_states<S>(a, static_cast<A*>(w.h), static_cast<A*>(w.c), true);
  for (int64_t s = T - 1; s >= 0; --s) {
    if (C == Cell::kLSTM && a.w_hr) {
      projection_backward_prep<S>(a, w, s);
      if (!gemm(GemmOp::kProjectBack))
        return Status::error(kErrorUnsupported, "projection GEMM failed");
    }
    backward_pointwise_step<C, S>(a, w, s);
    if (!gemm(GemmOp::kRecurrent)) return Status::error(kErrorUnsupported, "recurrent GEMM failed");
  }
  final_states<S>(a, static_cast<A*>(w.h), static_cast<A*>(w.c), true);
  return Status::success();
}

// ========================================================================= fused path
// Rows per batch tile: at most `max_rows`, the tiles of the remaining rows as even as possible
// (7 rows at most 6 per tile → 4 + 3, never 6 + 1: every tile keeps its loads shared).
inline int tile_rows(int64_t remaining, int max_rows) {
  const int64_t tiles = (remaining + max_rows - 1) / max_rows;
  return int((remaining + tiles - 1) / tiles);
}

// The fused forward works on W_hh packed into panels of U hidden units: for each k, the G gates ×
// U units of the panel are NV contiguous vectors, so a micro-tile of MR batch rows × one panel
// is a register-blocked GEMM (broadcast h[b][k], FMA with the panel's vectors: no horizontal sums)
// whose MR·NV accumulators hold, at the end, exactly the pre-activations the cell update needs.
template <int G, int L>
struct Panel {
  static constexpr int U = G == 1 ? 2 * L : L;  // hidden units per panel
  static constexpr int UV = U / L;              // vectors of units per panel
  static constexpr int NV = G * UV;             // vectors per packed row (one k)
  // batch rows per micro-tile: MR·NV ≤ 12 accumulators (see panel_tile for the register count
  // of each loop order; the GRU's 4×3 and the RNN's 6×2 fit only with the weights in registers)
  // (GRU 3×3 → 4×3 and RNN 5×2 → 6×2: 5-8 % more GFLOP/s single-threaded at B = 64, H = 256).
  static constexpr int MR = G == 4 ? 3 : (G == 3 ? 4 : 6);
};

// Packs panels [p0, p1): Wp[p][k][(q·UV + u)·L + l] = W_hh[q·H + p·U + u·L + l][k], zero past H.
template <int G, class A>
void pack_panels(const A* W, int64_t H, int64_t P, int64_t p0, int64_t p1, A* Wp) {
  using PN = Panel<G, Vec<A>::L>;
  constexpr int L = Vec<A>::L;
  constexpr int64_t width = PN::NV * L;
  for (int64_t p = p0; p < p1; ++p) {
    A* dst = Wp + p * P * width;
    for (int q = 0; q < G; ++q)
      for (int u = 0; u < PN::UV; ++u)
        for (int l = 0; l < L; ++l) {
          const int64_t unit = p * PN::U + u * L + l;
          const int col = (q * PN::UV + u) * L + l;
          if (unit < H) {
            const A* src = W + (q * H + unit) * P;
            for (int64_t k = 0; k < P; ++k) dst[k * width + col] = src[k];
          } else {
            for (int64_t k = 0; k < P; ++k) dst[k * width + col] = A(0);
          }
        }
  }
}

// out[r][v] = Σ_k x[r][k] · Wp[k][v] for MR state rows and the NV vectors of one panel.
template <int MR, int NV, class A>
RNNK_INLINE void panel_tile(const A* Wp, const A* const* x, int64_t K, A* out) {
  using V = typename Vec<A>::type;
  constexpr int L = Vec<A>::L;
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = vzero<V>();
  const A* wk = Wp;
  int64_t k = 0;
  if constexpr (MR == 1) {
    // One row (batch 1): NV accumulator chains cannot hide the FMA latency; a second set for the
    // odd k doubles the independent chains.
    V acc2[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc2[v] = vzero<V>();
    for (; k + 2 <= K; k += 2, wk += 2 * NV * L) {
      const V x0 = vsplat<V>(x[0][k]), x1 = vsplat<V>(x[0][k + 1]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        acc[0][v] += x0 * vld(wk + v * L);
        acc2[v] += x1 * vld(wk + (NV + v) * L);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[0][v] += acc2[v];
  }
  if constexpr (MR > NV) {
    // More rows than vectors: keep the NV weight vectors in registers and broadcast one row's
    // h at a time (MR·NV accumulators + NV + 1 registers, 16 at 4×3 and 6×2).
    for (; k < K; ++k, wk += NV * L) {
      V wv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) wv[v] = vld(wk + v * L);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const V xb = vsplat<V>(x[r][k]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[r][v] += xb * wv[v];
      }
    }
  } else {
    // Keep the MR broadcasts in registers and stream the weight vectors (MR·NV + MR + 1).
    for (; k < K; ++k, wk += NV * L) {
      V xb[MR];
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) xb[r] = vsplat<V>(x[r][k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        const V wv = vld(wk + v * L);
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) acc[r][v] += xb[r] * wv;
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) vst(out + (r * NV + v) * L, acc[r][v]);
}

template <int NV, int MRmax, class A>
RNNK_INLINE void panel_tile_n(int mr, const A* Wp, const A* const* x, int64_t K, A* out) {
  if constexpr (MRmax > 1) {
    if (mr < MRmax) return panel_tile_n<NV, MRmax - 1, A>(mr, Wp, x, K, out);
  }
  panel_tile<MRmax, NV, A>(Wp, x, K, out);
}

template <Cell C, class S>
Status forward_fused_impl(const ScanArgs& a, const StepScratch& w, int nthreads) {
  using T = Types<S>;
  using A = typename T::A;
  constexpr int L = T::L;
  constexpr int G = C == Cell::kLSTM ? 4 : (C == Cell::kGRU ? 3 : 1);
  using PN = Panel<G, L>;
  const int64_t Tn = a.sched.T, B = a.sched.B, H = a.H, GH = G * H;
  const int64_t NP = (H + PN::U - 1) / PN::U, pstride = H * PN::NV * L;
  const A* W = static_cast<const A*>(a.w_hh);
  const S* xp = static_cast<const S*>(a.xp);
  const S* h0 = static_cast<const S*>(a.h0);
  const S* c0 = static_cast<const S*>(a.c0);
  S* out = static_cast<S*>(a.out);
  S* h_n = static_cast<S*>(a.h_n);
  S* c_n = static_cast<S*>(a.c_n);
  A* gates = static_cast<A*>(a.gates);
  A* aux = static_cast<A*>(a.aux);
  const A* bhn = static_cast<const A*>(a.b_hn);
  A* Wp = static_cast<A*>(w.pack);  // [NP][H][NV·L], see pack_panels
  A* hbuf = static_cast<A*>(w.h);   // [2][B][H]: h of odd steps and h0 in [1], even steps in [0]
  A* cbuf = static_cast<A*>(w.c);   // [B][H], each thread touches its own units only
  if (!Wp) return Status::error(kErrorUnsupported, "fused forward: no packing buffer");
  // Per thread: the active sequences of the step and their time index. Raw arrays, not
  // std::vector: no library template may be instantiated in the AVX2 build (see scan_avx2.cpp).
  int64_t* lists = new (std::nothrow) int64_t[2 * B * std::max(nthreads, 1)];
  if (!lists) return Status::error(kErrorUnsupported, "out of memory");

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = thread_id(), nth = team_size();
    const int64_t p0 = NP * tid / nth, p1 = NP * (tid + 1) / nth;
    const int64_t j0 = std::min(H, p0 * PN::U), j1 = std::min(H, p1 * PN::U);
    int64_t* act_b = lists + 2 * B * tid;
    int64_t* act_t = act_b + B;
    alignas(32) A pre[PN::MR * PN::NV * L];
    // First touch: each thread packs (and so caches) the panels it multiplies with every step.
    pack_panels<G, A>(W, H, H, p0, p1, Wp);
    for (int64_t b = 0; b < B; ++b) {
      convert_row<A>(hbuf + (B + b) * H + j0, h0 + b * H + j0, j1 - j0);
      if constexpr (C == Cell::kLSTM) convert_row<A>(cbuf + b * H + j0, c0 + b * H + j0, j1 - j0);
    }
#pragma omp barrier
    for (int64_t s = 0; s < Tn; ++s) {
      const A* cur = hbuf + ((s + 1) & 1) * B * H;
      A* nxt = hbuf + (s & 1) * B * H;
      int64_t na = 0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t t = a.sched.time(s, b);
        if (t >= 0) {
          act_b[na] = b;
          act_t[na++] = t;
        } else {  // frozen state; zero output at the padded position
          std::memcpy(nxt + b * H + j0, cur + b * H + j0, sizeof(A) * (j1 - j0));
          fill_zero(out + (s * B + b) * H + j0, j1 - j0);
        }
      }
      for (int64_t p = p0; p < p1; ++p) {
        const A* panel = Wp + p * pstride;
        for (int64_t i0 = 0; i0 < na;) {
          const int mr = tile_rows(na - i0, PN::MR);
          const A* xs[PN::MR];
          for (int r = 0; r < mr; ++r) xs[r] = cur + act_b[i0 + r] * H;
          // xp and the workspaces are far too large for the caches and are touched at G
          // scattered places per row: fetch the next tile's lines while this one computes.
          if (i0 + mr < na) {
            const int64_t jn = p * PN::U;
            for (int64_t i = i0 + mr; i < std::min(na, i0 + 2 * mr); ++i) {
              const int64_t row = act_t[i] * B + act_b[i];
              for (int q = 0; q < G; ++q) {
                __builtin_prefetch(xp + row * GH + q * H + jn);
                if (gates) __builtin_prefetch(gates + row * GH + q * H + jn, 1);
              }
              if (aux) __builtin_prefetch(aux + row * H + jn, 1);
              __builtin_prefetch(out + row * H + jn, 1);
            }
          }
          panel_tile_n<PN::NV, PN::MR, A>(mr, panel, xs, H, pre);
          for (int r = 0; r < mr; ++r) {
            const int64_t b = act_b[i0 + r], t = act_t[i0 + r], row = t * B + b;
            for (int u = 0; u < PN::UV; ++u) {
              const int64_t j = p * PN::U + u * L;
              if (j >= H) break;
              const int n = int(std::min<int64_t>(L, H - j));
              const A* g = pre + r * PN::NV * L + u * L;  // gate q at g + q·UV·L
              const S* x = xp + row * GH + j;
              A* gw = gates ? gates + row * GH + j : nullptr;
              A* xw = aux ? aux + row * H + j : nullptr;
              if constexpr (C == Cell::kLSTM)
                lstm_fwd_chunk<S>(x, H, g, PN::UV * L, cbuf + b * H + j, nxt + b * H + j,
                                  out + row * H + j, gw, xw, n);
              else if constexpr (C == Cell::kGRU)
                gru_fwd_chunk<S>(x, H, g, PN::UV * L, bhn ? bhn + j : nullptr, cur + b * H + j,
                                 nxt + b * H + j, out + row * H + j, gw, xw, n);
              else
                rnn_fwd_chunk<S>(x, g, nxt + b * H + j, out + row * H + j, C == Cell::kRNNReLU,
                                 n);
            }
          }
          i0 += mr;
        }
      }
#pragma omp barrier
    }
    const A* last = hbuf + ((Tn - 1) & 1) * B * H;
    for (int64_t b = 0; b < B; ++b) {
      convert_row<S>(h_n + b * H + j0, last + b * H + j0, j1 - j0);
      if constexpr (C == Cell::kLSTM) convert_row<S>(c_n + b * H + j0, cbuf + b * H + j0, j1 - j0);
    }
  }
  delete[] lists;
  return Status::success();
}

// D[b][k0..k0+KV·L) += Σ_g dg[b][g]·W[g][k0..]: NB state rows × KV vectors of columns, with
// every W row segment loaded once and used NB times.
template <int KV, int NB, class A>
RNNK_INLINE void axpy_tile(const A* W, int64_t ldw, int64_t GH, const A* const* dg, A* const* D,
                           int64_t k0) {
  using V = typename Vec<A>::type;
  constexpr int L = Vec<A>::L;
  V acc[NB][KV];
#pragma GCC unroll 16
  for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 16
    for (int v = 0; v < KV; ++v) acc[nb][v] = vld(D[nb] + k0 + v * L);
  const A* wr = W + k0;
  for (int64_t g = 0; g < GH; ++g, wr += ldw) {
    V d[NB];
#pragma GCC unroll 16
    for (int nb = 0; nb < NB; ++nb) d[nb] = vsplat<V>(dg[nb][g]);
#pragma GCC unroll 16
    for (int v = 0; v < KV; ++v) {
      const V wv = vld(wr + v * L);
#pragma GCC unroll 16
      for (int nb = 0; nb < NB; ++nb) acc[nb][v] += d[nb] * wv;
    }
  }
#pragma GCC unroll 16
  for (int nb = 0; nb < NB; ++nb)
#pragma GCC unroll 16
    for (int v = 0; v < KV; ++v) vst(D[nb] + k0 + v * L, acc[nb][v]);
}

// Column vectors per axpy tile for NB ≤ 4 batch rows: NB·KV accumulators + NB broadcasts + one
// W vector within the 16 ymm registers (more spills with GCC: measured slower).
template <int NB>
struct AxpyKV {
  static constexpr int value = NB == 1 ? 8 : NB == 2 ? 6 : NB == 3 ? 3 : 2;
};

template <int NB, class A>
RNNK_INLINE void axpy_cols(const A* W, int64_t ldw, int64_t GH, const A* const* dg, A* const* D,
                           int64_t k0, int64_t k1) {
  constexpr int L = Vec<A>::L;
  // The widest tile first, then narrower ones for what is left of the block: few accumulators
  // would leave the FMA latency exposed.
  constexpr int KV = AxpyKV<NB>::value;
  int64_t k = k0;
  for (; k + KV * L <= k1; k += KV * L) axpy_tile<KV, NB, A>(W, ldw, GH, dg, D, k);
  if constexpr (KV > 4)
    for (; k + 4 * L <= k1; k += 4 * L) axpy_tile<4, NB, A>(W, ldw, GH, dg, D, k);
  if constexpr (KV > 2)
    for (; k + 2 * L <= k1; k += 2 * L) axpy_tile<2, NB, A>(W, ldw, GH, dg, D, k);
  for (; k + L <= k1; k += L) axpy_tile<1, NB, A>(W, ldw, GH, dg, D, k);
  for (; k < k1; ++k)  // ragged end of an odd-sized slice
    for (int nb = 0; nb < NB; ++nb) {
      A sum = D[nb][k];
      for (int64_t g = 0; g < GH; ++g) sum += dg[nb][g] * W[g * ldw + k];
      D[nb][k] = sum;
    }
}

template <int NBmax, class A>
RNNK_INLINE void axpy_cols_n(int nb, const A* W, int64_t ldw, int64_t GH, const A* const* dg,
                             A* const* D, int64_t k0, int64_t k1) {
  if constexpr (NBmax > 1) {
    if (nb < NBmax) return axpy_cols_n<NBmax - 1, A>(nb, W, ldw, GH, dg, D, k0, k1);
  }
  axpy_cols<NBmax, A>(W, ldw, GH, dg, D, k0, k1);
}

template <Cell C, class S>
Status backward_fused_impl(const ScanArgs& a, const StepScratch& w, int nthreads) {
  using T = Types<S>;
  using A = typename T::A;
  constexpr int L = T::L;
  constexpr int G = C == Cell::kLSTM ? 4 : (C == Cell::kGRU ? 3 : 1);
  const int64_t Tn = a.sched.T, B = a.sched.B, H = a.H, GH = G * H;
  const A* W = static_cast<const A*>(a.w_hh);
  const S* gout = static_cast<const S*>(a.grad_out);
  const S* ghn = static_cast<const S*>(a.grad_hn);
  const S* gcn = static_cast<const S*>(a.grad_cn);
  const S* out = static_cast<const S*>(a.out);
  const S* h0 = static_cast<const S*>(a.h0);
  const S* c0 = static_cast<const S*>(a.c0);
  const A* gates = static_cast<const A*>(a.gates);
  const A* aux = static_cast<const A*>(a.aux);
  S* dxp = static_cast<S*>(a.dxp);
  S* dh0 = static_cast<S*>(a.dh0);
  S* dc0 = static_cast<S*>(a.dc0);
  A* dcarry = static_cast<A*>(w.h);  // [B][H] ∂L/∂h, private per thread slice
  A* dcell = static_cast<A*>(w.c);   // [B][H] ∂L/∂c, private per thread slice
  A* dgbuf = static_cast<A*>(w.gh);  // [2][B][G·H] d gates, shared, by step parity
  int64_t* lists = new (std::nothrow) int64_t[B * std::max(nthreads, 1)];
  if (!lists) return Status::error(kErrorUnsupported, "out of memory");

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = thread_id(), nth = team_size();
    int64_t* act_b = lists + B * tid;
    int64_t j0, j1;
    slice_of<L>(H, tid, nth, j0, j1);
    for (int64_t b = 0; b < B; ++b) {
      convert_row<A>(dcarry + b * H + j0, ghn + b * H + j0, j1 - j0);
      if constexpr (C == Cell::kLSTM) convert_row<A>(dcell + b * H + j0, gcn + b * H + j0, j1 - j0);
    }
    for (int64_t s = Tn - 1; s >= 0; --s) {
      A* dg = dgbuf + (s & 1) * B * GH;
      // Phase A: the pointwise backward of this thread's units, for every active sequence.
      int64_t na = 0;
      for (int64_t b = 0; b < B; ++b) {
        const int64_t t = a.sched.time(s, b);
        if (t < 0) {
          for (int q = 0; q < G; ++q) fill_zero(dxp + (s * B + b) * GH + q * H + j0, j1 - j0);
          continue;
        }
        act_b[na++] = b;
        const int64_t row = t * B + b;
        const int64_t tprev = s > 0 ? a.sched.time(s - 1, b) : -1;
        for (int64_t jc = j0; jc < j1; jc += L) {
          const int n = int(std::min<int64_t>(L, j1 - jc));
          const A* gts = gates + row * GH + jc;
          A* dgr = dg + b * GH + jc;
          S* dx = dxp + row * GH + jc;
          A* dcar = dcarry + b * H + jc;
          if constexpr (C == Cell::kLSTM) {
            const A* cp_acc = tprev >= 0 ? aux + (tprev * B + b) * H + jc : nullptr;
            const S* cp_dt = tprev >= 0 ? nullptr : c0 + b * H + jc;
            lstm_bwd_chunk<S>(dcar, gout + row * H + jc, dcell + b * H + jc, gts, H,
                              aux + row * H + jc, cp_acc, cp_dt, dgr, dx, n);
            fill_zero(dcar, n);
          } else if constexpr (C == Cell::kGRU) {
            const S* hprev = tprev >= 0 ? out + (tprev * B + b) * H + jc : h0 + b * H + jc;
            gru_bwd_chunk<S>(dcar, gout + row * H + jc, gts, H, aux + row * H + jc, hprev, dgr,
                             dx, n);
          } else {
            rnn_bwd_chunk<S>(dcar, gout + row * H + jc, out + row * H + jc, dgr, dx,
                             C == Cell::kRNNReLU, n);
          }
        }
      }
#pragma omp barrier
      // Phase B: this thread's columns of ∂L/∂h_{t-1} += d gates · W_hh (all G·H rows). Column
      // blocks outermost: a block of W_hh (G·H × CB values) stays in L2 while every batch tile
      // passes over it, instead of W_hh streaming from L3 once per tile.
      const int64_t CB = (na == 1 ? 8 : 6) * L;
      for (int64_t kb = j0; kb < j1; kb += CB) {
        const int64_t ke = std::min(j1, kb + CB);
        for (int64_t i0 = 0; i0 < na;) {
          const int nb = tile_rows(na - i0, 4);
          const A* dgs[4];
          A* Ds[4];
          for (int k = 0; k < nb; ++k) {
            dgs[k] = dg + act_b[i0 + k] * GH;
            Ds[k] = dcarry + act_b[i0 + k] * H;
          }
          axpy_cols_n<4, A>(nb, W, H, GH, dgs, Ds, kb, ke);
          i0 += nb;
        }
      }
      // No barrier here: the next step writes the other d-gates buffer, and the one after that
      // only once every thread has passed the next barrier, i.e. finished reading this one.
    }
    for (int64_t b = 0; b < B; ++b) {
      convert_row<S>(dh0 + b * H + j0, dcarry + b * H + j0, j1 - j0);
      if constexpr (C == Cell::kLSTM) convert_row<S>(dc0 + b * H + j0, dcell + b * H + j0, j1 - j0);
    }
  }
  delete[] lists;
  return Status::success();
}

// ============================================================================ dispatch
template <class S, class F>
Status by_cell(Cell cell, F&& f) {
  switch (cell) {
    case Cell::kLSTM:
      return f(std::integral_constant<Cell, Cell::kLSTM>{}, static_cast<S*>(nullptr));
    case Cell::kGRU: return f(std::integral_constant<Cell, Cell::kGRU>{}, static_cast<S*>(nullptr));
    case Cell::kRNNTanh:
      return f(std::integral_constant<Cell, Cell::kRNNTanh>{}, static_cast<S*>(nullptr));
    case Cell::kRNNReLU:
      return f(std::integral_constant<Cell, Cell::kRNNReLU>{}, static_cast<S*>(nullptr));
  }
  return Status::error(kErrorUnsupported, "unknown cell");
}

template <class F>
Status by_dtype(const ScanArgs& a, F&& f) {
  switch (a.dtype) {
    case DType::kFloat32: return by_cell<float>(a.cell, f);
    case DType::kFloat64: return by_cell<double>(a.cell, f);
    case DType::kBFloat16: return by_cell<bf16_t>(a.cell, f);
    case DType::kFloat16: return by_cell<f16_t>(a.cell, f);
  }
  return Status::error(kErrorUnsupported, "unsupported dtype");
}

}  // namespace

Status forward_gemm(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm) {
  return by_dtype(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    return forward_gemm_impl<decltype(cell)::value, S>(a, w, gemm);
  });
}

Status backward_gemm(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm) {
  return by_dtype(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    return backward_gemm_impl<decltype(cell)::value, S>(a, w, gemm);
  });
}

Status forward_fused(const ScanArgs& a, const StepScratch& w, int nthreads) {
  if (a.w_hr || a.P != a.H)
    return Status::error(kErrorUnsupported, "the fused CPU path has no projection");
  return by_dtype(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    return forward_fused_impl<decltype(cell)::value, S>(a, w, nthreads);
  });
}

Status backward_fused(const ScanArgs& a, const StepScratch& w, int nthreads) {
  if (a.w_hr || a.P != a.H)
    return Status::error(kErrorUnsupported, "the fused CPU path has no projection");
  return by_dtype(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    return backward_fused_impl<decltype(cell)::value, S>(a, w, nthreads);
  });
}

// Threads worth using for the fused path: enough multiply-adds per thread and step to pay for a
// barrier, at least one panel of hidden units each.
int fused_threads(const ScanArgs& a, int max_threads) {
  const int64_t macs = a.sched.B * int64_t(gates_of(a.cell)) * a.H * a.P;
  const int64_t units = a.cell == Cell::kRNNTanh || a.cell == Cell::kRNNReLU ? 16 : 8;
  int64_t n = std::max<int64_t>(1, macs / kFusedMinMacsPerThread);
  n = std::min<int64_t>(n, (a.H + units - 1) / units);
  n = std::min<int64_t>(n, std::max(1, max_threads));
  return int(n);
}

// Elements (of the accumulation type) of the packed W_hh the fused forward needs.
int64_t fused_pack_elems(const ScanArgs& a) {
  auto elems = [&](auto g, auto* acc) -> int64_t {
    using A = std::remove_pointer_t<decltype(acc)>;
    using PN = Panel<decltype(g)::value, Vec<A>::L>;
    return (a.H + PN::U - 1) / PN::U * a.H * PN::NV * Vec<A>::L;
  };
  const bool dbl = a.dtype == DType::kFloat64;
  switch (a.cell) {
    case Cell::kLSTM:
      return dbl ? elems(std::integral_constant<int, 4>{}, (double*)nullptr)
                 : elems(std::integral_constant<int, 4>{}, (float*)nullptr);
    case Cell::kGRU:
      return dbl ? elems(std::integral_constant<int, 3>{}, (double*)nullptr)
                 : elems(std::integral_constant<int, 3>{}, (float*)nullptr);
    default:
      return dbl ? elems(std::integral_constant<int, 1>{}, (double*)nullptr)
                 : elems(std::integral_constant<int, 1>{}, (float*)nullptr);
  }
}

}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
