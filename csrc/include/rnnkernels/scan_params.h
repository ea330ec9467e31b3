// rnnkernels/scan_params.h — shapes, schedule and argument structs shared by the CPU and CUDA
// kernels and the torch bridge (python/). Framework-free: raw pointers, sizes, enums.
//
// The contract (docs/BACKENDS.md): T steps, B batch, H hidden, P = proj_size or H, G gates.
// Every tensor is contiguous. `xp`, `out`, the states and the gradients are in the storage dtype;
// weights, workspaces and scratch buffers are in the accumulation dtype `acc` (float for
// float/half/bfloat16, double for double), so every kernel keeps state and sums in `acc`.
#pragma once

#include <cstdint>

#include "rnnkernels/cell_math.h"

namespace rnnk {

enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
enum class Cell : int32_t { kLSTM = 0, kGRU = 1, kRNNTanh = 2, kRNNReLU = 3 };

RNNK_HOST_DEVICE inline int gates_of(Cell cell) {
  return cell == Cell::kLSTM ? 4 : (cell == Cell::kGRU ? 3 : 1);
}

inline const char* dtype_name(DType d) {
  switch (d) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kFloat16: return "float16";
    case DType::kBFloat16: return "bfloat16";
  }
  return "unknown";
}

// Result of a kernel call. `code` 0 is success; for CUDA it is the cudaError_t of the failed
// launch. `what` is a static string naming the failing kernel or the unsupported case.
struct Status {
  int code = 0;
  const char* what = "";
  bool ok() const { return code == 0; }
  static Status success() { return Status{}; }
  static Status error(int c, const char* w) { return Status{c, w}; }
};
constexpr int kErrorUnsupported = -1;  // not a CUDA code: a case this entry point cannot run

// Which time index a sequence reads and writes at each step (docs/BACKENDS.md, "Time order").
// Sequence b is active at step s iff s < L_b; it then works on t = s, or t = L_b - 1 - s when
// reversed. Inactive steps keep the state; their output position is t = s (which is ≥ L_b in
// both directions, so each padded position is visited exactly once and can be zeroed there).
struct Schedule {
  int64_t T = 0;
  int64_t B = 0;
  const int64_t* lengths = nullptr;  // [B] on the kernel's device, or null: all T
  bool reverse = false;

  RNNK_HOST_DEVICE RNNK_INLINE int64_t length(int64_t b) const {
    return lengths ? lengths[b] : T;
  }
  // Time index of sequence b at step s, or -1 when it is past its end.
  RNNK_HOST_DEVICE RNNK_INLINE int64_t time(int64_t s, int64_t b) const {
    const int64_t L = length(b);
    if (s >= L) return -1;
    return reverse ? L - 1 - s : s;
  }
};

// Everything one scan call (forward or backward) works on. Pointers that a call does not use are
// null. Element types: [dt] storage dtype, [acc] accumulation dtype (see the file comment).
struct ScanArgs {
  Cell cell = Cell::kLSTM;
  DType dtype = DType::kFloat32;
  Schedule sched;
  int64_t H = 0;  // hidden size
  int64_t P = 0;  // recurrent state size: proj_size for a projected LSTM, else H

  // Weights [acc]
  const void* w_hh = nullptr;  // [G*H, P]
  const void* w_hr = nullptr;  // [P, H] (LSTM with projection) or null
  const void* b_hn = nullptr;  // [H] (GRU with bias) or null

  // Forward inputs [dt]
  const void* xp = nullptr;  // [T, B, G*H]
  const void* h0 = nullptr;  // [B, P]
  const void* c0 = nullptr;  // [B, H] (LSTM)

  // Forward outputs
  void* out = nullptr;    // [T, B, P] dt
  void* h_n = nullptr;    // [B, P] dt
  void* c_n = nullptr;    // [B, H] dt
  void* gates = nullptr;  // [T, B, G*H] acc, activated gates; null when not saved
  void* aux = nullptr;    // [T, B, H] acc: LSTM c_t, GRU hn_lin; null when not saved

  // Backward inputs (gates/aux/out above are the saved forward results)
  const void* grad_out = nullptr;  // [T, B, P] dt
  const void* grad_hn = nullptr;   // [B, P] dt
  const void* grad_cn = nullptr;   // [B, H] dt

  // Backward outputs
  void* dxp = nullptr;     // [T, B, G*H] dt
  void* dh0 = nullptr;     // [B, P] dt
  void* dc0 = nullptr;     // [B, H] dt
  void* dh_all = nullptr;  // [T, B, P] acc (LSTM with projection) or null

  int gates_count() const { return gates_of(cell); }
  bool relu() const { return cell == Cell::kRNNReLU; }
};

// Scratch buffers [acc] the caller allocates for the step-wise paths (one GEMM per step through a
// callback, then a fused pointwise kernel). Names follow the forward; the backward reuses them.
//   forward:  h [B,P] state, c [B,H] cell, gh [B,G*H] = h·W_hhᵀ, hh [B,H] and hp [B,P] (projection)
//   backward: h = the carry ∂L/∂h [B,P], c = ∂L/∂c [B,H], gh = d gates fed to the GEMM [B,G*H],
//             hh = ∂L/∂hh [B,H] and hp = the step's total ∂L/∂h [B,P] (projection)
struct StepScratch {
  void* h = nullptr;
  void* c = nullptr;
  void* gh = nullptr;
  void* hh = nullptr;
  void* hp = nullptr;
  void* pack = nullptr;  // CPU fused forward: W_hh packed in panels (cpu::fused_pack_elems)
};

// The GEMMs of the step-wise paths, done by the caller (through the fastest GEMM of the device,
// on the right stream) on the StepScratch buffers and the weights:
enum class GemmOp : int32_t {
  kGates = 0,        // forward:  gh = h · W_hhᵀ                     [B,P]·[P,G*H]
  kProject = 1,      // forward:  hp = hh · W_hrᵀ                    [B,H]·[H,P]
  kRecurrent = 2,    // backward: h += gh · W_hh  (accumulate)       [B,G*H]·[G*H,P]
  kProjectBack = 3,  // backward: hh = hp · W_hr                     [B,P]·[P,H]
};

// Callback for the GEMMs above; returns false (after recording the error itself) to abort.
struct GemmCallback {
  void* ctx = nullptr;
  bool (*fn)(void* ctx, GemmOp op) = nullptr;
  bool operator()(GemmOp op) const { return fn(ctx, op); }
};

}  // namespace rnnk
