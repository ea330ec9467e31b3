// python/cell_step.cpp — one step of an LSTM / GRU / Elman cell on the CPU as ONE C++ call and,
// when a gradient is needed, ONE autograd node: rnnkernels._C.lstm_cell, gru_cell, rnn_cell
// (wrapped by rnnkernels/backends/cell_step.py).
//
// Why: torch's CPU cells (at::lstm_cell, ...) are composites of about a dozen ATen ops, each a
// dispatcher call and, in grad mode, an autograd node whose backward walks that graph. Here:
//   forward   gx = x·W_ihᵀ (+ b_ih), gh = h·W_hhᵀ (+ b_hh) (ATen GEMMs; the LSTM's and Elman
//             cell's gh accumulates into gx from batch 2 on, see step_forward), then one pointwise pass
//             (csrc/cpu/cell_step.h: the scans' cell_io.h units) on gx + gh (GRU: torch's
//             n = tanh(gx_n + r ⊙ gh_n)) → h_t (LSTM with projection: · W_hrᵀ), c_t
//   backward  one pointwise pass → dG, the d pre-activations, then only the GEMMs of gradients
//             that are needed: dx = dG·W_ih, dh = dG_h·W_hh (+ GRU dh ⊙ z), dW_ih = dGᵀ·x,
//             dW_hh = dG_hᵀ·h, db_ih = Σ_b dG, db_hh = Σ_b dG_h (dG_h = dG but for the GRU's n
//             block, dn ⊙ r).
// Double backward: a backward run with create_graph=True recomputes the step with torch's own
// composite cell (at::lstm_cell, ..., each op differentiable) from the saved inputs and
// differentiates that (a reentrant autograd::grad), so gradients of gradients equal torch.nn's;
// first-order backward never takes that path. Dual tensors (forward-mode AD) and torch.func
// transforms raise (route those to torch).
//
// Binding: plain METH_FASTCALL functions of the module, the cheapest way in from Python. Measured
// against the same step as a TORCH_LIBRARY op (CompositeImplicitAutograd kernel) called through a
// cached OpOverload, which pays the schema's boxed argument handling: per call, B = 1, H = 8 and
// 64, no_grad, 1 thread, 12.0 / 16.4 µs here vs 14.7 / 19.6 µs there (torch's own
// _VF.lstm_cell: 31.8 / 40.4 µs). So no op schema, hence no Meta kernel to register.
#include <ATen/ATen.h>
#include <ATen/FuncTorchTLS.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/autograd/utils/wrap_outputs.h>

#include <array>

#include "bridge.h"
#include "cell_step.h"
#include "cpu/cell_step.h"

namespace rnnk {
namespace bridge {
namespace {

using torch::autograd::variable_list;

constexpr const char* kWho = "rnnkernels cell step";

// One call's tensors in the order of the Python signature (and of the autograd node's inputs):
// c for the LSTM only, w_hr for an LSTM with projection only, the biases optional.
constexpr int kInputs = 8;
enum Input { kX = 0, kH, kC, kWih, kWhh, kBih, kBhh, kWhr };
using Inputs = std::array<Tensor, kInputs>;

// Sizes: B batch, H hidden, P = the state size (proj_size, else H), G gates.
struct Sizes { int64_t B, H, P, G; };

// What the kernels need to stay in bounds and run: torch's cells and the modules check the rest
// (and the modules check first, with torch's messages).
Sizes check(Cell cell, const Inputs& in) {
  const Tensor& x = in[kX];
  const at::ScalarType dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf,
              kWho, ": unsupported dtype ", dt, " (float32, float64, bfloat16, float16)");
  static const char* names[kInputs] = {"input", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh",
                                       "w_hr"};
  for (int i = 0; i < kInputs; ++i) {
    const Tensor& t = in[i];
    if (!t.defined()) continue;
    TORCH_CHECK(t.device().is_cpu() && t.layout() == at::kStrided, kWho, ": ", names[i],
                " must be a dense CPU tensor, got ", t.device(), " ", t.layout());
    TORCH_CHECK(t.scalar_type() == dt, kWho, ": ", names[i], " has dtype ", t.scalar_type(),
                " but input has ", dt);
    TORCH_CHECK(!t._fw_grad(/*level=*/0).defined(), kWho, ": forward-mode AD (dual tensors) is "
                "not supported by the fused cell step; use backend='torch'");
    TORCH_CHECK(t.dim() == (i == kBih || i == kBhh ? 1 : 2), kWho, ": ", names[i],
                " has shape ", t.sizes());
  }
  const int64_t G = gates_of(cell);
  TORCH_CHECK(in[kX].defined() && in[kH].defined() && in[kWih].defined() && in[kWhh].defined(),
              kWho, ": input, hx, w_ih and w_hh are required");
  TORCH_CHECK(in[kWhh].size(0) % G == 0, kWho, ": w_hh has ", in[kWhh].size(0),
              " rows, not a multiple of ", G);
  const Sizes s{x.size(0), in[kWhh].size(0) / G, in[kWhh].size(1), G};
  auto shape = [&](int i, std::initializer_list<int64_t> want) {
    TORCH_CHECK(in[i].sizes().equals(want), kWho, ": ", names[i], " has shape ", in[i].sizes(),
                ", expected ", at::IntArrayRef(want));
  };
  shape(kWih, {G * s.H, x.size(1)});
  shape(kH, {s.B, s.P});
  if (cell == Cell::kLSTM) shape(kC, {s.B, s.H});
  if (in[kBih].defined()) shape(kBih, {G * s.H});
  if (in[kBhh].defined()) shape(kBhh, {G * s.H});
  if (in[kWhr].defined())
    shape(kWhr, {s.P, s.H});
  else
    TORCH_CHECK(s.P == s.H, kWho, ": w_hh has ", s.P, " columns but ", s.H, " hidden units");
  return s;
}

void check_status(const Status& st, const char* fn) {
  TORCH_CHECK(st.ok(), kWho, ": ", fn, " failed: ", st.what);
}

// The GEMMs, into outputs from bridge::alloc: large ones (weight gradients) come from the pool of
// python/cpu_pool.h, whose blocks stay mapped: a fresh one would pay a page fault per 4 KiB.
Tensor gemm(const Tensor& a, const Tensor& b) {
  Tensor out = alloc({a.size(0), b.size(1)}, a.options());
  return at::mm_out(out, a, b);
}
Tensor gemm_bias(const Tensor& bias, const Tensor& a, const Tensor& b) {
  Tensor out = alloc({a.size(0), b.size(1)}, a.options());
  return at::addmm_out(out, bias, a, b);
}

// x·Wᵀ (+ b). At batch 1 (decoding) by cpu::rows_dot rather than MKL, whose call costs more
// than the arithmetic there: measured per LSTM step (no_grad, 1 thread) 6.5 vs 10-12 µs at
// H = 64, 50-75 vs 58-60 µs at H = 256; from batch 2 on, MKL (rows_dot reads W once per row of x).
Tensor linear(const Tensor& x, const Tensor& w, const Tensor& b) {
  if (x.size(0) == 1 && w.is_contiguous()) {
    const Tensor xc = x.contiguous(), bc = b.defined() ? b.contiguous() : b;
    Tensor out = alloc({1, w.size(0)}, x.options());
    check_status(cpu::rows_dot({to_dtype(x.scalar_type()), 1, w.size(0), w.size(1), ptr(xc),
                                ptr(w), ptr(bc), mptr(out)}),
                 "rows_dot");
    return out;
  }
  return b.defined() ? gemm_bias(b, x, w.t()) : gemm(x, w.t());
}

// The kernels' arguments for a step on [B, ·] tensors of dtype `dt` (csrc/cpu/cell_step.h) and
// the saved workspace, if any: one acc-dtype tensor [B, (G+1)·H] (one allocation, one saved
// tensor), the activated gates [B, G·H], then the LSTM's c_t or the GRU's hn_lin [B, H].
cpu::CellStep kernel_args(Cell cell, at::ScalarType dt, const Sizes& s, const Tensor& ws) {
  cpu::CellStep st;
  ScanArgs& a = st.a;
  a.cell = cell;
  a.dtype = to_dtype(dt);
  a.sched.T = 1;
  a.sched.B = s.B;
  a.H = a.P = s.H;
  if (ws.defined()) {
    a.gates = ws.data_ptr();
    (cell == Cell::kLSTM ? a.cs : a.hn_lin) =
        static_cast<char*>(ws.data_ptr()) + s.B * s.G * s.H * ws.element_size();
  }
  return st;
}

struct Forward {
  Tensor h, c;  // the outputs
  Tensor ws;    // saved workspace (LSTM, GRU), or undefined
  Tensor hh;    // with a projection: the unprojected hidden (for dW_hr)
};

Forward step_forward(Cell cell, const Inputs& in, const Sizes& s, bool save) {
  const bool lstm = cell == Cell::kLSTM, gru = cell == Cell::kGRU;
  // The LSTM and the Elman cell need only xp + gh: from batch 2 on (MKL's GEMMs) in fp32/fp64,
  // h·W_hhᵀ accumulates into x·W_ihᵀ + b_ih (beta = 1) and b_hh joins in the pointwise pass,
  // saving a [B, G·H] buffer, its bias fill and its read (cell_step.h). Half types keep two
  // GEMMs: each rounds its own output, as torch's cells do.
  const at::ScalarType dt = in[kX].scalar_type();
  const bool fold = !gru && s.B > 1 && (dt == at::kFloat || dt == at::kDouble);
  Tensor gx = linear(in[kX], in[kWih], in[kBih]).contiguous();
  if (fold) gx.addmm_(in[kH], in[kWhh].t());
  const Tensor gh = fold ? (in[kBhh].defined() ? in[kBhh].contiguous() : Tensor())
                         : linear(in[kH], in[kWhh], in[kBhh]).contiguous();
  const Tensor h_prev = gru ? in[kH].contiguous() : Tensor();
  const Tensor c_prev = lstm ? in[kC].contiguous() : Tensor();
  const auto opts = in[kX].options();
  Forward f;
  const Tensor out = alloc({s.B, s.H}, opts);
  if (lstm) f.c = alloc({s.B, s.H}, opts);
  if (save && s.G > 1) f.ws = alloc({s.B * (s.G + 1) * s.H}, opts.dtype(acc_type(dt)));
  cpu::CellStep st = kernel_args(cell, dt, s, f.ws);
  ScanArgs& a = st.a;
  a.xp = ptr(gx);
  st.gh = ptr(gh);
  st.gh_is_bias = fold;
  a.h0 = ptr(h_prev);
  a.c0 = ptr(c_prev);
  a.out = mptr(out);
  a.c_n = mptr(f.c);
  check_status(cpu::cell_step_forward(st), "forward");
  if (in[kWhr].defined()) f.hh = out;
  f.h = f.hh.defined() ? gemm(out, in[kWhr].t()) : out;
  return f;
}

// The gradients of the eight inputs (undefined where not needed) from ∂L/∂h_t and ∂L/∂c_t (either
// may be undefined: zero). `in` holds what the forward saved: x if W_ih needs a gradient, h if
// W_hh does (and always for the GRU), c (LSTM), W_ih if x needs one, W_hh if h does, W_hr; `kept`
// is the Elman cell's h_t or, with a projection, the unprojected hidden.
variable_list step_backward(Cell cell, const Inputs& in, const Tensor& ws, const Tensor& kept,
                            const Tensor& grad_h, const Tensor& grad_c,
                            const std::array<bool, kInputs>& needs) {
  const bool lstm = cell == Cell::kLSTM, gru = cell == Cell::kGRU;
  const Tensor& state = lstm ? in[kC] : gru ? in[kH] : kept;  // always saved, [B, H]
  const auto opts = state.options();
  const int64_t B = state.size(0), H = state.size(1), G = gates_of(cell);
  variable_list grads(kInputs);
  Tensor dh = grad_h;  // ∂L/∂ of the cell's own h_t (with a projection: the unprojected one)
  if (in[kWhr].defined() && grad_h.defined()) {
    if (needs[kWhr]) grads[kWhr] = gemm(grad_h.t(), kept);
    dh = gemm(grad_h, in[kWhr]);
  }
  dh = dh.defined() ? dh.contiguous() : at::zeros({B, H}, opts);
  const Tensor dc = grad_c.defined() ? grad_c.contiguous() : Tensor();
  const Tensor h_prev = gru ? in[kH].contiguous() : Tensor();
  const Tensor c_prev = lstm ? in[kC].contiguous() : Tensor();
  const Tensor dgx = alloc({B, G * H}, opts);
  const Tensor dgh = gru ? alloc({B, G * H}, opts) : dgx;
  const Tensor direct = gru ? alloc({B, H}, opts) : Tensor();
  if (lstm && needs[kC]) grads[kC] = alloc({B, H}, opts);
  cpu::CellStep st = kernel_args(cell, state.scalar_type(), {B, H, H, G}, ws);
  ScanArgs& a = st.a;
  a.grad_out = ptr(dh);
  a.grad_cn = ptr(dc);
  a.out = lstm || gru ? nullptr : const_cast<void*>(ptr(kept));  // the Elman cell's h_t
  a.h0 = ptr(h_prev);
  a.c0 = ptr(c_prev);
  a.dxp = mptr(dgx);
  a.dc0 = mptr(grads[kC]);
  st.dgh = gru ? mptr(dgh) : nullptr;
  st.dh_direct = mptr(direct);
  check_status(cpu::cell_step_backward(st), "backward");
  if (needs[kX]) grads[kX] = gemm(dgx, in[kWih]);
  if (needs[kH]) grads[kH] = gru ? gemm_bias(direct, dgh, in[kWhh]) : gemm(dgh, in[kWhh]);
  if (needs[kWih]) grads[kWih] = gemm(dgx.t(), in[kX]);
  if (needs[kWhh]) grads[kWhh] = gemm(dgh.t(), in[kH]);
  // two sums, never one tensor twice: each .grad must own its storage
  if (needs[kBih]) grads[kBih] = dgx.sum(0);
  if (needs[kBhh]) grads[kBhh] = dgh.sum(0);
  return grads;
}

// The autograd node of one step (named as torch names its nodes: LSTMCellBackward, ...), with
// what the backward reads saved as SavedVariables (version-checked, saved-tensor hooks apply).
// A Node of our own rather than a torch::autograd::Function: a Function cannot take an absent
// (undefined) tensor in a fixed position, so every call would map its optional biases / cx / w_hr
// to edge indices, and it adds per-call bookkeeping (input and output infos, the generic output
// wrapping) that this node does not need; its edges here are the eight inputs by position.
struct CellStepBackward : torch::autograd::Node {
  explicit CellStepBackward(Cell c) : cell(c) {}

  std::string name() const override {
    switch (cell) {
      case Cell::kLSTM: return "LSTMCellBackward";
      case Cell::kGRU: return "GRUCellBackward";
      case Cell::kRNNTanh: return "RNNTanhCellBackward";
      case Cell::kRNNReLU: return "RNNReLUCellBackward";
    }
    return "CellBackward";
  }

  variable_list apply(variable_list&& grads) override {
    Inputs in;
    std::array<bool, kInputs> needs;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      for (int i = 0; i < kInputs; ++i) {
        in[i] = saved[i].unpack();
        needs[i] = task_should_compute_output(i);
      }
    }
    // create_graph=True: the fused pointwise backward is not built from differentiable ops.
    if (at::GradMode::is_enabled()) return differentiable_backward(in, needs, grads);
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    const Tensor ws_t = ws.unpack(), kept_t = kept.unpack(getptr());
    return step_backward(cell, in, ws_t, kept_t, grads[0],
                         grads.size() > 1 ? grads[1] : Tensor(), needs);
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& v : saved) v.reset_data();
    ws.reset_data();
    kept.reset_data();
  }

  // The step again as torch's composite cell, whose ATen ops autograd records, differentiated
  // with the graph kept: the result is differentiable w.r.t. the inputs and the incoming grads.
  variable_list differentiable_backward(const Inputs& in, const std::array<bool, kInputs>& needs,
                                        const variable_list& grads) const {
    variable_list outs;
    if (cell == Cell::kLSTM) {
      auto hc = at::lstm_cell(in[kX], {in[kH], in[kC]}, in[kWih], in[kWhh], in[kBih], in[kBhh]);
      Tensor h = std::get<0>(hc);
      outs = {in[kWhr].defined() ? at::matmul(h, in[kWhr].t()) : h, std::get<1>(hc)};
    } else if (cell == Cell::kGRU) {
      outs = {at::gru_cell(in[kX], in[kH], in[kWih], in[kWhh], in[kBih], in[kBhh])};
    } else {
      auto f = cell == Cell::kRNNReLU ? at::rnn_relu_cell : at::rnn_tanh_cell;
      outs = {f(in[kX], in[kH], in[kWih], in[kWhh], in[kBih], in[kBhh])};
    }
    variable_list ys, gys, xs;
    for (size_t k = 0; k < outs.size() && k < grads.size(); ++k)
      if (grads[k].defined()) ys.push_back(outs[k]), gys.push_back(grads[k]);
    std::vector<int> which;
    for (int i = 0; i < kInputs; ++i)
      if (needs[i] && in[i].defined()) xs.push_back(in[i]), which.push_back(i);
    variable_list result(kInputs);
    if (ys.empty() || xs.empty()) return result;
    variable_list got = torch::autograd::grad(ys, xs, gys, /*retain_graph=*/true,
                                              /*create_graph=*/true, /*allow_unused=*/true);
    for (size_t k = 0; k < which.size(); ++k) result[which[k]] = got[k];
    return result;
  }

  Cell cell;
  std::array<torch::autograd::SavedVariable, kInputs> saved;  // as Inputs, undefined if unneeded
  torch::autograd::SavedVariable ws, kept;  // the workspace; the Elman h_t or the projection's hh
};

// The step with its node: the forward, the outputs' history, and every input (references to
// tensors the caller holds anyway; the first-order backward reads x if W_ih needs a gradient, h
// if W_hh does or always for the GRU, c, W_ih if x needs one, W_hh if h does, W_hr; a double
// backward recomputes the step from all of them).
variable_list step_with_grad(Cell cell, const Inputs& in, const Sizes& s) {
  auto node = c10::make_intrusive<CellStepBackward>(cell);
  node->set_next_edges(torch::autograd::collect_next_edges(in[kX], in[kH], in[kC], in[kWih],
                                                           in[kWhh], in[kBih], in[kBhh],
                                                           in[kWhr]));
  const Forward f = step_forward(cell, in, s, /*save=*/true);
  const bool lstm = cell == Cell::kLSTM, elman = !lstm && cell != Cell::kGRU;
  variable_list out = lstm ? variable_list{f.h, f.c} : variable_list{f.h};
  torch::autograd::set_history(out, node);
  for (int i = 0; i < kInputs; ++i)
    if (in[i].defined()) node->saved[i] = {in[i], /*is_output=*/false};
  if (f.ws.defined()) node->ws = {f.ws, false};
  if (f.hh.defined()) node->kept = {f.hh, false};
  if (elman) node->kept = {f.h, /*is_output=*/true};
  return out;
}

bool any_requires_grad(const Inputs& in) {
  for (const Tensor& t : in)
    if (t.defined() && t.requires_grad()) return true;
  return false;
}

// One step: with its node when a gradient is needed, else the bare forward (no node, nothing
// saved).
variable_list step(Cell cell, const Inputs& in) {
  if (auto& functorch = at::functorch::functorchTLSAccessor())
    functorch->checkSupportsCppAutogradFunction();  // torch.func transforms: torch's error
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Sizes s = check(cell, in);
  if (at::GradMode::is_enabled() && any_requires_grad(in)) return step_with_grad(cell, in, s);
  const Forward f = step_forward(cell, in, s, /*save=*/false);
  if (cell == Cell::kLSTM) return {f.h, f.c};
  return {f.h};
}

// Python arguments → tensors: a Tensor, or None where `optional`.
Tensor arg(PyObject* o, const char* name, bool optional) {
  if (optional && o == Py_None) return Tensor();
  TORCH_CHECK_TYPE(THPVariable_Check(o), kWho, ": ", name, " must be a Tensor",
                   optional ? " or None" : "", ", got ", Py_TYPE(o)->tp_name);
  return THPVariable_Unpack(o);
}

Inputs args(PyObject* const* argv, Py_ssize_t n, bool lstm, const char* fn) {
  const Py_ssize_t want = lstm ? 7 : 6;
  TORCH_CHECK_TYPE(n == want || (lstm && n == 8), fn, "() takes ", want,
                   lstm ? " or 8" : "", " positional arguments, got ", n);
  Inputs in;
  Py_ssize_t k = 0;
  in[kX] = arg(argv[k++], "input", false);
  in[kH] = arg(argv[k++], "hx", false);
  if (lstm) in[kC] = arg(argv[k++], "cx", false);
  in[kWih] = arg(argv[k++], "w_ih", false);
  in[kWhh] = arg(argv[k++], "w_hh", false);
  in[kBih] = arg(argv[k++], "b_ih", true);
  in[kBhh] = arg(argv[k++], "b_hh", true);
  if (k < n) in[kWhr] = arg(argv[k++], "w_hr", true);
  return in;
}

PyObject* run(Cell cell, const Inputs& in) {
  variable_list out;
  {
    pybind11::gil_scoped_release no_gil;
    out = step(cell, in);
  }
  using torch::autograd::utils::wrap;
  return out.size() == 1 ? wrap(std::move(out[0])) : wrap(std::make_tuple(out[0], out[1]));
}

PyObject* lstm_cell(PyObject*, PyObject* const* argv, Py_ssize_t n) {
  HANDLE_TH_ERRORS
  return run(Cell::kLSTM, args(argv, n, true, "lstm_cell"));
  END_HANDLE_TH_ERRORS
}

PyObject* gru_cell(PyObject*, PyObject* const* argv, Py_ssize_t n) {
  HANDLE_TH_ERRORS
  return run(Cell::kGRU, args(argv, n, false, "gru_cell"));
  END_HANDLE_TH_ERRORS
}

// rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu)
PyObject* rnn_cell(PyObject*, PyObject* const* argv, Py_ssize_t n) {
  HANDLE_TH_ERRORS
  TORCH_CHECK_TYPE(n == 7, "rnn_cell() takes 7 positional arguments, got ", n);
  const Inputs in = args(argv, 6, false, "rnn_cell");
  const int relu = PyObject_IsTrue(argv[6]);
  if (relu < 0) return nullptr;
  return run(relu ? Cell::kRNNReLU : Cell::kRNNTanh, in);
  END_HANDLE_TH_ERRORS
}

}  // namespace

PyMethodDef* cell_step_methods() {
  static PyMethodDef methods[] = {
      {"lstm_cell", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&lstm_cell)),
       METH_FASTCALL,
       "lstm_cell(input, hx, cx, w_ih, w_hh, b_ih, b_hh[, w_hr]) -> (h, c): one fused LSTM step"},
      {"gru_cell", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&gru_cell)),
       METH_FASTCALL, "gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh) -> h: one fused GRU step"},
      {"rnn_cell", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&rnn_cell)),
       METH_FASTCALL,
       "rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, relu) -> h: one fused Elman step"},
      {nullptr, nullptr, 0, nullptr}};
  return methods;
}

}  // namespace bridge
}  // namespace rnnk
