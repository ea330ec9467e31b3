// csrc/cpu/cell_step.h — the pointwise part of ONE step of a cell on the CPU (python/cell_step.cpp
// runs the GEMMs around it, ATen's or at batch 1 rows_dot below, and makes the whole step one
// autograd node).
//
// A step is a scan of length T = 1 whose two GEMMs are done beforehand, so the arguments are a
// ScanArgs (docs/BACKENDS.md, T = 1) plus the hidden side's GEMM result:
//   forward:   xp = x·W_ihᵀ (+ b_ih), gh = h_{t-1}·W_hhᵀ (+ b_hh), both [B, G·H] in the storage
//              dtype (the CPU GEMMs of half types round their output: no float result exists);
//              h0 (GRU), c0 (LSTM) in; out = h_t (an LSTM with projection: the unprojected
//              o ⊙ tanh(c_t)), c_n = c_t out; gates and cs / hn_lin = the saved workspaces
//              [B, G·H] and [B, H] in the accumulation dtype, or null (inference).
//   backward:  grad_out = ∂L/∂h_t (the unprojected hidden's, with a projection), grad_cn =
//              ∂L/∂c_t or null (zero); the saved workspaces and out (the Elman cell's h_t), h0,
//              c0 as in the forward; dxp = the d pre-activations of the input side [B, G·H]
//              (what x, W_ih and b_ih get), dc0 = ∂L/∂c_{t-1} or null; and, GRU only, dgh = the
//              d pre-activations W_hh multiplies (the n block is dn ⊙ r) and dh_direct = dh ⊙ z,
//              the part of ∂L/∂h_{t-1} that does not pass through W_hh. (The other cells' hidden
//              side has the input side's d gates: dxp serves both.)
// The gate math and the loads and stores around it are rnnkernels/cell_io.h's, the same as every
// scan's. Everything is contiguous [B, ·]; the state and the arithmetic are in the accumulation
// dtype (float for the half types), cast on store.
#pragma once

#include "isa_dispatch.h"
#include "rnnkernels/scan_params.h"

namespace rnnk {
namespace cpu {

struct CellStep {
  ScanArgs a;                 // T = 1, the fields listed above
  const void* gh = nullptr;   // [B, G·H] storage dtype; see gh_is_bias
  // The LSTM's and Elman cell's gates need only the sum xp + gh, so their callers may do the
  // hidden side's GEMM into xp (one buffer, no separate gh to write and read back): gh is then
  // b_hh [G·H] (the same row for every b), or null without biases.
  bool gh_is_bias = false;
  void* dgh = nullptr;        // [B, G·H] storage dtype, GRU backward
  void* dh_direct = nullptr;  // [B, H] storage dtype, GRU backward
};

// out[b][n] = Σ_k x[b][k]·W[n][k] (+ bias[n]) for b < B, n < N: a step's input-side or
// hidden-side GEMM (W in torch's [N, K] layout) where the batch is so small that a library GEMM
// costs more per call than the arithmetic: dot products along W's contiguous rows, several rows
// at a time, summed in the accumulation type and rounded once, bias included. Contiguous rows.
struct RowsDot {
  DType dtype = DType::kFloat32;
  int64_t B = 0, N = 0, K = 0;
  const void* x = nullptr;     // [B, K]
  const void* w = nullptr;     // [N, K]
  const void* bias = nullptr;  // [N] or null
  void* out = nullptr;         // [B, N]
};

// The instruction-set builds (scan_generic.cpp, scan_avx2.cpp, scan_avx512.cpp);
// cell_step_forward / cell_step_backward below run the one the scans run (cpu::isa_level()).
RNNK_DECLARE_IN_EACH_ISA(
    Status cell_step_forward(const CellStep& step);
    Status cell_step_backward(const CellStep& step);
    Status rows_dot(const RowsDot& d);)

inline Status cell_step_forward(const CellStep& step) {
  return RNNK_ISA_CALL(cell_step_forward, step);
}
inline Status cell_step_backward(const CellStep& step) {
  return RNNK_ISA_CALL(cell_step_backward, step);
}
inline Status rows_dot(const RowsDot& d) { return RNNK_ISA_CALL(rows_dot, d); }

}  // namespace cpu
}  // namespace rnnk
