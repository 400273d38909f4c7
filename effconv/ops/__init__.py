"""Operator registrations (torch.ops.effconv.*). Importing this package
registers every op; one module per op, named after it."""
from effconv.ops import conv2d, conv_bn_act2d, deform_conv2d, depthwise_conv2d, epilogue, max_pool2d  # noqa: F401
from effconv.ops._common import ACTIVATIONS, poison_outputs  # noqa: F401
