// rnnkernels/scan_params.h — shapes, schedule and argument structs shared by the CPU and CUDA
// kernels and the torch bridge (python/). Framework-free: raw pointers, sizes, enums.
//
// The contract (docs/BACKENDS.md): T steps, B batch, H hidden, P = proj_size or H, G gates.
// Every tensor is contiguous. `xp`, `out`, the states and the gradients are in the storage dtype;
// weights, workspaces and scratch buffers are in the accumulation dtype `acc` (float for
// float/half/bfloat16, double for double), so every kernel keeps state and sums in `acc`.
#pragma once

#include <cstdint>
#include <type_traits>

#include "rnnkernels/cell_math.h"

namespace rnnk {

enum class DType : int32_t { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
enum class Cell : int32_t { kLSTM = 0, kGRU = 1, kRNNTanh = 2, kRNNReLU = 3 };

// Gates per hidden unit: the one place the 4 / 3 / 1 of docs/BACKENDS.md is spelled out. A
// constexpr function, so kernels templated on the cell use it as a compile-time constant.
RNNK_HOST_DEVICE constexpr int gates_of(Cell cell) {
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
  void* out = nullptr;     // [T, B, P] dt
  void* h_n = nullptr;     // [B, P] dt
  void* c_n = nullptr;     // [B, H] dt
  void* gates = nullptr;   // [T, B, G*H] acc, activated gates; null when not saved
  void* cs = nullptr;      // [T, B, H] acc, LSTM c_t; null when not saved (and for other cells)
  void* hn_lin = nullptr;  // [T, B, H] acc, GRU W_hn·h_{t-1} + b_hn; null likewise

  // Backward inputs (out, gates, cs, hn_lin above are the saved forward results)
  const void* grad_out = nullptr;  // [T, B, P] dt
  const void* grad_hn = nullptr;   // [B, P] dt
  const void* grad_cn = nullptr;   // [B, H] dt

  // Backward outputs
  void* dxp = nullptr;     // [T, B, G*H] dt
  void* dh0 = nullptr;     // [B, P] dt
  void* dc0 = nullptr;     // [B, H] dt
  void* dh_all = nullptr;  // [T, B, P] acc (LSTM with projection) or null
};

// Scratch buffers [acc] the caller allocates for the step-wise paths (one GEMM per step through a
// callback, then a fused pointwise kernel). The CPU fused path uses some of them with other
// shapes, documented in csrc/cpu/scan_cpu.h.
struct ForwardScratch {
  void* h = nullptr;     // [B, P] the state h_{t-1}, then h_t
  void* c = nullptr;     // [B, H] the LSTM cell state
  void* gh = nullptr;    // [B, G*H] h_{t-1}·W_hhᵀ
  void* hh = nullptr;    // [B, H] LSTM with projection: the unprojected hidden o ⊙ tanh(c_t)
  void* hp = nullptr;    // [B, P] LSTM with projection: hh·W_hrᵀ, the next state
  void* pack = nullptr;  // CPU fused forward: W_hh packed in panels (cpu::fused_pack_elems)
};

struct BackwardScratch {
  void* dh = nullptr;        // [B, P] the carry ∂L/∂h, from step t+1 into step t
  void* dc = nullptr;        // [B, H] the carry ∂L/∂c (LSTM)
  void* dgates = nullptr;    // [B, G*H] d gates of the step, what W_hh multiplies
  void* dhh = nullptr;       // [B, H] LSTM with projection: ∂L/∂hh = dh_total·W_hr
  void* dh_total = nullptr;  // [B, P] LSTM with projection: the step's total ∂L/∂h_t
};

// The GEMMs of the step-wise paths, done by the caller (through the fastest GEMM of the device,
// on the right stream) on the scratch buffers and the weights:
enum class GemmOp : int32_t {
  kGates = 0,        // forward:  gh = h · W_hhᵀ                     [B,P]·[P,G*H]
  kProject = 1,      // forward:  hp = hh · W_hrᵀ                    [B,H]·[H,P]
  kRecurrent = 2,    // backward: dh += dgates · W_hh (accumulate)   [B,G*H]·[G*H,P]
  kProjectBack = 3,  // backward: dhh = dh_total · W_hr              [B,P]·[P,H]
};

// f(std::integral_constant<Cell, C>{}, S* null) for the cell of `a` and the type S that holds its
// dtype on the device: S32 float32, S64 float64, S16 float16, SB16 bfloat16, or void where the
// device has no kernels for that dtype. The switch from the runtime case to the kernels, which
// are templates over both.
template <class S32, class S64, class S16, class SB16, class F>
Status dispatch(const ScanArgs& a, F&& f) {
  auto with = [&](auto* s) -> Status {
    if constexpr (std::is_void_v<std::remove_pointer_t<decltype(s)>>) {
      return Status::error(kErrorUnsupported, "no kernels for this dtype on this device");
    } else {
      switch (a.cell) {
        case Cell::kLSTM: return f(std::integral_constant<Cell, Cell::kLSTM>{}, s);
        case Cell::kGRU: return f(std::integral_constant<Cell, Cell::kGRU>{}, s);
        case Cell::kRNNTanh: return f(std::integral_constant<Cell, Cell::kRNNTanh>{}, s);
        case Cell::kRNNReLU: return f(std::integral_constant<Cell, Cell::kRNNReLU>{}, s);
      }
      return Status::error(kErrorUnsupported, "unknown cell");
    }
  };
  switch (a.dtype) {
    case DType::kFloat32: return with(static_cast<S32*>(nullptr));
    case DType::kFloat64: return with(static_cast<S64*>(nullptr));
    case DType::kFloat16: return with(static_cast<S16*>(nullptr));
    case DType::kBFloat16: return with(static_cast<SB16*>(nullptr));
  }
  return Status::error(kErrorUnsupported, "unknown dtype");
}

// Callback for the GEMMs above; returns false (after recording the error itself) to abort.
struct GemmCallback {
  void* ctx = nullptr;
  bool (*fn)(void* ctx, GemmOp op) = nullptr;
  bool operator()(GemmOp op) const { return fn(ctx, op); }
};

}  // namespace rnnk
