// CPU microkernels, written once with GCC/Clang vector extensions and compiled
// once per ISA by csrc/cpu/isa/<isa>.cpp, which sets the target and defines
//   EFFCONV_VEC_BYTES  vector width in bytes (64 AVX-512, 32 AVX2, 16 baseline)
//   EFFCONV_VEC_REGS   architectural vector registers (32 or 16)
// before including this file. Everything here lives in an anonymous namespace
// so no instantiation leaks out of its ISA's translation unit.
#pragma once
#include <cstdint>
#include <type_traits>

#include "effconv/epilogue.h"
#include "ukernel/api.h"

#if defined(__x86_64__)
#include <immintrin.h>  // non-temporal stores; available under the ISA's target pragma
#endif

#if !defined(EFFCONV_VEC_BYTES) || !defined(EFFCONV_VEC_REGS)
#error "include impl.h from an ISA translation unit (csrc/cpu/isa/*.cpp)"
#endif

namespace effconv {
namespace cpu {
namespace {

template <typename T>
struct IntOfSize;
template <>
struct IntOfSize<float> {
  typedef int32_t type;
};
template <>
struct IntOfSize<double> {
  typedef int64_t type;
};

template <typename T>
struct VecTraits {
  typedef T V __attribute__((vector_size(EFFCONV_VEC_BYTES)));
  typedef typename IntOfSize<T>::type I;
  typedef I IV __attribute__((vector_size(EFFCONV_VEC_BYTES)));  // lane indices for __builtin_shuffle
  static constexpr int L = EFFCONV_VEC_BYTES / int(sizeof(T));
};
template <typename T>
using vec_t = typename VecTraits<T>::V;
template <typename T>
using ivec_t = typename VecTraits<T>::IV;

template <typename T>
inline vec_t<T> vload(const T* p) {
  vec_t<T> v;
  __builtin_memcpy(&v, p, sizeof(v));
  return v;
}
template <typename T>
inline void vstore(T* p, vec_t<T> v) {
  __builtin_memcpy(p, &v, sizeof(v));
}
template <typename T>
inline vec_t<T> vsplat(T s) {
  return vec_t<T>{} + s;
}
// Non-temporal store of a full vector to a vector-aligned address.
inline void vstream(float* p, vec_t<float> v) {
#if defined(__x86_64__) && EFFCONV_VEC_BYTES == 64
  _mm512_stream_ps(p, reinterpret_cast<__m512&>(v));
#elif defined(__x86_64__) && EFFCONV_VEC_BYTES == 32
  _mm256_stream_ps(p, reinterpret_cast<__m256&>(v));
#elif defined(__x86_64__) && EFFCONV_VEC_BYTES == 16
  _mm_stream_ps(p, reinterpret_cast<__m128&>(v));
#else
  vstore(p, v);
#endif
}
inline void vstream(double* p, vec_t<double> v) {
#if defined(__x86_64__) && EFFCONV_VEC_BYTES == 64
  _mm512_stream_pd(p, reinterpret_cast<__m512d&>(v));
#elif defined(__x86_64__) && EFFCONV_VEC_BYTES == 32
  _mm256_stream_pd(p, reinterpret_cast<__m256d&>(v));
#elif defined(__x86_64__) && EFFCONV_VEC_BYTES == 16
  _mm_stream_pd(p, reinterpret_cast<__m128d&>(v));
#else
  vstore(p, v);
#endif
}

// Partial load/store for the last n < L lanes of a row.
template <typename T>
inline vec_t<T> vload_n(const T* p, int64_t n) {
  T tmp[VecTraits<T>::L] = {};
  for (int64_t l = 0; l < n; ++l) tmp[l] = p[l];
  return vload(tmp);
}
// A vector of n <= L values (full load when n == L).
template <typename T>
inline vec_t<T> vload_any(const T* p, int64_t n) {
  return n == VecTraits<T>::L ? vload(p) : vload_n(p, n);
}

// The first N lanes, N fixed at compile time (one narrower load or store).
template <typename T, int N>
inline vec_t<T> vload_head(const T* p) {
  vec_t<T> v{};
  __builtin_memcpy(&v, p, N * sizeof(T));
  return v;
}
template <typename T, int N>
inline void vstore_head(T* p, vec_t<T> v) {
  __builtin_memcpy(p, &v, N * sizeof(T));
}

template <typename T>
inline void vstore_n(T* p, vec_t<T> v, int64_t n, int64_t stride = 1) {
  T tmp[VecTraits<T>::L];
  vstore(tmp, v);
  for (int64_t l = 0; l < n; ++l) p[l * stride] = tmp[l];
}

// exp via Cody-Waite range reduction and a Taylor polynomial on
// [-ln2/2, ln2/2]; relative error below 1 ulp of float (6e-9) and of double
// (4e-18 before rounding). Inputs are clamped so 2^n stays a normal number.
inline vec_t<float> vexp(vec_t<float> x) {
  typedef int32_t VI __attribute__((vector_size(EFFCONV_VEC_BYTES)));
  const vec_t<float> lo = vsplat(-87.0f), hi = vsplat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vec_t<float> magic = vsplat(12582912.0f);  // 1.5 * 2^23: adds round-to-nearest
  const vec_t<float> n = (x * 1.44269504088896341f + magic) - magic;
  const vec_t<float> f = x - n * 0.693359375f - n * -2.12194440e-4f;
  vec_t<float> p = vsplat(1.0f / 5040.0f);
  p = p * f + 1.0f / 720.0f;
  p = p * f + 1.0f / 120.0f;
  p = p * f + 1.0f / 24.0f;
  p = p * f + 1.0f / 6.0f;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const VI e = (__builtin_convertvector(n, VI) + 127) << 23;
  vec_t<float> two_n;
  __builtin_memcpy(&two_n, &e, sizeof(e));
  return p * two_n;
}

inline vec_t<double> vexp(vec_t<double> x) {
  typedef int64_t VI __attribute__((vector_size(EFFCONV_VEC_BYTES)));
  const vec_t<double> lo = vsplat(-708.0), hi = vsplat(709.0);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const vec_t<double> magic = vsplat(6755399441055744.0);  // 1.5 * 2^52
  const vec_t<double> n = (x * 1.4426950408889634074 + magic) - magic;
  const vec_t<double> f = x - n * 6.93147180369123816490e-01 - n * 1.90821492927058770002e-10;
  double coef = 1.0;
  for (int k = 2; k <= 13; ++k) coef /= k;  // 1/13!
  vec_t<double> p = vsplat(coef);
  for (int k = 13; k >= 1; --k) {
    coef *= k;  // now 1/(k-1)!
    p = p * f + coef;
  }
  const VI e = (__builtin_convertvector(n, VI) + 1023) << 52;
  vec_t<double> two_n;
  __builtin_memcpy(&two_n, &e, sizeof(e));
  return p * two_n;
}

template <typename T>
inline vec_t<T> activate(vec_t<T> z, int act) {
  const vec_t<T> zero{};
  switch (static_cast<Activation>(act)) {
    case Activation::kReLU:
      return z < zero ? zero : z;  // NaN-propagating, like torch.relu
    case Activation::kReLU6: {
      const vec_t<T> six = vsplat<T>(6);
      z = z < zero ? zero : z;
      return z > six ? six : z;
    }
    case Activation::kSiLU:
      return z / (vsplat<T>(1) + vexp(-z));
    default:
      return z;
  }
}

template <typename T>
inline vec_t<T> apply_epilogue(vec_t<T> z, const EpilogueArgs<T>& ep, int64_t col, bool bias = true) {
  if (bias && ep.bias) z += vload(ep.bias + col);
  if (ep.scale) z *= vload(ep.scale + col);
  if (ep.shift) z += vload(ep.shift + col);
  return activate<T>(z, ep.act);
}

// Adds the first n lanes of per-column partial sums to the epilogue's
// batch-statistics arrays (double: sums over millions of pixels).
template <typename T>
inline void add_stats(const EpilogueArgs<T>& ep, int64_t col, vec_t<T> sum, vec_t<T> sq, int64_t n) {
  // GCC 12 reports the lanes "may be used uninitialized" wherever this is
  // inlined into a block with a partial pixel count (a false positive: every
  // caller initialises both vectors); the diagnostic is silenced here only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
  for (int64_t l = 0; l < n; ++l) {
    ep.stat_sum[col + l] += sum[l];
    ep.stat_sq[col + l] += sq[l];
  }
#pragma GCC diagnostic pop
}

constexpr int kMr1 = ukernel_mr(EFFCONV_VEC_REGS, 1);
constexpr int kMr2 = ukernel_mr(EFFCONV_VEC_REGS, 2);
constexpr int kMr3 = ukernel_mr(EFFCONV_VEC_REGS, 3);
constexpr int kMr4 = ukernel_mr(EFFCONV_VEC_REGS, 4);

// ---------------------------------------------------------------------------
// Indirect GEMM: MR rows x NV vectors of accumulators live in registers for
// the whole reduction (all taps, all kc); the epilogue runs on them before
// the single store, so the output is written exactly once.
constexpr int64_t kPrefetchBlocks = 4;

template <typename T>
inline const T* a_row(const IGemmArgs<T>& g, int64_t i, int64_t t) {
  return (g.a ? g.a[i * g.ntaps + t] : g.a_dense + i * g.lda) + g.a_off;
}
template <typename T>
inline T* c_row(const IGemmArgs<T>& g, int64_t i) {
  return (g.c ? g.c[i] : g.c_dense + i * g.ldc) + g.c_off;
}

// Row operands of tap t for rows [i0, i0 + mv); false when the caller asked
// for all-padding taps to be skipped (IGemmArgs::zero) and this is one.
// Rows past the end repeat the last row: always valid memory, never stored.
template <typename T, int MR>
__attribute__((always_inline)) inline bool tap_rows(const IGemmArgs<T>& g, int64_t i0, int64_t mv, int64_t t,
                                                    const T* (&ap)[MR]) {
  if (g.a && g.zero) {
    bool any = false;
    for (int64_t i = 0; i < mv; ++i) any |= g.a[(i0 + i) * g.ntaps + t] != g.zero;
    if (!any) return false;
  }
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) ap[i] = a_row(g, i0 + (i < mv ? i : mv - 1), t);
  return true;
}

// Partial blocks (last rows, last panel, strided output) index the
// accumulators at run time. Out of line, so only this path pays for moving
// them through memory.
template <typename T, int MR, int NV>
__attribute__((noinline)) void igemm_store_partial(const IGemmArgs<T>& g, const vec_t<T> (&acc)[MR][NV], int64_t i0,
                                                   int64_t mv, int64_t col0, bool first, bool last) {
  constexpr int L = VecTraits<T>::L;
  for (int64_t i = 0; i < mv; ++i) {
    T* crow = c_row(g, i0 + i);
    for (int v = 0; v < NV; ++v) {
      const int64_t col = col0 + v * L;
      if (col >= g.ncols) break;
      const int64_t nvalid = g.ncols - col;
      const int64_t n = nvalid < L ? nvalid : L;
      T* dst = crow + col * g.c_cstride;
      vec_t<T> z = acc[i][v];
      if (!first) {  // add the partial sums of earlier reduction blocks
        T tmp[VecTraits<T>::L] = {};
        for (int64_t l = 0; l < n; ++l) tmp[l] = dst[l * g.c_cstride];
        z += vload(tmp);
      }
      if (last) {
        z = apply_epilogue<T>(z, g.ep, col, /*bias=*/false);  // the accumulators started from it
        if (g.ep.stat_sum) add_stats(g.ep, col, z, z * z, n);
      }
      if (g.c_cstride == 1 && n == L)
        vstore(dst, z);
      else
        vstore_n(dst, z, n, g.c_cstride);
    }
  }
}

// Epilogue and store of a full block, with the activation and the optional
// parts fixed at compile time: MR x NV accumulators leave few of the vector
// registers free, and a generic epilogue (scale, shift, statistics vectors
// and a run-time activation switch) spilled them to the stack every block,
// which cost 1x1 convs with 16-64 input channels a third of their time.
// TAIL: the last vector's valid lanes (a 24-column ci4 panel's 8).
template <typename T, int MR, int NV, int TAIL, int ACT, bool AFFINE, bool STATS>
__attribute__((always_inline)) inline void igemm_store_full(const IGemmArgs<T>& g, const vec_t<T> (&acc)[MR][NV],
                                                            int64_t i0, int64_t col0, bool stream) {
  constexpr int L = VecTraits<T>::L;
  vec_t<T> ssum[NV], ssq[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) ssum[v] = ssq[v] = vec_t<T>{};
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    T* crow = c_row(g, i0 + i) + col0;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      vec_t<T> z = acc[i][v];
      if (AFFINE) {
        if (g.ep.scale) z *= vload(g.ep.scale + col0 + v * L);
        if (g.ep.shift) z += vload(g.ep.shift + col0 + v * L);
      }
      z = activate<T>(z, ACT);
      if (STATS) {
        ssum[v] += z;
        ssq[v] += z * z;
      }
      if (TAIL < L && v == NV - 1)
        vstore_head<T, TAIL>(crow + v * L, z);
      else if (stream)
        vstream(crow + v * L, z);
      else
        vstore(crow + v * L, z);
    }
  }
  if (STATS)
    for (int v = 0; v < NV; ++v) add_stats(g.ep, col0 + v * L, ssum[v], ssq[v], v == NV - 1 ? TAIL : L);
}

template <typename T, int MR, int NV, int TAIL, int ACT>
inline void igemm_store_last_act(const IGemmArgs<T>& g, const vec_t<T> (&acc)[MR][NV], int64_t i0, int64_t col0,
                                 bool stream) {
  const bool affine = g.ep.scale || g.ep.shift;
  if (g.ep.stat_sum) {
    if (affine)
      igemm_store_full<T, MR, NV, TAIL, ACT, true, true>(g, acc, i0, col0, stream);
    else
      igemm_store_full<T, MR, NV, TAIL, ACT, false, true>(g, acc, i0, col0, stream);
  } else if (affine) {
    igemm_store_full<T, MR, NV, TAIL, ACT, true, false>(g, acc, i0, col0, stream);
  } else {
    igemm_store_full<T, MR, NV, TAIL, ACT, false, false>(g, acc, i0, col0, stream);
  }
}

template <typename T, int MR, int NV, int TAIL>
inline void igemm_store_last(const IGemmArgs<T>& g, const vec_t<T> (&acc)[MR][NV], int64_t i0, int64_t col0,
                             bool stream) {
  switch (static_cast<Activation>(g.ep.act)) {
    case Activation::kReLU:
      igemm_store_last_act<T, MR, NV, TAIL, int(Activation::kReLU)>(g, acc, i0, col0, stream);
      break;
    case Activation::kReLU6:
      igemm_store_last_act<T, MR, NV, TAIL, int(Activation::kReLU6)>(g, acc, i0, col0, stream);
      break;
    case Activation::kSiLU:
      igemm_store_last_act<T, MR, NV, TAIL, int(Activation::kSiLU)>(g, acc, i0, col0, stream);
      break;
    default: igemm_store_last_act<T, MR, NV, TAIL, int(Activation::kNone)>(g, acc, i0, col0, stream); break;
  }
}

// The end of a block: acc holds the block's sums (plus the bias when first,
// plus C's partial sums when !first and full). full: MR rows of NV - 1
// vectors and TAIL lanes (L, or a 24-column panel's 8), unit column stride.
template <typename T, int MR, int NV, int TAIL = VecTraits<T>::L>
__attribute__((always_inline)) inline void igemm_block_store(const IGemmArgs<T>& g, const vec_t<T> (&acc)[MR][NV],
                                                             int64_t i0, int64_t mv, int64_t col0, bool full,
                                                             bool first, bool last) {
  constexpr int L = VecTraits<T>::L;
  if (!full) {
    // A copy escapes to the out-of-line store, not acc itself: were acc's
    // address taken, every block would keep it in memory.
    vec_t<T> out[MR][NV];
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) out[i][v] = acc[i][v];
    igemm_store_partial<T, MR, NV>(g, out, i0, mv, col0, first, last);
    return;
  }
  // Full blocks of full panels store from registers with compile-time
  // indices; a runtime row bound would force every accumulator through the
  // stack first.
  if (!last) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        T* dst = c_row(g, i0 + i) + col0 + v * L;
        if (TAIL < L && v == NV - 1)
          vstore_head<T, TAIL>(dst, acc[i][v]);
        else
          vstore(dst, acc[i][v]);
      }
    return;
  }
  // Streams only whole vectors: a 24-column panel's rows are not 64-byte aligned.
  // Partial sums were cached: keep them there.
  igemm_store_last<T, MR, NV, TAIL>(g, acc, i0, col0, g.stream && first && TAIL == L);
}

// One reduction block [t0, t1) x [k0, k1) of one panel for MR rows.
// first: start from zero (else from C's partial sums); last: apply the
// epilogue. Intermediate blocks store raw partial sums into C.
template <typename T, int MR, int NV>
inline void igemm_block(const IGemmArgs<T>& g, const T* bp, int64_t col0, int64_t i0, int64_t mv, int64_t t0,
                        int64_t t1, int64_t k0, int64_t k1, bool first, bool last) {
  constexpr int L = VecTraits<T>::L;
  constexpr int64_t NR = int64_t(NV) * L;
  const bool full = mv == MR && col0 + NR <= g.ncols && g.c_cstride == 1;
  vec_t<T> acc[MR][NV];
  if (first) {
    // The bias starts the sum (free, where adding it in the epilogue took a
    // register per vector next to the MR x NV accumulators).
    vec_t<T> b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = g.ep.bias ? vload(g.ep.bias + col0 + v * L) : vec_t<T>{};
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = b[v];
  } else if (!full) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = vec_t<T>{};
  } else {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = vload(c_row(g, i0 + i) + col0 + v * L);
  }
  for (int64_t t = t0; t < t1; ++t) {
    const T* ap[MR];
    if (!tap_rows<T, MR>(g, i0, mv, t, ap)) continue;
    const T* bt = bp + g.b_off[t];
#pragma GCC unroll 4
    for (int64_t k = k0; k < k1; ++k) {
      vec_t<T> bv[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bv[v] = vload(bt + k * NR + v * L);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const T s = ap[i][k];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[i][v] += s * bv[v];
      }
    }
  }
  igemm_block_store<T, MR, NV>(g, acc, i0, mv, col0, full, first, last);
}

// One-vector panels (L output columns: ResNeXt's 16-channel groups,
// SqueezeNet's squeeze) cost igemm_block a broadcast of A per multiply-add.
// With B packed four reduction channels interleaved (IGemmArgs::ci4,
// b_offset) one broadcast of A[i][k..k+3] into every 4-lane group feeds
// NQ multiply-adds: accumulator j's lane 4u + v sums column 4j + u over
// channels k = v (mod 4), and two deinterleave-adds fold each four
// accumulators into one vector of 16 columns. NQ = 6 serves 24-column
// panels (MobileNet's 24-channel projections) at 1.5 multiply-adds per row
// and channel where a plain two-vector panel pays 2, a quarter of them on
// padding. AVX-512 float only (kCi4).
constexpr bool kCi4 = isa_has_ci4(EFFCONV_VEC_BYTES, EFFCONV_VEC_REGS);
constexpr int kMrCi4 = 6;    // NQ 4: 24 accumulators, 4 B vectors, the broadcast
constexpr int kMrCi4x6 = 4;  // NQ 6: 24 accumulators, 6 B vectors, the broadcast

template <typename T>
inline vec_t<T> fold_ci4(const vec_t<T> (&q)[4]) {
  constexpr int L = VecTraits<T>::L;
  ivec_t<T> even, odd;
  for (int l = 0; l < L; ++l) even[l] = 2 * l, odd[l] = 2 * l + 1;
  const vec_t<T> lo = __builtin_shuffle(q[0], q[1], even) + __builtin_shuffle(q[0], q[1], odd);
  const vec_t<T> hi = __builtin_shuffle(q[2], q[3], even) + __builtin_shuffle(q[2], q[3], odd);
  return __builtin_shuffle(lo, hi, even) + __builtin_shuffle(lo, hi, odd);
}

inline vec_t<float> vbroadcast4(const float* p) {
#if defined(__x86_64__) && EFFCONV_VEC_BYTES == 64
  // GCC 12's own _mm512_broadcast_f32x4 reads an undefined source register
  // and warns (-Wmaybe-uninitialized) at every use; the intrinsic is fine.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
  const __m512 v = _mm512_broadcast_f32x4(_mm_loadu_ps(p));
#pragma GCC diagnostic pop
  return reinterpret_cast<const vec_t<float>&>(v);
#else
  vec_t<float> v;
  for (int l = 0; l < VecTraits<float>::L; ++l) v[l] = p[l % 4];
  return v;
#endif
}

template <typename T, int MR, int NQ>
inline void igemm_block_ci4(const IGemmArgs<T>& g, const T* bp, int64_t col0, int64_t i0, int64_t mv, int64_t t0,
                            int64_t t1, int64_t k0, int64_t k1, bool first, bool last) {
  constexpr int L = VecTraits<T>::L;
  constexpr int NV = (NQ + 3) / 4;
  constexpr int64_t NR = int64_t(NV) * L;  // the panel's packed width (b_offset's nr)
  constexpr int TAIL = (4 * NQ) % L ? (4 * NQ) % L : L;
  const bool full = mv == MR && col0 + 4 * NQ <= g.ncols && g.c_cstride == 1;
  vec_t<T> q[MR][NQ];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NQ; ++j) q[i][j] = vec_t<T>{};
  for (int64_t t = t0; t < t1; ++t) {
    const T* ap[MR];
    if (!tap_rows<T, MR>(g, i0, mv, t, ap)) continue;
    const T* bt = bp + g.b_off[t];
#pragma GCC unroll 2
    for (int64_t k = k0; k < k1; k += 4) {
      vec_t<T> bv[NQ];
#pragma GCC unroll 8
      for (int j = 0; j < NQ; ++j) bv[j] = vload(bt + k * NR + j * L);
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const vec_t<T> x = vbroadcast4(ap[i] + k);
#pragma GCC unroll 8
        for (int j = 0; j < NQ; ++j) q[i][j] += x * bv[j];
      }
    }
  }
  vec_t<T> acc[MR][NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) {
      const vec_t<T> four[4] = {q[i][4 * v], 4 * v + 1 < NQ ? q[i][4 * v + 1] : vec_t<T>{},
                                4 * v + 2 < NQ ? q[i][4 * v + 2] : vec_t<T>{},
                                4 * v + 3 < NQ ? q[i][4 * v + 3] : vec_t<T>{}};
      acc[i][v] = fold_ci4<T>(four);
    }
  if (first) {
    if (g.ep.bias) {
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        const vec_t<T> b = vload(g.ep.bias + col0 + v * L);
#pragma GCC unroll 32
        for (int i = 0; i < MR; ++i) acc[i][v] += b;
      }
    }
  } else if (full) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) {
        const T* src = c_row(g, i0 + i) + col0 + v * L;
        acc[i][v] += TAIL < L && v == NV - 1 ? vload_head<T, TAIL>(src) : vload(src);
      }
  }
  igemm_block_store<T, MR, NV, TAIL>(g, acc, i0, mv, col0, full, first, last);
}

// Panels outside, reduction blocks next, row blocks inside: one reduction
// block of one panel (g.tap_block taps x g.k_block channels of B) stays in
// L2 while every row of the call streams past it; C holds the partial sums
// between blocks. Without blocking, a dense 3x3 conv with 256 channels
// re-read its whole 2.3 MB weight from L3 for every 18 rows.
// NQ > 0: the channel-interleaved kernel with NQ accumulators per row.
template <typename T, int MR, int NV, int NQ = 0>
void igemm_nv(const IGemmArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  constexpr int64_t NR = int64_t(NV) * L;
  const int64_t tb = g.tap_block > 0 ? g.tap_block : (g.ntaps > 0 ? g.ntaps : 1);
  const int64_t kb = g.k_block > 0 ? g.k_block : (g.kc > 0 ? g.kc : 1);
  for (int64_t p = g.p_begin; p < g.p_end; ++p) {
    const T* bp = g.b + p * g.panel_stride;
    const int64_t col0 = p * NR;
    int64_t t0 = 0;
    do {
      const int64_t t1 = t0 + tb < g.ntaps ? t0 + tb : g.ntaps;
      int64_t k0 = 0;
      do {
        const int64_t k1 = k0 + kb < g.kc ? k0 + kb : g.kc;
        const bool first = t0 == 0 && k0 == 0, last = t1 >= g.ntaps && k1 >= g.kc;
        for (int64_t i0 = 0; i0 < g.m; i0 += MR) {
          // 1x1 rows are a cold stream from L3/DRAM: prefetch the rows a few
          // blocks ahead (one block's compute is shorter than a DRAM miss).
          if (g.ntaps == 1 && p == g.p_begin && first) {
            const int64_t ahead = i0 + kPrefetchBlocks * MR;
            const int64_t end = ahead + MR < g.m ? ahead + MR : g.m;
            for (int64_t i = ahead; i < end; ++i) {
              const char* row = reinterpret_cast<const char*>(a_row(g, i, 0) + k0);
              for (int64_t off = 0; off < (k1 - k0) * int64_t(sizeof(T)); off += 64) __builtin_prefetch(row + off);
            }
          }
          const int64_t mv = g.m - i0 < MR ? g.m - i0 : MR;
          if constexpr (NQ > 0)
            igemm_block_ci4<T, MR, NQ>(g, bp, col0, i0, mv, t0, t1, k0, k1, first, last);
          else
            igemm_block<T, MR, NV>(g, bp, col0, i0, mv, t0, t1, k0, k1, first, last);
        }
        k0 = k1;
      } while (k0 < g.kc);
      t0 = t1;
    } while (t0 < g.ntaps);
  }
}

template <typename T>
void igemm(const IGemmArgs<T>& g) {
  if constexpr (kCi4 && std::is_same_v<T, float>) {
    if (g.ci4) return g.nv == 1 ? igemm_nv<T, kMrCi4, 1, 4>(g) : igemm_nv<T, kMrCi4x6, 2, 6>(g);
  }
  switch (g.nv) {
    case 1: igemm_nv<T, kMr1, 1>(g); break;
    case 2: igemm_nv<T, kMr2, 2>(g); break;
    case 3: igemm_nv<T, kMr3, 3>(g); break;
    default: igemm_nv<T, kMr4, 4>(g); break;
  }
}

// ---------------------------------------------------------------------------
// Weight-gradient GEMM: rows are MR consecutive input channels of one tap, the
// reduction runs over pixels, and every pixel contributes one broadcast per
// row against NV vectors of the packed output-gradient panel.
// Row pitch of WGemmArgs' D: d_ld, or packed panels' nv vectors.
template <typename T>
inline int64_t d_pitch(const WGemmArgs<T>& g) {
  return g.d_ld ? g.d_ld : int64_t(g.nv) * VecTraits<T>::L;
}

// SUM: also add the panel's columns into dsum (the bias gradient, see
// WGemmArgs::dsum), in the same order a pass of its own would.
template <typename T, int MR, int NV, bool SUM = false>
void wgemm_block(const WGemmArgs<T>& g, int64_t t, int64_t c0, const T* dp, T* out, int64_t ld, T* dsum = nullptr) {
  constexpr int L = VecTraits<T>::L;
  vec_t<T> acc[MR][NV], sum[NV];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = vec_t<T>{};
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) sum[v] = vec_t<T>{};
  const int64_t ldd = d_pitch(g);
  for (int64_t m = 0; m < g.m; ++m) {
    const T* xrow = g.x[m * g.ntaps + t];
    if (!SUM && xrow == g.zero) continue;
    const T* xp = xrow + g.x_off + c0;
    vec_t<T> bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = vload(dp + m * ldd + v * L);
    if constexpr (SUM)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) sum[v] += bv[v];
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const T s = xp[i];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += s * bv[v];
    }
  }
  if constexpr (SUM)
    for (int v = 0; v < NV; ++v) vstore(dsum + v * L, vload(dsum + v * L) + sum[v]);
  for (int i = 0; i < MR; ++i)
    for (int v = 0; v < NV; ++v) {
      T* o = out + i * ld + v * L;
      vstore(o, vload(o) + acc[i][v]);
    }
}

// Runs block(std::integral_constant<int, MR>{}, r0) over rows [0, n) in
// blocks of MRMAX rows, then 8/4/2/1 for the remainder.
template <int MRMAX, typename Block>
inline void for_each_row_block(int64_t n, const Block& block) {
  for (int64_t r0 = 0; r0 < n;) {
    const int64_t rem = n - r0;
    if (rem >= MRMAX) {
      block(std::integral_constant<int, MRMAX>{}, r0);
      r0 += MRMAX;
    } else if (MRMAX > 8 && rem >= 8) {
      block(std::integral_constant<int, (MRMAX > 8 ? 8 : 1)>{}, r0);
      r0 += (MRMAX > 8 ? 8 : 1);
    } else if (MRMAX > 4 && rem >= 4) {
      block(std::integral_constant<int, (MRMAX > 4 ? 4 : 1)>{}, r0);
      r0 += (MRMAX > 4 ? 4 : 1);
    } else if (MRMAX > 2 && rem >= 2) {
      block(std::integral_constant<int, (MRMAX > 2 ? 2 : 1)>{}, r0);
      r0 += (MRMAX > 2 ? 2 : 1);
    } else {
      block(std::integral_constant<int, 1>{}, r0);
      r0 += 1;
    }
  }
}

template <typename T, int MRMAX, int NV>
void wgemm_nv(const WGemmArgs<T>& g) {
  constexpr int64_t NR = int64_t(NV) * VecTraits<T>::L;
  const int64_t ld = g.npanels * NR;
  for (int64_t p = 0; p < g.npanels; ++p) {
    const T* dp = g.d + p * g.d_panel_stride;
    for (int64_t t = 0; t < g.ntaps; ++t) {
      // Channel blocks of MRMAX, then 8/4/2/1 for the remainder, so no row
      // ever reads past its tap's cg channels.
      for_each_row_block<MRMAX>(g.cg, [&](auto mr, int64_t c0) {
        T* out = g.dw + (t * g.cg + c0) * ld + p * NR;
        if (g.dsum && t == 0 && c0 == 0)
          wgemm_block<T, decltype(mr)::value, NV, true>(g, t, c0, dp, out, ld, g.dsum + p * NR);
        else
          wgemm_block<T, decltype(mr)::value, NV>(g, t, c0, dp, out, ld);
      });
    }
  }
}

// Transposed weight gradient (WGemmArgs::dy): TB taps x MR output channels
// x NV vectors of input channels per block; per pixel TB * NV vector loads
// of X and MR broadcasts of dy feed TB * MR * NV multiply-adds. Several
// vectors take one tap per block (TB = 1); one vector (grouped convs with
// 16 or 32 channels per group) takes up to 3 taps, so each dy broadcast
// serves every tap of the block: one tap per block re-broadcast each dy
// element per tap and left 16 channels a latency-bound 4-row remainder.
template <typename T, int TB, int MR, int NV>
void wgemm_t_block(const WGemmArgs<T>& g, int64_t t0, int64_t c0, int64_t k0, T* out, int64_t ld) {
  constexpr int L = VecTraits<T>::L;
  vec_t<T> acc[TB][MR][NV];
#pragma GCC unroll 4
  for (int j = 0; j < TB; ++j)
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[j][i][v] = vec_t<T>{};
  const T* const* xr = g.x + t0;
  const int64_t off = g.x_off + c0;
  for (int64_t m = 0; m < g.m; ++m, xr += g.ntaps) {
    const T* dp = g.dy + m * g.ldd + k0;
    vec_t<T> xv[TB][NV];
#pragma GCC unroll 4
    for (int j = 0; j < TB; ++j)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) xv[j][v] = vload(xr[j] + off + v * L);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const T s = dp[i];
#pragma GCC unroll 4
      for (int j = 0; j < TB; ++j)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[j][i][v] += s * xv[j][v];
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < TB; ++j)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        T* o = out + (k0 + i) * ld + (t0 + j) * g.cg + v * L;
        vstore(o, vload(o) + acc[j][i][v]);
      }
}

// Taps [t0, t0 + TB) over every block of NV vectors of input channels and
// MRMAX (then 8/4/2/1) output channels.
template <typename T, int TB, int MRMAX, int NV>
void wgemm_t_taps(const WGemmArgs<T>& g, int64_t t0) {
  constexpr int64_t NR = int64_t(NV) * VecTraits<T>::L;
  const int64_t ld = g.ntaps * g.cg;
  for (int64_t c0 = 0; c0 + NR <= g.cg; c0 += NR)
    for_each_row_block<MRMAX>(g.kcols, [&](auto mr, int64_t k0) {
      wgemm_t_block<T, TB, decltype(mr)::value, NV>(g, t0, c0, k0, g.dw + c0, ld);
    });
}

template <typename T, int MRMAX, int NV>
void wgemm_t_nv(const WGemmArgs<T>& g) {
  for (int64_t t = 0; t < g.ntaps; ++t) wgemm_t_taps<T, 1, MRMAX, NV>(g, t);
}

// One vector: taps in blocks of 3 (a 3-wide kernel row), then 2 / 1.
template <typename T>
void wgemm_t_v1(const WGemmArgs<T>& g) {
  constexpr int MR = EFFCONV_VEC_REGS >= 32 ? 8 : 4;  // TB * MR accumulators + TB inputs
  int64_t t0 = 0;
  for (; t0 + 3 <= g.ntaps; t0 += 3) wgemm_t_taps<T, 3, MR, 1>(g, t0);
  if (g.ntaps - t0 == 2) wgemm_t_taps<T, 2, MR, 1>(g, t0);
  if (g.ntaps - t0 == 1) wgemm_t_taps<T, 1, MR, 1>(g, t0);
}

// acc[j] += sum_m src[m * ld + j] for j < cols.
template <typename T>
void colsum(const T* src, int64_t ld, int64_t rows, int64_t cols, T* acc) {
  constexpr int L = VecTraits<T>::L;
  int64_t c0 = 0;
  for (; c0 + 4 * L <= cols; c0 += 4 * L) {
    vec_t<T> s0{}, s1{}, s2{}, s3{};
    for (int64_t m = 0; m < rows; ++m) {
      const T* r = src + m * ld + c0;
      s0 += vload(r);
      s1 += vload(r + L);
      s2 += vload(r + 2 * L);
      s3 += vload(r + 3 * L);
    }
    vstore(acc + c0, vload(acc + c0) + s0);
    vstore(acc + c0 + L, vload(acc + c0 + L) + s1);
    vstore(acc + c0 + 2 * L, vload(acc + c0 + 2 * L) + s2);
    vstore(acc + c0 + 3 * L, vload(acc + c0 + 3 * L) + s3);
  }
  for (; c0 < cols; c0 += L) {
    const int64_t n = std::min<int64_t>(L, cols - c0);
    vec_t<T> sum{};
    for (int64_t m = 0; m < rows; ++m) sum += vload_any(src + m * ld + c0, n);
    vstore_n(acc + c0, vload_any(acc + c0, n) + sum, n);
  }
}

template <typename T>
void wgemm(const WGemmArgs<T>& g) {
  if (g.dsum && g.dy) colsum(g.dy, g.ldd, g.m, g.kcols, g.dsum);  // (wgemm_nv sums the panels as it reads them)
  if (g.dy) {
    switch (g.nv) {
      case 1: wgemm_t_v1(g); break;
      case 2: wgemm_t_nv<T, kMr2, 2>(g); break;
      case 3: wgemm_t_nv<T, kMr3, 3>(g); break;
      default: wgemm_t_nv<T, kMr4, 4>(g); break;
    }
    return;
  }
  switch (g.nv) {
    case 1: wgemm_nv<T, kMr1, 1>(g); break;
    case 2: wgemm_nv<T, kMr2, 2>(g); break;
    case 3: wgemm_nv<T, kMr3, 3>(g); break;
    default: wgemm_nv<T, kMr4, 4>(g); break;
  }
}

// ---------------------------------------------------------------------------
// Epilogue, store and batch statistics of one vector of output columns
// [col, col + L) (those below ncols) for rows 0 .. n-1 (n <= N) of `acc`:
// row(i) is row i's output, channel k at row(i)[k * cstride].
template <typename T, int N, typename Row>
inline void store_column_vector(const EpilogueArgs<T>& ep, const vec_t<T> (&acc)[N], int64_t n, int64_t col,
                                int64_t ncols, int64_t cstride, const Row& row, bool stream = false) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  const int64_t nvalid = ncols - col < L ? ncols - col : L;
  V ssum{}, ssq{};
#pragma GCC unroll 16
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    T* dst = row(i);
    const V z = apply_epilogue<T>(acc[i], ep, col);
    ssum += z;
    ssq += z * z;
    if (cstride == 1 && nvalid == L) {
      if (stream)
        vstream(dst + col, z);
      else
        vstore(dst + col, z);
    } else {
      vstore_n(dst + col * cstride, z, nvalid, cstride);
    }
  }
  if (ep.stat_sum) add_stats(ep, col, ssum, ssq, nvalid);
}

// ---------------------------------------------------------------------------
// Grouped convolution vectorised across groups (see GConvArgs). Per pixel
// and tap the span is loaded once; each input channel c of a group then
// costs one register permute and one FMA for L output channels.
constexpr int kGconvMr = EFFCONV_VEC_REGS >= 32 ? 12 : 4;

template <typename T, int MR, int SPANV>
void gconv_block(const GConvArgs<T>& g, int64_t vb, int64_t i0, int64_t mv, ivec_t<T> base) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  V acc[MR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) acc[i] = V{};
  const int64_t cbase = vb * (L / g.kg) * g.cg;
  const bool full = cbase + SPANV * L <= g.channels;
  const T* wv = g.w + vb * g.wtaps * g.cg * L;
  for (int64_t t = 0; t < g.ntaps; ++t) {
    if (g.zero) {
      bool any = false;
      for (int64_t i = 0; i < mv; ++i) any |= g.a[(i0 + i) * g.ntaps + t] != g.zero;
      if (!any) continue;
    }
    V x[MR][SPANV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T* row = g.a[(i0 + (i < mv ? i : mv - 1)) * g.ntaps + t] + g.a_off + cbase;
#pragma GCC unroll 2
      for (int h = 0; h < SPANV; ++h) {
        if (full) {
          x[i][h] = vload(row + h * L);
        } else {  // the last block may reach past the pixel's channels
          const int64_t n = g.channels - cbase - h * L;
          x[i][h] = vload_n(row + h * L, n < 0 ? 0 : (n < L ? n : L));
        }
      }
    }
    const T* wt = wv + (g.tap_index ? g.tap_index[t] : t) * g.cg * L;
    for (int64_t c = 0; c < g.cg; ++c) {
      const ivec_t<T> idx = base + static_cast<typename VecTraits<T>::I>(c);
      const V w = vload(wt + c * L);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        if constexpr (SPANV == 1)
          acc[i] += __builtin_shuffle(x[i][0], idx) * w;
        else
          acc[i] += __builtin_shuffle(x[i][0], x[i][1], idx) * w;
      }
    }
  }
  store_column_vector<T, MR>(g.ep, acc, mv, vb * L, g.ncols, g.c_cstride,
                             [&](int64_t i) { return g.c[i0 + i] + g.c_off; });
}

template <typename T>
void gconv(const GConvArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  const int64_t span = L / g.kg * g.cg;
  ivec_t<T> base;
  for (int j = 0; j < L; ++j) base[j] = static_cast<typename VecTraits<T>::I>((j / g.kg) * g.cg);
  // Row blocks outside, vector blocks inside: a block's pixels (all taps,
  // every vector block's span) stay in L1 while the vector blocks walk them.
  constexpr int MR2 = kGconvMr / 2;
  if (span <= L) {
    for (int64_t i0 = 0; i0 < g.m; i0 += kGconvMr)
      for (int64_t vb = g.vb_begin; vb < g.vb_end; ++vb)
        gconv_block<T, kGconvMr, 1>(g, vb, i0, g.m - i0 < kGconvMr ? g.m - i0 : kGconvMr, base);
  } else {
    for (int64_t i0 = 0; i0 < g.m; i0 += MR2)
      for (int64_t vb = g.vb_begin; vb < g.vb_end; ++vb)
        gconv_block<T, MR2, 2>(g, vb, i0, g.m - i0 < MR2 ? g.m - i0 : MR2, base);
  }
}

// ---------------------------------------------------------------------------
// Grouped convolution along one output row as a sliding window (see
// GConvRowArgs): a block is one vector of L / kg groups, lane j reading
// channel (j / kg) * cg + c of the vector's span through a register permute.
constexpr int kGslideQb = EFFCONV_VEC_REGS >= 32 ? 16 : 8;  // outputs per block (accumulators)

// Outputs [q0, q0 + qv), qv <= QB, of vector block vb. S and the stride ST
// are known at compile time, so the column -> (output, tap) map unrolls
// away; registers: QB accumulators + S weights + 1 permuted input. Input
// columns outside the row (or past what the qv outputs read) point at a
// zero vector, so border blocks run the same branch-free loop (with
// per-column checks inside it, 28-wide rows ran ~30% slower).
template <typename T, int S, int ST, int QB>
inline void gslide_block(const GConvRowArgs<T>& g, int64_t vb, int64_t q0, int64_t qv, ivec_t<T> base,
                         const T* zero) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  constexpr int SPAN = (QB - 1) * ST + S;
  V acc[QB];
#pragma GCC unroll 16
  for (int j = 0; j < QB; ++j) acc[j] = V{};
  const int64_t iw0 = q0 * ST - g.pad;
  const int64_t span = (qv - 1) * ST + S;  // input columns the valid outputs read
  const T* wv = g.w + vb * g.R * S * g.cg * L;
  for (int64_t r = 0; r < g.R; ++r) {
    if (!g.rows[r]) continue;
    // cg == kg: the vector's span of input channels starts at its first column.
    const T* row = g.rows[r] + vb * L;
    const T* px[SPAN];
#pragma GCC unroll 64
    for (int x = 0; x < SPAN; ++x) {
      const int64_t iw = iw0 + x;
      px[x] = x < span && iw >= 0 && iw < g.W ? row + iw * g.C : zero;
    }
    const T* wr = wv + r * S * g.cg * L;
    for (int64_t c = 0; c < g.cg; ++c) {
      const ivec_t<T> idx = base + static_cast<typename VecTraits<T>::I>(c);
      V w[S];
#pragma GCC unroll 8
      for (int s = 0; s < S; ++s) w[s] = vload(wr + (s * g.cg + c) * L);
#pragma GCC unroll 64
      for (int x = 0; x < SPAN; ++x) {
        const V in = __builtin_shuffle(vload(px[x]), idx);
#pragma GCC unroll 8
        for (int s = 0; s < S; ++s) {
          const int d = x - s;  // = j * ST for the output j that tap s of this column serves
          if (d < 0 || d % ST != 0 || d / ST >= QB) continue;
          acc[d / ST] += in * w[s];
        }
      }
    }
  }
  store_column_vector<T, QB>(
      g.ep, acc, qv, vb * L, g.ncols, g.c_cstride, [&](int64_t j) { return g.out + (q0 + j) * g.out_ps; },
      g.stream);
}

// Vector blocks outside, pixel blocks inside: a block's span of the R input
// rows stays in L1 while the window slides along the row. Blocks of QB,
// then of QB/2 and QB/4 for the rest (28 = 16 + 8 + 4).
template <typename T, int S, int ST>
void gslide_row(const GConvRowArgs<T>& g, ivec_t<T> base) {
  constexpr int L = VecTraits<T>::L;
  constexpr int QB = kGslideQb;
  alignas(64) static const T zero[L] = {};
  for (int64_t vb = g.vb_begin; vb < g.vb_end; ++vb) {
    // The next block's span is another cache line of every pixel (pitch
    // C): fetch it while this one computes.
    if (vb + 1 < g.vb_end)
      for (int64_t r = 0; r < g.R; ++r) {
        if (!g.rows[r]) continue;
        const T* p = g.rows[r] + (vb + 1) * L;
        for (int64_t iw = 0; iw < g.W; ++iw) __builtin_prefetch(p + iw * g.C);
      }
    for (int64_t q = 0; q < g.Q;) {
      const int64_t rest = g.Q - q;
      if (rest >= QB) {
        gslide_block<T, S, ST, QB>(g, vb, q, QB, base, zero);
        q += QB;
      } else if (rest > QB / 4) {
        gslide_block<T, S, ST, QB / 2>(g, vb, q, rest < QB / 2 ? rest : QB / 2, base, zero);
        q += QB / 2;
      } else {
        gslide_block<T, S, ST, QB / 4>(g, vb, q, rest, base, zero);
        q += QB / 4;
      }
    }
  }
}

template <typename T>
void gconvrow(const GConvRowArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  ivec_t<T> base;
  for (int j = 0; j < L; ++j) base[j] = static_cast<typename VecTraits<T>::I>((j / g.kg) * g.cg);
  if (g.S == 1)
    gslide_row<T, 1, 1>(g, base);
  else if (g.S == 2)
    gslide_row<T, 2, 1>(g, base);
  else if (g.stride == 1)
    gslide_row<T, 3, 1>(g, base);
  else
    gslide_row<T, 3, 2>(g, base);
}

// The epilogue of a block of QB pixels x NVC channel vectors (from column
// c0), in place. Each choice (bias, scale, shift, activation) is tested once
// per block and then runs as an unrolled pass over the accumulators: testing
// them per vector cost the sliding depthwise kernel as many instructions as
// its multiply-adds. The operations and their order are apply_epilogue's.
template <typename T, int QB, int NVC>
__attribute__((always_inline)) inline void epilogue_block(const EpilogueArgs<T>& ep, vec_t<T> (&acc)[QB][NVC],
                                                          int64_t c0) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  auto each = [&](const T* operand, auto&& f) {
    if (!operand) return;
#pragma GCC unroll 8
    for (int v = 0; v < NVC; ++v) {
      const V o = vload(operand + c0 + v * L);
#pragma GCC unroll 16
      for (int j = 0; j < QB; ++j) acc[j][v] = f(acc[j][v], o);
    }
  };
  // Lambdas here capture (`[&]`): a captureless one's function-pointer thunk
  // is compiled without the ISA's target (GCC warns -Wpsabi for AVX2).
  each(ep.bias, [&](V z, V o) { return z + o; });
  each(ep.scale, [&](V z, V o) { return z * o; });
  each(ep.shift, [&](V z, V o) { return z + o; });
  auto activate_all = [&](auto act) {
#pragma GCC unroll 16
    for (int j = 0; j < QB; ++j)
#pragma GCC unroll 8
      for (int v = 0; v < NVC; ++v) acc[j][v] = activate<T>(acc[j][v], int(decltype(act)::value));
  };
  switch (static_cast<Activation>(ep.act)) {
    case Activation::kReLU:
      activate_all(std::integral_constant<Activation, Activation::kReLU>());
      break;
    case Activation::kReLU6:
      activate_all(std::integral_constant<Activation, Activation::kReLU6>());
      break;
    case Activation::kSiLU:
      activate_all(std::integral_constant<Activation, Activation::kSiLU>());
      break;
    default:
      break;
  }
}

// Stores of a block's first n (<= QB) pixels, pixel j's NVC vectors at
// dst(j) + v * L: partial vectors (FULL false: nlast lanes), streamed past
// the caches, or plain. The store kind is tested once per block.
template <typename T, int QB, int NVC, bool FULL, typename Dst>
__attribute__((always_inline)) inline void store_block(const vec_t<T> (&acc)[QB][NVC], int64_t n, int64_t nlast,
                                                       bool stream, const Dst& dst) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  auto store = [&](auto&& put) {
#pragma GCC unroll 16
    for (int j = 0; j < QB; ++j) {
      if (j >= n) break;
      T* const p = dst(j);
#pragma GCC unroll 8
      for (int v = 0; v < NVC; ++v) put(p + v * L, acc[j][v]);
    }
  };
  if (!FULL)
    store([&](T* p, V z) { vstore_n(p, z, nlast); });
  else if (stream)
    store([&](T* p, V z) { vstream(p, z); });
  else
    store([&](T* p, V z) { vstore(p, z); });
}

// ---------------------------------------------------------------------------
// Depthwise convolution over channels_last pixels (see DwConvArgs): blocks of
// QB pixels x NVC channel vectors of accumulators; each tap loads its weight
// vectors once for the block. Memory-bound in practice, so the point is one
// pass over the input with the epilogue applied before the only store.
constexpr int kDwPix = EFFCONV_VEC_REGS >= 32 ? 4 : 2;
constexpr int kDwVec = EFFCONV_VEC_REGS >= 32 ? 4 : 2;

template <typename T, int QB, int NVC, bool FULL>
void dw_block(const DwConvArgs<T>& g, int64_t i0, int64_t qv, int64_t c0, int64_t nlast) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  V acc[QB][NVC];
#pragma GCC unroll 8
  for (int j = 0; j < QB; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NVC; ++v) acc[j][v] = V{};
  for (int64_t t = 0; t < g.ntaps; ++t) {
    const T* p[QB];
    bool any = false;
#pragma GCC unroll 8
    for (int j = 0; j < QB; ++j) {
      p[j] = g.a[(i0 + (j < qv ? j : qv - 1)) * g.ntaps + t];
      any |= p[j] != g.zero;
    }
    if (!any) continue;
    const T* wt = g.w + (g.tap_index ? g.tap_index[t] : t) * g.cpad + c0;
    V wv[NVC];
#pragma GCC unroll 8
    for (int v = 0; v < NVC; ++v) wv[v] = vload(wt + v * L);
#pragma GCC unroll 8
    for (int j = 0; j < QB; ++j)
#pragma GCC unroll 8
      for (int v = 0; v < NVC; ++v) {
        const T* src = p[j] + c0 + v * L;
        acc[j][v] += (FULL ? vload(src) : vload_n(src, nlast)) * wv[v];
      }
  }
  epilogue_block<T, QB, NVC>(g.ep, acc, c0);
  T* const* const c = g.c;
  store_block<T, QB, NVC, FULL>(acc, qv, nlast, g.stream, [&](int j) { return c[i0 + j] + c0; });
}

template <typename T>
void dwconv(const DwConvArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  constexpr int QB = kDwPix, NVC = kDwVec;
  const int64_t full_end = g.c_begin + (g.c_end - g.c_begin) / L * L;
  for (int64_t i0 = 0; i0 < g.m; i0 += QB) {
    const int64_t qv = g.m - i0 < QB ? g.m - i0 : QB;
    int64_t c0 = g.c_begin;
    for (; c0 + NVC * L <= full_end; c0 += NVC * L) dw_block<T, QB, NVC, true>(g, i0, qv, c0, L);
    for (; c0 + L <= full_end; c0 += L) dw_block<T, QB, 1, true>(g, i0, qv, c0, L);
    if (c0 < g.c_end) dw_block<T, QB, 1, false>(g, i0, qv, c0, g.c_end - c0);
  }
}

// Direct depthwise row (see DwRowArgs). CHECK blocks test every tap's
// column and hold qv <= QB valid pixels; unchecked blocks are interior and full.
constexpr int kDwRowPix = EFFCONV_VEC_REGS >= 32 ? 8 : 4;
constexpr int kDwRowVec = EFFCONV_VEC_REGS >= 32 ? 2 : 1;

// Epilogue, batch statistics and store of a dwrow block's QB x NVC
// accumulators (qv valid pixels when CHECK) into output row `orow`.
template <typename T, int QB, int NVC, bool FULL, bool CHECK>
__attribute__((always_inline)) inline void dwrow_store(const DwRowArgs<T>& g, T* orow, vec_t<T> (&acc)[QB][NVC],
                                                       int64_t q0, int64_t qv, int64_t c0, int64_t nlast) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  const EpilogueArgs<T>& ep = g.ep;
  epilogue_block<T, QB, NVC>(ep, acc, c0);
  const int64_t n = CHECK ? qv : QB;
  if (ep.stat_sum) {
#pragma GCC unroll 8
    for (int v = 0; v < NVC; ++v) {
      V sum{}, sq{};
#pragma GCC unroll 16
      for (int j = 0; j < QB; ++j) {
        if (j >= n) break;
        sum += acc[j][v];
        sq += acc[j][v] * acc[j][v];
      }
      add_stats(ep, c0 + v * L, sum, sq, FULL ? L : nlast);
    }
  }
  T* const out = orow + q0 * g.out_ps + c0;
  const int64_t ps = g.out_ps;
  store_block<T, QB, NVC, FULL>(acc, n, nlast, g.stream, [&](int j) { return out + j * ps; });
}

template <typename T, int QB, int NVC, bool FULL, bool CHECK>
inline void dwrow_block(const DwRowArgs<T>& g, int64_t q0, int64_t qv, int64_t c0, int64_t nlast) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  V acc[QB][NVC];
#pragma GCC unroll 8
  for (int j = 0; j < QB; ++j)
#pragma GCC unroll 8
    for (int v = 0; v < NVC; ++v) acc[j][v] = V{};
  const int64_t ps = g.stride * g.C;  // input pixels between neighbouring outputs
  for (int64_t r = 0; r < g.R; ++r) {
    if (!g.rows[r]) continue;
    const T* base = g.rows[r] + (q0 * g.stride - g.pad) * g.C + c0;
    const T* wr = g.w + r * g.S * g.cpad + c0;
    for (int64_t s = 0; s < g.S; ++s) {
      V wv[NVC];
#pragma GCC unroll 8
      for (int v = 0; v < NVC; ++v) wv[v] = vload(wr + s * g.cpad + v * L);
      const T* xs = base + s * g.dil * g.C;
      const int64_t iw0 = q0 * g.stride - g.pad + s * g.dil;
#pragma GCC unroll 16
      for (int j = 0; j < QB; ++j) {
        if (CHECK) {
          const int64_t iw = iw0 + j * g.stride;
          if (j >= qv || iw < 0 || iw >= g.W) continue;
        }
#pragma GCC unroll 8
        for (int v = 0; v < NVC; ++v) {
          const T* src = xs + j * ps + v * L;
          acc[j][v] += (FULL ? vload(src) : vload_n(src, nlast)) * wv[v];
        }
      }
    }
  }
  dwrow_store<T, QB, NVC, FULL, CHECK>(g, g.out, acc, q0, qv, c0, nlast);
}

// All channels of QB output pixels: consecutive pixels' channels are
// contiguous, so both the input rows and the output are walked in order.
template <typename T, bool CHECK>
inline void dwrow_pixels(const DwRowArgs<T>& g, int64_t q0, int64_t qv) {
  constexpr int L = VecTraits<T>::L;
  constexpr int QB = kDwRowPix, NVC = kDwRowVec;
  const int64_t full_end = g.C / L * L;
  int64_t c0 = 0;
  for (; c0 + NVC * L <= full_end; c0 += NVC * L) dwrow_block<T, QB, NVC, true, CHECK>(g, q0, qv, c0, L);
  for (; c0 + L <= full_end; c0 += L) dwrow_block<T, QB, 1, true, CHECK>(g, q0, qv, c0, L);
  if (c0 < g.C) dwrow_block<T, QB, 1, false, CHECK>(g, q0, qv, c0, g.C - c0);
}

// Sliding-window block for a kernel width S and stride ST known at compile
// time (dilation 1), one channel vector wide: each input pixel of a kernel
// row is loaded once and feeds every output of the block whose window
// covers it (up to S multiply-adds), where dwrow_block loads one input
// vector per multiply-add. The kernel row's S weight vectors stay in
// registers: QB accumulators + S weights + 1 input.
template <int S>
constexpr int dwslide_qb() {
  return EFFCONV_VEC_REGS >= 32 ? 16 : (S <= 3 ? 10 : S <= 5 ? 8 : 6);
}

// RR: the kernel height when known at compile time (the rows loop then
// unrolls: GCC keeps a runtime-trip loop's accumulators moving between
// registers, ~1.5x the time per block), 0 for g.R at run time. A CHECK
// block reads only columns [xlo, xhi): inside the row and read by one of
// its qv valid outputs.
template <typename T, int S, int ST, int RR, int QB, bool FULL, bool CHECK>
__attribute__((always_inline)) inline void dwslide_block_body(const DwRowArgs<T>& g, const T* const* rows, T* orow,
                                                              int64_t q0, int64_t qv, int64_t c0, int64_t nlast) {
  using V = vec_t<T>;
  constexpr int SPAN = (QB - 1) * ST + S;
  V acc[QB][1];
#pragma GCC unroll 16
  for (int j = 0; j < QB; ++j) acc[j][0] = V{};
  // Locals, not g's fields: the stores below may alias g as far as the compiler knows.
  const int64_t C = g.C, cpad = g.cpad;
  const int64_t iw0 = q0 * ST - g.pad;
  int64_t xlo = 0, xhi = SPAN;
  if (CHECK) {
    xlo = iw0 < 0 ? -iw0 : 0;
    xhi = (qv - 1) * ST + S;
    if (xhi > g.W - iw0) xhi = g.W - iw0;
  }
  const T* const wbase = g.w + c0;
  auto kernel_row = [&](int64_t r) __attribute__((always_inline)) {
    if (!rows[r]) return;
    const T* row = rows[r] + c0 + iw0 * C;
    const T* wr = wbase + r * S * cpad;
    V wv[S];
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) wv[s] = vload(wr + s * cpad);
#pragma GCC unroll 64
    for (int x = 0; x < SPAN; ++x) {
      if (CHECK && (x < xlo || x >= xhi)) continue;
      const T* src = row + x * C;
      const V in = FULL ? vload(src) : vload_n(src, nlast);
#pragma GCC unroll 8
      for (int s = 0; s < S; ++s) {
        const int d = x - s;  // = j * ST for the output j that tap s of this column serves
        if (d < 0 || d % ST != 0 || d / ST >= QB) continue;
        acc[d / ST][0] += in * wv[s];
      }
    }
  };
  if constexpr (RR > 0) {
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) kernel_row(r);
  } else {
    for (int64_t r = 0; r < g.R; ++r) kernel_row(r);
  }
  dwrow_store<T, QB, 1, FULL, CHECK>(g, orow, acc, q0, qv, c0, nlast);
}

// A block out of line: inlined into the loop over a row's blocks, 16-wide
// blocks ran 3-10% slower (3x3 on 56² and 112² rows, 5x5 on 28², 7x7 on
// 14²). Rows of a single block run it inline (dwslide_vector): C960 7² in
// 8-wide blocks took 0.80x the time of 16-wide ones, 0.93x as calls.
template <typename T, int S, int ST, int RR, int QB, bool FULL, bool CHECK>
__attribute__((noinline)) void dwslide_block(const DwRowArgs<T>& g, const T* const* rows, T* orow, int64_t q0,
                                             int64_t qv, int64_t c0, int64_t nlast) {
  dwslide_block_body<T, S, ST, RR, QB, FULL, CHECK>(g, rows, orow, q0, qv, c0, nlast);
}

// Channel vectors outside, the band's rows and pixel blocks inside: one
// vector's columns of the band's input rows stay in L1 while the window
// slides along each row and down the band, so each input row is loaded from
// L2 once per vector instead of once per kernel row reading it.
// ONE: the row is a single block (g.Q <= QB), run inline.
template <typename T, int S, int ST, int RR, int QB, bool ONE, bool FULL>
inline void dwslide_vector(const DwRowArgs<T>& g, int64_t c0, int64_t nlast) {
  for (int64_t b = 0; b < g.band; ++b) {
    const T* const* rows = g.rows + b * g.R;
    // Kernel rows from fresh_from on were not read by the previous output
    // row: fetch their next channel vector from memory while this one computes.
    if (c0 + VecTraits<T>::L < g.C)
      for (int64_t r = g.fresh_from; r < g.R; ++r) {
        if (!rows[r]) continue;
        const T* p = rows[r] + c0 + VecTraits<T>::L;
        for (int64_t iw = 0; iw < g.W; ++iw) __builtin_prefetch(p + iw * g.C);
      }
    T* const orow = g.out + b * g.out_rs;
    if constexpr (ONE) {
      dwslide_block_body<T, S, ST, RR, QB, FULL, true>(g, rows, orow, 0, g.Q, c0, nlast);
      continue;
    }
    for (int64_t q = 0; q < g.Q; q += QB) {
      if (q >= g.q_lo && q + QB <= g.q_hi)
        dwslide_block<T, S, ST, RR, QB, FULL, false>(g, rows, orow, q, QB, c0, nlast);
      else
        dwslide_block<T, S, ST, RR, QB, FULL, true>(g, rows, orow, q, g.Q - q < QB ? g.Q - q : QB, c0, nlast);
    }
  }
}

// f(c0, n, full) for each vector of C channels: whole vectors (full: a
// std::true_type, n = L), then the tail (std::false_type, n < L).
template <typename T, typename F>
inline void for_channel_vectors(int64_t C, F&& f) {
  constexpr int L = VecTraits<T>::L;
  const int64_t full_end = C / L * L;
  int64_t c0 = 0;
  for (; c0 < full_end; c0 += L) f(c0, int64_t(L), std::true_type{});
  if (c0 < C) f(c0, C - c0, std::false_type{});
}

template <typename T, int S, int ST, int RR>
void dwslide_channels(const DwRowArgs<T>& g) {
  // Rows of one block run it inline (3x3 C384 14² N8-N16 0.91-0.94x the
  // time), and rows of at most 8 outputs (7² maps) take blocks of 8: a
  // 16-wide block cleared, ran the epilogue on and checked 16 accumulators
  // for 7 outputs.
  auto run = [&](auto qb, auto one) {
    for_channel_vectors<T>(g.C, [&](int64_t c0, int64_t n, auto full) {
      dwslide_vector<T, S, ST, RR, decltype(qb)::value, decltype(one)::value, decltype(full)::value>(g, c0, n);
    });
  };
  if constexpr (EFFCONV_VEC_REGS >= 32) {
    if (g.Q <= 8) return run(std::integral_constant<int, 8>{}, std::true_type{});
    if (g.Q <= 16) return run(std::integral_constant<int, 16>{}, std::true_type{});
  }
  run(std::integral_constant<int, dwslide_qb<S>()>{}, std::false_type{});
}

template <typename T, int S, int ST>
void dwslide_row(const DwRowArgs<T>& g) {
  // Square kernels (the common case) unroll their rows.
  if (g.R == S) return dwslide_channels<T, S, ST, S>(g);
  dwslide_channels<T, S, ST, 0>(g);
}

// One output row of any kernel (band 1) on the direct kernel.
template <typename T>
void dwrow_direct(const DwRowArgs<T>& g) {
  constexpr int QB = kDwRowPix;
  // Kernel rows from fresh_from on were not read by the previous output row
  // (the others sit in L2): prefetch them two blocks ahead.
  const int64_t block_bytes = QB * g.stride * g.C * int64_t(sizeof(T));
  for (int64_t q = 0; q < g.Q; q += QB) {
    const int64_t iw = (q + 2 * QB) * g.stride - g.pad;
    if (iw >= 0 && iw < g.W)
      for (int64_t r = g.fresh_from; r < g.R; ++r) {
        if (!g.rows[r]) continue;
        const char* p = reinterpret_cast<const char*>(g.rows[r] + iw * g.C);
        for (int64_t off = 0; off < block_bytes; off += 64) __builtin_prefetch(p + off);
      }
    if (q >= g.q_lo && q + QB <= g.q_hi)
      dwrow_pixels<T, false>(g, q, QB);
    else
      dwrow_pixels<T, true>(g, q, g.Q - q < QB ? g.Q - q : QB);
  }
}

// Rows of a band: the sliding kernels for 3/5/7-wide kernels at stride 1 or
// 2 without dilation, the direct kernel row by row for the rest.
template <typename T>
void dwrow(const DwRowArgs<T>& g) {
  if (g.dil == 1 && (g.stride == 1 || g.stride == 2)) {
    const bool s1 = g.stride == 1;
    switch (g.S) {
      case 3: return s1 ? dwslide_row<T, 3, 1>(g) : dwslide_row<T, 3, 2>(g);
      case 5: return s1 ? dwslide_row<T, 5, 1>(g) : dwslide_row<T, 5, 2>(g);
      case 7: return s1 ? dwslide_row<T, 7, 1>(g) : dwslide_row<T, 7, 2>(g);
      default: break;
    }
  }
  DwRowArgs<T> row = g;
  row.band = 1;
  for (int64_t b = 0; b < g.band; ++b) {
    row.rows = g.rows + b * g.R;
    row.out = g.out + b * g.out_rs;
    dwrow_direct(row);
  }
}

// The sum over rows[0 .. nrows) and their Q pixels (pitch C) of the channel
// vector at c0: a bias gradient. Four partial sums: one would wait on the
// previous add for every pixel.
template <typename T, bool FULL>
inline vec_t<T> sum_row_pixels(const T* const* rows, int64_t nrows, int64_t Q, int64_t C, int64_t c0,
                               int64_t nlast) {
  using V = vec_t<T>;
  auto load = [&](const T* p) { return FULL ? vload(p) : vload_n(p, nlast); };
  V a0{}, a1{}, a2{}, a3{};
  for (int64_t i = 0; i < nrows; ++i) {
    const T* d = rows[i] + c0;
    int64_t q = 0;
    for (; q + 4 <= Q; q += 4) {
      a0 += load(d + q * C);
      a1 += load(d + (q + 1) * C);
      a2 += load(d + (q + 2) * C);
      a3 += load(d + (q + 3) * C);
    }
    for (; q < Q; ++q) a0 += load(d + q * C);
  }
  return (a0 + a1) + (a2 + a3);
}

// Depthwise weight gradient (see DwWGradArgs), one channel vector at a time.
// For a kernel width S known at compile time, RG kernel rows x S taps of
// accumulators stay in registers over every row of the chunk: each output
// gradient vector is loaded once per pixel for RG * S multiply-adds, and
// dw is updated once per chunk. Pixels where some tap falls outside the
// input row (the row's ends) run per tap afterwards.
template <int S>
constexpr int dwwgrad_rg() {
  constexpr int budget = EFFCONV_VEC_REGS >= 32 ? 24 : 12;  // accumulator registers
  return budget / S < 1 ? 1 : (budget / S > 4 ? 4 : budget / S);
}

// Output pixels q whose tap at input offset `off` (= s * dil - pad) lies in the row.
inline void dw_tap_range(int64_t off, int64_t stride, int64_t W, int64_t Q, int64_t& lo, int64_t& hi) {
  lo = off >= 0 ? 0 : (-off + stride - 1) / stride;
  hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / stride + 1;
  if (hi > Q) hi = Q;
  if (lo > hi) lo = hi;
}

// G kernel rows r0 .. r0 + G - 1 of dwwgrad_vector: their G x S
// accumulators stay in registers over every row of the chunk.
template <typename T, int S, int G, bool FULL>
inline void dwwgrad_rows(const DwWGradArgs<T>& g, int64_t r0, int64_t c0, int64_t nlast, const int64_t (&qlo)[S],
                         const int64_t (&qhi)[S], int64_t lo, int64_t hi) {
  using V = vec_t<T>;
  auto load = [&](const T* p) { return FULL ? vload(p) : vload_n(p, nlast); };
  // Locals, not g's fields (see dwslide_block).
  const int64_t C = g.C, xs = g.stride * C, ds = g.dil * C, R = g.R, pad = g.pad;
  V acc[G][S];
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j)
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) acc[j][s] = V{};
  for (int64_t i = 0; i < g.nrows; ++i) {
    const T* d = g.dy[i] + c0;
    const T* xr[G];  // + q * xs + s * ds: tap s of pixel q; null: a row of padding
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) {
      const T* row = r0 + j < R ? g.rows[i * R + r0 + j] : nullptr;
      xr[j] = row ? row + c0 - pad * C : nullptr;
    }
    // Pixels with every tap inside the row. (A second copy of this loop
    // without the padding tests, for groups without padding rows, was no
    // faster for 3x3 and 1.2x slower for 7x7 in a standalone harness.)
    for (int64_t q = lo; q < hi; ++q) {
      const V dv = load(d + q * C);
#pragma GCC unroll 8
      for (int j = 0; j < G; ++j) {
        if (!xr[j]) continue;
        const T* x = xr[j] + q * xs;
#pragma GCC unroll 8
        for (int s = 0; s < S; ++s) acc[j][s] += dv * load(x + s * ds);
      }
    }
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) {
      // The tap's pixels outside [lo, hi): [qlo, lo) and [hi, qhi), clipped.
      const int64_t ends[2][2] = {{qlo[s], lo < qhi[s] ? lo : qhi[s]}, {hi > qlo[s] ? hi : qlo[s], qhi[s]}};
      for (const auto& e : ends)
        for (int64_t q = e[0]; q < e[1]; ++q) {
          const V dv = load(d + q * C);
#pragma GCC unroll 8
          for (int j = 0; j < G; ++j)
            if (xr[j]) acc[j][s] += dv * load(xr[j] + q * xs + s * ds);
        }
    }
  }
  T* const dw = g.dw + c0;
  const int64_t cpad = g.cpad;
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) {
    if (r0 + j >= R) break;
#pragma GCC unroll 8
    for (int s = 0; s < S; ++s) {
      T* o = dw + ((r0 + j) * S + s) * cpad;
      vstore(o, vload(o) + acc[j][s]);
    }
  }
}

// Kernel rows go in groups of dwwgrad_rg<S>(), or of R when fewer (a 3x3
// kernel: one group of three, so each gradient vector is loaded once per
// pixel for 9 FMAs). A last group past row R - 1 treats those rows as
// padding, as the previous kernel did.
template <typename T, int S, bool FULL>
void dwwgrad_vector(const DwWGradArgs<T>& g, int64_t c0, int64_t nlast) {
  constexpr int RG = dwwgrad_rg<S>();
  int64_t qlo[S], qhi[S], lo = 0, hi = g.Q;
  for (int s = 0; s < S; ++s) {
    dw_tap_range(s * g.dil - g.pad, g.stride, g.W, g.Q, qlo[s], qhi[s]);
    lo = qlo[s] > lo ? qlo[s] : lo;
    hi = qhi[s] < hi ? qhi[s] : hi;
  }
  if (hi < lo) hi = lo;  // no pixel has every tap inside: all run per tap
  const int64_t G = g.R < RG ? g.R : RG;
  for (int64_t r0 = 0; r0 < g.R; r0 += G) {
    switch (G) {
      case 1: dwwgrad_rows<T, S, 1, FULL>(g, r0, c0, nlast, qlo, qhi, lo, hi); break;
      case 2: if constexpr (RG >= 2) dwwgrad_rows<T, S, 2, FULL>(g, r0, c0, nlast, qlo, qhi, lo, hi); break;
      case 3: if constexpr (RG >= 3) dwwgrad_rows<T, S, 3, FULL>(g, r0, c0, nlast, qlo, qhi, lo, hi); break;
      default: if constexpr (RG >= 4) dwwgrad_rows<T, S, 4, FULL>(g, r0, c0, nlast, qlo, qhi, lo, hi); break;
    }
  }
  if (g.db) {
    // (Summing in the first row group's loop instead, from its loads, was
    // 1.16x slower for a 7x7 kernel on tensors beyond the caches.)
    vstore(g.db + c0, vload(g.db + c0) + sum_row_pixels<T, FULL>(g.dy, g.nrows, g.Q, g.C, c0, nlast));
  }
}

// Any kernel width: per row, tap and vector, one accumulator over the tap's pixels.
template <typename T, bool FULL>
void dwwgrad_vector_any(const DwWGradArgs<T>& g, int64_t c0, int64_t nlast) {
  using V = vec_t<T>;
  auto load = [&](const T* p) { return FULL ? vload(p) : vload_n(p, nlast); };
  for (int64_t i = 0; i < g.nrows; ++i) {
    const T* d = g.dy[i] + c0;
    for (int64_t s = 0; s < g.S; ++s) {
      int64_t lo, hi;
      const int64_t off = s * g.dil - g.pad;
      dw_tap_range(off, g.stride, g.W, g.Q, lo, hi);
      for (int64_t r = 0; r < g.R; ++r) {
        const T* row = g.rows[i * g.R + r];
        if (!row || lo >= hi) continue;
        const T* xs = row + off * g.C + c0;
        V acc{};
        for (int64_t q = lo; q < hi; ++q) acc += load(d + q * g.C) * load(xs + q * g.stride * g.C);
        T* o = g.dw + (r * g.S + s) * g.cpad + c0;
        vstore(o, vload(o) + acc);
      }
    }
    if (g.db) {
      V acc{};
      for (int64_t q = 0; q < g.Q; ++q) acc += load(d + q * g.C);
      vstore(g.db + c0, vload(g.db + c0) + acc);
    }
  }
}

template <typename T, bool FULL>
void dwwgrad_dispatch(const DwWGradArgs<T>& g, int64_t c0, int64_t nlast) {
  switch (g.S) {
    case 1: return dwwgrad_vector<T, 1, FULL>(g, c0, nlast);
    case 2: return dwwgrad_vector<T, 2, FULL>(g, c0, nlast);
    case 3: return dwwgrad_vector<T, 3, FULL>(g, c0, nlast);
    case 4: return dwwgrad_vector<T, 4, FULL>(g, c0, nlast);
    case 5: return dwwgrad_vector<T, 5, FULL>(g, c0, nlast);
    case 6: return dwwgrad_vector<T, 6, FULL>(g, c0, nlast);
    case 7: return dwwgrad_vector<T, 7, FULL>(g, c0, nlast);
    default: return dwwgrad_vector_any<T, FULL>(g, c0, nlast);
  }
}

template <typename T>
void dwwgrad(const DwWGradArgs<T>& g) {
  for_channel_vectors<T>(g.C, [&](int64_t c0, int64_t n, auto full) {
    dwwgrad_dispatch<T, decltype(full)::value>(g, c0, n);
  });
}

// Both depthwise gradients of a 3x3 stride-1 kernel (see DwBwdArgs), one
// channel vector at a time. Along input row i, the three output-gradient
// columns each kernel row's taps reach from pixel w, dy_r[w + pad - s], slide
// in registers (one new load per kernel row and pixel); they multiply the
// weights into dx[w] and x[w] into the nine weight-gradient accumulators,
// which stay in registers over the chunk. 18 multiply-adds per pixel for
// 3 gradient loads, one input load and one store; separately, grad_input and
// the weight gradient loaded every tap's operand and ran twice the loops.
template <typename T, bool FULL>
void dwbwd3_vector(const DwBwdArgs<T>& g, int64_t c0, int64_t nlast) {
  using V = vec_t<T>;
  constexpr int L = VecTraits<T>::L, R = 3, S = 3;
  auto load = [&](const T* p) { return FULL ? vload(p) : vload_n(p, nlast); };
  const int64_t C = g.C, W = g.W, Q = g.Q, pad = g.pad, cpad = g.cpad;
  const bool stream = g.stream;
  // The weights in a local block: constant offsets instead of a pointer per tap.
  alignas(64) T wt[R * S * L];
#pragma GCC unroll 9
  for (int t = 0; t < R * S; ++t) vstore(wt + t * L, vload(g.w + t * cpad + c0));
  V dwa[R][S];
#pragma GCC unroll 3
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int s = 0; s < S; ++s) dwa[r][s] = V{};
  // Pixels whose newest column w + pad lies in the output row.
  const int64_t wmain = std::min<int64_t>(W, std::max<int64_t>(0, Q - pad));
  for (int64_t i = 0; i < g.nrows; ++i) {
    const T* dyr[R];
#pragma GCC unroll 3
    for (int r = 0; r < R; ++r) dyr[r] = g.dy[i * R + r] + c0;
    const T* const xr = g.x[i] + c0;
    T* const dxr = g.dx[i] + c0;
    V win[R][S];  // at pixel w: win[r][s] = dy_r[w + pad - s]
#pragma GCC unroll 3
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
      for (int s = 0; s < S; ++s) {
        const int64_t q = pad - s - 1;  // shifted into win[r][s + 1] at pixel 0
        win[r][s] = q >= 0 && q < Q ? load(dyr[r] + q * C) : V{};
      }
    auto pixel = [&](int64_t w, bool inside) __attribute__((always_inline)) {
#pragma GCC unroll 3
      for (int r = 0; r < R; ++r) {
#pragma GCC unroll 3
        for (int s = S - 1; s > 0; --s) win[r][s] = win[r][s - 1];
        win[r][0] = inside ? load(dyr[r] + (w + pad) * C) : V{};
      }
      const V xv = load(xr + w * C);
      V a[R];
#pragma GCC unroll 3
      for (int r = 0; r < R; ++r) {
        a[r] = win[r][0] * vload(wt + r * S * L);
#pragma GCC unroll 3
        for (int s = 1; s < S; ++s) a[r] += win[r][s] * vload(wt + (r * S + s) * L);
      }
#pragma GCC unroll 3
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
        for (int s = 0; s < S; ++s) dwa[r][s] += win[r][s] * xv;
      const V sum = (a[0] + a[1]) + a[2];
      if (!FULL)
        vstore_n(dxr + w * C, sum, nlast);
      else if (stream)
        vstream(dxr + w * C, sum);
      else
        vstore(dxr + w * C, sum);
    };
    int64_t w = 0;
    for (; w < wmain; ++w) pixel(w, true);
    for (; w < W; ++w) pixel(w, false);
  }
#pragma GCC unroll 3
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int s = 0; s < S; ++s) {
      T* o = g.dw + (r * S + s) * cpad + c0;
      vstore(o, vload(o) + dwa[r][s]);
    }
  if (g.db) vstore(g.db + c0, vload(g.db + c0) + sum_row_pixels<T, FULL>(g.dbrows, g.ndb, Q, C, c0, nlast));
}

template <typename T>
void dwbwd3(const DwBwdArgs<T>& g) {
  for_channel_vectors<T>(g.C, [&](int64_t c0, int64_t n, auto full) {
    dwbwd3_vector<T, decltype(full)::value>(g, c0, n);
  });
}

// One output row of an NCHW plane (see DwPlaneRowArgs): NV vectors of
// outputs per step, so each weight broadcast serves NV FMAs; single vectors
// for the rest of the row.
template <typename T, int NV>
inline void dwplane_step(const DwPlaneRowArgs<T>& g, const T* const* rows, T* out, int64_t q0, vec_t<T>& ssum,
                         vec_t<T>& ssq) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  V acc[NV];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) acc[j] = V{};
  for (int64_t r = 0; r < g.R; ++r) {
    if (!rows[r]) continue;
    const T* base = rows[r] + q0;
    const T* w = g.w + r * g.S;
    for (int64_t s = 0; s < g.S; ++s) {
      const T* src = base + g.tap_off[s];
      const V wv = vsplat(w[s]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[j] += vload(src + j * L) * wv;
    }
  }
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const int64_t q = q0 + j * L;
    V z = activate<T>((acc[j] + g.bias) * g.scale + g.shift, g.act);
    if (q + L <= g.Q) {
      vstore(out + q, z);
    } else {
      vstore_n(out + q, z, g.Q - q);
      T tmp[L] = {};  // statistics over the valid lanes only
      for (int64_t l = 0; l < g.Q - q; ++l) tmp[l] = out[q + l];
      z = vload(tmp);
    }
    ssum += z;
    ssq += z * z;
  }
}

template <typename T>
void dwplane(const DwPlaneRowArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  for (int64_t i = 0; i < g.nout; ++i) {
    V ssum{}, ssq{};
    const T* const* rows = g.rows + i * g.R;
    T* out = g.out + i * g.out_rs;
    int64_t q0 = 0;
    for (; q0 + 4 * L <= g.Q; q0 += 4 * L) dwplane_step<T, 4>(g, rows, out, q0, ssum, ssq);
    switch ((g.Q - q0 + L - 1) / L) {  // the rest of the row in one step
      case 1: dwplane_step<T, 1>(g, rows, out, q0, ssum, ssq); break;
      case 2: dwplane_step<T, 2>(g, rows, out, q0, ssum, ssq); break;
      case 3: dwplane_step<T, 3>(g, rows, out, q0, ssum, ssq); break;
      case 4: dwplane_step<T, 4>(g, rows, out, q0, ssum, ssq); break;
      default: break;
    }
    if (g.stat_sum) {  // one row's statistics into double
      T ts[L], tq[L];
      vstore(ts, ssum);
      vstore(tq, ssq);
      double a = 0, b = 0;
      for (int l = 0; l < L; ++l) a += ts[l], b += tq[l];
      *g.stat_sum += a;
      *g.stat_sq += b;
    }
  }
}

// ---------------------------------------------------------------------------
// Tile transposes (see TileArgs): L x L blocks transposed in registers.

// One level of the transpose: rows i and i + B (i & B == 0) swap their
// off-diagonal B x B blocks. Levels B = L/2, ..., 1 transpose the block.
template <typename T, int B>
inline void transpose_level(vec_t<T> (&v)[VecTraits<T>::L]) {
  constexpr int L = VecTraits<T>::L;
  if constexpr (B >= 1) {
    ivec_t<T> lo, hi;  // lanes < L pick from the first row, >= L from the second
    for (int j = 0; j < L; ++j) {
      const int base = j / (2 * B) * 2 * B, pos = j % (2 * B);
      lo[j] = pos < B ? base + pos : L + base + pos - B;
      hi[j] = pos < B ? base + pos + B : L + base + pos;
    }
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      if (i & B) continue;
      const vec_t<T> a = v[i], b = v[i + B];
      v[i] = __builtin_shuffle(a, b, lo);
      v[i + B] = __builtin_shuffle(a, b, hi);
    }
    transpose_level<T, B / 2>(v);
  }
}

// One L x L block: pixels [i0, i0 + L) of all L channels (FULL), else
// pixels [i0, i0 + ni) of channels [0, nc). FULL keeps every index a
// compile-time constant, so the block stays in registers.
template <typename T, bool FULL>
inline void tile_block(const TileArgs<T>& g, int64_t i0, int64_t ni, int64_t ld) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  const bool own = ld == L;  // a tile of its own: whole vectors, zero-padded channels
  V v[L];
  if (g.to_tile) {
#pragma GCC unroll 16
    for (int c = 0; c < L; ++c)
      v[c] = FULL ? vload(g.planes[c] + i0) : c >= g.nc ? V{} : vload_n(g.planes[c] + i0, ni);
    transpose_level<T, L / 2>(v);
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      if (FULL || own) {
        if (FULL || i < ni) vstore(g.tile + (i0 + i) * ld, v[i]);
      } else if (i < ni) {
        vstore_n(g.tile + (i0 + i) * ld, v[i], g.nc);
      }
    }
  } else {
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      const T* src = g.tile + (i0 + i) * ld;
      v[i] = FULL ? vload(src) : i >= ni ? V{} : own ? vload(src) : vload_n(src, g.nc);
    }
    transpose_level<T, L / 2>(v);
#pragma GCC unroll 16
    for (int c = 0; c < L; ++c) {
      if (FULL)
        vstore(g.planes[c] + i0, v[c]);
      else if (c < g.nc)
        vstore_n(g.planes[c] + i0, v[c], ni);
    }
  }
}

// The last few pixels element by element: a 7x7 plane's 49th pixel cost a
// whole block's masked loads, transpose and stores.
template <typename T>
inline void tile_tail(const TileArgs<T>& g, int64_t i0, int64_t ld) {
  constexpr int L = VecTraits<T>::L;
  const int64_t channels = g.to_tile && ld == L ? L : g.nc;
  for (int64_t i = i0; i < g.n; ++i)
    for (int64_t c = 0; c < channels; ++c) {
      if (!g.to_tile)
        g.planes[c][i] = g.tile[i * ld + c];
      else
        g.tile[i * ld + c] = c < g.nc ? g.planes[c][i] : T(0);
    }
}

template <typename T>
void tile(const TileArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  const int64_t ld = g.ld ? g.ld : L;
  int64_t i0 = 0;
  if (g.nc == L)
    for (; i0 + L <= g.n; i0 += L) tile_block<T, true>(g, i0, L, ld);
  for (; g.n - i0 > L / 4; i0 += L) tile_block<T, false>(g, i0, g.n - i0 < L ? g.n - i0 : L, ld);
  if (i0 < g.n) tile_tail(g, i0, ld);
}

// ---------------------------------------------------------------------------
// BatchNorm + activation backward (see BnActArgs).
template <typename T>
inline vec_t<T> activation_grad(vec_t<T> u, int act) {
  const vec_t<T> zero{}, one = vsplat<T>(1);
  switch (static_cast<Activation>(act)) {
    case Activation::kReLU:
      return u > zero ? one : zero;
    case Activation::kReLU6:
      return (u > zero) & (u < vsplat<T>(6)) ? one : zero;
    case Activation::kSiLU: {
      const vec_t<T> sg = one / (one + vexp(-u));
      return sg * (one + u * (one - sg));
    }
    default:
      return one;
  }
}

// g and xhat for L channels starting at c (params are per-channel vectors).
template <typename T>
inline void bnact_terms(const BnActArgs<T>& a, vec_t<T> dy, vec_t<T> z, vec_t<T> mean, vec_t<T> invstd,
                        vec_t<T> gamma, vec_t<T> beta, vec_t<T>& g, vec_t<T>& xhat) {
  xhat = (z - mean) * invstd;
  g = a.act ? dy * activation_grad<T>(xhat * gamma + beta, a.act) : dy;
}

// Zeroes lanes n.. of a vector (the partial tail of a row must not reach the sums).
template <typename T>
inline vec_t<T> keep_lanes(vec_t<T> v, int64_t n) {
  if (n == VecTraits<T>::L) return v;
  T t[VecTraits<T>::L];
  vstore(t, v);
  for (int64_t l = n; l < VecTraits<T>::L; ++l) t[l] = T(0);
  return vload(t);
}

template <typename T>
void bnact_reduce(const BnActArgs<T>& a) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  if (!a.planes) {
    // channels_last: float partials per channel over blocks of rows, then double.
    constexpr int64_t kFlush = 128;
    T* part_g = static_cast<T*>(__builtin_alloca(sizeof(T) * 2 * (a.cols + L)));
    T* part_x = part_g + a.cols + L;
    for (int64_t r0 = 0; r0 < a.rows; r0 += kFlush) {
      for (int64_t c = 0; c < a.cols + L; ++c) part_g[c] = part_x[c] = T(0);
      const int64_t r1 = r0 + kFlush < a.rows ? r0 + kFlush : a.rows;
      for (int64_t r = r0; r < r1; ++r) {
        const T* dy = a.dy + r * a.cols;
        const T* z = a.z + r * a.cols;
        for (int64_t c = 0; c < a.cols; c += L) {
          const int64_t n = a.cols - c < L ? a.cols - c : L;
          V g, xhat;
          bnact_terms(a, vload_any(dy + c, n), vload_any(z + c, n), vload_any(a.mean + c, n),
                      vload_any(a.invstd + c, n), vload_any(a.gamma + c, n), vload_any(a.beta + c, n), g, xhat);
          g = keep_lanes<T>(g, n);
          vstore(part_g + c, vload(part_g + c) + g);
          vstore(part_x + c, vload(part_x + c) + g * xhat);
        }
      }
      for (int64_t c = 0; c < a.cols; ++c) {
        a.sum_g[c] += part_g[c];
        a.sum_gx[c] += part_x[c];
      }
    }
    return;
  }
  for (int64_t r = 0; r < a.rows; ++r) {
    const int64_t ch = (a.first_row + r) % a.channels;
    const V mean = vsplat(a.mean[ch]), invstd = vsplat(a.invstd[ch]), gamma = vsplat(a.gamma[ch]),
            beta = vsplat(a.beta[ch]);
    V sg{}, sx{};
    const T* dy = a.dy + r * a.cols;
    const T* z = a.z + r * a.cols;
    for (int64_t c = 0; c < a.cols; c += L) {
      const int64_t n = a.cols - c < L ? a.cols - c : L;
      V g, xhat;
      bnact_terms(a, vload_any(dy + c, n), vload_any(z + c, n), mean, invstd, gamma, beta, g, xhat);
      g = keep_lanes<T>(g, n);
      sg += g;
      sx += g * xhat;
    }
    T tg[L], tx[L];
    vstore(tg, sg);
    vstore(tx, sx);
    double a1 = 0, a2 = 0;
    for (int l = 0; l < L; ++l) a1 += tg[l], a2 += tx[l];
    a.sum_g[ch] += a1;
    a.sum_gx[ch] += a2;
  }
}

template <typename T>
void bnact_apply(const BnActArgs<T>& a) {
  constexpr int L = VecTraits<T>::L;
  using V = vec_t<T>;
  for (int64_t r = 0; r < a.rows; ++r) {
    const T* dy = a.dy + r * a.cols;
    const T* z = a.z + r * a.cols;
    T* dz = a.dz + r * a.cols;
    if (!a.planes) {
      for (int64_t c = 0; c < a.cols; c += L) {
        const int64_t n = a.cols - c < L ? a.cols - c : L;
        V g, xhat;
        bnact_terms(a, vload_any(dy + c, n), vload_any(z + c, n), vload_any(a.mean + c, n),
                    vload_any(a.invstd + c, n), vload_any(a.gamma + c, n), vload_any(a.beta + c, n), g, xhat);
        const V out = vload_any(a.k1 + c, n) * g + vload_any(a.k2 + c, n) * xhat + vload_any(a.k3 + c, n);
        if (n == L)
          vstore(dz + c, out);
        else
          vstore_n(dz + c, out, n);
      }
      continue;
    }
    const int64_t ch = (a.first_row + r) % a.channels;
    const V mean = vsplat(a.mean[ch]), invstd = vsplat(a.invstd[ch]), gamma = vsplat(a.gamma[ch]),
            beta = vsplat(a.beta[ch]), k1 = vsplat(a.k1[ch]), k2 = vsplat(a.k2[ch]), k3 = vsplat(a.k3[ch]);
    for (int64_t c = 0; c < a.cols; c += L) {
      const int64_t n = a.cols - c < L ? a.cols - c : L;
      V g, xhat;
      bnact_terms(a, vload_any(dy + c, n), vload_any(z + c, n), mean, invstd, gamma, beta, g, xhat);
      const V out = k1 * g + k2 * xhat + k3;
      if (n == L)
        vstore(dz + c, out);
      else
        vstore_n(dz + c, out, n);
    }
  }
}

// ---------------------------------------------------------------------------
// Standalone epilogue pass (the same math as the fused one).

// y[c..] = f(x[c..], c) over the whole vectors of a row of `cols`, stored
// plainly or streamed past the caches; returns where the scalar tail starts.
template <typename T, typename F>
inline int64_t map_row_vectors(const T* x, T* y, int64_t cols, bool stream, const F& f) {
  constexpr int L = VecTraits<T>::L;
  int64_t c = 0;
  if (stream)
    for (; c + L <= cols; c += L) vstream(y + c, f(vload(x + c), c));
  else
    for (; c + L <= cols; c += L) vstore(y + c, f(vload(x + c), c));
  return c;
}

template <typename T>
void epilogue_map(const EpilogueMapArgs<T>& g) {
  const EpilogueArgs<T>& ep = g.ep;
  if (!g.planes) {
    for (int64_t r = 0; r < g.rows; ++r) {
      const T* x = g.x + r * g.cols;
      T* y = g.y + r * g.cols;
      int64_t c = map_row_vectors(x, y, g.cols, g.stream,
                                  [&](vec_t<T> v, int64_t col) { return apply_epilogue<T>(v, ep, col); });
      // Tail lanes use the scalar helper shared with the CUDA kernels.
      for (; c < g.cols; ++c) {
        T z = x[c];
        if (ep.bias) z += ep.bias[c];
        if (ep.scale) z *= ep.scale[c];
        if (ep.shift) z += ep.shift[c];
        y[c] = activation_forward<T>(z, static_cast<Activation>(ep.act));
      }
    }
    return;
  }
  for (int64_t r = 0; r < g.rows; ++r) {
    const int64_t ch = (g.first_row + r) % g.channels;
    const T b = ep.bias ? ep.bias[ch] : T(0);
    const T s = ep.scale ? ep.scale[ch] : T(1);
    const T h = ep.shift ? ep.shift[ch] : T(0);
    const T* x = g.x + r * g.cols;
    T* y = g.y + r * g.cols;
    int64_t c = map_row_vectors(x, y, g.cols, g.stream,
                                [&](vec_t<T> v, int64_t) { return activate<T>((v + b) * s + h, ep.act); });
    for (; c < g.cols; ++c) y[c] = activation_forward<T>((x[c] + b) * s + h, static_cast<Activation>(ep.act));
  }
}

}  // namespace
}  // namespace cpu
}  // namespace effconv

#include "ukernel/deform_impl.h"
#include "ukernel/wino_impl.h"
#include "ukernel/pool_impl.h"

#define EFFCONV_DEFINE_ISA(var, isa_name)                                                    \
  namespace effconv {                                                                        \
  namespace cpu {                                                                            \
  const IsaKernels var = {isa_name,         EFFCONV_VEC_BYTES,    EFFCONV_VEC_REGS,          \
                          &igemm<float>,    &igemm<double>,       &wgemm<float>,             \
                          &wgemm<double>,   &epilogue_map<float>, &epilogue_map<double>,     \
                          &gconv<float>,    &gconv<double>,       &gconvrow<float>,          \
                          &gconvrow<double>,                      &dwconv<float>,            \
                          &dwconv<double>,                                                   \
                          &dwplane<float>,  &dwplane<double>,     &dwrow<float>,             \
                          &dwrow<double>,   &dwwgrad<float>,      &dwwgrad<double>,          \
                          &dwbwd3<float>,   &dwbwd3<double>,                                 \
                          &bnact_reduce<float>, &bnact_reduce<double>, &bnact_apply<float>,  \
                          &bnact_apply<double>, &deform_col<float>, &deform_col<double>,     \
                          &deform_col_backward<float>, &deform_col_backward<double>,         \
                          &wino_input<float>, &wino_input<double>,                           \
                          &wino_output<float>, &wino_output<double>,                         \
                          &maxpool<float>,  &maxpool<double>,                                \
                          &maxpool_backward<float>, &maxpool_backward<double>,               \
                          &tile<float>,     &tile<double>};                                  \
  }                                                                                          \
  }
