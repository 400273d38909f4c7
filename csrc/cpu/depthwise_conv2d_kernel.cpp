// effconv::depthwise_conv2d on the CPU (groups = input channels).
//
//   channels_last: vectorised over channels. Each output row builds a table
//     of (pixel, tap) -> input pixel pointers (padding points at a zero
//     vector), and the ISA kernel accumulates blocks of pixels x channel
//     vectors with the fused epilogue: one pass over the input, one store.
//     grad_input is the same kernel over the transposed pixel map; the
//     weight gradient reduces per thread into private partials summed in
//     a fixed order (deterministic). depthwise_conv2d_backward interleaves
//     the two by rows, so grad_output is read from memory once for both.
//   NCHW (or any other layout), planes up to ~112x112 (stride 2): blocked.
//     Per image and block of one vector of channels, the planes are
//     transposed into a channels_last tile in L1/L2 (in registers when
//     dense), run through the channels_last kernels and transposed back:
//     forward, stride-1 grad_input (the forward on the flipped kernel) and
//     the weight gradient, with no whole-tensor layout change.
//   NCHW, larger planes (and channel multipliers): vectorised along W. Each
//     band of output rows copies its input rows once into zero-padded
//     stride-phase rows (in fp32 or fp64, whatever the storage dtype), so
//     every tap of every stride and dilation is a contiguous vector load and
//     no full-tensor conversion exists even for fp16/bf16 inputs past 2^31
//     elements.
//   Channel multiplier > 1 runs conv2d's group-vectorised kernels
//   (groups = C, one input channel per group).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <tuple>
#include <utility>
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

// The channels_last row kernel's packed operands for a forward of shape s
// (weights [tap][cpad], epilogue vectors padded to cpad) and its row
// arguments for rows of `channels` channels (C, or one block of L for the
// blocked NCHW path) starting at channel c_first, outputs out_ps apart.
template <typename T>
struct RowForward {
  int64_t cpad;
  std::vector<T> w, bias, scale, shift;
  DwRowArgs<T> args;

  RowForward(const Conv2dShape& s, int64_t L, const at::Tensor& weight, const c10::optional<at::Tensor>& bias_,
             const c10::optional<at::Tensor>& scale_, const c10::optional<at::Tensor>& shift_, int act)
      : cpad(ceil_div(s.C, L) * L),
        w(pack_depthwise_weight<T>(weight, s.taps(), cpad)),
        bias(padded_channel_vector<T>(bias_, 1, s.C, cpad, T(0))),
        scale(padded_channel_vector<T>(scale_, 1, s.C, cpad, T(1))),
        shift(padded_channel_vector<T>(shift_, 1, s.C, cpad, T(0))) {
    args.R = s.R;
    args.S = s.S;
    args.W = s.W;
    args.Q = s.Q;
    args.stride = s.stride_w;
    args.pad = s.pad_w;
    args.dil = s.dil_w;
    conv_interior(s.Q, s.W, s.S, s.stride_w, s.pad_w, s.dil_w, &args.q_lo, &args.q_hi);
    args.cpad = cpad;
    args.ep.act = act;
    // Kernel row r reads input row p * stride + r * dil - pad; rows the previous
    // output row did not read are r * dil > (R - 1) * dil - stride.
    args.fresh_from = 0;
    while (args.fresh_from < s.R && args.fresh_from * s.dil_h <= (s.R - 1) * s.dil_h - s.stride_h)
      ++args.fresh_from;
  }

  // Row arguments for `channels` channels from c_first on.
  DwRowArgs<T> channels(int64_t c_first, int64_t channels_, int64_t out_ps) const {
    DwRowArgs<T> a = args;
    a.C = channels_;
    a.out_ps = out_ps;
    a.w = w.data() + c_first;
    a.ep.bias = bias.empty() ? nullptr : bias.data() + c_first;
    a.ep.scale = scale.empty() ? nullptr : scale.data() + c_first;
    a.ep.shift = shift.empty() ? nullptr : shift.data() + c_first;
    return a;
  }
};

// Output rows per row-kernel call: as many as keep one channel vector of
// their input rows within a third of L1d (16 KiB), so an input row comes
// from L2 once per vector for all the kernel rows that read it, not once per
// kernel row (7² and 14² bands hold the whole image; C384 14² N16 0.87x,
// 5x5 C672 14² s2 0.82x the time row by row).
inline int64_t forward_band(const Conv2dShape& s, int64_t vec_bytes) {
  const int64_t row_bytes = s.W * vec_bytes, span = (s.R - 1) * s.dil_h + 1;
  int64_t band = 1;
  while (band < s.P && (band * s.stride_h + span) * row_bytes <= (int64_t(16) << 10)) ++band;
  return band;
}

// Output rows [begin, end) (global n * P + p) of a channels_last forward
// into out (pixel pitches on, oh), in bands of forward_band rows of one
// image: `row` holds the arguments, `rows` the kernel rows' scratch.
template <typename T>
void forward_rows(const IsaKernels& isa, const Conv2dShape& s, const T* xp, T* op, int64_t on, int64_t oh,
                  DwRowArgs<T>& row, std::vector<const T*>& rows, int64_t begin, int64_t end) {
  // Streamed outputs stay row by row: a band's stores, one channel vector at
  // a time, scatter over the band's rows, and past the caches that ran 1.5-2x
  // slower (C384 14² N32) than a row's sequential sweep.
  const int64_t band_max = row.stream ? 1 : forward_band(s, isa.vec_bytes);
  rows.resize(band_max * s.R);
  row.rows = rows.data();
  row.out_rs = oh;
  const bool prefetch = s.N * s.H * s.W * s.C * int64_t(sizeof(T)) > kBeyondCaches;
  for (int64_t np = begin; np < end; np += row.band) {
    const int64_t n = np / s.P, p = np % s.P;
    row.band = std::min({band_max, s.P - p, end - np});
    if (prefetch && np + row.band < end) prefetch_next_band(s, xp, np, row.band, band_max);
    for (int64_t b = 0; b < row.band; ++b) kernel_row_inputs(s, xp, n, p + b, rows.data() + b * s.R);
    row.out = op + n * on + p * oh;
    isa.dwrow(row);
  }
}

// stream_pixels for an output tensor and the `read_bytes` the op reads. The
// forward counts its output twice (its input at stride 1; counting strided
// inputs measured neutral); the backward counts grad_output and the input
// (C960 7² N32 and C576 14² N16 forward+backward 0.83-0.95x the time with
// grad_input streamed).
template <typename T>
bool stream_output(const at::Tensor& out, int64_t read_bytes) {
  const int64_t stride[4] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  return stream_pixels(out.data_ptr<T>(), stride, out.numel() * int64_t(sizeof(T)) + read_bytes);
}

template <typename T>
void forward_nhwc(const at::Tensor& x, const at::Tensor& weight, const Conv2dShape& s,
                  const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                  const c10::optional<at::Tensor>& shift, int act, at::Tensor& out,
                  const c10::optional<at::Tensor>& stats = c10::nullopt) {
  const IsaKernels& isa = isa_kernels();
  const RowForward<T> fwd(s, isa.lanes<T>(), weight, bias, scale, shift, act);
  DwRowArgs<T> args = fwd.channels(0, s.C, out.stride(3));
  args.stream = stream_output<T>(out, out.numel() * int64_t(sizeof(T)));
  StatsPartials partials(stats, fwd.cpad);
  at::parallel_for(0, s.N * s.P, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> rows;
    DwRowArgs<T> row = args;
    row.ep.stat_sum = partials.sum();
    row.ep.stat_sq = partials.sq();
    forward_rows(isa, s, x.data_ptr<T>(), out.data_ptr<T>(), out.stride(0), out.stride(2), row, rows, begin, end);
    store_fence();
  });
  partials.finish(s.C, [](int64_t k) { return k; });
}

// The planes of one (n, block of L channels) of an NCHW (or any-layout)
// tensor and a channels_last tile of them: tile[(h * W + w) * L + c] is
// plane c0 + c at (h, w). Dense planes in the compute dtype go through the
// tile kernel (L x L transposes in registers), others element by element.
template <typename S, typename T>
class PlaneTiles {
  static constexpr bool kSame = std::is_same_v<std::remove_const_t<S>, T>;

 public:
  // S: the tensor's element type (const for an input).
  PlaneTiles(const at::Tensor& t, int64_t L)
      : p_(static_cast<S*>(t.data_ptr())), sn_(t.stride(0)), sc_(t.stride(1)), sh_(t.stride(2)),
        sw_(t.stride(3)), C_(t.size(1)), H_(t.size(2)), W_(t.size(3)), L_(L), dense_(kSame && sw_ == 1 && sh_ == W_),
        planes_(L) {}

  int64_t pixels() const { return H_ * W_; }

  // tile <- planes (channels past C zeroed).
  void load(const IsaKernels& isa, int64_t n, int64_t c0, T* tile) {
    const int64_t nc = std::min(L_, C_ - c0);
    if (dense_) return run(isa, n, c0, nc, tile, true);
    for (int64_t c = 0; c < L_; ++c) {
      if (c >= nc) {
        for (int64_t i = 0; i < H_ * W_; ++i) tile[i * L_ + c] = T(0);
        continue;
      }
      const S* plane = p_ + n * sn_ + (c0 + c) * sc_;
      for (int64_t h = 0; h < H_; ++h)
        for (int64_t w = 0; w < W_; ++w) tile[(h * W_ + w) * L_ + c] = static_cast<T>(plane[h * sh_ + w * sw_]);
    }
  }

  // planes <- tile (channels below C).
  void store(const IsaKernels& isa, int64_t n, int64_t c0, const T* tile) {
    const int64_t nc = std::min(L_, C_ - c0);
    if (dense_) return run(isa, n, c0, nc, const_cast<T*>(tile), false);
    for (int64_t c = 0; c < nc; ++c) {
      S* plane = p_ + n * sn_ + (c0 + c) * sc_;
      for (int64_t h = 0; h < H_; ++h)
        for (int64_t w = 0; w < W_; ++w) plane[h * sh_ + w * sw_] = static_cast<S>(tile[(h * W_ + w) * L_ + c]);
    }
  }

 private:
  void run(const IsaKernels& isa, int64_t n, int64_t c0, int64_t nc, T* tile, bool to_tile) {
    if constexpr (kSame) {
      // The tile kernel takes mutable plane pointers; going in, it only reads them.
      for (int64_t c = 0; c < nc; ++c) planes_[c] = const_cast<T*>(p_ + n * sn_ + (c0 + c) * sc_);
      TileArgs<T> a;
      a.planes = planes_.data();
      a.nc = nc;
      a.n = H_ * W_;
      a.tile = tile;
      a.to_tile = to_tile;
      isa.tile(a);
    }
  }

  S* p_;
  int64_t sn_, sc_, sh_, sw_, C_, H_, W_, L_;
  bool dense_;
  std::vector<T*> planes_;
};

// Small NCHW planes (MobileNet's 7x7 to 56x56 stages) in blocks of L
// channels: a block's planes are transposed into a channels_last tile that
// stays in L1/L2, run through the channels_last row kernel and transposed
// back, so the tensor moves through memory once. Per plane, the plane path
// spent ~700 cycles in set-up for a 7x7 plane's ~60 multiply-add vectors,
// and a round trip of the whole tensor through channels_last moved it
// twice more.
template <typename In, typename T, typename Out>
void forward_blocked(const at::Tensor& input, const at::Tensor& weight, const Conv2dShape& s,
                     const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                     const c10::optional<at::Tensor>& shift, int act, at::Tensor& out,
                     const c10::optional<at::Tensor>& stats) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>();
  const RowForward<T> fwd(s, L, weight, bias, scale, shift, act);
  const int64_t blocks = fwd.cpad / L;
  StatsPartials partials(stats, fwd.cpad);
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) {
    PlaneTiles<const In, T> x(input, L);
    PlaneTiles<Out, T> y(out, L);
    std::vector<T> tin(x.pixels() * L), tout(y.pixels() * L);
    // Output row p's input rows in the tile: the same for every item.
    std::vector<const T*> rows(s.P * s.R);
    for (int64_t p = 0; p < s.P; ++p)
      for (int64_t kr = 0; kr < s.R; ++kr) {
        const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
        rows[p * s.R + kr] = ih >= 0 && ih < s.H ? tin.data() + ih * s.W * L : nullptr;
      }
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, c0 = item % blocks * L;
      x.load(isa, n, c0, tin.data());
      DwRowArgs<T> row = fwd.channels(c0, L, L);
      row.ep.stat_sum = partials.sum(c0);
      row.ep.stat_sq = partials.sq(c0);
      for (int64_t p = 0; p < s.P; ++p) {
        row.rows = rows.data() + p * s.R;
        row.out = tout.data() + p * s.Q * L;
        isa.dwrow(row);
      }
      y.store(isa, n, c0, tout.data());
    }
  });
  partials.finish(s.C, [](int64_t k) { return k; });
}

// Whether the blocked NCHW path's tiles (one block of input and output
// planes) fit in L2: larger planes run on the plane path, which measured as
// fast from 112x112 stride 1 up.
bool blocked_fits(const Conv2dShape& s) {
  return (s.H * s.W + s.P * s.Q) * isa_kernels().vec_bytes <= (int64_t(1) << 20);
}

// ---------------------------------------------------------------------------
// Input row `src` (W elements, xw apart) into `stride` zero-padded phase rows
// of prow elements: phase f's column j is input column j * stride + f - pad.
// The unit-stride cases are plain loops the compiler vectorises.
template <typename In, typename T>
void copy_phases(const In* src, int64_t W, int64_t xw, int64_t stride, int64_t pad, int64_t prow, T* dst) {
  for (int64_t f = 0; f < stride; ++f, dst += prow) {
    const int64_t a = pad - f, b = W - 1 + pad - f;  // a <= j * stride <= b
    const int64_t lo = std::min(prow, a <= 0 ? int64_t(0) : ceil_div(a, stride));
    const int64_t hi = std::max(lo, std::min(prow, b < 0 ? int64_t(0) : b / stride + 1));
    std::fill(dst, dst + lo, T(0));
    const In* s0 = src + (lo * stride + f - pad) * xw;
    T* d0 = dst + lo;
    const int64_t n = hi - lo;
    if (xw == 1 && stride == 1)
      for (int64_t j = 0; j < n; ++j) d0[j] = static_cast<T>(s0[j]);
    else if (xw == 1 && stride == 2)
      for (int64_t j = 0; j < n; ++j) d0[j] = static_cast<T>(s0[2 * j]);
    else
      for (int64_t j = 0; j < n; ++j) d0[j] = static_cast<T>(s0[j * stride * xw]);
    std::fill(dst + hi, dst + prow, T(0));
  }
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

  std::vector<int64_t> tap_off(s.S);
  for (int64_t ks = 0; ks < s.S; ++ks)
    tap_off[ks] = (ks * s.dil_w) % s.stride_w * prow + (ks * s.dil_w) / s.stride_w;
  constexpr bool direct = std::is_same_v<T, Out>;
  const bool in_place = direct && ow == 1;  // rows computed straight into out

  StatsPartials partials(stats, s.K);
  at::parallel_for(0, s.N * s.K * bands, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> phases, band_out(in_place ? 0 : kBand * s.Q);
    std::vector<const T*> rows(kBand * s.R);
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
      for (int64_t r = 0; r < nrows; ++r)
        copy_phases(plane + (ih_lo + r) * xh, s.W, xw, s.stride_w, s.pad_w, prow,
                    phases.data() + r * s.stride_w * prow);
      for (int64_t p = p0; p < p1; ++p)
        for (int64_t kr = 0; kr < s.R; ++kr) {
          const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
          rows[(p - p0) * s.R + kr] = ih >= 0 && ih < s.H ? phases.data() + (ih - ih_lo) * s.stride_w * prow : nullptr;
        }
      DwPlaneRowArgs<T> args;
      args.rows = rows.data();
      args.tap_off = tap_off.data();
      args.nout = p1 - p0;
      args.R = s.R;
      args.S = s.S;
      args.Q = s.Q;
      args.w = wsrc + k * RS;
      args.bias = bias_v.empty() ? T(0) : bias_v[k];
      args.scale = scale_v.empty() ? T(1) : scale_v[k];
      args.shift = shift_v.empty() ? T(0) : shift_v[k];
      args.act = act;
      args.stat_sum = partials.sum(k);
      args.stat_sq = partials.sq(k);
      Out* dst = op + n * on + k * ok + p0 * oh;
      if constexpr (direct) {
        if (in_place) {
          args.out = dst;
          args.out_rs = oh;
          isa.dwplane(args);
          continue;
        }
      }
      args.out = band_out.data();
      args.out_rs = s.Q;
      isa.dwplane(args);
      for (int64_t p = 0; p < p1 - p0; ++p)
        for (int64_t q = 0; q < s.Q; ++q) dst[p * oh + q * ow] = static_cast<Out>(band_out[p * s.Q + q]);
    }
  });
  partials.finish(s.K, [](int64_t k) { return k; });
}

// ---------------------------------------------------------------------------
// The indirect kernel's arguments for one input row of grad_input: W pixels
// of `channels` channels (their tap table and weights set per call).
template <typename T>
DwConvArgs<T> grad_input_row_args(const Conv2dShape& s, int64_t channels, int64_t cpad, const T* zero, T* const* c) {
  DwConvArgs<T> args;
  args.c = c;
  args.zero = zero;
  args.m = s.W;
  args.ntaps = s.taps();
  args.channels = channels;
  args.c_begin = 0;
  args.c_end = channels;
  args.cpad = cpad;
  return args;
}

// The order in which the indirect kernel visits a row's W pixels: grouped
// by (w + pad) % stride, the class that decides which kernel columns reach
// w (tap s does when (w + pad - s * dil) % stride == 0). Its blocks of
// neighbouring pixels then share their zero taps, which it skips; in
// natural order every block mixed the classes and a stride-2 3x3 kernel
// multiplied all three columns' taps, two thirds of them by zero vectors.
inline std::vector<int64_t> grad_input_pixel_order(const Conv2dShape& s) {
  std::vector<int64_t> order;
  order.reserve(s.W);
  for (int64_t cls = 0; cls < s.stride_w; ++cls)
    for (int64_t w = 0; w < s.W; ++w)
      if ((w + s.pad_w) % s.stride_w == cls) order.push_back(w);
  return order;
}

// Stride 1 with padding at most (k - 1) * dil: grad_input is the forward of
// grad_output on the flipped kernel with padding (k - 1) * dil - pad.
bool grad_input_as_forward(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && (s.R - 1) * s.dil_h >= s.pad_h && (s.S - 1) * s.dil_w >= s.pad_w;
}

// That forward's weight and shape.
std::pair<at::Tensor, Conv2dShape> grad_input_forward(const at::Tensor& grad_output, const at::Tensor& weight,
                                                      const Conv2dShape& s) {
  at::Tensor flipped = weight.flip({2, 3});
  const Conv2dShape fs =
      make_conv2d_shape(grad_output, flipped, {1, 1}, {(s.R - 1) * s.dil_h - s.pad_h, (s.S - 1) * s.dil_w - s.pad_w},
                        {s.dil_h, s.dil_w}, s.C);
  return {std::move(flipped), fs};
}

// grad_input of channels_last tensors by input rows (global n * H + h), so
// the fused backward can interleave them with the weight gradient's rows:
// the forward row kernel where grad_input_as_forward, else the indirect
// kernel, each row's pixels visited by stride class.
template <typename T>
class GradInputRows {
 public:
  // read_bytes: what the op reads besides dx (stream_output's rule).
  GradInputRows(const at::Tensor& dy, const at::Tensor& weight, const Conv2dShape& s, at::Tensor& dx,
                int64_t read_bytes)
      : s_(s), isa_(isa_kernels()), dyp_(dy.data_ptr<T>()), dxp_(dx.data_ptr<T>()), xn_(dx.stride(0)),
        xh_(dx.stride(2)), xw_(dx.stride(3)), cpad_(ceil_div(s.C, isa_.lanes<T>()) * isa_.lanes<T>()),
        stream_(stream_output<T>(dx, read_bytes)) {
    if (grad_input_as_forward(s)) {
      std::tie(flipped_, fs_) = grad_input_forward(dy, weight, s);
      fwd_.emplace(fs_, isa_.lanes<T>(), flipped_, c10::nullopt, c10::nullopt, c10::nullopt, 0);
      row_ = fwd_->channels(0, s.C, xw_);
      row_.stream = stream_;
      return;
    }
    wp_ = pack_depthwise_weight<T>(weight, s.taps(), cpad_);
    zeros_.assign(cpad_, T(0));
    order_ = grad_input_pixel_order(s);
    // The output column each (pixel, kernel column) reads, -1 for none: the
    // same for every row, so built once (per row it cost 3-13% of the op).
    qcol_.resize(s.W * s.S);
    for (int64_t i = 0; i < s.W; ++i)
      for (int64_t ks = 0; ks < s.S; ++ks)
        qcol_[i * s.S + ks] = conv_out_coord(order_[i], ks, s.stride_w, s.pad_w, s.dil_w, s.Q);
  }

  // One thread's scratch and its rows.
  class Worker {
   public:
    explicit Worker(const GradInputRows& g)
        : g_(g), a_(g.fwd_ ? 0 : g.s_.W * g.s_.taps()), c_(g.fwd_ ? 0 : g.s_.W) {
      row_ = g.row_;
      args_ = grad_input_row_args<T>(g.s_, g.s_.C, g.cpad_, g.zeros_.data(), c_.data());
      args_.a = a_.data();
      args_.w = g.wp_.data();
      args_.stream = g.stream_;
    }

    void rows(int64_t begin, int64_t end) {
      const GradInputRows& g = g_;
      const Conv2dShape& s = g.s_;
      if (g.fwd_) return forward_rows(g.isa_, g.fs_, g.dyp_, g.dxp_, g.xn_, g.xh_, row_, rows_, begin, end);
      const int64_t RS = s.taps();
      for (int64_t nh = begin; nh < end; ++nh) {
        const int64_t n = nh / s.H, h = nh % s.H;
        for (int64_t kr = 0; kr < s.R; ++kr) {
          // The output row whose tap kr read input row h, if any.
          const int64_t p = conv_out_coord(h, kr, s.stride_h, s.pad_h, s.dil_h, s.P);
          const T* dyrow = g.dyp_ + (n * s.P + p) * s.Q * s.C;
          for (int64_t i = 0; i < s.W; ++i)
            for (int64_t ks = 0; ks < s.S; ++ks) {
              const int64_t q = p < 0 ? -1 : g.qcol_[i * s.S + ks];
              a_[i * RS + kr * s.S + ks] = q >= 0 ? dyrow + q * s.C : g.zeros_.data();
            }
        }
        for (int64_t i = 0; i < s.W; ++i) c_[i] = g.dxp_ + n * g.xn_ + h * g.xh_ + g.order_[i] * g.xw_;
        g.isa_.dwconv(args_);
      }
    }

   private:
    const GradInputRows& g_;
    std::vector<const T*> rows_, a_;
    std::vector<T*> c_;
    DwRowArgs<T> row_;
    DwConvArgs<T> args_;
  };

 private:
  Conv2dShape s_, fs_;
  const IsaKernels& isa_;
  const T* dyp_;
  T* dxp_;
  int64_t xn_, xh_, xw_, cpad_;
  bool stream_;
  // grad_input_as_forward: the forward's operands on the flipped kernel.
  at::Tensor flipped_;
  c10::optional<RowForward<T>> fwd_;
  DwRowArgs<T> row_;
  // Indirect kernel.
  std::vector<T> wp_, zeros_;
  std::vector<int64_t> order_, qcol_;
};

template <typename T>
void grad_input_nhwc(const at::Tensor& dy, const at::Tensor& weight, const Conv2dShape& s, at::Tensor& dx) {
  const GradInputRows<T> gi(dy, weight, s, dx, dy.numel() * int64_t(sizeof(T)));
  at::parallel_for(0, s.N * s.H, 1, [&](int64_t begin, int64_t end) {
    typename GradInputRows<T>::Worker worker(gi);
    worker.rows(begin, end);
    store_fence();
  });
}

// Strided grad_input of NCHW planes that fit (see forward_blocked): per
// (image, block of L channels), the output-gradient planes are transposed
// into a channels_last tile, each input row gathers its taps from it (as
// grad_input_nhwc does) into a tile of grad_input, transposed back.
template <typename In, typename T>
void grad_input_blocked(const at::Tensor& grad_output, const at::Tensor& weight, const Conv2dShape& s,
                        at::Tensor& grad_input) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>(), RS = s.taps(), cpad = ceil_div(s.C, L) * L, blocks = cpad / L;
  const std::vector<T> wp = pack_depthwise_weight<T>(weight, RS, cpad);
  const std::vector<T> zeros(L, T(0));
  const std::vector<int64_t> order = grad_input_pixel_order(s);
  at::parallel_for(0, s.N * blocks, 1, [&](int64_t begin, int64_t end) {
    PlaneTiles<const In, T> dyt(grad_output, L);
    PlaneTiles<In, T> dxt(grad_input, L);
    std::vector<T> tdy(dyt.pixels() * L), tdx(dxt.pixels() * L);
    std::vector<const T*> a(s.H * s.W * RS);
    std::vector<T*> c(s.W);
    // The tap table depends on the shape alone: built once per thread.
    for (int64_t h = 0; h < s.H; ++h)
      for (int64_t kr = 0; kr < s.R; ++kr) {
        const int64_t p = conv_out_coord(h, kr, s.stride_h, s.pad_h, s.dil_h, s.P);
        for (int64_t i = 0; i < s.W; ++i)
          for (int64_t ks = 0; ks < s.S; ++ks) {
            const int64_t q = p < 0 ? -1 : conv_out_coord(order[i], ks, s.stride_w, s.pad_w, s.dil_w, s.Q);
            a[(h * s.W + i) * RS + kr * s.S + ks] = q >= 0 ? tdy.data() + (p * s.Q + q) * L : zeros.data();
          }
      }
    DwConvArgs<T> args = grad_input_row_args<T>(s, L, cpad, zeros.data(), c.data());
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, c0 = item % blocks * L;
      dyt.load(isa, n, c0, tdy.data());
      args.w = wp.data() + c0;
      for (int64_t h = 0; h < s.H; ++h) {
        args.a = a.data() + h * s.W * RS;
        for (int64_t i = 0; i < s.W; ++i) c[i] = tdx.data() + (h * s.W + order[i]) * L;
        isa.dwconv(args);
      }
      dxt.store(isa, n, c0, tdx.data());
    }
  });
}

// Weight-gradient partials of a fixed number of parts ([tap][cpad] and
// [cpad] each), summed in part order afterwards: deterministic for a given
// thread count, no atomics.
template <typename T>
struct WeightGradParts {
  int64_t RS, cpad;
  std::vector<T> w, b;

  WeightGradParts(int64_t nparts, int64_t RS_, int64_t cpad_)
      : RS(RS_), cpad(cpad_), w(nparts * RS_ * cpad_, T(0)), b(nparts * cpad_, T(0)) {}

  T* dw(int64_t part) { return w.data() + part * RS * cpad; }
  T* db(int64_t part) { return b.data() + part * cpad; }

  // The parts' sum into dw ([C, 1, R, S], any strides) and db.
  void finish(const Conv2dShape& s, at::Tensor& dw_out, at::Tensor* db_out) {
    const int64_t nparts = int64_t(b.size()) / cpad;
    for (int64_t part = 1; part < nparts; ++part) {
      for (int64_t i = 0; i < RS * cpad; ++i) w[i] += w[part * RS * cpad + i];
      for (int64_t i = 0; i < cpad; ++i) b[i] += b[part * cpad + i];
    }
    T* dwp = dw_out.data_ptr<T>();
    for (int64_t c = 0; c < s.C; ++c)
      for (int64_t t = 0; t < RS; ++t)
        dwp[c * dw_out.stride(0) + (t / s.S) * dw_out.stride(2) + (t % s.S) * dw_out.stride(3)] = w[t * cpad + c];
    if (db_out) {
      T* dbp = db_out->data_ptr<T>();
      for (int64_t c = 0; c < s.C; ++c) dbp[c * db_out->stride(0)] = b[c];
    }
  }
};

template <typename T>
DwWGradArgs<T> wgrad_args(const Conv2dShape& s, int64_t channels, int64_t cpad) {
  DwWGradArgs<T> args;
  args.R = s.R;
  args.S = s.S;
  args.W = s.W;
  args.Q = s.Q;
  args.C = channels;
  args.stride = s.stride_w;
  args.pad = s.pad_w;
  args.dil = s.dil_w;
  args.cpad = cpad;
  return args;
}

// Rows per kernel call when each row moves row_bytes: ~256 KB of rows stay
// in L2 while a kernel walks them once per channel vector.
inline int64_t l2_chunk_rows(int64_t row_bytes) {
  return std::max<int64_t>(1, std::min<int64_t>(64, (256 << 10) / std::max<int64_t>(row_bytes, 1)));
}

// The weight gradient of channels_last tensors by output rows (global
// n * P + p) into a fixed number of parts' partials. A kernel call takes
// `chunk()` rows: their input and gradient rows (~256 KB) stay in L2 while
// the kernel walks them once per channel vector.
template <typename T>
class WeightGradRows {
 public:
  WeightGradRows(const at::Tensor& dy, const at::Tensor& x, const Conv2dShape& s, int64_t nparts, bool bias)
      : s_(s),
        isa_(isa_kernels()),
        cpad_(ceil_div(s.C, isa_.lanes<T>()) * isa_.lanes<T>()),
        parts_(nparts, s.taps(), cpad_),
        bias_(bias),
        xp_(x.data_ptr<T>()),
        dyp_(dy.data_ptr<T>()) {
    chunk_ = l2_chunk_rows((s.stride_h * s.W + s.Q) * s.C * int64_t(sizeof(T)));
  }

  int64_t chunk() const { return chunk_; }
  void finish(at::Tensor& dw, at::Tensor* db) { parts_.finish(s_, dw, db); }

  class Worker {
   public:
    explicit Worker(WeightGradRows& g) : g_(g), in_rows_(g.chunk_ * g.s_.R), dy_rows_(g.chunk_) {
      args_ = wgrad_args<T>(g.s_, g.s_.C, g.cpad_);
      args_.rows = in_rows_.data();
      args_.dy = dy_rows_.data();
    }

    // Rows [begin, end) into part `part`'s partials.
    void rows(int64_t part, int64_t begin, int64_t end) {
      WeightGradRows& g = g_;
      const Conv2dShape& s = g.s_;
      args_.dw = g.parts_.dw(part);
      args_.db = g.bias_ ? g.parts_.db(part) : nullptr;
      for (int64_t np0 = begin; np0 < end; np0 += g.chunk_) {
        args_.nrows = std::min(g.chunk_, end - np0);
        for (int64_t i = 0; i < args_.nrows; ++i) {
          const int64_t n = (np0 + i) / s.P, p = (np0 + i) % s.P;
          kernel_row_inputs(s, g.xp_, n, p, in_rows_.data() + i * s.R);
          dy_rows_[i] = g.dyp_ + (n * s.P + p) * s.Q * s.C;
        }
        g.isa_.dwwgrad(args_);
      }
    }

   private:
    WeightGradRows& g_;
    std::vector<const T*> in_rows_, dy_rows_;
    DwWGradArgs<T> args_;
  };

 private:
  Conv2dShape s_;
  const IsaKernels& isa_;
  int64_t cpad_, chunk_;
  WeightGradParts<T> parts_;
  bool bias_;
  const T* xp_;
  const T* dyp_;
};

inline int64_t weight_grad_parts(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), rows));
}

template <typename T>
void grad_weight_nhwc(const at::Tensor& dy, const at::Tensor& x, const Conv2dShape& s, at::Tensor& dw,
                      at::Tensor* db) {
  const int64_t rows = s.N * s.P, nparts = weight_grad_parts(rows);
  WeightGradRows<T> gw(dy, x, s, nparts, db != nullptr);
  at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
    typename WeightGradRows<T>::Worker worker(gw);
    for (int64_t part = begin; part < end; ++part) worker.rows(part, part * rows / nparts, (part + 1) * rows / nparts);
  });
  gw.finish(dw, db);
}

// Both gradients of a 3x3 stride-1 dilation-1 kernel on ISAs with 32 vector
// registers: one register-resident pass per input row (isa.dwbwd3), each
// output-gradient vector loaded once per kernel row for both. Parts are
// ranges of input rows (global n * H + h); input row h also sums the bias
// gradient of output rows [ceil(h * P / H), ceil((h + 1) * P / H)), a
// partition of the output rows near it.
bool backward3_applies(const IsaKernels& isa, const Conv2dShape& s) {
  return isa.vec_regs >= 32 && s.R == 3 && s.S == 3 && s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 &&
         s.dil_w == 1;
}

template <typename T>
void backward3_nhwc(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const Conv2dShape& s,
                    at::Tensor& dx, at::Tensor& dw, at::Tensor* db) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>(), cpad = ceil_div(s.C, L) * L, C = s.C;
  TORCH_INTERNAL_ASSERT(dx.stride(3) == C && dx.stride(2) == s.W * C, "expected a dense channels_last grad_input");
  const std::vector<T> wp = pack_depthwise_weight<T>(weight, s.taps(), cpad);
  const std::vector<T> zeros(s.Q * C, T(0));  // the output row of a kernel row that reads no output row
  const int64_t rows = s.N * s.H, nparts = weight_grad_parts(rows);
  WeightGradParts<T> parts(nparts, s.taps(), cpad);
  // Input rows per kernel call, each with its grad_input and output-gradient row.
  const int64_t chunk = l2_chunk_rows((2 * s.W + s.Q) * C * int64_t(sizeof(T)));
  auto first_db = [&](int64_t h) { return ceil_div(h * s.P, s.H); };
  const int64_t db_per_row = ceil_div(s.P, s.H) + 1;
  const T* dyp = dy.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  DwBwdArgs<T> base;
  base.W = s.W;
  base.Q = s.Q;
  base.C = C;
  base.pad = s.pad_w;
  base.cpad = cpad;
  base.w = wp.data();
  base.stream = stream_output<T>(dx, (dy.numel() + x.numel()) * int64_t(sizeof(T)));
  at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> dyr(chunk * 3), xr(chunk), dbr(chunk * db_per_row);
    std::vector<T*> dxr(chunk);
    DwBwdArgs<T> a = base;
    a.dy = dyr.data();
    a.x = xr.data();
    a.dx = dxr.data();
    a.dbrows = dbr.data();
    for (int64_t part = begin; part < end; ++part) {
      a.dw = parts.dw(part);
      a.db = db ? parts.db(part) : nullptr;
      const int64_t last = (part + 1) * rows / nparts;
      for (int64_t nh0 = part * rows / nparts; nh0 < last; nh0 += chunk) {
        a.nrows = std::min(chunk, last - nh0);
        a.ndb = 0;
        for (int64_t i = 0; i < a.nrows; ++i) {
          const int64_t n = (nh0 + i) / s.H, h = (nh0 + i) % s.H;
          for (int64_t r = 0; r < 3; ++r) {
            const int64_t p = conv_out_coord(h, r, 1, s.pad_h, 1, s.P);
            dyr[i * 3 + r] = p >= 0 ? dyp + (n * s.P + p) * s.Q * C : zeros.data();
          }
          xr[i] = xp + (n * s.H + h) * s.W * C;
          dxr[i] = dxp + (n * s.H + h) * s.W * C;
          for (int64_t p = first_db(h); p < first_db(h + 1); ++p) dbr[a.ndb++] = dyp + (n * s.P + p) * s.Q * C;
        }
        isa.dwbwd3(a);
      }
    }
    store_fence();
  });
  parts.finish(s, dw, db);
}

// grad_input and the weight gradient in one pass over the output gradient:
// each thread takes its part's output rows a chunk at a time (within one
// image), reduces the chunk into its weight-gradient partials, then writes
// the input rows that the chunk's rows start (input rows p * stride up to
// the next chunk's), whose taps read the chunk's gradient rows again while
// they are in L2. Apart from the fused pass, dy would be read from memory
// twice; on tensors beyond the caches the backward is bound by that traffic.
template <typename T>
void backward_nhwc(const at::Tensor& dy, const at::Tensor& x, const at::Tensor& weight, const Conv2dShape& s,
                   at::Tensor& dx, at::Tensor& dw, at::Tensor* db) {
  if (backward3_applies(isa_kernels(), s)) return backward3_nhwc<T>(dy, x, weight, s, dx, dw, db);
  const int64_t rows = s.N * s.P, nparts = weight_grad_parts(rows);
  const GradInputRows<T> gi(dy, weight, s, dx, (dy.numel() + x.numel()) * int64_t(sizeof(T)));
  WeightGradRows<T> gw(dy, x, s, nparts, db != nullptr);
  // The first input row of output row p's share (rows are shared out by p * stride).
  auto first_input_row = [&](int64_t p) { return p == s.P ? s.H : std::min(s.H, p * s.stride_h); };
  at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
    typename GradInputRows<T>::Worker giw(gi);
    typename WeightGradRows<T>::Worker gww(gw);
    for (int64_t part = begin; part < end; ++part) {
      const int64_t last = (part + 1) * rows / nparts;
      for (int64_t np0 = part * rows / nparts; np0 < last;) {
        const int64_t n = np0 / s.P, np1 = std::min({last, np0 + gw.chunk(), (n + 1) * s.P});
        gww.rows(part, np0, np1);
        giw.rows(n * s.H + first_input_row(np0 - n * s.P), n * s.H + first_input_row(np1 - n * s.P));
        np0 = np1;
      }
    }
    store_fence();
  });
  gw.finish(dw, db);
}

// The weight gradient of NCHW planes that fit (see forward_blocked): per
// (image, block of L channels), the block's input and gradient planes are
// transposed into channels_last tiles and reduced by the channels_last
// kernel into the part's partials at the block's channels.
template <typename In, typename T>
void grad_weight_blocked(const at::Tensor& dy, const at::Tensor& x, const Conv2dShape& s, at::Tensor& dw,
                         at::Tensor* db) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>(), cpad = ceil_div(s.C, L) * L, blocks = cpad / L, items = s.N * blocks;
  const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  WeightGradParts<T> parts(nparts, s.taps(), cpad);
  at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
    PlaneTiles<const In, T> xt(x, L), dyt(dy, L);
    std::vector<T> tx(xt.pixels() * L), tdy(dyt.pixels() * L);
    std::vector<const T*> in_rows(s.P * s.R), dy_rows(s.P);
    for (int64_t p = 0; p < s.P; ++p) {
      dy_rows[p] = tdy.data() + p * s.Q * L;
      for (int64_t kr = 0; kr < s.R; ++kr) {
        const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
        in_rows[p * s.R + kr] = ih >= 0 && ih < s.H ? tx.data() + ih * s.W * L : nullptr;
      }
    }
    DwWGradArgs<T> args = wgrad_args<T>(s, L, cpad);
    args.rows = in_rows.data();
    args.dy = dy_rows.data();
    args.nrows = s.P;
    for (int64_t part = begin; part < end; ++part) {
      for (int64_t item = part * items / nparts; item < (part + 1) * items / nparts; ++item) {
        const int64_t n = item / blocks, c0 = item % blocks * L;
        xt.load(isa, n, c0, tx.data());
        dyt.load(isa, n, c0, tdy.data());
        args.dw = parts.dw(part) + c0;
        args.db = db ? parts.db(part) + c0 : nullptr;
        isa.dwwgrad(args);
      }
    }
  });
  parts.finish(s, dw, db);
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
  if (nhwc) {
    const at::Tensor x = as_nhwc(input, ct);
    OutBuffer ob(out, ct, at::MemoryFormat::ChannelsLast);
    if (ct == at::kDouble)
      forward_nhwc<double>(x, weight, s, bias, scale, shift, int(activation), ob.work(), stats);
    else
      forward_nhwc<float>(x, weight, s, bias, scale, shift, int(activation), ob.work(), stats);
    ob.commit();
    return;
  }
  // NCHW (and other layouts): planes up to about 112x112 stride 2 in blocks
  // of channels through the channels_last kernel, larger ones (and channel
  // multipliers) plane by plane.
  if (s.K == s.C && blocked_fits(s)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_conv2d_blocked", [&] {
      using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      forward_blocked<scalar_t, T, scalar_t>(input, weight, s, bias, scale, shift, int(activation), out, stats);
    });
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
  if (!channels_last_rows(grad_input) && blocked_fits(s)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "depthwise_grad_input", [&] {
      using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      if (grad_input_as_forward(s)) {
        const auto f = grad_input_forward(grad_output, weight, s);
        forward_blocked<scalar_t, T, scalar_t>(grad_output, f.first, f.second, c10::nullopt, c10::nullopt,
                                               c10::nullopt, 0, grad_input, c10::nullopt);
      } else {
        grad_input_blocked<scalar_t, T>(grad_output, weight, s, grad_input);
      }
    });
    return;
  }
  const at::Tensor dy = as_nhwc(grad_output, ct);
  OutBuffer ob(grad_input, ct, at::MemoryFormat::ChannelsLast);
  if (ct == at::kDouble)
    grad_input_nhwc<double>(dy, weight, s, ob.work());
  else
    grad_input_nhwc<float>(dy, weight, s, ob.work());
  ob.commit();
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
  WeightGradOut out(grad_weight, grad_bias, ct);
  if (!channels_last_rows(input) && blocked_fits(s)) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "depthwise_grad_weight", [&] {
      using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      grad_weight_blocked<scalar_t, T>(grad_output, input, s, out.weight(), out.bias());
    });
  } else {
    const at::Tensor dy = as_nhwc(grad_output, ct);
    const at::Tensor x = as_nhwc(input, ct);
    if (ct == at::kDouble)
      grad_weight_nhwc<double>(dy, x, s, out.weight(), out.bias());
    else
      grad_weight_nhwc<float>(dy, x, s, out.weight(), out.bias());
  }
  out.commit();
}

void depthwise_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& weight,
                               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                               at::Tensor& grad_input, at::Tensor& grad_weight,
                               const c10::optional<at::Tensor>& grad_bias) {
  EFFCONV_CHECK_CPU(grad_output);
  EFFCONV_CHECK_CPU(input);
  EFFCONV_CHECK_CPU(weight);
  EFFCONV_CHECK_SAME_DTYPE(grad_output, input);
  EFFCONV_CHECK_SAME_DTYPE(grad_output, weight);
  const Conv2dShape s = depthwise_shape(input, weight, stride, padding, dilation);
  EFFCONV_CHECK_SIZES(grad_output, s.N, s.K, s.P, s.Q);
  EFFCONV_CHECK_SIZES(grad_input, s.N, s.C, s.H, s.W);
  EFFCONV_CHECK_SIZES(grad_weight, s.K, 1, s.R, s.S);
  if (grad_bias.has_value()) EFFCONV_CHECK_SIZES((*grad_bias), s.K);
  // One pass where both would run channels_last rows; otherwise the two ops' own paths.
  if (s.K != s.C || grad_input.numel() == 0 || !channels_last_rows(input) || !channels_last_rows(grad_input)) {
    depthwise_conv2d_grad_input(grad_output, weight, stride, padding, dilation, grad_input);
    depthwise_conv2d_grad_weight(grad_output, input, stride, padding, dilation, grad_weight, grad_bias);
    return;
  }
  const at::ScalarType ct = compute_type(grad_output.scalar_type());
  const at::Tensor dy = as_nhwc(grad_output, ct);
  const at::Tensor x = as_nhwc(input, ct);
  OutBuffer oi(grad_input, ct, at::MemoryFormat::ChannelsLast);
  WeightGradOut out(grad_weight, grad_bias, ct);
  if (ct == at::kDouble)
    backward_nhwc<double>(dy, x, weight, s, oi.work(), out.weight(), out.bias());
  else
    backward_nhwc<float>(dy, x, weight, s, oi.work(), out.weight(), out.bias());
  oi.commit();
  out.commit();
}

}  // namespace cpu
}  // namespace effconv
