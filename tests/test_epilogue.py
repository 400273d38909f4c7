"""effconv::epilogue (the conv epilogue as its own pass) on every backend
available here, against float64 PyTorch; the CPU kernel's tail lanes use
the __host__ __device__ activation shared with the CUDA kernel."""
from __future__ import annotations

import pytest
import torch

import effconv
from helpers import assert_close, reference_epilogue

SHAPES = [(2, 19, 5, 7), (3, 33), (1, 16, 4, 4, 3)]


def run(backend, shape, layout, activation, dtype=torch.float32, device="cpu"):
    x = torch.randn(shape, dtype=torch.float64).to(dtype=dtype, device=device)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    c = shape[1]
    vs = [torch.randn(c, dtype=torch.float64).to(dtype=dtype, device=device).requires_grad_() for _ in range(3)]
    with effconv.use_backend(backend):
        y = effconv.functional.epilogue(x, vs[0], vs[1], vs[2], activation)
    leaves = [x] + vs
    refs = [t.detach().double().cpu().requires_grad_() for t in leaves]
    y_ref = reference_epilogue(refs[0], refs[1], refs[2], refs[3], activation)
    assert_close(y.detach().cpu(), y_ref, 1)
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)
    dy = torch.randn(y.shape, dtype=torch.float64)
    grads = torch.autograd.grad(y, leaves, dy.to(dtype=dtype, device=device))
    ref_grads = torch.autograd.grad(y_ref, refs, dy)
    per_channel = y.numel() // c
    for g, rg, red in zip(grads, ref_grads, [1, per_channel, per_channel, per_channel]):
        assert_close(g.cpu(), rg, red)


LAYOUTS = [(shape, layout) for shape in SHAPES for layout in ("nchw", "channels_last")
           if layout == "nchw" or len(shape) == 4]


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "silu"])
@pytest.mark.parametrize("shape,layout", LAYOUTS, ids=str)
def test_epilogue_cpu(shape, layout, activation):
    run("cpu", shape, layout, activation)
    run("cpu", shape, layout, activation, torch.float64)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_epilogue_cpu_streamed(layout):
    """Input and output past 16 MiB: the CPU kernel stores non-temporally."""
    run("cpu", (2, 48, 160, 160), layout, "relu6")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_epilogue_cpu_low_precision(dtype):
    run("cpu", (2, 19, 5, 7), "channels_last", "silu", dtype)


def test_epilogue_nan_propagates():
    x = torch.tensor([float("nan"), -1.0, 7.0]).view(1, 3)
    for act in ("relu", "relu6", "silu"):
        y = effconv.functional.epilogue(x, activation=act)
        assert torch.isnan(y[0, 0])


@pytest.mark.triton
@pytest.mark.parametrize("activation", [None, "relu6", "silu"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_epilogue_triton(layout, activation):
    run("triton", (2, 19, 5, 7), layout, activation)
    run("triton", (2, 19, 5, 7), layout, activation, torch.float64)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_epilogue_on_gpu(backend, dtype):
    run(backend, (2, 19, 5, 7), "channels_last", "silu", dtype, device="cuda")
    run(backend, (2, 19, 5, 7), "nchw", "relu6", dtype, device="cuda")
