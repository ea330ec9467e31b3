// Run-time choice between the instruction-set builds of the layer-norm scans (ln_scan.h): the
// one the plain scans use (cpu::isa_level(), set by RNNKERNELS_CPU_ISA or
// compiled.option('cpu_isa', ...)), as variant_dispatch.cpp does for the other variants.
#include "isa_dispatch.h"
#include "ln_scan.h"

namespace rnnk {
namespace cpu {

RNNK_DECLARE_IN_EACH_ISA(
    Status ln_forward(const LayerNormArgs& v, const ForwardScratch& w, GemmCallback gemm);
    Status ln_backward(const LayerNormArgs& v, const BackwardScratch& w, GemmCallback gemm);)

Status ln_forward(const LayerNormArgs& v, const ForwardScratch& w, GemmCallback gemm) {
  return RNNK_ISA_CALL(ln_forward, v, w, gemm);
}
Status ln_backward(const LayerNormArgs& v, const BackwardScratch& w, GemmCallback gemm) {
  return RNNK_ISA_CALL(ln_backward, v, w, gemm);
}

}  // namespace cpu
}  // namespace rnnk
