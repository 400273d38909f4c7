"""effconv::deform_conv2d against torchvision.ops.deform_conv2d and our own
float64 reference: forward and every gradient, on the C++ CPU kernels (the
Triton kernels under the interpreter: marked `triton`; CUDA when present)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
import torchvision.ops as tvo

import effconv
from effconv.ops.deform_conv2d import reference
from helpers import RTOL, assert_close, make_input, same_layout

INTERPRETING = __import__("os").environ.get("TRITON_INTERPRET") == "1"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    n: int
    c: int
    k: int
    h: int
    w: int
    kernel: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1
    offset_groups: int = 1

    def out_size(self):
        p = (self.h + 2 * self.padding[0] - self.dilation[0] * (self.kernel[0] - 1) - 1) // self.stride[0] + 1
        q = (self.w + 2 * self.padding[1] - self.dilation[1] * (self.kernel[1] - 1) - 1) // self.stride[1] + 1
        return p, q

    def param(self):
        return pytest.param(self, id=self.name)


# torchvision's own test configuration first.
CASES = [
    Case("torchvision", 2, 6, 2, 5, 4, (3, 2), (2, 1), (1, 0), (2, 1), groups=2, offset_groups=3),
    Case("3x3_pad1", 2, 8, 4, 7, 9, (3, 3), padding=(1, 1)),
    Case("3x3_s2_og2_g2", 1, 16, 8, 9, 9, (3, 3), (2, 2), (1, 1), groups=2, offset_groups=4),
    Case("1x1", 2, 5, 3, 4, 6, (1, 1)),
    Case("5x5_d2", 1, 4, 4, 11, 10, (5, 5), padding=(4, 4), dilation=(2, 2)),
    Case("batch0", 0, 6, 4, 5, 5, (3, 3), padding=(1, 1)),
    Case("batch33", 33, 3, 2, 4, 3, (3, 3), padding=(1, 1)),
]
BY_NAME = {c.name: c for c in CASES}


def make_args(case: Case, dtype, layout="nchw", mask=True, bias=True, scale=2.0):
    p, q = case.out_size()
    taps = case.kernel[0] * case.kernel[1]
    x = make_input((case.n, case.c, case.h, case.w), dtype, layout)
    off = (torch.randn(case.n, 2 * case.offset_groups * taps, p, q, dtype=torch.float64) * scale).to(dtype)
    w = (torch.randn(case.k, case.c // case.groups, *case.kernel, dtype=torch.float64) / taps ** 0.5).to(dtype)
    m = torch.rand(case.n, case.offset_groups * taps, p, q, dtype=torch.float64).to(dtype) if mask else None
    b = torch.randn(case.k, dtype=torch.float64).to(dtype) if bias else None
    return x, off, w, m, b


def run(case, args, backend="auto"):
    x, off, w, m, b = [t.detach().clone().requires_grad_() if t is not None else None for t in args]
    with effconv.use_backend(backend):
        y = effconv.functional.deform_conv2d(x, off, w, b, case.stride, case.padding, case.dilation, m)
        gy = torch.randn(y.shape, dtype=torch.float64).to(y.dtype).to(y.device)
        y.backward(gy)
    return y, gy, [t.grad if t is not None else None for t in (x, off, w, m, b)]


def reference_grads(case, args, gy, fn=reference):
    x, off, w, m, b = [t.detach().double().requires_grad_() if t is not None else None for t in args]
    if fn is reference:
        y = reference(x, off, w, m, b, case.stride, case.padding, case.dilation)
    else:
        y = tvo.deform_conv2d(x, off, w, b, case.stride, case.padding, case.dilation, m)
    y.backward(gy.double())
    return y, [t.grad if t is not None else None for t in (x, off, w, m, b)]


def check_against(case, args, y, gy, grads, fn=reference, dtype=None):
    dtype = dtype or y.dtype
    ref_y, ref_g = reference_grads(case, args, gy, fn)
    taps = case.kernel[0] * case.kernel[1]
    red_out = case.c // case.groups * taps
    p, q = case.out_size()
    red_w = case.n * p * q
    assert_close(y, ref_y, red_out, "output")
    for name, g, r, red in zip(("input", "offset", "weight", "mask", "bias"), grads, ref_g,
                               (case.k * taps, case.k * case.c, red_w, case.k * case.c, red_w)):
        if r is None:
            assert g is None, name
            continue
        # Offsets' gradients multiply the values by the sample's slope: allow the input scale.
        assert_close(g, r, red, f"grad {name}")


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_cpu_fp64_matches_torchvision_and_reference(case, layout):
    args = make_args(case, torch.float64, layout)
    y, gy, grads = run(case, args)
    check_against(case, args, y, gy, grads, fn=tvo.deform_conv2d)
    check_against(case, args, y, gy, grads, fn=reference)
    assert same_layout(y, args[0]) or case.n == 0 or layout == "noncontig"


@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in ("torchvision", "3x3_pad1", "3x3_s2_og2_g2")])
@pytest.mark.parametrize("mask,bias", [(False, True), (True, False)])
def test_cpu_fp32_without_mask_or_bias(case, mask, bias):
    args = make_args(case, torch.float32, "channels_last", mask=mask, bias=bias)
    y, gy, grads = run(case, args)
    check_against(case, args, y, gy, grads)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cpu_low_precision_forward_and_backward(dtype):
    case = BY_NAME["3x3_pad1"]
    args = make_args(case, dtype, "channels_last")
    y, gy, grads = run(case, args)
    assert y.dtype == dtype and all(g.dtype == dtype for g in grads)
    check_against(case, args, y, gy, grads)


def test_channels_last_in_channels_last_out():
    case = BY_NAME["3x3_pad1"]
    args = make_args(case, torch.float32, "channels_last")
    y, _, grads = run(case, args)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_zero_offsets_and_unit_mask_equal_conv2d():
    x = torch.randn(2, 8, 9, 9)
    conv = effconv.Conv2d(8, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    off = torch.zeros(2, 18, 5, 5)
    m = torch.ones(2, 9, 5, 5)
    y = effconv.functional.deform_conv2d(x, off, conv.weight, conv.bias, 2, 1, 1, m)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


def test_offsets_far_outside_read_zero():
    case = BY_NAME["3x3_pad1"]
    x, off, w, m, b = make_args(case, torch.float64, bias=False)
    off = off.clone()
    off[:, 0::4] = 1e30
    off[:, 1::4] = -1e12
    off[:, 2::4] = float("nan")
    y, gy, grads = run(case, (x, off, w, m, b))
    assert torch.isfinite(y).all() and all(torch.isfinite(g).all() for g in grads if g is not None)
    check_against(case, (x, off, w, m, b), y, gy, grads, fn=reference)


def test_gradcheck_fp64():
    case = BY_NAME["torchvision"]
    args = [t.requires_grad_() for t in make_args(case, torch.float64, scale=0.7)]
    x, off, w, m, b = args
    fn = lambda x, off, w, m, b: effconv.functional.deform_conv2d(x, off, w, b, case.stride, case.padding,  # noqa: E731
                                                                  case.dilation, m)
    assert torch.autograd.gradcheck(fn, (x, off, w, m, b))


def test_opcheck():
    case = BY_NAME["torchvision"]
    x, off, w, m, b = make_args(case, torch.float64)
    conf = (list(case.stride), list(case.padding), list(case.dilation))
    torch.library.opcheck(torch.ops.effconv.deform_conv2d.default,
                          (x.requires_grad_(), off.requires_grad_(), w.requires_grad_(), m, b, *conf))
    torch.library.opcheck(torch.ops.effconv.deform_conv2d.default, (x.detach(), off.detach(), w.detach(), None, None,
                                                                    *conf))
    dy = torch.randn(2, 2, *case.out_size(), dtype=torch.float64)
    torch.library.opcheck(torch.ops.effconv.deform_conv2d_backward.default,
                          (dy, x.detach(), off.detach(), w.detach(), m, *conf, [True, True, True, True, True]))
    torch.library.opcheck(torch.ops.effconv.deform_conv2d_backward.default,
                          (dy, x.detach(), off.detach(), w.detach(), None, *conf, [False, True, False, True, True]))


def test_torch_compile_fullgraph():
    mod = effconv.ModulatedDeformConv2dPack(4, 4, 3, padding=1)
    x = torch.randn(1, 4, 6, 6)
    compiled = torch.compile(mod, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), mod(x))


def backward_twice_deterministic(case, args):
    """The gradients of two identical backward passes under
    torch.use_deterministic_algorithms(True)."""
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(5)
        _, _, g1 = run(case, args)
        torch.manual_seed(5)
        _, _, g2 = run(case, args)
    finally:
        torch.use_deterministic_algorithms(False)
    return g1, g2


def test_cpu_backward_is_deterministic():
    case = BY_NAME["3x3_s2_og2_g2"]
    g1, g2 = backward_twice_deterministic(case, make_args(case, torch.float32, "channels_last"))
    for a, b in zip(g1, g2):
        assert a is None or torch.equal(a, b)


def test_autocast_cpu_bf16_runs_in_bf16():
    case = BY_NAME["3x3_pad1"]
    x, off, w, m, b = make_args(case, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = effconv.functional.deform_conv2d(x, off, w, b, case.stride, case.padding, case.dilation, m)
    assert y.dtype == torch.bfloat16
    ref = reference(*(t.to(torch.bfloat16).double() for t in (x, off, w, m, b)), case.stride, case.padding,
                    case.dilation)
    assert_close(y, ref, case.c * 9)


def test_errors_name_expected_and_actual():
    case = BY_NAME["3x3_pad1"]
    x, off, w, m, b = make_args(case, torch.float32)
    with pytest.raises(RuntimeError, match="expected offset of size"):
        effconv.functional.deform_conv2d(x, off[:, :, :-1], w, b, 1, 1, 1, m)
    with pytest.raises(RuntimeError, match="expected mask of size"):
        effconv.functional.deform_conv2d(x, off, w, b, 1, 1, 1, m[:, :3])
    with pytest.raises(RuntimeError, match="positive multiple of 2"):
        effconv.functional.deform_conv2d(x, off[:, :5], w, b, 1, 1, 1)
    with pytest.raises(RuntimeError, match="dtype"):
        effconv.functional.deform_conv2d(x, off.double(), w, b, 1, 1, 1, m)
    with pytest.raises(RuntimeError, match="expected input channels"):
        effconv.functional.deform_conv2d(x[:, :7], off, w, b, 1, 1, 1, m)
    with pytest.raises(ValueError):
        effconv.DeformConv2d(8, 4, 3, groups=3)
    with pytest.raises(ValueError):
        effconv.ModulatedDeformConv2dPack(8, 4, 3, deform_groups=3)


def test_deform_conv2d_module_matches_torchvision_module():
    tv = tvo.DeformConv2d(6, 4, 3, padding=1, groups=2)
    ours = effconv.DeformConv2d(6, 4, 3, padding=1, groups=2)
    ours.load_state_dict(tv.state_dict())
    x = torch.randn(2, 6, 7, 7)
    off = torch.randn(2, 18, 7, 7)
    m = torch.rand(2, 9, 7, 7)
    torch.testing.assert_close(ours(x, off, m), tv(x, off, m), rtol=1e-5, atol=1e-5)


def test_modulated_pack_starts_as_plain_conv_and_learns():
    mod = effconv.ModulatedDeformConv2dPack(4, 6, 3, padding=1, deform_groups=2)
    assert set(mod.state_dict()) == {"weight", "bias", "conv_offset.weight", "conv_offset.bias"}
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(mod(x), F.conv2d(x, mod.weight, mod.bias, padding=1), rtol=1e-5, atol=1e-5)
    mod(x).square().mean().backward()
    assert mod.conv_offset.weight.grad.abs().sum() > 0 and mod.weight.grad is not None


def test_explain_names_the_deform_op():
    case = BY_NAME["3x3_pad1"]
    x, off, w, m, b = make_args(case, torch.float32)
    rows = effconv.explain(effconv.functional.deform_conv2d, x, off, w, b, 1, 1, 1, m).rows
    assert [(r["op"], r["backend"]) for r in rows] == [("deform_conv2d", "cpu")]


# ----------------------------------------------------------------- Triton
@pytest.mark.triton
@pytest.mark.skipif(not INTERPRETING and not torch.cuda.is_available(), reason="needs TRITON_INTERPRET=1 or a GPU")
@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in ("torchvision", "3x3_pad1", "3x3_s2_og2_g2", "batch0")])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_matches_reference(case, dtype):
    dev = "cpu" if INTERPRETING else "cuda"
    args = [t.to(dev) if t is not None else None for t in make_args(case, dtype, "channels_last")]
    y, gy, grads = run(case, args, backend="triton")
    check_against(case, [t.cpu() if t is not None else None for t in args], y.cpu(), gy.cpu(),
                  [g.cpu() if g is not None else None for g in grads])


@pytest.mark.triton
@pytest.mark.skipif(not INTERPRETING, reason="interpreter test")
def test_triton_fp16_and_no_mask():
    case = BY_NAME["3x3_pad1"]
    args = make_args(case, torch.float16, "nchw", mask=False)
    y, gy, grads = run(case, args, backend="triton")
    check_against(case, args, y, gy, grads)


@pytest.mark.triton
@pytest.mark.skipif(not INTERPRETING, reason="interpreter test")
def test_triton_backward_refuses_deterministic_mode():
    case = BY_NAME["3x3_pad1"]
    args = make_args(case, torch.float32)
    torch.use_deterministic_algorithms(True)
    try:
        with pytest.raises(RuntimeError, match="deterministic"):
            run(case, args, backend="triton")
    finally:
        torch.use_deterministic_algorithms(False)


# ------------------------------------------------------------------- CUDA
cuda = pytest.mark.skipif(not torch.cuda.is_available() or not effconv._ext.with_cuda(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("case", [c.param() for c in CASES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_cuda_matches_reference(case, dtype):
    args = [t.cuda() if t is not None else None for t in make_args(case, dtype, "channels_last")]
    y, gy, grads = run(case, args, backend="cuda")
    cpu = lambda t: t.cpu() if t is not None else None  # noqa: E731
    check_against(case, [cpu(t) for t in args], cpu(y), cpu(gy), [cpu(g) for g in grads])


@cuda
def test_cuda_deterministic_backward_is_bitwise_reproducible():
    case = BY_NAME["3x3_s2_og2_g2"]
    g1, g2 = backward_twice_deterministic(case, [t.cuda() for t in make_args(case, torch.float32, "channels_last")])
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


@pytest.mark.parametrize("isa", ["avx2", "baseline"])
@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in ("torchvision", "3x3_s2_og2_g2")])
def test_other_isa_builds(isa, case):
    C = effconv._ext.C()
    before = C.cpu_isa()
    if not C.set_cpu_isa(isa):
        pytest.skip(f"this CPU cannot run the {isa} build")
    try:
        for dtype in (torch.float32, torch.float64):
            args = make_args(case, dtype, "channels_last")
            y, gy, grads = run(case, args)
            check_against(case, args, y, gy, grads)
    finally:
        C.set_cpu_isa(before)


def test_convert_swaps_torchvision_deform_conv():
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.offset = torch.nn.Conv2d(8, 18, 3, padding=1)
            self.dcn = tvo.DeformConv2d(8, 4, 3, padding=1)

        def forward(self, x):
            return self.dcn(x, self.offset(x))

    model = Head()
    converted = effconv.convert(model)
    assert type(converted.dcn) is effconv.DeformConv2d and type(converted.offset) is effconv.Conv2d
    assert set(converted.state_dict()) == set(model.state_dict())
    assert any("DeformConv2d" in what for _, what in effconv.conversion_report(converted).converted)
    x = torch.randn(2, 8, 7, 7)
    torch.testing.assert_close(converted(x), model(x), rtol=1e-4, atol=1e-4)
