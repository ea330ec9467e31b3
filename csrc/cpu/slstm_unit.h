// csrc/cpu/slstm_unit.h — the sLSTM's vector of hidden units for the variant scans
// (variant_impl.h): where its operands come from and where its results go around cell_math.h's
// slstm_cell_fwd / slstm_cell_bwd, and the two activations those need beyond simd.h's.
//
// The sLSTM runs on the head-wise LSTM scan (4 gates i, f, z, o; W_hh head-wise [4H, d] exactly
// as the LSTM's num_heads), with three states besides h: c, n, m, kept stacked [3, B, H] (in the
// op's c0 / c_n / grad_cn / dc0 and in the kernels' state buffers, state e at e·B·H). Saved for
// the backward (variant_scan.h): `gates` holds the pre-activations (not activated gates: the
// backward must repeat the forward's comparisons exactly, ties included, to follow torch's
// gradient rules), `cs` holds c_t, n_t, m_t as [T, B, 3, H]. The backward recomputes i, f and
// the activations from them (six transcendental functions per unit: cheaper than saving four
// more [T, B, H] tensors and reading them back from memory).
#pragma once

#include "scan_common.h"
#include "variant_scan.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {
namespace {

// simd.h's activations plus exp and torch's log_sigmoid(x) = min(x, 0) - log1p(exp(-|x|)).
// float: log1p(e) for e = exp(-|x|) ∈ [0, 1] as 2·atanh(s), s = e / (2 + e) ∈ [0, 1/3], by its
// series 2s·Σ s^2k / (2k+1) to k = 7 (truncation < 2e-9 relative; full relative accuracy for
// tiny e, where log(1 + e) would lose it). double: lane-wise libm, as VecMathD.
struct SlstmMathF : VecMathF {
  static RNNK_INLINE V log_sigmoid(V x) {
    const V neg = x < 0.0f ? x : vzero<V>();        // min(x, 0); NaN → 0 here, NaN below
    const V e = exp(x < 0.0f ? x : -x);              // exp(-|x|), NaN propagates
    const V s = e / (2.0f + e), y = s * s;
    V p = vsplat(1.0f / 15);
    p = p * y + 1.0f / 13;
    p = p * y + 1.0f / 11;
    p = p * y + 1.0f / 9;
    p = p * y + 1.0f / 7;
    p = p * y + 1.0f / 5;
    p = p * y + 1.0f / 3;
    p = p * y + 1.0f;
    return neg - 2.0f * s * p;
  }
};

struct SlstmMathD : VecMathD {
  static RNNK_INLINE V exp(V x) {
    V r;
    for (int l = 0; l < Vec<double>::L; ++l) r[l] = std::exp(x[l]);
    return r;
  }
  static RNNK_INLINE V log_sigmoid(V x) {
    V r;
    for (int l = 0; l < Vec<double>::L; ++l) r[l] = ExactMath::log_sigmoid(x[l]);
    return r;
  }
};

template <class A>
using slstm_math_of = std::conditional_t<std::is_same_v<A, double>, SlstmMathD, SlstmMathF>;

// The unit policy of variant_impl.h's scans for the sLSTM (VariantCellUnit is the other cells').
// States at s + e·ss (e = 0, 1, 2: c, n, m; ss = B·H), in place.
template <class A>
struct SlstmUnit {
  static constexpr int kStates = 3;
  explicit SlstmUnit(const VariantArgs&) {}

  // Forward of unit j: gh = h_{t-1}·W_hhᵀ at the unit (gate q at gh + q·gs), s = the states,
  // replaced by the new ones; h receives h_t. Saves the pre-activations and c_t, n_t, m_t.
  template <class M, class IO, class S>
  RNNK_INLINE void forward(const IO& io, const ForwardRow<S, A>& r, int64_t H, int64_t j,
                           const A* gh, int gs, const A*, A* s, int64_t ss, A* h) const {
    using T = typename IO::T;
    using SM = slstm_math_of<A>;
    const S* x = r.xp + r.row * 4 * H + j;
    const T gi = io.load(x) + io.load(gh), gf = io.load(x + H) + io.load(gh + gs),
            gz = io.load(x + 2 * H) + io.load(gh + 2 * gs),
            go = io.load(x + 3 * H) + io.load(gh + 3 * gs);
    T c, n, m, hn;
    slstm_cell_fwd<SM>(gi, gf, gz, go, io.load(s), io.load(s + ss), io.load(s + 2 * ss), c, n, m,
                       hn);
    io.store(s, c);
    io.store(s + ss, n);
    io.store(s + 2 * ss, m);
    if (r.gates) store_gates(io, r.gates + r.row * 4 * H + j, int(H), gi, gf, gz, go);
    if (r.cs) store_gates(io, r.cs + r.row * 3 * H + j, int(H), c, n, m);
    io.store(h, hn);
    io.store(r.out + r.row * H + j, hn);
  }

  // Backward of unit j: dh = the carry ∂L/∂h_t (grad_out_t added here), replaced by 0 (h_{t-1}
  // has no path but W_hh); ds = ∂L/∂ of c_t, n_t, m_t at ds + e·ss, replaced by those of the
  // previous states. Writes dxp and the d gates at dg + q·dgs.
  template <class M, class IO, class S>
  RNNK_INLINE void backward(const IO& io, const BackwardRow<S, A>& r, int64_t H, int64_t j,
                            A* dh, A* ds, int64_t ss, A* dg, int dgs) const {
    using T = typename IO::T;
    using SM = slstm_math_of<A>;
    const A* g = r.gates + r.row * 4 * H + j;
    const A* st = r.cs + r.row * 3 * H + j;
    // The previous states: saved at the previous step, or the initial ones ([3, B, H] in c0).
    auto prev = [&](int e) {
      return r.prev < 0 ? io.load(r.c0 + e * ss + r.b * H + j)
                        : io.load(r.cs + r.prev * 3 * H + e * H + j);
    };
    T dgi, dgf, dgz, dgo, dc, dn, dm;
    slstm_cell_bwd<SM>(io.load(dh) + io.load(r.grad_out + r.row * H + j), io.load(ds),
                       io.load(ds + ss), io.load(ds + 2 * ss), io.load(g), io.load(g + H),
                       io.load(g + 2 * H), io.load(g + 3 * H), prev(0), prev(1), prev(2),
                       io.load(st), io.load(st + H), io.load(st + 2 * H), dgi, dgf, dgz, dgo, dc,
                       dn, dm);
    io.store(ds, dc);
    io.store(ds + ss, dn);
    io.store(ds + 2 * ss, dm);
    store_gates(io, dg, dgs, dgi, dgf, dgz, dgo);
    store_gates(io, r.dxp + r.row * 4 * H + j, int(H), dgi, dgf, dgz, dgo);
    io.store(dh, io.zero());
  }
};

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
