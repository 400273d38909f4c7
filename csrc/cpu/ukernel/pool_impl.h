// Max pooling (MaxPoolArgs, MaxPoolBwdArgs in api.h), compiled per ISA with
// impl.h. channels_last: vectors run over channels (the forward four at a
// time: independent max chains); planes (NCHW, forward): vectors run along
// the output row, with stride-2 windows de-interleaved from two loads.
#pragma once
#include <limits>
#include <vector>

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

// Requests the input the window one output row below `win` (output row p,
// starting at input row hs) adds to it: its rows past this window's last,
// columns [ws, ws + sw), channels [c0, c0 + bytes / sizeof(T)) of each pixel.
// Inputs beyond the caches otherwise stream latency-bound (SqueezeNet's
// pool1 and ResNet's stem pool at N16, 50 MB inputs: the forward 2.5-2.7 ms
// without, 1.0 ms with; the backward ~45% of its time). Always inlined:
// called out of line from the backward's argmax loop, the backward took
// 1.6x as long.
template <typename T>
__attribute__((always_inline)) inline void prefetch_next_window(const T* x, const Pool2dShape& s, const PoolWindow& win, int64_t hs, int64_t c0,
                                 int64_t bytes) {
  const int64_t last = (s.kh - 1) * s.dh;
  const int64_t w0 = win.ws < 0 ? 0 : win.ws, w1 = win.ws + s.sw < s.W ? win.ws + s.sw : s.W;
  for (int64_t i = 0; i < s.kh && w1 > w0; ++i) {
    const int64_t r = hs + s.sh + i * s.dh;
    if (r <= hs + last || r < 0 || r >= s.H) continue;
    // Whole pixels are one span (per pixel, the forward ran 3-6% slower).
    const bool whole = bytes == s.C * int64_t(sizeof(T));
    for (int64_t w = w0; w < (whole ? w0 + 1 : w1); ++w) {
      prefetch_span(x + (r * s.W + w) * s.C + c0, whole ? (w1 - w0) * bytes : bytes);
    }
  }
}

template <typename T>
void maxpool_nhwc(const MaxPoolArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  const vec_t<T> ninf = vsplat<T>(-std::numeric_limits<T>::infinity());
  const Pool2dShape& s = g.s;
  const int64_t C = s.C;
  for (int64_t p = g.p0; p < g.p1; ++p) {
    const int64_t hs = p * s.sh - s.ph;
    for (int64_t q = 0; q < s.Q; ++q) {
      const PoolWindow win = pool_window(s, p, q);
      T* y = g.y + (p * s.Q + q) * C;
      if (g.prefetch && p + 1 < g.p1) prefetch_next_window(g.x, s, win, hs, 0, C * int64_t(sizeof(T)));
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

// A gather: per input pixel and channel vector, the gradients of the
// covering windows whose argmax (a vector of pixel indices, lanes being
// channels) is this pixel, summed and stored once -- no zero fill and no
// read-modify-write per tap. Each output row's argmaxes are computed once,
// when the first input row under it is reached, into a ring of g.ring rows.
// ResNet's stem pool at N16 (3x3 s2 over 64x112²): 7.6 ms scattering into
// gi, 6.6 gathering, 3.6 with the prefetches below (PyTorch's backward from
// saved indices: 3.0-3.6); at N1 0.20 -> 0.25 ms (per-pixel overhead over
// one channel vector per task).
template <typename T>
void maxpool_backward(const MaxPoolBwdArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  typedef typename VecTraits<T>::I I;
  using IV = ivec_t<T>;
  const vec_t<T> ninf = vsplat<T>(-std::numeric_limits<T>::infinity()), zero{};
  const Pool2dShape& s = g.s;
  const int64_t C = s.C, nv = (g.c1 - g.c0 + L - 1) / L;
  thread_local std::vector<IV> ring;
  if (ring.size() < size_t(g.ring * s.Q * nv)) ring.resize(g.ring * s.Q * nv);
  const int64_t cbytes = (g.c1 - g.c0) * int64_t(sizeof(T));
  auto argmax_row = [&](int64_t p) {
    IV* a = ring.data() + p % g.ring * s.Q * nv;
    const int64_t hs = p * s.sh - s.ph;
    for (int64_t q = 0; q < s.Q; ++q) {
      const PoolWindow win = pool_window(s, p, q);
      if (p + 1 < s.P) {  // the next row's input, as the forward does, and its gradients
        const char* go = reinterpret_cast<const char*>(g.go + ((p + 1) * s.Q + q) * C + g.c0);
        for (int64_t off = 0; off < cbytes; off += 64) __builtin_prefetch(go + off, 0, 3);
        prefetch_next_window(g.x, s, win, hs, g.c0, cbytes);
      }
      for (int64_t v = 0; v < nv; ++v) {
        const int64_t c = g.c0 + v * L, n = g.c1 - c < L ? g.c1 - c : L;
        // An empty window (no input under it) credits no pixel.
        IV arg = IV{} + I(win.empty() ? -1 : win.first());
        vec_t<T> best = ninf;
        for (int64_t i = win.ti.first; i < win.ti.end; ++i)
          for (int64_t j = win.tj.first; j < win.tj.end; ++j) {
            const int64_t pix = win.pixel(i, j);
            const vec_t<T> x = vload_any(g.x + pix * C + c, n);
            const IV take = (x > best) | (x != x);
            best = take ? x : best;
            arg = take ? IV{} + I(pix) : arg;
          }
        a[q * nv + v] = arg;
      }
    }
  };
  // Per input row: where its covering output rows' argmaxes and gradients
  // are (a division per row, not per pixel and vector).
  constexpr int kMaxRows = 8;
  const IV* arow[kMaxRows];
  const T* grow[kMaxRows];
  int64_t done = 0;  // output rows [0, done) have their argmaxes in the ring
  for (int64_t h = 0; h < s.H; ++h) {
    const int64_t* rows = g.rows + g.row_begin[h];
    const int64_t nrows = g.row_begin[h + 1] - g.row_begin[h];
    for (; nrows > 0 && done <= rows[nrows - 1]; ++done) argmax_row(done);
    T* const gi_row = g.gi + h * s.W * C;
    // Rows covered by more windows than kMaxRows (tiny strides, tall
    // kernels) take them in chunks, adding into what is stored.
    for (int64_t r0 = 0; r0 == 0 || r0 < nrows; r0 += kMaxRows) {  // once when no row covers h: zeros
      const int64_t nr = nrows - r0 < kMaxRows ? nrows - r0 : kMaxRows;
      for (int64_t r = 0; r < nr; ++r) {
        arow[r] = ring.data() + rows[r0 + r] % g.ring * s.Q * nv;
        grow[r] = g.go + rows[r0 + r] * s.Q * C;
      }
      for (int64_t w = 0; w < s.W; ++w) {
        const int64_t* cols = g.cols + g.col_begin[w];
        const int64_t ncols = g.col_begin[w + 1] - g.col_begin[w];
        const I pix = I(h * s.W + w);
        T* d = gi_row + w * C;
        auto gather = [&](int64_t v, int64_t c, auto full) __attribute__((always_inline)) {
          const int64_t n = decltype(full)::value ? L : g.c1 - c;
          vec_t<T> sum = r0 == 0 ? zero : vload_any(d + c, n);
          for (int64_t r = 0; r < nr; ++r)
            for (int64_t k = 0; k < ncols; ++k) {
              const int64_t q = cols[k];
              const T* go = grow[r] + q * C + c;
              sum += arow[r][q * nv + v] == pix ? (decltype(full)::value ? vload(go) : vload_n(go, n)) : zero;
            }
          if constexpr (decltype(full)::value)
            vstore(d + c, sum);
          else
            vstore_n(d + c, sum, n);
        };
        int64_t v = 0;
        for (; g.c0 + (v + 1) * L <= g.c1; ++v) gather(v, g.c0 + v * L, std::true_type{});
        if (v < nv) gather(v, g.c0 + v * L, std::false_type{});
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
