"""Public functionals: ``torch.nn.functional``-style entry points.

This is the one place arguments are normalised (ints to pairs, 'same' and
'valid' padding, unbatched input) and routed to an op; the ops below it take
only normalised arguments.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

import effconv.ops  # noqa: F401  (registers torch.ops.effconv.*)
from effconv import _ext
from effconv import backends as _backends
from effconv import program as _program
from effconv.ops import _common
from effconv.ops import conv2d as _conv2d_op
from effconv.ops import conv_bn_act2d as _conv_bn_op
from effconv.ops import deform_conv2d as _deform_op
from effconv.ops import depthwise_conv2d as _depthwise_op
from effconv.ops import epilogue as _epilogue_op
from effconv.ops import max_pool2d as _max_pool_op

IntPair = Union[int, Sequence[int]]


def _pair(name: str, value: IntPair, what: str = "convolution") -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value, value]
    try:
        out = [int(v) for v in value]
    except TypeError:
        raise TypeError(f"{name} must be an int or a sequence of 2 ints, got {value!r}") from None
    if len(out) == 1:
        return out * 2
    if len(out) != 2:
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the {what} "
            f"dimensions, but got {name}={list(value)}"
        )
    return out


def quiet() -> bool:
    """Nothing would see an op call: autograd off, nothing observing, no explain() recorder."""
    return not (torch.is_grad_enabled() or _common.observed() or _backends.recording_active())


def _same_padding(weight: torch.Tensor, dilation: list[int]) -> tuple[list[int], list[int]]:
    """('same' padding) -> (symmetric part, extra on the bottom/right), as PyTorch pads."""
    sym, extra = [], []
    for d, k in zip(dilation, weight.shape[2:]):
        total = d * (k - 1)
        sym.append(total // 2)
        extra.append(total - 2 * (total // 2))
    return sym, extra


def _normalize(op: str, input, weight, stride, padding, dilation, groups=1):
    """F.conv2d argument conventions -> (batched input, stride, padding, dilation, unbatched?)."""
    if not isinstance(groups, int) or isinstance(groups, bool):
        raise TypeError(f"groups must be an int, got {groups!r}")
    stride_, dilation_ = _pair("stride", stride), _pair("dilation", dilation)
    unbatched = input.dim() == 3
    if input.dim() not in (3, 4):
        raise RuntimeError(
            f"Expected 3D (unbatched) or 4D (batched) input to {op}, but got input of size: {list(input.shape)}"
        )
    if unbatched:
        input = input.unsqueeze(0)
    if weight.dim() != 4:
        raise RuntimeError(f"expected 4-D weight (out_channels, in_channels/groups, kH, kW), got {list(weight.shape)}")
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0, 0]
        elif padding == "same":
            if stride_ != [1, 1]:
                raise RuntimeError("padding='same' is not supported for strided convolutions")
            padding_, extra = _same_padding(weight, dilation_)
            if any(extra):
                # Even extents pad one more on the bottom/right, as PyTorch does.
                input = F.pad(input, [0, extra[1], 0, extra[0]])
        else:
            raise RuntimeError(f"Invalid padding string '{padding}', should be one of ['valid', 'same']")
    else:
        padding_ = _pair("padding", padding)
    return input, stride_, padding_, dilation_, unbatched


def conv2d_route(in_channels: int, weight_shape: Sequence[int], groups: int) -> str:
    """The op a convolution with these parameters runs on: depthwise when
    groups == in_channels > 1 (any channel multiplier), else the
    implicit-GEMM family."""
    if groups == in_channels and in_channels > 1 and weight_shape[1] == 1 and weight_shape[0] % in_channels == 0:
        return "depthwise_conv2d"
    return "conv2d"


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: Union[str, IntPair] = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """2-D convolution with exactly ``torch.nn.functional.conv2d``'s semantics,
    plus an optional fused epilogue ``act((conv + bias) * scale + shift)``
    with per-output-channel ``scale``/``shift`` and ``activation`` in
    ``None | 'relu' | 'relu6' | 'silu'``. Depthwise convolutions
    (groups == in_channels) run on the depthwise op.
    """
    input, stride_, padding_, dilation_, unbatched = _normalize("conv2d", input, weight, stride, padding, dilation,
                                                                groups)
    out = conv2d_normalized(input, weight, bias, stride_, padding_, dilation_, groups, scale, shift,
                            activation or "none")
    return out.squeeze(0) if unbatched else out


def conv2d_normalized(input, weight, bias, stride: list, padding: list, dilation: list, groups: int, scale, shift,
                      activation: str) -> torch.Tensor:
    """conv2d after argument normalisation (4-D input, stride/padding/dilation
    as lists of two ints, activation a name): the routing to an op. Modules
    whose arguments are normalised already (eval-mode ConvBNAct2d) call it
    directly."""
    if conv2d_route(input.shape[1], weight.shape, groups) == "depthwise_conv2d":
        return _depthwise(input, weight, bias, stride, padding, dilation, scale, shift, activation)
    return _conv2d_op.FAMILY.call_forward(input, weight, bias, stride, padding, dilation, groups, scale, shift,
                                          activation)


def conv2d_cat(
    input: torch.Tensor,
    weights: Sequence[torch.Tensor],
    biases: Optional[Sequence[Optional[torch.Tensor]]] = None,
    stride: IntPair = 1,
    paddings: Sequence[IntPair] = (),
    dilation: IntPair = 1,
    *,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``torch.cat([conv2d(input, w, b, stride, p, dilation, activation=activation)
    for w, b, p in zip(weights, biases, paddings)], dim=1)``: parallel
    convolutions of one input concatenated along channels (SqueezeNet's Fire
    expand, Inception branches). ``paddings`` defaults to 0 for every conv.

    In inference on the CPU backend each conv writes its own channel range
    of one output tensor, so the concatenation costs nothing; otherwise
    (autograd, torch.compile, other backends) it is the cat of the convs.
    """
    return conv2d_cat_planned(None, input, weights, biases, stride, paddings, dilation, activation)


def conv2d_cat_planned(site: Optional[PlanMemo], input, weights, biases, stride, paddings, dilation,
                       activation: Optional[str]) -> torch.Tensor:
    """conv2d_cat for a call site that keeps the last call's plans in
    ``site.call`` (SqueezeNet's Fire), like conv2d_planned; ``site`` None
    plans every call."""
    n = len(weights)
    biases = list(biases) if biases is not None else [None] * n
    paddings = list(paddings) if len(paddings) else [0] * n
    if n == 0 or len(biases) != n or len(paddings) != n:
        raise ValueError(f"conv2d_cat: expected as many biases and paddings as weights ({n}), "
                         f"got {len(biases)} and {len(paddings)}")
    act = activation or "none"
    direct = (_common.direct_ok(input, *weights, *biases) and input.dim() == 4 and input.device.type == "cpu"
              and _backends.requested_backend() in ("auto", "cpu"))
    recording = _backends.recording_active()
    memo = None
    if site is not None:
        if direct and not recording:
            key = _common.call_key((input, *weights, *biases), (stride, *paddings, dilation, act))
            memo = site.call if site.call is not None and site.call[0] == key else None
        else:
            key = site.call = None
    if memo is None:
        if not direct or any(conv2d_route(input.shape[1], w.shape, 1) != "conv2d" for w in weights):
            return torch.cat([conv2d(input, w, b, stride, p, dilation, activation=activation)
                              for w, b, p in zip(weights, biases, paddings)], 1)
        stride_, dilation_ = _pair("stride", stride), _pair("dilation", dilation)
        paddings_ = [_pair("padding", p) for p in paddings]
        fam = _conv2d_op.FAMILY
        plans = [fam.plan(input, w, b, stride_, p, dilation_, 1, None, None, act)
                 for w, b, p in zip(weights, biases, paddings_)]
        sizes = [pl[0] for pl in plans]
        if any(size[2:] != sizes[0][2:] for size in sizes):
            raise RuntimeError(f"conv2d_cat: expected every conv to give the same output size, got "
                               f"{[list(size[2:]) for size in sizes]}")
        size = (sizes[0][0], sum(size[1] for size in sizes), *sizes[0][2:])
        memo = (None, plans, size, plans[0][1], stride_, paddings_, dilation_)
        if site is not None and not recording:
            site.call = (key, *memo[1:])
    rec = _program.recorder()
    if rec is not None and site is not None:
        weights, biases = tuple(weights), tuple(biases)
        rec[site] = lambda x: _run_cat(memo, x, weights, biases)
    return _run_cat(memo, input, weights, biases)


def _run_cat(memo, input, weights, biases) -> torch.Tensor:
    """conv2d_cat_planned's call on its memo: one output, each conv's runner
    writing its channel range (a strided view)."""
    _, plans, size, memory_format, stride_, paddings_, dilation_ = memo
    out = _common.new_output(size, input, memory_format)
    k0 = 0
    for (size_i, _, _, run, code), w, b, p in zip(plans, weights, biases, paddings_):
        run(input, w, b, None, None, stride_, p, dilation_, 1, code, out.narrow(1, k0, size_i[1]))
        k0 += size_i[1]
    return out


class PlanMemo:
    """A call site's memo of its last op call (see conv2d_planned). Pickled
    and copied empty: it holds kernel runners (closures that do not pickle)
    and the next call rebuilds it."""

    __slots__ = ("call",)

    def __init__(self):
        self.call = None

    def __reduce__(self):
        return type(self), ()


def plan_memo(module: torch.nn.Module) -> PlanMemo:
    """``module``'s PlanMemo (a plain attribute, made on first use)."""
    memo = module.__dict__.get("_plan_memo")
    if memo is None:
        memo = module._plan_memo = PlanMemo()
    return memo


def conv2d_planned(site: PlanMemo, input, weight, bias, stride: tuple, padding: tuple, dilation: tuple, groups: int,
                   scale, shift, activation: str) -> torch.Tensor:
    """conv2d_normalized for a call site that memoises its op's plan in
    ``site.call`` (an effconv.Conv2d; an eval-mode Conv-BN, whose site also
    drops the memo whenever its weight or folded scale/shift change): a
    batch-1 network's layers repeat one call, and the plan lookup (a key
    over five tensors' metadata) cost as much as a small layer's kernel.
    The memo is keyed on what the plan reads besides scale and shift, and
    is used only where calling the op's implementation directly is exact
    and explain() is not recording."""
    if not _common.direct_ok(input, weight, bias, scale, shift) or _backends.recording_active():
        site.call = None  # (the memo always describes the last call it served)
        return conv2d_normalized(input, weight, bias, list(stride), list(padding), list(dilation), groups, scale,
                                 shift, activation)
    key = _common.call_key((input, weight, bias), (stride, padding, dilation, groups, activation))
    memo = site.call
    if memo is None or memo[0] != key:
        stride_, padding_, dilation_ = list(stride), list(padding), list(dilation)
        fam = (_depthwise_op if conv2d_route(input.shape[1], weight.shape, groups) == "depthwise_conv2d"
               else _conv2d_op).FAMILY
        plan = fam.plan(input, weight, bias, stride_, padding_, dilation_, groups, scale, shift, activation)
        memo = site.call = (key, fam, plan, stride_, padding_, dilation_)
    _, fam, plan, stride_, padding_, dilation_ = memo
    rec = _program.recorder()
    if rec is not None:
        rec[site] = _program.conv_step(fam.run_plan, plan, weight, bias, stride_, padding_, dilation_, groups, scale,
                                       shift)
    return fam.run_plan(plan, input, weight, bias, stride_, padding_, dilation_, groups, scale, shift)


def _depthwise(input, weight, bias, stride, padding, dilation, scale, shift, act):
    return _depthwise_op.FAMILY.call_forward(input, weight, bias, stride, padding, dilation, input.shape[1], scale,
                                             shift, act)


def depthwise_conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: Union[str, IntPair] = 0,
    dilation: IntPair = 1,
    *,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """Depthwise convolution: ``F.conv2d(input, weight, bias, stride,
    padding, dilation, groups=input channels)`` with weight
    ``[C * multiplier, 1, kH, kW]``, plus the fused epilogue (see conv2d)."""
    input, stride_, padding_, dilation_, unbatched = _normalize("depthwise_conv2d", input, weight, stride, padding,
                                                                dilation)
    out = _depthwise(input, weight, bias, stride_, padding_, dilation_, scale, shift, activation or "none")
    return out.squeeze(0) if unbatched else out


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Deformable convolution with ``torchvision.ops.deform_conv2d``'s
    signature and semantics: DCNv1, or modulated DCNv2 when ``mask`` is
    given. ``offset`` is ``[N, 2 * offset_groups * kH * kW, H_out, W_out]``
    ((y, x) per offset group and tap), ``mask`` ``[N, offset_groups * kH *
    kW, H_out, W_out]``; weight groups come from ``weight.shape[1]``.

    Under autocast the op runs in the autocast dtype (float16/bfloat16, fp32
    accumulation) rather than upcasting to float32.
    """
    stride_, padding_, dilation_ = _pair("stride", stride), _pair("padding", padding), _pair("dilation", dilation)
    dev = input.device.type
    if torch.is_autocast_enabled(dev) and input.is_floating_point():
        low = torch.get_autocast_dtype(dev)
        cast = lambda t: t.to(low) if t is not None and t.dtype in (torch.float32, torch.float64, low) else t  # noqa: E731
        input, offset, weight, bias, mask = (cast(t) for t in (input, offset, weight, bias, mask))
    args = (input, offset, weight, mask, bias, stride_, padding_, dilation_)
    return _common.call("deform_conv2d", _deform_op.deform_conv2d_impl, (input, offset, weight, mask, bias), *args,
                        function=_deform_op.FUNCTION)


def epilogue(
    input: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``act((input + bias[c]) * scale[c] + shift[c])`` over channel dim 1, as one pass."""
    args = (input, bias, scale, shift, activation or "none")
    return _common.call("epilogue", _epilogue_op.epilogue_impl, (input, bias, scale, shift), *args,
                        function=_epilogue_op.FUNCTION)


def _pool_pair(name: str, value, default=None) -> list[int]:
    """F.max_pool2d's argument rule: _pair's, and stride None or empty means kernel_size."""
    if default is not None and (value is None or (not isinstance(value, int) and len(value) == 0)):
        return list(default)
    return _pair(name, value, "pooling")


def max_pool2d(
    input: torch.Tensor,
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """``F.max_pool2d`` on effconv's kernels (same arguments and results;
    3-D unbatched input too). ``return_indices=True`` has no effconv kernel:
    PyTorch's runs, and the fallback is logged once and shown by explain()."""
    kernel = _pool_pair("kernel_size", kernel_size)
    stride_ = _pool_pair("stride", stride, default=kernel)
    padding_, dilation_ = _pool_pair("padding", padding), _pool_pair("dilation", dilation)
    if return_indices:
        _backends.report_choice(_backends.Choice(
            _max_pool_op.OP, "torch", _backends.requested_backend(),
            "return_indices=True: effconv's kernels do not produce indices",
            _max_pool_op.describe(kernel, stride_, padding_, dilation_, ceil_mode), fell_back=True))
        return F.max_pool2d(input, kernel, stride_, padding_, dilation_, ceil_mode, return_indices=True)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    args = (input, kernel, stride_, padding_, dilation_, bool(ceil_mode))
    out = _common.call("max_pool2d", _max_pool_op.max_pool2d_impl, (input,), *args, function=_max_pool_op.FUNCTION)
    return out.squeeze(0) if unbatched else out


def conv2d_max_pool2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: Union[str, IntPair] = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    *,
    scale: Optional[torch.Tensor] = None,
    shift: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
    pool_kernel_size: IntPair,
    pool_stride: Optional[IntPair] = None,
    pool_padding: IntPair = 0,
    pool_dilation: IntPair = 1,
    ceil_mode: bool = False,
) -> torch.Tensor:
    """``max_pool2d(conv2d(input, weight, bias, stride, padding, dilation,
    groups, scale=scale, shift=shift, activation=activation),
    pool_kernel_size, pool_stride, pool_padding, pool_dilation, ceil_mode)``:
    a conv with its epilogue and the max pool after it (SqueezeNet's and
    ResNet's stems).

    In CPU inference (autograd off, float32/float64, a channels_last result,
    the C++ backend, an implicit-GEMM conv) one kernel: each thread computes
    bands of the conv's output rows into an L2-sized buffer and pools them
    from there, so the conv's full output is never written. SqueezeNet 1.1's
    stem at batch 16 took 3.6 ms against 6.5 ms as two kernels. Otherwise
    (autograd, torch.compile, other backends, dtypes or layouts) the two ops
    run in turn; a Winograd or grouped-vector conv inside the fused call
    also runs before its pool.
    """
    kernel = _pool_pair("kernel_size", pool_kernel_size)
    pstride = _pool_pair("stride", pool_stride, default=kernel)
    ppadding, pdilation = _pool_pair("padding", pool_padding), _pool_pair("dilation", pool_dilation)
    input, stride_, padding_, dilation_, unbatched = _normalize("conv2d", input, weight, stride, padding, dilation,
                                                                groups)
    act = activation or "none"
    out = None
    if (input.dtype in (torch.float32, torch.float64) and conv2d_route(input.shape[1], weight.shape, groups) == "conv2d"
            and _common.direct_ok(input, weight, bias, scale, shift)):
        fam = _conv2d_op.FAMILY
        size, memory_format, _, run, code = fam.plan(input, weight, bias, stride_, padding_, dilation_, groups, scale,
                                                     shift, act)
        if run is fam.runners["forward"]["cpu"] and memory_format == torch.channels_last:
            p, q = _max_pool_op.check_geometry(_max_pool_op.OP, size, kernel, pstride, ppadding, pdilation,
                                               ceil_mode)
            if _backends.recording_active():  # the conv's choice was reported by plan()
                _backends.report_choice(_backends.Choice(
                    _max_pool_op.OP, "cpu", _backends.requested_backend(),
                    "CPU inference with a channels_last result: pooled inside the conv's kernel",
                    _max_pool_op.describe(kernel, pstride, ppadding, pdilation, ceil_mode)
                    + " on the conv's output rows (conv2d_max_pool2d; after the conv for Winograd and "
                      "grouped-vector convs)"))
            out = _common.new_output((size[0], size[1], p, q), input, memory_format)
            _ext.C().conv2d_max_pool2d_forward_cpu(input, weight, bias, scale, shift, stride_, padding_, dilation_,
                                                   groups, code, kernel, pstride, ppadding, pdilation,
                                                   bool(ceil_mode), out)
    if out is None:
        conv = conv2d_normalized(input, weight, bias, stride_, padding_, dilation_, groups, scale, shift, act)
        out = max_pool2d(conv, kernel, pstride, ppadding, pdilation, ceil_mode)
    return out.squeeze(0) if unbatched else out


def conv_bn_act2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    bn_weight: Optional[torch.Tensor] = None,
    bn_bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    bias: Optional[torch.Tensor] = None,
    stride: IntPair = 1,
    padding: Union[str, IntPair] = 0,
    dilation: IntPair = 1,
    groups: int = 1,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """``act(F.batch_norm(F.conv2d(input, weight, bias, stride, padding,
    dilation, groups), running_mean, running_var, bn_weight, bn_bias,
    training, momentum, eps))`` with exactly those semantics, fused:

    - ``training=True`` (or no running statistics): one autograd op whose
      conv kernel also accumulates the batch statistics, then one
      normalize+activation pass; ``running_mean``/``running_var`` (if given)
      are updated in place with ``momentum`` (PyTorch's convention:
      ``new = (1 - momentum) * old + momentum * batch``, unbiased variance).
    - otherwise BatchNorm folds into the conv's per-channel scale/shift
      epilogue: one kernel.
    """
    act = activation or "none"
    input, stride_, padding_, dilation_, unbatched = _normalize("conv_bn_act2d", input, weight, stride, padding,
                                                                dilation, groups)
    if training or running_mean is None or running_var is None:
        out = _conv_bn_train(input, weight, bias, running_mean, running_var, bn_weight, bn_bias, momentum, eps,
                             stride_, padding_, dilation_, groups, act, update=training)
    else:
        scale, shift = fold_batch_norm(running_mean, running_var, bn_weight, bn_bias, eps, bias, input.dtype)
        out = conv2d(input, weight, None, stride_, padding_, dilation_, groups, scale=scale, shift=shift,
                     activation=act)
    return out.squeeze(0) if unbatched else out


def fold_batch_norm(running_mean, running_var, bn_weight, bn_bias, eps, conv_bias=None, dtype=torch.float32):
    """Eval-mode BatchNorm after a conv as the conv epilogue's (scale, shift):
    ``bn(conv + b) = conv * scale + shift`` with ``scale = gamma / sqrt(var +
    eps)`` and ``shift = beta + (b - mean) * scale``; float32 (float64 for
    float64 data)."""
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.rsqrt(running_var.to(ct) + eps)
    if bn_weight is not None:
        scale = scale * bn_weight.to(ct)
    centered = -running_mean.to(ct) if conv_bias is None else conv_bias.to(ct) - running_mean.to(ct)
    shift = centered * scale
    if bn_bias is not None:
        shift = shift + bn_bias.to(ct)
    return scale, shift


def _conv_bn_train(input, weight, bias, running_mean, running_var, bn_weight, bn_bias, momentum, eps, stride,
                   padding, dilation, groups, act, update):
    K = weight.shape[0]
    if input.dim() == 4 and input.shape[1] > 0 and weight.dim() == 4:
        from effconv.ops._conv_family import out_size

        count = input.shape[0] * out_size(input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0]) * \
            out_size(input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
        if count == 1:
            size = (input.shape[0], K) + tuple(input.shape[2:])
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")
    else:
        count = 0
    # A conv bias shifts the batch mean only: BatchNorm subtracts it again.
    y, _, mean, var = _common.call("conv_bn_act2d", _conv_bn_op.conv_bn_act2d_impl,
                                   (input, weight, bn_weight, bn_bias), input, weight, bn_weight, bn_bias, stride,
                                   padding, dilation, groups, eps, act, function=_conv_bn_op.FUNCTION)
    if update and running_mean is not None and running_var is not None and count > 0:
        with torch.no_grad():
            if bias is not None:
                mean = mean + bias.to(mean.dtype)
            # (1 - momentum) * old + momentum * new, one op each (two kernels' worth on small layers)
            running_mean.lerp_(mean.to(running_mean.dtype), momentum)
            running_var.lerp_((var * (count / max(count - 1, 1))).to(running_var.dtype), momentum)
    return y
