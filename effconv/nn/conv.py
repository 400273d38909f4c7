"""effconv.Conv2d: a drop-in nn.Conv2d on effconv kernels."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from effconv import functional
from effconv.ops._common import ACTIVATIONS


def _check_positive(name, value, allow_zero=False):
    values = (value,) if isinstance(value, int) else tuple(value)
    bad = [v for v in values if (v < 0 if allow_zero else v <= 0)]
    if bad:
        what = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {what} integers, got {value}")


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d`` with the same constructor, parameters, state_dict
    keys and padding modes, running on effconv's kernels. Each call is routed
    by its parameters to the matching op (see :func:`effconv.explain`).

    ``activation`` (keyword-only, default None) fuses ``relu``, ``relu6`` or
    ``silu`` into the conv's epilogue. ``max_pool`` (keyword-only, an
    ``nn.MaxPool2d`` without indices, kept as an :class:`effconv.MaxPool2d`
    child) pools the activated output: the module computes
    ``max_pool(act(conv(x)))`` through
    :func:`effconv.functional.conv2d_max_pool2d` (one kernel in CPU
    inference). The pool has no parameters, so the state_dict keys stay
    those of ``nn.Conv2d``.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, activation: Optional[str] = None,
                 max_pool: Optional[nn.MaxPool2d] = None):
        # nn.Conv2d checks groups, channel divisibility, padding strings and
        # padding_mode; the rest would only fail at call time there.
        _check_positive("kernel_size", kernel_size)
        _check_positive("stride", stride)
        _check_positive("dilation", dilation)
        if not isinstance(padding, str):
            _check_positive("padding", padding, allow_zero=True)
        if activation is not None and activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)} or None, got {activation!r}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.activation = None if activation == "none" else activation
        if max_pool is not None and (not isinstance(max_pool, nn.MaxPool2d) or max_pool.return_indices):
            raise ValueError(f"max_pool must be an nn.MaxPool2d without return_indices, got {max_pool!r}")
        if max_pool is not None and not hasattr(max_pool, "effconv_op"):
            from effconv.nn.pool import MaxPool2d

            max_pool = MaxPool2d.from_torch(max_pool)
        self.max_pool = max_pool

    @property
    def effconv_op(self) -> str:
        return functional.conv2d_route(self.in_channels, self.weight.shape, self.groups)

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        pool = self._modules.get("max_pool")  # (None when unset: also for modules pickled before it existed)
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
            if pool is None and input.dim() == 4 and not isinstance(padding, str):
                # Arguments nn.Conv2d keeps as int pairs need no normalising, and the
                # last call's plan is kept (batch-1 networks: per-call cost).
                return functional.conv2d_planned(functional.plan_memo(self), input, weight, bias, self.stride,
                                                 padding, self.dilation, self.groups, None, None,
                                                 self.activation or "none")
        if pool is not None:
            return functional.conv2d_max_pool2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                                                activation=self.activation, pool_kernel_size=pool.kernel_size,
                                                pool_stride=pool.stride, pool_padding=pool.padding,
                                                pool_dilation=pool.dilation, ceil_mode=pool.ceil_mode)
        return functional.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                                 activation=self.activation)

    def _program_steps(self, builder) -> list:
        return builder.step(self.__dict__.get("_plan_memo"), self)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        return s + (f", activation={self.activation}" if self.activation else "")

    @classmethod
    def from_torch(cls, conv: nn.Conv2d, activation: Optional[str] = None,
                   max_pool: Optional[nn.MaxPool2d] = None) -> "Conv2d":
        """An effconv.Conv2d sharing ``conv``'s parameters."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device,
                  dtype=conv.weight.dtype, activation=activation, max_pool=max_pool)
        new.weight = conv.weight
        new.bias = conv.bias
        return new
