// csrc/cpu/variant_impl.h — the CPU scans of the recurrent variants (entry points and contract:
// variant_scan.h). Included by the scans' instruction-set builds (isa_build.h) after
// scan_impl.h, under the same RNNK_CPU_ISA; do not include it anywhere else.
//
// Design: the plain fused path (scan_fused_fwd.h / scan_fused_bwd.h) with two changes, on the
// same micro kernels (micro_kernels.h) and the same cell_math.h formulas:
//
// * The recurrent product is per head. A head-wise W_hh of k heads is k dense [G·d, d] blocks;
//   the forward packs each head's rows into panels of U units with K = d (instead of H), and a
//   panel multiplies only its own head's d state units, so the product costs 1/k of the dense
//   one (never a dense matrix with zero blocks). The backward's column tiles run per head on a
//   copy of W_hh with each head's G·d rows contiguous ([k][G·d][d]), reading d gates that phase
//   A writes head-major ([B][k][G·d]). With one head both are exactly the dense layouts.
// * The pointwise work is a unit policy's, fused into the same pass over each panel's
//   accumulators: variant_unit.h's VariantCellUnit (the peephole LSTM's formulas and zoneout) or
//   slstm_unit.h's SlstmUnit (the sLSTM has the LSTM's four gates and head-wise W_hh, so it
//   needs only its own pointwise unit with the normalizer and stabilizer states, not its own
//   scan). A unit has kStates states besides h, kept in place in [kStates, B, H] buffers.
//
// Why not a policy parameter on the plain scans' templates: those files (and cell_io.h, which
// the CUDA kernels share) belong to the plain path, whose hot loops must not carry the variants'
// operands; the kernels here are the plain ones' loop structure on the same building blocks.
// The weight gradients stay in the op (rnnkernels/backends/cpu_variants.py): dW_hh one (batched,
// per head) GEMM over all steps, the peephole weights' one reduction over steps.
#include "micro_kernels.h"
#include "scan_common.h"
#include "scan_fused_bwd.h"  // slice_of
#include "slstm_unit.h"
#include "variant_unit.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {

namespace {

// The panel layout of a head-wise W_hh: `per_head` panels of U units for each of `heads` heads
// of d units; panel p belongs to head p / per_head and starts at its local unit (p % per_head)·U.
template <Cell C, int L>
struct HeadPanels {
  using PN = Panel<C, L>;
  int64_t heads, d, per_head, count;
  HeadPanels(int64_t H, int64_t k) : heads(k), d(H / k), per_head((d + PN::U - 1) / PN::U),
                                     count(k * per_head) {}
  int64_t head(int64_t p) const { return p / per_head; }
  int64_t local(int64_t p) const { return (p % per_head) * PN::U; }
  // The first hidden unit of panel p (p = count: H), so a range of panels is a range of units.
  int64_t unit(int64_t p) const { return head(p) * d + std::min(d, local(p)); }
};

// pack_panels for a head-wise W_hh [G·H, d]: Wp[p][k][(q·UV + u)·L + l] = W[q·H + unit][k] for
// the panel's unit (zero past its head), k < d.
template <Cell C, class A>
void pack_head_panels(const A* W, int64_t H, const HeadPanels<C, Vec<A>::L>& hp, int64_t p0,
                      int64_t p1, A* Wp) {
  using PN = Panel<C, Vec<A>::L>;
  constexpr int L = Vec<A>::L;
  constexpr int64_t width = PN::NV * L;
  const int64_t d = hp.d;
  for (int64_t p = p0; p < p1; ++p) {
    A* dst = Wp + p * d * width;
    for (int q = 0; q < PN::G; ++q)
      for (int u = 0; u < PN::UV; ++u)
        for (int l = 0; l < L; ++l) {
          const int64_t local = hp.local(p) + u * L + l;
          const int col = (q * PN::UV + u) * L + l;
          const A* src = W + (q * H + hp.head(p) * d + local) * d;
          for (int64_t k = 0; k < d; ++k) dst[k * width + col] = local < d ? src[k] : A(0);
        }
  }
}

// Units [j0, j1) of h ([B, H]) and of the unit's E further states ([E, B, H]), from one type to
// the other: a thread loads or stores the units it owns.
template <class D, class Src>
inline void convert_states(int E, int64_t B, int64_t H, int64_t j0, int64_t j1, D* h,
                           const Src* h_src, D* s, const Src* s_src) {
  for (int64_t b = 0; b < B; ++b) convert_row<D>(h + b * H + j0, h_src + b * H + j0, j1 - j0);
  for (int64_t r = 0; r < E * B; ++r)
    convert_row<D>(s + r * H + j0, s_src + r * H + j0, j1 - j0);
}

template <Cell C, class S, class Unit>
Status forward_impl(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  using T = Types<S>;
  using A = typename T::A;
  constexpr int L = T::L;
  using PN = Panel<C, L>;
  const ScanArgs& a = v.scan;
  const HeadPanels<C, L> hp(a.H, v.heads);
  const int64_t Tn = a.sched.T, B = a.sched.B, H = a.H, d = hp.d, pstride = d * PN::NV * L;
  const A* W = static_cast<const A*>(a.w_hh);
  A* Wp = static_cast<A*>(w.pack);
  A* hbuf = static_cast<A*>(w.h);  // [2][B][H]: h of odd steps and h0 in [1], even steps in [0]
  A* sbuf = static_cast<A*>(w.c);  // [E][B][H] the states besides h
  const Unit unit(v);
  constexpr int E = Unit::kStates;
  const ThreadLists lists(2 * B * std::max(nthreads, 1));
  if (!lists.data || !Wp) return Status::error(kErrorUnsupported, "out of memory");

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = thread_id(), nth = team_size();
    const int64_t p0 = hp.count * tid / nth, p1 = hp.count * (tid + 1) / nth;
    const int64_t j0 = hp.unit(p0), j1 = hp.unit(p1);
    int64_t* act_b = lists.data + 2 * B * tid;
    int64_t* act_t = act_b + B;
    alignas(64) A pre[PN::MR * PN::NV * L];
    pack_head_panels<C, A>(W, H, hp, p0, p1, Wp);  // first touch: the panels stay in its cache
    convert_states(E, B, H, j0, j1, hbuf + B * H, static_cast<const S*>(a.h0), sbuf,
                   static_cast<const S*>(a.c0));
#pragma omp barrier
    for (int64_t s = 0; s < Tn; ++s) {
      const A* cur = hbuf + ((s + 1) & 1) * B * H;
      A* nxt = hbuf + (s & 1) * B * H;
      const int64_t na = active_rows(a.sched, s, B, H, j0, j1, cur, nxt, static_cast<S*>(a.out),
                                     act_b, act_t);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t head0 = hp.head(p) * d;  // the head's first unit: its state slice
        for (int64_t i0 = 0; i0 < na;) {
          const int mr = tile_rows(na - i0, PN::MR);
          const A* xs[PN::MR];
          for (int r = 0; r < mr; ++r) xs[r] = cur + act_b[i0 + r] * H + head0;
          panel_tile_n<PN::NV, PN::MR, A>(mr, Wp + p * pstride, xs, d, pre);
          for (int r = 0; r < mr; ++r) {
            const int64_t b = act_b[i0 + r];
            const ForwardRow<S, A> row = forward_row<S, A>(a, act_t[i0 + r], b);
            for (int u = 0; u < PN::UV; ++u) {
              const int64_t local = hp.local(p) + u * L;
              if (local >= d) break;
              const int64_t j = head0 + local;
              unit.template forward<typename T::M>(
                  typename T::IO{int(std::min<int64_t>(L, d - local))}, row, H, j,
                  pre + r * PN::NV * L + u * L, PN::UV * L, cur + b * H + j,
                  E ? sbuf + b * H + j : nullptr, B * H, nxt + b * H + j);
            }
          }
          i0 += mr;
        }
      }
#pragma omp barrier
    }
    convert_states(E, B, H, j0, j1, static_cast<S*>(a.h_n), hbuf + ((Tn - 1) & 1) * B * H,
                   static_cast<S*>(a.c_n), static_cast<const A*>(sbuf));
  }
  return Status::success();
}

// f(first unit, end unit, head) for each head's part of the units [j0, j1).
template <class F>
RNNK_INLINE void per_head(int64_t j0, int64_t j1, int64_t d, const F& f) {
  for (int64_t h = j0 / d; h * d < j1; ++h) f(std::max(j0, h * d), std::min(j1, h * d + d), h);
}

template <Cell C, class S, class Unit>
Status backward_impl(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  using T = Types<S>;
  using A = typename T::A;
  constexpr int L = T::L;
  constexpr int G = gates_of(C);
  const ScanArgs& a = v.scan;
  const int64_t Tn = a.sched.T, B = a.sched.B, H = a.H, GH = G * H, d = v.head_size(),
                k = v.heads, Gd = G * d;
  const A* W = static_cast<const A*>(a.w_hh);
  // Each head's G·d rows contiguous: [k][G·d][d] (one head: W_hh itself).
  A* Wb = k == 1 ? const_cast<A*>(W) : static_cast<A*>(w.pack);
  S* dxp = static_cast<S*>(a.dxp);
  A* dcarry = static_cast<A*>(w.dh);     // [B][H] ∂L/∂h, private per thread slice
  A* dstate = static_cast<A*>(w.dc);     // [E][B][H] the states' carries, likewise
  A* dgbuf = static_cast<A*>(w.dgates);  // [2][B][k][G·d] d gates, shared, by step parity
  const Unit unit(v);
  constexpr int E = Unit::kStates;
  const ThreadLists lists(B * std::max(nthreads, 1));
  if (!lists.data || !Wb) return Status::error(kErrorUnsupported, "out of memory");

#pragma omp parallel num_threads(nthreads) if (nthreads > 1)
  {
    const int tid = thread_id(), nth = team_size();
    int64_t* act_b = lists.data + B * tid;
    int64_t j0, j1;
    slice_of<L>(H, tid, nth, j0, j1);
    if (k > 1)
      for (int64_t h = k * tid / nth; h < k * (tid + 1) / nth; ++h)
        for (int q = 0; q < G; ++q)
          std::memcpy(Wb + (h * Gd + q * d) * d, W + (q * H + h * d) * d, sizeof(A) * d * d);
    convert_states(E, B, H, j0, j1, dcarry, static_cast<const S*>(a.grad_hn), dstate,
                   static_cast<const S*>(a.grad_cn));
#pragma omp barrier
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
        const BackwardRow<S, A> row =
            backward_row<S, A>(a, t, s > 0 ? a.sched.time(s - 1, b) : -1, b);
        per_head(j0, j1, d, [&](int64_t hs, int64_t he, int64_t h) {
          for_vectors<L>(hs, he, [&](int n, int64_t j) {
            unit.template backward<typename T::M>(
                typename T::IO{n}, row, H, j, dcarry + b * H + j,
                E ? dstate + b * H + j : nullptr, B * H, dg + b * GH + h * Gd + j - h * d,
                int(d));
          });
        });
      }
#pragma omp barrier
      // Phase B: this thread's columns of ∂L/∂h_{t-1} += d gates · W_hh, per head (its G·d rows
      // only), column blocks outermost so a block of W_hh stays in L2 for every batch tile.
      const int64_t CB = (na == 1 ? 8 : 6) * L;
      per_head(j0, j1, d, [&](int64_t hs, int64_t he, int64_t h) {
        const A* Wh = Wb + h * Gd * d;
        for (int64_t kb = hs - h * d; kb < he - h * d; kb += CB) {
          const int64_t ke = std::min(he - h * d, kb + CB);
          for (int64_t i0 = 0; i0 < na;) {
            const int nb = tile_rows(na - i0, 4);
            const A* dgs[4];
            A* Ds[4];
            for (int r = 0; r < nb; ++r) {
              dgs[r] = dg + act_b[i0 + r] * GH + h * Gd;
              Ds[r] = dcarry + act_b[i0 + r] * H + h * d;
            }
            axpy_cols_n<4, A>(nb, Wh, d, Gd, dgs, Ds, kb, ke);
            i0 += nb;
          }
        }
      });
    }
    convert_states(E, B, H, j0, j1, static_cast<S*>(a.dh0), static_cast<const A*>(dcarry),
                   static_cast<S*>(a.dc0), static_cast<const A*>(dstate));
  }
  return Status::success();
}

template <bool kBackward>
Status run(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  if (v.scan.w_hr || v.scan.P != v.scan.H)
    return Status::error(kErrorUnsupported, "the variant scans have no projection");
  return dispatch<float, double, f16_t, bf16_t>(v.scan, [&](auto cell, auto* s) {
    constexpr Cell C = decltype(cell)::value;
    using S = std::remove_pointer_t<decltype(s)>;
    using A = acc_of<S>;
    auto with = [&](auto* unit) {
      using Unit = std::remove_pointer_t<decltype(unit)>;
      if constexpr (kBackward)
        return backward_impl<C, S, Unit>(v, w, nthreads);
      else
        return forward_impl<C, S, Unit>(v, w, nthreads);
    };
    if (!v.slstm) return with(static_cast<VariantCellUnit<C, A>*>(nullptr));
    if constexpr (C == Cell::kLSTM) return with(static_cast<SlstmUnit<A>*>(nullptr));
    return Status::error(kErrorUnsupported, "the sLSTM runs on the LSTM's scan (cell kLSTM)");
  });
}

// f(Panel<C, Vec<A>::L>{}) for the runtime cell.
template <class A, class F>
int64_t with_cell_panel(Cell cell, F&& f) {
  constexpr int L = Vec<A>::L;
  switch (cell) {
    case Cell::kLSTM: return f(Panel<Cell::kLSTM, L>{});
    case Cell::kGRU: return f(Panel<Cell::kGRU, L>{});
    default: return f(Panel<Cell::kRNNTanh, L>{});
  }
}

}  // namespace

Status variant_forward(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  return run<false>(v, w, nthreads);
}
Status variant_backward(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  return run<true>(v, w, nthreads);
}

// As fused_threads: enough multiply-adds per thread and step (a head-wise product has 1/k of
// the dense one's) to pay for a barrier, and at least one panel each.
int variant_threads(const VariantArgs& v, int max_threads) {
  const ScanArgs& a = v.scan;
  const int64_t macs = a.sched.B * int64_t(gates_of(a.cell)) * a.H * v.head_size();
  const int64_t U = with_cell_panel<float>(a.cell, [](auto pn) -> int64_t { return pn.U; });
  const int64_t panels = v.heads * ((v.head_size() + U - 1) / U);
  int64_t n = std::max<int64_t>(1, macs / kFusedMinMacsPerThread);
  n = std::min<int64_t>(n, std::max<int64_t>(1, panels));
  return int(std::min<int64_t>(n, std::max(1, max_threads)));
}

int64_t variant_pack_elems(const VariantArgs& v, bool backward) {
  const ScanArgs& a = v.scan;
  const int64_t d = v.head_size();
  if (backward) return v.heads > 1 ? gates_of(a.cell) * a.H * d : 0;
  auto elems = [&](auto pn) -> int64_t {
    using PN = decltype(pn);
    return v.heads * ((d + PN::U - 1) / PN::U) * d * PN::NV * PN::lanes;
  };
  return a.dtype == DType::kFloat64 ? with_cell_panel<double>(a.cell, elems)
                                    : with_cell_panel<float>(a.cell, elems);
}

}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
