"""effconv::deform_conv2d (DCNv1; DCNv2 with a mask) and its backward op
effconv::deform_conv2d_backward, with torchvision.ops.deform_conv2d's
semantics: offset [N, 2 * offset_groups * kH * kW, P, Q] holding (y, x)
pairs per offset group and tap, mask [N, offset_groups * kH * kW, P, Q],
weight groups from the weight's shape, bilinear sampling that reads zeros
outside the image (effconv/deform.h states the rules once).

Backends: C++ on CPU tensors (deterministic by construction); on CUDA
tensors Triton (fused sampling + tl.dot, no column buffer) and the CUDA C++
kernels. Under torch.use_deterministic_algorithms(True), 'auto' runs the
backward on CUDA C++'s deterministic variant; an explicit 'triton' backward
(float atomics) raises PyTorch's standard error. 'torch' is the pure-PyTorch
reference below (also the tests' float64 reference).
"""
from __future__ import annotations

import torch

from effconv import _ext, backends
from effconv.ops import _common as c
from effconv.ops._conv_family import out_size
from effconv.ops.conv2d import cpu_check, triton_check

OP = "deform_conv2d"
BACKWARD_OP = "deform_conv2d_backward"

c.LIB.define(
    "deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? mask, Tensor? bias, int[2] stride, "
    "int[2] padding, int[2] dilation) -> Tensor"
)
# output_mask: which of (grad_input, grad_offset, grad_weight, grad_mask,
# grad_bias) to compute; the others (and grad_mask without a mask) come back
# as empty tensors of size [0].
c.LIB.define(
    "deform_conv2d_backward(Tensor grad_output, Tensor input, Tensor offset, Tensor weight, Tensor? mask, "
    "int[2] stride, int[2] padding, int[2] dilation, bool[5] output_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)"
)


# ---------------------------------------------------------------- checks
def check(op, input, offset, weight, mask, bias, stride, padding, dilation):
    """torchvision's argument rules with PyTorch-style messages. Returns
    (groups, offset_groups, P, Q)."""
    for name, t in (("input", input), ("offset", offset), ("weight", weight), ("mask", mask)):
        if t is not None and t.dim() != 4:
            raise RuntimeError(f"effconv.{op}: expected 4-D {name}, got {t.dim()}-D {name} of size {c.fmt_size(t)}")
    c.check_floating(op, "input", input)
    for name, t in (("offset", offset), ("weight", weight), ("mask", mask), ("bias", bias)):
        if t is not None:
            c.check_same(op, "input", input, name, t)
    c.check_pair(op, "stride", stride, 1)
    c.check_pair(op, "padding", padding, 0)
    c.check_pair(op, "dilation", dilation, 1)
    n, ch, h, w = input.shape
    k, cg, kh, kw = weight.shape
    if cg == 0 or ch % cg != 0:
        raise RuntimeError(
            f"effconv.{op}: expected input channels ({ch}) to be a multiple of weight.size(1) ({cg}), "
            f"got input {c.fmt_size(input)} and weight {c.fmt_size(weight)}")
    groups = ch // cg
    if k % groups != 0:
        raise RuntimeError(f"effconv.{op}: expected out_channels ({k}) divisible by groups ({groups})")
    taps = kh * kw
    if offset.shape[1] == 0 or offset.shape[1] % (2 * taps) != 0:
        raise RuntimeError(
            f"effconv.{op}: expected offset channels to be a positive multiple of 2 * kH * kW = {2 * taps}, "
            f"got offset of size {c.fmt_size(offset)}")
    og = offset.shape[1] // (2 * taps)
    if ch % og != 0:
        raise RuntimeError(
            f"effconv.{op}: expected input channels ({ch}) divisible by offset groups ({og}, from offset of size "
            f"{c.fmt_size(offset)})")
    p = out_size(h, kh, stride[0], padding[0], dilation[0])
    q = out_size(w, kw, stride[1], padding[1], dilation[1])
    if p <= 0 or q <= 0:
        raise RuntimeError(
            f"effconv.{op}: calculated output size ({p} x {q}) is too small for input {c.fmt_size(input)}, "
            f"kernel ({kh} x {kw}), stride {list(stride)}, padding {list(padding)}, dilation {list(dilation)}")
    if list(offset.shape) != [n, 2 * og * taps, p, q]:
        raise RuntimeError(
            f"effconv.{op}: expected offset of size {[n, 2 * og * taps, p, q]}, got {c.fmt_size(offset)}")
    if mask is not None and list(mask.shape) != [n, og * taps, p, q]:
        raise RuntimeError(f"effconv.{op}: expected mask of size {[n, og * taps, p, q]}, got {c.fmt_size(mask)}")
    if bias is not None and list(bias.shape) != [k]:
        raise RuntimeError(f"effconv.{op}: expected bias of size [{k}], got {c.fmt_size(bias)}")
    return groups, og, p, q


def _layout(t: torch.Tensor):
    return c.conv_memory_format(t)


# ------------------------------------------------------------- reference
def reference(input, offset, weight, mask=None, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """deform_conv2d in PyTorch ops (gathers; differentiable by autograd):
    the 'torch' backend and the tests' float64 reference."""
    n, ch, h, w = input.shape
    k, cg, kh, kw = weight.shape
    groups, taps = ch // cg, kh * kw
    og = offset.shape[1] // (2 * taps)
    p, q = offset.shape[2:]
    dev, dt = input.device, input.dtype
    off = offset.reshape(n, og, taps, 2, p, q)
    ky = (torch.arange(kh, device=dev).repeat_interleave(kw) * dilation[0]).to(dt).view(1, 1, taps, 1, 1)
    kx = (torch.arange(kw, device=dev).repeat(kh) * dilation[1]).to(dt).view(1, 1, taps, 1, 1)
    by = (torch.arange(p, device=dev) * stride[0] - padding[0]).to(dt).view(1, 1, 1, p, 1)
    bx = (torch.arange(q, device=dev) * stride[1] - padding[1]).to(dt).view(1, 1, 1, 1, q)
    # Points more than a pixel outside read zero with zero gradient; clamping
    # first keeps floor() finite for offsets far outside (and NaN).
    y = torch.nan_to_num(by + ky + off[:, :, :, 0], nan=-3.0).clamp(-3, h + 2)
    x = torch.nan_to_num(bx + kx + off[:, :, :, 1], nan=-3.0).clamp(-3, w + 2)
    y0, x0 = torch.floor(y), torch.floor(x)
    ly, lx = y - y0, x - x0
    src = input.reshape(n, og, ch // og, h * w)
    cols = 0
    for dy, dx, wgt in ((0, 0, (1 - ly) * (1 - lx)), (0, 1, (1 - ly) * lx), (1, 0, ly * (1 - lx)), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        valid = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long().reshape(n, og, 1, taps * p * q)
        v = torch.gather(src, 3, idx.expand(n, og, ch // og, taps * p * q))
        cols = cols + v * (wgt * valid).reshape(n, og, 1, taps * p * q)
    if mask is not None:
        cols = cols * mask.reshape(n, og, 1, taps * p * q)
    cols = cols.reshape(n, groups, cg * taps, p * q)
    out = torch.einsum("ngcp,gkc->ngkp", cols, weight.reshape(groups, k // groups, cg * taps))
    out = out.reshape(n, k, p, q)
    if bias is not None:
        out = out + bias.view(1, k, 1, 1)
    return out


# --------------------------------------------------------------- backends
def cuda_check(device_type, dtype):
    if device_type != "cuda":
        return "the CUDA C++ kernels take CUDA tensors"
    if not _ext.with_cuda():
        return "effconv._C was built without CUDA kernels"
    return None


def _table(op):
    return backends.OpBackends(
        op,
        checks={"cpu": cpu_check, "triton": triton_check, "cuda": cuda_check, "torch": lambda d, t: None},
        auto_order={"cpu": ("cpu", "triton", "torch"), "cuda": ("triton", "cuda", "torch")},
        auto_reason={"cpu": "auto: C++ kernels for CPU tensors",
                     "cuda": "auto: Triton kernels (fused sampling + GEMM) for CUDA tensors"},
    )


TABLES = {OP: _table(OP), BACKWARD_OP: _table(BACKWARD_OP)}


def describe(weight, offset, mask):
    kh, kw = weight.shape[2:]
    og = offset.shape[1] // (2 * kh * kw)
    return f"deformable {kh}x{kw}" + (" (DCNv2, mask)" if mask is not None else " (DCNv1)") + \
        (f", {og} offset groups" if og > 1 else "")


def _route(op, t, weight, offset, mask):
    table = TABLES[op]
    det = torch.are_deterministic_algorithms_enabled()
    if op == BACKWARD_OP and det and t.device.type == "cuda" and backends.requested_backend() == "auto" \
            and cuda_check("cuda", t.dtype) is None:
        if backends.recording_active():
            backends.report_choice(backends.Choice(op, "cuda", "auto", "auto: deterministic algorithms requested: "
                                                   "CUDA C++ fixed-order backward", describe(weight, offset, mask)))
        return "cuda"
    backend = backends.choose(table, t.device, t.dtype, lambda: describe(weight, offset, mask))
    if op == BACKWARD_OP and det and backend == "triton":
        _ext.C().alert_not_deterministic("effconv.deform_conv2d_backward on the Triton backend (atomic adds)")
    return backend


def _triton():
    from effconv.kernels import deform as k  # lazy: imports triton

    return k


# ------------------------------------------------------------ forward op
@torch.library.register_fake("effconv::deform_conv2d")
def _forward_fake(input, offset, weight, mask, bias, stride, padding, dilation):
    _, _, p, q = check(OP, input, offset, weight, mask, bias, stride, padding, dilation)
    return c.empty((input.shape[0], weight.shape[0], p, q), input, _layout(input))


def deform_conv2d_impl(input, offset, weight, mask, bias, stride, padding, dilation):
    _, _, p, q = check(OP, input, offset, weight, mask, bias, stride, padding, dilation)
    out = c.new_output((input.shape[0], weight.shape[0], p, q), input, _layout(input))
    backend = _route(OP, input, weight, offset, mask)
    if backend == "cpu":
        _ext.C().deform_conv2d_forward_cpu(input, offset, weight, mask, bias, stride, padding, dilation, out)
    elif backend == "cuda":
        _ext.C().deform_conv2d_forward_cuda(input, offset, weight, mask, bias, stride, padding, dilation, out)
    elif backend == "triton":
        _triton().forward(input, offset, weight, mask, bias, stride, padding, dilation, out)
    else:
        out.copy_(reference(input, offset, weight, mask, bias, stride, padding, dilation))
    return out


torch.library.register_kernel("effconv::deform_conv2d", ("cpu", "cuda"), deform_conv2d_impl)


# ----------------------------------------------------------- backward op
def _grad_buffers(input, offset, weight, mask, output_mask, alloc):
    gi, go, gw, gm, gb = output_mask
    none = lambda: alloc((0,), input, torch.contiguous_format)  # noqa: E731
    return (
        alloc(input.shape, input, _layout(input)) if gi else none(),
        alloc(offset.shape, offset, _layout(offset)) if go else none(),
        alloc(weight.shape, weight, torch.contiguous_format) if gw else none(),
        alloc(mask.shape, mask, _layout(mask)) if gm and mask is not None else none(),
        alloc((weight.shape[0],), weight, torch.contiguous_format) if gb else none(),
    )


def _check_backward(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask):
    _, _, p, q = check(BACKWARD_OP, input, offset, weight, mask, None, stride, padding, dilation)
    c.check_same(BACKWARD_OP, "input", input, "grad_output", grad_output)
    expected = [input.shape[0], weight.shape[0], p, q]
    if list(grad_output.shape) != expected:
        raise RuntimeError(f"effconv.{BACKWARD_OP}: expected grad_output of size {expected}, "
                           f"got {c.fmt_size(grad_output)}")
    if len(output_mask) != 5:
        raise RuntimeError(f"effconv.{BACKWARD_OP}: expected output_mask with 5 entries, got {list(output_mask)}")


@torch.library.register_fake("effconv::deform_conv2d_backward")
def _backward_fake(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask):
    _check_backward(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask)
    return _grad_buffers(input, offset, weight, mask, output_mask, lambda s, like, fmt: c.empty(s, like, fmt))


def deform_conv2d_backward_impl(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask):
    _check_backward(grad_output, input, offset, weight, mask, stride, padding, dilation, output_mask)
    grads = _grad_buffers(input, offset, weight, mask, output_mask, lambda s, like, fmt: c.new_output(s, like, fmt))
    wanted = [g if want else None for g, want in zip(grads, output_mask)]
    if mask is None:
        wanted[3] = None
    if not any(w is not None for w in wanted):
        return grads
    backend = _route(BACKWARD_OP, input, weight, offset, mask)
    if backend == "cpu":
        _ext.C().deform_conv2d_backward_cpu(grad_output, input, offset, weight, mask, stride, padding, dilation,
                                            *wanted)
    elif backend == "cuda":
        _ext.C().deform_conv2d_backward_cuda(grad_output, input, offset, weight, mask, stride, padding, dilation,
                                             *wanted, torch.are_deterministic_algorithms_enabled())
    elif backend == "triton":
        _triton().backward(grad_output, input, offset, weight, mask, stride, padding, dilation, *wanted)
    else:
        _torch_backward(grad_output, input, offset, weight, mask, stride, padding, dilation, wanted)
    return grads


def _torch_backward(grad_output, input, offset, weight, mask, stride, padding, dilation, wanted):
    leaves = [t.detach().requires_grad_(w is not None) if t is not None else None
              for t, w in zip((input, offset, weight, mask), wanted[:4])]
    with torch.enable_grad():
        out = reference(*leaves, None, stride, padding, dilation)
        need = [t for t, w in zip(leaves, wanted[:4]) if w is not None and t is not None]
        got = iter(torch.autograd.grad(out, need, grad_output, allow_unused=True) if need else ())
    for t, w in zip(leaves, wanted[:4]):
        if w is not None and t is not None:
            g = next(got)
            w.copy_(g if g is not None else torch.zeros_like(w))
    if wanted[4] is not None:
        wanted[4].copy_(grad_output.sum((0, 2, 3)))


torch.library.register_kernel("effconv::deform_conv2d_backward", ("cpu", "cuda"), deform_conv2d_backward_impl)


# --------------------------------------------------------------- autograd
def _setup(ctx, inputs, output):
    input, offset, weight, mask, bias, stride, padding, dilation = inputs
    ctx.conf = (stride, padding, dilation)
    ctx.has_mask, ctx.has_bias = mask is not None, bias is not None
    ctx.backend = backends.requested_backend()
    ctx.save_for_backward(input, offset, weight, mask)


def _backward(ctx, grad):
    input, offset, weight, mask = ctx.saved_tensors
    need = tuple(ctx.needs_input_grad) + (False,) * 5
    output_mask = [need[0], need[1], need[2], need[3] and ctx.has_mask, need[4] and ctx.has_bias]
    if not any(output_mask):
        return None, None, None, None, None, None, None, None
    with backends.use_backend(ctx.backend):
        gi, go, gw, gm, gb = c.call("deform_conv2d_backward", deform_conv2d_backward_impl,
                                    (grad, input, offset, weight, mask), grad, input, offset, weight, mask, *ctx.conf,
                                    output_mask)
    pick = lambda g, want: g if want else None  # noqa: E731
    return (pick(gi, output_mask[0]), pick(go, output_mask[1]), pick(gw, output_mask[2]), pick(gm, output_mask[3]),
            pick(gb, output_mask[4]), None, None, None)


FUNCTION = c.register_autograd("deform_conv2d", deform_conv2d_impl, _backward, _setup)
