// python/cpu_pool.cpp — see cpu_pool.h.
#include "cpu_pool.h"

#include <c10/core/CPUAllocator.h>

#include <cstdlib>
#include <map>
#include <mutex>

namespace rnnk {
namespace bridge {
namespace {

constexpr size_t kMinBytes = size_t(1) << 20;
constexpr size_t kAlign = 64;

struct Pool {
  std::mutex mutex;
  std::multimap<size_t, void*> free_blocks;  // block size → block
  size_t cached = 0;
  size_t limit = size_t(512) << 20;
};

// Never destroyed: a tensor may return its block during static destruction at exit.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

void give_back(void* block, size_t bytes) {
  Pool& P = pool();
  {
    std::lock_guard<std::mutex> lock(P.mutex);
    if (P.cached + bytes <= P.limit) {
      P.free_blocks.emplace(bytes, block);
      P.cached += bytes;
      return;
    }
  }
  std::free(block);
}

// A cached block of size in [bytes, bytes + bytes/7] (so at least 7/8 of it is used), else a new
// one. Returns null only if the system is out of memory.
void* take(size_t bytes, size_t* block_bytes) {
  Pool& P = pool();
  {
    std::lock_guard<std::mutex> lock(P.mutex);
    auto it = P.free_blocks.lower_bound(bytes);
    if (it != P.free_blocks.end() && it->first <= bytes + bytes / 7) {
      void* block = it->second;
      *block_bytes = it->first;
      P.cached -= it->first;
      P.free_blocks.erase(it);
      return block;
    }
  }
  void* block = nullptr;
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  if (posix_memalign(&block, kAlign, rounded) != 0) return nullptr;
  *block_bytes = rounded;
  return block;
}

}  // namespace

namespace {

struct PooledBlock {
  void* data;
  size_t bytes;
};

void release(void* context) {
  auto* block = static_cast<PooledBlock*>(context);
  give_back(block->data, block->bytes);
  delete block;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef shape, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  const size_t bytes = size_t(numel) * c10::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  if (!opts.device().is_cpu() || bytes < kMinBytes || pool_limit_mb() == 0)
    return at::empty(shape, opts);
  size_t block_bytes = 0;
  void* block = take(bytes, &block_bytes);
  if (!block) return at::empty(shape, opts);  // let torch raise its out-of-memory error
  // A resizable storage, like at::empty's: a user may resize_() an output. Growing it allocates
  // with torch's CPU allocator and copies; the pooled block goes back to the pool when the
  // storage lets go of it (the DataPtr's deleter), whenever that is.
  c10::Storage storage(c10::Storage::use_byte_size_t(), bytes,
                       c10::DataPtr(block, new PooledBlock{block, block_bytes}, &release,
                                    c10::Device(c10::kCPU)),
                       c10::GetCPUAllocator(), /*resizable=*/true);
  return at::empty({0}, opts).set_(storage, 0, shape);
}

void set_pool_limit_mb(int64_t mb) {
  Pool& P = pool();
  std::multimap<size_t, void*> drop;
  {
    std::lock_guard<std::mutex> lock(P.mutex);
    P.limit = size_t(mb < 0 ? 0 : mb) << 20;
    while (P.cached > P.limit && !P.free_blocks.empty()) {  // largest first
      auto it = std::prev(P.free_blocks.end());
      P.cached -= it->first;
      drop.insert(*it);
      P.free_blocks.erase(it);
    }
  }
  for (auto& kv : drop) std::free(kv.second);
}

int64_t pool_limit_mb() {
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mutex);
  return int64_t(P.limit >> 20);
}

int64_t pool_cached_bytes() {
  Pool& P = pool();
  std::lock_guard<std::mutex> lock(P.mutex);
  return int64_t(P.cached);
}

}  // namespace bridge
}  // namespace rnnk
