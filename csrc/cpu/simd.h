// csrc/cpu/simd.h — portable SIMD for the CPU kernels: GCC/Clang vector extensions, vectorised
// activations, and loads/stores that convert the storage dtype to the accumulation dtype.
//
// The kernels are written once against `Vec<A>::type`, a vector of RNNK_VEC_BYTES bytes (32 by
// default: 8 floats or 4 doubles; 64 in the AVX-512 build: 16 floats or 8 doubles), and
// `kVecRegs`, the vector registers the micro-kernels may plan their tiles for (16, or 32 with
// AVX-512). The compiler lowers the vector operations to the instruction set of the translation
// unit that includes this (csrc/cpu/scan_avx512.cpp, scan_avx2.cpp, scan_generic.cpp: SSE2 pairs
// there), so there is one source and no intrinsics. The vector part lives in that build's
// namespace (RNNK_CPU_ISA), anonymous inside it, since its types differ between builds.
// Everything here is `RNNK_INLINE` (always inlined) for the reason given in cell_math.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "rnnkernels/cell_math.h"

#ifndef RNNK_CPU_ISA
#error "define RNNK_CPU_ISA (the namespace of the instruction-set build) before including simd.h"
#endif
#ifndef RNNK_VEC_BYTES
#define RNNK_VEC_BYTES 32
#endif
#ifndef RNNK_VEC_REGS
#define RNNK_VEC_REGS 16
#endif

namespace rnnk {
namespace cpu {

// 16-bit storage types. Only their bits are stored; arithmetic happens in float.
struct bf16_t {
  uint16_t bits;
};
struct f16_t {
  uint16_t bits;
};

RNNK_INLINE float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
RNNK_INLINE uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// bfloat16 is the upper half of a float; rounding to nearest even as torch does, NaN stays NaN.
RNNK_INLINE float to_acc(bf16_t v) { return bits_to_float(uint32_t(v.bits) << 16); }
RNNK_INLINE bf16_t from_acc(float f, bf16_t*) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}

// IEEE binary16 <-> float in software (no F16C assumed), round to nearest even.
RNNK_INLINE float to_acc(f16_t v) {
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  const uint32_t e = (h >> 10) & 0x1fu;
  const uint32_t m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m · 2^-24
    const float mag = float(m) * 5.9604644775390625e-8f;
    return sign ? -mag : mag;
  }
  if (e == 31) return bits_to_float(sign | 0x7f800000u | (m << 13));
  return bits_to_float(sign | ((e + 112u) << 23) | (m << 13));
}
RNNK_INLINE f16_t from_acc(float f, f16_t*) {
  uint32_t u = float_to_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  u &= 0x7fffffffu;
  if (u >= 0x7f800000u)  // inf or NaN (NaN keeps a quiet payload bit)
    return f16_t{uint16_t(sign | 0x7c00u | (u > 0x7f800000u ? 0x200u : 0u))};
  if (u >= 0x477ff000u)  // ≥ 65520 rounds past the largest half (65504)
    return f16_t{uint16_t(sign | 0x7c00u)};
  if (u < 0x38800000u) {
    // Below the smallest normal half (2^-14): adding 0.5f puts the float's unit in the last
    // place at 2^-24, the half subnormal step, so the hardware addition does the rounding.
    const float r = bits_to_float(u) + 0.5f;
    return f16_t{uint16_t(sign | (float_to_bits(r) - 0x3f000000u))};
  }
  const uint32_t odd = (u >> 13) & 1u;
  u += (uint32_t(15 - 127) << 23) + 0xfffu + odd;  // rebias the exponent, round to even
  return f16_t{uint16_t(sign | (u >> 13))};
}

RNNK_INLINE float to_acc(float v) { return v; }
RNNK_INLINE double to_acc(double v) { return v; }
RNNK_INLINE float from_acc(float v, float*) { return v; }
RNNK_INLINE double from_acc(double v, double*) { return v; }

// Accumulation type of a storage type: double for double, float for the rest.
template <class S>
using acc_of = std::conditional_t<std::is_same_v<S, double>, double, float>;

template <class S>
RNNK_INLINE S store_cast(acc_of<S> v) {
  return from_acc(v, static_cast<S*>(nullptr));
}

// ---------------------------------------------------------------------------- vector types
namespace RNNK_CPU_ISA {
namespace {

// Vector registers of this build (16 ymm for AVX2, 32 zmm for AVX-512): the micro-kernels size
// their register tiles by it (micro_kernels.h).
constexpr int kVecRegs = RNNK_VEC_REGS;

// A vector of the accumulation type A (float or double): RNNK_VEC_BYTES bytes, L lanes.
template <class A>
struct Vec {
  static_assert(std::is_same_v<A, float> || std::is_same_v<A, double>, "float or double");
  typedef A type __attribute__((vector_size(RNNK_VEC_BYTES)));
  // The same, unaligned and aliasing-safe: the form GCC keeps in registers and folds into FMA
  // memory operands (a memcpy into an array of vectors is not).
  typedef A unaligned __attribute__((vector_size(RNNK_VEC_BYTES), aligned(sizeof(A)), may_alias));
  static constexpr int L = RNNK_VEC_BYTES / int(sizeof(A));
};
typedef int32_t vint32 __attribute__((vector_size(RNNK_VEC_BYTES)));  // lanes of Vec<float>

// Loads and stores. vload(p) / vstore(p, v): a full vector of p's own type (the accumulation
// type). vload(p, n) / vstore(p, v, n): the first n ≤ L lanes, converted from / rounded to the
// storage type S of p (a missing lane loads as 0).
template <class A>
RNNK_INLINE typename Vec<A>::type vload(const A* p) {
  return *reinterpret_cast<const typename Vec<A>::unaligned*>(p);
}
template <class A>
RNNK_INLINE void vstore(A* p, typename Vec<A>::type v) {
  *reinterpret_cast<typename Vec<A>::unaligned*>(p) = v;
}

template <class V>
RNNK_INLINE V vzero() {
  return V{};
}

// Broadcast: every lane listed in the initialiser. (Not `V{} + a`: without -ffast-math 0 + a
// cannot be folded, it would cost an add.)
template <class V, class A, std::size_t... I>
RNNK_INLINE V splat_lanes(A a, std::index_sequence<I...>) {
  return V{((void)I, a)...};
}
template <class A>
RNNK_INLINE typename Vec<A>::type vsplat(A a) {
  return splat_lanes<typename Vec<A>::type>(a, std::make_index_sequence<Vec<A>::L>{});
}

template <class S>
RNNK_INLINE typename Vec<acc_of<S>>::type vload(const S* p, int n) {
  using A = acc_of<S>;
  using V = typename Vec<A>::type;
  constexpr int L = Vec<A>::L;
  V v;
  if (sizeof(S) == sizeof(A) && n == L)  // same type (float/double): a plain unaligned load
    return vload(reinterpret_cast<const A*>(p));
  A tmp[L];
#pragma omp simd
  for (int l = 0; l < L; ++l) tmp[l] = l < n ? to_acc(p[l]) : A(0);
  std::memcpy(&v, tmp, sizeof(V));
  return v;
}

template <class S>
RNNK_INLINE void vstore(S* p, typename Vec<acc_of<S>>::type v, int n) {
  using A = acc_of<S>;
  constexpr int L = Vec<A>::L;
  if (sizeof(S) == sizeof(A) && n == L) {
    vstore(reinterpret_cast<A*>(p), v);
    return;
  }
  A tmp[L];
  std::memcpy(tmp, &v, sizeof(v));
  if (n == L) {
#pragma omp simd
    for (int l = 0; l < L; ++l) p[l] = store_cast<S>(tmp[l]);
  } else {
    for (int l = 0; l < n; ++l) p[l] = store_cast<S>(tmp[l]);
  }
}

// ------------------------------------------------------------------ vectorised activations
// float: exp by range reduction x = n·ln2 + r, |r| ≤ ln2/2, a degree-7 Taylor polynomial of e^r
// (truncation error 5e-9, so the result is within ~2 ulp) and 2^n built in the exponent bits.
// tanh: x·P(x²)/Q(x²) on x clamped to [-9, 9] (tanh rounds to ±1 in float from 9.01 on), P of
// degree 6 and Q of degree 3 in x², P(0) = Q(0) = 1 so tanh(x) = x exactly for tiny x: a
// near-minimax fit of the relative error (7e-9 in exact arithmetic; csrc/tests/fit_tanh.py
// reproduces the coefficients). No exp and one division: twice as fast as 1 - 2/(e^{2|x|} + 1)
// with a polynomial near 0, which it replaced, and tanh is the cell's costliest activation.
// float rounding of the two Horner chains dominates the error: < 3e-7 relative with FMA, < 4e-7
// without (the generic build), i.e. at most ~6 ulp, against libm over [-20, 20]
// (csrc/tests/test_cpu_math.cpp); exp and sigmoid: < 3e-7.
struct VecMathF {
  using V = Vec<float>::type;

  static RNNK_INLINE V exp(V in) {
    // Clamp so that n ∈ [-126, 127]: no overflow in the exponent bits, no denormal scale factor.
    // The limits themselves are restored at the end: e^x = +inf beyond ln(FLT_MAX) and 0 below
    // the smallest denormal, so σ(±inf) is exactly 1 / 0 as in torch (an inf input then gives
    // torch's NaN gradients, not ±inf). NaN fails every comparison and propagates.
    V x = in < -87.33654f ? vsplat(-87.33654f) : in;
    x = x > 88.37626f ? vsplat(88.37626f) : x;
    const float magic = 12582912.0f;  // 1.5·2^23: adding it rounds to the nearest integer
    V n = (x * 1.44269504088896341f + magic) - magic;
    V r = x - n * 0.693145751953125f;   // ln2 split in two (Cody–Waite) so that n·ln2_hi is exact
    r = r - n * 1.428606765330187e-06f;
    V p = vsplat(1.9841270e-4f);        // 1/7!
    p = p * r + 1.3888889e-3f;          // 1/6!
    p = p * r + 8.3333333e-3f;          // 1/5!
    p = p * r + 4.1666667e-2f;          // 1/4!
    p = p * r + 1.6666667e-1f;          // 1/3!
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const vint32 e = (__builtin_convertvector(n, vint32) + 127) << 23;
    V scale;
    std::memcpy(&scale, &e, sizeof(V));
    const V y = p * scale;
    const V high = in > 88.72284f ? vsplat(__builtin_inff()) : y;
    return in < -103.97208f ? vzero<V>() : high;
  }

  static RNNK_INLINE V sigmoid(V x) { return 1.0f / (1.0f + exp(-x)); }

  static RNNK_INLINE V tanh(V x) {
    // Clamp first (NaN fails both comparisons and propagates through the rational).
    V c = x > 9.0f ? vsplat(9.0f) : x;
    c = c < -9.0f ? vsplat(-9.0f) : c;
    const V y = c * c;
    V p = vsplat(-8.561701583321649e-14f);
    p = p * y + 5.3093127103682666e-11f;
    p = p * y - 2.029681475440453e-08f;
    p = p * y + 1.1173410429871363e-05f;
    p = p * y + 3.1058781434999865e-03f;
    p = p * y + 1.308576363102814e-01f;
    p = p * y + 1.0f;
    V q = vsplat(2.548884783295867e-04f);
    q = q * y + 2.4502932528715826e-02f;
    q = q * y + 4.641909280322394e-01f;
    q = q * y + 1.0f;
    const V r = c * p / q;
    // Rounding can overshoot 1 by an ulp near the clamp: saturate exactly, as tanh does.
    const V hi = r > 1.0f ? vsplat(1.0f) : r;
    return hi < -1.0f ? vsplat(-1.0f) : hi;
  }

  // torch's relu: NaN propagates (NaN < 0 is false); its derivative (threshold_backward) is 0
  // only where h <= 0, so a NaN h passes the gradient on.
  static RNNK_INLINE V relu(V x) { return x < 0.0f ? vzero<V>() : x; }
  static RNNK_INLINE V relu_mask(V h, V v) { return h <= 0.0f ? vzero<V>() : v; }
};

// double: lane-wise libm (fp64 is the accuracy path on the CPU, not the fast one).
struct VecMathD {
  using V = Vec<double>::type;
  static RNNK_INLINE V sigmoid(V x) {
    V r;
    for (int l = 0; l < Vec<double>::L; ++l) r[l] = 1.0 / (1.0 + std::exp(-x[l]));
    return r;
  }
  static RNNK_INLINE V tanh(V x) {
    V r;
    for (int l = 0; l < Vec<double>::L; ++l) r[l] = std::tanh(x[l]);
    return r;
  }
  static RNNK_INLINE V relu(V x) { return x < 0.0 ? vzero<V>() : x; }       // as VecMathF
  static RNNK_INLINE V relu_mask(V h, V v) { return h <= 0.0 ? vzero<V>() : v; }
};

template <class A>
using vec_math_of = std::conditional_t<std::is_same_v<A, double>, VecMathD, VecMathF>;

// The IO policy of rnnkernels/cell_io.h on the CPU: a vector of units, of which the first n ≤ L
// are valid (n < L only at the ragged end of a row).
template <class A>
struct VecIO {
  using Acc = A;
  using T = typename Vec<A>::type;
  int n;
  template <class X>
  RNNK_INLINE T load(const X* p) const {
    return vload(p, n);
  }
  template <class X>
  RNNK_INLINE void store(X* p, T v) const {
    vstore(p, v, n);
  }
  RNNK_INLINE T zero() const { return vzero<T>(); }
};

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
