"""effconv::depthwise_conv2d: groups = input channels, channel multiplier
>= 1 (weight [C * m, 1, kH, kW]), with the fused epilogue, and its backward
ops depthwise_conv2d_grad_input / depthwise_conv2d_grad_weight, and
depthwise_conv2d_backward (both gradients; on CPU tensors one pass over
grad_output, which autograd uses when it needs both). Schemas,
checks, fake implementations and autograd come from _conv_family.py.

Backends: C++ on CPU tensors; on CUDA tensors Triton or the hand-written
CUDA C++ kernels, chosen per call by `auto_gpu_backend`.
"""
from __future__ import annotations

import torch

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


def cuda_check(device_type, dtype):
    if device_type != "cuda":
        return "the CUDA C++ kernels take CUDA tensors"
    if not _ext.with_cuda():
        return "effconv._C was built without CUDA kernels"
    if dtype == torch.float64:
        return "the CUDA C++ depthwise kernels accumulate in float32; float64 runs on Triton"
    return None


def _table(op: str, cuda_reason: str = "auto: Triton kernels for CUDA tensors") -> backends.OpBackends:
    return backends.OpBackends(
        op,
        checks={"cpu": cpu_check, "triton": triton_check_elementwise, "cuda": cuda_check, "torch": lambda d, t: None},
        auto_order={"cpu": ("cpu", "triton", "torch"), "cuda": ("triton", "cuda", "torch")},
        auto_reason={"cpu": "auto: C++ kernels for CPU tensors", "cuda": cuda_reason},
    )


def auto_gpu_backend(kind, t, weight_size, stride, padding, dilation, groups):
    """The documented 'auto' rule on CUDA tensors.

    CUDA C++ where its shared-memory halo kernel applies: channel multiplier 1,
    channels_last activations, channels a multiple of the 16-byte vector,
    kernels up to 7x7 (and, for grad_input, stride 1 with padding at most
    (k - 1) * dilation, where grad_input is the forward on the flipped
    kernel). Triton everywhere else, and for grad_weight, whose split
    pixel reduction fills the GPU where the CUDA C++ kernel's one block per
    (channel block, tap) may not.
    """
    k, _, r, s = weight_size
    vec = 16 // t.element_size()
    fast = (k == groups and t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
            and groups % vec == 0 and r <= 7 and s <= 7)
    if kind == "grad_input":
        fast = fast and list(stride) == [1, 1] and padding[0] <= (r - 1) * dilation[0] \
            and padding[1] <= (s - 1) * dilation[1]
    if kind != "grad_weight" and fast:
        return "cuda", "CUDA C++ shared-memory halo kernel (multiplier 1, channels_last, kernel <= 7x7)"
    return "triton", "Triton kernel (outside the CUDA C++ fast path's cases)"


def _c():
    return _ext.C()


def _triton():
    from effconv.kernels import depthwise as k  # lazy: imports triton

    return k


FAMILY = ConvFamily(
    "depthwise_conv2d",
    grouped=False,
    tables={"forward": _table("depthwise_conv2d"), "grad_input": _table("depthwise_conv2d_grad_input"),
            "grad_weight": _table("depthwise_conv2d_grad_weight"), "backward": _table(
                "depthwise_conv2d_backward",
                "auto: grad_input and grad_weight as two ops, each by its own 'auto' rule (no one-pass GPU kernel)")},
    runners={
        "forward": {"cpu": lambda x, w, b, sc, sh, st, p, d, g, act, out, stats=None:
                    _c().depthwise_conv2d_forward_cpu(x, w, b, sc, sh, st, p, d, act, out, stats),
                    "cuda": lambda x, w, b, sc, sh, st, p, d, g, act, out, stats=None:
                    _c().depthwise_conv2d_forward_cuda(x, w, b, sc, sh, st, p, d, act, out, stats),
                    "triton": lambda *a: _triton().forward(*a)},
        "grad_input": {"cpu": lambda dy, w, st, p, d, g, out: _c().depthwise_conv2d_grad_input_cpu(dy, w, st, p, d, out),
                       "cuda": lambda dy, w, st, p, d, g, out:
                       _c().depthwise_conv2d_grad_input_cuda(dy, w, st, p, d, out),
                       "triton": lambda *a: _triton().grad_input(*a)},
        "grad_weight": {"cpu": lambda dy, x, st, p, d, g, gw, gb:
                        _c().depthwise_conv2d_grad_weight_cpu(dy, x, st, p, d, gw, gb),
                        "cuda": lambda dy, x, st, p, d, g, gw, gb:
                        _c().depthwise_conv2d_grad_weight_cuda(dy, x, st, p, d, gw, gb),
                        "triton": lambda *a: _triton().grad_weight(*a)},
        # One pass over grad_output on the CPU; the GPU backends run the two ops.
        "backward": {"cpu": lambda dy, x, w, st, p, d, g, gi, gw, gb:
                     _c().depthwise_conv2d_backward_cpu(dy, x, w, st, p, d, gi, gw, gb)},
    },
    describe=kernel_name,
    check_weight=check_weight,
    gpu_rule=auto_gpu_backend,
)
TABLES = {FAMILY.ops[k]: t for k, t in FAMILY.tables.items()}
