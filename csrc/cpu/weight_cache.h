// Packed-weight cache for the CPU forward kernels.
//
// The implicit-GEMM kernels repack a weight into microkernel panels on every
// call; at batch 1 that repacking costs as much as the convolution (a 960 x
// 320 1x1 conv on a 7x7 map: 1.2 MB packed to compute 49 rows). Inference
// calls the same weights again and again, so the packed panels are kept,
// keyed by the weight tensor's identity, its version counter (any in-place
// update -- optimizer step, load_state_dict, copy_ -- bumps it) and the
// packing parameters. The entry holds a weak reference to the weight, so a
// new tensor can never be mistaken for a freed one at the same address.
// Writes through `.data` bypass the version counter, so a hit also compares
// the weight's bytes with a snapshot taken at packing time -- except under
// torch.inference_mode(), where the version counter is trusted alone (the
// fast path for deployed inference). The cache serves
// only calls made with autograd off (torch.no_grad(), torch.inference_mode():
// inference, where it pays) and contiguous weights. Inference tensors (no
// version counter) are never cached.
#pragma once
#include <ATen/ATen.h>

#include <functional>
#include <memory>
#include <vector>

namespace effconv {
namespace cpu {

struct Packed {
  std::shared_ptr<const void> data;
  size_t bytes;
};

Packed cached_pack(const at::Tensor& weight, std::vector<int64_t> params, const std::function<Packed()>& pack);

// The packed form of `weight` for `params` (everything the packing depends
// on besides the weight's values), from the cache or from pack().
template <typename T, typename Pack>
std::shared_ptr<const std::vector<T>> packed_weight(const at::Tensor& weight, std::vector<int64_t> params,
                                                    const Pack& pack) {
  const Packed p = cached_pack(weight, std::move(params), [&] {
    auto v = std::make_shared<const std::vector<T>>(pack());
    return Packed{v, v->size() * sizeof(T)};
  });
  return std::static_pointer_cast<const std::vector<T>>(p.data);
}

// Drops every cached packing; returns the bytes released.
size_t clear_weight_cache();

}  // namespace cpu
}  // namespace effconv
