"""effconv: fast convolutions for efficient CNNs.

Triton and CUDA C++ kernels on the GPU, C++ kernels on the CPU, exposed as
PyTorch ops with autograd (torch.ops.effconv.*), functionals
(effconv.functional) and modules (effconv.Conv2d).
"""
import torch  # noqa: F401

from effconv import functional, ops
from effconv.backends import requested_backend, use_backend
from effconv.convert import ConversionReport, conversion_report, convert
from effconv.explain import Explanation, explain
from effconv.memory import empty_cache
from effconv.nn import Conv2d, ConvBNAct2d, ConvBNReLU2d, DeformConv2d, MaxPool2d, ModulatedDeformConv2dPack
from effconv.ops import ACTIVATIONS, poison_outputs

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Conv2d",
    "ConvBNAct2d",
    "ConvBNReLU2d",
    "DeformConv2d",
    "MaxPool2d",
    "ModulatedDeformConv2dPack",
    "ConversionReport",
    "conversion_report",
    "convert",
    "empty_cache",
    "Explanation",
    "explain",
    "functional",
    "ops",
    "poison_outputs",
    "requested_backend",
    "use_backend",
]
