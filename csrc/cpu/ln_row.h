// csrc/cpu/ln_row.h — the row kernels of the layer-norm LSTM and GRU scans (ln_impl.h drives
// them; contract and design: ln_scan.h). One sequence's row at one step: forward, the
// statistics of the recurrent product's G·H values, then one pass over vectors of units for the
// gates and c_t (cell_math.h's lstm_ln_gates_fwd / gru_cell_fwd), then (LSTM) the statistics
// of c_t and one pass for h_t. Backward, the same in reverse, each norm's backward needing its
// row means of dv̂ and dv̂ ⊙ v̂ between two passes; the d recurrent product goes to the row that
// is multiplied by W_hh for d h_{t-1} and to `dgh` (for dW_hh after the loop, one GEMM in the
// op). A row is a few KiB, so it stays in L1 between its passes.
#pragma once
#include "ln_scan.h"
#include "scan_common.h"
#include "variant_unit.h"  // VariantOperands: zoneout's keep

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {

namespace {

// mean and 1/sqrt(var + eps) of x[0, n), biased variance (torch.nn.LayerNorm's), two passes
// (the one-pass E[x²] - E[x]² loses float32's digits when |mean| ≫ std).
template <class A>
RNNK_INLINE void row_stats(const A* x, int64_t n, A eps, A& mean, A& rstd) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t k = 0; k < n; ++k) s += x[k];
  mean = s / A(n);
  A q = 0;
#pragma omp simd reduction(+ : q)
  for (int64_t k = 0; k < n; ++k) q += (x[k] - mean) * (x[k] - mean);
  rstd = A(1) / std::sqrt(q / A(n) + eps);
}

// The row means a norm's backward needs (cell_math.h layer_norm_bwd): with dv̂ = γ ⊙ d,
// m1 = mean(dv̂), m2 = mean(dv̂ ⊙ v̂).
template <class A>
RNNK_INLINE void grad_means(const A* d, const A* gain, const A* vhat, int64_t n, A& m1, A& m2) {
  A s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
  for (int64_t k = 0; k < n; ++k) {
    s1 += d[k] * gain[k];
    s2 += d[k] * gain[k] * vhat[k];
  }
  m1 = s1 / A(n);
  m2 = s2 / A(n);
}

template <class A>
inline void copy_row(A* dst, const void* src, int64_t n) {
  if (n > 0) std::memcpy(dst, src, sizeof(A) * n);
}

// One sequence's row at time index t of a layer-norm scan, typed.
template <Cell C, class A>
struct LnRow {
  using V = typename Types<A>::V;
  using M = typename Types<A>::M;
  using IO = VecIO<A>;
  static constexpr int L = Types<A>::L;
  static constexpr int G = gates_of(C);

  const LayerNormArgs& v;
  const ScanArgs& a;
  const VariantOperands<A> zo;
  int64_t B, H, GH;
  A eps;
  const A *gain, *gain_c, *bias_c, *b_hn;

  explicit LnRow(const LayerNormArgs& args)
      : v(args), a(args.var.scan), zo(args.var), B(a.sched.B), H(a.H), GH(G * a.H),
        eps(A(args.eps)), gain(static_cast<const A*>(args.gain_hh)),
        gain_c(static_cast<const A*>(args.gain_c)), bias_c(static_cast<const A*>(args.bias_c)),
        b_hn(static_cast<const A*>(a.b_hn)) {}

  // Zoneout's keep of h / c at [T, B, H] offset `at`.
  V keep_h(const IO& io, int64_t at) const { return zo.keep(io, zo.mask_h, zo.p_h, at); }
  V keep_c(const IO& io, int64_t at) const { return zo.keep(io, zo.mask_c, zo.p_c, at); }

  template <class X>
  static X* at(void* p, int64_t offset) {
    return p ? static_cast<X*>(p) + offset : nullptr;
  }

  // Forward: g = gh's row b (overwritten: the LSTM keeps o there, and with zoneout of c the
  // candidate c̃_t, between its passes), h / c the state rows (h_{t-1} → h_t, c_{t-1} → c_t).
  void forward(int64_t t, int64_t b, A* g, A* h, A* c) const {
    const int64_t row = t * B + b;
    const A* x = static_cast<const A*>(a.xp) + row * GH;
    A* nrm = at<A>(v.nrm, row * GH);
    A* gates = at<A>(a.gates, row * GH);
    A* out = static_cast<A*>(a.out) + row * H;
    A mean, rstd;
    row_stats(g, GH, eps, mean, rstd);
    // n̂ of gate q's units j.., saved, and the recurrent part γ ⊙ n̂
    auto rec = [&](const IO& io, int q, int64_t j) {
      const V n = layer_norm_fwd(io.load(g + q * H + j), mean, rstd);
      if (nrm) io.store(nrm + q * H + j, n);
      return io.load(gain + q * H + j) * n;
    };
    A rstd_c = 0;
    if constexpr (C == Cell::kLSTM) {
      A* cs = at<A>(a.cs, row * H);
      for_vectors<L>(0, H, [&](int n, int64_t j) {
        const IO io{n};
        V pre[4];
        for (int q = 0; q < 4; ++q) pre[q] = io.load(x + q * H + j) + rec(io, q, j);
        V i, f, u, o, cn;
        const V cp = io.load(c + j);
        lstm_ln_gates_fwd<M>(pre[0], pre[1], pre[2], pre[3], cp, i, f, u, o, cn);
        // these units' g_g and g_o are read: their slots hold c̃_t and o until pass 2
        io.store(g + 2 * H + j, cn);
        io.store(g + 3 * H + j, o);
        if (zo.zone_c) cn = zoneout_fwd(keep_c(io, row * H + j), cp, cn);
        io.store(c + j, cn);
        if (gates) store_gates(io, gates + j, H, i, f, u, o);
        if (cs) io.store(cs + j, cn);
      });
      A mean_c;
      row_stats(g + 2 * H, H, eps, mean_c, rstd_c);
      A* chat = at<A>(v.chat, row * H);
      for_vectors<L>(0, H, [&](int n, int64_t j) {
        const IO io{n};
        const V ch = layer_norm_fwd(io.load(g + 2 * H + j), mean_c, rstd_c);
        if (chat) io.store(chat + j, ch);
        V hn = lstm_ln_hidden_fwd<M>(io.load(g + 3 * H + j),
                                     io.load(gain_c + j) * ch + io.load(bias_c + j));
        if (zo.zone_h) hn = zoneout_fwd(keep_h(io, row * H + j), io.load(h + j), hn);
        io.store(h + j, hn);
        io.store(out + j, hn);
      });
    } else {
      A* hn_ws = at<A>(a.hn_lin, row * H);
      for_vectors<L>(0, H, [&](int n, int64_t j) {
        const IO io{n};
        const V rr = rec(io, 0, j), rz = rec(io, 1, j);
        V hn_lin = rec(io, 2, j);
        if (b_hn) hn_lin = hn_lin + io.load(b_hn + j);
        V r, z, nn, hn;
        const V hp = io.load(h + j);
        gru_cell_fwd<M>(io.load(x + j), io.load(x + H + j), io.load(x + 2 * H + j), rr, rz,
                        hn_lin, hp, r, z, nn, hn);
        if (zo.zone_h) hn = zoneout_fwd(keep_h(io, row * H + j), hp, hn);
        if (gates) store_gates(io, gates + j, H, r, z, nn);
        if (hn_ws) io.store(hn_ws + j, hn_lin);
        io.store(h + j, hn);
        io.store(out + j, hn);
      });
    }
    if (A* rs = at<A>(v.rstd, row * 2)) {
      rs[0] = rstd;
      rs[1] = rstd_c;
    }
  }

  // Backward at time index t (tprev: the sequence's previous step, -1 at its first): dh / dc
  // the carries of row b (∂L/∂h_t without grad_out_t, → the part of ∂L/∂h_{t-1} not through
  // W_hh; ∂L/∂c_t → ∂L/∂c_{t-1}), dg the scratch row the recurrent GEMM multiplies, dp the
  // thread's dparams slot (ln_scan.h) the row adds its terms to.
  void backward(int64_t t, int64_t tprev, int64_t b, A* dh, A* dc, A* dg, A* dp) const {
    const int64_t row = t * B + b, prev = tprev * B + b;
    const A* g = static_cast<const A*>(a.gates) + row * GH;
    const A* go = static_cast<const A*>(a.grad_out) + row * H;
    A* dx = static_cast<A*>(a.dxp) + row * GH;
    const A* rs = static_cast<const A*>(v.rstd) + row * 2;
    if constexpr (C == Cell::kLSTM) {
      const A* c_prev =
          tprev >= 0 ? static_cast<const A*>(a.cs) + prev * H : static_cast<const A*>(a.c0) + b * H;
      const A* chat = static_cast<const A*>(v.chat) + row * H;
      A* dy = dx;  // ∂L/∂y between the two passes, in the slot of d g_i, which pass 2 writes
      for_vectors<L>(0, H, [&](int n, int64_t j) {
        const IO io{n};
        V dgo, dyv, dht = io.load(dh + j) + io.load(go + j), direct = io.zero();
        if (zo.zone_h) dht = zoneout_bwd(keep_h(io, row * H + j), dht, direct);
        io.store(dh + j, direct);  // the part of ∂L/∂h_{t-1} not through W_hh
        lstm_ln_hidden_bwd<M>(dht, io.load(g + 3 * H + j),
                              io.load(gain_c + j) * io.load(chat + j) + io.load(bias_c + j), dgo,
                              dyv);
        io.store(dx + 3 * H + j, dgo);
        io.store(dg + 3 * H + j, dgo);
        io.store(dy + j, dyv);
      });
      A m1, m2;
      grad_means(dy, gain_c, chat, H, m1, m2);
      for_vectors<L>(0, H, [&](int n, int64_t j) {
        const IO io{n};
        const V dyv = io.load(dy + j), ch = io.load(chat + j);
        io.store(dp + GH + j, io.load(dp + GH + j) + dyv * ch);    // dγ_c
        io.store(dp + GH + H + j, io.load(dp + GH + H + j) + dyv);  // dβ_c
        V dct = io.load(dc + j), direct = io.zero();
        if (zo.zone_c) dct = zoneout_bwd(keep_c(io, row * H + j), dct, direct);
        dct = dct + layer_norm_bwd(dyv * io.load(gain_c + j), ch, rs[1], m1, m2);
        V di, df, du, dcp;
        lstm_ln_gates_bwd(dct, io.load(g + j), io.load(g + H + j), io.load(g + 2 * H + j),
                          io.load(c_prev + j), di, df, du, dcp);
        store_gates(io, dx + j, H, di, df, du);
        store_gates(io, dg + j, H, di, df, du);
        io.store(dc + j, dcp + direct);
      });
    } else {
      const A* h_prev =
          tprev >= 0 ? static_cast<const A*>(a.out) + prev * H : static_cast<const A*>(a.h0) + b * H;
      const A* hn_lin = static_cast<const A*>(a.hn_lin) + row * H;
      for_vectors<L>(0, H, [&](int n, int64_t j) {
        const IO io{n};
        V dr, dz, dn, dhn, direct, dht = io.load(dh + j) + io.load(go + j), zoned = io.zero();
        if (zo.zone_h) dht = zoneout_bwd(keep_h(io, row * H + j), dht, zoned);
        gru_cell_bwd<M>(dht, io.load(g + j), io.load(g + H + j), io.load(g + 2 * H + j),
                        io.load(hn_lin + j), io.load(h_prev + j), dr, dz, dn, dhn, direct);
        store_gates(io, dx + j, H, dr, dz, dn);
        store_gates(io, dg + j, H, dr, dz, dhn);  // ∂L/∂rec: the n block through r ⊙ (...)
        io.store(dp + GH + j, io.load(dp + GH + j) + dhn);  // db_hn
        io.store(dh + j, direct + zoned);
      });
    }
    // dg = ∂L/∂rec → ∂L/∂gh through rec = γ ⊙ n̂ and the norm; also into dgh for dW_hh
    const A* nrm = static_cast<const A*>(v.nrm) + row * GH;
    A* dgh = static_cast<A*>(v.dgh) + row * GH;
    A m1, m2;
    grad_means(dg, gain, nrm, GH, m1, m2);
    for_vectors<L>(0, GH, [&](int n, int64_t k) {
      const IO io{n};
      const V drec = io.load(dg + k), nk = io.load(nrm + k);
      io.store(dp + k, io.load(dp + k) + drec * nk);  // dγ_hh
      const V d = layer_norm_bwd(drec * io.load(gain + k), nk, rs[0], m1, m2);
      io.store(dg + k, d);
      io.store(dgh + k, d);
    });
  }

  // A padded position (step s past sequence b's end): zero gradients, nothing into the GEMM.
  void backward_padding(int64_t s, int64_t b, A* dg) const {
    const int64_t row = s * B + b;
    fill_zero(static_cast<A*>(a.dxp) + row * GH, GH);
    fill_zero(static_cast<A*>(v.dgh) + row * GH, GH);
    fill_zero(dg, GH);
  }

  // Sequence b at step s, whichever way the product ran: its row (gh: its h_{t-1}·W_hhᵀ; h, c:
  // its state, replaced), or at a padded position the frozen state and a zero output.
  void forward_step(int64_t s, int64_t b, A* gh, A* h, A* c) const {
    const int64_t t = a.sched.time(s, b);
    if (t >= 0)
      forward(t, b, gh, h, c);
    else
      fill_zero(static_cast<A*>(a.out) + (s * B + b) * H, H);
  }
  // The reverse of forward_step; dparams: the calling thread's slot.
  void backward_step(int64_t s, int64_t b, A* dh, A* dc, A* dg, A* dparams) const {
    const int64_t t = a.sched.time(s, b);
    if (t >= 0)
      backward(t, s > 0 ? a.sched.time(s - 1, b) : -1, b, dh, dc, dg, dparams);
    else
      backward_padding(s, b, dg);
  }
};

// f(b, thread) for the batch's rows of one step, in parallel on up to `threads` threads when
// there is enough work to wake a team.
template <class F>
void for_rows(int64_t B, int64_t GH, int threads, const F& f) {
#pragma omp parallel for schedule(static) num_threads(threads) \
    if (threads > 1 && B > 1 && B * GH >= kParallelMinElems)
  for (int64_t b = 0; b < B; ++b) f(b, thread_id());
}

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
