// Shape and index math of a 2-D convolution, shared by every backend
// (C++ CPU kernels, CUDA C++ kernels, and mirrored by the Triton kernels).
//
// Conventions: input N x C x H x W, weight K x (C/groups) x R x S,
// output N x K x P x Q. All math is 64-bit so tensors past 2^31 elements
// index correctly.
#pragma once
#include <cstdint>

#include "effconv/macros.h"

namespace effconv {

struct Conv2dShape {
  int64_t N, C, H, W;  // input
  int64_t K, R, S;     // weight: K out channels, R x S taps
  int64_t P, Q;        // output spatial size
  int64_t stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups;

  EFFCONV_HD_MEMBER int64_t cin_per_group() const { return C / groups; }
  EFFCONV_HD_MEMBER int64_t cout_per_group() const { return K / groups; }
  EFFCONV_HD_MEMBER int64_t taps() const { return R * S; }
};

// Output extent along one axis (PyTorch's formula; floor division).
EFFCONV_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

// Input coordinate read by output coordinate `o` at tap `t` (may fall in the padding).
EFFCONV_HD int64_t conv_in_coord(int64_t o, int64_t t, int64_t stride, int64_t pad, int64_t dil) {
  return o * stride - pad + t * dil;
}

// The transposed map used by grad_input: the output coordinate whose tap `t`
// reads input coordinate `i`, or -1 when no output does (the coordinate falls
// between strides, or outside [0, out_size)).
EFFCONV_HD int64_t conv_out_coord(int64_t i, int64_t t, int64_t stride, int64_t pad, int64_t dil,
                                  int64_t out_size) {
  const int64_t num = i + pad - t * dil;
  if (num < 0 || num % stride != 0) return -1;
  const int64_t o = num / stride;
  return o < out_size ? o : -1;
}

// True when input coordinate residue `a` (mod stride) is reached by tap `t`:
// all input rows of one residue class share their valid taps, which is what
// lets grad_input skip the taps a strided convolution never uses.
EFFCONV_HD bool conv_tap_hits_residue(int64_t a, int64_t t, int64_t stride, int64_t pad, int64_t dil) {
  int64_t r = (a + pad - t * dil) % stride;
  if (r < 0) r += stride;
  return r == 0;
}

// The interior [lo, hi) of an output axis: outputs whose every tap reads
// inside [0, in_size), where kernels need no bounds checks. Empty (lo == hi)
// when no output qualifies.
EFFCONV_HD void conv_interior(int64_t out_size, int64_t in_size, int64_t k, int64_t stride, int64_t pad,
                              int64_t dil, int64_t* lo, int64_t* hi) {
  int64_t l = (pad + stride - 1) / stride;                 // o * stride - pad >= 0
  const int64_t last = in_size - 1 + pad - (k - 1) * dil;  // o * stride <= last
  int64_t h = last < 0 ? 0 : last / stride + 1;
  if (h > out_size) h = out_size;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

// Depthwise convolution with channel multiplier m: output channel k reads
// input channel k / m (PyTorch's grouping, groups = input channels).
EFFCONV_HD int64_t depthwise_in_channel(int64_t k, int64_t multiplier) { return k / multiplier; }

}  // namespace effconv
