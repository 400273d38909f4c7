// The fused epilogue every effconv kernel family ends with:
//
//   y = act((acc + bias[k]) * scale[k] + shift[k])
//
// bias, scale and shift are optional per-output-channel vectors (folded
// BatchNorm is scale/shift). The scalar forms below are the single definition
// of the activations; the vectorized CPU epilogue and the Triton epilogue
// implement the same formulas and are tested against these.
#pragma once
#include <cmath>
#include <cstdint>

#include "effconv/macros.h"

namespace effconv {

// Values are part of the Python <-> C++ contract (effconv/ops/epilogue.py ACTIVATIONS).
enum class Activation : int { kNone = 0, kReLU = 1, kReLU6 = 2, kSiLU = 3 };

constexpr int kNumActivations = 4;

template <typename T>
EFFCONV_HD T exp_any(T x) {
#if defined(__CUDA_ARCH__)
  return exp(x);  // CUDA's float and double overloads
#else
  return std::exp(x);
#endif
}

template <typename T>
EFFCONV_HD T activation_forward(T z, Activation act) {
  switch (act) {
    case Activation::kReLU:
      return z < T(0) ? T(0) : z;  // NaN propagates, as torch.relu does
    case Activation::kReLU6:
      return z < T(0) ? T(0) : (z > T(6) ? T(6) : z);
    case Activation::kSiLU:
      return z / (T(1) + exp_any(-z));
    default:
      return z;
  }
}

// d act / d z evaluated at the pre-activation z.
template <typename T>
EFFCONV_HD T activation_backward(T z, Activation act) {
  switch (act) {
    case Activation::kReLU:
      return z > T(0) ? T(1) : T(0);
    case Activation::kReLU6:
      return (z > T(0) && z < T(6)) ? T(1) : T(0);
    case Activation::kSiLU: {
      const T s = T(1) / (T(1) + exp_any(-z));
      return s * (T(1) + z * (T(1) - s));
    }
    default:
      return T(1);
  }
}

// Training-mode BatchNorm + activation backward. With xhat = (z - mean) *
// invstd and g = dy * act'(xhat * gamma + beta) summed per channel over the
// M = N*H*W elements into sum_g and sum_gx = sum(g * xhat):
//
//   grad_beta = sum_g,  grad_gamma = sum_gx,
//   dz = k1 * g + k2 * xhat + k3  with  k1 = gamma * invstd,
//        k2 = -k1 * sum_gx / M,  k3 = -k1 * sum_g / M.
struct BnGradCoefficients {
  double k1, k2, k3;
};

EFFCONV_HD BnGradCoefficients bn_grad_coefficients(double gamma, double invstd, double sum_g, double sum_gx,
                                                   int64_t M) {
  const double k1 = gamma * invstd;
  if (M == 0) return {k1, 0.0, 0.0};
  return {k1, -k1 * sum_gx / double(M), -k1 * sum_g / double(M)};
}

}  // namespace effconv
