// effconv::bn_act_backward on the CPU: the backward of training-mode
// BatchNorm (batch statistics) followed by an activation, fused into two
// passes over the activation-sized tensors (per-channel reductions, then the
// input gradient), instead of autograd's chain of elementwise ops.
//
//   xhat = (z - mean) * invstd,  u = xhat * gamma + beta,  g = dy * act'(u)
//   grad_beta = sum g,  grad_gamma = sum g * xhat
//   dz = gamma * invstd * (g - grad_beta / M - xhat * grad_gamma / M)
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "common.h"
#include "effconv/epilogue.h"
#include "kernels.h"
#include "ukernel/api.h"

namespace effconv {
namespace cpu {
namespace {

template <typename T>
std::vector<T> channel_values(const c10::optional<at::Tensor>& v, int64_t C, T fill) {
  std::vector<T> out(C, fill);
  if (v.has_value() && v->defined()) {
    const at::Tensor t = contiguous_as<T>(*v);
    for (int64_t c = 0; c < C; ++c) out[c] = t.data_ptr<T>()[c];
  }
  return out;
}

template <typename T>
void bn_act_backward_typed(const at::Tensor& dy, const at::Tensor& z, bool rows_mode, const at::Tensor& mean,
                           const at::Tensor& invstd, const c10::optional<at::Tensor>& gamma,
                           const c10::optional<at::Tensor>& beta, int act, at::Tensor& dz, at::Tensor& grad_gamma,
                           at::Tensor& grad_beta) {
  const IsaKernels& isa = isa_kernels();
  const int64_t C = z.size(1);
  const int64_t M = z.numel() / C;
  const std::vector<T> mean_v = channel_values<T>(mean, C, T(0)), invstd_v = channel_values<T>(invstd, C, T(1)),
                       gamma_v = channel_values<T>(gamma, C, T(1)), beta_v = channel_values<T>(beta, C, T(0));
  BnActArgs<T> args;
  args.dy = dy.data_ptr<T>();
  args.z = z.data_ptr<T>();
  args.dz = dz.data_ptr<T>();
  args.planes = !rows_mode;
  args.channels = C;
  args.rows = rows_mode ? M : z.size(0) * C;
  args.cols = z.numel() / std::max<int64_t>(args.rows, 1);
  args.mean = mean_v.data();
  args.invstd = invstd_v.data();
  args.gamma = gamma_v.data();
  args.beta = beta_v.data();
  args.act = act;

  // Pass 1: per-thread double partials, summed in thread order (deterministic).
  const int64_t threads = at::get_num_threads();
  std::vector<double> parts(threads * 2 * C, 0.0);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(args.cols, 1));
  at::parallel_for(0, args.rows, grain, [&](int64_t begin, int64_t end) {
    BnActArgs<T> part = args;
    const int64_t t = at::get_thread_num();
    part.dy += begin * args.cols;
    part.z += begin * args.cols;
    part.rows = end - begin;
    part.first_row = begin;
    part.sum_g = parts.data() + t * 2 * C;
    part.sum_gx = parts.data() + (t * 2 + 1) * C;
    isa.bnact_reduce(part);
  });
  std::vector<double> sum_g(C, 0.0), sum_gx(C, 0.0);
  for (int64_t t = 0; t < threads; ++t)
    for (int64_t c = 0; c < C; ++c) {
      sum_g[c] += parts[t * 2 * C + c];
      sum_gx[c] += parts[(t * 2 + 1) * C + c];
    }

  // Pass 2: dz = k1 * g + k2 * xhat + k3.
  std::vector<T> k1(C), k2(C), k3(C);
  for (int64_t c = 0; c < C; ++c) {
    const BnGradCoefficients k = bn_grad_coefficients(gamma_v[c], invstd_v[c], sum_g[c], sum_gx[c], M);
    k1[c] = T(k.k1);
    k2[c] = T(k.k2);
    k3[c] = T(k.k3);
  }
  args.k1 = k1.data();
  args.k2 = k2.data();
  args.k3 = k3.data();
  at::parallel_for(0, args.rows, grain, [&](int64_t begin, int64_t end) {
    BnActArgs<T> part = args;
    part.dy += begin * args.cols;
    part.z += begin * args.cols;
    part.dz += begin * args.cols;
    part.rows = end - begin;
    part.first_row = begin;
    isa.bnact_apply(part);
  });
  const at::Tensor g_t = at::tensor(sum_g, at::kDouble), gx_t = at::tensor(sum_gx, at::kDouble);
  grad_beta.copy_(g_t);
  grad_gamma.copy_(gx_t);
}

}  // namespace

void bn_act_backward(const at::Tensor& grad_y, const at::Tensor& z, const at::Tensor& mean, const at::Tensor& invstd,
                     const c10::optional<at::Tensor>& gamma, const c10::optional<at::Tensor>& beta,
                     int64_t activation, at::Tensor& grad_z, at::Tensor& grad_gamma, at::Tensor& grad_beta) {
  EFFCONV_CHECK_CPU(grad_y);
  EFFCONV_CHECK_CPU(z);
  TORCH_CHECK(z.dim() >= 2, "expected z with a channel dimension, got size ", z.sizes());
  TORCH_CHECK(grad_y.sizes() == z.sizes(), "expected grad_y of size ", z.sizes(), ", got ", grad_y.sizes());
  TORCH_CHECK(grad_z.sizes() == z.sizes(), "expected grad_z of size ", z.sizes(), ", got ", grad_z.sizes());
  const int64_t C = z.size(1);
  TORCH_CHECK(mean.numel() == C && invstd.numel() == C, "expected mean and invstd with ", C, " elements, got ",
              mean.numel(), " and ", invstd.numel());
  TORCH_CHECK(grad_gamma.numel() == C && grad_beta.numel() == C, "expected grad_gamma and grad_beta with ", C,
              " elements");
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "unknown activation code ", activation);
  const at::ScalarType ct = compute_type(z.scalar_type());
  const bool rows_mode = channels_last_rows(z);
  const auto fmt = rows_mode ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor zc = dense_as(z, ct, rows_mode), dyc = dense_as(grad_y, ct, rows_mode);
  at::Tensor dz = (grad_z.scalar_type() == ct && grad_z.is_contiguous(fmt)) ? grad_z : at::empty_like(zc, fmt);
  if (z.numel() == 0) {
    grad_gamma.zero_();
    grad_beta.zero_();
    return;
  }
  if (ct == at::kDouble)
    bn_act_backward_typed<double>(dyc, zc, rows_mode, mean, invstd, gamma, beta, int(activation), dz, grad_gamma,
                                  grad_beta);
  else
    bn_act_backward_typed<float>(dyc, zc, rows_mode, mean, invstd, gamma, beta, int(activation), dz, grad_gamma,
                                 grad_beta);
  if (!dz.is_same(grad_z)) grad_z.copy_(dz);
}

}  // namespace cpu
}  // namespace effconv
