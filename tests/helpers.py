"""Test helpers: the tolerance table (DESIGN.md section 4), float64
references, and input makers. One table serves every test."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Relative tolerance per dtype, and an absolute tolerance scaled by
# sqrt(reduction length) of the compared quantity.
RTOL = {torch.float64: 1e-7, torch.float32: 1.3e-6, torch.float16: 1e-3, torch.bfloat16: 1.6e-2}
ATOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, reduction: int, msg: str = "") -> None:
    """Compare a kernel result with its float64 reference."""
    dtype = actual.dtype
    torch.testing.assert_close(
        actual, expected.to(dtype), rtol=RTOL[dtype], atol=ATOL[dtype] * math.sqrt(max(reduction, 1)),
        msg=(lambda m: f"{msg}: {m}") if msg else None,
    )


def assert_low_precision_ok(actual: torch.Tensor, expected64: torch.Tensor, torch_actual: torch.Tensor | None,
                            reduction: int, msg: str = "") -> None:
    """float16/bfloat16: within the table, and no worse than twice PyTorch's
    own error in the same dtype (plus one unit of the table's atol)."""
    assert_close(actual, expected64, reduction, msg)
    if torch_actual is not None and actual.numel():
        ours = (actual.double() - expected64).abs().max().item()
        theirs = (torch_actual.double() - expected64).abs().max().item()
        assert ours <= 2 * theirs + ATOL[actual.dtype], f"{msg}: error {ours:.3g} > 2 x torch's {theirs:.3g}"


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.is_contiguous(), a.is_contiguous(memory_format=torch.channels_last)) == (
        b.is_contiguous(), b.is_contiguous(memory_format=torch.channels_last))


def make_input(shape, dtype=torch.float32, layout="nchw", generator=None) -> torch.Tensor:
    """Fresh random data in the requested layout: 'nchw', 'channels_last' or
    'noncontig' (a strided view of a larger tensor)."""
    if layout == "noncontig":
        n, c, h, w = shape
        big = torch.randn(n, c + 1, h, 2 * w, dtype=torch.float64, generator=generator).to(dtype)
        return big[:, 1:, :, ::2]
    t = torch.randn(shape, dtype=torch.float64, generator=generator).to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def reference_epilogue(z, bias=None, scale=None, shift=None, activation=None):
    view = (1, -1) + (1,) * (z.dim() - 2)
    if bias is not None:
        z = z + bias.view(view)
    if scale is not None:
        z = z * scale.view(view)
    if shift is not None:
        z = z + shift.view(view)
    if activation == "relu":
        z = F.relu(z)
    elif activation == "relu6":
        z = F.relu6(z)
    elif activation == "silu":
        z = F.silu(z)
    return z


def conv2d_reference(x, w, b, stride, padding, dilation, groups, scale=None, shift=None, activation=None):
    """float64 F.conv2d plus the epilogue, differentiable."""
    z = F.conv2d(x, w, None, stride, padding, dilation, groups)
    return reference_epilogue(z, b, scale, shift, activation)
