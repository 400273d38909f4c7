"""effconv max_pool2d vs PyTorch (NCHW and channels_last), forward and
forward+backward. Memory-bound like depthwise: GB/s counts one read of the
input and one write of the output (the backward adds a read of the
gradient and the input and a write of grad_input)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import effconv
from conftest import measure_and_record, step

SHAPES = json.loads((Path(__file__).parent / "shapes" / "max_pool2d.json").read_text())["shapes"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROVIDERS = ["torch", "torch_cl", "effconv", "effconv_nchw"]
CASES = [(s, m) for s in SHAPES for m in s["modes"]]


def runner(provider, s, mode):
    """The timed step of one provider."""
    args = (s["k"], s["stride"], s["padding"], 1, s["ceil_mode"])
    x = torch.randn(s["N"], s["C"], s["H"], s["W"], device=DEVICE)
    if provider in ("torch_cl", "effconv"):
        x = x.contiguous(memory_format=torch.channels_last)
    pool = effconv.functional.max_pool2d if provider.startswith("effconv") else F.max_pool2d
    train = mode == "fwd+bwd"
    x.requires_grad_(train)
    return step(lambda x: pool(x, *args), (x,), train)


@pytest.mark.parametrize("shape,mode", CASES, ids=[f"{s['name']}-{m}" for s, m in CASES])
def test_max_pool2d(benchmark, record, shape, mode):
    s = shape
    x = torch.empty(s["N"], s["C"], s["H"], s["W"], device="meta")
    y = F.max_pool2d(x, s["k"], s["stride"], s["padding"], 1, s["ceil_mode"])
    nbytes = 4 * (x.numel() + y.numel()) * (3 if mode == "fwd+bwd" else 1)
    runs = {p: runner(p, s, mode) for p in PROVIDERS}
    measure_and_record(benchmark, record, runs, DEVICE, "max_pool2d", s["name"], mode, 0.0, nbytes)
