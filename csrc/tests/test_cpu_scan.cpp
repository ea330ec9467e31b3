// Torch-free tests of the CPU scans (csrc/cpu), run by ctest:
//
// * forward of every cell (LSTM, LSTM with projection, GRU with and without b_hn, RNN tanh/relu),
//   with unsorted lengths and reverse, odd sizes, against a naive loop written here (double);
// * backward against central finite differences of that naive forward, along random directions
//   (double precision, so the differences are accurate to ~1e-9);
// * both paths (GEMM with a naive GEMM callback, fused with a forced 2-thread team) and both
//   instruction-set builds (generic; AVX2, AVX-512 when the CPU has them), in float64 and float32.
// Outputs are pre-filled with NaN so an element a kernel forgets to write fails the comparison.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "cpu/scan_cpu.h"
#include "rnnkernels/scan_params.h"

namespace {

using rnnk::Cell;
using rnnk::GemmOp;
using rnnk::ScanArgs;
using rnnk::BackwardScratch;
using rnnk::ForwardScratch;

int failures = 0;
std::mt19937_64 rng(99);

std::vector<double> randn(size_t n, double scale) {
  std::normal_distribution<double> d(0.0, scale);
  std::vector<double> v(n);
  for (double& x : v) x = d(rng);
  return v;
}

struct Case {
  const char* name;
  Cell cell;
  int64_t T, B, H, P;
  bool reverse, lengths, bias_hn;
};

struct Inputs {  // double master copies
  std::vector<double> xp, h0, c0, w, wr, bhn, gout, ghn, gcn;
  std::vector<int64_t> len;
};

int gates(Cell c) { return rnnk::gates_of(c); }

// --------------------------------------------------------------------- naive forward
double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Fwd {
  std::vector<double> out, hn, cn;
};

Fwd naive_forward(const Case& k, const Inputs& in) {
  const int64_t T = k.T, B = k.B, H = k.H, P = k.P, G = gates(k.cell), GH = G * H;
  Fwd f;
  f.out.assign(T * B * P, 0.0);
  std::vector<double> h(in.h0), c(in.c0);
  for (int64_t s = 0; s < T; ++s)
    for (int64_t b = 0; b < B; ++b) {
      const int64_t L = k.lengths ? in.len[b] : T;
      if (s >= L) continue;  // out stays 0, state frozen
      const int64_t t = k.reverse ? L - 1 - s : s;
      std::vector<double> gh(GH, 0.0);
      for (int64_t g = 0; g < GH; ++g)
        for (int64_t q = 0; q < P; ++q) gh[g] += in.w[g * P + q] * h[b * P + q];
      const double* x = &in.xp[(t * B + b) * GH];
      std::vector<double> hnew(P);
      if (k.cell == Cell::kLSTM) {
        std::vector<double> hh(H);
        for (int64_t j = 0; j < H; ++j) {
          const double i = sig(x[j] + gh[j]), fg = sig(x[H + j] + gh[H + j]);
          const double u = std::tanh(x[2 * H + j] + gh[2 * H + j]);
          const double o = sig(x[3 * H + j] + gh[3 * H + j]);
          c[b * H + j] = fg * c[b * H + j] + i * u;
          hh[j] = o * std::tanh(c[b * H + j]);
        }
        for (int64_t q = 0; q < P; ++q) {
          if (P == H && in.wr.empty()) {
            hnew[q] = hh[q];
          } else {
            double v = 0;
            for (int64_t j = 0; j < H; ++j) v += in.wr[q * H + j] * hh[j];
            hnew[q] = v;
          }
        }
      } else if (k.cell == Cell::kGRU) {
        for (int64_t j = 0; j < H; ++j) {
          const double r = sig(x[j] + gh[j]), z = sig(x[H + j] + gh[H + j]);
          const double bn = in.bhn.empty() ? 0.0 : in.bhn[j];
          const double n = std::tanh(x[2 * H + j] + r * (gh[2 * H + j] + bn));
          hnew[j] = (1 - z) * n + z * h[b * H + j];
        }
      } else {
        for (int64_t j = 0; j < H; ++j) {
          const double p = x[j] + gh[j];
          hnew[j] = k.cell == Cell::kRNNReLU ? (p > 0 ? p : 0.0) : std::tanh(p);
        }
      }
      for (int64_t q = 0; q < P; ++q) {
        h[b * P + q] = hnew[q];
        f.out[(t * B + b) * P + q] = hnew[q];
      }
    }
  f.hn = h;
  f.cn = c;
  return f;
}

double naive_loss(const Case& k, const Inputs& in) {
  const Fwd f = naive_forward(k, in);
  double l = 0;
  for (size_t i = 0; i < f.out.size(); ++i) l += in.gout[i] * f.out[i];
  for (size_t i = 0; i < f.hn.size(); ++i) l += in.ghn[i] * f.hn[i];
  if (k.cell == Cell::kLSTM)
    for (size_t i = 0; i < f.cn.size(); ++i) l += in.gcn[i] * f.cn[i];
  return l;
}

// ------------------------------------------------------------------ running the kernels
template <class A>
std::vector<A> conv(const std::vector<double>& v) {
  return std::vector<A>(v.begin(), v.end());
}
template <class A>
std::vector<A> nans(size_t n) {
  return std::vector<A>(n, std::numeric_limits<A>::quiet_NaN());
}

template <class A>
struct NaiveGemm {
  int64_t B, H, P, GH;
  const A *w, *wr;
  A *h, *gh, *hh, *hp;
  static bool call(void* ctx, GemmOp op) {
    auto& g = *static_cast<NaiveGemm*>(ctx);
    for (int64_t b = 0; b < g.B; ++b) {
      if (op == GemmOp::kGates)
        for (int64_t r = 0; r < g.GH; ++r) {
          A s = 0;
          for (int64_t k = 0; k < g.P; ++k) s += g.h[b * g.P + k] * g.w[r * g.P + k];
          g.gh[b * g.GH + r] = s;
        }
      else if (op == GemmOp::kProject)
        for (int64_t p = 0; p < g.P; ++p) {
          A s = 0;
          for (int64_t k = 0; k < g.H; ++k) s += g.hh[b * g.H + k] * g.wr[p * g.H + k];
          g.hp[b * g.P + p] = s;
        }
      else if (op == GemmOp::kRecurrent)
        for (int64_t k = 0; k < g.P; ++k) {
          A s = g.h[b * g.P + k];
          for (int64_t r = 0; r < g.GH; ++r) s += g.gh[b * g.GH + r] * g.w[r * g.P + k];
          g.h[b * g.P + k] = s;
        }
      else
        for (int64_t k = 0; k < g.H; ++k) {
          A s = 0;
          for (int64_t p = 0; p < g.P; ++p) s += g.hp[b * g.P + p] * g.wr[p * g.H + k];
          g.hh[b * g.H + k] = s;
        }
    }
    return true;
  }
};

template <class A>
struct Result {
  std::vector<A> out, hn, cn, dxp, dh0, dc0;
};

template <class A>
Result<A> run(const Case& k, const Inputs& in, bool fused) {
  const int64_t T = k.T, B = k.B, H = k.H, P = k.P, G = gates(k.cell), GH = G * H;
  const bool proj = !in.wr.empty();
  std::vector<A> xp = conv<A>(in.xp), h0 = conv<A>(in.h0), c0 = conv<A>(in.c0), w = conv<A>(in.w),
                 wr = conv<A>(in.wr), bhn = conv<A>(in.bhn), gout = conv<A>(in.gout),
                 ghn = conv<A>(in.ghn), gcn = conv<A>(in.gcn);
  Result<A> r;
  r.out = nans<A>(T * B * P);
  r.hn = nans<A>(B * P);
  r.cn = nans<A>(B * H);
  std::vector<A> gts = nans<A>(T * B * GH), ws = nans<A>(T * B * H), dh_all = nans<A>(T * B * P);
  r.dxp = nans<A>(T * B * GH);
  r.dh0 = nans<A>(B * P);
  r.dc0 = nans<A>(B * H);

  ScanArgs a;
  a.cell = k.cell;
  a.dtype = sizeof(A) == 8 ? rnnk::DType::kFloat64 : rnnk::DType::kFloat32;
  a.sched.T = T;
  a.sched.B = B;
  a.sched.lengths = k.lengths ? in.len.data() : nullptr;
  a.sched.reverse = k.reverse;
  a.H = H;
  a.P = P;
  a.w_hh = w.data();
  a.w_hr = proj ? wr.data() : nullptr;
  a.b_hn = bhn.empty() ? nullptr : bhn.data();
  a.xp = xp.data();
  a.h0 = h0.data();
  a.c0 = c0.data();
  a.out = r.out.data();
  a.h_n = r.hn.data();
  a.c_n = r.cn.data();
  if (k.cell != Cell::kRNNTanh && k.cell != Cell::kRNNReLU) {
    a.gates = gts.data();
    (k.cell == Cell::kLSTM ? a.cs : a.hn_lin) = ws.data();
  }
  a.grad_out = gout.data();
  a.grad_hn = ghn.data();
  a.grad_cn = gcn.data();
  a.dxp = r.dxp.data();
  a.dh0 = r.dh0.data();
  a.dc0 = r.dc0.data();
  a.dh_all = proj ? dh_all.data() : nullptr;

  rnnk::Status st;
  if (fused) {
    std::vector<A> h = nans<A>(2 * B * H), c = nans<A>(B * H), dg = nans<A>(2 * B * GH),
                   pack = nans<A>(size_t(rnnk::cpu::fused_pack_elems(a)));
    ForwardScratch s{h.data(), c.data(), nullptr, nullptr, nullptr, pack.data()};
    st = rnnk::cpu::forward_fused(a, s, 2);
    if (st.ok()) {
      BackwardScratch sb{h.data(), c.data(), dg.data(), nullptr, nullptr};
      st = rnnk::cpu::backward_fused(a, sb, 2);
    }
  } else {
    std::vector<A> h = nans<A>(B * P), c = nans<A>(B * H), gh = nans<A>(B * GH),
                   hh = nans<A>(B * H), hp = nans<A>(B * P);
    NaiveGemm<A> g{B, H, P, GH, w.data(), wr.data(), h.data(), gh.data(), hh.data(), hp.data()};
    // The backward reuses the forward's buffers in their backward roles (the GEMMs are bound to
    // them): h → dh, gh → dgates, hh → dhh, hp → dh_total.
    ForwardScratch s{h.data(), c.data(), gh.data(), hh.data(), hp.data(), nullptr};
    BackwardScratch sb{h.data(), c.data(), gh.data(), hh.data(), hp.data()};
    const rnnk::GemmCallback cb{&g, &NaiveGemm<A>::call};
    st = rnnk::cpu::forward_gemm(a, s, cb);
    if (st.ok()) st = rnnk::cpu::backward_gemm(a, sb, cb);
  }
  if (!st.ok()) {
    std::printf("FAIL %s: kernel error %s\n", k.name, st.what);
    ++failures;
  }
  return r;
}

template <class A>
double max_rel(const std::vector<A>& got, const std::vector<double>& want, double floor) {
  double worst = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs(double(got[i]) - want[i]) / (floor + std::fabs(want[i]));
    if (!(e <= worst)) worst = std::isnan(e) ? INFINITY : e;
  }
  return worst;
}

void expect(bool ok, const char* what, const char* name, const char* tag, double v) {
  if (!ok) {
    std::printf("FAIL %s [%s] %s: %.3g\n", name, tag, what, v);
    ++failures;
  }
}

template <class A>
void check_case(const Case& k, const Inputs& in, const Fwd& ref, const char* tag, bool fused,
                const std::vector<double>& dirs_dot_fd, const std::vector<double>* dirs[3],
                double tol) {
  const Result<A> r = run<A>(k, in, fused);
  double e = max_rel(r.out, ref.out, 1e-3);
  expect(e <= tol, "out", k.name, tag, e);
  e = max_rel(r.hn, ref.hn, 1e-3);
  expect(e <= tol, "h_n", k.name, tag, e);
  if (k.cell == Cell::kLSTM) {
    e = max_rel(r.cn, ref.cn, 1e-3);
    expect(e <= tol, "c_n", k.name, tag, e);
  }
  // directional derivative: Σ dxp·Vx + dh0·Vh + dc0·Vc against the finite difference
  double dot = 0;
  for (size_t i = 0; i < r.dxp.size(); ++i) dot += double(r.dxp[i]) * (*dirs[0])[i];
  for (size_t i = 0; i < r.dh0.size(); ++i) dot += double(r.dh0[i]) * (*dirs[1])[i];
  if (k.cell == Cell::kLSTM)
    for (size_t i = 0; i < r.dc0.size(); ++i) dot += double(r.dc0[i]) * (*dirs[2])[i];
  const double fd = dirs_dot_fd[0];
  e = std::fabs(dot - fd) / (1e-3 + std::fabs(fd));
  expect(e <= tol * 10, "backward (directional derivative)", k.name, tag, e);
  // padded positions of dxp are exact zeros
  if (k.lengths)
    for (int64_t t = 0; t < k.T; ++t)
      for (int64_t b = 0; b < k.B; ++b)
        if (t >= in.len[b])
          for (int64_t g = 0; g < gates(k.cell) * k.H; ++g)
            if (r.dxp[(t * k.B + b) * gates(k.cell) * k.H + g] != A(0)) {
              expect(false, "dxp not zero past the end", k.name, tag, 0);
              return;
            }
}

void test_case(const Case& k) {
  const int64_t T = k.T, B = k.B, H = k.H, P = k.P, GH = gates(k.cell) * H;
  Inputs in;
  in.xp = randn(T * B * GH, 0.8);
  in.h0 = randn(B * P, 0.5);
  in.c0 = randn(B * H, 0.5);
  in.w = randn(GH * P, 1.0 / std::sqrt(double(P)));
  if (k.cell == Cell::kLSTM && P != H) in.wr = randn(P * H, 1.0 / std::sqrt(double(H)));
  if (k.bias_hn) in.bhn = randn(H, 0.3);
  in.gout = randn(T * B * P, 1.0);
  in.ghn = randn(B * P, 1.0);
  in.gcn = randn(B * H, 1.0);
  for (int64_t b = 0; b < B; ++b) in.len.push_back(1 + int64_t(rng() % uint64_t(T)));
  if (k.lengths) in.len[B / 2] = T;  // unsorted, with one full-length sequence
  const Fwd ref = naive_forward(k, in);

  // finite difference of the loss along random directions of xp, h0, c0
  const std::vector<double> vx = randn(in.xp.size(), 1.0), vh = randn(in.h0.size(), 1.0),
                            vc = randn(in.c0.size(), 1.0);
  const double eps = 1e-5;
  Inputs ip = in, im = in;
  for (size_t i = 0; i < vx.size(); ++i) ip.xp[i] += eps * vx[i], im.xp[i] -= eps * vx[i];
  for (size_t i = 0; i < vh.size(); ++i) ip.h0[i] += eps * vh[i], im.h0[i] -= eps * vh[i];
  for (size_t i = 0; i < vc.size(); ++i) ip.c0[i] += eps * vc[i], im.c0[i] -= eps * vc[i];
  const std::vector<double> fd = {(naive_loss(k, ip) - naive_loss(k, im)) / (2 * eps)};
  const std::vector<double>* dirs[3] = {&vx, &vh, &vc};

  const bool can_fuse = P == H;
  for (const char* isa : {"generic", "avx2", "avx512"}) {
    if (!rnnk::cpu::set_isa(isa)) continue;  // a build this CPU cannot run
    for (int fused = 0; fused < (can_fuse ? 2 : 1); ++fused) {
      char tag[64];
      std::snprintf(tag, sizeof tag, "%s/%s/f64", isa, fused ? "fused" : "gemm");
      check_case<double>(k, in, ref, tag, fused != 0, fd, dirs, 1e-9);
      std::snprintf(tag, sizeof tag, "%s/%s/f32", isa, fused ? "fused" : "gemm");
      // float32: the inputs themselves are rounded, the reference is not
      check_case<float>(k, in, ref, tag, fused != 0, fd, dirs, 1e-4);
    }
  }
  rnnk::cpu::set_isa("auto");
}

}  // namespace

int main() {
  const Case cases[] = {
      {"lstm", Cell::kLSTM, 9, 5, 19, 19, false, false, false},
      {"lstm-rev-len", Cell::kLSTM, 9, 5, 19, 19, true, true, false},
      {"lstm-len-H33", Cell::kLSTM, 6, 4, 33, 33, false, true, false},
      {"lstm-proj", Cell::kLSTM, 7, 3, 13, 5, false, true, false},
      {"lstm-proj-rev", Cell::kLSTM, 7, 3, 13, 5, true, true, false},
      {"gru", Cell::kGRU, 9, 5, 19, 19, false, false, true},
      {"gru-nobias-rev-len", Cell::kGRU, 9, 5, 19, 19, true, true, false},
      {"rnn-tanh-len", Cell::kRNNTanh, 9, 5, 21, 21, false, true, false},
      {"rnn-relu-rev-len", Cell::kRNNReLU, 9, 5, 21, 21, true, true, false},
      {"lstm-T1-B1-H1", Cell::kLSTM, 1, 1, 1, 1, false, false, false},
  };
  for (const Case& k : cases) test_case(k);
  if (failures) {
    std::printf("test_cpu_scan: %d failures\n", failures);
    return 1;
  }
  std::printf("test_cpu_scan: all passed (CPU ISA %s)\n", rnnk::cpu::isa());
  return 0;
}
