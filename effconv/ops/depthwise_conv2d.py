"""effconv::depthwise_conv2d: groups = input channels, channel multiplier
>= 1 (weight [C * m, 1, kH, kW]), with the fused epilogue, and its backward
ops depthwise_conv2d_grad_input / depthwise_conv2d_grad_weight. Schemas,
checks, fake implementations and autograd come from _conv_family.py.

Backends: C++ on CPU tensors; on CUDA tensors Triton or the hand-written
CUDA C++ kernels (see `auto_gpu_backend` for the rule).
"""
from __future__ import annotations

from effconv import _ext, backends
from effconv.ops._conv_family import ConvFamily
from effconv.ops.conv2d import cpu_check, triton_check_elementwise


def check_weight(op, input_size, weight_size):
    c = input_size[1]
    if weight_size[1] != 1 or weight_size[0] % c != 0 or weight_size[0] == 0:
        raise RuntimeError(
            f"effconv.{op}: expected weight of size [{c} * multiplier, 1, kH, kW] for input with {c} channels, "
            f"got {list(weight_size)}"
        )


def kernel_name(weight_size, stride, padding, dilation, groups) -> str:
    k, _, r, s = weight_size
    mult = k // groups
    return f"depthwise {r}x{s}" + (f", multiplier {mult}" if mult > 1 else "")


def _table(op: str) -> backends.OpBackends:
    return backends.OpBackends(
        op,
        checks={"cpu": cpu_check, "triton": triton_check_elementwise, "torch": lambda d, t: None},
        auto_order={"cpu": ("cpu", "triton", "torch"), "cuda": ("triton", "torch")},
        auto_reason={"cpu": "auto: C++ kernels for CPU tensors", "cuda": "auto: Triton kernels for CUDA tensors"},
    )


def _c():
    return _ext.C()


def _triton():
    from effconv.kernels import depthwise as k  # lazy: imports triton

    return k



FAMILY = ConvFamily(
    "depthwise_conv2d",
    grouped=False,
    tables={"forward": _table("depthwise_conv2d"), "grad_input": _table("depthwise_conv2d_grad_input"),
            "grad_weight": _table("depthwise_conv2d_grad_weight")},
    runners={
        "forward": {"cpu": lambda x, w, b, sc, sh, st, p, d, g, act, out:
                    _c().depthwise_conv2d_forward_cpu(x, w, b, sc, sh, st, p, d, act, out),
                    "triton": lambda *a: _triton().forward(*a)},
        "grad_input": {"cpu": lambda dy, w, st, p, d, g, out: _c().depthwise_conv2d_grad_input_cpu(dy, w, st, p, d, out),
                       "triton": lambda *a: _triton().grad_input(*a)},
        "grad_weight": {"cpu": lambda dy, x, st, p, d, g, gw, gb:
                        _c().depthwise_conv2d_grad_weight_cpu(dy, x, st, p, d, gw, gb),
                        "triton": lambda *a: _triton().grad_weight(*a)},
    },
    describe=kernel_name,
    check_weight=check_weight,
)
TABLES = {FAMILY.ops[k]: t for k, t in FAMILY.tables.items()}
depthwise_conv2d_impl = FAMILY.impl
