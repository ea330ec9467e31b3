// csrc/cuda/step_kernels.cu — the step path of the CUDA scans (see scan_cuda.h): fused pointwise
// kernels around one GEMM per step, and the host loops that drive them.
//
// One thread per (sequence b, hidden unit j) does every gate of that unit: reads the G
// pre-activations xp_t[b, q·H + j] + gh[b, q·H + j] (coalesced over j), applies cell_math.h in
// fp32, writes the state in place, the output in the storage dtype and the fp32 workspaces.
// Forward:  gates = xp_t + h_{t-1}·W_hhᵀ → cell update → h_t, c_t  (cell_math.h for the formulas)
// Backward: d gates from ∂L/∂h_t and the saved gates; then ∂L/∂h_{t-1} = d gates·W_hh (GEMM,
//           accumulated onto the direct part the kernel leaves in the carry).
#include "cuda_common.cuh"
#include "scan_cuda.h"

namespace rnnk {
namespace cuda {
namespace {

using M = ExactMath;

template <class D, class S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) st(dst + i, ld(src + i));
}

template <class D, class S>
Status convert(D* dst, const S* src, int64_t n, cudaStream_t stream) {
  if (n == 0) return Status::success();
  convert_kernel<D, S><<<blocks_for(n), kThreads, 0, stream>>>(dst, src, n);
  RNNK_CUDA_CHECK("rnnkernels convert_kernel");
  return Status::success();
}

// ------------------------------------------------------------------------------ forward
template <Cell C, class S>
__global__ void forward_step_kernel(ScanArgs a, StepScratch w, int64_t s) {
  constexpr int G = CellG<C>::G;
  const int64_t H = a.H, P = a.P, B = a.sched.B, GH = G * H;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int64_t b = idx / H, j = idx - b * H;
  const bool proj = a.w_hr != nullptr;
  S* out = static_cast<S*>(a.out);
  const int64_t t = a.sched.time(s, b);
  if (t < 0) {  // frozen state, zero output at the padded position (the projection commits its own)
    if (!proj) st(out + (s * B + b) * P + j, 0.0f);
    return;
  }
  const int64_t row = t * B + b;
  const S* x = static_cast<const S*>(a.xp) + row * GH + j;
  const float* gh = static_cast<const float*>(w.gh) + b * GH + j;
  float* h = static_cast<float*>(w.h);
  float* gates = static_cast<float*>(a.gates);
  float* aux = static_cast<float*>(a.aux);
  if constexpr (C == Cell::kLSTM) {
    float* c = static_cast<float*>(w.c) + b * H + j;
    float i, f, u, o, cn, hn;
    lstm_cell_fwd<M>(ld(x) + gh[0], ld(x + H) + gh[H], ld(x + 2 * H) + gh[2 * H],
                    ld(x + 3 * H) + gh[3 * H], *c, i, f, u, o, cn, hn);
    *c = cn;
    if (proj) {
      static_cast<float*>(w.hh)[b * H + j] = hn;
    } else {
      h[b * P + j] = hn;
      st(out + row * P + j, hn);
    }
    if (gates) {
      float* g = gates + row * GH + j;
      g[0] = i;
      g[H] = f;
      g[2 * H] = u;
      g[3 * H] = o;
    }
    if (aux) aux[row * H + j] = cn;
  } else if constexpr (C == Cell::kGRU) {
    const float* bhn = static_cast<const float*>(a.b_hn);
    const float hn_lin = gh[2 * H] + (bhn ? bhn[j] : 0.0f);
    float r, z, n, hn;
    gru_cell_fwd<M>(ld(x), ld(x + H), ld(x + 2 * H), gh[0], gh[H], hn_lin, h[b * H + j], r, z, n,
                   hn);
    h[b * H + j] = hn;
    st(out + row * H + j, hn);
    if (gates) {
      float* g = gates + row * GH + j;
      g[0] = r;
      g[H] = z;
      g[2 * H] = n;
    }
    if (aux) aux[row * H + j] = hn_lin;
  } else {
    const float hn = rnn_cell_fwd<M>(ld(x) + gh[0], C == Cell::kRNNReLU);
    h[b * H + j] = hn;
    st(out + row * H + j, hn);
  }
}

// LSTM with projection: active rows take hp = hh·W_hrᵀ as state and output.
template <class S>
__global__ void projection_commit_kernel(ScanArgs a, StepScratch w, int64_t s) {
  const int64_t P = a.P, B = a.sched.B;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P, k = idx - b * P;
  S* out = static_cast<S*>(a.out);
  const int64_t t = a.sched.time(s, b);
  if (t < 0) {
    st(out + (s * B + b) * P + k, 0.0f);
    return;
  }
  const float v = static_cast<const float*>(w.hp)[idx];
  static_cast<float*>(w.h)[idx] = v;
  st(out + (t * B + b) * P + k, v);
}

template <Cell C, class S>
Status forward_step_impl(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm,
                         cudaStream_t stream) {
  const int64_t T = a.sched.T, B = a.sched.B, H = a.H, P = a.P;
  Status st = convert(static_cast<float*>(w.h), static_cast<const S*>(a.h0), B * P, stream);
  if (!st.ok()) return st;
  if constexpr (C == Cell::kLSTM) {
    st = convert(static_cast<float*>(w.c), static_cast<const S*>(a.c0), B * H, stream);
    if (!st.ok()) return st;
  }
  for (int64_t s = 0; s < T; ++s) {
    if (!gemm(GemmOp::kGates)) return Status::error(kErrorUnsupported, "gates GEMM failed");
    if (B * H > 0) {
      forward_step_kernel<C, S><<<blocks_for(B * H), kThreads, 0, stream>>>(a, w, s);
      RNNK_CUDA_CHECK("rnnkernels forward_step_kernel");
    }
    if (C == Cell::kLSTM && a.w_hr) {
      if (!gemm(GemmOp::kProject))
        return Status::error(kErrorUnsupported, "projection GEMM failed");
      if (B * P > 0) {
        projection_commit_kernel<S><<<blocks_for(B * P), kThreads, 0, stream>>>(a, w, s);
        RNNK_CUDA_CHECK("rnnkernels projection_commit_kernel");
      }
    }
  }
  st = convert(static_cast<S*>(a.h_n), static_cast<const float*>(w.h), B * P, stream);
  if (!st.ok()) return st;
  if constexpr (C == Cell::kLSTM)
    st = convert(static_cast<S*>(a.c_n), static_cast<const float*>(w.c), B * H, stream);
  return st;
}

// ----------------------------------------------------------------------------- backward
template <Cell C, class S>
__global__ void backward_step_kernel(ScanArgs a, StepScratch w, int64_t s) {
  constexpr int G = CellG<C>::G;
  const int64_t H = a.H, P = a.P, B = a.sched.B, GH = G * H;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * H) return;
  const int64_t b = idx / H, j = idx - b * H;
  const bool proj = a.w_hr != nullptr;
  float* dg = static_cast<float*>(w.gh) + b * GH + j;  // GEMM input row
  S* dxp = static_cast<S*>(a.dxp);
  const int64_t t = a.sched.time(s, b);
  if (t < 0) {  // the carry passes through: no GEMM contribution, zero gradient at the padding
    S* dx = dxp + (s * B + b) * GH + j;
    for (int q = 0; q < G; ++q) {
      dg[q * H] = 0.0f;
      st(dx + q * H, 0.0f);
    }
    return;
  }
  const int64_t row = t * B + b;
  const int64_t tprev = s > 0 ? a.sched.time(s - 1, b) : -1;
  S* dx = dxp + row * GH + j;
  const float* gts = static_cast<const float*>(a.gates) + row * GH + j;
  const float* aux = static_cast<const float*>(a.aux);
  const S* gout = static_cast<const S*>(a.grad_out);
  float* carry = static_cast<float*>(w.h);
  if constexpr (C == Cell::kLSTM) {
    float dh;
    if (proj) {
      dh = static_cast<const float*>(w.hh)[b * H + j];
    } else {
      dh = carry[b * P + j] + ld(gout + row * P + j);
      carry[b * P + j] = 0.0f;  // the GEMM writes the whole ∂L/∂h_{t-1}
    }
    float* dc = static_cast<float*>(w.c) + b * H + j;
    const float c_prev = tprev >= 0 ? aux[(tprev * B + b) * H + j]
                                    : ld(static_cast<const S*>(a.c0) + b * H + j);
    float di, df, du, dout, dcp;
    lstm_cell_bwd<M>(dh, *dc, gts[0], gts[H], gts[2 * H], gts[3 * H], aux[row * H + j], c_prev,
                     di, df, du, dout, dcp);
    *dc = dcp;
    dg[0] = di;
    dg[H] = df;
    dg[2 * H] = du;
    dg[3 * H] = dout;
    st(dx, di);
    st(dx + H, df);
    st(dx + 2 * H, du);
    st(dx + 3 * H, dout);
  } else if constexpr (C == Cell::kGRU) {
    const float dh = carry[b * H + j] + ld(gout + row * H + j);
    const float h_prev = tprev >= 0 ? ld(static_cast<const S*>(a.out) + (tprev * B + b) * H + j)
                                    : ld(static_cast<const S*>(a.h0) + b * H + j);
    float dr, dz, dn, dhn, ddir;
    gru_cell_bwd<M>(dh, gts[0], gts[H], gts[2 * H], aux[row * H + j], h_prev, dr, dz, dn, dhn,
                    ddir);
    carry[b * H + j] = ddir;
    dg[0] = dr;
    dg[H] = dz;
    dg[2 * H] = dhn;
    st(dx, dr);
    st(dx + H, dz);
    st(dx + 2 * H, dn);
  } else {
    const float dh = carry[b * H + j] + ld(gout + row * H + j);
    const float hv = ld(static_cast<const S*>(a.out) + row * H + j);
    const float dp = rnn_cell_bwd<M>(dh, hv, C == Cell::kRNNReLU);
    carry[b * H + j] = 0.0f;
    dg[0] = dp;
    st(dx, dp);
  }
}

// LSTM with projection, before the pointwise kernel: hp = the step's total ∂L/∂h_t (also stored
// in dh_all), and the carry restarts from zero.
template <class S>
__global__ void projection_prep_kernel(ScanArgs a, StepScratch w, int64_t s) {
  const int64_t P = a.P, B = a.sched.B;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * P) return;
  const int64_t b = idx / P, k = idx - b * P;
  float* dh_all = static_cast<float*>(a.dh_all);
  const int64_t t = a.sched.time(s, b);
  if (t < 0) {
    dh_all[(s * B + b) * P + k] = 0.0f;
    return;
  }
  float* carry = static_cast<float*>(w.h);
  const float v = carry[idx] + ld(static_cast<const S*>(a.grad_out) + (t * B + b) * P + k);
  carry[idx] = 0.0f;
  static_cast<float*>(w.hp)[idx] = v;
  dh_all[(t * B + b) * P + k] = v;
}

template <Cell C, class S>
Status backward_step_impl(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm,
                          cudaStream_t stream) {
  const int64_t T = a.sched.T, B = a.sched.B, H = a.H, P = a.P;
  Status st = convert(static_cast<float*>(w.h), static_cast<const S*>(a.grad_hn), B * P, stream);
  if (!st.ok()) return st;
  if constexpr (C == Cell::kLSTM) {
    st = convert(static_cast<float*>(w.c), static_cast<const S*>(a.grad_cn), B * H, stream);
    if (!st.ok()) return st;
  }
  for (int64_t s = T - 1; s >= 0; --s) {
    if (C == Cell::kLSTM && a.w_hr) {
      if (B * P > 0) {
        projection_prep_kernel<S><<<blocks_for(B * P), kThreads, 0, stream>>>(a, w, s);
        RNNK_CUDA_CHECK("rnnkernels projection_prep_kernel");
      }
      if (!gemm(GemmOp::kProjectBack))
        return Status::error(kErrorUnsupported, "projection GEMM failed");
    }
    if (B * H > 0) {
      backward_step_kernel<C, S><<<blocks_for(B * H), kThreads, 0, stream>>>(a, w, s);
      RNNK_CUDA_CHECK("rnnkernels backward_step_kernel");
    }
    if (!gemm(GemmOp::kRecurrent)) return Status::error(kErrorUnsupported, "recurrent GEMM failed");
  }
  st = convert(static_cast<S*>(a.dh0), static_cast<const float*>(w.h), B * P, stream);
  if (!st.ok()) return st;
  if constexpr (C == Cell::kLSTM)
    st = convert(static_cast<S*>(a.dc0), static_cast<const float*>(w.c), B * H, stream);
  return st;
}

}  // namespace

Status forward_step(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm,
                    cudaStream_t stream) {
  return dispatch(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    return forward_step_impl<decltype(cell)::value, S>(a, w, gemm, stream);
  });
}

Status backward_step(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm,
                     cudaStream_t stream) {
  return dispatch(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    return backward_step_impl<decltype(cell)::value, S>(a, w, gemm, stream);
  });
}

}  // namespace cuda
}  // namespace rnnk
