"""effconv.ConvBNAct2d: Conv2d -> BatchNorm2d -> activation, fused.

An ``nn.Sequential`` whose children are the same modules torchvision's
``Conv2dNormActivation`` holds (``0`` conv, ``1`` BatchNorm2d, ``2``
activation), so state_dicts load both ways with ``strict=True``; only the
forward differs: one op per block (see effconv.functional.conv_bn_act2d).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from effconv import backends as _backends
from effconv import functional, program
from effconv.nn.conv import Conv2d

_ACTIVATION_MODULES = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU}


def activation_name(module: Optional[nn.Module]) -> Optional[str]:
    """The fused-epilogue name of an activation module, or None if it has none."""
    if module is None or isinstance(module, nn.Identity):
        return "none"
    if isinstance(module, nn.ReLU6):
        return "relu6"
    if isinstance(module, nn.ReLU):
        return "relu"
    if isinstance(module, nn.SiLU):
        return "silu"
    if isinstance(module, nn.Hardtanh) and module.min_val == 0.0 and module.max_val == 6.0:
        return "relu6"
    return None


class _FoldCache(functional.PlanMemo):
    """The eval-mode (scale, shift) of one conv + BatchNorm pair, kept while
    every tensor it was folded from is the same tensor (identity, storage
    and version counter): an in-place update (optimizer step, training-mode
    forward, load_state_dict, ``.copy_``), a replaced parameter or a moved
    module all invalidate it. Holding the tensors keeps their storage from
    being reused by a look-alike.

    ``call`` memoises the op's plan (checks, routing, output layout) for the
    last call's metadata; it lives and dies with the fold, whose tensors
    include the conv weight."""

    __slots__ = ("tensors", "state", "value", "fast")

    def __init__(self):
        super().__init__()
        self.tensors, self.state, self.value, self.fast = None, None, None, None

    def fast_call(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, input: torch.Tensor, activation: str):
        """The last inference call again, when nothing it read has changed:
        the fold (its tensors' identity, storage and version; eps; dtype),
        input and weight metadata, activation, conv arguments and backend
        request, and nothing listening (autograd, tracers, modes, profiler,
        explain()). Else None: the caller takes the full path, which
        refreshes this memo. Batch-1 networks spend more time in per-layer
        Python than in small layers' kernels."""
        f = self.fast
        if f is None or bn.training or not functional.quiet():
            return None
        fold = fold_inputs(conv, bn)
        try:
            if not self.holds(fold, _stamp(fold, (bn.eps, input.dtype))):
                return None
        except RuntimeError:  # inference tensors put in since
            return None
        meta, cargs, backend, run, plan, stride, padding, dilation = f
        weight = fold[5]
        if (type(input) is not torch.Tensor
                or (input.shape, input.stride(), input.device, weight.shape, weight.stride(), activation) != meta
                or (conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode) != cargs
                or _backends.backend_state() != backend):
            return None
        scale, shift = self.value
        rec = program.recorder()
        if rec is not None:
            rec[self] = program.conv_step(run, plan, weight, None, stride, padding, dilation, conv.groups, scale,
                                          shift)
        return run(plan, input, weight, None, stride, padding, dilation, conv.groups, scale, shift)

    def remember_fast(self, conv: nn.Conv2d, bn: nn.BatchNorm2d, input: torch.Tensor, activation: str) -> None:
        """Records the call conv2d_planned just made (its memo, which it
        drops when it does not plan) for fast_call, while the fold is held."""
        memo, self.fast = self.call, None
        if memo is None or self.tensors is None or type(input) is not torch.Tensor:
            return
        _, fam, plan, stride, padding, dilation = memo
        weight = conv.weight
        self.fast = ((input.shape, input.stride(), input.device, weight.shape, weight.stride(), activation),
                     (conv.stride, conv.padding, conv.dilation, conv.groups, conv.padding_mode),
                     _backends.backend_state(), fam.run_plan, plan, stride, padding, dilation)

    def holds(self, tensors, state) -> bool:
        """Whether the fold was computed from exactly these tensors, in this state (see _stamp)."""
        held = self.tensors
        return held is not None and self.state == state and all(a is b for a, b in zip(held, tensors))

    def get(self, tensors, extra, compute, *args):
        """The cached ``compute(*args)``, recomputed when a tensor or ``extra`` changed."""
        try:
            state = _stamp(tensors, extra)
        except RuntimeError:  # inference tensors (a module converted under inference_mode) have no version
            self.tensors, self.state, self.value, self.call, self.fast = None, None, None, None, None
            return compute(*args)
        if self.holds(tensors, state):
            return self.value
        self.value = compute(*args)
        self.tensors, self.state, self.call, self.fast = tuple(tensors), state, None, None
        return self.value


def _stamp(tensors, extra) -> list:
    """``extra`` and each tensor's device, storage and version (RuntimeError for inference tensors)."""
    return [extra, *[(t.device, t.data_ptr(), t._version) for t in tensors if t is not None]]


def fold_inputs(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple:
    """What an eval-mode fold reads: running mean and variance, BatchNorm
    weight and bias, conv bias, and the conv weight it scales."""
    buffers, params, cparams = bn._buffers, bn._parameters, conv._parameters
    return (buffers.get("running_mean"), buffers.get("running_var"), params.get("weight"), params.get("bias"),
            cparams.get("bias"), cparams["weight"])


def conv_bn_forward(conv: nn.Conv2d, bn: nn.BatchNorm2d, input: torch.Tensor, activation: str,
                    cache: Optional[_FoldCache] = None) -> torch.Tensor:
    """``act(bn(conv(input)))`` exactly as the unfused modules compute it
    (train and eval, momentum None, track_running_stats, affine), on one
    fused op. ``cache`` keeps the eval-mode fold between calls."""
    if cache is not None:
        out = cache.fast_call(conv, bn, input, activation)
        if out is not None:
            return out
    if (cache is not None and not bn.training and not torch.is_grad_enabled() and conv.padding_mode == "zeros"
            and not torch.compiler.is_compiling()):
        # Inference (no_grad / inference_mode) with running statistics: the
        # cached fold and one op call, nothing else (batch-1 networks spend
        # more time in per-layer Python than in small layers' kernels).
        fold = fold_inputs(conv, bn)
        if fold[0] is not None and fold[1] is not None:
            weight = fold[5]
            scale, shift = cache.get(fold, (bn.eps, input.dtype), functional.fold_batch_norm, *fold[:4], bn.eps,
                                     fold[4], input.dtype)
            # nn.Conv2d keeps stride/dilation (and non-string padding) as int
            # pairs: only the routing is left of functional.conv2d.
            if input.dim() == 4 and not isinstance(conv.padding, str):
                out = functional.conv2d_planned(cache, input, weight, None, conv.stride, conv.padding, conv.dilation,
                                                conv.groups, scale, shift, activation)
                cache.remember_fast(conv, bn, input, activation)
                return out
            return functional.conv2d(input, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups,
                                     scale=scale, shift=shift, activation=activation)
    if conv.padding_mode != "zeros":
        input = F.pad(input, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    else:
        padding = conv.padding
    # BatchNorm's own bookkeeping (nn.modules.batchnorm._BatchNorm.forward).
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    tracked = not bn.training or bn.track_running_stats
    running_mean = bn.running_mean if tracked else None
    running_var = bn.running_var if tracked else None
    args = dict(bias=conv.bias, stride=conv.stride, padding=padding, dilation=conv.dilation, groups=conv.groups,
                activation=activation)
    if batch_stats:
        return functional.conv_bn_act2d(input, conv.weight, running_mean, running_var, bn.weight, bn.bias, True,
                                        factor, bn.eps, **args)
    folded_from = (running_mean, running_var, bn.weight, bn.bias, conv.bias)
    differentiable = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in folded_from)
    if cache is None or differentiable or torch.compiler.is_compiling():
        scale, shift = functional.fold_batch_norm(running_mean, running_var, bn.weight, bn.bias, bn.eps, conv.bias,
                                                  input.dtype)
    else:
        scale, shift = cache.get(folded_from, (bn.eps, input.dtype), lambda: functional.fold_batch_norm(
            running_mean, running_var, bn.weight, bn.bias, bn.eps, conv.bias, input.dtype))
    del args["bias"]
    return functional.conv2d(input, conv.weight, None, scale=scale, shift=shift, **args)


class ConvBNAct2d(nn.Sequential):
    """``nn.Sequential(nn.Conv2d(bias=False), nn.BatchNorm2d, activation)`` in
    one fused op per call, with exactly its semantics in train and eval mode.

    ``activation``: ``"relu" | "relu6" | "silu" | None``. The children are
    ``0`` (an :class:`effconv.Conv2d`), ``1`` (``nn.BatchNorm2d``) and, with an
    activation, ``2`` (``nn.ReLU``/``nn.ReLU6``/``nn.SiLU``), so the
    state_dict keys are those of torchvision's ``Conv2dNormActivation``.

    Eval mode folds BatchNorm into the conv's per-channel scale/shift
    epilogue; the fold is cached and recomputed whenever a parameter or
    buffer it depends on changes.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, activation: Optional[str] = "relu", eps: float = 1e-5,
                 momentum: Optional[float] = 0.1, affine: bool = True, track_running_stats: bool = True,
                 bias: bool = False, padding_mode: str = "zeros", device=None, dtype=None):
        if activation not in (None, "none", *_ACTIVATION_MODULES):
            raise ValueError(f"activation must be one of {tuple(_ACTIVATION_MODULES)} or None, got {activation!r}")
        if padding is None:  # torchvision's default: 'same'-like for odd kernels
            ks = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
            dil = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
            padding = tuple((k - 1) // 2 * d for k, d in zip(ks, dil))
        conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                      device=device, dtype=dtype)
        bn = nn.BatchNorm2d(out_channels, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        layers = [conv, bn]
        if activation not in (None, "none"):
            layers.append(_ACTIVATION_MODULES[activation](inplace=True))
        super().__init__(*layers)
        self._fold = _FoldCache()

    @property
    def activation(self) -> str:
        act = self._modules.get("2")
        return activation_name(act) if act is not None else "none"

    @property
    def effconv_op(self) -> str:
        return "conv_bn_act2d"

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        mods = self._modules  # not self[i]: Sequential indexing walks the children (per-call cost at batch 1)
        act = mods.get("2")
        return conv_bn_forward(mods["0"], mods["1"], input, activation_name(act) if act is not None else "none",
                               self._fold)

    def _program_steps(self, builder: program.Builder) -> list:
        return builder.step(self._fold, self)

    @classmethod
    def from_modules(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d, act: Optional[nn.Module] = None) -> "ConvBNAct2d":
        """A ConvBNAct2d sharing the given modules' parameters and buffers
        (the conv becomes an effconv.Conv2d on the same tensors)."""
        name = activation_name(act)
        if name is None:
            raise ValueError(f"cannot fuse activation {type(act).__name__}; expected ReLU, ReLU6, SiLU or none")
        if bn.num_features != conv.out_channels:
            raise ValueError(f"BatchNorm2d({bn.num_features}) does not follow a conv with {conv.out_channels} outputs")
        self = cls.__new__(cls)
        layers = [conv if isinstance(conv, Conv2d) else Conv2d.from_torch(conv), bn]
        if name != "none":
            layers.append(act)
        nn.Sequential.__init__(self, *layers)
        self._fold = _FoldCache()
        return self


class ConvBNReLU2d(ConvBNAct2d):
    """:class:`ConvBNAct2d` with ``activation="relu"``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=None, dilation=1,
                 groups: int = 1, **kwargs):
        if "activation" in kwargs:
            raise TypeError("ConvBNReLU2d fixes activation='relu'; use ConvBNAct2d for another")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         activation="relu", **kwargs)
