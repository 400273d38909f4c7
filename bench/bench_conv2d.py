"""effconv::conv2d (implicit-GEMM family) vs PyTorch (oneDNN on CPU, cuDNN on
GPU) in NCHW and channels_last: forward, forward+backward, and for 1x1
layers the fused bias+ReLU epilogue against conv followed by relu.
effconv runs channels_last rows internally; 'effconv_nchw' gives it NCHW
tensors (transposed in and out by its own layout copies)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import effconv
from conftest import measure_and_record, step

SHAPES = json.loads((Path(__file__).parent / "shapes" / "conv2d.json").read_text())["shapes"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROVIDERS = ["torch", "torch_cl", "effconv", "effconv_nchw"]


def geometry(s):
    stride, pad, dil, g = s.get("stride", 1), s.get("padding", 0), s.get("dilation", 1), s.get("groups", 1)
    P = (s["H"] + 2 * pad - dil * (s["R"] - 1) - 1) // stride + 1
    Q = (s["W"] + 2 * pad - dil * (s["S"] - 1) - 1) // stride + 1
    return stride, pad, dil, g, P, Q


def work(s, mode):
    stride, pad, dil, g, P, Q = geometry(s)
    macs = s["N"] * P * Q * s["K"] * (s["C"] // g) * s["R"] * s["S"]
    elems = s["N"] * s["C"] * s["H"] * s["W"] + s["K"] * (s["C"] // g) * s["R"] * s["S"] + s["N"] * s["K"] * P * Q
    factor = 3 if mode == "fwd+bwd" else 1
    return 2 * macs * factor, 4 * elems * factor


def make(s, provider, requires_grad):
    stride, pad, dil, g, P, Q = geometry(s)
    x = torch.randn(s["N"], s["C"], s["H"], s["W"], device=DEVICE)
    w = torch.randn(s["K"], s["C"] // g, s["R"], s["S"], device=DEVICE) * 0.1
    b = torch.randn(s["K"], device=DEVICE)
    if provider in ("torch_cl", "effconv"):  # effconv's internal layout is channels_last too
        x = x.contiguous(memory_format=torch.channels_last)
    if provider == "torch_cl":
        w = w.contiguous(memory_format=torch.channels_last)
    for t in (x, w, b):
        t.requires_grad_(requires_grad)
    return x, w, b, (stride, pad, dil, g)


def conv_fn(provider, relu):
    if provider.startswith("effconv"):
        return lambda x, w, b, a: effconv.functional.conv2d(x, w, b, *a, activation="relu" if relu else None)
    if relu:
        return lambda x, w, b, a: F.relu(F.conv2d(x, w, b, *a))
    return lambda x, w, b, a: F.conv2d(x, w, b, *a)


MODES = ["fwd", "fwd+bwd", "fwd+bias+relu"]
CASES = [(s, m) for s in SHAPES for m in MODES if m != "fwd+bias+relu" or "fused_relu_target" in s]


def runner(provider, shape, mode):
    """The timed step of one provider: its own operands, made once."""
    train = mode == "fwd+bwd"
    x, w, b, args = make(shape, provider, train)
    f = conv_fn(provider, mode == "fwd+bias+relu")
    return step(lambda x, w, b: f(x, w, b, args), (x, w, b), train)


@pytest.mark.parametrize("shape,mode", CASES, ids=[f"{s['name']}-{m}" for s, m in CASES])
def test_conv2d(benchmark, record, shape, mode):
    runs = {p: runner(p, shape, mode) for p in PROVIDERS}
    flop, nbytes = work(shape, mode)
    target = shape.get("fused_relu_target") if mode == "fwd+bias+relu" else shape.get("target")
    measure_and_record(benchmark, record, runs, DEVICE, "conv2d", shape["name"], mode, flop, nbytes, target)
