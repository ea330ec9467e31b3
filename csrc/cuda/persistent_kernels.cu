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

__device__ inline unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char smem[];
  return smem;
}

// A block's share of either kernel: `rows` sequences from b0 on, thread j = hidden unit j (the
// lanes past H only help to load W_hh), W_hh in shared memory (row stride ldw), followed by the
// kernel's fp32 buffer (forward: h, double-buffered; backward: d gates).
template <class S>
struct Block {
  int H, GH, ldw, rows, j;
  int64_t B, T, b0;
  S* Ws;
  float* buf;

  // Also loads W_hh into shared memory; the kernel synchronises before reading it.
  __device__ Block(const ScanArgs& a, const S* W, int G, int rows_,
                   unsigned char* smem = dynamic_smem())
      : H(int(a.H)), GH(G * int(a.H)), ldw(padded_ld(int(a.H), int(sizeof(S)))), rows(rows_),
        j(int(threadIdx.x)), B(a.sched.B), T(a.sched.T), b0(int64_t(blockIdx.x) * rows_),
        Ws(reinterpret_cast<S*>(smem)),
        buf(reinterpret_cast<float*>(smem + align16(size_t(GH) * ldw * sizeof(S)))) {
    const int64_t n = int64_t(GH) * H;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const int64_t g = i / H, k = i - g * H;
      Ws[g * ldw + k] = W[i];
    }
  }
  __device__ bool lane() const { return j < H; }
  // Whether row r of the block is a sequence of the batch.
  __device__ bool has(int r) const { return r < rows && b0 + r < B; }
};

template <Cell C, class S>
__global__ void __launch_bounds__(1024) forward_persistent_kernel(ScanArgs a, const S* W,
                                                                   int rows) {
  constexpr int G = gates_of(C);
  const Block<S> blk(a, W, G, rows);
  const int H = blk.H, j = blk.j;
  const int64_t B = blk.B;
  float* hs = blk.buf;
  S* out = static_cast<S*>(a.out);

  float creg[kMaxRows];  // the cell state c of unit j, per row
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    creg[r] = 0.0f;
    const int64_t b = blk.b0 + r;
    if (blk.has(r) && blk.lane()) {
      hs[(rows + r) * H + j] = ld(static_cast<const S*>(a.h0) + b * H + j);
      if constexpr (C == Cell::kLSTM) creg[r] = ld(static_cast<const S*>(a.c0) + b * H + j);
    }
  }
  __syncthreads();

  for (int64_t s = 0; s < blk.T; ++s) {
    const float* cur = hs + ((s + 1) & 1) * rows * H;
    float* nxt = hs + (s & 1) * rows * H;
    if (blk.lane()) {
#pragma unroll
      for (int r = 0; r < kMaxRows && blk.has(r); ++r) {
        const int64_t b = blk.b0 + r, t = a.sched.time(s, b);
        if (t < 0) {
          nxt[r * H + j] = cur[r * H + j];
          st(out + (s * B + b) * H + j, 0.0f);
          continue;
        }
        const S* x = static_cast<const S*>(a.xp) + (t * B + b) * blk.GH + j;
        float xq[G];
#pragma unroll
        for (int q = 0; q < G; ++q) xq[q] = ld(x + q * H);  // issued before the dot products
        float acc[G];
#pragma unroll
        for (int q = 0; q < G; ++q) acc[q] = 0.0f;
        const float* hr = cur + r * H;
        const S* wj = blk.Ws + j * blk.ldw;
        for (int k = 0; k < H; ++k) {
          const float hk = hr[k];
#pragma unroll
          for (int q = 0; q < G; ++q) acc[q] += ld(wj + (q * H) * blk.ldw + k) * hk;
        }
        forward_unit<C, M>(ScalarIO{}, forward_row<S, float>(a, t, b), H, j, xq, 1, acc, 1,
                           cur + r * H + j, &creg[r], nxt + r * H + j);
      }
    }
    __syncthreads();
  }

  const float* last = hs + ((blk.T - 1) & 1) * rows * H;
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    const int64_t b = blk.b0 + r;
    if (blk.has(r) && blk.lane()) {
      st(static_cast<S*>(a.h_n) + b * H + j, last[r * H + j]);
      if constexpr (C == Cell::kLSTM) st(static_cast<S*>(a.c_n) + b * H + j, creg[r]);
    }
  }
}

template <Cell C, class S>
__global__ void __launch_bounds__(1024) backward_persistent_kernel(ScanArgs a, const S* W,
                                                                    int rows) {
  constexpr int G = gates_of(C);
  const Block<S> blk(a, W, G, rows);
  const int H = blk.H, GH = blk.GH, j = blk.j;
  float* dgs = blk.buf;

  float dcar[kMaxRows], dcell[kMaxRows];  // the carries ∂L/∂h and ∂L/∂c of unit j, per row
#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    dcar[r] = dcell[r] = 0.0f;
    const int64_t b = blk.b0 + r;
    if (blk.has(r) && blk.lane()) {
      dcar[r] = ld(static_cast<const S*>(a.grad_hn) + b * H + j);
      if constexpr (C == Cell::kLSTM) dcell[r] = ld(static_cast<const S*>(a.grad_cn) + b * H + j);
    }
  }
  __syncthreads();

  for (int64_t s = blk.T - 1; s >= 0; --s) {
    // Phase A: d gates of unit j.
    if (blk.lane()) {
#pragma unroll
      for (int r = 0; r < kMaxRows && blk.has(r); ++r) {
        const int64_t b = blk.b0 + r, t = a.sched.time(s, b);
        if (t < 0) {
          S* dx = static_cast<S*>(a.dxp) + (s * blk.B + b) * GH + j;
          backward_padding<C>(ScalarIO{}, dx, static_cast<float*>(nullptr), H);
          continue;
        }
        const int64_t tprev = s > 0 ? a.sched.time(s - 1, b) : -1;
        backward_unit<C, M>(ScalarIO{}, backward_row<S, float>(a, t, tprev, b), H, j, &dcar[r],
                            &dcell[r], dgs + r * GH + j);
      }
    }
    __syncthreads();
    // Phase B: column k = j of d gates · W_hh.
    if (blk.lane()) {
#pragma unroll
      for (int r = 0; r < kMaxRows && blk.has(r); ++r) {
        if (a.sched.time(s, blk.b0 + r) < 0) continue;
        const float* dg = dgs + r * GH;
        float sum = 0.0f;
        for (int g = 0; g < GH; ++g) sum += dg[g] * ld(blk.Ws + g * blk.ldw + j);
        dcar[r] += sum;
      }
    }
    __syncthreads();
  }

#pragma unroll
  for (int r = 0; r < kMaxRows; ++r) {
    const int64_t b = blk.b0 + r;
    if (blk.has(r) && blk.lane()) {
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
  const size_t buf = (backward ? size_t(rows) * GH : size_t(2) * rows * H) * sizeof(float);
  p.smem = wbytes + buf;
  if (p.smem > size_t(max_smem)) {
    p.why = "W_hh does not fit in shared memory";
    return p;
  }
  p.backward = backward;
  p.rows = rows;
  p.threads = (H + 31) / 32 * 32;
  p.blocks = unsigned((B + rows - 1) / rows);
  p.ok = true;
  return p;
}

Status run_persistent(const ScanArgs& a, const void* w_hh_dt, const PersistentPlan& plan,
                      cudaStream_t stream) {
  if (!plan.ok) return Status::error(kErrorUnsupported, plan.why);
  const char* name = plan.backward ? "rnnkernels backward_persistent_kernel"
                                   : "rnnkernels forward_persistent_kernel";
  return by_dtype(a, [&](auto cell, auto* s) {
    using S = std::remove_pointer_t<decltype(s)>;
    constexpr Cell C = decltype(cell)::value;
    auto* kernel =
        plan.backward ? &backward_persistent_kernel<C, S> : &forward_persistent_kernel<C, S>;
    if (plan.blocks == 0) return Status::success();
    if (plan.smem > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(
          kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(plan.smem));
      if (e != cudaSuccess) return Status::error(int(e), name);
    }
    kernel<<<plan.blocks, plan.threads, plan.smem, stream>>>(a, static_cast<const S*>(w_hh_dt),
                                                               plan.rows);
    RNNK_CUDA_CHECK(name);
    return Status::success();
  });
}

}  // namespace cuda
}  // namespace rnnk
