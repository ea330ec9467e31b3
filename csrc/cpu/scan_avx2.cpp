// The CPU kernels compiled for AVX2 + FMA (32-byte vectors, 16 registers), chosen at run time
// when the CPU has both and lacks AVX-512 (scan_dispatch.cpp, cell_step.h).
#if defined(__x86_64__) || defined(__i386__)
#define RNNK_CPU_ISA avx2
#define RNNK_CPU_TARGET "avx2,fma"
#include "isa_build.h"
#endif
