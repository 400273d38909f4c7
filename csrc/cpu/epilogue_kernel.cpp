// effconv::epilogue on the CPU: the conv epilogue as a standalone pass, used
// where the epilogue cannot ride inside a GEMM (BatchNorm in training
// normalises with statistics known only after the conv).
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
std::vector<T> channel_vector(const c10::optional<at::Tensor>& v, int64_t channels) {
  return padded_channel_vector<T>(v, 1, channels, channels, T(0));
}

template <typename T>
void epilogue_typed(const at::Tensor& x, at::Tensor& y, bool rows_mode, const c10::optional<at::Tensor>& bias,
                    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift, int act) {
  const int64_t C = x.size(1);
  const std::vector<T> b = channel_vector<T>(bias, C), s = channel_vector<T>(scale, C),
                       h = channel_vector<T>(shift, C);
  EpilogueMapArgs<T> args;
  args.ep.bias = b.empty() ? nullptr : b.data();
  args.ep.scale = s.empty() ? nullptr : s.data();
  args.ep.shift = h.empty() ? nullptr : h.data();
  args.ep.act = act;
  args.planes = !rows_mode;
  args.channels = C;
  const int64_t rows = rows_mode ? x.numel() / C : x.size(0) * C;
  args.cols = x.numel() / std::max<int64_t>(rows, 1);
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  // Past the caches y goes straight to memory, as the conv kernels' outputs
  // do (training-mode Conv-BN-ReLU6 forward, 1x1 16->96 112² N16: 0.93x the
  // time, depthwise C144 56² N32: 0.87x).
  args.stream = 2 * x.numel() * int64_t(sizeof(T)) > kBeyondCaches && reinterpret_cast<uintptr_t>(yp) % 64 == 0 &&
                (args.cols * int64_t(sizeof(T))) % 64 == 0;
  const IsaKernels& isa = isa_kernels();
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(args.cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    EpilogueMapArgs<T> part = args;
    part.x = xp + begin * args.cols;
    part.y = yp + begin * args.cols;
    part.rows = end - begin;
    part.first_row = begin;
    isa.epilogue(part);
  });
}

}  // namespace

void epilogue(const at::Tensor& input, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
              const c10::optional<at::Tensor>& shift, int64_t activation, at::Tensor& out) {
  EFFCONV_CHECK_CPU(input);
  TORCH_CHECK(input.dim() >= 2, "expected input with a channel dimension (N, C, ...), got size ", input.sizes());
  TORCH_CHECK(out.sizes() == input.sizes(), "expected out of size ", input.sizes(), ", got ", out.sizes());
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "unknown activation code ", activation);
  if (input.numel() == 0) return;
  const at::ScalarType ct = compute_type(input.scalar_type());
  // channels_last outputs are processed as rows of C channels, everything
  // else as contiguous (N, C, rest) planes.
  const bool rows_mode = channels_last_rows(out);
  const at::Tensor x = dense_as(input, ct, rows_mode);
  at::Tensor y = (out.scalar_type() == ct && (rows_mode || out.is_contiguous()))
                     ? out
                     : at::empty_like(x, x.options(), rows_mode ? at::MemoryFormat::ChannelsLast
                                                                 : at::MemoryFormat::Contiguous);
  if (ct == at::kDouble)
    epilogue_typed<double>(x, y, rows_mode, bias, scale, shift, int(activation));
  else
    epilogue_typed<float>(x, y, rows_mode, bias, scale, shift, int(activation));
  if (!y.is_same(out)) out.copy_(y);
}

}  // namespace cpu
}  // namespace effconv
