"""effconv::conv2d: the implicit-GEMM convolution family (pointwise 1x1,
grouped, dilated, strided, dense) with the fused epilogue, and its backward
ops conv2d_grad_input / conv2d_grad_weight.

Schemas are defined here once. Each op gets a fake (meta) implementation
with the real layout rule, one device implementation for CPU and CUDA that
routes to a backend (effconv.backends), and autograd formulas written with
these same ops, so second derivatives work too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from effconv import _ext, backends
from effconv.ops import _common as c

OP = "conv2d"

c.LIB.define(
    "conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
    "int groups, Tensor? scale=None, Tensor? shift=None, str activation='none') -> Tensor"
)
c.LIB.define(
    "conv2d_grad_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, int[2] stride, "
    "int[2] padding, int[2] dilation, int groups) -> Tensor"
)
c.LIB.define(
    "conv2d_grad_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, int[2] stride, "
    "int[2] padding, int[2] dilation, int groups) -> (Tensor, Tensor)"
)


# --------------------------------------------------------------------------
# Argument checks (shared by the fake and the real implementations, so
# torch.compile raises the same errors at trace time as eager does at run time).

def out_size(in_size, k, stride, pad, dil):
    return (in_size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def check_geometry(op, input_size, weight_size, stride, padding, dilation, groups):
    """Returns (P, Q). Sizes are (N, C, H, W) and (K, C/groups, R, S)."""
    c.check_pair(op, "stride", stride, 1)
    c.check_pair(op, "padding", padding, 0)
    c.check_pair(op, "dilation", dilation, 1)
    if groups <= 0:
        raise RuntimeError(f"effconv.{op}: expected groups > 0, got {groups}")
    n, ch, h, w = input_size
    k, cg, r, s = weight_size
    if k % groups != 0:
        raise RuntimeError(
            f"effconv.{op}: expected out_channels divisible by groups={groups}, got weight of size {list(weight_size)}"
        )
    if cg * groups != ch:
        raise RuntimeError(
            f"effconv.{op}: given groups={groups} and weight of size {list(weight_size)}, expected input "
            f"{list(input_size)} to have {cg * groups} channels, but got {ch} channels instead"
        )
    p = out_size(h, r, stride[0], padding[0], dilation[0])
    q = out_size(w, s, stride[1], padding[1], dilation[1])
    if p <= 0 or q <= 0:
        raise RuntimeError(
            f"effconv.{op}: calculated padded input size per channel: ({h + 2 * padding[0]} x {w + 2 * padding[1]}). "
            f"Kernel size (with dilation {list(dilation)}): ({dilation[0] * (r - 1) + 1} x {dilation[1] * (s - 1) + 1}). "
            "Expected a kernel no larger than the padded input"
        )
    return p, q


def check_conv2d(input, weight, bias, stride, padding, dilation, groups, scale, shift, activation):
    for name, t in (("input", input), ("weight", weight)):
        if t.dim() != 4:
            raise RuntimeError(f"effconv.{OP}: expected 4-D {name}, got {t.dim()}-D {name} of size {c.fmt_size(t)}")
    c.check_floating(OP, "input", input)
    c.check_same(OP, "input", input, "weight", weight)
    c.check_channel_vector(OP, "bias", bias, weight.shape[0], input)
    c.check_channel_vector(OP, "scale", scale, weight.shape[0], input)
    c.check_channel_vector(OP, "shift", shift, weight.shape[0], input)
    c.activation_code(OP, activation)
    return check_geometry(OP, input.shape, weight.shape, stride, padding, dilation, groups)


# --------------------------------------------------------------------------
# Backends

def cpu_check(device_type, dtype):
    if device_type != "cpu":
        return "the C++ CPU kernels take CPU tensors"
    if not _ext.available():
        return _ext.why_unavailable()
    return None


def triton_check(device_type, dtype):
    ok, why = backends.triton_status()
    if not ok:
        return why
    if device_type == "cpu":
        if not backends.triton_interpreting():
            return "CPU tensors run Triton kernels only under TRITON_INTERPRET=1"
        if dtype == torch.bfloat16:
            return "the Triton interpreter has no bfloat16 tl.dot"
    elif device_type != "cuda":
        return f"Triton kernels do not run on {device_type} tensors"
    return None


def _cuda_check(device_type, dtype):
    return "conv2d's GPU kernels are written in Triton; it has no CUDA C++ kernel"


def _table(op: str) -> backends.OpBackends:
    return backends.OpBackends(
        op,
        checks={"cpu": cpu_check, "triton": triton_check, "cuda": _cuda_check, "torch": lambda d, t: None},
        auto_order={"cpu": ("cpu", "triton", "torch"), "cuda": ("triton", "torch")},
        auto_reason={"cpu": "auto: C++ kernels for CPU tensors", "cuda": "auto: Triton kernels for CUDA tensors"},
    )


TABLES = {name: _table(name) for name in ("conv2d", "conv2d_grad_input", "conv2d_grad_weight")}


def kernel_name(weight_size, stride, padding, dilation, groups) -> str:
    """The routed member of the implicit-GEMM family (for explain())."""
    k, cg, r, s = weight_size
    if r == 1 and s == 1 and list(stride) == [1, 1] and list(padding) == [0, 0]:
        kind = "1x1 GEMM"
    else:
        kind = f"implicit GEMM {r}x{s}"
    return kind + (f", groups={groups}" if groups > 1 else "")


def _choose(op, t, weight_size, stride, padding, dilation, groups) -> str:
    return backends.choose(TABLES[op], t.device, t.dtype,
                           lambda: kernel_name(weight_size, stride, padding, dilation, groups))


def _kernels():
    from effconv.kernels import conv2d as triton_conv2d  # lazy: imports triton

    return triton_conv2d


def reference_epilogue(z, bias, scale, shift, activation):
    """The epilogue in PyTorch ops (the 'torch' backend and autograd)."""
    if bias is not None:
        z = z + bias.to(z.dtype).view(1, -1, 1, 1)
    if scale is not None:
        z = z * scale.to(z.dtype).view(1, -1, 1, 1)
    if shift is not None:
        z = z + shift.to(z.dtype).view(1, -1, 1, 1)
    if activation == "relu":
        z = torch.relu(z)
    elif activation == "relu6":
        z = F.relu6(z)
    elif activation == "silu":
        z = F.silu(z)
    return z


# --------------------------------------------------------------------------
# conv2d

@torch.library.register_fake("effconv::conv2d")
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, scale=None, shift=None, activation="none"):
    p, q = check_conv2d(input, weight, bias, stride, padding, dilation, groups, scale, shift, activation)
    return c.empty((input.shape[0], weight.shape[0], p, q), input, c.conv_memory_format(input, weight))


def conv2d_impl(input, weight, bias, stride, padding, dilation, groups, scale=None, shift=None, activation="none"):
    p, q = check_conv2d(input, weight, bias, stride, padding, dilation, groups, scale, shift, activation)
    out = c.new_output((input.shape[0], weight.shape[0], p, q), input, c.conv_memory_format(input, weight))
    act = c.ACTIVATIONS[activation]
    backend = _choose("conv2d", input, weight.shape, stride, padding, dilation, groups)
    if backend == "cpu":
        _ext.C().conv2d_forward_cpu(input, weight, bias, scale, shift, stride, padding, dilation, groups, act, out)
    elif backend == "triton":
        _kernels().forward(input, weight, bias, scale, shift, stride, padding, dilation, groups, act, out)
    else:
        z = F.conv2d(input, weight, None, stride, padding, dilation, groups)
        out.copy_(reference_epilogue(z, bias, scale, shift, activation))
    return out


torch.library.register_kernel("effconv::conv2d", ("cpu", "cuda"), conv2d_impl)


def _conv2d_setup(ctx, inputs, output):
    input, weight, bias, stride, padding, dilation, groups, scale, shift, activation = inputs
    ctx.conf = (stride, padding, dilation, groups)
    ctx.activation = activation
    # Backward runs on the backend requested when forward ran: autograd may
    # run it on another thread (CUDA), where use_backend() is not in effect.
    ctx.backend = backends.requested_backend()
    # relu/relu6 without a scale can be differentiated from the output alone;
    # anything else recomputes the pre-activation in backward instead of
    # keeping another activation-sized tensor alive.
    ctx.mask_from_output = activation in ("relu", "relu6") and scale is None
    saved_out = output if ctx.mask_from_output else None
    ctx.save_for_backward(input, weight, bias, scale, shift, saved_out)


def _conv2d_backward(ctx, grad):
    with backends.use_backend(ctx.backend):
        return _conv2d_backward_impl(ctx, grad)


def _conv2d_backward_impl(ctx, grad):
    input, weight, bias, scale, shift, output = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    act = ctx.activation
    # Trailing arguments left at their defaults may be missing from needs_input_grad.
    need = tuple(ctx.needs_input_grad) + (False,) * 10
    grad_scale = grad_shift = None
    if scale is None and act in ("none", "relu", "relu6"):
        # Differentiable from the output alone: no recompute.
        if act == "none":
            g_u = grad
        else:
            g_u = grad * ((output > 0) if act == "relu" else (output > 0) & (output < 6))
        if shift is not None and need[8]:
            grad_shift = g_u.sum((0, 2, 3), dtype=torch.promote_types(g_u.dtype, torch.float32)).to(shift.dtype)
    else:
        u = torch.ops.effconv.conv2d(input, weight, bias, stride, padding, dilation, groups)
        g_u, grad_scale, grad_shift = c.epilogue_backward(grad, u, scale, shift, act, need[7], need[8])
    grad_input = grad_weight = grad_bias = None
    if need[0]:
        grad_input = torch.ops.effconv.conv2d_grad_input(
            g_u, weight, list(input.shape), stride, padding, dilation, groups
        )
    if need[1] or need[2]:
        grad_weight, grad_bias = torch.ops.effconv.conv2d_grad_weight(
            g_u, input, list(weight.shape), stride, padding, dilation, groups
        )
        grad_weight = grad_weight if need[1] else None
        grad_bias = grad_bias if (need[2] and bias is not None) else None
    return grad_input, grad_weight, grad_bias, None, None, None, None, grad_scale, grad_shift, None


torch.library.register_autograd("effconv::conv2d", _conv2d_backward, setup_context=_conv2d_setup)


# --------------------------------------------------------------------------
# conv2d_grad_input: the transposed convolution of grad_output with weight.

def _check_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups):
    op = "conv2d_grad_input"
    if grad_output.dim() != 4 or weight.dim() != 4 or len(input_size) != 4:
        raise RuntimeError(
            f"effconv.{op}: expected 4-D grad_output, weight and input_size, got sizes "
            f"{c.fmt_size(grad_output)}, {c.fmt_size(weight)}, {list(input_size)}"
        )
    c.check_floating(op, "grad_output", grad_output)
    c.check_same(op, "grad_output", grad_output, "weight", weight)
    p, q = check_geometry(op, input_size, weight.shape, stride, padding, dilation, groups)
    expected = [input_size[0], weight.shape[0], p, q]
    if list(grad_output.shape) != expected:
        raise RuntimeError(f"effconv.{op}: expected grad_output of size {expected}, got {c.fmt_size(grad_output)}")


@torch.library.register_fake("effconv::conv2d_grad_input")
def _grad_input_fake(grad_output, weight, input_size, stride, padding, dilation, groups):
    _check_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups)
    return c.empty(input_size, grad_output, c.conv_memory_format(grad_output))


def _grad_input_impl(grad_output, weight, input_size, stride, padding, dilation, groups):
    _check_grad_input(grad_output, weight, input_size, stride, padding, dilation, groups)
    out = c.new_output(input_size, grad_output, c.conv_memory_format(grad_output))
    backend = _choose("conv2d_grad_input", grad_output, weight.shape, stride, padding, dilation, groups)
    if backend == "cpu":
        _ext.C().conv2d_grad_input_cpu(grad_output, weight, stride, padding, dilation, groups, out)
    elif backend == "triton":
        _kernels().grad_input(grad_output, weight, stride, padding, dilation, groups, out)
    else:
        out.copy_(torch.nn.grad.conv2d_input(list(input_size), weight, grad_output, stride, padding, dilation, groups))
    return out


torch.library.register_kernel("effconv::conv2d_grad_input", ("cpu", "cuda"), _grad_input_impl)


def _grad_input_setup(ctx, inputs, output):
    grad_output, weight, input_size, stride, padding, dilation, groups = inputs
    ctx.conf = (stride, padding, dilation, groups)
    ctx.backend = backends.requested_backend()
    ctx.save_for_backward(grad_output, weight)


def _grad_input_backward(ctx, gg):
    # grad_input = conv_transpose(grad_output, weight) is bilinear:
    # d/d grad_output = conv2d(gg, weight); d/d weight = grad_weight(grad_output, gg).
    grad_output, weight = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    g_go = g_w = None
    with backends.use_backend(ctx.backend):
        if ctx.needs_input_grad[0]:
            g_go = torch.ops.effconv.conv2d(gg, weight, None, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            g_w, _ = torch.ops.effconv.conv2d_grad_weight(
                grad_output, gg, list(weight.shape), stride, padding, dilation, groups
            )
    return g_go, g_w, None, None, None, None, None


torch.library.register_autograd("effconv::conv2d_grad_input", _grad_input_backward, setup_context=_grad_input_setup)


# --------------------------------------------------------------------------
# conv2d_grad_weight: (grad_weight, grad_bias), reducing over every output pixel.

def _check_grad_weight(grad_output, input, weight_size, stride, padding, dilation, groups):
    op = "conv2d_grad_weight"
    if grad_output.dim() != 4 or input.dim() != 4 or len(weight_size) != 4:
        raise RuntimeError(
            f"effconv.{op}: expected 4-D grad_output, input and weight_size, got sizes "
            f"{c.fmt_size(grad_output)}, {c.fmt_size(input)}, {list(weight_size)}"
        )
    c.check_floating(op, "grad_output", grad_output)
    c.check_same(op, "grad_output", grad_output, "input", input)
    p, q = check_geometry(op, input.shape, weight_size, stride, padding, dilation, groups)
    expected = [input.shape[0], weight_size[0], p, q]
    if list(grad_output.shape) != expected:
        raise RuntimeError(f"effconv.{op}: expected grad_output of size {expected}, got {c.fmt_size(grad_output)}")


@torch.library.register_fake("effconv::conv2d_grad_weight")
def _grad_weight_fake(grad_output, input, weight_size, stride, padding, dilation, groups):
    _check_grad_weight(grad_output, input, weight_size, stride, padding, dilation, groups)
    return grad_output.new_empty(weight_size), grad_output.new_empty((weight_size[0],))


def _grad_weight_impl(grad_output, input, weight_size, stride, padding, dilation, groups):
    _check_grad_weight(grad_output, input, weight_size, stride, padding, dilation, groups)
    grad_weight = c.new_output(weight_size, grad_output)
    grad_bias = c.new_output((weight_size[0],), grad_output)
    backend = _choose("conv2d_grad_weight", grad_output, weight_size, stride, padding, dilation, groups)
    if backend == "cpu":
        _ext.C().conv2d_grad_weight_cpu(
            grad_output, input, stride, padding, dilation, groups, grad_weight, grad_bias
        )
    elif backend == "triton":
        _kernels().grad_weight(grad_output, input, stride, padding, dilation, groups, grad_weight, grad_bias)
    else:
        grad_weight.copy_(
            torch.nn.grad.conv2d_weight(input, list(weight_size), grad_output, stride, padding, dilation, groups)
        )
        grad_bias.copy_(grad_output.sum((0, 2, 3)))
    return grad_weight, grad_bias


torch.library.register_kernel("effconv::conv2d_grad_weight", ("cpu", "cuda"), _grad_weight_impl)


def _grad_weight_setup(ctx, inputs, output):
    grad_output, input, weight_size, stride, padding, dilation, groups = inputs
    ctx.conf = (stride, padding, dilation, groups)
    ctx.backend = backends.requested_backend()
    ctx.save_for_backward(grad_output, input)


def _grad_weight_backward(ctx, gg_w, gg_b):
    # grad_weight(grad_output, input) is bilinear: <grad_weight, V> = <grad_output, conv2d(input, V)>.
    grad_output, input = ctx.saved_tensors
    stride, padding, dilation, groups = ctx.conf
    g_go = g_in = None
    with backends.use_backend(ctx.backend):
        if ctx.needs_input_grad[0]:
            g_go = torch.ops.effconv.conv2d(input, gg_w, gg_b, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            g_in = torch.ops.effconv.conv2d_grad_input(
                grad_output, gg_w, list(input.shape), stride, padding, dilation, groups
            )
    return g_go, g_in, None, None, None, None, None


torch.library.register_autograd("effconv::conv2d_grad_weight", _grad_weight_backward, setup_context=_grad_weight_setup)
