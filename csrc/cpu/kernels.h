// Torch-facing CPU kernels. Forward kernels optionally accumulate batch
// statistics of their output (stats: float64 [2, K], sum and sum of squares
// per channel) for training-mode BatchNorm. Each writes into caller-allocated outputs: the
// Python op layer owns allocation (layout rule, debug poisoning) and
// argument validation; these re-check what memory safety depends on.
#pragma once
#include <ATen/ATen.h>

#include <vector>

namespace effconv {
namespace cpu {

void conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                    int64_t activation, at::Tensor& out, const c10::optional<at::Tensor>& stats = c10::nullopt);

// max_pool2d(conv2d_forward(...)) without writing the conv's output: on the
// implicit-GEMM path each thread pools bands of conv rows from an L2-sized
// buffer (Winograd and grouped-vector convs: the two kernels in turn). `out`
// is (N, K, pooled H, pooled W), any layout.
void conv2d_max_pool2d_forward(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                               const c10::optional<at::Tensor>& shift, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t activation,
                               at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride,
                               at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, bool ceil_mode,
                               at::Tensor& out);

// Whether the forward of a conv of this shape runs as Winograd (F(2x2, 3x3)
// or F(4x4, 3x3), see winograd_tile; conv2d_kernel.cpp; NCHW outputs through
// a channels_last copy; grad_input does when the transposed shape K -> C
// qualifies and padding <= 2): 3x3, stride 1, dilation 1, one group, at
// least kWinogradMinIn input and kWinogradMinOut output channels (below them
// F(2x2)'s transforms cost more than its 2.25x fewer multiply-adds save:
// 16->16 ran 0.8x, 32->16 and 16->32 1.06-1.09x of the direct kernel on
// Zen 5). EFFCONV_CPU_WINOGRAD=0 or set_winograd(false) turns it off
// (set_winograd returns the previous setting).
// A call also needs at least C * K / kWinogradWeightPerTile 2x2 output
// tiles (see use_winograd in conv2d_kernel.cpp).
constexpr int64_t kWinogradMinIn = 16, kWinogradMinOut = 32, kWinogradWeightPerTile = 4096;
bool winograd_shape(int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w, int64_t dil_h,
                    int64_t dil_w, int64_t groups);
// The same for grad_input of a conv of this shape: its transposed conv
// (K -> C channels, padding 2 - pad) qualifies.
bool winograd_grad_input_shape(int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                               int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups);
bool set_winograd(bool on);
bool winograd_enabled();
// The output tile edge M of a Winograd conv with C input channels and N
// images of P x Q outputs: 4, F(4x4, 3x3) at 2.25 multiply-adds per output
// pixel and channel pair, when C <= kWinogradF4MaxIn and its GEMMs do at
// most 0.7x F(2x2, 3x3)'s work over that output (tiles hanging past the
// edges included), or at most 0.8x with at least kWinogradF4MinTiles 4x4
// tiles in the batch; else 2. F(4x4)'s fp32 error grows with C: its worst element
// used 0.68 of the tolerance table's allowance at 256 channels, 0.95 at 512
// and 1.23 at 1024 (F(2x2): 0.11-0.18, oneDNN's direct conv 0.2-0.36).
// EFFCONV_CPU_WINOGRAD_F4=0 or set_winograd_f4(false) keeps F(2x2)
// everywhere (returns the previous setting).
constexpr int64_t kWinogradF4MaxIn = 256;
constexpr int64_t kWinogradF4MinTiles = 32;
int64_t winograd_tile(int64_t C, int64_t N, int64_t P, int64_t Q);
bool set_winograd_f4(bool on);
// Grouped convs with cg == kg run on the sliding-window row kernel
// (GConvRowArgs) when it applies; EFFCONV_CPU_GCONV_ROWS=0 or
// set_gconv_rows(false) sends them to the indirect kernels (tests compare
// the two). Returns the previous setting.
bool set_gconv_rows(bool on);
// Whether the forward and grad_input of a conv of this shape run it, for
// elements of elem_bytes on this CPU's ISA.
std::vector<bool> gconv_rows_shape(int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                                   int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups,
                                   int64_t elem_bytes);

void conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::Tensor& grad_input);

void conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::Tensor& grad_weight,
                        const c10::optional<at::Tensor>& grad_bias);

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

// grad_input and the weight (and bias) gradient in one pass over grad_output
// where both run channels_last rows; the two ops' paths otherwise.
void depthwise_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               at::Tensor& grad_input, at::Tensor& grad_weight,
                               const c10::optional<at::Tensor>& grad_bias);

// An uninitialised CPU tensor whose storage comes from effconv's cache of
// large buffers (output_pool.cpp); small sizes come from ATen's allocator.
at::Tensor empty_pooled(at::IntArrayRef sizes, at::ScalarType dtype, bool channels_last);
// Releases the idle cached buffers; returns the bytes released.
size_t empty_pool();

void bn_act_backward(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& mean, const at::Tensor& invstd,
                     const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
                     int64_t activation, at::Tensor& grad_z, at::Tensor& grad_gamma, at::Tensor& grad_beta);

// Max pooling (F.max_pool2d without indices); the backward recomputes each
// window's argmax from the input.
void max_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, at::Tensor& out);
void max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                         at::Tensor& grad_input);

void epilogue(const at::Tensor& input, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
              const c10::optional<at::Tensor>& shift, int64_t activation, at::Tensor& out);

// Deformable convolution (torchvision.ops.deform_conv2d semantics; mask may
// be undefined). The backward writes whichever gradients are defined.
void deform_conv2d_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& out);
void deform_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation,
                            const c10::optional<at::Tensor>& grad_input, const c10::optional<at::Tensor>& grad_offset,
                            const c10::optional<at::Tensor>& grad_weight, const c10::optional<at::Tensor>& grad_mask,
                            const c10::optional<at::Tensor>& grad_bias);
}  // namespace cpu
}  // namespace effconv
