"""effconv depthwise convolution vs PyTorch (oneDNN on CPU, cuDNN on GPU) in
NCHW and channels_last, forward and forward+backward. Depthwise is
memory-bound: the table's GB/s column sits beside the machine's copy
bandwidth measured in the same run (row 'copy bandwidth')."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import effconv
from conftest import measure, measure_and_record, step

SHAPES = json.loads((Path(__file__).parent / "shapes" / "depthwise.json").read_text())["shapes"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROVIDERS = ["torch", "torch_cl", "effconv", "effconv_nchw"]
MODES = ["fwd", "fwd+bwd"]
CASES = [(s, m) for s in SHAPES for m in MODES]


def test_copy_bandwidth(benchmark, record):
    """Reference line: read + write of a 256 MB buffer, the memory roofline."""
    x = torch.empty(64 * 1024 * 1024, device=DEVICE).uniform_()
    y = torch.empty_like(x)
    timing = measure(benchmark, lambda: y.copy_(x), DEVICE)
    record("depthwise_conv2d", "copy bandwidth (256 MB read + write)", "copy", "effconv", timing, 0.0,
           2 * x.numel() * 4)


def work(s, mode):
    pad, st = s["k"] // 2, s["stride"]
    P = (s["H"] + 2 * pad - s["k"]) // st + 1
    Q = (s["W"] + 2 * pad - s["k"]) // st + 1
    out = s["N"] * s["C"] * P * Q
    flop = 2 * out * s["k"] * s["k"]
    bytes_moved = 4 * (s["N"] * s["C"] * s["H"] * s["W"] + out)  # one read of x, one write of y
    if mode == "fwd+bwd":  # + read dy, x; write dx (dw is small)
        flop *= 3
        bytes_moved *= 3
    return flop, bytes_moved


def runner(provider, s, mode):
    """The timed step of one provider: its own operands, made once."""
    pad, st = s["k"] // 2, s["stride"]
    x = torch.randn(s["N"], s["C"], s["H"], s["W"], device=DEVICE)
    w = torch.randn(s["C"], 1, s["k"], s["k"], device=DEVICE)
    b = torch.randn(s["C"], device=DEVICE)
    if provider in ("torch_cl", "effconv"):
        x = x.contiguous(memory_format=torch.channels_last)
    if provider == "torch_cl":
        w = w.contiguous(memory_format=torch.channels_last)
    if provider.startswith("effconv"):
        def f(x, w, b):
            return effconv.functional.depthwise_conv2d(x, w, b, st, pad)
    else:
        def f(x, w, b):
            return F.conv2d(x, w, b, st, pad, 1, s["C"])
    train = mode == "fwd+bwd"
    for t in (x, w, b):
        t.requires_grad_(train)
    return step(f, (x, w, b), train)


@pytest.mark.parametrize("shape,mode", CASES, ids=[f"{s['name']}-{m}" for s, m in CASES])
def test_depthwise_conv2d(benchmark, record, shape, mode):
    runs = {p: runner(p, shape, mode) for p in PROVIDERS}
    flop, nbytes = work(shape, mode)
    target = shape.get("bwd_target") if mode == "fwd+bwd" else shape.get("target")
    measure_and_record(benchmark, record, runs, DEVICE, "depthwise_conv2d", shape["name"], mode, flop, nbytes, target)
