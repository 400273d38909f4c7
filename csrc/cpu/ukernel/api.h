// Contract between the torch-aware CPU kernels (csrc/cpu/*_kernel.cpp) and
// the ISA-specific microkernels (csrc/cpu/isa/*.cpp). Plain structs and
// pointers only: the ISA translation units are compiled for AVX-512, AVX2 or
// the baseline ISA and must not share inline torch code with the rest of the
// library (see csrc/cpu/isa/README.md).
#pragma once
#include <cstdint>
#include <initializer_list>

#include "effconv/pool2d_shape.h"

namespace effconv {
namespace cpu {

// Operands larger than this (half of the 32 MiB L3 of the machines we
// measure on) stream from DRAM: the kernels request them ahead of use
// (prefetch_span) and stream their outputs past the caches.
constexpr int64_t kBeyondCaches = int64_t(16) << 20;

// Where prefetch_span puts what it requests: every level, or L2 and below
// (a span larger than L1d would evict the lines the kernel is working on).
enum class PrefetchTo { L1, L2 };

// Requests `bytes` from p on, one request per 64-byte line. Volatile asm on
// x86: GCC models __builtin_prefetch as touching no memory, so a helper that
// only prefetches counts as a const function and calls to it are deleted
// (the depthwise band prefetch compiled to nothing that way).
__attribute__((always_inline)) inline void prefetch_span(const void* p, int64_t bytes, PrefetchTo to = PrefetchTo::L1) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) {
#if defined(__x86_64__)
    if (to == PrefetchTo::L1)
      asm volatile("prefetcht0 %0" : : "m"(c[off]));
    else
      asm volatile("prefetcht1 %0" : : "m"(c[off]));
#else
    if (to == PrefetchTo::L1)
      __builtin_prefetch(c + off, 0, 3);
    else
      __builtin_prefetch(c + off, 0, 2);
#endif
  }
}

// Per-output-column epilogue operands, padded by the caller to a whole number
// of panels. Null pointers mean "absent". `act` is an effconv::Activation.
template <typename T>
struct EpilogueArgs {
  const T* bias = nullptr;
  const T* scale = nullptr;
  const T* shift = nullptr;
  int act = 0;
  // Batch statistics of the stored values (training-mode BatchNorm after the
  // conv): per column, sum and sum of squares added in double. Per-thread
  // arrays, summed in a fixed order by the caller.
  double* stat_sum = nullptr;
  double* stat_sq = nullptr;
};

// Indirect GEMM (Dukhan, "The Indirect Convolution Algorithm", 2019):
//
//   C[i, col] = epilogue( sum_t sum_k A[i, t][k] * B[t][k, col] )
//
// where row i's operand for tap t is the contiguous vector a[i * ntaps + t]
// (+ a_off) of length kc. Convolution padding is a pointer to a zero vector,
// so no im2col buffer is ever materialised. B is packed by the caller into
// panels of nr = nv * lanes columns: panel p, tap t starts at
// b + p * panel_stride + b_off[t] and holds kc rows of nr values.
template <typename T>
struct IGemmArgs {
  // Row i's tap-t operand: a[i * ntaps + t] + a_off, or, when a is null (a
  // 1x1 convolution over a dense channels_last tensor: no indirection to
  // build), a_dense + i * lda + a_off.
  const T* const* a = nullptr;
  const T* a_dense = nullptr;
  int64_t lda = 0;
  int64_t a_off = 0;
  // The zero vector padding taps point at, when the caller wants taps whose
  // rows all point here skipped (null: compute them; the check costs more
  // than it saves unless such taps are common, as in dilated convs).
  const T* zero = nullptr;
  int64_t m = 0;
  int64_t ntaps = 0;
  int64_t kc = 0;

  const T* b = nullptr;
  const int64_t* b_off = nullptr;
  int64_t panel_stride = 0;
  int nv = 1;
  // Reduction blocking (0: whole reduction at once): tap_block taps x
  // k_block channels of a panel form one block; see reduction_blocking().
  int64_t tap_block = 0;
  int64_t k_block = 0;
  int64_t p_begin = 0, p_end = 0;  // panel range computed by this call
  int64_t ncols = 0;               // valid columns over all panels
  // Panels packed four reduction channels interleaved (b_offset): one-vector
  // panels, and two-vector panels with at most 24 valid columns (the last 8
  // lanes of a 24-column panel are padding that ci4 does not compute); only
  // where IsaKernels::ci4 says the ISA has the kernel.
  bool ci4 = false;

  // Row pointers: column j of row i is c[i][c_off + j * c_cstride]; when c
  // is null, row i starts at c_dense + i * ldc.
  T* const* c = nullptr;
  T* c_dense = nullptr;
  int64_t ldc = 0;
  int64_t c_off = 0;
  int64_t c_cstride = 1;
  // Write full vectors with non-temporal stores (caller checked 64-byte
  // alignment of every row): an output far larger than the caches would
  // otherwise be read into them before being overwritten.
  bool stream = false;

  EpilogueArgs<T> ep;
};

// Weight-gradient GEMM, reducing over pixels m:
//
//   dw[(t * cg + c), col] += sum_m X[m, t][c] * D[m, col]
//
// X[m, t] = x[m * ntaps + t] + x_off (a vector of cg channels, or a zero
// vector for padding taps); D is packed by the caller in panels of nr columns:
// panel p holds m rows of nr values at d + p * d_panel_stride.
template <typename T>
struct WGemmArgs {
  const T* const* x = nullptr;
  int64_t x_off = 0;
  int64_t m = 0;
  int64_t ntaps = 0;
  int64_t cg = 0;

  const T* d = nullptr;
  int64_t d_panel_stride = 0;
  int64_t d_ld = 0;  // row pitch of D; 0: packed panels (nv * lanes)
  int nv = 1;
  int64_t npanels = 0;

  T* dw = nullptr;  // [ntaps * cg][npanels * nr], accumulated into
  const T* zero = nullptr;  // plain form: rows whose X pointer is `zero` (padding) are skipped, except
                            // in the block that also sums the bias gradient

  // Transposed form, for few output channels (dy non-null; d, npanels
  // unused): rows are output channels read straight from the channels_last
  // output gradient, columns are input channels (cg a multiple of nv
  // vectors), so narrow outputs still get full MR x NV register blocks:
  //
  //   dw[k][t * cg + c] += sum_m dy[m * ldd + k] * X[m, t][c],   k < kcols
  //
  // With nv == 1 (grouped convs with whole vectors of input channels per
  // group) a register block spans up to 3 taps, so each dy broadcast serves
  // every tap of the block.
  const T* dy = nullptr;
  int64_t ldd = 0;
  int64_t kcols = 0;

  // When set, dsum[k] += sum_m D[m][k] over the columns this call reads
  // (the panels' npanels * nr, or dy's kcols): the bias gradient. Panels
  // are summed inside the GEMM block that first reads their rows (a pass of
  // its own took the misses on D: 1x1 16->96 112² N16 0.75x the time with
  // it fused); dy's columns in a pass over rows the GEMM then finds cached.
  T* dsum = nullptr;
};

// Grouped convolution with few channels per group, vectorised across
// groups: one vector of L output channels covers gs = L / kg whole groups,
// whose gs * cg input channels (the span, at most 2L) are loaded once per
// pixel and tap; lane j takes input channel (j / kg) * cg + c through a
// register permute. Every multiply-add is useful, where padding or a
// block-diagonal GEMM would do gs times the work.
//
//   C[i, vb*L + j] = epilogue( sum_t sum_c X[i, t][vb*span + (j/kg)*cg + c] * w[vb][t][c][j] )
//
// X[i, t] = a[i * ntaps + t] (+ a_off): a pixel's channels (or zeros).
template <typename T>
struct GConvArgs {
  const T* const* a = nullptr;
  int64_t a_off = 0;
  int64_t m = 0;
  int64_t ntaps = 0;
  int64_t cg = 0;        // reduction channels per group
  int64_t kg = 0;        // output channels per group; divides the lane count
  int64_t channels = 0;  // channels per input pixel (bounds the span loads)
  const T* zero = nullptr;  // padding taps' zero vector: taps with only padding rows are skipped
  const T* w = nullptr;  // packed [vb][wtaps][cg][L]
  int64_t wtaps = 0;     // taps in the packed weights
  const int64_t* tap_index = nullptr;  // packed tap of call tap t (null: t itself)
  int64_t vb_begin = 0, vb_end = 0;
  int64_t ncols = 0;     // valid output channels over all vector blocks
  T* const* c = nullptr;
  int64_t c_off = 0;
  int64_t c_cstride = 1;
  EpilogueArgs<T> ep;    // padded to a whole number of vectors
};

// GConv's arithmetic (cg == kg, kg dividing L, whole vectors of channels)
// over one channels_last output row, for kernels 3 wide, stride 1 or 2 and
// dilation 1 along W (the caller checks), as a sliding window: per kernel
// row and reduction channel, each input pixel is permuted once and feeds
// every output of a block whose window covers it (up to 3 multiply-adds),
// where gconv permutes once per multiply-add.
//
//   out[q][vb*L + j] = epilogue( sum_{r,s,c} rows[r][q*stride - pad + s][vb*L + (j/kg)*cg + c] * w[vb][r*S+s][c][j] )
template <typename T>
struct GConvRowArgs {
  const T* const* rows = nullptr;  // per kernel row: input row (pixel 0, channel 0), or null (padding)
  int64_t R = 0, S = 3;            // kernel rows, and taps per row: 3 (stride 1 or 2), or 1 and 2 (stride 1)
  int64_t W = 0, Q = 0;            // input and output row lengths
  int64_t C = 0;                   // channels per input pixel (its pitch)
  int64_t stride = 1, pad = 0;     // along W; pad may be negative (the window starts inside the row)
  int64_t cg = 0, kg = 0;
  const T* w = nullptr;            // gconv's packing, [vb][R*S][cg][L]
  int64_t vb_begin = 0, vb_end = 0;
  int64_t ncols = 0;
  T* out = nullptr;                // output pixel q, channel k at out[q * out_ps + k * c_cstride]
  int64_t out_ps = 0, c_cstride = 1;
  bool stream = false;             // non-temporal stores (caller checked 64-byte alignment of every pixel)
  EpilogueArgs<T> ep;              // padded to a whole number of vectors
};

// Depthwise convolution (channel multiplier 1) over channels_last pixels,
// indirect like IGemm: for output pixel i,
//
//   C[i][c] = epilogue( sum_t A[i, t][c] * w[tap(t)][c] )
//
// with A[i, t] = a[i * ntaps + t] (a pixel's channels, or `zero` for taps in
// the padding). The same kernel runs grad_input with the transposed pixel
// map. Vectorised over channels [c_begin, c_end) of `channels`.
template <typename T>
struct DwConvArgs {
  const T* const* a = nullptr;
  const T* zero = nullptr;
  int64_t m = 0;
  int64_t ntaps = 0;
  int64_t channels = 0;
  int64_t c_begin = 0, c_end = 0;
  const T* w = nullptr;                 // [wtaps][cpad], channel-contiguous, zero-padded
  const int64_t* tap_index = nullptr;   // weight tap of call tap t (null: t)
  int64_t cpad = 0;
  T* const* c = nullptr;                // output pixel pointers (channel stride 1)
  bool stream = false;                  // non-temporal stores (caller checked 64-byte alignment of every pixel)
  EpilogueArgs<T> ep;                   // padded to cpad
};

// Direct depthwise convolution of a band of consecutive channels_last output
// rows (multiplier 1): rows[b * R + r] is input row ih(b, r) (pixel 0,
// channel 0) or null when that row is padding. Outputs [q_lo, q_hi) have every tap inside the row and run
// without checks in blocks of pixels x channel vectors; the border columns
// check each tap.
template <typename T>
struct DwRowArgs {
  const T* const* rows = nullptr;  // band * R: rows[b * R + r] is kernel row r's input row of output row b
  int64_t band = 1;                 // consecutive output rows per call
  int64_t R = 0, S = 0;
  int64_t W = 0, Q = 0, C = 0;
  int64_t stride = 1, pad = 0, dil = 1;  // along W
  int64_t q_lo = 0, q_hi = 0;
  const T* w = nullptr;  // [R*S][cpad]
  int64_t cpad = 0;
  T* out = nullptr;      // output row b, pixel q, channel c at out[b * out_rs + q * out_ps + c]
  int64_t out_ps = 0, out_rs = 0;
  bool stream = false;   // non-temporal stores (caller checked 64-byte alignment of every pixel)
  int64_t fresh_from = 0;  // kernel rows >= this were not read by the previous output row (prefetched)
  EpilogueArgs<T> ep;    // padded to cpad
};

// Depthwise weight gradient over a chunk of channels_last output rows
// (multiplier 1), for output row i of the chunk:
//   dw[r][s][c] += sum_q dy_i[q][c] * row_{i,r}[q * stride - pad + s * dil][c];  db[c] += sum_q dy_i[q][c]
// rows[i * R + r] is the input row kernel row r of output row i reads
// (pixel 0, channel 0), or null when that row is padding; dy[i] is output
// row i's gradient (pixel q, channel c at dy[i][q * C + c]). A chunk's rows
// are reused from L2 for every channel vector.
template <typename T>
struct DwWGradArgs {
  const T* const* rows = nullptr;
  const T* const* dy = nullptr;
  int64_t nrows = 0;
  int64_t R = 0, S = 0, W = 0, Q = 0, C = 0;
  int64_t stride = 1, pad = 0, dil = 1;
  int64_t cpad = 0;
  T* dw = nullptr;  // [R*S][cpad], accumulated into
  T* db = nullptr;  // [cpad] or null, accumulated into
};

// Both gradients of a stride-1, dilation-1, 3x3 depthwise conv (multiplier 1)
// over a chunk of channels_last input rows, for input row i of the chunk:
//   dx_i[w][c]    = sum_{r,s} dy_{i,r}[w + pad - s][c] * w[r][s][c]
//   dw[r][s][c]  += sum_w dy_{i,r}[w + pad - s][c] * x_i[w][c]
//   db[c]        += sum over the dbrows' pixels of dy[q][c]
// dy[i * 3 + r] is the output row that kernel row r reads input row i from
// (pixel 0, channel 0), or a zero row of Q pixels where there is none;
// columns outside [0, Q) are zeros. dx rows are dense (pixel pitch C);
// `stream` stores them non-temporally (64-byte aligned rows). Each output
// gradient vector is loaded once per kernel row and serves both gradients.
template <typename T>
struct DwBwdArgs {
  const T* const* dy = nullptr;      // nrows * 3
  const T* const* x = nullptr;       // nrows
  T* const* dx = nullptr;            // nrows
  const T* const* dbrows = nullptr;  // ndb output rows whose bias gradient this call sums
  int64_t ndb = 0;
  int64_t nrows = 0, W = 0, Q = 0, C = 0, pad = 0, cpad = 0;
  const T* w = nullptr;  // [9][cpad]
  T* dw = nullptr;       // [9][cpad], accumulated into
  T* db = nullptr;       // [cpad] or null, accumulated into
  bool stream = false;
};

// Output rows of an NCHW depthwise plane, each vectorised along the row:
//   out_i[q] = epilogue( sum_{r, s} w[r * S + s] * rows[i * R + r][tap_off[s] + q] )
// The caller copies each input row once into zero-padded stride-phase rows
// (phase f holds padded columns f, f + stride, ...), so every tap is a
// contiguous unaligned vector load for any stride, padding and dilation:
// tap s of a kernel row reads phase (s * dil) % stride from column
// (s * dil) / stride, tap_off[s] elements from the kernel row's first phase.
template <typename T>
struct DwPlaneRowArgs {
  const T* const* rows = nullptr;  // nout * R: output row i's kernel rows (first phase), or null (padding)
  const int64_t* tap_off = nullptr;  // S
  int64_t nout = 1;
  int64_t R = 0, S = 0;
  int64_t Q = 0;
  const T* w = nullptr;  // R*S weights of this plane
  T bias = 0, scale = 1, shift = 0;
  int act = 0;
  T* out = nullptr;      // output row i: Q contiguous outputs from out + i * out_rs
  int64_t out_rs = 0;
  double* stat_sum = nullptr;  // batch statistics of this plane's channel (see EpilogueArgs)
  double* stat_sq = nullptr;
};

// Channels <-> pixels between planes and channels_last rows: planes[c]
// holds n contiguous values of channel c; pixel i's channels start at
// tile + i * ld (ld = L: a tile of one vector of channels, the blocked NCHW
// depthwise path; ld = C: a block of an NHWC tensor).
// to_tile: tile[i * ld + c] = planes[c][i] for c < nc; with ld == L the
//          channels c >= nc are zeroed, else left alone.
// else:    planes[c][i] = tile[i * ld + c] for c < nc.
template <typename T>
struct TileArgs {
  T* const* planes = nullptr;
  int64_t nc = 0, n = 0;
  T* tile = nullptr;
  int64_t ld = 0;  // 0: L
  bool to_tile = true;
};

// Backward of training-mode BatchNorm followed by an activation, over
// channels_last rows (or NCHW planes, as in EpilogueMapArgs), per channel c:
//   u = (z - mean) * invstd * gamma + beta,  g = dy * act'(u),  xhat = (z - mean) * invstd
//   reduce: sum_g[c] += sum g,  sum_gx[c] += sum g * xhat         (double, per thread)
//   apply:  dz = k1[c] * g + k2[c] * xhat + k3[c]
template <typename T>
struct BnActArgs {
  const T* dy = nullptr;
  const T* z = nullptr;
  T* dz = nullptr;
  int64_t rows = 0, cols = 0;
  bool planes = false;
  int64_t channels = 0, first_row = 0;
  const T* mean = nullptr;    // per channel (unpadded)
  const T* invstd = nullptr;
  const T* gamma = nullptr;
  const T* beta = nullptr;
  int act = 0;
  double* sum_g = nullptr;    // reduce pass
  double* sum_gx = nullptr;
  const T* k1 = nullptr;      // apply pass
  const T* k2 = nullptr;
  const T* k3 = nullptr;
};

// Row-wise standalone epilogue over `rows` vectors of `cols` contiguous
// channels (channels_last), or over `rows` planes of `cols` pixels sharing
// one channel each (NCHW, channel = row % channels).
template <typename T>
struct EpilogueMapArgs {
  const T* x = nullptr;
  T* y = nullptr;
  int64_t rows = 0;
  int64_t cols = 0;
  bool planes = false;     // NCHW planes instead of channels_last rows
  int64_t channels = 0;    // for planes: plane r has channel (first_row + r) % channels
  int64_t first_row = 0;
  bool stream = false;    // non-temporal stores (caller checked 64-byte alignment of every full vector)
  EpilogueArgs<T> ep;     // indexed by channel; unpadded
};

// Rows per microkernel call for nv accumulator vectors per row. Two limits:
// vector registers (mr * nv accumulators + nv B vectors) and general-purpose
// registers: every row has its own A pointer, and x86-64 has ~13 left for
// them; more rows reload pointers from the stack on every k step and the
// kernel turns load-bound (measured: 24 rows ran at ~60% of 12 rows' rate).
constexpr int ukernel_mr(int regs, int nv) {
  return regs >= 32 ? (nv <= 2 ? 12 : nv == 3 ? 8 : 6)
                    : (nv == 1 ? 12 : nv == 2 ? 6 : nv == 3 ? 4 : 2);
}

// Bytes of B one reduction block may hold: a quarter of this CPU's L2 (the
// rows' A operands take up to 192 KB beside it, see rows_per_tile), within
// [128 KB, 512 KB]; 128 KB where the size is unknown. At 128 KB on the 1 MB
// L2 of Zen 4, 1x1 convs with 960-1280 input channels cut their reduction
// in 2-3 blocks, each storing and reloading C's partial sums: 256 KB took
// 0.87-0.97x the time (1280->320 grad_input, 960->320, 1024->512), other
// shapes unchanged.
int64_t gemm_block_bytes();

// Reduction blocking of the indirect GEMM: (taps per block, channels per
// block) such that one block of one panel of B, nr columns wide, stays
// within gemm_block_bytes() of L2 next to the rows' A operands and C's
// partial sums. Whole taps when a tap's channels fit; otherwise single taps
// cut into channel chunks.
struct ReductionBlocking {
  int64_t taps, k;
};
inline ReductionBlocking reduction_blocking(int64_t ntaps, int64_t kc, int64_t nr, int64_t elem_bytes) {
  const int64_t budget = gemm_block_bytes() / (nr * elem_bytes);  // reduction rows of B per block
  if (kc <= budget) {
    const int64_t taps = budget / (kc > 0 ? kc : 1);
    return {taps < ntaps ? (taps > 0 ? taps : 1) : ntaps, kc};
  }
  return {1, budget};
}

// Deformable-convolution columns for a tile of m output pixels of one image
// (csrc/cpu/deform_conv2d_kernel.cpp; sampling rules in effconv/deform.h).
// Column row i holds, per weight group g, tap t and channel c of the group,
// the bilinear sample (times the mask) at col[i * ldcol + (g * taps + t) * cg + c].
// deform_col writes col; deform_col_backward takes the columns' gradient in
// the same layout (gcol) and adds the input gradient into grad_x, and writes
// the offset and mask gradients of the tile's pixels.
template <typename T>
struct DeformColArgs {
  const T* x = nullptr;  // the image, channels_last: pixel p, channel c at x[p * C + c]
  int64_t H = 0, W = 0, C = 0;
  int64_t m = 0;
  const int64_t* base_y = nullptr;  // per tile pixel: oh * stride - pad (tap (0, 0) before the offset)
  const int64_t* base_x = nullptr;
  const T* offset = nullptr;  // per tile pixel i: offset[i * off_ps + 2 * (og * taps + t) + {0: y, 1: x}]
  int64_t off_ps = 0;
  const T* mask = nullptr;    // null: no mask; else mask[i * mask_ps + og * taps + t]
  int64_t mask_ps = 0;
  int64_t kh = 0, kw = 0, dil_h = 1, dil_w = 1;
  int64_t offset_groups = 1, groups = 1;
  T* col = nullptr;
  int64_t ldcol = 0;
  // backward only
  const T* gcol = nullptr;
  T* grad_x = nullptr;       // image-sized, channels_last, accumulated into (null: not wanted)
  T* grad_offset = nullptr;  // offset's layout (null: not wanted)
  T* grad_mask = nullptr;    // mask's layout (null: not wanted or no mask)
};

// Winograd F(MxM, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
// Neural Networks", 2016) for 3x3 stride-1 convs, M = 2 or 4 (WinoArgs::tile).
// Output tile (n, ti, tj) is the MxM block of pixels (M ti + a, M tj + b);
// with d_c its (M+2)x(M+2) input patch of channel c (rows M ti - pad_h ..,
// columns M tj - pad_w .., zero outside):
//
//   Y = A^T [ sum_c U_c (*) (B^T d_c B) ] A,   U_c = G g_c G^T   ((*): elementwise)
//
// so the E = (M+2)^2 elements e = (M+2) * row + col of the transformed tile
// are E independent GEMMs (tiles x C times C x K): 16 per 2x2 tile (4
// multiply-adds per output pixel and channel pair instead of 9) or 36 per
// 4x4 tile (2.25). These kernels are the transforms around those GEMMs, over
// a block of nt consecutive tiles of the N x TH x TW tile grid starting at t0:
//   wino_input:  V[e][i][c] = (B^T d B)[e] of tile t0 + i, channel c
//   wino_output: out pixels of tile t0 + i, channels [col0, col_end)
//                = epilogue((A^T M A)) with M[e][i][j] the GEMMs' results
// F(2x2)'s coefficients are 0, +-1 and +-1/2 (the 1/2 folded into U), so
// fp32 rounding stays within a small factor of direct summation's; F(4x4)'s
// (points 0, 1, -1, 1/2, -2: up to 8 in A, 5/2 in B) give several times
// that, growing with C (see winograd_tile in kernels.h).
constexpr int64_t kWinoMaxTiles = 96;  // tiles per block (the kernels' stack arrays)

template <typename T>
struct WinoArgs {
  int tile = 2;             // output tile edge M: F(MxM, 3x3) on (M + 2)^2 patches, M = 2 or 4
  int64_t t0 = 0, nt = 0;   // nt <= kWinoMaxTiles
  int64_t TH = 0, TW = 0;   // tile grid per image
  // input transform: x channels_last, dense: pixel (n, h, w) at x + ((n * H + h) * W + w) * C
  const T* x = nullptr;
  const T* x_end = nullptr;  // one past the tensor's last element
  const T* zero = nullptr;   // ldv zeros, read for patch pixels in the padding
  int64_t H = 0, W = 0, C = 0, pad_h = 0, pad_w = 0;
  T* v = nullptr;            // V[e][i][c] at v + e * v_stride + i * ldv + c
  int64_t v_stride = 0;
  int64_t ldv = 0;           // C rounded up to whole vectors
  // output transform: out pixel (n, p, q), channel k at out + n * os_n + p * os_h + q * os_w + k
  const T* m = nullptr;     // M[e][i][j] at m + e * m_stride + i * ldm + j, j = k - col0
  int64_t m_stride = 0, ldm = 0;
  int64_t col0 = 0, col_end = 0;
  T* out = nullptr;
  int64_t os_n = 0, os_h = 0, os_w = 0, P = 0, Q = 0;
  EpilogueArgs<T> ep;       // padded to a whole number of vectors past col_end
};

// Max pooling forward, output rows [p0, p1) of one image (F.max_pool2d:
// NaN wins, windows skip the padding). channels_last (cs = s.C): pixel
// (h, w) at x + (h * W + w) * C, output pixel (p, q) at y + (p * Q + q) * C.
// planes (NCHW, cs = 1): one channel, pixel (h, w) at x + h * W + w.
template <typename T>
struct MaxPoolArgs {
  const T* x = nullptr;
  T* y = nullptr;
  bool planes = false;
  bool prefetch = false;  // channels_last: request the next output row's new input rows (inputs beyond L3)
  int64_t cs = 1, p0 = 0, p1 = 0;
  Pool2dShape s;
};

// Max pooling backward, channels_last, one image, channels [c0, c1): writes
// every element of gi: the sum of the gradients go[(p * Q + q) * C + c] of
// the windows whose argmax it is, by the forward's rule (first maximum, a
// NaN wins; an all -inf window credits its first valid tap), in (p, q)
// order. The output rows covering input row h are rows[row_begin[h] ..
// row_begin[h + 1]) in ascending order, likewise the columns; `ring` output
// rows' argmaxes are live at once (max_pool2d_kernel.cpp builds all three).
template <typename T>
struct MaxPoolBwdArgs {
  const T* x = nullptr;
  const T* go = nullptr;
  T* gi = nullptr;
  int64_t c0 = 0, c1 = 0;
  Pool2dShape s;
  const int64_t *row_begin = nullptr, *rows = nullptr, *col_begin = nullptr, *cols = nullptr;
  int64_t ring = 1;
};

// The ISAs whose igemm has the channel-interleaved kernel (impl.h's kCi4).
constexpr bool isa_has_ci4(int vec_bytes, int vec_regs) { return vec_bytes == 64 && vec_regs >= 32; }
// ci4 vectors are 16 float lanes: 4 columns x 4 interleaved channels.
constexpr int64_t kCi4Lanes = 16;
constexpr int64_t kCi4MaxCols = 24;

struct IsaKernels {
  const char* name;
  int vec_bytes;
  int vec_regs;

  void (*igemm_f32)(const IGemmArgs<float>&);
  void (*igemm_f64)(const IGemmArgs<double>&);
  void (*wgemm_f32)(const WGemmArgs<float>&);
  void (*wgemm_f64)(const WGemmArgs<double>&);
  void (*epilogue_f32)(const EpilogueMapArgs<float>&);
  void (*epilogue_f64)(const EpilogueMapArgs<double>&);
  void (*gconv_f32)(const GConvArgs<float>&);
  void (*gconv_f64)(const GConvArgs<double>&);
  void (*gconvrow_f32)(const GConvRowArgs<float>&);
  void (*gconvrow_f64)(const GConvRowArgs<double>&);
  void (*dwconv_f32)(const DwConvArgs<float>&);
  void (*dwconv_f64)(const DwConvArgs<double>&);
  void (*dwplane_f32)(const DwPlaneRowArgs<float>&);
  void (*dwplane_f64)(const DwPlaneRowArgs<double>&);
  void (*dwrow_f32)(const DwRowArgs<float>&);
  void (*dwrow_f64)(const DwRowArgs<double>&);
  void (*dwwgrad_f32)(const DwWGradArgs<float>&);
  void (*dwwgrad_f64)(const DwWGradArgs<double>&);
  void (*dwbwd3_f32)(const DwBwdArgs<float>&);
  void (*dwbwd3_f64)(const DwBwdArgs<double>&);
  void (*bnact_reduce_f32)(const BnActArgs<float>&);
  void (*bnact_reduce_f64)(const BnActArgs<double>&);
  void (*bnact_apply_f32)(const BnActArgs<float>&);
  void (*bnact_apply_f64)(const BnActArgs<double>&);
  void (*deform_col_f32)(const DeformColArgs<float>&);
  void (*deform_col_f64)(const DeformColArgs<double>&);
  void (*deform_col_backward_f32)(const DeformColArgs<float>&);
  void (*deform_col_backward_f64)(const DeformColArgs<double>&);
  void (*wino_input_f32)(const WinoArgs<float>&);
  void (*wino_input_f64)(const WinoArgs<double>&);
  void (*wino_output_f32)(const WinoArgs<float>&);
  void (*wino_output_f64)(const WinoArgs<double>&);
  void (*maxpool_f32)(const MaxPoolArgs<float>&);
  void (*maxpool_f64)(const MaxPoolArgs<double>&);
  void (*maxpool_backward_f32)(const MaxPoolBwdArgs<float>&);
  void (*maxpool_backward_f64)(const MaxPoolBwdArgs<double>&);
  void (*tile_f32)(const TileArgs<float>&);
  void (*tile_f64)(const TileArgs<double>&);

  template <typename T>
  int lanes() const {
    return vec_bytes / int(sizeof(T));
  }
  int mr(int nv) const { return ukernel_mr(vec_regs, nv); }
  // Whether igemm has the channel-interleaved kernel for panels of nv
  // vectors over ncols columns (per group) and this reduction length
  // (AVX-512 float; kc and every k block a multiple of 4): one-vector panels,
  // or one two-vector panel of 17-24 columns (MobileNet's 24-channel layers),
  // which plain two-vector panels pad to 32.
  template <typename T>
  bool ci4(int nv, int64_t ncols, int64_t kc, int64_t k_block) const {
    return sizeof(T) == 4 && isa_has_ci4(vec_bytes, vec_regs) && (nv == 1 || (nv == 2 && ncols <= kCi4MaxCols)) &&
           kc % 4 == 0 && k_block % 4 == 0;
  }
  void igemm(const IGemmArgs<float>& a) const { igemm_f32(a); }
  void igemm(const IGemmArgs<double>& a) const { igemm_f64(a); }
  void wgemm(const WGemmArgs<float>& a) const { wgemm_f32(a); }
  void wgemm(const WGemmArgs<double>& a) const { wgemm_f64(a); }
  void epilogue(const EpilogueMapArgs<float>& a) const { epilogue_f32(a); }
  void epilogue(const EpilogueMapArgs<double>& a) const { epilogue_f64(a); }
  void gconv(const GConvArgs<float>& a) const { gconv_f32(a); }
  void gconv(const GConvArgs<double>& a) const { gconv_f64(a); }
  void gconvrow(const GConvRowArgs<float>& a) const { gconvrow_f32(a); }
  void gconvrow(const GConvRowArgs<double>& a) const { gconvrow_f64(a); }
  void dwconv(const DwConvArgs<float>& a) const { dwconv_f32(a); }
  void dwconv(const DwConvArgs<double>& a) const { dwconv_f64(a); }
  void dwplane(const DwPlaneRowArgs<float>& a) const { dwplane_f32(a); }
  void dwplane(const DwPlaneRowArgs<double>& a) const { dwplane_f64(a); }
  void dwrow(const DwRowArgs<float>& a) const { dwrow_f32(a); }
  void dwrow(const DwRowArgs<double>& a) const { dwrow_f64(a); }
  void dwwgrad(const DwWGradArgs<float>& a) const { dwwgrad_f32(a); }
  void dwwgrad(const DwWGradArgs<double>& a) const { dwwgrad_f64(a); }
  void dwbwd3(const DwBwdArgs<float>& a) const { dwbwd3_f32(a); }
  void dwbwd3(const DwBwdArgs<double>& a) const { dwbwd3_f64(a); }
  void bnact_reduce(const BnActArgs<float>& a) const { bnact_reduce_f32(a); }
  void bnact_reduce(const BnActArgs<double>& a) const { bnact_reduce_f64(a); }
  void bnact_apply(const BnActArgs<float>& a) const { bnact_apply_f32(a); }
  void bnact_apply(const BnActArgs<double>& a) const { bnact_apply_f64(a); }
  void deform_col(const DeformColArgs<float>& a) const { deform_col_f32(a); }
  void deform_col(const DeformColArgs<double>& a) const { deform_col_f64(a); }
  void deform_col_backward(const DeformColArgs<float>& a) const { deform_col_backward_f32(a); }
  void deform_col_backward(const DeformColArgs<double>& a) const { deform_col_backward_f64(a); }
  void wino_input(const WinoArgs<float>& a) const { wino_input_f32(a); }
  void wino_input(const WinoArgs<double>& a) const { wino_input_f64(a); }
  void wino_output(const WinoArgs<float>& a) const { wino_output_f32(a); }
  void wino_output(const WinoArgs<double>& a) const { wino_output_f64(a); }
  void maxpool(const MaxPoolArgs<float>& a) const { maxpool_f32(a); }
  void maxpool(const MaxPoolArgs<double>& a) const { maxpool_f64(a); }
  void tile(const TileArgs<float>& a) const { tile_f32(a); }
  void tile(const TileArgs<double>& a) const { tile_f64(a); }
  void maxpool_backward(const MaxPoolBwdArgs<float>& a) const { maxpool_backward_f32(a); }
  void maxpool_backward(const MaxPoolBwdArgs<double>& a) const { maxpool_backward_f64(a); }
};

extern const IsaKernels kIsaBaseline;
#if defined(__x86_64__) || defined(_M_X64)
extern const IsaKernels kIsaAvx512;
extern const IsaKernels kIsaAvx2;
#endif

// The kernels selected for this CPU (best supported ISA, or EFFCONV_CPU_ISA).
const IsaKernels& isa_kernels();
// Testing hook: force "avx512" | "avx2" | "baseline"; returns false if this CPU lacks it.
bool set_isa(const char* name);

// Where B's value for reduction row r (of a tap's kc, or of all taps': the
// packing is the same) and panel column n goes in a panel of nr columns:
// r * nr + n, or with ci4 the channel-interleaved order of igemm_block_ci4:
// row block r / 4 holds nr / 4 vectors of kCi4Lanes, vector n / 4 lane
// 4 * (n % 4) + r % 4.
inline int64_t b_offset(int64_t r, int64_t n, int64_t nr, bool ci4) {
  if (!ci4) return r * nr + n;
  return (r - r % 4) * nr + (n / 4) * kCi4Lanes + 4 * (n % 4) + r % 4;
}

// Panel width choice: nv vectors per panel. Fewer padded columns wins, then
// wider panels: every panel re-reads the rows' A operands, which costs most
// when the reduction is short (1x1 layers with 16-64 input channels ran
// 15-25% faster with one 64-wide panel than two 32-wide ones on Zen 5).
inline int choose_nv(int64_t ncols, int lanes) {
  static const double kEfficiency[5] = {0.0, 0.78, 0.93, 0.97, 1.0};
  int best = 4;
  double best_cost = 1e300;
  for (int nv : {4, 3, 2, 1}) {
    const int64_t nr = int64_t(nv) * lanes;
    const int64_t padded = (ncols + nr - 1) / nr * nr;
    const double cost = double(padded) / kEfficiency[nv];
    if (cost < best_cost - 1e-9) {
      best_cost = cost;
      best = nv;
    }
  }
  return best;
}

}  // namespace cpu
}  // namespace effconv
