// Training-mode BatchNorm on CUDA, for the convolutions whose GPU kernel is
// CUDA C++ (depthwise):
//
//   channel_stats    per-channel sum and sum of squares of a conv output, for
//                    the conv kernels that cannot accumulate them in their own
//                    epilogue (the direct paths)
//   bn_act_backward  the fused BatchNorm + activation backward: one
//                    reduction pass (sum g, sum g * xhat), the shared
//                    coefficient formula, one elementwise pass
//
// Reductions are deterministic: each block reduces its share of pixels in a
// fixed-order shared-memory tree and writes one row of a [chunks, C]
// workspace, which is then summed in float64. No atomics.
//
// Layouts: channels_last (threads along channels, coalesced) and NCHW
// (threads along pixels of one channel plane, coalesced).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "effconv/checks.h"
#include "effconv/epilogue.h"
#include "kernels.h"

namespace effconv {
namespace cuda {
namespace {

constexpr int kRedC = 32, kRedP = 8;  // channels_last reduction block: channels x pixel rows
constexpr int kRedThreads = 256;      // NCHW reduction block: pixels of one plane
constexpr int kMaxChunks = 1024;      // pixel chunks (grid.y): enough blocks to fill a GPU

struct Layout {
  int64_t N, C, HW;
  bool channels_last;
  EFFCONV_HD_MEMBER int64_t offset(int64_t m, int64_t c) const {  // m: pixel index n * HW + hw
    return channels_last ? m * C + c : ((m / HW) * C + c) * HW + m % HW;
  }
};

// Element terms summed per channel.
template <typename T, typename A>
struct StatsTerms {
  const T* y;
  __device__ void operator()(int64_t off, int64_t c, A& a, A& b) const {
    const A v = A(y[off]);
    a += v;
    b += v * v;
  }
};

template <typename T, typename A>
struct BnGradTerms {
  const T* dy;
  const T* z;
  const A* mean;
  const A* invstd;
  const A* gamma;
  const A* beta;
  Activation act;
  __device__ void operator()(int64_t off, int64_t c, A& a, A& b) const {
    const A xhat = (A(z[off]) - mean[c]) * invstd[c];
    const A g = A(dy[off]) * activation_backward<A>(xhat * gamma[c] + beta[c], act);
    a += g;
    b += g * xhat;
  }
};

// ws: [2][gridDim.y][C] (sums, then the second terms).
template <typename A, typename Terms>
__global__ void __launch_bounds__(kRedC* kRedP) reduce_nhwc_kernel(Terms terms, Layout l, A* __restrict__ ws) {
  __shared__ A red[2][kRedP][kRedC];
  const int64_t c = int64_t(blockIdx.x) * kRedC + threadIdx.x;
  const int64_t M = l.N * l.HW;
  A a = A(0), b = A(0);
  if (c < l.C)
    for (int64_t m = int64_t(blockIdx.y) * kRedP + threadIdx.y; m < M; m += int64_t(gridDim.y) * kRedP)
      terms(l.offset(m, c), c, a, b);
  red[0][threadIdx.y][threadIdx.x] = a;
  red[1][threadIdx.y][threadIdx.x] = b;
  __syncthreads();
  for (int half = kRedP / 2; half > 0; half /= 2) {
    if (threadIdx.y < half) {
      red[0][threadIdx.y][threadIdx.x] += red[0][threadIdx.y + half][threadIdx.x];
      red[1][threadIdx.y][threadIdx.x] += red[1][threadIdx.y + half][threadIdx.x];
    }
    __syncthreads();
  }
  if (threadIdx.y == 0 && c < l.C) {
    ws[int64_t(blockIdx.y) * l.C + c] = red[0][0][threadIdx.x];
    ws[(int64_t(gridDim.y) + blockIdx.y) * l.C + c] = red[1][0][threadIdx.x];
  }
}

template <typename A, typename Terms>
__global__ void __launch_bounds__(kRedThreads) reduce_nchw_kernel(Terms terms, Layout l, A* __restrict__ ws) {
  __shared__ A red[2][kRedThreads];
  const int64_t c = blockIdx.x;
  const int64_t M = l.N * l.HW;
  A a = A(0), b = A(0);
  for (int64_t m = int64_t(blockIdx.y) * kRedThreads + threadIdx.x; m < M; m += int64_t(gridDim.y) * kRedThreads)
    terms(l.offset(m, c), c, a, b);
  red[0][threadIdx.x] = a;
  red[1][threadIdx.x] = b;
  __syncthreads();
  for (int half = kRedThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      red[0][threadIdx.x] += red[0][threadIdx.x + half];
      red[1][threadIdx.x] += red[1][threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    ws[int64_t(blockIdx.y) * l.C + c] = red[0][0];
    ws[(int64_t(gridDim.y) + blockIdx.y) * l.C + c] = red[1][0];
  }
}

// Runs the reduction of `terms` and returns float64 [2, C].
template <typename A, typename Terms>
at::Tensor reduce_channels(const Terms& terms, const Layout& l, const at::TensorOptions& opts) {
  const int64_t M = l.N * l.HW;
  const int64_t per_block = l.channels_last ? kRedP : kRedThreads;
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>(kMaxChunks, (M + per_block * 16 - 1) / (per_block * 16)));
  at::Tensor ws = at::empty({2, chunks, l.C}, opts.dtype(c10::CppTypeToScalarType<A>::value));
  auto stream = at::cuda::getCurrentCUDAStream();
  if (l.channels_last) {
    const dim3 grid(unsigned((l.C + kRedC - 1) / kRedC), unsigned(chunks));
    reduce_nhwc_kernel<A, Terms><<<grid, dim3(kRedC, kRedP), 0, stream>>>(terms, l, ws.data_ptr<A>());
  } else {
    const dim3 grid(unsigned(l.C), unsigned(chunks));
    reduce_nchw_kernel<A, Terms><<<grid, kRedThreads, 0, stream>>>(terms, l, ws.data_ptr<A>());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return ws.sum(1, /*keepdim=*/false, at::kDouble);
}

template <typename A>
__global__ void coefficients_kernel(const double* __restrict__ sums, const A* __restrict__ gamma,
                                    const A* __restrict__ invstd, int64_t C, int64_t M, A* __restrict__ k) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  const BnGradCoefficients co = bn_grad_coefficients(double(gamma[c]), double(invstd[c]), sums[c], sums[C + c], M);
  k[c] = A(co.k1);
  k[C + c] = A(co.k2);
  k[2 * C + c] = A(co.k3);
}

template <typename T, typename A>
__global__ void bn_act_apply_kernel(BnGradTerms<T, A> t, Layout l, const A* __restrict__ k, T* __restrict__ dz) {
  const int64_t numel = l.N * l.C * l.HW;
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < numel; i += step) {
    const int64_t c = l.channels_last ? i % l.C : (i / l.HW) % l.C;
    const A xhat = (A(t.z[i]) - t.mean[c]) * t.invstd[c];
    const A g = A(t.dy[i]) * activation_backward<A>(xhat * t.gamma[c] + t.beta[c], t.act);
    dz[i] = T(k[c] * g + k[l.C + c] * xhat + k[2 * l.C + c]);
  }
}

Layout layout_of(const at::Tensor& t) {
  Layout l;
  l.N = t.size(0);
  l.C = t.size(1);
  l.HW = t.numel() / std::max<int64_t>(1, l.N * l.C);
  l.channels_last = t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
  return l;
}

at::Tensor dense(const at::Tensor& t, const Layout& l) {
  return l.channels_last ? t.contiguous(at::MemoryFormat::ChannelsLast) : t.contiguous();
}

template <typename A>
at::Tensor channel_values(const c10::optional<at::Tensor>& v, int64_t C, double fill, const at::Tensor& like) {
  const auto opts = like.options().dtype(c10::CppTypeToScalarType<A>::value);
  if (!v.has_value() || !v->defined()) return at::full({C}, fill, opts);
  return v->to(opts).contiguous();
}

}  // namespace

void channel_stats(const at::Tensor& y, at::Tensor& stats) {
  EFFCONV_CHECK_CUDA(y);
  TORCH_CHECK(y.dim() >= 2, "expected a tensor with a channel dimension, got size ", y.sizes());
  TORCH_CHECK(stats.scalar_type() == at::kDouble && stats.numel() == 2 * y.size(1),
              "expected float64 stats with ", 2 * y.size(1), " elements, got ", stats.scalar_type(), " with ",
              stats.numel());
  if (y.numel() == 0) {
    stats.zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(y.device());
  const Layout l = layout_of(y);
  const at::Tensor yc = dense(y, l);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "effconv_channel_stats_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    stats.copy_(reduce_channels<A>(StatsTerms<scalar_t, A>{yc.data_ptr<scalar_t>()}, l, y.options()).view_as(stats));
  });
}

void bn_act_backward(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& mean, const at::Tensor& invstd,
                     const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
                     int64_t activation, at::Tensor& grad_z, at::Tensor& grad_gamma, at::Tensor& grad_beta) {
  EFFCONV_CHECK_CUDA(grad_y);
  EFFCONV_CHECK_CUDA(z);
  TORCH_CHECK(z.dim() >= 2, "expected z with a channel dimension, got size ", z.sizes());
  TORCH_CHECK(grad_y.sizes() == z.sizes(), "expected grad_y of size ", z.sizes(), ", got ", grad_y.sizes());
  TORCH_CHECK(grad_z.sizes() == z.sizes(), "expected grad_z of size ", z.sizes(), ", got ", grad_z.sizes());
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "unknown activation code ", activation);
  const int64_t C = z.size(1);
  TORCH_CHECK(mean.numel() == C && invstd.numel() == C, "expected mean and invstd with ", C, " elements, got ",
              mean.numel(), " and ", invstd.numel());
  if (z.numel() == 0) {
    grad_gamma.zero_();
    grad_beta.zero_();
    return;
  }
  const c10::cuda::CUDAGuard guard(z.device());
  const Layout l = layout_of(z);
  const at::Tensor zc = dense(z, l), dyc = dense(grad_y, l).to(z.scalar_type());
  at::Tensor dz = dense(grad_z, l).is_same(grad_z) ? grad_z : at::empty_like(zc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "effconv_bn_act_backward_cuda", [&] {
    using A = at::opmath_type<scalar_t>;
    const at::Tensor mean_a = channel_values<A>(mean, C, 0.0, z), invstd_a = channel_values<A>(invstd, C, 1.0, z),
                     gamma_a = channel_values<A>(gamma, C, 1.0, z), beta_a = channel_values<A>(beta, C, 0.0, z);
    const BnGradTerms<scalar_t, A> terms{dyc.data_ptr<scalar_t>(), zc.data_ptr<scalar_t>(), mean_a.data_ptr<A>(),
                                         invstd_a.data_ptr<A>(), gamma_a.data_ptr<A>(), beta_a.data_ptr<A>(),
                                         static_cast<Activation>(activation)};
    const at::Tensor sums = reduce_channels<A>(terms, l, z.options());  // float64 [2, C]
    at::Tensor k = at::empty({3, C}, mean_a.options());
    auto stream = at::cuda::getCurrentCUDAStream();
    coefficients_kernel<A><<<unsigned((C + 255) / 256), 256, 0, stream>>>(
        sums.data_ptr<double>(), gamma_a.data_ptr<A>(), invstd_a.data_ptr<A>(), C, l.N * l.HW, k.data_ptr<A>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const int64_t blocks = std::min<int64_t>((z.numel() + 255) / 256, 65535LL * 8);
    bn_act_apply_kernel<scalar_t, A><<<unsigned(blocks), 256, 0, stream>>>(terms, l, k.data_ptr<A>(),
                                                                            dz.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_beta.copy_(sums[0]);
    grad_gamma.copy_(sums[1]);
  });
  if (!dz.is_same(grad_z)) grad_z.copy_(dz);
}

}  // namespace cuda
}  // namespace effconv
