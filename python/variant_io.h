// python/variant_io.h — the state inputs and the zoneout operands of the variants' scan ops
// (variant_ops.cpp, ln_ops.cpp), checked once for both: no projection (P = H), c0 / grad_cn for
// the LSTM only, the masks as variants.Call draws them.
#pragma once

#include "cpu/variant_scan.h"
#include "ops_impl.h"

namespace rnnk {
namespace bridge {

// Forward: xp [T, B, G·H], h0 [B, H], c0 [B, H] (LSTM) into sc.a, with its sizes. `own_c0`:
// the caller checks c0 itself (the sLSTM's stacked states).
template <class R>
void variant_forward_inputs(Scan<R>& sc, const Tensor& xp, const Tensor& h0,
                            const OptTensor& c0, bool own_c0 = false) {
  const bool lstm = sc.a.cell == Cell::kLSTM;
  const int64_t G = gates_of(sc.a.cell);
  check_3d(sc.ck, xp, "xp");
  const int64_t T = xp.size(0), B = xp.size(1), GH = xp.size(2), H = GH / G;
  TORCH_CHECK(GH % G == 0, sc.ck.who, ": xp's last dimension (", GH, ") must be ", G,
              "*hidden_size");
  sc.sizes(T, B, H, H);
  sc.input(&ScanArgs::xp, xp, "xp", {T, B, GH});
  sc.input(&ScanArgs::h0, h0, "h0", {B, H});
  if (own_c0) return;
  TORCH_CHECK(lstm == given(c0), sc.ck.who, ": c0 is required for the LSTM, and only there");
  if (lstm) sc.input(&ScanArgs::c0, *c0, "c0", {B, H});
}

// Backward: out, grad_out [T, B, H], grad_hn, h0 [B, H], grad_cn, c0 [B, H] (LSTM) into sc.a,
// with its sizes; `own_c0` as above (grad_cn too).
template <class R>
void variant_backward_inputs(Scan<R>& sc, const Tensor& grad_out, const Tensor& grad_hn,
                             const OptTensor& grad_cn, const Tensor& h0, const OptTensor& c0,
                             const Tensor& out, bool own_c0 = false) {
  const bool lstm = sc.a.cell == Cell::kLSTM;
  check_3d(sc.ck, out, "out");
  const int64_t T = out.size(0), B = out.size(1), H = out.size(2);
  sc.sizes(T, B, H, H);
  sc.input(&ScanArgs::out, out, "out", {T, B, H});
  sc.input(&ScanArgs::grad_out, grad_out, "grad_out", {T, B, H});
  sc.input(&ScanArgs::grad_hn, grad_hn, "grad_hn", {B, H});
  sc.input(&ScanArgs::h0, h0, "h0", {B, H});
  if (own_c0) return;
  TORCH_CHECK(lstm == (given(c0) && given(grad_cn)), sc.ck.who,
              ": c0 and grad_cn are required for the LSTM, and only there");
  if (lstm) {
    sc.input(&ScanArgs::grad_cn, *grad_cn, "grad_cn", {B, H});
    sc.input(&ScanArgs::c0, *c0, "c0", {B, H});
  }
}

// Zoneout's operands: mask_h / mask_c [T, B, H] in the accumulation dtype (or none, with p_h /
// p_c the eval probability, 0: no zoneout), checked, kept alive, into v's fields.
struct ZoneoutOperands {
  Tensor mask_h, mask_c;

  void set(const Checker& ck, const ScanArgs& a, const OptTensor& mh, const OptTensor& mc,
           double p_h, double p_c, cpu::VariantArgs& v) {
    const bool lstm = a.cell == Cell::kLSTM, elman = gates_of(a.cell) == 1;
    TORCH_CHECK(!elman || (!given(mh) && p_h == 0), ck.who, ": the Elman RNN has no zoneout");
    TORCH_CHECK(lstm || (!given(mc) && p_c == 0), ck.who, ": only the LSTM has a cell state");
    TORCH_CHECK(p_h >= 0 && p_h < 1 && p_c >= 0 && p_c < 1, ck.who,
                ": zoneout probabilities must be in [0, 1), got ", p_h, " and ", p_c);
    if (given(mh)) mask_h = mask(ck, *mh, "mask_h", a);
    if (given(mc)) mask_c = mask(ck, *mc, "mask_c", a);
    v.mask_h = ptr(mask_h);
    v.mask_c = ptr(mask_c);
    v.p_h = p_h;
    v.p_c = p_c;
  }

  static Tensor mask(const Checker& ck, const Tensor& m, const char* name, const ScanArgs& a) {
    TORCH_CHECK(m.device().type() == at::kCPU && m.scalar_type() == acc_type(ck.dtype), ck.who,
                ": ", name, " must be a CPU tensor of dtype ", acc_type(ck.dtype), ", got ",
                m.scalar_type(), " on ", m.device());
    TORCH_CHECK(m.sizes().equals({a.sched.T, a.sched.B, a.H}), ck.who, ": ", name,
                " has shape ", m.sizes(), ", expected [", a.sched.T, ", ", a.sched.B, ", ", a.H,
                "]");
    return m.contiguous();
  }
};

}  // namespace bridge
}  // namespace rnnk
