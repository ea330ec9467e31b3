// csrc/cpu/ln_scan.h — entry points of the CPU scans of the layer-norm LSTM and GRU (issue 16,
// docs/VARIANTS.md "Layer norm", haste's LayerNormLSTM / LayerNormGRU). Implementation:
// ln_impl.h (compiled once per instruction-set build with the plain scans, isa_build.h); the
// run-time choice between the builds: ln_dispatch.cpp.
//
// The input side's norm is NOT here: it covers every step at once, so the op normalises
// x·W_ihᵀ in one call before the scan and adds the biases (`xp` below is x̂ = LN(x·W_ihᵀ; γ_ih)
// + bias, the GRU's b_hn apart). What a step needs inside the recurrence, per sequence b:
//   gh   = h_{t-1}·W_hhᵀ                     one GEMM for the batch, through the GemmCallback
//   n̂    = (gh - mean(gh)) · rstd_hh          over all G·H pre-activations of the row
//   rec  = γ_hh ⊙ n̂                           (GRU: + b_hn on the n block, inside r ⊙ (...))
//   LSTM  i, f, u, o from xp + rec; c_t = f ⊙ c_{t-1} + i ⊙ u;
//         ĉ = (c_t - mean(c_t)) · rstd_c; h_t = o ⊙ tanh(γ_c ⊙ ĉ + β_c)
//   GRU   r, z, n, h_t as gru_cell_fwd with a = xp, b = rec
// The carried state c_t is the unnormalised one. Zoneout (VariantArgs' masks / eval
// probabilities, variant_scan.h) then mixes each state with its previous value:
// s_t = k ⊙ s_{t-1} + (1-k) ⊙ s̃_t, where h̃_t = o ⊙ tanh(LN(c̃_t)) reads the candidate c̃_t.
//
// Why the step-wise GEMM path (one library GEMM per step, then one row kernel per sequence)
// and not the fused register-blocked path of the plain scans: a norm over the whole G·H row
// needs the complete row before any gate, which a fused kernel's per-panel accumulators never
// hold; a row kernel after the GEMM reads the row twice from L1 (the statistics, then the
// gates), which costs little next to the product.
//
// Dtypes: float32 and float64 (S = acc). The op (rnnkernels/backends/cpu_layer_norm.py) runs
// half inputs in float32 (casts around the op, fp32 state), as the plain scans keep their state.
//
// Contract: ScanArgs' (docs/BACKENDS.md: time order, lengths, reverse, frozen state after a
// sequence's end, zeros beyond it). No projection (P = H), cells LSTM and GRU only; of the other
// variants only zoneout (no peephole, one head).
//
// Saved by the forward (all [acc], written at active positions only; the caller zeroes them
// when there are lengths): ScanArgs::gates (activated gates), ScanArgs::cs (LSTM zoned c_t) or
// ScanArgs::hn_lin (GRU γ_n ⊙ n̂_n + b_hn), and `nrm`, `chat`, `rstd` below.
// The backward's outputs: ScanArgs::dxp (∂L/∂x̂, the gradient of the pre-activations' input
// side), dh0, dc0, `dgh` below, from which the op gets dW_hh = Σ_t dghᵀ·h_{t-1} as one GEMM,
// and `dparams`: the sums over steps and batch that are the gains' and biases' gradients,
// accumulated while each row's values are in L1 (a pass over [T, B, G·H] tensors afterwards
// would read them all again from memory):
//   dγ_hh = Σ drec ⊙ n̂   (drec = ∂L/∂(γ_hh ⊙ n̂), the GRU's n block through r ⊙ (...))
//   LSTM dγ_c = Σ dy ⊙ ĉ, dβ_c = Σ dy (y = γ_c ⊙ ĉ + β_c);  GRU db_hn = Σ drec_n
//
// Scratch: the step path's (ForwardScratch h, c, gh; BackwardScratch dh, dc, dgates: [B, ·]
// acc, python/step_gemm.h's StepGemm) and its GEMMs kGates / kRecurrent, or with own_product
// the panel buffer ForwardScratch::pack and no GEMM.
#pragma once

#include "rnnkernels/scan_params.h"
#include "variant_scan.h"

namespace rnnk {
namespace cpu {

struct LayerNormArgs {
  VariantArgs var;  // var.scan: cell kLSTM or kGRU, xp = x̂ (see above); zoneout's operands
  double eps = 1e-5;             // of every norm (variants.LAYER_NORM_EPS)
  const void* gain_hh = nullptr;  // [G·H] γ_hh
  const void* gain_c = nullptr;   // [H] γ_c (LSTM)
  const void* bias_c = nullptr;   // [H] β_c (LSTM)
  // Saved by the forward (null: inference, nothing saved), read by the backward:
  void* nrm = nullptr;   // [T, B, G·H] n̂, the normalised recurrent product
  void* chat = nullptr;  // [T, B, H] ĉ (LSTM)
  void* rstd = nullptr;  // [T, B, 2] rstd_hh, rstd_c (LSTM; the GRU leaves the second 0)
  // Backward outputs:
  void* dgh = nullptr;      // [T, B, G·H] ∂L/∂gh (zero at padded positions)
  void* dparams = nullptr;  // [threads, G·H + 2·H], zeroed by the caller: per thread the
                            // partial sums dγ_hh [G·H], then LSTM dγ_c, dβ_c / GRU db_hn, 0 [H]
  int threads = 1;          // the row loops' team: at most this many threads
  // The recurrent product on the fused scans' register tiles (small batches; the forward then
  // needs ForwardScratch::pack of variant_pack_elems(var, false) elements) instead of the
  // GemmCallback (ln_impl.h says why).
  bool own_product = false;
};

// The width of a dparams slot.
inline int64_t ln_param_elems(const ScanArgs& a) { return (gates_of(a.cell) + 2) * a.H; }

Status ln_forward(const LayerNormArgs& v, const ForwardScratch& w, GemmCallback gemm);
Status ln_backward(const LayerNormArgs& v, const BackwardScratch& w, GemmCallback gemm);

}  // namespace cpu
}  // namespace rnnk
