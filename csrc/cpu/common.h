// Helpers shared by the torch-facing CPU kernels.
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "effconv/checks.h"
#include "effconv/conv2d_shape.h"
#include "effconv/shapes.h"
#include "kernels.h"
#include "ukernel/api.h"

namespace effconv {
namespace cpu {

// Non-temporal stores (the kernels' `stream` outputs) are weakly ordered:
// each thread fences its own before leaving a parallel region, so the
// results are visible to whoever reads them after it.
inline void store_fence() {
#if defined(__x86_64__) || defined(_M_X64)
  _mm_sfence();
#endif
}

// Kernels compute in double for float64 and in float for everything else
// (float16/bfloat16 operands are widened once, accumulated in fp32).
inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Copies src into dst between NCHW-contiguous and channels_last-contiguous
// layouts (same sizes, float or double on the CPU) on the tile kernel;
// false, copying nothing, for anything else (layout.cpp).
bool copy_layout(const at::Tensor& src, const at::Tensor& dst);

// channels_last-contiguous operand in the compute dtype; a no-op when it already is.
inline at::Tensor as_nhwc(const at::Tensor& t, at::ScalarType ct) {
  if (t.dim() == 4 && t.scalar_type() == ct && t.is_contiguous() && !t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    // From the pool: a fresh large buffer is page-faulted in on every call.
    at::Tensor rows = empty_pooled(t.sizes(), ct, /*channels_last=*/true);
    if (copy_layout(t, rows)) return rows;
  }
  return t.to(ct).contiguous(at::MemoryFormat::ChannelsLast);
}

// Whether a kernel runs `t` (an output, or z) as channels_last rows: dense
// channels_last and not also contiguous (ambiguous layouts, C == 1 or
// H == W == 1, run as planes).
inline bool channels_last_rows(const at::Tensor& t) {
  return t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

// t in the compute dtype, dense in the layout a kernel runs (rows or planes).
inline at::Tensor dense_as(const at::Tensor& t, at::ScalarType ct, bool rows) {
  return rows ? as_nhwc(t, ct) : t.to(ct).contiguous();
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A contiguous copy of t in T (t itself when it already is one).
template <typename T>
at::Tensor contiguous_as(const at::Tensor& t) {
  return t.to(c10::CppTypeToScalarType<T>::value).contiguous();
}

// The work layout for a kernel that stores channels_last rows into `out`:
// none (out itself, when its channels are contiguous per pixel: channels_last,
// or a channel range of it) or a channels_last buffer transposed into out
// afterwards (NCHW: storing channel by channel is slower than the transpose).
inline c10::optional<at::MemoryFormat> rows_format(const at::Tensor& out) {
  if (out.dim() == 4 && out.size(1) > 1 && out.stride(1) != 1) return at::MemoryFormat::ChannelsLast;
  return c10::nullopt;
}

// Kernels write in the compute dtype. When the caller's output has another
// dtype (float16/bfloat16), they write into a twin with the same strides that
// commit() copies back; a kernel that needs a dense layout (`format`) also
// gets a twin when the output is not dense in it.
class OutBuffer {
 public:
  OutBuffer(const at::Tensor& out, at::ScalarType ct, c10::optional<at::MemoryFormat> format = c10::nullopt)
      : out_(out), work_(work_for(out, ct, format)) {}
  at::Tensor& work() { return work_; }
  void commit() {
    if (!work_.is_same(out_) && !copy_layout(work_, out_)) out_.copy_(work_);
  }

 private:
  static at::Tensor work_for(const at::Tensor& out, at::ScalarType ct, c10::optional<at::MemoryFormat> format) {
    if (format) {
      if (out.scalar_type() == ct && out.is_contiguous(*format)) return out;
      if (out.dim() == 4 && *format == at::MemoryFormat::ChannelsLast)
        return empty_pooled(out.sizes(), ct, /*channels_last=*/true);
      return at::empty(out.sizes(), out.options().dtype(ct).memory_format(*format));
    }
    return out.scalar_type() == ct ? out : at::empty_strided(out.sizes(), out.strides(), out.options().dtype(ct));
  }

  at::Tensor out_;
  at::Tensor work_;
};

// The weight and (optional) bias gradients' buffers in the compute type (see OutBuffer).
class WeightGradOut {
 public:
  WeightGradOut(const at::Tensor& dw, const c10::optional<at::Tensor>& db, at::ScalarType ct) : w_(dw, ct) {
    if (db.has_value()) b_.emplace(*db, ct);
  }
  at::Tensor& weight() { return w_.work(); }
  at::Tensor* bias() { return b_ ? &b_->work() : nullptr; }
  void commit() {
    w_.commit();
    if (b_) b_->commit();
  }

 private:
  OutBuffer w_;
  c10::optional<OutBuffer> b_;
};

// A per-channel epilogue vector, converted to T and padded per group to a
// whole number of panels (so the microkernel loads full vectors). Empty when absent.
template <typename T>
std::vector<T> padded_channel_vector(const c10::optional<at::Tensor>& v, int64_t groups, int64_t per_group,
                                     int64_t padded_per_group, T fill) {
  std::vector<T> out;
  if (!v.has_value() || !v->defined()) return out;
  const at::Tensor src = contiguous_as<T>(*v);
  TORCH_CHECK(src.numel() == groups * per_group, "expected an epilogue vector of ", groups * per_group,
              " elements, got ", src.numel());
  const T* s = src.data_ptr<T>();
  out.assign(groups * padded_per_group, fill);
  for (int64_t g = 0; g < groups; ++g)
    for (int64_t j = 0; j < per_group; ++j) out[g * padded_per_group + j] = s[g * per_group + j];
  return out;
}

// Columns [0, ncols) of `rows` rows (row i at src + i * ld) as panels of nr
// columns, zero-padded: panel p holds rows x nr values at dst + p * rows * nr
// (the D operand of the weight-gradient microkernel, WGemmArgs).
template <typename T>
void pack_row_panels(const T* src, int64_t ld, int64_t rows, int64_t ncols, int64_t nr, T* dst) {
  for (int64_t p = 0; p * nr < ncols; ++p) {
    T* d = dst + p * rows * nr;
    const int64_t width = std::min(nr, ncols - p * nr);
    for (int64_t i = 0; i < rows; ++i) {
      const T* s = src + i * ld + p * nr;
      int64_t j = 0;
      for (; j < width; ++j) d[i * nr + j] = s[j];
      for (; j < nr; ++j) d[i * nr + j] = T(0);
    }
  }
}

// The input rows the kernel rows of output row (n, p) read in a dense
// channels_last input x: rows[kr] is that row's first pixel, or null where
// kernel row kr falls in the padding.
template <typename T>
void kernel_row_inputs(const Conv2dShape& s, const T* x, int64_t n, int64_t p, const T** rows) {
  for (int64_t kr = 0; kr < s.R; ++kr) {
    const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
    rows[kr] = ih >= 0 && ih < s.H ? x + (n * s.H + ih) * s.W * s.C : nullptr;
  }
}

// Requests into L2 the input rows the band after rows [np, np + band)
// (global n * P + p) reads and that band does not: whole rows, contiguous in
// a dense channels_last input. The row kernels (depthwise dwrow, grouped
// gconvrow) walk one channel vector of a row at a time, 64 bytes out of
// every pixel's C * sizeof(T), which from DRAM ran latency-bound: the 56²
// MobileNetV2 depthwise maps at N32 (58 MB inputs) took 0.56x (stride 2)
// and 0.72x (stride 1) the time with this request a band ahead, 5x5 C672
// 28² s2 N16 0.90x. Into L1 it gained less (0.72x, 0.77x): a band's rows
// are larger than L1d and evicted the working set.
template <typename T>
void prefetch_next_band(const Conv2dShape& s, const T* xp, int64_t np, int64_t band, int64_t band_max) {
  const int64_t n = np / s.P, p = np % s.P, next = np + band;
  const int64_t n2 = next / s.P, p2 = next % s.P, band2 = std::min(band_max, s.P - p2);
  const int64_t span = (s.R - 1) * s.dil_h + 1;  // input rows one output row reads
  int64_t lo = p2 * s.stride_h - s.pad_h, hi = (p2 + band2 - 1) * s.stride_h - s.pad_h + span;
  if (n2 == n) lo = std::max(lo, (p + band - 1) * s.stride_h - s.pad_h + span);
  lo = std::max<int64_t>(lo, 0);
  hi = std::min(hi, s.H);
  if (lo < hi) prefetch_span(xp + (n2 * s.H + lo) * s.W * s.C, (hi - lo) * s.W * s.C * int64_t(sizeof(T)), PrefetchTo::L2);
}

// Whether an op streams its 4-d channels_last output `out` (strides in
// elements) past the caches: no read-for-ownership, and the operands still
// to be read keep their cache lines. When the bytes it writes and reads
// pass half of L3 (kBeyondCaches) and every pixel starts 64-byte aligned.
template <typename T>
bool stream_pixels(const T* out, const int64_t* stride, int64_t bytes) {
  const int64_t sz = sizeof(T);
  return bytes > kBeyondCaches && stride[1] == 1 && (stride[3] * sz) % 64 == 0 && (stride[2] * sz) % 64 == 0 &&
         (stride[0] * sz) % 64 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0;
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

}  // namespace cpu
}  // namespace effconv
