// Unit tests of csrc/cpu/simd.h: the vectorised activations against libm, and the 16-bit
// storage conversions against the compiler's own types (ctest, see CMakeLists.txt).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>

#define RNNK_CPU_ISA generic  // the generic build's 8-lane vectors (simd.h)
#include "cpu/simd.h"

namespace {

using v8f = rnnk::cpu::generic::Vec<float>::type;
using rnnk::cpu::generic::VecMathF;
int failures = 0;

template <class F, class G>
void check_fn(const char* name, F vec_fn, G ref_fn, float lo, float hi, double rtol, double atol) {
  const int N = 400000;
  double worst = 0;
  float worst_x = 0;
  for (int i = 0; i < N; i += 8) {
    v8f x;
    for (int l = 0; l < 8; ++l) x[l] = lo + (hi - lo) * float(i + l) / float(N - 1);
    const v8f y = vec_fn(x);
    for (int l = 0; l < 8; ++l) {
      const double want = ref_fn(double(x[l]));
      const double err = std::fabs(double(y[l]) - want) / (atol + std::fabs(want));
      if (err > worst) {
        worst = err;
        worst_x = x[l];
      }
    }
  }
  std::printf("%-8s on [%g, %g]: max relative error %.3g (at x = %.7g)\n", name, lo, hi, worst,
              worst_x);
  if (!(worst <= rtol)) {
    std::printf("FAIL %s: %.3g > %.3g\n", name, worst, rtol);
    ++failures;
  }
}

void test_activations() {
  check_fn("exp", [](v8f x) { return VecMathF::exp(x); }, [](double x) { return std::exp(x); },
           -87.0f, 88.0f, 3e-7, 0);
  check_fn("sigmoid", [](v8f x) { return VecMathF::sigmoid(x); },
           [](double x) { return 1 / (1 + std::exp(-x)); }, -30.0f, 30.0f, 3e-7, 0);
  // tanh: 3e-7 with FMA contraction, 4e-7 without (this test's build has none; simd.h says why)
  check_fn("tanh", [](v8f x) { return VecMathF::tanh(x); }, [](double x) { return std::tanh(x); },
           -20.0f, 20.0f, 4e-7, 0);
  check_fn("tanh", [](v8f x) { return VecMathF::tanh(x); }, [](double x) { return std::tanh(x); },
           -1e-3f, 1e-3f, 4e-7, 0);
  // saturation and special values
  v8f x = {-1000.0f, 1000.0f, 0.0f, -0.0f, std::numeric_limits<float>::quiet_NaN(),
           std::numeric_limits<float>::infinity(), -std::numeric_limits<float>::infinity(),
           1e-30f};
  const v8f s = VecMathF::sigmoid(x), t = VecMathF::tanh(x);
  const float s_want[8] = {0.0f, 1.0f, 0.5f, 0.5f, NAN, 1.0f, 0.0f, 0.5f};
  const float t_want[8] = {-1.0f, 1.0f, 0.0f, -0.0f, NAN, 1.0f, -1.0f, 1e-30f};
  for (int l = 0; l < 8; ++l) {
    const bool s_ok =
        std::isnan(s_want[l]) ? std::isnan(s[l]) : std::fabs(s[l] - s_want[l]) < 1e-30f;
    const bool t_ok = std::isnan(t_want[l]) ? std::isnan(t[l]) : t[l] == t_want[l];
    if (!s_ok || !t_ok) {
      std::printf("FAIL special value x=%g: sigmoid %g (want %g), tanh %g (want %g)\n", x[l], s[l],
                  s_want[l], t[l], t_want[l]);
      ++failures;
    }
  }
}

void test_conversions() {
  using rnnk::cpu::bf16_t;
  using rnnk::cpu::f16_t;
  using rnnk::cpu::store_cast;
  using rnnk::cpu::to_acc;
  // Every half value converts to float and back unchanged (NaNs stay NaN).
  for (uint32_t b = 0; b < 65536; ++b) {
    const f16_t h{uint16_t(b)};
    const float f = to_acc(h);
#if defined(__FLT16_MAX__)
    _Float16 ref;
    std::memcpy(&ref, &h, 2);
    if (!(std::isnan(f) ? std::isnan(float(ref)) : f == float(ref))) {
      std::printf("FAIL half->float %04x: %g vs %g\n", b, f, float(ref));
      ++failures;
    }
#endif
    const f16_t back = store_cast<f16_t>(f);
    if (!std::isnan(f) && back.bits != h.bits) {
      std::printf("FAIL half round trip %04x -> %04x\n", b, back.bits);
      ++failures;
    }
    const bf16_t bb{uint16_t(b)};
    const float g = to_acc(bb);
    if (!std::isnan(g) && store_cast<bf16_t>(g).bits != bb.bits) {
      std::printf("FAIL bf16 round trip %04x\n", b);
      ++failures;
    }
  }
#if defined(__FLT16_MAX__)
  // float -> half rounding (ties to even, subnormals, overflow) against the compiler's conversion
  std::mt19937 rng(7);
  for (int i = 0; i < 2000000; ++i) {
    uint32_t u = rng();
    float f;
    std::memcpy(&f, &u, 4);
    f = std::ldexp(std::fmod(f, 2.0f), int(rng() % 44) - 28);  // spread over half's range
    if (std::isnan(f)) continue;
    const _Float16 ref = static_cast<_Float16>(f);
    uint16_t rb;
    std::memcpy(&rb, &ref, 2);
    const f16_t mine = store_cast<f16_t>(f);
    if (mine.bits != rb) {
      std::printf("FAIL float->half %.9g: %04x vs %04x\n", f, mine.bits, rb);
      if (++failures > 20) return;
    }
  }
#endif
  // bf16 ties to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7 → 1
  if (store_cast<bf16_t>(1.0f + std::ldexp(1.0f, -8)).bits != 0x3f80) {
    std::printf("FAIL bf16 tie to even\n");
    ++failures;
  }
  if (store_cast<bf16_t>(1.0f + 3 * std::ldexp(1.0f, -8)).bits != 0x3f82) {
    std::printf("FAIL bf16 tie to even (odd)\n");
    ++failures;
  }
}

}  // namespace

int main() {
  test_activations();
  test_conversions();
  if (failures) {
    std::printf("test_cpu_math: %d failures\n", failures);
    return 1;
  }
  std::printf("test_cpu_math: all passed\n");
  return 0;
}
