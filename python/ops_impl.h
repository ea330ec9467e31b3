// python/ops_impl.h — the six backend functions of docs/BACKENDS.md as torch ops, written once
// for both devices and all cells. Each validates its inputs (clear TORCH_CHECK messages that name
// the backend and the argument), allocates the outputs, fills ScanArgs and hands over to the
// device's Runner:
//
//   struct Runner {
//     static constexpr at::DeviceType device;  static const char* name();   // "cpu" | "cuda"
//     static void check_dtype(const Checker&);                              // device's dtypes
//     static void run(const ScanArgs&, const Weights&, const at::TensorOptions& acc,
//                     bool backward);
//   };
//
// Runner does the device part: scratch buffers, the per-step GEMM through ATen (cuBLAS / MKL),
// or the fused kernel, and turns a failed Status into an error. scan_forward / scan_backward do
// the rest for every cell; the six ops only say which arguments their cell has.
#pragma once

#include <array>
#include <tuple>
#include <vector>

#include "bridge.h"

namespace rnnk {
namespace bridge {

// Weights in the accumulation dtype, contiguous (a no-op for float32/float64 inputs), and W_hh
// as given (contiguous), for kernels that keep it in the storage dtype (CUDA persistent path).
struct Weights {
  Tensor w_hh, w_hr, b_hn;
  Tensor w_hh_dt;
};

inline bool given(const OptTensor& t) { return t.has_value() && t->defined(); }

inline Weights acc_weights(const Tensor& w_hh, const OptTensor& w_hr, const OptTensor& b_hn) {
  const auto acc = acc_type(w_hh.scalar_type());
  Weights w;
  w.w_hh_dt = w_hh.contiguous();
  w.w_hh = w.w_hh_dt.to(acc);
  if (given(w_hr)) w.w_hr = w_hr->to(acc).contiguous();
  if (given(b_hn)) w.b_hn = b_hn->to(acc).contiguous();
  return w;
}

inline void check_3d(const Checker& ck, const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 3, ck.who, ": ", name, " must be 3-D [T, B, N], got shape ", t.sizes());
}
inline void check_2d(const Checker& ck, const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, ck.who, ": ", name, " must be 2-D, got shape ", t.sizes());
}

// One call of an op: the checks, the ScanArgs the kernels get, and the contiguous inputs kept
// alive until they have run. Each method checks one group of arguments, in the order the
// messages should come (the tensors as listed in the schema, then the lengths).
template <class R>
class Scan {
 public:
  Scan(const char* fn, Cell cell, const Tensor& like)
      : ck{std::string("rnnkernels ") + R::name() + " backend: " + fn, R::device,
           like.scalar_type()},
        dt_(like.options()),
        acc_(like.options().dtype(acc_type(like.scalar_type()))) {
    R::check_dtype(ck);
    a.cell = cell;
    a.dtype = to_dtype(like.scalar_type());
  }

  void sizes(int64_t T, int64_t B, int64_t H, int64_t P) {
    a.sched.T = T;
    a.sched.B = B;
    a.H = H;
    a.P = P;
  }

  // An input in the storage dtype, for field `f` of ScanArgs. (`out` is a forward result that
  // the backward reads, hence the second overload.)
  void input(const void* ScanArgs::*f, const Tensor& t, const char* name, at::IntArrayRef shape) {
    ck.tensor(t, name, shape);
    a.*f = keep(t);
  }
  void input(void* ScanArgs::*f, const Tensor& t, const char* name, at::IntArrayRef shape) {
    ck.tensor(t, name, shape);
    a.*f = const_cast<void*>(keep(t));
  }
  // A workspace the forward saved, in the accumulation dtype.
  void saved(void* ScanArgs::*f, const Tensor& t, const char* name, at::IntArrayRef shape) {
    ck.workspace(t, name, shape);
    a.*f = const_cast<void*>(keep(t));
  }

  // w_hh [G·H, P]; w_hr [P, H], without which P must be H (`p_from` names the tensor P was read
  // from); b_hn [H]. The kernels get them in the accumulation dtype.
  void weights(const Tensor& w_hh, const OptTensor& w_hr, const OptTensor& b_hn,
               const char* p_from) {
    ck.tensor(w_hh, "w_hh", {gates_of(a.cell) * a.H, a.P});
    if (given(w_hr))
      ck.tensor(*w_hr, "w_hr", {a.P, a.H});
    else
      TORCH_CHECK(a.P == a.H, ck.who, ": ", p_from, " has ", a.P,
                  " features but the hidden size is ", a.H, " and there is no projection (w_hr)");
    if (given(b_hn)) ck.tensor(*b_hn, "b_hn", {a.H});
    w_ = acc_weights(w_hh, w_hr, b_hn);
    a.w_hh = ptr(w_.w_hh);
    a.w_hr = w_.w_hr.defined() ? w_.w_hr.data_ptr() : nullptr;
    a.b_hn = w_.b_hn.defined() ? w_.b_hn.data_ptr() : nullptr;
  }

  void schedule(const OptTensor& lengths, bool reverse) {
    lengths_ = ck.lengths(lengths, a.sched.T, a.sched.B);
    a.sched.lengths = lengths_.defined() ? lengths_.data_ptr<int64_t>() : nullptr;
    a.sched.reverse = reverse;
  }

  // An output of the storage dtype (or, `acc`, of the accumulation dtype), for field `f`.
  Tensor output(void* ScanArgs::*f, at::IntArrayRef shape, bool acc = false) {
    Tensor t = alloc(shape, acc ? acc_ : dt_);
    a.*f = mptr(t);
    return t;
  }
  // A workspace the forward saves for the backward; empty when not `save` (inference). The
  // kernels write it at active steps only; with lengths, the rest is zeroed so that the op's
  // outputs are a function of its inputs (torch.library.opcheck compares eager and traced runs;
  // AOT autograd may recompute the op). Without lengths every element is written: no fill.
  Tensor workspace(void* ScanArgs::*f, bool save, at::IntArrayRef shape) {
    Tensor t = !save                ? alloc({0}, acc_)
               : lengths_.defined() ? pooled_empty(shape, acc_).zero_()
                                    : alloc(shape, acc_);
    a.*f = mptr(t);
    return t;
  }

  void run(bool backward) { R::run(a, w_, acc_, backward); }

  const Checker ck;
  ScanArgs a;

 private:
  const void* keep(const Tensor& t) {
    kept_.push_back(t.contiguous());
    return ptr(kept_.back());
  }

  at::TensorOptions dt_, acc_;
  Weights w_;
  Tensor lengths_;
  std::vector<Tensor> kept_;
};

// The forward of any cell: c0 for the LSTM only (else null), w_hr for an LSTM with projection,
// b_hn for a GRU with bias. Returns out, h_n, c_n, gates and the cell's [T, B, H] workspace
// (LSTM cs, GRU hn_lin); what the cell does not have stays undefined.
template <class R>
std::array<Tensor, 5> scan_forward(const char* fn, Cell cell, const Tensor& xp, const Tensor& h0,
                                   const Tensor* c0, const Tensor& w_hh, const OptTensor& w_hr,
                                   const OptTensor& b_hn, const OptTensor& lengths, bool reverse,
                                   bool save) {
  Scan<R> sc(fn, cell, xp);
  const bool lstm = cell == Cell::kLSTM;
  const int64_t G = gates_of(cell);
  check_3d(sc.ck, xp, "xp");
  if (lstm) check_2d(sc.ck, h0, "h0");  // its width is the state size P
  const int64_t T = xp.size(0), B = xp.size(1), GH = xp.size(2), H = GH / G;
  TORCH_CHECK(GH % G == 0, sc.ck.who, ": xp's last dimension (", GH, ") must be ", G,
              "*hidden_size");
  sc.sizes(T, B, H, lstm ? h0.size(1) : H);
  const int64_t P = sc.a.P;
  sc.input(&ScanArgs::xp, xp, "xp", {T, B, GH});
  sc.input(&ScanArgs::h0, h0, "h0", {B, P});
  if (c0) sc.input(&ScanArgs::c0, *c0, "c0", {B, H});
  sc.weights(w_hh, w_hr, b_hn, "h0");
  sc.schedule(lengths, reverse);

  std::array<Tensor, 5> r;
  r[0] = sc.output(&ScanArgs::out, {T, B, P});
  r[1] = sc.output(&ScanArgs::h_n, {B, P});
  if (c0) r[2] = sc.output(&ScanArgs::c_n, {B, H});
  if (G > 1) {  // the Elman RNN saves nothing: its derivative comes from `out`
    r[3] = sc.workspace(&ScanArgs::gates, save, {T, B, GH});
    r[4] = sc.workspace(lstm ? &ScanArgs::cs : &ScanArgs::hn_lin, save, {T, B, H});
  }
  sc.run(false);
  return r;
}

// The backward of any cell; grad_cn and c0 for the LSTM only, the saved `gates` and workspace
// (named `ws_name`) for the cells that save them. Returns dxp, dh0, dc0 and the LSTM's dh_all
// (empty without projection).
template <class R>
std::array<Tensor, 4> scan_backward(const char* fn, Cell cell, const Tensor& grad_out,
                                    const Tensor& grad_hn, const Tensor* grad_cn,
                                    const Tensor& h0, const Tensor* c0, const Tensor& w_hh,
                                    const OptTensor& w_hr, const OptTensor& b_hn,
                                    const OptTensor& lengths, bool reverse, const Tensor& out,
                                    const Tensor* gates, const Tensor* ws, const char* ws_name) {
  Scan<R> sc(fn, cell, h0);
  const bool lstm = cell == Cell::kLSTM;
  check_3d(sc.ck, out, "out");
  if (lstm) {  // H is c0's width, P out's
    check_2d(sc.ck, h0, "h0");
    check_2d(sc.ck, *c0, "c0");
  }
  const int64_t T = out.size(0), B = out.size(1), P = out.size(2), H = lstm ? c0->size(1) : P,
                GH = gates_of(cell) * H;
  sc.sizes(T, B, H, P);
  sc.input(&ScanArgs::out, out, "out", {T, B, P});
  sc.input(&ScanArgs::grad_out, grad_out, "grad_out", {T, B, P});
  sc.input(&ScanArgs::grad_hn, grad_hn, "grad_hn", {B, P});
  if (grad_cn) sc.input(&ScanArgs::grad_cn, *grad_cn, "grad_cn", {B, H});
  sc.input(&ScanArgs::h0, h0, "h0", {B, P});
  if (c0) sc.input(&ScanArgs::c0, *c0, "c0", {B, H});
  sc.weights(w_hh, w_hr, b_hn, "out");
  if (gates) {
    sc.saved(&ScanArgs::gates, *gates, "gates", {T, B, GH});
    sc.saved(lstm ? &ScanArgs::cs : &ScanArgs::hn_lin, *ws, ws_name, {T, B, H});
  }
  sc.schedule(lengths, reverse);

  std::array<Tensor, 4> r;
  r[0] = sc.output(&ScanArgs::dxp, {T, B, GH});
  r[1] = sc.output(&ScanArgs::dh0, {B, P});
  if (lstm) {
    r[2] = sc.output(&ScanArgs::dc0, {B, H});
    r[3] = given(w_hr) ? sc.output(&ScanArgs::dh_all, {T, B, P}, true)
                       : sc.output(&ScanArgs::dh_all, {0}, true);
  }
  sc.run(true);
  return r;
}

// ------------------------------------------------------------- the six ops, by their schemas
template <class R>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& xp, const Tensor& h0, const Tensor& c0, const Tensor& w_hh,
    const OptTensor& w_hr, const OptTensor& lengths, bool reverse, bool save) {
  const auto r = scan_forward<R>("lstm_forward", Cell::kLSTM, xp, h0, &c0, w_hh, w_hr,
                                 std::nullopt, lengths, reverse, save);
  return {r[0], r[1], r[2], r[3], r[4]};
}

template <class R>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& xp, const Tensor& h0,
                                                       const Tensor& w_hh, const OptTensor& b_hn,
                                                       const OptTensor& lengths, bool reverse,
                                                       bool save) {
  const auto r = scan_forward<R>("gru_forward", Cell::kGRU, xp, h0, nullptr, w_hh, std::nullopt,
                                 b_hn, lengths, reverse, save);
  return {r[0], r[1], r[3], r[4]};
}

template <class R>
std::tuple<Tensor, Tensor> rnn_forward(const Tensor& xp, const Tensor& h0, const Tensor& w_hh,
                                       const OptTensor& lengths, bool reverse, bool relu,
                                       bool save) {
  const auto r = scan_forward<R>("rnn_forward", relu ? Cell::kRNNReLU : Cell::kRNNTanh, xp, h0,
                                 nullptr, w_hh, std::nullopt, std::nullopt, lengths, reverse,
                                 save);
  return {r[0], r[1]};
}

template <class R>
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_out, const Tensor& grad_hn, const Tensor& grad_cn, const Tensor& h0,
    const Tensor& c0, const Tensor& w_hh, const OptTensor& w_hr, const OptTensor& lengths,
    bool reverse, const Tensor& out, const Tensor& gates, const Tensor& cs) {
  const auto r = scan_backward<R>("lstm_backward", Cell::kLSTM, grad_out, grad_hn, &grad_cn, h0,
                                  &c0, w_hh, w_hr, std::nullopt, lengths, reverse, out, &gates,
                                  &cs, "cs");
  return {r[0], r[1], r[2], r[3]};
}

template <class R>
std::tuple<Tensor, Tensor> gru_backward(const Tensor& grad_out, const Tensor& grad_hn,
                                        const Tensor& h0, const Tensor& w_hh,
                                        const OptTensor& b_hn, const OptTensor& lengths,
                                        bool reverse, const Tensor& out, const Tensor& gates,
                                        const Tensor& hn_lin) {
  const auto r = scan_backward<R>("gru_backward", Cell::kGRU, grad_out, grad_hn, nullptr, h0,
                                  nullptr, w_hh, std::nullopt, b_hn, lengths, reverse, out,
                                  &gates, &hn_lin, "hn_lin");
  return {r[0], r[1]};
}

template <class R>
std::tuple<Tensor, Tensor> rnn_backward(const Tensor& grad_out, const Tensor& grad_hn,
                                        const Tensor& h0, const Tensor& w_hh,
                                        const OptTensor& lengths, bool reverse, bool relu,
                                        const Tensor& out) {
  const auto r = scan_backward<R>("rnn_backward", relu ? Cell::kRNNReLU : Cell::kRNNTanh,
                                  grad_out, grad_hn, nullptr, h0, nullptr, w_hh, std::nullopt,
                                  std::nullopt, lengths, reverse, out, nullptr, nullptr, "");
  return {r[0], r[1]};
}

// Registers the six functions for a device inside TORCH_LIBRARY_IMPL(rnnkernels_C, <Key>, m).
#define RNNK_REGISTER_SCAN_OPS(m, Runner)                                  \
  do {                                                                     \
    m.impl("lstm_forward", &::rnnk::bridge::lstm_forward<Runner>);         \
    m.impl("gru_forward", &::rnnk::bridge::gru_forward<Runner>);           \
    m.impl("rnn_forward", &::rnnk::bridge::rnn_forward<Runner>);           \
    m.impl("lstm_backward", &::rnnk::bridge::lstm_backward<Runner>);       \
    m.impl("gru_backward", &::rnnk::bridge::gru_backward<Runner>);         \
    m.impl("rnn_backward", &::rnnk::bridge::rnn_backward<Runner>);         \
  } while (0)

}  // namespace bridge
}  // namespace rnnk
