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


# --- max pooling (Triton on CUDA tensors) ------------------------------------

from test_max_pool2d import CASES as POOL_CASES  # noqa: E402
from test_max_pool2d import IDS as POOL_IDS  # noqa: E402
from test_max_pool2d import _run as run_max_pool2d  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", POOL_CASES, ids=POOL_IDS)
def test_max_pool2d_cuda(case, layout, dtype, gen):
    run_max_pool2d(case, dtype, layout, "auto", gen, device="cuda")


# --- fused Conv-BN-activation (batch statistics in the conv epilogue) --------

from test_conv_bn_act import CONV_IDS as CBA_IDS  # noqa: E402
from test_conv_bn_act import CONVS as CBA_CONVS  # noqa: E402
from test_conv_bn_act import randomize_bn, train_and_compare, unfused_copy  # noqa: E402

# The CUDA C++ backend is depthwise-only and has no fp64 (Triton is the GPU
# path of the other conv kinds): it is run where it has kernels.
CBA_RUNS = [(conv, cid, dtype, backend) for conv, cid in zip(CBA_CONVS, CBA_IDS)
            for dtype in (torch.float64, torch.float32) for backend in ("auto", "triton", "cuda")
            if backend != "cuda" or (cid == "depthwise_s2" and dtype == torch.float32)]


@pytest.mark.parametrize("activation", ["relu6", "silu"])
@pytest.mark.parametrize("conv,cid,dtype,backend", CBA_RUNS,
                         ids=[f"{cid}-{str(d)[6:]}-{b}" for _, cid, d, b in CBA_RUNS])
def test_conv_bn_act_cuda(conv, cid, dtype, backend, activation, no_tf32):
    import effconv

    cin, cout, k, s, g = conv
    m = effconv.ConvBNAct2d(cin, cout, k, s, groups=g, activation=activation).to(dtype)
    randomize_bn(m[1])
    ref = unfused_copy(m, torch.float64)
    m.cuda()
    with effconv.use_backend(backend):
        train_and_compare(m, ref, dtype, (4, cin, 11, 9), device="cuda")
        rec = effconv.explain(lambda: m.train()(torch.randn(2, cin, 6, 7, dtype=dtype, device="cuda")))
    assert not rec.fallbacks, str(rec)


# --- whole models --------------------------------------------------------------

@pytest.mark.parametrize("name", ["mobilenet_v2", "squeezenet1_1"])
def test_models_cuda_match_torchvision(name, no_tf32):
    """fp32 eval logits and a float64 training step against torchvision
    (test_models.check_against_torchvision, on CUDA tensors)."""
    from test_models import check_against_torchvision

    check_against_torchvision(name, "cuda")


def test_compile_fullgraph_cuda(no_tf32):
    """torch.compile over a model whose convolutions are Triton custom ops:
    no graph break, same logits as eager."""
    import effconv.models as em

    torch.manual_seed(0)
    m = em.squeezenet1_1(num_classes=10).cuda().eval()
    x = torch.randn(2, 3, 96, 96, device="cuda")
    with torch.no_grad():
        eager = m(x)
        compiled = torch.compile(m, fullgraph=True)(x)
    assert ((compiled - eager).norm() / eager.norm()).item() < 1e-5
