// csrc/cpu/cell_step_impl.h — the kernels of csrc/cpu/cell_step.h. Included by the scans'
// instruction-set builds (isa_build.h) after scan_impl.h, under the same
// RNNK_CPU_ISA; do not include it anywhere else.
//
// A cell step is the scans' pointwise pass (scan_step.h) at T = 1 with a Step of its own: the
// same cell_io.h units, but the hidden side's GEMM result, h_{t-1} and c_{t-1} come from the
// step's tensors (storage dtype) instead of the scans' accumulation-type scratch, and c_t and
// ∂L/∂c_{t-1} go to the step's outputs. Per vector of units they pass through registers (small
// arrays the compiler keeps there) converted to the accumulation type. Plus rows_dot, the GEMM of
// a batch-1 step.
#pragma once

#include "cell_step.h"
#include "scan_common.h"
#include "scan_step.h"

namespace rnnk::cpu::RNNK_CPU_ISA {
namespace {

// What both directions' Steps share: sequence b's rows, every step active.
template <Cell C, class S>
struct CellStepBase {
  using A = typename Types<S>::A;
  using M = typename Types<S>::M;
  static constexpr int L = Types<S>::L;
  static constexpr int G = gates_of(C);
  int H;
  int64_t unit0;  // b·H: sequence b's first unit in the [B, H] tensors

  CellStepBase(const ScanArgs& a, int64_t b) : H(int(a.H)), unit0(b * a.H) {}
  bool active() const { return true; }
  template <class IO>
  void padding(const IO&, int64_t) const {}  // no padding in a step
  template <class P>
  static P* at(P* base, int64_t offset) {  // a row of an optional tensor
    return base ? base + offset : nullptr;
  }
};

template <Cell C, class S>
struct CellStepForward : CellStepBase<C, S> {
  using Base = CellStepBase<C, S>;
  using typename Base::A;
  ForwardRow<S, A> r;
  const S *gh, *h0, *c0;
  S* c_n;

  CellStepForward(const ScanArgs& a, const CellStep& st, int64_t, int64_t b)
      : Base(a, b),
        r(forward_row<S, A>(a, 0, b)),
        gh(st.gh_is_bias ? static_cast<const S*>(st.gh)
                         : static_cast<const S*>(st.gh) + b * Base::G * a.H),
        h0(Base::at(static_cast<const S*>(a.h0), this->unit0)),
        c0(Base::at(static_cast<const S*>(a.c0), this->unit0)),
        c_n(Base::at(static_cast<S*>(a.c_n), this->unit0)) {}

  template <bool kProjected, class IO>
  void unit(const IO& io, int64_t j) const {
    constexpr int L = Base::L, G = Base::G;
    const int H = this->H;
    // h_{t-1}·W_hhᵀ (gate stride L), h_{t-1} (GRU), c_{t-1} → c_t (LSTM), h_t (also stored to
    // the output by the unit)
    A gh_acc[G * L], h_prev[L], c[L], h[L];
    for (int q = 0; q < G; ++q) io.store(gh_acc + q * L, gh ? io.load(gh + q * H + j) : io.zero());
    if constexpr (C == Cell::kGRU) io.store(h_prev, io.load(h0 + j));
    if constexpr (C == Cell::kLSTM) io.store(c, io.load(c0 + j));
    forward_unit<C, typename Base::M>(io, r, H, j, gh_acc, L, h_prev, c, h);
    if constexpr (C == Cell::kLSTM) io.store(c_n + j, io.load(c));
  }
};

template <Cell C, class S>
struct CellStepBackward : CellStepBase<C, S> {
  using Base = CellStepBase<C, S>;
  using typename Base::A;
  BackwardRow<S, A> r;
  const S* grad_c;  // ∂L/∂c_t, or null: zero
  S *dc0, *dg, *direct;

  CellStepBackward(const ScanArgs& a, const CellStep& st, int64_t, int64_t b)
      : Base(a, b),
        r(backward_row<S, A>(a, 0, -1, b)),
        grad_c(Base::at(static_cast<const S*>(a.grad_cn), this->unit0)),
        dc0(Base::at(static_cast<S*>(a.dc0), this->unit0)),
        // the d gates W_hh multiplies: the GRU's own, the input side's for the other cells
        dg(static_cast<S*>(C == Cell::kGRU ? st.dgh : a.dxp) + b * Base::G * a.H),
        direct(Base::at(static_cast<S*>(st.dh_direct), this->unit0)) {}

  template <bool kProjected, class IO>
  void unit(const IO& io, int64_t j) const {
    constexpr int L = Base::L;
    // the carries of cell_io.h: ∂L/∂h_t beyond grad_out (none) → GRU dh ⊙ z; ∂L/∂c_t → c_{t-1}
    A dh[L], dc[L];
    io.store(dh, io.zero());
    if constexpr (C == Cell::kLSTM) io.store(dc, grad_c ? io.load(grad_c + j) : io.zero());
    backward_unit<C, typename Base::M>(io, r, this->H, j, dh, dc, dg + j);
    if constexpr (C == Cell::kLSTM)
      if (dc0) io.store(dc0 + j, io.load(dc));
    if constexpr (C == Cell::kGRU) io.store(direct + j, io.load(dh));
  }
};

template <bool kBackward>
Status run_cell_step(const CellStep& st) {
  return dispatch<float, double, f16_t, bf16_t>(st.a, [&](auto cell, auto* s) {
    constexpr Cell C = decltype(cell)::value;
    using S = std::remove_pointer_t<decltype(s)>;
    using Step = std::conditional_t<kBackward, CellStepBackward<C, S>, CellStepForward<C, S>>;
    pointwise_pass<S, Step, false>(st.a, st, 0);
    return Status::success();
  });
}

// sums[r] = Σ_k x[k]·W[r·K + k] for R rows of W: one accumulator vector per row (R independent
// FMA chains), then a horizontal sum of each.
template <int R, class S>
RNNK_INLINE void dot_rows(const S* x, const S* W, int64_t K, acc_of<S>* sums) {
  using A = acc_of<S>;
  using V = typename Vec<A>::type;
  constexpr int L = Vec<A>::L;
  V acc[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r] = vzero<V>();
  for_vectors<L>(0, K, [&](int n, int64_t k) {
    const V xv = vload(x + k, n);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) acc[r] += vload(W + r * K + k, n) * xv;
  });
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    A s = acc[r][0];
    for (int l = 1; l < L; ++l) s += acc[r][l];
    sums[r] = s;
  }
}

template <class S>
void rows_dot_impl(const RowsDot& d) {
  using A = acc_of<S>;
  constexpr int R = 8;  // rows per tile: 8 chains hide the FMA latency
  const S* x = static_cast<const S*>(d.x);
  const S* W = static_cast<const S*>(d.w);
  const S* bias = static_cast<const S*>(d.bias);
  S* out = static_cast<S*>(d.out);
  A sums[R];
  for (int64_t b = 0; b < d.B; ++b) {
    const S* xb = x + b * d.K;
    S* ob = out + b * d.N;
    int64_t n = 0;
    auto emit = [&](int rows) {
      for (int r = 0; r < rows; ++r, ++n)
        ob[n] = store_cast<S>(bias ? sums[r] + to_acc(bias[n]) : sums[r]);
    };
    while (n + R <= d.N) {
      dot_rows<R>(xb, W + n * d.K, d.K, sums);
      emit(R);
    }
    while (n < d.N) {
      dot_rows<1>(xb, W + n * d.K, d.K, sums);
      emit(1);
    }
  }
}

}  // namespace

Status cell_step_forward(const CellStep& step) { return run_cell_step<false>(step); }
Status cell_step_backward(const CellStep& step) { return run_cell_step<true>(step); }

Status rows_dot(const RowsDot& d) {
  switch (d.dtype) {
    case DType::kFloat32: rows_dot_impl<float>(d); break;
    case DType::kFloat64: rows_dot_impl<double>(d); break;
    case DType::kFloat16: rows_dot_impl<f16_t>(d); break;
    case DType::kBFloat16: rows_dot_impl<bf16_t>(d); break;
  }
  return Status::success();
}

}  // namespace rnnk::cpu::RNNK_CPU_ISA
