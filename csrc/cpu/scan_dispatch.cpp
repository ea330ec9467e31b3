// Run-time choice between the AVX2 and the generic build of the CPU scans, and of the path.
#include <cstdlib>
#include <cstring>

#include "scan_cpu.h"

namespace rnnk {
namespace cpu {

#define RNNK_DECLARE_ISA(ns)                                                                  \
  namespace ns {                                                                              \
  Status forward_gemm(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm);     \
  Status backward_gemm(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm);    \
  Status forward_fused(const ScanArgs& a, const StepScratch& w, int nthreads);                \
  Status backward_fused(const ScanArgs& a, const StepScratch& w, int nthreads);               \
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

Status forward_gemm(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm) {
  return RNNK_CALL(forward_gemm, a, w, gemm);
}
Status backward_gemm(const ScanArgs& a, const StepScratch& w, const GemmCallback& gemm) {
  return RNNK_CALL(backward_gemm, a, w, gemm);
}
Status forward_fused(const ScanArgs& a, const StepScratch& w, int nthreads) {
  return RNNK_CALL(forward_fused, a, w, nthreads);
}
Status backward_fused(const ScanArgs& a, const StepScratch& w, int nthreads) {
  return RNNK_CALL(backward_fused, a, w, nthreads);
}
int fused_threads(const ScanArgs& a, int max_threads) {
  return RNNK_CALL(fused_threads, a, max_threads);
}

int64_t fused_pack_elems(const ScanArgs& a) { return RNNK_CALL(fused_pack_elems, a); }

bool fused_supported(const ScanArgs& a) { return a.w_hr == nullptr && a.P == a.H; }

Path choose_path(const ScanArgs& a, bool backward, int max_threads) {
  (void)max_threads;
  if (!fused_supported(a)) return Path::kGemm;
  // Crossovers measured with 2 threads, H = 256, fp32, T = 100 on this project's AVX2 machine
  // (AMD EPYC, 2 cores) against MKL called through ATen, interleaved runs, medians:
  // forward: the fused kernel (register-blocked GEMM on packed W_hh, cell update on the
  // accumulators) wins up to B = 256 for the LSTM (114 vs 147 ms at 256, 38 vs 62 at 64), up to
  // B = 128 for the Elman RNN, and for the GRU until B = 96 (equal at 96-128, MKL ahead at 256);
  // backward: the fused kernel (column axpy tiles, no packing) wins up to B = 16-24 and ties at
  // 32; past that MKL's cache-blocked GEMM is ahead (33 vs 39 ms for the LSTM at 64).
  int64_t max_batch = 32;
  if (!backward)
    max_batch = a.cell == Cell::kLSTM ? 256 : (a.cell == Cell::kGRU ? 96 : 128);
  return a.sched.B <= max_batch ? Path::kFused : Path::kGemm;
}

}  // namespace cpu
}  // namespace rnnk
