"""GPU parity: the Triton conv2d kernels on CUDA tensors (TF32 off, so fp32
is judged at fp32 tolerances; TF32 judged separately). Runs whenever CUDA
is available."""
from __future__ import annotations

import os

import pytest
import torch

from conv2d_cases import BY_NAME, CASES

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)"),
    pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1" and torch.cuda.is_available(),
                       reason="needs compiled Triton kernels: run with TRITON_INTERPRET=0"),
]


@pytest.fixture
def no_tf32():
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_triton_conv2d_cuda(case, dtype, no_tf32):
    from test_conv2d import run_case

    run_case(case, dtype, "channels_last", backend="auto", device="cuda")


def test_tf32_relative_error_near_3e4():
    import effconv

    case = BY_NAME["wide_channels"]
    torch.backends.cudnn.allow_tf32 = True
    x = torch.randn(case.input_shape, device="cuda")
    w = torch.randn(case.weight_shape, device="cuda")
    y = effconv.functional.conv2d(x, w, None, case.stride, case.padding)
    ref = torch.nn.functional.conv2d(x.double(), w.double(), None, case.stride, case.padding)
    rel = ((y.double() - ref).norm() / ref.norm()).item()
    assert rel < 3e-3
