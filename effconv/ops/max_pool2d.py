"""effconv::max_pool2d: 2-D max pooling (F.max_pool2d without indices) and
its backward op effconv::max_pool2d_backward.

Not a convolution, but every pooled network (SqueezeNet, ResNet stems)
runs one between its convs, and PyTorch's CPU kernel also writes an int64
index per output in inference, which costs more than the pooling itself.
Backward recomputes each window's argmax from the saved input with the
forward's rule (first maximum; a NaN wins), so it credits exactly the
elements PyTorch's saved indices would.

Backends: C++ on CPU tensors; Triton on CUDA tensors (and on CPU tensors
under TRITON_INTERPRET=1). There is no CUDA C++ kernel.
"""
from __future__ import annotations

import torch

from effconv import _ext, backends
from effconv.ops import _common as c
from effconv.ops.conv2d import cpu_check, triton_check_elementwise

OP = "max_pool2d"

c.LIB.define(
    "max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, "
    "bool ceil_mode=False) -> Tensor"
)
c.LIB.define(
    "max_pool2d_backward(Tensor grad_output, Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
    "int[2] dilation, bool ceil_mode=False) -> Tensor"
)


def out_size(size: int, k: int, stride: int, pad: int, dil: int, ceil_mode: bool) -> int:
    """PyTorch's pooling output size (effconv/pool2d_shape.h pool_out_size)."""
    out = (size + 2 * pad - dil * (k - 1) - 1 + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _check(op, input, kernel_size, stride, padding, dilation, ceil_mode):
    """Returns (P, Q)."""
    if input.dim() != 4:
        raise RuntimeError(f"effconv.{op}: expected 4-D input (N, C, H, W), got {input.dim()}-D input of size "
                           f"{c.fmt_size(input)}")
    if any(s == 0 for s in input.shape[1:]):
        raise RuntimeError(f"effconv.{op}: expected input with non-zero channels, height and width, got size "
                           f"{c.fmt_size(input)}")
    c.check_floating(op, "input", input)
    c.check_pair(op, "kernel_size", kernel_size, 1)
    c.check_pair(op, "stride", stride, 1)
    c.check_pair(op, "padding", padding, 0)
    c.check_pair(op, "dilation", dilation, 1)
    return check_geometry(op, input.shape, kernel_size, stride, padding, dilation, ceil_mode)


def check_geometry(op, size, kernel_size, stride, padding, dilation, ceil_mode):
    """The pooled (P, Q) of an input of `size` (N, C, H, W), after the window checks."""
    if padding[0] > kernel_size[0] // 2 or padding[1] > kernel_size[1] // 2:
        raise RuntimeError(f"effconv.{op}: expected padding of at most half the kernel size {list(kernel_size)}, "
                           f"got {list(padding)}")
    h, w = size[2:]
    p = out_size(h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode)
    q = out_size(w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode)
    if p < 1 or q < 1:
        raise RuntimeError(f"effconv.{op}: given input size {list(size[1:])}, calculated output size "
                           f"{[size[1], p, q]}: expected a window that fits the padded input")
    return p, q


def _cuda_check(device_type, dtype):
    return "max_pool2d's GPU kernel is written in Triton; it has no CUDA C++ kernel"


def _table(op: str) -> backends.OpBackends:
    return backends.OpBackends(
        op,
        checks={"cpu": cpu_check, "triton": triton_check_elementwise, "cuda": _cuda_check,
                "torch": lambda d, t: None},
        auto_order={"cpu": ("cpu", "torch"), "cuda": ("triton", "torch")},
        auto_reason={"cpu": "auto: C++ kernels for CPU tensors", "cuda": "auto: Triton kernels for CUDA tensors"},
    )


TABLES = {OP: _table(OP), f"{OP}_backward": _table(f"{OP}_backward")}


def describe(kernel_size, stride, padding, dilation, ceil_mode) -> str:
    """The kernel variant, for explain()."""
    extra = "".join(f", {name}={list(v)}" for name, v, default in (("padding", padding, [0, 0]),
                                                                   ("dilation", dilation, [1, 1]))
                    if list(v) != default)
    return (f"max pool {kernel_size[0]}x{kernel_size[1]} stride {list(stride)}{extra}"
            f"{', ceil_mode' if ceil_mode else ''}")


@torch.library.register_fake("effconv::max_pool2d")
def _fake(input, kernel_size, stride, padding, dilation, ceil_mode=False):
    p, q = _check(OP, input, kernel_size, stride, padding, dilation, ceil_mode)
    return c.empty((*input.shape[:2], p, q), input, c.conv_memory_format(input))


def max_pool2d_impl(input, kernel_size, stride, padding, dilation, ceil_mode=False):
    p, q = _check(OP, input, kernel_size, stride, padding, dilation, ceil_mode)
    out = c.new_output((*input.shape[:2], p, q), input, c.conv_memory_format(input))
    backend = backends.choose(TABLES[OP], input.device, input.dtype,
                              lambda: describe(kernel_size, stride, padding, dilation, ceil_mode))
    if backend == "cpu":
        _ext.C().max_pool2d_forward_cpu(input, kernel_size, stride, padding, dilation, ceil_mode, out)
    elif backend == "triton":
        from effconv.kernels import max_pool2d as k

        k.forward(input, kernel_size, stride, padding, dilation, out)
    else:
        out.copy_(torch.nn.functional.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode))
    return out


torch.library.register_kernel("effconv::max_pool2d", ("cpu", "cuda"), max_pool2d_impl)


def _check_backward(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode):
    op = f"{OP}_backward"
    p, q = _check(op, input, kernel_size, stride, padding, dilation, ceil_mode)
    c.check_same(op, "input", input, "grad_output", grad_output)
    expected = [*input.shape[:2], p, q]
    if list(grad_output.shape) != expected:
        raise RuntimeError(f"effconv.{op}: expected grad_output of size {expected}, got {c.fmt_size(grad_output)}")


@torch.library.register_fake("effconv::max_pool2d_backward")
def _fake_backward(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode=False):
    _check_backward(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode)
    return c.empty(input.shape, input, c.conv_memory_format(input))


def _torch_indices(input, kernel_size, stride, padding, dilation, ceil_mode):
    return torch.ops.aten.max_pool2d_with_indices(input, kernel_size, stride, padding, dilation, ceil_mode)[1]


def max_pool2d_backward_impl(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode=False):
    _check_backward(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode)
    grad_input = c.new_output(input.shape, input, c.conv_memory_format(input))
    op = f"{OP}_backward"
    backend = backends.choose(TABLES[op], input.device, input.dtype,
                              lambda: describe(kernel_size, stride, padding, dilation, ceil_mode))
    if backend == "cpu":
        _ext.C().max_pool2d_backward_cpu(grad_output, input, kernel_size, stride, padding, dilation, ceil_mode,
                                         grad_input)
    elif backend == "triton":
        from effconv.kernels import max_pool2d as k

        k.backward(grad_output, input, kernel_size, stride, padding, dilation, grad_input)
    else:
        indices = _torch_indices(input, kernel_size, stride, padding, dilation, ceil_mode)
        grad_input.copy_(torch.ops.aten.max_pool2d_with_indices_backward(
            grad_output, input, kernel_size, stride, padding, dilation, ceil_mode, indices))
    return grad_input


torch.library.register_kernel("effconv::max_pool2d_backward", ("cpu", "cuda"), max_pool2d_backward_impl)


def _conf(inputs):
    kernel_size, stride, padding, dilation = inputs[:4]
    return kernel_size, stride, padding, dilation, inputs[4] if len(inputs) > 4 else False


def _setup(ctx, inputs, output):
    ctx.conf = _conf(inputs[1:])
    # Backward runs on the backend requested when forward ran (autograd may use another thread).
    ctx.backend = backends.requested_backend()
    ctx.save_for_backward(inputs[0])


def _backward(ctx, grad):
    (input,) = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    with backends.use_backend(ctx.backend):
        grad_input = c.call("max_pool2d_backward", max_pool2d_backward_impl, (grad, input), grad, input, *ctx.conf)
    return grad_input, None, None, None, None, None


FUNCTION = c.register_autograd("max_pool2d", max_pool2d_impl, _backward, _setup)


def _setup_backward(ctx, inputs, output):
    ctx.conf = _conf(inputs[2:])
    ctx.save_for_backward(inputs[1])


def _backward_backward(ctx, grad):
    # max_pool2d_backward is linear in grad_output: its derivative reads the
    # incoming gradient at each window's argmax. The argmax is piecewise
    # constant in the input, whose gradient is zero.
    (input,) = ctx.saved_tensors
    indices = _torch_indices(input.detach(), *ctx.conf)
    n, ch = indices.shape[:2]
    picked = grad.reshape(n, ch, -1).gather(2, indices.reshape(n, ch, -1)).view(indices.shape)
    return picked.contiguous(memory_format=c.conv_memory_format(input)), None, None, None, None, None, None


c.register_autograd("max_pool2d_backward", max_pool2d_backward_impl, _backward_backward, _setup_backward)
