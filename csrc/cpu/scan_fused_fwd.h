// csrc/cpu/scan_fused_fwd.h — the fused forward on the CPU (part of the CPU scans, see
// scan_common.h and the path overview in scan_impl.h).
//
// One OpenMP team for the whole sequence; thread k owns a slice of panels of hidden units
// (micro_kernels.h). It packs its rows of W_hh once per call, in the order it multiplies them,
// which leaves them in its own cache; every step it runs panel tiles over the active sequences
// and the cell (cell_io.h) on the tile's accumulators directly: there is no [B, G·H]
// pre-activation buffer. h is double-buffered by step parity, so the threads meet at one barrier
// per step.
#pragma once

#include "micro_kernels.h"
#include "scan_common.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {
namespace {

template <Cell C, class S>
Status forward_fused_impl(const ScanArgs& a, const ForwardScratch& w, int nthreads) {
  using T = Types<S>;
  using A = typename T::A;
  constexpr int L = T::L;
  constexpr int G = gates_of(C);
  using PN = Panel<C, L>;
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
  A* ws = static_cast<A*>(C == Cell::kLSTM ? a.cs : a.hn_lin);  // the [T, B, H] workspace
  A* Wp = static_cast<A*>(w.pack);  // [NP][H][NV·L], see pack_panels
  A* hbuf = static_cast<A*>(w.h);   // [2][B][H]: h of odd steps and h0 in [1], even steps in [0]
  A* cbuf = static_cast<A*>(w.c);   // [B][H], each thread touches its own units only
  if (!Wp) return Status::error(kErrorUnsupported, "fused forward: no packing buffer");
  // Per thread: the active sequences of the step and their time index.
  const ThreadLists lists(2 * B * std::max(nthreads, 1));
  if (!lists.data) return Status::error(kErrorUnsupported, "out of memory");

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = thread_id(), nth = team_size();
    const int64_t p0 = NP * tid / nth, p1 = NP * (tid + 1) / nth;
    const int64_t j0 = std::min(H, p0 * PN::U), j1 = std::min(H, p1 * PN::U);
    int64_t* act_b = lists.data + 2 * B * tid;
    int64_t* act_t = act_b + B;
    alignas(64) A pre[PN::MR * PN::NV * L];
    // First touch: each thread packs (and so caches) the panels it multiplies with every step.
    pack_panels<C, A>(W, H, H, p0, p1, Wp);
    convert_units<C>(B, H, j0, j1, hbuf + B * H, h0, cbuf, c0);
#pragma omp barrier
    for (int64_t s = 0; s < Tn; ++s) {
      const A* cur = hbuf + ((s + 1) & 1) * B * H;
      A* nxt = hbuf + (s & 1) * B * H;
      const int64_t na = active_rows(a.sched, s, B, H, j0, j1, cur, nxt, out, act_b, act_t);
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
              if (ws) __builtin_prefetch(ws + row * H + jn, 1);
              __builtin_prefetch(out + row * H + jn, 1);
            }
          }
          panel_tile_n<PN::NV, PN::MR, A>(mr, panel, xs, H, pre);
          for (int r = 0; r < mr; ++r) {
            const int64_t b = act_b[i0 + r];
            const ForwardRow<S, A> row = forward_row<S, A>(a, act_t[i0 + r], b);
            for (int u = 0; u < PN::UV; ++u) {
              const int64_t j = p * PN::U + u * L;
              if (j >= H) break;
              const typename T::IO io{int(std::min<int64_t>(L, H - j))};
              const A* g = pre + r * PN::NV * L + u * L;  // gate q at g + q·UV·L
              A* c = C == Cell::kLSTM ? cbuf + b * H + j : nullptr;
              forward_unit<C, typename T::M>(io, row, H, j, g, PN::UV * L, cur + b * H + j, c,
                                             nxt + b * H + j);
            }
          }
          i0 += mr;
        }
      }
#pragma omp barrier
    }
    convert_units<C>(B, H, j0, j1, h_n, hbuf + ((Tn - 1) & 1) * B * H, c_n,
                     static_cast<const A*>(cbuf));
  }
  return Status::success();
}

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
