// python/cpu_pool.h — large CPU output buffers of the ops, kept mapped between calls.
//
// Why: torch's CPU allocator hands every large tensor fresh pages from the OS (glibc serves big
// blocks with mmap and unmaps them on free), so each [T, B, G·H] output pays one page fault per
// 4 KiB at its first write, a large part of a training step of a small model on the CPU (the
// figures: bench/results/cpu-20261126/README.md). The ops' own outputs (out, gates, cs, dxp)
// now come from blocks that were freed by earlier calls and stayed mapped; only the first call of
// a size faults.
//
// Blocks of at least kMinBytes are pooled, up to a limit of cached (free) bytes, option
// `cpu_pool_mb` (default 512; 0 turns pooling off and frees what is cached). A block is reused
// for a request of at most its size and at least 7/8 of it. Tensors are ordinary CPU tensors
// with a resizable storage (its DataPtr's deleter returns the block; growing it allocates with
// torch's CPU allocator), so a user's resize_() works as on at::empty's.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace rnnk {
namespace bridge {

at::Tensor pooled_empty(at::IntArrayRef shape, const at::TensorOptions& opts);
void set_pool_limit_mb(int64_t mb);
int64_t pool_limit_mb();
int64_t pool_cached_bytes();

}  // namespace bridge
}  // namespace rnnk
