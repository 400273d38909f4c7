// Shapes of the torch-facing kernels built from tensors, with the checks
// that memory safety depends on (host code only: the CPU kernels and the
// host side of the CUDA kernels). The Python op layer validates first with
// PyTorch-style messages; these are the last line of defence.
#pragma once
#include <ATen/ATen.h>

#include "effconv/checks.h"
#include "effconv/conv2d_shape.h"
#include "effconv/deform.h"
#include "effconv/pool2d_shape.h"

namespace effconv {

inline Conv2dShape make_conv2d_shape(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  EFFCONV_CHECK_DIM(input, 4);
  EFFCONV_CHECK_DIM(weight, 4);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "expected 2-element stride, padding and dilation, got ", stride, ", ", padding, ", ", dilation);
  TORCH_CHECK(groups > 0, "expected groups > 0, got ", groups);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "expected positive stride, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "expected positive dilation, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "expected non-negative padding, got ", padding);
  Conv2dShape s;
  s.N = input.size(0);
  s.C = input.size(1);
  s.H = input.size(2);
  s.W = input.size(3);
  s.K = weight.size(0);
  s.R = weight.size(2);
  s.S = weight.size(3);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dil_h = dilation[0];
  s.dil_w = dilation[1];
  s.groups = groups;
  TORCH_CHECK(s.C % groups == 0 && s.K % groups == 0, "expected channels divisible by groups=", groups,
              ", got in_channels=", s.C, " out_channels=", s.K);
  TORCH_CHECK(weight.size(1) == s.C / groups, "expected weight of size [", s.K, ", ", s.C / groups, ", ", s.R, ", ",
              s.S, "] for input with ", s.C, " channels and groups=", groups, ", got ", weight.sizes());
  s.P = conv_out_size(s.H, s.R, s.stride_h, s.pad_h, s.dil_h);
  s.Q = conv_out_size(s.W, s.S, s.stride_w, s.pad_w, s.dil_w);
  TORCH_CHECK(s.P > 0 && s.Q > 0, "expected a kernel no larger than the padded input, got kernel (", s.R, ", ", s.S,
              ") with dilation ", dilation, " for padded input (", s.H + 2 * s.pad_h, ", ", s.W + 2 * s.pad_w, ")");
  return s;
}

inline DeformShape make_deform_shape(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                                     const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  EFFCONV_CHECK_DIM(input, 4);
  EFFCONV_CHECK_DIM(offset, 4);
  EFFCONV_CHECK_DIM(weight, 4);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "expected 2-element stride, padding and dilation");
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0 && dilation[0] > 0 && dilation[1] > 0 && padding[0] >= 0 &&
                  padding[1] >= 0,
              "expected positive stride and dilation and non-negative padding");
  DeformShape g;
  g.N = input.size(0), g.C = input.size(1), g.H = input.size(2), g.W = input.size(3);
  g.K = weight.size(0), g.kh = weight.size(2), g.kw = weight.size(3);
  TORCH_CHECK(weight.size(1) > 0 && g.C % weight.size(1) == 0, "weight ", weight.sizes(), " does not fit input ",
              input.sizes());
  g.G = g.C / weight.size(1);
  TORCH_CHECK(g.K % g.G == 0, "out channels ", g.K, " not divisible by groups ", g.G);
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1], g.dh = dilation[0], g.dw = dilation[1];
  g.P = conv_out_size(g.H, g.kh, g.sh, g.ph, g.dh);
  g.Q = conv_out_size(g.W, g.kw, g.sw, g.pw, g.dw);
  TORCH_CHECK(g.P > 0 && g.Q > 0, "kernel larger than the padded input");
  const int64_t taps = g.taps();
  TORCH_CHECK(offset.size(1) % (2 * taps) == 0 && offset.size(1) > 0, "offset channels ", offset.size(1),
              " not a multiple of 2 * taps");
  g.OG = offset.size(1) / (2 * taps);
  TORCH_CHECK(g.C % g.OG == 0, "input channels ", g.C, " not divisible by offset groups ", g.OG);
  EFFCONV_CHECK_SIZES(offset, g.N, 2 * g.OG * taps, g.P, g.Q);
  if (mask.has_value() && mask->defined()) EFFCONV_CHECK_SIZES((*mask), g.N, g.OG * taps, g.P, g.Q);
  return g;
}

// The pooling of an N x C x H x W input (sizes: F.max_pool2d's checks).
inline Pool2dShape make_pool2d_shape(int64_t N, int64_t C, int64_t H, int64_t W, at::IntArrayRef kernel_size,
                                     at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                     bool ceil_mode) {
  TORCH_CHECK(kernel_size.size() == 2 && stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "expected 2-element kernel_size, stride, padding and dilation, got ", kernel_size, ", ", stride, ", ",
              padding, ", ", dilation);
  Pool2dShape s;
  s.N = N, s.C = C, s.H = H, s.W = W;
  s.kh = kernel_size[0], s.kw = kernel_size[1], s.sh = stride[0], s.sw = stride[1];
  s.ph = padding[0], s.pw = padding[1], s.dh = dilation[0], s.dw = dilation[1];
  TORCH_CHECK(s.kh > 0 && s.kw > 0 && s.sh > 0 && s.sw > 0 && s.dh > 0 && s.dw > 0,
              "expected positive kernel_size, stride and dilation, got ", kernel_size, ", ", stride, ", ", dilation);
  TORCH_CHECK(s.ph >= 0 && s.pw >= 0 && s.ph <= s.kh / 2 && s.pw <= s.kw / 2,
              "expected padding of at most half the kernel size ", kernel_size, ", got ", padding);
  s.P = pool_out_size(s.H, s.kh, s.sh, s.ph, s.dh, ceil_mode);
  s.Q = pool_out_size(s.W, s.kw, s.sw, s.pw, s.dw, ceil_mode);
  TORCH_CHECK(s.P > 0 && s.Q > 0, "expected a pooling window that fits the padded input of size (", N, ", ", C,
              ", ", H, ", ", W, "), got output size (", s.P, ", ", s.Q, ")");
  return s;
}

inline Pool2dShape make_pool2d_shape(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  EFFCONV_CHECK_DIM(input, 4);
  return make_pool2d_shape(input.size(0), input.size(1), input.size(2), input.size(3), kernel_size, stride, padding,
                           dilation, ceil_mode);
}

}  // namespace effconv
