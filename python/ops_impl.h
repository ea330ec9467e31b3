// python/ops_impl.h — the six backend functions of docs/BACKENDS.md as torch ops, written once
// for both devices. Each validates its inputs (clear TORCH_CHECK messages that name the backend
// and the argument), allocates the outputs, fills ScanArgs and hands over to the device's Runner:
//
//   struct Runner {
//     static constexpr at::DeviceType device;  static const char* name();   // "cpu" | "cuda"
//     static void check_dtype(const Checker&);                              // device's dtypes
//     static void forward(const ScanArgs&, const Weights&, const at::TensorOptions& acc);
//     static void backward(const ScanArgs&, const Weights&, const at::TensorOptions& acc);
//   };
//
// Runner does the device part: scratch buffers, the per-step GEMM through ATen (cuBLAS / MKL /
// oneDNN), or the fused kernel, and turns a failed Status into an error.
#pragma once

#include <tuple>

#include "bridge.h"

namespace rnnk {
namespace bridge {

// Weights in the accumulation dtype, contiguous (a no-op for float32/float64 inputs), and W_hh
// as given (contiguous), for kernels that keep it in the storage dtype (CUDA persistent path).
struct Weights {
  Tensor w_hh, w_hr, b_hn;
  Tensor w_hh_dt;
};

inline Weights acc_weights(const Tensor& w_hh, const OptTensor& w_hr, const OptTensor& b_hn) {
  const auto acc = acc_type(w_hh.scalar_type());
  Weights w;
  w.w_hh_dt = w_hh.contiguous();
  w.w_hh = w.w_hh_dt.to(acc);
  if (w_hr.has_value() && w_hr->defined()) w.w_hr = w_hr->to(acc).contiguous();
  if (b_hn.has_value() && b_hn->defined()) w.b_hn = b_hn->to(acc).contiguous();
  return w;
}

inline void set_weights(ScanArgs& a, const Weights& w) {
  a.w_hh = ptr(w.w_hh);
  a.w_hr = w.w_hr.defined() ? w.w_hr.data_ptr() : nullptr;
  a.b_hn = w.b_hn.defined() ? w.b_hn.data_ptr() : nullptr;
}

template <class R>
Checker checker(const char* fn, const Tensor& like) {
  return Checker{std::string("rnnkernels ") + R::name() + " backend: " + fn, R::device,
                 like.scalar_type()};
}

// Saved workspaces. The kernels write them at active steps only; with lengths, the rest is
// zeroed so that the op's outputs are a function of its inputs (torch.library.opcheck compares
// eager and traced runs; AOT autograd may recompute the op). Without lengths every element is
// written, so no fill is paid.
inline Tensor alloc_ws(bool save, at::IntArrayRef shape, const Tensor& lengths,
                       const at::TensorOptions& acc) {
  if (!save) return alloc({0}, acc);
  return lengths.defined() ? pooled_empty(shape, acc).zero_() : alloc(shape, acc);
}

inline void check_3d(const Checker& ck, const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 3, ck.who, ": ", name, " must be 3-D [T, B, N], got shape ", t.sizes());
}
inline void check_2d(const Checker& ck, const Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 2, ck.who, ": ", name, " must be 2-D, got shape ", t.sizes());
}

inline ScanArgs base_args(Cell cell, at::ScalarType dt, int64_t T, int64_t B, int64_t H, int64_t P,
                          const Tensor& lengths, bool reverse) {
  ScanArgs a;
  a.cell = cell;
  a.dtype = to_dtype(dt);
  a.sched.T = T;
  a.sched.B = B;
  a.sched.lengths = lengths.defined() ? lengths.data_ptr<int64_t>() : nullptr;
  a.sched.reverse = reverse;
  a.H = H;
  a.P = P;
  return a;
}

// ------------------------------------------------------------------------------ forwards
template <class R>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_forward(
    const Tensor& xp_, const Tensor& h0_, const Tensor& c0_, const Tensor& w_hh_,
    const OptTensor& w_hr_, const OptTensor& lengths_, bool reverse, bool save) {
  const Checker ck = checker<R>("lstm_forward", xp_);
  R::check_dtype(ck);
  check_3d(ck, xp_, "xp");
  check_2d(ck, h0_, "h0");
  const int64_t T = xp_.size(0), B = xp_.size(1), GH = xp_.size(2);
  TORCH_CHECK(GH % 4 == 0, ck.who, ": xp's last dimension (", GH, ") must be 4*hidden_size");
  const int64_t H = GH / 4, P = h0_.size(1);
  const bool proj = w_hr_.has_value() && w_hr_->defined();
  ck.tensor(xp_, "xp", {T, B, GH});
  ck.tensor(h0_, "h0", {B, P});
  ck.tensor(c0_, "c0", {B, H});
  ck.tensor(w_hh_, "w_hh", {GH, P});
  if (proj)
    ck.tensor(*w_hr_, "w_hr", {P, H});
  else
    TORCH_CHECK(P == H, ck.who, ": h0 has ", P, " features but the hidden size is ", H,
                " and there is no projection (w_hr)");
  const Tensor lengths = ck.lengths(lengths_, T, B);
  const Tensor xp = xp_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous();
  const Weights w = acc_weights(w_hh_, w_hr_, std::nullopt);
  const auto acc = xp.options().dtype(acc_type(xp.scalar_type()));

  Tensor out = alloc({T, B, P}, xp.options());
  Tensor h_n = alloc({B, P}, xp.options());
  Tensor c_n = alloc({B, H}, xp.options());
  Tensor gates = alloc_ws(save, {T, B, GH}, lengths, acc);
  Tensor cs = alloc_ws(save, {T, B, H}, lengths, acc);

  ScanArgs a = base_args(Cell::kLSTM, xp.scalar_type(), T, B, H, P, lengths, reverse);
  set_weights(a, w);
  a.xp = ptr(xp);
  a.h0 = ptr(h0);
  a.c0 = ptr(c0);
  a.out = mptr(out);
  a.h_n = mptr(h_n);
  a.c_n = mptr(c_n);
  a.gates = mptr(gates);
  a.aux = mptr(cs);
  R::forward(a, w, acc);
  return {out, h_n, c_n, gates, cs};
}

template <class R>
std::tuple<Tensor, Tensor, Tensor, Tensor> gru_forward(const Tensor& xp_, const Tensor& h0_,
                                                       const Tensor& w_hh_, const OptTensor& b_hn_,
                                                       const OptTensor& lengths_, bool reverse,
                                                       bool save) {
  const Checker ck = checker<R>("gru_forward", xp_);
  R::check_dtype(ck);
  check_3d(ck, xp_, "xp");
  const int64_t T = xp_.size(0), B = xp_.size(1), GH = xp_.size(2);
  TORCH_CHECK(GH % 3 == 0, ck.who, ": xp's last dimension (", GH, ") must be 3*hidden_size");
  const int64_t H = GH / 3;
  ck.tensor(xp_, "xp", {T, B, GH});
  ck.tensor(h0_, "h0", {B, H});
  ck.tensor(w_hh_, "w_hh", {GH, H});
  if (b_hn_.has_value() && b_hn_->defined()) ck.tensor(*b_hn_, "b_hn", {H});
  const Tensor lengths = ck.lengths(lengths_, T, B);
  const Tensor xp = xp_.contiguous(), h0 = h0_.contiguous();
  const Weights w = acc_weights(w_hh_, std::nullopt, b_hn_);
  const auto acc = xp.options().dtype(acc_type(xp.scalar_type()));

  Tensor out = alloc({T, B, H}, xp.options());
  Tensor h_n = alloc({B, H}, xp.options());
  Tensor gates = alloc_ws(save, {T, B, GH}, lengths, acc);
  Tensor hn_lin = alloc_ws(save, {T, B, H}, lengths, acc);

  ScanArgs a = base_args(Cell::kGRU, xp.scalar_type(), T, B, H, H, lengths, reverse);
  set_weights(a, w);
  a.xp = ptr(xp);
  a.h0 = ptr(h0);
  a.out = mptr(out);
  a.h_n = mptr(h_n);
  a.gates = mptr(gates);
  a.aux = mptr(hn_lin);
  R::forward(a, w, acc);
  return {out, h_n, gates, hn_lin};
}

template <class R>
std::tuple<Tensor, Tensor> rnn_forward(const Tensor& xp_, const Tensor& h0_, const Tensor& w_hh_,
                                       const OptTensor& lengths_, bool reverse, bool relu,
                                       bool save) {
  (void)save;  // the Elman RNN saves nothing: its derivative comes from `out`
  const Checker ck = checker<R>("rnn_forward", xp_);
  R::check_dtype(ck);
  check_3d(ck, xp_, "xp");
  const int64_t T = xp_.size(0), B = xp_.size(1), H = xp_.size(2);
  ck.tensor(xp_, "xp", {T, B, H});
  ck.tensor(h0_, "h0", {B, H});
  ck.tensor(w_hh_, "w_hh", {H, H});
  const Tensor lengths = ck.lengths(lengths_, T, B);
  const Tensor xp = xp_.contiguous(), h0 = h0_.contiguous();
  const Weights w = acc_weights(w_hh_, std::nullopt, std::nullopt);
  const auto acc = xp.options().dtype(acc_type(xp.scalar_type()));

  Tensor out = alloc({T, B, H}, xp.options());
  Tensor h_n = alloc({B, H}, xp.options());

  ScanArgs a = base_args(relu ? Cell::kRNNReLU : Cell::kRNNTanh, xp.scalar_type(), T, B, H, H,
                         lengths, reverse);
  set_weights(a, w);
  a.xp = ptr(xp);
  a.h0 = ptr(h0);
  a.out = mptr(out);
  a.h_n = mptr(h_n);
  R::forward(a, w, acc);
  return {out, h_n};
}

// ----------------------------------------------------------------------------- backwards
template <class R>
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_backward(
    const Tensor& grad_out_, const Tensor& grad_hn_, const Tensor& grad_cn_, const Tensor& h0_,
    const Tensor& c0_, const Tensor& w_hh_, const OptTensor& w_hr_, const OptTensor& lengths_,
    bool reverse, const Tensor& out_, const Tensor& gates_, const Tensor& cs_) {
  const Checker ck = checker<R>("lstm_backward", h0_);
  R::check_dtype(ck);
  check_3d(ck, out_, "out");
  check_2d(ck, h0_, "h0");
  check_2d(ck, c0_, "c0");
  const int64_t T = out_.size(0), B = out_.size(1), P = out_.size(2), H = c0_.size(1),
                GH = 4 * H;
  const bool proj = w_hr_.has_value() && w_hr_->defined();
  ck.tensor(out_, "out", {T, B, P});
  ck.tensor(grad_out_, "grad_out", {T, B, P});
  ck.tensor(grad_hn_, "grad_hn", {B, P});
  ck.tensor(grad_cn_, "grad_cn", {B, H});
  ck.tensor(h0_, "h0", {B, P});
  ck.tensor(c0_, "c0", {B, H});
  ck.tensor(w_hh_, "w_hh", {GH, P});
  if (proj)
    ck.tensor(*w_hr_, "w_hr", {P, H});
  else
    TORCH_CHECK(P == H, ck.who, ": out has ", P, " features but the hidden size is ", H,
                " and there is no projection (w_hr)");
  ck.workspace(gates_, "gates", {T, B, GH});
  ck.workspace(cs_, "cs", {T, B, H});
  const Tensor lengths = ck.lengths(lengths_, T, B);
  const Tensor gout = grad_out_.contiguous(), ghn = grad_hn_.contiguous(),
               gcn = grad_cn_.contiguous(), h0 = h0_.contiguous(), c0 = c0_.contiguous(),
               out = out_.contiguous(), gates = gates_.contiguous(), cs = cs_.contiguous();
  const Weights w = acc_weights(w_hh_, w_hr_, std::nullopt);
  const auto acc = h0.options().dtype(acc_type(h0.scalar_type()));

  Tensor dxp = alloc({T, B, GH}, h0.options());
  Tensor dh0 = alloc({B, P}, h0.options());
  Tensor dc0 = alloc({B, H}, h0.options());
  Tensor dh_all = proj ? alloc({T, B, P}, acc) : alloc({0}, acc);

  ScanArgs a = base_args(Cell::kLSTM, h0.scalar_type(), T, B, H, P, lengths, reverse);
  set_weights(a, w);
  a.h0 = ptr(h0);
  a.c0 = ptr(c0);
  a.out = const_cast<void*>(ptr(out));
  a.gates = const_cast<void*>(ptr(gates));
  a.aux = const_cast<void*>(ptr(cs));
  a.grad_out = ptr(gout);
  a.grad_hn = ptr(ghn);
  a.grad_cn = ptr(gcn);
  a.dxp = mptr(dxp);
  a.dh0 = mptr(dh0);
  a.dc0 = mptr(dc0);
  a.dh_all = mptr(dh_all);
  R::backward(a, w, acc);
  return {dxp, dh0, dc0, dh_all};
}

template <class R>
std::tuple<Tensor, Tensor> gru_backward(const Tensor& grad_out_, const Tensor& grad_hn_,
                                        const Tensor& h0_, const Tensor& w_hh_,
                                        const OptTensor& b_hn_, const OptTensor& lengths_,
                                        bool reverse, const Tensor& out_, const Tensor& gates_,
                                        const Tensor& hn_lin_) {
  const Checker ck = checker<R>("gru_backward", h0_);
  R::check_dtype(ck);
  check_3d(ck, out_, "out");
  const int64_t T = out_.size(0), B = out_.size(1), H = out_.size(2), GH = 3 * H;
  ck.tensor(out_, "out", {T, B, H});
  ck.tensor(grad_out_, "grad_out", {T, B, H});
  ck.tensor(grad_hn_, "grad_hn", {B, H});
  ck.tensor(h0_, "h0", {B, H});
  ck.tensor(w_hh_, "w_hh", {GH, H});
  if (b_hn_.has_value() && b_hn_->defined()) ck.tensor(*b_hn_, "b_hn", {H});
  ck.workspace(gates_, "gates", {T, B, GH});
  ck.workspace(hn_lin_, "hn_lin", {T, B, H});
  const Tensor lengths = ck.lengths(lengths_, T, B);
  const Tensor gout = grad_out_.contiguous(), ghn = grad_hn_.contiguous(), h0 = h0_.contiguous(),
               out = out_.contiguous(), gates = gates_.contiguous(), hn = hn_lin_.contiguous();
  const Weights w = acc_weights(w_hh_, std::nullopt, b_hn_);
  const auto acc = h0.options().dtype(acc_type(h0.scalar_type()));

  Tensor dxp = alloc({T, B, GH}, h0.options());
  Tensor dh0 = alloc({B, H}, h0.options());

  ScanArgs a = base_args(Cell::kGRU, h0.scalar_type(), T, B, H, H, lengths, reverse);
  set_weights(a, w);
  a.h0 = ptr(h0);
  a.out = const_cast<void*>(ptr(out));
  a.gates = const_cast<void*>(ptr(gates));
  a.aux = const_cast<void*>(ptr(hn));
  a.grad_out = ptr(gout);
  a.grad_hn = ptr(ghn);
  a.dxp = mptr(dxp);
  a.dh0 = mptr(dh0);
  R::backward(a, w, acc);
  return {dxp, dh0};
}

template <class R>
std::tuple<Tensor, Tensor> rnn_backward(const Tensor& grad_out_, const Tensor& grad_hn_,
                                        const Tensor& h0_, const Tensor& w_hh_,
                                        const OptTensor& lengths_, bool reverse, bool relu,
                                        const Tensor& out_) {
  const Checker ck = checker<R>("rnn_backward", h0_);
  R::check_dtype(ck);
  check_3d(ck, out_, "out");
  const int64_t T = out_.size(0), B = out_.size(1), H = out_.size(2);
  ck.tensor(out_, "out", {T, B, H});
  ck.tensor(grad_out_, "grad_out", {T, B, H});
  ck.tensor(grad_hn_, "grad_hn", {B, H});
  ck.tensor(h0_, "h0", {B, H});
  ck.tensor(w_hh_, "w_hh", {H, H});
  const Tensor lengths = ck.lengths(lengths_, T, B);
  const Tensor gout = grad_out_.contiguous(), ghn = grad_hn_.contiguous(), h0 = h0_.contiguous(),
               out = out_.contiguous();
  const Weights w = acc_weights(w_hh_, std::nullopt, std::nullopt);
  const auto acc = h0.options().dtype(acc_type(h0.scalar_type()));

  Tensor dxp = alloc({T, B, H}, h0.options());
  Tensor dh0 = alloc({B, H}, h0.options());

  ScanArgs a = base_args(relu ? Cell::kRNNReLU : Cell::kRNNTanh, h0.scalar_type(), T, B, H, H,
                         lengths, reverse);
  set_weights(a, w);
  a.h0 = ptr(h0);
  a.out = const_cast<void*>(ptr(out));
  a.grad_out = ptr(gout);
  a.grad_hn = ptr(ghn);
  a.dxp = mptr(dxp);
  a.dh0 = mptr(dh0);
  R::backward(a, w, acc);
  return {dxp, dh0};
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
