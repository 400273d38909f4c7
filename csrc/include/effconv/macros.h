// Portability macros shared by host C++, CUDA C++ and the ISA-specific CPU
// translation units. Nothing here may include torch headers: the CPU
// microkernels and the CUDA device code both include this file.
#pragma once

// Shared helpers have internal linkage (`static`): the ISA translation units
// are compiled for AVX-512/AVX2, and an inline function with external linkage
// instantiated there could be picked by the linker for code that runs on a
// CPU without those instructions.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define EFFCONV_HD static __host__ __device__ __forceinline__
#define EFFCONV_HD_MEMBER __host__ __device__ __forceinline__
#else
#define EFFCONV_HD static inline
#define EFFCONV_HD_MEMBER inline
#endif
