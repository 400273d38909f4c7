// AVX2 + FMA build of the CPU microkernels (csrc/cpu/ukernel/impl.h).
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#define EFFCONV_VEC_BYTES 32
#define EFFCONV_VEC_REGS 16
#include "ukernel/impl.h"
EFFCONV_DEFINE_ISA(kIsaAvx2, "avx2")
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
