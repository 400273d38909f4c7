// Winograd F(2x2, 3x3) and F(4x4, 3x3) transforms (WinoArgs in api.h),
// compiled per ISA with impl.h. Vectors run over channels; a tile's patch
// pixels (4x4 or 6x6) are addressed through pointers (the zero vector for
// padding), so border tiles take the same path as interior ones.
#pragma once

namespace effconv {
namespace cpu {
namespace {

// B^T d for one column (or row) of a 4x4 patch (F(2x2, 3x3)): the rows of
// B^T are (1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1).
template <typename V>
inline void wino_in_1d(V (&d)[4]) {
  const V t0 = d[0] - d[2], t1 = d[1] + d[2], t2 = d[2] - d[1], t3 = d[1] - d[3];
  d[0] = t0;
  d[1] = t1;
  d[2] = t2;
  d[3] = t3;
}

// B^T d for one column (or row) of a 6x6 patch (F(4x4, 3x3)). Points 0, 1,
// -1, 1/2, -2 (and infinity) instead of the usual 0, ±1, ±2: a third of the
// fp32 error at 128-512 channels, which keeps F(4x4) inside the tolerance
// table (Barabasz et al. 2020 on choosing Winograd points). The rows of B^T
// are (1, -3/2, -2, 3/2, 1, 0), (0, -1, 1/2, 5/2, 1, 0), (0, 1, -5/2, 1/2,
// 1, 0), (0, -2, -1, 2, 1, 0), (0, 1/2, -1, -1/2, 1, 0), (0, 1, -3/2, -2,
// 3/2, 1): powers of two and halves, exact in any float.
template <typename V>
inline void wino_in_1d(V (&d)[6]) {
  const V s4 = d[4] - d[2], h = 0.5 * (d[3] - d[1]);
  const V t0 = d[0] - 1.5 * (d[1] - d[3]) - 2 * d[2] + d[4];
  const V t1 = 0.5 * d[2] + 2.5 * d[3] - d[1] + d[4];
  const V t2 = d[1] - 2.5 * d[2] + 0.5 * d[3] + d[4];
  const V t3 = s4 + 4 * h;
  const V t4 = s4 - h;
  const V t5 = d[1] - 1.5 * (d[2] - d[4]) - 2 * d[3] + d[5];
  d[0] = t0;
  d[1] = t1;
  d[2] = t2;
  d[3] = t3;
  d[4] = t4;
  d[5] = t5;
}

// A^T m: the rows of A^T are (1, 1, 1, 0), (0, 1, -1, -1) for F(2x2, 3x3) ...
template <typename V>
inline void wino_out_1d(const V (&m)[4], V (&y)[2]) {
  y[0] = m[0] + m[1] + m[2];
  y[1] = m[1] - m[2] - m[3];
}

// ... and (1, 1, 1, 1, 1, 0), (0, 1, -1, 1/2, -2, 0), (0, 1, 1, 1/4, 4, 0),
// (0, 1, -1, 1/8, -8, 1) for F(4x4, 3x3) (powers of the points).
template <typename V>
inline void wino_out_1d(const V (&m)[6], V (&y)[4]) {
  const V a = m[1] + m[2], b = m[1] - m[2];
  y[0] = m[0] + a + m[3] + m[4];
  y[1] = b + 0.5 * m[3] - 2 * m[4];
  y[2] = a + 0.25 * m[3] + 4 * m[4];
  y[3] = b + 0.125 * m[3] - 8 * m[4] + m[5];
}

// Tile t of the N x TH x TW grid as (image, tile row, tile column).
struct WinoTile {
  int64_t n, ti, tj;
};
inline WinoTile wino_tile(int64_t t, int64_t TH, int64_t TW) {
  return {t / (TH * TW), t / TW % TH, t % TW};
}

// F(MxM, 3x3): output tiles of M x M from input patches of A x A, A = M + 2.
template <typename T, int M>
void wino_input_m(const WinoArgs<T>& g) {
  constexpr int L = VecTraits<T>::L, A = M + 2;
  typedef vec_t<T> V;
  const int64_t C = g.C;
  for (int64_t i = 0; i < g.nt; ++i) {
    const WinoTile tl = wino_tile(g.t0 + i, g.TH, g.TW);
    const T* px[A][A];
    for (int r = 0; r < A; ++r) {
      const int64_t h = M * tl.ti - g.pad_h + r;
      for (int s = 0; s < A; ++s) {
        const int64_t w = M * tl.tj - g.pad_w + s;
        px[r][s] = h >= 0 && h < g.H && w >= 0 && w < g.W ? g.x + ((tl.n * g.H + h) * g.W + w) * C : g.zero;
      }
    }
    // Whole vectors, also past C (V's rows have ldv >= C rounded up to
    // vectors, and the GEMM reads only C): a pixel's tail vector reads the
    // next pixel's first channels, except at the very end of the tensor.
    T* vi = g.v + i * g.ldv;
    for (int64_t c = 0; c < C; c += L) {
      V d[A][A];
#pragma GCC unroll 6
      for (int r = 0; r < A; ++r)
#pragma GCC unroll 6
        for (int s = 0; s < A; ++s)
          d[r][s] = px[r][s] + c + L <= g.x_end || px[r][s] == g.zero ? vload(px[r][s] + c)
                                                                     : vload_n(px[r][s] + c, C - c);
#pragma GCC unroll 6
      for (int s = 0; s < A; ++s) {
        V col[A];
#pragma GCC unroll 6
        for (int r = 0; r < A; ++r) col[r] = d[r][s];
        wino_in_1d(col);
#pragma GCC unroll 6
        for (int r = 0; r < A; ++r) d[r][s] = col[r];
      }
#pragma GCC unroll 6
      for (int r = 0; r < A; ++r) {
        wino_in_1d(d[r]);
#pragma GCC unroll 6
        for (int s = 0; s < A; ++s) vstore(vi + (A * r + s) * g.v_stride + c, d[r][s]);
      }
    }
  }
}

template <typename T>
void wino_input(const WinoArgs<T>& g) {
  if (g.tile == 4)
    wino_input_m<T, 4>(g);
  else
    wino_input_m<T, 2>(g);
}

// rows[i] / cols[i]: how many of tile i's M rows / columns lie inside the
// output (tiles hang over the last row and column).
template <typename T, int ACT, int M>
void wino_output_vec(const WinoArgs<T>& g, int64_t col, T* const* base, const int* rows, const int* cols) {
  constexpr int L = VecTraits<T>::L, A = M + 2;
  typedef vec_t<T> V;
  const int64_t nc = g.col_end - col < L ? g.col_end - col : L;
  const V bias = g.ep.bias ? vload(g.ep.bias + col) : V{};
  const V scale = g.ep.scale ? vload(g.ep.scale + col) : vsplat<T>(1);
  const V shift = g.ep.shift ? vload(g.ep.shift + col) : V{};
  V ssum{}, ssq{};
  const int64_t ms = g.m_stride, oh = g.os_h, ow = g.os_w;
  for (int64_t i = 0; i < g.nt; ++i) {
    const T* mi = g.m + i * g.ldm + (col - g.col0);
    // A^T m along the patch rows, then along the columns.
    V y[M][A];
#pragma GCC unroll 6
    for (int s = 0; s < A; ++s) {
      V mc[A], o[M];
#pragma GCC unroll 6
      for (int r = 0; r < A; ++r) mc[r] = vload(mi + (A * r + s) * ms);
      wino_out_1d(mc, o);
#pragma GCC unroll 4
      for (int a = 0; a < M; ++a) y[a][s] = o[a];
    }
    V z[M][M];
#pragma GCC unroll 4
    for (int a = 0; a < M; ++a) {
      V o[M];
      wino_out_1d(y[a], o);
#pragma GCC unroll 4
      for (int b = 0; b < M; ++b) z[a][b] = activate<T>((o[b] + bias) * scale + shift, ACT);
    }
    T* o = base[i] + col;
    if (rows[i] == M && cols[i] == M && nc == L) {
#pragma GCC unroll 4
      for (int a = 0; a < M; ++a)
#pragma GCC unroll 4
        for (int b = 0; b < M; ++b) vstore(o + a * oh + b * ow, z[a][b]);
    } else {
      // A tile hanging over the last output row or column, or the last
      // vector's tail; pixels outside the output drop out of the statistics.
      for (int a = 0; a < M; ++a)
        for (int b = 0; b < M; ++b) {
          if (a < rows[i] && b < cols[i])
            vstore_n(o + a * oh + b * ow, z[a][b], nc);
          else
            z[a][b] = V{};
        }
    }
    if (g.ep.stat_sum) {  // add_stats reads only the first nc lanes
#pragma GCC unroll 4
      for (int a = 0; a < M; ++a)
#pragma GCC unroll 4
        for (int b = 0; b < M; ++b) {
          ssum += z[a][b];
          ssq += z[a][b] * z[a][b];
        }
    }
  }
  if (g.ep.stat_sum) add_stats(g.ep, col, ssum, ssq, nc);
}

template <typename T, int M>
void wino_output_m(const WinoArgs<T>& g) {
  constexpr int L = VecTraits<T>::L;
  T* base[kWinoMaxTiles];  // each tile's first output pixel
  int rows[kWinoMaxTiles], cols[kWinoMaxTiles];
  for (int64_t i = 0; i < g.nt; ++i) {
    const WinoTile tl = wino_tile(g.t0 + i, g.TH, g.TW);
    base[i] = g.out + tl.n * g.os_n + M * tl.ti * g.os_h + M * tl.tj * g.os_w;
    rows[i] = int(std::min<int64_t>(M, g.P - M * tl.ti));
    cols[i] = int(std::min<int64_t>(M, g.Q - M * tl.tj));
  }
  for (int64_t col = g.col0; col < g.col_end; col += L) {
    switch (static_cast<Activation>(g.ep.act)) {
      case Activation::kReLU:
        wino_output_vec<T, int(Activation::kReLU), M>(g, col, base, rows, cols);
        break;
      case Activation::kReLU6:
        wino_output_vec<T, int(Activation::kReLU6), M>(g, col, base, rows, cols);
        break;
      case Activation::kSiLU:
        wino_output_vec<T, int(Activation::kSiLU), M>(g, col, base, rows, cols);
        break;
      default:
        wino_output_vec<T, 0, M>(g, col, base, rows, cols);
    }
  }
}

template <typename T>
void wino_output(const WinoArgs<T>& g) {
  if (g.tile == 4)
    wino_output_m<T, 4>(g);
  else
    wino_output_m<T, 2>(g);
}

}  // namespace
}  // namespace cpu
}  // namespace effconv
