// Winograd F(2x2, 3x3) transforms (WinoArgs in api.h), compiled per ISA with
// impl.h. Vectors run over channels; a tile's 16 patch pixels are addressed
// through pointers (the zero vector for padding), so border tiles take the
// same path as interior ones.
#pragma once

namespace effconv {
namespace cpu {
namespace {

// B^T d for one column (or row) of a 4x4 patch: the rows of B^T are
// (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1).
template <typename V>
inline void wino_in_1d(V& d0, V& d1, V& d2, V& d3) {
  const V t0 = d0 - d2, t1 = d1 + d2, t2 = d2 - d1, t3 = d1 - d3;
  d0 = t0;
  d1 = t1;
  d2 = t2;
  d3 = t3;
}

// Tile t of the N x TH x TW grid as (image, tile row, tile column).
struct WinoTile {
  int64_t n, ti, tj;
};
inline WinoTile wino_tile(int64_t t, int64_t TH, int64_t TW) {
  return {t / (TH * TW), t / TW % TH, t % TW};
}

template <typename T>
void wino_input(const WinoArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  typedef vec_t<T> V;
  const int64_t C = g.C;
  for (int64_t i = 0; i < g.nt; ++i) {
    const WinoTile tl = wino_tile(g.t0 + i, g.TH, g.TW);
    const T* px[4][4];
    for (int r = 0; r < 4; ++r) {
      const int64_t h = 2 * tl.ti - g.pad_h + r;
      for (int s = 0; s < 4; ++s) {
        const int64_t w = 2 * tl.tj - g.pad_w + s;
        px[r][s] = h >= 0 && h < g.H && w >= 0 && w < g.W ? g.x + ((tl.n * g.H + h) * g.W + w) * C : g.zero;
      }
    }
    // Whole vectors, also past C (V's rows have ldv >= C rounded up to
    // vectors, and the GEMM reads only C): a pixel's tail vector reads the
    // next pixel's first channels, except at the very end of the tensor.
    T* vi = g.v + i * g.ldv;
    for (int64_t c = 0; c < C; c += L) {
      V d[4][4];
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
        for (int s = 0; s < 4; ++s)
          d[r][s] = px[r][s] + c + L <= g.x_end || px[r][s] == g.zero ? vload(px[r][s] + c)
                                                                     : vload_n(px[r][s] + c, C - c);
#pragma GCC unroll 4
      for (int s = 0; s < 4; ++s) wino_in_1d(d[0][s], d[1][s], d[2][s], d[3][s]);
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) wino_in_1d(d[r][0], d[r][1], d[r][2], d[r][3]);
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r)
#pragma GCC unroll 4
        for (int s = 0; s < 4; ++s) vstore(vi + (4 * r + s) * g.v_stride + c, d[r][s]);
    }
  }
}

template <typename T, int ACT>
void wino_output_vec(const WinoArgs<T>& g, int64_t col, T* const* base, const int* full) {
  constexpr int L = VecTraits<T>::L;
  typedef vec_t<T> V;
  const int64_t nc = g.col_end - col < L ? g.col_end - col : L;
  const V bias = g.ep.bias ? vload(g.ep.bias + col) : V{};
  const V scale = g.ep.scale ? vload(g.ep.scale + col) : vsplat<T>(1);
  const V shift = g.ep.shift ? vload(g.ep.shift + col) : V{};
  V ssum{}, ssq{};
  const int64_t ms = g.m_stride, oh = g.os_h, ow = g.os_w;
  for (int64_t i = 0; i < g.nt; ++i) {
    const T* mi = g.m + i * g.ldm + (col - g.col0);
    // A^T m along the patch rows (A^T's rows: (1, 1, 1, 0), (0, 1, -1, -1)),
    // then along the columns.
    V y[2][4];
#pragma GCC unroll 4
    for (int s = 0; s < 4; ++s) {
      const V m0 = vload(mi + s * ms), m1 = vload(mi + (4 + s) * ms);
      const V m2 = vload(mi + (8 + s) * ms), m3 = vload(mi + (12 + s) * ms);
      y[0][s] = m0 + m1 + m2;
      y[1][s] = m1 - m2 - m3;
    }
    V z[2][2];
#pragma GCC unroll 2
    for (int a = 0; a < 2; ++a) {
      z[a][0] = activate<T>((y[a][0] + y[a][1] + y[a][2] + bias) * scale + shift, ACT);
      z[a][1] = activate<T>((y[a][1] - y[a][2] - y[a][3] + bias) * scale + shift, ACT);
    }
    T* o = base[i] + col;
    if (full[i] == 3 && nc == L) {
      vstore(o, z[0][0]);
      vstore(o + ow, z[0][1]);
      vstore(o + oh, z[1][0]);
      vstore(o + oh + ow, z[1][1]);
    } else {
      // A tile hanging over the last output row or column, or the last
      // vector's tail; pixels outside the output drop out of the statistics.
      vstore_n(o, z[0][0], nc);
      if (full[i] & 1) vstore_n(o + ow, z[0][1], nc); else z[0][1] = V{};
      if (full[i] & 2) vstore_n(o + oh, z[1][0], nc); else z[1][0] = V{};
      if (full[i] == 3) vstore_n(o + oh + ow, z[1][1], nc); else z[1][1] = V{};
    }
    if (g.ep.stat_sum) {  // add_stats reads only the first nc lanes
      ssum += (z[0][0] + z[0][1]) + (z[1][0] + z[1][1]);
      ssq += (z[0][0] * z[0][0] + z[0][1] * z[0][1]) + (z[1][0] * z[1][0] + z[1][1] * z[1][1]);
    }
  }
  if (g.ep.stat_sum) add_stats(g.ep, col, ssum, ssq, nc);
}

template <typename T>
void wino_output(const WinoArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  // Per tile: its first output pixel, and whether its second row (bit 1)
  // and second column (bit 0) lie inside the output.
  T* base[kWinoMaxTiles];
  int full[kWinoMaxTiles];
  for (int64_t i = 0; i < g.nt; ++i) {
    const WinoTile tl = wino_tile(g.t0 + i, g.TH, g.TW);
    base[i] = g.out + tl.n * g.os_n + 2 * tl.ti * g.os_h + 2 * tl.tj * g.os_w;
    full[i] = (2 * tl.ti + 1 < g.P ? 2 : 0) | (2 * tl.tj + 1 < g.Q ? 1 : 0);
  }
  for (int64_t col = g.col0; col < g.col_end; col += L) {
    switch (static_cast<Activation>(g.ep.act)) {
      case Activation::kReLU:
        wino_output_vec<T, int(Activation::kReLU)>(g, col, base, full);
        break;
      case Activation::kReLU6:
        wino_output_vec<T, int(Activation::kReLU6)>(g, col, base, full);
        break;
      case Activation::kSiLU:
        wino_output_vec<T, int(Activation::kSiLU)>(g, col, base, full);
        break;
      default:
        wino_output_vec<T, 0>(g, col, base, full);
    }
  }
}

}  // namespace
}  // namespace cpu
}  // namespace effconv
