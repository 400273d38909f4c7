// A cache of large CPU output buffers.
//
// glibc serves allocations above its mmap threshold (at most 32 MiB) with a
// fresh mmap and returns them with munmap, so every large activation a
// network allocates is page-faulted in again on first touch: on our
// reference machine ~0.3 ms per MiB, 25 ms for one 77 MiB MobileNetV2
// activation at batch 16, as long as the convolution that writes it.
// effconv's CPU kernels take their large outputs from this pool instead:
// freed buffers go back to a size-class free list (2 MiB classes backed by
// transparent huge pages where the kernel allows; 64 KiB classes below
// 2 MiB, where glibc's moving mmap threshold and heap trimming fault the
// pages of batch-1 activations in again on most calls) and the next output
// of that class reuses the already-mapped pages. The pool holds at most
// EFFCONV_CPU_CACHE_MB (default 2048) of idle buffers; effconv.empty_cache()
// releases them.
#include <ATen/ATen.h>

#include <sys/mman.h>

#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

#include "kernels.h"

namespace effconv {
namespace cpu {
namespace {

constexpr size_t kClass = size_t(2) << 20;        // 2 MiB: the huge page size
constexpr size_t kSmallClass = size_t(64) << 10;  // the pool's smallest buffers

size_t class_bytes(size_t need) {
  const size_t c = need >= kClass ? kClass : kSmallClass;
  return (need + c - 1) / c * c;
}

struct Pool {
  std::mutex mu;
  std::map<size_t, std::vector<void*>> free_blocks;  // bytes -> idle blocks
  size_t idle_bytes = 0;
  size_t limit_bytes;

  Pool() {
    const char* env = std::getenv("EFFCONV_CPU_CACHE_MB");
    limit_bytes = size_t(env ? std::strtoull(env, nullptr, 10) : 2048) << 20;
  }

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu);
      auto it = free_blocks.find(bytes);
      if (it != free_blocks.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        idle_bytes -= bytes;
        return p;
      }
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    TORCH_CHECK(p != MAP_FAILED, "effconv: could not allocate ", bytes, " bytes for an output");
#ifdef MADV_HUGEPAGE
    if (bytes >= kClass) madvise(p, bytes, MADV_HUGEPAGE);  // fewer, cheaper first-touch faults
#endif
    return p;
  }

  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (idle_bytes + bytes <= limit_bytes) {
        free_blocks[bytes].push_back(p);
        idle_bytes += bytes;
        return;
      }
    }
    munmap(p, bytes);
  }

  size_t release() {
    std::lock_guard<std::mutex> lock(mu);
    size_t released = 0;
    for (auto& [bytes, blocks] : free_blocks) {
      for (void* p : blocks) munmap(p, bytes);
      released += bytes * blocks.size();
    }
    free_blocks.clear();
    idle_bytes = 0;
    return released;
  }
};

Pool& pool() {
  static Pool* p = new Pool();  // leaked: tensors may outlive static destruction
  return *p;
}

struct Block {
  void* ptr;
  size_t bytes;
};

void give_back(void* ctx) {
  auto* b = static_cast<Block*>(ctx);
  pool().give(b->ptr, b->bytes);
  delete b;
}

}  // namespace

at::Tensor empty_pooled(at::IntArrayRef sizes, at::ScalarType dtype, bool channels_last) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t need = size_t(numel) * at::elementSize(dtype);
  if (need < kSmallClass)
    return at::empty(sizes, at::TensorOptions().dtype(dtype),
                     channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  const size_t bytes = class_bytes(need);
  auto* block = new Block{pool().take(bytes), bytes};
  at::DataPtr data(block->ptr, block, &give_back, at::Device(at::kCPU));
  at::Storage storage(at::Storage::use_byte_size_t(), bytes, std::move(data), /*allocator=*/nullptr,
                      /*resizable=*/false);
  std::vector<int64_t> strides;
  if (channels_last) {
    strides = c10::get_channels_last_strides_2d(sizes);
  } else {
    strides.assign(sizes.size(), 1);
    for (int64_t i = int64_t(sizes.size()) - 2; i >= 0; --i) strides[i] = strides[i + 1] * std::max<int64_t>(sizes[i + 1], 1);
  }
  at::Tensor t = at::empty({0}, at::TensorOptions().dtype(dtype));
  t.set_(storage, 0, sizes, strides);
  return t;
}

size_t empty_pool() { return pool().release(); }

}  // namespace cpu
}  // namespace effconv
