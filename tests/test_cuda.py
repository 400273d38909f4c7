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


from depthwise_cases import DW_CASES  # noqa: E402


@pytest.mark.parametrize("backend", ["cuda", "triton", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("case", [c.param() for c in DW_CASES])
def test_depthwise_cuda(case, layout, dtype, backend, no_tf32):
    from test_conv2d import run_case

    run_case(case, dtype, layout, backend=backend, device="cuda", epilogue=True, activation="relu6")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_depthwise_cuda_backward_deterministic(backend):
    import effconv

    x = torch.randn(8, 64, 28, 28, device="cuda").contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(64, 1, 3, 3, device="cuda", requires_grad=True)
    dy = torch.randn(8, 64, 28, 28, device="cuda").contiguous(memory_format=torch.channels_last)
    grads = []
    with effconv.use_backend(backend):
        for _ in range(2):
            y = effconv.functional.depthwise_conv2d(x, w, None, 1, 1)
            grads.append(torch.autograd.grad(y, (x, w), dy))
    assert all(torch.equal(a, b) for a, b in zip(*grads))
