// effconv::conv2d on the CPU: the implicit-GEMM family (1x1, grouped,
// dilated, strided, dense) as indirect GEMMs over channels_last tensors.
//
//   forward      rows = output pixels,  reduction = taps x Cin/g,  columns = Cout/g
//   grad_input   rows = input pixels of one stride-residue class, reduction =
//                the taps that reach that class x Cout/g, columns = Cin/g
//   grad_weight  rows = taps x Cin/g, reduction = output pixels, columns = Cout/g
//
// Each work item builds the indirection (row, tap) -> pointer for a tile of
// rows, then the ISA microkernels do the arithmetic and the fused epilogue.
// No im2col buffer exists at any size.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common.h"
#include "effconv/epilogue.h"
#include "kernels.h"
#include "weight_cache.h"
#include "ukernel/api.h"

namespace effconv {
namespace cpu {
namespace {

// Rows per tile: the tile's A operand (rows x reduction block) should stay
// in L2 while every column panel streams past it. Tiles are then evened out
// over the rows: with a static schedule a short last tile leaves a thread
// idle, and so does a tile count that is not a multiple of the threads when
// there are few (batch-1 layers with one column panel: 7 tiles on 2 threads
// ran 4 against 3).
int64_t rows_per_tile(int64_t rows_total, int64_t reduction, int64_t elem_bytes, int mr) {
  const int64_t budget = 192 * 1024;
  int64_t rows = budget / std::max<int64_t>(1, reduction * elem_bytes);
  rows = std::min<int64_t>(std::max<int64_t>(rows, mr), 1024);
  rows = std::max<int64_t>(mr, rows / mr * mr);
  int64_t tiles = std::max<int64_t>(1, ceil_div(rows_total, rows));
  const int64_t threads = at::get_num_threads();
  if (tiles < 8 * threads) tiles = std::min(ceil_div(tiles, threads) * threads, ceil_div(rows_total, int64_t(mr)));
  return std::max<int64_t>(mr, ceil_div(ceil_div(rows_total, tiles), mr) * mr);
}

// Split groups or column panels when there are too few row tiles for an even
// static schedule (at::parallel_for hands each thread one contiguous range):
// batch-1 inference, 7x7 feature maps.
void split_columns(int64_t tiles, int64_t groups, int64_t npanels, int64_t& gsplit, int64_t& psplit) {
  const int64_t threads = at::get_num_threads();
  gsplit = psplit = 1;
  if (threads == 1 || tiles >= 8 * threads) return;
  const int64_t need = ceil_div(8 * threads, tiles);
  if (groups > 1)
    gsplit = std::min(groups, need);
  else
    psplit = std::min(npanels, need);
}

// Small groups (ResNeXt's 4 or 8 channels per group) would leave most lanes
// of every output vector empty and make each GEMM call tiny. Coalescing `gs`
// neighbouring groups into one block-diagonal super-group costs the same
// multiply-adds (the zero blocks replace the empty lanes) but runs full-width
// vectors over a gs-times longer reduction with gs-times fewer calls.
struct GroupPlan {
  int64_t groups, cg, kg;  // original groups, in/out channels per group
  int64_t gs;              // groups per super-group
  int64_t sgroups, scg, skg;
  // Block-diagonal membership: output channel k of a super-group reads its
  // input channels [first_input(k), first_input(k) + cg).
  int64_t first_input(int64_t k) const { return k / kg * cg; }
};

GroupPlan plan_groups(const Conv2dShape& s, int64_t cols_per_group, int lanes) {
  GroupPlan p{s.groups, s.cin_per_group(), s.cout_per_group(), 1, 0, 0, 0};
  for (int64_t gs = s.groups; gs > 1; --gs)
    if (s.groups % gs == 0 && gs * cols_per_group <= lanes) {
      p.gs = gs;
      break;
    }
  p.sgroups = s.groups / p.gs;
  p.scg = p.cg * p.gs;
  p.skg = p.kg * p.gs;
  return p;
}

// A 1x1, stride-1, unpadded conv whose output (forward) or grad_input is
// channels_last is a plain GEMM over [N*H*W, channels]: rows are affine, so
// no indirection is built. `stride` is that output's; its rows may be wider
// than `channels` (a channel range of a concatenation).
bool plain_gemm(const Conv2dShape& s, const int64_t* stride, int64_t channels) {
  return s.taps() == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0 && stride[1] == 1 &&
         stride[3] >= channels && stride[2] == s.W * stride[3] && stride[0] == s.H * s.W * stride[3];
}

// Non-temporal stores pay for outputs much larger than L2, and need every
// row start (row pitch ld) and panel (nr columns) 64-byte aligned.
template <typename T>
bool stream_rows(const T* out, int64_t numel, int64_t ld, int64_t nr) {
  const int64_t sz = sizeof(T);
  return numel * sz > (8 << 20) && (ld * sz) % 64 == 0 && reinterpret_cast<uintptr_t>(out) % 64 == 0 &&
         (nr * sz) % 64 == 0;
}

// Runs every (row tile, column split) work item over the threads. A tile's
// indirection, `build(tile, a, c) -> rows`, is built once per tile by the
// thread that owns it; `compute(tile, split, rows, a, c)` then runs the
// microkernels. Items of one tile are adjacent, so a static schedule keeps
// them on one thread.
template <typename T, typename Build, typename Compute>
void for_each_tile(int64_t tiles, int64_t max_rows, int64_t max_taps, int64_t splits, const Build& build,
                   const Compute& compute) {
  at::parallel_for(0, tiles * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> a(max_rows * std::max<int64_t>(max_taps, 1));
    std::vector<T*> c(max_rows);
    int64_t built = -1, rows = 0;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t tile = item / splits;
      if (tile != built) {
        rows = build(tile, a.data(), c.data());
        built = tile;
      }
      compute(tile, item % splits, rows, a.data(), c.data());
    }
    store_fence();
  });
}

// A conv's output rows pooled band by band (conv2d_max_pool2d_forward): each
// work item is a band of pool output rows of one image; its thread computes
// the conv rows under the band into a buffer (`build` and `compute` as in
// for_each_tile, on pixel ranges; compute writes where `c` points) and pools
// them into `y` while they are in L2, so the conv's output never reaches
// memory. Consecutive bands on one thread carry their shared rows over
// instead of recomputing them.
template <typename T, typename Build, typename Compute>
void pooled_rows(const Conv2dShape& s, const Pool2dShape& ps, int64_t max_rows, int64_t max_taps, int64_t splits,
                 const Build& build, const Compute& compute, T* y) {
  const IsaKernels& isa = isa_kernels();
  const int64_t row_elems = s.Q * s.K, PQ = s.P * s.Q;
  // Bands of ~256 KiB of conv rows (half of the smallest L2 we target), cut
  // further so every thread gets several bands at batch 1.
  const int64_t fit = std::max<int64_t>(1, ((256 << 10) / int64_t(sizeof(T)) / row_elems - ps.kh * ps.dh) / ps.sh + 1);
  const int64_t spread = ceil_div(s.N * ps.P, 4 * int64_t(at::get_num_threads()));
  const int64_t band = std::max<int64_t>(1, std::min({fit, spread, ps.P}));
  const int64_t bands = ceil_div(ps.P, band);
  const int64_t span = std::min(s.P, (band - 1) * ps.sh + (ps.kh - 1) * ps.dh + 1);
  at::parallel_for(0, s.N * bands, 1, [&](int64_t begin, int64_t end) {
    thread_local std::vector<T> buf;
    if (buf.size() < size_t(span * row_elems)) buf.resize(span * row_elems);
    std::vector<const T*> a(max_rows * std::max<int64_t>(max_taps, 1));
    std::vector<T*> c(max_rows);
    int64_t img = -1, lo_prev = 0, hi_prev = 0;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / bands, r0 = item % bands * band, r1 = std::min(ps.P, r0 + band);
      // Conv rows [lo, hi) under pool rows [r0, r1), at buf[(row - lo) * row_elems].
      const int64_t lo = std::max<int64_t>(0, r0 * ps.sh - ps.ph);
      const int64_t hi = std::min(s.P, (r1 - 1) * ps.sh - ps.ph + (ps.kh - 1) * ps.dh + 1);
      int64_t from = lo;
      if (n == img && hi_prev > lo) {
        std::memmove(buf.data(), buf.data() + (lo - lo_prev) * row_elems, (hi_prev - lo) * row_elems * sizeof(T));
        from = hi_prev;
      }
      const int64_t base = n * PQ + lo * s.Q, m_end = n * PQ + hi * s.Q;
      for (int64_t m0 = n * PQ + from * s.Q; m0 < m_end; m0 += max_rows) {
        const int64_t rows = std::min(max_rows, m_end - m0);
        build(m0, rows, a.data(), c.data());
        for (int64_t i = 0; i < rows; ++i) c[i] = buf.data() + (m0 + i - base) * s.K;
        for (int64_t split = 0; split < splits; ++split) compute(m0, split, rows, a.data(), c.data());
      }
      img = n, lo_prev = lo, hi_prev = hi;
      // The band as a whole input: rows [lo, hi), padded on top only in the first band.
      MaxPoolArgs<T> pa;
      pa.cs = s.K;
      pa.s = ps;
      pa.s.H = hi - lo;
      pa.s.P = r1 - r0;
      pa.s.ph = ps.ph + lo - r0 * ps.sh;
      pa.x = buf.data();
      pa.y = y + (n * ps.P + r0) * ps.Q * s.K;
      pa.p0 = 0, pa.p1 = r1 - r0;
      isa.maxpool(pa);
    }
  });
}

// Forward indirection for output pixels [m0, m0 + rows): per row the output
// pointer and one input pointer per tap (a zero vector in the padding).
// (n, p, q) advance incrementally: a division per row costs more than the
// row's arithmetic when channels are few.
template <typename T>
void build_forward_rows(const Conv2dShape& s, const T* xp, T* op, const int64_t* ostride, const T* zeros,
                        int64_t m0, int64_t rows, const T** a, T** c) {
  const int64_t PQ = s.P * s.Q, RS = s.taps();
  int64_t n = m0 / PQ, p = (m0 % PQ) / s.Q, q = m0 % s.Q;
  for (int64_t i = 0; i < rows; ++i) {
    c[i] = op + n * ostride[0] + p * ostride[2] + q * ostride[3];
    const T** arow = a + i * RS;
    for (int64_t kr = 0; kr < s.R; ++kr) {
      const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
      const bool row_inside = ih >= 0 && ih < s.H;
      const T* xrow = xp + (n * s.H + ih) * s.W * s.C;
      for (int64_t ks = 0; ks < s.S; ++ks) {
        const int64_t iw = conv_in_coord(q, ks, s.stride_w, s.pad_w, s.dil_w);
        arow[kr * s.S + ks] = row_inside && iw >= 0 && iw < s.W ? xrow + iw * s.C : zeros;
      }
    }
    if (++q == s.Q) {
      q = 0;
      if (++p == s.P) {
        p = 0;
        ++n;
      }
    }
  }
}

// The group-vectorised kernel applies when several whole groups fit one
// vector (cols_per_group divides the lane count) and their input span fits
// two vectors.
bool use_gconv(int64_t groups, int64_t reduce_per_group, int64_t cols_per_group, int lanes) {
  return groups > 1 && cols_per_group < lanes && lanes % cols_per_group == 0 &&
         (lanes / cols_per_group) * reduce_per_group <= 2 * lanes;
}

// gconv weight layout [vector block][tap][reduce channel][lane]. Lane j of
// block vb is column vb*L + j; value(col, r, t) gives that column's weight.
template <typename T, typename Value>
std::vector<T> pack_gconv_weight(int64_t ncols, int64_t taps, int64_t reduce, int lanes, const Value& value) {
  const int64_t nvb = ceil_div(ncols, lanes);
  std::vector<T> wp(nvb * taps * reduce * lanes, T(0));
  at::parallel_for(0, nvb, 1, [&](int64_t b, int64_t e) {
    for (int64_t vb = b; vb < e; ++vb)
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t r = 0; r < reduce; ++r)
          for (int64_t j = 0; j < lanes && vb * lanes + j < ncols; ++j)
            wp[((vb * taps + t) * reduce + r) * lanes + j] = value(vb * lanes + j, r, t);
  });
  return wp;
}

// A kernel choice that is on unless the environment variable `name` is "0".
bool switch_on(const char* name) {
  const char* env = std::getenv(name);
  return !(env && std::string(env) == "0");
}

// Whether a grouped conv runs on the sliding-window row kernel
// (GConvRowArgs): as many input as output channels per group, several
// groups per vector, whole vectors of channels, and a row shape gconvrow
// unrolls (ResNeXt's 3x3 layers up to 8 channels per group). With 16 or 32
// channels per group a sliding window with broadcast inputs ran no faster
// than igemm (0.85-1.0x on Zen 4), so those stay there.
std::atomic<bool> g_gconv_rows{switch_on("EFFCONV_CPU_GCONV_ROWS")};

bool use_gconv_rows(const Conv2dShape& s, int64_t cg, int64_t kg, int lanes) {
  return g_gconv_rows.load(std::memory_order_relaxed) && s.groups > 1 && cg == kg && kg < lanes &&
         lanes % kg == 0 && s.C % lanes == 0 && s.S == 3 && (s.stride_w == 1 || s.stride_w == 2) && s.dil_w == 1;
}

// A stride-1, dilation-1 conv's grad_input is itself a conv: of dy, with
// the weight transposed per group and flipped (W'[c][k][r][s] =
// W[k][c][R-1-r][S-1-s]) and padding R-1-pad, which must not be negative.
bool grad_input_is_conv(const Conv2dShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && s.dil_h == 1 && s.dil_w == 1 && s.pad_h <= s.R - 1 &&
         s.pad_w <= s.S - 1;
}

Conv2dShape grad_input_as_conv(const Conv2dShape& s) {
  Conv2dShape t = s;
  t.C = s.K;
  t.K = s.C;
  t.H = s.P;
  t.W = s.Q;
  t.P = s.H;
  t.Q = s.W;
  t.pad_h = s.R - 1 - s.pad_h;
  t.pad_w = s.S - 1 - s.pad_w;
  return t;
}

// Whether a strided conv's grad_input runs on gconvrow too, one residue
// class of dx pixels at a time (see residue_classes): with dilation 1 a
// class's taps read consecutive dy pixels, so the class is a stride-1 conv
// of dy with those taps (1 or 2 wide for 3-wide kernels at stride 2) whose
// outputs land every stride-th pixel. Stride at most the kernel size, so
// every class has taps. On the indirect gconv instead, ResNeXt's 256 s2
// grad_input ran 1.8x the forward's time, with 1 to 4 taps per call.
bool use_strided_grad_input_rows(const Conv2dShape& s, int64_t cg, int64_t kg, int lanes) {
  return (s.stride_h > 1 || s.stride_w > 1) && s.dil_h == 1 && s.stride_h <= s.R && s.stride_w <= s.S &&
         use_gconv_rows(s, cg, kg, lanes);
}

// Runs conv `s` (channels_last dense input `xp`, weights packed by
// pack_gconv_weight) one output row at a time on gconvrow.
template <typename T>
void gconv_rows(const T* xp, const T* wp, const Conv2dShape& s, int64_t cg, int64_t kg, const EpilogueArgs<T>& ep,
                T* op, const int64_t* ostride, StatsPartials& partials) {
  const IsaKernels& isa = isa_kernels();
  const int64_t nvb = s.K / isa.lanes<T>();
  GConvRowArgs<T> args;
  args.R = s.R;
  args.S = s.S;
  args.W = s.W;
  args.Q = s.Q;
  args.C = s.C;
  args.stride = s.stride_w;
  args.pad = s.pad_w;
  args.cg = cg;
  args.kg = kg;
  args.w = wp;
  args.ncols = s.K;
  args.out_ps = ostride[3];
  args.c_cstride = ostride[1];
  args.ep = ep;
  // Outputs stream past the caches when output and input pass half of L3:
  // a strided grad_input's classes write every stride-th pixel of a 51 MB
  // dx (ResNeXt 256 s2 56² N16), which regular stores first read from DRAM.
  args.stream = stream_pixels(op, ostride, (s.N * s.P * s.Q * s.K + s.N * s.H * s.W * s.C) * int64_t(sizeof(T)));
  int64_t vsplit, unused;
  split_columns(s.N * s.P, nvb, 1, vsplit, unused);
  // From DRAM the row kernel's walk (one channel vector of every pixel) ran
  // latency-bound, as the depthwise one did: ResNeXt 256 s2 56² N16 (51 MB
  // input) at 61 GFLOP/s against 119 in cache. Items are whole rows then.
  const bool prefetch = vsplit == 1 && s.N * s.H * s.W * s.C * int64_t(sizeof(T)) > kBeyondCaches;
  at::parallel_for(0, s.N * s.P * vsplit, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> rows(s.R);
    GConvRowArgs<T> row = args;
    row.rows = rows.data();
    row.ep.stat_sum = partials.sum();
    row.ep.stat_sq = partials.sq();
    for (int64_t item = begin; item < end; ++item) {
      const int64_t np = item / vsplit, split = item % vsplit, n = np / s.P, p = np % s.P;
      if (prefetch && item + 1 < end) prefetch_next_band(s, xp, np, 1, 1);
      kernel_row_inputs(s, xp, n, p, rows.data());
      row.out = op + n * ostride[0] + p * ostride[2];
      row.vb_begin = split * nvb / vsplit;
      row.vb_end = (split + 1) * nvb / vsplit;
      isa.gconvrow(row);
    }
    if (row.stream) store_fence();
  });
}

// Few input channels (RGB stems, SqueezeNet's 16-channel 3x3 expand): the S
// taps of one kernel row read S neighbouring pixels, which in a
// channels_last row are S * C contiguous values when dilation_w is 1, so a
// kernel row is a single tap of S * C channels: R taps instead of R * S. Per
// tap the microkernel sets up MR row pointers and checks for padding, which
// cost as much as the 3-16 multiply-adds per row a tap fed. The packed
// weights ([tap][Cin][nr] with tap = r * S + s) already read as [r][s * C + c].
bool merge_kernel_rows(const Conv2dShape& s, int64_t super_groups) {
  return super_groups == 1 && s.groups == 1 && s.S > 1 && s.dil_w == 1 && s.C <= 16;
}

// Forward indirection with merged kernel rows: per output pixel one pointer
// per kernel row to its S * C window. Windows in the top/bottom padding read
// `zrow` (S * C zeros); windows reaching past the left or right edge are
// copied with their zeros into `border` (sized here, for the tile), so only
// edge pixels pay for the padding. (A zero-padded copy of the whole input
// cost a serial 10 MB clear and copy per MobileNetV2 stem at batch 16.)
template <typename T>
void build_merged_rows(const Conv2dShape& s, const T* xp, const T* zrow, T* op, const int64_t* ostride,
                       int64_t m0, int64_t rows, const T** a, T** c, std::vector<T>& border) {
  const int64_t PQ = s.P * s.Q, SC = s.S * s.C, R = s.R;
  if (int64_t(border.size()) < rows * R * SC) border.resize(rows * R * SC);
  T* next = border.data();
  // Output columns whose window lies inside the row: [q_lo, q_hi).
  int64_t q_lo, q_hi;
  conv_interior(s.Q, s.W, s.S, s.stride_w, s.pad_w, 1, &q_lo, &q_hi);
  std::vector<const T*> xrow(R);  // input row read by kernel row kr, or null in the padding
  int64_t n = m0 / PQ, p = (m0 % PQ) / s.Q, q = m0 % s.Q;
  for (int64_t i = 0; i < rows;) {
    // The rest of output row (n, p) in this tile; its kernel rows' input rows are fixed.
    const int64_t q_end = std::min(s.Q, q + rows - i);
    kernel_row_inputs(s, xp, n, p, xrow.data());
    T* orow = op + n * ostride[0] + p * ostride[2];
    for (; q < q_end; ++q, ++i) {
      c[i] = orow + q * ostride[3];
      const int64_t iw0 = conv_in_coord(q, 0, s.stride_w, s.pad_w, 1);
      const T** ai = a + i * R;
      if (q >= q_lo && q < q_hi) {
        for (int64_t kr = 0; kr < R; ++kr) ai[kr] = xrow[kr] ? xrow[kr] + iw0 * s.C : zrow;
        continue;
      }
      for (int64_t kr = 0; kr < R; ++kr) {
        if (!xrow[kr]) {
          ai[kr] = zrow;
          continue;
        }
        for (int64_t ks = 0; ks < s.S; ++ks) {
          const int64_t iw = iw0 + ks;
          if (iw >= 0 && iw < s.W)
            std::copy(xrow[kr] + iw * s.C, xrow[kr] + (iw + 1) * s.C, next + ks * s.C);
          else
            std::fill(next + ks * s.C, next + (ks + 1) * s.C, T(0));
        }
        ai[kr] = next;
        next += SC;
      }
    }
    q = 0;
    if (++p == s.P) {
      p = 0;
      ++n;
    }
  }
}

// ---------------------------------------------------------------------------
// Winograd F(2x2, 3x3) or F(4x4, 3x3) (WinoArgs in ukernel/api.h; tile
// from winograd_tile): per block of output tiles, the input transform into
// V (E x tiles x C, E = 16 or 36), then per column panel the E GEMMs
// V[e] x U[e] into M (E x tiles x nr) with the igemm microkernel, then the
// output transform with the fused epilogue. V and one panel of M stay in L2;
// U (E x C x K) goes through the weight cache.
//
// `s` is the conv computed: the forward's, or grad_input's transposed one
// (see grad_input_typed); tap(ws, k, c, t) reads its weight for output
// channel k, input channel c and tap t from the contiguous `weight`, whose
// packing the cache keys by `kind`.
template <typename T, typename Tap>
void winograd_conv(const T* xp, const at::Tensor& weight, int64_t kind, const Tap& tap, const Conv2dShape& s,
                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                   const c10::optional<at::Tensor>& shift, int act, T* op, const int64_t* ostride,
                   const c10::optional<at::Tensor>& stats) {
  const IsaKernels& isa = isa_kernels();
  const int lanes = isa.lanes<T>();
  const int64_t C = s.C, K = s.K;
  const int tile = int(winograd_tile(s.C, s.N, s.P, s.Q)), A = tile + 2, E = A * A;
  const int nv = choose_nv(K, lanes);
  const int64_t nr = int64_t(nv) * lanes, npanels = ceil_div(K, nr), kpad = npanels * nr;
  const ReductionBlocking rb = reduction_blocking(1, C, nr, sizeof(T));
  const bool ci4 = isa.ci4<T>(nv, K, C, rb.k);
  const int64_t panel_stride = C * nr, estride = npanels * panel_stride;

  // U[e][panel][c][nr] = (G g G^T)[e] of weight (k, c), computed in double.
  static constexpr double kG2[4][3] = {{1, 0, 0}, {0.5, 0.5, 0.5}, {0.5, -0.5, 0.5}, {0, 0, 1}};
  // F(4x4)'s points 0, 1, -1, 1/2, -2 (see wino_in_1d): row j is (1, a, a^2) / prod_{l != j} (a - a_l).
  static constexpr double kG4[6][3] = {{1, 0, 0},
                                       {1.0 / 3, 1.0 / 3, 1.0 / 3},
                                       {-1.0 / 3, 1.0 / 3, -1.0 / 3},
                                       {-16.0 / 15, -8.0 / 15, -4.0 / 15},
                                       {1.0 / 15, -2.0 / 15, 4.0 / 15},
                                       {0, 0, 1}};
  const double(*G)[3] = tile == 4 ? kG4 : kG2;
  const auto u_cached = packed_weight<T>(weight, {kind, C, K, nr, ci4, tile}, [&] {
    const at::Tensor wc = contiguous_as<T>(weight);
    const T* ws = wc.data_ptr<T>();
    std::vector<T> u(E * estride, T(0));
    at::parallel_for(0, K, 1, [&](int64_t b, int64_t e) {
      for (int64_t k = b; k < e; ++k)
        for (int64_t c = 0; c < C; ++c) {
          double gg[6][3], ua[6][6];  // G g, then (G g) G^T
          for (int r = 0; r < A; ++r)
            for (int j = 0; j < 3; ++j)
              gg[r][j] = G[r][0] * tap(ws, k, c, j) + G[r][1] * tap(ws, k, c, 3 + j) + G[r][2] * tap(ws, k, c, 6 + j);
          for (int r = 0; r < A; ++r)
            for (int q = 0; q < A; ++q) ua[r][q] = gg[r][0] * G[q][0] + gg[r][1] * G[q][1] + gg[r][2] * G[q][2];
          const int64_t p = k / nr, j = k % nr;
          for (int el = 0; el < E; ++el)
            u[el * estride + p * panel_stride + b_offset(c, j, nr, ci4)] = T(ua[el / A][el % A]);
        }
    });
    return u;
  });
  const std::vector<T>& u = *u_cached;
  const std::vector<T> bias_p = padded_channel_vector<T>(bias, 1, K, kpad, T(0));
  const std::vector<T> scale_p = padded_channel_vector<T>(scale, 1, K, kpad, T(1));
  const std::vector<T> shift_p = padded_channel_vector<T>(shift, 1, K, kpad, T(0));
  const int64_t ldv = ceil_div(C, lanes) * lanes;
  const std::vector<T> zeros(ldv, T(0));

  const int64_t TH = ceil_div(s.P, tile), TW = ceil_div(s.Q, tile), ntiles = s.N * TH * TW;
  const int mr = isa.mr(nv);
  // Tiles per block: V and one panel of M within ~192 KB each (rows_per_tile's budget).
  const int64_t tb = std::min<int64_t>(kWinoMaxTiles / mr * mr,
                                       rows_per_tile(ntiles, E * std::max<int64_t>(ldv, nr), sizeof(T), mr));
  const int64_t blocks = ceil_div(ntiles, tb);
  int64_t unused, psplit;
  split_columns(blocks, 1, npanels, unused, psplit);
  const int64_t v_stride = tb * ldv, m_stride = tb * nr;
  StatsPartials partials(stats, kpad);

  IGemmArgs<T> gemm;
  const int64_t b_off0 = 0;
  gemm.ntaps = 1;
  gemm.kc = C;
  gemm.lda = ldv;
  gemm.b_off = &b_off0;
  gemm.panel_stride = panel_stride;
  gemm.nv = nv;
  gemm.ci4 = ci4;
  gemm.tap_block = 1;
  gemm.k_block = rb.k;
  gemm.ncols = K;
  gemm.ldc = nr;

  WinoArgs<T> wa;
  wa.tile = tile;
  wa.TH = TH;
  wa.TW = TW;
  wa.x = xp;
  wa.x_end = xp + s.N * s.H * s.W * C;
  wa.ldv = ldv;
  wa.zero = zeros.data();
  wa.H = s.H;
  wa.W = s.W;
  wa.C = C;
  wa.pad_h = s.pad_h;
  wa.pad_w = s.pad_w;
  wa.v_stride = v_stride;
  wa.m_stride = m_stride;
  wa.ldm = nr;
  wa.out = op;
  wa.os_n = ostride[0];
  wa.os_h = ostride[2];
  wa.os_w = ostride[3];
  wa.P = s.P;
  wa.Q = s.Q;
  wa.ep = {bias_p.empty() ? nullptr : bias_p.data(), scale_p.empty() ? nullptr : scale_p.data(),
           shift_p.empty() ? nullptr : shift_p.data(), act};

  at::parallel_for(0, blocks * psplit, 1, [&](int64_t begin, int64_t end) {
    // 64-byte aligned scratch, kept per thread: V and one panel of M.
    thread_local std::vector<char> scratch;
    const size_t need = (E * (v_stride + m_stride)) * sizeof(T) + 64;
    if (scratch.size() < need) scratch.resize(need);
    T* v = reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(scratch.data()) + 63) & ~uintptr_t(63));
    T* m = v + E * v_stride;
    int64_t transformed = -1;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t blk = item / psplit, ps = item % psplit;
      WinoArgs<T> w = wa;
      w.t0 = blk * tb;
      w.nt = std::min(tb, ntiles - w.t0);
      w.v = v;
      w.m = m;
      w.ep.stat_sum = partials.sum();
      w.ep.stat_sq = partials.sq();
      if (blk != transformed) {
        isa.wino_input(w);
        transformed = blk;
      }
      IGemmArgs<T> g = gemm;
      g.m = w.nt;
      for (int64_t p = ps * npanels / psplit; p < (ps + 1) * npanels / psplit; ++p) {
        g.p_begin = p;
        g.p_end = p + 1;
        g.c_off = -p * nr;
        for (int el = 0; el < E; ++el) {
          g.a_dense = v + el * v_stride;
          g.b = u.data() + el * estride;
          g.c_dense = m + el * m_stride;
          isa.igemm(g);
        }
        w.col0 = p * nr;
        w.col_end = std::min(K, (p + 1) * nr);
        isa.wino_output(w);
      }
    }
  });
  partials.finish(K, [](int64_t k) { return k; });
}

// Runs run(rows, strides) over `out` when its channels are contiguous, else
// over a channels_last twin that is copied into it afterwards: Winograd's
// output transform stores whole channel vectors, and with NCHW outputs the
// transform plus the copy (measured 8.7 ms for 64->64 56² N16) beats the
// direct kernel's strided stores (14.4 ms).
template <typename T, typename Run>
void with_channel_rows(at::Tensor& out, const Run& run) {
  at::Tensor rows =
      out.stride(1) == 1 ? out : at::empty(out.sizes(), out.options().memory_format(at::MemoryFormat::ChannelsLast));
  const int64_t stride[4] = {rows.stride(0), rows.stride(1), rows.stride(2), rows.stride(3)};
  run(rows.data_ptr<T>(), stride);
  if (!rows.is_same(out)) out.copy_(rows);
}

std::atomic<bool> g_winograd{switch_on("EFFCONV_CPU_WINOGRAD")};
std::atomic<bool> g_winograd_f4{switch_on("EFFCONV_CPU_WINOGRAD_F4")};

// Whether conv `s` (the one computed: for grad_input the transposed conv)
// runs as Winograd. Every tile block streams all of U (16 or 36 x C x K:
// 16/9 or 4x the weight) past its tiles, so few tiles per weight byte lose
// to the direct kernel (measured with F(2x2)): N1 512->512 7² (16 tiles) ran 0.94x of it, N4 1024->1024 7²
// 0.65x, while N1 256->256 14² (49 tiles) ran 1.6x.
bool use_winograd(const Conv2dShape& s) {
  return g_winograd.load(std::memory_order_relaxed) &&
         winograd_shape(s.C, s.K, s.R, s.S, s.stride_h, s.stride_w, s.dil_h, s.dil_w, s.groups) &&
         s.N * ceil_div(s.P, 2) * ceil_div(s.Q, 2) * kWinogradWeightPerTile >= s.C * s.K;
}

// Whether the forward runs the generic indirect GEMM (not Winograd or the
// grouped-vector kernel, which tile their work their own way).
bool generic_forward(const Conv2dShape& s, int lanes) {
  return !use_winograd(s) && !use_gconv(s.groups, s.cin_per_group(), s.cout_per_group(), lanes);
}

// ---------------------------------------------------------------------------
// The forward into `out`; with `pool`, max_pool2d of the forward into `out`
// (conv2d_max_pool2d_forward: the generic path only, no statistics).
template <typename T>
void forward_typed(const at::Tensor& x, const at::Tensor& weight, const Conv2dShape& s,
                   const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                   const c10::optional<at::Tensor>& shift, int act, at::Tensor& out,
                   const c10::optional<at::Tensor>& stats, const Pool2dShape* pool = nullptr) {
  const IsaKernels& isa = isa_kernels();
  const int lanes = isa.lanes<T>();
  const int64_t RS = s.taps(), M = s.N * s.P * s.Q;
  const T* xp = x.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const int64_t ostride[4] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  const int64_t ok = ostride[1];
  const std::vector<T> zeros(s.C, T(0));
  auto build = [&](int64_t m0, int64_t rows, const T** a, T** c) {
    build_forward_rows<T>(s, xp, op, ostride, zeros.data(), m0, rows, a, c);
  };

  TORCH_INTERNAL_ASSERT(!pool || (!stats && generic_forward(s, lanes)));
  if (use_winograd(s)) {
    const int64_t C = s.C;
    with_channel_rows<T>(out, [&](T* o, const int64_t* os) {
      winograd_conv<T>(
          xp, weight, 4, [C](const T* ws, int64_t k, int64_t c, int t) { return ws[(k * C + c) * 9 + t]; }, s,
          bias, scale, shift, act, o, os, stats);
    });
    return;
  }
  if (use_gconv(s.groups, s.cin_per_group(), s.cout_per_group(), lanes)) {
    const int64_t Cg = s.cin_per_group(), Kg = s.cout_per_group();
    const int64_t nvb = ceil_div(s.K, lanes), kpad = nvb * lanes;
    const auto wp_cached = packed_weight<T>(weight, {0, s.K, RS, Cg, lanes}, [&] {
      const at::Tensor wc = contiguous_as<T>(weight);
      const T* ws = wc.data_ptr<T>();
      return pack_gconv_weight<T>(s.K, RS, Cg, lanes, [&](int64_t k, int64_t c, int64_t t) {
        return ws[(k * Cg + c) * RS + t];
      });
    });
    const std::vector<T>& wp = *wp_cached;
    const std::vector<T> bias_p = padded_channel_vector<T>(bias, 1, s.K, kpad, T(0));
    const std::vector<T> scale_p = padded_channel_vector<T>(scale, 1, s.K, kpad, T(1));
    const std::vector<T> shift_p = padded_channel_vector<T>(shift, 1, s.K, kpad, T(0));
    const EpilogueArgs<T> ep = {bias_p.empty() ? nullptr : bias_p.data(), scale_p.empty() ? nullptr : scale_p.data(),
                                shift_p.empty() ? nullptr : shift_p.data(), act};
    StatsPartials partials(stats, kpad);
    if (use_gconv_rows(s, Cg, Kg, lanes)) {
      gconv_rows<T>(xp, wp.data(), s, Cg, Kg, ep, op, ostride, partials);
      partials.finish(s.K, [](int64_t k) { return k; });
      return;
    }
    const int64_t mc = rows_per_tile(M, RS * 2 * lanes, sizeof(T), 12);
    const int64_t tiles = ceil_div(M, mc);
    int64_t vsplit, unused;
    split_columns(tiles, nvb, 1, vsplit, unused);
    GConvArgs<T> args;
    args.ntaps = RS;
    args.wtaps = RS;
    args.zero = zeros.data();
    args.cg = Cg;
    args.kg = Kg;
    args.channels = s.C;
    args.w = wp.data();
    args.ncols = s.K;
    args.c_cstride = ok;
    args.ep = ep;
    for_each_tile<T>(
        tiles, mc, RS, vsplit,
        [&](int64_t tile, const T** a, T** c) {
          const int64_t rows = std::min(mc, M - tile * mc);
          build(tile * mc, rows, a, c);
          return rows;
        },
        [&](int64_t, int64_t split, int64_t rows, const T** a, T** c) {
          GConvArgs<T> part = args;
          part.a = a;
          part.c = c;
          part.m = rows;
          part.vb_begin = split * nvb / vsplit;
          part.vb_end = (split + 1) * nvb / vsplit;
          part.ep.stat_sum = partials.sum();
          part.ep.stat_sq = partials.sq();
          isa.gconv(part);
        });
    partials.finish(s.K, [](int64_t k) { return k; });
    return;
  }

  const GroupPlan gp = plan_groups(s, s.cout_per_group(), lanes);
  const int64_t G = gp.sgroups, Cg = gp.scg, Kg = gp.skg;
  const int nv = choose_nv(Kg, lanes);
  const int64_t nr = int64_t(nv) * lanes, npanels = ceil_div(Kg, nr), kpad = npanels * nr;
  const int64_t panel_stride = RS * Cg * nr, gstride = npanels * panel_stride;

  // Taps as the microkernel sees them: R * S of Cg channels, or R merged
  // kernel rows of S * Cg.
  const bool merged = merge_kernel_rows(s, G);
  const int64_t ntaps = merged ? s.R : RS, kc = merged ? s.S * Cg : Cg;
  const ReductionBlocking rb = reduction_blocking(ntaps, kc, nr, sizeof(T));
  const bool ci4 = isa.ci4<T>(nv, Kg, kc, rb.k);

  // Weight panels: [super-group][panel][tap][Cin][nr] (b_offset's order
  // within a panel), zero beyond Cout and off the block diagonal.
  const auto wp_cached = packed_weight<T>(weight, {1, G, Cg, Kg, nr, RS, gp.cg, ci4}, [&] {
    const at::Tensor wc = contiguous_as<T>(weight);
    const T* ws = wc.data_ptr<T>();
    std::vector<T> wp(G * gstride, T(0));
    at::parallel_for(0, G * npanels, 1, [&](int64_t b, int64_t e) {
      for (int64_t item = b; item < e; ++item) {
        const int64_t g = item / npanels, p = item % npanels;
        T* dst = wp.data() + g * gstride + p * panel_stride;
        for (int64_t j = 0; j < nr && p * nr + j < Kg; ++j) {
          const int64_t k = p * nr + j, c0 = gp.first_input(k);
          const T* src = ws + (g * Kg + k) * gp.cg * RS;
          for (int64_t c = 0; c < gp.cg; ++c)
            for (int64_t t = 0; t < RS; ++t) dst[b_offset(t * Cg + c0 + c, j, nr, ci4)] = src[c * RS + t];
        }
      }
    });
    return wp;
  });
  const std::vector<T>& wp = *wp_cached;
  std::vector<int64_t> b_off(RS);
  for (int64_t t = 0; t < RS; ++t) b_off[t] = t * Cg * nr;
  const std::vector<T> bias_p = padded_channel_vector<T>(bias, G, Kg, kpad, T(0));
  const std::vector<T> scale_p = padded_channel_vector<T>(scale, G, Kg, kpad, T(1));
  const std::vector<T> shift_p = padded_channel_vector<T>(shift, G, Kg, kpad, T(0));

  if (merged)
    for (int64_t r = 0; r < s.R; ++r) b_off[r] = r * kc * nr;
  const std::vector<T> zrow(merged ? kc : 0, T(0));

  const int64_t mc = rows_per_tile(M, rb.taps * rb.k, sizeof(T), isa.mr(nv));
  const int64_t tiles = ceil_div(M, mc);
  StatsPartials partials(stats, G * kpad);
  int64_t gsplit, psplit;
  split_columns(tiles, G, npanels, gsplit, psplit);
  const int64_t ldc = ostride[3];
  const bool dense = !pool && plain_gemm(s, ostride, s.K);
  IGemmArgs<T> args;
  args.stream = dense && stream_rows(op, out.numel(), ldc, nr);
  args.ntaps = ntaps;
  args.kc = kc;
  args.b_off = b_off.data();
  args.panel_stride = panel_stride;
  args.nv = nv;
  args.ci4 = ci4;
  args.tap_block = rb.taps;
  args.k_block = rb.k;
  // Skipping taps whose rows are all padding pays on dilated convs (ASPP's
  // small maps are ~40% such taps); otherwise such blocks are rare and the
  // per-tap check cost 5-12% on 16-channel groups (ResNeXt 512 14², 1024 7²).
  args.zero = !merged && (s.dil_h > 1 || s.dil_w > 1) ? zeros.data() : nullptr;
  args.ncols = Kg;
  const int64_t cs = pool ? 1 : ok;  // a pooled conv's rows are channels_last in the band buffer
  args.c_cstride = cs;
  args.ep.act = act;
  // Output pixels [m0, m0 + rows): their indirection, then their microkernels for one column split.
  auto build_rows = [&](int64_t m0, int64_t rows, const T** a, T** c) {
    thread_local std::vector<T> border;  // the rows' edge windows, read by compute on this thread
    if (merged)
      build_merged_rows<T>(s, xp, zrow.data(), op, ostride, m0, rows, a, c, border);
    else if (!dense)
      build(m0, rows, a, c);
  };
  auto compute_rows = [&](int64_t m0, int64_t split, int64_t rows, const T** a, T** c) {
    const int64_t gs = split / psplit, ps = split % psplit;
    IGemmArgs<T> part = args;
    if (dense) {
      part.a_dense = xp + m0 * s.C;
      part.lda = s.C;
      part.c_dense = op + m0 * ldc;
      part.ldc = ldc;
    } else {
      part.a = a;
      part.c = c;
    }
    part.m = rows;
    part.p_begin = ps * npanels / psplit;
    part.p_end = (ps + 1) * npanels / psplit;
    for (int64_t g = gs * G / gsplit; g < (gs + 1) * G / gsplit; ++g) {
      part.a_off = g * Cg;
      part.b = wp.data() + g * gstride;
      part.c_off = g * Kg * cs;
      part.ep.bias = bias_p.empty() ? nullptr : bias_p.data() + g * kpad;
      part.ep.scale = scale_p.empty() ? nullptr : scale_p.data() + g * kpad;
      part.ep.shift = shift_p.empty() ? nullptr : shift_p.data() + g * kpad;
      part.ep.stat_sum = partials.sum(g * kpad);
      part.ep.stat_sq = partials.sq(g * kpad);
      isa.igemm(part);
    }
  };
  if (pool) {
    pooled_rows<T>(s, *pool, mc, ntaps, gsplit * psplit, build_rows, compute_rows, op);
    return;
  }
  for_each_tile<T>(
      tiles, mc, ntaps, gsplit * psplit,
      [&](int64_t tile, const T** a, T** c) {
        const int64_t rows = std::min(mc, M - tile * mc);
        build_rows(tile * mc, rows, a, c);
        return rows;
      },
      [&](int64_t tile, int64_t split, int64_t rows, const T** a, T** c) { compute_rows(tile * mc, split, rows, a, c); });
  partials.finish(s.K, [&](int64_t k) { return (k / Kg) * kpad + k % Kg; });
}

// ---------------------------------------------------------------------------
// Input pixels with the same (h mod stride_h, w mod stride_w) are reached by
// the same taps, so each residue class is one indirect GEMM over only its
// taps: a stride-2 grad_input does 1/4 of the dense work, not all of it.
struct ResidueClass {
  int64_t ah, aw, hc, wc, rows, first_tile;
  // Per axis the taps that reach the class, descending (so the grad_output
  // pixels they read ascend), and the offset of the first one's (first_h +
  // j for the j-th when dilation is 1); `taps` is their product, r * S + s.
  std::vector<int64_t> rtaps, staps, taps;
  int64_t first_h, first_w;
};

// The taps along one axis that reach input coordinates = a (mod stride), in
// descending order; `first` is the grad_output offset the first one reads.
std::vector<int64_t> class_taps(int64_t a, int64_t taps, int64_t stride, int64_t pad, int64_t dil, int64_t& first) {
  std::vector<int64_t> out;
  for (int64_t t = taps - 1; t >= 0; --t)
    if (conv_tap_hits_residue(a, t, stride, pad, dil)) out.push_back(t);
  first = out.empty() ? 0 : (a + pad - out[0] * dil) / stride;
  return out;
}

// Rows of the largest residue class (the one tiles are sized for).
int64_t class_rows(const Conv2dShape& s) {
  return s.N * ceil_div(s.H, s.stride_h) * ceil_div(s.W, s.stride_w);
}

std::vector<ResidueClass> residue_classes(const Conv2dShape& s, int64_t mc, int64_t& tiles) {
  std::vector<ResidueClass> classes;
  tiles = 0;
  for (int64_t ah = 0; ah < std::min(s.stride_h, s.H); ++ah)
    for (int64_t aw = 0; aw < std::min(s.stride_w, s.W); ++aw) {
      ResidueClass rc;
      rc.ah = ah;
      rc.aw = aw;
      rc.hc = ceil_div(s.H - ah, s.stride_h);
      rc.wc = ceil_div(s.W - aw, s.stride_w);
      rc.rows = s.N * rc.hc * rc.wc;
      rc.first_tile = tiles;
      // Taps in reverse, so the grad_output pixels they read ascend in
      // memory (tap (r, s) reads row hi - r, column wi - s), as the forward's
      // do: descending, ResNeXt's grouped grad_input ran 10-30% slower.
      rc.rtaps = class_taps(ah, s.R, s.stride_h, s.pad_h, s.dil_h, rc.first_h);
      rc.staps = class_taps(aw, s.S, s.stride_w, s.pad_w, s.dil_w, rc.first_w);
      for (int64_t kr : rc.rtaps)
        for (int64_t ks : rc.staps) rc.taps.push_back(kr * s.S + ks);
      tiles += ceil_div(rc.rows, mc);
      classes.push_back(std::move(rc));
    }
  return classes;
}

const ResidueClass& class_of_tile(const std::vector<ResidueClass>& classes, int64_t tile) {
  size_t ci = 0;
  while (ci + 1 < classes.size() && classes[ci + 1].first_tile <= tile) ++ci;
  return classes[ci];
}

// grad_input indirection for one tile of one residue class: the input-pixel
// output pointers and, per tap of the class, the grad_output pixel it reads.
// Within a class the transposed index is division-free: input row
// h = ah + hi * stride reads output row hi + (ah + pad - r * dil) / stride.
template <typename T>
int64_t build_grad_input_rows(const Conv2dShape& s, const ResidueClass& rc, int64_t mc, int64_t tile,
                              const T* dyp, T* dxp, const int64_t* xstride, const T* zeros, const T** a, T** c) {
  const int64_t nt = int64_t(rc.taps.size());
  const int64_t r0 = (tile - rc.first_tile) * mc, rows = std::min(mc, rc.rows - r0);
  int64_t dp[64], dq[64];  // per-tap output-row/column offsets (nt <= R*S is small in practice)
  std::vector<int64_t> big;
  int64_t* offp = dp;
  int64_t* offq = dq;
  if (nt > 64) {
    big.resize(2 * nt);
    offp = big.data();
    offq = big.data() + nt;
  }
  for (int64_t j = 0; j < nt; ++j) {
    offp[j] = (rc.ah + s.pad_h - (rc.taps[j] / s.S) * s.dil_h) / s.stride_h;
    offq[j] = (rc.aw + s.pad_w - (rc.taps[j] % s.S) * s.dil_w) / s.stride_w;
  }
  int64_t n = r0 / (rc.hc * rc.wc), hi = (r0 % (rc.hc * rc.wc)) / rc.wc, wi = r0 % rc.wc;
  for (int64_t i = 0; i < rows; ++i) {
    c[i] = dxp + n * xstride[0] + (rc.ah + hi * s.stride_h) * xstride[2] + (rc.aw + wi * s.stride_w) * xstride[3];
    const T* dyn = dyp + n * s.P * s.Q * s.K;
    for (int64_t j = 0; j < nt; ++j) {
      const int64_t p = hi + offp[j], q = wi + offq[j];
      a[i * nt + j] = (p >= 0 && p < s.P && q >= 0 && q < s.Q) ? dyn + (p * s.Q + q) * s.K : zeros;
    }
    if (++wi == rc.wc) {
      wi = 0;
      if (++hi == rc.hc) {
        hi = 0;
        ++n;
      }
    }
  }
  return rows;
}

template <typename T>
void grad_input_typed(const at::Tensor& dy, const at::Tensor& w, const Conv2dShape& s, at::Tensor& dx) {
  const IsaKernels& isa = isa_kernels();
  const int lanes = isa.lanes<T>();
  const int64_t RS = s.taps(), Cg_o = s.cin_per_group(), Kg_o = s.cout_per_group();
  const T* ws = w.data_ptr<T>();
  const T* dyp = dy.data_ptr<T>();
  T* dxp = dx.data_ptr<T>();
  const int64_t xstride[4] = {dx.stride(0), dx.stride(1), dx.stride(2), dx.stride(3)};
  const int64_t sc = xstride[1];
  const std::vector<T> zeros(s.K, T(0));

  // A 3x3 stride-1 conv's grad_input is the 3x3 stride-1 conv of dy with the
  // weight flipped and transposed (W'[c][k][r][s] = W[k][c][2-r][2-s]) and
  // padding 2 - pad: Winograd too, when that conv qualifies.
  if (winograd_grad_input_shape(s.C, s.K, s.R, s.S, s.stride_h, s.stride_w, s.pad_h, s.pad_w, s.dil_h, s.dil_w,
                                s.groups)) {
    const Conv2dShape t = grad_input_as_conv(s);
    const int64_t Co = s.C;
    if (use_winograd(t)) {
      with_channel_rows<T>(dx, [&](T* o, const int64_t* os) {
        winograd_conv<T>(
            dyp, w, 5, [Co](const T* w_, int64_t k, int64_t c, int tp) { return w_[(c * Co + k) * 9 + 8 - tp]; },
            t, c10::nullopt, c10::nullopt, c10::nullopt, 0, o, os, c10::nullopt);
      });
      return;
    }
  }

  // Stride 1: the row kernel over dy, like the forward.
  if (grad_input_is_conv(s)) {
    const Conv2dShape t = grad_input_as_conv(s);
    if (use_gconv_rows(t, Kg_o, Cg_o, lanes)) {
      const std::vector<T> wp = pack_gconv_weight<T>(s.C, RS, Kg_o, lanes, [&](int64_t ci, int64_t k, int64_t tp) {
        return ws[((ci / Cg_o * Kg_o + k) * Cg_o + ci % Cg_o) * RS + RS - 1 - tp];
      });
      StatsPartials no_stats(c10::nullopt, 0);
      gconv_rows<T>(dyp, wp.data(), t, Kg_o, Cg_o, EpilogueArgs<T>{}, dxp, xstride, no_stats);
      return;
    }
  }

  if (use_strided_grad_input_rows(s, Cg_o, Kg_o, lanes)) {
    StatsPartials no_stats(c10::nullopt, 0);
    int64_t unused;
    for (const ResidueClass& rc : residue_classes(s, 1, unused)) {
      Conv2dShape t = grad_input_as_conv(s);
      t.R = int64_t(rc.rtaps.size());
      t.S = int64_t(rc.staps.size());
      t.P = rc.hc;
      t.Q = rc.wc;
      t.stride_h = t.stride_w = 1;
      t.pad_h = -rc.first_h;
      t.pad_w = -rc.first_w;
      // Sub-tap j = (jr, js) is the class's taps()[j]: its jr-th row and js-th column tap.
      const std::vector<T> wp =
          pack_gconv_weight<T>(s.C, t.R * t.S, Kg_o, lanes, [&](int64_t ci, int64_t k, int64_t j) {
            return ws[((ci / Cg_o * Kg_o + k) * Cg_o + ci % Cg_o) * RS + rc.taps[j]];
          });
      const int64_t ostride[4] = {xstride[0], xstride[1], s.stride_h * xstride[2], s.stride_w * xstride[3]};
      gconv_rows<T>(dyp, wp.data(), t, Kg_o, Cg_o, EpilogueArgs<T>{}, dxp + rc.ah * xstride[2] + rc.aw * xstride[3],
                    ostride, no_stats);
    }
    return;
  }

  // The transposed problem: columns are input channels, the reduction runs
  // over output channels. Its group-vectorised form swaps Cin/g and Cout/g.
  if (use_gconv(s.groups, Kg_o, Cg_o, lanes)) {
    const int64_t nvb = ceil_div(s.C, lanes);
    // Column ci (group ci / Cg): weights of the group's output channels k.
    const std::vector<T> wp = pack_gconv_weight<T>(s.C, RS, Kg_o, lanes, [&](int64_t ci, int64_t k, int64_t t) {
      return ws[((ci / Cg_o * Kg_o + k) * Cg_o + ci % Cg_o) * RS + t];
    });
    const int64_t mc = rows_per_tile(class_rows(s), RS * 2 * lanes, sizeof(T), 12);
    int64_t tiles;
    const std::vector<ResidueClass> classes = residue_classes(s, mc, tiles);
    int64_t vsplit, unused;
    split_columns(tiles, nvb, 1, vsplit, unused);
    for_each_tile<T>(
        tiles, mc, RS, vsplit,
        [&](int64_t tile, const T** a, T** c) {
          return build_grad_input_rows<T>(s, class_of_tile(classes, tile), mc, tile, dyp, dxp, xstride,
                                          zeros.data(), a, c);
        },
        [&](int64_t tile, int64_t split, int64_t rows, const T** a, T** c) {
          const ResidueClass& rc = class_of_tile(classes, tile);
          GConvArgs<T> args;
          args.a = a;
          args.m = rows;
          args.ntaps = int64_t(rc.taps.size());
          args.wtaps = RS;
          args.tap_index = rc.taps.data();
          args.zero = zeros.data();
          args.cg = Kg_o;
          args.kg = Cg_o;
          args.channels = s.K;
          args.w = wp.data();
          args.ncols = s.C;
          args.c = c;
          args.c_cstride = sc;
          args.vb_begin = split * nvb / vsplit;
          args.vb_end = (split + 1) * nvb / vsplit;
          isa.gconv(args);
        });
    return;
  }

  const GroupPlan gp = plan_groups(s, Cg_o, lanes);
  const int64_t G = gp.sgroups, Cg = gp.scg, Kg = gp.skg;
  const int nv = choose_nv(Cg, lanes);
  const int64_t nr = int64_t(nv) * lanes, npanels = ceil_div(Cg, nr);
  const int64_t panel_stride = RS * Kg * nr, gstride = npanels * panel_stride;

  const ReductionBlocking rb = reduction_blocking(RS, Kg, nr, sizeof(T));
  const bool ci4 = isa.ci4<T>(nv, Cg, Kg, rb.k);

  // Transposed weight panels: [super-group][panel over Cin][tap][Cout][nr]
  // (b_offset's order within a panel). Packed on every call (training
  // changes the weight each step): each item clears and fills its own panel,
  // a row of nr values at a time in the plain order. A serial clear of the
  // whole buffer, then element by element through b_offset, cost ResNeXt's
  // 1024-wide 7² grad_input 0.46 ms per call (1.2 MB), 0.6x of its N1 time.
  std::unique_ptr<T[]> wp_buf(new T[G * gstride]);
  T* const wp = wp_buf.get();
  at::parallel_for(0, G * npanels, 1, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      const int64_t g = item / npanels, p = item % npanels;
      T* dst = wp + g * gstride + p * panel_stride;
      std::fill(dst, dst + panel_stride, T(0));
      for (int64_t k = 0; k < Kg; ++k) {
        const T* src = ws + (g * Kg + k) * gp.cg * RS;
        // This panel's columns [p * nr, p * nr + nr) among k's inputs.
        const int64_t c0 = gp.first_input(k);
        const int64_t lo = std::max(c0, p * nr), hi = std::min({c0 + gp.cg, p * nr + nr, Cg});
        if (ci4) {
          for (int64_t c = lo; c < hi; ++c)
            for (int64_t t = 0; t < RS; ++t) dst[b_offset(t * Kg + k, c - p * nr, nr, true)] = src[(c - c0) * RS + t];
          continue;
        }
        for (int64_t t = 0; t < RS; ++t) {
          T* row = dst + (t * Kg + k) * nr;  // b_offset(t * Kg + k, n, nr, false) = row + n
          for (int64_t c = lo; c < hi; ++c) row[c - p * nr] = src[(c - c0) * RS + t];
        }
      }
    }
  });

  const int64_t mc = rows_per_tile(class_rows(s), rb.taps * rb.k, sizeof(T), isa.mr(nv));
  int64_t tiles;
  const std::vector<ResidueClass> classes = residue_classes(s, mc, tiles);
  std::vector<std::vector<int64_t>> b_offs(classes.size());
  for (size_t i = 0; i < classes.size(); ++i)
    for (int64_t t : classes[i].taps) b_offs[i].push_back(t * Kg * nr);
  int64_t gsplit, psplit;
  split_columns(tiles, G, npanels, gsplit, psplit);
  const bool dense = plain_gemm(s, xstride, s.C);  // then one residue class, all pixels
  const bool stream = dense && stream_rows(dxp, dx.numel(), xstride[3], nr);
  for_each_tile<T>(
      tiles, mc, RS, gsplit * psplit,
      [&](int64_t tile, const T** a, T** c) {
        if (dense) return std::min(mc, classes[0].rows - tile * mc);
        return build_grad_input_rows<T>(s, class_of_tile(classes, tile), mc, tile, dyp, dxp, xstride,
                                        zeros.data(), a, c);
      },
      [&](int64_t tile, int64_t split, int64_t rows, const T** a, T** c) {
        const ResidueClass& rc = class_of_tile(classes, tile);
        const int64_t gs = split / psplit, ps = split % psplit;
        IGemmArgs<T> args;
        if (dense) {
          args.a_dense = dyp + tile * mc * s.K;
          args.lda = s.K;
          args.c_dense = dxp + tile * mc * xstride[3];
          args.ldc = xstride[3];
          args.stream = stream;
        } else {
          args.a = a;
          args.c = c;
        }
        args.m = rows;
        args.ntaps = int64_t(rc.taps.size());
        args.kc = Kg;
        args.b_off = b_offs[&rc - classes.data()].data();
        args.panel_stride = panel_stride;
        args.nv = nv;
        args.ci4 = ci4;
        args.tap_block = rb.taps;
        args.k_block = rb.k;
        // As in the forward: skipping all-padding taps pays only when dilated.
        args.zero = s.dil_h > 1 || s.dil_w > 1 ? zeros.data() : nullptr;
        args.p_begin = ps * npanels / psplit;
        args.p_end = (ps + 1) * npanels / psplit;
        args.ncols = Cg;
        args.c_cstride = sc;
        for (int64_t g = gs * G / gsplit; g < (gs + 1) * G / gsplit; ++g) {
          args.a_off = g * Kg;
          args.b = wp + g * gstride;
          args.c_off = g * Cg * sc;
          isa.igemm(args);
        }
      });
}

// ---------------------------------------------------------------------------
// grad_weight reduces over every output pixel. The pixels are cut into a
// fixed number of parts (one per thread), each part accumulates a private
// partial, and the partials are summed in part order: deterministic for a
// given thread count, with no atomics.
template <typename T>
void grad_weight_typed(const at::Tensor& dy, const at::Tensor& x, const Conv2dShape& s, at::Tensor& dw,
                       at::Tensor* dbias) {
  const IsaKernels& isa = isa_kernels();
  const int lanes = isa.lanes<T>();
  const GroupPlan gp = plan_groups(s, s.cout_per_group(), lanes);
  const int64_t G = gp.sgroups, Cg = gp.scg, Kg = gp.skg, RS = s.taps();
  // Few output channels (projections to 16 or 24, SqueezeNet's squeeze)
  // leave the output-channel vectors of the plain form one wide or padded,
  // and every pixel then costs a broadcast per multiply-add; the transposed
  // form puts input channels on the vectors (WGemmArgs::dy).
  // Grouped convs with whole vectors of input channels per group (ResNeXt's
  // 16 and 32) take it with one vector and blocks of taps: their 16- or
  // 32-wide output-channel panels held too few accumulators.
  const int nvt = s.groups == 1 && Cg % lanes == 0 && 2 * Kg <= 3 * lanes
                      ? (Cg % (4 * lanes) == 0 ? 4 : Cg % (3 * lanes) == 0 ? 3 : Cg % (2 * lanes) == 0 ? 2 : 0)
                  : s.groups > 1 && gp.gs == 1 && Cg % lanes == 0 ? 1
                                                                  : 0;
  const bool transposed = nvt > 0;
  const int nv = transposed ? nvt : choose_nv(Kg, lanes);
  const int64_t nr = int64_t(nv) * lanes, npanels = ceil_div(Kg, nr), kpad = npanels * nr;
  // Whole panels are read in place from dy (row pitch K); only a zero-padded
  // last panel needs the packed copy.
  const bool direct = !transposed && Kg % nr == 0;
  const int64_t bstride = transposed ? Kg : kpad;  // bias-gradient partial columns per super-group
  // Partials per super-group: [tap][Cin][kpad], or [Cout][tap][Cin] transposed.
  const int64_t gsize = transposed ? Kg * RS * Cg : RS * Cg * kpad;

  const int64_t M = s.N * s.P * s.Q, PQ = s.P * s.Q;
  // The tap-blocked form re-reads a chunk's pixels once per (3 taps, 8
  // outputs) block: 96 pixels of a 32-channel group (x and dy) stay in L1.
  const int64_t max_chunk = nvt == 1 ? 96 : 256;
  const int64_t nparts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), ceil_div(M, max_chunk)));
  // As many chunks per part: 7 chunks of 256 pixels on 2 threads (320->1280
  // 7² N32) left one thread a seventh of the time idle.
  const int64_t chunk = M > 0 ? ceil_div(M, ceil_div(ceil_div(M, max_chunk), nparts) * nparts) : max_chunk;
  const int64_t nchunks = ceil_div(M, chunk);
  std::vector<T> parts(nparts * G * gsize, T(0));
  std::vector<T> bparts(dbias ? nparts * G * bstride : 0, T(0));
  const std::vector<T> zeros(s.C, T(0));
  // Rows whose tap reads padding add nothing and are skipped: ASPP's 3x3
  // d12 on 33² (43% of its taps in the padding) 0.67x the time, padded
  // shapes with few such rows (3x3 d1, the RGB stem) 0.98-0.99x.
  const T* pad_rows = s.pad_h > 0 || s.pad_w > 0 ? zeros.data() : nullptr;
  const T* dyp = dy.data_ptr<T>();
  const T* xp = x.data_ptr<T>();

  at::parallel_for(0, nparts, 1, [&](int64_t begin, int64_t end) {
    std::vector<const T*> xi(chunk * RS);
    std::vector<T> dpack(transposed || direct ? 0 : npanels * chunk * nr);
    for (int64_t part = begin; part < end; ++part) {
      T* acc = parts.data() + part * G * gsize;
      T* bacc = dbias ? bparts.data() + part * G * bstride : nullptr;
      for (int64_t ch = part * nchunks / nparts; ch < (part + 1) * nchunks / nparts; ++ch) {
        const int64_t m0 = ch * chunk, rows = std::min(chunk, M - m0);
        for (int64_t i = 0; i < rows; ++i) {
          const int64_t m = m0 + i, n = m / PQ, pq = m % PQ, p = pq / s.Q, q = pq % s.Q;
          for (int64_t kr = 0; kr < s.R; ++kr) {
            const int64_t ih = conv_in_coord(p, kr, s.stride_h, s.pad_h, s.dil_h);
            for (int64_t ks = 0; ks < s.S; ++ks) {
              const int64_t iw = conv_in_coord(q, ks, s.stride_w, s.pad_w, s.dil_w);
              const bool inside = ih >= 0 && ih < s.H && iw >= 0 && iw < s.W;
              xi[i * RS + kr * s.S + ks] = inside ? xp + ((n * s.H + ih) * s.W + iw) * s.C : zeros.data();
            }
          }
        }
        for (int64_t g = 0; g < G; ++g) {
          WGemmArgs<T> args;
          args.x = xi.data();
          args.x_off = g * Cg;
          args.m = rows;
          args.ntaps = RS;
          args.cg = Cg;
          args.nv = nv;
          args.dw = acc + g * gsize;
          args.dsum = bacc ? bacc + g * bstride : nullptr;
          args.zero = pad_rows;
          const T* dyg = dyp + m0 * s.K + g * Kg;
          if (transposed) {
            args.dy = dyg;
            args.ldd = s.K;
            args.kcols = Kg;
          } else if (direct) {
            args.d = dyg;
            args.d_panel_stride = nr;
            args.d_ld = s.K;
            args.npanels = npanels;
          } else {
            pack_row_panels(dyg, s.K, rows, Kg, nr, dpack.data());
            args.d = dpack.data();
            args.d_panel_stride = rows * nr;
            args.npanels = npanels;
          }
          isa.wgemm(args);
        }
      }
    }
  });

  // Per-thread partials summed in part order (deterministic), in parallel:
  // serial, this tail was a fifth of a 320->1280 1x1 grad_weight.
  at::parallel_for(0, G * gsize, 1 << 14, [&](int64_t b, int64_t e) {
    for (int64_t part = 1; part < nparts; ++part) {
      const T* src = parts.data() + part * G * gsize;
      for (int64_t i = b; i < e; ++i) parts[i] += src[i];
    }
  });
  if (dbias)
    for (int64_t part = 1; part < nparts; ++part)
      for (int64_t k = 0; k < G * bstride; ++k) bparts[k] += bparts[part * G * bstride + k];
  T* dwp = dw.data_ptr<T>();
  const int64_t s0 = dw.stride(0), s1 = dw.stride(1), s2 = dw.stride(2), s3 = dw.stride(3);
  // Keep only the block diagonal of each super-group. The plain partials
  // are [tap][Cin][kpad]: output channels run innermost, 16 at a time, so
  // each read is a cache line and each of the 16 written rows advances
  // sequentially (one output channel at a time read a column 4*kpad bytes apart).
  at::parallel_for(0, s.K, 16, [&](int64_t b, int64_t e) {
    const T* src[16];
    T* dst[16];
    for (int64_t kb = b; kb < e; kb += 16) {
      const int64_t n = std::min<int64_t>(16, e - kb);
      for (int64_t i = 0; i < n; ++i) {
        // Output channel ko's element (tap t, its input channel c) lies at
        // src[i] + (t * Cg + c) * kpad, or src[i] + t * Cg + c transposed.
        const int64_t ko = kb + i, g = ko / Kg, k = ko % Kg, c0 = gp.first_input(k);
        src[i] = parts.data() + g * gsize + (transposed ? k * RS * Cg + c0 : c0 * kpad + k);
        dst[i] = dwp + ko * s0;
      }
      const int64_t ld = transposed ? 1 : kpad;
      for (int64_t c = 0; c < gp.cg; ++c)
        for (int64_t r = 0; r < s.R; ++r)
          for (int64_t q = 0; q < s.S; ++q) {
            const int64_t from = ((r * s.S + q) * Cg + c) * ld, to = c * s1 + r * s2 + q * s3;
            for (int64_t i = 0; i < n; ++i) dst[i][to] = src[i][from];
          }
    }
  });
  if (dbias) {
    T* dbp = dbias->data_ptr<T>();
    for (int64_t k = 0; k < s.K; ++k) dbp[k * dbias->stride(0)] = bparts[(k / Kg) * bstride + k % Kg];
  }
}

}  // namespace

// ---------------------------------------------------------------------------
bool winograd_shape(int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w, int64_t dil_h,
                    int64_t dil_w, int64_t groups) {
  return R == 3 && S == 3 && stride_h == 1 && stride_w == 1 && dil_h == 1 && dil_w == 1 && groups == 1 &&
         C >= kWinogradMinIn && K >= kWinogradMinOut;
}

bool winograd_grad_input_shape(int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                               int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups) {
  return pad_h <= 2 && pad_w <= 2 && winograd_shape(K, C, R, S, stride_h, stride_w, dil_h, dil_w, groups);
}

bool set_winograd(bool on) { return g_winograd.exchange(on); }

int64_t winograd_tile(int64_t C, int64_t N, int64_t P, int64_t Q) {
  // GEMM work of each over the whole output, tiles past its edges included:
  // 36 elements per 4x4 tile against 16 per 2x2 tile. F(4x4) where it does
  // <= 0.7x F(2x2)'s work (27x27 and 55x55 outputs, 0.56: 1.2-1.5x faster),
  // or <= 0.8x with at least kWinogradF4MinTiles tiles in the batch: 13x13
  // and 14x14 outputs (0.73) ran 0-7% slower as F(4x4) at batch 1 (16
  // tiles; ~5% slower in SqueezeNet) and 1.1-1.27x faster from batch 2 on.
  const int64_t t4 = ceil_div(P, 4) * ceil_div(Q, 4), f4 = 36 * t4, f2 = 16 * ceil_div(P, 2) * ceil_div(Q, 2);
  const bool pays = 10 * f4 <= 7 * f2 || (10 * f4 <= 8 * f2 && N * t4 >= kWinogradF4MinTiles);
  return g_winograd_f4.load(std::memory_order_relaxed) && C <= kWinogradF4MaxIn && pays ? 4 : 2;
}

bool set_winograd_f4(bool on) { return g_winograd_f4.exchange(on); }
bool set_gconv_rows(bool on) { return g_gconv_rows.exchange(on); }

std::vector<bool> gconv_rows_shape(int64_t C, int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                                   int64_t pad_h, int64_t pad_w, int64_t dil_h, int64_t dil_w, int64_t groups,
                                   int64_t elem_bytes) {
  const int lanes = isa_kernels().vec_bytes / int(elem_bytes);
  const Conv2dShape s{1, C, 1, 1, K, R, S, 1, 1, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups};
  const bool forward = use_gconv_rows(s, s.cin_per_group(), s.cout_per_group(), lanes);
  const bool grad_input =
      (grad_input_is_conv(s) && use_gconv_rows(grad_input_as_conv(s), s.cout_per_group(), s.cin_per_group(), lanes)) ||
      use_strided_grad_input_rows(s, s.cin_per_group(), s.cout_per_group(), lanes);
  return {forward, grad_input};
}
bool winograd_enabled() { return g_winograd.load(); }

namespace {

// The forward entry points' checks of their inputs; the conv's shape.
Conv2dShape checked_forward_shape(const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                                  int64_t activation) {
  EFFCONV_CHECK_CPU(input);
  EFFCONV_CHECK_CPU(weight);
  EFFCONV_CHECK_SAME_DTYPE(input, weight);
  TORCH_CHECK(activation >= 0 && activation < kNumActivations, "unknown activation code ", activation);
  return make_conv2d_shape(input, weight, stride, padding, dilation, groups);
}

}  // namespace

void conv2d_forward(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
                    at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups,
                    int64_t activation, at::Tensor& out, const c10::optional<at::Tensor>& stats) {
  const Conv2dShape s = checked_forward_shape(input, weight, stride, padding, dilation, groups, activation);
  EFFCONV_CHECK_SIZES(out, s.N, s.K, s.P, s.Q);
  if (out.numel() == 0) return;
  const at::ScalarType ct = compute_type(input.scalar_type());
  const at::Tensor x = as_nhwc(input, ct);
  OutBuffer ob(out, ct, rows_format(out));
  // The weight is read (converted and made contiguous) only when it is packed.
  if (ct == at::kDouble)
    forward_typed<double>(x, weight, s, bias, scale, shift, int(activation), ob.work(), stats);
  else
    forward_typed<float>(x, weight, s, bias, scale, shift, int(activation), ob.work(), stats);
  ob.commit();
}

void conv2d_max_pool2d_forward(const at::Tensor& input, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                               const c10::optional<at::Tensor>& shift, at::IntArrayRef stride,
                               at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, int64_t activation,
                               at::IntArrayRef pool_kernel_size, at::IntArrayRef pool_stride,
                               at::IntArrayRef pool_padding, at::IntArrayRef pool_dilation, bool ceil_mode,
                               at::Tensor& out) {
  const Conv2dShape s = checked_forward_shape(input, weight, stride, padding, dilation, groups, activation);
  const Pool2dShape ps =
      make_pool2d_shape(s.N, s.K, s.P, s.Q, pool_kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode);
  EFFCONV_CHECK_SIZES(out, s.N, s.K, ps.P, ps.Q);
  if (out.numel() == 0) return;
  const at::ScalarType ct = compute_type(input.scalar_type());
  const at::Tensor x = as_nhwc(input, ct);
  if (!generic_forward(s, isa_kernels().vec_bytes / int(at::elementSize(ct)))) {
    // Paths with their own tiling: the conv's output, then the pool.
    at::Tensor conv = at::empty({s.N, s.K, s.P, s.Q}, out.options().memory_format(at::MemoryFormat::ChannelsLast));
    conv2d_forward(input, weight, bias, scale, shift, stride, padding, dilation, groups, activation, conv);
    max_pool2d_forward(conv, pool_kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode, out);
    return;
  }
  OutBuffer ob(out, ct, at::MemoryFormat::ChannelsLast);  // the band pooling writes channels_last rows
  if (ct == at::kDouble)
    forward_typed<double>(x, weight, s, bias, scale, shift, int(activation), ob.work(), c10::nullopt, &ps);
  else
    forward_typed<float>(x, weight, s, bias, scale, shift, int(activation), ob.work(), c10::nullopt, &ps);
  ob.commit();
}

void conv2d_grad_input(const at::Tensor& grad_output, const at::Tensor& weight, at::IntArrayRef stride,
                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::Tensor& grad_input) {
  EFFCONV_CHECK_CPU(grad_output);
  EFFCONV_CHECK_CPU(weight);
  EFFCONV_CHECK_SAME_DTYPE(grad_output, weight);
  const Conv2dShape s = make_conv2d_shape(grad_input, weight, stride, padding, dilation, groups);
  EFFCONV_CHECK_SIZES(grad_output, s.N, s.K, s.P, s.Q);
  if (grad_input.numel() == 0) return;
  const at::ScalarType ct = compute_type(grad_output.scalar_type());
  const at::Tensor dy = as_nhwc(grad_output, ct);
  const at::Tensor w = weight.to(ct).contiguous();
  OutBuffer ob(grad_input, ct, rows_format(grad_input));
  if (ct == at::kDouble)
    grad_input_typed<double>(dy, w, s, ob.work());
  else
    grad_input_typed<float>(dy, w, s, ob.work());
  ob.commit();
}

void conv2d_grad_weight(const at::Tensor& grad_output, const at::Tensor& input, at::IntArrayRef stride,
                        at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, at::Tensor& grad_weight,
                        const c10::optional<at::Tensor>& grad_bias) {
  EFFCONV_CHECK_CPU(grad_output);
  EFFCONV_CHECK_CPU(input);
  EFFCONV_CHECK_SAME_DTYPE(grad_output, input);
  const Conv2dShape s = make_conv2d_shape(input, grad_weight, stride, padding, dilation, groups);
  EFFCONV_CHECK_SIZES(grad_output, s.N, s.K, s.P, s.Q);
  if (grad_bias.has_value()) EFFCONV_CHECK_SIZES((*grad_bias), s.K);
  if (grad_weight.numel() == 0) return;
  const at::ScalarType ct = compute_type(grad_output.scalar_type());
  const at::Tensor dy = as_nhwc(grad_output, ct);
  const at::Tensor x = as_nhwc(input, ct);
  WeightGradOut out(grad_weight, grad_bias, ct);
  if (ct == at::kDouble)
    grad_weight_typed<double>(dy, x, s, out.weight(), out.bias());
  else
    grad_weight_typed<float>(dy, x, s, out.weight(), out.bias());
  out.commit();
}

}  // namespace cpu
}  // namespace effconv
