// python/variant_ops.cpp — torch.ops.rnnkernels_C.variant_forward / variant_backward: the CPU
// scans of the recurrent variants (csrc/cpu/variant_scan.h) as ops, and slstm_forward /
// slstm_backward: the sLSTM on the same scans. The Python custom ops around them, with the
// weight gradients and autograd, are rnnkernels/backends/cpu_variants.py and cpu_slstm.py.
//
// The checks and allocations are the plain ops' (ops_impl.h's Scan), plus the variants' own
// tensors: the head-wise W_hh [G·H, H / num_heads], the peephole weights [3, H] and the zoneout
// masks [T, B, H] (accumulation dtype, as variants.Call draws them). One thread team runs the
// whole scan at every batch size: the kernels' per-head products are their own
// register-blocked tiles, which a library GEMM per step would have to run head by head.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu/variant_scan.h"
#include "ops_impl.h"
#include "step_gemm.h"
#include "variant_io.h"

namespace rnnk {
namespace bridge {
namespace {

struct VariantRunner {
  static constexpr at::DeviceType device = at::kCPU;
  static const char* name() { return "cpu"; }
  static void check_dtype(const Checker& ck) { ck.cpu_dtype(); }
};

using VScan = Scan<VariantRunner>;

Cell cell_of(const Checker& ck, int64_t cell) {
  TORCH_CHECK(cell >= 0 && cell <= 3, ck.who, ": cell must be 0 (LSTM), 1 (GRU), 2 (RNN tanh) "
              "or 3 (RNN relu), got ", cell);
  return static_cast<Cell>(cell);
}

// The variant operands of a call, checked, in the accumulation dtype, kept alive with it.
struct Operands {
  cpu::VariantArgs v;
  Tensor w_hh, b_hn, peephole;
  ZoneoutOperands zone;

  Operands(VScan& sc, const Tensor& w_hh_in, const OptTensor& b_hn_in, const OptTensor& peep,
           const OptTensor& mh, const OptTensor& mc, double p_h, double p_c, int64_t heads) {
    const Checker& ck = sc.ck;
    ScanArgs& a = sc.a;
    const bool lstm = a.cell == Cell::kLSTM;
    TORCH_CHECK(heads >= 1 && a.H % heads == 0, ck.who, ": num_heads (", heads,
                ") must divide the hidden size ", a.H);
    const auto acc = acc_type(ck.dtype);
    ck.tensor(w_hh_in, "w_hh", {gates_of(a.cell) * a.H, a.H / heads});
    w_hh = w_hh_in.to(acc).contiguous();
    a.w_hh = ptr(w_hh);
    if (given(b_hn_in)) {
      ck.tensor(*b_hn_in, "b_hn", {a.H});
      b_hn = b_hn_in->to(acc).contiguous();
      a.b_hn = ptr(b_hn);
    }
    if (given(peep)) {
      TORCH_CHECK(lstm, ck.who, ": only the LSTM has peephole weights");
      ck.tensor(*peep, "peephole", {3, a.H});
      peephole = peep->to(acc).contiguous();
    }
    zone.set(ck, a, mh, mc, p_h, p_c, v);
    v.peephole = ptr(peephole);
    v.heads = heads;
  }
};

void run(cpu::VariantArgs& v, const ScanArgs& a, const Tensor& like, bool backward) {
  v.scan = a;
  const int64_t B = a.sched.B, H = a.H, E = v.slstm ? 3 : 1;  // the states besides h
  const auto acc = like.options().dtype(acc_type(like.scalar_type()));
  const int nthreads = cpu::variant_threads(v, at::get_num_threads());
  const Tensor pack = alloc({cpu::variant_pack_elems(v, backward)}, acc);
  cpu::VariantScratch s;
  s.pack = mptr(pack);
  Tensor x, y, z;
  if (backward) {
    x = alloc({B, H}, acc), y = alloc({E, B, H}, acc), z = alloc({2, B, gates_of(a.cell) * H}, acc);
    s.dh = mptr(x), s.dc = mptr(y), s.dgates = mptr(z);
  } else {
    x = alloc({2, B, H}, acc), y = alloc({E, B, H}, acc);
    s.h = mptr(x), s.c = mptr(y);
  }
  raise_if_failed(backward ? cpu::variant_backward(v, s, nthreads)
                           : cpu::variant_forward(v, s, nthreads),
                  "cpu", backward ? "variant_backward" : "variant_forward");
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> variant_forward(
    int64_t cell, const Tensor& xp, const Tensor& h0, const OptTensor& c0, const Tensor& w_hh,
    const OptTensor& b_hn, const OptTensor& peephole, const OptTensor& mask_h,
    const OptTensor& mask_c, double p_h, double p_c, int64_t num_heads,
    const OptTensor& lengths, bool reverse, bool save) {
  VScan sc("variant_forward", Cell::kLSTM, xp);
  sc.a.cell = cell_of(sc.ck, cell);
  const bool lstm = sc.a.cell == Cell::kLSTM;
  variant_forward_inputs(sc, xp, h0, c0);
  const int64_t G = gates_of(sc.a.cell), T = sc.a.sched.T, B = sc.a.sched.B, H = sc.a.H,
                GH = G * H;
  sc.schedule(lengths, reverse);
  Operands ops(sc, w_hh, b_hn, peephole, mask_h, mask_c, p_h, p_c, num_heads);
  Tensor out = sc.output(&ScanArgs::out, {T, B, H});
  Tensor h_n = sc.output(&ScanArgs::h_n, {B, H});
  Tensor c_n = lstm ? sc.output(&ScanArgs::c_n, {B, H}) : at::empty({0}, xp.options());
  Tensor gates, ws;
  if (G > 1) {  // the Elman RNN saves nothing: its derivative comes from `out`
    gates = sc.workspace(&ScanArgs::gates, save, {T, B, GH});
    ws = sc.workspace(lstm ? &ScanArgs::cs : &ScanArgs::hn_lin, save, {T, B, H});
  } else {
    gates = at::empty({0}, xp.options().dtype(acc_type(xp.scalar_type())));
    ws = at::empty({0}, gates.options());  // not `gates` itself: outputs must not alias
  }
  run(ops.v, sc.a, xp, false);
  return {out, h_n, c_n, gates, ws};
}

std::tuple<Tensor, Tensor, Tensor> variant_backward(
    int64_t cell, const Tensor& grad_out, const Tensor& grad_hn, const OptTensor& grad_cn,
    const Tensor& h0, const OptTensor& c0, const Tensor& w_hh, const OptTensor& b_hn,
    const OptTensor& peephole, const OptTensor& mask_h, const OptTensor& mask_c, double p_h,
    double p_c, int64_t num_heads, const OptTensor& lengths, bool reverse, const Tensor& out,
    const Tensor& gates, const Tensor& ws) {
  VScan sc("variant_backward", Cell::kLSTM, h0);
  sc.a.cell = cell_of(sc.ck, cell);
  const bool lstm = sc.a.cell == Cell::kLSTM;
  variant_backward_inputs(sc, grad_out, grad_hn, grad_cn, h0, c0, out);
  const int64_t T = sc.a.sched.T, B = sc.a.sched.B, H = sc.a.H, GH = gates_of(sc.a.cell) * H;
  if (GH > H) {
    sc.saved(&ScanArgs::gates, gates, "gates", {T, B, GH});
    sc.saved(lstm ? &ScanArgs::cs : &ScanArgs::hn_lin, ws, lstm ? "cs" : "hn_lin", {T, B, H});
  }
  sc.schedule(lengths, reverse);
  Operands ops(sc, w_hh, b_hn, peephole, mask_h, mask_c, p_h, p_c, num_heads);
  Tensor dxp = sc.output(&ScanArgs::dxp, {T, B, GH});
  Tensor dh0 = sc.output(&ScanArgs::dh0, {B, H});
  Tensor dc0 = lstm ? sc.output(&ScanArgs::dc0, {B, H}) : at::empty({0}, h0.options());
  run(ops.v, sc.a, h0, true);
  return {dxp, dh0, dc0};
}

// The sLSTM (csrc/cpu/slstm_unit.h): xp [T, B, 4H] (gates i, f, z, o), h0 [B, H], s0 = c0, n0,
// m0 stacked [3, B, H], w_hh [4H, H / num_heads] → out [T, B, H], h_n [B, H], s_n [3, B, H],
// the workspaces gates [T, B, 4H] (pre-activations) and ws [T, B, 3H] (c_t, n_t, m_t).
void slstm_states(VScan& sc, const Tensor& s0, const char* name) {
  sc.input(&ScanArgs::c0, s0, name, {3, sc.a.sched.B, sc.a.H});
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> slstm_forward(
    const Tensor& xp, const Tensor& h0, const Tensor& s0, const Tensor& w_hh, int64_t num_heads,
    const OptTensor& lengths, bool reverse, bool save) {
  VScan sc("slstm_forward", Cell::kLSTM, xp);
  variant_forward_inputs(sc, xp, h0, std::nullopt, true);
  const int64_t T = sc.a.sched.T, B = sc.a.sched.B, H = sc.a.H;
  slstm_states(sc, s0, "s0");
  sc.schedule(lengths, reverse);
  Operands ops(sc, w_hh, std::nullopt, std::nullopt, std::nullopt, std::nullopt, 0, 0, num_heads);
  ops.v.slstm = true;
  Tensor out = sc.output(&ScanArgs::out, {T, B, H});
  Tensor h_n = sc.output(&ScanArgs::h_n, {B, H});
  Tensor s_n = sc.output(&ScanArgs::c_n, {3, B, H});
  Tensor gates = sc.workspace(&ScanArgs::gates, save, {T, B, 4 * H});
  Tensor ws = sc.workspace(&ScanArgs::cs, save, {T, B, 3 * H});
  run(ops.v, sc.a, xp, false);
  return {out, h_n, s_n, gates, ws};
}

// Its reverse: grad_sn and s0 [3, B, H] as above → dxp [T, B, 4H], dh0 [B, H], ds0 [3, B, H].
std::tuple<Tensor, Tensor, Tensor> slstm_backward(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_sn, const Tensor& h0,
    const Tensor& s0, const Tensor& w_hh, int64_t num_heads, const OptTensor& lengths,
    bool reverse, const Tensor& out, const Tensor& gates, const Tensor& ws) {
  VScan sc("slstm_backward", Cell::kLSTM, h0);
  variant_backward_inputs(sc, grad_out, grad_hn, std::nullopt, h0, std::nullopt, out, true);
  const int64_t T = sc.a.sched.T, B = sc.a.sched.B, H = sc.a.H;
  sc.input(&ScanArgs::grad_cn, grad_sn, "grad_sn", {3, B, H});
  slstm_states(sc, s0, "s0");
  sc.saved(&ScanArgs::gates, gates, "gates", {T, B, 4 * H});
  sc.saved(&ScanArgs::cs, ws, "ws", {T, B, 3 * H});
  sc.schedule(lengths, reverse);
  Operands ops(sc, w_hh, std::nullopt, std::nullopt, std::nullopt, std::nullopt, 0, 0, num_heads);
  ops.v.slstm = true;
  Tensor dxp = sc.output(&ScanArgs::dxp, {T, B, 4 * H});
  Tensor dh0 = sc.output(&ScanArgs::dh0, {B, H});
  Tensor ds0 = sc.output(&ScanArgs::dc0, {3, B, H});
  run(ops.v, sc.a, h0, true);
  return {dxp, dh0, ds0};
}

}  // namespace
}  // namespace bridge
}  // namespace rnnk

TORCH_LIBRARY_FRAGMENT(rnnkernels_C, m) {
  m.def("variant_forward(int cell, Tensor xp, Tensor h0, Tensor? c0, Tensor w_hh, Tensor? b_hn, "
        "Tensor? peephole, Tensor? mask_h, Tensor? mask_c, float p_h, float p_c, int num_heads, "
        "Tensor? lengths, bool reverse, bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("variant_backward(int cell, Tensor grad_out, Tensor grad_hn, Tensor? grad_cn, Tensor h0, "
        "Tensor? c0, Tensor w_hh, Tensor? b_hn, Tensor? peephole, Tensor? mask_h, "
        "Tensor? mask_c, float p_h, float p_c, int num_heads, Tensor? lengths, bool reverse, "
        "Tensor out, Tensor gates, Tensor ws) -> (Tensor, Tensor, Tensor)");
  m.def("slstm_forward(Tensor xp, Tensor h0, Tensor s0, Tensor w_hh, int num_heads, "
        "Tensor? lengths, bool reverse, bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("slstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_sn, Tensor h0, Tensor s0, "
        "Tensor w_hh, int num_heads, Tensor? lengths, bool reverse, Tensor out, Tensor gates, "
        "Tensor ws) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(rnnkernels_C, CPU, m) {
  m.impl("variant_forward", &::rnnk::bridge::variant_forward);
  m.impl("variant_backward", &::rnnk::bridge::variant_backward);
  m.impl("slstm_forward", &::rnnk::bridge::slstm_forward);
  m.impl("slstm_backward", &::rnnk::bridge::slstm_backward);
}
