// Torch-facing CUDA C++ kernels (compiled only in CUDA builds).
#pragma once
#include <ATen/ATen.h>

namespace effconv {
namespace cuda {

void depthwise_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t activation, at::Tensor& out);

void depthwise_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& grad_input);

void depthwise_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& grad_weight,
                                  const c10::optional<at::Tensor>& grad_bias);

void epilogue(const at::Tensor& input, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
              const c10::optional<at::Tensor>& shift, int64_t activation, at::Tensor& out);

}  // namespace cuda
}  // namespace effconv
