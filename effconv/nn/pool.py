"""effconv.MaxPool2d: a drop-in nn.MaxPool2d on effconv's max_pool2d kernels."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from effconv import functional


class MaxPool2d(nn.MaxPool2d):
    """``torch.nn.MaxPool2d`` (same constructor and results) running
    effconv's ``max_pool2d`` op. Arguments PyTorch would only reject at call
    time are rejected here, with ValueError. ``return_indices=True`` runs
    PyTorch's kernel, visibly (see :func:`effconv.functional.max_pool2d`)."""

    effconv_op = "max_pool2d"

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False):
        k = _pair(kernel_size)
        given = stride is not None and (isinstance(stride, int) or len(stride) > 0)
        checks = (("kernel_size", k, 1), ("stride", _pair(stride) if given else k, 1),
                  ("padding", _pair(padding), 0), ("dilation", _pair(dilation), 1))
        for name, v, low in checks:
            if len(v) != 2 or any(not isinstance(x, int) or x < low for x in v):
                what = "positive" if low else "non-negative"
                raise ValueError(f"{name} must be one or two {what} integers, got {v}")
        if any(p > kk // 2 for p, kk in zip(_pair(padding), k)):
            raise ValueError(f"padding must be at most half the kernel size {k}, got {padding}")
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)

    def forward(self, input: torch.Tensor):
        return functional.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                                     self.ceil_mode, self.return_indices)

    @classmethod
    def from_torch(cls, pool: nn.MaxPool2d) -> "MaxPool2d":
        return cls(pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.return_indices, pool.ceil_mode)
