// Python bindings of effconv._C: plain functions, one per kernel. Operator
// schemas, fake tensors, autograd and backend routing live in effconv/ops/
// (one file per op), so each schema is written exactly once.
#include <torch/extension.h>

#include "cpu/kernels.h"
#include "cpu/weight_cache.h"
#include "snapshot.h"
#include "ukernel/api.h"
#ifdef EFFCONV_WITH_CUDA
#include "cuda/kernels.h"
#endif

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "effconv C++/CUDA kernels (internal; use effconv.functional)";
  // Kernels run without the GIL: they touch no Python objects.
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  m.def("conv2d_forward_cpu", &effconv::cpu::conv2d_forward, py::arg("input"), py::arg("weight"), py::arg("bias"),
        py::arg("scale"), py::arg("shift"), py::arg("stride"), py::arg("padding"), py::arg("dilation"),
        py::arg("groups"), py::arg("activation"), py::arg("out"), py::arg("stats") = py::none(), nogil);
  m.def("conv2d_max_pool2d_forward_cpu", &effconv::cpu::conv2d_max_pool2d_forward, nogil);
  m.def("conv2d_grad_input_cpu", &effconv::cpu::conv2d_grad_input, nogil);
  m.def("conv2d_grad_weight_cpu", &effconv::cpu::conv2d_grad_weight, nogil);
  m.def("depthwise_conv2d_forward_cpu", &effconv::cpu::depthwise_conv2d_forward, py::arg("input"),
        py::arg("weight"), py::arg("bias"), py::arg("scale"), py::arg("shift"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("activation"), py::arg("out"),
        py::arg("stats") = py::none(), nogil);
  m.def("depthwise_conv2d_grad_input_cpu", &effconv::cpu::depthwise_conv2d_grad_input, nogil);
  m.def("depthwise_conv2d_grad_weight_cpu", &effconv::cpu::depthwise_conv2d_grad_weight, nogil);
  m.def("depthwise_conv2d_backward_cpu", &effconv::cpu::depthwise_conv2d_backward, nogil);
  m.def("epilogue_cpu", &effconv::cpu::epilogue, nogil);
  m.def("max_pool2d_forward_cpu", &effconv::cpu::max_pool2d_forward, nogil);
  m.def("max_pool2d_backward_cpu", &effconv::cpu::max_pool2d_backward, nogil);
  m.def("deform_conv2d_forward_cpu", &effconv::cpu::deform_conv2d_forward, nogil);
  m.def("deform_conv2d_backward_cpu", &effconv::cpu::deform_conv2d_backward, nogil);
  // PyTorch's standard error (or warning, with warn_only) for an op without a
  // deterministic implementation under torch.use_deterministic_algorithms(True).
  m.def("alert_not_deterministic", [](const std::string& caller) {
    at::globalContext().alertNotDeterministic(caller);
  });
  m.def("bn_act_backward_cpu", &effconv::cpu::bn_act_backward, nogil);
  m.def("empty_pooled_cpu", &effconv::cpu::empty_pooled);
  m.def("empty_pool_cpu", &effconv::cpu::empty_pool);
  m.def("clear_weight_cache_cpu", &effconv::cpu::clear_weight_cache);
  m.def("dict_tags_supported", &effconv::dict_tags_supported);
  m.def("dict_tags", &effconv::dict_tags);
  m.def("tensor_stamps", &effconv::tensor_stamps);
  m.def("snapshot_holds", &effconv::snapshot_holds);

  m.def("cpu_isa", [] { return std::string(effconv::cpu::isa_kernels().name); },
        "Name of the ISA build of the CPU microkernels in use.");
  m.def("set_cpu_isa", [](const std::string& name) { return effconv::cpu::set_isa(name.c_str()); },
        "Force 'avx512', 'avx2' or 'baseline' (tests); returns False if this CPU lacks it.");
  m.def("set_cpu_winograd", &effconv::cpu::set_winograd,
        "Turn the CPU conv2d's Winograd path (forward and grad_input) on or off; returns the previous "
        "setting.");
  m.def("set_cpu_winograd_f4", &effconv::cpu::set_winograd_f4,
        "Let the CPU Winograd path use F(4x4, 3x3) where it pays (on by default), or keep F(2x2, 3x3); returns "
        "the previous setting.");
  m.def("cpu_winograd_tile", &effconv::cpu::winograd_tile,
        "The output tile edge (2 or 4) the CPU Winograd path uses for a conv with C input channels and N "
        "images of P x Q outputs (C, N, P, Q).");
  m.attr("cpu_winograd_f4_max_in") = effconv::cpu::kWinogradF4MaxIn;
  m.attr("cpu_winograd_f4_min_tiles") = effconv::cpu::kWinogradF4MinTiles;
  m.def("set_cpu_gconv_rows", &effconv::cpu::set_gconv_rows,
        "Turn the CPU conv2d's sliding-window grouped kernel (cg == kg, 3-wide) on or off; returns the previous "
        "setting.");
  m.def("cpu_gconv_rows_shape", &effconv::cpu::gconv_rows_shape,
        "[forward, grad_input]: whether a conv of this shape (C, K, R, S, stride_h, stride_w, pad_h, pad_w, "
        "dil_h, dil_w, groups, element bytes) runs the CPU's grouped sliding-window row kernel (false while it "
        "is off).");
  m.def("cpu_winograd", &effconv::cpu::winograd_enabled,
        "Whether the CPU conv2d's Winograd path is on (EFFCONV_CPU_WINOGRAD=0 turns it off).");
  m.def("cpu_winograd_shape", &effconv::cpu::winograd_shape,
        "Whether the forward of a conv of this shape (C, K, R, S, stride_h, stride_w, dil_h, dil_w, groups) "
        "qualifies for the CPU Winograd path (given enough output tiles, when it is on).");
  m.def("cpu_winograd_grad_input_shape", &effconv::cpu::winograd_grad_input_shape,
        "The same for its grad_input (C, K, R, S, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups).");
  m.attr("cpu_winograd_weight_per_tile") = effconv::cpu::kWinogradWeightPerTile;

#ifdef EFFCONV_WITH_CUDA
  m.attr("with_cuda") = true;
  m.def("epilogue_cuda", &effconv::cuda::epilogue, nogil);
  m.def("depthwise_conv2d_forward_cuda", &effconv::cuda::depthwise_conv2d_forward, py::arg("input"),
        py::arg("weight"), py::arg("bias"), py::arg("scale"), py::arg("shift"), py::arg("stride"),
        py::arg("padding"), py::arg("dilation"), py::arg("activation"), py::arg("out"),
        py::arg("stats") = py::none(), nogil);
  m.def("bn_act_backward_cuda", &effconv::cuda::bn_act_backward, nogil);
  m.def("deform_conv2d_forward_cuda", &effconv::cuda::deform_conv2d_forward, nogil);
  m.def("deform_conv2d_backward_cuda", &effconv::cuda::deform_conv2d_backward, nogil);
  m.def("depthwise_conv2d_grad_input_cuda", &effconv::cuda::depthwise_conv2d_grad_input, nogil);
  m.def("depthwise_conv2d_grad_weight_cuda", &effconv::cuda::depthwise_conv2d_grad_weight, nogil);
#else
  m.attr("with_cuda") = false;
#endif
}
