// Max pooling (MaxPoolArgs, MaxPoolBwdArgs in api.h), compiled per ISA with
// impl.h. channels_last: vectors run over channels (the forward four at a
// time: independent max chains); planes (NCHW, forward): vectors run along
// the output row, with stride-2 windows de-interleaved from two loads.
#pragma once
#include <limits>

#include "effconv/pool2d_shape.h"

namespace effconv {
namespace cpu {
namespace {

// PyTorch's update rule: x replaces m when larger or NaN (a NaN anywhere in
// the window is the result).
template <typename T>
inline vec_t<T> max_nan(vec_t<T> m, vec_t<T> x) {
  return (x > m) | (x != x) ? x : m;
}
template <typename T>
inline T max_nan1(T m, T x) {
  return (x > m) | (x != x) ? x : m;
}

template <typename T>
void maxpool_nhwc(const MaxPoolArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  const vec_t<T> ninf = vsplat<T>(-std::numeric_limits<T>::infinity());
  const Pool2dShape& s = g.s;
  const int64_t C = s.C;
  // Rows the next output row's windows add to this row's, requested one
  // output row ahead: inputs beyond the caches otherwise streamed
  // latency-bound (SqueezeNet's pool1 and ResNet's stem pool at N16, 50 MB
  // inputs: 2.5-2.7 ms without, 1.0 ms with).
  const int64_t last = (s.kh - 1) * s.dh;
  for (int64_t p = g.p0; p < g.p1; ++p) {
    const int64_t hs = p * s.sh - s.ph;
    for (int64_t q = 0; q < s.Q; ++q) {
      const PoolWindow win = pool_window(s, p, q);
      T* y = g.y + (p * s.Q + q) * C;
      if (g.prefetch && p + 1 < g.p1) {
        const int64_t w0 = win.ws < 0 ? 0 : win.ws, w1 = win.ws + s.sw < s.W ? win.ws + s.sw : s.W;
        for (int64_t i = 0; i < s.kh; ++i) {
          const int64_t r = hs + s.sh + i * s.dh;
          if (r <= hs + last || r < 0 || r >= s.H || w1 <= w0) continue;
          const char* from = reinterpret_cast<const char*>(g.x + (r * s.W + w0) * C);
          const int64_t bytes = (w1 - w0) * C * int64_t(sizeof(T));
          for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(from + off, 0, 3);
        }
      }
      int64_t c = 0;
      for (; c + 4 * L <= C; c += 4 * L) {
        vec_t<T> m0 = ninf, m1 = ninf, m2 = ninf, m3 = ninf;
        for (int64_t i = win.ti.first; i < win.ti.end; ++i)
          for (int64_t j = win.tj.first; j < win.tj.end; ++j) {
            const T* px = g.x + win.pixel(i, j) * C + c;
            m0 = max_nan<T>(m0, vload(px));
            m1 = max_nan<T>(m1, vload(px + L));
            m2 = max_nan<T>(m2, vload(px + 2 * L));
            m3 = max_nan<T>(m3, vload(px + 3 * L));
          }
        vstore(y + c, m0);
        vstore(y + c + L, m1);
        vstore(y + c + 2 * L, m2);
        vstore(y + c + 3 * L, m3);
      }
      for (; c < C; c += L) {
        const int64_t n = C - c < L ? C - c : L;
        vec_t<T> m = ninf;
        for (int64_t i = win.ti.first; i < win.ti.end; ++i)
          for (int64_t j = win.tj.first; j < win.tj.end; ++j) m = max_nan<T>(m, vload_any(g.x + win.pixel(i, j) * C + c, n));
        if (n == L)
          vstore(y + c, m);
        else
          vstore_n(y + c, m, n);
      }
    }
  }
}

template <typename T>
void maxpool_planes(const MaxPoolArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  const T ninf = -std::numeric_limits<T>::infinity();
  const Pool2dShape& s = g.s;
  ivec_t<T> even;
  for (int l = 0; l < L; ++l) even[l] = 2 * l;
  for (int64_t p = g.p0; p < g.p1; ++p) {
    T* y = g.y + p * s.Q;
    for (int64_t q = 0; q < s.Q; ++q) y[q] = ninf;
    const int64_t hs = p * s.sh - s.ph;
    const PoolTaps ti = pool_taps(hs, s.kh, s.dh, s.H);
    for (int64_t i = ti.first; i < ti.end; ++i) {
      const T* row = g.x + (hs + i * s.dh) * s.W;
      for (int64_t j = 0; j < s.kw; ++j) {
        // Output q reads column q * sw + off; [q0, q1) are the q whose column exists.
        const int64_t off = j * s.dw - s.pw;
        const int64_t q0 = off < 0 ? (-off + s.sw - 1) / s.sw : 0;
        const int64_t q1 = s.W - 1 - off < 0 ? 0 : ((s.W - 1 - off) / s.sw + 1 < s.Q ? (s.W - 1 - off) / s.sw + 1 : s.Q);
        int64_t q = q0;
        if (s.sw == 1) {
          for (; q + L <= q1; q += L) vstore(y + q, max_nan<T>(vload(y + q), vload(row + q + off)));
        } else if (s.sw == 2) {
          // Two loads cover 2L columns; the last one read is 2 (q + L - 1) + off + 1.
          for (; q + L <= q1 && 2 * (q + L - 1) + off + 1 < s.W; q += L) {
            const T* src = row + 2 * q + off;
            vstore(y + q, max_nan<T>(vload(y + q), __builtin_shuffle(vload(src), vload(src + L), even)));
          }
        }
        for (; q < q1; ++q) y[q] = max_nan1(y[q], row[q * s.sw + off]);
      }
    }
  }
}

// Per output pixel and channel vector: the argmax as a vector of pixel
// indices, then one masked read-modify-write of gi per tap (no per-lane
// scatter; lanes of one vector never collide, they are different channels).
template <typename T>
void maxpool_backward(const MaxPoolBwdArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  typedef typename VecTraits<T>::I I;
  const vec_t<T> ninf = vsplat<T>(-std::numeric_limits<T>::infinity()), zero{};
  const Pool2dShape& s = g.s;
  const int64_t C = s.C;
  for (int64_t p = 0; p < s.P; ++p) {
    for (int64_t q = 0; q < s.Q; ++q) {
      const PoolWindow win = pool_window(s, p, q);
      if (win.empty()) continue;  // no input under the window
      for (int64_t c = g.c0; c < g.c1; c += L) {
        const int64_t n = g.c1 - c < L ? g.c1 - c : L;
        vec_t<T> best = ninf;
        ivec_t<T> arg = ivec_t<T>{} + I(win.first());
        for (int64_t i = win.ti.first; i < win.ti.end; ++i)
          for (int64_t j = win.tj.first; j < win.tj.end; ++j) {
            const int64_t pix = win.pixel(i, j);
            const vec_t<T> v = vload_any(g.x + pix * C + c, n);
            const ivec_t<T> take = (v > best) | (v != v);
            best = take ? v : best;
            arg = take ? ivec_t<T>{} + I(pix) : arg;
          }
        const vec_t<T> gv = vload_any(g.go + (p * s.Q + q) * C + c, n);
        for (int64_t i = win.ti.first; i < win.ti.end; ++i)
          for (int64_t j = win.tj.first; j < win.tj.end; ++j) {
            const int64_t pix = win.pixel(i, j);
            const vec_t<T> add = arg == I(pix) ? gv : zero;
            T* d = g.gi + pix * C + c;
            if (n == L)
              vstore(d, vload(d) + add);
            else
              vstore_n(d, vload_n(d, n) + add, n);
          }
      }
    }
  }
}

template <typename T>
void maxpool(const MaxPoolArgs<T>& g) {
  if (g.planes)
    maxpool_planes(g);
  else
    maxpool_nhwc(g);
}

}  // namespace
}  // namespace cpu
}  // namespace effconv
