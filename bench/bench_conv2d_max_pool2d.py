"""effconv conv2d_max_pool2d (conv + ReLU + max pool in one kernel on the
CPU) vs PyTorch's conv, ReLU and max pool (NCHW and channels_last), and vs
effconv's own conv and pool run in turn. Inference only. GB/s counts one
read of the input and one write of the pooled output: the conv's output
never reaches memory in the fused kernel."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import effconv
from conftest import measure_and_record

SHAPES = json.loads((Path(__file__).parent / "shapes" / "conv2d_max_pool2d.json").read_text())["shapes"]
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PROVIDERS = ["torch", "torch_cl", "effconv", "effconv_two_ops"]


def runner(provider, s):
    """The timed step of one provider (inference mode)."""
    x = torch.randn(s["N"], s["C"], s["H"], s["W"], device=DEVICE)
    if provider != "torch":
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(s["K"], s["C"], s["k"], s["k"], device=DEVICE) / (s["C"] * s["k"] ** 2) ** 0.5
    b = torch.randn(s["K"], device=DEVICE)
    pool = (s["pool_k"], s["pool_stride"], s["pool_padding"], 1, s["ceil_mode"])
    ef = effconv.functional
    if provider.startswith("torch"):
        def fn():
            return F.max_pool2d(F.relu_(F.conv2d(x, w, b, s["stride"], s["padding"])), *pool)
    elif provider == "effconv":
        def fn():
            return ef.conv2d_max_pool2d(x, w, b, s["stride"], s["padding"], activation="relu",
                                        pool_kernel_size=pool[0], pool_stride=pool[1], pool_padding=pool[2],
                                        ceil_mode=pool[4])
    else:
        def fn():
            return ef.max_pool2d(ef.conv2d(x, w, b, s["stride"], s["padding"], activation="relu"), *pool)

    def run():
        with torch.inference_mode():
            fn()

    return run


@pytest.mark.parametrize("shape", SHAPES, ids=[s["name"] for s in SHAPES])
def test_conv2d_max_pool2d(benchmark, record, shape):
    s = shape
    conv_out = (s["H"] + 2 * s["padding"] - s["k"]) // s["stride"] + 1
    flop = 2 * s["N"] * s["K"] * conv_out ** 2 * s["C"] * s["k"] ** 2
    y = F.max_pool2d(torch.empty(s["N"], s["K"], conv_out, conv_out, device="meta"), s["pool_k"], s["pool_stride"],
                     s["pool_padding"], 1, s["ceil_mode"])
    nbytes = 4 * (s["N"] * s["C"] * s["H"] * s["W"] + y.numel())
    runs = {p: runner(p, s) for p in PROVIDERS}
    measure_and_record(benchmark, record, runs, DEVICE, "conv2d_max_pool2d", s["name"], "fwd", flop, nbytes)
