// effconv::epilogue on CUDA: y = act((x + bias[c]) * scale[c] + shift[c]) as
// one memory-bound pass, in fp32 registers whatever the storage dtype. The
// activation is the shared __host__ __device__ definition the CPU kernels
// and tests use (effconv/epilogue.h).
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "effconv/checks.h"
#include "effconv/epilogue.h"
#include "kernels.h"

namespace effconv {
namespace cuda {
namespace {

struct EpilogueParams {
  const float* bias;
  const float* scale;
  const float* shift;
  int64_t channels;
  int64_t inner;  // elements per channel run: 1 for channels_last, H*W for NCHW
  int64_t numel;
  Activation act;
};

template <typename scalar_t>
__global__ void epilogue_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ y, EpilogueParams p) {
  const int64_t step = int64_t(blockDim.x) * gridDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < p.numel; i += step) {
    const int64_t c = (i / p.inner) % p.channels;
    float z = static_cast<float>(x[i]);
    if (p.bias) z += p.bias[c];
    if (p.scale) z *= p.scale[c];
    if (p.shift) z += p.shift[c];
    y[i] = static_cast<scalar_t>(activation_forward<float>(z, p.act));
  }
}

const float* channel_vector(const c10::optional<at::Tensor>& v, at::Tensor& keep) {
  if (!v.has_value() || !v->defined()) return nullptr;
  keep = v->to(at::kFloat).contiguous();
  return keep.data_ptr<float>();
}

}  // namespace

void epilogue(const at::Tensor& input, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
              const c10::optional<at::Tensor>& shift, int64_t activation, at::Tensor& out) {
  EFFCONV_CHECK_CUDA(input);
  TORCH_CHECK(input.dim() >= 2, "expected input with a channel dimension (N, C, ...), got size ", input.sizes());
  TORCH_CHECK(out.sizes() == input.sizes(), "expected out of size ", input.sizes(), ", got ", out.sizes());
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "unknown activation code ", activation);
  if (input.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(input.device());
  const bool channels_last = input.dim() == 4 && out.is_contiguous(at::MemoryFormat::ChannelsLast) && !out.is_contiguous();
  const at::Tensor x = channels_last ? input.contiguous(at::MemoryFormat::ChannelsLast) : input.contiguous();
  at::Tensor y = (channels_last || out.is_contiguous()) && out.scalar_type() == input.scalar_type()
                     ? out
                     : at::empty_like(x);
  at::Tensor b, s, h;
  EpilogueParams p;
  p.bias = channel_vector(bias, b);
  p.scale = channel_vector(scale, s);
  p.shift = channel_vector(shift, h);
  p.channels = input.size(1);
  p.inner = channels_last ? 1 : input.numel() / (input.size(0) * input.size(1));
  p.numel = input.numel();
  p.act = static_cast<Activation>(activation);
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((p.numel + threads - 1) / threads, 65535L * 8);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "effconv_epilogue_cuda", [&] {
    epilogue_kernel<scalar_t><<<blocks, threads, 0, stream>>>(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), p);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (!y.is_same(out)) out.copy_(y);
}

}  // namespace cuda
}  // namespace effconv
