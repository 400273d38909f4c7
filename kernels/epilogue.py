"""The conv epilogue in Triton: y = act((acc + bias[c]) * scale[c] + shift[c]).

``apply_epilogue`` is inlined at the end of every conv kernel;
``epilogue_kernel`` is the standalone pass behind effconv::epilogue. The
activation codes are ``effconv.ops.ACTIVATIONS``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from effconv.kernels import _config

ACT_NONE, ACT_RELU, ACT_RELU6, ACT_SILU = 0, 1, 2, 3


@triton.jit
def activation(z, ACT: tl.constexpr):
    if ACT == 1:
        z = tl.where(z < 0, 0.0, z)  # NaN propagates, as torch.relu does
    elif ACT == 2:
        z = tl.where(z < 0, 0.0, z)
        z = tl.where(z > 6, 6.0, z)
    elif ACT == 3:
        z = z / (1.0 + tl.exp(-z))
    return z


@triton.jit
def apply_epilogue(acc, cols, col_mask, bias_ptr, scale_ptr, shift_ptr,
                   HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, ACT: tl.constexpr):
    """acc: [BLOCK_M, BLOCK_N] accumulator whose columns are output channels `cols`."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_mask, other=0.0).to(acc.dtype)[None, :]
    if HAS_SCALE:
        acc *= tl.load(scale_ptr + cols, mask=col_mask, other=1.0).to(acc.dtype)[None, :]
    if HAS_SHIFT:
        acc += tl.load(shift_ptr + cols, mask=col_mask, other=0.0).to(acc.dtype)[None, :]
    return activation(acc, ACT)


@triton.jit
def epilogue_kernel(x_ptr, y_ptr, bias_ptr, scale_ptr, shift_ptr, numel, C, INNER,
                    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, ACT: tl.constexpr,
                    ACC_DTYPE: tl.constexpr, IDX: tl.constexpr, BLOCK: tl.constexpr):
    """x, y dense in the same layout; element i has channel (i // INNER) % C
    (INNER = 1 for channels_last, H*W for NCHW). IDX is int64 only past 2^31
    elements: 64-bit division is a subroutine call with a stack frame."""
    offs = tl.program_id(0).to(IDX) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    ch = (offs // INNER) % C
    z = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_BIAS:
        z += tl.load(bias_ptr + ch, mask=mask, other=0.0).to(ACC_DTYPE)
    if HAS_SCALE:
        z *= tl.load(scale_ptr + ch, mask=mask, other=1.0).to(ACC_DTYPE)
    if HAS_SHIFT:
        z += tl.load(shift_ptr + ch, mask=mask, other=0.0).to(ACC_DTYPE)
    z = activation(z, ACT)
    tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=mask)


_epilogue = _config.Launcher(epilogue_kernel, "epilogue", "epilogue_kernel", key=["numel"])


def epilogue(input, bias, scale, shift, act: int, out):
    channels_last = input.dim() == 4 and out.is_contiguous(memory_format=torch.channels_last) and not out.is_contiguous()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = input.contiguous(memory_format=fmt)
    y = out if out.is_contiguous(memory_format=fmt) else torch.empty_like(x, memory_format=fmt)
    numel = x.numel()
    if numel == 0:
        return out
    inner = 1 if channels_last else numel // (x.shape[0] * x.shape[1])
    dummy = y
    grid = lambda meta: (triton.cdiv(numel, meta["BLOCK"]),)  # noqa: E731
    kernel, meta = _epilogue("any")
    kernel[grid](
        x, y, bias if bias is not None else dummy, scale if scale is not None else dummy,
        shift if shift is not None else dummy, numel, x.shape[1], inner,
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, ACT=act,
        ACC_DTYPE=_config.acc_dtype(x.dtype), IDX=_config.index_dtype(x, y), **meta,
    )
    if y is not out:
        out.copy_(y)
    return out
