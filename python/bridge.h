// python/bridge.h — shared glue between torch tensors and the framework-free kernels in csrc/:
// input validation with clear errors, output allocation, and ScanArgs filling. Used by the CPU
// (cpu_ops.cpp) and CUDA (cuda_ops.cpp) implementations of the rnnkernels_C ops.
#pragma once

#include <ATen/ATen.h>
#include <limits>
#include <optional>
#include <string>
#include <tuple>

#include "cpu_pool.h"
#include "options.h"
#include "rnnkernels/scan_params.h"

namespace rnnk {
namespace bridge {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

inline at::ScalarType acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline DType to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "rnnkernels: unsupported dtype ", t);
  }
  return DType::kFloat32;
}

// Validates an op's tensors, with messages that name the backend, the op and the argument.
// `who` prefixes every message, e.g. "rnnkernels cpu backend: lstm_forward".
struct Checker {
  std::string who;
  at::DeviceType device;
  at::ScalarType dtype;

  void tensor(const Tensor& t, const char* name, at::IntArrayRef shape) const {
    TORCH_CHECK(t.defined(), who, ": ", name, " is undefined");
    TORCH_CHECK(t.device().type() == device, who, ": ", name, " is on ", t.device(),
                ", expected a ", c10::DeviceTypeName(device), " tensor");
    TORCH_CHECK(t.scalar_type() == dtype, who, ": ", name, " has dtype ", t.scalar_type(),
                ", expected ", dtype, " like the other inputs");
    TORCH_CHECK(t.sizes().equals(shape), who, ": ", name, " has shape ", t.sizes(),
                ", expected ", shape);
  }

  // The CPU kernels' dtypes (the plain scans' and the variants' runners).
  void cpu_dtype() const {
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 ||
                    dtype == at::kHalf,
                who, ": unsupported dtype ", dtype,
                " (float32, float64, bfloat16 and float16 are supported)");
  }

  void workspace(const Tensor& t, const char* name, at::IntArrayRef shape) const {
    TORCH_CHECK(t.defined() && t.numel() > 0, who, ": the ", name,
                " workspace is empty: the forward ran with save=False (inference) and cannot be "
                "differentiated");
    TORCH_CHECK(t.device().type() == device, who, ": ", name, " is on ", t.device());
    TORCH_CHECK(t.scalar_type() == acc_type(dtype), who, ": ", name, " has dtype ",
                t.scalar_type(), ", expected ", acc_type(dtype));
    TORCH_CHECK(t.sizes().equals(shape), who, ": ", name, " has shape ", t.sizes(),
                ", expected ", shape);
  }

  // lengths: int64 [B] on the same device, 1 ≤ L_b ≤ T (checked on the host when the tensor is
  // there; a device tensor is only checked for its shape, as reading it would synchronise).
  Tensor lengths(const OptTensor& lengths, int64_t T, int64_t B) const {
    if (!lengths.has_value() || !lengths->defined()) return Tensor();
    const Tensor& l = *lengths;
    TORCH_CHECK(l.scalar_type() == at::kLong, who, ": lengths must be int64, got ",
                l.scalar_type());
    TORCH_CHECK(l.dim() == 1 && l.size(0) == B, who, ": lengths must have shape [", B, "], got ",
                l.sizes());
    TORCH_CHECK(l.device().type() == device, who, ": lengths is on ", l.device(),
                ", expected the device of the inputs");
    Tensor c = l.contiguous();
    if (device == at::kCPU) {
      const int64_t* p = c.data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b)
        TORCH_CHECK(p[b] >= 1 && p[b] <= T, who, ": lengths[", b, "] = ", p[b],
                    " is outside [1, T = ", T, "]");
    }
    return c;
  }
};

inline const void* ptr(const Tensor& t) {
  return t.defined() && t.numel() ? t.data_ptr() : nullptr;
}
inline void* mptr(const Tensor& t) { return t.defined() && t.numel() ? t.data_ptr() : nullptr; }

// Allocation of outputs and scratch: uninitialised, or NaN when Options::poison is set.
// Large CPU buffers come from cpu_pool (kept mapped between calls: no page faults).
inline Tensor alloc(at::IntArrayRef shape, const at::TensorOptions& opts) {
  Tensor t = pooled_empty(shape, opts);
  if (options().poison && t.numel() > 0) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

}  // namespace bridge
}  // namespace rnnk
