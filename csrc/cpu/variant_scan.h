// csrc/cpu/variant_scan.h — entry points of the CPU scans of the recurrent variants (issue 16,
// docs/VARIANTS.md): peephole LSTM, head-wise (block-diagonal) recurrence, zoneout; any
// combination, every cell that takes them. Implementation: variant_impl.h (compiled per
// instruction set inside the plain scans' builds, isa_build.h).
//
// The contract is the plain scans' (docs/BACKENDS.md: time order, lengths, reverse, frozen
// state, zeros beyond a length) with these additions to ScanArgs:
//   peephole [3, H] acc (rows i, f, o) or null           LSTM only
//   heads    W_hh is [G·H, d], d = H / heads: row g·H + j·d + u holds unit j·d+u of gate g's
//            weights from the d units of head j (heads = 1: the dense [G·H, H])
//   mask_h / mask_c [T, B, H] acc, time order, or null; p_h / p_c the eval probability, used
//            when there is no mask and p > 0 (zoneout: s_t = k·s_{t-1} + (1-k)·s̃_t)
// sLSTM (slstm = true, on cell kLSTM: its 4 gates i, f, z, o and head-wise W_hh; no peephole,
// no zoneout): the three states c, n, m stacked [3, B, H] in c0, c_n, grad_cn and dc0; `gates`
// saves the pre-activations, `cs` c_t, n_t, m_t as [T, B, 3, H] (csrc/cpu/slstm_unit.h).
// No projection (P = H). The forward saves, for the LSTM, `cs` = the zoned state c_t (the
// backward recomputes the candidate from the gates); `out` holds the zoned h_t, the state
// W_hh multiplies, so the op's dW_hh GEMM reads it as for the plain scans.
//
// Scratch [acc], allocated by the caller (python/variant_ops.cpp):
//   forward:  h = [2, B, H], c = [E, B, H], pack = variant_pack_elems(v, false)
//   backward: dh = [B, H], dc = [E, B, H], dgates = [2, B, G·H], pack = variant_pack_elems(v, true)
// (E = the states besides h: 1 for the LSTM, 3 for the sLSTM; unused by the other cells)
#pragma once

#include "rnnkernels/scan_params.h"

namespace rnnk {
namespace cpu {

struct VariantArgs {
  ScanArgs scan;                  // the plain scan's arguments (w_hh: head-wise when heads > 1)
  const void* peephole = nullptr;  // [3, H] acc, or null
  int64_t heads = 1;
  const void* mask_h = nullptr;  // [T, B, H] acc, or null
  const void* mask_c = nullptr;  // [T, B, H] acc (LSTM), or null
  double p_h = 0, p_c = 0;       // eval zoneout, when the mask is null
  bool slstm = false;             // the sLSTM on the LSTM's scan (above)

  int64_t head_size() const { return scan.H / heads; }
};

struct VariantScratch {
  void* h = nullptr;       // forward: [2, B, H] h double-buffered by step parity
  void* c = nullptr;       // forward: [E, B, H] the states besides h (LSTM c; sLSTM c, n, m)
  void* dh = nullptr;      // backward: [B, H] the carry ∂L/∂h
  void* dc = nullptr;      // backward: [E, B, H] the carries of those states
  void* dgates = nullptr;  // backward: [2, B, G·H] d gates, head-major, by step parity
  void* pack = nullptr;    // W_hh repacked: forward panels, backward per-head row blocks
};

Status variant_forward(const VariantArgs& v, const VariantScratch& w, int nthreads);
Status variant_backward(const VariantArgs& v, const VariantScratch& w, int nthreads);
// Threads worth a team for this case (of max_threads), and the pack buffer's size (elements).
int variant_threads(const VariantArgs& v, int max_threads);
int64_t variant_pack_elems(const VariantArgs& v, bool backward);

}  // namespace cpu
}  // namespace rnnk
