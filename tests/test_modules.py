"""effconv.Conv2d as a drop-in nn.Conv2d, PyTorch-style errors, backend
choice and explain()."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effconv
from helpers import assert_close, same_layout

MODULE_CONFIGS = [
    dict(in_channels=8, out_channels=16, kernel_size=3, padding=1),
    dict(in_channels=8, out_channels=16, kernel_size=1, bias=False),
    dict(in_channels=8, out_channels=8, kernel_size=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    dict(in_channels=32, out_channels=64, kernel_size=3, padding=1, groups=8),
    dict(in_channels=8, out_channels=8, kernel_size=4, padding="same"),
    dict(in_channels=8, out_channels=8, kernel_size=3, padding="valid"),
    dict(in_channels=8, out_channels=12, kernel_size=3, padding=2, padding_mode="reflect"),
    dict(in_channels=8, out_channels=12, kernel_size=3, padding=1, padding_mode="replicate"),
    dict(in_channels=8, out_channels=12, kernel_size=3, padding=(1, 2), padding_mode="circular"),
    dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),  # depthwise shape
]


@pytest.mark.parametrize("cfg", MODULE_CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_conv2d_module_matches_nn_conv2d(cfg, layout):
    ref = nn.Conv2d(**cfg).double()
    ours = effconv.Conv2d(**cfg)
    ours.load_state_dict({k: v.float() for k, v in ref.state_dict().items()}, strict=True)
    assert list(ours.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, cfg["in_channels"], 11, 10)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    y = ours(x)
    xr = x.detach().double().requires_grad_()
    y_ref = ref(xr)
    red = cfg["in_channels"] // cfg.get("groups", 1) * ours.weight.shape[2] * ours.weight.shape[3]
    assert_close(y.detach(), y_ref, red)
    assert same_layout(y, nn.Conv2d(**cfg)(x.detach()))
    dy = torch.randn_like(y)
    y.backward(dy)
    y_ref.backward(dy.double())
    assert_close(x.grad, xr.grad, red)
    assert_close(ours.weight.grad, ref.weight.grad, y.numel() // y.shape[1])


def test_unbatched_and_activation():
    m = effconv.Conv2d(4, 6, 3, padding=1, activation="relu6")
    x = torch.randn(4, 7, 7)
    y = m(x)
    assert y.shape == (6, 7, 7)
    assert_close(y, F.relu6(F.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1)), 36)
    assert "activation=relu6" in repr(m)


def test_from_torch_shares_parameters():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    m = effconv.Conv2d.from_torch(conv)
    assert m.weight is conv.weight and m.bias is conv.bias
    x = torch.randn(1, 4, 5, 5)
    assert_close(m(x), conv(x.double() if False else x).double(), 36)


@pytest.mark.parametrize("kwargs,match", [
    (dict(stride=0), "stride must be positive"),
    (dict(stride=(1, -1)), "stride must be positive"),
    (dict(dilation=0), "dilation must be positive"),
    (dict(padding=-1), "padding must be non-negative"),
    (dict(kernel_size=0), "kernel_size must be positive"),
    (dict(groups=0), "groups must be a positive integer"),
    (dict(groups=3), "in_channels must be divisible by groups"),
    (dict(padding="same", stride=2), "padding='same' is not supported for strided convolutions"),
    (dict(padding="full"), "Invalid padding string"),
    (dict(padding_mode="mirror"), "padding_mode must be one of"),
    (dict(activation="gelu"), "activation must be one of"),
])
def test_construction_errors(kwargs, match):
    args = dict(in_channels=4, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        effconv.Conv2d(**args)


def _conv(x, w, b=None, **kw):
    return effconv.functional.conv2d(x, w, b, **kw)


@pytest.mark.parametrize("call,match", [
    (lambda: _conv(torch.randn(4, 5), torch.randn(2, 4, 1, 1)), r"Expected 3D \(unbatched\) or 4D"),
    (lambda: _conv(torch.randn(1, 1, 4, 5, 5), torch.randn(2, 4, 1, 1)), r"Expected 3D \(unbatched\) or 4D"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1)), "expected 4-D weight"),
    (lambda: _conv(torch.randn(1, 3, 5, 5), torch.randn(2, 4, 1, 1)),
     r"expected input \[1, 3, 5, 5\] to have 4 channels, but got 3"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(3, 2, 1, 1), groups=2),
     "expected out_channels divisible by groups=2"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), stride=0), r"expected positive stride, got \[0, 0\]"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), dilation=(1, 0)), "expected positive dilation"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), padding=-1), "expected non-negative padding"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), groups=0), "expected groups > 0, got 0"),
    (lambda: _conv(torch.randn(1, 4, 2, 2), torch.randn(2, 4, 3, 3)), "Expected a kernel no larger than the padded input"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1, dtype=torch.float64)),
     "expected weight of dtype torch.float32 .* got torch.float64"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), torch.randn(2, dtype=torch.float64)),
     "expected bias of dtype torch.float32, got torch.float64"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), torch.randn(3)), r"expected bias of size \[2\], got \[3\]"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1, device="meta")),
     "expected weight on cpu .* got meta"),
    (lambda: _conv(torch.ones(1, 4, 5, 5, dtype=torch.int64), torch.ones(2, 4, 1, 1, dtype=torch.int64)),
     "expected input of a floating dtype .* got torch.int64"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), padding="same", stride=2),
     "padding='same' is not supported for strided convolutions"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), activation="tanh"), "expected activation in"),
    (lambda: _conv(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), stride=(1, 1, 1)),
     "expected stride to be a single integer value or a list of 2 values"),
])
def test_call_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


def test_op_level_errors_name_expected_and_actual():
    with pytest.raises(RuntimeError, match=r"expected grad_output of size \[1, 2, 5, 5\], got \[1, 2, 4, 4\]"):
        torch.ops.effconv.conv2d_grad_input(torch.randn(1, 2, 4, 4), torch.randn(2, 4, 1, 1), [1, 4, 5, 5],
                                            [1, 1], [0, 0], [1, 1], 1)
    # The C++ kernels re-check what memory safety depends on.
    from effconv import _ext

    with pytest.raises(RuntimeError, match=r"expected out of size \[1, 2, 5, 5\], got \[1, 2, 4, 4\]"):
        _ext.C().conv2d_forward_cpu(torch.randn(1, 4, 5, 5), torch.randn(2, 4, 1, 1), None, None, None,
                                    [1, 1], [0, 0], [1, 1], 1, 0, torch.empty(1, 2, 4, 4))


def test_backend_choice_and_explain(monkeypatch, caplog):
    m = effconv.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    static = effconv.explain(m)
    assert [(r["op"], r["backend"]) for r in static] == [("conv2d", "cpu")]
    assert "implicit GEMM 3x3" in str(static)

    with effconv.use_backend("torch"):
        (row,) = effconv.explain(m, x).rows
        assert row["backend"] == "torch" and row["fallback"] == "no"
    # A backend that cannot run the call is replaced, visibly: log + explain.
    with caplog.at_level(logging.WARNING, logger="effconv"), effconv.use_backend("cuda"):
        (row,) = effconv.explain(m, x).rows
        y = m(x)
    assert row["backend"] == "cpu" and row["fallback"] == "yes"
    assert "cuda: conv2d's GPU kernels are written in Triton" in row["reason"]
    assert any("runs on backend 'cpu'" in r.message for r in caplog.records)
    assert_close(y, F.conv2d(x.double(), m.weight.double(), m.bias.double(), padding=1), 36)

    monkeypatch.setenv("EFFCONV_BACKEND", "torch")
    assert effconv.requested_backend() == "torch"
    with effconv.use_backend("cpu"):
        assert effconv.requested_backend() == "cpu"
    monkeypatch.setenv("EFFCONV_BACKEND", "fastest")
    with pytest.raises(RuntimeError, match="EFFCONV_BACKEND must be one of"):
        m(x)
    with pytest.raises(ValueError, match="effconv backend must be one of"):
        with effconv.use_backend("gpu"):
            pass


def test_backward_uses_the_forward_backend():
    m = effconv.Conv2d(4, 8, 3, padding=1)
    x = torch.randn(1, 4, 6, 6, requires_grad=True)
    from effconv import backends

    with backends.recording() as rec:
        with effconv.use_backend("torch"):
            y = m(x)
        y.sum().backward()  # outside the block: still the torch backend
    assert [(c.op, c.backend) for c in rec] == [
        ("conv2d", "torch"), ("conv2d_grad_input", "torch"), ("conv2d_grad_weight", "torch")]


def test_inference_plan_memo_follows_every_change():
    """effconv.Conv2d and SqueezeNet's Fire keep their last inference call's
    plan; every change the plan depends on must reach the op."""
    from effconv.models.squeezenet import Fire

    torch.manual_seed(0)
    conv = effconv.Conv2d(6, 10, 3, padding=1, activation="relu")
    fire = Fire(6, 4, 8, 8)
    refs = {"conv": lambda x: F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), conv.stride,
                                       conv.padding, conv.dilation).relu(),
            "fire": lambda x: torch.cat([
                F.conv2d(F.conv2d(x.double(), fire.squeeze.weight.double(), fire.squeeze.bias.double()).relu(),
                         e.weight.double(), e.bias.double(), 1, e.padding).relu()
                for e in (fire.expand1x1, fire.expand3x3)], 1)}
    x = torch.randn(2, 6, 7, 9)
    inputs = [("first call", x), ("same call", x), ("channels_last", x.to(memory_format=torch.channels_last)),
              ("other size", torch.randn(1, 6, 5, 11)), ("float64", x.double())]
    for name, module in (("conv", conv), ("fire", fire)):
        with torch.inference_mode():
            for what, xi in inputs:
                if xi.dtype == torch.float64:
                    module.double()
                out = module(xi)
                assert out.is_contiguous(memory_format=torch.channels_last) == (what == "channels_last"), what
                assert_close(out, refs[name](xi), 54, f"{name}: {what}")
            module.float()
        with torch.inference_mode(False), torch.no_grad():
            target = conv if name == "conv" else fire.expand3x3
            target.weight = nn.Parameter(target.weight[:, :, :2].clone())  # a 2x3 kernel: another output size
            target.padding = (1, 1) if name == "conv" else (0, 1)
        with torch.inference_mode():
            if name == "fire":  # 2x3 with padding (0, 1) keeps 7x9 -> 6x9: the cat's sizes now disagree
                with pytest.raises(RuntimeError, match="expected every conv to give the same output size"):
                    module(x)
                fire.expand3x3.padding = (1, 1)
                with pytest.raises(RuntimeError, match="expected every conv to give the same output size"):
                    module(x)
                continue
            assert_close(module(x), refs[name](x), 54, f"{name}: after replacing the weight")
            with effconv.use_backend("torch"):
                assert_close(module(x), refs[name](x), 54, f"{name}: under use_backend('torch')")
            rows = effconv.explain(module, torch.randn(1, 6, 4, 4)).rows
            assert rows and rows[0]["op"] == "conv2d"
            assert_close(module(x), refs[name](x), 54, f"{name}: after explain()")
