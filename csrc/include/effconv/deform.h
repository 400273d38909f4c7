// Deformable convolution sampling shared by the CPU and CUDA C++ kernels
// (the Triton kernels in kernels/deform.py restate it; the CPU tests pin all
// three to torchvision.ops.deform_conv2d).
//
// Tap (i, j) of output pixel (oh, ow) reads the input at
//
//   y = oh * stride_h - pad_h + i * dil_h + offset_y
//   x = ow * stride_w - pad_w + j * dil_w + offset_x
//
// by bilinear interpolation over the four corners (y0, x0), (y0, x1),
// (y1, x0), (y1, x1) with y1 = y0 + 1, x1 = x0 + 1; corners outside the
// image read zero (torchvision's convention: a point on or beyond
// -1 / H / W reads exactly zero because its in-image corners get weight 0).
//
// The gradients follow from the same four corners:
//   d out / d input[corner k] = mask * w_k
//   d out / d mask            = sum_k w_k v_k
//   d out / d offset_y        = mask * (lx (v3' - v1') + (1 - lx) (v2' - v0'))   [v' in corner order 0..3]
//   d out / d offset_x        = mask * (ly (v3' - v2') + (1 - ly) (v1' - v0'))
// which is torchvision's get_coordinate_weight, including at the edges.
// Nothing here includes torch headers (see macros.h).
#pragma once
#include <cmath>
#include <cstdint>

#include "effconv/macros.h"

namespace effconv {

// Shape of a deformable convolution: input N x C x H x W, weight
// K x (C/G) x kh x kw, offset_groups OG, output P x Q.
struct DeformShape {
  int64_t N, C, H, W, K, G, OG, kh, kw, P, Q;
  int64_t sh, sw, ph, pw, dh, dw;  // stride, padding, dilation (h, w)
  EFFCONV_HD_MEMBER int64_t taps() const { return kh * kw; }
  EFFCONV_HD_MEMBER int64_t cg() const { return C / G; }    // input channels per weight group
  EFFCONV_HD_MEMBER int64_t kg() const { return K / G; }    // output channels per weight group
  EFFCONV_HD_MEMBER int64_t cog() const { return C / OG; }  // input channels per offset group
};

namespace deform {

// The four corners of a sample: pixel indices h * W + w (or -1 outside the
// image) and bilinear weights, corner order (y0,x0), (y0,x1), (y1,x0), (y1,x1).
template <typename T>
struct Corners {
  int64_t idx[4];
  T w[4];
  T ly, lx;  // fractional parts: the coordinate-gradient weights
};

// Sample position of tap (i, j) for output pixel (oh, ow) before the offset.
EFFCONV_HD int64_t base_coord(int64_t o, int64_t stride, int64_t pad, int64_t k, int64_t dil) {
  return o * stride - pad + k * dil;
}

// Fills `c` for the point (y, x) of an H x W image. Returns false when no
// corner is inside the image (every weight and index is then zero / -1), so
// callers may skip the point. Points further out than one pixel, and NaN,
// never convert to an integer (no overflow for offsets far outside).
template <typename T>
EFFCONV_HD bool corners(T y, T x, int64_t H, int64_t W, Corners<T>& c) {
  for (int k = 0; k < 4; ++k) {
    c.idx[k] = -1;
    c.w[k] = T(0);
  }
  c.ly = c.lx = T(0);
  if (!(y > T(-2) && y < T(H + 1) && x > T(-2) && x < T(W + 1))) return false;
  const T fy = floor(y), fx = floor(x);
  const int64_t y0 = static_cast<int64_t>(fy), x0 = static_cast<int64_t>(fx);
  const T ly = y - fy, lx = x - fx;
  const T hy = T(1) - ly, hx = T(1) - lx;
  c.ly = ly;
  c.lx = lx;
  const bool vy0 = y0 >= 0 && y0 < H, vy1 = y0 + 1 >= 0 && y0 + 1 < H;
  const bool vx0 = x0 >= 0 && x0 < W, vx1 = x0 + 1 >= 0 && x0 + 1 < W;
  bool any = false;
  if (vy0 && vx0) { c.idx[0] = y0 * W + x0;           c.w[0] = hy * hx; any = true; }
  if (vy0 && vx1) { c.idx[1] = y0 * W + x0 + 1;       c.w[1] = hy * lx; any = true; }
  if (vy1 && vx0) { c.idx[2] = (y0 + 1) * W + x0;     c.w[2] = ly * hx; any = true; }
  if (vy1 && vx1) { c.idx[3] = (y0 + 1) * W + x0 + 1; c.w[3] = ly * lx; any = true; }
  return any;
}

// Offset and mask gradients of one sample from d_k = sum_c g[c] * v_k[c]
// (the output-column gradient dotted with each corner's values; zero for
// corners outside the image). Writes (grad_offset_y, grad_offset_x, grad_mask).
template <typename T, typename Acc>
EFFCONV_HD void point_grads(const Corners<T>& c, const Acc d[4], Acc mask, Acc* g_y, Acc* g_x, Acc* g_m) {
  const Acc ly = Acc(c.ly), lx = Acc(c.lx);
  *g_y = mask * (lx * (d[3] - d[1]) + (Acc(1) - lx) * (d[2] - d[0]));
  *g_x = mask * (ly * (d[3] - d[2]) + (Acc(1) - ly) * (d[1] - d[0]));
  *g_m = Acc(c.w[0]) * d[0] + Acc(c.w[1]) * d[1] + Acc(c.w[2]) * d[2] + Acc(c.w[3]) * d[3];
}

// Channel layout of the offset and mask tensors (torchvision's): offset
// group g, tap t (= i * kW + j) has its y offset at channel 2 * (g * taps + t),
// its x offset right after, and its mask at channel g * taps + t.
EFFCONV_HD int64_t offset_channel(int64_t g, int64_t taps, int64_t t) { return 2 * (g * taps + t); }
EFFCONV_HD int64_t mask_channel(int64_t g, int64_t taps, int64_t t) { return g * taps + t; }

}  // namespace deform
}  // namespace effconv
