// Copies between NCHW and channels_last layouts on the tile kernel.
//
// torch's own layout copy (Tensor::contiguous(ChannelsLast), copy_ between
// layouts) measured ~3-6 GB/s on this project's large activations (a 58 MB
// MobileNetV2 tensor took ~18 ms on the development machine), and the
// kernels that run channels_last rows paid it twice per NCHW call. Here
// each (image, block of one vector of channels) is transposed in L x L
// register blocks: the planes are read as contiguous runs and the rows
// written in whole vectors.
#include "common.h"
#include "ukernel/api.h"

namespace effconv {
namespace cpu {
namespace {

bool dense_planes(const at::Tensor& t) {
  return t.is_contiguous() && !t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

bool dense_rows(const at::Tensor& t) {
  return t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
}

template <typename T>
void transpose_layout(const at::Tensor& planes, const at::Tensor& rows, bool to_rows) {
  const IsaKernels& isa = isa_kernels();
  const int64_t L = isa.lanes<T>(), N = planes.size(0), C = planes.size(1);
  const int64_t HW = planes.size(2) * planes.size(3), blocks = ceil_div(C, L);
  T* pp = planes.data_ptr<T>();
  T* rp = rows.data_ptr<T>();
  at::parallel_for(0, N * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<T*> ptrs(L);
    TileArgs<T> a;
    a.planes = ptrs.data();
    a.n = HW;
    a.ld = C;
    a.to_tile = to_rows;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / blocks, c0 = item % blocks * L;
      a.nc = std::min(L, C - c0);
      for (int64_t c = 0; c < a.nc; ++c) ptrs[c] = pp + (n * C + c0 + c) * HW;
      a.tile = rp + n * HW * C + c0;
      isa.tile(a);
    }
  });
}

}  // namespace

bool copy_layout(const at::Tensor& src, const at::Tensor& dst) {
  const at::ScalarType t = src.scalar_type();
  if (src.dim() != 4 || dst.sizes() != src.sizes() || dst.scalar_type() != t ||
      (t != at::kFloat && t != at::kDouble) || src.device() != dst.device() || !src.device().is_cpu())
    return false;
  bool to_rows;
  if (dense_planes(src) && dense_rows(dst))
    to_rows = true;
  else if (dense_rows(src) && dense_planes(dst))
    to_rows = false;
  else
    return false;
  const at::Tensor& planes = to_rows ? src : dst;
  const at::Tensor& rows = to_rows ? dst : src;
  if (t == at::kDouble)
    transpose_layout<double>(planes, rows, to_rows);
  else
    transpose_layout<float>(planes, rows, to_rows);
  return true;
}

}  // namespace cpu
}  // namespace effconv
