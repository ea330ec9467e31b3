// Run-time choice between the AVX2 and the generic build of the CPU scans, and of the path.
#include <cstdlib>
#include <cstring>

#include "scan_cpu.h"

namespace rnnk {
namespace cpu {

#define RNNK_DECLARE_ISA(ns)                                                                  \
  namespace ns {                                                                              \
  Status forward_gemm(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm);  \
  Status backward_gemm(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm); \
  Status forward_fused(const ScanArgs& a, const ForwardScratch& w, int nthreads);             \
  Status backward_fused(const ScanArgs& a, const BackwardScratch& w, int nthreads);           \
  int fused_threads(const ScanArgs& a, int max_threads);                                      \
  int64_t fused_pack_elems(const ScanArgs& a);                                                \
  }

RNNK_DECLARE_ISA(generic)
#if defined(__x86_64__) || defined(__i386__)
#define RNNK_HAVE_AVX2_BUILD 1
RNNK_DECLARE_ISA(avx2)
#else
#define RNNK_HAVE_AVX2_BUILD 0
#endif

namespace {

bool cpu_has_avx2() {
#if RNNK_HAVE_AVX2_BUILD
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool initial_choice() {
  const char* env = std::getenv("RNNKERNELS_CPU_ISA");
  if (env && std::strcmp(env, "generic") == 0) return false;
  return cpu_has_avx2();
}

bool& use_avx2() {
  static bool v = initial_choice();
  return v;
}

}  // namespace

const char* isa() { return use_avx2() ? "avx2" : "generic"; }

bool set_isa(const char* name) {
  if (std::strcmp(name, "generic") == 0) {
    use_avx2() = false;
    return true;
  }
  if (std::strcmp(name, "avx2") == 0) {
    if (!cpu_has_avx2()) return false;
    use_avx2() = true;
    return true;
  }
  if (std::strcmp(name, "auto") == 0) {
    use_avx2() = cpu_has_avx2();
    return true;
  }
  return false;
}

#if RNNK_HAVE_AVX2_BUILD
#define RNNK_CALL(fn, ...) (use_avx2() ? avx2::fn(__VA_ARGS__) : generic::fn(__VA_ARGS__))
#else
#define RNNK_CALL(fn, ...) generic::fn(__VA_ARGS__)
#endif

Status forward_gemm(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm) {
  return RNNK_CALL(forward_gemm, a, w, gemm);
}
Status backward_gemm(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm) {
  return RNNK_CALL(backward_gemm, a, w, gemm);
}
Status forward_fused(const ScanArgs& a, const ForwardScratch& w, int nthreads) {
  return RNNK_CALL(forward_fused, a, w, nthreads);
}
Status backward_fused(const ScanArgs& a, const BackwardScratch& w, int nthreads) {
  return RNNK_CALL(backward_fused, a, w, nthreads);
}
int fused_threads(const ScanArgs& a, int max_threads) {
  return RNNK_CALL(fused_threads, a, max_threads);
}

int64_t fused_pack_elems(const ScanArgs& a) { return RNNK_CALL(fused_pack_elems, a); }

bool fused_supported(const ScanArgs& a) { return a.w_hr == nullptr && a.P == a.H; }

Path choose_path(const ScanArgs& a, bool backward) {
  if (!fused_supported(a)) return Path::kGemm;
  // The largest batch at which the fused kernel still beats MKL's per-step GEMM, per direction
  // and cell: the forward's packed register tiles hold out far longer than the backward's column
  // tiles, which MKL's cache-blocked GEMM overtakes early. The crossovers were measured on the
  // project's 2-core AVX2 machine; the figures are in bench/results/cpu-20261126/README.md.
  int64_t max_batch = 32;
  if (!backward)
    max_batch = a.cell == Cell::kLSTM ? 256 : (a.cell == Cell::kGRU ? 96 : 128);
  return a.sched.B <= max_batch ? Path::kFused : Path::kGemm;
}

}  // namespace cpu
}  // namespace rnnk
