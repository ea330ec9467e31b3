// The CPU scans and the cell step for any x86-64 / other CPU: the vector code of scan_impl.h
// and cell_step_impl.h lowered to the baseline instruction set (SSE2 on x86-64).
#define RNNK_CPU_ISA generic
#include "scan_impl.h"
#include "cell_step_impl.h"   // the cell step's kernels: same build, same ISA
#include "variant_impl.h"     // the variants' scans (variant_scan.h): same build
