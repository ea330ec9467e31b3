// csrc/cpu/scan_fused_bwd.h — the fused backward on the CPU (part of the CPU scans, see
// scan_common.h and the path overview in scan_impl.h).
//
// One OpenMP team for the whole sequence; thread k owns a slice of hidden units. Per step, phase
// A: the thread turns its units' ∂L/∂h_t into d gates (cell_io.h); a barrier; phase B: it
// accumulates its columns of ∂L/∂h_{t-1} += d gates·W_hh with column tiles (micro_kernels.h) over
// the unpacked W_hh rows. The d gates buffer is double-buffered by step parity, so one barrier
// per step suffices.
#pragma once

#include "micro_kernels.h"
#include "scan_common.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {
namespace {

// Hidden units [j0, j1) of thread `tid` out of `nth`: whole vectors, as even as possible.
template <int L>
inline void slice_of(int64_t H, int tid, int nth, int64_t& j0, int64_t& j1) {
  const int64_t nv = (H + L - 1) / L;
  j0 = std::min(H, (nv * tid / nth) * L);
  j1 = std::min(H, (nv * (tid + 1) / nth) * L);
}

template <Cell C, class S>
Status backward_fused_impl(const ScanArgs& a, const BackwardScratch& w, int nthreads) {
  using T = Types<S>;
  using A = typename T::A;
  constexpr int L = T::L;
  constexpr int G = gates_of(C);
  const int64_t Tn = a.sched.T, B = a.sched.B, H = a.H, GH = G * H;
  const A* W = static_cast<const A*>(a.w_hh);
  const S* ghn = static_cast<const S*>(a.grad_hn);
  const S* gcn = static_cast<const S*>(a.grad_cn);
  S* dxp = static_cast<S*>(a.dxp);
  S* dh0 = static_cast<S*>(a.dh0);
  S* dc0 = static_cast<S*>(a.dc0);
  A* dcarry = static_cast<A*>(w.dh);     // [B][H] ∂L/∂h, private per thread slice
  A* dcell = static_cast<A*>(w.dc);      // [B][H] ∂L/∂c, private per thread slice
  A* dgbuf = static_cast<A*>(w.dgates);  // [2][B][G·H] d gates, shared, by step parity
  // Per thread: the active sequences of the step.
  const ThreadLists lists(B * std::max(nthreads, 1));
  if (!lists.data) return Status::error(kErrorUnsupported, "out of memory");

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = thread_id(), nth = team_size();
    int64_t* act_b = lists.data + B * tid;
    int64_t j0, j1;
    slice_of<L>(H, tid, nth, j0, j1);
    convert_units<C>(B, H, j0, j1, dcarry, ghn, dcell, gcn);
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
        const int64_t tprev = s > 0 ? a.sched.time(s - 1, b) : -1;
        const BackwardRow<S, A> row = backward_row<S, A>(a, t, tprev, b);
        for_vectors<L>(j0, j1, [&](int n, int64_t jc) {
          A* dc = C == Cell::kLSTM ? dcell + b * H + jc : nullptr;
          backward_unit<C, typename T::M>(typename T::IO{n}, row, H, jc, dcarry + b * H + jc, dc,
                                          dg + b * GH + jc);
        });
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
    convert_units<C>(B, H, j0, j1, dh0, static_cast<const A*>(dcarry), dc0,
                     static_cast<const A*>(dcell));
  }
  return Status::success();
}

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
