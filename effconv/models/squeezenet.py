"""SqueezeNet 1.0 and 1.1 (Iandola et al., 2016) on effconv layers, with
torchvision's structure and parameter names. Every conv carries its ReLU in
its epilogue; the parameter-free ReLU modules torchvision lists separately
are nn.Identity here, so the state_dict keys stay the same. The max pools
are effconv.MaxPool2d; the stem's is part of the stem conv (its ``max_pool``,
one kernel in CPU inference), leaving nn.Identity at its index."""
from __future__ import annotations

import torch
from torch import nn

from effconv import functional, program
from effconv.nn.conv import Conv2d
from effconv.nn.pool import MaxPool2d


class Fire(nn.Module):
    def __init__(self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int):
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = Conv2d(inplanes, squeeze_planes, 1, activation="relu")
        self.expand1x1 = Conv2d(squeeze_planes, expand1x1_planes, 1, activation="relu")
        self.expand3x3 = Conv2d(squeeze_planes, expand3x3_planes, 3, padding=1, activation="relu")

    @classmethod
    def from_torchvision(cls, fire: nn.Module) -> "Fire":
        """This Fire on the parameters of a torchvision Fire (same keys)."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.inplanes = fire.inplanes
        for name in ("squeeze", "expand1x1", "expand3x3"):
            setattr(new, name, Conv2d.from_torch(getattr(fire, name), activation="relu"))
        return new.train(fire.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        e1, e3 = self.expand1x1, self.expand3x3
        # One output for both branches: in inference each conv writes its half.
        return functional.conv2d_cat_planned(functional.plan_memo(self), x, [e1.weight, e3.weight],
                                             [e1.bias, e3.bias], 1, [e1.padding, e3.padding], 1, e1.activation)

    def _program_steps(self, builder: program.Builder) -> list:
        cat = builder.record(self.__dict__.get("_plan_memo"))
        return builder.forward(self) if cat is None else builder.steps(self.squeeze) + [cat]


def _flatten(x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(x, 1)


class SqueezeNet(nn.Module):
    def __init__(self, version: str = "1_0", num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        pool = lambda: MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
        if version == "1_0":
            self.features = nn.Sequential(
                Conv2d(3, 96, 7, 2, activation="relu", max_pool=pool()), nn.Identity(), nn.Identity(),
                Fire(96, 16, 64, 64), Fire(128, 16, 64, 64), Fire(128, 32, 128, 128), pool(),
                Fire(256, 32, 128, 128), Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256),
                pool(), Fire(512, 64, 256, 256))
        elif version == "1_1":
            self.features = nn.Sequential(
                Conv2d(3, 64, 3, 2, activation="relu", max_pool=pool()), nn.Identity(), nn.Identity(),
                Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), pool(),
                Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), pool(),
                Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256))
        else:
            raise ValueError(f"Unsupported SqueezeNet version {version}: 1_0 or 1_1 expected")
        final_conv = Conv2d(512, num_classes, 1, activation="relu")
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), final_conv, nn.Identity(), nn.AdaptiveAvgPool2d((1, 1)))
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                if m is final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _stages(self) -> tuple:
        return program.to_channels_last, self.features, self.classifier, _flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return program.forward(self, x)


def squeezenet1_0(**kwargs) -> SqueezeNet:
    return SqueezeNet("1_0", **kwargs)


def squeezenet1_1(**kwargs) -> SqueezeNet:
    return SqueezeNet("1_1", **kwargs)
