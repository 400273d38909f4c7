"""effconv.functional.conv2d_max_pool2d: a conv with its epilogue and the
max pool after it. In CPU inference one kernel pools bands of conv rows from
a per-thread buffer (the conv's output is never written); elsewhere the two
ops run in turn. Both against float64 references, with the fused kernel's
band boundaries, carried rows, edge windows and its composed fallbacks
(Winograd, grouped-vector convs) exercised."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import effconv
from effconv import _ext
from helpers import assert_close, make_input, reference_epilogue

# (name, input size, weight size, conv stride, padding, dilation, groups,
#  pool kernel, stride, padding, dilation, ceil_mode)
CASES = [
    ("squeezenet_stem", (2, 3, 41, 39), (16, 3, 3, 3), 2, 0, 1, 1, 3, 2, 0, 1, True),
    ("resnet_stem", (1, 3, 45, 40), (8, 3, 7, 7), 2, 3, 1, 1, 3, 2, 1, 1, False),
    # A tall map: many bands per thread, each carrying two rows to the next.
    ("tall_overlapping_windows", (1, 4, 301, 9), (24, 4, 3, 3), 1, 1, 1, 1, 3, 1, 1, 1, False),
    ("rect_dilated_pool_ceil", (2, 5, 33, 29), (12, 5, 1, 3), (1, 2), (0, 1), 1, 1, (3, 2), (2, 3), (1, 1), (2, 1),
     True),
    ("pointwise_2x2", (2, 24, 16, 17), (40, 24, 1, 1), 1, 0, 1, 1, 2, 2, 0, 1, False),
    ("dilated_conv_s3_pool", (1, 6, 40, 23), (20, 6, 3, 3), 1, 2, 2, 1, 3, 3, 1, 1, True),
    # The C++ entry runs these convs' own kernels, then the pool.
    ("grouped_vector_conv", (1, 8, 21, 21), (16, 4, 3, 3), 2, 1, 1, 2, 3, 2, 1, 1, False),
    ("winograd_conv", (1, 16, 14, 15), (32, 16, 3, 3), 1, 1, 1, 1, 3, 2, 0, 1, True),
    ("batch0", (0, 3, 20, 20), (8, 3, 3, 3), 2, 0, 1, 1, 3, 2, 0, 1, True),
]
IDS = [c[0] for c in CASES]
EPILOGUES = {"bias_relu": (True, False, "relu"), "scale_shift_relu6": (False, True, "relu6"),
             "all_silu": (True, True, "silu"), "none": (False, False, None)}


def _setup(case, dtype, layout, gen, epilogue="bias_relu"):
    _, size, wsize, stride, padding, dilation, groups, *pool = case
    x = make_input(size, dtype, layout, gen)
    w = (torch.randn(wsize, dtype=torch.float64, generator=gen) / wsize[1] ** 0.5).to(dtype)
    has_bias, has_scale, act = EPILOGUES[epilogue]
    k = wsize[0]
    bias = torch.randn(k, dtype=torch.float64, generator=gen).to(dtype) if has_bias else None
    scale = (torch.rand(k, dtype=torch.float64, generator=gen) + 0.5).to(dtype) if has_scale else None
    shift = torch.randn(k, dtype=torch.float64, generator=gen).to(dtype) if has_scale else None
    conv = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    pool = dict(zip(("pool_kernel_size", "pool_stride", "pool_padding", "pool_dilation", "ceil_mode"), pool))
    return x, w, bias, scale, shift, act, conv, pool


def _reference(x, w, bias, scale, shift, act, conv, pool):
    d = lambda t: None if t is None else t.double()  # noqa: E731
    z = reference_epilogue(F.conv2d(d(x), d(w), None, **conv), d(bias), d(scale), d(shift), act)
    return F.max_pool2d(z, pool["pool_kernel_size"], pool["pool_stride"], pool["pool_padding"],
                        pool["pool_dilation"], pool["ceil_mode"])


def _call(x, w, bias, scale, shift, act, conv, pool):
    return effconv.functional.conv2d_max_pool2d(x, w, bias, **conv, scale=scale, shift=shift, activation=act,
                                                **pool)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts calls of the fused C++ entry point."""
    C = _ext.C()
    calls = []
    real = C.conv2d_max_pool2d_forward_cpu

    def spy(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(C, "conv2d_max_pool2d_forward_cpu", spy)
    return calls


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fused_inference_matches_reference(case, dtype, threads, gen, fused_calls):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        args = _setup(case, dtype, "channels_last", gen)
        with torch.inference_mode():
            y = _call(*args)
    finally:
        torch.set_num_threads(before)
    ref = _reference(*args)
    _, size, wsize, *_ = case
    assert y.shape == ref.shape
    if size[0]:  # (an empty batch's layout is ambiguous: PyTorch's rule, contiguous, takes the two ops)
        assert len(fused_calls) == 1 and y.is_contiguous(memory_format=torch.channels_last)
    assert_close(y, ref, wsize[1] * wsize[2] * wsize[3])


@pytest.mark.parametrize("epilogue", list(EPILOGUES))
def test_fused_epilogues(epilogue, gen, fused_calls):
    for name in ("squeezenet_stem", "tall_overlapping_windows"):
        args = _setup(CASES[IDS.index(name)], torch.float32, "channels_last", gen, epilogue)
        with torch.no_grad():
            y = _call(*args)
        assert_close(y, _reference(*args), 27)
    assert len(fused_calls) == 2


def test_fused_other_isa(other_isa, gen, fused_calls):
    for name in ("squeezenet_stem", "resnet_stem", "rect_dilated_pool_ceil"):
        case = CASES[IDS.index(name)]
        args = _setup(case, torch.float32, "channels_last", gen, "all_silu")
        with torch.inference_mode():
            y = _call(*args)
        assert_close(y, _reference(*args), case[2][1] * case[2][2] * case[2][3])
    assert len(fused_calls) == 3


@pytest.mark.parametrize("layout", ["nchw", "noncontig"])
def test_other_layouts_run_the_two_ops(layout, gen, fused_calls):
    """An NCHW result is the composition's (F.max_pool2d(F.conv2d(x)) keeps NCHW)."""
    args = _setup(CASES[0], torch.float32, layout, gen)
    with torch.inference_mode():
        y = _call(*args)
    assert not fused_calls
    assert y.is_contiguous()
    assert_close(y, _reference(*args), 27)


def test_low_precision_runs_the_two_ops(gen, fused_calls):
    args = _setup(CASES[0], torch.bfloat16, "channels_last", gen)
    with torch.inference_mode():
        y = _call(*args)
    assert not fused_calls
    x, w, bias, scale, shift, act, conv, pool = args
    expected = effconv.functional.max_pool2d(
        effconv.functional.conv2d(x, w, bias, **conv, activation=act), pool["pool_kernel_size"],
        pool["pool_stride"], pool["pool_padding"], pool["pool_dilation"], pool["ceil_mode"])
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("case", [CASES[0], CASES[3]], ids=[CASES[0][0], CASES[3][0]])
def test_autograd_through_the_two_ops(case, gen, fused_calls):
    x, w, bias, scale, shift, act, conv, pool = _setup(case, torch.float64, "channels_last", gen, "all_silu")
    leaves = [t.requires_grad_() for t in (x, w, bias, scale, shift)]
    y = _call(x, w, bias, scale, shift, act, conv, pool)
    assert not fused_calls
    dy = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    got = torch.autograd.grad(y, leaves, dy)
    twins = [t.detach().clone().requires_grad_() for t in leaves]
    ref = _reference(*twins, act, conv, pool)
    want = torch.autograd.grad(ref, twins, dy)
    assert_close(y.detach(), ref.detach(), 3 * 9)
    for name, g, r in zip(("input", "weight", "bias", "scale", "shift"), got, want):
        assert_close(g, r, 1000, name)


def test_gradcheck(gen):
    x, w, bias, _, _, act, conv, pool = _setup(CASES[0], torch.float64, "channels_last", gen)
    x = x[:1, :, :9, :11].detach().requires_grad_()
    w.requires_grad_()
    bias.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, c: _call(a, b, c, None, None, act, conv, pool), (x, w, bias))


def test_unbatched_input(gen):
    x, w, bias, scale, shift, act, conv, pool = _setup(CASES[0], torch.float32, "channels_last", gen)
    with torch.inference_mode():
        y = _call(x[0], w, bias, scale, shift, act, conv, pool)
        y4 = _call(x[:1], w, bias, scale, shift, act, conv, pool)
    assert y.shape == y4.shape[1:]
    torch.testing.assert_close(y, y4[0])


@pytest.mark.parametrize("grad", [False, True], ids=["fused", "two_ops"])
@pytest.mark.parametrize("change,match", [
    (dict(pool_padding=2), r"expected padding of at most half the kernel size \[3, 3\], got \[2, 2\]"),
    (dict(pool_kernel_size=40), r"calculated output size .*expected a window that fits the padded input"),
    (dict(pool_stride=(1, 2, 3)), r"expected stride to be a single integer value or a list of 2 values"),
])
def test_pool_errors(change, match, grad, gen):
    x, w, bias, scale, shift, act, conv, pool = _setup(CASES[0], torch.float32, "channels_last", gen)
    pool.update(change)
    ctx = torch.enable_grad() if grad else torch.inference_mode()
    with ctx, pytest.raises(RuntimeError, match=match):
        _call(x.requires_grad_(grad), w, bias, scale, shift, act, conv, pool)


def test_conv_errors(gen):
    x, w, bias, scale, shift, act, conv, pool = _setup(CASES[0], torch.float32, "channels_last", gen)
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"expected input \[2, 2, 41, 39\] to have 3 channels, but got 2"):
        _call(x[:, :2], w, bias, scale, shift, act, conv, pool)


def test_conv2d_module_with_max_pool(gen, fused_calls):
    """effconv.Conv2d(max_pool=...) is Sequential(conv, act, pool): fused in
    CPU inference, the two ops with autograd; nn.Conv2d's state_dict keys."""
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2), torch.nn.ReLU6(), torch.nn.MaxPool2d(3, 2, ceil_mode=True))
    conv = effconv.Conv2d.from_torch(ref[0], activation="relu6", max_pool=ref[2])
    assert isinstance(conv.max_pool, effconv.MaxPool2d) and list(conv.state_dict()) == ["weight", "bias"]
    x = make_input((2, 3, 41, 39), torch.float32, "channels_last", gen)
    with torch.inference_mode():
        y = conv(x)
        want = copy.deepcopy(ref).double()(x.double())
    assert len(fused_calls) == 1
    assert_close(y, want, 27)

    conv64, ref64 = copy.deepcopy(conv).double(), copy.deepcopy(ref).double()
    x64 = x.double().requires_grad_()
    y, want = conv64(x64), ref64(x64)
    assert len(fused_calls) == 1
    dy = torch.randn(y.shape, dtype=torch.float64, generator=gen)
    got = torch.autograd.grad(y, (x64, conv64.weight, conv64.bias), dy)
    expected = torch.autograd.grad(want, (x64, ref64[0].weight, ref64[0].bias), dy)
    for g, r in zip(got, expected):
        assert_close(g, r, 1000)
    with pytest.raises(ValueError, match="max_pool must be an nn.MaxPool2d without return_indices"):
        effconv.Conv2d(3, 4, 3, max_pool=torch.nn.MaxPool2d(2, return_indices=True))
    with pytest.raises(ValueError, match="max_pool must be an nn.MaxPool2d"):
        effconv.Conv2d(3, 4, 3, max_pool=torch.nn.AvgPool2d(2))


def test_explain_reports_the_fused_pool(gen):
    x, w, bias, scale, shift, act, conv, pool = _setup(CASES[0], torch.float32, "channels_last", gen)
    rows = effconv.explain(_call, x, w, bias, scale, shift, act, conv, pool).rows
    assert [r["op"] for r in rows] == ["conv2d", "max_pool2d"]
    assert "on the conv's output rows" in rows[1]["kernel"] and rows[1]["backend"] == "cpu"
