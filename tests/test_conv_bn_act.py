"""effconv.ConvBNAct2d / functional.conv_bn_act2d / ops conv_bn_act2d and
bn_act_backward against the unfused nn.Sequential(Conv2d, BatchNorm2d,
activation): outputs, every gradient and the running statistics over
several training steps, then eval; the Triton path under the interpreter."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import effconv
from helpers import assert_close

ACTS = {None: None, "relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU}

# (in, out, kernel, stride, groups): dense 3x3, depthwise (s2), pointwise (12
# and 24 outputs: one- and 24-wide panels on the CPU), grouped
CONVS = [(8, 16, 3, 1, 1), (16, 16, 3, 2, 16), (8, 12, 1, 1, 1), (8, 24, 1, 1, 1), (8, 8, 3, 1, 2)]
CONV_IDS = ["dense3x3", "depthwise_s2", "pointwise", "pointwise24", "grouped"]


def unfused_copy(m: effconv.ConvBNAct2d, dtype=None) -> nn.Sequential:
    """The same block as nn.Sequential(nn.Conv2d, BatchNorm2d, activation), in
    `dtype` (default: m's) -- float64 makes it the reference for any dtype."""
    conv = m[0]
    ref = nn.Sequential(
        nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  conv.groups, conv.bias is not None, conv.padding_mode),
        copy.deepcopy(m[1]), *([copy.deepcopy(m[2])] if len(m) > 2 else []))
    ref.load_state_dict(m.state_dict())
    return ref.to(dtype or conv.weight.dtype)


def randomize_bn(bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)


def train_and_compare(m, ref, dtype, shape, steps=3, layouts=("nchw", "channels_last", "nchw"), device="cpu"):
    """ref: the unfused block in float64 on the CPU; inputs and output
    gradients are the same values for both, so each comparison measures m's
    error (m runs on `device`)."""
    opt_m = torch.optim.SGD(m.parameters(), lr=0.05)
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.05)
    m.train()
    ref.train()
    red = shape[0] * shape[2] * shape[3]
    for step in range(steps):
        x = torch.randn(shape, dtype=dtype)
        if layouts[step % len(layouts)] == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        xm, xr = x.to(device, copy=True).requires_grad_(), x.double().requires_grad_()
        y, y_ref = m(xm), ref(xr)
        assert y.is_contiguous(memory_format=torch.channels_last) == y_ref.is_contiguous(
            memory_format=torch.channels_last)
        assert_close(y.cpu(), y_ref, red, f"step {step} output")
        g = torch.randn_like(y_ref)
        (y * g.to(dtype).to(device)).sum().backward()
        (y_ref * g).sum().backward()
        assert_close(xm.grad.cpu(), xr.grad, red, f"step {step} grad_input")
        for (name, p), (_, p_ref) in zip(m.named_parameters(), ref.named_parameters()):
            if p_ref.grad is not None and p.grad is None and name.endswith("0.bias"):
                # A conv bias before training-mode BatchNorm cancels: its
                # gradient is exactly zero (autograd leaves it unset here).
                assert p_ref.grad.abs().max() < 1e-4
                continue
            assert_close(p.grad.cpu(), p_ref.grad, red, f"step {step} grad {name}")
        for name, b in m.named_buffers():
            b_ref = dict(ref.named_buffers())[name]
            if b.is_floating_point():
                assert_close(b.cpu(), b_ref, red, f"step {step} {name}")
            else:
                assert torch.equal(b.cpu(), b_ref), name
        opt_m.step()
        opt_r.step()
        opt_m.zero_grad()
        opt_r.zero_grad()
    m.eval()
    ref.eval()
    x = torch.randn(shape, dtype=dtype)
    with torch.no_grad():
        assert_close(m(x.to(device)).cpu(), ref(x.double()), red, "eval")
    # Eval with gradients (frozen-BatchNorm fine-tuning) differentiates through the fold.
    xm, xr = x.to(device, copy=True).requires_grad_(), x.double().requires_grad_()
    g = torch.randn(ref(xr).shape, dtype=torch.float64)
    (m(xm) * g.to(dtype).to(device)).sum().backward()
    (ref(xr) * g).sum().backward()
    assert_close(xm.grad.cpu(), xr.grad, red, "eval grad_input")
    for (name, p), (_, p_ref) in zip(m.named_parameters(), ref.named_parameters()):
        assert_close(p.grad.cpu(), p_ref.grad, red, f"eval grad {name}")


@pytest.mark.parametrize("activation", list(ACTS))
@pytest.mark.parametrize("conv", CONVS, ids=CONV_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_matches_unfused_sequence(conv, activation, dtype):
    cin, cout, k, s, g = conv
    m = effconv.ConvBNAct2d(cin, cout, k, s, groups=g, activation=activation).to(dtype)
    randomize_bn(m[1])
    train_and_compare(m, unfused_copy(m, torch.float64), dtype, (4, cin, 9, 11))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grouped_row_kernel_statistics(dtype):
    """Four channels per group over whole vectors of channels (ResNeXt-style):
    the CPU forward runs the grouped sliding-window row kernel, whose
    epilogue accumulates the batch statistics."""
    m = effconv.ConvBNAct2d(32, 32, 3, 1, padding=1, groups=8, activation="relu6").to(dtype)
    randomize_bn(m[1])
    train_and_compare(m, unfused_copy(m, torch.float64), dtype, (3, 32, 7, 19))


@pytest.mark.parametrize("variant", ["momentum_none", "no_running_stats", "no_affine", "conv_bias", "reflect"])
def test_batchnorm_variants(variant):
    kw = {"momentum_none": dict(momentum=None), "no_running_stats": dict(track_running_stats=False),
          "no_affine": dict(affine=False), "conv_bias": dict(bias=True),
          "reflect": dict(padding_mode="reflect")}[variant]
    m = effconv.ConvBNAct2d(6, 10, 3, activation="relu6", **kw).double()
    randomize_bn(m[1])
    train_and_compare(m, unfused_copy(m), torch.float64, (3, 6, 7, 8), steps=4)


def test_state_dict_matches_torchvision_block():
    from torchvision.ops.misc import Conv2dNormActivation

    tv = Conv2dNormActivation(8, 16, 3, stride=2, activation_layer=nn.ReLU6)
    ours = effconv.ConvBNAct2d(8, 16, 3, stride=2, activation="relu6")
    assert list(tv.state_dict()) == list(ours.state_dict())
    ours.load_state_dict(tv.state_dict(), strict=True)
    tv.load_state_dict(ours.state_dict(), strict=True)
    tv.eval()
    ours.eval()
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        assert_close(ours(x), tv(x), 72)


def test_eval_fold_is_never_stale():
    m = effconv.ConvBNReLU2d(4, 6, 3).eval()
    x = torch.randn(2, 4, 6, 6)
    ref = unfused_copy(m).eval()
    with torch.no_grad():
        m(x)
        # In-place optimizer-style update of a BN parameter.
        m[1].weight.mul_(1.5)
        ref[1].weight.mul_(1.5)
        assert_close(m(x), ref(x), 36, "after in-place parameter update")
        # load_state_dict copies into the buffers.
        sd = m.state_dict()
        sd["1.running_var"] = sd["1.running_var"] * 3 + 1
        m.load_state_dict(sd)
        ref.load_state_dict(sd)
        assert_close(m(x), ref(x), 36, "after load_state_dict")
        # A replaced parameter.
        m[1].bias = nn.Parameter(torch.randn(6))
        ref[1].bias = nn.Parameter(m[1].bias.detach().clone())
        assert_close(m(x), ref(x), 36, "after replacing a parameter")
    # Training steps update running statistics; eval afterwards sees them.
    m.train()
    ref.train()
    for _ in range(2):
        xi = torch.randn(2, 4, 6, 6)
        m(xi)
        ref(xi)
    m.eval()
    ref.eval()
    with torch.no_grad():
        assert_close(m(x), ref(x), 36, "after training")


@pytest.mark.parametrize("conv", [(4, 6, 3, 1, 1), (6, 6, 3, 1, 6)], ids=["dense", "depthwise"])
def test_eval_plan_memo_follows_every_change(conv):
    """Inference memoises the op's plan per block; every input or module
    change the plan depends on must reach the op."""
    cin, cout, k, stride, groups = conv
    m = effconv.ConvBNAct2d(cin, cout, k, stride, groups=groups, activation="relu6").eval()
    randomize_bn(m[1])
    ref = unfused_copy(m).eval()
    x = torch.randn(2, cin, 7, 9)
    with torch.inference_mode():
        for what, xi in [("first call", x), ("same call", x), ("channels_last input", x.to(memory_format=torch.channels_last)),
                         ("other size", torch.randn(1, cin, 5, 11))]:
            out = m(xi)
            assert out.is_contiguous(memory_format=torch.channels_last) == (what == "channels_last input")
            assert_close(out, ref(xi), cin * k * k, what)
    m, ref = m.double(), ref.double()
    with torch.inference_mode():
        assert_close(m(x.double()), ref(x.double()), cin * k * k, "float64")
    m, ref = m.float(), ref.float()
    with torch.inference_mode():
        assert_close(m(x), ref(x), cin * k * k, "float32 again")
        # Module attributes the plan reads.
        for attr, value in [("stride", (2, 1)), ("padding", (0, 2)), ("dilation", (2, 2))]:
            setattr(m[0], attr, value)
            setattr(ref[0], attr, value)
            assert_close(m(x), ref(x), cin * k * k, f"after changing {attr}")
        # A weight swapped under the parameter (no version bump), with new strides.
        w = m[0].weight.detach().clone().to(memory_format=torch.channels_last) * 0.5
        m[0].weight.data = w
        ref[0].weight.data = w.clone()
        out, expected = m(x), ref(x)
        assert_close(out, expected, cin * k * k, "after swapping the weight's data")
        cl = torch.channels_last
        assert out.is_contiguous(memory_format=cl) == expected.is_contiguous(memory_format=cl), "output layout"
        with effconv.use_backend("torch"):
            assert_close(m(x), ref(x), cin * k * k, "under use_backend('torch')")
        # What the fold and the epilogue read, each change made after a memoised call.
        changes = [
            ("running_var updated in place", lambda b: b[1].running_var.mul_(1.5)),
            ("BatchNorm weight replaced", lambda b: setattr(b[1], "weight", nn.Parameter(b[1].weight * 0.5))),
            ("eps", lambda b: setattr(b[1], "eps", 0.25)),
            ("activation module", lambda b: b.__setitem__(2, nn.SiLU())),
            ("conv weight updated in place", lambda b: b[0].weight.add_(0.125)),
        ]
        for what, change in changes:
            assert_close(m(x), ref(x), cin * k * k, f"before: {what}")
            assert m._fold.fast is not None, f"before: {what}: the memo is in use"
            with torch.inference_mode(False), torch.no_grad():  # normal tensors, as a training step makes
                change(m)
                change(ref)
            for _ in range(2):
                assert_close(m(x), ref(x), cin * k * k, f"after: {what}")
        # A call explain() records plans without the memo; the next call must not reuse a stale one.
        other = torch.randn(1, cin, 6, 6)
        effconv.explain(m, other)
        for xi in (other, x):
            assert_close(m(xi), ref(xi), cin * k * k, "after explain()")
        # Parameters made under inference_mode have no version counter: no memo, same results.
        m, ref = m.double(), ref.double()
        for _ in range(2):
            assert_close(m(x.double()), ref(x.double()), cin * k * k, "inference-tensor parameters")


def test_batch_of_one_value_per_channel_raises_like_torch():
    m = effconv.ConvBNReLU2d(3, 4, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        m(torch.randn(1, 3, 1, 1))
    m.eval()
    assert m(torch.randn(1, 3, 1, 1)).shape == (1, 4, 1, 1)


def test_empty_batch_leaves_running_stats():
    m = effconv.ConvBNReLU2d(3, 4, 3)
    y = m(torch.randn(0, 3, 5, 5, requires_grad=True))
    assert y.shape == (0, 4, 5, 5)
    assert torch.equal(m[1].running_mean, torch.zeros(4)) and torch.equal(m[1].running_var, torch.ones(4))
    assert m[1].num_batches_tracked.item() == 1


def test_saved_memory_not_above_unfused():
    """Bytes autograd keeps for backward: fused <= nn.Sequential(conv, bn, act)."""
    def saved_bytes(module, x):
        total = 0

        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x)
        return total

    for act in ("relu", "silu", None):
        m = effconv.ConvBNAct2d(16, 32, 3, activation=act)
        x = torch.randn(4, 16, 16, 16, requires_grad=True)
        ours, theirs = saved_bytes(m, x), saved_bytes(unfused_copy(m), x)
        assert ours <= theirs, f"{act}: fused saves {ours} bytes, unfused {theirs}"


def test_gradcheck_fused_op():
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    gamma = (torch.rand(6, dtype=torch.float64) + 0.5).requires_grad_()
    beta = torch.randn(6, dtype=torch.float64, requires_grad=True)
    for act in ("none", "silu", "relu6"):
        f = lambda x, w, g, b: effconv.functional.conv_bn_act2d(  # noqa: E731
            x, w, None, None, g, b, True, padding=1, activation=act)
        assert torch.autograd.gradcheck(f, (x, w, gamma, beta))


def test_opcheck_fused_ops():
    x = torch.randn(2, 4, 5, 6, requires_grad=True)
    xc = torch.randn(2, 8, 5, 6).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(6, 4, 3, 3, requires_grad=True)
    wd = torch.randn(8, 1, 3, 3, requires_grad=True)
    g, b = torch.rand(6, requires_grad=True), torch.randn(6, requires_grad=True)
    ops = torch.ops.effconv
    torch.library.opcheck(ops.conv_bn_act2d.default, (x, w, g, b, [1, 1], [1, 1], [1, 1], 1, 1e-5, "relu"))
    torch.library.opcheck(ops.conv_bn_act2d.default, (xc, wd, None, None, [2, 2], [1, 1], [1, 1], 8, 1e-3, "silu"))
    z = torch.randn(2, 6, 5, 6)
    mean, invstd = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False).add(1e-5).rsqrt()
    torch.library.opcheck(ops.bn_act_backward.default, (torch.randn_like(z), z, mean, invstd, g.detach(),
                                                          b.detach(), "relu6"))


def test_bad_input_errors():
    x, w = torch.randn(2, 4, 5, 5), torch.randn(6, 4, 3, 3)
    f = effconv.functional.conv_bn_act2d
    with pytest.raises(RuntimeError, match=r"expected bn_weight of size \[6\], got \[5\]"):
        f(x, w, None, None, torch.ones(5), None, True)
    with pytest.raises(RuntimeError, match="expected activation in"):
        f(x, w, None, None, None, None, True, activation="gelu")
    with pytest.raises(ValueError, match="activation must be one of"):
        effconv.ConvBNAct2d(4, 6, 3, activation="tanh")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_bn_act_backward_backends_agree(backend):
    z = torch.randn(3, 5, 4, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    dy = torch.randn_like(z)
    mean, invstd = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False).add(1e-5).rsqrt()
    gamma, beta = torch.rand(5, dtype=torch.float64) + 0.5, torch.randn(5, dtype=torch.float64)
    for act in ("none", "relu", "relu6", "silu"):
        zr = z.clone().requires_grad_()
        g_r, b_r = gamma.clone().requires_grad_(), beta.clone().requires_grad_()
        y = F.batch_norm(zr, None, None, g_r, b_r, True, 0.0, 1e-5)
        y = {"none": y, "relu": F.relu(y), "relu6": F.relu6(y), "silu": F.silu(y)}[act]
        y.backward(dy)
        with effconv.use_backend(backend):
            gz, gg, gb = torch.ops.effconv.bn_act_backward(dy, z, mean, invstd, gamma, beta, act)
        assert gz.is_contiguous(memory_format=torch.channels_last)
        assert_close(gz, zr.grad, 84, act)
        assert_close(gg, g_r.grad, 84, act)
        assert_close(gb, b_r.grad, 84, act)


@pytest.mark.triton
@pytest.mark.parametrize("conv", [(4, 8, 3, 1, 1), (8, 8, 3, 2, 8), (6, 4, 1, 1, 1)],
                         ids=["dense3x3", "depthwise_s2", "pointwise"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_triton_path(conv, layout):
    cin, cout, k, s, g = conv
    m = effconv.ConvBNAct2d(cin, cout, k, s, groups=g, activation="silu").double()
    randomize_bn(m[1])
    ref = unfused_copy(m)
    with effconv.use_backend("triton"):
        train_and_compare(m, ref, torch.float64, (2, cin, 6, 7), steps=2, layouts=(layout,))
    with effconv.use_backend("triton"):
        rec = effconv.explain(lambda: m.train()(torch.randn(2, cin, 6, 7, dtype=torch.float64)))
    assert {r["op"] for r in rec} >= {"conv_bn_act2d", "epilogue"}
    assert all(r["backend"] == "triton" for r in rec), str(rec)


@pytest.mark.triton
def test_triton_bn_act_backward_fp32():
    z = torch.randn(2, 24, 5, 6)
    dy = torch.randn_like(z)
    mean, invstd = z.mean((0, 2, 3)), z.var((0, 2, 3), unbiased=False).add(1e-5).rsqrt()
    gamma, beta = torch.rand(24) + 0.5, torch.randn(24)
    with effconv.use_backend("cpu"):
        expected = torch.ops.effconv.bn_act_backward(dy, z, mean, invstd, gamma, beta, "relu")
    with effconv.use_backend("triton"):
        got = torch.ops.effconv.bn_act_backward(dy, z, mean, invstd, gamma, beta, "relu")
    for a, b in zip(got, expected):
        assert_close(a, b.double(), 60)
