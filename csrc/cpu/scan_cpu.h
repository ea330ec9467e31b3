// csrc/cpu/scan_cpu.h — entry points of the CPU scans (implementation in scan_impl.h).
//
// All functions take raw pointers through ScanArgs (scan_params.h) and return a Status; none
// allocates tensors. The caller (python/cpu_ops.cpp) allocates outputs and scratch:
//
//   GEMM path   forward_gemm / backward_gemm: ForwardScratch / BackwardScratch as documented in
//               scan_params.h, and a GemmCallback that runs the GEMMs of GemmOp on those buffers.
//   fused path  forward_fused: h = [2, B, H] (double buffer), c = [B, H],
//               pack = fused_pack_elems(a) elements (W_hh repacked in panels, per call);
//               backward_fused: dh = [B, H], dc = [B, H], dgates = [2, B, G·H] (double buffer).
//               No projection (P must equal H). `nthreads` from fused_threads().
#pragma once

#include "rnnkernels/scan_params.h"

namespace rnnk {
namespace cpu {

enum class Path : int32_t { kAuto = 0, kGemm = 1, kFused = 2 };

Status forward_gemm(const ScanArgs& a, const ForwardScratch& w, const GemmCallback& gemm);
Status backward_gemm(const ScanArgs& a, const BackwardScratch& w, const GemmCallback& gemm);
Status forward_fused(const ScanArgs& a, const ForwardScratch& w, int nthreads);
Status backward_fused(const ScanArgs& a, const BackwardScratch& w, int nthreads);

// Threads the fused path should use for this case, given the threads available.
int fused_threads(const ScanArgs& a, int max_threads);
// Size (accumulation-type elements) of ForwardScratch::pack for forward_fused.
int64_t fused_pack_elems(const ScanArgs& a);
// Whether the fused path can run the case (no projection).
bool fused_supported(const ScanArgs& a);
// The path `auto` takes for the forward or the backward: fused for small batches (where the
// library GEMM, called per step, is slower than the fused kernel's own dot products), GEMM
// otherwise. The thresholds are measured crossovers, see scan_dispatch.cpp.
Path choose_path(const ScanArgs& a, bool backward);

// The instruction set the kernels run with: "avx512", "avx2" or "generic" (isa_level() as an
// enum, for the dispatchers of isa_dispatch.h). set_isa("auto" | "avx512" | "avx2" | "generic")
// overrides the run-time detection (false if that build is not available or the CPU lacks it);
// the environment variable RNNKERNELS_CPU_ISA sets the initial choice the same way.
enum class Isa : int32_t { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
Isa isa_level();
const char* isa();
bool set_isa(const char* name);

}  // namespace cpu
}  // namespace rnnk
