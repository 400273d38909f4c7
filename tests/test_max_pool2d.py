"""effconv.functional.max_pool2d / effconv.MaxPool2d against PyTorch:
forward bit for bit (a max is exact in every dtype), the gradient against
float64 with the tolerance table, both backends (C++ here, Triton under the
interpreter), layouts, NaN/-inf windows, errors, opcheck and gradcheck."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

import effconv
from helpers import assert_close, make_input, same_layout

# (name, input size, kernel, stride, padding, dilation, ceil_mode)
CASES = [
    ("squeezenet_3x3_s2_ceil", (2, 16, 13, 13), 3, 2, 0, 1, True),
    ("resnet_3x3_s2_p1", (1, 20, 12, 11), 3, 2, 1, 1, False),
    ("2x2_s2_odd", (2, 5, 9, 7), 2, None, 0, 1, False),
    ("3x3_s1_p1_d2_ceil", (1, 33, 15, 17), 3, 1, 1, 2, True),
    ("5x3_s3_p21_ceil", (1, 7, 16, 20), (5, 3), (3, 2), (2, 1), 1, True),
    ("1x1_s2", (2, 3, 7, 8), 1, 2, 0, 1, False),
    ("7x7_window_equals_input", (1, 70, 7, 7), 7, 1, 0, 1, False),
    ("batch1_one_channel", (1, 1, 9, 9), 3, 2, 1, 1, True),
    # Dilated taps further apart than the stride: input row 7 is under output
    # row 1 after row 6 was under row 2 only (the backward's argmax ring).
    ("3x3_s3_d2", (1, 18, 14, 13), 3, 3, 1, 2, False),
    # More covering output rows per input row (11) than the backward gathers at once (8).
    ("11x11_s1_p5", (1, 18, 20, 21), 11, 1, 5, 1, False),
    ("batch0", (0, 8, 9, 9), 3, 2, 0, 1, False),
]
IDS = [c[0] for c in CASES]


def _with_specials(x: torch.Tensor) -> torch.Tensor:
    """NaNs, an all -inf block and ties: the cases where the argmax rule shows."""
    x = x.clone()
    if x.numel():
        flat = x[0]
        flat[0, 1, 1] = float("nan")
        flat[-1, :3, :3] = float("-inf")
        flat[min(1, flat.shape[0] - 1), 2:5, 2:5] = 0.5
    return x


def _run(case, dtype, layout, backend, gen, device="cpu"):
    _, shape, k, s, p, d, ceil = case
    x = _with_specials(make_input(shape, torch.float64, layout, gen)).to(dtype)
    xr = x.to(device).detach().requires_grad_()
    with effconv.use_backend(backend):
        y = effconv.functional.max_pool2d(xr, k, s, p, d, ceil)
    x64 = x.detach().double().requires_grad_()
    ref = F.max_pool2d(x64, k, s, p, d, ceil)
    expected = F.max_pool2d(x.detach(), k, s, p, d, ceil)
    assert same_layout(y, expected), f"output strides {y.stride()}, PyTorch's {expected.stride()}"
    torch.testing.assert_close(y.cpu(), expected, rtol=0, atol=0, equal_nan=True)
    g = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    with effconv.use_backend(backend):
        y.backward(g.to(dtype).to(device))
    ref.backward(g)
    k2 = (k, k) if isinstance(k, int) else k
    s2 = k2 if s is None else ((s, s) if isinstance(s, int) else s)
    overlap = -(-k2[0] // s2[0]) * -(-k2[1] // s2[1])  # windows that can credit one input element
    assert_close(xr.grad.cpu(), x64.grad, overlap, "grad_input")
    assert same_layout(xr.grad, x), "grad_input keeps the input's layout"


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_max_pool2d_cpu(case, layout, gen):
    _run(case, torch.float32, layout, "cpu", gen)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_max_pool2d_cpu_dtypes(dtype, layout, gen):
    for name in ("squeezenet_3x3_s2_ceil", "5x3_s3_p21_ceil"):
        _run(CASES[IDS.index(name)], dtype, layout, "cpu", gen)


def test_max_pool2d_other_isa(other_isa, gen):
    for layout in ("nchw", "channels_last"):
        for case in CASES[:5]:
            _run(case, torch.float32, layout, "cpu", gen)
        _run(CASES[0], torch.float64, layout, "cpu", gen)


def _narrow(case, channels=6):
    """The case with at most `channels` channels (the interpreter runs the
    backward's window scan per element: keep it small)."""
    name, (n, c, h, w), *rest = case
    return (name, (n, min(c, channels), h, w), *rest)


# The interpreter runs the backward's window scan (taps^2 per element):
# every layout for the small windows, channels_last for the larger ones,
# and no 7x7 or 11x11 (49 x 49 and 121 x 121 taps).
_TOO_SLOW = ("7x7_window_equals_input", "11x11_s1_p5")
TRITON_RUNS = [(c, layout) for c in CASES for layout in ("nchw", "channels_last", "noncontig")
               if c[0] not in _TOO_SLOW + ("5x3_s3_p21_ceil", "3x3_s1_p1_d2_ceil")
               or layout == "channels_last" and c[0] not in _TOO_SLOW]


@pytest.mark.triton
@pytest.mark.parametrize("case,layout", TRITON_RUNS, ids=[f"{c[0]}-{layout}" for c, layout in TRITON_RUNS])
def test_max_pool2d_triton(case, layout, gen):
    _run(_narrow(case), torch.float32, layout, "triton", gen)


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_max_pool2d_triton_dtypes(dtype, gen):
    _run(_narrow(CASES[0]), dtype, "channels_last", "triton", gen)


@pytest.mark.triton
def test_max_pool2d_triton_runs_triton(gen):
    x = torch.randn(1, 4, 7, 7, generator=gen, requires_grad=True)
    with effconv.use_backend("triton"):
        rows = effconv.explain(lambda: effconv.functional.max_pool2d(x, 3, 2)).rows
        assert torch.autograd.gradcheck(lambda t: effconv.functional.max_pool2d(t, 3, 2, 1),
                                        (torch.randn(1, 3, 6, 7, dtype=torch.float64, requires_grad=True),),
                                        fast_mode=True)
    assert [(r["op"], r["backend"]) for r in rows] == [("max_pool2d", "triton")]


def test_max_pool2d_gradcheck():
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    fn = lambda t: effconv.functional.max_pool2d(t, (3, 2), (2, 1), (1, 1), (1, 2), True)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_max_pool2d_backward_deterministic(gen):
    x = make_input((2, 24, 17, 17), torch.float32, "channels_last", gen).requires_grad_()
    y = effconv.functional.max_pool2d(x, 3, 1, 1)
    g = torch.randn(y.shape, generator=gen)
    first, = torch.autograd.grad(y, x, g, retain_graph=True)
    second, = torch.autograd.grad(y, x, g)
    assert torch.equal(first, second)


@pytest.mark.parametrize("k,s,p,d,ceil", [(3, 2, 0, 1, True), (3, 1, 1, 2, False), ((2, 3), (3, 2), (1, 0), 1, True)])
def test_max_pool2d_large_input(k, s, p, d, ceil, gen):
    """Inputs beyond 16 MB: the channels_last kernel requests the next output
    row's input rows ahead; results stay bit-identical to PyTorch's."""
    x = make_input((2, 64, 190, 180), torch.float32, "channels_last", gen)
    with torch.no_grad():
        y = effconv.functional.max_pool2d(x, k, s, p, d, ceil)
    torch.testing.assert_close(y, F.max_pool2d(x, k, s, p, d, ceil), rtol=0, atol=0)


def test_max_pool2d_unbatched_and_module(gen):
    x = torch.randn(4, 11, 10, generator=gen)
    torch.testing.assert_close(effconv.functional.max_pool2d(x, 3, 2, ceil_mode=True),
                               F.max_pool2d(x, 3, 2, ceil_mode=True), rtol=0, atol=0)
    m, ref = effconv.MaxPool2d(3, 2, ceil_mode=True), torch.nn.MaxPool2d(3, 2, ceil_mode=True)
    xb = x.unsqueeze(0).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(m(xb), ref(xb), rtol=0, atol=0)
    assert repr(m).endswith(repr(ref)) and isinstance(m, torch.nn.MaxPool2d)
    rows = effconv.explain(torch.nn.Sequential(m)).rows
    assert [(r["op"], r["backend"]) for r in rows] == [("max_pool2d", "cpu")]


def test_max_pool2d_return_indices_falls_back_visibly(caplog):
    x = torch.randn(1, 3, 8, 8)
    with caplog.at_level(logging.WARNING, logger="effconv"):
        rows = effconv.explain(lambda: effconv.MaxPool2d(2, return_indices=True)(x)).rows
    assert rows[0]["backend"] == "torch" and rows[0]["fallback"] == "yes"
    y, idx = effconv.functional.max_pool2d(x, 2, return_indices=True)
    y_ref, idx_ref = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(y, y_ref) and torch.equal(idx, idx_ref)


@pytest.mark.parametrize("kwargs,match", [
    (dict(kernel_size=0), "kernel_size must be one or two positive"),
    (dict(kernel_size=3, stride=0), "stride must be one or two positive"),
    (dict(kernel_size=3, padding=2), "padding must be at most half"),
    (dict(kernel_size=3, dilation=(1, 0)), "dilation must be one or two positive"),
    (dict(kernel_size=(2, 2, 2)), "kernel_size must be one or two"),
])
def test_max_pool2d_module_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        effconv.MaxPool2d(**kwargs)


@pytest.mark.parametrize("call,match", [
    (lambda: effconv.functional.max_pool2d(torch.randn(1, 2, 3, 4, 5), 2), r"expected 4-D input"),
    (lambda: effconv.functional.max_pool2d(torch.ones(1, 2, 4, 4, dtype=torch.int32), 2), "floating dtype"),
    (lambda: effconv.functional.max_pool2d(torch.randn(1, 2, 4, 4), 3, padding=2), "at most half the kernel"),
    (lambda: effconv.functional.max_pool2d(torch.randn(1, 2, 2, 2), 3), r"output size \[2, 0, 0\]"),
    (lambda: effconv.functional.max_pool2d(torch.randn(1, 0, 4, 4), 2), "non-zero channels"),
    (lambda: effconv.functional.max_pool2d(torch.randn(1, 2, 4, 4), 2, stride=0), "expected positive stride"),
    (lambda: effconv.functional.max_pool2d(torch.randn(1, 2, 4, 4), (2, 2, 2)), "match the pooling dimensions"),
    (lambda: torch.ops.effconv.max_pool2d_backward(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 4, 4), [2, 2],
                                                   [2, 2], [0, 0], [1, 1]), r"expected grad_output of size"),
])
def test_max_pool2d_runtime_errors(call, match):
    with pytest.raises(RuntimeError, match=match):
        call()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_opcheck_max_pool2d(layout):
    x = make_input((2, 5, 9, 8), torch.float32, layout).requires_grad_()
    torch.library.opcheck(torch.ops.effconv.max_pool2d.default, (x, [3, 3], [2, 2], [1, 1], [1, 1], True))
    torch.library.opcheck(torch.ops.effconv.max_pool2d.default, (x, [2, 3], [1, 2], [0, 1], [2, 1], False))
    g = torch.randn(2, 5, 5, 5, requires_grad=True)
    torch.library.opcheck(torch.ops.effconv.max_pool2d_backward.default,
                          (g, x.detach(), [3, 3], [2, 2], [1, 1], [1, 1], True))
