"""The Triton kernels of effconv::conv2d, run on CPU tensors under
TRITON_INTERPRET=1 (set by conftest.py): forward and every gradient against
float64 PyTorch. The interpreter computes tl.dot in full fp32 (no TF32) and
has no bfloat16 tl.dot, so tolerances are the fp32/fp16/fp64 rows."""
from __future__ import annotations

import pytest
import torch

import effconv
from conv2d_cases import BY_NAME
from test_conv2d import run_case

pytestmark = pytest.mark.triton

CASES = ["pw1x1", "pw1x1_g4", "3x3", "3x3_s21", "3x3_d2", "5x5_s2_d2", "7x1", "1x7_g2_nobias", "g32_resnext_s2",
         "same_even_4x4", "batch0", "kernel_eq_input", "stride_gt_kernel", "batch1_rgb_stem"]


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in CASES])
def test_triton_conv2d_fp32(case, layout, gen):
    run_case(case, torch.float32, layout, backend="triton", gen=gen)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in ("pw1x1", "3x3_s2", "g32_resnext_s2")])
def test_triton_conv2d_other_dtypes(case, dtype, gen):
    run_case(case, dtype, "channels_last", backend="triton", gen=gen)


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu"])
def test_triton_conv2d_epilogue(activation, gen):
    run_case(BY_NAME["3x3_s2"], torch.float32, "channels_last", backend="triton", gen=gen,
             activation=activation, epilogue=True)


def test_triton_runs_the_triton_kernels(gen):
    x = torch.randn(1, 4, 5, 5, generator=gen)
    w = torch.randn(4, 4, 3, 3, generator=gen)
    with effconv.use_backend("triton"):
        report = effconv.explain(effconv.functional.conv2d, x, w)
    assert [r["backend"] for r in report] == ["triton"]


def test_triton_bfloat16_falls_back_visibly(gen, caplog):
    x = torch.randn(1, 4, 5, 5, generator=gen).bfloat16()
    w = torch.randn(4, 4, 3, 3, generator=gen).bfloat16()
    with effconv.use_backend("triton"):
        report = effconv.explain(effconv.functional.conv2d, x, w)
    (row,) = report.rows
    assert row["backend"] == "cpu" and row["fallback"] == "yes"
    assert "no bfloat16 tl.dot" in row["reason"]


def test_triton_gradcheck_fp64():
    x = torch.randn(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    with effconv.use_backend("triton"):
        assert torch.autograd.gradcheck(
            lambda x, w, b: effconv.functional.conv2d(x, w, b, 2, 1, 1, 2, activation="silu"), (x, w, b),
            fast_mode=True)
