// Deformable convolution (DCNv1 / modulated DCNv2) on the CPU, channels_last.
//
// Forward, per tile of output pixels of one image: the ISA microkernel
// (ukernel/deform_impl.h) samples the tile's columns [pixels, groups, taps,
// channels/group] into a per-thread buffer (never a whole-tensor column
// buffer), then one GEMM per weight group on effconv's GEMM microkernels
// (the igemm/wgemm of the conv2d family, with the bias in the epilogue). Not
// ATen's BLAS: on this Zen 5 machine at::mm ran the N2 C256 64x64 layer's
// GEMM ([8192 x 2304] x [2304 x 256]) in 63 ms, oneDNN's conv of the same
// size in 26 ms, and the microkernels keep up with the latter.
//
// Backward, deterministic by construction (no atomics, and an order of
// summation fixed by the problem, not by the thread count): work is cut into
// chunks (an image, or a part of one for batches under 4); chunks are dealt
// to at most 8 slots that each own a grad_weight partial and run their chunks
// in order; chunks sharing an image scatter into their own input-gradient
// buffer. Partials are summed in slot order, part buffers in part order.
#include <algorithm>
#include <vector>

#include "common.h"
#include "effconv/deform.h"
#include "kernels.h"
#include "ukernel/api.h"
#include "weight_cache.h"

namespace effconv {
namespace cpu {
namespace {

// [N, P, Q, channels] contiguous in the compute dtype.
at::Tensor per_pixel(const at::Tensor& t, at::ScalarType ct) {
  return t.to(ct).permute({0, 2, 3, 1}).contiguous();
}

// Pixels per tile: the tile's columns stay near 1 MiB (L2-sized; 256 KiB
// tiles made the C=256 GEMMs too short to run at speed).
int64_t tile_pixels(const DeformShape& g, size_t elem) {
  const int64_t row = std::max<int64_t>(1, g.taps() * g.C * int64_t(elem));
  return std::clamp<int64_t>((1 << 20) / row, 16, 512);
}

template <typename T>
DeformColArgs<T> col_args(const DeformShape& g, const T* x, const T* off, const T* msk, int64_t pixel0, int64_t m,
                          std::vector<int64_t>& by, std::vector<int64_t>& bx, T* col) {
  by.resize(m);
  bx.resize(m);
  for (int64_t i = 0; i < m; ++i) {
    const int64_t p = (pixel0 + i) / g.Q, q = (pixel0 + i) % g.Q;
    by[i] = deform::base_coord(p, g.sh, g.ph, 0, g.dh);
    bx[i] = deform::base_coord(q, g.sw, g.pw, 0, g.dw);
  }
  DeformColArgs<T> a;
  a.x = x;
  a.H = g.H, a.W = g.W, a.C = g.C;
  a.m = m;
  a.base_y = by.data();
  a.base_x = bx.data();
  a.off_ps = 2 * g.OG * g.taps();
  a.offset = off + pixel0 * a.off_ps;
  a.mask_ps = g.OG * g.taps();
  a.mask = msk ? msk + pixel0 * a.mask_ps : nullptr;
  a.kh = g.kh, a.kw = g.kw, a.dil_h = g.dh, a.dil_w = g.dw;
  a.offset_groups = g.OG, a.groups = g.G;
  a.col = col;
  a.ldcol = g.taps() * g.C;
  return a;
}

// The weight of each group as microkernel panels [panel][rows][nr]: rows
// taps * C/G (the columns' order) by columns K/G for the forward, or
// transposed (rows K/G by columns taps * C/G) for the columns' gradient
// dY @ W_g^T. Zero beyond the last column.
template <typename T>
std::vector<T> pack_weight_panels(const at::Tensor& weight, const DeformShape& g, int64_t nr, bool transposed) {
  const at::Tensor w = contiguous_as<T>(weight);
  const T* ws = w.data_ptr<T>();
  const int64_t cg = g.cg(), kg = g.kg(), taps = g.taps(), kc = taps * cg;
  const int64_t rows = transposed ? kg : kc, cols = transposed ? kc : kg, npanels = ceil_div(cols, nr);
  std::vector<T> out(size_t(g.G * npanels * rows * nr), T(0));
  for (int64_t gi = 0; gi < g.G; ++gi)
    for (int64_t j = 0; j < kg; ++j) {
      const T* src = ws + (gi * kg + j) * cg * taps;  // [cg][taps]
      for (int64_t r = 0; r < kc; ++r) {
        const int64_t row = transposed ? j : r, col = transposed ? r : j;
        out[((gi * npanels + col / nr) * rows + row) * nr + col % nr] = src[(r % cg) * taps + r / cg];
      }
    }
  return out;
}

template <typename T>
void forward_typed(const DeformShape& g, const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                   const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias, at::Tensor& out) {
  const at::ScalarType ct = c10::CppTypeToScalarType<T>::value;
  const at::Tensor x = as_nhwc(input, ct), off = per_pixel(offset, ct);
  const bool has_mask = mask.has_value() && mask->defined();
  const at::Tensor msk = has_mask ? per_pixel(*mask, ct) : at::Tensor();
  const IsaKernels& isa = isa_kernels();
  const int lanes = isa.lanes<T>();
  const int64_t cg = g.cg(), kg = g.kg(), kc = g.taps() * cg, ldcol = g.taps() * g.C;
  const int nv = choose_nv(kg, lanes);
  const int64_t nr = int64_t(nv) * lanes, npanels = ceil_div(kg, nr), kpad = npanels * nr;
  // The GEMM is our microkernel (as in conv2d): ATen's BLAS ran this shape
  // (N2 C256 64x64: [8192 x 2304] x [2304 x 256]) at under half its speed.
  const auto wp = packed_weight<T>(weight, {3, g.G, kc, kg, nr},
                                  [&] { return pack_weight_panels<T>(weight, g, nr, false); });
  const std::vector<T> bias_p = padded_channel_vector<T>(bias, g.G, kg, kpad, T(0));
  const int64_t zero_b = 0;
  OutBuffer ob(out, ct);
  at::Tensor& o = ob.work();
  T* y = o.data_ptr<T>();
  const int64_t so[4] = {o.stride(0), o.stride(1), o.stride(2), o.stride(3)};
  const bool nhwc = so[1] == 1 && so[3] == g.K && so[2] == g.Q * g.K;
  const int64_t PQ = g.P * g.Q;
  const int64_t T_ = std::max<int64_t>(isa.mr(nv), tile_pixels(g, sizeof(T)) / isa.mr(nv) * isa.mr(nv));
  const int64_t tiles = ceil_div(PQ, T_);
  const ReductionBlocking rb = reduction_blocking(1, kc, nr, sizeof(T));
  IGemmArgs<T> args;
  args.ntaps = 1;
  args.kc = kc;
  args.b_off = &zero_b;
  args.panel_stride = kc * nr;
  args.nv = nv;
  args.tap_block = rb.taps;
  args.k_block = rb.k;
  args.ncols = kg;
  args.p_begin = 0;
  args.p_end = npanels;
  args.lda = ldcol;
  args.ldc = g.K;
  at::parallel_for(0, g.N * tiles, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> col(size_t(T_ * ldcol)), res(nhwc ? 0 : size_t(T_ * g.K));
    std::vector<int64_t> by, bx;
    for (int64_t job = begin; job < end; ++job) {
      const int64_t n = job / tiles, p0 = (job % tiles) * T_, m = std::min(T_, PQ - p0);
      const T* mk = has_mask ? msk.data_ptr<T>() + n * PQ * g.OG * g.taps() : nullptr;
      auto a = col_args<T>(g, x.data_ptr<T>() + n * g.H * g.W * g.C, off.data_ptr<T>() + n * PQ * 2 * g.OG * g.taps(),
                           mk, p0, m, by, bx, col.data());
      isa.deform_col(a);
      T* cdst = nhwc ? y + n * so[0] + p0 * g.K : res.data();
      for (int64_t gi = 0; gi < g.G; ++gi) {
        IGemmArgs<T> part = args;
        part.m = m;
        part.a_dense = col.data();
        part.a_off = gi * kc;
        part.b = wp->data() + gi * npanels * kc * nr;
        part.c_dense = cdst;
        part.c_off = gi * kg;
        part.ep.bias = bias_p.empty() ? nullptr : bias_p.data() + gi * kpad;
        isa.igemm(part);
      }
      if (nhwc) continue;
      for (int64_t k = 0; k < g.K; ++k) {  // per channel, the tile's pixels are (mostly) contiguous
        T* plane = y + n * so[0] + k * so[1];
        for (int64_t i = 0; i < m; ++i) {
          const int64_t p = (p0 + i) / g.Q, q = (p0 + i) % g.Q;
          plane[p * so[2] + q * so[3]] = res[i * g.K + k];
        }
      }
    }
  });
  ob.commit();
}

template <typename T>
void backward_typed(const DeformShape& g, const at::Tensor& grad_output, const at::Tensor& input,
                    const at::Tensor& offset, const at::Tensor& weight, const c10::optional<at::Tensor>& mask,
                    const c10::optional<at::Tensor>& grad_input, const c10::optional<at::Tensor>& grad_offset,
                    const c10::optional<at::Tensor>& grad_weight, const c10::optional<at::Tensor>& grad_mask,
                    const c10::optional<at::Tensor>& grad_bias) {
  const at::ScalarType ct = c10::CppTypeToScalarType<T>::value;
  auto want = [](const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const bool has_mask = want(mask);
  const bool w_gi = want(grad_input), w_go = want(grad_offset), w_gm = want(grad_mask) && has_mask;
  const bool w_gw = want(grad_weight), w_col_grad = w_gi || w_go || w_gm;
  if (want(grad_bias)) grad_bias->copy_(grad_output.sum({0, 2, 3}, false, ct));
  if (g.N == 0 || g.P * g.Q == 0) {
    for (const auto* t : {&grad_input, &grad_offset, &grad_weight, &grad_mask})
      if (want(*t)) (*t)->zero_();
    return;
  }
  if (!w_gw && !w_col_grad) return;
  const at::Tensor x = as_nhwc(input, ct), off = per_pixel(offset, ct), dy = as_nhwc(grad_output, ct);
  const at::Tensor msk = has_mask ? per_pixel(*mask, ct) : at::Tensor();
  const int64_t PQ = g.P * g.Q, HWC = g.H * g.W * g.C, taps = g.taps();
  const int64_t T_ = tile_pixels(g, sizeof(T)), tiles = ceil_div(PQ, T_);
  const int64_t ldcol = taps * g.C, kc = taps * g.cg();
  // Parts per image: batches under 4 split each image so both cores work.
  const int64_t parts = std::min<int64_t>(tiles, ceil_div(4, g.N));
  const int64_t chunks = g.N * parts, slots = std::min<int64_t>(chunks, 8);
  auto opt = at::TensorOptions().dtype(ct);
  at::Tensor gx = w_gi ? at::zeros({g.N, g.H, g.W, g.C}, opt) : at::Tensor();
  at::Tensor gx_parts = w_gi && parts > 1 ? at::zeros({g.N, parts, g.H, g.W, g.C}, opt) : at::Tensor();
  at::Tensor goff = w_go ? at::empty({g.N, g.P, g.Q, 2 * g.OG * taps}, opt) : at::Tensor();
  at::Tensor gmsk = w_gm ? at::empty({g.N, g.P, g.Q, g.OG * taps}, opt) : at::Tensor();
  // Both GEMMs run on the microkernels (as the forward does):
  //   grad_weight_g [taps*cg, kg] += cols_g^T @ dY_g  (wgemm; dY packed per tile)
  //   gcol_g [pixels, taps*cg]     = dY_g @ W_g^T      (igemm on packed W^T)
  const IsaKernels& isa = isa_kernels();
  const int lanes = isa.lanes<T>();
  const int64_t kg = g.kg();
  const int nv_w = choose_nv(kg, lanes);
  const int64_t nr_w = int64_t(nv_w) * lanes, np_w = ceil_div(kg, nr_w), kpad_w = np_w * nr_w;
  const int nv_c = choose_nv(kc, lanes);
  const int64_t nr_c = int64_t(nv_c) * lanes, np_c = ceil_div(kc, nr_c);
  const std::vector<T> wt = w_col_grad ? pack_weight_panels<T>(weight, g, nr_c, true) : std::vector<T>();
  const ReductionBlocking rb = reduction_blocking(1, kg, nr_c, sizeof(T));
  const int64_t zero_b = 0;
  std::vector<T> gw_slots(w_gw ? size_t(slots * g.G * kc * kpad_w) : 0, T(0));
  at::parallel_for(0, slots, 1, [&](int64_t s_begin, int64_t s_end) {
    std::vector<T> col(size_t(T_ * ldcol)), gcol(w_col_grad ? size_t(T_ * ldcol) : 0);
    std::vector<T> dpack(w_gw ? size_t(np_w * T_ * nr_w) : 0);
    std::vector<const T*> rows(w_gw ? size_t(T_) : 0);
    std::vector<int64_t> by, bx;
    for (int64_t s = s_begin; s < s_end; ++s) {
      for (int64_t chunk = s; chunk < chunks; chunk += slots) {
        const int64_t n = chunk / parts, part = chunk % parts;
        const int64_t t_begin = tiles * part / parts, t_end = tiles * (part + 1) / parts;
        T* gx_img = !w_gi ? nullptr
                    : parts > 1 ? gx_parts.data_ptr<T>() + (n * parts + part) * HWC
                                : gx.data_ptr<T>() + n * HWC;
        const T* dy_img = dy.data_ptr<T>() + n * PQ * g.K;
        const T* mk = has_mask ? msk.data_ptr<T>() + n * PQ * g.OG * taps : nullptr;
        for (int64_t t = t_begin; t < t_end; ++t) {
          const int64_t p0 = t * T_, m = std::min(T_, PQ - p0);
          auto a = col_args<T>(g, x.data_ptr<T>() + n * HWC, off.data_ptr<T>() + n * PQ * 2 * g.OG * taps, mk, p0,
                               m, by, bx, col.data());
          const T* dy_tile = dy_img + p0 * g.K;
          if (w_gw) {
            isa.deform_col(a);
            for (int64_t i = 0; i < m; ++i) rows[i] = col.data() + i * ldcol;
            for (int64_t gi = 0; gi < g.G; ++gi) {
              pack_row_panels(dy_tile + gi * kg, g.K, m, kg, nr_w, dpack.data());
              WGemmArgs<T> w;
              w.x = rows.data();
              w.x_off = gi * kc;
              w.m = m;
              w.ntaps = 1;
              w.cg = kc;
              w.d = dpack.data();
              w.d_panel_stride = m * nr_w;
              w.nv = nv_w;
              w.npanels = np_w;
              w.dw = gw_slots.data() + (s * g.G + gi) * kc * kpad_w;
              isa.wgemm(w);
            }
          }
          if (w_col_grad) {
            for (int64_t gi = 0; gi < g.G; ++gi) {
              IGemmArgs<T> c;
              c.a_dense = dy_tile;
              c.lda = g.K;
              c.a_off = gi * kg;
              c.m = m;
              c.ntaps = 1;
              c.kc = kg;
              c.b = wt.data() + gi * np_c * kg * nr_c;
              c.b_off = &zero_b;
              c.panel_stride = kg * nr_c;
              c.nv = nv_c;
              c.tap_block = rb.taps;
              c.k_block = rb.k;
              c.p_begin = 0;
              c.p_end = np_c;
              c.ncols = kc;
              c.c_dense = gcol.data();
              c.ldc = ldcol;
              c.c_off = gi * kc;
              isa.igemm(c);
            }
            a.gcol = gcol.data();
            a.grad_x = gx_img;
            a.grad_offset = w_go ? goff.data_ptr<T>() + (n * PQ + p0) * 2 * g.OG * taps : nullptr;
            a.grad_mask = w_gm ? gmsk.data_ptr<T>() + (n * PQ + p0) * g.OG * taps : nullptr;
            isa.deform_col_backward(a);
          }
        }
      }
    }
  });
  if (w_gi) {
    if (parts > 1) gx.copy_(gx_parts.sum(1));  // fixed order: part 0, 1, ...
    grad_input->copy_(gx.permute({0, 3, 1, 2}));
  }
  if (w_go) grad_offset->copy_(goff.permute({0, 3, 1, 2}));
  if (w_gm) grad_mask->copy_(gmsk.permute({0, 3, 1, 2}));
  else if (want(grad_mask)) grad_mask->zero_();
  if (w_gw) {
    const int64_t per_slot = g.G * kc * kpad_w;
    for (int64_t s = 1; s < slots; ++s)  // slot order: deterministic
      for (int64_t e = 0; e < per_slot; ++e) gw_slots[e] += gw_slots[s * per_slot + e];
    // [G, taps * cg, kpad] -> [K, cg, kh, kw]
    const at::Tensor gw = at::from_blob(gw_slots.data(), {g.G, g.kh, g.kw, g.cg(), kpad_w}, opt).narrow(4, 0, kg);
    grad_weight->copy_(gw.permute({0, 4, 3, 1, 2}).reshape({g.K, g.cg(), g.kh, g.kw}));
  }
}

}  // namespace

void deform_conv2d_forward(const at::Tensor& input, const at::Tensor& offset, const at::Tensor& weight,
                           const c10::optional<at::Tensor>& mask, const c10::optional<at::Tensor>& bias,
                           at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, at::Tensor& out) {
  EFFCONV_CHECK_CPU(input);
  const DeformShape g = make_deform_shape(input, offset, weight, mask, stride, padding, dilation);
  EFFCONV_CHECK_SIZES(out, g.N, g.K, g.P, g.Q);
  if (out.numel() == 0) return;
  if (compute_type(input.scalar_type()) == at::kDouble)
    forward_typed<double>(g, input, offset, weight, mask, bias, out);
  else
    forward_typed<float>(g, input, offset, weight, mask, bias, out);
}

void deform_conv2d_backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& offset,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& mask, at::IntArrayRef stride,
                            at::IntArrayRef padding, at::IntArrayRef dilation,
                            const c10::optional<at::Tensor>& grad_input, const c10::optional<at::Tensor>& grad_offset,
                            const c10::optional<at::Tensor>& grad_weight, const c10::optional<at::Tensor>& grad_mask,
                            const c10::optional<at::Tensor>& grad_bias) {
  EFFCONV_CHECK_CPU(input);
  const DeformShape g = make_deform_shape(input, offset, weight, mask, stride, padding, dilation);
  EFFCONV_CHECK_SIZES(grad_output, g.N, g.K, g.P, g.Q);
  if (grad_input.has_value() && grad_input->defined()) EFFCONV_CHECK_SIZES((*grad_input), g.N, g.C, g.H, g.W);
  if (grad_offset.has_value() && grad_offset->defined()) EFFCONV_CHECK_SIZES((*grad_offset), g.N, 2 * g.OG * g.taps(), g.P, g.Q);
  if (grad_weight.has_value() && grad_weight->defined()) EFFCONV_CHECK_SIZES((*grad_weight), g.K, g.cg(), g.kh, g.kw);
  if (grad_mask.has_value() && grad_mask->defined()) EFFCONV_CHECK_SIZES((*grad_mask), g.N, g.OG * g.taps(), g.P, g.Q);
  if (grad_bias.has_value() && grad_bias->defined()) EFFCONV_CHECK_SIZES((*grad_bias), g.K);
  if (compute_type(input.scalar_type()) == at::kDouble)
    backward_typed<double>(g, grad_output, input, offset, weight, mask, grad_input, grad_offset, grad_weight,
                           grad_mask, grad_bias);
  else
    backward_typed<float>(g, grad_output, input, offset, weight, mask, grad_input, grad_offset, grad_weight,
                          grad_mask, grad_bias);
}

}  // namespace cpu
}  // namespace effconv
