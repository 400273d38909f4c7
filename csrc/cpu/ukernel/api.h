// Contract between the torch-aware CPU kernels (csrc/cpu/*_kernel.cpp) and
// the ISA-specific microkernels (csrc/cpu/isa/*.cpp). Plain structs and
// pointers only: the ISA translation units are compiled for AVX-512, AVX2 or
// the baseline ISA and must not share inline torch code with the rest of the
// library (see csrc/cpu/isa/README.md).
#pragma once
#include <cstdint>
#include <initializer_list>

namespace effconv {
namespace cpu {

// Per-output-column epilogue operands, padded by the caller to a whole number
// of panels. Null pointers mean "absent". `act` is an effconv::Activation.
template <typename T>
struct EpilogueArgs {
  const T* bias = nullptr;
  const T* scale = nullptr;
  const T* shift = nullptr;
  int act = 0;
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
  const T* const* a = nullptr;
  int64_t a_off = 0;
  int64_t m = 0;
  int64_t ntaps = 0;
  int64_t kc = 0;

  const T* b = nullptr;
  const int64_t* b_off = nullptr;
  int64_t panel_stride = 0;
  int nv = 1;
  int64_t p_begin = 0, p_end = 0;  // panel range computed by this call
  int64_t ncols = 0;               // valid columns over all panels

  T* const* c = nullptr;  // row pointers; column j of row i is c[i][c_off + j * c_cstride]
  int64_t c_off = 0;
  int64_t c_cstride = 1;

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
  int nv = 1;
  int64_t npanels = 0;

  T* dw = nullptr;  // [ntaps * cg][npanels * nr], accumulated into
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
  EpilogueArgs<T> ep;     // indexed by channel; unpadded
};

// Rows per microkernel call for nv accumulator vectors per row: as many as
// the register file holds next to nv B vectors and one broadcast.
constexpr int ukernel_mr(int regs, int nv) {
  return regs >= 32 ? (nv == 1 ? 24 : nv == 2 ? 14 : nv == 3 ? 8 : 6)
                    : (nv == 1 ? 12 : nv == 2 ? 6 : nv == 3 ? 4 : 2);
}

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

  template <typename T>
  int lanes() const {
    return vec_bytes / int(sizeof(T));
  }
  int mr(int nv) const { return ukernel_mr(vec_regs, nv); }
  void igemm(const IGemmArgs<float>& a) const { igemm_f32(a); }
  void igemm(const IGemmArgs<double>& a) const { igemm_f64(a); }
  void wgemm(const WGemmArgs<float>& a) const { wgemm_f32(a); }
  void wgemm(const WGemmArgs<double>& a) const { wgemm_f64(a); }
  void epilogue(const EpilogueMapArgs<float>& a) const { epilogue_f32(a); }
  void epilogue(const EpilogueMapArgs<double>& a) const { epilogue_f64(a); }
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

// Panel width choice: nv vectors per panel. Fewer padded columns wins; the
// single-vector panel is discounted because its broadcast-bound microkernel
// runs ~20% slower than the two-vector one (measured on Zen 5, AVX-512).
inline int choose_nv(int64_t ncols, int lanes) {
  static const double kEfficiency[5] = {0.0, 0.78, 1.0, 1.0, 0.97};
  int best = 2;
  double best_cost = 1e300;
  for (int nv : {2, 1, 3, 4}) {
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
