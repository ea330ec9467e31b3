// csrc/cuda/persistent_kernels.cu — the persistent small-H path of the CUDA scans (scan_cuda.h):
// the whole sequence in one launch, W_hh resident in shared memory.
//
// Block = `rows` sequences × all H hidden units, one thread per unit j. Per step, forward:
//   pre_q = xp_t[b, q·H + j] + Σ_k W_hh[q·H + j, k]·h_{t-1}[b, k]   (q < G, from shared memory)
//   cell update of unit j (cell_math.h, fp32), h_t[b, j] → shared double buffer, out, workspaces
// then __syncthreads(). Backward, per step:
//   phase A: thread j turns ∂L/∂h_t[b, j] (+ ∂L/∂c_t) into d gates (shared) and dxp
//   phase B: thread k adds Σ_g dgates[b, g]·W_hh[g, k] to its carry ∂L/∂h_{t-1}[b, k]
// with a barrier after each phase. The shared W_hh rows are padded to a stride whose 32-bit word
// count is odd, so both the row reads (threads over j, forward) and the column reads (threads over
// k, backward) are free of bank conflicts. Sequences are independent: no grid-wide sync.
#include "cuda_common.cuh"
#include "scan_cuda.h"

namespace rnnk {
namespace cuda {
namespace {

using M = ExactMath;
constexpr int kMaxRows = 4;  // sequences per block (kept in registers per thread)

// Row stride (elements) of the shared W_hh: ≥ H, with an odd number of 32-bit words per row.
__host__ __device__ inline int padded_ld(int H, int elem_bytes) {
  if (elem_bytes == 4) return H | 1;
  int n = H;
  while (n % 4 != 2) ++n;  // 2-byte elements: n ≡ 2 (mod 4) → n/2 words, odd
  return n;
}
__host__ __device__ inline size_t align16(size_t n) { return (n + 15) & ~size_t(15); }

template <class S>
__device__ void load_weights(S* Ws, const S* W, int GH, int H, int ldw) {
  const int64_t n = int64_t(GH) * H;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const int64_t g = i / H, k = i - g * H;
    Ws[g * ldw + k] = W[i];
  }
}

template <Cell C, class S>
__global__ void __launch_bounds__(1024) forward_persistent_kernel(ScanArgs a, const S* W,
                                                                   int rows) {
  constexpr int G = CellG<C>::G;
  extern __shared__ __align__(16) unsigned char smem[];
  const int H = int(a.H), GH = G * H, ldw = padded_ld(H, int(sizeof(S)));
  S* Ws = reinterpret_cast<S*>(smem);
  float* hs = reinterpret_cast<float*>(smem + align16(size_t(GH) * ldw * sizeof(S)));
  const int64_t B = a.sched.B, T = a.sched.T;
  const int64_t b0 = int64_t(blockIdx.x) * rows;
  const int j = threadIdx.x;
  const bool lane = j < H;
  const S* xp = static_cast<const S*>(a.xp);
  S* out = static_cast<S*>(a.out);
  float* gates = static_cast<float*>(a.gates);
  float* aux = static_cast<float*>(a.aux);
  const float bhn = (C == Cell::kGRU && a.b_hn && lane) ? static_cast<const float*>(a.b_hn)[j]
                                                         : 0.0f;

  load_weights(Ws, W, GH, H, ldw);
  float creg[kMaxRows];
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    creg[r] = 0.0f;
    const int64_t b = b0 + r;
    if (r < rows && b < B && lane) {
      hs[(rows + r) * H + j] = ld(static_cast<const S*>(a.h0) + b * H + j);
      if constexpr (C == Cell::kLSTM) creg[r] = ld(static_cast<const S*>(a.c0) + b * H + j);
    }
  }
  __syncthreads();

  for (int64_t s = 0; s < T; ++s) {
    const float* cur = hs + ((s + 1) & 1) * rows * H;
    float* nxt = hs + (s & 1) * rows * H;
    if (lane) {
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        const int64_t b = b0 + r;
        if (r >= rows || b >= B) break;
        const int64_t t = a.sched.time(s, b);
        if (t < 0) {
          nxt[r * H + j] = cur[r * H + j];
          st(out + (s * B + b) * H + j, 0.0f);
          continue;
        }
        const int64_t row = t * B + b;
        const S* x = xp + row * GH + j;
        float xq[G];
#pragma unroll
        for (int q = 0; q < G; ++q) xq[q] = ld(x + q * H);  // issued before the dot products
        float acc[G];
#pragma unroll
        for (int q = 0; q < G; ++q) acc[q] = 0.0f;
        const float* hr = cur + r * H;
        const S* wj = Ws + j * ldw;
        for (int k = 0; k < H; ++k) {
          const float hk = hr[k];
#pragma unroll
          for (int q = 0; q < G; ++q) acc[q] += ld(wj + (q * H) * ldw + k) * hk;
        }
        if constexpr (C == Cell::kLSTM) {
          float i, f, u, o, cn, hn;
          lstm_cell_fwd<M>(xq[0] + acc[0], xq[1] + acc[1], xq[2] + acc[2], xq[3] + acc[3],
                          creg[r], i, f, u, o, cn, hn);
          creg[r] = cn;
          nxt[r * H + j] = hn;
          st(out + row * H + j, hn);
          if (gates) {
            float* g = gates + row * GH + j;
            g[0] = i;
            g[H] = f;
            g[2 * H] = u;
            g[3 * H] = o;
          }
          if (aux) aux[row * H + j] = cn;
        } else if constexpr (C == Cell::kGRU) {
          const float hn_lin = acc[G - 1] + bhn;
          float rr, z, n, hn;
          gru_cell_fwd<M>(xq[0], xq[1 % G], xq[G - 1], acc[0], acc[1 % G], hn_lin,
                          cur[r * H + j], rr, z, n, hn);
          nxt[r * H + j] = hn;
          st(out + row * H + j, hn);
          if (gates) {
            float* g = gates + row * GH + j;
            g[0] = rr;
            g[H] = z;
            g[2 * H] = n;
          }
          if (aux) aux[row * H + j] = hn_lin;
        } else {
          const float hn = rnn_cell_fwd<M>(xq[0] + acc[0], C == Cell::kRNNReLU);
          nxt[r * H + j] = hn;
          st(out + row * H + j, hn);
        }
      }
    }
    __syncthreads();
  }

  const float* last = hs + ((T - 1) & 1) * rows * H;
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    const int64_t b = b0 + r;
    if (r < rows && b < B && lane) {
      st(static_cast<S*>(a.h_n) + b * H + j, last[r * H + j]);
      if constexpr (C == Cell::kLSTM) st(static_cast<S*>(a.c_n) + b * H + j, creg[r]);
    }
  }
}

template <Cell C, class S>
__global__ void __launch_bounds__(1024) backward_persistent_kernel(ScanArgs a, const S* W,
                                                                    int rows) {
  constexpr int G = CellG<C>::G;
  extern __shared__ __align__(16) unsigned char smem[];
  const int H = int(a.H), GH = G * H, ldw = padded_ld(H, int(sizeof(S)));
  S* Ws = reinterpret_cast<S*>(smem);
  float* dgs = reinterpret_cast<float*>(smem + align16(size_t(GH) * ldw * sizeof(S)));
  const int64_t B = a.sched.B, T = a.sched.T;
  const int64_t b0 = int64_t(blockIdx.x) * rows;
  const int j = threadIdx.x;
  const bool lane = j < H;
  const S* gout = static_cast<const S*>(a.grad_out);
  const float* gates = static_cast<const float*>(a.gates);
  const float* aux = static_cast<const float*>(a.aux);
  S* dxp = static_cast<S*>(a.dxp);

  load_weights(Ws, W, GH, H, ldw);
  float dcar[kMaxRows], dcell[kMaxRows];
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    dcar[r] = dcell[r] = 0.0f;
    const int64_t b = b0 + r;
    if (r < rows && b < B && lane) {
      dcar[r] = ld(static_cast<const S*>(a.grad_hn) + b * H + j);
      if constexpr (C == Cell::kLSTM) dcell[r] = ld(static_cast<const S*>(a.grad_cn) + b * H + j);
    }
  }
  __syncthreads();

  for (int64_t s = T - 1; s >= 0; --s) {
    // Phase A: d gates of unit j.
    if (lane) {
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        const int64_t b = b0 + r;
        if (r >= rows || b >= B) break;
        const int64_t t = a.sched.time(s, b);
        if (t < 0) {
#pragma unroll
          for (int q = 0; q < G; ++q) st(dxp + (s * B + b) * GH + q * H + j, 0.0f);
          continue;
        }
        const int64_t row = t * B + b;
        const int64_t tprev = s > 0 ? a.sched.time(s - 1, b) : -1;
        const float dh = dcar[r] + ld(gout + row * H + j);
        const float* gt = gates + row * GH + j;
        float* dg = dgs + r * GH + j;
        S* dx = dxp + row * GH + j;
        if constexpr (C == Cell::kLSTM) {
          const float c_prev = tprev >= 0 ? aux[(tprev * B + b) * H + j]
                                          : ld(static_cast<const S*>(a.c0) + b * H + j);
          float di, df, du, dout, dcp;
          lstm_cell_bwd<M>(dh, dcell[r], gt[0], gt[H], gt[2 * H], gt[3 * H], aux[row * H + j],
                           c_prev, di, df, du, dout, dcp);
          dcell[r] = dcp;
          dcar[r] = 0.0f;
          dg[0] = di;
          dg[H] = df;
          dg[2 * H] = du;
          dg[3 * H] = dout;
          st(dx, di);
          st(dx + H, df);
          st(dx + 2 * H, du);
          st(dx + 3 * H, dout);
        } else if constexpr (C == Cell::kGRU) {
          const S* hp = tprev >= 0 ? static_cast<const S*>(a.out) + (tprev * B + b) * H + j
                                   : static_cast<const S*>(a.h0) + b * H + j;
          float dr, dz, dn, dhn, ddir;
          gru_cell_bwd<M>(dh, gt[0], gt[H], gt[2 * H], aux[row * H + j], ld(hp), dr, dz, dn, dhn,
                          ddir);
          dcar[r] = ddir;
          dg[0] = dr;
          dg[H] = dz;
          dg[2 * H] = dhn;
          st(dx, dr);
          st(dx + H, dz);
          st(dx + 2 * H, dn);
        } else {
          const float hv = ld(static_cast<const S*>(a.out) + row * H + j);
          const float dp = rnn_cell_bwd<M>(dh, hv, C == Cell::kRNNReLU);
          dcar[r] = 0.0f;
          dg[0] = dp;
          st(dx, dp);
        }
      }
    }
    __syncthreads();
    // Phase B: column k = j of d gates · W_hh.
    if (lane) {
#pragma unroll
      for (int r = 0; r < kMaxRows; ++r) {
        const int64_t b = b0 + r;
        if (r >= rows || b >= B) break;
        if (a.sched.time(s, b) < 0) continue;
        const float* dg = dgs + r * GH;
        float sum = 0.0f;
        for (int g = 0; g < GH; ++g) sum += dg[g] * ld(Ws + g * ldw + j);
        dcar[r] += sum;
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    const int64_t b = b0 + r;
    if (r < rows && b < B && lane) {
      st(static_cast<S*>(a.dh0) + b * H + j, dcar[r]);
      if constexpr (C == Cell::kLSTM) st(static_cast<S*>(a.dc0) + b * H + j, dcell[r]);
    }
  }
}

}  // namespace

PersistentPlan plan_persistent(const ScanArgs& a, bool backward, int device) {
  PersistentPlan p;
  if (a.w_hr || a.P != a.H) {
    p.why = "the persistent kernel has no projection";
    return p;
  }
  if (a.H < 1 || a.H > 1024) {
    p.why = "the persistent kernel needs 1 <= hidden size <= 1024 (one thread per unit)";
    return p;
  }
  int elem = 0;
  switch (a.dtype) {
    case DType::kFloat32: elem = 4; break;
    case DType::kFloat16:
    case DType::kBFloat16: elem = 2; break;
    default: p.why = "the persistent kernel supports float32, float16 and bfloat16"; return p;
  }
  int sms = 0, max_smem = 0;
  if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) !=
          cudaSuccess) {
    cudaGetLastError();  // clear the error: this is a query, not a failed kernel
    p.why = "cannot query the device";
    return p;
  }
  const int G = gates_of(a.cell), H = int(a.H), GH = G * H;
  const int64_t B = a.sched.B;
  int rows = int((B + sms - 1) / (sms > 0 ? sms : 1));
  rows = rows < 1 ? 1 : (rows > kMaxRows ? kMaxRows : rows);
  const size_t wbytes = align16(size_t(GH) * padded_ld(H, elem) * elem);
  const size_t buf = backward ? size_t(rows) * GH * 4 : size_t(2) * rows * H * 4;
  p.smem = wbytes + buf;
  if (p.smem > size_t(max_smem)) {
    p.why = "W_hh does not fit in shared memory";
    return p;
  }
  p.rows = rows;
  p.threads = (H + 31) / 32 * 32;
  p.blocks = unsigned((B + rows - 1) / rows);
  p.ok = true;
  return p;
}

Status forward_persistent(const ScanArgs& a, const void* w_hh_dt, const PersistentPlan& plan,
                          cudaStream_t stream) {
  if (!plan.ok) return Status::error(kErrorUnsupported, plan.why);
  return dispatch(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    constexpr Cell C = decltype(cell)::value;
    auto* kernel = &forward_persistent_kernel<C, S>;
    if (plan.blocks == 0) return Status::success();
    if (plan.smem > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem));
      if (e != cudaSuccess) return Status::error(int(e), "rnnkernels forward_persistent_kernel");
    }
    kernel<<<plan.blocks, plan.threads, plan.smem, stream>>>(a, static_cast<const S*>(w_hh_dt),
                                                               plan.rows);
    RNNK_CUDA_CHECK("rnnkernels forward_persistent_kernel");
    return Status::success();
  });
}

Status backward_persistent(const ScanArgs& a, const void* w_hh_dt, const PersistentPlan& plan,
                           cudaStream_t stream) {
  if (!plan.ok) return Status::error(kErrorUnsupported, plan.why);
  return dispatch(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    constexpr Cell C = decltype(cell)::value;
    auto* kernel = &backward_persistent_kernel<C, S>;
    if (plan.blocks == 0) return Status::success();
    if (plan.smem > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem));
      if (e != cudaSuccess) return Status::error(int(e), "rnnkernels backward_persistent_kernel");
    }
    kernel<<<plan.blocks, plan.threads, plan.smem, stream>>>(a, static_cast<const S*>(w_hh_dt),
                                                               plan.rows);
    RNNK_CUDA_CHECK("rnnkernels backward_persistent_kernel");
    return Status::success();
  });
}

}  // namespace cuda
}  // namespace rnnk
