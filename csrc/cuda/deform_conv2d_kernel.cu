// Deformable convolution on CUDA, channels_last (NHWC).
//
// The sampling kernels put one thread on one (pixel, offset group, tap) and a
// vector of channels that share its offset and mask sample -- as DCNv4 does:
// the offset and mask are loaded and the corners computed once, and the four
// corner reads are 16-byte vector loads when the channel counts allow. The
// sampling rules and gradient formulas are effconv/deform.h's, shared with
// the CPU kernels (whose tests pin them to torchvision).
//
// Forward: sampled columns for a chunk of images ([pixels, groups, taps,
// C/groups], bounded in size) times the packed weight per group (cuBLAS via
// at::mm), bias on the way out. Backward: grad_weight from the recomputed
// columns (at::addmm), the columns' gradient dY @ W^T (at::mm), then
//   - default: one thread per sample reduces the offset and mask gradients
//     over its channels (no atomics) and scatters the input gradient with
//     float atomics;
//   - deterministic (torch.use_deterministic_algorithms(True)): the offset
//     and mask gradients as above, and the input gradient gathered instead
//     of scattered: every (sample, corner) contribution is keyed by the input
//     pixel it lands on, a stable sort groups them, and one thread per
//     (input pixel, channel vector) sums its contributions in sample order.
//     Bitwise reproducible; costs a sort of 4 keys per sample.
#include <ATen/ATen.h>
#include <ATen/AccumulateType.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "effconv/checks.h"
#include "effconv/conv2d_shape.h"
#include "effconv/deform.h"
#include "effconv/shapes.h"
#include "kernels.h"

namespace effconv {
namespace cuda {
namespace {

constexpr int kThreads = 256;

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Sample s = ((pixel * OG + og) * taps + t) of a chunk whose first pixel is
// global pixel `pixel0`: its corners and mask.
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ acc_t locate(const DeformShape& g, const scalar_t* __restrict__ off,
                                        const scalar_t* __restrict__ msk, int64_t pixel, int64_t og, int64_t t,
                                        deform::Corners<acc_t>& c) {
  const int64_t taps = g.taps();
  const int64_t pq = pixel % (g.P * g.Q);
  const int64_t p = pq / g.Q, q = pq % g.Q;
  const scalar_t* o = off + pixel * 2 * g.OG * taps + deform::offset_channel(og, taps, t);
  const acc_t y = acc_t(deform::base_coord(p, g.sh, g.ph, t / g.kw, g.dh)) + static_cast<acc_t>(o[0]);
  const acc_t x = acc_t(deform::base_coord(q, g.sw, g.pw, t % g.kw, g.dw)) + static_cast<acc_t>(o[1]);
  deform::corners<acc_t>(y, x, g.H, g.W, c);
  return msk ? static_cast<acc_t>(msk[pixel * g.OG * taps + deform::mask_channel(og, taps, t)]) : acc_t(1);
}

// Columns of pixels [pixel0, pixel0 + m): col[(i * G + grp) * taps + t][c'] (c' within the group).
template <typename scalar_t, typename acc_t, int V>
__global__ void im2col_kernel(DeformShape g, const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                              const scalar_t* __restrict__ msk, int64_t pixel0, int64_t m,
                              scalar_t* __restrict__ col) {
  const int64_t taps = g.taps(), vecs = g.cog() / V;
  const int64_t total = m * g.OG * taps * vecs;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t vi = idx % vecs;
    const int64_t t = (idx / vecs) % taps;
    const int64_t og = (idx / (vecs * taps)) % g.OG;
    const int64_t i = idx / (vecs * taps * g.OG);
    const int64_t pixel = pixel0 + i, n = pixel / (g.P * g.Q);
    deform::Corners<acc_t> c;
    const acc_t mk = locate<acc_t>(g, off, msk, pixel, og, t, c);
    const int64_t ch = og * g.cog() + vi * V;
    acc_t acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = acc_t(0);
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (c.idx[q] < 0) continue;
      const Vec<scalar_t, V> v =
          *reinterpret_cast<const Vec<scalar_t, V>*>(x + (n * g.H * g.W + c.idx[q]) * g.C + ch);
      const acc_t w = mk * c.w[q];
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += w * static_cast<acc_t>(v.v[k]);
    }
    const int64_t grp = ch / g.cg();
    Vec<scalar_t, V> outv;
#pragma unroll
    for (int k = 0; k < V; ++k) outv.v[k] = static_cast<scalar_t>(acc[k]);
    *reinterpret_cast<Vec<scalar_t, V>*>(col + ((i * g.G + grp) * taps + t) * g.cg() + (ch - grp * g.cg())) = outv;
  }
}

// Per sample: offset/mask gradients over the offset group's channels and,
// when gx is set, the input gradient scattered with atomics.
template <typename scalar_t, typename acc_t, int V>
__global__ void col2im_kernel(DeformShape g, const scalar_t* __restrict__ x, const scalar_t* __restrict__ off,
                              const scalar_t* __restrict__ msk, const scalar_t* __restrict__ gcol, int64_t pixel0,
                              int64_t m, acc_t* __restrict__ gx, acc_t* __restrict__ goff, acc_t* __restrict__ gmsk) {
  const int64_t taps = g.taps(), total = m * g.OG * taps;
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t t = idx % taps, og = (idx / taps) % g.OG, i = idx / (taps * g.OG);
    const int64_t pixel = pixel0 + i, n = pixel / (g.P * g.Q);
    deform::Corners<acc_t> c;
    const acc_t mk = locate<acc_t>(g, off, msk, pixel, og, t, c);
    acc_t d[4] = {acc_t(0), acc_t(0), acc_t(0), acc_t(0)};
    for (int64_t ch = og * g.cog(); ch < (og + 1) * g.cog(); ch += V) {
      const int64_t grp = ch / g.cg();
      const Vec<scalar_t, V> gv =
          *reinterpret_cast<const Vec<scalar_t, V>*>(gcol + ((i * g.G + grp) * taps + t) * g.cg() + (ch - grp * g.cg()));
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        if (c.idx[q] < 0) continue;
        const int64_t base = (n * g.H * g.W + c.idx[q]) * g.C + ch;
        const Vec<scalar_t, V> v = *reinterpret_cast<const Vec<scalar_t, V>*>(x + base);
        const acc_t w = mk * c.w[q];
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const acc_t gk = static_cast<acc_t>(gv.v[k]);
          d[q] += gk * static_cast<acc_t>(v.v[k]);
          if (gx) atomicAdd(gx + base + k, w * gk);
        }
      }
    }
    acc_t gy, gxo, gm;
    deform::point_grads<acc_t, acc_t>(c, d, mk, &gy, &gxo, &gm);
    if (goff) {
      acc_t* o = goff + pixel * 2 * g.OG * taps + deform::offset_channel(og, taps, t);
      o[0] = gy;
      o[1] = gxo;
    }
    if (gmsk) gmsk[pixel * g.OG * taps + deform::mask_channel(og, taps, t)] = gm;
  }
}

// Deterministic input gradient, step 1: the key of every (sample, corner) of
// the chunk: (image-local input pixel * OG + og), or INT64_MAX off the image.
template <typename scalar_t, typename acc_t>
__global__ void corner_keys_kernel(DeformShape g, const scalar_t* __restrict__ off, int64_t pixel0, int64_t m,
                                   int64_t* __restrict__ keys) {
  const int64_t taps = g.taps(), total = m * g.OG * taps;
  const int64_t img0 = pixel0 / (g.P * g.Q);
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t t = idx % taps, og = (idx / taps) % g.OG, i = idx / (taps * g.OG);
    const int64_t pixel = pixel0 + i, n = pixel / (g.P * g.Q) - img0;
    deform::Corners<acc_t> c;
    locate<acc_t>(g, off, static_cast<const scalar_t*>(nullptr), pixel, og, t, c);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      keys[idx * 4 + q] = c.idx[q] < 0 ? INT64_MAX : ((n * g.H * g.W + c.idx[q]) * g.OG + og);
  }
}

// Step 2: one thread per (input pixel, offset group, channel vector) sums
// its sorted contributions in sample order.
template <typename scalar_t, typename acc_t, int V>
__global__ void gather_grad_input_kernel(DeformShape g, const scalar_t* __restrict__ off, const scalar_t* __restrict__ msk,
                                         const scalar_t* __restrict__ gcol, int64_t pixel0, int64_t n_images,
                                         const int64_t* __restrict__ order, const int64_t* __restrict__ starts,
                                         acc_t* __restrict__ gx) {
  const int64_t taps = g.taps(), vecs = g.cog() / V;
  const int64_t dests = n_images * g.H * g.W * g.OG, total = dests * vecs;
  const int64_t img0 = pixel0 / (g.P * g.Q);
  for (int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += int64_t(blockDim.x) * gridDim.x) {
    const int64_t vi = idx % vecs, dest = idx / vecs;
    const int64_t og = dest % g.OG, hw_n = dest / g.OG;  // image-local n * H * W + pixel
    const int64_t ch = og * g.cog() + vi * V, grp = ch / g.cg();
    acc_t acc[V];
#pragma unroll
    for (int k = 0; k < V; ++k) acc[k] = acc_t(0);
    const int64_t end = starts[dest + 1];  // starts has dests + 1 entries: off-image keys sort past the last
    for (int64_t j = starts[dest]; j < end; ++j) {
      const int64_t src = order[j], sample = src / 4;
      const int q = int(src % 4);
      const int64_t t = sample % taps, i = sample / (taps * g.OG);
      deform::Corners<acc_t> c;
      const acc_t mk = locate<acc_t>(g, off, msk, pixel0 + i, og, t, c);
      // select, not c.w[q]: a run-time index would put the struct in local memory
      const acc_t w = mk * (q == 0 ? c.w[0] : q == 1 ? c.w[1] : q == 2 ? c.w[2] : c.w[3]);
      const Vec<scalar_t, V> gv =
          *reinterpret_cast<const Vec<scalar_t, V>*>(gcol + ((i * g.G + grp) * taps + t) * g.cg() + (ch - grp * g.cg()));
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k] += w * static_cast<acc_t>(gv.v[k]);
    }
    acc_t* dst = gx + (img0 * g.H * g.W + hw_n) * g.C + ch;
#pragma unroll
    for (int k = 0; k < V; ++k) dst[k] = acc[k];
  }
}

int blocks_for(int64_t work) {
  return int(std::min<int64_t>(std::max<int64_t>(1, (work + kThreads - 1) / kThreads), 65535 * 8));
}

// Channels per thread: a 16-byte vector when every run of channels a thread
// touches (offset group, weight group) is a whole number of vectors.
template <typename scalar_t>
int vector_width(const DeformShape& g) {
  const int v = int(16 / sizeof(scalar_t));
  return (g.cog() % v == 0 && g.cg() % v == 0 && g.C % v == 0) ? v : 1;
}

// Images per chunk: the chunk's column buffer stays within 256 MiB.
int64_t images_per_chunk(const DeformShape& g, size_t elem) {
  const int64_t per_image = std::max<int64_t>(1, g.P * g.Q * g.taps() * g.C * int64_t(elem));
  return std::clamp<int64_t>((int64_t(256) << 20) / per_image, 1, std::max<int64_t>(g.N, 1));
}

at::Tensor per_pixel(const at::Tensor& t) { return t.permute({0, 2, 3, 1}).contiguous(); }

// weight [K, C/G, kh, kw] -> [G, taps * C/G, K/G] (the columns' order)
at::Tensor pack_weight(const at::Tensor& weight, const DeformShape& g) {
  return weight.view({g.G, g.kg(), g.cg(), g.kh, g.kw}).permute({0, 3, 4, 2, 1}).contiguous().view(
      {g.G, g.taps() * g.cg(), g.kg()});
}

template <typename scalar_t, typename acc_t, int V>
void launch_im2col(const DeformShape& g, const at::Tensor& x, const at::Tensor& off, const scalar_t* msk, int64_t pixel0,
                   int64_t m, at::Tensor& col) {
  const int64_t work = m * g.OG * g.taps() * (g.cog() / V);
  im2col_kernel<scalar_t, acc_t, V><<<blocks_for(work), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      g, x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), msk, pixel0, m, col.data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename acc_t, int V>
void forward_typed(const DeformShape& g, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast), off = per_pixel(offset);
  const bool has_mask = mask.has_value() && mask->defined();
  const at::Tensor msk = has_mask ? per_pixel(*mask) : at::Tensor();
  const at::Tensor wp = pack_weight(weight, g);
  const int64_t PQ = g.P * g.Q, kc = g.taps() * g.cg(), ldcol = g.taps() * g.C;
  const int64_t chunk = images_per_chunk(g, sizeof(scalar_t));
  at::Tensor out_nhwc = out.permute({0, 2, 3, 1});  // a view: writes land in `out` whatever its layout
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t imgs = std::min(chunk, g.N - n0), m = imgs * PQ;
    at::Tensor col = at::empty({m, ldcol}, x.options().memory_format(at::MemoryFormat::Contiguous));
    launch_im2col<scalar_t, acc_t, V>(g, x, off, has_mask ? msk.data_ptr<scalar_t>() : nullptr, n0 * PQ, m, col);
    at::Tensor res = at::empty({m, g.K}, col.options());
    for (int64_t gi = 0; gi < g.G; ++gi) {
      at::Tensor dst = res.narrow(1, gi * g.kg(), g.kg());
      at::mm_out(dst, col.narrow(1, gi * kc, kc), wp[gi]);
    }
    if (bias.has_value() && bias->defined()) res.add_(*bias);
    out_nhwc.narrow(0, n0, imgs).copy_(res.view({imgs, g.P, g.Q, g.K}));
  }
}

template <typename scalar_t, typename acc_t, int V>
void backward_typed(const DeformShape& g, const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                    const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                    const c10::optional<at::Tensor>& grad_input, const c10::optional<at::Tensor>& grad_offset,
                    const c10::optional<at::Tensor>& grad_weight, const c10::optional<at::Tensor>& grad_mask,
                    bool deterministic) {
  auto want = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const bool has_mask = want(mask);
  const bool w_gi = want(grad_input), w_go = want(grad_offset), w_gm = want(grad_mask) && has_mask;
  const bool w_gw = want(grad_weight), w_cols = w_gi || w_go || w_gm;
  const at::Tensor x = input.contiguous(at::MemoryFormat::ChannelsLast), off = per_pixel(offset);
  const at::Tensor msk = has_mask ? per_pixel(*mask) : at::Tensor();
  const scalar_t* mp = has_mask ? msk.data_ptr<scalar_t>() : nullptr;
  const at::Tensor dy = grad_output.permute({0, 2, 3, 1}).contiguous();  // [N, P, Q, K]
  const at::Tensor wp = pack_weight(weight, g);
  const int64_t PQ = g.P * g.Q, taps = g.taps(), kc = taps * g.cg(), ldcol = taps * g.C;
  const auto acc_opts = x.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  at::Tensor gx = w_gi ? at::zeros({g.N, g.H, g.W, g.C}, acc_opts) : at::Tensor();
  at::Tensor goff = w_go ? at::empty({g.N, g.P, g.Q, 2 * g.OG * taps}, acc_opts) : at::Tensor();
  at::Tensor gmsk = w_gm ? at::empty({g.N, g.P, g.Q, g.OG * taps}, acc_opts) : at::Tensor();
  at::Tensor gw = w_gw ? at::zeros({g.G, kc, g.kg()}, acc_opts) : at::Tensor();
  const int64_t chunk = images_per_chunk(g, sizeof(scalar_t));
  auto stream = at::cuda::getCurrentCUDAStream();
  for (int64_t n0 = 0; n0 < g.N; n0 += chunk) {
    const int64_t imgs = std::min(chunk, g.N - n0), m = imgs * PQ, pixel0 = n0 * PQ;
    const at::Tensor dyc = dy.view({g.N * PQ, g.K}).narrow(0, pixel0, m);
    if (w_gw) {
      at::Tensor col = at::empty({m, ldcol}, x.options().memory_format(at::MemoryFormat::Contiguous));
      launch_im2col<scalar_t, acc_t, V>(g, x, off, mp, pixel0, m, col);
      for (int64_t gi = 0; gi < g.G; ++gi)
        gw[gi].add_(at::mm(col.narrow(1, gi * kc, kc).t(), dyc.narrow(1, gi * g.kg(), g.kg())));
    }
    if (!w_cols) continue;
    at::Tensor gcol = at::empty({m, ldcol}, x.options().memory_format(at::MemoryFormat::Contiguous));
    for (int64_t gi = 0; gi < g.G; ++gi) {
      at::Tensor dst = gcol.narrow(1, gi * kc, kc);
      at::mm_out(dst, dyc.narrow(1, gi * g.kg(), g.kg()), wp[gi].t());
    }
    const bool scatter = w_gi && !deterministic;
    const int64_t samples = m * g.OG * taps;
    col2im_kernel<scalar_t, acc_t, V><<<blocks_for(samples), kThreads, 0, stream>>>(
        g, x.data_ptr<scalar_t>(), off.data_ptr<scalar_t>(), mp, gcol.data_ptr<scalar_t>(), pixel0, m,
        scatter ? gx.data_ptr<acc_t>() : nullptr, w_go ? goff.data_ptr<acc_t>() : nullptr,
        w_gm ? gmsk.data_ptr<acc_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (w_gi && deterministic) {
      at::Tensor keys = at::empty({samples * 4}, x.options().dtype(at::kLong));
      corner_keys_kernel<scalar_t, acc_t><<<blocks_for(samples), kThreads, 0, stream>>>(
          g, off.data_ptr<scalar_t>(), pixel0, m, keys.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      auto sorted = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
      const at::Tensor& skeys = std::get<0>(sorted);
      const at::Tensor& order = std::get<1>(sorted);
      const int64_t dests = imgs * g.H * g.W * g.OG;
      const at::Tensor starts = at::searchsorted(skeys, at::arange(dests + 1, keys.options()));
      gather_grad_input_kernel<scalar_t, acc_t, V><<<blocks_for(dests * (g.cog() / V)), kThreads, 0, stream>>>(
          g, off.data_ptr<scalar_t>(), mp, gcol.data_ptr<scalar_t>(), pixel0, imgs, order.data_ptr<int64_t>(),
          starts.data_ptr<int64_t>(), gx.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  if (w_gi) grad_input->copy_(gx.permute({0, 3, 1, 2}));
  if (w_go) grad_offset->copy_(goff.permute({0, 3, 1, 2}));
  if (w_gm) grad_mask->copy_(gmsk.permute({0, 3, 1, 2}));
  else if (want(grad_mask)) grad_mask->zero_();
  if (w_gw)
    grad_weight->copy_(gw.view({g.G, g.kh, g.kw, g.cg(), g.kg()}).permute({0, 4, 3, 1, 2}).reshape(
        {g.K, g.cg(), g.kh, g.kw}));
}

template <typename F>
void dispatch_vector(int v, const F& f) {
  if (v == 8) f(std::integral_constant<int, 8>());
  else if (v == 4) f(std::integral_constant<int, 4>());
  else if (v == 2) f(std::integral_constant<int, 2>());
  else f(std::integral_constant<int, 1>());
}

}  // namespace

void deform_conv2d_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& out) {
  EFFCONV_CHECK_CUDA(input);
  const DeformShape g = make_deform_shape(input, offset, weight, mask, stride, padding, dilation);
  EFFCONV_CHECK_SIZES(out, g.N, g.K, g.P, g.Q);
  if (out.numel() == 0) return;
  const c10::cuda::CUDAGuard guard(input.device());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_forward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    dispatch_vector(vector_width<scalar_t>(g), [&](auto v) {
      forward_typed<scalar_t, acc_t, decltype(v)::value>(g, input, offset, weight, mask, bias, out);
    });
  });
}

void deform_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation,
                            const c10::optional<at::Tensor>& grad_input, const c10::optional<at::Tensor>& grad_offset,
                            const c10::optional<at::Tensor>& grad_weight, const c10::optional<at::Tensor>& grad_mask,
                            const c10::optional<at::Tensor>& grad_bias, bool deterministic) {
  EFFCONV_CHECK_CUDA(input);
  const DeformShape g = make_deform_shape(input, offset, weight, mask, stride, padding, dilation);
  EFFCONV_CHECK_SIZES(grad_output, g.N, g.K, g.P, g.Q);
  const c10::cuda::CUDAGuard guard(input.device());
  if (grad_bias.has_value() && grad_bias->defined())
    grad_bias->copy_(grad_output.sum({0, 2, 3}, false, at::toAccumulateType(input.scalar_type(), true)));
  if (g.N == 0) {
    for (const auto* t : {&grad_input, &grad_offset, &grad_weight, &grad_mask})
      if (t->has_value() && (*t)->defined()) (*t)->zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "deform_conv2d_backward_cuda", [&] {
    using acc_t = at::acc_type<scalar_t, true>;
    dispatch_vector(vector_width<scalar_t>(g), [&](auto v) {
      backward_typed<scalar_t, acc_t, decltype(v)::value>(g, grad_output, input, offset, weight, mask, grad_input,
                                                          grad_offset, grad_weight, grad_mask, deterministic);
    });
  });
}

}  // namespace cuda
}  // namespace effconv
