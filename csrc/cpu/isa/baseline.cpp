// Baseline build of the CPU microkernels (SSE2 on x86-64, NEON on AArch64):
// 16-byte vectors, 16 registers. Always present.
#define EFFCONV_VEC_BYTES 16
#define EFFCONV_VEC_REGS 16
#include "ukernel/impl.h"
EFFCONV_DEFINE_ISA(kIsaBaseline, "baseline")
