// csrc/cpu/isa_dispatch.h — calling the instruction-set build in use. Every CPU kernel is compiled
// once per build (scan_generic.cpp; scan_avx2.cpp and scan_avx512.cpp on x86), each into its own
// namespace; a dispatcher declares an entry point in every build with RNNK_DECLARE_IN_EACH_ISA
// and calls the one cpu::isa_level() names with RNNK_ISA_CALL.
#pragma once

#include "scan_cpu.h"

#if defined(__x86_64__) || defined(__i386__)
#define RNNK_X86_BUILDS 1
#define RNNK_DECLARE_IN_EACH_ISA(...) \
  namespace generic {                 \
  __VA_ARGS__                         \
  }                                   \
  namespace avx2 {                    \
  __VA_ARGS__                         \
  }                                   \
  namespace avx512 {                  \
  __VA_ARGS__                         \
  }
#define RNNK_ISA_CALL(fn, ...)                                                     \
  (::rnnk::cpu::isa_level() == ::rnnk::cpu::Isa::kAvx512 ? avx512::fn(__VA_ARGS__) \
   : ::rnnk::cpu::isa_level() == ::rnnk::cpu::Isa::kAvx2 ? avx2::fn(__VA_ARGS__)   \
                                                          : generic::fn(__VA_ARGS__))
#else
#define RNNK_X86_BUILDS 0
#define RNNK_DECLARE_IN_EACH_ISA(...) \
  namespace generic {                 \
  __VA_ARGS__                         \
  }
#define RNNK_ISA_CALL(fn, ...) generic::fn(__VA_ARGS__)
#endif
