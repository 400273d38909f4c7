// Geometry of 2-D max pooling (F.max_pool2d semantics), shared by the CPU
// kernels and any device code: output size with ceil_mode, and the valid
// part of a window. Plain arithmetic, no torch headers.
#pragma once
#include <cstdint>

#include "effconv/macros.h"

namespace effconv {

// PyTorch's pooling_output_shape: the span rounded down (or up with
// ceil_mode), except that a ceil_mode window may not start in the right
// padding. Can be < 1; callers reject that.
EFFCONV_HD int64_t pool_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil, bool ceil_mode) {
  const int64_t num = in + 2 * pad - dil * (k - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // Floor division (num may be negative for inputs smaller than the window).
  int64_t out = (num >= 0 ? num / stride : -((-num + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;
  return out;
}

// Taps [first, end) of a window starting at `start` (= o * stride - pad)
// whose input index start + t * dil lies in [0, in).
struct PoolTaps {
  int64_t first, end;
};
EFFCONV_HD PoolTaps pool_taps(int64_t start, int64_t k, int64_t dil, int64_t in) {
  int64_t first = start < 0 ? (-start + dil - 1) / dil : 0;
  int64_t end = in - start > 0 ? (in - start + dil - 1) / dil : 0;
  if (end > k) end = k;
  if (first > end) first = end;
  return {first, end};
}

struct Pool2dShape {
  int64_t N = 0, C = 0, H = 0, W = 0, P = 0, Q = 0;
  int64_t kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0, dh = 1, dw = 1;
};

// The window of output pixel (p, q): its valid taps along each axis and the
// input pixel (h * W + w) of each tap.
struct PoolWindow {
  int64_t hs, ws, W, dh, dw;  // hs, ws: the window's corner (negative in the padding)
  PoolTaps ti, tj;
  EFFCONV_HD_MEMBER bool empty() const { return ti.first == ti.end || tj.first == tj.end; }
  EFFCONV_HD_MEMBER int64_t pixel(int64_t i, int64_t j) const { return (hs + i * dh) * W + ws + j * dw; }
  // Where PyTorch's saved index points when no tap beats -inf.
  EFFCONV_HD_MEMBER int64_t first() const { return pixel(ti.first, tj.first); }
};
EFFCONV_HD PoolWindow pool_window(const Pool2dShape& s, int64_t p, int64_t q) {
  const int64_t hs = p * s.sh - s.ph, ws = q * s.sw - s.pw;
  return {hs, ws, s.W, s.dh, s.dw, pool_taps(hs, s.kh, s.dh, s.H), pool_taps(ws, s.kw, s.dw, s.W)};
}

}  // namespace effconv
