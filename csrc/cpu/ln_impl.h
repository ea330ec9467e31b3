// csrc/cpu/ln_impl.h — the CPU scans of the layer-norm LSTM and GRU (entry points, contract and
// design: ln_scan.h; the row kernels: ln_row.h). Included by the scans' instruction-set builds
// (isa_build.h) after variant_impl.h, under the same RNNK_CPU_ISA; do not include it anywhere
// else.
//
// Each step: the recurrent product for the whole batch, then one row kernel per sequence (the
// rows in parallel). The product runs one of two ways (LayerNormArgs::own_product, chosen by the
// op as cpu::choose_path chooses for the plain scans):
// * small batches: the fused scans' own register tiles (variant_impl.h's head panels with one
//   head, micro_kernels.h), inside one parallel region for the whole sequence: the forward's
//   threads each multiply their panels of W_hh (packed once per call, in their caches), a
//   barrier, the rows, a barrier; the backward's threads their columns of dg·W_hh. A library
//   GEMM would cost a dispatch per step and, at one row, leaves the GEMV's speed on the table;
// * larger batches: the caller's library GEMM (GemmCallback: MKL's cache-blocked GEMM wins
//   there), then the rows.
#include "ln_row.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {

namespace {

// A scan's states in or out: h, and for the LSTM c (n elements each).
template <Cell C, class A>
void copy_states(A* h, const void* h_src, A* c, const void* c_src, int64_t n) {
  copy_row(h, h_src, n);
  if (C == Cell::kLSTM) copy_row(c, c_src, n);
}

template <Cell C, class A>
Status forward_impl(const LayerNormArgs& v, const ForwardScratch& w, GemmCallback gemm) {
  const ScanArgs& a = v.var.scan;
  const LnRow<C, A> row(v);
  const int64_t T = a.sched.T, B = a.sched.B, H = a.H, GH = row.GH;
  A *h = static_cast<A*>(w.h), *c = static_cast<A*>(w.c), *gh = static_cast<A*>(w.gh);
  copy_states<C>(h, a.h0, c, a.c0, B * H);
  for (int64_t s = 0; s < T; ++s) {
    if (!gemm(GemmOp::kGates)) return Status::error(kErrorUnsupported, "gates GEMM failed");
    for_rows(B, GH, v.threads, [&](int64_t b, int) {
      row.forward_step(s, b, gh + b * GH, h + b * H, c + b * H);
    });
  }
  copy_states<C>(static_cast<A*>(a.h_n), h, static_cast<A*>(a.c_n), c, B * H);
  return Status::success();
}

template <Cell C, class A>
Status backward_impl(const LayerNormArgs& v, const BackwardScratch& w, GemmCallback gemm) {
  const ScanArgs& a = v.var.scan;
  const LnRow<C, A> row(v);
  const int64_t T = a.sched.T, B = a.sched.B, H = a.H, GH = row.GH;
  A *dh = static_cast<A*>(w.dh), *dc = static_cast<A*>(w.dc), *dg = static_cast<A*>(w.dgates);
  A* dp = static_cast<A*>(v.dparams);
  copy_states<C>(dh, a.grad_hn, dc, a.grad_cn, B * H);
  for (int64_t s = T - 1; s >= 0; --s) {
    for_rows(B, GH, v.threads, [&](int64_t b, int thread) {
      row.backward_step(s, b, dh + b * H, dc + b * H, dg + b * GH,
                        dp + thread * ln_param_elems(a));
    });
    if (!gemm(GemmOp::kRecurrent))
      return Status::error(kErrorUnsupported, "recurrent GEMM failed");
  }
  copy_states<C>(static_cast<A*>(a.dh0), dh, static_cast<A*>(a.dc0), dc, B * H);
  return Status::success();
}

// The forward with the product on the panels: pack_head_panels / panel_tile_n of the variant
// scans with one head (variant_impl.h), gh row b = h_{t-1}[b]·W_hhᵀ into w.gh, then the rows.
template <Cell C, class A>
Status forward_own(const LayerNormArgs& v, const ForwardScratch& w) {
  constexpr int L = Types<A>::L;
  using PN = Panel<C, L>;
  const ScanArgs& a = v.var.scan;
  const LnRow<C, A> row(v);
  const HeadPanels<C, L> hp(a.H, 1);
  const int64_t T = a.sched.T, B = a.sched.B, H = a.H, GH = row.GH, pstride = H * PN::NV * L;
  A *h = static_cast<A*>(w.h), *c = static_cast<A*>(w.c), *gh = static_cast<A*>(w.gh);
  A* Wp = static_cast<A*>(w.pack);
  if (!Wp) return Status::error(kErrorUnsupported, "layer norm: no panel buffer");
  copy_states<C>(h, a.h0, c, a.c0, B * H);
  const int nthreads = RNNK_CPU_ISA::variant_threads(v.var, v.threads);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = thread_id(), nth = team_size();
    const int64_t p0 = hp.count * tid / nth, p1 = hp.count * (tid + 1) / nth;
    alignas(64) A pre[PN::MR * PN::NV * L];
    pack_head_panels<C, A>(static_cast<const A*>(a.w_hh), H, hp, p0, p1, Wp);
#pragma omp barrier
    for (int64_t s = 0; s < T; ++s) {
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t i0 = 0; i0 < B;) {
          const int mr = tile_rows(B - i0, PN::MR);
          const A* xs[PN::MR];
          for (int r = 0; r < mr; ++r) xs[r] = h + (i0 + r) * H;
          panel_tile_n<PN::NV, PN::MR, A>(mr, Wp + p * pstride, xs, H, pre);
          for (int r = 0; r < mr; ++r)  // the panel's U units of each gate into the row
            for (int q = 0; q < PN::G; ++q) {
              const int64_t j0 = hp.local(p), n = std::min<int64_t>(PN::U, H - j0);
              std::memcpy(gh + (i0 + r) * GH + q * H + j0, pre + r * PN::NV * L + q * PN::UV * L,
                          sizeof(A) * n);
            }
          i0 += mr;
        }
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b)  // (its implicit barrier: h complete for the next step)
        row.forward_step(s, b, gh + b * GH, h + b * H, c + b * H);
    }
  }
  copy_states<C>(static_cast<A*>(a.h_n), h, static_cast<A*>(a.c_n), c, B * H);
  return Status::success();
}

// The backward with the product on W_hh's column tiles (axpy_cols_n, as the variant scans'
// phase B): after the rows, each thread adds dg·W_hh[:, its columns] to every row's d h_{t-1}.
template <Cell C, class A>
Status backward_own(const LayerNormArgs& v, const BackwardScratch& w) {
  constexpr int L = Types<A>::L;
  const ScanArgs& a = v.var.scan;
  const LnRow<C, A> row(v);
  const int64_t T = a.sched.T, B = a.sched.B, H = a.H, GH = row.GH;
  const A* W = static_cast<const A*>(a.w_hh);
  A *dh = static_cast<A*>(w.dh), *dc = static_cast<A*>(w.dc), *dg = static_cast<A*>(w.dgates);
  A* dp = static_cast<A*>(v.dparams);
  copy_states<C>(dh, a.grad_hn, dc, a.grad_cn, B * H);
  const int nthreads = RNNK_CPU_ISA::variant_threads(v.var, v.threads);
#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = thread_id(), nth = team_size();
    int64_t j0, j1;
    slice_of<L>(H, tid, nth, j0, j1);
    const int64_t CB = (B == 1 ? 8 : 6) * L;
    for (int64_t s = T - 1; s >= 0; --s) {
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b)  // (its implicit barrier: every row's dg complete)
        row.backward_step(s, b, dh + b * H, dc + b * H, dg + b * GH,
                          dp + tid * ln_param_elems(a));
      for (int64_t kb = j0; kb < j1; kb += CB) {  // a block of W_hh's columns stays in L2
        const int64_t ke = std::min(j1, kb + CB);
        for (int64_t i0 = 0; i0 < B;) {
          const int nb = tile_rows(B - i0, 4);
          const A* dgs[4];
          A* Ds[4];
          for (int r = 0; r < nb; ++r) {
            dgs[r] = dg + (i0 + r) * GH;
            Ds[r] = dh + (i0 + r) * H;
          }
          axpy_cols_n<4, A>(nb, W, H, GH, dgs, Ds, kb, ke);
          i0 += nb;
        }
      }
#pragma omp barrier
    }
  }
  copy_states<C>(static_cast<A*>(a.dh0), dh, static_cast<A*>(a.dc0), dc, B * H);
  return Status::success();
}

template <bool kBackward, class Scratch>
Status run_ln(const LayerNormArgs& v, const Scratch& w, GemmCallback gemm) {
  if (v.var.scan.w_hr || v.var.scan.P != v.var.scan.H)
    return Status::error(kErrorUnsupported, "the layer-norm scans have no projection");
  if (v.var.peephole || v.var.heads != 1)
    return Status::error(kErrorUnsupported, "the layer-norm scans have no peephole or heads");
  return dispatch<float, double, void, void>(v.var.scan, [&](auto cell, auto* s) -> Status {
    constexpr Cell C = decltype(cell)::value;
    using A = std::remove_pointer_t<decltype(s)>;
    if constexpr (C != Cell::kLSTM && C != Cell::kGRU)
      return Status::error(kErrorUnsupported, "layer norm: LSTM and GRU only");
    else if constexpr (kBackward)
      return v.own_product ? backward_own<C, A>(v, w) : backward_impl<C, A>(v, w, gemm);
    else
      return v.own_product ? forward_own<C, A>(v, w) : forward_impl<C, A>(v, w, gemm);
  });
}

}  // namespace

Status ln_forward(const LayerNormArgs& v, const ForwardScratch& w, GemmCallback gemm) {
  return run_ln<false>(v, w, gemm);
}
Status ln_backward(const LayerNormArgs& v, const BackwardScratch& w, GemmCallback gemm) {
  return run_ln<true>(v, w, gemm);
}

}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
