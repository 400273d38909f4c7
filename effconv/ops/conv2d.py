"""effconv::conv2d: the implicit-GEMM convolution family (pointwise 1x1,
grouped, dilated, strided, dense) with the fused epilogue, and its backward
ops conv2d_grad_input / conv2d_grad_weight. Schemas, checks, fake
implementations and autograd come from effconv/ops/_conv_family.py; this
module supplies the backends and kernels.

Backends: C++ on CPU tensors; Triton on CUDA tensors (and on CPU tensors
under TRITON_INTERPRET=1). Triton is this family's GPU path: there is no
CUDA C++ conv2d kernel.
"""
from __future__ import annotations

import torch

from effconv import _ext, backends
from effconv.ops._conv_family import ConvFamily, reference_epilogue  # noqa: F401  (re-exported)


def cpu_check(device_type, dtype):
    if device_type != "cpu":
        return "the C++ CPU kernels take CPU tensors"
    if not _ext.available():
        return _ext.why_unavailable()
    return None


def triton_check_elementwise(device_type, dtype):
    """Triton kernels without tl.dot (depthwise, epilogue)."""
    ok, why = backends.triton_status()
    if not ok:
        return why
    if device_type == "cpu":
        if not backends.triton_interpreting():
            return "CPU tensors run Triton kernels only under TRITON_INTERPRET=1"
    elif device_type != "cuda":
        return f"Triton kernels do not run on {device_type} tensors"
    return None


def triton_check(device_type, dtype):
    """Triton kernels built on tl.dot."""
    why = triton_check_elementwise(device_type, dtype)
    if why is None and device_type == "cpu" and dtype == torch.bfloat16:
        return "the Triton interpreter has no bfloat16 tl.dot"
    return why


def _cuda_check(device_type, dtype):
    return "conv2d's GPU kernels are written in Triton; it has no CUDA C++ kernel"


def _table(op: str) -> backends.OpBackends:
    return backends.OpBackends(
        op,
        checks={"cpu": cpu_check, "triton": triton_check, "cuda": _cuda_check, "torch": lambda d, t: None},
        auto_order={"cpu": ("cpu", "triton", "torch"), "cuda": ("triton", "torch")},
        auto_reason={"cpu": "auto: C++ kernels for CPU tensors", "cuda": "auto: Triton kernels for CUDA tensors"},
    )


def kernel_name(weight_size, stride, padding, dilation, groups) -> str:
    """The routed member of the implicit-GEMM family (for explain())."""
    k, cg, r, s = weight_size
    if r == 1 and s == 1 and list(stride) == [1, 1] and list(padding) == [0, 0]:
        kind = "1x1 GEMM"
    else:
        kind = f"implicit GEMM {r}x{s}"
        c = cg * groups
        if _ext.available() and _c().cpu_winograd():
            passes = [name for name, ok in (
                ("forward", _c().cpu_winograd_shape(c, k, r, s, *stride, *dilation, groups)),
                ("grad_input", _c().cpu_winograd_grad_input_shape(c, k, r, s, *stride, *padding, *dilation, groups)),
            ) if ok]
            if passes:
                kind += (f"; C++: Winograd {' and '.join(passes)} with >= "
                         f"{c * k // _c().cpu_winograd_weight_per_tile} 2x2 output tiles (F(4x4,3x3) where its tiles do <= "
                         f"0.7x F(2x2,3x3)'s work, or <= 0.8x with >= {_c().cpu_winograd_f4_min_tiles} 4x4 tiles in the batch, "
                         f"and the computed conv has <= {_c().cpu_winograd_f4_max_in} "
                         f"input channels, else F(2x2,3x3))")
        if _ext.available() and groups > 1:
            ok = _c().cpu_gconv_rows_shape(c, k, r, s, *stride, *padding, *dilation, groups, 4)
            passes = [name for name, on in zip(("forward", "grad_input"), ok) if on]
            if passes:
                kind += f"; C++: grouped sliding-window rows {' and '.join(passes)} (fp32)"
    return kind + (f", groups={groups}" if groups > 1 else "")


def _triton():
    from effconv.kernels import conv2d as k  # lazy: imports triton

    return k


def _c():
    return _ext.C()


FAMILY = ConvFamily(
    "conv2d",
    grouped=True,
    tables={"forward": _table("conv2d"), "grad_input": _table("conv2d_grad_input"),
            "grad_weight": _table("conv2d_grad_weight")},
    runners={
        "forward": {"cpu": lambda *a: _c().conv2d_forward_cpu(*a), "triton": lambda *a: _triton().forward(*a)},
        "grad_input": {"cpu": lambda *a: _c().conv2d_grad_input_cpu(*a), "triton": lambda *a: _triton().grad_input(*a)},
        "grad_weight": {"cpu": lambda *a: _c().conv2d_grad_weight_cpu(*a),
                        "triton": lambda *a: _triton().grad_weight(*a)},
    },
    describe=kernel_name,
)
TABLES = {FAMILY.ops[k]: t for k, t in FAMILY.tables.items()}
