// effconv::depthwise_conv2d on CUDA, hand-written.
//
// Fast path (channel multiplier 1, channels_last, C a multiple of the
// 16-byte vector, kernels up to 7x7): a block owns one output row, a run of
// BQ * TQ output columns and BC * VEC channels. It stages the input halo of
// that tile (R input rows x the columns the taps reach x its channels) in
// shared memory with 16-byte loads, zero-filled where the taps fall in the
// padding. Each thread then computes TQ neighbouring outputs of VEC
// channels: with stride 1 it keeps the TQ + S - 1 input vectors of a kernel
// row in registers and reuses them across the S taps.
// grad_input with stride 1 is that same kernel on the flipped weights.
// Everything else (multipliers, strided grad_input, large kernels, other
// layouts) runs a direct one-thread-per-output kernel.
// grad_weight: one block per (channel block, tap) reduces over all pixels
// and combines its threads in a fixed-order shared-memory tree: no atomics,
// bitwise reproducible.
//
// Index, border and stride math is the __host__ __device__ code of
// effconv/conv2d_shape.h, which the CPU kernels (and so the CPU tests) run too.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "effconv/checks.h"
#include "effconv/conv2d_shape.h"
#include "effconv/epilogue.h"
#include "effconv/shapes.h"
#include "kernels.h"

namespace effconv {
namespace cuda {
namespace {

constexpr int kMaxK = 7;   // fast path: kernels up to 7x7
constexpr int kTQ = 4;     // outputs per thread along W
constexpr int kBQ = 8;     // thread columns per block
constexpr int kBC = 16;    // channel vectors per block (threadIdx.x)

struct DwParams {
  Conv2dShape s;
  int64_t mult;
  // Output element (n, k, p, q) at y + n*y_n + k*y_k + p*y_p + q*y_q; same for x.
  int64_t x_n, x_c, x_h, x_w, y_n, y_k, y_p, y_q;
  const float* bias;
  const float* scale;
  const float* shift;
  Activation act;
  // Training-mode BatchNorm statistics (fast path): fp32 [2][stats_rows][K],
  // one row per block (sum, then sum of squares of the outputs it wrote).
  float* stats;
  int64_t stats_rows;
};

template <typename T, int VEC>
struct alignas(16) Vec {
  T v[VEC];
};

__device__ __forceinline__ float epilogue(float z, const DwParams& p, int64_t k) {
  if (p.bias) z += p.bias[k];
  if (p.scale) z *= p.scale[k];
  if (p.shift) z += p.shift[k];
  return activation_forward<float>(z, p.act);
}

// -------------------------------------------------------------------------
// Fast path. grid: (column tiles, N * P, channel tiles); block: (kBC, kBQ).
// x is NHWC contiguous (C channels), w is [R*S][C] (tap-major), y NHWC.
template <typename T, int VEC, bool STATS>
__global__ void __launch_bounds__(kBC* kBQ) depthwise_nhwc_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                                   T* __restrict__ y, DwParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* tile = reinterpret_cast<T*>(smem_raw);
  const Conv2dShape& s = p.s;
  const int64_t n = blockIdx.y / s.P, op = blockIdx.y % s.P;
  const int64_t q_base = int64_t(blockIdx.x) * kBQ * kTQ;
  const int64_t c_base = int64_t(blockIdx.z) * kBC * VEC;
  const int64_t left = (s.C - c_base) / VEC;
  const int cvecs = int(left < kBC ? left : kBC);
  // Halo columns: from the first tile output's first tap to the last one's last tap.
  const int64_t iw0 = conv_in_coord(q_base, 0, s.stride_w, s.pad_w, s.dil_w);
  const int cols = int((kBQ * kTQ - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1);
  const int tile_row = cols * kBC;  // in vectors
  using V = Vec<T, VEC>;
  V* tv = reinterpret_cast<V*>(tile);
  const int tid = threadIdx.y * kBC + threadIdx.x;
  for (int i = tid; i < s.R * tile_row; i += kBC * kBQ) {
    const int r = i / tile_row, rem = i % tile_row, col = rem / kBC, cv = rem % kBC;
    const int64_t ih = conv_in_coord(op, r, s.stride_h, s.pad_h, s.dil_h), iw = iw0 + col;
    V val;
#pragma unroll
    for (int e = 0; e < VEC; ++e) val.v[e] = T(0);
    if (cv < cvecs && ih >= 0 && ih < s.H && iw >= 0 && iw < s.W)
      val = *reinterpret_cast<const V*>(x + ((n * s.H + ih) * s.W + iw) * s.C + c_base + cv * VEC);
    tv[i] = val;
  }
  __syncthreads();
  const bool active = threadIdx.x < cvecs;
  if (!STATS && !active) return;  // with STATS every thread reaches the block reduction
  const int64_t c0 = c_base + threadIdx.x * VEC;
  const int64_t q0 = q_base + threadIdx.y * kTQ;
  float acc[kTQ][VEC];
#pragma unroll
  for (int j = 0; j < kTQ; ++j)
#pragma unroll
    for (int e = 0; e < VEC; ++e) acc[j][e] = 0.f;
  const int col0 = int(threadIdx.y * kTQ * s.stride_w);
  for (int r = 0; r < (active ? s.R : 0); ++r) {
    const V* trow = tv + r * tile_row + threadIdx.x;
    if (s.stride_w == 1 && s.dil_w == 1) {
      // Register halo: the kTQ + S - 1 inputs of this row serve all S taps.
      float xr[kTQ + kMaxK - 1][VEC];
#pragma unroll
      for (int i = 0; i < kTQ + kMaxK - 1; ++i) {
        if (i < kTQ + s.S - 1) {
          const V v = trow[(col0 + i) * kBC];
#pragma unroll
          for (int e = 0; e < VEC; ++e) xr[i][e] = float(v.v[e]);
        }
      }
#pragma unroll
      for (int t = 0; t < kMaxK; ++t) {
        if (t < s.S) {
          const V wv = *reinterpret_cast<const V*>(w + (r * s.S + t) * s.C + c0);
#pragma unroll
          for (int j = 0; j < kTQ; ++j)
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[j][e] += xr[j + t][e] * float(wv.v[e]);
        }
      }
    } else {
      for (int t = 0; t < s.S; ++t) {
        const V wv = *reinterpret_cast<const V*>(w + (r * s.S + t) * s.C + c0);
#pragma unroll
        for (int j = 0; j < kTQ; ++j) {
          const V xv = trow[(col0 + j * s.stride_w + t * s.dil_w) * kBC];
#pragma unroll
          for (int e = 0; e < VEC; ++e) acc[j][e] += float(xv.v[e]) * float(wv.v[e]);
        }
      }
    }
  }
  float sum[VEC], sq[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) sum[e] = sq[e] = 0.f;
#pragma unroll
  for (int j = 0; j < kTQ; ++j) {
    const int64_t q = q0 + j;
    if (!active || q >= s.Q) break;
    V out;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float v = epilogue(acc[j][e], p, c0 + e);
      out.v[e] = T(v);
      if (STATS) sum[e] += v, sq[e] += v * v;
    }
    *reinterpret_cast<V*>(y + ((n * s.P + op) * s.Q + q) * s.K + c0) = out;
  }
  if constexpr (STATS) {
    // Fixed-order reduction over the block's kBQ thread rows, in the smem
    // the halo tile used (the launcher sizes it for both).
    __syncthreads();
    float* red = reinterpret_cast<float*>(smem_raw);  // [2][kBQ][kBC * VEC]
    constexpr int kRow = kBC * VEC;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      red[threadIdx.y * kRow + threadIdx.x * VEC + e] = sum[e];
      red[(kBQ + threadIdx.y) * kRow + threadIdx.x * VEC + e] = sq[e];
    }
    __syncthreads();
    if (threadIdx.y == 0 && active) {
      const int64_t row = int64_t(blockIdx.y) * gridDim.x + blockIdx.x;
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        float a = 0.f, b = 0.f;
        for (int i = 0; i < kBQ; ++i) {
          a += red[i * kRow + threadIdx.x * VEC + e];
          b += red[(kBQ + i) * kRow + threadIdx.x * VEC + e];
        }
        p.stats[row * s.K + c0 + e] = a;
        p.stats[(p.stats_rows + row) * s.K + c0 + e] = b;
      }
    }
  }
}

// -------------------------------------------------------------------------
// Direct paths: one thread per output element, any layout (strides), any
// multiplier and kernel size.
template <typename T>
__global__ void depthwise_direct_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                        DwParams p) {
  const Conv2dShape& s = p.s;
  const int64_t total = s.N * s.K * s.P * s.Q;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    // channel fastest: neighbouring threads read neighbouring channels of channels_last tensors
    const int64_t k = i % s.K, pix = i / s.K, q = pix % s.Q, op = (pix / s.Q) % s.P, n = pix / (s.Q * s.P);
    const int64_t ci = depthwise_in_channel(k, p.mult);
    float acc = 0.f;
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t ih = conv_in_coord(op, r, s.stride_h, s.pad_h, s.dil_h);
      if (ih < 0 || ih >= s.H) continue;
      for (int64_t t = 0; t < s.S; ++t) {
        const int64_t iw = conv_in_coord(q, t, s.stride_w, s.pad_w, s.dil_w);
        if (iw < 0 || iw >= s.W) continue;
        acc += float(x[n * p.x_n + ci * p.x_c + ih * p.x_h + iw * p.x_w]) * float(w[(k * s.R + r) * s.S + t]);
      }
    }
    y[n * p.y_n + k * p.y_k + op * p.y_p + q * p.y_q] = T(epilogue(acc, p, k));
  }
}

// grad_input: dx (n, c, h, w) sums dy (n, k, p, q) over the taps that read it
// and the multiplier's output channels. Here x_* strides describe dx and y_* dy.
template <typename T>
__global__ void depthwise_grad_input_direct_kernel(const T* __restrict__ dy, const T* __restrict__ w,
                                                   T* __restrict__ dx, DwParams p) {
  const Conv2dShape& s = p.s;
  const int64_t total = s.N * s.C * s.H * s.W;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(blockDim.x) * gridDim.x) {
    const int64_t c = i % s.C, pix = i / s.C, iw = pix % s.W, ih = (pix / s.W) % s.H, n = pix / (s.W * s.H);
    float acc = 0.f;
    for (int64_t r = 0; r < s.R; ++r) {
      const int64_t op = conv_out_coord(ih, r, s.stride_h, s.pad_h, s.dil_h, s.P);
      if (op < 0) continue;
      for (int64_t t = 0; t < s.S; ++t) {
        const int64_t q = conv_out_coord(iw, t, s.stride_w, s.pad_w, s.dil_w, s.Q);
        if (q < 0) continue;
        for (int64_t j = 0; j < p.mult; ++j) {
          const int64_t k = c * p.mult + j;
          acc += float(dy[n * p.y_n + k * p.y_k + op * p.y_p + q * p.y_q]) * float(w[(k * s.R + r) * s.S + t]);
        }
      }
    }
    dx[n * p.x_n + c * p.x_c + ih * p.x_h + iw * p.x_w] = T(acc);
  }
}

// grad_weight: block (channel block of 32, tap); threadIdx.y strides over
// pixels; fixed-order shared-memory tree reduction. Output dw [K, R*S] fp32,
// db [K] fp32 (written by tap-0 blocks).
constexpr int kWgC = 32, kWgP = 8;

template <typename T>
__global__ void __launch_bounds__(kWgC* kWgP) depthwise_grad_weight_kernel(const T* __restrict__ dy,
                                                                            const T* __restrict__ x,
                                                                            float* __restrict__ dw,
                                                                            float* __restrict__ db, DwParams p) {
  __shared__ float red[kWgP][kWgC];
  __shared__ float redb[kWgP][kWgC];
  const Conv2dShape& s = p.s;
  const int64_t k = int64_t(blockIdx.x) * kWgC + threadIdx.x;
  const int64_t tap = blockIdx.y, r = tap / s.S, t = tap % s.S;
  const bool valid_k = k < s.K;
  const int64_t ci = depthwise_in_channel(k, p.mult);
  float acc = 0.f, accb = 0.f;
  const int64_t pixels = s.N * s.P * s.Q;
  for (int64_t m = threadIdx.y; valid_k && m < pixels; m += kWgP) {
    const int64_t q = m % s.Q, op = (m / s.Q) % s.P, n = m / (s.Q * s.P);
    const float g = float(dy[n * p.y_n + k * p.y_k + op * p.y_p + q * p.y_q]);
    accb += g;
    const int64_t ih = conv_in_coord(op, r, s.stride_h, s.pad_h, s.dil_h);
    const int64_t iw = conv_in_coord(q, t, s.stride_w, s.pad_w, s.dil_w);
    if (ih >= 0 && ih < s.H && iw >= 0 && iw < s.W) acc += g * float(x[n * p.x_n + ci * p.x_c + ih * p.x_h + iw * p.x_w]);
  }
  red[threadIdx.y][threadIdx.x] = acc;
  redb[threadIdx.y][threadIdx.x] = accb;
  __syncthreads();
  for (int half = kWgP / 2; half > 0; half /= 2) {
    if (threadIdx.y < half) {
      red[threadIdx.y][threadIdx.x] += red[threadIdx.y + half][threadIdx.x];
      redb[threadIdx.y][threadIdx.x] += redb[threadIdx.y + half][threadIdx.x];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && valid_k) {
    dw[k * s.R * s.S + tap] = red[0][threadIdx.x];
    if (tap == 0) db[k] = redb[0][threadIdx.x];
  }
}

// -------------------------------------------------------------------------
const float* channel_vector(const c10::optional<at::Tensor>& v, at::Tensor& keep) {
  if (!v.has_value() || !v->defined()) return nullptr;
  keep = v->to(at::kFloat).contiguous();
  return keep.data_ptr<float>();
}

DwParams make_params(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& y, at::IntArrayRef stride,
                     at::IntArrayRef padding, at::IntArrayRef dilation) {
  DwParams p{};
  p.s = make_conv2d_shape(x, weight, stride, padding, dilation, x.size(1));
  const Conv2dShape& s = p.s;
  EFFCONV_CHECK_SIZES(y, s.N, s.K, s.P, s.Q);
  p.mult = s.K / s.C;
  p.x_n = x.stride(0), p.x_c = x.stride(1), p.x_h = x.stride(2), p.x_w = x.stride(3);
  p.y_n = y.stride(0), p.y_k = y.stride(1), p.y_p = y.stride(2), p.y_q = y.stride(3);
  return p;
}

int64_t direct_blocks(int64_t total) { return std::min<int64_t>((total + 255) / 256, 65535LL * 16); }

void check_inputs(const at::Tensor& a, const at::Tensor& b) {
  EFFCONV_CHECK_CUDA(a);
  EFFCONV_CHECK_CUDA(b);
  EFFCONV_CHECK_SAME_DTYPE(a, b);
  EFFCONV_CHECK_DIM(a, 4);
  EFFCONV_CHECK_DIM(b, 4);
}

bool channels_last(const at::Tensor& t) { return t.is_contiguous(at::MemoryFormat::ChannelsLast); }

// Runs the shared-memory fast path when it applies; returns false otherwise.
// With stats (fp32 data only), the kernel also reduces the outputs' per-channel
// sum and sum of squares into a [2][blocks][K] workspace, summed here in float64.
template <typename T>
bool launch_fast(const at::Tensor& x, const at::Tensor& w_tap_major, at::Tensor& y, DwParams p,
                 at::Tensor* stats = nullptr) {
  constexpr int VEC = 16 / sizeof(T);
  const Conv2dShape& s = p.s;
  if (p.mult != 1 || s.C % VEC != 0 || s.R > kMaxK || s.S > kMaxK || !channels_last(x) || !channels_last(y) ||
      reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 || reinterpret_cast<uintptr_t>(y.data_ptr()) % 16)
    return false;
  const int cols = int((kBQ * kTQ - 1) * s.stride_w + (s.S - 1) * s.dil_w + 1);
  size_t smem = size_t(s.R) * cols * kBC * 16;
  if (smem > 48 * 1024) return false;
  const dim3 block(kBC, kBQ);
  const dim3 grid(unsigned((s.Q + kBQ * kTQ - 1) / (kBQ * kTQ)), unsigned(s.N * s.P),
                  unsigned((s.C + kBC * VEC - 1) / (kBC * VEC)));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (stats) {
    // fp32 block partials would round fp64 data: fp64 takes the direct path
    // and the separate statistics pass (and the STATS kernel is not built for it).
    if constexpr (std::is_same_v<T, double>) {
      return false;
    } else {
      smem = std::max(smem, size_t(2) * kBQ * kBC * VEC * sizeof(float));
      p.stats_rows = int64_t(grid.x) * grid.y;
      at::Tensor ws = at::empty({2, p.stats_rows, s.K}, x.options().dtype(at::kFloat));
      p.stats = ws.data_ptr<float>();
      depthwise_nhwc_kernel<T, VEC, true><<<grid, block, smem, stream>>>(x.data_ptr<T>(), w_tap_major.data_ptr<T>(),
                                                                          y.data_ptr<T>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      stats->copy_(ws.sum(1, /*keepdim=*/false, at::kDouble));
      return true;
    }
  }
  depthwise_nhwc_kernel<T, VEC, false><<<grid, block, smem, stream>>>(x.data_ptr<T>(), w_tap_major.data_ptr<T>(),
                                                                       y.data_ptr<T>(), p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

}  // namespace

void depthwise_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t activation, at::Tensor& out,
                              const c10::optional<at::Tensor>& stats) {
  check_inputs(input, weight);
  TORCH_CHECK(weight.size(1) == 1 && weight.size(0) % input.size(1) == 0,
              "expected depthwise weight of size [C * multiplier, 1, kH, kW], got ", weight.sizes());
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "unknown activation code ", activation);
  if (stats.has_value())
    TORCH_CHECK(stats->scalar_type() == at::kDouble && stats->numel() == 2 * weight.size(0),
                "expected float64 stats with ", 2 * weight.size(0), " elements");
  if (out.numel() == 0) {
    if (stats.has_value()) const_cast<at::Tensor&>(*stats).zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(input.device());
  at::Tensor b, sc, sh;
  DwParams p = make_params(input, weight, out, stride, padding, dilation);
  p.bias = channel_vector(bias, b);
  p.scale = channel_vector(scale, sc);
  p.shift = channel_vector(shift, sh);
  p.act = static_cast<Activation>(activation);
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "effconv_depthwise_cuda", [&] {
    const at::Tensor w_tap_major = w.view({w.size(0), -1}).t().contiguous();  // [R*S][C]
    at::Tensor st = stats.has_value() ? stats->view({2, -1}) : at::Tensor();
    if (!launch_fast<scalar_t>(input, w_tap_major, out, p, stats.has_value() ? &st : nullptr)) {
      const int64_t total = p.s.N * p.s.K * p.s.P * p.s.Q;
      depthwise_direct_kernel<scalar_t><<<direct_blocks(total), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
          input.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      // One thread per output has nothing to reduce in registers: a separate
      // deterministic pass over the output.
      if (stats.has_value()) channel_stats(out, st);
    }
  });
}

void depthwise_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& grad_input) {
  check_inputs(grad_output, weight);
  if (grad_input.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(grad_output.device());
  const int64_t R = weight.size(2), S = weight.size(3);
  const int64_t mult = weight.size(0) / grad_input.size(1);
  // Stride 1: grad_input is the forward on the flipped kernel with padding
  // (k - 1) * dil - pad, when that padding is non-negative.
  const int64_t pad_h = (R - 1) * dilation[0] - padding[0], pad_w = (S - 1) * dilation[1] - padding[1];
  if (mult == 1 && stride[0] == 1 && stride[1] == 1 && pad_h >= 0 && pad_w >= 0) {
    const at::Tensor wf = weight.flip({2, 3}).contiguous();
    depthwise_conv2d_forward(grad_output, wf, c10::nullopt, c10::nullopt, c10::nullopt, stride, {pad_h, pad_w},
                             dilation, 0, grad_input, c10::nullopt);
    return;
  }
  DwParams p = make_params(grad_input, weight, grad_output, stride, padding, dilation);
  const at::Tensor w = weight.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "effconv_depthwise_gi_cuda", [&] {
    const int64_t total = p.s.N * p.s.C * p.s.H * p.s.W;
    depthwise_grad_input_direct_kernel<scalar_t><<<direct_blocks(total), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_output.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void depthwise_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& grad_weight,
                                  const c10::optional<at::Tensor>& grad_bias) {
  check_inputs(grad_output, input);
  if (grad_weight.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(input.device());
  DwParams p = make_params(input, grad_weight, grad_output, stride, padding, dilation);
  const int64_t K = grad_weight.size(0), RS = grad_weight.size(2) * grad_weight.size(3);
  at::Tensor dw = at::empty({K, RS}, input.options().dtype(at::kFloat));
  at::Tensor db = at::empty({K}, input.options().dtype(at::kFloat));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "effconv_depthwise_gw_cuda", [&] {
    const dim3 grid(unsigned((K + kWgC - 1) / kWgC), unsigned(RS));
    depthwise_grad_weight_kernel<scalar_t><<<grid, dim3(kWgC, kWgP), 0, at::cuda::getCurrentCUDAStream()>>>(
        grad_output.data_ptr<scalar_t>(), input.data_ptr<scalar_t>(), dw.data_ptr<float>(), db.data_ptr<float>(), p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  grad_weight.copy_(dw.view(grad_weight.sizes()));
  if (grad_bias.has_value()) const_cast<at::Tensor&>(*grad_bias).copy_(db);
}

}  // namespace cuda
}  // namespace effconv
