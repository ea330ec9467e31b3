// Run-time choice between the AVX2 and the generic build of the variant scans: the one the
// plain scans use (cpu::isa(), set by RNNKERNELS_CPU_ISA or compiled.option('cpu_isa', ...)).
#include <cstring>

#include "scan_cpu.h"
#include "variant_scan.h"

namespace rnnk {
namespace cpu {

#define RNNK_DECLARE_VARIANT_ISA(ns)                                                   \
  namespace ns {                                                                       \
  Status variant_forward(const VariantArgs& v, const VariantScratch& w, int nthreads);  \
  Status variant_backward(const VariantArgs& v, const VariantScratch& w, int nthreads); \
  int variant_threads(const VariantArgs& v, int max_threads);                          \
  int64_t variant_pack_elems(const VariantArgs& v, bool backward);                     \
  }

RNNK_DECLARE_VARIANT_ISA(generic)
#if defined(__x86_64__) || defined(__i386__)
RNNK_DECLARE_VARIANT_ISA(avx2)
#define RNNK_VARIANT_CALL(fn, ...) \
  (std::strcmp(isa(), "avx2") == 0 ? avx2::fn(__VA_ARGS__) : generic::fn(__VA_ARGS__))
#else
#define RNNK_VARIANT_CALL(fn, ...) generic::fn(__VA_ARGS__)
#endif

Status variant_forward(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  return RNNK_VARIANT_CALL(variant_forward, v, w, nthreads);
}
Status variant_backward(const VariantArgs& v, const VariantScratch& w, int nthreads) {
  return RNNK_VARIANT_CALL(variant_backward, v, w, nthreads);
}
int variant_threads(const VariantArgs& v, int max_threads) {
  return RNNK_VARIANT_CALL(variant_threads, v, max_threads);
}
int64_t variant_pack_elems(const VariantArgs& v, bool backward) {
  return RNNK_VARIANT_CALL(variant_pack_elems, v, backward);
}

}  // namespace cpu
}  // namespace rnnk
