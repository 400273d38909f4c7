"""torch.library.opcheck for every effconv op: schema, autograd
registration, fake tensors and AOT dispatch with dynamic shapes."""
from __future__ import annotations

import pytest
import torch

import effconv

ops = torch.ops.effconv


def conv2d_samples():
    x = torch.randn(2, 8, 7, 9)
    xc = torch.randn(2, 8, 7, 9).contiguous(memory_format=torch.channels_last)
    w = torch.randn(12, 4, 3, 3)
    b, s, h = torch.randn(12), torch.rand(12) + 0.5, torch.randn(12)
    rg = lambda t: t.clone().requires_grad_()  # noqa: E731
    return [
        ("plain", (x, w, None, [1, 1], [1, 1], [1, 1], 2)),
        ("grad_cl_bias", (rg(xc), rg(w), rg(b), [2, 1], [1, 0], [1, 2], 2)),
        ("epilogue_silu", (rg(x), rg(w), rg(b), [1, 1], [1, 1], [1, 1], 2, rg(s), rg(h), "silu")),
        ("epilogue_relu", (rg(xc), rg(w), None, [1, 1], [0, 0], [1, 1], 2, None, rg(h), "relu")),
        ("pointwise", (rg(torch.randn(1, 6, 4, 5)), rg(torch.randn(10, 6, 1, 1)), None, [1, 1], [0, 0], [1, 1], 1)),
        ("batch0", (torch.randn(0, 8, 7, 9), w, b, [1, 1], [1, 1], [1, 1], 2)),
    ]


@pytest.mark.parametrize("name,args", conv2d_samples(), ids=[n for n, _ in conv2d_samples()])
def test_opcheck_conv2d(name, args):
    torch.library.opcheck(ops.conv2d.default, args)


def test_opcheck_conv2d_grad_ops():
    dy = torch.randn(2, 12, 7, 9, requires_grad=True)
    w = torch.randn(12, 4, 3, 3, requires_grad=True)
    x = torch.randn(2, 8, 7, 9, requires_grad=True)
    torch.library.opcheck(ops.conv2d_grad_input.default, (dy, w, [2, 8, 7, 9], [1, 1], [1, 1], [1, 1], 2))
    torch.library.opcheck(ops.conv2d_grad_weight.default, (dy, x, [12, 4, 3, 3], [1, 1], [1, 1], [1, 1], 2))


@pytest.mark.parametrize("activation", ["none", "relu6", "silu"])
def test_opcheck_epilogue(activation):
    x = torch.randn(2, 6, 4, 5, requires_grad=True)
    xc = torch.randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    v = [torch.randn(6, requires_grad=True) for _ in range(3)]
    torch.library.opcheck(ops.epilogue.default, (x, v[0], v[1], v[2], activation))
    torch.library.opcheck(ops.epilogue.default, (xc, None, v[1], None, activation))
    torch.library.opcheck(ops.epilogue.default, (torch.randn(3, 6), v[0], None, v[2], activation))


@pytest.mark.triton
def test_opcheck_triton_backend():
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, requires_grad=True)
    b = torch.randn(6, requires_grad=True)
    with effconv.use_backend("triton"):
        torch.library.opcheck(ops.conv2d.default, (x, w, b, [1, 1], [1, 1], [1, 1], 2, None, None, "relu"))
        torch.library.opcheck(ops.epilogue.default, (x, None, torch.randn(4), None, "silu"))
