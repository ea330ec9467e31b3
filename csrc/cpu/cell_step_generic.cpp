// The cell step's pointwise kernels for any CPU: cell_step_impl.h lowered to the baseline
// instruction set (as scan_generic.cpp).
#define RNNK_CPU_ISA generic
#include "cell_step_impl.h"
