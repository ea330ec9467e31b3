// The CPU kernels compiled for AVX-512 (F, VL, BW, DQ) with 64-byte vectors and 32 vector
// registers (simd.h: 16 floats per vector, register tiles twice the AVX2 ones), chosen at run
// time when the CPU and the OS support it (scan_dispatch.cpp).
#if defined(__x86_64__) || defined(__i386__)
#define RNNK_CPU_ISA avx512
#define RNNK_CPU_TARGET "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma"
#define RNNK_VEC_BYTES 64
#define RNNK_VEC_REGS 32
#include "isa_build.h"
#endif
