// Run-time choice among the ISA builds of the microkernels.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "ukernel/api.h"

#if defined(__unix__)
#include <unistd.h>
#endif

namespace effconv {
namespace cpu {
namespace {

const IsaKernels* by_name(const char* name) {
#if defined(__x86_64__) || defined(_M_X64)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  if (std::strcmp(name, "avx512") == 0) return avx512 ? &kIsaAvx512 : nullptr;
  if (std::strcmp(name, "avx2") == 0) return avx2 ? &kIsaAvx2 : nullptr;
  if (std::strcmp(name, "best") == 0) return avx512 ? &kIsaAvx512 : avx2 ? &kIsaAvx2 : &kIsaBaseline;
#else
  if (std::strcmp(name, "best") == 0) return &kIsaBaseline;
#endif
  if (std::strcmp(name, "baseline") == 0) return &kIsaBaseline;
  return nullptr;
}

const IsaKernels* initial() {
  const char* env = std::getenv("EFFCONV_CPU_ISA");
  if (env != nullptr && *env != '\0') {
    if (const IsaKernels* k = by_name(env)) return k;
  }
  return by_name("best");
}

std::atomic<const IsaKernels*> g_selected{nullptr};

}  // namespace

const IsaKernels& isa_kernels() {
  const IsaKernels* k = g_selected.load(std::memory_order_acquire);
  if (k == nullptr) {
    k = initial();
    g_selected.store(k, std::memory_order_release);
  }
  return *k;
}

int64_t gemm_block_bytes() {
  static const int64_t bytes = [] {
    constexpr int64_t kMin = int64_t(128) << 10, kMax = int64_t(512) << 10;
#if defined(_SC_LEVEL2_CACHE_SIZE)
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);  // glibc: 0 or -1 where unknown
    if (l2 > 0) return std::min(std::max(int64_t(l2) / 4, kMin), kMax);
#endif
    return kMin;
  }();
  return bytes;
}

bool set_isa(const char* name) {
  const IsaKernels* k = by_name(name);
  if (k == nullptr) return false;
  g_selected.store(k, std::memory_order_release);
  return true;
}

}  // namespace cpu
}  // namespace effconv
