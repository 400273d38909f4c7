// effconv::max_pool2d on the CPU (F.max_pool2d semantics, no indices).
// Forward: the ISA microkernel (ukernel/pool_impl.h) over output rows.
// Backward: each window's argmax is recomputed from the input with the
// forward's rule (first maximum, a NaN wins; the first valid tap when every
// value is -inf: where PyTorch's saved index points), so nothing
// activation-sized is saved. Threads own disjoint channels (or planes), so
// overlapping windows are summed race-free and deterministically: in
// channels_last each input pixel gathers from the windows covering it.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "common.h"
#include "kernels.h"
#include "ukernel/api.h"

namespace effconv {
namespace cpu {
namespace {

template <typename T>
void forward_typed(const at::Tensor& x, at::Tensor& y, const Pool2dShape& s, bool rows) {
  MaxPoolArgs<T> args;
  args.planes = !rows;
  args.cs = rows ? s.C : 1;
  args.s = s;
  // Inputs that fit in L3 gain nothing from it (N1 111² x 64: 0.058 -> 0.068 ms with it).
  args.prefetch = rows && x.numel() * int64_t(sizeof(T)) > kBeyondCaches;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const IsaKernels& isa = isa_kernels();
  // Work items: output rows of every image (channels_last) or plane (NCHW).
  const int64_t images = rows ? s.N : s.N * s.C;
  const int64_t row_cost = std::max<int64_t>(1, s.Q * args.cs * s.kh * s.kw);
  const int64_t grain = std::max<int64_t>(1, 65536 / row_cost);
  at::parallel_for(0, images * s.P, grain, [&](int64_t begin, int64_t end) {
    MaxPoolArgs<T> part = args;
    for (int64_t r = begin; r < end;) {
      const int64_t img = r / s.P, p0 = r % s.P, p1 = std::min(s.P, p0 + (end - r));
      part.x = xp + img * s.H * s.W * args.cs;
      part.y = yp + img * s.P * s.Q * args.cs;
      part.p0 = p0, part.p1 = p1;
      isa.maxpool(part);
      r += p1 - p0;
    }
  });
}

// Adds grad_output to the argmax of every window of one NCHW plane
// (channels_last runs the ISA kernel, vectorised over channels).
template <typename T>
void backward_plane(const T* x, const T* go, T* gi, const Pool2dShape& s) {
  for (int64_t p = 0; p < s.P; ++p)
    for (int64_t q = 0; q < s.Q; ++q) {
      const PoolWindow win = pool_window(s, p, q);
      if (win.empty()) continue;  // an all-padding window has no input to credit
      T best = -std::numeric_limits<T>::infinity();
      int64_t arg = win.first();
      for (int64_t i = win.ti.first; i < win.ti.end; ++i)
        for (int64_t j = win.tj.first; j < win.tj.end; ++j) {
          const int64_t pix = win.pixel(i, j);
          // Branch-free: random data mispredicts a branch about every other tap.
          const bool take = (x[pix] > best) | (x[pix] != x[pix]);
          best = take ? x[pix] : best;
          arg = take ? pix : arg;
        }
      gi[arg] += go[p * s.Q + q];
    }
}

// The outputs along one axis whose windows (start o * stride - pad, k taps
// dil apart) cover each input coordinate: list[begin[x] .. begin[x + 1]),
// ascending.
struct Covering {
  std::vector<int64_t> begin, list;
};
Covering covering(int64_t in, int64_t out, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  auto each_tap = [&](auto f) {  // f(input coordinate, output), outputs ascending
    for (int64_t o = 0; o < out; ++o) {
      const int64_t start = o * stride - pad;
      const PoolTaps t = pool_taps(start, k, dil, in);
      for (int64_t i = t.first; i < t.end; ++i) f(start + i * dil, o);
    }
  };
  Covering cov;
  cov.begin.assign(in + 1, 0);
  each_tap([&](int64_t x, int64_t) { ++cov.begin[x + 1]; });
  for (int64_t x = 0; x < in; ++x) cov.begin[x + 1] += cov.begin[x];
  cov.list.resize(cov.begin[in]);
  std::vector<int64_t> next(cov.begin.begin(), cov.begin.end() - 1);
  each_tap([&](int64_t x, int64_t o) { cov.list[next[x]++] = o; });
  return cov;
}

template <typename T>
void backward_typed(const at::Tensor& x, const at::Tensor& go, at::Tensor& gi, const Pool2dShape& s, bool rows) {
  const T* xp = x.data_ptr<T>();
  const T* gop = go.data_ptr<T>();
  T* gip = gi.data_ptr<T>();
  if (rows) {
    // (image, channel range) tasks: disjoint outputs. Whole vectors per
    // range, enough ranges per image to feed every thread at batch 1.
    const IsaKernels& isa = isa_kernels();
    const int64_t L = isa.lanes<T>(), vecs = ceil_div(s.C, L);
    const int64_t parts = std::min(vecs, std::max<int64_t>(1, ceil_div(2 * at::get_num_threads(), s.N)));
    const int64_t per = ceil_div(vecs, parts) * L;
    const Covering by_row = covering(s.H, s.P, s.kh, s.sh, s.ph, s.dh);
    const Covering by_col = covering(s.W, s.Q, s.kw, s.sw, s.pw, s.dw);
    MaxPoolBwdArgs<T> args;
    args.s = s;
    args.row_begin = by_row.begin.data(), args.rows = by_row.list.data();
    args.col_begin = by_col.begin.data(), args.cols = by_col.list.data();
    // Output rows live at once: input row h needs its covering rows, and the
    // kernel has computed every row up to the last one any row so far needed.
    int64_t done = 0;
    for (int64_t h = 0; h < s.H; ++h) {
      const int64_t b = by_row.begin[h], e = by_row.begin[h + 1];
      if (b == e) continue;
      done = std::max(done, by_row.list[e - 1] + 1);
      args.ring = std::max(args.ring, done - by_row.list[b]);
    }
    at::parallel_for(0, s.N * parts, 1, [&](int64_t begin, int64_t end) {
      MaxPoolBwdArgs<T> part = args;
      for (int64_t t = begin; t < end; ++t) {
        const int64_t n = t / parts;
        part.c0 = t % parts * per;
        part.c1 = std::min(s.C, part.c0 + per);
        if (part.c0 >= part.c1) continue;
        part.x = xp + n * s.H * s.W * s.C;
        part.go = gop + n * s.P * s.Q * s.C;
        part.gi = gip + n * s.H * s.W * s.C;
        isa.maxpool_backward(part);
      }
    });
  } else {
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, s.P * s.Q * s.kh * s.kw));
    at::parallel_for(0, s.N * s.C, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) backward_plane<T>(xp + t * s.H * s.W, gop + t * s.P * s.Q, gip + t * s.H * s.W, s);
    });
  }
}

}  // namespace

void max_pool2d_forward(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode, at::Tensor& out) {
  EFFCONV_CHECK_CPU(input);
  const Pool2dShape s = make_pool2d_shape(input, kernel_size, stride, padding, dilation, ceil_mode);
  EFFCONV_CHECK_SIZES(out, s.N, s.C, s.P, s.Q);
  if (out.numel() == 0) return;
  const bool rows = channels_last_rows(out);
  const at::ScalarType ct = compute_type(input.scalar_type());
  const at::Tensor x = dense_as(input, ct, rows);
  // Exact in the compute type: float16/bfloat16 values widen and narrow back unchanged.
  at::Tensor y = out.scalar_type() == ct ? out : at::empty_like(out, out.options().dtype(ct));
  if (ct == at::kDouble)
    forward_typed<double>(x, y, s, rows);
  else
    forward_typed<float>(x, y, s, rows);
  if (!y.is_same(out)) out.copy_(y);
}

void max_pool2d_backward(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef kernel_size,
                         at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode,
                         at::Tensor& grad_input) {
  EFFCONV_CHECK_CPU(input);
  EFFCONV_CHECK_CPU(grad_output);
  const Pool2dShape s = make_pool2d_shape(input, kernel_size, stride, padding, dilation, ceil_mode);
  EFFCONV_CHECK_SIZES(grad_output, s.N, s.C, s.P, s.Q);
  EFFCONV_CHECK_SIZES(grad_input, s.N, s.C, s.H, s.W);
  const bool rows = channels_last_rows(grad_input);
  const at::ScalarType ct = compute_type(input.scalar_type());
  const at::Tensor x = dense_as(input, ct, rows), go = dense_as(grad_output, ct, rows);
  // Accumulate in place when grad_input is dense in x's layout and dtype (plain offsets index it).
  const bool direct = grad_input.scalar_type() == ct &&
                      grad_input.is_contiguous(rows ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  at::Tensor gi = direct ? grad_input : at::empty_like(x);
  if (!rows || go.numel() == 0) gi.zero_();  // the channels_last kernel writes every element
  if (gi.numel() > 0 && go.numel() > 0) {
    if (ct == at::kDouble)
      backward_typed<double>(x, go, gi, s, rows);
    else
      backward_typed<float>(x, go, gi, s, rows);
  }
  if (!direct) grad_input.copy_(gi);
}

}  // namespace cpu
}  // namespace effconv
