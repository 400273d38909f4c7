"""torch.compile(fullgraph=True) over effconv layers: no graph breaks, same results."""
import torch
from torch import nn

import effconv
from helpers import assert_close


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    model = nn.Sequential(
        effconv.Conv2d(3, 8, 3, stride=2, padding=1, activation="relu", max_pool=nn.MaxPool2d(3, 2, ceil_mode=True)),
        effconv.Conv2d(8, 16, 1),
        nn.Hardswish(),
        effconv.Conv2d(16, 16, 3, padding=1, groups=4),
    )
    x = torch.randn(2, 3, 24, 24).contiguous(memory_format=torch.channels_last)
    eager = model(x)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    assert_close(out, eager.double(), 16 * 9)
    out.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for g, ref in zip(grads, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_compile_dynamic_shapes():
    torch._dynamo.reset()
    conv = effconv.Conv2d(4, 4, 3, padding=1)
    f = torch.compile(conv, fullgraph=True, dynamic=True)
    for size in (5, 7, 9):
        x = torch.randn(1, 4, size, size + 1)
        assert_close(f(x), conv(x).double(), 36)


def test_jit_trace_records_effconv_ops():
    # Under torch.jit.trace the fast paths (direct kernel calls, captured
    # programs) step aside: the trace must hold the ops, not constants.
    import warnings

    import effconv.models

    model = effconv.models.squeezenet1_1(num_classes=10).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64), check_trace=False)
        assert str(traced.inlined_graph).count("effconv::") >= 26
        x = torch.randn(2, 3, 48, 48)
        torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
