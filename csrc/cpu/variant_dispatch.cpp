// Run-time choice between the instruction-set builds of the variant scans: the one the plain
// scans use (cpu::isa_level(), set by RNNKERNELS_CPU_ISA or compiled.option('cpu_isa', ...)).
#include "isa_dispatch.h"
#include "variant_scan.h"

namespace rnnk {
namespace cpu {

RNNK_DECLARE_IN_EACH_ISA(
    Status variant_forward(const VariantArgs& v, const VariantScratch& w, int nthreads);
    Status variant_backward(const VariantArgs& v, const VariantScratch& w, int nthreads);
    int variant_threads(const VariantArgs& v, int max_threads);
    int64_t variant_pack_elems(const VariantArgs& v, bool backward);)

Status variant_forward(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  return RNNK_ISA_CALL(variant_forward, v, w, nthreads);
}
Status variant_backward(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  return RNNK_ISA_CALL(variant_backward, v, w, nthreads);
}
int variant_threads(const VariantArgs& v, int max_threads) {
  return RNNK_ISA_CALL(variant_threads, v, max_threads);
}
int64_t variant_pack_elems(const VariantArgs& v, bool backward) {
  return RNNK_ISA_CALL(variant_pack_elems, v, backward);
}

}  // namespace cpu
}  // namespace rnnk
