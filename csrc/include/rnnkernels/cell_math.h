// rnnkernels/cell_math.h — the gate math of every cell and its derivative, for C++ and CUDA.
//
// This header is the single source of the cell formulas for the compiled kernels (csrc/cpu and
// csrc/cuda); rnnkernels/backends/triton/cell.py mirrors it for Triton under the same names (lstm_cell_fwd,
// lstm_cell_bwd, gru_cell_fwd, ...), and the reference backend (rnnkernels/backends/reference.py) is
// written independently so a mistake shared by the kernels still shows up in the tests. No torch,
// no Python, no CUDA headers: it compiles with g++ alone and with nvcc for host and device.
//
// Every function is a template over the value type `T` and a math policy `M` that supplies the
// activations (`M::sigmoid`, `M::tanh`, `M::relu`, `M::relu_mask`). `T` is a scalar (float,
// double) for CUDA and the C++ tests, or a SIMD vector for the CPU kernels (csrc/cpu/simd.h),
// where the policy evaluates the activations lane-wise with vectorised polynomials. Keeping the
// policy a template argument (instead of overloads found by lookup) makes the formulas identical
// for every backend that includes this file. (Constants are written as integer literals, `1 - x`:
// a GCC vector type cannot be constructed from a scalar as `T(1)`, while `1 - v` broadcasts.)
//
// Notation (torch's definitions, see docs/BACKENDS.md). Pre-activations come in as sums
// xp_t + h_{t-1}·W_hhᵀ; the derivatives take the *activated* gates saved by the forward pass.
#pragma once

#if defined(__CUDACC__)
#define RNNK_HOST_DEVICE __host__ __device__
#define RNNK_INLINE __forceinline__
#else
#include <cmath>
#define RNNK_HOST_DEVICE
// Always inlined: the CPU kernels are compiled once per instruction set (csrc/cpu), and an
// out-of-line copy compiled for AVX2 must never be the one a generic caller links against.
#define RNNK_INLINE inline __attribute__((always_inline))
#endif

namespace rnnk {

// Activations with the platform's accurate libm (host) or CUDA math library (device). Used by the
// CUDA kernels, by the scalar tails of the CPU kernels' tests and as the C++ tests' ground truth.
struct ExactMath {
  static RNNK_HOST_DEVICE RNNK_INLINE float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }
  static RNNK_HOST_DEVICE RNNK_INLINE double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
  static RNNK_HOST_DEVICE RNNK_INLINE float tanh(float x) { return tanhf(x); }
  static RNNK_HOST_DEVICE RNNK_INLINE double tanh(double x) { return ::tanh(x); }
  // torch's relu: NaN propagates (NaN < 0 is false; a diverged model must not look healthy).
  template <class T>
  static RNNK_HOST_DEVICE RNNK_INLINE T relu(T x) { return x < T(0) ? T(0) : x; }
  // v where h > 0, else 0: the ReLU derivative expressed through the saved output h = relu(pre)
  // (h > 0 exactly where pre > 0), so the backward needs no saved pre-activation. Zero only where
  // h <= 0, as torch's threshold_backward: a NaN h passes v on.
  template <class T>
  static RNNK_HOST_DEVICE RNNK_INLINE T relu_mask(T h, T v) { return h <= T(0) ? T(0) : v; }
  // The sLSTM's (below): exp and torch's log_sigmoid, min(x, 0) - log1p(exp(-|x|)).
  static RNNK_HOST_DEVICE RNNK_INLINE float exp(float x) { return expf(x); }
  static RNNK_HOST_DEVICE RNNK_INLINE double exp(double x) { return ::exp(x); }
  static RNNK_HOST_DEVICE RNNK_INLINE float log_sigmoid(float x) {
    return fminf(x, 0.0f) - log1pf(expf(-fabsf(x)));
  }
  static RNNK_HOST_DEVICE RNNK_INLINE double log_sigmoid(double x) {
    return fmin(x, 0.0) - log1p(::exp(-fabs(x)));
  }
};

// ------------------------------------------------------------------------------------- LSTM
// Forward, gate order i, f, g, o:
//   i = σ(g_i)  f = σ(g_f)  u = tanh(g_g)  o = σ(g_o)
//   c_t = f ⊙ c_{t-1} + i ⊙ u          h_t = o ⊙ tanh(c_t)
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void lstm_cell_fwd(T gi, T gf, T gg, T go, T c_prev, T& i, T& f,
                                               T& u, T& o, T& c, T& h) {
  i = M::sigmoid(gi);
  f = M::sigmoid(gf);
  u = M::tanh(gg);
  o = M::sigmoid(go);
  c = f * c_prev + i * u;
  h = o * M::tanh(c);
}

// Backward of one step. In: dh = ∂L/∂h_t (the unprojected hidden, total: output + recurrent
// gradient), dc = ∂L/∂c_t carried from step t+1, the activated gates i, f, u, o, the cell c_t and
// c_{t-1}. Out: the gradients of the four pre-activations and ∂L/∂c_{t-1}:
//   dc_t = dc + dh ⊙ o ⊙ (1 - tanh²c_t)
//   d g_i = dc_t ⊙ u ⊙ i(1-i)     d g_f = dc_t ⊙ c_{t-1} ⊙ f(1-f)
//   d g_g = dc_t ⊙ i ⊙ (1-u²)     d g_o = dh ⊙ tanh(c_t) ⊙ o(1-o)
//   dc_{t-1} = dc_t ⊙ f
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void lstm_cell_bwd(T dh, T dc, T i, T f, T u, T o, T c, T c_prev,
                                                T& dgi, T& dgf, T& dgg, T& dgo, T& dc_prev) {
  const T tc = M::tanh(c);
  const T dct = dc + dh * o * (1 - tc * tc);
  dgi = dct * u * i * (1 - i);
  dgf = dct * c_prev * f * (1 - f);
  dgg = dct * i * (1 - u * u);
  dgo = dh * tc * o * (1 - o);
  dc_prev = dct * f;
}

// -------------------------------------------------------------------------------------- GRU
// Forward, gate order r, z, n. a_* = the input part xp_t, b_* = the hidden part h_{t-1}·W_hhᵀ,
// with b_hn already added to the n block (hn_lin = W_hn h_{t-1} + b_hn, the value r multiplies):
//   r = σ(a_r + b_r)   z = σ(a_z + b_z)   n = tanh(a_n + r ⊙ hn_lin)
//   h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void gru_cell_fwd(T ar, T az, T an, T br, T bz, T hn_lin, T h_prev,
                                              T& r, T& z, T& n, T& h) {
  r = M::sigmoid(ar + br);
  z = M::sigmoid(az + bz);
  n = M::tanh(an + r * hn_lin);
  h = n + z * (h_prev - n);  // = (1-z)⊙n + z⊙h_{t-1}, one rounding fewer
}

// Backward of one step. In: dh = ∂L/∂h_t (total), the activated r, z, n, hn_lin and h_{t-1}.
// Out:
//   dn  = dh ⊙ (1-z) ⊙ (1-n²)              (gradient of a_n + r⊙hn_lin, i.e. of a_n)
//   dz  = dh ⊙ (h_{t-1} - n) ⊙ z(1-z)
//   dr  = dn ⊙ hn_lin ⊙ r(1-r)
//   dhn = dn ⊙ r                           (gradient of hn_lin: what W_hn and b_hn see)
//   dh_direct = dh ⊙ z                     (the part of ∂L/∂h_{t-1} not through W_hh)
// ∂L/∂h_{t-1} = dh_direct + [dr, dz, dhn]·W_hh.
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void gru_cell_bwd(T dh, T r, T z, T n, T hn_lin, T h_prev, T& dr,
                                               T& dz, T& dn, T& dhn, T& dh_direct) {
  dn = dh * (1 - z) * (1 - n * n);
  dz = dh * (h_prev - n) * z * (1 - z);
  dr = dn * hn_lin * r * (1 - r);
  dhn = dn * r;
  dh_direct = dh * z;
}

// ------------------------------------------------------------------------------- Elman RNN
// h_t = tanh(pre) or relu(pre), pre = xp_t + h_{t-1}·W_hhᵀ.
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE T rnn_cell_fwd(T pre, bool relu) {
  return relu ? M::relu(pre) : M::tanh(pre);
}

// d pre = dh ⊙ act'(pre), written through the saved output h: tanh' = 1 - h², relu' = [h > 0].
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE T rnn_cell_bwd(T dh, T h, bool relu) {
  return relu ? M::relu_mask(h, dh) : dh * (1 - h * h);
}

// ------------------------------------------------------------ variants (issue 16, VARIANTS.md)
// Peephole LSTM (Gers & Schmidhuber 2000): i and f see c_{t-1}, o sees the new c_t, through the
// diagonal weights wci, wcf, wco (zero for an LSTM without peepholes: the plain formulas above):
//   i = σ(g_i + wci ⊙ c_{t-1})  f = σ(g_f + wcf ⊙ c_{t-1})  u = tanh(g_g)
//   c_t = f ⊙ c_{t-1} + i ⊙ u   o = σ(g_o + wco ⊙ c_t)      h_t = o ⊙ tanh(c_t)
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void lstm_peephole_cell_fwd(T gi, T gf, T gg, T go, T c_prev, T wci,
                                                        T wcf, T wco, T& i, T& f, T& u, T& o,
                                                        T& c, T& h) {
  i = M::sigmoid(gi + wci * c_prev);
  f = M::sigmoid(gf + wcf * c_prev);
  u = M::tanh(gg);
  c = f * c_prev + i * u;
  o = M::sigmoid(go + wco * c);
  h = o * M::tanh(c);
}

// Its backward. c_t is recomputed from the gates and c_{t-1} (a kernel with zoneout saves the
// zoned state, not this candidate). In: dh, dc = ∂L/∂h_t, ∂L/∂c_t of the cell's own outputs.
//   d g_o = dh ⊙ tanh(c_t) ⊙ o(1-o)
//   dc_t  = dc + dh ⊙ o ⊙ (1 - tanh²c_t) + d g_o ⊙ wco        (o saw c_t)
//   d g_i = dc_t ⊙ u ⊙ i(1-i)   d g_f = dc_t ⊙ c_{t-1} ⊙ f(1-f)   d g_g = dc_t ⊙ i ⊙ (1-u²)
//   dc_{t-1} = dc_t ⊙ f + d g_i ⊙ wci + d g_f ⊙ wcf             (i and f saw c_{t-1})
// The peephole weights' own gradients are sums over steps and batch (the op reduces them from
// dxp): ∂L/∂wci = Σ d g_i ⊙ c_{t-1}, ∂L/∂wcf = Σ d g_f ⊙ c_{t-1}, ∂L/∂wco = Σ d g_o ⊙ c_t.
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void lstm_peephole_cell_bwd(T dh, T dc, T i, T f, T u, T o, T c_prev,
                                                         T wci, T wcf, T wco, T& dgi, T& dgf,
                                                         T& dgg, T& dgo, T& dc_prev) {
  const T tc = M::tanh(f * c_prev + i * u);
  dgo = dh * tc * o * (1 - o);
  const T dct = dc + dh * o * (1 - tc * tc) + dgo * wco;
  dgi = dct * u * i * (1 - i);
  dgf = dct * c_prev * f * (1 - f);
  dgg = dct * i * (1 - u * u);
  dc_prev = dct * f + dgi * wci + dgf * wcf;
}

// Zoneout (Krueger et al. 2017): a state keeps its previous value with weight k, the 0/1 mask
// in training (so a kept unit is exactly its previous value) or the probability p in eval:
//   s_t = k ⊙ s_{t-1} + (1-k) ⊙ s̃_t
template <class T>
RNNK_HOST_DEVICE RNNK_INLINE T zoneout_fwd(T k, T prev, T cand) {
  return k * prev + (1 - k) * cand;
}

// Its backward: ∂L/∂s_t splits into (1-k) ⊙ ∂L/∂s_t to the candidate s̃_t (returned) and
// k ⊙ ∂L/∂s_t straight to s_{t-1} (added to `direct`). k is a constant (no gradient).
template <class T>
RNNK_HOST_DEVICE RNNK_INLINE T zoneout_bwd(T k, T ds, T& direct) {
  direct = direct + k * ds;
  return (1 - k) * ds;
}

// Layer norm (Ba et al. 2016; haste's LayerNormLSTM / LayerNormGRU, docs/VARIANTS.md) of a row v
// of n values: v̂ = (v - mean(v)) · rstd, rstd = 1/sqrt(var(v) + eps) (biased variance), then
// γ ⊙ v̂ (+ β). The row statistics are reductions, the kernels' (csrc/cpu/ln_impl.h); per
// element only these two formulas. The backward, with dv̂ = γ ⊙ ∂L/∂(γ ⊙ v̂ + β) and the row means
// m1 = mean(dv̂), m2 = mean(dv̂ ⊙ v̂) (v̂'s mean and its variance depend on every element):
//   ∂L/∂v = rstd ⊙ (dv̂ - m1 - v̂ ⊙ m2)
template <class T, class A>
RNNK_HOST_DEVICE RNNK_INLINE T layer_norm_fwd(T v, A mean, A rstd) {
  return (v - mean) * rstd;
}
template <class T, class A>
RNNK_HOST_DEVICE RNNK_INLINE T layer_norm_bwd(T dvhat, T vhat, A rstd, A m1, A m2) {
  return rstd * (dvhat - m1 - vhat * m2);
}

// The layer-norm LSTM's step around lstm_cell_fwd's gates: pre-activations g_* (the normalised
// input and recurrent products plus the bias) give i, f, u, o and c_t = f ⊙ c_{t-1} + i ⊙ u as
// there; then, once the row's c_t is complete and normalised, ĉ, y = γ_c ⊙ ĉ + β_c and
//   h_t = o ⊙ tanh(y)                                  (lstm_ln_hidden_fwd)
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void lstm_ln_gates_fwd(T gi, T gf, T gg, T go, T c_prev, T& i, T& f,
                                                   T& u, T& o, T& c) {
  i = M::sigmoid(gi);
  f = M::sigmoid(gf);
  u = M::tanh(gg);
  o = M::sigmoid(go);
  c = f * c_prev + i * u;
}
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE T lstm_ln_hidden_fwd(T o, T y) {
  return o * M::tanh(y);
}

// Its backward in the same two halves. First, from dh = ∂L/∂h_t:
//   d g_o = dh ⊙ tanh(y) ⊙ o(1-o)      dy = dh ⊙ o ⊙ (1 - tanh²y)
// (the kernel then takes dy through the norm of c: dc_t = dc + layer_norm_bwd(γ_c ⊙ dy, ...));
// then, from dc_t, the gates as lstm_cell_bwd's:
//   d g_i = dc_t ⊙ u ⊙ i(1-i)   d g_f = dc_t ⊙ c_{t-1} ⊙ f(1-f)   d g_g = dc_t ⊙ i ⊙ (1-u²)
//   dc_{t-1} = dc_t ⊙ f
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void lstm_ln_hidden_bwd(T dh, T o, T y, T& dgo, T& dy) {
  const T ty = M::tanh(y);
  dgo = dh * ty * o * (1 - o);
  dy = dh * o * (1 - ty * ty);
}
template <class T>
RNNK_HOST_DEVICE RNNK_INLINE void lstm_ln_gates_bwd(T dct, T i, T f, T u, T c_prev, T& dgi,
                                                    T& dgf, T& dgg, T& dc_prev) {
  dgi = dct * u * i * (1 - i);
  dgf = dct * c_prev * f * (1 - f);
  dgg = dct * i * (1 - u * u);
  dc_prev = dct * f;
}

// -------------------------------------------------------------------------------- sLSTM
// sLSTM (Beck et al. 2024, xLSTM; rnnkernels/slstm.py's `step`, the reference, differentiated
// by autograd). Pre-activations gi, gf, gz, go (gate order i, f, z, o); states c, n, m:
//   a   = m_{t-1} + log σ(gf)
//   m_t = gi  where n_{t-1} == 0,  else max(gi, a)          (NaN propagates, as torch.maximum)
//   i   = exp(min(gi - m_t, 0))    f = exp(min(a - m_t, 0))
//   c_t = f ⊙ c_{t-1} + i ⊙ tanh(gz)   n_t = f ⊙ n_{t-1} + i   h_t = σ(go) ⊙ c_t / n_t
// Works on scalars and on GCC vectors alike: comparisons give masks, `mask ? x : y` selects and
// T{} is a zero of either kind. M supplies sigmoid, tanh, exp and log_sigmoid.
template <class T>
RNNK_HOST_DEVICE RNNK_INLINE T slstm_max(T x, T y) {  // torch.maximum: NaN in either → NaN
  const T r = x > y ? x : y;
  return x != x ? x : r;
}
template <class T>
RNNK_HOST_DEVICE RNNK_INLINE T slstm_min0(T x) {  // clamp(max=0): NaN stays NaN
  return x > 0 ? T{} : x;
}
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void slstm_cell_fwd(T gi, T gf, T gz, T go, T c_prev, T n_prev,
                                                T m_prev, T& c, T& n, T& m, T& h) {
  const T a = m_prev + M::log_sigmoid(gf);
  m = n_prev == 0 ? gi : slstm_max(gi, a);
  const T i = M::exp(slstm_min0(gi - m)), f = M::exp(slstm_min0(a - m));
  c = f * c_prev + i * M::tanh(gz);
  n = f * n_prev + i;
  h = M::sigmoid(go) * c / n;
}

// Its backward: the chain rule of the forward above with torch's rules where they choose —
// torch.where gives the unselected branch zero, torch.maximum splits the gradient half/half at
// a tie (and gives it whole to both sides when either is NaN), clamp(max=0) passes it where
// its input is ≤ 0 (at exactly 0 too). In: dh, dc, dn, dm = ∂L/∂ of h_t, c_t, n_t, m_t (the
// carries plus this step's output gradient in dh), the pre-activations, the previous states
// and c_t, n_t, m_t as the forward saved them. With so = σ(go), tz = tanh(gz), i, f, a as above:
//   dn_t = dn - dh ⊙ so ⊙ c_t / n_t²       dc_t = dc + dh ⊙ so / n_t
//   d go = dh ⊙ c_t / n_t ⊙ so(1-so)       d gz = dc_t ⊙ i ⊙ (1 - tz²)
//   d(gi - m_t) = [gi - m_t ≤ 0] ⊙ (dc_t ⊙ tz + dn_t) ⊙ i
//   d(a - m_t)  = [a - m_t ≤ 0]  ⊙ (dc_t ⊙ c_{t-1} + dn_t ⊙ n_{t-1}) ⊙ f
//   dm_t' = dm - d(gi - m_t) - d(a - m_t)   (m_t's total gradient)
//   where n_{t-1} == 0:  d gi = d(gi - m_t) + dm_t',  da = d(a - m_t)
//   elsewhere, g = dm_t' (halved where gi == a):
//                        d gi = d(gi - m_t) + [¬(gi < a)] g,  da = d(a - m_t) + [¬(gi > a)] g
//   d gf = da ⊙ σ(-gf)  (log σ' = 1 - σ)   dc_{t-1} = dc_t ⊙ f   dn_{t-1} = dn_t ⊙ f
//   dm_{t-1} = da
// ∂L/∂h_{t-1} is [d gi, d gf, d gz, d go]·W_hh only (no direct path).
template <class M, class T>
RNNK_HOST_DEVICE RNNK_INLINE void slstm_cell_bwd(T dh, T dc, T dn, T dm, T gi, T gf, T gz, T go,
                                                 T c_prev, T n_prev, T m_prev, T c, T n, T m,
                                                 T& dgi, T& dgf, T& dgz, T& dgo, T& dc_prev,
                                                 T& dn_prev, T& dm_prev) {
  const T a = m_prev + M::log_sigmoid(gf);
  const T di_arg = gi - m, df_arg = a - m;
  const T i = M::exp(slstm_min0(di_arg)), f = M::exp(slstm_min0(df_arg));
  const T tz = M::tanh(gz), so = M::sigmoid(go);
  const T dq = dh / n;  // h = (so ⊙ c) / n
  const T dnt = dn - dq * (so * c) / n;
  const T dct = dc + dq * so;
  dgo = dq * c * so * (1 - so);
  dgz = dct * i * (1 - tz * tz);
  const T dei = di_arg <= 0 ? (dct * tz + dnt) * i : T{};
  const T def = df_arg <= 0 ? (dct * c_prev + dnt * n_prev) * f : T{};
  const T dmt = dm - dei - def;
  const T g = gi == a ? dmt / 2 : dmt;
  const T first = n_prev == 0 ? dmt : T{};
  const T rest = n_prev == 0 ? T{} : g;
  dgi = dei + first + (gi < a ? T{} : rest);
  const T da = def + (gi > a ? T{} : rest);
  dgf = da * M::sigmoid(-gf);
  dc_prev = dct * f;
  dn_prev = dnt * f;
  dm_prev = da;
}

}  // namespace rnnk
