// Run-time choice between the AVX-512, AVX2 and generic builds of the CPU scans, and of the path.
#include <cstdlib>
#include <cstring>

#include "isa_dispatch.h"

namespace rnnk {
namespace cpu {

RNNK_DECLARE_IN_EACH_ISA(
    Status forward_gemm(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm);
    Status backward_gemm(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm);
    Status forward_fused(const ScanArgs& a, const ForwardScratch& w, int nthreads);
    Status backward_fused(const ScanArgs& a, const BackwardScratch& w, int nthreads);
    int fused_threads(const ScanArgs& a, int max_threads);
    int64_t fused_pack_elems(const ScanArgs& a);)

namespace {

constexpr const char* kIsaNames[] = {"generic", "avx2", "avx512"};

// The best build this CPU (and its OS: __builtin_cpu_supports checks that the OS saves the
// vector state) can run.
Isa detected() {
#if RNNK_X86_BUILDS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq"))
    return Isa::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
#endif
  return Isa::kGeneric;
}

// The build a name asks for ("auto": the detected one), or false if this CPU cannot run it.
bool parse(const char* name, Isa* out) {
  if (std::strcmp(name, "auto") == 0) {
    *out = detected();
    return true;
  }
  for (int i = 0; i < 3; ++i)
    if (std::strcmp(name, kIsaNames[i]) == 0) {
      if (int(detected()) < i) return false;
      *out = Isa(i);
      return true;
    }
  return false;
}

Isa initial_choice() {
  Isa choice = detected();
  const char* env = std::getenv("RNNKERNELS_CPU_ISA");
  if (env && !parse(env, &choice)) choice = detected();  // a build this CPU lacks: the best one
  return choice;
}

Isa& current() {
  static Isa v = initial_choice();
  return v;
}

}  // namespace

Isa isa_level() { return current(); }
const char* isa() { return kIsaNames[int(current())]; }
bool set_isa(const char* name) { return parse(name, &current()); }

Status forward_gemm(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm) {
  return RNNK_ISA_CALL(forward_gemm, a, w, gemm);
}
Status backward_gemm(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm) {
  return RNNK_ISA_CALL(backward_gemm, a, w, gemm);
}
Status forward_fused(const ScanArgs& a, const ForwardScratch& w, int nthreads) {
  return RNNK_ISA_CALL(forward_fused, a, w, nthreads);
}
Status backward_fused(const ScanArgs& a, const BackwardScratch& w, int nthreads) {
  return RNNK_ISA_CALL(backward_fused, a, w, nthreads);
}
int fused_threads(const ScanArgs& a, int max_threads) {
  return RNNK_ISA_CALL(fused_threads, a, max_threads);
}

int64_t fused_pack_elems(const ScanArgs& a) { return RNNK_ISA_CALL(fused_pack_elems, a); }

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
