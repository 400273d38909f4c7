"""The Triton depthwise kernels on CPU tensors under TRITON_INTERPRET=1,
against float64 PyTorch (forward and every gradient). No tl.dot here, so
bfloat16 runs under the interpreter too."""
from __future__ import annotations

import pytest
import torch

import effconv
from depthwise_cases import DW_BY_NAME
from test_conv2d import run_case

pytestmark = pytest.mark.triton

CASES = ["dw3x3", "dw3x3_s2", "dw3x3_d2_nobias", "dw3x3_odd_channels", "dw7x7_s2_d2", "dw3x5_rect", "dw7x1_rect",
         "dw3x3_mult2", "dw5x5_mult2_s2", "dw4x4_same_even", "dw3x3_batch0"]


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", [DW_BY_NAME[n].param() for n in CASES])
def test_triton_depthwise_fp32(case, layout, gen):
    run_case(case, torch.float32, layout, backend="triton", gen=gen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_triton_depthwise_dtypes(dtype, gen):
    run_case(DW_BY_NAME["dw3x3_s2"], dtype, "channels_last", backend="triton", gen=gen)


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu"])
def test_triton_depthwise_epilogue(activation, gen):
    run_case(DW_BY_NAME["dw3x3_odd_channels"], torch.float32, "channels_last", backend="triton", gen=gen,
             activation=activation, epilogue=True)


def test_triton_depthwise_runs_triton(gen):
    x = torch.randn(1, 8, 5, 5, generator=gen)
    w = torch.randn(8, 1, 3, 3, generator=gen)
    with effconv.use_backend("triton"):
        rows = effconv.explain(effconv.functional.depthwise_conv2d, x, w).rows
    assert [(r["op"], r["backend"]) for r in rows] == [("depthwise_conv2d", "triton")]


def test_triton_depthwise_gradcheck():
    x = torch.randn(1, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    with effconv.use_backend("triton"):
        assert torch.autograd.gradcheck(lambda x, w, b: effconv.functional.depthwise_conv2d(x, w, b, 2, 1),
                                        (x, w, b), fast_mode=True)
