// python/options.h — process-wide switches of the extension, set through
// torch.ops.rnnkernels_C.set_option (defined in ext.cpp). Tests use them to force each path.
#pragma once

#include <string>

namespace rnnk {
namespace bridge {

struct Options {
  std::string cpu_path = "auto";   // auto | gemm | fused     (csrc/cpu/scan_cpu.h)
  std::string cuda_path = "auto";  // auto | step | persistent (csrc/cuda/scan_cuda.h)
  // Fill every output and scratch buffer with NaN before the kernels run, so that a test sees
  // any element a kernel fails to write (contract: outputs are fully written, padding included).
  bool poison = false;
};
Options& options();

}  // namespace bridge
}  // namespace rnnk
