// csrc/cpu/micro_kernels.h — the register-blocked GEMM tiles of the fused CPU path (part of the
// CPU scans, see scan_common.h): panel_tile for the forward's h_{t-1}·W_hhᵀ on a packed W_hh,
// axpy_cols for the backward's d gates·W_hh on the unpacked one. Both are fma_tile.
#pragma once

#include "scan_common.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {
namespace {

// D[r][d0 + v·L + l] (+)= Σ_{k<K} x[r][k] · W[k·ldw + v·L + l] for R rows and NV vectors of
// columns, accumulating onto D's values when kAccumulate, else overwriting them: each x[r][k]
// broadcast against the vectors of W's row k, so there are no horizontal sums, and the R·NV sums
// stay in registers for the whole K.
// Loop order: kWeightsInRegs keeps row k's NV vectors in registers and broadcasts one x at a time
// (R·NV accumulators + NV + 1 registers: for R > NV), otherwise the R broadcasts stay and the W
// vectors stream (R·NV + R + 1). kSplitK (R = 1): NV accumulator chains cannot hide the FMA
// latency, so a second set takes the odd k; it changes the order of the sum, so only the
// forward uses it.
template <int R, int NV, bool kAccumulate, bool kSplitK, bool kWeightsInRegs, class A>
RNNK_INLINE void fma_tile(const A* W, int64_t ldw, const A* const* x, int64_t K, A* const* D,
                          int64_t d0) {
  using V = typename Vec<A>::type;
  constexpr int L = Vec<A>::L;
  V acc[R][NV];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[r][v] = kAccumulate ? vload(D[r] + d0 + v * L) : vzero<V>();
  const A* wk = W;
  int64_t k = 0;
  if constexpr (kSplitK) {
    static_assert(R == 1, "the split sum is for one row");
    V acc2[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc2[v] = vzero<V>();
    for (; k + 2 <= K; k += 2, wk += 2 * ldw) {
      const V x0 = vsplat(x[0][k]), x1 = vsplat(x[0][k + 1]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        acc[0][v] += x0 * vload(wk + v * L);
        acc2[v] += x1 * vload(wk + ldw + v * L);
      }
    }
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[0][v] += acc2[v];
  }
  if constexpr (kWeightsInRegs) {
    for (; k < K; ++k, wk += ldw) {
      V wv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) wv[v] = vload(wk + v * L);
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        const V xb = vsplat(x[r][k]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[r][v] += xb * wv[v];
      }
    }
  } else {
    for (; k < K; ++k, wk += ldw) {
      V xb[R];
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) xb[r] = vsplat(x[r][k]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        const V wv = vload(wk + v * L);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[r][v] += xb[r] * wv;
      }
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) vstore(D[r] + d0 + v * L, acc[r][v]);
}

// ------------------------------------------------------------------ forward: packed panels
// The fused forward works on W_hh packed into panels of U hidden units: for each k, the G gates ×
// U units of the panel are NV contiguous vectors, so a micro-tile of MR batch rows × one panel
// is an fma_tile whose MR·NV accumulators hold, at the end, exactly the pre-activations the cell
// update needs.
template <Cell C, int L>
struct Panel {
  static constexpr bool kElman = C == Cell::kRNNTanh || C == Cell::kRNNReLU;
  static constexpr int G = gates_of(C);
  static constexpr int lanes = L;
  static constexpr int U = kElman ? 2 * L : L;  // hidden units per panel
  static constexpr int UV = U / L;              // vectors of units per panel
  static constexpr int NV = G * UV;             // vectors per packed row (one k)
  // Batch rows per micro-tile: MR·NV accumulators + NV weight vectors + a broadcast within the
  // registers: ≤ 12 accumulators of 16 registers (AVX2), ≤ 24 of 32 (AVX-512). The GRU's 4×3 and
  // the RNN's 6×2 fit only with the weights in registers (fma_tile's loop orders); they beat 3×3
  // and 5×2, see bench/results/cpu-20261126/README.md. With 32 registers the same shapes double.
  static constexpr int MR = (C == Cell::kLSTM ? 3 : (C == Cell::kGRU ? 4 : 6)) * (kVecRegs / 16);
};

// Packs panels [p0, p1): Wp[p][k][(q·UV + u)·L + l] = W_hh[q·H + p·U + u·L + l][k], zero past H.
template <Cell C, class A>
void pack_panels(const A* W, int64_t H, int64_t P, int64_t p0, int64_t p1, A* Wp) {
  using PN = Panel<C, Vec<A>::L>;
  constexpr int G = PN::G;
  constexpr int L = Vec<A>::L;
  constexpr int64_t width = PN::NV * L;
  for (int64_t p = p0; p < p1; ++p) {
    A* dst = Wp + p * P * width;
    for (int q = 0; q < G; ++q)
      for (int u = 0; u < PN::UV; ++u)
        for (int l = 0; l < L; ++l) {
          const int64_t unit = p * PN::U + u * L + l;
          const int col = (q * PN::UV + u) * L + l;
          if (unit < H) {
            const A* src = W + (q * H + unit) * P;
            for (int64_t k = 0; k < P; ++k) dst[k * width + col] = src[k];
          } else {
            for (int64_t k = 0; k < P; ++k) dst[k * width + col] = A(0);
          }
        }
  }
}

// out[r][v] = Σ_k x[r][k] · Wp[k][v] for MR state rows and the NV vectors of one panel.
template <int MR, int NV, class A>
RNNK_INLINE void panel_tile(const A* Wp, const A* const* x, int64_t K, A* out) {
  constexpr int L = Vec<A>::L;
  A* rows[MR];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) rows[r] = out + r * NV * L;
  fma_tile<MR, NV, false, MR == 1, (MR > NV), A>(Wp, NV * L, x, K, rows, 0);
}

template <int NV, int MRmax, class A>
RNNK_INLINE void panel_tile_n(int mr, const A* Wp, const A* const* x, int64_t K, A* out) {
  if constexpr (MRmax > 1) {
    if (mr < MRmax) return panel_tile_n<NV, MRmax - 1, A>(mr, Wp, x, K, out);
  }
  panel_tile<MRmax, NV, A>(Wp, x, K, out);
}

// ---------------------------------------------------------------- backward: column tiles
// D[b][k0..k0+KV·L) += Σ_g dg[b][g]·W[g][k0..]: NB state rows × KV vectors of columns, with
// every W row segment loaded once and used NB times.
template <int KV, int NB, class A>
RNNK_INLINE void axpy_tile(const A* W, int64_t ldw, int64_t GH, const A* const* dg, A* const* D,
                           int64_t k0) {
  fma_tile<NB, KV, true, false, false, A>(W + k0, ldw, dg, GH, D, k0);
}

// Column vectors per axpy tile for NB ≤ 4 batch rows: NB·KV accumulators + NB broadcasts + one
// W vector within the registers (16 ymm: wider tiles spill with GCC and run slower; 32 zmm).
template <int NB>
struct AxpyKV {
  static constexpr int value = kVecRegs >= 32 ? (NB <= 2 ? 8 : NB == 3 ? 6 : 5)
                                              : (NB == 1 ? 8 : NB == 2 ? 6 : NB == 3 ? 3 : 2);
};

template <int NB, class A>
RNNK_INLINE void axpy_cols(const A* W, int64_t ldw, int64_t GH, const A* const* dg, A* const* D,
                           int64_t k0, int64_t k1) {
  constexpr int L = Vec<A>::L;
  // The widest tile first, then narrower ones for what is left of the block: few accumulators
  // would leave the FMA latency exposed.
  constexpr int KV = AxpyKV<NB>::value;
  int64_t k = k0;
  for (; k + KV * L <= k1; k += KV * L) axpy_tile<KV, NB, A>(W, ldw, GH, dg, D, k);
  if constexpr (KV > 4)
    for (; k + 4 * L <= k1; k += 4 * L) axpy_tile<4, NB, A>(W, ldw, GH, dg, D, k);
  if constexpr (KV > 2)
    for (; k + 2 * L <= k1; k += 2 * L) axpy_tile<2, NB, A>(W, ldw, GH, dg, D, k);
  for (; k + L <= k1; k += L) axpy_tile<1, NB, A>(W, ldw, GH, dg, D, k);
  for (; k < k1; ++k)  // ragged end of an odd-sized slice
    for (int nb = 0; nb < NB; ++nb) {
      A sum = D[nb][k];
      for (int64_t g = 0; g < GH; ++g) sum += dg[nb][g] * W[g * ldw + k];
      D[nb][k] = sum;
    }
}

template <int NBmax, class A>
RNNK_INLINE void axpy_cols_n(int nb, const A* W, int64_t ldw, int64_t GH, const A* const* dg,
                             A* const* D, int64_t k0, int64_t k1) {
  if constexpr (NBmax > 1) {
    if (nb < NBmax) return axpy_cols_n<NBmax - 1, A>(nb, W, ldw, GH, dg, D, k0, k1);
  }
  axpy_cols<NBmax, A>(W, ldw, GH, dg, D, k0, k1);
}

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
