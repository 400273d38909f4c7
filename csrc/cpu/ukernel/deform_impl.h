// Deformable-convolution column kernels (DeformColArgs in api.h), compiled
// per ISA with impl.h. One sample (pixel, tap, offset group) is located once
// (effconv/deform.h) and its four corner weights applied to the offset
// group's channels in contiguous runs: the loops over channels are what the
// ISA's vectors speed up.
#pragma once
#include "effconv/deform.h"

namespace effconv {
namespace cpu {
namespace {

// Runs of channels [lo, hi) that share an offset group and a weight group.
template <typename F>
inline void deform_runs(int64_t og, int64_t cog, int64_t cg, const F& f) {
  const int64_t c_begin = og * cog, c_end = c_begin + cog;
  for (int64_t lo = c_begin; lo < c_end;) {
    const int64_t g = lo / cg;
    const int64_t hi = c_end < (g + 1) * cg ? c_end : (g + 1) * cg;
    f(g, lo, hi);
    lo = hi;
  }
}

template <typename T>
inline T deform_sample_at(const DeformColArgs<T>& a, int64_t i, int64_t og, int64_t t, deform::Corners<T>& c) {
  const int64_t taps = a.kh * a.kw;
  const T* off = a.offset + i * a.off_ps + deform::offset_channel(og, taps, t);
  const T y = T(a.base_y[i] + (t / a.kw) * a.dil_h) + off[0];
  const T x = T(a.base_x[i] + (t % a.kw) * a.dil_w) + off[1];
  deform::corners(y, x, a.H, a.W, c);
  return a.mask ? a.mask[i * a.mask_ps + deform::mask_channel(og, taps, t)] : T(1);
}

template <typename T>
void deform_col(const DeformColArgs<T>& a) {
  const int64_t taps = a.kh * a.kw, cog = a.C / a.offset_groups, cg = a.C / a.groups;
  for (int64_t i = 0; i < a.m; ++i) {
    T* row = a.col + i * a.ldcol;
    for (int64_t og = 0; og < a.offset_groups; ++og) {
      for (int64_t t = 0; t < taps; ++t) {
        deform::Corners<T> c;
        const T mk = deform_sample_at(a, i, og, t, c);
        const T w0 = mk * c.w[0], w1 = mk * c.w[1], w2 = mk * c.w[2], w3 = mk * c.w[3];
        const bool all = c.idx[0] >= 0 && c.idx[1] >= 0 && c.idx[2] >= 0 && c.idx[3] >= 0;
        deform_runs(og, cog, cg, [&](int64_t g, int64_t lo, int64_t hi) {
          T* __restrict dst = row + (g * taps + t) * cg + (lo - g * cg);
          const int64_t n = hi - lo;
          if (all) {
            const T* __restrict p0 = a.x + c.idx[0] * a.C + lo;
            const T* __restrict p1 = a.x + c.idx[1] * a.C + lo;
            const T* __restrict p2 = a.x + c.idx[2] * a.C + lo;
            const T* __restrict p3 = a.x + c.idx[3] * a.C + lo;
#pragma omp simd
            for (int64_t k = 0; k < n; ++k) dst[k] = w0 * p0[k] + w1 * p1[k] + w2 * p2[k] + w3 * p3[k];
            return;
          }
#pragma omp simd
          for (int64_t k = 0; k < n; ++k) dst[k] = T(0);
          const T w[4] = {w0, w1, w2, w3};
          for (int q = 0; q < 4; ++q) {
            if (c.idx[q] < 0) continue;
            const T* __restrict p = a.x + c.idx[q] * a.C + lo;
            const T wq = w[q];
#pragma omp simd
            for (int64_t k = 0; k < n; ++k) dst[k] += wq * p[k];
          }
        });
      }
    }
  }
}

template <typename T>
void deform_col_backward(const DeformColArgs<T>& a) {
  const int64_t taps = a.kh * a.kw, cog = a.C / a.offset_groups, cg = a.C / a.groups;
  const bool want_coord = a.grad_offset != nullptr || a.grad_mask != nullptr;
  for (int64_t i = 0; i < a.m; ++i) {
    const T* grow = a.gcol + i * a.ldcol;
    for (int64_t og = 0; og < a.offset_groups; ++og) {
      for (int64_t t = 0; t < taps; ++t) {
        deform::Corners<T> c;
        const T mk = deform_sample_at(a, i, og, t, c);
        T d[4] = {T(0), T(0), T(0), T(0)};
        deform_runs(og, cog, cg, [&](int64_t g, int64_t lo, int64_t hi) {
          const T* __restrict gc = grow + (g * taps + t) * cg + (lo - g * cg);
          const int64_t n = hi - lo;
          for (int q = 0; q < 4; ++q) {
            if (c.idx[q] < 0) continue;
            if (want_coord) {
              const T* __restrict p = a.x + c.idx[q] * a.C + lo;
              T s = T(0);
#pragma omp simd reduction(+ : s)
              for (int64_t k = 0; k < n; ++k) s += gc[k] * p[k];
              d[q] += s;
            }
            if (a.grad_x != nullptr) {
              T* __restrict gx = a.grad_x + c.idx[q] * a.C + lo;
              const T wq = mk * c.w[q];
#pragma omp simd
              for (int64_t k = 0; k < n; ++k) gx[k] += wq * gc[k];
            }
          }
        });
        if (want_coord) {
          T gy, gx, gm;
          deform::point_grads(c, d, mk, &gy, &gx, &gm);
          if (a.grad_offset != nullptr) {
            T* go = a.grad_offset + i * a.off_ps + deform::offset_channel(og, taps, t);
            go[0] = gy;
            go[1] = gx;
          }
          if (a.grad_mask != nullptr) a.grad_mask[i * a.mask_ps + deform::mask_channel(og, taps, t)] = gm;
        }
      }
    }
  }
}

}  // namespace
}  // namespace cpu
}  // namespace effconv
