"""The functionals' direct autograd path against the dispatcher's.

With nothing but autograd listening, a functional runs its op's
autograd.Function around the op's implementation (ops/_common.call) and the
backward formulas call the backward ops' implementations directly; under a
dispatch mode the same call goes through torch.ops.effconv.* and the
autograd kernel torch.library.register_autograd installed. Both must give
the same outputs and gradients, bit for bit, and the first must really be
taken.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import effconv.functional as EF


class _Listening(TorchDispatchMode):
    """A dispatch mode that changes nothing but makes every op call observable."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _leaf(*size, cl=False):
    t = torch.randn(*size, dtype=torch.float64)
    if cl:
        t = t.contiguous(memory_format=torch.channels_last)
    return t.requires_grad_()


def _conv2d():
    x, w, b = _leaf(2, 8, 7, 9, cl=True), _leaf(6, 4, 3, 3), _leaf(6)
    scale, shift = _leaf(6), _leaf(6)
    return (x, w, b, scale, shift), lambda: EF.conv2d(x, w, b, 2, 1, 1, 2, scale=scale, shift=shift,
                                                      activation="silu")


def _depthwise():
    x, w, b = _leaf(2, 5, 9, 8, cl=True), _leaf(10, 1, 3, 3), _leaf(10)
    return (x, w, b), lambda: EF.depthwise_conv2d(x, w, b, 1, 1, activation="relu6")  # channel multiplier 2


def _conv_bn():
    x, w, g, beta = _leaf(3, 4, 6, 6, cl=True), _leaf(8, 4, 1, 1), _leaf(8), _leaf(8)
    rm, rv = torch.zeros(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
    return (x, w, g, beta), lambda: EF.conv_bn_act2d(x, w, rm, rv, g, beta, True, 0.1, 1e-5, activation="relu")


def _epilogue():
    x, b, scale, shift = _leaf(2, 6, 5, 5), _leaf(6), _leaf(6), _leaf(6)
    return (x, b, scale, shift), lambda: EF.epilogue(x, b, scale, shift, "silu")


def _max_pool():
    x = _leaf(2, 4, 9, 9, cl=True)
    return (x,), lambda: EF.max_pool2d(x, 3, 2, 1)


def _deform():
    x, w, b = _leaf(1, 4, 6, 6), _leaf(5, 4, 3, 3), _leaf(5)
    offset, mask = _leaf(1, 18, 6, 6), _leaf(1, 9, 6, 6)
    return (x, offset, w, b, mask), lambda: EF.deform_conv2d(x, offset, w, b, 1, 1, mask=mask)


CASES = {"conv2d": _conv2d, "depthwise_conv2d": _depthwise, "conv_bn_act2d": _conv_bn, "epilogue": _epilogue,
         "max_pool2d": _max_pool, "deform_conv2d": _deform}


def _run(inputs, call):
    out = call()
    out = out[0] if isinstance(out, tuple) else out
    weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    grads = torch.autograd.grad(out, inputs, weights)
    return out.detach(), grads, type(out.grad_fn).__name__


@pytest.mark.parametrize("op", sorted(CASES))
def test_direct_autograd_matches_dispatcher(op):
    torch.manual_seed(0)
    inputs, call = CASES[op]()
    out, grads, direct_fn = _run(inputs, call)
    with _Listening():
        ref, ref_grads, dispatched_fn = _run(inputs, call)
    # The direct path's grad_fn is its own autograd.Function (named after the
    # op); the dispatcher's is the one register_autograd generated.
    assert direct_fn == f"{op}Backward", direct_fn
    assert dispatched_fn != direct_fn
    assert torch.equal(out, ref)
    for g, r in zip(grads, ref_grads):
        assert torch.equal(g, r)
