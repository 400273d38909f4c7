"""Deformable convolution modules: DeformConv2d (offset and mask passed in,
like torchvision.ops.DeformConv2d) and ModulatedDeformConv2dPack (predicts
its own offset and mask, like mmcv's). They hold parameters and call
effconv.functional.deform_conv2d."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from effconv import functional
from effconv.nn.conv import Conv2d, _check_positive


class DeformConv2d(nn.Module):
    """``torchvision.ops.DeformConv2d``'s constructor, parameters
    (``weight``, ``bias``) and ``forward(input, offset, mask=None)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, device=None, dtype=None):
        super().__init__()
        _check_positive("kernel_size", kernel_size)
        _check_positive("stride", stride)
        _check_positive("dilation", dilation)
        _check_positive("padding", padding, allow_zero=True)
        if groups <= 0:
            raise ValueError(f"groups must be a positive integer, got {groups}")
        if in_channels % groups != 0:
            raise ValueError(f"in_channels must be divisible by groups, got {in_channels} and {groups}")
        if out_channels % groups != 0:
            raise ValueError(f"out_channels must be divisible by groups, got {out_channels} and {groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        kw = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchvision's initialisation (that of nn.Conv2d)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_torchvision(cls, module: nn.Module) -> "DeformConv2d":
        """An effconv.DeformConv2d sharing a torchvision.ops.DeformConv2d's parameters."""
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, module.groups, module.bias is not None, device=module.weight.device,
                  dtype=module.weight.dtype)
        new.weight = module.weight
        new.bias = module.bias
        return new

    def forward(self, input: torch.Tensor, offset: torch.Tensor, mask: Optional[torch.Tensor] = None):
        return functional.deform_conv2d(input, offset, self.weight, self.bias, self.stride, self.padding,
                                        self.dilation, mask)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}, dilation={self.dilation}")
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        return s


class ModulatedDeformConv2dPack(DeformConv2d):
    """DCNv2 that predicts its offsets and mask with its own convolution
    ``conv_offset`` (an effconv.Conv2d with the same kernel, stride, padding
    and dilation; mmcv's parameter names), zero-initialised.

    The mask is ``2 * sigmoid(m)``, so with the zero initialisation (offset
    0, mask 1) the module starts out exactly equal to a plain convolution
    with its weight; mmcv uses ``sigmoid(m)``, which starts at half of it.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, deform_groups: int = 1, bias: bool = True, device=None, dtype=None):
        if deform_groups <= 0 or in_channels % deform_groups != 0:
            raise ValueError(f"deform_groups must be a positive divisor of in_channels ({in_channels}), "
                             f"got {deform_groups}")
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, device,
                         dtype)
        self.deform_groups = deform_groups
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = Conv2d(in_channels, 3 * deform_groups * taps, self.kernel_size, self.stride,
                                  self.padding, self.dilation, bias=True, device=device, dtype=dtype)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = self.conv_offset(input)
        n_off = 2 * self.deform_groups * self.kernel_size[0] * self.kernel_size[1]
        offset, mask = out[:, :n_off], 2 * torch.sigmoid(out[:, n_off:])
        return super().forward(input, offset, mask)

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", deform_groups={self.deform_groups}" if self.deform_groups != 1 else "")
