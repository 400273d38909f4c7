"""Modules. They hold parameters and call effconv.functional; they never launch kernels."""
from effconv.nn.conv import Conv2d

__all__ = ["Conv2d"]
