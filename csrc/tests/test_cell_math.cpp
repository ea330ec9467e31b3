// Unit tests of csrc/include/rnnkernels/cell_math.h (run by ctest, see CMakeLists.txt).
//
// 1. Every forward against the textbook formula written out here independently (double).
// 2. Every derivative against central finite differences of the forward, for a random linear
//    loss of all the step's outputs (double, so the differences are accurate to ~1e-9).
// 3. The float instantiation against the double one (the kernels run in float).
#include <cmath>
#include <cstdio>
#include <random>

#include "rnnkernels/cell_math.h"

namespace {

using M = rnnk::ExactMath;
int failures = 0;

void expect_close(const char* what, double got, double want, double rtol, double atol) {
  const double err = std::fabs(got - want);
  if (!(err <= atol + rtol * std::fabs(want))) {
    std::printf("FAIL %s: got %.12g want %.12g (err %.3g)\n", what, got, want, err);
    ++failures;
  }
}

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

std::mt19937_64 rng(1234);
double uni(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

// ----------------------------------------------------------------------------------- LSTM
struct LstmOut {
  double i, f, u, o, c, h;
};
LstmOut lstm(const double* x) {  // x = gi, gf, gg, go, c_prev
  LstmOut r;
  rnnk::lstm_cell_fwd<M>(x[0], x[1], x[2], x[3], x[4], r.i, r.f, r.u, r.o, r.c, r.h);
  return r;
}

void test_lstm() {
  for (int rep = 0; rep < 200; ++rep) {
    double x[5];
    for (double& v : x) v = uni(-4, 4);
    const LstmOut r = lstm(x);
    // naive
    const double i = sig(x[0]), f = sig(x[1]), u = std::tanh(x[2]), o = sig(x[3]);
    const double c = f * x[4] + i * u, h = o * std::tanh(c);
    expect_close("lstm i", r.i, i, 1e-14, 1e-15);
    expect_close("lstm f", r.f, f, 1e-14, 1e-15);
    expect_close("lstm u", r.u, u, 1e-14, 1e-15);
    expect_close("lstm o", r.o, o, 1e-14, 1e-15);
    expect_close("lstm c", r.c, c, 1e-14, 1e-15);
    expect_close("lstm h", r.h, h, 1e-14, 1e-15);

    // derivative of loss = wh·h + wc·c with respect to the 5 inputs
    const double wh = uni(-2, 2), wc = uni(-2, 2);
    double g[5];
    rnnk::lstm_cell_bwd<M>(wh, wc, r.i, r.f, r.u, r.o, r.c, x[4], g[0], g[1], g[2], g[3], g[4]);
    for (int k = 0; k < 5; ++k) {
      const double eps = 1e-6;
      double xp[5], xm[5];
      for (int j = 0; j < 5; ++j) xp[j] = xm[j] = x[j];
      xp[k] += eps;
      xm[k] -= eps;
      const LstmOut a = lstm(xp), b = lstm(xm);
      const double fd = ((wh * a.h + wc * a.c) - (wh * b.h + wc * b.c)) / (2 * eps);
      expect_close("lstm derivative", g[k], fd, 1e-6, 1e-8);
    }

    // float instantiation
    float fi, ff, fu, fo, fc, fh;
    rnnk::lstm_cell_fwd<M>(float(x[0]), float(x[1]), float(x[2]), float(x[3]), float(x[4]), fi, ff,
                          fu, fo, fc, fh);
    expect_close("lstm h float", fh, h, 1e-5, 1e-6);
    expect_close("lstm c float", fc, c, 1e-5, 1e-6);
  }
}

// ------------------------------------------------------------------------------------ GRU
struct GruOut {
  double r, z, n, h;
};
GruOut gru(const double* x) {  // ar, az, an, br, bz, hn_lin, h_prev
  GruOut o;
  rnnk::gru_cell_fwd<M>(x[0], x[1], x[2], x[3], x[4], x[5], x[6], o.r, o.z, o.n, o.h);
  return o;
}

void test_gru() {
  for (int rep = 0; rep < 200; ++rep) {
    double x[7];
    for (double& v : x) v = uni(-3, 3);
    const GruOut o = gru(x);
    const double r = sig(x[0] + x[3]), z = sig(x[1] + x[4]);
    const double n = std::tanh(x[2] + r * x[5]);
    const double h = (1 - z) * n + z * x[6];
    expect_close("gru r", o.r, r, 1e-14, 1e-15);
    expect_close("gru z", o.z, z, 1e-14, 1e-15);
    expect_close("gru n", o.n, n, 1e-14, 1e-15);
    expect_close("gru h", o.h, h, 1e-13, 1e-15);

    const double wh = uni(-2, 2);
    double dr, dz, dn, dhn, ddir;
    rnnk::gru_cell_bwd<M>(wh, o.r, o.z, o.n, x[5], x[6], dr, dz, dn, dhn, ddir);
    // ∂/∂ar = ∂/∂br = dr, ∂/∂az = ∂/∂bz = dz, ∂/∂an = dn, ∂/∂hn_lin = dhn, ∂/∂h_prev = ddir
    const double want[7] = {dr, dz, dn, dr, dz, dhn, ddir};
    for (int k = 0; k < 7; ++k) {
      const double eps = 1e-6;
      double xp[7], xm[7];
      for (int j = 0; j < 7; ++j) xp[j] = xm[j] = x[j];
      xp[k] += eps;
      xm[k] -= eps;
      const double fd = (wh * gru(xp).h - wh * gru(xm).h) / (2 * eps);
      expect_close("gru derivative", want[k], fd, 1e-6, 1e-8);
    }
  }
}

// ------------------------------------------------------------------------------------ RNN
void test_rnn() {
  for (int rep = 0; rep < 200; ++rep) {
    const double pre = uni(-4, 4), w = uni(-2, 2);
    for (int relu = 0; relu < 2; ++relu) {
      const double h = rnnk::rnn_cell_fwd<M>(pre, relu != 0);
      const double want = relu ? (pre > 0 ? pre : 0.0) : std::tanh(pre);
      expect_close("rnn forward", h, want, 1e-14, 1e-15);
      if (relu && std::fabs(pre) < 1e-4) continue;  // the kink: no derivative
      const double g = rnnk::rnn_cell_bwd<M>(w, h, relu != 0);
      const double eps = 1e-6;
      const double fd = (w * rnnk::rnn_cell_fwd<M>(pre + eps, relu != 0) -
                         w * rnnk::rnn_cell_fwd<M>(pre - eps, relu != 0)) /
                        (2 * eps);
      expect_close(relu ? "relu derivative" : "tanh derivative", g, fd, 1e-6, 1e-8);
    }
  }
  // relu'(0) is taken as 0 (torch's convention: the gradient of relu at 0 is 0)
  expect_close("relu derivative at 0", rnnk::rnn_cell_bwd<M>(1.0, 0.0, true), 0.0, 0, 0);
}

}  // namespace

int main() {
  test_lstm();
  test_gru();
  test_rnn();
  if (failures) {
    std::printf("test_cell_math: %d failures\n", failures);
    return 1;
  }
  std::printf("test_cell_math: all passed\n");
  return 0;
}
