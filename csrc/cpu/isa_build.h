// csrc/cpu/isa_build.h — one instruction-set build of every CPU kernel: the scans, the cell step
// and the variant scans. Each scan_<isa>.cpp defines RNNK_CPU_ISA (the build's namespace), the
// vector width and registers simd.h plans for, and, for a build above the baseline,
// RNNK_CPU_TARGET (the compiler's target list), then includes this once.
//
// The target pragma covers only the kernels: every standard header is included before it, so no
// inline library function is emitted with, say, AVX-512 code that a generic caller could link
// against (the kernel helpers themselves are always inlined or have internal linkage).
#ifndef RNNK_CPU_ISA
#error "define RNNK_CPU_ISA before including isa_build.h"
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#ifdef RNNK_CPU_TARGET
#define RNNK_DO_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define RNNK_TARGET_PUSH(t) \
  RNNK_DO_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
RNNK_TARGET_PUSH(RNNK_CPU_TARGET)
#else
#define RNNK_TARGET_PUSH(t) RNNK_DO_PRAGMA(GCC target(t))
#pragma GCC push_options
RNNK_TARGET_PUSH(RNNK_CPU_TARGET)
#endif
#endif

#include "scan_impl.h"
#include "cell_step_impl.h"   // the cell step's kernels: same build, same ISA
#include "variant_impl.h"     // the variants' scans (variant_scan.h): same build
#include "ln_impl.h"          // the layer-norm scans (ln_scan.h): same build

#ifdef RNNK_CPU_TARGET
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
