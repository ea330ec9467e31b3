// The CPU scans and the cell step compiled for AVX2 + FMA, chosen at run time when the CPU has
// both (scan_dispatch.cpp, cell_step.h). The target pragma covers only the kernels: every
// standard header is included before it, so no inline library function is emitted with AVX2
// code that a generic caller could link against (the kernel helpers themselves are always
// inlined or have internal linkage).
#if defined(__x86_64__) || defined(__i386__)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define RNNK_CPU_ISA avx2
#include "scan_impl.h"
#include "cell_step_impl.h"   // the cell step's kernels: same build, same ISA
#include "variant_impl.h"     // the variants' scans (variant_scan.h): same build
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif
