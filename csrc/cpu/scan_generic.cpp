// The CPU kernels for any x86-64 / other CPU: the vector code lowered to the baseline
// instruction set (SSE2 on x86-64).
#define RNNK_CPU_ISA generic
#include "isa_build.h"
