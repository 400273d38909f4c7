"""effconv::conv_bn_act2d: convolution -> BatchNorm with batch statistics
(training mode) -> activation as one autograd op, and its backward op
effconv::bn_act_backward.

Forward:
  1. the convolution kernel of the matching family (implicit GEMM or
     depthwise) writes z and, in its epilogue, the per-channel sum and sum of
     squares of z (float64 totals, deterministic);
  2. mean and biased variance in float64, invstd = 1 / sqrt(var + eps);
  3. one epilogue pass y = act(z * scale + shift) with scale = gamma * invstd
     and shift = beta - mean * scale.
Backward: bn_act_backward (the fused BatchNorm + activation backward: one
reduction pass, one elementwise pass) gives grad_z, grad_gamma and
grad_beta; the family's gradient ops finish the job (FAMILY.grads).

Saved for backward: input, weight, z and the per-channel statistics -- less
than nn.Sequential(Conv2d, BatchNorm2d, activation), which also keeps the
BatchNorm output.

The op returns (y, z, mean, var): z, mean and the biased var are not
differentiable; the functional layer uses mean and var to update the running
statistics. Evaluation mode is not this op: BatchNorm with running
statistics folds into the conv's scale/shift epilogue
(effconv.functional.conv_bn_act2d).
"""
from __future__ import annotations

import torch

from effconv import _ext, backends
from effconv.ops import _common as c
from effconv.ops import conv2d as _conv2d
from effconv.ops import depthwise_conv2d as _depthwise
from effconv.ops._conv_family import FAMILIES

OP = "conv_bn_act2d"

c.LIB.define(
    "conv_bn_act2d(Tensor input, Tensor weight, Tensor? bn_weight, Tensor? bn_bias, int[2] stride, int[2] padding, "
    "int[2] dilation, int groups, float eps, str activation='none') -> (Tensor, Tensor, Tensor, Tensor)"
)
c.LIB.define(
    "bn_act_backward(Tensor grad_y, Tensor z, Tensor mean, Tensor invstd, Tensor? bn_weight, Tensor? bn_bias, "
    "str activation='none') -> (Tensor, Tensor, Tensor)"
)


def family_of(input_channels: int, weight_size, groups: int):
    """The conv family whose kernels run this call (depthwise when groups == C)."""
    from effconv.functional import conv2d_route

    return FAMILIES[conv2d_route(input_channels, weight_size, groups)]


def _forward_table(family) -> backends.OpBackends:
    """conv_bn_act2d's backends for a family: the family forward's (every conv
    kernel also accumulates the statistics), reported under this op's name."""
    t = family.tables["forward"]
    return backends.OpBackends(OP, t.checks, t.auto_order, t.auto_reason)


TABLES = {name: _forward_table(FAMILIES[name]) for name in ("conv2d", "depthwise_conv2d")}


def _stat_dtype(input: torch.Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _check(input, weight, bn_weight, bn_bias, stride, padding, dilation, groups, eps, activation):
    fam = family_of(input.shape[1] if input.dim() == 4 else 0, weight.shape, groups)
    p, q = fam.check_forward(input, weight, None, stride, padding, dilation, groups, None, None, activation)
    for name, t in (("bn_weight", bn_weight), ("bn_bias", bn_bias)):
        c.check_channel_vector(OP, name, t, weight.shape[0], input)
    if not eps > 0:
        raise RuntimeError(f"effconv.{OP}: expected eps > 0, got {eps}")
    return fam, p, q


@torch.library.register_fake("effconv::conv_bn_act2d")
def _fake(input, weight, bn_weight, bn_bias, stride, padding, dilation, groups, eps, activation="none"):
    fam, p, q = _check(input, weight, bn_weight, bn_bias, stride, padding, dilation, groups, eps, activation)
    size = (input.shape[0], weight.shape[0], p, q)
    fmt = c.conv_memory_format(input, weight)
    stat = c.empty((weight.shape[0],), input, dtype=_stat_dtype(input))
    return c.empty(size, input, fmt), c.empty(size, input, fmt), stat, torch.empty_like(stat)


def conv_bn_act2d_impl(input, weight, bn_weight, bn_bias, stride, padding, dilation, groups, eps, activation="none"):
    fam, p, q = _check(input, weight, bn_weight, bn_bias, stride, padding, dilation, groups, eps, activation)
    K = weight.shape[0]
    z = c.new_output((input.shape[0], K, p, q), input, c.conv_memory_format(input, weight))
    stats = torch.empty((2, K), dtype=torch.float64, device=input.device)
    backend = fam._route("forward", input, weight.shape, stride, padding, dilation, groups, table=TABLES[fam.name])
    fam.runners["forward"][backend](input, weight, None, None, None, stride, padding, dilation, groups, 0, z, stats)
    M = z.numel() // K if K else 0
    mean = stats[0] / max(M, 1)
    var = (stats[1] / max(M, 1) - mean * mean).clamp_min_(0)
    scale = torch.rsqrt(var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.double()
    shift = -mean * scale
    if bn_bias is not None:
        shift = shift + bn_bias.double()
    ep_dtype = _stat_dtype(input)  # the epilogue takes scale/shift in the data dtype or float32
    from effconv.ops.epilogue import epilogue_impl

    y = epilogue_impl(z, None, scale.to(ep_dtype), shift.to(ep_dtype), activation)
    return y, z, mean.to(ep_dtype), var.to(ep_dtype)


torch.library.register_kernel("effconv::conv_bn_act2d", ("cpu", "cuda"), conv_bn_act2d_impl)


def _setup(ctx, inputs, output):
    input, weight, bn_weight, bn_bias, stride, padding, dilation, groups, eps = inputs[:9]
    ctx.activation = inputs[9] if len(inputs) > 9 else "none"
    _, z, mean, var = output
    ctx.mark_non_differentiable(z, mean, var)
    # z is activation-sized: materialising its (always absent) gradient as
    # zeros cost a MobileNetV2 training step ~370 MB of page-faulted memset.
    ctx.set_materialize_grads(False)
    ctx.conf = (stride, padding, dilation, groups, eps)
    ctx.backend = backends.requested_backend()
    ctx.save_for_backward(input, weight, bn_weight, bn_bias, z, mean, var)


def _backward(ctx, grad_y, _grad_z, _grad_mean, _grad_var):
    if grad_y is None:  # y took no part in the loss
        return (None,) * 10
    input, weight, bn_weight, bn_bias, z, mean, var = ctx.saved_tensors
    stride, padding, dilation, groups, eps = ctx.conf
    need = tuple(ctx.needs_input_grad) + (False,) * 10
    fam = family_of(input.shape[1], weight.shape, groups)
    with backends.use_backend(ctx.backend):
        invstd = torch.rsqrt(var + eps)
        g_z, g_gamma, g_beta = c.call(BWD, bn_act_backward_impl, (grad_y, z, mean, invstd, bn_weight, bn_bias),
                                      grad_y, z, mean, invstd, bn_weight, bn_bias, ctx.activation)
        grad_input, grad_weight, _ = fam.grads(g_z, input, weight, stride, padding, dilation, groups, need[0],
                                               need[1], False)
    g_gamma = g_gamma.to(bn_weight.dtype) if need[2] and bn_weight is not None else None
    g_beta = g_beta.to(bn_bias.dtype) if need[3] and bn_bias is not None else None
    return grad_input, grad_weight, g_gamma, g_beta, None, None, None, None, None, None


FUNCTION = c.register_autograd(OP, conv_bn_act2d_impl, _backward, _setup)


# ---------------------------------------------------------------- bn_act_backward
BWD = "bn_act_backward"


def _cuda_check(device_type, dtype):
    return _depthwise.cuda_check(device_type, dtype if dtype != torch.float64 else torch.float32)


BWD_TABLE = backends.OpBackends(
    BWD,
    checks={"cpu": _conv2d.cpu_check, "triton": _conv2d.triton_check_elementwise, "cuda": _cuda_check,
            "torch": lambda d, t: None},
    auto_order={"cpu": ("cpu", "torch"), "cuda": ("triton", "cuda", "torch")},
    auto_reason={"cpu": "auto: C++ kernels for CPU tensors", "cuda": "auto: Triton kernels for CUDA tensors"},
)


def _check_bwd(grad_y, z, mean, invstd, bn_weight, bn_bias, activation):
    if z.dim() < 2:
        raise RuntimeError(f"effconv.{BWD}: expected z with a channel dimension (N, C, ...), got size {c.fmt_size(z)}")
    c.check_floating(BWD, "z", z)
    if grad_y.shape != z.shape:
        raise RuntimeError(f"effconv.{BWD}: expected grad_y of size {c.fmt_size(z)}, got {c.fmt_size(grad_y)}")
    c.check_same(BWD, "z", z, "grad_y", grad_y)
    C = z.shape[1]
    for name, t in (("mean", mean), ("invstd", invstd)):
        if t.dim() != 1 or t.shape[0] != C:
            raise RuntimeError(f"effconv.{BWD}: expected {name} of size [{C}], got {c.fmt_size(t)}")
        c.check_same(BWD, "z", z, name, t, dtype=False)
    c.check_channel_vector(BWD, "bn_weight", bn_weight, C, z)
    c.check_channel_vector(BWD, "bn_bias", bn_bias, C, z)
    c.activation_code(BWD, activation)


def _layout(z):
    return torch.channels_last if c.conv_memory_format(z) == torch.channels_last else torch.contiguous_format


@torch.library.register_fake("effconv::bn_act_backward")
def _fake_bwd(grad_y, z, mean, invstd, bn_weight=None, bn_bias=None, activation="none"):
    _check_bwd(grad_y, z, mean, invstd, bn_weight, bn_bias, activation)
    vec = c.empty((z.shape[1],), z, dtype=mean.dtype)
    return c.empty(z.shape, z, _layout(z)), vec, torch.empty_like(vec)


def _torch_bn_act_backward(grad_y, z, mean, invstd, bn_weight, bn_bias, activation, grad_z, grad_gamma, grad_beta):
    """The formula in PyTorch ops (effconv/epilogue.h's bn_grad_coefficients)."""
    ct = torch.float64 if z.dtype == torch.float64 else torch.float32
    view = (1, -1) + (1,) * (z.dim() - 2)
    dims = [0] + list(range(2, z.dim()))
    C = z.shape[1]
    gamma = (bn_weight if bn_weight is not None else torch.ones(C, device=z.device)).to(ct).view(view)
    beta = (bn_bias if bn_bias is not None else torch.zeros(C, device=z.device)).to(ct).view(view)
    xhat = (z.to(ct) - mean.to(ct).view(view)) * invstd.to(ct).view(view)
    g = c.activation_grad(xhat * gamma + beta, grad_y.to(ct), activation)
    sum_g, sum_gx = g.sum(dims, dtype=torch.float64), (g * xhat).sum(dims, dtype=torch.float64)
    k = c.bn_grad_coefficients(gamma.flatten(), invstd, sum_g, sum_gx, z.numel() // max(C, 1)).to(ct)
    grad_z.copy_(k[0].view(view) * g + k[1].view(view) * xhat + k[2].view(view))
    grad_gamma.copy_(sum_gx)
    grad_beta.copy_(sum_g)


def bn_act_backward_impl(grad_y, z, mean, invstd, bn_weight=None, bn_bias=None, activation="none"):
    _check_bwd(grad_y, z, mean, invstd, bn_weight, bn_bias, activation)
    grad_z = c.new_output(z.shape, z, _layout(z))
    grad_gamma = c.new_output((z.shape[1],), z, dtype=mean.dtype)
    grad_beta = c.new_output((z.shape[1],), z, dtype=mean.dtype)
    act = c.ACTIVATIONS[activation]
    backend = backends.choose(BWD_TABLE, z.device, z.dtype, lambda: "two-pass BatchNorm + activation backward")
    args = (grad_y, z, mean, invstd, bn_weight, bn_bias)
    if backend == "cpu":
        _ext.C().bn_act_backward_cpu(*args, act, grad_z, grad_gamma, grad_beta)
    elif backend == "cuda":
        _ext.C().bn_act_backward_cuda(*args, act, grad_z, grad_gamma, grad_beta)
    elif backend == "triton":
        from effconv.kernels import bn_act

        bn_act.bn_act_backward(*args, act, grad_z, grad_gamma, grad_beta)
    else:
        _torch_bn_act_backward(*args, activation, grad_z, grad_gamma, grad_beta)
    return grad_z, grad_gamma, grad_beta


torch.library.register_kernel("effconv::bn_act_backward", ("cpu", "cuda"), bn_act_backward_impl)
