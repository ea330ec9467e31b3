// csrc/cpu/scan_common.h — what every part of the CPU scans shares (scan_impl.h includes the
// parts): the thread team, the vector types of a storage type, row conversions.
//
// Like every part, it is compiled once per instruction set: the including .cpp defines
// RNNK_CPU_ISA (the namespace of that build) and, above the baseline, wraps the include in a
// target pragma (see isa_build.h). Everything sits in an anonymous namespace inside it, so the two
// builds never share an out-of-line copy of a function.
#pragma once

#ifndef RNNK_CPU_ISA
#error "define RNNK_CPU_ISA before including the CPU scans (see scan_impl.h)"
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <new>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "rnnkernels/cell_io.h"
#include "rnnkernels/scan_params.h"
#include "simd.h"

namespace rnnk {
namespace cpu {
namespace RNNK_CPU_ISA {
namespace {

// Work below this many multiply-adds (or pointwise elements) per step is not worth waking a team.
constexpr int64_t kParallelMinElems = 4096;
constexpr int64_t kFusedMinMacsPerThread = 12288;

inline int thread_id() {
#ifdef _OPENMP
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int team_size() {
#ifdef _OPENMP
  return omp_get_num_threads();
#else
  return 1;
#endif
}

// The types the kernels of storage type S work in.
template <class S>
struct Types {
  using A = acc_of<S>;                // accumulation type
  using V = typename Vec<A>::type;    // its SIMD vector
  using M = vec_math_of<A>;           // the activations on V, for cell_math.h
  using IO = VecIO<A>;                // the loads and stores of cell_io.h
  static constexpr int L = Vec<A>::L;
};

template <class T>
inline void fill_zero(T* p, int64_t n) {
  std::memset(static_cast<void*>(p), 0, sizeof(T) * n);  // +0.0 in every dtype
}

template <class D, class Src>
inline void convert_row(D* dst, const Src* src, int64_t n) {
  for (int64_t k = 0; k < n; ++k) dst[k] = store_cast<D>(to_acc(src[k]));
}

// f(n, j) for the vectors of units [j0, j1): the full ones (n = L, a constant, so that the loads
// and stores of VecIO{n} have no ragged-end branches), then the ragged end, if any.
template <int L, class F>
RNNK_INLINE void for_vectors(int64_t j0, int64_t j1, const F& f) {
  int64_t j = j0;
  for (; j + L <= j1; j += L) f(L, j);
  if (j < j1) f(int(j1 - j), j);
}

// Per-thread lists of a fused kernel (int64 each), freed on leaving the kernel. Not std::vector:
// no library template may be instantiated in a targeted build (see isa_build.h).
struct ThreadLists {
  int64_t* data;
  explicit ThreadLists(int64_t n) : data(new (std::nothrow) int64_t[n]) {}
  ~ThreadLists() { delete[] data; }
  ThreadLists(const ThreadLists&) = delete;
  ThreadLists& operator=(const ThreadLists&) = delete;
};

// Units [j0, j1) of every row of a [B, H] state, and of the LSTM's cell state, from one type to
// the other: a fused kernel's thread loads or stores the units it owns.
template <Cell C, class D, class Src>
inline void convert_units(int64_t B, int64_t H, int64_t j0, int64_t j1, D* h, const Src* h_src,
                          D* c, const Src* c_src) {
  for (int64_t b = 0; b < B; ++b) {
    convert_row<D>(h + b * H + j0, h_src + b * H + j0, j1 - j0);
    if constexpr (C == Cell::kLSTM) convert_row<D>(c + b * H + j0, c_src + b * H + j0, j1 - j0);
  }
}

// A fused forward's step s for one thread's units [j0, j1): the sequences active at s go to
// act_b (their batch index) and act_t (their time index), and their count is returned; a
// sequence past its length keeps its state (cur → nxt) and gets a zero output row. `Sched` is
// ScanArgs::sched.
template <class Sched, class A, class S>
inline int64_t active_rows(const Sched& sched, int64_t s, int64_t B, int64_t H, int64_t j0,
                           int64_t j1, const A* cur, A* nxt, S* out, int64_t* act_b,
                           int64_t* act_t) {
  int64_t na = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t t = sched.time(s, b);
    if (t >= 0) {
      act_b[na] = b;
      act_t[na++] = t;
    } else {  // frozen state; zero output at the padded position
      std::memcpy(nxt + b * H + j0, cur + b * H + j0, sizeof(A) * (j1 - j0));
      fill_zero(out + (s * B + b) * H + j0, j1 - j0);
    }
  }
  return na;
}

// Rows per batch tile: at most `max_rows`, the tiles of the remaining rows as even as possible
// (7 rows at most 6 per tile → 4 + 3, never 6 + 1: every tile keeps its loads shared).
inline int tile_rows(int64_t remaining, int max_rows) {
  const int64_t tiles = (remaining + max_rows - 1) / max_rows;
  return int((remaining + tiles - 1) / tiles);
}

}  // namespace
}  // namespace RNNK_CPU_ISA
}  // namespace cpu
}  // namespace rnnk
