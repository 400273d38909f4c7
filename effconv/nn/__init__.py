"""Modules. They hold parameters and call effconv.functional; they never launch kernels."""
from effconv.nn.conv import Conv2d
from effconv.nn.conv_bn_act import ConvBNAct2d, ConvBNReLU2d
from effconv.nn.deform import DeformConv2d, ModulatedDeformConv2dPack
from effconv.nn.pool import MaxPool2d

__all__ = ["Conv2d", "ConvBNAct2d", "ConvBNReLU2d", "DeformConv2d", "MaxPool2d", "ModulatedDeformConv2dPack"]
