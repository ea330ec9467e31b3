// The CPU scans for any x86-64 / other CPU: the vector code of scan_impl.h lowered to the
// baseline instruction set (SSE2 on x86-64).
#define RNNK_CPU_ISA generic
#include "scan_impl.h"
