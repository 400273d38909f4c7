// AVX-512 build of the CPU microkernels (csrc/cpu/ukernel/impl.h).
// The target pragma, not a command-line flag, selects the ISA so that one
// extension build carries every ISA and picks one at run time.
#if defined(__x86_64__) || defined(_M_X64)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c"))), \
                             apply_to = function)
#else
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
#endif
#define EFFCONV_VEC_BYTES 64
#define EFFCONV_VEC_REGS 32
#include "ukernel/impl.h"
EFFCONV_DEFINE_ISA(kIsaAvx512, "avx512")
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
