// Torch-facing CUDA C++ kernels (compiled only in CUDA builds).
#pragma once
#include <ATen/ATen.h>

namespace effconv {
namespace cuda {

void epilogue(const at::Tensor& input, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
              const c10::optional<at::Tensor>& shift, int64_t activation, at::Tensor& out);

}  // namespace cuda
}  // namespace effconv
