// Helpers shared by the torch-facing CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "effconv/checks.h"
#include "effconv/conv2d_shape.h"

namespace effconv {
namespace cpu {

// Kernels compute in double for float64 and in float for everything else
// (float16/bfloat16 operands are widened once, accumulated in fp32).
inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// channels_last-contiguous operand in the compute dtype; a no-op when it already is.
inline at::Tensor as_nhwc(const at::Tensor& t, at::ScalarType ct) {
  return t.to(ct).contiguous(at::MemoryFormat::ChannelsLast);
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Kernels write in the compute dtype. When the caller's output has another
// dtype (float16/bfloat16), they write into a twin with the same strides that
// commit() copies back.
class OutBuffer {
 public:
  OutBuffer(const at::Tensor& out, at::ScalarType ct)
      : out_(out),
        work_(out.scalar_type() == ct ? out : at::empty_strided(out.sizes(), out.strides(), out.options().dtype(ct))) {}
  at::Tensor& work() { return work_; }
  void commit() {
    if (!work_.is_same(out_)) out_.copy_(work_);
  }

 private:
  at::Tensor out_;
  at::Tensor work_;
};

// A per-channel epilogue vector, converted to T and padded per group to a
// whole number of panels (so the microkernel loads full vectors). Empty when absent.
template <typename T>
std::vector<T> padded_channel_vector(const c10::optional<at::Tensor>& v, int64_t groups, int64_t per_group,
                                     int64_t padded_per_group, T fill) {
  std::vector<T> out;
  if (!v.has_value() || !v->defined()) return out;
  const at::Tensor src = v->to(c10::CppTypeToScalarType<T>::value).contiguous();
  TORCH_CHECK(src.numel() == groups * per_group, "expected an epilogue vector of ", groups * per_group,
              " elements, got ", src.numel());
  const T* s = src.data_ptr<T>();
  out.assign(groups * padded_per_group, fill);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = 0; j < per_group; ++j) out[g * padded_per_group + j] = s[g * per_group + j];
  return out;
}

// Per-thread batch-statistics accumulators for the conv epilogue: thread t
// adds into its own [sum | sum of squares] rows, and finish() sums the
// threads in order into `stats` ([2, K] float64): deterministic for a given
// thread count.
class StatsPartials {
 public:
  // columns: width of one thread's sum (or sumsq) row; null stats: inactive.
  StatsPartials(const c10::optional<at::Tensor>& stats, int64_t columns)
      : active_(stats.has_value() && stats->defined()), columns_(columns) {
    if (active_) {
      stats_ = *stats;
      parts_.assign(int64_t(at::get_num_threads()) * 2 * columns, 0.0);
    }
  }
  bool active() const { return active_; }
  double* sum(int64_t offset = 0) {
    return active_ ? parts_.data() + int64_t(at::get_thread_num()) * 2 * columns_ + offset : nullptr;
  }
  double* sq(int64_t offset = 0) {
    return active_ ? parts_.data() + (int64_t(at::get_thread_num()) * 2 + 1) * columns_ + offset : nullptr;
  }
  // column_of(k): the partial column holding output channel k.
  template <typename ColumnOf>
  void finish(int64_t K, const ColumnOf& column_of) {
    if (!active_) return;
    TORCH_CHECK(stats_.scalar_type() == at::kDouble && stats_.sizes() == at::IntArrayRef({2, K}) &&
                    stats_.is_contiguous(),
                "expected contiguous float64 stats of size [2, ", K, "], got ", stats_.scalar_type(), " ",
                stats_.sizes());
    double* out = stats_.data_ptr<double>();
    const int64_t threads = int64_t(parts_.size()) / (2 * columns_);
    for (int64_t k = 0; k < K; ++k) {
      double a = 0, b = 0;
      for (int64_t t = 0; t < threads; ++t) {
        a += parts_[t * 2 * columns_ + column_of(k)];
        b += parts_[(t * 2 + 1) * columns_ + column_of(k)];
      }
      out[k] = a;
      out[K + k] = b;
    }
  }

 private:
  bool active_;
  int64_t columns_;
  at::Tensor stats_;
  std::vector<double> parts_;
};

inline Conv2dShape make_conv2d_shape(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                                     at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  EFFCONV_CHECK_DIM(input, 4);
  EFFCONV_CHECK_DIM(weight, 4);
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "expected 2-element stride, padding and dilation, got ", stride, ", ", padding, ", ", dilation);
  TORCH_CHECK(groups > 0, "expected groups > 0, got ", groups);
  TORCH_CHECK(stride[0] > 0 && stride[1] > 0, "expected positive stride, got ", stride);
  TORCH_CHECK(dilation[0] > 0 && dilation[1] > 0, "expected positive dilation, got ", dilation);
  TORCH_CHECK(padding[0] >= 0 && padding[1] >= 0, "expected non-negative padding, got ", padding);
  Conv2dShape s;
  s.N = input.size(0);
  s.C = input.size(1);
  s.H = input.size(2);
  s.W = input.size(3);
  s.K = weight.size(0);
  s.R = weight.size(2);
  s.S = weight.size(3);
  s.stride_h = stride[0];
  s.stride_w = stride[1];
  s.pad_h = padding[0];
  s.pad_w = padding[1];
  s.dil_h = dilation[0];
  s.dil_w = dilation[1];
  s.groups = groups;
  TORCH_CHECK(s.C % groups == 0 && s.K % groups == 0, "expected channels divisible by groups=", groups,
              ", got in_channels=", s.C, " out_channels=", s.K);
  TORCH_CHECK(weight.size(1) == s.C / groups, "expected weight of size [", s.K, ", ", s.C / groups, ", ", s.R, ", ",
              s.S, "] for input with ", s.C, " channels and groups=", groups, ", got ", weight.sizes());
  s.P = conv_out_size(s.H, s.R, s.stride_h, s.pad_h, s.dil_h);
  s.Q = conv_out_size(s.W, s.S, s.stride_w, s.pad_w, s.dil_w);
  TORCH_CHECK(s.P > 0 && s.Q > 0, "expected a kernel no larger than the padded input, got kernel (", s.R, ", ", s.S,
              ") with dilation ", dilation, " for padded input (", s.H + 2 * s.pad_h, ", ", s.W + 2 * s.pad_w, ")");
  return s;
}

}  // namespace cpu
}  // namespace effconv
