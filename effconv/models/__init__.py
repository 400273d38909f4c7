"""Efficient CNNs built on effconv layers.

Every model keeps torchvision's module names, so torchvision state_dicts
load with ``strict=True`` (``mobilenet_v2``, ``squeezenet1_0``,
``squeezenet1_1``), and runs channels_last internally (the layout effconv's
kernels compute in): inputs of either layout give the same logits.
"""
from effconv.models.mobilenet import MobileNetV1, MobileNetV2, mobilenet_v1, mobilenet_v2
from effconv.models.squeezenet import SqueezeNet, squeezenet1_0, squeezenet1_1

__all__ = ["MobileNetV1", "MobileNetV2", "SqueezeNet", "mobilenet_v1", "mobilenet_v2", "squeezenet1_0",
           "squeezenet1_1"]
