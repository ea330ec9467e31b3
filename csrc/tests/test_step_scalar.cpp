// Torch-free test of the step path's scalar instantiation (run by ctest): the CUDA step kernels
// run rnnkernels/step_path.h one unit per thread through a scalar IO policy, which no CPU kernel
// uses and no machine without a GPU could run. Here the same code runs one unit at a time on the
// host, with a scalar IO and ExactMath like the CUDA kernels, and must agree with the CPU's
// vector step path (csrc/cpu, tested against a naive loop in test_cpu_scan.cpp): every cell,
// projection, lengths, reverse, float64 and float32, forward and backward. Outputs start as NaN,
// so an element one side fails to write fails the comparison.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "cpu/scan_cpu.h"
#define RNNK_CPU_ISA generic  // simd.h needs a build namespace; only its dtype conversions are used
#include "cpu/simd.h"
#include "rnnkernels/step_path.h"

namespace {

using namespace rnnk;
int failures = 0;
std::mt19937_64 rng(7);

// The IO policy of cell_io.h for one unit on the host (cuda_common.cuh's ScalarIO, in A).
template <class A>
struct HostIO {
  using Acc = A;
  using T = A;
  template <class X>
  T load(const X* p) const {
    return T(cpu::to_acc(*p));
  }
  template <class X>
  void store(X* p, T v) const {
    *p = cpu::store_cast<X>(v);
  }
  T zero() const { return T(0); }
};

// The step path's Device as the CUDA step kernels run it, one unit after the other.
template <Cell C, class A, bool Backward>
struct HostScalarStep {
  const ScanArgs& a;
  const std::conditional_t<Backward, BackwardScratch, ForwardScratch>& w;

  Status to_acc(void* dst, const void* src, int64_t n) const { return copy(dst, src, n); }
  Status to_storage(void* dst, const void* src, int64_t n) const { return copy(dst, src, n); }
  Status copy(void* dst, const void* src, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) static_cast<A*>(dst)[i] = static_cast<const A*>(src)[i];
    return Status::success();
  }
  Status pointwise(int64_t s) const {
    using Step = std::conditional_t<Backward, StepBackward<C, ExactMath, A, A>,
                                    StepForward<C, ExactMath, A, A>>;
    for (int64_t b = 0; b < a.sched.B; ++b)
      for (int64_t j = 0; j < a.H; ++j) step_unit(Step(a, w, s, b), HostIO<A>{}, j);
    return Status::success();
  }
  Status projection(int64_t s) const {
    for (int64_t b = 0; b < a.sched.B; ++b)
      for (int64_t k = 0; k < a.P; ++k) projection_unit<A>(HostIO<A>{}, a, w, s, b, k);
    return Status::success();
  }
};

// The GEMMs of GemmOp on the scratch buffers, written out.
template <class A>
struct NaiveGemm {
  int64_t B, H, P, GH;
  const A *w, *wr;
  A *h, *gh, *hh, *hp;  // the forward's names; the backward's buffers are the same
  static bool call(void* ctx, GemmOp op) {
    const auto& g = *static_cast<NaiveGemm*>(ctx);
    auto mm = [&](A* out, const A* in, const A* W, int64_t n, int64_t k, bool wt, bool acc) {
      for (int64_t b = 0; b < g.B; ++b)
        for (int64_t i = 0; i < n; ++i) {
          A s = acc ? out[b * n + i] : A(0);
          for (int64_t q = 0; q < k; ++q) s += in[b * k + q] * (wt ? W[i * k + q] : W[q * n + i]);
          out[b * n + i] = s;
        }
    };
    switch (op) {
      case GemmOp::kGates: mm(g.gh, g.h, g.w, g.GH, g.P, true, false); break;
      case GemmOp::kProject: mm(g.hp, g.hh, g.wr, g.P, g.H, true, false); break;
      case GemmOp::kRecurrent: mm(g.h, g.gh, g.w, g.P, g.GH, false, true); break;
      case GemmOp::kProjectBack: mm(g.hh, g.hp, g.wr, g.H, g.P, false, false); break;
    }
    return true;
  }
};

struct Case {
  const char* name;
  Cell cell;
  int64_t T, B, H, P;
  bool reverse, lengths, bias_hn;
};

// Every output of one forward + backward; `scalar` picks the path.
template <class A>
std::vector<std::vector<A>> run(const Case& k, bool scalar) {
  const int64_t T = k.T, B = k.B, H = k.H, P = k.P, GH = gates_of(k.cell) * H;
  std::mt19937_64 gen(11);  // the same inputs for both paths
  auto randn = [&](int64_t n, double sc) {
    std::normal_distribution<double> d(0.0, sc);
    std::vector<A> v(n);
    for (A& x : v) x = A(d(gen));
    return v;
  };
  auto nans = [](int64_t n) { return std::vector<A>(n, std::numeric_limits<A>::quiet_NaN()); };
  std::vector<A> xp = randn(T * B * GH, 0.8), h0 = randn(B * P, 0.5), c0 = randn(B * H, 0.5),
                 w = randn(GH * P, 1.0 / std::sqrt(double(P))), wr = randn(P * H, 0.3),
                 bhn = randn(H, 0.3), gout = randn(T * B * P, 1.0), ghn = randn(B * P, 1.0),
                 gcn = randn(B * H, 1.0);
  std::vector<int64_t> len(B, T);
  for (int64_t b = 0; b < B && k.lengths; ++b) len[b] = b == B / 2 ? T : 1 + int64_t(gen() % T);
  std::vector<std::vector<A>> o = {nans(T * B * P), nans(B * P),      nans(B * H),
                                   nans(T * B * GH), nans(T * B * H), nans(T * B * GH),
                                   nans(B * P),      nans(B * H),     nans(T * B * P)};
  // The kernels write the workspaces at active steps only; with lengths the op zero-fills them.
  if (k.lengths) {
    o[3].assign(o[3].size(), A(0));
    o[4].assign(o[4].size(), A(0));
  }
  ScanArgs a;
  a.cell = k.cell;
  a.dtype = sizeof(A) == 8 ? DType::kFloat64 : DType::kFloat32;
  a.sched = Schedule{T, B, k.lengths ? len.data() : nullptr, k.reverse};
  a.H = H;
  a.P = P;
  a.w_hh = w.data();
  a.w_hr = P != H ? wr.data() : nullptr;
  a.b_hn = k.bias_hn ? bhn.data() : nullptr;
  a.xp = xp.data();
  a.h0 = h0.data();
  a.c0 = c0.data();
  a.out = o[0].data();
  a.h_n = o[1].data();
  a.c_n = o[2].data();
  if (k.cell == Cell::kLSTM || k.cell == Cell::kGRU) {
    a.gates = o[3].data();
    (k.cell == Cell::kLSTM ? a.cs : a.hn_lin) = o[4].data();
  }
  a.grad_out = gout.data();
  a.grad_hn = ghn.data();
  a.grad_cn = gcn.data();
  a.dxp = o[5].data();
  a.dh0 = o[6].data();
  a.dc0 = o[7].data();
  a.dh_all = P != H ? o[8].data() : nullptr;
  std::vector<A> h = nans(B * P), c = nans(B * H), gh = nans(B * GH), hh = nans(B * H),
                 hp = nans(B * P);
  NaiveGemm<A> g{B, H, P, GH, w.data(), wr.data(), h.data(), gh.data(), hh.data(), hp.data()};
  const GemmCallback cb{&g, &NaiveGemm<A>::call};
  const ForwardScratch fs{h.data(), c.data(), gh.data(), hh.data(), hp.data(), nullptr};
  const BackwardScratch bs{h.data(), c.data(), gh.data(), hh.data(), hp.data()};
  Status st;
  if (!scalar) {
    st = cpu::forward_gemm(a, fs, cb);
    if (st.ok()) st = cpu::backward_gemm(a, bs, cb);
  } else {
    st = dispatch<float, double, void, void>(a, [&](auto cell, auto*) {
      constexpr Cell Cc = decltype(cell)::value;
      Status s = step_path<Cc>(a, fs, cb, HostScalarStep<Cc, A, false>{a, fs});
      return s.ok() ? step_path<Cc>(a, bs, cb, HostScalarStep<Cc, A, true>{a, bs}) : s;
    });
  }
  if (!st.ok()) {
    std::printf("FAIL %s: %s\n", k.name, st.what);
    ++failures;
  }
  // what the case does not have stays NaN on both sides: out of the comparison
  const bool has[] = {true, true, k.cell == Cell::kLSTM, GH > H, GH > H, true, true,
                      k.cell == Cell::kLSTM, P != H};
  for (size_t i = 0; i < o.size(); ++i)
    if (!has[i]) o[i].clear();
  return o;
}

template <class A>
void compare(const Case& k, double tol) {
  static const char* names[] = {"out", "h_n", "c_n", "gates", "ws", "dxp", "dh0", "dc0", "dh_all"};
  const auto v = run<A>(k, false), s = run<A>(k, true);
  for (size_t i = 0; i < v.size(); ++i)
    for (size_t e = 0; e < v[i].size(); ++e) {
      const double x = double(v[i][e]), y = double(s[i][e]);
      if (!(std::fabs(x - y) <= tol * (1 + std::fabs(x)))) {
        std::printf("FAIL %s (%s) %s[%zu]: vector %.10g, scalar %.10g\n", k.name,
                    sizeof(A) == 8 ? "f64" : "f32", names[i], e, x, y);
        ++failures;
        break;
      }
    }
}

}  // namespace

int main() {
  const Case cases[] = {
      {"lstm-rev-len", Cell::kLSTM, 7, 5, 19, 19, true, true, false},
      {"lstm-proj-len", Cell::kLSTM, 7, 4, 13, 5, false, true, false},
      {"lstm-proj-rev", Cell::kLSTM, 6, 3, 9, 4, true, false, false},
      {"gru-len", Cell::kGRU, 7, 5, 17, 17, false, true, true},
      {"gru-nobias-rev", Cell::kGRU, 7, 5, 17, 17, true, true, false},
      {"rnn-tanh-len", Cell::kRNNTanh, 7, 5, 21, 21, false, true, false},
      {"rnn-relu-rev-len", Cell::kRNNReLU, 7, 5, 21, 21, true, true, false},
  };
  for (const Case& k : cases) {
    compare<double>(k, 1e-12);
    compare<float>(k, 2e-5);
  }
  if (failures) {
    std::printf("test_step_scalar: %d failures\n", failures);
    return 1;
  }
  std::printf("test_step_scalar: all passed\n");
  return 0;
}
