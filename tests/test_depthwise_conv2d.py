"""effconv depthwise convolution on the C++ CPU kernels: forward and every
gradient against float64 PyTorch (routed from effconv.functional.conv2d
with groups == in_channels, and through functional.depthwise_conv2d)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import effconv
from depthwise_cases import DW_BY_NAME, DW_CASES, dw
from helpers import assert_close
from test_conv2d import run_case


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", [c.param() for c in DW_CASES])
def test_depthwise_fp32(case, layout, gen):
    run_case(case, torch.float32, layout, gen=gen)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [c.param() for c in DW_CASES])
def test_depthwise_fp64(case, layout, gen):
    run_case(case, torch.float64, layout, gen=gen)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [c.param() for c in DW_CASES])
def test_depthwise_channels_last_grad_output(case, dtype, gen):
    """An output gradient in the output's layout (as a channels_last network
    passes it): the one-pass backward (effconv::depthwise_conv2d_backward)."""
    run_case(case, dtype, "channels_last", gen=gen, dy_like_output=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [DW_BY_NAME[n].param() for n in ("dw3x3", "dw3x3_s2", "dw7x7", "dw3x3_odd_channels")])
def test_depthwise_channels_last_grad_output_low_precision(case, dtype, gen):
    """The one-pass backward on fp16/bf16 operands (widened to fp32 once, results rounded once)."""
    run_case(case, dtype, "channels_last", gen=gen, dy_like_output=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", [DW_BY_NAME[n].param() for n in
                                  ("dw3x3", "dw3x3_s2", "dw7x7", "dw3x3_mult2", "dw3x3_big_plane",
                                   "dw3x3_plane_path")])
def test_depthwise_low_precision(case, layout, dtype, gen):
    run_case(case, dtype, layout, gen=gen)
    # With a scale the backward recomputes the pre-activation: at fp32, as the
    # forward had it, or relu6's mask flips against it at a few kinks.
    for activation in ("relu6", "silu"):
        run_case(case, dtype, layout, gen=gen, epilogue=True, activation=activation)


@pytest.mark.parametrize("activation", ["relu", "relu6", "silu"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_depthwise_epilogue(layout, activation, gen):
    for name in ("dw3x3_s2", "dw3x3_odd_channels", "dw3x3_big_plane", "dw3x3_plane_path"):
        run_case(DW_BY_NAME[name], torch.float32, layout, gen=gen, activation=activation, epilogue=True)


@pytest.mark.parametrize("size,stride", [(130, 1), (130, 2), (110, 1)])
def test_depthwise_streamed_outputs(size, stride, gen):
    """Results are stored non-temporally once the output and what the op reads
    pass 16 MiB: at 130² the forward's output at stride 1 and grad_input at
    both strides (stride 1 in the one-pass backward, stride 2 through the
    indirect kernel's pixel classes); at 110² only the backward's grad_input."""
    case = dw(f"dw3x3_streamed_{size}", 2, 64, size, size, 3, 3, stride=stride, padding=1)
    x, y, grads = run_case(case, torch.float32, "channels_last", gen=gen, dy_like_output=True)
    assert grads[0].numel() * grads[0].element_size() * 2 + y.numel() * y.element_size() > 16 << 20
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_routes_to_depthwise(gen):
    x = torch.randn(1, 8, 6, 6, generator=gen)
    m = effconv.Conv2d(8, 16, 3, padding=1, groups=8)
    assert m.effconv_op == "depthwise_conv2d"
    assert [r["op"] for r in effconv.explain(m, x)] == ["depthwise_conv2d"]
    assert "depthwise 3x3, multiplier 2" in str(effconv.explain(m))
    assert effconv.Conv2d(1, 4, 3, groups=1).effconv_op == "conv2d"


def test_functional_depthwise_matches_conv2d(gen):
    x = torch.randn(2, 12, 9, 7, generator=gen)
    w = torch.randn(24, 1, 3, 3, generator=gen)
    b = torch.randn(24, generator=gen)
    y = effconv.functional.depthwise_conv2d(x, w, b, 2, "valid", 1, activation="relu6")
    ref = F.relu6(F.conv2d(x.double(), w.double(), b.double(), 2, 0, 1, 12))
    assert_close(y, ref, 9)
    # unbatched input
    assert_close(effconv.functional.depthwise_conv2d(x[0], w, b, padding="same"),
                 F.conv2d(x[0:1].double(), w.double(), b.double(), 1, 1, 1, 12)[0], 9)


def test_depthwise_errors():
    x = torch.randn(1, 4, 5, 5)
    with pytest.raises(RuntimeError, match=r"expected weight of size \[4 \* multiplier, 1, kH, kW\]"):
        effconv.functional.depthwise_conv2d(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(RuntimeError, match=r"expected weight of size \[4 \* multiplier, 1, kH, kW\]"):
        effconv.functional.depthwise_conv2d(x, torch.randn(6, 1, 3, 3))
    with pytest.raises(RuntimeError, match="Expected a kernel no larger than the padded input"):
        effconv.functional.depthwise_conv2d(x, torch.randn(4, 1, 7, 7))


def test_depthwise_gradcheck():
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, dtype=torch.float64, requires_grad=True)
    w1 = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    b1 = torch.randn(4, dtype=torch.float64, requires_grad=True)
    for xin in (x, x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()):
        assert torch.autograd.gradcheck(lambda x, w, b: effconv.functional.depthwise_conv2d(x, w, b, 2, 1, 2),
                                        (xin, w, b))
        assert torch.autograd.gradcheck(
            lambda x, w, b: effconv.functional.depthwise_conv2d(x, w, b, 1, 1, activation="silu"), (xin, w1, b1))
        assert torch.autograd.gradgradcheck(lambda x, w, b: effconv.functional.depthwise_conv2d(x, w, b, 1, 1),
                                            (xin, w1, b1))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_depthwise_backward_is_deterministic(layout, gen):
    x = torch.randn(4, 32, 17, 15, generator=gen)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(32, 1, 3, 3, generator=gen, requires_grad=True)
    b = torch.randn(32, generator=gen, requires_grad=True)
    dy = None
    results = []
    for _ in range(2):
        y = effconv.functional.depthwise_conv2d(x, w, b, 1, 1)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(3)) if dy is None else dy
        results.append(torch.autograd.grad(y, (x, w, b), dy))
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


def test_opcheck_depthwise():
    x = torch.randn(2, 8, 7, 9, requires_grad=True)
    xc = torch.randn(2, 8, 7, 9).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 1, 3, 3, requires_grad=True)
    w2 = torch.randn(16, 1, 3, 3, requires_grad=True)
    b, s, h = (torch.randn(8, requires_grad=True) for _ in range(3))
    ops = torch.ops.effconv
    torch.library.opcheck(ops.depthwise_conv2d.default, (x, w, b, [1, 1], [1, 1], [1, 1]))
    torch.library.opcheck(ops.depthwise_conv2d.default, (xc, w, None, [2, 2], [1, 1], [1, 1], s, h, "silu"))
    torch.library.opcheck(ops.depthwise_conv2d.default, (x, w2, None, [1, 1], [0, 0], [1, 1]))
    dy = torch.randn(2, 8, 7, 9, requires_grad=True)
    torch.library.opcheck(ops.depthwise_conv2d_grad_input.default, (dy, w, [2, 8, 7, 9], [1, 1], [1, 1], [1, 1]))
    torch.library.opcheck(ops.depthwise_conv2d_grad_weight.default, (dy, x, [8, 1, 3, 3], [1, 1], [1, 1], [1, 1]))
    dyc = dy.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(ops.depthwise_conv2d_backward.default, (dy, x, w, [1, 1], [1, 1], [1, 1]))
    torch.library.opcheck(ops.depthwise_conv2d_backward.default, (dyc, xc, w, [1, 1], [1, 1], [1, 1]))
    torch.library.opcheck(ops.depthwise_conv2d_backward.default, (dyc[:, :, :4, :5], xc, w, [2, 2], [1, 1], [1, 1]))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_depthwise_backward_op(layout, backend, gen):
    """effconv::depthwise_conv2d_backward (what autograd calls for both
    gradients): one pass over grad_output on the cpu backend where both
    gradients run channels_last rows, the two ops elsewhere."""
    for n, c, h, w_, k, stride, dil in ((3, 20, 11, 9, 3, 1, 1), (2, 32, 12, 10, 3, 2, 1), (2, 24, 9, 13, 5, 1, 2),
                                       (2, 16, 13, 11, 5, 2, 1), (1, 17, 15, 15, 7, 1, 1), (2, 16, 12, 12, 3, 3, 1)):
        x = torch.randn(n, c, h, w_, generator=gen)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(c, 1, k, k, generator=gen)
        pad = (k // 2) * dil
        y = F.conv2d(x.double(), w.double(), None, stride, pad, dil, c)
        dy = torch.randn(y.shape, generator=gen).to(memory_format=torch.channels_last if layout == "channels_last"
                                                    else torch.contiguous_format)
        with effconv.use_backend(backend):
            gi, gw, gb = torch.ops.effconv.depthwise_conv2d_backward(dy, x, w, [stride] * 2, [pad] * 2, [dil] * 2)
        xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
        ri, rw = torch.autograd.grad(F.conv2d(xr, wr, None, stride, pad, dil, c), (xr, wr), dy.double())
        assert_close(gi, ri, k * k)
        assert_close(gw, rw, n * y.shape[2] * y.shape[3])
        assert_close(gb, dy.double().sum((0, 2, 3)), n * y.shape[2] * y.shape[3])
        assert gi.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")


def test_depthwise_backward_op_errors_and_gradcheck():
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    dy = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    op = torch.ops.effconv.depthwise_conv2d_backward
    with pytest.raises(RuntimeError, match=r"depthwise_conv2d_backward: expected grad_output of size \[2, 4, 6, 7\]"):
        op(dy[:, :, :5], x, w, [1, 1], [1, 1], [1, 1])
    with pytest.raises(RuntimeError, match="depthwise_conv2d_backward"):
        op(dy, x, w.float(), [1, 1], [1, 1], [1, 1])
    # Double backward of the op itself, in both layouts.
    for xin in (x, x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()):
        assert torch.autograd.gradcheck(lambda dy, x, w: op(dy, x, w, [2, 2], [1, 1], [1, 1]),
                                        (dy[:, :, :3, :4].detach().requires_grad_(), xin, w))
        assert torch.autograd.gradcheck(lambda dy, x, w: op(dy, x, w, [1, 1], [1, 1], [1, 1]), (dy, xin, w))


@pytest.mark.slow
def test_depthwise_64bit_indexing():
    """A float16 NCHW tensor past 2^31 elements (4.3 GB): outputs near the end
    of the tensor match a float64 reference computed on crops."""
    n, c, h, w = 1, 2, 32800, 32800
    assert n * c * h * w > 2**31
    x = torch.empty(n, c, h, w, dtype=torch.float16)
    gen = torch.Generator().manual_seed(5)
    # Fill without a second 4 GB temporary: row blocks of random values.
    for r0 in range(0, h, 4096):
        x[:, :, r0:r0 + 4096].copy_(torch.randn(n, c, min(4096, h - r0), w, generator=gen).half())
    weight = torch.randn(c, 1, 3, 3, generator=gen).half()
    with effconv.poison_outputs(False):
        y = effconv.functional.depthwise_conv2d(x, weight, None, 1, 1)
    for ch, r, col in ((0, 0, 0), (1, h // 2, w // 2), (1, h - 1, w - 1), (1, h - 1, 0)):
        r0, c0 = max(r - 1, 0), max(col - 1, 0)
        crop = x[:, ch:ch + 1, r0:r + 2, c0:col + 2].double()
        pad = (1 if col == 0 else 0, 1 if col == w - 1 else 0, 1 if r == 0 else 0, 1 if r == h - 1 else 0)
        ref = F.conv2d(F.pad(crop, pad), weight[ch:ch + 1].double())
        got = y[:, ch, r, col].double()
        assert torch.allclose(got, ref.flatten()[0:1], rtol=2e-3, atol=2e-3), (ch, r, col, got, ref)


@pytest.mark.parametrize("case", [DW_BY_NAME[n].param() for n in ("dw3x3_s2", "dw3x3_odd_channels", "dw7x7",
                                                                  "dw3x3_big_plane", "dw5x5_wide",
                                                                  "dw7x7_s2_wide")])
def test_depthwise_other_isa_builds(other_isa, case, gen):  # noqa: F811
    for layout in ("nchw", "channels_last"):
        run_case(case, torch.float32, layout, gen=gen, activation="silu", epilogue=True)
    run_case(case, torch.float64, "channels_last", gen=gen)
