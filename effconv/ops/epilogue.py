"""effconv::epilogue: the conv epilogue as a standalone pass,

    y = act((x + bias[c]) * scale[c] + shift[c])

for when it cannot ride inside a conv kernel (BatchNorm in training
normalises with statistics that exist only after the conv). The same math
runs fused inside every conv kernel; this op has a C++ CPU kernel, a CUDA
C++ kernel and a Triton kernel, all sharing effconv/epilogue.h's definitions.
"""
from __future__ import annotations

import torch

from effconv import _ext, backends
from effconv.ops import _common as c
from effconv.ops.conv2d import cpu_check, reference_epilogue, triton_check_elementwise

OP = "epilogue"

c.LIB.define(
    "epilogue(Tensor input, Tensor? bias=None, Tensor? scale=None, Tensor? shift=None, "
    "str activation='none') -> Tensor"
)


def _check(input, bias, scale, shift, activation):
    if input.dim() < 2:
        raise RuntimeError(
            f"effconv.{OP}: expected input with a channel dimension (N, C, ...), got size {c.fmt_size(input)}"
        )
    c.check_floating(OP, "input", input)
    for name, v in (("bias", bias), ("scale", scale), ("shift", shift)):
        c.check_channel_vector(OP, name, v, input.shape[1], input)
    c.activation_code(OP, activation)


def _cuda_check(device_type, dtype):
    if device_type != "cuda":
        return "the CUDA C++ kernels take CUDA tensors"
    if not _ext.with_cuda():
        return "effconv._C was built without CUDA kernels"
    return None


TABLE = backends.OpBackends(
    OP,
    checks={"cpu": cpu_check, "cuda": _cuda_check, "triton": triton_check_elementwise, "torch": lambda d, t: None},
    auto_order={"cpu": ("cpu", "torch"), "cuda": ("triton", "cuda", "torch")},
    auto_reason={"cpu": "auto: C++ kernels for CPU tensors", "cuda": "auto: Triton kernels for CUDA tensors"},
)


def _layout(input):
    return torch.channels_last if input.dim() == 4 and c.conv_memory_format(input) == torch.channels_last else (
        torch.contiguous_format
    )


@torch.library.register_fake("effconv::epilogue")
def _fake(input, bias=None, scale=None, shift=None, activation="none"):
    _check(input, bias, scale, shift, activation)
    return c.empty(input.shape, input, _layout(input))


def epilogue_impl(input, bias=None, scale=None, shift=None, activation="none"):
    _check(input, bias, scale, shift, activation)
    out = c.new_output(input.shape, input, _layout(input))
    act = c.ACTIVATIONS[activation]
    backend = backends.choose(TABLE, input.device, input.dtype, lambda: "elementwise")
    if backend == "cpu":
        _ext.C().epilogue_cpu(input, bias, scale, shift, act, out)
    elif backend == "cuda":
        _ext.C().epilogue_cuda(input, bias, scale, shift, act, out)
    elif backend == "triton":
        from effconv.kernels import epilogue as k

        k.epilogue(input, bias, scale, shift, act, out)
    else:
        view = (1, -1) + (1,) * (input.dim() - 2)
        z = input
        for v, f in ((bias, torch.add), (scale, torch.mul), (shift, torch.add)):
            if v is not None:
                z = f(z, v.to(z.dtype).view(view))
        out.copy_(reference_epilogue(z, None, None, None, activation))
    return out


torch.library.register_kernel("effconv::epilogue", ("cpu", "cuda"), epilogue_impl)


def _setup(ctx, inputs, output):
    input, bias, scale, shift, activation = inputs
    ctx.activation = activation
    ctx.save_for_backward(input, bias, scale, shift)


def _backward(ctx, grad):
    input, bias, scale, shift = ctx.saved_tensors
    # Trailing arguments left at their defaults may be missing from needs_input_grad.
    need = tuple(ctx.needs_input_grad) + (False,) * 5
    ct = torch.promote_types(input.dtype, torch.float32)
    u = input.to(ct)
    if bias is not None:
        u = u + bias.to(ct).view((1, -1) + (1,) * (input.dim() - 2))
    g_u, g_scale, g_shift = c.epilogue_backward(grad, u, scale, shift, ctx.activation, need[2], need[3])
    g_bias = g_u.sum([0] + list(range(2, input.dim()))).to(bias.dtype) if need[1] else None
    return g_u.to(input.dtype) if need[0] else None, g_bias, g_scale, g_shift, None


FUNCTION = c.register_autograd("epilogue", epilogue_impl, _backward, _setup)
