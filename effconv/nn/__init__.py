"""Modules. They hold parameters and call effconv.functional; they never launch kernels."""
from effconv.nn.conv import Conv2d
from effconv.nn.conv_bn_act import ConvBNAct2d, ConvBNReLU2d

__all__ = ["Conv2d", "ConvBNAct2d", "ConvBNReLU2d"]
