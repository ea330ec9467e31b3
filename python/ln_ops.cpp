// python/ln_ops.cpp — torch.ops.rnnkernels_C.ln_forward / ln_backward: the CPU scans of the
// layer-norm LSTM and GRU (csrc/cpu/ln_scan.h) as ops. The Python custom op around them, with
// the input side's norm, the weight and gain gradients and autograd, is
// rnnkernels/backends/cpu_layer_norm.py.
//
// The checks and allocations are the plain ops' (ops_impl.h's Scan), plus the norms' own
// tensors and zoneout's (variant_io.h); the per-step GEMMs are the step path's (step_gemm.h's StepGemm: MKL through ATen on
// preallocated [B, ·] buffers, W_hhᵀ copied once per forward). float32 and float64 only: the op
// runs half inputs in float32.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu/ln_scan.h"
#include "cpu/scan_cpu.h"
#include "ops_impl.h"
#include "step_gemm.h"
#include "variant_io.h"

namespace rnnk {
namespace bridge {

// The CPU scans' path for a call (the cpu_path option, else cpu::choose_path): cpu_ops.cpp.
cpu::Path requested_path(const ScanArgs& a, bool backward);

namespace {

struct LnRunner {
  static constexpr at::DeviceType device = at::kCPU;
  static const char* name() { return "cpu"; }
  static void check_dtype(const Checker& ck) {
    TORCH_CHECK(ck.dtype == at::kFloat || ck.dtype == at::kDouble, ck.who, ": unsupported dtype ",
                ck.dtype, " (float32 and float64; the op runs half types in float32)");
  }
};

using LnScan = Scan<LnRunner>;

// The layer-norm operands of a call, checked and kept alive with it, and the weights in the
// form StepGemm multiplies.
struct LnOperands {
  cpu::LayerNormArgs v;
  Weights w;
  Tensor gain_hh, gain_c, bias_c;
  ZoneoutOperands zone;

  LnOperands(LnScan& sc, int64_t cell, const Tensor& w_hh, const OptTensor& b_hn,
             const Tensor& gain, const OptTensor& g_c, const OptTensor& b_c, double eps,
             const OptTensor& mask_h, const OptTensor& mask_c, double p_h, double p_c) {
    const Checker& ck = sc.ck;
    ScanArgs& a = sc.a;
    TORCH_CHECK(cell == 0 || cell == 1, ck.who, ": cell must be 0 (LSTM) or 1 (GRU), got ", cell);
    const bool lstm = a.cell == Cell::kLSTM;
    const int64_t GH = gates_of(a.cell) * a.H;
    ck.tensor(w_hh, "w_hh", {GH, a.H});
    TORCH_CHECK(!given(b_hn) || !lstm, ck.who, ": only the GRU has b_hn");
    if (given(b_hn)) ck.tensor(*b_hn, "b_hn", {a.H});
    w = acc_weights(w_hh, std::nullopt, b_hn);
    a.w_hh = ptr(w.w_hh);
    a.b_hn = w.b_hn.defined() ? ptr(w.b_hn) : nullptr;
    ck.tensor(gain, "gain_hh", {GH});
    gain_hh = gain.contiguous();
    v.gain_hh = ptr(gain_hh);
    TORCH_CHECK(lstm == (given(g_c) && given(b_c)), ck.who,
                ": gain_c and bias_c are required for the LSTM, and only there");
    if (lstm) {
      ck.tensor(*g_c, "gain_c", {a.H});
      ck.tensor(*b_c, "bias_c", {a.H});
      gain_c = g_c->contiguous();
      bias_c = b_c->contiguous();
      v.gain_c = ptr(gain_c);
      v.bias_c = ptr(bias_c);
    }
    TORCH_CHECK(eps > 0, ck.who, ": eps must be positive, got ", eps);
    v.eps = eps;
    zone.set(ck, a, mask_h, mask_c, p_h, p_c, v.var);
  }
};

Cell cell_of(int64_t cell) { return cell == 0 ? Cell::kLSTM : Cell::kGRU; }

// A buffer of LayerNormArgs the forward saves (as Scan::workspace: empty when not `save`, zeroed
// where padded positions are left unwritten, i.e. with lengths).
Tensor ln_workspace(const LnScan& sc, bool save, bool lengths, at::IntArrayRef shape) {
  const auto acc = at::TensorOptions().dtype(acc_type(sc.ck.dtype));
  return !save ? alloc({0}, acc) : lengths ? pooled_empty(shape, acc).zero_() : alloc(shape, acc);
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ln_forward(
    int64_t cell, const Tensor& xp, const Tensor& h0, const OptTensor& c0, const Tensor& w_hh,
    const OptTensor& b_hn, const Tensor& gain_hh, const OptTensor& gain_c,
    const OptTensor& bias_c, const OptTensor& mask_h, const OptTensor& mask_c, double p_h,
    double p_c, double eps, const OptTensor& lengths, bool reverse, bool save) {
  LnScan sc("ln_forward", cell_of(cell), xp);
  const bool lstm = sc.a.cell == Cell::kLSTM;
  variant_forward_inputs(sc, xp, h0, c0);
  const int64_t T = sc.a.sched.T, B = sc.a.sched.B, H = sc.a.H, GH = gates_of(sc.a.cell) * H;
  LnOperands ops(sc, cell, w_hh, b_hn, gain_hh, gain_c, bias_c, eps, mask_h, mask_c, p_h, p_c);
  sc.schedule(lengths, reverse);
  Tensor out = sc.output(&ScanArgs::out, {T, B, H});
  Tensor h_n = sc.output(&ScanArgs::h_n, {B, H});
  Tensor c_n = lstm ? sc.output(&ScanArgs::c_n, {B, H}) : at::empty({0}, xp.options());
  Tensor gates = sc.workspace(&ScanArgs::gates, save, {T, B, GH});
  Tensor ws = sc.workspace(lstm ? &ScanArgs::cs : &ScanArgs::hn_lin, save, {T, B, H});
  const bool padded = given(lengths);
  Tensor nrm = ln_workspace(sc, save, padded, {T, B, GH});
  Tensor chat = ln_workspace(sc, save && lstm, padded, {T, B, H});
  Tensor rstd = ln_workspace(sc, save, padded, {T, B, 2});
  cpu::LayerNormArgs& v = ops.v;
  v.var.scan = sc.a;
  v.nrm = mptr(nrm), v.chat = mptr(chat), v.rstd = mptr(rstd);
  v.threads = std::max(1, at::get_num_threads());
  // The plain scans' path choice (cpu_path): the product on the scans' own panels, or MKL's
  // GEMM on a contiguous copy of W_hhᵀ.
  v.own_product = requested_path(sc.a, /*backward=*/false) == cpu::Path::kFused;
  StepGemm g(sc.a, ops.w, xp.options(), /*backward=*/false, /*copy_transposed=*/!v.own_product);
  ForwardScratch scratch = g.forward_scratch();
  Tensor pack;
  if (v.own_product) {
    pack = alloc({cpu::variant_pack_elems(v.var, false)}, xp.options());
    scratch.pack = mptr(pack);
  }
  raise_if_failed(cpu::ln_forward(v, scratch, g.callback()), "cpu", "ln_forward", &g);
  return {out, h_n, c_n, gates, ws, nrm, chat, rstd};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> ln_backward(
    int64_t cell, const Tensor& grad_out, const Tensor& grad_hn, const OptTensor& grad_cn,
    const Tensor& h0, const OptTensor& c0, const Tensor& w_hh, const Tensor& gain_hh,
    const OptTensor& gain_c, const OptTensor& bias_c, const OptTensor& mask_h,
    const OptTensor& mask_c, double p_h, double p_c, const OptTensor& lengths, bool reverse,
    const Tensor& out, const Tensor& gates, const Tensor& ws, const Tensor& nrm,
    const Tensor& chat, const Tensor& rstd) {
  LnScan sc("ln_backward", cell_of(cell), h0);
  const bool lstm = sc.a.cell == Cell::kLSTM;
  variant_backward_inputs(sc, grad_out, grad_hn, grad_cn, h0, c0, out);
  const int64_t T = sc.a.sched.T, B = sc.a.sched.B, H = sc.a.H, GH = gates_of(sc.a.cell) * H;
  // (eps: the forward saved each row's rstd, the backward needs no eps)
  LnOperands ops(sc, cell, w_hh, std::nullopt, gain_hh, gain_c, bias_c, 1.0, mask_h, mask_c, p_h,
                 p_c);
  sc.saved(&ScanArgs::gates, gates, "gates", {T, B, GH});
  sc.saved(lstm ? &ScanArgs::cs : &ScanArgs::hn_lin, ws, lstm ? "cs" : "hn_lin", {T, B, H});
  sc.ck.workspace(nrm, "nrm", {T, B, GH});
  sc.ck.workspace(rstd, "rstd", {T, B, 2});
  if (lstm) sc.ck.workspace(chat, "chat", {T, B, H});
  sc.schedule(lengths, reverse);
  Tensor dxp = sc.output(&ScanArgs::dxp, {T, B, GH});
  Tensor dh0 = sc.output(&ScanArgs::dh0, {B, H});
  Tensor dc0 = lstm ? sc.output(&ScanArgs::dc0, {B, H}) : at::empty({0}, h0.options());
  const auto acc = h0.options();
  const int threads = std::max(1, at::get_num_threads());
  Tensor dgh = alloc({T, B, GH}, acc),
         dparams = at::zeros({threads, cpu::ln_param_elems(sc.a)}, acc);
  const Tensor nrm_c = nrm.contiguous(), chat_c = chat.contiguous(), rstd_c = rstd.contiguous();
  cpu::LayerNormArgs& v = ops.v;
  v.var.scan = sc.a;
  v.nrm = mptr(nrm_c), v.chat = mptr(chat_c), v.rstd = mptr(rstd_c);
  v.dgh = mptr(dgh), v.dparams = mptr(dparams), v.threads = threads;
  v.own_product = requested_path(sc.a, /*backward=*/true) == cpu::Path::kFused;
  StepGemm g(sc.a, ops.w, acc, /*backward=*/true, /*copy_transposed=*/false);
  raise_if_failed(cpu::ln_backward(v, g.backward_scratch(), g.callback()), "cpu", "ln_backward",
                  &g);
  return {dxp, dh0, dc0, dgh, dparams.sum(0)};
}

}  // namespace
}  // namespace bridge
}  // namespace rnnk

TORCH_LIBRARY_FRAGMENT(rnnkernels_C, m) {
  m.def("ln_forward(int cell, Tensor xp, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? b_hn, "
        "Tensor gain_hh, Tensor? gain_c, Tensor? bias_c, Tensor? mask_h, Tensor? mask_c, "
        "float p_h, float p_c, float eps, Tensor? lengths, bool reverse, bool save) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("ln_backward(int cell, Tensor grad_out, Tensor grad_hn, Tensor? grad_cn, Tensor h0, "
        "Tensor? c0, Tensor w_hh, Tensor gain_hh, Tensor? gain_c, Tensor? bias_c, "
        "Tensor? mask_h, Tensor? mask_c, float p_h, float p_c, Tensor? lengths, bool reverse, "
        "Tensor out, Tensor gates, Tensor ws, Tensor nrm, Tensor chat, Tensor rstd) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkernels_C, CPU, m) {
  m.impl("ln_forward", &::rnnk::bridge::ln_forward);
  m.impl("ln_backward", &::rnnk::bridge::ln_backward);
}
