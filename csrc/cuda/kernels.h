// Torch-facing CUDA C++ kernels (compiled only in CUDA builds).
#pragma once
#include <ATen/ATen.h>

namespace effconv {
namespace cuda {

void depthwise_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t activation, at::Tensor& out,
                              const c10::optional<at::Tensor>& stats = c10::nullopt);

void depthwise_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& grad_input);

void depthwise_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& grad_weight,
                                  const c10::optional<at::Tensor>& grad_bias);

void epilogue(const at::Tensor& input, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
              const c10::optional<at::Tensor>& shift, int64_t activation, at::Tensor& out);

// Per-channel sum and sum of squares of y (stats: float64 [2, C]).
void channel_stats(const at::Tensor& y, at::Tensor& stats);

// Training-mode BatchNorm + activation backward (see effconv/epilogue.h).
void bn_act_backward(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& mean, const at::Tensor& invstd,
                     const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
                     int64_t activation, at::Tensor& grad_z, at::Tensor& grad_gamma, at::Tensor& grad_beta);

// Deformable convolution (torchvision.ops.deform_conv2d semantics). The
// backward writes the gradients that are defined; `deterministic` selects the
// fixed-order (sort + gather) input gradient instead of atomics.
void deform_conv2d_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& out);
void deform_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation,
                            const c10::optional<at::Tensor>& grad_input, const c10::optional<at::Tensor>& grad_offset,
                            const c10::optional<at::Tensor>& grad_weight, const c10::optional<at::Tensor>& grad_mask,
                            const c10::optional<at::Tensor>& grad_bias, bool deterministic);

}  // namespace cuda
}  // namespace effconv
