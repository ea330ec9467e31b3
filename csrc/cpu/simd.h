// csrc/cpu/simd.h — portable SIMD for the CPU kernels: GCC/Clang vector extensions, vectorised
// activations, and loads/stores that convert the storage dtype to the accumulation dtype.
//
// The kernels are written once against `Vec<A>::type` (8 floats or 4 doubles, 32 bytes). The
// compiler lowers the vector operations to AVX2/FMA in the translation unit compiled for AVX2 and
// to SSE2 pairs in the generic one (csrc/cpu/scan_avx2.cpp, scan_generic.cpp), so there is one
// source and no intrinsics. Everything here is `RNNK_INLINE` (always inlined) for the reason
// given in cell_math.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "rnnkernels/cell_math.h"

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

// Accumulation type of a storage type.
template <class S>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

template <class S>
RNNK_INLINE S store_cast(typename AccOf<S>::type v) {
  return from_acc(v, static_cast<S*>(nullptr));
}

// ---------------------------------------------------------------------------- vector types
template <class A>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(32)));
  typedef int32_t itype __attribute__((vector_size(32)));
  static constexpr int L = 8;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(32)));
  typedef int64_t itype __attribute__((vector_size(32)));
  static constexpr int L = 4;
};
using v8f = Vec<float>::type;
using v8i = Vec<float>::itype;
using v4d = Vec<double>::type;

// Unaligned, aliasing-safe full-vector load/store of the accumulation type (the form GCC keeps in
// registers and folds into FMA memory operands; a memcpy into an array of vectors is not).
template <class A>
struct VecU;
template <>
struct VecU<float> {
  typedef float type __attribute__((vector_size(32), aligned(4), may_alias));
};
template <>
struct VecU<double> {
  typedef double type __attribute__((vector_size(32), aligned(8), may_alias));
};
template <class A>
RNNK_INLINE typename Vec<A>::type vld(const A* p) {
  return *reinterpret_cast<const typename VecU<A>::type*>(p);
}
template <class A>
RNNK_INLINE void vst(A* p, typename Vec<A>::type v) {
  *reinterpret_cast<typename VecU<A>::type*>(p) = v;
}

template <class V>
RNNK_INLINE V vzero() {
  return V{};
}
template <class V>
struct VecElem;
template <>
struct VecElem<v8f> {
  using type = float;
};
template <>
struct VecElem<v4d> {
  using type = double;
};

// Broadcast. (Not `V{} + a`: without -ffast-math 0 + a cannot be folded, it would cost an add.)
template <class V>
RNNK_INLINE V vsplat(typename VecElem<V>::type a) {
  if constexpr (sizeof(V) / sizeof(a) == 8)
    return V{a, a, a, a, a, a, a, a};
  else
    return V{a, a, a, a};
}

// Load n ≤ L lanes of storage type S as the accumulation vector (missing lanes are 0).
template <class S>
RNNK_INLINE typename Vec<typename AccOf<S>::type>::type vload(const S* p, int n) {
  using A = typename AccOf<S>::type;
  using V = typename Vec<A>::type;
  constexpr int L = Vec<A>::L;
  V v;
  if (sizeof(S) == sizeof(A) && n == L)  // same type (float/double): a plain unaligned load
    return vld(reinterpret_cast<const A*>(p));
  A tmp[L];
#pragma omp simd
  for (int l = 0; l < L; ++l) tmp[l] = l < n ? to_acc(p[l]) : A(0);
  std::memcpy(&v, tmp, sizeof(V));
  return v;
}

// Store the first n ≤ L lanes, converted to the storage type S.
template <class S>
RNNK_INLINE void vstore(S* p, typename Vec<typename AccOf<S>::type>::type v, int n) {
  using A = typename AccOf<S>::type;
  constexpr int L = Vec<A>::L;
  if (sizeof(S) == sizeof(A) && n == L) {
    vst(reinterpret_cast<A*>(p), v);
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

// Sum of the lanes.
RNNK_INLINE float hsum(v8f v) {
  typedef float v4f __attribute__((vector_size(16)));
  v4f lo, hi;
  std::memcpy(&lo, &v, 16);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + 16, 16);
  v4f s = lo + hi;
  return (s[0] + s[2]) + (s[1] + s[3]);
}
RNNK_INLINE double hsum(v4d v) { return (v[0] + v[2]) + (v[1] + v[3]); }

// ------------------------------------------------------------------ vectorised activations
// float: exp by range reduction x = n·ln2 + r, |r| ≤ ln2/2, a degree-7 Taylor polynomial of e^r
// (truncation error 5e-9, so the result is within ~2 ulp) and 2^n built in the exponent bits.
// tanh: an odd polynomial below |x| = 0.55 (fitted minimax-style in x², max relative error
// 1e-9 in exact arithmetic), else 1 - 2/(e^{2|x|} + 1), whose cancellation costs < 1 bit there.
// Measured against libm over [-20, 20] by csrc/tests/test_cpu_math.cpp: < 3e-7 relative.
struct VecMathF {
  using V = v8f;

  static RNNK_INLINE V exp(V x) {
    // Clamp so that n ∈ [-126, 127]: no overflow to inf, no denormal scale factor.
    x = x < -87.33654f ? vsplat<V>(-87.33654f) : x;
    x = x > 88.37626f ? vsplat<V>(88.37626f) : x;
    const float magic = 12582912.0f;  // 1.5·2^23: adding it rounds to the nearest integer
    V n = (x * 1.44269504088896341f + magic) - magic;
    V r = x - n * 0.693145751953125f;   // ln2 split in two (Cody–Waite) so that n·ln2_hi is exact
    r = r - n * 1.428606765330187e-06f;
    V p = vsplat<V>(1.9841270e-4f);     // 1/7!
    p = p * r + 1.3888889e-3f;          // 1/6!
    p = p * r + 8.3333333e-3f;          // 1/5!
    p = p * r + 4.1666667e-2f;          // 1/4!
    p = p * r + 1.6666667e-1f;          // 1/3!
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const v8i e = (__builtin_convertvector(n, v8i) + 127) << 23;
    V scale;
    std::memcpy(&scale, &e, sizeof(V));
    return p * scale;
  }

  static RNNK_INLINE V sigmoid(V x) { return 1.0f / (1.0f + exp(-x)); }

  static RNNK_INLINE V tanh(V x) {
    const V a = x < 0.0f ? -x : x;
    // small |x|: x · P(x²)
    const V y = a * a;
    V p = vsplat<V>(-6.235542481e-03f);
    p = p * y + 2.103966406e-02f;
    p = p * y - 5.384270464e-02f;
    p = p * y + 1.333246072e-01f;
    p = p * y - 3.333331096e-01f;
    p = p * y + 1.0f;
    const V small = a * p;
    // large |x|: clamped at 15 (tanh is 1 in float from 9.01 on, and e^30 is far from overflow)
    const V ac = a > 15.0f ? vsplat<V>(15.0f) : a;
    const V large = 1.0f - 2.0f / (exp(ac + ac) + 1.0f);
    const V t = a < 0.55f ? small : large;
    return x < 0.0f ? -t : t;  // NaN input: both comparisons false → NaN propagates via `large`
  }

  static RNNK_INLINE V relu(V x) { return x > 0.0f ? x : vzero<V>(); }
  static RNNK_INLINE V relu_mask(V h, V v) { return h > 0.0f ? v : vzero<V>(); }
};

// double: lane-wise libm (fp64 is the accuracy path on the CPU, not the fast one).
struct VecMathD {
  using V = v4d;
  static RNNK_INLINE V sigmoid(V x) {
    V r;
    for (int l = 0; l < 4; ++l) r[l] = 1.0 / (1.0 + std::exp(-x[l]));
    return r;
  }
  static RNNK_INLINE V tanh(V x) {
    V r;
    for (int l = 0; l < 4; ++l) r[l] = std::tanh(x[l]);
    return r;
  }
  static RNNK_INLINE V relu(V x) { return x > 0.0 ? x : vzero<V>(); }
  static RNNK_INLINE V relu_mask(V h, V v) { return h > 0.0 ? v : vzero<V>(); }
};

template <class A>
struct VecMathOf;
template <>
struct VecMathOf<float> {
  using type = VecMathF;
};
template <>
struct VecMathOf<double> {
  using type = VecMathD;
};

}  // namespace cpu
}  // namespace rnnk
