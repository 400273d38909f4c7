"""effconv.functional.conv2d on the C++ CPU kernels: forward and every
gradient against float64 F.conv2d over the implicit-GEMM family, in every
layout and dtype, plus epilogue, gradcheck, determinism and ISA builds."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import effconv
from effconv import _ext
from conv2d_cases import BY_NAME, CASES, Case
from helpers import assert_close, assert_low_precision_ok, conv2d_reference, make_input, same_layout

pytestmark = pytest.mark.skipif(not _ext.available(), reason="effconv._C is not built")


def run_case(case: Case, dtype, layout, backend="cpu", gen=None, activation=None, epilogue=False, device="cpu",
             dy_like_output=False):
    """Forward + backward on `backend`, compared with float64 PyTorch (on the CPU).
    The output gradient is contiguous, or in the output's layout with `dy_like_output`."""
    def leaf(t):
        return t.to(dtype=dtype, device=device).requires_grad_()

    x = make_input(case.input_shape, dtype, layout, gen).to(device).requires_grad_()
    w = leaf(torch.randn(case.weight_shape, dtype=torch.float64, generator=gen) / case.R)
    b = leaf(torch.randn(case.K, dtype=torch.float64, generator=gen)) if case.bias else None
    scale = shift = None
    if epilogue:
        scale = leaf(torch.rand(case.K, dtype=torch.float64, generator=gen) + 0.5)
        shift = leaf(torch.randn(case.K, dtype=torch.float64, generator=gen))
    with effconv.use_backend(backend):
        y = effconv.functional.conv2d(x, w, b, case.stride, case.padding, case.dilation, case.groups,
                                      scale=scale, shift=shift, activation=activation)
    leaves = [t for t in (x, w, b, scale, shift) if t is not None]
    ref_leaves = [t.detach().cpu().double().requires_grad_() for t in leaves]
    rx, rw = ref_leaves[0], ref_leaves[1]
    rest = iter(ref_leaves[2:])
    rb = next(rest) if case.bias else None
    rscale, rshift = (next(rest), next(rest)) if epilogue else (None, None)
    y_ref = conv2d_reference(rx, rw, rb, case.stride, case.padding, case.dilation, case.groups,
                             rscale, rshift, activation)
    red_out = case.C // case.groups * case.R * case.S
    assert y.shape == y_ref.shape
    assert_close(y.detach().cpu(), y_ref, red_out, "output")

    # Same output layout as PyTorch gives for the same operands.
    with torch.no_grad():
        torch_y = F.conv2d(x.detach().cpu().float(), w.detach().cpu().float(), None, case.stride, case.padding,
                           case.dilation, case.groups)
    # (An empty output's layout carries nothing: PyTorch itself differs between conv kinds there.)
    if y.numel():
        assert same_layout(y, torch_y), f"layout: effconv {y.stride()} vs torch {torch_y.stride()}"

    dy = torch.randn(y.shape, dtype=torch.float64, generator=gen).to(dtype)
    if dy_like_output:
        dy = torch.empty_like(y).copy_(dy)
    grads = torch.autograd.grad(y, leaves, dy.to(device), allow_unused=True)
    ref_grads = torch.autograd.grad(y_ref, ref_leaves, dy.double(), allow_unused=True)
    pixels = max(y.shape[0] * y.shape[2] * y.shape[3], 1)
    reductions = [case.K // case.groups * case.R * case.S, pixels] + [pixels] * (len(leaves) - 2)
    for name, g, rg, red in zip(("grad_input", "grad_weight", "grad_3", "grad_4", "grad_5"), grads, ref_grads,
                                reductions):
        assert g is not None, name
        assert_close(g.cpu(), rg, red, name)
    return x, y, grads


@pytest.mark.parametrize("layout", ["nchw", "channels_last", "noncontig"])
@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_conv2d_fp32(case, layout, gen):
    run_case(case, torch.float32, layout, gen=gen)


@pytest.mark.parametrize("case", [c.param() for c in CASES])
def test_conv2d_fp64(case, gen):
    run_case(case, torch.float64, "channels_last", gen=gen)


LOW_PRECISION = ["pw1x1", "3x3_s2", "5x5_s2_d2", "g32_resnext", "same_even_4x4", "batch0", "wide_channels"]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in LOW_PRECISION])
def test_conv2d_low_precision(case, dtype, gen):
    run_case(case, dtype, "nchw", gen=gen, epilogue=True, activation="relu6")
    x, y, _ = run_case(case, dtype, "channels_last", gen=gen)
    # ... and no worse than twice PyTorch's own error in this dtype.
    w = torch.randn(case.weight_shape, dtype=torch.float64, generator=gen) / case.R
    x64 = x.detach().double()
    with effconv.use_backend("cpu"):
        ours = effconv.functional.conv2d(x.detach(), w.to(dtype), None, case.stride, case.padding, case.dilation,
                                         case.groups)
    ref = F.conv2d(x64, w, None, case.stride, case.padding, case.dilation, case.groups)
    theirs = F.conv2d(x.detach(), w.to(dtype), None, case.stride, case.padding, case.dilation, case.groups)
    assert_low_precision_ok(ours, ref, theirs, case.C // case.groups * case.R * case.S)


@pytest.mark.parametrize("activation", [None, "relu", "relu6", "silu"])
@pytest.mark.parametrize("epilogue", [False, True], ids=["bias_only", "scale_shift"])
@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in ("pw1x1", "3x3_s2", "g4_uneven", "winograd_3x3")])
def test_conv2d_epilogue(case, epilogue, activation, gen):
    run_case(case, torch.float32, "channels_last", gen=gen, activation=activation, epilogue=epilogue)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pointwise_streamed_outputs(dtype, gen):
    """1x1 outputs and input gradients past 8 MB take the plain-GEMM path with
    non-temporal stores; with C = K = 64 they cross it in both directions."""
    case = Case("pw1x1_streamed", 2, 64, 96, 176 // dtype.itemsize * 4, 64, 1, 1)
    x, y, grads = run_case(case, dtype, "channels_last", gen=gen, dy_like_output=True)
    assert y.numel() * y.element_size() > 8 << 20 and grads[0].numel() * grads[0].element_size() > 8 << 20
    assert grads[0].is_contiguous(memory_format=torch.channels_last)


def test_grouped_rows_past_the_caches(gen):
    """A grouped row-kernel conv whose input passes 16 MiB requests each next
    output row's input rows ahead (stride 2: two new rows per output row) and
    streams its output; so does its grad_input, one residue class at a time
    (each class's dx pixels and dy together pass 16 MiB)."""
    case = Case("grows_prefetch", 2, 256, 130, 129, 256, 3, 3, stride=2, padding=1, groups=32)
    x, y, _ = run_case(case, torch.float32, "channels_last", gen=gen)
    assert x.numel() * x.element_size() > 16 << 20
    assert _ext.C().cpu_gconv_rows_shape(case.C, case.K, 3, 3, 2, 2, 1, 1, 1, 1, case.groups, 4)[0]


def check_path_against_fallback(case, layout, gen, switch, grad_input, what, factor):
    """A CPU fast path (on by default; `switch(False)` sends its convs to the
    kernels it replaces) agrees with them on the output and, where
    `grad_input`, on the input gradient: its float64 error stays within
    `factor` times theirs, and it is not them in disguise (a different
    summation order changes some bits). Each is also checked against float64
    in the grid."""
    x = make_input(case.input_shape, torch.float32, layout, gen).requires_grad_()
    w = torch.randn(case.weight_shape, generator=gen) / 3
    b = torch.randn(case.K, generator=gen)
    args = (case.stride, case.padding, case.dilation, case.groups)
    xd = x.detach().double().requires_grad_()
    ref = F.conv2d(xd, w.double(), b.double(), *args)
    # grad_input takes dy's layout (NCHW outputs run through a channels_last copy).
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    dy = torch.randn(ref.shape, generator=gen).contiguous(memory_format=fmt)
    (ref_dx,) = torch.autograd.grad(ref, xd, dy.double())

    def run():
        y = effconv.functional.conv2d(x, w, b, *args)
        return (y.detach(), *torch.autograd.grad(y, x, dy))

    fast = run()
    before = switch(False)
    try:
        fallback = run()
    finally:
        switch(before)
    for name, a, d, r, used in (("output", fast[0], fallback[0], ref, True),
                                ("grad_input", fast[1], fallback[1], ref_dx, grad_input)):
        err_a = (a.double() - r).abs().max().item()
        err_d = (d.double() - r).abs().max().item()
        assert torch.equal(a, d) != used, f"{name}: {what} {'not ' if used else ''}expected"
        assert err_a <= factor * err_d + 1e-6, f"{name}: {what} error {err_a:.3g} vs {err_d:.3g} without it"


class winograd_tiles:
    """Within the block, the CPU Winograd path uses F(4x4, 3x3) where it pays
    (tile 4, the default) or F(2x2, 3x3) everywhere (tile 2)."""

    def __init__(self, tile: int):
        self.tile = tile

    def __enter__(self):
        self.before = _ext.C().set_cpu_winograd_f4(self.tile == 4)

    def __exit__(self, *exc):
        _ext.C().set_cpu_winograd_f4(self.before)


# F(2x2) for every case; F(4x4) where the output is large enough to choose it.
WINOGRAD = [("winograd_3x3", 2), ("winograd_p0_tails_nobias", 2), ("winograd_p20", 2), ("wide_channels", 2),
            ("winograd_3x3", 4), ("winograd_p20", 4), ("winograd_f4_tails", 4)]


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("case,tile", [pytest.param(BY_NAME[n], t, id=f"{n}-F{t}x{t}") for n, t in WINOGRAD])
def test_winograd_matches_direct(case, tile, layout, gen):
    """Winograd (forward, and grad_input where the transposed conv
    qualifies) against the direct kernels: within a few times their error."""
    C = _ext.C()
    assert C.cpu_winograd_shape(case.C, case.K, case.R, case.S, 1, 1, 1, 1, case.groups)
    pad = (case.padding,) * 2 if isinstance(case.padding, int) else case.padding
    grad_input = C.cpu_winograd_grad_input_shape(case.C, case.K, case.R, case.S, 1, 1, *pad, 1, 1, case.groups)
    with winograd_tiles(tile):
        assert C.cpu_winograd_tile(case.C, case.N, case.H + 2 * pad[0] - 2, case.W + 2 * pad[1] - 2) == tile
        check_path_against_fallback(case, layout, gen, C.set_cpu_winograd, grad_input, "Winograd", 8)


def test_winograd_tile_rule():
    """F(4x4) where its tiles do <= 0.7x F(2x2)'s work; at <= 0.8x (13x13,
    14x14) only with enough tiles in the batch; never past its channel limit."""
    C = _ext.C()
    with winograd_tiles(4):
        assert [C.cpu_winograd_tile(64, 1, h, h) for h in (7, 13, 14, 27, 56)] == [4, 2, 2, 4, 4]
        assert [C.cpu_winograd_tile(64, 2, h, h) for h in (13, 14)] == [4, 4]
        assert C.cpu_winograd_tile(C.cpu_winograd_f4_max_in + 1, 16, 56, 56) == 2
    with winograd_tiles(2):
        assert C.cpu_winograd_tile(64, 16, 56, 56) == 2


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in ("grows_cg4", "grows_5x3_s12", "grows_s2_p0_even",
                                                                 "g32_resnext")])
def test_gconv_rows_match_indirect(case, layout, gen):
    """The grouped sliding-window row kernel (forward and grad_input, strided
    ones per residue class) against the indirect gconv kernel it replaces."""
    C = _ext.C()
    pad = (case.padding,) * 2 if isinstance(case.padding, int) else case.padding
    stride = (case.stride,) * 2 if isinstance(case.stride, int) else case.stride
    # Four channels per group or fewer: several groups per vector on AVX2 and AVX-512.
    forward, grad_input = C.cpu_gconv_rows_shape(case.C, case.K, case.R, case.S, *stride, *pad, 1, 1, case.groups, 4)
    assert forward
    check_path_against_fallback(case, layout, gen, C.set_cpu_gconv_rows, grad_input, "row kernel", 4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in ("winograd_p0_tails_nobias", "winograd_p20")])
def test_winograd_grad_input_channels_last(case, dtype, gen):
    """With a channels_last output gradient (as a channels_last network
    gives), grad_input runs Winograd too: every gradient vs float64."""
    run_case(case, dtype, "channels_last", gen=gen, dy_like_output=True)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_statistics_and_concat_outputs(tile, gen):
    """Winograd epilogue variants beyond the grid: batch statistics for
    training-mode BatchNorm (conv-BN op) and an output that is a channel
    range of a wider concatenation (conv2d_cat)."""
    assert _ext.C().cpu_winograd_tile(16, 2, 7, 9) == 4  # the 7x9 outputs take F(4x4) unless told not to
    with winograd_tiles(tile):
        _winograd_statistics_and_concat_outputs(gen)


def _winograd_statistics_and_concat_outputs(gen):
    x = make_input((2, 16, 7, 9), torch.float32, "channels_last", gen)
    convs = [(torch.randn(32, 16, 3, 3, generator=gen) / 3, torch.randn(32, generator=gen)),
             (torch.randn(48, 16, 3, 3, generator=gen) / 3, torch.randn(48, generator=gen))]
    with torch.no_grad():
        y = effconv.functional.conv2d_cat(x, [w for w, _ in convs], [b for _, b in convs], paddings=[1, 1],
                                          activation="relu")
    ref = torch.cat([F.conv2d(x.double(), w.double(), b.double(), 1, 1) for w, b in convs], 1).relu()
    assert_close(y, ref, 16 * 9)

    conv = effconv.ConvBNAct2d(16, 40, 3, padding=1, activation="relu6")
    seq = torch.nn.Sequential(torch.nn.Conv2d(16, 40, 3, padding=1, bias=False), torch.nn.BatchNorm2d(40),
                              torch.nn.ReLU6()).double()
    seq.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in conv.state_dict().items()})
    out = conv(x)
    out_ref = seq(x.double())
    assert_close(out, out_ref, 16 * 9)
    assert_close(conv[1].running_mean, seq[1].running_mean, 2 * 7 * 9)
    assert_close(conv[1].running_var, seq[1].running_var, 2 * 7 * 9)


def test_unbatched_input(gen):
    x = torch.randn(8, 9, 11, generator=gen)
    w = torch.randn(16, 8, 3, 3, generator=gen)
    y = effconv.functional.conv2d(x, w, None, 1, 1)
    assert y.shape == (16, 9, 11)
    assert_close(y, F.conv2d(x.double(), w.double(), None, 1, 1), 72)


def test_gradcheck_fp64():
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    scale = torch.rand(6, dtype=torch.float64, requires_grad=True)
    shift = torch.randn(6, dtype=torch.float64, requires_grad=True)

    def plain(x, w, b):
        return effconv.functional.conv2d(x, w, b, 2, 1, 2, 2)

    def fused(x, w, b, scale, shift):
        return effconv.functional.conv2d(x, w, b, 1, 1, 1, 2, scale=scale, shift=shift, activation="silu")

    assert torch.autograd.gradcheck(plain, (x, w, b))
    assert torch.autograd.gradcheck(fused, (x, w, b, scale, shift))
    # Second derivatives go through conv2d_grad_input / conv2d_grad_weight's own autograd.
    assert torch.autograd.gradgradcheck(plain, (x, w, b))


def test_relu_gradient_uses_output_mask(gen):
    # relu/relu6 without scale differentiate from the saved output; check at the kinks too.
    x = torch.randn(1, 4, 6, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 4, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    for act in ("relu", "relu6"):
        assert torch.autograd.gradcheck(lambda x, w: effconv.functional.conv2d(x, w, None, 1, 1, activation=act),
                                        (x, w))


def test_backward_is_deterministic(gen):
    case = BY_NAME["g4_uneven"]
    x = make_input((4, 12, 15, 13), torch.float32, "channels_last", gen).requires_grad_()
    w = torch.randn(case.weight_shape, generator=gen, requires_grad=True)
    b = torch.randn(case.K, generator=gen, requires_grad=True)
    dy = None
    results = []
    for _ in range(2):
        y = effconv.functional.conv2d(x, w, b, 1, 1, 1, 4)
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7)) if dy is None else dy
        results.append(torch.autograd.grad(y, (x, w, b), dy))
    for a, b_ in zip(*results):
        assert torch.equal(a, b_)


@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in (
    "pw1x1", "3x3_s2", "g32_resnext", "grows_cg8_s2_nobias", "grows_cg2_p0", "wide_channels",
    "rows_merged_dil21", "narrow_out_3x3", "gwt_cg32_k13_s2", "winograd_p0_tails_nobias")])
def test_other_isa_builds(other_isa, case, gen):
    run_case(case, torch.float32, "channels_last", gen=gen, activation="silu", epilogue=True)
    run_case(case, torch.float64, "nchw", gen=gen)


@pytest.mark.parametrize("case", [BY_NAME[n].param() for n in ("winograd_p0_tails_nobias", "winograd_f4_tails")])
def test_other_isa_winograd(other_isa, case, gen):
    """F(2x2) (a 6x5 output) and F(4x4) (41x14) on the other ISA builds."""
    for dtype in (torch.float32, torch.float64):
        run_case(case, dtype, "channels_last", gen=gen, activation="relu6", epilogue=True, dy_like_output=True)
