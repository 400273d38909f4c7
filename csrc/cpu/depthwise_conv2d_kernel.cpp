// effconv::depthwise_conv2d on the CPU (groups = input channels).
//
//   channels_last: vectorised over channels. Each output row builds a table
//     of (pixel, tap) -> input pixel pointers (padding points at a zero
//     vector), and the ISA kernel accumulates blocks of pixels x channel
//     vectors with the fused epilogue: one pass over the input, one store.
//     grad_input is the same kernel over the transposed pixel map; the
//     weight gradient reduces per thread into private partials summed in
//     a fixed order (deterministic).
//   NCHW (or any other layout): vectorised along W. Each band of output rows
//     copies its input rows once into zero-padded stride-phase rows (in fp32
//     or fp64, whatever the storage dtype), so every tap of every stride and
//     dilation is a contiguous vector load and no full-tensor conversion
//     exists even for fp16/bf16 inputs past 2^31 elements.
//   Channel multiplier > 1 runs conv2d's group-vectorised kernels
//   (groups = C, one input channel per group).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common.h"
#include "effconv/epilogue.h"
#include "kernels.h"
#include "ukernel/api.h"

namespace effconv {
namespace cpu {
namespace {

// Weights as [tap][cpad], channel-contiguous and zero-padded to whole vectors.
template <typename T>
std::vector<T> pack_depthwise_weight(const at::Tensor& weight, int64_t taps, int64_t cpad) {
  const at::Tensor w = contiguous_as<T>(weight);
  const T* src = w.data_ptr<T>();
  const int64_t K = weight.size(0);
  std::vector<T> out(taps * cpad, T(0));
  for (int64_t k = 0; k < K; ++k)
    for (int64_t t = 0; t < taps; ++t) out[t * cpad + k] = src[k * taps + t];
  return out;
}

// Forward (pixel, tap) table of one output row: input pixel pointers or `zero`.
template <typename T>
void build_forward_row(const Conv2dShape& s, const T* xp, const T* zero, int64_t n, int64_t p, const T** a) {
  const int64_t RS = s.taps();
  for (int64_t kr = 0; kr < s.R; ++kr) {
    const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
    const bool inside = ih >= 0 && ih < s.H;
    const T* xrow = xp + (n * s.H + ih) * s.W * s.C;
    for (int64_t q = 0; q < s.Q; ++q)
      for (int64_t ks = 0; ks < s.S; ++ks) {
        const int64_t iw = conv_in_coord(q, ks, s.stride_w, s.pad_w, s.dil_w);
        a[q * RS + kr * s.S + ks] = inside && iw >= 0 && iw < s.W ? xrow + iw * s.C : zero;
      }
  }
}

template <typename T>
void forward_nhwc(const at::Tensor& x, const at::Tensor& weight, const Conv2dShape& s,
                  const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                  const c10::optional<at::Tensor>& shift, int act, at::Tensor& out,
                  const c10::optional<at::Tensor>& stats = c10::nullopt) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>(), RS = s.taps(), C = s.C, cpad = ceil_div(C, L) * L;
  const std::vector<T> wp = pack_depthwise_weight<T>(weight, RS, cpad);
  const std::vector<T> bias_p = padded_channel_vector<T>(bias, 1, C, cpad, T(0));
  const std::vector<T> scale_p = padded_channel_vector<T>(scale, 1, C, cpad, T(1));
  const std::vector<T> shift_p = padded_channel_vector<T>(shift, 1, C, cpad, T(0));
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t on = out.stride(0), oh = out.stride(2), ow = out.stride(3);
  DwRowArgs<T> args;
  args.R = s.R;
  args.S = s.S;
  args.W = s.W;
  args.Q = s.Q;
  args.C = C;
  args.stride = s.stride_w;
  args.pad = s.pad_w;
  args.dil = s.dil_w;
  conv_interior(s.Q, s.W, s.S, s.stride_w, s.pad_w, s.dil_w, &args.q_lo, &args.q_hi);
  args.w = wp.data();
  args.cpad = cpad;
  args.out_ps = ow;
  // Outputs beyond the caches are streamed past them (no read-for-ownership).
  args.stream = out.numel() * int64_t(sizeof(T)) > (8 << 20) && (ow * int64_t(sizeof(T))) % 64 == 0 &&
                reinterpret_cast<uintptr_t>(op) % 64 == 0;
  args.ep = {bias_p.empty() ? nullptr : bias_p.data(), scale_p.empty() ? nullptr : scale_p.data(),
             shift_p.empty() ? nullptr : shift_p.data(), act};
  // Kernel row r reads input row p * stride + r * dil - pad; rows the previous
  // output row did not read are r * dil > (R - 1) * dil - stride.
  args.fresh_from = 0;
  while (args.fresh_from < s.R && args.fresh_from * s.dil_h <= (s.R - 1) * s.dil_h - s.stride_h) ++args.fresh_from;
  StatsPartials partials(stats, cpad);
  at::parallel_for(0, s.N * s.P, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> rows(s.R);
    DwRowArgs<T> row = args;
    row.rows = rows.data();
    row.ep.stat_sum = partials.sum();
    row.ep.stat_sq = partials.sq();
    for (int64_t np = begin; np < end; ++np) {
      const int64_t n = np / s.P, p = np % s.P;
      kernel_row_inputs(s, xp, n, p, rows.data());
      row.out = op + n * on + p * oh;
      isa.dwrow(row);
    }
  });
  partials.finish(C, [](int64_t k) { return k; });
}

// ---------------------------------------------------------------------------
// NCHW / general layout: bands of output rows of one (n, k) plane.
template <typename In, typename T, typename Out>
void forward_planes(const at::Tensor& input, const at::Tensor& weight, const Conv2dShape& s,
                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                    const c10::optional<at::Tensor>& shift, int act, at::Tensor& out,
                    const c10::optional<at::Tensor>& stats) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>(), RS = s.taps();
  const int64_t mult = s.K / s.C;
  const at::Tensor wt = contiguous_as<T>(weight);
  const T* wsrc = wt.data_ptr<T>();
  const std::vector<T> bias_v = padded_channel_vector<T>(bias, 1, s.K, s.K, T(0));
  const std::vector<T> scale_v = padded_channel_vector<T>(scale, 1, s.K, s.K, T(1));
  const std::vector<T> shift_v = padded_channel_vector<T>(shift, 1, s.K, s.K, T(0));
  const int64_t off_max = ((s.S - 1) * s.dil_w) / s.stride_w;
  // Loads run up to a vector past Q: the phase rows end in zeros for it.
  const int64_t prow = ceil_div(s.Q, L) * L + off_max + 1;
  // Output rows per work item: about 4K outputs, so small planes are one item.
  const int64_t kBand = std::max<int64_t>(1, std::min<int64_t>(s.P, 4096 / std::max<int64_t>(s.Q, 1)));
  const int64_t bands = ceil_div(s.P, kBand);
  const In* xp = input.data_ptr<In>();
  const int64_t xn = input.stride(0), xc = input.stride(1), xh = input.stride(2), xw = input.stride(3);
  Out* op = out.data_ptr<Out>();
  const int64_t on = out.stride(0), ok = out.stride(1), oh = out.stride(2), ow = out.stride(3);

  StatsPartials partials(stats, s.K);
  at::parallel_for(0, s.N * s.K * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> phases, row_out(s.Q);
    std::vector<const T*> rows(s.R);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t band = item % bands, nk = item / bands, n = nk / s.K, k = nk % s.K;
      const int64_t ci = depthwise_in_channel(k, mult);
      const int64_t p0 = band * kBand, p1 = std::min(s.P, p0 + kBand);
      // Input rows this band reads, copied once into padded phase rows.
      const int64_t ih_lo = std::max<int64_t>(0, conv_in_coord(p0, 0, s.stride_h, s.pad_h, s.dil_h));
      const int64_t ih_hi = std::min<int64_t>(s.H, conv_in_coord(p1 - 1, s.R - 1, s.stride_h, s.pad_h, s.dil_h) + 1);
      const int64_t nrows = std::max<int64_t>(0, ih_hi - ih_lo);
      phases.resize(nrows * s.stride_w * prow);
      const In* plane = xp + n * xn + ci * xc;
      for (int64_t r = 0; r < nrows; ++r) {
        const In* src = plane + (ih_lo + r) * xh;
        for (int64_t f = 0; f < s.stride_w; ++f) {
          // Phase f holds padded columns f, f + stride, ...: input column j * stride + f - pad.
          T* dst = phases.data() + (r * s.stride_w + f) * prow;
          for (int64_t j = 0; j < prow; ++j) {
            const int64_t iw = j * s.stride_w + f - s.pad_w;
            dst[j] = iw >= 0 && iw < s.W ? static_cast<T>(src[iw * xw]) : T(0);
          }
        }
      }
      DwPlaneRowArgs<T> args;
      args.rows = rows.data();
      args.prow = prow;
      args.R = s.R;
      args.S = s.S;
      args.stride = s.stride_w;
      args.dil = s.dil_w;
      args.Q = s.Q;
      args.w = wsrc + k * RS;
      args.bias = bias_v.empty() ? T(0) : bias_v[k];
      args.scale = scale_v.empty() ? T(1) : scale_v[k];
      args.shift = shift_v.empty() ? T(0) : shift_v[k];
      args.act = act;
      args.stat_sum = partials.sum(k);
      args.stat_sq = partials.sq(k);
      constexpr bool direct = std::is_same_v<T, Out>;
      for (int64_t p = p0; p < p1; ++p) {
        for (int64_t kr = 0; kr < s.R; ++kr) {
          const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
          rows[kr] = ih >= 0 && ih < s.H ? phases.data() + (ih - ih_lo) * s.stride_w * prow : nullptr;
        }
        Out* dst = op + n * on + k * ok + p * oh;
        if constexpr (direct) {
          if (ow == 1) {
            args.out = dst;
            isa.dwplane(args);
            continue;
          }
        }
        args.out = row_out.data();
        isa.dwplane(args);
        for (int64_t q = 0; q < s.Q; ++q) dst[q * ow] = static_cast<Out>(row_out[q]);
      }
    }
  });
  partials.finish(s.K, [](int64_t k) { return k; });
}

// ---------------------------------------------------------------------------
template <typename T>
void grad_input_nhwc(const at::Tensor& dy, const at::Tensor& weight, const Conv2dShape& s, at::Tensor& dx) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>(), RS = s.taps(), C = s.C, cpad = ceil_div(C, L) * L;
  const std::vector<T> wp = pack_depthwise_weight<T>(weight, RS, cpad);
  const std::vector<T> zeros(cpad, T(0));
  const T* dyp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  const int64_t xn = dx.stride(0), xh = dx.stride(2), xw = dx.stride(3);
  at::parallel_for(0, s.N * s.H, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> a(s.W * RS);
    std::vector<T*> c(s.W);
    DwConvArgs<T> args;
    args.a = a.data();
    args.c = c.data();
    args.zero = zeros.data();
    args.m = s.W;
    args.ntaps = RS;
    args.channels = C;
    args.c_begin = 0;
    args.c_end = C;
    args.w = wp.data();
    args.cpad = cpad;
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / s.H, h = nh % s.H;
      for (int64_t kr = 0; kr < s.R; ++kr) {
        // The output row whose tap kr read input row h, if any.
        const int64_t p = conv_out_coord(h, kr, s.stride_h, s.pad_h, s.dil_h, s.P);
        const T* dyrow = dyp + (n * s.P + p) * s.Q * C;
        for (int64_t w = 0; w < s.W; ++w)
          for (int64_t ks = 0; ks < s.S; ++ks) {
            const int64_t q = p < 0 ? -1 : conv_out_coord(w, ks, s.stride_w, s.pad_w, s.dil_w, s.Q);
            a[w * RS + kr * s.S + ks] = q >= 0 ? dyrow + q * C : zeros.data();
          }
      }
      for (int64_t w = 0; w < s.W; ++w) c[w] = dxp + n * xn + h * xh + w * xw;
      isa.dwconv(args);
    }
  });
}

template <typename T>
void grad_weight_nhwc(const at::Tensor& dy, const at::Tensor& x, const Conv2dShape& s, at::Tensor& dw,
                      at::Tensor* db) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>(), RS = s.taps(), C = s.C, cpad = ceil_div(C, L) * L;
  const int64_t rows = s.N * s.P;
  // A fixed number of parts, each with private partials summed in part
  // order afterwards: deterministic for a given thread count, no atomics.
  const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
  std::vector<T> parts(nparts * RS * cpad, T(0)), bparts(nparts * cpad, T(0));
  const T* xp = x.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  // Output rows per kernel call: their input and gradient rows (~256 KB) stay
  // in L2 while the kernel walks them once per channel vector.
  const int64_t row_bytes = (s.stride_h * s.W + s.Q) * C * int64_t(sizeof(T));
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(64, (256 << 10) / std::max<int64_t>(row_bytes, 1)));
  at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> in_rows(chunk * s.R), dy_rows(chunk);
    for (int64_t part = begin; part < end; ++part) {
      DwWGradArgs<T> args;
      args.rows = in_rows.data();
      args.dy = dy_rows.data();
      args.R = s.R;
      args.S = s.S;
      args.W = s.W;
      args.Q = s.Q;
      args.C = C;
      args.stride = s.stride_w;
      args.pad = s.pad_w;
      args.dil = s.dil_w;
      args.cpad = cpad;
      args.dw = parts.data() + part * RS * cpad;
      args.db = db ? bparts.data() + part * cpad : nullptr;
      const int64_t first = part * rows / nparts, last = (part + 1) * rows / nparts;
      for (int64_t np0 = first; np0 < last; np0 += chunk) {
        args.nrows = std::min(chunk, last - np0);
        for (int64_t i = 0; i < args.nrows; ++i) {
          const int64_t n = (np0 + i) / s.P, p = (np0 + i) % s.P;
          for (int64_t kr = 0; kr < s.R; ++kr) {
            const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
            in_rows[i * s.R + kr] = ih >= 0 && ih < s.H ? xp + (n * s.H + ih) * s.W * C : nullptr;
          }
          dy_rows[i] = dyp + (n * s.P + p) * s.Q * C;
        }
        isa.dwwgrad(args);
      }
    }
  });
  for (int64_t part = 1; part < nparts; ++part) {
    for (int64_t i = 0; i < RS * cpad; ++i) parts[i] += parts[part * RS * cpad + i];
    for (int64_t i = 0; i < cpad; ++i) bparts[i] += bparts[part * cpad + i];
  }
  T* dwp = dw.data_ptr<T>();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t t = 0; t < RS; ++t)
      dwp[c * dw.stride(0) + (t / s.S) * dw.stride(2) + (t % s.S) * dw.stride(3)] = parts[t * cpad + c];
  if (db) {
    T* dbp = db->data_ptr<T>();
    for (int64_t c = 0; c < C; ++c) dbp[c * db->stride(0)] = bparts[c];
  }
}

// A channels_last buffer in the compute dtype to write into: `out` itself
// when it already is one, else a fresh one for commit_to().
at::Tensor nhwc_work(const at::Tensor& out, at::ScalarType ct) {
  if (out.scalar_type() == ct && out.is_contiguous(at::MemoryFormat::ChannelsLast)) return out;
  return at::empty(out.sizes(), out.options().dtype(ct).memory_format(at::MemoryFormat::ChannelsLast));
}

void commit_to(at::Tensor& out, const at::Tensor& work) {
  if (!work.is_same(out)) out.copy_(work);
}

Conv2dShape depthwise_shape(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation) {
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) == 1 && input.dim() == 4 && weight.size(0) % input.size(1) == 0,
              "expected depthwise weight of size [C * multiplier, 1, kH, kW] for input with ", input.size(1),
              " channels, got ", weight.sizes());
  return make_conv2d_shape(input, weight, stride, padding, dilation, input.size(1));
}

}  // namespace

// ---------------------------------------------------------------------------
void depthwise_conv2d_forward(const at::Tensor& input, const at::Tensor& weight,
                              const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                              const c10::optional<at::Tensor>& shift, at::IntArrayRef stride, at::IntArrayRef padding,
                              at::IntArrayRef dilation, int64_t activation, at::Tensor& out,
                              const c10::optional<at::Tensor>& stats) {
  EFFCONV_CHECK_CPU(input);
  EFFCONV_CHECK_CPU(weight);
  EFFCONV_CHECK_SAME_DTYPE(input, weight);
  const Conv2dShape s = depthwise_shape(input, weight, stride, padding, dilation);
  EFFCONV_CHECK_SIZES(out, s.N, s.K, s.P, s.Q);
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "unknown activation code ", activation);
  if (out.numel() == 0) return;
  const at::ScalarType ct = compute_type(input.scalar_type());
  const bool nhwc = out.is_contiguous(at::MemoryFormat::ChannelsLast) && !out.is_contiguous();
  if (nhwc && s.K != s.C) {  // channel multiplier: the group-vectorised conv2d kernel
    conv2d_forward(input, weight, bias, scale, shift, stride, padding, dilation, s.C, activation, out, stats);
    return;
  }
  // Small NCHW planes (late MobileNet stages) cost more in per-plane set-up
  // than a round trip through channels_last.
  if (nhwc || (s.P * s.Q < 1024 && s.K == s.C)) {
    const at::Tensor x = as_nhwc(input, ct);
    at::Tensor work = nhwc_work(out, ct);
    if (ct == at::kDouble)
      forward_nhwc<double>(x, weight, s, bias, scale, shift, int(activation), work, stats);
    else
      forward_nhwc<float>(x, weight, s, bias, scale, shift, int(activation), work, stats);
    commit_to(out, work);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_planes", [&] {
    using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    forward_planes<scalar_t, T, scalar_t>(input, weight, s, bias, scale, shift, int(activation), out, stats);
  });
}

void depthwise_conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef stride,
                                 at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& grad_input) {
  EFFCONV_CHECK_CPU(grad_output);
  EFFCONV_CHECK_CPU(weight);
  EFFCONV_CHECK_SAME_DTYPE(grad_output, weight);
  const Conv2dShape s = depthwise_shape(grad_input, weight, stride, padding, dilation);
  EFFCONV_CHECK_SIZES(grad_output, s.N, s.K, s.P, s.Q);
  if (grad_input.numel() == 0) return;
  if (s.K != s.C) {
    conv2d_grad_input(grad_output, weight, stride, padding, dilation, s.C, grad_input);
    return;
  }
  const at::ScalarType ct = compute_type(grad_output.scalar_type());
  const at::Tensor dy = as_nhwc(grad_output, ct);
  at::Tensor work = nhwc_work(grad_input, ct);
  // Stride 1: grad_input is the forward on the flipped kernel with padding
  // (k - 1) * dil - pad (when that is non-negative): the direct row kernel.
  const int64_t fpad_h = (s.R - 1) * s.dil_h - s.pad_h, fpad_w = (s.S - 1) * s.dil_w - s.pad_w;
  if (s.stride_h == 1 && s.stride_w == 1 && fpad_h >= 0 && fpad_w >= 0) {
    const at::Tensor flipped = weight.flip({2, 3});
    const Conv2dShape fs = make_conv2d_shape(dy, flipped, stride, {fpad_h, fpad_w}, dilation, s.C);
    if (ct == at::kDouble)
      forward_nhwc<double>(dy, flipped, fs, c10::nullopt, c10::nullopt, c10::nullopt, 0, work);
    else
      forward_nhwc<float>(dy, flipped, fs, c10::nullopt, c10::nullopt, c10::nullopt, 0, work);
  } else if (ct == at::kDouble) {
    grad_input_nhwc<double>(dy, weight, s, work);
  } else {
    grad_input_nhwc<float>(dy, weight, s, work);
  }
  commit_to(grad_input, work);
}

void depthwise_conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& grad_weight,
                                  const c10::optional<at::Tensor>& grad_bias) {
  EFFCONV_CHECK_CPU(grad_output);
  EFFCONV_CHECK_CPU(input);
  EFFCONV_CHECK_SAME_DTYPE(grad_output, input);
  const Conv2dShape s = depthwise_shape(input, grad_weight, stride, padding, dilation);
  EFFCONV_CHECK_SIZES(grad_output, s.N, s.K, s.P, s.Q);
  if (grad_bias.has_value()) EFFCONV_CHECK_SIZES((*grad_bias), s.K);
  if (grad_weight.numel() == 0) return;
  if (s.K != s.C) {
    conv2d_grad_weight(grad_output, input, stride, padding, dilation, s.C, grad_weight, grad_bias);
    return;
  }
  const at::ScalarType ct = compute_type(grad_output.scalar_type());
  const at::Tensor dy = as_nhwc(grad_output, ct);
  const at::Tensor x = as_nhwc(input, ct);
  OutBuffer ow(grad_weight, ct);
  c10::optional<OutBuffer> ob;
  if (grad_bias.has_value()) ob.emplace(*grad_bias, ct);
  if (ct == at::kDouble)
    grad_weight_nhwc<double>(dy, x, s, ow.work(), ob ? &ob->work() : nullptr);
  else
    grad_weight_nhwc<float>(dy, x, s, ow.work(), ob ? &ob->work() : nullptr);
  ow.commit();
  if (ob) ob->commit();
}

}  // namespace cpu
}  // namespace effconv
