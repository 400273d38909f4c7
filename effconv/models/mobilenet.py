"""MobileNetV1 (Howard et al., 2017) and MobileNetV2 (Sandler et al., 2018)
on effconv's fused Conv-BN-activation blocks.

MobileNetV2 has torchvision's structure and parameter names; its
inverted-residual projection (a 1x1 conv and BatchNorm with no activation,
torchvision's ``conv.{n-2}`` and ``conv.{n-1}``) runs as one fused op too.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from effconv import program
from effconv.nn.conv import Conv2d
from effconv.nn.conv_bn_act import ConvBNAct2d, _FoldCache, conv_bn_forward


def _make_divisible(v: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
    """torchvision's channel rounding: to a multiple of divisor, never more than 10% down."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _init(model: nn.Module, linear_std: float = 0.01) -> None:
    """torchvision's MobileNet initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNAct2d(inp, hidden, 1, activation="relu6"))
        layers += [
            ConvBNAct2d(hidden, hidden, 3, stride, groups=hidden, activation="relu6"),
            Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup
        self._fold = _FoldCache()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layers = list(self.conv._modules.values())
        h = x
        for layer in layers[:-2]:
            h = layer(h)
        h = conv_bn_forward(layers[-2], layers[-1], h, "none", self._fold)
        return x + h if self.use_res_connect else h

    def _program_steps(self, builder: program.Builder) -> list:
        last = builder.record(self._fold)
        if last is None:
            return builder.forward(self)
        layers = list(self.conv._modules.values())
        steps = [s for layer in layers[:-2] for s in builder.steps(layer)] + [last]
        return [program.residual(steps)] if self.use_res_connect else steps


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, round_nearest: int = 8,
                 dropout: float = 0.2):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
                   [6, 320, 1, 1]]
        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [ConvBNAct2d(3, input_channel, 3, 2, activation="relu6")]
        for t, c, n, s in setting:
            out = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(InvertedResidual(input_channel, out, s if i == 0 else 1, t))
                input_channel = out
        features.append(ConvBNAct2d(input_channel, self.last_channel, 1, activation="relu6"))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))
        _init(self)

    def _stages(self) -> tuple:
        return program.to_channels_last, self.features, program.global_avg_pool, self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return program.forward(self, x)


class MobileNetV1(nn.Module):
    """MobileNetV1: a 3x3 stem, then 13 depthwise-separable blocks (3x3
    depthwise + 1x1 pointwise, each conv-BN-ReLU), global pooling and a
    linear classifier. ``width_mult`` scales every layer's channels."""

    BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
              (512, 1), (1024, 2), (1024, 1)]

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if width_mult <= 0:
            raise ValueError(f"width_mult must be positive, got {width_mult}")
        ch = lambda c: max(8, int(c * width_mult))  # noqa: E731
        layers: list[nn.Module] = [ConvBNAct2d(3, ch(32), 3, 2, activation="relu")]
        inp = ch(32)
        for c, s in self.BLOCKS:
            layers.append(nn.Sequential(ConvBNAct2d(inp, inp, 3, s, groups=inp, activation="relu"),
                                        ConvBNAct2d(inp, ch(c), 1, activation="relu")))
            inp = ch(c)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(inp, num_classes))
        _init(self)

    def _stages(self) -> tuple:
        return program.to_channels_last, self.features, program.global_avg_pool, self.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return program.forward(self, x)


def mobilenet_v1(width_mult: float = 1.0, **kwargs) -> MobileNetV1:
    return MobileNetV1(width_mult=width_mult, **kwargs)


def mobilenet_v2(width_mult: float = 1.0, **kwargs) -> MobileNetV2:
    """torchvision.models.mobilenet_v2's architecture and parameter names on effconv layers."""
    return MobileNetV2(width_mult=width_mult, **kwargs)
