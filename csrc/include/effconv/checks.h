// Argument checks for the torch-facing C++ entry points. The Python op layer
// validates first with PyTorch-style messages; these are the last line of
// defence so a direct call into effconv._C can never read out of bounds.
#pragma once
#include <ATen/ATen.h>

#define EFFCONV_CHECK_CPU(t) TORCH_CHECK((t).device().is_cpu(), #t " must be a CPU tensor, got ", (t).device())
#define EFFCONV_CHECK_CUDA(t) TORCH_CHECK((t).device().is_cuda(), #t " must be a CUDA tensor, got ", (t).device())
#define EFFCONV_CHECK_DIM(t, d) \
  TORCH_CHECK((t).dim() == (d), #t " must be ", d, "-D, got ", (t).dim(), "-D tensor of size ", (t).sizes())
#define EFFCONV_CHECK_SAME_DTYPE(a, b)                                                                    \
  TORCH_CHECK((a).scalar_type() == (b).scalar_type(), "expected " #b " to have dtype ", (a).scalar_type(), \
              " (like " #a "), got ", (b).scalar_type())
#define EFFCONV_CHECK_SIZES(t, ...)                                                                       \
  TORCH_CHECK((t).sizes() == at::IntArrayRef({__VA_ARGS__}), "expected " #t " of size ",                \
              at::IntArrayRef({__VA_ARGS__}), ", got ", (t).sizes())
