"""Pieces every op registration shares: the library handle, activation codes,
output allocation (layout rule and debug poisoning) and argument checks that
produce PyTorch-style errors naming what was expected and what was given."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator, Sequence

import torch
from torch._prims_common import suggest_memory_format

from effconv import backends

# One Library object per namespace; every op file defines its schemas on it.
LIB = torch.library.Library("effconv", "DEF")

# Activation names <-> codes; the codes are effconv::Activation in
# csrc/include/effconv/epilogue.h and ACT in kernels/epilogue.py.
ACTIVATIONS = {"none": 0, "relu": 1, "relu6": 2, "silu": 3}

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

_poison = os.environ.get("EFFCONV_POISON_OUTPUTS", "0") == "1"


@contextlib.contextmanager
def poison_outputs(enabled: bool = True) -> Iterator[None]:
    """Fill every kernel output with NaN before the kernel writes it, so an
    element a kernel forgets to write fails the parity tests."""
    global _poison
    old, _poison = _poison, enabled
    try:
        yield
    finally:
        _poison = old


def empty(size: Sequence, like: torch.Tensor, memory_format=torch.contiguous_format, dtype=None) -> torch.Tensor:
    """An output's storage (also used by fake implementations)."""
    return torch.empty(size, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)


_POOL_MIN_BYTES = 64 << 10  # output_pool.cpp's smallest class


def pooled(size: Sequence, like: torch.Tensor, memory_format=torch.contiguous_format, dtype=None) -> bool:
    """Whether new_output takes this output from effconv's buffer cache."""
    if like.device.type != "cpu" or len(size) not in (1, 2, 3, 4) or torch.compiler.is_compiling():
        return False
    numel = 1
    for s in size:
        numel *= int(s)
    if numel * (dtype or like.dtype).itemsize < _POOL_MIN_BYTES:
        return False
    if memory_format == torch.channels_last and len(size) != 4:
        return False
    from effconv import _ext

    return _ext.available()


def new_output(size: Sequence, like: torch.Tensor, memory_format=torch.contiguous_format, dtype=None,
               pool: bool | None = None) -> torch.Tensor:
    """A kernel output. Large CPU outputs come from effconv's buffer cache
    (csrc/cpu/output_pool.cpp: reused pages instead of a page fault per
    element on every call). `pool`: pooled()'s answer, when the caller kept it."""
    if pool is None:
        pool = pooled(size, like, memory_format, dtype)
    if pool:
        from effconv import _ext

        out = _ext.C().empty_pooled_cpu(list(size), dtype or like.dtype, memory_format == torch.channels_last)
    else:
        out = empty(size, like, memory_format, dtype)
    if _poison and out.is_floating_point():
        out.fill_(float("nan"))
    return out


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def observed() -> bool:
    """A tracer (torch.compile, torch.jit.trace), dispatch or function mode, or the profiler would see an op call."""
    return (torch.compiler.is_compiling() or bool(torch._C._len_torch_dispatch_stack())
            or torch._C._is_torch_function_mode_enabled() or torch.autograd.profiler._is_profiler_enabled
            or torch._C._get_tracing_state() is not None)


def direct_ok(*tensors, autograd: bool = False) -> bool:
    """True when calling an op's implementation directly is exactly what
    dispatching torch.ops.effconv.* would do: plain tensors, no tracer, mode
    or profiler listening, and nothing to record for autograd -- or, with
    `autograd`, something to record that the caller records itself by
    running the op's autograd.Function (register_autograd's), as the op's
    Autograd kernel would. Saves the dispatcher and autograd-wrapper round
    trips: ~10 us per call, 40-60 us per conv forward+backward."""
    if observed():
        return False
    grad = torch.is_grad_enabled() and not autograd
    for t in tensors:
        # nn.Parameter disables __torch_function__: as plain as a Tensor here.
        if t is not None and (type(t) not in _PLAIN or (grad and t.requires_grad)):
            return False
    return True


def register_autograd(op: str, impl, backward, setup_context) -> type:
    """torch.library.register_autograd for effconv::`op`, and the same
    formulas as a torch.autograd.Function over `impl` (the op's
    implementation, taking every schema argument positionally), returned
    for callers that skip the dispatcher (direct_ok(..., autograd=True)).
    The registered wrapper rebuilds the schema's argument list on every
    call (torch._library.utils.fill_defaults, ~10 us); this one does not."""
    torch.library.register_autograd(f"effconv::{op}", backward, setup_context=setup_context)

    def forward(ctx, *inputs):
        output = impl(*inputs)
        setup_context(ctx, inputs, output)
        return output

    return type(op, (torch.autograd.Function,), {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def call(op: str, impl, tensors, *args, function: type | None = None):
    """effconv::`op` on `args`: its implementation `impl` directly when that
    is what dispatching would do (direct_ok over `tensors`), else the op.
    With the op's autograd.Function (register_autograd's), calls that record
    autograd skip the dispatcher too."""
    if direct_ok(*tensors, autograd=function is not None):
        if function is not None and torch.is_grad_enabled() and any(t is not None and t.requires_grad
                                                                     for t in tensors):
            return function.apply(*args)
        return impl(*args)
    return getattr(torch.ops.effconv, op)(*args)


def call_key(tensors, args) -> tuple:
    """Everything an op's checks and routing read from a call: each tensor's
    size, strides, dtype and device (None stays None), the other arguments
    (lists made hashable) and the backend request in force."""
    return (backends.backend_state(),
            *[None if t is None else (t.shape, t.stride(), t.dtype, t.device) for t in tensors],
            *[tuple(a) if isinstance(a, list) else a for a in args])


_PLANS_MAX = 4096


def remember(plans: dict, key, plan) -> None:
    """Stores a plan, forgetting all of them once there are too many (shape-polymorphic callers)."""
    if len(plans) >= _PLANS_MAX:
        plans.clear()
    plans[key] = plan


def _suggests_channels_last(t: torch.Tensor) -> bool:
    if t.dim() != 4:
        return False
    contiguous, channels_last = t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
    if contiguous != channels_last:
        return channels_last
    # Both (sizes of 1 make strides ambiguous: a [K, 1, kH, kW] weight made
    # channels_last) or neither (strided views): PyTorch's stride-order rule.
    return suggest_memory_format(t) == torch.channels_last


def conv_memory_format(input: torch.Tensor, weight: torch.Tensor | None = None):
    """PyTorch's rule for a convolution's output layout: channels_last when
    the input or the weight suggests it (mkldnn_conv_use_channels_last)."""
    if _suggests_channels_last(input) or (weight is not None and _suggests_channels_last(weight)):
        return torch.channels_last
    return torch.contiguous_format


def activation_code(op: str, activation: str) -> int:
    try:
        return ACTIVATIONS[activation]
    except KeyError:
        raise RuntimeError(
            f"effconv.{op}: expected activation in {tuple(ACTIVATIONS)}, got {activation!r}"
        ) from None


def fmt_size(t: torch.Tensor) -> str:
    return str(list(t.shape))


def check_floating(op: str, name: str, t: torch.Tensor) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise RuntimeError(
            f"effconv.{op}: expected {name} of a floating dtype "
            f"(float16, bfloat16, float32 or float64), got {t.dtype}"
        )


def check_same(op: str, ref_name: str, ref: torch.Tensor, name: str, t: torch.Tensor, dtype=True) -> None:
    if t.device != ref.device:
        raise RuntimeError(
            f"effconv.{op}: expected {name} on {ref.device} (the device of {ref_name}), got {t.device}"
        )
    if dtype and t.dtype != ref.dtype:
        raise RuntimeError(f"effconv.{op}: expected {name} of dtype {ref.dtype} (the dtype of {ref_name}), got {t.dtype}")


def check_channel_vector(op: str, name: str, t: torch.Tensor | None, channels, ref: torch.Tensor) -> None:
    """bias/scale/shift: shape (channels,), same device as ref; bias shares ref's
    dtype, scale/shift may also be float32 (folded BatchNorm kept in fp32)."""
    if t is None:
        return
    if t.dim() != 1 or t.shape[0] != channels:
        raise RuntimeError(f"effconv.{op}: expected {name} of size [{channels}], got {fmt_size(t)}")
    if t.device != ref.device:
        raise RuntimeError(f"effconv.{op}: expected {name} on {ref.device}, got {t.device}")
    allowed = (ref.dtype,) if name == "bias" else (ref.dtype, torch.float32)
    if t.dtype not in allowed:
        expected = " or ".join(str(d) for d in dict.fromkeys(allowed))
        raise RuntimeError(f"effconv.{op}: expected {name} of dtype {expected}, got {t.dtype}")


def check_pair(op: str, name: str, value: Sequence[int], minimum: int) -> None:
    if len(value) != 2:
        raise RuntimeError(f"effconv.{op}: expected {name} with 2 elements, got {list(value)}")
    if any(v < minimum for v in value):
        what = "positive" if minimum > 0 else "non-negative"
        raise RuntimeError(f"effconv.{op}: expected {what} {name}, got {list(value)}")


def activation_grad(z: torch.Tensor, grad: torch.Tensor, activation: str) -> torch.Tensor:
    """grad * act'(z)."""
    if activation == "relu":
        return grad * (z > 0)
    if activation == "relu6":
        return grad * ((z > 0) & (z < 6))
    if activation == "silu":
        s = torch.sigmoid(z)
        return grad * (s * (1 + z * (1 - s)))
    return grad


def epilogue_backward(grad, u, scale, shift, activation, want_scale: bool, want_shift: bool):
    """Backward of y = act(u * scale + shift) over channel dim 1.

    Returns (grad_u, grad_scale, grad_shift); the last two are None unless
    wanted. Computes in at least float32 and casts back, so float16/bfloat16
    gradients carry one rounding, not one per elementwise step.
    """
    ct = torch.promote_types(u.dtype, torch.float32)
    view = (1, -1) + (1,) * (u.dim() - 2)
    dims = [0] + list(range(2, u.dim()))
    u_c = u.to(ct)
    z = u_c if scale is None else u_c * scale.to(ct).view(view)
    if shift is not None:
        z = z + shift.to(ct).view(view)
    g_z = activation_grad(z, grad.to(ct), activation)
    g_scale = (g_z * u_c).sum(dims).to(scale.dtype) if want_scale and scale is not None else None
    g_shift = g_z.sum(dims).to(shift.dtype) if want_shift and shift is not None else None
    g_u = g_z if scale is None else g_z * scale.to(ct).view(view)
    return g_u.to(u.dtype), g_scale, g_shift


def bn_grad_coefficients(gamma, invstd, sum_g, sum_gx, M: int) -> torch.Tensor:
    """[3, C] float64 (k1, k2, k3) with dz = k1 * g + k2 * xhat + k3: the
    training-mode BatchNorm backward of effconv/epilogue.h's
    bn_grad_coefficients, per channel, for the Triton and PyTorch paths."""
    k1 = gamma.double() * invstd.double()
    if M == 0:
        return torch.stack([k1, torch.zeros_like(k1), torch.zeros_like(k1)])
    return torch.stack([k1, -k1 * sum_gx / M, -k1 * sum_g / M])
