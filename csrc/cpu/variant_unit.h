// csrc/cpu/variant_unit.h — one vector of hidden units of one sequence at one step, forward and
// backward, for the variant scans (variant_impl.h): cell_io.h's forward_unit / backward_unit with
// the variants' operands added around the same cell_math.h formulas (the peephole LSTM's,
// zoneout's). cell_io.h is shared with the CUDA kernels and the plain scans, whose hot loops
// must not pay for a peephole load or a zoneout branch, hence these separate units; the
// formulas stay in cell_math.h, once.
#pragma once

#include "scan_common.h"
#include "variant_scan.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {
namespace {

// The variant operands of a call, typed: peephole rows at peep + q·H, zoneout keep of a state
// from its mask ([T, B, H], at the unit's [t, b, j]) or the eval constant.
template <class A>
struct VariantOperands {
  const A* peep;
  const A* mask_h;
  const A* mask_c;
  A p_h, p_c;
  bool zone_h, zone_c;

  explicit VariantOperands(const VariantArgs& v)
      : peep(static_cast<const A*>(v.peephole)),
        mask_h(static_cast<const A*>(v.mask_h)),
        mask_c(static_cast<const A*>(v.mask_c)),
        p_h(A(v.p_h)),
        p_c(A(v.p_c)),
        zone_h(v.mask_h || v.p_h > 0),
        zone_c(v.mask_c || v.p_c > 0) {}

  template <class IO>
  RNNK_INLINE typename IO::T keep(const IO& io, const A* mask, A p, int64_t at) const {
    return mask ? io.load(mask + at) : vsplat(p);
  }
  // wci, wcf, wco at unit j (zero without peepholes: the plain LSTM).
  template <class IO>
  RNNK_INLINE void peepholes(const IO& io, int64_t H, int64_t j, typename IO::T& wci,
                             typename IO::T& wcf, typename IO::T& wco) const {
    if (peep) {
      wci = io.load(peep + j);
      wcf = io.load(peep + H + j);
      wco = io.load(peep + 2 * H + j);
    } else {
      wci = wcf = wco = io.zero();
    }
  }
};

// Forward of unit j (a vector of units within one head): gh = h_{t-1}·W_hhᵀ at the unit, gate q
// at gh + q·gs; cur = h_{t-1}; c = c_{t-1}, replaced by c_t; h receives h_t (the next step's
// state). Writes out, the activated gates and the workspace (LSTM: the zoned c_t; GRU: hn_lin).
template <Cell C, class M, class IO, class S, class A>
RNNK_INLINE void variant_forward_unit(const IO& io, const ForwardRow<S, A>& r,
                                      const VariantOperands<A>& v, int64_t H, int64_t j,
                                      const A* gh, int gs, const A* cur, A* c, A* h) {
  using T = typename IO::T;
  const int64_t GH = gates_of(C) * H, gate_at = r.row * GH + j, unit_at = r.row * H + j;
  const S* x = r.xp + gate_at;
  T hn;
  if constexpr (C == Cell::kLSTM) {
    T wci, wcf, wco, i, f, u, o, cn;
    v.peepholes(io, H, j, wci, wcf, wco);
    const T c_prev = io.load(c);
    lstm_peephole_cell_fwd<M>(io.load(x) + io.load(gh), io.load(x + H) + io.load(gh + gs),
                              io.load(x + 2 * H) + io.load(gh + 2 * gs),
                              io.load(x + 3 * H) + io.load(gh + 3 * gs), c_prev, wci, wcf, wco, i,
                              f, u, o, cn, hn);
    if (v.zone_c) cn = zoneout_fwd(v.keep(io, v.mask_c, v.p_c, unit_at), c_prev, cn);
    io.store(c, cn);
    if (r.gates) store_gates(io, r.gates + gate_at, H, i, f, u, o);
    if (r.cs) io.store(r.cs + unit_at, cn);
  } else if constexpr (C == Cell::kGRU) {
    T hn_lin = io.load(gh + 2 * gs);
    if (r.b_hn) hn_lin = hn_lin + io.load(r.b_hn + j);
    T rr, z, n;
    gru_cell_fwd<M>(io.load(x), io.load(x + H), io.load(x + 2 * H), io.load(gh), io.load(gh + gs),
                    hn_lin, io.load(cur), rr, z, n, hn);
    if (r.gates) store_gates(io, r.gates + gate_at, H, rr, z, n);
    if (r.hn_lin) io.store(r.hn_lin + unit_at, hn_lin);
  } else {
    hn = rnn_cell_fwd<M>(io.load(x) + io.load(gh), C == Cell::kRNNReLU);
  }
  if constexpr (C != Cell::kRNNTanh && C != Cell::kRNNReLU)
    if (v.zone_h) hn = zoneout_fwd(v.keep(io, v.mask_h, v.p_h, unit_at), io.load(cur), hn);
  io.store(h, hn);
  io.store(r.out + unit_at, hn);
}

// Backward of unit j: dh = the carry ∂L/∂h_t (grad_out_t is added here), replaced by the part of
// ∂L/∂h_{t-1} that does not pass through W_hh (zoneout's k ⊙ ∂L/∂h_t, GRU's z ⊙ ∂L/∂h̃_t);
// dc = ∂L/∂c_t, replaced by ∂L/∂c_{t-1}. Writes dxp (gate stride H) and the d gates that W_hh
// multiplies to dg, gate q at dg + q·ds (the head-major buffer of the backward kernel).
template <Cell C, class M, class IO, class S, class A>
RNNK_INLINE void variant_backward_unit(const IO& io, const BackwardRow<S, A>& r,
                                       const VariantOperands<A>& v, int64_t H, int64_t j, A* dh,
                                       A* dc, A* dg, int ds) {
  using T = typename IO::T;
  const int64_t gate_at = r.row * (gates_of(C) * H) + j, unit_at = r.row * H + j;
  const int64_t prev_at = (r.prev < 0 ? r.b : r.prev) * H + j;
  T dh_t = io.load(dh) + io.load(r.grad_out + unit_at);
  T direct = io.zero();
  if constexpr (C != Cell::kRNNTanh && C != Cell::kRNNReLU)
    if (v.zone_h) dh_t = zoneout_bwd(v.keep(io, v.mask_h, v.p_h, unit_at), dh_t, direct);
  if constexpr (C == Cell::kLSTM) {
    const A* g = r.gates + gate_at;
    const T c_prev = r.prev >= 0 ? io.load(r.cs + prev_at) : io.load(r.c0 + prev_at);
    T dc_t = io.load(dc), direct_c = io.zero();
    if (v.zone_c) dc_t = zoneout_bwd(v.keep(io, v.mask_c, v.p_c, unit_at), dc_t, direct_c);
    T wci, wcf, wco, di, df, du, dout, dcp;
    v.peepholes(io, H, j, wci, wcf, wco);
    lstm_peephole_cell_bwd<M>(dh_t, dc_t, io.load(g), io.load(g + H), io.load(g + 2 * H),
                              io.load(g + 3 * H), c_prev, wci, wcf, wco, di, df, du, dout, dcp);
    io.store(dc, dcp + direct_c);
    store_gates(io, dg, ds, di, df, du, dout);
    store_gates(io, r.dxp + gate_at, H, di, df, du, dout);
  } else if constexpr (C == Cell::kGRU) {
    const A* g = r.gates + gate_at;
    const T h_prev = io.load((r.prev >= 0 ? r.out : r.h0) + prev_at);
    T dr, dz, dn, dhn, through_z;
    gru_cell_bwd<M>(dh_t, io.load(g), io.load(g + H), io.load(g + 2 * H),
                    io.load(r.hn_lin + unit_at), h_prev, dr, dz, dn, dhn, through_z);
    direct = direct + through_z;
    store_gates(io, dg, ds, dr, dz, dhn);
    store_gates(io, r.dxp + gate_at, H, dr, dz, dn);
  } else {
    const T dp = rnn_cell_bwd<M>(dh_t, io.load(r.out + unit_at), C == Cell::kRNNReLU);
    io.store(dg, dp);
    io.store(r.dxp + gate_at, dp);
  }
  io.store(dh, direct);
}

// The unit policy of variant_impl.h's scans for the four cells with their variants: kStates
// states besides h (the LSTM's c), at s (the scans' state buffers hold kStates [B, H] blocks,
// ss apart: SlstmUnit, slstm_unit.h, has three).
template <Cell C, class A>
struct VariantCellUnit {
  static constexpr int kStates = C == Cell::kLSTM ? 1 : 0;
  VariantOperands<A> ops;
  explicit VariantCellUnit(const VariantArgs& v) : ops(v) {}

  template <class M, class IO, class S>
  RNNK_INLINE void forward(const IO& io, const ForwardRow<S, A>& r, int64_t H, int64_t j,
                           const A* gh, int gs, const A* cur, A* s, int64_t, A* h) const {
    variant_forward_unit<C, M>(io, r, ops, H, j, gh, gs, cur, s, h);
  }
  template <class M, class IO, class S>
  RNNK_INLINE void backward(const IO& io, const BackwardRow<S, A>& r, int64_t H, int64_t j,
                            A* dh, A* ds, int64_t, A* dg, int dgs) const {
    variant_backward_unit<C, M>(io, r, ops, H, j, dh, ds, dg, dgs);
  }
};

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
