// python/ext.cpp — the Python module rnnkernels._C and the schemas of its ops.
//
// The ops live in the namespace `rnnkernels_C` (torch.ops.rnnkernels_C.*), apart from the
// package's Python custom ops in `rnnkernels`: these are the cpu/cuda *backends* that the custom
// ops call (docs/BACKENDS.md), registered per device in cpu_ops.cpp and cuda_ops.cpp. Importing
// the module registers everything; it has no Python-level functions of its own.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cell_step.h"
#include "cpu/scan_cpu.h"
#include "cpu_pool.h"
#include "options.h"

namespace rnnk {
namespace bridge {

Options& options() {
  static Options o;
  return o;
}

namespace {

void set_option(const std::string& name, const std::string& value) {
  if (name == "cpu_path") {
    TORCH_CHECK(value == "auto" || value == "gemm" || value == "fused",
                "rnnkernels_C.set_option: cpu_path must be 'auto', 'gemm' or 'fused', got '", value,
                "'");
    options().cpu_path = value;
  } else if (name == "cuda_path") {
    TORCH_CHECK(value == "auto" || value == "step" || value == "persistent",
                "rnnkernels_C.set_option: cuda_path must be 'auto', 'step' or 'persistent', got '",
                value, "'");
    options().cuda_path = value;
  } else if (name == "poison") {
    TORCH_CHECK(value == "0" || value == "1", "rnnkernels_C.set_option: poison must be '0' or '1'");
    options().poison = value == "1";
  } else if (name == "cpu_isa") {
    TORCH_CHECK(cpu::set_isa(value.c_str()), "rnnkernels_C.set_option: cpu_isa '", value,
                "' is not available here (expected 'auto', 'generic' or, on a CPU that has it, "
                "'avx2' (AVX2+FMA) or 'avx512' (AVX-512 F/VL/BW/DQ))");
  } else if (name == "cpu_pool_mb") {
    int64_t mb = -1;
    try {
      mb = std::stoll(value);
    } catch (const std::exception&) {
    }
    TORCH_CHECK(mb >= 0, "rnnkernels_C.set_option: cpu_pool_mb must be an integer >= 0, got '",
                value, "'");
    set_pool_limit_mb(mb);
  } else {
    TORCH_CHECK(false, "rnnkernels_C.set_option: unknown option '", name,
                "' (expected cpu_path, cuda_path, cpu_isa, cpu_pool_mb or poison)");
  }
}

std::string get_option(const std::string& name) {
  if (name == "cpu_path") return options().cpu_path;
  if (name == "cuda_path") return options().cuda_path;
  if (name == "cpu_isa") return cpu::isa();
  if (name == "poison") return options().poison ? "1" : "0";
  if (name == "cpu_pool_mb") return std::to_string(pool_limit_mb());
  if (name == "cpu_pool_cached_bytes") return std::to_string(pool_cached_bytes());
  TORCH_CHECK(false, "rnnkernels_C.get_option: unknown option '", name, "'");
  return "";
}

bool has_cuda() {
#ifdef RNNK_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace
}  // namespace bridge
}  // namespace rnnk

TORCH_LIBRARY(rnnkernels_C, m) {
  m.def("lstm_forward(Tensor xp, Tensor h0, Tensor c0, Tensor w_hh, Tensor? w_hr, "
        "Tensor? lengths, bool reverse, bool save) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_forward(Tensor xp, Tensor h0, Tensor w_hh, Tensor? b_hn, Tensor? lengths, "
        "bool reverse, bool save) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("rnn_forward(Tensor xp, Tensor h0, Tensor w_hh, Tensor? lengths, bool reverse, "
        "bool relu, bool save) -> (Tensor, Tensor)");
  m.def("lstm_backward(Tensor grad_out, Tensor grad_hn, Tensor grad_cn, Tensor h0, Tensor c0, "
        "Tensor w_hh, Tensor? w_hr, Tensor? lengths, bool reverse, Tensor out, Tensor gates, "
        "Tensor cs) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("gru_backward(Tensor grad_out, Tensor grad_hn, Tensor h0, Tensor w_hh, Tensor? b_hn, "
        "Tensor? lengths, bool reverse, Tensor out, Tensor gates, Tensor hn_lin) "
        "-> (Tensor, Tensor)");
  m.def("rnn_backward(Tensor grad_out, Tensor grad_hn, Tensor h0, Tensor w_hh, Tensor? lengths, "
        "bool reverse, bool relu, Tensor out) -> (Tensor, Tensor)");
  // Process-wide switches (tests force each path / instruction set) and build facts.
  m.def("set_option(str name, str value) -> ()", &rnnk::bridge::set_option);
  m.def("get_option(str name) -> str", &rnnk::bridge::get_option);
  m.def("has_cuda() -> bool", &rnnk::bridge::has_cuda);
}

// The extension is imported as rnnkernels._C (the ops' registration happens in the static
// initialisers above when the shared object is loaded). Its own functions are the fused cell
// steps (python/cell_step.cpp), plain module functions: a cheaper call than an op's.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C",
                            "rnnkernels compiled backends: torch.ops.rnnkernels_C.* and the fused "
                            "cell steps (lstm_cell, gru_cell, rnn_cell)",
                            -1, rnnk::bridge::cell_step_methods(), nullptr, nullptr, nullptr,
                            nullptr};
  return PyModule_Create(&def);
}
